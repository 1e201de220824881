//! VMs with several vCPUs. The VM-wide state ([`Vm`]: memory, NPT, maps,
//! devices, the VM's TSC) sits behind one lock that a vCPU takes after
//! each #VMEXIT and releases just before its next VMRUN, so exit handlers
//! see a VM no other vCPU changes meanwhile; guest code runs in parallel.
//! Per-vCPU state stays in [`Vcpu`] (VMCB, local APIC, TSC_ADJUST, nested
//! state), owned by the physical CPU that runs it.
//!
//! Events between vCPUs go through one [`Inbox`] each (atomics, no lock):
//! the sender (an ICR write, `exits::apic`, under the VM lock) posts and
//! kicks the receiver's physical CPU with the wake IPI; a vCPU in guest
//! mode takes it as #VMEXIT(INTR). Before each entry the run loop tests
//! one flag ([`Inbox::take_events`]); the wake IPI sent after that test
//! stays pending through VMRUN (interrupts are held until then) and ends
//! the run at once, so no event waits for another exit. Each inbox also
//! holds its vCPU's logical APIC address (LDR, DFR model, mode), which
//! the vCPU publishes after each APIC write ([`apic_written`]): a sender
//! matches logical destinations against it (`svm::devices::ipi`).
//!
//! Placement (`svm::vcpu_sched`): vCPU i runs on online CPU i mod CPUs
//! (through the CPU's mailbox; CPU 0's share on the calling CPU), so with
//! enough CPUs each vCPU has its own. A CPU with several vCPUs time-slices
//! them ([`run_cpu`]): each runs until it would wait (a HLT only another
//! vCPU can end, waiting for a SIPI) or until the watchdog tick after it
//! got the CPU; then its run loop returns [`Stop::Yielded`] with all its
//! state kept (in the [`Seat`]), and the CPU runs the next ready vCPU.
//! A vCPU sharing its CPU never spins waiting for another vCPU: the one
//! it waits for may be its CPU-mate.

use super::enable::HostCpu;
use super::exits::{Action, Stop};
use super::vcpu::Vcpu;
use super::vm::Vm;
use alloc::format;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use svm::ap_start::{self, ApState};
use svm::devices::ipi::{self, Delivery};
use svm::msr::EFER_SVME;
use svm::vcpu_sched::{self, Wait};
use svm::{ExitCode, InterceptMisc1};

/// How the run loop reaches its VM: directly (one vCPU) or through the
/// VM lock (a [`Seat`] of a shared VM). An enum, not a generic parameter:
/// one instantiation of the run loop keeps its exit handlers inlined as
/// before (two cost the one-vCPU round trip ~36 instructions).
#[derive(Debug)]
pub enum VmAccess<'a, 's> {
    /// The VM of a single vCPU.
    Own(&'a mut Vm),
    /// One vCPU's seat in a shared VM (kept across its runs).
    Shared(&'a mut Seat<'s>),
}

impl VmAccess<'_, '_> {
    /// The VM (held by this vCPU between [`Self::acquire`] and
    /// [`Self::release`]).
    #[inline(always)]
    pub fn vm(&mut self) -> &mut Vm {
        match self {
            VmAccess::Own(vm) => vm,
            VmAccess::Shared(seat) => seat.vm(),
        }
    }
    /// Before VMRUN: other vCPUs may handle their exits now.
    #[inline(always)]
    pub fn release(&mut self, vcpu: &mut Vcpu) {
        if let VmAccess::Shared(seat) = self {
            seat.release(vcpu);
        }
    }
    /// After #VMEXIT: the VM is this vCPU's until the next release.
    #[inline(always)]
    pub fn acquire(&mut self) {
        if let VmAccess::Shared(seat) = self {
            seat.acquire();
        }
    }
    /// Before each entry: what other vCPUs sent this one (IPIs, NMI,
    /// INIT/SIPI, a TSC change, the VM's end).
    #[inline(always)]
    pub fn take_events(&mut self, vcpu: &mut Vcpu, host: &HostCpu) -> Option<Stop> {
        match self {
            VmAccess::Own(_) => None,
            VmAccess::Shared(seat) => seat.take_events(vcpu, host),
        }
    }
    /// The end of the run's time budget (watchdog ticks): `fresh`, or for
    /// a time-sliced vCPU the one its first run computed.
    #[inline(always)]
    pub fn budget_end(&mut self, fresh: u64) -> u64 {
        match self {
            VmAccess::Own(_) => fresh,
            VmAccess::Shared(seat) => *seat.budget_end.get_or_insert(fresh),
        }
    }
}

/// What other vCPUs sent one vCPU.
#[derive(Debug, Default)]
pub struct Inbox {
    /// Anything below is set (the one test before each entry).
    any: AtomicBool,
    /// Fixed interrupts, by vector.
    irr: [AtomicU32; 8],
    nmi: AtomicBool,
    init: AtomicBool,
    /// A Start-up IPI: `SIPI_VALID | vector`.
    sipi: AtomicU32,
    /// The VM is over: leave the run loop.
    stop: AtomicBool,
    /// The VM-wide TSC model changed: reprogram the offset.
    tsc: AtomicBool,
    /// Between the release of the VM lock before VMRUN and the #VMEXIT.
    in_guest: AtomicBool,
    /// HLT that only another vCPU can end: the vCPU waits (VM lock
    /// released) for an event before it enters the guest again.
    halted: AtomicBool,
    /// The halted vCPU's HLT (re-executed when the wait's slice ends).
    halt_rip: AtomicU64,
    /// A wait by the PIT (us) the vCPU's test hook asked for, which the
    /// run loop does with the VM lock released ([`defer_pit_wait`]).
    pit_wait_us: AtomicU64,
    /// APIC ID of the physical CPU running the vCPU (`u32::MAX`: none).
    cpu: AtomicU32,
    /// The vCPU's APIC's logical address (`ipi::LogicalId::pack`), for
    /// senders of logical IPIs: its LDR and DFR live in its own APIC, on
    /// its own CPU. Written by the vCPU under the VM lock after each APIC
    /// write ([`apic_written`]) and at INIT, read by senders under it.
    logical: AtomicU64,
}

const SIPI_VALID: u32 = 0x100;

/// How a vCPU stops when another ended the VM (`Stop::Unhandled`).
pub const VM_STOPPED: &str = "another vCPU ended the VM";

impl Inbox {
    fn new() -> Self {
        Self {
            cpu: AtomicU32::new(u32::MAX),
            logical: AtomicU64::new(ipi::LogicalId::RESET.pack()),
            ..Self::default()
        }
    }

