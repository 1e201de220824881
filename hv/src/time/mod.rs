//! Time: the host TSC, its frequency (calibrated against the PIT, since
//! CPUID 0x15/0x16 may be absent: they are under QEMU TCG), and a
//! nanosecond clock derived from it.

pub mod host_tsc;
pub mod pit;

use core::sync::atomic::Ordering;
use spin::Once;

/// Watchdog period.
pub const TICK_MS: u64 = 10;
/// The boot CPU's calibrated APIC timer count per period (0: no watchdog),
/// which the APs' watchdogs reuse.
static WATCHDOG_COUNT: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

/// Called by the timer interrupt: counts a tick of this CPU's watchdog.
pub fn tick() {
    crate::smp::this().ticks.fetch_add(1, Ordering::Relaxed);
}

/// Milliseconds of this CPU's watchdog time so far (in TICK_MS steps).
pub fn uptime_ms() -> u64 {
    crate::smp::this().ticks.load(Ordering::Relaxed) * TICK_MS
}

/// Starts an application processor's watchdog, as the boot CPU's (nothing
/// when the boot CPU has none).
pub fn start_watchdog_ap() {
    let count = WATCHDOG_COUNT.load(Ordering::Relaxed);
    if count == 0 {
        log::warn!("watchdog: none (the boot CPU has none)");
        return;
    }
    crate::arch::lapic::start_timer_ap(crate::arch::idt::TIMER_VECTOR, count);
    log::info!("watchdog: APIC timer every {TICK_MS} ms ({count} counts)");
}

/// This CPU's watchdog ticks so far (`uptime_ms() / TICK_MS`).
#[inline]
pub fn ticks() -> u64 {
    crate::smp::this().ticks.load(Ordering::Relaxed)
}

/// Starts the watchdog timer. Without it a guest that never exits would
/// keep the CPU for good.
pub fn start_watchdog(want_x2apic: bool) {
    crate::arch::pic::disable();
    match crate::arch::lapic::start_timer(
        crate::arch::idt::TIMER_VECTOR,
        TICK_MS as u32,
        want_x2apic,
    ) {
        Ok(count) => {
            WATCHDOG_COUNT.store(count, Ordering::Relaxed);
            log::info!("watchdog: APIC timer every {TICK_MS} ms ({count} counts)")
        }
        Err(e) => log::warn!("watchdog: {e}; a guest that never exits cannot be stopped"),
    }
}

/// Host TSC frequency and how it was found.
#[derive(Clone, Copy, Debug)]
pub struct TscFrequency {
    /// kHz.
    pub khz: u64,
    /// What it was measured against.
    pub source: &'static str,
}

static FREQUENCY: Once<TscFrequency> = Once::new();

/// Calibrates the TSC (once) and returns its frequency.
pub fn tsc_frequency() -> TscFrequency {
    *FREQUENCY.call_once(|| {
        // Five 20 ms windows; the median shrugs off a disturbed one.
        let mut khz = [0u64; 5];
        khz.iter_mut().for_each(|k| *k = pit::measure_tsc_khz(20));
        khz.sort_unstable();
        let khz = khz[2];
        TscFrequency { khz, source: "PIT" }
    })
}

/// Nanoseconds since the TSC started, from the host TSC in the boot CPU's
/// time base (one clock on every CPU; the test shift of [`host_tsc`] does
/// not affect it).
pub fn now_ns() -> u64 {
    let tsc = host_tsc::reference(host_tsc::read_raw());
    svm::tsc::ticks_to_ns(tsc, tsc_frequency().khz)
}
