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

/// Selector of a 32-bit code segment in [`TEST_GDT`] (compatibility mode).
pub const CODE32: u16 = 0x18;
/// Selector of the DPL 3 data segment.
pub const USER_DATA: u16 = 0x23;
/// Selector of the DPL 3 64-bit code segment.
pub const USER_CODE64: u16 = 0x2b;
/// Selector of the 64-bit TSS (16-byte descriptor).
pub const TSS_SEL: u16 = 0x30;

/// The hardening tests' GDT: the start GDT's null, code (0x08) and data
/// (0x10) entries, then 32-bit code, user data and code, a TSS.
#[derive(Debug)]
#[repr(C, align(16))]
pub struct Gdt(pub [u64; 8]);

/// The GDT [`load_test_gdt`] installs.
pub static mut TEST_GDT: Gdt = Gdt([
    0,
    0x00af_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x00cf_9b00_0000_ffff,
    0x00cf_f300_0000_ffff,
    0x00af_fb00_0000_ffff,
    0,
    0,
]);

/// A 64-bit TSS (104 bytes), all zero.
#[derive(Debug)]
#[repr(C, align(16))]
pub struct Tss(pub [u8; 104]);

/// The TSS [`TSS_SEL`] describes.
pub static mut TSS: Tss = Tss([0; 104]);

/// Fills the TSS descriptor (available) and loads [`TEST_GDT`]; returns its
/// base and limit (for a vmcb12's GDTR).
pub fn load_test_gdt() -> (u64, u32) {
    let base = core::ptr::addr_of!(TSS) as u64;
    let low = 0x67 | (base & 0xff_ffff) << 16 | 0x89 << 40 | ((base >> 24) & 0xff) << 56;
    // SAFETY: single vCPU; the GDT is static and nothing else uses it yet.
    let gdt = unsafe { &mut *core::ptr::addr_of_mut!(TEST_GDT) };
    gdt.0[6] = low;
    gdt.0[7] = base >> 32;
    let gdt_base = gdt as *const Gdt as u64;
    let limit = (core::mem::size_of::<Gdt>() - 1) as u32;
    let ptr: [u16; 5] = [
        limit as u16,
        gdt_base as u16,
        (gdt_base >> 16) as u16,
        (gdt_base >> 32) as u16,
        (gdt_base >> 48) as u16,
    ];
    // SAFETY: entries 0x08 and 0x10 are the ones in use, unchanged.
    unsafe { asm!("lgdt [{}]", in(reg) ptr.as_ptr(), options(nostack)) };
    (gdt_base, limit)
}

/// The descriptor at `selector` in [`TEST_GDT`].
pub fn descriptor(selector: u16) -> u64 {
    // SAFETY: a plain read of the static table.
    unsafe { (*core::ptr::addr_of!(TEST_GDT)).0[usize::from(selector >> 3)] }
}

/// Leaves long mode and comes back (needs [`load_test_gdt`], code and stack
/// below 4 GiB, identity-mapped): far return to compatibility mode, clear
/// CR0.PG (long mode off, EFER.LME stays), clear CR4.PAE, then — in the
/// state PG=0, PAE=0, LME=1 — CPUID leaf 0 and RDMSR EFER, then PAE and PG
/// back on (long mode again) and a far return to 64-bit code. Returns
/// (CPUID.0 EAX, EFER's low half) as seen without paging.
pub fn visit_legacy_mode() -> (u32, u32) {
    let (leaf0, efer): (u32, u32);
    // SAFETY: the sequence returns to 64-bit mode with the same CR0/CR4,
    // stack and RBX; interrupts stay off throughout.
    unsafe {
        asm!(
            "pushfq",
            "cli",
            "push rbx",
            "push 0x18",
            "lea rax, [rip + 2f]",
            "push rax",
            "retfq",
            ".code32",
            "2:",
            "mov eax, cr0",
            "and eax, 0x7fffffff",
            "mov cr0, eax",
            "mov eax, cr4",
            "and eax, 0xffffffdf",
            "mov cr4, eax",
            "xor eax, eax",
            "xor ecx, ecx",
            "cpuid",
            "mov esi, eax",
            "mov ecx, 0xc0000080",
            "rdmsr",
            "mov edi, eax",
            "mov eax, cr4",
            "or eax, 0x20",
            "mov cr4, eax",
            "mov eax, cr0",
            "or eax, 0x80000000",
            "mov cr0, eax",
            "call 3f",
            "3:",
            "pop eax",
            // add eax, 4f - 3b (the assembler takes no label difference here)
            ".byte 0x05",
            ".long 4f - 3b",
            "push 0x08",
            "push eax",
            "retf",
            ".code64",
            "4:",
            "pop rbx",
            "popfq",
            out("esi") leaf0,
            out("edi") efer,
            out("eax") _,
            out("ecx") _,
            out("edx") _,
        )
    };
    (leaf0, efer)
}

/// MOV CR3, value (`0F 22 D8`, 3 bytes).
pub fn write_cr3(value: u64) {
    // SAFETY: the caller writes its own CR3 back (same tables), or a value
    // the hypervisor refuses with #GP (caught, 3 bytes).
    unsafe { asm!("mov cr3, rax", in("rax") value, options(nostack)) };
}

/// Sets RFLAGS.TF and runs MOV CR3, value: the single-step #DB follows the
/// MOV itself. Whoever handles it must clear TF.
pub fn single_step_write_cr3(value: u64) {
    // SAFETY: as for write_cr3; pushfq/popfq are balanced.
    unsafe {
        asm!(
            "pushfq",
            "or qword ptr [rsp], 0x100",
            "popfq",
            "mov cr3, rax",
            in("rax") value,
        )
    };
}
