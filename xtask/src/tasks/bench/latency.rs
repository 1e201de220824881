//! kvm-unit-tests' latency subtests as rows of `cargo xtask bench`.
//!
//! `latency_run_exit`, `latency_run_exit_clean` and `latency_svm_insn`
//! (x86/svm_tests.c) time a million nested VMRUN/#VMEXIT round trips, or
//! VMLOAD/VMSAVE/STGI/CLGI, with RDTSC as L1, and print one line per
//! operation: `Latency VMRUN : max: X min: Y avg: Z` in TSC ticks. Both L0s
//! (ours and bare QEMU TCG) run them under `-icount shift=0,sleep=off`, so a
//! tick is one instruction and the figures are the same on every run.
//! (The test's "VMRUN" is timed from L2's VMMCALL until L2 runs again: a
//! whole round trip; its "VMEXIT" from that VMMCALL until L1 runs.)

use std::path::Path;
use std::time::Duration;

use super::Row;
use crate::tasks::kut::command::Ours;
use crate::tasks::kut::verdict::Verdict;
use crate::tasks::kut::{self, KutArgs, RunResult, Subtest};
use crate::{bail, workspace, Result};

/// The subtests that time themselves, in the order of their rows.
pub const SUBTESTS: [&str; 3] = [
    "latency_run_exit",
    "latency_run_exit_clean",
    "latency_svm_insn",
];

/// A run may take this long: a million round trips under ours take about
/// a minute, more on a loaded host.
const TIMEOUT: Duration = Duration::from_secs(900);

/// What starts a line [`parse_line`] reads (after the indentation).
const PREFIX: &str = "Latency ";

/// One `Latency NAME: max: X min: Y avg: Z` line, in TSC ticks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Latency {
    /// The operation, e.g. `VMRUN`.
    pub what: String,
    pub max: u64,
    pub min: u64,
    pub avg: u64,
}

/// Reads one console line: `Ok(None)` when it is no latency line, an error
/// naming the line when it starts like one but does not read as one.
pub fn parse_line(line: &str) -> std::result::Result<Option<Latency>, String> {
    let line = line.trim();
    let Some(rest) = line.strip_prefix(PREFIX) else {
        return Ok(None);
    };
    let bad = || {
        format!("malformed latency line `{line}`: expected `Latency NAME: max: N min: N avg: N`")
    };
    let (what, figures) = rest.split_once(':').ok_or_else(bad)?;
    let what = what.trim();
    if what.is_empty() || what.contains(char::is_whitespace) {
        return Err(bad());
    }
    let words: Vec<&str> = figures.split_whitespace().collect();
    let ["max:", max, "min:", min, "avg:", avg] = words.as_slice() else {
        return Err(bad());
    };
    let number = |word: &str| word.parse::<u64>().map_err(|_| bad());
    Ok(Some(Latency {
        what: what.to_string(),
        max: number(max)?,
        min: number(min)?,
        avg: number(avg)?,
    }))
}

/// Every latency line of a run's output, in order; at least one.
pub fn parse_output(output: &str) -> std::result::Result<Vec<Latency>, String> {
    let mut found = Vec::new();
    for line in output.lines() {
        if let Some(latency) = parse_line(line)? {
            found.push(latency);
        }
    }
    if found.is_empty() {
        return Err(format!("printed no `{}...` line", PREFIX.trim_end()));
    }
    Ok(found)
}

/// The rows of one subtest: `SUBTEST OP avg`, ours as `instructions` and
/// bare QEMU's as `bare`, for every operation either printed (ours' order
/// first); a side that printed nothing (failed) has no figures, and when
/// neither did, one row `SUBTEST` without figures stands for them.
pub fn rows(subtest: &str, ours: &[Latency], bare: &[Latency]) -> Vec<Row> {
    if ours.is_empty() && bare.is_empty() {
        return vec![Row {
            name: subtest.to_string(),
            instructions: None,
            l0: None,
            exits: None,
            bare: None,
        }];
    }
    let mut names: Vec<&str> = ours.iter().map(|l| l.what.as_str()).collect();
    for l in bare {
        if !names.contains(&l.what.as_str()) {
            names.push(&l.what);
        }
    }
    let avg = |side: &[Latency], what: &str| side.iter().find(|l| l.what == what).map(|l| l.avg);
    names
        .into_iter()
        .map(|what| Row {
            name: format!("{subtest} {what} avg"),
            instructions: avg(ours, what),
            l0: None,
            exits: None,
            bare: avg(bare, what),
        })
        .collect()
}

