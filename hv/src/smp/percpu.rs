//! Per-CPU data: one [`PerCpu`] block per CPU running the hypervisor,
//! reached through the GS base (`gs:[0]` holds the block's own address), so
//! [`this`] is one load. CPU indices are dense: 0 is the boot CPU, the
//! application processors follow in the order the firmware lists them.
//!
//! The GS base is set after the CPU's GDT is loaded (loading a null GS
//! selector may clear it) and before SVM is enabled: the host save VMCB
//! that `vmm::enable` stores with VMSAVE then holds it, and the world
//! switch's VMLOAD brings it back after every guest run, before GIF is set
//! again (so no interrupt or NMI handler sees a guest's GS base).

use crate::vmm::enable::HostCpu;
use core::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use spin::Once;

/// Most CPUs the hypervisor runs on (as many as the boot record holds).
pub const MAX_CPUS: usize = crate::boot::info::MAX_CPUS;

/// One CPU's own state.
#[repr(C)]
#[derive(Debug)]
pub struct PerCpu {
    /// This block's address (`gs:[0]`).
    self_ptr: AtomicU64,
    /// Dense CPU index (0 = boot CPU).
    pub index: AtomicU32,
    /// Local APIC ID.
    pub apic_id: AtomicU32,
    /// Set by the CPU itself once it runs the hypervisor (own stack, GDT,
    /// TSS, IDT, SVM attempted, watchdog started) and waits for work.
    pub online: AtomicBool,
    /// Watchdog ticks this CPU took.
    pub ticks: AtomicU64,
    /// Wake IPIs (mailbox kicks) this CPU took.
    pub wakes: AtomicU64,
    /// SVM on this CPU (`vmm::enable::this_cpu`): own host save area and
    /// host save VMCB.
    pub host: Once<Result<HostCpu, &'static str>>,
    /// Work for this CPU (`smp::mailbox`).
    pub mailbox: super::mailbox::Mailbox,
    /// This CPU's TSC minus the boot CPU's, as measured at boot
    /// (`smp::tsc_sync`); 0 for the boot CPU.
    pub tsc_offset: AtomicI64,
    /// Half the width of the window the offset was measured in (ticks).
    pub tsc_offset_error: AtomicU64,
    /// Top of this CPU's own kernel stack (`smp::AP_STACK_SIZE` bytes below
    /// it), recorded by the boot CPU when it hands the stack out: the
    /// `smp::every_cpu_runs` self-test checks that each CPU runs on it.
    pub stack_top: AtomicU64,
    /// What `time::host_tsc` subtracts from this CPU's TSC to read the boot
    /// CPU's time (`svm::tsc::skew::compensation` of the two above).
    pub tsc_compensation: AtomicI64,
    /// Self-tests only: added to every reading of this CPU's TSC, as if
    /// its TSC ran that far from the others (`time::host_tsc::simulate`).
    pub tsc_simulated: AtomicU64,
    /// The TSC_AUX value this CPU's MSR holds (`u64::MAX`: unknown): the
    /// MSR is per CPU, and the host never uses RDTSCP, so the last vCPU's
    /// value stays loaded (`vmm::tsc`).
    pub loaded_tsc_aux: AtomicU64,
}

impl PerCpu {
    const fn new() -> Self {
        Self {
            self_ptr: AtomicU64::new(0),
            index: AtomicU32::new(0),
            apic_id: AtomicU32::new(0),
            online: AtomicBool::new(false),
            ticks: AtomicU64::new(0),
            wakes: AtomicU64::new(0),
            host: Once::new(),
            mailbox: super::mailbox::Mailbox::new(),
            tsc_offset: AtomicI64::new(0),
            tsc_offset_error: AtomicU64::new(0),
            stack_top: AtomicU64::new(0),
            tsc_compensation: AtomicI64::new(0),
            tsc_simulated: AtomicU64::new(0),
            loaded_tsc_aux: AtomicU64::new(u64::MAX),
        }
    }

    /// Dense CPU index.
    pub fn index(&self) -> usize {
        self.index.load(Ordering::Relaxed) as usize
    }
}

static CPUS: [PerCpu; MAX_CPUS] = [const { PerCpu::new() }; MAX_CPUS];
/// How many blocks are assigned (CPUs found, online or not).
static COUNT: AtomicUsize = AtomicUsize::new(0);

const MSR_GS_BASE: u32 = 0xc000_0101;

/// Assigns the next block to the CPU with `apic_id`; `None` when full.
pub fn assign(apic_id: u32) -> Option<&'static PerCpu> {
    let index = COUNT.fetch_add(1, Ordering::SeqCst);
    let Some(cpu) = CPUS.get(index) else {
        COUNT.fetch_sub(1, Ordering::SeqCst);
        return None;
    };
    cpu.self_ptr
        .store(cpu as *const PerCpu as u64, Ordering::Relaxed);
    cpu.index.store(index as u32, Ordering::Relaxed);
    cpu.apic_id.store(apic_id, Ordering::Relaxed);
    Some(cpu)
}

/// Points this CPU's GS base at `cpu`.
pub fn install(cpu: &'static PerCpu) {
    // SAFETY: IA32_GS_BASE exists on every x86-64 CPU; the kernel uses GS
    // for nothing else.
    unsafe { crate::arch::cpu::wrmsr(MSR_GS_BASE, cpu as *const PerCpu as u64) };
}

/// The running CPU's block. Valid on every CPU once it called [`install`]
/// (the boot CPU does so first thing in `kernel_main`).
pub fn this() -> &'static PerCpu {
    let p: u64;
    // SAFETY: gs:[0] is the block's self pointer (install).
    unsafe {
        core::arch::asm!("mov {}, gs:[0]", out(reg) p, options(pure, readonly, nostack, preserves_flags))
    };
    // SAFETY: blocks are statics; install stored a pointer to one.
    unsafe { &*(p as *const PerCpu) }
}

/// Every assigned block, in index order.
pub fn all() -> &'static [PerCpu] {
    &CPUS[..COUNT.load(Ordering::SeqCst).min(MAX_CPUS)]
}

/// The block of CPU `index`, if assigned.
pub fn get(index: usize) -> Option<&'static PerCpu> {
    all().get(index)
}

/// The running CPU's index found without the GS base (by its APIC ID), for
/// fault reports: they must work whatever state the CPU is in. 0 when the
/// APIC ID is not (yet) known.
pub fn index_by_apic_id() -> usize {
    let id = crate::arch::cpu::apic_id();
    all()
        .iter()
        .position(|c| c.apic_id.load(Ordering::Relaxed) == id)
        .unwrap_or(0)
}
