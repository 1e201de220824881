//! The IDT: 32 exception gates whose stubs save every register into a
//! [`TrapFrame`] for a report that stops the machine (any exception is a
//! kernel bug, or a deliberate fault from the command line) — except a
//! physical NMI held since a guest's #VMEXIT(NMI), which the host takes
//! in the world switch and returns from; the watchdog
//! timer (0x20); the APIC's spurious vector (0xFF); and the remapped legacy
//! PICs' vectors (0xE0-0xEF), which only ever arrive spuriously.
//!
//! The kernel runs with interrupts off, except for the moment after an INTR
//! exit when it lets the pending interrupt in (`Vcpu::run`).

use super::gdt;
use core::fmt;

/// Registers saved by the stubs, then the CPU's interrupt frame.
#[repr(C)]
#[derive(Debug)]
#[allow(missing_docs)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

// One stub per vector: push a zero error code where the CPU pushes none, then
// the vector, then join the common path. AMD APM Vol. 2, 8.2 lists which
// vectors push an error code: 8, 10-14, 17, 21, 29, 30.
core::arch::global_asm!(
    r#"
    .section .text.isr, "ax"
    .macro ISR_NOERR n
    isr_\n:
        push 0
        push \n
        jmp isr_common
    .endm
    .macro ISR_ERR n
    isr_\n:
        push \n
        jmp isr_common
    .endm
    .irp n, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31
    ISR_NOERR \n
    .endr
    .irp n, 8,10,11,12,13,14,17,21,29,30
    ISR_ERR \n
    .endr

    isr_common:
        push rax
        push rbx
        push rcx
        push rdx
        push rsi
        push rdi
        push rbp
        push r8
        push r9
        push r10
        push r11
        push r12
        push r13
        push r14
        push r15
        mov rdi, rsp
        cld
        call {dispatch}
        pop r15
        pop r14
        pop r13
        pop r12
        pop r11
        pop r10
        pop r9
        pop r8
        pop rbp
        pop rdi
        pop rsi
        pop rdx
        pop rcx
        pop rbx
        pop rax
        add rsp, 16
        iretq

    # An interrupt handled in Rust: save what the SysV ABI lets a callee
    # clobber, call `target`, return to whatever was interrupted.
    .macro isr_calling target
        push rax
        push rcx
        push rdx
        push rsi
        push rdi
        push r8
        push r9
        push r10
        push r11
        cld
        call \target
        pop r11
        pop r10
        pop r9
        pop r8
        pop rdi
        pop rsi
        pop rdx
        pop rcx
        pop rax
        iretq
    .endm
    # The timer (watchdog).
    isr_timer:
        isr_calling {timer}
    # The mailbox's wake-up IPI (smp::mailbox): end it, nothing more; the
    # woken CPU looks at its mailbox after its HLT.
    isr_wake:
        isr_calling {wake}
    isr_spurious:
        iretq

    .section .rodata.isr_table, "a"
    .balign 8
    .global ISR_TABLE
    ISR_TABLE:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad isr_\n
    .endr
    .global ISR_TIMER
    ISR_TIMER:
    .quad isr_timer
    .global ISR_SPURIOUS
    ISR_SPURIOUS:
    .quad isr_spurious
    .global ISR_WAKE
    ISR_WAKE:
    .quad isr_wake
    "#,
    dispatch = sym exception_dispatch,
    timer = sym timer_interrupt,
    wake = sym wake_interrupt,
);

unsafe extern "C" {
    static ISR_TABLE: [u64; 32];
    static ISR_TIMER: u64;
    static ISR_SPURIOUS: u64;
    static ISR_WAKE: u64;
}

/// Vector of the IPI that wakes a CPU to look at its mailbox.
pub const WAKE_VECTOR: u8 = 0xf0;

extern "C" fn wake_interrupt() {
    crate::smp::this()
        .wakes
        .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    super::lapic::eoi();
}

/// Vector of the hypervisor's watchdog timer.
pub const TIMER_VECTOR: u8 = 0x20;

extern "C" fn timer_interrupt() {
    crate::time::tick();
    super::lapic::eoi();
}

/// A 16-byte long-mode interrupt gate.
#[derive(Clone, Copy)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    flags: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

impl Gate {
    const MISSING: Gate = Gate {
        offset_low: 0,
        selector: 0,
        ist: 0,
        flags: 0,
        offset_mid: 0,
        offset_high: 0,
        reserved: 0,
    };

