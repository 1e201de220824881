//! L0's mapping of L1's memory as the shadow table needs it ([`L0Map`]):
//! the same layout L0's own NPT maps (hv/src/vmm/npt.rs). L1's RAM is one
//! block of host frames, mapped writable with 2 MiB pages; every other
//! L1-physical page below MAXPHYADDR is unbacked memory, mapped read-only
//! onto one frame of 0xFF bytes; MMIO pages (the local APIC's) and
//! addresses at or beyond MAXPHYADDR are not mapped at all, so every
//! access exits to L0. A shadow entry built from this can only ever reach
//! L1's RAM or the all-ones frame: never hypervisor memory.

use super::compose::L0Map;
use super::walk::{page, Rights};
use crate::emulate::unbacked::RamLayout;

/// Where L1's memory is, in host-physical terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L1Layout {
    /// Host-physical address of L1-physical 0 (2 MiB aligned).
    pub ram_host: u64,
    /// Where L1's RAM is: L1-physical `[0, size)`, less the PC hole when
    /// it has one (L0's NPT maps the first 2 MiB with 4 KiB pages then).
    pub ram: RamLayout,
    /// L1-physical addresses at or above this are beyond MAXPHYADDR.
    pub phys_limit: u64,
    /// The host frame of 0xFF bytes unbacked memory reads from.
    pub unbacked_frame: u64,
}

/// Read and fetch, no write: what L0 allows on unbacked memory.
const READ_ONLY: Rights = Rights {
    write: false,
    exec: true,
};

impl L1Layout {
    /// L0's mapping of `l1_pa`; `mmio` says whether its page is one L0
    /// leaves unmapped for a device model.
    pub fn map(&self, l1_pa: u64, mmio: bool) -> L0Map {
        if self.ram.is_ram(l1_pa) {
            // With the hole, L0 maps the first 2 MiB with 4 KiB pages.
            let small = self.ram.pc_hole && l1_pa < 2 << 20;
            return L0Map::Ram {
                hpa: self.ram_host + l1_pa,
                page_bits: if small { page::K4 } else { page::M2 },
                rights: Rights::ALL,
            };
        }
        if mmio || l1_pa >= self.phys_limit {
            return L0Map::NotRam;
        }
        L0Map::Ram {
            hpa: self.unbacked_frame | (l1_pa & 0xFFF),
            page_bits: page::K4,
            rights: READ_ONLY,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: L1Layout = L1Layout {
        ram_host: 0x4000_0000,
        ram: RamLayout {
            size: 0x80_0000,
            pc_hole: false,
        },
        phys_limit: 1 << 40,
        unbacked_frame: 0x7000,
    };

    #[test]
    fn ram_is_the_block_with_2m_pages() {
        assert_eq!(
            L.map(0x12_3456, false),
            L0Map::Ram {
                hpa: 0x4012_3456,
                page_bits: page::M2,
                rights: Rights::ALL
            }
        );
        assert_eq!(
            L.map(0x7F_FFFF, false),
            L0Map::Ram {
                hpa: 0x407F_FFFF,
                page_bits: page::M2,
                rights: Rights::ALL
            }
        );
    }

    #[test]
    fn unbacked_is_the_all_ones_frame_read_only() {
        assert_eq!(
            L.map(0x80_0123, false),
            L0Map::Ram {
                hpa: 0x7123,
                page_bits: page::K4,
                rights: READ_ONLY
            }
        );
        assert_eq!(
            L.map((1 << 40) - 1, false),
            L0Map::Ram {
                hpa: 0x7FFF,
                page_bits: page::K4,
                rights: READ_ONLY
            }
        );
    }

    #[test]
    fn the_pc_hole_is_unbacked_and_its_2m_split() {
        let l = L1Layout {
            ram: RamLayout {
                pc_hole: true,
                ..L.ram
            },
            ..L
        };
        assert_eq!(
            l.map(0xA_0010, false),
            L0Map::Ram {
                hpa: 0x7010,
                page_bits: page::K4,
                rights: READ_ONLY
            }
        );
        assert_eq!(
            l.map(0x9_F000, false),
            L0Map::Ram {
                hpa: 0x4009_F000,
                page_bits: page::K4,
                rights: Rights::ALL
            }
        );
        assert_eq!(
            l.map(0x20_0000, false),
            L0Map::Ram {
                hpa: 0x4020_0000,
                page_bits: page::M2,
                rights: Rights::ALL
            }
        );
        assert!(matches!(
            L.map(0xA_0010, false),
            L0Map::Ram {
                hpa: 0x400A_0010,
                ..
            }
        ));
    }

    #[test]
    fn mmio_and_beyond_maxphyaddr_are_never_mapped() {
        assert_eq!(L.map(0xFEE0_0000, true), L0Map::NotRam);
        assert_eq!(L.map(1 << 40, false), L0Map::NotRam);
        assert_eq!(L.map(u64::MAX, false), L0Map::NotRam);
    }

    /// Whatever the address, a mapping lands in RAM's block or the
    /// all-ones frame (never hypervisor memory).
    #[test]
    fn only_ram_or_the_ones_frame() {
        for pa in (0..1u64 << 41).step_by(0x3_3330_1001) {
            match L.map(pa, false) {
                L0Map::Ram { hpa, rights, .. } => assert!(
                    (0x4000_0000..0x4080_0000).contains(&hpa)
                        || (hpa & !0xFFF == 0x7000 && !rights.write),
                    "{pa:#x} -> {hpa:#x}"
                ),
                L0Map::NotRam => assert!(pa >= 1 << 40),
            }
        }
    }
}
