//! The kernel side of TSC virtualization: reading the host TSC for a VM,
//! programming L1's TSC offset when L0 changes it, and the guest's
//! TSC-related state (TSC_AUX, RDTSC interception).
//!
//! # Who writes the offset (seed 000)
//!
//! L0 changes L1's offset only through the functions of this module (a
//! guest TSC or TSC_ADJUST write, a backwards host TSC absorbed by
//! [`svm::tsc::VmTsc::observe_host`], the test shift, a freeze/restore, the
//! test move), and each change goes, at the moment it happens, through
//! [`l1_offset_changed`], which programs the new offset: into the active
//! VMCB, or while L2 runs into hsave with the same delta applied to the
//! live L2 VMCB. After a nested #VMEXIT L1 runs with the offset copied back
//! from hsave: nothing recomputes it before an entry. [`prepare_entry`]
//! only checks it against the model (in debug kernels).

use super::vcpu::Vcpu;
use super::vm::Vm;
use crate::arch::cpu::wrmsr;
use crate::time::host_tsc;
use core::sync::atomic::Ordering;
use svm::nested::tsc::{compose, program_l1_offset};
use svm::tsc::intercepts::{l2_keep, rdtsc_intercepts, unarmed_l2_misc1};
use svm::tsc::TscMode;
use svm::{CleanBits, ControlArea};

/// Marks the TSC offset as changed: the VMCB caches it with the intercepts
/// (APM Vol. 2, 15.15.3, clean bit 0), so every write clears that bit.
fn offset_written(c: &mut ControlArea) {
    c.vmcb_clean &= !CleanBits::INTERCEPTS.bits();
}

/// L1's offset as this CPU must be given it: the model's offset is against
/// the hypervisor's view of the host TSC (the boot CPU's time base, plus
/// the test shift), and the CPU adds the offset to its own TSC; the two
/// differ by this CPU's compensation and the shift
/// (`svm::tsc::skew::HostClock::vmcb_offset`).
fn model_l1_offset(vcpu: &Vcpu, vm: &Vm) -> u64 {
    host_tsc::vmcb_offset(vm.tsc.offset(&vcpu.tsc))
}

/// The one place L0 programs L1's TSC offset, called whenever the model
/// (or the host clock) has just changed it. While L2 runs, hsave takes the
/// new L1 offset and the live L2 VMCB the same delta (seed 000); the nested
/// #VMEXIT then hands L1 hsave's copy. The VM's other vCPUs (if any) are
/// out of guest mode when this returns and reprogram theirs from the same
/// model before they run again (`multi::vm_tsc_changed`).
pub fn l1_offset_changed(vcpu: &mut Vcpu, vm: &Vm) {
    reprogram_l1_offset(vcpu, vm);
    super::multi::vm_tsc_changed(vm);
}

/// [`l1_offset_changed`] for this vCPU only: another vCPU changed the
/// VM-wide model (`multi`).
pub fn reprogram_l1_offset(vcpu: &mut Vcpu, vm: &Vm) {
    let new_l1 = model_l1_offset(vcpu, vm);
    let nested = &mut vcpu.nested;
    let hsave = nested
        .l2
        .is_some()
        .then_some(&mut nested.hsave.control.tsc_offset);
    let active = &mut vcpu.vmcb.control;
    program_l1_offset(new_l1, &mut active.tsc_offset, hsave);
    offset_written(active);
}

/// Self-tests (`time::host_tsc::simulate`): the VMCB offset moves by
/// `ticks` around one VMRUN, as the guest's TSC would on a CPU whose TSC is
/// that far from the others.
pub fn simulate_hardware(c: &mut ControlArea, ticks: u64) {
    c.tsc_offset = c.tsc_offset.wrapping_add(ticks);
    offset_written(c);
}

/// Takes note of a host TSC reading before it is used for this VM: a host
/// TSC behind the last one is absorbed into L1's offset, programmed now.
fn observe(vcpu: &mut Vcpu, vm: &mut Vm, host: u64) {
    if vm.tsc.observe_host(host) != 0 {
        l1_offset_changed(vcpu, vm);
    }
}

/// L1's TSC now (for emulated reads), after the monotonicity check.
pub fn guest_now(vcpu: &mut Vcpu, vm: &mut Vm) -> u64 {
    let host = host_tsc::read();
    observe(vcpu, vm, host);
    vm.tsc.guest_tsc(&vcpu.tsc, host)
}

/// The running guest's TSC now: L1's, or while L2 runs, L1's + vmcb12's
/// offset (what RDTSC in L2 returns).
pub fn view_now(vcpu: &mut Vcpu, vm: &mut Vm) -> u64 {
    let l1 = guest_now(vcpu, vm);
    l1.wrapping_add(vcpu.nested.l2_tsc_offset().unwrap_or(0))
}

