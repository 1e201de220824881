//! Guest page-table walk in software, so the hypervisor can read
//! instruction bytes and buffers at guest-virtual addresses: 4-level long
//! mode ([`translate`], [`translate_checked`]) and, with the access rights
//! and the #PF error code, every paging mode ([`translate_mode`]: none,
//! 32-bit with PSE, PAE, long mode; APM Vol. 2, 5.2-5.4 and 5.6).
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

/// The paging mode a guest runs with (APM Vol. 2, 5.1, Table 5-1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// CR0.PG clear: linear addresses (32 bits) are physical.
    Off,
    /// 32-bit (two-level) paging; `pse` is CR4.PSE (4 MiB pages).
    Legacy32 {
        /// CR4.PSE: a PDE with PS maps a 4 MiB page.
        pse: bool,
    },
    /// PAE paging outside long mode (three levels, 32-bit linear).
    Pae,
    /// Long mode (EFER.LMA): four levels, 48-bit canonical addresses.
    Long,
}

/// The registers a walk depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PagingRegs {
    /// CR0 (PG, WP).
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4 (PSE, PAE, SMEP).
    pub cr4: u64,
    /// EFER (LMA, NXE).
    pub efer: u64,
    /// MAXPHYADDR: physical-address bits at or above it are reserved.
    pub max_phys_bits: u8,
}

const CR0_PG: u64 = 1 << 31;
const CR0_WP: u64 = 1 << 16;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const CR4_SMEP: u64 = 1 << 20;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;

impl PagingRegs {
    /// The paging mode: CR0.PG, then EFER.LMA, then CR4.PAE.
    pub fn mode(&self) -> Mode {
        if self.cr0 & CR0_PG == 0 {
            Mode::Off
        } else if self.efer & EFER_LMA != 0 {
            Mode::Long
        } else if self.cr4 & CR4_PAE != 0 {
            Mode::Pae
        } else {
            Mode::Legacy32 {
                pse: self.cr4 & CR4_PSE != 0,
            }
        }
    }

    fn nxe(&self) -> bool {
        self.efer & EFER_NXE != 0
    }
}

/// What the access is (the #PF error code and the rights checked).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Access {
    /// A write.
    pub write: bool,
    /// An instruction fetch.
    pub fetch: bool,
    /// A user access (CPL 3); supervisor otherwise.
    pub user: bool,
}

/// #PF error code bits (APM Vol. 2, 8.4.2).
pub mod pf {
    /// P: the fault was a protection violation (the entry was present).
    pub const P: u32 = 1;
    /// W/R: a write.
    pub const W: u32 = 1 << 1;
    /// U/S: a user access.
    pub const U: u32 = 1 << 2;
    /// RSVD: a reserved bit was set in an entry.
    pub const RSVD: u32 = 1 << 3;
    /// I/D: an instruction fetch (reported when EFER.NXE is set).
    pub const ID: u32 = 1 << 4;
}

/// Why [`translate_mode`] gave no address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The #PF the CPU raises, with this error code.
    PageFault(u32),
    /// A non-canonical address in long mode (#GP or #SS, not #PF).
    NonCanonical,
    /// A table entry is outside guest memory (a limit of the reader).
    OutsideMemory(u64),
}

/// PAE PDPTE reserved bits (APM 5.3.2; KVM `pdptr_rsvd_bits`): 2:1, 8:6,
/// and from MAXPHYADDR up (bit 63 included: no NX in a PDPTE). Bit 5 (A) is
/// not counted: QEMU TCG sets it in the PDPTEs it walks (measured by
/// `guest::cpu_modes_tour`), so a guest's own PDPTEs carry it after their
/// first use, and a check that refused it would refuse the guest's next
/// MOV CR3 of the same tables.
pub fn pdpte_reserved(entry: u64, max_phys_bits: u8) -> bool {
    let high = u64::MAX << max_phys_bits.min(52);
    entry & PRESENT != 0 && entry & (high | 0x1C6) != 0
}

/// The address of the four PAE PDPTEs: CR3 bits 31:5 (APM 3.1.2).
pub fn pdpt_address(cr3: u64) -> u64 {
    cr3 & 0xffff_ffe0
}

