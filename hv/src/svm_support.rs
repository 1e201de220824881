//! Whether this CPU can run guests with SVM, and what it offers.

use crate::arch::cpu::rdmsr;
use core::fmt;
use raw_cpuid::CpuId;

const MSR_VM_CR: u32 = 0xC001_0114;
/// VM_CR.SVMDIS: firmware disabled SVM (APM Vol. 2, 15.30.1).
const VM_CR_SVMDIS: u64 = 1 << 4;
/// VM_CR.LOCK: SVMDIS cannot be changed.
const VM_CR_LOCK: u64 = 1 << 3;

/// The banner's `svm:` value.
#[derive(Debug)]
pub enum Support {
    /// SVM can be enabled.
    Available { revision: u8, asids: u32, edx: u32 },
    /// It cannot, and why.
    Unavailable(&'static str),
}

/// Probes CPUID and VM_CR.
pub fn probe() -> Support {
    let id = CpuId::new();
    let has_svm = id
        .get_extended_processor_and_feature_identifiers()
        .is_some_and(|f| f.has_svm());
    if !has_svm {
        return Support::Unavailable("CPUID 0x80000001 ECX.SVM is clear");
    }
    // SAFETY: VM_CR exists on every CPU that reports SVM.
    let vm_cr = unsafe { rdmsr(MSR_VM_CR) };
    if vm_cr & VM_CR_SVMDIS != 0 {
        return Support::Unavailable(if vm_cr & VM_CR_LOCK != 0 {
            "disabled by firmware: VM_CR.SVMDIS set and locked"
        } else {
            "VM_CR.SVMDIS set"
        });
    }
    let r = raw_cpuid::native_cpuid::cpuid_count(0x8000_000A, 0);
    Support::Available {
        revision: r.eax as u8,
        asids: r.ebx,
        edx: r.edx,
    }
}

impl fmt::Display for Support {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Support::Available {
                revision,
                asids,
                edx,
            } => {
                write!(f, "revision={revision} asids={asids} features=")?;
                const NAMES: [(u32, &str); 4] =
                    [(0, "npt"), (3, "nrip"), (5, "vmcb_clean"), (16, "vgif")];
                let mut first = true;
                for (bit, name) in NAMES {
                    if edx & (1 << bit) != 0 {
                        write!(f, "{}{}", if first { "" } else { "," }, name)?;
                        first = false;
                    }
                }
                Ok(())
            }
            Support::Unavailable(why) => write!(f, "unavailable ({why})"),
        }
    }
}

/// The banner's `svm:` value.
pub fn describe() -> Support {
    probe()
}
