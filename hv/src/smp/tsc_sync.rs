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

/// Loads of a spinning wait before it gives up.
const SPINS: u64 = 1 << 32;

/// The AP's side of round `round`: waits for PING = `round`, reads the TSC
/// and publishes it plus `add` (its simulated difference) in PONG_TSC, then
/// PONG = `round`. `false`: no ping came. In assembly, as is the boot CPU's
/// side ([`ping`]): each reading is a few instructions from the load or
/// store it is ordered with, so the window is as narrow as the cross-CPU
/// latency allows (the debug kernel's atomics, calls of their own, left a
/// window +/- 700 ticks wide under QEMU TCG whose middle missed by more
/// than a guest's fastest cross-vCPU handoff, ~50 ticks). No PAUSE in the
/// waits: under TCG it leaves the CPU loop, which slows the reaction.
fn answer(round: u64, add: u64) -> bool {
    let ok: u64;
    // SAFETY: loads and stores of the ping-pong statics (aligned u64s, as
    // their atomics do), LFENCE and RDTSC; no stack.
    unsafe {
        core::arch::asm!(
            "2:",
            "cmp [{ping}], {round}",
            "je 3f",
            "dec {n}",
            "jnz 2b",
            "xor {ok:e}, {ok:e}",
            "jmp 4f",
            "3:",
            "lfence",
            "rdtsc",
            "shl rdx, 32",
            "or rax, rdx",
            "add rax, {add}",
            "mov [{tsc}], rax",
            "mov [{pong}], {round}",
            "mov {ok:e}, 1",
            "4:",
            ping = in(reg) PING.as_ptr(),
            pong = in(reg) PONG.as_ptr(),
            tsc = in(reg) PONG_TSC.as_ptr(),
            round = in(reg) round,
            add = in(reg) add,
            n = inout(reg) SPINS => _,
            ok = out(reg) ok,
            out("rax") _,
            out("rdx") _,
            options(nostack),
        );
    }
    ok != 0
}

/// The boot CPU's side of round `round`: reads the TSC (t0), PING =
/// `round`, waits for PONG = `round`, reads the TSC (t1). `None`: no
/// answer came.
fn ping(round: u64) -> Option<(u64, u64)> {
    let (t0, t1, ok): (u64, u64, u64);
    // SAFETY: as in `answer`.
    unsafe {
        core::arch::asm!(
            "lfence",
            "rdtsc",
            "shl rdx, 32",
            "or rax, rdx",
            "mov {t0}, rax",
            "mov [{ping}], {round}",
            "2:",
            "cmp [{pong}], {round}",
            "je 3f",
            "dec {n}",
            "jnz 2b",
            "xor {ok:e}, {ok:e}",
            "jmp 4f",
            "3:",
            "lfence",
            "rdtsc",
            "shl rdx, 32",
            "or rax, rdx",
            "mov {ok:e}, 1",
            "4:",
            ping = in(reg) PING.as_ptr(),
            pong = in(reg) PONG.as_ptr(),
            round = in(reg) round,
            n = inout(reg) SPINS => _,
            t0 = out(reg) t0,
            ok = out(reg) ok,
            out("rax") t1,
            out("rdx") _,
            options(nostack),
        );
    }
    (ok != 0).then_some((t0, t1))
}

/// Runs on the AP: answers `rounds` pings. Returns the AP's APIC ID
/// (`u64::MAX`: a ping never came).
fn responder(rounds: u64) -> u64 {
    let add = crate::time::host_tsc::simulated_here();
    for round in 1..=rounds {
        if !answer(round, add) {
            return u64::MAX;
        }
    }
    u64::from(crate::arch::lapic::id())
}

/// `rounds` pings from this CPU: the window `(lo, hi)` the answering
/// CPU's TSC minus this one's lies in (see the module docs).
fn initiate(rounds: u64) -> Result<(i64, i64), &'static str> {
    let add = crate::time::host_tsc::simulated_here();
    let (mut lo, mut hi) = (i64::MIN, i64::MAX);
    for round in 1..=rounds {
        let (t0, t1) = ping(round).ok_or("the other CPU stopped answering")?;
        let (t0, t1) = (t0.wrapping_add(add), t1.wrapping_add(add));
        let ta = PONG_TSC.load(Ordering::Relaxed);
        lo = lo.max(ta.wrapping_sub(t1) as i64);
        hi = hi.min(ta.wrapping_sub(t0) as i64);
    }
    Ok((lo, hi))
}

