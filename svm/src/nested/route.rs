//! Who handles an exit taken while L2 runs: L1 (reflected as a nested
//! #VMEXIT into vmcb12) or L0 alone.
//!
//! L2 runs with the union of L0's and L1's intercepts ([`super::merge`]),
//! so an exit can come from either. It belongs to L1 exactly when L1's own
//! controls, as written in vmcb12, would have caused it on real hardware
//! (APM 15.9-15.13); otherwise only L0 asked for it, and L0 handles it and
//! resumes L2.

use super::map_view::{self, IopmView, MsrpmView};
use crate::exit::{ExitCode, IoioInfo};
use crate::intercept::InterceptMisc1;
use crate::vmcb::ControlArea;

/// Where an exit from L2 goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// L1 asked for it (reflect as a nested #VMEXIT).
    L1,
    /// Only L0 intercepts it: L0 handles it and resumes L2.
    L0,
}

/// What route_exit needs to know about the exit.
#[derive(Clone, Copy, Debug)]
pub struct ExitFacts {
    /// The EXITCODE of the exit from L2.
    pub code: ExitCode,
    /// EXITINFO1 (RDMSR/WRMSR for MSR exits, the [`IoioInfo`] word for
    /// IOIO exits).
    pub exit_info1: u64,
    /// ECX at the exit (the MSR number for MSR exits).
    pub rcx: u64,
}

/// One bit of vmcb12's intercept vectors (APM Table B-1), by word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterceptBit {
    /// Bit of intercept_cr (reads 0-15, writes 16-31).
    Cr(u32),
    /// Bit of intercept_dr (reads 0-15, writes 16-31).
    Dr(u32),
    /// Bit of intercept_exceptions (the vector).
    Exception(u32),
    /// Bit of intercept_misc1 (see [`InterceptMisc1`]).
    Misc1(u32),
    /// Bit of intercept_misc2 (see [`InterceptMisc2`]).
    Misc2(u32),
    /// Bit of intercept_misc3 (see [`InterceptMisc3`]).
    Misc3(u32),
}

impl InterceptBit {
    /// Whether `ctl` sets this bit. Bit numbers above 31 are never set.
    pub fn is_set(self, ctl: &ControlArea) -> bool {
        let (word, bit) = match self {
            Self::Cr(b) => (ctl.intercept_cr, b),
            Self::Dr(b) => (ctl.intercept_dr, b),
            Self::Exception(b) => (ctl.intercept_exceptions, b),
            Self::Misc1(b) => (ctl.intercept_misc1, b),
            Self::Misc2(b) => (ctl.intercept_misc2, b),
            Self::Misc3(b) => (ctl.intercept_misc3, b),
        };
        word.checked_shr(bit).is_some_and(|w| w & 1 != 0)
    }
}

/// The last exit code an intercept bit controls (IDLE_HLT, misc3 bit 6).
const LAST_INTERCEPT_CODE: u64 = 0xA6;

/// Where `code`'s vmcb12 intercept bit is, as `word * 32 + bit` over the
/// six intercept words (CR, DR, exceptions, misc1-3; APM Table B-1): the
/// exit code itself, as Appendix C numbers the codes 0x00-0xA6 in the
/// order of those bits. `None` as for [`intercept_bit_of`].
#[inline]
fn intercept_position(code: ExitCode) -> Option<u32> {
    use ExitCode as C;
    let in_range = match code {
        C::CrRead(n) | C::CrWrite(n) | C::DrRead(n) | C::DrWrite(n) | C::CrWriteTrap(n) => n < 16,
        C::Exception(v) => v < 32,
        // Whatever it holds: only `from_raw` names codes.
        C::Unknown(_) => false,
        _ => true,
    };
    let raw = code.to_raw();
    match in_range && raw <= LAST_INTERCEPT_CODE {
        true => Some(raw as u32),
        false => None,
    }
}

/// Whether `ctl` sets the intercept bit at `pos` ([`intercept_position`]).
#[inline]
fn position_set(ctl: &ControlArea, pos: u32) -> bool {
    let word = match pos >> 5 {
        0 => ctl.intercept_cr,
        1 => ctl.intercept_dr,
        2 => ctl.intercept_exceptions,
        3 => ctl.intercept_misc1,
        4 => ctl.intercept_misc2,
        _ => ctl.intercept_misc3,
    };
    (word >> (pos & 31)) & 1 != 0
}

/// The vmcb12 intercept bit an exit code corresponds to, if any (for tests
/// and reports).
///
/// `None` for exits no intercept bit controls (NPF, the AVIC exits,
/// VMGEXIT, VMEXIT_INVALID, unknown codes) and for register or vector
/// numbers out of range (CR16, exception 32: not produced by
/// [`ExitCode::from_raw`]). MSR and IOIO exits map to MSR_PROT and
/// IOIO_PROT; the permission maps then refine them (see [`route_exit`]).
/// [`ExitCode::Rdtsc`] maps to the RDTSC bit, which under QEMU TCG also
/// covers RDTSCP.
pub fn intercept_bit_of(code: ExitCode) -> Option<InterceptBit> {
    let pos = intercept_position(code)?;
    let bit = pos & 31;
    Some(match pos >> 5 {
        0 => InterceptBit::Cr(bit),
        1 => InterceptBit::Dr(bit),
        2 => InterceptBit::Exception(bit),
        3 => InterceptBit::Misc1(bit),
        4 => InterceptBit::Misc2(bit),
        _ => InterceptBit::Misc3(bit),
    })
}

