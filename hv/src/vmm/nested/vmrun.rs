//! L1's VMRUN, emulated in named steps: preconditions, read vmcb12 once,
//! check the copy, stash L1 in hsave, build L2 in place.

use super::{l1_maps, l1_vmcb_mut, Nested, L2, L2_ASID};
use crate::vmm::enable::HostCpu;
use crate::vmm::exits::{inject, rip, Action};
use crate::vmm::vcpu::Vcpu;
use crate::vmm::vm::{Vm, PASSTHROUGH_MSRS};
use alloc::boxed::Box;
use svm::nested::checks::{check_vmcb12, enters_long_mode, vmrun_loads_pdptes, Vmcb12Error};
use svm::nested::merge::merge_msrpm_holes;
use svm::nested::vmexit::write_vmexit_invalid;
use svm::nested::vmrun::{build_l2_controls, load_l2_state, soft_event_entry, L2Controls};
use svm::{EventInfo, InterceptMisc1, TlbControl, Vmcb};

/// Emulates VMRUN executed by L1.
pub fn emulate(vcpu: &mut Vcpu, vm: &mut Vm, host: &HostCpu) -> Action {
    // Step 0: an instruction breakpoint on VMRUN faults before it (and
    // before the intercept); QEMU TCG arms none for a guest, so L0 checks
    // (APM 13.1.1; kvm-unit-tests host_rflags).
    let s = &mut vcpu.vmcb.state;
    let rip = s.cs.base.wrapping_add(s.rip);
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
    if vcpu.vmcb.state.cpl != 0 || vcpu.nested.hsave_pa == 0 {
        return inject(vcpu, gp);
    }
    let gpa = vcpu.vmcb.state.rax;
    if l1_vmcb_mut(&mut vm.memory, gpa).is_none() {
        return inject(vcpu, gp);
    }
    // L1 resumes after its VMRUN when L2 exits.
    let resume_rip = match rip::insn_len(vcpu, vm, host) {
        Ok(len) => rip::rip_after(vcpu, len),
        Err(no) => return no.deliver(vcpu, vm, host),
    };

    // Step 2: read vmcb12 from L1 memory once; only the copy is used after.
    let Some(in_l1) = l1_vmcb_mut(&mut vm.memory, gpa) else {
        return inject(vcpu, gp);
    };
    let mut copy = vcpu
        .nested
        .spare_vmcb12
        .take()
        .unwrap_or_else(zeroed_box::<Vmcb>);
    // The live part (Vmcb::LIVE_BYTES): the rest is read by nothing.
    copy.copy_live_from(in_l1);

    // Step 3: check the copy against the CPU L1 is shown (its CPUID: see
    // Vm::l1_limits); a bad vmcb12 is L1's VMEXIT_INVALID, nothing more.
    let verdict = if vm.vmcb12_checks {
        check_vmcb12(&copy, &vm.l1_limits)
    } else {
        Ok(())
    };
    // Every mode L2 may start in runs (real mode, 16/32-bit protected mode,
    // 32-bit paging, PAE, long mode): L0 fetches, walks and decodes in each.
    // Legacy PAE paging without nested paging loads the PDPTEs at VMRUN,
    // from L1 memory (KVM nested_svm_load_cr3; kvm-unit-tests svm_pae_test).
    let pdptes_bad = || {
        vm.vmcb12_checks
            && vmrun_loads_pdptes(&copy, &vm.l1_limits)
            && !rip::pdptes_valid(vm, copy.state.cr3)
    };
    let verdict = match verdict {
        Ok(()) if pdptes_bad() => Err(Vmcb12Error::PdpteReserved),
        other => other,
    };
    if let Err(why) = verdict {
        log::debug!("vm {}: vmcb12 at {gpa:#x} refused: {why:?}", vm.name);
        let Some(in_l1) = l1_vmcb_mut(&mut vm.memory, gpa) else {
            return inject(vcpu, gp);
        };
        write_vmexit_invalid(&mut in_l1.control);
        vcpu.nested.gif = false;
        vcpu.vmcb.state.rip = resume_rip;
        // VMRUN completed: RF cleared, TF's trap now (APM 15.5.2).
        vcpu.vmcb.state.rflags &= !svm::exception::RFLAGS_RF;
        return rip::single_step(vcpu, vm, host);
    }

    // EFER.LMA is the CPU's, not L1's: set exactly when EFER.LME and
    // CR0.PG are (APM 14.6.1), the condition every long-mode check keyed
    // on, so L2 runs in the mode the checks judged.
    let lma = svm::msr::EFER_LMA;
    copy.state.efer = match enters_long_mode(&copy) {
        true => copy.state.efer | lma,
        false => copy.state.efer & !lma,
    };

    // Step 4: the permission maps for L2, the union of L0's and L1's (L1's
    // bytes outside its RAM read as all-ones). L0 intercepts every port
    // and every MSR but the few it passes through, so the union is L0's
    // I/O map itself, and L0's MSR map with only those MSRs' bits taken
    // from L1's. A map L1 does not enable (MSR_PROT clear) means nothing.
    let (l1_msrpm, _) = l1_maps(&vm.memory, &copy);
    let misc1 = InterceptMisc1::from_bits_retain(copy.control.intercept_misc1);
    let merged = &mut vcpu.nested.msrpm;
    if !vcpu.nested.msrpm_holds_l0 {
        merged.0.copy_from_slice(&vm.msrpm.0);
        vcpu.nested.msrpm_holds_l0 = true;
    }
    let l1_map = misc1
        .contains(InterceptMisc1::MSR_PROT)
        .then_some(&l1_msrpm);
    merge_msrpm_holes(l1_map, &PASSTHROUGH_MSRS, &mut merged.0);

    // Step 5: stash L1's state and L0's controls in hsave.
    let nested: &mut Nested = &mut vcpu.nested;
    nested.hsave.copy_live_from(&vcpu.vmcb);
    nested.hsave.state.rip = resume_rip;

    // Step 6: build L2 in place in the active VMCB.
    let l2c = L2Controls {
        msrpm_pa: nested.msrpm.phys(),
        iopm_pa: vm.iopm.phys(),
        asid: L2_ASID,
        // L1 may have changed L2's page tables since the last run.
        tlb_control: TlbControl::FlushAll.as_u8(),
        vgif_offered: false,
    };
    let active: &mut Vmcb = &mut vcpu.vmcb;
    active.control = build_l2_controls(&nested.hsave.control, &copy.control, &l2c);
    load_l2_state(&mut active.state, &copy.state);
    let host_nrips = host.features.has(svm::SvmFeatureFlags::NRIPS);
    let (rip, soft) = soft_event_entry(
        copy.control.event_inj,
        copy.state.rip,
        copy.control.next_rip,
        host_nrips,
    );
    active.state.rip = rip;
    nested.soft_event = soft;
    nested.gif = true;
    nested.l2 = Some(L2 {
        vmcb12_gpa: gpa,
        svme: copy.state.efer & svm::msr::EFER_SVME != 0,
        vmcb12: copy,
    });
    // Step 7: nested paging, when vmcb12 enables it (nested::npt).
    if let Err(stop) = super::npt::enter(vcpu, vm) {
        return Action::Stop(stop);
    }
    Action::Resume
}

/// A zeroed `T` on the heap, never on the stack (a VMCB is 4 KiB).
/// Only for plain-integer types, which are valid when all-zero.
fn zeroed_box<T>() -> Box<T> {
    // SAFETY: callers use it for Vmcb: all-zero is valid.
    unsafe { Box::<T>::new_zeroed().assume_init() }
}
