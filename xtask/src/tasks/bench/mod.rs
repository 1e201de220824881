//! `cargo xtask bench`: the cost of exits, counted in instructions.
//!
//! The release kernel boots under TCG with `-icount shift=0,sleep=off`, so
//! the TSC advances exactly one tick per executed instruction and a run is
//! deterministic. The self-tests that time themselves print lines such as
//! `... round trip (...): N TSC ticks as the guest measures it, M in L0, E L0 exits`
//! (older guests print no exits); this command runs just those and reports
//! their figures as one table of instruction counts. (Cycles would only
//! mean something on real hardware.) With a kvm-unit-tests tree, the table
//! also has the suite's latency subtests as L1 under ours and under bare
//! QEMU TCG, side by side (`latency`).

pub mod latency;

use std::path::PathBuf;

use crate::accel::Accel;
use crate::kernel::{self, Profile};
use crate::qemu::{self, Firmware, Medium, RunConfig};
use crate::tasks::kut;
use crate::verdict::Verdict;
use crate::{bail, host_tools, runner, workspace, Result};

/// The self-tests that measure, and the rows (line prefixes) they print.
const MEASURED: [(&str, &str); 7] = [
    ("guest::vmmcall", "hypercall round trip"),
    ("nested::vmrun_vmmcall_roundtrip", "nested round trip"),
    ("guest::cr3_write_checked", "MOV CR3 round trip"),
    ("nested::vmrun_vmmcall_roundtrip", "L1 STGI"),
    ("nested::vmrun_vmmcall_roundtrip", "L1 CLGI"),
    ("nested::vmrun_vmmcall_roundtrip", "L1 VMLOAD"),
    ("nested::vmrun_vmmcall_roundtrip", "L1 VMSAVE"),
];

/// One figure a self-test printed.
#[derive(Debug, PartialEq, Eq)]
pub struct Figure {
    /// What was measured, with its path.
    pub what: String,
    /// Instructions of the whole round trip, as the guest measured it.
    pub total: u64,
    /// Of those, instructions in L0 (the hypervisor).
    pub l0: u64,
    /// L0 exits per operation, if the guest reported them.
    pub exits: Option<u64>,
}

/// Parses `<what>: <N> TSC ticks as ... measures it, <M> in L0[, <E> L0
/// exits]` from a console line (after any `[guest ...] ` prefix).
pub fn parse_figure(line: &str) -> Option<Figure> {
    let body = line.split_once("] ").map_or(line, |(_, rest)| rest);
    let (what, rest) = body.split_once(": ")?;
    let (total, rest) = rest.split_once(" TSC ticks")?;
    let mut fields = rest.split(", ").skip(1);
    let l0 = fields.next()?.strip_suffix(" in L0")?;
    let exits = match fields.next() {
        None => None,
        Some(e) => Some(e.strip_suffix(" L0 exits")?.trim().parse().ok()?),
    };
    if fields.next().is_some() {
        return None;
    }
    Some(Figure {
        what: what.to_string(),
        total: total.trim().parse().ok()?,
        l0: l0.trim().parse().ok()?,
        exits,
    })
}

/// One row of the bench table; `None` prints as `-`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub name: String,
    /// Instructions per operation under ours, as the guest measures them.
    pub instructions: Option<u64>,
    /// Of those, instructions in L0.
    pub l0: Option<u64>,
    /// L0 exits per operation.
    pub exits: Option<u64>,
    /// The same measurement with bare QEMU TCG as the L0 (latency rows).
    pub bare: Option<u64>,
}

impl Row {
    /// The row of a self-test's figure.
    pub fn measured(name: &str, f: &Figure) -> Self {
        Row {
            name: name.to_string(),
            instructions: Some(f.total),
            l0: Some(f.l0),
            exits: f.exits,
            bare: None,
        }
    }
}

