//! Guest page-table walk (4-level long mode) in software, so the hypervisor
//! can read instruction bytes and buffers at guest-virtual addresses.
//!
//! Pure: guest memory is reached through a closure that reads a 64-bit
//! entry at a guest-physical address (and fails outside guest RAM).

/// Why a guest-virtual address did not translate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkError {
    /// An entry at this level (4 = PML4 .. 1 = PT) is not present.
    NotPresent(u8),
    /// A table entry points outside guest memory.
    OutsideMemory(u64),
    /// The address is not canonical.
    NonCanonical,
    /// An entry at this level has a reserved bit set (a #PF with RSVD):
    /// only [`translate_checked`] reports it.
    Reserved(u8),
}

/// What decides the reserved bits of long-mode entries (APM Vol. 2, 5.3.1
/// and 5.4.1 tables of reserved bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reserved {
    /// MAXPHYADDR: address bits 51 down to it are reserved.
    pub max_phys_bits: u8,
    /// EFER.NXE: without it bit 63 (NX) is reserved.
    pub nxe: bool,
}

impl Reserved {
    /// Whether `entry` (present) at `level` has a reserved bit set.
    pub fn violated(&self, entry: u64, level: u8) -> bool {
        let bits = u32::from(self.max_phys_bits.min(52));
        let mut mask = (1u64 << 52) - (1u64 << bits);
        if !self.nxe {
            mask |= 1 << 63;
        }
        let large = entry & PAGE_SIZE_BIT != 0;
        mask |= match level {
            // PML4E: PS is MBZ.
            4 => PAGE_SIZE_BIT,
            // 1 GiB page: bits 29:13 (12 is PAT).
            3 if large => 0x3FFF_E000,
            // 2 MiB page: bits 20:13.
            2 if large => 0x1F_E000,
            _ => 0,
        };
        entry & mask != 0
    }
}

const PRESENT: u64 = 1;
const PAGE_SIZE_BIT: u64 = 1 << 7;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Translates `va` with the page tables at `cr3` (guest-physical).
pub fn translate(read: impl Fn(u64) -> Option<u64>, cr3: u64, va: u64) -> Result<u64, WalkError> {
    walk(read, cr3, va, None)
}

/// [`translate`], and a present entry with a reserved bit set fails as the
/// CPU's walk does ([`WalkError::Reserved`]): an entry read from unbacked
/// memory (all-ones) always does below 52-bit MAXPHYADDR.
pub fn translate_checked(
    read: impl Fn(u64) -> Option<u64>,
    cr3: u64,
    va: u64,
    reserved: Reserved,
) -> Result<u64, WalkError> {
    walk(read, cr3, va, Some(reserved))
}

