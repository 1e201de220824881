//! The hostile-L1 fuzzer's pure logic, shared by the fuzzing L1 guest
//! (`guest-stubs/src/bin/fuzz/`), the kernel that runs it (`fuzz=` on the
//! command line) and their host tests: the per-iteration random stream, the
//! run parameters, the record L1 keeps in its memory for L0 to read, and
//! the oracles (what L1 must observe), written from the APM independently
//! of L0's own checks in [`crate::nested::checks`] so that they can
//! disagree.

mod oracle;

pub use oracle::tsc_went_on;
pub use oracle::{
    broken_rule, cpuid_rule, emulator_checks_first, exit_intercepted, is_invalid, offered,
    reserved_exception_injected, svm_address, AddressVerdict, CR4_BASE, CR4_FEATURES, CR4_MBZ,
    EFER_BASE, EFER_FEATURES, EFER_MBZ,
};

/// xorshift64* (Vigna): small, fast and good enough to pick corruptions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rng(u64);

/// SplitMix64's finalizer: spreads nearby seeds over the whole state.
const fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Rng {
    /// The stream of iteration `iteration` of run `seed`: it depends on
    /// these two numbers only, so every iteration replays on its own.
    pub const fn for_iteration(seed: u64, iteration: u64) -> Self {
        let s = mix(mix(seed ^ 0x005e_ed0f_f022) ^ iteration.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        // xorshift's state must not be zero.
        Self(if s == 0 { 0x1234_5678 } else { s })
    }

    /// The next 64 random bits.
    pub fn bits(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.bits()) * u128::from(n)) >> 64) as u64
    }

    /// True with probability 1/`n`.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    /// One of `items` (not empty).
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    /// A value of the kind that finds bugs: random, all-ones, one bit,
    /// small, or near a power of two.
    pub fn value(&mut self) -> u64 {
        match self.below(6) {
            0 => self.bits(),
            1 => 1 << self.below(64),
            2 => self.below(256),
            3 => u64::MAX >> self.below(64),
            4 => (1u64 << self.below(64)).wrapping_sub(1 + self.below(2)),
            _ => !(1u64 << self.below(64)),
        }
    }
}

/// What one fuzz run (one L1 VM) does: the seed and the iterations
/// `first..first + count`, stopping early after `ms` milliseconds of L1's
/// TSC (0: no limit). Passed to L1 as its test name, `fuzz:S:F:N:MS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec {
    /// The run's seed.
    pub seed: u64,
    /// First iteration.
    pub first: u64,
    /// Number of iterations.
    pub count: u64,
    /// Time limit in milliseconds (0: none).
    pub ms: u64,
}

/// The test-name prefix of a fuzz run.
pub const NAME_PREFIX: &str = "fuzz:";

impl Spec {
    /// Parses the test name `fuzz:S:F:N:MS` (decimal numbers).
    pub fn parse_name(name: &str) -> Option<Self> {
        let mut it = name.strip_prefix(NAME_PREFIX)?.split(':');
        let mut num = || it.next()?.parse::<u64>().ok();
        let spec = Spec {
            seed: num()?,
            first: num()?,
            count: num()?,
            ms: num()?,
        };
        match it.next() {
            None => Some(spec),
            Some(_) => None,
        }
    }

    /// The test name for this spec (the inverse of [`Spec::parse_name`]).
    pub fn write_name(&self, out: &mut impl core::fmt::Write) -> core::fmt::Result {
        write!(
            out,
            "{NAME_PREFIX}{}:{}:{}:{}",
            self.seed, self.first, self.count, self.ms
        )
    }
}

/// The `fuzz=SEED,ITERATIONS[,MINUTES[,START]]` kernel command-line word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cmdline {
    /// Seed.
    pub seed: u64,
    /// Iterations to run.
    pub iterations: u64,
    /// Stop after this many minutes (0: no limit).
    pub minutes: u64,
    /// First iteration (to replay a later part of a run).
    pub start: u64,
}

impl Cmdline {
    /// Parses the value of `fuzz=`.
    pub fn parse(value: &str) -> Option<Self> {
        let mut it = value.split(',');
        let mut num = |required: bool| match it.next() {
            Some(w) => w.parse::<u64>().ok(),
            None if required => None,
            None => Some(0),
        };
        let parsed = Cmdline {
            seed: num(true)?,
            iterations: num(true)?,
            minutes: num(false)?,
            start: num(false)?,
        };
        match it.next() {
            None => Some(parsed),
            Some(_) => None,
        }
    }
}

