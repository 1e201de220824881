//! The hostile L1: a fuzzer run by the kernel's `fuzz=` command-line word
//! (`cargo xtask fuzz`). Iteration `i` of seed `S` takes its random stream
//! from `(S, i)` only, so it replays on its own. It builds a valid vmcb12
//! for an L2 sandbox ([`sandbox`]), corrupts 1-4 things ([`vmcb12`]),
//! sometimes first does hostile SVM things itself ([`actions`]), VMRUNs,
//! and checks what it sees against what the APM says L1 must see
//! ([`svm::fuzz`] has the oracles). Mismatches are printed with a
//! reproducer (seed, iteration, corrupted fields); counts and a histogram
//! of outcomes go to a record in L1's memory that L0 reads
//! ([`svm::fuzz::Record`]), also when L0 stopped the VM mid-iteration.
#![no_std]
#![no_main]

mod actions;
#[path = "../nested/l1.rs"]
#[allow(dead_code)]
mod l1;
mod report;
mod sandbox;
mod switch;
mod vmcb12;

use core::arch::asm;
use core::ptr::addr_of_mut;
use guest_stubs::cpu::{cpuid, rdmsr, rdtsc, wrmsr};
use guest_stubs::verdict::{fail, pass};
use guest_stubs::{println, StartParams};
use report::{record, Ctx, Shown};
use svm::fuzz::{Record, Rng, Spec};
use svm::msr::{EFER, EFER_SVME, VM_HSAVE_PA};
use svm::{EventInfo, Vmcb};
use switch::{stgi, vmrun_checked, Outcome};
use vmcb12::{Corrupted, Mode};

/// RAM the fuzz VM must have (the sandbox sits at 4 MiB).
const MIN_RAM: u64 = 8 << 20;
/// A progress line every this many iterations: where an emulator crash
/// happened, to the nearest line (`cargo xtask fuzz` restarts after it).
const PROGRESS_EVERY: u64 = 100;
/// Runs this short are replays: every iteration gets a line, so a crash of
/// the emulator names its iteration exactly.
const REPLAY_MAX: u64 = PROGRESS_EVERY;

/// L1's SVM state as L1 set it (its own bookkeeping, to know what to
/// expect and what to restore).
#[derive(Debug)]
pub(crate) struct Svm {
    pub svme: bool,
    pub hsave: bool,
    pub gif_clear: bool,
    pub vm_cr_touched: bool,
    pub garbage_loaded: bool,
}

/// Debug and task-priority registers are one set for L1 and L2 (DR0-DR3
/// are in no VMCB; CR8 is the real TPR when V_INTR_MASKING is off): an L2
/// may have written them, so every iteration starts from the reset values.
fn reset_shared_registers() {
    let (dr0, dr1, dr2, dr3, dr7, cr8): (u64, u64, u64, u64, u64, u64);
    // SAFETY: reads of debug registers and CR8 at CPL 0.
    unsafe {
        asm!("mov {}, dr0", out(reg) dr0, options(nomem, nostack));
        asm!("mov {}, dr1", out(reg) dr1, options(nomem, nostack));
        asm!("mov {}, dr2", out(reg) dr2, options(nomem, nostack));
        asm!("mov {}, dr3", out(reg) dr3, options(nomem, nostack));
        asm!("mov {}, dr7", out(reg) dr7, options(nomem, nostack));
        asm!("mov {}, cr8", out(reg) cr8, options(nomem, nostack));
    }
    if dr7 != 0x400 || (dr0 | dr1 | dr2 | dr3) != 0 {
        // SAFETY: breakpoints off first, then the addresses cleared.
        unsafe {
            asm!("mov dr7, {}", in(reg) 0x400u64, options(nomem, nostack));
            asm!("mov dr0, {0}", "mov dr1, {0}", "mov dr2, {0}", "mov dr3, {0}",
                in(reg) 0u64, options(nomem, nostack));
            asm!("mov dr6, {}", in(reg) 0xffff_0ff0u64, options(nomem, nostack));
        }
    }
    if cr8 != 0 {
        // SAFETY: L1 runs with interrupts off; TPR 0 is its start value.
        unsafe { asm!("mov cr8, {}", in(reg) 0u64, options(nomem, nostack)) };
    }
}

