//! Bit-array helpers shared by the MSR and I/O permission maps.

/// ORs `src` into `dst`: afterwards `dst` intercepts an access if either
/// map did. This is the map to run a nested guest with: L0 must see every
/// access L1 wants to intercept (to reflect it) and every access L0 itself
/// intercepts. Only meaningful when L1 enables the matching intercept
/// (MSR_PROT / IOIO_PROT); if it does not, use L0's map alone. Panics if
/// the lengths differ.
pub fn union_into(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len(), "permission maps differ in size");
    for (d, s) in dst.iter_mut().zip(src) {
        *d |= *s;
    }
}

/// Bit `bit` of a little-endian bit array.
pub(crate) const fn get(map: &[u8], bit: usize) -> bool {
    map[bit / 8] & (1 << (bit % 8)) != 0
}

/// Sets or clears bit `bit` of a little-endian bit array.
pub(crate) fn put(map: &mut [u8], bit: usize, value: bool) {
    let mask = 1 << (bit % 8);
    if value {
        map[bit / 8] |= mask;
    } else {
        map[bit / 8] &= !mask;
    }
}
