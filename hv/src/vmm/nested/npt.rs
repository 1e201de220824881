//! Nested paging for L1 (issue 11): an L2 that L1 runs with NP_ENABLE
//! runs on a shadow nested table ([`svm::nested::shadow_npt`]) that maps
//! L2-physical straight to host-physical, composing L1's nested table
//! (vmcb12's nCR3, in the format L1's paging mode selects) with L0's own
//! mapping of L1's memory ([`L1Layout`]). The shadow is filled on demand
//! from L2's #NPFs ([`on_npf`]) and dropped when L1's flushes say so
//! ([`svm::nested::shadow_npt::invalidate`]). L2's own CR3, CR0, CR4,
//! EFER and PAT are the guest's (APM Vol. 2, 15.25): L0 shadows nothing
//! else. An L2 without nested paging still runs under L0's NPT of L1's
//! memory, its physical addresses being L1's.
//!
//! L0's emulation of L2 instructions reads L2's memory through
//! [`to_l1`] (exits::rip), so it sees what L2 sees.

use crate::mem::frame::{self, FRAME_SIZE};
use crate::mem::paging::phys_to_virt;
use crate::vmm::enable::HostCpu;
use crate::vmm::exits::{Action, Stop};
use crate::vmm::vcpu::Vcpu;
use crate::vmm::vm::Vm;
use alloc::vec::Vec;
use svm::nested::shadow_npt::builder::{Frames, ShadowNpt};
use svm::nested::shadow_npt::compose::{compose, L0Map, Resolution, ShadowEntry};
use svm::nested::shadow_npt::invalidate::{
    flush_only, on_invlpga, on_l0_change, on_npf_mapped, on_vmrun, Context, Decision, WalkInputs,
};
use svm::nested::shadow_npt::layout::L1Layout;
use svm::nested::shadow_npt::walk::{npt_regs, translate, NestedAccess, Stage, WalkFault};
use svm::walk::PagingRegs;
use svm::{ExitCode, NestedCtl, TlbControl, Vmcb};

/// Shadow table frames from the hypervisor's frame allocator, reached
/// through the direct map.
struct HvFrames;

impl HvFrames {
    fn entry(table: u64, index: usize) -> *mut u64 {
        (phys_to_virt(table) + index as u64 * 8) as *mut u64
    }
}

impl Frames for HvFrames {
    fn alloc(&mut self) -> Option<u64> {
        frame::alloc_zeroed(1, FRAME_SIZE)
    }

    fn free(&mut self, frame: u64) {
        frame::free(frame, 1);
    }

    fn read(&self, table: u64, index: usize) -> u64 {
        // SAFETY: `table` is a frame of this shadow table (the builder only
        // passes its own), `index` < 512.
        unsafe { Self::entry(table, index).read() }
    }

    fn write(&mut self, table: u64, index: usize, value: u64) {
        // SAFETY: as for read; the tables are only L0's to write.
        unsafe { Self::entry(table, index).write(value) }
    }
}

/// A vCPU's shadow nested paging for its L2s.
#[derive(Debug, Default)]
pub struct L2Npt {
    /// The shadow table (kept across L2 runs while its context holds).
    shadow: Option<ShadowNpt>,
    /// What the shadow was built for.
    built_for: Option<Context>,
    /// L1's nested walk while an L2 runs with nested paging.
    active: Option<PagingRegs>,
    /// The entries in the shadow and the walks they came from, for
    /// [`revalidate`]; `None` once more than [`TRACKED`] were installed
    /// since the shadow was last emptied: a flush then empties it.
    installed: Option<Vec<(ShadowEntry, WalkInputs)>>,
}

/// Most installed entries a flush re-checks one by one (beyond, a flush
/// drops them all: re-walking costs more than refaulting the few used).
const TRACKED: usize = 64;

impl L2Npt {
    /// L1's nested walk, while the running L2 uses nested paging.
    pub fn active(&self) -> Option<&PagingRegs> {
        self.active.as_ref()
    }
}

impl Drop for L2Npt {
    fn drop(&mut self) {
        if let Some(shadow) = self.shadow.take() {
            shadow.destroy(&mut HvFrames);
        }
    }
}

/// L0's layout of L1's memory.
fn layout(vm: &Vm) -> L1Layout {
    L1Layout {
        ram_host: vm.memory.host_phys(),
        ram: vm.memory.layout(),
        phys_limit: svm::emulate::unbacked::phys_limit(vm.l1_limits.max_phys_bits),
        unbacked_frame: vm.npt.unbacked_frame(),
    }
}

