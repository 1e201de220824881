//! EVENTINJ (VMCB 0x0A8) and EXITINTINFO (VMCB 0x088): one 64-bit format
//! for an interrupt or exception (APM 15.20 Figure 15-5, 15.7.2 Figure 15-1).
//!
//! ```text
//! 63........32 31 30....12 11  10..8  7....0
//!  ERRORCODE   V  reserved  EV  TYPE  VECTOR
//! ```

use core::fmt;

/// The TYPE field (bits 10:8), APM Table 15-1 / 15-11. Values 1, 5, 6
/// and 7 are reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EventType {
    /// 0: external or virtual interrupt (INTR).
    ExternalInterrupt = 0,
    /// 2: NMI (the vector is ignored).
    Nmi = 2,
    /// 3: exception (fault or trap), including INT1/INT3/INTO.
    Exception = 3,
    /// 4: software interrupt (INTn, opcode CDh only).
    SoftwareInterrupt = 4,
}

impl EventType {
    /// Decodes a TYPE value; `None` for the reserved ones.
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            0 => Some(Self::ExternalInterrupt),
            2 => Some(Self::Nmi),
            3 => Some(Self::Exception),
            4 => Some(Self::SoftwareInterrupt),
            _ => None,
        }
    }
}

/// An EVENTINJ or EXITINTINFO value.
///
/// A newtype over the raw `u64` so that nothing is lost between reading
/// EXITINTINFO and writing EVENTINJ, including reserved values a nested
/// guest may have put there.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct EventInfo(pub u64);

/// EVENTINJ: the event VMRUN delivers before the first guest instruction.
pub type EventInj = EventInfo;
/// EXITINTINFO: the event the guest was delivering when it exited.
pub type ExitIntInfo = EventInfo;

/// Why VMRUN would refuse an EVENTINJ value with VMEXIT_INVALID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IllegalEvent {
    /// TYPE is 1, 5, 6 or 7.
    ReservedType(u8),
    /// TYPE is exception but the vector names no exception (NMI's 2, the
    /// reserved vectors, or 32 and above).
    NotAnException(u8),
}

impl EventInfo {
    /// No event (V clear).
    pub const NONE: Self = Self(0);
    /// Bit 31: V, an event is present.
    pub const VALID: u64 = 1 << 31;
    /// Bit 11: EV, the error code in bits 63:32 is pushed.
    pub const ERROR_CODE_VALID: u64 = 1 << 11;
    /// Shift of TYPE.
    pub const TYPE_SHIFT: u32 = 8;
    /// Bits 10:8: TYPE.
    pub const TYPE_MASK: u64 = 0x7 << 8;
    /// Bits 7:0: VECTOR.
    pub const VECTOR_MASK: u64 = 0xFF;
    /// Bits 30:12: reserved (SBZ).
    pub const RESERVED_MASK: u64 = 0x7FFF_F000;

    /// A valid event without an error code.
    pub const fn new(vector: u8, kind: EventType) -> Self {
        Self(Self::VALID | ((kind as u64) << Self::TYPE_SHIFT) | vector as u64)
    }

    /// `self` with EV set and `error_code` in bits 63:32.
    pub const fn with_error_code(self, error_code: u32) -> Self {
        Self((self.0 & 0xFFFF_FFFF) | Self::ERROR_CODE_VALID | ((error_code as u64) << 32))
    }

    /// An external interrupt with `vector`.
    pub const fn external_interrupt(vector: u8) -> Self {
        Self::new(vector, EventType::ExternalInterrupt)
    }

    /// An NMI (vector field set to 2 for readability; hardware ignores it).
    pub const fn nmi() -> Self {
        Self::new(2, EventType::Nmi)
    }

    /// An exception without an error code.
    pub const fn exception(vector: u8) -> Self {
        Self::new(vector, EventType::Exception)
    }

    /// An exception that pushes `error_code`.
    pub const fn exception_with_error_code(vector: u8, error_code: u32) -> Self {
        Self::exception(vector).with_error_code(error_code)
    }

