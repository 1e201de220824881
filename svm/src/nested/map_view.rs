//! L1's permission maps as L0 reads them: wherever vmcb12 puts them below
//! MAXPHYADDR, inside L1's RAM or not. Bytes outside RAM read as all-ones,
//! as reads of unbacked physical memory do on hardware, so there the map
//! intercepts everything (APM 15.10/15.11 only require the map to end
//! below MAXPHYADDR, 15.5.1).

use crate::iopm::IOPM_SIZE;
use crate::msrpm::{self, MSRPM_SIZE};

/// An `N`-byte map at some L1-physical base: its first `present.len()`
/// bytes are in RAM, the rest (up to `N`) are not and read as 0xFF.
#[derive(Clone, Copy, Debug)]
pub struct MapView<'a, const N: usize> {
    present: &'a [u8],
}

/// L1's MSR permission map.
pub type MsrpmView<'a> = MapView<'a, MSRPM_SIZE>;
/// L1's I/O permission map.
pub type IopmView<'a> = MapView<'a, IOPM_SIZE>;

impl<'a, const N: usize> MapView<'a, N> {
    /// The map at L1-physical `base` when L1's RAM is `ram`
    /// (L1-physical `[0, ram.len())`). RAM starts at 0, so the part in RAM
    /// is a prefix of the map.
    pub fn in_ram(ram: &'a [u8], base: u64) -> Self {
        let start = usize::try_from(base).unwrap_or(usize::MAX).min(ram.len());
        let end = start.saturating_add(N).min(ram.len());
        Self {
            present: &ram[start..end],
        }
    }

    /// A map wholly in memory.
    pub fn full(map: &'a [u8; N]) -> Self {
        Self { present: map }
    }

    /// A map wholly outside memory (all-ones).
    pub const fn unbacked() -> Self {
        Self { present: &[] }
    }

    /// How many of the map's bytes are in RAM.
    pub fn bytes_in_ram(&self) -> usize {
        self.present.len()
    }

    /// Byte `i` (0xFF outside RAM or past `N`).
    pub fn byte(&self, i: usize) -> u8 {
        match i < N {
            true => self.present.get(i).copied().unwrap_or(0xFF),
            false => 0xFF,
        }
    }

    /// Bit `n` of the map, bit 0 of byte 0 first.
    pub fn bit(&self, n: usize) -> bool {
        self.byte(n / 8) & (1 << (n % 8)) != 0
    }
}

impl<'a, const N: usize> From<&'a [u8; N]> for MapView<'a, N> {
    fn from(map: &'a [u8; N]) -> Self {
        Self::full(map)
    }
}

/// Whether RDMSR of `msr` exits under L1's map (always for MSRs outside
/// the map's ranges, APM 15.11).
pub fn msr_reads_intercepted(map: &MsrpmView<'_>, msr: u32) -> bool {
    match msrpm::bit_position(msr) {
        Some((byte, bit)) => map.byte(byte) & (1 << bit) != 0,
        None => true,
    }
}

/// Whether WRMSR of `msr` exits under L1's map.
pub fn msr_writes_intercepted(map: &MsrpmView<'_>, msr: u32) -> bool {
    match msrpm::bit_position(msr) {
        Some((byte, bit)) => map.byte(byte) & (1 << (bit + 1)) != 0,
        None => true,
    }
}

