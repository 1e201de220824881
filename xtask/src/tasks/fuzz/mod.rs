//! `cargo xtask fuzz`: the hostile-L1 fuzzer (`fuzz=` on the kernel
//! command line) on the release kernel under QEMU TCG.
//!
//! One boot runs the whole range unless QEMU dies on the way (an emulator
//! crash or hang, reported apart with the iteration it reached); then the
//! next boot goes on after it. At the end: the merged histogram, every
//! failure and mismatch line, and
//! `fuzz: <N> iterations, seed <S>: <K> hypervisor failures`.

mod report;
mod watch;

pub use report::{kind_of, parse_boot, parse_result_line, BootReport};

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::accel::Accel;
use crate::kernel::{self, Profile};
use crate::qemu::{self, Firmware, Medium, RunConfig};
use crate::verdict::Verdict;
use crate::{host_tools, workspace, Result};
use report::line_kind;
use watch::run_watched;

/// Options of `cargo xtask fuzz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FuzzArgs {
    /// `None`: a seed from the clock (printed).
    pub seed: Option<u64>,
    pub iterations: u64,
    /// Stop after this long (`None`: when the iterations are done).
    pub minutes: Option<u64>,
    /// First iteration (replays).
    pub start: u64,
}

impl Default for FuzzArgs {
    fn default() -> Self {
        Self {
            seed: None,
            iterations: DEFAULT_ITERATIONS,
            minutes: None,
            start: 0,
        }
    }
}

pub const DEFAULT_ITERATIONS: u64 = 10_000;
/// Iterations the guest reports progress at (`PROGRESS_EVERY` in the guest).
const PROGRESS_EVERY: u64 = 100;
/// The slowest rate a healthy run goes at (iterations per second under
/// TCG on a small shared machine), for the hang timeout.
const SLOWEST_RATE: u64 = 100;
/// Boot and margin on top of the expected run time.
const MARGIN: Duration = Duration::from_secs(60);
/// A console silent this long is a hang (L1 prints progress every 100
/// iterations, a fraction of a second; a boot prints within seconds).
const IDLE: Duration = Duration::from_secs(60);

/// An emulator crash or hang: QEMU ended without the kernel's verdict.
#[derive(Debug)]
struct Crash {
    verdict: Verdict,
    /// Iteration range it happened in.
    from: u64,
    exact: bool,
    qemu_message: String,
}

pub fn fuzz(args: &FuzzArgs) -> Result<bool> {
    let seed = args.seed.unwrap_or_else(clock_seed);
    println!(
        "fuzz: seed {seed}, iterations {}..{}{} (replay: cargo xtask fuzz --seed {seed} --start {} --iterations {})",
        args.start,
        args.start + args.iterations,
        args.minutes.map(|m| format!(", at most {m} min")).unwrap_or_default(),
        args.start,
        args.iterations
    );
    let kernel = kernel::build_all(Profile::Release)?;
    host_tools::require(&[host_tools::QEMU])?;
    let started = Instant::now();
    let deadline = args.minutes.map(|m| started + Duration::from_secs(m * 60));
    let end = args.start + args.iterations;
    let mut next = args.start;
    let mut total = BootReport::default();
    let mut iterations = 0;
    let mut k = 0;
    let mut crashes: Vec<Crash> = Vec::new();
    while next < end {
        let left = match deadline {
            Some(d) if Instant::now() >= d => break,
            Some(d) => Some(d - Instant::now()),
            None => None,
        };
        let minutes = left.map_or(0, |l| l.as_secs().div_ceil(60).max(1));
        let count = end - next;
        let cmdline = vec![format!("fuzz={seed},{count},{minutes},{next}")];
        let expected = Duration::from_secs(count / SLOWEST_RATE);
        let timeout = left.map_or(expected, |l| l.min(expected)) + MARGIN;
        let config = RunConfig {
            medium: Medium::Direct {
                kernel: kernel.clone(),
                cmdline,
            },
            firmware: Firmware::Bios,
            accel: Accel::Tcg,
            gdb: false,
            debugcon: workspace::target_dir().join("qemu-debugcon.log"),
            icount: false,
            smp: qemu::DEFAULT_SMP,
        };
        let outcome = run_watched(qemu::command(&config)?, timeout, IDLE)?;
        let verdict = Verdict::of(&outcome);
        let boot = parse_boot(&outcome.serial);
        merge(&mut total, &boot);
        let panicked = verdict == Verdict::KernelFailure
            && ["\npanic", "FATAL:"]
                .iter()
                .any(|p| outcome.serial.contains(p));
        match (boot.result, verdict) {
            (Some((n, _, failures)), Verdict::Success | Verdict::KernelFailure) => {
                iterations += n;
                k += failures;
                break;
            }
            _ if panicked => {
                // A hypervisor panic: a failure; go on after its range.
                let from = boot.last_iteration.unwrap_or(next);
                let line = format!(
                    "fuzz: FAILURE seed={seed} iter={from}: the hypervisor panicked (in iterations {from}..{}; replay: cargo xtask fuzz --seed {seed} --start {from} --iterations {PROGRESS_EVERY})",
                    from + PROGRESS_EVERY
                );
                println!("{line}");
                total.failures.push(line);
                k += 1 + (boot.failures.len() + boot.mismatches.len()) as u64;
                iterations += from - next + 1;
                next = from + PROGRESS_EVERY.min(count);
            }
            _ => {
                // QEMU died or hung: its failure and mismatch lines still
                // count (a lower bound: L1 prints at most 200 a VM); go on
                // after the iteration it reached.
                k += (boot.failures.len() + boot.mismatches.len()) as u64;
                let (from, exact) = match boot.last_iteration {
                    Some(i) if count <= PROGRESS_EVERY => (i, true),
                    Some(i) => (i, false),
                    None => (next, count == 1),
                };
                let message = outcome
                    .stderr
                    .lines()
                    .find(|l| l.contains("qemu"))
                    .unwrap_or("")
                    .to_string();
                iterations += from - next + 1;
                crashes.push(Crash {
                    verdict,
                    from,
                    exact,
                    qemu_message: message,
                });
                next = if exact {
                    from + 1
                } else {
                    from + PROGRESS_EVERY
                };
            }
        }
    }
    summarize(seed, &total, &crashes);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "fuzz: {iterations} iterations in {secs:.0} s ({:.0} per second, boots included)",
        iterations as f64 / secs.max(0.001)
    );
    println!("fuzz: {iterations} iterations, seed {seed}: {k} hypervisor failures");
    Ok(k == 0 && crashes.is_empty())
}

