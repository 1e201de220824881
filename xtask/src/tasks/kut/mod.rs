//! `cargo xtask kut`: kvm-unit-tests' SVM suite, one VM per subtest, under
//! our hypervisor and (with `--compare`) under bare QEMU TCG, side by side.
//!
//! The subtests come from the built tree's sources (`names`), each run ends
//! in a verdict (`verdict`), the results are printed as a table (`table`);
//! `command` holds the two QEMU command lines.

pub mod command;
pub mod cpu_model;
pub mod names;

pub mod table;
pub mod verdict;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use self::command::{Guest, Ours};
use self::table::Row;
use self::verdict::{End, Verdict};
use crate::kernel::{self, Profile};
use crate::{bail, guest, host_tools, runner, workspace, Result};
use regex::Regex;

/// The environment variable naming a built kvm-unit-tests tree.
pub const KUT_DIR_ENV: &str = "KUT_DIR";

/// The images and the sources that name their subtests.
pub const SUITES: [(&str, &str); 2] = [
    ("x86/svm.flat", "x86/svm_tests.c"),
    ("x86/svm_npt.flat", "x86/svm_npt.c"),
];

/// Subtests left out unless `--only`'s text names them: they can hang QEMU
/// TCG itself (reg_corruption waits for a timer interrupt to land on one
/// exact instruction).
pub const LEFT_OUT: [&str; 1] = ["reg_corruption"];

/// How to get a tree, for the message when there is none.
pub const HOW_TO_GET: &str = "\
get one with:
  git clone https://gitlab.com/kvm-unit-tests/kvm-unit-tests
  cd kvm-unit-tests && ./configure --arch=x86_64 && make x86/svm.flat x86/svm_npt.flat
then: KUT_DIR=$PWD cargo xtask kut (or cargo xtask kut --kut-dir DIR)";

/// At most this many QEMUs at a time (and no more than the host's cores).
const MAX_JOBS: usize = 2;

/// The hypervisor's line with its exit counts for the guest run, shown in
/// the table when it prints one: `exits: ...` at the start of a line.
pub const EXITS_PREFIX: &str = "exits:";

/// Options of `cargo xtask kut`.
#[derive(Debug, Clone, PartialEq)]
pub struct KutArgs {
    /// `--kut-dir`; else `KUT_DIR`.
    pub kut_dir: Option<PathBuf>,
    /// `--only REGEX` (checked when parsed).
    pub only: Option<String>,
    pub compare: bool,
    /// `--list`: print the selected subtests, run none.
    pub list: bool,
    pub timeout: Duration,
    pub smp: u32,
    /// `--host-cpus N`: QEMU's CPU count under ours (`None`: --smp, at
    /// least [`qemu::DEFAULT_SMP`]).
    pub host_cpus: Option<u32>,
    pub mem_mib: u32,
    pub verbose: bool,
    /// The optimized kernel: the default (`--debug` turns it off).
    pub release: bool,
}

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
pub const DEFAULT_SMP: u32 = 1;
pub const DEFAULT_MEM_MIB: u32 = 256;

impl Default for KutArgs {
    fn default() -> Self {
        KutArgs {
            kut_dir: None,
            only: None,
            compare: false,
            list: false,
            timeout: DEFAULT_TIMEOUT,
            smp: DEFAULT_SMP,
            host_cpus: None,
            mem_mib: DEFAULT_MEM_MIB,
            verbose: false,
            release: true,
        }
    }
}

/// One subtest of one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subtest {
    pub flat: PathBuf,
    pub name: String,
    /// Features its CPU model leaves out ([`cpu_model`]).
    pub cpu_removed: Vec<String>,
}

/// Which L0 a run used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    Ours,
    Qemu,
}

/// How one run went.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub verdict: Verdict,
    /// Why the verdict, when the output does not say.
    pub why: Option<String>,
    pub time: Duration,
    /// The guest's COM1 (and, under ours, the hypervisor's console).
    pub output: String,
    /// QEMU's stderr.
    pub messages: String,
}

