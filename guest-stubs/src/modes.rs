//! Every CPU mode, visited by a guest (L1 or L2) that starts in long mode
//! ([`tour`]), and a payload that runs in any mode ([`cpuid_hlt_address`]).
//! Each stop runs an instruction L0 intercepts and emulates (CPUID, LMSW,
//! MOV CR, WRMSR EFER), so L0's fetch, page walk and decode are exercised in
//! that mode. Code, data and stack must be identity-mapped below 4 MiB (the
//! guests' layout: svm::guest_abi).

use core::arch::{asm, global_asm};
use core::ptr::{addr_of, addr_of_mut};

global_asm!(
    r#"
    .global modes_cpuid_hlt
    // CPUID (0F A2), HLT (F4), JMP short back (EB F9): the same bytes and
    // lengths in 16-, 32- and 64-bit code.
modes_cpuid_hlt:
    .byte 0x0f, 0xa2, 0xf4, 0xeb, 0xfb
    "#
);

unsafe extern "C" {
    static modes_cpuid_hlt: u8;
}

/// The address of `CPUID; HLT; JMP back`, code that runs alike in every
/// mode (for an L2 started in any mode): the HLT exit comes 2 bytes past it.
pub fn cpuid_hlt_address() -> u64 {
    addr_of!(modes_cpuid_hlt) as u64
}

/// The same bytes, for code placed where real mode reaches it.
pub const CPUID_HLT: [u8; 5] = [0x0f, 0xa2, 0xf4, 0xeb, 0xfb];

/// GDT selectors of the tour.
pub const CODE64: u16 = 0x08;
/// Flat 32-bit code.
pub const CODE32: u16 = 0x18;
/// Flat 16-bit code (4 GiB limit, D clear).
pub const CODE16: u16 = 0x20;
/// 16-bit data whose base is [`LMSW_WORDS`]' address.
pub const DATA16: u16 = 0x28;

/// A segment descriptor.
pub const fn descriptor(base: u64, limit: u64, access: u64, flags: u64) -> u64 {
    (limit & 0xffff)
        | (base & 0xff_ffff) << 16
        | access << 40
        | ((limit >> 16) & 0xf) << 48
        | flags << 52
        | ((base >> 24) & 0xff) << 56
}

#[repr(C, align(16))]
struct Gdt([u64; 6]);

static mut GDT: Gdt = Gdt([
    0,
    0x00af_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x00cf_9b00_0000_ffff,
    0x008f_9b00_0000_ffff,
    0,
]);

/// The words LMSW loads in 16-bit code: PE, MP and TS in protected mode,
/// then MP alone in real mode (LMSW never clears PE: each mode stays).
static LMSW_WORDS: [u16; 2] = [0x000b, 0x0002];

/// Identity maps of the low 4 MiB (at least) for the legacy paging modes.
#[repr(C, align(4096))]
struct Tables {
    /// 32-bit PD of 4 MiB pages (CR4.PSE).
    pd_pse: [u32; 1024],
    /// 32-bit PD whose entry 0 points to `pt`.
    pd_4k: [u32; 1024],
    /// 4 KiB pages of the first 4 MiB.
    pt: [u32; 1024],
    /// PAE PDPT (4 entries used).
    pdpt: [u64; 512],
    /// PAE PD of 2 MiB pages (first GiB).
    pd_pae: [u64; 512],
}

static mut TABLES: Tables = Tables {
    pd_pse: [0; 1024],
    pd_4k: [0; 1024],
    pt: [0; 1024],
    pdpt: [0; 512],
    pd_pae: [0; 512],
};

/// What the tour's asm reads and writes ([`tour`]).
#[repr(C)]
struct TourIo {
    out: [u32; 16],
    pd_pse: u32,
    pd_4k: u32,
    pdpt: u32,
    cr3: u32,
    /// [`string_io_32`]: the INSB buffer, the OUTSB source, the count.
    buf: u32,
    text: u32,
    count: u32,
    /// In port (low half), out port (high half).
    ports: u32,
}

