//! The kernel's guest self-tests under QEMU TCG: every `guest::*` test
//! reports `ok`, the totals line agrees, and the command line selects tests.

use hv_tests::{boot_direct, Boot, SUCCESS_STATUS};

const GUEST_TESTS: &[&str] = &[
    "guest::cpuid",
    "guest::rdmsr_unknown_gp",
    "guest::msr_passthrough",
    "guest::console",
    "guest::hlt",
    "guest::vmmcall",
    "guest::page_fault",
    "guest::triple_fault",
    "guest::npf_outside_memory",
    "guest::debug_exit_blocked",
];

/// `(name, verdict)` of every `test <name> ... <verdict>` line.
fn results(boot: &Boot) -> Vec<(String, String)> {
    boot.lines()
        .filter_map(|l| l.strip_prefix("test "))
        .filter_map(|l| l.split_once(" ... "))
        .map(|(name, verdict)| (name.to_string(), verdict.to_string()))
        .collect()
}

#[test]
fn every_guest_self_test_passes() {
    let boot = boot_direct(&["tests=guest::"]);
    let results = results(&boot);
    for name in GUEST_TESTS {
        let verdict = results
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str());
        assert_eq!(verdict, Some("ok"), "{name} (serial output above)");
    }
    assert_eq!(
        results.len(),
        GUEST_TESTS.len(),
        "unexpected tests: {results:?}"
    );
    let totals = format!("{} passed, 0 failed", GUEST_TESTS.len());
    assert!(boot.lines().any(|l| l == totals), "no `{totals}` line");
    // Guest console output arrives with its prefix.
    assert!(boot
        .lines()
        .any(|l| l == "[guest guest::console] hello from the guest console"));
    boot.assert_status(SUCCESS_STATUS);
}

#[test]
fn the_command_line_selects_tests_by_prefix() {
    let boot = boot_direct(&["tests=guest::hlt,guest::triple"]);
    let names: Vec<_> = results(&boot).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["guest::hlt", "guest::triple_fault"]);
    assert!(boot.lines().any(|l| l == "2 passed, 0 failed"));
    boot.assert_status(SUCCESS_STATUS);
}
