//! Time: the host TSC, its frequency (calibrated against the PIT, since
//! CPUID 0x15/0x16 may be absent: they are under QEMU TCG), and a
//! nanosecond clock derived from it.

pub mod host_tsc;
pub mod pit;

use spin::Once;

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
        // Three 10 ms windows; the smallest count is the one least disturbed.
        let khz = (0..3).map(|_| pit::measure_tsc_khz(10)).min().unwrap_or(0);
        TscFrequency { khz, source: "PIT" }
    })
}

/// Nanoseconds since the TSC started, from the raw host TSC (the test hook
/// of [`host_tsc`] does not affect it).
pub fn now_ns() -> u64 {
    svm::tsc::ticks_to_ns(host_tsc::read_raw(), tsc_frequency().khz)
}
