//! #VMEXIT decoding: the EXITCODE (APM Appendix C, "SVM Intercept Exit
//! Codes") and the EXITINFO1 formats the kernel needs (IOIO, MSR, NPF,
//! MOV CRx).

use bitflags::bitflags;

/// A decoded EXITCODE (VMCB 0x070).
///
/// Ranges carry their index: the control/debug register number, the
/// exception vector.
///
/// Decoding, encoding and comparing are on every exit's path, so they are
/// `#[inline]` (the kernel is another crate): a comparison with a constant
/// code is then one compare of the variant tag (see the `PartialEq` impl).
#[derive(Debug, Clone, Copy, Eq)]
pub enum ExitCode {
    /// 0x00-0x0F: read of CR0-15 (MOV from CR, SMSW for CR0).
    CrRead(u8),
    /// 0x10-0x1F: write of CR0-15 (MOV to CR, LMSW/CLTS for CR0).
    CrWrite(u8),
    /// 0x20-0x2F: read of DR0-15.
    DrRead(u8),
    /// 0x30-0x3F: write of DR0-15.
    DrWrite(u8),
    /// 0x40-0x5F: exception vector 0-31 (error code in EXITINFO1 where the
    /// exception has one; #PF address in EXITINFO2).
    Exception(u8),
    /// 0x60: physical INTR.
    Intr,
    /// 0x61: physical NMI.
    Nmi,
    /// 0x62: physical SMI (EXITINFO1 says more).
    Smi,
    /// 0x63: physical INIT.
    Init,
    /// 0x64: virtual INTR.
    Vintr,
    /// 0x65: CR0 write changing bits other than TS/MP.
    Cr0SelWrite,
    /// 0x66: read of IDTR.
    IdtrRead,
    /// 0x67: read of GDTR.
    GdtrRead,
    /// 0x68: read of LDTR.
    LdtrRead,
    /// 0x69: read of TR.
    TrRead,
    /// 0x6A: write of IDTR.
    IdtrWrite,
    /// 0x6B: write of GDTR.
    GdtrWrite,
    /// 0x6C: write of LDTR.
    LdtrWrite,
    /// 0x6D: write of TR.
    TrWrite,
    /// 0x6E: RDTSC (also RDTSCP under QEMU TCG).
    Rdtsc,
    /// 0x6F: RDPMC.
    Rdpmc,
    /// 0x70: PUSHF.
    Pushf,
    /// 0x71: POPF.
    Popf,
    /// 0x72: CPUID.
    Cpuid,
    /// 0x73: RSM.
    Rsm,
    /// 0x74: IRET.
    Iret,
    /// 0x75: software interrupt INTn (EXITINFO1 = n with decode assists).
    Swint,
    /// 0x76: INVD.
    Invd,
    /// 0x77: PAUSE.
    Pause,
    /// 0x78: HLT.
    Hlt,
    /// 0x79: INVLPG.
    Invlpg,
    /// 0x7A: INVLPGA.
    Invlpga,
    /// 0x7B: IN/OUT; EXITINFO1 decodes with [`IoioInfo`], EXITINFO2 holds
    /// the RIP of the next instruction.
    Ioio,
    /// 0x7C: RDMSR/WRMSR; EXITINFO1 decodes with [`MsrAccess`].
    Msr,
    /// 0x7D: task switch.
    TaskSwitch,
    /// 0x7E: FERR freeze.
    FerrFreeze,
    /// 0x7F: shutdown (guest state in the VMCB is undefined).
    Shutdown,
    /// 0x80: VMRUN.
    Vmrun,
    /// 0x81: VMMCALL.
    Vmmcall,
    /// 0x82: VMLOAD.
    Vmload,
    /// 0x83: VMSAVE.
    Vmsave,
    /// 0x84: STGI.
    Stgi,
    /// 0x85: CLGI.
    Clgi,
    /// 0x86: SKINIT.
    Skinit,
    /// 0x87: RDTSCP.
    Rdtscp,
    /// 0x88: ICEBP.
    Icebp,
    /// 0x89: WBINVD / WBNOINVD.
    Wbinvd,
    /// 0x8A: MONITOR / MONITORX.
    Monitor,
    /// 0x8B: MWAIT / MWAITX.
    Mwait,
    /// 0x8C: MWAIT / MWAITX with the monitor armed.
    MwaitConditional,
    /// 0x8D: XSETBV.
    Xsetbv,
    /// 0x8E: RDPRU.
    Rdpru,
    /// 0x8F: write of EFER (trap, after the instruction).
    EferWriteTrap,
    /// 0x90-0x9F: write of CR0-15 (trap, after the instruction).
    CrWriteTrap(u8),
    /// 0xA0: INVLPGB.
    Invlpgb,
    /// 0xA1: illegal INVLPGB.
    InvlpgbIllegal,
    /// 0xA2: INVPCID.
    Invpcid,
    /// 0xA3: MCOMMIT.
    Mcommit,
    /// 0xA4: TLBSYNC.
    Tlbsync,
    /// 0xA5: bus lock with the threshold counter at 0.
    BusLock,
    /// 0xA6: HLT with no virtual interrupt pending.
    IdleHlt,
    /// 0x400: nested page fault; EXITINFO1 decodes with [`NpfErrorCode`],
    /// EXITINFO2 holds the faulting guest physical address.
    Npf,
    /// 0x401: AVIC incomplete IPI.
    AvicIncompleteIpi,
    /// 0x402: AVIC access to an unaccelerated vAPIC register.
    AvicNoaccel,
    /// 0x403: VMGEXIT (SEV-ES).
    Vmgexit,
    /// -1: VMRUN found illegal guest state (APM 15.5.1). See
    /// [`ExitCode::from_raw`] for the two forms it arrives in.
    Invalid,
    /// Any other value, kept verbatim.
    Unknown(u64),
}

