//! Guest-side code run by the hypervisor's self-tests: a tiny runtime and the
//! L1/L2 test guests. Built for `x86_64-unknown-none` by `cargo xtask build`.
//!
//! The runtime and the first guests arrive with the guest self-test harness;
//! until then this crate only establishes the build.
#![no_std]
