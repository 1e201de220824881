//! The host TSC as the hypervisor sees it.
//!
//! Read with RDTSC only: under QEMU TCG, RDMSR of IA32_TSC returns 0 (see
//! the docs/qemu-tcg.md).
//!
//! One clock for every CPU (`svm::tsc::skew`): a CPU's TSC is read in the
//! boot CPU's time base, less the CPU's compensation measured at boot
//! (`smp::tsc_sync`), and the VMCB offsets L0 programs carry the same
//! compensation ([`vmcb_offset`]), so a vCPU's TSC does not depend on the
//! CPU it runs on. A test hook can move the hypervisor's view backwards
//! ([`shift_back`]) to show that guests never see it: the VMCB offset is
//! computed against this view, so without compensation the guest TSC would
//! drop by the same amount.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use svm::tsc::skew::HostClock;

/// Added (wrapping) to the hypervisor's view: 0 except under the test hook.
static SHIFT: AtomicU64 = AtomicU64::new(0);
/// Some CPU has had a simulated TSC difference ([`simulate`]).
static SIMULATING: AtomicBool = AtomicBool::new(false);

/// This CPU's TSC (with a self-test's simulated difference, [`simulate`]).
pub fn read_raw() -> u64 {
    read_hw().wrapping_add(simulated_here())
}

/// This CPU's TSC as RDTSC gives it, without a simulated difference: for
/// durations on one CPU, and for the run loop, which adds the difference
/// it looked up once per entry ([`simulated_here`]).
#[inline(always)]
pub fn read_hw() -> u64 {
    // SAFETY: RDTSC has no side effects; CR4.TSD is clear in the kernel.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// This CPU's simulated TSC difference ([`simulate`]; one flag test when
/// there has been none). What the hardware would add to a guest's TSC on
/// this CPU: the run loop adds it to the VMCB offset for the VMRUN only
/// (`vmm::tsc::simulate_hardware`), as a real difference is in the TSC the
/// CPU adds the offset to.
#[inline(always)]
pub fn simulated_here() -> u64 {
    if !SIMULATING.load(Ordering::Relaxed) {
        return 0;
    }
    crate::smp::this().tsc_simulated.load(Ordering::Relaxed)
}

/// This CPU's clock: its compensation and the test shift.
#[inline]
fn clock() -> HostClock {
    HostClock {
        compensation: crate::smp::this().tsc_compensation.load(Ordering::Relaxed),
        shift: SHIFT.load(Ordering::Relaxed),
    }
}

/// The host TSC as the hypervisor uses it for guests.
pub fn read() -> u64 {
    view(read_raw())
}

/// The hypervisor's view of `raw`, a [`read_raw`] reading on this CPU.
#[inline]
pub fn view(raw: u64) -> u64 {
    clock().view(raw)
}

/// This CPU's TSC `raw` ([`read_raw`]) in the boot CPU's time base, without
/// the test shift: L0's own clock (`time::now_ns`).
pub fn reference(raw: u64) -> u64 {
    clock().reference(raw)
}

/// The VMCB offset that gives a guest `view + model` on this CPU (the
/// hardware adds it to this CPU's TSC).
pub fn vmcb_offset(model: u64) -> u64 {
    clock().vmcb_offset(model)
}

/// Test hook: the hypervisor's view of the host TSC jumps back by `ticks`.
pub fn shift_back(ticks: u64) {
    SHIFT.fetch_sub(ticks, Ordering::Relaxed);
}

/// Self-tests only: CPU `cpu`'s TSC runs `ticks` (wrapping) from its real
/// value from now on, for everything that reads it: the kernel
/// ([`read_raw`]: the boot measurement, L0's clock) and its guests (VMRUN
/// on that CPU, [`simulated_here`]). QEMU TCG gives every CPU one TSC, and
/// its TSC cannot be written; this makes a skewed CPU to measure and
/// compensate. Set it while no vCPU runs on `cpu`.
pub fn simulate(cpu: &crate::smp::PerCpu, ticks: u64) {
    cpu.tsc_simulated.store(ticks, Ordering::Relaxed);
    if ticks != 0 {
        SIMULATING.store(true, Ordering::Relaxed);
    }
}
