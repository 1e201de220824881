//! The one table of what a guest's RDMSR/WRMSR gets, for every MSR index
//! (all of them: the three MSR permission map ranges 0–0x1FFF,
//! 0xC000_0000–0xC000_1FFF and 0xC001_0000–0xC001_1FFF, and everything
//! else, which is #GP). Every intercepted MSR is emulated or raises #GP:
//! an MSR access never stops the VM.
//!
//! Classes ([`MsrClass`]):
//! - models with real semantics, handled by the kernel (TSC and
//!   TSC_ADJUST, EFER, TSC_AUX, VM_CR and VM_HSAVE_PA, the local APIC's
//!   APIC_BASE and x2APIC registers);
//! - VMCB save-area fields ([`VmcbMsr`]): SYSENTER_*, STAR/LSTAR/CSTAR/
//!   SFMASK, FS/GS/KernelGS base, PAT (G_PAT), the LBR registers;
//! - a per-vCPU value store ([`MsrStore`]) where holding the value is all
//!   a guest can observe: DEBUGCTL, the MTRRs, the AMD PMU event selects
//!   and counters (never counting: no event is emulated), HWCR;
//! - constants ([`MsrClass::Fixed`]): machine-check MSRs with no bank
//!   reporting anything, SYSCFG, PATCH_LEVEL, MTRRcap (read-only on the
//!   CPU; a write of the value it holds is accepted here, so that a value
//!   read can always be written back);
//! - #GP for the rest (APM Vol. 2 and KVM: an MSR the CPU does not
//!   implement raises #GP(0)).
//!
//! Nested SVM: nothing here is switched by VMRUN or #VMEXIT except what
//! the VMCB save area holds and VMRUN loads (EFER); with neither nested
//! paging nor LBR virtualization offered to L1, PAT and DEBUGCTL are
//! shared by L1 and L2 (APM 15.5.1, 15.25.4), as the store is.

use crate::msr;
use crate::StateSaveArea;

/// What a guest's RDMSR/WRMSR of one MSR index does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsrClass {
    /// IA32_TSC (0x10): the TSC model.
    Tsc,
    /// IA32_TSC_ADJUST (0x3B): the TSC model.
    TscAdjust,
    /// EFER: the mode rules.
    Efer,
    /// IA32_APIC_BASE (0x1B) and the x2APIC registers (0x800–0x8FF): the
    /// local APIC model.
    Apic,
    /// TSC_AUX (0xC000_0103): bits 63:32 reserved.
    TscAux,
    /// VM_CR (nested SVM only).
    VmCr,
    /// VM_HSAVE_PA (nested SVM only).
    HsavePa,
    /// A field of the VMCB save area.
    Vmcb(VmcbMsr),
    /// A slot of the per-vCPU [`MsrStore`].
    Store(StoreMsr),
    /// Reads this value; a write of the same value is accepted and does
    /// nothing, any other #GP.
    Fixed(u64),
    /// #GP(0) on read and write.
    Gp,
}

/// MSRs that live in the VMCB save area (the CPU loads them with VMLOAD
/// or uses them from the VMCB while the guest runs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmcbMsr {
    /// SYSENTER_CS (0x174).
    SysenterCs,
    /// SYSENTER_ESP (0x175).
    SysenterEsp,
    /// SYSENTER_EIP (0x176).
    SysenterEip,
    /// STAR (0xC000_0081).
    Star,
    /// LSTAR (0xC000_0082).
    Lstar,
    /// CSTAR (0xC000_0083).
    Cstar,
    /// SFMASK (0xC000_0084).
    Sfmask,
    /// FS.base (0xC000_0100; passed through, never intercepted).
    FsBase,
    /// GS.base (0xC000_0101; passed through).
    GsBase,
    /// KernelGSbase (0xC000_0102; passed through).
    KernelGsBase,
    /// IA32_PAT: G_PAT (the guest PAT under nested paging).
    Pat,
    /// LastBranchFromIP (0x1DB): read-only here, no branch is recorded.
    BrFrom,
    /// LastBranchToIP (0x1DC).
    BrTo,
    /// LastExceptionFromIP (0x1DD).
    LastExcpFrom,
    /// LastExceptionToIP (0x1DE).
    LastExcpTo,
}

