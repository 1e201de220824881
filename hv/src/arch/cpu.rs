//! CPU identification and model-specific registers.

use crate::boot::info::FixedStr;
use raw_cpuid::CpuId;

/// Reads MSR `msr`.
///
/// # Safety
/// The MSR must exist (or the CPU must be one that reads 0 for it, as QEMU TCG).
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: guaranteed by the caller.
    unsafe {
        core::arch::asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags));
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Writes `value` to MSR `msr`.
///
/// # Safety
/// The write must be valid for that MSR and not break memory safety.
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        core::arch::asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack, preserves_flags));
    }
}

/// The initial local APIC ID of the running CPU (CPUID 1, EBX[31:24]).
pub fn apic_id() -> u32 {
    CpuId::new()
        .get_feature_info()
        .map(|f| u32::from(f.initial_local_apic_id()))
        .unwrap_or(0)
}

/// Whether a hypervisor announces itself (CPUID 1, ECX[31]): true under QEMU.
pub fn under_hypervisor() -> bool {
    CpuId::new()
        .get_feature_info()
        .is_some_and(|f| f.has_hypervisor())
}

/// Vendor, family/model/stepping and brand string, for the banner.
#[derive(Debug)]
pub struct CpuDescription {
    /// "AuthenticAMD", ...
    pub vendor: FixedStr<16>,
    /// Effective family.
    pub family: u8,
    /// Effective model.
    pub model: u8,
    /// Stepping.
    pub stepping: u8,
    /// Processor brand string, if the CPU has one.
    pub brand: FixedStr<48>,
}

/// Describes the running CPU.
pub fn describe() -> CpuDescription {
    let id = CpuId::new();
    let vendor = id
        .get_vendor_info()
        .map(|v| FixedStr::from_bytes(v.as_str().as_bytes()))
        .unwrap_or_default();
    let (family, model, stepping) = id
        .get_feature_info()
        .map(|f| (f.family_id(), f.model_id(), f.stepping_id()))
        .unwrap_or_default();
    let brand = id
        .get_processor_brand_string()
        .map(|b| FixedStr::from_bytes(b.as_str().trim().as_bytes()))
        .unwrap_or_default();
    CpuDescription {
        vendor,
        family,
        model,
        stepping,
        brand,
    }
}
