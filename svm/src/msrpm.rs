//! The MSR permission map (APM 15.11, Table 15-8): 8 KiB, two bits per MSR
//! (low bit: intercept RDMSR, high bit: intercept WRMSR), covering three
//! ranges of 8K MSRs:
//!
//! | map bytes     | MSRs                    |
//! |---------------|-------------------------|
//! | 0x000-0x7FF   | 0000_0000 - 0000_1FFF   |
//! | 0x800-0xFFF   | C000_0000 - C000_1FFF   |
//! | 0x1000-0x17FF | C001_0000 - C001_1FFF   |
//! | 0x1800-0x1FFF | reserved                |
//!
//! With MSR_PROT set, an MSR outside the ranges is always intercepted.
//! The free functions work on any 8 KiB byte array (e.g. a nested guest's
//! map read from its memory); [`MsrPermissionMap`] is the page-aligned
//! owned version for VMCB.MSRPM_BASE_PA.

use crate::bitmap;
pub use crate::bitmap::union_into;

/// Size of the MSR permission map in bytes.
pub const MSRPM_SIZE: usize = 8192;

/// First MSR and map byte offset of each covered range.
const RANGES: [(u32, usize); 3] = [
    (0x0000_0000, 0x0000),
    (0xC000_0000, 0x0800),
    (0xC001_0000, 0x1000),
];
/// MSRs per range.
const RANGE_LEN: u32 = 0x2000;

/// The MSR is outside the map, so it cannot be let through: with MSR_PROT
/// every access to it exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MsrNotCovered(pub u32);

/// Where `msr`'s read-intercept bit lives: `(byte offset, bit in byte)`.
/// The write-intercept bit is the next bit (`bit + 1`, same byte). `None`
/// for MSRs the map does not cover.
pub const fn bit_position(msr: u32) -> Option<(usize, u8)> {
    let mut i = 0;
    while i < RANGES.len() {
        let (first, base) = RANGES[i];
        if msr >= first && msr - first < RANGE_LEN {
            let index = (msr - first) as usize;
            return Some((base + index / 4, (2 * (index % 4)) as u8));
        }
        i += 1;
    }
    None
}

/// Whether RDMSR of `msr` exits under `map` (always, for uncovered MSRs).
pub fn reads_intercepted(map: &[u8; MSRPM_SIZE], msr: u32) -> bool {
    match bit_position(msr) {
        Some((byte, bit)) => map[byte] & (1 << bit) != 0,
        None => true,
    }
}

/// Whether WRMSR of `msr` exits under `map` (always, for uncovered MSRs).
pub fn writes_intercepted(map: &[u8; MSRPM_SIZE], msr: u32) -> bool {
    match bit_position(msr) {
        Some((byte, bit)) => map[byte] & (1 << (bit + 1)) != 0,
        None => true,
    }
}

/// Sets or clears the read (`offset` 0) or write (`offset` 1) bit.
fn set_bit(
    map: &mut [u8; MSRPM_SIZE],
    msr: u32,
    offset: u8,
    intercept: bool,
) -> Result<(), MsrNotCovered> {
    match bit_position(msr) {
        Some((byte, bit)) => {
            bitmap::put(map, 8 * byte + usize::from(bit + offset), intercept);
            Ok(())
        }
        // Uncovered MSRs are intercepted anyway: asking for that is fine.
        None if intercept => Ok(()),
        None => Err(MsrNotCovered(msr)),
    }
}

/// Sets whether RDMSR of `msr` exits. Fails only when asked to let an
/// uncovered MSR through.
pub fn set_read_intercept(
    map: &mut [u8; MSRPM_SIZE],
    msr: u32,
    intercept: bool,
) -> Result<(), MsrNotCovered> {
    set_bit(map, msr, 0, intercept)
}

/// Sets whether WRMSR of `msr` exits. Fails only when asked to let an
/// uncovered MSR through.
pub fn set_write_intercept(
    map: &mut [u8; MSRPM_SIZE],
    msr: u32,
    intercept: bool,
) -> Result<(), MsrNotCovered> {
    set_bit(map, msr, 1, intercept)
}

