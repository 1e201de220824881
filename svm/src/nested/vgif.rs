//! L1's GIF in the CPU's virtual GIF (APM Vol. 2, 15.33.2 "Virtual GIF";
//! KVM svm.c with `vgif`): on a CPU with VGIF, L1 runs with V_GIF_ENABLE
//! and its virtual GIF in V_GIF, so its STGI and CLGI need no exit. Every
//! nested round trip of an L1 hypervisor runs CLGI and STGI around VMRUN:
//! two of its four exits.
//!
//! L0 still holds events for L1 while its GIF is clear; then it must see
//! the STGI that lets them in, so STGI stays intercepted while something
//! waits ([`entry_controls`]). L0's own view of the controls (what hsave
//! stashes and L2's controls are built from) keeps both intercepts and no
//! V_GIF bits: the change lives only between an entry into L1 and the
//! exit that ends it ([`exit_controls`]). L2 never runs with it.

use crate::{CleanBits, ControlArea, IntCtl, InterceptMisc2};

const GIF_BITS: u64 = IntCtl::V_GIF_ENABLE.bits() | IntCtl::V_GIF.bits();

/// Just before L1 runs: its GIF goes to V_GIF, V_GIF_ENABLE is set, CLGI
/// is not intercepted, and STGI only while `waiting` (an interrupt, NMI or
/// SMI L0 holds for L1 until its GIF is set). The clean bits of what
/// changed are cleared (intercepts; V_GIF sits with the TPR group).
pub fn entry_controls(c: &mut ControlArea, gif: bool, waiting: bool) {
    let int_ctl = (c.int_ctl & !GIF_BITS)
        | IntCtl::V_GIF_ENABLE.bits()
        | if gif { IntCtl::V_GIF.bits() } else { 0 };
    let stgi = match waiting && !gif {
        true => InterceptMisc2::STGI.bits(),
        false => 0,
    };
    let misc2 = (c.intercept_misc2 & !(InterceptMisc2::STGI | InterceptMisc2::CLGI).bits()) | stgi;
    if int_ctl != c.int_ctl {
        c.int_ctl = int_ctl;
        c.vmcb_clean &= !CleanBits::TPR.bits();
    }
    if misc2 != c.intercept_misc2 {
        c.intercept_misc2 = misc2;
        c.vmcb_clean &= !CleanBits::INTERCEPTS.bits();
    }
}

/// Right after an exit from L1 (before anything reads the controls): L1's
/// GIF as its STGI/CLGI left it, and L0's view of the controls back
/// (STGI and CLGI intercepted, no V_GIF bits).
pub fn exit_controls(c: &mut ControlArea) -> bool {
    let gif = c.int_ctl & IntCtl::V_GIF.bits() != 0;
    c.int_ctl &= !GIF_BITS;
    c.intercept_misc2 |= (InterceptMisc2::STGI | InterceptMisc2::CLGI).bits();
    c.vmcb_clean &= !(CleanBits::TPR | CleanBits::INTERCEPTS).bits();
    gif
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l0_controls() -> ControlArea {
        let mut c = ControlArea::new();
        c.intercept_misc2 =
            (InterceptMisc2::VMRUN | InterceptMisc2::STGI | InterceptMisc2::CLGI).bits();
        c.int_ctl = IntCtl::V_INTR_MASKING.bits() | 0x3;
        c
    }

    #[test]
    fn l1_runs_with_its_gif_in_v_gif_and_no_clgi_exit() {
        for gif in [false, true] {
            let mut c = l0_controls();
            entry_controls(&mut c, gif, false);
            let int_ctl = IntCtl::from_bits_retain(c.int_ctl);
            assert!(int_ctl.contains(IntCtl::V_GIF_ENABLE));
            assert_eq!(int_ctl.contains(IntCtl::V_GIF), gif);
            assert_eq!(c.int_ctl & 0xF, 0x3, "V_TPR kept");
            assert!(int_ctl.contains(IntCtl::V_INTR_MASKING));
            let misc2 = InterceptMisc2::from_bits_retain(c.intercept_misc2);
            assert!(!misc2.contains(InterceptMisc2::CLGI));
            assert!(!misc2.contains(InterceptMisc2::STGI));
            assert!(misc2.contains(InterceptMisc2::VMRUN));
        }
    }

    #[test]
    fn stgi_exits_while_an_event_waits_for_gif() {
        let mut c = l0_controls();
        entry_controls(&mut c, false, true);
        assert_ne!(c.intercept_misc2 & InterceptMisc2::STGI.bits(), 0);
        assert_eq!(c.intercept_misc2 & InterceptMisc2::CLGI.bits(), 0);
        // With GIF set nothing waits for STGI.
        let mut c = l0_controls();
        entry_controls(&mut c, true, true);
        assert_eq!(c.intercept_misc2 & InterceptMisc2::STGI.bits(), 0);
    }

    #[test]
    fn the_exit_gives_l1s_gif_and_l0s_controls_back() {
        for gif in [false, true] {
            let mut c = l0_controls();
            entry_controls(&mut c, !gif, false);
            // L1 ran STGI or CLGI: the CPU changed V_GIF.
            c.int_ctl ^= IntCtl::V_GIF.bits();
            assert_eq!(exit_controls(&mut c), gif);
            let back = l0_controls();
            assert_eq!(c.int_ctl, back.int_ctl);
            assert_eq!(c.intercept_misc2, back.intercept_misc2);
        }
    }

    #[test]
    fn changes_clear_their_clean_bits() {
        let mut c = l0_controls();
        c.vmcb_clean = u32::MAX;
        entry_controls(&mut c, true, false);
        assert_eq!(c.vmcb_clean & CleanBits::TPR.bits(), 0);
        assert_eq!(c.vmcb_clean & CleanBits::INTERCEPTS.bits(), 0);
        // Nothing changes: the clean bits stay.
        c.vmcb_clean = u32::MAX;
        entry_controls(&mut c, true, false);
        assert_eq!(c.vmcb_clean, u32::MAX);
    }
}
