//! Port I/O. Guests reach no host device. A VM with a platform
//! ([`Vm::devices`], an external guest) has its accesses routed to
//! [`svm::devices::PortBus`]: COM1 bytes go to the host console verbatim,
//! a write to the exit device ends the run. A self-test VM has none: console
//! output on COM1's data port and the debugcon port 0xE9 goes to the host
//! console with a prefix, COM1's line status reads "ready", and everything
//! else (isa-debug-exit included) is dropped, reads returning all ones like
//! an empty bus. EXITINFO2 holds the next RIP (APM Vol. 2, 15.10.2), NRIP
//! or not.

use super::{Action, Stop};
use crate::vmm::enable::HostCpu;
use crate::vmm::vcpu::Vcpu;
use crate::vmm::vm::Vm;
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
    if io.string || io.rep {
        // No guest device needs string I/O: drop it whole. (INS/OUTS would
        // need the address size, which TCG leaves out of EXITINFO1, and a
        // walk of the running level's page tables.)
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
