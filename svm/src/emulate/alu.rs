//! The arithmetic of read-modify-write instructions whose memory operand
//! is unbacked (all-ones, the store dropped): L0 computes what the CPU
//! leaves in RFLAGS (and, for XCHG, in the register) from the all-ones
//! value (APM Vol. 3, each instruction's flags table). Checked against the
//! host CPU in the unit tests.

/// RFLAGS bits the ALU writes: CF, PF, AF, ZF, SF, OF.
pub const ARITH_FLAGS: u64 = CF | PF | AF | ZF | SF | OF;
const CF: u64 = 1;
const PF: u64 = 1 << 2;
const AF: u64 = 1 << 4;
const ZF: u64 = 1 << 6;
const SF: u64 = 1 << 7;
const OF: u64 = 1 << 11;

/// A read-modify-write operation on a memory destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// ADD
    Add,
    /// OR
    Or,
    /// ADC
    Adc,
    /// SBB
    Sbb,
    /// AND
    And,
    /// SUB
    Sub,
    /// XOR
    Xor,
    /// INC (CF kept)
    Inc,
    /// DEC (CF kept)
    Dec,
    /// NEG
    Neg,
    /// NOT (no flags)
    Not,
}

fn mask(size: u32) -> u64 {
    match size {
        8 => u64::MAX,
        _ => (1u64 << (size * 8)) - 1,
    }
}

/// `op` on destination `dst` and source `src` (`size` bytes: 1, 2, 4, 8;
/// unary operations ignore `src`) with `rflags` before: the result and
/// RFLAGS after. AF is cleared by the logic operations (undefined in the
/// APM; what AMD and Intel CPUs do).
pub fn apply(op: Op, size: u32, dst: u64, src: u64, rflags: u64) -> (u64, u64) {
    let m = mask(size);
    let sign = 1u64 << (size * 8 - 1);
    let (d, s) = (dst & m, src & m);
    let carry = u64::from(rflags & CF != 0);
    let add = |s: u64, c: u64| {
        let wide = u128::from(d) + u128::from(s) + u128::from(c);
        let r = (wide as u64) & m;
        let mut f = (d ^ s ^ r) & 0x10;
        f |= u64::from(wide > u128::from(m));
        f |= if (d ^ r) & (s ^ r) & sign != 0 { OF } else { 0 };
        (r, f)
    };
    let sub = |d: u64, s: u64, c: u64| {
        let r = d.wrapping_sub(s).wrapping_sub(c) & m;
        let mut f = (d ^ s ^ r) & 0x10;
        f |= u64::from(u128::from(d) < u128::from(s) + u128::from(c));
        f |= if (d ^ s) & (d ^ r) & sign != 0 { OF } else { 0 };
        (r, f)
    };
    let (r, f, kept) = match op {
        Op::Add => with(add(s, 0), 0),
        Op::Adc => with(add(s, carry), 0),
        Op::Sub => with(sub(d, s, 0), 0),
        Op::Sbb => with(sub(d, s, carry), 0),
        Op::Neg => with(sub(0, d, 0), 0),
        // INC and DEC keep CF.
        Op::Inc => with(add(1, 0), CF),
        Op::Dec => with(sub(d, 1, 0), CF),
        Op::And => (d & s, 0, 0),
        Op::Or => (d | s, 0, 0),
        Op::Xor => (d ^ s, 0, 0),
        Op::Not => return (!d & m, rflags),
    };
    let mut flags = f;
    if r == 0 {
        flags |= ZF;
    }
    if r & sign != 0 {
        flags |= SF;
    }
    if (r as u8).count_ones().is_multiple_of(2) {
        flags |= PF;
    }
    let keep = !ARITH_FLAGS | kept;
    (r, (rflags & keep) | (flags & ARITH_FLAGS & !kept))
}

/// A shift or rotate of a memory destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shift {
    /// ROL
    Rol,
    /// ROR
    Ror,
    /// RCL
    Rcl,
    /// RCR
    Rcr,
    /// SHL (SAL)
    Shl,
    /// SHR
    Shr,
    /// SAR
    Sar,
}

