//! CPU instructions as plain functions.

use core::arch::asm;

pub fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    [r.eax, r.ebx, r.ecx, r.edx]
}

pub fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: CPL 0; every MSR read here exists on the CPUs the checks run on.
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

pub fn wrmsr(msr: u32, value: u64) {
    // SAFETY: CPL 0; the checks write MSRs whose effects they own.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack))
    };
}

pub fn cr0() -> u64 {
    let v;
    // SAFETY: reading a control register has no side effects.
    unsafe { asm!("mov {}, cr0", out(reg) v, options(nomem, nostack)) };
    v
}

pub fn cr3() -> u64 {
    let v;
    // SAFETY: as for cr0.
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack)) };
    v
}

pub fn cr4() -> u64 {
    let v;
    // SAFETY: as for cr0.
    unsafe { asm!("mov {}, cr4", out(reg) v, options(nomem, nostack)) };
    v
}

pub const IA32_EFER: u32 = 0xC000_0080;
pub const EFER_LME: u64 = 1 << 8;
pub const EFER_LMA: u64 = 1 << 10;
pub const EFER_SVME: u64 = 1 << 12;

/// Busy-waits `n` loop iterations. No PAUSE: a hypervisor may exit on it,
/// which makes a wait meant to be short very long (KVM's pause-loop exits).
pub fn spin(n: u32) {
    for i in 0..n {
        core::hint::black_box(i);
    }
}
