//! The `nested::*` self-test guest: a small SVM hypervisor running as L1.
//! It enables SVM, prepares vmcb12 for an L2 payload (code in this image,
//! see [`l2`]), runs it with VMRUN, handles its exits, and checks what L0's
//! emulation of SVM gave it. TSC tolerances are in ticks, from the
//! frequency in CPUID 0x4000_0010.
#![no_std]
#![no_main]

mod l1;
mod l2;

use core::arch::asm;
use guest_stubs::cpu::{cpuid, rdmsr, rdtsc, wrmsr};
use guest_stubs::exceptions::{catch, interrupts_taken};
use guest_stubs::hypercall::call;
use guest_stubs::verdict::{fail, pass};
use guest_stubs::{check, check_eq, println, StartParams};
use l1::Regs;
use l2::Task;
use svm::msr::{EFER, EFER_SVME, FS_BASE, IA32_TSC_ADJUST, KERNEL_GS_BASE, VM_CR, VM_HSAVE_PA};
use svm::{EventInfo, ExitCode, InterceptMisc1, InterceptMisc2, Vmcb};

const VMEXIT_INVALID: u64 = u64::MAX;
/// "Hardly any time passed" between two reads with a few exits between
/// them: 25 ms (see the tsc guest for why so generous).
const SMALL_US: u64 = 25_000;
/// vmcb12's TSC offset in the TSC tests: 2^40 ticks (minutes at GHz rates).
const O12: u64 = 1 << 40;

fn ticks(us: u64) -> u64 {
    u64::from(cpuid(0x4000_0010, 0)[0]) * us / 1000
}

#[unsafe(no_mangle)]
fn guest_main(params: &'static StartParams) -> ! {
    let Some(name) = params.test_name() else {
        fail(format_args!("unreadable test name"))
    };
    match name {
        "nested::cpuid_svm_leaf" => cpuid_svm_leaf(),
        "nested::vmrun_vmmcall_roundtrip" => vmrun_vmmcall_roundtrip(),
        "nested::vmrun_invalid_asid_zero" => vmrun_invalid(|v| v.control.guest_asid = 0),
        "nested::vmrun_invalid_efer_svme" => vmrun_invalid(|v| v.state.efer &= !EFER_SVME),
        "nested::vmrun_without_hsave_gp" => vmrun_without_hsave_gp(),
        "nested::intercept_cpuid_to_l1" => intercept_cpuid_to_l1(),
        "nested::msrpm_merge" => msrpm_merge(),
        "nested::iopm_merge" => iopm_merge(),
        "nested::exitinfo_and_next_rip" => exitinfo_and_next_rip(),
        "nested::eventinj_to_l2" => eventinj_to_l2(),
        "nested::vmload_vmsave" => vmload_vmsave(),
        "nested::gif_stgi_clgi" => gif_stgi_clgi(),
        "nested::tsc_offset_composes" => tsc_offset_composes(),
        "nested::tsc_offset_composes::exiting" => tsc_offset_composes_exiting(),
        "nested::tsc_l0_write_while_l2_runs" => tsc_l0_write_while_l2_runs(),
        "nested::tsc_exit_restores_l1_offset" => tsc_exit_restores_l1_offset(),
        "nested::tsc_l2_rdmsr_sees_l2_view" => tsc_l2_rdmsr_sees_l2_view(),
        "nested::tsc_l2_wrmsr_sets_l1_tsc" => tsc_l2_wrmsr_sets_l1_tsc(),
        "nested::tsc_adjust_shared" => tsc_adjust_shared(),
        "nested::freeze_restore_while_l2_runs" => freeze_restore_while_l2_runs(),
        "nested::cpu_refusal_reflected" => cpu_refusal_reflected(),
        "nested::runaway_l2_preempted" => runaway_l2_preempted(),
        "nested::l0_exception_reflected" => l0_exception_reflected(),
        "nested::l2_hypercall_refused" => l2_hypercall_refused(),
        "nested::l2_rdtscp_intercept" => l2_rdtscp_intercept(),
        "nested::pending_interrupt_preempts_l2" => pending_interrupt_preempts_l2(),
        other => fail(format_args!("no nested test named {other}")),
    }
    pass()
}

/// Enables SVM and prepares L2 with `task`/`input`.
fn setup(task: Task, input: u64) -> Regs {
    l1::enable_svm();
    l2::set(task, input);
    l1::prepare(l2::entry);
    Regs::default()
}

