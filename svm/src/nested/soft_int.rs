//! INT3 and INTO from L2 when L1 intercepts #BP or #OF.
//!
//! INT3 raises #BP and INTO (with RFLAGS.OF set) #OF: exceptions, which
//! L1 intercepts with its exception intercepts (APM 15.12), not the INTn
//! intercept, which is for `INT n` (APM 15.13.1?). QEMU TCG checks the
//! INTn intercept for all three (docs/qemu-tcg.md), so an L1's #BP/#OF
//! intercept never fires there. L0 therefore turns on the INTn intercept
//! for L2 whenever L1 intercepts #BP or #OF, and routes each INTn exit
//! from L2 by the instruction that caused it ([`route`]).

use crate::intercept::InterceptMisc1;
use crate::vmcb::ControlArea;

/// Vectors of the exceptions INT3 and INTO raise.
const BP: u8 = 3;
const OF: u8 = 4;

/// A software interrupt instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SoftInt {
    /// `CC`: #BP.
    Int3,
    /// `CE`: #OF when RFLAGS.OF is set (not in 64-bit mode).
    Into,
    /// `CD ib`: INT n.
    Int(u8),
}

/// Where an INTn exit from L2 goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SoftIntRoute {
    /// To L1 as the #VMEXIT of exception `vector` (its intercept is set):
    /// RIP at the instruction, NEXT_RIP past it, EXITINFO1 0.
    L1Exception(u8),
    /// To L1 as an INTn (SWINT) #VMEXIT: `INT n` with L1's INTn intercept.
    L1Swint,
    /// Delivered in L2: the software interrupt `vector`, returning past
    /// the instruction (L0 only intercepted it on L1's behalf).
    L2(u8),
}

/// The INTn intercept bit vmcb02 needs beyond L0's and L1's: set when
/// vmcb12 intercepts #BP or #OF (see the module docs), else 0.
pub fn intn_for_exceptions(vmcb12: &ControlArea) -> u32 {
    let wanted = (1 << BP) | (1 << OF);
    match vmcb12.intercept_exceptions & wanted {
        0 => 0,
        _ => InterceptMisc1::INTN.bits(),
    }
}

/// Routes an INTn exit from L2 caused by `insn`, given vmcb12's controls.
pub fn route(insn: SoftInt, vmcb12: &ControlArea) -> SoftIntRoute {
    let intercepts = |vector: u8| vmcb12.intercept_exceptions & (1 << vector) != 0;
    let vector = match insn {
        SoftInt::Int3 => BP,
        SoftInt::Into => OF,
        SoftInt::Int(n) => {
            let intn = vmcb12.intercept_misc1 & InterceptMisc1::INTN.bits() != 0;
            return if intn {
                SoftIntRoute::L1Swint
            } else {
                SoftIntRoute::L2(n)
            };
        }
    };
    match intercepts(vector) {
        true => SoftIntRoute::L1Exception(vector),
        false => SoftIntRoute::L2(vector),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v12(exceptions: u32, misc1: u32) -> ControlArea {
        let mut c = ControlArea::default();
        c.intercept_exceptions = exceptions;
        c.intercept_misc1 = misc1;
        c
    }

    #[test]
    fn the_decoder_names_them() {
        let soft = |bytes: &[u8], bits| {
            crate::decode::decode(bytes, bits, 0)
                .ok()
                .and_then(|d| d.soft_interrupt())
        };
        assert_eq!(soft(&[0xCC], 64), Some(SoftInt::Int3));
        assert_eq!(soft(&[0xCD, 0x80], 64), Some(SoftInt::Int(0x80)));
        assert_eq!(soft(&[0xCD, 0x03], 32), Some(SoftInt::Int(3)));
        assert_eq!(soft(&[0xCE], 32), Some(SoftInt::Into));
        assert_eq!(soft(&[0x90], 64), None);
    }

    #[test]
    fn intn_only_for_bp_or_of() {
        let intn = InterceptMisc1::INTN.bits();
        assert_eq!(intn_for_exceptions(&v12(1 << 3, 0)), intn);
        assert_eq!(intn_for_exceptions(&v12(1 << 4, 0)), intn);
        assert_eq!(intn_for_exceptions(&v12(!((1 << 3) | (1 << 4)), 0)), 0);
        assert_eq!(intn_for_exceptions(&v12(0, intn)), 0);
    }

    #[test]
    fn int3_and_into_follow_the_exception_intercepts() {
        let intn = InterceptMisc1::INTN.bits();
        use SoftIntRoute as R;
        let cases = [
            (SoftInt::Int3, v12(1 << 3, 0), R::L1Exception(3)),
            (SoftInt::Int3, v12(1 << 4, intn), R::L2(3)),
            (SoftInt::Into, v12(1 << 4, 0), R::L1Exception(4)),
            (SoftInt::Into, v12(1 << 3, 0), R::L2(4)),
            (SoftInt::Int(0x80), v12(1 << 3, intn), R::L1Swint),
            (SoftInt::Int(0x80), v12(1 << 3, 0), R::L2(0x80)),
            (SoftInt::Int(3), v12(1 << 3, 0), R::L2(3)),
        ];
        for (insn, c, want) in cases {
            assert_eq!(route(insn, &c), want, "{insn:?}");
        }
    }
}
