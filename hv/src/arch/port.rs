//! Port I/O and the QEMU exit device.

use x86_64::instructions::port::Port;

/// QEMU `isa-debug-exit` device port (`-device isa-debug-exit,iobase=0xf4,iosize=4`).
const QEMU_EXIT_PORT: u16 = 0xf4;

/// Kernel verdict, written to the exit device: QEMU exits with `(code << 1) | 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ExitCode {
    /// QEMU exits with status 33.
    Success = 0x10,
    /// QEMU exits with status 35.
    Failure = 0x11,
    /// Nothing ran: every selected test was skipped (no usable SVM here).
    /// QEMU exits with status 37 (`xtask::verdict::NOTHING_RAN_STATUS`).
    NothingRan = 0x12,
}

/// Ends the run: under a hypervisor (QEMU), through the exit device; on bare
/// metal, or if the device is absent, by halting this CPU for good.
pub fn exit(code: ExitCode) -> ! {
    if super::cpu::under_hypervisor() {
        // SAFETY: the exit device only ends the VM; absent, the write is ignored.
        unsafe { Port::<u32>::new(QEMU_EXIT_PORT).write(code as u32) };
    }
    halt_forever()
}

/// Halts this CPU with interrupts off.
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
