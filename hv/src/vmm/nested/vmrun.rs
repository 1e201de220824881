//! L1's VMRUN, emulated in named steps: preconditions, stash L1 in hsave,
//! read vmcb12 once into hypervisor memory (its state where L2 runs),
//! check the copy, merge the MSR map, build L2's controls in place.

use super::{l1_vmcb_mut, vmcb_in_l1, Nested, L2, L2_ASID};
use crate::vmm::enable::HostCpu;
use crate::vmm::exits::{inject, rip, Action};
use crate::vmm::vcpu::Vcpu;
use crate::vmm::vm::{Vm, PASSTHROUGH_MSRS};
use alloc::boxed::Box;
use svm::nested::checks::{check_l2, enters_long_mode, vmrun_loads_pdptes, Vmcb12Error};
use svm::nested::map_view::MsrpmView;
use svm::nested::merge::{merge_msrpm_holes, MsrpmHoles};
use svm::nested::vmexit::write_vmexit_invalid;
use svm::nested::vmrun::{
    build_l2_controls_in, read_vmcb12, soft_event_entry, stash_l1, unload_l2_state, L2Controls,
};
use svm::{EventInfo, InterceptMisc1, MsrPermissionMap, TlbControl, Vmcb};

/// Emulates VMRUN executed by L1.
pub fn emulate(vcpu: &mut Vcpu, vm: &mut Vm, host: &HostCpu) -> Action {
    // Step 0: an instruction breakpoint on VMRUN faults before it (and
    // before the intercept); QEMU TCG arms none for a guest, so L0 checks
    // (APM 13.1.1; kvm-unit-tests host_rflags).
    let s = &mut vcpu.vmcb.state;
    let (rip, cpl, gpa) = (s.cs.base.wrapping_add(s.rip), s.cpl, s.rax);
    if let Some(b) = svm::emulate::dr::instruction_breakpoints(s.dr7, &vcpu.db, rip, s.rflags) {
        s.dr6 |= b;
        return inject(vcpu, EventInfo::exception(1));
    }
    // Step 1: preconditions (APM Vol. 2, 15.5: #UD without EFER.SVME, #GP at
    // CPL > 0, and the address in RAX must be a page of L1's memory).
    if !vcpu.nested.svme {
        return inject(vcpu, EventInfo::exception(6));
    }
    let gp = EventInfo::exception_with_error_code(13, 0);
    if cpl != 0 || vcpu.nested.hsave_pa == 0 || !vmcb_in_l1(&vm.memory, gpa) {
        return inject(vcpu, gp);
    }
    // L1 resumes after its VMRUN when L2 exits.
    let resume_rip = match rip::insn_len(vcpu, vm, host) {
        Ok(len) => rip::rip_after(vcpu, len),
        Err(no) => return no.deliver(vcpu, vm, host),
    };

    // Step 2: stash L1's state and L0's controls in hsave (vmcb12's state
    // is read over L1's next).
    let Some(in_l1) = l1_vmcb_mut(&mut vm.memory, gpa) else {
        return inject(vcpu, gp);
    };
    let mut copy = vcpu
        .nested
        .spare_vmcb12
        .take()
        .unwrap_or_else(zeroed_box::<Vmcb>);
    let nested: &mut Nested = &mut vcpu.nested;
    let active: &mut Vmcb = &mut vcpu.vmcb;
    let hsave: &mut Vmcb = &mut nested.hsave;
    stash_l1(hsave, active);
    hsave.state.rip = resume_rip;

    // Step 3: read vmcb12 from L1 memory once, into hypervisor memory: the
    // controls into L0's copy, the state straight into the active VMCB,
    // where L2 is to run. Only these copies are used after.
    read_vmcb12(&mut copy, &mut active.state, in_l1);

    // Step 4: check the copies against the CPU L1 is shown (its CPUID:
    // see Vm::l1_limits); a bad vmcb12 is L1's VMEXIT_INVALID, nothing
    // more.
    let verdict = if vm.vmcb12_checks {
        check_l2(&active.state, &copy.control, &vm.l1_limits)
    } else {
        Ok(())
    };
    // Every mode L2 may start in runs (real mode, 16/32-bit protected mode,
    // 32-bit paging, PAE, long mode): L0 fetches, walks and decodes in each.
    // Legacy PAE paging without nested paging loads the PDPTEs at VMRUN,
    // from L1 memory (KVM nested_svm_load_cr3; kvm-unit-tests svm_pae_test).
    let l2 = &active.state;
    let pdptes_bad = || {
        vm.vmcb12_checks
            && vmrun_loads_pdptes(l2, &copy.control, &vm.l1_limits)
            && !rip::pdptes_valid(vm, l2.cr3)
    };
    let verdict = match verdict {
        Ok(()) if pdptes_bad() => Err(Vmcb12Error::PdpteReserved),
        other => other,
    };
    if let Err(why) = verdict {
        // L1's state as it was, RIP past its VMRUN (hsave has both).
        unload_l2_state(&mut active.state, &hsave.state);
        nested.spare_vmcb12 = Some(copy);
        return refuse(vcpu, vm, host, gpa, why);
    }

    // EFER.LMA is the CPU's, not L1's: set exactly when EFER.LME and
    // CR0.PG are (APM 14.6.1), the condition every long-mode check keyed
    // on, so L2 runs in the mode the checks judged.
    let lma = svm::msr::EFER_LMA;
    let l2 = &mut active.state;
    l2.efer = match enters_long_mode(l2) {
        true => l2.efer | lma,
        false => l2.efer & !lma,
    };

    // Step 5: the permission maps for L2, the union of L0's and L1's (L1's
    // bytes outside its RAM read as all-ones). L0 intercepts every port
    // and every MSR but the few it passes through, so the union is L0's
    // I/O map itself, and L0's MSR map with only those MSRs' bits taken
    // from L1's. A map L1 does not enable (MSR_PROT clear) means nothing.
    let merged: &mut MsrPermissionMap = &mut nested.msrpm;
    if !nested.msrpm_holds_l0 {
        merged.0.copy_from_slice(&vm.msrpm.0);
        nested.msrpm_holds_l0 = true;
    }
    let misc1 = InterceptMisc1::from_bits_retain(copy.control.intercept_misc1);
    let l1_msrpm = misc1
        .contains(InterceptMisc1::MSR_PROT)
        .then(|| MsrpmView::in_ram(vm.memory.bytes(), copy.control.msrpm_base_pa & !0xfff));
    merge_msrpm_holes(l1_msrpm.as_ref(), &L2_MSR_HOLES, &mut merged.0);

    // Step 6: build L2's controls in place in the active VMCB (its state
    // is there already).
    let l2c = L2Controls {
        msrpm_pa: nested.msrpm.phys(),
        iopm_pa: vm.iopm.phys(),
        asid: L2_ASID,
        // L1 may have changed L2's page tables since the last run.
        tlb_control: TlbControl::FlushAll.as_u8(),
        // Nested VGIF runs on the CPU's (svm::nested::l2_vgif).
        vgif_offered: host.features.has(svm::SvmFeatureFlags::VGIF),
    };
    build_l2_controls_in(&mut active.control, &hsave.control, &copy.control, &l2c);
    let host_nrips = host.features.has(svm::SvmFeatureFlags::NRIPS);
    let (rip, soft) = soft_event_entry(
        copy.control.event_inj,
        active.state.rip,
        copy.control.next_rip,
        host_nrips,
    );
    active.state.rip = rip;
    nested.soft_event = soft;
    nested.gif = true;
    nested.l2 = Some(L2 {
        vmcb12_gpa: gpa,
        svme: active.state.efer & svm::msr::EFER_SVME != 0,
        vmcb12: copy,
    });
    // Step 7: nested paging, when vmcb12 enables it (nested::npt).
    if let Err(stop) = super::npt::enter(vcpu, vm) {
        return Action::Stop(stop);
    }
    Action::Resume
}

