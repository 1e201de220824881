//! Interrupt and caching controls of the VMCB control area: the virtual
//! interrupt control word (0x060), the interrupt shadow (0x068),
//! TLB_CONTROL (0x05C) and the VMCB clean bits (0x0C0).

use bitflags::bitflags;

bitflags! {
    /// 0x060: virtual interrupt control (APM Table B-1; 15.21.4 virtual
    /// INTR injection, 15.21.10 NMI virtualization, 15.33 virtual GIF).
    ///
    /// V_TPR, V_INTR_PRIO and V_INTR_VECTOR are multi-bit fields: use the
    /// accessors rather than `contains`. Bit 10 is not defined by Table B-1.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct IntCtl: u64 {
        /// Bits 7:0: V_TPR, the guest's virtual TPR (only 3:0 used, 7:4
        /// SBZ). Written back at #VMEXIT.
        const V_TPR_MASK = 0xFF;
        /// Bit 8: V_IRQ, a virtual INTR is pending. Written back at #VMEXIT.
        const V_IRQ = 1 << 8;
        /// Bit 9: V_GIF, the virtual GIF value (1 = virtual interrupts
        /// unmasked), honoured when V_GIF_ENABLE is set.
        const V_GIF = 1 << 9;
        /// Bit 11: V_NMI, a virtual NMI is pending.
        const V_NMI = 1 << 11;
        /// Bit 12: V_NMI_MASK, virtual NMIs are masked.
        const V_NMI_MASK = 1 << 12;
        /// Bits 19:16: V_INTR_PRIO, priority of the pending virtual interrupt.
        const V_INTR_PRIO_MASK = 0xF << 16;
        /// Bit 20: V_IGN_TPR, the pending virtual interrupt ignores V_TPR.
        const V_IGN_TPR = 1 << 20;
        /// Bit 24: V_INTR_MASKING, virtualize EFLAGS.IF and TPR masking: the
        /// host's IF at VMRUN then controls physical interrupts.
        const V_INTR_MASKING = 1 << 24;
        /// Bit 25: virtual GIF enabled for this guest.
        const V_GIF_ENABLE = 1 << 25;
        /// Bit 26: NMI virtualization enable (requires the NMI intercept).
        const V_NMI_ENABLE = 1 << 26;
        /// Bit 30: x2AVIC enable.
        const X2AVIC_ENABLE = 1 << 30;
        /// Bit 31: AVIC enable.
        const AVIC_ENABLE = 1 << 31;
        /// Bits 39:32: V_INTR_VECTOR, vector of the pending virtual interrupt.
        const V_INTR_VECTOR_MASK = 0xFF << 32;
    }
}

impl IntCtl {
    /// Shift of V_INTR_PRIO.
    pub const V_INTR_PRIO_SHIFT: u32 = 16;
    /// Shift of V_INTR_VECTOR.
    pub const V_INTR_VECTOR_SHIFT: u32 = 32;

    /// V_TPR (bits 7:0).
    pub const fn v_tpr(self) -> u8 {
        (self.bits() & Self::V_TPR_MASK.bits()) as u8
    }

    /// `self` with V_TPR replaced.
    pub const fn with_v_tpr(self, tpr: u8) -> Self {
        Self::from_bits_retain((self.bits() & !Self::V_TPR_MASK.bits()) | tpr as u64)
    }

    /// V_INTR_PRIO (bits 19:16).
    pub const fn v_intr_prio(self) -> u8 {
        ((self.bits() & Self::V_INTR_PRIO_MASK.bits()) >> Self::V_INTR_PRIO_SHIFT) as u8
    }

    /// `self` with V_INTR_PRIO replaced (only the low 4 bits of `prio`).
    pub const fn with_v_intr_prio(self, prio: u8) -> Self {
        let field = ((prio & 0xF) as u64) << Self::V_INTR_PRIO_SHIFT;
        Self::from_bits_retain((self.bits() & !Self::V_INTR_PRIO_MASK.bits()) | field)
    }

    /// V_INTR_VECTOR (bits 39:32).
    pub const fn v_intr_vector(self) -> u8 {
        ((self.bits() & Self::V_INTR_VECTOR_MASK.bits()) >> Self::V_INTR_VECTOR_SHIFT) as u8
    }