/// Runs L2 and checks it exited with `code`.
#[track_caller]
fn run_expect(regs: &mut Regs, code: ExitCode) {
    let (_, exit) = l1::run(regs);
    check_eq!(ExitCode::from_raw(exit), code, "L2's exit");
}

/// The SVM CPUID leaves offer SVM with NRIP save only; VM_CR and EFER.SVME
/// behave.
fn cpuid_svm_leaf() {
    check!(
        cpuid(0x8000_0001, 0)[2] & (1 << 2) != 0,
        "CPUID 0x80000001 ECX.SVM clear"
    );
    let [rev, asids, _, features] = cpuid(0x8000_000A, 0);
    check!(
        rev >= 1 && asids > 1,
        "leaf 0x8000000A: revision {rev}, {asids} ASIDs"
    );
    check!(features & (1 << 3) != 0, "NRIP save not offered");
    // Not emulated, so not offered: NP, TSC rate, VMCB clean, decode assists, pause filter, VGIF.
    let unoffered = (1 << 0) | (1 << 4) | (1 << 5) | (1 << 7) | (1 << 10) | (1 << 16);
    check_eq!(features & unoffered, 0, "features offered but not emulated");
    check_eq!(rdmsr(VM_CR), 0, "VM_CR");
    check_eq!(rdmsr(EFER) & EFER_SVME, 0, "EFER.SVME at start");
    wrmsr(EFER, rdmsr(EFER) | EFER_SVME);
    check!(rdmsr(EFER) & EFER_SVME != 0, "EFER.SVME did not stick");
}

/// VMRUN, two VMMCALL exits to L1 with their RAX and nRIP, then HLT; L1's
/// RAX comes back as vmcb12's address. Then 100 round trips, timed.
fn vmrun_vmmcall_roundtrip() {
    let mut regs = setup(Task::VmmcallTwice, 0);
    let v = l1::vmcb();
    v.control.intercept_misc2 |= InterceptMisc2::VMMCALL.bits();
    let (rax, code) = l1::run(&mut regs);
    check_eq!(rax, &raw const l1::VMCB12 as u64, "L1's RAX after VMRUN");
    check_eq!(ExitCode::from_raw(code), ExitCode::Vmmcall, "first exit");
    check_eq!(v.state.rax, 0x1001, "L2's RAX at the first VMMCALL");
    check_eq!(v.control.next_rip, v.state.rip + 3, "nRIP after VMMCALL");
    let (_, code) = l1::skip_and_run(&mut regs);
    check_eq!(
        (ExitCode::from_raw(code), v.state.rax),
        (ExitCode::Vmmcall, 0x1002),
        "second exit"
    );
    let (_, code) = l1::skip_and_run(&mut regs);
    check_eq!(ExitCode::from_raw(code), ExitCode::Hlt, "third exit");

    l2::set(Task::VmmcallLoop, 0);
    l1::prepare(l2::entry);
    l1::vmcb().control.intercept_misc2 |= InterceptMisc2::VMMCALL.bits();
    run_expect(&mut regs, ExitCode::Vmmcall);
    const N: u64 = 100;
    let l0_before = call(svm::guest_abi::HC_HOST_TICKS, 0, 0, 0);
    let t0 = rdtsc();
    for _ in 0..N {
        let (_, code) = l1::skip_and_run(&mut regs);
        check_eq!(ExitCode::from_raw(code), ExitCode::Vmmcall, "loop exit");
    }
    let per = (rdtsc() - t0) / N;
    let l0 = (call(svm::guest_abi::HC_HOST_TICKS, 0, 0, 0) - l0_before) / N;
    println!("nested round trip (L2 VMMCALL -> L1 -> VMRUN -> L2): {per} TSC ticks as L1 measures it, {l0} in L0");
}

