//! When L1's changes to its nested table must reach the shadow table.
//!
//! The shadow table is a cache of L1's nested translations, as the CPU's
//! TLB is (APM Vol. 2, 15.16: the TLB caches guest-physical translations
//! per ASID, and the hypervisor flushes them through TLB_CONTROL or
//! INVLPGA). L1's tables are not write-protected, so, as with a real TLB,
//! a change L1 makes takes effect when L1 flushes: the shadow is dropped
//! whenever a flush of L2's ASID could have removed one of its entries,
//! and whenever what it was built from (nCR3, ASID, the format L1's
//! paging mode selects at VMRUN, APM 15.25.4) changes. Dropping is always
//! correct (entries are rebuilt on demand); keeping is only done when no
//! flush of L2's translations happened. KVM is stricter still (it syncs
//! its write-protected shadow on every nested VMRUN,
//! `nested_svm_transition_tlb_flush`).

use crate::int_ctl::TlbControl;
use crate::walk::{Mode, PagingRegs};

/// What a shadow table was built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Context {
    /// vmcb12's nCR3.
    pub ncr3: u64,
    /// vmcb12's ASID (L2's).
    pub asid: u32,
    /// The nested table format (L1's paging mode at VMRUN).
    pub mode: Mode,
    /// L1's EFER.NXE: whether NX counts (or is reserved).
    pub nxe: bool,
    /// The MAXPHYADDR the reserved bits follow.
    pub max_phys_bits: u8,
}

impl Context {
    /// The context of a walk with `regs` ([`super::walk::npt_regs`]) for
    /// L2's `asid`. CR0.WP and SMEP are left out: nested accesses are
    /// user accesses, which they do not concern.
    pub fn new(regs: &PagingRegs, asid: u32) -> Self {
        Self {
            ncr3: regs.cr3,
            asid,
            mode: regs.mode(),
            nxe: regs.efer & (1 << 11) != 0,
            max_phys_bits: regs.max_phys_bits,
        }
    }
}

/// What to do with the shadow table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Keep every entry.
    Keep,
    /// Drop every entry (and rebuild on demand).
    DropAll,
    /// Replace the entry for this gPA by a fresh walk.
    RefreshOne(u64),
}

/// At L1's VMRUN of an L2 with nested paging: `prev` is what the shadow
/// table holds (`None`: nothing yet), `next` what this VMRUN asks for,
/// `tlb_control` vmcb12's TLB_CONTROL byte.
pub fn on_vmrun(prev: Option<&Context>, next: &Context, tlb_control: u8) -> Decision {
    let Some(prev) = prev else {
        return Decision::DropAll;
    };
    if prev != next {
        // Another table, another format or another ASID (whose TLB entries
        // L1 has not necessarily kept in step with these tables).
        return Decision::DropAll;
    }
    match TlbControl::from_u8(tlb_control) {
        Some(TlbControl::DoNothing) => Decision::Keep,
        // All ASIDs, this ASID, this ASID's non-global entries: nested
        // translations are never global, so each removes them (APM 15.16).
        Some(_) => Decision::DropAll,
        // A reserved encoding: flushing more than asked is allowed.
        None => Decision::DropAll,
    }
}

/// At L1's INVLPGA of a linear address in `asid`, the shadow table being
/// L2's of `shadow_asid`. INVLPGA removes the TLB's translation of one
/// linear address, which ends in a gPA L0 cannot know without L2's own
/// page tables (not the ones current at the INVLPGA): the whole shadow of
/// that ASID is dropped. Another ASID's, or the host's (0), keep it.
pub fn on_invlpga(shadow_asid: u32, asid: u32) -> Decision {
    if asid == shadow_asid && asid != 0 {
        Decision::DropAll
    } else {
        Decision::Keep
    }
}

/// Whether a [`Decision::DropAll`] at VMRUN is for a flush alone (the
/// table, format and ASID unchanged): then, instead of dropping every
/// entry, each may be checked against L1's current table
/// ([`WalkInputs`]) and only the changed ones dropped. The result is
/// the table fresh walks after the flush would build, without the #NPFs
/// (an L1 that flushes on every VMRUN, as kvm-unit-tests does, would
/// otherwise refault each page on every run; KVM likewise syncs its
/// shadow pages instead of zapping them, `kvm_mmu_sync_roots`).
pub fn flush_only(prev: Option<&Context>, next: &Context) -> bool {
    prev == Some(next)
}

