//! The two ways to run one kvm-unit-tests subtest: under our hypervisor
//! ("ours") and under bare QEMU TCG ("qemu"). Each builds a command whose
//! stdout is the guest's COM1 and whose exit status is QEMU's.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::qemu;

/// One subtest run: which image, which subtest, what machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guest<'a> {
    /// A built `x86/*.flat` (Multiboot 1, ELF32).
    pub flat: &'a Path,
    /// The subtest's name as the test matches it (spaces as `_`).
    pub subtest: &'a str,
    pub smp: u32,
    pub mem_mib: u32,
}

/// The guest's Multiboot command line as bare QEMU passes it: the file name
/// first (the test drops it as argv\[0\]), then the subtest filter.
pub fn multiboot_cmdline(guest: &Guest) -> String {
    let file = guest.flat.file_name().map_or_else(
        || guest.flat.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    );
    format!("{file} {}", guest.subtest)
}

/// Bare QEMU TCG as the L0, as kvm-unit-tests' own runner uses it, plus
/// `-no-reboot` so that a triple fault ends the run (status 0) instead of
/// rebooting into the test again until the timeout.
pub fn bare_command(guest: &Guest) -> Command {
    let mut cmd = Command::new(qemu::PROGRAM);
    cmd.args(["-accel", "tcg", "-cpu", "max,+svm"])
        .arg("-m")
        .arg(guest.mem_mib.to_string())
        .arg("-smp")
        .arg(guest.smp.to_string())
        .args(["-display", "none", "-serial", "stdio", "-monitor", "none"])
        .args([
            "-no-reboot",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=4",
        ])
        .arg("-kernel")
        .arg(guest.flat)
        .arg("-append")
        .arg(multiboot_cmdline(guest));
    cmd
}

/// What the "ours" runs share: built once before the first run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ours {
    /// The hypervisor kernel ELF, already built.
    pub kernel: PathBuf,
    /// Whether `kernel` is the release build.
    pub release: bool,
    /// This xtask, for the `run --guest` front end.
    pub xtask: PathBuf,
}

/// Our hypervisor as the L0, running the subtest's image as its guest.
///
/// This is the one place that knows how: today it calls this xtask's own
/// `run --boot direct --no-build --guest FILE --append WORDS --guest-mem MiB`
/// (issue 10 item 1), which prints the guest's COM1 verbatim and exits with
/// QEMU's status (its own statuses for a dead guest, a bad image, a failed
/// xtask are none of kvm-unit-tests' and so CRASH). The kernel is built
/// once before the first run, hence `--no-build`. With the `run --guest`
/// QEMU command builder at hand (`qemu::command_with` and the guest's
/// kernel command line), this can spawn QEMU directly with `self.kernel`
/// instead: no second xtask per run.
///
/// The hypervisor puts the file name in front of the words itself (the
/// Multiboot command line's first word is the file name), so `--append`
/// carries the subtest name only. `--smp` is not passed on: the hypervisor
/// has no option for the guest's CPU count yet.
pub fn ours_command(ours: &Ours, guest: &Guest) -> Command {
    let mut cmd = Command::new(&ours.xtask);
    cmd.args(["run", "--boot", "direct", "--accel", "tcg", "--no-build"]);
    if ours.release {
        cmd.arg("--release");
    }
    cmd.arg("--guest")
        .arg(guest.flat)
        .arg("--append")
        .arg(guest.subtest)
        .arg("--guest-mem")
        .arg(guest.mem_mib.to_string());
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cmd: &Command) -> Vec<String> {
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    fn guest() -> Guest<'static> {
        Guest {
            flat: Path::new("/kut/x86/svm.flat"),
            subtest: "vmrun_intercept_check",
            smp: 1,
            mem_mib: 256,
        }
    }

    #[test]
    fn bare_qemu_is_the_reference_command() {
        let cmd = bare_command(&guest());
        assert_eq!(cmd.get_program(), "qemu-system-x86_64");
        assert_eq!(
            args(&cmd).join(" "),
            "-accel tcg -cpu max,+svm -m 256 -smp 1 -display none -serial stdio \
             -monitor none -no-reboot -device isa-debug-exit,iobase=0xf4,iosize=4 \
             -kernel /kut/x86/svm.flat -append svm.flat vmrun_intercept_check"
        );
        assert_eq!(
            args(&cmd).last().map(String::as_str),
            Some("svm.flat vmrun_intercept_check")
        );
    }

    #[test]
    fn ours_runs_the_same_image_and_subtest() {
        let ours = Ours {
            kernel: "/t/hv".into(),
            release: true,
            xtask: "/t/xtask".into(),
        };
        let cmd = ours_command(&ours, &guest());
        assert_eq!(cmd.get_program(), "/t/xtask");
        assert_eq!(
            args(&cmd).join(" "),
            "run --boot direct --accel tcg --no-build --release --guest /kut/x86/svm.flat \
             --append vmrun_intercept_check --guest-mem 256"
        );
    }
}
