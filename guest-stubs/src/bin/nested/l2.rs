//! L2 payloads: code in L1's image, run by L1 as its guest on the same page
//! tables. L1 picks the payload in [`TASK`]; L2 leaves what it saw in
//! [`RESULTS`] and yields with HLT (which L1 intercepts).

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};
use guest_stubs::cpu::{cpuid, rdmsr, rdtsc, wrmsr};
use guest_stubs::hypercall::call;

/// What L2 does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Task {
    /// HLT at once.
    Yield = 0,
    /// VMMCALL with RAX = 0x1001, then 0x1002, then yield.
    VmmcallTwice,
    /// VMMCALL with RAX = 0x2000 forever (L1 counts round trips).
    VmmcallLoop,
    /// CPUID 0x4000_0000 → RESULTS[0..4].
    Cpuid,
    /// RDMSR FS_BASE → R0, RDMSR EFER → R1, RDMSR KERNEL_GS_BASE → R2,
    /// RDMSR IA32_TSC → R3, WRMSR IA32_TSC_ADJUST := R7; L0's MSR exit
    /// count across each of the last four → R6 (a byte each, in order).
    Msrs,
    /// OUT 0x80; a console line through COM1; yield.
    Ports,
    /// CPUID, WRMSR FS_BASE, 16-bit IN from port 0x71, yield.
    ExitInfo,
    /// RDTSC → R0, yield.
    Rdtsc,
    /// RDTSC → R0, HC_TSC_MOVE_L1(R7) to L0, RDTSC → R1, yield.
    MoveL1Tsc,
    /// RDTSC → R0, RDMSR IA32_TSC → R1, RDTSC → R2, yield.
    RdmsrTsc,
    /// WRMSR IA32_TSC := R7, RDTSC → R0, yield.
    WrmsrTsc,
    /// WRMSR IA32_TSC_ADJUST := R7, yield.
    WriteAdjust,
    /// RDTSC → R0, HC_TSC_FREEZE_RESTORE(pause, R7 us), RDTSC → R1, yield.
    FreezePause,
    /// RDMSR of an MSR inside the MSRPM ranges that L1 lets through and L0
    /// does not emulate (L0 raises #GP), yield.
    RdmsrUnknown,
    /// HC_ECHO_SUM, which is not for L2 (#UD), yield.
    EchoHypercall,
    /// RDTSCP → R0, yield.
    Rdtscp,
    /// HC_QUEUE_INTERRUPT(R7) for L1, then count loop iterations in R0
    /// forever (only an exit to L1 ends it).
    QueueAndSpin,
    /// vmcb12.tsc_offset in L1's memory := R7 (L2 can reach L1's memory),
    /// RDTSC → R0, yield.
    PokeVmcb12Offset,
}

/// The payload L1 picked.
pub static TASK: AtomicU64 = AtomicU64::new(0);
/// What L2 saw.
pub static RESULTS: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];

/// Sets the payload and its input (R7).
pub fn set(task: Task, input: u64) {
    TASK.store(task as u64, Ordering::SeqCst);
    RESULTS.iter().for_each(|r| r.store(0, Ordering::SeqCst));
    RESULTS[7].store(input, Ordering::SeqCst);
}

/// Result `i`.
pub fn result(i: usize) -> u64 {
    RESULTS[i].load(Ordering::SeqCst)
}

fn put(i: usize, v: u64) {
    RESULTS[i].store(v, Ordering::SeqCst);
}

/// MSR exits L0 has taken for this vCPU so far (a test hook L2 may call).
fn l0_msr_exits() -> u64 {
    call(
        svm::guest_abi::HC_EXIT_COUNT,
        svm::ExitCode::Msr.to_raw(),
        0,
        0,
    )
}

fn yield_to_l1() {
    // SAFETY: HLT in L2 exits to L1, which intercepts it.
    unsafe { asm!("hlt", options(nomem, nostack)) };
}

fn vmmcall_rax(rax: u64) {
    // SAFETY: VMMCALL exits (to L1 when it intercepts it); only RAX is used.
    unsafe { asm!("vmmcall", inout("rax") rax => _, options(nomem, nostack)) };
}

