//! A virtual CPU: its VMCB, the registers the VMCB does not hold, exit
//! statistics, and the run loop.

use super::enable::HostCpu;
use super::exits::{self, Action, Stop};
use super::multi::VmAccess;
use super::nested::Nested;
use super::phys_box::PhysBox;
use super::vm::Vm;
use super::world_switch::{self, GuestRegs};
use alloc::boxed::Box;
use svm::exit_counts::ExitCounts;
use svm::tsc::VcpuTsc;
use svm::{ExitCode, Vmcb};

/// A vCPU.
#[derive(Debug)]
pub struct Vcpu {
    /// The VMCB.
    pub vmcb: PhysBox<Vmcb>,
    /// General registers other than RAX/RSP.
    pub regs: GuestRegs,
    /// #VMEXITs taken, per exit code (8 KiB: on the heap).
    pub exit_counts: Box<ExitCounts>,
    /// All #VMEXITs taken.
    pub exits: u64,
    /// Guest I/O accesses dropped because no device is there for guests.
    pub blocked_io: u64,
    /// This vCPU's TSC state (TSC_ADJUST and its share of the offset).
    pub tsc: VcpuTsc,
    /// IA32_TSC_AUX (what RDTSCP returns in ECX).
    pub tsc_aux: u32,
    /// L0 has wanted RDTSC/RDTSCP exits at some entry (sticky:
    /// `svm::tsc::intercepts`, `tsc::prepare_entry`).
    pub rdtsc_armed: bool,
    /// Nested-SVM state (L1's virtual SVM, hsave, the running L2).
    pub nested: Nested,
    /// The guest's EFER.LME is hidden from the CPU in the VMCB (paging off,
    /// see `exits::cr::before_entry`).
    pub lme_hidden: bool,
    /// Host TSC ticks spent in L0 between exits and entries (under
    /// `-icount shift=0` these are L0's instructions).
    pub host_ticks: u64,
    /// Virtual NMIs for this vCPU (L1's) and their blocking.
    pub nmi: svm::nmi::NmiState,
    /// Test hook: send a physical NMI to this CPU just before the next entry.
    pub physical_nmi_at_entry: bool,
    /// The guest's DR0-DR3 (L1's and L2's: one set, as on the CPU), in the
    /// CPU while this vCPU runs (`exits::dr`).
    pub db: [u64; 4],
    /// This vCPU's local APIC (exits::apic).
    pub lapic: svm::devices::lapic::Lapic,
    /// L0 opened an interrupt window (V_IRQ + VINTR) for the APIC.
    pub apic_window: bool,
    /// L0 single-steps L2's interrupt-shadowed instruction (`exits::shadow`).
    pub shadow_step: Option<svm::shadow_step::ShadowStep>,
    /// The value-store MSRs (DEBUGCTL, MTRRs, PMU, HWCR; `svm::msr_table`),
    /// shared by L1 and its L2s.
    pub msrs: svm::msr_table::MsrStore,
    /// The last instruction-fetch walks, re-validated at each use
    /// (`svm::walk_memo`; `exits::rip`).
    pub walk_memo: core::cell::RefCell<svm::walk_memo::WalkMemo>,
    /// Store faults in unbacked memory in a row that found no store and
    /// re-entered the guest (exits::npf); cleared by one that finds its
    /// store.
    pub store_retries: Option<svm::emulate::unbacked::Retries>,
}

