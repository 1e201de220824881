//! The vCPU's local APIC (svm::devices::lapic) meets the exits: the xAPIC
//! page through nested page faults (the page is left unmapped in the NPT,
//! vmm::npt::Npt::add_mmio_page, and each access is decoded and emulated,
//! svm::emulate::mmio), IA32_APIC_BASE and the x2APIC MSRs, HLT waiting
//! for the APIC timer, and the delivery of its interrupts into L1, or into
//! L2 through L1's intercepts (svm::irq).
//!
//! The timer is brought up to date at every entry; a guest that runs
//! without exiting sees its expiry at the next exit, which the host's
//! watchdog (time::TICK_MS) forces at least every 10 ms.

use super::{nested, raise, rip, Action, Stop};
use crate::vmm::enable::HostCpu;
use crate::vmm::vcpu::Vcpu;
use crate::vmm::vm::Vm;
use svm::devices::lapic::{self, Lapic};
use svm::irq::{halt_can_wake, irq_action, IrqAction, IrqWindow};
use svm::{EventInfo, ExitCode, IntCtl, InterceptMisc1, NpfErrorCode};

const RFLAGS_IF: u64 = 1 << 9;

/// The APIC a vCPU starts with: ID 0, the bootstrap processor, x2APIC
/// offered (CPUID.1:ECX\[21\]).
pub fn new_lapic() -> Lapic {
    Lapic::new(0, true, true, 52)
}

fn now() -> u64 {
    crate::time::now_ns()
}

/// RDMSR of IA32_APIC_BASE or an x2APIC MSR (exits::msr's table sends
/// them here); `None` is #GP(0).
pub fn msr_read(vcpu: &mut Vcpu, msr: u32) -> Option<u64> {
    if msr == lapic::MSR_APIC_BASE {
        return Some(vcpu.lapic.base_msr());
    }
    vcpu.lapic.read_msr(msr, now()).ok()
}

/// WRMSR of IA32_APIC_BASE or an x2APIC MSR; `false` is #GP(0).
pub fn msr_write(vcpu: &mut Vcpu, vm: &mut Vm, msr: u32, value: u64) -> bool {
    let a = &mut vcpu.lapic;
    let ok = if msr == lapic::MSR_APIC_BASE {
        a.set_max_phys_bits(vm.l1_limits.max_phys_bits);
        a.write_base_msr(value).is_ok()
    } else {
        a.write_msr(msr, value, now()).is_ok()
    };
    if ok {
        after_write(vcpu, vm);
        if msr == ICR_MSR {
            crate::vmm::multi::icr_written(vcpu, vm);
        }
    }
    ok
}

/// The x2APIC ICR (one 64-bit MSR).
const ICR_MSR: u32 = lapic::X2APIC_FIRST + (lapic::reg::ICR >> 4);

/// After a register write: a relocated page gets its NPT hole, TPR goes
/// to V_TPR (CR8), a self-NMI to the vCPU's virtual NMI.
fn after_write(vcpu: &mut Vcpu, vm: &mut Vm) {
    if let Some(base) = vcpu.lapic.mmio_base() {
        if !vm.npt.is_mmio_page(base) && rip::is_unbacked(vm, base) {
            match vm.npt.add_mmio_page(base) {
                Ok(()) => {
                    // Shadow NPT entries may map that page as unbacked.
                    super::nested::npt::l0_changed(vcpu);
                    vcpu.vmcb.control.tlb_control = svm::TlbControl::FlushAll.as_u8()
                }
                Err(e) => log::warn!("vm {}: APIC page at {base:#x}: {e}", vm.name),
            }
        }
    }
    if vcpu.lapic.take_nmi() {
        vcpu.nmi.queue();
    }
    // Other vCPUs' logical IPIs match its LDR/DFR (`multi`).
    crate::vmm::multi::apic_written(vcpu, vm);
    // L1's V_TPR: in hsave while L2 runs (restored at the nested exit).
    let c = match vcpu.nested.in_l2() {
        true => &mut vcpu.nested.hsave.control,
        false => &mut vcpu.vmcb.control,
    };
    let tpr = u64::from(vcpu.lapic.tpr() >> 4);
    c.int_ctl = (c.int_ctl & !0xF) | tpr;
}