/// The MSRPM bytes and bits of L0's pass-through MSRs, where L2's merged
/// map follows L1's ([`merge_msrpm_holes`]): computed at build time.
const L2_MSR_HOLES: MsrpmHoles = MsrpmHoles::new(&PASSTHROUGH_MSRS);

/// VMRUN with a vmcb12 the checks refused (L1's state already back in the
/// active VMCB): VMEXIT_INVALID in vmcb12, and L1 resumes after its VMRUN.
#[cold]
#[inline(never)]
fn refuse(vcpu: &mut Vcpu, vm: &mut Vm, host: &HostCpu, gpa: u64, why: Vmcb12Error) -> Action {
    log::debug!("vm {}: vmcb12 at {gpa:#x} refused: {why:?}", vm.name);
    let Some(in_l1) = l1_vmcb_mut(&mut vm.memory, gpa) else {
        return inject(vcpu, EventInfo::exception_with_error_code(13, 0));
    };
    write_vmexit_invalid(&mut in_l1.control);
    vcpu.nested.gif = false;
    // VMRUN completed: RF cleared, TF's trap now (APM 15.5.2).
    vcpu.vmcb.state.rflags &= !svm::exception::RFLAGS_RF;
    rip::single_step(vcpu, vm, host)
}

/// A zeroed `T` on the heap, never on the stack (a VMCB is 4 KiB).
/// Only for plain-integer types, which are valid when all-zero.
fn zeroed_box<T>() -> Box<T> {
    // SAFETY: callers use it for Vmcb: all-zero is valid.
    unsafe { Box::<T>::new_zeroed().assume_init() }
}
