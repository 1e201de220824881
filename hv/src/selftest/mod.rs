//! The self-test harness: each test boots a fresh VM with a guest stub and
//! compares what happened with what was expected.
//!
//! Output, one line per test: `test <group>::<name> ... ok`, `... FAILED
//! (<reason>)` or `... skipped (<reason>)`, then `N passed, N failed` (and
//! `, N skipped`). The command-line word `tests=<prefix>[,<prefix>...]`
//! selects tests by name prefix; `tests=none` runs none. A filtered run first
//! prints `selected N of M tests (tests=...)`; a filter that selects no test is
//! an error that names the groups (`guest`, `tsc`, `nested`, `smp`).
//! The `smp::` tests run on the host, before the guest tests.

pub mod fuzz;
mod guest;
mod nested;
mod smp;
mod smp_vm;
mod tsc;

use crate::println;
use crate::vmm::exits::Stop;
use crate::vmm::vcpu::Vcpu;
use crate::vmm::vm::{RunLimits, Vm, VmConfig};
use crate::vmm::{enable, loader, setup};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// What a test expects the guest to end with.
#[derive(Clone, Copy, Debug)]
pub enum Expect {
    /// The guest reports a pass.
    Pass,
    /// The hypervisor stops the guest for the reason this predicate accepts
    /// (described by the string).
    Stop(fn(&Stop, &Outcome) -> bool, &'static str),
}

/// Everything a finished test left to inspect.
#[derive(Debug)]
pub struct Outcome {
    /// Why the guest stopped.
    pub stop: Stop,
    /// The vCPU, with its exit statistics and final VMCB.
    pub vcpu: Vcpu,
    /// Guest console lines.
    pub console: Vec<String>,
}

/// One self-test.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    /// `<group>::<name>`; also the name the guest dispatches on.
    pub name: &'static str,
    /// The guest image (ELF).
    pub image: &'static [u8],
    /// How the VM is set up.
    pub config: crate::vmm::vm::VmConfig,
    /// Expected end.
    pub expect: Expect,
    /// Further host-side checks once the expectation holds.
    pub check: fn(&Outcome) -> Result<(), String>,
}

/// A check that always agrees, for tests whose guest checks everything.
pub fn no_check(_: &Outcome) -> Result<(), String> {
    Ok(())
}

/// Totals of a run.
#[derive(Debug, Default)]
pub struct Summary {
    /// The `tests=` filter selected no test (not even `tests=none`).
    pub nothing_selected: bool,
    /// Tests that passed.
    pub passed: usize,
    /// Tests that failed.
    pub failed: usize,
    /// Tests that could not run here.
    pub skipped: usize,
}

impl Summary {
    /// Prints a test's line (`test NAME ... ok` or `... FAILED (why)`) and
    /// counts it.
    fn record(&mut self, name: &str, verdict: Result<(), String>) {
        match verdict {
            Ok(()) => {
                println!("test {name} ... ok");
                self.passed += 1;
            }
            Err(reason) => {
                println!("test {name} ... FAILED ({reason})");
                self.failed += 1;
            }
        }
    }
}

fn selected(name: &str, filter: Option<&str>) -> bool {
    match filter {
        None => true,
        Some("none") => false,
        Some(prefixes) => prefixes.split(',').any(|p| name.starts_with(p)),
    }
}

/// The test groups, for the message about a filter that selects nothing.
const GROUPS: &str = "guest, tsc, nested, smp";

