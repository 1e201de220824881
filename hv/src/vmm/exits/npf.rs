//! Nested page faults. The NPT (vmm::npt) maps the VM's RAM and, below the
//! MAXPHYADDR the guest sees, every other page read-only onto all-ones:
//! what a PC with nothing at an address does (svm::emulate::unbacked). So
//! the faults left are:
//! - a store to unbacked memory: dropped; L0 completes the instruction
//!   as the CPU would: RIP, RCX/RSI/RDI for STOS/MOVS, RFLAGS for a
//!   read-modify-write (ADD .. XOR, INC, DEC, NEG, NOT, shifts and
//!   rotates), the register for
//!   XCHG and XADD, RAX for a failed CMPXCHG, CF for BTS/BTR/BTC with an
//!   immediate, RSP (and RIP) for a push or near CALL in 64-bit code,
//!   then the single-step #DB if RFLAGS.TF is set (rip::single_step);
//! - the guest's page walk touching unbacked memory (EXITINFO1 bit 33):
//!   walks of guest tables count as writes (APM 15.25.10; QEMU TCG always
//!   does), so the read-only mapping faults. The CPU would have read an
//!   all-ones entry, which has reserved bits: the guest gets #PF with RSVD
//!   for the linear address being translated. EXITINFO2 holds only the
//!   table's guest-physical address, so L0 finds the linear address the
//!   way the CPU met it: the fetch at RIP, then each memory access of the
//!   instruction in order, walked in software over the same all-ones;
//! - a store fault whose instruction, decoded now, stores nothing: the
//!   code changed since the CPU fetched it (cross-modifying code); the
//!   guest re-enters at the same RIP, a bounded number of times in a row
//!   (svm::emulate::unbacked::no_store);
//! - anything else (at or beyond MAXPHYADDR, during event delivery, an
//!   instruction whose store L0 does not complete): the VM stops, as
//!   before (limits, documented in README).

use super::{nested, raise, rip, Action, Stop};
use crate::vmm::enable::HostCpu;
use crate::vmm::vcpu::Vcpu;
use crate::vmm::vm::Vm;
use rip::NoInsn;
use svm::decode::{AluSrc, CallTarget, Decoded, RegRef, StoreDrop};
use svm::emulate::alu;
use svm::emulate::fetch::{self, Paging};
use svm::emulate::unbacked::{
    no_store, page_fault_in_delivery, FaultInDelivery, NoStore, StringRegs,
};
use svm::{EventInfo, ExitCode, InterceptMisc1, NpfErrorCode};

/// RFLAGS.DF.
const RFLAGS_DF: u64 = 1 << 10;

/// Handles a nested page fault.
pub fn handle(vcpu: &mut Vcpu, vm: &mut Vm, host: &HostCpu) -> Action {
    // An L2 on L1's nested paging: resolved through L1's table first.
    if let Some(action) = nested::npt::on_npf(vcpu, vm, host) {
        return action;
    }
    let c = &vcpu.vmcb.control;
    let (gpa, info) = (c.exit_info2, NpfErrorCode::from_bits_retain(c.exit_info1));
    let stop = || Stop::NestedPageFault {
        gpa,
        error_code: info.bits(),
    };
    if super::apic::is_mmio(vm, gpa) {
        return super::apic::mmio(vcpu, vm, host);
    }
    if !rip::is_unbacked(vm, gpa) || !info.contains(NpfErrorCode::PRESENT) {
        return Action::Stop(stop());
    }
    let first = EventInfo(c.exit_int_info);
    if first.is_valid() {
        if info.contains(NpfErrorCode::GUEST_PAGE_TABLE) {
            return walk_in_delivery(vcpu, vm, host, first, stop());
        }
        // Pushing an event's frame onto unbacked memory: L0 does not
        // emulate event delivery.
        return limit(vm, "an event's frame pushed onto unbacked memory", stop());
    }
    if info.contains(NpfErrorCode::GUEST_PAGE_TABLE) {
        page_walk(vcpu, vm, host, stop())
    } else if info.contains(NpfErrorCode::WRITE) {
        drop_store(vcpu, vm, host, stop())
    } else {
        Action::Stop(stop())
    }
}

/// A limit of L0: the VM stops (reported with the NPF).
fn limit(vm: &Vm, why: &str, stop: Stop) -> Action {
    log::warn!("vm {}: {why}", vm.name);
    Action::Stop(stop)
}

