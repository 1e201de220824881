//! The other SVM instructions L1 executes: VMLOAD, VMSAVE (on L1's memory,
//! never executed on an L1-supplied address), STGI, CLGI (a virtual GIF),
//! INVLPGA, SKINIT (#UD). APM Vol. 2, 15.5.2, 15.17, 15.27.

use super::l1_vmcb_mut;
use crate::vmm::enable::HostCpu;
use crate::vmm::exits::{inject, rip, Action};
use crate::vmm::vcpu::Vcpu;
use crate::vmm::vm::Vm;
use svm::nested::route::pending_interrupt_exits_l2;
use svm::nested::vmload::{vmload, vmsave};
use svm::{EventInfo, ExitCode, TlbControl};

/// #UD when L1's EFER.SVME is clear, #GP(0) at CPL > 0 (APM 15.4/15.5).
fn fault_for_l1(vcpu: &Vcpu) -> Option<EventInfo> {
    if !vcpu.nested.svme {
        Some(EventInfo::exception(6))
    } else if vcpu.vmcb.state.cpl != 0 {
        Some(EventInfo::exception_with_error_code(13, 0))
    } else {
        None
    }
}

/// Emulates VMLOAD, VMSAVE, STGI, CLGI, INVLPGA or SKINIT for L1.
pub fn emulate(vcpu: &mut Vcpu, vm: &mut Vm, host: &HostCpu, code: ExitCode) -> Action {
    if code == ExitCode::Skinit {
        return inject(vcpu, EventInfo::exception(6));
    }
    if let Some(fault) = fault_for_l1(vcpu) {
        return inject(vcpu, fault);
    }
    match code {
        ExitCode::Vmload | ExitCode::Vmsave => {
            let gpa = vcpu.vmcb.state.rax;
            let Some(other) = l1_vmcb_mut(&mut vm.memory, gpa) else {
                return inject(vcpu, EventInfo::exception_with_error_code(13, 0));
            };
            if code == ExitCode::Vmload {
                vmload(&mut vcpu.vmcb.state, &other.state);
            } else {
                vmsave(&vcpu.vmcb.state, &mut other.state);
            }
        }
        ExitCode::Stgi => vcpu.nested.gif = true,
        ExitCode::Clgi => vcpu.nested.gif = false,
        // L1 invalidates an L2 mapping: L2's TLB is flushed at every nested
        // VMRUN anyway; flush now too, in case L1 runs on the entries.
        ExitCode::Invlpga => vcpu.vmcb.control.tlb_control = TlbControl::FlushAll.as_u8(),
        _ => {}
    }
    rip::skip(vcpu, vm, host)
}

/// Delivers the interrupt L0 holds for L1 once L1 can take it: not in L2,
/// GIF set, RFLAGS.IF set, no interrupt shadow, no other event pending.
///
/// While L2 runs, the interrupt ends L2's run with #VMEXIT(INTR) to L1 (and
/// then waits for L1's STGI) when L1 intercepts INTR and neither its GIF
/// nor the IF that masks it — L1's saved IF with V_INTR_MASKING, else L2's
/// — holds it back ([`pending_interrupt_exits_l2`], as KVM's
/// svm_check_nested_events). Physical interrupts are never reflected: they
/// are L0's (route_exit). The exit is made up before L2 runs again, so an
/// event waiting in EVENTINJ goes to L1 in EXITINTINFO (reflect).
pub fn deliver_pending_interrupt(vcpu: &mut Vcpu, vm: &mut Vm, host: &HostCpu) -> Action {
    let Some(vector) = vcpu.nested.pending_interrupt else {
        return Action::Resume;
    };
    if let Some(l2) = &vcpu.nested.l2 {
        let exits = pending_interrupt_exits_l2(
            &l2.vmcb12.control,
            vcpu.nested.gif,
            vcpu.nested.hsave.state.rflags,
            vcpu.vmcb.state.rflags,
        );
        if exits {
            let c = &mut vcpu.vmcb.control;
            c.exit_info1 = 0;
            c.exit_info2 = 0;
            c.exit_int_info = 0;
            return super::vmexit::reflect(vcpu, vm, host, ExitCode::Intr);
        }
        return Action::Resume;
    }
    let c = &vcpu.vmcb.control;
    let ready = vcpu.nested.gif
        && vcpu.vmcb.state.rflags & (1 << 9) != 0
        && c.interrupt_shadow & 1 == 0
        && !EventInfo(c.event_inj).is_valid();
    if ready {
        vcpu.vmcb.control.event_inj = EventInfo::external_interrupt(vector).0;
        vcpu.nested.pending_interrupt = None;
    }
    Action::Resume
}
