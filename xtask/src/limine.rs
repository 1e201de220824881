//! Finding a usable Limine: its boot files plus the `limine` host tool.
//!
//! Order: `LIMINE_DIR` when set (and then it must be right: the person asked
//! for it), else the pinned release cached under `target/limine/`, fetched and
//! built when the network allows. When neither works the caller boots the
//! kernel directly (PVH) and says why.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::Context;
use crate::{bail, checksum, limine_fetch, process, workspace, Result};

pub use crate::limine_fetch::Network;

/// The BIOS stage loaded from the boot partition.
pub const BIOS_SYS: &str = "limine-bios.sys";
/// The El Torito BIOS boot image for CDs.
pub const BIOS_CD: &str = "limine-bios-cd.bin";
/// The El Torito EFI boot image (a small FAT image) for CDs.
pub const UEFI_CD: &str = "limine-uefi-cd.bin";
/// The UEFI application, at the removable-media path on disks.
pub const BOOTX64: &str = "BOOTX64.EFI";

const BOOT_FILES: [&str; 4] = [BIOS_SYS, BIOS_CD, UEFI_CD, BOOTX64];

/// How to get Limine when it is missing; appended to notices and errors.
pub const HOW_TO_GET: &str =
    "set LIMINE_DIR to a directory with Limine's binaries to boot through Limine (see README.md)";

/// The environment variable through which `cargo xtask test` tells the
/// Limine boot test why it has no `LIMINE_DIR`, so that the test's "ignored"
/// line gives the true reason.
pub const UNAVAILABLE_ENV: &str = "HV_LIMINE_UNAVAILABLE";

/// Why the Limine boot tests are skipped, from why there is no Limine.
pub fn skip_reason(why: &str) -> String {
    format!("Limine not available: {why}; {HOW_TO_GET}")
}

/// The one line `run` prints when it falls back to direct boot: the reason,
/// and how to stop seeing it.
pub fn direct_boot_advice(why: &str) -> String {
    format!(
        "xtask: Limine not available ({why}); booting directly (PVH). \
         Use --boot direct to skip this check, --offline to never download, \
         or LIMINE_DIR=DIR to use a Limine build (see README.md)."
    )
}

/// A usable Limine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limine {
    /// The directory holding the boot files.
    pub files_dir: PathBuf,
    /// The host tool (`limine bios-install ...`).
    pub tool: PathBuf,
}

/// The result of looking for Limine when its absence is not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(Limine),
    /// Why there is no Limine, worded to follow "no Limine: ".
    Unavailable(String),
}

impl Limine {
    /// A boot file by name (one of the `BIOS_SYS`... constants).
    pub fn file(&self, name: &str) -> PathBuf {
        self.files_dir.join(name)
    }

    /// Writes Limine's BIOS boot code into an image's MBR and post-MBR gap.
    pub fn bios_install(&self, image: &Path) -> Result<()> {
        process::run_quiet(Command::new(&self.tool).arg("bios-install").arg(image))
    }
}

/// `LIMINE_DIR`, if set and not empty.
pub fn dir_from_env() -> Option<PathBuf> {
    std::env::var_os("LIMINE_DIR")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
}

/// Finds Limine: `LIMINE_DIR`, else the pinned release (fetched and built if
/// needed and possible). A broken `LIMINE_DIR` is an error; a missing
/// network is not.
pub fn locate(network: Network) -> Result<Lookup> {
    if let Some(dir) = dir_from_env() {
        return from_dir(&dir).map(Lookup::Found);
    }
    let cache = workspace::target_dir().join("limine");
    match limine_fetch::ensure_built(&cache, network) {
        Ok(bin) => from_dir(&bin).map(Lookup::Found),
        Err(why) => Ok(Lookup::Unavailable(why)),
    }
}

/// Limine from a directory of binaries: a release's `bin/`, a binary-branch
/// checkout (which has `limine.c` instead of a built tool), or an install
/// prefix.
pub fn from_dir(dir: &Path) -> Result<Limine> {
    let candidates = [dir.to_path_buf(), dir.join("bin"), dir.join("share/limine")];
    let Some(files_dir) = candidates
        .iter()
        .find(|c| BOOT_FILES.iter().all(|f| c.join(f).is_file()))
    else {
        bail!(
            "{} does not hold Limine's boot files ({})",
            dir.display(),
            BOOT_FILES.join(", ")
        );
    };
    let tool = match candidates
        .iter()
        .map(|c| c.join("limine"))
        .find(|t| process::is_executable(t))
    {
        Some(tool) => tool,
        None => match candidates
            .iter()
            .map(|c| c.join("limine.c"))
            .find(|s| s.is_file())
        {
            Some(source) => compile_tool(&source)?,
            None => bail!(
                "{} has neither the `limine` tool nor limine.c",
                dir.display()
            ),
        },
    };
    Ok(Limine {
        files_dir: files_dir.clone(),
        tool,
    })
}

/// Compiles the host tool from a binary branch's `limine.c` into
/// `target/limine/tool/`, named by the source's hash so that switching
/// `LIMINE_DIR` never reuses a tool built for another version.
fn compile_tool(source: &Path) -> Result<PathBuf> {
    let hash = checksum::sha256_file(source)?;
    let dir = workspace::target_dir().join("limine").join("tool");
    let tool = dir.join(format!("limine-{}", &hash[..16]));
    if process::is_executable(&tool) {
        return Ok(tool);
    }
    std::fs::create_dir_all(&dir).context(|| format!("creating {}", dir.display()))?;
    // Build under a temporary name so an interrupted compile leaves nothing
    // that looks finished.
    let partial = dir.join(format!("limine-{}.{}.tmp", &hash[..16], std::process::id()));
    eprintln!("xtask: compiling the limine tool from {}", source.display());
    process::run(
        Command::new("cc")
            .args(["-O2", "-pipe", "-std=c99"])
            .arg(source)
            .arg("-o")
            .arg(&partial),
    )?;
    std::fs::rename(&partial, &tool).context(|| format!("moving {}", partial.display()))?;
    Ok(tool)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_boot_advice_names_the_ways_out() {
        let line = direct_boot_advice("download failed 3 min ago: curl: (6)");
        assert!(line.starts_with("xtask: Limine not available (download failed"));
        assert!(line.contains("booting directly (PVH)"), "{line}");
        assert!(line.contains("--boot direct"), "{line}");
        assert!(line.contains("--offline"), "{line}");
        assert!(line.contains("LIMINE_DIR"), "{line}");
    }

    #[test]
    fn from_dir_explains_what_is_missing() {
        let dir = std::env::temp_dir().join(format!("xtask-limine-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let error = from_dir(&dir).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(error.contains("limine-bios.sys"), "{error}");
    }

    #[test]
    fn from_dir_accepts_a_release_bin_directory() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("xtask-limine-bin-{}", std::process::id()));
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for file in BOOT_FILES {
            std::fs::write(bin.join(file), b"").unwrap();
        }
        std::fs::write(bin.join("limine"), b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(bin.join("limine"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let found = from_dir(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        let found = found.unwrap();
        assert_eq!(found.files_dir, bin);
        assert_eq!(found.tool, bin.join("limine"));
    }
}