/// An MSR permission map, page aligned as VMRUN requires.
#[derive(Clone, PartialEq, Eq)]
#[repr(C, align(4096))]
pub struct MsrPermissionMap(pub [u8; MSRPM_SIZE]);

impl MsrPermissionMap {
    /// A map that intercepts every access.
    pub const fn intercept_all() -> Self {
        Self([0xFF; MSRPM_SIZE])
    }

    /// A map that lets every covered MSR through.
    pub const fn allow_all() -> Self {
        Self([0; MSRPM_SIZE])
    }

    /// Intercepts everything from now on.
    pub fn set_intercept_all(&mut self) {
        self.0.fill(0xFF);
    }

    /// Lets every covered MSR through from now on.
    pub fn set_allow_all(&mut self) {
        self.0.fill(0);
    }

    /// See [`set_read_intercept`].
    pub fn set_read_intercept(&mut self, msr: u32, intercept: bool) -> Result<(), MsrNotCovered> {
        set_read_intercept(&mut self.0, msr, intercept)
    }

    /// See [`set_write_intercept`].
    pub fn set_write_intercept(&mut self, msr: u32, intercept: bool) -> Result<(), MsrNotCovered> {
        set_write_intercept(&mut self.0, msr, intercept)
    }

    /// See [`reads_intercepted`].
    pub fn reads_intercepted(&self, msr: u32) -> bool {
        reads_intercepted(&self.0, msr)
    }

    /// See [`writes_intercepted`].
    pub fn writes_intercepted(&self, msr: u32) -> bool {
        writes_intercepted(&self.0, msr)
    }

    /// ORs another map into this one; see [`union_into`].
    pub fn union_with(&mut self, other: &[u8; MSRPM_SIZE]) {
        union_into(&mut self.0, other);
    }
}

impl Default for MsrPermissionMap {
    /// Intercept everything: the safe starting point.
    fn default() -> Self {
        Self::intercept_all()
    }
}