/// `op` on `dst` (`size` bytes) by `count` with `rflags` before: the
/// result and RFLAGS after (APM Vol. 3 / SDM pseudo-code: the count is
/// masked to 5 bits, 6 for 64-bit operands; a zero count changes nothing;
/// rotates change only CF and OF). Flags the manuals leave undefined (OF
/// for counts above 1, CF of a shift past the width, AF) are OF as for a
/// count of 1, CF 0, AF 0.
pub fn shift(op: Shift, size: u32, dst: u64, count: u64, rflags: u64) -> (u64, u64) {
    let bits = u64::from(size * 8);
    let m = mask(size);
    let d = dst & m;
    let msb = |v: u64| (v >> (bits - 1)) & 1;
    let c = count & if size == 8 { 0x3F } else { 0x1F };
    if c == 0 {
        return (d, rflags);
    }
    let cf_in = rflags & CF;
    let rotate = |r: u64, cf: u64, of: u64| (r, (rflags & !(CF | OF)) | cf | (of * OF));
    let (r, cf, of) = match op {
        Shift::Rol | Shift::Ror => {
            let k = c % bits;
            let r = match (k, op) {
                (0, _) => d,
                (_, Shift::Rol) => ((d << k) | (d >> (bits - k))) & m,
                _ => ((d >> k) | (d << (bits - k))) & m,
            };
            return if op == Shift::Rol {
                let cf = r & 1;
                rotate(r, cf, msb(r) ^ cf)
            } else {
                rotate(r, msb(r), msb(r) ^ ((r >> (bits - 2)) & 1))
            };
        }
        Shift::Rcl | Shift::Rcr => {
            let k = match size {
                1 => c % 9,
                2 => c % 17,
                _ => c,
            };
            let (mut v, mut cf) = (d, cf_in);
            // RCR's OF comes from the operand before the rotate.
            let of_rcr = msb(d) ^ cf_in;
            for _ in 0..k {
                if op == Shift::Rcl {
                    let out = msb(v);
                    v = ((v << 1) | cf) & m;
                    cf = out;
                } else {
                    let out = v & 1;
                    v = (v >> 1) | (cf << (bits - 1));
                    cf = out;
                }
            }
            let of = if op == Shift::Rcl {
                msb(v) ^ cf
            } else {
                of_rcr
            };
            return rotate(v, cf, of);
        }
        Shift::Shl => {
            let r = if c >= bits { 0 } else { (d << c) & m };
            let cf = if c <= bits { (d >> (bits - c)) & 1 } else { 0 };
            (r, cf, msb(r) ^ cf)
        }
        Shift::Shr => {
            let r = if c >= bits { 0 } else { d >> c };
            let cf = if c <= bits { (d >> (c - 1)) & 1 } else { 0 };
            (r, cf, msb(d))
        }
        Shift::Sar => {
            let sd = ((d << (64 - bits)) as i64) >> (64 - bits);
            let r = (sd >> c.min(63)) as u64 & m;
            let cf = (sd >> (c - 1).min(63)) as u64 & 1;
            (r, cf, 0)
        }
    };
    let mut flags = cf | (of * OF);
    if r == 0 {
        flags |= ZF;
    }
    if msb(r) != 0 {
        flags |= SF;
    }
    if (r as u8).count_ones().is_multiple_of(2) {
        flags |= PF;
    }
    (r, (rflags & !ARITH_FLAGS) | flags)
}

/// A result with its flags, and the flags it keeps.
fn with((r, f): (u64, u64), kept: u64) -> (u64, u64, u64) {
    (r, f, kept)
}

