//! Every CPU runs the hypervisor: a direct boot on four CPUs brings up the
//! three application processors (each reports in, SVM on), the banner
//! counts four, and the `smp::` self-tests pass.

use hv_tests::{boot_direct_smp, SUCCESS_STATUS};

#[test]
fn four_cpus_all_run_the_hypervisor() {
    let boot = boot_direct_smp(&["tests=smp::"], 4);
    boot.assert_banner();
    assert_eq!(
        boot.banner("cpus: "),
        Some("cpus: 4"),
        "serial output above"
    );
    for cpu in 1..4 {
        let online = format!("[INFO ] cpu{cpu}: online (apic id {cpu}), SVM on, host save area ");
        assert!(
            boot.lines().any(|l| l.starts_with(&online)),
            "cpu{cpu} did not report in (`{online}...`; serial output above)"
        );
        let tsc = format!("[INFO ] smp: cpu{cpu}: TSC offset to cpu0 ");
        assert!(
            boot.lines().any(|l| l.starts_with(&tsc)),
            "no TSC offset for cpu{cpu} (serial output above)"
        );
    }
    for name in hv_tests::SMP_TESTS {
        let line = format!("test {name} ... ok");
        assert!(boot.lines().any(|l| l == line), "no `{line}` line");
    }
    let total = format!("{} passed, 0 failed", hv_tests::SMP_TESTS.len());
    assert!(boot.lines().any(|l| l == total));
    boot.assert_status(SUCCESS_STATUS);
}

#[test]
fn one_cpu_still_boots() {
    let boot = boot_direct_smp(&["tests=smp::"], 1);
    assert_eq!(
        boot.banner("cpus: "),
        Some("cpus: 1"),
        "serial output above"
    );
    // The two-vCPU guests need a second CPU.
    assert!(boot
        .lines()
        .any(|l| l == "test smp::vcpu_ipi ... skipped (needs 2 CPUs, 1 online)"));
    boot.assert_status(SUCCESS_STATUS);
}

/// A fault on an application processor is reported, names that CPU (its
/// own IST stack takes the double fault of a stack overflow) and fails.
#[test]
fn faults_on_an_application_processor_name_it() {
    for (word, report) in [
        ("fault=ap-page", "FATAL: cpu1: EXCEPTION: page fault"),
        ("fault=ap-stack", "FATAL: cpu1: EXCEPTION: double fault"),
        ("fault=ap-panic", "panic on cpu1 at "),
    ] {
        let boot = boot_direct_smp(&[word], 2);
        assert!(
            boot.lines().any(|l| l.starts_with(report)),
            "{word}: no `{report}` line (serial output above)"
        );
        boot.assert_status(hv_tests::FAILURE_STATUS);
    }
}
