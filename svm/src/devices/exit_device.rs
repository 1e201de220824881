//! QEMU's `isa-debug-exit` (`-device isa-debug-exit,iobase=0xf4,iosize=4`):
//! any write of value C to its ports ends QEMU with status `(C << 1) | 1`,
//! so a guest's "0 = pass" can never look like QEMU's own success. Reads
//! return 0, as in QEMU's hw/misc/debugexit.c.

use super::WriteEffect;

/// First port (kvm-unit-tests' `iobase`).
pub const BASE: u16 = 0xF4;
/// Number of ports (`iosize`).
pub const SIZE: u16 = 4;

/// The QEMU exit status for a write of `value` (already cut to the access
/// size by the caller). The process status is the low 8 bits.
pub fn status(value: u32) -> u32 {
    (value << 1) | 1
}

/// The exit device; stateless, the struct keeps the device API uniform.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitDevice;

impl ExitDevice {
    /// Read at `offset` from [`BASE`]: always 0 (QEMU's `debug_exit_read`).
    pub fn read(&self, _offset: u16, _size: u8) -> u32 {
        0
    }

    /// Write of `value` (`size` bytes) at any offset: requests the exit.
    pub fn write(&mut self, _offset: u16, size: u8, value: u32) -> WriteEffect {
        let value = value & super::ones(size);
        WriteEffect {
            output: None,
            exit: Some(status(value)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_unit_tests_codes() {
        // 0 = all passed -> 1, 1 = failures -> 3, 38 -> 77 (skip), 63 -> 127 (abort).
        for (code, want) in [(0, 1), (1, 3), (38, 77), (63, 127)] {
            let e = ExitDevice.write(0, 4, code);
            assert_eq!(e.exit, Some(want));
            assert_eq!(e.output, None);
        }
    }

    #[test]
    fn every_size_and_offset_exits_with_the_value_cut_to_size() {
        let mut d = ExitDevice;
        assert_eq!(d.write(0, 1, 0x1_02).exit, Some(5));
        assert_eq!(d.write(1, 2, 0x1_0003).exit, Some(7));
        assert_eq!(d.write(3, 4, 0x8000_0001).exit, Some(3));
    }

    #[test]
    fn reads_zero() {
        for size in [1, 2, 4] {
            assert_eq!(ExitDevice.read(0, size), 0);
        }
    }
}
