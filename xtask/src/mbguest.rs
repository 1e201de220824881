//! The Multiboot test guest (guest-stubs/src/bin/mbguest): an external
//! kernel run on bare QEMU (which proves the guest right) and under the
//! hypervisor (`cargo xtask run --boot direct --guest`), judged the same way
//! from its COM1 lines.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::kernel::Profile;
use crate::workspace;

/// The words after the file name; the guest checks they arrive verbatim
/// (guest-stubs/src/bin/mbguest/multiboot.rs, EXPECTED_ARGS).
pub const APPEND: &str = "mbguest a b";

/// QEMU's status for the guest's exit code 0 (all passed): `(0 << 1) | 1`.
pub const PASS_STATUS: i32 = 1;

/// Every check the guest prints, in order, except the x2APIC group.
pub const CHECKS: [&str; 19] = [
    "multiboot entry state",
    "multiboot bss zeroed",
    "long mode",
    "multiboot memory",
    "multiboot memory map",
    "multiboot cmdline",
    "fw_cfg signature",
    "fw_cfg ram size",
    "fw_cfg cpu count",
    "fw_cfg key 0x11",
    "com1 lsr",
    "pic masks",
    "unassigned ports",
    "apic base",
    "xapic registers",
    "xapic timer oneshot",
    "xapic self ipi",
    "svm l2 apic mmio",
    "no stray interrupts",
];

/// The x2APIC checks, run when CPUID.1:ECX[21] is set; without it the guest
/// prints one `test x2apic ... skipped (...)` line instead.
pub const X2APIC_CHECKS: [&str; 5] = [
    "x2apic enable",
    "x2apic timer oneshot",
    "x2apic self ipi",
    "x2apic self ipi register",
    "x2apic back to xapic",
];

/// The line the guest prints without x2APIC (prefix; the reason follows).
const X2APIC_SKIPPED: &str = "test x2apic ... skipped (";

/// Where `cargo build -p guest-stubs` leaves the guest.
pub fn image_path(profile: Profile, target_dir: &Path) -> PathBuf {
    target_dir
        .join(workspace::KERNEL_TARGET)
        .join(profile.dir_name())
        .join("mbguest")
}

/// Bare QEMU TCG with the guest as `-kernel` (QEMU's own Multiboot loader),
/// as kvm-unit-tests is run: 256 MiB, one CPU, COM1 on stdout.
pub fn bare_qemu_command(image: &Path) -> Command {
    let mut cmd = Command::new(crate::qemu::PROGRAM);
    cmd.args([
        "-accel", "tcg", "-cpu", "max,+svm", "-m", "256", "-smp", "1",
    ])
    .args(["-nographic", "-serial", "stdio", "-monitor", "none"])
    .args(["-display", "none", "-no-reboot"])
    .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
    .arg("-kernel")
    .arg(image)
    .args(["-append", APPEND]);
    cmd
}

/// Where a run may skip the x2APIC group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum X2apic {
    /// It must run (the hypervisor offers x2APIC).
    Required,
    /// A CPU without it may skip the group (QEMU 7.2 TCG has no x2APIC).
    MaySkip,
}

/// Judges a run from its output: every check's line says `ok` (the x2APIC
/// group may be skipped as a whole if allowed), nothing failed, the totals
/// line agrees, and QEMU's status (when known) is [`PASS_STATUS`]. Returns
/// the number of checks passed.
pub fn judge(serial: &str, status: Option<i32>, x2apic: X2apic) -> Result<usize, String> {
    let lines: Vec<&str> = serial.lines().map(|l| l.trim_end_matches('\r')).collect();
    let failed: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("test ") && !l.ends_with(" ... ok"))
        .filter(|l| !(x2apic == X2apic::MaySkip && l.starts_with(X2APIC_SKIPPED)))
        .collect();
    if !failed.is_empty() {
        return Err(format!("not ok: {}", failed.join(" | ")));
    }
    let x2apic_skipped = lines.iter().any(|l| l.starts_with(X2APIC_SKIPPED));
    let x2apic_checks: &[&str] = if x2apic_skipped { &[] } else { &X2APIC_CHECKS };
    let mut passed = 0;
    for name in CHECKS.iter().chain(x2apic_checks) {
        let line = format!("test {name} ... ok");
        if !lines.contains(&line.as_str()) {
            return Err(format!("no `{line}` line"));
        }
        passed += 1;
    }
    let oks = lines.iter().filter(|l| l.ends_with(" ... ok")).count();
    let totals = format!("{oks} passed, 0 failed");
    if !lines.contains(&totals.as_str()) {
        return Err(format!("no `{totals}` line"));
    }
    if oks != passed {
        return Err(format!("{oks} checks passed, {passed} expected"));
    }
    match status {
        Some(PASS_STATUS) | None => Ok(passed),
        Some(other) => Err(format!("QEMU status {other}, expected {PASS_STATUS}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(x2apic: bool, change: impl Fn(String) -> String) -> String {
        let mut names: Vec<&str> = CHECKS.to_vec();
        let skip_line = "test x2apic ... skipped (no x2APIC in CPUID.1:ECX[21])".to_string();
        let mut lines = vec!["SeaBIOS (version 1.16.2)\r".to_string()];
        if x2apic {
            names.extend(X2APIC_CHECKS);
        }
        lines.extend(names.iter().map(|n| change(format!("test {n} ... ok"))));
        if !x2apic {
            lines.push(skip_line);
            lines.push("1 skipped".into());
        }
        lines.push(format!("{} passed, 0 failed", names.len()));
        lines.join("\n")
    }

    #[test]
    fn a_full_run_passes() {
        assert_eq!(
            judge(&output(true, |l| l), Some(1), X2apic::Required),
            Ok(24)
        );
        assert_eq!(judge(&output(true, |l| l), None, X2apic::MaySkip), Ok(24));
    }

    #[test]
    fn the_x2apic_group_may_be_skipped_only_when_allowed() {
        assert_eq!(
            judge(&output(false, |l| l), Some(1), X2apic::MaySkip),
            Ok(19)
        );
        let err = judge(&output(false, |l| l), Some(1), X2apic::Required).unwrap_err();
        assert!(err.contains("x2apic ... skipped"), "{err}");
    }

    #[test]
    fn a_failed_check_fails_the_run() {
        let out = output(true, |l| {
            l.replace("com1 lsr ... ok", "com1 lsr ... FAILED (LSR 0xff)")
        });
        let err = judge(&out, Some(3), X2apic::Required).unwrap_err();
        assert!(err.contains("test com1 lsr ... FAILED (LSR 0xff)"), "{err}");
    }

    #[test]
    fn a_missing_check_fails_the_run() {
        let out = output(true, |l| l.replace("test svm l2 apic mmio ... ok", ""));
        let err = judge(&out, Some(1), X2apic::Required).unwrap_err();
        assert!(err.contains("test svm l2 apic mmio ... ok"), "{err}");
    }

    #[test]
    fn totals_and_status_must_agree() {
        let out = output(true, |l| l).replace("24 passed", "25 passed");
        assert!(judge(&out, Some(1), X2apic::Required).is_err());
        let err = judge(&output(true, |l| l), Some(3), X2apic::Required).unwrap_err();
        assert!(err.contains("status 3"), "{err}");
        // A run killed before the totals line.
        let cut = output(true, |l| l).replace("24 passed, 0 failed", "");
        assert!(judge(&cut, None, X2apic::Required).is_err());
    }
}
