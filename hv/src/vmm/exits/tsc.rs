//! RDTSC/RDTSCP exits (TSC exiting mode): the value the offset would give.
//! QEMU TCG reports RDTSCP with the RDTSC exit code (docs/qemu-tcg.md), so the
//! instruction is decoded to know whether ECX must get TSC_AUX.

use super::rip::{self, NoInsn};
use super::Action;
use crate::vmm::enable::HostCpu;
use crate::vmm::tsc::view_now;
use crate::vmm::vcpu::Vcpu;
use crate::vmm::vm::Vm;
use svm::decode::Insn;

pub fn handle(vcpu: &mut Vcpu, vm: &mut Vm, host: &HostCpu) -> Action {
    let d = match rip::decode_at_rip(vcpu, vm) {
        Ok(d) => d,
        Err(no) => return no.deliver(vcpu, vm, host),
    };
    let tsc = view_now(vcpu, vm);
    match d.insn {
        Insn::Rdtsc => {}
        Insn::Rdtscp => vcpu.regs.rcx = u64::from(vcpu.tsc_aux),
        // The bytes changed under L0 since the exit: no RDTSC to emulate.
        _ => return NoInsn::ud().deliver(vcpu, vm, host),
    }
    vcpu.vmcb.state.rax = tsc & 0xffff_ffff;
    vcpu.regs.rdx = tsc >> 32;
    vcpu.vmcb.state.rip = rip::rip_after(vcpu, d.len as u64);
    rip::single_step(vcpu, vm, host)
}