/// L0's mapping of L1-physical `l1_pa`.
fn l0_map(vm: &Vm, l1_pa: u64) -> L0Map {
    layout(vm).map(l1_pa, vm.npt.is_mmio_page(l1_pa))
}

/// An entry of L1's nested table at L1-physical `at`, as the CPU's walk
/// reads it: RAM, all-ones in unbacked memory; `None` in an MMIO page or
/// beyond MAXPHYADDR (L0's business: the walk stops there).
#[inline]
fn read_l1(vm: &Vm, at: u64) -> Option<u64> {
    // RAM first: there `l0_map` is RAM whatever the MMIO list says, and
    // the list's scan is the costly part of each of a walk's reads.
    if let Some(e) = vm.memory.read_u64(at & !7) {
        return Some(e);
    }
    // Not RAM (past its end or in the PC hole): unbacked reads all-ones.
    match l0_map(vm, at) {
        L0Map::Ram { .. } => Some(u64::MAX),
        L0Map::NotRam => None,
    }
}

/// Why an L2-physical address has no L1-physical one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Miss {
    /// L1's nested table refuses: #VMEXIT(NPF) to L1 with these.
    Npf {
        /// EXITINFO1: the error code and the stage bit.
        exitinfo1: u64,
        /// EXITINFO2: the L2-physical address.
        exitinfo2: u64,
    },
    /// An entry of L1's table where L0 cannot read it (MMIO, beyond
    /// MAXPHYADDR): at this L1-physical address.
    Unreadable(u64),
}

/// The L1-physical address of L2-physical `gpa` through L1's nested table
/// (`regs`), for L0's emulation of an L2 access; `stage` says whether it
/// is an access to L2's own page tables (which count as writes, APM
/// 15.25.10) or the final one. A/D bits are left to the CPU's walks: the
/// pages L2 itself touched before the exit (its code, tables, an MMIO
/// operand) have them from [`on_npf`]. Known gap: an operand only L0
/// touches (INS/OUTS memory) gets none in L1's table, where the CPU would
/// set A (D for INS, APM 15.25.5); L0's emulation sets none in a guest's
/// own tables either (svm::walk), and `vm` is shared here.
pub fn to_l1(
    vm: &Vm,
    regs: &PagingRegs,
    gpa: u64,
    access: NestedAccess,
    stage: Stage,
) -> Result<u64, Miss> {
    match translate(|a| read_l1(vm, a), regs, gpa, access) {
        Ok(t) => Ok(t.l1_pa),
        Err(WalkFault::Npf(code)) => Err(Miss::Npf {
            exitinfo1: u64::from(code) | stage.bit(),
            exitinfo2: gpa,
        }),
        Err(WalkFault::Unreadable(at)) => Err(Miss::Unreadable(at)),
    }
}

/// At L1's VMRUN, with the L2 already built in the active VMCB: when
/// vmcb12 enables nested paging (offered to L1, so checked), L2 runs on
/// the shadow table with its own PAT (APM 15.25.8: G_PAT), and the shadow
/// is kept or dropped as L1's TLB_CONTROL, nCR3, ASID and paging mode
/// say ([`on_vmrun`]). Without it L2 runs on L0's NPT of L1's memory.
///
/// Inline up to the NP check: an L2 without nested paging costs a test.
#[inline(always)]
pub fn enter(vcpu: &mut Vcpu, vm: &Vm) -> Result<(), Stop> {
    let Some(l2) = &vcpu.nested.l2 else {
        return Ok(());
    };
    let np = l2.vmcb12.control.nested_ctl & NestedCtl::NP_ENABLE.bits() != 0;
    vcpu.nested.npt.active = None;
    if !np || !vm.l1_limits.npt_offered {
        return Ok(());
    }
    enter_np(vcpu, vm)
}

