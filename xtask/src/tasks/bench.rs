//! `cargo xtask bench`: the cost of exits, counted in instructions.
//!
//! The release kernel boots under TCG with `-icount shift=0,sleep=off`, so
//! the TSC advances exactly one tick per executed instruction and a run is
//! deterministic. The self-tests that time themselves print lines such as
//! `... round trip (...): N TSC ticks as the guest measures it, M in L0, E L0 exits`
//! (older guests print no exits); this command runs just those and reports
//! their figures as one table of instruction counts. (Cycles would only
//! mean something on real hardware.)

use crate::accel::Accel;
use crate::kernel::{self, Profile};
use crate::qemu::{self, Firmware, Medium, RunConfig};
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

/// The bench table: one row per `(row name, figure)`, columns
/// `instructions`, `in L0`, `L0 exits` (`-` when not reported).
pub fn table(rows: &[(&str, &Figure)]) -> String {
    let width = rows
        .iter()
        .map(|(name, _)| name.len())
        .chain(["row".len()])
        .max()
        .unwrap_or(0);
    let mut out = format!(
        "{:<width$}  {:>12}  {:>8}  {:>8}\n",
        "row", "instructions", "in L0", "L0 exits"
    );
    for (name, f) in rows {
        let exits = f.exits.map_or_else(|| "-".to_string(), |e| e.to_string());
        out += &format!("{name:<width$}  {:>12}  {:>8}  {exits:>8}\n", f.total, f.l0);
    }
    out
}

pub fn bench() -> Result<()> {
    let kernel = kernel::build_all(Profile::Release)?;
    host_tools::require(&[host_tools::QEMU])?;
    let mut tests: Vec<&str> = Vec::new();
    for (test, _) in MEASURED {
        if !tests.contains(&test) {
            tests.push(test);
        }
    }
    let config = RunConfig {
        medium: Medium::Direct {
            kernel,
            cmdline: vec![format!("tests={}", tests.join(","))],
        },
        firmware: Firmware::Bios,
        accel: Accel::Tcg,
        gdb: false,
        debugcon: workspace::target_dir().join("qemu-debugcon.log"),
        icount: true,
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
    println!(
        "bench: release kernel, QEMU TCG -icount shift=0,sleep=off (1 TSC tick = 1 instruction)"
    );
    let mut rows = Vec::new();
    for (test, label) in MEASURED {
        let Some(f) = figures.iter().find(|f| f.what.starts_with(label)) else {
            bail!("{test} printed no `{label}` figure");
        };
        rows.push((label, f));
    }
    print!("{}", table(&rows));
    Ok(())
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
        assert_eq!(
            table(&[("nested round trip", &a), ("L1 STGI", &b)]),
            "row                instructions     in L0  L0 exits\n\
             nested round trip         16648     16287         4\n\
             L1 STGI                      30         0         -\n"
        );
    }
}
