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
    /// Spin until R7 TSC ticks have passed (no exit of its own), R0 := 1,
    /// yield.
    SpinThenYield,
    /// HC_QUEUE_INTERRUPT(R7 & 0xff) for L1 → R6, spin R7 >> 8 TSC ticks,
    /// R0 := 1, yield.
    QueueSpinYield,
    /// In vmcb12 (L1's memory, after VMRUN took its copy): clear the HLT
    /// and VMRUN intercepts, ASID := 0; R0 := 1, yield (HLT).
    PokeVmcb12Controls,
    /// DR6 := clear, single-step a NOP (a #DB trap), yield.
    SingleStep,
    /// HC_QUEUE_NMI for L1, then count loop iterations in R0 forever.
    QueueNmiAndSpin,
    /// HC_PHYSICAL_NMI → R6, spin a little, yield.
    PhysicalNmi,
    /// HC_L0_INTERCEPTS → R0 (the merged intercepts L2 runs with), yield.
    L0Intercepts,
    /// SVM instructions L1 does not intercept (CVE-2021-3656): WRMSR
    /// FS_BASE, VMSAVE to [`VMSAVE_PAGE`], VMLOAD from [`VMLOAD_PAGE`],
    /// KERNEL_GS_BASE → R0, FS_BASE → R1; VMSAVE to R7 (outside L1's RAM:
    /// #GP); EFER → R2, clear EFER.SVME, EFER → R3, VMLOAD (#UD); SVME
    /// back on; CLGI, STGI, INVLPGA; SKINIT (#UD); R4 := 1, yield.
    SvmInsns,
    /// Unbacked L1-physical memory at R7: its u64 → R0, a store there,
    /// its u64 → R1, REP STOSB of 0x1800 bytes at R7 + 0x800 → RCX in R2,
    /// RDI in R3, yield.
    Unbacked,
    /// Read the u64 at linear R7 (L1 put its PD in unbacked memory), R0 :=
    /// 1, yield.
    UnbackedWalk,
    /// L1's xAPIC page (L1 mapped it): version → R0, ID → R1, TPR := 0x20,
    /// TPR → R2; yield (TPR stays 0x20).
    ApicMmio,
    /// ADD to the APIC page's TPR (#UD: L0 does not emulate it), R0 := 1,
    /// yield.
    ApicAdd,
    /// R1 := 1 (IF clear), STI; NOP, R0 := 1, yield.
    StiThenYield,
    /// A self-SMI through the APIC page's ICR, R0 := 1, yield.
    ApicSelfSmi,
    /// RDMSR every index of the MSRPM ranges, compare with L1's view,
    /// write back (`crate::msrs`), yield.
    MsrSweep,
    /// SKINIT (EAX = 0), R0 := 1, yield.
    Skinit,
    /// INT3, R0 := 1, yield.
    Int3,
    /// The TSC ping-pong with vCPU 0 (`crate::smp`, R7 = vmcb12's TSC
    /// offset), yield.
    TscPingPong,
}

/// The VMSAVE target of [`Task::SvmInsns`] (a page of L1's memory).
pub static mut VMSAVE_PAGE: svm::Vmcb = svm::Vmcb::new();
/// The VMLOAD source of [`Task::SvmInsns`].
pub static mut VMLOAD_PAGE: svm::Vmcb = svm::Vmcb::new();

fn svm_insns(bad: u64) {
    wrmsr(svm::msr::FS_BASE, 0xF5F5_0000);
    // SAFETY: emulated by L0 on pages of L1's memory (L1 does not
    // intercept them); the faults are L1's to handle (it skips them).
    unsafe {
        asm!("vmsave rax", in("rax") core::ptr::addr_of!(VMSAVE_PAGE) as u64, options(nostack));
        asm!("vmload rax", in("rax") core::ptr::addr_of!(VMLOAD_PAGE) as u64, options(nostack));
    }
    put(0, rdmsr(svm::msr::KERNEL_GS_BASE));
    put(1, rdmsr(svm::msr::FS_BASE));
    // SAFETY: as above (#GP).
    unsafe { asm!("vmsave rax", in("rax") bad, options(nostack)) };
    let efer = rdmsr(svm::msr::EFER);
    put(2, efer);
    wrmsr(svm::msr::EFER, efer & !svm::msr::EFER_SVME);
    put(3, rdmsr(svm::msr::EFER));
    // SAFETY: as above (#UD: SVME clear).
    unsafe {
        asm!("vmload rax", in("rax") core::ptr::addr_of!(VMLOAD_PAGE) as u64, options(nostack))
    };
    wrmsr(svm::msr::EFER, efer);
    // SAFETY: GIF and a TLB flush; SKINIT is #UD (L1 skips it).
    unsafe {
        asm!("clgi", "stgi", options(nomem, nostack));
        asm!("invlpga rax, ecx", in("rax") 0u64, in("ecx") 1u32, options(nostack));
        asm!("skinit eax", in("eax") 0u32, options(nostack));
    }
    put(4, 1);
}