/// The entries of L1's table one walk read: their L1-physical addresses
/// and, once the walk's A/D updates are made, their values. With the
/// [`Context`] they are the walk's whole input, so while every one still
/// holds its value a fresh walk gives the same translation and sets no
/// A/D bit: the shadow entry built from it may stay across a flush
/// ([`flush_only`]). One changed in any way (remapped, narrowed, not
/// present, an A or D bit L1 cleared) and the entry goes, to fault and
/// be rebuilt from L1's current table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalkInputs {
    at: [u64; 4],
    value: [u64; 4],
    len: u8,
}

impl WalkInputs {
    /// Records a read at `at` (the walk reads at most four entries; the
    /// 32-bit format's 4-byte ones are recorded by their 8-byte word).
    pub fn record(&mut self, at: u64) {
        let at = at & !7;
        let n = usize::from(self.len);
        if n < self.at.len() && !self.at[..n].contains(&at) {
            self.at[n] = at;
            self.len += 1;
        }
    }

    /// Takes the values the entries hold now (after the A/D updates).
    /// `false` if one cannot be read: the entry is then never kept.
    pub fn snapshot(&mut self, read: impl Fn(u64) -> Option<u64>) -> bool {
        for i in 0..usize::from(self.len) {
            match read(self.at[i]) {
                Some(v) => self.value[i] = v,
                None => return false,
            }
        }
        true
    }

    /// Whether every entry still holds its snapshot value.
    pub fn unchanged(&self, read: impl Fn(u64) -> Option<u64>) -> bool {
        let n = usize::from(self.len);
        n > 0 && (0..n).all(|i| read(self.at[i]) == Some(self.value[i]))
    }
}

/// After a #NPF on the shadow table for `gpa` that a fresh walk resolved
/// to a mapping: the CPU re-walks a faulting translation instead of
/// trusting a stale one, so the entry is replaced (L1 may have widened
/// its rights without a flush, which needs none on real hardware).
pub fn on_npf_mapped(gpa: u64) -> Decision {
    Decision::RefreshOne(gpa)
}

