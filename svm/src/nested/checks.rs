//! The consistency checks VMRUN makes on a VMCB (APM 15.5.1
//! "Canonicalization and Consistency Checks"), applied by L0 to its private
//! copy of L1's vmcb12 before running L2 from it.
//!
//! A failure means L1's VMRUN "fails" the way silicon's does: L0 writes
//! VMEXIT_INVALID into vmcb12 and resumes L1, instead of entering L2.
//! Reserved bits are those of the CPU L1 is shown ([`L1Limits::from_cpuid`],
//! built from the CPUID L1 sees), so a bit CPUID offers L1 is never refused
//! and a bit it hides always is. Beyond the architectural list, L0 also
//! refuses TLB_CONTROL encodings needing FlushByAsid when it is not
//! offered (KVM's `nested_svm_check_tlb_ctl`). NP_ENABLE is ignored when
//! nested paging is not offered (KVM's `__nested_copy_vmcb_control_to_cache`;
//! a CPU without nested paging has no such bit): L2's CR3 stays an
//! L1-physical address under L0's nested page tables, as always.
//!
//! Checking is pure: it reads the VMCB copy and the limits, nothing else.

use super::l1_cpu::L1Cpuid;
use crate::cr::{CR0_CD, CR0_NW, CR0_PE, CR0_PG, CR4_PAE};
use crate::event::{EventInfo, IllegalEvent};
use crate::exec_ctl::NestedCtl;
use crate::intercept::InterceptMisc2;
use crate::msr::{EFER_LME, EFER_SVME};
use crate::msrpm::MSRPM_SIZE;
use crate::vmcb::{ControlArea, StateSaveArea, Vmcb, VmcbSegment};

/// Bits 63:32 of CR0, DR6 and DR7, all MBZ; also of CR3 outside long mode
/// (the legacy and PAE CR3 formats are 32 bits wide, APM 3.1.2).
const HIGH_HALF: u64 = 0xFFFF_FFFF_0000_0000;
/// Bits 11:0 of IOPM_BASE_PA / MSRPM_BASE_PA, which the CPU ignores
/// (APM Table B-1).
const PAGE_OFFSET_MASK: u64 = 0xFFF;
/// CR3 bits 63:52 are reserved in every long-mode CR3 format (APM 3.1.2,
/// "Long-Mode CR3"), so no MAXPHYADDR above 52 is meaningful.
const MAX_CR3_PHYS_BITS: u8 = 52;
/// Bytes of the MSRPM the CPU reads: all of it (APM 15.11).
pub const MSRPM_EXTENT: u64 = MSRPM_SIZE as u64;
/// Bytes of the IOPM the CPU reads: one bit per port, plus the bits of a
/// 4-byte access at port 0xFFFF, which spill into byte 0x2000 (APM
/// 15.10.1). The rest of its 12 KiB is never read.
pub const IOPM_EXTENT: u64 = 0x2001;

/// What the checks need to know about the CPU L1 is shown.
#[derive(Clone, Copy, Debug)]
pub struct L1Limits {
    /// MAXPHYADDR L1 sees (CPUID 0x8000_0008 EAX\[7:0\]); physical-address
    /// bits at or above it are reserved.
    pub max_phys_bits: u8,
    /// Whether nested paging is offered to L1 (false for now: vmcb12's
    /// NP_ENABLE and nCR3 are ignored). When it is, nCR3 is checked.
    pub npt_offered: bool,
    /// Whether FlushByAsid is offered to L1 (TLB_CONTROL 3 and 7).
    pub flush_by_asid: bool,
    /// CR4 bits L1 may set for L2 (others reserved).
    pub cr4_allowed: u64,
    /// EFER bits L1 may set for L2 (others reserved).
    pub efer_allowed: u64,
}

impl L1Limits {
    /// The limits of the CPU L1 sees: reserved CR4/EFER bits, MAXPHYADDR
    /// and FlushByAsid all from its CPUID; nested paging as L0 offers it.
    pub fn from_cpuid(cpuid: &L1Cpuid, npt_offered: bool) -> Self {
        Self {
            max_phys_bits: cpuid.max_phys_bits(),
            npt_offered,
            flush_by_asid: cpuid.flush_by_asid(),
            cr4_allowed: cpuid.cr4_allowed(),
            efer_allowed: cpuid.efer_allowed(),
        }
    }
}

/// Why vmcb12 is refused. Variants carrying a `u64` hold the offending
/// bits (not the whole register), except the two map variants, which hold
/// the page-aligned base address that was checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vmcb12Error {
    /// The VMRUN intercept (intercept_misc2 bit 0) is clear.
    VmrunNotIntercepted,
    /// guest_asid is 0, the host's ASID.
    AsidZero,
    /// EFER.SVME is clear.
    EferSvmeClear,
    /// EFER bits outside [`L1Limits::efer_allowed`] are set.
    EferReserved(u64),
    /// CR0.CD is clear and CR0.NW is set.
    Cr0CdClearNwSet,
    /// CR0 bits 63:32 are set.
    Cr0High(u64),
    /// CR3 MBZ bits are set (long mode: bits at or above MAXPHYADDR;
    /// otherwise bits 63:32).
    Cr3Reserved(u64),
    /// CR4 bits outside [`L1Limits::cr4_allowed`] are set.
    Cr4Reserved(u64),
    /// EFER.LME and CR0.PG are set but CR4.PAE is clear.
    LongModeWithoutPae,
    /// EFER.LME and CR0.PG are set but CR0.PE is clear.
    LongModeWithoutPe,
    /// EFER.LME, CR0.PG, CR4.PAE, CS.L and CS.D are all set.
    LongModeCsLongAndDefault,
    /// DR6 bits 63:32 are set.
    Dr6High(u64),
    /// DR7 bits 63:32 are set.
    Dr7High(u64),
    /// The 8 KiB MSR permission map at this (page-aligned) base reaches
    /// MAXPHYADDR.
    MsrpmBeyondMaxPhys(u64),
    /// The 12 KiB I/O permission map at this (page-aligned) base reaches
    /// MAXPHYADDR.
    IopmBeyondMaxPhys(u64),
    /// TLB_CONTROL holds a reserved encoding, or one needing FlushByAsid,
    /// which is not offered (APM 15.16.1).
    TlbControl(u8),
    /// Nested paging is offered, NP_ENABLE is set, and nCR3 has bits at or
    /// above MAXPHYADDR (KVM's `nested_vmcb_check_controls`).
    NestedCr3Reserved(u64),
    /// EVENTINJ holds an event VMRUN would refuse (APM 15.20).
    IllegalEventInj(IllegalEvent),
    /// L2 starts in legacy PAE paging without nested paging and a present
    /// PDPTE has a reserved bit ([`vmrun_loads_pdptes`]; found by L0,
    /// which reads L1 memory, after [`check_vmcb12`]).
    PdpteReserved,
}

