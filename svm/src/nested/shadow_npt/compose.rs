//! Composing L1's nested walk ([`super::walk`]) with L0's mapping of L1's
//! memory: the shadow entry to install for an L2-physical address, the
//! #NPF L1 must see, or an access L0 handles itself.
//!
//! A shadow entry never allows more than either side (rights are the
//! intersection), never spans more than either side's page (the smaller
//! size, cut to the sizes a long-mode table can map), and only ever maps
//! L1's RAM as L0 maps it: an L1-physical address L0 does not back with
//! RAM (unbacked memory, an MMIO page such as the local APIC, beyond
//! MAXPHYADDR) is never mapped, so L0 sees each access and emulates it
//! as L1 would see it; hypervisor memory is unreachable by construction.

use super::walk::{page, translate, NestedAccess, Rights, Stage, Translation, WalkFault};
use crate::walk::PagingRegs;

/// L0's mapping of one L1-physical address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L0Map {
    /// L1's RAM.
    Ram {
        /// The host-physical address of the L1-physical address asked
        /// (page base plus offset).
        hpa: u64,
        /// log2 of L0's page size there.
        page_bits: u8,
        /// What L0 allows there.
        rights: Rights,
    },
    /// Not L1's RAM: never mapped in a shadow table.
    NotRam,
}

/// One leaf of the shadow table: L2-physical page to host-physical page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShadowEntry {
    /// The gPA of the page (aligned to its size).
    pub gpa: u64,
    /// The host-physical address of the page (aligned to its size).
    pub hpa: u64,
    /// log2 of the size: 12, 21 or 30.
    pub page_bits: u8,
    /// What L2 may do there (user accesses only, as nested ones are).
    pub rights: Rights,
}

impl ShadowEntry {
    /// Whether the entry maps `gpa`.
    pub const fn covers(&self, gpa: u64) -> bool {
        gpa >> self.page_bits == self.gpa >> self.page_bits
    }

    /// The host-physical address of `gpa` (which it covers).
    pub const fn hpa_of(&self, gpa: u64) -> u64 {
        self.hpa | (gpa & ((1 << self.page_bits) - 1))
    }
}

/// What to do with an L2 access to a gPA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Install this entry and resume L2.
    Map(ShadowEntry),
    /// L1's table refuses: #VMEXIT(NPF) to L1 with these (APM 15.25.6).
    Reflect {
        /// The error code and the stage bit.
        exitinfo1: u64,
        /// The L2-physical address.
        exitinfo2: u64,
    },
    /// L1's table allows it but the L1-physical address is not L1's RAM,
    /// or L0's rights refuse the access: L0 emulates the access at
    /// `l1_pa` (MMIO, unbacked memory) as it would for L1 itself.
    L0 {
        /// The L1-physical address of the access.
        l1_pa: u64,
    },
    /// An entry of L1's table is where L0 cannot read it: L0's business.
    L0Table {
        /// The L1-physical address of the entry.
        at: u64,
    },
}

/// The largest long-mode leaf size (4 KiB, 2 MiB, 1 GiB) not above
/// `bits` (a 4 MiB page of the 32-bit format is mapped by 2 MiB ones).
pub const fn shadow_page_bits(bits: u8) -> u8 {
    if bits >= page::G1 {
        page::G1
    } else if bits >= page::M2 {
        page::M2
    } else {
        page::K4
    }
}

/// Composes a successful walk of `gpa` with L0's mapping of its
/// L1-physical address, for `access`. The caller makes the walk's A/D
/// updates (`l1.ad`) before installing the entry.
pub fn compose(gpa: u64, l1: &Translation, l0: L0Map, access: NestedAccess) -> Resolution {
    let L0Map::Ram {
        hpa,
        page_bits,
        rights,
    } = l0
    else {
        return Resolution::L0 { l1_pa: l1.l1_pa };
    };
    let mut rights = l1.rights.intersect(rights);
    if !rights.allow(access) {
        // L1 allows it (the walk passed), L0 does not: L0's fault.
        return Resolution::L0 { l1_pa: l1.l1_pa };
    }
    // A clean L1 leaf is mapped read-only, so the first write comes back
    // here and its walk sets D (APM 5.4.2).
    rights.write &= l1.ad.leaf_dirty;
    // Both sides map the whole aligned block of the smaller size around
    // the address contiguously, so it can be one shadow leaf.
    let bits = shadow_page_bits(l1.page_bits.min(page_bits));
    let mask = !((1u64 << bits) - 1);
    Resolution::Map(ShadowEntry {
        gpa: gpa & mask,
        hpa: hpa & mask,
        page_bits: bits,
        rights,
    })
}

