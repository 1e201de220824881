//! Decoding the instruction a guest was intercepted on, in any CPU mode.
//!
//! The CPU's `next_rip` gives the length when it saves nRIP (APM 15.7.1),
//! but QEMU TCG has neither nRIP save nor decode assists
//! (docs/qemu-tcg.md), and the CR/DR/TR write emulation needs the operands
//! anyway. So the hypervisor reads the bytes at the guest's RIP and asks
//! [`decode`], which uses `iced-x86` (AMD decoding rules): every legal
//! prefix order (a REX followed by a legacy prefix is ignored, as the CPU
//! ignores it), the 15-byte limit, 16/32/64-bit code.

use crate::emulate::alu;
use crate::emulate::unbacked::StringStore;
use iced_x86::{
    Code, CodeSize, Decoder, DecoderError, DecoderOptions, FlowControl, Instruction,
    InstructionInfoFactory, Mnemonic, OpAccess, OpKind, Register,
};

/// The instructions the hypervisor intercepts and emulates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insn {
    /// `0F A2`
    Cpuid,
    /// `0F 32`
    Rdmsr,
    /// `0F 30`
    Wrmsr,
    /// `0F 31`
    Rdtsc,
    /// `0F 01 F9`
    Rdtscp,
    /// `F4`
    Hlt,
    /// `0F 01 D8`
    Vmrun,
    /// `0F 01 D9`
    Vmmcall,
    /// `0F 01 DA`
    Vmload,
    /// `0F 01 DB`
    Vmsave,
    /// `0F 01 DC`
    Stgi,
    /// `0F 01 DD`
    Clgi,
    /// `0F 01 DE`
    Skinit,
    /// `0F 01 DF`
    Invlpga,
    /// `0F 01 D1`
    Xsetbv,
    /// `0F 09`
    Wbinvd,
    /// `0F 08`
    Invd,
    /// `MOV CRn, reg` (`0F 22 /r`; REX.R or AMD's `F0` prefix select CR8).
    MovToCr {
        /// Control register number.
        cr: u8,
        /// Source general register (0 = RAX .. 15 = R15).
        gpr: u8,
    },
    /// `LMSW r/m16` (`0F 01 /6`).
    Lmsw(Operand),
    /// `CLTS` (`0F 06`).
    Clts,
    /// `MOV DRn, reg` (`0F 23 /r`).
    MovToDr {
        /// Debug register number.
        dr: u8,
        /// Source general register.
        gpr: u8,
    },
    /// `LTR r/m16` (`0F 00 /3`).
    Ltr(Operand),
    /// A valid instruction the hypervisor does not emulate.
    Other,
}

/// A 16-bit source operand (LMSW, LTR).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operand {
    /// A general register (its low 16 bits).
    Gpr(u8),
    /// Memory: see [`Decoded::memory_address`].
    Memory,
}

/// Segment registers, for [`Decoded::memory_address`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seg {
    /// ES
    Es,
    /// CS
    Cs,
    /// SS
    Ss,
    /// DS
    Ds,
    /// FS
    Fs,
    /// GS
    Gs,
}

/// Why no instruction came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes ran out before the instruction ended: the next byte (at
    /// this offset from RIP) could not be read.
    Truncated(usize),
    /// Not a valid instruction (#UD), or longer than 15 bytes (#GP(0)).
    Invalid,
}

/// A decoded instruction.
#[derive(Clone, Copy, Debug)]
pub struct Decoded {
    /// What it is.
    pub insn: Insn,
    /// Its length in bytes (prefixes included).
    pub len: usize,
    raw: Instruction,
}

impl Decoded {
    /// The software interrupt this instruction is, if it is one.
    pub fn soft_interrupt(&self) -> Option<crate::nested::soft_int::SoftInt> {
        use crate::nested::soft_int::SoftInt;
        match self.raw.mnemonic() {
            Mnemonic::Int3 => Some(SoftInt::Int3),
            Mnemonic::Into => Some(SoftInt::Into),
            Mnemonic::Int => Some(SoftInt::Int(self.raw.immediate8())),
            _ => None,
        }
    }
}

/// Longest x86 instruction.
pub const MAX_INSN_LEN: usize = 15;

/// The code size (16, 32 or 64) a guest runs with (APM Vol. 2, 4.8):
/// 64 in 64-bit mode (EFER.LMA and CS.L), else CS.D selects 32 or 16;
/// real mode (CR0.PE clear) and virtual-8086 mode (RFLAGS.VM) are 16.
/// `cs_attrib` is the VMCB's packed attribute word (L is bit 9, D bit 10).
pub fn bitness(cr0: u64, efer: u64, rflags: u64, cs_attrib: u16) -> u32 {
    const CR0_PE: u64 = 1;
    const EFER_LMA: u64 = 1 << 10;
    const RFLAGS_VM: u64 = 1 << 17;
    if cr0 & CR0_PE == 0 || (rflags & RFLAGS_VM != 0 && efer & EFER_LMA == 0) {
        16
    } else if efer & EFER_LMA != 0 && cs_attrib & (1 << 9) != 0 {
        64
    } else if cs_attrib & (1 << 10) != 0 {
        32
    } else {
        16
    }
}

/// Number (0 = RAX .. 15 = R15) of a 16/32/64-bit general register.
fn gpr(reg: Register) -> Option<u8> {
    let r = reg as u32;
    [Register::RAX, Register::EAX, Register::AX]
        .into_iter()
        .find_map(|first| {
            let first = first as u32;
            (first..first + 16).contains(&r).then(|| (r - first) as u8)
        })
}

fn operand16(i: &Instruction) -> Option<Operand> {
    match i.op0_kind() {
        OpKind::Register => gpr(i.op0_register()).map(Operand::Gpr),
        OpKind::Memory => Some(Operand::Memory),
        _ => None,
    }
}

