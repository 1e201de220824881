use super::*;

fn enabled() -> Lapic {
    let mut a = Lapic::new(0, true, true, 40);
    a.mmio_write(reg::SPIV as u64, 4, 0x1FF, 0);
    a
}

fn x2() -> Lapic {
    let mut a = enabled();
    a.write_base_msr(DEFAULT_BASE | BASE_EN | BASE_EXTD)
        .unwrap();
    a
}

#[test]
fn reset_state() {
    let mut a = Lapic::new(3, true, true, 40);
    assert_eq!(a.mode(), Mode::XApic);
    assert_eq!(a.mmio_base(), Some(DEFAULT_BASE));
    assert_eq!(a.base_msr(), DEFAULT_BASE | BASE_EN | BASE_BSP);
    assert_eq!(a.mmio_read(reg::ID as u64, 4, 0), 3 << 24);
    assert_eq!(a.mmio_read(reg::LVR as u64, 4, 0), 0x0005_0014);
    assert_eq!(a.mmio_read(reg::SPIV as u64, 4, 0), 0xFF);
    assert_eq!(a.mmio_read(reg::DFR as u64, 4, 0), 0xFFFF_FFFF);
    for r in reg::LVTT..=reg::LVTERR {
        if r % 16 == 0 {
            assert_eq!(a.mmio_read(r as u64, 4, 0), 0x1_0000, "{r:#x}");
        }
    }
    // Narrow reads see the bytes they cover.
    assert_eq!(a.mmio_read(reg::LVR as u64 + 2, 1, 0), 0x05);
    assert_eq!(a.mmio_read(reg::LVR as u64 + 4, 4, 0), 0);
}

#[test]
fn tpr_ppr_and_priority() {
    let mut a = enabled();
    a.accept(0x45);
    assert_eq!(a.pending_vector(), Some(0x45));
    a.mmio_write(reg::TPR as u64, 4, 0x40, 0);
    assert_eq!(a.pending_vector(), None, "class 4 masked by TPR 0x40");
    a.mmio_write(reg::TPR as u64, 4, 0x3F, 0);
    assert_eq!(a.pending_vector(), Some(0x45));
    a.mmio_write(reg::TPR as u64, 4, 0, 0);
    a.ack(0x45);
    assert_eq!(a.mmio_read(reg::PPR as u64, 4, 0), 0x40);
    assert_eq!(a.mmio_read(reg::ISR as u64 + 0x20, 4, 0), 1 << 5);
    // Same class as in service: held; a higher class gets through.
    a.accept(0x41);
    assert_eq!(a.pending_vector(), None);
    a.accept(0x51);
    assert_eq!(a.pending_vector(), Some(0x51));
    // TPR above the in-service class: PPR is TPR.
    a.set_tpr(0x62);
    assert_eq!(a.ppr(), 0x62);
}

#[test]
fn eoi_ends_the_highest_in_service() {
    let mut a = enabled();
    a.accept(0x30);
    a.accept(0x80);
    let p = a.pending_vector().unwrap();
    assert_eq!(p, 0x80);
    a.ack(p);
    // 0x30 is below the in-service class: still in IRR.
    assert_eq!(a.pending_vector(), None);
    a.mmio_write(reg::EOI as u64, 4, 0, 0);
    assert_eq!(a.ppr(), 0, "0x80 ended");
    assert_eq!(a.pending_vector(), Some(0x30));
    a.ack(0x30);
    a.accept(0x90);
    a.ack(0x90);
    // ISR: 0x30, 0x90; EOI ends 0x90, not 0x30.
    a.eoi();
    assert_eq!(a.mmio_read(reg::ISR as u64 + 0x10, 4, 0), 1 << 16);
    assert_eq!(a.mmio_read(reg::ISR as u64 + 0x40, 4, 0), 0);
}

