//! The QEMU command line, built in one place for `cargo xtask run` and the
//! boot tests alike.

use std::path::PathBuf;
use std::process::Command;

use crate::accel::Accel;
use crate::{bail, Result};

/// The QEMU program for an x86-64 machine.
pub const PROGRAM: &str = "qemu-system-x86_64";

/// The I/O port of the isa-debug-exit device: the kernel writes its verdict
/// there and QEMU exits with status `(value << 1) | 1`.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// The guest's RAM, for `-m` and the messages that name it.
pub const MEMORY: &str = "512M";
/// [`MEMORY`] in MiB.
pub const MEMORY_MIB: u32 = 512;

/// QEMU's CPU count unless `--smp` says otherwise: every CPU runs the
/// hypervisor.
pub const DEFAULT_SMP: u32 = 2;

/// QEMU's deterministic instruction counting (TCG only): `shift=0`, the
/// virtual clock and the TSC advance one tick per executed instruction;
/// `sleep=off`, never wait for real time.
pub const ICOUNT_ARGS: [&str; 2] = ["-icount", "shift=0,sleep=off"];

/// The TCP port gdb attaches to with `-s`.
pub const GDB_PORT: u16 = 1234;

/// What QEMU boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Medium {
    /// QEMU loads the ELF itself through its PVH note: no bootloader.
    Direct {
        kernel: PathBuf,
        cmdline: Vec<String>,
    },
    /// A Limine ISO as a CD-ROM.
    Cdrom(PathBuf),
    /// A Limine raw disk image as a hard disk.
    Disk(PathBuf),
}

/// The machine's firmware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Firmware {
    /// QEMU's default SeaBIOS.
    Bios,
    /// OVMF as two flash devices: read-only code and this boot's own copy of
    /// the variable store.
    Uefi { code: PathBuf, vars: PathBuf },
}

/// Everything that decides the QEMU command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunConfig {
    pub medium: Medium,
    pub firmware: Firmware,
    pub accel: Accel,
    /// Wait for gdb on port 1234 before the first instruction.
    pub gdb: bool,
    /// Where the kernel's port 0xE9 mirror of the console goes; a file, so it
    /// does not duplicate the serial output on stdout.
    pub debugcon: PathBuf,
    /// Deterministic instruction counting (TCG only): one instruction per
    /// TSC tick, for `bench`.
    pub icount: bool,
    /// QEMU's CPU count (`-smp`).
    pub smp: u32,
}

/// A guest image for the hypervisor to run (`cargo xtask run --guest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestModule {
    /// The image, handed over as the boot module.
    pub file: PathBuf,
    /// QEMU's `-m` in MiB (the guest's RAM and the hypervisor's).
    pub memory_mib: u32,
}

/// The QEMU command for a configuration. The serial console (COM1) is QEMU's
/// stdout; the caller decides whether that is a terminal or a pipe.
pub fn command(config: &RunConfig) -> Result<Command> {
    command_with(config, None)
}