/// Runs the selected tests and prints one line each and the totals.
pub fn run(filter: Option<&str>) -> Summary {
    let mut summary = Summary::default();
    let host = enable::this_cpu();
    // Tests TCG cannot run: only when a filter names them in full.
    let named = |c: &&Case| filter.is_some_and(|f| f.split(',').any(|p| p == c.name));
    let all = || {
        guest::CASES
            .iter()
            .chain(tsc::CASES.iter())
            .chain(nested::CASES.iter())
    };
    let total = all().count() + smp::CASES.len();
    let cases: Vec<&Case> = all()
        .chain(guest::ON_REQUEST.iter().filter(named))
        .filter(|c| selected(c.name, filter))
        .collect();
    let host_cases: Vec<&smp::HostCase> = smp::CASES
        .iter()
        .filter(|c| selected(c.name, filter))
        .collect();
    match filter {
        None | Some("none") => {}
        Some(f) if cases.is_empty() && host_cases.is_empty() => {
            println!(
                "tests={f} selects no test; the groups are {GROUPS} (e.g. tests=tsc:: or tests=guest::cpuid; tests=none runs none)"
            );
            summary.nothing_selected = true;
            return summary;
        }
        Some(f) => {
            for prefix in f.split(',').filter(|p| {
                !cases.iter().any(|c| c.name.starts_with(p))
                    && !host_cases.iter().any(|c| c.name.starts_with(p))
            }) {
                log::warn!("tests={f}: {prefix:?} selects no test (groups: {GROUPS})");
            }
            println!(
                "selected {} of {total} tests (tests={f})",
                cases.len() + host_cases.len()
            );
        }
    }
    for case in host_cases {
        if crate::smp::online_count() < case.cpus {
            println!(
                "test {} ... skipped (needs {} CPUs, {} online)",
                case.name,
                case.cpus,
                crate::smp::online_count()
            );
            summary.skipped += 1;
            continue;
        }
        summary.record(case.name, (case.run)());
    }
    for case in cases {
        let host = match host {
            Ok(h) => h,
            Err(why) => {
                println!("test {} ... skipped (SVM unavailable: {why})", case.name);
                summary.skipped += 1;
                continue;
            }
        };
        let free_before = crate::mem::frame::free_bytes();
        let verdict = run_case(case, host);
        let leaked = free_before.saturating_sub(crate::mem::frame::free_bytes());
        let verdict = verdict.and_then(|()| match leaked {
            0 => Ok(()),
            n => Err(format!(
                "{} KiB of frames not freed after the VM ended",
                n / 1024
            )),
        });
        summary.record(case.name, verdict);
    }
    if summary.skipped > 0 {
        println!(
            "{} passed, {} failed, {} skipped",
            summary.passed, summary.failed, summary.skipped
        );
    } else {
        println!("{} passed, {} failed", summary.passed, summary.failed);
    }
    summary
}

/// Builds the VM, runs the guest, judges the outcome. The VM is dropped
/// (its frames freed) before this returns.
fn run_case(case: &Case, host: &enable::HostCpu) -> Result<(), String> {
    let memory_size = svm::guest_abi::GUEST_MEMORY_SIZE;
    // Run limits are the harness's: a looping guest must not hang the run.
    let config = VmConfig {
        limits: Some(case.config.limits.unwrap_or(RunLimits::SELF_TEST)),
        ..case.config
    };
    let mut vm = Vm::new(case.name, memory_size, config).map_err(|e| format!("VM set-up: {e}"))?;
    let entry = loader::load(case.image, &mut vm.memory)
        .map_err(|e| format!("loading the guest: {e:?}"))?;
    setup::write_start_state(&mut vm, case.name).map_err(String::from)?;
    let mut vcpu = Vcpu::new().map_err(String::from)?;
    setup::init_vmcb(&mut vcpu, &vm, entry);
    let stop = vcpu.run(&mut vm, host);
    let outcome = Outcome {
        stop,
        vcpu,
        console: core::mem::take(&mut vm.console),
    };
    drop(vm);
    log::debug!(
        "{}: {} exits {:x?}",
        case.name,
        outcome.vcpu.exits,
        outcome.vcpu.exit_counts
    );
    match (case.expect, &outcome.stop) {
        (Expect::Pass, Stop::Done { pass: true, .. }) => {}
        (Expect::Pass, other) => return Err(format!("{other}")),
        (Expect::Stop(accept, _), stop) if accept(stop, &outcome) => {}
        (Expect::Stop(_, wanted), stop) => return Err(format!("expected {wanted}, got: {stop}")),
    }
    (case.check)(&outcome)
}
