//! L1's nested page table walked for one L2-physical address (gPA).
//!
//! The nested table has the format of L1's own paging mode at VMRUN (APM
//! Vol. 2, 15.25.4-15.25.5: the host's CR0/CR4/EFER select it; KVM
//! `kvm_init_shadow_npt_mmu` takes them from vmcb01): 4-level long mode
//! (4 KiB/2 MiB/1 GiB pages), legacy PAE (APM 15.25.8: the nested PDPEs
//! are not held in registers, they are read on every walk, as KVM
//! `nested_svm_get_tdp_pdptr` does) or 32-bit (4 MiB pages with CR4.PSE).
//! Faults carry the #NPF EXITINFO1 of APM 15.25.6.
//! Every nested access is a user access (APM 15.25.5), so U must be set at
//! every level and the error code always has U; CR0.WP and SMEP do not
//! apply (they concern supervisor accesses).

use crate::walk::{pdpt_address, pdpte_reserved, pf, Mode, PagingRegs, Reserved};

/// EXITINFO1 bit 32: the #NPF happened translating the final gPA of the
/// guest's access (APM 15.25.6).
pub const EXITINFO1_FINAL: u64 = 1 << 32;
/// EXITINFO1 bit 33: the #NPF happened translating a gPA of the guest's
/// own page tables during its page walk (APM 15.25.6).
pub const EXITINFO1_GUEST_TABLES: u64 = 1 << 33;

/// Which of L2's accesses needed the gPA: known from the CPU's #NPF on the
/// shadow table (its EXITINFO1 bits 32/33, kept when the fault is
/// reflected, as KVM `nested_svm_inject_npf_exit` does), or from whoever
/// emulates the access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The final access (bit 32).
    Final,
    /// A read or A/D write of L2's own page tables (bit 33).
    GuestTables,
}

impl Stage {
    /// The EXITINFO1 bit this stage sets.
    pub const fn bit(self) -> u64 {
        match self {
            Self::Final => EXITINFO1_FINAL,
            Self::GuestTables => EXITINFO1_GUEST_TABLES,
        }
    }

    /// The stage a hardware #NPF reports; `None` if neither bit is set.
    pub const fn from_exitinfo1(exitinfo1: u64) -> Option<Self> {
        if exitinfo1 & EXITINFO1_GUEST_TABLES != 0 {
            Some(Self::GuestTables)
        } else if exitinfo1 & EXITINFO1_FINAL != 0 {
            Some(Self::Final)
        } else {
            None
        }
    }
}

/// The access a nested translation is for (always a user access).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NestedAccess {
    /// A write (CPU A/D updates of guest page tables included).
    pub write: bool,
    /// An instruction fetch.
    pub fetch: bool,
}

impl NestedAccess {
    /// A data read.
    pub const READ: Self = Self {
        write: false,
        fetch: false,
    };
    /// A data write.
    pub const WRITE: Self = Self {
        write: true,
        fetch: false,
    };
    /// An instruction fetch.
    pub const FETCH: Self = Self {
        write: false,
        fetch: true,
    };

    /// The access of a hardware #NPF: EXITINFO1 bits 1 (RW) and 4 (ID).
    pub const fn from_exitinfo1(exitinfo1: u64) -> Self {
        Self {
            write: exitinfo1 & pf::W as u64 != 0,
            fetch: exitinfo1 & pf::ID as u64 != 0,
        }
    }
}

/// What a nested leaf allows (user access is implied: a walk that
/// succeeds had U at every level).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rights {
    /// R/W set at every level.
    pub write: bool,
    /// No NX at any level (NX counts only with EFER.NXE).
    pub exec: bool,
}

impl Rights {
    /// Everything.
    pub const ALL: Self = Self {
        write: true,
        exec: true,
    };

    /// Both sides' rights: never wider than either.
    pub const fn intersect(self, other: Self) -> Self {
        Self {
            write: self.write && other.write,
            exec: self.exec && other.exec,
        }
    }

    /// Whether `access` is allowed.
    pub const fn allow(self, access: NestedAccess) -> bool {
        (self.write || !access.write) && (self.exec || !access.fetch)
    }
}

/// log2 of the page sizes a nested leaf can map.
pub mod page {
    /// 4 KiB.
    pub const K4: u8 = 12;
    /// 2 MiB (long mode and PAE PDE).
    pub const M2: u8 = 21;
    /// 4 MiB (32-bit PDE with CR4.PSE).
    pub const M4: u8 = 22;
    /// 1 GiB (long-mode PDPTE).
    pub const G1: u8 = 30;
}

