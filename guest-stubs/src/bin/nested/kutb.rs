//! Nested tests for kvm-unit-tests subtests that failed under L0 (ISSUE
//! 10): each L2 payload here is its own entry point; it leaves what it
//! saw in `SEEN` and yields with HLT.

use crate::l1::{self, Regs};
use crate::run_expect;
use core::arch::asm;
use core::sync::atomic::Ordering;
use guest_stubs::check_eq;
use guest_stubs::privileged as p;
use svm::{ExitCode, InterceptMisc1};

// The payloads' slots and yield are the hardening tests' (one VM per test).
use crate::hardening::{put, seen, yield_forever, SEEN};

/// A fresh vmcb12 for `entry`.
fn setup(entry: extern "C" fn() -> !) -> Regs {
    l1::enable_svm();
    SEEN.iter().for_each(|s| s.store(0, Ordering::SeqCst));
    l1::prepare(entry);
    Regs::default()
}

const CR0_MP: u64 = 1 << 1;

extern "C" fn lmsw_mp() -> ! {
    let cr0 = p::read_cr(0);
    p::lmsw((cr0 | CR0_MP) as u16);
    put(0, 1);
    p::lmsw(cr0 as u16);
    put(1, 1);
    yield_forever()
}

/// kvm-unit-tests sel_cr0_lmsw_intercept: L1's selective CR0 write
/// intercept catches LMSW whatever it writes (APM Table 15-7), here a
/// write of MP only, which MOV to CR0 would pass; then an LMSW that
/// changes nothing. L2's CR0 is left as it was.
pub fn l2_lmsw_selective_cr0() {
    let mut regs = setup(lmsw_mp);
    let v = l1::vmcb();
    v.state.cr0 &= !CR0_MP;
    v.control.intercept_misc1 |= InterceptMisc1::CR0_SEL_WRITE.bits();
    run_expect(&mut regs, ExitCode::Cr0SelWrite);
    check_eq!(seen(0), 0, "L2 went past LMSW setting MP");
    check_eq!(l1::vmcb().state.cr0 & CR0_MP, 0, "vmcb12 CR0.MP");
    // Skip the first LMSW (3 bytes): the second writes the same MSW.
    l1::vmcb().state.rip += 3;
    run_expect(&mut regs, ExitCode::Cr0SelWrite);
    check_eq!(
        (seen(0), seen(1)),
        (1, 0),
        "L2's progress at the second LMSW"
    );
}

core::arch::global_asm!(
    ".global kutb_shadow_entry",
    "kutb_shadow_entry:",
    "nop",
    "nop",
    "2: hlt",
    "jmp 2b",
);

core::arch::global_asm!(
    ".global kutb_shadow_cpuid_entry",
    "kutb_shadow_cpuid_entry:",
    "cpuid",
    "nop",
    "2: hlt",
    "jmp 2b",
);

unsafe extern "C" {
    safe fn kutb_shadow_entry() -> !;
    safe fn kutb_shadow_cpuid_entry() -> !;
}

/// kvm-unit-tests virq_inject_within_shadow: vmcb12 starts L2 in an
/// interrupt shadow with IF set and V_IRQ pending (V_INTR_MASKING): the
/// first instruction runs in the shadow, the interrupt is taken before the
/// second one (APM 15.21.2, 15.20: the shadow holds off virtual
/// interrupts too), and the #VMEXIT shows the shadow gone and V_IRQ taken.
pub fn l2_virq_within_shadow() {
    // A NOP in the shadow; then CPUID, which L0 emulates (the shadow ends
    // with it: V_IRQ is taken before the NOP after it).
    virq_within_shadow(kutb_shadow_entry, 1);
    virq_within_shadow(kutb_shadow_cpuid_entry, 2);
}

fn virq_within_shadow(entry_fn: extern "C" fn() -> !, first_len: u64) {
    const V_IRQ: u64 = 1 << 8;
    const V_INTR_MASKING: u64 = 1 << 24;
    let mut regs = setup(entry_fn);
    let (idt, limit) = crate::l2::l2_idt();
    let v = l1::vmcb();
    v.state.idtr = svm::VmcbSegment::new(0, 0, limit, idt);
    v.state.rflags |= 1 << 9;
    v.control.int_ctl = V_INTR_MASKING | V_IRQ | 0xf << 16 | 0x30 << 32;
    v.control.interrupt_shadow = 1;
    run_expect(&mut regs, ExitCode::Hlt);
    let entry = entry_fn as *const () as u64;
    check_eq!(
        crate::l2::GOT_VECTOR.load(Ordering::SeqCst),
        0x30,
        "V_IRQ's vector taken by L2"
    );
    check_eq!(
        crate::l2::RETURN_RIP
            .load(Ordering::SeqCst)
            .wrapping_sub(entry),
        first_len,
        "return RIP - entry (the shadow covers one instruction)"
    );
    let c = &l1::vmcb().control;
    check_eq!(c.int_ctl & V_IRQ, 0, "vmcb12 V_IRQ after delivery");
    check_eq!(c.interrupt_shadow & 1, 0, "vmcb12 interrupt shadow");
}

extern "C" fn halt() -> ! {
    yield_forever()
}

