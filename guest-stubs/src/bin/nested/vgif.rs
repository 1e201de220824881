//! Nested VGIF (issue 11 item 4): L1 is offered VGIF and runs its L2 with
//! V_GIF_ENABLE (APM Vol. 2, 15.33). L2's STGI/CLGI then set and clear
//! V_GIF without an exit (unless L1 intercepts them), V_GIF is in vmcb12
//! at every #VMEXIT, and L2's virtual interrupts wait for its V_GIF.
//! Each L2 payload is its own entry point; it leaves what it saw in
//! `SEEN` and yields with HLT.

use crate::hardening::{put, seen, yield_forever, SEEN};
use crate::l1::{self, Regs};
use crate::run_expect;
use core::arch::asm;
use core::sync::atomic::Ordering;
use guest_stubs::cpu::cpuid;
use guest_stubs::exceptions::interrupts_taken;
use guest_stubs::hypercall::call;
use guest_stubs::{check, check_eq};
use svm::{ExitCode, IntCtl, InterceptMisc1, InterceptMisc2};

const V_GIF: u64 = IntCtl::V_GIF.bits();
const V_GIF_ENABLE: u64 = IntCtl::V_GIF_ENABLE.bits();
const V_INTR_MASKING: u64 = IntCtl::V_INTR_MASKING.bits();

/// CPUID Fn8000_000A_EDX\[VGIF\] is set (the self-tests run on a host
/// with VGIF: QEMU's `+vgif`), then a fresh vmcb12 for `entry` with
/// V_GIF_ENABLE and `v_gif`, VMMCALL intercepted.
fn setup(entry: extern "C" fn() -> !, v_gif: bool) -> Regs {
    check!(
        cpuid(0x8000_000A, 0)[3] & (1 << 16) != 0,
        "VGIF not offered to L1 (CPUID 0x8000000A EDX[16])"
    );
    l1::enable_svm();
    SEEN.iter().for_each(|s| s.store(0, Ordering::SeqCst));
    l1::prepare(entry);
    let c = &mut l1::vmcb().control;
    c.intercept_misc2 |= InterceptMisc2::VMMCALL.bits();
    c.int_ctl = V_INTR_MASKING | V_GIF_ENABLE | if v_gif { V_GIF } else { 0 };
    Regs::default()
}

/// vmcb12's V_GIF.
fn v_gif() -> bool {
    l1::vmcb().control.int_ctl & V_GIF != 0
}

/// L0's exits with `code` so far.
fn l0_exits(code: ExitCode) -> u64 {
    call(svm::guest_abi::HC_EXIT_COUNT, code.to_raw(), 0, 0)
}

core::arch::global_asm!(
    ".global nvgif_stgi_clgi_entry",
    "nvgif_stgi_clgi_entry:",
    "vmmcall",
    "clgi",
    "vmmcall",
    "stgi",
    "vmmcall",
    "clgi",
    "stgi",
    "2: hlt",
    "jmp 2b",
);

core::arch::global_asm!(
    ".global nvgif_no_svme_entry",
    "nvgif_no_svme_entry:",
    "mov ecx, 0xc0000080",
    "rdmsr",
    "and eax, 0xffffefff",
    "wrmsr",
    "clgi",
    "2: hlt",
    "jmp 2b",
);

core::arch::global_asm!(
    ".global nvgif_virq_entry",
    "nvgif_virq_entry:",
    "nop",
    "nop",
    "vmmcall",
    "stgi",
    "mov ecx, 1000",
    "3: loop 3b",
    // Reached only if V_IRQ was not taken after STGI.
    "vmmcall",
    "2: hlt",
    "jmp 2b",
);

unsafe extern "C" {
    safe fn nvgif_stgi_clgi_entry() -> !;
    safe fn nvgif_no_svme_entry() -> !;
    safe fn nvgif_virq_entry() -> !;
}

/// L2 runs with V_GIF_ENABLE: its CLGI and STGI do not exit to L1 (nor
/// to L0 for CLGI: the CPU runs them on V_GIF) and L1 finds
/// V_GIF as L2 left it at each VMMCALL exit. Then L1 intercepts CLGI: it
/// gets the exit and V_GIF stays. Then an L2 that clears its own
/// EFER.SVME gets #UD for CLGI (APM 15.4), not a V_GIF change.
pub fn nested_vgif_stgi_clgi() {
    let mut regs = setup(nvgif_stgi_clgi_entry, true);
    let clgi0 = l0_exits(ExitCode::Clgi);
    run_expect(&mut regs, ExitCode::Vmmcall);
    check!(v_gif(), "vmcb12 V_GIF at the first exit (L1 set it)");
    let (_, code) = l1::skip_and_run(&mut regs);
    check_eq!(
        ExitCode::from_raw(code),
        ExitCode::Vmmcall,
        "exit after L2's CLGI"
    );
    check!(!v_gif(), "vmcb12 V_GIF after L2's CLGI");
    let (_, code) = l1::skip_and_run(&mut regs);
    check_eq!(
        ExitCode::from_raw(code),
        ExitCode::Vmmcall,
        "exit after L2's STGI"
    );
    check!(v_gif(), "vmcb12 V_GIF after L2's STGI");
    check!(
        l1::vmcb().control.int_ctl & V_GIF_ENABLE != 0,
        "vmcb12 V_GIF_ENABLE kept"
    );
    // L1's own CLGI never exits with VGIF, so any CLGI exit is L2's.
    check_eq!(l0_exits(ExitCode::Clgi) - clgi0, 0, "L0 CLGI exits");

    // L1 intercepts CLGI (its intercept wins): the next CLGI exits to L1,
    // V_GIF untouched; L1 skips it, and STGI still runs on V_GIF.
    l1::vmcb().control.intercept_misc2 |= InterceptMisc2::CLGI.bits();
    let (_, code) = l1::skip_and_run(&mut regs);
    check_eq!(
        ExitCode::from_raw(code),
        ExitCode::Clgi,
        "L1's CLGI intercept"
    );
    check!(v_gif(), "vmcb12 V_GIF after an intercepted CLGI");
    l1::vmcb().control.int_ctl &= !V_GIF;
    let (_, code) = l1::skip_and_run(&mut regs);
    check_eq!(ExitCode::from_raw(code), ExitCode::Hlt, "L2's yield");
    check!(v_gif(), "vmcb12 V_GIF after L2's STGI (L1 had cleared it)");

    // L2 without EFER.SVME: CLGI is #UD (L1 intercepts #UD), V_GIF stays.
    let mut regs = setup(nvgif_no_svme_entry, true);
    l1::vmcb().control.intercept_exceptions |= 1 << 6;
    run_expect(&mut regs, ExitCode::Exception(6));
    check!(v_gif(), "vmcb12 V_GIF after CLGI without SVME");
}

