//! The `nested::*` self-test guest: a small SVM hypervisor running as L1.
//! It enables SVM, prepares vmcb12 for an L2 payload (code in this image,
//! see [`l2`]), runs it with VMRUN, handles its exits, and checks what L0's
//! emulation of SVM gave it. TSC tolerances are in ticks, from the
//! frequency in CPUID 0x4000_0010.
#![no_std]
#![no_main]

mod apic;
mod hardening;
mod kutb;
mod l1;
mod l2;
mod modes;
mod msrs;
mod npt;
mod smp;
mod strio;
mod vgif;

use core::arch::asm;
use guest_stubs::cpu::{cpuid, rdmsr, rdtsc, wrmsr};
use guest_stubs::exceptions::{catch, interrupts_taken, nmis_taken};
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

pub(crate) fn ticks(us: u64) -> u64 {
    u64::from(cpuid(0x4000_0010, 0)[0]) * us / 1000
}

/// L0's clock in µs (HC_NOW_NS): real time, which a descheduled QEMU
/// lengthens as it does the TSC.
fn now_us() -> u64 {
    call(svm::guest_abi::HC_NOW_NS, 0, 0, 0) / 1000
}

/// Runs of a watchdog-timed L2 spin at most, each spinning twice as long
/// as the one before ([`spin_us`]). On a busy host QEMU's timer thread can
/// be starved while its vCPU runs on (seen: 0 watchdog ticks in 64 ms of
/// real time), which no guest clock shows, so a run with too few INTR
/// exits is retried: bounded (1.9 s of spinning in all), and a broken rule
/// (physical interrupts not L0's) gives none in any run.
const SPIN_TRIES: u32 = 5;

/// The spin of run `run` (from 1).
fn spin_us(run: u32) -> u64 {
    SPIN_US << (run - 1)
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
        "nested::hidden_insns_are_ud" => hidden_insns_are_ud(),
        "nested::l2_int3_to_l1_bp_intercept" => l2_int3_to_l1_bp_intercept(),
        "nested::pending_interrupt_preempts_l2" => pending_interrupt_preempts_l2(),
        "nested::pending_interrupt_waits_for_l1_if" => pending_interrupt_waits_for_l1_if(),
        "nested::pending_event_to_exitintinfo" => pending_event_to_exitintinfo(),
        "nested::soft_int_next_rip" => soft_int_next_rip(),
        "nested::exitintinfo_reinjected_by_l0" => exitintinfo_reinjected_by_l0(),
        "nested::soft_event_ends_at_l0_exit" => soft_event_ends_at_l0_exit(),
        "nested::cve_2021_29657_vmcb12_changed_after_vmrun" => vmcb12_changed_after_vmrun(),
        "nested::cve_2021_3653_v_intr_masking_avic" => v_intr_masking_avic(),
        "nested::l2_runs_with_l0_intercepts" => l2_runs_with_l0_intercepts(),
        "nested::l2_db_to_l1" => l2_db_to_l1(),
        "nested::l2_db_to_l2_handler" => l2_db_to_l2_handler(),
        "nested::nmi_held_while_gif_clear" => nmi_held_while_gif_clear(),
        "nested::nmi_for_l1_exits_l2" => nmi_for_l1_exits_l2(),
        "nested::physical_nmi_not_reflected" => physical_nmi_not_reflected(),
        "nested::cr4_smep_accepted" => cr4_smep_accepted(),
        "nested::tlb_control_invalid" => tlb_control_invalid(),
        "nested::msrpm_outside_ram_intercepts_all" => maps_outside_ram(params.memory_size),
        "nested::msrpm_beyond_maxphyaddr_invalid" => maps_beyond_maxphyaddr(),
        "nested::cve_2021_3656_vmload_from_l2" => vmload_vmsave_from_l2(),
        "nested::long_mode_keys_on_lme_pg" => long_mode_keys_on_lme_pg(),
        "nested::hsave_pa_below_maxphyaddr" => hsave_pa_below_maxphyaddr(params.memory_size),
        "nested::l2_cpuid_odd_prefixes" => hardening::l2_cpuid_odd_prefixes(),
        "nested::l2_leaves_long_mode" => hardening::l2_leaves_long_mode(),
        "nested::l2_lmsw_selective_cr0" => kutb::l2_lmsw_selective_cr0(),
        "nested::l2_virq_within_shadow" => kutb::l2_virq_within_shadow(),
        "nested::vmrun_tf_traps_after_vmexit" => kutb::vmrun_tf_traps_after_vmexit(),
        "nested::vmrun_instruction_breakpoint" => kutb::vmrun_instruction_breakpoint(),
        "nested::cpuid_osxsave_follows_cr4" => kutb::cpuid_osxsave_follows_cr4(),
        "nested::l2_starts_in_every_mode" => modes::l2_starts_in_every_mode(),
        "nested::l2_tours_every_mode" => modes::l2_tours_every_mode(),
        "nested::l2_tour_exits_to_l1_in_every_mode" => modes::l2_tour_exits_to_l1_in_every_mode(),
        "nested::l2_pae_cr3_checks_pdptes" => modes::l2_pae_cr3_checks_pdptes(),
        "nested::l2_dr7_write" => hardening::l2_dr7_write(),
        "nested::string_io_in_l2" => strio::string_io_in_l2(),
        "nested::l2_cr8_with_v_irq" => hardening::l2_cr8_with_v_irq(),
        "nested::vmload_zero_tr_user_fault" => hardening::vmload_zero_tr_user_fault(),
        "nested::checks_decide_before_the_cpu" => checks_decide_before_the_cpu(),
        "nested::vmrun_invalid_cr0_high" => vmrun_invalid(|v| v.state.cr0 |= 1 << 32),
        "nested::vmrun_invalid_cr0_nw_without_cd" => {
            vmrun_invalid(|v| v.state.cr0 = (v.state.cr0 & !(1 << 30)) | (1 << 29))
        }
        "nested::vmrun_invalid_cr3_beyond_maxphyaddr" => {
            vmrun_invalid(|v| v.state.cr3 |= 1 << max_phys_bits())
        }
        "nested::vmrun_invalid_cr4_hidden_feature" => {
            vmrun_invalid(|v| v.state.cr4 |= hidden_cr4_bit())
        }
        "nested::vmrun_invalid_dr6_high" => vmrun_invalid(|v| v.state.dr6 |= 1 << 32),
        "nested::vmrun_invalid_dr7_high" => vmrun_invalid(|v| v.state.dr7 |= 1 << 63),
        "nested::vmrun_invalid_efer_reserved" => vmrun_invalid(|v| v.state.efer |= 1 << 9),
        "nested::vmrun_invalid_long_mode_without_pae" => {
            vmrun_invalid(|v| v.state.cr4 &= !svm::cr::CR4_PAE)
        }
        "nested::vmrun_invalid_long_mode_without_pe" => {
            vmrun_invalid(|v| v.state.cr0 &= !svm::cr::CR0_PE)
        }
        "nested::vmrun_invalid_cs_long_and_default" => {
            vmrun_invalid(|v| v.state.cs.attrib |= svm::VmcbSegment::ATTR_DB)
        }
        "nested::vmrun_invalid_vmrun_not_intercepted" => {
            vmrun_invalid(|v| v.control.intercept_misc2 &= !InterceptMisc2::VMRUN.bits())
        }
        "nested::vmrun_invalid_eventinj_vector" => vmrun_invalid_eventinj_vector(),
        "nested::np_enable_checks_ncr3" => np_enable_checks_ncr3(),
        "nested::l2_cr3_reserved_bits" => hardening::l2_cr3_reserved_bits(),
        "nested::l2_unbacked_memory" => l2_unbacked_memory(params.memory_size),
        "nested::l2_unbacked_page_walk" => l2_unbacked_page_walk(params.memory_size),
        "nested::l2_unbacked_cr3_faults" => l2_unbacked_cr3_faults(params.memory_size),
        "nested::l2_dr0_3_writes_armed" => hardening::l2_dr0_3_writes_armed(),
        "nested::l2_lapic_mmio" => apic::l2_lapic_mmio(),
        "nested::l2_lapic_timer_exits_to_l1" => apic::l2_lapic_timer_exits_to_l1(),
        "nested::l2_lapic_intr_waits_for_l2_sti" => apic::l2_lapic_intr_waits_for_l2_sti(),
        "nested::l2_lapic_smi_exits_to_l1" => apic::l2_lapic_smi_exits_to_l1(),
        "nested::l2_msr_sweep" => msrs::l2_msr_sweep(),
        "nested::nested_vgif_stgi_clgi" => vgif::nested_vgif_stgi_clgi(),
        "nested::nested_vgif_holds_virq" => vgif::nested_vgif_holds_virq(),
        "nested::nested_vgif_l1_interrupt_not_held" => vgif::nested_vgif_l1_interrupt_not_held(),
        "nested::npt_l2_mapped_through_ncr3" => npt::npt_l2_mapped_through_ncr3(params.memory_size),
        "nested::npt_permission_fault_exact" => npt::npt_permission_fault_exact(params.memory_size),
        "nested::npt_stale_mapping_dropped" => npt::npt_stale_mapping_dropped(params.memory_size),
        "nested::npt_outside_l1_ram" => npt::npt_outside_l1_ram(params.memory_size),
        "nested::npt_l2_apic_mmio" => npt::npt_l2_apic_mmio(params.memory_size),
        "nested::npt_l2_in_every_mode" => npt::npt_l2_in_every_mode(params.memory_size),
        "nested::npt_l2_tables_remapped" => npt::npt_l2_tables_remapped(params.memory_size),
        "nested::npt_ad_bits_set" => npt::npt_ad_bits_set(params.memory_size),
        "smp::freeze_restore_l1_and_l2" => smp::freeze_restore_l1_and_l2(),
        "smp::init_in_l2_without_intercept" => smp::init_in_l2_without_intercept(),
        other => fail(format_args!("no nested test named {other}")),
    }
    pass()
}

