//! `cargo xtask image`: the ISO and the USB disk image for real machines.

use crate::image::{self, Contents};
use crate::kernel::{self, Profile};
use crate::limine::{self, Lookup, Network};
use crate::{bail, workspace, Result};

pub fn image(release: bool, cmdline: &[String], network: Network) -> Result<()> {
    let kernel = kernel::build_all(Profile::from_release_flag(release))?;
    let limine = match limine::locate(network)? {
        Lookup::Found(limine) => limine,
        Lookup::Unavailable(why) => {
            bail!(
                "images need Limine, and there is none: {why}; {}",
                limine::HOW_TO_GET
            )
        }
    };
    let contents = Contents {
        limine: &limine,
        kernel: &kernel,
        cmdline,
    };
    let target = workspace::target_dir();
    let iso = target.join("hv.iso");
    let disk = target.join("hv.img");
    image::build_iso(&contents, &iso)?;
    image::build_disk(&contents, &disk)?;
    eprintln!(
        "xtask: wrote {} (CD or USB, BIOS+UEFI) and {} (USB disk: dd it to the stick)",
        workspace::display_path(&iso),
        workspace::display_path(&disk)
    );
    Ok(())
}
