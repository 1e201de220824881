//! Makes sure the Rust toolchain can build the kernel: the bare-metal target's
//! standard library must be installed, which a fresh rustup toolchain may lack.

use std::process::Command;

use crate::{process, workspace, Result};

/// Installs the kernel target with rustup when it is missing. Without rustup
/// (a distribution toolchain) there is nothing we can do, so we let cargo
/// report the problem itself.
pub fn ensure_kernel_target() -> Result<()> {
    let target = workspace::KERNEL_TARGET;
    if process::find_program("rustup").is_none() {
        return Ok(());
    }
    let installed = process::output(
        Command::new("rustup")
            .args(["target", "list", "--installed"])
            .current_dir(workspace::root()),
    )?;
    if installed.lines().any(|line| line.trim() == target) {
        return Ok(());
    }
    eprintln!("xtask: installing the Rust target {target}");
    process::run(
        Command::new("rustup")
            .args(["target", "add", target])
            .current_dir(workspace::root()),
    )
}