/// The window the AP found pinging the boot CPU ([`initiator`]).
static AP_WINDOW: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];

/// Runs on the AP: pings the boot CPU `rounds` times and leaves the window
/// in [`AP_WINDOW`]. Returns 0, or `u64::MAX` when no answer came.
fn initiator(rounds: u64) -> u64 {
    match initiate(rounds) {
        Ok((lo, hi)) => {
            AP_WINDOW[0].store(lo as u64, Ordering::Relaxed);
            AP_WINDOW[1].store(hi as u64, Ordering::Relaxed);
            0
        }
        Err(_) => u64::MAX,
    }
}

/// Measures CPU `index`'s TSC offset to the calling CPU (the boot CPU) and
/// records it in the AP's per-CPU block. Both ways: the boot CPU pings the
/// AP, then the AP the boot CPU. Each gives a window; the pinging and the
/// answering side's delays differ, so each window's middle is off by about
/// half their difference, in opposite directions: the offset is the mean
/// of the two middles (within their intersection), the error half the
/// intersection's width.
pub fn measure(index: usize) -> Result<Offset, &'static str> {
    let cpu = super::percpu::get(index).ok_or("no such CPU")?;
    let _one = LOCK.lock();
    PING.store(0, Ordering::SeqCst);
    PONG.store(0, Ordering::SeqCst);
    let ticket = super::mailbox::post(index, responder, ROUNDS)?;
    let (lo, hi) = initiate(ROUNDS)?;
    let apic_id = ticket.wait()?;
    if apic_id == u64::MAX {
        return Err("the AP missed a ping");
    }
    PING.store(0, Ordering::SeqCst);
    PONG.store(0, Ordering::SeqCst);
    let ticket = super::mailbox::post(index, initiator, ROUNDS)?;
    let add = crate::time::host_tsc::simulated_here();
    for round in 1..=ROUNDS {
        if !answer(round, add) {
            return Err("the AP stopped pinging");
        }
    }
    if ticket.wait()? != 0 {
        return Err("the AP's pings went unanswered");
    }
    // The AP's window is for the boot CPU's TSC minus the AP's: negated.
    let (ap_lo, ap_hi) = (
        AP_WINDOW[0].load(Ordering::Relaxed) as i64,
        AP_WINDOW[1].load(Ordering::Relaxed) as i64,
    );
    let (lo2, hi2) = (ap_hi.wrapping_neg(), ap_lo.wrapping_neg());
    let (lo_all, hi_all) = (lo.max(lo2), hi.min(hi2));
    if lo > hi || lo2 > hi2 || lo_all > hi_all {
        return Err("no TSC offset fits every round (empty window)");
    }
    let middle = |lo: i64, hi: i64| lo / 2 + hi / 2;
    let offset = (middle(lo, hi) / 2 + middle(lo2, hi2) / 2).clamp(lo_all, hi_all);
    let error = (hi_all.wrapping_sub(lo_all) as u64) / 2;
    record(cpu, offset, error);
    Ok(Offset {
        offset,
        error,
        apic_id: apic_id as u32,
    })
}

/// An error this small is good enough: under QEMU TCG an idle host gives
/// windows of about +/- 100 ticks, a loaded one (more runnable threads
/// than cores) +/- 600 and more.
pub const GOOD_ERROR: u64 = 500;

/// Time after which [`measure_best`] stops trying (ns): a measurement takes
/// a few ms when the two CPUs run at once, seconds when the host does not
/// co-schedule them (QEMU TCG's CPU threads on an oversubscribed host,
/// every round trip then a host time slice): retries help only the first.
const RETRY_FOR_NS: u64 = 100_000_000;

/// [`measure`] up to `tries` times, until the error is at most
/// [`GOOD_ERROR`] or [`RETRY_FOR_NS`] has passed: a window is only as
/// narrow as the fastest round trip between the two CPUs, which host load
/// can stretch for a whole measurement. The narrowest window is recorded
/// and returned.
pub fn measure_best(index: usize, tries: u32) -> Result<Offset, &'static str> {
    let start = crate::time::now_ns();
    let mut best = measure(index)?;
    for _ in 1..tries {
        if best.error <= GOOD_ERROR || crate::time::now_ns() - start > RETRY_FOR_NS {
            break;
        }
        match measure(index) {
            Ok(m) if m.error < best.error => best = m,
            _ => {}
        }
    }
    let cpu = super::percpu::get(index).ok_or("no such CPU")?;
    record(cpu, best.offset, best.error);
    Ok(best)
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
        match measure_best(i, 4) {
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
