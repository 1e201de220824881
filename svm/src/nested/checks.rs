//! The consistency checks VMRUN makes on a VMCB (APM 15.5.1
//! "Canonicalization and Consistency Checks"), applied by L0 to its private
//! copy of L1's vmcb12 before running L2 from it.
//!
//! A failure means L1's VMRUN "fails" the way silicon's does: L0 writes
//! VMEXIT_INVALID into vmcb12 and resumes L1, instead of entering L2. Beyond
//! the architectural list, L0 also needs the permission maps it is about to
//! read to lie inside L1's RAM, and refuses features it does not offer L1
//! (nested paging for now).
//!
//! Checking is pure: it reads the VMCB copy and the limits, nothing else.

use crate::cr::{CR0_CD, CR0_NW, CR0_PE, CR0_PG, CR4_PAE};
use crate::event::{EventInfo, IllegalEvent};
use crate::exec_ctl::NestedCtl;
use crate::intercept::InterceptMisc2;
use crate::iopm::IOPM_SIZE;
use crate::msr::{EFER_LMA, EFER_LME, EFER_NXE, EFER_SCE, EFER_SVME};
use crate::msrpm::MSRPM_SIZE;
use crate::vmcb::{Vmcb, VmcbSegment};

/// Bits 63:32 of CR0, DR6 and DR7, all MBZ.
const HIGH_HALF: u64 = 0xFFFF_FFFF_0000_0000;
/// Bits 11:0 of IOPM_BASE_PA / MSRPM_BASE_PA, which the CPU ignores
/// (APM Table B-1).
const PAGE_OFFSET_MASK: u64 = 0xFFF;
/// CR3 bits 63:52 are reserved in every long-mode CR3 format (APM 3.1.2,
/// "Long-Mode CR3"), so no MAXPHYADDR above 52 is meaningful.
const MAX_CR3_PHYS_BITS: u8 = 52;

/// EFER bits a plain x86-64 CPU lets L1 set for L2: SCE, LME, LMA, NXE and
/// SVME (SVME is required anyway). Everything else (LMSLE, FFXSR, TCE,
/// MCOMMIT, INTWB, UAIE, AIBRSE, ...) is treated as reserved unless L0
/// offers the feature and widens [`L1Limits::efer_allowed`].
pub const EFER_ALLOWED_DEFAULT: u64 = EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE | EFER_SVME;

/// CR4 bits a plain x86-64 CPU lets L1 set for L2: the architectural bits
/// every x86-64 processor has, 0-10 (VME, PVI, TSD, DE, PSE, PAE, MCE, PGE,
/// PCE, OSFXSR, OSXMMEXCPT), plus 16 (FSGSBASE) and 18 (OSXSAVE).
///
/// Left out, hence reserved: UMIP (11), LA57 (12), PCIDE (17), SMEP (20),
/// SMAP (21), PKE (22), CET (23) and anything newer. L0 should narrow this
/// further if its virtual CPUID hides FSGSBASE or XSAVE, and widen it only
/// for features its CPUID shows L1.
pub const CR4_ALLOWED_DEFAULT: u64 = 0x7FF | (1 << 16) | (1 << 18);

/// What the checks need to know about L1 and what L0 offers it.
#[derive(Clone, Copy, Debug)]
pub struct L1Limits {
    /// L1's RAM is guest-physical [0, memory_size).
    pub memory_size: u64,
    /// MAXPHYADDR of the (virtual) CPU, e.g. 40; physical-address bits at
    /// or above it are reserved.
    pub max_phys_bits: u8,
    /// Whether nested paging is offered to L1 (false for now: vmcb12 with
    /// NP_ENABLE must fail).
    pub npt_offered: bool,
    /// CR4 bits L1 may set for L2 (others reserved).
    pub cr4_allowed: u64,
    /// EFER bits L1 may set for L2 (others reserved).
    pub efer_allowed: u64,
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
    /// CR3 MBZ bits are set (long mode: bits at or above MAXPHYADDR).
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
    /// The 8 KiB MSR permission map at this (page-aligned) base does not
    /// lie inside L1's memory.
    MsrpmOutsideMemory(u64),
    /// The 12 KiB I/O permission map at this (page-aligned) base does not
    /// lie inside L1's memory.
    IopmOutsideMemory(u64),
    /// NP_ENABLE is set but L0 does not offer nested paging to L1.
    NestedPagingNotOffered,
    /// EVENTINJ holds an event VMRUN would refuse (APM 15.20).
    IllegalEventInj(IllegalEvent),
}