impl ExitCode {
    /// Architectural VMEXIT_INVALID (-1).
    pub const INVALID_RAW: u64 = u64::MAX;

    /// Decodes an EXITCODE.
    ///
    /// VMEXIT_INVALID is recognised by its low 32 bits alone: silicon writes
    /// 64-bit -1, QEMU TCG writes 0x0000_0000_FFFF_FFFF (docs/qemu-tcg.md). Any
    /// other value with bits set above bit 31 is [`ExitCode::Unknown`].
    ///
    /// The codes below 0xA7 (every intercept's) come from a table built
    /// by [`ExitCode::decode`] at compile time: a compare and a load at
    /// each exit; the others (NPF, AVIC, VMGEXIT, INVALID) from `decode`.
    #[inline(always)]
    pub const fn from_raw(raw: u64) -> Self {
        match raw < DECODE_TABLE.len() as u64 {
            true => DECODE_TABLE[raw as usize],
            false => Self::decode(raw),
        }
    }

    /// [`ExitCode::from_raw`], by cases.
    #[inline(never)]
    const fn decode(raw: u64) -> Self {
        if raw as u32 == u32::MAX {
            return Self::Invalid;
        }
        if raw >> 32 != 0 {
            return Self::Unknown(raw);
        }
        let code = raw as u32;
        match code {
            0x00..=0x0F => Self::CrRead(code as u8),
            0x10..=0x1F => Self::CrWrite((code - 0x10) as u8),
            0x20..=0x2F => Self::DrRead((code - 0x20) as u8),
            0x30..=0x3F => Self::DrWrite((code - 0x30) as u8),
            0x40..=0x5F => Self::Exception((code - 0x40) as u8),
            0x60 => Self::Intr,
            0x61 => Self::Nmi,
            0x62 => Self::Smi,
            0x63 => Self::Init,
            0x64 => Self::Vintr,
            0x65 => Self::Cr0SelWrite,
            0x66 => Self::IdtrRead,
            0x67 => Self::GdtrRead,
            0x68 => Self::LdtrRead,
            0x69 => Self::TrRead,
            0x6A => Self::IdtrWrite,
            0x6B => Self::GdtrWrite,
            0x6C => Self::LdtrWrite,
            0x6D => Self::TrWrite,
            0x6E => Self::Rdtsc,
            0x6F => Self::Rdpmc,
            0x70 => Self::Pushf,
            0x71 => Self::Popf,
            0x72 => Self::Cpuid,
            0x73 => Self::Rsm,
            0x74 => Self::Iret,
            0x75 => Self::Swint,
            0x76 => Self::Invd,
            0x77 => Self::Pause,
            0x78 => Self::Hlt,
            0x79 => Self::Invlpg,
            0x7A => Self::Invlpga,
            0x7B => Self::Ioio,
            0x7C => Self::Msr,
            0x7D => Self::TaskSwitch,
            0x7E => Self::FerrFreeze,
            0x7F => Self::Shutdown,
            0x80 => Self::Vmrun,
            0x81 => Self::Vmmcall,
            0x82 => Self::Vmload,
            0x83 => Self::Vmsave,
            0x84 => Self::Stgi,
            0x85 => Self::Clgi,
            0x86 => Self::Skinit,
            0x87 => Self::Rdtscp,
            0x88 => Self::Icebp,
            0x89 => Self::Wbinvd,
            0x8A => Self::Monitor,
            0x8B => Self::Mwait,
            0x8C => Self::MwaitConditional,
            0x8D => Self::Xsetbv,
            0x8E => Self::Rdpru,
            0x8F => Self::EferWriteTrap,
            0x90..=0x9F => Self::CrWriteTrap((code - 0x90) as u8),
            0xA0 => Self::Invlpgb,
            0xA1 => Self::InvlpgbIllegal,
            0xA2 => Self::Invpcid,
            0xA3 => Self::Mcommit,
            0xA4 => Self::Tlbsync,
            0xA5 => Self::BusLock,
            0xA6 => Self::IdleHlt,
            0x400 => Self::Npf,
            0x401 => Self::AvicIncompleteIpi,
            0x402 => Self::AvicNoaccel,
            0x403 => Self::Vmgexit,
            _ => Self::Unknown(raw),
        }
    }

