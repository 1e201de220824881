//! L1's reports: reproducer lines (MISMATCH, DEVIATION, NOTE), each with
//! its kind, counted in the record L0 reads.

use crate::vmcb12::{Corrupted, Mode};
use guest_stubs::exceptions::Fault;
use guest_stubs::println;
use svm::fuzz::{Record, RECORD_GPA};

/// Report lines printed per VM (all are counted).
const MAX_LINES: u64 = 200;

/// One iteration's context for reports.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub seed: u64,
    pub iteration: u64,
    pub mode: Mode,
    pub fields: Corrupted,
    pub action: &'static str,
    pub ram: u64,
    pub max_phys: u8,
    /// CR4 and EFER bits L1's CPUID offers (to tell L0's refusals apart).
    pub cr4_allowed: u64,
    pub efer_allowed: u64,
    /// FlushByAsid (TLB_CONTROL 3 and 7) offered to L1.
    pub flush_by_asid: bool,
    pub lines: u64,
    /// L2's code has a WRMSR: it may set the TSC (L1's too when L1 lets
    /// the write through, as on hardware), so no TSC oracle.
    pub l2_may_write_tsc: bool,
    /// A short run: every iteration prints what it does.
    pub replay: bool,
}

pub(crate) fn record() -> &'static mut Record {
    // SAFETY: RECORD_GPA is identity mapped L1 memory no one else writes
    // (L2 cannot reach it; L0 reads it only after the VM stopped).
    unsafe { &mut *(RECORD_GPA as *mut Record) }
}

impl Ctx {
    /// Counts and prints a hypervisor failure (with a reproducer).
    pub fn mismatch(&mut self, what: core::fmt::Arguments<'_>) {
        record().mismatches += 1;
        self.line("MISMATCH", what);
    }

    /// Counts and prints an outcome the emulator decided before L0.
    pub fn deviation(&mut self, what: core::fmt::Arguments<'_>) {
        record().deviations += 1;
        self.line("DEVIATION", what);
    }

    /// Counts and prints something worth a look that is not a failure.
    pub fn note(&mut self, what: core::fmt::Arguments<'_>) {
        self.line("NOTE", what);
    }

    fn line(&mut self, kind: &str, what: core::fmt::Arguments<'_>) {
        let mut text = Text::default();
        let _ = core::fmt::Write::write_fmt(&mut text, what);
        let hash = svm::fuzz::kind_hash(kind, text.as_str());
        let rec = record();
        rec.count_kind(hash, 1);
        let seen = rec.kinds.iter().find(|s| s[0] == hash).map_or(1, |s| s[1]);
        if self.lines < MAX_LINES && seen <= LINES_PER_KIND {
            self.lines += 1;
            println!(
                "fuzz: {kind} kind={hash:016x} seed={} iter={} mode={} fields={} action={}: {what}",
                self.seed,
                self.iteration,
                self.mode.name(),
                self.fields,
                self.action
            );
        }
    }
}

/// Reproducer lines printed per kind of message and VM (all are counted).
const LINES_PER_KIND: u64 = 5;
const TEXT: usize = 160;

/// A formatted message, truncated.
struct Text {
    buf: [u8; TEXT],
    len: usize,
}

impl Default for Text {
    fn default() -> Self {
        Self {
            buf: [0; TEXT],
            len: 0,
        }
    }
}

impl Text {
    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("?")
    }
}

impl core::fmt::Write for Text {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for &b in s.as_bytes() {
            if self.len < TEXT && b.is_ascii() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
        Ok(())
    }
}

/// A fault as reproducer lines show it: `#13(0x0)`, or `no fault`.
pub(crate) struct Shown(pub Option<Fault>);

impl core::fmt::Display for Shown {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some(fault) => write!(f, "#{}({:#x})", fault.vector, fault.error_code),
            None => write!(f, "no fault"),
        }
    }
}

/// An expected vector: `#13`, or `no fault`.
pub(crate) struct ShownVector(pub Option<u64>);

impl core::fmt::Display for ShownVector {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some(v) => write!(f, "#{v}"),
            None => write!(f, "no fault"),
        }
    }
}
