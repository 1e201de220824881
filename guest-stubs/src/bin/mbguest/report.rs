//! Test lines in the project's (and kvm-unit-tests') style:
//! `test <name> ... ok|FAILED (why)|skipped (why)`, then `N passed, N failed`.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU32, Ordering};

use crate::io::println;

/// A failed check: its reason is in [`REASON`] (one check runs at a time,
/// and there is no heap here).
#[derive(Debug)]
pub struct Why(());

struct Reason {
    buf: [u8; 160],
    len: usize,
}

static mut REASON: Reason = Reason {
    buf: [0; 160],
    len: 0,
};

static EMPTY: Reason = Reason {
    buf: [0; 160],
    len: 0,
};

impl Why {
    /// Records the reason of the running check's failure.
    pub fn new(args: fmt::Arguments<'_>) -> Self {
        let reason = &raw mut REASON;
        // SAFETY: one CPU; reasons are written and read between checks'
        // lines, never from an interrupt handler.
        unsafe {
            (*reason).len = 0;
            let _ = (*reason).write_fmt(args);
        }
        Why(())
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: as in new.
        let reason: &Reason = unsafe { (&raw const REASON).as_ref() }.unwrap_or(&EMPTY);
        // Only whole UTF-8 characters are copied in (write_str cuts at a
        // char boundary).
        core::str::from_utf8(&reason.buf[..reason.len]).unwrap_or("?")
    }
}

impl Write for Reason {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut take = s.len().min(self.buf.len() - self.len);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.buf[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}

/// What one check concluded.
pub enum Outcome {
    Pass,
    Fail(Why),
    Skip(&'static str),
}

/// `Err(Why)` from a check body: fails the check with this reason.
pub type Check = Result<(), Why>;

/// Fails the enclosing check (a function returning [`Check`]) with a reason.
macro_rules! bail {
    ($($arg:tt)*) => { return Err($crate::report::Why::new(format_args!($($arg)*))) };
}
pub(crate) use bail;

/// Fails the enclosing check unless `got == want`.
macro_rules! expect_eq {
    ($what:expr, $got:expr, $want:expr) => {{
        let (got, want) = ($got, $want);
        if got != want {
            $crate::report::bail!("{}: got {:#x}, expected {:#x}", $what, got, want);
        }
    }};
}
pub(crate) use expect_eq;

static PASSED: AtomicU32 = AtomicU32::new(0);
static FAILED: AtomicU32 = AtomicU32::new(0);
static SKIPPED: AtomicU32 = AtomicU32::new(0);
/// The running check's name, for a fault that ends the run inside it.
static mut CURRENT: &str = "";

/// Runs one check and prints its line.
pub fn run(name: &'static str, body: impl FnOnce() -> Outcome) {
    // SAFETY: one CPU; the fault handler only reads it.
    unsafe { CURRENT = name };
    match body() {
        Outcome::Pass => {
            PASSED.fetch_add(1, Ordering::Relaxed);
            println!("test {name} ... ok");
        }
        Outcome::Fail(why) => {
            FAILED.fetch_add(1, Ordering::Relaxed);
            println!("test {name} ... FAILED ({})", why.as_str());
        }
        Outcome::Skip(why) => {
            SKIPPED.fetch_add(1, Ordering::Relaxed);
            println!("test {name} ... skipped ({why})");
        }
    }
    // SAFETY: as above.
    unsafe { CURRENT = "" };
}

/// Runs a check that always applies.
pub fn check(name: &'static str, body: impl FnOnce() -> Check) {
    run(name, || match body() {
        Ok(()) => Outcome::Pass,
        Err(why) => Outcome::Fail(why),
    });
}

/// Ends the run inside the current check (an unexpected exception): its
/// line says why, then the totals.
pub fn abort(args: fmt::Arguments<'_>) -> ! {
    // SAFETY: read-only here; one CPU.
    let name = unsafe { CURRENT };
    FAILED.fetch_add(1, Ordering::Relaxed);
    println!("test {name} ... FAILED ({args})");
    finish()
}

/// Prints the totals and exits: code 0 when nothing failed, else 1 (QEMU
/// status 1 or 3, as kvm-unit-tests).
pub fn finish() -> ! {
    let (p, f, s) = (
        PASSED.load(Ordering::Relaxed),
        FAILED.load(Ordering::Relaxed),
        SKIPPED.load(Ordering::Relaxed),
    );
    if s > 0 {
        println!("{s} skipped");
    }
    println!("{p} passed, {f} failed");
    crate::io::exit(u32::from(f > 0))
}
