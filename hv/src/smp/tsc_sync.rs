//! Measuring an AP's TSC against the boot CPU's, at boot ([`measure_all`])
//! and again by the self-tests; the result sets the AP's compensation,
//! which `time::host_tsc` subtracts from its TSC (`svm::tsc::skew`).
//!
//! The boot CPU reads t0 and pings, the AP reads tA and answers, the boot
//! CPU reads t1. If the AP's TSC is the boot CPU's plus `off`, then
//! t0 <= tA - off <= t1 in every round, so `off` lies in
//! [max(tA - t1), min(tA - t0)] over all rounds. An empty window means a
//! reading was not taken when and where it claims (an error, not an
//! offset); the window's middle is the offset, its half-width the error.

use core::sync::atomic::{AtomicU64, Ordering};

/// Ping-pong rounds per measurement: the window is their intersection, so
/// more rounds narrow it (each about a cross-CPU round trip: under a loaded
/// QEMU TCG, a 64-round window was seen 2.5M ticks wide with its middle
/// 1.1M off, more than a guest's cross-vCPU handoff).
const ROUNDS: u64 = 1024;
static PING: AtomicU64 = AtomicU64::new(0);
static PONG: AtomicU64 = AtomicU64::new(0);
static PONG_TSC: AtomicU64 = AtomicU64::new(0);
/// One measurement at a time (the ping-pong cells are shared).
static LOCK: spin::Mutex<()> = spin::Mutex::new(());

/// A measured offset.
#[derive(Debug, Clone, Copy)]
pub struct Offset {
    /// AP TSC minus boot CPU TSC, in ticks.
    pub offset: i64,
    /// Half the width of the window the offset lies in.
    pub error: u64,
    /// The APIC ID the AP's readings came from.
    pub apic_id: u32,
}

/// The TSC, ordered after the loads before it (LFENCE).
fn tsc_now() -> u64 {
    // SAFETY: LFENCE only orders; RDTSC has no side effects.
    unsafe { core::arch::asm!("lfence", options(nomem, nostack, preserves_flags)) };
    crate::time::host_tsc::read_raw()
}

/// Runs on the AP: for each round, wait for the boot CPU's ping, read the
/// TSC, answer with it. Returns the AP's APIC ID (`u64::MAX`: a ping never
/// came).
fn responder(rounds: u64) -> u64 {
    for round in 1..=rounds {
        let mut spins = 0u64;
        while PING.load(Ordering::Acquire) != round {
            spins += 1;
            if spins > 1 << 32 {
                return u64::MAX;
            }
            core::hint::spin_loop();
        }
        let t = tsc_now();
        PONG_TSC.store(t, Ordering::Relaxed);
        PONG.store(round, Ordering::Release);
    }
    u64::from(crate::arch::lapic::id())
}

/// Measures CPU `index`'s TSC offset to the calling CPU (the boot CPU) and
/// records it in the AP's per-CPU block.
pub fn measure(index: usize) -> Result<Offset, &'static str> {
    let cpu = super::percpu::get(index).ok_or("no such CPU")?;
    let _one = LOCK.lock();
    PING.store(0, Ordering::SeqCst);
    PONG.store(0, Ordering::SeqCst);
    let ticket = super::mailbox::post(index, responder, ROUNDS)?;
    let (mut lo, mut hi) = (i64::MIN, i64::MAX);
    for round in 1..=ROUNDS {
        let t0 = tsc_now();
        PING.store(round, Ordering::Release);
        let mut spins = 0u64;
        while PONG.load(Ordering::Acquire) != round {
            spins += 1;
            if spins > 1 << 32 {
                return Err("the AP stopped answering");
            }
            core::hint::spin_loop();
        }
        let t1 = tsc_now();
        let ta = PONG_TSC.load(Ordering::Relaxed);
        lo = lo.max(ta.wrapping_sub(t1) as i64);
        hi = hi.min(ta.wrapping_sub(t0) as i64);
    }
    let apic_id = ticket.wait()?;
    if lo > hi {
        return Err("no TSC offset fits every round (empty window)");
    }
    let offset = lo / 2 + hi / 2;
    let error = (hi.wrapping_sub(lo) as u64) / 2;
    record(cpu, offset, error);
    Ok(Offset {
        offset,
        error,
        apic_id: apic_id as u32,
    })
}

/// Records CPU `cpu`'s measured offset and sets its compensation from it.
/// Set while no vCPU runs on `cpu` (a running vCPU's offset was programmed
/// with the old one).
pub fn record(cpu: &super::PerCpu, offset: i64, error: u64) {
    cpu.tsc_offset.store(offset, Ordering::Relaxed);
    cpu.tsc_offset_error.store(error, Ordering::Relaxed);
    let k = svm::tsc::skew::compensation(offset, error);
    cpu.tsc_compensation.store(k, Ordering::Relaxed);
}

/// At boot, on the boot CPU: every online AP's TSC is measured and
/// compensated; the results are logged.
pub fn measure_all() {
    for cpu in super::percpu::all().iter().skip(1) {
        if !cpu.online.load(Ordering::Acquire) {
            continue;
        }
        let i = cpu.index();
        match measure(i) {
            Ok(m) => log::info!(
                "smp: cpu{i}: TSC offset to cpu0 {} ticks (+/- {}), compensated by {}",
                m.offset,
                m.error,
                cpu.tsc_compensation.load(Ordering::Relaxed)
            ),
            Err(e) => log::warn!("smp: cpu{i}: TSC not measured ({e}): not compensated"),
        }
    }
}
