//! Boots through Limine: the ISO and the USB disk image, each with BIOS
//! (SeaBIOS) and UEFI (OVMF), on four CPUs: Limine's MP response brings
//! every application processor into the hypervisor (each reports in with
//! SVM on, the banner counts four) and the `smp::` self-tests pass. Only
//! that group runs, so that four boots stay short (an OVMF boot alone takes
//! about 6 s under TCG). Needs `LIMINE_DIR`, which `cargo xtask test`
//! sets when it has a Limine; without one the test is reported as ignored
//! (never as passed) with the reason `cargo xtask test` passes in
//! `HV_LIMINE_UNAVAILABLE`.
//!
//! A libtest-mimic harness (`harness = false` in Cargo.toml): libtest's own
//! cannot decide at run time that a test was skipped.

use std::path::Path;

use hv_tests::{boot_smp, kernel, run_dir, Boot, SMP_TESTS, SUCCESS_STATUS};
use libtest_mimic::{Arguments, Completion, Trial};
use xtask::image::{self, Contents};
use xtask::qemu::{Firmware, Medium};
use xtask::{limine, ovmf};

/// QEMU's CPU count for every Limine boot.
const CPUS: u32 = 4;
/// The kernel command line baked into the images.
const CMDLINE: &str = "tests=smp::";

fn main() {
    let args = Arguments::from_args();
    let trial = Trial::ignorable_test("limine_boot", || match limine::dir_from_env() {
        // A panic inside the trial is its failure, with the message.
        Some(dir) => {
            limine_boot(&dir);
            Ok(Completion::Completed)
        }
        None => Ok(Completion::ignored_with(skip_reason())),
    });
    libtest_mimic::run(&args, vec![trial]).exit();
}

/// Why there is no `LIMINE_DIR`: as `cargo xtask test` found out, else the
/// plain fact.
fn skip_reason() -> String {
    std::env::var(limine::UNAVAILABLE_ENV)
        .ok()
        .filter(|why| !why.is_empty())
        .unwrap_or_else(|| {
            "LIMINE_DIR not set (`cargo xtask test` sets it when it has a Limine)".to_string()
        })
}

fn limine_boot(dir: &Path) {
    let limine = limine::from_dir(dir).unwrap_or_else(|e| panic!("LIMINE_DIR: {e}"));
    let ovmf = ovmf::locate().unwrap_or_else(|e| panic!("{e}"));

    let out = run_dir();
    let iso = out.join("hv.iso");
    let disk = out.join("hv.img");
    let cmdline = [CMDLINE.to_string()];
    let contents = Contents {
        limine: &limine,
        kernel: kernel(),
        cmdline: &cmdline,
    };
    image::build_iso(&contents, &iso).unwrap_or_else(|e| panic!("building the ISO: {e}"));
    image::build_disk(&contents, &disk).unwrap_or_else(|e| panic!("building the disk: {e}"));

    let uefi = |dir: &Path| Firmware::Uefi {
        code: ovmf.code.clone(),
        vars: ovmf.fresh_vars(dir).unwrap_or_else(|e| panic!("{e}")),
    };
    let boot = |label: &str, medium, firmware| boot_smp(label, medium, firmware, CPUS);
    let boots = [
        boot("ISO, BIOS", Medium::Cdrom(iso.clone()), Firmware::Bios),
        boot("ISO, UEFI", Medium::Cdrom(iso), uefi(&run_dir())),
        boot("disk, BIOS", Medium::Disk(disk.clone()), Firmware::Bios),
        boot("disk, UEFI", Medium::Disk(disk), uefi(&run_dir())),
    ];

    // Check every boot before failing, so one run shows all that is wrong.
    let failures: Vec<String> = boots.iter().filter_map(problem).collect();
    assert!(
        failures.is_empty(),
        "Limine boots failed (serial output above):\n{}",
        failures.join("\n")
    );
}

/// What is wrong with a Limine boot, if anything.
fn problem(boot: &Boot) -> Option<String> {
    let missing = boot.missing_banner_keys();
    let cpus = format!("cpus: {CPUS}");
    if boot.banner("boot: ") != Some("boot: limine") {
        Some(format!("{}: no `boot: limine` line", boot.label))
    } else if !missing.is_empty() {
        Some(format!("{}: no banner line for {missing:?}", boot.label))
    } else if boot.banner("cpus: ") != Some(cpus.as_str()) {
        Some(format!("{}: no `{cpus}` line", boot.label))
    } else if let Some(line) = missing_line(boot) {
        Some(format!("{}: no `{line}` line", boot.label))
    } else if boot.status != Some(SUCCESS_STATUS) {
        Some(format!("{}: {}", boot.label, boot.verdict))
    } else {
        None
    }
}

/// The first expected line the boot did not print: every application
/// processor left Limine's memory and reported in with SVM on, and every
/// `smp::` self-test passed.
fn missing_line(boot: &Boot) -> Option<String> {
    let aps = CPUS - 1;
    let moved = format!("[INFO ] limine: {aps} application processors moved to kernel memory");
    let online = (1..CPUS)
        .map(|cpu| format!("[INFO ] cpu{cpu}: online (apic id {cpu}), SVM on, host save area "));
    let passed = SMP_TESTS.iter().map(|name| format!("test {name} ... ok"));
    let total = format!("{} passed, 0 failed", SMP_TESTS.len());
    if !boot.lines().any(|l| l == moved) {
        return Some(moved);
    }
    if let Some(line) = online
        .into_iter()
        .find(|prefix| !boot.lines().any(|l| l.starts_with(prefix.as_str())))
    {
        return Some(format!("{line}..."));
    }
    passed
        .chain([total])
        .find(|line| !boot.lines().any(|l| l == line))
}
