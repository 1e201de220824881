//! Whether this CPU can run guests with SVM, and what it offers
//! (APM Vol. 2, 15.4 "Enabling SVM").

use crate::arch::cpu::rdmsr;
use core::fmt;
use raw_cpuid::CpuIdReaderNative;
use svm::cpuid::{svm_availability, SvmAvailability};
use svm::msr::VM_CR;
use svm::SvmFeatures;

/// The answer.
#[derive(Debug)]
pub enum Support {
    /// SVM can be enabled.
    Available(SvmFeatures),
    /// It cannot, and why.
    Unavailable(&'static str),
}

/// Probes CPUID and VM_CR.
pub fn probe() -> Support {
    let ext = core::arch::x86_64::__cpuid(0x8000_0001);
    if !svm::cpuid::svm_supported(ext.ecx) {
        return Support::Unavailable("CPUID 0x80000001 ECX.SVM is clear");
    }
    // SAFETY: VM_CR exists on every CPU that reports SVM.
    let vm_cr = unsafe { rdmsr(VM_CR) };
    let Some(features) = SvmFeatures::from_reader(&CpuIdReaderNative) else {
        return Support::Unavailable("CPUID leaf 0x8000000A missing");
    };
    match svm_availability(ext.ecx, vm_cr, features.flags.bits()) {
        SvmAvailability::Allowed => Support::Available(features),
        SvmAvailability::NotAvailable => Support::Unavailable("CPUID 0x80000001 ECX.SVM is clear"),
        SvmAvailability::DisabledAtBios => {
            Support::Unavailable("disabled by firmware: VM_CR.SVMDIS is set")
        }
        SvmAvailability::DisabledWithKey => {
            Support::Unavailable("VM_CR.SVMDIS is set and unlockable only with the SVM key")
        }
    }
}

impl fmt::Display for Support {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Support::Available(s) => fmt::Display::fmt(s, f),
            Support::Unavailable(why) => write!(f, "unavailable ({why})"),
        }
    }
}
