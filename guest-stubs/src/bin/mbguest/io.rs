//! Port I/O, the COM1 console (polled like any PC kernel: LSR bit 5 before
//! each byte) and the exit device.

use core::arch::asm;
use core::fmt::{self, Write};

pub const COM1: u16 = 0x3F8;
/// COM1 registers, as offsets (National PC16550D datasheet, table 2).
pub const THR: u16 = 0;
pub const IER: u16 = 1;
pub const FCR: u16 = 2;
pub const LCR: u16 = 3;
pub const MCR: u16 = 4;
pub const LSR: u16 = 5;
pub const SCR: u16 = 7;
/// LSR: transmitter holding register empty, transmitter empty.
pub const LSR_THRE: u8 = 1 << 5;
pub const LSR_TEMT: u8 = 1 << 6;
/// LCR: divisor latch access.
pub const LCR_DLAB: u8 = 1 << 7;

/// QEMU's isa-debug-exit (or the hypervisor's model of it).
pub const EXIT_PORT: u16 = 0xF4;

pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: port input has no memory effects; this kernel owns the machine.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags))
    };
    v
}

pub fn inw(port: u16) -> u16 {
    let v: u16;
    // SAFETY: as for inb.
    unsafe {
        asm!("in ax, dx", in("dx") port, out("ax") v, options(nomem, nostack, preserves_flags))
    };
    v
}

pub fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: as for inb.
    unsafe {
        asm!("in eax, dx", in("dx") port, out("eax") v, options(nomem, nostack, preserves_flags))
    };
    v
}

pub fn outb(port: u16, v: u8) {
    // SAFETY: as for inb; the ports written are chosen by the checks.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags))
    };
}

pub fn outw(port: u16, v: u16) {
    // SAFETY: as for outb.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") v, options(nomem, nostack, preserves_flags))
    };
}

pub fn outl(port: u16, v: u32) {
    // SAFETY: as for outb.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack, preserves_flags))
    };
}

/// Programs COM1 as kvm-unit-tests and most kernels do: 115200 baud
/// (divisor 1), 8N1, no interrupts, no FIFO, DTR and RTS on.
pub fn serial_init() {
    outb(COM1 + LCR, inb(COM1 + LCR) | LCR_DLAB);
    outb(COM1 + THR, 1);
    outb(COM1 + IER, 0);
    outb(COM1 + LCR, 0x03);
    outb(COM1 + IER, 0);
    outb(COM1 + FCR, 0);
    outb(COM1 + MCR, 0x03);
}

fn serial_putc(b: u8) {
    // A UART that never empties its holding register hangs us here, as it
    // would hang any polled console: that is the contract being tested.
    while inb(COM1 + LSR) & LSR_THRE == 0 {
        core::hint::spin_loop();
    }
    outb(COM1 + THR, b);
}

struct Console;

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                serial_putc(b'\r');
            }
            serial_putc(b);
        }
        Ok(())
    }
}

pub fn write_fmt(args: fmt::Arguments<'_>) {
    let _ = Console.write_fmt(args);
}

macro_rules! println {
    ($($arg:tt)*) => { $crate::io::write_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}
pub(crate) use println;

/// Ends the run: QEMU exits with status `(code << 1) | 1`.
pub fn exit(code: u32) -> ! {
    outl(EXIT_PORT, code);
    // Without an exit device: stop here.
    loop {
        // SAFETY: interrupts off, halting for good.
        unsafe { asm!("cli; hlt", options(nomem, nostack)) };
    }
}
