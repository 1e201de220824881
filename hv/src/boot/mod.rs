//! Boot protocol adapters.
//!
//! Each loader (Limine, or QEMU's PVH direct boot) has a thin adapter that
//! copies what the loader handed over into one [`BootInfo`] and calls
//! [`crate::kernel_main`]. Nothing after that knows which loader ran, except
//! for the `boot:` banner line, which reports [`BootInfo::protocol`].

pub mod info;
pub mod limine;
pub mod pvh;
pub mod stack;

pub use info::{BootInfo, MemoryKind};