    /// Posts what `post` sets and kicks the vCPU's CPU out of guest mode.
    fn post(&self, post: impl FnOnce(&Self)) {
        post(self);
        self.any.store(true, Ordering::Release);
        let cpu = self.cpu.load(Ordering::Acquire);
        if cpu != u32::MAX && cpu != crate::smp::this().apic_id.load(Ordering::Relaxed) {
            crate::arch::lapic::send_ipi(cpu, crate::arch::idt::WAKE_VECTOR);
        }
    }

    fn stop(&self) {
        self.post(|i| i.stop.store(true, Ordering::Release));
    }
}

/// The multi-vCPU part of a [`Vm`] (`Vm::smp`).
#[derive(Debug)]
pub struct VmSmp {
    /// One inbox per vCPU, by vCPU index (= APIC ID).
    inboxes: Arc<[Inbox]>,
    /// The vCPU holding the VM lock (whose exit is being handled).
    current: usize,
}

/// The index (= APIC ID) of the vCPU whose exit is being handled: the VM
/// lock's holder; 0 in a single-vCPU VM.
pub fn current_vcpu(vm: &Vm) -> usize {
    vm.smp.as_ref().map_or(0, |s| s.current)
}

/// HLT in a VM with several vCPUs (`exits::apic::hlt`: one nothing on
/// this vCPU can end, or one its APIC timer will end): the vCPU does not
/// enter the guest again until another sends it something or its APIC
/// timer fires, and the run loop waits for that with the VM lock
/// released; RIP goes past the HLT (at `hlt_rip`) as after a wake-up, and
/// back to it when the wait's slice ends with neither (the run loop's
/// limits stay checked, and the HLT waits on). One vCPU: nothing (the
/// handler waits for the timer, or the HLT ends at once).
pub fn halt(vm: &Vm, hlt_rip: u64) {
    if let Some(smp) = &vm.smp {
        let inbox = &smp.inboxes[smp.current];
        inbox.halt_rip.store(hlt_rip, Ordering::Relaxed);
        inbox.halted.store(true, Ordering::Release);
    }
}

/// HC_WAIT_PIT_US (a test hook) in a VM with several vCPUs: the run loop
/// waits, with the VM lock released, before the vCPU's next entry
/// (`true`); an exit handler's wait would hold off every other vCPU's
/// exits. One vCPU: `false`, the caller waits.
pub fn defer_pit_wait(vm: &Vm, us: u64) -> bool {
    let Some(smp) = &vm.smp else {
        return false;
    };
    smp.inboxes[smp.current]
        .pit_wait_us
        .store(us, Ordering::Relaxed);
    true
}

/// Whether the VM has several vCPUs: an exit handler must not wait (it
/// holds the VM lock, and every other vCPU's exits would wait with it);
/// the run loop waits instead ([`halt`], with the APIC timer's deadline).
pub fn several_vcpus(vm: &Vm) -> bool {
    vm.smp.is_some()
}

/// Whether another vCPU sent the current one something (ends a HLT).
pub fn event_pending(vm: &Vm) -> bool {
    vm.smp
        .as_ref()
        .is_some_and(|s| s.inboxes[s.current].any.load(Ordering::Acquire))
}

/// Longest HLT wait before the guest is entered again (as exits::apic).
const HALT_SLICE_NS: u64 = 10_000_000;

/// One step of a halted vCPU's wait on its own CPU, `now` before the
/// APIC timer's `deadline`: the CPU sleeps until the next interrupt (the
/// wake IPI of a vCPU posting an event, or the watchdog tick, which comes
/// before the deadline) when the deadline is more than a tick away, and
/// spins otherwise (as `exits::apic::hlt` with one vCPU). Idle TCG CPUs
/// that spin slow the busy ones on a shared host.
fn idle_until(deadline: u64, now: u64) {
    if deadline.saturating_sub(now) > crate::time::TICK_MS * 1_000_000 {
        // SAFETY: the host's IDT handles every vector it enables; HLT in
        // STI's shadow: an interrupt pending since the caller's look at
        // the inbox ends it.
        unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
    } else {
        core::hint::spin_loop();
    }
}

/// After a write to the current vCPU's APIC (a register, IA32_APIC_BASE):
/// its logical address as other vCPUs' IPIs match it (LDR, DFR, mode).
pub fn apic_written(vcpu: &Vcpu, vm: &Vm) {
    if let Some(smp) = &vm.smp {
        publish_logical(&smp.inboxes[smp.current], vcpu);
    }
}

fn publish_logical(inbox: &Inbox, vcpu: &Vcpu) {
    let id = vcpu.lapic.logical_id().pack();
    inbox.logical.store(id, Ordering::Release);
}

/// After a write to the ICR of `vcpu`'s APIC: the IPI's share for other
/// vCPUs (the APIC itself handled the sender's own share).
pub fn icr_written(vcpu: &mut Vcpu, vm: &mut Vm) {
    let Some(smp) = &vm.smp else {
        return;
    };
    let now = crate::time::now_ns();
    let a = &mut vcpu.lapic;
    let (icr, x2) = match a.mode() {
        svm::devices::lapic::Mode::X2Apic => (a.read_msr(0x830, now).unwrap_or(0), true),
        _ => {
            let lo = a.mmio_read(0x300, 4, now);
            let hi = a.mmio_read(0x310, 4, now);
            (lo | hi << 32, false)
        }
    };
    let msg = ipi::decode(icr, x2, smp.current, smp.inboxes.len(), |i| {
        ipi::LogicalId::unpack(smp.inboxes[i].logical.load(Ordering::Acquire))
    });
    for (i, inbox) in smp.inboxes.iter().enumerate() {
        if msg.targets & (1 << i) == 0 {
            continue;
        }
        match msg.delivery {
            Delivery::Fixed(v) if v >= 16 => inbox.post(|b| {
                b.irr[usize::from(v >> 5)].fetch_or(1 << (v & 31), Ordering::AcqRel);
            }),
            Delivery::Nmi => inbox.post(|b| b.nmi.store(true, Ordering::Release)),
            Delivery::Init => inbox.post(|b| b.init.store(true, Ordering::Release)),
            Delivery::Startup(v) => {
                inbox.post(|b| b.sipi.store(SIPI_VALID | u32::from(v), Ordering::Release))
            }
            // Illegal vectors (SDM 11.5.3: the receiver's ESR), SMI (no
            // SMM) and nothing: dropped.
            Delivery::Fixed(_) | Delivery::Smi | Delivery::None => {}
        }
    }
}

/// After a change of the VM-wide TSC model by the vCPU holding the VM
/// lock: every other vCPU is told to reprogram its offset, and is out of
/// guest mode when this returns (kicked; it then waits for the lock and
/// reprograms before its next entry). So once the changing vCPU resumes,
/// no vCPU runs with the old offset (seed 004: one offset for the VM).
pub fn vm_tsc_changed(vm: &Vm) {
    let Some(smp) = &vm.smp else {
        return;
    };
    for (i, inbox) in smp.inboxes.iter().enumerate() {
        if i != smp.current {
            inbox.post(|b| b.tsc.store(true, Ordering::Release));
        }
    }
    for (i, inbox) in smp.inboxes.iter().enumerate() {
        while i != smp.current && inbox.in_guest.load(Ordering::SeqCst) {
            core::hint::spin_loop();
        }
    }
}

/// A VM shared by its vCPUs, behind a ticket lock: a vCPU that exits
/// often cannot starve the others (a plain spin lock let a vCPU polling a
/// hypercall in a loop hold off another's exit handling for tens of ms).
pub struct SharedVm {
    vm: UnsafeCell<Vm>,
    next: AtomicU32,
    serving: AtomicU32,
    inboxes: Arc<[Inbox]>,
}

// SAFETY: the VM is reached only by the holder of the ticket lock (`Seat`).
unsafe impl Sync for SharedVm {}

impl core::fmt::Debug for SharedVm {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("SharedVm")
    }
}

