//! The local APIC, in xAPIC mode (MMIO at 0xFEE00000) and x2APIC mode (MSRs
//! 0x800-0x8FF), behind one register interface so that the timer and IPI
//! checks run unchanged in both (AMD APM vol. 2, 16.3-16.6; Intel SDM 11.12).

use crate::cpu::{cpuid, rdmsr, spin, wrmsr};
use crate::idt::{self, count};
use crate::report::{bail, expect_eq, Check};

pub const IA32_APIC_BASE: u32 = 0x1B;
pub const BASE_BSP: u64 = 1 << 8;
pub const BASE_EXTD: u64 = 1 << 10;
pub const BASE_EN: u64 = 1 << 11;
pub const MMIO_BASE: u64 = 0xFEE0_0000;

/// Register offsets (xAPIC MMIO; the x2APIC MSR is 0x800 + offset / 16).
pub const ID: u32 = 0x20;
pub const VERSION: u32 = 0x30;
pub const TPR: u32 = 0x80;
pub const EOI: u32 = 0xB0;
pub const SPIV: u32 = 0xF0;
pub const ICR_LOW: u32 = 0x300;
pub const ICR_HIGH: u32 = 0x310;
pub const LVT_TIMER: u32 = 0x320;
pub const TMICT: u32 = 0x380;
pub const TMCCT: u32 = 0x390;
pub const TDCR: u32 = 0x3E0;

pub const SPIV_ENABLE: u32 = 1 << 8;
pub const LVT_MASKED: u32 = 1 << 16;
pub const ICR_PENDING: u32 = 1 << 12;
pub const ICR_ASSERT: u32 = 1 << 14;
pub const ICR_SELF: u32 = 1 << 18;
/// TDCR value for divide by 1.
pub const DIVIDE_BY_1: u32 = 0xB;

pub const TIMER_VECTOR: u8 = 0x40;
pub const IPI_VECTOR: u8 = 0x41;
pub const SPURIOUS_VECTOR: u8 = 0xFF;

/// The x2APIC SELF IPI register (x2APIC only).
const X2APIC_SELF_IPI: u32 = 0x83F;

/// Register access in one APIC mode.
pub trait Apic {
    fn read(&self, reg: u32) -> u32;
    fn write(&self, reg: u32, value: u32);
    /// Sends a fixed self-IPI through the ICR.
    fn self_ipi(&self, vector: u8);
    fn eoi(&self) {
        self.write(EOI, 0);
    }
}

/// xAPIC: 32-bit MMIO accesses to the APIC page (uncached in our tables).
#[derive(Debug)]
pub struct XApic;

impl Apic for XApic {
    fn read(&self, reg: u32) -> u32 {
        // SAFETY: the APIC page is identity mapped; 32-bit aligned access.
        unsafe { core::ptr::read_volatile((MMIO_BASE + u64::from(reg)) as *const u32) }
    }
    fn write(&self, reg: u32, value: u32) {
        // SAFETY: as for read.
        unsafe { core::ptr::write_volatile((MMIO_BASE + u64::from(reg)) as *mut u32, value) }
    }
    fn self_ipi(&self, vector: u8) {
        self.write(ICR_HIGH, 0);
        self.write(ICR_LOW, ICR_SELF | ICR_ASSERT | u32::from(vector));
    }
}

/// x2APIC: RDMSR/WRMSR of 0x800 + reg / 16.
#[derive(Debug)]
pub struct X2Apic;

impl Apic for X2Apic {
    fn read(&self, reg: u32) -> u32 {
        rdmsr(0x800 + reg / 16) as u32
    }
    fn write(&self, reg: u32, value: u32) {
        wrmsr(0x800 + reg / 16, u64::from(value));
    }
    fn self_ipi(&self, vector: u8) {
        // One 64-bit ICR write (MSR 0x830).
        wrmsr(
            0x800 + ICR_LOW / 16,
            u64::from(ICR_SELF | ICR_ASSERT | u32::from(vector)),
        );
    }
}

/// The initial APIC ID from CPUID.1:EBX[31:24].
pub fn cpuid_apic_id() -> u32 {
    cpuid(1, 0)[1] >> 24
}

/// CPUID.1:ECX[21]: x2APIC.
pub fn has_x2apic() -> bool {
    cpuid(1, 0)[2] & (1 << 21) != 0
}

/// IA32_APIC_BASE says: enabled, BSP, at 0xFEE00000, xAPIC mode.
pub fn check_base() -> Check {
    let base = rdmsr(IA32_APIC_BASE);
    expect_eq!("IA32_APIC_BASE address", base & !0xFFF, MMIO_BASE);
    expect_eq!(
        "IA32_APIC_BASE BSP|EN|EXTD",
        base & (BASE_BSP | BASE_EN | BASE_EXTD),
        BASE_BSP | BASE_EN
    );
    Ok(())
}

