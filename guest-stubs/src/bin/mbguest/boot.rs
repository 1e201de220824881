//! The Multiboot 1 header and the 32-bit entry: record the entry state, load
//! our own GDT, build identity-mapped PAE page tables for the first 4 GiB
//! (2 MiB pages, the local APIC's page uncached), enable long mode
//! (CR4.PAE, EFER.LME, CR0.PG; APM vol. 2, 14.6.1) and call [`mb_main`] in
//! 64-bit mode.
//!
//! [`mb_main`]: super::mb_main

/// Header flags: bit 1 asks for the memory fields (mem_*, mmap), bit 16 says
/// the a.out kludge address fields are valid (Multiboot spec 3.1.2-3.1.3).
pub const HEADER_FLAGS: u32 = (1 << 1) | (1 << 16);

/// Selectors of the GDT below.
pub const CODE64: u16 = 0x08;
pub const DATA: u16 = 0x10;

core::arch::global_asm!(
    r#"
    .section .multiboot, "a"
    .balign 4
mb_header:
    .long 0x1BADB002
    .long {flags}
    .long -(0x1BADB002 + {flags})
    .long mb_header         /* header_addr */
    .long __mb_load_start   /* load_addr: the file's first byte */
    .long __mb_load_end     /* load_end_addr */
    .long __mb_bss_end      /* bss_end_addr */
    .long _start32          /* entry_addr */

    .section .rodata
    .balign 8
gdt:
    .quad 0
    .quad 0x00AF9B000000FFFF    /* 0x08: 64-bit code, DPL 0 */
    .quad 0x00CF93000000FFFF    /* 0x10: flat data */
    .quad 0x00CF9B000000FFFF    /* 0x18: flat 32-bit code */
gdt_end:
gdt_ptr:
    .word gdt_end - gdt - 1
    .quad gdt

    .section .bss.boot, "aw", @nobits
    .balign 4096
pml4: .skip 4096
pdpt: .skip 4096
pd:   .skip 4 * 4096
    .balign 16
    .skip 64 * 1024
boot_stack_top:
    .global MB_ENTRY_EAX, MB_ENTRY_EBX, MB_ENTRY_CR0, MB_ENTRY_EFLAGS
    .balign 4
MB_ENTRY_EAX:    .skip 4
MB_ENTRY_EBX:    .skip 4
MB_ENTRY_CR0:    .skip 4
MB_ENTRY_EFLAGS: .skip 4

    .section .text.boot32, "ax"
    .code32
    .global _start32
_start32:
    cli
    movl %eax, MB_ENTRY_EAX
    movl %ebx, MB_ENTRY_EBX
    movl %cr0, %ecx
    movl %ecx, MB_ENTRY_CR0
    movl $boot_stack_top, %esp
    pushfl
    popl MB_ENTRY_EFLAGS
    /* Our own GDT: the loader's may be gone (spec 3.2: GDTR may be invalid). */
    lgdt gdt_ptr
    ljmp $0x18, $1f
1:  movw ${data}, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs

    /* 2048 2 MiB pages: 0-4 GiB identity, present, writable. */
    xorl %ecx, %ecx
2:  movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax
    movl %eax, pd(,%ecx,8)
    movl $0, pd+4(,%ecx,8)
    incl %ecx
    cmpl $2048, %ecx
    jne 2b
    /* The local APIC's 2 MiB page (0xFEE00000 >> 21) uncached: PCD|PWT. */
    orl $0x18, pd + 0x7F7 * 8
    movl $pd + 0x0003, pdpt
    movl $pd + 0x1003, pdpt + 8
    movl $pd + 0x2003, pdpt + 16
    movl $pd + 0x3003, pdpt + 24
    movl $pdpt + 3, pml4

    movl $pml4, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x20, %eax             /* CR4.PAE */
    movl %eax, %cr4
    movl $0xC0000080, %ecx
    rdmsr
    orl $0x100, %eax            /* EFER.LME */
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax       /* CR0.PG (and PE) */
    movl %eax, %cr0
    ljmp ${code64}, $3f

    .code64
3:  movw ${data}, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movq $boot_stack_top, %rsp
    xorl %ebp, %ebp
    call {main}
    ud2
    "#,
    flags = const HEADER_FLAGS,
    data = const DATA,
    code64 = const CODE64,
    main = sym super::mb_main,
    options(att_syntax)
);

unsafe extern "C" {
    /// EAX at entry: the loader's magic.
    pub static MB_ENTRY_EAX: u32;
    /// EBX at entry: the info block's physical address.
    pub static MB_ENTRY_EBX: u32;
    /// CR0 at entry.
    pub static MB_ENTRY_CR0: u32;
    /// EFLAGS at entry.
    pub static MB_ENTRY_EFLAGS: u32;
}

/// The entry state the assembly recorded.
#[derive(Clone, Copy, Debug)]
pub struct EntryState {
    pub eax: u32,
    pub ebx: u32,
    pub cr0: u32,
    pub eflags: u32,
}

/// Reads what the entry code recorded.
pub fn entry_state() -> EntryState {
    // SAFETY: written once by the 32-bit entry before Rust runs, read-only after.
    unsafe {
        EntryState {
            eax: core::ptr::read_volatile(&raw const MB_ENTRY_EAX),
            ebx: core::ptr::read_volatile(&raw const MB_ENTRY_EBX),
            cr0: core::ptr::read_volatile(&raw const MB_ENTRY_CR0),
            eflags: core::ptr::read_volatile(&raw const MB_ENTRY_EFLAGS),
        }
    }
}
