//! The shadow nested page table L2 runs on: 4-level long-mode format, as
//! L0 writes its own NPT (hv/src/vmm/npt.rs): every entry has U set
//! (nested accesses are user accesses, APM Vol. 2, 15.25.5), tables are
//! P|W|U, leaves P|U plus W when writable, NX when not executable, PS for
//! 2 MiB/1 GiB pages. Entries are installed one at a time from resolved
//! #NPFs ([`super::compose`]); the kernel provides the frames. After any
//! change that removes or narrows an entry the caller flushes L2's
//! hardware ASID (APM 15.16).

use super::compose::ShadowEntry;
use super::invalidate::Decision;
use super::walk::{page, Rights};

/// Table frames, provided by the kernel.
pub trait Frames {
    /// A zeroed 4 KiB frame (host-physical address), or `None`.
    fn alloc(&mut self) -> Option<u64>;
    /// Gives back a frame [`Frames::alloc`] gave.
    fn free(&mut self, frame: u64);
    /// Entry `index` of the table at `table`.
    fn read(&self, table: u64, index: usize) -> u64;
    /// Writes entry `index` of the table at `table`.
    fn write(&mut self, table: u64, index: usize, value: u64);
}

/// Why an entry was not installed (the table is unchanged or only has
/// extra empty tables).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildError {
    /// No frame for a table.
    OutOfFrames,
    /// The entry is not a 4 KiB/2 MiB/1 GiB page aligned on both sides
    /// within 52 address bits.
    BadEntry,
    /// A not-executable entry while the CPU does not honour NX.
    NoNx,
}

const P: u64 = 1;
const W: u64 = 1 << 1;
const U: u64 = 1 << 2;
const PS: u64 = 1 << 7;
const NX: u64 = 1 << 63;
const ADDR: u64 = 0x000f_ffff_ffff_f000;
/// A table entry: the leaves decide the access.
const TABLE: u64 = P | W | U;

/// A shadow nested page table.
#[derive(Debug)]
pub struct ShadowNpt {
    root: u64,
    /// Whether the CPU honours NX in these tables (L0's EFER.NXE).
    nx: bool,
}

fn index(gpa: u64, level: u8) -> usize {
    ((gpa >> (12 + 9 * u32::from(level - 1))) & 511) as usize
}

fn is_leaf(e: u64, level: u8) -> bool {
    level == 1 || e & PS != 0
}

impl ShadowNpt {
    /// An empty table (one root frame). `nx`: L0 runs with EFER.NXE.
    pub fn new(f: &mut impl Frames, nx: bool) -> Option<Self> {
        Some(Self {
            root: f.alloc()?,
            nx,
        })
    }

    /// The root, for the nCR3 of the VMCB L2 runs on.
    pub fn root(&self) -> u64 {
        self.root
    }

    /// The leaf bits of `e` at its level.
    fn leaf(&self, e: &ShadowEntry) -> Result<u64, BuildError> {
        let size = 1u64 << e.page_bits;
        let valid = matches!(e.page_bits, page::K4 | page::M2 | page::G1)
            && (e.gpa | e.hpa) & (size - 1) == 0
            && e.hpa & !ADDR == 0;
        if !valid {
            return Err(BuildError::BadEntry);
        }
        if !e.rights.exec && !self.nx {
            return Err(BuildError::NoNx);
        }
        let mut bits = e.hpa | P | U;
        if e.rights.write {
            bits |= W;
        }
        if !e.rights.exec {
            bits |= NX;
        }
        if e.page_bits != page::K4 {
            bits |= PS;
        }
        Ok(bits)
    }

    /// Installs `e`, replacing whatever mapped its range: a larger page
    /// around it is split off (its other parts fault and are rebuilt on
    /// demand), smaller pages under it are freed.
    pub fn install(&mut self, f: &mut impl Frames, e: &ShadowEntry) -> Result<(), BuildError> {
        let leaf = self.leaf(e)?;
        let target = match e.page_bits {
            page::G1 => 3,
            page::M2 => 2,
            _ => 1,
        };
        let mut table = self.root;
        for level in (target + 1..=4).rev() {
            let i = index(e.gpa, level);
            let old = f.read(table, i);
            if old & P != 0 && !is_leaf(old, level) {
                table = old & ADDR;
                continue;
            }
            // Empty, or a larger page: a fresh table in its place.
            let t = f.alloc().ok_or(BuildError::OutOfFrames)?;
            f.write(table, i, t | TABLE);
            table = t;
        }
        let i = index(e.gpa, target);
        let old = f.read(table, i);
        if target > 1 && old & P != 0 && !is_leaf(old, target) {
            free_table(f, old & ADDR, target - 1);
        }
        f.write(table, i, leaf);
        Ok(())
    }

