//! The PC devices around the CPU: COM1, the PIC pair, unassigned ports.

use crate::io::{
    inb, inl, inw, outb, outl, outw, COM1, LCR, LCR_DLAB, LSR, LSR_TEMT, LSR_THRE, SCR, THR,
};
use crate::report::{bail, expect_eq, Check};

/// COM1 answers: LSR shows the transmitter empty (after all the output so
/// far), the divisor latch holds what `serial_init` wrote, the scratch
/// register keeps a value.
pub fn check_com1() -> Check {
    let lsr = inb(COM1 + LSR);
    if lsr == 0xFF {
        bail!("LSR reads 0xff: no UART");
    }
    expect_eq!(
        "LSR THRE|TEMT",
        lsr & (LSR_THRE | LSR_TEMT),
        LSR_THRE | LSR_TEMT
    );
    let lcr = inb(COM1 + LCR);
    outb(COM1 + LCR, lcr | LCR_DLAB);
    let divisor = inb(COM1 + THR);
    outb(COM1 + LCR, lcr);
    expect_eq!("divisor latch low", divisor, 1);
    for v in [0xA5, 0x5A] {
        outb(COM1 + SCR, v);
        expect_eq!("scratch register", inb(COM1 + SCR), v);
    }
    Ok(())
}

/// The 8259 pair: the usual init (ICW1-ICW4, vectors 0x20/0x28), then the
/// masks (OCW1) read back. All masked afterwards, so only the local APIC
/// interrupts us; [`crate::idt::strays`] checks that nothing else came.
pub fn check_pic() -> Check {
    for (cmd, data, base, cascade) in [(0x20, 0x21, 0x20, 0x04), (0xA0, 0xA1, 0x28, 0x02)] {
        outb(cmd, 0x11); // ICW1: edge, cascade, ICW4 follows
        outb(data, base); // ICW2: vector base
        outb(data, cascade); // ICW3
        outb(data, 0x01); // ICW4: 8086 mode
    }
    for (port, mask) in [(0x21, 0xFB), (0xA1, 0x7F), (0x21, 0xFF), (0xA1, 0xFF)] {
        outb(port, mask);
        expect_eq!("PIC mask read back", inb(port), mask);
    }
    Ok(())
}

/// Ports nothing decodes read all-ones at every size and ignore writes.
pub const UNASSIGNED: [u16; 2] = [0x5000, 0x9000];

pub fn check_unassigned() -> Check {
    for port in UNASSIGNED {
        for round in 0..2 {
            if inb(port) != 0xFF || inw(port) != 0xFFFF || inl(port) != 0xFFFF_FFFF {
                bail!(
                    "port {port:#x} (round {round}): {:#x} {:#x} {:#x}",
                    inb(port),
                    inw(port),
                    inl(port)
                );
            }
            // A write must change nothing.
            outb(port, 0x12);
            outw(port, 0x3456);
            outl(port, 0);
        }
    }
    Ok(())
}