/// APM 15.5.1: every check VMRUN makes, in the APM's order. Ok or the
/// first failure.
///
/// The order is the APM's list: EFER.SVME, CR0.CD/NW, CR0\[63:32\], CR3,
/// CR4, DR6, DR7, EFER MBZ, the three long-mode rules, the VMRUN
/// intercept, the permission maps, EVENTINJ, ASID; then TLB_CONTROL (KVM's
/// `nested_svm_check_tlb_ctl`) and nCR3 when nested paging is offered.
/// Only the first failure is reported, so the order matters only for
/// VMCBs that break several rules.
///
/// Every long-mode rule, CR3's format included, keys on the mode VMRUN is
/// about to enter, EFER.LME && CR0.PG (the APM's wording; KVM's
/// `nested_vmcb_valid_sregs`); vmcb12's EFER.LMA is not consulted.
///
/// "EFER.LMA or EFER.LME is non-zero and this processor does not support
/// long mode" is covered by [`L1Limits::efer_allowed`], which has LME/LMA
/// only when L1's CPUID shows long mode.
pub fn check_vmcb12(vmcb: &Vmcb, limits: &L1Limits) -> Result<(), Vmcb12Error> {
    check_l2(&vmcb.state, &vmcb.control, limits)
}

/// [`check_vmcb12`] on vmcb12 read into two places of hypervisor memory:
/// its state (loaded where L2 will run, `super::vmrun::read_vmcb12`) and
/// its controls (L0's copy). A vmcb12 that passes every rule, the usual
/// case, costs one straight-line test ([`passes_all`]); only a refusal
/// walks the rules in the APM's order to name the first one broken.
#[inline]
pub fn check_l2(s: &StateSaveArea, c: &ControlArea, limits: &L1Limits) -> Result<(), Vmcb12Error> {
    if passes_all(s, c, limits) {
        return Ok(());
    }
    first_failure(s, c, limits)
}

/// The rules one by one, in the APM's order (the refusal path).
#[cold]
#[inline(never)]
fn first_failure(s: &StateSaveArea, c: &ControlArea, limits: &L1Limits) -> Result<(), Vmcb12Error> {
    check_save(s, limits)?;
    check_controls(c, limits)
}

/// Every rule of [`check_vmcb12`] at once, without branches per rule:
/// `true` only if each one passes (never for a vmcb12 the ordered checks
/// refuse: tested). It may say `false` for some legal vmcb12s (the map
/// bases' exact edges, TLB_CONTROL 3/7, MAXPHYADDR above 52), which the
/// ordered checks then accept: slower, never wrong.
#[inline(always)]
pub fn passes_all(s: &StateSaveArea, c: &ControlArea, limits: &L1Limits) -> bool {
    let long_mode = s.efer & EFER_LME != 0 && s.cr0 & CR0_PG != 0;
    let phys = limits.max_phys_bits.min(MAX_CR3_PHYS_BITS);
    let above_phys = u64::MAX << phys;
    let cr3_mbz = if long_mode { above_phys } else { HIGH_HALF };
    let mbz = (s.cr0 & HIGH_HALF)
        | (s.cr3 & cr3_mbz)
        | (s.cr4 & !limits.cr4_allowed)
        | ((s.dr6 | s.dr7) & HIGH_HALF)
        | (s.efer & !limits.efer_allowed);
    let l_and_d = VmcbSegment::ATTR_L | VmcbSegment::ATTR_DB;
    let long_ok = !long_mode
        || (s.cr4 & CR4_PAE != 0 && s.cr0 & CR0_PE != 0 && s.cs.attrib & l_and_d != l_and_d);
    // Both maps (MSRPM 8 KiB, IOPM 0x2001 bytes) end below 2^phys if the
    // higher base, offset bits and all, is below 2^phys - 12 KiB.
    let maps_ok = (c.msrpm_base_pa | c.iopm_base_pa) < (1u64 << phys).saturating_sub(0x3000);
    let np = NestedCtl::NP_ENABLE.bits();
    let ncr3_ok = c.nested_ctl & np == 0 || !limits.npt_offered || c.ncr3 & above_phys == 0;
    (s.efer & EFER_SVME != 0)
        & (s.cr0 & CR0_CD != 0 || s.cr0 & CR0_NW == 0)
        & (mbz == 0)
        & long_ok
        & (c.intercept_misc2 & InterceptMisc2::VMRUN.bits() != 0)
        & maps_ok
        & (c.guest_asid != 0)
        & (c.tlb_control <= 1)
        & ncr3_ok
        // Last, so the rest is not kept across the call.
        && (c.event_inj & EventInfo::VALID == 0 || EventInfo(c.event_inj).is_legal())
}

/// Whether vmcb12 enters long mode: EFER.LME and CR0.PG (LMA follows).
pub fn enters_long_mode(s: &StateSaveArea) -> bool {
    s.efer & EFER_LME != 0 && s.cr0 & CR0_PG != 0
}

/// Whether VMRUN loads vmcb12's four PAE PDPTEs from L1 memory and fails
/// (VMEXIT_INVALID) when a present one has a reserved bit
/// ([`crate::walk::pdptes_valid`]): L2 starts with PAE paging outside long
/// mode (CR0.PG, CR4.PAE, EFER.LME clear) and without nested paging for L2.
/// With nested paging the PDPTEs are read at each walk instead, and a
/// reserved bit is L2's #PF (KVM `nested_svm_load_cr3`, kvm-unit-tests
/// `svm_pae_test`).
pub fn vmrun_loads_pdptes(s: &StateSaveArea, c: &ControlArea, limits: &L1Limits) -> bool {
    let npt = limits.npt_offered && c.nested_ctl & NestedCtl::NP_ENABLE.bits() != 0;
    s.cr0 & CR0_PG != 0 && s.cr4 & CR4_PAE != 0 && s.efer & EFER_LME == 0 && !npt
}

