//! Guest-side code run by the hypervisor's self-tests: a tiny runtime (entry,
//! console, hypercalls, exception capture, verdicts) and the test guests in
//! `src/bin/`. Built for `x86_64-unknown-none` and embedded in the kernel.
//!
//! Start state (chosen: the hypervisor prepares it; see [`svm::guest_abi`]):
//! long mode, identity-mapped first GiB, flat GDT, no IDT, interrupts off,
//! `RSP` at the top of RAM, `RDI` pointing to the start parameters. The
//! runtime's `_start` installs an IDT and calls the binary's `guest_main`.
#![no_std]

pub mod console;
pub mod cpu;
pub mod exceptions;
pub mod hypercall;
pub mod lapic;
pub mod modes;
pub mod msr_sweep;
pub mod privileged;
pub mod unbacked;
pub mod user;
pub mod verdict;

pub use svm::guest_abi::StartParams;

unsafe extern "Rust" {
    /// Provided by each guest binary: runs the test named in `params`.
    safe fn guest_main(params: &'static StartParams) -> !;
}

core::arch::global_asm!(
    r#"
    .section .text.entry, "ax"
    .global _start
_start:
    xor ebp, ebp
    and rsp, -16
    call {start}
    ud2
    "#,
    start = sym rust_start,
);

extern "C" fn rust_start(params: &'static StartParams) -> ! {
    exceptions::init();
    if params.magic != svm::guest_abi::PARAMS_MAGIC {
        verdict::fail(format_args!(
            "bad start parameters magic {:#x}",
            params.magic
        ));
    }
    guest_main(params)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    match info.location() {
        Some(l) => verdict::fail(format_args!(
            "panic at {}:{}: {}",
            l.file(),
            l.line(),
            info.message()
        )),
        None => verdict::fail(format_args!("panic: {}", info.message())),
    }
}

/// Guests have no heap. When the guests are built together with the kernel
/// (`cargo xtask build`), `svm` comes with the kernel's `decode` feature,
/// which links `alloc`, so the link needs an allocator: this one never
/// allocates. (The guests embedded in the kernel are built on their own,
/// without it: hv/build.rs.)
struct NoHeap;

// SAFETY: `alloc` always reports failure (null), which GlobalAlloc allows;
// `dealloc` is never reached since nothing was ever allocated.
unsafe impl core::alloc::GlobalAlloc for NoHeap {
    unsafe fn alloc(&self, _: core::alloc::Layout) -> *mut u8 {
        core::ptr::null_mut()
    }
    unsafe fn dealloc(&self, _: *mut u8, _: core::alloc::Layout) {}
}

#[global_allocator]
static NO_HEAP: NoHeap = NoHeap;
