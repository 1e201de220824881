//! Guest exception capture: an IDT whose exception handler either records
//! an expected fault and skips the faulting instruction (or an expected
//! trap, see [`catch_trap`]), or fails the test; NMIs (vector 2) are
//! counted and return; vectors 32-255 (interrupts) are counted per vector
//! and return.

use core::sync::atomic::{AtomicU64, Ordering};

/// A fault the guest took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// Exception vector.
    pub vector: u64,
    /// Error code (0 for vectors without one).
    pub error_code: u64,
    /// CR2 at the fault (meaningful for #PF).
    pub cr2: u64,
    /// DR6 in the handler (meaningful for #DB).
    pub dr6: u64,
}

#[repr(C)]
struct Frame {
    regs: [u64; 9],
    vector: u64,
    error_code: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

// Vectors that push an error code: 8, 10-14, 17, 21, 29, 30 (APM Vol. 2, 8.2).
core::arch::global_asm!(
    r#"
    .section .text.guest_isr, "ax"
    .macro GISR_NOERR n
    gisr_\n:
        push 0
        push \n
        jmp gisr_common
    .endm
    .macro GISR_ERR n
    gisr_\n:
        push \n
        jmp gisr_common
    .endm
    .irp n, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31
    GISR_NOERR \n
    .endr
    .irp n, 8,10,11,12,13,14,17,21,29,30
    GISR_ERR \n
    .endr
    gisr_common:
        push rax
        push rcx
        push rdx
        push rsi
        push rdi
        push r8
        push r9
        push r10
        push r11
        mov rdi, rsp
        cld
        call {handler}
        pop r11
        pop r10
        pop r9
        pop r8
        pop rdi
        pop rsi
        pop rdx
        pop rcx
        pop rax
        add rsp, 16
        iretq

    .irp n, 0,1,2,3,4,5,6,7
    .irp m, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    gint_\n\()_\m:
        push rax
        mov eax, \n * 32 + \m
        jmp gint_common
    .endr
    .endr
    gint_common:
        push rcx
        push rdx
        push rsi
        push rdi
        push r8
        push r9
        push r10
        push r11
        mov edi, eax
        cld
        call {interrupt}
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

    .section .rodata.guest_int, "a"
    .balign 8
    GUEST_INT_TABLE:
    .irp n, 1,2,3,4,5,6,7
    .irp m, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad gint_\n\()_\m
    .endr
    .endr

    .section .rodata.guest_isr, "a"
    .balign 8
    GUEST_ISR_TABLE:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad gisr_\n
    .endr
    "#,
    handler = sym handle,
    interrupt = sym interrupt,
);

unsafe extern "C" {
    static GUEST_ISR_TABLE: [u64; 32];
    static GUEST_INT_TABLE: [u64; 224];
}

#[repr(C, align(16))]
struct Idt([[u64; 2]; 256]);

static mut IDT: Idt = Idt([[0; 2]; 256]);

/// Interrupts taken, per vector (0-31 stay 0: those are exceptions).
static INTERRUPTS: [AtomicU64; 256] = [const { AtomicU64::new(0) }; 256];

extern "C" fn interrupt(vector: u32) {
    INTERRUPTS[vector as usize & 0xff].fetch_add(1, Ordering::SeqCst);
}

/// How many interrupts with `vector` the guest took.
pub fn interrupts_taken(vector: u8) -> u64 {
    INTERRUPTS[usize::from(vector)].load(Ordering::SeqCst)
}

/// Installs the IDT. Called by the runtime before `guest_main`.
pub fn init() {
    // SAFETY: single vCPU, before any exception can be taken.
    let idt = unsafe { &mut *core::ptr::addr_of_mut!(IDT) };
    // SAFETY: immutable tables of stub addresses.
    let stubs = unsafe { GUEST_ISR_TABLE.iter().chain(GUEST_INT_TABLE.iter()) };
    for (gate, &h) in idt.0.iter_mut().zip(stubs) {
        // 64-bit interrupt gate, present, DPL 0, selector 0x08.
        gate[0] = (h & 0xffff) | (0x08 << 16) | (0x8e00 << 32) | ((h >> 16) & 0xffff) << 48;
        gate[1] = h >> 32;
    }
    let ptr: [u16; 5] = {
        let base = idt as *const Idt as u64;
        [
            (core::mem::size_of::<Idt>() - 1) as u16,
            base as u16,
            (base >> 16) as u16,
            (base >> 32) as u16,
            (base >> 48) as u16,
        ]
    };
    // SAFETY: the IDT is static and holds valid gates.
    unsafe { core::arch::asm!("lidt [{}]", in(reg) ptr.as_ptr(), options(nostack)) };
}

static SKIP: AtomicU64 = AtomicU64::new(0);
static VECTOR: AtomicU64 = AtomicU64::new(u64::MAX);
static ERROR_CODE: AtomicU64 = AtomicU64::new(0);
static CR2: AtomicU64 = AtomicU64::new(0);
static DR6: AtomicU64 = AtomicU64::new(0);
/// [`SKIP`] for an expected trap: RIP stays (it is past the instruction).
const TRAP: u64 = u64::MAX;

/// NMIs taken.
static NMIS: AtomicU64 = AtomicU64::new(0);
/// A `fn()` the NMI handler calls (0: none).
static NMI_HOOK: AtomicU64 = AtomicU64::new(0);

/// How many NMIs the guest took.
pub fn nmis_taken() -> u64 {
    NMIS.load(Ordering::SeqCst)
}

/// Makes the NMI handler call `hook` (after counting), or nothing.
pub fn set_nmi_hook(hook: Option<fn()>) {
    NMI_HOOK.store(hook.map_or(0, |f| f as usize as u64), Ordering::SeqCst);
}

/// Where a fault at CPL 3 resumes CPL 0 code ([`run_user`]; 0: nowhere).
static USER_RETURN_RIP: AtomicU64 = AtomicU64::new(0);
/// The CPL 0 stack pointer at that point.
static USER_RETURN_RSP: AtomicU64 = AtomicU64::new(0);

extern "C" fn handle(frame: &mut Frame) {
    if frame.cs & 3 == 3 && frame.vector != 2 {
        let rip = USER_RETURN_RIP.swap(0, Ordering::SeqCst);
        if rip != 0 {
            record(frame);
            // Back to CPL 0, after run_user's IRETQ.
            frame.rip = rip;
            frame.cs = 0x08;
            frame.rflags = 0x2;
            frame.rsp = USER_RETURN_RSP.load(Ordering::SeqCst);
            frame.ss = 0x10;
            return;
        }
    }
    if frame.vector == 2 {
        NMIS.fetch_add(1, Ordering::SeqCst);
        let hook = NMI_HOOK.load(Ordering::SeqCst);
        if hook != 0 {
            // SAFETY: set from a `fn()` by set_nmi_hook.
            let f: fn() = unsafe { core::mem::transmute(hook as usize) };
            f();
        }
        return;
    }
    let skip = SKIP.swap(0, Ordering::SeqCst);
    if skip == 0 {
        crate::verdict::fail(format_args!(
            "unexpected exception {} (error code {:#x}) at rip {:#x}, cr2 {:#x}",
            frame.vector,
            frame.error_code,
            frame.rip,
            cr2()
        ));
    }
    record(frame);
    if skip == TRAP {
        // Single-stepping ends with the trap.
        frame.rflags &= !(1 << 8);
    } else {
        frame.rip = frame.rip.wrapping_add(skip);
    }
}

fn cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 has no side effects at CPL 0.
    unsafe { core::arch::asm!("mov {}, cr2", out(reg) v, options(nomem, nostack)) };
    v
}

