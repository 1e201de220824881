//! VMMCALL: the hypercall ABI of [`svm::guest_abi`].

use super::{rip, Action, Stop};
use crate::vmm::enable::HostCpu;
use crate::vmm::vcpu::Vcpu;
use crate::vmm::vm::Vm;
use alloc::string::String;
use svm::guest_abi::{echo_sum, HC_DONE, HC_ECHO_SUM, HC_EXIT_COUNT, HC_UNKNOWN};
use svm::ExitCode;

/// Longest failure message read from a guest.
const MAX_MESSAGE: usize = 256;

pub fn handle(vcpu: &mut Vcpu, vm: &mut Vm, host: &HostCpu) -> Action {
    let (nr, a, b, c) = (
        vcpu.vmcb.state.rax,
        vcpu.regs.rbx,
        vcpu.regs.rcx,
        vcpu.regs.rdx,
    );
    let result = match nr {
        HC_DONE => return Action::Stop(done(vcpu, vm, a, b, c)),
        HC_ECHO_SUM => echo_sum(a, b, c),
        HC_EXIT_COUNT => {
            let count = vcpu.exit_counts.get(&a).copied().unwrap_or(0);
            // This VMMCALL was already counted.
            count - u64::from(a == ExitCode::Vmmcall.to_raw())
        }
        _ => HC_UNKNOWN,
    };
    vcpu.vmcb.state.rax = result;
    rip::skip(vcpu, vm, host)
}

/// `HC_DONE(status, message_gva, message_len)`.
fn done(vcpu: &Vcpu, vm: &Vm, status: u64, gva: u64, len: u64) -> Stop {
    if status == 0 {
        return Stop::Done {
            pass: true,
            message: String::new(),
        };
    }
    let mut buf = [0u8; MAX_MESSAGE];
    let want = (len as usize).min(MAX_MESSAGE);
    let got = vm
        .memory
        .read_virt(vcpu.vmcb.state.cr3, gva, &mut buf[..want]);
    let message = String::from_utf8_lossy(&buf[..got]).into_owned();
    Stop::Done {
        pass: false,
        message,
    }
}
