//! Physical frames, the kernel's page tables and its heap.

pub mod frame;
pub mod heap;
pub mod layout;
pub mod paging;
