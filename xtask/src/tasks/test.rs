//! `cargo xtask test`: every test. Host unit tests first (fast, no QEMU),
//! then the boot tests in `hv-tests`, which boot the kernel built here.

use std::path::PathBuf;

use super::Steps;
use crate::kernel::{self, Profile};
use crate::limine::{self, Lookup};
use crate::{host_tools, ovmf, process, Result};

pub fn test(release: bool) -> Result<()> {
    let mut steps = Steps::default();
    steps.step(
        "host unit tests",
        process::run(process::cargo().args([
            "test",
            "--workspace",
            "--exclude",
            "hv",
            "--exclude",
            "guest-stubs",
            "--exclude",
            "hv-tests",
            "--no-fail-fast",
        ])),
    );
    steps.step("boot tests", boot_tests(release));
    steps.finish()
}

fn boot_tests(release: bool) -> Result<()> {
    let kernel = kernel::build_all(Profile::from_release_flag(release))?;
    host_tools::require(&[host_tools::QEMU])?;
    let mut cmd = process::cargo();
    // One QEMU at a time: the self-tests measure guest time against the PIT
    // with tolerances in ticks, and parallel TCG guests on a small machine
    // would only add noise to them.
    cmd.args([
        "test",
        "-p",
        "hv-tests",
        "--no-fail-fast",
        "--",
        "--test-threads=1",
    ])
    .env("HV_KERNEL", &kernel);
    if let Some(dir) = limine_for_tests()? {
        // The Limine tests boot through UEFI as well, and build images.
        host_tools::require(host_tools::IMAGE_TOOLS)?;
        ovmf::locate()?;
        cmd.env("LIMINE_DIR", dir);
    }
    process::run(&mut cmd)
}

/// `LIMINE_DIR` as given, else the pinned release when it can be had; the
/// Limine boot tests are skipped (visibly) without one.
fn limine_for_tests() -> Result<Option<PathBuf>> {
    if let Some(dir) = limine::dir_from_env() {
        // The tests run in another working directory: pass an absolute path.
        return Ok(Some(std::fs::canonicalize(&dir).unwrap_or(dir)));
    }
    match limine::locate()? {
        Lookup::Found(found) => Ok(Some(found.files_dir)),
        Lookup::Unavailable(why) => {
            eprintln!(
                "xtask: the Limine boot tests will be skipped: {why}; {}",
                limine::HOW_TO_GET
            );
            Ok(None)
        }
    }
}
