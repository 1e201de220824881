//! Direct (PVH) boots of the kernel under QEMU TCG: the banner, and the two
//! deliberate failures the kernel offers on its command line.

use hv_tests::{boot_direct, contains_ignore_case, FAILURE_STATUS, SUCCESS_STATUS};

#[test]
fn direct_boot_prints_the_banner_and_succeeds() {
    let boot = boot_direct(&[]);
    boot.assert_banner();
    assert_eq!(boot.banner("boot: "), Some("boot: pvh"));
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
