//! A fresh guest's VMCB: the start state of [`svm::guest_abi`] and the
//! intercepts the hypervisor always keeps.

use super::vcpu::Vcpu;
use super::vm::Vm;
use svm::cr::{CR0_ET, CR0_MP, CR0_NE, CR0_PE, CR0_PG, CR0_WP, CR4_PAE};
use svm::guest_abi::{self, PARAMS_GPA, PML4_GPA};
use svm::msr::{EFER_LMA, EFER_LME, EFER_SVME, PAT_POWER_ON};
use svm::{ExceptionIntercepts, InterceptMisc1, InterceptMisc2, TlbControl, Vmcb, VmcbSegment};

/// V_INTR_MASKING (APM 15.21.1): the guest's RFLAGS.IF masks only virtual
/// interrupts; physical ones stay the host's.
const INT_CTL_V_INTR_MASKING: u64 = 1 << 24;
const NESTED_CTL_NP_ENABLE: u64 = 1;

/// Intercepts every guest gets, whatever else it asks for.
pub fn base_intercepts() -> (InterceptMisc1, InterceptMisc2, ExceptionIntercepts) {
    // INTR: the watchdog's interrupt must end any guest's run. NMI: a
    // physical NMI is the host's (the guest gets virtual ones, `svm::nmi`).
    let misc1 = InterceptMisc1::INTR
        | InterceptMisc1::NMI
        | InterceptMisc1::CPUID
        | InterceptMisc1::HLT
        | InterceptMisc1::IOIO_PROT
        | InterceptMisc1::MSR_PROT
        | InterceptMisc1::SHUTDOWN
        | InterceptMisc1::INVLPGA;
    // LTR: emulated with the CPU's checks (exits/tr.rs).
    let misc1 = misc1 | InterceptMisc1::TR_WRITE;
    // VMRUN must be intercepted or VMRUN fails (APM 15.5.1); the rest of the
    // SVM instructions would act on host state.
    let misc2 = InterceptMisc2::VMRUN
        | InterceptMisc2::VMMCALL
        | InterceptMisc2::VMLOAD
        | InterceptMisc2::VMSAVE
        | InterceptMisc2::STGI
        | InterceptMisc2::CLGI
        | InterceptMisc2::SKINIT;
    // #AC and #DB: each delivery exits, so an #AC-on-#AC or #DB-on-#DB
    // loop (CVE-2015-5307/8104) runs through L0 and cannot lock the CPU.
    // A machine check is the host's business, never the guest's.
    (misc1, misc2, svm::exception::L0_EXCEPTIONS)
}

/// Prepares `vcpu` to start `vm`'s guest at `entry` in 64-bit mode.
pub fn init_vmcb(vcpu: &mut Vcpu, vm: &Vm, entry: u64) {
    let vmcb: &mut Vmcb = &mut vcpu.vmcb;
    *vmcb = Vmcb::new();
    let (misc1, misc2, exceptions) = base_intercepts();
    let c = &mut vmcb.control;
    c.intercept_misc1 = misc1.bits();
    c.intercept_misc2 = misc2.bits();
    c.intercept_exceptions = exceptions.bits();
    // CR0/CR3/CR4/CR8 and DR7 writes: emulated (exits/cr.rs, exits/dr.rs).
    c.intercept_cr = super::exits::cr::INTERCEPT_CR;
    c.intercept_dr = super::exits::dr::INTERCEPT_DR;
    c.iopm_base_pa = vm.iopm.phys();
    c.msrpm_base_pa = vm.msrpm.phys();
    c.guest_asid = 1;
    c.tlb_control = TlbControl::FlushAll.as_u8();
    c.int_ctl = INT_CTL_V_INTR_MASKING;
    c.nested_ctl = NESTED_CTL_NP_ENABLE;
    c.ncr3 = vm.npt.root();

    let s = &mut vmcb.state;
    guest_abi::load_start_segments(s);
    // A present, busy 64-bit TSS type; the guest never switches stacks through it.
    s.tr = VmcbSegment::new(0, 0x8b, 0x67, 0);
    s.cpl = 0;
    // EFER.SVME must be set in the guest EFER or VMRUN fails (APM 15.5.1);
    // the MSR intercept hides it from the guest.
    s.efer = EFER_LME | EFER_LMA | EFER_SVME;
    s.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    s.cr3 = PML4_GPA;
    s.cr4 = CR4_PAE;
    s.dr6 = 0xffff_0ff0;
    s.dr7 = 0x400;
    s.rflags = 0x2;
    s.rip = entry;
    s.rsp = vm.memory.size();
    s.rax = 0;
    s.g_pat = PAT_POWER_ON;

    vcpu.regs = Default::default();
    vcpu.regs.rdi = PARAMS_GPA;
    // The VM's TSC counts from its creation (seed 002).
    super::tsc::l1_offset_changed(vcpu, vm);
}

/// Writes the start page tables, GDT and start parameters into guest RAM.
pub fn write_start_state(vm: &mut Vm, test_name: &str) -> Result<(), &'static str> {
    let size = vm.memory.size();
    guest_abi::write_page_tables(vm.memory.bytes_mut());
    let params = guest_abi::StartParams::new(test_name, size);
    let len = core::mem::size_of::<guest_abi::StartParams>() as u64;
    let dst = vm
        .memory
        .slice_mut(PARAMS_GPA, len)
        .map_err(|_| "guest RAM too small for the start parameters")?;
    // SAFETY: StartParams is plain old data (repr(C) integers and bytes).
    let src =
        unsafe { core::slice::from_raw_parts(&params as *const _ as *const u8, len as usize) };
    dst.copy_from_slice(src);
    Ok(())
}

/// Prepares `vcpu` to start `vm`'s guest in the Multiboot entry state
/// (Multiboot spec 3.2): 32-bit protected mode, paging off, flat segments,
/// EAX = the boot loader magic, EBX = the info block. The rest is
/// [`init_vmcb`]'s (intercepts, NPT, TSC); GDTR and IDTR are left empty, as
/// the spec makes the OS load its own.
pub fn init_vmcb_multiboot(vcpu: &mut Vcpu, vm: &Vm, entry: &svm::multiboot::EntryState) {
    init_vmcb(vcpu, vm, u64::from(entry.eip));
    let s = &mut vcpu.vmcb.state;
    s.cs = entry.cs;
    s.ds = entry.data;
    s.es = entry.data;
    s.fs = entry.data;
    s.gs = entry.data;
    s.ss = entry.data;
    s.gdtr = VmcbSegment::new(0, 0, 0, 0);
    s.idtr = VmcbSegment::new(0, 0, 0, 0);
    // A present, busy 32-bit TSS type: VMRUN wants a usable TR.
    s.tr = VmcbSegment::new(0, 0x8b, 0x67, 0);
    // The guest sees EFER = 0; SVME is VMRUN's requirement (APM 15.5.1),
    // hidden by the MSR intercept.
    s.efer = entry.efer | EFER_SVME;
    s.cr0 = entry.cr0;
    s.cr3 = 0;
    s.cr4 = entry.cr4;
    s.rflags = entry.rflags;
    s.rax = u64::from(entry.eax);
    s.rsp = 0;
    vcpu.regs = Default::default();
    vcpu.regs.rbx = u64::from(entry.ebx);
}
