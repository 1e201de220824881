//! RDMSR (and WRMSR of the value read) of every index in the three MSR
//! permission map ranges, as kvm-unit-tests' msr_intercept_check does:
//! each access either works or raises #GP (caught and counted); the VM
//! never stops.

use crate::exceptions::catch;
use core::arch::asm;

/// The three MSRPM ranges (APM 15.11).
pub const RANGES: [core::ops::RangeInclusive<u32>; 3] = [
    0..=0x1FFF,
    0xC000_0000..=0xC000_1FFF,
    0xC001_0000..=0xC001_1FFF,
];

/// Number of indices in [`RANGES`].
pub const INDICES: usize = 3 * 8192;

/// Every index of [`RANGES`], in order, with its position.
pub fn indices() -> impl Iterator<Item = (usize, u32)> {
    RANGES.iter().cloned().flatten().enumerate()
}

/// RDMSR `msr`; `None` if it raised #GP.
pub fn try_rdmsr(msr: u32) -> Option<u64> {
    let (mut lo, mut hi) = (0u32, 0u32);
    let fault = catch(2, || {
        // SAFETY: a #GP is caught and the 2-byte RDMSR skipped.
        unsafe {
            asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack))
        };
    });
    match fault {
        None => Some(u64::from(hi) << 32 | u64::from(lo)),
        Some(f) if f.vector == 13 => None,
        Some(f) => crate::verdict::fail(format_args!("RDMSR {msr:#x}: vector {}", f.vector)),
    }
}

/// WRMSR `msr` := `value`; false if it raised #GP.
pub fn try_wrmsr(msr: u32, value: u64) -> bool {
    let fault = catch(2, || {
        // SAFETY: as for try_rdmsr.
        unsafe {
            asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack))
        };
    });
    match fault {
        None => true,
        Some(f) if f.vector == 13 => false,
        Some(f) => crate::verdict::fail(format_args!("WRMSR {msr:#x}: vector {}", f.vector)),
    }
}

/// What a sweep saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Indices RDMSR read.
    pub readable: u32,
    /// Write-backs of a value read that raised #GP.
    pub write_gps: u32,
    /// The first of those.
    pub first_write_gp: Option<u32>,
}

/// Reads every index, calls `seen(position, msr, value)` and writes back
/// the value read, except for IA32_TSC (a TSC write moves TSC_ADJUST;
/// kvm-unit-tests does not compare it either).
pub fn sweep(mut seen: impl FnMut(usize, u32, Option<u64>)) -> Sweep {
    let mut s = Sweep::default();
    for (i, msr) in indices() {
        let v = try_rdmsr(msr);
        seen(i, msr, v);
        let Some(v) = v else { continue };
        s.readable += 1;
        if msr != 0x10 && !try_wrmsr(msr, v) {
            s.write_gps += 1;
            s.first_write_gp.get_or_insert(msr);
        }
    }
    s
}
