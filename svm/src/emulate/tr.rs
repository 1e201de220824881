//! LTR and the TR a guest runs with. L0 intercepts LTR so that it raises
//! the faults the CPU does (QEMU loads a null selector, leaving a TR that
//! later aborts the emulator: docs/qemu-tcg.md), and checks the TR that
//! VMLOAD gives a guest ([`tr_for_cpu`]). APM Vol. 3 "LTR", Vol. 2 4.8.3,
//! 12.2.5 (16-byte system descriptors in long mode).

use super::Fault;
use crate::vmcb::VmcbSegment;

/// What LTR depends on besides its operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LtrContext {
    /// Protected mode (CR0.PE set, not virtual-8086).
    pub protected: bool,
    /// Current privilege level.
    pub cpl: u8,
    /// EFER.LMA: descriptors are 16 bytes, base up to 64 bits.
    pub long_mode: bool,
    /// GDTR limit.
    pub gdt_limit: u32,
}

/// Checks LTR's selector before the descriptor is read: the offset of the
/// descriptor in the GDT, or the fault.
pub fn ltr_descriptor_offset(ctx: &LtrContext, selector: u16) -> Result<u64, Fault> {
    if !ctx.protected {
        return Err(Fault::Ud);
    }
    if ctx.cpl != 0 || selector & 0xfffc == 0 {
        return Err(Fault::Gp(0));
    }
    let err = Fault::Gp(selector & 0xfffc);
    let offset = u64::from(selector & 0xfff8);
    let size = if ctx.long_mode { 16 } else { 8 };
    if selector & 4 != 0 || offset + size - 1 > u64::from(ctx.gdt_limit) {
        return Err(err);
    }
    Ok(offset)
}

/// LTR with the descriptor read at the offset (`high` is the second 8
/// bytes, used in long mode): TR as loaded and the descriptor with its busy
/// bit set, to write back to the GDT.
pub fn ltr_load(
    ctx: &LtrContext,
    selector: u16,
    low: u64,
    high: u64,
) -> Result<(VmcbSegment, u64), Fault> {
    let err = Fault::Gp(selector & 0xfffc);
    let attrib = VmcbSegment::attrib_from_descriptor(low);
    let kind = attrib & (VmcbSegment::ATTR_TYPE_MASK | VmcbSegment::ATTR_S);
    // An available TSS: 32/64-bit (type 9), or 16-bit (type 1) outside long mode.
    let available = kind == 9 || (kind == 1 && !ctx.long_mode);
    if !available {
        return Err(err);
    }
    if attrib & VmcbSegment::ATTR_P == 0 {
        return Err(Fault::Np(selector & 0xfffc));
    }
    let mut base = ((low >> 16) & 0xff_ffff) | ((low >> 56) << 24);
    if ctx.long_mode {
        // The upper half's type field must be 0, the base canonical.
        if (high >> 8) & 0x1f != 0 {
            return Err(err);
        }
        base |= (high & 0xffff_ffff) << 32;
        if ((base as i64) << 16 >> 16) as u64 != base {
            return Err(err);
        }
    }
    let raw_limit = ((low & 0xffff) | ((low >> 32) & 0xf_0000)) as u32;
    let limit = if attrib & VmcbSegment::ATTR_G != 0 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let busy = 2u64 << 40;
    Ok((
        VmcbSegment::new(selector, attrib | 2, limit, base),
        low | busy,
    ))
}

