//! Ports nobody owns: reads return all-ones of the access size (a floating
//! ISA bus), writes are dropped. kvm-unit-tests' IOIO subtests probe such
//! ports from L2 (0x0, 0x5000, 0x9000, around 0x8000 and 0xFFFF).

use super::ones;

/// Value read from an unowned port for an access of `size` bytes.
pub fn read(size: u8) -> u32 {
    ones(size)
}

/// A write to an unowned port: ignored (here for symmetry, so callers
/// route every access somewhere).
pub fn write(_size: u8, _value: u32) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_all_ones_of_the_size() {
        assert_eq!(read(1), 0xFF);
        assert_eq!(read(2), 0xFFFF);
        assert_eq!(read(4), 0xFFFF_FFFF);
    }

    #[test]
    #[should_panic]
    fn rejects_odd_sizes() {
        read(3);
    }

    #[test]
    fn writes_change_nothing() {
        write(4, 0x1234_5678);
        assert_eq!(read(4), 0xFFFF_FFFF);
    }
}