/// Whether a nested page fault at `gpa` is an MMIO page's.
pub fn is_mmio(vm: &Vm, gpa: u64) -> bool {
    vm.npt.is_mmio_page(gpa)
}

/// An access to an MMIO page: the APIC's registers while it is in xAPIC
/// mode at that address, else nothing (reads all-ones, writes dropped,
/// as unbacked memory). The instruction is decoded at RIP and completed
/// here; one L0 does not emulate gets #UD, a fetch from the page too.
pub fn mmio(vcpu: &mut Vcpu, vm: &mut Vm, host: &HostCpu) -> Action {
    let c = &vcpu.vmcb.control;
    let (gpa, info) = (c.exit_info2, NpfErrorCode::from_bits_retain(c.exit_info1));
    if info.contains(NpfErrorCode::GUEST_PAGE_TABLE) {
        log::warn!("vm {}: guest page tables in an MMIO page", vm.name);
        return Action::Stop(Stop::NestedPageFault {
            gpa,
            error_code: info.bits(),
        });
    }
    if info.contains(NpfErrorCode::EXECUTE) {
        return raise(vcpu, vm, host, EventInfo::exception(6));
    }
    let d = match rip::decode_at_rip(vcpu, vm) {
        Ok(d) => d,
        Err(no) => return no.deliver(vcpu, vm, host),
    };
    let Some(insn) = d.mmio() else {
        log::debug!(
            "vm {}: MMIO at {gpa:#x} by an instruction L0 does not emulate: #UD",
            vm.name
        );
        return raise(vcpu, vm, host, EventInfo::exception(6));
    };
    let size = insn.size();
    let apic = vcpu.lapic.mmio_base() == Some(gpa & !0xFFF);
    let offset = gpa & 0xFFF;
    match insn {
        svm::emulate::mmio::MmioInsn::Load { reg, .. } => {
            let value = if apic {
                vcpu.lapic.mmio_read(offset, size, now())
            } else {
                u64::MAX
            };
            let new = insn.load_result(super::cr::gpr(vcpu, reg.n), value);
            set_gpr(vcpu, reg.n, new);
        }
        svm::emulate::mmio::MmioInsn::StoreReg { reg, .. } => {
            let value = insn.store_value(super::cr::gpr(vcpu, reg.n));
            if apic {
                vcpu.lapic.mmio_write(offset, size, value, now());
            }
        }
        svm::emulate::mmio::MmioInsn::Compare { other, .. } => {
            let mem = if apic {
                vcpu.lapic.mmio_read(offset, size, now())
            } else {
                u64::MAX
            };
            let reg_value = match other {
                svm::emulate::mmio::Operand::Reg(r) => super::cr::gpr(vcpu, r.n),
                svm::emulate::mmio::Operand::Imm(_) => 0,
            };
            let s = &mut vcpu.vmcb.state;
            s.rflags = insn.compare_flags(s.rflags, mem, reg_value);
        }
        svm::emulate::mmio::MmioInsn::StoreImm { .. } => {
            if apic {
                vcpu.lapic
                    .mmio_write(offset, size, insn.store_value(0), now());
            }
        }
    }
    if insn.is_store() {
        after_write(vcpu, vm);
        if apic && offset == u64::from(lapic::reg::ICR) {
            crate::vmm::multi::icr_written(vcpu, vm);
        }
    }
    vcpu.vmcb.state.rip = rip::rip_after(vcpu, d.len as u64);
    rip::single_step(vcpu, vm, host)
}

/// Writes general register `n`.
fn set_gpr(vcpu: &mut Vcpu, n: u8, value: u64) {
    *super::cr::gpr_mut(vcpu, n) = value;
}

