//! Feature enables in the VMCB control area: nested paging and friends
//! (0x090) and the virtualization extensions (0x0B8).

use bitflags::bitflags;

bitflags! {
    /// 0x090: nested paging / SEV controls (APM Table B-1). Bits 63:8 are
    /// reserved (SBZ).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct NestedCtl: u64 {
        /// Bit 0: NP_ENABLE, nested paging through N_CR3 (APM 15.25.3). VMRUN
        /// fails with VMEXIT_INVALID if the host has CR0.PG clear.
        const NP_ENABLE = 1 << 0;
        /// Bit 1: Secure Encrypted Virtualization.
        const SEV_ENABLE = 1 << 1;
        /// Bit 2: encrypted state (SEV-ES).
        const SEV_ES_ENABLE = 1 << 2;
        /// Bit 3: guest mode execute trap (GMET).
        const GMET_ENABLE = 1 << 3;
        /// Bit 4: supervisor shadow stack restrictions in nested page
        /// tables (SSSCheck).
        const SSS_CHECK_ENABLE = 1 << 4;
        /// Bit 5: virtual transparent encryption.
        const VTE_ENABLE = 1 << 5;
        /// Bit 6: read-only guest page tables (ROGPT, APM 15.25.5).
        const ROGPT_ENABLE = 1 << 6;
        /// Bit 7: INVLPGB/TLBSYNC allowed in the guest (else #UD), if
        /// CPUID Fn8000_000A_EDX\[24\].
        const INVLPGB_TLBSYNC_ENABLE = 1 << 7;
    }
}

bitflags! {
    /// 0x0B8: virtualization extensions (APM Table B-1). Bits 63:4 are
    /// reserved (SBZ).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct VirtExt: u64 {
        /// Bit 0: LBR virtualization; VMRUN/#VMEXIT swap DebugCtl and the
        /// branch record MSRs through the save area (APM 15.23.1).
        const LBR_VIRT = 1 << 0;
        /// Bit 1: virtualized VMSAVE/VMLOAD (APM 15.33, nested virtualization).
        const VMSAVE_VMLOAD_VIRT = 1 << 1;
        /// Bit 2: IBS virtualization.
        const IBS_VIRT = 1 << 2;
        /// Bit 3: PMC virtualization.
        const PMC_VIRT = 1 << 3;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_ctl_positions() {
        assert_eq!(NestedCtl::NP_ENABLE.bits(), 1);
        assert_eq!(NestedCtl::SEV_ENABLE.bits(), 2);
        assert_eq!(NestedCtl::SEV_ES_ENABLE.bits(), 4);
        assert_eq!(NestedCtl::GMET_ENABLE.bits(), 8);
        assert_eq!(NestedCtl::SSS_CHECK_ENABLE.bits(), 0x10);
        assert_eq!(NestedCtl::VTE_ENABLE.bits(), 0x20);
        assert_eq!(NestedCtl::ROGPT_ENABLE.bits(), 0x40);
        assert_eq!(NestedCtl::INVLPGB_TLBSYNC_ENABLE.bits(), 0x80);
        assert_eq!(NestedCtl::from_bits(1 << 8), None);
    }

    #[test]
    fn virt_ext_positions() {
        assert_eq!(VirtExt::LBR_VIRT.bits(), 1);
        assert_eq!(VirtExt::VMSAVE_VMLOAD_VIRT.bits(), 2);
        assert_eq!(VirtExt::IBS_VIRT.bits(), 4);
        assert_eq!(VirtExt::PMC_VIRT.bits(), 8);
        assert_eq!(VirtExt::from_bits(1 << 4), None);
    }
}
