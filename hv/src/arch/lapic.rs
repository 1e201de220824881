//! The local APIC: its registers through MMIO the direct map does not
//! cover, or, in x2APIC mode, as MSRs 0x800 + offset/16.

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

/// Reads the local APIC's ID and version (after [`start_timer`] chose the
/// register interface).
pub fn probe() -> Result<LapicInfo, &'static str> {
    // SAFETY: IA32_APIC_BASE exists on every x86-64 CPU.
    let apic_base = unsafe { rdmsr(MSR_APIC_BASE) };
    let x2apic = apic_base & APIC_BASE_X2APIC != 0;
    if !x2apic && MMIO.load(core::sync::atomic::Ordering::Relaxed) == 0 {
        return Err("the APIC's registers are not mapped (no timer)");
    }
    let (id, version) = (read(REG_ID), read(REG_VERSION));
    Ok(LapicInfo {
        base: apic_base & 0x000f_ffff_ffff_f000,
        // xAPIC keeps the ID in bits 31:24; x2APIC uses all 32 bits.
        id: if x2apic { id } else { id >> 24 },
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

/// The APIC's register page in the direct map, or 0 when the APIC is in
/// x2APIC mode (registers are MSRs 0x800 + offset/16 then; firmware may
/// leave it so on real machines).
static MMIO: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
/// IA32_APIC_BASE.EXTD: x2APIC mode.
const APIC_BASE_X2APIC: u64 = 1 << 10;

fn write(reg: u64, value: u32) {
    match MMIO.load(core::sync::atomic::Ordering::Relaxed) {
        // SAFETY: x2APIC registers as MSRs; writes go to architectural registers.
        0 => unsafe { super::cpu::wrmsr(0x800 + (reg >> 4) as u32, u64::from(value)) },
        // SAFETY: `base` is the mapped APIC page (set by start_timer).
        base => unsafe { core::ptr::write_volatile((base + reg) as *mut u32, value) },
    }
}

fn read(reg: u64) -> u32 {
    match MMIO.load(core::sync::atomic::Ordering::Relaxed) {
        // SAFETY: as for write.
        0 => unsafe { rdmsr(0x800 + (reg >> 4) as u32) as u32 },
        // SAFETY: as for write.
        base => unsafe { core::ptr::read_volatile((base + reg) as *const u32) },
    }
}

/// Enables the local APIC and starts its timer: periodic, `vector`, every
/// `period_ms` (calibrated against the PIT). The hypervisor's watchdog:
/// with the INTR intercept, no guest can keep the CPU from the hypervisor
/// for longer than a period.
pub fn start_timer(vector: u8, period_ms: u32, want_x2apic: bool) -> Result<u32, &'static str> {
    // SAFETY: IA32_APIC_BASE exists on every x86-64 CPU.
    let mut apic_base = unsafe { rdmsr(MSR_APIC_BASE) };
    let has_x2apic = raw_cpuid::CpuId::new()
        .get_feature_info()
        .is_some_and(|f| f.has_x2apic());
    if want_x2apic && !has_x2apic {
        log::warn!(
            "lapic: x2APIC mode asked for, but the CPU has no x2APIC (QEMU 7.2 TCG has none)"
        );
    }
    if want_x2apic && has_x2apic && apic_base & APIC_BASE_X2APIC == 0 {
        // xAPIC -> x2APIC is a legal transition with the APIC enabled (bit 11).
        apic_base |= APIC_BASE_X2APIC | (1 << 11);
        // SAFETY: the CPU has x2APIC; the kernel uses no other APIC state yet.
        unsafe { super::cpu::wrmsr(MSR_APIC_BASE, apic_base) };
    }
    if apic_base & APIC_BASE_X2APIC == 0 {
        let virt = crate::mem::paging::map_mmio(apic_base & 0x000f_ffff_ffff_f000, 4096)?;
        MMIO.store(virt, core::sync::atomic::Ordering::Relaxed);
    }
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
    log::info!(
        "lapic: {} mode, timer {count} counts per {period_ms} ms",
        if MMIO.load(core::sync::atomic::Ordering::Relaxed) == 0 {
            "x2APIC"
        } else {
            "xAPIC"
        }
    );
    write(REG_LVT_TIMER, (1 << 17) | u32::from(vector)); // periodic
    write(REG_TIMER_INITIAL, count);
    Ok(count)
}

const REG_ICR_LOW: u64 = 0x300;
const REG_ICR_HIGH: u64 = 0x310;

/// Sends this CPU an NMI (ICR: delivery mode NMI, asserted, physical
/// destination = its own APIC ID; the self shorthand is for fixed
/// interrupts only). For tests of the NMI intercept.
pub fn send_self_nmi() {
    const NMI_ASSERT: u32 = (0b100 << 8) | (1 << 14);
    match MMIO.load(core::sync::atomic::Ordering::Relaxed) {
        0 => {
            let id = read(REG_ID);
            // SAFETY: x2APIC ICR (MSR 0x830), one 64-bit write.
            unsafe { super::cpu::wrmsr(0x830, (u64::from(id) << 32) | u64::from(NMI_ASSERT)) };
        }
        _ => {
            write(REG_ICR_HIGH, read(REG_ID) & 0xff00_0000);
            write(REG_ICR_LOW, NMI_ASSERT);
        }
    }
}

/// ICR delivery modes and flags (APM Vol. 2, 16.5 "Interprocessor Interrupts").
const ICR_FIXED: u32 = 0b000 << 8;
const ICR_INIT: u32 = 0b101 << 8;
const ICR_STARTUP: u32 = 0b110 << 8;
const ICR_LEVEL_ASSERT: u32 = 1 << 14;
const ICR_PENDING: u32 = 1 << 12;

/// Writes the ICR for physical destination `apic_id` and waits (briefly)
/// until the APIC has sent it.
fn send_icr(apic_id: u32, low: u32) {
    match MMIO.load(core::sync::atomic::Ordering::Relaxed) {
        // SAFETY: x2APIC ICR (MSR 0x830), one 64-bit write; no pending bit.
        0 => unsafe { super::cpu::wrmsr(0x830, (u64::from(apic_id) << 32) | u64::from(low)) },
        _ => {
            write(REG_ICR_HIGH, apic_id << 24);
            write(REG_ICR_LOW, low);
            for _ in 0..100_000 {
                if read(REG_ICR_LOW) & ICR_PENDING == 0 {
                    break;
                }
                core::hint::spin_loop();
            }
        }
    }
}

/// Sends INIT (asserted) to the CPU whose APIC ID is `apic_id`: it resets
/// and waits for a STARTUP IPI.
pub fn send_init(apic_id: u32) {
    send_icr(apic_id, ICR_INIT | ICR_LEVEL_ASSERT);
}

/// Sends a STARTUP IPI: the CPU starts in real mode at `page << 12`
/// (CS = page << 8, IP = 0).
pub fn send_startup(apic_id: u32, page: u8) {
    send_icr(apic_id, ICR_STARTUP | ICR_LEVEL_ASSERT | u32::from(page));
}

/// Sends the fixed interrupt `vector` to the CPU whose APIC ID is `apic_id`.
pub fn send_ipi(apic_id: u32, vector: u8) {
    send_icr(apic_id, ICR_FIXED | ICR_LEVEL_ASSERT | u32::from(vector));
}

/// This CPU's APIC ID as its local APIC reports it (valid once the
/// register interface is chosen by [`start_timer`]).
pub fn id() -> u32 {
    match MMIO.load(core::sync::atomic::Ordering::Relaxed) {
        0 => read(REG_ID),
        _ => read(REG_ID) >> 24,
    }
}

/// Starts an application processor's watchdog: the same register interface
/// as the boot CPU chose (x2APIC when it switched, else the same MMIO page,
/// which every CPU sees as its own APIC), and the boot CPU's calibrated
/// `count`: every local APIC timer runs from the same clock.
pub fn start_timer_ap(vector: u8, count: u32) {
    if MMIO.load(core::sync::atomic::Ordering::Relaxed) == 0 {
        // SAFETY: the boot CPU switched to x2APIC mode, so this CPU has it.
        unsafe {
            let base = rdmsr(MSR_APIC_BASE);
            super::cpu::wrmsr(MSR_APIC_BASE, base | APIC_BASE_X2APIC | (1 << 11));
        }
    }
    write(REG_SPURIOUS, 0x100 | u32::from(SPURIOUS_VECTOR));
    write(REG_TIMER_DIVIDE, 0b1011); // divide by 1
    write(REG_LVT_TIMER, (1 << 17) | u32::from(vector)); // periodic
    write(REG_TIMER_INITIAL, count);
}

/// Ends the interrupt being handled.
pub fn eoi() {
    write(REG_EOI, 0);
}
