//! CPUID: the host's answer through [`svm::cpuid_filter`].

use super::{rip, Action};
use crate::vmm::enable::HostCpu;
use crate::vmm::vcpu::Vcpu;
use crate::vmm::vm::Vm;
use svm::cpuid_filter::{filter, GuestCpuidPolicy};

pub fn handle(vcpu: &mut Vcpu, vm: &mut Vm, host: &HostCpu) -> Action {
    let leaf = vcpu.vmcb.state.rax as u32;
    let subleaf = vcpu.regs.rcx as u32;
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    let [eax, ebx, ecx, edx] = filter(
        leaf,
        subleaf,
        [r.eax, r.ebx, r.ecx, r.edx],
        GuestCpuidPolicy {
            svm: vm.nested_svm,
            tsc_khz: vm.tsc.khz() as u32,
            x2apic: super::msr::X2APIC_EMULATED,
            // vCPU i has APIC ID i (`multi`); a single vCPU is vCPU 0.
            apic_id: crate::vmm::multi::current_vcpu(vm) as u8,
            hidden: vm.hidden_cpu,
        },
    );
    let [eax, ebx, ecx, edx] =
        svm::cpuid_filter::osxsave_from_cr4(leaf, [eax, ebx, ecx, edx], vcpu.vmcb.state.cr4);
    vcpu.vmcb.state.rax = u64::from(eax);
    vcpu.regs.rbx = u64::from(ebx);
    vcpu.regs.rcx = u64::from(ecx);
    vcpu.regs.rdx = u64::from(edx);
    rip::skip(vcpu, vm, host)
}
