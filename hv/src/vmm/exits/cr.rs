//! CR0/CR3/CR4/CR8 write exits (MOV to CR, LMSW, CLTS), emulated with the CPU's
//! checks ([`svm::emulate::cr`]), and the EFER.LME the CPU is shown while
//! a guest runs without paging.

use super::rip::{self, NoInsn};
use super::{nested, raise, Action};
use crate::vmm::enable::HostCpu;
use crate::vmm::vcpu::Vcpu;
use crate::vmm::vm::Vm;
use svm::decode::{Insn, Operand};
use svm::emulate::cr::{self as rules, CrState};
use svm::emulate::Fault;
use svm::{EventInfo, ExitCode, InterceptMisc1, TlbControl, VmcbSegment};

/// The CR write intercepts L0 keeps for every guest: CR0 and CR4 (no state
/// the CPU would refuse reaches the emulator), CR8 (the TPR, which QEMU
/// cannot take from a guest with a virtual interrupt pending: docs/qemu-tcg.md),
/// CR3 (QEMU loads reserved bits the CPU refuses with #GP, then refuses the
/// guest's next VMRUN; the value must be checked before the CPU sees it, so
/// there is no cheaper way than intercepting every write).
pub const INTERCEPT_CR: u32 = (1 << 16) | (1 << (16 + 3)) | (1 << (16 + 4)) | (1 << (16 + 8));

/// Before VMRUN: hide EFER.LME from the CPU while the guest's paging is
/// off ([`rules::efer_for_cpu`]).
pub fn before_entry(vcpu: &mut Vcpu) {
    let s = &mut vcpu.vmcb.state;
    let (efer, hidden) = rules::efer_for_cpu(s.efer, s.cr0);
    s.efer = efer;
    vcpu.lme_hidden = hidden;
}

/// After the exit: the guest's own EFER again, for every handler.
pub fn after_exit(vcpu: &mut Vcpu) {
    let s = &mut vcpu.vmcb.state;
    s.efer = rules::efer_for_guest(s.efer, vcpu.lme_hidden);
    vcpu.lme_hidden = false;
}

/// The value of general register `n` (0 = RAX .. 15 = R15).
pub fn gpr(vcpu: &Vcpu, n: u8) -> u64 {
    let r = &vcpu.regs;
    match n {
        0 => vcpu.vmcb.state.rax,
        1 => r.rcx,
        2 => r.rdx,
        3 => r.rbx,
        4 => vcpu.vmcb.state.rsp,
        5 => r.rbp,
        6 => r.rsi,
        7 => r.rdi,
        8 => r.r8,
        9 => r.r9,
        10 => r.r10,
        11 => r.r11,
        12 => r.r12,
        13 => r.r13,
        14 => r.r14,
        _ => r.r15,
    }
}

/// General register `n` (0 = RAX .. 15 = R15), to write.
pub fn gpr_mut(vcpu: &mut Vcpu, n: u8) -> &mut u64 {
    let r = &mut vcpu.regs;
    match n {
        0 => &mut vcpu.vmcb.state.rax,
        1 => &mut r.rcx,
        2 => &mut r.rdx,
        3 => &mut r.rbx,
        4 => &mut vcpu.vmcb.state.rsp,
        5 => &mut r.rbp,
        6 => &mut r.rsi,
        7 => &mut r.rdi,
        8 => &mut r.r8,
        9 => &mut r.r9,
        10 => &mut r.r10,
        11 => &mut r.r11,
        12 => &mut r.r12,
        13 => &mut r.r13,
        14 => &mut r.r14,
        _ => &mut r.r15,
    }
}

/// A register operand as the instruction reads it: 64 bits in 64-bit
/// mode, else 32.
pub fn gpr_operand(vcpu: &Vcpu, n: u8) -> u64 {
    match rip::bitness(vcpu) {
        64 => gpr(vcpu, n),
        _ => gpr(vcpu, n) & 0xffff_ffff,
    }
}

/// A 16-bit operand (LMSW, LTR): a register's low half or memory.
pub fn operand16(
    vcpu: &Vcpu,
    vm: &Vm,
    op: Operand,
    d: &svm::decode::Decoded,
) -> Result<u16, NoInsn> {
    match op {
        Operand::Gpr(n) => Ok(gpr(vcpu, n) as u16),
        Operand::Memory => {
            let la = d
                .memory_address(|n| gpr(vcpu, n), |s| rip::segment_base(vcpu, s))
                .ok_or_else(NoInsn::ud)?;
            let mut b = [0u8; 2];
            rip::read_linear(vcpu, vm, la, &mut b)?;
            Ok(u16::from_le_bytes(b))
        }
    }
}

/// The exception for an emulation fault.
pub fn fault_event(vcpu: &mut Vcpu, f: Fault) -> EventInfo {
    match f {
        Fault::Gp(e) => EventInfo::exception_with_error_code(13, u32::from(e)),
        Fault::Np(e) => EventInfo::exception_with_error_code(11, u32::from(e)),
        Fault::Ud => EventInfo::exception(6),
        Fault::DbGeneralDetect => {
            // The CPU sets DR6.BD and clears DR7.GD on this #DB (APM 13.1.1.5).
            let s = &mut vcpu.vmcb.state;
            s.dr6 |= svm::emulate::dr::DR6_BD;
            s.dr7 &= !svm::emulate::dr::DR7_GD;
            EventInfo::exception(1)
        }
    }
}

