//! VGIF offered to L1 for its L2s (nested VGIF; APM Vol. 2, 15.33
//! "Virtual GIF"; KVM nested.c `nested_vgif_enabled`).
//!
//! L1 is shown CPUID Fn8000_000A_EDX\[VGIF\] only when the host CPU has
//! VGIF (as KVM, which offers it only with its `vgif` parameter): L0 then
//! lets the CPU do what the APM says. A vmcb12 with V_GIF_ENABLE runs L2
//! with V_GIF_ENABLE and vmcb12's V_GIF ([`super::merge::merge_int_ctl`]);
//! the CPU holds L2's virtual interrupts while V_GIF is 0, and L2's STGI
//! and CLGI set and clear V_GIF without any exit, unless L1 intercepts
//! them ([`entry_intercepts`]: L1's intercepts win, L0 drops its own).
//! The nested #VMEXIT writes V_GIF back to vmcb12 ([`written_back`]).
//!
//! Without VGIF offered, vmcb12's V_GIF and V_GIF_ENABLE are ignored (the
//! bits L1 may set only for features it is offered) and L2's STGI/CLGI
//! act on the vCPU's one GIF as before. L1's own GIF is never L2's V_GIF:
//! the #VMEXIT clears L1's GIF as always, and L1's V_GIF is rebuilt from it
//! ([`super::vgif`]).
//!
//! L2's V_GIF masks only virtual interrupts (V_IRQ): an interrupt L0
//! holds for L1 still ends L2's run with #VMEXIT(INTR) when L1 intercepts
//! INTR, as a physical interrupt does on a real CPU with L2's V_GIF clear
//! (KVM instead holds it until L2's STGI).

use crate::{CleanBits, ControlArea, IntCtl, InterceptMisc2};

/// CPUID Fn8000_000A_EDX\[VGIF\] (bit 16).
pub const CPUID_VGIF: u32 = 1 << 16;

/// The VGIF bit L1's CPUID shows, from the host's leaf 0x8000_000A EDX.
pub const fn offered_bit(host_edx: u32) -> u32 {
    host_edx & CPUID_VGIF
}

const STGI_CLGI: u32 = InterceptMisc2::STGI.bits() | InterceptMisc2::CLGI.bits();

/// Just before L2 runs: while L2 has its own virtual GIF (the active
/// int_ctl has V_GIF_ENABLE, which VMRUN passed only when VGIF is offered
/// and vmcb12 set it), STGI and CLGI are intercepted exactly as L1 asks
/// (`vmcb12_misc2`), so the CPU runs the others on V_GIF. Both stay
/// intercepted while L2's own EFER.SVME is clear (`l2_svme`): the CPU
/// sees only the VMCB's EFER, whose SVME is always set, and L0 must raise
/// their #UD (APM 15.4). Without V_GIF_ENABLE nothing changes (L0 keeps
/// its intercepts and emulates the vCPU's GIF).
pub fn entry_intercepts(active: &mut ControlArea, vmcb12_misc2: u32, l2_svme: bool) {
    if active.int_ctl & IntCtl::V_GIF_ENABLE.bits() == 0 {
        return;
    }
    let wanted = match l2_svme {
        true => vmcb12_misc2 & STGI_CLGI,
        false => STGI_CLGI,
    };
    let misc2 = (active.intercept_misc2 & !STGI_CLGI) | wanted;
    if misc2 != active.intercept_misc2 {
        active.intercept_misc2 = misc2;
        active.vmcb_clean &= !CleanBits::INTERCEPTS.bits();
    }
}

