//! The legacy 8259 PICs: remapped away from the exception vectors and
//! masked. Firmware leaves them at vectors 8-15 with the PIT's IRQ 0 on,
//! which would look like a double fault the first time interrupts are on.

use x86_64::instructions::port::Port;

/// Vectors the masked PICs could still raise spuriously (IRQ 7 / 15).
pub const VECTOR_BASE: u8 = 0xe0;

/// Remaps both PICs to VECTOR_BASE.. and masks every line.
pub fn disable() {
    let (mut cmd1, mut data1) = (Port::<u8>::new(0x20), Port::<u8>::new(0x21));
    let (mut cmd2, mut data2) = (Port::<u8>::new(0xa0), Port::<u8>::new(0xa1));
    // SAFETY: the standard initialization sequence (ICW1-ICW4) of the PC's
    // two cascaded 8259s, then OCW1 masking all lines; the kernel owns them.
    unsafe {
        cmd1.write(0x11);
        cmd2.write(0x11);
        data1.write(VECTOR_BASE);
        data2.write(VECTOR_BASE + 8);
        data1.write(4);
        data2.write(2);
        data1.write(1);
        data2.write(1);
        data1.write(0xff);
        data2.write(0xff);
    }
}
