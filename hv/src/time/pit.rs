//! The 8254 PIT's channel 2, as an independent clock: gated through port
//! 0x61, counting down at 1.193182 MHz in mode 0 (interrupt on terminal
//! count), its output readable in port 0x61 bit 5. Used to calibrate the
//! TSC and to wait without trusting the TSC.

use core::sync::atomic::{AtomicBool, Ordering};
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

/// Held through a wait a guest asked for ([`wait_us_for_guest`]).
static GUEST_WAIT: AtomicBool = AtomicBool::new(false);

/// [`wait_us`] for a guest: vCPUs of a VM may ask at once (they wait with
/// the VM lock released, `vmm::multi`), and channel 2 is one device, so
/// their waits take turns. Never taken before the VM lock is released
/// (a holder does not wait for the VM lock), so no deadlock.
pub fn wait_us_for_guest(us: u64) {
    while GUEST_WAIT
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
    }
    wait_us(us);
    GUEST_WAIT.store(false, Ordering::Release);
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

/// Reads channel 2's current count (latched, so both bytes match).
fn count() -> u16 {
    let mut cmd: Port<u8> = Port::new(COMMAND);
    let mut data: Port<u8> = Port::new(CHANNEL2);
    // SAFETY: a counter-latch command for channel 2, then its two bytes.
    unsafe {
        cmd.write(0b1000_0000);
        let lo = data.read();
        let hi = data.read();
        u16::from_le_bytes([lo, hi])
    }
}

/// A PIT count and the TSC at the moment it was read: the TSC is read
/// before and after the count, and of a few tries the one with the
/// narrowest bracket is kept (a try QEMU was descheduled in is wide).
fn sample() -> (u64, u16) {
    let mut best = (u64::MAX, 0u64, 0u16);
    for _ in 0..4 {
        let a = super::host_tsc::read_raw();
        let c = count();
        let b = super::host_tsc::read_raw();
        let width = b.wrapping_sub(a);
        if width < best.0 {
            best = (width, a + width / 2, c);
        }
    }
    (best.1, best.2)
}

/// Measures the TSC frequency in kHz over about `ms` milliseconds (at most
/// 50) of PIT time. Both ends pair a TSC reading with the PIT's count read
/// right after it, so time lost between polls (QEMU descheduled on a busy
/// host) is counted on both clocks alike instead of inflating the result.
pub fn measure_tsc_khz(ms: u64) -> u64 {
    let span = (PIT_HZ * ms.min(50) / 1000) as u16;
    start(0xffff);
    let (t0, c0) = sample();
    let (t1, c1) = loop {
        let (t, c) = sample();
        if c0.wrapping_sub(c) >= span || done() {
            break (t, c);
        }
        core::hint::spin_loop();
    };
    let pit_ticks = u64::from(c0.wrapping_sub(c1)).max(1);
    (t1 - t0) * PIT_HZ / (pit_ticks * 1000)
}