/// The memory accesses of `d` as the guest runs it.
fn accesses(vcpu: &Vcpu, d: &Decoded, mut each: impl FnMut(svm::decode::Access)) {
    d.memory_accesses(
        |n| super::cr::gpr(vcpu, n),
        |s| rip::segment_base(vcpu, s),
        &mut each,
    );
}

/// The first fault of the walks for `[la, la + size)` (each page), if any;
/// `user` is false for an event delivery's implicit supervisor accesses.
fn walk_fault(vcpu: &Vcpu, vm: &Vm, la: u64, size: u64, write: bool, user: bool) -> Option<NoInsn> {
    let last = la.wrapping_add(size.max(1) - 1);
    let second_page = (last & !0xFFF) != (la & !0xFFF);
    let pages = [Some(la), second_page.then_some(last & !0xFFF)];
    pages.into_iter().flatten().find_map(|a| {
        let access = rip::Access {
            write,
            fetch: false,
            user,
        };
        rip::translate_as(vcpu, vm, a, access).err()
    })
}

/// The guest's walk met unbacked memory: find the linear address and raise
/// the #PF (RSVD) the CPU would.
fn page_walk(vcpu: &mut Vcpu, vm: &mut Vm, host: &HostCpu, stop: Stop) -> Action {
    // The fetch comes first: decoding walks the code bytes' pages and
    // returns that #PF if they are the ones behind unbacked tables.
    let d = match rip::decode_at_rip(vcpu, vm) {
        Ok(d) => d,
        Err(no) => return no.deliver(vcpu, vm, host),
    };
    let mut fault = None;
    accesses(vcpu, &d, |a| {
        if fault.is_none() {
            fault = walk_fault(vcpu, vm, a.la, a.size, a.write, vcpu.vmcb.state.cpl == 3);
        }
    });
    match fault {
        Some(no) => no.deliver(vcpu, vm, host),
        None => limit(
            vm,
            "a page walk through unbacked memory for no access of the instruction",
            stop,
        ),
    }
}

/// The CPU's walk met unbacked memory while delivering `first`
/// (EXITINTINFO): a #PF (RSVD) in the delivery, which the double-fault
/// rules turn into #DF or shutdown (APM 8.2.9).
fn walk_in_delivery(
    vcpu: &mut Vcpu,
    vm: &mut Vm,
    host: &HostCpu,
    first: EventInfo,
    stop: Stop,
) -> Action {
    match page_fault_in_delivery(first) {
        FaultInDelivery::Shutdown => shutdown(vcpu, vm, host),
        FaultInDelivery::DoubleFault => {
            raise(vcpu, vm, host, EventInfo::exception_with_error_code(8, 0))
        }
        FaultInDelivery::PageFault => match delivery_fault(vcpu, vm, first) {
            Some(no) => no.deliver(vcpu, vm, host),
            None => limit(
                vm,
                "a page walk through unbacked memory while delivering an event, for an access L0 does not find",
                stop,
            ),
        },
    }
}

/// A triple fault: L1's #VMEXIT(SHUTDOWN) if L2 ran and L1 intercepts it,
/// else the VM shuts down (APM 15.11; KVM shuts L1 down when it does not
/// intercept L2's shutdown).
fn shutdown(vcpu: &mut Vcpu, vm: &mut Vm, host: &HostCpu) -> Action {
    vcpu.vmcb.control.event_inj = 0;
    if let Some(l2) = &vcpu.nested.l2 {
        if l2.vmcb12.control.intercept_misc1 & InterceptMisc1::SHUTDOWN.bits() != 0 {
            let c = &mut vcpu.vmcb.control;
            c.exit_info1 = 0;
            c.exit_info2 = 0;
            c.exit_int_info = 0;
            return nested::vmexit::reflect(vcpu, vm, host, ExitCode::Shutdown);
        }
    }
    Action::Stop(Stop::Shutdown)
}