/// A store slot and the rule its writes follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreMsr {
    /// Index into [`MsrStore`].
    pub slot: usize,
    /// What a write may hold.
    pub rule: StoreRule,
}

/// Write rules of the store MSRs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreRule {
    /// DEBUGCTL: bits 5:0 (LBR, BTF, PB0–PB3), the rest reserved (KVM
    /// `DEBUGCTL_RESERVED_BITS`).
    DebugCtl,
    /// MTRRdefType: type in 7:0, FE (10), E (11); 9:8 and 63:12 reserved.
    MtrrDefType,
    /// A fixed-range MTRR: eight type bytes.
    MtrrFixed,
    /// MTRRphysBase n: type in 7:0, 11:8 reserved, base below MAXPHYADDR.
    MtrrPhysBase,
    /// MTRRphysMask n: 10:0 reserved, V (11), mask below MAXPHYADDR.
    MtrrPhysMask,
    /// PERF_CTL n: KVM's AMD reserved bits (63:36, 21, 19).
    PerfCtl,
    /// PERF_CTR n: any value, kept to the counter's 48 bits.
    PerfCtr,
    /// HWCR: McStatusWrEn (18) and TscFreqSel (24) kept; FFDIS (6),
    /// IGNNE_EM (8), TLBCACHEDIS (3) ignored; the rest #GP (KVM).
    Hwcr,
}

/// Why an access is refused: the guest gets #GP(0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gp;

/// IA32_MTRRcap.
pub const MTRR_CAP: u32 = 0xFE;
/// MTRRcap's value: 8 variable ranges (VCNT), fixed ranges (FIX, bit 8)
/// and write-combining (WC, bit 10).
pub const MTRR_CAP_VALUE: u64 = 8 | 1 << 8 | 1 << 10;
/// MTRRphysBase0 (the variable MTRRs are pairs up to 0x20F).
pub const MTRR_PHYS_BASE0: u32 = 0x200;
/// MTRRdefType.
pub const MTRR_DEF_TYPE: u32 = 0x2FF;
/// The fixed-range MTRRs: 64K_00000, 16K_80000, 16K_A0000, 4K_C0000..F8000.
pub const MTRR_FIXED: [u32; 11] = [
    0x250, 0x258, 0x259, 0x268, 0x269, 0x26A, 0x26B, 0x26C, 0x26D, 0x26E, 0x26F,
];
/// LastBranchFromIP .. LastExceptionToIP.
pub const LBR_FIRST: u32 = 0x1DB;
/// The legacy AMD PMU: PERF_CTL0–3 (0xC001_0000–3), PERF_CTR0–3 (–7).
pub const K7_PERF_CTL0: u32 = 0xC001_0000;
/// The core PMU (PerfCtrExtCore): PERF_CTL0/CTR0 .. PERF_CTL5/CTR5,
/// interleaved, 0xC001_0200–0xC001_020B.
pub const F15H_PERF_CTL0: u32 = 0xC001_0200;
/// MCG_CAP (bank count 0: no machine check is ever reported).
pub const MCG_CAP: u32 = 0x179;
/// MCG_STATUS.
pub const MCG_STATUS: u32 = 0x17A;
/// MCG_CTL.
pub const MCG_CTL: u32 = 0x17B;
/// MC0_CTL; banks are four MSRs each up to 0x47F (KVM's 32 banks).
pub const MC0_CTL: u32 = 0x400;
/// Last MC bank MSR.
pub const MC_LAST: u32 = 0x47F;
/// P5_MC_ADDR and P5_MC_TYPE (0 and 1).
pub const P5_MC_TYPE: u32 = 0x1;
/// PATCH_LEVEL (microcode revision).
pub const PATCH_LEVEL: u32 = 0x8B;
/// HWCR.
pub const HWCR: u32 = 0xC001_0015;
/// SYSCFG.
pub const SYSCFG: u32 = 0xC001_0010;
/// The x2APIC registers.
pub const X2APIC_FIRST: u32 = 0x800;
/// Last x2APIC register.
pub const X2APIC_LAST: u32 = 0x8FF;

