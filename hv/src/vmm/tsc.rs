//! The kernel side of TSC virtualization: reading the host TSC for a VM,
//! programming the VMCB from [`svm::tsc`]'s model before every VMRUN (and,
//! while L2 runs, [`svm::nested::tsc`]'s hsave rules), and the guest's
//! TSC-related state (TSC_AUX, RDTSC interception).

use super::vcpu::Vcpu;
use super::vm::Vm;
use crate::arch::cpu::wrmsr;
use crate::time::host_tsc;
use core::sync::atomic::{AtomicU64, Ordering};
use svm::nested::tsc::program_entry;
use svm::tsc::TscMode;
use svm::{CleanBits, ControlArea, InterceptMisc1, InterceptMisc2};

/// TSC_AUX value currently in the MSR (the host itself never uses RDTSCP,
/// so the last guest's value may stay loaded).
static LOADED_TSC_AUX: AtomicU64 = AtomicU64::new(u64::MAX);

/// Marks the TSC offset as changed: the VMCB caches it with the intercepts
/// (APM Vol. 2, 15.15.3, clean bit 0), so every write clears that bit.
fn offset_written(c: &mut ControlArea) {
    c.vmcb_clean &= !CleanBits::INTERCEPTS.bits();
}

/// L1's TSC now (for emulated reads), after the monotonicity check.
pub fn guest_now(vcpu: &Vcpu, vm: &mut Vm) -> u64 {
    let host = host_tsc::read();
    vm.tsc.observe_host(host);
    vm.tsc.guest_tsc(&vcpu.tsc, host)
}

/// The running guest's TSC now: L1's, or while L2 runs, L1's + vmcb12's
/// offset (what RDTSC in L2 returns).
pub fn view_now(vcpu: &Vcpu, vm: &mut Vm) -> u64 {
    let l1 = guest_now(vcpu, vm);
    l1.wrapping_add(vcpu.nested.l2_tsc_offset().unwrap_or(0))
}

/// Right after a #VMEXIT: the guest may have read the TSC up to now, so
/// "now" is the point its TSC must never fall behind.
pub fn after_exit(vm: &mut Vm) {
    vm.tsc.observe_host(host_tsc::read());
}

/// Sets or clears the RDTSC/RDTSCP intercepts in `c` to `on`, keeping
/// the bits of `keep` (vmcb12's, while L2 runs: L0's intercepts add to L1's).
fn set_rdtsc_intercepts(c: &mut ControlArea, on: bool, keep: (u32, u32)) {
    let (m1, m2) = (InterceptMisc1::RDTSC.bits(), InterceptMisc2::RDTSCP.bits());
    let want1 = if on {
        c.intercept_misc1 | m1
    } else {
        (c.intercept_misc1 & !m1) | (keep.0 & m1)
    };
    let want2 = if on {
        c.intercept_misc2 | m2
    } else {
        (c.intercept_misc2 & !m2) | (keep.1 & m2)
    };
    if (want1, want2) != (c.intercept_misc1, c.intercept_misc2) {
        c.intercept_misc1 = want1;
        c.intercept_misc2 = want2;
        c.vmcb_clean &= !CleanBits::INTERCEPTS.bits();
    }
}

/// Everything TSC-related the next VMRUN needs.
pub fn prepare_entry(vcpu: &mut Vcpu, vm: &mut Vm) {
    vm.tsc.observe_host(host_tsc::read());
    // L1's offset, always derived from the model, never cached. The
    // hardware adds the offset to the raw TSC; the model's host TSC is the
    // hypervisor's view, which differs by the skew (0 outside tests).
    let l1 = vm.tsc.offset(&vcpu.tsc).wrapping_add(host_tsc::skew());
    let exiting = vm.tsc.mode == TscMode::Exiting;
    let nested = &mut vcpu.nested;
    let active = &mut vcpu.vmcb.control;
    match &nested.l2 {
        Some(l2) => {
            // Seed 000: hsave gets the new L1 offset, the live L2 VMCB the
            // same delta (a no-op when L1's offset did not change).
            let hsave = &mut nested.hsave.control;
            program_entry(l1, &mut active.tsc_offset, Some(&mut hsave.tsc_offset));
            set_rdtsc_intercepts(hsave, exiting, (0, 0));
            // vmcb12's RDTSCP intercept needs the RDTSC one too under QEMU
            // TCG, where RDTSCP obeys the RDTSC bit (docs/qemu-tcg.md); an
            // RDTSC L1 did not ask for is then L0's to emulate.
            let v12 = &l2.vmcb12.control;
            let rdtscp = v12.intercept_misc2 & InterceptMisc2::RDTSCP.bits() != 0;
            let v12_misc1 = v12.intercept_misc1
                | if rdtscp {
                    InterceptMisc1::RDTSC.bits()
                } else {
                    0
                };
            set_rdtsc_intercepts(active, exiting, (v12_misc1, v12.intercept_misc2));
        }
        None => {
            program_entry(l1, &mut active.tsc_offset, None);
            set_rdtsc_intercepts(active, exiting, (0, 0));
        }
    }
    offset_written(active);

    let aux = u64::from(vcpu.tsc_aux);
    if LOADED_TSC_AUX.swap(aux, Ordering::Relaxed) != aux {
        // SAFETY: TSC_AUX exists wherever RDTSCP does and only feeds RDTSCP;
        // the host does not use it.
        unsafe { wrmsr(svm::msr::TSC_AUX, aux) };
    }
}

/// Seed 004's VM-wide freeze and restore, around a wait of `us` by the PIT
/// (a clock that does not depend on the TSC): one state for the VM, one
/// delta for every vCPU on restore. While L2 runs, the next entry carries
/// the delta into hsave and the live L2 VMCB alike.
pub fn freeze_wait_restore(
    vcpu: &mut Vcpu,
    vm: &mut Vm,
    policy: svm::tsc::RestorePolicy,
    us: u64,
) -> Result<(), svm::tsc::TscStateMismatch> {
    // L1's offset is the model's (hsave holds the same value, written from
    // the model at every entry while L2 runs); vmcb12's offset is L1's and
    // is not part of L0's state.
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