impl SharedVm {
    fn lock(&self) {
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        while self.serving.load(Ordering::Acquire) != ticket {
            core::hint::spin_loop();
        }
    }
    fn unlock(&self) {
        self.serving.fetch_add(1, Ordering::Release);
    }
}

/// One vCPU's place in a [`SharedVm`]: its run loop's [`VmAccess`].
#[derive(Debug)]
pub struct Seat<'a> {
    shared: &'a SharedVm,
    index: usize,
    held: bool,
    /// INIT/SIPI state.
    ap: ApState,
    /// A HLT whose wait slice ended with nothing: the guest is entered at
    /// the HLT again (`halt_rip`) but is still halted, so an event taken
    /// before it re-executes the HLT must resume after it (`resume_rip`),
    /// as the CPU's wake-up from HLT does; not at the HLT, which would
    /// halt again after the handler.
    rehalted: Option<(u64, u64)>,
    /// A HLT being waited out: (APIC timer deadline, end of the wait), in
    /// host ns.
    halt: Option<(u64, u64)>,
    /// The other vCPUs (bit i: vCPU i) still running on this CPU; with
    /// any, waits, slice ends and a mate's event yield the CPU.
    mates: u64,
    /// The watchdog tick that ends this run's slice (with `mates`).
    slice_end: u64,
    /// The end of the self-test budget, from the first run.
    budget_end: Option<u64>,
}

