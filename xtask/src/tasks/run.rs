//! `cargo xtask run`: build, boot under QEMU with the serial console on our
//! stdout, and return the kernel's verdict.

use std::path::Path;

use crate::cli::{Boot, FirmwareKind, RunArgs};
use crate::error::Context;
use crate::image::{self, Contents};
use crate::kernel::{self, Profile};
use crate::limine::{self, Limine, Lookup, Network};
use crate::qemu::{self, Firmware, Medium, RunConfig};
use crate::verdict::Verdict;
use crate::{accel, bail, guest, host_tools, ovmf, runner, workspace, Result};

pub fn run(args: &RunArgs) -> Result<Verdict> {
    Ok(Verdict::of(&boot(args)?))
}

/// `run --guest`: boots the hypervisor with the guest image and returns
/// the status `cargo xtask run` exits with (QEMU's; see [`guest`]).
pub fn run_guest(args: &RunArgs) -> Result<u8> {
    let outcome = boot(args)?;
    eprintln!("xtask: {}", guest::describe_status(&outcome));
    Ok(guest::exit_status(&outcome))
}

/// Builds (unless `--no-build`), boots and waits for QEMU.
fn boot(args: &RunArgs) -> Result<runner::Outcome> {
    // Before building: `--accel kvm` without SVM could only skip every test.
    let choice = accel::choose(args.accel)?;
    let profile = Profile::from_release_flag(args.release);
    let target = workspace::target_dir();
    let kernel = if args.no_build {
        let elf = kernel::elf_path(profile, &target);
        if !elf.is_file() {
            bail!(
                "--no-build, but there is no kernel at {} (run cargo xtask build{})",
                elf.display(),
                if args.release { " --release" } else { "" }
            );
        }
        elf
    } else {
        kernel::build_all(profile)?
    };
    host_tools::require(&[host_tools::QEMU])?;

    // A guest's words follow the kernel's, after `--` (crate::guest).
    let cmdline = match &args.guest {
        Some(g) => g.kernel_cmdline(&args.cmdline),
        None => args.cmdline.clone(),
    };
    // The image, or a pack of it and its --guest-module files.
    let boot_file = match &args.guest {
        Some(g) => Some(
            g.boot_module(&target)
                .context(|| "packing the guest and its modules".to_string())?,
        ),
        None => None,
    };
    let module = args
        .guest
        .as_ref()
        .zip(boot_file.as_ref())
        .map(|(g, file)| qemu::GuestModule {
            file: file.clone(),
            memory_mib: g.qemu_memory_mib(),
        });
    let medium = match choose_boot(args)? {
        None => Medium::Direct {
            kernel: kernel.clone(),
            cmdline,
        },
        Some(limine) => {
            let iso = target.join("hv.iso");
            let contents = Contents {
                limine: &limine,
                kernel: &kernel,
                cmdline: &cmdline,
            };
            let guest_file = boot_file.as_deref();
            image::build_iso_with_guest(&contents, &iso, guest_file)?;
            Medium::Cdrom(iso)
        }
    };
    let firmware = match args.firmware {
        FirmwareKind::Bios => Firmware::Bios,
        FirmwareKind::Uefi => {
            let ovmf = ovmf::locate()?;
            Firmware::Uefi {
                vars: ovmf.fresh_vars(&target)?,
                code: ovmf.code,
            }
        }
    };
    eprintln!("xtask: {choice}");

    let config = RunConfig {
        medium,
        firmware,
        accel: choice.accel,
        gdb: args.gdb,
        debugcon: target.join("qemu-debugcon.log"),
        icount: false,
        smp: args.smp.unwrap_or(qemu::DEFAULT_SMP),
    };
    let command = qemu::command_with(&config, module.as_ref())?;
    let memory = module
        .as_ref()
        .map_or(qemu::MEMORY.to_string(), |m| format!("{}M", m.memory_mib));
    eprintln!("xtask: booting QEMU ({})...", describe(&config, &memory));
    if args.gdb {
        print_gdb_hint(&kernel);
    }
    // A guest's console is passed on as it is (crate::guest).
    runner::run_with(
        command,
        runner::Options {
            timeout: args.timeout,
            echo: true,
        },
        args.guest.is_some(),
    )
}

/// Limine when asked for or available, else direct boot (`None`), saying why.
fn choose_boot(args: &RunArgs) -> Result<Option<Limine>> {
    let uefi = args.firmware == FirmwareKind::Uefi;
    let network = Network::from_offline_flag(args.offline);
    match args.boot {
        Some(Boot::Direct) if uefi => {
            bail!(
                "--boot direct works with --firmware bios only (QEMU boots PVH ELFs without UEFI)"
            )
        }
        Some(Boot::Direct) => Ok(None),
        Some(Boot::Limine) => match limine::locate(network)? {
            Lookup::Found(limine) => Ok(Some(limine)),
            Lookup::Unavailable(why) => {
                bail!(
                    "--boot limine, but there is no Limine: {why}; {}",
                    limine::HOW_TO_GET
                )
            }
        },
        None => match limine::locate(network)? {
            Lookup::Found(limine) => Ok(Some(limine)),
            Lookup::Unavailable(why) if uefi => {
                bail!(
                    "UEFI boot needs Limine, and there is none: {why}; {}",
                    limine::HOW_TO_GET
                )
            }
            Lookup::Unavailable(why) => {
                eprintln!("{}", limine::direct_boot_advice(&why));
                Ok(None)
            }
        },
    }
}

/// How QEMU boots, for the line printed before the (possibly long) silence
/// until the kernel's first line: e.g. `TCG, direct, 512M, 2 CPUs`.
fn describe(config: &RunConfig, memory: &str) -> String {
    let accel = match config.accel {
        accel::Accel::Kvm => "KVM",
        accel::Accel::Tcg => "TCG",
    };
    let boot = match (&config.medium, &config.firmware) {
        (Medium::Direct { .. }, _) => "direct",
        (_, Firmware::Bios) => "Limine, BIOS",
        (_, Firmware::Uefi { .. }) => "Limine, UEFI",
    };
    format!("{accel}, {boot}, {memory}, {} CPUs", config.smp)
}

fn print_gdb_hint(kernel: &Path) {
    eprintln!(
        "xtask: QEMU waits for gdb; attach with: gdb {} -ex 'target remote :{}'",
        workspace::display_path(kernel),
        qemu::GDB_PORT
    );
}
