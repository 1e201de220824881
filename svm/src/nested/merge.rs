//! The controls L2 runs with: L0's merged with L1's vmcb12.
//!
//! L0 must see every exit either of them wants: its own (to keep control of
//! the machine) and L1's (to reflect them, see [`super::route`]). So the
//! intercept vectors and the permission maps are unions. The interrupt
//! controls are not merged but filtered: L2 gets vmcb12's virtual-interrupt
//! state and nothing that would hand L1 control of physical interrupts or
//! of features L0 does not offer.

use super::map_view::MsrpmView;
use crate::int_ctl::IntCtl;
use crate::iopm::IOPM_SIZE;
use crate::msrpm::MSRPM_SIZE;
use crate::vmcb::ControlArea;

/// Intercepts for L2: the union of L0's and L1's (intercept_cr,
/// intercept_dr, intercept_exceptions, intercept_misc1/2/3). Writes them
/// into `out`.
///
/// Only those six words of `out` change. The caller still owes the clean
/// bits (clear [`crate::CleanBits::INTERCEPTS`]) and, when the union has
/// MSR_PROT / IOIO_PROT, the matching merged map ([`merge_msrpm`],
/// [`merge_iopm`]).
pub fn merge_intercepts(l0: &ControlArea, vmcb12: &ControlArea, out: &mut ControlArea) {
    out.intercept_cr = l0.intercept_cr | vmcb12.intercept_cr;
    out.intercept_dr = l0.intercept_dr | vmcb12.intercept_dr;
    out.intercept_exceptions = l0.intercept_exceptions | vmcb12.intercept_exceptions;
    out.intercept_misc1 = l0.intercept_misc1 | vmcb12.intercept_misc1;
    out.intercept_misc2 = l0.intercept_misc2 | vmcb12.intercept_misc2;
    out.intercept_misc3 = l0.intercept_misc3 | vmcb12.intercept_misc3;
}

/// The int_ctl bits L2 takes from vmcb12 unconditionally: the pending
/// virtual interrupt and the virtual TPR (APM 15.21.4).
const FROM_VMCB12: IntCtl = IntCtl::V_TPR_MASK
    .union(IntCtl::V_IRQ)
    .union(IntCtl::V_INTR_PRIO_MASK)
    .union(IntCtl::V_IGN_TPR)
    .union(IntCtl::V_INTR_VECTOR_MASK);

/// The int_ctl bits L2 takes from vmcb12 only when virtual GIF is offered
/// to L1 (APM 15.33.1 "Virtual GIF").
const VGIF_BITS: IntCtl = IntCtl::V_GIF.union(IntCtl::V_GIF_ENABLE);

/// int_ctl for L2 (APM 15.21): from vmcb12 only V_TPR, V_IRQ, V_INTR_PRIO,
/// V_IGN_TPR and V_INTR_VECTOR; V_INTR_MASKING always set (L0 keeps
/// physical interrupts); V_GIF and V_GIF_ENABLE from vmcb12 only when
/// `vgif_offered`; everything else (AVIC, vNMI, ...) clear.
///
/// V_INTR_MASKING is forced on whatever L1 asked for: with it, L2's
/// RFLAGS.IF and TPR gate only virtual interrupts, and physical ones are
/// governed by the host's IF at VMRUN, i.e. stay L0's (APM 15.21.1). An L1
/// that clears it is not emulated: L2's IF never masks L1's interrupts.
pub fn merge_int_ctl(vmcb12_int_ctl: u64, vgif_offered: bool) -> u64 {
    let mut keep = FROM_VMCB12;
    if vgif_offered {
        keep |= VGIF_BITS;
    }
    (vmcb12_int_ctl & keep.bits()) | IntCtl::V_INTR_MASKING.bits()
}

/// Union of two MSR permission maps into `out`: an access exits when
/// either L0 or L1 intercepts it (the same OR as
/// [`crate::msrpm::union_into`], into a third buffer).
///
/// Use it only when vmcb12 sets MSR_PROT. When L1 does not, none of L1's
/// map applies and L2 must run with L0's map alone: a union would make L0
/// take exits for MSRs nobody intercepts.
pub fn merge_msrpm(l0: &[u8; MSRPM_SIZE], l1: &[u8; MSRPM_SIZE], out: &mut [u8; MSRPM_SIZE]) {
    or_into(l0, l1, out);
}