static mut IO: TourIo = TourIo {
    out: [0; 16],
    pd_pse: 0,
    pd_4k: 0,
    pdpt: 0,
    cr3: 0,
    buf: 0,
    text: 0,
    count: 0,
    ports: 0,
};

/// What the guest saw at each stop of [`tour`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    /// CPUID.0 EBX at each CPUID stop, in [`STOPS`] order.
    pub cpuid: [u32; 8],
    /// EFER (low half) with paging off, before clearing LME.
    pub efer_lme_no_paging: u32,
    /// EFER after clearing LME (paging off).
    pub efer_cleared: u32,
    /// EFER in 32-bit paging with LME clear.
    pub efer_legacy_paging: u32,
    /// EFER after paging came back on with LME set.
    pub efer_back: u32,
    /// CR0 after LMSW in 16-bit protected mode (PE, MP, TS: 0xb in 3:0).
    pub cr0_lmsw_pm16: u32,
    /// CR0 after LMSW in real mode (MP: 0x2 in 3:0).
    pub cr0_lmsw_real: u32,
}

/// The CPUID stops of [`tour`], in order.
pub const STOPS: [&str; 8] = [
    "compatibility mode",
    "32-bit protected mode, paging off",
    "32-bit paging, 4 MiB pages",
    "32-bit paging, 4 KiB pages",
    "PAE paging (legacy)",
    "16-bit protected mode",
    "real mode",
    "compatibility mode again",
];

/// Fills the tables and the GDT's data segment; idempotent.
fn prepare() {
    // SAFETY: single vCPU; nothing else uses these statics during a tour.
    let t = unsafe { &mut *addr_of_mut!(TABLES) };
    for i in 0..1024u32 {
        t.pd_pse[i as usize] = (i << 22) | 0x83;
        t.pt[i as usize] = (i << 12) | 0x3;
    }
    t.pd_4k[0] = addr_of!(t.pt) as u32 | 0x3;
    for i in 0..512u64 {
        t.pd_pae[i as usize] = (i << 21) | 0x83;
    }
    t.pdpt = [0; 512];
    t.pdpt[0] = addr_of!(t.pd_pae) as u64 | 0x1;
    let word = addr_of!(LMSW_WORDS) as u64;
    // SAFETY: as above.
    unsafe {
        (*addr_of_mut!(GDT)).0[5] = descriptor(word, 0xffff, 0x93, 0);
        let io = &mut *addr_of_mut!(IO);
        io.out = [0; 16];
        io.pd_pse = addr_of!(t.pd_pse) as u32;
        io.pd_4k = addr_of!(t.pd_4k) as u32;
        io.pdpt = addr_of!(t.pdpt) as u32;
    }
}

/// The identity maps of the legacy paging modes (CR3 values).
#[derive(Clone, Copy, Debug)]
pub struct LegacyTables {
    /// 32-bit paging, 4 MiB pages (with CR4.PSE).
    pub pd_pse: u64,
    /// 32-bit paging, 4 KiB pages (the first 4 MiB).
    pub pd_4k: u64,
    /// PAE paging (PDPT; 2 MiB pages, the first GiB).
    pub pdpt: u64,
}

/// Builds the tables (idempotent) and returns their CR3 values.
pub fn legacy_tables() -> LegacyTables {
    prepare();
    // SAFETY: single vCPU; only addresses are taken.
    let io = unsafe { &*addr_of!(IO) };
    LegacyTables {
        pd_pse: u64::from(io.pd_pse),
        pd_4k: u64::from(io.pd_4k),
        pdpt: u64::from(io.pdpt),
    }
}

/// Writes PAE PDPTE `i` (0-3) of [`LegacyTables::pdpt`] (PDPTE 0 maps the
/// first GiB; the others are not present until written).
pub fn set_pdpte(i: usize, value: u64) {
    // SAFETY: single vCPU; no walk uses the PDPT while L1 writes it.
    unsafe { (*addr_of_mut!(TABLES)).pdpt[i] = value };
}

/// PAE PDPTE 0 as [`legacy_tables`] writes it.
pub fn pdpte0() -> u64 {
    // SAFETY: a plain read of a static only this vCPU writes.
    unsafe { (*addr_of!(TABLES)).pdpt[0] }
}

