//! Guest console on COM1's data port: every byte is an I/O exit the
//! hypervisor forwards, line by line, with a `[guest <name>]` prefix.

use core::fmt::{self, Write};

const COM1: u16 = 0x3f8;

/// Writes a byte to the console.
pub fn putc(b: u8) {
    // SAFETY: port output; the hypervisor intercepts it.
    unsafe {
        core::arch::asm!("out dx, al", in("dx") COM1, in("al") b, options(nomem, nostack, preserves_flags))
    };
}

struct Console;

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        s.bytes().for_each(putc);
        Ok(())
    }
}

/// Writes formatted text.
pub fn write_fmt(args: fmt::Arguments<'_>) {
    let _ = Console.write_fmt(args);
}

/// Prints a line to the guest console.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => { $crate::console::write_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}
