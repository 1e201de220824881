//! Group `nested`: an L1 hypervisor (guest side in
//! `guest-stubs/src/bin/nested/`) runs L2 payloads through L0's emulation
//! of SVM, with the hsave model and its TSC rules.

use super::{no_check, Case, Expect, Outcome};
use crate::vmm::vm::VmConfig;
use alloc::format;
use alloc::string::String;
use svm::cpuid_filter::HiddenFeatures;
use svm::tsc::TscMode;
use svm::ExitCode;

pub(super) static L1_HYPERVISOR: &[u8] = include_bytes!(concat!(env!("HV_GUEST_DIR"), "/nested"));

const fn case(name: &'static str) -> Case {
    Case {
        name,
        image: L1_HYPERVISOR,
        config: VmConfig::NESTED,
        expect: Expect::Pass,
        check: no_check,
    }
}

fn console_starts_with(o: &Outcome, prefix: &str) -> Result<(), String> {
    match o.console.iter().any(|l| l.starts_with(prefix)) {
        true => Ok(()),
        false => Err(format!(
            "no console line starting {prefix:?} (got {:?})",
            o.console
        )),
    }
}

/// The `nested::*` tests.
pub static CASES: [Case; 98] = [
    case("nested::l2_msr_sweep"),
    case("nested::cpuid_svm_leaf"),
    Case {
        // The bench's rows: the round trip, then L1's SVM instructions.
        check: |o| {
            [
                "nested round trip",
                "L1 STGI",
                "L1 CLGI",
                "L1 VMLOAD",
                "L1 VMSAVE",
            ]
            .iter()
            .try_for_each(|row| console_starts_with(o, row))
        },
        ..case("nested::vmrun_vmmcall_roundtrip")
    },
    case("nested::vmrun_invalid_asid_zero"),
    case("nested::vmrun_invalid_efer_svme"),
    case("nested::vmrun_without_hsave_gp"),
    case("nested::intercept_cpuid_to_l1"),
    case("nested::msrpm_merge"),
    // L2's console line went to L0's console, not to L1.
    Case {
        check: |o| console_starts_with(o, "hello from L2"),
        ..case("nested::iopm_merge")
    },
    case("nested::exitinfo_and_next_rip"),
    case("nested::eventinj_to_l2"),
    case("nested::vmload_vmsave"),
    case("nested::gif_stgi_clgi"),
    case("nested::tsc_offset_composes"),
    // The same with RDTSC exiting: L0 emulates L2's RDTSC and RDMSR TSC.
    Case {
        config: VmConfig {
            tsc_mode: TscMode::Exiting,
            ..VmConfig::NESTED
        },
        check: |o| {
            // L1's two RDTSCs and L2's two at least.
            let n = o.vcpu.exit_count(ExitCode::Rdtsc) + o.vcpu.exit_count(ExitCode::Rdtscp);
            match n {
                4.. => Ok(()),
                n => Err(format!(
                    "{n} RDTSC exits with RDTSC exiting, expected 4 or more"
                )),
            }
        },
        ..case("nested::tsc_offset_composes::exiting")
    },
    case("nested::tsc_l0_write_while_l2_runs"),
    case("nested::tsc_exit_restores_l1_offset"),
    case("nested::tsc_l2_rdmsr_sees_l2_view"),
    case("nested::tsc_l2_wrmsr_sets_l1_tsc"),
    case("nested::tsc_adjust_shared"),
    case("nested::freeze_restore_while_l2_runs"),
    // L0's checks off: the CPU's own VMEXIT_INVALID while entering L2 must
    // reach L1 as VMEXIT_INVALID, not stop the VM.
    Case {
        config: VmConfig {
            vmcb12_checks: false,
            ..VmConfig::NESTED
        },
        ..case("nested::cpu_refusal_reflected")
    },
    case("nested::runaway_l2_preempted"),
    case("nested::l0_exception_reflected"),
    case("nested::l2_hypercall_refused"),
    case("nested::l2_rdtscp_intercept"),
    // A CPU model without RDTSCP and SKINIT (`guest_cpu=-rdtscp,-skinit`).
    Case {
        config: VmConfig {
            hidden_cpu: HiddenFeatures::RDTSCP.union(HiddenFeatures::SKINIT),
            ..VmConfig::NESTED
        },
        ..case("nested::hidden_insns_are_ud")
    },
    case("nested::l2_int3_to_l1_bp_intercept"),
    case("nested::pending_interrupt_preempts_l2"),
    case("nested::pending_interrupt_waits_for_l1_if"),
    case("nested::pending_event_to_exitintinfo"),
    case("nested::soft_int_next_rip"),
    case("nested::exitintinfo_reinjected_by_l0"),
    case("nested::soft_event_ends_at_l0_exit"),
    case("nested::cve_2021_29657_vmcb12_changed_after_vmrun"),
    case("nested::cve_2021_3653_v_intr_masking_avic"),
    case("nested::l2_runs_with_l0_intercepts"),
    case("nested::l2_db_to_l1"),
    case("nested::l2_db_to_l2_handler"),
    case("nested::nmi_held_while_gif_clear"),
    case("nested::nmi_for_l1_exits_l2"),
    case("nested::physical_nmi_not_reflected"),
    case("nested::cr4_smep_accepted"),
    case("nested::tlb_control_invalid"),
    case("nested::msrpm_outside_ram_intercepts_all"),
    case("nested::msrpm_beyond_maxphyaddr_invalid"),
    case("nested::cve_2021_3656_vmload_from_l2"),
    case("nested::long_mode_keys_on_lme_pg"),
    case("nested::hsave_pa_below_maxphyaddr"),
    // ISSUE 8 A6 and C: odd encodings and privileged writes in L2.
    case("nested::l2_cpuid_odd_prefixes"),
    case("nested::l2_leaves_long_mode"),
    case("nested::l2_lmsw_selective_cr0"),
    case("nested::vmrun_tf_traps_after_vmexit"),
    case("nested::vmrun_instruction_breakpoint"),
    case("nested::l2_virq_within_shadow"),
    case("nested::cpuid_osxsave_follows_cr4"),
    // Issue 10 item 3: L2 in every CPU mode.
    case("nested::l2_starts_in_every_mode"),
    case("nested::l2_tours_every_mode"),
    case("nested::l2_tour_exits_to_l1_in_every_mode"),
    case("nested::l2_pae_cr3_checks_pdptes"),
    case("nested::l2_dr7_write"),
    // Issue 10: INS/OUTS of L2 emulated through L2's paging, #PF to L1.
    Case {
        check: |o| console_starts_with(o, "hello from L2 by rep outsb, backwards"),
        ..case("nested::string_io_in_l2")
    },
    case("nested::l2_cr8_with_v_irq"),
    case("nested::vmload_zero_tr_user_fault"),
    case("nested::checks_decide_before_the_cpu"),
    case("nested::vmrun_invalid_cr0_high"),
    case("nested::vmrun_invalid_cr0_nw_without_cd"),
    case("nested::vmrun_invalid_cr3_beyond_maxphyaddr"),
    case("nested::vmrun_invalid_cr4_hidden_feature"),
    case("nested::vmrun_invalid_dr6_high"),
    case("nested::vmrun_invalid_dr7_high"),
    case("nested::vmrun_invalid_efer_reserved"),
    case("nested::vmrun_invalid_long_mode_without_pae"),
    case("nested::vmrun_invalid_long_mode_without_pe"),
    case("nested::vmrun_invalid_cs_long_and_default"),
    case("nested::vmrun_invalid_vmrun_not_intercepted"),
    case("nested::vmrun_invalid_eventinj_vector"),
    case("nested::np_enable_checks_ncr3"),
    case("nested::l2_cr3_reserved_bits"),
    // ISSUE 8 C: unbacked L1-physical memory.
    case("nested::l2_unbacked_memory"),
    case("nested::l2_unbacked_page_walk"),
    case("nested::l2_unbacked_cr3_faults"),
    // ISSUE 8 C: the fuzz SIGSEGV (L2's MOV DR0 with vmcb12's DR7 armed).
    case("nested::l2_dr0_3_writes_armed"),
    // ISSUE 10 items 4-5: L1's local APIC from L2 (MMIO, timer -> INTR).
    case("nested::l2_lapic_mmio"),
    case("nested::l2_lapic_timer_exits_to_l1"),
    case("nested::l2_lapic_intr_waits_for_l2_sti"),
    case("nested::l2_lapic_smi_exits_to_l1"),
    case("nested::nested_vgif_stgi_clgi"),
    case("nested::nested_vgif_holds_virq"),
    case("nested::nested_vgif_l1_interrupt_not_held"),
    // Issue 11: nested paging for L1 (guest side: nested/npt.rs).
    case("nested::npt_l2_mapped_through_ncr3"),
    case("nested::npt_permission_fault_exact"),
    case("nested::npt_stale_mapping_dropped"),
    case("nested::npt_outside_l1_ram"),
    case("nested::npt_l2_apic_mmio"),
    case("nested::npt_l2_in_every_mode"),
    case("nested::npt_l2_tables_remapped"),
    case("nested::npt_ad_bits_set"),
];
