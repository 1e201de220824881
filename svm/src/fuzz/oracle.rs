//! The oracles: what L1 must observe, written from the APM independently
//! of L0's own checks in [`crate::nested::checks`] so that they can
//! disagree.

use crate::{ControlArea, Vmcb};

const EFER_SVME: u64 = 1 << 12;
const EFER_LME: u64 = 1 << 8;
/// EFER bits reserved on every AMD64 CPU (APM Vol. 2, 3.1.7): 1-7, 9, and
/// 22-63 (16-21 are newer features a CPU may have).
pub const EFER_MBZ: u64 = 0xfe | (1 << 9) | !((1 << 22) - 1);
/// CR4 bits reserved on every AMD CPU: 13 (VMXE), 14 (SMXE), 15, 19, 32-63.
pub const CR4_MBZ: u64 = (1 << 13) | (1 << 14) | (1 << 15) | (1 << 19) | !0xffff_ffff;
const CR0_PE: u64 = 1;
const CR0_NW: u64 = 1 << 29;
const CR0_CD: u64 = 1 << 30;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const MSRPM_BYTES: u64 = 8 << 10;
const IOPM_BYTES: u64 = 12 << 10;

/// The first APM 15.5.1 rule ("VMRUN: checks on the guest state") that
/// `v` breaks, if any: such a vmcb12 must end in VMEXIT_INVALID. Only the
/// rules that hold on every AMD CPU; `max_phys_bits` is what CPUID
/// 0x8000_0008 tells L1.
pub fn broken_rule(v: &Vmcb, max_phys_bits: u8) -> Option<&'static str> {
    let (c, s) = (&v.control, &v.state);
    let lme_pg = s.efer & EFER_LME != 0 && s.cr0 & CR0_PG != 0;
    let cs_l = s.cs.attrib & (1 << 9) != 0;
    let cs_d = s.cs.attrib & (1 << 10) != 0;
    let beyond = |base: u64, len: u64| {
        (base & !0xfff)
            .checked_add(len - 1)
            .is_none_or(|last| max_phys_bits < 64 && last >> max_phys_bits != 0)
    };
    // Long mode: CR3 bits at or above MAXPHYADDR are MBZ.
    let beyond_phys = |x: u64| max_phys_bits < 64 && x >> max_phys_bits != 0;
    let event = crate::EventInfo(c.event_inj);
    let rules: [(bool, &'static str); 17] = [
        (s.efer & EFER_SVME == 0, "EFER.SVME clear"),
        (
            s.cr0 & CR0_CD == 0 && s.cr0 & CR0_NW != 0,
            "CR0.CD clear and CR0.NW set",
        ),
        (s.cr0 >> 32 != 0, "CR0[63:32] not zero"),
        (lme_pg && beyond_phys(s.cr3), "CR3 MBZ bits (long mode)"),
        (s.cr4 & CR4_MBZ != 0, "CR4 MBZ bits"),
        (s.dr6 >> 32 != 0, "DR6[63:32] not zero"),
        (s.dr7 >> 32 != 0, "DR7[63:32] not zero"),
        (s.efer & EFER_MBZ != 0, "EFER MBZ bits"),
        (
            lme_pg && s.cr4 & CR4_PAE == 0,
            "EFER.LME and CR0.PG with CR4.PAE clear",
        ),
        (
            lme_pg && s.cr0 & CR0_PE == 0,
            "EFER.LME and CR0.PG with CR0.PE clear",
        ),
        (
            lme_pg && s.cr4 & CR4_PAE != 0 && cs_l && cs_d,
            "long mode with CS.L and CS.D",
        ),
        (c.intercept_misc2 & 1 == 0, "VMRUN intercept clear"),
        (
            beyond(c.msrpm_base_pa, MSRPM_BYTES),
            "MSRPM beyond MAXPHYADDR",
        ),
        (beyond(c.iopm_base_pa, IOPM_BYTES), "IOPM beyond MAXPHYADDR"),
        (event.is_valid() && !event_legal(event), "illegal EVENTINJ"),
        (c.guest_asid == 0, "ASID 0"),
        (
            !matches!(c.tlb_control, 0 | 1 | 3 | 7),
            "reserved TLB_CONTROL",
        ),
    ];
    rules
        .iter()
        .find(|(broken, _)| *broken)
        .map(|(_, why)| *why)
}

