//! Emulating an instruction whose memory operand is a device register
//! (MMIO: the local APIC page). Under QEMU TCG there are no decode assists
//! (APM 15.8.4 would give the bytes; TCG does not), so L0 decodes the
//! instruction itself ([`crate::decode::Decoded::mmio`]) and completes it
//! here: the MOV forms a driver uses (register to memory, memory to
//! register, immediate to memory; 1, 2, 4 or 8 bytes) and MOVZX/MOVSX/
//! MOVSXD loads, and CMP/TEST with a memory operand (compilers fold a
//! volatile load into them). Anything else is not emulated: the guest that ran it gets
//! #UD (the caller raises it), never a stopped VM.

use super::alu;

/// A general register operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reg {
    /// 0 = RAX .. 15 = R15.
    pub n: u8,
    /// AH, CH, DH or BH.
    pub high8: bool,
    /// Register width in bytes (1, 2, 4, 8).
    pub size: u8,
}

/// How a load widens the memory value into the register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extend {
    /// MOV: same size.
    None,
    /// MOVZX.
    Zero,
    /// MOVSX, MOVSXD.
    Sign,
}

/// An instruction L0 can complete against a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmioInsn {
    /// A load of `size` bytes into `reg`.
    Load {
        /// Destination register.
        reg: Reg,
        /// Bytes read.
        size: u8,
        /// Widening.
        extend: Extend,
    },
    /// A store of `size` bytes of `reg`.
    StoreReg {
        /// Source register.
        reg: Reg,
        /// Bytes written.
        size: u8,
    },
    /// A store of an immediate.
    StoreImm {
        /// The value (already sign-extended to `size` bytes as encoded).
        value: u64,
        /// Bytes written.
        size: u8,
    },
    /// CMP or TEST reading `size` bytes: only RFLAGS change.
    Compare {
        /// CMP (`alu::Op::Sub`) or TEST (`alu::Op::And`).
        op: alu::Op,
        /// Bytes read (the operation size).
        size: u8,
        /// The other operand.
        other: Operand,
        /// Memory is the first (destination) operand: `CMP mem, x`.
        mem_first: bool,
    },
}

/// The non-memory operand of [`MmioInsn::Compare`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operand {
    /// A register.
    Reg(Reg),
    /// An immediate (sign-extended as encoded).
    Imm(u64),
}

fn mask(size: u8) -> u64 {
    match size {
        8 => u64::MAX,
        s => (1u64 << (u32::from(s) * 8)) - 1,
    }
}

impl MmioInsn {
    /// Bytes the instruction reads or writes.
    pub fn size(&self) -> u8 {
        match *self {
            MmioInsn::Load { size, .. }
            | MmioInsn::StoreReg { size, .. }
            | MmioInsn::StoreImm { size, .. }
            | MmioInsn::Compare { size, .. } => size,
        }
    }

    /// Whether it writes memory.
    pub fn is_store(&self) -> bool {
        matches!(self, MmioInsn::StoreReg { .. } | MmioInsn::StoreImm { .. })
    }

    /// RFLAGS after a [`MmioInsn::Compare`] of `mem` with the other
    /// operand (`reg_value`: its register's value; ignored for an
    /// immediate); `rflags` unchanged for other instructions.
    pub fn compare_flags(&self, rflags: u64, mem: u64, reg_value: u64) -> u64 {
        let MmioInsn::Compare {
            op,
            size,
            other,
            mem_first,
        } = *self
        else {
            return rflags;
        };
        let other = match other {
            Operand::Reg(r) if r.high8 => reg_value >> 8,
            Operand::Reg(_) => reg_value,
            Operand::Imm(v) => v,
        };
        let (dst, src) = if mem_first {
            (mem, other)
        } else {
            (other, mem)
        };
        alu::apply(op, u32::from(size), dst, src, rflags).1
    }

    /// The value a store writes, from the source register's value
    /// (`reg_value`, ignored for an immediate).
    pub fn store_value(&self, reg_value: u64) -> u64 {
        match *self {
            MmioInsn::StoreReg { reg, size } => {
                let v = if reg.high8 { reg_value >> 8 } else { reg_value };
                v & mask(size)
            }
            MmioInsn::StoreImm { value, size } => value & mask(size),
            MmioInsn::Load { .. } | MmioInsn::Compare { .. } => 0,
        }
    }

