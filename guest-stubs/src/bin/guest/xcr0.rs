//! XCR0 per VM: each starts with the reset value (x87 only), whatever
//! the VM before it left (hv/src/vmm/xcr0.rs).

use core::arch::asm;
use guest_stubs::cpu::cpuid;
use guest_stubs::privileged as p;
use guest_stubs::{check, check_eq, StartParams};

const CR4_OSXSAVE: u64 = 1 << 18;

fn xgetbv() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: CR4.OSXSAVE is set; XCR0 is readable at any CPL.
    unsafe { asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    u64::from(hi) << 32 | u64::from(lo)
}

/// Checks XCR0 = 1 at the start, then leaves it at 3 (x87 | SSE) for the
/// next VM: run twice in a row (`guest::xcr0_starts_at_reset`, `..._again`).
pub fn starts_at_reset(_: &StartParams) {
    check!(cpuid(1, 0)[2] & (1 << 26) != 0, "CPUID.1:ECX.XSAVE clear");
    p::write_cr4(p::read_cr(4) | CR4_OSXSAVE);
    check_eq!(xgetbv(), 1, "XCR0 at the VM's start");
    // SAFETY: x87 | SSE is a valid XCR0 (CPUID 0xD.0 EAX has both).
    unsafe { asm!("xsetbv", in("ecx") 0, in("eax") 3, in("edx") 0, options(nomem, nostack)) };
    check_eq!(xgetbv(), 3, "XCR0 after XSETBV");
}