/// The LGDT operand for [`GDT`]: limit, then the 64-bit base.
fn gdtr() -> [u16; 5] {
    let gdt = addr_of!(GDT) as u64;
    [
        (core::mem::size_of::<Gdt>() - 1) as u16,
        gdt as u16,
        (gdt >> 16) as u16,
        (gdt >> 32) as u16,
        (gdt >> 48) as u16,
    ]
}

/// Asm text, from 64-bit code with RSI = the address of this module's GDTR:
/// saves RBX, RFLAGS (then CLI) and the caller's GDTR on the stack, loads
/// this module's GDT and far-returns to its 32-bit code segment (0x18)
/// with flat data segments (their limits serve 16-bit code and real mode
/// too). Ends in `.code32` with paging and long mode still on
/// (compatibility mode). Undone by [`back_to_64`].
macro_rules! to_legacy32 {
    () => {
        concat!(
            "push rbx\n",
            "pushfq\n",
            "cli\n",
            "sub rsp, 16\n",
            "sgdt [rsp]\n",
            "lgdt [rsi]\n",
            "push 0x18\n",
            "lea rax, [rip + 2f]\n",
            "push rax\n",
            "retfq\n",
            ".code32\n",
            "2:\n",
            "mov ax, 0x10\n",
            "mov ds, ax\n",
            "mov es, ax\n",
            "mov ss, ax",
        )
    };
}

/// Asm text, from 32-bit code with long mode active again (LMA set): far
/// return to the 64-bit code segment (0x08), then restore what
/// [`to_legacy32`] saved (the caller's GDTR, RFLAGS, RBX).
macro_rules! back_to_64 {
    () => {
        concat!(
            "call 6f\n",
            "6:\n",
            "pop eax\n",
            // add eax, 7f - 6b
            ".byte 0x05\n",
            ".long 7f - 6b\n",
            "push 0x08\n",
            "push eax\n",
            "retf\n",
            ".code64\n",
            "7:\n",
            "lgdt [rsp]\n",
            "add rsp, 16\n",
            "popfq\n",
            "pop rbx",
        )
    };
}