#[test]
fn illegal_vectors_set_esr() {
    let mut a = x2();
    a.write_msr(0x83F, 5, 0).unwrap();
    assert_eq!(a.pending_vector(), None);
    a.write_msr(0x828, 0, 0).unwrap();
    assert_eq!(
        a.read_msr(0x828, 0),
        Ok(u64::from(ESR_SEND_ILLEGAL | ESR_RECV_ILLEGAL))
    );
    a.write_msr(0x828, 0, 0).unwrap();
    assert_eq!(a.read_msr(0x828, 0), Ok(0));
}

#[test]
fn one_shot_timer_counts_down_and_fires_once() {
    let mut a = enabled();
    a.mmio_write(reg::TDCR as u64, 4, 0xB, 0); // divide by 1
    a.mmio_write(reg::LVTT as u64, 4, 0x40, 0);
    a.mmio_write(reg::TMICT as u64, 4, 1000, 100);
    assert_eq!(a.next_deadline(), Some(1100));
    assert_eq!(a.mmio_read(reg::TMCCT as u64, 4, 600), 500);
    a.advance(1099);
    assert_eq!(a.pending_vector(), None);
    a.advance(1100);
    assert_eq!(a.pending_vector(), Some(0x40));
    assert_eq!(a.mmio_read(reg::TMCCT as u64, 4, 1200), 0);
    assert_eq!(a.next_deadline(), None);
    a.ack(0x40);
    a.eoi();
    a.advance(5000);
    assert_eq!(a.pending_vector(), None, "one-shot: once");
}

#[test]
fn divide_configuration_scales_the_period() {
    let cases = [
        (0xB, 1),
        (0x0, 2),
        (0x1, 4),
        (0x2, 8),
        (0x3, 16),
        (0x8, 32),
        (0x9, 64),
        (0xA, 128),
    ];
    for (tdcr, div) in cases {
        let mut a = enabled();
        a.mmio_write(reg::TDCR as u64, 4, tdcr, 0);
        a.mmio_write(reg::LVTT as u64, 4, 0x40, 0);
        a.mmio_write(reg::TMICT as u64, 4, 100, 0);
        assert_eq!(a.next_deadline(), Some(100 * div), "tdcr {tdcr:#x}");
        assert_eq!(
            a.mmio_read(reg::TMCCT as u64, 4, 10 * div),
            90,
            "tdcr {tdcr:#x}"
        );
    }
}

#[test]
fn periodic_timer_rearms() {
    let mut a = enabled();
    a.mmio_write(reg::TDCR as u64, 4, 0xB, 0);
    a.mmio_write(reg::LVTT as u64, 4, u64::from(0x40 | LVT_TIMER_PERIODIC), 0);
    a.mmio_write(reg::TMICT as u64, 4, 1_000_000, 0);
    a.advance(1_000_000);
    assert_eq!(a.pending_vector(), Some(0x40));
    a.ack(0x40);
    a.eoi();
    assert_eq!(a.next_deadline(), Some(2_000_000));
    // Several periods missed: one interrupt, the phase kept.
    a.advance(4_500_000);
    assert_eq!(a.pending_vector(), Some(0x40));
    assert_eq!(a.next_deadline(), Some(5_000_000));
    assert_eq!(a.mmio_read(reg::TMCCT as u64, 4, 4_700_000), 300_000);
    // TMICT 0 stops it.
    a.mmio_write(reg::TMICT as u64, 4, 0, 4_800_000);
    assert_eq!(a.next_deadline(), None);
}

#[test]
fn periodic_timer_has_a_minimum_period() {
    let mut a = enabled();
    a.mmio_write(reg::TDCR as u64, 4, 0xB, 0);
    a.mmio_write(reg::LVTT as u64, 4, u64::from(0x40 | LVT_TIMER_PERIODIC), 0);
    a.mmio_write(reg::TMICT as u64, 4, 1000, 0);
    assert_eq!(a.next_deadline(), Some(MIN_PERIOD_NS));
    // A one-shot is not limited.
    a.mmio_write(reg::LVTT as u64, 4, 0x40, 0);
    a.mmio_write(reg::TMICT as u64, 4, 1000, 0);
    assert_eq!(a.next_deadline(), Some(1000));
}

