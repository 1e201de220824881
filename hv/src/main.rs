//! The hypervisor kernel.
//!
//! Boot order: a loader adapter ([`boot`]) fills a [`boot::BootInfo`] and
//! calls [`kernel_main`], which takes over the machine (descriptor tables,
//! frames, its own page tables, heap), prints the banner and runs the work the
//! command line asks for.
//!
//! Floating point: the kernel is built for `x86_64-unknown-none`, whose
//! target disables SSE and uses soft-float, so the kernel never touches
//! x87/SSE/AVX registers. CR4.OSFXSR stays as the loader left it (off under
//! Limine). Guests therefore own the FPU/SSE state: the world switch need not
//! save or restore it.
#![no_std]
#![no_main]

extern crate alloc;

mod arch;
mod banner;
mod boot;
mod console;
mod guest_boot;
mod mem;
mod selftest;
mod smp;
mod svm_support;
mod time;
mod vmm;

use arch::port::{exit, ExitCode};
use boot::BootInfo;

/// The common entry: every boot path arrives here on the kernel's boot stack.
pub fn kernel_main(boot: BootInfo) -> ! {
    console::init();
    // `guest=NAME`: run the boot module as the one guest (guest_boot). The
    // console is then the guest's: the hypervisor keeps to warnings and
    // its start and end lines.
    let guest = boot.cmdline_value(guest_boot::KEY);
    if guest.is_some() {
        console::set_level("warn");
    }
    let bad_level = boot
        .cmdline_value("log")
        .filter(|level| !console::set_level(level));
    arch::gdt::init();
    smp::init_bsp();
    arch::idt::init();
    // The banner comes first: it is what a person (and the boot tests) reads
    // first, and it must show even when a `fault=` word stops the kernel.
    if guest.is_none() {
        banner::print(&boot);
    }
    if let Some(level) = bad_level {
        log::warn!("unknown log level {level:?} on the command line");
    }
    for word in boot.unknown_cmdline_words(&CMDLINE_KEYS) {
        log::warn!("unknown command-line word {word:?} (known: {KNOWN_WORDS})");
    }
    if boot.memory.dropped() > 0 {
        fatal(format_args!(
            "the loader's memory map has {} more regions than the {} recorded",
            boot.memory.dropped(),
            boot::info::MAX_REGIONS
        ));
    }

    mem::paging::set_hhdm_offset(boot.hhdm_offset);
    mem::frame::init(&boot);
    let cr3 = mem::paging::init(&boot);
    (boot.leave_loader)(cr3);
    let reclaimed = mem::frame::reclaim_bootloader_memory(&boot);
    mem::heap::init();
    // `apic=x2apic`: switch the local APIC to x2APIC mode (as firmware may
    // leave it on real machines) to exercise that path.
    time::start_watchdog(boot.cmdline_value("apic") == Some("x2apic"));
    // Every CPU runs the hypervisor: the APs come up one by one and wait
    // for work (smp).
    let cpus = smp::start_aps(&boot, cr3);
    // Their TSCs against the boot CPU's: compensated from here on.
    smp::tsc_sync::measure_all();
    if guest.is_none() {
        banner::print_cpus(cpus);
    }
    log::info!(
        "memory: {} KiB reclaimed from the loader, {} MiB free",
        reclaimed / 1024,
        mem::frame::free_bytes() >> 20
    );

    match arch::lapic::probe() {
        Ok(l) => log::info!(
            "lapic: id {} version {:#x} at {:#x}",
            l.id,
            l.version & 0xff,
            l.base
        ),
        Err(e) => log::warn!("lapic: {e}"),
    }

    if let Some(kind) = boot.cmdline_value("fault") {
        deliberate_fault(kind);
    }

    if let Some(name) = guest {
        guest_boot::run(&boot, name)
    }

    // `fuzz=SEED,ITERATIONS[,MINUTES[,START]]`: the hostile-L1 fuzzer
    // instead of the self-tests.
    if let Some(spec) = boot.cmdline_value("fuzz") {
        let clean = selftest::fuzz::run(spec);
        exit(if clean {
            ExitCode::Success
        } else {
            ExitCode::Failure
        })
    }
    let summary = selftest::run(boot.cmdline_value("tests"));
    exit(verdict(&summary))
}

