//! `fuzz=SEED,ITERATIONS[,MINUTES[,START]]`: runs the hostile L1
//! (`guest-stubs/src/bin/fuzz/`) instead of the self-tests, as a
//! production VM (`VmConfig::guest`: nested SVM, no run limits, no test
//! hypercalls).
//!
//! L1 runs a range of iterations and keeps its counts in a record in its
//! memory ([`svm::fuzz::Record`]), which L0 reads when the VM ends. A VM
//! that L0 stops (anything but L1's own `HC_DONE` pass) is a hypervisor
//! failure at the iteration the record names: it is reported with a
//! reproducer and a fresh VM goes on at the next iteration. Frames are
//! counted around every VM. At the end: the histogram of what L1 saw and
//! `fuzz: <N> iterations, seed <S>: <K> hypervisor failures`.

use crate::println;
use crate::vmm::exits::Stop;
use crate::vmm::vcpu::Vcpu;
use crate::vmm::vm::{Vm, VmConfig};
use crate::vmm::{enable, loader, setup};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use svm::fuzz::{Cmdline, Record, Spec, L1_FAULT_KEY, RECORD_GPA, RECORD_MAGIC};
use svm::ExitCode;

static FUZZ_L1: &[u8] = include_bytes!(concat!(env!("HV_GUEST_DIR"), "/fuzz"));

/// The fuzz VM's RAM: L1's image and stack, and L2's sandbox at 4 MiB.
const FUZZ_RAM: u64 = 8 << 20;
/// Iterations per VM: a VM has no run limits (a production VM), but a
/// fresh one every few thousand iterations has its frames counted and
/// starts L1 from scratch.
const CHUNK: u64 = 5_000;

/// A production VM: nested SVM, L0's vmcb12 checks, no run limits, no
/// test hypercalls.
const FUZZ_CONFIG: VmConfig = VmConfig::guest(true);

/// How one VM of the run ended.
struct VmEnd {
    stop: Stop,
    /// L1's record, if L1 got far enough to write one.
    record: Option<Record>,
    exits: u64,
    in_l2: bool,
}

/// Runs the fuzzer; true when no hypervisor failure was found.
pub fn run(value: &str) -> bool {
    let Some(cmd) = Cmdline::parse(value) else {
        println!("fuzz: cannot parse fuzz={value} (expected SEED,ITERATIONS[,MINUTES[,START]])");
        return false;
    };
    let host = match enable::this_cpu() {
        Ok(h) => h,
        Err(why) => {
            println!("fuzz: SVM unavailable: {why}");
            return false;
        }
    };
    println!(
        "fuzz: seed {} iterations {}..{}{}",
        cmd.seed,
        cmd.start,
        cmd.start.saturating_add(cmd.iterations),
        match cmd.minutes {
            0 => String::new(),
            m => format!(", at most {m} min"),
        }
    );
    let started = crate::time::uptime_ms();
    let limit_ms = cmd.minutes.saturating_mul(60_000);
    let end = cmd.start.saturating_add(cmd.iterations);
    let mut total = Record::new();
    let mut failures: Vec<String> = Vec::new();
    let mut stopped_iterations = 0;
    let mut next = cmd.start;
    while next < end {
        let elapsed = crate::time::uptime_ms() - started;
        if limit_ms != 0 && elapsed >= limit_ms {
            break;
        }
        let spec = Spec {
            seed: cmd.seed,
            first: next,
            count: (end - next).min(CHUNK),
            ms: if limit_ms == 0 { 0 } else { limit_ms - elapsed },
        };
        let free_before = crate::mem::frame::free_bytes();
        let vm_started = crate::time::uptime_ms();
        let vm_end = run_vm(host, &spec);
        log::info!("fuzz: VM ran {} ms", crate::time::uptime_ms() - vm_started);
        let leaked = free_before.saturating_sub(crate::mem::frame::free_bytes());
        let (ran_to, failure) = match vm_end {
            Err(why) => (spec.first + 1, Some(format!("VM set-up: {why}"))),
            Ok(e) => judge(&spec, e, &mut total),
        };
        let failed = failure.is_some();
        if let Some(what) = failure {
            stopped_iterations += 1;
            report(&mut failures, cmd.seed, ran_to - 1, &what);
        }
        if leaked != 0 {
            let kib = leaked / 1024;
            let what = format!("{kib} KiB of frames not freed after the VM ended");
            report(&mut failures, cmd.seed, ran_to.saturating_sub(1), &what);
        }
        // A VM that passed short of its range stopped at the time limit.
        if !failed && ran_to < spec.first + spec.count {
            break;
        }
        next = ran_to;
    }
    let elapsed_ms = (crate::time::uptime_ms() - started).max(1);
    let iterations = total.done + stopped_iterations;
    print_histogram(&total);
    print_kinds(&total);
    println!(
        "fuzz: {} oracle mismatches, {} emulator deviations (not counted), {} legal-looking vmcb12s ended in VMEXIT_INVALID",
        total.mismatches, total.deviations, total.invalid_but_legal
    );
    println!(
        "fuzz: {iterations} iterations in {} ms ({} per second)",
        elapsed_ms,
        iterations * 1000 / elapsed_ms
    );
    let k = total.mismatches + failures.len() as u64;
    println!(
        "fuzz: {iterations} iterations, seed {}: {k} hypervisor failures",
        cmd.seed
    );
    k == 0
}

