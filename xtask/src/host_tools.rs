//! Host programs the tasks need (QEMU, xorriso, mtools, ...): checked just
//! before they are used, installed with apt when we are root on Debian or
//! Ubuntu, and otherwise named in an exact install command.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::{bail, process, Result};

/// A program and the Debian package that provides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tool {
    pub program: &'static str,
    pub package: &'static str,
}

pub const QEMU: Tool = Tool {
    program: "qemu-system-x86_64",
    package: "qemu-system-x86",
};
pub const XORRISO: Tool = Tool {
    program: "xorriso",
    package: "xorriso",
};
pub const MFORMAT: Tool = Tool {
    program: "mformat",
    package: "mtools",
};
pub const MMD: Tool = Tool {
    program: "mmd",
    package: "mtools",
};
pub const MCOPY: Tool = Tool {
    program: "mcopy",
    package: "mtools",
};
pub const NASM: Tool = Tool {
    program: "nasm",
    package: "nasm",
};
pub const MAKE: Tool = Tool {
    program: "make",
    package: "make",
};
pub const CC: Tool = Tool {
    program: "cc",
    package: "gcc",
};

/// Every tool that building disk images needs.
pub const IMAGE_TOOLS: &[Tool] = &[XORRISO, MFORMAT, MMD, MCOPY];

/// Makes sure every tool is on `PATH`, installing the missing ones when we can.
pub fn require(tools: &[Tool]) -> Result<()> {
    let packages = missing_packages(tools);
    if packages.is_empty() {
        return Ok(());
    }
    install_packages(&packages)?;
    let still_missing: Vec<_> = tools
        .iter()
        .filter(|t| process::find_program(t.program).is_none())
        .map(|t| t.program)
        .collect();
    if !still_missing.is_empty() {
        bail!(
            "still missing after installing packages: {}",
            still_missing.join(", ")
        );
    }
    Ok(())
}

/// The packages (deduplicated, in order) providing the tools not on `PATH`.
fn missing_packages(tools: &[Tool]) -> Vec<&'static str> {
    let mut packages = Vec::new();
    for tool in tools {
        if process::find_program(tool.program).is_none() && !packages.contains(&tool.package) {
            packages.push(tool.package);
        }
    }
    packages
}

/// Installs Debian packages with apt when running as root on Debian/Ubuntu;
/// otherwise fails with the exact command to run.
pub fn install_packages(packages: &[&str]) -> Result<()> {
    if !can_apt_install() {
        bail!(
            "missing packages; install them with: {}",
            install_hint(packages)
        );
    }
    // One index refresh per run is enough; a fresh machine may have none.
    static UPDATED: AtomicBool = AtomicBool::new(false);
    eprintln!("xtask: installing {}", packages.join(" "));
    if !UPDATED.swap(true, Ordering::SeqCst) {
        process::run(apt().arg("update"))?;
    }
    process::run(apt().args(["install", "-y"]).args(packages))
}

/// The command a person should run to install the packages.
pub fn install_hint(packages: &[&str]) -> String {
    let sudo = if is_root() { "" } else { "sudo " };
    if is_debian() {
        format!("{sudo}apt-get install -y {}", packages.join(" "))
    } else {
        format!(
            "your package manager (Debian names: {})",
            packages.join(" ")
        )
    }
}

fn apt() -> Command {
    let mut cmd = Command::new("apt-get");
    // Never stop at a configuration question: nobody is there to answer.
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

fn can_apt_install() -> bool {
    is_root() && is_debian() && process::find_program("apt-get").is_some()
}

fn is_debian() -> bool {
    // Ubuntu and other derivatives carry this file too.
    Path::new("/etc/debian_version").exists()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_packages_are_deduplicated() {
        let absent = |program| Tool {
            program,
            package: "mtools",
        };
        let tools = [absent("no-such-mformat"), absent("no-such-mcopy"), QEMU];
        let packages = missing_packages(&tools);
        assert_eq!(packages.iter().filter(|p| **p == "mtools").count(), 1);
    }
}