impl<'a> Seat<'a> {
    /// vCPU `index`'s seat, on this CPU, running or waiting for SIPI;
    /// `mates`: the other vCPUs on this CPU. The VM lock is not held yet.
    fn new(shared: &'a SharedVm, index: usize, ap: ApState, mates: u64) -> Self {
        let id = crate::smp::this().apic_id.load(Ordering::Relaxed);
        shared.inboxes[index].cpu.store(id, Ordering::Release);
        Self {
            shared,
            index,
            held: false,
            ap,
            rehalted: None,
            halt: None,
            mates,
            slice_end: 0,
            budget_end: None,
        }
    }

    /// Whether another vCPU on this CPU has an event waiting.
    fn mate_has_event(&self) -> bool {
        let mut mates = self.mates;
        while mates != 0 {
            let i = mates.trailing_zeros() as usize;
            mates &= mates - 1;
            if self.shared.inboxes[i].any.load(Ordering::Acquire) {
                return true;
            }
        }
        false
    }

    /// What the vCPU waits for between its runs (`svm::vcpu_sched`).
    fn wait(&self) -> Wait {
        match (self.halt, self.ap) {
            (Some((_, end)), _) => Wait::Halt { until: end },
            (None, ApState::WaitForSipi) => Wait::Sipi,
            (None, ApState::Running) => Wait::Slice,
        }
    }

    /// Releases the VM lock (not for VMRUN: [`VmAccess::release`]).
    fn unlock(&mut self) {
        if core::mem::take(&mut self.held) {
            self.shared.unlock();
        }
    }

    fn inbox(&self) -> &'a Inbox {
        &self.shared.inboxes[self.index]
    }

    /// INIT (APM 15.x "INIT Support"; KVM nested.c): held while GIF is
    /// clear; L2's with L1 intercepting INIT becomes #VMEXIT(INIT) to L1;
    /// otherwise the vCPU is reset and waits for a SIPI. `None`: handled.
    fn init(&mut self, vcpu: &mut Vcpu, host: &HostCpu) -> Option<Stop> {
        if !vcpu.nested.gif {
            // Held: seen again before the next entry, after STGI.
            self.inbox().init.store(true, Ordering::Release);
            self.inbox().any.store(true, Ordering::Release);
            return None;
        }
        let l1_intercepts =
            vcpu.nested.l2.as_ref().is_some_and(|l2| {
                l2.vmcb12.control.intercept_misc1 & InterceptMisc1::INIT.bits() != 0
            });
        if vcpu.nested.in_l2() {
            // #VMEXIT(INIT) to L1. Without L1's intercept the vCPU is then
            // reset from L1 with L0's own controls back in the VMCB (KVM
            // leaves nested mode first too); vmcb12 keeps that exit's state.
            let c = &mut vcpu.vmcb.control;
            c.exit_info1 = 0;
            c.exit_info2 = 0;
            c.exit_int_info = 0;
            if let Action::Stop(s) =
                super::nested::vmexit::reflect(vcpu, self.vm(), host, ExitCode::Init)
            {
                return Some(s);
            }
            if l1_intercepts {
                return None;
            }
        }
        if let Err(e) = reset(vcpu, self.index, self.vm()) {
            return Some(Stop::Unhandled(format!("INIT: {e}")));
        }
        ap_start::on_init(&mut self.ap);
        None
    }

    /// Waits for an event from another vCPU, the APIC timer's deadline or
    /// at most [`HALT_SLICE_NS`] from the HLT (`self.halt`): alone on its
    /// CPU with the VM lock released (other vCPUs' exits go on); sharing
    /// it, by yielding the CPU until then (`true`: yield; the next run
    /// comes back here).
    fn wait_while_halted(&mut self, vcpu: &mut Vcpu, (timer, end): (u64, u64)) -> bool {
        let inbox = self.inbox();
        let mut now = crate::time::now_ns();
        if self.mates != 0 {
            if !inbox.any.load(Ordering::Acquire) && now < end {
                return true;
            }
        } else {
            self.unlock();
            while !inbox.any.load(Ordering::Acquire) && now < end {
                idle_until(timer, now);
                now = crate::time::now_ns();
            }
            self.acquire();
        }
        self.halt = None;
        if now < timer && !inbox.any.load(Ordering::Acquire) {
            // Nothing came: the HLT again (still halted: `rehalted`).
            let s = &mut vcpu.vmcb.state;
            let halt_rip = inbox.halt_rip.load(Ordering::Relaxed);
            self.rehalted = Some((halt_rip, s.rip));
            s.rip = halt_rip;
        }
        false
    }

    /// Waits for a SIPI or the VM's end: alone on its CPU with the VM lock
    /// released; sharing it, by yielding the CPU (`Some(Yielded)`) until
    /// an event comes. `Some`: the VM ended (or yield).
    fn wait_for_sipi(&mut self) -> Option<Stop> {
        let inbox = self.inbox();
        let came = || {
            inbox.sipi.load(Ordering::Acquire) & SIPI_VALID != 0
                || inbox.stop.load(Ordering::Acquire)
        };
        if self.mates != 0 {
            if !came() {
                return Some(Stop::Yielded);
            }
        } else {
            self.unlock();
            while !came() {
                core::hint::spin_loop();
            }
            self.acquire();
        }
        match inbox.stop.load(Ordering::Acquire) {
            true => Some(Stop::Unhandled(VM_STOPPED.into())),
            false => None,
        }
    }
}