/// The #PF of an event delivery (long mode, no IST, at CPL 0) through
/// unbacked tables: the IDT gate's walk, then the frame's (APM 8.9.3: the
/// frame goes at RSP aligned down to 16). Delivery accesses are
/// supervisor accesses (U/S clear in the error code).
fn delivery_fault(vcpu: &Vcpu, vm: &Vm, first: EventInfo) -> Option<NoInsn> {
    let s = &vcpu.vmcb.state;
    if fetch::paging(s.cr0, s.efer) != Paging::Long {
        return None;
    }
    let supervisor = |no: NoInsn| match no {
        NoInsn::Fault {
            event,
            cr2: Some(cr2),
        } => NoInsn::Fault {
            event: EventInfo::exception_with_error_code(14, event.error_code().unwrap_or(0) & !4),
            cr2: Some(cr2),
        },
        _ => no,
    };
    let gate = s.idtr.base.wrapping_add(u64::from(first.vector()) * 16);
    if let Some(no) = walk_fault(vcpu, vm, gate, 16, false, false) {
        return supervisor(no).into();
    }
    let mut bytes = [0u8; 8];
    rip::read_linear(vcpu, vm, gate, &mut bytes).ok()?;
    let ist = bytes[4] & 7;
    if ist != 0 || s.cpl != 0 {
        return None;
    }
    let top = s.rsp & !0xF;
    walk_fault(vcpu, vm, top.wrapping_sub(48), 48, true, false).map(supervisor)
}

