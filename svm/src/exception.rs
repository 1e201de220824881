//! The exceptions L0 intercepts in every guest, and what it does with an
//! exception exit that is its own (not L1's, see [`crate::nested::route`]).
//!
//! #AC and #DB are intercepted for the microcode-loop class
//! (CVE-2015-5307, CVE-2015-8104, XSA-156): an #AC raised while delivering
//! an #AC, or a #DB raised while delivering a #DB (a data breakpoint on the
//! stack the delivery pushes to), is benign-on-benign, never becomes #DF,
//! and loops inside the CPU where no interrupt reaches it. With the
//! intercepts each delivery attempt is a #VMEXIT, so the guest's loop runs
//! through L0, whose watchdog and budgets can stop it. #MC is the host's.

use crate::event::{exception_has_error_code, is_exception_vector, EventInfo};
use crate::intercept::ExceptionIntercepts;

/// Exceptions L0 intercepts in every guest (L1, and L2 through the union
/// of [`crate::nested::merge::merge_intercepts`]).
pub const L0_EXCEPTIONS: ExceptionIntercepts = ExceptionIntercepts::DB
    .union(ExceptionIntercepts::AC)
    .union(ExceptionIntercepts::MC);

/// DR7.GD, general detect (APM Vol. 2, 13.1.1.5).
pub const DR7_GD: u64 = 1 << 13;

/// RFLAGS.TF.
pub const RFLAGS_TF: u64 = 1 << 8;
/// RFLAGS.RF (resume flag: suppresses instruction breakpoints once).
pub const RFLAGS_RF: u64 = 1 << 16;
/// DR6.BS: the #DB is a single-step trap.
pub const DR6_BS: u64 = 1 << 14;

/// After an instruction L0 emulated (CPUID, RDMSR, MOV CR, ...): the DR6
/// of the single-step #DB the CPU raises when RFLAGS.TF was set at its
/// start (APM Vol. 2, 13.1.4 single-step; KVM's
/// `kvm_skip_emulated_instruction`), or `None`.
pub fn single_step_dr6(rflags: u64, dr6: u64) -> Option<u64> {
    (rflags & RFLAGS_TF != 0).then_some(dr6 | DR6_BS)
}

/// What L0 does with an exception exit it owns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExceptionExit {
    /// Deliver it to the guest that raised it; the guest's DR7 becomes
    /// `dr7` (#DB only changes it).
    Reinject {
        /// The event for EVENTINJ.
        event: EventInfo,
        /// The guest's DR7 after delivery.
        dr7: u64,
    },
    /// Not the guest's: stop it (a machine check, or a vector the CPU
    /// cannot have raised).
    Stop,
}

/// The exception exit for `vector` (EXITINFO1 = `exit_info1`, the guest's
/// DR7 = `dr7`), taken by the guest that raised it because L1 does not
/// intercept it (or L1 itself raised it):
/// - #DB: re-injected without an error code. On a #DB intercept the CPU
///   has already written DR6 as for a delivered #DB (APM 15.12; KVM's
///   `db_interception` re-queues with the VMCB's DR6), so DR6 stays as it
///   is; DR7.GD is cleared, as the CPU does entering a #DB handler
///   (APM 13.1.1.5), in case it has not yet.
/// - #AC: re-injected with error code 0 (APM 8.2.17: always 0).
/// - #MC: never the guest's (L0 does not reflect machine checks).
/// - any other exception (L0 intercepts none today): re-injected, with
///   EXITINFO1 as its error code when it has one.
///
/// Re-injecting cannot loop inside the CPU: an event injected with
/// EVENTINJ whose delivery raises the same exception exits again with the
/// intercept, so at worst the guest loops through L0.
pub fn l0_exception_exit(vector: u8, exit_info1: u64, dr7: u64) -> ExceptionExit {
    match vector {
        1 => ExceptionExit::Reinject {
            event: EventInfo::exception(1),
            dr7: dr7 & !DR7_GD,
        },
        17 => ExceptionExit::Reinject {
            event: EventInfo::exception_with_error_code(17, 0),
            dr7,
        },
        18 => ExceptionExit::Stop,
        v if !is_exception_vector(v) => ExceptionExit::Stop,
        v if exception_has_error_code(v) => ExceptionExit::Reinject {
            event: EventInfo::exception_with_error_code(v, exit_info1 as u32),
            dr7,
        },
        v => ExceptionExit::Reinject {
            event: EventInfo::exception(v),
            dr7,
        },
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn single_step_after_an_emulated_instruction() {
        assert_eq!(single_step_dr6(0x2, 0xffff_0ff0), None);
        assert_eq!(
            single_step_dr6(0x2 | RFLAGS_TF, 0xffff_0ff0),
            Some(0xffff_0ff0 | DR6_BS)
        );
    }

    use super::*;

    #[test]
    fn l0_keeps_ac_db_mc() {
        assert_eq!(L0_EXCEPTIONS.bits(), (1 << 1) | (1 << 17) | (1 << 18));
    }

    #[test]
    fn debug_reinjected_gd_cleared_dr6_untouched() {
        let got = l0_exception_exit(1, 0xdead, 0x2400 | 0x3);
        assert_eq!(
            got,
            ExceptionExit::Reinject {
                event: EventInfo::exception(1),
                dr7: 0x403,
            }
        );
        if let ExceptionExit::Reinject { event, .. } = got {
            assert_eq!(event.0, 0x8000_0301);
            assert_eq!(event.error_code(), None);
        }
    }

    #[test]
    fn alignment_check_error_code_zero() {
        // Whatever EXITINFO1 holds, #AC pushes 0.
        let got = l0_exception_exit(17, 0x55, 0x400);
        assert_eq!(
            got,
            ExceptionExit::Reinject {
                event: EventInfo::exception_with_error_code(17, 0),
                dr7: 0x400,
            }
        );
        if let ExceptionExit::Reinject { event, .. } = got {
            assert_eq!(event.0, 0x0000_0000_8000_0B11);
        }
    }

    #[test]
    fn machine_check_and_non_exceptions_stop() {
        assert_eq!(l0_exception_exit(18, 0, 0x400), ExceptionExit::Stop);
        for v in [2u8, 9, 15, 31] {
            assert_eq!(l0_exception_exit(v, 0, 0x400), ExceptionExit::Stop, "{v}");
        }
    }

    #[test]
    fn others_keep_their_error_code() {
        assert_eq!(
            l0_exception_exit(13, 0x18, 0x400),
            ExceptionExit::Reinject {
                event: EventInfo::exception_with_error_code(13, 0x18),
                dr7: 0x400,
            }
        );
        assert_eq!(
            l0_exception_exit(6, 0x18, 0x400),
            ExceptionExit::Reinject {
                event: EventInfo::exception(6),
                dr7: 0x400,
            }
        );
    }
}