/// Where L1 keeps its [`Record`]: a page of the start layout that nothing
/// else uses (see [`crate::guest_abi`]), outside L2's reach.
pub const RECORD_GPA: u64 = 0x6000;
/// [`Record::magic`].
pub const RECORD_MAGIC: u64 = 0x4655_5a5a_5245_4331; // "1CERZZUF"
/// Histogram slots in a [`Record`].
pub const HISTOGRAM_SLOTS: usize = 120;
/// Report-kind slots in a [`Record`].
pub const KIND_SLOTS: usize = 48;
/// Histogram key of a fault L1 took itself (low byte: the vector) instead
/// of a #VMEXIT.
pub const L1_FAULT_KEY: u64 = 0x1_0000_0000;

/// What L1 leaves in its memory for L0 to read, also after L0 stopped the
/// VM mid-iteration.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct Record {
    /// [`RECORD_MAGIC`] once L1 started.
    pub magic: u64,
    /// The iteration being run (or, at the end, the first one not run).
    pub next: u64,
    /// Iterations finished.
    pub done: u64,
    /// Oracle mismatches (hypervisor failures).
    pub mismatches: u64,
    /// Outcomes the emulator decided before L0 saw them.
    pub deviations: u64,
    /// vmcb12s the oracle found legal that ended in VMEXIT_INVALID.
    pub invalid_but_legal: u64,
    /// `(exit code or L1_FAULT_KEY | vector, count)`; count 0 = free.
    pub histogram: [[u64; 2]; HISTOGRAM_SLOTS],
    /// `(kind_hash of a report, count)`; count 0 = free.
    pub kinds: [[u64; 2]; KIND_SLOTS],
}

impl Record {
    /// An empty record.
    pub const fn new() -> Self {
        Self {
            magic: RECORD_MAGIC,
            next: 0,
            done: 0,
            mismatches: 0,
            deviations: 0,
            invalid_but_legal: 0,
            histogram: [[0; 2]; HISTOGRAM_SLOTS],
            kinds: [[0; 2]; KIND_SLOTS],
        }
    }

    /// Counts `n` outcomes `key` (dropped when every slot is taken).
    pub fn count(&mut self, key: u64, n: u64) {
        add(&mut self.histogram, key, n);
    }

    /// Counts `n` reports of kind `hash` ([`kind_hash`]).
    pub fn count_kind(&mut self, hash: u64, n: u64) {
        add(&mut self.kinds, hash, n);
    }

    /// Adds another record's counts to this one.
    pub fn merge(&mut self, other: &Record) {
        self.done += other.done;
        self.mismatches += other.mismatches;
        self.deviations += other.deviations;
        self.invalid_but_legal += other.invalid_but_legal;
        for [key, n] in other.histogram {
            if n != 0 {
                self.count(key, n);
            }
        }
        for [key, n] in other.kinds {
            if n != 0 {
                self.count_kind(key, n);
            }
        }
    }
}

/// Adds `n` to `key`'s slot (dropped when every slot is taken).
fn add(slots: &mut [[u64; 2]], key: u64, n: u64) {
    for slot in slots.iter_mut() {
        if slot[1] == 0 || slot[0] == key {
            slot[0] = key;
            slot[1] += n;
            return;
        }
    }
}

