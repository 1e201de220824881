//! SVM feature discovery: CPUID Fn8000_0001_ECX\[SVM\], CPUID Fn8000_000A
//! (revision, ASIDs, feature bits; APM Vol. 3 Appendix E.4.9) and the
//! enable algorithm of APM 15.4.
//!
//! The decoders take register values, so they run on the host in tests;
//! the kernel feeds them from the CPUID instruction (directly or through
//! raw-cpuid).

use core::fmt;

use bitflags::bitflags;
use raw_cpuid::{CpuId, CpuIdReader};

use crate::msr::VmCr;

/// CPUID leaf with the SVM feature flag (ECX bit 2).
pub const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
/// CPUID leaf describing SVM.
pub const LEAF_SVM: u32 = 0x8000_000A;
/// CPUID Fn8000_0001_ECX bit 2: SVM.
pub const EXT_FEATURES_ECX_SVM: u32 = 1 << 2;

/// Whether CPUID Fn8000_0001_ECX reports SVM.
pub const fn svm_supported(ecx_8000_0001: u32) -> bool {
    ecx_8000_0001 & EXT_FEATURES_ECX_SVM != 0
}

bitflags! {
    /// CPUID Fn8000_000A_EDX: SVM feature bits. Unnamed bits are kept.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct SvmFeatureFlags: u32 {
        /// Bit 0: nested paging.
        const NP = 1 << 0;
        /// Bit 1: LBR virtualization.
        const LBR_VIRT = 1 << 1;
        /// Bit 2: SVM lock (VM_CR.LOCK unlockable with SVM_KEY).
        const SVML = 1 << 2;
        /// Bit 3: NRIP save on #VMEXIT.
        const NRIPS = 1 << 3;
        /// Bit 4: TSC ratio MSR.
        const TSC_RATE_MSR = 1 << 4;
        /// Bit 5: VMCB clean bits.
        const VMCB_CLEAN = 1 << 5;
        /// Bit 6: flush by ASID (TLB_CONTROL 3 and 7).
        const FLUSH_BY_ASID = 1 << 6;
        /// Bit 7: decode assists.
        const DECODE_ASSISTS = 1 << 7;
        /// Bit 10: PAUSE intercept filter.
        const PAUSE_FILTER = 1 << 10;
        /// Bit 12: PAUSE filter cycle-count threshold.
        const PAUSE_FILTER_THRESHOLD = 1 << 12;
        /// Bit 13: AVIC.
        const AVIC = 1 << 13;
        /// Bit 15: VMSAVE/VMLOAD virtualization.
        const VMSAVE_VIRT = 1 << 15;
        /// Bit 16: virtual GIF.
        const VGIF = 1 << 16;
        /// Bit 17: guest mode execute trap.
        const GMET = 1 << 17;
        /// Bit 18: x2AVIC.
        const X2AVIC = 1 << 18;
        /// Bit 19: supervisor shadow stack restrictions.
        const SSS_CHECK = 1 << 19;
        /// Bit 20: SPEC_CTRL virtualization.
        const SPEC_CTRL = 1 << 20;
        /// Bit 21: read-only guest page tables.
        const ROGPT = 1 << 21;
        /// Bit 23: host MCE override.
        const HOST_MCE_OVERRIDE = 1 << 23;
        /// Bit 24: INVLPGB/TLBSYNC enable and TLBSYNC intercept.
        const TLBI_CTL = 1 << 24;
        /// Bit 25: NMI virtualization.
        const VNMI = 1 << 25;
        /// Bit 26: IBS virtualization.
        const IBS_VIRT = 1 << 26;
        /// Bit 27: extended LVT AVIC access changes.
        const EXT_LVT_AVIC_ACCESS_CHG = 1 << 27;
        /// Bit 28: VMRUN checks the nested guest's VMCB address (#VMEXIT
        /// instead of #GP).
        const SVME_ADDR_CHK = 1 << 28;
        /// Bit 29: bus lock threshold.
        const BUS_LOCK_THRESHOLD = 1 << 29;
        /// Bit 30: idle HLT intercept.
        const IDLE_HLT_INTERCEPT = 1 << 30;

        const _ = !0;
    }
}

