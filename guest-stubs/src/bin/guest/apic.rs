//! `guest::lapic_*` and `guest::x2apic_*`: the local APIC L0 emulates,
//! driven as kvm-unit-tests' lib/x86/apic.c drives it (32-bit MMIO at
//! 0xFEE0_0000, the x2APIC MSRs), with the runtime IDT counting vectors.

use core::arch::asm;
use guest_stubs::cpu::{rdmsr, wrmsr};
use guest_stubs::exceptions::{catch, interrupts_taken};
use guest_stubs::hypercall::call;
use guest_stubs::lapic::{self, bit, read, safe_halt, sti_nop_cli, write, BASE, MSR_APIC_BASE};
use guest_stubs::{check, check_eq, unbacked, StartParams};
use svm::guest_abi::{HC_ECHO_SUM, HC_NOW_NS, HC_WAIT_PIT_US};

const ID: u32 = 0x20;
const LVR: u32 = 0x30;
const TPR: u32 = 0x80;
const PPR: u32 = 0xA0;
const EOI: u32 = 0xB0;
const SPIV: u32 = 0xF0;
const ISR: u32 = 0x100;
const IRR: u32 = 0x200;
const ICR: u32 = 0x300;
const LVTT: u32 = 0x320;
const TMICT: u32 = 0x380;
const TMCCT: u32 = 0x390;
const TDCR: u32 = 0x3E0;
/// ICR destination shorthand "self".
const SELF: u32 = 1 << 18;
/// IA32_APIC_BASE at reset: 0xFEE0_0000, enabled, BSP.
const RESET_BASE: u64 = 0xFEE0_0900;

fn now_ns() -> u64 {
    call(HC_NOW_NS, 0, 0, 0)
}

/// Exits to L0 and back a few times with interrupts open after each.
fn a_few_exits() {
    for _ in 0..3 {
        call(HC_ECHO_SUM, 0, 0, 0);
        sti_nop_cli();
    }
}

/// ID and version through the page, narrow and wide loads, SPIV.
pub fn mmio_id_version(_: &StartParams) {
    check_eq!(rdmsr(MSR_APIC_BASE), RESET_BASE, "IA32_APIC_BASE at reset");
    lapic::map();
    check_eq!(read(ID), 0, "APIC ID");
    check_eq!(read(LVR), 0x0005_0014, "version register");
    check_eq!(read(SPIV), 0xFF, "SPIV at reset");
    // SAFETY: the APIC page; L0 emulates the byte load and the MOVZX.
    let (max_lvt, movzx) = unsafe {
        let b = core::ptr::read_volatile((BASE + 0x32) as *const u8);
        let z: u32;
        asm!("movzx {0:e}, word ptr [{1}]", out(reg) z, in(reg) BASE + 0x30, options(nostack, readonly));
        (b, z)
    };
    check_eq!(max_lvt, 5, "byte 2 of the version register");
    check_eq!(movzx, 0x14, "MOVZX of the version's low word");
    lapic::enable();
    check_eq!(read(SPIV), 0x1FF, "SPIV after enabling");
}

/// `timer_one_shot`'s count: 40 ms of the 1 GHz input at divide-by-128.
const ONE_SHOT_COUNT: u32 = 312_500;

/// One-shot timer at divide-by-128: 312500 counts are 40 ms of the 1 GHz
/// input; HLT waits for it, it fires once, ISR holds it until EOI.
pub fn timer_one_shot(_: &StartParams) {
    lapic::map();
    lapic::enable();
    // Divide by 128, 40 ms: a timer that ignored the divider would end
    // after 0.3 ms, which no host delay stretches to 40.
    write(TDCR, 0xA);
    write(LVTT, 0x40);
    let before = interrupts_taken(0x40);
    let t0 = now_ns();
    write(TMICT, ONE_SHOT_COUNT);
    // Counting down (a loaded host may take long between the two).
    let count = read(TMCCT);
    check!(
        count < ONE_SHOT_COUNT,
        "TMCCT {count} right after arming {ONE_SHOT_COUNT}"
    );
    safe_halt();
    let waited = now_ns() - t0;
    check_eq!(
        interrupts_taken(0x40) - before,
        1,
        "timer interrupts after HLT"
    );
    check!(
        waited >= 40_000_000,
        "woken after {waited} ns; {ONE_SHOT_COUNT} counts at divide-by-128 are 40 ms"
    );
    check_eq!(read(TMCCT), 0, "TMCCT after expiry");
    check!(bit(ISR, 0x40), "vector 0x40 in service");
    write(EOI, 0);
    check!(!bit(ISR, 0x40), "vector 0x40 in service after EOI");
    a_few_exits();
    check_eq!(
        interrupts_taken(0x40) - before,
        1,
        "one-shot: one interrupt"
    );
}

