//! A local APIC for one vCPU, as a plain state machine: the xAPIC register
//! page (MMIO at IA32_APIC_BASE, 0xFEE0_0000 after reset), the x2APIC MSRs
//! 0x800-0x8FF, IA32_APIC_BASE (MSR 0x1B) and its mode switches, TPR/PPR,
//! IRR/ISR with EOI, the timer (one-shot and periodic), self-IPIs and NMI.
//! References: Intel SDM Vol. 3A ch. 11 (local APIC, x2APIC 11.12) and
//! AMD APM Vol. 2 ch. 16; KVM's lapic.c where they are silent.
//!
//! Time comes from the caller as nanoseconds (any monotonic clock): the
//! timer's input runs at 1 GHz before the divider, as in QEMU and KVM
//! (so kvm-unit-tests' count of 1000 at divide-by-1 is 1 µs).
//!
//! The kernel asks [`Lapic::pending_vector`] for the highest interrupt the
//! CPU can take, injects it and calls [`Lapic::ack`]; [`Lapic::take_nmi`]
//! gives a pending NMI. What is not modelled, on purpose:
//! - SMI (ICR delivery mode 010): held until GIF allows, then it ends L2's
//!   run with #VMEXIT(SMI) if L1 intercepts SMI, and is otherwise dropped
//!   (counted). L0 offers no SMM to its guests (the APM, Vol. 2 ch. 10,
//!   leaves SMM to the platform), so an SMI that reaches the guest has
//!   nowhere to go; KVM built without SMM drops it as well.
//! - INIT and STARTUP to this CPU: ignored and counted (SMP comes later).
//! - IPIs to other CPUs: counted here; the kernel routes them to the
//!   other vCPUs (`super::ipi`, which matches their logical addresses,
//!   [`Lapic::logical_id`], by the same rules as this APIC's own).

/// IA32_APIC_BASE.
pub const MSR_APIC_BASE: u32 = 0x1B;
/// First x2APIC MSR.
pub const X2APIC_FIRST: u32 = 0x800;
/// Last x2APIC MSR.
pub const X2APIC_LAST: u32 = 0x8FF;
/// The reset value of the xAPIC page address.
pub const DEFAULT_BASE: u64 = 0xFEE0_0000;

/// IA32_APIC_BASE.BSP (bit 8, read-only).
pub const BASE_BSP: u64 = 1 << 8;
/// IA32_APIC_BASE.EXTD (bit 10): x2APIC mode.
pub const BASE_EXTD: u64 = 1 << 10;
/// IA32_APIC_BASE.EN (bit 11): the APIC is enabled.
pub const BASE_EN: u64 = 1 << 11;

/// Version register: version 0x14 (integrated APIC), max LVT entry 5
/// (timer, thermal, performance, LINT0, LINT1, error), as QEMU shows.
pub const VERSION: u32 = 0x0005_0014;

/// Register offsets in the xAPIC page (x2APIC MSR = 0x800 + offset / 16).
pub mod reg {
    /// APIC ID.
    pub const ID: u32 = 0x20;
    /// Version.
    pub const LVR: u32 = 0x30;
    /// Task priority.
    pub const TPR: u32 = 0x80;
    /// Arbitration priority (reads 0 here).
    pub const APR: u32 = 0x90;
    /// Processor priority.
    pub const PPR: u32 = 0xA0;
    /// End of interrupt.
    pub const EOI: u32 = 0xB0;
    /// Remote read (not supported: 0).
    pub const RRD: u32 = 0xC0;
    /// Logical destination.
    pub const LDR: u32 = 0xD0;
    /// Destination format (xAPIC only).
    pub const DFR: u32 = 0xE0;
    /// Spurious interrupt vector.
    pub const SPIV: u32 = 0xF0;
    /// In-service (8 registers).
    pub const ISR: u32 = 0x100;
    /// Trigger mode (8 registers).
    pub const TMR: u32 = 0x180;
    /// Interrupt request (8 registers).
    pub const IRR: u32 = 0x200;
    /// Error status.
    pub const ESR: u32 = 0x280;
    /// Interrupt command, low half.
    pub const ICR: u32 = 0x300;
    /// Interrupt command, high half (xAPIC only).
    pub const ICR2: u32 = 0x310;
    /// LVT timer.
    pub const LVTT: u32 = 0x320;
    /// LVT thermal sensor.
    pub const LVTTHMR: u32 = 0x330;
    /// LVT performance counters.
    pub const LVTPC: u32 = 0x340;
    /// LVT LINT0.
    pub const LVT0: u32 = 0x350;
    /// LVT LINT1.
    pub const LVT1: u32 = 0x360;
    /// LVT error.
    pub const LVTERR: u32 = 0x370;
    /// Timer initial count.
    pub const TMICT: u32 = 0x380;
    /// Timer current count.
    pub const TMCCT: u32 = 0x390;
    /// Timer divide configuration.
    pub const TDCR: u32 = 0x3E0;
    /// Self IPI (x2APIC only, MSR 0x83F).
    pub const SELF_IPI: u32 = 0x3F0;
}

