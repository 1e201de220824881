//! Decoding the instruction a guest was intercepted on, in any CPU mode.
//!
//! The CPU's `next_rip` gives the length when it saves nRIP (APM 15.7.1),
//! but QEMU TCG has neither nRIP save nor decode assists
//! (docs/qemu-tcg.md), and the CR/DR/TR write emulation needs the operands
//! anyway. So the hypervisor reads the bytes at the guest's RIP and asks
//! [`decode`], which uses `iced-x86` (AMD decoding rules): every legal
//! prefix order (a REX followed by a legacy prefix is ignored, as the CPU
//! ignores it), the 15-byte limit, 16/32/64-bit code.

use iced_x86::{Code, Decoder, DecoderError, DecoderOptions, Instruction, OpKind, Register};

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
        self.raw.virtual_address(0, 0, |reg, _, _| {
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
        })
    }
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
}
