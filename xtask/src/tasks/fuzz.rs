//! `cargo xtask fuzz`: the hostile-L1 fuzzer (`fuzz=` on the kernel
//! command line) on the release kernel under QEMU TCG.
//!
//! One boot runs the whole range unless QEMU dies on the way (an emulator
//! crash or hang, reported apart with the iteration it reached); then the
//! next boot goes on after it. At the end: the merged histogram, every
//! failure and mismatch line, and
//! `fuzz: <N> iterations, seed <S>: <K> hypervisor failures`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::accel::Accel;
use crate::kernel::{self, Profile};
use crate::qemu::{self, Firmware, Medium, RunConfig};
use crate::verdict::Verdict;
use crate::{bail, host_tools, process, runner, workspace, Result};

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

/// What one boot's console showed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BootReport {
    /// The kernel's final line: (iterations, seed, hypervisor failures).
    pub result: Option<(u64, u64, u64)>,
    /// `fuzz: FAILURE ...` lines (L0 stopped the VM, leaks).
    pub failures: Vec<String>,
    /// L1's `fuzz: MISMATCH ...` lines.
    pub mismatches: Vec<String>,
    /// L1's `fuzz: DEVIATION ...` lines.
    pub deviations: Vec<String>,
    /// The merged histogram, name → count.
    pub histogram: BTreeMap<String, u64>,
    /// The last iteration L1 reported starting.
    pub last_iteration: Option<u64>,
    /// Count of `fuzz: N oracle mismatches, M emulator deviations` figures.
    pub deviation_count: u64,
    /// L1's `fuzz: NOTE ...` lines (a vmcb12 the oracle finds legal ended
    /// in VMEXIT_INVALID).
    pub notes: Vec<String>,
    /// L0's warnings that the CPU refused a vmcb12 its checks accepted.
    pub cpu_refusals: u64,
    /// The kernel's `fuzz: kind <hash> <n>` lines: exact counts of each
    /// kind of L1 report (the reproducer lines carry `kind=<hash>`).
    pub kinds: BTreeMap<String, u64>,
}

/// A message without its numbers (every run of `[0-9a-fA-Fx]` that starts
/// with a digit dropped), to group lines that differ only in them.
pub fn kind_of(message: &str) -> String {
    let mut out = String::new();
    let mut chars = message.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            while chars
                .next_if(|c| c.is_ascii_hexdigit() || *c == 'x')
                .is_some()
            {}
        } else {
            out.push(c);
        }
    }
    out
}

/// The `kind=<hash>` of a MISMATCH/DEVIATION/NOTE line.
fn line_kind(line: &str) -> Option<&str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("kind="))
}

/// Parses `fuzz: <N> iterations, seed <S>: <K> hypervisor failures`.
pub fn parse_result_line(line: &str) -> Option<(u64, u64, u64)> {
    let rest = strip_guest(line).strip_prefix("fuzz: ")?;
    let (n, rest) = rest.split_once(" iterations, seed ")?;
    let (s, rest) = rest.split_once(": ")?;
    let k = rest.strip_suffix(" hypervisor failures")?;
    Some((n.parse().ok()?, s.parse().ok()?, k.parse().ok()?))
}

/// The line without a `[guest fuzz] ` console prefix.
fn strip_guest(line: &str) -> &str {
    let line = line.trim_end_matches(['\r', '\n']);
    match line.strip_prefix("[guest ") {
        Some(rest) => rest.split_once("] ").map_or(line, |(_, l)| l),
        None => line,
    }
}

/// Reads one boot's serial output.
pub fn parse_boot(serial: &str) -> BootReport {
    let mut r = BootReport::default();
    let mut in_histogram = false;
    for raw in serial.lines() {
        let line = strip_guest(raw);
        if line.contains("the CPU refused a vmcb12 the checks accepted") {
            r.cpu_refusals += 1;
        }
        if let Some(result) = parse_result_line(line) {
            r.result = Some(result);
        }
        let Some(body) = line.strip_prefix("fuzz: ") else {
            in_histogram = false;
            continue;
        };
        if body.starts_with("histogram") {
            in_histogram = true;
            continue;
        }
        if in_histogram {
            if let Some((n, name)) = body.trim_start().split_once("  ") {
                if let Ok(n) = n.trim().parse::<u64>() {
                    *r.histogram.entry(name.trim().to_string()).or_default() += n;
                    continue;
                }
            }
            in_histogram = false;
        }
        if body.starts_with("FAILURE ") {
            r.failures.push(line.to_string());
        } else if body.starts_with("MISMATCH ") {
            r.mismatches.push(line.to_string());
        } else if body.starts_with("DEVIATION ") {
            r.deviations.push(line.to_string());
        } else if body.starts_with("NOTE ") {
            r.notes.push(line.to_string());
        } else if let Some(rest) = body.strip_prefix("kind ") {
            if let Some((hash, n)) = rest.split_once(' ') {
                *r.kinds.entry(hash.to_string()).or_default() += n.parse().unwrap_or(0);
            }
        } else if let Some(rest) = body.strip_prefix("progress ") {
            r.last_iteration = rest
                .split_whitespace()
                .find_map(|w| w.strip_prefix("iter="))
                .and_then(|i| i.parse().ok());
        } else if let Some((_, rest)) = body.split_once(" oracle mismatches, ") {
            r.deviation_count = rest
                .split_once(' ')
                .and_then(|(d, _)| d.parse().ok())
                .unwrap_or(0);
        }
    }
    r
}

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

