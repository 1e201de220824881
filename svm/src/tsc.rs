//! TSC virtualization arithmetic: one place for every formula, as pure
//! functions over plain data (the kernel reads the host TSC and writes the
//! VMCB; nothing here touches hardware).
//!
//! # Convention
//!
//! AMD: guest TSC = host TSC + VMCB.tsc_offset, modulo 2^64 (APM Vol. 2,
//! 15.30.5 "TSC Offset"). Offsets are two's-complement and wrap, so every
//! sum here is a wrapping `u64` sum; an offset of -(1 << 48) is stored as
//! `(1u64 << 48).wrapping_neg()`.
//!
//! # Model
//!
//! Per VM, one base offset `B`, shared by all its vCPUs. Per vCPU `i`:
//! - `A_i`: IA32_TSC_ADJUST as the guest reads it;
//! - `F_i`: what guest writes of IA32_TSC and IA32_TSC_ADJUST have folded
//!   into the offset (seed 003: TSC_ADJUST is emulated by folding it into
//!   the offset rather than loading the real MSR).
//!
//! The vCPU's (L1) offset is `O_i = B + F_i` and its TSC is
//! `TSC_i(H) = H + O_i`; [`VmTsc::offset`] is the only function that
//! computes `O_i`. The kernel programs VMCB.tsc_offset from it the moment
//! an operation below changes it (while L2 runs, into hsave and, as a delta,
//! the live L2 VMCB: [`crate::nested::tsc`]), and checks before every VMRUN
//! (in debug kernels) that the programmed offset is still `O_i`.
//!
//! - Guest writes TSC_ADJUST := a: `F_i += a - A_i`, `A_i = a` (the TSC moves
//!   by the same delta, as on hardware).
//! - Guest writes TSC := v: `d = v - TSC_i(H)`, `F_i += d`, `A_i += d`
//!   (architecturally a TSC write moves TSC_ADJUST by the same amount).
//! - Host-initiated restore of TSC_ADJUST := a: `A_i = a` only.
//! - VM creation at host TSC `H0`: `B = -H0`, `F_i = A_i = 0`, so every vCPU's
//!   TSC starts at 0 together (seed 002).
//! - Host TSC seen going backwards from `H_last` to `H`: `B += H_last - H`, so
//!   no vCPU's TSC decreases (seed 002's VxWorks report).
//!
//! # Freeze and restore (seed 004)
//!
//! Freeze at host TSC `H_f` and time `t_f` (ns) records `B`, every `(A_i,
//! F_i)`, `H_f` and `t_f`. Restore at `H_r`, `t_r` computes **one** delta
//! for the whole VM and leaves every `F_i` as recorded:
//!
//! `B' = B + (H_f - H_r) + E`, with `E = 0` for [`RestorePolicy::Pause`] and
//! `E = ticks(t_r - t_f)` for [`RestorePolicy::Continue`].
//!
//! Then `TSC_i(H_r) = H_f + B + F_i + E = TSC_i(H_f) + E`: a paused guest
//! resumes from the value it had at freeze, a continued one also counts the
//! time in between, and the differences between vCPUs (`F_i - F_j`) are
//! exactly what they were. The seed's `newoffset = oldoffset + (now -
//! tfreeze)` is the same statement in a convention where the VM-wide offset
//! is kept as time and the host TSC is synchronized across the freeze
//! (`H_r - H_f = ticks(t_r - t_f)`, so our `B' = B`); the tests below prove
//! ours rather than borrow it.

/// How guest RDTSC/RDTSCP are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TscMode {
    /// RDTSC runs natively and the CPU adds VMCB.tsc_offset.
    Offsetting,
    /// RDTSC/RDTSCP exit and the hypervisor returns the same value the
    /// offset would give.
    Exiting,
}

/// What the guest TSC does across a freeze.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestorePolicy {
    /// Resume from the value at freeze.
    Pause,
    /// Include the time elapsed since freeze (what a migrated VM expects).
    Continue,
}