/// The guest-state half of the list.
fn check_save(s: &StateSaveArea, limits: &L1Limits) -> Result<(), Vmcb12Error> {
    if s.efer & EFER_SVME == 0 {
        return Err(Vmcb12Error::EferSvmeClear);
    }
    if s.cr0 & CR0_CD == 0 && s.cr0 & CR0_NW != 0 {
        return Err(Vmcb12Error::Cr0CdClearNwSet);
    }
    mbz(s.cr0 & HIGH_HALF, Vmcb12Error::Cr0High)?;

    let long_mode = enters_long_mode(s);
    // CR3 (APM 3.1.2): the long-mode format has MBZ bits from MAXPHYADDR
    // up; the legacy and PAE formats are 32-bit registers, so bits 63:32
    // are MBZ there. Low reserved bits (2:0, 11:5) are ignored, not MBZ.
    let cr3_mbz = match long_mode {
        true => u64::MAX << limits.max_phys_bits.min(MAX_CR3_PHYS_BITS),
        false => HIGH_HALF,
    };
    mbz(s.cr3 & cr3_mbz, Vmcb12Error::Cr3Reserved)?;
    mbz(s.cr4 & !limits.cr4_allowed, Vmcb12Error::Cr4Reserved)?;
    mbz(s.dr6 & HIGH_HALF, Vmcb12Error::Dr6High)?;
    mbz(s.dr7 & HIGH_HALF, Vmcb12Error::Dr7High)?;
    mbz(s.efer & !limits.efer_allowed, Vmcb12Error::EferReserved)?;

    if long_mode {
        if s.cr4 & CR4_PAE == 0 {
            return Err(Vmcb12Error::LongModeWithoutPae);
        }
        if s.cr0 & CR0_PE == 0 {
            return Err(Vmcb12Error::LongModeWithoutPe);
        }
        // CS attributes in the VMCB's packed form: L is bit 9, D/B bit 10
        // (descriptor bits 53 and 54, see VmcbSegment::attrib_from_descriptor).
        let cs = s.cs.attrib;
        if cs & VmcbSegment::ATTR_L != 0 && cs & VmcbSegment::ATTR_DB != 0 {
            return Err(Vmcb12Error::LongModeCsLongAndDefault);
        }
    }
    Ok(())
}

/// The control-area half of the list.
fn check_controls(c: &ControlArea, limits: &L1Limits) -> Result<(), Vmcb12Error> {
    if c.intercept_misc2 & InterceptMisc2::VMRUN.bits() == 0 {
        return Err(Vmcb12Error::VmrunNotIntercepted);
    }
    // APM 15.5.1: "The MSR or IOIO intercept tables extend to a physical
    // address that is greater than or equal to the maximum supported
    // physical address". A table "extends to" the address just past the
    // bytes the CPU reads from it: the 8 KiB MSRPM, and the IOPM's first
    // 8 KiB plus the byte holding the bits of a 2- or 4-byte access at
    // port 0xFFFF (APM 15.10.1). So a map whose end reaches 2^MAXPHYADDR
    // is refused (QEMU's SVM_MSRPM_SIZE/SVM_IOPM_SIZE; kvm-unit-tests
    // test_msrpm_iopm_bitmap_addrs: MSRPM at 2^M - 8K fails, IOPM at
    // 2^M - 12K runs). Nothing requires the maps to be in RAM: L0 reads
    // bytes outside L1's RAM as all-ones (super::map_view). The CPU
    // ignores bits 11:0 of both bases (Table B-1), so they are checked
    // page-aligned. Checked whether or not MSR_PROT / IOIO_PROT is set,
    // as hardware does.
    let msrpm = c.msrpm_base_pa & !PAGE_OFFSET_MASK;
    if !ends_below_max_phys(msrpm, MSRPM_EXTENT, limits.max_phys_bits) {
        return Err(Vmcb12Error::MsrpmBeyondMaxPhys(msrpm));
    }
    let iopm = c.iopm_base_pa & !PAGE_OFFSET_MASK;
    if !ends_below_max_phys(iopm, IOPM_EXTENT, limits.max_phys_bits) {
        return Err(Vmcb12Error::IopmBeyondMaxPhys(iopm));
    }
    EventInfo(c.event_inj)
        .check()
        .map_err(Vmcb12Error::IllegalEventInj)?;
    if c.guest_asid == 0 {
        return Err(Vmcb12Error::AsidZero);
    }
    // APM 15.16.1: 0 (nothing) and 1 (everything) always; 3 and 7 need
    // FlushByAsid; every other encoding is reserved.
    let tlb_ok = match c.tlb_control {
        0 | 1 => true,
        3 | 7 => limits.flush_by_asid,
        _ => false,
    };
    if !tlb_ok {
        return Err(Vmcb12Error::TlbControl(c.tlb_control));
    }
    // NP_ENABLE means nothing unless nested paging is offered.
    if c.nested_ctl & NestedCtl::NP_ENABLE.bits() != 0 && limits.npt_offered {
        let reserved = u64::MAX << limits.max_phys_bits.min(MAX_CR3_PHYS_BITS);
        mbz(c.ncr3 & reserved, Vmcb12Error::NestedCr3Reserved)?;
    }
    Ok(())
}

/// `Err(make(bits))` if any of the must-be-zero `bits` is set.
fn mbz(bits: u64, make: fn(u64) -> Vmcb12Error) -> Result<(), Vmcb12Error> {
    if bits == 0 {
        Ok(())
    } else {
        Err(make(bits))
    }
}

