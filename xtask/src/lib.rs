//! Build, image, boot and test the hypervisor.
//!
//! The `xtask` binary is a thin command-line front end over this library; the
//! boot tests in `hv-tests` use the same library so that a test boots the
//! kernel exactly the way `cargo xtask run` does.

pub mod accel;
pub mod checksum;
pub mod cli;
pub mod error;
pub mod guest;
pub mod host_tools;
pub mod image;
pub mod kernel;
pub mod limine;
pub mod limine_conf;
pub mod limine_fetch;
pub mod mbguest;
pub mod mbr;
pub mod mutants;
pub mod ovmf;
pub mod process;
pub mod qemu;
pub mod runner;
pub mod tasks;
pub mod toolchain;
pub mod verdict;
pub mod workspace;

pub use error::{Error, Result};