/// Union of two I/O permission maps into `out`, wrap-around bits
/// (0x10000-0x10002) included. As for [`merge_msrpm`], use it only when
/// vmcb12 sets IOIO_PROT; otherwise run L2 with L0's map alone.
pub fn merge_iopm(l0: &[u8; IOPM_SIZE], l1: &[u8; IOPM_SIZE], out: &mut [u8; IOPM_SIZE]) {
    or_into(l0, l1, out);
}

/// Most distinct map bytes a set of [`MsrpmHoles`] may touch.
const MAX_HOLE_BYTES: usize = 8;

/// Where a set of MSRs has its intercept bits in an MSR permission map:
/// each map byte holding some of them, with the mask of their read and
/// write bits there. Built at compile time ([`MsrpmHoles::new`]) from
/// L0's pass-through list, so a nested VMRUN computes no bit position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsrpmHoles {
    /// (map byte, mask of the MSRs' bits in it), the first `len` used.
    bytes: [(u16, u8); MAX_HOLE_BYTES],
    len: usize,
}

impl MsrpmHoles {
    /// The bytes and masks of `msrs`' intercept bits (both of each: the
    /// read bit and the write bit after it, APM 15.11). An MSR outside
    /// the map's ranges is skipped: it cannot be a hole (with MSR_PROT it
    /// always exits). More than [`MAX_HOLE_BYTES`] bytes is a build error
    /// when used in a `const`.
    pub const fn new(msrs: &[u32]) -> Self {
        let mut holes = Self {
            bytes: [(0, 0); MAX_HOLE_BYTES],
            len: 0,
        };
        let mut i = 0;
        while i < msrs.len() {
            if let Some((byte, bit)) = crate::msrpm::bit_position(msrs[i]) {
                let mask = 3u8 << bit;
                let mut j = 0;
                while j < holes.len && holes.bytes[j].0 as usize != byte {
                    j += 1;
                }
                if j == holes.len {
                    assert!(holes.len < MAX_HOLE_BYTES, "too many MSRPM hole bytes");
                    holes.bytes[j] = (byte as u16, 0);
                    holes.len += 1;
                }
                holes.bytes[j].1 |= mask;
            }
            i += 1;
        }
        holes
    }

    /// The (map byte, bit mask) pairs.
    #[inline(always)]
    pub fn bytes(&self) -> &[(u16, u8)] {
        &self.bytes[..self.len]
    }
}

/// The MSRPM union when L0 intercepts every MSR except `holes` (the MSRs it
/// passes through): the union is then L0's map except at the holes' bits,
/// which follow L1 (`None`: L1 does not enable its map, so L0's 0 stays).
/// `out` must already hold L0's map; only the holes' bits are written, so
/// a nested VMRUN costs a few byte operations (one per map byte the holes
/// are in, [`MsrpmHoles`]) instead of an 8 KiB merge. Equals
/// [`merge_msrpm`] under that condition (tested). L1's map is read
/// through a [`MsrpmView`]: its bytes outside L1's RAM intercept.
///
/// Done at every nested VMRUN: the APM's clean bits say nothing about the
/// contents of L1's map, which L1 may rewrite at any time (KVM
/// `nested_svm_merge_msrpm` merges each VMRUN too).
#[inline(always)]
pub fn merge_msrpm_holes(
    l1: Option<&MsrpmView<'_>>,
    holes: &MsrpmHoles,
    out: &mut [u8; MSRPM_SIZE],
) {
    for &(byte, mask) in holes.bytes() {
        let byte = usize::from(byte);
        let l1_bits = l1.map_or(0, |m| m.byte(byte)) & mask;
        out[byte] = out[byte] & !mask | l1_bits;
    }
}

