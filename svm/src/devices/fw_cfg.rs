//! QEMU's firmware configuration device on the legacy x86 I/O ports
//! (docs/specs/fw_cfg.rst in QEMU): a 16-bit write to 0x510 selects an item
//! and rewinds it, each 1-byte read from 0x511 (or 0x510) returns the next
//! byte of the item, then 0 past its end. As in QEMU's combined port, a
//! 16-bit write is a select only at 0x510; other sizes and offsets are
//! invalid (reads all-ones, writes dropped). No DMA: the ID says so.
//!
//! kvm-unit-tests reads its CPU count, RAM size and key 0x11 from here;
//! without the CPU count it waits forever for CPUs that never come.

/// Selector port.
pub const SELECTOR_PORT: u16 = 0x510;
/// Data port.
pub const DATA_PORT: u16 = 0x511;
/// Ports covered.
pub const SIZE: u16 = 2;

/// Item keys (QEMU include/standard-headers/linux/qemu_fw_cfg.h).
pub mod key {
    /// "QEMU".
    pub const SIGNATURE: u16 = 0x00;
    /// Feature bits: 1 = traditional interface, 2 = DMA.
    pub const ID: u16 = 0x01;
    /// RAM size in bytes, u64.
    pub const RAM_SIZE: u16 = 0x03;
    /// Boot CPU count, u16.
    pub const NB_CPUS: u16 = 0x05;
    /// Possible CPU count, u16.
    pub const MAX_CPUS: u16 = 0x0F;
    /// QEMU's `FW_CFG_KERNEL_DATA`; kvm-unit-tests reads it as
    /// `FW_CFG_MAX_RAM` (u64, 0 = no limit). Without `-kernel` data QEMU's
    /// item is empty and reads 0, so it is 0 here.
    pub const MAX_RAM: u16 = 0x11;
}

/// What the platform reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FwCfgConfig {
    /// Number of vCPUs.
    pub cpus: u16,
    /// Guest RAM in bytes.
    pub ram_size: u64,
}

/// The device: the selected item and the read position in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FwCfg {
    config: FwCfgConfig,
    selected: u16,
    offset: u32,
}

/// An item's bytes; the longest is u64.
struct Item {
    bytes: [u8; 8],
    len: usize,
}

impl Item {
    fn new(src: &[u8]) -> Self {
        let mut bytes = [0; 8];
        bytes[..src.len()].copy_from_slice(src);
        Self {
            bytes,
            len: src.len(),
        }
    }
}

impl FwCfg {
    /// A device describing `config`, signature selected.
    pub const fn new(config: FwCfgConfig) -> Self {
        Self {
            config,
            selected: key::SIGNATURE,
            offset: 0,
        }
    }

    /// The selected key.
    pub fn selected(&self) -> u16 {
        self.selected
    }

    fn item(&self, key: u16) -> Item {
        match key {
            key::SIGNATURE => Item::new(b"QEMU"),
            key::ID => Item::new(&1u32.to_le_bytes()),
            key::RAM_SIZE => Item::new(&self.config.ram_size.to_le_bytes()),
            key::NB_CPUS | key::MAX_CPUS => Item::new(&self.config.cpus.to_le_bytes()),
            key::MAX_RAM => Item::new(&0u64.to_le_bytes()),
            _ => Item::new(&[]),
        }
    }

    /// Selects `key` and rewinds to its first byte.
    pub fn select(&mut self, key: u16) {
        self.selected = key;
        self.offset = 0;
    }

    /// The next data byte (0 past the end or for an unknown key).
    pub fn read_data(&mut self) -> u8 {
        let item = self.item(self.selected);
        let i = self.offset as usize;
        self.offset = self.offset.saturating_add(1);
        if i < item.len {
            item.bytes[i]
        } else {
            0
        }
    }

    /// A read of `size` bytes at `offset` (0 or 1) from [`SELECTOR_PORT`].
    pub fn read(&mut self, _offset: u16, size: u8) -> u32 {
        if size == 1 {
            u32::from(self.read_data())
        } else {
            super::ones(size)
        }
    }

