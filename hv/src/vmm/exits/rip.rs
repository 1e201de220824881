//! Moving the guest past an intercepted instruction.
//!
//! With NRIP save the CPU reports the next RIP (`next_rip`, APM 15.7.1);
//! without it (QEMU TCG) the instruction at RIP is decoded here.

use super::{Action, Stop};
use crate::vmm::enable::HostCpu;
use crate::vmm::vcpu::Vcpu;
use crate::vmm::vm::Vm;
use svm::decode::{self, Insn, MAX_INSN_LEN};

/// The intercepted instruction at the guest's RIP and its length, decoded
/// from guest memory.
pub fn decode_at_rip(vcpu: &Vcpu, vm: &Vm) -> Result<(Insn, u64), Stop> {
    let s = &vcpu.vmcb.state;
    let mut bytes = [0u8; MAX_INSN_LEN];
    let n = vm.memory.read_virt(s.cr3, s.rip, &mut bytes);
    decode::intercepted_len(&bytes[..n])
        .map(|(insn, len)| (insn, len as u64))
        .ok_or_else(|| {
            Stop::Unhandled(alloc::format!(
                "cannot decode the instruction at rip {:#x}: {:02x?}",
                s.rip,
                &bytes[..n]
            ))
        })
}

/// Length of the intercepted instruction at the guest's RIP.
pub fn insn_len(vcpu: &Vcpu, vm: &Vm, host: &HostCpu) -> Result<u64, Stop> {
    let s = &vcpu.vmcb.state;
    if host.features.has(svm::cpuid::SvmFeatureFlags::NRIPS) {
        let next = vcpu.vmcb.control.next_rip;
        if next > s.rip && next - s.rip <= MAX_INSN_LEN as u64 {
            return Ok(next - s.rip);
        }
    }
    decode_at_rip(vcpu, vm).map(|(_, len)| len)
}

/// Advances RIP past the intercepted instruction.
pub fn advance(vcpu: &mut Vcpu, vm: &Vm, host: &HostCpu) -> Result<(), Stop> {
    let len = insn_len(vcpu, vm, host)?;
    vcpu.vmcb.state.rip = vcpu.vmcb.state.rip.wrapping_add(len);
    Ok(())
}

/// An exit with nothing to emulate (HLT with no interrupt to wait for):
/// step over it.
pub fn skip(vcpu: &mut Vcpu, vm: &mut Vm, host: &HostCpu) -> Action {
    match advance(vcpu, vm, host) {
        Ok(()) => Action::Resume,
        Err(stop) => Action::Stop(stop),
    }
}
