//! RDMSR/WRMSR of intercepted MSRs. Emulated: EFER ([`super::efer`]),
//! IA32_TSC, IA32_TSC_ADJUST and TSC_AUX (through [`svm::tsc`]'s model), and for VMs offered SVM,
//! VM_HSAVE_PA and VM_CR. Every other intercepted MSR raises #GP(0).
//!
//! While L2 runs, only MSR exits L1 did not ask for arrive here: L2 then
//! reads the L2 view of the TSC (host + L1 offset + vmcb12 offset), a TSC
//! write sets L1's TSC, and TSC_ADJUST is the one register L1 and L2 share.

use super::{raise, rip, Action};
use crate::vmm::enable::HostCpu;
use crate::vmm::tsc::{self, view_now};
use crate::vmm::vcpu::Vcpu;
use crate::vmm::vm::Vm;
use svm::msr::{VmCr, EFER, IA32_TSC, IA32_TSC_ADJUST, TSC_AUX, VM_CR, VM_HSAVE_PA};
use svm::{EventInfo, MsrAccess};

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
        return raise(vcpu, vm, host, EventInfo::exception_with_error_code(13, 0));
    }
    rip::skip(vcpu, vm, host)
}

/// The SVM MSRs exist only for VMs offered SVM, and only L1 reaches them.
fn svm_msrs(vcpu: &Vcpu, vm: &Vm) -> bool {
    vm.nested_svm && !vcpu.nested.in_l2()
}

fn read(vcpu: &mut Vcpu, vm: &mut Vm, msr: u32) -> Option<u64> {
    match msr {
        EFER => Some(super::efer::read(vcpu)),
        IA32_TSC => Some(view_now(vcpu, vm)),
        IA32_TSC_ADJUST => Some(vcpu.tsc.adjust()),
        TSC_AUX => Some(u64::from(vcpu.tsc_aux)),
        VM_HSAVE_PA if svm_msrs(vcpu, vm) => Some(vcpu.nested.hsave_pa),
        VM_CR if svm_msrs(vcpu, vm) => Some(vcpu.nested.vm_cr),
        _ => None,
    }
}

fn write(vcpu: &mut Vcpu, vm: &mut Vm, msr: u32, value: u64) -> bool {
    match msr {
        EFER => super::efer::write(vcpu, vm, value),
        // From L1, or from L2 when L1 does not intercept: L1's TSC (the
        // offset is programmed at once, into hsave while L2 runs).
        IA32_TSC => {
            tsc::write_tsc(vcpu, vm, value);
            true
        }
        IA32_TSC_ADJUST => {
            tsc::write_adjust(vcpu, vm, value);
            true
        }
        // TSC_AUX bits 63:32 are reserved (#GP if set).
        TSC_AUX if value >> 32 == 0 => {
            vcpu.tsc_aux = value as u32;
            true
        }
        // A 4 KiB-aligned address below the MAXPHYADDR L1 sees (APM
        // 15.30.4; KVM page_address_valid), RAM or not: L0 records it and
        // never uses it (L1's state goes to hypervisor memory).
        VM_HSAVE_PA if svm_msrs(vcpu, vm) => {
            let bits = u32::from(vm.l1_limits.max_phys_bits);
            let ok = value.is_multiple_of(4096) && value.checked_shr(bits).unwrap_or(0) == 0;
            if ok {
                vcpu.nested.hsave_pa = value;
            }
            ok
        }
        VM_CR if svm_msrs(vcpu, vm) => write_vm_cr(vcpu, value),
        _ => false,
    }
}

/// VM_CR (APM 15.30.1): SVMDIS and LOCK are writable until LOCK is set;
/// SVMDIS cannot be set while EFER.SVME is.
fn write_vm_cr(vcpu: &mut Vcpu, value: u64) -> bool {
    let writable = (VmCr::SVMDIS | VmCr::LOCK).bits();
    let locked = vcpu.nested.vm_cr & VmCr::LOCK.bits() != 0;
    if value & !writable != 0 || (locked && value != vcpu.nested.vm_cr) {
        return false;
    }
    if value & VmCr::SVMDIS.bits() != 0 && vcpu.nested.svme {
        return false;
    }
    vcpu.nested.vm_cr = value;
    true
}