/// LVT mask bit.
pub const LVT_MASKED: u32 = 1 << 16;
/// LVT timer periodic mode.
pub const LVT_TIMER_PERIODIC: u32 = 1 << 17;
/// SPIV: APIC software enable.
pub const SPIV_ENABLE: u32 = 1 << 8;

/// Shortest period of a periodic timer (KVM's `min_timer_period_us`):
/// a faster one (kvm-unit-tests arms 1 µs) would raise its interrupt again
/// at every entry, before the guest's handler could return.
pub const MIN_PERIOD_NS: u64 = 200_000;

/// ESR: send illegal vector.
const ESR_SEND_ILLEGAL: u32 = 1 << 5;
/// ESR: received illegal vector.
const ESR_RECV_ILLEGAL: u32 = 1 << 6;

/// Writable bits of each LVT (timer, thermal, perf, LINT0, LINT1, error):
/// vector, delivery mode where it has one, polarity and trigger for the
/// LINTs, mask, and the timer's periodic bit (no TSC-deadline mode).
const LVT_WRITABLE: [u32; 6] = [0x3_00FF, 0x1_07FF, 0x1_07FF, 0x1_A7FF, 0x1_A7FF, 0x1_00FF];

/// ICR bits software writes (vector, delivery mode, destination mode,
/// level, trigger, shorthand); delivery status (bit 12) is read-only.
const ICR_WRITABLE: u32 = 0x000C_CFFF;

/// Why an MSR access fails: the CPU raises #GP(0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gp;

/// The operating mode, from IA32_APIC_BASE.EN and EXTD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// EN clear: no APIC (its page is no device, its MSRs #GP).
    Disabled,
    /// xAPIC: the register page at the base address.
    XApic,
    /// x2APIC: the MSRs, no page.
    X2Apic,
}

/// What an ICR write did besides interrupts to this CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IpiStats {
    /// IPIs to CPUs that do not exist (one vCPU): dropped.
    pub to_others: u64,
    /// SMIs absorbed (no SMM emulated).
    pub smi: u64,
    /// INIT or STARTUP to this CPU: ignored.
    pub init_sipi: u64,
}

mod bits;
use bits::Bits256;

/// The timer's running state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Timer {
    /// Initial count (0: stopped).
    initial: u32,
    /// When the current period started (ns).
    start: u64,
    /// A one-shot that has fired (count 0 until rearmed).
    expired: bool,
}

/// One vCPU's local APIC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lapic {
    /// The initial APIC ID (the x2APIC ID).
    initial_id: u32,
    base: u64,
    /// Whether the CPU offers x2APIC (CPUID.1:ECX\[21\]).
    x2apic_allowed: bool,
    /// MAXPHYADDR, for the base's reserved bits.
    max_phys_bits: u8,
    xapic_id: u32,
    tpr: u32,
    ldr: u32,
    dfr: u32,
    spiv: u32,
    isr: Bits256,
    irr: Bits256,
    tmr: Bits256,
    esr: u32,
    esr_pending: u32,
    icr: u64,
    lvt: [u32; 6],
    tdcr: u32,
    timer: Timer,
    nmi_pending: bool,
    smi_pending: bool,
    /// What became of IPIs that did not reach this CPU's IRR.
    pub stats: IpiStats,
}