/// APM 15.9ff: the exit goes to L1 when vmcb12's intercepts ask for it —
/// for MSR_PROT exits L1's MSRPM decides (MSRs outside the three ranges are
/// always intercepted), for IOIO_PROT exits L1's IOPM decides (every port
/// the access touches, per its size, APM 15.10.1); exceptions by
/// intercept_exceptions bit; CR/DR read/write by their bit; other exit
/// codes by their misc1/misc2/misc3 bit. Exits that are never L1's here: NPF
/// (L0's table faulted: L0 resolves it, and reflects what L1's nested table
/// refuses itself, hv's nested::npt), #MC,
/// physical INTR and physical NMIs (L0's whatever L1 intercepts), SMI/INIT
/// when L1 does not intercept them, VMEXIT_INVALID, Unknown.
///
/// Details and limits:
/// - `l1_msrpm` / `l1_iopm` are only consulted when vmcb12 sets MSR_PROT /
///   IOIO_PROT; pass anything (e.g. zeros) otherwise. Their bytes outside
///   L1's RAM read as all-ones ([`MsrpmView`]): such bits intercept.
/// - MSR exits: EXITINFO1 bit 0 tells WRMSR from RDMSR (hardware writes
///   only 0 or 1), the MSR is ECX, the low half of `rcx`.
/// - An IOIO exit whose EXITINFO1 does not decode (no single size bit,
///   which hardware never reports) goes to L1 when IOIO_PROT is set: L1
///   asked for I/O exits and is better placed than L0 to reject it.
/// - [`ExitCode::Rdtsc`] follows vmcb12's RDTSC bit, [`ExitCode::Rdtscp`]
///   its RDTSCP bit. QEMU TCG reports RDTSCP with the RDTSC exit code, so
///   callers must pass the decoded instruction (the kernel decodes RDTSC
///   exits from L2 and passes `Rdtscp` for a real RDTSCP).
/// - Physical NMI/SMI/INIT go to L1 when L1 intercepts them; the event
///   itself is still L0's to service. Physical INTR never goes to L1.
/// - CR0 writes: [`ExitCode::CrWrite`]`(0)` follows L1's CR0-write bit
///   only. If L0 intercepts all CR0 writes while L1 sets only
///   CR0_SEL_WRITE, hardware reports CrWrite(0) (the general intercept
///   wins, APM 15.9.1) and this returns L0; L0 must then check itself
///   whether the write changes bits other than CR0.TS/MP and reflect
///   [`ExitCode::Cr0SelWrite`] to L1 if so. Likewise an all-INVLPGB exit
///   caused by L0 is not checked against L1's INVLPGB_ILLEGAL bit.
pub fn route_exit(
    exit: &ExitFacts,
    vmcb12: &ControlArea,
    l1_msrpm: MsrpmView<'_>,
    l1_iopm: IopmView<'_>,
) -> Route {
    route_exit_lazy(exit, vmcb12, || (l1_msrpm, l1_iopm))
}

/// [`route_exit`] with L1's maps made by `l1_maps` only when the exit
/// needs them (an MSR or IOIO exit vmcb12 intercepts): every exit from L2
/// is routed, most are neither.
#[inline]
pub fn route_exit_lazy<'m>(
    exit: &ExitFacts,
    vmcb12: &ControlArea,
    l1_maps: impl FnOnce() -> (MsrpmView<'m>, IopmView<'m>),
) -> Route {
    // A machine check is the host's, whatever L1 intercepts: L1 must not
    // see (or be trusted to handle) the physical machine's errors.
    // Physical interrupts are L0's (its devices, its watchdog): L0 takes
    // them and resumes L2. L1 gets #VMEXIT(INTR) only for an interrupt L0
    // holds for it ([`pending_interrupt_exits_l2`]). So is a physical NMI:
    // an NMI L0 holds for L1 reaches L1 as #VMEXIT(NMI) by L0's choice
    // (`crate::nmi`), never through here.
    if matches!(
        exit.code,
        ExitCode::Exception(18) | ExitCode::Intr | ExitCode::Nmi
    ) {
        return Route::L0;
    }
    let Some(pos) = intercept_position(exit.code) else {
        return Route::L0;
    };
    if !position_set(vmcb12, pos) {
        return Route::L0;
    }
    let l1_wants = match exit.code {
        ExitCode::Msr => msr_intercepted(&l1_maps().0, exit),
        ExitCode::Ioio => io_intercepted(&l1_maps().1, exit.exit_info1),
        _ => true,
    };
    if l1_wants {
        Route::L1
    } else {
        Route::L0
    }
}

/// Whether L1's MSRPM intercepts this RDMSR/WRMSR (APM 15.11). MSRs outside
/// the map's ranges always are.
fn msr_intercepted(map: &MsrpmView<'_>, exit: &ExitFacts) -> bool {
    let msr = exit.rcx as u32;
    if exit.exit_info1 & 1 != 0 {
        map_view::msr_writes_intercepted(map, msr)
    } else {
        map_view::msr_reads_intercepted(map, msr)
    }
}

/// Whether L1's IOPM intercepts this access: any of the ports it touches,
/// port..port+size-1 (APM 15.10.1).
fn io_intercepted(map: &IopmView<'_>, exit_info1: u64) -> bool {
    match IoioInfo::from_exit_info1(exit_info1) {
        Some(io) => map_view::io_intercepted(map, io.port, io.size),
        None => true,
    }
}

