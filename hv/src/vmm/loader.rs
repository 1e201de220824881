//! Loads a guest's ELF64 image into guest RAM at its physical addresses.

use super::memory::GuestMemory;

/// Why an image did not load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadError {
    /// Not a little-endian x86-64 ELF64 executable.
    NotElf64,
    /// A header or segment lies outside the file.
    Truncated,
    /// A segment lies outside guest RAM.
    OutsideRam(u64),
}

/// `N` bytes of `b` at `at`, if all are there.
fn bytes_at<const N: usize>(b: &[u8], at: usize) -> Result<[u8; N], LoadError> {
    let end = at.checked_add(N).ok_or(LoadError::Truncated)?;
    b.get(at..end)
        .and_then(|s| s.try_into().ok())
        .ok_or(LoadError::Truncated)
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, LoadError> {
    bytes_at(b, at).map(u16::from_le_bytes)
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, LoadError> {
    bytes_at(b, at).map(u32::from_le_bytes)
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, LoadError> {
    bytes_at(b, at).map(u64::from_le_bytes)
}

/// Copies every PT_LOAD segment of `elf` to its p_paddr in `ram` (zeroing
/// the rest of its memory size) and returns the entry point.
pub fn load(elf: &[u8], ram: &mut GuestMemory) -> Result<u64, LoadError> {
    const PT_LOAD: u32 = 1;
    const EM_X86_64: u16 = 62;
    if elf.get(..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err(LoadError::NotElf64);
    }
    if u16_at(elf, 18)? != EM_X86_64 {
        return Err(LoadError::NotElf64);
    }
    let entry = u64_at(elf, 24)?;
    let phoff = u64_at(elf, 32)? as usize;
    let phentsize = usize::from(u16_at(elf, 54)?);
    let phnum = usize::from(u16_at(elf, 56)?);
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(elf, ph)? != PT_LOAD {
            continue;
        }
        let offset = u64_at(elf, ph + 8)? as usize;
        let paddr = u64_at(elf, ph + 24)?;
        let filesz = u64_at(elf, ph + 32)?;
        let memsz = u64_at(elf, ph + 40)?;
        let src = elf
            .get(offset..offset + filesz as usize)
            .ok_or(LoadError::Truncated)?;
        let dst = ram
            .slice_mut(paddr, memsz.max(filesz))
            .map_err(|_| LoadError::OutsideRam(paddr))?;
        dst[..src.len()].copy_from_slice(src);
        dst[src.len()..].fill(0);
    }
    Ok(entry)
}
