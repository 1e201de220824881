//! The I/O permission map (APM 15.10.1): 12 KiB holding a linear array of
//! 64K + 3 bits, bit n for port n. A set bit intercepts accesses touching
//! that port. An access of n bytes at port p checks bits p..p+n-1, all of
//! them (APM 15.10.2), so a multi-byte access at 0xFFFD-0xFFFF reaches the
//! three extra bits 0x10000-0x10002 at the start of the third page.
//!
//! The free functions work on any 12 KiB byte array (e.g. a nested guest's
//! map); [`IoPermissionMap`] is the page-aligned owned version for
//! VMCB.IOPM_BASE_PA.

use core::ops::RangeInclusive;

use crate::bitmap;
pub use crate::bitmap::union_into;

/// Size of the I/O permission map in bytes (three 4 KiB pages).
pub const IOPM_SIZE: usize = 12 * 1024;

/// Number of meaningful bits: one per port plus three for accesses that
/// run past port 0xFFFF.
pub const IOPM_BITS: usize = 0x1_0000 + 3;

/// Whether an access of `size` bytes (1, 2 or 4) at `port` exits under
/// `map`: true if any of the `size` bits from `port` on is set. Panics if
/// `size` is not 1 to 4.
pub fn is_intercepted(map: &[u8; IOPM_SIZE], port: u16, size: u8) -> bool {
    assert!((1..=4).contains(&size), "I/O accesses are 1 to 4 bytes");
    let first = usize::from(port);
    (first..first + usize::from(size)).any(|bit| bitmap::get(map, bit))
}

/// Sets whether accesses to each port in `ports` exit.
pub fn set_intercept(map: &mut [u8; IOPM_SIZE], ports: RangeInclusive<u16>, intercept: bool) {
    for port in ports {
        bitmap::put(map, usize::from(port), intercept);
    }
}

/// Sets the three bits past port 0xFFFF, which decide whether a 2- or
/// 4-byte access starting at 0xFFFD-0xFFFF exits even when the ports
/// themselves are let through. Setting them is the safe choice: such an
/// access would otherwise reach whatever the platform does with the
/// wrapped-around bytes.
pub fn set_wrap_intercept(map: &mut [u8; IOPM_SIZE], intercept: bool) {
    for bit in 0x1_0000..IOPM_BITS {
        bitmap::put(map, bit, intercept);
    }
}

/// An I/O permission map, page aligned as VMRUN requires.
#[derive(Clone, PartialEq, Eq)]
#[repr(C, align(4096))]
pub struct IoPermissionMap(pub [u8; IOPM_SIZE]);

impl IoPermissionMap {
    /// A map that intercepts every access, wrap-around bits included.
    pub const fn intercept_all() -> Self {
        Self([0xFF; IOPM_SIZE])
    }

    /// A map that lets every access through, wrap-around bits included.
    pub const fn allow_all() -> Self {
        Self([0; IOPM_SIZE])
    }

    /// Intercepts everything from now on.
    pub fn set_intercept_all(&mut self) {
        self.0.fill(0xFF);
    }

    /// Lets everything through from now on.
    pub fn set_allow_all(&mut self) {
        self.0.fill(0);
    }

    /// See [`set_intercept`].
    pub fn set_intercept(&mut self, ports: RangeInclusive<u16>, intercept: bool) {
        set_intercept(&mut self.0, ports, intercept);
    }

    /// See [`set_wrap_intercept`].
    pub fn set_wrap_intercept(&mut self, intercept: bool) {
        set_wrap_intercept(&mut self.0, intercept);
    }

    /// See [`is_intercepted`].
    pub fn is_intercepted(&self, port: u16, size: u8) -> bool {
        is_intercepted(&self.0, port, size)
    }

    /// ORs another map into this one; see [`union_into`].
    pub fn union_with(&mut self, other: &[u8; IOPM_SIZE]) {
        union_into(&mut self.0, other);
    }
}

impl Default for IoPermissionMap {
    /// Intercept everything: the safe starting point.
    fn default() -> Self {
        Self::intercept_all()
    }
}

