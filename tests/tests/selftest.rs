//! The kernel's guest self-tests under QEMU TCG: every `guest::*` test
//! reports `ok`, the totals line agrees, and the command line selects tests.

use hv_tests::{boot_direct, Boot, FAILURE_STATUS, SMP_TESTS, SUCCESS_STATUS};

const GUEST_TESTS: &[&str] = &[
    "guest::cpuid",
    "guest::rdmsr_unknown_gp",
    "guest::msr_passthrough",
    "guest::console",
    "guest::hlt",
    "guest::vmmcall",
    "guest::page_fault",
    "guest::triple_fault",
    "guest::npf_outside_memory",
    "guest::debug_exit_blocked",
    "guest::runaway_stopped",
    "guest::l0_intercepts_ac_db_nmi",
    "guest::db_single_step_reinjected",
    "guest::nmi_delivered",
    "guest::nmi_blocked_until_iret",
    "guest::physical_nmi_stays_with_l0",
    "guest::test_hooks_off",
    "guest::exit_limit_from_config",
    "guest::cpuid_odd_prefixes",
    "guest::cr_writes_checked",
    "guest::leave_long_mode",
    "guest::cpu_modes_tour",
    "guest::string_io_32bit_paging",
    "guest::efer_writes_checked",
    "guest::ltr_checked",
    "guest::cr3_write_checked",
    "guest::fetch_after_remap",
    "guest::single_step_over_emulated",
    "guest::unbacked_page_walk_rsvd",
    "guest::unbacked_up_to_maxphyaddr",
    "guest::unbacked_read_modify_write",
    "guest::pc_hole_unbacked",
    "guest::dr0_3_writes_armed",
    "guest::lapic_mmio_id_version",
    "guest::lapic_timer_one_shot",
    "guest::lapic_timer_periodic",
    "guest::lapic_timer_periodic_minimum",
    "guest::lapic_tpr_eoi",
    "guest::x2apic_self_ipi",
    "guest::xcr0_starts_at_reset",
    "guest::xcr0_starts_at_reset_again",
    "guest::lapic_mmio_unemulated_ud",
    "guest::msr_sweep",
    "guest::amd_cpuid",
];

/// `(name, verdict)` of every `test <name> ... <verdict>` line.
fn results(boot: &Boot) -> Vec<(String, String)> {
    boot.lines()
        .filter_map(|l| l.strip_prefix("test "))
        .filter_map(|l| l.split_once(" ... "))
        .map(|(name, verdict)| (name.to_string(), verdict.to_string()))
        .collect()
}

/// The `tsc::*` tests; each marked `true` also runs as `<name>::exiting`.
const TSC_TESTS: &[(&str, bool)] = &[
    ("tsc::starts_near_zero", true),
    ("tsc::monotonic_rdtsc", true),
    ("tsc::rdmsr_matches_rdtsc", true),
    ("tsc::wrmsr_sets_value", true),
    ("tsc::wrmsr_moves_adjust", false),
    ("tsc::adjust_write_moves_tsc", true),
    ("tsc::adjust_read_back", false),
    ("tsc::exiting_mode_matches_offset_mode", false),
    ("tsc::backwards_host_is_hidden", true),
    ("tsc::freeze_pause_policy", true),
    ("tsc::freeze_continue_policy", true),
    ("tsc::cpuid_frequency_leaf", true),
];