/// CR4 bits a CPU may offer, by the CPUID bit that offers each:
/// `(bit, leaf, register index (0 EAX .. 3 EDX), register bit)`.
pub const CR4_FEATURES: [(u32, u32, usize, u32); 9] = [
    (11, 7, 2, 2),  // UMIP: CPUID 7.0 ECX[2]
    (12, 7, 2, 16), // LA57: CPUID 7.0 ECX[16]
    (16, 7, 1, 0),  // FSGSBASE: CPUID 7.0 EBX[0]
    (17, 1, 2, 17), // PCIDE: CPUID 1 ECX[17]
    (18, 1, 2, 26), // OSXSAVE: CPUID 1 ECX[26]
    (20, 7, 1, 7),  // SMEP: CPUID 7.0 EBX[7]
    (21, 7, 1, 20), // SMAP: CPUID 7.0 EBX[20]
    (22, 7, 2, 3),  // PKE: CPUID 7.0 ECX[3]
    (23, 7, 2, 7),  // CET: CPUID 7.0 ECX[7]
];
/// EFER bits a CPU may offer, as [`CR4_FEATURES`]: NXE, FFXSR, TCE.
pub const EFER_FEATURES: [(u32, u32, usize, u32); 3] = [
    (11, 0x8000_0001, 3, 20),
    (14, 0x8000_0001, 3, 25),
    (15, 0x8000_0001, 2, 17),
];
/// CR4 bits 0-10, which every long-mode CPU has.
pub const CR4_BASE: u64 = 0x7ff;
/// EFER bits every SVM CPU in long mode has: SCE, LME, LMA, SVME.
pub const EFER_BASE: u64 = 1 | (1 << 8) | (1 << 10) | (1 << 12);

/// The bits of a [`CR4_FEATURES`]/[`EFER_FEATURES`] table that `cpuid`
/// (leaf → `[eax, ebx, ecx, edx]`) offers, plus `base`.
pub fn offered(
    base: u64,
    table: &[(u32, u32, usize, u32)],
    cpuid: impl Fn(u32) -> [u32; 4],
) -> u64 {
    table
        .iter()
        .fold(base, |bits, &(bit, leaf, reg, cpuid_bit)| {
            match cpuid(leaf)[reg] & (1 << cpuid_bit) != 0 {
                true => bits | (1 << bit),
                false => bits,
            }
        })
}

/// The rules of APM 15.5.1 and 15.16.1 as this CPU applies them: a CR4 or
/// EFER bit the CPUID L1 sees does not offer is MBZ, and TLB_CONTROL 3/7
/// need FlushByAsid (CPUID 0x8000_000A EDX[6]). (Beyond [`broken_rule`],
/// which knows only what holds on every CPU.)
pub fn cpuid_rule(
    v: &Vmcb,
    cr4_allowed: u64,
    efer_allowed: u64,
    flush_by_asid: bool,
) -> Option<&'static str> {
    if !flush_by_asid && matches!(v.control.tlb_control, 3 | 7) {
        // APM 15.16.1: flushing this guest's entries needs FlushByAsid.
        Some("TLB_CONTROL 3/7 without FlushByAsid")
    } else if v.state.cr4 & !cr4_allowed != 0 {
        Some("CR4 bit L1's CPUID does not offer")
    } else if v.state.efer & !efer_allowed != 0 {
        Some("EFER bit L1's CPUID does not offer")
    } else {
        None
    }
}

