//! The local APIC, reached through MMIO the direct map does not cover.

use super::cpu::rdmsr;

const MSR_APIC_BASE: u32 = 0x1b;
const REG_ID: u64 = 0x20;
const REG_VERSION: u64 = 0x30;

/// Identity of the boot CPU's local APIC.
#[derive(Debug)]
pub struct LapicInfo {
    /// Physical MMIO base.
    pub base: u64,
    /// APIC ID register, bits 31:24.
    pub id: u32,
    /// Version register: version in 7:0, max LVT entry in 23:16.
    pub version: u32,
}

/// Maps the local APIC's registers and reads its ID and version.
pub fn probe() -> Result<LapicInfo, &'static str> {
    // SAFETY: IA32_APIC_BASE exists on every x86-64 CPU.
    let base = unsafe { rdmsr(MSR_APIC_BASE) } & 0x000f_ffff_ffff_f000;
    let virt = crate::mem::paging::map_mmio(base, 4096)?;
    // SAFETY: the APIC page is mapped uncached; these registers are read-only.
    let (id, version) = unsafe {
        (
            core::ptr::read_volatile((virt + REG_ID) as *const u32),
            core::ptr::read_volatile((virt + REG_VERSION) as *const u32),
        )
    };
    Ok(LapicInfo {
        base,
        id: id >> 24,
        version,
    })
}
