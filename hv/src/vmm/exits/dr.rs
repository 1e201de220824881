//! DR0-DR3, DR5 and DR7 write exits: emulated ([`svm::emulate::dr`]), so no
//! guest runs QEMU's MOV DR bookkeeping (docs/qemu-tcg.md).
//!
//! DR0-DR3 are not in the VMCB: VMRUN and #VMEXIT leave them alone, so L1
//! and L2 share one set, as on the CPU (APM 15.5.1 lists what VMRUN
//! switches). L0 keeps the guest's values in [`Vcpu::db`] and in the CPU
//! itself while the vCPU runs ([`load`]), and writes a guest's MOV DR0-3
//! there with its own MOV in host mode, where DR7 = 0x400 arms nothing
//! (QEMU's helper then only stores the value). Nothing else writes them
//! while the vCPU runs (L0 does not use them; every guest write exits), so
//! guest reads are not intercepted.

use super::cr::{fault_event, gpr_operand};
use super::rip::{self, NoInsn};
use super::{raise, Action};
use crate::vmm::enable::HostCpu;
use crate::vmm::vcpu::Vcpu;
use crate::vmm::vm::Vm;
use svm::decode::Insn;
use svm::emulate::dr::{self, DrWrite};
use svm::EventInfo;

/// The DR write intercepts L0 keeps for every guest: DR0-DR3, DR5 (DR7's
/// alias while CR4.DE is clear) and DR7. DR4/DR6 writes reach no
/// breakpoint bookkeeping in QEMU and stay native.
pub const INTERCEPT_DR: u32 = (0b1111 << 16) | (1 << (16 + 5)) | (1 << (16 + 7));

/// CR4.DE
const CR4_DE: u64 = 1 << 3;

/// Puts `db` into the CPU's DR0-DR3: the vCPU's values when it starts
/// running (what the last VM left there is not its own), and after each
/// write L0 emulates.
pub fn load(db: &[u64; 4]) {
    // SAFETY: L0 runs with DR7 = 0x400 (no breakpoint enabled, L0 never
    // writes DR7), so these only set addresses; a guest's DR7 arms them
    // from VMRUN to #VMEXIT, as it would on the CPU.
    unsafe {
        core::arch::asm!(
            "mov dr0, {}", "mov dr1, {}", "mov dr2, {}", "mov dr3, {}",
            in(reg) db[0], in(reg) db[1], in(reg) db[2], in(reg) db[3],
            options(nomem, nostack)
        );
    }
}

/// Handles a write exit of debug register `n` (0-3, 5 or 7).
pub fn handle(vcpu: &mut Vcpu, vm: &mut Vm, host: &HostCpu, n: u8) -> Action {
    let d = match rip::decode_at_rip(vcpu, vm) {
        Ok(d) => d,
        Err(no) => return no.deliver(vcpu, vm, host),
    };
    let Insn::MovToDr { dr: reg, gpr } = d.insn else {
        return NoInsn::ud().deliver(vcpu, vm, host);
    };
    if reg != n {
        return NoInsn::ud().deliver(vcpu, vm, host);
    }
    if vcpu.vmcb.state.cpl != 0 {
        return raise(vcpu, vm, host, EventInfo::exception_with_error_code(13, 0));
    }
    let de = vcpu.vmcb.state.cr4 & CR4_DE != 0;
    let value = gpr_operand(vcpu, gpr);
    match dr::write(reg, de, vcpu.vmcb.state.dr7, value) {
        Ok(write) => {
            match write {
                DrWrite::Address(i, v) => {
                    vcpu.db[usize::from(i)] = v;
                    load(&vcpu.db);
                }
                DrWrite::Dr7(v) => vcpu.vmcb.state.dr7 = v,
            }
            vcpu.vmcb.state.rip = rip::rip_after(vcpu, d.len as u64);
            rip::single_step(vcpu, vm, host)
        }
        Err(f) => {
            let event = fault_event(vcpu, f);
            raise(vcpu, vm, host, event)
        }
    }
}
