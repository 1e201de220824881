//! Running guests in VMCBs: SVM enable, guest memory and nested paging, the
//! world switch, VMCB set-up and #VMEXIT handling.

pub mod enable;
pub mod exits;
pub mod guest_fpu;
pub mod loader;
pub mod memory;
pub mod multi;
pub mod nested;
pub mod npt;
pub mod phys_box;
pub mod setup;
pub mod tsc;
pub mod vcpu;
pub mod vm;
pub mod world_switch;
pub mod xcr0;
