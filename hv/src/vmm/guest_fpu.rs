//! Guest state that stays in the CPU between exits because neither VMRUN
//! nor #VMEXIT switches it and L0 never touches it: XCR0 (`xcr0`) and the
//! x87/SSE/AVX registers (the kernel is soft-float, `main.rs`). A CPU that
//! time-slices several vCPUs (`multi`) saves the leaving vCPU's copy here
//! and puts the next one's back (APM Vol. 2 15.5.1: VMRUN does not switch
//! them; Vol. 1 11.5 / SDM 13: XSAVE, XRSTOR).

use alloc::boxed::Box;
use core::arch::x86_64::__cpuid_count;

/// CR4.OSFXSR: FXSAVE/FXRSTOR include the XMM registers (QEMU skips them
/// otherwise).
const CR4_OSFXSR: u64 = 1 << 9;
/// CR4.OSXSAVE (set by `xcr0::reset` where XSAVE works).
const CR4_OSXSAVE: u64 = 1 << 18;
/// Bytes of the save area: XSAVE's size for every XCR0 feature must fit.
const AREA: usize = 4096;

#[repr(C, align(64))]
struct Area([u8; AREA]);

/// One vCPU's XCR0 and FPU/SSE/AVX registers while another vCPU has its CPU.
pub struct GuestFpu {
    xcr0: u64,
    area: Box<Area>,
}

impl core::fmt::Debug for GuestFpu {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "GuestFpu {{ xcr0: {:#x} }}", self.xcr0)
    }
}

fn cr4() -> u64 {
    let cr4: u64;
    // SAFETY: reading CR4 has no side effects.
    unsafe { core::arch::asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack)) };
    cr4
}

/// Writes CR4.
///
/// # Safety
/// Only OSFXSR may differ from the current CR4.
unsafe fn set_cr4(value: u64) {
    // SAFETY: the caller changes only OSFXSR, which enables FXSAVE's and
    // SSE's use of the XMM registers and nothing else.
    unsafe { core::arch::asm!("mov cr4, {}", in(reg) value, options(nomem, nostack)) };
}

impl GuestFpu {
    /// An empty save area (nothing saved yet); `None` when XSAVE's area
    /// for this CPU's features would not fit.
    pub fn new() -> Option<Self> {
        if __cpuid_count(1, 0).ecx & (1 << 26) != 0 && __cpuid_count(0xD, 0).ecx as usize > AREA {
            return None;
        }
        // SAFETY: a byte array: all-zero is valid.
        let area = unsafe { Box::<Area>::new_zeroed().assume_init() };
        Some(Self { xcr0: 1, area })
    }

    /// Saves what the CPU holds (the vCPU that ran last on it).
    pub fn save(&mut self) {
        let cr4 = cr4();
        let area = self.area.0.as_mut_ptr();
        if cr4 & CR4_OSXSAVE != 0 {
            // SAFETY: CR4.OSXSAVE is set, so XGETBV and XSAVE exist; the
            // area is 64-byte aligned and holds every XCR0 feature (`new`).
            unsafe {
                let (lo, hi): (u32, u32);
                core::arch::asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi,
                    options(nomem, nostack));
                self.xcr0 = u64::from(hi) << 32 | u64::from(lo);
                core::arch::asm!("xsave64 [{}]", in(reg) area, in("eax") u32::MAX,
                    in("edx") u32::MAX, options(nostack));
            }
        } else {
            // SAFETY: FXSAVE writes 512 bytes of the 16-byte aligned area;
            // OSFXSR only while it runs (main.rs: the kernel keeps it as
            // the loader left it).
            unsafe {
                set_cr4(cr4 | CR4_OSFXSR);
                core::arch::asm!("fxsave64 [{}]", in(reg) area, options(nostack));
                set_cr4(cr4);
            }
        }
    }

    /// Puts the saved state back into the CPU (after [`Self::save`]).
    pub fn restore(&self) {
        let cr4 = cr4();
        let area = self.area.0.as_ptr();
        if cr4 & CR4_OSXSAVE != 0 {
            // SAFETY: as in `save`; the XCR0 and area XSAVE stored there
            // on this CPU are valid for XSETBV and XRSTOR.
            unsafe {
                core::arch::asm!("xsetbv", in("ecx") 0, in("eax") self.xcr0 as u32,
                    in("edx") (self.xcr0 >> 32) as u32, options(nomem, nostack));
                core::arch::asm!("xrstor64 [{}]", in(reg) area, in("eax") u32::MAX,
                    in("edx") u32::MAX, options(nostack));
            }
        } else {
            // SAFETY: as in `save`: the image FXSAVE stored.
            unsafe {
                set_cr4(cr4 | CR4_OSFXSR);
                core::arch::asm!("fxrstor64 [{}]", in(reg) area, options(nostack));
                set_cr4(cr4);
            }
        }
    }
}