/// The command-line keys the kernel knows (`key=value` words).
/// Words after a `--` word are a guest's (`guest=`), not the kernel's.
const CMDLINE_KEYS: [&str; 9] = [
    "log",
    "fault",
    "tests",
    "apic",
    "fuzz",
    guest_boot::KEY,
    guest_boot::MEM_KEY,
    guest_boot::CPU_KEY,
    guest_boot::CPUS_KEY,
];
/// The same, as the warning about an unknown word shows them (no heap yet).
const KNOWN_WORDS: &str =
    "log=, fault=, tests=, apic=, fuzz=, guest=, guest_mem=, guest_cpu=, guest_cpus=";

/// A run's verdict: a failure when a test failed or the filter selected no
/// test; "nothing ran" when tests were selected but all were skipped (no SVM
/// here), so that a machine that cannot test never reports success.
fn verdict(summary: &selftest::Summary) -> ExitCode {
    if summary.nothing_selected || summary.failed > 0 {
        ExitCode::Failure
    } else if summary.passed == 0 && summary.skipped > 0 {
        crate::println!(
            "nothing ran: all {} selected tests were skipped (exit status 37)",
            summary.skipped
        );
        ExitCode::NothingRan
    } else {
        ExitCode::Success
    }
}

/// Faults on purpose (`fault=page|panic|stack` on the command line, or
/// `fault=ap-page|ap-panic|ap-stack` on the first application processor),
/// to show the fault reports work and name the CPU.
fn deliberate_fault(kind: &str) {
    if let Some(ap_kind) = kind.strip_prefix("ap-") {
        let code = match ap_kind {
            "page" => 1,
            "panic" => 2,
            "stack" => 3,
            _ => 0,
        };
        if code != 0 {
            log::info!("fault={kind}: on cpu1");
            let result = smp::mailbox::run_on(1, fault_on_this_cpu, code);
            log::error!("fault={kind}: cpu1 returned {result:?}");
            return;
        }
    }
    match kind {
        "page" => {
            log::info!("fault=page: reading an unmapped address");
            // SAFETY: not safe at all, on purpose: the read faults and the
            // page-fault handler stops the machine.
            let value = unsafe { core::ptr::read_volatile(0x1000 as *const u64) };
            log::error!("read of unmapped memory returned {value:#x}");
        }
        "panic" => panic!("deliberate panic requested on the command line"),
        "stack" => {
            log::info!("fault=stack: recursing into the guard page");
            log::error!("recursion returned {}", recurse(0));
        }
        other => {
            log::warn!("unknown fault={other} ignored (page|panic|stack|ap-page|ap-panic|ap-stack)")
        }
    }
}

/// A mailbox job: the deliberate fault `code` (1 page, 2 panic, 3 stack)
/// on the CPU that runs it.
fn fault_on_this_cpu(code: u64) -> u64 {
    deliberate_fault(match code {
        1 => "page",
        2 => "panic",
        _ => "stack",
    });
    0
}

/// Burns stack until the guard page stops it.
fn recurse(depth: u64) -> u64 {
    let pad = core::hint::black_box([depth; 64]);
    if pad[0] == u64::MAX {
        return 0;
    }
    recurse(depth + 1) + pad[(depth % 64) as usize]
}

/// Prints a fatal error and stops the machine with a failure verdict.
pub fn fatal(args: core::fmt::Arguments<'_>) -> ! {
    console::init();
    console::write_fmt_emergency(format_args!(
        "\nFATAL: cpu{}: {args}\n",
        smp::report_index()
    ));
    exit(ExitCode::Failure)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    console::init();
    let cpu = smp::report_index();
    match info.location() {
        Some(l) => console::write_fmt_emergency(format_args!(
            "\npanic on cpu{cpu} at {}:{}:{}: {}\n",
            l.file(),
            l.line(),
            l.column(),
            info.message()
        )),
        None => {
            console::write_fmt_emergency(format_args!("\npanic on cpu{cpu}: {}\n", info.message()))
        }
    }
    exit(ExitCode::Failure)
}