impl Drop for Seat<'_> {
    /// The run loop returns with the lock held.
    fn drop(&mut self) {
        self.unlock();
    }
}

impl Seat<'_> {
    #[inline(always)]
    fn vm(&mut self) -> &mut Vm {
        assert!(self.held, "the VM is used with its lock held");
        // SAFETY: this seat holds the lock; the borrow of `self` ends
        // before `release` can be called.
        unsafe { &mut *self.shared.vm.get() }
    }
    #[cold]
    #[inline(never)]
    fn release(&mut self, vcpu: &mut Vcpu) {
        // Entered again at its HLT while still halted (`rehalted`), with
        // an interrupt or NMI to take first (e.g. the APIC timer's, which
        // expired after the wait's look at it): the wake-up resumes after
        // the HLT. At the HLT, the handler would return to a HLT nothing
        // is left to end (the guest missed its timer for good).
        if let Some((halt_rip, resume_rip)) = self.rehalted {
            let event = svm::EventInfo(vcpu.vmcb.control.event_inj);
            let s = &mut vcpu.vmcb.state;
            if s.rip != halt_rip {
                self.rehalted = None;
            } else if event.is_valid()
                && matches!(
                    event.event_type(),
                    Some(svm::EventType::ExternalInterrupt | svm::EventType::Nmi)
                )
            {
                s.rip = resume_rip;
                self.rehalted = None;
            }
        }
        // Set while the lock is still held: a vCPU that changes the VM's
        // TSC under the lock sees every other one either here or waiting.
        self.inbox().in_guest.store(true, Ordering::SeqCst);
        self.unlock();
    }
    #[cold]
    #[inline(never)]
    fn acquire(&mut self) {
        self.inbox().in_guest.store(false, Ordering::SeqCst);
        self.shared.lock();
        self.held = true;
        let index = self.index;
        if let Some(smp) = &mut self.vm().smp {
            smp.current = index;
        }
    }
    #[cold]
    #[inline(never)]
    fn take_events(&mut self, vcpu: &mut Vcpu, host: &HostCpu) -> Option<Stop> {
        let inbox = self.inbox();
        let us = inbox.pit_wait_us.swap(0, Ordering::Relaxed);
        if us != 0 {
            // A test hook's wait (`defer_pit_wait`): as long on this CPU
            // as it was in the handler, but with the VM lock released.
            self.unlock();
            crate::time::pit::wait_us_for_guest(us);
            self.acquire();
        }
        if inbox.halted.swap(false, Ordering::AcqRel) {
            let now = crate::time::now_ns();
            let timer = vcpu.lapic.next_deadline().unwrap_or(u64::MAX);
            self.halt = Some((timer, timer.min(now.saturating_add(HALT_SLICE_NS))));
        }
        if let Some(halt) = self.halt {
            if self.wait_while_halted(vcpu, halt) {
                return Some(Stop::Yielded);
            }
        }
        // Preemption: the slice ends at the first watchdog tick (the
        // timer's #VMEXIT(INTR) ends a guest that never exits) after the
        // vCPU got its CPU, or early when a CPU-mate was sent an event
        // and this vCPU has none of its own (the sender's kick is this
        // CPU's #VMEXIT(INTR)): a woken vCPU does not wait for the tick,
        // and two with events (e.g. the VM's end) cannot yield to each
        // other for good.
        if self.mates != 0
            && (crate::time::ticks() >= self.slice_end
                || (!inbox.any.load(Ordering::Acquire) && self.mate_has_event()))
        {
            return Some(Stop::Yielded);
        }
        if self.ap == ApState::Running && !inbox.any.load(Ordering::Acquire) {
            return None;
        }
        inbox.any.store(false, Ordering::Release);
        if inbox.stop.load(Ordering::Acquire) {
            return Some(Stop::Unhandled(VM_STOPPED.into()));
        }
        let mut woken = false;
        for (w, word) in inbox.irr.iter().enumerate() {
            let mut bits = word.swap(0, Ordering::AcqRel);
            while bits != 0 {
                let b = bits.trailing_zeros();
                bits &= bits - 1;
                vcpu.lapic.accept((w as u32 * 32 + b) as u8);
                woken = true;
            }
        }
        if inbox.tsc.swap(false, Ordering::AcqRel) {
            super::tsc::reprogram_l1_offset(vcpu, self.vm());
        }
        if inbox.nmi.swap(false, Ordering::AcqRel) {
            vcpu.nmi.queue();
            woken = true;
        }
        // Kicked out of the guest before it re-executed its HLT: an
        // interrupt or NMI wakes the halted vCPU, which resumes after the
        // HLT (a TSC kick alone does not).
        if woken {
            if let Some((halt_rip, resume_rip)) = self.rehalted.take() {
                if vcpu.vmcb.state.rip == halt_rip {
                    vcpu.vmcb.state.rip = resume_rip;
                }
            }
        }
        if inbox.init.swap(false, Ordering::AcqRel) {
            if let Some(stop) = self.init(vcpu, host) {
                return Some(stop);
            }
        }
        if self.ap == ApState::WaitForSipi {
            if let Some(stop) = self.wait_for_sipi() {
                return Some(stop);
            }
            // An INIT sent while it waited came before the SIPI (INIT,
            // then SIPI, is the order senders use): it resets the same
            // waiting vCPU.
            if inbox.init.swap(false, Ordering::AcqRel) {
                if let Some(stop) = self.init(vcpu, host) {
                    return Some(stop);
                }
            }
        }
        let sipi = inbox.sipi.swap(0, Ordering::AcqRel);
        if sipi & SIPI_VALID != 0 {
            // Ignored unless the vCPU waits for it (SDM 9.4.4).
            if let Some(vector) = ap_start::on_sipi(&mut self.ap, sipi as u8) {
                ap_start::write_start_state(&mut vcpu.vmcb.state, vector, EFER_SVME);
            }
        }
        None
    }
}