#[test]
fn masked_timer_counts_without_interrupting() {
    let mut a = enabled();
    a.mmio_write(reg::TDCR as u64, 4, 0xB, 0);
    a.mmio_write(reg::LVTT as u64, 4, u64::from(0x40 | LVT_MASKED), 0);
    a.mmio_write(reg::TMICT as u64, 4, 10, 0);
    a.advance(20);
    assert_eq!(a.pending_vector(), None);
    // A software-disabled APIC masks LVT writes.
    let mut b = Lapic::new(0, true, true, 40);
    b.mmio_write(reg::LVTT as u64, 4, 0x40, 0);
    assert_eq!(b.mmio_read(reg::LVTT as u64, 4, 0), 0x1_0040);
}

#[test]
fn self_ipi_nmi_smi_init_and_others() {
    let mut a = enabled();
    // Shorthand self, fixed.
    a.mmio_write(reg::ICR as u64, 4, (1 << 18) | 0x55, 0);
    assert_eq!(a.pending_vector(), Some(0x55));
    assert_eq!(a.mmio_read(reg::ICR as u64, 4, 0) & (1 << 12), 0, "idle");
    // NMI to self by physical ID 0.
    a.mmio_write(reg::ICR2 as u64, 4, 0, 0);
    a.mmio_write(reg::ICR as u64, 4, (4 << 8) | (1 << 14), 0);
    assert!(a.take_nmi());
    assert!(!a.take_nmi());
    // SMI to self: absorbed.
    a.mmio_write(reg::ICR as u64, 4, (1 << 18) | (2 << 8), 0);
    assert_eq!(a.stats.smi, 1);
    assert!(a.take_smi());
    assert!(!a.smi_pending());
    // INIT to self: ignored.
    a.mmio_write(reg::ICR as u64, 4, (1 << 18) | (5 << 8) | (1 << 14), 0);
    assert_eq!(a.stats.init_sipi, 1);
    // To APIC 1 (absent): dropped.
    a.mmio_write(reg::ICR2 as u64, 4, 1 << 24, 0);
    a.mmio_write(reg::ICR as u64, 4, 0x66, 0);
    assert_eq!(a.stats.to_others, 1);
    assert_eq!(a.irr.word(3), 0, "0x66 not here");
    // All excluding self.
    a.mmio_write(reg::ICR as u64, 4, (3 << 18) | 0x67, 0);
    assert_eq!(a.stats.to_others, 2);
    // All including self.
    a.mmio_write(reg::ICR as u64, 4, (2 << 18) | 0x68, 0);
    assert_eq!(a.stats.to_others, 3);
    assert_ne!(a.irr.word(3) & (1 << 8), 0);
    // Logical flat: LDR bit 0 matches destination 1.
    a.mmio_write(reg::LDR as u64, 4, 1 << 24, 0);
    a.mmio_write(reg::ICR2 as u64, 4, 1 << 24, 0);
    a.mmio_write(reg::ICR as u64, 4, (1 << 11) | 0x70, 0);
    assert_ne!(a.irr.word(3) & (1 << 16), 0);
}