/// A report's kind as a number (FNV-1a of the label and [`kind_of`] the
/// message), printed in its reproducer line and counted in the record.
pub fn kind_hash(label: &str, message: &str) -> u64 {
    let mut buf = [0u8; 256];
    let n = kind_of(message, &mut buf);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in label.as_bytes().iter().chain(b" ").chain(&buf[..n]) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Default for Record {
    fn default() -> Self {
        Self::new()
    }
}

/// The vmcb12 fields the fuzzer corrupts, by name for reproducer lines.
pub const FIELDS: [&str; 25] = [
    "byte",
    "bit",
    "intercepts",
    "iopm_base",
    "msrpm_base",
    "asid",
    "tlb_control",
    "int_ctl",
    "event_inj",
    "nested_ctl",
    "ncr3",
    "clean",
    "int_shadow",
    "tsc_offset",
    "cr0",
    "cr3",
    "cr4",
    "efer",
    "dr6",
    "dr7",
    "segment",
    "rflags",
    "rip_rsp",
    "cpl",
    "rax",
];

/// A message's kind: the message without its numbers (every run of
/// `[0-9a-fA-Fx]` that starts with a digit is dropped), written to `out`;
/// returns the length. Reproducer lines of one kind group under it.
pub fn kind_of(message: &str, out: &mut [u8]) -> usize {
    let bytes = message.as_bytes();
    let (mut i, mut n) = (0, 0);
    while i < bytes.len() && n < out.len() {
        if bytes[i].is_ascii_digit() {
            while i < bytes.len() && (bytes[i].is_ascii_hexdigit() || bytes[i] == b'x') {
                i += 1;
            }
            continue;
        }
        out[n] = bytes[i];
        n += 1;
        i += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::String;

    #[test]
    fn iterations_replay_and_differ() {
        let mut a = Rng::for_iteration(7, 1000);
        let mut b = Rng::for_iteration(7, 1000);
        let xs: [u64; 4] = core::array::from_fn(|_| a.bits());
        let ys: [u64; 4] = core::array::from_fn(|_| b.bits());
        assert_eq!(xs, ys);
        let mut c = Rng::for_iteration(7, 1001);
        let mut d = Rng::for_iteration(8, 1000);
        assert_ne!(c.bits(), xs[0]);
        assert_ne!(d.bits(), xs[0]);
        assert_ne!(Rng::for_iteration(0, 0), Rng(0));
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut r = Rng::for_iteration(1, 2);
        let mut seen = [false; 5];
        for _ in 0..1000 {
            let v = r.below(5);
            assert!(v < 5);
            seen[v as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn spec_name_round_trips() {
        let spec = Spec {
            seed: u64::MAX,
            first: 4_000_000_000,
            count: 20_000,
            ms: 600_000,
        };
        let mut name = String::new();
        spec.write_name(&mut name).unwrap();
        assert!(name.len() <= crate::guest_abi::MAX_TEST_NAME);
        assert_eq!(Spec::parse_name(&name), Some(spec));
        assert_eq!(Spec::parse_name("fuzz:1:2:3"), None);
        assert_eq!(Spec::parse_name("fuzz:1:2:3:4:5"), None);
        assert_eq!(Spec::parse_name("nested::x"), None);
    }

    #[test]
    fn cmdline_takes_optional_minutes_and_start() {
        let c = |s| Cmdline::parse(s);
        assert_eq!(
            c("5,1000"),
            Some(Cmdline {
                seed: 5,
                iterations: 1000,
                minutes: 0,
                start: 0
            })
        );
        assert_eq!(
            c("5,1000,10,77"),
            Some(Cmdline {
                seed: 5,
                iterations: 1000,
                minutes: 10,
                start: 77
            })
        );
        for bad in ["", "5", "x,1", "5,1000,1,2,3", "5,-1"] {
            assert_eq!(c(bad), None, "{bad}");
        }
    }

    #[test]
    fn record_counts_and_merges() {
        let mut a = Record::new();
        a.count(0x81, 2);
        a.count(0x78, 1);
        a.count(0x81, 1);
        let mut b = Record::new();
        b.count(0x78, 5);
        b.done = 3;
        a.merge(&b);
        assert_eq!(a.histogram[0], [0x81, 3]);
        assert_eq!(a.histogram[1], [0x78, 6]);
        assert_eq!(a.histogram[2], [0, 0]);
        a.count_kind(9, 1);
        b.count_kind(9, 2);
        a.merge(&b);
        assert_eq!(a.kinds[0], [9, 3]);
        assert_eq!(a.done, 6, "merged twice");
        assert!(core::mem::size_of::<Record>() <= 4096);
    }

    #[test]
    fn kinds_drop_numbers_only() {
        let mut out = [0u8; 64];
        let n = kind_of(
            "EVENTINJ 0xee7b35fd800005ea still valid after exit 0xffffffff",
            &mut out,
        );
        assert_eq!(&out[..n], b"EVENTINJ  still valid after exit ");
        let n = kind_of("got Some(Fault { vector: d, error_code: 0 })", &mut out);
        assert_eq!(&out[..n], b"got Some(Fault { vector: d, error_code:  })");
        assert_eq!(
            kind_hash("MISMATCH", "EVENTINJ 0x1 still valid"),
            kind_hash("MISMATCH", "EVENTINJ 0x2222 still valid")
        );
        assert_ne!(
            kind_hash("MISMATCH", "EVENTINJ 0x1 still valid"),
            kind_hash("NOTE", "EVENTINJ 0x1 still valid")
        );
        let mut short = [0u8; 4];
        assert_eq!(kind_of("abcdef", &mut short), 4);
    }
}