/// Whether `[base, base + len)` ends below 2^`max_phys_bits`: its
/// exclusive end `base + len` is less than the limit, without overflowing.
pub fn ends_below_max_phys(base: u64, len: u64, max_phys_bits: u8) -> bool {
    let Some(end) = base.checked_add(len) else {
        return false;
    };
    match 1u64.checked_shl(u32::from(max_phys_bits)) {
        Some(limit) => end < limit,
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventType;
    use crate::msr::{EFER_LMA, EFER_NXE, EFER_SCE};
    use crate::nested::l1_cpu::{CR4_FSGSBASE, CR4_OSXSAVE, CR4_SMEP};

    const MEM: u64 = 16 << 20;
    const MSRPM_AT: u64 = 0x10_0000;
    const IOPM_AT: u64 = 0x20_0000;
    const TOP: u64 = 1 << 40;

    /// A CPU showing L1 long mode, NX, SVM, FSGSBASE and XSAVE, 40
    /// physical bits; no SMEP, PCID, LA57, FFXSR, FlushByAsid.
    fn cpu() -> L1Cpuid {
        L1Cpuid {
            leaf1: [0, 0, 1 << 26, 0],
            leaf7: [0, 1, 0, 0],
            ext1: [0, 0, 1 << 2, (1 << 29) | (1 << 20)],
            ext8: Some([40, 0, 0, 0]),
            ext_a: [1, 16, 0, 1 << 3],
        }
    }

    fn limits() -> L1Limits {
        L1Limits::from_cpuid(&cpu(), false)
    }

    #[test]
    fn limits_follow_cpuid() {
        let l = limits();
        assert_eq!(l.cr4_allowed, 0x7FF | CR4_FSGSBASE | CR4_OSXSAVE);
        assert_eq!(
            l.efer_allowed,
            EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE | EFER_SVME
        );
        assert_eq!(l.max_phys_bits, 40);
        assert!(!l.flush_by_asid && !l.npt_offered);
    }

    /// The defect this replaced: CR4 bits CPUID shows L1 (SMEP here) were
    /// refused, and bits it hides (OSXSAVE without XSAVE) accepted.
    #[test]
    fn cr4_follows_what_cpuid_shows() {
        let mut v = baseline();
        v.state.cr4 |= CR4_SMEP;
        assert_eq!(
            check_vmcb12(&v, &limits()),
            Err(Vmcb12Error::Cr4Reserved(CR4_SMEP))
        );
        let mut c = cpu();
        c.leaf7[1] |= 1 << 7;
        assert_eq!(check_vmcb12(&v, &L1Limits::from_cpuid(&c, false)), Ok(()));
        let mut v = baseline();
        v.state.cr4 |= CR4_OSXSAVE;
        assert_eq!(check_vmcb12(&v, &limits()), Ok(()));
        let mut c = cpu();
        c.leaf1[2] = 0;
        assert_eq!(
            check_vmcb12(&v, &L1Limits::from_cpuid(&c, false)),
            Err(Vmcb12Error::Cr4Reserved(CR4_OSXSAVE))
        );
    }

    #[test]
    fn efer_follows_what_cpuid_shows() {
        let mut c = cpu();
        c.ext1[3] &= !(1 << 20); // no NX
        let mut v = baseline();
        v.state.efer |= EFER_NXE;
        assert_eq!(check_vmcb12(&v, &limits()), Ok(()));
        assert_eq!(
            check_vmcb12(&v, &L1Limits::from_cpuid(&c, false)),
            Err(Vmcb12Error::EferReserved(EFER_NXE))
        );
        // No long mode: LME and LMA are reserved.
        let mut c = cpu();
        c.ext1[3] = 0;
        assert_eq!(
            check_vmcb12(&baseline(), &L1Limits::from_cpuid(&c, false)),
            Err(Vmcb12Error::EferReserved(EFER_LME | EFER_LMA))
        );
    }

    /// A 64-bit code segment descriptor: base 0, limit 0xFFFFF, G, L,
    /// P, DPL 0, S, type execute/read accessed.
    const LONG_CODE_DESCRIPTOR: u64 = 0x00AF_9B00_0000_FFFF;

    /// A 64-bit guest that VMRUN accepts.
    fn baseline() -> Vmcb {
        let mut v = Vmcb::new();
        v.control.intercept_misc2 = InterceptMisc2::VMRUN.bits();
        v.control.guest_asid = 1;
        v.control.msrpm_base_pa = MSRPM_AT;
        v.control.iopm_base_pa = IOPM_AT;
        let s = &mut v.state;
        s.cr0 = CR0_PE | (1 << 4) | (1 << 5) | CR0_PG; // PE ET NE PG
        s.cr3 = 0x1000;
        s.cr4 = CR4_PAE;
        s.efer = EFER_LME | EFER_LMA | EFER_SVME;
        s.cs = VmcbSegment::new(
            0x08,
            VmcbSegment::attrib_from_descriptor(LONG_CODE_DESCRIPTOR),
            0xFFFF_FFFF,
            0,
        );
        s.dr6 = 0xFFFF_0FF0;
        s.dr7 = 0x400;
        s.rflags = 2;
        v
    }

    #[test]
    fn baseline_passes() {
        let v = baseline();
        // The CS attribute really is "L set, D clear" in packed form.
        assert_eq!(v.state.cs.attrib, 0xA9B);
        assert_ne!(v.state.cs.attrib & VmcbSegment::ATTR_L, 0);
        assert_eq!(v.state.cs.attrib & VmcbSegment::ATTR_DB, 0);
        assert_eq!(check_vmcb12(&v, &limits()), Ok(()));
    }

    type Mutation = fn(&mut Vmcb);

    #[test]
    fn each_rule_fails_on_its_own() {
        use Vmcb12Error as E;
        let cases: &[(&str, Mutation, Vmcb12Error)] = &[
            (
                "no VMRUN intercept",
                |v| v.control.intercept_misc2 = 0,
                E::VmrunNotIntercepted,
            ),
            (
                "other misc2 bits but not VMRUN",
                |v| v.control.intercept_misc2 = !InterceptMisc2::VMRUN.bits(),
                E::VmrunNotIntercepted,
            ),
            ("ASID 0", |v| v.control.guest_asid = 0, E::AsidZero),
            (
                "SVME clear",
                |v| v.state.efer &= !EFER_SVME,
                E::EferSvmeClear,
            ),
            (
                "EFER.FFXSR",
                |v| v.state.efer |= 1 << 14,
                E::EferReserved(1 << 14),
            ),
            (
                "EFER bit 63",
                |v| v.state.efer |= 1 << 63,
                E::EferReserved(1 << 63),
            ),
            (
                "CR0.NW without CD",
                |v| v.state.cr0 |= CR0_NW,
                E::Cr0CdClearNwSet,
            ),
            (
                "CR0 bit 32",
                |v| v.state.cr0 |= 1 << 32,
                E::Cr0High(1 << 32),
            ),
            (
                "CR0 bit 63",
                |v| v.state.cr0 |= 1 << 63,
                E::Cr0High(1 << 63),
            ),
            (
                "CR3 at MAXPHYADDR",
                |v| v.state.cr3 |= 1 << 40,
                E::Cr3Reserved(1 << 40),
            ),
            (
                "CR3 bit 52",
                |v| v.state.cr3 |= 1 << 52,
                E::Cr3Reserved(1 << 52),
            ),
            (
                "CR3 bit 63",
                |v| v.state.cr3 |= 1 << 63,
                E::Cr3Reserved(1 << 63),
            ),
            (
                "CR4.LA57",
                |v| v.state.cr4 |= 1 << 12,
                E::Cr4Reserved(1 << 12),
            ),
            (
                "CR4.PCIDE",
                |v| v.state.cr4 |= 1 << 17,
                E::Cr4Reserved(1 << 17),
            ),
            (
                "CR4 bit 32",
                |v| v.state.cr4 |= 1 << 32,
                E::Cr4Reserved(1 << 32),
            ),
            (
                "long mode, PAE clear",
                |v| v.state.cr4 &= !CR4_PAE,
                E::LongModeWithoutPae,
            ),
            (
                "long mode, PE clear",
                |v| v.state.cr0 &= !CR0_PE,
                E::LongModeWithoutPe,
            ),
            (
                "CS.L and CS.D",
                |v| v.state.cs.attrib |= VmcbSegment::ATTR_DB,
                E::LongModeCsLongAndDefault,
            ),
            (
                "DR6 bit 32",
                |v| v.state.dr6 |= 1 << 32,
                E::Dr6High(1 << 32),
            ),
            (
                "DR7 bit 63",
                |v| v.state.dr7 |= 1 << 63,
                E::Dr7High(1 << 63),
            ),
            (
                "MSRPM's last page at MAXPHYADDR",
                |v| v.control.msrpm_base_pa = TOP - 0x1000,
                E::MsrpmBeyondMaxPhys(TOP - 0x1000),
            ),
            (
                "MSRPM at 2^64 - 4K",
                |v| v.control.msrpm_base_pa = u64::MAX,
                E::MsrpmBeyondMaxPhys(!0xFFF),
            ),
            (
                "IOPM's last page at MAXPHYADDR",
                |v| v.control.iopm_base_pa = TOP - 0x2000,
                E::IopmBeyondMaxPhys(TOP - 0x2000),
            ),
            (
                "IOPM at MAXPHYADDR",
                |v| v.control.iopm_base_pa = TOP,
                E::IopmBeyondMaxPhys(TOP),
            ),
            (
                "CR3 bit 32 outside long mode",
                |v| {
                    v.state.cr0 &= !CR0_PG;
                    v.state.cr3 |= 1 << 32;
                },
                E::Cr3Reserved(1 << 32),
            ),
            (
                "CR4.SMEP not shown",
                |v| v.state.cr4 |= CR4_SMEP,
                E::Cr4Reserved(CR4_SMEP),
            ),
            (
                "TLB_CONTROL 2",
                |v| v.control.tlb_control = 2,
                E::TlbControl(2),
            ),
            (
                "TLB_CONTROL 3 without FlushByAsid",
                |v| v.control.tlb_control = 3,
                E::TlbControl(3),
            ),
            (
                "TLB_CONTROL 7 without FlushByAsid",
                |v| v.control.tlb_control = 7,
                E::TlbControl(7),
            ),
            (
                "TLB_CONTROL 0xFF",
                |v| v.control.tlb_control = 0xFF,
                E::TlbControl(0xFF),
            ),
            (
                "inject exception vector 2",
                |v| v.control.event_inj = EventInfo::exception(2).0,
                E::IllegalEventInj(IllegalEvent::NotAnException(2)),
            ),
            (
                "inject exception vector 32",
                |v| v.control.event_inj = EventInfo::exception(32).0,
                E::IllegalEventInj(IllegalEvent::NotAnException(32)),
            ),
            (
                "inject reserved type 5",
                |v| v.control.event_inj = EventInfo::VALID | (5 << 8) | 0x20,
                E::IllegalEventInj(IllegalEvent::ReservedType(5)),
            ),
        ];
        for (name, mutate, expected) in cases {
            let mut v = baseline();
            mutate(&mut v);
            assert_eq!(check_vmcb12(&v, &limits()), Err(*expected), "{name}");
        }
    }

    #[test]
    fn legal_variations_pass() {
        let cases: &[(&str, Mutation)] = &[
            ("CR0.CD and NW both set", |v| v.state.cr0 |= CR0_CD | CR0_NW),
            ("CR0.CD alone", |v| v.state.cr0 |= CR0_CD),
            ("CR3 just below MAXPHYADDR", |v| v.state.cr3 |= 1 << 39),
            ("every CR4 bit CPUID shows", |v| {
                v.state.cr4 = 0x7FF | CR4_FSGSBASE | CR4_OSXSAVE
            }),
            ("every EFER bit CPUID shows", |v| {
                v.state.efer = EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE | EFER_SVME
            }),
            ("TLB_CONTROL 1", |v| v.control.tlb_control = 1),
            ("maps outside RAM, below MAXPHYADDR", |v| {
                v.control.msrpm_base_pa = MEM;
                v.control.iopm_base_pa = MEM - 0x1000;
            }),
            ("maps ending just below MAXPHYADDR", |v| {
                v.control.msrpm_base_pa = TOP - 0x3000;
                v.control.iopm_base_pa = TOP - 0x3000;
            }),
            ("DR6/DR7 low halves", |v| {
                v.state.dr6 = 0xFFFF_FFFF;
                v.state.dr7 = 0xFFFF_FFFF;
            }),
            ("every intercept", |v| {
                v.control.intercept_misc1 = u32::MAX;
                v.control.intercept_misc2 = u32::MAX;
                v.control.intercept_exceptions = u32::MAX;
            }),
            ("other nested_ctl bits", |v| v.control.nested_ctl = !1),
            // Not offered: ignored, whatever nCR3 holds.
            ("NP_ENABLE without nested paging", |v| {
                v.control.nested_ctl = NestedCtl::NP_ENABLE.bits();
                v.control.ncr3 = u64::MAX;
            }),
            ("legal injected #PF", |v| {
                v.control.event_inj = EventInfo::exception_with_error_code(14, 2).0;
            }),
            ("invalid event with reserved type", |v| {
                v.control.event_inj = 5 << 8;
            }),
            ("injected NMI", |v| v.control.event_inj = EventInfo::nmi().0),
            ("injected interrupt", |v| {
                v.control.event_inj = EventInfo::new(0x20, EventType::ExternalInterrupt).0;
            }),
            ("maps at 0", |v| {
                v.control.msrpm_base_pa = 0;
                v.control.iopm_base_pa = 0;
            }),
            // Compatibility-mode code segment (L clear, D set).
            ("CS.D alone", |v| v.state.cs.attrib = 0xC9B),
        ];
        for (name, mutate) in cases {
            let mut v = baseline();
            mutate(&mut v);
            assert_eq!(check_vmcb12(&v, &limits()), Ok(()), "{name}");
        }
    }

    #[test]
    fn legacy_mode_skips_the_long_mode_rules() {
        // 32-bit protected mode with paging, no PAE: LME clear.
        let mut v = baseline();
        v.state.efer = EFER_SVME;
        v.state.cr4 = 0;
        v.state.cs.attrib |= VmcbSegment::ATTR_DB; // L|D is meaningless here
        v.state.cr3 = 0xFFFF_F000;
        assert_eq!(check_vmcb12(&v, &limits()), Ok(()));
        // LME set but paging off (about to enable long mode): no PAE yet,
        // and CR3 has the 32-bit legacy format.
        let mut v = baseline();
        v.state.cr0 = CR0_PE;
        v.state.cr4 = 0;
        v.state.efer = EFER_LME | EFER_SVME;
        v.state.cr3 = 0xFFFF_F000;
        assert_eq!(check_vmcb12(&v, &limits()), Ok(()));
        v.state.cr3 = 1 << 35;
        assert_eq!(
            check_vmcb12(&v, &limits()),
            Err(Vmcb12Error::Cr3Reserved(1 << 35))
        );
        // Real mode.
        let mut v = baseline();
        v.state.cr0 = 1 << 4;
        v.state.cr4 = 0;
        v.state.efer = EFER_SVME;
        v.state.cs = VmcbSegment::new(0xF000, 0x9B, 0xFFFF, 0xF_0000);
        assert_eq!(check_vmcb12(&v, &limits()), Ok(()));
    }

    #[test]
    fn pdptes_load_for_legacy_pae_without_nested_paging() {
        let mut v = baseline();
        assert!(
            !vmrun_loads_pdptes(&v.state, &v.control, &limits()),
            "long mode"
        );
        v.state.efer = EFER_SVME;
        v.state.cs.attrib = 0xC9B;
        assert!(
            vmrun_loads_pdptes(&v.state, &v.control, &limits()),
            "legacy PAE paging"
        );
        let mut npt = limits();
        npt.npt_offered = true;
        assert!(
            vmrun_loads_pdptes(&v.state, &v.control, &npt),
            "NP_ENABLE clear"
        );
        v.control.nested_ctl = NestedCtl::NP_ENABLE.bits();
        assert!(
            !vmrun_loads_pdptes(&v.state, &v.control, &npt),
            "nested paging"
        );
        assert!(
            vmrun_loads_pdptes(&v.state, &v.control, &limits()),
            "NP_ENABLE not offered"
        );
        v.state.cr4 = 0;
        assert!(
            !vmrun_loads_pdptes(&v.state, &v.control, &limits()),
            "32-bit paging"
        );
        v.state.cr4 = CR4_PAE;
        v.state.cr0 &= !CR0_PG;
        assert!(
            !vmrun_loads_pdptes(&v.state, &v.control, &limits()),
            "paging off"
        );
    }

    #[test]
    fn cr3_limit_follows_max_phys_bits() {
        let mut v = baseline();
        v.state.cr3 = (1 << 47) | 0x1000;
        let mut l = limits();
        l.max_phys_bits = 48;
        assert_eq!(check_vmcb12(&v, &l), Ok(()));
        l.max_phys_bits = 47;
        assert_eq!(check_vmcb12(&v, &l), Err(Vmcb12Error::Cr3Reserved(1 << 47)));
        // A MAXPHYADDR above 52 does not unreserve bits 63:52 (nor overflow).
        v.state.cr3 = (1 << 55) | (1 << 51);
        l.max_phys_bits = 64;
        assert_eq!(check_vmcb12(&v, &l), Err(Vmcb12Error::Cr3Reserved(1 << 55)));
        l.max_phys_bits = u8::MAX;
        assert_eq!(check_vmcb12(&v, &l), Err(Vmcb12Error::Cr3Reserved(1 << 55)));
    }

    /// Every long-mode rule keys on EFER.LME && CR0.PG, never on
    /// vmcb12's EFER.LMA.
    #[test]
    fn long_mode_keys_on_lme_and_pg() {
        // LME and PG without LMA: long mode (VMRUN sets LMA), so the
        // long-mode rules and CR3 format apply.
        let mut v = baseline();
        v.state.efer = EFER_LME | EFER_SVME;
        assert_eq!(check_vmcb12(&v, &limits()), Ok(()));
        v.state.cr3 = 1 << 39 | 1 << 33;
        assert_eq!(check_vmcb12(&v, &limits()), Ok(()));
        v.state.cr4 = 0;
        assert_eq!(
            check_vmcb12(&v, &limits()),
            Err(Vmcb12Error::LongModeWithoutPae)
        );
        // LMA without LME: not long mode; PAE and PE may be clear, CS.L
        // and CS.D may both be set, and CR3 has the 32-bit format.
        let mut v = baseline();
        v.state.efer = EFER_LMA | EFER_SVME;
        v.state.cr4 = 0;
        v.state.cs.attrib |= VmcbSegment::ATTR_DB;
        assert_eq!(check_vmcb12(&v, &limits()), Ok(()));
        v.state.cr3 = 1 << 33;
        assert_eq!(
            check_vmcb12(&v, &limits()),
            Err(Vmcb12Error::Cr3Reserved(1 << 33))
        );
        assert!(!enters_long_mode(&v.state));
        assert!(enters_long_mode(&baseline().state));
    }

    #[test]
    fn maps_must_end_below_max_phys() {
        let mut l = limits();
        // kvm-unit-tests test_msrpm_iopm_bitmap_addrs, with MAXPHYADDR 40:
        // (MSRPM base, IOPM base, whether VMRUN runs L2).
        let (ok_m, ok_i) = (MSRPM_AT, IOPM_AT);
        let cases = [
            (TOP - 0x2000, ok_i, false),
            (TOP - 0x2000 + 1, ok_i, false),
            (TOP - 0x1000, ok_i, false),
            (TOP - 0x3000, ok_i, true),
            (ok_m | 0xFFF, ok_i, true),
            (ok_m, TOP - 0x4000, true),
            (ok_m, TOP - 0x3000, true),
            (ok_m, TOP - 0x2000 - 2, true),
            (ok_m, TOP - 0x2000, false),
            (ok_m, TOP - 0x1000, false),
        ];
        for (msrpm, iopm, runs) in cases {
            let mut v = baseline();
            v.control.msrpm_base_pa = msrpm;
            v.control.iopm_base_pa = iopm;
            let got = check_vmcb12(&v, &l);
            assert_eq!(
                got.is_ok(),
                runs,
                "MSRPM {msrpm:#x} IOPM {iopm:#x}: {got:?}"
            );
        }
        // An exact fit one byte short of 2^40 passes; with a narrower
        // MAXPHYADDR the same maps reach it.
        let mut v = baseline();
        v.control.msrpm_base_pa = TOP - 0x3000;
        v.control.iopm_base_pa = TOP - 0x3000;
        assert_eq!(check_vmcb12(&v, &l), Ok(()));
        l.max_phys_bits = 39;
        assert_eq!(
            check_vmcb12(&v, &l),
            Err(Vmcb12Error::MsrpmBeyondMaxPhys(TOP - 0x3000))
        );
        v.control.msrpm_base_pa = 0;
        assert_eq!(
            check_vmcb12(&v, &l),
            Err(Vmcb12Error::IopmBeyondMaxPhys(TOP - 0x3000))
        );
        // A MAXPHYADDR of 64 or more lets every non-wrapping map through.
        l.max_phys_bits = 64;
        v.control.iopm_base_pa = u64::MAX - 0x1FFF;
        assert_eq!(
            check_vmcb12(&v, &l),
            Err(Vmcb12Error::IopmBeyondMaxPhys(!0x1FFF))
        );
        v.control.iopm_base_pa = u64::MAX - 0x2FFF;
        assert_eq!(check_vmcb12(&v, &l), Ok(()));
        v.control.iopm_base_pa = u64::MAX;
        assert_eq!(
            check_vmcb12(&v, &l),
            Err(Vmcb12Error::IopmBeyondMaxPhys(!0xFFF))
        );
    }

    #[test]
    fn map_extent_edges() {
        // The exclusive end is what must stay below the limit.
        assert!(ends_below_max_phys(0xF000, 0xFFF, 16));
        assert!(!ends_below_max_phys(0xF000, 0x1000, 16));
        assert!(!ends_below_max_phys(u64::MAX, 1, 64));
        assert!(ends_below_max_phys(u64::MAX - 1, 1, 64));
        assert_eq!((MSRPM_EXTENT, IOPM_EXTENT), (0x2000, 0x2001));
    }

    #[test]
    fn map_bases_are_page_aligned_first() {
        let l = limits();
        let mut v = baseline();
        // Bits 11:0 are ignored: a base ending in 0xFFF is the page below.
        v.control.msrpm_base_pa = (TOP - 0x3000) | 0xFFF;
        v.control.iopm_base_pa = (TOP - 0x3000) | 0xFFF;
        assert_eq!(check_vmcb12(&v, &l), Ok(()));
        // And errors report the aligned base.
        v.control.iopm_base_pa = (TOP - 0x2000) | 0x123;
        assert_eq!(
            check_vmcb12(&v, &l),
            Err(Vmcb12Error::IopmBeyondMaxPhys(TOP - 0x2000))
        );
        v.control.iopm_base_pa = IOPM_AT;
        v.control.msrpm_base_pa = (TOP - 0x1000) | 0x800;
        assert_eq!(
            check_vmcb12(&v, &l),
            Err(Vmcb12Error::MsrpmBeyondMaxPhys(TOP - 0x1000))
        );
    }

    #[test]
    fn tlb_control_with_flush_by_asid() {
        let mut c = cpu();
        c.ext_a[3] |= 1 << 6;
        let l = L1Limits::from_cpuid(&c, false);
        assert!(l.flush_by_asid);
        for (tlb, ok) in [
            (0, true),
            (1, true),
            (2, false),
            (3, true),
            (4, false),
            (7, true),
            (8, false),
        ] {
            let mut v = baseline();
            v.control.tlb_control = tlb;
            let expected = if ok {
                Ok(())
            } else {
                Err(Vmcb12Error::TlbControl(tlb))
            };
            assert_eq!(check_vmcb12(&v, &l), expected, "TLB_CONTROL {tlb}");
        }
    }

    #[test]
    fn npt_allowed_when_offered() {
        let mut v = baseline();
        v.control.nested_ctl = NestedCtl::NP_ENABLE.bits();
        v.control.ncr3 = TOP - 0x1000;
        let mut l = limits();
        l.npt_offered = true;
        assert_eq!(check_vmcb12(&v, &l), Ok(()));
        v.control.ncr3 = TOP | 0x1000;
        assert_eq!(
            check_vmcb12(&v, &l),
            Err(Vmcb12Error::NestedCr3Reserved(TOP))
        );
        // Without NP_ENABLE nCR3 means nothing.
        v.control.nested_ctl = 0;
        assert_eq!(check_vmcb12(&v, &l), Ok(()));
    }

    #[test]
    fn first_failure_in_apm_order() {
        // SVME clear beats everything else.
        let mut v = baseline();
        v.state.efer = 0;
        v.control.intercept_misc2 = 0;
        v.control.guest_asid = 0;
        assert_eq!(check_vmcb12(&v, &limits()), Err(Vmcb12Error::EferSvmeClear));
        // Save-area rules come before the VMRUN intercept, which comes
        // before the maps, EVENTINJ and the ASID.
        let mut v = baseline();
        v.state.dr7 = 1 << 40;
        v.control.intercept_misc2 = 0;
        assert_eq!(
            check_vmcb12(&v, &limits()),
            Err(Vmcb12Error::Dr7High(1 << 40))
        );
        let mut v = baseline();
        v.control.intercept_misc2 = 0;
        v.control.guest_asid = 0;
        v.control.msrpm_base_pa = TOP;
        assert_eq!(
            check_vmcb12(&v, &limits()),
            Err(Vmcb12Error::VmrunNotIntercepted)
        );
        let mut v = baseline();
        v.control.guest_asid = 0;
        v.control.event_inj = EventInfo::exception(2).0;
        assert_eq!(
            check_vmcb12(&v, &limits()),
            Err(Vmcb12Error::IllegalEventInj(IllegalEvent::NotAnException(
                2
            )))
        );
    }

    /// The VMRUN checks of QEMU TCG 7.2 (`helper_vmrun` and
    /// `is_efer_invalid_state`, target/i386/tcg/sysemu/svm_helper.c), the
    /// CPU L0 runs on here, applied to what L0 hands it for vmcb12 `v`:
    /// L1's save area with EFER.LMA = LME && PG, L0's own maps, ASID,
    /// intercepts and TLB_CONTROL (never refused). QEMU checks CR3 against
    /// its MAXPHYADDR whenever the host is in long mode (L0 always is).
    /// See docs/qemu-tcg.md, "VMRUN's checks".
    fn qemu_refuses(v: &Vmcb, phys_bits: u8, cr4_reserved: u64) -> bool {
        const FFXSR: u64 = 1 << 14;
        let s = &v.state;
        let efer = match enters_long_mode(&v.state) {
            true => s.efer | EFER_LMA,
            false => s.efer & !EFER_LMA,
        };
        let efer_known = EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE | EFER_SVME | FFXSR;
        let lme_pg = efer & EFER_LME != 0 && s.cr0 & CR0_PG != 0;
        let cs_l_d =
            s.cs.attrib & VmcbSegment::ATTR_L != 0 && s.cs.attrib & VmcbSegment::ATTR_DB != 0;
        let event = EventInfo(v.control.event_inj);
        let bad_event = event.is_valid()
            && match event.raw_type() {
                0 | 2 | 4 => false,
                3 => event.vector() == 2 || event.vector() >= 31,
                _ => true,
            };
        s.cr0 & HIGH_HALF != 0
            || (s.cr0 & CR0_NW != 0 && s.cr0 & CR0_CD == 0)
            || s.cr3 & (u64::MAX << phys_bits) != 0
            || s.cr4 & cr4_reserved != 0
            || s.dr6 & HIGH_HALF != 0
            || s.dr7 & HIGH_HALF != 0
            || efer & EFER_SVME == 0
            || efer & !efer_known != 0
            || (lme_pg && s.cr4 & CR4_PAE == 0)
            || (lme_pg && s.cr0 & CR0_PE == 0)
            || (lme_pg && s.cr4 & CR4_PAE != 0 && cs_l_d)
            || bad_event
    }

    /// The CPU of this machine as L1 sees it: `-cpu qemu64,+svm,+smep`
    /// (no XSAVE, PCID, FSGSBASE, FFXSR), 40 physical bits.
    fn qemu64_cpu() -> L1Cpuid {
        L1Cpuid {
            leaf1: [0, 0, 0, 0],
            leaf7: [0, 1 << 7, 0, 0],
            ext1: [0, 0, 1 << 2, (1 << 29) | (1 << 20)],
            ext8: Some([40, 0, 0, 0]),
            ext_a: [1, 16, 0, 1 << 3],
        }
    }

    /// QEMU 7.2's reserved CR4 bits for that CPU (`cr4_reserved_bits`):
    /// all but bits 0-10, PCIDE (never gated on CPUID) and SMEP.
    const QEMU64_CR4_RESERVED: u64 = !(0x7FF | (1 << 17) | CR4_SMEP);

    /// The vmcb12 a hostile L1 builds: the baseline with 1-4 corruptions
    /// of the fields the CPU checks.
    fn corrupted() -> impl Strategy<Value = Vmcb> {
        let edit = (0u8..12, any::<u64>());
        proptest::collection::vec(edit, 1..=4).prop_map(|edits| {
            let mut v = baseline();
            for (field, r) in edits {
                let bit = 1u64 << (r % 64);
                let s = &mut v.state;
                match field {
                    0 => s.cr0 ^= bit,
                    1 => s.cr3 ^= bit,
                    2 => s.cr4 ^= bit,
                    3 => s.efer ^= bit,
                    4 => s.dr6 ^= bit,
                    5 => s.dr7 ^= bit,
                    6 => s.cs.attrib ^= 1 << (r % 16),
                    7 => v.control.event_inj = r & 0xFFFF_FFFF_8000_0FFF,
                    8 => v.control.event_inj = EventInfo::exception(r as u8).0,
                    9 => s.cr0 ^= 1 << (r % 32),
                    10 => s.cr4 ^= 1 << (r % 24),
                    _ => s.efer ^= 1 << (r % 16),
                }
            }
            v
        })
    }

    use proptest::prelude::*;

    /// [`corrupted`], plus corruptions of the controls VMRUN checks.
    fn hostile() -> impl Strategy<Value = Vmcb> {
        let edit = (0u8..8, any::<u64>());
        (corrupted(), proptest::collection::vec(edit, 0..=3)).prop_map(|(mut v, edits)| {
            for (field, r) in edits {
                let c = &mut v.control;
                match field {
                    0 => c.intercept_misc2 ^= 1 << (r % 32),
                    1 => c.guest_asid = (r % 3) as u32,
                    2 => c.tlb_control = (r % 9) as u8,
                    3 => c.msrpm_base_pa = r >> (r % 64),
                    4 => c.iopm_base_pa = r >> (r % 64),
                    5 => c.nested_ctl ^= 1,
                    6 => c.ncr3 = r >> (r % 64),
                    _ => c.event_inj = r & 0xFFFF_FFFF_8000_0FFF,
                }
            }
            v
        })
    }

    /// The usual vmcb12s take the straight-line path.
    #[test]
    fn legal_vmcb12s_pass_all_at_once() {
        let l = limits();
        assert!(passes_all(&baseline().state, &baseline().control, &l));
        let mut v = baseline();
        v.state.efer = EFER_SVME;
        v.state.cr0 = 1 << 4;
        v.state.cr4 = 0;
        v.state.cr3 = 0xFFFF_F000;
        v.control.event_inj = EventInfo::exception_with_error_code(14, 2).0;
        v.control.tlb_control = 1;
        assert!(
            passes_all(&v.state, &v.control, &l),
            "real mode, #PF injected"
        );
    }

    proptest! {
        // Enough cases that a single-bit rule (CR0.PE) is hit many times.
        #![proptest_config(ProptestConfig::with_cases(8192))]

        /// What L0 accepts the CPU here accepts too: L0's verdict, not the
        /// emulator's, decides every VMRUN (the guest-side twin is
        /// `nested::checks_decide_before_the_cpu`).
        #[test]
        fn the_cpu_never_refuses_what_l0_accepts(v in corrupted()) {
            let limits = L1Limits::from_cpuid(&qemu64_cpu(), false);
            if check_vmcb12(&v, &limits).is_ok() {
                prop_assert!(!qemu_refuses(&v, 40, QEMU64_CR4_RESERVED));
            }
        }

        /// The straight-line test never passes what the ordered checks
        /// refuse (it may send a legal vmcb12 to them: only slower).
        #[test]
        fn passes_all_implies_every_rule(v in hostile(), npt in any::<bool>(), phys in 30u8..=64) {
            let mut limits = L1Limits::from_cpuid(&cpu(), npt);
            limits.max_phys_bits = phys;
            if passes_all(&v.state, &v.control, &limits) {
                prop_assert_eq!(check_save(&v.state, &limits), Ok(()));
                prop_assert_eq!(check_controls(&v.control, &limits), Ok(()));
            }
        }
    }

    /// Where L0 refuses what QEMU TCG accepts, the APM is on L0's side
    /// (docs/qemu-tcg.md lists these as emulator deviations).
    #[test]
    fn l0_stricter_than_qemu_where_the_apm_says() {
        let limits = L1Limits::from_cpuid(&qemu64_cpu(), false);
        let cases: &[(&str, Mutation, Vmcb12Error)] = &[
            (
                "CR4.PCIDE without PCID in CPUID (APM 15.5.1: CR4 MBZ bits)",
                |v| v.state.cr4 |= 1 << 17,
                Vmcb12Error::Cr4Reserved(1 << 17),
            ),
            (
                "EFER.FFXSR without FFXSR in CPUID (APM 15.5.1: EFER MBZ bits)",
                |v| v.state.efer |= 1 << 14,
                Vmcb12Error::EferReserved(1 << 14),
            ),
            (
                "exception vector 9, reserved (APM 15.20)",
                |v| v.control.event_inj = EventInfo::exception(9).0,
                Vmcb12Error::IllegalEventInj(IllegalEvent::NotAnException(9)),
            ),
            (
                "exception vector 27, reserved (APM 15.20)",
                |v| v.control.event_inj = EventInfo::exception(27).0,
                Vmcb12Error::IllegalEventInj(IllegalEvent::NotAnException(27)),
            ),
        ];
        for (name, mutate, expected) in cases {
            let mut v = baseline();
            mutate(&mut v);
            assert!(!qemu_refuses(&v, 40, QEMU64_CR4_RESERVED), "{name}");
            assert_eq!(check_vmcb12(&v, &limits), Err(*expected), "{name}");
        }
    }
}
