//! Building L2 in the active VMCB on L1's VMRUN (after the checks passed
//! and L1's state and L0's controls were stashed in hsave).

use super::merge::{merge_int_ctl, merge_intercepts};
use super::tsc::compose;
use crate::event::{is_soft, SoftEvent};
use crate::{ControlArea, EventInfo, StateSaveArea, Vmcb};
use core::mem::offset_of;

/// Where L0 keeps what L2 runs with, besides vmcb12's own fields.
#[derive(Clone, Copy, Debug)]
pub struct L2Controls {
    /// Host-physical address of the merged MSR permission map.
    pub msrpm_pa: u64,
    /// Host-physical address of the merged I/O permission map.
    pub iopm_pa: u64,
    /// The ASID L0 runs L2 with (never L1's: their TLB entries must not mix).
    pub asid: u32,
    /// TLB_CONTROL for the first L2 run (L1 may have changed L2's page tables).
    pub tlb_control: u8,
    /// Whether VGIF is offered to L1 (decides which int_ctl bits pass).
    pub vgif_offered: bool,
}

/// The active control area for L2: L0's controls (nested paging over L1's
/// memory, its TSC offset, ...) with the intercepts merged, vmcb12's
/// whitelisted interrupt controls and event, and `tsc_offset = L1 offset +
/// vmcb12 offset` (seed 000: "adds the nested tsc_offset in place").
pub fn build_l2_controls(l0: &ControlArea, vmcb12: &ControlArea, l2: &L2Controls) -> ControlArea {
    let mut c = *l0;
    build_l2_controls_in(&mut c, l0, vmcb12, l2);
    c
}

/// [`build_l2_controls`] in place: `c` already holds L0's controls `l0`
/// (their live part, [`ControlArea::LIVE_BYTES`]), as the active VMCB does
/// at L1's VMRUN; no 1 KiB control-area copy.
pub fn build_l2_controls_in(
    c: &mut ControlArea,
    l0: &ControlArea,
    vmcb12: &ControlArea,
    l2: &L2Controls,
) {
    merge_intercepts(l0, vmcb12, c);
    // L1's #BP/#OF intercepts need INTn's under QEMU TCG (soft_int).
    c.intercept_misc1 |= super::soft_int::intn_for_exceptions(vmcb12);
    c.msrpm_base_pa = l2.msrpm_pa;
    c.iopm_base_pa = l2.iopm_pa;
    c.guest_asid = l2.asid;
    c.tlb_control = l2.tlb_control;
    c.tsc_offset = compose(l0.tsc_offset, vmcb12.tsc_offset);
    c.int_ctl = merge_int_ctl(vmcb12.int_ctl, l2.vgif_offered);
    c.interrupt_shadow = vmcb12.interrupt_shadow & 1;
    c.event_inj = vmcb12.event_inj;
    c.exit_code = 0;
    c.exit_info1 = 0;
    c.exit_info2 = 0;
    c.exit_int_info = 0;
    // NRIP save is offered to L1: vmcb12's NEXT_RIP is the return address
    // of a soft event it injects (APM 15.20; KVM
    // nested_vmcb02_prepare_control). A CPU without NRIP save ignores it
    // and L0 emulates it ([`soft_event_entry`]).
    c.next_rip = vmcb12.next_rip;
    // Everything in the active VMCB is new to the CPU.
    c.vmcb_clean = 0;
}

/// Reads vmcb12 (in L1's memory) once, into hypervisor memory, and only
/// what VMRUN uses: the controls L0 needs while L2 runs into its copy
/// ([`read_controls`]), G_PAT there too (loaded with nested paging), and
/// the state VMRUN loads (APM 15.5.1: ES, CS, SS, DS, GDTR, IDTR, EFER,
/// CR0, CR2, CR3, CR4, RFLAGS, RIP, RSP, RAX, DR6, DR7, CPL) straight
/// into the save area L2 is to run in, `l2` ([`load_l2_state`]): no
/// second copy. L1's state there must be stashed first ([`stash_l1`]);
/// the checks then judge `l2` and `copy`, never L1's page, and a refused
/// vmcb12 is undone with [`unload_l2_state`]. Nothing else of `copy` is
/// written; nothing in L0 reads it.
pub fn read_vmcb12(copy: &mut Vmcb, l2: &mut StateSaveArea, l1: &Vmcb) {
    read_controls(&mut copy.control, &l1.control);
    copy.state.g_pat = l1.state.g_pat;
    load_l2_state(l2, &l1.state);
}

