//! INS and OUTS (with or without REP) for the port devices: what the
//! instruction's bytes say (address size, OUTS's segment) and how its
//! registers move per element (APM Vol. 3, "INS", "OUTS", "REP").
//!
//! APM 15.10.2 gives the address size (A16/A32/A64, bits 9:7) and the
//! effective segment (SEG, bits 12:10) in the IOIO EXITINFO1 of a string
//! instruction, but QEMU TCG leaves both zero. The address size is taken
//! from EXITINFO1 when a bit is set ([`address_bits`]), else from the
//! prefixes; the segment always from the prefixes, since a SEG of 0 (ES)
//! cannot be told from "not reported". The port, operand size, direction
//! and REP come from EXITINFO1, and the next RIP from EXITINFO2. The kernel
//! moves each element between the port (bus or self-test console) and
//! guest memory, in any CPU mode, for L1 and L2 alike.

use crate::exit::AddressSize;

/// Segment register numbers, as in the IOIO EXITINFO1 SEG field and the
/// segment-override prefixes: ES, CS, SS, DS, FS, GS.
pub mod seg {
    /// ES (INS always writes ES:rDI).
    pub const ES: u8 = 0;
    /// CS.
    pub const CS: u8 = 1;
    /// SS.
    pub const SS: u8 = 2;
    /// DS (OUTS's default source).
    pub const DS: u8 = 3;
    /// FS.
    pub const FS: u8 = 4;
    /// GS.
    pub const GS: u8 = 5;
}

/// What the bytes of a string I/O instruction say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StringIoBytes {
    /// Address size in bits (16, 32, 64): which part of rSI/rDI/rCX counts.
    pub address_bits: u32,
    /// The segment OUTS reads from (a [`seg`] number); INS ignores it.
    pub segment: u8,
    /// INS (true) or OUTS.
    pub input: bool,
}

/// Reads the prefixes and opcode of an INS/OUTS (`6C`-`6F`) in code of
/// `bitness` (16, 32, 64). `None` if the bytes hold no such instruction.
pub fn parse(bytes: &[u8], bitness: u32) -> Option<StringIoBytes> {
    let mut address_override = false;
    let mut segment = seg::DS;
    for &b in bytes.iter().take(15) {
        match b {
            0x67 => address_override = true,
            0x26 => segment = seg::ES,
            0x2E => segment = seg::CS,
            0x36 => segment = seg::SS,
            0x3E => segment = seg::DS,
            0x64 => segment = seg::FS,
            0x65 => segment = seg::GS,
            // Operand size, LOCK, REP/REPNE: EXITINFO1 has what matters.
            0x66 | 0xF0 | 0xF2 | 0xF3 => {}
            // REX (64-bit code only) sits right before the opcode; for
            // INS/OUTS it changes nothing.
            0x40..=0x4F if bitness == 64 => {}
            0x6C..=0x6F => {
                let address_bits = match (bitness, address_override) {
                    (64, false) => 64,
                    (64, true) | (32, false) | (16, true) => 32,
                    _ => 16,
                };
                return Some(StringIoBytes {
                    address_bits,
                    segment,
                    input: b < 0x6E,
                });
            }
            _ => return None,
        }
    }
    None
}

/// The address size in bits: EXITINFO1's A16/A32/A64 when the CPU
/// reported one, else what the prefixes say (`decoded`, [`parse`]).
pub fn address_bits(reported: Option<AddressSize>, decoded: u32) -> u32 {
    match reported {
        Some(AddressSize::Bits16) => 16,
        Some(AddressSize::Bits32) => 32,
        Some(AddressSize::Bits64) => 64,
        None => decoded,
    }
}

/// The linear address of an element: segment base plus offset, truncated
/// to 32 bits outside 64-bit mode (APM Vol. 2, 4.1: legacy and
/// compatibility mode addresses wrap at 4 GiB).
pub fn linear(base: u64, offset: u64, bitness: u32) -> u64 {
    let la = base.wrapping_add(offset);
    if bitness == 64 {
        la
    } else {
        la & 0xFFFF_FFFF
    }
}

/// The low `bits` of `reg`.
pub fn low(reg: u64, bits: u32) -> u64 {
    match bits {
        64 => reg,
        32 => reg & 0xFFFF_FFFF,
        _ => reg & 0xFFFF,
    }
}

/// `value` written into the low `bits` of `reg` as the CPU updates an
/// address-size register: 32-bit results zero-extend, 16-bit ones keep the
/// rest.
pub fn set_low(reg: u64, value: u64, bits: u32) -> u64 {
    match bits {
        64 => value,
        32 => value & 0xFFFF_FFFF,
        _ => (reg & !0xFFFF) | (value & 0xFFFF),
    }
}

