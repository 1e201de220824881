//! Bootable images with Limine and the kernel:
//! - a hybrid BIOS+UEFI ISO (CD-ROM under QEMU, or burned to a disc), and
//! - a raw disk image for a USB stick: MBR, one FAT32 partition at 1 MiB.
//!
//! Both carry `/boot/hv`, `/boot/limine/limine.conf`,
//! `/boot/limine/limine-bios.sys` and `/EFI/BOOT/BOOTX64.EFI`.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::Context;
use crate::limine::{self, Limine};
use crate::mbr::{self, Partition, SECTOR};
use crate::{bail, host_tools, limine_conf, process, Result};

/// What goes on a boot medium.
#[derive(Debug, Clone, Copy)]
pub struct Contents<'a> {
    pub limine: &'a Limine,
    pub kernel: &'a Path,
    pub cmdline: &'a [String],
}

/// Builds the hybrid ISO at `iso`, staging its files in a directory next to it.
pub fn build_iso(contents: &Contents<'_>, iso: &Path) -> Result<()> {
    build_iso_with_guest(contents, iso, None)
}

/// [`build_iso`], with a guest image (`run --guest`) as a Limine module at
/// [`limine_conf::GUEST_MODULE_PATH`].
pub fn build_iso_with_guest(
    contents: &Contents<'_>,
    iso: &Path,
    guest: Option<&Path>,
) -> Result<()> {
    host_tools::require(&[host_tools::XORRISO])?;
    let root = sibling(iso, "root");
    if root.exists() {
        std::fs::remove_dir_all(&root).context(|| format!("removing {}", root.display()))?;
    }
    let limine_dir = root.join("boot/limine");
    copy(contents.kernel, &root.join("boot/hv"))?;
    if let Some(guest) = guest {
        let at = limine_conf::GUEST_MODULE_PATH.trim_start_matches('/');
        copy(guest, &root.join(at))?;
    }
    let module = guest.map(|_| limine_conf::GUEST_MODULE_PATH);
    write(
        &limine_dir.join("limine.conf"),
        &limine_conf::render_with_module(contents.cmdline, module),
    )?;
    for file in [limine::BIOS_SYS, limine::BIOS_CD, limine::UEFI_CD] {
        copy(&contents.limine.file(file), &limine_dir.join(file))?;
    }
    copy(
        &contents.limine.file(limine::BOOTX64),
        &root.join("EFI/BOOT").join(limine::BOOTX64),
    )?;

    remove_if_present(iso)?;
    let mut xorriso = Command::new("xorriso");
    xorriso
        .args(["-as", "mkisofs", "-R", "-r", "-J"])
        // El Torito BIOS boot: Limine's CD stage, loaded without emulation.
        .args(["-b", "boot/limine/limine-bios-cd.bin", "-no-emul-boot"])
        .args(["-boot-load-size", "4", "-boot-info-table"])
        // El Torito EFI boot, also exposed as a GPT partition so that the
        // image boots on UEFI when written to a USB stick.
        .args(["--efi-boot", "boot/limine/limine-uefi-cd.bin"])
        .args([
            "-efi-boot-part",
            "--efi-boot-image",
            "--protective-msdos-label",
        ])
        .arg(&root)
        .arg("-o")
        .arg(iso);
    process::run_quiet(&mut xorriso)?;
    // Lets the ISO boot from a BIOS as a plain disk image too.
    contents.limine.bios_install(iso)
}

/// Free space left on the disk image's partition beyond its files.
const DISK_SLACK: u64 = 32 << 20;
/// The smallest disk we make: FAT32 needs 65525 clusters, and a stick-sized
/// margin costs nothing.
const DISK_MIN: u64 = 64 << 20;
/// The partition starts at 1 MiB: aligned for flash, and the gap before it
/// holds Limine's BIOS stage 2.
const PARTITION_START: u64 = 1 << 20;
/// Disk signature ("HV" + 1): any fixed value works for a single-disk image.
const DISK_SIGNATURE: u32 = 0x4856_0001;

