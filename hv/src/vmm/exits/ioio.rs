//! Port I/O. Guests reach no host device. A VM with a platform
//! ([`Vm::devices`], an external guest) has its accesses routed to
//! [`svm::devices::PortBus`]: COM1 bytes go to the host console verbatim,
//! a write to the exit device ends the run. A self-test VM has none: console
//! output on COM1's data port and the debugcon port 0xE9 goes to the host
//! console with a prefix, COM1's line status reads "ready", and everything
//! else (isa-debug-exit included) is dropped, reads returning all ones like
//! an empty bus. INS/OUTS (REP or not) move their elements between those
//! ports and guest memory in every CPU mode, from L1 and L2
//! ([`string_io`]). EXITINFO2 holds the next RIP (APM Vol. 2, 15.10.2), NRIP
//! or not.

use super::rip::{self, NoInsn};
use super::{Action, Stop};
use crate::vmm::enable::HostCpu;
use crate::vmm::vcpu::Vcpu;
use crate::vmm::vm::Vm;
use svm::decode::Seg;
use svm::devices::string_io::{self, seg};
use svm::emulate::fetch;
use svm::{IoDirection, IoioInfo};

const COM1_DATA: u16 = 0x3f8;
const COM1_LSR: u16 = 0x3fd;
const DEBUGCON: u16 = 0xe9;
/// LSR: transmit holding register and transmitter empty.
const LSR_TX_READY: u64 = 0x60;

pub fn handle(vcpu: &mut Vcpu, vm: &mut Vm, host: &HostCpu) -> Action {
    let Some(io) = IoioInfo::from_exit_info1(vcpu.vmcb.control.exit_info1) else {
        return Action::Stop(Stop::Unhandled(alloc::format!(
            "malformed IOIO exitinfo1 {:#x}",
            vcpu.vmcb.control.exit_info1
        )));
    };
    if io.string {
        // INS/OUTS, REP or not, in any CPU mode, from L1 or L2 (an L2's
        // IOIO exit reaches L0 only when L1 does not intercept the port).
        return string_io(vcpu, vm, host, &io);
    }
    // REP before IN/OUT changes nothing (APM Vol. 3, "REP").
    let size_mask = match io.size {
        1 => 0xff,
        2 => 0xffff,
        _ => 0xffff_ffff,
    };
    match io.direction {
        IoDirection::In => {
            let value = port_in(vcpu, vm, io.port, io.size);
            set_al(vcpu, u64::from(value), size_mask);
        }
        IoDirection::Out => {
            let value = vcpu.vmcb.state.rax as u32;
            if let Some(stop) = port_out(vcpu, vm, io.port, io.size, value) {
                return Action::Stop(stop);
            }
        }
    }
    vcpu.vmcb.state.rip = vcpu.vmcb.control.exit_info2;
    super::rip::single_step(vcpu, vm, host)
}

/// One IN of `size` bytes: the VM's port bus, or for a self-test VM its
/// console model (COM1's LSR reads "ready", everything else all ones).
fn port_in(vcpu: &mut Vcpu, vm: &mut Vm, port: u16, size: u8) -> u32 {
    if let Some(bus) = vm.devices.as_mut() {
        return bus.read(port, size);
    }
    if port == COM1_LSR {
        return LSR_TX_READY as u32;
    }
    vcpu.blocked_io += 1;
    u32::MAX
}

/// One OUT of `size` bytes of `value`; `Some` when it ends the run (the
/// exit device of a VM with a platform).
fn port_out(vcpu: &mut Vcpu, vm: &mut Vm, port: u16, size: u8, value: u32) -> Option<Stop> {
    if let Some(bus) = vm.devices.as_mut() {
        let effect = bus.write(port, size, value);
        if let Some(byte) = effect.output {
            crate::console::write_raw(byte);
        }
        return effect.exit.map(Stop::ExitDevice);
    }
    match port {
        COM1_DATA | DEBUGCON if size == 1 => vm.console_byte(value as u8),
        _ => {
            vcpu.blocked_io += 1;
            log::debug!("vm {}: dropped OUT to port {port:#x}", vm.name);
        }
    }
    None
}

/// Writes an IN result into the low `size_mask` bits of RAX.
fn set_al(vcpu: &mut Vcpu, value: u64, size_mask: u64) {
    let rax = &mut vcpu.vmcb.state.rax;
    // A 32-bit IN zero-extends into RAX; 8/16-bit ones merge.
    *rax = if size_mask == 0xffff_ffff {
        value & size_mask
    } else {
        (*rax & !size_mask) | (value & size_mask)
    };
}

/// RFLAGS.DF: string elements go down.
const RFLAGS_DF: u64 = 1 << 10;
/// Most elements of a REP INS/OUTS moved per exit: the rest run after the
/// guest re-enters (RIP stays on the instruction, as when the CPU takes an
/// interrupt between iterations), so a long string cannot hold L0.
const MAX_ELEMENTS_PER_EXIT: u64 = 4096;