    /// A write of `size` bytes at `offset` from [`SELECTOR_PORT`]: a 16-bit
    /// write at 0 selects; data writes (the legacy write channel, long gone
    /// from QEMU) and other forms are dropped.
    pub fn write(&mut self, offset: u16, size: u8, value: u32) {
        if offset == 0 && size == 2 {
            self.select(value as u16);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    const CFG: FwCfgConfig = FwCfgConfig {
        cpus: 2,
        ram_size: 256 << 20,
    };

    /// Selects `key` through the port and reads `n` bytes from 0x511.
    fn fetch(d: &mut FwCfg, key: u16, n: usize) -> Vec<u8> {
        d.write(0, 2, u32::from(key));
        (0..n).map(|_| d.read(1, 1) as u8).collect()
    }

    #[test]
    fn signature_and_id() {
        let mut d = FwCfg::new(CFG);
        assert_eq!(fetch(&mut d, key::SIGNATURE, 4), b"QEMU");
        assert_eq!(fetch(&mut d, key::ID, 4), [1, 0, 0, 0]);
    }

    #[test]
    fn cpu_count_and_ram_size_little_endian() {
        let mut d = FwCfg::new(FwCfgConfig {
            cpus: 0x0102,
            ram_size: 0x0000_0001_2345_6000,
        });
        assert_eq!(fetch(&mut d, key::NB_CPUS, 2), [0x02, 0x01]);
        assert_eq!(fetch(&mut d, key::MAX_CPUS, 2), [0x02, 0x01]);
        assert_eq!(
            fetch(&mut d, key::RAM_SIZE, 8),
            0x0000_0001_2345_6000u64.to_le_bytes()
        );
    }

    #[test]
    fn max_ram_is_zero() {
        let mut d = FwCfg::new(CFG);
        assert_eq!(fetch(&mut d, key::MAX_RAM, 8), [0; 8]);
    }

    #[test]
    fn unknown_keys_and_reads_past_the_end_are_zero() {
        let mut d = FwCfg::new(CFG);
        assert_eq!(fetch(&mut d, 0x19, 4), [0; 4]);
        assert_eq!(fetch(&mut d, 0x8003, 8), [0; 8]); // arch key, not RAM_SIZE
        assert_eq!(fetch(&mut d, key::NB_CPUS, 4), [2, 0, 0, 0]);
    }

    #[test]
    fn select_rewinds() {
        let mut d = FwCfg::new(CFG);
        assert_eq!(fetch(&mut d, key::SIGNATURE, 2), b"QE");
        assert_eq!(d.read(1, 1), u32::from(b'M'));
        assert_eq!(fetch(&mut d, key::SIGNATURE, 4), b"QEMU");
    }

    #[test]
    fn offset_saturates_instead_of_wrapping() {
        let mut d = FwCfg::new(CFG);
        d.select(key::SIGNATURE);
        d.offset = u32::MAX - 1;
        for _ in 0..4 {
            assert_eq!(d.read_data(), 0);
        }
    }

    #[test]
    fn only_a_16_bit_write_at_the_selector_selects() {
        let mut d = FwCfg::new(CFG);
        d.write(0, 2, u32::from(key::NB_CPUS));
        d.write(0, 1, u32::from(key::RAM_SIZE));
        d.write(1, 2, u32::from(key::RAM_SIZE));
        d.write(0, 4, u32::from(key::RAM_SIZE));
        assert_eq!(d.selected(), key::NB_CPUS);
        // The byte writes were data writes: the position did not move.
        assert_eq!(d.read(1, 1), 2);
    }

    #[test]
    fn wide_reads_are_invalid_and_do_not_advance() {
        let mut d = FwCfg::new(CFG);
        d.select(key::SIGNATURE);
        assert_eq!(d.read(1, 2), 0xFFFF);
        assert_eq!(d.read(0, 4), 0xFFFF_FFFF);
        assert_eq!(d.read(0, 1), u32::from(b'Q')); // 0x510 reads data too
    }
}
