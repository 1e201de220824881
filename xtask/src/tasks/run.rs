//! `cargo xtask run`: build, boot under QEMU with the serial console on our
//! stdout, and return the kernel's verdict.

use std::path::Path;

use crate::cli::{Boot, FirmwareKind, RunArgs};
use crate::image::{self, Contents};
use crate::kernel::{self, Profile};
use crate::limine::{self, Limine, Lookup, Network};
use crate::qemu::{self, Firmware, Medium, RunConfig};
use crate::verdict::Verdict;
use crate::{accel, bail, host_tools, ovmf, runner, workspace, Result};

pub fn run(args: &RunArgs) -> Result<Verdict> {
    // Before building: `--accel kvm` without SVM could only skip every test.
    let choice = accel::choose(args.accel)?;
    let kernel = kernel::build_all(Profile::from_release_flag(args.release))?;
    let target = workspace::target_dir();
    host_tools::require(&[host_tools::QEMU])?;

    let medium = match choose_boot(args)? {
        None => Medium::Direct {
            kernel: kernel.clone(),
            cmdline: args.cmdline.clone(),
        },
        Some(limine) => {
            let iso = target.join("hv.iso");
            let contents = Contents {
                limine: &limine,
                kernel: &kernel,
                cmdline: &args.cmdline,
            };
            image::build_iso(&contents, &iso)?;
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
    };
    let command = qemu::command(&config)?;
    eprintln!("xtask: booting QEMU ({})...", describe(&config));
    if args.gdb {
        print_gdb_hint(&kernel);
    }
    let outcome = runner::run(
        command,
        runner::Options {
            timeout: args.timeout,
            echo: true,
        },
    )?;
    Ok(Verdict::of(&outcome))
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
/// until the kernel's first line: e.g. `TCG, direct, 512 MiB`.
fn describe(config: &RunConfig) -> String {
    let accel = match config.accel {
        accel::Accel::Kvm => "KVM",
        accel::Accel::Tcg => "TCG",
    };
    let boot = match (&config.medium, &config.firmware) {
        (Medium::Direct { .. }, _) => "direct",
        (_, Firmware::Bios) => "Limine, BIOS",
        (_, Firmware::Uefi { .. }) => "Limine, UEFI",
    };
    format!("{accel}, {boot}, {}", qemu::MEMORY)
}

fn print_gdb_hint(kernel: &Path) {
    eprintln!(
        "xtask: QEMU waits for gdb; attach with: gdb {} -ex 'target remote :{}'",
        workspace::display_path(kernel),
        qemu::GDB_PORT
    );
}
