//! `cargo xtask build`: the kernel and the guest stubs.

use crate::kernel::{self, Profile};
use crate::{workspace, Result};

pub fn build(release: bool) -> Result<()> {
    let elf = kernel::build_all(Profile::from_release_flag(release))?;
    eprintln!("xtask: kernel at {}", workspace::display_path(&elf));
    Ok(())
}