/// When L0 changes its own mapping of L1's memory (e.g. a page becomes an
/// MMIO page): shadow entries hold L0's old mapping and no reverse map
/// says which, so all go.
pub fn on_l0_change() -> Decision {
    Decision::DropAll
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(ncr3: u64, asid: u32) -> Context {
        Context {
            ncr3,
            asid,
            mode: Mode::Long,
            nxe: true,
            max_phys_bits: 40,
        }
    }

    #[test]
    fn flush_only_needs_the_same_context() {
        let a = ctx(0x1000, 1);
        assert!(flush_only(Some(&a), &a));
        assert!(!flush_only(None, &a));
        assert!(!flush_only(Some(&a), &ctx(0x2000, 1)));
        assert!(!flush_only(Some(&a), &ctx(0x1000, 2)));
    }

    mod revalidate {
        use super::super::*;
        use crate::nested::shadow_npt::walk::tests::{long_regs, long_tables, Mem};
        use crate::nested::shadow_npt::walk::{translate, NestedAccess};
        use core::cell::Cell;

        /// A fault's walk of `gpa` (A/D set as the kernel does) and its
        /// inputs, snapshot taken.
        fn walk(m: &mut Mem, gpa: u64, access: NestedAccess) -> WalkInputs {
            let r = long_regs(0x1000);
            let rec = Cell::new(WalkInputs::default());
            let read = |a| {
                let mut w = rec.get();
                w.record(a);
                rec.set(w);
                m.read(a)
            };
            let t = translate(read, &r, gpa, access).unwrap();
            for &(at, bits) in t.ad.updates() {
                *m.0.entry(at).or_insert(0) |= bits;
            }
            let mut w = rec.get();
            assert!(w.snapshot(|a| m.read(a)));
            w
        }

        #[test]
        fn unchanged_entries_stay() {
            let mut m = long_tables();
            for (gpa, access, n) in [
                (0x5123, NestedAccess::READ, 4),
                (0x20_1234, NestedAccess::WRITE, 3),
                (0x4012_3456, NestedAccess::FETCH, 2),
            ] {
                let w = walk(&mut m, gpa, access);
                assert_eq!(usize::from(w.len), n, "{gpa:#x}");
                assert!(w.unchanged(|a| m.read(a)), "{gpa:#x} {access:?}");
            }
        }

        #[test]
        fn a_changed_input_drops_the_entry() {
            let mut m = long_tables();
            let w = walk(&mut m, 0x5123, NestedAccess::WRITE);
            let pte = 0x4000 + 5 * 8;
            let old = m.0[&pte];
            for (new, why) in [
                ((old & !0xF_F000) | 0xB000, "remapped"),
                (old & !2, "read-only"),
                (0, "not present"),
                (old & !0x20, "A cleared"),
                (old & !0x40, "D cleared"),
            ] {
                m.0.insert(pte, new);
                assert!(!w.unchanged(|a| m.read(a)), "{why}");
            }
            m.0.insert(pte, old);
            assert!(w.unchanged(|a| m.read(a)), "restored");
            // Another entry of the same table: not an input.
            m.0.insert(0x4000 + 9 * 8, 0x1234_5007);
            assert!(w.unchanged(|a| m.read(a)));
            // A table entry on the way (the PML4E).
            *m.0.get_mut(&0x1000).unwrap() ^= 1 << 2;
            assert!(!w.unchanged(|a| m.read(a)), "PML4E");
            // Unreadable now: gone.
            assert!(!w.unchanged(|_| None));
            assert!(!WalkInputs::default().unchanged(|a| m.read(a)), "no walk");
        }

        #[test]
        fn record_keeps_four_distinct_words() {
            let mut w = WalkInputs::default();
            for a in [0x1000, 0x1004, 0x2008, 0x300c, 0x4000, 0x5000] {
                w.record(a);
            }
            assert_eq!(
                &w.at[..usize::from(w.len)],
                &[0x1000, 0x2008, 0x3008, 0x4000]
            );
        }
    }

    #[test]
    fn vmrun_keeps_only_an_unchanged_unflushed_context() {
        let a = ctx(0x1000, 1);
        assert_eq!(on_vmrun(None, &a, 0), Decision::DropAll, "first build");
        assert_eq!(on_vmrun(Some(&a), &a, 0), Decision::Keep);
        for flush in [1, 3, 7] {
            assert_eq!(on_vmrun(Some(&a), &a, flush), Decision::DropAll, "{flush}");
        }
        assert_eq!(on_vmrun(Some(&a), &a, 2), Decision::DropAll, "reserved");
        assert_eq!(on_vmrun(Some(&a), &ctx(0x2000, 1), 0), Decision::DropAll);
        assert_eq!(on_vmrun(Some(&a), &ctx(0x1000, 2), 0), Decision::DropAll);
        let pae = Context {
            mode: Mode::Pae,
            ..a
        };
        assert_eq!(on_vmrun(Some(&a), &pae, 0), Decision::DropAll);
        let no_nx = Context { nxe: false, ..a };
        assert_eq!(on_vmrun(Some(&a), &no_nx, 0), Decision::DropAll);
        let pse = Context {
            mode: Mode::Legacy32 { pse: true },
            ..a
        };
        let no_pse = Context {
            mode: Mode::Legacy32 { pse: false },
            ..a
        };
        assert_eq!(on_vmrun(Some(&pse), &no_pse, 0), Decision::DropAll);
    }

    #[test]
    fn context_ignores_what_nested_walks_ignore() {
        let regs = |cr0: u64, cr4: u64| PagingRegs {
            cr0,
            cr3: 0x1000,
            cr4,
            efer: (1 << 10) | (1 << 11),
            max_phys_bits: 40,
        };
        let pg = 1 << 31;
        let base = Context::new(&regs(pg, 1 << 5), 1);
        // CR0.WP and CR4.SMEP change nothing for user accesses.
        let wp_smep = Context::new(&regs(pg | 1 << 16, 1 << 5 | 1 << 20), 1);
        assert_eq!(on_vmrun(Some(&base), &wp_smep, 0), Decision::Keep);
        assert_eq!(base.mode, Mode::Long);
        assert!(base.nxe);
    }

    #[test]
    fn invlpga_and_others() {
        assert_eq!(on_invlpga(5, 5), Decision::DropAll);
        assert_eq!(on_invlpga(5, 6), Decision::Keep);
        assert_eq!(on_invlpga(5, 0), Decision::Keep);
        assert_eq!(on_npf_mapped(0x1234), Decision::RefreshOne(0x1234));
        assert_eq!(on_l0_change(), Decision::DropAll);
    }
}