/// A vmcb12 with one defect gives VMEXIT_INVALID, L1 goes on, and the
/// fixed vmcb12 runs.
fn vmrun_invalid(break_it: fn(&mut Vmcb)) {
    let mut regs = setup(Task::Yield, 0);
    let good = l1::vmcb().clone();
    break_it(l1::vmcb());
    let (_, code) = l1::run(&mut regs);
    check_eq!(code, VMEXIT_INVALID, "exit code of a bad vmcb12");
    *l1::vmcb() = good;
    run_expect(&mut regs, ExitCode::Hlt);
    // An illegal EVENTINJ (reserved type 1) is refused too.
    l1::prepare(l2::entry);
    l1::vmcb().control.event_inj = EventInfo::VALID | (1 << 8) | 0x20;
    let (_, code) = l1::run(&mut regs);
    check_eq!(
        code,
        VMEXIT_INVALID,
        "exit code with a reserved EVENTINJ type"
    );
}

/// L0 raises #GP for L2's RDMSR of an unknown MSR (L1's MSR map lets it
/// through to L0); L1 intercepts #GP, so L1 gets #VMEXIT(#GP), error code 0.
fn l0_exception_reflected() {
    let mut regs = setup(Task::RdmsrUnknown, 0);
    l1::vmcb().control.intercept_exceptions |= 1 << 13;
    run_expect(&mut regs, ExitCode::Exception(13));
    check_eq!(
        l1::vmcb().control.exit_info1,
        0,
        "#GP error code in EXITINFO1"
    );
}

/// An L2 hypercall that is not a test hook is #UD (L1 intercepts #UD).
fn l2_hypercall_refused() {
    let mut regs = setup(Task::EchoHypercall, 0);
    l1::vmcb().control.intercept_exceptions |= 1 << 6;
    run_expect(&mut regs, ExitCode::Exception(6));
}

/// L1 intercepts RDTSCP only: L2's RDTSCP reaches L1 as an RDTSCP exit
/// (even under QEMU TCG, which reports it as RDTSC), nRIP past its 3 bytes.
fn l2_rdtscp_intercept() {
    if !guest_stubs::cpu::has_rdtscp() {
        fail(format_args!("RDTSCP not available to L1"));
    }
    let mut regs = setup(Task::Rdtscp, 0);
    l1::vmcb().control.intercept_misc2 |= InterceptMisc2::RDTSCP.bits();
    run_expect(&mut regs, ExitCode::Rdtscp);
    let v = l1::vmcb();
    check_eq!(v.control.next_rip, v.state.rip + 3, "RDTSCP nRIP");
}

/// An interrupt L0 holds for L1 ends L2's run at once when L1 intercepts
/// INTR (L2 does not get back to its loop), and reaches L1's handler when
/// L1 sets GIF again (its STGI after VMRUN).
fn pending_interrupt_preempts_l2() {
    let mut regs = setup(Task::QueueAndSpin, 0x41);
    l1::vmcb().control.intercept_misc1 |= InterceptMisc1::INTR.bits();
    // SAFETY: the runtime IDT counts vector 0x41; L1 takes interrupts now.
    unsafe { asm!("sti", options(nomem, nostack)) };
    // L0's watchdog may preempt L2 (INTR, which L1 intercepts) before it
    // queues the interrupt: then L1 just runs L2 on.
    let mut runs = 0;
    while interrupts_taken(0x41) == 0 && runs < 50 {
        let (_, code) = l1::run(&mut regs);
        check_eq!(ExitCode::from_raw(code), ExitCode::Intr, "L2's exit");
        runs += 1;
    }
    // SAFETY: back to interrupts off.
    unsafe { asm!("cli", options(nomem, nostack)) };
    check_eq!(
        interrupts_taken(0x41),
        1,
        "interrupt 0x41 in L1 after its STGI"
    );
    check_eq!(
        l2::result(0),
        0,
        "L2 loop iterations after queueing (the exit must come first)"
    );
}

/// An L2 that never exits comes back to L1 as #VMEXIT(INTR) when L1
/// intercepts INTR: L0's watchdog interrupt is reflected (after L0 took it).
fn runaway_l2_preempted() {
    let mut regs = setup(Task::Yield, 0);
    l1::prepare(l2::spin);
    l1::vmcb().control.intercept_misc1 |= InterceptMisc1::INTR.bits();
    run_expect(&mut regs, ExitCode::Intr);
    // Twice, to show L2 resumes where it was and is preempted again.
    run_expect(&mut regs, ExitCode::Intr);
}