/// Elements the instruction moves in all: rCX (its address-size part) with
/// REP, else one.
pub fn elements(rep: bool, rcx: u64, address_bits: u32) -> u64 {
    if rep {
        low(rcx, address_bits)
    } else {
        1
    }
}

/// rSI or rDI after one element of `size` bytes: up, or down when
/// RFLAGS.DF is set, wrapping within the address size.
pub fn step(reg: u64, size: u8, down: bool, address_bits: u32) -> u64 {
    let offset = low(reg, address_bits);
    let next = if down {
        offset.wrapping_sub(u64::from(size))
    } else {
        offset.wrapping_add(u64::from(size))
    };
    set_low(reg, next, address_bits)
}

/// rCX after one REP element.
pub fn count_down(rcx: u64, address_bits: u32) -> u64 {
    set_low(rcx, low(rcx, address_bits).wrapping_sub(1), address_bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ins_and_outs_in_every_code_size() {
        // INSB in 64-bit code (kvm-unit-tests' reg_corruption L2).
        assert_eq!(
            parse(&[0x6C], 64),
            Some(StringIoBytes {
                address_bits: 64,
                segment: seg::DS,
                input: true
            })
        );
        // REP OUTSW with an FS override and a 0x67 in 32-bit code.
        assert_eq!(
            parse(&[0xF3, 0x64, 0x67, 0x66, 0x6F], 32),
            Some(StringIoBytes {
                address_bits: 16,
                segment: seg::FS,
                input: false
            })
        );
        assert_eq!(parse(&[0x67, 0x6D], 64).unwrap().address_bits, 32);
        assert_eq!(parse(&[0x6E], 16).unwrap().address_bits, 16);
        assert_eq!(parse(&[0x67, 0x6E], 16).unwrap().address_bits, 32);
        assert_eq!(parse(&[0x6E], 32).unwrap().address_bits, 32);
        // REX before the opcode in 64-bit code.
        assert_eq!(parse(&[0xF3, 0x48, 0x6D], 64).unwrap().address_bits, 64);
        // The last override wins.
        assert_eq!(parse(&[0x2E, 0x65, 0x6E], 64).unwrap().segment, seg::GS);
    }

    #[test]
    fn other_bytes_are_no_string_io() {
        for bytes in [&[0xEC][..], &[0xE4, 0x60], &[0x48, 0x6C], &[0x66; 16], &[]] {
            assert_eq!(parse(bytes, 32), None, "{bytes:x?}");
        }
        // 0x48 is DEC EAX outside 64-bit code, not a REX.
        assert_eq!(parse(&[0x48, 0x6C], 32), None);
    }

    #[test]
    fn registers_move_within_the_address_size() {
        assert_eq!(step(0x1000, 1, false, 64), 0x1001);
        assert_eq!(step(0x1000, 4, true, 64), 0xFFC);
        // 32-bit: wraps and zero-extends.
        assert_eq!(step(0xAAAA_BBBB_FFFF_FFFF, 1, false, 32), 0);
        // 16-bit: wraps inside the low word, keeps the rest.
        assert_eq!(step(0x1234_FFFE, 2, false, 16), 0x1234_0000);
        assert_eq!(step(0x1234_0000, 2, true, 16), 0x1234_FFFE);
        assert_eq!(count_down(0x1_0000_0003, 32), 2);
        assert_eq!(count_down(0x5_0000, 16), 0x5_FFFF);
    }

    #[test]
    fn reported_address_size_wins() {
        assert_eq!(address_bits(None, 16), 16);
        assert_eq!(address_bits(None, 64), 64);
        assert_eq!(address_bits(Some(AddressSize::Bits32), 64), 32);
        assert_eq!(address_bits(Some(AddressSize::Bits16), 32), 16);
        assert_eq!(address_bits(Some(AddressSize::Bits64), 32), 64);
    }

    #[test]
    fn linear_addresses_wrap_outside_64_bit_mode() {
        assert_eq!(linear(0x1000, 0x20, 32), 0x1020);
        assert_eq!(linear(0xFFFF_F000, 0x2000, 32), 0x1000);
        assert_eq!(linear(0xFFFF_F000, 0x2000, 16), 0x1000);
        assert_eq!(linear(0xFFFF_F000, 0x2000, 64), 0x1_0000_1000);
        // FS base above 4 GiB in 64-bit mode stays.
        assert_eq!(linear(0x7F00_0000_0000, 8, 64), 0x7F00_0000_0008);
    }

    #[test]
    fn element_count() {
        assert_eq!(elements(false, 0, 64), 1);
        assert_eq!(elements(true, 0, 64), 0);
        assert_eq!(elements(true, 0x1_0000_0005, 32), 5);
        assert_eq!(elements(true, 0x12_0003, 16), 3);
    }
}