/// Runs the command; `Ok(false)` when the failure was already reported (a
/// run under ours that crashed or timed out, or nothing to run).
pub fn kut(args: &KutArgs) -> Result<bool> {
    let only = match &args.only {
        Some(pattern) => Some(match Regex::new(pattern) {
            Ok(regex) => (pattern.as_str(), regex),
            Err(why) => crate::usage!("--only {pattern}: {why}"),
        }),
        None => None,
    };
    // The hypervisor's limits on a guest's RAM hold for the bare column too,
    // so that the two columns run the same machine.
    if let Err(expected) = guest::parse_mem_mib(&args.mem_mib.to_string()) {
        crate::usage!("--mem {}: expected {expected}", args.mem_mib);
    }
    let Some(dir) = tree_dir(args.kut_dir.clone()) else {
        return Ok(nothing_ran(&format!(
            "no kvm-unit-tests tree (set {KUT_DIR_ENV} or pass --kut-dir)"
        )));
    };
    let subtests = match find_subtests(&dir)? {
        Ok(subtests) => subtests,
        Err(why) => return Ok(nothing_ran(&why)),
    };
    let (selected, left_out) = select(subtests, only.as_ref().map(|(p, r)| (*p, r)));
    if selected.is_empty() {
        eprintln!("xtask: kut: nothing ran: --only selects no subtest");
        return Ok(false);
    }
    if args.list {
        for subtest in &selected {
            println!("{}", subtest.name);
        }
        return Ok(true);
    }

    host_tools::require(&[host_tools::QEMU])?;
    let debugcon_dir = workspace::target_dir().join("kut");
    std::fs::create_dir_all(&debugcon_dir)?;
    // Built once: every "ours" run boots this kernel.
    let profile = Profile::from_release_flag(args.release);
    let ours = Ours {
        kernel: kernel::build_all(profile)?,
        debugcon_dir: debugcon_dir.clone(),
    };
    let jobs = jobs();
    eprintln!(
        "xtask: kut: {} subtests of {}, -smp {}, {} MiB, timeout {} s, {jobs} QEMU{} at a time{}",
        selected.len(),
        dir.display(),
        args.smp,
        args.mem_mib,
        args.timeout.as_secs_f64(),
        if jobs == 1 { "" } else { "s" },
        if left_out.is_empty() {
            String::new()
        } else {
            format!(
                "; left out: {} (can hang TCG; name it in --only to run it)",
                left_out.join(", ")
            )
        }
    );

    let started = Instant::now();
    let width = table::name_width(selected.iter().map(|s| s.name.as_str()));
    println!("{}", table::header(width, args.compare));
    let rows = run_pairs(&selected, args, false, &ours, jobs, |index, ours, qemu| {
        println!("{}", table::row(&row(&selected[index], ours, qemu), width));
    });
    let elapsed = started.elapsed();

    let table_rows: Vec<Row> = rows
        .iter()
        .zip(&selected)
        .map(|((ours, qemu), subtest)| row(subtest, ours, qemu.as_ref()))
        .collect();
    for line in table::totals(&table_rows) {
        println!("{line}");
    }
    println!("wall time: {:.1} s", elapsed.as_secs_f64());
    if args.verbose {
        print_failures(&selected, &rows);
    }
    let held_up = table_rows.iter().all(|r| r.ours.is_from_guest());
    if !held_up {
        eprintln!("xtask: kut: FAILED: a subtest crashed or timed out under our hypervisor");
    }
    Ok(held_up)
}

/// The kvm-unit-tests tree: `--kut-dir` when given, else `KUT_DIR` (set
/// and not empty).
pub fn tree_dir(kut_dir: Option<PathBuf>) -> Option<PathBuf> {
    kut_dir.or_else(|| {
        std::env::var_os(KUT_DIR_ENV)
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
    })
}

/// Says why nothing ran and how to get a tree; the run fails (exit 1), as
/// `run` does when nothing ran, so a caller never mistakes it for a pass.
fn nothing_ran(why: &str) -> bool {
    eprintln!("xtask: kut: {why}");
    eprintln!("{HOW_TO_GET}");
    eprintln!("xtask: kut: skipped, nothing ran (not passed)");
    false
}

/// The subtests of a built tree, or why it is not one.
pub fn find_subtests(dir: &Path) -> Result<std::result::Result<Vec<Subtest>, String>> {
    if !dir.is_dir() {
        return Ok(Err(format!("{} is not a directory", dir.display())));
    }
    let mut subtests = Vec::new();
    let mut missing = Vec::new();
    // No configuration file: every subtest gets the full model.
    let cfg = std::fs::read_to_string(dir.join(cpu_model::CFG)).unwrap_or_default();
    for (flat, source) in SUITES {
        let (flat, source) = (dir.join(flat), dir.join(source));
        if !flat.is_file() || !source.is_file() {
            let absent: Vec<String> = [&flat, &source]
                .iter()
                .filter(|p| !p.is_file())
                .map(|p| p.display().to_string())
                .collect();
            missing.push(absent.join(" and "));
            continue;
        }
        let text = std::fs::read_to_string(&source)?;
        let names = match names::subtest_names(&text) {
            Ok(names) => names,
            Err(why) => bail!("{}: {why}", source.display()),
        };
        let file = flat
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        subtests.extend(names.into_iter().map(|name| Subtest {
            cpu_removed: cpu_model::removed_features(&cfg, &file, &name),
            flat: flat.clone(),
            name,
        }));
    }
    if subtests.is_empty() {
        return Ok(Err(format!(
            "{} is no built kvm-unit-tests tree: no {}",
            dir.display(),
            missing.join(", no ")
        )));
    }
    for absent in missing {
        eprintln!("xtask: kut: {absent} missing: those subtests are left out");
    }
    Ok(Ok(subtests))
}

