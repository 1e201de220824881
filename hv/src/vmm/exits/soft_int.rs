//! INTn exits from L2 that L0 asked for on L1's behalf: INT3/INTO under
//! L1's #BP/#OF intercepts ([`svm::nested::soft_int`]).

use super::{inject, rip, Action};
use crate::vmm::enable::HostCpu;
use crate::vmm::nested;
use crate::vmm::vcpu::Vcpu;
use crate::vmm::vm::Vm;
use svm::nested::soft_int::{route, SoftIntRoute};
use svm::{EventInfo, ExitCode};

/// Handles an INTn exit from L2, or `None` to route it as usual (not from
/// L2, or L1's own INTn intercept).
pub fn l2_swint(vcpu: &mut Vcpu, vm: &mut Vm, host: &HostCpu) -> Option<Action> {
    let l2 = vcpu.nested.l2.as_ref()?;
    let decoded = match rip::decode_at_rip(vcpu, vm) {
        Ok(d) => d,
        Err(no) => return Some(no.deliver(vcpu, vm, host)),
    };
    let insn = decoded.soft_interrupt()?;
    match route(insn, &l2.vmcb12.control) {
        SoftIntRoute::L1Swint => None,
        SoftIntRoute::L1Exception(vector) => {
            // APM 15.12: an exception #VMEXIT, RIP at the instruction;
            // NEXT_RIP past it (nested::vmexit computes it for #BP/#OF).
            let c = &mut vcpu.vmcb.control;
            c.exit_info1 = 0;
            c.exit_info2 = 0;
            c.exit_int_info = 0;
            Some(nested::vmexit::reflect(
                vcpu,
                vm,
                host,
                ExitCode::Exception(vector),
            ))
        }
        SoftIntRoute::L2(vector) => {
            // Delivered as the CPU would have: a software interrupt whose
            // return address is past the instruction (TCG pushes the
            // VMCB's RIP for an injected TYPE 4 event).
            vcpu.vmcb.state.rip = rip::rip_after(vcpu, decoded.len as u64);
            Some(inject(vcpu, EventInfo::software_interrupt(vector)))
        }
    }
}