/// Store slots, in order.
const SLOT_DEBUGCTL: usize = 0;
const SLOT_MTRR_DEF_TYPE: usize = 1;
const SLOT_MTRR_FIXED: usize = 2; // 11 slots
const SLOT_MTRR_VAR: usize = SLOT_MTRR_FIXED + MTRR_FIXED.len(); // 16 slots
const SLOT_K7_PMU: usize = SLOT_MTRR_VAR + 16; // 8 slots
const SLOT_F15H_PMU: usize = SLOT_K7_PMU + 8; // 12 slots
const SLOT_HWCR: usize = SLOT_F15H_PMU + 12;
/// Number of store slots.
pub const STORE_SLOTS: usize = SLOT_HWCR + 1;

const fn store(slot: usize, rule: StoreRule) -> MsrClass {
    MsrClass::Store(StoreMsr { slot, rule })
}

/// What RDMSR/WRMSR of `msr` does, for any guest at any level.
pub fn classify(msr: u32) -> MsrClass {
    use MsrClass::*;
    match msr {
        // P5_MC_ADDR, P5_MC_TYPE: no machine check to report.
        0..=P5_MC_TYPE => Fixed(0),
        msr::IA32_TSC => Tsc,
        msr::IA32_APIC_BASE => Apic,
        msr::IA32_TSC_ADJUST => TscAdjust,
        PATCH_LEVEL => Fixed(0),
        MTRR_CAP => Fixed(MTRR_CAP_VALUE),
        msr::IA32_SYSENTER_CS => Vmcb(VmcbMsr::SysenterCs),
        msr::IA32_SYSENTER_ESP => Vmcb(VmcbMsr::SysenterEsp),
        msr::IA32_SYSENTER_EIP => Vmcb(VmcbMsr::SysenterEip),
        MCG_CAP | MCG_STATUS | MCG_CTL => Fixed(0),
        msr::IA32_DEBUGCTL => store(SLOT_DEBUGCTL, StoreRule::DebugCtl),
        0x1DB => Vmcb(VmcbMsr::BrFrom),
        0x1DC => Vmcb(VmcbMsr::BrTo),
        0x1DD => Vmcb(VmcbMsr::LastExcpFrom),
        0x1DE => Vmcb(VmcbMsr::LastExcpTo),
        0x200..=0x20F => {
            let n = (msr - MTRR_PHYS_BASE0) as usize;
            let rule = match n % 2 {
                0 => StoreRule::MtrrPhysBase,
                _ => StoreRule::MtrrPhysMask,
            };
            store(SLOT_MTRR_VAR + n, rule)
        }
        msr::IA32_PAT => Vmcb(VmcbMsr::Pat),
        MTRR_DEF_TYPE => store(SLOT_MTRR_DEF_TYPE, StoreRule::MtrrDefType),
        0x250..=0x26F => match MTRR_FIXED.iter().position(|&m| m == msr) {
            Some(i) => store(SLOT_MTRR_FIXED + i, StoreRule::MtrrFixed),
            None => Gp,
        },
        MC0_CTL..=MC_LAST => Fixed(0),
        X2APIC_FIRST..=X2APIC_LAST => Apic,
        msr::EFER => Efer,
        msr::STAR => Vmcb(VmcbMsr::Star),
        msr::LSTAR => Vmcb(VmcbMsr::Lstar),
        msr::CSTAR => Vmcb(VmcbMsr::Cstar),
        msr::SFMASK => Vmcb(VmcbMsr::Sfmask),
        msr::FS_BASE => Vmcb(VmcbMsr::FsBase),
        msr::GS_BASE => Vmcb(VmcbMsr::GsBase),
        msr::KERNEL_GS_BASE => Vmcb(VmcbMsr::KernelGsBase),
        msr::TSC_AUX => TscAux,
        0xC001_0000..=0xC001_0007 => {
            let n = (msr - K7_PERF_CTL0) as usize;
            let rule = match n < 4 {
                true => StoreRule::PerfCtl,
                false => StoreRule::PerfCtr,
            };
            store(SLOT_K7_PMU + n, rule)
        }
        SYSCFG => Fixed(0),
        HWCR => store(SLOT_HWCR, StoreRule::Hwcr),
        msr::VM_CR => VmCr,
        msr::VM_HSAVE_PA => HsavePa,
        0xC001_0200..=0xC001_020B => {
            let n = (msr - F15H_PERF_CTL0) as usize;
            let rule = match n % 2 {
                0 => StoreRule::PerfCtl,
                _ => StoreRule::PerfCtr,
            };
            store(SLOT_F15H_PMU + n, rule)
        }
        // TSC_RATIO (no TSC scaling offered), IGNNE, SMM_CTL, SVM_KEY
        // (no SVM-Lock offered), Intel-only MSRs (PLATFORM_INFO,
        // MISC_ENABLE, the VMX MSRs), everything unknown.
        _ => Gp,
    }
}

