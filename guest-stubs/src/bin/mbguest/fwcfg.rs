//! QEMU's fw_cfg on the legacy I/O ports (QEMU docs/specs/fw_cfg.rst): a
//! 16-bit selector write to 0x510 picks an item and rewinds it, each byte
//! read from 0x511 is the next byte of the item.

use crate::io::{inb, outw};
use crate::report::{bail, expect_eq, Check};

const SELECTOR: u16 = 0x510;
const DATA: u16 = 0x511;

pub const SIGNATURE: u16 = 0x00;
pub const RAM_SIZE: u16 = 0x03;
pub const NB_CPUS: u16 = 0x05;
pub const MAX_CPUS: u16 = 0x0F;
/// Read by kvm-unit-tests as its RAM limit.
pub const KEY_0X11: u16 = 0x11;

pub fn read_bytes<const N: usize>(key: u16) -> [u8; N] {
    outw(SELECTOR, key);
    core::array::from_fn(|_| inb(DATA))
}

pub fn read_u64(key: u16) -> u64 {
    u64::from_le_bytes(read_bytes(key))
}

pub fn read_u16(key: u16) -> u16 {
    u16::from_le_bytes(read_bytes(key))
}

/// "QEMU" at key 0, and selecting rewinds the item.
pub fn check_signature() -> Check {
    let sig: [u8; 4] = read_bytes(SIGNATURE);
    if &sig != b"QEMU" {
        bail!("signature {sig:02x?}, expected \"QEMU\"");
    }
    let again: [u8; 1] = read_bytes(SIGNATURE);
    if again[0] != b'Q' {
        bail!("selecting key 0 again did not rewind: {:#04x}", again[0]);
    }
    Ok(())
}

/// The RAM size: at least 2 MiB (this image sits at 1 MiB), whole pages.
pub fn check_ram_size() -> Check {
    let ram = read_u64(RAM_SIZE);
    if ram < 2 << 20 || !ram.is_multiple_of(4096) {
        bail!("RAM size {ram:#x}");
    }
    Ok(())
}

/// One CPU (this guest is run with -smp 1), and no more possible than the
/// maximum (key 0x0F).
pub fn check_cpu_count() -> Check {
    expect_eq!("CPU count (key 0x05)", read_u16(NB_CPUS), 1);
    let max = read_u16(MAX_CPUS);
    if max < 1 {
        bail!("max CPUs (key 0x0F) {max}");
    }
    Ok(())
}

/// Key 0x11 reads as a u64, the same twice (the selector rewinds it). Its
/// value differs (QEMU: the kernel's first bytes; kvm-unit-tests treats it
/// as a RAM limit, 0 meaning none) and is not checked.
pub fn check_key_0x11() -> Check {
    let a = read_u64(KEY_0X11);
    let b = read_u64(KEY_0X11);
    expect_eq!("key 0x11 read twice", b, a);
    Ok(())
}