impl core::fmt::Debug for IoPermissionMap {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let ports = (0..IOPM_BITS).filter(|&b| bitmap::get(&self.0, b)).count();
        write!(f, "IoPermissionMap({ports} of {IOPM_BITS} bits set)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference: the byte and bit of port `p` per APM 15.10.1 ("bit 0 in
    /// the table corresponds to I/O port 0, bit 1 to port 1 and so on").
    fn byte_bit(port: usize) -> (usize, u8) {
        (port / 8, (port % 8) as u8)
    }

    #[test]
    fn single_port_bits() {
        for (port, byte, bit) in [
            (0x0000u16, 0x0000usize, 0u8),
            (0x0007, 0x0000, 7),
            (0x0008, 0x0001, 0),
            (0x0060, 0x000C, 0),
            (0x03F8, 0x007F, 0),
            (0x0CF8, 0x019F, 0),
            (0xFFFF, 0x1FFF, 7),
        ] {
            assert_eq!(byte_bit(usize::from(port)), (byte, bit));
            let mut map = IoPermissionMap::allow_all();
            map.set_intercept(port..=port, true);
            assert_eq!(map.0[byte], 1 << bit, "port {port:#x}");
            let set: u32 = map.0.iter().map(|b| b.count_ones()).sum();
            assert_eq!(set, 1);
            assert!(map.is_intercepted(port, 1));
        }
    }

    #[test]
    fn multi_byte_access_checks_every_byte() {
        let mut map = IoPermissionMap::allow_all();
        map.set_intercept(0x3FB..=0x3FB, true);
        // A dword at 0x3F8 covers 0x3F8-0x3FB: intercepted.
        assert!(map.is_intercepted(0x3F8, 4));
        assert!(map.is_intercepted(0x3FA, 2));
        assert!(map.is_intercepted(0x3FB, 1));
        // Accesses that stop short of 0x3FB, or start after it, are not.
        assert!(!map.is_intercepted(0x3F8, 2));
        assert!(!map.is_intercepted(0x3F8, 1));
        assert!(!map.is_intercepted(0x3FC, 4));
    }

    #[test]
    fn accesses_at_0xffff_reach_the_extra_bits() {
        let mut map = IoPermissionMap::allow_all();
        map.set_wrap_intercept(true);
        // The extra bits live in bits 0-2 of byte 0x2000, third page.
        assert_eq!(map.0[0x2000], 0b0000_0111);
        assert!(map.0[..0x2000].iter().all(|&b| b == 0));
        assert!(!map.is_intercepted(0xFFFF, 1));
        assert!(map.is_intercepted(0xFFFF, 2)); // touches bit 0x10000
        assert!(map.is_intercepted(0xFFFF, 4)); // bits 0x10000-0x10002
        assert!(map.is_intercepted(0xFFFD, 4)); // bits 0xFFFD-0x10000
        assert!(!map.is_intercepted(0xFFFC, 4)); // ends at 0xFFFF
                                                 // A dword at 0xFFFF does not look at ports 0-2.
        let mut map = IoPermissionMap::allow_all();
        map.set_intercept(0..=2, true);
        assert!(!map.is_intercepted(0xFFFF, 4));
        // Port 0xFFFF itself.
        map.set_intercept(0xFFFF..=0xFFFF, true);
        assert!(map.is_intercepted(0xFFFE, 2));
        assert!(map.is_intercepted(0xFFFF, 1));
    }

    #[test]
    fn ranges_and_clearing() {
        let mut map = IoPermissionMap::intercept_all();
        map.set_intercept(0x3F8..=0x3FF, false);
        assert_eq!(map.0[0x7F], 0x00);
        assert_eq!(map.0[0x7E], 0xFF);
        assert!(!map.is_intercepted(0x3F8, 4));
        assert!(map.is_intercepted(0x3F6, 4)); // 0x3F6-0x3F9 includes 0x3F7
        map.set_intercept(0..=0xFFFF, false);
        assert!(map.0[..0x2000].iter().all(|&b| b == 0));
        // The whole-range clear leaves the wrap bits alone.
        assert!(map.is_intercepted(0xFFFF, 2));
        map.set_wrap_intercept(false);
        assert!(!map.is_intercepted(0xFFFF, 4));
    }

    #[test]
    fn every_port_against_the_reference() {
        let mut map = IoPermissionMap::allow_all();
        for port in (0..=0xFFFFu16).step_by(7) {
            map.set_intercept(port..=port, true);
        }
        for port in 0..=0xFFFFu16 {
            let (byte, bit) = byte_bit(usize::from(port));
            let expected = port % 7 == 0;
            assert_eq!(map.0[byte] & (1 << bit) != 0, expected);
            assert_eq!(map.is_intercepted(port, 1), expected, "port {port:#x}");
        }
    }

    #[test]
    fn union_intercepts_if_either_does() {
        let mut l0 = IoPermissionMap::allow_all();
        l0.set_intercept(0x60..=0x64, true);
        let mut l1 = IoPermissionMap::allow_all();
        l1.set_intercept(0x3F8..=0x3FF, true);
        l1.set_wrap_intercept(true);
        let mut merged = l0.clone();
        merged.union_with(&l1.0);
        for port in 0..=0xFFFFu16 {
            for size in [1, 2, 4] {
                assert_eq!(
                    merged.is_intercepted(port, size),
                    l0.is_intercepted(port, size) || l1.is_intercepted(port, size),
                    "port {port:#x} size {size}"
                );
            }
        }
    }

    #[test]
    #[should_panic]
    fn size_zero_is_rejected() {
        let _ = IoPermissionMap::allow_all().is_intercepted(0x80, 0);
    }

    #[test]
    fn map_is_page_aligned() {
        assert_eq!(core::mem::align_of::<IoPermissionMap>(), 4096);
        assert_eq!(core::mem::size_of::<IoPermissionMap>(), 3 * 4096);
    }
}