/// Prints one hypervisor failure with its reproducer.
fn report(failures: &mut Vec<String>, seed: u64, iteration: u64, what: &str) {
    println!("fuzz: FAILURE seed={seed} iter={iteration}: {what} (replay: cargo xtask fuzz --seed {seed} --start {iteration} --iterations 1)");
    failures.push(String::from(what));
}

/// Reads the VM's end: adds L1's counts to `total`, returns the first
/// iteration not run and the failure, if L0 stopped the VM.
fn judge(spec: &Spec, e: VmEnd, total: &mut Record) -> (u64, Option<String>) {
    let next = e.record.map_or(spec.first, |r| {
        r.next.clamp(spec.first, spec.first + spec.count)
    });
    if let Some(r) = &e.record {
        total.merge(r);
    }
    log::info!(
        "fuzz: VM for iterations {}..{}: {} exits, {}",
        spec.first,
        next,
        e.exits,
        e.stop
    );
    match e.stop {
        Stop::Done { pass: true, .. } => (next, None),
        Stop::Done {
            pass: false,
            message,
        } => (next + 1, Some(format!("L1 failed: {message}"))),
        stop => {
            let where_ = if e.in_l2 {
                "while L2 ran"
            } else {
                "while L1 ran"
            };
            (
                next + 1,
                Some(format!("L0 stopped the VM {where_}: {stop}")),
            )
        }
    }
}

/// Builds a fuzz VM for `spec`, runs it to its end, reads L1's record.
fn run_vm(host: &enable::HostCpu, spec: &Spec) -> Result<VmEnd, String> {
    let mut name = String::new();
    spec.write_name(&mut name)
        .map_err(|_| "formatting the spec")?;
    let mut vm = Vm::new("fuzz", FUZZ_RAM, FUZZ_CONFIG).map_err(String::from)?;
    let entry = loader::load(FUZZ_L1, &mut vm.memory).map_err(|e| format!("loading L1: {e:?}"))?;
    setup::write_start_state(&mut vm, &name).map_err(String::from)?;
    let mut vcpu = Vcpu::new().map_err(String::from)?;
    setup::init_vmcb(&mut vcpu, &vm, entry);
    let stop = vcpu.run(&mut vm, host);
    Ok(VmEnd {
        stop,
        record: read_record(&vm),
        exits: vcpu.exits,
        in_l2: vcpu.nested.in_l2(),
    })
}

fn read_record(vm: &Vm) -> Option<Record> {
    let len = core::mem::size_of::<Record>() as u64;
    let bytes = vm.memory.slice(RECORD_GPA, len).ok()?;
    // SAFETY: `len` bytes of guest RAM; Record is plain integers, so any
    // bit pattern is valid; read_unaligned needs no alignment.
    let r: Record = unsafe { core::ptr::read_unaligned(bytes.as_ptr() as *const Record) };
    (r.magic == RECORD_MAGIC).then_some(r)
}

fn outcome_name(key: u64) -> String {
    if key & L1_FAULT_KEY != 0 {
        format!("L1 fault, vector {}", key & 0xff)
    } else if svm::fuzz::is_invalid(key) {
        String::from("VMEXIT_INVALID")
    } else {
        format!("{:?} ({key:#x})", ExitCode::from_raw(key))
    }
}

/// One line per kind of L1 report: `fuzz: kind <hash> <count>` (the
/// reproducer lines carry the hash as `kind=<hash>`).
fn print_kinds(r: &Record) {
    for [hash, n] in r.kinds.iter().filter(|s| s[1] != 0) {
        println!("fuzz: kind {hash:016x} {n}");
    }
}

fn print_histogram(r: &Record) {
    let mut slots: Vec<[u64; 2]> = r.histogram.iter().copied().filter(|s| s[1] != 0).collect();
    slots.sort_by(|a, b| b[1].cmp(&a[1]).then(a[0].cmp(&b[0])));
    println!("fuzz: histogram of what L1 saw after its VMRUNs:");
    for [key, n] in slots {
        println!("fuzz:   {:>10}  {}", n, outcome_name(key));
    }
}