/// The latency subtests of the tree at `dir`, or why it cannot give them
/// (no directory, not built, too old to have them).
pub fn subtests(dir: &Path) -> Result<Vec<Subtest>> {
    let all = match kut::find_subtests(dir)? {
        Ok(all) => all,
        Err(why) => bail!(
            "bench: no latency rows: {why}\n{}",
            kut::HOW_TO_GET.replace("cargo xtask kut", "cargo xtask bench")
        ),
    };
    SUBTESTS
        .iter()
        .map(|name| match all.iter().find(|s| s.name == *name) {
            Some(subtest) => Ok(subtest.clone()),
            None => bail!(
                "bench: no latency rows: {} has no subtest {name} (x86/svm.flat and \
                 x86/svm_tests.c of a kvm-unit-tests tree that has it)",
                dir.display()
            ),
        })
        .collect()
}

/// What the latency runs gave: their rows, a line per failed run, and a
/// note per subtest on our L0's exits.
#[derive(Debug, Default)]
pub struct Outcome {
    pub rows: Vec<Row>,
    pub failures: Vec<String>,
    pub notes: Vec<String>,
}

/// Runs each subtest as L1 under ours (the release kernel at `kernel`) and
/// under bare QEMU TCG, both with `-icount`, two QEMUs at a time.
pub fn run(subtests: &[Subtest], kernel: &Path) -> Result<Outcome> {
    let debugcon_dir = workspace::target_dir().join("bench");
    std::fs::create_dir_all(&debugcon_dir)?;
    let ours = Ours {
        kernel: kernel.to_path_buf(),
        debugcon_dir,
    };
    let args = KutArgs {
        compare: true,
        timeout: TIMEOUT,
        ..KutArgs::default()
    };
    let jobs = kut::jobs();
    eprintln!(
        "xtask: bench: {} as L1 under ours and under bare QEMU TCG, -icount, {jobs} QEMU{} \
         at a time (a few minutes)",
        SUBTESTS.join(", "),
        if jobs == 1 { "" } else { "s" }
    );
    let results = kut::run_pairs(subtests, &args, true, &ours, jobs, |index, ours, bare| {
        let bare = bare.expect("compare runs bare QEMU");
        eprintln!(
            "xtask: bench: {}: ours {} in {:.1} s, bare QEMU {} in {:.1} s",
            subtests[index].name,
            ours.verdict,
            ours.time.as_secs_f64(),
            bare.verdict,
            bare.time.as_secs_f64()
        );
    });
    let mut outcome = Outcome::default();
    for (subtest, (ours, bare)) in subtests.iter().zip(&results) {
        let mut side = |label: &str, result: Option<&RunResult>| match result.map(figures) {
            Some(Ok(found)) => found,
            Some(Err(why)) => {
                outcome
                    .failures
                    .push(format!("{} under {label}: {why}", subtest.name));
                Vec::new()
            }
            None => Vec::new(),
        };
        let ours_found = side("ours", Some(ours));
        let bare_found = side("bare QEMU", bare.as_ref());
        outcome
            .rows
            .extend(rows(&subtest.name, &ours_found, &bare_found));
        if let Some(exits) = exits_report(&ours.output) {
            outcome.notes.push(format!("  {}: {exits}", subtest.name));
        }
    }
    Ok(outcome)
}

/// The hypervisor's report of a whole run's exits: its `hv: exits: ...`
/// line (by reason, and its instructions in L0 as host TSC ticks), else
/// the count kut reads.
pub fn exits_report(output: &str) -> Option<String> {
    output
        .lines()
        .rev()
        .find_map(|line| line.trim().strip_prefix(EXITS_REPORT))
        .map(str::to_string)
        .or_else(|| kut::exits_line(output))
}

