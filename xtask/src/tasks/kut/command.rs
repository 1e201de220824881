//! The two ways to run one kvm-unit-tests subtest: under our hypervisor
//! ("ours") and under bare QEMU TCG ("qemu"). Each builds a command whose
//! stdout is the guest's COM1 and whose exit status is QEMU's.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::accel::Accel;
use crate::guest::GuestArgs;
use crate::qemu::{self, Firmware, GuestModule, Medium, RunConfig};
use crate::Result;

/// One subtest run: which image, which subtest, what machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guest<'a> {
    /// A built `x86/*.flat` (Multiboot 1, ELF32).
    pub flat: &'a Path,
    /// The subtest's name as the test matches it (spaces as `_`).
    pub subtest: &'a str,
    pub smp: u32,
    /// QEMU's CPU count under ours (`None`: `smp`, at least
    /// [`qemu::DEFAULT_SMP`]); fewer than `smp` time-slices the vCPUs.
    pub host_cpus: Option<u32>,
    pub mem_mib: u32,
    /// Features the subtest's CPU model leaves out (QEMU names, from the
    /// tree's unittests.cfg: [`super::cpu_model`]).
    pub cpu_removed: &'a [String],
    /// `-icount shift=0,sleep=off` under either L0, so that the TSC counts
    /// instructions (`cargo xtask bench`'s latency rows).
    pub icount: bool,
}

/// QEMU's `-cpu` for the bare column: kvm-unit-tests' model, less the
/// subtest's removed features.
pub fn bare_cpu(guest: &Guest) -> String {
    let mut model = String::from("max,+svm");
    for f in guest.cpu_removed {
        model.push_str(",-");
        model.push_str(f);
    }
    model
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
    cmd.args(["-accel", "tcg", "-cpu"])
        .arg(bare_cpu(guest))
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
    if guest.icount {
        cmd.args(qemu::ICOUNT_ARGS);
    }
    cmd
}

/// What the "ours" runs share: built once before the first run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ours {
    /// The hypervisor kernel ELF, already built.
    pub kernel: PathBuf,
    /// Where each run's kernel debug console (port 0xE9) goes, one file per
    /// subtest: `<dir>/<subtest>.debugcon.log`.
    pub debugcon_dir: PathBuf,
}

/// The hypervisor's `guest_cpu=` word for the subtest's removed features
/// (none when it removes none).
pub fn cpu_words(guest: &Guest) -> Vec<String> {
    if guest.cpu_removed.is_empty() {
        return Vec::new();
    }
    let list: Vec<String> = guest.cpu_removed.iter().map(|f| format!("-{f}")).collect();
    vec![format!("guest_cpu={}", list.join(","))]
}