/// The INIT reset of what the VMCB state area does not hold (the state
/// area itself is written at the SIPI, `ap_start::write_start_state`):
/// registers, DR0-DR3, the APIC (its ID stays), NMI and nested state
/// (EFER.SVME is clear after INIT).
fn reset(vcpu: &mut Vcpu, index: usize, vm: &Vm) -> Result<(), &'static str> {
    vcpu.regs = Default::default();
    // EDX = the processor signature (SDM Table 9-1).
    vcpu.regs.rdx = u64::from(core::arch::x86_64::__cpuid(1).eax);
    vcpu.db = [0; 4];
    super::exits::dr::load(&vcpu.db);
    vcpu.lapic = vcpu_lapic(index, vm.l1_limits.max_phys_bits);
    if let Some(smp) = &vm.smp {
        publish_logical(&smp.inboxes[index], vcpu);
    }
    vcpu.nmi = Default::default();
    vcpu.nested = super::nested::Nested::new()?;
    vcpu.lme_hidden = false;
    vcpu.shadow_step = None;
    let c = &mut vcpu.vmcb.control;
    c.event_inj = 0;
    c.interrupt_shadow = 0;
    c.int_ctl &= !0xF;
    c.tlb_control = svm::TlbControl::FlushAll.as_u8();
    Ok(())
}

/// vCPU `index`'s local APIC at reset: APIC ID = index, BSP only for 0.
pub fn vcpu_lapic(index: usize, max_phys_bits: u8) -> svm::devices::lapic::Lapic {
    svm::devices::lapic::Lapic::new(index as u32, index == 0, true, max_phys_bits)
}

/// How a vCPU starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// At its VMCB's state (as set up by the caller).
    Running,
    /// As an application processor: waiting for INIT and SIPI.
    WaitForSipi,
}

/// One vCPU of a physical CPU's share of a VM.
struct Member<'v> {
    index: usize,
    vcpu: &'v mut Vcpu,
    start: Start,
}

/// One physical CPU's share of a VM (a mailbox job's argument).
struct CpuJob<'a> {
    shared: &'a SharedVm,
    members: Vec<Member<'a>>,
    /// Each member's stop, by vCPU index.
    stops: Vec<(usize, Stop)>,
    /// Set last by the job: `run` may free the job.
    done: AtomicBool,
}

