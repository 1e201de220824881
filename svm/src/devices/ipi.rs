//! IPIs between the vCPUs of one VM: an ICR value decoded into a delivery
//! mode and the set of other vCPUs it reaches (SDM Vol. 3A 11.6.1-11.6.2,
//! x2APIC 11.12.9). The sender's own local APIC handles its share (self
//! and the self part of "all including self", `lapic::Lapic`); this module
//! names the other vCPUs. vCPU `i` has APIC ID `i` (physical destination).
//!
//! Not modelled: logical destination mode to other vCPUs (their LDR/DFR
//! live in their own APICs) and lowest-priority arbitration (a physical
//! destination names one vCPU anyway; a broadcast one delivers to all).

/// What an IPI delivers (ICR bits 10:8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// A vector into IRR (fixed, and lowest priority treated as fixed).
    Fixed(u8),
    /// SMI: not sent to other vCPUs (no SMM emulated).
    Smi,
    /// NMI.
    Nmi,
    /// INIT (level assert; an INIT level de-assert is [`Delivery::None`]).
    Init,
    /// Start-up with its vector (the real-mode page number).
    Startup(u8),
    /// Reserved delivery mode or INIT de-assert: nothing is sent.
    None,
}

/// An ICR value as a message to other vCPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipi {
    /// What it delivers.
    pub delivery: Delivery,
    /// Bit `i` set: vCPU `i` receives it (never the sender).
    pub targets: u64,
}

/// Most vCPUs a VM can have (the width of [`Ipi::targets`]).
pub const MAX_VCPUS: usize = 64;