/// Our hypervisor as the L0, running the subtest's image as its one guest:
/// the QEMU command of `cargo xtask run --boot direct --guest FLAT --append
/// SUBTEST --guest-mem MiB` (crate::guest), without a second xtask or a
/// build per run. The hypervisor puts the image's file name in front of the
/// words itself (the Multiboot command line's first word), so only the
/// subtest name is passed. QEMU's status is the guest's `(code << 1) | 1`
/// or one of the hypervisor's own (none of them kvm-unit-tests', so CRASH).
/// TCG, as the bare column: the same accelerator under both L0s. `--smp N`
/// gives the guest N vCPUs (`--guest-cpus`), on a QEMU with as many CPUs
/// (at least two) unless `--host-cpus` says otherwise.
pub fn ours_command(ours: &Ours, guest: &Guest) -> Result<Command> {
    let args = GuestArgs {
        file: guest.flat.to_path_buf(),
        append: guest.subtest.to_string(),
        mem_mib: guest.mem_mib,
        cpus: guest.smp,
        modules: Vec::new(),
    };
    let config = RunConfig {
        medium: Medium::Direct {
            kernel: ours.kernel.clone(),
            cmdline: args.kernel_cmdline(&cpu_words(guest)),
        },
        firmware: Firmware::Bios,
        accel: Accel::Tcg,
        gdb: false,
        debugcon: ours
            .debugcon_dir
            .join(format!("{}.debugcon.log", guest.subtest)),
        icount: guest.icount,
        smp: guest
            .host_cpus
            .unwrap_or_else(|| guest.smp.max(qemu::DEFAULT_SMP)),
    };
    let module = GuestModule {
        file: args.file.clone(),
        memory_mib: args.qemu_memory_mib(),
    };
    qemu::command_with(&config, Some(&module))
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
            host_cpus: None,
            mem_mib: 256,
            cpu_removed: &[],
            icount: false,
        }
    }

    #[test]
    fn a_cpu_model_without_features_reaches_both_l0s() {
        let removed = ["rdtscp".to_string(), "xsave".to_string()];
        let g = Guest {
            cpu_removed: &removed,
            ..guest()
        };
        assert_eq!(bare_cpu(&g), "max,+svm,-rdtscp,-xsave");
        assert!(args(&bare_command(&g)).contains(&"max,+svm,-rdtscp,-xsave".to_string()));
        assert_eq!(cpu_words(&g), ["guest_cpu=-rdtscp,-xsave"]);
        let ours = Ours {
            kernel: "/t/hv".into(),
            debugcon_dir: "/t/kut".into(),
        };
        let args = args(&ours_command(&ours, &g).unwrap());
        assert!(
            args.contains(
                &"guest_cpu=-rdtscp,-xsave guest=svm.flat guest_mem=256 -- vmrun_intercept_check"
                    .to_string()
            ),
            "{args:?}"
        );
        assert!(cpu_words(&guest()).is_empty());
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
    fn ours_boots_the_hypervisor_with_the_image_as_its_module() {
        let ours = Ours {
            kernel: "/t/hv".into(),
            debugcon_dir: "/t/kut".into(),
        };
        let args = args(&ours_command(&ours, &guest()).unwrap());
        let pair = |flag: &str, value: &str| args.windows(2).any(|w| w[0] == flag && w[1] == value);
        assert!(pair("-kernel", "/t/hv"), "{args:?}");
        assert!(pair("-initrd", "/kut/x86/svm.flat"), "{args:?}");
        assert!(
            pair(
                "-append",
                "guest=svm.flat guest_mem=256 -- vmrun_intercept_check"
            ),
            "{args:?}"
        );
        assert!(pair("-accel", "tcg"), "{args:?}");
        assert!(
            pair(
                "-debugcon",
                "file:/t/kut/vmrun_intercept_check.debugcon.log"
            ),
            "{args:?}"
        );
        // The guest's RAM plus the hypervisor's share.
        assert!(pair("-m", "512M"), "{args:?}");
        assert!(args.contains(&"-no-reboot".to_string()));
        assert!(!args.contains(&"-icount".to_string()), "{args:?}");
    }

    #[test]
    fn host_cpus_set_ours_qemu_cpus_not_the_vcpus() {
        let ours = Ours {
            kernel: "/t/hv".into(),
            debugcon_dir: "/t/kut".into(),
        };
        let smp_of = |g: &Guest| {
            let args = args(&ours_command(&ours, g).unwrap());
            let at = args.iter().position(|a| a == "-smp").expect("-smp");
            let vcpus = args.iter().any(|a| a.contains("guest_cpus=3"));
            (args[at + 1].clone(), vcpus)
        };
        let three = Guest { smp: 3, ..guest() };
        assert_eq!(smp_of(&three), ("3".to_string(), true));
        let sliced = Guest {
            host_cpus: Some(2),
            ..three
        };
        assert_eq!(smp_of(&sliced), ("2".to_string(), true));
        assert_eq!(smp_of(&guest()).0, qemu::DEFAULT_SMP.to_string());
    }

    #[test]
    fn icount_reaches_both_l0s() {
        let g = Guest {
            icount: true,
            ..guest()
        };
        let ours = Ours {
            kernel: "/t/hv".into(),
            debugcon_dir: "/t/kut".into(),
        };
        for cmd in [bare_command(&g), ours_command(&ours, &g).unwrap()] {
            let args = args(&cmd);
            assert!(
                args.windows(2)
                    .any(|w| w[0] == "-icount" && w[1] == "shift=0,sleep=off"),
                "{args:?}"
            );
        }
    }
}