/// Whether `msr` is in one of the three MSR permission map ranges.
pub const fn in_msrpm_ranges(msr: u32) -> bool {
    matches!(
        msr,
        0..=0x1FFF | 0xC000_0000..=0xC000_1FFF | 0xC001_0000..=0xC001_1FFF
    )
}

/// The per-vCPU values of the store MSRs, in hypervisor memory. Shared
/// by L1 and the L2s it runs (none of them is switched by VMRUN).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MsrStore {
    values: [u64; STORE_SLOTS],
}

impl Default for MsrStore {
    /// Reset values (APM 14.1.3): all zero (MTRRs disabled, counters off).
    fn default() -> Self {
        Self {
            values: [0; STORE_SLOTS],
        }
    }
}

/// AMD performance counters are 48 bits wide.
const PERF_CTR_MASK: u64 = (1 << 48) - 1;
/// KVM's reserved PERF_CTL bits on AMD (`amd_pmu_refresh`).
const PERF_CTL_RESERVED: u64 = 0xFFFF_FFF0_0028_0000;
/// HWCR bits KVM drops without #GP (FFDIS, IGNNE_EM, TLBCACHEDIS).
const HWCR_IGNORED: u64 = 1 << 6 | 1 << 8 | 1 << 3;
/// HWCR bits kept (McStatusWrEn, TscFreqSel).
const HWCR_KEPT: u64 = 1 << 18 | 1 << 24;

/// Whether `t` is a memory type an MTRR may hold: UC, WC, WT, WP, WB
/// (APM 7.7.1; 2, 3 and 7 and above are reserved there).
const fn mtrr_type_valid(t: u64) -> bool {
    matches!(t, 0 | 1 | 4 | 5 | 6)
}

/// Whether `t` is a memory type the PAT may hold: the MTRR types and UC-
/// (7) (APM 7.8.1).
const fn pat_type_valid(t: u64) -> bool {
    matches!(t, 0 | 1 | 4..=7)
}

/// Bits at and above MAXPHYADDR.
fn above_maxphy(value: u64, max_phys_bits: u8) -> bool {
    value.checked_shr(u32::from(max_phys_bits)).unwrap_or(0) != 0
}

/// Whether every byte of `value` satisfies `ok`.
fn all_bytes(value: u64, ok: fn(u64) -> bool) -> bool {
    value.to_le_bytes().iter().all(|&b| ok(u64::from(b)))
}

impl StoreRule {
    /// What the store keeps for a write of `value`, or #GP.
    pub fn check(self, value: u64, max_phys_bits: u8) -> Result<u64, Gp> {
        let ok = match self {
            StoreRule::DebugCtl => value & !0x3F == 0,
            StoreRule::MtrrDefType => {
                value & !(0xFF | 1 << 10 | 1 << 11) == 0 && mtrr_type_valid(value & 0xFF)
            }
            StoreRule::MtrrFixed => all_bytes(value, mtrr_type_valid),
            StoreRule::MtrrPhysBase => {
                value & 0xF00 == 0
                    && mtrr_type_valid(value & 0xFF)
                    && !above_maxphy(value, max_phys_bits)
            }
            StoreRule::MtrrPhysMask => value & 0x7FF == 0 && !above_maxphy(value, max_phys_bits),
            StoreRule::PerfCtl => value & PERF_CTL_RESERVED == 0,
            StoreRule::PerfCtr => return Ok(value & PERF_CTR_MASK),
            StoreRule::Hwcr => {
                return match value & !HWCR_IGNORED & !HWCR_KEPT {
                    0 => Ok(value & HWCR_KEPT),
                    _ => Err(Gp),
                }
            }
        };
        if ok {
            Ok(value)
        } else {
            Err(Gp)
        }
    }
}