/// Leaves long mode for every other mode and comes back, with interrupts
/// off: compatibility mode; paging off (LMA clears); EFER.LME cleared with
/// WRMSR; 32-bit paging with 4 MiB and with 4 KiB pages; PAE paging without
/// long mode; 16-bit protected mode (LMSW from memory, 16-bit addressing);
/// real mode at EIP > 0xFFFF (LMSW, CPUID); back through 32-bit protected
/// mode, LME set with WRMSR, paging on (LMA sets), to 64-bit mode. CPUID at
/// every stop. Must run at CPL 0 with code, data and stack below 4 MiB.
pub fn tour() -> Seen {
    prepare();
    // SAFETY: the sequence returns to 64-bit mode with CR0, CR3, CR4, EFER,
    // GDTR, RBX, RSP and RFLAGS as they were; only the statics above and
    // the listed registers change; no stack is used outside 32/64-bit code.
    unsafe {
        let gdtr = gdtr();
        asm!(
            to_legacy32!(),
            // Compatibility mode (long mode, paging on).
            "xor eax, eax",
            "cpuid",
            "mov [edi], ebx",
            "mov eax, cr3",
            "mov [edi + 76], eax",
            // Paging off: long mode ends (LMA clears), LME stays.
            "mov eax, cr0",
            "and eax, 0x7fffffff",
            "mov cr0, eax",
            "xor eax, eax",
            "cpuid",
            "mov [edi + 4], ebx",
            "mov ecx, 0xc0000080",
            "rdmsr",
            "mov [edi + 32], eax",
            "and eax, 0xfffffeff",
            "wrmsr",
            "rdmsr",
            "mov [edi + 36], eax",
            // 32-bit paging, 4 MiB pages.
            "mov eax, cr4",
            "and eax, 0xffffffdf",
            "or eax, 0x10",
            "mov cr4, eax",
            "mov eax, [edi + 64]",
            "mov cr3, eax",
            "mov eax, cr0",
            "or eax, 0x80000000",
            "mov cr0, eax",
            "xor eax, eax",
            "cpuid",
            "mov [edi + 8], ebx",
            "mov ecx, 0xc0000080",
            "rdmsr",
            "mov [edi + 40], eax",
            "mov eax, cr0",
            "and eax, 0x7fffffff",
            "mov cr0, eax",
            // 32-bit paging, 4 KiB pages (PSE off).
            "mov eax, cr4",
            "and eax, 0xffffffef",
            "mov cr4, eax",
            "mov eax, [edi + 68]",
            "mov cr3, eax",
            "mov eax, cr0",
            "or eax, 0x80000000",
            "mov cr0, eax",
            "xor eax, eax",
            "cpuid",
            "mov [edi + 12], ebx",
            "mov eax, cr0",
            "and eax, 0x7fffffff",
            "mov cr0, eax",
            // PAE paging outside long mode.
            "mov eax, cr4",
            "or eax, 0x20",
            "mov cr4, eax",
            "mov eax, [edi + 72]",
            "mov cr3, eax",
            "mov eax, cr0",
            "or eax, 0x80000000",
            "mov cr0, eax",
            "xor eax, eax",
            "cpuid",
            "mov [edi + 16], ebx",
            "mov eax, cr0",
            "and eax, 0x7fffffff",
            "mov cr0, eax",
            "mov eax, cr4",
            "and eax, 0xffffffdf",
            "mov cr4, eax",
            // 16-bit protected mode: ljmp 0x20:3f.
            ".byte 0xea",
            ".long 3f",
            ".word 0x20",
            ".code16",
            "3:",
            "xor eax, eax",
            "cpuid",
            "mov [edi + 20], ebx",
            "mov ax, 0x28",
            "mov es, ax",
            // LMSW es:[0] with a 16-bit address (0F 01 36 disp16): sets TS.
            "lmsw word ptr es:[0]",
            "mov eax, cr0",
            "mov [edi + 48], eax",
            // Real mode: PE off, then ljmp 0:4f (32-bit offset, the CS
            // limit stays 4 GiB as on the CPU).
            "mov eax, cr0",
            "and eax, 0xfffffffe",
            "mov cr0, eax",
            ".byte 0x66, 0xea",
            ".long 4f",
            ".word 0",
            "4:",
            // LMSW es:[2]: clears TS.
            "lmsw word ptr es:[2]",
            "mov eax, cr0",
            "mov [edi + 52], eax",
            "xor eax, eax",
            "cpuid",
            "mov [edi + 24], ebx",
            // Protected mode again: ljmp 0x18:5f.
            "mov eax, cr0",
            "or eax, 1",
            "mov cr0, eax",
            ".byte 0x66, 0xea",
            ".long 5f",
            ".word 0x18",
            ".code32",
            "5:",
            "mov ax, 0x10",
            "mov es, ax",
            // Long mode again: PAE, LME, the 64-bit tables, paging.
            "mov eax, cr4",
            "or eax, 0x20",
            "mov cr4, eax",
            "mov ecx, 0xc0000080",
            "rdmsr",
            "or eax, 0x100",
            "wrmsr",
            "mov eax, [edi + 76]",
            "mov cr3, eax",
            "mov eax, cr0",
            "or eax, 0x80000000",
            "mov cr0, eax",
            "mov ecx, 0xc0000080",
            "rdmsr",
            "mov [edi + 44], eax",
            "xor eax, eax",
            "cpuid",
            "mov [edi + 28], ebx",
            back_to_64!(),
            in("rsi") gdtr.as_ptr(),
            in("rdi") addr_of_mut!(IO),
            out("rax") _,
            out("rcx") _,
            out("rdx") _,
        );
        let out = (*addr_of!(IO)).out;
        Seen {
            cpuid: [
                out[0], out[1], out[2], out[3], out[4], out[5], out[6], out[7],
            ],
            efer_lme_no_paging: out[8],
            efer_cleared: out[9],
            efer_legacy_paging: out[10],
            efer_back: out[11],
            cr0_lmsw_pm16: out[12],
            cr0_lmsw_real: out[13],
        }
    }
}

