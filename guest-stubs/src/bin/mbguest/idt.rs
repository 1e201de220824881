//! The IDT: 256 stubs, 16 bytes apart. An exception (vectors 0-31) ends the
//! run inside the current check; an interrupt is counted per vector and
//! acknowledged (EOI) at the local APIC in its current mode.

use core::arch::asm;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::apic::Apic;
use crate::boot::CODE64;

core::arch::global_asm!(
    r#"
    .section .text
    .balign 16
    .global mb_isr_stubs
mb_isr_stubs:
    .set vec, 0
    .rept 256
    .balign 16
    /* Vectors that push an error code: 8, 10-14, 17, 21, 29, 30. */
    .if !(vec == 8 || (vec >= 10 && vec <= 14) || vec == 17 || vec == 21 || vec == 29 || vec == 30)
    pushq $0
    .endif
    pushq $vec
    jmp mb_isr_common
    .set vec, vec + 1
    .endr

mb_isr_common:
    /* Frame: vector, error code, RIP, CS, RFLAGS, RSP, SS (16-aligned + 8).
       Nine pushes realign the stack for the call. */
    pushq %rax
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    movq %rsp, %rdi
    call {handler}
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rax
    addq $16, %rsp
    iretq
    "#,
    handler = sym isr,
    options(att_syntax)
);

unsafe extern "C" {
    static mb_isr_stubs: [u8; 4096];
}

/// The stack as `mb_isr_common` leaves it.
#[repr(C)]
struct Frame {
    regs: [u64; 9],
    vector: u64,
    error: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
}

static COUNTS: [AtomicU32; 256] = [const { AtomicU32::new(0) }; 256];
/// The APIC is in x2APIC mode: EOI by MSR, else by MMIO.
pub static X2APIC: AtomicBool = AtomicBool::new(false);

extern "C" fn isr(frame: &Frame) {
    let v = frame.vector as usize;
    if v < 32 {
        crate::report::abort(format_args!(
            "exception {v} (error code {:#x}) at RIP {:#x}",
            frame.error, frame.rip
        ));
    }
    COUNTS[v].fetch_add(1, Ordering::SeqCst);
    // The spurious vector needs no EOI (Intel SDM 11.9, AMD APM 16.4.7);
    // everything else here came from the local APIC.
    if v != crate::apic::SPURIOUS_VECTOR as usize {
        if X2APIC.load(Ordering::SeqCst) {
            crate::apic::X2Apic.eoi();
        } else {
            crate::apic::XApic.eoi();
        }
    }
}

/// Interrupts taken at `vector` so far.
pub fn count(vector: u8) -> u32 {
    COUNTS[usize::from(vector)].load(Ordering::SeqCst)
}

/// Interrupts taken at vectors other than `expected`.
pub fn strays(expected: &[u8]) -> Option<(u8, u32)> {
    (32..=255u8)
        .filter(|v| !expected.contains(v))
        .map(|v| (v, count(v)))
        .find(|&(_, n)| n > 0)
}

#[repr(C, align(16))]
struct Idt([u64; 512]);

static mut IDT: Idt = Idt([0; 512]);

/// Fills and loads the IDT. Interrupts stay off.
pub fn init() {
    // The stubs are code in this image, 16 bytes each.
    let stubs = (&raw const mb_isr_stubs) as u64;
    let idt = &raw mut IDT;
    for v in 0..256 {
        let addr = stubs + 16 * v as u64;
        // 64-bit interrupt gate, DPL 0, present (APM vol. 2, 4.8.4).
        let low = (addr & 0xFFFF)
            | (u64::from(CODE64) << 16)
            | (0x8E << 40)
            | ((addr >> 16) & 0xFFFF) << 48;
        // SAFETY: one CPU, interrupts off, IDT not loaded yet.
        unsafe {
            (*idt).0[2 * v] = low;
            (*idt).0[2 * v + 1] = addr >> 32;
        }
    }
    let mut ptr = [0u16; 5];
    ptr[0] = (core::mem::size_of::<Idt>() - 1) as u16;
    let base = idt as u64;
    ptr[1] = base as u16;
    ptr[2] = (base >> 16) as u16;
    ptr[3] = (base >> 32) as u16;
    ptr[4] = (base >> 48) as u16;
    // SAFETY: the table is static and filled.
    unsafe { asm!("lidt [{}]", in(reg) ptr.as_ptr(), options(nostack, readonly)) };
}

/// Runs `f` with interrupts enabled (an interrupt may arrive at any point).
pub fn with_interrupts<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: the IDT is loaded; the PIC is masked, so only the local APIC
    // can interrupt.
    unsafe { asm!("sti", options(nomem, nostack)) };
    let r = f();
    // SAFETY: back to interrupts off.
    unsafe { asm!("cli", options(nomem, nostack)) };
    r
}

/// `sti; hlt`: waits for an interrupt (the STI shadow covers HLT, so one
/// pending already wakes it), then interrupts off again.
pub fn wait_for_interrupt() {
    // SAFETY: as for with_interrupts; an interrupt ends the HLT.
    unsafe { asm!("sti; hlt; cli", options(nomem, nostack)) };
}
