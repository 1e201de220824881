//! `cargo xtask bench`: the cost of exits, counted in instructions.
//!
//! The release kernel boots under TCG with `-icount shift=0,sleep=off`, so
//! the TSC advances exactly one tick per executed instruction and a run is
//! deterministic. The self-tests that time themselves print lines such as
//! `... round trip (...): N TSC ticks as the guest measures it, M in L0`;
//! this command runs just those and reports their figures as instruction
//! counts. (Cycles would only mean something on real hardware.)

use crate::accel::Accel;
use crate::kernel::{self, Profile};
use crate::qemu::{self, Firmware, Medium, RunConfig};
use crate::verdict::Verdict;
use crate::{bail, host_tools, runner, workspace, Result};

/// The self-tests that measure, and what they measure.
const MEASURED: [(&str, &str); 3] = [
    ("guest::vmmcall", "hypercall round trip"),
    ("nested::vmrun_vmmcall_roundtrip", "nested round trip"),
    ("guest::cr3_write_checked", "MOV CR3 round trip"),
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
}

/// Parses `<what>: <N> TSC ticks as ... measures it, <M> in L0` from a
/// console line (after any `[guest ...] ` prefix).
pub fn parse_figure(line: &str) -> Option<Figure> {
    let body = line.split_once("] ").map_or(line, |(_, rest)| rest);
    let (what, rest) = body.split_once(": ")?;
    let (total, rest) = rest.split_once(" TSC ticks")?;
    let l0 = rest.split_once(", ")?.1.strip_suffix(" in L0")?;
    Some(Figure {
        what: what.to_string(),
        total: total.trim().parse().ok()?,
        l0: l0.trim().parse().ok()?,
    })
}

pub fn bench() -> Result<()> {
    let kernel = kernel::build_all(Profile::Release)?;
    host_tools::require(&[host_tools::QEMU])?;
    let tests: Vec<&str> = MEASURED.iter().map(|(t, _)| *t).collect();
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
    for (test, label) in MEASURED {
        let Some(f) = figures.iter().find(|f| f.what.starts_with(label)) else {
            bail!("{test} printed no `{label}` figure");
        };
        println!(
            "  {:<60} {:>8} instructions, {:>8} in L0",
            f.what, f.total, f.l0
        );
    }
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
                l0: 16287
            })
        );
        assert_eq!(parse_figure("test guest::vmmcall ... ok"), None);
        assert_eq!(parse_figure("x: many TSC ticks as y, 3 in L0"), None);
    }
}
