//! L2's interrupt shadow at entry with L1's V_IRQ pending: L0 single-steps
//! the one shadowed instruction before the CPU may take V_IRQ
//! ([`svm::shadow_step`]: QEMU TCG before 9.1 drops the shadow at VMRUN).

use crate::vmm::vcpu::Vcpu;
use svm::shadow_step::{arm, disarm, needs_step};
use svm::ExitCode;

/// Before VMRUN (after every other change to the VMCB): arm the step.
pub fn before_entry(vcpu: &mut Vcpu) {
    let c = &vcpu.vmcb.control;
    if !vcpu.nested.in_l2()
        || vcpu.apic_window
        || !needs_step(c.interrupt_shadow, c.int_ctl, c.event_inj)
    {
        return;
    }
    let v = &mut *vcpu.vmcb;
    let (rflags, int_ctl, step) = arm(v.state.rip, v.state.rflags, v.control.int_ctl, v.state.dr6);
    v.state.rflags = rflags;
    v.control.int_ctl = int_ctl;
    vcpu.shadow_step = Some(step);
}

/// Right after the exit, before anything reads the VMCB: the guest's TF,
/// V_IRQ and DR6 again. True when the exit was only the step's #DB.
/// No step armed (the usual case) stays inline in the run loop.
#[inline(always)]
pub fn after_exit(vcpu: &mut Vcpu) -> bool {
    match vcpu.shadow_step.take() {
        None => false,
        Some(step) => after_step(vcpu, step),
    }
}

#[inline(never)]
fn after_step(vcpu: &mut Vcpu, step: svm::shadow_step::ShadowStep) -> bool {
    let debug_exit = ExitCode::from_raw(vcpu.vmcb.control.exit_code) == ExitCode::Exception(1);
    let v = &mut *vcpu.vmcb;
    let s = &v.state;
    let d = disarm(step, s.rip, s.rflags, v.control.int_ctl, s.dr6, debug_exit);
    (v.state.rflags, v.state.dr6) = (d.rflags, d.dr6);
    v.control.int_ctl = d.int_ctl;
    if d.shadow {
        v.control.interrupt_shadow |= 1;
    }
    d.drop_exit
}
