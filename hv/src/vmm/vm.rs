//! A virtual machine: guest RAM, nested page tables, the permission maps,
//! and the host-side devices its guest talks to (the console).

use super::memory::GuestMemory;
use super::npt::Npt;
use super::phys_box::PhysBox;
use alloc::string::String;
use alloc::vec::Vec;
use svm::cpuid_filter::{filter, GuestCpuidPolicy, HiddenFeatures};
use svm::nested::checks::L1Limits;
use svm::nested::l1_cpu::L1Cpuid;
use svm::tsc::{TscMode, VmTsc};
use svm::{IoPermissionMap, MsrPermissionMap};

/// Limits on a guest's run. Only the self-test harness sets them (a guest
/// under test that loops must not hang the suite); a VM that is not a test
/// has none and runs until its guest stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunLimits {
    /// Exits after which the guest is stopped ([`Stop::TooManyExits`]).
    ///
    /// [`Stop::TooManyExits`]: super::exits::Stop::TooManyExits
    pub max_exits: u64,
    /// Longest the guest may run, in milliseconds of watchdog time
    /// ([`Stop::TimedOut`]).
    ///
    /// [`Stop::TimedOut`]: super::exits::Stop::TimedOut
    pub time_budget_ms: u64,
}

impl RunLimits {
    /// What the self-test harness gives a test that sets nothing else:
    /// the longest self-test takes well under a second, even unoptimized
    /// under TCG, with far fewer exits.
    pub const SELF_TEST: RunLimits = RunLimits {
        max_exits: 1_000_000,
        time_budget_ms: 20_000,
    };
}

/// How a VM is set up.
#[derive(Clone, Copy, Debug)]
pub struct VmConfig {
    /// How RDTSC is served.
    pub tsc_mode: TscMode,
    /// Whether guests are offered SVM (nested virtualization).
    pub nested_svm: bool,
    /// Whether L0 checks vmcb12 before VMRUN. Only a self-test turns this
    /// off, to show that a vmcb12 the CPU itself refuses still ends as
    /// VMEXIT_INVALID for L1; guests cannot change it.
    pub vmcb12_checks: bool,
    /// Run limits: `None` (a VM that is not a test) runs until the guest
    /// stops. The self-test harness fills in [`RunLimits::SELF_TEST`] when
    /// a test sets none.
    pub limits: Option<RunLimits>,
    /// Whether the test hypercalls answer (exit counts, TSC hooks, waits,
    /// queued interrupts), including from an L2. Only self-tests turn them
    /// on: they skew the host's TSC or stall the host CPU.
    pub test_hypercalls: bool,
    /// Features the guest's CPU model leaves out (`guest_cpu=`): hidden
    /// from its CPUID, their instructions #UD (exits::dispatch).
    pub hidden_cpu: HiddenFeatures,
    /// Whether the PC's VGA window (svm::emulate::unbacked::PC_HOLE) is
    /// unbacked rather than RAM: Multiboot guests (a PC's memory map).
    pub pc_hole: bool,
}

impl VmConfig {
    /// A VM that is not a test: TSC offsetting, SVM offered or not, no
    /// run limits, no test hypercalls (they answer HC_UNKNOWN).
    pub const fn guest(nested_svm: bool) -> VmConfig {
        VmConfig {
            tsc_mode: TscMode::Offsetting,
            nested_svm,
            vmcb12_checks: true,
            limits: None,
            test_hypercalls: false,
            hidden_cpu: HiddenFeatures::empty(),
            pc_hole: false,
        }
    }

    /// Self-test VM: TSC offsetting, no SVM, test hypercalls on.
    pub const PLAIN: VmConfig = VmConfig {
        test_hypercalls: true,
        ..VmConfig::guest(false)
    };
    /// Self-test VM: TSC offsetting, SVM offered (the guest can be an L1
    /// hypervisor), test hypercalls on.
    pub const NESTED: VmConfig = VmConfig {
        test_hypercalls: true,
        ..VmConfig::guest(true)
    };
}

/// MSRs guests use directly: their state is in the VMCB (moved by VMLOAD/
/// VMSAVE), so letting the guest read and write them exposes nothing.
pub const PASSTHROUGH_MSRS: [u32; 3] = [
    svm::msr::FS_BASE,
    svm::msr::GS_BASE,
    svm::msr::KERNEL_GS_BASE,
];

/// Most console lines a VM keeps for inspection (all are printed).
const MAX_CONSOLE_LINES: usize = 64;