/// Registers after the string I/O of [`string_io_32`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StringIo32 {
    /// EDI after `REP INSB`.
    pub ins_edi: u32,
    /// ECX after `REP INSB`.
    pub ins_ecx: u32,
    /// ESI after `STD; REP OUTSB`.
    pub outs_esi: u32,
    /// ECX after `STD; REP OUTSB`.
    pub outs_ecx: u32,
}

/// In 32-bit protected mode with 32-bit paging (4 KiB pages, LME clear):
/// `REP INSB` of `buf.len()` bytes from port `in_port` into `buf`
/// (ES:EDI), then with RFLAGS.DF set `REP OUTSB` of `text` to port
/// `out_port` from its last byte down (DS:ESI), and back to 64-bit mode.
/// Both buffers must lie below 4 MiB (the guests' layout) and `text` be at
/// least as long as `buf`. Interrupts stay off.
pub fn string_io_32(buf: &mut [u8], text: &[u8], in_port: u16, out_port: u16) -> StringIo32 {
    assert!(text.len() >= buf.len());
    prepare();
    // SAFETY: single vCPU; the asm reads and writes only IO, `buf` and
    // `text`, and returns to 64-bit mode with CR0, CR3, CR4, EFER, GDTR,
    // RBX, RSP and RFLAGS as they were (as in `tour`).
    unsafe {
        let io = &mut *addr_of_mut!(IO);
        io.buf = buf.as_mut_ptr() as u32;
        io.text = text.as_ptr() as u32 + buf.len() as u32 - 1;
        io.count = buf.len() as u32;
        io.ports = u32::from(in_port) | u32::from(out_port) << 16;
        let gdtr = gdtr();
        asm!(
            to_legacy32!(),
            "mov ebx, edi",
            "mov eax, cr3",
            "mov [ebx + 76], eax",
            // Paging off, LME clear: legacy protected mode.
            "mov eax, cr0",
            "and eax, 0x7fffffff",
            "mov cr0, eax",
            "mov ecx, 0xc0000080",
            "rdmsr",
            "and eax, 0xfffffeff",
            "wrmsr",
            // 32-bit paging with 4 KiB pages (PAE and PSE off).
            "mov eax, cr4",
            "and eax, 0xffffffcf",
            "mov cr4, eax",
            "mov eax, [ebx + 68]",
            "mov cr3, eax",
            "mov eax, cr0",
            "or eax, 0x80000000",
            "mov cr0, eax",
            // REP INSB: ES:EDI up, ECX elements.
            "mov edx, [ebx + 92]",
            "mov edi, [ebx + 80]",
            "mov ecx, [ebx + 88]",
            "rep insb",
            "mov [ebx], edi",
            "mov [ebx + 4], ecx",
            // STD; REP OUTSB: DS:ESI down.
            "shr edx, 16",
            "mov esi, [ebx + 84]",
            "mov ecx, [ebx + 88]",
            "std",
            "rep outsb",
            "cld",
            "mov [ebx + 8], esi",
            "mov [ebx + 12], ecx",
            // Long mode again (as at the end of `tour`).
            "mov edi, ebx",
            "mov eax, cr0",
            "and eax, 0x7fffffff",
            "mov cr0, eax",
            "mov eax, cr4",
            "or eax, 0x20",
            "mov cr4, eax",
            "mov ecx, 0xc0000080",
            "rdmsr",
            "or eax, 0x100",
            "wrmsr",
            "mov eax, [edi + 76]",
            "mov cr3, eax",
            "mov eax, cr0",
            "or eax, 0x80000000",
            "mov cr0, eax",
            back_to_64!(),
            inout("rsi") gdtr.as_ptr() => _,
            inout("rdi") addr_of_mut!(IO) => _,
            out("rax") _,
            out("rcx") _,
            out("rdx") _,
        );
        let out = (*addr_of!(IO)).out;
        StringIo32 {
            ins_edi: out[0],
            ins_ecx: out[1],
            outs_esi: out[2],
            outs_ecx: out[3],
        }
    }
}
