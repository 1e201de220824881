//! RDMSR/WRMSR of intercepted MSRs. Emulated: EFER (SVME hidden), IA32_TSC,
//! IA32_TSC_ADJUST and TSC_AUX (through [`svm::tsc`]'s model). Every other
//! intercepted MSR raises #GP(0) in the guest.

use super::{inject, rip, Action};
use crate::vmm::enable::HostCpu;
use crate::vmm::tsc::guest_now;
use crate::vmm::vcpu::Vcpu;
use crate::vmm::vm::Vm;
use svm::msr::{
    EFER, EFER_LMA, EFER_LME, EFER_NXE, EFER_SCE, EFER_SVME, IA32_TSC, IA32_TSC_ADJUST, TSC_AUX,
};
use svm::{EventInfo, MsrAccess};

/// EFER bits a guest may change (LME only through a mode switch, refused).
const EFER_WRITABLE: u64 = EFER_SCE | EFER_NXE;

pub fn handle(vcpu: &mut Vcpu, vm: &mut Vm, host: &HostCpu) -> Action {
    let msr = vcpu.regs.rcx as u32;
    let ok = match MsrAccess::from_exit_info1(vcpu.vmcb.control.exit_info1) {
        Some(MsrAccess::Read) => match read(vcpu, vm, msr) {
            Some(v) => {
                vcpu.vmcb.state.rax = v & 0xffff_ffff;
                vcpu.regs.rdx = v >> 32;
                true
            }
            None => false,
        },
        Some(MsrAccess::Write) => {
            let value = (vcpu.vmcb.state.rax & 0xffff_ffff) | (vcpu.regs.rdx << 32);
            write(vcpu, vm, msr, value)
        }
        None => false,
    };
    if !ok {
        return inject(vcpu, EventInfo::exception_with_error_code(13, 0));
    }
    rip::skip(vcpu, vm, host)
}

fn read(vcpu: &Vcpu, vm: &mut Vm, msr: u32) -> Option<u64> {
    match msr {
        EFER => Some(vcpu.vmcb.state.efer & !EFER_SVME),
        IA32_TSC => Some(guest_now(vcpu, vm)),
        IA32_TSC_ADJUST => Some(vcpu.tsc.adjust()),
        TSC_AUX => Some(u64::from(vcpu.tsc_aux)),
        _ => None,
    }
}

fn write(vcpu: &mut Vcpu, vm: &mut Vm, msr: u32, value: u64) -> bool {
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
        IA32_TSC => {
            let host = crate::time::host_tsc::read();
            vm.tsc.observe_host(host);
            vm.tsc.write_tsc(&mut vcpu.tsc, host, value);
            true
        }
        IA32_TSC_ADJUST => {
            vcpu.tsc.write_adjust(value);
            true
        }
        // TSC_AUX bits 63:32 are reserved (#GP if set).
        TSC_AUX if value >> 32 == 0 => {
            vcpu.tsc_aux = value as u32;
            true
        }
        _ => false,
    }
}
