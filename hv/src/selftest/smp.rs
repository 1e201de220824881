//! `smp::` self-tests: every CPU runs the hypervisor. They run on the host
//! (no guest): each sends jobs to the application processors through their
//! mailboxes (`smp::mailbox`) and checks what the APs report.

use crate::arch::cpu::rdmsr;
use crate::smp::{mailbox, percpu};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use svm::msr::{EFER, EFER_SVME, VM_HSAVE_PA};

/// A host-side self-test.
#[derive(Clone, Copy, Debug)]
pub struct HostCase {
    /// `smp::<name>`.
    pub name: &'static str,
    /// Runs the test on the boot CPU.
    pub run: fn() -> Result<(), String>,
    /// Online CPUs the test needs (fewer: it is skipped).
    pub cpus: usize,
}

/// The `smp::` tests.
pub const CASES: [HostCase; 15] = [
    HostCase {
        name: "smp::every_cpu_runs",
        run: every_cpu_runs,
        cpus: 1,
    },
    HostCase {
        name: "smp::ap_host_tsc",
        run: ap_host_tsc,
        cpus: 1,
    },
    HostCase {
        name: "smp::ap_watchdog_ticks",
        run: ap_watchdog_ticks,
        cpus: 1,
    },
    HostCase {
        name: "smp::mailbox_kick_is_an_ipi",
        run: mailbox_kick_is_an_ipi,
        cpus: 1,
    },
    HostCase {
        name: "smp::vcpu_ipi",
        run: super::smp_vm::vcpu_ipi,
        cpus: 2,
    },
    HostCase {
        name: "smp::init_sipi_restart",
        run: super::smp_vm::init_sipi_restart,
        cpus: 2,
    },
    HostCase {
        name: "smp::tsc_monotonic_across_vcpus",
        run: super::smp_vm::tsc_monotonic_across_vcpus,
        cpus: 2,
    },
    HostCase {
        name: "smp::tsc_skew_compensated",
        run: super::smp_vm::tsc_skew_compensated,
        cpus: 2,
    },
    HostCase {
        name: "smp::freeze_restore_l1_and_l2",
        run: super::smp_vm::freeze_restore_l1_and_l2,
        cpus: 2,
    },
    HostCase {
        name: "smp::init_in_l2_without_intercept",
        run: super::smp_vm::init_in_l2_without_intercept,
        cpus: 2,
    },
    HostCase {
        name: "smp::vcpus_time_sliced",
        run: super::smp_vm::vcpus_time_sliced,
        cpus: 1,
    },
    HostCase {
        name: "smp::waits_release_vm",
        run: super::smp_vm::waits_release_vm,
        cpus: 2,
    },
    HostCase {
        name: "smp::tsc_aux_per_cpu",
        run: super::smp_vm::tsc_aux_per_cpu,
        cpus: 2,
    },
    HostCase {
        name: "smp::logical_ipi",
        run: super::smp_vm::logical_ipi,
        cpus: 1,
    },
    HostCase {
        name: "smp::cross_modified_store",
        run: super::smp_vm::cross_modified_store,
        cpus: 2,
    },
];

/// A job: this CPU's watchdog ticks.
fn ticks_job(_: u64) -> u64 {
    crate::smp::this().ticks.load(Ordering::Relaxed)
}

/// Every AP's own watchdog ticks while it waits for work: its tick count
/// grows within a second of PIT time (a 10 ms tick; a loaded host can hold
/// QEMU's timer callbacks back for more than 50 ms, so the boot CPU asks
/// again every 50 ms rather than once).
fn ap_watchdog_ticks() -> Result<(), String> {
    const STEP_MS: u64 = 50;
    const WAIT_MS: u64 = 1_000;
    for cpu in percpu::all().iter().skip(1) {
        let i = cpu.index();
        let before = mailbox::run_on(i, ticks_job, 0).map_err(|e| format!("cpu{i}: {e}"))?;
        let mut after = before;
        for _ in 0..WAIT_MS / STEP_MS {
            crate::time::pit::wait_us(STEP_MS * 1000);
            after = mailbox::run_on(i, ticks_job, 0).map_err(|e| format!("cpu{i}: {e}"))?;
            if after > before {
                break;
            }
        }
        if after <= before {
            return Err(format!(
                "cpu{i}: no watchdog tick in {WAIT_MS} ms ({before} -> {after})"
            ));
        }
    }
    Ok(())
}

