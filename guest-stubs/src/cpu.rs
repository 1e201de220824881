//! Instructions the test guests use, as plain functions.

use core::arch::asm;

/// CPUID `leaf`/`subleaf` as `[eax, ebx, ecx, edx]`.
pub fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// RDMSR. Faults (#GP) for MSRs the hypervisor does not offer.
pub fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the guest owns its MSR view; a #GP is the guest's to handle.
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// WRMSR.
pub fn wrmsr(msr: u32, value: u64) {
    // SAFETY: as for rdmsr.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack))
    };
}

/// RDTSC.
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDTSC has no side effects.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// RDTSCP: the TSC and TSC_AUX.
pub fn rdtscp() -> (u64, u32) {
    let (lo, hi, aux): (u32, u32, u32);
    // SAFETY: RDTSCP has no side effects.
    unsafe {
        asm!("rdtscp", out("eax") lo, out("edx") hi, out("ecx") aux, options(nomem, nostack))
    };
    ((u64::from(hi) << 32) | u64::from(lo), aux)
}

/// Whether RDTSCP exists (CPUID 0x8000_0001 EDX[27]).
pub fn has_rdtscp() -> bool {
    cpuid(0x8000_0001, 0)[3] & (1 << 27) != 0
}