/// Right after a #VMEXIT: the guest may have read the TSC up to now, so
/// "now" is the point its TSC must never fall behind. `raw` is the run
/// loop's raw reading taken at the exit (one RDTSC serves both; the
/// hypervisor's view of it, as [`host_tsc::read`] gives).
pub fn after_exit(vcpu: &mut Vcpu, vm: &mut Vm, raw: u64) {
    observe(vcpu, vm, host_tsc::view(raw));
}

/// WRMSR IA32_TSC := `value` (from L1, or from L2 when L1 does not
/// intercept it): sets L1's TSC.
pub fn write_tsc(vcpu: &mut Vcpu, vm: &mut Vm, value: u64) {
    let host = host_tsc::read();
    observe(vcpu, vm, host);
    vm.tsc.write_tsc(&mut vcpu.tsc, host, value);
    l1_offset_changed(vcpu, vm);
}

/// WRMSR IA32_TSC_ADJUST := `value` (L1 and L2 share the register): L1's
/// TSC moves by the change.
pub fn write_adjust(vcpu: &mut Vcpu, vm: &mut Vm, value: u64) {
    vcpu.tsc.write_adjust(value);
    l1_offset_changed(vcpu, vm);
}

/// L0 moves the VM's TSC by `delta` ticks (the test hook HC_TSC_MOVE_L1).
pub fn move_l1(vcpu: &mut Vcpu, vm: &mut Vm, delta: u64) {
    vm.tsc.shift(delta);
    l1_offset_changed(vcpu, vm);
}

/// The test hook HC_TSC_SHIFT_HOST_BACK: the hypervisor's view of the host
/// TSC jumps back by `ticks`. The shift is part of the programmed offset;
/// the next reading of the host TSC (here, at once: the entries do not
/// check, [`observe_on_run`]) sees it behind the last one and absorbs the
/// jump, as for a real host TSC going backwards.
pub fn shift_host_back(vcpu: &mut Vcpu, vm: &mut Vm, ticks: u64) {
    host_tsc::shift_back(ticks);
    l1_offset_changed(vcpu, vm);
    observe(vcpu, vm, host_tsc::read());
}

/// Sets or clears the RDTSC/RDTSCP intercepts in `c` to `on`, keeping
/// the bits of `keep` (vmcb12's, while L2 runs: L0's intercepts add to L1's).
#[inline(always)]
fn set_rdtsc_intercepts(c: &mut ControlArea, on: bool, keep: (u32, u32)) {
    let now = (c.intercept_misc1, c.intercept_misc2);
    let want = rdtsc_intercepts(now, on, keep);
    if want != now {
        (c.intercept_misc1, c.intercept_misc2) = want;
        c.vmcb_clean &= !CleanBits::INTERCEPTS.bits();
    }
}

/// Debug kernels: the programmed offsets are the model's (L1's in the
/// active VMCB, or in hsave with L1's + vmcb12's in the active VMCB while
/// L2 runs). Guests cannot reach these fields (L0 uses its vmcb12 copy),
/// so a mismatch is an L0 bug.
fn cross_check(vcpu: &Vcpu, vm: &Vm) {
    let l1 = model_l1_offset(vcpu, vm);
    let active = vcpu.vmcb.control.tsc_offset;
    match &vcpu.nested.l2 {
        Some(l2) => {
            debug_assert_eq!(
                vcpu.nested.hsave.control.tsc_offset, l1,
                "hsave's L1 TSC offset is not the model's"
            );
            debug_assert_eq!(
                active,
                compose(l1, l2.vmcb12.control.tsc_offset),
                "L2's TSC offset is not L1's + vmcb12's"
            );
        }
        None => debug_assert_eq!(active, l1, "L1's TSC offset is not the model's"),
    }
}

/// When the run loop takes the vCPU (possibly on another CPU than last
/// time, or than the one that set it up): L1's offset is programmed for
/// this CPU's compensation (`svm::tsc::skew`), and the host TSC is checked
/// against the last reading, a backwards one absorbed. Within one run the
/// vCPU stays on this CPU, whose TSC only moves forwards, and L0's own
/// view moves back only by [`shift_host_back`], which observes at once: so
/// the entries need no check of their own, and the exits' ([`after_exit`])
/// keep `last_host` current.
pub fn observe_on_run(vcpu: &mut Vcpu, vm: &mut Vm) {
    reprogram_l1_offset(vcpu, vm);
    observe(vcpu, vm, host_tsc::read());
}