/// Run with L0's vmcb12 checks off (the hypervisor's test configuration):
/// a vmcb12 whose EFER lacks SVME reaches the CPU, which refuses it; L1
/// must still see VMEXIT_INVALID and go on to run a good vmcb12.
fn cpu_refusal_reflected() {
    let mut regs = setup(Task::Yield, 0);
    let good = l1::vmcb().clone();
    l1::vmcb().state.efer &= !EFER_SVME;
    let (rax, code) = l1::run(&mut regs);
    check_eq!(
        code,
        VMEXIT_INVALID,
        "exit code when the CPU refuses vmcb12"
    );
    check_eq!(rax, &raw const l1::VMCB12 as u64, "L1's RAX");
    *l1::vmcb() = good;
    run_expect(&mut regs, ExitCode::Hlt);
}

/// VMRUN without EFER.SVME is #UD, without VM_HSAVE_PA #GP; VM_HSAVE_PA
/// refuses an unaligned address; VMRUN refuses one outside L1's memory.
fn vmrun_without_hsave_gp() {
    let vmrun = |addr: u64| {
        catch(3, || {
            // SAFETY: the fault is expected and skipped (VMRUN is 3 bytes).
            unsafe { asm!("vmrun rax", in("rax") addr, options(nostack)) };
        })
    };
    l1::prepare(l2::entry);
    let addr = &raw const l1::VMCB12 as u64;
    check_eq!(
        vmrun(addr).map(|f| f.vector),
        Some(6),
        "VMRUN with EFER.SVME clear"
    );
    wrmsr(EFER, rdmsr(EFER) | EFER_SVME);
    check_eq!(
        vmrun(addr).map(|f| (f.vector, f.error_code)),
        Some((13, 0)),
        "VMRUN without VM_HSAVE_PA"
    );
    let wr = catch(2, || wrmsr(VM_HSAVE_PA, 0x1234));
    check_eq!(
        wr.map(|f| f.vector),
        Some(13),
        "WRMSR VM_HSAVE_PA unaligned"
    );
    l1::enable_svm();
    check_eq!(
        vmrun(addr + 8).map(|f| f.vector),
        Some(13),
        "VMRUN of an unaligned vmcb12"
    );
    check_eq!(
        vmrun(1 << 39).map(|f| f.vector),
        Some(13),
        "VMRUN of a vmcb12 outside L1 memory"
    );
}

/// With CPUID intercepted, L2's CPUID is L1's to answer; without, L0
/// answers it and L1 sees nothing.
fn intercept_cpuid_to_l1() {
    let mut regs = setup(Task::Cpuid, 0);
    let v = l1::vmcb();
    v.control.intercept_misc1 |= InterceptMisc1::CPUID.bits();
    run_expect(&mut regs, ExitCode::Cpuid);
    check_eq!(v.state.rax, 0x4000_0000, "leaf in L2's EAX");
    v.state.rax = 0xc0ffee;
    regs.gpr[0] = 1; // rbx
    regs.gpr[1] = 2; // rcx
    regs.gpr[2] = 3; // rdx
    let (_, code) = l1::skip_and_run(&mut regs);
    check_eq!(
        ExitCode::from_raw(code),
        ExitCode::Hlt,
        "exit after the emulated CPUID"
    );
    check_eq!(
        [l2::result(0), l2::result(1), l2::result(2), l2::result(3)],
        [0xc0ffee, 1, 2, 3],
        "L1's answer"
    );

    let mut regs = setup(Task::Cpuid, 0);
    run_expect(&mut regs, ExitCode::Hlt);
    check_eq!(
        l2::result(1),
        u64::from(u32::from_le_bytes(*b"SVMR")),
        "L0's signature (EBX) in L2"
    );
}

