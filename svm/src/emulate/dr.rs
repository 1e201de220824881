//! MOV to DR0-DR3, DR7 (and DR5, its alias while CR4.DE is clear), emulated
//! so that no guest runs the emulator's own breakpoint bookkeeping
//! (docs/qemu-tcg.md: QEMU crashes when a guest's MOV DR0-3 or DR7 removes a
//! breakpoint by the type DR7 has now, not the one it was inserted with).
//! APM Vol. 2, 13.1.1 "Debug Registers".

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

/// What an intercepted MOV to a debug register changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrWrite {
    /// DR0-DR3 (`.0`) take this breakpoint address. Any value: the CPU
    /// does not check it (KVM `__kvm_set_dr` stores it as is).
    Address(u8, u64),
    /// DR7 takes this value.
    Dr7(u64),
}

/// MOV to DR`dr` (0-3, 5 or 7, the ones L0 intercepts): #UD for DR4/DR5
/// while CR4.DE is set, then #DB when DR7.GD is set (APM 13.1.1.5), then
/// the register's own rules. DR6 (and DR4) writes are not intercepted, so
/// they never get here (#UD if they did).
pub fn write(dr: u8, cr4_de: bool, current_dr7: u64, value: u64) -> Result<DrWrite, Fault> {
    match alias(dr, cr4_de)? {
        0..=3 if current_dr7 & DR7_GD != 0 => Err(Fault::DbGeneralDetect),
        n @ 0..=3 => Ok(DrWrite::Address(n, value)),
        7 => write_dr7(current_dr7, value).map(DrWrite::Dr7),
        _ => Err(Fault::Ud),
    }
}

/// The DR6 B0-B3 bits of the instruction breakpoints (DR7 R/W = 00, LEN
/// = 00, L or G set) that match an instruction at linear address `rip`,
/// or `None`: the #DB fault the CPU raises before the instruction (before
/// any intercept) unless RFLAGS.RF is set (APM Vol. 2, 13.1.1). L0 checks
/// this for the instructions it emulates, since QEMU TCG arms no guest
/// breakpoint (docs/qemu-tcg.md).
pub fn instruction_breakpoints(dr7: u64, db: &[u64; 4], rip: u64, rflags: u64) -> Option<u64> {
    const RFLAGS_RF: u64 = 1 << 16;
    // No L/G enable bit (the common case): nothing to compare.
    if rflags & RFLAGS_RF != 0 || dr7 & 0xff == 0 {
        return None;
    }
    let hits = (0..4).filter(|&n| {
        let enabled = (dr7 >> (2 * n)) & 3 != 0;
        let rw_len = (dr7 >> (16 + 4 * n)) & 0xf;
        enabled && rw_len == 0 && db[n] == rip
    });
    let b = hits.fold(0u64, |b, n| b | 1 << n);
    (b != 0).then_some(b)
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
    fn dr0_3_take_any_value_unless_general_detect() {
        for n in 0..4 {
            assert_eq!(
                write(n, false, 0x11fff, u64::MAX),
                Ok(DrWrite::Address(n, u64::MAX))
            );
            assert_eq!(write(n, true, 0x400, 5), Ok(DrWrite::Address(n, 5)));
            assert_eq!(
                write(n, false, 0x400 | DR7_GD, 5),
                Err(Fault::DbGeneralDetect)
            );
        }
        assert_eq!(write(7, false, 0x400, 0x401), Ok(DrWrite::Dr7(0x401)));
        assert_eq!(write(5, false, 0x400, 0x401), Ok(DrWrite::Dr7(0x401)));
        assert_eq!(write(5, true, 0x400 | DR7_GD, 0x401), Err(Fault::Ud));
        assert_eq!(write(6, false, 0x400, 0), Err(Fault::Ud));
        assert_eq!(write(4, false, 0x400, 0), Err(Fault::Ud));
    }

    #[test]
    fn dr4_dr5_alias_or_fault() {
        assert_eq!(alias(5, false), Ok(7));
        assert_eq!(alias(4, false), Ok(6));
        assert_eq!(alias(5, true), Err(Fault::Ud));
        assert_eq!(alias(7, true), Ok(7));
    }

    #[test]
    fn instruction_breakpoints_match_enabled_execute_slots() {
        let db = [0x1000, 0x2000, 0x1000, 0x3000];
        // DR0 local, DR1 global, DR2 disabled, DR3 a write breakpoint.
        let dr7 = 0x400 | 1 | 2 << 2 | 1 << 6 | 1 << 28;
        assert_eq!(instruction_breakpoints(dr7, &db, 0x1000, 2), Some(1));
        assert_eq!(instruction_breakpoints(dr7, &db, 0x2000, 2), Some(2));
        assert_eq!(instruction_breakpoints(dr7, &db, 0x3000, 2), None, "write");
        assert_eq!(
            instruction_breakpoints(dr7 | 1 << 4, &db, 0x1000, 2),
            Some(5)
        );
        assert_eq!(
            instruction_breakpoints(dr7, &db, 0x1000, 1 << 16),
            None,
            "RF"
        );
        assert_eq!(instruction_breakpoints(0x400, &db, 0x1000, 2), None);
    }
}
