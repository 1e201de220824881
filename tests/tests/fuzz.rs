//! The hostile-L1 fuzzer (`fuzz=SEED,ITERATIONS` on the kernel command
//! line) under QEMU TCG, as `cargo xtask test` runs it: a fixed seed, so a
//! failure replays with `cargo xtask fuzz --seed 1 --start I --iterations 1`.

use hv_tests::{boot_direct, Boot, FAILURE_STATUS, SUCCESS_STATUS};
use xtask::tasks::fuzz::{parse_boot, BootReport};

fn report(boot: &Boot) -> BootReport {
    parse_boot(&boot.serial)
}

/// The plumbing: the kernel runs the range, prints the histogram and the
/// fuzz line, and its verdict agrees with the failure count.
#[test]
fn fuzz_reports_its_count_and_verdict() {
    let boot = boot_direct(&["fuzz=1,40"]);
    let r = report(&boot);
    let (n, seed, k) = r
        .result
        .expect("no `fuzz: N iterations, seed S: K ...` line");
    assert_eq!((n, seed), (40, 1), "iterations and seed");
    assert!(
        !r.histogram.is_empty(),
        "no histogram (serial output above)"
    );
    let counted = r.failures.len() as u64 + r.mismatches.len() as u64;
    assert!(k >= counted.min(1), "K = {k} with {counted} failure lines");
    boot.assert_status(if k == 0 {
        SUCCESS_STATUS
    } else {
        FAILURE_STATUS
    });
}

/// A bad `fuzz=` value is refused, not run.
#[test]
fn a_bad_fuzz_word_fails() {
    let boot = boot_direct(&["fuzz=seven"]);
    assert!(boot
        .lines()
        .any(|l| l.starts_with("fuzz: cannot parse fuzz=seven")));
    boot.assert_status(FAILURE_STATUS);
}

/// The short fixed-seed fuzz: no hypervisor failure and QEMU survives.
#[test]
fn fixed_seed_fuzz_finds_no_hypervisor_failure() {
    let boot = boot_direct(&["fuzz=1,3000"]);
    let r = report(&boot);
    assert_eq!(
        r.result,
        Some((3000, 1, 0)),
        "the fuzz line (serial output above: FAILURE and MISMATCH lines have reproducers)"
    );
    boot.assert_status(SUCCESS_STATUS);
}