/// Resolves L2's `access` to `gpa` at `stage`: walks L1's nested table
/// (`regs`, `read` as [`translate`] takes them), then composes with
/// `l0` (L0's mapping of an L1-physical address).
pub fn resolve(
    read: impl Fn(u64) -> Option<u64>,
    regs: &PagingRegs,
    gpa: u64,
    access: NestedAccess,
    stage: Stage,
    l0: impl Fn(u64) -> L0Map,
) -> Resolution {
    match translate(read, regs, gpa, access) {
        Ok(t) => compose(gpa, &t, l0(t.l1_pa), access),
        Err(WalkFault::Npf(code)) => Resolution::Reflect {
            exitinfo1: u64::from(code) | stage.bit(),
            exitinfo2: gpa,
        },
        Err(WalkFault::Unreadable(at)) => Resolution::L0Table { at },
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::nested::shadow_npt::walk::tests::{long_regs, long_tables};
    use crate::nested::shadow_npt::walk::AdBits;
    use crate::walk::pf;
    use proptest::prelude::*;

    const RW: Rights = Rights::ALL;
    const RO: Rights = Rights {
        write: false,
        exec: true,
    };
    const NX: Rights = Rights {
        write: true,
        exec: false,
    };
    pub(crate) const HOST: u64 = 0x1_0000_0000;

    /// L0's view of L1: RAM 0..16M at HOST + pa, 2 MiB pages below 8M,
    /// 4 KiB pages above, read-only 12M..13M, no-execute 14M..16M;
    /// 3G..3.75G in 2 MiB pages at 256G; 4G..5G a 1 GiB page at 512G; the
    /// rest (the APIC page included) not RAM.
    pub(crate) fn l0(pa: u64) -> L0Map {
        let ram = |hpa, page_bits, rights| L0Map::Ram {
            hpa,
            page_bits,
            rights,
        };
        match pa {
            0..0x80_0000 => ram(HOST + pa, page::M2, RW),
            0xC0_0000..0xD0_0000 => ram(HOST + pa, page::K4, RO),
            0xE0_0000..0x100_0000 => ram(HOST + pa, page::K4, NX),
            0x80_0000..0xC0_0000 | 0xD0_0000..0xE0_0000 => ram(HOST + pa, page::K4, RW),
            0xC000_0000..0xF000_0000 => ram(0x40_0000_0000 + pa - 0xC000_0000, page::M2, RW),
            0x1_0000_0000..0x1_4000_0000 => ram(0x80_0000_0000 + pa - 0x1_0000_0000, page::G1, RW),
            _ => L0Map::NotRam,
        }
    }

    const R: NestedAccess = NestedAccess::READ;
    const W: NestedAccess = NestedAccess::WRITE;
    const X: NestedAccess = NestedAccess::FETCH;

    pub(crate) fn tables() -> crate::nested::shadow_npt::walk::tests::Mem {
        let mut m = long_tables();
        m.0.insert(0x3040, 0x80_0000 | 0x87); // PD[8]: 2M onto L0's 4K pages
        m.0.insert(0x3048, 0xC0_0000 | 0x87); // PD[9]: 2M onto L0's read-only
        m.0.insert(0x3050, 0xE0_0000 | 0x87); // PD[10]: 2M onto L0's NX
        m.0.insert(0x3058, 0xFEE0_0000 | 0x87); // PD[11]: the APIC page region
        m.0.insert(0x3060, 0x1E0_0000 | 0x87); // PD[12]: beyond L1's RAM
        m.0.insert(0x2020, 0x87); // PDPT[4]: 1 GiB at 0 onto L0's 2M pages
        m.0.insert(0x2028, 0x1_0000_0000 | 0x87); // PDPT[5]: 1 GiB at 4G
                                                  // Accessed and dirty everywhere (clean leaves: `clean_leaves_map_read_only`).
        for e in m.0.values_mut() {
            if *e & 1 != 0 {
                *e |= 0x60;
            }
        }
        m
    }

    fn res(gpa: u64, a: NestedAccess, stage: Stage) -> Resolution {
        let m = tables();
        resolve(|x| m.read(x), &long_regs(0x1000), gpa, a, stage, l0)
    }

    fn map(gpa: u64, hpa: u64, page_bits: u8, rights: Rights) -> Resolution {
        Resolution::Map(ShadowEntry {
            gpa,
            hpa,
            page_bits,
            rights,
        })
    }

    #[test]
    fn page_size_is_the_smaller_side() {
        let f = Stage::Final;
        // L1 4K x L0 2M.
        assert_eq!(res(0x5123, R, f), map(0x5000, HOST + 0x7000, page::K4, RW));
        // L1 2M x L0 2M.
        let two = map(0x20_0000, HOST + 0x60_0000, page::M2, RW);
        assert_eq!(res(0x20_1234, W, f), two);
        // L1 2M x L0 4K.
        let e = map(0x101_2000, HOST + 0x81_2000, page::K4, RW);
        assert_eq!(res(0x101_2345, X, f), e);
        // L1 1G x L0 1G.
        let g = map(0x1_4000_0000, 0x80_0000_0000, page::G1, RW);
        assert_eq!(res(0x1_4012_3456, R, f), g);
        // L1 1G x L0 2M (at 3G).
        let e = map(0x4020_0000, 0x40_0020_0000, page::M2, RW);
        assert_eq!(res(0x4032_3456, R, f), e);
        // L1 1G x L0 2M.
        let e = map(0x1_0060_0000, HOST + 0x60_0000, page::M2, RW);
        assert_eq!(res(0x1_0061_2345, R, f), e);
    }

    #[test]
    fn rights_are_the_intersection() {
        let f = Stage::Final;
        // L1 read-only x L0 RW.
        assert_eq!(res(0x6000, R, f), map(0x6000, HOST + 0x8000, page::K4, RO));
        // L1 RW x L0 read-only: reads map read-only, writes are L0's.
        let e = map(0x120_0000 + 0x3000, HOST + 0xC0_3000, page::K4, RO);
        assert_eq!(res(0x120_3000, R, f), e);
        assert_eq!(res(0x120_3000, W, f), Resolution::L0 { l1_pa: 0xC0_3000 });
        // L1 NX x L0 X and L1 X x L0 NX: no execute either way.
        let e = map(0x60_0000, HOST + 0xA0_0000, page::K4, NX);
        assert_eq!(res(0x60_0000, W, f), e);
        let e = map(0x140_0000, HOST + 0xE0_0000, page::K4, NX);
        assert_eq!(res(0x140_0000, R, f), e);
        assert_eq!(res(0x140_0000, X, f), Resolution::L0 { l1_pa: 0xE0_0000 });
    }

    #[test]
    fn l1_faults_are_reflected_with_exact_exitinfo() {
        let r = |e1, e2| Resolution::Reflect {
            exitinfo1: e1,
            exitinfo2: e2,
        };
        let (f, g) = (Stage::Final, Stage::GuestTables);
        let u = u64::from(pf::U);
        let (p, w, rsvd, id) = (
            u64::from(pf::P),
            u64::from(pf::W),
            u64::from(pf::RSVD),
            u64::from(pf::ID),
        );
        // Not present (final read; guest-table write).
        assert_eq!(res(0x8123, R, f), r(1 << 32 | u, 0x8123));
        assert_eq!(res(0x8123, W, g), r(2 << 32 | u | w, 0x8123));
        // Write to read-only; fetch from NX; supervisor-only.
        assert_eq!(res(0x6008, W, f), r(1 << 32 | p | w | u, 0x6008));
        assert_eq!(res(0x60_0010, X, f), r(1 << 32 | p | u | id, 0x60_0010));
        assert_eq!(res(0x80_0000, R, g), r(2 << 32 | p | u, 0x80_0000));
        // Reserved bits.
        assert_eq!(res(0x7000, R, f), r(1 << 32 | p | u | rsvd, 0x7000));
        // A table L0 cannot read.
        assert_eq!(
            res(0x200_0000_0000, R, f),
            Resolution::L0Table { at: 0x1_0000_0000 }
        );
    }

    #[test]
    fn clean_leaves_map_read_only() {
        let m = crate::nested::shadow_npt::walk::tests::long_tables();
        let r = long_regs(0x1000);
        let res = |gpa, a| resolve(|x| m.read(x), &r, gpa, a, Stage::Final, l0);
        // A read of a clean writable leaf: read-only, so a write comes back.
        assert_eq!(res(0x5123, R), map(0x5000, HOST + 0x7000, page::K4, RO));
        // The write sets D (the caller's update) and maps writable.
        assert_eq!(res(0x5123, W), map(0x5000, HOST + 0x7000, page::K4, RW));
    }

    #[test]
    fn nothing_outside_l1_ram_is_mapped() {
        let f = Stage::Final;
        // The APIC page and unbacked memory: L0 emulates at L1-physical.
        let apic = res(0x160_0000 + 0x30, W, f);
        assert_eq!(apic, Resolution::L0 { l1_pa: 0xFEE0_0030 });
        let beyond = res(0x180_0000, R, f);
        assert_eq!(beyond, Resolution::L0 { l1_pa: 0x1E0_0000 });
        // L1's 1G page at 3G is partly L0's hole; L1's 1G page at 0
        // extends beyond 16M: those parts are L0's.
        let hole = res(0x7EE0_0000, R, f);
        assert_eq!(hole, Resolution::L0 { l1_pa: 0xFEE0_0000 });
        assert_eq!(
            res(0x1_0100_0000, R, f),
            Resolution::L0 { l1_pa: 0x100_0000 }
        );
    }

    fn arb_rights() -> impl Strategy<Value = Rights> {
        (any::<bool>(), any::<bool>()).prop_map(|(write, exec)| Rights { write, exec })
    }

    proptest! {
        /// Any composition maps only what both sides map, the same way,
        /// with no more rights than either, in a page no larger than
        /// either; and it maps whenever both sides allow the access.
        #[test]
        fn composition_is_sound(
            l1_bits in prop::sample::select(std::vec![12u8, 21, 22, 30]),
            l0_bits in prop::sample::select(std::vec![12u8, 21, 30]),
            gpa_page in 0u64..(1 << 17),
            l1_page in 0u64..(1 << 17),
            h_page in 0u64..(1 << 17),
            off in any::<u64>(),
            dirty: bool,
            probe in any::<u64>(),
            r1 in arb_rights(),
            r0 in arb_rights(),
            write: bool,
            fetch: bool,
        ) {
            let off = off & ((1 << l1_bits) - 1);
            let gpa = (gpa_page << l1_bits) | off;
            let l1_base = l1_page << l1_bits;
            let l1_pa = l1_base | off;
            let h_base = h_page << l0_bits;
            let l1_map = |g: u64| l1_base + (g - (gpa - off));
            let l0_map = |p: u64| h_base + (p & ((1 << l0_bits) - 1));
            let a = NestedAccess { write, fetch };
            let mut ad = AdBits::default();
            ad.leaf_dirty = dirty || write;
            let t = Translation { l1_pa, page_bits: l1_bits, rights: r1, ad };
            let l0 = L0Map::Ram { hpa: l0_map(l1_pa), page_bits: l0_bits, rights: r0 };
            match compose(gpa, &t, l0, a) {
                Resolution::Map(e) => {
                    prop_assert!(e.page_bits <= l1_bits && e.page_bits <= l0_bits);
                    // Never wider than either side, and no narrower than both.
                    prop_assert!(!e.rights.write || (r1.write && r0.write));
                    prop_assert!(!e.rights.exec || (r1.exec && r0.exec));
                    prop_assert_eq!(e.rights.write, r1.write && r0.write && ad.leaf_dirty);
                    prop_assert_eq!(e.rights.exec, r1.exec && r0.exec);
                    prop_assert!(e.rights.allow(a));
                    prop_assert!(e.covers(gpa));
                    // Every address of the shadow page maps as the two
                    // sides map it.
                    let g = e.gpa | (probe & ((1 << e.page_bits) - 1));
                    prop_assert_eq!(e.hpa_of(g), l0_map(l1_map(g)));
                }
                Resolution::L0 { l1_pa: p } => {
                    prop_assert_eq!(p, l1_pa);
                    prop_assert!(!r1.intersect(r0).allow(a));
                }
                other => prop_assert!(false, "{:?}", other),
            }
            prop_assert_eq!(compose(gpa, &t, L0Map::NotRam, a), Resolution::L0 { l1_pa });
        }
    }
}
