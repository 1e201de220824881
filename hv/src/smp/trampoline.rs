//! The real-mode trampoline that brings an application processor from its
//! STARTUP IPI to the kernel (direct boot; Limine starts APs itself).
//!
//! A STARTUP IPI starts a CPU in real mode at `vector << 12`. The code below
//! is copied to such a page below 1 MiB, followed by three pages of
//! temporary page tables: an identity map of the first 2 MiB (the trampoline
//! runs there while it turns paging on) and the kernel's own upper-half
//! PML4 entries (kernel image, direct map, AP stacks). The trampoline goes
//! real mode -> 32-bit protected mode -> long mode, loads the AP's own
//! kernel stack from the data block, and jumps to `ap_entry64` in the
//! kernel image, which switches to the kernel's page tables (the stack is
//! mapped in both) and calls Rust. APs start one at a time, so one copy and
//! one data block serve them all.

use crate::mem::paging::phys_to_virt;

/// Offset of the data block the boot CPU fills before each STARTUP IPI.
const DATA: usize = 0xfc0;
const D_CR3: usize = 0x00;
const D_EFER: usize = 0x08;
const D_STACK: usize = 0x10;
const D_ENTRY: usize = 0x18;
const D_ARG: usize = 0x20;
const D_KERNEL_CR3: usize = 0x28;

/// Pages the trampoline uses: code, PML4, PDPT, PD.
pub const PAGES: u64 = 4;

// AT&T syntax: LLVM's Intel syntax refuses label differences in memory
// operands.
core::arch::global_asm!(
    r#"
    .section .rodata.hv_ap_trampoline, "a"
    .global hv_ap_trampoline
    .global hv_ap_trampoline_end
    .code16
hv_ap_trampoline:
    cli
    cld
    movw %cs, %ax
    movw %ax, %ds
    xorl %ebx, %ebx
    movw %ax, %bx
    shll $4, %ebx
    # This copy is in RAM: patch in the linear addresses it runs at.
    leal (tr_gdt - hv_ap_trampoline)(%ebx), %eax
    movl %eax, (tr_gdtr - hv_ap_trampoline + 2)
    leal (tr_prot32 - hv_ap_trampoline)(%ebx), %eax
    movl %eax, (tr_far32 - hv_ap_trampoline)
    leal (tr_long64 - hv_ap_trampoline)(%ebx), %eax
    movl %eax, (tr_far64 - hv_ap_trampoline)
    lgdtl (tr_gdtr - hv_ap_trampoline)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl *(tr_far32 - hv_ap_trampoline)

    .code32
tr_prot32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl %cr4, %eax
    orl $(1 << 5), %eax
    movl %eax, %cr4
    movl ({data} + {d_cr3})(%ebx), %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx
    rdmsr
    orl ({data} + {d_efer})(%ebx), %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80010000, %eax
    movl %eax, %cr0
    ljmpl *(tr_far64 - hv_ap_trampoline)(%ebx)

    .code64
tr_long64:
    movl %ebx, %ebx
    movq ({data} + {d_stack})(%rbx), %rsp
    movq ({data} + {d_arg})(%rbx), %rdi
    movq ({data} + {d_kcr3})(%rbx), %rsi
    movq ({data} + {d_entry})(%rbx), %rax
    jmp *%rax

    .balign 8
tr_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff
    .quad 0x00cf92000000ffff
    .quad 0x00af9a000000ffff
tr_gdtr:
    .word 31
    .long 0
tr_far32:
    .long 0
    .word 0x08
tr_far64:
    .long 0
    .word 0x18
hv_ap_trampoline_end:
    .text
    "#,
    data = const DATA,
    d_cr3 = const D_CR3,
    d_efer = const D_EFER,
    d_stack = const D_STACK,
    d_arg = const D_ARG,
    d_kcr3 = const D_KERNEL_CR3,
    d_entry = const D_ENTRY,
    options(att_syntax)
);

unsafe extern "C" {
    static hv_ap_trampoline: u8;
    static hv_ap_trampoline_end: u8;
}

/// The 64-bit kernel entry of an AP: kernel page tables (the stack is
/// already the AP's own, mapped in both), then Rust.
#[unsafe(naked)]
unsafe extern "C" fn ap_entry64(_index: u64, _kernel_cr3: u64) -> ! {
    core::arch::naked_asm!(
        "mov cr3, rsi",
        "xor ebp, ebp",
        "call {main}",
        "ud2",
        main = sym super::ap_main,
    )
}

/// A trampoline installed at `phys` (below 1 MiB, page aligned).
#[derive(Debug)]
pub struct Trampoline {
    phys: u64,
}

impl Trampoline {
    /// Copies the code to `phys` and builds its page tables from the
    /// kernel's PML4 at `kernel_cr3`.
    pub fn install(phys: u64, kernel_cr3: u64) -> Result<Self, &'static str> {
        if phys >= 0x10_0000 || !phys.is_multiple_of(4096) || (0xa_0000..0xc_0000).contains(&phys) {
            return Err("trampoline page unusable for a STARTUP IPI");
        }
        let start = &raw const hv_ap_trampoline as usize;
        let len = &raw const hv_ap_trampoline_end as usize - start;
        if len > DATA {
            return Err("trampoline code overlaps its data block");
        }
        let base = phys_to_virt(phys) as *mut u8;
        // SAFETY: `phys` is PAGES frames of low RAM reserved for this
        // (frame::alloc_low), reachable in the direct map; the source is the
        // kernel's read-only copy of the code.
        unsafe {
            core::ptr::write_bytes(base, 0, (PAGES * 4096) as usize);
            core::ptr::copy_nonoverlapping(start as *const u8, base, len);
            let pml4 = base.add(0x1000) as *mut u64;
            let pdpt = base.add(0x2000) as *mut u64;
            let pd = base.add(0x3000) as *mut u64;
            // Identity map of 0..2 MiB (present, writable, 2 MiB page).
            *pml4 = (phys + 0x2000) | 0x3;
            *pdpt = (phys + 0x3000) | 0x3;
            *pd = 0x83;
            // The kernel's upper half, shared.
            let kernel = phys_to_virt(kernel_cr3) as *const u64;
            for i in 256..512 {
                *pml4.add(i) = *kernel.add(i);
            }
            let data = base.add(DATA) as *mut u64;
            *data.byte_add(D_CR3) = phys + 0x1000;
            *data.byte_add(D_KERNEL_CR3) = kernel_cr3;
            // LME and, as on the boot CPU, NXE (the kernel's tables use NX).
            let efer = crate::arch::cpu::rdmsr(0xc000_0080) & (1 << 11);
            *data.byte_add(D_EFER) = efer | (1 << 8);
            *data.byte_add(D_ENTRY) = ap_entry64 as *const () as u64;
        }
        Ok(Self { phys })
    }

    /// The STARTUP IPI vector: the trampoline's page number.
    pub fn vector(&self) -> u8 {
        (self.phys >> 12) as u8
    }

    /// Sets what the next AP to start takes: its stack top and CPU index.
    pub fn prepare(&self, stack_top: u64, index: usize) {
        let data = (phys_to_virt(self.phys) as usize + DATA) as *mut u64;
        // SAFETY: the data block of our trampoline page; no AP runs the
        // trampoline now (they start one at a time).
        unsafe {
            data.byte_add(D_STACK).write_volatile(stack_top);
            data.byte_add(D_ARG).write_volatile(index as u64);
        }
    }
}