/// [`enter`] for an L2 that vmcb12 runs with nested paging.
#[inline(never)]
fn enter_np(vcpu: &mut Vcpu, vm: &Vm) -> Result<(), Stop> {
    let Some(l2) = &vcpu.nested.l2 else {
        return Ok(());
    };
    let v12: &Vmcb = &l2.vmcb12;
    let npt = &mut vcpu.nested.npt;
    // The table format is L1's paging mode at VMRUN (APM 15.25.4): legacy
    // (CR4.PAE clear), PAE, or long mode (EFER.LMA); CR0.PG does not pick
    // it, so a walk is always on.
    let l1 = &vcpu.nested.hsave.state;
    let cr0 = l1.cr0 | (1 << 31);
    let Some(regs) = npt_regs(
        cr0,
        l1.cr4,
        l1.efer,
        v12.control.ncr3,
        vm.l1_limits.max_phys_bits,
    ) else {
        return Ok(());
    };
    let ctx = Context::new(&regs, v12.control.guest_asid);
    let decision = on_vmrun(npt.built_for.as_ref(), &ctx, v12.control.tlb_control);
    if npt.shadow.is_none() {
        // L0 runs with EFER.NXE (mem::paging): NX works in the shadow.
        npt.shadow = ShadowNpt::new(&mut HvFrames, true);
        npt.installed = Some(Vec::new());
    }
    let Some(shadow) = npt.shadow.as_mut() else {
        return Err(Stop::Unhandled("out of memory for a shadow NPT".into()));
    };
    let revalidated = match (&mut npt.installed, decision) {
        (Some(list), Decision::DropAll) if flush_only(npt.built_for.as_ref(), &ctx) => {
            revalidate(vm, shadow, list);
            true
        }
        _ => false,
    };
    if !revalidated {
        shadow.apply(&mut HvFrames, decision);
        if decision == Decision::DropAll {
            npt.installed = Some(Vec::new());
        }
    }
    npt.built_for = Some(ctx);
    npt.active = Some(regs);
    let root = shadow.root();
    let g_pat = v12.state.g_pat;
    let active = &mut vcpu.vmcb;
    active.control.ncr3 = root;
    active.state.g_pat = g_pat;
    Ok(())
}

/// A flush of L2's translations with the context unchanged: each entry
/// installed stays only if L1's table still gives exactly it
/// ([`still_valid`]); the others go (and fault again when used).
fn revalidate(vm: &Vm, shadow: &mut ShadowNpt, list: &mut Vec<(ShadowEntry, WalkInputs)>) {
    list.retain(|(e, inputs)| {
        let keep = inputs.unchanged(|a| read_l1(vm, a));
        if !keep {
            shadow.remove(&mut HvFrames, e.gpa);
        }
        keep
    });
}

/// Records `e` (just installed, from the walk that read `inputs`) for
/// [`revalidate`]: the entries it replaced (any it overlaps: a larger
/// page split, smaller ones freed, the one refreshed) leave the list.
fn track(npt: &mut L2Npt, e: ShadowEntry, inputs: WalkInputs) {
    let Some(list) = &mut npt.installed else {
        return;
    };
    let overlaps = |o: &ShadowEntry| o.covers(e.gpa) || e.covers(o.gpa);
    list.retain(|(o, _)| !overlaps(o));
    if list.len() < TRACKED {
        list.push((e, inputs));
    } else {
        npt.installed = None;
    }
}

/// At the nested #VMEXIT (or a VMRUN that never entered L2): L1 runs on
/// L0's NPT again (restored from hsave); the shadow stays for the next L2.
pub fn leave(vcpu: &mut Vcpu) {
    vcpu.nested.npt.active = None;
}

/// L1's INVLPGA of a linear address in `asid`: drops the shadow if it is
/// that ASID's ([`on_invlpga`]).
pub fn invlpga(vcpu: &mut Vcpu, asid: u32) {
    let npt = &mut vcpu.nested.npt;
    let (Some(shadow), Some(ctx)) = (npt.shadow.as_mut(), npt.built_for) else {
        return;
    };
    let decision = on_invlpga(ctx.asid, asid);
    shadow.apply(&mut HvFrames, decision);
    if decision == Decision::DropAll {
        npt.installed = Some(Vec::new());
    }
}

/// L0 changed its own map of L1's memory (a new MMIO page): shadow
/// entries hold the old one, so all go ([`on_l0_change`]).
pub fn l0_changed(vcpu: &mut Vcpu) {
    let npt = &mut vcpu.nested.npt;
    if let Some(shadow) = npt.shadow.as_mut() {
        shadow.apply(&mut HvFrames, on_l0_change());
        npt.installed = Some(Vec::new());
    }
}