fn unbacked(a: u64) {
    let read = || {
        // SAFETY: `a` is identity-mapped unbacked memory: reads all-ones.
        unsafe { core::ptr::read_volatile(a as *const u64) }
    };
    put(0, read());
    // SAFETY: as above; the store is dropped.
    unsafe { core::ptr::write_volatile(a as *mut u64, 0x1234) };
    put(1, read());
    let (rcx, rdi): (u64, u64);
    // SAFETY: as above (8 KiB of it).
    unsafe {
        asm!("rep stosb", inout("rcx") 0x1800u64 => rcx, inout("rdi") a + 0x800 => rdi,
             in("al") 0u8, options(nostack))
    };
    put(2, rcx);
    put(3, rdi);
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
        x if x == Task::Int3 as u64 => {
            // SAFETY: L1 intercepts #BP here; the INT3 never reaches an IDT.
            unsafe { asm!("int3", options(nostack)) };
            put(0, 1);
        }
        x if x == Task::Skinit as u64 => {
            // SAFETY: SKINIT is #UD or intercepted here; it never runs.
            unsafe { asm!("skinit eax", in("eax") 0u32, options(nostack)) };
            put(0, 1);
        }
        x if x == Task::PokeVmcb12Offset as u64 => {
            // SAFETY: vmcb12 is a static of L1's image; L1 does not run now.
            unsafe {
                (*core::ptr::addr_of_mut!(crate::l1::VMCB12))
                    .control
                    .tsc_offset = input
            };
            put(0, rdtsc());
        }
        x if x == Task::SpinThenYield as u64 => {
            spin_ticks(input);
            put(0, 1);
        }
        x if x == Task::QueueSpinYield as u64 => {
            put(
                6,
                call(svm::guest_abi::HC_QUEUE_INTERRUPT, input & 0xff, 0, 0),
            );
            spin_ticks(input >> 8);
            put(0, 1);
        }
        x if x == Task::PokeVmcb12Controls as u64 => {
            // SAFETY: vmcb12 is a static of L1's image; L1 does not run now.
            // Volatile: the writes are the point, nothing here reads them.
            unsafe {
                let c = &raw mut (*core::ptr::addr_of_mut!(crate::l1::VMCB12)).control;
                let misc1 = (*c).intercept_misc1 & !svm::InterceptMisc1::HLT.bits();
                let misc2 = (*c).intercept_misc2 & !svm::InterceptMisc2::VMRUN.bits();
                core::ptr::write_volatile(&raw mut (*c).intercept_misc1, misc1);
                core::ptr::write_volatile(&raw mut (*c).intercept_misc2, misc2);
                core::ptr::write_volatile(&raw mut (*c).guest_asid, 0);
            }
            put(0, 1);
        }
        x if x == Task::SingleStep as u64 => {
            guest_stubs::cpu::write_dr(6, guest_stubs::cpu::DR6_CLEAR);
            guest_stubs::cpu::single_step_nop();
        }
        x if x == Task::QueueNmiAndSpin as u64 => {
            put(6, call(svm::guest_abi::HC_QUEUE_NMI, 0, 0, 0));
            loop {
                RESULTS[0].fetch_add(1, Ordering::SeqCst);
            }
        }
        x if x == Task::PhysicalNmi as u64 => {
            put(6, call(svm::guest_abi::HC_PHYSICAL_NMI, 0, 0, 0));
            for _ in 0..1000 {
                core::hint::spin_loop();
            }
        }
        x if x == Task::L0Intercepts as u64 => {
            put(0, call(svm::guest_abi::HC_L0_INTERCEPTS, 0, 0, 0))
        }
        x if x == Task::SvmInsns as u64 => svm_insns(input),
        x if x == Task::FreezePause as u64 => {
            put(0, rdtsc());
            put(6, call(svm::guest_abi::HC_TSC_FREEZE_RESTORE, 0, input, 0));
            put(1, rdtsc());
        }
        x if x == Task::Unbacked as u64 => unbacked(input),
        x if x == Task::ApicMmio as u64 => {
            use guest_stubs::lapic::{read, write};
            put(0, u64::from(read(0x30)));
            put(1, u64::from(read(0x20)));
            write(0x80, 0x20);
            put(2, u64::from(read(0x80)));
        }
        x if x == Task::ApicAdd as u64 => {
            // SAFETY: the APIC page; the #UD goes to L1 (it intercepts it).
            unsafe {
                asm!("add dword ptr [rax], 1", in("rax") guest_stubs::lapic::BASE + 0x80, options(nostack))
            };
            put(0, 1);
        }
        x if x == Task::StiThenYield as u64 => {
            put(1, 1);
            // SAFETY: L1 decides where the interrupt goes (an exit).
            unsafe { asm!("sti", "nop", options(nomem, nostack)) };
            put(0, 1);
        }
        x if x == Task::ApicSelfSmi as u64 => {
            guest_stubs::lapic::write(0x300, (1 << 18) | (2 << 8));
            put(0, 1);
        }
        x if x == Task::UnbackedWalk as u64 => {
            // SAFETY: faults (#PF, L1 intercepts it) or reads.
            unsafe { core::ptr::read_volatile(input as *const u64) };
            put(0, 1);
        }
        x if x == Task::MsrSweep as u64 => crate::msrs::l2_side(put),
        x if x == Task::TscPingPong as u64 => crate::smp::l2_turns(input),
        _ => {}
    }
    loop {
        yield_to_l1();
    }
}

