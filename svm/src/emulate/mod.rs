//! Pure logic of the privileged writes L0 intercepts and emulates for every
//! guest (L1, and L2 where L1 does not intercept them): control registers
//! ([`cr`]), DR7 ([`dr`]) and LTR ([`tr`]). Each function takes the guest's
//! state as plain data and returns the new state or the fault the CPU would
//! raise, with the checks of the AMD APM Vol. 2 (and KVM where it is silent).

pub mod alu;
pub mod cr;
pub mod dr;
pub mod efer;
pub mod fetch;
pub mod mmio;
pub mod tr;
pub mod unbacked;

/// A fault the emulated instruction raises instead of completing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// #GP with this error code.
    Gp(u16),
    /// #UD.
    Ud,
    /// #NP with this error code.
    Np(u16),
    /// #DB (general detect: DR6.BD).
    DbGeneralDetect,
}
