//! #VMEXITs counted per exit code, with no map lookup on the hot path: a
//! table indexed by the raw code for every code up to VMGEXIT (0x403), a
//! few slots for anything else (VMEXIT_INVALID, the SEV busy codes, or
//! codes the APM does not define), and a bucket when those run out.

use core::fmt;

/// Codes 0..COMMON are counted in the table.
const COMMON: usize = 0x404;
/// Slots for other codes.
const RARE: usize = 4;

/// Exits per raw exit code.
#[derive(Clone, PartialEq, Eq)]
pub struct ExitCounts {
    common: [u64; COMMON],
    /// (raw code, count); count 0 = free.
    rare: [(u64, u64); RARE],
    /// Exits of other codes once the rare slots are taken.
    overflow: u64,
}

impl ExitCounts {
    /// No exits yet.
    pub const fn new() -> Self {
        Self {
            common: [0; COMMON],
            rare: [(0, 0); RARE],
            overflow: 0,
        }
    }

    /// One more exit with code `raw` (a common code, counted at every
    /// exit, stays inline in the run loop).
    #[inline]
    pub fn add(&mut self, raw: u64) {
        if raw < COMMON as u64 {
            self.common[raw as usize] += 1;
            return;
        }
        self.add_rare(raw);
    }

    #[inline(never)]
    fn add_rare(&mut self, raw: u64) {
        let slot = self
            .rare
            .iter()
            .position(|&(code, n)| n != 0 && code == raw)
            .or_else(|| self.rare.iter().position(|&(_, n)| n == 0));
        match slot {
            Some(i) => self.rare[i] = (raw, self.rare[i].1 + 1),
            None => self.overflow += 1,
        }
    }

    /// Exits with code `raw` (0 for a code counted in the overflow bucket).
    pub fn get(&self, raw: u64) -> u64 {
        if raw < COMMON as u64 {
            return self.common[raw as usize];
        }
        self.rare
            .iter()
            .find(|&&(code, n)| n != 0 && code == raw)
            .map_or(0, |&(_, n)| n)
    }

    /// Exits of every code, the overflow bucket included.
    pub fn total(&self) -> u64 {
        self.iter().map(|(_, n)| n).sum::<u64>() + self.overflow
    }

    /// Exits whose code found no slot.
    pub fn overflow(&self) -> u64 {
        self.overflow
    }

    /// (raw code, count) of every code with exits: the table's in code
    /// order, then the others in the order they first came.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let common = self
            .common
            .iter()
            .enumerate()
            .filter(|&(_, &n)| n != 0)
            .map(|(code, &n)| (code as u64, n));
        common.chain(self.rare.iter().copied().filter(|&(_, n)| n != 0))
    }
}

impl Default for ExitCounts {
    fn default() -> Self {
        Self::new()
    }
}

/// As a map of the codes with exits (hex codes).
impl fmt::Debug for ExitCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (code, n) in self.iter() {
            map.entry(&format_args!("{code:#x}"), &n);
        }
        if self.overflow != 0 {
            map.entry(&"other", &self.overflow);
        }
        map.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;
    use std::vec::Vec;

    #[test]
    fn counts_table_and_rare_codes() {
        let mut c = ExitCounts::new();
        for raw in [
            0x72,
            0x81,
            0x72,
            0x400,
            0x403,
            u64::MAX,
            0xF000_0000,
            u64::MAX,
        ] {
            c.add(raw);
        }
        assert_eq!(c.get(0x72), 2);
        assert_eq!(c.get(0x81), 1);
        assert_eq!(c.get(0x400), 1);
        assert_eq!(c.get(0x403), 1);
        assert_eq!(c.get(u64::MAX), 2);
        assert_eq!(c.get(0xF000_0000), 1);
        assert_eq!(c.get(0x404), 0);
        assert_eq!(c.get(0x7b), 0);
        let all: Vec<_> = c.iter().collect();
        assert_eq!(
            all,
            [
                (0x72, 2),
                (0x81, 1),
                (0x400, 1),
                (0x403, 1),
                (u64::MAX, 2),
                (0xF000_0000, 1)
            ]
        );
        assert_eq!(c.overflow(), 0);
        assert_eq!(c.total(), 8);
    }

    #[test]
    fn codes_beyond_the_rare_slots_go_to_the_overflow() {
        let mut c = ExitCounts::new();
        for raw in 0x1000..0x1000 + RARE as u64 + 2 {
            c.add(raw);
        }
        c.add(0x1000);
        assert_eq!(c.get(0x1000), 2);
        assert_eq!(c.overflow(), 2);
        assert_eq!(c.total(), RARE as u64 + 3);
        assert_eq!(c.iter().count(), RARE);
        assert!(format!("{c:?}").contains("\"other\": 2"));
    }

    #[test]
    fn debug_lists_only_codes_with_exits() {
        let mut c = ExitCounts::new();
        c.add(0x7c);
        assert_eq!(format!("{c:?}"), "{0x7c: 1}");
    }
}