/// Short lowercase name of each named feature, in bit order.
const NAMES: [(SvmFeatureFlags, &str); 26] = [
    (SvmFeatureFlags::NP, "npt"),
    (SvmFeatureFlags::LBR_VIRT, "lbrv"),
    (SvmFeatureFlags::SVML, "svml"),
    (SvmFeatureFlags::NRIPS, "nrip"),
    (SvmFeatureFlags::TSC_RATE_MSR, "tsc_rate"),
    (SvmFeatureFlags::VMCB_CLEAN, "vmcb_clean"),
    (SvmFeatureFlags::FLUSH_BY_ASID, "flush_by_asid"),
    (SvmFeatureFlags::DECODE_ASSISTS, "decode_assists"),
    (SvmFeatureFlags::PAUSE_FILTER, "pause_filter"),
    (SvmFeatureFlags::PAUSE_FILTER_THRESHOLD, "pfthreshold"),
    (SvmFeatureFlags::AVIC, "avic"),
    (SvmFeatureFlags::VMSAVE_VIRT, "vvmsave"),
    (SvmFeatureFlags::VGIF, "vgif"),
    (SvmFeatureFlags::GMET, "gmet"),
    (SvmFeatureFlags::X2AVIC, "x2avic"),
    (SvmFeatureFlags::SSS_CHECK, "sss_check"),
    (SvmFeatureFlags::SPEC_CTRL, "v_spec_ctrl"),
    (SvmFeatureFlags::ROGPT, "rogpt"),
    (SvmFeatureFlags::HOST_MCE_OVERRIDE, "host_mce_override"),
    (SvmFeatureFlags::TLBI_CTL, "tlbi_ctl"),
    (SvmFeatureFlags::VNMI, "vnmi"),
    (SvmFeatureFlags::IBS_VIRT, "ibs_virt"),
    (SvmFeatureFlags::EXT_LVT_AVIC_ACCESS_CHG, "ext_lvt_avic"),
    (SvmFeatureFlags::SVME_ADDR_CHK, "svme_addr_chk"),
    (SvmFeatureFlags::BUS_LOCK_THRESHOLD, "bus_lock_threshold"),
    (SvmFeatureFlags::IDLE_HLT_INTERCEPT, "idle_hlt"),
];

/// Bits of [`SvmFeatureFlags`] that have a name.
const NAMED: u32 = {
    let mut bits = 0;
    let mut i = 0;
    while i < NAMES.len() {
        bits |= NAMES[i].0.bits();
        i += 1;
    }
    bits
};

/// What CPUID Fn8000_000A says about SVM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SvmFeatures {
    /// EAX bits 7:0: SVM revision.
    pub revision: u8,
    /// EBX: number of ASIDs (ASID 0 is the host's, so guests get 1..asids).
    pub asids: u32,
    /// EDX: feature bits.
    pub flags: SvmFeatureFlags,
}

impl SvmFeatures {
    /// Decodes the four registers of CPUID Fn8000_000A (ECX is reserved).
    pub const fn from_regs(eax: u32, ebx: u32, _ecx: u32, edx: u32) -> Self {
        Self {
            revision: eax as u8,
            asids: ebx,
            flags: SvmFeatureFlags::from_bits_retain(edx),
        }
    }

    /// Reads Fn8000_0000, Fn8000_0001 and Fn8000_000A through `reader`.
    /// `None` if the CPU does not report SVM. Keeps every EDX bit.
    pub fn from_reader<R: CpuIdReader>(reader: &R) -> Option<Self> {
        let max_ext = reader.cpuid1(0x8000_0000).eax;
        if max_ext < LEAF_SVM || !svm_supported(reader.cpuid1(LEAF_EXT_FEATURES).ecx) {
            return None;
        }
        let r = reader.cpuid1(LEAF_SVM);
        Some(Self::from_regs(r.eax, r.ebx, r.ecx, r.edx))
    }