/// Whether an access of `size` bytes at `port` exits under L1's map: any
/// of the bits port..port+size-1 set (APM 15.10.2). `size` above 4 is
/// treated as 4.
pub fn io_intercepted(map: &IopmView<'_>, port: u16, size: u8) -> bool {
    let first = usize::from(port);
    (first..first + usize::from(size.min(4))).any(|n| map.bit(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iopm;
    use proptest::prelude::*;
    use std::vec;

    const FS_BASE: u32 = 0xC000_0100;

    #[test]
    fn outside_ram_reads_all_ones() {
        let ram = vec![0u8; 0x4000];
        // Wholly inside: zeros, then 0xFF past N.
        let v = MapView::<0x2000>::in_ram(&ram, 0x1000);
        assert_eq!(v.bytes_in_ram(), 0x2000);
        assert_eq!((v.byte(0), v.byte(0x1FFF), v.byte(0x2000)), (0, 0, 0xFF));
        // Straddling the end: the first 0x1000 bytes in RAM.
        let v = MapView::<0x2000>::in_ram(&ram, 0x3000);
        assert_eq!(v.bytes_in_ram(), 0x1000);
        assert_eq!((v.byte(0xFFF), v.byte(0x1000)), (0, 0xFF));
        // Wholly outside, and far beyond (no overflow).
        for base in [0x4000, 0x10_0000, u64::MAX - 1, u64::MAX] {
            let v = MapView::<0x2000>::in_ram(&ram, base);
            assert_eq!(v.bytes_in_ram(), 0, "{base:#x}");
            assert!((0..0x2000).all(|i| v.byte(i) == 0xFF));
        }
    }

    #[test]
    fn msr_bits_outside_ram_intercept() {
        let ram = vec![0u8; MSRPM_SIZE];
        let inside = MsrpmView::in_ram(&ram, 0);
        assert!(!msr_reads_intercepted(&inside, FS_BASE));
        assert!(!msr_writes_intercepted(&inside, FS_BASE));
        // Half of the map in RAM: FS_BASE (byte 0x840) is, the C001_xxxx
        // range (bytes 0x1000 on) is not.
        let half = MsrpmView::in_ram(&ram, 0x1000);
        assert_eq!(half.bytes_in_ram(), 0x1000);
        assert!(!msr_reads_intercepted(&half, FS_BASE));
        assert!(msr_reads_intercepted(&half, 0xC001_0000));
        assert!(msr_writes_intercepted(&half, 0xC001_0000));
        let outside = MsrpmView::unbacked();
        assert!(msr_reads_intercepted(&outside, FS_BASE));
        assert!(msr_writes_intercepted(&outside, FS_BASE));
        // Uncovered MSRs always exit.
        assert!(msr_reads_intercepted(&inside, 0x4000_0000));
    }

    #[test]
    fn io_bits_outside_ram_intercept() {
        let ram = vec![0u8; IOPM_SIZE];
        let inside = IopmView::in_ram(&ram, 0);
        assert!(!io_intercepted(&inside, 0x80, 1));
        // Two of three pages in RAM: ports 0x0-0xFFFF are, the wrap bits
        // are not.
        let two = IopmView::in_ram(&ram, 0x1000);
        assert!(!io_intercepted(&two, 0xFFFF, 1));
        assert!(io_intercepted(&two, 0xFFFF, 2));
        assert!(io_intercepted(&IopmView::unbacked(), 0x80, 1));
    }

    proptest! {
        /// Inside RAM, the view answers exactly as the array functions.
        #[test]
        fn agrees_with_the_array_functions(bytes in proptest::collection::vec(any::<u8>(), IOPM_SIZE), msr in any::<u32>(), port in any::<u16>(), size in 1u8..=4) {
            let io: &[u8; IOPM_SIZE] = bytes[..].try_into().unwrap();
            let m: &[u8; MSRPM_SIZE] = bytes[..MSRPM_SIZE].try_into().unwrap();
            let msr = if msr % 2 == 0 { 0xC000_0000 | (msr & 0x1FFF) } else { msr };
            prop_assert_eq!(msr_reads_intercepted(&m.into(), msr), msrpm::reads_intercepted(m, msr));
            prop_assert_eq!(msr_writes_intercepted(&m.into(), msr), msrpm::writes_intercepted(m, msr));
            prop_assert_eq!(io_intercepted(&io.into(), port, size), iopm::is_intercepted(io, port, size));
        }
    }
}