    /// The destination register's new value after a load of `mem` (the
    /// device's `size` bytes) over its old value `old`: 32-bit results
    /// zero-extend to 64 bits, 8- and 16-bit ones keep the rest (APM Vol. 1,
    /// 3.1.2.3).
    pub fn load_result(&self, old: u64, mem: u64) -> u64 {
        let MmioInsn::Load { reg, size, extend } = *self else {
            return old;
        };
        let mem = mem & mask(size);
        let widened = match extend {
            Extend::None | Extend::Zero => mem,
            Extend::Sign => {
                let shift = 64 - u32::from(size) * 8;
                (((mem << shift) as i64) >> shift) as u64
            }
        };
        alu::write_register(old, widened, u32::from(reg.size), reg.high8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAX: Reg = Reg {
        n: 0,
        high8: false,
        size: 8,
    };

    #[test]
    fn loads_write_the_register_as_the_cpu_does() {
        let old = 0x1111_2222_3333_4444;
        let l = |reg, size, extend| MmioInsn::Load { reg, size, extend };
        let eax = Reg { size: 4, ..RAX };
        assert_eq!(
            l(eax, 4, Extend::None).load_result(old, 0x0005_0014),
            0x0005_0014,
            "32-bit loads zero-extend"
        );
        let ax = Reg { size: 2, ..RAX };
        assert_eq!(
            l(ax, 2, Extend::None).load_result(old, 0xABCD),
            0x1111_2222_3333_ABCD
        );
        let ah = Reg {
            size: 1,
            high8: true,
            ..RAX
        };
        assert_eq!(
            l(ah, 1, Extend::None).load_result(old, 0x1FF),
            0x1111_2222_3333_FF44
        );
        assert_eq!(l(RAX, 8, Extend::None).load_result(old, u64::MAX), u64::MAX);
        assert_eq!(
            l(eax, 1, Extend::Zero).load_result(old, 0x80),
            0x80,
            "movzx eax, byte"
        );
        assert_eq!(
            l(eax, 2, Extend::Sign).load_result(old, 0x8000),
            0xFFFF_8000,
            "movsx eax, word"
        );
        assert_eq!(
            l(RAX, 4, Extend::Sign).load_result(old, 0x8000_0000),
            0xFFFF_FFFF_8000_0000,
            "movsxd rax, dword"
        );
    }

    #[test]
    fn compares_set_flags_only() {
        const ZF: u64 = 1 << 6;
        const CF: u64 = 1;
        let test = MmioInsn::Compare {
            op: alu::Op::And,
            size: 4,
            other: Operand::Imm(1),
            mem_first: true,
        };
        assert_eq!(
            test.compare_flags(2, 0x10, 0) & ZF,
            ZF,
            "test [m], 1 of 0x10"
        );
        assert_eq!(test.compare_flags(2, 0x11, 0) & ZF, 0);
        // cmp eax, [m]: eax - mem borrows when mem is larger.
        let cmp = MmioInsn::Compare {
            op: alu::Op::Sub,
            size: 4,
            other: Operand::Reg(Reg { size: 4, ..RAX }),
            mem_first: false,
        };
        assert_eq!(cmp.compare_flags(2, 5, 3) & CF, CF);
        assert_eq!(cmp.compare_flags(2, 3, 3) & (CF | ZF), ZF);
        assert!(!cmp.is_store());
    }

    #[test]
    fn stores_take_the_operand_bytes() {
        let bh = Reg {
            n: 3,
            high8: true,
            size: 1,
        };
        let s = MmioInsn::StoreReg { reg: bh, size: 1 };
        assert_eq!(s.store_value(0x1234), 0x12);
        assert!(s.is_store());
        let s = MmioInsn::StoreReg {
            reg: Reg { size: 4, ..RAX },
            size: 4,
        };
        assert_eq!(s.store_value(0xFFFF_FFFF_0000_00B0), 0xB0);
        let i = MmioInsn::StoreImm {
            value: 0xFFFF_FFFF_FFFF_FFFF,
            size: 4,
        };
        assert_eq!(i.store_value(7), 0xFFFF_FFFF);
        assert_eq!(i.size(), 4);
    }
}
