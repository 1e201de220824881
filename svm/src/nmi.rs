//! Virtual NMIs L0 holds for a vCPU, and the NMI blocking it emulates.
//!
//! Injecting an NMI through EVENTINJ does not make the CPU block further
//! NMIs (APM 15.20 and KVM `svm_inject_nmi`), so L0 tracks the blocking
//! itself: after it injects an NMI, NMIs stay blocked until the guest
//! executes IRET. L0 intercepts IRET while it waits for one; the IRET exit
//! comes before the IRET runs, so the block is lifted at the first later
//! exit whose RIP differs (KVM `awaiting_iret_completion`).
//!
//! Delivery also waits for the virtual GIF (APM 15.17: GIF=0 holds NMIs)
//! and the interrupt shadow, and for EVENTINJ to be free. While L2 runs
//! and L1 intercepts NMI, a pending NMI ends L2's run with #VMEXIT(NMI)
//! and stays pending for L1 (KVM `nested_svm_nmi`).

/// A vCPU's NMI state (L1's: the NMI L0 holds is always for L1, even
/// while L2 runs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NmiState {
    /// An NMI is waiting to be delivered (NMIs do not queue: one is held).
    pub pending: bool,
    /// An injected NMI's handler has not returned yet: further NMIs wait.
    pub blocked: bool,
    /// RIP of the IRET that will end the block (seen at its intercept).
    pub iret_rip: Option<u64>,
}

/// Where the vCPU stands when L0 is about to enter it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NmiWindow {
    /// L2 runs in the active VMCB.
    pub in_l2: bool,
    /// L2 runs and vmcb12 intercepts NMI.
    pub l1_intercepts_nmi: bool,
    /// The vCPU's (virtual) GIF.
    pub gif: bool,
    /// The guest is in an interrupt shadow (after STI / MOV SS).
    pub interrupt_shadow: bool,
    /// EVENTINJ already holds an event for this entry.
    pub event_pending: bool,
}

/// What L0 does with a pending NMI before the next entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NmiAction {
    /// Nothing pending, or it must wait.
    None,
    /// Inject it now (EVENTINJ type NMI) into the guest that runs.
    Inject,
    /// End L2's run with #VMEXIT(NMI) to L1 (the NMI stays pending).
    ExitToL1,
}

impl NmiState {
    /// L0 wants an NMI delivered to this vCPU (one is held; more merge).
    pub fn queue(&mut self) {
        self.pending = true;
    }

    /// What to do with the pending NMI at this entry. The #VMEXIT(NMI) to
    /// L1 does not wait for blocking: it is the CPU's exit, taken like a
    /// physical NMI's intercept (L1's GIF, set while L2 runs, is the gate).
    pub fn action(&self, at: &NmiWindow) -> NmiAction {
        if !self.pending || !at.gif {
            return NmiAction::None;
        }
        if at.in_l2 && at.l1_intercepts_nmi {
            return NmiAction::ExitToL1;
        }
        if self.blocked || at.interrupt_shadow || at.event_pending {
            return NmiAction::None;
        }
        NmiAction::Inject
    }

    /// The NMI went into EVENTINJ: it is no longer pending, and NMIs are
    /// blocked until the guest's IRET.
    pub fn injected(&mut self) {
        self.pending = false;
        self.blocked = true;
        self.iret_rip = None;
    }

    /// Whether L0 needs the IRET intercept: blocked, IRET not seen yet.
    pub fn wants_iret_intercept(&self) -> bool {
        self.blocked && self.iret_rip.is_none()
    }

    /// The guest is about to execute IRET at `rip` (the IRET intercept).
    pub fn iret_seen(&mut self, rip: u64) {
        if self.blocked {
            self.iret_rip = Some(rip);
        }
    }

    /// Any exit: once the guest has left the IRET it was about to run,
    /// that IRET has completed and NMIs are unblocked.
    pub fn after_exit(&mut self, rip: u64) {
        if let Some(at) = self.iret_rip {
            if at != rip {
                self.blocked = false;
                self.iret_rip = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN: NmiWindow = NmiWindow {
        in_l2: false,
        l1_intercepts_nmi: false,
        gif: true,
        interrupt_shadow: false,
        event_pending: false,
    };

    #[test]
    fn nothing_pending_nothing_done() {
        assert_eq!(NmiState::default().action(&OPEN), NmiAction::None);
    }

    #[test]
    fn injected_when_open_then_blocked_until_iret_completes() {
        let mut s = NmiState::default();
        s.queue();
        assert_eq!(s.action(&OPEN), NmiAction::Inject);
        s.injected();
        assert!(!s.pending && s.blocked && s.wants_iret_intercept());
        // A second NMI waits for the IRET.
        s.queue();
        assert_eq!(s.action(&OPEN), NmiAction::None);
        // An exit before the IRET changes nothing.
        s.after_exit(0x1000);
        assert!(s.blocked);
        s.iret_seen(0x2000);
        assert!(!s.wants_iret_intercept());
        // The exit at the IRET itself (RIP unchanged) keeps the block.
        s.after_exit(0x2000);
        assert_eq!(s.action(&OPEN), NmiAction::None);
        // The IRET ran: the next exit is elsewhere, the NMI may go.
        s.after_exit(0x1234);
        assert!(!s.blocked);
        assert_eq!(s.action(&OPEN), NmiAction::Inject);
    }

    #[test]
    fn iret_without_block_is_ignored() {
        let mut s = NmiState::default();
        s.iret_seen(0x10);
        assert_eq!(s, NmiState::default());
    }

    #[test]
    fn held_by_gif_shadow_and_busy_eventinj() {
        let mut s = NmiState::default();
        s.queue();
        for closed in [
            NmiWindow { gif: false, ..OPEN },
            NmiWindow {
                interrupt_shadow: true,
                ..OPEN
            },
            NmiWindow {
                event_pending: true,
                ..OPEN
            },
        ] {
            assert_eq!(s.action(&closed), NmiAction::None, "{closed:?}");
        }
    }

    #[test]
    fn l2_with_l1_intercept_exits_to_l1() {
        let mut s = NmiState::default();
        s.queue();
        let l2 = NmiWindow {
            in_l2: true,
            l1_intercepts_nmi: true,
            ..OPEN
        };
        assert_eq!(s.action(&l2), NmiAction::ExitToL1);
        // Even while blocked or with EVENTINJ busy: the exit is L1's.
        s.blocked = true;
        assert_eq!(
            s.action(&NmiWindow {
                event_pending: true,
                ..l2
            }),
            NmiAction::ExitToL1
        );
        // Not without GIF.
        assert_eq!(s.action(&NmiWindow { gif: false, ..l2 }), NmiAction::None);
        // Without L1's intercept the NMI goes into L2 (KVM does the same).
        s.blocked = false;
        assert_eq!(
            s.action(&NmiWindow {
                l1_intercepts_nmi: false,
                ..l2
            }),
            NmiAction::Inject
        );
    }
}
