//! RDMSR/WRMSR of intercepted MSRs: EFER is emulated (SVME hidden), every
//! other MSR raises #GP(0) in the guest.

use super::{inject, rip, Action};
use crate::vmm::enable::HostCpu;
use crate::vmm::vcpu::Vcpu;
use crate::vmm::vm::Vm;
use svm::msr::{EFER, EFER_LMA, EFER_LME, EFER_NXE, EFER_SCE, EFER_SVME};
use svm::{EventInfo, MsrAccess};

/// EFER bits a guest may change (LME only through a mode switch, refused).
const EFER_WRITABLE: u64 = EFER_SCE | EFER_NXE;

pub fn handle(vcpu: &mut Vcpu, vm: &mut Vm, host: &HostCpu) -> Action {
    let msr = vcpu.regs.rcx as u32;
    let gp = EventInfo::exception_with_error_code(13, 0);
    let ok = match MsrAccess::from_exit_info1(vcpu.vmcb.control.exit_info1) {
        Some(MsrAccess::Read) => match read(vcpu, msr) {
            Some(v) => {
                vcpu.vmcb.state.rax = v & 0xffff_ffff;
                vcpu.regs.rdx = v >> 32;
                true
            }
            None => false,
        },
        Some(MsrAccess::Write) => {
            let value = (vcpu.vmcb.state.rax & 0xffff_ffff) | (vcpu.regs.rdx << 32);
            write(vcpu, msr, value)
        }
        None => false,
    };
    if !ok {
        return inject(vcpu, gp);
    }
    rip::skip(vcpu, vm, host)
}

fn read(vcpu: &Vcpu, msr: u32) -> Option<u64> {
    match msr {
        EFER => Some(vcpu.vmcb.state.efer & !EFER_SVME),
        _ => None,
    }
}

fn write(vcpu: &mut Vcpu, msr: u32, value: u64) -> bool {
    match msr {
        EFER => {
            let current = vcpu.vmcb.state.efer & !EFER_SVME;
            // Only SCE and NXE may change; LME/LMA must stay as they are.
            if (value ^ current) & !EFER_WRITABLE & !EFER_LMA != 0
                || value & EFER_LME != current & EFER_LME
            {
                return false;
            }
            vcpu.vmcb.state.efer = (current & !EFER_WRITABLE) | (value & EFER_WRITABLE) | EFER_SVME;
            true
        }
        _ => false,
    }
}