fn classify(i: &Instruction) -> Insn {
    use Insn as I;
    let code = i.code();
    let to_cr = || -> Option<Insn> {
        let cr = (i.op0_register() as u32).checked_sub(Register::CR0 as u32)?;
        Some(I::MovToCr {
            cr: cr as u8,
            gpr: gpr(i.op1_register())?,
        })
    };
    let to_dr = || -> Option<Insn> {
        let dr = (i.op0_register() as u32).checked_sub(Register::DR0 as u32)?;
        Some(I::MovToDr {
            dr: dr as u8,
            gpr: gpr(i.op1_register())?,
        })
    };
    let found = match code {
        Code::Cpuid => Some(I::Cpuid),
        Code::Rdmsr => Some(I::Rdmsr),
        Code::Wrmsr => Some(I::Wrmsr),
        Code::Rdtsc => Some(I::Rdtsc),
        Code::Rdtscp => Some(I::Rdtscp),
        Code::Hlt => Some(I::Hlt),
        Code::Vmrunw | Code::Vmrund | Code::Vmrunq => Some(I::Vmrun),
        Code::Vmmcall => Some(I::Vmmcall),
        Code::Vmloadw | Code::Vmloadd | Code::Vmloadq => Some(I::Vmload),
        Code::Vmsavew | Code::Vmsaved | Code::Vmsaveq => Some(I::Vmsave),
        Code::Stgi => Some(I::Stgi),
        Code::Clgi => Some(I::Clgi),
        Code::Skinit => Some(I::Skinit),
        Code::Invlpgaw | Code::Invlpgad | Code::Invlpgaq => Some(I::Invlpga),
        Code::Xsetbv => Some(I::Xsetbv),
        Code::Wbinvd => Some(I::Wbinvd),
        Code::Invd => Some(I::Invd),
        Code::Mov_cr_r32 | Code::Mov_cr_r64 => to_cr(),
        Code::Mov_dr_r32 | Code::Mov_dr_r64 => to_dr(),
        Code::Lmsw_rm16 | Code::Lmsw_r32m16 | Code::Lmsw_r64m16 => operand16(i).map(I::Lmsw),
        Code::Ltr_rm16 | Code::Ltr_r32m16 | Code::Ltr_r64m16 => operand16(i).map(I::Ltr),
        Code::Clts => Some(I::Clts),
        _ => None,
    };
    found.unwrap_or(I::Other)
}

/// Decodes the instruction at the start of `bytes` (the readable bytes at
/// RIP, at most [`MAX_INSN_LEN`] are looked at) as code of `bitness` (16,
/// 32 or 64) at address `rip`.
pub fn decode(bytes: &[u8], bitness: u32, rip: u64) -> Result<Decoded, DecodeError> {
    let bitness = match bitness {
        16 | 32 | 64 => bitness,
        _ => return Err(DecodeError::Invalid),
    };
    let bytes = &bytes[..bytes.len().min(MAX_INSN_LEN)];
    let mut decoder = Decoder::with_ip(bitness, bytes, rip, DecoderOptions::AMD);
    let raw = decoder.decode();
    match decoder.last_error() {
        DecoderError::None if !raw.is_invalid() => Ok(Decoded {
            insn: classify(&raw),
            len: raw.len(),
            raw,
        }),
        // Past the 15-byte limit nothing more can make it valid.
        DecoderError::NoMoreBytes if bytes.len() < MAX_INSN_LEN => {
            Err(DecodeError::Truncated(bytes.len()))
        }
        _ => Err(DecodeError::Invalid),
    }
}

/// The length of the instruction at the start of `bytes` when it is one of
/// the plain, prefix-free encodings that SVM intercepts most often, without
/// the full decoder (the hot path of every instruction exit under QEMU TCG,
/// which has no NRIP save). `0F` and `F4` are opcodes, never prefixes, in
/// every mode, and these instructions take no ModRM operand bytes, so the
/// length is the same in 16-, 32- and 64-bit code. Anything else (prefixes,
/// other opcodes, too few bytes) is `None`: decode it with [`decode`].
pub fn quick_len(bytes: &[u8]) -> Option<usize> {
    // Missing bytes read as 00, which completes none of the encodings.
    let mut word = [0u8; 4];
    for (w, b) in word.iter_mut().zip(bytes) {
        *w = *b;
    }
    quick_len3(u32::from_le_bytes(word))
}

/// [`quick_len`] of the three bytes in `bytes` (byte 0 in bits 7:0, byte
/// 2 in bits 23:16; bits above are ignored), in a few compares, the SVM
/// instructions first.
#[inline]
pub fn quick_len3(bytes: u32) -> Option<usize> {
    let w = bytes & 0x00ff_ffff;
    // VMRUN, VMMCALL, VMLOAD, VMSAVE, STGI, CLGI, SKINIT, INVLPGA; RDTSCP.
    if w & 0x00f8_ffff == 0x00d8_010f || w == 0x00f9_010f {
        Some(3)
    // HLT.
    } else if w & 0xff == 0xf4 {
        Some(1)
    // WRMSR, RDTSC, RDMSR, CPUID.
    } else if matches!(w & 0xffff, 0x300f | 0x310f | 0x320f | 0xa20f) {
        Some(2)
    } else {
        None
    }
}

impl Decoded {
    /// The linear address of the instruction's memory operand (LMSW or LTR
    /// with [`Operand::Memory`]), from the guest's general registers
    /// (`gpr(n)`, 0 = RAX) and segment bases (`seg_base`), truncated to the
    /// address size. `None` without a memory operand.
    pub fn memory_address(
        &self,
        gpr_value: impl Fn(u8) -> u64,
        seg_base: impl Fn(Seg) -> u64,
    ) -> Option<u64> {
        if self.raw.op0_kind() != OpKind::Memory {
            return None;
        }
        self.raw
            .virtual_address(0, 0, |reg, _, _| register_value(reg, &gpr_value, &seg_base))
    }
}

/// One memory access of an instruction: where, how many bytes, and
/// whether it writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// Linear address of its first byte.
    pub la: u64,
    /// Bytes.
    pub size: u64,
    /// A (possibly conditional) write; a read otherwise.
    pub write: bool,
}