/// [`command`], with a guest image: under direct boot it is QEMU's
/// `-initrd`, which QEMU's PVH loader lists as the one boot module (a
/// Limine medium carries it itself), and `-m` grows to fit it.
pub fn command_with(config: &RunConfig, guest: Option<&GuestModule>) -> Result<Command> {
    let memory = match guest {
        Some(g) => format!("{}M", g.memory_mib),
        None => MEMORY.to_string(),
    };
    let mut cmd = Command::new(PROGRAM);
    let smp = config.smp.max(1).to_string();
    cmd.args(["-machine", "q35", "-m", &memory, "-smp", &smp])
        // A triple fault must end the run (status 0), not loop in resets.
        .args(["-no-reboot", "-display", "none"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
        .args(["-serial", "stdio"])
        .arg("-debugcon")
        .arg(format!("file:{}", config.debugcon.display()))
        .args(config.accel.qemu_args());

    if let Firmware::Uefi { code, vars } = &config.firmware {
        cmd.arg("-drive").arg(format!(
            "if=pflash,format=raw,readonly=on,file={}",
            code.display()
        ));
        cmd.arg("-drive")
            .arg(format!("if=pflash,format=raw,file={}", vars.display()));
    }

    match &config.medium {
        Medium::Direct { kernel, cmdline } => {
            if config.firmware != Firmware::Bios {
                // QEMU's -kernel under OVMF only handles Linux EFI-stub
                // kernels, not PVH ELFs.
                bail!("direct (PVH) boot works with BIOS firmware only; UEFI needs Limine");
            }
            cmd.arg("-kernel").arg(kernel);
            if !cmdline.is_empty() {
                cmd.arg("-append").arg(cmdline.join(" "));
            }
            if let Some(g) = guest {
                cmd.arg("-initrd").arg(&g.file);
            }
        }
        Medium::Cdrom(iso) => {
            cmd.arg("-cdrom").arg(iso);
        }
        Medium::Disk(image) => {
            cmd.arg("-drive")
                .arg(format!("format=raw,file={}", image.display()));
        }
    }

    if config.icount {
        cmd.args(ICOUNT_ARGS);
    }
    if config.gdb {
        // -s: gdb server on :1234; -S: stop before the first instruction.
        cmd.args(["-s", "-S"]);
    }
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cmd: &Command) -> Vec<String> {
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    fn direct(cmdline: &[&str]) -> RunConfig {
        RunConfig {
            medium: Medium::Direct {
                kernel: "/k/hv".into(),
                cmdline: cmdline.iter().map(|w| w.to_string()).collect(),
            },
            firmware: Firmware::Bios,
            accel: Accel::Tcg,
            gdb: false,
            debugcon: "/t/qemu-debugcon.log".into(),
            icount: false,
            smp: DEFAULT_SMP,
        }
    }

    fn has_pair(args: &[String], flag: &str, value: &str) -> bool {
        args.windows(2).any(|w| w[0] == flag && w[1] == value)
    }

    #[test]
    fn direct_boot_has_the_fixed_machine_and_the_kernel() {
        let args = args(&command(&direct(&["fault=page", "x=1"])).unwrap());
        assert!(has_pair(&args, "-machine", "q35"));
        assert!(has_pair(&args, "-m", "512M"));
        assert!(has_pair(&args, "-smp", "2"));
        assert!(args.contains(&"-no-reboot".into()));
        assert!(has_pair(&args, "-display", "none"));
        assert!(has_pair(
            &args,
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=4"
        ));
        assert!(has_pair(&args, "-serial", "stdio"));
        assert!(has_pair(&args, "-debugcon", "file:/t/qemu-debugcon.log"));
        assert!(has_pair(&args, "-accel", "tcg"));
        assert!(has_pair(
            &args,
            "-cpu",
            "qemu64,+svm,+npt,+vgif,+rdtscp,+smep,+xsave,+xsaveopt"
        ));
        assert!(has_pair(&args, "-kernel", "/k/hv"));
        assert!(has_pair(&args, "-append", "fault=page x=1"));
        assert!(!args.contains(&"-S".into()));
        let four = RunConfig {
            smp: 4,
            ..direct(&[])
        };
        assert!(has_pair(&args_of(&four), "-smp", "4"));
    }

    #[test]
    fn a_guest_is_the_initrd_and_sizes_the_memory() {
        let guest = GuestModule {
            file: "/kut/x86/svm.flat".into(),
            memory_mib: 768,
        };
        let with = args(&command_with(&direct(&["guest=svm.flat"]), Some(&guest)).unwrap());
        assert!(has_pair(&with, "-initrd", "/kut/x86/svm.flat"));
        assert!(has_pair(&with, "-m", "768M"));
        assert!(!with.contains(&"512M".to_string()));
        let plain = args_of(&direct(&[]));
        assert!(!plain.contains(&"-initrd".to_string()));
        // A Limine medium carries the module itself.
        let cdrom = RunConfig {
            medium: Medium::Cdrom("/t/hv.iso".into()),
            ..direct(&[])
        };
        let iso = args(&command_with(&cdrom, Some(&guest)).unwrap());
        assert!(!iso.contains(&"-initrd".to_string()));
        assert!(has_pair(&iso, "-m", "768M"));
    }

    fn args_of(config: &RunConfig) -> Vec<String> {
        args(&command(config).unwrap())
    }

    #[test]
    fn empty_cmdline_adds_no_append() {
        let args = args(&command(&direct(&[])).unwrap());
        assert!(!args.contains(&"-append".into()));
    }

    #[test]
    fn gdb_waits_for_the_debugger() {
        let mut config = direct(&[]);
        config.gdb = true;
        let args = args(&command(&config).unwrap());
        assert!(args.contains(&"-s".into()) && args.contains(&"-S".into()));
    }

    #[test]
    fn uefi_cdrom_boot_uses_two_flash_devices() {
        let config = RunConfig {
            medium: Medium::Cdrom("/t/hv.iso".into()),
            firmware: Firmware::Uefi {
                code: "/o/CODE.fd".into(),
                vars: "/t/vars.fd".into(),
            },
            accel: Accel::Kvm,
            ..direct(&[])
        };
        let args = args(&command(&config).unwrap());
        assert!(has_pair(
            &args,
            "-drive",
            "if=pflash,format=raw,readonly=on,file=/o/CODE.fd"
        ));
        assert!(has_pair(
            &args,
            "-drive",
            "if=pflash,format=raw,file=/t/vars.fd"
        ));
        assert!(has_pair(&args, "-cdrom", "/t/hv.iso"));
        assert!(has_pair(&args, "-accel", "kvm") && has_pair(&args, "-cpu", "host"));
    }

    #[test]
    fn direct_boot_refuses_uefi() {
        let mut config = direct(&[]);
        config.firmware = Firmware::Uefi {
            code: "c".into(),
            vars: "v".into(),
        };
        assert!(command(&config).is_err());
    }
}