/// The int_ctl bits the nested #VMEXIT writes back to vmcb12 besides
/// V_TPR and V_IRQ: V_GIF when L2 ran with V_GIF_ENABLE (`active_int_ctl`
/// is the active VMCB's at the exit), as the CPU writes it back (KVM
/// `nested_sync_control_from_vmcb02`). Otherwise none: vmcb12's V_GIF
/// stays as L1 wrote it.
pub fn written_back(active_int_ctl: u64) -> u64 {
    match active_int_ctl & IntCtl::V_GIF_ENABLE.bits() != 0 {
        true => IntCtl::V_GIF.bits(),
        false => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nested::merge::merge_int_ctl;

    const V_GIF_ENABLE: u64 = IntCtl::V_GIF_ENABLE.bits();
    const V_GIF: u64 = IntCtl::V_GIF.bits();

    /// The active controls of an L2 just built: L0's intercepts (STGI and
    /// CLGI among them) with vmcb12's merged in, int_ctl from vmcb12.
    fn l2_controls(vmcb12_int_ctl: u64, offered: bool, vmcb12_misc2: u32) -> ControlArea {
        let mut c = ControlArea::new();
        c.intercept_misc2 = InterceptMisc2::VMRUN.bits() | STGI_CLGI | vmcb12_misc2;
        c.int_ctl = merge_int_ctl(vmcb12_int_ctl, offered);
        c
    }

    #[test]
    fn cpuid_shows_vgif_only_with_the_hosts() {
        assert_eq!(offered_bit(u32::MAX), 1 << 16);
        assert_eq!(offered_bit(!(1 << 16)), 0);
        assert_eq!(offered_bit(0), 0);
    }

    #[test]
    fn l2_with_v_gif_enable_runs_stgi_clgi_without_exits() {
        let mut c = l2_controls(V_GIF_ENABLE, true, 0);
        c.vmcb_clean = u32::MAX;
        entry_intercepts(&mut c, InterceptMisc2::VMRUN.bits(), true);
        assert_eq!(c.intercept_misc2 & STGI_CLGI, 0);
        assert_ne!(c.intercept_misc2 & InterceptMisc2::VMRUN.bits(), 0);
        assert_eq!(c.vmcb_clean & CleanBits::INTERCEPTS.bits(), 0);
        // Again: nothing changes, the clean bit stays.
        c.vmcb_clean = u32::MAX;
        entry_intercepts(&mut c, InterceptMisc2::VMRUN.bits(), true);
        assert_eq!(c.vmcb_clean, u32::MAX);
    }

    #[test]
    fn l1s_stgi_clgi_intercepts_win() {
        for l1 in [
            InterceptMisc2::STGI,
            InterceptMisc2::CLGI,
            InterceptMisc2::STGI | InterceptMisc2::CLGI,
        ] {
            let mut c = l2_controls(V_GIF_ENABLE, true, l1.bits());
            entry_intercepts(&mut c, l1.bits(), true);
            assert_eq!(c.intercept_misc2 & STGI_CLGI, l1.bits(), "{l1:?}");
        }
    }

    #[test]
    fn l2_without_svme_keeps_l0s_intercepts() {
        let mut c = l2_controls(V_GIF_ENABLE | V_GIF, true, 0);
        entry_intercepts(&mut c, 0, true);
        assert_eq!(c.intercept_misc2 & STGI_CLGI, 0);
        // L2 clears its EFER.SVME: the next entry intercepts both again.
        entry_intercepts(&mut c, 0, false);
        assert_eq!(c.intercept_misc2 & STGI_CLGI, STGI_CLGI);
    }

    #[test]
    fn without_v_gif_enable_l0_keeps_its_intercepts() {
        // vmcb12 does not ask, or asks but VGIF is not offered (ignored).
        for (int_ctl, offered) in [(0, true), (V_GIF_ENABLE | V_GIF, false), (V_GIF, true)] {
            let mut c = l2_controls(int_ctl, offered, 0);
            let before = c;
            entry_intercepts(&mut c, 0, true);
            assert_eq!(c, before, "int_ctl {int_ctl:#x} offered {offered}");
            assert_eq!(c.intercept_misc2 & STGI_CLGI, STGI_CLGI);
        }
        // Not offered: vmcb12's V_GIF bits never reach L2.
        let c = l2_controls(V_GIF_ENABLE | V_GIF, false, 0);
        assert_eq!(c.int_ctl & (V_GIF | V_GIF_ENABLE), 0);
    }

    #[test]
    fn v_gif_goes_back_only_with_v_gif_enable() {
        assert_eq!(written_back(V_GIF_ENABLE | V_GIF), V_GIF);
        assert_eq!(written_back(V_GIF_ENABLE), V_GIF);
        assert_eq!(written_back(V_GIF), 0);
        assert_eq!(written_back(0), 0);
        // Through the merge: not offered, nothing of V_GIF goes back.
        assert_eq!(written_back(merge_int_ctl(V_GIF_ENABLE, false)), 0);
        assert_eq!(written_back(merge_int_ctl(V_GIF_ENABLE, true)), V_GIF);
    }
}