/// Whether an interrupt L0 holds for L1 ends L2's run with #VMEXIT(INTR)
/// now, as KVM decides it (svm.c `svm_interrupt_blocked`, nested.c
/// `svm_check_nested_events`): L1 intercepts INTR, L1's (virtual) GIF is
/// set, and the interrupt is not masked by RFLAGS.IF — L1's own IF, saved
/// at its VMRUN (`l1_rflags`, in hsave), when vmcb12 sets V_INTR_MASKING
/// (APM 15.21.1: the host's IF masks physical interrupts), else L2's
/// (`l2_rflags`, L2's IF masks them). L2's interrupt shadow does not
/// block the exit (it is not an interrupt delivered to L2).
///
/// When L1 does not intercept INTR the interrupt waits for L2's next exit
/// to L1 (hardware would deliver it through L2's IDT; not emulated).
pub fn pending_interrupt_exits_l2(
    vmcb12: &ControlArea,
    gif: bool,
    l1_rflags: u64,
    l2_rflags: u64,
) -> bool {
    const IF: u64 = 1 << 9;
    let intercepted = vmcb12.intercept_misc1 & InterceptMisc1::INTR.bits() != 0;
    let v_intr_masking = vmcb12.int_ctl & crate::IntCtl::V_INTR_MASKING.bits() != 0;
    let rflags = if v_intr_masking { l1_rflags } else { l2_rflags };
    intercepted && gif && rflags & IF != 0
}

#[cfg(test)]
mod pending_interrupt_tests {
    use super::*;
    use crate::IntCtl;

    const IF: u64 = 1 << 9;

    fn vmcb12(intr: bool, masking: bool) -> ControlArea {
        let mut c = ControlArea::new();
        if intr {
            c.intercept_misc1 = InterceptMisc1::INTR.bits();
        }
        if masking {
            c.int_ctl = IntCtl::V_INTR_MASKING.bits();
        }
        c
    }

    #[test]
    fn v_intr_masking_uses_l1s_saved_if() {
        let c = vmcb12(true, true);
        assert!(pending_interrupt_exits_l2(&c, true, IF | 2, 2));
        assert!(!pending_interrupt_exits_l2(&c, true, 2, IF | 2));
    }

    #[test]
    fn without_v_intr_masking_l2s_if_decides() {
        let c = vmcb12(true, false);
        assert!(pending_interrupt_exits_l2(&c, true, 2, IF | 2));
        assert!(!pending_interrupt_exits_l2(&c, true, IF | 2, 2));
    }

    #[test]
    fn gif_and_the_intercept_are_required() {
        assert!(!pending_interrupt_exits_l2(
            &vmcb12(true, true),
            false,
            IF,
            IF
        ));
        assert!(!pending_interrupt_exits_l2(
            &vmcb12(false, true),
            true,
            IF,
            IF
        ));
        assert!(!pending_interrupt_exits_l2(
            &vmcb12(false, false),
            true,
            IF,
            IF
        ));
    }

    #[test]
    fn physical_interrupts_stay_l0s() {
        let exit = ExitFacts {
            code: ExitCode::Intr,
            exit_info1: 0,
            rcx: 0,
        };
        let (msrpm, iopm) = (
            [0xffu8; crate::msrpm::MSRPM_SIZE],
            [0xffu8; crate::iopm::IOPM_SIZE],
        );
        let mut c = vmcb12(true, true);
        c.intercept_misc1 = u32::MAX;
        assert_eq!(super::route(&exit, &c, &msrpm, &iopm), Route::L0);
    }
}

/// [`route_exit`] over maps wholly in memory (the tests' maps).
#[cfg(test)]
fn route(
    exit: &ExitFacts,
    vmcb12: &ControlArea,
    msrpm: &[u8; crate::msrpm::MSRPM_SIZE],
    iopm: &[u8; crate::iopm::IOPM_SIZE],
) -> Route {
    route_exit(exit, vmcb12, msrpm.into(), iopm.into())
}

#[cfg(test)]
mod machine_check_tests {
    use super::*;
    use crate::iopm::IOPM_SIZE;
    use crate::msrpm::MSRPM_SIZE;

    #[test]
    fn machine_checks_stay_with_l0() {
        let mut v12 = ControlArea::new();
        v12.intercept_exceptions = !0;
        let facts = ExitFacts {
            code: ExitCode::Exception(18),
            exit_info1: 0,
            rcx: 0,
        };
        let (m, i) = ([0u8; MSRPM_SIZE], [0u8; IOPM_SIZE]);
        assert_eq!(route(&facts, &v12, &m, &i), Route::L0);
        let gp = ExitFacts {
            code: ExitCode::Exception(13),
            ..facts
        };
        assert_eq!(route(&gp, &v12, &m, &i), Route::L1);
    }

    #[test]
    fn physical_nmis_stay_with_l0() {
        let mut v12 = ControlArea::new();
        v12.intercept_misc1 = InterceptMisc1::NMI.bits();
        let nmi = ExitFacts {
            code: ExitCode::Nmi,
            exit_info1: 0,
            rcx: 0,
        };
        let (m, i) = ([0u8; MSRPM_SIZE], [0u8; IOPM_SIZE]);
        assert_eq!(route(&nmi, &v12, &m, &i), Route::L0);
        v12.intercept_misc1 = u32::MAX;
        assert_eq!(route(&nmi, &v12, &m, &i), Route::L0);
    }
}

/// The named-flag table [`intercept_bit_of`] replaced (tests only).
#[cfg(test)]
mod reference {
    use super::InterceptBit;
    use crate::exit::ExitCode;
    use crate::intercept::{InterceptMisc1, InterceptMisc2, InterceptMisc3};

    /// The position of a single-flag `InterceptMisc*` value.
    const fn pos(bits: u32) -> u32 {
        bits.trailing_zeros()
    }