fn walk(
    read: impl Fn(u64) -> Option<u64>,
    cr3: u64,
    va: u64,
    reserved: Option<Reserved>,
) -> Result<u64, WalkError> {
    let sign = (va as i64) >> 47;
    if sign != 0 && sign != -1 {
        return Err(WalkError::NonCanonical);
    }
    let mut table = cr3 & ADDR_MASK;
    for level in (1..=4u8).rev() {
        let shift = 12 + 9 * u32::from(level - 1);
        let at = table + ((va >> shift) & 511) * 8;
        let entry = read(at).ok_or(WalkError::OutsideMemory(at))?;
        if entry & PRESENT == 0 {
            return Err(WalkError::NotPresent(level));
        }
        if reserved.is_some_and(|r| r.violated(entry, level)) {
            return Err(WalkError::Reserved(level));
        }
        // PS in a PDPTE (1 GiB) or PDE (2 MiB) maps a large page.
        if level == 1 || (level <= 3 && entry & PAGE_SIZE_BIT != 0) {
            let page_mask = (1u64 << shift) - 1;
            return Ok((entry & ADDR_MASK & !page_mask) | (va & page_mask));
        }
        table = entry & ADDR_MASK;
    }
    unreachable!("level 1 always returns")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Mem(HashMap<u64, u64>);

    impl Mem {
        fn read(&self, gpa: u64) -> Option<u64> {
            (gpa < 0x100_0000).then(|| self.0.get(&gpa).copied().unwrap_or(0))
        }
    }

    fn tables() -> Mem {
        let mut m = HashMap::new();
        m.insert(0x1000, 0x2000 | 3); // PML4[0]
        m.insert(0x2000, 0x3000 | 3); // PDPT[0] -> PD
        m.insert(0x2000 + 8, 0x4000_0000 | 0x83); // PDPT[1]: 1 GiB page at 1 GiB
        m.insert(0x3000, 0x20_0000 | 0x83); // PD[0]: 2 MiB page at 2 MiB
        m.insert(0x3000 + 8, 0x4000 | 3); // PD[1] -> PT
        m.insert(0x4000 + 5 * 8, 0x7000 | 3); // PT[5]: 4 KiB page
        m.insert(0x1000 + 511 * 8, 0x9000 | 3); // PML4[511] -> table beyond memory
        m.insert(0x9000 + 511 * 8, 0x7fff_f000 | 3);
        Mem(m)
    }

    #[test]
    fn each_page_size_translates() {
        let m = tables();
        let t = |va| translate(|a| m.read(a), 0x1000, va);
        assert_eq!(t(0x1234), Ok(0x20_1234));
        assert_eq!(t(0x20_5678), Ok(0x7678));
        assert_eq!(t(0x4000_0000 + 0x123_4567), Ok(0x4123_4567));
    }

    #[test]
    fn failures_say_where() {
        let m = tables();
        let t = |va| translate(|a| m.read(a), 0x1000, va);
        assert_eq!(t(0x20_6000), Err(WalkError::NotPresent(1)));
        assert_eq!(t(0x8000_0000), Err(WalkError::NotPresent(3)));
        assert_eq!(t(0x0000_8000_0000_0000), Err(WalkError::NonCanonical));
        assert_eq!(
            t(0xffff_ffff_ffe0_0000),
            Err(WalkError::OutsideMemory(0x7fff_f000 + 511 * 8))
        );
    }

    const R40: Reserved = Reserved {
        max_phys_bits: 40,
        nxe: true,
    };

    #[test]
    fn all_ones_entries_are_reserved_at_every_level() {
        for level in 1..=4 {
            assert!(R40.violated(!0, level), "level {level}");
        }
        // Even with 52-bit MAXPHYADDR, PS in a PML4E and the large-page
        // MBZ bits are reserved.
        let r52 = Reserved {
            max_phys_bits: 52,
            nxe: true,
        };
        for level in 2..=4 {
            assert!(r52.violated(!0, level), "level {level}");
        }
    }

    #[test]
    fn reserved_bits_per_entry() {
        assert!(!R40.violated(0xff_ffff_f000 | 3, 1), "top of 40 bits");
        assert!(R40.violated(0x100_0000_0000 | 3, 1), "bit 40");
        assert!(!R40.violated((1 << 63) | 3, 1), "NX with NXE");
        let no_nx = Reserved { nxe: false, ..R40 };
        assert!(no_nx.violated((1 << 63) | 3, 1), "NX without NXE");
        assert!(R40.violated(0x83, 4), "PS in a PML4E");
        assert!(!R40.violated(0x20_0000 | 0x1083, 2), "2 MiB page with PAT");
        assert!(R40.violated(0x20_2000 | 0x83, 2), "2 MiB page, bit 13");
        assert!(R40.violated(0x4000_2000 | 0x83, 3), "1 GiB page, bit 13");
        assert!(!R40.violated(0x2000 | 0x3, 3), "PDPTE pointing to a PD");
    }

    #[test]
    fn checked_walk_stops_at_all_ones_tables() {
        let m = tables();
        // Reads outside the map are unbacked memory: all-ones.
        let read = |a: u64| Some(m.read(a).unwrap_or(!0));
        let t = |va| translate_checked(read, 0x1000, va, R40);
        assert_eq!(t(0x1234), Ok(0x20_1234));
        assert_eq!(t(0xffff_ffff_ffe0_0000), Err(WalkError::Reserved(2)));
        assert_eq!(t(0x20_6000), Err(WalkError::NotPresent(1)));
        // The unchecked walk follows the all-ones PDE as a 2 MiB page.
        assert!(translate(read, 0x1000, 0xffff_ffff_ffe0_0000).is_ok());
    }
}