    /// The EXITCODE value, e.g. to reflect an exit into a nested guest's
    /// VMCB. `Invalid` encodes as the architectural 64-bit -1; register and
    /// vector numbers are taken modulo their range (16 or 32).
    #[inline(always)]
    pub const fn to_raw(self) -> u64 {
        match self {
            Self::CrRead(n) => (n & 0xF) as u64,
            Self::CrWrite(n) => 0x10 + (n & 0xF) as u64,
            Self::DrRead(n) => 0x20 + (n & 0xF) as u64,
            Self::DrWrite(n) => 0x30 + (n & 0xF) as u64,
            Self::Exception(v) => 0x40 + (v & 0x1F) as u64,
            Self::Intr => 0x60,
            Self::Nmi => 0x61,
            Self::Smi => 0x62,
            Self::Init => 0x63,
            Self::Vintr => 0x64,
            Self::Cr0SelWrite => 0x65,
            Self::IdtrRead => 0x66,
            Self::GdtrRead => 0x67,
            Self::LdtrRead => 0x68,
            Self::TrRead => 0x69,
            Self::IdtrWrite => 0x6A,
            Self::GdtrWrite => 0x6B,
            Self::LdtrWrite => 0x6C,
            Self::TrWrite => 0x6D,
            Self::Rdtsc => 0x6E,
            Self::Rdpmc => 0x6F,
            Self::Pushf => 0x70,
            Self::Popf => 0x71,
            Self::Cpuid => 0x72,
            Self::Rsm => 0x73,
            Self::Iret => 0x74,
            Self::Swint => 0x75,
            Self::Invd => 0x76,
            Self::Pause => 0x77,
            Self::Hlt => 0x78,
            Self::Invlpg => 0x79,
            Self::Invlpga => 0x7A,
            Self::Ioio => 0x7B,
            Self::Msr => 0x7C,
            Self::TaskSwitch => 0x7D,
            Self::FerrFreeze => 0x7E,
            Self::Shutdown => 0x7F,
            Self::Vmrun => 0x80,
            Self::Vmmcall => 0x81,
            Self::Vmload => 0x82,
            Self::Vmsave => 0x83,
            Self::Stgi => 0x84,
            Self::Clgi => 0x85,
            Self::Skinit => 0x86,
            Self::Rdtscp => 0x87,
            Self::Icebp => 0x88,
            Self::Wbinvd => 0x89,
            Self::Monitor => 0x8A,
            Self::Mwait => 0x8B,
            Self::MwaitConditional => 0x8C,
            Self::Xsetbv => 0x8D,
            Self::Rdpru => 0x8E,
            Self::EferWriteTrap => 0x8F,
            Self::CrWriteTrap(n) => 0x90 + (n & 0xF) as u64,
            Self::Invlpgb => 0xA0,
            Self::InvlpgbIllegal => 0xA1,
            Self::Invpcid => 0xA2,
            Self::Mcommit => 0xA3,
            Self::Tlbsync => 0xA4,
            Self::BusLock => 0xA5,
            Self::IdleHlt => 0xA6,
            Self::Npf => 0x400,
            Self::AvicIncompleteIpi => 0x401,
            Self::AvicNoaccel => 0x402,
            Self::Vmgexit => 0x403,
            Self::Invalid => Self::INVALID_RAW,
            Self::Unknown(raw) => raw,
        }
    }
}