/// The subtests `--only` (pattern text and regex) selects, and the names of
/// those left out because they can hang TCG (unless the pattern's text
/// contains their name).
pub fn select(subtests: Vec<Subtest>, only: Option<(&str, &Regex)>) -> (Vec<Subtest>, Vec<String>) {
    let mut left_out = Vec::new();
    let selected = subtests
        .into_iter()
        .filter(|s| only.is_none_or(|(_, regex)| regex.is_match(&s.name)))
        .filter(|s| {
            let named = only.is_some_and(|(pattern, _)| pattern.contains(s.name.as_str()));
            let keep = named || !LEFT_OUT.contains(&s.name.as_str());
            if !keep {
                left_out.push(s.name.clone());
            }
            keep
        })
        .collect();
    (selected, left_out)
}

/// The QEMUs to run at a time: [`MAX_JOBS`], and no more than the host's
/// cores.
pub fn jobs() -> usize {
    std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(MAX_JOBS)
}

/// Runs every subtest (under both L0s with `--compare`; with `icount`, both
/// under `-icount`) on `jobs` threads, and hands each subtest's results to
/// `done`, in order, as soon as they and those before them are in.
pub fn run_pairs(
    subtests: &[Subtest],
    args: &KutArgs,
    icount: bool,
    ours: &Ours,
    jobs: usize,
    mut done: impl FnMut(usize, &RunResult, Option<&RunResult>),
) -> Vec<(RunResult, Option<RunResult>)> {
    let columns: &[Column] = if args.compare {
        &[Column::Ours, Column::Qemu]
    } else {
        &[Column::Ours]
    };
    // A subtest's two runs go side by side, so its row is ready early.
    let queue: Mutex<VecDeque<(usize, Column)>> = Mutex::new(
        (0..subtests.len())
            .flat_map(|i| columns.iter().map(move |c| (i, *c)))
            .collect(),
    );
    let mut ours_results: Vec<Option<RunResult>> = vec![None; subtests.len()];
    let mut qemu_results: Vec<Option<RunResult>> = vec![None; subtests.len()];
    let (sender, receiver) = mpsc::channel();
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            let sender = sender.clone();
            let queue = &queue;
            scope.spawn(move || loop {
                let Some((index, column)) = queue.lock().expect("no panics").pop_front() else {
                    break;
                };
                let subtest = &subtests[index];
                let guest = Guest {
                    flat: &subtest.flat,
                    subtest: &subtest.name,
                    smp: args.smp,
                    host_cpus: args.host_cpus,
                    mem_mib: args.mem_mib,
                    cpu_removed: &subtest.cpu_removed,
                    icount,
                };
                let cmd = match column {
                    Column::Ours => command::ours_command(ours, &guest),
                    Column::Qemu => Ok(command::bare_command(&guest)),
                };
                let result = match cmd {
                    Ok(cmd) => run_one(cmd, args.timeout),
                    Err(e) => not_started(e, Duration::ZERO),
                };
                if sender.send((index, column, result)).is_err() {
                    break;
                }
            });
        }
        drop(sender);
        let mut next = 0;
        for (index, column, result) in receiver {
            match column {
                Column::Ours => ours_results[index] = Some(result),
                Column::Qemu => qemu_results[index] = Some(result),
            }
            while next < subtests.len()
                && ours_results[next].is_some()
                && (!args.compare || qemu_results[next].is_some())
            {
                let ours = ours_results[next].as_ref().expect("checked");
                done(next, ours, qemu_results[next].as_ref());
                next += 1;
            }
        }
    });
    ours_results
        .into_iter()
        .zip(qemu_results)
        .map(|(ours, qemu)| (ours.expect("every job reports"), qemu))
        .collect()
}

