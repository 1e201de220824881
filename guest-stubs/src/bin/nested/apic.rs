//! `nested::l2_lapic_*`: L1's local APIC (emulated by L0) seen from L2.
//! L1 has no nested paging, so L2's physical space is L1's: an L2 access
//! to the APIC page reaches L1's APIC through L0's MMIO emulation, and the
//! APIC timer's interrupt ends L2's run with #VMEXIT(INTR) when L1
//! intercepts INTR.

use crate::l2::{self, Task};
use crate::{l1, run_expect, setup, ticks, SPIN_US};
use core::arch::asm;
use guest_stubs::exceptions::interrupts_taken;
use guest_stubs::lapic::{self, read, write};
use guest_stubs::{check, check_eq};
use svm::{ExitCode, InterceptMisc1};

/// L2 reads and writes the APIC page (MOVs L0 emulates); an ADD there is
/// #UD, which L1 intercepts.
pub fn l2_lapic_mmio() {
    lapic::map();
    let mut regs = setup(Task::ApicMmio, 0);
    run_expect(&mut regs, ExitCode::Hlt);
    check_eq!(l2::result(0), 0x0005_0014, "version read by L2");
    check_eq!(l2::result(1), 0, "APIC ID read by L2");
    check_eq!(l2::result(2), 0x20, "TPR written and read by L2");
    // One APIC: L2's TPR write is L1's TPR (and its CR8) after the exit.
    check_eq!(read(0x80), 0x20, "TPR seen by L1 after L2 wrote it");
    check_eq!(
        guest_stubs::privileged::read_cr8(),
        2,
        "L1's CR8 after L2 wrote TPR 0x20"
    );
    write(0x80, 0);
    let mut regs = setup(Task::ApicAdd, 0);
    l1::vmcb().control.intercept_exceptions |= 1 << 6;
    run_expect(&mut regs, ExitCode::Exception(6));
    check_eq!(l2::result(0), 0, "L2 went past the ADD");
    check_eq!(read(0x80), 0, "TPR after L2's refused ADD");
}

/// L1 arms a 1 ms one-shot timer and runs an L2 that spins 60 ms without
/// exits: with L1 intercepting INTR (V_INTR_MASKING, L1's IF set), the
/// expiry ends L2's run with #VMEXIT(INTR) and the interrupt reaches L1's
/// handler after its STGI.
pub fn l2_lapic_timer_exits_to_l1() {
    lapic::map();
    lapic::enable();
    write(0x3E0, 0xB);
    write(0x320, 0x40);
    let mut regs = setup(Task::SpinThenYield, ticks(SPIN_US));
    let v = l1::vmcb();
    v.control.intercept_misc1 |= InterceptMisc1::INTR.bits();
    v.control.int_ctl |= svm::IntCtl::V_INTR_MASKING.bits();
    let before = interrupts_taken(0x40);
    write(0x380, 1_000_000);
    // SAFETY: the runtime IDT counts vector 0x40; L1 takes interrupts now.
    unsafe { asm!("sti", options(nomem, nostack)) };
    let (_, code) = l1::run(&mut regs);
    // SAFETY: back to interrupts off.
    unsafe { asm!("cli", options(nomem, nostack)) };
    check_eq!(ExitCode::from_raw(code), ExitCode::Intr, "L2's exit");
    check_eq!(
        l2::result(0),
        0,
        "L2 finished its spin (no exit for the timer)"
    );
    check_eq!(interrupts_taken(0x40) - before, 1, "timer interrupts in L1");
    check!(lapic::bit(0x100, 0x40), "0x40 in service in L1's APIC");
    write(0xB0, 0);
}

/// Without V_INTR_MASKING, L2's IF masks L1's pending interrupt (a
/// self-IPI): L2 runs with IF clear until its STI, and the #VMEXIT(INTR)
/// comes right after the STI's shadow (an interrupt window L0 opens in
/// L2, as in kvm-unit-tests' svm_intr_intercept_mix_if). Five rounds: a
/// host timer tick between L2's STI and its HLT also ends the run with
/// #VMEXIT(INTR), window or not, which on a loaded host happens now and
/// then.
pub fn l2_lapic_intr_waits_for_l2_sti() {
    lapic::map();
    lapic::enable();
    for _ in 0..5 {
        intr_waits_for_l2_sti_once();
    }
}

fn intr_waits_for_l2_sti_once() {
    let mut regs = setup(Task::StiThenYield, 0);
    let v = l1::vmcb();
    v.control.intercept_misc1 |= InterceptMisc1::INTR.bits();
    v.control.int_ctl &= !svm::IntCtl::V_INTR_MASKING.bits();
    v.state.rflags &= !(1 << 9);
    let before = interrupts_taken(0x55);
    write(0x300, (1 << 18) | 0x55);
    let (_, code) = l1::run(&mut regs);
    check_eq!(ExitCode::from_raw(code), ExitCode::Intr, "L2's exit");
    check_eq!(l2::result(1), 1, "L2 ran with IF clear");
    check_eq!(l2::result(0), 0, "L2 went on after its STI");
    check_eq!(interrupts_taken(0x55), before, "0x55 in L1 with IF clear");
    lapic::sti_nop_cli();
    check_eq!(interrupts_taken(0x55), before + 1, "0x55 in L1 after STI");
    write(0xB0, 0);
}

/// L2's self-SMI ends its run with #VMEXIT(SMI) when L1 intercepts SMI;
/// without the intercept it is dropped (no SMM) and L2 goes on.
pub fn l2_lapic_smi_exits_to_l1() {
    lapic::map();
    lapic::enable();
    let mut regs = setup(Task::ApicSelfSmi, 0);
    l1::vmcb().control.intercept_misc1 |= InterceptMisc1::SMI.bits();
    run_expect(&mut regs, ExitCode::Smi);
    check_eq!(l2::result(0), 0, "L2 went on after its SMI");
    let mut regs = setup(Task::ApicSelfSmi, 0);
    run_expect(&mut regs, ExitCode::Hlt);
    check_eq!(l2::result(0), 1, "L2 after an SMI L1 does not intercept");
}
