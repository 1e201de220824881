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

const REG_EOI: u64 = 0xb0;
const REG_SPURIOUS: u64 = 0xf0;
const REG_LVT_TIMER: u64 = 0x320;
const REG_TIMER_INITIAL: u64 = 0x380;
const REG_TIMER_CURRENT: u64 = 0x390;
const REG_TIMER_DIVIDE: u64 = 0x3e0;
/// Vector of the spurious interrupt (its handler sends no EOI).
pub const SPURIOUS_VECTOR: u8 = 0xff;

static MMIO: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

fn write(reg: u64, value: u32) {
    let base = MMIO.load(core::sync::atomic::Ordering::Relaxed);
    // SAFETY: `base` is the mapped APIC page (set by start_timer); writes go
    // to architectural registers.
    unsafe { core::ptr::write_volatile((base + reg) as *mut u32, value) };
}

fn read(reg: u64) -> u32 {
    let base = MMIO.load(core::sync::atomic::Ordering::Relaxed);
    // SAFETY: as for write.
    unsafe { core::ptr::read_volatile((base + reg) as *const u32) }
}

/// Enables the local APIC and starts its timer: periodic, `vector`, every
/// `period_ms` (calibrated against the PIT). The hypervisor's watchdog:
/// with the INTR intercept, no guest can keep the CPU from the hypervisor
/// for longer than a period.
pub fn start_timer(vector: u8, period_ms: u32) -> Result<u32, &'static str> {
    // SAFETY: IA32_APIC_BASE exists on every x86-64 CPU.
    let base = unsafe { rdmsr(MSR_APIC_BASE) } & 0x000f_ffff_ffff_f000;
    let virt = crate::mem::paging::map_mmio(base, 4096)?;
    MMIO.store(virt, core::sync::atomic::Ordering::Relaxed);
    write(REG_SPURIOUS, 0x100 | u32::from(SPURIOUS_VECTOR));
    write(REG_TIMER_DIVIDE, 0b1011); // divide by 1
                                     // Count for 10 ms of PIT time with the timer masked (bit 16), one-shot.
    write(REG_LVT_TIMER, 1 << 16);
    write(REG_TIMER_INITIAL, u32::MAX);
    crate::time::pit::wait_us(10_000);
    let per_10ms = u32::MAX - read(REG_TIMER_CURRENT);
    if per_10ms == 0 {
        return Err("the APIC timer does not count");
    }
    let count = (u64::from(per_10ms) * u64::from(period_ms) / 10).min(u64::from(u32::MAX)) as u32;
    write(REG_LVT_TIMER, (1 << 17) | u32::from(vector)); // periodic
    write(REG_TIMER_INITIAL, count);
    Ok(count)
}

/// Ends the interrupt being handled.
pub fn eoi() {
    write(REG_EOI, 0);
}
