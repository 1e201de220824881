//! IPIs between the vCPUs of one VM: an ICR value decoded into a delivery
//! mode and the set of other vCPUs it reaches (SDM Vol. 3A 11.6.1-11.6.2,
//! x2APIC 11.12.9-11.12.10; APM Vol. 2 16.6 "Interprocessor Interrupts").
//! The sender's own local APIC handles its share (self and the self part
//! of "all including self", `lapic::Lapic`); this module names the other
//! vCPUs. vCPU `i` has APIC ID `i` (physical destination).
//!
//! Logical destinations (ICR bit 11) are matched against each vCPU's
//! [`LogicalId`]: its LDR and DFR model, which live in its own APIC on
//! its own CPU, so the kernel keeps a snapshot per vCPU that the sender
//! reads (`vmm::multi`). The rules are [`flat_match`], [`cluster_match`]
//! and [`x2apic_cluster_match`]; the all-ones destination is a broadcast
//! in every model. Lowest-priority delivery reaches exactly one of the
//! vCPUs named ([`decode`] says which).
//!
//! Not modelled: a guest-written xAPIC ID (physical destinations use the
//! vCPU index, which is the initial APIC ID); an arbitration by TPR.

/// What an IPI delivers (ICR bits 10:8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// A vector into IRR (fixed, and lowest priority once [`decode`] has
    /// picked its one receiver).
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
    /// Bit `i` set: vCPU `i` receives it (never the sender, but for INIT
    /// and Start-up).
    pub targets: u64,
}

/// Most vCPUs a VM can have (the width of [`Ipi::targets`]).
pub const MAX_VCPUS: usize = 64;

/// A local APIC's logical address, as a sender matches it: its mode, its
/// LDR and (xAPIC) the DFR's model (SDM 11.6.2.2, 11.12.10.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogicalId {
    /// No logical address: a disabled APIC, or an xAPIC DFR model other
    /// than flat (1111b) and cluster (0000b), which the SDM leaves
    /// undefined (KVM matches nothing there either).
    None,
    /// xAPIC flat model: the logical APIC ID, LDR bits 31:24, a bitmap.
    Flat(u8),
    /// xAPIC cluster model: LDR bits 31:28 the cluster, 27:24 a bitmap.
    Cluster(u8),
    /// x2APIC (always cluster): the LDR, cluster in 31:16, bitmap in 15:0.
    X2Apic(u32),
}

impl LogicalId {
    /// An xAPIC after reset: LDR 0, DFR all ones (matches nothing).
    pub const RESET: Self = LogicalId::Flat(0);

    /// From an enabled APIC's registers (`x2apic`: its mode).
    pub fn from_regs(x2apic: bool, ldr: u32, dfr: u32) -> Self {
        match (x2apic, dfr >> 28) {
            (true, _) => LogicalId::X2Apic(ldr),
            (false, 0xF) => LogicalId::Flat((ldr >> 24) as u8),
            (false, 0x0) => LogicalId::Cluster((ldr >> 24) as u8),
            (false, _) => LogicalId::None,
        }
    }

    /// As one 64-bit word (for an atomic snapshot): kind in bits 33:32.
    pub fn pack(self) -> u64 {
        match self {
            LogicalId::None => 0,
            LogicalId::Flat(l) => 1 << 32 | u64::from(l),
            LogicalId::Cluster(l) => 2 << 32 | u64::from(l),
            LogicalId::X2Apic(l) => 3 << 32 | u64::from(l),
        }
    }

    /// The inverse of [`Self::pack`].
    pub fn unpack(word: u64) -> Self {
        match word >> 32 {
            1 => LogicalId::Flat(word as u8),
            2 => LogicalId::Cluster(word as u8),
            3 => LogicalId::X2Apic(word as u32),
            _ => LogicalId::None,
        }
    }
}

/// xAPIC flat model (SDM 11.6.2.2 item 1): the message destination
/// address (MDA) and the logical APIC ID share a bit.
pub fn flat_match(mda: u8, logical_id: u8) -> bool {
    mda & logical_id != 0
}

/// xAPIC cluster model (SDM 11.6.2.2 item 2, flat cluster): MDA bits 7:4
/// equal the ID's cluster (LDR 31:28), and MDA bits 3:0 share a bit with
/// the ID's bitmap (LDR 27:24). The all-ones MDA (broadcast) is the
/// caller's.
pub fn cluster_match(mda: u8, logical_id: u8) -> bool {
    mda >> 4 == logical_id >> 4 && mda & logical_id & 0xF != 0
}