    /// A software interrupt (INTn). Needs NRIP support to inject properly
    /// (APM 15.20); emulate it otherwise.
    pub const fn software_interrupt(vector: u8) -> Self {
        Self::new(vector, EventType::SoftwareInterrupt)
    }

    /// V: the field holds an event.
    pub const fn is_valid(self) -> bool {
        self.0 & Self::VALID != 0
    }

    /// VECTOR (bits 7:0).
    pub const fn vector(self) -> u8 {
        (self.0 & Self::VECTOR_MASK) as u8
    }

    /// TYPE as stored, reserved values included.
    pub const fn raw_type(self) -> u8 {
        ((self.0 & Self::TYPE_MASK) >> Self::TYPE_SHIFT) as u8
    }

    /// TYPE, `None` if reserved.
    pub const fn event_type(self) -> Option<EventType> {
        EventType::from_raw(self.raw_type())
    }

    /// EV: an error code is pushed.
    pub const fn error_code_valid(self) -> bool {
        self.0 & Self::ERROR_CODE_VALID != 0
    }

    /// The error code if EV is set.
    pub const fn error_code(self) -> Option<u32> {
        if self.error_code_valid() {
            Some((self.0 >> 32) as u32)
        } else {
            None
        }
    }

    /// Bits 30:12, which should be zero.
    pub const fn reserved_bits(self) -> u64 {
        self.0 & Self::RESERVED_MASK
    }

    /// Whether VMRUN accepts this as EVENTINJ (APM 15.20): it exits with
    /// VMEXIT_INVALID when TYPE is reserved, or when TYPE is exception and
    /// the vector "does not correspond to an exception (this includes
    /// vector 2, which is an NMI)". An invalid (V = 0) field is ignored and
    /// therefore legal.
    ///
    /// Reserved vectors (9, 15, 20, 22-27, 31) count as not-an-exception,
    /// matching hardware according to KVM's nested SVM checks. Not checked
    /// here, because VMRUN does not fail on them: the SBZ bits 30:12, and EV
    /// on a type that pushes no error code. Events impossible in the guest's
    /// mode (e.g. #BR in 64-bit mode) also fail VMRUN but depend on guest
    /// state, not on this field.
    pub const fn check(self) -> Result<(), IllegalEvent> {
        if !self.is_valid() {
            return Ok(());
        }
        match self.event_type() {
            None => Err(IllegalEvent::ReservedType(self.raw_type())),
            Some(EventType::Exception) if !is_exception_vector(self.vector()) => {
                Err(IllegalEvent::NotAnException(self.vector()))
            }
            Some(_) => Ok(()),
        }
    }

    /// `check().is_ok()`.
    pub const fn is_legal(self) -> bool {
        self.check().is_ok()
    }
}

impl fmt::Debug for EventInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.is_valid() {
            return write!(f, "EventInfo(none, {:#x})", self.0);
        }
        let mut s = f.debug_struct("EventInfo");
        match self.event_type() {
            Some(kind) => s.field("type", &kind),
            None => s.field("type", &self.raw_type()),
        };
        s.field("vector", &self.vector());
        if let Some(ec) = self.error_code() {
            s.field("error_code", &ec);
        }
        if self.reserved_bits() != 0 {
            s.field("reserved", &self.reserved_bits());
        }
        s.finish()
    }
}