/// Per-vCPU TSC state: TSC_ADJUST and what has been folded into the offset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuTsc {
    /// `A_i`: IA32_TSC_ADJUST as the guest reads it.
    adjust: u64,
    /// `F_i`: the vCPU's share of its offset.
    folded: u64,
}

impl VcpuTsc {
    /// IA32_TSC_ADJUST as the guest reads it.
    pub fn adjust(&self) -> u64 {
        self.adjust
    }

    /// Guest write of IA32_TSC_ADJUST: the TSC moves by `value - old`.
    pub fn write_adjust(&mut self, value: u64) {
        self.folded = self.folded.wrapping_add(value.wrapping_sub(self.adjust));
        self.adjust = value;
    }

    /// Host-initiated write of IA32_TSC_ADJUST (state restore): stores the
    /// value without moving the TSC.
    pub fn restore_adjust(&mut self, value: u64) {
        self.adjust = value;
    }
}

/// Per-VM TSC state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmTsc {
    /// `B`: the base offset every vCPU shares.
    base: u64,
    /// Latest host TSC this VM's time was computed from.
    last_host: u64,
    /// TSC frequency in kHz (for time ↔ ticks).
    khz: u64,
    /// How RDTSC is served.
    pub mode: TscMode,
}

/// Ticks in `ns` nanoseconds at `khz`.
pub fn ns_to_ticks(ns: u64, khz: u64) -> u64 {
    (u128::from(ns) * u128::from(khz) / 1_000_000) as u64
}

/// Nanoseconds in `ticks` at `khz` (0 if the frequency is unknown).
pub fn ticks_to_ns(ticks: u64, khz: u64) -> u64 {
    if khz == 0 {
        return 0;
    }
    (u128::from(ticks) * 1_000_000 / u128::from(khz)) as u64
}

impl VmTsc {
    /// A VM created at host TSC `host_now`: its TSC counts from 0.
    pub fn new(host_now: u64, khz: u64, mode: TscMode) -> Self {
        Self {
            base: host_now.wrapping_neg(),
            last_host: host_now,
            khz,
            mode,
        }
    }

    /// TSC frequency in kHz.
    pub fn khz(&self) -> u64 {
        self.khz
    }

    /// The vCPU's (L1) offset `O_i = B + F_i`: guest TSC = host TSC + this.
    pub fn offset(&self, vcpu: &VcpuTsc) -> u64 {
        self.base.wrapping_add(vcpu.folded)
    }

    /// The vCPU's TSC at host TSC `host`.
    pub fn guest_tsc(&self, vcpu: &VcpuTsc, host: u64) -> u64 {
        host.wrapping_add(self.offset(vcpu))
    }

    /// Takes note of a host TSC reading before it is used for this VM. If it
    /// is behind the last one, the base offset absorbs the difference so no
    /// vCPU's TSC goes backwards. Returns the compensation (0 normally).
    ///
    /// "Behind" is judged on the wrapping difference (as a signed 64-bit
    /// value), so a host view near the wrap point compares correctly.
    #[inline]
    pub fn observe_host(&mut self, host: u64) -> u64 {
        let behind = self.last_host.wrapping_sub(host);
        let back = if (behind as i64) > 0 { behind } else { 0 };
        self.base = self.base.wrapping_add(back);
        self.last_host = host;
        back
    }

    /// L0 moves the VM's TSC by `delta` ticks (wrapping): every vCPU's
    /// offset changes by the same amount, as when the host compensates a
    /// TSC change.
    pub fn shift(&mut self, delta: u64) {
        self.base = self.base.wrapping_add(delta);
    }

    /// Guest write of IA32_TSC := `value` at host TSC `host`: the vCPU's
    /// TSC becomes `value`, and TSC_ADJUST moves by the same delta.
    pub fn write_tsc(&self, vcpu: &mut VcpuTsc, host: u64, value: u64) {
        let delta = value.wrapping_sub(self.guest_tsc(vcpu, host));
        vcpu.folded = vcpu.folded.wrapping_add(delta);
        vcpu.adjust = vcpu.adjust.wrapping_add(delta);
    }