/// APM 15.5.1: every check VMRUN makes (plus L1-memory bounds of the
/// permission maps, which L0 must read from L1 memory), in the APM's order.
/// Ok or the first failure.
///
/// The order is the APM's list: EFER.SVME, CR0.CD/NW, CR0\[63:32\], CR3,
/// CR4, DR6, DR7, EFER MBZ, the three long-mode rules, the VMRUN
/// intercept, the permission maps, EVENTINJ, ASID; the L0-specific
/// nested-paging rule comes last. Only the first failure is reported, so
/// the order matters only for VMCBs that break several rules.
///
/// "EFER.LMA or EFER.LME is non-zero and this processor does not support
/// long mode" is covered by [`L1Limits::efer_allowed`]: leave LME/LMA out
/// of it for a CPU without long mode.
pub fn check_vmcb12(vmcb: &Vmcb, limits: &L1Limits) -> Result<(), Vmcb12Error> {
    check_save(vmcb, limits)?;
    check_controls(vmcb, limits)
}

/// The guest-state half of the list.
fn check_save(vmcb: &Vmcb, limits: &L1Limits) -> Result<(), Vmcb12Error> {
    let s = &vmcb.state;
    if s.efer & EFER_SVME == 0 {
        return Err(Vmcb12Error::EferSvmeClear);
    }
    if s.cr0 & CR0_CD == 0 && s.cr0 & CR0_NW != 0 {
        return Err(Vmcb12Error::Cr0CdClearNwSet);
    }
    mbz(s.cr0 & HIGH_HALF, Vmcb12Error::Cr0High)?;

    // EFER.LME with CR0.PG is the mode VMRUN is about to enter (LMA is
    // derived from them), as in the three long-mode rules below.
    let long_mode = s.efer & EFER_LME != 0 && s.cr0 & CR0_PG != 0;
    // CR3: only the long-mode format has MBZ bits above bit 31 that depend
    // on MAXPHYADDR (APM 3.1.2). Legacy and PAE CR3 are 32 bits wide; like
    // KVM and QEMU, nothing is checked there.
    if long_mode {
        let bits = limits.max_phys_bits.min(MAX_CR3_PHYS_BITS);
        let reserved = s.cr3 & (u64::MAX << bits);
        mbz(reserved, Vmcb12Error::Cr3Reserved)?;
    }
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
fn check_controls(vmcb: &Vmcb, limits: &L1Limits) -> Result<(), Vmcb12Error> {
    let c = &vmcb.control;
    if c.intercept_misc2 & InterceptMisc2::VMRUN.bits() == 0 {
        return Err(Vmcb12Error::VmrunNotIntercepted);
    }
    // APM: "The MSR or IOIO intercept tables extend to a physical address
    // that is greater than or equal to the maximum supported physical
    // address". L0 reads both maps from L1's memory, so the bound is L1's
    // RAM, which lies below MAXPHYADDR. The CPU ignores bits 11:0 of both
    // bases (Table B-1), so they are checked page-aligned. Checked whether
    // or not MSR_PROT / IOIO_PROT is set, as hardware does.
    let msrpm = c.msrpm_base_pa & !PAGE_OFFSET_MASK;
    if !inside_memory(msrpm, MSRPM_SIZE, limits.memory_size) {
        return Err(Vmcb12Error::MsrpmOutsideMemory(msrpm));
    }
    let iopm = c.iopm_base_pa & !PAGE_OFFSET_MASK;
    if !inside_memory(iopm, IOPM_SIZE, limits.memory_size) {
        return Err(Vmcb12Error::IopmOutsideMemory(iopm));
    }
    EventInfo(c.event_inj)
        .check()
        .map_err(Vmcb12Error::IllegalEventInj)?;
    if c.guest_asid == 0 {
        return Err(Vmcb12Error::AsidZero);
    }
    if c.nested_ctl & NestedCtl::NP_ENABLE.bits() != 0 && !limits.npt_offered {
        return Err(Vmcb12Error::NestedPagingNotOffered);
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

/// Whether `[base, base + len)` lies inside `[0, memory_size)`, without
/// overflowing.
fn inside_memory(base: u64, len: usize, memory_size: u64) -> bool {
    base.checked_add(len as u64)
        .is_some_and(|end| end <= memory_size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventType;

    const MEM: u64 = 16 << 20;
    const MSRPM_AT: u64 = 0x10_0000;
    const IOPM_AT: u64 = 0x20_0000;

    fn limits() -> L1Limits {
        L1Limits {
            memory_size: MEM,
            max_phys_bits: 40,
            npt_offered: false,
            cr4_allowed: CR4_ALLOWED_DEFAULT,
            efer_allowed: EFER_ALLOWED_DEFAULT,
        }
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

    #[test]
    fn default_masks() {
        assert_eq!(EFER_ALLOWED_DEFAULT, 0x1D01);
        assert_eq!(CR4_ALLOWED_DEFAULT, 0x5_07FF);
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
                "MSRPM past the end",
                |v| v.control.msrpm_base_pa = MEM - 0x1000,
                E::MsrpmOutsideMemory(MEM - 0x1000),
            ),
            (
                "MSRPM at 2^64 - 4K",
                |v| v.control.msrpm_base_pa = u64::MAX,
                E::MsrpmOutsideMemory(!0xFFF),
            ),
            (
                "IOPM past the end",
                |v| v.control.iopm_base_pa = MEM - 0x2000,
                E::IopmOutsideMemory(MEM - 0x2000),
            ),
            (
                "IOPM way out",
                |v| v.control.iopm_base_pa = 1 << 40,
                E::IopmOutsideMemory(1 << 40),
            ),
            (
                "NP_ENABLE",
                |v| v.control.nested_ctl = NestedCtl::NP_ENABLE.bits(),
                E::NestedPagingNotOffered,
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
            ("every default CR4 bit", |v| {
                v.state.cr4 = CR4_ALLOWED_DEFAULT
            }),
            ("every default EFER bit", |v| {
                v.state.efer = EFER_ALLOWED_DEFAULT
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
        // LME set but paging off (about to enable long mode): no PAE yet.
        let mut v = baseline();
        v.state.cr0 = CR0_PE;
        v.state.cr4 = 0;
        v.state.efer = EFER_LME | EFER_SVME;
        v.state.cr3 = 1 << 45;
        assert_eq!(check_vmcb12(&v, &limits()), Ok(()));
        // Real mode.
        let mut v = baseline();
        v.state.cr0 = 1 << 4;
        v.state.cr4 = 0;
        v.state.efer = EFER_SVME;
        v.state.cs = VmcbSegment::new(0xF000, 0x9B, 0xFFFF, 0xF_0000);
        assert_eq!(check_vmcb12(&v, &limits()), Ok(()));
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

    #[test]
    fn maps_may_end_exactly_at_the_end_of_memory() {
        let msrpm_end = MSRPM_AT + MSRPM_SIZE as u64;
        let iopm_end = IOPM_AT + IOPM_SIZE as u64;
        let mut l = limits();
        // MSRPM is the last thing in memory (IOPM moved to 0): an exact
        // fit passes, one byte short fails.
        let mut v = baseline();
        v.control.iopm_base_pa = 0;
        l.memory_size = msrpm_end;
        assert_eq!(check_vmcb12(&v, &l), Ok(()));
        l.memory_size = msrpm_end - 1;
        assert_eq!(
            check_vmcb12(&v, &l),
            Err(Vmcb12Error::MsrpmOutsideMemory(MSRPM_AT))
        );
        // Likewise the IOPM, which sits above the MSRPM in the baseline.
        let v = baseline();
        l.memory_size = iopm_end;
        assert_eq!(check_vmcb12(&v, &l), Ok(()));
        l.memory_size = iopm_end - 1;
        assert_eq!(
            check_vmcb12(&v, &l),
            Err(Vmcb12Error::IopmOutsideMemory(IOPM_AT))
        );
    }

    #[test]
    fn map_bases_are_page_aligned_first() {
        let mut l = limits();
        l.memory_size = IOPM_AT + IOPM_SIZE as u64;
        let mut v = baseline();
        // Bits 11:0 are ignored: a base ending in 0xFFF is the page below.
        v.control.msrpm_base_pa = MSRPM_AT | 0xFFF;
        v.control.iopm_base_pa = IOPM_AT | 0xFFF;
        assert_eq!(check_vmcb12(&v, &l), Ok(()));
        // And errors report the aligned base.
        v.control.iopm_base_pa = (IOPM_AT + 0x1000) | 0x123;
        assert_eq!(
            check_vmcb12(&v, &l),
            Err(Vmcb12Error::IopmOutsideMemory(IOPM_AT + 0x1000))
        );
        v.control.iopm_base_pa = IOPM_AT;
        v.control.msrpm_base_pa = (l.memory_size - 0x1000) | 0x800;
        assert_eq!(
            check_vmcb12(&v, &l),
            Err(Vmcb12Error::MsrpmOutsideMemory(l.memory_size - 0x1000))
        );
    }

    #[test]
    fn npt_allowed_when_offered() {
        let mut v = baseline();
        v.control.nested_ctl = NestedCtl::NP_ENABLE.bits();
        let mut l = limits();
        l.npt_offered = true;
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
        v.control.msrpm_base_pa = MEM;
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
}