/// Periodic timer: three expiries 2 ms apart, each ended by EOI; TMICT 0
/// stops it.
pub fn timer_periodic(_: &StartParams) {
    lapic::map();
    lapic::enable();
    write(TDCR, 0xB);
    write(LVTT, 0x41 | (1 << 17));
    let before = interrupts_taken(0x41);
    let t0 = now_ns();
    write(TMICT, 2_000_000);
    for i in 1..=3 {
        safe_halt();
        check_eq!(interrupts_taken(0x41) - before, i, "periodic interrupts");
        write(EOI, 0);
    }
    let waited = now_ns() - t0;
    check!(waited >= 6_000_000, "three 2 ms periods in {waited} ns");
    check!(read(TMCCT) != 0, "TMCCT of a periodic timer after expiries");
    write(TMICT, 0);
    check_eq!(read(TMCCT), 0, "TMCCT after TMICT 0");
    // An expiry raised before the stop is still delivered; none after.
    sti_nop_cli();
    write(EOI, 0);
    let stopped = interrupts_taken(0x41);
    call(HC_WAIT_PIT_US, 5_000, 0, 0);
    a_few_exits();
    check_eq!(
        interrupts_taken(0x41),
        stopped,
        "interrupts 5 ms after stopping"
    );
}

/// A 1 us periodic timer (kvm-unit-tests arms one) runs at L0's 200 us
/// minimum period: 50 expiries, each awaited in HLT and ended by EOI, take
/// at least 49 periods.
pub fn timer_periodic_minimum(_: &StartParams) {
    lapic::map();
    lapic::enable();
    write(TDCR, 0xB);
    write(LVTT, 0x46 | (1 << 17));
    let before = interrupts_taken(0x46);
    write(TMICT, 1000);
    safe_halt();
    write(EOI, 0);
    let t0 = now_ns();
    for _ in 0..50 {
        safe_halt();
        write(EOI, 0);
    }
    let took = now_ns() - t0;
    write(TMICT, 0);
    check_eq!(interrupts_taken(0x46) - before, 51, "periodic interrupts");
    check!(
        took >= 49 * 200_000,
        "50 expiries of a 1 us periodic timer in {took} ns (minimum period 200 us)"
    );
}

/// TPR masks a self-IPI's class; PPR follows TPR and ISR; EOI ends the
/// highest in-service vector first; CR8 is TPR's priority class.
pub fn tpr_eoi(_: &StartParams) {
    lapic::map();
    lapic::enable();
    write(TPR, 0x60);
    write(ICR, SELF | 0x52);
    sti_nop_cli();
    check_eq!(interrupts_taken(0x52), 0, "0x52 taken with TPR 0x60");
    check!(bit(IRR, 0x52), "0x52 waits in IRR");
    check_eq!(read(PPR), 0x60, "PPR with TPR 0x60");
    write(TPR, 0);
    sti_nop_cli();
    check_eq!(interrupts_taken(0x52), 1, "0x52 taken with TPR 0");
    check_eq!(read(PPR), 0x50, "PPR with 0x52 in service");
    // A higher class preempts: both in service.
    write(ICR, SELF | 0x61);
    sti_nop_cli();
    check_eq!(interrupts_taken(0x61), 1, "0x61 taken over 0x52");
    check!(bit(ISR, 0x52) && bit(ISR, 0x61), "0x52 and 0x61 in service");
    write(EOI, 0);
    check!(
        bit(ISR, 0x52) && !bit(ISR, 0x61),
        "after one EOI: 0x61 ended, 0x52 still in service"
    );
    write(EOI, 0);
    check!(!bit(ISR, 0x52), "0x52 in service after the second EOI");
    check_eq!(read(PPR), 0, "PPR with nothing in service");
    // MOV CR8 sets TPR bits 7:4.
    // SAFETY: CR8 is the task priority; L0 intercepts and emulates it.
    unsafe { asm!("mov cr8, {}", in(reg) 6u64, options(nomem, nostack)) };
    check_eq!(read(TPR), 0x60, "TPR after MOV CR8, 6");
    write(ICR, SELF | 0x53);
    sti_nop_cli();
    check_eq!(interrupts_taken(0x53), 0, "0x53 taken with CR8 6");
    // SAFETY: as above.
    unsafe { asm!("mov cr8, {}", in(reg) 0u64, options(nomem, nostack)) };
    sti_nop_cli();
    check_eq!(interrupts_taken(0x53), 1, "0x53 taken with CR8 0");
    write(EOI, 0);
}