/// Enables SVM and prepares L2 with `task`/`input`.
pub(crate) fn setup(task: Task, input: u64) -> Regs {
    l1::enable_svm();
    l2::set(task, input);
    l1::prepare(l2::entry);
    Regs::default()
}

/// Runs L2 and checks it exited with `code`.
#[track_caller]
pub(crate) fn run_expect(regs: &mut Regs, code: ExitCode) {
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
    // Exactly what L0 emulates for L1: nested paging, NRIP save, and VGIF
    // (the host's here: QEMU's +vgif), nothing else.
    check_eq!(features, 1 | (1 << 3) | (1 << 16), "leaf 0x8000000A EDX");
    check!(
        cpuid(0x8000_0000, 0)[0] >= 0x8000_000A,
        "max extended leaf below the SVM leaf"
    );
    check_eq!(
        [cpuid(0, 0)[1], cpuid(0, 0)[3], cpuid(0, 0)[2]],
        [0x6874_7541, 0x6974_6E65, 0x444D_4163],
        "vendor (AuthenticAMD)"
    );
    // Not emulated, so not offered: TSC rate, VMCB clean, decode assists, pause filter.
    let unoffered = (1 << 4) | (1 << 5) | (1 << 7) | (1 << 10);
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
    bench_l1(
        "nested round trip (L2 VMMCALL -> L1 -> VMRUN -> L2)",
        || {
            let (_, code) = l1::skip_and_run(&mut regs);
            check_eq!(ExitCode::from_raw(code), ExitCode::Vmmcall, "loop exit");
        },
    );
    // The SVM instructions L1 runs around each VMRUN, one by one. With VGIF
    // on the host, CLGI/STGI need no L0 exit: the exits column shows it.
    static mut AREA: Vmcb = Vmcb::new();
    let area = &raw mut AREA as u64;
    // SAFETY: CLGI/STGI are emulated or virtualized (VGIF) by L0 on L1's
    // own GIF, which ends set.
    bench_l1("L1 CLGI", || unsafe {
        asm!("clgi", options(nomem, nostack))
    });
    // SAFETY: as for CLGI.
    bench_l1("L1 STGI", || unsafe {
        asm!("stgi", options(nomem, nostack))
    });
    // SAFETY: `area` is a page-aligned VMCB in L1's memory that only this
    // bench uses; VMLOAD then loads back the state VMSAVE stored there.
    bench_l1("L1 VMSAVE", || unsafe {
        asm!("vmsave rax", in("rax") area, options(nostack))
    });
    // SAFETY: as for VMSAVE.
    bench_l1("L1 VMLOAD", || unsafe {
        asm!("vmload rax", in("rax") area, options(nostack))
    });
}

/// Times 100 runs of `op` in L1 and prints, for `cargo xtask bench`, the
/// TSC ticks per run, L0's ticks (HC_HOST_TICKS) and L0's exits
/// (HC_EXIT_TOTAL) per run.
fn bench_l1(what: &str, mut op: impl FnMut()) {
    const N: u64 = 100;
    let bracket = guest_stubs::hypercall::host_ticks_bracket();
    let exits_before = call(svm::guest_abi::HC_EXIT_TOTAL, 0, 0, 0);
    let l0_before = call(svm::guest_abi::HC_HOST_TICKS, 0, 0, 0);
    let t0 = rdtsc();
    for _ in 0..N {
        op();
    }
    let per = (rdtsc() - t0) / N;
    let l0 = (call(svm::guest_abi::HC_HOST_TICKS, 0, 0, 0) - l0_before).saturating_sub(bracket) / N;
    // Not the loop's: the HC_EXIT_TOTAL before and the two HC_HOST_TICKS.
    let exits = (call(svm::guest_abi::HC_EXIT_TOTAL, 0, 0, 0) - exits_before - 3) / N;
    println!("{what}: {per} TSC ticks as L1 measures it, {l0} in L0, {exits} L0 exits");
}

/// A vmcb12 with one defect gives VMEXIT_INVALID, L1 goes on, and the
/// fixed vmcb12 runs.
fn vmrun_invalid(break_it: fn(&mut Vmcb)) {
    let mut regs = setup(Task::Yield, 0);
    let good = l1::vmcb().clone();
    break_it(l1::vmcb());
    l1::vmcb().control.event_inj = EventInfo::external_interrupt(0x30).0;
    let (_, code) = refused_by_l0(&mut regs);
    check_eq!(code, VMEXIT_INVALID, "exit code of a bad vmcb12");
    check_eq!(
        l1::vmcb().control.event_inj & EventInfo::VALID,
        0,
        "EVENTINJ valid bit after VMEXIT_INVALID"
    );
    *l1::vmcb() = good;
    run_expect(&mut regs, ExitCode::Hlt);
    // An illegal EVENTINJ (reserved type 1) is refused too.
    l1::prepare(l2::entry);
    l1::vmcb().control.event_inj = EventInfo::VALID | (1 << 8) | 0x20;
    let (_, code) = refused_by_l0(&mut regs);
    check_eq!(
        code,
        VMEXIT_INVALID,
        "exit code with a reserved EVENTINJ type"
    );
    check_eq!(
        l1::vmcb().control.event_inj & EventInfo::VALID,
        0,
        "refused EVENTINJ left valid"
    );
}

/// [`l1::run`], checking that the CPU refused nothing: a VMEXIT_INVALID L1
/// gets must be L0's verdict (APM 15.5.1 checks made on vmcb12 before
/// L2's state reaches the CPU), not the CPU's refusal of the state L0
/// built from it (which L0 would count as an exit with that code).
#[track_caller]
fn refused_by_l0(regs: &mut Regs) -> (u64, u64) {
    let before = exits_of(ExitCode::Invalid);
    let result = l1::run(regs);
    check_eq!(
        exits_of(ExitCode::Invalid) - before,
        0,
        "VMEXIT_INVALIDs from the CPU (a vmcb12 L0's checks let through)"
    );
    result
}

/// MAXPHYADDR as L1 sees it (CPUID 0x8000_0008 EAX[7:0]).
fn max_phys_bits() -> u32 {
    cpuid(0x8000_0008, 0)[0] & 0xFF
}

/// The first CR4 bit whose feature CPUID hides from L1 (so reserved).
fn hidden_cr4_bit() -> u64 {
    let [_, _, ecx1, _] = cpuid(1, 0);
    let [_, ebx7, ecx7, _] = cpuid(7, 0);
    let candidates = [
        (ebx7 & (1 << 0), 16),  // FSGSBASE
        (ecx1 & (1 << 26), 18), // XSAVE: OSXSAVE
        (ecx7 & (1 << 3), 22),  // PKU: PKE
        (ecx7 & (1 << 16), 12), // LA57
        (ebx7 & (1 << 20), 21), // SMAP
        (ecx7 & (1 << 2), 11),  // UMIP
    ];
    match candidates.iter().find(|(shown, _)| *shown == 0) {
        Some(&(_, bit)) => 1 << bit,
        None => fail(format_args!("CPUID shows L1 every candidate CR4 feature")),
    }
}

