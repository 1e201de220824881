//! `smp::` tests with a two-vCPU guest (`vmm::multi`): the guest side is
//! guest-stubs/src/bin/guest/smp.rs. vCPU 0 runs on CPU 0 and reports the
//! verdict; vCPU 1 runs on CPU 1.

use crate::vmm::exits::Stop;
use crate::vmm::multi::{self, Start};
use crate::vmm::vcpu::Vcpu;
use crate::vmm::vm::{RunLimits, Vm, VmConfig};
use crate::vmm::{loader, setup};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

static GUEST: &[u8] = include_bytes!(concat!(env!("HV_GUEST_DIR"), "/guest"));

/// vCPU 1's stack, below vCPU 0's (which starts at the top of RAM).
const SECOND_STACK_BELOW_TOP: u64 = 1 << 20;
/// The stacks of vCPUs 2 and up, below vCPU 1's.
const STACK_SIZE: u64 = 64 << 10;
/// Where `vcpus_time_sliced` tells its guest the vCPU and CPU counts (as
/// guest-stubs/src/bin/guest/smp.rs).
const VCPUS_GPA: u64 = 0x6000;

/// Runs test `name` with vCPU 0 running and vCPU 1 started as `second`.
fn run_two(name: &str, second: Start) -> Result<(), String> {
    run_vm(name, &[Start::Running, second], 2, |_| Ok(()))
}

/// Runs test `name` with a vCPU per entry of `starts` (vCPU 0 must be
/// running) on at most `cpus` CPUs; `prepare` may write the guest's RAM
/// first.
fn run_vm(
    name: &str,
    starts: &[Start],
    cpus: usize,
    prepare: impl FnOnce(&mut Vm) -> Result<(), String>,
) -> Result<(), String> {
    let host = match crate::vmm::enable::this_cpu() {
        Ok(h) => h,
        Err(why) => return Err(format!("SVM unavailable: {why}")),
    };
    let config = VmConfig {
        limits: Some(RunLimits {
            max_exits: RunLimits::SELF_TEST.max_exits,
            time_budget_ms: 10_000,
        }),
        ..VmConfig::PLAIN
    };
    let size = svm::guest_abi::GUEST_MEMORY_SIZE;
    let mut vm = Vm::new(name, size, config).map_err(|e| format!("VM set-up: {e}"))?;
    let entry =
        loader::load(GUEST, &mut vm.memory).map_err(|e| format!("loading the guest: {e:?}"))?;
    setup::write_start_state(&mut vm, name).map_err(String::from)?;
    prepare(&mut vm)?;
    let mut vcpus = Vec::new();
    for i in 0..starts.len() {
        let mut v = Vcpu::new().map_err(String::from)?;
        setup::init_vmcb(&mut v, &vm, entry);
        v.lapic = multi::vcpu_lapic(i, vm.l1_limits.max_phys_bits);
        v.vmcb.state.rsp = match i {
            0 => size,
            1 => size - SECOND_STACK_BELOW_TOP,
            i => size - SECOND_STACK_BELOW_TOP - (i as u64 - 1) * STACK_SIZE,
        };
        vcpus.push(v);
    }
    let (vm, stops) =
        multi::run_on_cpus(vm, &mut vcpus, starts, host, cpus).map_err(String::from)?;
    drop(vm);
    match &stops[0] {
        Stop::Done { pass: true, .. } => {}
        other => return Err(format!("vCPU 0: {other}")),
    }
    for (i, stop) in stops.iter().enumerate().skip(1) {
        match stop {
            Stop::Unhandled(m) if m == multi::VM_STOPPED => {}
            other => return Err(format!("vCPU {i}: {other}")),
        }
    }
    Ok(())
}

/// vCPU 0 sends vCPU 1 a fixed IPI and an NMI (xAPIC ICR).
pub fn vcpu_ipi() -> Result<(), String> {
    run_two("smp::vcpu_ipi", Start::Running)
}

/// vCPU 0 starts vCPU 1 with INIT and SIPI, then restarts it.
pub fn init_sipi_restart() -> Result<(), String> {
    run_two("smp::init_sipi_restart", Start::WaitForSipi)
}

/// vCPUs 0 and 1 read the TSC in turns (shared memory): never backwards,
/// also across a VM-wide TSC move by vCPU 0.
pub fn tsc_monotonic_across_vcpus() -> Result<(), String> {
    run_two("smp::tsc_monotonic_across_vcpus", Start::Running)
}

/// More vCPUs than CPUs: 4 on 2 CPUs (3 on 1 with one CPU; the test uses
/// at most 2, `multi::run_on_cpus`), two or more on each (`multi::run`'s
/// placement): they take turns. vCPU `cpus` (CPU 0's other vCPU) starts
/// waiting for SIPI; vCPU 0 starts it. See the guest side for the rules
/// each phase checks.
pub fn vcpus_time_sliced() -> Result<(), String> {
    let cpus = crate::smp::online_count().min(2);
    let n = (2 * cpus).max(3);
    let mut starts = alloc::vec![Start::Running; n];
    starts[cpus] = Start::WaitForSipi;
    run_vm("smp::vcpus_time_sliced", &starts, cpus, |vm| {
        let counts = [n as u64, cpus as u64];
        let dst = vm
            .memory
            .slice_mut(VCPUS_GPA, 16)
            .map_err(|_| String::from("guest RAM too small"))?;
        for (d, c) in dst.chunks_exact_mut(8).zip(counts) {
            d.copy_from_slice(&c.to_le_bytes());
        }
        Ok(())
    })
}