/// The bench table: columns `instructions`, `in L0`, `L0 exits`, and with
/// `compare` also `bare QEMU` and `ratio` (instructions / bare QEMU).
pub fn table(rows: &[Row], compare: bool) -> String {
    let width = rows
        .iter()
        .map(|r| r.name.len())
        .chain(["row".len()])
        .max()
        .unwrap_or(0);
    let cell = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    let mut out = format!(
        "{:<width$}  {:>12}  {:>8}  {:>8}",
        "row", "instructions", "in L0", "L0 exits"
    );
    if compare {
        out += &format!("  {:>9}  {:>7}", "bare QEMU", "ratio");
    }
    out.push('\n');
    for r in rows {
        out += &format!(
            "{:<width$}  {:>12}  {:>8}  {:>8}",
            r.name,
            cell(r.instructions),
            cell(r.l0),
            cell(r.exits)
        );
        if compare {
            let ratio = match (r.instructions, r.bare) {
                (Some(ours), Some(bare)) if bare > 0 => {
                    format!("{:.1}x", ours as f64 / bare as f64)
                }
                _ => "-".to_string(),
            };
            out += &format!("  {:>9}  {ratio:>7}", cell(r.bare));
        }
        out.push('\n');
    }
    out
}

/// What a run without a tree prints after the table.
pub const NO_TREE_HINT: &str = "latency rows: --kut-dir DIR (or KUT_DIR=DIR), a built \
kvm-unit-tests tree, adds its latency_run_exit, latency_run_exit_clean and latency_svm_insn \
as L1 under ours and under bare QEMU TCG (a few minutes more)";