impl core::fmt::Debug for MsrPermissionMap {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let set = self.0.iter().map(|b| b.count_ones()).sum::<u32>();
        write!(f, "MsrPermissionMap({set} of {} bits set)", MSRPM_SIZE * 8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference model straight from Table 15-8: the map is one bit array;
    /// MSR `m` of a range starting at byte `b` owns bits `8b + 2(m - first)`
    /// (read) and the one after (write).
    fn reference_bit(msr: u32) -> Option<usize> {
        let (first, byte) = match msr {
            0x0000_0000..=0x0000_1FFF => (0x0000_0000, 0x000),
            0xC000_0000..=0xC000_1FFF => (0xC000_0000, 0x800),
            0xC001_0000..=0xC001_1FFF => (0xC001_0000, 0x1000),
            _ => return None,
        };
        Some(8 * byte + 2 * (msr - first) as usize)
    }

    fn get(map: &[u8; MSRPM_SIZE], bit: usize) -> bool {
        map[bit / 8] & (1 << (bit % 8)) != 0
    }

    #[test]
    fn range_edges() {
        // (MSR, byte, read bit) worked out by hand from Table 15-8.
        let cases = [
            (0x0000_0000, 0x000, 0),
            (0x0000_0001, 0x000, 2),
            (0x0000_0003, 0x000, 6),
            (0x0000_0004, 0x001, 0),
            (0x0000_0010, 0x004, 0), // IA32_TSC
            (0x0000_1FFF, 0x7FF, 6),
            (0xC000_0000, 0x800, 0),
            (0xC000_0080, 0x820, 0), // EFER
            (0xC000_1FFF, 0xFFF, 6),
            (0xC001_0000, 0x1000, 0),
            (0xC001_0117, 0x1045, 6), // VM_HSAVE_PA
            (0xC001_1FFF, 0x17FF, 6),
        ];
        for (msr, byte, bit) in cases {
            assert_eq!(bit_position(msr), Some((byte, bit)), "MSR {msr:#x}");
        }
        for msr in [
            0x0000_2000,
            0x4000_0000,
            0xBFFF_FFFF,
            0xC000_2000,
            0xC000_FFFF,
            0xC001_2000,
            0xFFFF_FFFF,
        ] {
            assert_eq!(bit_position(msr), None, "MSR {msr:#x}");
        }
    }

    #[test]
    fn uncovered_msrs_are_always_intercepted() {
        let mut map = MsrPermissionMap::allow_all();
        for msr in [0x2000, 0xC000_2000, 0xC001_2000, 0x4000_0000] {
            assert!(map.reads_intercepted(msr));
            assert!(map.writes_intercepted(msr));
            assert_eq!(map.set_read_intercept(msr, true), Ok(()));
            assert_eq!(map.set_read_intercept(msr, false), Err(MsrNotCovered(msr)));
            assert_eq!(map.set_write_intercept(msr, false), Err(MsrNotCovered(msr)));
        }
        assert!(
            map.0.iter().all(|&b| b == 0),
            "uncovered MSRs touched the map"
        );
    }

    #[test]
    fn every_covered_msr_matches_the_reference_model() {
        let covered = (0x0000_0000..0x0000_2000)
            .chain(0xC000_0000..0xC000_2000)
            .chain(0xC001_0000..0xC001_2000);
        for msr in covered {
            let bit = reference_bit(msr).unwrap();
            let mut map = MsrPermissionMap::allow_all();
            map.set_read_intercept(msr, true).unwrap();
            assert!(get(&map.0, bit) && !get(&map.0, bit + 1), "read {msr:#x}");
            assert!(map.reads_intercepted(msr) && !map.writes_intercepted(msr));
            map.set_write_intercept(msr, true).unwrap();
            map.set_read_intercept(msr, false).unwrap();
            assert!(!get(&map.0, bit) && get(&map.0, bit + 1), "write {msr:#x}");
            assert!(!map.reads_intercepted(msr) && map.writes_intercepted(msr));
            let set: u32 = map.0.iter().map(|b| b.count_ones()).sum();
            assert_eq!(set, 1, "only one bit for {msr:#x}");
        }
    }

    #[test]
    fn clearing_one_msr_leaves_neighbours() {
        let mut map = MsrPermissionMap::intercept_all();
        map.set_read_intercept(0xC000_0081, false).unwrap();
        map.set_write_intercept(0xC000_0081, false).unwrap();
        assert!(!map.reads_intercepted(0xC000_0081));
        assert!(map.reads_intercepted(0xC000_0080));
        assert!(map.writes_intercepted(0xC000_0082));
        // STAR is the second MSR of byte 0x820: bits 2 and 3 clear.
        assert_eq!(map.0[0x820], 0b1111_0011);
        map.set_allow_all();
        assert!(!map.reads_intercepted(0x10));
        map.set_intercept_all();
        assert!(map.writes_intercepted(0x10));
    }

    #[test]
    fn union_intercepts_if_either_does() {
        let mut l0 = MsrPermissionMap::allow_all();
        l0.set_write_intercept(0x10, true).unwrap(); // L0 traps TSC writes
        let mut l1 = MsrPermissionMap::allow_all();
        l1.set_read_intercept(0xC000_0080, true).unwrap(); // L1 traps EFER reads
        l1.set_read_intercept(0x10, true).unwrap();

        let mut merged = l0.clone();
        merged.union_with(&l1.0);
        assert!(merged.writes_intercepted(0x10));
        assert!(merged.reads_intercepted(0x10));
        assert!(merged.reads_intercepted(0xC000_0080));
        assert!(!merged.writes_intercepted(0xC000_0080));
        assert!(!merged.reads_intercepted(0xC001_0000));
        for msr in 0xC000_0000..0xC000_2000 {
            assert_eq!(
                merged.reads_intercepted(msr),
                l0.reads_intercepted(msr) || l1.reads_intercepted(msr)
            );
        }
    }

    #[test]
    #[should_panic]
    fn union_rejects_mismatched_sizes() {
        let mut a = [0u8; 16];
        union_into(&mut a, &[0u8; 8]);
    }

    #[test]
    fn map_is_page_aligned() {
        assert_eq!(core::mem::align_of::<MsrPermissionMap>(), 4096);
        assert_eq!(core::mem::size_of::<MsrPermissionMap>(), 8192);
    }
}
