//! What a QEMU run's end means.
//!
//! The kernel writes 0x10 (success), 0x11 (failure) or 0x12 (nothing ran:
//! every self-test was skipped) to isa-debug-exit, and QEMU exits with
//! `(value << 1) | 1`: 33, 35 or 37. With `-no-reboot` a triple
//! fault or reset ends QEMU with status 0, so 0 is a failure, never success.

use std::fmt;
use std::time::Duration;

use crate::runner::Outcome;

/// QEMU's exit status when the kernel reports success.
pub const SUCCESS_STATUS: i32 = (0x10 << 1) | 1;
/// QEMU's exit status when the kernel reports failure.
pub const FAILURE_STATUS: i32 = (0x11 << 1) | 1;
/// QEMU's exit status when nothing ran: every selected test was skipped (no
/// usable SVM), mirroring `ExitCode::NothingRan` (0x12) in hv/src/arch/port.rs.
pub const NOTHING_RAN_STATUS: i32 = (0x12 << 1) | 1;

/// The meaning of a run's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Success,
    KernelFailure,
    /// The kernel ran no test: every selected one was skipped (no usable SVM).
    NothingRan,
    /// Triple fault or reset (status 0 under `-no-reboot`).
    Reset,
    TimedOut(Duration),
    /// QEMU failed by itself (bad option, missing file) or some other status.
    UnexpectedStatus(i32),
    Signal(i32),
}

impl Verdict {
    pub fn of(outcome: &Outcome) -> Self {
        if let Some(timeout) = outcome.timed_out {
            return Verdict::TimedOut(timeout);
        }
        match (outcome.status, outcome.signal) {
            (Some(SUCCESS_STATUS), _) => Verdict::Success,
            (Some(FAILURE_STATUS), _) => Verdict::KernelFailure,
            (Some(NOTHING_RAN_STATUS), _) => Verdict::NothingRan,
            (Some(0), _) => Verdict::Reset,
            (Some(status), _) => Verdict::UnexpectedStatus(status),
            (None, Some(signal)) => Verdict::Signal(signal),
            // An exit with neither code nor signal does not happen on Unix.
            (None, None) => Verdict::UnexpectedStatus(-1),
        }
    }

    pub fn is_success(self) -> bool {
        self == Verdict::Success
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Success => write!(f, "kernel reported success (qemu status {SUCCESS_STATUS})"),
            Verdict::KernelFailure => {
                write!(f, "kernel reported failure (qemu status {FAILURE_STATUS})")
            }
            Verdict::NothingRan => write!(
                f,
                "nothing ran: every self-test was skipped (no SVM) (qemu status {NOTHING_RAN_STATUS})"
            ),
            Verdict::Reset => write!(f, "guest triple-faulted or reset (qemu status 0)"),
            Verdict::TimedOut(t) => write!(
                f,
                "no verdict from the kernel within {} s; QEMU killed (--timeout)",
                t.as_secs_f64()
            ),
            Verdict::UnexpectedStatus(status) => write!(
                f,
                "qemu exited with status {status}, which is no kernel verdict (see QEMU's messages)"
            ),
            Verdict::Signal(signal) => write!(f, "qemu was killed by signal {signal}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(status: i32) -> Outcome {
        Outcome {
            status: Some(status),
            ..Outcome::default()
        }
    }

    #[test]
    fn statuses_map_to_verdicts() {
        assert_eq!(SUCCESS_STATUS, 33);
        assert_eq!(FAILURE_STATUS, 35);
        assert_eq!(Verdict::of(&exited(33)), Verdict::Success);
        assert_eq!(Verdict::of(&exited(35)), Verdict::KernelFailure);
        assert_eq!(NOTHING_RAN_STATUS, 37);
        assert_eq!(Verdict::of(&exited(37)), Verdict::NothingRan);
        assert_eq!(Verdict::of(&exited(0)), Verdict::Reset);
        assert_eq!(NOTHING_RAN_STATUS, 37);
        assert_eq!(Verdict::of(&exited(37)), Verdict::NothingRan);
        assert_eq!(Verdict::of(&exited(1)), Verdict::UnexpectedStatus(1));
    }

    #[test]
    fn only_33_is_success() {
        for status in [0, 1, 35, 37, 255] {
            assert!(!Verdict::of(&exited(status)).is_success());
        }
    }

    #[test]
    fn timeout_wins_over_status() {
        let outcome = Outcome {
            timed_out: Some(Duration::from_secs(20)),
            ..Outcome::default()
        };
        assert_eq!(
            Verdict::of(&outcome).to_string(),
            "no verdict from the kernel within 20 s; QEMU killed (--timeout)"
        );
    }

    #[test]
    fn wording_matches_the_documented_lines() {
        assert_eq!(
            Verdict::KernelFailure.to_string(),
            "kernel reported failure (qemu status 35)"
        );
        assert_eq!(
            Verdict::of(&exited(37)).to_string(),
            "nothing ran: every self-test was skipped (no SVM) (qemu status 37)"
        );
        assert_eq!(
            Verdict::Reset.to_string(),
            "guest triple-faulted or reset (qemu status 0)"
        );
    }
}