/// The TR the CPU is given for a guest whose (VMLOADed) TR is `tr`. A
/// VMLOAD of any page loads TR unchecked (APM 15.5.2), and the CPU uses
/// that cached TR as it is; QEMU instead aborts the whole emulator when
/// it finds P clear in it on a stack switch (docs/qemu-tcg.md). So the
/// present bit is set and everything else kept: the stack switch then
/// reads the TSS where the guest's TR says (limit 0 gives #TS, as on
/// hardware).
pub fn tr_for_cpu(tr: VmcbSegment) -> VmcbSegment {
    VmcbSegment {
        attrib: tr.attrib | VmcbSegment::ATTR_P,
        ..tr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CTX: LtrContext = LtrContext {
        protected: true,
        cpl: 0,
        long_mode: true,
        gdt_limit: 0x3f,
    };
    /// An available 64-bit TSS at 0xffff_8000_9abc_d000, limit 0x67.
    const TSS_LOW: u64 = 0x9a00_8900_d000_0067 | (0xbc << 32);
    const TSS_HIGH: u64 = 0xffff_8000;

    #[test]
    fn selector_checks() {
        assert_eq!(ltr_descriptor_offset(&CTX, 0), Err(Fault::Gp(0)));
        assert_eq!(ltr_descriptor_offset(&CTX, 3), Err(Fault::Gp(0)));
        assert_eq!(
            ltr_descriptor_offset(&CTX, 0x2c),
            Err(Fault::Gp(0x2c)),
            "TI"
        );
        assert_eq!(
            ltr_descriptor_offset(&CTX, 0x38),
            Err(Fault::Gp(0x38)),
            "16 bytes past limit"
        );
        assert_eq!(ltr_descriptor_offset(&CTX, 0x30), Ok(0x30));
        let user = LtrContext { cpl: 3, ..CTX };
        assert_eq!(ltr_descriptor_offset(&user, 0x30), Err(Fault::Gp(0)));
        let real = LtrContext {
            protected: false,
            ..CTX
        };
        assert_eq!(ltr_descriptor_offset(&real, 0x30), Err(Fault::Ud));
    }

    #[test]
    fn descriptor_checks_and_load() {
        let (tr, busy) = ltr_load(&CTX, 0x30, TSS_LOW, TSS_HIGH).unwrap();
        assert_eq!(tr.selector, 0x30);
        assert_eq!(tr.attrib, 0x8b);
        assert_eq!(tr.limit, 0x67);
        assert_eq!(tr.base, 0xffff_8000_9abc_d000);
        assert_eq!(busy, TSS_LOW | 2 << 40);
        // Busy TSS, code segment, not present, bad upper type.
        assert_eq!(ltr_load(&CTX, 0x30, busy, TSS_HIGH), Err(Fault::Gp(0x30)));
        let code = 0x00af_9b00_0000_ffff;
        assert_eq!(ltr_load(&CTX, 0x30, code, 0), Err(Fault::Gp(0x30)));
        let absent = TSS_LOW & !(1 << 47);
        assert_eq!(ltr_load(&CTX, 0x30, absent, TSS_HIGH), Err(Fault::Np(0x30)));
        assert_eq!(ltr_load(&CTX, 0x30, TSS_LOW, 1 << 8), Err(Fault::Gp(0x30)));
        let noncanonical = 0x0000_8000;
        assert_eq!(
            ltr_load(&CTX, 0x30, TSS_LOW, noncanonical),
            Err(Fault::Gp(0x30))
        );
        // 16-bit TSS only outside long mode; G scales the limit.
        let tss16 = (TSS_LOW & !(0xf << 40)) | 1 << 40;
        assert_eq!(ltr_load(&CTX, 0x30, tss16, 0), Err(Fault::Gp(0x30)));
        let legacy = LtrContext {
            long_mode: false,
            ..CTX
        };
        assert!(ltr_load(&legacy, 0x30, tss16, 0).is_ok());
        let (g, _) = ltr_load(&legacy, 0x30, TSS_LOW | 1 << 55, 0).unwrap();
        assert_eq!(g.limit, 0x67fff);
    }

    #[test]
    fn vmloaded_tr_gets_the_present_bit_only() {
        let zero = VmcbSegment::new(0, 0, 0, 0);
        assert_eq!(tr_for_cpu(zero), VmcbSegment::new(0, 0x80, 0, 0));
        let ok = VmcbSegment::new(0x28, 0x8b, 0x67, 0x5000);
        assert_eq!(tr_for_cpu(ok), ok);
    }
}
