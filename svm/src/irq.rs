//! Delivering a vCPU's local-APIC interrupt (an external interrupt for
//! the CPU) into the guest that runs: L1, or L2 through L1's intercepts.
//! KVM's rules (svm.c `svm_interrupt_blocked`, nested.c
//! `svm_check_nested_events`), from the APM: 15.21.1 (V_INTR_MASKING: the
//! host's IF masks physical interrupts while the guest runs), 15.21.4
//! (virtual interrupts, V_IRQ and the VINTR intercept), 15.13.1 (INTR
//! intercept).

/// What the CPU state says about taking an interrupt now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqWindow {
    /// L2 runs.
    pub in_l2: bool,
    /// vmcb12 intercepts INTR (only with `in_l2`).
    pub l1_intercepts_intr: bool,
    /// vmcb12 sets V_INTR_MASKING (only with `in_l2`).
    pub l1_v_intr_masking: bool,
    /// L1's RFLAGS.IF: saved at its VMRUN while L2 runs, else current.
    pub l1_if: bool,
    /// The running guest's RFLAGS.IF.
    pub guest_if: bool,
    /// L1's GIF.
    pub gif: bool,
    /// The running guest is in an interrupt shadow.
    pub shadow: bool,
    /// EVENTINJ already holds an event.
    pub event_pending: bool,
}

/// What L0 does with a pending interrupt before the next entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqAction {
    /// It waits (blocked; re-checked at the next exit).
    Wait,
    /// Into EVENTINJ of the running guest now (external interrupt).
    Inject,
    /// The running guest's IF, interrupt shadow or EVENTINJ holds it:
    /// V_IRQ with the VINTR intercept, so the CPU exits as soon as the
    /// guest could take it (for L2 only where L1 leaves V_IRQ and VINTR
    /// free: the caller checks).
    OpenWindow,
    /// End L2's run with #VMEXIT(INTR) to L1 (the interrupt stays pending
    /// for L1).
    ExitToL1,
}

/// See [`IrqAction`].
pub fn irq_action(w: &IrqWindow) -> IrqAction {
    if !w.gif {
        return IrqAction::Wait;
    }
    if w.in_l2 {
        // With V_INTR_MASKING the interrupt is masked by L1's IF (saved at
        // VMRUN: it cannot change while L2 runs), else by L2's; the
        // #VMEXIT(INTR) ignores L2's shadow and EVENTINJ.
        if w.l1_v_intr_masking {
            if !w.l1_if {
                return IrqAction::Wait;
            }
        } else if !w.guest_if {
            return IrqAction::OpenWindow;
        }
        return if w.l1_intercepts_intr {
            IrqAction::ExitToL1
        } else if w.shadow || w.event_pending {
            IrqAction::OpenWindow
        } else {
            // Not intercepted: taken through L2's IDT, as the CPU does.
            IrqAction::Inject
        };
    }
    if !w.guest_if || w.shadow || w.event_pending {
        IrqAction::OpenWindow
    } else {
        IrqAction::Inject
    }
}

/// Whether a HLT can end by an interrupt: the same rules with no shadow
/// and nothing in EVENTINJ (HLT waits only when this holds).
pub fn halt_can_wake(w: &IrqWindow) -> bool {
    let w = IrqWindow {
        shadow: false,
        event_pending: false,
        ..*w
    };
    matches!(irq_action(&w), IrqAction::Inject | IrqAction::ExitToL1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const L1: IrqWindow = IrqWindow {
        in_l2: false,
        l1_intercepts_intr: false,
        l1_v_intr_masking: false,
        l1_if: true,
        guest_if: true,
        gif: true,
        shadow: false,
        event_pending: false,
    };

    #[test]
    fn l1_takes_it_when_if_allows() {
        assert_eq!(irq_action(&L1), IrqAction::Inject);
        let cli = IrqWindow {
            guest_if: false,
            l1_if: false,
            ..L1
        };
        assert_eq!(irq_action(&cli), IrqAction::OpenWindow);
        let sti = IrqWindow { shadow: true, ..L1 };
        assert_eq!(irq_action(&sti), IrqAction::OpenWindow);
        let busy = IrqWindow {
            event_pending: true,
            ..L1
        };
        assert_eq!(irq_action(&busy), IrqAction::OpenWindow);
        let clgi = IrqWindow { gif: false, ..L1 };
        assert_eq!(irq_action(&clgi), IrqAction::Wait);
        assert!(halt_can_wake(&sti));
        assert!(!halt_can_wake(&cli));
    }

    const L2: IrqWindow = IrqWindow {
        in_l2: true,
        l1_intercepts_intr: true,
        l1_v_intr_masking: true,
        ..L1
    };

    #[test]
    fn l2_routes_per_l1s_intercept_and_masking() {
        // L1 intercepts INTR with V_INTR_MASKING: L1's IF decides; L2's IF,
        // shadow and EVENTINJ do not hold the exit back.
        let l2_cli = IrqWindow {
            guest_if: false,
            shadow: true,
            event_pending: true,
            ..L2
        };
        assert_eq!(irq_action(&l2_cli), IrqAction::ExitToL1);
        let l1_cli = IrqWindow { l1_if: false, ..L2 };
        assert_eq!(irq_action(&l1_cli), IrqAction::Wait);
        assert!(halt_can_wake(&l2_cli));
        // Without V_INTR_MASKING, L2's IF masks it: wait for L2's STI.
        let plain = IrqWindow {
            l1_v_intr_masking: false,
            ..l2_cli
        };
        assert_eq!(irq_action(&plain), IrqAction::OpenWindow);
        assert!(!halt_can_wake(&plain));
        let plain_sti = IrqWindow {
            guest_if: true,
            ..plain
        };
        assert_eq!(irq_action(&plain_sti), IrqAction::ExitToL1);
        // Not intercepted: into L2 when its window is open.
        let direct = IrqWindow {
            l1_intercepts_intr: false,
            ..L2
        };
        assert_eq!(irq_action(&direct), IrqAction::Inject);
        let direct_sti = IrqWindow {
            shadow: true,
            ..direct
        };
        assert_eq!(irq_action(&direct_sti), IrqAction::OpenWindow);
    }
}
