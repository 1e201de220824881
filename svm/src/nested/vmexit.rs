//! The nested #VMEXIT: L2's state and the exit information go to vmcb12,
//! L1's state comes back from hsave.
//!
//! Which vmcb12 fields are written follows seed 001's reasoning (written
//! for VMX): only what can have changed while L2 ran — the guest state a
//! #VMEXIT saves and the exit information — never the controls L1 wrote
//! (the TSC offset, intercepts, map addresses), which L2 cannot change.

use crate::{ControlArea, EventInfo, Vmcb};

/// The exit as L1 sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitInfo {
    /// EXITCODE (raw; VMEXIT_INVALID is all ones).
    pub code: u64,
    /// EXITINFO1.
    pub info1: u64,
    /// EXITINFO2.
    pub info2: u64,
    /// EXITINTINFO: an event that was being delivered when the exit hit.
    pub int_info: u64,
    /// nRIP (the hypervisor offers NRIP save to L1 and fills it itself).
    pub next_rip: u64,
}

/// V_TPR (7:0) and V_IRQ (8): the int_ctl bits a #VMEXIT writes back.
const INT_CTL_SAVED: u64 = 0x1ff;

/// Writes L2's state and `exit` into vmcb12: the save-area fields a
/// #VMEXIT stores (APM Vol. 2, 15.6: ES, CS, SS, DS, GDTR, IDTR, EFER,
/// CR0, CR2, CR3, CR4, RFLAGS, RIP, RSP, RAX, DR7, DR6, CPL), V_TPR/V_IRQ,
/// the interrupt shadow and the exit fields. EVENTINJ's valid bit is
/// cleared: an event that was not delivered is in EXITINTINFO instead.
pub fn save_l2_to_vmcb12(active: &Vmcb, exit: &ExitInfo, vmcb12: &mut Vmcb) {
    let (s, d) = (&active.state, &mut vmcb12.state);
    d.es = s.es;
    d.cs = s.cs;
    d.ss = s.ss;
    d.ds = s.ds;
    d.gdtr = s.gdtr;
    d.idtr = s.idtr;
    d.efer = s.efer;
    d.cr0 = s.cr0;
    d.cr2 = s.cr2;
    d.cr3 = s.cr3;
    d.cr4 = s.cr4;
    d.rflags = s.rflags;
    d.rip = s.rip;
    d.rsp = s.rsp;
    d.rax = s.rax;
    d.dr7 = s.dr7;
    d.dr6 = s.dr6;
    d.cpl = s.cpl;
    let c = &mut vmcb12.control;
    // With nested VGIF, V_GIF too (super::l2_vgif).
    let saved = INT_CTL_SAVED | super::l2_vgif::written_back(active.control.int_ctl);
    c.int_ctl = (c.int_ctl & !saved) | (active.control.int_ctl & saved);
    c.interrupt_shadow = active.control.interrupt_shadow & 1;
    c.exit_code = exit.code;
    c.exit_info1 = exit.info1;
    c.exit_info2 = exit.info2;
    c.exit_int_info = exit.int_info;
    c.next_rip = exit.next_rip;
    c.event_inj &= !EventInfo::VALID;
}

/// What a VMRUN that fails its checks writes into vmcb12 (APM 15.5.1):
/// EXITCODE VMEXIT_INVALID (-1), no exit information, no NEXT_RIP, and
/// EVENTINJ cleared, so the refused event is not left looking pending
/// (KVM nested.c `nested_svm_vmrun_error_vmexit`: `event_inj = 0`).
pub fn write_vmexit_invalid(vmcb12: &mut ControlArea) {
    vmcb12.exit_code = u64::MAX;
    vmcb12.exit_info1 = 0;
    vmcb12.exit_info2 = 0;
    vmcb12.exit_int_info = 0;
    vmcb12.next_rip = 0;
    vmcb12.event_inj = 0;
}