/// A job that does nothing.
fn nop_job(arg: u64) -> u64 {
    arg
}

/// Posting a job kicks the target with the wake IPI (it does not wait for
/// the target's next watchdog tick): each AP takes at least one wake IPI
/// for a series of jobs (back-to-back kicks may merge in the APIC), and
/// every job's result comes back.
fn mailbox_kick_is_an_ipi() -> Result<(), String> {
    const JOBS: u64 = 10;
    for cpu in percpu::all().iter().skip(1) {
        let i = cpu.index();
        let before = cpu.wakes.load(Ordering::Relaxed);
        for n in 0..JOBS {
            let r = mailbox::run_on(i, nop_job, n).map_err(|e| format!("cpu{i}: {e}"))?;
            if r != n {
                return Err(format!("cpu{i}: job {n} returned {r}"));
            }
        }
        let wakes = cpu.wakes.load(Ordering::Relaxed) - before;
        if wakes == 0 {
            return Err(format!("cpu{i}: {JOBS} jobs, no wake IPI"));
        }
        log::info!("smp: cpu{i}: {JOBS} jobs, {wakes} wake IPIs");
    }
    Ok(())
}

/// What one CPU reports about itself (filled by [`report_job`] there).
#[derive(Debug, Clone, Copy, Default)]
struct Report {
    apic_id: u64,
    efer: u64,
    hsave_msr: u64,
    hsave_owned: u64,
    /// The stack pointer the job ran with.
    rsp: u64,
    /// The top of the kernel stack the CPU's per-CPU block says is its own.
    stack_top: u64,
}

static REPORTS: [[AtomicU64; 6]; percpu::MAX_CPUS] =
    [const { [const { AtomicU64::new(0) }; 6] }; percpu::MAX_CPUS];

/// Runs on the target CPU: records its APIC ID (as its local APIC says),
/// EFER, VM_HSAVE_PA (as the CPU holds it), the host save area its
/// per-CPU block owns (without enabling SVM: that is the CPU's bring-up's
/// job), its stack pointer and its own stack's top. Returns the APIC ID.
fn report_job(_: u64) -> u64 {
    let me = crate::smp::this();
    let slot = &REPORTS[me.index()];
    let apic_id = u64::from(crate::arch::lapic::id());
    // SAFETY: EFER and VM_HSAVE_PA exist on an SVM CPU (and read 0 elsewhere
    // under TCG).
    let (efer, hsave) = unsafe { (rdmsr(EFER), rdmsr(VM_HSAVE_PA)) };
    let owned = me
        .host
        .get()
        .and_then(|h| h.as_ref().ok())
        .map_or(0, |h| h.hsave_pa());
    let rsp: u64;
    // SAFETY: reads a register.
    unsafe { core::arch::asm!("mov {}, rsp", out(reg) rsp, options(nomem, nostack)) };
    let top = me.stack_top.load(Ordering::Relaxed);
    for (cell, value) in slot.iter().zip([apic_id, efer, hsave, owned, rsp, top]) {
        cell.store(value, Ordering::Relaxed);
    }
    apic_id
}

fn report_of(index: usize) -> Report {
    let [a, e, h, o, s, t] = &REPORTS[index];
    Report {
        apic_id: a.load(Ordering::Relaxed),
        efer: e.load(Ordering::Relaxed),
        hsave_msr: h.load(Ordering::Relaxed),
        hsave_owned: o.load(Ordering::Relaxed),
        rsp: s.load(Ordering::Relaxed),
        stack_top: t.load(Ordering::Relaxed),
    }
}

