//! UEFI firmware for QEMU (OVMF from Debian's `ovmf` package).
//!
//! OVMF comes as two flash images: read-only code, and a variable store the
//! firmware writes to. Each boot gets its own copy of the variable store so
//! that the system template is never touched and parallel boots don't share
//! one.

use std::path::{Path, PathBuf};

use crate::error::Context;
use crate::{bail, host_tools, Result};

/// Code and variable-store images that belong together (same flash size).
const PAIRS: &[(&str, &str)] = &[
    (
        "/usr/share/OVMF/OVMF_CODE_4M.fd",
        "/usr/share/OVMF/OVMF_VARS_4M.fd",
    ),
    (
        "/usr/share/OVMF/OVMF_CODE.fd",
        "/usr/share/OVMF/OVMF_VARS.fd",
    ),
];

/// An installed OVMF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ovmf {
    pub code: PathBuf,
    pub vars_template: PathBuf,
}

/// Finds OVMF, installing the package when we can.
pub fn locate() -> Result<Ovmf> {
    if let Some(found) = find() {
        return Ok(found);
    }
    host_tools::install_packages(&["ovmf"])?;
    match find() {
        Some(found) => Ok(found),
        None => bail!("OVMF is not at {} even after installing it", PAIRS[0].0),
    }
}

fn find() -> Option<Ovmf> {
    PAIRS.iter().find_map(|(code, vars)| {
        (Path::new(code).is_file() && Path::new(vars).is_file()).then(|| Ovmf {
            code: code.into(),
            vars_template: vars.into(),
        })
    })
}

impl Ovmf {
    /// Copies the variable store template into `dir` for one boot.
    pub fn fresh_vars(&self, dir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(dir).context(|| format!("creating {}", dir.display()))?;
        let vars = dir.join("ovmf-vars.fd");
        std::fs::copy(&self.vars_template, &vars).context(|| {
            format!(
                "copying {} to {}",
                self.vars_template.display(),
                vars.display()
            )
        })?;
        Ok(vars)
    }
}
