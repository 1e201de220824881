//! Port I/O. Guests reach no host device. A VM with a platform
//! ([`Vm::devices`], an external guest) has its accesses routed to
//! [`svm::devices::PortBus`]: COM1 bytes go to the host console verbatim,
//! a write to the exit device ends the run, INS/OUTS from L1 move their
//! elements through guest memory ([`string_io`]). A self-test VM has none: console
//! output on COM1's data port and the debugcon port 0xE9 goes to the host
//! console with a prefix, COM1's line status reads "ready", and everything
//! else (isa-debug-exit included) is dropped, reads returning all ones like
//! an empty bus. EXITINFO2 holds the next RIP (APM Vol. 2, 15.10.2), NRIP
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
    let size_mask = match io.size {
        1 => 0xff,
        2 => 0xffff,
        _ => 0xffff_ffff,
    };
    if io.string && vm.devices.is_some() {
        if let Some(action) = string_io(vcpu, vm, host, &io) {
            return action;
        }
        // Not emulated here (see string_io): dropped whole, as for a VM
        // without devices.
        vcpu.blocked_io += 1;
    } else if (io.string || io.rep) && vm.devices.is_none() {
        // No self-test device needs string I/O: drop it whole.
        vcpu.blocked_io += 1;
    } else if let Some(bus) = vm.devices.as_mut() {
        match io.direction {
            IoDirection::In => {
                let value = bus.read(io.port, io.size);
                set_al(vcpu, u64::from(value), size_mask);
            }
            IoDirection::Out => {
                let effect = bus.write(io.port, io.size, vcpu.vmcb.state.rax as u32);
                if let Some(byte) = effect.output {
                    crate::console::write_raw(byte);
                }
                if let Some(status) = effect.exit {
                    return Action::Stop(Stop::ExitDevice(status));
                }
            }
        }
    } else {
        match (io.direction, io.port) {
            (IoDirection::Out, COM1_DATA | DEBUGCON) if io.size == 1 => {
                vm.console_byte(vcpu.vmcb.state.rax as u8)
            }
            (IoDirection::In, COM1_LSR) => set_al(vcpu, LSR_TX_READY, size_mask),
            (IoDirection::In, _) => {
                vcpu.blocked_io += 1;
                set_al(vcpu, u64::MAX, size_mask);
            }
            (IoDirection::Out, port) => {
                vcpu.blocked_io += 1;
                log::debug!("vm {}: dropped OUT to port {port:#x}", vm.name);
            }
        }
    }
    vcpu.vmcb.state.rip = vcpu.vmcb.control.exit_info2;
    super::rip::single_step(vcpu, vm, host)
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

/// INS/OUTS (REP or not) of a VM with devices: each element between the
/// port bus and guest memory at ES:rDI / seg:rSI, the registers moved as
/// the CPU moves them (APM Vol. 3, INS/OUTS), a #PF on the way delivered
/// with the elements before it done. `None` where L0 does not emulate it
/// and drops it instead: in L2 (its linear addresses are L1's business),
/// or when the guest's paging mode is one L0 does not walk.
fn string_io(vcpu: &mut Vcpu, vm: &mut Vm, host: &HostCpu, io: &IoioInfo) -> Option<Action> {
    if vcpu.nested.in_l2() {
        return None;
    }
    let bitness = rip::bitness(vcpu);
    let (rip_now, cs_base) = (vcpu.vmcb.state.rip, vcpu.vmcb.state.cs.base);
    let next_rip = vcpu.vmcb.control.exit_info2;
    let len = usize::try_from(next_rip.wrapping_sub(rip_now)).ok()?;
    if !(1..=svm::decode::MAX_INSN_LEN).contains(&len) {
        return None;
    }
    let mut bytes = [0u8; svm::decode::MAX_INSN_LEN];
    for (i, b) in bytes[..len].iter_mut().enumerate() {
        let la = fetch::code_address(bitness, cs_base, rip_now, i as u64);
        rip::read_linear(vcpu, vm, la, core::slice::from_mut(b)).ok()?;
    }
    let insn = string_io::parse(&bytes[..len], bitness)?;
    if insn.input != (io.direction == IoDirection::In) {
        return None;
    }
    let bits = insn.address_bits;
    let down = vcpu.vmcb.state.rflags & RFLAGS_DF != 0;
    let size = usize::from(io.size);
    let total = string_io::elements(io.rep, vcpu.regs.rcx, bits);
    let linear = |vcpu: &Vcpu, segment: u8, offset: u64| {
        let la = rip::segment_base(vcpu, seg_of(segment)).wrapping_add(offset);
        if bitness == 64 {
            la
        } else {
            la & 0xFFFF_FFFF
        }
    };
    for done in 0..total.min(MAX_ELEMENTS_PER_EXIT) {
        let result = if insn.input {
            let la = linear(vcpu, seg::ES, string_io::low(vcpu.regs.rdi, bits));
            // The destination is checked before the port is read, so a
            // #PF does not lose a read with side effects (fw_cfg).
            let last = la.wrapping_add(size as u64 - 1);
            rip::translate_access(vcpu, vm, la, true, false)
                .and_then(|_| rip::translate_access(vcpu, vm, last, true, false))
                .and_then(|_| {
                    let bus = vm.devices.as_mut().expect("checked by the caller");
                    let value = bus.read(io.port, io.size);
                    rip::write_linear(vcpu, vm, la, &value.to_le_bytes()[..size])
                })
        } else {
            let la = linear(vcpu, insn.segment, string_io::low(vcpu.regs.rsi, bits));
            let mut value = [0u8; 4];
            match rip::read_linear(vcpu, vm, la, &mut value[..size]) {
                Ok(()) => {
                    let bus = vm.devices.as_mut().expect("checked by the caller");
                    let effect = bus.write(io.port, io.size, u32::from_le_bytes(value));
                    if let Some(byte) = effect.output {
                        crate::console::write_raw(byte);
                    }
                    if let Some(status) = effect.exit {
                        return Some(Action::Stop(Stop::ExitDevice(status)));
                    }
                    Ok(())
                }
                Err(e) => Err(e),
            }
        };
        match result {
            Ok(()) => {}
            // A paging mode L0 does not walk, memory it cannot reach:
            // drop the instruction as before, unless elements were moved
            // (then the guest runs it again from where it stopped).
            Err(NoInsn::Limit(_)) if done == 0 => return None,
            Err(NoInsn::Limit(_)) => return Some(Action::Resume),
            Err(fault) => return Some(fault.deliver(vcpu, vm, host)),
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
        return Some(Action::Resume);
    }
    vcpu.vmcb.state.rip = next_rip;
    Some(rip::single_step(vcpu, vm, host))
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
