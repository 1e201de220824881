//! Instructions of the hardening tests (ISSUE 8: A6 and section C):
//! CPUID with odd but valid prefix orders, and the privileged writes L0
//! intercepts and emulates (MOV to CR0/CR4/CR8/DR7, LMSW, CLTS, LTR).

use core::arch::asm;

/// The prefixed CPUID encodings a fuzzer found: a REX before a legacy
/// prefix (ignored by the CPU), two REX, repeated REP.
pub const ODD_CPUID: [&[u8]; 4] = [
    &[0x40, 0x66, 0x0F, 0xA2],
    &[0x40, 0x26, 0x0F, 0xA2],
    &[0x43, 0x42, 0x0F, 0xA2],
    &[0x4B, 0xF3, 0xF3, 0x0F, 0xA2],
];

macro_rules! cpuid_bytes {
    ($leaf:expr, $bytes:literal) => {{
        let (a, b, c, d): (u32, u64, u32, u32);
        // SAFETY: CPUID; RBX (reserved by the compiler) is saved around it.
        unsafe {
            asm!(
                "mov {t}, rbx",
                $bytes,
                "xchg {t}, rbx",
                t = out(reg) b,
                inout("eax") $leaf => a,
                inout("ecx") 0u32 => c,
                out("edx") d,
                options(nomem, nostack),
            )
        };
        [a, b as u32, c, d]
    }};
}

/// CPUID `leaf` (subleaf 0) in encoding `form` of [`ODD_CPUID`].
pub fn cpuid_odd(form: usize, leaf: u32) -> [u32; 4] {
    match form {
        0 => cpuid_bytes!(leaf, ".byte 0x40, 0x66, 0x0f, 0xa2"),
        1 => cpuid_bytes!(leaf, ".byte 0x40, 0x26, 0x0f, 0xa2"),
        2 => cpuid_bytes!(leaf, ".byte 0x43, 0x42, 0x0f, 0xa2"),
        _ => cpuid_bytes!(leaf, ".byte 0x4b, 0xf3, 0xf3, 0x0f, 0xa2"),
    }
}

/// MOV CR0, value (`0F 22 C0`, 3 bytes).
pub fn write_cr0(value: u64) {
    // SAFETY: the caller expects the write or its #GP (caught, 3 bytes).
    unsafe { asm!("mov cr0, rax", in("rax") value, options(nostack)) };
}

/// MOV CR4, value (`0F 22 E0`, 3 bytes).
pub fn write_cr4(value: u64) {
    // SAFETY: as for write_cr0.
    unsafe { asm!("mov cr4, rax", in("rax") value, options(nostack)) };
}

/// MOV CR8, value (`44 0F 22 C0`, 4 bytes: REX.R).
pub fn write_cr8(value: u64) {
    // SAFETY: as for write_cr0.
    unsafe { asm!("mov cr8, rax", in("rax") value, options(nostack)) };
}

/// MOV to CR8 with a register that needs REX.B too (`4D 0F 22 C1`: R9).
pub fn write_cr8_r9(value: u64) {
    // SAFETY: as for write_cr0.
    unsafe { asm!("mov cr8, r9", in("r9") value, options(nostack)) };
}

/// MOV RAX, CR8.
pub fn read_cr8() -> u64 {
    let v: u64;
    // SAFETY: reading CR8 has no side effects.
    unsafe { asm!("mov {}, cr8", out(reg) v, options(nomem, nostack)) };
    v
}

/// MOV RAX, CRn for n = 0, 3, 4.
pub fn read_cr(n: u8) -> u64 {
    let v: u64;
    // SAFETY: reading control registers has no side effects at CPL 0.
    unsafe {
        match n {
            0 => asm!("mov {}, cr0", out(reg) v, options(nomem, nostack)),
            3 => asm!("mov {}, cr3", out(reg) v, options(nomem, nostack)),
            _ => asm!("mov {}, cr4", out(reg) v, options(nomem, nostack)),
        }
    }
    v
}

/// LMSW AX (`0F 01 F0`, 3 bytes).
pub fn lmsw(value: u16) {
    // SAFETY: as for write_cr0.
    unsafe { asm!("lmsw ax", in("ax") value, options(nostack)) };
}

/// LMSW from memory (`0F 01 31`: [RCX], 3 bytes).
pub fn lmsw_mem(value: &u16) {
    // SAFETY: as for write_cr0; the operand is a valid u16.
    unsafe {
        asm!("lmsw word ptr [rcx]", in("rcx") value as *const u16, options(nostack, readonly))
    };
}

/// CLTS (2 bytes).
pub fn clts() {
    // SAFETY: clears CR0.TS.
    unsafe { asm!("clts", options(nomem, nostack)) };
}

/// MOV DR7, value (`0F 23 F8`, 3 bytes).
pub fn write_dr7(value: u64) {
    // SAFETY: as for write_cr0.
    unsafe { asm!("mov dr7, rax", in("rax") value, options(nomem, nostack)) };
}

/// MOV RAX, DR7.
pub fn read_dr7() -> u64 {
    let v: u64;
    // SAFETY: reading DR7 has no side effects.
    unsafe { asm!("mov {}, dr7", out(reg) v, options(nomem, nostack)) };
    v
}

/// MOV RAX, DR6.
pub fn read_dr6() -> u64 {
    let v: u64;
    // SAFETY: reading DR6 has no side effects.
    unsafe { asm!("mov {}, dr6", out(reg) v, options(nomem, nostack)) };
    v
}

/// LTR AX (`0F 00 D8`, 3 bytes).
pub fn ltr(selector: u16) {
    // SAFETY: as for write_cr0.
    unsafe { asm!("ltr ax", in("ax") selector, options(nostack)) };
}

/// STR: the TR selector.
pub fn str_selector() -> u16 {
    let v: u16;
    // SAFETY: STR has no side effects.
    unsafe { asm!("str ax", out("ax") v, options(nomem, nostack)) };
    v
}
