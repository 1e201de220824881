//! The two 8259A PICs (master 0x20/0x21, slave 0xA0/0xA1), only so far that
//! a guest's init sequence and masks are harmless: ICW1-ICW4 are followed,
//! the mask (OCW1) reads back, OCW3 picks IRR or ISR for command-port
//! reads. Nothing raises an interrupt (interrupts come from the local APIC),
//! so IRR and ISR read 0 and EOIs (OCW2) have nothing to clear.
//! Reference: Intel 8259A datasheet, "Programming the 8259A".

/// Master command port.
pub const MASTER_BASE: u16 = 0x20;
/// Slave command port.
pub const SLAVE_BASE: u16 = 0xA0;

/// ICW1: bit 4 marks an init command word on the command port.
const ICW1_INIT: u8 = 1 << 4;
/// ICW1: ICW4 follows.
const ICW1_IC4: u8 = 1 << 0;
/// ICW1: single PIC, no ICW3.
const ICW1_SNGL: u8 = 1 << 1;
/// OCW3 marker (bit 3 set, bit 4 clear).
const OCW3: u8 = 1 << 3;
/// OCW3: bit 1 says bit 0 picks the register read from the command port.
const OCW3_RR: u8 = 1 << 1;
/// OCW3: read ISR (else IRR).
const OCW3_RIS: u8 = 1 << 0;

/// Where an initialisation sequence stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitStep {
    /// Not initialising: data-port writes are OCW1 (the mask).
    Ready,
    /// The next data write is ICW2 (vector base).
    Icw2,
    /// The next data write is ICW3 (cascade wiring).
    Icw3,
    /// The next data write is ICW4 (mode).
    Icw4,
}

/// One 8259A.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pic {
    icw1: u8,
    step: InitStep,
    vector_base: u8,
    imr: u8,
    read_isr: bool,
}

impl Default for Pic {
    fn default() -> Self {
        Self::new()
    }
}

impl Pic {
    /// A PIC after power-on: masks clear, not initialised (as QEMU's reset).
    pub const fn new() -> Self {
        Self {
            icw1: 0,
            step: InitStep::Ready,
            vector_base: 0,
            imr: 0,
            read_isr: false,
        }
    }

    /// The interrupt mask register.
    pub fn mask(&self) -> u8 {
        self.imr
    }

    /// The vector base set by ICW2.
    pub fn vector_base(&self) -> u8 {
        self.vector_base
    }

    /// Whether command-port reads select ISR (else IRR), per OCW3.
    pub fn reads_isr(&self) -> bool {
        self.read_isr
    }

    /// The init sequence state.
    pub fn step(&self) -> InitStep {
        self.step
    }

    /// Reads the command port (`offset` 0) or the data port (1).
    pub fn read(&self, offset: u16) -> u8 {
        if offset == 0 {
            // IRR or ISR per OCW3: nothing is ever requested or in service.
            0
        } else {
            self.imr
        }
    }

    /// Writes the command port (`offset` 0) or the data port (1).
    pub fn write(&mut self, offset: u16, value: u8) {
        if offset == 0 {
            if value & ICW1_INIT != 0 {
                // ICW1 restarts the chip: masks clear, IRR read selected.
                self.icw1 = value;
                self.imr = 0;
                self.read_isr = false;
                self.step = InitStep::Icw2;
            } else if value & OCW3 != 0 && value & OCW3_RR != 0 {
                self.read_isr = value & OCW3_RIS != 0;
            }
            // Else OCW2 (EOI, priority rotation): nothing in service.
            return;
        }
        self.step = match self.step {
            InitStep::Ready => {
                self.imr = value;
                InitStep::Ready
            }
            InitStep::Icw2 => {
                self.vector_base = value & 0xF8;
                if self.icw1 & ICW1_SNGL == 0 {
                    InitStep::Icw3
                } else {
                    self.after_icw3()
                }
            }
            // ICW3 (cascade wiring) only matters for delivery, which there is none of.
            InitStep::Icw3 => self.after_icw3(),
            // ICW4 (mode): likewise.
            InitStep::Icw4 => InitStep::Ready,
        };
    }

    /// After ICW3 (or ICW2 when single), ICW4 if ICW1 asked for it.
    fn after_icw3(&self) -> InitStep {
        if self.icw1 & ICW1_IC4 != 0 {
            InitStep::Icw4
        } else {
            InitStep::Ready
        }
    }
}

/// The cascaded pair of a PC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PicPair {
    /// IRQ 0-7 at 0x20/0x21.
    pub master: Pic,
    /// IRQ 8-15 at 0xA0/0xA1.
    pub slave: Pic,
}

