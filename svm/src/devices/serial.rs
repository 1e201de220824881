//! COM1, a 16550 UART at 0x3F8-0x3FF, output only. Writes to THR become
//! console bytes at once, so LSR always shows the transmitter empty
//! (THRE|TEMT) and a guest polling LSR bit 5 before each character never
//! spins. There is no input: RBR reads 0, LSR.DR stays clear, and no
//! interrupt is ever pending (IIR reads 0x01). Everything else is a
//! register that reads back what was written, which is all an init
//! sequence needs (National PC16550D datasheet, register table).

use super::WriteEffect;

/// First port of COM1.
pub const COM1_BASE: u16 = 0x3F8;
/// Ports per UART.
pub const SIZE: u16 = 8;

/// Register offsets from the base (DLAB selects the divisor at 0 and 1).
pub mod reg {
    /// THR (write) / RBR (read); DLL when LCR.DLAB is set.
    pub const DATA: u16 = 0;
    /// IER; DLM when LCR.DLAB is set.
    pub const IER: u16 = 1;
    /// IIR (read) / FCR (write).
    pub const IIR_FCR: u16 = 2;
    /// Line control.
    pub const LCR: u16 = 3;
    /// Modem control.
    pub const MCR: u16 = 4;
    /// Line status.
    pub const LSR: u16 = 5;
    /// Modem status.
    pub const MSR: u16 = 6;
    /// Scratch.
    pub const SCR: u16 = 7;
}

/// LCR bit 7: divisor latch access.
pub const LCR_DLAB: u8 = 1 << 7;
/// LSR bit 0: data ready.
pub const LSR_DR: u8 = 1 << 0;
/// LSR bit 5: transmit holding register empty.
pub const LSR_THRE: u8 = 1 << 5;
/// LSR bit 6: transmitter empty.
pub const LSR_TEMT: u8 = 1 << 6;
/// IIR with no interrupt pending (bit 0 set).
pub const IIR_NO_INT: u8 = 0x01;
/// IER uses its low four bits only.
const IER_MASK: u8 = 0x0F;
/// MCR uses its low five bits only.
const MCR_MASK: u8 = 0x1F;
/// MSR: CTS, DSR and DCD asserted, as QEMU's chardev reports a ready line.
pub const MSR_READY: u8 = 0xB0;

/// One 16550 UART; every port access is a single byte (the bus splits wider
/// ones, as QEMU does for this device).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Serial {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    /// Divisor latch (DLL low, DLM high); 12 = 9600 baud, QEMU's reset value.
    divisor: u16,
}

impl Default for Serial {
    fn default() -> Self {
        Self::new()
    }
}

impl Serial {
    /// A UART after reset.
    pub const fn new() -> Self {
        Self {
            ier: 0,
            lcr: 0,
            mcr: 0,
            scr: 0,
            divisor: 12,
        }
    }

    fn dlab(&self) -> bool {
        self.lcr & LCR_DLAB != 0
    }

    /// The divisor latch value.
    pub fn divisor(&self) -> u16 {
        self.divisor
    }

    /// Reads the register at `offset` (0-7).
    pub fn read(&self, offset: u16) -> u8 {
        match offset {
            reg::DATA if self.dlab() => self.divisor as u8,
            reg::DATA => 0, // no input
            reg::IER if self.dlab() => (self.divisor >> 8) as u8,
            reg::IER => self.ier,
            reg::IIR_FCR => IIR_NO_INT,
            reg::LCR => self.lcr,
            reg::MCR => self.mcr,
            reg::LSR => LSR_THRE | LSR_TEMT,
            reg::MSR => MSR_READY,
            reg::SCR => self.scr,
            _ => 0xFF,
        }
    }

    /// Writes `value` to the register at `offset` (0-7); a THR write
    /// returns the byte for the console.
    pub fn write(&mut self, offset: u16, value: u8) -> WriteEffect {
        match offset {
            reg::DATA if self.dlab() => self.divisor = (self.divisor & 0xFF00) | u16::from(value),
            reg::DATA => {
                return WriteEffect {
                    output: Some(value),
                    exit: None,
                };
            }
            reg::IER if self.dlab() => {
                self.divisor = (self.divisor & 0x00FF) | (u16::from(value) << 8);
            }
            reg::IER => self.ier = value & IER_MASK,
            reg::LCR => self.lcr = value,
            reg::MCR => self.mcr = value & MCR_MASK,
            reg::SCR => self.scr = value,
            // FCR: FIFOs are not modelled; LSR and MSR are read-only.
            _ => {}
        }
        WriteEffect::NONE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thr_writes_are_output() {
        let mut s = Serial::new();
        assert_eq!(s.write(reg::DATA, b'h').output, Some(b'h'));
        assert_eq!(s.write(reg::DATA, 0).output, Some(0));
        assert_eq!(s.write(reg::DATA, b'i').exit, None);
    }

    #[test]
    fn lsr_always_ready_to_send_never_data_ready() {
        let mut s = Serial::new();
        for c in b"polling" {
            let lsr = s.read(reg::LSR);
            assert_eq!(lsr & (LSR_THRE | LSR_TEMT), LSR_THRE | LSR_TEMT);
            assert_eq!(lsr & LSR_DR, 0);
            s.write(reg::DATA, *c);
        }
        assert_eq!(s.read(reg::DATA), 0);
    }

    #[test]
    fn dlab_switches_data_and_ier_to_the_divisor() {
        let mut s = Serial::new();
        s.write(reg::IER, 0x05);
        // The usual init: DLAB on, divisor 1 (115200), 8N1.
        s.write(reg::LCR, LCR_DLAB);
        assert_eq!(s.write(reg::DATA, 0x01), WriteEffect::NONE); // DLL, not output
        s.write(reg::IER, 0x00); // DLM
        assert_eq!(s.divisor(), 1);
        assert_eq!(s.read(reg::DATA), 0x01);
        assert_eq!(s.read(reg::IER), 0x00);
        s.write(reg::LCR, 0x03);
        assert_eq!(s.read(reg::LCR), 0x03);
        // IER kept its own value under the latch.
        assert_eq!(s.read(reg::IER), 0x05);
        assert_eq!(s.write(reg::DATA, b'x').output, Some(b'x'));
    }

    #[test]
    fn divisor_high_byte() {
        let mut s = Serial::new();
        s.write(reg::LCR, LCR_DLAB | 0x03);
        s.write(reg::DATA, 0x34);
        s.write(reg::IER, 0x12);
        assert_eq!(s.divisor(), 0x1234);
        assert_eq!(s.read(reg::IER), 0x12);
    }

    #[test]
    fn registers_read_back_masked() {
        let mut s = Serial::new();
        s.write(reg::IER, 0xFF);
        s.write(reg::MCR, 0xFF);
        s.write(reg::SCR, 0xA5);
        assert_eq!(s.read(reg::IER), 0x0F);
        assert_eq!(s.read(reg::MCR), 0x1F);
        assert_eq!(s.read(reg::SCR), 0xA5);
    }

    #[test]
    fn iir_never_pending_and_read_only_registers_ignore_writes() {
        let mut s = Serial::new();
        s.write(reg::IER, 0x0F);
        s.write(reg::IIR_FCR, 0xC7); // FCR: enable and clear FIFOs
        assert_eq!(s.read(reg::IIR_FCR), IIR_NO_INT);
        s.write(reg::LSR, 0x00);
        s.write(reg::MSR, 0x00);
        assert_eq!(s.read(reg::LSR), LSR_THRE | LSR_TEMT);
        assert_eq!(s.read(reg::MSR), MSR_READY);
    }
}