/// An EVENTINJ exception (type 3) whose vector names no exception on AMD
/// CPUs (APM Vol. 2, Table 8-1: 9, 15, 20, 22-27, 31): hardware and L0 may
/// refuse it (APM 15.20). Not in [`broken_rule`], which keeps to what every
/// CPU refuses; it tells L0's refusals apart.
pub fn reserved_exception_injected(v: &Vmcb) -> bool {
    let e = crate::EventInfo(v.control.event_inj);
    e.is_valid() && e.raw_type() == 3 && matches!(e.vector(), 9 | 15 | 20 | 22..=27 | 31)
}

/// APM 15.20: reserved types (1, 5-7), and exceptions with vector 2 (NMI)
/// or above 31, cannot be injected.
fn event_legal(e: crate::EventInfo) -> bool {
    match e.raw_type() {
        0 | 2 | 4 => true,
        3 => e.vector() != 2 && e.vector() < 32,
        _ => false,
    }
}

/// Whether a #VMEXIT with `code` is one vmcb12's controls `c` asked for:
/// its intercept bit is set (CR/DR/exception/instruction vectors map one
/// to one onto exit codes 0x00-0x9f, APM Table C-1), or it is a nested page
/// fault with nested paging on.
pub fn exit_intercepted(c: &ControlArea, code: u64) -> bool {
    let bit = |word: u32, n: u64| word & (1 << (n % 32)) != 0;
    match code {
        0x00..=0x1f => bit(c.intercept_cr, code),
        0x20..=0x3f => bit(c.intercept_dr, code - 0x20),
        0x40..=0x5f => bit(c.intercept_exceptions, code - 0x40),
        0x60..=0x7f => bit(c.intercept_misc1, code - 0x60),
        0x80..=0x9f => bit(c.intercept_misc2, code - 0x80),
        0xa0..=0xbf => bit(c.intercept_misc3, code - 0xa0),
        0x400 => c.nested_ctl & 1 != 0,
        _ => false,
    }
}

/// Whether an exit code is VMEXIT_INVALID (QEMU stores it as 0xffff_ffff).
pub const fn is_invalid(code: u64) -> bool {
    code as u32 == u32::MAX
}

/// What an SVM instruction taking a physical address in RAX (VMRUN,
/// VMLOAD, VMSAVE) must do with `addr`, for L1 with `ram` bytes of memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressVerdict {
    /// A page of L1's memory: the instruction runs.
    Good,
    /// #GP(0): not page aligned, beyond MAXPHYADDR, or outside L1's RAM
    /// (where this hypervisor has nothing to read or write).
    Gp,
}

/// The verdict on `addr` (APM Vol. 3, VMRUN/VMLOAD/VMSAVE exceptions).
pub fn svm_address(addr: u64, ram: u64, max_phys_bits: u8) -> AddressVerdict {
    let beyond = max_phys_bits < 64 && addr >> max_phys_bits != 0;
    if addr & 0xfff != 0 || beyond || addr.saturating_add(0x1000) > ram {
        AddressVerdict::Gp
    } else {
        AddressVerdict::Good
    }
}

/// Whether QEMU TCG raises #GP for `addr` in VMRUN/VMLOAD/VMSAVE before
/// looking at the intercept (so L0 never sees it): not page aligned or
/// beyond the emulated CPU's physical-address width.
pub fn emulator_checks_first(addr: u64, max_phys_bits: u8) -> bool {
    addr & 0xfff != 0 || (max_phys_bits < 64 && addr >> max_phys_bits != 0)
}

