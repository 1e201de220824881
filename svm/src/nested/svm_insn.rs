//! Whether the running guest (L1, or an L2 whose L1 does not intercept
//! them) may execute VMLOAD, VMSAVE, STGI, CLGI and INVLPGA: the faults
//! come first, from the guest's own state (APM 15.4/15.5; KVM
//! `nested_svm_check_permissions`).

use crate::EventInfo;

/// The fault an SVM instruction raises in a guest whose EFER.SVME is
/// `svme`, at `cpl`: #UD without SVME, else #GP(0) above CPL 0, else none.
pub fn permission_fault(svme: bool, cpl: u8) -> Option<EventInfo> {
    if !svme {
        Some(EventInfo::exception(6))
    } else if cpl != 0 {
        Some(EventInfo::exception_with_error_code(13, 0))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ud_before_gp() {
        let ud = Some(EventInfo::exception(6));
        let gp = Some(EventInfo::exception_with_error_code(13, 0));
        assert_eq!(permission_fault(false, 0), ud);
        assert_eq!(permission_fault(false, 3), ud);
        assert_eq!(permission_fault(true, 0), None);
        for cpl in 1..=3 {
            assert_eq!(permission_fault(true, cpl), gp);
        }
    }
}
