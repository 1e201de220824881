//! `smp::` self-tests: every CPU runs the hypervisor. They run on the host
//! (no guest): each sends jobs to the application processors through their
//! mailboxes (`smp::mailbox`) and checks what the APs report.

use crate::arch::cpu::rdmsr;
use crate::smp::{mailbox, percpu};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use svm::msr::{EFER, EFER_SVME, VM_HSAVE_PA};

/// A host-side self-test.
#[derive(Clone, Copy, Debug)]
pub struct HostCase {
    /// `smp::<name>`.
    pub name: &'static str,
    /// Runs the test on the boot CPU.
    pub run: fn() -> Result<(), String>,
}

/// The `smp::` tests.
pub const CASES: [HostCase; 2] = [
    HostCase {
        name: "smp::every_cpu_runs",
        run: every_cpu_runs,
    },
    HostCase {
        name: "smp::ap_host_tsc",
        run: ap_host_tsc,
    },
];

/// What one CPU reports about itself (filled by [`report_job`] there).
#[derive(Debug, Clone, Copy, Default)]
struct Report {
    apic_id: u64,
    efer: u64,
    hsave_msr: u64,
    hsave_owned: u64,
}

static REPORTS: [[AtomicU64; 4]; percpu::MAX_CPUS] =
    [const { [const { AtomicU64::new(0) }; 4] }; percpu::MAX_CPUS];

/// Runs on the target CPU: records its APIC ID (as its local APIC says),
/// EFER, VM_HSAVE_PA (as the CPU holds it) and the host save area its
/// per-CPU block owns (without enabling SVM: that is the CPU's bring-up's
/// job). Returns the APIC ID.
fn report_job(_: u64) -> u64 {
    let me = crate::smp::this();
    let slot = &REPORTS[me.index()];
    let apic_id = u64::from(crate::arch::lapic::id());
    // SAFETY: EFER and VM_HSAVE_PA exist on an SVM CPU (and read 0 elsewhere
    // under TCG).
    let (efer, hsave) = unsafe { (rdmsr(EFER), rdmsr(VM_HSAVE_PA)) };
    let owned = me
        .host
        .get()
        .and_then(|h| h.as_ref().ok())
        .map_or(0, |h| h.hsave_pa());
    for (cell, value) in slot.iter().zip([apic_id, efer, hsave, owned]) {
        cell.store(value, Ordering::Relaxed);
    }
    apic_id
}

fn report_of(index: usize) -> Report {
    let [a, e, h, o] = &REPORTS[index];
    Report {
        apic_id: a.load(Ordering::Relaxed),
        efer: e.load(Ordering::Relaxed),
        hsave_msr: h.load(Ordering::Relaxed),
        hsave_owned: o.load(Ordering::Relaxed),
    }
}

/// Every CPU the firmware reported is online, runs a job sent to it and
/// answers from its own local APIC, with SVM enabled and a host save area
/// of its own (distinct from every other CPU's).
fn every_cpu_runs() -> Result<(), String> {
    let cpus = percpu::all();
    if let Some(off) = cpus.iter().find(|c| !c.online.load(Ordering::Acquire)) {
        return Err(format!("cpu{} never came online", off.index()));
    }
    // The boot CPU reports too, directly.
    report_job(0);
    let mut reports: Vec<Report> = alloc::vec![report_of(0)];
    for cpu in cpus.iter().skip(1) {
        let i = cpu.index();
        let answer = mailbox::run_on(i, report_job, 0).map_err(|e| format!("cpu{i}: {e}"))?;
        let r = report_of(i);
        let expected = u64::from(cpu.apic_id.load(Ordering::Relaxed));
        if answer != expected || r.apic_id != expected {
            return Err(format!(
                "cpu{i}: the job ran on APIC ID {answer}, not on the CPU's {expected}"
            ));
        }
        reports.push(r);
    }
    for (i, r) in reports.iter().enumerate() {
        log::info!(
            "smp: cpu{i}: apic id {}, EFER {:#x}, VM_HSAVE_PA {:#x}",
            r.apic_id,
            r.efer,
            r.hsave_msr
        );
        if r.efer & EFER_SVME == 0 {
            return Err(format!("cpu{i}: EFER.SVME is clear (EFER {:#x})", r.efer));
        }
        if r.hsave_msr == 0 || r.hsave_msr != r.hsave_owned {
            return Err(format!(
                "cpu{i}: VM_HSAVE_PA {:#x} is not its own host save area {:#x}",
                r.hsave_msr, r.hsave_owned
            ));
        }
        if let Some(j) = reports[..i]
            .iter()
            .position(|o| o.hsave_msr == r.hsave_msr)
        {
            return Err(format!(
                "cpu{i} and cpu{j} share the host save area {:#x}",
                r.hsave_msr
            ));
        }
    }
    if reports.len() < 2 {
        log::warn!("smp::every_cpu_runs: one CPU only (QEMU -smp 1): nothing to compare");
    }
    Ok(())
}