/// Builds the raw USB disk image at `disk`.
pub fn build_disk(contents: &Contents<'_>, disk: &Path) -> Result<()> {
    host_tools::require(&[host_tools::MFORMAT, host_tools::MMD, host_tools::MCOPY])?;
    let conf = sibling(disk, "limine.conf");
    write(&conf, &limine_conf::render(contents.cmdline))?;
    let files: Vec<(PathBuf, &str)> = vec![
        (contents.kernel.to_path_buf(), "::/boot/hv"),
        (conf.clone(), "::/boot/limine/limine.conf"),
        (
            contents.limine.file(limine::BIOS_SYS),
            "::/boot/limine/limine-bios.sys",
        ),
        (
            contents.limine.file(limine::BOOTX64),
            "::/EFI/BOOT/BOOTX64.EFI",
        ),
    ];
    let mut payload = 0;
    for (file, _) in &files {
        payload += file
            .metadata()
            .context(|| format!("reading {}", file.display()))?
            .len();
    }
    let size = disk_size(payload);
    let partition = Partition {
        first_lba: (PARTITION_START / SECTOR) as u32,
        sectors: ((size - PARTITION_START) / SECTOR) as u32,
    };

    remove_if_present(disk)?;
    let mut image = File::create(disk).context(|| format!("creating {}", disk.display()))?;
    image
        .set_len(size)
        .context(|| format!("sizing {}", disk.display()))?;
    image
        .write_all(&mbr::single_fat32(partition, DISK_SIGNATURE))
        .context(|| format!("writing the MBR of {}", disk.display()))?;
    drop(image);

    // mtools addresses the partition as "<image>@@<offset>".
    let target = format!("{}@@{PARTITION_START}", disk.display());
    process::run_quiet(
        mtools("mformat", &target)
            .arg("-F")
            .args(["-T", &partition.sectors.to_string()])
            .args(["-H", &partition.first_lba.to_string()])
            .args(["-v", "HV", "::"]),
    )?;
    process::run_quiet(mtools("mmd", &target).args([
        "::/boot",
        "::/boot/limine",
        "::/EFI",
        "::/EFI/BOOT",
    ]))?;
    for (file, destination) in &files {
        process::run_quiet(mtools("mcopy", &target).arg(file).arg(destination))?;
    }
    contents.limine.bios_install(disk)
}

/// The disk size for a payload: room to spare, rounded up to whole MiB.
fn disk_size(payload: u64) -> u64 {
    let wanted = PARTITION_START + payload + DISK_SLACK;
    wanted.next_multiple_of(1 << 20).max(DISK_MIN)
}

fn mtools(program: &str, target: &str) -> Command {
    let mut cmd = Command::new(program);
    // Image geometry is ours to choose; mtools' floppy-era sanity checks
    // would reject some sizes for no benefit.
    cmd.env("MTOOLS_SKIP_CHECK", "1").args(["-i", target]);
    cmd
}

/// `target/hv.iso` + "root" → `target/hv.iso-root`: scratch space that sits
/// next to the image it serves.
fn sibling(image: &Path, suffix: &str) -> PathBuf {
    let mut name = image.file_name().unwrap_or_default().to_os_string();
    name.push("-");
    name.push(suffix);
    image.with_file_name(name)
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::copy(from, to)
        .context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, text).context(|| format!("writing {}", path.display()))
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => bail!("removing {}: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_payloads_get_the_minimum_disk() {
        assert_eq!(disk_size(3 << 20), DISK_MIN);
    }

    #[test]
    fn large_payloads_get_room_and_whole_mebibytes() {
        let size = disk_size(100 << 20);
        assert!(size >= PARTITION_START + (100 << 20) + DISK_SLACK);
        assert_eq!(size % (1 << 20), 0);
    }

    #[test]
    fn scratch_paths_sit_next_to_the_image() {
        assert_eq!(
            sibling(Path::new("/t/hv.iso"), "root"),
            Path::new("/t/hv.iso-root")
        );
    }
}
