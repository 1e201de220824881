//! L1's VMRUN: the world switch, and the checks that L1's own state came
//! back intact after it.

use crate::l1;
use crate::report::{record, Ctx, Shown};
use crate::Svm;
use core::arch::asm;
use guest_stubs::cpu::{rdmsr, rdtsc};
use guest_stubs::exceptions::{catch, Fault};
use svm::fuzz::L1_FAULT_KEY;
use svm::msr::EFER;
use svm::Vmcb;

/// L1's view of itself, recorded before VMRUN and compared after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct L1State {
    cr0: u64,
    cr3: u64,
    cr4: u64,
    efer: u64,
    gdtr: (u16, u64),
    idtr: (u16, u64),
    cs: u16,
    ss: u16,
}

fn descriptor_table(idt: bool) -> (u16, u64) {
    let mut buf = [0u8; 10];
    // SAFETY: SGDT/SIDT store 10 bytes into buf.
    unsafe {
        match idt {
            false => asm!("sgdt [{}]", in(reg) buf.as_mut_ptr(), options(nostack)),
            true => asm!("sidt [{}]", in(reg) buf.as_mut_ptr(), options(nostack)),
        }
    }
    let limit = u16::from_le_bytes([buf[0], buf[1]]);
    let mut base = [0u8; 8];
    base.copy_from_slice(&buf[2..10]);
    (limit, u64::from_le_bytes(base))
}

impl L1State {
    fn now() -> Self {
        let (cr0, cr3, cr4, cs, ss): (u64, u64, u64, u16, u16);
        // SAFETY: reads of control and segment registers at CPL 0.
        unsafe {
            asm!("mov {}, cr0", out(reg) cr0, options(nomem, nostack));
            asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack));
            asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack));
            asm!("mov {:x}, cs", out(reg) cs, options(nomem, nostack));
            asm!("mov {:x}, ss", out(reg) ss, options(nomem, nostack));
        }
        Self {
            cr0,
            cr3,
            cr4,
            efer: rdmsr(EFER),
            gdtr: descriptor_table(false),
            idtr: descriptor_table(true),
            cs,
            ss,
        }
    }
}

static mut RSP_BEFORE: u64 = 0;
static mut RSP_AFTER: u64 = 0;
static mut FLAGS_BEFORE: u64 = 0;
static mut FLAGS_AFTER: u64 = 0;

/// The world switch: L1's registers saved around VMRUN, L2's from/to
/// `regs`; RSP and RFLAGS recorded right before and after VMRUN (and RSP
/// put back from the record, so a wrong one is reported, not crashed on).
/// No CLGI/STGI here: the caller does them when it wants (they fault
/// without EFER.SVME, and a fault inside must be VMRUN's own).
fn world_switch(regs: &mut l1::Regs, vmcb_pa: u64) -> u64 {
    let rax: u64;
    // SAFETY: VMRUN is emulated by L0; every register but RAX is restored.
    // A fault at VMRUN is skipped (3 bytes) by the caller's `catch`.
    unsafe {
        asm!(
            "push rbx", "push rbp", "push r12", "push r13", "push r14", "push r15",
            "push rdi",
            "mov rbx, [rdi + 0x00]", "mov rcx, [rdi + 0x08]", "mov rdx, [rdi + 0x10]",
            "mov rsi, [rdi + 0x18]", "mov rbp, [rdi + 0x28]", "mov r8, [rdi + 0x30]",
            "mov r9, [rdi + 0x38]", "mov r10, [rdi + 0x40]", "mov r11, [rdi + 0x48]",
            "mov r12, [rdi + 0x50]", "mov r13, [rdi + 0x58]", "mov r14, [rdi + 0x60]",
            "mov r15, [rdi + 0x68]", "mov rdi, [rdi + 0x20]",
            "mov [rip + {before}], rsp",
            "pushfq",
            "pop qword ptr [rip + {fbefore}]",
            "vmrun rax",
            "mov [rip + {after}], rsp",
            "mov rsp, [rip + {before}]",
            "pushfq",
            "pop qword ptr [rip + {fafter}]",
            "push rdi",
            "mov rdi, [rsp + 8]",
            "mov [rdi + 0x00], rbx", "mov [rdi + 0x08], rcx", "mov [rdi + 0x10], rdx",
            "mov [rdi + 0x18], rsi", "mov [rdi + 0x28], rbp", "mov [rdi + 0x30], r8",
            "mov [rdi + 0x38], r9", "mov [rdi + 0x40], r10", "mov [rdi + 0x48], r11",
            "mov [rdi + 0x50], r12", "mov [rdi + 0x58], r13", "mov [rdi + 0x60], r14",
            "mov [rdi + 0x68], r15",
            "pop rbx", "mov [rdi + 0x20], rbx",
            "pop rdi",
            "pop r15", "pop r14", "pop r13", "pop r12", "pop rbp", "pop rbx",
            before = sym RSP_BEFORE,
            after = sym RSP_AFTER,
            fbefore = sym FLAGS_BEFORE,
            fafter = sym FLAGS_AFTER,
            in("rdi") regs as *mut l1::Regs,
            inout("rax") vmcb_pa => rax,
            out("rcx") _, out("rdx") _, out("rsi") _, out("r8") _, out("r9") _, out("r10") _, out("r11") _,
        );
    }
    rax
}

