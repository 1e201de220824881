//! The boot processor's kernel stack, with a guard page below it.
//!
//! Both entry paths switch to this stack first, so loader memory can be
//! reclaimed later. The kernel's page tables leave the guard page unmapped:
//! an overflow faults (and the #DF handler runs on its own IST stack).

/// Usable stack size in bytes.
pub const STACK_SIZE: usize = 256 * 1024;

/// Guard page followed by the stack.
#[repr(C, align(4096))]
pub struct BootStack {
    /// Never mapped by the kernel's page tables.
    pub guard: [u8; 4096],
    /// The stack proper; grows down from its end.
    pub stack: [u8; STACK_SIZE],
}

/// The boot stack. Only touched through its address.
#[unsafe(no_mangle)]
pub static mut BOOT_STACK: BootStack = BootStack {
    guard: [0; 4096],
    stack: [0; STACK_SIZE],
};

/// Virtual address of the top of the stack (where it starts).
pub fn stack_top() -> u64 {
    // SAFETY: only the address is taken.
    unsafe { core::ptr::addr_of!(BOOT_STACK.stack) as u64 + STACK_SIZE as u64 }
}

/// Virtual address of the guard page.
pub fn guard_page() -> u64 {
    // SAFETY: only the address is taken.
    unsafe { core::ptr::addr_of!(BOOT_STACK.guard) as u64 }
}
