//! The verdict of one kvm-unit-tests run, from its console output and how the
//! run ended.
//!
//! A kvm-unit-tests guest ends by writing a code to the isa-debug-exit port
//! 0xF4; QEMU (and our hypervisor, which mirrors it) exits with
//! `(code << 1) | 1`: 1 when every test passed, 3 when some failed, 77 when
//! all were skipped, 127 when the test aborted. Before exiting normally it
//! prints `SUMMARY: N tests, ...` (`report_summary()` in lib/report.c); a run
//! that never printed it did not finish its tests, whatever the status says.

use std::fmt;

/// QEMU status: every test passed.
pub const STATUS_PASS: i32 = 1;
/// QEMU status: some test failed.
pub const STATUS_FAIL: i32 = 3;
/// QEMU status: every test was skipped.
pub const STATUS_SKIP: i32 = 77;
/// QEMU status: the test aborted (`abort()`).
pub const STATUS_ABORT: i32 = 127;

/// What `report_summary()` prints first.
pub const SUMMARY: &str = "SUMMARY:";

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The process exited with this status.
    Exited(i32),
    /// A signal ended it (not our timeout).
    Signaled(i32),
    /// We killed it at the timeout.
    TimedOut,
}

/// A subtest's verdict under one L0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    Pass,
    Fail,
    Skip,
    /// Killed at `--timeout`.
    Timeout,
    /// The L0 (QEMU or the hypervisor) died or ended with a status that is
    /// no kvm-unit-tests verdict: a triple fault (status 0 under
    /// `-no-reboot`), the hypervisor's guest-death status, a signal, an
    /// unusable command line.
    Crash,
}

impl Verdict {
    /// The verdict of a run and, for anything but a plain PASS or SKIP, a
    /// short reason for a person.
    pub fn of(output: &str, end: End) -> (Verdict, Option<String>) {
        let summary = summary_line(output);
        match end {
            End::TimedOut => (Verdict::Timeout, Some("killed at the timeout".into())),
            End::Signaled(signal) => (Verdict::Crash, Some(format!("killed by signal {signal}"))),
            End::Exited(status @ (STATUS_PASS | STATUS_SKIP)) if summary.is_none() => (
                Verdict::Fail,
                Some(format!("status {status} but no `{SUMMARY}` line")),
            ),
            End::Exited(STATUS_PASS) => (Verdict::Pass, None),
            End::Exited(STATUS_SKIP) => (Verdict::Skip, summary.map(str::to_string)),
            End::Exited(STATUS_FAIL) => (
                Verdict::Fail,
                Some(summary.map_or_else(
                    || format!("status {STATUS_FAIL}, no `{SUMMARY}` line"),
                    str::to_string,
                )),
            ),
            End::Exited(STATUS_ABORT) => (
                Verdict::Fail,
                Some(format!("aborted (status {STATUS_ABORT})")),
            ),
            End::Exited(0) => (
                Verdict::Crash,
                Some("status 0: triple fault or reset".into()),
            ),
            End::Exited(status) => (
                Verdict::Crash,
                Some(format!(
                    "status {status}: {}",
                    hypervisor_status(status).unwrap_or("no kvm-unit-tests verdict")
                )),
            ),
        }
    }

    /// True for the verdicts that come from the guest itself: the L0 stayed
    /// up and the test ran to its own end.
    pub fn is_from_guest(self) -> bool {
        matches!(self, Verdict::Pass | Verdict::Fail | Verdict::Skip)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `{:<7}` in the table pads this.
        f.pad(match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "SKIP",
            Verdict::Timeout => "TIMEOUT",
            Verdict::Crash => "CRASH",
        })
    }
}

/// What our hypervisor's own statuses mean (crate::guest, crate::verdict).
fn hypervisor_status(status: i32) -> Option<&'static str> {
    Some(match status {
        crate::guest::GUEST_DIED_STATUS => "the guest died (see the hypervisor's report)",
        crate::guest::BAD_IMAGE_STATUS => "the hypervisor could not load the image",
        crate::verdict::FAILURE_STATUS => "the hypervisor failed",
        crate::verdict::NOTHING_RAN_STATUS => "the hypervisor found no usable SVM",
        _ => return None,
    })
}