impl MsrStore {
    /// The value of a store MSR.
    pub fn read(&self, m: StoreMsr) -> u64 {
        self.values[m.slot]
    }

    /// A guest's write: kept as the rule says, or #GP (nothing changes).
    pub fn write(&mut self, m: StoreMsr, value: u64, max_phys_bits: u8) -> Result<(), Gp> {
        self.values[m.slot] = m.rule.check(value, max_phys_bits)?;
        Ok(())
    }
}

/// Whether `v` is canonical for 48-bit virtual addresses.
const fn canonical(v: u64) -> bool {
    ((v as i64) << 16 >> 16) as u64 == v
}

impl VmcbMsr {
    /// The MSR's value in a save area.
    pub fn read(self, s: &StateSaveArea) -> u64 {
        match self {
            VmcbMsr::SysenterCs => s.sysenter_cs,
            VmcbMsr::SysenterEsp => s.sysenter_esp,
            VmcbMsr::SysenterEip => s.sysenter_eip,
            VmcbMsr::Star => s.star,
            VmcbMsr::Lstar => s.lstar,
            VmcbMsr::Cstar => s.cstar,
            VmcbMsr::Sfmask => s.sfmask,
            VmcbMsr::FsBase => s.fs.base,
            VmcbMsr::GsBase => s.gs.base,
            VmcbMsr::KernelGsBase => s.kernel_gs_base,
            VmcbMsr::Pat => s.g_pat,
            VmcbMsr::BrFrom => s.br_from,
            VmcbMsr::BrTo => s.br_to,
            VmcbMsr::LastExcpFrom => s.last_excp_from,
            VmcbMsr::LastExcpTo => s.last_excp_to,
        }
    }