/// Records the fault of `frame` for [`catch`] / [`run_user`].
fn record(frame: &Frame) {
    let dr6: u64;
    // SAFETY: reading DR6 has no side effects at CPL 0.
    unsafe { core::arch::asm!("mov {}, dr6", out(reg) dr6, options(nomem, nostack)) };
    VECTOR.store(frame.vector, Ordering::SeqCst);
    ERROR_CODE.store(frame.error_code, Ordering::SeqCst);
    CR2.store(cr2(), Ordering::SeqCst);
    DR6.store(dr6, Ordering::SeqCst);
    RIP.store(frame.rip, Ordering::SeqCst);
}

/// The RIP the last recorded exception pushed (for a trap: the next
/// instruction's).
static RIP: AtomicU64 = AtomicU64::new(0);

/// The RIP the last exception [`catch`] / [`catch_trap`] recorded pushed.
pub fn last_rip() -> u64 {
    RIP.load(Ordering::SeqCst)
}

/// Runs `entry` at CPL 3 (CS/SS = [`crate::user`]'s selectors) on
/// `user_rsp` with `rflags`, until it faults; returns that fault, CPL 0
/// resuming here. [`crate::user::init`] must have run. `entry` must fault
/// eventually (end it with UD2).
pub fn run_user(entry: u64, user_rsp: u64, rflags: u64) -> Option<Fault> {
    VECTOR.store(u64::MAX, Ordering::SeqCst);
    // SAFETY: the IRETQ frame enters `entry` at CPL 3; its first fault
    // comes back to label 2 through `handle` with this stack, where the
    // callee-saved registers pushed here are restored; every other
    // register is declared clobbered.
    unsafe {
        core::arch::asm!(
            "push rbx", "push rbp", "push r12", "push r13", "push r14", "push r15",
            "lea rax, [rip + 2f]",
            "mov qword ptr [rip + {ret_rip}], rax",
            "mov qword ptr [rip + {ret_rsp}], rsp",
            "push {ss}",
            "push rsi",
            "push rdx",
            "push {cs}",
            "push rdi",
            "iretq",
            "2:",
            "pop r15", "pop r14", "pop r13", "pop r12", "pop rbp", "pop rbx",
            ret_rip = sym USER_RETURN_RIP,
            ret_rsp = sym USER_RETURN_RSP,
            ss = const crate::user::USER_DATA as u64,
            cs = const crate::user::USER_CODE as u64,
            in("rdi") entry,
            in("rsi") user_rsp,
            in("rdx") rflags,
            out("rax") _,
            clobber_abi("C"),
        );
    }
    USER_RETURN_RIP.store(0, Ordering::SeqCst);
    taken()
}