/// Ping-pong rounds per AP for the TSC offset.
const TSC_ROUNDS: u64 = 64;
static PING: AtomicU64 = AtomicU64::new(0);
static PONG: AtomicU64 = AtomicU64::new(0);
static PONG_TSC: AtomicU64 = AtomicU64::new(0);

/// The TSC, ordered after the loads before it (LFENCE).
fn tsc_now() -> u64 {
    // SAFETY: LFENCE only orders; RDTSC has no side effects.
    unsafe { core::arch::asm!("lfence", options(nomem, nostack, preserves_flags)) };
    crate::time::host_tsc::read_raw()
}

/// Runs on the AP: for each round, wait for the boot CPU's ping, read the
/// TSC, answer with it. Returns the AP's APIC ID.
fn tsc_responder(rounds: u64) -> u64 {
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

/// Each AP's TSC against the boot CPU's: the boot CPU reads t0, pings, the
/// AP reads tA and answers, the boot CPU reads t1. If the AP's TSC is the
/// boot CPU's plus `off`, then t0 <= tA - off <= t1 in every round, so
/// `off` lies in [max(tA - t1), min(tA - t0)] over all rounds: an empty
/// window means a reading was not taken when and where it claims. The
/// window's middle is recorded in the AP's per-CPU block (ISSUE12 item 3
/// compensates with it) and logged with its half-width.
fn ap_host_tsc() -> Result<(), String> {
    for cpu in percpu::all().iter().skip(1) {
        let i = cpu.index();
        PING.store(0, Ordering::SeqCst);
        PONG.store(0, Ordering::SeqCst);
        let ticket =
            mailbox::post(i, tsc_responder, TSC_ROUNDS).map_err(|e| format!("cpu{i}: {e}"))?;
        let (mut lo, mut hi) = (i64::MIN, i64::MAX);
        for round in 1..=TSC_ROUNDS {
            let t0 = tsc_now();
            PING.store(round, Ordering::Release);
            let mut spins = 0u64;
            while PONG.load(Ordering::Acquire) != round {
                spins += 1;
                if spins > 1 << 32 {
                    return Err(format!("cpu{i}: no answer in round {round}"));
                }
                core::hint::spin_loop();
            }
            let t1 = tsc_now();
            let ta = PONG_TSC.load(Ordering::Relaxed);
            lo = lo.max(ta.wrapping_sub(t1) as i64);
            hi = hi.min(ta.wrapping_sub(t0) as i64);
        }
        let apic_id = ticket.wait().map_err(|e| format!("cpu{i}: {e}"))?;
        if apic_id != u64::from(cpu.apic_id.load(Ordering::Relaxed)) {
            return Err(format!(
                "cpu{i}: the readings came from APIC ID {apic_id:#x}, not the AP's"
            ));
        }
        if lo > hi {
            return Err(format!(
                "cpu{i}: no TSC offset fits every round (window [{lo}, {hi}] is empty)"
            ));
        }
        let offset = lo / 2 + hi / 2;
        let error = (hi.wrapping_sub(lo) as u64) / 2;
        cpu.tsc_offset.store(offset, Ordering::Relaxed);
        cpu.tsc_offset_error.store(error, Ordering::Relaxed);
        log::info!("smp: cpu{i}: TSC offset to cpu0 {offset} ticks (+/- {error})");
    }
    Ok(())
}