/// L1 sets RFLAGS.TF just before VMRUN (a VMRUN, an L2 that halts): the
/// single-step #DB comes after the #VMEXIT, at the instruction after VMRUN,
/// with DR6.BS (APM 15.5.2; kvm-unit-tests host_rflags). Returns the trap
/// and the address after VMRUN.
fn vmrun_with_tf() -> (Option<guest_stubs::exceptions::Fault>, u64) {
    let mut after = 0u64;
    let vmcb = &raw mut l1::VMCB12 as u64;
    let trap = guest_stubs::exceptions::catch_trap(|| {
        // SAFETY: VMRUN is emulated by L0; L2 only halts (L1 intercepts
        // HLT), so no general register changes but RAX (restored by the
        // #VMEXIT); the callee-saved ones are kept by hand all the same.
        unsafe {
            asm!(
                "push rbx", "push rbp", "push r12", "push r13", "push r14", "push r15",
                "lea rsi, [rip + 2f]",
                "clgi",
                "pushfq",
                "or qword ptr [rsp], 0x100",
                "popfq",
                "vmrun rax",
                "2:",
                "stgi",
                "pop r15", "pop r14", "pop r13", "pop r12", "pop rbp", "pop rbx",
                out("rsi") after,
                inout("rax") vmcb => _,
                clobber_abi("C"),
            );
        }
    });
    (trap, after)
}

/// kvm-unit-tests host_rflags: TF set at L1's VMRUN traps after the
/// #VMEXIT, not one instruction later.
pub fn vmrun_tf_traps_after_vmexit() {
    let _ = setup(halt);
    let (trap, after) = vmrun_with_tf();
    check_eq!(
        ExitCode::from_raw(l1::vmcb().control.exit_code),
        ExitCode::Hlt,
        "L2's exit"
    );
    let Some(trap) = trap else {
        guest_stubs::verdict::fail(format_args!("no #DB after VMRUN with TF"));
    };
    check_eq!(trap.vector, 1, "vector after VMRUN with TF");
    check_eq!(trap.dr6 & (1 << 14), 1 << 14, "DR6.BS");
    check_eq!(
        guest_stubs::exceptions::last_rip(),
        after,
        "the #DB's RIP (the instruction after VMRUN)"
    );
}

/// kvm-unit-tests host_rflags (RF stage): an instruction breakpoint on
/// L1's VMRUN faults before it (#DB, DR6.B0, VMRUN not run); L1's handler
/// skips the VMRUN here. With RF set, the breakpoint is passed over.
pub fn vmrun_instruction_breakpoint() {
    let _ = setup(halt);
    let vmcb = &raw mut l1::VMCB12 as u64;
    let vmrun = || {
        // SAFETY: as in vmrun_with_tf; a #DB fault on VMRUN is skipped by
        // the handler (3 bytes), then STGI runs.
        unsafe {
            asm!(
                "push rbx", "push rbp", "push r12", "push r13", "push r14", "push r15",
                "lea rsi, [rip + 2f]",
                "mov dr0, rsi",
                "mov rsi, 0x401",
                "mov dr7, rsi",
                "clgi",
                "2:",
                "vmrun rax",
                "stgi",
                "mov rsi, 0x400",
                "mov dr7, rsi",
                "pop r15", "pop r14", "pop r13", "pop r12", "pop rbp", "pop rbx",
                inout("rax") vmcb => _,
                clobber_abi("C"),
            );
        }
    };
    l1::vmcb().control.exit_code = 0x1234;
    let fault = guest_stubs::exceptions::catch(3, vmrun);
    check_eq!(
        fault.map(|f| (f.vector, f.dr6 & 0xf)),
        Some((1, 1)),
        "the #DB at VMRUN (vector, DR6.B0-B3)"
    );
    check_eq!(
        l1::vmcb().control.exit_code,
        0x1234,
        "vmcb12 exit code (VMRUN ran)"
    );
}

const CR4_OSXSAVE: u64 = 1 << 18;

fn cpuid_osxsave() -> u64 {
    u64::from(guest_stubs::cpu::cpuid(1, 0)[2] >> 27 & 1)
}

extern "C" fn osxsave_off() -> ! {
    p::write_cr4(p::read_cr(4) & !CR4_OSXSAVE);
    put(0, cpuid_osxsave() | 0x10);
    yield_forever()
}

/// kvm-unit-tests svm_cr4_osxsave_test: with XSAVE shown, CPUID.1:ECX.
/// OSXSAVE is the CR4.OSXSAVE of whoever runs CPUID: L1 sets it, L2 clears
/// its own, L1's is back after the #VMEXIT.
pub fn cpuid_osxsave_follows_cr4() {
    let xsave = guest_stubs::cpu::cpuid(1, 0)[2] & (1 << 26) != 0;
    check_eq!(xsave, true, "CPUID.1:ECX.XSAVE (QEMU -cpu +xsave)");
    let cr4 = p::read_cr(4);
    p::write_cr4(cr4 | CR4_OSXSAVE);
    check_eq!(cpuid_osxsave(), 1, "L1's OSXSAVE with CR4.OSXSAVE set");
    let mut regs = setup(osxsave_off);
    l1::vmcb().state.cr4 = cr4 | CR4_OSXSAVE;
    run_expect(&mut regs, ExitCode::Hlt);
    check_eq!(seen(0), 0x10, "L2's OSXSAVE after clearing its CR4 bit");
    check_eq!(l1::vmcb().state.cr4 & CR4_OSXSAVE, 0, "vmcb12 CR4.OSXSAVE");
    check_eq!(cpuid_osxsave(), 1, "L1's OSXSAVE after the #VMEXIT");
    p::write_cr4(cr4 & !CR4_OSXSAVE);
    check_eq!(cpuid_osxsave(), 0, "L1's OSXSAVE with CR4.OSXSAVE clear");
    p::write_cr4(cr4);
}