    fn interrupt(handler: u64, selector: u16, ist: u16) -> Gate {
        Gate {
            offset_low: handler as u16,
            selector,
            ist: ist as u8,
            // Present, DPL 0, 64-bit interrupt gate (type 0xE): IF stays clear.
            flags: 0x8E,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

#[repr(C, align(16))]
struct Idt([Gate; 256]);

static mut IDT: Idt = Idt([Gate::MISSING; 256]);

/// Fills and loads the IDT.
pub fn init() {
    let selector = gdt::kernel_code_selector().0;
    // SAFETY: single-threaded boot; the table is written before it is loaded.
    let idt = unsafe { &mut *core::ptr::addr_of_mut!(IDT) };
    // SAFETY: ISR_TABLE is an immutable table of stub addresses.
    let stubs = unsafe { &ISR_TABLE };
    for (vector, &handler) in stubs.iter().enumerate() {
        let ist = match vector {
            2 => gdt::IST_NMI,
            8 => gdt::IST_DOUBLE_FAULT,
            18 => gdt::IST_MACHINE_CHECK,
            _ => 0,
        };
        idt.0[vector] = Gate::interrupt(handler, selector, ist);
    }
    // SAFETY: immutable stub addresses.
    let (timer, spurious, wake) = unsafe { (ISR_TIMER, ISR_SPURIOUS, ISR_WAKE) };
    idt.0[usize::from(TIMER_VECTOR)] = Gate::interrupt(timer, selector, 0);
    idt.0[usize::from(WAKE_VECTOR)] = Gate::interrupt(wake, selector, 0);
    idt.0[usize::from(super::lapic::SPURIOUS_VECTOR)] = Gate::interrupt(spurious, selector, 0);
    let pic = usize::from(super::pic::VECTOR_BASE);
    for gate in &mut idt.0[pic..pic + 16] {
        *gate = Gate::interrupt(spurious, selector, 0);
    }
    load();
}

/// Loads the IDT (filled by [`init`] on the boot CPU; application
/// processors share it: nothing writes it after).
pub fn load() {
    let ptr = x86_64::structures::DescriptorTablePointer {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: x86_64::VirtAddr::new(core::ptr::addr_of!(IDT) as u64),
    };
    // SAFETY: the IDT is static and holds valid gates.
    unsafe { x86_64::instructions::tables::lidt(&ptr) };
}

/// Architectural name of exception `vector`.
pub fn exception_name(vector: u64) -> &'static str {
    const NAMES: [&str; 32] = [
        "divide error",
        "debug",
        "non-maskable interrupt",
        "breakpoint",
        "overflow",
        "bound range exceeded",
        "invalid opcode",
        "device not available",
        "double fault",
        "coprocessor segment overrun",
        "invalid TSS",
        "segment not present",
        "stack fault",
        "general protection fault",
        "page fault",
        "reserved",
        "x87 floating-point",
        "alignment check",
        "machine check",
        "SIMD floating-point",
        "virtualization",
        "control protection",
        "reserved",
        "reserved",
        "reserved",
        "reserved",
        "reserved",
        "reserved",
        "hypervisor injection",
        "VMM communication",
        "security",
        "reserved",
    ];
    NAMES.get(vector as usize).copied().unwrap_or("unknown")
}

struct Report<'a>(&'a TrapFrame, u64);

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (t, cr2) = (self.0, self.1);
        writeln!(
            f,
            "EXCEPTION: {} (vector {}) error code {:#x}",
            exception_name(t.vector),
            t.vector,
            t.error_code
        )?;
        writeln!(
            f,
            "  rip {:#018x} cs {:#x} rflags {:#x} rsp {:#018x} ss {:#x}",
            t.rip, t.cs, t.rflags, t.rsp, t.ss
        )?;
        writeln!(f, "  cr2 {:#018x}", cr2)?;
        writeln!(
            f,
            "  rax {:#018x} rbx {:#018x} rcx {:#018x} rdx {:#018x}",
            t.rax, t.rbx, t.rcx, t.rdx
        )?;
        writeln!(
            f,
            "  rsi {:#018x} rdi {:#018x} rbp {:#018x} r8  {:#018x}",
            t.rsi, t.rdi, t.rbp, t.r8
        )?;
        writeln!(
            f,
            "  r9  {:#018x} r10 {:#018x} r11 {:#018x} r12 {:#018x}",
            t.r9, t.r10, t.r11, t.r12
        )?;
        write!(
            f,
            "  r13 {:#018x} r14 {:#018x} r15 {:#018x}",
            t.r13, t.r14, t.r15
        )
    }
}

/// Physical NMIs the host took after a guest's #VMEXIT(NMI).
pub static GUEST_NMIS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

extern "C" fn exception_dispatch(frame: &mut TrapFrame) {
    // An NMI that arrived while a guest ran (the NMI intercept) is taken
    // at the world switch's STGI: nothing to do but return. Any other NMI
    // (and every exception) still stops the machine.
    if frame.vector == 2 && crate::vmm::world_switch::in_nmi_window(frame.rip) {
        GUEST_NMIS.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        return;
    }
    let cr2 = x86_64::registers::control::Cr2::read_raw();
    // `fatal` names the CPU: `FATAL: cpu1: EXCEPTION: ...`.
    crate::fatal(format_args!("{}", Report(frame, cr2)));
}
