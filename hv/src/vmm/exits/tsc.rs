//! RDTSC/RDTSCP exits (TSC exiting mode): the value the offset would give.
//! QEMU TCG reports RDTSCP with the RDTSC exit code (docs/qemu-tcg.md), so the
//! instruction is decoded to know whether ECX must get TSC_AUX.

use super::{rip, Action};
use crate::vmm::tsc::view_now;
use crate::vmm::vcpu::Vcpu;
use crate::vmm::vm::Vm;
use svm::decode::Insn;

pub fn handle(vcpu: &mut Vcpu, vm: &mut Vm) -> Action {
    let (insn, len) = match rip::decode_at_rip(vcpu, vm) {
        Ok(d) => d,
        Err(stop) => return Action::Stop(stop),
    };
    let tsc = view_now(vcpu, vm);
    match insn {
        Insn::Rdtsc => {}
        Insn::Rdtscp => vcpu.regs.rcx = u64::from(vcpu.tsc_aux),
        other => {
            return Action::Stop(super::Stop::Unhandled(alloc::format!(
                "RDTSC exit on {other:?}"
            )));
        }
    }
    vcpu.vmcb.state.rax = tsc & 0xffff_ffff;
    vcpu.regs.rdx = tsc >> 32;
    vcpu.vmcb.state.rip = vcpu.vmcb.state.rip.wrapping_add(len);
    Action::Resume
}