/// Spins (no exits) until `ticks` TSC ticks have passed.
fn spin_ticks(ticks: u64) {
    let t0 = rdtsc();
    while rdtsc().wrapping_sub(t0) < ticks {
        core::hint::spin_loop();
    }
}

/// A second L2 entry for event injection: its IDT's vector 0x30 gate leads
/// to [`vector_30`] (through `l2_vector_30_entry`, which records the
/// return RIP the delivery pushed in [`RETURN_RIP`]), which records the
/// vector and yields.
pub static GOT_VECTOR: AtomicU64 = AtomicU64::new(0);
/// The return RIP vector 0x30's delivery pushed.
pub static RETURN_RIP: AtomicU64 = AtomicU64::new(0);
/// How many interrupts reached [`any_vector`].
pub static ANY_VECTOR: AtomicU64 = AtomicU64::new(0);

core::arch::global_asm!(
    ".global l2_vector_30_entry",
    "l2_vector_30_entry:",
    "mov rax, [rsp]",
    "mov [rip + {ret}], rax",
    "jmp {handler}",
    ret = sym RETURN_RIP,
    handler = sym vector_30,
);

unsafe extern "C" {
    fn l2_vector_30_entry();
}

/// Handler of every vector in [`L2_IDT_ALL`]: counts and yields.
pub extern "C" fn any_vector() -> ! {
    ANY_VECTOR.fetch_add(1, Ordering::SeqCst);
    loop {
        yield_to_l1();
    }
}

/// An interrupt gate to `h` in L2's code segment.
fn gate(h: u64) -> [u64; 2] {
    [
        (h & 0xffff) | (0x08 << 16) | (0x8e00 << 32) | ((h >> 16) & 0xffff) << 48,
        h >> 32,
    ]
}

/// A full L2 IDT, every vector to [`any_vector`].
#[repr(C, align(16))]
pub struct IdtAll(pub [[u64; 2]; 256]);

/// L2's IDT for the tests where no interrupt must reach L2.
pub static mut L2_IDT_ALL: IdtAll = IdtAll([[0; 2]; 256]);

/// Fills [`L2_IDT_ALL`] and returns its address and limit.
pub fn l2_idt_all() -> (u64, u32) {
    // SAFETY: single vCPU; L2 is not running.
    let idt = unsafe { &mut *core::ptr::addr_of_mut!(L2_IDT_ALL) };
    idt.0.fill(gate(any_vector as *const () as u64));
    ANY_VECTOR.store(0, Ordering::SeqCst);
    (
        idt as *const IdtAll as u64,
        (core::mem::size_of::<IdtAll>() - 1) as u32,
    )
}