/// What dropping the stores of an instruction (into unbacked memory)
/// leaves for L0 to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreDrop {
    /// The stores are its only effect: move RIP past it.
    Skip,
    /// A string store: registers move as [`StringStore::drop_stores`] says.
    String(StringStore),
    /// A read-modify-write of the memory operand: RFLAGS as
    /// [`alu::apply`] gives them for an all-ones destination.
    Alu {
        /// The operation.
        op: alu::Op,
        /// Operand size in bytes.
        size: u32,
        /// The source operand.
        src: AluSrc,
    },
    /// A shift or rotate of the memory operand: RFLAGS as
    /// [`alu::shift`] gives them for an all-ones destination.
    Shift {
        /// The operation.
        op: alu::Shift,
        /// Operand size in bytes.
        size: u32,
        /// The count: an immediate, or CL when `None`.
        count: Option<u8>,
    },
    /// XCHG with memory: the register gets the all-ones value.
    Xchg {
        /// Operand size in bytes.
        size: u32,
        /// The register.
        reg: RegRef,
    },
    /// XADD with memory: the register gets all-ones, RFLAGS those of the
    /// addition.
    Xadd {
        /// Operand size in bytes.
        size: u32,
        /// The register.
        reg: RegRef,
    },
    /// CMPXCHG with memory: RFLAGS of comparing the accumulator with
    /// all-ones; if they differ the accumulator gets all-ones.
    Cmpxchg {
        /// Operand size in bytes.
        size: u32,
    },
    /// BTS, BTR, BTC with an immediate bit: CF gets the bit (1).
    BitTest,
    /// A push onto the stack in 64-bit code (PUSH, PUSHF, near CALL): RSP
    /// moves by `delta`; a CALL goes to its target.
    Stack {
        /// RSP's change (negative).
        delta: i64,
        /// For a CALL: where it goes.
        call: Option<CallTarget>,
    },
    /// It also writes registers or flags in ways L0 does not emulate, or
    /// changes the flow otherwise (far CALL, ENTER, SHLD, CMPXCHG16B, ...).
    Unsupported,
}

/// The target of a near CALL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallTarget {
    /// A relative CALL: this address.
    Direct(u64),
    /// CALL reg: the register's value.
    Reg(u8),
    /// CALL \[mem\]: the 8 bytes at [`Decoded::memory_address`].
    Memory,
}

/// A push or near CALL in 64-bit code.
fn stack_push(i: &Instruction) -> Option<StoreDrop> {
    if i.code_size() != CodeSize::Code64 || i.stack_pointer_increment() >= 0 {
        return None;
    }
    let delta = i64::from(i.stack_pointer_increment());
    let call = match (i.mnemonic(), i.op0_kind()) {
        (Mnemonic::Push | Mnemonic::Pushfq | Mnemonic::Pushf, _) => None,
        (Mnemonic::Call, OpKind::NearBranch64) => Some(CallTarget::Direct(i.near_branch_target())),
        (Mnemonic::Call, OpKind::Register) if i.op0_register().is_gpr64() => {
            Some(CallTarget::Reg(gpr(i.op0_register())?))
        }
        (Mnemonic::Call, OpKind::Memory) if i.memory_size().size() == 8 => Some(CallTarget::Memory),
        _ => return None,
    };
    Some(StoreDrop::Stack { delta, call })
}

/// A general register as an operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegRef {
    /// 0 = RAX .. 15 = R15.
    pub n: u8,
    /// AH, CH, DH or BH (bits 15:8 of register `n`).
    pub high8: bool,
}

impl RegRef {
    /// The operand's value (`size` bytes) from the register's value.
    pub fn read(&self, value: u64, size: u32) -> u64 {
        let v = if self.high8 { value >> 8 } else { value };
        match size {
            8 => v,
            _ => v & ((1u64 << (size * 8)) - 1),
        }
    }
}

/// The source of an [`StoreDrop::Alu`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AluSrc {
    /// A unary operation.
    None,
    /// A register.
    Reg(RegRef),
    /// An immediate (sign-extended as the instruction does).
    Imm(u64),
}

/// A general register of any width as an operand.
fn reg_ref(reg: Register) -> Option<RegRef> {
    let r = reg as u32;
    let at = |first: Register, last: Register| {
        (first as u32..=last as u32)
            .contains(&r)
            .then(|| (r - first as u32) as u8)
    };
    if let Some(n) = at(Register::AL, Register::BL) {
        return Some(RegRef { n, high8: false });
    }
    if let Some(n) = at(Register::AH, Register::BH) {
        return Some(RegRef { n, high8: true });
    }
    if let Some(n) = at(Register::SPL, Register::R15L) {
        return Some(RegRef {
            n: n + 4,
            high8: false,
        });
    }
    gpr(reg).map(|n| RegRef { n, high8: false })
}

/// A read-modify-write with a memory destination (operand 0).
fn read_modify_write(i: &Instruction) -> Option<StoreDrop> {
    if i.op0_kind() != OpKind::Memory {
        return None;
    }
    let size = i.memory_size().size() as u32;
    if !matches!(size, 1 | 2 | 4 | 8) {
        return None;
    }
    let src = || match i.op1_kind() {
        OpKind::Register => reg_ref(i.op1_register()).map(AluSrc::Reg),
        OpKind::Immediate8
        | OpKind::Immediate16
        | OpKind::Immediate32
        | OpKind::Immediate64
        | OpKind::Immediate8to16
        | OpKind::Immediate8to32
        | OpKind::Immediate8to64
        | OpKind::Immediate32to64 => Some(AluSrc::Imm(i.immediate(1))),
        _ => None,
    };
    let binary = |op| src().map(|src| StoreDrop::Alu { op, size, src });
    let unary = |op| {
        Some(StoreDrop::Alu {
            op,
            size,
            src: AluSrc::None,
        })
    };
    let shift = |op| {
        let count = match i.op1_kind() {
            OpKind::Immediate8 => Some(i.immediate8()),
            OpKind::Register if i.op1_register() == Register::CL => None,
            _ => return None,
        };
        Some(StoreDrop::Shift { op, size, count })
    };
    match i.mnemonic() {
        Mnemonic::Add => binary(alu::Op::Add),
        Mnemonic::Or => binary(alu::Op::Or),
        Mnemonic::Adc => binary(alu::Op::Adc),
        Mnemonic::Sbb => binary(alu::Op::Sbb),
        Mnemonic::And => binary(alu::Op::And),
        Mnemonic::Sub => binary(alu::Op::Sub),
        Mnemonic::Xor => binary(alu::Op::Xor),
        Mnemonic::Inc => unary(alu::Op::Inc),
        Mnemonic::Dec => unary(alu::Op::Dec),
        Mnemonic::Neg => unary(alu::Op::Neg),
        Mnemonic::Not => unary(alu::Op::Not),
        Mnemonic::Rol => shift(alu::Shift::Rol),
        Mnemonic::Ror => shift(alu::Shift::Ror),
        Mnemonic::Rcl => shift(alu::Shift::Rcl),
        Mnemonic::Rcr => shift(alu::Shift::Rcr),
        Mnemonic::Shl | Mnemonic::Sal => shift(alu::Shift::Shl),
        Mnemonic::Shr => shift(alu::Shift::Shr),
        Mnemonic::Sar => shift(alu::Shift::Sar),
        Mnemonic::Xadd if i.op1_kind() == OpKind::Register => {
            reg_ref(i.op1_register()).map(|reg| StoreDrop::Xadd { size, reg })
        }
        Mnemonic::Cmpxchg => Some(StoreDrop::Cmpxchg { size }),
        // A register bit offset can address another location: immediate only.
        Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc if i.op1_kind() == OpKind::Immediate8 => {
            Some(StoreDrop::BitTest)
        }
        Mnemonic::Xchg if i.op1_kind() == OpKind::Register => {
            reg_ref(i.op1_register()).map(|reg| StoreDrop::Xchg { size, reg })
        }
        _ => None,
    }
}

