//! EFER, read and written through the MSR intercept: the rules are
//! [`svm::emulate::efer`]'s; here only where EFER lives. The VMCB's EFER
//! always has SVME set (VMRUN requires it, APM 15.5.1): L1 sees its
//! virtual SVME, a plain guest none, L2 its own virtual SVME.

use crate::vmm::vcpu::Vcpu;
use crate::vmm::vm::Vm;
use svm::emulate::efer::write_efer;
use svm::msr::{VmCr, EFER_SVME};
use svm::TlbControl;

/// EFER as the running guest sees it.
pub fn read(vcpu: &Vcpu) -> u64 {
    let efer = vcpu.vmcb.state.efer & !EFER_SVME;
    let svme = match &vcpu.nested.l2 {
        Some(l2) => l2.svme,
        None => vcpu.nested.svme,
    };
    if svme {
        efer | EFER_SVME
    } else {
        efer
    }
}

/// WRMSR EFER: false for #GP. SVME exists for a VM offered SVM (its CPUID
/// shows it); L1's is blocked by VM_CR.SVMDIS (APM 15.30.1), L2's is L2's
/// own ([`crate::vmm::nested::L2::svme`]), changed when L1 does not
/// intercept EFER.
pub fn write(vcpu: &mut Vcpu, vm: &Vm, value: u64) -> bool {
    let mut allowed = vm.l1_limits.efer_allowed;
    let in_l2 = vcpu.nested.in_l2();
    if !vm.nested_svm || (!in_l2 && vcpu.nested.vm_cr & VmCr::SVMDIS.bits() != 0) {
        allowed &= !EFER_SVME;
    }
    let Ok(w) = write_efer(read(vcpu), value, vcpu.vmcb.state.cr0, allowed) else {
        return false;
    };
    if vm.nested_svm {
        let svme = w.efer & EFER_SVME != 0;
        match &mut vcpu.nested.l2 {
            Some(l2) => l2.svme = svme,
            None => vcpu.nested.svme = svme,
        }
    }
    if w.flush_tlb {
        vcpu.vmcb.control.tlb_control = TlbControl::FlushAll.as_u8();
    }
    vcpu.vmcb.state.efer = w.efer | EFER_SVME;
    true
}