/// The controls of vmcb12 that VMRUN and L0 use while L2 runs: the
/// intercepts, map addresses, TSC offset, ASID, TLB_CONTROL, int_ctl,
/// interrupt shadow, nested paging (NP_ENABLE, nCR3), EVENTINJ and
/// NEXT_RIP. Not the exit fields (VMRUN's outputs), nor the pause
/// filter, AVIC, SEV, LBR/vVMLOAD enables or clean bits, none of which
/// L0 offers to L1 or reads.
pub fn read_controls(d: &mut ControlArea, s: &ControlArea) {
    d.copy_span_from::<INTERCEPTS_START, INTERCEPTS_END>(s);
    d.copy_span_from::<MAPS_TO_SHADOW_START, MAPS_TO_SHADOW_END>(s);
    d.nested_ctl = s.nested_ctl;
    d.copy_span_from::<EVENT_INJ_NCR3_START, EVENT_INJ_NCR3_END>(s);
    d.next_rip = s.next_rip;
}

/// The six intercept vectors (0x000-0x017).
const INTERCEPTS_START: usize = offset_of!(ControlArea, intercept_cr);
const INTERCEPTS_END: usize = offset_of!(ControlArea, intercept_misc3) + 4;
/// IOPM_BASE_PA through the interrupt shadow (0x040-0x06F): the map
/// addresses, TSC offset, ASID, TLB_CONTROL (and the RAP control bits and
/// reserved bytes next to it, which nothing uses), int_ctl, shadow.
const MAPS_TO_SHADOW_START: usize = offset_of!(ControlArea, iopm_base_pa);
const MAPS_TO_SHADOW_END: usize = offset_of!(ControlArea, interrupt_shadow) + 8;
/// EVENTINJ and nCR3 (0x0A8-0x0B7).
const EVENT_INJ_NCR3_START: usize = offset_of!(ControlArea, event_inj);
const EVENT_INJ_NCR3_END: usize = offset_of!(ControlArea, ncr3) + 8;
// The spans hold exactly the fields named: no field between them.
const _: () = assert!(offset_of!(ControlArea, intercept_misc3) == INTERCEPTS_START + 0x14);
const _: () = assert!(MAPS_TO_SHADOW_END == offset_of!(ControlArea, exit_code));
const _: () = assert!(offset_of!(ControlArea, ncr3) == EVENT_INJ_NCR3_START + 8);

/// The controls running L2 in place changes, copied from `s` to `d`: the
/// intercepts, map addresses, TSC offset, ASID, TLB_CONTROL, int_ctl,
/// interrupt shadow and NEXT_RIP ([`build_l2_controls_in`]) and nCR3
/// (hv's nested::npt), which are also all L0 adjusts while L2 runs
/// (intercepts, V_TPR/V_GIF, shadow, TSC offset: in hsave then). This is
/// L0's control state for L1 that [`stash_l1`] keeps and the #VMEXIT
/// brings back ([`super::vmexit::restore_l1`]), not the whole live part:
/// the rest is the same for L1 and L2 (nested_ctl, and the pause filter,
/// AVIC, SEV and LBR fields L0 never sets) or is the CPU's output
/// (EXITCODE, EXITINFO1/2, EXITINTINFO: read at each exit, before any
/// reflection) or is reset by the #VMEXIT (EVENTINJ, clean bits).
pub fn copy_switched_controls(d: &mut ControlArea, s: &ControlArea) {
    d.copy_span_from::<INTERCEPTS_START, INTERCEPTS_END>(s);
    d.copy_span_from::<MAPS_TO_SHADOW_START, MAPS_TO_SHADOW_END>(s);
    d.ncr3 = s.ncr3;
    d.next_rip = s.next_rip;
}