/// What the latency rows mean, printed after them.
pub const LATENCY_LEGEND: &str = "\
latency rows: kvm-unit-tests' own avg per operation, as L1 times it with RDTSC;
  instructions: with ours as L0; bare QEMU: with bare QEMU TCG as L0 (both -icount);
  ratio = instructions / bare QEMU. (VMRUN is timed from L2's VMMCALL back to L2.)";

/// Heads the hypervisor's reports of the latency runs.
pub const REPORTS_HEADER: &str =
    "the whole runs under ours (L0 exits by reason, host TSC ticks = instructions in L0):";

/// The first line of the output: what the figures are.
pub const HEADER: &str = "bench: release kernel, QEMU TCG -icount shift=0,sleep=off \
(1 TSC tick = 1 instruction): instructions per operation";

/// `cargo xtask bench [--kut-dir DIR]`.
pub fn bench(kut_dir: Option<PathBuf>) -> Result<()> {
    // A tree that cannot give the rows fails before anything is built.
    let latency_subtests = match kut::tree_dir(kut_dir) {
        Some(dir) => Some(latency::subtests(&dir)?),
        None => None,
    };
    let kernel = kernel::build_all(Profile::Release)?;
    host_tools::require(&[host_tools::QEMU])?;
    let mut rows = measured_rows(&kernel)?;
    let latency = match &latency_subtests {
        Some(subtests) => Some(latency::run(subtests, &kernel)?),
        None => None,
    };
    println!("{HEADER}");
    let Some(latency) = latency else {
        print!("{}", table(&rows, false));
        println!("{NO_TREE_HINT}");
        return Ok(());
    };
    rows.extend(latency.rows);
    print!("{}", table(&rows, true));
    println!("{LATENCY_LEGEND}");
    if !latency.notes.is_empty() {
        println!("{REPORTS_HEADER}");
    }
    for note in &latency.notes {
        println!("{note}");
    }
    if !latency.failures.is_empty() {
        bail!(
            "bench: latency runs failed:\n{}",
            latency.failures.join("\n")
        );
    }
    Ok(())
}

/// Runs the measuring self-tests on the release kernel at `kernel`, one
/// row per [`MEASURED`] entry.
fn measured_rows(kernel: &std::path::Path) -> Result<Vec<Row>> {
    let mut tests: Vec<&str> = Vec::new();
    for (test, _) in MEASURED {
        if !tests.contains(&test) {
            tests.push(test);
        }
    }
    let config = RunConfig {
        medium: Medium::Direct {
            kernel: kernel.to_path_buf(),
            cmdline: vec![format!("tests={}", tests.join(","))],
        },
        firmware: Firmware::Bios,
        accel: Accel::Tcg,
        gdb: false,
        debugcon: workspace::target_dir().join("qemu-debugcon.log"),
        icount: true,
        smp: qemu::DEFAULT_SMP,
    };
    let outcome = runner::run(
        qemu::command(&config)?,
        runner::Options {
            timeout: None,
            echo: false,
        },
    )?;
    let verdict = Verdict::of(&outcome);
    if !verdict.is_success() {
        eprint!("{}", outcome.serial);
        bail!("the measuring self-tests did not pass: {verdict}");
    }
    let figures: Vec<Figure> = outcome
        .serial
        .lines()
        .map(str::trim_end)
        .filter_map(parse_figure)
        .collect();
    let mut rows = Vec::new();
    for (test, label) in MEASURED {
        let Some(f) = figures.iter().find(|f| f.what.starts_with(label)) else {
            bail!("{test} printed no `{label}` figure");
        };
        rows.push(Row::measured(label, f));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_lines_the_guests_print() {
        let line = "[guest nested::x] nested round trip (L2 VMMCALL -> L1 -> VMRUN -> L2): 16648 TSC ticks as L1 measures it, 16287 in L0\r";
        assert_eq!(
            parse_figure(line.trim_end()),
            Some(Figure {
                what: "nested round trip (L2 VMMCALL -> L1 -> VMRUN -> L2)".into(),
                total: 16648,
                l0: 16287,
                exits: None,
            })
        );
        let line = "[guest nested::x] L1 CLGI: 40 TSC ticks as L1 measures it, 0 in L0, 0 L0 exits";
        assert_eq!(
            parse_figure(line),
            Some(Figure {
                what: "L1 CLGI".into(),
                total: 40,
                l0: 0,
                exits: Some(0),
            })
        );
        assert_eq!(
            parse_figure("x: 1 TSC ticks as y, 3 in L0, many L0 exits"),
            None
        );
        assert_eq!(
            parse_figure("x: 1 TSC ticks as y, 3 in L0, 2 L0 exits, 4"),
            None
        );
        assert_eq!(parse_figure("test guest::vmmcall ... ok"), None);
        assert_eq!(parse_figure("x: many TSC ticks as y, 3 in L0"), None);
    }

    #[test]
    fn prints_one_table_with_a_dash_for_missing_exits() {
        let a = Figure {
            what: "nested round trip (...)".into(),
            total: 16648,
            l0: 16287,
            exits: Some(4),
        };
        let b = Figure {
            what: "L1 STGI".into(),
            total: 30,
            l0: 0,
            exits: None,
        };
        let rows = [
            Row::measured("nested round trip", &a),
            Row::measured("L1 STGI", &b),
        ];
        assert_eq!(
            table(&rows, false),
            "row                instructions     in L0  L0 exits\n\
             nested round trip         16648     16287         4\n\
             L1 STGI                      30         0         -\n"
        );
    }

    #[test]
    fn latency_rows_add_bare_qemu_and_the_ratio() {
        let a = Figure {
            what: "L1 VMLOAD".into(),
            total: 1400,
            l0: 1300,
            exits: Some(1),
        };
        let ours = [
            latency::Latency {
                what: "VMRUN".into(),
                max: 5189,
                min: 4508,
                avg: 4508,
            },
            latency::Latency {
                what: "VMEXIT".into(),
                max: 2519,
                min: 1837,
                avg: 1839,
            },
        ];
        let bare = [latency::Latency {
            what: "VMRUN".into(),
            max: 84,
            min: 50,
            avg: 81,
        }];
        let mut rows = vec![Row::measured("L1 VMLOAD", &a)];
        rows.extend(latency::rows("latency_run_exit", &ours, &bare));
        assert_eq!(
            table(&rows, true),
            "row                          instructions     in L0  L0 exits  bare QEMU    ratio\n\
             L1 VMLOAD                            1400      1300         1          -        -\n\
             latency_run_exit VMRUN avg           4508         -         -         81    55.7x\n\
             latency_run_exit VMEXIT avg          1839         -         -          -        -\n"
        );
    }
}
