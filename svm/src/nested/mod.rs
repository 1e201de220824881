//! Nested SVM with the hsave model (seed thread 000): pure logic for
//! emulating VMRUN and #VMEXIT for an L1 hypervisor.
//!
//! One active VMCB per vCPU. On L1's VMRUN, L1's state and L0's controls
//! are stashed in the vCPU's `hsave` (hypervisor memory), and L2 runs in
//! place in the active VMCB with controls merged from L0's and vmcb12's
//! ([`merge`]), after vmcb12 passed the consistency checks ([`checks`]).
//! Exits while L2 runs are routed to L1 or L0 ([`route`]). On a nested
//! #VMEXIT, L2's state and the exit information go to vmcb12 and L1's
//! state is copied back from hsave ([`vmexit`]). TSC offsets compose as
//! [`tsc`] describes.

pub mod checks;
pub mod l1_cpu;
pub mod l2_vgif;
pub mod map_view;
pub mod merge;
pub mod route;
pub mod shadow_npt;
pub mod soft_int;
pub mod svm_insn;
pub mod tsc;
pub mod vgif;
pub mod vmexit;
pub mod vmload;
pub mod vmrun;
