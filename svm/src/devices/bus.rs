//! The port map of the platform: which device answers each port, and how
//! an access of 1, 2 or 4 bytes is handed over. An access lying wholly in a
//! device that takes wide accesses (exit device, fw_cfg) goes to it as one;
//! any other access is split into byte accesses at consecutive ports, each
//! routed on its own and the read bytes put together little-endian. That
//! is what QEMU does for byte-wide devices (16550, 8259), and it makes an
//! access straddling two devices, or a device and nothing, well defined.
//! Ports past 0xFFFF (a wide access at 0xFFFD-0xFFFF) belong to nobody.

use super::exit_device::{self, ExitDevice};
use super::fw_cfg::{self, FwCfg, FwCfgConfig};
use super::pic::PicPair;
use super::serial::{self, Serial};
use super::{ones, unassigned, WriteEffect};

/// Who answers a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// COM1, register offset.
    Com1(u16),
    /// isa-debug-exit, offset.
    Exit(u16),
    /// fw_cfg, offset from 0x510.
    FwCfg(u16),
    /// One of the 8259s, by port (the pair routes it).
    Pic(u16),
    /// Nobody: all-ones, writes dropped.
    Unassigned,
}

/// The device owning `port` (u32 so the bytes of a wide access past 0xFFFF
/// have a port too).
pub fn owner(port: u32) -> Owner {
    let Ok(port) = u16::try_from(port) else {
        return Owner::Unassigned;
    };
    let within = |base: u16, size: u16| port.wrapping_sub(base) < size;
    if within(serial::COM1_BASE, serial::SIZE) {
        Owner::Com1(port - serial::COM1_BASE)
    } else if within(exit_device::BASE, exit_device::SIZE) {
        Owner::Exit(port - exit_device::BASE)
    } else if within(fw_cfg::SELECTOR_PORT, fw_cfg::SIZE) {
        Owner::FwCfg(port - fw_cfg::SELECTOR_PORT)
    } else if PicPair::owns(port) {
        Owner::Pic(port)
    } else {
        Owner::Unassigned
    }
}

/// Whether the device takes an access of `size` at `offset` as one piece:
/// only wide-capable devices, and only when it ends inside them.
fn whole(owner: Owner, size: u8) -> bool {
    match owner {
        Owner::Exit(off) => off + u16::from(size) <= exit_device::SIZE,
        Owner::FwCfg(off) => off + u16::from(size) <= fw_cfg::SIZE,
        _ => size == 1,
    }
}

/// The platform's port-mapped devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortBus {
    /// COM1.
    pub com1: Serial,
    /// The exit device at 0xF4.
    pub exit: ExitDevice,
    /// fw_cfg at 0x510.
    pub fw_cfg: FwCfg,
    /// The PIC pair.
    pub pic: PicPair,
}

impl PortBus {
    /// A platform with `config` in fw_cfg and every device after reset.
    pub const fn new(config: FwCfgConfig) -> Self {
        Self {
            com1: Serial::new(),
            exit: ExitDevice,
            fw_cfg: FwCfg::new(config),
            pic: PicPair {
                master: super::pic::Pic::new(),
                slave: super::pic::Pic::new(),
            },
        }
    }

    /// An IN of `size` bytes (1, 2 or 4) from `port`; the result has no
    /// bits above the access size. Reads have side effects (fw_cfg
    /// advances), hence `&mut`. Panics on another size.
    pub fn read(&mut self, port: u16, size: u8) -> u32 {
        let mask = ones(size);
        let first = owner(u32::from(port));
        if whole(first, size) {
            return self.read_one(first, size) & mask;
        }
        (0..u32::from(size)).fold(0, |acc, i| {
            let byte = self.read_one(owner(u32::from(port) + i), 1) & 0xFF;
            acc | (byte << (8 * i))
        })
    }

    /// An OUT of the low `size` bytes (1, 2 or 4) of `value` to `port`.
    /// Panics on another size.
    pub fn write(&mut self, port: u16, size: u8, value: u32) -> WriteEffect {
        let value = value & ones(size);
        let first = owner(u32::from(port));
        if whole(first, size) {
            return self.write_one(first, size, value);
        }
        (0..u32::from(size)).fold(WriteEffect::NONE, |acc, i| {
            let byte = (value >> (8 * i)) & 0xFF;
            acc.merge(self.write_one(owner(u32::from(port) + i), 1, byte))
        })
    }