/// L1 intercepts reads of FS_BASE (which L0 passes through): L2's read
/// exits to L1. The merged map passes through only what neither L0 nor L1
/// intercepts: KERNEL_GS_BASE (nobody's) reads the value L1 left, with no
/// exit at all; EFER, IA32_TSC and IA32_TSC_ADJUST are L0's and L1 lets them
/// through, so L0 emulates them for L2 (one MSR exit each, no exit to L1):
/// EFER as L0 shows it, the L2 view of the TSC (under QEMU TCG a
/// pass-through RDMSR of the TSC reads 0), and a TSC_ADJUST write that L1
/// then reads back (TCG would drop a pass-through write).
fn msrpm_merge() {
    const KGS: u64 = 0x0000_7b47_5342_1000; // canonical
    const ADJUST: u64 = 0x1234_5678;
    let mut regs = setup(Task::Msrs, ADJUST);
    l1::intercept_msr(FS_BASE, true, false);
    l1::vmcb().control.tsc_offset = O12;
    wrmsr(KERNEL_GS_BASE, KGS);
    let adjust0 = rdmsr(IA32_TSC_ADJUST);
    run_expect(&mut regs, ExitCode::Msr);
    let v = l1::vmcb();
    check_eq!(
        (regs.gpr[1] as u32, v.control.exit_info1),
        (FS_BASE, 0),
        "MSR exit: ECX and read/write"
    );
    v.state.rax = 0x5678;
    regs.gpr[2] = 0x1234; // rdx
    let t1 = rdtsc();
    let (_, code) = l1::skip_and_run(&mut regs);
    let t2 = rdtsc();
    check_eq!(
        ExitCode::from_raw(code),
        ExitCode::Hlt,
        "next exit (EFER, KERNEL_GS_BASE, TSC and TSC_ADJUST must not reach L1)"
    );
    check_eq!(l2::result(0), 0x1234_0000_5678, "FS_BASE as L1 emulated it");
    check_eq!(
        l2::result(6),
        0x0101_0001,
        "L0's MSR exits for L2's EFER, KERNEL_GS_BASE, TSC, TSC_ADJUST (a byte each)"
    );
    let efer = l2::result(1);
    check!(
        efer & EFER_SVME != 0 && efer & (1 << 8) != 0,
        "L2's EFER from L0: {efer:#x}"
    );
    check_eq!(
        l2::result(2),
        KGS,
        "L2's KERNEL_GS_BASE (L1's, passed through)"
    );
    let tsc = l2::result(3);
    check!(
        t1 + O12 <= tsc && tsc <= t2 + O12,
        "L2's RDMSR TSC {tsc:#x}, L1 read {t1:#x} and {t2:#x}, o12 {O12:#x}"
    );
    check_eq!(
        (adjust0, rdmsr(IA32_TSC_ADJUST)),
        (0, ADJUST),
        "TSC_ADJUST before the run, and after L2 wrote it, as L1 reads it"
    );
}

/// L1 intercepts port 0x80: L2's OUT 0x80 exits to L1; L2's console
/// output on COM1 (L0's, not L1's) goes to the host console.
fn iopm_merge() {
    let mut regs = setup(Task::Ports, 0);
    l1::intercept_port(0x80);
    run_expect(&mut regs, ExitCode::Ioio);
    let info = svm::IoioInfo::from_exit_info1(l1::vmcb().control.exit_info1);
    check!(
        info.is_some_and(|i| i.port == 0x80 && i.size == 1),
        "IOIO exit info {info:?}"
    );
    let (_, code) = l1::skip_and_run(&mut regs);
    check_eq!(
        ExitCode::from_raw(code),
        ExitCode::Hlt,
        "exit after the console line"
    );
}

/// EXITINFO and nRIP as the APM defines them: CPUID (nRIP = RIP + 2),
/// WRMSR (EXITINFO1 = 1), 16-bit IN (EXITINFO1 decodes, EXITINFO2 = nRIP).
fn exitinfo_and_next_rip() {
    let mut regs = setup(Task::ExitInfo, 0);
    let v = l1::vmcb();
    v.control.intercept_misc1 |= InterceptMisc1::CPUID.bits();
    l1::intercept_msr(FS_BASE, false, true);
    l1::intercept_port(0x71);
    l1::intercept_port(0x72);
    run_expect(&mut regs, ExitCode::Cpuid);
    check_eq!(v.control.next_rip, v.state.rip + 2, "CPUID nRIP");
    let (_, code) = l1::skip_and_run(&mut regs);
    check_eq!(ExitCode::from_raw(code), ExitCode::Msr, "second exit");
    check_eq!(
        (v.control.exit_info1, v.control.next_rip - v.state.rip),
        (1, 2),
        "WRMSR exitinfo1, length"
    );
    let (_, code) = l1::skip_and_run(&mut regs);
    check_eq!(ExitCode::from_raw(code), ExitCode::Ioio, "third exit");
    let io = svm::IoioInfo::from_exit_info1(v.control.exit_info1);
    check!(
        io.is_some_and(|i| i.port == 0x71 && i.size == 2 && i.direction == svm::IoDirection::In),
        "IN exitinfo1 {io:?}"
    );
    check_eq!(
        v.control.exit_info2,
        v.state.rip + 3,
        "IOIO exitinfo2 (next RIP of `in ax, 0x71`)"
    );
    check_eq!(v.control.next_rip, v.control.exit_info2, "IOIO nRIP");
    v.state.rax = 0xbeef;
    let (_, code) = l1::skip_and_run(&mut regs);
    check_eq!(
        (ExitCode::from_raw(code), l2::result(1)),
        (ExitCode::Hlt, 0xbeef),
        "IN result in L2"
    );
}

