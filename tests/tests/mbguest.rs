//! The Multiboot test guest (guest-stubs/src/bin/mbguest) on bare QEMU TCG,
//! loaded by QEMU's own Multiboot loader: proves the guest and its checks
//! right, so that a failure of the same guest under the hypervisor (`cargo
//! xtask test`, step "multiboot guest under the hypervisor") is the
//! hypervisor's.

use hv_tests::{mbguest, TIMEOUT};
use xtask::mbguest::{bare_qemu_command, judge, X2apic, CHECKS};
use xtask::runner::{self, Options};

#[test]
fn mbguest_passes_on_bare_qemu() {
    let outcome = runner::run(
        bare_qemu_command(mbguest()),
        Options {
            timeout: Some(TIMEOUT),
            echo: false,
        },
    )
    .expect("running QEMU");
    let serial = outcome.serial.replace('\r', "");
    // Shown by the harness when the test fails.
    println!(
        "--- serial output:\n{}\n--- qemu stderr:\n{}",
        serial.trim_end(),
        outcome.stderr
    );
    // QEMU 7.2 TCG offers no x2APIC; later versions do.
    let passed = judge(&serial, outcome.status, X2apic::MaySkip)
        .unwrap_or_else(|why| panic!("mbguest on bare QEMU: {why} (output above)"));
    assert!(passed >= CHECKS.len());
}