impl PicPair {
    /// The chip owning `port` and the offset in it, if either does.
    fn chip(&mut self, port: u16) -> Option<(&mut Pic, u16)> {
        match port {
            0x20 | 0x21 => Some((&mut self.master, port - MASTER_BASE)),
            0xA0 | 0xA1 => Some((&mut self.slave, port - SLAVE_BASE)),
            _ => None,
        }
    }

    /// Whether `port` belongs to either PIC.
    pub fn owns(port: u16) -> bool {
        matches!(port, 0x20 | 0x21 | 0xA0 | 0xA1)
    }

    /// A byte read from `port`; 0xFF for a port neither owns.
    pub fn read(&mut self, port: u16) -> u8 {
        self.chip(port).map_or(0xFF, |(pic, off)| pic.read(off))
    }

    /// A byte write to `port`; ignored for a port neither owns.
    pub fn write(&mut self, port: u16, value: u8) {
        if let Some((pic, off)) = self.chip(port) {
            pic.write(off, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The classic remap both PICs get from Linux and most test kernels.
    fn init(pair: &mut PicPair) {
        pair.write(0x20, 0x11);
        pair.write(0xA0, 0x11);
        pair.write(0x21, 0x20);
        pair.write(0xA1, 0x28);
        pair.write(0x21, 0x04);
        pair.write(0xA1, 0x02);
        pair.write(0x21, 0x01);
        pair.write(0xA1, 0x01);
    }

    #[test]
    fn init_sequence_then_masks_read_back() {
        let mut p = PicPair::default();
        init(&mut p);
        assert_eq!(p.master.step(), InitStep::Ready);
        assert_eq!(p.slave.step(), InitStep::Ready);
        assert_eq!(p.master.vector_base(), 0x20);
        assert_eq!(p.slave.vector_base(), 0x28);
        // ICW words did not land in the masks.
        assert_eq!(p.read(0x21), 0x00);
        assert_eq!(p.read(0xA1), 0x00);
        p.write(0x21, 0xFF);
        p.write(0xA1, 0xFB);
        assert_eq!(p.read(0x21), 0xFF);
        assert_eq!(p.read(0xA1), 0xFB);
    }

    #[test]
    fn mask_without_init() {
        let mut p = PicPair::default();
        p.write(0x21, 0xFF);
        p.write(0xA1, 0xFF);
        assert_eq!(p.read(0x21), 0xFF);
        assert_eq!(p.read(0xA1), 0xFF);
    }

    #[test]
    fn icw1_clears_the_mask_and_walks_the_steps() {
        let mut pic = Pic::new();
        pic.write(1, 0xAA);
        pic.write(0, 0x11); // cascade, ICW4
        assert_eq!(pic.mask(), 0);
        assert_eq!(pic.step(), InitStep::Icw2);
        pic.write(1, 0x37);
        assert_eq!(pic.vector_base(), 0x30); // low 3 bits are the IRQ number
        assert_eq!(pic.step(), InitStep::Icw3);
        pic.write(1, 0x04);
        assert_eq!(pic.step(), InitStep::Icw4);
        pic.write(1, 0x01);
        assert_eq!(pic.step(), InitStep::Ready);
        assert_eq!(pic.mask(), 0);
    }

    #[test]
    fn single_without_icw4_needs_only_icw2() {
        let mut pic = Pic::new();
        pic.write(0, 0x12); // SNGL, no IC4
        pic.write(1, 0x40);
        assert_eq!(pic.step(), InitStep::Ready);
        pic.write(1, 0x5A);
        assert_eq!(pic.mask(), 0x5A);
    }

    #[test]
    fn single_with_icw4_skips_icw3() {
        let mut pic = Pic::new();
        pic.write(0, 0x13);
        pic.write(1, 0x40);
        assert_eq!(pic.step(), InitStep::Icw4);
        pic.write(1, 0x01);
        assert_eq!(pic.step(), InitStep::Ready);
    }

    #[test]
    fn ocw2_and_ocw3_leave_the_mask_alone() {
        let mut p = PicPair::default();
        init(&mut p);
        p.write(0x21, 0xFE);
        p.write(0x20, 0x20); // non-specific EOI
        p.write(0x20, 0x0B); // OCW3: read ISR
        assert!(p.master.reads_isr());
        assert_eq!(p.read(0x20), 0);
        p.write(0x20, 0x0A); // OCW3: read IRR
        assert!(!p.master.reads_isr());
        assert_eq!(p.read(0x20), 0);
        assert_eq!(p.read(0x21), 0xFE);
        assert_eq!(p.master.step(), InitStep::Ready);
    }

    #[test]
    fn foreign_ports() {
        let mut p = PicPair::default();
        assert!(!PicPair::owns(0x22));
        p.write(0x22, 0x00);
        assert_eq!(p.read(0x22), 0xFF);
        assert_eq!(p, PicPair::default());
    }
}