fn cpu_job(arg: u64) -> u64 {
    // SAFETY: `run` passes the address of a CpuJob it keeps alive (and
    // does not touch) until this job has set `done`.
    let job = unsafe { &mut *(arg as *mut CpuJob<'_>) };
    job.stops = match crate::smp::this().host.get() {
        Some(Ok(host)) => run_cpu(job.shared, &mut job.members, host),
        _ => {
            let why = |i| Stop::Unhandled(format!("vCPU {i}: no SVM on this CPU"));
            let stops: Vec<_> = job
                .members
                .iter()
                .map(|m| (m.index, why(m.index)))
                .collect();
            stops.iter().for_each(|(i, _)| vm_over(job.shared, *i));
            stops
        }
    };
    job.done.store(true, Ordering::Release);
    0
}

/// vCPU `index` stopped: the VM ends with its first vCPU to stop, so the
/// others are told.
fn vm_over(shared: &SharedVm, index: usize) {
    shared.inboxes[index].cpu.store(u32::MAX, Ordering::Release);
    for (i, inbox) in shared.inboxes.iter().enumerate() {
        if i != index {
            inbox.stop();
        }
    }
}

/// One vCPU in this CPU's round-robin.
struct Slot<'s, 'v> {
    vcpu: &'v mut Vcpu,
    seat: Seat<'s>,
    stop: Option<Stop>,
    /// It has run: the CPU's XCR0 and FPU registers are its own while it
    /// runs, and in `fpu` while a CPU-mate runs.
    started: bool,
    /// With CPU-mates: its saved XCR0 and FPU registers.
    fpu: Option<super::guest_fpu::GuestFpu>,
}

impl Slot<'_, '_> {
    fn ready(&self, now: u64) -> bool {
        let wait = match self.stop {
            Some(_) => Wait::Stopped,
            None => self.seat.wait(),
        };
        vcpu_sched::ready(wait, self.seat.inbox().any.load(Ordering::Acquire), now)
    }
}

/// Runs this CPU's vCPUs (`members`) until each has stopped: one alone
/// keeps the CPU; several take turns (round-robin, `svm::vcpu_sched`),
/// each until its run loop yields ([`Stop::Yielded`]). Returns each
/// vCPU's stop.
fn run_cpu(shared: &SharedVm, members: &mut [Member<'_>], host: &HostCpu) -> Vec<(usize, Stop)> {
    let all = members.iter().fold(0u64, |m, v| m | 1 << v.index);
    let mut slots: Vec<Slot<'_, '_>> = members
        .iter_mut()
        .map(|m| {
            let ap = match m.start {
                Start::Running => ApState::Running,
                Start::WaitForSipi => ApState::WaitForSipi,
            };
            publish_logical(&shared.inboxes[m.index], m.vcpu);
            Slot {
                seat: Seat::new(shared, m.index, ap, all & !(1 << m.index)),
                vcpu: &mut *m.vcpu,
                stop: None,
                started: false,
                fpu: None,
            }
        })
        .collect();
    let n = slots.len();
    if n > 1 {
        for s in slots.iter_mut() {
            s.fpu = super::guest_fpu::GuestFpu::new();
            if s.fpu.is_none() {
                log::warn!("vCPU {}: no room to switch its FPU state", s.seat.index);
            }
        }
    }
    let mut last = n - 1;
    // The vCPU whose XCR0 and FPU registers the CPU holds.
    let mut loaded = None;
    while slots.iter().any(|s| s.stop.is_none()) {
        let now = crate::time::now_ns();
        let Some(next) = vcpu_sched::pick(last, n, |i| slots[i].ready(now)) else {
            // Everyone waits for another CPU's vCPU (whose event comes
            // with a wake IPI to this CPU) or for a clock. Unless one
            // waits for its APIC timer, the CPU sleeps until the next
            // interrupt: the wake IPI, or the watchdog tick (a HLT's wait
            // slice may end up to a tick late). Idle TCG CPUs that spin
            // slow the others down (the host's cores are shared).
            let timer = slots
                .iter()
                .any(|s| s.seat.halt.is_some_and(|(timer, end)| timer <= end));
            if timer {
                core::hint::spin_loop();
            } else {
                // SAFETY: the host's IDT handles every vector it enables;
                // HLT in STI's shadow: an interrupt pending since the
                // look above ends it.
                unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
            }
            continue;
        };
        last = next;
        if loaded != Some(next) {
            // The CPU's guest state that VMRUN does not switch (`guest_fpu`).
            if let Some(fpu) = loaded.and_then(|l: usize| slots[l].fpu.as_mut()) {
                fpu.save();
            }
            let slot = &mut slots[next];
            match (&slot.fpu, slot.started) {
                (Some(fpu), true) => fpu.restore(),
                // The reset XCR0, not the last VM's (`xcr0`).
                (_, false) => super::xcr0::reset(),
                (None, true) => {}
            }
            slot.started = true;
            loaded = Some(next);
        }
        let slot = &mut slots[next];
        slot.seat.slice_end = crate::time::ticks() + 1;
        slot.seat.acquire();
        let stop = slot.vcpu.run_with(VmAccess::Shared(&mut slot.seat), host);
        slot.seat.unlock();
        if stop != Stop::Yielded {
            let index = slot.seat.index;
            vm_over(shared, index);
            slot.stop = Some(stop);
            // Its `stop` event stays posted: no longer a mate's.
            slots.iter_mut().for_each(|s| s.seat.mates &= !(1 << index));
        }
    }
    slots
        .into_iter()
        .map(|s| (s.seat.index, s.stop.unwrap_or(Stop::Yielded)))
        .collect()
}

/// Runs `vm` with `vcpus` (vCPU i starts as `starts[i]`) until the first
/// vCPU stops; the others are stopped then. vCPU i runs on online CPU
/// i mod CPUs (`svm::vcpu_sched::placement`), CPU 0's share here on the
/// calling CPU 0. Returns the VM and each vCPU's stop.
pub fn run(
    vm: Vm,
    vcpus: &mut [Vcpu],
    starts: &[Start],
    host: &HostCpu,
) -> Result<(Vm, Vec<Stop>), &'static str> {
    run_on_cpus(vm, vcpus, starts, host, usize::MAX)
}

/// [`run`] on the first `max_cpus` online CPUs at most (self-tests that
/// want vCPUs to share CPUs).
pub fn run_on_cpus(
    mut vm: Vm,
    vcpus: &mut [Vcpu],
    starts: &[Start],
    host: &HostCpu,
    max_cpus: usize,
) -> Result<(Vm, Vec<Stop>), &'static str> {
    let n = vcpus.len();
    if n == 0 || n > ipi::MAX_VCPUS || starts.len() != n {
        return Err("a VM needs 1 to 64 vCPUs, each with its start");
    }
    if crate::smp::this().index() != 0 {
        return Err("multi-vCPU VMs are started from CPU 0");
    }
    let cpus: Vec<usize> = crate::smp::percpu::all()
        .iter()
        .filter(|c| c.online.load(Ordering::Acquire))
        .map(|c| c.index())
        .take(n.min(max_cpus))
        .collect();
    if cpus.first() != Some(&0) {
        return Err("CPU 0 is not online");
    }
    let inboxes: Arc<[Inbox]> = (0..n).map(|_| Inbox::new()).collect();
    vm.smp = Some(VmSmp {
        inboxes: inboxes.clone(),
        current: 0,
    });
    let shared = SharedVm {
        vm: UnsafeCell::new(vm),
        next: AtomicU32::new(0),
        serving: AtomicU32::new(0),
        inboxes,
    };
    let mut jobs: Vec<CpuJob<'_>> = cpus
        .iter()
        .map(|_| CpuJob {
            shared: &shared,
            members: Vec::new(),
            stops: Vec::new(),
            done: AtomicBool::new(false),
        })
        .collect();
    for (index, (vcpu, &start)) in vcpus.iter_mut().zip(starts).enumerate() {
        jobs[vcpu_sched::placement(index, cpus.len())]
            .members
            .push(Member { index, vcpu, start });
    }
    let (mine, others) = jobs.split_at_mut(1);
    let mut tickets = Vec::new();
    for (job, &cpu) in others.iter_mut().zip(&cpus[1..]) {
        match crate::smp::mailbox::post(cpu, cpu_job, job as *mut CpuJob<'_> as u64) {
            Ok(t) => tickets.push(t),
            Err(e) => {
                log::warn!("CPU {cpu}: its vCPUs not started: {e}");
                for m in &job.members {
                    shared.inboxes[m.index].stop();
                    job.stops.push((
                        m.index,
                        Stop::Unhandled(format!("vCPU {} did not run", m.index)),
                    ));
                }
                job.done.store(true, Ordering::Release);
            }
        }
    }
    mine[0].stops = run_cpu(&shared, &mut mine[0].members, host);
    for t in tickets {
        if let Err(e) = t.wait() {
            log::warn!("vm: an AP's vCPUs did not end in time: {e}");
        }
    }
    // The jobs use `shared` and the vCPUs until they are done: wait for
    // that however long it takes (each vCPU was told to stop and leaves at
    // its next entry, at the latest after the next watchdog tick).
    while !others.iter().all(|j| j.done.load(Ordering::Acquire)) {
        core::hint::spin_loop();
    }
    let mut stops: Vec<(usize, Stop)> = jobs
        .iter_mut()
        .flat_map(|j| core::mem::take(&mut j.stops))
        .collect();
    stops.sort_unstable_by_key(|(i, _)| *i);
    drop(jobs);
    let mut vm = shared.vm.into_inner();
    vm.smp = None;
    Ok((vm, stops.into_iter().map(|(_, s)| s).collect()))
}