/// Puts L1's SVM state back to the start of an iteration.
fn reset(svm: &mut Svm) {
    reset_shared_registers();
    // VM_CR first: with SVMDIS set, setting EFER.SVME is #GP.
    if svm.vm_cr_touched {
        wrmsr(svm::msr::VM_CR, 0);
        svm.vm_cr_touched = false;
    }
    if !svm.svme {
        wrmsr(EFER, rdmsr(EFER) | EFER_SVME);
        svm.svme = true;
    }
    if !svm.hsave {
        wrmsr(VM_HSAVE_PA, addr_of_mut!(l1::HSAVE) as u64);
        svm.hsave = true;
    }
    if svm.gif_clear {
        stgi();
        svm.gif_clear = false;
    }
    if svm.garbage_loaded {
        actions::restore_vmload_state();
        svm.garbage_loaded = false;
    }
}

#[unsafe(no_mangle)]
fn guest_main(params: &'static StartParams) -> ! {
    let Some(spec) = params.test_name().and_then(Spec::parse_name) else {
        fail(format_args!("not a fuzz spec: {:?}", params.test_name()))
    };
    if params.memory_size < MIN_RAM {
        fail(format_args!("the fuzz L1 needs {MIN_RAM:#x} bytes of RAM"));
    }
    let rec = record();
    *rec = Record::new();
    rec.next = spec.first;
    let max_phys = (cpuid(0x8000_0008, 0)[0] & 0xff) as u8;
    let leaf = |l: u32| cpuid(l, 0);
    let cr4_allowed = svm::fuzz::offered(svm::fuzz::CR4_BASE, &svm::fuzz::CR4_FEATURES, leaf);
    let efer_allowed = svm::fuzz::offered(svm::fuzz::EFER_BASE, &svm::fuzz::EFER_FEATURES, leaf);
    let flush_by_asid = cpuid(0x8000_000a, 0)[3] & (1 << 6) != 0;
    let khz = u64::from(cpuid(0x4000_0010, 0)[0]);
    let deadline = match spec.ms {
        0 => u64::MAX,
        ms => rdtsc().saturating_add(ms.saturating_mul(khz)),
    };
    sandbox::map();
    // Fixed maps (replayable): L1 intercepts every other MSR access kind
    // and half of the ports.
    l1::msrpm().fill(0x5a);
    l1::iopm().fill(0x0f);
    l1::enable_svm();
    actions::save_vmload_state();
    let mut svm = Svm {
        svme: true,
        hsave: true,
        gif_clear: false,
        vm_cr_touched: false,
        garbage_loaded: false,
    };
    let mut ctx = Ctx {
        seed: spec.seed,
        iteration: spec.first,
        mode: Mode::Vmmcall,
        fields: Corrupted::default(),
        action: "none",
        ram: params.memory_size,
        max_phys,
        cr4_allowed,
        efer_allowed,
        flush_by_asid,
        lines: 0,
        l2_may_write_tsc: false,
        replay: false,
    };
    let end = spec.first.saturating_add(spec.count);
    let mut i = spec.first;
    while i < end && rdtsc() < deadline {
        rec.next = i;
        ctx.replay = spec.count <= REPLAY_MAX;
        if !ctx.replay && i % PROGRESS_EVERY == 0 && i != spec.first {
            println!("fuzz: progress seed={} iter={i}", spec.seed);
        }
        ctx.iteration = i;
        reset(&mut svm);
        iteration(&mut ctx, &mut svm);
        rec.done += 1;
        i += 1;
    }
    rec.next = i;
    println!(
        "fuzz: L1 done seed={} iterations {}..{i}: {} mismatches, {} emulator deviations, {} legal vmcb12s refused",
        spec.seed, spec.first, rec.mismatches, rec.deviations, rec.invalid_but_legal
    );
    pass()
}