/// EVENTINJ of TYPE exception with a vector that is no exception (NMI's
/// 2, reserved 9, 15, 22-27, 31, and 32 up) is L0's VMEXIT_INVALID (APM
/// 15.20); QEMU TCG refuses only 2 and 31 up (docs/qemu-tcg.md). The
/// defined vectors L1 does not intercept reach L2 (no IDT: triple fault,
/// SHUTDOWN to L1).
fn vmrun_invalid_eventinj_vector() {
    let mut regs = setup(Task::Yield, 0);
    for vector in [2u8, 9, 15, 22, 27, 31, 32, 0xFF] {
        l1::prepare(l2::entry);
        l1::vmcb().control.event_inj = EventInfo::exception(vector).0;
        let (_, code) = refused_by_l0(&mut regs);
        check!(
            code == VMEXIT_INVALID,
            "exception vector {vector} in EVENTINJ: exit {code:#x}"
        );
    }
    l1::prepare(l2::entry);
    l1::vmcb().control.event_inj = EventInfo::exception(6).0;
    run_expect(&mut regs, ExitCode::Shutdown);
}

/// Nested paging is offered (CPUID 0x8000_000A EDX.NP, issue 11), so
/// vmcb12's nCR3 is checked: bits at or above MAXPHYADDR make VMRUN fail
/// with VMEXIT_INVALID (APM 15.5.1; KVM nested_vmcb_check_controls), from
/// L0's checks, never the CPU.
fn np_enable_checks_ncr3() {
    check_eq!(cpuid(0x8000_000A, 0)[3] & 1, 1, "NP offered to L1");
    let mut regs = setup(Task::Yield, 0);
    let c = &mut l1::vmcb().control;
    c.nested_ctl = 1;
    c.ncr3 = 0xFFFF_0000_DEAD_B000;
    let (_, code) = refused_by_l0(&mut regs);
    check_eq!(
        code as u32,
        u32::MAX,
        "VMEXIT_INVALID for nCR3 beyond MAXPHYADDR"
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

/// A CPU model without RDTSCP and SKINIT (L0's `guest_cpu=`): CPUID
/// hides them, and L2's RDTSCP and SKINIT are #UD although L1 intercepts
/// them: L1 gets its #UD exit, never the instruction's, and its vmcb12
/// keeps the intercept bits (kvm-unit-tests
/// svm_unsupported_instruction_intercept_test; KVM's behaviour).
fn hidden_insns_are_ud() {
    let ext = cpuid(0x8000_0001, 0);
    check_eq!(
        (ext[2] & (1 << 12), ext[3] & (1 << 27)),
        (0, 0),
        "CPUID SKINIT, RDTSCP"
    );
    let cases = [
        (Task::Rdtscp, InterceptMisc2::RDTSCP),
        (Task::Skinit, InterceptMisc2::SKINIT),
    ];
    for (task, bit) in cases {
        let mut regs = setup(task, 0);
        let c = &mut l1::vmcb().control;
        c.intercept_exceptions |= 1 << 6;
        c.intercept_misc2 |= bit.bits();
        let (_, code) = l1::run(&mut regs);
        check!(
            ExitCode::from_raw(code) == ExitCode::Exception(6),
            "{task:?} with its intercept set: exit {code:#x}, expected #UD"
        );
        check!(
            l1::vmcb().control.intercept_misc2 & bit.bits() != 0,
            "{task:?}: L1's intercept bit cleared"
        );
    }
}

/// L1 intercepts #BP (not INTn): L2's INT3 is a #BP #VMEXIT to L1, RIP at
/// the INT3 and NEXT_RIP past its one byte (APM 15.12, 15.7.1), although
/// QEMU TCG itself only checks the INTn intercept for INT3.
fn l2_int3_to_l1_bp_intercept() {
    let mut regs = setup(Task::Int3, 0);
    l1::vmcb().control.intercept_exceptions |= 1 << 3;
    run_expect(&mut regs, ExitCode::Exception(3));
    let v = l1::vmcb();
    check_eq!(v.control.exit_info1, 0, "EXITINFO1");
    // SAFETY: L2's code is identity-mapped in L1's image.
    let byte = unsafe { core::ptr::read_volatile(v.state.rip as *const u8) };
    check_eq!(byte, 0xCC, "the byte at the #BP exit's RIP");
    check_eq!(v.control.next_rip, v.state.rip + 1, "NEXT_RIP");
}

/// #VMEXITs with `code` L0 has taken for this VM (L1's and L2's).
fn exits_of(code: ExitCode) -> u64 {
    call(svm::guest_abi::HC_EXIT_COUNT, code.to_raw(), 0, 0)
}

/// How long the spinning L2s run: several watchdog periods (10 ms).
pub(crate) const SPIN_US: u64 = 60_000;

/// Waits (at most 200 ms) for interrupt `vector` to reach L1 with IF set:
/// L0 injects it at its next exit (the watchdog's at the latest).
fn wait_for_interrupt(vector: u8) -> u64 {
    let t0 = rdtsc();
    // SAFETY: the runtime IDT counts every vector.
    unsafe { asm!("sti", options(nomem, nostack)) };
    while interrupts_taken(vector) == 0 && rdtsc() - t0 < ticks(200_000) {
        core::hint::spin_loop();
    }
    // SAFETY: back to interrupts off.
    unsafe { asm!("cli", options(nomem, nostack)) };
    interrupts_taken(vector)
}

/// An interrupt L0 holds for L1 ends L2's run at once when L1 intercepts
/// INTR and L1's IF (saved at VMRUN, V_INTR_MASKING set) allows it: L2
/// does not get back to its loop, and the interrupt reaches L1's handler
/// when L1 sets GIF again (its STGI after VMRUN).
fn pending_interrupt_preempts_l2() {
    let mut regs = setup(Task::QueueAndSpin, 0x41);
    let v = l1::vmcb();
    v.control.intercept_misc1 |= InterceptMisc1::INTR.bits();
    v.control.int_ctl |= svm::IntCtl::V_INTR_MASKING.bits();
    // SAFETY: the runtime IDT counts vector 0x41; L1 takes interrupts now.
    unsafe { asm!("sti", options(nomem, nostack)) };
    let (_, code) = l1::run(&mut regs);
    // SAFETY: back to interrupts off.
    unsafe { asm!("cli", options(nomem, nostack)) };
    check_eq!(ExitCode::from_raw(code), ExitCode::Intr, "L2's exit");
    check_eq!(l2::result(6), 0, "queue hypercall");
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

/// The converse (KVM svm_interrupt_blocked): with V_INTR_MASKING, L1's IF
/// saved at VMRUN masks L1's pending interrupt, so L1 ran VMRUN with IF
/// clear and L2 is not preempted (it spins, then yields by HLT); the
/// interrupt waits for L1's own STI. Without V_INTR_MASKING, L2's IF masks
/// it instead: L2 with IF set is preempted although L1's IF is clear.
fn pending_interrupt_waits_for_l1_if() {
    let mut regs = setup(Task::QueueSpinYield, 0x41 | ticks(SPIN_US / 2) << 8);
    let v = l1::vmcb();
    v.control.intercept_misc1 |= InterceptMisc1::INTR.bits();
    v.control.int_ctl |= svm::IntCtl::V_INTR_MASKING.bits();
    let (_, code) = l1::run(&mut regs);
    check_eq!(
        ExitCode::from_raw(code),
        ExitCode::Hlt,
        "L2's exit (L1's IF was clear at VMRUN)"
    );
    check_eq!(
        (l2::result(6), l2::result(0)),
        (0, 1),
        "queue result, L2 finished its spin"
    );
    check_eq!(interrupts_taken(0x41), 0, "interrupt 0x41 with IF clear");
    check_eq!(wait_for_interrupt(0x41), 1, "interrupt 0x41 after STI");

    // V_INTR_MASKING clear: L2's IF (set) decides, L1's (clear) does not.
    l2::set(Task::QueueAndSpin, 0x42);
    l1::prepare(l2::entry);
    let v = l1::vmcb();
    v.control.intercept_misc1 |= InterceptMisc1::INTR.bits();
    let (idt, limit) = l2::l2_idt_all();
    v.state.idtr = svm::VmcbSegment::new(0, 0, limit, idt);
    v.state.rflags = 0x202;
    let (_, code) = l1::run(&mut regs);
    check_eq!(
        ExitCode::from_raw(code),
        ExitCode::Intr,
        "L2's exit (V_INTR_MASKING clear, L2's IF set)"
    );
    check_eq!(l2::result(0), 0, "L2 loop iterations after queueing");
    check_eq!(
        l2::ANY_VECTOR.load(core::sync::atomic::Ordering::SeqCst),
        0,
        "interrupts in L2"
    );
    check_eq!(wait_for_interrupt(0x42), 1, "interrupt 0x42 after STI");
}

/// Physical interrupts are L0's: L0's watchdog interrupts an L2 that
/// spins without exiting, but L2 resumes and L1 (which intercepts INTR)
/// sees only L2's own HLT, after several watchdog periods of spinning
/// that L0 counts as INTR exits.
fn runaway_l2_preempted() {
    for run in 1..=SPIN_TRIES {
        let mut regs = setup(Task::SpinThenYield, ticks(spin_us(run)));
        l1::vmcb().control.intercept_misc1 |= InterceptMisc1::INTR.bits();
        let before = exits_of(ExitCode::Intr);
        let start = now_us();
        run_expect(&mut regs, ExitCode::Hlt);
        let real = now_us() - start;
        let intr = exits_of(ExitCode::Intr) - before;
        check_eq!(l2::result(0), 1, "L2 finished its spin");
        if intr >= 2 {
            return;
        }
        check!(
            run < SPIN_TRIES,
            "{intr} INTR exits in L0 during {} us of L2 spinning ({real} us real, run {run})",
            spin_us(run)
        );
    }
}

/// APM 15.7.2 / KVM nested_save_pending_event_to_vmcb12: an interrupt L0
/// holds for L1 preempts L2 before L2 ran, so vmcb12's EVENTINJ was never
/// delivered: it is in EXITINTINFO (not lost), the exit has no nRIP, and
/// L1 re-injecting it delivers it. A soft interrupt (INTn with nRIP) comes
/// back with L2's RIP where L1 put it.
fn pending_event_to_exitintinfo() {
    let mut regs = setup(Task::Yield, 0);
    let spin = l2::spin as *const () as u64;
    let vectors = [
        (0x41u8, EventInfo::external_interrupt(0x30)),
        (0x42, EventInfo::software_interrupt(0x30)),
    ];
    for (l1_vector, event) in vectors {
        l1::prepare(l2::spin);
        let (idt, limit) = l2::l2_idt();
        let v = l1::vmcb();
        v.state.idtr = svm::VmcbSegment::new(0, 0, limit, idt);
        v.control.intercept_misc1 |= InterceptMisc1::INTR.bits();
        v.control.int_ctl |= svm::IntCtl::V_INTR_MASKING.bits();
        v.control.event_inj = event.0;
        v.control.next_rip = spin + 2;
        // SAFETY: GIF clear holds the interrupt until after VMRUN; IF set
        // lets it preempt L2 (V_INTR_MASKING) and reach L1 after STGI.
        unsafe { asm!("clgi", "sti", options(nomem, nostack)) };
        let queued = call(
            svm::guest_abi::HC_QUEUE_INTERRUPT,
            u64::from(l1_vector),
            0,
            0,
        );
        let (_, code) = l1::run(&mut regs);
        // SAFETY: interrupts back off.
        unsafe { asm!("cli", options(nomem, nostack)) };
        check_eq!(queued, 0, "queue hypercall");
        check_eq!(
            ExitCode::from_raw(code),
            ExitCode::Intr,
            "exit for L1's interrupt"
        );
        check_eq!(
            v.control.exit_int_info,
            event.0,
            "EXITINTINFO: the EVENTINJ L2 never got"
        );
        check_eq!(
            l2::GOT_VECTOR.load(core::sync::atomic::Ordering::SeqCst),
            0,
            "L2's handler ran"
        );
        check_eq!(
            v.control.event_inj & EventInfo::VALID,
            0,
            "EVENTINJ valid bit"
        );
        check_eq!(v.control.next_rip, 0, "nRIP of a made-up INTR exit");
        check_eq!(v.state.rip, spin, "L2's RIP");
        check_eq!(interrupts_taken(l1_vector), 1, "L1's interrupt after STGI");
        // L1 re-injects the event (with its nRIP): L2 gets it now.
        v.control.event_inj = v.control.exit_int_info;
        v.control.next_rip = spin + 2;
        run_expect(&mut regs, ExitCode::Hlt);
        check_eq!(
            l2::GOT_VECTOR.load(core::sync::atomic::Ordering::SeqCst),
            0x30,
            "vector L2's handler saw"
        );
    }
}

/// NRIP save is offered, so a soft interrupt L1 injects returns to
/// vmcb12's nRIP (APM 15.20), not to vmcb12's RIP, also when L0's CPU has
/// no NRIP save (QEMU TCG).
fn soft_int_next_rip() {
    let mut regs = setup(Task::Yield, 0);
    l1::prepare(l2::spin);
    let spin = l2::spin as *const () as u64;
    let (idt, limit) = l2::l2_idt();
    let v = l1::vmcb();
    v.state.idtr = svm::VmcbSegment::new(0, 0, limit, idt);
    v.control.event_inj = EventInfo::software_interrupt(0x30).0;
    v.control.next_rip = spin + 2;
    run_expect(&mut regs, ExitCode::Hlt);
    check_eq!(
        l2::GOT_VECTOR.load(core::sync::atomic::Ordering::SeqCst),
        0x30,
        "vector L2's handler saw"
    );
    check_eq!(
        l2::RETURN_RIP.load(core::sync::atomic::Ordering::SeqCst),
        spin + 2,
        "return RIP pushed for INT 0x30 (vmcb12 RIP + 2)"
    );
}

/// A soft interrupt L1 injects is L0's to track (its RIP bookkeeping, on a
/// CPU without NRIP save) only until it is delivered: the first exit L0
/// handles with nothing in EXITINTINFO ends it (KVM
/// svm_complete_interrupts). L2 gets INT 0x30 from EVENTINJ (nRIP = the
/// INT 0x31 after it); the handler's CPUID exit is L0's; back at nRIP,
/// INT 0x31 faults on its missing gate and L1 gets the #NP with RIP on
/// that INT 0x31. Were L0 still tracking the delivered INT 0x30, it would
/// take this fault for one in its delivery and move RIP back to the
/// INT 0x30.
fn soft_event_ends_at_l0_exit() {
    let mut regs = setup(Task::Yield, 0);
    l1::prepare(l2::l2_soft_then_int31);
    let start = l2::l2_soft_then_int31 as *const () as u64;
    let next = l2::l2_soft_then_int31_next as *const () as u64;
    check_eq!(next, start + 2, "INT 0x30 is 2 bytes");
    let (idt, limit) = l2::l2_idt_soft();
    let v = l1::vmcb();
    v.state.idtr = svm::VmcbSegment::new(0, 0, limit, idt);
    v.control.intercept_exceptions |= (1 << 11) | (1 << 13);
    v.control.event_inj = EventInfo::software_interrupt(0x30).0;
    v.control.next_rip = next;
    let cpuid_before = exits_of(ExitCode::Cpuid);
    let (_, code) = l1::run(&mut regs);
    check!(
        exits_of(ExitCode::Cpuid) > cpuid_before,
        "the INT 0x30 handler's CPUID exit reached L0"
    );
    check!(
        matches!(
            ExitCode::from_raw(code),
            ExitCode::Exception(11) | ExitCode::Exception(13)
        ),
        "L2's exit: {:?}, expected #NP for gate 0x31",
        ExitCode::from_raw(code)
    );
    check_eq!(
        v.control.exit_int_info & 0xff,
        0x31,
        "EXITINTINFO: the INT 0x31 being delivered"
    );
    check_eq!(v.state.rip, next, "L2's RIP: on the INT 0x31");
}

/// APM 15.7.2 / KVM svm_complete_interrupts: an exit L0 handles itself
/// in the middle of delivering an event does not lose the event. L0
/// injects interrupt 0x43 into L1 (queued, IF set); L1's gate 0x43 is not
/// present, so the delivery raises #NP, which L0 intercepts this once
/// (HC_INTERCEPT_ONCE) and resolves without delivering it. L0 must deliver
/// 0x43 again from EXITINTINFO: the second delivery raises #NP, now L1's
/// (error code: IDT entry 0x43). Without the re-injection no #NP arrives.
fn exitintinfo_reinjected_by_l0() {
    let mut idtr = [0u16; 5];
    // SAFETY: SIDT stores 10 bytes.
    unsafe { asm!("sidt [{}]", in(reg) idtr.as_mut_ptr(), options(nostack)) };
    let base = u64::from(idtr[1])
        | u64::from(idtr[2]) << 16
        | u64::from(idtr[3]) << 32
        | u64::from(idtr[4]) << 48;
    let gate = (base + 0x43 * 16) as *mut u64;
    // SAFETY: L1's own IDT (the runtime's static); the gate is restored below.
    let saved = unsafe { gate.read_volatile() };
    // SAFETY: as above; P is bit 47.
    unsafe { gate.write_volatile(saved & !(1 << 47)) };
    check_eq!(
        call(svm::guest_abi::HC_INTERCEPT_ONCE, 11, 0, 0),
        0,
        "HC_INTERCEPT_ONCE(#NP)"
    );
    let fault = catch(1, || {
        // SAFETY: the queue hypercall returns at once; L0 injects 0x43 at
        // the NOP after it (IF set, no STI shadow), where #NP is taken and
        // the 1-byte NOP skipped.
        unsafe {
            asm!(
                "xchg {v}, rbx",
                "sti",
                "nop",
                "vmmcall",
                "nop",
                "cli",
                "xchg {v}, rbx",
                v = inout(reg) 0x43u64 => _,
                inout("rax") svm::guest_abi::HC_QUEUE_INTERRUPT => _,
                options(nostack),
            )
        };
    });
    // SAFETY: as above.
    unsafe { gate.write_volatile(saved) };
    // The error code names IDT entry 0x43 (bit 1 IDT, bit 0 EXT): index
    // 0x43 in bits 15:3 (APM 8.4.1); QEMU TCG's 64-bit delivery puts
    // vector * 16 there instead (docs/qemu-tcg.md).
    let fault = fault.map(|f| (f.vector, f.error_code & !1));
    check!(
        matches!(fault, Some((11, 0x21a | 0x432))),
        "#NP for the gate of interrupt 0x43 after L0's own #NP exit: {fault:x?}"
    );
    check_eq!(interrupts_taken(0x43), 0, "interrupt 0x43 taken");
}

/// CVE-2021-29657: L2 rewrites vmcb12 in L1's memory after VMRUN took its
/// copy — clears the HLT and VMRUN intercepts and sets ASID 0. L0 goes on
/// with the checked copy (L2's HLT still exits to L1), writes no controls
/// back, and the next VMRUN judges the changed vmcb12 (VMEXIT_INVALID).
fn vmcb12_changed_after_vmrun() {
    let mut regs = setup(Task::PokeVmcb12Controls, 0);
    let good = l1::vmcb().clone();
    run_expect(&mut regs, ExitCode::Hlt);
    check_eq!(l2::result(0), 1, "L2 rewrote vmcb12");
    let v = l1::vmcb();
    check_eq!(
        (
            v.control.guest_asid,
            v.control.intercept_misc1 & InterceptMisc1::HLT.bits(),
            v.control.intercept_misc2 & InterceptMisc2::VMRUN.bits()
        ),
        (0, 0, 0),
        "vmcb12's controls as L2 left them"
    );
    let (_, code) = l1::run(&mut regs);
    check_eq!(code, VMEXIT_INVALID, "next VMRUN of the changed vmcb12");
    *l1::vmcb() = good;
    l2::set(Task::Yield, 0);
    run_expect(&mut regs, ExitCode::Hlt);
}

/// CVE-2021-3653: vmcb12's int_ctl with V_INTR_MASKING clear and the AVIC
/// enable bit set must not reach L2's VMCB. With V_INTR_MASKING clear L2's
/// IF would mask physical interrupts: an L2 spinning with IF clear would
/// keep L0's watchdog out. L0 still takes its INTR exits; with IF set no
/// physical interrupt reaches L2's IDT; L2 runs normally (no AVIC).
fn v_intr_masking_avic() {
    let int_ctl = svm::IntCtl::AVIC_ENABLE.bits();
    for rflags in [0x2, 0x202] {
        let mut run = 0;
        let (intr, real) = loop {
            run += 1;
            let mut regs = setup(Task::SpinThenYield, ticks(spin_us(run)));
            let v = l1::vmcb();
            v.control.int_ctl = int_ctl;
            v.state.rflags = rflags;
            let (idt, limit) = l2::l2_idt_all();
            v.state.idtr = svm::VmcbSegment::new(0, 0, limit, idt);
            let before = exits_of(ExitCode::Intr);
            let start = now_us();
            run_expect(&mut regs, ExitCode::Hlt);
            let real = now_us() - start;
            let intr = exits_of(ExitCode::Intr) - before;
            if intr >= 2 || run >= SPIN_TRIES {
                break (intr, real);
            }
        };
        check_eq!(
            l2::result(0),
            1,
            "L2 finished its spin (RFLAGS {rflags:#x})"
        );
        check_eq!(
            l2::ANY_VECTOR.load(core::sync::atomic::Ordering::SeqCst),
            0,
            "interrupts in L2's IDT (RFLAGS {rflags:#x})"
        );
        check!(
            intr >= 2,
            "{intr} INTR exits in L0 during {} us of L2 (RFLAGS {rflags:#x}, {real} us real, run {run})",
            spin_us(run)
        );
    }
}

/// Run with L0's vmcb12 checks off (the hypervisor's test configuration):
/// a vmcb12 whose EFER lacks SVME reaches the CPU, which refuses it; L1
/// must still see VMEXIT_INVALID and go on to run a good vmcb12.
fn cpu_refusal_reflected() {
    let mut regs = setup(Task::Yield, 0);
    let good = l1::vmcb().clone();
    l1::vmcb().state.efer &= !EFER_SVME;
    l1::vmcb().control.event_inj = EventInfo::external_interrupt(0x30).0;
    let (rax, code) = l1::run(&mut regs);
    check_eq!(
        code,
        VMEXIT_INVALID,
        "exit code when the CPU refuses vmcb12"
    );
    check_eq!(
        l1::vmcb().control.event_inj & EventInfo::VALID,
        0,
        "EVENTINJ valid bit after the CPU's VMEXIT_INVALID"
    );
    check_eq!(rax, &raw const l1::VMCB12 as u64, "L1's RAX");
    *l1::vmcb() = good;
    run_expect(&mut regs, ExitCode::Hlt);
}

/// VMRUN, CLGI and STGI without EFER.SVME are #UD, VMRUN without VM_HSAVE_PA #GP; VM_HSAVE_PA
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
    // CLGI/STGI too (APM 15.4; SKINIT is not offered), also where L1's GIF
    // rides the CPU's virtual GIF, whose VMCB has SVME set.
    // SAFETY: the faults are expected and skipped (3 bytes each).
    let clgi = catch(3, || unsafe { asm!("clgi", options(nomem, nostack)) });
    // SAFETY: as above.
    let stgi = catch(3, || unsafe { asm!("stgi", options(nomem, nostack)) });
    check_eq!(
        (clgi.map(|f| f.vector), stgi.map(|f| f.vector)),
        (Some(6), Some(6)),
        "CLGI, STGI with EFER.SVME clear"
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
    let start = now_us();
    let t0 = rdtsc();
    run_expect(&mut regs, ExitCode::Hlt);
    let t1 = rdtsc();
    // Real time around the run less the least the freeze lasted (90 % of
    // its 100 ms by the PIT): the most either TSC may advance.
    let unfrozen = (now_us() - start + 1).saturating_sub(90_000);
    let (a, b) = (l2::result(0), l2::result(1));
    check_eq!(l2::result(6), 0, "freeze hypercall result");
    check!(
        b >= a && b - a <= ticks(unfrozen + 20),
        "L2 across the freeze: {a:#x} then {b:#x} ({unfrozen} us unfrozen)"
    );
    check!(
        a >= t0 + O12 && b <= t1 + O12,
        "L2 {a:#x}..{b:#x} not within L1 {t0:#x}..{t1:#x} + o12"
    );
    check!(
        t1 - t0 <= ticks(unfrozen + 20),
        "L1 saw {} ticks pass (pause policy; {unfrozen} us unfrozen)",
        t1 - t0
    );
}

/// HC_EXIT_COUNT: L0's exits of `code` so far.
fn l0_exits(code: ExitCode) -> u64 {
    call(svm::guest_abi::HC_EXIT_COUNT, code.to_raw(), 0, 0)
}

/// L2 runs with L0's #AC/#DB/#MC and NMI intercepts (the merge keeps
/// them) though vmcb12 asks for none of them.
fn l2_runs_with_l0_intercepts() {
    let mut regs = setup(Task::L0Intercepts, 0);
    run_expect(&mut regs, ExitCode::Hlt);
    let v = l2::result(0);
    let (exceptions, misc1) = (v as u32, (v >> 32) as u32);
    check_eq!(
        exceptions & ((1 << 1) | (1 << 17) | (1 << 18)),
        (1 << 1) | (1 << 17) | (1 << 18),
        "#DB/#AC/#MC intercepts in L2's VMCB"
    );
    check!(
        misc1 & InterceptMisc1::NMI.bits() != 0,
        "NMI intercept in L2's VMCB ({misc1:#x})"
    );
}

/// L1 intercepts #DB: L2's single-step #DB is #VMEXIT(#DB) for L1, with
/// EXITINFO1 0 and DR6.BS in vmcb12.
fn l2_db_to_l1() {
    let mut regs = setup(Task::SingleStep, 0);
    l1::vmcb().control.intercept_exceptions |= 1 << 1;
    run_expect(&mut regs, ExitCode::Exception(1));
    let v = l1::vmcb();
    check_eq!(v.control.exit_info1, 0, "EXITINFO1 of #DB");
    check!(
        v.state.dr6 & guest_stubs::cpu::DR6_BS != 0,
        "DR6.BS in vmcb12: {:#x}",
        v.state.dr6
    );
}

/// L1 does not intercept #DB: L0 takes the exit and L2's own handler gets
/// the #DB with DR6.BS.
fn l2_db_to_l2_handler() {
    let mut regs = setup(Task::SingleStep, 0);
    let (idt, limit) = l2::l2_idt();
    l1::vmcb().state.idtr = svm::VmcbSegment::new(0, 0, limit, idt);
    let before = l0_exits(ExitCode::Exception(1));
    run_expect(&mut regs, ExitCode::Hlt);
    let dr6 = l2::DB_DR6.load(core::sync::atomic::Ordering::SeqCst);
    check!(
        dr6 & guest_stubs::cpu::DR6_BS != 0,
        "DR6 in L2's #DB handler: {dr6:#x}"
    );
    check!(
        l0_exits(ExitCode::Exception(1)) - before >= 1,
        "L0 saw no #DB exit from L2"
    );
}

/// With GIF clear an NMI L0 holds for L1 waits (across exits); STGI lets
/// it in.
fn nmi_held_while_gif_clear() {
    l1::enable_svm();
    // SAFETY: CLGI/STGI are emulated by L0.
    unsafe { asm!("clgi", options(nomem, nostack)) };
    check_eq!(
        call(svm::guest_abi::HC_QUEUE_NMI, 0, 0, 0),
        0,
        "queue hypercall"
    );
    call(svm::guest_abi::HC_ECHO_SUM, 0, 0, 0);
    let held = nmis_taken();
    // SAFETY: as above.
    unsafe { asm!("stgi", "nop", options(nomem, nostack)) };
    check_eq!((held, nmis_taken()), (0, 1), "NMIs (GIF clear, then set)");
}

/// An NMI L0 holds for L1 ends L2's run at once as #VMEXIT(NMI) when L1
/// intercepts NMI, and reaches L1's handler after its STGI.
fn nmi_for_l1_exits_l2() {
    let mut regs = setup(Task::QueueNmiAndSpin, 0);
    l1::vmcb().control.intercept_misc1 |= InterceptMisc1::NMI.bits();
    run_expect(&mut regs, ExitCode::Nmi);
    check_eq!(l2::result(6), 0, "queue hypercall result");
    check_eq!(
        l2::result(0),
        0,
        "L2 loop iterations after queueing (the exit must come first)"
    );
    check_eq!(nmis_taken(), 1, "NMIs in L1 after its STGI");
}

/// A physical NMI that arrives while L2 runs is L0's, even though L1
/// intercepts NMI: L1 sees no #VMEXIT(NMI) and no NMI.
fn physical_nmi_not_reflected() {
    let mut regs = setup(Task::PhysicalNmi, 0);
    l1::vmcb().control.intercept_misc1 |= InterceptMisc1::NMI.bits();
    let before = l0_exits(ExitCode::Nmi);
    run_expect(&mut regs, ExitCode::Hlt);
    check_eq!(l2::result(6), 0, "hypercall result");
    check_eq!(nmis_taken(), 0, "NMIs in L1");
    check!(l0_exits(ExitCode::Nmi) - before >= 1, "L0 took no NMI exit");
}

/// CR4 bits in vmcb12 follow the CPUID L1 sees: SMEP, which CPUID.7
/// shows (the TCG machine has +smep), runs L2; a bit CPUID hides is
/// VMEXIT_INVALID.
fn cr4_smep_accepted() {
    const SMEP: u64 = 1 << 20;
    let ebx7 = cpuid(7, 0)[1];
    check!(ebx7 & (1 << 7) != 0, "CPUID.7:EBX.SMEP not shown to L1");
    let mut regs = setup(Task::Yield, 0);
    l1::vmcb().state.cr4 |= SMEP;
    run_expect(&mut regs, ExitCode::Hlt);
    check!(
        l1::vmcb().state.cr4 & SMEP != 0,
        "L2's CR4.SMEP after the exit"
    );
    // The first CR4 bit whose feature CPUID hides from L1.
    let [_, _, ecx1, _] = cpuid(1, 0);
    let [_, ebx7, ecx7, _] = cpuid(7, 0);
    let candidates = [
        (ecx1 & (1 << 26), 18), // XSAVE: OSXSAVE
        (ecx7 & (1 << 3), 22),  // PKU: PKE
        (ecx7 & (1 << 16), 12), // LA57
        (ecx1 & (1 << 17), 17), // PCID: PCIDE
        (ebx7 & (1 << 0), 16),  // FSGSBASE
        (ebx7 & (1 << 20), 21), // SMAP
    ];
    let Some(&(_, hidden)) = candidates.iter().find(|(shown, _)| *shown == 0) else {
        fail(format_args!("CPUID shows L1 every candidate CR4 feature"))
    };
    l1::prepare(l2::entry);
    l1::vmcb().state.cr4 |= 1 << hidden;
    let (_, code) = l1::run(&mut regs);
    check_eq!(
        code,
        VMEXIT_INVALID,
        format_args!("vmcb12 with hidden CR4 bit {hidden}")
    );
}

/// TLB_CONTROL must be 0 or 1 (3 and 7 need FlushByAsid, not offered):
/// 2 and 3 are VMEXIT_INVALID, 1 runs L2.
fn tlb_control_invalid() {
    check_eq!(
        cpuid(0x8000_000A, 0)[3] & (1 << 6),
        0,
        "FlushByAsid offered"
    );
    let mut regs = setup(Task::Yield, 0);
    for bad in [2u8, 3, 0x10] {
        l1::prepare(l2::entry);
        l1::vmcb().control.tlb_control = bad;
        let (_, code) = l1::run(&mut regs);
        check_eq!(
            code,
            VMEXIT_INVALID,
            format_args!("exit code with TLB_CONTROL {bad}")
        );
    }
    l1::prepare(l2::entry);
    l1::vmcb().control.tlb_control = 1;
    run_expect(&mut regs, ExitCode::Hlt);
}

/// Permission maps only need to end below MAXPHYADDR. Just above L1's RAM
/// (unbacked: reads as all-ones) they intercept everything: L2's RDMSR of
/// FS_BASE and EFER and its OUT 0x80 all exit to L1.
fn maps_outside_ram(memory_size: u64) {
    let mut regs = setup(Task::Msrs, 0);
    l1::vmcb().control.msrpm_base_pa = memory_size;
    run_expect(&mut regs, ExitCode::Msr);
    check_eq!(regs.gpr[1] as u32, FS_BASE, "first MSR exit's ECX");
    let (_, code) = l1::skip_and_run(&mut regs);
    check_eq!(
        (ExitCode::from_raw(code), regs.gpr[1] as u32),
        (ExitCode::Msr, EFER),
        "second exit"
    );
    // Straddling the end of RAM: the C001_xxxx range (second half) is
    // outside and intercepts.
    l2::set(Task::RdmsrUnknown, 0);
    l1::prepare(l2::entry);
    l1::vmcb().control.msrpm_base_pa = memory_size - 0x1000;
    run_expect(&mut regs, ExitCode::Msr);
    check_eq!(regs.gpr[1] as u32, 0xc001_1ffe, "MSR exit's ECX");
    let mut regs = setup(Task::Ports, 0);
    l1::vmcb().control.iopm_base_pa = memory_size + 0x10_0000;
    run_expect(&mut regs, ExitCode::Ioio);
    let info = svm::IoioInfo::from_exit_info1(l1::vmcb().control.exit_info1);
    check!(
        info.is_some_and(|i| i.port == 0x80),
        "IOIO exit info {info:?}"
    );
}

/// A map whose end (the 8 KiB MSRPM; the IOPM's 8 KiB and one byte)
/// reaches MAXPHYADDR (CPUID 0x8000_0008 as L1 sees it) is VMEXIT_INVALID;
/// one ending below runs (and intercepts all). kvm-unit-tests'
/// test_msrpm_iopm_bitmap_addrs cases: bits 11:0 of a base are ignored.
fn maps_beyond_maxphyaddr() {
    let bits = cpuid(0x8000_0008, 0)[0] & 0xFF;
    check!((32..=52).contains(&bits), "MAXPHYADDR {bits}");
    let top = 1u64 << bits;
    let mut regs = setup(Task::Msrs, 0);
    let cases = [
        (top - 0x3000, 0, true),
        (top - 0x2000, 0, false),
        (top - 0x2000 + 1, 0, false),
        (top - 0x1000, 0, false),
        (top, 0, false),
        (0, top - 0x4000, true),
        (0, top - 0x3000, true),
        (0, top - 0x2000 - 2, true),
        (0, top - 0x2000, false),
    ];
    for (msrpm, iopm, runs) in cases {
        l1::prepare(l2::entry);
        let c = &mut l1::vmcb().control;
        c.msrpm_base_pa = if msrpm == 0 { c.msrpm_base_pa } else { msrpm };
        c.iopm_base_pa = if iopm == 0 { c.iopm_base_pa } else { iopm };
        let (_, code) = l1::run(&mut regs);
        // A map outside RAM intercepts every MSR; L1's own (empty) map
        // lets L2 run to its HLT.
        let expected = match (runs, msrpm) {
            (false, _) => VMEXIT_INVALID,
            (true, 0) => ExitCode::Hlt.to_raw(),
            (true, _) => ExitCode::Msr.to_raw(),
        };
        check!(
            code == expected,
            "MSRPM {msrpm:#x} IOPM {iopm:#x}: exit {code:#x}, expected {expected:#x}"
        );
    }
}

/// CVE-2021-3656: L1 does not intercept VMLOAD/VMSAVE (nor STGI, CLGI,
/// INVLPGA, SKINIT). L2's VMSAVE captures L2's state into L1's memory,
/// its VMLOAD changes only the running state, as the CPU L1 sees would
/// (and what VMRUN/#VMEXIT do not switch stays as L2 left it, APM 15.5.2);
/// an address outside L1's RAM (host memory at this address) is #GP; with
/// L2's own EFER.SVME clear they are #UD; L1's SVME is untouched.
fn vmload_vmsave_from_l2() {
    const BAD: u64 = 0x0100_0000;
    let mut regs = setup(Task::SvmInsns, BAD);
    // SAFETY: L1's pages; L2 is not running.
    let (p, q) = unsafe {
        (
            &mut *core::ptr::addr_of_mut!(l2::VMSAVE_PAGE),
            &mut *core::ptr::addr_of_mut!(l2::VMLOAD_PAGE),
        )
    };
    wrmsr(KERNEL_GS_BASE, 0x1111);
    check_eq!(vmsave(q as *mut Vmcb as u64), None, "L1's VMSAVE");
    q.state.kernel_gs_base = 0x6666;
    q.state.fs.base = 0x7777_0000;
    *p = Vmcb::new();
    let v = l1::vmcb();
    v.control.intercept_exceptions |= (1 << 13) | (1 << 6);
    run_expect(&mut regs, ExitCode::Exception(13));
    check_eq!(
        (p.state.fs.base, p.state.kernel_gs_base),
        (0xF5F5_0000, 0x1111),
        "L2's VMSAVE: L2's FS base, the shared KernelGsBase"
    );
    check_eq!(
        (l2::result(0), l2::result(1)),
        (0x6666, 0x7777_0000),
        "KernelGsBase and FS base in L2 after its VMLOAD"
    );
    check_eq!(v.state.rax, BAD, "the faulting VMSAVE's RAX");
    check_eq!(
        rdmsr(KERNEL_GS_BASE),
        0x6666,
        "L1's KernelGsBase after the exit (not switched by #VMEXIT)"
    );
    check!(rdmsr(EFER) & EFER_SVME != 0, "L1's EFER.SVME");
    v.state.rip += 3;
    let (_, code) = l1::run(&mut regs);
    check_eq!(
        ExitCode::from_raw(code),
        ExitCode::Exception(6),
        "VMLOAD with L2's SVME clear"
    );
    check_eq!(v.state.efer & EFER_SVME, 0, "vmcb12.EFER.SVME at the exit");
    check!(
        l2::result(2) & EFER_SVME != 0 && l2::result(3) & EFER_SVME == 0,
        "L2's EFER before/after clearing SVME: {:#x} {:#x}",
        l2::result(2),
        l2::result(3)
    );
    check!(
        rdmsr(EFER) & EFER_SVME != 0,
        "L1's EFER.SVME after L2 cleared its own"
    );
    // VMRUN requires vmcb12.EFER.SVME (APM 15.5.1): L1 sets it again, as
    // real hypervisors do.
    v.state.efer |= EFER_SVME;
    v.state.rip += 3;
    let (_, code) = l1::run(&mut regs);
    check_eq!(ExitCode::from_raw(code), ExitCode::Exception(6), "SKINIT");
    v.state.rip += 3;
    run_expect(&mut regs, ExitCode::Hlt);
    check_eq!(l2::result(4), 1, "L2 finished");
    wrmsr(KERNEL_GS_BASE, 0);
}

/// Long mode is EFER.LME with CR0.PG, for every check and for the mode L2
/// runs in: a vmcb12 whose EFER.LMA is clear (LME and PG set) enters
/// 64-bit L2 with LMA set by the CPU, as L1 sees it after the exit.
fn long_mode_keys_on_lme_pg() {
    const LMA: u64 = 1 << 10;
    let mut regs = setup(Task::Yield, 0);
    l1::vmcb().state.efer &= !LMA;
    run_expect(&mut regs, ExitCode::Hlt);
    check!(
        l1::vmcb().state.efer & LMA != 0,
        "vmcb12.EFER.LMA after the exit"
    );
}

/// VM_HSAVE_PA takes any 4 KiB-aligned address below MAXPHYADDR (CPUID
/// 0x8000_0008 as L1 sees it), in RAM or not (L0 never uses the page);
/// at MAXPHYADDR it is #GP. VMRUN works with it.
fn hsave_pa_below_maxphyaddr(memory_size: u64) {
    let bits = cpuid(0x8000_0008, 0)[0] & 0xFF;
    let top = 1u64 << bits;
    wrmsr(EFER, rdmsr(EFER) | EFER_SVME);
    for pa in [memory_size, top - 0x1000] {
        let fault = catch(2, || wrmsr(VM_HSAVE_PA, pa)).map(|f| f.vector);
        check!(
            fault.is_none(),
            "WRMSR VM_HSAVE_PA {pa:#x}: fault {fault:?}"
        );
        check_eq!(rdmsr(VM_HSAVE_PA), pa, "VM_HSAVE_PA read back");
    }
    let fault = catch(2, || wrmsr(VM_HSAVE_PA, top)).map(|f| f.vector);
    check_eq!(fault, Some(13), "WRMSR VM_HSAVE_PA at MAXPHYADDR");
    l2::set(Task::Yield, 0);
    l1::prepare(l2::entry);
    let mut regs = Regs::default();
    run_expect(&mut regs, ExitCode::Hlt);
}

/// xorshift64: the corruption stream of [`checks_decide_before_the_cpu`].
fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// Corrupts one field VMRUN loads into the CPU from vmcb12 (L0 replaces the
/// controls the CPU checks itself: maps, ASID, intercepts, TLB_CONTROL,
/// nested paging). Never RIP, RSP, GDTR, IDTR or CR3's address bits: L2
/// must not touch memory outside L1's RAM. Returns the field's name.
fn corrupt(v: &mut Vmcb, x: &mut u64) -> &'static str {
    let r = xorshift(x);
    let bit = 1u64 << (xorshift(x) % 64);
    let s = &mut v.state;
    match r % 16 {
        0 => {
            s.cr0 ^= bit;
            "cr0"
        }
        1 => {
            // Bits above 39 or the low 12 (PWT, PCD, ignored bits).
            s.cr3 ^= bit & !0xFF_FFFF_F000;
            "cr3"
        }
        2 => {
            s.cr4 ^= bit;
            "cr4"
        }
        3 => {
            s.efer ^= bit;
            "efer"
        }
        4 => {
            s.dr6 ^= bit;
            "dr6"
        }
        5 => {
            s.dr7 ^= bit;
            "dr7"
        }
        6 => {
            s.rflags ^= bit;
            "rflags"
        }
        7 => {
            s.cs.attrib ^= 1 << (bit.trailing_zeros() % 16);
            "cs.attrib"
        }
        8 => {
            s.ss.attrib ^= 1 << (bit.trailing_zeros() % 16);
            "ss.attrib"
        }
        9 => {
            s.cpl = xorshift(x) as u8 & 3;
            "cpl"
        }
        10 => {
            v.control.event_inj = xorshift(x) & 0xFFFF_FFFF_8000_0FFF;
            "event_inj"
        }
        11 => {
            v.control.event_inj ^= bit;
            "event_inj bit"
        }
        12 => {
            s.ds.attrib = xorshift(x) as u16;
            "ds.attrib"
        }
        // The architectural low bits, more often.
        13 => {
            s.cr0 ^= 1 << (bit.trailing_zeros() % 32);
            "cr0 low"
        }
        14 => {
            s.cr4 ^= 1 << (bit.trailing_zeros() % 24);
            "cr4 low"
        }
        _ => {
            s.efer ^= 1 << (bit.trailing_zeros() % 16);
            "efer low"
        }
    }
}

/// L0's checks, not the CPU, decide VMRUN: vmcb12s corrupted in the fields
/// the CPU loads (1-4 per run, a fixed xorshift stream) either run L2 or
/// get VMEXIT_INVALID from L0; the CPU never refuses one (L0 counts the
/// CPU's VMEXIT_INVALIDs as exits of that code). Each refusal by the CPU is
/// printed with its iteration and the corrupted fields.
fn checks_decide_before_the_cpu() {
    const ITERATIONS: u64 = 600;
    let mut regs = setup(Task::Yield, 0);
    // Every exception exits to L1, so no corruption runs L2 far. L2 starts
    // in whatever mode its vmcb12 makes legal (compatibility mode, 16-bit
    // code, legacy paging...): its code is CPUID; HLT, which runs alike in
    // every mode, never 64-bit code read as 16-bit code (whose stores would
    // land anywhere in L1's memory).
    l1::vmcb().control.intercept_exceptions = u32::MAX;
    l1::vmcb().state.rip = guest_stubs::modes::cpuid_hlt_address();
    let good = l1::vmcb().clone();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let (mut by_l0, mut by_cpu, mut ran) = (0, 0, 0);
    for i in 0..ITERATIONS {
        let mut v = good.clone();
        let n = 1 + xorshift(&mut x) % 4;
        let mut fields = [""; 4];
        for f in fields.iter_mut().take(n as usize) {
            *f = corrupt(&mut v, &mut x);
        }
        let s = v.state;
        let inj = v.control.event_inj;
        *l1::vmcb() = v;
        let before = exits_of(ExitCode::Invalid);
        let (_, code) = l1::run(&mut regs);
        let cpu = exits_of(ExitCode::Invalid) - before;
        match (code == VMEXIT_INVALID, cpu) {
            (_, 0) if code == VMEXIT_INVALID => by_l0 += 1,
            (_, 0) => ran += 1,
            _ => {
                by_cpu += 1;
                println!(
                    "iteration {i}: the CPU refused ({fields:?}): cr0 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x} dr6 {:#x} dr7 {:#x} rflags {:#x} cs {:#x} ss {:#x} cpl {} eventinj {inj:#x}",
                    s.cr0, s.cr3, s.cr4, s.efer, s.dr6, s.dr7, s.rflags, s.cs.attrib, s.ss.attrib, s.cpl
                );
            }
        }
    }
    println!("checks vs CPU: {ITERATIONS} vmcb12s, {ran} ran, {by_l0} refused by L0, {by_cpu} by the CPU");
    check_eq!(by_cpu, 0, "vmcb12s the CPU refused after L0's checks");
    check!(
        ran > ITERATIONS / 10 && by_l0 > ITERATIONS / 10,
        "too few of one kind"
    );
}

/// L2's accesses to unbacked L1-physical memory (L1 has no nested paging,
/// so they are L0's guest-physical): reads give all-ones, stores are
/// dropped, and L2 goes on to its HLT (ISSUE 8 C).
fn l2_unbacked_memory(memory_size: u64) {
    let a = guest_stubs::unbacked::address(memory_size);
    let mut regs = setup(Task::Unbacked, a);
    run_expect(&mut regs, ExitCode::Hlt);
    check_eq!(
        (l2::result(0), l2::result(1)),
        (u64::MAX, u64::MAX),
        "L2's reads of unbacked memory before and after its store"
    );
    check_eq!(
        (l2::result(2), l2::result(3)),
        (0, a + 0x2000),
        "RCX, RDI after L2's REP STOSB"
    );
}

/// L2's page walk through a PD in unbacked memory: the all-ones PDE has
/// reserved bits, so the #PF (P|RSVD) reaches L1, which intercepts #PF,
/// with the linear address in EXITINFO2 (APM 15.12).
fn l2_unbacked_page_walk(memory_size: u64) {
    let a = guest_stubs::unbacked::address(memory_size);
    let la = 1u64 << 30;
    guest_stubs::unbacked::set_pdpt(1, a | 3);
    let mut regs = setup(Task::UnbackedWalk, la);
    l1::vmcb().control.intercept_exceptions |= 1 << 14;
    let (_, exit) = l1::run(&mut regs);
    guest_stubs::unbacked::set_pdpt(1, 0);
    check_eq!(
        ExitCode::from_raw(exit),
        ExitCode::Exception(14),
        "L2's exit"
    );
    let c = &l1::vmcb().control;
    check_eq!(
        (c.exit_info1, c.exit_info2),
        (0x9, la),
        "#PF error code and address (EXITINFO1, EXITINFO2)"
    );
    check_eq!(l2::result(0), 0, "L2 went on past the faulting read");
}

/// L2 starts with CR3 in unbacked memory (and L1's IDT): its fetch walks an
/// all-ones PML4E, a #PF with RSVD (L1 intercepting #PF sees it, EXITINFO2
/// = RIP); without that intercept the #PF's delivery walks the same
/// tables: #DF (L1 intercepting #DF sees it); without that, the #DF's
/// delivery faults too: shutdown, which L1 intercepts (APM 8.2.9).
fn l2_unbacked_cr3_faults(memory_size: u64) {
    let a = guest_stubs::unbacked::address(memory_size);
    let mut idtr = [0u8; 10];
    // SAFETY: SIDT stores 10 bytes into the buffer.
    unsafe { asm!("sidt [{}]", in(reg) idtr.as_mut_ptr(), options(nostack)) };
    let limit = u32::from(u16::from_le_bytes([idtr[0], idtr[1]]));
    let base = u64::from_le_bytes(idtr[2..10].try_into().unwrap_or([0; 8]));
    let nxe = rdmsr(EFER) & svm::msr::EFER_NXE != 0;
    for (vector, want) in [
        (Some(14), ExitCode::Exception(14)),
        (Some(8), ExitCode::Exception(8)),
        (None, ExitCode::Shutdown),
    ] {
        let mut regs = setup(Task::Yield, 0);
        let v = l1::vmcb();
        v.state.cr3 = a;
        v.state.idtr.base = base;
        v.state.idtr.limit = limit;
        if let Some(vector) = vector {
            v.control.intercept_exceptions |= 1 << vector;
        }
        let rip = v.state.rip;
        run_expect(&mut regs, want);
        if vector == Some(14) {
            let c = &l1::vmcb().control;
            let code = if nxe { 0x19 } else { 0x9 };
            check_eq!(
                (c.exit_info1, c.exit_info2),
                (code, rip),
                "#PF of the fetch (EXITINFO1, EXITINFO2)"
            );
        }
    }
}
