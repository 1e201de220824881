//! The Multiboot test guest (guest-stubs/src/bin/mbguest), an external
//! kernel judged from its COM1 lines: on bare QEMU TCG, loaded by QEMU's own
//! Multiboot loader (proves the guest and its checks right), and under the
//! hypervisor (`cargo xtask run --boot direct --guest`), where the same lines
//! must come out.

use hv_tests::{kernel, mbguest, run_dir};
use std::time::Duration;
use xtask::accel::Accel;
use xtask::guest::GuestArgs;
use xtask::mbguest::{bare_qemu_command, judge, X2apic, APPEND, CHECKS};
use xtask::qemu::{self, Firmware, Medium, RunConfig};
use xtask::runner::{self, Options, Outcome};

/// Nested TCG is slow: the guest's SVM check runs an L2 under L0.
const TIMEOUT: Duration = Duration::from_secs(180);

fn run(command: std::process::Command) -> Outcome {
    let outcome = runner::run(
        command,
        Options {
            timeout: Some(TIMEOUT),
            echo: false,
        },
    )
    .expect("running QEMU");
    // Shown by the harness when the test fails.
    println!(
        "--- status {:?}, serial output:\n{}\n--- qemu stderr:\n{}",
        outcome.status,
        outcome.serial.replace('\r', "").trim_end(),
        outcome.stderr
    );
    outcome
}

#[test]
fn mbguest_passes_on_bare_qemu() {
    let outcome = run(bare_qemu_command(mbguest()));
    // QEMU 7.2 TCG offers no x2APIC; later versions do.
    let passed = judge(&outcome.serial, outcome.status, X2apic::MaySkip)
        .unwrap_or_else(|why| panic!("mbguest on bare QEMU: {why} (output above)"));
    assert!(passed >= CHECKS.len());
}

#[test]
fn mbguest_passes_under_the_hypervisor() {
    let guest = GuestArgs {
        file: mbguest().to_path_buf(),
        append: APPEND.into(),
        mem_mib: 256,
        cpus: 1,
        modules: Vec::new(),
    };
    let config = RunConfig {
        medium: Medium::Direct {
            kernel: kernel().to_path_buf(),
            cmdline: guest.kernel_cmdline(&[]),
        },
        firmware: Firmware::Bios,
        accel: Accel::Tcg,
        gdb: false,
        debugcon: run_dir().join("qemu-debugcon.log"),
        icount: false,
        smp: qemu::DEFAULT_SMP,
    };
    let module = qemu::GuestModule {
        file: guest.file.clone(),
        memory_mib: guest.qemu_memory_mib(),
    };
    let outcome = run(qemu::command_with(&config, Some(&module)).expect("QEMU command"));
    // The hypervisor offers x2APIC: every check runs.
    judge(&outcome.serial, outcome.status, X2apic::Required)
        .unwrap_or_else(|why| panic!("mbguest under the hypervisor: {why} (output above)"));
}
