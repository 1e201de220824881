//! Kernel console: COM1 (115200 8N1), mirrored to QEMU's debugcon port 0xE9,
//! plus the `log` backend that writes `[LEVEL] message` lines to it.

use core::fmt::{self, Write};
use spin::Mutex;
use uart_16550::SerialPort;
use x86_64::instructions::port::Port;

const COM1: u16 = 0x3f8;
const DEBUGCON: u16 = 0xe9;

struct Console {
    serial: SerialPort,
    debugcon: Port<u8>,
}

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            // Raw sends: the driver's `send` would add a second CR.
            if b == b'\n' {
                self.serial.send_raw(b'\r');
            }
            self.serial.send_raw(b);
            // SAFETY: port 0xE9 is a write-only debug sink; elsewhere writes are ignored.
            unsafe { self.debugcon.write(b) };
        }
        Ok(())
    }
}

static CONSOLE: Mutex<Option<Console>> = Mutex::new(None);

/// Sets up the serial port and the logger. Idempotent.
pub fn init() {
    let mut console = CONSOLE.lock();
    if console.is_none() {
        // SAFETY: COM1 is the standard PC serial port; nothing else drives it.
        let mut serial = unsafe { SerialPort::new(COM1) };
        serial.init();
        *console = Some(Console {
            serial,
            debugcon: Port::new(DEBUGCON),
        });
        drop(console);
        // Only fails if a logger is already set, which init's guard excludes.
        let _ = log::set_logger(&LOGGER);
        log::set_max_level(log::LevelFilter::Info);
    }
}

/// Writes formatted text to the console.
pub fn write_fmt(args: fmt::Arguments<'_>) {
    if let Some(c) = CONSOLE.lock().as_mut() {
        let _ = c.write_fmt(args);
    }
}

/// Whether the last raw byte ([`write_raw`]) left a line unfinished.
static RAW_MID_LINE: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Writes a guest's console byte as it is: no CR added, no translation of
/// backspace (a guest's COM1 output reaches the host console verbatim).
pub fn write_raw(byte: u8) {
    if let Some(c) = CONSOLE.lock().as_mut() {
        c.serial.send_raw(byte);
        // SAFETY: port 0xE9 is a write-only debug sink; elsewhere writes are ignored.
        unsafe { c.debugcon.write(byte) };
    }
    RAW_MID_LINE.store(byte != b'\n', core::sync::atomic::Ordering::Relaxed);
}

/// Ends a line [`write_raw`] left unfinished, so that the next line of the
/// hypervisor's own starts at the left margin.
pub fn end_raw_line() {
    if RAW_MID_LINE.swap(false, core::sync::atomic::Ordering::Relaxed) {
        write_fmt(format_args!("\n"));
    }
}

/// Takes the console even if a holder is stuck (fatal paths only): the
/// holder will never run again.
pub fn write_fmt_emergency(args: fmt::Arguments<'_>) {
    if CONSOLE.is_locked() {
        // SAFETY: called only on the way to stopping the machine; the holder
        // was interrupted and never resumes.
        unsafe { CONSOLE.force_unlock() };
    }
    write_fmt(args);
}

/// Prints to the console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::write_fmt(format_args!($($arg)*)) };
}

/// Prints a line to the console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::console::write_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}

struct Logger;

static LOGGER: Logger = Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            // A guest's unfinished line (external guests) is ended first,
            // so the log line stands on its own.
            end_raw_line();
            // An AP's lines name it; the boot CPU's stay as they were.
            match crate::smp::log_index() {
                Some(cpu) => write_fmt(format_args!(
                    "[{:<5}] cpu{cpu}: {}\n",
                    record.level(),
                    record.args()
                )),
                None => write_fmt(format_args!("[{:<5}] {}\n", record.level(), record.args())),
            }
        }
    }

    fn flush(&self) {}
}

/// Sets the log level from a command-line word (`error`..`trace`).
pub fn set_level(name: &str) -> bool {
    match name.parse::<log::LevelFilter>() {
        Ok(level) => {
            log::set_max_level(level);
            true
        }
        Err(_) => false,
    }
}
