//! The exceptions and NMIs L0 keeps for itself: #AC/#DB/#MC exits it owns
//! ([`svm::exception`]), physical NMIs (the host's), and the virtual NMIs
//! it delivers with their blocking ([`svm::nmi`]).

use super::{inject, Action, Stop};
use crate::vmm::enable::HostCpu;
use crate::vmm::vcpu::Vcpu;
use crate::vmm::vm::Vm;
use svm::exception::{l0_exception_exit, ExceptionExit};
use svm::nmi::{NmiAction, NmiWindow};
use svm::{CleanBits, EventInfo, ExitCode, InterceptMisc1};

/// An exception exit that is L0's (L1 does not intercept the vector, or
/// L1 itself raised it): back into the guest that raised it, or a stop.
pub fn handle(vcpu: &mut Vcpu, vector: u8) -> Action {
    let c = &vcpu.vmcb.control;
    match l0_exception_exit(vector, c.exit_info1, vcpu.vmcb.state.dr7) {
        ExceptionExit::Reinject { event, dr7 } => {
            vcpu.vmcb.state.dr7 = dr7;
            inject(vcpu, event)
        }
        ExceptionExit::Stop => Action::Stop(Stop::Unhandled(alloc::format!(
            "exception {vector} is the host's (not reflected to the guest)"
        ))),
    }
}

/// Every exit: the NMI block ends once the guest has left its IRET.
pub fn observe_exit(vcpu: &mut Vcpu) {
    vcpu.nmi.after_exit(vcpu.vmcb.state.rip);
}

/// L0's IRET intercept (set only while an injected NMI blocks others): the
/// IRET has not run yet; it runs when the guest resumes, and the next exit
/// elsewhere ends the block ([`observe_exit`]).
pub fn iret(vcpu: &mut Vcpu) -> Action {
    vcpu.nmi.iret_seen(vcpu.vmcb.state.rip);
    Action::Resume
}

/// Before an entry: deliver the NMI L0 holds when the guest can take it
/// (or end L2's run with #VMEXIT(NMI) when L1 intercepts NMI), and keep
/// the IRET intercept while NMIs are blocked. Inline in the run loop.
#[inline(always)]
pub fn deliver_pending_nmi(vcpu: &mut Vcpu, vm: &mut Vm, host: &HostCpu) -> Action {
    // No NMI pending: `NmiState::action` is `None` whatever the window,
    // so the window is not built (the common case at every entry).
    if vcpu.nmi.pending {
        if let Action::Stop(stop) = deliver_nmi(vcpu, vm, host) {
            return Action::Stop(stop);
        }
    }
    set_iret_intercept(vcpu);
    Action::Resume
}

/// [`deliver_pending_nmi`] with an NMI pending: inject it, or end L2's
/// run for L1, or let it wait.
#[inline(never)]
fn deliver_nmi(vcpu: &mut Vcpu, vm: &mut Vm, host: &HostCpu) -> Action {
    let l1_misc1 = vcpu
        .nested
        .l2
        .as_ref()
        .map(|l2| InterceptMisc1::from_bits_retain(l2.vmcb12.control.intercept_misc1));
    let c = &vcpu.vmcb.control;
    let window = NmiWindow {
        in_l2: l1_misc1.is_some(),
        l1_intercepts_nmi: l1_misc1.is_some_and(|m| m.contains(InterceptMisc1::NMI)),
        gif: vcpu.nested.gif,
        interrupt_shadow: c.interrupt_shadow & 1 != 0,
        event_pending: EventInfo(c.event_inj).is_valid(),
    };
    match vcpu.nmi.action(&window) {
        NmiAction::None => {}
        NmiAction::Inject => {
            vcpu.vmcb.control.event_inj = EventInfo::nmi().0;
            vcpu.nmi.injected();
        }
        NmiAction::ExitToL1 => {
            let c = &mut vcpu.vmcb.control;
            c.exit_info1 = 0;
            c.exit_info2 = 0;
            c.exit_int_info = 0;
            return crate::vmm::nested::vmexit::reflect(vcpu, vm, host, ExitCode::Nmi);
        }
    }
    Action::Resume
}

/// The IRET intercept, set or cleared for the next entry.
#[inline(always)]
fn set_iret_intercept(vcpu: &mut Vcpu) {
    const IRET: u32 = InterceptMisc1::IRET.bits();
    // The IRET intercept: L0's while it waits for one, L1's per vmcb12.
    let l1_iret = match &vcpu.nested.l2 {
        Some(l2) => l2.vmcb12.control.intercept_misc1 & IRET != 0,
        None => false,
    };
    let want = l1_iret || (vcpu.nmi.blocked && vcpu.nmi.wants_iret_intercept());
    let c = &mut vcpu.vmcb.control;
    let have = c.intercept_misc1 & IRET != 0;
    // Usually neither wanted nor set: one test of the bit, no write.
    if want != have {
        c.intercept_misc1 ^= IRET;
        c.vmcb_clean &= !CleanBits::INTERCEPTS.bits();
    }
}

/// Test hook [`svm::guest_abi::HC_PHYSICAL_NMI`]: right before the entry,
/// with GIF clear (the world switch clears it again), L0 sends itself an
/// NMI. The CPU holds it until VMRUN sets GIF in the guest, where the NMI
/// intercept ends the run and the host takes it after its STGI.
pub fn arm_physical_nmi(vcpu: &mut Vcpu) {
    if !core::mem::take(&mut vcpu.physical_nmi_at_entry) {
        return;
    }
    // SAFETY: CLGI only holds interrupts and NMIs; the world switch that
    // follows runs with GIF clear anyway and sets it again after the exit.
    unsafe { core::arch::asm!("clgi", options(nomem, nostack)) };
    crate::arch::lapic::send_self_nmi();
}