    /// The entry mapping `gpa`, if any.
    pub fn lookup(&self, f: &impl Frames, gpa: u64) -> Option<ShadowEntry> {
        let mut table = self.root;
        for level in (1..=4u8).rev() {
            let e = f.read(table, index(gpa, level));
            if e & P == 0 {
                return None;
            }
            if level < 4 && is_leaf(e, level) {
                let bits = 12 + 9 * (level - 1);
                let mask = !((1u64 << bits) - 1);
                return Some(ShadowEntry {
                    gpa: gpa & mask,
                    hpa: e & ADDR & mask,
                    page_bits: bits,
                    rights: Rights {
                        write: e & W != 0,
                        exec: e & NX == 0,
                    },
                });
            }
            table = e & ADDR;
        }
        None
    }

    /// Removes the leaf mapping `gpa` (tables stay).
    pub fn remove(&mut self, f: &mut impl Frames, gpa: u64) {
        let mut table = self.root;
        for level in (1..=4u8).rev() {
            let i = index(gpa, level);
            let e = f.read(table, i);
            if e & P == 0 {
                return;
            }
            if level < 4 && is_leaf(e, level) {
                f.write(table, i, 0);
                return;
            }
            table = e & ADDR;
        }
    }

    /// Removes every entry, freeing every table but the root.
    pub fn clear(&mut self, f: &mut impl Frames) {
        for i in 0..512 {
            let e = f.read(self.root, i);
            if e & P != 0 {
                free_table(f, e & ADDR, 3);
                f.write(self.root, i, 0);
            }
        }
    }

    /// Applies an invalidation decision.
    pub fn apply(&mut self, f: &mut impl Frames, d: Decision) {
        match d {
            Decision::Keep => {}
            Decision::DropAll => self.clear(f),
            Decision::RefreshOne(gpa) => self.remove(f, gpa),
        }
    }

    /// Frees every frame, the root included.
    pub fn destroy(mut self, f: &mut impl Frames) {
        self.clear(f);
        f.free(self.root);
    }
}

