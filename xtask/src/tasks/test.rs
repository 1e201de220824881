//! `cargo xtask test`: every test. Host unit tests first (fast, no QEMU),
//! then the boot tests in `hv-tests`, which boot the kernel built here.

use std::path::PathBuf;

use super::Steps;
use crate::kernel::{self, Profile};
use crate::limine::{self, Lookup, Network};
use crate::{host_tools, mbguest, ovmf, process, workspace, Result};

pub fn test(release: bool, network: Network) -> Result<()> {
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
    let mut skipped = None;
    steps.step("boot tests", boot_tests(release, network, &mut skipped));
    // The boot tests report the skip as "ignored" with this reason; repeat
    // it last, where a person looks for the verdict.
    if let Some(why) = skipped {
        eprintln!("xtask: skipped: {}", skip_line(&why));
    }
    steps.finish()
}

/// The summary line of the skipped Limine boot test.
fn skip_line(why: &str) -> String {
    format!("limine_boot (ignored, not passed): {why}")
}

/// Runs the boot tests; `skipped` receives why the Limine test will be
/// skipped, when it will be.
fn boot_tests(release: bool, network: Network, skipped: &mut Option<String>) -> Result<()> {
    let profile = Profile::from_release_flag(release);
    let kernel = kernel::build_all(profile)?;
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
    .env("HV_KERNEL", &kernel)
    .env(
        "HV_MBGUEST",
        mbguest::image_path(profile, &workspace::target_dir()),
    );
    match limine_for_tests(network)? {
        Ok(dir) => {
            // The Limine tests boot through UEFI as well, and build images.
            host_tools::require(host_tools::IMAGE_TOOLS)?;
            ovmf::locate()?;
            cmd.env("LIMINE_DIR", dir);
        }
        Err(why) => {
            let why = limine::skip_reason(&why);
            eprintln!("xtask: the Limine boot tests will be skipped: {why}");
            cmd.env(limine::UNAVAILABLE_ENV, &why);
            *skipped = Some(why);
        }
    }
    process::run(&mut cmd)
}

/// `LIMINE_DIR` as given, else the pinned release when it can be had, else
/// why there is none.
fn limine_for_tests(network: Network) -> Result<std::result::Result<PathBuf, String>> {
    if let Some(dir) = limine::dir_from_env() {
        // The tests run in another working directory: pass an absolute path.
        return Ok(Ok(std::fs::canonicalize(&dir).unwrap_or(dir)));
    }
    match limine::locate(network)? {
        Lookup::Found(found) => Ok(Ok(found.files_dir)),
        Lookup::Unavailable(why) => Ok(Err(why)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_skip_line_says_ignored_and_why() {
        let line = skip_line(&limine::skip_reason("download failed 2 min ago: curl: (6)"));
        assert!(line.contains("ignored, not passed"), "{line}");
        assert!(
            line.contains("Limine not available: download failed"),
            "{line}"
        );
        assert!(line.contains("LIMINE_DIR"), "{line}");
    }
}