impl Lapic {
    /// The APIC at reset (SDM 11.4.7.1): xAPIC mode at 0xFEE0_0000,
    /// software-disabled (SPIV 0xFF), every LVT masked.
    pub fn new(id: u32, bsp: bool, x2apic_allowed: bool, max_phys_bits: u8) -> Self {
        let mut a = Self {
            initial_id: id,
            base: DEFAULT_BASE | BASE_EN | if bsp { BASE_BSP } else { 0 },
            x2apic_allowed,
            max_phys_bits,
            xapic_id: 0,
            tpr: 0,
            ldr: 0,
            dfr: 0,
            spiv: 0,
            isr: Bits256::default(),
            irr: Bits256::default(),
            tmr: Bits256::default(),
            esr: 0,
            esr_pending: 0,
            icr: 0,
            lvt: [0; 6],
            tdcr: 0,
            timer: Timer::default(),
            nmi_pending: false,
            smi_pending: false,
            stats: IpiStats::default(),
        };
        a.reset_registers();
        a
    }

    /// The register state of a reset (also on x2APIC -> disabled, SDM
    /// 11.12.5.1): the ID and the base stay.
    fn reset_registers(&mut self) {
        self.xapic_id = self.initial_id << 24;
        self.tpr = 0;
        self.ldr = 0;
        self.dfr = 0xFFFF_FFFF;
        self.spiv = 0xFF;
        self.isr = Bits256::default();
        self.irr = Bits256::default();
        self.tmr = Bits256::default();
        self.esr = 0;
        self.esr_pending = 0;
        self.icr = 0;
        self.lvt = [LVT_MASKED; 6];
        self.tdcr = 0;
        self.timer = Timer::default();
        self.nmi_pending = false;
        self.smi_pending = false;
    }

    /// Sets MAXPHYADDR (the guest's CPUID), for the base's reserved bits.
    pub fn set_max_phys_bits(&mut self, bits: u8) {
        self.max_phys_bits = bits;
    }

    /// The current mode.
    #[inline]
    pub fn mode(&self) -> Mode {
        match (self.base & BASE_EN != 0, self.base & BASE_EXTD != 0) {
            (false, _) => Mode::Disabled,
            (true, false) => Mode::XApic,
            (true, true) => Mode::X2Apic,
        }
    }

    /// The guest-physical page of the registers while in xAPIC mode.
    pub fn mmio_base(&self) -> Option<u64> {
        (self.mode() == Mode::XApic).then_some(self.base & self.base_mask())
    }

    fn base_mask(&self) -> u64 {
        let bits = u32::from(self.max_phys_bits.min(52));
        ((1u64 << bits) - 1) & !0xFFF
    }

    /// RDMSR IA32_APIC_BASE.
    pub fn base_msr(&self) -> u64 {
        self.base
    }

