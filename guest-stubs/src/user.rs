//! CPL 3 for tests: a GDT with user segments, U=1 in the start page tables
//! (every page user-accessible), and RSP0 in the TSS the hypervisor gives
//! every guest (base 0, svm::guest_abi). Faults at CPL 3 come back to CPL 0
//! through [`crate::exceptions::run_user`].

use core::arch::asm;
use svm::guest_abi::{GDT, PDPT_GPA, PD_GPA, PML4_GPA};

/// User data selector (GDT entry 3, RPL 3).
pub const USER_DATA: u16 = 0x18 | 3;
/// User 64-bit code selector (GDT entry 4, RPL 3).
pub const USER_CODE: u16 = 0x20 | 3;

/// The start GDT's entries, then user data and user 64-bit code (DPL 3).
static USER_GDT: [u64; 5] = [
    GDT[0],
    GDT[1],
    GDT[2],
    0x00cf_f300_0000_ffff,
    0x00af_fb00_0000_ffff,
];

const STACK_SIZE: usize = 16 * 1024;
#[repr(C, align(16))]
struct Stack([u8; STACK_SIZE]);
/// CPL 0 stack for faults from CPL 3 (RSP0).
static mut KERNEL_STACK: Stack = Stack([0; STACK_SIZE]);
/// A stack for CPL 3 code.
static mut USER_STACK: Stack = Stack([0; STACK_SIZE]);

/// The top of the user stack.
pub fn user_stack_top() -> u64 {
    &raw const USER_STACK as u64 + STACK_SIZE as u64
}

/// Makes CPL 3 usable: the GDT above, U=1 on every start page-table
/// entry, RSP0 (TSS offset 4, at linear 4) = a CPL 0 stack.
pub fn init() {
    let ptr: [u16; 5] = {
        let base = USER_GDT.as_ptr() as u64;
        [
            (core::mem::size_of_val(&USER_GDT) - 1) as u16,
            base as u16,
            (base >> 16) as u16,
            (base >> 32) as u16,
            (base >> 48) as u16,
        ]
    };
    const USER: u64 = 1 << 2;
    let set_user = |gpa: u64, entries: u64| {
        for i in 0..entries {
            let e = (gpa + 8 * i) as *mut u64;
            // SAFETY: the start tables, identity-mapped and the guest's own.
            unsafe { e.write_volatile(e.read_volatile() | USER) };
        }
    };
    set_user(PML4_GPA, 1);
    set_user(PDPT_GPA, 1);
    set_user(PD_GPA, 512);
    let rsp0 = &raw const KERNEL_STACK as u64 + STACK_SIZE as u64;
    // SAFETY: the same selectors keep their descriptors in the new GDT; the
    // CR3 reload flushes the old entries; linear 4 is TSS.RSP0 (the TSS is
    // at linear 0, a page nothing else uses).
    unsafe {
        asm!("lgdt [{}]", in(reg) ptr.as_ptr(), options(nostack));
        asm!("mov rax, cr3", "mov cr3, rax", out("rax") _, options(nostack));
        asm!("mov qword ptr [4], {}", in(reg) rsp0, options(nostack));
    }
}