impl Decoded {
    /// Each memory access of the instruction, in the order the decoder
    /// lists them (explicit operands, then string and stack operands), with
    /// its linear address from the guest's registers (`gpr_value`, 0 = RAX)
    /// and segment bases. Accesses whose address needs other registers
    /// (vector indexes) are left out; one of unknown size (a REP string)
    /// counts its first byte.
    pub fn memory_accesses(
        &self,
        gpr_value: impl Fn(u8) -> u64,
        seg_base: impl Fn(Seg) -> u64,
        mut each: impl FnMut(Access),
    ) {
        let mut factory = InstructionInfoFactory::new();
        let info = factory.info(&self.raw);
        for m in info.used_memory() {
            let write = match m.access() {
                OpAccess::Write
                | OpAccess::CondWrite
                | OpAccess::ReadWrite
                | OpAccess::ReadCondWrite => true,
                OpAccess::Read | OpAccess::CondRead => false,
                OpAccess::None | OpAccess::NoMemAccess => continue,
            };
            let la = m.virtual_address(0, |reg, _, _| register_value(reg, &gpr_value, &seg_base));
            if let Some(la) = la {
                each(Access {
                    la,
                    size: m.memory_size().size().max(1) as u64,
                    write,
                });
            }
        }
    }

    /// What is left to do when every store of this instruction goes to
    /// unbacked memory and is dropped.
    pub fn store_drop(&self) -> StoreDrop {
        use Code as C;
        let i = &self.raw;
        let size = match i.code() {
            C::Stosb_m8_AL | C::Movsb_m8_m8 => 1,
            C::Stosw_m16_AX | C::Movsw_m16_m16 => 2,
            C::Stosd_m32_EAX | C::Movsd_m32_m32 => 4,
            C::Stosq_m64_RAX | C::Movsq_m64_m64 => 8,
            _ => 0,
        };
        if size != 0 {
            let address_size = match i.op0_kind() {
                OpKind::MemoryESDI => 16,
                OpKind::MemoryESEDI => 32,
                _ => 64,
            };
            return StoreDrop::String(StringStore {
                size,
                // REPE/REPNE mean REP for STOS and MOVS.
                rep: i.has_rep_prefix() || i.has_repne_prefix(),
                has_source: matches!(
                    i.code(),
                    C::Movsb_m8_m8 | C::Movsw_m16_m16 | C::Movsd_m32_m32 | C::Movsq_m64_m64
                ),
                address_size,
            });
        }
        if let Some(drop) = read_modify_write(i).or_else(|| stack_push(i)) {
            return drop;
        }
        let mut factory = InstructionInfoFactory::new();
        let info = factory.info(i);
        let writes_register = info.used_registers().iter().any(|r| {
            matches!(
                r.access(),
                OpAccess::Write
                    | OpAccess::CondWrite
                    | OpAccess::ReadWrite
                    | OpAccess::ReadCondWrite
            )
        });
        let stores_only = info.used_memory().iter().all(|m| {
            matches!(
                m.access(),
                OpAccess::Write | OpAccess::Read | OpAccess::NoMemAccess
            )
        }) && info
            .used_memory()
            .iter()
            .any(|m| m.access() == OpAccess::Write);
        if !writes_register
            && stores_only
            && i.rflags_modified() == 0
            && i.flow_control() == FlowControl::Next
            && !i.has_lock_prefix()
        {
            StoreDrop::Skip
        } else {
            StoreDrop::Unsupported
        }
    }
}

impl Decoded {
    /// The instruction as L0 completes it against a device register
    /// ([`crate::emulate::mmio`]): MOV to or from memory (register or
    /// immediate source), MOVZX, MOVSX and MOVSXD loads. `None` for
    /// anything else (the caller raises #UD), and for LOCK or segment
    /// forms with no plain MMIO meaning.
    pub fn mmio(&self) -> Option<crate::emulate::mmio::MmioInsn> {
        use crate::emulate::mmio::{Extend, MmioInsn, Operand, Reg};
        let i = &self.raw;
        if i.has_lock_prefix() {
            return None;
        }
        let reg = |r: Register| {
            let rr = reg_ref(r)?;
            Some(Reg {
                n: rr.n,
                high8: rr.high8,
                size: r.size() as u8,
            })
        };
        let size = i.memory_size().size() as u8;
        if !matches!(size, 1 | 2 | 4 | 8) {
            return None;
        }
        let load = |extend| {
            if i.op1_kind() != OpKind::Memory || i.op0_kind() != OpKind::Register {
                return None;
            }
            Some(MmioInsn::Load {
                reg: reg(i.op0_register())?,
                size,
                extend,
            })
        };
        match i.mnemonic() {
            Mnemonic::Mov if i.op0_kind() == OpKind::Memory => match i.op1_kind() {
                OpKind::Register => Some(MmioInsn::StoreReg {
                    reg: reg(i.op1_register())?,
                    size,
                }),
                OpKind::Immediate8
                | OpKind::Immediate16
                | OpKind::Immediate32
                | OpKind::Immediate32to64 => Some(MmioInsn::StoreImm {
                    value: i.immediate(1),
                    size,
                }),
                _ => None,
            },
            Mnemonic::Cmp | Mnemonic::Test => {
                let op = if i.mnemonic() == Mnemonic::Cmp {
                    alu::Op::Sub
                } else {
                    alu::Op::And
                };
                let (mem_first, other_kind) = match (i.op0_kind(), i.op1_kind()) {
                    (OpKind::Memory, k) => (true, k),
                    (k, OpKind::Memory) => (false, k),
                    _ => return None,
                };
                let other = match other_kind {
                    OpKind::Register => {
                        let r = if mem_first {
                            i.op1_register()
                        } else {
                            i.op0_register()
                        };
                        Operand::Reg(reg(r)?)
                    }
                    OpKind::Immediate8
                    | OpKind::Immediate16
                    | OpKind::Immediate32
                    | OpKind::Immediate8to16
                    | OpKind::Immediate8to32
                    | OpKind::Immediate8to64
                    | OpKind::Immediate32to64 => Operand::Imm(i.immediate(1)),
                    _ => return None,
                };
                Some(MmioInsn::Compare {
                    op,
                    size,
                    other,
                    mem_first,
                })
            }
            Mnemonic::Mov => load(Extend::None),
            Mnemonic::Movzx => load(Extend::Zero),
            Mnemonic::Movsx | Mnemonic::Movsxd => load(Extend::Sign),
            _ => None,
        }
    }
}