/// `out[i] = a[i] | b[i]`, eight bytes at a time (the kernel is built
/// without SIMD); backs [`merge_msrpm`] and [`merge_iopm`], whose sizes are
/// multiples of 8.
fn or_into<const N: usize>(a: &[u8; N], b: &[u8; N], out: &mut [u8; N]) {
    const { assert!(N.is_multiple_of(8), "maps are whole 64-bit words") };
    let words = out
        .chunks_exact_mut(8)
        .zip(a.chunks_exact(8))
        .zip(b.chunks_exact(8));
    for ((o, x), y) in words {
        let x = u64::from_ne_bytes(x.try_into().unwrap_or([0; 8]));
        let y = u64::from_ne_bytes(y.try_into().unwrap_or([0; 8]));
        o.copy_from_slice(&(x | y).to_ne_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iopm;
    use crate::msrpm;
    use proptest::prelude::*;
    use std::boxed::Box;

    /// The six intercept words as accessors, for table-driven tests.
    type Word = (&'static str, fn(&mut ControlArea) -> &mut u32);
    const WORDS: [Word; 6] = [
        ("cr", |c| &mut c.intercept_cr),
        ("dr", |c| &mut c.intercept_dr),
        ("exceptions", |c| &mut c.intercept_exceptions),
        ("misc1", |c| &mut c.intercept_misc1),
        ("misc2", |c| &mut c.intercept_misc2),
        ("misc3", |c| &mut c.intercept_misc3),
    ];

    #[test]
    fn intercepts_union_bit_by_bit() {
        // In every word: bit 0 L0 only, bit 1 L1 only, bit 2 both, bit 3
        // neither; and the same pattern at the top of the word.
        for (name, word) in WORDS {
            let mut l0 = ControlArea::new();
            let mut l1 = ControlArea::new();
            *word(&mut l0) = 0b0101 | (0b0101 << 28);
            *word(&mut l1) = 0b0110 | (0b0110 << 28);
            let mut out = ControlArea::new();
            *word(&mut out) = 0b1000 | (0b1000 << 28); // stale bit: overwritten
            merge_intercepts(&l0, &l1, &mut out);
            assert_eq!(*word(&mut out), 0b0111 | (0b0111 << 28), "{name}");
            // The other words stay empty.
            for (other, w) in WORDS {
                if other != name {
                    assert_eq!(*w(&mut out), 0, "{name} leaked into {other}");
                }
            }
        }
    }

    /// L0's own intercepts (#AC/#DB/#MC, NMI) survive whatever vmcb12 asks.
    #[test]
    fn l0_exceptions_and_nmi_kept_for_l2() {
        let mut l0 = ControlArea::new();
        l0.intercept_exceptions = crate::exception::L0_EXCEPTIONS.bits();
        l0.intercept_misc1 = crate::intercept::InterceptMisc1::NMI.bits();
        let vmcb12 = ControlArea::new();
        let mut out = ControlArea::new();
        merge_intercepts(&l0, &vmcb12, &mut out);
        assert_eq!(out.intercept_exceptions, (1 << 1) | (1 << 17) | (1 << 18));
        assert_eq!(out.intercept_misc1, 1 << 1);
    }

    #[test]
    fn merge_intercepts_touches_nothing_else() {
        let mut out = ControlArea::new();
        out.guest_asid = 7;
        out.tsc_offset = 0x1234;
        out.int_ctl = 0x55;
        out.msrpm_base_pa = 0x9000;
        let expected = {
            let mut e = out;
            e.intercept_misc1 = 1;
            e
        };
        let mut l0 = ControlArea::new();
        l0.intercept_misc1 = 1;
        l0.guest_asid = 99;
        let mut l1 = ControlArea::new();
        l1.tsc_offset = 5;
        merge_intercepts(&l0, &l1, &mut out);
        assert_eq!(out, expected);
    }

    proptest! {
        #[test]
        fn intercepts_are_the_or(a in any::<[u32; 6]>(), b in any::<[u32; 6]>()) {
            let mut l0 = ControlArea::new();
            let mut l1 = ControlArea::new();
            for (i, (_, word)) in WORDS.iter().enumerate() {
                *word(&mut l0) = a[i];
                *word(&mut l1) = b[i];
            }
            let mut out = ControlArea::new();
            merge_intercepts(&l0, &l1, &mut out);
            for (i, (_, word)) in WORDS.iter().enumerate() {
                prop_assert_eq!(*word(&mut out), a[i] | b[i]);
            }
        }
    }

    #[test]
    fn int_ctl_whitelist() {
        let allowed = IntCtl::V_TPR_MASK
            | IntCtl::V_IRQ
            | IntCtl::V_INTR_PRIO_MASK
            | IntCtl::V_IGN_TPR
            | IntCtl::V_INTR_VECTOR_MASK;
        assert_eq!(allowed.bits(), 0xFF_001F_01FF);
        let masking = IntCtl::V_INTR_MASKING.bits();

        // Every bit set: only the whitelist survives, masking forced.
        assert_eq!(merge_int_ctl(u64::MAX, false), allowed.bits() | masking);
        let with_vgif = allowed | IntCtl::V_GIF | IntCtl::V_GIF_ENABLE;
        assert_eq!(merge_int_ctl(u64::MAX, true), with_vgif.bits() | masking);

        // Nothing set: masking still forced.
        assert_eq!(merge_int_ctl(0, false), masking);
        assert_eq!(merge_int_ctl(0, true), masking);

        // Each dropped bit on its own.
        for dropped in [
            IntCtl::V_NMI,
            IntCtl::V_NMI_MASK,
            IntCtl::V_NMI_ENABLE,
            IntCtl::AVIC_ENABLE,
            IntCtl::X2AVIC_ENABLE,
            IntCtl::from_bits_retain(1 << 10),
            IntCtl::from_bits_retain(1 << 40),
            IntCtl::from_bits_retain(1 << 63),
        ] {
            assert_eq!(merge_int_ctl(dropped.bits(), true), masking, "{dropped:?}");
        }
        for gif in [IntCtl::V_GIF, IntCtl::V_GIF_ENABLE] {
            assert_eq!(merge_int_ctl(gif.bits(), false), masking, "{gif:?}");
            assert_eq!(merge_int_ctl(gif.bits(), true), gif.bits() | masking);
        }

        // A realistic request: vector 0x30 pending at priority 3, TPR 2.
        let req = IntCtl::V_IRQ
            .with_v_intr_vector(0x30)
            .with_v_intr_prio(3)
            .with_v_tpr(2);
        let got = IntCtl::from_bits_retain(merge_int_ctl(req.bits(), false));
        assert_eq!(got.v_intr_vector(), 0x30);
        assert_eq!(got.v_intr_prio(), 3);
        assert_eq!(got.v_tpr(), 2);
        assert!(got.contains(IntCtl::V_IRQ | IntCtl::V_INTR_MASKING));
    }

    #[test]
    fn msrpm_union_at_range_edges() {
        let mut l0 = Box::new([0u8; MSRPM_SIZE]);
        let mut l1 = Box::new([0u8; MSRPM_SIZE]);
        // L0 only, L1 only, both, at the first and last MSR of each range.
        let edges = [
            0x0000_0000,
            0x0000_1FFF,
            0xC000_0000,
            0xC000_1FFF,
            0xC001_0000,
            0xC001_1FFF,
        ];
        for msr in edges {
            msrpm::set_read_intercept(&mut l0, msr, true).unwrap();
            msrpm::set_write_intercept(&mut l1, msr, true).unwrap();
        }
        msrpm::set_write_intercept(&mut l0, 0xC000_0080, true).unwrap();
        msrpm::set_write_intercept(&mut l1, 0xC000_0080, true).unwrap();
        let mut out = Box::new([0xFFu8; MSRPM_SIZE]);
        merge_msrpm(&l0, &l1, &mut out);
        for msr in edges {
            assert!(msrpm::reads_intercepted(&out, msr), "{msr:#x}");
            assert!(msrpm::writes_intercepted(&out, msr), "{msr:#x}");
            // Neighbours inside the range stay clear.
            let inner = if msr & 0x1FFF == 0 { msr + 1 } else { msr - 1 };
            assert!(!msrpm::reads_intercepted(&out, inner), "{inner:#x}");
            assert!(!msrpm::writes_intercepted(&out, inner), "{inner:#x}");
        }
        assert!(msrpm::writes_intercepted(&out, 0xC000_0080));
        assert!(!msrpm::reads_intercepted(&out, 0xC000_0080));
        // Bit for bit the OR of the inputs, stale contents of `out` gone.
        for i in 0..MSRPM_SIZE {
            assert_eq!(out[i], l0[i] | l1[i], "byte {i:#x}");
        }
    }

    #[test]
    fn iopm_union_at_range_edges() {
        let mut l0 = Box::new([0u8; IOPM_SIZE]);
        let mut l1 = Box::new([0u8; IOPM_SIZE]);
        iopm::set_intercept(&mut l0, 0..=0, true);
        iopm::set_intercept(&mut l1, 0xFFFF..=0xFFFF, true);
        iopm::set_intercept(&mut l0, 0x80..=0x80, true);
        iopm::set_intercept(&mut l1, 0x80..=0x80, true);
        iopm::set_wrap_intercept(&mut l1, true);
        let mut out = Box::new([0xAAu8; IOPM_SIZE]);
        merge_iopm(&l0, &l1, &mut out);
        assert!(iopm::is_intercepted(&out, 0, 1));
        assert!(!iopm::is_intercepted(&out, 1, 1));
        assert!(iopm::is_intercepted(&out, 0xFFFF, 1));
        assert!(!iopm::is_intercepted(&out, 0xFFFE, 1));
        assert!(iopm::is_intercepted(&out, 0x80, 1));
        assert!(!iopm::is_intercepted(&out, 0x81, 2));
        // L1's wrap-around bits (bits 0-2 of byte 0x2000) survive.
        assert_eq!(out[0x2000], 0b111);
        assert!(out[0x2001..].iter().all(|&b| b == 0));
        for i in 0..IOPM_SIZE {
            assert_eq!(out[i], l0[i] | l1[i], "byte {i:#x}");
        }
    }

    /// The const table: one entry per map byte, both bits of each MSR.
    #[test]
    fn holes_are_grouped_by_byte() {
        const H: MsrpmHoles = MsrpmHoles::new(&[0xC000_0100, 0xC000_0101, 0xC000_0102]);
        assert_eq!(H.bytes(), &[(0x840, 0b0011_1111)]);
        let h = MsrpmHoles::new(&[0x10, 0xC000_0103, 0x4000_0000, 0x13, 0xC001_1FFF]);
        assert_eq!(
            h.bytes(),
            &[
                (0x4, 0b1100_0011),
                (0x840, 0b1100_0000),
                (0x17FF, 0b1100_0000)
            ]
        );
        let h = MsrpmHoles::new(&[0x13, 0x10]);
        assert_eq!(h.bytes(), &[(0x4, 0b1100_0011)]);
        assert_eq!(MsrpmHoles::new(&[]).bytes(), &[]);
    }

    proptest! {
        /// With L0 intercepting all but a few MSRs, the hole-only merge is
        /// the full union, for any L1 map.
        #[test]
        fn hole_merge_equals_the_full_union(l1_bytes in proptest::collection::vec(any::<u8>(), MSRPM_SIZE), enabled in any::<bool>()) {
            let holes = [0xC000_0100u32, 0xC000_0101, 0xC000_0102, 0x10, 0x1FFF, 0xC001_0000];
            let mut l0 = Box::new([0xFFu8; MSRPM_SIZE]);
            for &msr in &holes {
                msrpm::set_read_intercept(&mut l0, msr, false).unwrap();
                msrpm::set_write_intercept(&mut l0, msr, false).unwrap();
            }
            let l1: Box<[u8; MSRPM_SIZE]> = l1_bytes.into_boxed_slice().try_into().unwrap();
            let mut full = Box::new([0u8; MSRPM_SIZE]);
            if enabled {
                merge_msrpm(&l0, &l1, &mut full);
            } else {
                full.copy_from_slice(&l0[..]);
            }
            let mut holes_only = l0.clone();
            let view = MsrpmView::full(&l1);
            merge_msrpm_holes(enabled.then_some(&view), &MsrpmHoles::new(&holes), &mut holes_only);
            prop_assert!(full[..] == holes_only[..]);
        }

        /// A map partly or wholly outside L1's RAM: the holes' bits follow
        /// L1's bytes in RAM and intercept outside it (all-ones).
        #[test]
        fn hole_merge_outside_ram(in_ram in 0usize..=MSRPM_SIZE, fill in any::<u8>()) {
            let holes = [0x10u32, 0xC000_0100, 0xC000_0102, 0xC001_0000];
            let ram = std::vec![fill; in_ram];
            let view = MsrpmView::in_ram(&ram, 0);
            let mut expected_l1 = Box::new([0xFFu8; MSRPM_SIZE]);
            expected_l1[..in_ram].fill(fill);
            let mut l0 = Box::new([0xFFu8; MSRPM_SIZE]);
            for &msr in &holes {
                msrpm::set_read_intercept(&mut l0, msr, false).unwrap();
                msrpm::set_write_intercept(&mut l0, msr, false).unwrap();
            }
            let mut full = Box::new([0u8; MSRPM_SIZE]);
            merge_msrpm(&l0, &expected_l1, &mut full);
            let mut holes_only = l0.clone();
            merge_msrpm_holes(Some(&view), &MsrpmHoles::new(&holes), &mut holes_only);
            prop_assert!(full[..] == holes_only[..]);
        }
    }
}