/// The `nested::*` tests (an L1 hypervisor running L2 through L0).
const NESTED_TESTS: &[&str] = &[
    "nested::cpuid_svm_leaf",
    "nested::vmrun_vmmcall_roundtrip",
    "nested::vmrun_invalid_asid_zero",
    "nested::vmrun_invalid_efer_svme",
    "nested::vmrun_without_hsave_gp",
    "nested::intercept_cpuid_to_l1",
    "nested::msrpm_merge",
    "nested::iopm_merge",
    "nested::exitinfo_and_next_rip",
    "nested::eventinj_to_l2",
    "nested::vmload_vmsave",
    "nested::gif_stgi_clgi",
    "nested::tsc_offset_composes",
    "nested::tsc_l0_write_while_l2_runs",
    "nested::tsc_exit_restores_l1_offset",
    "nested::tsc_l2_rdmsr_sees_l2_view",
    "nested::tsc_l2_wrmsr_sets_l1_tsc",
    "nested::tsc_adjust_shared",
    "nested::freeze_restore_while_l2_runs",
    "nested::cpu_refusal_reflected",
    "nested::runaway_l2_preempted",
    "nested::l0_exception_reflected",
    "nested::l2_hypercall_refused",
    "nested::l2_rdtscp_intercept",
    "nested::hidden_insns_are_ud",
    "nested::l2_int3_to_l1_bp_intercept",
    "nested::pending_interrupt_preempts_l2",
    "nested::pending_interrupt_waits_for_l1_if",
    "nested::pending_event_to_exitintinfo",
    "nested::soft_int_next_rip",
    "nested::exitintinfo_reinjected_by_l0",
    "nested::soft_event_ends_at_l0_exit",
    "nested::cve_2021_29657_vmcb12_changed_after_vmrun",
    "nested::cve_2021_3653_v_intr_masking_avic",
    "nested::l2_runs_with_l0_intercepts",
    "nested::l2_db_to_l1",
    "nested::l2_db_to_l2_handler",
    "nested::nmi_held_while_gif_clear",
    "nested::nmi_for_l1_exits_l2",
    "nested::physical_nmi_not_reflected",
    "nested::cr4_smep_accepted",
    "nested::tlb_control_invalid",
    "nested::msrpm_outside_ram_intercepts_all",
    "nested::msrpm_beyond_maxphyaddr_invalid",
    "nested::cve_2021_3656_vmload_from_l2",
    "nested::long_mode_keys_on_lme_pg",
    "nested::hsave_pa_below_maxphyaddr",
    "nested::l2_cpuid_odd_prefixes",
    "nested::l2_leaves_long_mode",
    "nested::l2_lmsw_selective_cr0",
    "nested::vmrun_tf_traps_after_vmexit",
    "nested::vmrun_instruction_breakpoint",
    "nested::l2_virq_within_shadow",
    "nested::cpuid_osxsave_follows_cr4",
    "nested::l2_starts_in_every_mode",
    "nested::l2_tours_every_mode",
    "nested::l2_tour_exits_to_l1_in_every_mode",
    "nested::l2_pae_cr3_checks_pdptes",
    "nested::l2_dr7_write",
    "nested::string_io_in_l2",
    "nested::l2_cr8_with_v_irq",
    "nested::vmload_zero_tr_user_fault",
    "nested::checks_decide_before_the_cpu",
    "nested::vmrun_invalid_cr0_high",
    "nested::vmrun_invalid_cr0_nw_without_cd",
    "nested::vmrun_invalid_cr3_beyond_maxphyaddr",
    "nested::vmrun_invalid_cr4_hidden_feature",
    "nested::vmrun_invalid_dr6_high",
    "nested::vmrun_invalid_dr7_high",
    "nested::vmrun_invalid_efer_reserved",
    "nested::vmrun_invalid_long_mode_without_pae",
    "nested::vmrun_invalid_long_mode_without_pe",
    "nested::vmrun_invalid_cs_long_and_default",
    "nested::vmrun_invalid_vmrun_not_intercepted",
    "nested::vmrun_invalid_eventinj_vector",
    "nested::np_enable_checks_ncr3",
    "nested::l2_cr3_reserved_bits",
    "nested::l2_unbacked_memory",
    "nested::l2_unbacked_page_walk",
    "nested::l2_unbacked_cr3_faults",
    "nested::tsc_offset_composes::exiting",
    "nested::l2_dr0_3_writes_armed",
    "nested::l2_lapic_mmio",
    "nested::l2_lapic_timer_exits_to_l1",
    "nested::l2_lapic_intr_waits_for_l2_sti",
    "nested::l2_lapic_smi_exits_to_l1",
    "nested::l2_msr_sweep",
    "nested::nested_vgif_stgi_clgi",
    "nested::nested_vgif_holds_virq",
    "nested::nested_vgif_l1_interrupt_not_held",
    "nested::npt_l2_mapped_through_ncr3",
    "nested::npt_permission_fault_exact",
    "nested::npt_stale_mapping_dropped",
    "nested::npt_outside_l1_ram",
    "nested::npt_l2_apic_mmio",
    "nested::npt_l2_in_every_mode",
    "nested::npt_l2_tables_remapped",
    "nested::npt_ad_bits_set",
];

#[test]
fn every_smp_self_test_passes() {
    let names: Vec<String> = SMP_TESTS.iter().map(|n| n.to_string()).collect();
    assert_all_pass("smp::", &names);
}