/// Handles a write exit of control register `cr` (0, 3, 4 or 8).
pub fn handle(vcpu: &mut Vcpu, vm: &mut Vm, host: &HostCpu, cr: u8) -> Action {
    let d = match rip::decode_at_rip(vcpu, vm) {
        Ok(d) => d,
        Err(no) => return no.deliver(vcpu, vm, host),
    };
    let s = &vcpu.vmcb.state;
    let value = match d.insn {
        Insn::MovToCr { cr: n, gpr } if n == cr => gpr_operand(vcpu, gpr),
        Insn::Lmsw(op) if cr == 0 => match operand16(vcpu, vm, op, &d) {
            Ok(v) => rules::lmsw_value(s.cr0, v),
            Err(no) => return no.deliver(vcpu, vm, host),
        },
        Insn::Clts if cr == 0 => rules::clts_value(s.cr0),
        // Not the instruction that exited (its bytes changed since).
        _ => return NoInsn::ud().deliver(vcpu, vm, host),
    };
    // MOV CR is CPL 0 only; the CPU checks that before the intercept.
    if s.cpl != 0 {
        return raise(vcpu, vm, host, EventInfo::exception_with_error_code(13, 0));
    }
    let lmsw = matches!(d.insn, Insn::Lmsw(_));
    if cr == 0 && d.insn != Insn::Clts && selective_write_is_l1s(vcpu, value, lmsw) {
        let c = &mut vcpu.vmcb.control;
        (c.exit_info1, c.exit_info2, c.exit_int_info) = (0, 0, 0);
        return nested::vmexit::reflect(vcpu, vm, host, ExitCode::Cr0SelWrite);
    }
    let old = CrState {
        cr0: s.cr0,
        cr3: s.cr3,
        cr4: s.cr4,
        efer: s.efer,
        cs_l: s.cs.attrib & VmcbSegment::ATTR_L != 0,
    };
    let mut cr3_flush = false;
    let result = match cr {
        0 => rules::write_cr0(&old, value),
        // MAXPHYADDR as the guest's CPUID shows it (the vmcb12 checks' too).
        3 => rules::write_cr3(&old, value, vm.l1_limits.max_phys_bits).map(|(new, flush)| {
            cr3_flush = flush;
            new
        }),
        // The CR4 bits the guest's CPUID shows (the vmcb12 checks' source too).
        4 => rules::write_cr4(&old, value, vm.l1_limits.cr4_allowed),
        _ => rules::write_cr8(value).map(|tpr| {
            // V_TPR under V_INTR_MASKING (APM 15.21.4), which L0 always sets.
            let c = &mut vcpu.vmcb.control;
            c.int_ctl = (c.int_ctl & !0xff) | u64::from(tpr);
            old
        }),
    };
    // PAE paging loads the four PDPTEs: a reserved bit is #GP(0).
    let result = result.and_then(|new| match rules::loads_pdptes(&old, &new, cr) {
        true if !rip::guest_pdptes_valid(vcpu, vm, new.cr3) => Err(Fault::Gp(0)),
        _ => Ok(new),
    });
    match result {
        Ok(new) => {
            if rules::flushes_tlb(&old, &new) {
                vcpu.vmcb.control.tlb_control = TlbControl::FlushAll.as_u8();
            } else if cr3_flush {
                // MOV CR3 flushes the guest's non-global entries (APM
                // 5.5.2): flushing its ASID is a superset.
                vcpu.vmcb.control.tlb_control = flush_guest(host).as_u8();
            }
            let s = &mut vcpu.vmcb.state;
            (s.cr0, s.cr3, s.cr4, s.efer) = (new.cr0, new.cr3, new.cr4, new.efer);
            vcpu.vmcb.state.rip = rip::rip_after(vcpu, d.len as u64);
            rip::single_step(vcpu, vm, host)
        }
        Err(f) => {
            let event = fault_event(vcpu, f);
            raise(vcpu, vm, host, event)
        }
    }
}

/// The TLB_CONTROL that flushes the running guest's ASID, or every ASID
/// on a CPU without FlushByAsid (APM 15.16.1).
fn flush_guest(host: &HostCpu) -> TlbControl {
    if host
        .features
        .flags
        .contains(svm::SvmFeatureFlags::FLUSH_BY_ASID)
    {
        TlbControl::FlushThisAsid
    } else {
        TlbControl::FlushAll
    }
}

/// A CR0 write by L2 that L1's selective CR0 write intercept catches
/// (L0's general CR0 intercept took the exit; route_exit leaves this
/// check to L0, APM 15.9.1). LMSW is caught whatever it writes.
fn selective_write_is_l1s(vcpu: &Vcpu, new: u64, lmsw: bool) -> bool {
    vcpu.nested.l2.as_ref().is_some_and(|l2| {
        l2.vmcb12.control.intercept_misc1 & InterceptMisc1::CR0_SEL_WRITE.bits() != 0
            && rules::selective_cr0_intercepts(vcpu.vmcb.state.cr0, new, lmsw)
    })
}