/// Every CPU the firmware reported is online, runs a job sent to it and
/// answers from its own local APIC, with SVM enabled and a host save area
/// of its own (distinct from every other CPU's), on the kernel stack handed
/// out to it (not on a stack the loader left it, which the kernel reclaims);
/// under Limine each AP also left Limine's memory before it said so
/// ([`limine_arrival`]).
fn every_cpu_runs() -> Result<(), String> {
    let cpus = percpu::all();
    if let Some(off) = cpus.iter().find(|c| !c.online.load(Ordering::Acquire)) {
        return Err(format!("cpu{} never came online", off.index()));
    }
    // The boot CPU reports too, directly.
    report_job(0);
    let mut reports: Vec<Report> = alloc::vec![report_of(0)];
    for cpu in cpus.iter().skip(1) {
        let i = cpu.index();
        let answer = mailbox::run_on(i, report_job, 0).map_err(|e| format!("cpu{i}: {e}"))?;
        let r = report_of(i);
        let expected = u64::from(cpu.apic_id.load(Ordering::Relaxed));
        if answer != expected || r.apic_id != expected {
            return Err(format!(
                "cpu{i}: the job ran on APIC ID {answer}, not on the CPU's {expected}"
            ));
        }
        reports.push(r);
    }
    for (i, r) in reports.iter().enumerate() {
        log::info!(
            "smp: cpu{i}: apic id {}, EFER {:#x}, VM_HSAVE_PA {:#x}, rsp {:#x}",
            r.apic_id,
            r.efer,
            r.hsave_msr,
            r.rsp
        );
        if r.efer & EFER_SVME == 0 {
            return Err(format!("cpu{i}: EFER.SVME is clear (EFER {:#x})", r.efer));
        }
        if r.hsave_msr == 0 || r.hsave_msr != r.hsave_owned {
            return Err(format!(
                "cpu{i}: VM_HSAVE_PA {:#x} is not its own host save area {:#x}",
                r.hsave_msr, r.hsave_owned
            ));
        }
        let stack = r.stack_top.saturating_sub(crate::smp::AP_STACK_SIZE)..r.stack_top;
        if r.stack_top == 0 || !stack.contains(&r.rsp) {
            return Err(format!(
                "cpu{i}: runs on the stack at {:#x}, not on its own {:#x}..{:#x}",
                r.rsp, stack.start, stack.end
            ));
        }
        limine_arrival(i, &stack)?;
        if let Some(j) = reports[..i].iter().position(|o| o.hsave_msr == r.hsave_msr) {
            return Err(format!(
                "cpu{i} and cpu{j} share the host save area {:#x}",
                r.hsave_msr
            ));
        }
    }
    if reports.len() < 2 {
        log::warn!("smp::every_cpu_runs: one CPU only (QEMU -smp 1): nothing to compare");
    }
    Ok(())
}

/// Under Limine: the AP counted itself out of Limine's memory (after which
/// the boot CPU reclaims that memory) only once it ran on the kernel's page
/// tables, GDT and waiting IDT, and on its own stack (`stack`).
fn limine_arrival(i: usize, stack: &core::ops::Range<u64>) -> Result<(), String> {
    let Some(got) = crate::boot::limine::arrival(i) else {
        return Ok(()); // not started by Limine
    };
    let want = crate::boot::limine::arrival_expected();
    let wrong = [
        ("CR3", got.cr3, want.cr3),
        ("GDT base", got.gdt_base, want.gdt_base),
        ("IDT base", got.idt_base, want.idt_base),
    ]
    .into_iter()
    .find(|(_, got, want)| got != want);
    if let Some((what, got, want)) = wrong {
        return Err(format!(
            "cpu{i}: counted itself out of Limine's memory with {what} {got:#x}, not the kernel's {want:#x}"
        ));
    }
    if !stack.contains(&got.rsp) {
        return Err(format!(
            "cpu{i}: counted itself out of Limine's memory on the stack at {:#x}, not on its own",
            got.rsp
        ));
    }
    Ok(())
}

/// Each AP's TSC against the boot CPU's (`smp::tsc_sync`): the job runs on
/// the AP itself, every ping-pong round agrees with one offset, and the
/// offset is recorded in the AP's per-CPU block and logged.
fn ap_host_tsc() -> Result<(), String> {
    for cpu in percpu::all().iter().skip(1) {
        let i = cpu.index();
        let m = crate::smp::tsc_sync::measure(i).map_err(|e| format!("cpu{i}: {e}"))?;
        if m.apic_id != cpu.apic_id.load(Ordering::Relaxed) {
            return Err(format!(
                "cpu{i}: the readings came from APIC ID {:#x}, not the AP's",
                m.apic_id
            ));
        }
        if cpu.tsc_offset.load(Ordering::Relaxed) != m.offset {
            return Err(format!("cpu{i}: the offset was not recorded"));
        }
        log::info!(
            "smp: cpu{i}: TSC offset to cpu0 {} ticks (+/- {})",
            m.offset,
            m.error
        );
    }
    Ok(())
}