/// L2's entry point.
pub extern "C" fn entry() -> ! {
    let input = RESULTS[7].load(Ordering::SeqCst);
    match TASK.load(Ordering::SeqCst) {
        x if x == Task::VmmcallTwice as u64 => {
            vmmcall_rax(0x1001);
            vmmcall_rax(0x1002);
        }
        x if x == Task::VmmcallLoop as u64 => loop {
            vmmcall_rax(0x2000);
        },
        x if x == Task::Cpuid as u64 => {
            for (i, r) in cpuid(0x4000_0000, 0).iter().enumerate() {
                put(i, u64::from(*r));
            }
        }
        x if x == Task::Msrs as u64 => {
            put(0, rdmsr(svm::msr::FS_BASE));
            let mut counts = 0;
            let mut counted = |i: usize, access: &mut dyn FnMut() -> u64| {
                let before = l0_msr_exits();
                let v = access();
                counts |= (l0_msr_exits() - before) << (8 * i);
                v
            };
            put(1, counted(0, &mut || rdmsr(svm::msr::EFER)));
            put(2, counted(1, &mut || rdmsr(svm::msr::KERNEL_GS_BASE)));
            put(3, counted(2, &mut || rdmsr(svm::msr::IA32_TSC)));
            counted(3, &mut || {
                wrmsr(svm::msr::IA32_TSC_ADJUST, input);
                0
            });
            put(6, counts);
        }
        x if x == Task::Ports as u64 => {
            // SAFETY: port output, intercepted by L1 (0x80) or L0 (COM1).
            unsafe { asm!("out 0x80, al", in("al") 0x42u8, options(nomem, nostack)) };
            guest_stubs::println!("hello from L2");
        }
        x if x == Task::ExitInfo as u64 => {
            put(0, u64::from(cpuid(0, 0)[0]));
            wrmsr(svm::msr::FS_BASE, 0x1234);
            let v: u16;
            // SAFETY: port input, intercepted by L1.
            unsafe { asm!("in ax, 0x71", out("ax") v, options(nomem, nostack)) };
            put(1, u64::from(v));
        }
        x if x == Task::Rdtsc as u64 => put(0, rdtsc()),
        x if x == Task::MoveL1Tsc as u64 => {
            put(0, rdtsc());
            put(6, call(svm::guest_abi::HC_TSC_MOVE_L1, input, 0, 0));
            put(1, rdtsc());
        }
        x if x == Task::RdmsrTsc as u64 => {
            put(0, rdtsc());
            put(1, rdmsr(svm::msr::IA32_TSC));
            put(2, rdtsc());
        }
        x if x == Task::WrmsrTsc as u64 => {
            wrmsr(svm::msr::IA32_TSC, input);
            put(0, rdtsc());
        }
        x if x == Task::WriteAdjust as u64 => wrmsr(svm::msr::IA32_TSC_ADJUST, input),
        x if x == Task::QueueAndSpin as u64 => {
            put(6, call(svm::guest_abi::HC_QUEUE_INTERRUPT, input, 0, 0));
            loop {
                RESULTS[0].fetch_add(1, Ordering::SeqCst);
            }
        }
        x if x == Task::RdmsrUnknown as u64 => put(0, rdmsr(0xc001_1ffe)),
        x if x == Task::EchoHypercall as u64 => put(0, call(svm::guest_abi::HC_ECHO_SUM, 1, 2, 3)),
        x if x == Task::Rdtscp as u64 => put(0, guest_stubs::cpu::rdtscp().0),
        x if x == Task::PokeVmcb12Offset as u64 => {
            // SAFETY: vmcb12 is a static of L1's image; L1 does not run now.
            unsafe {
                (*core::ptr::addr_of_mut!(crate::l1::VMCB12))
                    .control
                    .tsc_offset = input
            };
            put(0, rdtsc());
        }
        x if x == Task::FreezePause as u64 => {
            put(0, rdtsc());
            put(6, call(svm::guest_abi::HC_TSC_FREEZE_RESTORE, 0, input, 0));
            put(1, rdtsc());
        }
        _ => {}
    }
    loop {
        yield_to_l1();
    }
}

/// A second L2 entry for event injection: its IDT's vector 0x30 gate leads
/// to [`vector_30`], which records the vector and yields.
pub static GOT_VECTOR: AtomicU64 = AtomicU64::new(0);

/// Handler of vector 0x30 in L2 (never returns: L1 ends the test).
pub extern "C" fn vector_30() -> ! {
    GOT_VECTOR.store(0x30, Ordering::SeqCst);
    loop {
        yield_to_l1();
    }
}

/// An L2 IDT with only vector 0x30 present.
#[repr(C, align(16))]
pub struct Idt(pub [[u64; 2]; 0x31]);

/// L2's IDT for the event-injection test.
pub static mut L2_IDT: Idt = Idt([[0; 2]; 0x31]);

/// Fills [`L2_IDT`] and returns its address and limit.
pub fn l2_idt() -> (u64, u32) {
    let h = vector_30 as *const () as u64;
    // SAFETY: single vCPU; L2 is not running.
    let idt = unsafe { &mut *core::ptr::addr_of_mut!(L2_IDT) };
    idt.0[0x30][0] = (h & 0xffff) | (0x08 << 16) | (0x8e00 << 32) | ((h >> 16) & 0xffff) << 48;
    idt.0[0x30][1] = h >> 32;
    (
        idt as *const Idt as u64,
        (core::mem::size_of::<Idt>() - 1) as u32,
    )
}

/// An L2 entry that just spins (the injected event preempts it).
pub extern "C" fn spin() -> ! {
    loop {
        core::hint::spin_loop();
    }
}
