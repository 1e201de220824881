//! Time: the host TSC, its frequency (calibrated against the PIT, since
//! CPUID 0x15/0x16 may be absent: they are under QEMU TCG), and a
//! nanosecond clock derived from it.

pub mod host_tsc;
pub mod pit;

use core::sync::atomic::{AtomicU64, Ordering};
use spin::Once;

/// Watchdog period.
pub const TICK_MS: u64 = 10;
static TICKS: AtomicU64 = AtomicU64::new(0);

/// Called by the timer interrupt.
pub fn tick() {
    TICKS.fetch_add(1, Ordering::Relaxed);
}

/// Milliseconds of watchdog time so far (in TICK_MS steps).
pub fn uptime_ms() -> u64 {
    TICKS.load(Ordering::Relaxed) * TICK_MS
}

/// Watchdog ticks so far (`uptime_ms() / TICK_MS`).
#[inline]
pub fn ticks() -> u64 {
    TICKS.load(Ordering::Relaxed)
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
        Ok(count) => log::info!("watchdog: APIC timer every {TICK_MS} ms ({count} counts)"),
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

/// Nanoseconds since the TSC started, from the raw host TSC (the test hook
/// of [`host_tsc`] does not affect it).
pub fn now_ns() -> u64 {
    svm::tsc::ticks_to_ns(host_tsc::read_raw(), tsc_frequency().khz)
}