/// Handler of vector 0x30 in L2 (never returns: L1 ends the test).
pub extern "C" fn vector_30() -> ! {
    GOT_VECTOR.store(0x30, Ordering::SeqCst);
    loop {
        yield_to_l1();
    }
}

/// DR6 as L2's #DB handler saw it (0: no #DB in L2).
pub static DB_DR6: AtomicU64 = AtomicU64::new(0);

/// Handler of #DB in L2: records DR6 and yields (never returns).
pub extern "C" fn debug() -> ! {
    DB_DR6.store(guest_stubs::cpu::read_dr6(), Ordering::SeqCst);
    loop {
        yield_to_l1();
    }
}

/// An L2 IDT with only vectors 1 (#DB) and 0x30 present.
#[repr(C, align(16))]
pub struct Idt(pub [[u64; 2]; 0x31]);

/// L2's IDT for the event-injection test.
pub static mut L2_IDT: Idt = Idt([[0; 2]; 0x31]);

/// Fills [`L2_IDT`] and returns its address and limit.
pub fn l2_idt() -> (u64, u32) {
    // SAFETY: single vCPU; L2 is not running.
    let idt = unsafe { &mut *core::ptr::addr_of_mut!(L2_IDT) };
    idt.0[0x30] = gate(l2_vector_30_entry as *const () as u64);
    idt.0[1] = gate(debug as *const () as u64);
    GOT_VECTOR.store(0, Ordering::SeqCst);
    RETURN_RIP.store(0, Ordering::SeqCst);
    (
        idt as *const Idt as u64,
        (core::mem::size_of::<Idt>() - 1) as u32,
    )
}

// L2 code for `nested::soft_event_ends_at_l0_exit`: L1 starts L2 at
// `l2_soft_then_int31` with INT 0x30 in EVENTINJ (as after intercepting
// that INTn), so the INT 0x30 there never runs; its handler
// (`l2_vector_30_cpuid`) makes an exit L0 handles (CPUID) and returns to
// `l2_soft_then_int31_next`, whose INT 0x31 faults (gate not present).
core::arch::global_asm!(
    ".global l2_soft_then_int31",
    ".global l2_soft_then_int31_next",
    ".global l2_vector_30_cpuid",
    "l2_soft_then_int31:",
    "int 0x30",
    "l2_soft_then_int31_next:",
    "int 0x31",
    "2:",
    "hlt",
    "jmp 2b",
    "l2_vector_30_cpuid:",
    "push rax",
    "push rbx",
    "push rcx",
    "push rdx",
    "xor eax, eax",
    "xor ecx, ecx",
    "cpuid",
    "pop rdx",
    "pop rcx",
    "pop rbx",
    "pop rax",
    "iretq",
);

// `l2_soft_then_int31`: see the `global_asm!` above;
// `l2_soft_then_int31_next`: the INT 0x31 after its INT 0x30.
unsafe extern "C" {
    pub safe fn l2_soft_then_int31() -> !;
    pub fn l2_soft_then_int31_next();
    fn l2_vector_30_cpuid();
}

/// L2's IDT for `l2_soft_then_int31`: vector 0x30 present, 0x31 not.
pub static mut L2_IDT_SOFT: Idt32 = Idt32([[0; 2]; 0x32]);

/// An L2 IDT up to vector 0x31.
#[repr(C, align(16))]
pub struct Idt32(pub [[u64; 2]; 0x32]);

/// Fills [`L2_IDT_SOFT`] and returns its address and limit.
pub fn l2_idt_soft() -> (u64, u32) {
    // SAFETY: single vCPU; L2 is not running.
    let idt = unsafe { &mut *core::ptr::addr_of_mut!(L2_IDT_SOFT) };
    idt.0.fill([0; 2]);
    idt.0[0x30] = gate(l2_vector_30_cpuid as *const () as u64);
    (
        idt as *const Idt32 as u64,
        (core::mem::size_of::<Idt32>() - 1) as u32,
    )
}

/// An L2 entry that just spins (the injected event preempts it).
pub extern "C" fn spin() -> ! {
    loop {
        core::hint::spin_loop();
    }
}
