//! The host TSC as the hypervisor sees it.
//!
//! Read with RDTSC only: under QEMU TCG, RDMSR of IA32_TSC returns 0 (see
//! the docs/qemu-tcg.md). A test hook can move the hypervisor's view
//! backwards ([`shift_back`]) to show that guests never see it: the VMCB
//! offset is computed against this view, so without compensation the guest
//! TSC would drop by the same amount.

use core::sync::atomic::{AtomicU64, Ordering};

/// Added (wrapping) to every RDTSC: 0 except under the test hook.
static SKEW: AtomicU64 = AtomicU64::new(0);

/// The CPU's TSC.
pub fn read_raw() -> u64 {
    // SAFETY: RDTSC has no side effects; CR4.TSD is clear in the kernel.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The host TSC as the hypervisor uses it for guests.
pub fn read() -> u64 {
    read_raw().wrapping_add(SKEW.load(Ordering::Relaxed))
}

/// `read() - read_raw()`: what VMCB offsets must add so that the hardware
/// (which adds the offset to the raw TSC) matches the hypervisor's view.
pub fn skew() -> u64 {
    SKEW.load(Ordering::Relaxed)
}

/// Test hook: the hypervisor's view of the host TSC jumps back by `ticks`.
pub fn shift_back(ticks: u64) {
    SKEW.fetch_sub(ticks, Ordering::Relaxed);
}
