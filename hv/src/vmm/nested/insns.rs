//! The other SVM instructions, executed by L1 or by an L2 whose L1 does
//! not intercept them: VMLOAD, VMSAVE (never executed on a guest-supplied
//! address: L0 copies between the guest's current state and the VMCB in
//! L1's memory), STGI, CLGI (the vCPU's virtual GIF), INVLPGA, SKINIT
//! (#UD). APM Vol. 2, 15.5.2, 15.16, 15.17, 15.27.
//!
//! From L2 they act on L2's current state (the active VMCB), with rAX an
//! L2-physical address: L1-physical, or through L1's nested table when L1
//! runs L2 on nested paging (nested::npt). Never host memory
//! (CVE-2021-3656).

use super::l1_vmcb_mut;
use crate::vmm::enable::HostCpu;
use crate::vmm::exits::{raise, rip, Action};
use crate::vmm::vcpu::Vcpu;
use crate::vmm::vm::Vm;
use svm::nested::route::pending_interrupt_exits_l2;
use svm::nested::shadow_npt::walk::{NestedAccess, Stage};
use svm::nested::svm_insn::permission_fault;
use svm::nested::vmload::{vmload, vmsave};
use svm::{EventInfo, ExitCode, TlbControl};

/// The fault the running guest's own EFER.SVME (L1's virtual SVME, or
/// L2's) and CPL give an SVM instruction, if any.
fn fault_for_guest(vcpu: &Vcpu) -> Option<EventInfo> {
    let svme = match &vcpu.nested.l2 {
        Some(l2) => l2.svme,
        None => vcpu.nested.svme,
    };
    permission_fault(svme, vcpu.vmcb.state.cpl)
}

/// Emulates VMLOAD, VMSAVE, STGI, CLGI, INVLPGA or SKINIT for the running
/// guest. Faults go through [`raise`]: from L2, L1 gets them as exits when
/// it intercepts the vector.
pub fn emulate(vcpu: &mut Vcpu, vm: &mut Vm, host: &HostCpu, code: ExitCode) -> Action {
    if code == ExitCode::Skinit {
        return raise(vcpu, vm, host, EventInfo::exception(6));
    }
    if let Some(fault) = fault_for_guest(vcpu) {
        return raise(vcpu, vm, host, fault);
    }
    match code {
        ExitCode::Vmload | ExitCode::Vmsave => {
            // A page of L1's RAM, or #GP(0) (an unaligned address or one
            // outside L1's memory, as KVM).
            let mut gpa = vcpu.vmcb.state.rax;
            // From an L2 on nested paging rAX is L2-physical: through
            // L1's nested table (APM 15.25: every guest-physical address
            // is), whose refusal is L1's #NPF.
            if let Some(n) = vcpu.nested.npt.active() {
                let access = match code {
                    ExitCode::Vmsave => NestedAccess::WRITE,
                    _ => NestedAccess::READ,
                };
                match super::npt::to_l1(vm, n, gpa, access, Stage::Final) {
                    Ok(pa) => gpa = pa,
                    Err(super::npt::Miss::Npf {
                        exitinfo1,
                        exitinfo2,
                    }) => return super::npt::reflect_npf(vcpu, vm, host, exitinfo1, exitinfo2),
                    Err(super::npt::Miss::Unreadable(_)) => gpa = u64::MAX,
                }
            }
            let Some(other) = l1_vmcb_mut(&mut vm.memory, gpa) else {
                let gp = EventInfo::exception_with_error_code(13, 0);
                return raise(vcpu, vm, host, gp);
            };
            if code == ExitCode::Vmload {
                vmload(&mut vcpu.vmcb.state, &other.state);
            } else {
                vmsave(&vcpu.vmcb.state, &mut other.state);
            }
        }
        // One GIF per vCPU, whichever level runs (APM 15.17; KVM
        // stgi/clgi_interception); the nested #VMEXIT clears it anyway.
        ExitCode::Stgi => vcpu.nested.gif = true,
        ExitCode::Clgi => vcpu.nested.gif = false,
        // A guest invalidates a mapping: flush the running guest's TLB at
        // its next entry (L2's is also flushed at every nested VMRUN).
        // L1's INVLPGA (ECX: the ASID) also reaches L2's shadow NPT.
        ExitCode::Invlpga => {
            if !vcpu.nested.in_l2() {
                super::npt::invlpga(vcpu, vcpu.regs.rcx as u32);
            }
            vcpu.vmcb.control.tlb_control = TlbControl::FlushAll.as_u8()
        }
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
///
/// Before every entry: the usual case (nothing pending) stays inline in
/// the run loop.
#[inline(always)]
pub fn deliver_pending_interrupt(vcpu: &mut Vcpu, vm: &mut Vm, host: &HostCpu) -> Action {
    match vcpu.nested.pending_interrupt {
        None => Action::Resume,
        Some(vector) => deliver_interrupt(vcpu, vm, host, vector),
    }
}

#[inline(never)]
fn deliver_interrupt(vcpu: &mut Vcpu, vm: &mut Vm, host: &HostCpu, vector: u8) -> Action {
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