/// The interrupt window of the running guest.
fn window(vcpu: &Vcpu) -> IrqWindow {
    let c = &vcpu.vmcb.control;
    let guest_if = vcpu.vmcb.state.rflags & RFLAGS_IF != 0;
    let l2 = vcpu.nested.l2.as_ref().map(|l2| &l2.vmcb12.control);
    IrqWindow {
        in_l2: l2.is_some(),
        l1_intercepts_intr: l2
            .is_some_and(|c| c.intercept_misc1 & InterceptMisc1::INTR.bits() != 0),
        l1_v_intr_masking: l2.is_some_and(|c| c.int_ctl & IntCtl::V_INTR_MASKING.bits() != 0),
        l1_if: match l2 {
            Some(_) => vcpu.nested.hsave.state.rflags & RFLAGS_IF != 0,
            None => guest_if,
        },
        guest_if,
        gif: vcpu.nested.gif,
        shadow: c.interrupt_shadow & 1 != 0,
        event_pending: EventInfo(c.event_inj).is_valid(),
    }
}

/// Before each entry: the timer brought up to date, L1's CR8 writes
/// (V_TPR) into TPR, and the highest deliverable interrupt injected, or
/// L2 ended with #VMEXIT(INTR), or the VINTR window opened for L1.
///
/// The usual case (no timer running, no SMI, IRR empty:
/// [`Lapic::entry_work`]) stays inline in the run loop.
#[inline(always)]
pub fn before_entry(vcpu: &mut Vcpu, vm: &mut Vm, host: &HostCpu) -> Action {
    if !vcpu.nested.in_l2() {
        // V_TPR is CR8 (APM 15.21.4): TPR bits 7:4.
        let v_tpr = (vcpu.vmcb.control.int_ctl & 0xF) as u8;
        if v_tpr != vcpu.lapic.tpr() >> 4 {
            vcpu.lapic.set_tpr(v_tpr << 4);
        }
    }
    if !vcpu.lapic.entry_work() {
        return Action::Resume;
    }
    deliver(vcpu, vm, host)
}

/// [`before_entry`] with a timer running, an SMI or a requested interrupt.
#[inline(never)]
fn deliver(vcpu: &mut Vcpu, vm: &mut Vm, host: &HostCpu) -> Action {
    // The clock is read only for a running timer (it costs a division).
    if vcpu.lapic.next_deadline().is_some() {
        vcpu.lapic.advance(now());
    }
    if vcpu.lapic.smi_pending() && vcpu.nested.gif && vcpu.lapic.take_smi() {
        let l1_smi =
            vcpu.nested.l2.as_ref().is_some_and(|l2| {
                l2.vmcb12.control.intercept_misc1 & InterceptMisc1::SMI.bits() != 0
            });
        if l1_smi {
            let c = &mut vcpu.vmcb.control;
            c.exit_info1 = 0;
            c.exit_info2 = 0;
            c.exit_int_info = 0;
            return nested::vmexit::reflect(vcpu, vm, host, ExitCode::Smi);
        }
        log::debug!("vm {}: SMI dropped (no SMM)", vm.name);
    }
    let Some(vector) = vcpu.lapic.pending_vector() else {
        return Action::Resume;
    };
    match irq_action(&window(vcpu)) {
        IrqAction::Wait => {}
        IrqAction::Inject => {
            vcpu.vmcb.control.event_inj = EventInfo::external_interrupt(vector).0;
            vcpu.lapic.ack(vector);
        }
        // L2's V_IRQ and VINTR exits are L1's when it uses them: then the
        // interrupt waits for the next exit.
        IrqAction::OpenWindow if l1_uses_vintr(vcpu) => {}
        IrqAction::OpenWindow => {
            let c = &mut vcpu.vmcb.control;
            let int_ctl = IntCtl::from_bits_retain(c.int_ctl) | IntCtl::V_IRQ | IntCtl::V_IGN_TPR;
            c.int_ctl = int_ctl
                .with_v_intr_prio(0xF)
                .with_v_intr_vector(vector)
                .bits();
            c.intercept_misc1 |= InterceptMisc1::VINTR.bits();
            vcpu.apic_window = true;
        }
        IrqAction::ExitToL1 => {
            let c = &mut vcpu.vmcb.control;
            c.exit_info1 = 0;
            c.exit_info2 = 0;
            c.exit_int_info = 0;
            return nested::vmexit::reflect(vcpu, vm, host, ExitCode::Intr);
        }
    }
    Action::Resume
}