/// Frees the table at `table` (at `level`) and the tables under it.
fn free_table(f: &mut impl Frames, table: u64, level: u8) {
    if level > 1 {
        for i in 0..512 {
            let e = f.read(table, i);
            if e & P != 0 && !is_leaf(e, level) {
                free_table(f, e & ADDR, level - 1);
            }
        }
    }
    f.free(table);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nested::shadow_npt::compose::tests::{l0, tables, HOST};
    use crate::nested::shadow_npt::compose::{compose, resolve, Resolution};
    use crate::nested::shadow_npt::walk::tests::long_regs;
    use crate::nested::shadow_npt::walk::{translate, NestedAccess, Stage};
    use core::cell::RefCell;
    use proptest::prelude::*;
    use std::boxed::Box;
    use std::collections::HashMap;

    /// Frames in a map; reading or freeing a frame that is not live panics.
    #[derive(Default)]
    struct Mem {
        live: HashMap<u64, Box<[u64; 512]>>,
        next: u64,
        limit: Option<usize>,
    }

    impl Frames for Mem {
        fn alloc(&mut self) -> Option<u64> {
            if self.limit.is_some_and(|l| self.live.len() >= l) {
                return None;
            }
            self.next += 0x1000;
            let at = 0x7_0000_0000 + self.next;
            self.live.insert(at, Box::new([0; 512]));
            Some(at)
        }
        fn free(&mut self, frame: u64) {
            self.live.remove(&frame).expect("double free");
        }
        fn read(&self, table: u64, index: usize) -> u64 {
            self.live[&table][index]
        }
        fn write(&mut self, table: u64, index: usize, value: u64) {
            self.live.get_mut(&table).expect("dead table")[index] = value;
        }
    }

    const RW: Rights = Rights::ALL;
    const RO_NX: Rights = Rights {
        write: false,
        exec: false,
    };

    fn entry(gpa: u64, hpa: u64, page_bits: u8, rights: Rights) -> ShadowEntry {
        ShadowEntry {
            gpa,
            hpa,
            page_bits,
            rights,
        }
    }

    /// The raw leaf for `gpa`.
    fn raw_leaf(f: &Mem, s: &ShadowNpt, gpa: u64) -> u64 {
        let mut t = s.root();
        for level in (1..=4u8).rev() {
            let e = f.read(t, index(gpa, level));
            assert_ne!(e & P, 0, "level {level}");
            assert_ne!(e & U, 0, "U at every level");
            if level < 4 && is_leaf(e, level) {
                return e;
            }
            t = e & ADDR;
        }
        unreachable!()
    }

    #[test]
    fn installs_every_size_with_exact_bits() {
        let mut f = Mem::default();
        let mut s = ShadowNpt::new(&mut f, true).unwrap();
        let a = entry(0x5000, 0x1_0000_7000, page::K4, RW);
        let b = entry(0x20_0000, 0x1_0060_0000, page::M2, RO_NX);
        let c = entry(0x4000_0000, 0x40_0000_0000, page::G1, RW);
        for e in [a, b, c] {
            s.install(&mut f, &e).unwrap();
        }
        assert_eq!(raw_leaf(&f, &s, 0x5fff), 0x1_0000_7000 | P | W | U);
        assert_eq!(raw_leaf(&f, &s, 0x20_1234), NX | 0x1_0060_0000 | P | U | PS);
        assert_eq!(
            raw_leaf(&f, &s, 0x7fff_ffff),
            0x40_0000_0000 | P | W | U | PS
        );
        for (e, g) in [(a, 0x5123), (b, 0x3f_ffff), (c, 0x4000_0000)] {
            assert_eq!(s.lookup(&f, g), Some(e));
        }
        assert_eq!(s.lookup(&f, 0x6000), None);
        assert_eq!(s.lookup(&f, 0x8000_0000), None);
        // Root, PDPT, PD, PT.
        assert_eq!(f.live.len(), 4);
        s.destroy(&mut f);
        assert!(f.live.is_empty(), "every frame freed");
    }

    #[test]
    fn mixed_sizes_replace_each_other_without_leaks() {
        let mut f = Mem::default();
        let mut s = ShadowNpt::new(&mut f, true).unwrap();
        let big = entry(0x20_0000, 0x60_0000, page::M2, RW);
        s.install(&mut f, &big).unwrap();
        let frames = f.live.len();
        // A 4 KiB page inside it splits it: the rest is unmapped.
        let small = entry(0x20_3000, 0x99_3000, page::K4, RW);
        s.install(&mut f, &small).unwrap();
        assert_eq!(f.live.len(), frames + 1);
        assert_eq!(s.lookup(&f, 0x20_3010), Some(small));
        assert_eq!(s.lookup(&f, 0x20_4000), None);
        // The 2 MiB page again: its PT is freed.
        s.install(&mut f, &big).unwrap();
        assert_eq!(f.live.len(), frames);
        assert_eq!(s.lookup(&f, 0x20_3010), Some(big));
        // A 1 GiB page over both: the PD is freed.
        let giant = entry(0, 0x40_0000_0000, page::G1, RW);
        s.install(&mut f, &giant).unwrap();
        assert_eq!(f.live.len(), 2);
        assert_eq!(s.lookup(&f, 0x20_3010), Some(giant));
        s.remove(&mut f, 0x1234);
        assert_eq!(s.lookup(&f, 0x20_3010), None);
        s.install(&mut f, &small).unwrap();
        s.apply(&mut f, Decision::DropAll);
        assert_eq!(f.live.len(), 1, "only the root is left");
        assert_eq!(s.lookup(&f, 0x20_3010), None);
    }

    #[test]
    fn bad_entries_and_no_frames_are_refused() {
        let mut f = Mem::default();
        let mut s = ShadowNpt::new(&mut f, false).unwrap();
        let bad = [
            entry(0x20_1000, 0x60_0000, page::M2, RW),
            entry(0x20_0000, 0x60_1000, page::M2, RW),
            entry(0, 0, page::M4, RW),
            entry(0, 1 << 52, page::K4, RW),
        ];
        for e in bad {
            assert_eq!(s.install(&mut f, &e), Err(BuildError::BadEntry), "{e:?}");
        }
        let nx = entry(0, 0x1000, page::K4, RO_NX);
        assert_eq!(s.install(&mut f, &nx), Err(BuildError::NoNx));
        f.limit = Some(2);
        let e = entry(0x5000, 0x7000, page::K4, RW);
        assert_eq!(s.install(&mut f, &e), Err(BuildError::OutOfFrames));
        assert_eq!(s.lookup(&f, 0x5000), None);
        f.limit = None;
        s.install(&mut f, &e).unwrap();
        assert_eq!(s.lookup(&f, 0x5000), Some(e));
        s.apply(&mut f, Decision::RefreshOne(0x5000));
        assert_eq!(s.lookup(&f, 0x5000), None);
        s.apply(&mut f, Decision::Keep);
        s.destroy(&mut f);
        assert!(f.live.is_empty());
    }

    proptest! {
        /// Faulting in random accesses through L1's tables and L0's map
        /// (the composition tests' fixtures) builds a shadow table whose
        /// every mapping agrees with a fresh resolution, and that maps
        /// nothing L1's tables or L0's map refuse.
        #[test]
        fn built_table_agrees_with_resolution(
            faults in prop::collection::vec((0u64..0x2_0000_0000, any::<bool>(), any::<bool>()), 1..40),
            probes in prop::collection::vec(0u64..0x2_0000_0000, 1..40),
            clean: bool,
        ) {
            let mut t = tables();
            if clean {
                for e in t.0.values_mut() {
                    *e &= !0x60;
                }
            }
            let m = RefCell::new(t);
            let regs = long_regs(0x1000);
            let walk = |gpa, write, fetch| {
                let a = NestedAccess { write, fetch };
                translate(|x| m.borrow().read(x), &regs, gpa, a).map(|t| compose(gpa, &t, l0(t.l1_pa), a))
            };
            let res = |gpa, write, fetch| {
                let a = NestedAccess { write, fetch };
                resolve(|x| m.borrow().read(x), &regs, gpa, a, Stage::Final, l0)
            };
            let mut f = Mem::default();
            let mut s = ShadowNpt::new(&mut f, true).unwrap();
            for (gpa, write, fetch) in faults {
                let a = NestedAccess { write, fetch };
                let Ok(t) = translate(|x| m.borrow().read(x), &regs, gpa, a) else {
                    continue;
                };
                if let Resolution::Map(e) = compose(gpa, &t, l0(t.l1_pa), a) {
                    // The caller's A/D updates, then the entry.
                    for &(at, bits) in t.ad.updates() {
                        *m.borrow_mut().0.entry(at).or_insert(0) |= bits;
                    }
                    s.install(&mut f, &e).unwrap();
                    prop_assert_eq!(s.lookup(&f, gpa), Some(e));
                    prop_assert!(!e.rights.write || t.ad.leaf_dirty, "clean leaves map read-only");
                }
                prop_assert_eq!(walk(gpa, write, fetch).ok(), Some(res(gpa, write, fetch)));
            }
            for g in probes {
                if let Some(e) = s.lookup(&f, g) {
                    prop_assert!(e.hpa_of(g) >= HOST, "only L0's RAM");
                    // A read always resolves to the same place; writes and
                    // fetches the entry allows resolve too.
                    for (w, x) in [(false, false), (e.rights.write, false), (false, e.rights.exec)] {
                        match res(g, w, x) {
                            Resolution::Map(fresh) => {
                                prop_assert_eq!(fresh.hpa_of(g), e.hpa_of(g));
                                prop_assert_eq!(fresh.rights.exec, e.rights.exec);
                                prop_assert!(fresh.rights.write || !e.rights.write);
                            }
                            other => prop_assert!(false, "{:#x}: {:?} for {:?}", g, other, e),
                        }
                    }
                }
            }
            s.destroy(&mut f);
            prop_assert!(f.live.is_empty());
        }
    }
}