/// Runs QEMU like [`runner::run`] with the console echoed, killing it at
/// `timeout` or when its console stays silent for `idle` (a hang).
fn run_watched(mut cmd: Command, timeout: Duration, idle: Duration) -> Result<runner::Outcome> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: prctl is async-signal-safe and touches only the new child: the
    // kernel kills QEMU if xtask dies first.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    process::echo(&cmd);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => bail!("cannot start {}: {e}", cmd.get_program().to_string_lossy()),
    };
    let last = Arc::new(Mutex::new(Instant::now()));
    let pump = |mut pipe: Box<dyn Read + Send>, mut sink: Box<dyn Write + Send>| {
        let last = Arc::clone(&last);
        std::thread::spawn(move || {
            let (mut all, mut buf) = (Vec::new(), [0u8; 4096]);
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                all.extend_from_slice(&buf[..n]);
                // The console is best effort.
                let _ = sink.write_all(&buf[..n]).and_then(|()| sink.flush());
                *last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
            }
            all
        })
    };
    let out = pump(
        Box::new(child.stdout.take().expect("piped")),
        Box::new(std::io::stdout()),
    );
    let err = pump(
        Box::new(child.stderr.take().expect("piped")),
        Box::new(std::io::stderr()),
    );
    let started = Instant::now();
    let (status, timed_out) = loop {
        if let Some(status) = child.try_wait()? {
            break (Some(status), None);
        }
        let silent = last.lock().unwrap_or_else(|e| e.into_inner()).elapsed();
        let waited = started.elapsed();
        if waited >= timeout || silent >= idle {
            // Kill fails only if QEMU exited meanwhile; wait reaps it anyway.
            let _ = child.kill();
            child.wait()?;
            break (None, Some(if waited >= timeout { timeout } else { silent }));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = |h: std::thread::JoinHandle<Vec<u8>>| {
        String::from_utf8_lossy(&h.join().unwrap_or_default()).into_owned()
    };
    Ok(runner::Outcome {
        status: status.and_then(|s| s.code()),
        signal: status.and_then(|s| s.signal()),
        timed_out,
        serial: text(out),
        stderr: text(err),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_result_line() {
        assert_eq!(
            parse_result_line("fuzz: 20000 iterations, seed 7: 3 hypervisor failures\r"),
            Some((20000, 7, 3))
        );
        assert_eq!(
            parse_result_line("fuzz: 1 iterations, seed x: 0 hypervisor failures"),
            None
        );
        assert_eq!(parse_result_line("fuzz: 20000 iterations in 3 ms"), None);
    }

    #[test]
    fn parses_a_boot() {
        let serial = "\
fuzz: seed 1 iterations 0..300
[guest fuzz] fuzz: progress seed=1 iter=100
[guest fuzz] fuzz: MISMATCH kind=00000000000000ab seed=1 iter=48 mode=vmmcall fields=event_inj action=none: EVENTINJ still valid
[guest fuzz] fuzz: DEVIATION seed=1 iter=60 mode=bytes fields=cr0 action=vmrun_bad: #GP
[guest fuzz] fuzz: progress seed=1 iter=200
[WARN ] vm fuzz: the CPU refused a vmcb12 the checks accepted; VMEXIT_INVALID for L1
[guest fuzz] fuzz: NOTE seed=1 iter=201 mode=bytes fields=cr0 action=none: legal vmcb12 refused
fuzz: FAILURE seed=1 iter=210: L0 stopped the VM while L2 ran: nested page fault (replay: ...)
fuzz: histogram of what L1 saw after its VMRUNs:
fuzz:          120  Hlt (0x78)
fuzz:            7  VMEXIT_INVALID
fuzz: kind 00000000000000ab 12
fuzz: kind 00000000000000cd 3
fuzz: 1 oracle mismatches, 4 emulator deviations (not counted), 2 legal-looking vmcb12s ended in VMEXIT_INVALID
fuzz: 300 iterations, seed 1: 2 hypervisor failures
";
        let r = parse_boot(serial);
        assert_eq!(r.result, Some((300, 1, 2)));
        assert_eq!(r.last_iteration, Some(200));
        assert_eq!(r.mismatches.len(), 1);
        assert!(r.mismatches[0].starts_with("fuzz: MISMATCH kind=00000000000000ab seed=1 iter=48"));
        assert_eq!(r.deviations.len(), 1);
        assert_eq!(r.failures.len(), 1);
        assert_eq!(r.deviation_count, 4);
        assert_eq!(r.histogram.get("Hlt (0x78)"), Some(&120));
        assert_eq!(r.histogram.get("VMEXIT_INVALID"), Some(&7));
        assert_eq!(r.histogram.len(), 2);
        assert_eq!((r.notes.len(), r.cpu_refusals), (1, 1));
        assert_eq!(r.kinds.get("00000000000000ab"), Some(&12));
        assert_eq!(r.kinds.get("00000000000000cd"), Some(&3));
        assert_eq!(line_kind(&r.mismatches[0]), Some("00000000000000ab"));
        assert_eq!(kind_of("VMRUN 0x1000 ran, exit 0x81"), "VMRUN  ran, exit ");
    }

    #[test]
    fn a_crashed_boot_has_no_result() {
        let r =
            parse_boot("[guest fuzz] fuzz: progress seed=1 iter=1700\nqemu: fatal: invalid tss\n");
        assert_eq!(r.result, None);
        assert_eq!(r.last_iteration, Some(1700));
    }
}