/// A successful walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The L1-physical address of the gPA (page base plus offset).
    pub l1_pa: u64,
    /// log2 of the size of the L1 page holding it ([`page`]).
    pub page_bits: u8,
    /// The rights gathered along the walk.
    pub rights: Rights,
    /// The accessed and dirty bits the walk sets in L1's table.
    pub ad: AdBits,
}

/// The accessed and dirty bits a successful walk sets in L1's nested
/// table, as the CPU sets them in nested entries (APM 15.25.5 and 5.4.2:
/// A in every entry used, D in the leaf on a write). The caller ORs them
/// into L1's memory (atomically; KVM `update_accessed_dirty_bits` uses a
/// cmpxchg and walks again if the entry changed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdBits {
    updates: [(u64, u64); 4],
    len: u8,
    /// The leaf's D is set once these updates are made: until then a
    /// shadow entry must not allow writes (the first write must reach L0
    /// to set D).
    pub leaf_dirty: bool,
}

impl AdBits {
    /// (8-byte-aligned L1-physical address, bits to OR into the qword
    /// there), one per entry that needs a bit it lacks.
    pub fn updates(&self) -> &[(u64, u64)] {
        &self.updates[..usize::from(self.len)]
    }

    /// Records `entry` (read at `at`, bits at `shift` within its qword):
    /// A if clear, and D if `dirty` and clear.
    fn record(&mut self, at: u64, shift: u64, entry: u64, dirty: bool) {
        let mut bits = ACCESSED & !entry;
        if dirty {
            bits |= DIRTY & !entry;
        }
        if bits != 0 {
            self.updates[usize::from(self.len)] = (at & !7, bits << shift);
            self.len += 1;
        }
    }
}

/// Why a walk gave no translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkFault {
    /// L1's table refuses the access: the #NPF error code (EXITINFO1
    /// bits 4:0: P, RW, US, RSVD, ID) to reflect to L1.
    Npf(u32),
    /// A table entry lies where the reader cannot read (not L1's RAM nor
    /// unbacked memory that reads all-ones): L0's business.
    Unreadable(u64),
}

impl WalkFault {
    /// EXITINFO1 for L1: the error code and the stage bit (APM 15.25.6);
    /// `None` for a fault that is not L1's.
    pub const fn exitinfo1(self, stage: Stage) -> Option<u64> {
        match self {
            Self::Npf(code) => Some(code as u64 | stage.bit()),
            Self::Unreadable(_) => None,
        }
    }
}

/// The registers selecting the nested table format: L1's CR0, CR4, EFER
/// at VMRUN and vmcb12's nCR3 (as `cr3`). `None` when L1 runs without
/// paging: the format is undefined (KVM requires CR0.PG=1 for NPT), the
/// caller refuses the VMRUN.
pub fn npt_regs(cr0: u64, cr4: u64, efer: u64, ncr3: u64, max_phys_bits: u8) -> Option<PagingRegs> {
    let regs = PagingRegs {
        cr0,
        cr3: ncr3,
        cr4,
        efer,
        max_phys_bits,
    };
    (regs.mode() != Mode::Off).then_some(regs)
}

const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const PS: u64 = 1 << 7;
const NX: u64 = 1 << 63;
/// Bit 8 of a PML4E: reserved on AMD.
const PML4E_MBZ_8: u64 = 1 << 8;
const ACCESSED: u64 = 1 << 5;
const DIRTY: u64 = 1 << 6;
const ADDR: u64 = 0x000f_ffff_ffff_f000;
const EFER_NXE: u64 = 1 << 11;
const CR4_SMEP: u64 = 1 << 20;

