//! The nested #VMEXIT: an exit L1 asked for, reflected to L1.

use super::l1_vmcb_mut;
use crate::vmm::enable::HostCpu;
use crate::vmm::exits::{rip, Action, Stop};
use crate::vmm::vcpu::Vcpu;
use crate::vmm::vm::Vm;
use svm::event::{reported_event, unwind_soft_rip};
use svm::nested::vmexit::write_vmexit_invalid;
use svm::nested::vmexit::{restore_l1, save_l2_to_vmcb12, ExitInfo};
use svm::{EventInfo, ExitCode, Vmcb};

/// nRIP for L1 (which is offered NRIP save): the next RIP for instruction
/// intercepts (APM Vol. 2, 15.7.1) — the CPU's when it saves nRIP, else
/// decoded — from EXITINFO2 for IOIO, else 0. Never the VMCB's NEXT_RIP
/// for other exits: it is stale there (or vmcb12's own value).
fn next_rip(vcpu: &Vcpu, vm: &Vm, host: &HostCpu, code: ExitCode) -> u64 {
    let instruction = matches!(
        code,
        ExitCode::Cpuid
            | ExitCode::Msr
            | ExitCode::Hlt
            | ExitCode::Rdtsc
            | ExitCode::Rdtscp
            | ExitCode::Vmrun
            | ExitCode::Vmmcall
            | ExitCode::Vmload
            | ExitCode::Vmsave
            | ExitCode::Stgi
            | ExitCode::Clgi
            | ExitCode::Skinit
            | ExitCode::Invlpga
            | ExitCode::Wbinvd
            | ExitCode::Invd
            | ExitCode::Xsetbv
            // INT3 / INTO (APM 15.7.1: NEXT_RIP for #BP and #OF from them).
            | ExitCode::Exception(3 | 4)
    );
    let hardware = vcpu.vmcb.control.next_rip;
    if instruction && hardware != 0 && host.features.has(svm::cpuid::SvmFeatureFlags::NRIPS) {
        return hardware;
    }
    match code {
        ExitCode::Ioio => vcpu.vmcb.control.exit_info2,
        _ if instruction => match rip::insn_len(vcpu, vm, host) {
            Ok(len) => vcpu.vmcb.state.rip.wrapping_add(len),
            Err(_) => 0,
        },
        _ => 0,
    }
}

/// Reflects the exit L2 just took (or L0 made up: callers set EXITINFO1/2
/// and clear EXITINTINFO) to L1: L2's state and the exit go to vmcb12 in
/// L1's memory, L1's state comes back from hsave by copy, L1's GIF is
/// cleared, and L1 resumes after its VMRUN with its RAX intact.
///
/// An event still in the active EVENTINJ was never delivered to L2 (the
/// run loop clears EVENTINJ after every exit, so it is one L0 queued since,
/// or vmcb12's own when L2 has not run yet): L1 finds it in EXITINTINFO
/// and re-injects it (APM 15.7.2; KVM nested_save_pending_event_to_vmcb12).
/// Such an exit has no NEXT_RIP. RIP is put back where L1 expects it if L0
/// had moved it for a soft event ([`svm::event::unwind_soft_rip`]).
pub fn reflect(vcpu: &mut Vcpu, vm: &mut Vm, host: &HostCpu, code: ExitCode) -> Action {
    let Some(l2) = vcpu.nested.l2.take() else {
        return Action::Stop(Stop::Unhandled(
            "nested #VMEXIT without a running L2".into(),
        ));
    };
    let c = &vcpu.vmcb.control;
    let (pending, exit_int_info) = (EventInfo(c.event_inj), EventInfo(c.exit_int_info));
    let next_rip = match pending.is_valid() {
        true => 0,
        false => next_rip(vcpu, vm, host, code),
    };
    // QEMU TCG types interrupts as exceptions in EXITINTINFO
    // (docs/qemu-tcg.md): reported_event sanitizes it.
    let int_info = reported_event(pending, exit_int_info);
    let host_nrips = host.features.has(svm::cpuid::SvmFeatureFlags::NRIPS);
    let Some(vmcb12) = l1_vmcb_mut(&mut vm.memory, l2.vmcb12_gpa) else {
        return Action::Stop(Stop::Unhandled("vmcb12 left L1 memory".into()));
    };
    let nested = &mut vcpu.nested;
    let active: &mut Vmcb = &mut vcpu.vmcb;
    let soft = nested.soft_event.take();
    active.state.rip = unwind_soft_rip(int_info, active.state.rip, soft, host_nrips);
    let exit = ExitInfo {
        code: code.to_raw(),
        info1: active.control.exit_info1,
        info2: active.control.exit_info2,
        int_info: int_info.0,
        next_rip,
    };
    save_l2_to_vmcb12(active, &exit, vmcb12);
    super::show_l2_svme(vmcb12, &l2);
    nested.spare_vmcb12 = Some(l2.vmcb12);
    restore_l1(active, &nested.hsave);
    super::npt::leave(vcpu);
    vcpu.nested.gif = false;
    // L1's RFLAGS.TF at its VMRUN: the #DB trap comes after the #VMEXIT,
    // on the host side (APM 15.5.2).
    rip::single_step(vcpu, vm, host)
}

/// The CPU refused the L2 state L0 built (VMEXIT_INVALID while entering
/// L2): something L0's checks let through. L2 never ran, so L1 gets what
/// VMRUN gives for a bad vmcb12 — VMEXIT_INVALID in vmcb12, state untouched
/// — and L1's state comes back from hsave (the CPU may have written
/// over the active save area: docs/qemu-tcg.md).
pub fn reflect_invalid(vcpu: &mut Vcpu, vm: &mut Vm) -> Action {
    let Some(l2) = vcpu.nested.l2.take() else {
        return Action::Stop(Stop::InvalidVmcb);
    };
    log::warn!(
        "vm {}: the CPU refused a vmcb12 the checks accepted; VMEXIT_INVALID for L1",
        vm.name
    );
    let Some(vmcb12) = l1_vmcb_mut(&mut vm.memory, l2.vmcb12_gpa) else {
        return Action::Stop(Stop::Unhandled("vmcb12 left L1 memory".into()));
    };
    write_vmexit_invalid(&mut vmcb12.control);
    vcpu.nested.soft_event = None;
    vcpu.nested.spare_vmcb12 = Some(l2.vmcb12);
    // L2 never ran: L1's state as at its VMRUN (CR2, DR6 and RFLAGS too).
    let h = &vcpu.nested.hsave.state;
    let (cr2, dr6, rflags) = (h.cr2, h.dr6, h.rflags);
    let hsave = &vcpu.nested.hsave;
    restore_l1(&mut vcpu.vmcb, hsave);
    let s = &mut vcpu.vmcb.state;
    (s.cr2, s.dr6, s.rflags) = (cr2, dr6, rflags);
    super::npt::leave(vcpu);
    vcpu.nested.gif = false;
    Action::Resume
}
