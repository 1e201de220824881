//! The kernel side of TSC virtualization: reading the host TSC for a VM,
//! programming the VMCB from [`svm::tsc`]'s model before every VMRUN, and
//! the guest's TSC-related state (TSC_AUX, RDTSC interception).

use super::vcpu::Vcpu;
use super::vm::Vm;
use crate::arch::cpu::wrmsr;
use crate::time::host_tsc;
use core::sync::atomic::{AtomicU64, Ordering};
use svm::tsc::TscMode;
use svm::{CleanBits, InterceptMisc1, InterceptMisc2, Vmcb};

/// TSC_AUX value currently in the MSR (the host itself never uses RDTSCP,
/// so the last guest's value may stay loaded).
static LOADED_TSC_AUX: AtomicU64 = AtomicU64::new(u64::MAX);

/// Writes VMCB.tsc_offset, and clears the clean bit that covers it (APM
/// Vol. 2, 15.15.3: the offset is cached with the intercepts, bit 0).
pub fn set_vmcb_offset(vmcb: &mut Vmcb, offset: u64) {
    vmcb.control.tsc_offset = offset;
    vmcb.control.vmcb_clean &= !CleanBits::INTERCEPTS.bits();
}

/// The guest's TSC now (for emulated reads), after the monotonicity check.
pub fn guest_now(vcpu: &Vcpu, vm: &mut Vm) -> u64 {
    let host = host_tsc::read();
    vm.tsc.observe_host(host);
    vm.tsc.guest_tsc(&vcpu.tsc, host)
}

/// Right after a #VMEXIT: the guest may have read the TSC up to now, so
/// "now" is the point its TSC must never fall behind.
pub fn after_exit(vm: &mut Vm) {
    vm.tsc.observe_host(host_tsc::read());
}

/// Everything TSC-related the next VMRUN needs.
pub fn prepare_entry(vcpu: &mut Vcpu, vm: &mut Vm) {
    vm.tsc.observe_host(host_tsc::read());
    // The hardware adds the offset to the raw TSC; the model's host TSC is
    // the hypervisor's view, which differs by the skew (0 outside tests).
    let offset = vm.tsc.offset(&vcpu.tsc).wrapping_add(host_tsc::skew());
    set_vmcb_offset(&mut vcpu.vmcb, offset);

    let c = &mut vcpu.vmcb.control;
    let (rdtsc, rdtscp) = (InterceptMisc1::RDTSC.bits(), InterceptMisc2::RDTSCP.bits());
    let (misc1, misc2) = match vm.tsc.mode {
        TscMode::Offsetting => (c.intercept_misc1 & !rdtsc, c.intercept_misc2 & !rdtscp),
        TscMode::Exiting => (c.intercept_misc1 | rdtsc, c.intercept_misc2 | rdtscp),
    };
    if (misc1, misc2) != (c.intercept_misc1, c.intercept_misc2) {
        c.intercept_misc1 = misc1;
        c.intercept_misc2 = misc2;
        c.vmcb_clean &= !CleanBits::INTERCEPTS.bits();
    }

    let aux = u64::from(vcpu.tsc_aux);
    if LOADED_TSC_AUX.swap(aux, Ordering::Relaxed) != aux {
        // SAFETY: TSC_AUX exists wherever RDTSCP does and only feeds RDTSCP;
        // the host does not use it.
        unsafe { wrmsr(svm::msr::TSC_AUX, aux) };
    }
}

/// Seed 004's VM-wide freeze and restore, around a wait of `us` by the PIT
/// (a clock that does not depend on the TSC): one state for the VM, one
/// delta for every vCPU on restore.
pub fn freeze_wait_restore(
    vcpu: &mut Vcpu,
    vm: &mut Vm,
    policy: svm::tsc::RestorePolicy,
    us: u64,
) -> Result<(), svm::tsc::TscStateMismatch> {
    let host = host_tsc::read();
    vm.tsc.observe_host(host);
    let state = vm.tsc.freeze(
        core::slice::from_ref(&vcpu.tsc),
        host,
        crate::time::now_ns(),
    );
    crate::time::pit::wait_us(us);
    let host = host_tsc::read();
    vm.tsc.restore(
        core::slice::from_mut(&mut vcpu.tsc),
        &state,
        policy,
        host,
        crate::time::now_ns(),
    )
}
