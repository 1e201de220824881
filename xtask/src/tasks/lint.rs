//! `cargo xtask lint`: formatting and clippy for host and bare-metal crates.

use super::Steps;
use crate::{process, toolchain, workspace, Result};

/// Runs every check and ends with one verdict line; `Ok(false)` when a check
/// failed (its output is above).
pub fn lint() -> Result<bool> {
    let mut steps = Steps::default();
    steps.step(
        "rustfmt",
        process::run(process::cargo().args(["fmt", "--all", "--check"])),
    );
    steps.step(
        "clippy host",
        process::run(process::cargo().args([
            "clippy",
            "--workspace",
            "--exclude",
            "hv",
            "--exclude",
            "guest-stubs",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])),
    );
    steps.step(
        "clippy bare-metal",
        toolchain::ensure_kernel_target().and_then(|()| {
            process::run(
                process::cargo()
                    .args(["clippy", "-p", "hv", "-p", "guest-stubs"])
                    .args(["--target", workspace::KERNEL_TARGET])
                    .args(["--", "-D", "warnings"]),
            )
        }),
    );
    eprintln!("{}", steps.verdict("lint"));
    Ok(steps.passed())
}