/// [`ExitCode::decode`] of 0x00-0xA6, the codes intercept bits control
/// (Appendix C): [`ExitCode::from_raw`]'s table.
static DECODE_TABLE: [ExitCode; 0xA7] = {
    let mut table = [ExitCode::Invalid; 0xA7];
    let mut raw = 0;
    while raw < table.len() {
        table[raw] = ExitCode::decode(raw as u64);
        raw += 1;
    }
    table
};

/// What `derive(PartialEq)` would compare (same variant, equal fields),
/// written out so that it always inlines: the derived `eq` of this
/// 70-variant enum is left out of line, a call per comparison on the exit
/// path.
impl PartialEq for ExitCode {
    #[inline(always)]
    fn eq(&self, other: &Self) -> bool {
        core::mem::discriminant(self) == core::mem::discriminant(other)
            && self.field() == other.field()
    }
}

/// Hashes what `eq` compares (the variant and its field), as the derive
/// would.
impl core::hash::Hash for ExitCode {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        core::mem::discriminant(self).hash(state);
        self.field().hash(state);
    }
}

impl ExitCode {
    /// The variant's field (register, vector or raw code), 0 for variants
    /// without one.
    #[inline(always)]
    const fn field(self) -> u64 {
        match self {
            Self::CrRead(n)
            | Self::CrWrite(n)
            | Self::DrRead(n)
            | Self::DrWrite(n)
            | Self::Exception(n)
            | Self::CrWriteTrap(n) => n as u64,
            Self::Unknown(raw) => raw,
            _ => 0,
        }
    }
}

/// Direction of an intercepted I/O instruction (EXITINFO1 bit 0, TYPE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoDirection {
    /// OUT / OUTS (TYPE = 0).
    Out,
    /// IN / INS (TYPE = 1).
    In,
}

/// Effective address size of an intercepted I/O instruction (A16/A32/A64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressSize {
    /// 16-bit addressing (bit 7).
    Bits16,
    /// 32-bit addressing (bit 8).
    Bits32,
    /// 64-bit addressing (bit 9).
    Bits64,
}

/// A segment register number as encoded in EXITINFO1 (APM Vol. 3
/// Table A-32 order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SegmentRegister {
    /// 0.
    Es,
    /// 1.
    Cs,
    /// 2.
    Ss,
    /// 3.
    Ds,
    /// 4.
    Fs,
    /// 5.
    Gs,
}

impl SegmentRegister {
    /// Decodes a 3-bit segment number; 6 and 7 are not segments.
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            0 => Some(Self::Es),
            1 => Some(Self::Cs),
            2 => Some(Self::Ss),
            3 => Some(Self::Ds),
            4 => Some(Self::Fs),
            5 => Some(Self::Gs),
            _ => None,
        }
    }
}

/// EXITINFO1 of an IOIO intercept (APM 15.10.2, Figure 15-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IoioInfo {
    /// Bits 31:16: the port.
    pub port: u16,
    /// Bit 0: IN or OUT.
    pub direction: IoDirection,
    /// Bit 2: string instruction (INS/OUTS).
    pub string: bool,
    /// Bit 3: REP prefix.
    pub rep: bool,
    /// Operand size in bytes, 1, 2 or 4 (one-hot bits 6:4).
    pub size: u8,
    /// Bits 9:7, one-hot. `None` when no bit is set, which is what QEMU
    /// TCG reports.
    pub address_size: Option<AddressSize>,
    /// Bits 12:10: effective segment of OUTS (INS is always ES = 0). Raw
    /// because it is meaningless for IN/OUT; see
    /// [`IoioInfo::segment_register`].
    pub segment: u8,
}

impl IoioInfo {
    const TYPE_IN: u64 = 1 << 0;
    const STR: u64 = 1 << 2;
    const REP: u64 = 1 << 3;
    const SZ8: u64 = 1 << 4;
    const SZ16: u64 = 1 << 5;
    const SZ32: u64 = 1 << 6;
    const A16: u64 = 1 << 7;
    const A32: u64 = 1 << 8;
    const A64: u64 = 1 << 9;
    const SEG_SHIFT: u32 = 10;
    const PORT_SHIFT: u32 = 16;