/// An interrupt injected through vmcb12's EVENTINJ reaches L2's handler
/// before its first instruction; the valid bit is clear after the exit.
fn eventinj_to_l2() {
    let mut regs = setup(Task::Yield, 0);
    l1::prepare(l2::spin);
    let (idt, limit) = l2::l2_idt();
    let v = l1::vmcb();
    v.state.idtr = svm::VmcbSegment::new(0, 0, limit, idt);
    v.control.event_inj = EventInfo::external_interrupt(0x30).0;
    run_expect(&mut regs, ExitCode::Hlt);
    check_eq!(
        l2::GOT_VECTOR.load(core::sync::atomic::Ordering::SeqCst),
        0x30,
        "vector L2's handler saw"
    );
    check_eq!(
        v.control.event_inj & EventInfo::VALID,
        0,
        "EVENTINJ valid bit after the exit"
    );
}

/// VMSAVE captures, VMLOAD installs (seen through the MSRs L0 passes
/// through), both on L1's memory; bad addresses are #GP.
fn vmload_vmsave() {
    l1::enable_svm();
    static mut A: Vmcb = Vmcb::new();
    static mut B: Vmcb = Vmcb::new();
    let (a, b) = (&raw mut A, &raw mut B);
    wrmsr(KERNEL_GS_BASE, 0x4444);
    check_eq!(vmsave(a as u64), None, "VMSAVE");
    // SAFETY: L1 owns these statics; L2 is not running.
    let (a, b) = unsafe { (&mut *a, &mut *b) };
    check_eq!(a.state.kernel_gs_base, 0x4444, "VMSAVE'd KernelGsBase");
    *b = a.clone();
    b.state.fs.base = 0x1111_0000;
    b.state.kernel_gs_base = 0x2222;
    check_eq!(vmload(b as *mut Vmcb as u64), None, "VMLOAD");
    check_eq!(
        (rdmsr(FS_BASE), rdmsr(KERNEL_GS_BASE)),
        (0x1111_0000, 0x2222),
        "after VMLOAD"
    );
    wrmsr(FS_BASE, 0);
    check_eq!(vmsave(a as *mut Vmcb as u64), None, "VMSAVE again");
    check_eq!(a.state.fs.base, 0, "VMSAVE'd FS base");
    check_eq!(
        vmload(b as *mut Vmcb as u64 + 16).map(|f| f.vector),
        Some(13),
        "VMLOAD unaligned"
    );
    check_eq!(
        vmsave(1 << 39).map(|f| f.vector),
        Some(13),
        "VMSAVE outside L1 memory"
    );
}

/// VMSAVE to `p`, skipping it if it faults.
fn vmsave(p: u64) -> Option<guest_stubs::exceptions::Fault> {
    catch(3, || {
        // SAFETY: emulated by L0 on L1's memory; a fault for a bad address
        // is expected and skipped (VMSAVE is 3 bytes).
        unsafe { asm!("vmsave rax", in("rax") p, options(nostack)) };
    })
}

/// VMLOAD from `p`, skipping it if it faults.
fn vmload(p: u64) -> Option<guest_stubs::exceptions::Fault> {
    catch(3, || {
        // SAFETY: as for vmsave.
        unsafe { asm!("vmload rax", in("rax") p, options(nostack)) };
    })
}