/// ID matches CPUID; the version is an integrated APIC's (0x1x) with at
/// least the timer..error LVTs; SPIV enables with our spurious vector.
pub fn check_registers(apic: &dyn Apic, x2apic: bool) -> Check {
    let id = apic.read(ID);
    // xAPIC: ID in bits 31:24; x2APIC: the whole register.
    let id = if x2apic { id } else { id >> 24 };
    expect_eq!("APIC ID", id, cpuid_apic_id());
    let version = apic.read(VERSION);
    if version & 0xF0 != 0x10 {
        bail!("version register {version:#x}: not an integrated APIC (0x1x)");
    }
    if (version >> 16) & 0xFF < 3 {
        bail!("version register {version:#x}: fewer than 4 LVT entries");
    }
    apic.write(SPIV, SPIV_ENABLE | u32::from(SPURIOUS_VECTOR));
    expect_eq!(
        "SPIV after enabling",
        apic.read(SPIV) & 0x1FF,
        SPIV_ENABLE | u32::from(SPURIOUS_VECTOR)
    );
    apic.write(TPR, 0x30);
    expect_eq!("TPR read back", apic.read(TPR) & 0xFF, 0x30);
    apic.write(TPR, 0);
    Ok(())
}

/// Polls, interrupts on, until `vector` has been taken `want` times; once
/// the timer has reached 0 a bounded spin decides that the interrupt is
/// missing. No HLT here: nothing would wake it if the interrupt never came.
fn poll_for(apic: &dyn Apic, vector: u8, want: u32) -> Check {
    idt::with_interrupts(|| {
        while count(vector) < want && apic.read(TMCCT) != 0 {
            spin(100);
        }
        for _ in 0..1000 {
            if count(vector) >= want {
                break;
            }
            // A register read: under a hypervisor that injects at the next
            // exit, this is one (real hardware does not care).
            apic.read(TMCCT);
            spin(1000);
        }
    });
    if count(vector) < want {
        bail!(
            "timer reached 0 but vector {vector:#x} came {} times, not {want}",
            count(vector) - (want - 1)
        );
    }
    Ok(())
}

/// One-shot timer (APM 16.4.1): counts down at divide 1, interrupts once at
/// 0, stays at 0; a second shot wakes HLT.
pub fn check_timer_oneshot(apic: &dyn Apic) -> Check {
    let before = count(TIMER_VECTOR);
    apic.write(TDCR, DIVIDE_BY_1);
    // Masked first: the current count must fall.
    apic.write(LVT_TIMER, LVT_MASKED | u32::from(TIMER_VECTOR));
    apic.write(TMICT, 0x1000_0000);
    let a = apic.read(TMCCT);
    spin(10_000);
    let b = apic.read(TMCCT);
    apic.write(TMICT, 0);
    if !(b < a && a <= 0x1000_0000) {
        bail!("current count does not fall: {a:#x} then {b:#x}");
    }
    if count(TIMER_VECTOR) != before {
        bail!("masked timer interrupted");
    }
    apic.write(LVT_TIMER, u32::from(TIMER_VECTOR));
    apic.write(TMICT, 100_000);
    poll_for(apic, TIMER_VECTOR, before + 1)?;
    // One shot: no second interrupt, the count stays 0.
    idt::with_interrupts(|| spin(200_000));
    expect_eq!("timer interrupts", count(TIMER_VECTOR) - before, 1);
    expect_eq!("current count after expiry", apic.read(TMCCT), 0);
    // Delivery works: now HLT until the next shot wakes us (STI's shadow
    // covers HLT, so an interrupt already pending wakes it too).
    apic.write(TMICT, 100_000);
    while count(TIMER_VECTOR) < before + 2 {
        idt::wait_for_interrupt();
    }
    apic.write(LVT_TIMER, LVT_MASKED | u32::from(TIMER_VECTOR));
    Ok(())
}

/// A fixed self-IPI through the ICR arrives once (APM 16.5).
pub fn check_self_ipi(apic: &dyn Apic, send: impl Fn()) -> Check {
    let before = count(IPI_VECTOR);
    send();
    idt::with_interrupts(|| {
        for _ in 0..1000 {
            if count(IPI_VECTOR) > before {
                break;
            }
            spin(1000);
        }
    });
    expect_eq!("self-IPI interrupts", count(IPI_VECTOR) - before, 1);
    if apic.read(ICR_LOW) & ICR_PENDING != 0 {
        bail!("ICR still shows the IPI pending");
    }
    Ok(())
}

/// The x2APIC SELF IPI register (Intel SDM 11.12.11).
pub fn x2apic_self_ipi_register(vector: u8) {
    wrmsr(X2APIC_SELF_IPI, u64::from(vector));
}
