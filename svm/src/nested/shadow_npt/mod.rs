//! Shadow nested page tables for an L1 that runs its L2 with nested paging
//! (issue 11, items 1-2): pure logic; the kernel side is
//! hv/src/vmm/nested/npt.rs.
//!
//! L2's physical addresses (gPA) go through L1's nested table (rooted at
//! vmcb12's nCR3, in the format L1's paging mode selects at VMRUN) to
//! L1-physical, then through L0's own NPT of L1's memory to host-physical.
//! The CPU can walk only one nested table, so L0 runs L2 on a shadow table
//! that maps gPA straight to host-physical, built on demand from #NPFs:
//! - [`walk`]: L1's nested table for one gPA: L1-physical, rights, page
//!   size, or the #NPF EXITINFO1 L1 must see.
//! - [`compose`]: that walk composed with L0's mapping: the shadow entry
//!   to install, the #NPF to reflect to L1, or an access L0 handles itself.
//! - [`invalidate`]: when the shadow table must be dropped or refreshed.
//! - [`builder`]: the shadow table itself, over frames a caller provides.
//! - [`layout`]: L0's mapping of L1's memory, for [`compose`].

pub mod builder;
pub mod compose;
pub mod invalidate;
pub mod layout;
pub mod walk;