    /// WRMSR IA32_APIC_BASE (SDM 11.12.5, Figure 11-27 state diagram):
    /// reserved bits, EXTD without x2APIC, EXTD without EN, x2APIC ->
    /// xAPIC and disabled -> x2APIC are #GP; BSP is read-only. Leaving
    /// x2APIC for disabled resets the APIC; so does disabling it.
    pub fn write_base_msr(&mut self, value: u64) -> Result<(), Gp> {
        let reserved = !(self.base_mask() | BASE_BSP | BASE_EN | BASE_EXTD);
        if value & reserved != 0 || (value & BASE_EXTD != 0 && !self.x2apic_allowed) {
            return Err(Gp);
        }
        let new = (value & !BASE_BSP) | (self.base & BASE_BSP);
        let from = self.mode();
        let to = match (new & BASE_EN != 0, new & BASE_EXTD != 0) {
            (false, false) => Mode::Disabled,
            (true, false) => Mode::XApic,
            (true, true) => Mode::X2Apic,
            (false, true) => return Err(Gp),
        };
        match (from, to) {
            (Mode::X2Apic, Mode::XApic) | (Mode::Disabled, Mode::X2Apic) => return Err(Gp),
            _ => {}
        }
        self.base = new;
        match (from, to) {
            (Mode::XApic | Mode::X2Apic, Mode::Disabled) => self.reset_registers(),
            // The x2APIC ID is the initial ID, LDR derived from it (11.12.10.2).
            (Mode::XApic, Mode::X2Apic) => {
                let id = self.initial_id;
                self.ldr = ((id >> 4) << 16) | (1 << (id & 0xF));
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether the APIC is software-enabled (SPIV bit 8).
    fn sw_enabled(&self) -> bool {
        self.spiv & SPIV_ENABLE != 0
    }

    /// Processor priority (SDM 11.8.3.1): TPR, or the in-service class if
    /// that is higher.
    pub fn ppr(&self) -> u32 {
        let isrv = self.isr.highest().map_or(0, u32::from);
        if (self.tpr & 0xF0) >= (isrv & 0xF0) {
            self.tpr & 0xFF
        } else {
            isrv & 0xF0
        }
    }

    /// TPR (bits 7:0).
    pub fn tpr(&self) -> u8 {
        self.tpr as u8
    }

    /// Sets TPR (a CR8 write sets bits 7:4, APM 15.21.4).
    pub fn set_tpr(&mut self, tpr: u8) {
        self.tpr = u32::from(tpr);
    }

    /// Accepts a fixed interrupt for this CPU (SDM 11.8.4): into IRR;
    /// vectors 0-15 are illegal and set ESR instead.
    pub fn accept(&mut self, vector: u8) {
        if self.mode() == Mode::Disabled {
            return;
        }
        if vector < 16 {
            self.raise_error(ESR_RECV_ILLEGAL);
            return;
        }
        self.irr.set(vector);
    }

    fn raise_error(&mut self, bit: u32) {
        self.esr_pending |= bit;
        let lvt = self.lvt[5];
        if lvt & LVT_MASKED == 0 && self.sw_enabled() {
            let v = lvt as u8;
            if v >= 16 {
                self.irr.set(v);
            }
        }
    }

    /// The highest interrupt in IRR whose priority class is above PPR's:
    /// what the CPU takes next when RFLAGS.IF allows (SDM 11.8.3).
    #[inline]
    pub fn pending_vector(&self) -> Option<u8> {
        // Empty IRR (the common case at every guest entry): one test.
        if self.irr.is_empty() || self.mode() == Mode::Disabled {
            return None;
        }
        let v = self.irr.highest()?;
        (u32::from(v) & 0xF0 > self.ppr() & 0xF0).then_some(v)
    }

    /// The CPU took `vector` (from [`Self::pending_vector`]): IRR -> ISR.
    pub fn ack(&mut self, vector: u8) {
        self.irr.clear(vector);
        self.isr.set(vector);
    }

    /// EOI: the highest in-service interrupt ends (SDM 11.8.5).
    pub fn eoi(&mut self) {
        if let Some(v) = self.isr.highest() {
            self.isr.clear(v);
            self.tmr.clear(v);
        }
    }

    /// A pending NMI (from an ICR with delivery mode NMI), taken.
    pub fn take_nmi(&mut self) -> bool {
        core::mem::take(&mut self.nmi_pending)
    }

    /// A pending SMI, taken. L0 has no SMM for its guests: the caller ends
    /// L2's run with #VMEXIT(SMI) when L1 intercepts SMI (APM 15.13.3),
    /// and otherwise drops it.
    pub fn take_smi(&mut self) -> bool {
        core::mem::take(&mut self.smi_pending)
    }

    /// Whether an SMI waits (for GIF).
    pub fn smi_pending(&self) -> bool {
        self.smi_pending
    }

    /// Whether an NMI waits.
    pub fn nmi_pending(&self) -> bool {
        self.nmi_pending
    }

    /// Whether the entry into the guest has APIC work beyond the TPR: a
    /// running timer to bring up to date, an SMI waiting, or an interrupt
    /// requested. False is the common case: the run loop then skips the
    /// rest of its APIC step.
    #[inline]
    pub fn entry_work(&self) -> bool {
        !self.irr.is_empty() || self.smi_pending || self.timer_running()
    }

    // ---- timer ----

    /// The divisor TDCR selects (SDM Figure 11-10: bits 3, 1:0).
    fn divisor(&self) -> u64 {
        let v = (self.tdcr & 3) | ((self.tdcr & 8) >> 1);
        if v == 7 {
            1
        } else {
            2 << v
        }
    }

    fn period_ns(&self) -> u64 {
        let period = u64::from(self.timer.initial) * self.divisor();
        if self.periodic() {
            period.max(MIN_PERIOD_NS)
        } else {
            period
        }
    }

    fn periodic(&self) -> bool {
        self.lvt[0] & LVT_TIMER_PERIODIC != 0
    }

    /// Brings the timer up to `now`: an expiry sets the timer's vector in
    /// IRR unless its LVT is masked (SDM 11.5.4). A periodic timer that
    /// missed several periods raises one interrupt (IRR is one bit).
    pub fn advance(&mut self, now: u64) {
        let Some(deadline) = self.next_deadline() else {
            return;
        };
        if now < deadline {
            return;
        }
        if self.periodic() {
            let period = self.period_ns();
            let periods = (now - self.timer.start) / period;
            self.timer.start += periods * period;
        } else {
            self.timer.expired = true;
        }
        let lvt = self.lvt[0];
        if lvt & LVT_MASKED == 0 {
            self.accept(lvt as u8);
        }
    }

    /// Whether the timer counts ([`Self::next_deadline`] is `Some`).
    #[inline]
    fn timer_running(&self) -> bool {
        self.timer.initial != 0 && !self.timer.expired && self.mode() != Mode::Disabled
    }

    /// When the timer next expires (ns), if it runs.
    pub fn next_deadline(&self) -> Option<u64> {
        if !self.timer_running() {
            return None;
        }
        Some(self.timer.start.saturating_add(self.period_ns()))
    }

    /// TMCCT at `now` (call [`Self::advance`] first).
    fn current_count(&self, now: u64) -> u32 {
        if self.next_deadline().is_none() {
            return 0;
        }
        let elapsed = now.saturating_sub(self.timer.start);
        let left = self.period_ns().saturating_sub(elapsed);
        left.div_ceil(self.divisor())
            .min(u64::from(self.timer.initial)) as u32
    }

    // ---- registers ----

    /// Reads the 32-bit register at `offset` (16-byte aligned) as the
    /// xAPIC page shows it; `None` for a write-only or absent register.
    fn read_reg(&mut self, offset: u32, now: u64) -> Option<u32> {
        self.advance(now);
        let x2 = self.mode() == Mode::X2Apic;
        Some(match offset {
            reg::ID if x2 => self.initial_id,
            reg::ID => self.xapic_id,
            reg::LVR => VERSION,
            reg::TPR => self.tpr,
            reg::APR if !x2 => 0,
            reg::PPR => self.ppr(),
            reg::RRD if !x2 => 0,
            reg::LDR => self.ldr,
            reg::DFR if !x2 => self.dfr,
            reg::SPIV => self.spiv,
            o @ 0x100..=0x170 => self.isr.word(((o - reg::ISR) >> 4) as usize),
            o @ 0x180..=0x1F0 => self.tmr.word(((o - reg::TMR) >> 4) as usize),
            o @ 0x200..=0x270 => self.irr.word(((o - reg::IRR) >> 4) as usize),
            reg::ESR => self.esr,
            reg::ICR => self.icr as u32,
            reg::ICR2 if !x2 => (self.icr >> 32) as u32,
            o @ reg::LVTT..=reg::LVTERR => self.lvt[((o - reg::LVTT) >> 4) as usize],
            reg::TMICT => self.timer.initial,
            reg::TMCCT => self.current_count(now),
            reg::TDCR => self.tdcr,
            // EOI and SELF IPI are write-only: the xAPIC page reads 0.
            reg::EOI if !x2 => 0,
            _ if x2 => return None,
            _ => 0,
        })
    }

    /// Writes the 32-bit register at `offset`. `Err` for a read-only or
    /// absent register, or reserved bits (which only x2APIC faults on: the
    /// caller ignores the error in xAPIC mode, as the page drops them).
    fn write_reg(&mut self, offset: u32, value: u32, now: u64) -> Result<(), Gp> {
        self.advance(now);
        let x2 = self.mode() == Mode::X2Apic;
        let check = |mask: u32| if value & !mask != 0 { Err(Gp) } else { Ok(()) };
        match offset {
            reg::ID if !x2 => self.xapic_id = value & 0xFF00_0000,
            reg::TPR => {
                check(0xFF)?;
                self.tpr = value & 0xFF;
            }
            reg::EOI => {
                // x2APIC: a non-zero EOI write is #GP (SDM 11.12.1.2).
                if x2 {
                    check(0)?;
                }
                self.eoi();
            }
            reg::LDR if !x2 => self.ldr = value & 0xFF00_0000,
            reg::DFR if !x2 => self.dfr = (value & 0xF000_0000) | 0x0FFF_FFFF,
            reg::SPIV => {
                check(0x3FF)?;
                self.spiv = value & 0x3FF;
                // Software disable masks every LVT (SDM 11.4.7.2).
                if !self.sw_enabled() {
                    self.lvt.iter_mut().for_each(|l| *l |= LVT_MASKED);
                }
            }
            // A write latches the errors since the last one.
            reg::ESR => {
                if x2 {
                    check(0)?;
                }
                self.esr = core::mem::take(&mut self.esr_pending);
            }
            reg::ICR => {
                check(ICR_WRITABLE)?;
                self.icr = (self.icr & !0xFFFF_FFFF) | u64::from(value & ICR_WRITABLE);
                // xAPIC: the low-half write sends.
                self.send_ipi(now);
            }
            reg::ICR2 if !x2 => {
                self.icr = (self.icr & 0xFFFF_FFFF) | (u64::from(value & 0xFF00_0000) << 32)
            }
            o @ reg::LVTT..=reg::LVTERR => {
                let i = ((o - reg::LVTT) >> 4) as usize;
                check(LVT_WRITABLE[i])?;
                let mut v = value & LVT_WRITABLE[i];
                if !self.sw_enabled() {
                    v |= LVT_MASKED;
                }
                self.lvt[i] = v;
            }
            reg::TMICT => {
                self.timer = Timer {
                    initial: value,
                    start: now,
                    expired: false,
                };
            }
            reg::TDCR => {
                check(0xB)?;
                // Keep the count left, now at the new rate.
                let left = u64::from(self.current_count(now));
                let running = self.next_deadline().is_some();
                self.tdcr = value & 0xB;
                if running {
                    let gone = self.period_ns() - left * self.divisor();
                    self.timer.start = now.saturating_sub(gone);
                }
            }
            reg::SELF_IPI if x2 => {
                check(0xFF)?;
                self.self_ipi(value as u8);
            }
            _ => return Err(Gp),
        }
        Ok(())
    }

    fn self_ipi(&mut self, vector: u8) {
        if vector < 16 {
            self.raise_error(ESR_SEND_ILLEGAL);
        }
        self.accept(vector);
    }

    /// This APIC's logical address (LDR, DFR model, mode), as other
    /// vCPUs' IPIs match it (`ipi::logical_match`). The kernel publishes
    /// it to senders after every write that may change it.
    pub fn logical_id(&self) -> super::ipi::LogicalId {
        match self.mode() {
            Mode::Disabled => super::ipi::LogicalId::None,
            m => super::ipi::LogicalId::from_regs(m == Mode::X2Apic, self.ldr, self.dfr),
        }
    }

    /// Whether the ICR's destination (no shorthand) names this CPU
    /// (SDM 11.6.2): physical ID or broadcast, or logical by LDR and DFR.
    fn is_destination(&self, dest: u32, logical: bool) -> bool {
        let x2 = self.mode() == Mode::X2Apic;
        let broadcast = if x2 { u32::MAX } else { 0xFF };
        if dest == broadcast {
            return true;
        }
        if logical {
            return super::ipi::logical_match(dest, self.logical_id());
        }
        dest == if x2 {
            self.initial_id
        } else {
            self.xapic_id >> 24
        }
    }

    /// Sends what ICR says (SDM 11.6.1). Fixed and lowest-priority to this
    /// CPU go to IRR, NMI is pending; SMI, INIT, STARTUP and every other
    /// CPU's share are counted in [`Self::stats`].
    fn send_ipi(&mut self, _now: u64) {
        let icr = self.icr;
        let vector = icr as u8;
        let mode = (icr >> 8) & 7;
        let logical = icr & (1 << 11) != 0;
        let dest = if self.mode() == Mode::X2Apic {
            (icr >> 32) as u32
        } else {
            (icr >> 56) as u32
        };
        let (to_self, to_others) = match (icr >> 18) & 3 {
            0 => (
                self.is_destination(dest, logical),
                dest != self.own_dest(logical),
            ),
            1 => (true, false),
            2 => (true, true),
            _ => (false, true),
        };
        if to_others {
            self.stats.to_others += 1;
        }
        if !to_self {
            return;
        }
        match mode {
            0 | 1 => self.self_ipi(vector),
            2 => {
                self.stats.smi += 1;
                self.smi_pending = true;
            }
            4 => self.nmi_pending = true,
            5 | 6 => self.stats.init_sipi += 1,
            // Reserved delivery modes: nothing is sent.
            _ => {}
        }
    }

    /// The destination value that names only this CPU (for "is another
    /// CPU also addressed": anything else may name others).
    fn own_dest(&self, logical: bool) -> u32 {
        match (self.mode() == Mode::X2Apic, logical) {
            (true, false) => self.initial_id,
            (true, true) => self.ldr,
            (false, false) => self.xapic_id >> 24,
            (false, true) => self.ldr >> 24,
        }
    }

    /// A read of `size` bytes (1, 2, 4 or 8) at `offset` in the xAPIC page.
    /// Registers are 32 bits at 16-byte offsets; a narrower read gets the
    /// bytes it covers, bytes beyond a register read 0 (the SDM leaves
    /// such accesses undefined; KVM does the same).
    pub fn mmio_read(&mut self, offset: u64, size: u8, now: u64) -> u64 {
        let mut out = 0u64;
        for i in 0..u64::from(size) {
            let at = (offset + i) & 0xFFF;
            let within = at & 0xF;
            let byte = if within < 4 {
                let r = self.read_reg((at & !0xF) as u32, now).unwrap_or(0);
                (r >> (within * 8)) as u8
            } else {
                0
            };
            out |= u64::from(byte) << (i * 8);
        }
        out
    }

    /// A write of `size` bytes at `offset` in the xAPIC page. Only aligned
    /// 32-bit writes reach a register (SDM 11.4.1: "accessed using 32-bit
    /// loads and stores"); others are dropped, as KVM drops them. Writes
    /// to read-only registers and reserved bits are ignored.
    pub fn mmio_write(&mut self, offset: u64, size: u8, value: u64, now: u64) {
        if self.mode() != Mode::XApic {
            return;
        }
        let offset = offset & 0xFFF;
        if offset & 0xF != 0 || !(size == 4 || size == 8) {
            return;
        }
        let mut v = value as u32;
        // Reserved bits are dropped: write what the register keeps.
        v &= match offset as u32 {
            reg::TPR => 0xFF,
            reg::SPIV => 0x3FF,
            reg::ICR => ICR_WRITABLE,
            reg::TDCR => 0xB,
            o @ reg::LVTT..=reg::LVTERR => LVT_WRITABLE[((o - reg::LVTT) >> 4) as usize],
            _ => u32::MAX,
        };
        let _ = self.write_reg(offset as u32, v, now);
    }

    /// RDMSR of an x2APIC MSR (0x800-0x8FF): #GP outside x2APIC mode, for
    /// absent and write-only registers (SDM 11.12.1.2, Table 11-6).
    pub fn read_msr(&mut self, msr: u32, now: u64) -> Result<u64, Gp> {
        if self.mode() != Mode::X2Apic || !(X2APIC_FIRST..=X2APIC_LAST).contains(&msr) {
            return Err(Gp);
        }
        let offset = (msr - X2APIC_FIRST) << 4;
        match offset {
            reg::EOI | reg::SELF_IPI => Err(Gp),
            reg::ICR => Ok(self.icr),
            _ => self.read_reg(offset, now).map(u64::from).ok_or(Gp),
        }
    }

    /// WRMSR of an x2APIC MSR: #GP outside x2APIC mode, for read-only and
    /// absent registers and reserved bits (the high half of every
    /// register but ICR is reserved). ICR is one 64-bit MSR (0x830).
    pub fn write_msr(&mut self, msr: u32, value: u64, now: u64) -> Result<(), Gp> {
        if self.mode() != Mode::X2Apic || !(X2APIC_FIRST..=X2APIC_LAST).contains(&msr) {
            return Err(Gp);
        }
        let offset = (msr - X2APIC_FIRST) << 4;
        if offset == reg::ICR {
            if value as u32 & !ICR_WRITABLE != 0 {
                return Err(Gp);
            }
            self.icr = value;
            self.send_ipi(now);
            return Ok(());
        }
        if value >> 32 != 0 {
            return Err(Gp);
        }
        self.write_reg(offset, value as u32, now)
    }
}

#[cfg(test)]
mod tests;
