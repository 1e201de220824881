//! `cargo xtask lint`: formatting and clippy for host and bare-metal crates.

use super::Steps;
use crate::{process, toolchain, workspace, Result};

pub fn lint() -> Result<()> {
    let mut steps = Steps::default();
    steps.step(
        "rustfmt",
        process::run(process::cargo().args(["fmt", "--all", "--check"])),
    );
    steps.step(
        "clippy (host crates)",
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
        "clippy (bare-metal crates)",
        toolchain::ensure_kernel_target().and_then(|()| {
            process::run(
                process::cargo()
                    .args(["clippy", "-p", "hv", "-p", "guest-stubs"])
                    .args(["--target", workspace::KERNEL_TARGET])
                    .args(["--", "-D", "warnings"]),
            )
        }),
    );
    steps.finish()
}
