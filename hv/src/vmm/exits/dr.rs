//! DR7 (and DR5) write exits: MOV to DR7 emulated ([`svm::emulate::dr`]),
//! so no guest runs QEMU's DR7 bookkeeping (docs/qemu-tcg.md).

use super::cr::{fault_event, gpr_operand};
use super::rip::{self, NoInsn};
use super::{raise, Action};
use crate::vmm::enable::HostCpu;
use crate::vmm::vcpu::Vcpu;
use crate::vmm::vm::Vm;
use svm::decode::Insn;
use svm::emulate::dr;
use svm::EventInfo;

/// The DR write intercepts L0 keeps for every guest: DR7, and DR5 (DR7's
/// alias while CR4.DE is clear).
pub const INTERCEPT_DR: u32 = (1 << (16 + 5)) | (1 << (16 + 7));

/// CR4.DE
const CR4_DE: u64 = 1 << 3;

/// Handles a write exit of debug register `n` (5 or 7).
pub fn handle(vcpu: &mut Vcpu, vm: &mut Vm, host: &HostCpu, n: u8) -> Action {
    let d = match rip::decode_at_rip(vcpu, vm) {
        Ok(d) => d,
        Err(no) => return no.deliver(vcpu, vm, host),
    };
    let Insn::MovToDr { dr: reg, gpr } = d.insn else {
        return NoInsn::ud().deliver(vcpu, vm, host);
    };
    if reg != n {
        return NoInsn::ud().deliver(vcpu, vm, host);
    }
    if vcpu.vmcb.state.cpl != 0 {
        return raise(vcpu, vm, host, EventInfo::exception_with_error_code(13, 0));
    }
    let de = vcpu.vmcb.state.cr4 & CR4_DE != 0;
    let result = dr::alias(reg, de).and_then(|target| match target {
        7 => dr::write_dr7(vcpu.vmcb.state.dr7, gpr_operand(vcpu, gpr)),
        // Only DR5 and DR7 writes are intercepted.
        _ => Err(svm::emulate::Fault::Ud),
    });
    match result {
        Ok(value) => {
            vcpu.vmcb.state.dr7 = value;
            vcpu.vmcb.state.rip = rip::rip_after(vcpu, d.len as u64);
            rip::single_step(vcpu, vm, host)
        }
        Err(f) => {
            let event = fault_event(vcpu, f);
            raise(vcpu, vm, host, event)
        }
    }
}