/// A store to unbacked memory: drop it and complete the instruction.
fn drop_store(vcpu: &mut Vcpu, vm: &mut Vm, host: &HostCpu, stop: Stop) -> Action {
    let d = match rip::decode_at_rip(vcpu, vm) {
        Ok(d) => d,
        Err(no) => return no.deliver(vcpu, vm, host),
    };
    // Every store must land in unbacked memory: one that reaches RAM (a
    // store straddling RAM's end, a second store) would lose its RAM part.
    let mut writes = [None; 4];
    let mut n = 0;
    let mut first_read = None;
    accesses(vcpu, &d, |a| {
        if a.write && n < writes.len() {
            writes[n] = Some(a);
            n += 1;
        } else if !a.write {
            first_read.get_or_insert(a.la);
        }
    });
    if n == 0 {
        // The bytes at RIP changed since the CPU fetched them (another
        // vCPU rewrote them): the CPU runs what is there now, as KVM's
        // emulator does when it re-fetches (x86.c, x86_emulate_instruction).
        // Bounded per RIP in a row: a decoder gap would loop forever.
        return match no_store(vcpu.vmcb.state.rip, vcpu.store_retries) {
            NoStore::Retry(r) => {
                vcpu.store_retries = Some(r);
                Action::Resume
            }
            NoStore::Stop => limit(vm, "a store L0 cannot find", stop),
        };
    }
    vcpu.store_retries = None;
    if n == writes.len() {
        return limit(vm, "a store L0 cannot find", stop);
    }
    for a in writes.iter().flatten() {
        for la in [a.la, a.la.wrapping_add(a.size - 1)] {
            match rip::translate_access(vcpu, vm, la, true, false) {
                Ok(gpa) if rip::is_unbacked(vm, gpa) => {}
                Ok(_) => return limit(vm, "a store reaching both unbacked memory and RAM", stop),
                // The other page of the store faults first.
                Err(no) => return no.deliver(vcpu, vm, host),
            }
        }
    }
    match d.store_drop() {
        StoreDrop::Skip => {
            vcpu.vmcb.state.rip = rip::rip_after(vcpu, d.len as u64);
            rip::single_step(vcpu, vm, host)
        }
        StoreDrop::String(store) => {
            let dst = writes[0].map_or(0, |a| a.la);
            // The decoder gives a REP string no size: the whole element.
            let end = dst.wrapping_add(store.size - 1);
            if !rip::translate_access(vcpu, vm, end, true, false)
                .is_ok_and(|gpa| rip::is_unbacked(vm, gpa))
            {
                return limit(
                    vm,
                    "a string store reaching both unbacked memory and RAM",
                    stop,
                );
            }
            let src = first_read.unwrap_or(0);
            let before = StringRegs {
                rcx: vcpu.regs.rcx,
                rsi: vcpu.regs.rsi,
                rdi: vcpu.regs.rdi,
                done: false,
            };
            let df = vcpu.vmcb.state.rflags & RFLAGS_DF != 0;
            let after = store.drop_stores(before, df, dst, src);
            vcpu.regs.rcx = after.rcx;
            vcpu.regs.rsi = after.rsi;
            vcpu.regs.rdi = after.rdi;
            if !after.done {
                return Action::Resume;
            }
            vcpu.vmcb.state.rip = rip::rip_after(vcpu, d.len as u64);
            rip::single_step(vcpu, vm, host)
        }
        StoreDrop::Alu { op, size, src } => {
            let src = match src {
                AluSrc::None => 0,
                AluSrc::Imm(v) => v,
                AluSrc::Reg(r) => r.read(super::cr::gpr(vcpu, r.n), size),
            };
            let s = &mut vcpu.vmcb.state;
            s.rflags = alu::apply(op, size, u64::MAX, src, s.rflags).1;
            vcpu.vmcb.state.rip = rip::rip_after(vcpu, d.len as u64);
            rip::single_step(vcpu, vm, host)
        }
        StoreDrop::Shift { op, size, count } => {
            let count = match count {
                Some(c) => u64::from(c),
                None => super::cr::gpr(vcpu, 1) & 0xFF,
            };
            let s = &mut vcpu.vmcb.state;
            s.rflags = alu::shift(op, size, u64::MAX, count, s.rflags).1;
            vcpu.vmcb.state.rip = rip::rip_after(vcpu, d.len as u64);
            rip::single_step(vcpu, vm, host)
        }
        StoreDrop::Xadd { size, reg } => {
            let src = reg.read(super::cr::gpr(vcpu, reg.n), size);
            let s = &mut vcpu.vmcb.state;
            s.rflags = alu::apply(alu::Op::Add, size, u64::MAX, src, s.rflags).1;
            set_register(vcpu, reg, size, u64::MAX);
            vcpu.vmcb.state.rip = rip::rip_after(vcpu, d.len as u64);
            rip::single_step(vcpu, vm, host)
        }
        StoreDrop::Cmpxchg { size } => {
            let acc = super::cr::gpr(vcpu, 0);
            let s = &mut vcpu.vmcb.state;
            // CMP accumulator, destination (APM Vol. 3 CMPXCHG).
            let (diff, flags) = alu::apply(alu::Op::Sub, size, acc, u64::MAX, s.rflags);
            s.rflags = flags;
            if diff != 0 {
                let rax = RegRef { n: 0, high8: false };
                set_register(vcpu, rax, size, u64::MAX);
            }
            vcpu.vmcb.state.rip = rip::rip_after(vcpu, d.len as u64);
            rip::single_step(vcpu, vm, host)
        }
        StoreDrop::BitTest => {
            vcpu.vmcb.state.rflags |= 1;
            vcpu.vmcb.state.rip = rip::rip_after(vcpu, d.len as u64);
            rip::single_step(vcpu, vm, host)
        }
        StoreDrop::Xchg { size, reg } => {
            set_register(vcpu, reg, size, u64::MAX);
            vcpu.vmcb.state.rip = rip::rip_after(vcpu, d.len as u64);
            rip::single_step(vcpu, vm, host)
        }
        StoreDrop::Stack { delta, call } => {
            let target = match call {
                None => rip::rip_after(vcpu, d.len as u64),
                Some(CallTarget::Direct(t)) => t,
                Some(CallTarget::Reg(n)) => super::cr::gpr(vcpu, n),
                Some(CallTarget::Memory) => {
                    let la = d.memory_address(
                        |n| super::cr::gpr(vcpu, n),
                        |s| rip::segment_base(vcpu, s),
                    );
                    let mut b = [0u8; 8];
                    let read = la
                        .ok_or_else(NoInsn::ud)
                        .and_then(|la| rip::read_linear(vcpu, vm, la, &mut b));
                    if let Err(no) = read {
                        return no.deliver(vcpu, vm, host);
                    }
                    u64::from_le_bytes(b)
                }
            };
            let s = &mut vcpu.vmcb.state;
            s.rsp = s.rsp.wrapping_add_signed(delta);
            s.rip = target;
            rip::single_step(vcpu, vm, host)
        }
        StoreDrop::Unsupported => limit(
            vm,
            "a store to unbacked memory by an instruction L0 does not complete",
            stop,
        ),
    }
}

/// Writes `value` to register operand `reg` of `size` bytes.
fn set_register(vcpu: &mut Vcpu, reg: RegRef, size: u32, value: u64) {
    let new = alu::write_register(super::cr::gpr(vcpu, reg.n), value, size, reg.high8);
    *super::cr::gpr_mut(vcpu, reg.n) = new;
}