/// A register's value for an address: general registers of any width from
/// `gpr_value`, segment registers as their base.
fn register_value(
    reg: Register,
    gpr_value: &impl Fn(u8) -> u64,
    seg_base: &impl Fn(Seg) -> u64,
) -> Option<u64> {
    let seg = match reg {
        Register::ES => Some(Seg::Es),
        Register::CS => Some(Seg::Cs),
        Register::SS => Some(Seg::Ss),
        Register::DS => Some(Seg::Ds),
        Register::FS => Some(Seg::Fs),
        Register::GS => Some(Seg::Gs),
        _ => None,
    };
    if let Some(seg) = seg {
        return Some(seg_base(seg));
    }
    let n = gpr(reg)?;
    let v = gpr_value(n);
    Some(match reg.size_bytes() {
        2 => v & 0xffff,
        4 => v & 0xffff_ffff,
        _ => v,
    })
}

trait RegSize {
    fn size_bytes(self) -> usize;
}

impl RegSize for Register {
    fn size_bytes(self) -> usize {
        let r = self as u32;
        let within = |first: Register| (first as u32..first as u32 + 16).contains(&r);
        if within(Register::AX) {
            2
        } else if within(Register::EAX) {
            4
        } else {
            8
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d64(bytes: &[u8]) -> Result<(Insn, usize), DecodeError> {
        decode(bytes, 64, 0x1000).map(|d| (d.insn, d.len))
    }

    /// The quick path agrees with the decoder on each encoding it knows,
    /// in every code size, and leaves everything with a prefix (or too
    /// short) to the decoder.
    #[test]
    fn quick_len_matches_the_decoder() {
        let known: &[&[u8]] = &[
            &[0xF4],
            &[0x0F, 0x30],
            &[0x0F, 0x31],
            &[0x0F, 0x32],
            &[0x0F, 0xA2],
            &[0x0F, 0x01, 0xD8],
            &[0x0F, 0x01, 0xD9],
            &[0x0F, 0x01, 0xDA],
            &[0x0F, 0x01, 0xDB],
            &[0x0F, 0x01, 0xDC],
            &[0x0F, 0x01, 0xDD],
            &[0x0F, 0x01, 0xDE],
            &[0x0F, 0x01, 0xDF],
            &[0x0F, 0x01, 0xF9],
        ];
        for bytes in known {
            let mut padded = bytes.to_vec();
            padded.extend_from_slice(&[0x90; 4]);
            for bits in [16, 32, 64] {
                let full = decode(&padded, bits, 0x1000).expect("decodes").len;
                assert_eq!(
                    quick_len(&padded),
                    Some(full),
                    "{bytes:x?} in {bits}-bit code"
                );
            }
        }
        let other: &[&[u8]] = &[
            &[],
            &[0x0F],
            &[0x0F, 0x01],
            &[0x67, 0x0F, 0x01, 0xD8],
            &[0x48, 0x0F, 0x32],
            &[0x66, 0xF4],
            &[0x0F, 0x01, 0xD1],
            &[0x0F, 0x22, 0xC0],
            &[0x90],
        ];
        for bytes in other {
            assert_eq!(quick_len(bytes), None, "{bytes:x?}");
        }
    }

    /// quick_len3 says what the plain encodings' byte patterns say, for
    /// every three bytes.
    #[test]
    fn quick_len3_equals_the_patterns() {
        let reference = |b: [u8; 4]| match b {
            [0xF4, ..] => Some(1),
            [0x0F, 0x30 | 0x31 | 0x32 | 0xA2, ..] => Some(2),
            [0x0F, 0x01, 0xD8..=0xDF | 0xF9, ..] => Some(3),
            _ => None,
        };
        for w in 0..1u32 << 24 {
            let expected = reference(w.to_le_bytes());
            assert_eq!(quick_len3(w | 0xab00_0000), expected, "{w:06x}");
        }
        assert_eq!(quick_len(&[0x0F, 0x01]), None, "a missing byte is no D8");
    }

    #[test]
    fn plain_encodings() {
        let cases: &[(&[u8], Insn, usize)] = &[
            (&[0x0F, 0xA2], Insn::Cpuid, 2),
            (&[0x0F, 0x32, 0x90], Insn::Rdmsr, 2),
            (&[0x0F, 0x30], Insn::Wrmsr, 2),
            (&[0x0F, 0x31], Insn::Rdtsc, 2),
            (&[0x0F, 0x01, 0xF9], Insn::Rdtscp, 3),
            (&[0xF4], Insn::Hlt, 1),
            (&[0x0F, 0x01, 0xD8], Insn::Vmrun, 3),
            (&[0x0F, 0x01, 0xD9], Insn::Vmmcall, 3),
            (&[0x0F, 0x01, 0xDA], Insn::Vmload, 3),
            (&[0x0F, 0x01, 0xDB], Insn::Vmsave, 3),
            (&[0x0F, 0x01, 0xDC], Insn::Stgi, 3),
            (&[0x0F, 0x01, 0xDD], Insn::Clgi, 3),
            (&[0x0F, 0x01, 0xDE], Insn::Skinit, 3),
            (&[0x0F, 0x01, 0xDF], Insn::Invlpga, 3),
            (&[0x0F, 0x01, 0xD1], Insn::Xsetbv, 3),
            (&[0x0F, 0x09], Insn::Wbinvd, 2),
            (&[0x0F, 0x08], Insn::Invd, 2),
            (&[0x0F, 0x06], Insn::Clts, 2),
            (&[0x90], Insn::Other, 1),
        ];
        for (bytes, insn, len) in cases {
            assert_eq!(d64(bytes), Ok((*insn, *len)), "{bytes:02x?}");
        }
    }

    #[test]
    fn prefixes_count_towards_the_length() {
        assert_eq!(d64(&[0x67, 0x0F, 0x01, 0xD8]), Ok((Insn::Vmrun, 4)));
        assert_eq!(d64(&[0x2E, 0x66, 0x48, 0x0F, 0x32]), Ok((Insn::Rdmsr, 5)));
        assert_eq!(d64(&[0xF3, 0xF4]), Ok((Insn::Hlt, 2)));
    }

    /// The encodings a fuzzer found killing the VM (ISSUE 8, A6): a REX
    /// before a legacy prefix is ignored by the CPU, not an error.
    #[test]
    fn rex_before_legacy_prefixes_is_ignored() {
        for bytes in [
            &[0x40, 0x66, 0x0F, 0xA2][..],
            &[0x40, 0x26, 0x0F, 0xA2],
            &[0x43, 0x42, 0x0F, 0xA2],
            &[0x4B, 0xF3, 0xF3, 0x0F, 0xA2],
            &[0x48, 0x66, 0x0F, 0x32],
        ] {
            let (insn, len) = d64(bytes).unwrap();
            assert_eq!(len, bytes.len(), "{bytes:02x?}");
            assert!(matches!(insn, Insn::Cpuid | Insn::Rdmsr), "{bytes:02x?}");
        }
    }

    #[test]
    fn unknown_invalid_and_truncated_input() {
        assert_eq!(d64(&[]), Err(DecodeError::Truncated(0)));
        assert_eq!(d64(&[0x0F]), Err(DecodeError::Truncated(1)));
        assert_eq!(d64(&[0x0F, 0x01]), Err(DecodeError::Truncated(2)));
        assert_eq!(d64(&[0x0F, 0x0B]), Ok((Insn::Other, 2))); // UD2 is valid
        assert_eq!(d64(&[0x0F, 0xFF, 0xC0]), Ok((Insn::Other, 2))); // UD0 has no ModRM on AMD
        assert_eq!(d64(&[0x06, 0x90]), Err(DecodeError::Invalid)); // PUSH ES in 64-bit mode
        assert_eq!(d64(&[0x66; 20]), Err(DecodeError::Invalid));
    }

    #[test]
    fn never_longer_than_fifteen_bytes() {
        let mut bytes = [0x66u8; 16];
        bytes[13] = 0x0F;
        bytes[14] = 0x32;
        assert_eq!(d64(&bytes), Ok((Insn::Rdmsr, 15)));
        bytes[13] = 0x66;
        bytes[14] = 0x0F;
        bytes[15] = 0x32;
        assert_eq!(d64(&bytes), Err(DecodeError::Invalid));
    }

    #[test]
    fn control_and_debug_register_writes() {
        // mov cr0, rax; mov cr4, rbx; mov cr8, r9 (REX.R); mov cr8, eax via LOCK (32-bit).
        assert_eq!(
            d64(&[0x0F, 0x22, 0xC0]),
            Ok((Insn::MovToCr { cr: 0, gpr: 0 }, 3))
        );
        assert_eq!(
            d64(&[0x0F, 0x22, 0xE3]),
            Ok((Insn::MovToCr { cr: 4, gpr: 3 }, 3))
        );
        assert_eq!(
            d64(&[0x45, 0x0F, 0x22, 0xC1]),
            Ok((Insn::MovToCr { cr: 8, gpr: 9 }, 4))
        );
        let lock_cr8 = decode(&[0xF0, 0x0F, 0x22, 0xC0], 32, 0).unwrap();
        assert_eq!(lock_cr8.insn, Insn::MovToCr { cr: 8, gpr: 0 });
        // mov dr7, rcx; mov dr5, r15
        assert_eq!(
            d64(&[0x0F, 0x23, 0xF9]),
            Ok((Insn::MovToDr { dr: 7, gpr: 1 }, 3))
        );
        assert_eq!(
            d64(&[0x41, 0x0F, 0x23, 0xEF]),
            Ok((Insn::MovToDr { dr: 5, gpr: 15 }, 4))
        );
    }

    #[test]
    fn lmsw_and_ltr_operands() {
        // lmsw ax; lmsw [rbx+8]; ltr cx; ltr [rip+0x10]
        assert_eq!(
            d64(&[0x0F, 0x01, 0xF0]),
            Ok((Insn::Lmsw(Operand::Gpr(0)), 3))
        );
        let m = decode(&[0x0F, 0x01, 0x73, 0x08], 64, 0x1000).unwrap();
        assert_eq!(m.insn, Insn::Lmsw(Operand::Memory));
        let regs = |n| if n == 3 { 0x5000 } else { 0 };
        assert_eq!(m.memory_address(regs, |_| 0), Some(0x5008));
        assert_eq!(
            d64(&[0x0F, 0x00, 0xD9]),
            Ok((Insn::Ltr(Operand::Gpr(1)), 3))
        );
        let r = decode(&[0x0F, 0x00, 0x1D, 0x10, 0, 0, 0], 64, 0x1000).unwrap();
        assert_eq!(r.insn, Insn::Ltr(Operand::Memory));
        assert_eq!(r.memory_address(|_| 0, |_| 0), Some(0x1000 + 7 + 0x10));
        // 32-bit code: fs-relative, segment base added, address truncated.
        let f = decode(&[0x64, 0x0F, 0x00, 0x18], 32, 0).unwrap();
        let fs = |s| if s == Seg::Fs { 0x10_0000 } else { 0 };
        assert_eq!(
            f.memory_address(|_| 0xffff_ffff_0000_0010, fs),
            Some(0x10_0010)
        );
    }

    #[test]
    fn code_size_follows_the_mode() {
        let (lma, pe) = (1 << 10, 1);
        assert_eq!(bitness(pe, lma, 2, 1 << 9), 64);
        assert_eq!(bitness(pe, lma, 2, 1 << 10), 32);
        assert_eq!(bitness(pe, 0, 2, 1 << 10), 32);
        assert_eq!(bitness(pe, 0, 2, 0), 16);
        assert_eq!(bitness(0, 0, 2, 1 << 10), 16);
        assert_eq!(bitness(pe, 0, 2 | 1 << 17, 1 << 10), 16);
        // In 16- and 32-bit code 0x40-0x4F are INC/DEC, not REX.
        assert_eq!(
            decode(&[0x40, 0x0F, 0xA2], 32, 0).map(|d| (d.insn, d.len)),
            Ok((Insn::Other, 1))
        );
    }

    #[test]
    fn real_and_compatibility_mode_code_sizes() {
        let (lma, pe) = (1 << 10, 1);
        // Real mode is 16-bit whatever the hidden CS.D/L (kept from
        // protected mode); compatibility mode follows CS.D.
        assert_eq!(bitness(0, 0, 2, 1 << 10 | 1 << 9), 16);
        assert_eq!(bitness(pe, lma, 2, 0), 16);
        // CS.L outside long mode means nothing.
        assert_eq!(bitness(pe, 0, 2, 1 << 9), 16);
    }

    #[test]
    fn sixteen_bit_memory_operands() {
        // lmsw es:[0x1234] (26 0F 01 36 disp16): 6 bytes in 16-bit code,
        // 4 in 32-bit code (modrm 36 is [esi] there).
        let bytes = [0x26, 0x0F, 0x01, 0x36, 0x34, 0x12];
        let d16 = decode(&bytes, 16, 0).unwrap();
        assert_eq!((d16.insn, d16.len), (Insn::Lmsw(Operand::Memory), 6));
        assert_eq!(decode(&bytes, 32, 0).unwrap().len, 4);
        let es = |s| if s == Seg::Es { 0x10_0000 } else { 0 };
        assert_eq!(d16.memory_address(|_| 0, es), Some(0x10_1234));
        // lmsw [bx+si+0x10] (0F 01 70 10): the offset wraps at 64 KiB.
        let d = decode(&[0x0F, 0x01, 0x70, 0x10], 16, 0).unwrap();
        let regs = |n| match n {
            3 => 0xffff_fff0, // BX (upper bits ignored)
            6 => 0x10,        // SI
            _ => 0,
        };
        let ds = |s| if s == Seg::Ds { 0x2000 } else { 0 };
        assert_eq!(d.memory_address(regs, ds), Some(0x2010));
    }

    fn accesses(bytes: &[u8], regs: [u64; 16]) -> std::vec::Vec<Access> {
        let d = decode(bytes, 64, 0x1000).unwrap();
        let mut v = std::vec::Vec::new();
        d.memory_accesses(|n| regs[n as usize], |_| 0, |a| v.push(a));
        v
    }

    #[test]
    fn memory_accesses_with_their_direction() {
        let mut regs = [0u64; 16];
        regs[0] = 0x5000; // RAX
        regs[1] = 0x10; // RCX
        regs[4] = 0x8000; // RSP
        regs[7] = 0x9000; // RDI
                          // mov [rax+rcx*2], ebx: a 4-byte write.
        let w = Access {
            la: 0x5020,
            size: 4,
            write: true,
        };
        assert_eq!(accesses(&[0x89, 0x1C, 0x48], regs), [w]);
        // mov rbx, [rax]: an 8-byte read.
        let r = Access {
            la: 0x5000,
            size: 8,
            write: false,
        };
        assert_eq!(accesses(&[0x48, 0x8B, 0x18], regs), [r]);
        // push rbx: a write below RSP.
        let p = Access {
            la: 0x7FF8,
            size: 8,
            write: true,
        };
        assert_eq!(accesses(&[0x53], regs), [p]);
        // rep stosq: at RDI; the decoder gives no size for a REP string
        // (its length depends on RCX): the first byte counts.
        let s = Access {
            la: 0x9000,
            size: 1,
            write: true,
        };
        assert_eq!(accesses(&[0xF3, 0x48, 0xAB], regs), [s]);
        // RIP-relative: from the next instruction.
        let rel = accesses(&[0x8B, 0x05, 0x10, 0, 0, 0], regs);
        assert_eq!(rel[0].la, 0x1000 + 6 + 0x10);
    }

    #[test]
    fn register_operands_read_by_size() {
        let v = 0x1122_3344_5566_7788;
        let r = |n, high8| RegRef { n, high8 };
        assert_eq!(r(0, true).read(v, 1), 0x77);
        assert_eq!(r(0, false).read(v, 1), 0x88);
        assert_eq!(r(0, false).read(v, 2), 0x7788);
        assert_eq!(r(0, false).read(v, 4), 0x5566_7788);
        assert_eq!(r(0, false).read(v, 8), v);
    }

    #[test]
    fn mmio_forms() {
        use crate::emulate::mmio::{Extend, MmioInsn, Operand, Reg};
        let m = |bytes: &[u8], bits| decode(bytes, bits, 0).unwrap().mmio();
        let r = |n, size| Reg {
            n,
            high8: false,
            size,
        };
        // mov eax, [rbx+0x30] / mov [rbx+0xb0], ecx / mov dword [rax], 0x1ff
        assert_eq!(
            m(&[0x8B, 0x43, 0x30], 64),
            Some(MmioInsn::Load {
                reg: r(0, 4),
                size: 4,
                extend: Extend::None
            })
        );
        assert_eq!(
            m(&[0x89, 0x8B, 0xB0, 0, 0, 0], 64),
            Some(MmioInsn::StoreReg {
                reg: r(1, 4),
                size: 4
            })
        );
        assert_eq!(
            m(&[0xC7, 0x00, 0xFF, 0x01, 0, 0], 64),
            Some(MmioInsn::StoreImm {
                value: 0x1FF,
                size: 4
            })
        );
        // mov r9, [rax] / mov [rax], bh / movzx eax, byte [rax]
        assert_eq!(
            m(&[0x4C, 0x8B, 0x08], 64),
            Some(MmioInsn::Load {
                reg: r(9, 8),
                size: 8,
                extend: Extend::None
            })
        );
        assert_eq!(
            m(&[0x88, 0x38], 64),
            Some(MmioInsn::StoreReg {
                reg: Reg {
                    n: 3,
                    high8: true,
                    size: 1
                },
                size: 1
            })
        );
        assert_eq!(
            m(&[0x0F, 0xB6, 0x00], 64),
            Some(MmioInsn::Load {
                reg: r(0, 4),
                size: 1,
                extend: Extend::Zero
            })
        );
        // movsxd rax, dword [rax]; 32-bit code: mov eax, [0xfee00030] (moffs)
        assert_eq!(
            m(&[0x48, 0x63, 0x00], 64),
            Some(MmioInsn::Load {
                reg: r(0, 8),
                size: 4,
                extend: Extend::Sign
            })
        );
        assert_eq!(
            m(&[0xA1, 0x30, 0x00, 0xE0, 0xFE], 32),
            Some(MmioInsn::Load {
                reg: r(0, 4),
                size: 4,
                extend: Extend::None
            })
        );
        // testl $1, (%r15); cmp eax, [rbx]
        assert_eq!(
            m(&[0x41, 0xF7, 0x07, 1, 0, 0, 0], 64),
            Some(MmioInsn::Compare {
                op: alu::Op::And,
                size: 4,
                other: Operand::Imm(1),
                mem_first: true
            })
        );
        assert_eq!(
            m(&[0x3B, 0x03], 64),
            Some(MmioInsn::Compare {
                op: alu::Op::Sub,
                size: 4,
                other: Operand::Reg(r(0, 4)),
                mem_first: false
            })
        );
        // Not emulated: add [rax], eax; movs; lock-free xchg; mov between registers.
        assert_eq!(m(&[0x01, 0x00], 64), None);
        assert_eq!(m(&[0xA5], 64), None);
        assert_eq!(m(&[0x87, 0x00], 64), None);
        assert_eq!(m(&[0x89, 0xC0], 64), None);
        assert_eq!(m(&[0x0F, 0x29, 0x00], 64), None, "movaps [rax], xmm0");
    }

    #[test]
    fn which_dropped_stores_l0_completes() {
        let drop = |bytes: &[u8]| decode(bytes, 64, 0).unwrap().store_drop();
        // Plain stores.
        assert_eq!(drop(&[0x48, 0x89, 0x18]), StoreDrop::Skip, "mov [rax], rbx");
        assert_eq!(
            drop(&[0xC6, 0x00, 0x12]),
            StoreDrop::Skip,
            "mov byte [rax], 0x12"
        );
        assert_eq!(drop(&[0x0F, 0x94, 0x00]), StoreDrop::Skip, "sete [rax]");
        assert_eq!(
            drop(&[0x0F, 0x29, 0x00]),
            StoreDrop::Skip,
            "movaps [rax], xmm0"
        );
        // String stores.
        let rep_stosb = StringStore {
            size: 1,
            rep: true,
            has_source: false,
            address_size: 64,
        };
        assert_eq!(drop(&[0xF3, 0xAA]), StoreDrop::String(rep_stosb));
        assert_eq!(
            drop(&[0x67, 0xA5]),
            StoreDrop::String(StringStore {
                size: 4,
                rep: false,
                has_source: true,
                address_size: 32,
            }),
            "movsd with a 32-bit address"
        );
        // Read-modify-writes: the flags (or the register) from all-ones.
        let al = RegRef { n: 0, high8: false };
        let alu = |op, size, src| StoreDrop::Alu { op, size, src };
        assert_eq!(
            drop(&[0x00, 0x00]),
            alu(alu::Op::Add, 1, AluSrc::Reg(al)),
            "add [rax], al"
        );
        let bh = RegRef { n: 3, high8: true };
        assert_eq!(
            drop(&[0x20, 0x38]),
            alu(alu::Op::And, 1, AluSrc::Reg(bh)),
            "and [rax], bh"
        );
        let dil = RegRef { n: 7, high8: false };
        assert_eq!(
            drop(&[0x40, 0x08, 0x38]),
            alu(alu::Op::Or, 1, AluSrc::Reg(dil)),
            "or [rax], dil"
        );
        assert_eq!(
            drop(&[0x48, 0x83, 0x28, 0xF0]),
            alu(alu::Op::Sub, 8, AluSrc::Imm(0xFFFF_FFFF_FFFF_FFF0)),
            "sub qword [rax], -16"
        );
        assert_eq!(
            drop(&[0xF0, 0xFF, 0x00]),
            alu(alu::Op::Inc, 4, AluSrc::None),
            "lock inc dword [rax]"
        );
        let rbx = RegRef { n: 3, high8: false };
        assert_eq!(
            drop(&[0x48, 0x87, 0x18]),
            StoreDrop::Xchg { size: 8, reg: rbx },
            "xchg [rax], rbx"
        );
        let shift = |op, size, count| StoreDrop::Shift { op, size, count };
        assert_eq!(
            drop(&[0xD1, 0x20]),
            shift(alu::Shift::Shl, 4, Some(1)),
            "shl dword [rax], 1"
        );
        assert_eq!(
            drop(&[0x48, 0xD3, 0x38]),
            shift(alu::Shift::Sar, 8, None),
            "sar qword [rax], cl"
        );
        assert_eq!(
            drop(&[0xC0, 0x10, 0x05]),
            shift(alu::Shift::Rcl, 1, Some(5)),
            "rcl byte [rax], 5"
        );
        assert_eq!(
            drop(&[0xF0, 0x48, 0x0F, 0xC1, 0x18]),
            StoreDrop::Xadd { size: 8, reg: rbx },
            "lock xadd [rax], rbx"
        );
        assert_eq!(
            drop(&[0x0F, 0xB1, 0x18]),
            StoreDrop::Cmpxchg { size: 4 },
            "cmpxchg [rax], ebx"
        );
        assert_eq!(
            drop(&[0x0F, 0xBA, 0x28, 0x03]),
            StoreDrop::BitTest,
            "bts dword [rax], 3"
        );
        // More than L0 emulates.
        assert_eq!(
            drop(&[0x0F, 0xAB, 0x18]),
            StoreDrop::Unsupported,
            "bts [rax], ebx"
        );
        assert_eq!(
            drop(&[0x0F, 0xA4, 0x18, 0x04]),
            StoreDrop::Unsupported,
            "shld [rax], ebx, 4"
        );
        assert_eq!(
            drop(&[0xFF, 0x18]),
            StoreDrop::Unsupported,
            "call far [rax]"
        );
        assert_eq!(
            decode(&[0x53], 32, 0).unwrap().store_drop(),
            StoreDrop::Unsupported,
            "push ebx in 32-bit code"
        );
        // Pushes and near calls in 64-bit code.
        let push = |delta| StoreDrop::Stack { delta, call: None };
        assert_eq!(drop(&[0x53]), push(-8), "push rbx");
        assert_eq!(drop(&[0x66, 0x53]), push(-2), "push bx");
        assert_eq!(drop(&[0x9C]), push(-8), "pushfq");
        assert_eq!(drop(&[0x6A, 0x12]), push(-8), "push 0x12");
        let call = |target| StoreDrop::Stack {
            delta: -8,
            call: Some(target),
        };
        // decode() places the instruction at 0: the target is 5 + 0x10.
        assert_eq!(
            drop(&[0xE8, 0x10, 0, 0, 0]),
            call(CallTarget::Direct(0x15)),
            "call rel32"
        );
        assert_eq!(drop(&[0xFF, 0xD3]), call(CallTarget::Reg(3)), "call rbx");
        assert_eq!(drop(&[0xFF, 0x10]), call(CallTarget::Memory), "call [rax]");
        assert_eq!(
            drop(&[0x48, 0x0F, 0xC7, 0x08]),
            StoreDrop::Unsupported,
            "cmpxchg16b"
        );
    }
}