    /// From raw-cpuid's `get_svm_info()`. raw-cpuid 11 does not expose
    /// the raw EDX, only the bits it knows (up to TLBI_CTL, without X2AVIC
    /// and ROGPT), so VNMI, X2AVIC, ROGPT and bits 25 and up are lost here:
    /// prefer [`SvmFeatures::from_reader`] when they matter.
    pub fn from_raw_cpuid<R: CpuIdReader>(cpuid: &CpuId<R>) -> Option<Self> {
        let info = cpuid.get_svm_info()?;
        let known = [
            (info.has_nested_paging(), SvmFeatureFlags::NP),
            (info.has_lbr_virtualization(), SvmFeatureFlags::LBR_VIRT),
            (info.has_svm_lock(), SvmFeatureFlags::SVML),
            (info.has_nrip(), SvmFeatureFlags::NRIPS),
            (info.has_tsc_rate_msr(), SvmFeatureFlags::TSC_RATE_MSR),
            (info.has_vmcb_clean_bits(), SvmFeatureFlags::VMCB_CLEAN),
            (info.has_flush_by_asid(), SvmFeatureFlags::FLUSH_BY_ASID),
            (info.has_decode_assists(), SvmFeatureFlags::DECODE_ASSISTS),
            (info.has_pause_filter(), SvmFeatureFlags::PAUSE_FILTER),
            (
                info.has_pause_filter_threshold(),
                SvmFeatureFlags::PAUSE_FILTER_THRESHOLD,
            ),
            (info.has_avic(), SvmFeatureFlags::AVIC),
            (
                info.has_vmsave_virtualization(),
                SvmFeatureFlags::VMSAVE_VIRT,
            ),
            (info.has_gif(), SvmFeatureFlags::VGIF),
            (info.has_gmet(), SvmFeatureFlags::GMET),
            (info.has_sss_check(), SvmFeatureFlags::SSS_CHECK),
            (info.has_spec_ctrl(), SvmFeatureFlags::SPEC_CTRL),
            (
                info.has_host_mce_override(),
                SvmFeatureFlags::HOST_MCE_OVERRIDE,
            ),
            (info.has_tlb_ctrl(), SvmFeatureFlags::TLBI_CTL),
        ];
        let flags = known
            .iter()
            .filter(|(present, _)| *present)
            .fold(SvmFeatureFlags::empty(), |acc, (_, flag)| acc | *flag);
        Some(Self {
            revision: info.revision(),
            asids: info.supported_asids(),
            flags,
        })
    }

    /// Whether all of `flags` are present.
    pub const fn has(&self, flags: SvmFeatureFlags) -> bool {
        self.flags.contains(flags)
    }

    /// Short names of the present, named features in bit order (`npt`,
    /// `lbrv`, `nrip`, `vgif`, ...), for a boot banner.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        NAMES
            .iter()
            .filter(|(flag, _)| self.flags.contains(*flag))
            .map(|(_, name)| *name)
    }

    /// EDX bits that are set but have no name here.
    pub const fn unnamed_bits(&self) -> u32 {
        self.flags.bits() & !NAMED
    }
}

impl fmt::Display for SvmFeatures {
    /// `revision=1 asids=16 features=npt,vgif` (plus ` other=0x...` for
    /// unnamed EDX bits).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "revision={} asids={} features=",
            self.revision, self.asids
        )?;
        let mut any = false;
        for name in self.names() {
            if any {
                f.write_str(",")?;
            }
            f.write_str(name)?;
            any = true;
        }
        if !any {
            f.write_str("none")?;
        }
        if self.unnamed_bits() != 0 {
            write!(f, " other={:#x}", self.unnamed_bits())?;
        }
        Ok(())
    }
}

/// Outcome of the APM 15.4 "Enabling SVM" check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SvmAvailability {
    /// CPUID Fn8000_0001_ECX\[SVM\] is clear.
    NotAvailable,
    /// VM_CR.SVMDIS is clear: EFER.SVME may be set.
    Allowed,
    /// Disabled by firmware and not unlockable (no SVML): the user must
    /// change a firmware setting.
    DisabledAtBios,
    /// Disabled, but SVM-Lock may be unlockable with the SVM_KEY.
    DisabledWithKey,
}