    /// Records the VM's TSC state at host TSC `host` and time `ns`.
    pub fn freeze(&self, vcpus: &[VcpuTsc], host: u64, ns: u64) -> TscState {
        let mut state = TscState {
            host_tsc: host,
            ns,
            base: self.base,
            khz: self.khz,
            vcpu_count: vcpus.len().min(MAX_VCPUS) as u64,
            vcpus: [VcpuTsc::default(); MAX_VCPUS],
        };
        for (slot, v) in state.vcpus.iter_mut().zip(vcpus) {
            *slot = *v;
        }
        state
    }

    /// Restores `state` at host TSC `host` and time `ns` with `policy`:
    /// one delta for the whole VM (see the module docs).
    pub fn restore(
        &mut self,
        vcpus: &mut [VcpuTsc],
        state: &TscState,
        policy: RestorePolicy,
        host: u64,
        ns: u64,
    ) -> Result<(), TscStateMismatch> {
        if state.vcpu_count != vcpus.len() as u64 || vcpus.len() > MAX_VCPUS {
            return Err(TscStateMismatch {
                recorded: state.vcpu_count,
                present: vcpus.len() as u64,
            });
        }
        let elapsed = match policy {
            RestorePolicy::Pause => 0,
            RestorePolicy::Continue => ns_to_ticks(ns.saturating_sub(state.ns), state.khz),
        };
        self.base = state
            .base
            .wrapping_add(state.host_tsc.wrapping_sub(host))
            .wrapping_add(elapsed);
        self.last_host = host;
        vcpus.copy_from_slice(&state.vcpus[..vcpus.len()]);
        Ok(())
    }
}

/// Most vCPUs a [`TscState`] records.
pub const MAX_VCPUS: usize = 8;

/// A restore for a different number of vCPUs than were frozen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TscStateMismatch {
    /// vCPUs in the state.
    pub recorded: u64,
    /// vCPUs in the VM.
    pub present: u64,
}

/// A VM's TSC state frozen at one instant: plain integers, serializable
/// with [`TscState::to_words`] / [`TscState::from_words`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TscState {
    /// Host TSC at freeze (`H_f`).
    pub host_tsc: u64,
    /// Time at freeze in ns (`t_f`).
    pub ns: u64,
    /// `B` at freeze.
    pub base: u64,
    /// TSC frequency in kHz.
    pub khz: u64,
    /// vCPUs recorded.
    pub vcpu_count: u64,
    /// Their `(A_i, F_i)`.
    pub vcpus: [VcpuTsc; MAX_VCPUS],
}

/// Length of [`TscState::to_words`].
pub const STATE_WORDS: usize = 6 + 2 * MAX_VCPUS;
const STATE_VERSION: u64 = 1;

impl TscState {
    /// Serializes as little-endian-agnostic words: version, then fields.
    pub fn to_words(&self) -> [u64; STATE_WORDS] {
        let mut w = [0; STATE_WORDS];
        w[..6].copy_from_slice(&[
            STATE_VERSION,
            self.host_tsc,
            self.ns,
            self.base,
            self.khz,
            self.vcpu_count,
        ]);
        for (i, v) in self.vcpus.iter().enumerate() {
            w[6 + 2 * i] = v.adjust;
            w[7 + 2 * i] = v.folded;
        }
        w
    }

    /// Parses [`TscState::to_words`] output; `None` for another version or
    /// too many vCPUs.
    pub fn from_words(w: &[u64; STATE_WORDS]) -> Option<Self> {
        if w[0] != STATE_VERSION || w[5] > MAX_VCPUS as u64 {
            return None;
        }
        let mut vcpus = [VcpuTsc::default(); MAX_VCPUS];
        for (i, v) in vcpus.iter_mut().enumerate() {
            *v = VcpuTsc {
                adjust: w[6 + 2 * i],
                folded: w[7 + 2 * i],
            };
        }
        Some(Self {
            host_tsc: w[1],
            ns: w[2],
            base: w[3],
            khz: w[4],
            vcpu_count: w[5],
            vcpus,
        })
    }
}

pub mod intercepts;
pub mod skew;

#[cfg(test)]
mod tests;
