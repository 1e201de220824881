//! LTR exits: LTR emulated with the CPU's checks ([`svm::emulate::tr`]),
//! the descriptor read from the guest's GDT and marked busy there.

use super::cr::{fault_event, operand16};
use super::rip::{self, NoInsn};
use super::{raise, Action};
use crate::vmm::enable::HostCpu;
use crate::vmm::vcpu::Vcpu;
use crate::vmm::vm::Vm;
use svm::decode::Insn;
use svm::emulate::tr::{ltr_descriptor_offset, ltr_load, LtrContext};

const RFLAGS_VM: u64 = 1 << 17;

/// Handles a TR write exit (LTR).
pub fn handle(vcpu: &mut Vcpu, vm: &mut Vm, host: &HostCpu) -> Action {
    let d = match rip::decode_at_rip(vcpu, vm) {
        Ok(d) => d,
        Err(no) => return no.deliver(vcpu, vm, host),
    };
    let Insn::Ltr(op) = d.insn else {
        return NoInsn::ud().deliver(vcpu, vm, host);
    };
    let selector = match operand16(vcpu, vm, op, &d) {
        Ok(v) => v,
        Err(no) => return no.deliver(vcpu, vm, host),
    };
    let s = &vcpu.vmcb.state;
    let ctx = LtrContext {
        protected: s.cr0 & svm::cr::CR0_PE != 0 && s.rflags & RFLAGS_VM == 0,
        cpl: s.cpl,
        long_mode: s.efer & svm::msr::EFER_LMA != 0,
        gdt_limit: s.gdtr.limit,
    };
    let at = match ltr_descriptor_offset(&ctx, selector) {
        Ok(offset) => s.gdtr.base.wrapping_add(offset),
        Err(f) => {
            let event = fault_event(vcpu, f);
            return raise(vcpu, vm, host, event);
        }
    };
    let mut desc = [0u8; 16];
    let len = if ctx.long_mode { 16 } else { 8 };
    if let Err(no) = rip::read_linear(vcpu, vm, at, &mut desc[..len]) {
        return no.deliver(vcpu, vm, host);
    }
    let low = u64::from_le_bytes(desc[..8].try_into().unwrap_or_default());
    let high = u64::from_le_bytes(desc[8..].try_into().unwrap_or_default());
    match ltr_load(&ctx, selector, low, high) {
        Ok((tr, busy)) => {
            if let Err(no) = rip::write_linear(vcpu, vm, at, &busy.to_le_bytes()) {
                return no.deliver(vcpu, vm, host);
            }
            vcpu.vmcb.state.tr = tr;
            vcpu.vmcb.state.rip = rip::rip_after(vcpu, d.len as u64);
            rip::single_step(vcpu, vm, host)
        }
        Err(f) => {
            let event = fault_event(vcpu, f);
            raise(vcpu, vm, host, event)
        }
    }
}