fn row<'a>(subtest: &'a Subtest, ours: &'a RunResult, qemu: Option<&RunResult>) -> Row<'a> {
    Row {
        name: &subtest.name,
        ours: ours.verdict,
        qemu: qemu.map(|q| q.verdict),
        ours_time: ours.time,
        ours_note: exits_line(&ours.output),
    }
}

/// What the hypervisor said about the guest run's exits: its `exits: ...`
/// line when it prints one (a breakdown), else the count at the end of its
/// last `hv: guest NAME ... after N exits` line. The hook for showing where
/// a run's time goes.
pub fn exits_line(output: &str) -> Option<String> {
    let lines: Vec<&str> = output.lines().map(str::trim).collect();
    if let Some(rest) = lines
        .iter()
        .rev()
        .find_map(|line| line.strip_prefix(EXITS_PREFIX))
        .map(str::trim)
        .filter(|rest| !rest.is_empty())
    {
        return Some(rest.to_string());
    }
    lines.iter().rev().find_map(|line| {
        let rest = line.strip_prefix("hv: guest ")?.strip_suffix(" exits")?;
        let count = rest.rsplit_once(" after ")?.1;
        count.parse::<u64>().ok().map(|n| format!("{n} exits"))
    })
}

fn run_one(cmd: std::process::Command, timeout: Duration) -> RunResult {
    let started = Instant::now();
    let outcome = runner::run(
        cmd,
        runner::Options {
            timeout: Some(timeout),
            echo: false,
        },
    );
    let time = started.elapsed();
    match outcome {
        Ok(outcome) => {
            let end = if outcome.timed_out.is_some() {
                End::TimedOut
            } else if let Some(status) = outcome.status {
                End::Exited(status)
            } else {
                End::Signaled(outcome.signal.unwrap_or(0))
            };
            let (verdict, why) = Verdict::of(&outcome.serial, end);
            RunResult {
                verdict,
                why,
                time,
                output: outcome.serial,
                messages: outcome.stderr,
            }
        }
        Err(e) => not_started(e, time),
    }
}

/// A run whose L0 could not be started: CRASH, with the reason.
fn not_started(error: crate::Error, time: Duration) -> RunResult {
    RunResult {
        verdict: Verdict::Crash,
        why: Some(error.to_string()),
        time,
        output: String::new(),
        messages: String::new(),
    }
}

/// `--verbose`: the output of every run that neither passed nor skipped.
fn print_failures(subtests: &[Subtest], rows: &[(RunResult, Option<RunResult>)]) {
    for (subtest, (ours, qemu)) in subtests.iter().zip(rows) {
        for (label, result) in [("ours", Some(ours)), ("qemu", qemu.as_ref())] {
            let Some(result) = result else { continue };
            if matches!(result.verdict, Verdict::Pass | Verdict::Skip) {
                continue;
            }
            println!(
                "\n--- {} under {label}: {}{} ---",
                subtest.name,
                result.verdict,
                result
                    .why
                    .as_ref()
                    .map_or(String::new(), |w| format!(" ({w})"))
            );
            print!("{}", result.output.replace('\r', ""));
            if !result.messages.is_empty() {
                println!("--- its messages (stderr) ---");
                print!("{}", result.messages);
            }
        }
    }
}