/// Whether `vector` is an architecturally defined exception on AMD64:
/// #DE 0, #DB 1, #BP 3, #OF 4, #BR 5, #UD 6, #NM 7, #DF 8, #TS 10, #NP 11,
/// #SS 12, #GP 13, #PF 14, #MF 16, #AC 17, #MC 18, #XF 19, #CP 21, #HV 28,
/// #VC 29, #SX 30. Vector 2 is the NMI, not an exception.
pub const fn is_exception_vector(vector: u8) -> bool {
    const DEFINED: u32 = (1 << 0)
        | (1 << 1)
        | (1 << 3)
        | (1 << 4)
        | (1 << 5)
        | (1 << 6)
        | (1 << 7)
        | (1 << 8)
        | (1 << 10)
        | (1 << 11)
        | (1 << 12)
        | (1 << 13)
        | (1 << 14)
        | (1 << 16)
        | (1 << 17)
        | (1 << 18)
        | (1 << 19)
        | (1 << 21)
        | (1 << 28)
        | (1 << 29)
        | (1 << 30);
    vector < 32 && DEFINED & (1 << vector) != 0
}

/// Whether exception `vector` pushes an error code in protected mode:
/// #DF, #TS, #NP, #SS, #GP, #PF, #AC, #CP, #VC, #SX. (Real-mode delivery
/// pushes none.)
pub const fn exception_has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

/// Fixes an EXITINTINFO value as QEMU TCG reports it so it can be
/// re-injected through EVENTINJ or reflected to a nested hypervisor.
///
/// TCG records every event it was delivering that did not come from INTn
/// (or INT3/INTO) as TYPE = exception, external interrupts and NMIs
/// included (docs/qemu-tcg.md). Injected back unchanged, an external interrupt
/// with vector >= 32 as an "exception" makes VMRUN fail on silicon (it is
/// not an exception vector), and TCG would deliver it with exception
/// semantics. So, for a valid exception-typed value:
///
/// - vectors 32-255 become external interrupts, with EV and the error
///   code cleared (interrupts push none);
/// - vector 2 becomes an NMI. This is the ambiguous case: TCG reports a
///   real NMI and an external interrupt that happens to use vector 2 (a
///   misprogrammed PIC/APIC) identically. NMI is the only reading that can
///   be injected at all (exception vector 2 fails VMRUN) and the likely one;
///   note that an injected NMI does not block further NMIs (APM 15.20), so
///   the caller still owns NMI-blocking bookkeeping.
/// - vectors 0-31 other than 2 are left alone: an external interrupt on
///   such a vector (e.g. a PIC left at its BIOS base of 8) cannot be told
///   from the exception, and silicon reports it the same way only with the
///   correct TYPE, which TCG has already lost.
///
/// Values from silicon are never exception-typed with those vectors, so
/// the function is the identity there and safe to apply unconditionally.
///
/// TCG also records INT3/INTO as software interrupts (silicon: exceptions,
/// APM 15.7.2). That is left as is: `INT 3` (CDh 03h) is a genuine software
/// interrupt and looks the same, and either way re-injecting a software
/// interrupt needs NRIP, which TCG lacks, so such events must be emulated.
pub const fn sanitize_for_reinjection(info: EventInfo) -> EventInfo {
    if !info.is_valid() || info.raw_type() != EventType::Exception as u8 {
        return info;
    }
    let vector = info.vector();
    let keep = info.0 & EventInfo::RESERVED_MASK;
    if vector >= 32 {
        EventInfo(EventInfo::external_interrupt(vector).0 | keep)
    } else if vector == 2 {
        EventInfo(EventInfo::nmi().0 | keep)
    } else {
        info
    }
}

/// Whether `info` is a software event: INTn (TYPE 4), or INT3/INTO (TYPE 3,
/// vector 3 or 4). Their delivery pushes a return address past the
/// instruction that raised them, which VMRUN takes from NEXT_RIP when it
/// injects one (with NRIP save, APM 15.20 and 15.7.1).
pub const fn is_soft(info: EventInfo) -> bool {
    match info.event_type() {
        Some(EventType::SoftwareInterrupt) => true,
        Some(EventType::Exception) => matches!(info.vector(), 3 | 4),
        _ => false,
    }
}