    /// A guest's write into a save area, or #GP (nothing changes).
    /// Addresses must be canonical (KVM `is_noncanonical_msr_address`);
    /// the PAT holds valid types only (APM 7.8.1); the LBR registers are
    /// read-only (a write of the value they hold changes nothing).
    pub fn write(self, s: &mut StateSaveArea, value: u64) -> Result<(), Gp> {
        let field = match self {
            VmcbMsr::SysenterCs => &mut s.sysenter_cs,
            VmcbMsr::SysenterEsp => &mut s.sysenter_esp,
            VmcbMsr::SysenterEip => &mut s.sysenter_eip,
            VmcbMsr::Star => &mut s.star,
            VmcbMsr::Lstar => &mut s.lstar,
            VmcbMsr::Cstar => &mut s.cstar,
            VmcbMsr::Sfmask => &mut s.sfmask,
            VmcbMsr::FsBase => &mut s.fs.base,
            VmcbMsr::GsBase => &mut s.gs.base,
            VmcbMsr::KernelGsBase => &mut s.kernel_gs_base,
            VmcbMsr::Pat => &mut s.g_pat,
            VmcbMsr::BrFrom => &mut s.br_from,
            VmcbMsr::BrTo => &mut s.br_to,
            VmcbMsr::LastExcpFrom => &mut s.last_excp_from,
            VmcbMsr::LastExcpTo => &mut s.last_excp_to,
        };
        let ok = match self {
            VmcbMsr::SysenterEsp
            | VmcbMsr::SysenterEip
            | VmcbMsr::Lstar
            | VmcbMsr::Cstar
            | VmcbMsr::FsBase
            | VmcbMsr::GsBase
            | VmcbMsr::KernelGsBase => canonical(value),
            VmcbMsr::Pat => all_bytes(value, pat_type_valid),
            VmcbMsr::BrFrom | VmcbMsr::BrTo | VmcbMsr::LastExcpFrom | VmcbMsr::LastExcpTo => {
                value == *field
            }
            VmcbMsr::SysenterCs | VmcbMsr::Star | VmcbMsr::Sfmask => true,
        };
        if !ok {
            return Err(Gp);
        }
        *field = value;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    const RANGES: [core::ops::RangeInclusive<u32>; 3] = [
        0..=0x1FFF,
        0xC000_0000..=0xC000_1FFF,
        0xC001_0000..=0xC001_1FFF,
    ];

    fn every_index() -> impl Iterator<Item = u32> {
        RANGES.iter().cloned().flatten()
    }

    #[test]
    fn census_of_the_three_ranges() {
        // Every index is classified (the match is total); these are the
        // counts per class, so a change to the table is a visible one.
        let (mut fixed, mut store, mut vmcb, mut apic, mut models, mut gp) = (0, 0, 0, 0, 0, 0);
        for msr in every_index() {
            match classify(msr) {
                MsrClass::Fixed(_) => fixed += 1,
                MsrClass::Store(_) => store += 1,
                MsrClass::Vmcb(_) => vmcb += 1,
                MsrClass::Apic => apic += 1,
                MsrClass::Gp => gp += 1,
                _ => models += 1,
            }
        }
        // P5 MC x2, PATCH_LEVEL, MTRRcap, MCG x3, 32 MC banks x4, SYSCFG.
        assert_eq!(fixed, 2 + 1 + 1 + 3 + 128 + 1);
        // DEBUGCTL, MTRRdefType, 11 fixed + 16 variable MTRRs, 8 + 12 PMU, HWCR.
        assert_eq!(store, STORE_SLOTS);
        assert_eq!(store, 1 + 1 + 11 + 16 + 8 + 12 + 1);
        assert_eq!(vmcb, 15);
        assert_eq!(apic, 1 + 256);
        // TSC, TSC_ADJUST, EFER, TSC_AUX, VM_CR, VM_HSAVE_PA.
        assert_eq!(models, 6);
        assert_eq!(fixed + store + vmcb + apic + models + gp, 3 * 8192);
    }

    #[test]
    fn the_kernel_models_have_their_indices() {
        assert_eq!(classify(0x10), MsrClass::Tsc);
        assert_eq!(classify(0x3B), MsrClass::TscAdjust);
        assert_eq!(classify(0x1B), MsrClass::Apic);
        assert_eq!(classify(0x800), MsrClass::Apic);
        assert_eq!(classify(0x8FF), MsrClass::Apic);
        assert_eq!(classify(0x7FF), MsrClass::Gp);
        assert_eq!(classify(0x900), MsrClass::Gp);
        assert_eq!(classify(0xC000_0080), MsrClass::Efer);
        assert_eq!(classify(0xC000_0103), MsrClass::TscAux);
        assert_eq!(classify(0xC001_0114), MsrClass::VmCr);
        assert_eq!(classify(0xC001_0117), MsrClass::HsavePa);
    }

    #[test]
    fn unknown_and_outside_the_ranges_gp() {
        // The MSR the self-tests use as "unknown", TSC_RATIO (no TSC
        // scaling offered), SVM_KEY, Intel's PLATFORM_INFO and
        // MISC_ENABLE, SEV_STATUS, and indices outside the ranges.
        for msr in [
            0xC001_1FFE,
            0xC000_0104,
            0xC001_0118,
            0xCE,
            0x1A0,
            0xC001_0131,
            0x2000,
            0xBFFF_FFFF,
            0xC000_2000,
            0xC001_2000,
            0xFFFF_FFFF,
            0x4000_0000,
        ] {
            assert_eq!(classify(msr), MsrClass::Gp, "{msr:#x}");
        }
        assert!(!in_msrpm_ranges(0x2000) && in_msrpm_ranges(0xC001_1FFF));
    }

    #[test]
    fn pmu_msrs_are_stored() {
        // kvm-unit-tests writes 0 to them at boot with no #GP handler.
        let mut s = MsrStore::default();
        for msr in (0xC001_0000..=0xC001_0007).chain(0xC001_0200..=0xC001_020B) {
            let MsrClass::Store(m) = classify(msr) else {
                panic!("{msr:#x} not stored");
            };
            assert_eq!(s.write(m, 0, 48), Ok(()), "{msr:#x}");
            assert_eq!(s.write(m, 0x1234, 48), Ok(()), "{msr:#x}");
            assert_eq!(s.read(m), 0x1234, "{msr:#x}");
        }
    }

    #[test]
    fn store_slots_are_distinct_and_all_used() {
        let mut seen = [0u32; STORE_SLOTS];
        for msr in every_index() {
            if let MsrClass::Store(m) = classify(msr) {
                assert_eq!(seen[m.slot], 0, "slot {} shared by {msr:#x}", m.slot);
                seen[m.slot] = msr;
            }
        }
        assert!(seen.iter().all(|&m| m != 0), "unused slots: {seen:x?}");
    }

    #[test]
    fn every_msr_outside_the_ranges_gps() {
        for msr in [0x2000u32, 0x1_0000, 0x8000_0000, 0xC000_2000, 0xC001_2000] {
            assert_eq!(classify(msr), MsrClass::Gp);
        }
    }

    #[test]
    fn reserved_bits() {
        let c = |msr| match classify(msr) {
            MsrClass::Store(m) => m.rule,
            other => panic!("{msr:#x} is {other:?}"),
        };
        assert_eq!(c(0x1D9).check(0x3F, 48), Ok(0x3F));
        assert_eq!(c(0x1D9).check(0x40, 48), Err(Gp));
        assert_eq!(c(0x2FF).check(0xC06, 48), Ok(0xC06));
        assert_eq!(c(0x2FF).check(0x02, 48), Err(Gp));
        assert_eq!(c(0x2FF).check(0x106, 48), Err(Gp));
        assert_eq!(
            c(0x250).check(0x0606_0606_0505_0400, 48),
            Ok(0x0606_0606_0505_0400)
        );
        assert_eq!(c(0x250).check(0x0300, 48), Err(Gp));
        assert_eq!(c(0x200).check(0xFFFF_F000_0006, 48), Ok(0xFFFF_F000_0006));
        assert_eq!(c(0x200).check(0x1_0000_0000_0006, 48), Err(Gp));
        assert_eq!(c(0x200).check(0x106, 48), Err(Gp));
        assert_eq!(c(0x201).check(0xFFFF_F000_0800, 48), Ok(0xFFFF_F000_0800));
        assert_eq!(c(0x201).check(0x800 | 1, 48), Err(Gp));
        assert_eq!(c(0x201).check(0xFFFF_F000_0800, 40), Err(Gp));
        assert_eq!(c(0xC001_0000).check(0x43_0076, 48), Ok(0x43_0076));
        assert_eq!(c(0xC001_0000).check(1 << 21, 48), Err(Gp));
        assert_eq!(c(0xC001_0000).check(1 << 40, 48), Err(Gp));
        assert_eq!(c(0xC001_0004).check(u64::MAX, 48), Ok(PERF_CTR_MASK));
        assert_eq!(c(0xC001_0015).check(1 << 24 | 1 << 6, 48), Ok(1 << 24));
        assert_eq!(c(0xC001_0015).check(1, 48), Err(Gp));
        assert!(!matches!(classify(0x251), MsrClass::Store(_)));
    }

    #[test]
    fn pat_and_lbr_in_the_vmcb() {
        let mut s = crate::Vmcb::new().state;
        let pat = VmcbMsr::Pat;
        assert_eq!(classify(0x277), MsrClass::Vmcb(pat));
        assert_eq!(pat.write(&mut s, msr::PAT_POWER_ON), Ok(()));
        assert_eq!(pat.read(&s), msr::PAT_POWER_ON);
        assert_eq!(pat.write(&mut s, 0x0207_0406_0007_0406), Err(Gp));
        assert_eq!(pat.write(&mut s, 0x0807_0406_0007_0406), Err(Gp));
        assert_eq!(pat.read(&s), msr::PAT_POWER_ON);
        let lbr = VmcbMsr::BrFrom;
        assert_eq!(classify(0x1DB), MsrClass::Vmcb(lbr));
        assert_eq!(lbr.write(&mut s, 0), Ok(()));
        assert_eq!(lbr.write(&mut s, 0x1000), Err(Gp));
        let lstar = VmcbMsr::Lstar;
        assert_eq!(lstar.write(&mut s, 0xFFFF_8000_0000_1000), Ok(()));
        assert_eq!(lstar.write(&mut s, 0x0000_8000_0000_1000), Err(Gp));
        assert_eq!(lstar.read(&s), 0xFFFF_8000_0000_1000);
    }

    /// A value a fresh vCPU reads back, if the read succeeds.
    fn fresh_read(msr: u32, store: &MsrStore, s: &StateSaveArea) -> Option<u64> {
        match classify(msr) {
            MsrClass::Store(m) => Some(store.read(m)),
            MsrClass::Vmcb(f) => Some(f.read(s)),
            MsrClass::Fixed(v) => Some(v),
            _ => None,
        }
    }

    #[test]
    fn writing_back_what_was_read_never_gps() {
        // What msr_intercept_check does from L2: read, write the value
        // back. For every table-owned index (the kernel models have their
        // own tests), on a fresh vCPU.
        let store = MsrStore::default();
        let mut s = crate::Vmcb::new().state;
        s.g_pat = msr::PAT_POWER_ON;
        for msr in every_index() {
            let Some(v) = fresh_read(msr, &store, &s) else {
                continue;
            };
            let mut st = store.clone();
            let ok = match classify(msr) {
                MsrClass::Store(m) => st.write(m, v, 48).is_ok() && st.read(m) == v,
                MsrClass::Vmcb(f) => f.write(&mut s, v).is_ok() && f.read(&s) == v,
                MsrClass::Fixed(_) => true,
                _ => continue,
            };
            assert!(ok, "{msr:#x}: write-back of {v:#x} refused or lost");
        }
    }

    proptest! {
        /// After any accepted write, reading and writing back the value
        /// read is accepted and changes nothing.
        #[test]
        fn store_write_back_is_idempotent(
            msr in prop::sample::select(
                every_index()
                    .filter(|&m| matches!(classify(m), MsrClass::Store(_)))
                    .collect::<Vec<_>>()
            ),
            value: u64,
            bits in 36u8..=52,
        ) {
            let MsrClass::Store(m) = classify(msr) else { unreachable!() };
            let mut s = MsrStore::default();
            if s.write(m, value, bits).is_ok() {
                let read = s.read(m);
                prop_assert_eq!(s.write(m, read, bits), Ok(()));
                prop_assert_eq!(s.read(m), read);
            } else {
                prop_assert_eq!(s.read(m), 0, "a refused write changed the store");
            }
        }

        /// Same for the VMCB-backed MSRs.
        #[test]
        fn vmcb_write_back_is_idempotent(idx in 0usize..15, value: u64) {
            use VmcbMsr::*;
            let f = [SysenterCs, SysenterEsp, SysenterEip, Star, Lstar, Cstar, Sfmask,
                FsBase, GsBase, KernelGsBase, Pat, BrFrom, BrTo, LastExcpFrom, LastExcpTo][idx];
            let mut s = crate::Vmcb::new().state;
            let before = f.read(&s);
            if f.write(&mut s, value).is_ok() {
                prop_assert_eq!(f.read(&s), value);
            } else {
                prop_assert_eq!(f.read(&s), before);
            }
            let read = f.read(&s);
            prop_assert_eq!(f.write(&mut s, read), Ok(()));
        }

        /// Every index in the ranges is classified; outside them, #GP.
        #[test]
        fn outside_the_ranges_is_gp(msr: u32) {
            if !in_msrpm_ranges(msr) {
                prop_assert_eq!(classify(msr), MsrClass::Gp);
            }
        }
    }
}