/// xAPIC -> x2APIC, the MSR registers, a self-IPI by SELF_IPI (0x83F)
/// held until STI, the x2APIC #GP rules; x2APIC -> xAPIC is #GP,
/// x2APIC -> disabled -> xAPIC resets the APIC.
pub fn x2apic_self_ipi(_: &StartParams) {
    check!(
        guest_stubs::cpu::cpuid(1, 0)[2] & (1 << 21) != 0,
        "CPUID.1:ECX.x2APIC clear"
    );
    lapic::map();
    let base = rdmsr(MSR_APIC_BASE);
    check_eq!(base, RESET_BASE, "IA32_APIC_BASE");
    wrmsr(MSR_APIC_BASE, base | (1 << 10));
    check_eq!(
        rdmsr(MSR_APIC_BASE),
        base | (1 << 10),
        "APIC base with EXTD"
    );
    check_eq!(rdmsr(0x802), 0, "x2APIC ID");
    check_eq!(rdmsr(0x803), 0x0005_0014, "x2APIC version");
    wrmsr(0x80F, 0x1FF);
    let before = interrupts_taken(0x42);
    wrmsr(0x83F, 0x42);
    check_eq!(
        interrupts_taken(0x42),
        before,
        "self-IPI taken with IF clear"
    );
    sti_nop_cli();
    check_eq!(interrupts_taken(0x42), before + 1, "self-IPI after STI");
    check_eq!(rdmsr(0x810 + 2) & (1 << 2), 1 << 2, "0x42 in ISR");
    wrmsr(0x80B, 0);
    check_eq!(rdmsr(0x812), 0, "ISR word 2 after EOI");
    // #GP: DFR is gone, ID is read-only, EOI takes only 0, TPR's high half.
    let gp = |f: &dyn Fn()| catch(2, f).map(|f| f.vector);
    check_eq!(
        gp(&|| {
            rdmsr(0x80E);
        }),
        Some(13),
        "RDMSR DFR"
    );
    check_eq!(gp(&|| wrmsr(0x802, 1)), Some(13), "WRMSR ID");
    check_eq!(gp(&|| wrmsr(0x80B, 1)), Some(13), "WRMSR EOI 1");
    check_eq!(gp(&|| wrmsr(0x808, 1 << 32)), Some(13), "WRMSR TPR bit 32");
    check_eq!(
        gp(&|| {
            rdmsr(0x83F);
        }),
        Some(13),
        "RDMSR SELF_IPI"
    );
    // The page is no APIC in x2APIC mode.
    check_eq!(read(LVR), u32::MAX, "the page in x2APIC mode");
    check_eq!(
        gp(&|| wrmsr(MSR_APIC_BASE, base)),
        Some(13),
        "x2APIC -> xAPIC"
    );
    wrmsr(MSR_APIC_BASE, base & !(3 << 10));
    check_eq!(
        rdmsr(MSR_APIC_BASE),
        base & !(3 << 10),
        "APIC base, disabled"
    );
    check_eq!(
        gp(&|| {
            rdmsr(0x803);
        }),
        Some(13),
        "x2APIC MSR while disabled"
    );
    check_eq!(
        gp(&|| wrmsr(MSR_APIC_BASE, base | (1 << 10))),
        Some(13),
        "disabled -> x2APIC"
    );
    wrmsr(MSR_APIC_BASE, base);
    check_eq!(read(LVR), 0x0005_0014, "version through the page again");
    check_eq!(read(SPIV), 0xFF, "SPIV reset by the disable");
}

/// An instruction on the APIC page L0 does not emulate (ADD to memory)
/// and a fetch from the page: #UD in the guest, the VM runs on.
pub fn mmio_unemulated_ud(_: &StartParams) {
    lapic::map();
    let add = catch(3, || {
        // SAFETY: the #UD is expected and skipped (83 00 01: 3 bytes).
        unsafe {
            asm!("add dword ptr [rax], 1", in("rax") BASE + u64::from(TPR), options(nostack))
        };
    });
    check_eq!(add.map(|f| f.vector), Some(6), "ADD to the APIC page");
    check_eq!(read(TPR), 0, "TPR after the refused ADD");
    let fetch = unbacked::exec_at(BASE + 0x10);
    check_eq!(
        fetch.map(|f| f.vector),
        Some(6),
        "a fetch from the APIC page"
    );
    check_eq!(read(LVR), 0x0005_0014, "the APIC after both");
}