/// Whether the four PDPTEs a PAE CR3 points at load: no present one has a
/// reserved bit. The CPU checks them when it loads them (MOV CR3, and CR0/
/// CR4 writes that enter PAE paging: #GP; VMRUN without nested paging:
/// VMEXIT_INVALID; KVM `load_pdptrs`).
pub fn pdptes_valid(read: impl Fn(u64) -> Option<u64>, cr3: u64, max_phys_bits: u8) -> bool {
    (0..4)
        .all(|i| read(pdpt_address(cr3) + 8 * i).is_some_and(|e| !pdpte_reserved(e, max_phys_bits)))
}

/// Translates linear address `va` for `access` in the paging mode of
/// `regs`, with the CPU's checks: not-present and reserved-bit entries,
/// then the rights the walk gathered (U/S and R/W at every level, CR0.WP
/// for supervisor writes, NX with EFER.NXE, CR4.SMEP for supervisor
/// fetches from user pages). A failure is the #PF error code the CPU
/// would give (P/W/U/RSVD/I). SMAP is not checked (it needs RFLAGS.AC and
/// whether the access is implicit).
pub fn translate_mode(
    read: impl Fn(u64) -> Option<u64>,
    regs: &PagingRegs,
    va: u64,
    access: Access,
) -> Result<u64, Failure> {
    let mode = regs.mode();
    let nx_on = regs.nxe() && matches!(mode, Mode::Pae | Mode::Long);
    let mut code = 0;
    if access.write {
        code |= pf::W;
    }
    if access.user {
        code |= pf::U;
    }
    if access.fetch && nx_on {
        code |= pf::ID;
    }
    let reserved = Reserved {
        max_phys_bits: regs.max_phys_bits,
        nxe: regs.nxe(),
    };
    // Rights gathered along the walk: U/S and R/W must be set at every
    // level, NX at any level forbids fetches (APM 5.6).
    let (mut user, mut writable, mut nx) = (true, true, false);
    let mut gather = |e: u64| {
        user &= e & 4 != 0;
        writable &= e & 2 != 0;
        nx |= nx_on && e & (1 << 63) != 0;
    };
    let pa = match mode {
        Mode::Off => return Ok(va & 0xffff_ffff),
        Mode::Long => {
            let sign = (va as i64) >> 47;
            if sign != 0 && sign != -1 {
                return Err(Failure::NonCanonical);
            }
            walk_64(
                &read,
                regs.cr3 & ADDR_MASK,
                va,
                4,
                reserved,
                code,
                &mut gather,
            )?
        }
        Mode::Pae => {
            let va = va & 0xffff_ffff;
            let at = pdpt_address(regs.cr3) + ((va >> 30) & 3) * 8;
            let e = read(at).ok_or(Failure::OutsideMemory(at))?;
            if e & PRESENT == 0 {
                return Err(Failure::PageFault(code));
            }
            if pdpte_reserved(e, regs.max_phys_bits) {
                return Err(Failure::PageFault(code | pf::P | pf::RSVD));
            }
            // A PDPTE has no rights bits (APM 5.3.2).
            walk_64(&read, e & ADDR_MASK, va, 2, reserved, code, &mut gather)?
        }
        Mode::Legacy32 { pse } => walk_32(&read, regs, pse, va & 0xffff_ffff, code, &mut gather)?,
    };
    let denied = (access.user && !user)
        || (access.write && !writable && (access.user || regs.cr0 & CR0_WP != 0))
        || (access.fetch && nx)
        || (access.fetch && !access.user && user && regs.cr4 & CR4_SMEP != 0);
    if denied {
        return Err(Failure::PageFault(code | pf::P));
    }
    Ok(pa)
}

/// Levels `top` down to 1 of the 64-bit-entry formats (long mode: 4, PAE
/// below the PDPTE: 2), 9 index bits each.
fn walk_64(
    read: &impl Fn(u64) -> Option<u64>,
    mut table: u64,
    va: u64,
    top: u8,
    reserved: Reserved,
    code: u32,
    gather: &mut impl FnMut(u64),
) -> Result<u64, Failure> {
    for level in (1..=top).rev() {
        let shift = 12 + 9 * u32::from(level - 1);
        let at = table + ((va >> shift) & 511) * 8;
        let entry = read(at).ok_or(Failure::OutsideMemory(at))?;
        if entry & PRESENT == 0 {
            return Err(Failure::PageFault(code));
        }
        if reserved.violated(entry, level) {
            return Err(Failure::PageFault(code | pf::P | pf::RSVD));
        }
        gather(entry);
        if level == 1 || (level <= 3 && entry & PAGE_SIZE_BIT != 0) {
            let page_mask = (1u64 << shift) - 1;
            return Ok((entry & ADDR_MASK & !page_mask) | (va & page_mask));
        }
        table = entry & ADDR_MASK;
    }
    unreachable!("level 1 always returns")
}