/// What starts the hypervisor's line of a guest run's exits.
const EXITS_REPORT: &str = "hv: exits: ";

/// The figures of a run that passed, or why there are none (its verdict,
/// with the end of its output).
fn figures(result: &RunResult) -> std::result::Result<Vec<Latency>, String> {
    if result.verdict != Verdict::Pass {
        let why = result
            .why
            .as_ref()
            .map_or(String::new(), |w| format!(" ({w})"));
        // QEMU's own messages when the guest said nothing.
        let (what, text) = match result.output.trim() {
            "" => ("messages", result.messages.as_str()),
            _ => ("output", result.output.as_str()),
        };
        let lines: Vec<&str> = text.trim_end().lines().map(str::trim_end).collect();
        let tail = lines[lines.len().saturating_sub(5)..].join("\n    ");
        return Err(format!(
            "{}{why}; the end of its {what}:\n    {tail}",
            result.verdict
        ));
    }
    parse_output(&result.output)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The console of `latency_svm_insn` under ours (release kernel, -icount).
    const OURS_SVM_INSN: &str =
        "hv: running guest svm.flat (Multiboot, 256 MiB, entry 0x4000bc)\r\n\
        enabling apic\r\n\
        SVM test: latency_svm_insn\r\n    \
        Latency VMLOAD: max: 2083 min: 1403 avg: 1403\r\n    \
        Latency VMSAVE: max: 2078 min: 1398 avg: 1398\r\n    \
        Latency STGI:   max: 6 min: 6 avg: 6\r\n    \
        Latency CLGI:   max: 686 min: 6 avg: 6\r\n\
        PASS: latency_svm_insn\r\n\
        SUMMARY: 1 tests\r\n\
        hv: guest svm.flat wrote 0 to the exit device after 2001081 exits\r\n";

    /// The console of `latency_run_exit` under bare QEMU (-icount).
    const BARE_RUN_EXIT: &str = "SVM test: latency_run_exit\r\n    \
        Latency VMRUN : max: 84 min: 50 avg: 81\r\n    \
        Latency VMEXIT: max: 30 min: 30 avg: 30\r\n\
        PASS: latency_run_exit\r\n\
        SUMMARY: 1 tests\r\n";

    fn latency(what: &str, max: u64, min: u64, avg: u64) -> Latency {
        Latency {
            what: what.into(),
            max,
            min,
            avg,
        }
    }

    #[test]
    fn reads_the_lines_kvm_unit_tests_prints() {
        assert_eq!(
            parse_output(OURS_SVM_INSN).unwrap(),
            [
                latency("VMLOAD", 2083, 1403, 1403),
                latency("VMSAVE", 2078, 1398, 1398),
                latency("STGI", 6, 6, 6),
                latency("CLGI", 686, 6, 6),
            ]
        );
        assert_eq!(
            parse_output(BARE_RUN_EXIT).unwrap(),
            [latency("VMRUN", 84, 50, 81), latency("VMEXIT", 30, 30, 30)]
        );
        assert_eq!(parse_line("PASS: latency_run_exit"), Ok(None));
    }

    #[test]
    fn a_malformed_line_is_an_error_that_names_it() {
        for line in [
            "    Latency VMRUN : max: 84 min: 50",
            "    Latency VMRUN : max: 84 min: -1 avg: 81",
            "    Latency VMRUN max: 84 min: 50 avg: 81",
            "    Latency : max: 84 min: 50 avg: 81",
            "    Latency VMRUN : max: 84 avg: 50 min: 81",
            "    Latency VMRUN : max: 84 min: 50 avg: 81 hv: exit",
        ] {
            let why = parse_line(line).expect_err(line);
            assert!(why.contains(line.trim()), "{why}");
            assert!(why.contains("expected `Latency NAME: max: N"), "{why}");
            let output = format!("SVM test: x\n{line}\nPASS: x\n");
            assert_eq!(parse_output(&output), Err(why));
        }
        let why = parse_output("SVM test: x\nPASS: x\n").unwrap_err();
        assert_eq!(why, "printed no `Latency...` line");
    }

    #[test]
    fn rows_pair_ours_with_bare_and_keep_a_side_without_figures() {
        let ours = [latency("VMRUN", 9, 1, 4508), latency("VMEXIT", 9, 1, 1839)];
        let bare = [latency("VMEXIT", 30, 30, 30), latency("VMRUN", 84, 50, 81)];
        let both = rows("latency_run_exit", &ours, &bare);
        let names: Vec<&str> = both.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            ["latency_run_exit VMRUN avg", "latency_run_exit VMEXIT avg"]
        );
        assert_eq!((both[0].instructions, both[0].bare), (Some(4508), Some(81)));
        assert_eq!((both[1].l0, both[1].exits), (None, None));
        let failed = rows("latency_run_exit", &[], &bare);
        assert_eq!(failed[1].name, "latency_run_exit VMRUN avg");
        assert_eq!((failed[1].instructions, failed[1].bare), (None, Some(81)));
        let none = rows("latency_run_exit", &[], &[]);
        assert_eq!(none.len(), 1);
        assert_eq!(
            (none[0].name.as_str(), none[0].instructions, none[0].bare),
            ("latency_run_exit", None, None)
        );
    }

    #[test]
    fn the_exits_report_is_the_hypervisors_breakdown() {
        let output = format!(
            "{OURS_SVM_INSN}hv: exits: Vmsave 1000002, Vmload 1000000, Ioio 733 \
             (2392053711 host TSC ticks in L0)\r\n"
        );
        assert_eq!(
            exits_report(&output).as_deref(),
            Some("Vmsave 1000002, Vmload 1000000, Ioio 733 (2392053711 host TSC ticks in L0)")
        );
        assert_eq!(
            exits_report(OURS_SVM_INSN).as_deref(),
            Some("2001081 exits")
        );
        assert_eq!(exits_report(BARE_RUN_EXIT), None);
    }

    #[test]
    fn a_run_that_did_not_pass_gives_its_verdict_and_last_lines() {
        let run = |verdict, output: &str| RunResult {
            verdict,
            why: None,
            time: Duration::ZERO,
            output: output.to_string(),
            messages: String::new(),
        };
        assert_eq!(
            figures(&run(Verdict::Pass, BARE_RUN_EXIT)).unwrap().len(),
            2
        );
        let cut = "SVM test: latency_run_exit\r\n    Latency VMRUN : max: 84 min:";
        let why = figures(&run(Verdict::Fail, cut)).unwrap_err();
        assert!(why.starts_with("FAIL; the end of its output:"), "{why}");
        assert!(why.contains("Latency VMRUN : max: 84 min:"), "{why}");
        let silent = RunResult {
            messages: "qemu: could not load kernel 'x86/svm.flat'\n".into(),
            ..run(Verdict::Fail, "\r\n")
        };
        let why = figures(&silent).unwrap_err();
        assert!(
            why.contains("the end of its messages:\n    qemu: could not load"),
            "{why}"
        );
        let why = figures(&run(Verdict::Pass, cut)).unwrap_err();
        assert!(why.starts_with("malformed latency line"), "{why}");
    }

    #[test]
    fn a_tree_without_the_subtests_says_so() {
        let dir = std::env::temp_dir().join(format!("bench-kut-{}", std::process::id()));
        let why = subtests(&dir).unwrap_err().to_string();
        assert!(why.contains("not a directory"), "{why}");
        assert!(why.contains("cargo xtask bench --kut-dir DIR"), "{why}");
        std::fs::create_dir_all(dir.join("x86")).unwrap();
        let why = subtests(&dir).unwrap_err().to_string();
        assert!(why.contains("no built kvm-unit-tests tree"), "{why}");
        kut::fake_suite(&dir, kut::SUITES[0], &["latency_run_exit"]);
        let why = subtests(&dir).unwrap_err().to_string();
        assert!(
            why.contains("has no subtest latency_run_exit_clean"),
            "{why}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
