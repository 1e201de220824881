//! Turning SVM on for this CPU (APM Vol. 2, 15.4 "Enabling SVM").

use super::phys_box::PhysBox;
use crate::arch::cpu::{rdmsr, wrmsr};
use crate::svm_support::{self, Support};
use svm::msr::{EFER, EFER_SVME, VM_HSAVE_PA};
use svm::Vmcb;

/// Per-CPU SVM state of the host.
#[derive(Debug)]
pub struct HostCpu {
    /// What the CPU offers.
    pub features: svm::SvmFeatures,
    /// The page VMRUN saves host state into (VM_HSAVE_PA). The CPU owns it.
    _hsave: PhysBox<[u8; 4096]>,
    /// The host's FS/GS/TR/LDTR and syscall MSRs, saved once by VMSAVE at
    /// enable time and loaded after each guest run (VMRUN does not switch
    /// those).
    host_vmcb: PhysBox<Vmcb>,
}

impl HostCpu {
    /// Physical address of this CPU's host save area (VM_HSAVE_PA).
    pub fn hsave_pa(&self) -> u64 {
        self._hsave.phys()
    }

    /// Physical address of the host save VMCB.
    pub fn host_vmcb_pa(&self) -> u64 {
        self.host_vmcb.phys()
    }
}

/// Enables SVM on the running CPU (once per CPU, in its per-CPU block)
/// and returns its state, or why guests cannot run here.
pub fn this_cpu() -> Result<&'static HostCpu, &'static str> {
    crate::smp::this()
        .host
        .call_once(enable)
        .as_ref()
        .map_err(|e| *e)
}

fn enable() -> Result<HostCpu, &'static str> {
    let features = match svm_support::probe() {
        Support::Available(f) => f,
        Support::Unavailable(why) => return Err(why),
    };
    let hsave: PhysBox<[u8; 4096]> =
        PhysBox::new_zeroed().ok_or("out of memory for VM_HSAVE_PA")?;
    let host_vmcb: PhysBox<Vmcb> =
        PhysBox::new_zeroed().ok_or("out of memory for the host VMCB")?;
    // SAFETY: SVM is present and not disabled (probed above); EFER.SVME only
    // makes the SVM instructions legal, and VM_HSAVE_PA points at a page we own.
    unsafe {
        wrmsr(EFER, rdmsr(EFER) | EFER_SVME);
        wrmsr(VM_HSAVE_PA, hsave.phys());
    }
    // The host's FS/GS/TR/LDTR and syscall MSRs, set at boot (arch::gdt)
    // and never changed after: saved once, loaded after every guest run
    // (world_switch).
    // SAFETY: EFER.SVME is set; the page is ours and 4 KiB aligned.
    unsafe {
        core::arch::asm!("vmsave rax", in("rax") host_vmcb.phys(), options(nostack));
    }
    Ok(HostCpu {
        features,
        _hsave: hsave,
        host_vmcb,
    })
}
