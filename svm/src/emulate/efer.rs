//! WRMSR to EFER (APM Vol. 2, 3.1.7 "Extended Feature Enable Register",
//! 14.6 long-mode activation; KVM `kvm_set_efer`/`__kvm_valid_efer`): the
//! bits the guest's CPUID does not show are reserved (#GP), LME cannot
//! change while paging is on (#GP), and LMA is the CPU's: the written value
//! is ignored, LMA follows CR0.PG && LME at CR0 writes ([`super::cr`]).

use super::Fault;
use crate::cr::CR0_PG;
use crate::msr::{EFER_LMA, EFER_LME, EFER_NXE};

/// What an EFER write changes besides EFER itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EferWrite {
    /// The guest's new EFER (LMA kept as it was).
    pub efer: u64,
    /// The TLB must be flushed: NXE changed how entries are read (APM 5.5.2).
    pub flush_tlb: bool,
}

/// WRMSR EFER, `value`, by a guest whose EFER is `current` (as it sees it,
/// LME included) with CR0 `cr0`; `allowed` is the set of EFER bits its
/// CPUID shows ([`crate::nested::l1_cpu::L1Cpuid::efer_allowed`], SVME only
/// when SVM is offered).
pub fn write_efer(current: u64, value: u64, cr0: u64, allowed: u64) -> Result<EferWrite, Fault> {
    let gp = Err(Fault::Gp(0));
    // LMA is read-only: its written value is ignored, not reserved.
    if value & !allowed & !EFER_LMA != 0 {
        return gp;
    }
    // "Software must not change EFER.LME while paging is on" (14.6.1; #GP).
    if cr0 & CR0_PG != 0 && (value ^ current) & EFER_LME != 0 {
        return gp;
    }
    let efer = (value & !EFER_LMA) | (current & EFER_LMA);
    Ok(EferWrite {
        efer,
        flush_tlb: (efer ^ current) & EFER_NXE != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cr::CR0_PE;
    use crate::msr::{EFER_SCE, EFER_SVME};

    const ALL: u64 = EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE | EFER_SVME;
    const LONG: u64 = EFER_LME | EFER_LMA;
    const PAGING: u64 = CR0_PE | CR0_PG;

    fn ok(current: u64, value: u64, cr0: u64, allowed: u64) -> u64 {
        write_efer(current, value, cr0, allowed).unwrap().efer
    }

    #[test]
    fn reserved_bits_are_gp() {
        let gp = Err(Fault::Gp(0));
        assert_eq!(write_efer(LONG, LONG | 1 << 1, PAGING, ALL), gp);
        assert_eq!(write_efer(LONG, LONG | 1 << 63, PAGING, ALL), gp);
        // SVME and NXE only when the CPUID shows them.
        let no_svm = ALL & !EFER_SVME;
        assert_eq!(write_efer(LONG, LONG | EFER_SVME, PAGING, no_svm), gp);
        assert_eq!(ok(LONG, LONG | EFER_SVME, PAGING, ALL), LONG | EFER_SVME);
        assert_eq!(write_efer(0, EFER_NXE, CR0_PE, EFER_SCE), gp);
        // No long mode in the CPUID: LME is reserved, LMA still ignored.
        assert_eq!(write_efer(0, EFER_LME, CR0_PE, EFER_SCE), gp);
        assert_eq!(ok(0, EFER_LMA, CR0_PE, EFER_SCE), 0);
    }

    #[test]
    fn lme_changes_only_without_paging() {
        let gp = Err(Fault::Gp(0));
        assert_eq!(write_efer(LONG, EFER_LMA, PAGING, ALL), gp, "clear LME");
        assert_eq!(
            write_efer(0, EFER_LME, PAGING, ALL),
            gp,
            "set LME in legacy paging"
        );
        // Paging off: LME set and cleared freely, LMA stays clear.
        assert_eq!(ok(0, EFER_LME, CR0_PE, ALL), EFER_LME);
        assert_eq!(ok(EFER_LME, 0, CR0_PE, ALL), 0);
        assert_eq!(
            ok(EFER_LME, EFER_LME | EFER_LMA, 0, ALL),
            EFER_LME,
            "real mode"
        );
        // Paging on, LME unchanged: the other bits change.
        assert_eq!(ok(LONG, LONG | EFER_SCE, PAGING, ALL), LONG | EFER_SCE);
    }

    #[test]
    fn lma_is_read_only() {
        assert_eq!(
            ok(LONG, EFER_LME, PAGING, ALL),
            LONG,
            "clearing LMA ignored"
        );
        assert_eq!(
            ok(EFER_LME, LONG, CR0_PE, ALL),
            EFER_LME,
            "setting LMA ignored"
        );
    }

    #[test]
    fn nxe_changes_flush() {
        assert!(
            write_efer(LONG, LONG | EFER_NXE, PAGING, ALL)
                .unwrap()
                .flush_tlb
        );
        assert!(
            !write_efer(LONG, LONG | EFER_SCE, PAGING, ALL)
                .unwrap()
                .flush_tlb
        );
    }
}