#[test]
fn base_msr_mode_switches() {
    let mut a = enabled();
    let x = DEFAULT_BASE | BASE_EN;
    // xAPIC -> x2APIC.
    assert_eq!(a.write_base_msr(x | BASE_EXTD), Ok(()));
    assert_eq!(a.mode(), Mode::X2Apic);
    assert_eq!(a.mmio_base(), None);
    // x2APIC -> xAPIC is illegal.
    assert_eq!(a.write_base_msr(x), Err(Gp));
    // EXTD without EN is illegal.
    assert_eq!(a.write_base_msr(DEFAULT_BASE | BASE_EXTD), Err(Gp));
    // x2APIC -> disabled resets.
    a.write_msr(0x808, 0x20, 0).unwrap();
    assert_eq!(a.write_base_msr(DEFAULT_BASE), Ok(()));
    assert_eq!(a.mode(), Mode::Disabled);
    assert_eq!(a.read_msr(0x808, 0), Err(Gp));
    // disabled -> x2APIC is illegal; disabled -> xAPIC is fine.
    assert_eq!(a.write_base_msr(x | BASE_EXTD), Err(Gp));
    assert_eq!(a.write_base_msr(x), Ok(()));
    assert_eq!(a.tpr(), 0);
    assert_eq!(a.mmio_read(reg::SPIV as u64, 4, 0), 0xFF);
    // BSP is read-only; reserved bits fault; a relocated base.
    assert_eq!(a.write_base_msr(0xFED0_0000 | BASE_EN), Ok(()));
    assert_eq!(a.base_msr(), 0xFED0_0000 | BASE_EN | BASE_BSP);
    assert_eq!(a.mmio_base(), Some(0xFED0_0000));
    assert_eq!(a.write_base_msr(x | 1), Err(Gp));
    assert_eq!(a.write_base_msr(x | (1 << 9)), Err(Gp));
    assert_eq!(
        a.write_base_msr(x | (1 << 40)),
        Err(Gp),
        "beyond MAXPHYADDR"
    );
    // No x2APIC offered: EXTD faults.
    let mut n = Lapic::new(0, true, false, 40);
    assert_eq!(n.write_base_msr(x | BASE_EXTD), Err(Gp));
}

#[test]
fn x2apic_msr_rules() {
    let mut a = Lapic::new(2, true, true, 40);
    // Not in x2APIC mode: every x2APIC MSR faults.
    assert_eq!(a.read_msr(0x802, 0), Err(Gp));
    a.write_base_msr(DEFAULT_BASE | BASE_EN | BASE_EXTD)
        .unwrap();
    assert_eq!(a.read_msr(0x802, 0), Ok(2), "x2APIC ID, 32 bits");
    assert_eq!(a.read_msr(0x803, 0), Ok(u64::from(VERSION)));
    assert_eq!(a.read_msr(0x80D, 0), Ok(1 << 2), "LDR from the ID");
    // Read-only registers.
    for msr in [0x802, 0x803, 0x80A, 0x80D, 0x810, 0x818, 0x820, 0x839] {
        assert_eq!(a.write_msr(msr, 0, 0), Err(Gp), "{msr:#x}");
    }
    // Write-only: EOI, SELF IPI.
    assert_eq!(a.read_msr(0x80B, 0), Err(Gp));
    assert_eq!(a.read_msr(0x83F, 0), Err(Gp));
    // Absent: DFR, APR, ICR2, unassigned.
    for msr in [0x80E, 0x809, 0x831, 0x800, 0x8FF] {
        assert_eq!(a.read_msr(msr, 0), Err(Gp), "{msr:#x}");
        assert_eq!(a.write_msr(msr, 0, 0), Err(Gp), "{msr:#x}");
    }
    // Reserved bits.
    assert_eq!(a.write_msr(0x808, 0x100, 0), Err(Gp));
    assert_eq!(a.write_msr(0x808, 1 << 32, 0), Err(Gp));
    assert_eq!(a.write_msr(0x80B, 1, 0), Err(Gp), "non-zero EOI");
    assert_eq!(a.write_msr(0x828, 1, 0), Err(Gp), "non-zero ESR");
    assert_eq!(a.write_msr(0x832, 1 << 18, 0), Err(Gp), "no TSC deadline");
    assert_eq!(a.write_msr(0x83F, 0x100, 0), Err(Gp));
    // Enable, then a self-IPI through 0x83F.
    a.write_msr(0x80F, 0x1FF, 0).unwrap();
    a.write_msr(0x83F, 0x42, 0).unwrap();
    assert_eq!(a.pending_vector(), Some(0x42));
    assert_eq!(a.read_msr(0x822, 0), Ok(1 << 2), "IRR word 2 bit 2");
    // ICR is one 64-bit MSR: destination in 63:32.
    a.write_msr(0x830, (2u64 << 32) | (4 << 8), 0).unwrap();
    assert!(a.take_nmi());
    assert_eq!(a.read_msr(0x830, 0), Ok((2u64 << 32) | (4 << 8)));
    a.write_msr(0x830, (7u64 << 32) | 0x50, 0).unwrap();
    assert_eq!(a.stats.to_others, 1);
    assert_eq!(a.write_msr(0x830, 1 << 12, 0), Err(Gp), "delivery status");
}