/// Whether L2 runs with L1's own virtual interrupt (V_IRQ) or VINTR
/// intercept, which L0's window must not touch.
fn l1_uses_vintr(vcpu: &Vcpu) -> bool {
    vcpu.nested.l2.as_ref().is_some_and(|l2| {
        let c = &l2.vmcb12.control;
        c.intercept_misc1 & InterceptMisc1::VINTR.bits() != 0
            || vcpu.vmcb.control.int_ctl & IntCtl::V_IRQ.bits() != 0
    })
}

/// After each exit: the VINTR window L0 opened is closed again (its V_IRQ
/// is L0's, never the guest's), before any handler looks at the VMCB.
pub fn after_exit(vcpu: &mut Vcpu) {
    if core::mem::take(&mut vcpu.apic_window) {
        let c = &mut vcpu.vmcb.control;
        let keep = !(IntCtl::V_IRQ
            | IntCtl::V_IGN_TPR
            | IntCtl::V_INTR_PRIO_MASK
            | IntCtl::V_INTR_VECTOR_MASK);
        c.int_ctl &= keep.bits();
        c.intercept_misc1 &= !InterceptMisc1::VINTR.bits();
    }
}

/// Longest single wait in HLT before the guest is entered again (it then
/// re-executes HLT): the run loop's limits stay checked.
const HLT_SLICE_NS: u64 = 10_000_000;

/// HLT that L0 handles (L1's, or L2's when L1 does not intercept it):
/// when an interrupt could end it and the APIC timer will raise one,
/// wait for it (APM Vol. 3 HLT). A HLT nothing can end (interrupts
/// masked, or no timer running) returns at once, as a spurious wake-up,
/// so such a guest is never stuck in L0.
pub fn hlt(vcpu: &mut Vcpu, vm: &mut Vm, host: &HostCpu) -> Action {
    let w = window(vcpu);
    if !halt_can_wake(&w) {
        // Another vCPU's NMI or INIT can still end it (`multi`).
        crate::vmm::multi::halt(vm, vcpu.vmcb.state.rip);
        return rip::skip(vcpu, vm, host);
    }
    let start = now();
    let hlt_rip = vcpu.vmcb.state.rip;
    loop {
        let t = now();
        vcpu.lapic.advance(t);
        if vcpu.lapic.pending_vector().is_some() || vcpu.lapic.nmi_pending() {
            break;
        }
        let Some(deadline) = vcpu.lapic.next_deadline() else {
            // No timer: only another vCPU can end it (`multi`).
            crate::vmm::multi::halt(vm, hlt_rip);
            break;
        };
        if crate::vmm::multi::event_pending(vm) {
            break;
        }
        if crate::vmm::multi::several_vcpus(vm) {
            // With several vCPUs the run loop waits for the timer or
            // another vCPU's event, with the VM lock released (a wait here
            // would hold off every other vCPU's exits), and yielding the
            // CPU when it shares it (`multi`).
            crate::vmm::multi::halt(vm, hlt_rip);
            break;
        }
        if t.saturating_sub(start) >= HLT_SLICE_NS {
            // Enter the guest again at the HLT: it exits again here.
            return Action::Resume;
        }
        if deadline.saturating_sub(t) > crate::time::TICK_MS * 1_000_000 {
            // SAFETY: the host's interrupt handlers are installed; the
            // watchdog wakes this HLT within a tick.
            unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
        } else {
            core::hint::spin_loop();
        }
    }
    // The HLT ends; its STI shadow (if any) is over too.
    vcpu.vmcb.control.interrupt_shadow &= !1;
    rip::skip(vcpu, vm, host)
}