/// A virtual interrupt (V_IRQ, vector 0x30) for an L2 with IF set waits
/// while L2's V_GIF is 0 (APM 15.33.2): L2 reaches its VMMCALL with it
/// still pending; L2's STGI lets it in at once.
pub fn nested_vgif_holds_virq() {
    let mut regs = setup(nvgif_virq_entry, false);
    let (idt, limit) = crate::l2::l2_idt();
    let v = l1::vmcb();
    v.state.idtr = svm::VmcbSegment::new(0, 0, limit, idt);
    v.state.rflags |= 1 << 9;
    v.control.int_ctl |= IntCtl::V_IRQ
        .with_v_intr_prio(0xf)
        .with_v_intr_vector(0x30)
        .bits();
    run_expect(&mut regs, ExitCode::Vmmcall);
    let got = || crate::l2::GOT_VECTOR.load(Ordering::SeqCst);
    check_eq!(got(), 0, "vector taken by L2 while its V_GIF was 0");
    let c = &l1::vmcb().control;
    check!(
        c.int_ctl & IntCtl::V_IRQ.bits() != 0,
        "vmcb12 V_IRQ still pending"
    );
    check!(!v_gif(), "vmcb12 V_GIF before L2's STGI");
    let (_, code) = l1::skip_and_run(&mut regs);
    check_eq!(
        ExitCode::from_raw(code),
        ExitCode::Hlt,
        "L2's exit after STGI (VMMCALL: V_IRQ never taken)"
    );
    check_eq!(got(), 0x30, "vector taken by L2 after its STGI");
    let c = &l1::vmcb().control;
    check_eq!(
        c.int_ctl & IntCtl::V_IRQ.bits(),
        0,
        "vmcb12 V_IRQ after delivery"
    );
    check!(v_gif(), "vmcb12 V_GIF after L2's STGI");
}

extern "C" fn clgi_then_queue() -> ! {
    // SAFETY: CLGI on L2's V_GIF (L1 does not intercept it).
    unsafe { asm!("clgi", options(nomem, nostack)) };
    // L0 queues it and ends L2's run before L2 resumes: neither store
    // below happens unless the interrupt is held.
    put(1, call(svm::guest_abi::HC_QUEUE_INTERRUPT, 0x41, 0, 0) + 1);
    for _ in 0..100_000 {
        SEEN[0].fetch_add(1, Ordering::SeqCst);
    }
    yield_forever()
}

/// L2's V_GIF masks only L2's virtual interrupts: with V_GIF 0, an
/// interrupt L0 holds for L1 (L1 intercepts INTR, its IF was set at
/// VMRUN) still ends L2's run at once, as a physical one on a real CPU.
/// L1's own GIF is its own: its STGI after VMRUN lets the interrupt in,
/// whatever V_GIF L2 left in vmcb12.
pub fn nested_vgif_l1_interrupt_not_held() {
    let mut regs = setup(clgi_then_queue, true);
    let c = &mut l1::vmcb().control;
    c.intercept_misc1 |= InterceptMisc1::INTR.bits();
    // L2's hypercall is L0's.
    c.intercept_misc2 &= !InterceptMisc2::VMMCALL.bits();
    // SAFETY: the runtime IDT counts vector 0x41; L1 takes interrupts now.
    unsafe { asm!("sti", options(nomem, nostack)) };
    let (_, code) = l1::run(&mut regs);
    // SAFETY: back to interrupts off.
    unsafe { asm!("cli", options(nomem, nostack)) };
    check_eq!(ExitCode::from_raw(code), ExitCode::Intr, "L2's exit");
    check_eq!(
        (seen(1), seen(0)),
        (0, 0),
        "L2's progress after queueing (the exit must come first)"
    );
    check!(!v_gif(), "vmcb12 V_GIF (L2's CLGI)");
    check_eq!(
        interrupts_taken(0x41),
        1,
        "interrupt 0x41 in L1 after its STGI"
    );
}
