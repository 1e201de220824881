//! AMD SVM building blocks: plain data and pure logic shared by the kernel
//! and covered by host unit tests.
//!
//! Everything here follows the AMD64 Architecture Programmer's Manual,
//! Volume 2 (publication 24593, rev. 3.44), chapter 15 "Secure Virtual
//! Machine" and Appendix B "VMCB Layout". No module touches hardware: the
//! kernel reads CPUID/MSRs and runs VMRUN, this crate only describes and
//! decodes what it sees.
//!
//! Where QEMU's software SVM (TCG) departs from silicon the affected
//! helper says so (see `docs/qemu-tcg.md`).
#![no_std]
#![warn(missing_docs)]

#[cfg(test)]
extern crate std;

pub mod ap_start;
mod bitmap;
pub mod boot_cmdline;
pub mod boot_pack;
pub mod cpuid;
pub mod cpuid_filter;
pub mod cr;
#[cfg(any(test, feature = "decode"))]
pub mod decode;
pub mod devices;
pub mod emulate;
pub mod event;
pub mod exception;
pub mod exec_ctl;
pub mod exit;
pub mod exit_counts;
pub mod fuzz;
pub mod guest_abi;
pub mod int_ctl;
pub mod intercept;
pub mod iopm;
pub mod irq;
pub mod msr;
pub mod msr_table;
pub mod msrpm;
pub mod multiboot;
pub mod nested;
pub mod nmi;
pub mod shadow_step;
pub mod tsc;
pub mod vcpu_sched;
pub mod vmcb;
pub mod walk;
pub mod walk_memo;

pub use cpuid::{SvmAvailability, SvmFeatureFlags, SvmFeatures};
pub use event::{EventInfo, EventInj, EventType, ExitIntInfo, IllegalEvent};
pub use exec_ctl::{NestedCtl, VirtExt};
pub use exit::{
    AddressSize, CrAccessInfo, ExitCode, IoDirection, IoioInfo, MsrAccess, NpfErrorCode,
    SegmentRegister,
};
pub use int_ctl::{CleanBits, IntCtl, InterruptState, TlbControl};
pub use intercept::{
    CrIntercepts, DrIntercepts, ExceptionIntercepts, InterceptMisc1, InterceptMisc2, InterceptMisc3,
};
pub use iopm::IoPermissionMap;
pub use msrpm::{MsrNotCovered, MsrPermissionMap};
pub use vmcb::{ControlArea, StateSaveArea, Vmcb, VmcbSegment};
