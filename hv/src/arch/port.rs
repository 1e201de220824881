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
    /// An external guest (`guest=` on the command line) died: triple
    /// fault, an exit L0 cannot handle. QEMU exits with status 39
    /// (`xtask::guest::GUEST_DIED_STATUS`); kvm-unit-tests never does.
    GuestDied = 0x13,
    /// An external guest's image could not be loaded; nothing ran. QEMU
    /// exits with status 41 (`xtask::guest::BAD_IMAGE_STATUS`).
    BadImage = 0x14,
}

/// Ends the run: under a hypervisor (QEMU), through the exit device; on bare
/// metal, or if the device is absent, by halting this CPU for good.
pub fn exit(code: ExitCode) -> ! {
    exit_raw(code as u32)
}

/// [`exit`] with any value: QEMU exits with `(value << 1) | 1`, so an
/// external guest's own write to its exit device can end the run exactly
/// as under bare QEMU.
pub fn exit_raw(value: u32) -> ! {
    if super::cpu::under_hypervisor() {
        // SAFETY: the exit device only ends the VM; absent, the write is ignored.
        unsafe { Port::<u32>::new(QEMU_EXIT_PORT).write(value) };
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