/// Register `old` after writing `value` as a `size`-byte operand (`high8`:
/// AH/CH/DH/BH): 8 and 16-bit writes keep the other bits, 32-bit writes
/// zero-extend (APM Vol. 1, 3.1.2.3).
pub fn write_register(old: u64, value: u64, size: u32, high8: bool) -> u64 {
    match (size, high8) {
        (1, true) => (old & !0xFF00) | ((value & 0xFF) << 8),
        (1, false) => (old & !0xFF) | (value & 0xFF),
        (2, _) => (old & !0xFFFF) | (value & 0xFFFF),
        (4, _) => value & 0xFFFF_FFFF,
        _ => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::arch::asm;
    use proptest::prelude::*;

    /// Runs `op` on the host CPU (register operands: the flags are those
    /// of the memory forms) with CF = `cf` in: the result and the flags
    /// (CF, PF, AF, ZF, SF from LAHF, OF from SETO).
    fn host(op: Op, size: u32, d: u64, s: u64, cf: bool) -> (u64, u64) {
        let mut d = d;
        let (ah, of): (u64, u64);
        macro_rules! run {
            ($t:expr) => {
                // SAFETY: register-only arithmetic; RAX is declared clobbered.
                unsafe {
                    asm!("bt {c}, 0", $t, "lahf", "seto {o:l}", "movzx {o}, {o:l}",
                         c = in(reg) u64::from(cf), d = inout(reg) d, s = in(reg) s,
                         o = out(reg) of, out("rax") ah, options(nomem, nostack))
                }
            };
        }
        macro_rules! sized {
            ($m:literal) => {
                match size {
                    1 => run!(concat!($m, " {d:l}, {s:l}")),
                    2 => run!(concat!($m, " {d:x}, {s:x}")),
                    4 => run!(concat!($m, " {d:e}, {s:e}")),
                    _ => run!(concat!($m, " {d:r}, {s:r}")),
                }
            };
            (unary $m:literal) => {
                match size {
                    1 => run!(concat!($m, " {d:l}\nmov {s}, {s}")),
                    2 => run!(concat!($m, " {d:x}\nmov {s}, {s}")),
                    4 => run!(concat!($m, " {d:e}\nmov {s}, {s}")),
                    _ => run!(concat!($m, " {d:r}\nmov {s}, {s}")),
                }
            };
        }
        match op {
            Op::Add => sized!("add"),
            Op::Or => sized!("or"),
            Op::Adc => sized!("adc"),
            Op::Sbb => sized!("sbb"),
            Op::And => sized!("and"),
            Op::Sub => sized!("sub"),
            Op::Xor => sized!("xor"),
            Op::Inc => sized!(unary "inc"),
            Op::Dec => sized!(unary "dec"),
            Op::Neg => sized!(unary "neg"),
            Op::Not => sized!(unary "not"),
        }
        let flags = ((ah >> 8) & (CF | PF | AF | ZF | SF)) | if of != 0 { OF } else { 0 };
        (d & mask(size), flags)
    }

    const OPS: [Op; 11] = [
        Op::Add,
        Op::Or,
        Op::Adc,
        Op::Sbb,
        Op::And,
        Op::Sub,
        Op::Xor,
        Op::Inc,
        Op::Dec,
        Op::Neg,
        Op::Not,
    ];

    fn check(op: Op, size: u32, d: u64, s: u64, cf: bool) {
        // Bits the ALU does not touch must survive (IF, DF, TF, reserved 1).
        let before = 0x702 | u64::from(cf);
        let (r, after) = apply(op, size, d, s, before);
        let (hr, hflags) = host(op, size, d, s, cf);
        // AF is undefined for the logic operations; NOT writes no flags.
        let defined = match op {
            Op::And | Op::Or | Op::Xor => ARITH_FLAGS & !AF,
            Op::Not => 0,
            _ => ARITH_FLAGS,
        };
        assert_eq!(r, hr, "{op:?} size {size} {d:#x} {s:#x} cf {cf}: result");
        assert_eq!(
            after & defined,
            hflags & defined,
            "{op:?} size {size} {d:#x} {s:#x} cf {cf}: flags"
        );
        assert_eq!(
            after & !ARITH_FLAGS,
            before & !ARITH_FLAGS,
            "other bits kept"
        );
        if op == Op::Not {
            assert_eq!(after, before, "NOT writes no flags");
        }
    }

    #[test]
    fn all_ones_destination_matches_the_cpu() {
        for op in OPS {
            for size in [1, 2, 4, 8] {
                for s in [
                    0,
                    1,
                    0x7F,
                    0x80,
                    0xFF,
                    0x8000,
                    u64::MAX,
                    0x1234_5678_9ABC_DEF0,
                ] {
                    for cf in [false, true] {
                        check(op, size, u64::MAX, s, cf);
                    }
                }
            }
        }
    }

    proptest! {
        #[test]
        fn any_operands_match_the_cpu(op in 0usize..11, size in 0u32..4, d: u64, s: u64, cf: bool) {
            check(OPS[op], 1 << size, d, s, cf);
        }
    }

    const SHIFTS: [Shift; 7] = [
        Shift::Rol,
        Shift::Ror,
        Shift::Rcl,
        Shift::Rcr,
        Shift::Shl,
        Shift::Shr,
        Shift::Sar,
    ];

    /// Runs shift `op` on the host CPU with the count in CL.
    fn host_shift(op: Shift, size: u32, d: u64, count: u8, cf: bool) -> (u64, u64) {
        let mut d = d;
        let (ah, of): (u64, u64);
        macro_rules! run {
            ($t:expr) => {
                // SAFETY: register-only arithmetic; RAX is declared clobbered.
                unsafe {
                    asm!("bt {c}, 0", $t, "lahf", "seto {o:l}", "movzx {o}, {o:l}",
                         c = in(reg) u64::from(cf), d = inout(reg) d, in("cl") count,
                         o = out(reg) of, out("rax") ah, options(nomem, nostack))
                }
            };
        }
        macro_rules! sized {
            ($m:literal) => {
                match size {
                    1 => run!(concat!($m, " {d:l}, cl")),
                    2 => run!(concat!($m, " {d:x}, cl")),
                    4 => run!(concat!($m, " {d:e}, cl")),
                    _ => run!(concat!($m, " {d:r}, cl")),
                }
            };
        }
        match op {
            Shift::Rol => sized!("rol"),
            Shift::Ror => sized!("ror"),
            Shift::Rcl => sized!("rcl"),
            Shift::Rcr => sized!("rcr"),
            Shift::Shl => sized!("shl"),
            Shift::Shr => sized!("shr"),
            Shift::Sar => sized!("sar"),
        }
        let flags = ((ah >> 8) & (CF | PF | AF | ZF | SF)) | if of != 0 { OF } else { 0 };
        (d & mask(size), flags)
    }

    fn check_shift(op: Shift, size: u32, d: u64, count: u8, cf: bool) {
        let before = 0x702 | u64::from(cf);
        let (r, after) = shift(op, size, d, u64::from(count), before);
        let (hr, hflags) = host_shift(op, size, d, count, cf);
        let c = u64::from(count) & if size == 8 { 0x3F } else { 0x1F };
        let bits = u64::from(size) * 8;
        // The flags the manuals define for this count.
        let mut defined = 0;
        if c != 0 {
            defined |= match op {
                Shift::Rol | Shift::Ror | Shift::Rcl | Shift::Rcr => CF,
                Shift::Shl | Shift::Shr if c > bits => SF | ZF | PF,
                _ => CF | SF | ZF | PF,
            };
        }
        if c == 1 {
            defined |= OF;
        }
        let what = std::format!("{op:?} size {size} {d:#x} by {count} cf {cf}");
        assert_eq!(r, hr, "{what}: result");
        assert_eq!(after & defined, hflags & defined, "{what}: flags");
        assert_eq!(
            after & !ARITH_FLAGS,
            before & !ARITH_FLAGS,
            "{what}: other bits"
        );
        if matches!(op, Shift::Rol | Shift::Ror | Shift::Rcl | Shift::Rcr) || c == 0 {
            let kept = ARITH_FLAGS & !(CF | OF);
            assert_eq!(
                after & kept,
                before & kept,
                "{what}: rotates keep SF ZF AF PF"
            );
        }
    }

    #[test]
    fn shifts_of_all_ones_match_the_cpu() {
        for op in SHIFTS {
            for size in [1, 2, 4, 8] {
                for count in [0, 1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 255] {
                    for cf in [false, true] {
                        check_shift(op, size, u64::MAX, count, cf);
                    }
                }
            }
        }
    }

    proptest! {
        #[test]
        fn any_shift_matches_the_cpu(op in 0usize..7, size in 0u32..4, d: u64, count: u8, cf: bool) {
            check_shift(SHIFTS[op], 1 << size, d, count, cf);
        }
    }

    #[test]
    fn register_writes_by_size() {
        let old = 0x1122_3344_5566_7788;
        assert_eq!(write_register(old, 0xFF, 1, false), 0x1122_3344_5566_77FF);
        assert_eq!(write_register(old, 0xFF, 1, true), 0x1122_3344_5566_FF88);
        assert_eq!(write_register(old, 0xFFFF, 2, false), 0x1122_3344_5566_FFFF);
        assert_eq!(write_register(old, u64::MAX, 4, false), 0xFFFF_FFFF);
        assert_eq!(write_register(old, u64::MAX, 8, false), u64::MAX);
    }
}