/// `entry_work` is false exactly when the entry has nothing to do beyond
/// the TPR: no running timer, no SMI, IRR empty (ISR alone is no work).
#[test]
fn entry_work_follows_irr_timer_and_smi() {
    let mut a = enabled();
    assert!(!a.entry_work());
    a.accept(0x45);
    assert!(a.entry_work());
    assert_eq!(a.pending_vector(), Some(0x45));
    a.ack(0x45);
    assert!(!a.entry_work(), "in service only");
    assert_eq!(a.pending_vector(), None);
    a.eoi();
    // A running one-shot timer is work until it has fired.
    a.mmio_write(reg::LVTT as u64, 4, 0x30, 0);
    a.mmio_write(reg::TMICT as u64, 4, 100, 0);
    assert!(a.entry_work());
    a.advance(10_000);
    assert_eq!(a.pending_vector(), Some(0x30));
    a.ack(0x30);
    assert!(!a.entry_work(), "one-shot fired and taken");
    // An SMI waits for GIF.
    a.mmio_write(reg::ICR as u64, 4, (1 << 18) | (2 << 8), 0);
    assert!(a.entry_work());
    assert!(a.take_smi());
    assert!(!a.entry_work());
    // IRR with vectors in several words.
    a.accept(0x21);
    a.accept(0xE1);
    assert_eq!(a.pending_vector(), Some(0xE1));
    a.ack(0xE1);
    assert_eq!(a.pending_vector(), None, "0x21 below the in-service class");
    assert!(a.entry_work());
}

#[test]
fn logical_id_follows_ldr_dfr_and_mode() {
    use crate::devices::ipi::LogicalId;
    let mut a = Lapic::new(18, false, true, 40);
    assert_eq!(a.logical_id(), LogicalId::RESET);
    a.mmio_write(reg::LDR as u64, 4, 0x0200_0000, 0);
    assert_eq!(a.logical_id(), LogicalId::Flat(2));
    a.mmio_write(reg::DFR as u64, 4, 0x0FFF_FFFF, 0);
    a.mmio_write(reg::LDR as u64, 4, 0x1200_0000, 0);
    assert_eq!(a.logical_id(), LogicalId::Cluster(0x12));
    // x2APIC: cluster 18 >> 4 = 1, bit 18 & 15 = 2 (SDM 11.12.10.2).
    a.write_base_msr(DEFAULT_BASE | BASE_EN | BASE_EXTD)
        .unwrap();
    assert_eq!(a.logical_id(), LogicalId::X2Apic(0x1_0004));
    // Disabled: no logical address; re-enabled: the reset one.
    a.write_base_msr(DEFAULT_BASE).unwrap();
    assert_eq!(a.logical_id(), LogicalId::None);
    a.write_base_msr(DEFAULT_BASE | BASE_EN).unwrap();
    assert_eq!(a.logical_id(), LogicalId::RESET);
}

#[test]
fn logical_self_ipi_in_cluster_model() {
    let mut a = enabled();
    a.mmio_write(reg::DFR as u64, 4, 0x0FFF_FFFF, 0);
    a.mmio_write(reg::LDR as u64, 4, 0x2100_0000, 0);
    // Cluster 2, bit 0: this CPU; cluster 1, bit 0: not.
    a.mmio_write(reg::ICR2 as u64, 4, 0x1100_0000, 0);
    a.mmio_write(reg::ICR as u64, 4, (1 << 11) | 0x71, 0);
    assert_eq!(a.irr.word(3) & (1 << 17), 0);
    a.mmio_write(reg::ICR2 as u64, 4, 0x2100_0000, 0);
    a.mmio_write(reg::ICR as u64, 4, (1 << 11) | 0x71, 0);
    assert_ne!(a.irr.word(3) & (1 << 17), 0);
}