    /// `self` with V_INTR_VECTOR replaced.
    pub const fn with_v_intr_vector(self, vector: u8) -> Self {
        let field = (vector as u64) << Self::V_INTR_VECTOR_SHIFT;
        Self::from_bits_retain((self.bits() & !Self::V_INTR_VECTOR_MASK.bits()) | field)
    }
}

bitflags! {
    /// 0x068: guest interrupt state, saved at #VMEXIT and loaded by VMRUN
    /// (APM 15.21.5).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct InterruptState: u64 {
        /// Bit 0: the guest is in an interrupt shadow (e.g. after STI or
        /// MOV SS); interrupts are not recognized for one instruction.
        const INTERRUPT_SHADOW = 1 << 0;
        /// Bit 1: GUEST_INTERRUPT_MASK, the guest's RFLAGS.IF (SEV-ES),
        /// written back at #VMEXIT.
        const GUEST_INTERRUPT_MASK = 1 << 1;
    }
}

/// 0x05C: TLB_CONTROL, what VMRUN flushes (APM 15.16.1, Table 15-9).
///
/// The two ASID-scoped commands need CPUID Fn8000_000A_EDX\[FlushByAsid\];
/// QEMU TCG flushes on every world switch regardless. VMRUN reads but never
/// clears this field, so software must reset it to `DoNothing` itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum TlbControl {
    /// 00h: do not flush.
    #[default]
    DoNothing = 0x00,
    /// 01h: flush the entire TLB, all ASIDs (meant for legacy hypervisors).
    FlushAll = 0x01,
    /// 03h: flush this guest's TLB entries.
    FlushThisAsid = 0x03,
    /// 07h: flush this guest's non-global TLB entries.
    FlushThisAsidNonGlobal = 0x07,
}

impl TlbControl {
    /// The encoding to store in `ControlArea::tlb_control`.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// Decodes a TLB_CONTROL byte; `None` for the reserved encodings.
    pub const fn from_u8(raw: u8) -> Option<Self> {
        match raw {
            0x00 => Some(Self::DoNothing),
            0x01 => Some(Self::FlushAll),
            0x03 => Some(Self::FlushThisAsid),
            0x07 => Some(Self::FlushThisAsidNonGlobal),
            _ => None,
        }
    }
}

