//! The 8254 PIT's channel 2, as an independent clock: gated through port
//! 0x61, counting down at 1.193182 MHz in mode 0 (interrupt on terminal
//! count), its output readable in port 0x61 bit 5. Used to calibrate the
//! TSC and to wait without trusting the TSC.

use x86_64::instructions::port::Port;

const PIT_HZ: u64 = 1_193_182;
const CHANNEL2: u16 = 0x42;
const COMMAND: u16 = 0x43;
const GATE: u16 = 0x61;
/// Largest 16-bit count: about 54.9 ms.
const MAX_COUNT: u64 = 0xffff;

/// Starts channel 2 counting down `count` ticks.
fn start(count: u16) {
    let mut gate: Port<u8> = Port::new(GATE);
    let mut cmd: Port<u8> = Port::new(COMMAND);
    let mut data: Port<u8> = Port::new(CHANNEL2);
    // SAFETY: the PIT and port 0x61 are standard PC devices the kernel owns;
    // the speaker stays off (bit 1 clear), the gate goes high (bit 0).
    unsafe {
        let g = gate.read();
        gate.write((g & !0x02) | 0x01);
        // Channel 2, low then high byte, mode 0, binary.
        cmd.write(0b1011_0000);
        data.write(count as u8);
        data.write((count >> 8) as u8);
    }
}

/// Whether the count reached zero.
fn done() -> bool {
    // SAFETY: reading port 0x61 has no side effects.
    unsafe { Port::<u8>::new(GATE).read() & 0x20 != 0 }
}

/// Busy-waits `us` microseconds by the PIT.
pub fn wait_us(us: u64) {
    let mut left = us * PIT_HZ / 1_000_000;
    while left > 0 {
        let chunk = left.min(MAX_COUNT);
        start(chunk as u16);
        while !done() {
            core::hint::spin_loop();
        }
        left -= chunk;
    }
}

/// Counts TSC ticks over `ms` milliseconds (at most 50) of PIT time.
pub fn measure_tsc_khz(ms: u64) -> u64 {
    let count = (PIT_HZ * ms.min(50) / 1000) as u16;
    start(count);
    let t0 = super::host_tsc::read_raw();
    while !done() {
        core::hint::spin_loop();
    }
    let t1 = super::host_tsc::read_raw();
    // Ticks per ms = kHz; scale by the exact PIT period of the count.
    (t1 - t0) * PIT_HZ / (u64::from(count) * 1000)
}