/// Sets the A/D bits a successful walk of L1's table sets (APM 15.25.5:
/// the nested walk sets them as a walk of L1's own tables would).
fn set_ad(vm: &mut Vm, updates: &[(u64, u64)]) {
    for &(at, bits) in updates {
        if let Ok(b) = vm.memory.slice_mut(at, 8) {
            let old = u64::from_le_bytes((&*b).try_into().unwrap_or([0; 8]));
            b.copy_from_slice(&(old | bits).to_le_bytes());
        }
    }
}

/// An #NPF while L2 runs on the shadow table: install the entry L1's and
/// L0's tables both allow and resume, or give L1 its #VMEXIT(NPF) with
/// the APM's EXITINFO1/2 (15.25.6), or, for an access L1's table allows
/// to memory L0 does not back with RAM (the APIC page, unbacked memory),
/// leave it to L0's own handling (exits::npf) with EXITINFO2 rewritten to
/// the L1-physical address (and P set: L0's NPT maps unbacked memory).
/// `None`: not an L2 on nested paging, or L0's own handling goes on.
pub fn on_npf(vcpu: &mut Vcpu, vm: &mut Vm, host: &HostCpu) -> Option<Action> {
    let regs = *vcpu.nested.npt.active()?;
    let c = &vcpu.vmcb.control;
    let (gpa, info1) = (c.exit_info2, c.exit_info1);
    let access = NestedAccess::from_exitinfo1(info1);
    let stage = Stage::from_exitinfo1(info1).unwrap_or(Stage::Final);
    let inputs = core::cell::Cell::new(WalkInputs::default());
    let read = |a| {
        let mut w = inputs.get();
        w.record(a);
        inputs.set(w);
        read_l1(vm, a)
    };
    let resolution = match translate(read, &regs, gpa, access) {
        Ok(t) => {
            set_ad(vm, t.ad.updates());
            compose(gpa, &t, l0_map(vm, t.l1_pa), access)
        }
        Err(WalkFault::Npf(code)) => Resolution::Reflect {
            exitinfo1: u64::from(code) | stage.bit(),
            exitinfo2: gpa,
        },
        Err(WalkFault::Unreadable(at)) => Resolution::L0Table { at },
    };
    match resolution {
        Resolution::Map(e) => {
            let npt = &mut vcpu.nested.npt;
            let shadow = npt.shadow.as_mut()?;
            shadow.apply(&mut HvFrames, on_npf_mapped(gpa));
            if let Err(why) = shadow.install(&mut HvFrames, &e) {
                log::warn!("vm {}: shadow NPT entry {e:?}: {why:?}", vm.name);
                return Some(Action::Stop(Stop::NestedPageFault {
                    gpa,
                    error_code: info1,
                }));
            }
            let mut inputs = inputs.get();
            if inputs.snapshot(|a| read_l1(vm, a)) {
                track(npt, e, inputs);
            } else {
                npt.installed = None;
            }
            // The old entry may be cached (APM 15.16).
            vcpu.vmcb.control.tlb_control = TlbControl::FlushThisAsid.as_u8();
            Some(Action::Resume)
        }
        Resolution::Reflect {
            exitinfo1,
            exitinfo2,
        } => Some(reflect_npf(vcpu, vm, host, exitinfo1, exitinfo2)),
        Resolution::L0 { l1_pa } => {
            let c = &mut vcpu.vmcb.control;
            c.exit_info2 = l1_pa;
            c.exit_info1 |= svm::NpfErrorCode::PRESENT.bits();
            None
        }
        Resolution::L0Table { at } => {
            log::warn!(
                "vm {}: L1's nested table entry at {at:#x} is not in its RAM",
                vm.name
            );
            Some(Action::Stop(Stop::NestedPageFault {
                gpa: at,
                error_code: info1,
            }))
        }
    }
}

/// #VMEXIT(NPF) to L1 (APM 15.25.6). An event L2 was being delivered is
/// in EVENTINJ by now (exits::reinject): reflect moves it to EXITINTINFO.
pub fn reflect_npf(
    vcpu: &mut Vcpu,
    vm: &mut Vm,
    host: &HostCpu,
    exitinfo1: u64,
    exitinfo2: u64,
) -> Action {
    let c = &mut vcpu.vmcb.control;
    c.exit_info1 = exitinfo1;
    c.exit_info2 = exitinfo2;
    c.exit_int_info = 0;
    super::vmexit::reflect(vcpu, vm, host, ExitCode::Npf)
}
