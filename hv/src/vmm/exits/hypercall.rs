//! VMMCALL: the hypercall ABI of [`svm::guest_abi`].

use super::{rip, Action, Stop};
use crate::vmm::enable::HostCpu;
use crate::vmm::vcpu::Vcpu;
use crate::vmm::vm::Vm;
use alloc::string::String;
use svm::guest_abi::{
    echo_sum, HC_DONE, HC_ECHO_SUM, HC_EXIT_COUNT, HC_HOST_TICKS, HC_INTERCEPT_ONCE,
    HC_QUEUE_INTERRUPT, HC_TSC_FREEZE_RESTORE, HC_TSC_MOVE_L1, HC_TSC_SET_MODE,
    HC_TSC_SHIFT_HOST_BACK, HC_UNKNOWN, HC_WAIT_PIT_US,
};
use svm::guest_abi::{HC_EXIT_TOTAL, HC_L0_INTERCEPTS, HC_NOW_NS, HC_PHYSICAL_NMI, HC_QUEUE_NMI};
use svm::tsc::{RestorePolicy, TscMode};
use svm::ExitCode;

/// Longest failure message read from a guest.
const MAX_MESSAGE: usize = 256;

pub fn handle(vcpu: &mut Vcpu, vm: &mut Vm, host: &HostCpu) -> Action {
    // Hypercalls are for the guest kernel (CPL 0). From an L2 whose L1 does
    // not intercept VMMCALL only the test hooks answer, and only in VMs set
    // up for tests; anything else is #UD, as VMMCALL without a hypervisor.
    let nr = vcpu.vmcb.state.rax;
    let test_hook = matches!(
        nr,
        HC_EXIT_COUNT
            | HC_TSC_SET_MODE
            | HC_TSC_SHIFT_HOST_BACK
            | HC_TSC_FREEZE_RESTORE
            | HC_WAIT_PIT_US
            | HC_TSC_MOVE_L1
            | HC_QUEUE_INTERRUPT
            | HC_HOST_TICKS
            | HC_INTERCEPT_ONCE
            | HC_QUEUE_NMI
            | HC_PHYSICAL_NMI
            | HC_L0_INTERCEPTS
            | HC_NOW_NS
            | HC_EXIT_TOTAL
    );
    let from_l2 = vcpu.nested.in_l2();
    if vcpu.vmcb.state.cpl != 0 || (from_l2 && !(test_hook && vm.test_hypercalls)) {
        return super::raise(vcpu, vm, host, svm::EventInfo::exception(6));
    }
    if test_hook && !vm.test_hypercalls {
        return resume_with(vcpu, vm, host, HC_UNKNOWN);
    }
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
            let count = vcpu.exit_counts.get(a);
            // This VMMCALL was already counted.
            count - u64::from(a == ExitCode::Vmmcall.to_raw())
        }
        // This VMMCALL was already counted.
        HC_EXIT_TOTAL => vcpu.exit_counts.total() - 1,
        HC_TSC_SET_MODE => match a {
            0 => set_mode(vm, TscMode::Offsetting),
            1 => set_mode(vm, TscMode::Exiting),
            _ => HC_UNKNOWN,
        },
        HC_TSC_SHIFT_HOST_BACK => {
            crate::vmm::tsc::shift_host_back(vcpu, vm, a);
            0
        }
        HC_TSC_FREEZE_RESTORE => {
            let policy = match a {
                0 => RestorePolicy::Pause,
                1 => RestorePolicy::Continue,
                _ => return resume_with(vcpu, vm, host, HC_UNKNOWN),
            };
            match crate::vmm::tsc::freeze_wait_restore(vcpu, vm, policy, b.min(MAX_WAIT_US)) {
                Ok(()) => 0,
                Err(_) => HC_UNKNOWN,
            }
        }
        HC_HOST_TICKS => vcpu.host_ticks,
        HC_TSC_MOVE_L1 => {
            crate::vmm::tsc::move_l1(vcpu, vm, a);
            0
        }
        HC_QUEUE_INTERRUPT => match u8::try_from(a) {
            Ok(vector) if vector >= 32 => {
                vcpu.nested.pending_interrupt = Some(vector);
                0
            }
            _ => HC_UNKNOWN,
        },
        HC_INTERCEPT_ONCE => match u8::try_from(a) {
            Ok(v) if v < 32 && !from_l2 && l0_exceptions() & (1 << v) == 0 => {
                vcpu.vmcb.control.intercept_exceptions |= 1 << v;
                0
            }
            _ => HC_UNKNOWN,
        },
        HC_QUEUE_NMI => {
            vcpu.nmi.queue();
            0
        }
        HC_PHYSICAL_NMI => {
            vcpu.physical_nmi_at_entry = true;
            0
        }
        HC_L0_INTERCEPTS => {
            let c = &vcpu.vmcb.control;
            (u64::from(c.intercept_misc1) << 32) | u64::from(c.intercept_exceptions)
        }
        HC_WAIT_PIT_US => {
            // With several vCPUs the run loop waits, VM lock released.
            let us = a.min(MAX_WAIT_US);
            if !crate::vmm::multi::defer_pit_wait(vm, us) {
                crate::time::pit::wait_us(us);
            }
            0
        }
        HC_NOW_NS => crate::time::now_ns().saturating_sub(vm.created_ns),
        _ => HC_UNKNOWN,
    };
    resume_with(vcpu, vm, host, result)
}

/// The exceptions L0 intercepts for every guest.
fn l0_exceptions() -> u32 {
    crate::vmm::setup::base_intercepts().2.bits()
}

/// Whether exception `vector` exited only because of [`HC_INTERCEPT_ONCE`]:
/// if so the intercept is dropped and the guest resumes (the event the
/// exception interrupted was queued again by the exit path).
pub fn intercept_once_hit(vcpu: &mut Vcpu, vm: &Vm, vector: u8) -> bool {
    let bit = 1u32.checked_shl(u32::from(vector)).unwrap_or(0);
    let c = &mut vcpu.vmcb.control;
    let hit = vm.test_hypercalls
        && !vcpu.nested.in_l2()
        && bit & l0_exceptions() == 0
        && c.intercept_exceptions & bit != 0;
    if hit {
        c.intercept_exceptions &= !bit;
    }
    hit
}

/// Longest wait a guest may ask for (1 s): guests cannot stall the host.
const MAX_WAIT_US: u64 = 1_000_000;

fn resume_with(vcpu: &mut Vcpu, vm: &mut Vm, host: &HostCpu, result: u64) -> Action {
    vcpu.vmcb.state.rax = result;
    rip::skip(vcpu, vm, host)
}

fn set_mode(vm: &mut Vm, mode: TscMode) -> u64 {
    vm.tsc.mode = mode;
    0
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