/// Decodes `icr` written by vCPU `sender` (its APIC in x2APIC mode or
/// not) in a VM of `vcpus` vCPUs: the other vCPUs it reaches.
pub fn decode(icr: u64, x2apic: bool, sender: usize, vcpus: usize) -> Ipi {
    let vcpus = vcpus.min(MAX_VCPUS);
    let vector = icr as u8;
    let level_assert = icr & (1 << 14) != 0;
    let level_trigger = icr & (1 << 15) != 0;
    let delivery = match (icr >> 8) & 7 {
        0 | 1 => Delivery::Fixed(vector),
        2 => Delivery::Smi,
        4 => Delivery::Nmi,
        // INIT level de-assert (level trigger, level 0) only resets the
        // arbitration IDs on old CPUs: nothing to deliver.
        5 if level_trigger && !level_assert => Delivery::None,
        5 => Delivery::Init,
        6 => Delivery::Startup(vector),
        _ => Delivery::None,
    };
    let all: u64 = match vcpus {
        MAX_VCPUS => u64::MAX,
        n => (1u64 << n) - 1,
    };
    let me = 1u64.checked_shl(sender as u32).unwrap_or(0) & all;
    // INIT and Start-up to the sender itself are this module's too: its
    // local APIC model leaves them (an L1 intercepting INIT sees a self-
    // INIT from L2 as #VMEXIT(INIT), kvm-unit-tests svm_init_intercept_test).
    let own = match delivery {
        Delivery::Init | Delivery::Startup(_) => me,
        _ => 0,
    };
    let others = all & !me;
    let logical = icr & (1 << 11) != 0;
    let targets = match (icr >> 18) & 3 {
        // No shorthand: the destination field.
        0 => {
            let (dest, broadcast) = match x2apic {
                true => ((icr >> 32) as u32, u32::MAX),
                false => ((icr >> 56) as u32, 0xFF),
            };
            if dest == broadcast {
                others
            } else if logical {
                0
            } else {
                match usize::try_from(dest) {
                    Ok(d) if d < vcpus => (1u64 << d) & (others | own),
                    _ => 0,
                }
            }
        }
        // Self: the sender's own APIC (but INIT/SIPI: here).
        1 => own,
        // All including self.
        2 => others | own,
        // All excluding self.
        _ => others,
    };
    Ipi {
        delivery: match targets {
            0 => Delivery::None,
            _ => delivery,
        },
        targets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXED: u64 = 0;
    const NMI: u64 = 4 << 8;
    const INIT: u64 = (5 << 8) | (1 << 14);
    const SIPI: u64 = 6 << 8;
    const SELF: u64 = 1 << 18;
    const ALL: u64 = 2 << 18;
    const ALL_BUT_SELF: u64 = 3 << 18;

    fn xapic_dest(id: u64) -> u64 {
        id << 56
    }

    #[test]
    fn fixed_to_one_vcpu_by_physical_id() {
        let i = decode(FIXED | 0x40 | xapic_dest(1), false, 0, 2);
        assert_eq!(i.delivery, Delivery::Fixed(0x40));
        assert_eq!(i.targets, 0b10);
        // x2APIC: the destination is bits 63:32.
        let i = decode(FIXED | 0x41 | (3 << 32), true, 0, 4);
        assert_eq!(
            i,
            Ipi {
                delivery: Delivery::Fixed(0x41),
                targets: 0b1000
            }
        );
    }

    #[test]
    fn to_self_or_absent_reaches_no_other() {
        assert_eq!(decode(FIXED | 0x40 | xapic_dest(0), false, 0, 2).targets, 0);
        assert_eq!(
            decode(FIXED | 0x40 | SELF | xapic_dest(1), false, 0, 2).targets,
            0
        );
        assert_eq!(decode(FIXED | 0x40 | xapic_dest(7), false, 0, 2).targets, 0);
        assert_eq!(decode(FIXED | 0x40 | (200 << 32), true, 0, 64).targets, 0);
        assert_eq!(
            decode(FIXED | 0x40 | xapic_dest(1), false, 0, 2).delivery,
            Delivery::Fixed(0x40)
        );
        assert_eq!(
            decode(FIXED | 0x40 | xapic_dest(0), false, 0, 2).delivery,
            Delivery::None
        );
    }

    #[test]
    fn shorthands_and_broadcast_name_every_other_vcpu() {
        for icr in [ALL, ALL_BUT_SELF, xapic_dest(0xFF)] {
            assert_eq!(decode(NMI | icr, false, 1, 4).targets, 0b1101, "{icr:#x}");
        }
        assert_eq!(
            decode(NMI | (u64::from(u32::MAX) << 32), true, 2, 3).targets,
            0b011
        );
        // 0xFF is an ID, not a broadcast, in x2APIC mode.
        assert_eq!(decode(NMI | (0xFF << 32), true, 0, 64).targets, 0);
        assert_eq!(decode(NMI | ALL, false, 0, 64).targets, u64::MAX - 1);
    }

    #[test]
    fn delivery_modes() {
        let d = |icr| decode(icr | xapic_dest(1), false, 0, 2).delivery;
        assert_eq!(d(NMI | 0x33), Delivery::Nmi);
        assert_eq!(d(INIT), Delivery::Init);
        assert_eq!(d(SIPI | 0x08), Delivery::Startup(0x08));
        assert_eq!(d(2 << 8), Delivery::Smi);
        assert_eq!(d(1 << 8 | 0x50), Delivery::Fixed(0x50));
        // INIT level de-assert and reserved modes send nothing.
        assert_eq!(d((5 << 8) | (1 << 15)), Delivery::None);
        assert_eq!(d(3 << 8), Delivery::None);
        assert_eq!(d(7 << 8), Delivery::None);
    }

    #[test]
    fn init_and_sipi_to_self_are_routed_here() {
        assert_eq!(decode(INIT | SELF, false, 1, 3).targets, 0b010);
        assert_eq!(decode(INIT | xapic_dest(1), false, 1, 3).targets, 0b010);
        assert_eq!(decode(SIPI | 8 | ALL, false, 1, 3).targets, 0b111);
        assert_eq!(decode(INIT | ALL_BUT_SELF, false, 1, 3).targets, 0b101);
        // Fixed and NMI to self stay the sender's APIC's.
        assert_eq!(decode(NMI | SELF, false, 1, 3).targets, 0);
        assert_eq!(decode(FIXED | 0x40 | ALL, false, 1, 3).targets, 0b101);
    }

    #[test]
    fn logical_destinations_are_not_routed() {
        assert_eq!(
            decode(FIXED | 0x40 | (1 << 11) | xapic_dest(2), false, 0, 2).targets,
            0
        );
        // ...but the logical broadcast is.
        assert_eq!(
            decode(FIXED | 0x40 | (1 << 11) | xapic_dest(0xFF), false, 0, 2).targets,
            0b10
        );
    }
}
