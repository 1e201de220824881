//! XCR0 between VMs. VMRUN and #VMEXIT do not switch it (APM 15.5.1) and
//! guests run XSETBV natively (L0 does not intercept it: the CPU makes the
//! APM's checks), so L1 and its L2s share it as on the CPU; each VM starts
//! with XCR0's reset value (x87 only), not the last VM's.

use core::arch::x86_64::__cpuid_count;

/// CR4.OSXSAVE: L0 needs it to run XSETBV.
const CR4_OSXSAVE: u64 = 1 << 18;

/// Resets XCR0 to 1 when the CPU has XSAVE. QEMU TCG counts CR4.OSXSAVE
/// reserved unless a CPUID 0xD.1 EAX feature is on (docs/qemu-tcg.md), and
/// a reserved CR4 bit written in host mode derails it: L0 then does nothing.
pub fn reset() {
    let xsave = __cpuid_count(1, 0).ecx & (1 << 26) != 0;
    if !xsave || __cpuid_count(0xD, 1).eax == 0 {
        return;
    }
    // SAFETY: CR4.OSXSAVE is defined on this CPU (checked above) and only
    // enables XSETBV/XGETBV; XCR0 = 1 (x87) is always valid.
    unsafe {
        let cr4: u64;
        core::arch::asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack));
        if cr4 & CR4_OSXSAVE == 0 {
            core::arch::asm!("mov cr4, {}", in(reg) cr4 | CR4_OSXSAVE, options(nomem, nostack));
        }
        core::arch::asm!("xsetbv", in("ecx") 0, in("eax") 1, in("edx") 0, options(nomem, nostack));
    }
}