/// Writes a suite into the tree at `dir` for a test: an empty image and a
/// source whose test table names `subtests`.
#[cfg(test)]
pub fn fake_suite(dir: &Path, (flat, source): (&str, &str), subtests: &[&str]) {
    let table: Vec<String> = subtests
        .iter()
        .map(|n| format!("{{ \"{n}\" }}, "))
        .collect();
    std::fs::write(dir.join(flat), b"").unwrap();
    let text = format!("struct svm_test t[] = {{ {}{{ 0 }} }};\n", table.concat());
    std::fs::write(dir.join(source), text).unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subtests(names: &[&str]) -> Vec<Subtest> {
        names
            .iter()
            .map(|n| Subtest {
                flat: "x86/svm.flat".into(),
                name: n.to_string(),
                cpu_removed: Vec::new(),
            })
            .collect()
    }

    fn names(selected: &[Subtest]) -> Vec<&str> {
        selected.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn only_filters_and_reg_corruption_needs_naming() {
        let all = subtests(&["vmrun", "reg_corruption", "npt_nx"]);
        let (selected, left_out) = select(all.clone(), None);
        assert_eq!(names(&selected), ["vmrun", "npt_nx"]);
        assert_eq!(left_out, ["reg_corruption"]);

        let dot = Regex::new(".").unwrap();
        let (selected, left_out) = select(all.clone(), Some((".", &dot)));
        assert_eq!(names(&selected), ["vmrun", "npt_nx"]);
        assert_eq!(left_out, ["reg_corruption"]);

        let npt = Regex::new("^npt").unwrap();
        let (selected, left_out) = select(all.clone(), Some(("^npt", &npt)));
        assert_eq!(names(&selected), ["npt_nx"]);
        assert!(left_out.is_empty());

        let named = Regex::new("reg_corruption|vmrun").unwrap();
        let (selected, _) = select(all, Some(("reg_corruption|vmrun", &named)));
        assert_eq!(names(&selected), ["vmrun", "reg_corruption"]);
    }

    #[test]
    fn a_tree_without_images_is_no_tree() {
        let dir = std::env::temp_dir().join(format!("kut-empty-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("x86")).unwrap();
        let why = find_subtests(&dir).unwrap().unwrap_err();
        assert!(why.contains("no built kvm-unit-tests tree"), "{why}");
        assert!(why.contains("svm.flat"), "{why}");
        let why = find_subtests(&dir.join("absent")).unwrap().unwrap_err();
        assert!(why.contains("not a directory"), "{why}");

        // With one suite's image and source, its subtests are found.
        fake_suite(&dir, SUITES[1], &["npt nx"]);
        let found = find_subtests(&dir).unwrap().unwrap();
        assert_eq!(names(&found), ["npt_nx"]);
        assert_eq!(found[0].flat, dir.join("x86/svm_npt.flat"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn shell(script: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", script]);
        cmd
    }

    #[test]
    fn a_run_ends_in_the_verdict_of_its_output_and_status() {
        let timeout = Duration::from_secs(20);
        let pass = run_one(
            shell("printf 'PASS: x\\r\\nSUMMARY: 1 tests\\r\\n'; exit 1"),
            timeout,
        );
        assert_eq!(pass.verdict, Verdict::Pass);
        assert!(pass.output.contains("SUMMARY: 1 tests"));
        // The same status without the summary line: the test never finished.
        let cut = run_one(shell("echo 'PASS: x'; exit 1"), timeout);
        assert_eq!(cut.verdict, Verdict::Fail);
        let skip = run_one(
            shell("echo 'SUMMARY: 1 tests, 1 skipped'; exit 77"),
            timeout,
        );
        assert_eq!(skip.verdict, Verdict::Skip);
        let dead = run_one(shell("echo 'SUMMARY: 1 tests' >&2; exit 2"), timeout);
        assert_eq!(dead.verdict, Verdict::Crash);
        assert!(dead.messages.contains("SUMMARY"));
        let killed = run_one(shell("kill -9 $$"), timeout);
        assert_eq!(killed.verdict, Verdict::Crash);
        // `exec`: a grandchild would keep the pipe open after the kill (QEMU
        // under `run` dies with its xtask: PR_SET_PDEATHSIG).
        let hung = run_one(shell("exec sleep 30"), Duration::from_millis(200));
        assert_eq!(hung.verdict, Verdict::Timeout);
        assert!(hung.time < Duration::from_secs(10));
        let missing = run_one(std::process::Command::new("/nonexistent/qemu"), timeout);
        assert_eq!(missing.verdict, Verdict::Crash);
    }

    #[test]
    fn exit_counts_come_from_the_hypervisors_last_line() {
        let output = "SUMMARY: 1 tests\r\nexits: 10\r\n  exits: 1234 (npf 3, vmrun 40)\r\n";
        assert_eq!(
            exits_line(output).as_deref(),
            Some("1234 (npf 3, vmrun 40)")
        );
        assert_eq!(exits_line("SUMMARY: 1 tests\n"), None);
        assert_eq!(exits_line("exits:\n"), None);
        // The hypervisor's last line about the guest carries the count.
        let output = "hv: running guest svm.flat (Multiboot, 256 MiB, entry 0x4000bc)\r\n\
            SUMMARY: 1 tests\r\n\
            hv: guest svm.flat wrote 0 to the exit device after 5321 exits\r\n";
        assert_eq!(exits_line(output).as_deref(), Some("5321 exits"));
        let died = "hv: guest svm.flat died: triple fault (shutdown); rip 0x41706f exit code 0x7f after 8 exits\n";
        assert_eq!(exits_line(died).as_deref(), Some("8 exits"));
        assert_eq!(exits_line("hv: guest x after many exits\n"), None);
    }
}
