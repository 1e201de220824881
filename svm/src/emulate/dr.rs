//! MOV to DR7 (and to DR5, its alias while CR4.DE is clear), emulated so
//! that no guest runs the emulator's own DR7 bookkeeping (docs/qemu-tcg.md:
//! QEMU crashes when a guest writes DR7 while breakpoints armed by another
//! level are live). APM Vol. 2, 13.1.1 "Debug Registers".

use super::Fault;

/// DR7.GD: general detect (any MOV DR raises #DB first).
pub const DR7_GD: u64 = 1 << 13;
/// DR6.BD: the #DB was a general-detect one.
pub const DR6_BD: u64 = 1 << 13;
/// DR7 bits that hold their written value (KVM's DR7_VOLATILE); bit 10
/// reads as 1, bits 12, 14 and 15 as 0.
const DR7_VOLATILE: u64 = 0xffff_2bff;
const DR7_FIXED_1: u64 = 0x400;

/// The debug register a MOV DRn writes, after aliasing: DR4/DR5 are DR6/DR7
/// while CR4.DE is clear and #UD while it is set.
pub fn alias(dr: u8, cr4_de: bool) -> Result<u8, Fault> {
    match dr {
        4 | 5 if cr4_de => Err(Fault::Ud),
        4 | 5 => Ok(dr + 2),
        _ => Ok(dr),
    }
}

/// MOV to DR7: the value DR7 takes, #DB when DR7.GD is set (the caller sets
/// DR6.BD and clears DR7.GD, as the CPU does on that #DB), #GP(0) when bits
/// 63:32 are set.
pub fn write_dr7(current_dr7: u64, value: u64) -> Result<u64, Fault> {
    if current_dr7 & DR7_GD != 0 {
        return Err(Fault::DbGeneralDetect);
    }
    if value >> 32 != 0 {
        return Err(Fault::Gp(0));
    }
    Ok((value & DR7_VOLATILE) | DR7_FIXED_1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dr7_values_and_faults() {
        assert_eq!(write_dr7(0x400, 0), Ok(0x400));
        assert_eq!(write_dr7(0x10401, 0x400), Ok(0x400));
        assert_eq!(write_dr7(0x400, 0xd000 | 0x401), Ok(0x401));
        assert_eq!(write_dr7(0x400, 1 << 32), Err(Fault::Gp(0)));
        assert_eq!(
            write_dr7(0x400 | DR7_GD, 0x400),
            Err(Fault::DbGeneralDetect)
        );
    }

    #[test]
    fn dr4_dr5_alias_or_fault() {
        assert_eq!(alias(5, false), Ok(7));
        assert_eq!(alias(4, false), Ok(6));
        assert_eq!(alias(5, true), Err(Fault::Ud));
        assert_eq!(alias(7, true), Ok(7));
    }
}