/// Walks L1's nested table (`regs` from [`npt_regs`]) for `gpa` and
/// checks `access` against it. `read` reads a 64-bit entry at an
/// L1-physical address; it should give all-ones for unbacked memory (as
/// the CPU would read it: such an entry has reserved bits, an RSVD
/// fault), `None` where L0 cannot answer. In the 32-bit formats only gPA
/// bits 31:0 index the table; in long mode bits 47:12.
pub fn translate(
    read: impl Fn(u64) -> Option<u64>,
    regs: &PagingRegs,
    gpa: u64,
    access: NestedAccess,
) -> Result<Translation, WalkFault> {
    let mode = regs.mode();
    let nxe = regs.efer & EFER_NXE != 0;
    let nx_on = nxe && matches!(mode, Mode::Pae | Mode::Long);
    // Nested accesses are user accesses (APM 15.25.5); I/D where NX
    // exists (APM 8.4.2) or with L1's CR4.SMEP (kvm-unit-tests
    // svm_npt_rsvd_bits_test, KVM paging_tmpl.h), though SMEP itself never
    // refuses a user access.
    let smep = regs.cr4 & CR4_SMEP != 0;
    let mut code = pf::U;
    if access.write {
        code |= pf::W;
    }
    if access.fetch && (nx_on || smep) {
        code |= pf::ID;
    }
    let reserved = Reserved {
        max_phys_bits: regs.max_phys_bits,
        nxe,
    };
    let mut walk = Gather {
        user: true,
        write: true,
        nx: false,
        nx_on,
        dirty: access.write,
        ad: AdBits::default(),
    };
    let (l1_pa, page_bits) = match mode {
        Mode::Off => return Err(WalkFault::Npf(code)),
        Mode::Long => walk.levels(&read, regs.cr3 & ADDR, gpa, 4, reserved, code)?,
        Mode::Pae => {
            let gpa = gpa & 0xffff_ffff;
            let at = pdpt_address(regs.cr3) + ((gpa >> 30) & 3) * 8;
            let e = read(at).ok_or(WalkFault::Unreadable(at))?;
            if e & PRESENT == 0 {
                return Err(WalkFault::Npf(code));
            }
            if pdpte_reserved(e, regs.max_phys_bits) {
                return Err(WalkFault::Npf(code | pf::P | pf::RSVD));
            }
            // A PAE PDPTE has no rights bits (APM 5.3.2).
            walk.levels(&read, e & ADDR, gpa, 2, reserved, code)?
        }
        Mode::Legacy32 { pse } => walk.legacy(&read, regs, pse, gpa & 0xffff_ffff, code)?,
    };
    let rights = Rights {
        write: walk.write,
        exec: !walk.nx,
    };
    if !walk.user || !rights.allow(access) {
        return Err(WalkFault::Npf(code | pf::P));
    }
    Ok(Translation {
        l1_pa,
        page_bits,
        rights,
        ad: walk.ad,
    })
}

/// Rights gathered along a walk (APM 5.6: U/S and R/W at every level, NX
/// at any level).
struct Gather {
    user: bool,
    write: bool,
    nx: bool,
    nx_on: bool,
    /// The access writes: D goes into the leaf.
    dirty: bool,
    ad: AdBits,
}

impl Gather {
    /// A table entry (`leaf` false) or the leaf, read at `at`, `shift`
    /// bits into its qword (32 for the high half of a 4-byte entry).
    fn add(&mut self, at: u64, shift: u64, e: u64, leaf: bool) {
        self.user &= e & USER != 0;
        self.write &= e & WRITABLE != 0;
        self.nx |= self.nx_on && e & NX != 0;
        self.ad.record(at, shift, e, leaf && self.dirty);
        if leaf {
            self.ad.leaf_dirty = self.dirty || e & DIRTY != 0;
        }
    }

    /// Levels `top` down to 1 of the 64-bit-entry formats.
    fn levels(
        &mut self,
        read: &impl Fn(u64) -> Option<u64>,
        mut table: u64,
        gpa: u64,
        top: u8,
        reserved: Reserved,
        code: u32,
    ) -> Result<(u64, u8), WalkFault> {
        for level in (1..=top).rev() {
            let shift = 12 + 9 * u32::from(level - 1);
            let at = table + ((gpa >> shift) & 511) * 8;
            let e = read(at).ok_or(WalkFault::Unreadable(at))?;
            if e & PRESENT == 0 {
                return Err(WalkFault::Npf(code));
            }
            // AMD also reserves bit 8 of a PML4E (APM Vol. 2, 5.3.3 table
            // of reserved bits; KVM `nonleaf_bit8_rsvd`; kvm-unit-tests
            // svm_npt_rsvd_bits_test).
            let bit8 = level == 4 && e & PML4E_MBZ_8 != 0;
            if reserved.violated(e, level) || bit8 {
                return Err(WalkFault::Npf(code | pf::P | pf::RSVD));
            }
            let leaf = level == 1 || (level <= 3 && e & PS != 0);
            self.add(at, 0, e, leaf);
            // PS maps a 1 GiB (PDPTE) or 2 MiB (PDE) page; a PAE walk
            // starts at level 2, so it never sees a 1 GiB page.
            if leaf {
                let mask = (1u64 << shift) - 1;
                return Ok(((e & ADDR & !mask) | (gpa & mask), shift as u8));
            }
            table = e & ADDR;
        }
        unreachable!("level 1 always returns")
    }

