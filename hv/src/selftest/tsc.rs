//! Group `tsc`: guest TSC measurements (guest side in
//! `guest-stubs/src/bin/tsc.rs`). Tests whose result depends on how RDTSC
//! is served run twice: `tsc::<name>` with TSC offsetting and
//! `tsc::<name>::exiting` with RDTSC exiting.

use super::{Case, Expect, Outcome};
use crate::vmm::vm::VmConfig;
use alloc::format;
use alloc::string::String;
use svm::tsc::TscMode;
use svm::ExitCode;

static TSC_GUEST: &[u8] = include_bytes!(concat!(env!("HV_GUEST_DIR"), "/tsc"));

/// RDTSC/RDTSCP exits (QEMU TCG reports RDTSCP with the RDTSC code).
fn rdtsc_exits(o: &Outcome) -> u64 {
    o.vcpu.exit_count(ExitCode::Rdtsc) + o.vcpu.exit_count(ExitCode::Rdtscp)
}

/// Offsetting: RDTSC never exits. Exiting: it does.
fn mode_was_honoured_offsetting(o: &Outcome) -> Result<(), String> {
    match rdtsc_exits(o) {
        0 => Ok(()),
        n => Err(format!("{n} RDTSC exits with TSC offsetting")),
    }
}

fn mode_was_honoured_exiting(o: &Outcome) -> Result<(), String> {
    match rdtsc_exits(o) {
        0 => Err(String::from("no RDTSC exits with RDTSC exiting")),
        _ => Ok(()),
    }
}

macro_rules! both_modes {
    ($name:literal) => {
        [
            Case {
                name: $name,
                image: TSC_GUEST,
                config: VmConfig::PLAIN,
                expect: Expect::Pass,
                check: mode_was_honoured_offsetting,
            },
            Case {
                name: concat!($name, "::exiting"),
                image: TSC_GUEST,
                config: VmConfig {
                    tsc_mode: TscMode::Exiting,
                    ..VmConfig::PLAIN
                },
                expect: Expect::Pass,
                check: mode_was_honoured_exiting,
            },
        ]
    };
}

const fn one(name: &'static str) -> Case {
    Case {
        name,
        image: TSC_GUEST,
        config: VmConfig::PLAIN,
        expect: Expect::Pass,
        check: super::no_check,
    }
}

const MODE_DEPENDENT: [[Case; 2]; 9] = [
    both_modes!("tsc::starts_near_zero"),
    both_modes!("tsc::monotonic_rdtsc"),
    both_modes!("tsc::rdmsr_matches_rdtsc"),
    both_modes!("tsc::wrmsr_sets_value"),
    both_modes!("tsc::adjust_write_moves_tsc"),
    both_modes!("tsc::backwards_host_is_hidden"),
    both_modes!("tsc::freeze_pause_policy"),
    both_modes!("tsc::freeze_continue_policy"),
    both_modes!("tsc::cpuid_frequency_leaf"),
];

const fn flatten() -> [Case; 21] {
    let mut out = [one(""); 21];
    let mut i = 0;
    while i < MODE_DEPENDENT.len() {
        out[2 * i] = MODE_DEPENDENT[i][0];
        out[2 * i + 1] = MODE_DEPENDENT[i][1];
        i += 1;
    }
    out[18] = one("tsc::wrmsr_moves_adjust");
    out[19] = one("tsc::adjust_read_back");
    out[20] = Case {
        name: "tsc::exiting_mode_matches_offset_mode",
        image: TSC_GUEST,
        config: VmConfig::PLAIN,
        expect: Expect::Pass,
        // One RDTSC and one RDTSCP (or RDTSC) ran while exiting was on.
        check: |o| match rdtsc_exits(o) {
            2 => Ok(()),
            n => Err(format!("{n} RDTSC exits, expected 2")),
        },
    };
    out
}

/// The `tsc::*` tests.
pub static CASES: [Case; 21] = flatten();
