//! One work mailbox per CPU: run a function on CPU n and wait for its
//! result.
//!
//! ```ignore
//! // Blocking: f(arg) runs on CPU 1, the caller waits (bounded) for it.
//! let id = smp::mailbox::run_on(1, |_| u64::from(crate::arch::lapic::id()), 0)?;
//! // Split: post, do other work here, then wait.
//! let ticket = smp::mailbox::post(1, job, arg)?;
//! /* ... */
//! let result = ticket.wait()?;
//! ```
//!
//! A job is a plain `fn(u64) -> u64` and a `u64` argument, so nothing
//! borrowed can outlive its owner however the caller ends; to hand a job
//! more, pass the address of data the caller keeps alive (e.g. a static, or
//! a stack value the caller does not leave before [`Ticket::wait`]
//! returned). A CPU takes one job at a time; other senders wait for the
//! mailbox (a per-mailbox lock). Jobs run with interrupts off on the target
//! CPU's own stack, like any hypervisor code there.
//!
//! Delivery: the sender posts the job, then sends the target the wake IPI
//! (`arch::idt::WAKE_VECTOR`); a CPU waiting for work sleeps in HLT with
//! interrupts on (`smp::idle`), so the IPI (or at the latest its next
//! watchdog tick) wakes it to look. A CPU running a guest would take the
//! IPI as #VMEXIT(INTR): that is the kick later multi-vCPU work uses.

use core::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use spin::{Mutex, MutexGuard};

const IDLE: u8 = 0;
const POSTED: u8 = 1;
const RUNNING: u8 = 2;
const DONE: u8 = 3;
/// The sender gave up waiting while the job ran; the CPU clears the box.
const ABANDONED: u8 = 4;

/// A job: called with its argument on the target CPU.
pub type Job = fn(u64) -> u64;

/// How long [`Ticket::wait`] waits for a job before it gives up.
pub const TIMEOUT_MS: u64 = 5_000;

/// One CPU's mailbox (in its `PerCpu` block).
#[derive(Debug)]
pub struct Mailbox {
    state: AtomicU8,
    job: AtomicUsize,
    arg: AtomicU64,
    result: AtomicU64,
    /// Jobs served, for tests and statistics.
    pub served: AtomicU64,
    sender: Mutex<()>,
}

impl Mailbox {
    /// An empty mailbox.
    pub const fn new() -> Self {
        Self {
            state: AtomicU8::new(IDLE),
            job: AtomicUsize::new(0),
            arg: AtomicU64::new(0),
            result: AtomicU64::new(0),
            served: AtomicU64::new(0),
            sender: Mutex::new(()),
        }
    }

    /// Runs the posted job, if there is one (on the mailbox's own CPU).
    /// Returns whether one ran.
    pub fn serve(&self) -> bool {
        if self
            .state
            .compare_exchange(POSTED, RUNNING, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        let job = self.job.load(Ordering::Relaxed);
        // SAFETY: `post` stored a `Job` there before publishing POSTED.
        let job: Job = unsafe { core::mem::transmute::<usize, Job>(job) };
        let result = job(self.arg.load(Ordering::Relaxed));
        self.result.store(result, Ordering::Relaxed);
        self.served.fetch_add(1, Ordering::Relaxed);
        if self
            .state
            .compare_exchange(RUNNING, DONE, Ordering::Release, Ordering::Relaxed)
            .is_err()
        {
            // The sender left (ABANDONED): nobody reads the result.
            self.state.store(IDLE, Ordering::Release);
        }
        true
    }
}

impl Default for Mailbox {
    fn default() -> Self {
        Self::new()
    }
}

/// A posted job; [`Ticket::wait`] collects its result. Dropping a ticket
/// waits for the job too (the mailbox stays the sender's until then).
#[derive(Debug)]
pub struct Ticket {
    mailbox: &'static Mailbox,
    _sender: MutexGuard<'static, ()>,
    waited: bool,
}

/// Posts `job(arg)` to CPU `cpu` and kicks it. The CPU must be online; the
/// calling CPU cannot post to itself (it would wait for itself).
pub fn post(cpu: usize, job: Job, arg: u64) -> Result<Ticket, &'static str> {
    let target = super::percpu::get(cpu).ok_or("no such CPU")?;
    if !target.online.load(Ordering::Acquire) {
        return Err("that CPU is not online");
    }
    if super::percpu::this().index() == cpu {
        return Err("a CPU cannot post a job to itself");
    }
    let mailbox = &target.mailbox;
    let sender = mailbox.sender.lock();
    // A job the last sender abandoned may still be running: wait it out.
    let deadline = deadline_ticks(TIMEOUT_MS);
    while mailbox.state.load(Ordering::Acquire) != IDLE {
        if crate::time::host_tsc::read_raw() > deadline {
            return Err("the CPU is still busy with an abandoned job");
        }
        core::hint::spin_loop();
    }
    mailbox.job.store(job as usize, Ordering::Relaxed);
    mailbox.arg.store(arg, Ordering::Relaxed);
    mailbox.state.store(POSTED, Ordering::Release);
    crate::arch::lapic::send_ipi(
        target.apic_id.load(Ordering::Relaxed),
        crate::arch::idt::WAKE_VECTOR,
    );
    Ok(Ticket {
        mailbox,
        _sender: sender,
        waited: false,
    })
}

/// Runs `job(arg)` on CPU `cpu` and returns its result ([`post`], then
/// [`Ticket::wait`]).
pub fn run_on(cpu: usize, job: Job, arg: u64) -> Result<u64, &'static str> {
    post(cpu, job, arg)?.wait()
}

fn deadline_ticks(ms: u64) -> u64 {
    let khz = crate::time::tsc_frequency().khz.max(1);
    crate::time::host_tsc::read_raw().saturating_add(ms.saturating_mul(khz))
}

impl Ticket {
    /// Waits (at most [`TIMEOUT_MS`]) for the job's result.
    pub fn wait(mut self) -> Result<u64, &'static str> {
        self.waited = true;
        self.finish()
    }

    fn finish(&self) -> Result<u64, &'static str> {
        let m = self.mailbox;
        let deadline = deadline_ticks(TIMEOUT_MS);
        loop {
            if m.state.load(Ordering::Acquire) == DONE {
                let result = m.result.load(Ordering::Relaxed);
                m.state.store(IDLE, Ordering::Release);
                return Ok(result);
            }
            if crate::time::host_tsc::read_raw() > deadline {
                break;
            }
            core::hint::spin_loop();
        }
        // Take the job back if it never started; else leave it to finish.
        match m
            .state
            .compare_exchange(POSTED, IDLE, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Err("the CPU never took the job"),
            Err(DONE) => {
                let result = m.result.load(Ordering::Relaxed);
                m.state.store(IDLE, Ordering::Release);
                Ok(result)
            }
            Err(_) => {
                if m.state
                    .compare_exchange(RUNNING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    // It finished just now.
                    let result = m.result.load(Ordering::Relaxed);
                    m.state.store(IDLE, Ordering::Release);
                    return Ok(result);
                }
                Err("the job did not finish in time")
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.waited {
            let _ = self.finish();
        }
    }
}