    /// Decodes EXITINFO1. `None` if the operand size bits are not exactly
    /// one of SZ8/SZ16/SZ32, or more than one address size bit is set.
    /// Reserved bits are ignored.
    pub const fn from_exit_info1(info: u64) -> Option<Self> {
        let size = match info & (Self::SZ8 | Self::SZ16 | Self::SZ32) {
            Self::SZ8 => 1,
            Self::SZ16 => 2,
            Self::SZ32 => 4,
            _ => return None,
        };
        let address_size = match info & (Self::A16 | Self::A32 | Self::A64) {
            0 => None,
            Self::A16 => Some(AddressSize::Bits16),
            Self::A32 => Some(AddressSize::Bits32),
            Self::A64 => Some(AddressSize::Bits64),
            _ => return None,
        };
        Some(Self {
            port: (info >> Self::PORT_SHIFT) as u16,
            direction: if info & Self::TYPE_IN != 0 {
                IoDirection::In
            } else {
                IoDirection::Out
            },
            string: info & Self::STR != 0,
            rep: info & Self::REP != 0,
            size,
            address_size,
            segment: ((info >> Self::SEG_SHIFT) & 0x7) as u8,
        })
    }

    /// Encodes back to EXITINFO1 (e.g. when reflecting an IOIO exit into a
    /// nested guest). A `size` other than 1, 2 or 4 encodes no size bit.
    pub const fn to_exit_info1(&self) -> u64 {
        let mut info = (self.port as u64) << Self::PORT_SHIFT;
        if let IoDirection::In = self.direction {
            info |= Self::TYPE_IN;
        }
        if self.string {
            info |= Self::STR;
        }
        if self.rep {
            info |= Self::REP;
        }
        info |= match self.size {
            1 => Self::SZ8,
            2 => Self::SZ16,
            4 => Self::SZ32,
            _ => 0,
        };
        info |= match self.address_size {
            None => 0,
            Some(AddressSize::Bits16) => Self::A16,
            Some(AddressSize::Bits32) => Self::A32,
            Some(AddressSize::Bits64) => Self::A64,
        };
        info | (((self.segment & 0x7) as u64) << Self::SEG_SHIFT)
    }

    /// The effective segment, if the SEG field names one.
    pub const fn segment_register(&self) -> Option<SegmentRegister> {
        SegmentRegister::from_raw(self.segment)
    }
}

/// EXITINFO1 of an MSR intercept (APM 15.11): 0 for RDMSR, 1 for WRMSR.
/// The MSR number is in the guest's ECX; for WRMSR the value in EDX:EAX.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MsrAccess {
    /// RDMSR (EXITINFO1 = 0).
    Read,
    /// WRMSR (EXITINFO1 = 1).
    Write,
}

impl MsrAccess {
    /// Decodes EXITINFO1; `None` for any other value.
    pub const fn from_exit_info1(info: u64) -> Option<Self> {
        match info {
            0 => Some(Self::Read),
            1 => Some(Self::Write),
            _ => None,
        }
    }

    /// The EXITINFO1 value.
    pub const fn to_exit_info1(self) -> u64 {
        match self {
            Self::Read => 0,
            Self::Write => 1,
        }
    }
}

bitflags! {
    /// EXITINFO1 of a nested page fault (APM 15.25.6): a #PF-like error
    /// code plus where in the walk the fault hit. EXITINFO2 holds the guest
    /// physical address. Other bits (SEV-SNP RMP/VMPL checks, APM 15.36.10)
    /// are kept but not named.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct NpfErrorCode: u64 {
        /// Bit 0 (P): clear if the nested page was not present.
        const PRESENT = 1 << 0;
        /// Bit 1 (RW): the access was a write. Walks of guest page tables
        /// always count as writes (unless ROGPT is enabled).
        const WRITE = 1 << 1;
        /// Bit 2 (US): user access; nested walks count as user accesses.
        const USER = 1 << 2;
        /// Bit 3 (RSV): a reserved bit was set in the nested entry.
        const RESERVED = 1 << 3;
        /// Bit 4 (ID): code fetch.
        const EXECUTE = 1 << 4;
        /// Bit 6 (SS): shadow stack access.
        const SHADOW_STACK = 1 << 6;
        /// Bit 32: fault while translating the final guest physical address.
        const FINAL_GPA = 1 << 32;
        /// Bit 33: fault while translating the guest's page tables.
        const GUEST_PAGE_TABLE = 1 << 33;
        /// Bit 37: supervisor shadow stack page with SSSCheck enabled.
        const SUPERVISOR_SHADOW_STACK = 1 << 37;

        const _ = !0;
    }
}