/// Stashes in hsave what the nested #VMEXIT brings back: L0's controls for
/// L1 ([`copy_switched_controls`]) and L1's state that VMRUN switches (APM
/// 15.5.1: ES, CS, SS, DS, GDTR, IDTR, EFER, CR0, CR3, CR4, RFLAGS, RIP,
/// RSP, RAX), with G_PAT (L0 keeps L1's PAT there) and CR2, DR6, DR7, CPL
/// (for a VMRUN refused after vmcb12's state was loaded: L2 never ran).
/// Not a page copy: nothing else in the active VMCB changes while L2 runs
/// but the VMLOAD set, which stays L2's at the #VMEXIT
/// ([`super::vmexit::restore_l1`]).
pub fn stash_l1(hsave: &mut Vmcb, active: &Vmcb) {
    copy_switched_controls(&mut hsave.control, &active.control);
    let (d, s) = (&mut hsave.state, &active.state);
    d.es = s.es;
    d.cs = s.cs;
    d.ss = s.ss;
    d.ds = s.ds;
    d.gdtr = s.gdtr;
    d.idtr = s.idtr;
    d.efer = s.efer;
    d.cr0 = s.cr0;
    d.cr3 = s.cr3;
    d.cr4 = s.cr4;
    d.rflags = s.rflags;
    d.rip = s.rip;
    d.rsp = s.rsp;
    d.rax = s.rax;
    d.g_pat = s.g_pat;
    d.cr2 = s.cr2;
    d.dr6 = s.dr6;
    d.dr7 = s.dr7;
    d.cpl = s.cpl;
}

/// Undoes [`read_vmcb12`]'s load of a vmcb12 the checks refused: L1's
/// state as [`stash_l1`] kept it (a superset of what the load wrote).
pub fn unload_l2_state(active: &mut StateSaveArea, hsave: &StateSaveArea) {
    load_l2_state(active, hsave);
}

/// L2's first RIP and the soft event L0 tracks for vmcb12's EVENTINJ.
///
/// A soft event (INTn, INT3, INTO) pushes vmcb12's NEXT_RIP as its return
/// address on a CPU with NRIP save (APM 15.20). Without it (QEMU TCG,
/// which pushes the VMCB's RIP for an injected TYPE 4 event), L0 starts L2
/// at NEXT_RIP instead, so the same address is pushed, and remembers the
/// real RIP to put back if the event is not delivered
/// ([`crate::event::unwind_soft_rip`]). With NRIP save RIP stays.
///
/// Limit (as KVM's `!nrips` path): if the delivery faults inside L2 without
/// any exit (e.g. #NP for a missing gate, not intercepted), the fault's
/// frame holds NEXT_RIP where hardware would push vmcb12's RIP.
pub fn soft_event_entry(
    vmcb12_event_inj: u64,
    rip: u64,
    next_rip: u64,
    host_nrips: bool,
) -> (u64, Option<SoftEvent>) {
    let event = EventInfo(vmcb12_event_inj);
    if !event.is_valid() || !is_soft(event) {
        return (rip, None);
    }
    let soft = SoftEvent {
        old_rip: rip,
        next_rip,
    };
    (if host_nrips { rip } else { next_rip }, Some(soft))
}

