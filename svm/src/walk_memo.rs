//! A memo of the last guest page walks, so decoding the instruction at RIP
//! on every intercept does not walk the guest's tables from the top each
//! time (QEMU TCG has no NRIP save: L0 decodes).
//!
//! Exact, not a TLB: a remembered translation is used only after every
//! table entry its walk read has been read again and found unchanged (and
//! the paging registers, the access kind and the 4 KiB page are the same).
//! The walk ([`translate_mode`]) is a pure function of those, so the
//! answer is the one a full walk would give now, whatever the guest did
//! to its tables meanwhile (no invalidation to miss: INVLPG, CR3 writes
//! and table edits need not exit). Only successful walks are remembered.

use crate::walk::{translate_mode, Access, Failure, Mode, PagingRegs};
use core::cell::Cell;

/// Most entries one walk reads (PAE: PDPTE, PDE, PTE; long mode: 4).
const MAX_READS: usize = 4;
/// Translations remembered (L1's and L2's code, alternating).
const ENTRIES: usize = 2;

/// What a walk's answer depends on besides the entries it reads: page and
/// CR3 first, the cheap differences most misses stop at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Key {
    /// Linear address >> 12.
    page: u64,
    cr3: u64,
    cr0: u64,
    cr4: u64,
    efer: u64,
    /// MAXPHYADDR (bits 7:0), the access (write, fetch, user: bits 8-10)
    /// and [`Key::USED`]: one compare.
    flags: u32,
}

impl Key {
    /// Set in every remembered key: an unused slot (all zero) never
    /// equals one.
    const USED: u32 = 1 << 16;

    #[inline(always)]
    fn new(regs: &PagingRegs, va: u64, access: Access) -> Self {
        let flags = u32::from(regs.max_phys_bits)
            | u32::from(access.write) << 8
            | u32::from(access.fetch) << 9
            | u32::from(access.user) << 10
            | Self::USED;
        Key {
            page: va >> 12,
            cr3: regs.cr3,
            cr0: regs.cr0,
            cr4: regs.cr4,
            efer: regs.efer,
            flags,
        }
    }
}

/// A remembered walk; all zero (`Default`) is an unused slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Entry {
    key: Key,
    /// Guest-physical page the walk gave.
    pa_page: u64,
    /// The table entries the walk read: (address, value).
    reads: [(u64, u64); MAX_READS],
    n: usize,
}

impl Entry {
    /// Whether every table entry the walk read reads the same now.
    #[inline(always)]
    fn reads_same(&self, read: impl Fn(u64) -> Option<u64>) -> bool {
        let reads = &self.reads[..self.n.min(MAX_READS)];
        reads.iter().all(|&(at, v)| read(at) == Some(v))
    }
}

/// The remembered walks of one vCPU.
#[derive(Clone, Debug, Default)]
pub struct WalkMemo {
    entries: [Entry; ENTRIES],
    /// The entry the next miss replaces.
    next: usize,
}

impl WalkMemo {
    /// Forgets every translation.
    pub fn clear(&mut self) {
        *self = Self::default();
    }
}

/// The hit of [`translate_memo`]: the address a full walk of `va` gives
/// now, when `memo` holds a walk of its page with the same registers and
/// access and every table entry that walk read reads the same through
/// `read` again; `None` otherwise (the caller walks). Callers on a hot
/// path pass a cheaper `read` than the walk's own (one that says `None`
/// where the walk's would read something odd, e.g. unbacked memory):
/// that only turns hits into misses. Only walks with paging on are
/// remembered, so equal registers mean paging is on.
#[inline]
pub fn lookup(
    memo: &WalkMemo,
    read: impl Fn(u64) -> Option<u64>,
    regs: &PagingRegs,
    va: u64,
    access: Access,
) -> Option<u64> {
    let key = Key::new(regs, va, access);
    // Keys are unique in the memo (translate_memo replaces a walk of the
    // same key): the first equal key is the only candidate.
    let e = memo.entries.iter().find(|e| e.key == key)?;
    e.reads_same(read).then_some(e.pa_page | (va & 0xfff))
}

/// [`lookup`] for tables in `ram`, RAM as 8-byte words (guest-physical
/// `8 * i` at `ram[i]`), each entry read in place: an entry outside `ram`
/// or not 8-byte aligned (32-bit paging's 4-byte entries) is a miss.
#[inline]
pub fn lookup_in_ram(
    memo: &WalkMemo,
    ram: &[u64],
    regs: &PagingRegs,
    va: u64,
    access: Access,
) -> Option<u64> {
    // The word index, with an unaligned address's low bits rotated to the
    // top: far outside any RAM, so one bounds check refuses it too.
    let read = |at: u64| ram.get(at.rotate_right(3) as usize).copied();
    lookup(memo, read, regs, va, access)
}