/// EXITINFO1 of a MOV CRx intercept with decode assists (APM 15.8.1,
/// Table 15-2). Without DecodeAssists (e.g. QEMU TCG) EXITINFO1 is
/// undefined for these exits and this must not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CrAccessInfo {
    /// Bit 63: the instruction was MOV CRx (not LMSW/CLTS/SMSW).
    pub mov: bool,
    /// Bits 3:0: the GPR operand of the MOV.
    pub gpr: u8,
}

impl CrAccessInfo {
    /// Decodes EXITINFO1.
    pub const fn from_exit_info1(info: u64) -> Self {
        Self {
            mov: info >> 63 != 0,
            gpr: (info & 0xF) as u8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appendix_c_codes() {
        let table = [
            (0x000, ExitCode::CrRead(0)),
            (0x003, ExitCode::CrRead(3)),
            (0x00F, ExitCode::CrRead(15)),
            (0x010, ExitCode::CrWrite(0)),
            (0x018, ExitCode::CrWrite(8)),
            (0x027, ExitCode::DrRead(7)),
            (0x036, ExitCode::DrWrite(6)),
            (0x040, ExitCode::Exception(0)),
            (0x04E, ExitCode::Exception(14)),
            (0x05F, ExitCode::Exception(31)),
            (0x060, ExitCode::Intr),
            (0x061, ExitCode::Nmi),
            (0x062, ExitCode::Smi),
            (0x063, ExitCode::Init),
            (0x064, ExitCode::Vintr),
            (0x065, ExitCode::Cr0SelWrite),
            (0x066, ExitCode::IdtrRead),
            (0x069, ExitCode::TrRead),
            (0x06A, ExitCode::IdtrWrite),
            (0x06D, ExitCode::TrWrite),
            (0x06E, ExitCode::Rdtsc),
            (0x06F, ExitCode::Rdpmc),
            (0x070, ExitCode::Pushf),
            (0x071, ExitCode::Popf),
            (0x072, ExitCode::Cpuid),
            (0x073, ExitCode::Rsm),
            (0x074, ExitCode::Iret),
            (0x075, ExitCode::Swint),
            (0x076, ExitCode::Invd),
            (0x077, ExitCode::Pause),
            (0x078, ExitCode::Hlt),
            (0x079, ExitCode::Invlpg),
            (0x07A, ExitCode::Invlpga),
            (0x07B, ExitCode::Ioio),
            (0x07C, ExitCode::Msr),
            (0x07D, ExitCode::TaskSwitch),
            (0x07E, ExitCode::FerrFreeze),
            (0x07F, ExitCode::Shutdown),
            (0x080, ExitCode::Vmrun),
            (0x081, ExitCode::Vmmcall),
            (0x082, ExitCode::Vmload),
            (0x083, ExitCode::Vmsave),
            (0x084, ExitCode::Stgi),
            (0x085, ExitCode::Clgi),
            (0x086, ExitCode::Skinit),
            (0x087, ExitCode::Rdtscp),
            (0x088, ExitCode::Icebp),
            (0x089, ExitCode::Wbinvd),
            (0x08A, ExitCode::Monitor),
            (0x08B, ExitCode::Mwait),
            (0x08C, ExitCode::MwaitConditional),
            (0x08D, ExitCode::Xsetbv),
            (0x08E, ExitCode::Rdpru),
            (0x08F, ExitCode::EferWriteTrap),
            (0x090, ExitCode::CrWriteTrap(0)),
            (0x093, ExitCode::CrWriteTrap(3)),
            (0x09F, ExitCode::CrWriteTrap(15)),
            (0x0A0, ExitCode::Invlpgb),
            (0x0A1, ExitCode::InvlpgbIllegal),
            (0x0A2, ExitCode::Invpcid),
            (0x0A3, ExitCode::Mcommit),
            (0x0A4, ExitCode::Tlbsync),
            (0x0A5, ExitCode::BusLock),
            (0x0A6, ExitCode::IdleHlt),
            (0x400, ExitCode::Npf),
            (0x401, ExitCode::AvicIncompleteIpi),
            (0x402, ExitCode::AvicNoaccel),
            (0x403, ExitCode::Vmgexit),
        ];
        for (raw, code) in table {
            assert_eq!(ExitCode::from_raw(raw), code, "decode {raw:#x}");
            assert_eq!(code.to_raw(), raw, "encode {code:?}");
        }
    }

    /// The table half of `from_raw` is `decode`, and so is the rest.
    #[test]
    fn from_raw_is_decode() {
        let mut raws: std::vec::Vec<u64> = (0..0x1000).collect();
        raws.extend([
            0xFFFF_FFFF,
            u64::MAX,
            0x1_0000_0000,
            0x1_0000_0072,
            0xA6,
            0xA7,
        ]);
        for raw in raws {
            assert_eq!(ExitCode::from_raw(raw), ExitCode::decode(raw), "{raw:#x}");
        }
        assert_eq!(ExitCode::from_raw(0x7B), ExitCode::Ioio);
        assert_eq!(ExitCode::from_raw(0xA6), ExitCode::IdleHlt);
        assert_eq!(ExitCode::from_raw(0xA7), ExitCode::Unknown(0xA7));
    }

    #[test]
    fn vmexit_invalid_both_forms() {
        // Silicon: 64-bit -1.
        assert_eq!(ExitCode::from_raw(0xFFFF_FFFF_FFFF_FFFF), ExitCode::Invalid);
        // QEMU TCG: only the low 32 bits set.
        assert_eq!(ExitCode::from_raw(0x0000_0000_FFFF_FFFF), ExitCode::Invalid);
        // Encoding for a nested guest uses the architectural form.
        assert_eq!(ExitCode::Invalid.to_raw(), 0xFFFF_FFFF_FFFF_FFFF);
        // A set high half with another low half is not a valid exit code,
        // and in particular not CR0 read or CPUID.
        assert_eq!(
            ExitCode::from_raw(0xFFFF_FFFF_0000_0000),
            ExitCode::Unknown(0xFFFF_FFFF_0000_0000)
        );
        assert_eq!(
            ExitCode::from_raw(0x1_0000_0072),
            ExitCode::Unknown(0x1_0000_0072)
        );
    }

    #[test]
    fn unknown_codes_round_trip() {
        for raw in [0xA7, 0xFF, 0x3FF, 0x404, 0xF000_0000, 0xFFFF_FFFE] {
            assert_eq!(ExitCode::from_raw(raw), ExitCode::Unknown(raw));
            assert_eq!(ExitCode::from_raw(raw).to_raw(), raw);
        }
        // Every 32-bit code except -1 survives decode + encode.
        for raw in 0..0x1000u64 {
            assert_eq!(ExitCode::from_raw(raw).to_raw(), raw);
        }
    }

    /// The hand-written `eq` is structural equality (what the derive gave),
    /// and `hash` agrees with it.
    #[test]
    fn eq_is_structural() {
        use core::hash::{Hash, Hasher};
        use std::collections::hash_map::DefaultHasher;
        use std::format;
        use std::vec::Vec;
        let mut codes: Vec<ExitCode> = (0..0x410).map(ExitCode::from_raw).collect();
        codes.extend([
            ExitCode::Invalid,
            ExitCode::Unknown(0),
            ExitCode::Unknown(0x72),
            ExitCode::Unknown(u64::MAX),
            ExitCode::CrRead(16),
            ExitCode::CrWrite(0xFF),
            ExitCode::DrRead(16),
            ExitCode::DrWrite(16),
            ExitCode::Exception(32),
            ExitCode::CrWriteTrap(16),
        ]);
        let hash = |c: &ExitCode| {
            let mut h = DefaultHasher::new();
            c.hash(&mut h);
            h.finish()
        };
        for a in &codes {
            for b in &codes {
                let same = format!("{a:?}") == format!("{b:?}");
                assert_eq!(a == b, same, "{a:?} == {b:?}");
                if same {
                    assert_eq!(hash(a), hash(b), "{a:?}");
                }
            }
        }
    }

    #[test]
    fn ioio_out_byte_to_com1() {
        // OUT DX, AL with DX = 0x3F8: TYPE = 0, SZ8 (bit 4), port in 31:16.
        let info = (0x3F8 << 16) | (1 << 4);
        let io = IoioInfo::from_exit_info1(info).unwrap();
        assert_eq!(io.port, 0x3F8);
        assert_eq!(io.direction, IoDirection::Out);
        assert_eq!(io.size, 1);
        assert!(!io.string && !io.rep);
        assert_eq!(io.address_size, None); // what TCG reports
        assert_eq!(io.to_exit_info1(), info);
    }

    #[test]
    fn ioio_in_dword() {
        // IN EAX, 0xCFC in 32-bit code: TYPE (bit 0), SZ32 (bit 6), A32 (bit 8).
        let info = (0xCFC << 16) | (1 << 8) | (1 << 6) | 1;
        let io = IoioInfo::from_exit_info1(info).unwrap();
        assert_eq!(io.port, 0xCFC);
        assert_eq!(io.direction, IoDirection::In);
        assert_eq!(io.size, 4);
        assert_eq!(io.address_size, Some(AddressSize::Bits32));
        assert_eq!(io.to_exit_info1(), info);
    }

    #[test]
    fn ioio_rep_outsw_with_segment() {
        // REP OUTSW with an FS override in 64-bit code:
        // port 0xE9, SEG = 4 (bits 12:10), A64 (bit 9), SZ16 (bit 5),
        // REP (bit 3), STR (bit 2), OUT.
        let info: u64 = 0x00E9_0000 | (4 << 10) | (1 << 9) | (1 << 5) | (1 << 3) | (1 << 2);
        assert_eq!(info, 0x00E9_122C);
        let io = IoioInfo::from_exit_info1(info).unwrap();
        assert_eq!(io.port, 0xE9);
        assert_eq!(io.direction, IoDirection::Out);
        assert!(io.string && io.rep);
        assert_eq!(io.size, 2);
        assert_eq!(io.address_size, Some(AddressSize::Bits64));
        assert_eq!(io.segment_register(), Some(SegmentRegister::Fs));
        assert_eq!(io.to_exit_info1(), info);
    }

    #[test]
    fn ioio_rejects_malformed_sizes() {
        assert_eq!(IoioInfo::from_exit_info1(0x0060_0000), None); // no size
        assert_eq!(IoioInfo::from_exit_info1(0x0060_0030), None); // SZ8|SZ16
        assert_eq!(IoioInfo::from_exit_info1(0x0060_0190), None); // A16|A32
                                                                  // Port 0xFFFF survives intact.
        let io = IoioInfo::from_exit_info1(0xFFFF_0041).unwrap();
        assert_eq!(
            (io.port, io.size, io.direction),
            (0xFFFF, 4, IoDirection::In)
        );
    }

    #[test]
    fn msr_access() {
        assert_eq!(MsrAccess::from_exit_info1(0), Some(MsrAccess::Read));
        assert_eq!(MsrAccess::from_exit_info1(1), Some(MsrAccess::Write));
        assert_eq!(MsrAccess::from_exit_info1(2), None);
        assert_eq!(MsrAccess::Write.to_exit_info1(), 1);
    }

    #[test]
    fn npf_error_code_bits() {
        // A write to a not-present page during the final GPA translation.
        let info: u64 = (1 << 32) | (1 << 2) | (1 << 1);
        let ec = NpfErrorCode::from_bits_retain(info);
        assert!(ec.contains(NpfErrorCode::WRITE | NpfErrorCode::USER));
        assert!(ec.contains(NpfErrorCode::FINAL_GPA));
        assert!(!ec.contains(NpfErrorCode::PRESENT));
        assert!(!ec.contains(NpfErrorCode::GUEST_PAGE_TABLE));
        assert_eq!(NpfErrorCode::PRESENT.bits(), 1);
        assert_eq!(NpfErrorCode::RESERVED.bits(), 8);
        assert_eq!(NpfErrorCode::EXECUTE.bits(), 0x10);
        assert_eq!(NpfErrorCode::SHADOW_STACK.bits(), 0x40);
        assert_eq!(NpfErrorCode::GUEST_PAGE_TABLE.bits(), 0x2_0000_0000);
        assert_eq!(NpfErrorCode::SUPERVISOR_SHADOW_STACK.bits(), 0x20_0000_0000);
        // Unnamed (SNP) bits are preserved.
        assert_eq!(
            NpfErrorCode::from_bits(1 << 31).map(|e| e.bits()),
            Some(1 << 31)
        );
    }

    #[test]
    fn cr_access_info() {
        let mov_rbx = CrAccessInfo::from_exit_info1((1 << 63) | 3);
        assert_eq!(mov_rbx, CrAccessInfo { mov: true, gpr: 3 });
        let lmsw = CrAccessInfo::from_exit_info1(0);
        assert!(!lmsw.mov);
    }
}