impl core::fmt::Display for Outcome {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Outcome::Exit(code) => write!(f, "exit {code:#x}"),
            Outcome::Fault(fault) => Shown(Some(fault)).fmt(f),
        }
    }
}

/// The outcome of a VMRUN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Exit(u64),
    Fault(Fault),
}

/// VMRUN of `vmcb_pa` with full world switch, faults caught; checks L1's
/// state after it, counts the outcome.
pub(crate) fn vmrun_checked(
    ctx: &mut Ctx,
    regs: &mut l1::Regs,
    vmcb_pa: u64,
    svm: &Svm,
) -> Outcome {
    let before = L1State::now();
    let t0 = rdtsc();
    if svm.svme && !svm.gif_clear {
        clgi();
    }
    let mut rax = 0;
    let fault = catch(3, || rax = world_switch(regs, vmcb_pa));
    if svm.svme {
        stgi();
    }
    let t1 = rdtsc();
    let after = L1State::now();
    // SAFETY: plain reads of L1's own statics.
    let (rsp0, rsp1, f0, f1) = unsafe { (RSP_BEFORE, RSP_AFTER, FLAGS_BEFORE, FLAGS_AFTER) };
    if after != before {
        ctx.mismatch(format_args!(
            "L1 state changed by VMRUN: {before:x?} -> {after:x?}"
        ));
    }
    if rsp0 != rsp1 {
        ctx.mismatch(format_args!("L1 RSP after VMRUN {rsp1:#x}, was {rsp0:#x}"));
    }
    if f0 != f1 && fault.is_none() {
        ctx.mismatch(format_args!("L1 RFLAGS after #VMEXIT {f1:#x}, was {f0:#x}"));
    }
    // L1's TSC goes on, and no vmcb12 offset leaked into it.
    if !ctx.l2_may_write_tsc && !svm::fuzz::tsc_went_on(t0, t1) {
        let (code, o12) = match fault {
            // SAFETY: a page of L1's memory when VMRUN did not fault.
            None => unsafe {
                let v = &*(vmcb_pa as *const Vmcb);
                (v.control.exit_code, v.control.tsc_offset)
            },
            Some(_) => (0, 0),
        };
        ctx.mismatch(format_args!(
            "L1 TSC across VMRUN: {t0:#x} then {t1:#x} (exit {code:#x}, vmcb12 TSC offset {o12:#x})"
        ));
    }
    let outcome = match fault {
        Some(f) => Outcome::Fault(f),
        None => {
            if rax != vmcb_pa {
                ctx.mismatch(format_args!(
                    "L1 RAX after #VMEXIT {rax:#x}, expected {vmcb_pa:#x}"
                ));
            }
            // SAFETY: vmcb_pa is a page of L1's memory (the VMRUN ran).
            Outcome::Exit(unsafe { (*(vmcb_pa as *const Vmcb)).control.exit_code })
        }
    };
    record().count(
        match outcome {
            Outcome::Exit(code) if svm::fuzz::is_invalid(code) => u64::from(u32::MAX),
            Outcome::Exit(code) => code,
            Outcome::Fault(f) => L1_FAULT_KEY | f.vector,
        },
        1,
    );
    outcome
}

pub(crate) fn clgi() {
    // SAFETY: emulated by L0 (EFER.SVME is set when called).
    unsafe { asm!("clgi", options(nomem, nostack)) };
}

pub(crate) fn stgi() {
    // SAFETY: as for clgi.
    unsafe { asm!("stgi", options(nomem, nostack)) };
}