fn merge(total: &mut BootReport, boot: &BootReport) {
    total.failures.extend(boot.failures.iter().cloned());
    total.mismatches.extend(boot.mismatches.iter().cloned());
    total.deviations.extend(boot.deviations.iter().cloned());
    total.deviation_count += boot.deviation_count;
    total.notes.extend(boot.notes.iter().cloned());
    total.cpu_refusals += boot.cpu_refusals;
    if boot.result.is_some() {
        for (kind, n) in &boot.kinds {
            *total.kinds.entry(kind.clone()).or_default() += n;
        }
    } else {
        // The kernel did not get to its counts: the lines printed are a
        // lower bound.
        let lines = boot
            .mismatches
            .iter()
            .chain(&boot.deviations)
            .chain(&boot.notes);
        for kind in lines.filter_map(|l| line_kind(l)) {
            *total.kinds.entry(kind.to_string()).or_default() += 1;
        }
    }
    for (name, n) in &boot.histogram {
        *total.histogram.entry(name.clone()).or_default() += n;
    }
}

fn summarize(seed: u64, total: &BootReport, crashes: &[Crash]) {
    println!("\nfuzz: ===== summary, seed {seed} =====");
    println!("fuzz: histogram of what L1 saw after its VMRUNs (boots that finished):");
    let mut hist: Vec<(&String, &u64)> = total.histogram.iter().collect();
    hist.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (name, n) in hist {
        println!("fuzz:   {n:>10}  {name}");
    }
    let mut first: BTreeMap<&str, &String> = BTreeMap::new();
    let lines = total
        .mismatches
        .iter()
        .chain(&total.deviations)
        .chain(&total.notes);
    for line in lines {
        if let Some(kind) = line_kind(line) {
            first.entry(kind).or_insert(line);
        }
    }
    let mut kinds: Vec<(u64, &str)> = total
        .kinds
        .iter()
        .map(|(k, n)| (*n, first.get(k.as_str()).map_or(k.as_str(), |l| l.as_str())))
        .collect();
    kinds.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    println!("fuzz: L1's reports by kind (count, first reproducer line):");
    for (n, line) in kinds {
        println!("  {n:>8}  {line}");
    }
    println!(
        "fuzz: hypervisor failures (L0 stopped the VM, leaks, panics): {}",
        total.failures.len()
    );
    let mut stops: BTreeMap<String, (u64, &String)> = BTreeMap::new();
    for line in &total.failures {
        let what = line.split_once(": ").map_or(line.as_str(), |(_, w)| w);
        let what = what.split(" (replay").next().unwrap_or(what);
        stops.entry(kind_of(what)).or_insert((0, line)).0 += 1;
    }
    for (n, line) in stops.values() {
        println!("  {n:>6}  {line}");
    }
    println!(
        "fuzz: oracle mismatch lines printed by L1: {}",
        total.mismatches.len()
    );
    println!(
        "fuzz: emulator deviations (QEMU decided before L0; docs/qemu-tcg.md; not counted): {}",
        total.deviation_count.max(total.deviations.len() as u64)
    );
    println!(
        "fuzz: vmcb12s the CPU refused after L0's checks accepted them: {}",
        total.cpu_refusals
    );
    println!(
        "fuzz: NOTE lines (legal vmcb12 refused): {}",
        total.notes.len()
    );
    println!(
        "fuzz: emulator crashes or hangs (QEMU died; not counted in K): {}",
        crashes.len()
    );
    for c in crashes {
        let at = match c.exact {
            true => format!("at iteration {}", c.from),
            false => format!("in iterations {}..{}", c.from, c.from + PROGRESS_EVERY),
        };
        let iterations = if c.exact { 1 } else { PROGRESS_EVERY };
        println!(
            "  {} {at} [{}] (replay: cargo xtask fuzz --seed {seed} --start {} --iterations {iterations})",
            c.verdict, c.qemu_message, c.from
        );
    }
}

fn clock_seed() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    now.as_secs() ^ u64::from(now.subsec_nanos()) ^ u64::from(std::process::id())
}