/// L1's TSC across one VMRUN went on, by less than 2^38 ticks (an
/// iteration takes far less: minutes at GHz rates), so no vmcb12 offset
/// leaked into it. Counted modulo 2^64 as the CPU counts: a TSC an earlier
/// L2 wrote (EDX all-ones) leaves L1's just below 2^64, and it wraps.
pub fn tsc_went_on(t0: u64, t1: u64) -> bool {
    t1.wrapping_sub(t0) <= 1 << 38
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsc_goes_on_through_the_wrap() {
        assert!(tsc_went_on(10, 20));
        assert!(tsc_went_on(10, 10));
        // Fuzz seed 3, iteration 195789: -16M ticks, then +27M.
        assert!(tsc_went_on(0xffff_ffff_ff0b_3abe, 0x1a1_3914));
        assert!(!tsc_went_on(20, 10));
        assert!(!tsc_went_on(0, (1 << 38) + 1));
        assert!(!tsc_went_on(u64::MAX - 5, 1 << 39));
    }

    type Breaker = fn(&mut Vmcb);

    fn legal() -> Vmcb {
        let mut v = Vmcb::new();
        v.control.intercept_misc2 = 1;
        v.control.guest_asid = 1;
        v.control.msrpm_base_pa = 0x10_0000;
        v.control.iopm_base_pa = 0x20_0000;
        crate::guest_abi::load_start_segments(&mut v.state);
        v.state.efer = EFER_SVME | EFER_LME | (1 << 10);
        v.state.cr0 = CR0_PG | CR0_PE | (1 << 16);
        v.state.cr4 = CR4_PAE;
        v.state.cr3 = 0x1000;
        v.state.dr6 = 0xffff_0ff0;
        v.state.dr7 = 0x400;
        v
    }

    #[test]
    fn the_apm_rules_each_bite() {
        assert_eq!(broken_rule(&legal(), 40), None);
        let cases: [(Breaker, &str); 17] = [
            (|v| v.state.efer &= !EFER_SVME, "EFER.SVME clear"),
            (|v| v.state.cr0 |= CR0_NW, "CR0.CD clear and CR0.NW set"),
            (|v| v.state.cr0 |= 1 << 40, "CR0[63:32] not zero"),
            (|v| v.state.cr3 |= 1 << 40, "CR3 MBZ bits (long mode)"),
            (|v| v.state.cr4 |= 1 << 15, "CR4 MBZ bits"),
            (|v| v.state.dr6 |= 1 << 32, "DR6[63:32] not zero"),
            (|v| v.state.dr7 |= 1 << 63, "DR7[63:32] not zero"),
            (|v| v.state.efer |= 1 << 3, "EFER MBZ bits"),
            (
                |v| v.state.cr4 = 0,
                "EFER.LME and CR0.PG with CR4.PAE clear",
            ),
            (
                |v| v.state.cr0 &= !CR0_PE,
                "EFER.LME and CR0.PG with CR0.PE clear",
            ),
            (
                |v| v.state.cs.attrib |= 1 << 10,
                "long mode with CS.L and CS.D",
            ),
            (|v| v.control.intercept_misc2 = 0, "VMRUN intercept clear"),
            (
                |v| v.control.msrpm_base_pa = (1 << 40) - 0x1000,
                "MSRPM beyond MAXPHYADDR",
            ),
            (
                |v| v.control.iopm_base_pa = u64::MAX,
                "IOPM beyond MAXPHYADDR",
            ),
            (
                |v| v.control.event_inj = (1 << 31) | (3 << 8) | 2,
                "illegal EVENTINJ",
            ),
            (|v| v.control.guest_asid = 0, "ASID 0"),
            (|v| v.control.tlb_control = 2, "reserved TLB_CONTROL"),
        ];
        for (break_it, rule) in cases {
            let mut v = legal();
            break_it(&mut v);
            assert_eq!(broken_rule(&v, 40), Some(rule));
        }
        // Legal events and maps right below MAXPHYADDR.
        let mut v = legal();
        v.control.event_inj = (1 << 31) | (3 << 8) | 14;
        v.control.msrpm_base_pa = (1 << 40) - 0x2000;
        assert_eq!(broken_rule(&v, 40), None);
    }

    #[test]
    fn cpuid_decides_the_feature_bits() {
        // A CPU with SMEP (7.0 EBX[7]) and NX (0x8000_0001 EDX[20]) only.
        let cpuid = |leaf: u32| match leaf {
            7 => [0, 1 << 7, 0, 0],
            0x8000_0001 => [0, 0, 0, 1 << 20],
            _ => [0; 4],
        };
        let cr4 = offered(CR4_BASE, &CR4_FEATURES, cpuid);
        let efer = offered(EFER_BASE, &EFER_FEATURES, cpuid);
        assert_eq!(cr4, 0x7ff | (1 << 20));
        assert_eq!(efer, EFER_BASE | (1 << 11));
        let mut v = legal();
        v.state.cr4 |= 1 << 20;
        v.state.efer |= 1 << 11;
        assert_eq!(cpuid_rule(&v, cr4, efer, false), None);
        v.state.cr4 |= 1 << 16;
        assert_eq!(
            cpuid_rule(&v, cr4, efer, false),
            Some("CR4 bit L1's CPUID does not offer")
        );
        v.state.cr4 &= !(1 << 16);
        v.state.efer |= 1 << 14;
        assert_eq!(
            cpuid_rule(&v, cr4, efer, false),
            Some("EFER bit L1's CPUID does not offer")
        );
        let mut v = legal();
        v.control.tlb_control = 3;
        assert_eq!(cpuid_rule(&v, cr4, efer, true), None);
        assert_eq!(
            cpuid_rule(&v, cr4, efer, false),
            Some("TLB_CONTROL 3/7 without FlushByAsid")
        );
    }

    #[test]
    fn reserved_exception_vectors() {
        let mut v = legal();
        v.control.event_inj = (1 << 31) | (3 << 8) | 27;
        assert!(reserved_exception_injected(&v));
        v.control.event_inj = (1 << 31) | (3 << 8) | 14;
        assert!(!reserved_exception_injected(&v));
        v.control.event_inj = (1 << 31) | 27; // an external interrupt
        assert!(!reserved_exception_injected(&v));
    }

    #[test]
    fn intercepted_exits_map_to_their_bits() {
        let mut c = Vmcb::new().control;
        assert!(!exit_intercepted(&c, 0x81));
        c.intercept_misc2 = 1 << 1; // VMMCALL
        c.intercept_misc1 = 1 << 24; // HLT
        c.intercept_exceptions = 1 << 1; // #DB
        c.intercept_cr = 1 << 16; // CR0 write
        assert!(exit_intercepted(&c, 0x81));
        assert!(exit_intercepted(&c, 0x78));
        assert!(exit_intercepted(&c, 0x41));
        assert!(exit_intercepted(&c, 0x10));
        assert!(!exit_intercepted(&c, 0x80));
        assert!(!exit_intercepted(&c, 0x400));
        c.nested_ctl = 1;
        assert!(exit_intercepted(&c, 0x400));
        assert!(!exit_intercepted(&c, u64::MAX));
        assert!(is_invalid(0xffff_ffff) && is_invalid(u64::MAX) && !is_invalid(0x81));
    }

    #[test]
    fn svm_addresses() {
        let ram = 8 << 20;
        assert_eq!(svm_address(0x10_0000, ram, 40), AddressVerdict::Good);
        assert_eq!(svm_address(0x10_0008, ram, 40), AddressVerdict::Gp);
        assert_eq!(svm_address(ram, ram, 40), AddressVerdict::Gp);
        assert_eq!(svm_address(ram - 0x1000, ram, 40), AddressVerdict::Good);
        assert_eq!(svm_address(1 << 40, ram, 40), AddressVerdict::Gp);
        assert_eq!(svm_address(!0xfff, ram, 40), AddressVerdict::Gp);
        assert!(emulator_checks_first(0x10_0008, 40));
        assert!(emulator_checks_first(1 << 40, 40));
        assert!(!emulator_checks_first(ram, 40));
    }
}
