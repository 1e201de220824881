//! Re-injection of an event whose delivery an exit cut short, when L0
//! handles that exit itself and the same guest resumes (APM 15.7.2: the
//! event in EXITINTINFO was not delivered; KVM svm_complete_interrupts).
//! Exits reflected to L1 carry the event in vmcb12's EXITINTINFO instead
//! (nested::vmexit::reflect).

use crate::vmm::enable::HostCpu;
use crate::vmm::vcpu::Vcpu;
use svm::event::complete;
use svm::{EventInfo, SvmFeatureFlags};

/// Queues EXITINTINFO's event (sanitized for QEMU TCG) for the next VMRUN.
/// A handler that injects an event of its own afterwards replaces it, as
/// the CPU delivers the fault that interrupted a delivery instead of it.
///
/// Inline for the common case, nothing being delivered at the exit
/// (EXITINTINFO.V clear): then `complete` changes nothing but ends the
/// soft event L0 tracked (it was delivered), so only that is done here.
#[inline]
pub fn complete_interrupts(vcpu: &mut Vcpu, host: &HostCpu) {
    if !EventInfo(vcpu.vmcb.control.exit_int_info).is_valid() {
        vcpu.nested.soft_event = None;
        return;
    }
    complete_delivery(vcpu, host);
}

/// [`complete_interrupts`] with an event in EXITINTINFO.
#[inline(never)]
fn complete_delivery(vcpu: &mut Vcpu, host: &HostCpu) {
    let host_nrips = host.features.has(SvmFeatureFlags::NRIPS);
    let done = complete(
        EventInfo(vcpu.vmcb.control.exit_int_info),
        vcpu.vmcb.state.rip,
        vcpu.nested.soft_event,
        host_nrips,
    );
    vcpu.vmcb.state.rip = done.rip;
    vcpu.nested.soft_event = done.soft;
    if done.event_inj.is_valid() {
        log::debug!("re-injecting {:?}", done.event_inj);
        vcpu.vmcb.control.event_inj = done.event_inj.0;
        vcpu.vmcb.control.next_rip = done.next_rip;
    }
}
