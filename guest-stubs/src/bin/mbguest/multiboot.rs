//! The Multiboot information block and the entry state (Multiboot spec
//! 0.6.96, 3.2 and 3.3).

use crate::boot::EntryState;
use crate::report::{bail, expect_eq, Check};

pub const BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;
const INFO_MEMORY: u32 = 1 << 0;
const INFO_CMDLINE: u32 = 1 << 2;
const INFO_MMAP: u32 = 1 << 6;
/// The words `cargo xtask test` passes after the file name (its -append or
/// --append): the guest checks they arrive verbatim.
pub const EXPECTED_ARGS: &str = "mbguest a b";
/// This image's file name (the last path component of the first word).
const FILE_NAME: &str = "mbguest";

fn u32_at(addr: u64) -> u32 {
    // SAFETY: the loader put the info block and what it points to in RAM
    // below 4 GiB, which is identity mapped.
    unsafe { core::ptr::read_unaligned(addr as *const u32) }
}

fn u64_at(addr: u64) -> u64 {
    // SAFETY: as for u32_at.
    unsafe { core::ptr::read_unaligned(addr as *const u64) }
}

/// EAX holds the magic, EBX an info block; protected mode, paging and
/// interrupts off, not virtual-8086 (spec 3.2).
pub fn check_entry(e: &EntryState) -> Check {
    expect_eq!("EAX", e.eax, BOOTLOADER_MAGIC);
    if e.ebx == 0 || e.ebx >= 0xA_0000 && e.ebx < 0x10_0000 {
        bail!("EBX {:#x} is no RAM address", e.ebx);
    }
    expect_eq!("CR0.PE|PG", e.cr0 & 0x8000_0001, 1);
    expect_eq!("EFLAGS.IF|VM", e.eflags & ((1 << 9) | (1 << 17)), 0);
    Ok(())
}

/// mem_lower/mem_upper present and consistent with the RAM size fw_cfg
/// reports: the RAM above 1 MiB in KiB (below 3 GiB), less at most 1 MiB
/// the firmware may keep at the top (SeaBIOS keeps 128 KiB).
pub fn check_memory(info: u64, ram: u64) -> Check {
    let flags = u32_at(info);
    if flags & INFO_MEMORY == 0 {
        bail!("flags {flags:#x}: no mem_lower/mem_upper");
    }
    let lower = u32_at(info + 4);
    let upper = u64::from(u32_at(info + 8));
    if !(600..=640).contains(&lower) {
        bail!("mem_lower {lower} KiB");
    }
    let top = (upper + 1024) * 1024;
    if top > ram || ram < 3 << 30 && top + (1 << 20) < ram {
        bail!("mem_upper {upper} KiB: RAM to {top:#x}, but fw_cfg says {ram:#x}");
    }
    Ok(())
}

/// The memory map (flags bit 6) has an available entry at 1 MiB, as long as
/// mem_upper says (spec 3.3: mem_upper reaches the first hole above 1 MiB).
pub fn check_mmap(info: u64) -> Check {
    let flags = u32_at(info);
    if flags & INFO_MMAP == 0 {
        bail!("flags {flags:#x}: no memory map");
    }
    let (len, addr) = (u64::from(u32_at(info + 44)), u64::from(u32_at(info + 48)));
    let upper_kib = u64::from(u32_at(info + 8));
    let mut at = addr;
    let mut entries = 0;
    // Each entry: size (not counting itself), base, length, type.
    while at + 24 <= addr + len {
        let size = u64::from(u32_at(at));
        let (base, length, kind) = (u64_at(at + 4), u64_at(at + 12), u32_at(at + 20));
        if kind == 1 && base == 0x10_0000 {
            expect_eq!("length of the RAM at 1 MiB (KiB)", length / 1024, upper_kib);
            return Ok(());
        }
        entries += 1;
        if size < 20 || entries > 128 {
            bail!("entry {entries} has size {size}");
        }
        at += size + 4;
    }
    bail!("no available entry at 1 MiB ({entries} entries)")
}

/// The command line: the file name, then the words passed.
pub fn check_cmdline(info: u64) -> Check {
    let flags = u32_at(info);
    if flags & INFO_CMDLINE == 0 {
        bail!("flags {flags:#x}: no command line");
    }
    let mut text = [0u8; 256];
    let base = u64::from(u32_at(info + 16));
    let mut len = 0;
    while len < text.len() {
        // SAFETY: a NUL-terminated string in identity-mapped RAM.
        let b = unsafe { core::ptr::read_volatile((base + len as u64) as *const u8) };
        if b == 0 {
            break;
        }
        text[len] = b;
        len += 1;
    }
    let Ok(line) = core::str::from_utf8(&text[..len]) else {
        bail!("command line is not UTF-8");
    };
    let (first, rest) = line.split_once(' ').unwrap_or((line, ""));
    let name = first.rsplit('/').next().unwrap_or(first);
    if name != FILE_NAME {
        bail!("first word {first:?} does not name the file {FILE_NAME:?}");
    }
    if rest != EXPECTED_ARGS {
        bail!("arguments {rest:?}, expected {EXPECTED_ARGS:?}");
    }
    Ok(())
}
