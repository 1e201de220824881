//! Nested SVM for L1 hypervisors, with the hsave model of seed 000 (the
//! pure logic is in [`svm::nested`]; this is where it meets the vCPU).
//!
//! L1's SVM state is virtual: EFER.SVME, VM_HSAVE_PA (recorded, never
//! used as memory: L1's state goes to [`Nested::hsave`], a page of
//! hypervisor memory), VM_CR and GIF. Every SVM instruction L1 executes is
//! intercepted and emulated here.

pub mod insns;
pub mod npt;
pub mod vgif;
pub mod vmexit;
pub mod vmrun;

use super::memory::GuestMemory;
use super::phys_box::PhysBox;
use alloc::boxed::Box;
use svm::nested::map_view::{IopmView, MsrpmView};
use svm::{MsrPermissionMap, Vmcb};

/// ASID L0 runs every L2 with (L1 runs with 1).
pub const L2_ASID: u32 = 2;

/// An L2 that is running (or about to) in the active VMCB.
#[derive(Debug)]
pub struct L2 {
    /// Where vmcb12 is in L1's memory.
    pub vmcb12_gpa: u64,
    /// The hypervisor's copy of vmcb12's controls (those VMRUN and L0 use:
    /// `svm::nested::vmrun::read_controls`) and G_PAT, read once at VMRUN
    /// and checked; the only version of vmcb12's controls L0 uses while
    /// L2 runs. Its other fields mean nothing: vmcb12's state was read
    /// straight into the active VMCB.
    pub vmcb12: Box<Vmcb>,
    /// L2's EFER.SVME (virtual: the active VMCB's SVME stays set, as the
    /// real VMRUN requires). Set from vmcb12 at VMRUN, changed by L2's
    /// WRMSR EFER when L1 does not intercept it, shown in L2's RDMSR and
    /// in vmcb12.EFER at the exit; decides whether L2's SVM instructions
    /// are #UD (APM 15.4).
    pub svme: bool,
}

/// vmcb12.EFER as L2 left it: the active VMCB's EFER with L2's virtual
/// SVME (for the nested #VMEXIT, after the save-area copy).
pub fn show_l2_svme(vmcb12: &mut Vmcb, l2: &L2) {
    let svme = svm::msr::EFER_SVME;
    vmcb12.state.efer = match l2.svme {
        true => vmcb12.state.efer | svme,
        false => vmcb12.state.efer & !svme,
    };
}

/// A vCPU's nested-SVM state.
#[derive(Debug)]
pub struct Nested {
    /// L1's EFER.SVME.
    pub svme: bool,
    /// L1's VM_HSAVE_PA MSR (0: not set).
    pub hsave_pa: u64,
    /// L1's VM_CR MSR.
    pub vm_cr: u64,
    /// L1's global interrupt flag. While clear, L0 holds its injections.
    pub gif: bool,
    /// An external interrupt L0 holds for L1 until GIF and RFLAGS.IF allow.
    pub pending_interrupt: Option<u8>,
    /// The running L2, if any.
    pub l2: Option<L2>,
    /// The soft event from vmcb12's EVENTINJ that L0 is still delivering
    /// to L2 (its RIP bookkeeping: [`svm::event::SoftEvent`]).
    pub soft_event: Option<svm::event::SoftEvent>,
    /// L1's state and L0's controls while L2 runs (never L1's page): only
    /// the fields `svm::nested::vmrun::stash_l1` names are meaningful.
    pub hsave: PhysBox<Vmcb>,
    /// L0's MSR map merged with L1's, for L2 (L2's I/O map is L0's: it
    /// intercepts every port already).
    pub msrpm: PhysBox<MsrPermissionMap>,
    /// Whether `msrpm` holds L0's map outside the pass-through MSRs yet.
    pub msrpm_holds_l0: bool,
    /// The vmcb12 copy buffer of the last L2, kept for the next VMRUN.
    pub spare_vmcb12: Option<Box<Vmcb>>,
    /// The active VMCB holds L1's GIF in V_GIF for this run ([`vgif`]).
    pub vgif_in_vmcb: bool,
    /// Shadow nested paging for L2s that L1 runs with NP ([`npt`]).
    pub npt: npt::L2Npt,
}

impl Nested {
    /// State for a vCPU that has not used SVM yet (GIF set, as at reset).
    pub fn new() -> Result<Self, &'static str> {
        Ok(Self {
            svme: false,
            hsave_pa: 0,
            vm_cr: 0,
            gif: true,
            pending_interrupt: None,
            l2: None,
            soft_event: None,
            hsave: PhysBox::new_zeroed().ok_or("out of memory for hsave")?,
            msrpm: PhysBox::new_zeroed().ok_or("out of memory for the L2 MSRPM")?,
            msrpm_holds_l0: false,
            spare_vmcb12: None,
            vgif_in_vmcb: false,
            npt: npt::L2Npt::default(),
        })
    }

    /// Whether L2 runs in the active VMCB.
    pub fn in_l2(&self) -> bool {
        self.l2.is_some()
    }

    /// vmcb12's TSC offset while L2 runs.
    pub fn l2_tsc_offset(&self) -> Option<u64> {
        self.l2.as_ref().map(|l2| l2.vmcb12.control.tsc_offset)
    }
}

/// Whether `gpa` is page aligned and the VMCB there all in L1's memory
/// ([`l1_vmcb_mut`] gives it then).
pub fn vmcb_in_l1(memory: &GuestMemory, gpa: u64) -> bool {
    let size = core::mem::size_of::<Vmcb>() as u64;
    gpa.is_multiple_of(4096) && memory.slice(gpa, size).is_ok()
}

/// A page-aligned VMCB in L1's memory, if all of it is inside.
pub fn l1_vmcb_mut(memory: &mut GuestMemory, gpa: u64) -> Option<&mut Vmcb> {
    if !gpa.is_multiple_of(4096) {
        return None;
    }
    let bytes = memory
        .slice_mut(gpa, core::mem::size_of::<Vmcb>() as u64)
        .ok()?;
    // SAFETY: 4 KiB of guest RAM, page aligned (guest RAM is 2 MiB aligned
    // in host memory), exclusively borrowed; every bit pattern is a valid
    // Vmcb (plain integers).
    Some(unsafe { &mut *(bytes.as_mut_ptr() as *mut Vmcb) })
}

/// L1's MSR and I/O permission maps for vmcb12, read where they are in
/// L1's memory, never copied. vmcb12's checks only keep them below
/// MAXPHYADDR, so part or all of a map may lie outside L1's RAM: those
/// bytes read as all-ones (unbacked memory on hardware), i.e. intercept.
pub fn l1_maps<'m>(memory: &'m GuestMemory, vmcb12: &Vmcb) -> (MsrpmView<'m>, IopmView<'m>) {
    let ram = memory.bytes();
    (
        MsrpmView::in_ram(ram, vmcb12.control.msrpm_base_pa & !0xfff),
        IopmView::in_ram(ram, vmcb12.control.iopm_base_pa & !0xfff),
    )
}
