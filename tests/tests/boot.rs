//! Direct (PVH) boots of the kernel under QEMU TCG: the banner, and the two
//! deliberate failures the kernel offers on its command line, unknown
//! command-line words, and a CPU without SVM.

use hv_tests::{
    boot_direct, contains_ignore_case, kernel, run_dir, Boot, FAILURE_STATUS, SUCCESS_STATUS,
    TIMEOUT,
};
use xtask::accel::Accel;
use xtask::qemu::{self, Firmware, Medium, RunConfig};
use xtask::runner::{self, Options};
use xtask::verdict::{Verdict, NOTHING_RAN_STATUS};

/// The first non-empty serial line: the kernel's first words.
fn first_line(boot: &Boot) -> &str {
    boot.lines().find(|l| !l.trim().is_empty()).unwrap_or("")
}

#[test]
fn direct_boot_prints_the_banner_and_succeeds() {
    let boot = boot_direct(&[]);
    boot.assert_banner();
    assert_eq!(boot.banner("boot: "), Some("boot: pvh"));
    // The banner is the first thing the kernel prints.
    assert_eq!(first_line(&boot), "boot: pvh", "first line (serial above)");
    // -smp 2 in every QEMU run.
    assert_eq!(boot.banner("cpus: "), Some("cpus: 2"));
    boot.assert_status(SUCCESS_STATUS);
}

#[test]
fn page_fault_is_reported_and_fails() {
    let boot = boot_direct(&["fault=page"]);
    assert!(
        contains_ignore_case(&boot.serial, "page fault"),
        "no page fault report (serial output above)"
    );
    // The banner comes first, complete, before the fault fires.
    assert_eq!(first_line(&boot), "boot: pvh", "first line (serial above)");
    boot.assert_banner();
    let tsc = boot.serial.find("\ntsc: ").expect("tsc banner line");
    let fault = boot.serial.to_ascii_lowercase().find("page fault").unwrap();
    assert!(tsc < fault, "the fault report comes before the banner");
    // A failure verdict, not a success and not a triple fault (status 0).
    boot.assert_status(FAILURE_STATUS);
}

#[test]
fn panic_is_reported_and_fails() {
    let boot = boot_direct(&["fault=panic"]);
    assert!(
        boot.lines().any(|line| line.contains("panic")),
        "no panic line (serial output above)"
    );
    boot.assert_status(FAILURE_STATUS);
}

#[test]
fn unknown_command_line_words_are_warned_about() {
    let boot = boot_direct(&["tests=none", "frob", "colour=blue"]);
    for word in ["frob", "colour=blue"] {
        let warning = format!(
            "[WARN ] unknown command-line word {word:?} (known: log=, fault=, tests=, apic=, fuzz=)"
        );
        assert!(
            boot.lines().any(|l| l == warning),
            "no `{warning}` line (serial output above)"
        );
    }
    assert!(
        !boot.serial.contains("\"tests=none\""),
        "a known word was warned about"
    );
    // `tests=none` stays valid: no test, success.
    assert!(boot.lines().any(|l| l == "0 passed, 0 failed"));
    boot.assert_status(SUCCESS_STATUS);
}

/// Boots directly on a CPU without SVM (QEMU takes the last `-cpu`).
fn boot_without_svm(cmdline: &[&str]) -> Boot {
    let config = RunConfig {
        medium: Medium::Direct {
            kernel: kernel().to_path_buf(),
            cmdline: cmdline.iter().map(|w| w.to_string()).collect(),
        },
        firmware: Firmware::Bios,
        accel: Accel::Tcg,
        gdb: false,
        debugcon: run_dir().join("qemu-debugcon.log"),
        icount: false,
    };
    let mut command = qemu::command(&config).expect("QEMU command");
    command.args(["-cpu", "qemu64,-svm"]);
    let options = Options {
        timeout: Some(TIMEOUT),
        echo: false,
    };
    let outcome = runner::run(command, options).expect("running QEMU");
    let boot = Boot {
        label: format!("direct boot without SVM [{}]", cmdline.join(" ")),
        status: outcome.status,
        verdict: Verdict::of(&outcome),
        serial: outcome.serial.replace('\r', ""),
        qemu_stderr: outcome.stderr,
    };
    println!("{boot}");
    boot
}

#[test]
fn a_run_where_every_test_is_skipped_is_not_a_success() {
    let boot = boot_without_svm(&["tests=guest::cpuid"]);
    assert!(
        boot.lines()
            .any(|l| l.starts_with("svm: ") && l.contains("clear")),
        "the banner does not say SVM is missing (serial output above)"
    );
    let skipped = boot
        .lines()
        .filter(|l| l.starts_with("test ") && l.contains(" ... skipped (SVM unavailable: "))
        .count();
    assert_eq!(skipped, 2, "skip lines (serial output above)");
    assert!(
        boot.lines()
            .any(|l| l == "nothing ran: all 2 selected tests were skipped (exit status 37)"),
        "no `nothing ran` line (serial output above)"
    );
    assert_eq!(boot.verdict, Verdict::NothingRan);
    boot.assert_status(NOTHING_RAN_STATUS);
}