/// Loads L2's state from vmcb12 into the active save area: the fields
/// VMRUN loads (APM Vol. 2, 15.5.1). Not FS, GS, TR, LDTR, KernelGsBase,
/// STAR/LSTAR/CSTAR/SFMASK or SYSENTER_*: VMRUN leaves those as they are
/// (L1 moves them with VMLOAD/VMSAVE). Not G_PAT: without nested paging
/// L2 runs with L1's PAT under L0's tables; with it, hv's nested::npt
/// loads vmcb12's G_PAT.
pub fn load_l2_state(active: &mut StateSaveArea, vmcb12: &StateSaveArea) {
    active.es = vmcb12.es;
    active.cs = vmcb12.cs;
    active.ss = vmcb12.ss;
    active.ds = vmcb12.ds;
    active.gdtr = vmcb12.gdtr;
    active.idtr = vmcb12.idtr;
    active.efer = vmcb12.efer;
    active.cr0 = vmcb12.cr0;
    active.cr2 = vmcb12.cr2;
    active.cr3 = vmcb12.cr3;
    active.cr4 = vmcb12.cr4;
    active.rflags = vmcb12.rflags;
    active.rip = vmcb12.rip;
    active.rsp = vmcb12.rsp;
    active.rax = vmcb12.rax;
    active.dr6 = vmcb12.dr6;
    active.dr7 = vmcb12.dr7;
    active.cpl = vmcb12.cpl;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{InterceptMisc1, InterceptMisc2, Vmcb};

    fn l2c() -> L2Controls {
        L2Controls {
            msrpm_pa: 0x5000,
            iopm_pa: 0x8000,
            asid: 2,
            tlb_control: 1,
            vgif_offered: false,
        }
    }

    #[test]
    fn l2_controls_keep_l0_paging_and_compose_the_offset() {
        let mut l0 = ControlArea::new();
        l0.nested_ctl = 1;
        l0.ncr3 = 0xabc000;
        l0.tsc_offset = 1000u64.wrapping_neg();
        l0.guest_asid = 1;
        l0.intercept_misc1 = InterceptMisc1::CPUID.bits();
        let mut v12 = ControlArea::new();
        v12.tsc_offset = 1 << 40;
        v12.intercept_misc1 = InterceptMisc1::HLT.bits();
        v12.intercept_misc2 = InterceptMisc2::VMRUN.bits();
        v12.ncr3 = 0xdead000; // not here: nested paging is hv's nested::npt
        v12.event_inj = 0x8000_0306;
        let c = build_l2_controls(&l0, &v12, &l2c());
        assert_eq!((c.nested_ctl, c.ncr3), (1, 0xabc000));
        assert_eq!(c.tsc_offset, (1u64 << 40) - 1000);
        assert_eq!(c.guest_asid, 2);
        assert_eq!((c.msrpm_base_pa, c.iopm_base_pa), (0x5000, 0x8000));
        assert_eq!(
            c.intercept_misc1,
            (InterceptMisc1::CPUID | InterceptMisc1::HLT).bits()
        );
        assert_eq!(c.intercept_misc2, InterceptMisc2::VMRUN.bits());
        assert_eq!(c.event_inj, 0x8000_0306);
        assert_eq!(c.vmcb_clean, 0);
    }

    /// L2 starts with vmcb12's interrupt shadow bit only.
    #[test]
    fn l2_interrupt_shadow_is_vmcb12s_bit_0() {
        let l0 = ControlArea::new();
        let mut v12 = ControlArea::new();
        for (shadow, expected) in [(0, 0), (1, 1), (0xfe, 0), (0x3, 1)] {
            v12.interrupt_shadow = shadow;
            let c = build_l2_controls(&l0, &v12, &l2c());
            assert_eq!(c.interrupt_shadow, expected, "vmcb12 shadow {shadow:#x}");
        }
    }

    #[test]
    fn next_rip_comes_from_vmcb12() {
        let mut v12 = ControlArea::new();
        v12.next_rip = 0x4002;
        let mut l0 = ControlArea::new();
        l0.next_rip = 0x9999; // stale, from L1's last exit
        assert_eq!(build_l2_controls(&l0, &v12, &l2c()).next_rip, 0x4002);
    }

    #[test]
    fn soft_events_start_at_next_rip_without_nrips() {
        let int30 = EventInfo::software_interrupt(0x30).0;
        let soft = Some(SoftEvent {
            old_rip: 0x4000,
            next_rip: 0x4002,
        });
        assert_eq!(
            soft_event_entry(int30, 0x4000, 0x4002, false),
            (0x4002, soft)
        );
        assert_eq!(
            soft_event_entry(int30, 0x4000, 0x4002, true),
            (0x4000, soft)
        );
        let int3 = EventInfo::exception(3).0;
        assert_eq!(soft_event_entry(int3, 0x4000, 0x4001, false).0, 0x4001);
        // Not soft, or not valid: RIP stays, nothing tracked.
        for e in [
            EventInfo::external_interrupt(0x30).0,
            EventInfo::exception(6).0,
            int30 & !EventInfo::VALID,
        ] {
            assert_eq!(soft_event_entry(e, 0x4000, 0x4002, false), (0x4000, None));
        }
    }

    /// Every field VMRUN uses comes from vmcb12, the state straight into
    /// L2's save area; nothing else is read.
    #[test]
    fn read_vmcb12_takes_what_vmrun_uses_only() {
        let mut l1 = Vmcb::new();
        l1.as_bytes_mut().fill(0x5A);
        let mut copy = Vmcb::new();
        let mut l2 = StateSaveArea::new();
        read_vmcb12(&mut copy, &mut l2, &l1);
        let all = u64::from_ne_bytes([0x5A; 8]);
        let c = &copy.control;
        for v in [
            c.intercept_cr,
            c.intercept_dr,
            c.intercept_exceptions,
            c.intercept_misc1,
            c.intercept_misc2,
            c.intercept_misc3,
            c.guest_asid,
        ] {
            assert_eq!(v, 0x5A5A_5A5A);
        }
        for v in [
            c.iopm_base_pa,
            c.msrpm_base_pa,
            c.tsc_offset,
            c.int_ctl,
            c.interrupt_shadow,
            c.nested_ctl,
            c.event_inj,
            c.ncr3,
            c.next_rip,
        ] {
            assert_eq!(v, all);
        }
        assert_eq!(c.tlb_control, 0x5A);
        // VMRUN's outputs and what L0 does not offer: not read.
        assert_eq!(
            (c.exit_code, c.exit_info1, c.exit_info2, c.exit_int_info),
            (0, 0, 0, 0)
        );
        assert_eq!((c.virt_ext, c.vmcb_clean, c.avic_apic_bar), (0, 0, 0));
        assert_eq!(copy.state.g_pat, all);
        assert_eq!(copy.state.rip, 0, "the state goes to L2's save area");
        for seg in [l2.es, l2.cs, l2.ss, l2.ds, l2.gdtr, l2.idtr] {
            assert_eq!(seg, l1.state.es);
        }
        for v in [
            l2.efer, l2.cr0, l2.cr2, l2.cr3, l2.cr4, l2.dr6, l2.dr7, l2.rflags, l2.rip, l2.rsp,
            l2.rax,
        ] {
            assert_eq!(v, all);
        }
        assert_eq!(l2.cpl, 0x5A);
        // The VMLOAD set and the rest: not read.
        assert_eq!((l2.fs, l2.gs, l2.tr, l2.ldtr), Default::default());
        assert_eq!(
            (
                l2.star,
                l2.kernel_gs_base,
                l2.sysenter_cs,
                l2.spec_ctrl,
                l2.g_pat
            ),
            (0, 0, 0, 0, 0)
        );
    }

    /// A refused vmcb12, read over L1's stashed state, leaves L1's state
    /// exactly as it was.
    #[test]
    fn refused_vmcb12_is_unloaded() {
        let mut active = Vmcb::new();
        active.as_bytes_mut()[0x400..].fill(0x11);
        active.state.cpl = 3;
        let before = active.clone();
        let mut hsave = Vmcb::new();
        stash_l1(&mut hsave, &active);
        let mut l1 = Vmcb::new();
        l1.as_bytes_mut().fill(0x5A);
        let mut copy = Vmcb::new();
        read_vmcb12(&mut copy, &mut active.state, &l1);
        assert_ne!(active.state, before.state);
        unload_l2_state(&mut active.state, &hsave.state);
        assert_eq!(active.state, before.state);
    }

    /// hsave gets L0's controls and L1's switched state, not the VMLOAD set.
    #[test]
    fn stash_l1_keeps_what_the_vmexit_restores() {
        let mut active = Vmcb::new();
        active.control.tsc_offset = 7;
        active.control.intercept_misc1 = 0x44;
        active.control.next_rip = 0x99;
        active.state.rip = 0x2000;
        active.state.rsp = 0x3000;
        active.state.rax = 0x9000;
        active.state.cr3 = 0x4000;
        active.state.cs.attrib = 0x29b;
        active.state.g_pat = 0x0007_0406_0007_0406;
        active.state.fs.base = 0x1111;
        active.state.star = 0x2222;
        let mut hsave = Vmcb::new();
        stash_l1(&mut hsave, &active);
        assert_eq!(
            (
                hsave.control.tsc_offset,
                hsave.control.intercept_misc1,
                hsave.control.next_rip
            ),
            (7, 0x44, 0x99)
        );
        assert_eq!(
            (
                hsave.state.rip,
                hsave.state.rsp,
                hsave.state.rax,
                hsave.state.cr3
            ),
            (0x2000, 0x3000, 0x9000, 0x4000)
        );
        assert_eq!(hsave.state.cs.attrib, 0x29b);
        assert_eq!(hsave.state.g_pat, 0x0007_0406_0007_0406);
        assert_eq!((hsave.state.fs.base, hsave.state.star), (0, 0));
    }

    #[test]
    fn l2_state_leaves_the_vmload_set_alone() {
        let mut active = Vmcb::new();
        active.state.fs.base = 0x1111;
        active.state.kernel_gs_base = 0x2222;
        active.state.g_pat = 0x0007_0406_0007_0406;
        let mut v12 = Vmcb::new();
        v12.state.rip = 0x4000;
        v12.state.rax = 7;
        v12.state.fs.base = 0x9999;
        v12.state.kernel_gs_base = 0x8888;
        v12.state.g_pat = 0;
        v12.state.cs.attrib = 0x29b;
        load_l2_state(&mut active.state, &v12.state);
        assert_eq!(
            (active.state.rip, active.state.rax, active.state.cs.attrib),
            (0x4000, 7, 0x29b)
        );
        assert_eq!(
            (active.state.fs.base, active.state.kernel_gs_base),
            (0x1111, 0x2222)
        );
        assert_eq!(active.state.g_pat, 0x0007_0406_0007_0406);
    }
}