/// With GIF clear, an interrupt L0 queues for L1 waits; STGI lets it in.
fn gif_stgi_clgi() {
    l1::enable_svm();
    // SAFETY: CLGI/STGI are emulated by L0; the runtime IDT counts vector 0x40.
    unsafe { asm!("sti", "clgi", options(nomem, nostack)) };
    check_eq!(
        call(svm::guest_abi::HC_QUEUE_INTERRUPT, 0x40, 0, 0),
        0,
        "queue hypercall"
    );
    for _ in 0..100 {
        core::hint::spin_loop();
    }
    let held = interrupts_taken(0x40);
    // SAFETY: as above.
    unsafe { asm!("stgi", "nop", options(nomem, nostack)) };
    let after = interrupts_taken(0x40);
    // SAFETY: interrupts back off.
    unsafe { asm!("cli", options(nomem, nostack)) };
    check_eq!(
        (held, after),
        (0, 1),
        "interrupt 0x40 taken (GIF clear, then set)"
    );
}

/// L2 reads host + L1 offset + vmcb12's offset.
fn tsc_offset_composes() {
    let mut regs = setup(Task::Rdtsc, 0);
    l1::vmcb().control.tsc_offset = O12;
    let t1 = rdtsc();
    run_expect(&mut regs, ExitCode::Hlt);
    let t2 = rdtsc();
    let l2 = l2::result(0);
    check!(
        t1 + O12 <= l2 && l2 <= t2 + O12,
        "L2 read {l2:#x}, L1 read {t1:#x} and {t2:#x}, o12 {O12:#x}"
    );
}

/// With RDTSC exiting (the hypervisor's configuration for this test), L0
/// emulates L2's RDTSC and RDMSR IA32_TSC: both include vmcb12's offset.
fn tsc_offset_composes_exiting() {
    let mut regs = setup(Task::RdmsrTsc, 0);
    l1::vmcb().control.tsc_offset = O12;
    let t1 = rdtsc();
    run_expect(&mut regs, ExitCode::Hlt);
    let t2 = rdtsc();
    let (a, m, b) = (l2::result(0), l2::result(1), l2::result(2));
    check!(
        t1 + O12 <= a && a <= m && m <= b && b <= t2 + O12,
        "L2: RDTSC {a:#x}, RDMSR {m:#x}, RDTSC {b:#x}; L1 read {t1:#x} and {t2:#x}, o12 {O12:#x}"
    );
}

/// Seed 000: L0 moves L1's offset by Δ while L2 runs. L2 sees Δ at once,
/// L1 sees Δ after the exit, and the next VMRUN gives L2 = L1' + o12.
fn tsc_l0_write_while_l2_runs() {
    let delta = 1u64 << 36;
    let mut regs = setup(Task::MoveL1Tsc, delta);
    l1::vmcb().control.tsc_offset = O12;
    let t0 = rdtsc();
    run_expect(&mut regs, ExitCode::Hlt);
    let t1 = rdtsc();
    let (a, b) = (l2::result(0), l2::result(1));
    check_eq!(l2::result(6), 0, "HC_TSC_MOVE_L1 result");
    check!(
        b - a >= delta && b - a - delta < ticks(SMALL_US),
        "L2 moved by {:#x}, expected {delta:#x}",
        b - a
    );
    check!(
        t1 - t0 >= delta && t1 - t0 - delta < ticks(SMALL_US),
        "L1 moved by {:#x}, expected {delta:#x}",
        t1 - t0
    );
    l2::set(Task::Rdtsc, 0);
    l1::prepare(l2::entry);
    l1::vmcb().control.tsc_offset = O12;
    let t2 = rdtsc();
    run_expect(&mut regs, ExitCode::Hlt);
    let c = l2::result(0);
    check!(
        c >= t2 + O12 && c - (t2 + O12) < ticks(SMALL_US),
        "next run: L2 {c:#x}, L1' {t2:#x} + o12"
    );
}

/// After the exit L1 runs at its own offset, copied back from hsave, not
/// derived from vmcb12: L2 rewrites vmcb12's TSC offset in L1's memory
/// while it runs, and L1's TSC must not move by either offset. The new
/// value in vmcb12 then takes effect cleanly at the next VMRUN.
fn tsc_exit_restores_l1_offset() {
    let mut regs = setup(Task::PokeVmcb12Offset, 2 * O12);
    l1::vmcb().control.tsc_offset = O12;
    let t0 = rdtsc();
    run_expect(&mut regs, ExitCode::Hlt);
    let t1 = rdtsc();
    check!(
        t1 >= t0 && t1 - t0 < ticks(SMALL_US),
        "L1's TSC across the run: {t0:#x} then {t1:#x}"
    );
    let seen = l2::result(0);
    check!(
        seen >= t0 + O12 && seen <= t1 + O12,
        "L2 ran with o12 = {O12:#x}: {seen:#x}"
    );
    let v = l1::vmcb();
    check_eq!(
        v.control.tsc_offset,
        2 * O12,
        "vmcb12's offset as L2 left it (L0 does not write controls back)"
    );
    l2::set(Task::Rdtsc, 0);
    v.state.rip = l2::entry as *const () as u64;
    let t2 = rdtsc();
    run_expect(&mut regs, ExitCode::Hlt);
    let l2 = l2::result(0);
    check!(
        l2 >= t2 + 2 * O12 && l2 - (t2 + 2 * O12) < ticks(SMALL_US),
        "L2 {l2:#x} vs L1 {t2:#x} + 2*o12"
    );
}