/// Runs `f`, whose faulting instruction (if any) is `insn_len` bytes long and
/// is skipped; returns the fault taken, if any.
pub fn catch(insn_len: u64, f: impl FnOnce()) -> Option<Fault> {
    catch_with(insn_len, f)
}

/// Runs `f`, which may raise a trap (e.g. a single-step or data-breakpoint
/// #DB): the handler returns past the instruction and clears RFLAGS.TF.
/// Returns the trap taken, if any.
pub fn catch_trap(f: impl FnOnce()) -> Option<Fault> {
    catch_with(TRAP, f)
}

fn catch_with(skip: u64, f: impl FnOnce()) -> Option<Fault> {
    VECTOR.store(u64::MAX, Ordering::SeqCst);
    SKIP.store(skip, Ordering::SeqCst);
    f();
    SKIP.store(0, Ordering::SeqCst);
    taken()
}

/// The fault the handler recorded since VECTOR was reset, if any.
fn taken() -> Option<Fault> {
    match VECTOR.load(Ordering::SeqCst) {
        u64::MAX => None,
        vector => Some(Fault {
            vector,
            error_code: ERROR_CODE.load(Ordering::SeqCst),
            cr2: CR2.load(Ordering::SeqCst),
            dr6: DR6.load(Ordering::SeqCst),
        }),
    }
}