/// A soft event L0 injects for L1 (vmcb12's EVENTINJ with its NEXT_RIP)
/// on a CPU without NRIP save: L0 moves RIP to `next_rip` itself, so the
/// CPU pushes it as the return address (QEMU TCG pushes the VMCB's RIP for
/// an injected TYPE 4 event), and must move it back to `old_rip` whenever
/// the event turns out not to have been delivered (KVM: svm.c
/// `svm_complete_soft_interrupt`, `soft_int_old_rip`/`soft_int_next_rip`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftEvent {
    /// RIP of the instruction that raised it (vmcb12's RIP).
    pub old_rip: u64,
    /// The return address L1 asked for (vmcb12's NEXT_RIP).
    pub next_rip: u64,
}

/// The EXITINTINFO a #VMEXIT reports (APM 15.7.2): an event still waiting
/// in EVENTINJ (`pending`, never delivered, e.g. L0 made the exit up
/// before the guest ran: KVM `nested_save_pending_event_to_vmcb12`)
/// comes first; otherwise the event the CPU was delivering when it exited
/// (`exit_int_info`), fixed up for QEMU TCG's typing.
pub const fn reported_event(pending: EventInfo, exit_int_info: EventInfo) -> EventInfo {
    if pending.is_valid() {
        pending
    } else if exit_int_info.is_valid() {
        sanitize_for_reinjection(exit_int_info)
    } else {
        EventInfo::NONE
    }
}

/// RIP as the guest must see it when `event` (the event reported at an
/// exit, or one re-injected) did not complete: back on the instruction
/// when L0 had moved RIP to the soft event's `next_rip` on a CPU without
/// NRIP save. Any exception counts, not only the soft event: an INTn whose
/// delivery raised #NP reports the #NP, and the fault is still at the INTn
/// (KVM `svm_complete_soft_interrupt`, the `!nrips` branch).
pub const fn unwind_soft_rip(
    event: EventInfo,
    rip: u64,
    soft: Option<SoftEvent>,
    host_nrips: bool,
) -> u64 {
    match soft {
        Some(s)
            if !host_nrips
                && rip == s.next_rip
                && (is_soft(event) || matches!(event.event_type(), Some(EventType::Exception))) =>
        {
            s.old_rip
        }
        _ => rip,
    }
}

/// What L0 does with EXITINTINFO after an exit it handles itself (the
/// guest that exited resumes), as KVM's `svm_complete_interrupts`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// EVENTINJ for the next VMRUN (NONE: nothing to re-inject).
    pub event_inj: EventInfo,
    /// The guest's RIP.
    pub rip: u64,
    /// NEXT_RIP for the next VMRUN (used by NRIP-save CPUs for soft events).
    pub next_rip: u64,
    /// The soft event L0 still owes the guest, if it is the one re-injected.
    pub soft: Option<SoftEvent>,
}