    /// 32-bit format: 4-byte entries, 4 MiB pages with CR4.PSE (PSE-36:
    /// PDE bits 20:13 are address bits 39:32, bit 21 reserved).
    fn legacy(
        &mut self,
        read: &impl Fn(u64) -> Option<u64>,
        regs: &PagingRegs,
        pse: bool,
        gpa: u64,
        code: u32,
    ) -> Result<(u64, u8), WalkFault> {
        let read32 = |at: u64| -> Result<u64, WalkFault> {
            let q = read(at & !7).ok_or(WalkFault::Unreadable(at))?;
            Ok((q >> ((at & 4) * 8)) & 0xffff_ffff)
        };
        let pde_at = (regs.cr3 & 0xffff_f000) + (gpa >> 22) * 4;
        let pde = read32(pde_at)?;
        if pde & PRESENT == 0 {
            return Err(WalkFault::Npf(code));
        }
        if pse && pde & PS != 0 {
            let high = (pde >> 13) & 0xff;
            let beyond = (high << 32) >> regs.max_phys_bits.min(52) != 0;
            if pde & (1 << 21) != 0 || beyond {
                return Err(WalkFault::Npf(code | pf::P | pf::RSVD));
            }
            self.add(pde_at, (pde_at & 4) * 8, pde, true);
            let pa = high << 32 | (pde & 0xffc0_0000) | (gpa & 0x3f_ffff);
            return Ok((pa, page::M4));
        }
        self.add(pde_at, (pde_at & 4) * 8, pde, false);
        let pte_at = (pde & 0xffff_f000) + ((gpa >> 12) & 0x3ff) * 4;
        let pte = read32(pte_at)?;
        if pte & PRESENT == 0 {
            return Err(WalkFault::Npf(code));
        }
        self.add(pte_at, (pte_at & 4) * 8, pte, true);
        Ok(((pte & 0xffff_f000) | (gpa & 0xfff), page::K4))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::walk::{translate_mode, Access, Failure};
    use proptest::prelude::*;
    use std::collections::HashMap;

    pub(crate) struct Mem(pub HashMap<u64, u64>);

    impl Mem {
        /// L1 RAM is 16 MiB; above it reads as unbacked (all-ones) up to
        /// 4 GiB, then cannot be read.
        pub(crate) fn read(&self, pa: u64) -> Option<u64> {
            if pa < 0x100_0000 {
                Some(self.0.get(&pa).copied().unwrap_or(0))
            } else if pa < 0x1_0000_0000 {
                Some(!0)
            } else {
                None
            }
        }
    }

    const LMA_NXE: u64 = (1 << 10) | (1 << 11) | (1 << 8);
    const PG: u64 = 1 << 31;
    const PAE: u64 = 1 << 5;
    const PSE: u64 = 1 << 4;

    pub(crate) fn long_regs(ncr3: u64) -> PagingRegs {
        npt_regs(PG | 1, PAE, LMA_NXE, ncr3, 40).unwrap()
    }

    /// Long-mode nested table at 0x1000: gPA 0..2M -> PT (4 KiB pages),
    /// 2M..4M a 2 MiB page at 6M, 1G..2G a 1 GiB page at 3G (L1-physical,
    /// unbacked: the walk does not care), and assorted faulting entries.
    pub(crate) fn long_tables() -> Mem {
        let mut m = HashMap::new();
        m.insert(0x1000, 0x2000 | 7); // PML4[0]
        m.insert(0x2000, 0x3000 | 7); // PDPT[0] -> PD
        m.insert(0x2008, 0xC000_0000 | 0x87); // PDPT[1]: 1 GiB page at 3G
        m.insert(0x2010, 0x5000 | 7 | 1 << 20); // PDPT[2] -> bit 20 (< 40): a table
        m.insert(0x2018, 0x4000_0000 | 0x87 | 1 << 13); // PDPT[3]: 1G with MBZ bit 13
        m.insert(0x3000, 0x4000 | 7); // PD[0] -> PT
        m.insert(0x3008, 0x60_0000 | 0x87); // PD[1]: 2 MiB page at 6M
        m.insert(0x3010, 0x80_0000 | 0x85); // PD[2]: 2 MiB read-only
        m.insert(0x3018, (1 << 63) | 0xA0_0000 | 0x87); // PD[3]: 2 MiB NX
        m.insert(0x3020, 0xC0_0000 | 0x83); // PD[4]: 2 MiB supervisor (U=0)
        m.insert(0x3028, 0x4000 | 7 | 1 << 45); // PD[5]: address bit 45 >= MAXPHYADDR
        m.insert(0x3030, 0x0120_0000 | 0x87 | 1 << 20); // PD[6]: 2M with MBZ bit 20
        m.insert(0x3038, 0x6000 | 3); // PD[7] -> PT with U=0 in the PDE
        m.insert(0x4000 + 5 * 8, 0x7000 | 7); // PT[5]
        m.insert(0x4000 + 6 * 8, 0x8000 | 5); // PT[6] read-only
        m.insert(0x4000 + 7 * 8, 0x9000 | 7 | 1 << 51); // PT[7] reserved bit 51
        m.insert(0x6000, 0xA000 | 7);
        m.insert(0x1008, 0x2000 | 7 | 1 << 7); // PML4[1]: PS is MBZ
        m.insert(0x1010, 0x00F0_0000 | 7); // PML4[2] -> 15M (RAM, zero)
        m.insert(0x1018, 0x0200_0000 | 7); // PML4[3] -> unbacked: all-ones
        m.insert(0x1020, 0x1_0000_0000 | 7); // PML4[4] -> unreadable
        m.insert(0x1028, 0x2000 | 7 | 1 << 8); // PML4[5]: bit 8 is MBZ (AMD)
        Mem(m)
    }

    const R: NestedAccess = NestedAccess::READ;
    const W: NestedAccess = NestedAccess::WRITE;
    const X: NestedAccess = NestedAccess::FETCH;
    const U: u32 = pf::U;

    /// The walk, A/D updates left out (see `accessed_and_dirty_bits`).
    fn t(m: &Mem, regs: &PagingRegs, gpa: u64, a: NestedAccess) -> Result<Translation, WalkFault> {
        translate(|x| m.read(x), regs, gpa, a).map(|tr| Translation {
            ad: AdBits::default(),
            ..tr
        })
    }

    fn ok(l1_pa: u64, page_bits: u8, write: bool, exec: bool) -> Result<Translation, WalkFault> {
        Ok(Translation {
            l1_pa,
            page_bits,
            rights: Rights { write, exec },
            ad: AdBits::default(),
        })
    }

    #[test]
    fn long_mode_page_sizes() {
        let m = long_tables();
        let r = long_regs(0x1000);
        assert_eq!(t(&m, &r, 0x5123, R), ok(0x7123, page::K4, true, true));
        assert_eq!(t(&m, &r, 0x20_1234, W), ok(0x60_1234, page::M2, true, true));
        assert_eq!(
            t(&m, &r, 0x4012_3456, X),
            ok(0xC012_3456, page::G1, true, true)
        );
        // nCR3's low 12 bits are ignored.
        let odd = long_regs(0x1fff);
        assert_eq!(t(&m, &odd, 0x5123, R), ok(0x7123, page::K4, true, true));
    }

    #[test]
    fn long_mode_rights_and_fault_codes() {
        let m = long_tables();
        let r = long_regs(0x1000);
        // Read-only leaves: reads pass with write=false, writes fault P|W|U.
        assert_eq!(t(&m, &r, 0x6000, R), ok(0x8000, page::K4, false, true));
        assert_eq!(t(&m, &r, 0x6000, W), Err(WalkFault::Npf(pf::P | pf::W | U)));
        assert_eq!(
            t(&m, &r, 0x40_0000, W),
            Err(WalkFault::Npf(pf::P | pf::W | U))
        );
        // NX: fetch faults with ID; reads pass with exec=false.
        assert_eq!(
            t(&m, &r, 0x60_0000, X),
            Err(WalkFault::Npf(pf::P | U | pf::ID))
        );
        assert_eq!(
            t(&m, &r, 0x60_0000, W),
            ok(0xA0_0000, page::M2, true, false)
        );
        // U=0 in a leaf or a table entry: every access faults (user), P|U.
        assert_eq!(t(&m, &r, 0x80_0000, R), Err(WalkFault::Npf(pf::P | U)));
        assert_eq!(t(&m, &r, 0xE0_0000, R), Err(WalkFault::Npf(pf::P | U)));
        // Not present at PT, PD, PDPT, PML4: P clear, W/ID as the access.
        assert_eq!(t(&m, &r, 0x8000, W), Err(WalkFault::Npf(pf::W | U)));
        assert_eq!(t(&m, &r, 0x100_0000, X), Err(WalkFault::Npf(U | pf::ID)));
        assert_eq!(t(&m, &r, 0x1_0000_0000, R), Err(WalkFault::Npf(U)));
        assert_eq!(t(&m, &r, 0x7f80_0000_0000, R), Err(WalkFault::Npf(U)));
        // Without EFER.NXE a fetch carries no ID, and NX is reserved.
        let no_nx = npt_regs(PG, PAE, 1 << 10 | 1 << 8, 0x1000, 40).unwrap();
        assert_eq!(t(&m, &no_nx, 0x8000, X), Err(WalkFault::Npf(U)));
        assert_eq!(
            t(&m, &no_nx, 0x60_0000, R),
            Err(WalkFault::Npf(pf::P | U | pf::RSVD))
        );
    }

    #[test]
    fn reserved_bits_at_every_level() {
        let m = long_tables();
        let r = long_regs(0x1000);
        let rsvd = |a: NestedAccess| {
            let mut c = pf::P | U | pf::RSVD;
            if a.write {
                c |= pf::W;
            }
            if a.fetch {
                c |= pf::ID;
            }
            Err(WalkFault::Npf(c))
        };
        assert_eq!(t(&m, &r, 0x80_0000_0000, R), rsvd(R), "PML4E PS");
        assert_eq!(t(&m, &r, 0x280_0000_0000, W), rsvd(W), "PML4E bit 8");
        assert_eq!(t(&m, &r, 0xC000_0000, W), rsvd(W), "1G MBZ bit 13");
        assert_eq!(
            t(&m, &r, 0xA0_0000, X),
            rsvd(X),
            "PDE address >= MAXPHYADDR"
        );
        assert_eq!(t(&m, &r, 0xC0_0000, R), rsvd(R), "2M MBZ bit 20");
        assert_eq!(t(&m, &r, 0x7000, R), rsvd(R), "PTE bit 51");
        // A table in unbacked memory reads all-ones: RSVD at the next level.
        assert_eq!(t(&m, &r, 0x180_0000_0000, R), rsvd(R), "all-ones PDPTE");
        // Bit 20 of a table entry's address is fine below MAXPHYADDR 40.
        assert_eq!(t(&m, &r, 0x8000_0000, R), Err(WalkFault::Npf(U)));
        // A table L0 cannot read is L0's, not L1's.
        let f = t(&m, &r, 0x200_0000_0000, R);
        assert_eq!(f, Err(WalkFault::Unreadable(0x1_0000_0000)));
        assert_eq!(f.unwrap_err().exitinfo1(Stage::Final), None);
    }

    /// The EXITINFO1 values kvm-unit-tests' svm_npt tests expect from the
    /// CPU, each from the matching L1 table.
    #[test]
    fn kvm_unit_tests_exitinfo1_values() {
        let m = long_tables();
        let r = long_regs(0x1000);
        let e1 = |gpa, a, stage| t(&m, &r, gpa, a).unwrap_err().exitinfo1(stage);
        let (f, g) = (Stage::Final, Stage::GuestTables);
        assert_eq!(e1(0x8000, R, f), Some(0x1_0000_0004), "npt_np");
        assert_eq!(e1(0x60_0000, X, f), Some(0x1_0000_0015), "npt_nx");
        assert_eq!(e1(0x80_0000, R, f), Some(0x1_0000_0005), "npt_us");
        assert_eq!(e1(0x6000, W, f), Some(0x1_0000_0007), "npt_rw");
        assert_eq!(e1(0x6000, W, g), Some(0x2_0000_0007), "npt_rw_pfwalk");
        assert_eq!(e1(0x7000, W, g), Some(0x2_0000_000f), "rsvd, guest table");
        assert_eq!(e1(0x7000, R, f), Some(0x1_0000_000d), "rsvd, final");
        assert_eq!(e1(0x7000, X, f), Some(0x1_0000_001d), "rsvd, fetch, NX");
        // Without NX but with SMEP a fetch still says ID; without both not.
        let smep = npt_regs(PG, PAE | 1 << 20, 1 << 10, 0x1000, 40).unwrap();
        let plain = npt_regs(PG, PAE, 1 << 10, 0x1000, 40).unwrap();
        let f_at = |r: &PagingRegs| t(&m, r, 0x7000, X).unwrap_err().exitinfo1(f);
        assert_eq!(f_at(&smep), Some(0x1_0000_001d));
        assert_eq!(f_at(&plain), Some(0x1_0000_000d));
        // SMEP does not refuse a user fetch of a user page.
        assert!(t(&m, &smep, 0x5000, X).is_ok());
    }

    #[test]
    fn accessed_and_dirty_bits() {
        let mut m = long_tables();
        let r = long_regs(0x1000);
        let ad = |m: &Mem, gpa, a| translate(|x| m.read(x), &r, gpa, a).unwrap().ad;
        // A read of a 4K page: A in all four entries, no D.
        let read = ad(&m, 0x5000, R);
        let a = 1 << 5;
        let a4 = [(0x1000, a), (0x2000, a), (0x3000, a), (0x4028, a)];
        assert_eq!(read.updates(), &a4[..]);
        assert!(!read.leaf_dirty);
        // A write: D too, in the leaf only.
        let write = ad(&m, 0x5000, W);
        assert_eq!(write.updates()[3], (0x4028, 0x60));
        assert!(write.leaf_dirty);
        // Bits already set are not listed; a dirty leaf stays dirty.
        for at in [0x1000, 0x2000, 0x3000] {
            *m.0.get_mut(&at).unwrap() |= 0x20;
        }
        *m.0.get_mut(&0x4028).unwrap() |= 0x60;
        let again = ad(&m, 0x5000, R);
        assert_eq!(again.updates(), &[]);
        assert!(again.leaf_dirty);
        // A 2 MiB leaf gets D at bit 6 too.
        assert_eq!(ad(&m, 0x20_0000, W).updates(), &[(0x3008, 0x60)]);
        // 32-bit format: the high half of a qword takes the bits at 37/38.
        let mut m32 = HashMap::new();
        m32.insert(0x1000, (0x2000 | 7) << 32); // PDE 1
        m32.insert(0x2000, 0x7000 | 7); // PTE 0
        let m32 = Mem(m32);
        let r32 = npt_regs(PG, 0, 0, 0x1000, 40).unwrap();
        let w = translate(|x| m32.read(x), &r32, 0x40_0000, W).unwrap().ad;
        assert_eq!(w.updates(), &[(0x1000, a << 32), (0x2000, 0x60)]);
        // A failed walk sets nothing (no Translation).
        assert!(translate(|x| m.read(x), &r, 0x8000, R).is_err());
    }

    #[test]
    fn exitinfo1_stage_bits() {
        let f = WalkFault::Npf(pf::P | pf::W | U);
        assert_eq!(f.exitinfo1(Stage::Final), Some(0x1_0000_0007));
        assert_eq!(f.exitinfo1(Stage::GuestTables), Some(0x2_0000_0007));
        assert_eq!(Stage::from_exitinfo1(0x1_0000_0006), Some(Stage::Final));
        assert_eq!(
            Stage::from_exitinfo1(0x2_0000_0006),
            Some(Stage::GuestTables)
        );
        assert_eq!(Stage::from_exitinfo1(0x6), None);
        let a = NestedAccess::from_exitinfo1(0x1_0000_0014);
        assert_eq!(a, X);
        assert_eq!(NestedAccess::from_exitinfo1(0x2_0000_0007), W);
    }

    #[test]
    fn pae_format() {
        let mut m = HashMap::new();
        m.insert(0x1000, 0x2000 | 1); // PDPTE 0
        m.insert(0x1008, 0x2000 | 1 | 1 << 2); // PDPTE 1: reserved bit 2
        m.insert(0x2000, 0x20_0000 | 0x87); // PDE 0: 2 MiB
        m.insert(0x2008, 0x3000 | 5); // PDE 1 -> PT, read-only
        m.insert(0x3000, 0x7000 | 7);
        let m = Mem(m);
        let r = npt_regs(PG, PAE, 1 << 11, 0x1000, 40).unwrap();
        assert_eq!(r.mode(), Mode::Pae);
        assert_eq!(t(&m, &r, 0x1234, W), ok(0x20_1234, page::M2, true, true));
        assert_eq!(t(&m, &r, 0x20_0010, R), ok(0x7010, page::K4, false, true));
        assert_eq!(
            t(&m, &r, 0x20_0010, W),
            Err(WalkFault::Npf(pf::P | pf::W | U))
        );
        assert_eq!(
            t(&m, &r, 0x4000_0000, R),
            Err(WalkFault::Npf(pf::P | U | pf::RSVD)),
            "PDPTE reserved"
        );
        assert_eq!(t(&m, &r, 0x8000_0000, X), Err(WalkFault::Npf(U | pf::ID)));
    }

    #[test]
    fn legacy_32_bit_format() {
        let mut m = HashMap::new();
        let put = |m: &mut HashMap<u64, u64>, at: u64, v: u64| {
            let q = m.entry(at & !7).or_insert(0);
            let sh = (at & 4) * 8;
            *q = (*q & !(0xffff_ffffu64 << sh)) | (v << sh);
        };
        put(&mut m, 0x1000, 0x2000 | 7);
        put(&mut m, 0x1004, 0x80_0000 | 0x87); // 4 MiB
        put(&mut m, 0x1008, 1 << 13 | 0x85); // 4 MiB at 4G (PSE-36), read-only
        put(&mut m, 0x100c, 1 << 21 | 0x87); // bit 21 reserved
        put(&mut m, 0x2000 + 4, 0x7000 | 7);
        let m = Mem(m);
        let r = npt_regs(PG, PSE, 1 << 11, 0x1000, 40).unwrap();
        assert_eq!(t(&m, &r, 0x1010, X), ok(0x7010, page::K4, true, true));
        assert_eq!(t(&m, &r, 0x40_0010, W), ok(0x80_0010, page::M4, true, true));
        assert_eq!(
            t(&m, &r, 0x80_0010, R),
            ok(0x1_0000_0010, page::M4, false, true)
        );
        assert_eq!(
            t(&m, &r, 0xC0_0000, R),
            Err(WalkFault::Npf(pf::P | U | pf::RSVD))
        );
        // No NX in this format: no ID even with EFER.NXE.
        assert_eq!(t(&m, &r, 0x2000, X), Err(WalkFault::Npf(U)));
        assert!(npt_regs(0, 0, 0, 0x1000, 40).is_none(), "paging off");
    }

    fn arb_entry() -> impl Strategy<Value = u64> {
        // Small tables in the first 64 KiB, so walks chain; mostly
        // present with every right, else random flags (P, W, U, PS), NX,
        // and sometimes a reserved bit.
        (
            0u64..16,
            any::<u8>(),
            0u8..6,
            prop::bool::ANY,
            prop::sample::select(std::vec![
                0u64,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                1 << 13,
                1 << 20,
                1 << 45,
                1 << 63
            ]),
        )
            .prop_map(|(frame, flags, bias, nx, extra)| {
                let (frame, flags) = match bias {
                    0 => (frame, u64::from(flags & 0x87)),
                    // A large page (at 0: aligned) where PS counts.
                    1 => (0, 0x87),
                    _ => (frame, 7),
                };
                (frame << 12) | flags | if nx { 1 << 63 } else { 0 } | extra
            })
    }

    /// Puts `chain` along the path a walk of `gpa` takes from 0x1000 (where
    /// nothing is there yet), so most walks go deep.
    fn fill_path(m: &mut HashMap<u64, u64>, mode: u8, gpa: u64, chain: &[u64]) {
        let mut put = |at: u64, e: u64| *m.entry(at).or_insert(e);
        match mode {
            0 | 1 => {
                let (mut table, top, g) = if mode == 0 {
                    (0x1000, 4u8, gpa)
                } else {
                    let g = gpa & 0xffff_ffff;
                    // A PDPTE has no rights bits (they are reserved).
                    let e = if chain[0] & 7 == 7 {
                        chain[0] & !0x1C6
                    } else {
                        chain[0]
                    };
                    let pdpte = put(0x1000 + ((g >> 30) & 3) * 8, e);
                    (pdpte & ADDR, 2, g)
                };
                for (i, level) in (1..=top).rev().enumerate() {
                    let at = table + ((g >> (12 + 9 * u32::from(level - 1))) & 511) * 8;
                    table = put(at, chain[i + 1]) & ADDR;
                }
            }
            _ => {
                let g = gpa & 0xffff_ffff;
                let mut put32 = |at: u64, e: u64| {
                    let q = m.entry(at & !7).or_insert(0);
                    let sh = (at & 4) * 8;
                    if (*q >> sh) & 0xffff_ffff == 0 {
                        *q |= (e & 0xffff_ffff) << sh;
                    }
                    (*q >> sh) & 0xffff_ffff
                };
                let pde = put32(0x1000 + (g >> 22) * 4, chain[0]);
                put32((pde & 0xffff_f000) + ((g >> 12) & 0x3ff) * 4, chain[1]);
            }
        }
    }

    proptest! {
        /// The walk agrees with the guest walker of svm::walk for a user
        /// access (the oracle): same address, same error code.
        #[test]
        fn agrees_with_guest_walker(
            entries in prop::collection::vec((0u64..16 * 512, arb_entry()), 0..200),
            chain in prop::collection::vec(arb_entry(), 5),
            gpa in 0u64..(1 << 47),
            write: bool,
            fetch: bool,
            mode in 0u8..3,
        ) {
            let mut m = HashMap::new();
            fill_path(&mut m, mode, gpa, &chain);
            for (slot, e) in entries {
                m.entry(slot * 8).or_insert(e);
            }
            let m = Mem(m);
            let (cr4, efer) = match mode {
                0 => (PAE, LMA_NXE),
                1 => (PAE, 1 << 11),
                _ => (PSE, 0),
            };
            let r = npt_regs(PG, cr4, efer, 0x1000, 40).unwrap();
            let a = NestedAccess { write, fetch };
            let mine = t(&m, &r, gpa, a);
            let theirs = translate_mode(|x| m.read(x), &r, gpa, Access { write, fetch, user: true });
            match (mine, theirs) {
                (Ok(tr), Ok(pa)) => {
                    prop_assert_eq!(tr.l1_pa, pa);
                    prop_assert!(tr.rights.allow(a));
                }
                (Err(WalkFault::Npf(c)), Err(Failure::PageFault(c2))) => prop_assert_eq!(c, c2),
                (Err(WalkFault::Unreadable(x)), Err(Failure::OutsideMemory(y))) => prop_assert_eq!(x, y),
                (a, b) => prop_assert!(false, "{:?} vs {:?}", a, b),
            }
        }
    }
}