/// Everything TSC-related the next VMRUN needs: the RDTSC intercepts of
/// the TSC mode, TSC_AUX. The offset is already programmed (see the module
/// docs), and the host TSC was checked at the last exit
/// ([`observe_on_run`]).
#[inline(always)]
pub fn prepare_entry(vcpu: &mut Vcpu, vm: &mut Vm) {
    if cfg!(debug_assertions) {
        cross_check(vcpu, vm);
    }
    // A CPU model without RDTSCP needs its RDTSCP to exit (to be #UD):
    // under TCG that is the RDTSC intercept.
    let exiting = vm.tsc.mode == TscMode::Exiting
        || vm
            .hidden_cpu
            .contains(svm::cpuid_filter::HiddenFeatures::RDTSCP);
    // Sticky (`svm::tsc::intercepts`): until L0 first wants the exits, no
    // VMCB of L1's holds its bits, and only L2's RDTSCP quirk needs a look.
    vcpu.rdtsc_armed |= exiting;
    let nested = &mut vcpu.nested;
    let active = &mut vcpu.vmcb.control;
    match (&nested.l2, vcpu.rdtsc_armed) {
        (None, false) => {}
        (Some(l2), false) => {
            let misc1 = unarmed_l2_misc1(active.intercept_misc1, l2.vmcb12.control.intercept_misc2);
            if misc1 != active.intercept_misc1 {
                active.intercept_misc1 = misc1;
                active.vmcb_clean &= !CleanBits::INTERCEPTS.bits();
            }
        }
        (Some(l2), true) => {
            set_rdtsc_intercepts(&mut nested.hsave.control, exiting, (0, 0));
            // vmcb12's RDTSCP intercept needs the RDTSC one too under QEMU
            // TCG, where RDTSCP obeys the RDTSC bit (docs/qemu-tcg.md); an
            // RDTSC L1 did not ask for is then L0's to emulate.
            let v12 = &l2.vmcb12.control;
            let keep = l2_keep(v12.intercept_misc1, v12.intercept_misc2);
            set_rdtsc_intercepts(active, exiting, keep);
        }
        (None, true) => set_rdtsc_intercepts(active, exiting, (0, 0)),
    }

    // The MSR is per CPU: which value this CPU holds (vCPUs of one VM run
    // on several CPUs; a global record let a CPU keep another value).
    let aux = u64::from(vcpu.tsc_aux);
    let loaded = &crate::smp::this().loaded_tsc_aux;
    if loaded.swap(aux, Ordering::Relaxed) != aux {
        // SAFETY: TSC_AUX exists wherever RDTSCP does and only feeds RDTSCP;
        // the host does not use it.
        unsafe { wrmsr(svm::msr::TSC_AUX, aux) };
    }
}

/// Seed 004's VM-wide freeze and restore, around a wait of `us` by the PIT
/// (a clock that does not depend on the TSC): one state for the VM, one
/// delta for every vCPU on restore, programmed at once (while L2 runs:
/// into hsave and, as the same delta, the live L2 VMCB).
pub fn freeze_wait_restore(
    vcpu: &mut Vcpu,
    vm: &mut Vm,
    policy: svm::tsc::RestorePolicy,
    us: u64,
) -> Result<(), svm::tsc::TscStateMismatch> {
    // L1's offset is the model's (the programmed one follows it); vmcb12's
    // offset is L1's and is not part of L0's state.
    // The other vCPUs stay out of guest mode until the restore (they wait
    // for the VM lock): none reads the TSC while it is frozen.
    super::multi::vm_tsc_changed(vm);
    let host = host_tsc::read();
    observe(vcpu, vm, host);
    let state = vm.tsc.freeze(
        core::slice::from_ref(&vcpu.tsc),
        host,
        crate::time::now_ns(),
    );
    // The VM lock is held through the wait, on purpose: no other vCPU
    // enters the guest or handles an exit (which may read the VM's TSC)
    // until the restore. Other vCPUs' PIT waits (`multi`) take turns.
    crate::time::pit::wait_us_for_guest(us);
    // The clock before the host TSC (at the freeze, after it): the elapsed
    // time then never includes a moment the host TSC also counts, so a
    // QEMU descheduled between the two reads cannot push the guest's TSC
    // ahead of real time (seen under load: +37 us).
    let ns = crate::time::now_ns();
    let host = host_tsc::read();
    let restored = vm.tsc.restore(
        core::slice::from_mut(&mut vcpu.tsc),
        &state,
        policy,
        host,
        ns,
    );
    l1_offset_changed(vcpu, vm);
    restored
}
