//! L0's share of the RDTSC/RDTSCP intercepts, as plain functions over the
//! two intercept words (the kernel's `vmm::tsc::prepare_entry` applies them
//! before every entry).
//!
//! L0 intercepts RDTSC and RDTSCP when it serves the TSC by exits (or hides
//! RDTSCP, which must then be #UD); otherwise the bits are L1's for its L2
//! (vmcb12's), plus RDTSC wherever vmcb12 asks for RDTSCP, since QEMU TCG
//! takes RDTSCP's exit from the RDTSC bit (docs/qemu-tcg.md).
//!
//! The fast path ([`unarmed_l2_misc1`]): while L0 has never wanted the
//! exits on this vCPU ("unarmed"), no VMCB of L1's holds L0's bits (the
//! base intercepts have none, and hsave is a copy of L1's controls), so an
//! L1 entry has nothing to change and an L2 entry, whose controls VMRUN
//! built as L1's | vmcb12's ([`crate::nested::merge`]), only needs the
//! RDTSCP quirk. Arming is sticky: once L0 has set its bits anywhere, every
//! entry takes the full computation ([`rdtsc_intercepts`]).

use crate::{InterceptMisc1, InterceptMisc2};

const RDTSC: u32 = InterceptMisc1::RDTSC.bits();
const RDTSCP: u32 = InterceptMisc2::RDTSCP.bits();

/// The intercept words `(misc1, misc2)` with L0's RDTSC/RDTSCP share set
/// (`on`) or cleared, keeping `keep`'s bits (vmcb12's while L2 runs).
pub fn rdtsc_intercepts(current: (u32, u32), on: bool, keep: (u32, u32)) -> (u32, u32) {
    if on {
        (current.0 | RDTSC, current.1 | RDTSCP)
    } else {
        (
            (current.0 & !RDTSC) | (keep.0 & RDTSC),
            (current.1 & !RDTSCP) | (keep.1 & RDTSCP),
        )
    }
}

/// What L2's misc1 must keep of vmcb12's: its RDTSC, and RDTSC for its
/// RDTSCP (the TCG quirk).
pub fn l2_keep(v12_misc1: u32, v12_misc2: u32) -> (u32, u32) {
    let quirk = if v12_misc2 & RDTSCP != 0 { RDTSC } else { 0 };
    (v12_misc1 | quirk, v12_misc2)
}

/// Unarmed, L2 entry: L2's misc1 (built as L1's | vmcb12's, L1's without
/// L0's bits) with RDTSC added for vmcb12's RDTSCP; misc2 is already right.
#[inline]
pub fn unarmed_l2_misc1(misc1: u32, v12_misc2: u32) -> u32 {
    if v12_misc2 & RDTSCP != 0 {
        misc1 | RDTSC
    } else {
        misc1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every combination of the two bits in each word, with other bits set
    /// or not.
    fn words() -> impl Iterator<Item = (u32, u32)> {
        (0..16u32).map(|i| {
            (
                if i & 1 != 0 { RDTSC } else { 0 } | if i & 4 != 0 { 0x10 } else { 0 },
                if i & 2 != 0 { RDTSCP } else { 0 } | if i & 8 != 0 { 0x1 } else { 0 },
            )
        })
    }

    #[test]
    fn on_sets_both_off_keeps_vmcb12s() {
        assert_eq!(
            rdtsc_intercepts((0x10, 0x1), true, (0, 0)),
            (0x10 | RDTSC, 0x1 | RDTSCP)
        );
        assert_eq!(
            rdtsc_intercepts((0x10 | RDTSC, RDTSCP), false, (0, 0)),
            (0x10, 0)
        );
        assert_eq!(
            rdtsc_intercepts((RDTSC, RDTSCP), false, (RDTSC, 0)),
            (RDTSC, 0)
        );
        assert_eq!(l2_keep(0, RDTSCP), (RDTSC, RDTSCP));
    }

    /// The fast path is the full computation whenever its premise holds:
    /// L1's words without L0's bits (unarmed), L2's built as L1's | vmcb12's.
    #[test]
    fn unarmed_fast_path_matches_the_full_computation() {
        for l1 in words() {
            let l1 = (l1.0 & !RDTSC, l1.1 & !RDTSCP);
            // L1 entry: nothing to change.
            assert_eq!(rdtsc_intercepts(l1, false, (0, 0)), l1);
            for v12 in words() {
                let l2 = (l1.0 | v12.0, l1.1 | v12.1);
                let full = rdtsc_intercepts(l2, false, l2_keep(v12.0, v12.1));
                assert_eq!(
                    (unarmed_l2_misc1(l2.0, v12.1), l2.1),
                    full,
                    "{l1:?} {v12:?}"
                );
            }
        }
    }

    /// Without the premise (L0's bit left in L1's words) the fast path is
    /// wrong: why arming must be sticky.
    #[test]
    fn l0_bits_left_behind_break_the_fast_path() {
        let l1 = (RDTSC, RDTSCP);
        let full = rdtsc_intercepts(l1, false, (0, 0));
        assert_ne!(full, l1);
    }
}