/// The `SUMMARY: ...` line (trimmed), if the guest printed one at the start
/// of a line.
pub fn summary_line(output: &str) -> Option<&str> {
    output
        .lines()
        .map(|line| line.trim_matches(|c: char| c.is_whitespace()))
        .find(|line| line.starts_with(SUMMARY))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSED: &str = "SVM test: vmrun\r\nPASS: vmrun\r\nSUMMARY: 1 tests\r\n";
    const FAILED: &str = "FAIL: asid_zero\nSUMMARY: 1 tests, 1 unexpected failures\n";
    const SKIPPED: &str = "SKIP: next_rip (not supported)\nSUMMARY: 1 tests, 1 skipped\n";

    fn verdict(output: &str, end: End) -> Verdict {
        Verdict::of(output, end).0
    }

    #[test]
    fn statuses_with_a_summary_are_the_guests_verdict() {
        assert_eq!(verdict(PASSED, End::Exited(1)), Verdict::Pass);
        assert_eq!(verdict(FAILED, End::Exited(3)), Verdict::Fail);
        assert_eq!(verdict(SKIPPED, End::Exited(77)), Verdict::Skip);
        assert_eq!(
            Verdict::of(FAILED, End::Exited(3)).1.as_deref(),
            Some("SUMMARY: 1 tests, 1 unexpected failures")
        );
        assert_eq!(Verdict::of(PASSED, End::Exited(1)).1, None);
    }

    #[test]
    fn no_summary_is_never_a_pass_or_skip() {
        let output = "SVM test: vmrun\nPASS: vmrun\n";
        assert_eq!(verdict(output, End::Exited(1)), Verdict::Fail);
        assert_eq!(verdict("", End::Exited(77)), Verdict::Fail);
        assert_eq!(verdict(output, End::Exited(3)), Verdict::Fail);
        assert_eq!(
            Verdict::of("", End::Exited(1)).1.as_deref(),
            Some("status 1 but no `SUMMARY:` line")
        );
        // Mentioning the word mid-line is not the summary.
        assert_eq!(
            verdict("printf(\"SUMMARY: x\")\n", End::Exited(1)),
            Verdict::Fail
        );
    }

    #[test]
    fn abort_is_a_failure() {
        let (verdict, why) = Verdict::of("ABORT: x\n", End::Exited(127));
        assert_eq!(verdict, Verdict::Fail);
        assert_eq!(why.as_deref(), Some("aborted (status 127)"));
    }

    #[test]
    fn a_dead_l0_is_a_crash_even_after_a_summary() {
        for status in [0, 2, 33, 35, 37, 39, 41, 101, 124, 126, 255] {
            assert_eq!(
                verdict(PASSED, End::Exited(status)),
                Verdict::Crash,
                "{status}"
            );
            assert_eq!(verdict("", End::Exited(status)), Verdict::Crash, "{status}");
        }
        assert_eq!(verdict(PASSED, End::Signaled(9)), Verdict::Crash);
        assert_eq!(
            Verdict::of("", End::Exited(0)).1.as_deref(),
            Some("status 0: triple fault or reset")
        );
        assert_eq!(
            Verdict::of("", End::Exited(39)).1.as_deref(),
            Some("status 39: the guest died (see the hypervisor's report)")
        );
        assert_eq!(
            Verdict::of("", End::Exited(2)).1.as_deref(),
            Some("status 2: no kvm-unit-tests verdict")
        );
    }

    #[test]
    fn the_timeout_wins() {
        assert_eq!(verdict(PASSED, End::TimedOut), Verdict::Timeout);
    }

    #[test]
    fn only_guest_verdicts_count_as_the_l0_holding_up() {
        assert!(Verdict::Pass.is_from_guest());
        assert!(Verdict::Fail.is_from_guest());
        assert!(Verdict::Skip.is_from_guest());
        assert!(!Verdict::Timeout.is_from_guest());
        assert!(!Verdict::Crash.is_from_guest());
    }

    #[test]
    fn shows_padded_words() {
        assert_eq!(format!("[{:<7}]", Verdict::Pass), "[PASS   ]");
        assert_eq!(Verdict::Timeout.to_string(), "TIMEOUT");
    }
}