/// Brings L1's state and L0's controls back from hsave into the active
/// VMCB: the fields [`super::vmrun::stash_l1`] stashed, not a page copy
/// (the controls: [`super::vmrun::copy_switched_controls`]; EXITCODE and
/// EVENTINJ cleared, EXITINFO1/2 and EXITINTINFO left as the exit wrote
/// them: the CPU's outputs, which nothing reads before L1's next exit).
/// The TSC offset comes back with the controls (hsave holds the current L1
/// offset); nothing is subtracted. What VMRUN and #VMEXIT do not switch
/// stays as L2 left it: FS, GS, TR, LDTR, KernelGsBase, STAR, LSTAR,
/// CSTAR, SFMASK, SYSENTER_* (L1 saves them with VMSAVE if it cares), and
/// CR2 and DR6, which the host save area does not hold. The host's DR7
/// comes back as 0x400 and CPL as 0 (APM Vol. 2, 15.6).
pub fn restore_l1(active: &mut Vmcb, hsave: &Vmcb) {
    super::vmrun::copy_switched_controls(&mut active.control, &hsave.control);
    let (s, h) = (&mut active.state, &hsave.state);
    s.es = h.es;
    s.cs = h.cs;
    s.ss = h.ss;
    s.ds = h.ds;
    s.gdtr = h.gdtr;
    s.idtr = h.idtr;
    s.efer = h.efer;
    s.cr0 = h.cr0;
    s.cr3 = h.cr3;
    s.cr4 = h.cr4;
    s.rip = h.rip;
    s.rsp = h.rsp;
    s.rax = h.rax;
    s.g_pat = h.g_pat;
    s.dr7 = 0x400;
    s.cpl = 0;
    // Completion of VMRUN clears the host's RFLAGS.RF (APM 15.5.2).
    s.rflags = h.rflags & !crate::exception::RFLAGS_RF;
    let c = &mut active.control;
    c.event_inj = 0;
    c.exit_code = 0;
    c.vmcb_clean = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit() -> ExitInfo {
        ExitInfo {
            code: 0x81,
            info1: 1,
            info2: 2,
            int_info: 0x8000_0030,
            next_rip: 0x1003,
        }
    }

    #[test]
    fn vmcb12_gets_state_and_exit_but_keeps_its_controls() {
        let mut active = Vmcb::new();
        active.state.rip = 0x1000;
        active.state.rax = 0x42;
        active.state.cr3 = 0x3000;
        active.state.fs.base = 0x7777;
        active.control.tsc_offset = 12345; // L1 + o12: not L1's business
        active.control.intercept_misc1 = 0xffff_ffff;
        active.control.int_ctl = 0x1_0105; // V_TPR 5, V_IRQ, and a bit L1 must not see
        let mut v12 = Vmcb::new();
        v12.control.tsc_offset = 100;
        v12.control.intercept_misc1 = 0x4;
        v12.control.event_inj = 0x8000_0306;
        v12.state.fs.base = 0x1111;
        save_l2_to_vmcb12(&active, &exit(), &mut v12);
        assert_eq!(
            (v12.state.rip, v12.state.rax, v12.state.cr3),
            (0x1000, 0x42, 0x3000)
        );
        assert_eq!(v12.control.exit_code, 0x81);
        assert_eq!((v12.control.exit_info1, v12.control.exit_info2), (1, 2));
        assert_eq!(
            (v12.control.exit_int_info, v12.control.next_rip),
            (0x8000_0030, 0x1003)
        );
        assert_eq!(v12.control.tsc_offset, 100);
        assert_eq!(v12.control.intercept_misc1, 0x4);
        assert_eq!(v12.control.event_inj, 0x306, "valid bit cleared, rest kept");
        assert_eq!(v12.control.int_ctl, 0x105);
        assert_eq!(v12.state.fs.base, 0x1111, "FS is VMSAVE's business");
    }

    /// Only V_TPR/V_IRQ and the interrupt shadow bit come from the active
    /// VMCB; vmcb12's other int_ctl bits stay as L1 wrote them.
    #[test]
    fn vmcb12_int_ctl_and_shadow_take_only_the_saved_bits() {
        let mut v12 = Vmcb::new();
        v12.control.int_ctl = (1 << 24) | (0x31 << 32) | 0x1ff;
        v12.control.interrupt_shadow = 1;
        let mut active = Vmcb::new();
        active.control.int_ctl = 0x1_0005;
        active.control.interrupt_shadow = 0;
        save_l2_to_vmcb12(&active, &exit(), &mut v12);
        assert_eq!(v12.control.int_ctl, (1 << 24) | (0x31 << 32) | 0x005);
        assert_eq!(v12.control.interrupt_shadow, 0);
        active.control.interrupt_shadow = 0x3; // shadow and GUEST_INTERRUPT_MASK
        save_l2_to_vmcb12(&active, &exit(), &mut v12);
        assert_eq!(v12.control.interrupt_shadow, 1);
    }

    /// Nested VGIF: L2's V_GIF goes back to vmcb12 when L2 ran with
    /// V_GIF_ENABLE (APM 15.33); otherwise vmcb12's V_GIF stays L1's.
    #[test]
    fn vmcb12_gets_v_gif_only_with_v_gif_enable() {
        let (enable, gif) = (1u64 << 25, 1u64 << 9);
        for (active, v12, expect) in [
            (enable, enable | gif, enable),
            (enable | gif, enable, enable | gif),
            (0, gif, gif),
            (gif, 0, 0),
        ] {
            let mut a = Vmcb::new();
            a.control.int_ctl = active;
            let mut v = Vmcb::new();
            v.control.int_ctl = v12;
            save_l2_to_vmcb12(&a, &exit(), &mut v);
            assert_eq!(
                v.control.int_ctl, expect,
                "active {active:#x} vmcb12 {v12:#x}"
            );
        }
    }

    #[test]
    fn vmexit_invalid_clears_the_event() {
        let mut c = ControlArea::new();
        c.event_inj = EventInfo::exception_with_error_code(13, 0).0;
        c.exit_info1 = 7;
        c.next_rip = 0x1003;
        c.tsc_offset = 5;
        write_vmexit_invalid(&mut c);
        assert_eq!(c.exit_code, u64::MAX);
        assert_eq!((c.exit_info1, c.exit_info2, c.exit_int_info), (0, 0, 0));
        assert_eq!((c.next_rip, c.event_inj), (0, 0));
        assert_eq!(c.tsc_offset, 5, "L1's controls stay");
    }

    #[test]
    fn l1_comes_back_by_copy_with_l2s_vmload_set() {
        let mut l1 = Vmcb::new();
        l1.control.tsc_offset = 5000u64.wrapping_neg();
        l1.control.guest_asid = 1;
        l1.state.rip = 0x2003;
        l1.state.rax = 0x9000; // vmcb12's address, as at VMRUN
        l1.state.fs.base = 0xaaaa;
        l1.state.dr7 = 0x455;
        l1.state.cr2 = 0x1000;
        l1.state.g_pat = 0x0007_0406_0007_0406;
        l1.state.ss.selector = 0x18;
        let mut hsave = Vmcb::new();
        crate::nested::vmrun::stash_l1(&mut hsave, &l1);
        let mut active = Vmcb::new();
        active.control.tsc_offset = (1u64 << 40).wrapping_sub(5000);
        active.control.guest_asid = 2;
        active.state.rip = 0x4000;
        active.state.fs.base = 0xbbbb;
        active.state.star = 0xcccc;
        active.state.cr2 = 0x7000;
        active.state.g_pat = 0;
        restore_l1(&mut active, &hsave);
        assert_eq!(active.state.g_pat, 0x0007_0406_0007_0406);
        assert_eq!(active.state.ss.selector, 0x18);
        assert_eq!(
            active.control.tsc_offset,
            5000u64.wrapping_neg(),
            "copied back, not subtracted"
        );
        assert_eq!(active.control.guest_asid, 1);
        assert_eq!((active.state.rip, active.state.rax), (0x2003, 0x9000));
        assert_eq!((active.state.fs.base, active.state.star), (0xbbbb, 0xcccc));
        assert_eq!(
            active.state.cr2, 0x7000,
            "CR2 is not part of the host state"
        );
        assert_eq!((active.state.dr7, active.state.cpl), (0x400, 0));
    }

    use proptest::prelude::*;

    proptest! {
        /// Whatever vmcb12 asks and whatever L0 changes while L2 runs (its
        /// intercepts, int_ctl, shadow, TLB_CONTROL, EVENTINJ, NEXT_RIP, the
        /// CPU's exit fields, nCR3 for nested paging), the #VMEXIT gives
        /// L1 back its controls: every live byte as at VMRUN, but the
        /// exit fields (the CPU's output) and EVENTINJ, EXITCODE and the
        /// clean bits, which are cleared.
        #[test]
        fn l1_controls_come_back_after_any_l2_run(
            l1 in proptest::collection::vec(any::<u8>(), 0xD0),
            v12 in proptest::collection::vec(any::<u8>(), 0xD0),
            noise in proptest::collection::vec(any::<u64>(), 12),
        ) {
            let mut active = Vmcb::new();
            active.as_bytes_mut()[..0xD0].copy_from_slice(&l1);
            let before = active.clone();
            let mut hsave = Vmcb::new();
            crate::nested::vmrun::stash_l1(&mut hsave, &active);
            let mut vmcb12 = Vmcb::new();
            vmcb12.as_bytes_mut()[..0xD0].copy_from_slice(&v12);
            let l2c = crate::nested::vmrun::L2Controls {
                msrpm_pa: noise[0],
                iopm_pa: noise[1],
                asid: 2,
                tlb_control: 1,
                vgif_offered: noise[2] & 1 != 0,
            };
            crate::nested::vmrun::build_l2_controls_in(
                &mut active.control,
                &hsave.control,
                &vmcb12.control,
                &l2c,
            );
            let c = &mut active.control;
            c.ncr3 = noise[3];
            c.intercept_misc1 ^= noise[4] as u32;
            c.intercept_exceptions ^= noise[5] as u32;
            c.int_ctl ^= noise[6];
            c.interrupt_shadow = noise[7];
            c.tlb_control = noise[8] as u8;
            c.event_inj = noise[9];
            c.next_rip = noise[10];
            (c.exit_code, c.exit_info1, c.exit_info2, c.exit_int_info) =
                (noise[11], noise[0], noise[1], noise[2]);
            restore_l1(&mut active, &hsave);
            let mut expected = before.control;
            let c = &active.control;
            (expected.exit_info1, expected.exit_info2, expected.exit_int_info) =
                (c.exit_info1, c.exit_info2, c.exit_int_info);
            (expected.event_inj, expected.exit_code, expected.vmcb_clean) = (0, 0, 0);
            prop_assert_eq!(&active.control, &expected);
        }
    }

    /// VMRUN completes at the #VMEXIT: L1's RF is cleared, its TF stays
    /// (the caller raises the single-step trap, APM 15.5.2).
    #[test]
    fn l1_rflags_lose_rf_keep_tf() {
        use crate::exception::{RFLAGS_RF, RFLAGS_TF};
        let mut hsave = Vmcb::new();
        hsave.state.rflags = 0x2 | RFLAGS_TF | RFLAGS_RF | 1 << 9;
        let mut active = Vmcb::new();
        restore_l1(&mut active, &hsave);
        assert_eq!(active.state.rflags, 0x2 | RFLAGS_TF | 1 << 9);
    }
}
