//! L1's GIF in the CPU's virtual GIF when the host has VGIF
//! ([`svm::nested::vgif`]): L1's CLGI and STGI run without exits; STGI
//! exits only while L0 holds an event for L1 behind its GIF.

use crate::vmm::enable::HostCpu;
use crate::vmm::vcpu::Vcpu;
use crate::vmm::vm::Vm;
use svm::nested::vgif::{entry_controls, exit_controls};
use svm::SvmFeatureFlags;

/// Whether something L0 holds for L1 waits for L1's GIF: an external
/// interrupt, an NMI, or what the local APIC has (an interrupt, NMI or SMI;
/// one TPR masks costs only an STGI exit).
fn waiting_for_gif(vcpu: &Vcpu) -> bool {
    vcpu.nested.pending_interrupt.is_some()
        || vcpu.nmi.pending
        || vcpu.lapic.nmi_pending()
        || vcpu.lapic.smi_pending()
        || vcpu.lapic.pending_vector().is_some()
}

/// Just before an entry: when L1 (not L2) is entered on a host with VGIF,
/// its GIF goes into V_GIF ([`entry_controls`]). Not while L1's own
/// EFER.SVME is clear: the CPU sees only the VMCB's EFER, whose SVME is
/// always set, so it would run CLGI/STGI that must be #UD (APM 15.4);
/// they stay intercepted and L0 raises the #UD.
///
/// When L2 is entered: its STGI/CLGI intercepts for nested VGIF
/// ([`svm::nested::l2_vgif::entry_intercepts`]).
#[inline(always)]
pub fn before_entry(vcpu: &mut Vcpu, vm: &Vm, host: &HostCpu) {
    if let Some(l2) = &vcpu.nested.l2 {
        let misc2 = l2.vmcb12.control.intercept_misc2;
        svm::nested::l2_vgif::entry_intercepts(&mut vcpu.vmcb.control, misc2, l2.svme);
        return;
    }
    if !vm.nested_svm
        || vcpu.nested.in_l2()
        || !vcpu.nested.svme
        || !host.features.has(SvmFeatureFlags::VGIF)
    {
        return;
    }
    let waiting = waiting_for_gif(vcpu);
    entry_controls(&mut vcpu.vmcb.control, vcpu.nested.gif, waiting);
    vcpu.nested.vgif_in_vmcb = true;
}

/// Right after the exit: L1's GIF back from V_GIF, and L0's controls
/// ([`exit_controls`]), before any handler reads either.
pub fn after_exit(vcpu: &mut Vcpu) {
    if core::mem::take(&mut vcpu.nested.vgif_in_vmcb) {
        vcpu.nested.gif = exit_controls(&mut vcpu.vmcb.control);
    }
}
