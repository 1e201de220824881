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

/// MOV DRn, `value` for n in 0-3, 6, 7 (others ignored).
pub fn write_dr(n: u8, value: u64) {
    // SAFETY: debug registers are the guest's own; CPL 0.
    unsafe {
        match n {
            0 => asm!("mov dr0, {}", in(reg) value, options(nomem, nostack)),
            1 => asm!("mov dr1, {}", in(reg) value, options(nomem, nostack)),
            2 => asm!("mov dr2, {}", in(reg) value, options(nomem, nostack)),
            3 => asm!("mov dr3, {}", in(reg) value, options(nomem, nostack)),
            6 => asm!("mov dr6, {}", in(reg) value, options(nomem, nostack)),
            7 => asm!("mov dr7, {}", in(reg) value, options(nomem, nostack)),
            _ => {}
        }
    }
}

/// MOV from DRn for n in 0-3, 6, 7 (0 for others).
pub fn read_dr(n: u8) -> u64 {
    let v: u64;
    // SAFETY: reading a debug register has no side effects at CPL 0.
    unsafe {
        match n {
            0 => asm!("mov {}, dr0", out(reg) v, options(nomem, nostack)),
            1 => asm!("mov {}, dr1", out(reg) v, options(nomem, nostack)),
            2 => asm!("mov {}, dr2", out(reg) v, options(nomem, nostack)),
            3 => asm!("mov {}, dr3", out(reg) v, options(nomem, nostack)),
            6 => asm!("mov {}, dr6", out(reg) v, options(nomem, nostack)),
            7 => asm!("mov {}, dr7", out(reg) v, options(nomem, nostack)),
            _ => v = 0,
        }
    }
    v
}

/// DR6 (DR6.BS, bit 14: single step; B0-B3, bits 0-3: breakpoints).
pub fn read_dr6() -> u64 {
    let v: u64;
    // SAFETY: reading DR6 has no side effects at CPL 0.
    unsafe { asm!("mov {}, dr6", out(reg) v, options(nomem, nostack)) };
    v
}

/// DR6's value with no debug condition recorded.
pub const DR6_CLEAR: u64 = 0xffff_0ff0;
/// DR6.BS: the #DB came from single-stepping.
pub const DR6_BS: u64 = 1 << 14;

/// Sets RFLAGS.TF and executes one NOP: a single-step #DB (a trap) follows
/// the NOP. Whoever handles it must clear TF.
pub fn single_step_nop() {
    // SAFETY: pushfq/popfq are balanced; only RFLAGS.TF changes.
    unsafe { asm!("pushfq", "or qword ptr [rsp], 0x100", "popfq", "nop") };
}
