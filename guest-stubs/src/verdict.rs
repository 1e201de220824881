//! How a guest ends: a pass or a fail with a message, through `HC_DONE`.

use core::fmt::{self, Write};
use svm::guest_abi::HC_DONE;

/// Reports success and stops.
pub fn pass() -> ! {
    super::hypercall::call(HC_DONE, 0, 0, 0);
    halt()
}

/// Reports failure with a message and stops.
pub fn fail(args: fmt::Arguments<'_>) -> ! {
    let mut msg = Message {
        buf: [0; 160],
        len: 0,
    };
    let _ = msg.write_fmt(args);
    super::hypercall::call(HC_DONE, 1, msg.buf.as_ptr() as u64, msg.len as u64);
    halt()
}

/// If the hypervisor resumes a finished guest, it stays put.
fn halt() -> ! {
    loop {
        // SAFETY: HLT with interrupts off just exits to the hypervisor.
        unsafe { core::arch::asm!("cli; hlt", options(nomem, nostack)) };
    }
}

struct Message {
    buf: [u8; 160],
    len: usize,
}

impl Write for Message {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
        Ok(())
    }
}

/// Fails the test with a message unless the condition holds.
#[macro_export]
macro_rules! check {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            $crate::verdict::fail(format_args!($($arg)*));
        }
    };
}

/// Fails the test unless the two values are equal.
#[macro_export]
macro_rules! check_eq {
    // A literal is a format string (its `{name}`s are captured).
    ($left:expr, $right:expr, $what:literal $(, $arg:expr)* $(,)?) => {
        $crate::check_eq!(@cmp $left, $right, format_args!($what $(, $arg)*))
    };
    ($left:expr, $right:expr, $what:expr) => {
        $crate::check_eq!(@cmp $left, $right, $what)
    };
    (@cmp $left:expr, $right:expr, $what:expr) => {{
        let (l, r) = ($left, $right);
        if l != r {
            $crate::verdict::fail(format_args!("{}: got {:#x?}, expected {:#x?}", $what, l, r));
        }
    }};
}
