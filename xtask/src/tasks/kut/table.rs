//! The side-by-side table of `cargo xtask kut`: one line per subtest
//! (`name  ours  qemu`, aligned), then one totals line per column.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use super::verdict::Verdict;

/// Width of a verdict column (`TIMEOUT`).
const VERDICT_WIDTH: usize = 7;

/// One subtest's results.
#[derive(Debug, Clone, PartialEq)]
pub struct Row<'a> {
    pub name: &'a str,
    pub ours: Verdict,
    /// `None` without `--compare`.
    pub qemu: Option<Verdict>,
    /// Wall time of the run under our hypervisor.
    pub ours_time: Duration,
    /// What the hypervisor said about the run (e.g. its exit counts), when
    /// it said something.
    pub ours_note: Option<String>,
}

/// The width of the name column for these subtest names.
pub fn name_width<'a>(names: impl IntoIterator<Item = &'a str>) -> usize {
    names
        .into_iter()
        .map(|n| n.chars().count())
        .fold("subtest".len(), usize::max)
}

/// The column headings, for subtest names up to `name_width` characters.
pub fn header(name_width: usize, compare: bool) -> String {
    let mut line = format!("{:<name_width$}  {:<VERDICT_WIDTH$}", "subtest", "ours");
    if compare {
        line.push_str(&format!("  {:<VERDICT_WIDTH$}", "qemu"));
    }
    line.push_str("  ours time");
    line
}

/// One row: `name  ours  qemu  12.3 s  note`.
pub fn row(row: &Row, name_width: usize) -> String {
    let mut line = format!("{:<name_width$}  {:<VERDICT_WIDTH$}", row.name, row.ours);
    if let Some(qemu) = row.qemu {
        line.push_str(&format!("  {qemu:<VERDICT_WIDTH$}"));
    }
    line.push_str(&format!("  {:>7.1} s", row.ours_time.as_secs_f64()));
    if let Some(note) = &row.ours_note {
        line.push_str("  ");
        line.push_str(note);
    }
    line
}

/// How many runs of one column ended with each verdict.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals(BTreeMap<Verdict, usize>);

impl Totals {
    pub fn of(verdicts: impl IntoIterator<Item = Verdict>) -> Self {
        let mut counts = BTreeMap::new();
        for verdict in verdicts {
            *counts.entry(verdict).or_insert(0) += 1;
        }
        Totals(counts)
    }

    pub fn count(&self, verdict: Verdict) -> usize {
        self.0.get(&verdict).copied().unwrap_or(0)
    }
}

/// `N passed, N failed, N skipped`: TIMEOUT and CRASH count as failed (the
/// test did not pass) and are named after it when there are any.
impl fmt::Display for Totals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let timeouts = self.count(Verdict::Timeout);
        let crashes = self.count(Verdict::Crash);
        let failed = self.count(Verdict::Fail) + timeouts + crashes;
        write!(
            f,
            "{} passed, {failed} failed, {} skipped",
            self.count(Verdict::Pass),
            self.count(Verdict::Skip)
        )?;
        let mut why = Vec::new();
        if timeouts > 0 {
            why.push(format!("{timeouts} timed out"));
        }
        if crashes > 0 {
            why.push(format!("{crashes} crashed"));
        }
        if !why.is_empty() {
            write!(f, " (of the failed: {})", why.join(", "))?;
        }
        write!(f, " of {}", self.0.values().sum::<usize>())
    }
}

/// The totals lines: `ours: ...` and, with `--compare`, `qemu: ...`.
pub fn totals(rows: &[Row]) -> Vec<String> {
    let mut lines = vec![format!("ours: {}", Totals::of(rows.iter().map(|r| r.ours)))];
    if rows.iter().any(|r| r.qemu.is_some()) {
        lines.push(format!(
            "qemu: {}",
            Totals::of(rows.iter().filter_map(|r| r.qemu))
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Row<'static>> {
        vec![
            Row {
                name: "vmrun",
                ours: Verdict::Pass,
                qemu: Some(Verdict::Pass),
                ours_time: Duration::from_millis(1234),
                ours_note: None,
            },
            Row {
                name: "asid_zero",
                ours: Verdict::Crash,
                qemu: Some(Verdict::Fail),
                ours_time: Duration::from_secs(61),
                ours_note: Some("1200 exits".into()),
            },
            Row {
                name: "next_rip",
                ours: Verdict::Timeout,
                qemu: Some(Verdict::Skip),
                ours_time: Duration::from_secs(120),
                ours_note: None,
            },
        ]
    }

    #[test]
    fn rows_line_up_under_the_header() {
        let rows = sample();
        let width = 9;
        let lines: Vec<String> = std::iter::once(header(width, true))
            .chain(rows.iter().map(|r| row(r, width)))
            .collect();
        assert_eq!(
            lines,
            [
                "subtest    ours     qemu     ours time",
                "vmrun      PASS     PASS         1.2 s",
                "asid_zero  CRASH    FAIL        61.0 s  1200 exits",
                "next_rip   TIMEOUT  SKIP       120.0 s",
            ]
        );
    }

    #[test]
    fn the_name_column_fits_the_longest_name_and_the_heading() {
        assert_eq!(name_width(["vmrun", "asid_zero"]), 9);
        assert_eq!(name_width(["nmi"]), "subtest".len());
    }

    #[test]
    fn without_compare_there_is_no_qemu_column() {
        let mut only = sample()[0].clone();
        only.qemu = None;
        assert_eq!(header(7, false), "subtest  ours     ours time");
        assert_eq!(row(&only, 7), "vmrun    PASS         1.2 s");
        assert_eq!(
            totals(&[only]),
            ["ours: 1 passed, 0 failed, 0 skipped of 1"]
        );
    }

    #[test]
    fn totals_count_timeouts_and_crashes_as_failed() {
        assert_eq!(
            totals(&sample()),
            [
                "ours: 1 passed, 2 failed, 0 skipped (of the failed: 1 timed out, 1 crashed) of 3",
                "qemu: 1 passed, 1 failed, 1 skipped of 3",
            ]
        );
        assert_eq!(
            Totals::of([]).to_string(),
            "0 passed, 0 failed, 0 skipped of 0"
        );
    }
}