/// One iteration.
fn iteration(ctx: &mut Ctx, svm: &mut Svm) {
    let mut rng = Rng::for_iteration(ctx.seed, ctx.iteration);
    let mode = match rng.below(3) {
        0 => Mode::Vmmcall,
        1 => Mode::Bytes,
        _ => Mode::Privileged,
    };
    ctx.mode = mode;
    ctx.action = "none";
    let mut code = [0u8; 48];
    let len = vmcb12::payload(&mut rng, mode, &mut code);
    ctx.l2_may_write_tsc = code[..len].windows(2).any(|w| w == [0x0f, 0x30]);
    let offset = rng.below(64) as usize;
    sandbox::rebuild(&code[..len], offset);
    let entry = sandbox::CODE + offset as u64;
    let v = l1::vmcb();
    vmcb12::template(v, &mut rng, mode, entry, ctx.flush_by_asid);
    // SAFETY: L1's own static; L2 cannot reach it.
    let template = unsafe { &mut *addr_of_mut!(SENT) };
    if ctx.replay {
        template.clone_from(v);
    }
    ctx.fields = vmcb12::corrupt(v, &mut rng, ctx.ram, mode);
    if ctx.replay {
        println!(
            "fuzz: progress seed={} iter={} mode={} fields={} code={:02x?}",
            ctx.seed,
            ctx.iteration,
            mode.name(),
            ctx.fields,
            &code[..len]
        );
        print_corruption(template, v);
    }
    let mut regs = l1::Regs::default();
    v.state.rax = if ctx.fields.fields[..ctx.fields.len].contains(&24) {
        v.state.rax
    } else {
        vmcb12::l2_registers(&mut rng, ctx.ram, &mut regs)
    };
    // A corrupted RAX is L2's VMSAVE/VMLOAD address too: L1 gives L2 no
    // nested paging, so an unintercepted VMSAVE there would write over
    // L1's own code (seed 5 iteration 813799), as it would on hardware.
    // L1's survival, like the CR3 rule in `vmcb12::corrupt`.
    if sandbox::is_l1_page(v.state.rax, ctx.ram) {
        v.state.rax = sandbox::DATA + (v.state.rax & 0x7fff);
    }
    // L1's survival when L2 would run without long-mode paging (L0 runs
    // L2 in every mode): the sandbox's 4-level tables no longer fence L2 in
    // (with paging off, or 32-bit/PAE paging of those tables, L2 reaches L1's
    // memory, as on hardware: L1 gives it no nested paging), so L2 runs only
    // HLT from its code page, on its own stack, and an event it takes ends
    // in a shutdown (IDT limit 0; a real-mode IVT entry would send it into
    // L1's memory). Compatibility mode keeps the tables and the payload.
    let st = &mut v.state;
    if st.efer & svm::msr::EFER_LME == 0 || st.cr0 & svm::cr::CR0_PG == 0 {
        sandbox::rebuild(&[], offset);
        st.rip = entry;
        st.idtr.limit = 0;
        if sandbox::is_l1_page(st.rsp, ctx.ram)
            || sandbox::is_l1_page(st.rsp.wrapping_sub(64), ctx.ram)
        {
            st.rsp = sandbox::STACK_TOP;
        }
    }
    if rng.one_in(3) {
        for _ in 0..1 + rng.below(2) {
            actions::one(ctx, svm, &mut rng);
            if ctx.replay {
                println!("fuzz: action {}", ctx.action);
            }
        }
    }
    let steps = match mode {
        Mode::Vmmcall => 2,
        _ => 1 + rng.below(8),
    };
    let pa = addr_of_mut!(l1::VMCB12) as u64;
    for _ in 0..steps {
        if !run_once(ctx, svm, &mut regs, pa) {
            break;
        }
    }
}

/// In replays: the bytes of vmcb12 the corruptions changed, as
/// `offset: template -> corrupted` (offsets into the 4 KiB page).
fn print_corruption(template: &Vmcb, v: &Vmcb) {
    let (a, b) = (template.as_bytes(), v.as_bytes());
    for (at, (x, y)) in a.iter().zip(b.iter()).enumerate() {
        if x != y {
            println!("fuzz: vmcb12[{at:#05x}]: {x:02x} -> {y:02x}");
        }
    }
}

/// Copy of vmcb12 as L1 gave it to VMRUN, for the oracles.
static mut SENT: Vmcb = Vmcb::new();