/// APM 15.4: whether SVM can be enabled, from CPUID Fn8000_0001_ECX, the
/// VM_CR MSR and CPUID Fn8000_000A_EDX. (QEMU TCG reads VM_CR as 0, so it
/// always comes out `Allowed` there.)
pub const fn svm_availability(
    ecx_8000_0001: u32,
    vm_cr: u64,
    edx_8000_000a: u32,
) -> SvmAvailability {
    if !svm_supported(ecx_8000_0001) {
        SvmAvailability::NotAvailable
    } else if vm_cr & VmCr::SVMDIS.bits() == 0 {
        SvmAvailability::Allowed
    } else if edx_8000_000a & SvmFeatureFlags::SVML.bits() == 0 {
        SvmAvailability::DisabledAtBios
    } else {
        SvmAvailability::DisabledWithKey
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raw_cpuid::CpuIdResult;
    use std::string::ToString;
    use std::vec::Vec;

    #[test]
    fn edx_bit_positions() {
        let expect = [
            (SvmFeatureFlags::NP, 0),
            (SvmFeatureFlags::LBR_VIRT, 1),
            (SvmFeatureFlags::SVML, 2),
            (SvmFeatureFlags::NRIPS, 3),
            (SvmFeatureFlags::TSC_RATE_MSR, 4),
            (SvmFeatureFlags::VMCB_CLEAN, 5),
            (SvmFeatureFlags::FLUSH_BY_ASID, 6),
            (SvmFeatureFlags::DECODE_ASSISTS, 7),
            (SvmFeatureFlags::PAUSE_FILTER, 10),
            (SvmFeatureFlags::PAUSE_FILTER_THRESHOLD, 12),
            (SvmFeatureFlags::AVIC, 13),
            (SvmFeatureFlags::VMSAVE_VIRT, 15),
            (SvmFeatureFlags::VGIF, 16),
            (SvmFeatureFlags::GMET, 17),
            (SvmFeatureFlags::X2AVIC, 18),
            (SvmFeatureFlags::SSS_CHECK, 19),
            (SvmFeatureFlags::SPEC_CTRL, 20),
            (SvmFeatureFlags::ROGPT, 21),
            (SvmFeatureFlags::HOST_MCE_OVERRIDE, 23),
            (SvmFeatureFlags::TLBI_CTL, 24),
            (SvmFeatureFlags::VNMI, 25),
            (SvmFeatureFlags::IBS_VIRT, 26),
            (SvmFeatureFlags::SVME_ADDR_CHK, 28),
            (SvmFeatureFlags::BUS_LOCK_THRESHOLD, 29),
            (SvmFeatureFlags::IDLE_HLT_INTERCEPT, 30),
        ];
        for (flag, bit) in expect {
            assert_eq!(flag.bits(), 1u32 << bit, "{flag:?}");
        }
    }

    #[test]
    fn qemu_tcg_npt_vgif() {
        // -cpu qemu64,+svm,+npt,+vgif: revision 1, 16 ASIDs, EDX = NP|VGIF.
        let f = SvmFeatures::from_regs(0x1, 0x10, 0, 0x0001_0001);
        assert_eq!(f.revision, 1);
        assert_eq!(f.asids, 16);
        assert!(f.has(SvmFeatureFlags::NP | SvmFeatureFlags::VGIF));
        assert!(!f.has(SvmFeatureFlags::NRIPS));
        assert!(!f.has(SvmFeatureFlags::DECODE_ASSISTS));
        assert_eq!(f.names().collect::<Vec<_>>(), ["npt", "vgif"]);
        assert_eq!(f.to_string(), "revision=1 asids=16 features=npt,vgif");
        // With the SVME address check (bit 28) as well.
        let f = SvmFeatures::from_regs(0x1, 0x10, 0, 0x1001_0001);
        assert_eq!(
            f.to_string(),
            "revision=1 asids=16 features=npt,vgif,svme_addr_chk"
        );
    }

    #[test]
    fn a_zen_like_edx() {
        // NP LbrVirt SVML NRIPS TscRate VmcbClean FlushByAsid DecodeAssists
        // PauseFilter PFThreshold AVIC VMSAVEvirt VGIF (bits 0-7,10,12,13,15,16).
        let edx = 0x0001_B4FF;
        let f = SvmFeatures::from_regs(0x1, 0x8000, 0, edx);
        assert_eq!(
            f.names().collect::<Vec<_>>(),
            [
                "npt",
                "lbrv",
                "svml",
                "nrip",
                "tsc_rate",
                "vmcb_clean",
                "flush_by_asid",
                "decode_assists",
                "pause_filter",
                "pfthreshold",
                "avic",
                "vvmsave",
                "vgif"
            ]
        );
        assert_eq!(f.unnamed_bits(), 0);
        // Bits without a name survive and are shown as such.
        let f = SvmFeatures::from_regs(0x1, 1, 0, (1 << 8) | 1);
        assert_eq!(f.unnamed_bits(), 1 << 8);
        assert_eq!(f.to_string(), "revision=1 asids=1 features=npt other=0x100");
        let f = SvmFeatures::from_regs(0x1, 1, 0, 0);
        assert_eq!(f.to_string(), "revision=1 asids=1 features=none");
    }

    /// A CPUID that answers like an AMD CPU with the given SVM registers.
    fn fake_amd(ext_ecx: u32, svm_edx: u32) -> impl Fn(u32, u32) -> CpuIdResult + Clone {
        move |leaf, _sub| {
            let r = |eax, ebx, ecx, edx| CpuIdResult { eax, ebx, ecx, edx };
            match leaf {
                // "AuthenticAMD"
                0x0 => r(0xD, 0x6874_7541, 0x444D_4163, 0x6974_6E65),
                0x8000_0000 => r(0x8000_001F, 0x6874_7541, 0x444D_4163, 0x6974_6E65),
                0x8000_0001 => r(0, 0, ext_ecx, 0),
                0x8000_000A => r(1, 16, 0, svm_edx),
                _ => r(0, 0, 0, 0),
            }
        }
    }

    #[test]
    fn from_reader_keeps_every_bit() {
        let edx = SvmFeatureFlags::NP | SvmFeatureFlags::VNMI | SvmFeatureFlags::X2AVIC;
        let reader = fake_amd(EXT_FEATURES_ECX_SVM, edx.bits());
        let f = SvmFeatures::from_reader(&reader).unwrap();
        assert_eq!(f.flags, edx);
        assert_eq!((f.revision, f.asids), (1, 16));
        assert_eq!(SvmFeatures::from_reader(&fake_amd(0, edx.bits())), None);
    }

    #[test]
    fn from_raw_cpuid_agrees_on_the_bits_it_knows() {
        let edx = 0x0001_B4FF | SvmFeatureFlags::TLBI_CTL.bits();
        let cpuid = CpuId::with_cpuid_fn(fake_amd(EXT_FEATURES_ECX_SVM, edx));
        let f = SvmFeatures::from_raw_cpuid(&cpuid).unwrap();
        assert_eq!(f, SvmFeatures::from_regs(1, 16, 0, edx));
        // VNMI (bit 25) is one of the bits raw-cpuid 11 does not expose.
        let cpuid = CpuId::with_cpuid_fn(fake_amd(
            EXT_FEATURES_ECX_SVM,
            SvmFeatureFlags::VNMI.bits() | 1,
        ));
        assert_eq!(
            SvmFeatures::from_raw_cpuid(&cpuid).unwrap().flags,
            SvmFeatureFlags::NP
        );
        let cpuid = CpuId::with_cpuid_fn(fake_amd(0, edx));
        assert_eq!(SvmFeatures::from_raw_cpuid(&cpuid), None);
    }

    #[test]
    fn availability_follows_apm_15_4() {
        let svm = EXT_FEATURES_ECX_SVM;
        let svml = SvmFeatureFlags::SVML.bits();
        assert!(svm_supported(0x4));
        assert!(!svm_supported(0xFFFF_FFFB));
        assert_eq!(svm_availability(0, 0, svml), SvmAvailability::NotAvailable);
        assert_eq!(svm_availability(svm, 0, 0), SvmAvailability::Allowed);
        // LOCK alone does not disable SVM.
        assert_eq!(svm_availability(svm, 1 << 3, 0), SvmAvailability::Allowed);
        assert_eq!(
            svm_availability(svm, 1 << 4, 0),
            SvmAvailability::DisabledAtBios
        );
        assert_eq!(
            svm_availability(svm, (1 << 4) | (1 << 3), svml),
            SvmAvailability::DisabledWithKey
        );
    }
}