/// Boots with `tests=<prefix>` and asserts exactly `names` ran, all `ok`,
/// with the matching totals line and a success status.
fn assert_all_pass(prefix: &str, names: &[String]) -> Boot {
    let boot = boot_direct(&[&format!("tests={prefix}")]);
    let results = results(&boot);
    for name in names {
        let verdict = results
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str());
        assert_eq!(verdict, Some("ok"), "{name} (serial output above)");
    }
    assert_eq!(results.len(), names.len(), "unexpected tests: {results:?}");
    let totals = format!("{} passed, 0 failed", names.len());
    assert!(boot.lines().any(|l| l == totals), "no `{totals}` line");
    boot.assert_status(SUCCESS_STATUS);
    boot
}

#[test]
fn every_guest_self_test_passes() {
    let names: Vec<String> = GUEST_TESTS.iter().map(|n| n.to_string()).collect();
    let boot = assert_all_pass("guest::", &names);
    // Guest console output arrives with its prefix.
    assert!(boot
        .lines()
        .any(|l| l == "[guest guest::console] hello from the guest console"));
}

#[test]
fn every_nested_self_test_passes() {
    let names: Vec<String> = NESTED_TESTS.iter().map(|n| n.to_string()).collect();
    let boot = assert_all_pass("nested::", &names);
    // L2's console output reached L0's console (COM1 is not L1's).
    assert!(boot
        .lines()
        .any(|l| l == "[guest nested::iopm_merge] hello from L2"));
    // No L1 input made the hypervisor stop a guest or panic.
    assert!(
        !boot.serial.contains("panic"),
        "a panic (serial output above)"
    );
}

#[test]
fn every_tsc_self_test_passes_in_both_modes() {
    let names: Vec<String> = TSC_TESTS
        .iter()
        .flat_map(|&(name, both)| {
            let exiting = both.then(|| format!("{name}::exiting"));
            std::iter::once(name.to_string()).chain(exiting)
        })
        .collect();
    let boot = assert_all_pass("tsc::", &names);
    // The calibrated frequency is in the banner.
    let tsc = boot.banner("tsc: ").expect("tsc banner line");
    assert!(tsc.ends_with("MHz (calibrated against PIT)"), "{tsc}");
}

#[test]
fn the_command_line_selects_tests_by_prefix() {
    let boot = boot_direct(&["tests=guest::hlt,guest::triple"]);
    let names: Vec<_> = results(&boot).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["guest::hlt", "guest::triple_fault"]);
    assert!(boot.lines().any(|l| l == "2 passed, 0 failed"));
    boot.assert_status(SUCCESS_STATUS);
}

/// How many tests a run without `tests=` runs.
fn total_tests() -> usize {
    let tsc: usize = TSC_TESTS
        .iter()
        .map(|&(_, both)| 1 + usize::from(both))
        .sum();
    GUEST_TESTS.len() + tsc + NESTED_TESTS.len() + SMP_TESTS.len()
}

#[test]
fn a_filtered_run_says_how_many_tests_it_selected() {
    let boot = boot_direct(&["tests=guest::cpuid"]);
    let line = format!("selected 2 of {} tests (tests=guest::cpuid)", total_tests());
    let lines: Vec<&str> = boot.lines().collect();
    let at = lines.iter().position(|l| *l == line);
    let first_test = lines.iter().position(|l| l.starts_with("test "));
    assert!(at.is_some(), "no `{line}` line (serial output above)");
    assert!(at < first_test, "`{line}` after the first test line");
    let names: Vec<_> = results(&boot).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["guest::cpuid", "guest::cpuid_odd_prefixes"]);
    boot.assert_status(SUCCESS_STATUS);
}

#[test]
fn a_filter_that_selects_no_test_fails_and_names_the_groups() {
    let boot = boot_direct(&["tests=bogus"]);
    let line = boot
        .lines()
        .find(|l| l.starts_with("tests=bogus selects no test"))
        .expect("no `tests=bogus selects no test` line (serial output above)");
    assert!(
        line.contains("guest, tsc, nested"),
        "the groups are not named: {line}"
    );
    assert!(results(&boot).is_empty(), "tests ran: {:?}", results(&boot));
    assert!(
        !boot.lines().any(|l| l == "0 passed, 0 failed"),
        "a totals line for a run that selected nothing"
    );
    boot.assert_status(FAILURE_STATUS);
}
