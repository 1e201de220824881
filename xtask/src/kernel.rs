//! Building the kernel and the guest stubs for the bare-metal target.

use std::path::{Path, PathBuf};

use crate::{bail, process, toolchain, workspace, Result};

/// Debug or release build of the bare-metal crates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    #[default]
    Debug,
    Release,
}

impl Profile {
    pub fn from_release_flag(release: bool) -> Self {
        if release {
            Profile::Release
        } else {
            Profile::Debug
        }
    }

    /// The directory cargo puts this profile's artifacts in.
    pub fn dir_name(self) -> &'static str {
        match self {
            Profile::Debug => "debug",
            Profile::Release => "release",
        }
    }
}

/// Where cargo leaves the kernel ELF for this profile and target directory.
pub fn elf_path(profile: Profile, target_dir: &Path) -> PathBuf {
    target_dir
        .join(workspace::KERNEL_TARGET)
        .join(profile.dir_name())
        .join("hv")
}

/// Builds the given bare-metal packages into `target_dir`.
pub fn build_packages(packages: &[&str], profile: Profile, target_dir: &Path) -> Result<()> {
    toolchain::ensure_kernel_target()?;
    // Cargo is silent while it checks a fresh tree; say what is coming.
    let names: Vec<&str> = packages
        .iter()
        .map(|p| match *p {
            "hv" => "the kernel",
            "guest-stubs" => "the guest stubs",
            other => other,
        })
        .collect();
    eprintln!(
        "xtask: building {} ({})...",
        names.join(" and "),
        profile.dir_name()
    );
    let mut cmd = process::cargo();
    cmd.arg("build");
    for package in packages {
        cmd.args(["-p", package]);
    }
    cmd.args(["--target", workspace::KERNEL_TARGET]);
    if profile == Profile::Release {
        cmd.arg("--release");
    }
    if target_dir != workspace::target_dir() {
        cmd.arg("--target-dir").arg(target_dir);
    }
    process::run(&mut cmd)
}

/// Builds the kernel only, returning the ELF's path.
pub fn build_kernel(profile: Profile, target_dir: &Path) -> Result<PathBuf> {
    build_packages(&["hv"], profile, target_dir)?;
    existing_elf(profile, target_dir)
}

/// Builds the kernel and the guest stubs (what `cargo xtask build` does),
/// returning the kernel ELF's path.
pub fn build_all(profile: Profile) -> Result<PathBuf> {
    let target_dir = workspace::target_dir();
    build_packages(&["hv", "guest-stubs"], profile, &target_dir)?;
    existing_elf(profile, &target_dir)
}

fn existing_elf(profile: Profile, target_dir: &Path) -> Result<PathBuf> {
    let elf = elf_path(profile, target_dir);
    if !elf.is_file() {
        bail!(
            "the build succeeded but left no kernel at {}",
            elf.display()
        );
    }
    Ok(elf)
}