    fn read_one(&mut self, owner: Owner, size: u8) -> u32 {
        match owner {
            Owner::Com1(off) => u32::from(self.com1.read(off)),
            Owner::Exit(off) => self.exit.read(off, size),
            Owner::FwCfg(off) => self.fw_cfg.read(off, size),
            Owner::Pic(port) => u32::from(self.pic.read(port)),
            Owner::Unassigned => unassigned::read(size),
        }
    }

    fn write_one(&mut self, owner: Owner, size: u8, value: u32) -> WriteEffect {
        match owner {
            Owner::Com1(off) => return self.com1.write(off, value as u8),
            Owner::Exit(off) => return self.exit.write(off, size, value),
            Owner::FwCfg(off) => self.fw_cfg.write(off, size, value),
            Owner::Pic(port) => self.pic.write(port, value as u8),
            Owner::Unassigned => unassigned::write(size, value),
        }
        WriteEffect::NONE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::serial::{LSR_TEMT, LSR_THRE};
    use std::vec::Vec;

    const CFG: FwCfgConfig = FwCfgConfig {
        cpus: 1,
        ram_size: 256 << 20,
    };

    #[test]
    fn owners() {
        assert_eq!(owner(0x3F8), Owner::Com1(0));
        assert_eq!(owner(0x3FF), Owner::Com1(7));
        assert_eq!(owner(0x3F7), Owner::Unassigned);
        assert_eq!(owner(0x400), Owner::Unassigned);
        assert_eq!(owner(0xF4), Owner::Exit(0));
        assert_eq!(owner(0xF7), Owner::Exit(3));
        assert_eq!(owner(0xF8), Owner::Unassigned);
        assert_eq!(owner(0x510), Owner::FwCfg(0));
        assert_eq!(owner(0x511), Owner::FwCfg(1));
        assert_eq!(owner(0x512), Owner::Unassigned);
        assert_eq!(owner(0x21), Owner::Pic(0x21));
        assert_eq!(owner(0xA0), Owner::Pic(0xA0));
        for port in [
            0x0, 0x4D0, 0x5000, 0x8000, 0x9000, 0xFFFF, 0x1_0000, 0x1_0002,
        ] {
            assert_eq!(owner(port), Owner::Unassigned, "{port:#x}");
        }
        // Nothing past 0xFFFF aliases a device below it.
        assert_eq!(owner(0x1_03F8), Owner::Unassigned);
    }

    #[test]
    fn com1_output_and_lsr_polling() {
        let mut bus = PortBus::new(CFG);
        let mut out = Vec::new();
        for c in b"ok\n" {
            // A polling guest would spin here forever if THRE were clear.
            assert_ne!(bus.read(0x3FD, 1) & u32::from(LSR_THRE), 0);
            out.extend(bus.write(0x3F8, 1, u32::from(*c)).output);
        }
        assert_eq!(out, b"ok\n");
        assert_eq!(bus.read(0x3FD, 1), u32::from(LSR_THRE | LSR_TEMT));
    }

    #[test]
    fn com1_word_write_splits_into_thr_and_ier() {
        let mut bus = PortBus::new(CFG);
        let e = bus.write(0x3F8, 2, 0x0541);
        assert_eq!(e.output, Some(b'A'));
        assert_eq!(bus.read(0x3F9, 1), 0x05);
        // A word read puts LSR and MSR together.
        assert_eq!(bus.read(0x3FD, 2), 0xB060);
    }

    #[test]
    fn exit_device_every_size() {
        let mut bus = PortBus::new(CFG);
        assert_eq!(bus.write(0xF4, 4, 0).exit, Some(1));
        assert_eq!(bus.write(0xF4, 2, 0x1_0001).exit, Some(3));
        assert_eq!(bus.write(0xF4, 1, 38).exit, Some(77));
        assert_eq!(bus.write(0xF6, 2, 1).exit, Some(3));
        assert_eq!(bus.read(0xF4, 4), 0);
        assert_eq!(bus.write(0xF8, 4, 0), WriteEffect::NONE);
    }

    #[test]
    fn exit_device_straddle_still_exits() {
        let mut bus = PortBus::new(CFG);
        // 0xF6-0xF9: bytes 0xF6 and 0xF7 reach the device, one at a time.
        assert_eq!(bus.write(0xF6, 4, 0x0000_0102).exit, Some(5));
        // 0xF2-0xF5: the device sees 0xF4 = 0x01 first.
        assert_eq!(bus.write(0xF2, 4, 0x0001_0000).exit, Some(3));
        // Read: 0xF2/0xF3 unassigned, 0xF4/0xF5 the device.
        assert_eq!(bus.read(0xF2, 4), 0x0000_FFFF);
    }

    #[test]
    fn fw_cfg_through_the_ports() {
        let mut bus = PortBus::new(FwCfgConfig {
            cpus: 3,
            ram_size: 64 << 20,
        });
        let mut get = |key: u16, n: usize| -> u64 {
            bus.write(0x510, 2, u32::from(key));
            (0..n).fold(0, |acc, i| acc | u64::from(bus.read(0x511, 1)) << (8 * i))
        };
        assert_eq!(get(0x00, 4), u64::from(u32::from_le_bytes(*b"QEMU")));
        assert_eq!(get(0x05, 2), 3);
        assert_eq!(get(0x03, 8), 64 << 20);
        assert_eq!(get(0x11, 8), 0);
        assert_eq!(get(0x1234, 8), 0);
    }

    #[test]
    fn fw_cfg_straddle_is_bytes() {
        let mut bus = PortBus::new(CFG);
        bus.write(0x510, 2, 0x05);
        // A dword at 0x510 leaves the device: byte reads at 0x510 and 0x511
        // (data, advancing) and two unassigned bytes.
        assert_eq!(bus.read(0x510, 4), 0xFFFF_0001);
        // A dword select attempt is two ignored data writes and nothing else.
        bus.write(0x510, 4, 0x03);
        assert_eq!(bus.fw_cfg.selected(), 0x05);
    }

    #[test]
    fn pic_masks() {
        let mut bus = PortBus::new(CFG);
        for (port, v) in [(0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01)] {
            assert_eq!(bus.write(port, 1, v), WriteEffect::NONE);
        }
        bus.write(0x21, 1, 0xFF);
        bus.write(0xA1, 1, 0xFF);
        assert_eq!(bus.read(0x21, 1), 0xFF);
        assert_eq!(bus.read(0xA1, 1), 0xFF);
        // A word read at 0x20: IRR (0) and the mask.
        assert_eq!(bus.read(0x20, 2), 0xFF00);
    }

    #[test]
    fn unassigned_ports_from_kvm_unit_tests() {
        let mut bus = PortBus::new(CFG);
        let before = bus;
        for port in [0x0, 0x5000, 0x9000, 0x4FFF, 0x7FFF, 0x8000, 0xFFFF, 0x4D0] {
            for size in [1, 2, 4] {
                assert_eq!(bus.read(port, size), ones(size), "{port:#x}/{size}");
                assert_eq!(bus.write(port, size, 0x1234_5678), WriteEffect::NONE);
            }
        }
        assert_eq!(bus, before);
    }

    #[test]
    fn access_past_0xffff_does_not_wrap_to_port_0() {
        let mut bus = PortBus::new(CFG);
        bus.write(0x21, 1, 0x00);
        // 0xFFFE-0x10001: nothing wraps onto 0x0000/0x0001 or anything else.
        assert_eq!(bus.read(0xFFFE, 4), 0xFFFF_FFFF);
        assert_eq!(bus.write(0xFFFD, 4, 0xFFFF_FFFF), WriteEffect::NONE);
        assert_eq!(bus.read(0x21, 1), 0x00);
    }

    #[test]
    fn value_is_cut_to_the_access_size() {
        let mut bus = PortBus::new(CFG);
        // High bits of a byte OUT must not leak into neighbours.
        let e = bus.write(0x3F8, 1, 0xFFFF_FF41);
        assert_eq!(e.output, Some(b'A'));
        assert_eq!(bus.read(0x3F9, 1), 0);
    }
}
