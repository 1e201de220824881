//! RDMSR/WRMSR of intercepted MSRs, dispatched through the one table of
//! [`svm::msr_table`]: every MSR is emulated or raises #GP(0), none stops
//! the VM. Emulated here: EFER ([`super::efer`]), IA32_TSC, IA32_TSC_ADJUST
//! and TSC_AUX (through [`svm::tsc`]'s model), VM_HSAVE_PA and VM_CR for
//! VMs offered SVM, the VMCB-backed MSRs and the per-vCPU value store.
//!
//! While L2 runs, only MSR exits L1 did not ask for arrive here, and they
//! act on L2's state as on hardware: the VMCB-backed MSRs are the active
//! VMCB's (L2's); what VMRUN does not switch is shared with L1 (the store,
//! TSC_AUX, PAT without nested paging, VM_CR and VM_HSAVE_PA). L2 reads
//! the L2 view of the TSC (host + L1 offset + vmcb12 offset), a TSC write
//! sets L1's TSC, and TSC_ADJUST is the one register L1 and L2 share.

use super::{raise, rip, Action};
use crate::vmm::enable::HostCpu;
use crate::vmm::tsc::{self, view_now};
use crate::vmm::vcpu::Vcpu;
use crate::vmm::vm::Vm;
use svm::msr::VmCr;
use svm::msr_table::{classify, MsrClass, VmcbMsr};
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

/// The SVM MSRs exist only for VMs offered SVM. L2 reaches them when L1
/// lets it (they are not switched by VMRUN: L1's values, as on hardware).
fn svm_msrs(vm: &Vm) -> bool {
    vm.nested_svm
}

fn read(vcpu: &mut Vcpu, vm: &mut Vm, msr: u32) -> Option<u64> {
    match classify(msr) {
        MsrClass::Efer => Some(super::efer::read(vcpu)),
        MsrClass::Tsc => Some(view_now(vcpu, vm)),
        MsrClass::TscAdjust => Some(vcpu.tsc.adjust()),
        MsrClass::TscAux => Some(u64::from(vcpu.tsc_aux)),
        MsrClass::HsavePa if svm_msrs(vm) => Some(vcpu.nested.hsave_pa),
        MsrClass::VmCr if svm_msrs(vm) => Some(vcpu.nested.vm_cr),
        MsrClass::Apic => apic_read(vcpu, vm, msr),
        MsrClass::Vmcb(f) => Some(f.read(&vcpu.vmcb.state)),
        MsrClass::Store(m) => Some(vcpu.msrs.read(m)),
        MsrClass::Fixed(v) => Some(v),
        MsrClass::HsavePa | MsrClass::VmCr | MsrClass::Gp => None,
    }
}

/// Whether the x2APIC registers (0x800–0x8FF) are emulated: CPUID.1:ECX
/// shows the x2APIC only then. They are: the local APIC arm below.
pub const X2APIC_EMULATED: bool = true;

/// IA32_APIC_BASE and the x2APIC registers: the vCPU's local APIC
/// (exits::apic).
fn apic_read(vcpu: &mut Vcpu, _vm: &mut Vm, msr: u32) -> Option<u64> {
    super::apic::msr_read(vcpu, msr)
}

/// See [`apic_read`].
fn apic_write(vcpu: &mut Vcpu, vm: &mut Vm, msr: u32, value: u64) -> bool {
    super::apic::msr_write(vcpu, vm, msr, value)
}

fn write(vcpu: &mut Vcpu, vm: &mut Vm, msr: u32, value: u64) -> bool {
    match classify(msr) {
        MsrClass::Efer => super::efer::write(vcpu, vm, value),
        // From L1, or from L2 when L1 does not intercept: L1's TSC (the
        // offset is programmed at once, into hsave while L2 runs).
        MsrClass::Tsc => {
            tsc::write_tsc(vcpu, vm, value);
            true
        }
        MsrClass::TscAdjust => {
            tsc::write_adjust(vcpu, vm, value);
            true
        }
        // TSC_AUX bits 63:32 are reserved (#GP if set).
        MsrClass::TscAux if value >> 32 == 0 => {
            vcpu.tsc_aux = value as u32;
            true
        }
        // A 4 KiB-aligned address below the MAXPHYADDR L1 sees (APM
        // 15.30.4; KVM page_address_valid), RAM or not: L0 records it and
        // never uses it (L1's state goes to hypervisor memory).
        MsrClass::HsavePa if svm_msrs(vm) => {
            let bits = u32::from(vm.l1_limits.max_phys_bits);
            let ok = value.is_multiple_of(4096) && value.checked_shr(bits).unwrap_or(0) == 0;
            if ok {
                vcpu.nested.hsave_pa = value;
            }
            ok
        }
        MsrClass::VmCr if svm_msrs(vm) => write_vm_cr(vcpu, value),
        MsrClass::Apic => apic_write(vcpu, vm, msr, value),
        MsrClass::Vmcb(f) => {
            let ok = f.write(&mut vcpu.vmcb.state, value).is_ok();
            if ok && f == VmcbMsr::Pat {
                // G_PAT is in the NP clean-bit group (APM 15.15.3).
                vcpu.vmcb.control.vmcb_clean &= !svm::CleanBits::NP.bits();
            }
            // PAT is not switched by VMRUN without nested paging (not
            // offered to L1): L2's write is L1's PAT after the #VMEXIT too.
            if ok && f == VmcbMsr::Pat && vcpu.nested.in_l2() {
                vcpu.nested.hsave.state.g_pat = value;
            }
            ok
        }
        MsrClass::Store(m) => vcpu
            .msrs
            .write(m, value, vm.l1_limits.max_phys_bits)
            .is_ok(),
        MsrClass::Fixed(v) => value == v,
        MsrClass::TscAux | MsrClass::HsavePa | MsrClass::VmCr | MsrClass::Gp => false,
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