/// Runs vmcb12 once and judges the outcome. Returns whether L2 can go on
/// (a #DB single-step trap, or VMMCALL which L1 skips).
fn run_once(ctx: &mut Ctx, svm: &mut Svm, regs: &mut l1::Regs, pa: u64) -> bool {
    let v = l1::vmcb();
    // SAFETY: L1's own static; L2 cannot reach it.
    let sent = unsafe { &mut *addr_of_mut!(SENT) };
    sent.clone_from(v);
    let outcome = vmrun_checked(ctx, regs, pa, svm);
    judge_vmrun(ctx, svm, sent, v, outcome, true)
}

/// The oracle for a VMRUN of `sent` (now `v` after it): returns whether
/// L2 can be resumed.
pub(crate) fn judge_vmrun(
    ctx: &mut Ctx,
    svm: &Svm,
    sent: &Vmcb,
    v: &mut Vmcb,
    outcome: Outcome,
    resume: bool,
) -> bool {
    let broken = svm::fuzz::broken_rule(sent, ctx.max_phys);
    let code = match (svm.svme, svm.hsave, outcome) {
        (false, _, Outcome::Fault(f)) if f.vector == 6 => return false,
        (false, _, o) => {
            ctx.mismatch(format_args!(
                "VMRUN with EFER.SVME clear: {o}, expected #UD"
            ));
            return false;
        }
        (true, false, Outcome::Fault(f)) if (f.vector, f.error_code) == (13, 0) => return false,
        (true, false, o) => {
            ctx.mismatch(format_args!(
                "VMRUN without VM_HSAVE_PA: {o}, expected #GP(0)"
            ));
            return false;
        }
        (true, true, Outcome::Fault(f)) => {
            ctx.mismatch(format_args!("VMRUN of a good address: {}", Shown(Some(f))));
            return false;
        }
        (true, true, Outcome::Exit(code)) => code,
    };
    if EventInfo(v.control.event_inj).is_valid() {
        ctx.mismatch(format_args!(
            "EVENTINJ {:#x} still valid after exit {code:#x}",
            v.control.event_inj
        ));
    }
    if svm::fuzz::is_invalid(code) {
        if broken.is_none() {
            // Not a failure (a rule the oracle does not know), but worth
            // a look: the first few per VM.
            record().invalid_but_legal += 1;
            {
                let st = &sent.state;
                let why = match svm::fuzz::cpuid_rule(
                    sent,
                    ctx.cr4_allowed,
                    ctx.efer_allowed,
                    ctx.flush_by_asid,
                ) {
                    _ if svm::fuzz::reserved_exception_injected(sent) => {
                        "EVENTINJ of a reserved exception vector"
                    }
                    Some(rule) => rule,
                    None => "unknown rule, or the CPU's",
                };
                ctx.note(format_args!(
                    "legal vmcb12 refused: {why} (EFER {:#x} CR0 {:#x} CR4 {:#x} CR3 {:#x})",
                    st.efer, st.cr0, st.cr4, st.cr3
                ));
            }
        }
        return false;
    }
    if let Some(rule) = broken {
        ctx.mismatch(format_args!(
            "vmcb12 breaks \"{rule}\" but L2 ran (exit {code:#x})"
        ));
        return false;
    }
    if !svm::fuzz::exit_intercepted(&sent.control, code) {
        ctx.mismatch(format_args!(
            "exit {code:#x} that L1 does not intercept (exitinfo1 {:#x} exitinfo2 {:#x})",
            v.control.exit_info1, v.control.exit_info2
        ));
        return false;
    }
    if !resume {
        return false;
    }
    match code {
        // VMMCALL (3 bytes) where L1 put it: nRIP must be past it.
        0x81 if v.state.rip == sent.state.rip && ctx.mode == Mode::Vmmcall => {
            if v.control.next_rip != v.state.rip + 3 {
                ctx.mismatch(format_args!(
                    "VMMCALL at {:#x}: nRIP {:#x}",
                    v.state.rip, v.control.next_rip
                ));
                return false;
            }
            v.state.rip = v.control.next_rip;
            true
        }
        0x41 => true,
        _ => false,
    }
}
