//! A small PC platform behind port I/O, as plain state machines: each device
//! takes reads and writes of 1, 2 or 4 bytes and says what the caller must do
//! (print a byte, end the run). The kernel routes IOIO exits here through
//! [`bus::PortBus`]; nothing in this module touches hardware.
//!
//! Behaviour follows what a guest sees under bare QEMU (`-machine pc`), so
//! external test kernels (kvm-unit-tests) behave the same under both.

pub mod bus;
pub mod exit_device;
pub mod fw_cfg;
pub mod ipi;
pub mod lapic;
pub mod pic;
pub mod serial;
pub mod string_io;
pub mod unassigned;

pub use bus::PortBus;

/// What a port write asks of the caller besides the device's own state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteEffect {
    /// A byte the guest sent to the console (COM1 THR).
    pub output: Option<u8>,
    /// End the run with this QEMU exit status (the process status is its
    /// low 8 bits, as for QEMU's `exit()`).
    pub exit: Option<u32>,
}

impl WriteEffect {
    /// Nothing to do.
    pub const NONE: Self = Self {
        output: None,
        exit: None,
    };

    /// Combines the effects of the byte pieces of one split access. Only
    /// one port produces output and only one range exits, so at most one of
    /// each is set; should two be, the first is kept.
    pub fn merge(self, other: Self) -> Self {
        Self {
            output: self.output.or(other.output),
            exit: self.exit.or(other.exit),
        }
    }
}

/// All-ones value of an access of `size` bytes (1, 2 or 4): what a read
/// from nothing returns on a PC bus. Panics on another size.
pub fn ones(size: u8) -> u32 {
    match size {
        1 => 0xFF,
        2 => 0xFFFF,
        4 => 0xFFFF_FFFF,
        _ => panic!("I/O accesses are 1, 2 or 4 bytes, not {size}"),
    }
}