    /// The intercept bit of each exit code, spelt out by name: the reference
    /// [`intercept_bit_of`]'s arithmetic on Appendix C codes must match.
    ///
    /// `None` for exits no intercept bit controls (NPF, the AVIC exits,
    /// VMGEXIT, VMEXIT_INVALID, unknown codes) and for register or vector
    /// numbers out of range (CR16, exception 32: not produced by
    /// [`ExitCode::from_raw`]). MSR and IOIO exits map to MSR_PROT and
    /// IOIO_PROT; the permission maps then refine them (see [`route_exit`]).
    /// [`ExitCode::Rdtsc`] maps to the RDTSC bit, which under QEMU TCG also
    /// covers RDTSCP.
    pub(super) fn reference_bit_of(code: ExitCode) -> Option<InterceptBit> {
        use ExitCode as C;
        use InterceptBit::{Misc1, Misc2, Misc3};
        type M1 = InterceptMisc1;
        type M2 = InterceptMisc2;
        type M3 = InterceptMisc3;
        let bit = match code {
            C::CrRead(n) if n < 16 => InterceptBit::Cr(u32::from(n)),
            C::CrWrite(n) if n < 16 => InterceptBit::Cr(16 + u32::from(n)),
            C::DrRead(n) if n < 16 => InterceptBit::Dr(u32::from(n)),
            C::DrWrite(n) if n < 16 => InterceptBit::Dr(16 + u32::from(n)),
            C::Exception(v) if v < 32 => InterceptBit::Exception(u32::from(v)),
            C::CrRead(_) | C::CrWrite(_) | C::DrRead(_) | C::DrWrite(_) | C::Exception(_) => {
                return None
            }
            C::Intr => Misc1(pos(M1::INTR.bits())),
            C::Nmi => Misc1(pos(M1::NMI.bits())),
            C::Smi => Misc1(pos(M1::SMI.bits())),
            C::Init => Misc1(pos(M1::INIT.bits())),
            C::Vintr => Misc1(pos(M1::VINTR.bits())),
            C::Cr0SelWrite => Misc1(pos(M1::CR0_SEL_WRITE.bits())),
            C::IdtrRead => Misc1(pos(M1::IDTR_READ.bits())),
            C::GdtrRead => Misc1(pos(M1::GDTR_READ.bits())),
            C::LdtrRead => Misc1(pos(M1::LDTR_READ.bits())),
            C::TrRead => Misc1(pos(M1::TR_READ.bits())),
            C::IdtrWrite => Misc1(pos(M1::IDTR_WRITE.bits())),
            C::GdtrWrite => Misc1(pos(M1::GDTR_WRITE.bits())),
            C::LdtrWrite => Misc1(pos(M1::LDTR_WRITE.bits())),
            C::TrWrite => Misc1(pos(M1::TR_WRITE.bits())),
            C::Rdtsc => Misc1(pos(M1::RDTSC.bits())),
            C::Rdpmc => Misc1(pos(M1::RDPMC.bits())),
            C::Pushf => Misc1(pos(M1::PUSHF.bits())),
            C::Popf => Misc1(pos(M1::POPF.bits())),
            C::Cpuid => Misc1(pos(M1::CPUID.bits())),
            C::Rsm => Misc1(pos(M1::RSM.bits())),
            C::Iret => Misc1(pos(M1::IRET.bits())),
            C::Swint => Misc1(pos(M1::INTN.bits())),
            C::Invd => Misc1(pos(M1::INVD.bits())),
            C::Pause => Misc1(pos(M1::PAUSE.bits())),
            C::Hlt => Misc1(pos(M1::HLT.bits())),
            C::Invlpg => Misc1(pos(M1::INVLPG.bits())),
            C::Invlpga => Misc1(pos(M1::INVLPGA.bits())),
            C::Ioio => Misc1(pos(M1::IOIO_PROT.bits())),
            C::Msr => Misc1(pos(M1::MSR_PROT.bits())),
            C::TaskSwitch => Misc1(pos(M1::TASK_SWITCH.bits())),
            C::FerrFreeze => Misc1(pos(M1::FERR_FREEZE.bits())),
            C::Shutdown => Misc1(pos(M1::SHUTDOWN.bits())),
            C::Vmrun => Misc2(pos(M2::VMRUN.bits())),
            C::Vmmcall => Misc2(pos(M2::VMMCALL.bits())),
            C::Vmload => Misc2(pos(M2::VMLOAD.bits())),
            C::Vmsave => Misc2(pos(M2::VMSAVE.bits())),
            C::Stgi => Misc2(pos(M2::STGI.bits())),
            C::Clgi => Misc2(pos(M2::CLGI.bits())),
            C::Skinit => Misc2(pos(M2::SKINIT.bits())),
            C::Rdtscp => Misc2(pos(M2::RDTSCP.bits())),
            C::Icebp => Misc2(pos(M2::ICEBP.bits())),
            C::Wbinvd => Misc2(pos(M2::WBINVD.bits())),
            C::Monitor => Misc2(pos(M2::MONITOR.bits())),
            C::Mwait => Misc2(pos(M2::MWAIT.bits())),
            C::MwaitConditional => Misc2(pos(M2::MWAIT_CONDITIONAL.bits())),
            C::Xsetbv => Misc2(pos(M2::XSETBV.bits())),
            C::Rdpru => Misc2(pos(M2::RDPRU.bits())),
            C::EferWriteTrap => Misc2(pos(M2::EFER_WRITE_TRAP.bits())),
            C::CrWriteTrap(n) if n < 16 => Misc2(16 + u32::from(n)),
            C::CrWriteTrap(_) => return None,
            C::Invlpgb => Misc3(pos(M3::INVLPGB.bits())),
            C::InvlpgbIllegal => Misc3(pos(M3::INVLPGB_ILLEGAL.bits())),
            C::Invpcid => Misc3(pos(M3::INVPCID.bits())),
            C::Mcommit => Misc3(pos(M3::MCOMMIT.bits())),
            C::Tlbsync => Misc3(pos(M3::TLBSYNC.bits())),
            C::BusLock => Misc3(pos(M3::BUS_LOCK.bits())),
            C::IdleHlt => Misc3(pos(M3::IDLE_HLT.bits())),
            C::Npf
            | C::AvicIncompleteIpi
            | C::AvicNoaccel
            | C::Vmgexit
            | C::Invalid
            | C::Unknown(_) => return None,
        };
        Some(bit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::{AddressSize, IoDirection};
    use crate::intercept::InterceptMisc2;
    use crate::intercept::{CrIntercepts, DrIntercepts, ExceptionIntercepts};
    use crate::iopm::{self, IOPM_SIZE};
    use crate::msrpm::{self, MSRPM_SIZE};
    use std::boxed::Box;
    use std::vec::Vec;

    fn maps() -> (Box<[u8; MSRPM_SIZE]>, Box<[u8; IOPM_SIZE]>) {
        (Box::new([0; MSRPM_SIZE]), Box::new([0; IOPM_SIZE]))
    }

    fn facts(code: ExitCode) -> ExitFacts {
        ExitFacts {
            code,
            exit_info1: 0,
            rcx: 0,
        }
    }

    /// Every exit code the decoder knows, plus a few it does not.
    fn all_codes() -> Vec<ExitCode> {
        let mut codes: Vec<ExitCode> = (0..0x1000).map(ExitCode::from_raw).collect();
        codes.push(ExitCode::Invalid);
        codes.push(ExitCode::Unknown(0x1_0000_0000));
        codes
    }

    #[test]
    fn intercept_bits_follow_appendix_c() {
        // Appendix C lays the codes out in the order of Table B-1's bits:
        // 0x00-0x3F the CR/DR words, 0x40-0x5F the exception vectors,
        // 0x60-0x7F misc1, 0x80-0x9F misc2, 0xA0-0xA6 misc3.
        for code in all_codes() {
            let raw = code.to_raw();
            let expected = match raw {
                0x00..=0x0F => Some(InterceptBit::Cr(raw as u32)),
                0x10..=0x1F => Some(InterceptBit::Cr(raw as u32)),
                0x20..=0x3F => Some(InterceptBit::Dr(raw as u32 - 0x20)),
                0x40..=0x5F => Some(InterceptBit::Exception(raw as u32 - 0x40)),
                0x60..=0x7F => Some(InterceptBit::Misc1(raw as u32 - 0x60)),
                0x80..=0x9F => Some(InterceptBit::Misc2(raw as u32 - 0x80)),
                0xA0..=0xA6 => Some(InterceptBit::Misc3(raw as u32 - 0xA0)),
                _ => None,
            };
            assert_eq!(intercept_bit_of(code), expected, "{code:?}");
        }
    }

    /// The Appendix C arithmetic gives every code the bit the named-flag
    /// table gives it, also codes `from_raw` never makes (out-of-range
    /// registers and vectors, `Unknown` holding a known code).
    #[test]
    fn intercept_bits_match_the_reference_table() {
        let mut codes = all_codes();
        for n in [16u8, 17, 31, 32, 0xFF] {
            codes.extend([
                ExitCode::CrRead(n),
                ExitCode::CrWrite(n),
                ExitCode::DrRead(n),
                ExitCode::DrWrite(n),
                ExitCode::Exception(n),
                ExitCode::CrWriteTrap(n),
            ]);
        }
        for raw in [0, 0x10, 0x40, 0x52, 0x60, 0x72, 0x7B, 0x7C, 0x81, 0xA6] {
            codes.push(ExitCode::Unknown(raw));
        }
        for code in codes {
            assert_eq!(
                intercept_bit_of(code),
                super::reference::reference_bit_of(code),
                "{code:?}"
            );
        }
    }

    /// The lazy form routes every code as the eager one, and asks for L1's
    /// maps only for an MSR or IOIO exit that vmcb12 intercepts.
    /// Controls whose intercept vectors are all ones.
    fn intercepts_everything() -> ControlArea {
        let mut c = ControlArea::new();
        c.intercept_cr = u32::MAX;
        c.intercept_dr = u32::MAX;
        c.intercept_exceptions = u32::MAX;
        c.intercept_misc1 = u32::MAX;
        c.intercept_misc2 = u32::MAX;
        c.intercept_misc3 = u32::MAX;
        c
    }

    #[test]
    fn lazy_maps_only_for_intercepted_msr_and_ioio() {
        let (msrpm, iopm) = maps();
        let mut read_fs = Box::new([0u8; MSRPM_SIZE]);
        msrpm::set_read_intercept(&mut read_fs, 0xC000_0100, true).unwrap();
        let mut port80 = Box::new([0u8; IOPM_SIZE]);
        iopm::set_intercept(&mut port80, 0x80..=0x80, true);
        let everything = intercepts_everything();
        for ctl in [ControlArea::new(), everything] {
            for code in all_codes() {
                for (info, rcx) in [(0, 0xC000_0100), (0x80_0010, 0), (1, 0x10)] {
                    let exit = ExitFacts {
                        code,
                        exit_info1: info,
                        rcx,
                    };
                    for (m, i) in [(&msrpm, &iopm), (&read_fs, &port80)] {
                        let mut asked = false;
                        let lazy = route_exit_lazy(&exit, &ctl, || {
                            asked = true;
                            ((&**m).into(), (&**i).into())
                        });
                        assert_eq!(lazy, route(&exit, &ctl, m, i), "{exit:?}");
                        let needs = matches!(code, ExitCode::Msr | ExitCode::Ioio)
                            && intercept_bit_of(code).is_some_and(|b| b.is_set(&ctl));
                        assert_eq!(asked, needs, "{exit:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn intercept_bits_match_the_named_flags() {
        let cases = [
            (
                ExitCode::CrRead(3),
                InterceptBit::Cr(CrIntercepts::CR3_READ.bits().trailing_zeros()),
            ),
            (
                ExitCode::CrWrite(8),
                InterceptBit::Cr(CrIntercepts::CR8_WRITE.bits().trailing_zeros()),
            ),
            (
                ExitCode::DrWrite(7),
                InterceptBit::Dr(DrIntercepts::DR7_WRITE.bits().trailing_zeros()),
            ),
            (
                ExitCode::Exception(14),
                InterceptBit::Exception(ExceptionIntercepts::PF.bits().trailing_zeros()),
            ),
            (ExitCode::Rdtsc, InterceptBit::Misc1(14)),
            (ExitCode::Cpuid, InterceptBit::Misc1(18)),
            (ExitCode::Msr, InterceptBit::Misc1(28)),
            (ExitCode::Ioio, InterceptBit::Misc1(27)),
            (ExitCode::Vmrun, InterceptBit::Misc2(0)),
            (ExitCode::Rdtscp, InterceptBit::Misc2(7)),
            (ExitCode::CrWriteTrap(3), InterceptBit::Misc2(19)),
            (ExitCode::IdleHlt, InterceptBit::Misc3(6)),
        ];
        for (code, bit) in cases {
            assert_eq!(intercept_bit_of(code), Some(bit), "{code:?}");
        }
        for code in [
            ExitCode::CrRead(16),
            ExitCode::CrWrite(16),
            ExitCode::DrRead(16),
            ExitCode::DrWrite(16),
            ExitCode::Exception(32),
            ExitCode::CrWriteTrap(16),
            ExitCode::Npf,
            ExitCode::Invalid,
            ExitCode::Unknown(0xA7),
        ] {
            assert_eq!(intercept_bit_of(code), None, "{code:?}");
        }
    }

    #[test]
    fn is_set_reads_the_right_word() {
        let mut c = ControlArea::new();
        c.intercept_dr = 1 << 5;
        assert!(InterceptBit::Dr(5).is_set(&c));
        for other in [
            InterceptBit::Cr(5),
            InterceptBit::Exception(5),
            InterceptBit::Misc1(5),
            InterceptBit::Misc2(5),
            InterceptBit::Misc3(5),
            InterceptBit::Dr(4),
            InterceptBit::Dr(37), // 5 + 32: no wrap-around
        ] {
            assert!(!other.is_set(&c), "{other:?}");
        }
    }

    /// Sets `bit` in `ctl`.
    fn set(ctl: &mut ControlArea, bit: InterceptBit) {
        match bit {
            InterceptBit::Cr(b) => ctl.intercept_cr |= 1 << b,
            InterceptBit::Dr(b) => ctl.intercept_dr |= 1 << b,
            InterceptBit::Exception(b) => ctl.intercept_exceptions |= 1 << b,
            InterceptBit::Misc1(b) => ctl.intercept_misc1 |= 1 << b,
            InterceptBit::Misc2(b) => ctl.intercept_misc2 |= 1 << b,
            InterceptBit::Misc3(b) => ctl.intercept_misc3 |= 1 << b,
        }
    }

    #[test]
    fn plain_exits_follow_their_bit() {
        // With maps that intercept everything, MSR/IOIO exits also follow
        // just their bit.
        let msrpm = Box::new([0xFF; MSRPM_SIZE]);
        let iopm = Box::new([0xFF; IOPM_SIZE]);
        let everything = intercepts_everything();
        // #MC, INTR and NMI are L0's whatever the bits say
        // (machine_checks_stay_with_l0, physical_interrupts_stay_l0s).
        for code in all_codes()
            .into_iter()
            .filter(|c| !matches!(c, ExitCode::Exception(18) | ExitCode::Intr | ExitCode::Nmi))
        {
            let mut exit = facts(code);
            exit.exit_info1 = if code == ExitCode::Ioio { 0x80_0010 } else { 0 };
            let nothing = ControlArea::new();
            assert_eq!(route(&exit, &nothing, &msrpm, &iopm), Route::L0, "{code:?}");
            match intercept_bit_of(code) {
                Some(bit) => {
                    let mut only = ControlArea::new();
                    set(&mut only, bit);
                    assert_eq!(route(&exit, &only, &msrpm, &iopm), Route::L1, "{code:?}");
                    // Every other bit set, this one clear: still L0's.
                    let mut all_but = everything;
                    match bit {
                        InterceptBit::Cr(b) => all_but.intercept_cr &= !(1 << b),
                        InterceptBit::Dr(b) => all_but.intercept_dr &= !(1 << b),
                        InterceptBit::Exception(b) => all_but.intercept_exceptions &= !(1 << b),
                        InterceptBit::Misc1(b) => all_but.intercept_misc1 &= !(1 << b),
                        InterceptBit::Misc2(b) => all_but.intercept_misc2 &= !(1 << b),
                        InterceptBit::Misc3(b) => all_but.intercept_misc3 &= !(1 << b),
                    }
                    assert_eq!(route(&exit, &all_but, &msrpm, &iopm), Route::L0, "{code:?}");
                }
                None => {
                    assert_eq!(
                        route(&exit, &everything, &msrpm, &iopm),
                        Route::L0,
                        "{code:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn exit_table() {
        let (msrpm, iopm) = maps();
        let m1 = |f: InterceptMisc1| {
            let mut c = ControlArea::new();
            c.intercept_misc1 = f.bits();
            c
        };
        let m2 = |f: InterceptMisc2| {
            let mut c = ControlArea::new();
            c.intercept_misc2 = f.bits();
            c
        };
        let cr = |f: CrIntercepts| {
            let mut c = ControlArea::new();
            c.intercept_cr = f.bits();
            c
        };
        let exc = |f: ExceptionIntercepts| {
            let mut c = ControlArea::new();
            c.intercept_exceptions = f.bits();
            c
        };
        let none = ControlArea::new();
        let cases = [
            (ExitCode::Cpuid, m1(InterceptMisc1::CPUID), Route::L1),
            (ExitCode::Cpuid, m1(InterceptMisc1::HLT), Route::L0),
            (ExitCode::Hlt, m1(InterceptMisc1::HLT), Route::L1),
            // Physical interrupts are L0's, whatever L1 intercepts.
            (ExitCode::Intr, m1(InterceptMisc1::INTR), Route::L0),
            (ExitCode::Intr, none, Route::L0),
            (ExitCode::Nmi, m1(InterceptMisc1::INTR), Route::L0),
            (ExitCode::Nmi, m1(InterceptMisc1::NMI), Route::L0),
            (ExitCode::Smi, none, Route::L0),
            (ExitCode::Init, none, Route::L0),
            (ExitCode::Shutdown, m1(InterceptMisc1::SHUTDOWN), Route::L1),
            // RDTSC (and TCG's RDTSCP) follow the RDTSC bit...
            (ExitCode::Rdtsc, m1(InterceptMisc1::RDTSC), Route::L1),
            (ExitCode::Rdtsc, m2(InterceptMisc2::RDTSCP), Route::L0),
            // ... and a real RDTSCP exit the RDTSCP bit.
            (ExitCode::Rdtscp, m2(InterceptMisc2::RDTSCP), Route::L1),
            (ExitCode::Rdtscp, m1(InterceptMisc1::RDTSC), Route::L0),
            (ExitCode::Vmrun, m2(InterceptMisc2::VMRUN), Route::L1),
            (ExitCode::Vmmcall, m2(InterceptMisc2::VMRUN), Route::L0),
            (ExitCode::Vmmcall, m2(InterceptMisc2::VMMCALL), Route::L1),
            (ExitCode::CrWrite(3), cr(CrIntercepts::CR3_WRITE), Route::L1),
            (ExitCode::CrWrite(3), cr(CrIntercepts::CR3_READ), Route::L0),
            (ExitCode::CrRead(3), cr(CrIntercepts::CR3_READ), Route::L1),
            (
                ExitCode::CrWrite(0),
                m1(InterceptMisc1::CR0_SEL_WRITE),
                Route::L0,
            ),
            (
                ExitCode::Cr0SelWrite,
                m1(InterceptMisc1::CR0_SEL_WRITE),
                Route::L1,
            ),
            (
                ExitCode::Exception(14),
                exc(ExceptionIntercepts::PF),
                Route::L1,
            ),
            (
                ExitCode::Exception(14),
                exc(ExceptionIntercepts::GP),
                Route::L0,
            ),
            (
                ExitCode::Exception(6),
                exc(ExceptionIntercepts::UD),
                Route::L1,
            ),
        ];
        for (code, ctl, expected) in cases {
            assert_eq!(
                route(&facts(code), &ctl, &msrpm, &iopm),
                expected,
                "{code:?} under {:#x}/{:#x}/{:#x}/{:#x}",
                ctl.intercept_cr,
                ctl.intercept_exceptions,
                ctl.intercept_misc1,
                ctl.intercept_misc2
            );
        }
    }

    #[test]
    fn npf_and_friends_are_always_l0() {
        let msrpm = Box::new([0xFF; MSRPM_SIZE]);
        let iopm = Box::new([0xFF; IOPM_SIZE]);
        let mut all = ControlArea::new();
        all.intercept_cr = u32::MAX;
        all.intercept_dr = u32::MAX;
        all.intercept_exceptions = u32::MAX;
        all.intercept_misc1 = u32::MAX;
        all.intercept_misc2 = u32::MAX;
        all.intercept_misc3 = u32::MAX;
        all.nested_ctl = 1; // even if L1 (illegally) asked for nested paging
        for code in [
            ExitCode::Npf,
            ExitCode::Invalid,
            ExitCode::Unknown(0xFFFF),
            ExitCode::AvicIncompleteIpi,
            ExitCode::AvicNoaccel,
            ExitCode::Vmgexit,
        ] {
            assert_eq!(
                route(&facts(code), &all, &msrpm, &iopm),
                Route::L0,
                "{code:?}"
            );
        }
    }

    fn msr_exit(msr: u64, write: bool) -> ExitFacts {
        ExitFacts {
            code: ExitCode::Msr,
            exit_info1: u64::from(write),
            rcx: msr,
        }
    }

    #[test]
    fn msr_exits_follow_l1_msrpm() {
        const FS_BASE: u32 = 0xC000_0100;
        let (mut read_only, iopm) = maps();
        msrpm::set_read_intercept(&mut read_only, FS_BASE, true).unwrap();
        let (mut write_only, _) = maps();
        msrpm::set_write_intercept(&mut write_only, FS_BASE, true).unwrap();
        let prot = {
            let mut c = ControlArea::new();
            c.intercept_misc1 = InterceptMisc1::MSR_PROT.bits();
            c
        };
        let fs = u64::from(FS_BASE);
        // Reads.
        assert_eq!(
            route(&msr_exit(fs, false), &prot, &read_only, &iopm),
            Route::L1
        );
        assert_eq!(
            route(&msr_exit(fs, false), &prot, &write_only, &iopm),
            Route::L0
        );
        // Writes.
        assert_eq!(
            route(&msr_exit(fs, true), &prot, &write_only, &iopm),
            Route::L1
        );
        assert_eq!(
            route(&msr_exit(fs, true), &prot, &read_only, &iopm),
            Route::L0
        );
        // Only ECX counts: junk in RCX's high half is ignored.
        let junk = (0xDEAD_u64 << 32) | fs;
        assert_eq!(
            route(&msr_exit(junk, false), &prot, &read_only, &iopm),
            Route::L1
        );
        // A neighbour is not intercepted.
        assert_eq!(
            route(&msr_exit(fs + 1, false), &prot, &read_only, &iopm),
            Route::L0
        );
        // Outside the three ranges: always L1's with MSR_PROT...
        let (empty, _) = maps();
        for msr in [0x1_0000, 0x2000, 0x4000_0000, 0xC000_2000, 0xFFFF_FFFF] {
            for write in [false, true] {
                let exit = msr_exit(msr, write);
                assert_eq!(route(&exit, &prot, &empty, &iopm), Route::L1, "{msr:#x}");
                // ... and L0's without it, whatever the map.
                let full = Box::new([0xFF; MSRPM_SIZE]);
                let none = ControlArea::new();
                assert_eq!(route(&exit, &none, &full, &iopm), Route::L0, "{msr:#x}");
            }
        }
        // No MSR_PROT: L0's even for MSRs L1's map intercepts.
        let none = ControlArea::new();
        assert_eq!(
            route(&msr_exit(fs, false), &none, &read_only, &iopm),
            Route::L0
        );
    }

    fn io_exit(port: u16, size: u8) -> ExitFacts {
        let info = IoioInfo {
            port,
            direction: IoDirection::Out,
            string: false,
            rep: false,
            size,
            address_size: Some(AddressSize::Bits64),
            segment: 0,
        };
        ExitFacts {
            code: ExitCode::Ioio,
            exit_info1: info.to_exit_info1(),
            rcx: 0,
        }
    }

    #[test]
    fn ioio_exits_follow_l1_iopm() {
        let (msrpm, mut port80) = maps();
        iopm::set_intercept(&mut port80, 0x80..=0x80, true);
        let prot = {
            let mut c = ControlArea::new();
            c.intercept_misc1 = InterceptMisc1::IOIO_PROT.bits();
            c
        };
        let cases = [
            (0x80, 1, Route::L1),
            (0x80, 4, Route::L1),
            (0x7F, 2, Route::L1), // 0x7F-0x80 touches 0x80
            (0x7D, 4, Route::L1), // 0x7D-0x80
            (0x7F, 1, Route::L0),
            (0x7C, 4, Route::L0), // 0x7C-0x7F stops short
            (0x81, 1, Route::L0),
            (0xE9, 1, Route::L0),
        ];
        for (port, size, expected) in cases {
            assert_eq!(
                route(&io_exit(port, size), &prot, &msrpm, &port80),
                expected,
                "port {port:#x} size {size}"
            );
        }
        // An IN is routed the same way.
        let mut exit = io_exit(0x80, 1);
        exit.exit_info1 |= 1;
        assert_eq!(route(&exit, &prot, &msrpm, &port80), Route::L1);
        // L1's wrap-around bits decide accesses running past 0xFFFF.
        let (_, mut wrap) = maps();
        iopm::set_wrap_intercept(&mut wrap, true);
        assert_eq!(route(&io_exit(0xFFFF, 1), &prot, &msrpm, &wrap), Route::L0);
        assert_eq!(route(&io_exit(0xFFFF, 2), &prot, &msrpm, &wrap), Route::L1);
        // Without IOIO_PROT, L0's whatever the map says.
        let full = Box::new([0xFF; IOPM_SIZE]);
        let none = ControlArea::new();
        for (port, size, _) in cases {
            assert_eq!(route(&io_exit(port, size), &none, &msrpm, &full), Route::L0);
        }
        // A malformed EXITINFO1 (no size bit) goes to L1 with IOIO_PROT.
        let mut bad = io_exit(0xE9, 1);
        bad.exit_info1 &= !0x70;
        assert_eq!(route(&bad, &prot, &msrpm, &port80), Route::L1);
        assert_eq!(route(&bad, &none, &msrpm, &port80), Route::L0);
    }

    /// L1's maps outside its RAM read as all-ones: with MSR_PROT /
    /// IOIO_PROT every access is L1's; without them nothing changes.
    #[test]
    fn maps_outside_ram_intercept_everything() {
        use crate::nested::map_view::{IopmView, MsrpmView};
        let prot = {
            let mut c = ControlArea::new();
            c.intercept_misc1 = (InterceptMisc1::MSR_PROT | InterceptMisc1::IOIO_PROT).bits();
            c
        };
        let none = ControlArea::new();
        let (m, i) = (MsrpmView::unbacked(), IopmView::unbacked());
        for exit in [
            msr_exit(0xC000_0100, false),
            msr_exit(0xC000_0100, true),
            msr_exit(0x10, false),
            io_exit(0x80, 1),
            io_exit(0xE9, 4),
        ] {
            assert_eq!(route_exit(&exit, &prot, m, i), Route::L1, "{exit:?}");
            assert_eq!(route_exit(&exit, &none, m, i), Route::L0, "{exit:?}");
        }
        // Half of the MSRPM in RAM (zeros): FS_BASE (byte 0x840) passes,
        // the C001_xxxx range (bytes 0x1000 on) exits.
        let ram = std::vec![0u8; 0x1000];
        let half = MsrpmView::in_ram(&ram, 0);
        let exit = msr_exit(0xC000_0100, false);
        assert_eq!(route_exit(&exit, &prot, half, i), Route::L0);
        let exit = msr_exit(0xC001_0000, false);
        assert_eq!(route_exit(&exit, &prot, half, i), Route::L1);
    }
}