/// RDMSR IA32_TSC in L2, not intercepted by L1: the L2 view.
fn tsc_l2_rdmsr_sees_l2_view() {
    let mut regs = setup(Task::RdmsrTsc, 0);
    l1::vmcb().control.tsc_offset = O12;
    run_expect(&mut regs, ExitCode::Hlt);
    let (a, m, b) = (l2::result(0), l2::result(1), l2::result(2));
    check!(
        a <= m && m <= b && m >= O12,
        "L2: RDTSC {a:#x}, RDMSR {m:#x}, RDTSC {b:#x}"
    );
}

/// WRMSR IA32_TSC in L2, not intercepted by L1, sets L1's TSC; L2 keeps
/// vmcb12's offset on top; TSC_ADJUST moves by the same delta.
fn tsc_l2_wrmsr_sets_l1_tsc() {
    let v = 1u64 << 44;
    let mut regs = setup(Task::WrmsrTsc, v);
    l1::vmcb().control.tsc_offset = O12;
    let adj0 = rdmsr(IA32_TSC_ADJUST);
    let t0 = rdtsc();
    run_expect(&mut regs, ExitCode::Hlt);
    let t1 = rdtsc();
    check!(
        t1 >= v && t1 - v < ticks(SMALL_US),
        "L1's TSC after L2 wrote {v:#x}: {t1:#x}"
    );
    let c = l2::result(0);
    check!(
        c >= v + O12 && c - (v + O12) < ticks(SMALL_US),
        "L2 after its write: {c:#x}"
    );
    let moved = rdmsr(IA32_TSC_ADJUST).wrapping_sub(adj0);
    let expected = v.wrapping_sub(t0);
    check!(
        expected.wrapping_sub(moved) < ticks(SMALL_US),
        "TSC_ADJUST moved {moved:#x}, expected about {expected:#x}"
    );
}

/// TSC_ADJUST is one register for L1 and L2.
fn tsc_adjust_shared() {
    let a = 1u64 << 38;
    let mut regs = setup(Task::WriteAdjust, a);
    let t0 = rdtsc();
    run_expect(&mut regs, ExitCode::Hlt);
    let t1 = rdtsc();
    check_eq!(rdmsr(IA32_TSC_ADJUST), a, "L1 reads what L2 wrote");
    check!(
        t1 - t0 >= a && t1 - t0 - a < ticks(SMALL_US),
        "L1's TSC moved by {:#x}, expected {a:#x}",
        t1 - t0
    );
}

/// Freeze (pause policy) and restore while L2 runs: 100 ms pass by the PIT,
/// neither L2 nor L1 sees them, and L2 keeps o12 on top.
fn freeze_restore_while_l2_runs() {
    let mut regs = setup(Task::FreezePause, 100_000);
    l1::vmcb().control.tsc_offset = O12;
    let t0 = rdtsc();
    run_expect(&mut regs, ExitCode::Hlt);
    let t1 = rdtsc();
    let (a, b) = (l2::result(0), l2::result(1));
    check_eq!(l2::result(6), 0, "freeze hypercall result");
    check!(
        b >= a && b - a < ticks(SMALL_US),
        "L2 across the freeze: {a:#x} then {b:#x}"
    );
    check!(
        a >= t0 + O12 && b <= t1 + O12,
        "L2 {a:#x}..{b:#x} not within L1 {t0:#x}..{t1:#x} + o12"
    );
    check!(
        t1 - t0 < 2 * ticks(SMALL_US),
        "L1 saw {} ticks pass (pause policy)",
        t1 - t0
    );
}