/// 32-bit paging: a page directory of 1024 4-byte entries, 4 MiB pages
/// with CR4.PSE (PSE-36: PDE bits 20:13 are physical bits 39:32, bit 21
/// reserved; APM 5.2.3/5.2.4).
fn walk_32(
    read: &impl Fn(u64) -> Option<u64>,
    regs: &PagingRegs,
    pse: bool,
    va: u64,
    code: u32,
    gather: &mut impl FnMut(u64),
) -> Result<u64, Failure> {
    let read32 = |at: u64| -> Result<u64, Failure> {
        let q = read(at & !7).ok_or(Failure::OutsideMemory(at))?;
        Ok((q >> ((at & 4) * 8)) & 0xffff_ffff)
    };
    let pde_at = (regs.cr3 & 0xffff_f000) + (va >> 22) * 4;
    let pde = read32(pde_at)?;
    if pde & PRESENT == 0 {
        return Err(Failure::PageFault(code));
    }
    if pse && pde & PAGE_SIZE_BIT != 0 {
        let high = (pde >> 13) & 0xff;
        let beyond = (high << 32) >> regs.max_phys_bits.min(52) != 0;
        if pde & (1 << 21) != 0 || beyond {
            return Err(Failure::PageFault(code | pf::P | pf::RSVD));
        }
        gather(pde);
        return Ok(high << 32 | (pde & 0xffc0_0000) | (va & 0x3f_ffff));
    }
    gather(pde);
    let pte = read32((pde & 0xffff_f000) + ((va >> 12) & 0x3ff) * 4)?;
    if pte & PRESENT == 0 {
        return Err(Failure::PageFault(code));
    }
    gather(pte);
    Ok((pte & 0xffff_f000) | (va & 0xfff))
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

    // --- every paging mode (translate_mode) ---

    fn regs(cr0: u64, cr4: u64, efer: u64, cr3: u64) -> PagingRegs {
        PagingRegs {
            cr0,
            cr3,
            cr4,
            efer,
            max_phys_bits: 40,
        }
    }
    const PG: u64 = CR0_PG | 1;
    const LMA_NXE: u64 = EFER_LMA | EFER_NXE | (1 << 8);
    const R: Access = Access {
        write: false,
        fetch: false,
        user: false,
    };
    const W: Access = Access { write: true, ..R };
    const X: Access = Access { fetch: true, ..R };
    const UR: Access = Access { user: true, ..R };

    /// Memory of 32-bit words too: `put32` writes half of a quadword.
    fn put32(m: &mut HashMap<u64, u64>, at: u64, v: u32) {
        let q = m.entry(at & !7).or_insert(0);
        let shift = (at & 4) * 8;
        *q = (*q & !(0xffff_ffffu64 << shift)) | u64::from(v) << shift;
    }

    #[test]
    fn modes_from_registers() {
        assert_eq!(regs(1, CR4_PAE, 0, 0).mode(), Mode::Off);
        assert_eq!(regs(PG, 0, 0, 0).mode(), Mode::Legacy32 { pse: false });
        assert_eq!(regs(PG, CR4_PSE, 0, 0).mode(), Mode::Legacy32 { pse: true });
        assert_eq!(regs(PG, CR4_PAE | CR4_PSE, 0, 0).mode(), Mode::Pae);
        assert_eq!(regs(PG, CR4_PAE, LMA_NXE, 0).mode(), Mode::Long);
    }

    #[test]
    fn paging_off_is_identity_in_32_bits() {
        let m = Mem(HashMap::new());
        let r = regs(1, 0, 0, 0);
        let t = translate_mode(|a| m.read(a), &r, 0x1_2345_6789, X);
        assert_eq!(t, Ok(0x2345_6789));
    }

    /// 32-bit paging: PD at 0x1000; PDE 0 -> PT at 0x2000 (PTE 5 -> 0x7000,
    /// user, read-only), PDE 1 a 4 MiB page at 8 MiB, PDE 2 a 4 MiB page with
    /// PSE-36 bits (physical 0x1_0000_0000), PDE 3 with bit 21 set.
    fn tables32() -> Mem {
        let mut m = HashMap::new();
        put32(&mut m, 0x1000, 0x2000 | 7);
        put32(&mut m, 0x1004, 0x80_0000 | 0x83);
        put32(&mut m, 0x1008, (1 << 13) | 0x83);
        put32(&mut m, 0x100c, 0x20_0000 | 0x83);
        put32(&mut m, 0x2000 + 5 * 4, 0x7000 | 5);
        Mem(m)
    }

    #[test]
    fn legacy_32_bit_paging() {
        let m = tables32();
        let pse = regs(PG | CR0_WP, CR4_PSE, 0, 0x1000);
        let t = |r: &PagingRegs, va, a| translate_mode(|x| m.read(x), r, va, a);
        assert_eq!(t(&pse, 0x5123, R), Ok(0x7123));
        assert_eq!(t(&pse, 0x5123, UR), Ok(0x7123), "user page");
        assert_eq!(t(&pse, 0x40_0000 + 0x1234, R), Ok(0x80_1234), "4 MiB");
        assert_eq!(
            t(&pse, 0x80_0000 + 0x10, R),
            Ok(0x1_0000_0010),
            "PSE-36 bits"
        );
        assert_eq!(
            t(&pse, 0xc0_0000, R),
            Err(Failure::PageFault(pf::P | pf::RSVD)),
            "PDE bit 21"
        );
        // Not present: PTE 6, PDE 4.
        assert_eq!(t(&pse, 0x6000, W), Err(Failure::PageFault(pf::W)));
        assert_eq!(t(&pse, 0x100_0000, UR), Err(Failure::PageFault(pf::U)));
        // Read-only PTE: a supervisor write faults with WP only.
        assert_eq!(t(&pse, 0x5000, W), Err(Failure::PageFault(pf::P | pf::W)));
        let no_wp = regs(PG, CR4_PSE, 0, 0x1000);
        assert_eq!(t(&no_wp, 0x5000, W), Ok(0x7000));
        // Supervisor-only 4 MiB page at CPL 3.
        assert_eq!(
            t(&pse, 0x40_0000, UR),
            Err(Failure::PageFault(pf::P | pf::U))
        );
        // Without CR4.PSE the PS bit is ignored: PDE 1 points to a table
        // (at 8 MiB, all zero: not present).
        let no_pse = regs(PG, 0, 0, 0x1000);
        assert_eq!(t(&no_pse, 0x40_0000, R), Err(Failure::PageFault(0)));
        // No NX in 32-bit paging: fetches carry no I/D even with NXE.
        let nxe = regs(PG, CR4_PSE, EFER_NXE, 0x1000);
        assert_eq!(t(&nxe, 0x6000, X), Err(Failure::PageFault(0)));
        // CR3's low bits are ignored; linear addresses are 32 bits.
        let low = regs(PG, CR4_PSE, 0, 0x1018);
        assert_eq!(t(&low, 0x1_0000_5123, R), Ok(0x7123));
    }

    /// PAE: PDPT at 0x1000 (CR3 may hold it 32-byte aligned), PDPTE 0 -> PD at
    /// 0x2000 (PDE 0: 2 MiB page at 2 MiB, NX; PDE 1 -> PT 0x3000: PTE 0 ->
    /// 0x7000 user), PDPTE 3 -> PD at 0x4000 (PDE 511: a 2 MiB page).
    fn tables_pae() -> Mem {
        let mut m = HashMap::new();
        m.insert(0x1000, 0x2000 | 1);
        m.insert(0x1018, 0x4000 | 1);
        m.insert(0x2000, (1 << 63) | 0x20_0000 | 0x83);
        m.insert(0x2008, 0x3000 | 7);
        m.insert(0x3000, 0x7000 | 7);
        m.insert(0x4000 + 511 * 8, 0x60_0000 | 0x83);
        Mem(m)
    }

    #[test]
    fn pae_paging() {
        let m = tables_pae();
        let pae = regs(PG, CR4_PAE, EFER_NXE, 0x1000);
        let t = |r: &PagingRegs, va, a| translate_mode(|x| m.read(x), r, va, a);
        assert_eq!(t(&pae, 0x1234, R), Ok(0x20_1234));
        assert_eq!(t(&pae, 0x20_0123, UR), Ok(0x7123));
        assert_eq!(t(&pae, 0xffff_f000, R), Ok(0x7f_f000), "PDPTE 3");
        // NX with NXE: fetch denied, I/D and P set.
        assert_eq!(t(&pae, 0x1234, X), Err(Failure::PageFault(pf::P | pf::ID)));
        // Without NXE bit 63 is reserved in a PDE.
        let no_nxe = regs(PG, CR4_PAE, 0, 0x1000);
        assert_eq!(
            t(&no_nxe, 0x1234, R),
            Err(Failure::PageFault(pf::P | pf::RSVD))
        );
        // PDPTE 1 not present; with NXE a fetch says I/D.
        assert_eq!(t(&pae, 0x4000_0000, X), Err(Failure::PageFault(pf::ID)));
        // CR3 bits 4:0 ignored, bits 31:5 locate the PDPT.
        let odd = regs(PG, CR4_PAE, EFER_NXE, 0x101f);
        assert_eq!(t(&odd, 0x20_0000, R), Ok(0x7000));
    }

    #[test]
    fn pdpte_reserved_bits() {
        assert!(!pdpte_reserved(0x2000 | 1, 40));
        assert!(!pdpte_reserved(0x2000 | 1 | 0xe00, 40), "11:9 ignored");
        assert!(!pdpte_reserved(0x2000 | 1 | 0x20, 40), "A, set by QEMU");
        assert!(!pdpte_reserved(1 << 52, 40), "not present");
        for bit in [1, 2, 6, 7, 8, 40, 52, 62, 63] {
            assert!(pdpte_reserved(0x2000 | 1 | 1 << bit, 40), "bit {bit}");
        }
        let mut m = tables_pae();
        assert!(pdptes_valid(|a| m.read(a), 0x1000, 40));
        m.0.insert(0x1010, 1 | 1 << 52);
        assert!(!pdptes_valid(|a| m.read(a), 0x1000, 40));
        assert!(
            !pdptes_valid(|a| m.read(a), 0x1000, 52),
            "bit 52 at 52 bits"
        );
        assert_eq!(pdpt_address(0xffff_ffff_ffff_ffff), 0xffff_ffe0);
    }

    #[test]
    fn long_mode_rights() {
        let mut m = tables();
        // PT[6]: user, read-only, NX page at 0x8000; PT[7]: user page.
        m.0.insert(0x4000 + 6 * 8, (1 << 63) | 0x8000 | 5);
        m.0.insert(0x1000, 0x2000 | 7);
        m.0.insert(0x2000, 0x3000 | 7);
        m.0.insert(0x3000 + 8, 0x4000 | 7);
        m.0.insert(0x4000 + 7 * 8, 0x9000 | 7);
        let long = regs(PG | CR0_WP, CR4_PAE, LMA_NXE, 0x1000);
        let t = |r: &PagingRegs, va, a| translate_mode(|x| m.read(x), r, va, a);
        assert_eq!(t(&long, 0x1234, R), Ok(0x20_1234));
        assert_eq!(t(&long, 0x20_6010, UR), Ok(0x8010));
        assert_eq!(
            t(&long, 0x20_6010, X),
            Err(Failure::PageFault(pf::P | pf::ID))
        );
        assert_eq!(
            t(&long, 0x20_6010, Access { user: true, ..W }),
            Err(Failure::PageFault(pf::P | pf::W | pf::U))
        );
        // PD[0] maps a supervisor 2 MiB page (0x83: U clear).
        assert_eq!(t(&long, 0x1234, UR), Err(Failure::PageFault(pf::P | pf::U)));
        // SMEP: a supervisor fetch from a user page.
        assert_eq!(t(&long, 0x20_7000, X), Ok(0x9000));
        let smep = regs(PG | CR0_WP, CR4_PAE | CR4_SMEP, LMA_NXE, 0x1000);
        assert_eq!(
            t(&smep, 0x20_7000, X),
            Err(Failure::PageFault(pf::P | pf::ID))
        );
        assert_eq!(
            t(&long, 0x0000_8000_0000_0000, R),
            Err(Failure::NonCanonical)
        );
        // The same walk as translate() where the rights allow it.
        for va in [0x1234, 0x20_5678, 0x4000_0000 + 0x123_4567] {
            assert_eq!(
                t(&long, va, R).ok(),
                translate(|a| m.read(a), 0x1000, va).ok()
            );
        }
    }
}