/// INS/OUTS (REP or not): each element between the port ([`port_in`],
/// [`port_out`]) and guest memory at ES:rDI / seg:rSI, through the running
/// guest's paging in its mode (an L2's page tables give L1-physical
/// addresses, through L1's nested table when L1 runs it with nested
/// paging: rip::translate_as), the registers moved as the CPU moves them (APM Vol. 3, INS,
/// OUTS, REP). A #PF or #GP (non-canonical address) on the way is delivered
/// with the elements before it done and rSI/rDI/rCX pointing at the
/// faulting one, RIP on the instruction, as the CPU leaves them. Bytes that
/// are no INS/OUTS matching EXITINFO1 are #UD: never a silent skip.
fn string_io(vcpu: &mut Vcpu, vm: &mut Vm, host: &HostCpu, io: &IoioInfo) -> Action {
    let insn = match fetch_string_insn(vcpu, vm) {
        Ok(insn) if insn.input == (io.direction == IoDirection::In) => insn,
        Ok(_) => return NoInsn::ud().deliver(vcpu, vm, host),
        Err(no) => return no.deliver(vcpu, vm, host),
    };
    let bitness = rip::bitness(vcpu);
    let next_rip = vcpu.vmcb.control.exit_info2;
    let bits = string_io::address_bits(io.address_size, insn.address_bits);
    let down = vcpu.vmcb.state.rflags & RFLAGS_DF != 0;
    let size = usize::from(io.size);
    let total = string_io::elements(io.rep, vcpu.regs.rcx, bits);
    // INS always writes ES (no override, APM Vol. 3 "INS").
    let segment = seg_of(if insn.input { seg::ES } else { insn.segment });
    let base = rip::segment_base(vcpu, segment);
    for _ in 0..total.min(MAX_ELEMENTS_PER_EXIT) {
        let offset = if insn.input {
            vcpu.regs.rdi
        } else {
            vcpu.regs.rsi
        };
        let la = string_io::linear(base, string_io::low(offset, bits), bitness);
        let result = if insn.input {
            // The destination is checked before the port is read, so a
            // #PF does not lose a read with side effects (fw_cfg).
            let last = la.wrapping_add(size as u64 - 1);
            rip::translate_access(vcpu, vm, la, true, false)
                .and_then(|_| rip::translate_access(vcpu, vm, last, true, false))
                .and_then(|_| {
                    let value = port_in(vcpu, vm, io.port, io.size);
                    rip::write_linear(vcpu, vm, la, &value.to_le_bytes()[..size])
                })
        } else {
            let mut value = [0u8; 4];
            match rip::read_linear(vcpu, vm, la, &mut value[..size]) {
                Ok(()) => {
                    let value = u32::from_le_bytes(value);
                    if let Some(stop) = port_out(vcpu, vm, io.port, io.size, value) {
                        return Action::Stop(stop);
                    }
                    Ok(())
                }
                Err(e) => Err(e),
            }
        };
        if let Err(fault) = result {
            return stack_fault(fault, segment).deliver(vcpu, vm, host);
        }
        let r = &mut vcpu.regs;
        if insn.input {
            r.rdi = string_io::step(r.rdi, io.size, down, bits);
        } else {
            r.rsi = string_io::step(r.rsi, io.size, down, bits);
        }
        if io.rep {
            r.rcx = string_io::count_down(r.rcx, bits);
        }
    }
    if io.rep && string_io::low(vcpu.regs.rcx, bits) != 0 {
        // More to do: re-enter on the same instruction.
        return Action::Resume;
    }
    vcpu.vmcb.state.rip = next_rip;
    rip::single_step(vcpu, vm, host)
}

/// A non-canonical address through SS is #SS(0), not #GP(0) (APM Vol. 2,
/// 8.2, #SS: a stack-segment reference with a non-canonical address).
fn stack_fault(fault: NoInsn, segment: Seg) -> NoInsn {
    match fault {
        NoInsn::Fault { event, cr2: None } if segment == Seg::Ss && event.vector() == 13 => {
            NoInsn::Fault {
                event: svm::EventInfo::exception_with_error_code(12, 0),
                cr2: None,
            }
        }
        other => other,
    }
}

/// The prefixes and opcode of the INS/OUTS at RIP (its length from
/// EXITINFO2, the next RIP), fetched through the guest's paging.
fn fetch_string_insn(vcpu: &Vcpu, vm: &Vm) -> Result<string_io::StringIoBytes, NoInsn> {
    let bitness = rip::bitness(vcpu);
    let (rip_now, cs_base) = (vcpu.vmcb.state.rip, vcpu.vmcb.state.cs.base);
    let next_rip = vcpu.vmcb.control.exit_info2;
    let len = match usize::try_from(next_rip.wrapping_sub(rip_now)) {
        Ok(len) if (1..=svm::decode::MAX_INSN_LEN).contains(&len) => len,
        // RIP wrapped within the code size (16-bit code at 0xFFFF): decode.
        _ => rip::decode_at_rip(vcpu, vm)?.len,
    };
    let mut bytes = [0u8; svm::decode::MAX_INSN_LEN];
    for (i, b) in bytes[..len].iter_mut().enumerate() {
        let la = fetch::code_address(bitness, cs_base, rip_now, i as u64);
        rip::read_linear(vcpu, vm, la, core::slice::from_mut(b))?;
    }
    string_io::parse(&bytes[..len], bitness).ok_or_else(NoInsn::ud)
}

/// The segment register of an EXITINFO1/prefix segment number.
fn seg_of(n: u8) -> Seg {
    match n {
        seg::ES => Seg::Es,
        seg::CS => Seg::Cs,
        seg::SS => Seg::Ss,
        seg::FS => Seg::Fs,
        seg::GS => Seg::Gs,
        _ => Seg::Ds,
    }
}