bitflags! {
    /// 0x0C0: VMCB clean bits (APM 15.15.3, Figure 15-4). A set bit lets
    /// VMRUN reuse its cached copy of that state; software must clear the
    /// bit whenever it writes the state, and must write 0 the first time a
    /// VMCB runs, after moving it, or when it runs on another core
    /// (APM 15.15.2).
    ///
    /// Note that the TSC offset (and the pause filter count) is covered by
    /// bit 0, not by a bit of its own: clear [`CleanBits::INTERCEPTS`]
    /// after changing `tsc_offset`.
    ///
    /// Never cached (no bit): TLB_CONTROL, the interrupt shadow, EXITCODE
    /// and the other exit fields, EVENTINJ, and RFLAGS/RIP/RSP/RAX. Bit 31 is
    /// reserved for the host and never used by the CPU. QEMU TCG has no
    /// clean-bit support and always reloads everything.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct CleanBits: u32 {
        /// Bit 0 (I): all intercept vectors, TSC_OFFSET, pause filter count.
        const INTERCEPTS = 1 << 0;
        /// Bit 1 (IOPM): IOPM_BASE_PA and MSRPM_BASE_PA.
        const IOPM = 1 << 1;
        /// Bit 2: guest ASID.
        const ASID = 1 << 2;
        /// Bit 3 (TPR): V_TPR, V_IRQ, V_INTR_PRIO, V_IGN_TPR, V_INTR_MASKING,
        /// V_INTR_VECTOR (0x060-0x067).
        const TPR = 1 << 3;
        /// Bit 4 (NP): N_CR3 and G_PAT.
        const NP = 1 << 4;
        /// Bit 5 (CRx): CR0, CR3, CR4, EFER.
        const CRX = 1 << 5;
        /// Bit 6 (DRx): DR6, DR7.
        const DRX = 1 << 6;
        /// Bit 7 (DT): GDTR and IDTR base and limit.
        const DT = 1 << 7;
        /// Bit 8 (SEG): CS/DS/SS/ES selector, base, limit, attributes; CPL.
        const SEG = 1 << 8;
        /// Bit 9: CR2.
        const CR2 = 1 << 9;
        /// Bit 10 (LBR): DebugCtl, BR_FROM/TO, LASTEXCP_FROM/TO.
        const LBR = 1 << 10;
        /// Bit 11 (AVIC): APIC_BAR and the backing page, logical and
        /// physical table pointers.
        const AVIC = 1 << 11;
        /// Bit 12 (CET): S_CET, SSP, ISST_ADDR.
        const CET = 1 << 12;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_ctl_single_bits() {
        assert_eq!(IntCtl::V_IRQ.bits(), 0x100);
        assert_eq!(IntCtl::V_GIF.bits(), 0x200);
        assert_eq!(IntCtl::V_NMI.bits(), 0x800);
        assert_eq!(IntCtl::V_NMI_MASK.bits(), 0x1000);
        assert_eq!(IntCtl::V_IGN_TPR.bits(), 0x10_0000);
        assert_eq!(IntCtl::V_INTR_MASKING.bits(), 0x100_0000);
        assert_eq!(IntCtl::V_GIF_ENABLE.bits(), 0x200_0000);
        assert_eq!(IntCtl::V_NMI_ENABLE.bits(), 0x400_0000);
        assert_eq!(IntCtl::X2AVIC_ENABLE.bits(), 0x4000_0000);
        assert_eq!(IntCtl::AVIC_ENABLE.bits(), 0x8000_0000);
        // Bit 10 is undefined in Table B-1, and 63:40 are reserved.
        assert_eq!(IntCtl::from_bits(1 << 10), None);
        assert_eq!(IntCtl::from_bits(1 << 40), None);
    }

    #[test]
    fn int_ctl_fields() {
        let ctl = IntCtl::V_IRQ
            .with_v_tpr(0x0A)
            .with_v_intr_prio(0x3)
            .with_v_intr_vector(0xEC);
        // 0xEC << 32 | 0x3 << 16 | V_IRQ | 0x0A
        assert_eq!(ctl.bits(), 0x0000_00EC_0003_010A);
        assert_eq!(ctl.v_tpr(), 0x0A);
        assert_eq!(ctl.v_intr_prio(), 0x3);
        assert_eq!(ctl.v_intr_vector(), 0xEC);
        // Replacing a field leaves the others alone.
        let ctl = ctl.with_v_intr_vector(0x20).with_v_intr_prio(0xFF);
        assert_eq!(ctl.bits(), 0x0000_0020_000F_010A);
    }

    #[test]
    fn interrupt_state_bits() {
        assert_eq!(InterruptState::INTERRUPT_SHADOW.bits(), 1);
        assert_eq!(InterruptState::GUEST_INTERRUPT_MASK.bits(), 2);
    }

    #[test]
    fn tlb_control_encodings() {
        assert_eq!(TlbControl::DoNothing.as_u8(), 0x00);
        assert_eq!(TlbControl::FlushAll.as_u8(), 0x01);
        assert_eq!(TlbControl::FlushThisAsid.as_u8(), 0x03);
        assert_eq!(TlbControl::FlushThisAsidNonGlobal.as_u8(), 0x07);
        for raw in 0..=u8::MAX {
            let decoded = TlbControl::from_u8(raw);
            match raw {
                0 | 1 | 3 | 7 => assert_eq!(decoded.map(TlbControl::as_u8), Some(raw)),
                _ => assert_eq!(decoded, None, "{raw:#x} is reserved"),
            }
        }
    }

    #[test]
    fn clean_bit_positions() {
        let expect = [
            (CleanBits::INTERCEPTS, 0),
            (CleanBits::IOPM, 1),
            (CleanBits::ASID, 2),
            (CleanBits::TPR, 3),
            (CleanBits::NP, 4),
            (CleanBits::CRX, 5),
            (CleanBits::DRX, 6),
            (CleanBits::DT, 7),
            (CleanBits::SEG, 8),
            (CleanBits::CR2, 9),
            (CleanBits::LBR, 10),
            (CleanBits::AVIC, 11),
            (CleanBits::CET, 12),
        ];
        for (flag, bit) in expect {
            assert_eq!(flag.bits(), 1u32 << bit, "{flag:?}");
        }
        assert_eq!(CleanBits::all().bits(), 0x1FFF);
    }
}