/// Decides the re-injection after an exit L0 handles (APM 15.7.2: the
/// event in EXITINTINFO was not delivered; the VMM re-injects it).
///
/// - Nothing was being delivered: nothing to do, and a soft event L0 was
///   tracking has been delivered.
/// - A soft event (INTn, INT3, INTO) that L0 injected itself (`soft`, with
///   RIP still where L0 left it): re-injected with the same return address
///   (NEXT_RIP on NRIP-save CPUs; RIP is already there otherwise).
/// - A soft event the guest's own instruction raised: not re-injected. RIP
///   is still on the instruction (APM 15.7.2), so the guest executes it
///   again and raises the event again; this needs no instruction length,
///   which L0 does not always have (no NRIP save under QEMU TCG).
/// - Anything else (interrupt, NMI, exception): re-injected as is, after
///   [`sanitize_for_reinjection`]; RIP unwound by [`unwind_soft_rip`].
pub const fn complete(
    exit_int_info: EventInfo,
    rip: u64,
    soft: Option<SoftEvent>,
    host_nrips: bool,
) -> Completion {
    let none = Completion {
        event_inj: EventInfo::NONE,
        rip,
        next_rip: 0,
        soft: None,
    };
    if !exit_int_info.is_valid() {
        return none;
    }
    let event = sanitize_for_reinjection(exit_int_info);
    if is_soft(event) {
        return match soft {
            Some(s) if rip == if host_nrips { s.old_rip } else { s.next_rip } => Completion {
                event_inj: event,
                rip,
                next_rip: s.next_rip,
                soft,
            },
            _ => none,
        };
    }
    Completion {
        event_inj: event,
        rip: unwind_soft_rip(event, rip, soft, host_nrips),
        next_rip: 0,
        soft: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_matches_figure_15_5() {
        // #GP(0x18): V | EV | TYPE 3 | vector 13, error code in 63:32.
        let gp = EventInfo::exception_with_error_code(13, 0x18);
        assert_eq!(gp.0, 0x0000_0018_8000_0B0D);
        // External interrupt 0x20: V | TYPE 0 | 0x20.
        assert_eq!(EventInfo::external_interrupt(0x20).0, 0x8000_0020);
        // NMI: TYPE 2.
        assert_eq!(EventInfo::nmi().0, 0x8000_0202);
        // INT 0x80: TYPE 4.
        assert_eq!(EventInfo::software_interrupt(0x80).0, 0x8000_0480);
        // #UD: TYPE 3, no EV.
        assert_eq!(EventInfo::exception(6).0, 0x8000_0306);
    }

    #[test]
    fn decode_round_trip() {
        for vector in 0..=u8::MAX {
            for kind in [
                EventType::ExternalInterrupt,
                EventType::Nmi,
                EventType::Exception,
                EventType::SoftwareInterrupt,
            ] {
                let e = EventInfo::new(vector, kind);
                assert!(e.is_valid());
                assert_eq!(e.vector(), vector);
                assert_eq!(e.event_type(), Some(kind));
                assert_eq!(e.error_code(), None);
                let with_ec = e.with_error_code(0xDEAD_BEEF);
                assert_eq!(with_ec.error_code(), Some(0xDEAD_BEEF));
                assert_eq!(with_ec.vector(), vector);
                assert_eq!(with_ec.event_type(), Some(kind));
                assert_eq!(with_ec.0 >> 32, 0xDEAD_BEEF);
                assert_eq!(with_ec.reserved_bits(), 0);
            }
        }
        // Replacing an error code does not OR the old one in.
        let e = EventInfo::exception(14)
            .with_error_code(0xFFFF_FFFF)
            .with_error_code(2);
        assert_eq!(e.error_code(), Some(2));
        assert!(!EventInfo::NONE.is_valid());
        assert_eq!(EventInfo::NONE.error_code(), None);
    }

    #[test]
    fn reserved_types_are_illegal() {
        for raw_type in [1u64, 5, 6, 7] {
            let e = EventInfo(EventInfo::VALID | (raw_type << 8) | 0x20);
            assert_eq!(e.event_type(), None);
            assert_eq!(e.check(), Err(IllegalEvent::ReservedType(raw_type as u8)));
            // Without V nothing is injected, so nothing is illegal.
            assert!(EventInfo(e.0 & !EventInfo::VALID).is_legal());
        }
    }

    #[test]
    fn exception_vectors_legality() {
        // Independent list of the AMD64 exception vectors (APM Vol. 2
        // Table 8-1), reserved ones and NMI excluded.
        let defined = [
            0u8, 1, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 16, 17, 18, 19, 21, 28, 29, 30,
        ];
        for vector in 0..=u8::MAX {
            let e = EventInfo::exception(vector);
            if defined.contains(&vector) {
                assert_eq!(e.check(), Ok(()), "vector {vector}");
            } else {
                assert_eq!(e.check(), Err(IllegalEvent::NotAnException(vector)));
            }
        }
        assert_eq!(
            EventInfo::exception(2).check(),
            Err(IllegalEvent::NotAnException(2))
        );
        assert!(!EventInfo::exception(32).is_legal());
        assert!(!EventInfo::exception(255).is_legal());
    }

    #[test]
    fn other_types_accept_any_vector() {
        for vector in 0..=u8::MAX {
            assert!(EventInfo::external_interrupt(vector).is_legal());
            assert!(EventInfo::software_interrupt(vector).is_legal());
            assert!(EventInfo::new(vector, EventType::Nmi).is_legal());
        }
        // SBZ bits and a stray EV do not make VMRUN fail.
        let e = EventInfo(EventInfo::external_interrupt(0x30).0 | (1 << 12) | (1 << 11));
        assert!(e.is_legal());
    }

    #[test]
    fn error_code_vectors() {
        let with = [8u8, 10, 11, 12, 13, 14, 17, 21, 29, 30];
        for v in 0..=u8::MAX {
            assert_eq!(exception_has_error_code(v), with.contains(&v), "vector {v}");
        }
    }

    #[test]
    fn sanitize_tcg_external_interrupt() {
        // TCG: timer interrupt 0x20 recorded as TYPE 3.
        let tcg = EventInfo(0x8000_0320);
        let fixed = sanitize_for_reinjection(tcg);
        assert_eq!(fixed.0, 0x8000_0020);
        assert_eq!(fixed.event_type(), Some(EventType::ExternalInterrupt));
        assert!(fixed.is_legal());
        assert!(!tcg.is_legal());
        // A bogus EV/error code is dropped.
        let tcg = EventInfo(0x0000_0005_8000_0BFF);
        assert_eq!(sanitize_for_reinjection(tcg).0, 0x8000_00FF);
    }

    #[test]
    fn sanitize_tcg_nmi() {
        let tcg = EventInfo(0x8000_0302);
        let fixed = sanitize_for_reinjection(tcg);
        assert_eq!(fixed.0, 0x8000_0202);
        assert_eq!(fixed.event_type(), Some(EventType::Nmi));
    }

    #[test]
    fn sanitize_leaves_real_events_alone() {
        let cases = [
            EventInfo::NONE,
            EventInfo(0x0000_0320), // not valid: untouched
            EventInfo::exception_with_error_code(14, 0x2),
            EventInfo::exception(6),
            EventInfo::exception(8).with_error_code(0), // ambiguous, kept
            EventInfo::external_interrupt(0x30),
            EventInfo::nmi(),
            EventInfo::software_interrupt(0x80),
            EventInfo(EventInfo::VALID | (5 << 8) | 0x40), // reserved type
        ];
        for e in cases {
            assert_eq!(sanitize_for_reinjection(e), e, "{e:?}");
        }
    }

    #[test]
    fn soft_events() {
        assert!(is_soft(EventInfo::software_interrupt(0x80)));
        assert!(is_soft(EventInfo::exception(3)));
        assert!(is_soft(EventInfo::exception(4)));
        assert!(!is_soft(EventInfo::exception(6)));
        assert!(!is_soft(EventInfo::external_interrupt(3)));
        assert!(!is_soft(EventInfo::nmi()));
    }

    #[test]
    fn pending_event_is_reported_first() {
        let pending = EventInfo::external_interrupt(0x30);
        assert_eq!(reported_event(pending, EventInfo::NONE), pending);
        assert_eq!(
            reported_event(pending, EventInfo::exception(14).with_error_code(2)),
            pending
        );
        // Not pending: the CPU's EXITINTINFO, TCG typing fixed.
        assert_eq!(
            reported_event(EventInfo(0x30), EventInfo(0x8000_0341)),
            EventInfo::external_interrupt(0x41)
        );
        assert_eq!(
            reported_event(EventInfo::NONE, EventInfo(0x0000_0341)),
            EventInfo::NONE
        );
    }

    const SOFT: SoftEvent = SoftEvent {
        old_rip: 0x1000,
        next_rip: 0x1002,
    };

    #[test]
    fn nothing_to_complete() {
        let c = complete(EventInfo(0x341), 0x1002, Some(SOFT), false);
        assert_eq!(c.event_inj, EventInfo::NONE);
        assert_eq!((c.rip, c.next_rip, c.soft), (0x1002, 0, None));
    }

    #[test]
    fn interrupted_interrupt_is_reinjected() {
        // TCG's report of an external interrupt cut short by an L0 exit.
        let c = complete(EventInfo(0x8000_0330), 0x4000, None, false);
        assert_eq!(c.event_inj, EventInfo::external_interrupt(0x30));
        assert_eq!((c.rip, c.soft), (0x4000, None));
        let pf = EventInfo::exception_with_error_code(14, 2);
        assert_eq!(complete(pf, 0x4000, None, true).event_inj, pf);
        assert_eq!(
            complete(EventInfo(0x8000_0302), 0, None, false).event_inj,
            EventInfo::nmi()
        );
    }

    #[test]
    fn guests_own_int_n_is_executed_again() {
        let c = complete(EventInfo::software_interrupt(0x80), 0x7000, None, false);
        assert_eq!((c.event_inj, c.rip), (EventInfo::NONE, 0x7000));
        // A tracked soft event, but RIP is elsewhere: the guest's own.
        let c = complete(
            EventInfo::software_interrupt(0x80),
            0x7000,
            Some(SOFT),
            false,
        );
        assert_eq!((c.event_inj, c.soft), (EventInfo::NONE, None));
    }

    #[test]
    fn l0s_soft_event_is_reinjected_with_its_return_address() {
        let e = EventInfo::software_interrupt(0x30);
        // No NRIP save: RIP stays on next_rip, TCG pushes it again.
        let c = complete(e, SOFT.next_rip, Some(SOFT), false);
        assert_eq!((c.event_inj, c.rip, c.soft), (e, SOFT.next_rip, Some(SOFT)));
        // NRIP save: RIP never moved; NEXT_RIP is written again.
        let c = complete(e, SOFT.old_rip, Some(SOFT), true);
        assert_eq!(
            (c.event_inj, c.rip, c.next_rip, c.soft),
            (e, SOFT.old_rip, SOFT.next_rip, Some(SOFT))
        );
        // INT3 injected as an exception comes back typed as TCG types it.
        let c = complete(EventInfo(0x8000_0403), SOFT.next_rip, Some(SOFT), false);
        assert_eq!(c.event_inj, EventInfo::software_interrupt(3));
    }

    #[test]
    fn fault_raised_by_l0s_soft_event_unwinds_rip() {
        let np = EventInfo::exception_with_error_code(11, 0x30 * 8 + 2);
        let c = complete(np, SOFT.next_rip, Some(SOFT), false);
        assert_eq!((c.event_inj, c.rip, c.soft), (np, SOFT.old_rip, None));
        // With NRIP save RIP never moved.
        let c = complete(np, SOFT.old_rip, Some(SOFT), true);
        assert_eq!(c.rip, SOFT.old_rip);
    }

    #[test]
    fn unwinding_for_reflected_exits() {
        let e = EventInfo::software_interrupt(0x30);
        assert_eq!(
            unwind_soft_rip(e, SOFT.next_rip, Some(SOFT), false),
            SOFT.old_rip
        );
        assert_eq!(
            unwind_soft_rip(e, SOFT.next_rip, Some(SOFT), true),
            SOFT.next_rip
        );
        assert_eq!(
            unwind_soft_rip(e, SOFT.next_rip, None, false),
            SOFT.next_rip
        );
        assert_eq!(unwind_soft_rip(e, 0x9999, Some(SOFT), false), 0x9999);
        assert_eq!(
            unwind_soft_rip(
                EventInfo::external_interrupt(0x30),
                SOFT.next_rip,
                Some(SOFT),
                false
            ),
            SOFT.next_rip
        );
        assert_eq!(
            unwind_soft_rip(EventInfo::NONE, SOFT.next_rip, Some(SOFT), false),
            SOFT.next_rip
        );
    }
}