/// A VM.
#[derive(Debug)]
pub struct Vm {
    /// Name, for console prefixes and reports.
    pub name: String,
    /// Guest RAM.
    pub memory: GuestMemory,
    /// Its nested page tables.
    pub npt: Npt,
    /// MSR intercepts (everything but [`PASSTHROUGH_MSRS`]).
    pub msrpm: PhysBox<MsrPermissionMap>,
    /// I/O intercepts (every port).
    pub iopm: PhysBox<IoPermissionMap>,
    /// Console output line in progress.
    console_line: String,
    /// Finished console lines.
    pub console: Vec<String>,
    /// The VM-wide TSC state.
    pub tsc: VmTsc,
    /// L0's clock ([`crate::time::now_ns`]) when the VM was created: the
    /// zero of [`svm::guest_abi::HC_NOW_NS`].
    pub created_ns: u64,
    /// Whether the guest is offered SVM.
    pub nested_svm: bool,
    /// See [`VmConfig::vmcb12_checks`].
    pub vmcb12_checks: bool,
    /// See [`VmConfig::limits`].
    pub limits: Option<RunLimits>,
    /// See [`VmConfig::test_hypercalls`].
    pub test_hypercalls: bool,
    /// See [`VmConfig::hidden_cpu`].
    pub hidden_cpu: HiddenFeatures,
    /// What vmcb12 may hold, from the CPUID this VM's guest sees (so
    /// computed once, here).
    pub l1_limits: L1Limits,
    /// The PC platform's port devices (COM1, exit device, fw_cfg, PICs)
    /// of a VM running an external guest (`crate::guest_boot`); `None`
    /// for self-test VMs, whose console is prefixed line by line.
    pub devices: Option<svm::devices::PortBus>,
    /// The vCPUs' inboxes when the VM has several (`vmm::multi`).
    pub smp: Option<super::multi::VmSmp>,
}

impl Vm {
    /// A VM with `memory_size` bytes of zeroed RAM (a multiple of 2 MiB).
    pub fn new(name: &str, memory_size: u64, config: VmConfig) -> Result<Self, &'static str> {
        let memory =
            GuestMemory::new(memory_size, config.pc_hole).ok_or("out of memory for guest RAM")?;
        let l1_limits = l1_limits(config.nested_svm, config.hidden_cpu);
        let unbacked_limit = svm::emulate::unbacked::phys_limit(l1_limits.max_phys_bits);
        let mut npt = Npt::new(memory.host_phys(), memory.layout(), unbacked_limit)?;
        // The local APIC's page exits on every access (exits::apic).
        let apic = svm::devices::lapic::DEFAULT_BASE;
        if svm::emulate::unbacked::is_unbacked(apic, memory.layout(), unbacked_limit) {
            npt.add_mmio_page(apic)?;
        }
        let mut msrpm: PhysBox<MsrPermissionMap> =
            PhysBox::new_zeroed().ok_or("out of memory for the MSRPM")?;
        msrpm.set_intercept_all();
        for msr in PASSTHROUGH_MSRS {
            // These MSRs are inside the map's ranges, so this cannot fail.
            let _ = msrpm.set_read_intercept(msr, false);
            let _ = msrpm.set_write_intercept(msr, false);
        }
        let mut iopm: PhysBox<IoPermissionMap> =
            PhysBox::new_zeroed().ok_or("out of memory for the IOPM")?;
        iopm.set_intercept_all();
        // The VM is created now: its TSC counts from 0 from here (seed 002).
        // Its clock's zero is read first, so it is never after the TSC's.
        let created_ns = crate::time::now_ns();
        let tsc = VmTsc::new(
            crate::time::host_tsc::read(),
            crate::time::tsc_frequency().khz,
            config.tsc_mode,
        );
        Ok(Self {
            tsc,
            created_ns,
            nested_svm: config.nested_svm,
            vmcb12_checks: config.vmcb12_checks,
            limits: config.limits,
            l1_limits,
            test_hypercalls: config.test_hypercalls,
            hidden_cpu: config.hidden_cpu,
            name: String::from(name),
            memory,
            npt,
            msrpm,
            iopm,
            console_line: String::new(),
            console: Vec::new(),
            devices: None,
            smp: None,
        })
    }

    /// A byte from the guest console: printed line by line with a prefix.
    pub fn console_byte(&mut self, b: u8) {
        match b {
            b'\n' => {
                let line = core::mem::take(&mut self.console_line);
                crate::println!("[guest {}] {}", self.name, line);
                if self.console.len() < MAX_CONSOLE_LINES {
                    self.console.push(line);
                }
            }
            b'\r' => {}
            b if b.is_ascii_graphic() || b == b' ' || b == b'\t' => {
                self.console_line.push(b as char)
            }
            _ => self.console_line.push('?'),
        }
        if self.console_line.len() >= 200 {
            self.console_byte(b'\n');
        }
    }
}

/// The limits of the CPU the guest is shown: the host's CPUID through the
/// same filter the guest's CPUID exits use (the TSC frequency leaf does
/// not matter here). Nested paging is offered to L1 with SVM (shadow
/// nested tables, nested::npt), so vmcb12's nCR3 is checked.
fn l1_limits(nested_svm: bool, hidden: HiddenFeatures) -> L1Limits {
    let policy = GuestCpuidPolicy {
        svm: nested_svm,
        hidden,
        ..GuestCpuidPolicy::default()
    };
    let cpuid = L1Cpuid::read(|leaf, subleaf| {
        let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
        filter(leaf, subleaf, [r.eax, r.ebx, r.ecx, r.edx], policy)
    });
    L1Limits::from_cpuid(&cpuid, nested_svm)
}