/// [`translate_mode`], answered from `memo` when a remembered walk of the
/// same page, registers and access reads the same entries again.
#[inline(never)]
pub fn translate_memo(
    read: impl Fn(u64) -> Option<u64>,
    regs: &PagingRegs,
    va: u64,
    access: Access,
    memo: &mut WalkMemo,
) -> Result<u64, Failure> {
    if regs.mode() == Mode::Off {
        return translate_mode(read, regs, va, access);
    }
    if let Some(pa) = lookup(memo, &read, regs, va, access) {
        return Ok(pa);
    }
    let log: [Cell<(u64, u64)>; MAX_READS] = Default::default();
    let n = Cell::new(0usize);
    let recording = |at: u64| {
        let v = read(at);
        if let (Some(value), Some(slot)) = (v, log.get(n.get())) {
            slot.set((at, value));
        }
        n.set(n.get() + 1);
        v
    };
    let result = translate_mode(recording, regs, va, access);
    if let Ok(pa) = result {
        if n.get() <= MAX_READS {
            let key = Key::new(regs, va, access);
            // A stale walk of the same key is replaced, so keys stay
            // unique ([`lookup`] checks only the first equal one).
            let slot = match memo.entries.iter().position(|e| e.key == key) {
                Some(i) => i,
                None => {
                    let i = memo.next % ENTRIES;
                    memo.next = (i + 1) % ENTRIES;
                    i
                }
            };
            memo.entries[slot] = Entry {
                key,
                pa_page: pa & !0xfff,
                reads: log.map(Cell::into_inner),
                n: n.get(),
            };
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::{vec, vec::Vec};

    const FETCH: Access = Access {
        write: false,
        fetch: true,
        user: false,
    };

    /// Long mode, CR3 at 0x1000, tables at 0x2000/0x3000/0x4000, a 4 KiB
    /// page at `pa` for linear 0x40_0000.
    fn tables(pa: u64) -> BTreeMap<u64, u64> {
        let mut m = BTreeMap::new();
        m.insert(0x1000, 0x2000 | 7);
        m.insert(0x2000, 0x3000 | 7);
        m.insert(0x3000 + 2 * 8, 0x4000 | 7);
        m.insert(0x4000, pa | 7);
        m
    }

    fn regs() -> PagingRegs {
        PagingRegs {
            cr0: 1 << 31 | 1,
            cr3: 0x1000,
            cr4: 1 << 5,
            efer: 1 << 10 | 1 << 8,
            max_phys_bits: 40,
        }
    }

    #[test]
    fn a_hit_rereads_the_entries_and_follows_a_changed_table() {
        let mem = RefCell::new(tables(0x9000));
        let reads = Cell::new(0);
        let read = |a: u64| {
            reads.set(reads.get() + 1);
            Some(mem.borrow().get(&a).copied().unwrap_or(0))
        };
        let mut memo = WalkMemo::default();
        let la = 0x40_0123;
        assert_eq!(
            translate_memo(read, &regs(), la, FETCH, &mut memo),
            Ok(0x9123)
        );
        assert_eq!(
            translate_memo(read, &regs(), la + 1, FETCH, &mut memo),
            Ok(0x9124)
        );
        // The guest remaps the page in place (same CR3, no exit): seen.
        mem.borrow_mut().insert(0x4000, 0xa000 | 7);
        assert_eq!(
            translate_memo(read, &regs(), la, FETCH, &mut memo),
            Ok(0xa123)
        );
        // ... or unmaps it: the walk's #PF, not the remembered page.
        mem.borrow_mut().insert(0x4000, 0);
        assert!(translate_memo(read, &regs(), la, FETCH, &mut memo).is_err());
        assert!(reads.get() > 0);
    }

    #[test]
    fn registers_access_and_page_are_part_of_the_key() {
        let mem = tables(0x9000);
        let read = |a: u64| Some(mem.get(&a).copied().unwrap_or(0));
        let mut memo = WalkMemo::default();
        assert!(translate_memo(read, &regs(), 0x40_0000, FETCH, &mut memo).is_ok());
        // A user fetch of a supervisor page? The tables say user (bit 2),
        // so take away U at the PTE through another CR3 instead: a
        // different CR3 must walk again and fault.
        let other = PagingRegs {
            cr3: 0x5000,
            ..regs()
        };
        assert!(translate_memo(read, &other, 0x40_0000, FETCH, &mut memo).is_err());
        // Another page of the same table is not the remembered one.
        assert!(translate_memo(read, &regs(), 0x40_1000, FETCH, &mut memo).is_err());
    }

    /// RAM as words for lookup_in_ram, from the tables' map.
    fn words(mem: &BTreeMap<u64, u64>) -> Vec<u64> {
        let mut ram = vec![0u64; 0x10_000 / 8];
        for (&at, &v) in mem {
            ram[(at / 8) as usize] = v;
        }
        ram
    }

    #[test]
    fn lookup_in_ram_rereads_in_place() {
        let mut mem = tables(0x9000);
        let mut memo = WalkMemo::default();
        let read = |m: &BTreeMap<u64, u64>, a: u64| Some(m.get(&a).copied().unwrap_or(0));
        assert_eq!(
            lookup_in_ram(&memo, &words(&mem), &regs(), 0x40_0123, FETCH),
            None,
            "nothing remembered yet"
        );
        let m = mem.clone();
        assert!(translate_memo(|a| read(&m, a), &regs(), 0x40_0000, FETCH, &mut memo).is_ok());
        assert_eq!(
            lookup_in_ram(&memo, &words(&mem), &regs(), 0x40_0123, FETCH),
            Some(0x9123)
        );
        // Another access kind or registers: not this walk.
        assert_eq!(
            lookup_in_ram(&memo, &words(&mem), &regs(), 0x40_0123, Access::default()),
            None
        );
        // The PTE changed in place: a miss, never the old page.
        mem.insert(0x4000, 0xa000 | 7);
        assert_eq!(
            lookup_in_ram(&memo, &words(&mem), &regs(), 0x40_0123, FETCH),
            None
        );
        // RAM too small for the tables: a miss.
        assert_eq!(
            lookup_in_ram(&memo, &words(&mem)[..0x4000 / 8], &regs(), 0x40_0123, FETCH),
            None
        );
    }

    #[test]
    fn unaligned_reads_miss_in_ram() {
        // A remembered read at an address that is not 8-byte aligned (no
        // walk makes one) must not be answered from the word around it.
        let mut memo = WalkMemo::default();
        let key = Key::new(&regs(), 0x40_0000, FETCH);
        memo.entries[0] = Entry {
            key,
            pa_page: 0x9000,
            reads: [(0x1004, 0), (0, 0), (0, 0), (0, 0)],
            n: 1,
        };
        let ram = vec![0u64; 0x1000];
        assert_eq!(lookup_in_ram(&memo, &ram, &regs(), 0x40_0000, FETCH), None);
        memo.entries[0].reads[0].0 = 0x1000;
        assert_eq!(
            lookup_in_ram(&memo, &ram, &regs(), 0x40_0000, FETCH),
            Some(0x9000)
        );
    }

    /// A walk done again after a table change replaces the stale walk of
    /// the same key (keys stay unique), so the next lookup hits.
    #[test]
    fn a_new_walk_replaces_the_stale_one() {
        let mut mem = tables(0x9000);
        let mut memo = WalkMemo::default();
        let walk = |m: &BTreeMap<u64, u64>, memo: &mut WalkMemo| {
            let read = |a: u64| Some(m.get(&a).copied().unwrap_or(0));
            translate_memo(read, &regs(), 0x40_0000, FETCH, memo)
        };
        assert_eq!(walk(&mem, &mut memo), Ok(0x9000));
        mem.insert(0x4000, 0xa000 | 7);
        assert_eq!(walk(&mem, &mut memo), Ok(0xa000));
        assert_eq!(memo.entries.iter().filter(|e| e.key.flags != 0).count(), 1);
        assert_eq!(
            lookup_in_ram(&memo, &words(&mem), &regs(), 0x40_0000, FETCH),
            Some(0xa000)
        );
    }

    /// Whatever the memo holds, its answers equal a full walk's.
    #[test]
    fn equals_the_full_walk() {
        let mut mem = tables(0x9000);
        let mut memo = WalkMemo::default();
        for round in 0..6u64 {
            if round % 2 == 1 {
                mem.insert(0x4000, (0x9000 + round * 0x1000) | 7);
            }
            let read = |a: u64| Some(mem.get(&a).copied().unwrap_or(0));
            for la in [0x40_0000, 0x40_0fff, 0x40_1000, 0x80_0000] {
                for access in [FETCH, Access::default()] {
                    assert_eq!(
                        translate_memo(read, &regs(), la, access, &mut memo),
                        translate_mode(read, &regs(), la, access),
                        "round {round} la {la:#x}"
                    );
                }
            }
        }
    }
}