/// x2APIC logical (cluster) mode (SDM 11.12.10.2): destination bits 31:16
/// equal the LDR's cluster and bits 15:0 share a bit with its bitmap.
pub fn x2apic_cluster_match(dest: u32, ldr: u32) -> bool {
    dest >> 16 == ldr >> 16 && dest & ldr & 0xFFFF != 0
}

/// Whether the logical destination `dest` (not a broadcast; ICR2 bits
/// 31:24 from an xAPIC, bits 63:32 from an x2APIC) names an APIC whose
/// logical address is `id`. The target's mode decides the rule; mixed
/// modes (undefined in the SDM) follow KVM: an xAPIC target matches only
/// an 8-bit MDA, an x2APIC target reads an 8-bit one as cluster 0.
pub fn logical_match(dest: u32, id: LogicalId) -> bool {
    let mda = u8::try_from(dest);
    match id {
        LogicalId::None => false,
        LogicalId::Flat(l) => mda.is_ok_and(|m| flat_match(m, l)),
        LogicalId::Cluster(l) => mda.is_ok_and(|m| cluster_match(m, l)),
        LogicalId::X2Apic(ldr) => x2apic_cluster_match(dest, ldr),
    }
}

/// Decodes `icr` written by vCPU `sender` (its APIC in x2APIC mode or
/// not) in a VM of `vcpus` vCPUs: the other vCPUs it reaches. `logical`
/// gives vCPU `i`'s logical address (asked only for a logical
/// destination that is not a broadcast; the sender's too).
pub fn decode(
    icr: u64,
    x2apic: bool,
    sender: usize,
    vcpus: usize,
    logical: impl Fn(usize) -> LogicalId,
) -> Ipi {
    let vcpus = vcpus.min(MAX_VCPUS);
    let vector = icr as u8;
    let level_assert = icr & (1 << 14) != 0;
    let level_trigger = icr & (1 << 15) != 0;
    let lowest_priority = (icr >> 8) & 7 == 1;
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
    let is_logical = icr & (1 << 11) != 0;
    // Every APIC the message names, the sender's included.
    let named = match (icr >> 18) & 3 {
        // No shorthand: the destination field.
        0 => {
            let (dest, broadcast) = match x2apic {
                true => ((icr >> 32) as u32, u32::MAX),
                false => ((icr >> 56) as u32, 0xFF),
            };
            if dest == broadcast {
                all
            } else if is_logical {
                (0..vcpus)
                    .filter(|&i| logical_match(dest, logical(i)))
                    .fold(0, |m, i| m | 1 << i)
            } else {
                match usize::try_from(dest) {
                    Ok(d) if d < vcpus => 1u64 << d,
                    _ => 0,
                }
            }
        }
        // Self: the sender's own APIC (but INIT/SIPI: here).
        1 => me,
        // All including self.
        2 => all,
        // All excluding self.
        _ => others,
    };
    let mut targets = named & (others | own);
    // Lowest priority (SDM 11.6.2.4, APM 16.6.1): one of the APICs named
    // takes it. The SDM lets the choice be model-specific; ours is fixed:
    // the sender itself when it is named (its own APIC has already taken
    // the interrupt, not knowing the others, and keeping it local needs
    // no cross-CPU kick), otherwise the lowest-indexed vCPU named. No
    // arbitration by TPR: a vCPU's TPR lives in CR8 on its own CPU.
    if lowest_priority {
        targets = match named & me {
            0 => targets & targets.wrapping_neg(),
            _ => 0,
        };
    }
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

    const LOWEST: u64 = 1 << 8;
    const LOGICAL: u64 = 1 << 11;

    fn xapic_dest(id: u64) -> u64 {
        id << 56
    }

    /// [`decode`] in a VM whose APICs have no logical address yet.
    fn dec(icr: u64, x2apic: bool, sender: usize, vcpus: usize) -> Ipi {
        decode(icr, x2apic, sender, vcpus, |_| LogicalId::RESET)
    }

    /// Linux's xAPIC flat setup for `vcpus` CPUs: LDR = 1 << (24 + i).
    fn flat(i: usize) -> LogicalId {
        LogicalId::from_regs(false, 1 << (24 + i), 0xFFFF_FFFF)
    }

    /// An x2APIC's LDR derived from its ID (SDM 11.12.10.2).
    fn x2(i: usize) -> LogicalId {
        LogicalId::X2Apic((i as u32 >> 4) << 16 | 1 << (i & 15))
    }

    #[test]
    fn fixed_to_one_vcpu_by_physical_id() {
        let i = dec(FIXED | 0x40 | xapic_dest(1), false, 0, 2);
        assert_eq!(i.delivery, Delivery::Fixed(0x40));
        assert_eq!(i.targets, 0b10);
        // x2APIC: the destination is bits 63:32.
        let i = dec(FIXED | 0x41 | (3 << 32), true, 0, 4);
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
        assert_eq!(dec(FIXED | 0x40 | xapic_dest(0), false, 0, 2).targets, 0);
        assert_eq!(
            dec(FIXED | 0x40 | SELF | xapic_dest(1), false, 0, 2).targets,
            0
        );
        assert_eq!(dec(FIXED | 0x40 | xapic_dest(7), false, 0, 2).targets, 0);
        assert_eq!(dec(FIXED | 0x40 | (200 << 32), true, 0, 64).targets, 0);
        assert_eq!(
            dec(FIXED | 0x40 | xapic_dest(1), false, 0, 2).delivery,
            Delivery::Fixed(0x40)
        );
        assert_eq!(
            dec(FIXED | 0x40 | xapic_dest(0), false, 0, 2).delivery,
            Delivery::None
        );
    }

    #[test]
    fn shorthands_and_broadcast_name_every_other_vcpu() {
        for icr in [ALL, ALL_BUT_SELF, xapic_dest(0xFF)] {
            assert_eq!(dec(NMI | icr, false, 1, 4).targets, 0b1101, "{icr:#x}");
        }
        assert_eq!(
            dec(NMI | (u64::from(u32::MAX) << 32), true, 2, 3).targets,
            0b011
        );
        // 0xFF is an ID, not a broadcast, in x2APIC mode.
        assert_eq!(dec(NMI | (0xFF << 32), true, 0, 64).targets, 0);
        assert_eq!(dec(NMI | ALL, false, 0, 64).targets, u64::MAX - 1);
    }

    #[test]
    fn delivery_modes() {
        let d = |icr| dec(icr | xapic_dest(1), false, 0, 2).delivery;
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
        assert_eq!(dec(INIT | SELF, false, 1, 3).targets, 0b010);
        assert_eq!(dec(INIT | xapic_dest(1), false, 1, 3).targets, 0b010);
        assert_eq!(dec(SIPI | 8 | ALL, false, 1, 3).targets, 0b111);
        assert_eq!(dec(INIT | ALL_BUT_SELF, false, 1, 3).targets, 0b101);
        // Fixed and NMI to self stay the sender's APIC's.
        assert_eq!(dec(NMI | SELF, false, 1, 3).targets, 0);
        assert_eq!(dec(FIXED | 0x40 | ALL, false, 1, 3).targets, 0b101);
    }

    #[test]
    fn logical_flat_names_vcpus_by_ldr_bit() {
        // Linux, xAPIC, <= 8 CPUs: flat, LDR = 1 << cpu.
        let ipi = |icr, sender| decode(icr, false, sender, 4, flat);
        let i = ipi(FIXED | LOGICAL | 0x40 | xapic_dest(0b0110), 0);
        assert_eq!(i.delivery, Delivery::Fixed(0x40));
        assert_eq!(i.targets, 0b0110);
        // The sender's own bit is its APIC's (fixed, NMI).
        assert_eq!(ipi(NMI | LOGICAL | xapic_dest(0b0011), 0).targets, 0b0010);
        // ...but INIT to a set including the sender resets it too.
        assert_eq!(ipi(INIT | LOGICAL | xapic_dest(0b0011), 0).targets, 0b0011);
        // No bit in common: nobody (an MDA beyond the vCPUs too).
        let none = ipi(FIXED | LOGICAL | 0x40 | xapic_dest(0b1_0000), 0);
        assert_eq!((none.targets, none.delivery), (0, Delivery::None));
        // The all-ones MDA is a broadcast even to APICs with LDR 0.
        assert_eq!(
            dec(FIXED | LOGICAL | 0x40 | xapic_dest(0xFF), false, 0, 2).targets,
            0b10
        );
        // Physical destinations are unchanged by the LDRs.
        assert_eq!(ipi(FIXED | 0x40 | xapic_dest(2), 0).targets, 0b0100);
    }

    #[test]
    fn logical_cluster_needs_the_cluster_and_a_bit() {
        // Cluster model: vCPU i in cluster i / 4, bit i % 4.
        let id = |i: usize| {
            let l = ((i / 4) << 4 | 1 << (i % 4)) as u32;
            LogicalId::from_regs(false, l << 24, 0x0FFF_FFFF)
        };
        let t = |mda| decode(FIXED | LOGICAL | 0x40 | xapic_dest(mda), false, 0, 8, id).targets;
        assert_eq!(t(0x12), 1 << 5);
        assert_eq!(t(0x1F), 0xF0);
        assert_eq!(t(0x0E), 0x0E);
        assert_eq!(t(0x22), 0, "no cluster 2");
        assert_eq!(t(0x10), 0, "no bit");
        assert_eq!(t(0xFF), 0xFE, "broadcast");
    }

    #[test]
    fn x2apic_cluster_by_derived_ldr() {
        let ipi =
            |dest: u64, sender| decode(FIXED | LOGICAL | 0x40 | dest << 32, true, sender, 40, x2);
        // Cluster 0, IDs 1 and 3.
        assert_eq!(ipi(0x0000_000A, 0).targets, 0b1010);
        // Cluster 2 (IDs 32..47), bit 1: ID 33.
        assert_eq!(ipi(0x0002_0002, 0).targets, 1 << 33);
        // Bit 1 in cluster 1 is ID 17, not 1 or 33.
        assert_eq!(ipi(0x0001_0002, 0).targets, 1 << 17);
        assert_eq!(ipi(0x0003_0001, 0).targets, 0, "no cluster 3 (40 vCPUs)");
        assert_eq!(ipi(0xFFFF_FFFF, 3).targets, ((1 << 40) - 1) & !(1 << 3));
    }

    #[test]
    fn lowest_priority_reaches_exactly_one() {
        let ipi = |mda, sender| {
            decode(
                LOWEST | LOGICAL | 0x40 | xapic_dest(mda),
                false,
                sender,
                4,
                flat,
            )
        };
        // The lowest-indexed vCPU named.
        let i = ipi(0b1100, 0);
        assert_eq!((i.delivery, i.targets), (Delivery::Fixed(0x40), 0b0100));
        // The sender named: its own APIC took it, nobody else.
        let i = ipi(0b1110, 2);
        assert_eq!((i.delivery, i.targets), (Delivery::None, 0));
        // Broadcasts and shorthands arbitrate too.
        assert_eq!(ipi(0xFF, 1).targets, 0);
        assert_eq!(
            dec(LOWEST | 0x40 | ALL_BUT_SELF, false, 0, 4).targets,
            0b0010
        );
        assert_eq!(dec(LOWEST | 0x40 | ALL, false, 2, 4).targets, 0);
        // Physical: the one vCPU named.
        assert_eq!(
            dec(LOWEST | 0x40 | xapic_dest(3), false, 0, 4).targets,
            0b1000
        );
    }

    #[test]
    fn logical_id_from_registers_and_packing() {
        assert_eq!(
            LogicalId::from_regs(false, 0x0200_0000, u32::MAX),
            LogicalId::Flat(2)
        );
        assert_eq!(
            LogicalId::from_regs(false, 0x1200_0000, 0x0FFF_FFFF),
            LogicalId::Cluster(0x12)
        );
        assert_eq!(
            LogicalId::from_regs(false, 0x1200_0000, 0x5FFF_FFFF),
            LogicalId::None
        );
        assert_eq!(
            LogicalId::from_regs(true, 0x0001_0004, u32::MAX),
            LogicalId::X2Apic(0x1_0004)
        );
        for id in [
            LogicalId::None,
            LogicalId::RESET,
            LogicalId::Flat(0xFF),
            LogicalId::Cluster(0x3A),
            LogicalId::X2Apic(u32::MAX),
            LogicalId::X2Apic(0),
        ] {
            assert_eq!(LogicalId::unpack(id.pack()), id);
        }
        // Mixed modes: an x2APIC target reads an 8-bit MDA as cluster 0;
        // an xAPIC one never matches a wider destination.
        assert!(logical_match(0x02, LogicalId::X2Apic(0x2)));
        assert!(!logical_match(0x1_0002, LogicalId::Flat(0x2)));
        assert!(!logical_match(0x02, LogicalId::None));
    }

    /// Every flat and cluster MDA against every logical APIC ID, by the
    /// SDM's words: flat, some bit of the MDA is set in the ID; cluster,
    /// the high nibbles are equal and some low bit is set in both.
    #[test]
    fn xapic_rules_exhaustively() {
        for mda in 0..=255u8 {
            for l in 0..=255u8 {
                let common = (0..8).any(|b| mda & l & (1 << b) != 0);
                let low_common = (0..4).any(|b| mda & l & (1 << b) != 0);
                assert_eq!(flat_match(mda, l), common, "flat {mda:#x} {l:#x}");
                assert_eq!(
                    cluster_match(mda, l),
                    mda / 16 == l / 16 && low_common,
                    "cluster {mda:#x} {l:#x}"
                );
                for id in [LogicalId::Flat(l), LogicalId::Cluster(l)] {
                    let by_rule = match id {
                        LogicalId::Flat(_) => common,
                        _ => mda / 16 == l / 16 && low_common,
                    };
                    assert_eq!(logical_match(u32::from(mda), id), by_rule);
                }
            }
        }
    }

    use proptest::prelude::*;

    fn any_logical_id() -> impl Strategy<Value = LogicalId> {
        prop_oneof![
            Just(LogicalId::None),
            any::<u8>().prop_map(LogicalId::Flat),
            any::<u8>().prop_map(LogicalId::Cluster),
            // Few clusters, so that equal ones are common.
            (0u32..4, any::<u16>()).prop_map(|(c, b)| LogicalId::X2Apic(c << 16 | u32::from(b))),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// x2APIC cluster: the cluster halves equal and a common bitmap bit.
        #[test]
        fn x2apic_rule(c in 0u32..4, d in 0u32..4, db in any::<u16>(), lb in any::<u16>()) {
            let dest = c << 16 | u32::from(db);
            let ldr = d << 16 | u32::from(lb);
            let common = (0..16).any(|b| db & lb & (1 << b) != 0);
            prop_assert_eq!(x2apic_cluster_match(dest, ldr), c == d && common);
            prop_assert_eq!(logical_match(dest, LogicalId::X2Apic(ldr)), c == d && common);
        }

        /// A logical IPI reaches exactly the other vCPUs whose logical
        /// address matches (all of them for the broadcast); INIT the
        /// sender too; lowest priority exactly one of those named, or
        /// none when the sender (which takes it itself) is named.
        #[test]
        fn logical_decode_is_the_match_rule(
            ids in proptest::collection::vec(any_logical_id(), 1..MAX_VCPUS),
            sender in 0usize..MAX_VCPUS,
            dest in prop_oneof![any::<u8>().prop_map(u32::from), (0u32..4, any::<u16>()).prop_map(|(c, b)| c << 16 | u32::from(b))],
            x2apic in any::<bool>(),
            mode in prop_oneof![Just(FIXED), Just(LOWEST), Just(NMI), Just(INIT)],
        ) {
            let n = ids.len();
            let sender = sender % n;
            let dest = if x2apic { dest } else { dest & 0xFF };
            let icr = mode | LOGICAL | 0x40 | (u64::from(dest) << if x2apic { 32 } else { 56 });
            let broadcast = dest == if x2apic { u32::MAX } else { 0xFF };
            let named: u64 = (0..n)
                .filter(|&i| broadcast || logical_match(dest, ids[i]))
                .fold(0, |m, i| m | 1 << i);
            let me = 1u64 << sender;
            let got = decode(icr, x2apic, sender, n, |i| ids[i]).targets;
            match mode {
                INIT => prop_assert_eq!(got, named),
                LOWEST if named & me != 0 => prop_assert_eq!(got, 0),
                LOWEST => {
                    prop_assert_eq!(got.count_ones(), u32::from(named != 0));
                    prop_assert_eq!(got, named & named.wrapping_neg());
                }
                _ => prop_assert_eq!(got, named & !me),
            }
        }
    }
}
