//! The interrupt shadow at VMRUN, kept by L0 where the CPU drops it.
//!
//! A VMCB's INTERRUPT_SHADOW bit holds off interrupts, virtual ones
//! included, for one instruction after VMRUN (APM 15.21.5; kvm-unit-tests
//! virq_inject_within_shadow). QEMU TCG before 9.1 does not load it at
//! VMRUN (fixed by QEMU commit "target/i386: fix INHIBIT_IRQ/TF/RF handling
//! for VMRUN"), so a pending V_IRQ is taken before the first instruction.
//! L0 then holds V_IRQ back and single-steps that one instruction (TF,
//! with its #DB intercept), as KVM single-steps out of an NMI window; at
//! the next exit V_IRQ and TF are the guest's again and the step's own
//! #DB is dropped.

use crate::exception::{DR6_BS, RFLAGS_TF};
use crate::int_ctl::IntCtl;

/// EVENTINJ's valid bit.
const EVENT_VALID: u64 = 1 << 31;

/// What L0 changed for the step, to undo at the next exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShadowStep {
    /// The guest's own RFLAGS.TF.
    pub guest_tf: bool,
    /// DR6 before the step (the step's #DB sets BS).
    pub dr6: u64,
    /// RIP of the shadowed instruction.
    pub rip: u64,
}

/// Whether the entry needs the step: the shadow is set, a virtual
/// interrupt is pending, and no event is being injected (an injected event
/// is delivered first, and ends the shadow).
pub fn needs_step(interrupt_shadow: u64, int_ctl: u64, event_inj: u64) -> bool {
    interrupt_shadow & 1 != 0 && int_ctl & IntCtl::V_IRQ.bits() != 0 && event_inj & EVENT_VALID == 0
}

/// Before the entry at `rip`: RFLAGS with TF, INT_CTL without V_IRQ, and
/// the undo.
pub fn arm(rip: u64, rflags: u64, int_ctl: u64, dr6: u64) -> (u64, u64, ShadowStep) {
    let step = ShadowStep {
        guest_tf: rflags & RFLAGS_TF != 0,
        dr6,
        rip,
    };
    (rflags | RFLAGS_TF, int_ctl & !IntCtl::V_IRQ.bits(), step)
}

/// The guest's state again after the exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Disarmed {
    /// RFLAGS with the guest's own TF.
    pub rflags: u64,
    /// INT_CTL with V_IRQ pending again (it cannot have been taken).
    pub int_ctl: u64,
    /// DR6: the step's BS removed when the exit was the step's #DB.
    pub dr6: u64,
    /// The exit was only the step's #DB: resume the guest, nothing else.
    pub drop_exit: bool,
    /// The shadowed instruction has not completed (an interrupt or a fault
    /// exit before it): the shadow still holds, though the CPU, which
    /// never loaded it, reports none.
    pub shadow: bool,
}

/// After the exit at `rip` (`debug_exit`: it was the #DB intercept).
pub fn disarm(
    step: ShadowStep,
    rip: u64,
    rflags: u64,
    int_ctl: u64,
    dr6: u64,
    debug_exit: bool,
) -> Disarmed {
    let tf = if step.guest_tf { RFLAGS_TF } else { 0 };
    // Only a single-step #DB L0 caused: the guest did not single-step and
    // nothing but BS is new in DR6.
    let drop_exit =
        debug_exit && !step.guest_tf && dr6 & DR6_BS != 0 && dr6 & !DR6_BS == step.dr6 & !DR6_BS;
    Disarmed {
        rflags: (rflags & !RFLAGS_TF) | tf,
        int_ctl: int_ctl | IntCtl::V_IRQ.bits(),
        dr6: if drop_exit { step.dr6 } else { dr6 },
        drop_exit,
        shadow: !drop_exit && rip == step.rip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V_IRQ: u64 = IntCtl::V_IRQ.bits();

    #[test]
    fn step_only_for_a_pending_virq_in_the_shadow() {
        assert!(needs_step(1, V_IRQ | 1 << 24, 0));
        assert!(needs_step(3, V_IRQ, 0), "bit 0 is the shadow");
        assert!(!needs_step(0, V_IRQ, 0));
        assert!(!needs_step(2, V_IRQ, 0));
        assert!(!needs_step(1, 1 << 24, 0));
        assert!(!needs_step(1, V_IRQ, EVENT_VALID | 0x30));
    }

    #[test]
    fn the_steps_db_is_dropped_and_state_restored() {
        let (rflags, int_ctl, step) = arm(0x1000, 0x202, V_IRQ | 0x30 << 32, 0xffff_0ff0);
        assert_eq!((rflags, int_ctl), (0x302, 0x30 << 32));
        let d = disarm(step, 0x1001, rflags, int_ctl, 0xffff_0ff0 | DR6_BS, true);
        assert_eq!(
            d,
            Disarmed {
                rflags: 0x202,
                int_ctl: V_IRQ | 0x30 << 32,
                dr6: 0xffff_0ff0,
                drop_exit: true,
                shadow: false,
            }
        );
        // Another exit (the instruction exited): kept, state restored.
        let d = disarm(step, 0x1003, rflags, int_ctl, 0xffff_0ff0, false);
        assert_eq!(
            (d.rflags, d.int_ctl, d.drop_exit),
            (0x202, V_IRQ | 0x30 << 32, false)
        );
        assert!(!d.shadow, "the instruction completed");
        // An interrupt exit before the instruction: the shadow still holds.
        let d = disarm(step, 0x1000, rflags, int_ctl, 0xffff_0ff0, false);
        assert!(d.shadow && !d.drop_exit);
    }

    #[test]
    fn the_guests_own_single_step_is_kept() {
        let (rflags, int_ctl, step) = arm(0x1000, 0x302, V_IRQ, 0xffff_0ff0);
        let d = disarm(step, 0x1001, rflags, int_ctl, 0xffff_0ff0 | DR6_BS, true);
        assert_eq!(
            (d.rflags, d.dr6, d.drop_exit),
            (0x302, 0xffff_0ff0 | DR6_BS, false)
        );
        // A #DB with more than BS new is not only the step's.
        let (_, _, step) = arm(0x1000, 0x202, V_IRQ, 0xffff_0ff0);
        let d = disarm(step, 0x1001, 0x302, 0, 0xffff_0ff1 | DR6_BS, true);
        assert!(!d.drop_exit);
    }
}