impl Vcpu {
    /// A vCPU with a zeroed VMCB.
    pub fn new() -> Result<Self, &'static str> {
        let vmcb = PhysBox::new_zeroed().ok_or("out of memory for a VMCB")?;
        Ok(Self {
            vmcb,
            regs: GuestRegs::default(),
            // SAFETY: ExitCounts is plain integers: all-zero is `new()`.
            exit_counts: unsafe { Box::<ExitCounts>::new_zeroed().assume_init() },
            exits: 0,
            blocked_io: 0,
            tsc: VcpuTsc::default(),
            tsc_aux: 0,
            rdtsc_armed: false,
            nested: Nested::new()?,
            host_ticks: 0,
            nmi: svm::nmi::NmiState::default(),
            physical_nmi_at_entry: false,
            lme_hidden: false,
            db: [0; 4],
            lapic: exits::apic::new_lapic(),
            apic_window: false,
            shadow_step: None,
            msrs: svm::msr_table::MsrStore::default(),
            walk_memo: Default::default(),
            store_retries: None,
        })
    }

    /// How many exits with `code` this vCPU took.
    pub fn exit_count(&self, code: ExitCode) -> u64 {
        self.exit_counts.get(code.to_raw())
    }

    /// Runs the guest of a single-vCPU VM until an exit handler stops it.
    pub fn run(&mut self, vm: &mut Vm, host: &HostCpu) -> Stop {
        // The reset XCR0, not the last VM's (`xcr0`; a shared VM's
        // scheduler does this at a vCPU's first run, `multi`).
        super::xcr0::reset();
        self.run_with(VmAccess::Own(vm), host)
    }

    /// Runs the guest until an exit handler stops it, with the VM itself
    /// or this vCPU's seat in a shared one (`multi::Seat`: the VM lock is
    /// held except across VMRUN; the run also ends with
    /// [`Stop::Yielded`] when the vCPU gives its CPU to another, and a
    /// later run resumes it). Never inlined: one copy of the loop, so its
    /// exit handlers stay inlined into it.
    #[inline(never)]
    pub fn run_with(&mut self, mut access: VmAccess<'_, '_>, host: &HostCpu) -> Stop {
        // This vCPU's DR0-DR3, not the last VM's or vCPU's (`exits::dr`).
        exits::dr::load(&self.db);
        // A new run may be on another CPU: the host TSC checked once here
        // (`tsc::observe_on_run`), not at every entry.
        let vm = access.vm();
        super::tsc::observe_on_run(self, vm);
        let mut exited_at = None;
        // Self-tests only: a VM that is not a test has no limits. The
        // budget's end in watchdog ticks, so each exit compares once:
        // `ticks * TICK_MS - start_ms > budget_ms` is
        // `ticks > start_ticks + budget_ms / TICK_MS` (integers). A
        // time-sliced vCPU keeps the end of its first run's budget.
        let (budget_end_ticks, max_exits) = match vm.limits {
            Some(l) => (
                access.budget_end(
                    crate::time::ticks().saturating_add(l.time_budget_ms / crate::time::TICK_MS),
                ),
                l.max_exits,
            ),
            None => (u64::MAX, u64::MAX),
        };
        loop {
            // Other vCPUs' IPIs, INIT/SIPI (one flag test; none with one vCPU).
            if let Some(stop) = access.take_events(self, host) {
                return stop;
            }
            let vm = access.vm();
            if let Action::Stop(stop) = exits::exception::deliver_pending_nmi(self, vm, host) {
                return stop;
            }
            if let Action::Stop(stop) =
                super::nested::insns::deliver_pending_interrupt(self, vm, host)
            {
                return stop;
            }
            if let Action::Stop(stop) = exits::apic::before_entry(self, vm, host) {
                return stop;
            }
            super::tsc::prepare_entry(self, vm);
            exits::exception::arm_physical_nmi(self);
            if let Some(t) = exited_at {
                self.host_ticks += crate::time::host_tsc::read_hw().wrapping_sub(t);
            }
            exits::cr::before_entry(self);
            exits::shadow::before_entry(self);
            super::nested::vgif::before_entry(self, vm, host);
            access.release(self);
            // Self-tests: this CPU's simulated TSC difference (0 otherwise).
            let sim = crate::time::host_tsc::simulated_here();
            if sim != 0 {
                super::tsc::simulate_hardware(&mut self.vmcb.control, sim);
            }
            // SAFETY: SVM is enabled (`host` exists), and the VMCB was set up by
            // `setup::init_vmcb` against this VM's NPT and maps.
            unsafe { world_switch::run(&mut self.regs, self.vmcb.phys(), host.host_vmcb_pa()) };
            if sim != 0 {
                super::tsc::simulate_hardware(&mut self.vmcb.control, sim.wrapping_neg());
            }
            access.acquire();
            let vm = access.vm();
            // Undone in the reverse order of the set-up above.
            super::nested::vgif::after_exit(self);
            let step_only = exits::shadow::after_exit(self);
            exits::cr::after_exit(self);
            // `read_raw` with the difference looked up before the entry.
            let exit_hw = crate::time::host_tsc::read_hw();
            exited_at = Some(exit_hw);
            super::tsc::after_exit(self, vm, exit_hw.wrapping_add(sim));
            let c = &mut self.vmcb.control;
            // What the CPU did not deliver is in EXITINTINFO now; from here
            // a valid EVENTINJ means an event L0 queued and nobody received.
            c.event_inj = 0;
            // The TLB needs flushing only for the first run.
            c.tlb_control = 0;
            let raw_code = c.exit_code;
            exits::apic::after_exit(self);
            let code = ExitCode::from_raw(raw_code);
            if matches!(code, ExitCode::Intr) {
                // A physical interrupt (the watchdog), held since the exit:
                // let the host take it now that GIF is set again.
                // SAFETY: the IDT handles every vector the host enables.
                unsafe { core::arch::asm!("sti", "nop", "cli", options(nomem, nostack)) };
            }
            if crate::time::ticks() > budget_end_ticks {
                if let Some(limits) = vm.limits {
                    log::warn!(
                        "vm {}: stopped: ran past its {} ms budget, rip {:#x}",
                        vm.name,
                        limits.time_budget_ms,
                        self.vmcb.state.rip
                    );
                    return Stop::TimedOut(limits.time_budget_ms);
                }
            }
            self.exits += 1;
            // The raw code is the counter's key, except VMEXIT_INVALID (any
            // upper half: `ExitCode::from_raw`), counted as 64-bit -1.
            self.exit_counts.add(match code {
                ExitCode::Invalid => code.to_raw(),
                _ => raw_code,
            });
            if step_only {
                continue;
            }
            match exits::dispatch(self, vm, host, code) {
                Action::Resume if self.exits >= max_exits => return Stop::TooManyExits(max_exits),
                Action::Resume => {}
                Action::Stop(stop) => return stop,
            }
        }
    }
}
