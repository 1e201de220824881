//! The guest pack: several files in one boot module, for `cargo xtask run
//! --guest FILE --guest-module MOD...`. QEMU 7.2's PVH loader hands the
//! kernel one `-initrd` only, so xtask packs the guest image and its
//! Multiboot modules into one file (and puts the same file on a Limine
//! medium); the kernel unpacks it here. A module without the magic is a
//! plain guest image with no modules.
//!
//! Layout (all integers little-endian u32, offsets from the pack's start):
//!
//! ```text
//! 0   magic "HVPACK01"
//! 8   count (entry 0 is the guest image, entries 1.. its modules)
//! 12  0
//! 16  count x { data offset, data length, name offset, name length }
//! ..  names and data (xtask aligns each data to 8 bytes; any layout whose
//!     ranges lie inside the pack is accepted)
//! ```

/// The first 8 bytes of a pack.
pub const MAGIC: [u8; 8] = *b"HVPACK01";
/// Bytes before the entry table.
pub const HEADER_LEN: usize = 16;
/// Bytes of one entry of the table.
pub const ENTRY_LEN: usize = 16;
/// Most entries a pack may hold (the image and 15 modules).
pub const MAX_ENTRIES: usize = 16;

/// One file of a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    /// Its name (the module's Multiboot string).
    pub name: &'a [u8],
    /// Its bytes.
    pub data: &'a [u8],
}

/// Why a pack cannot be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackError {
    /// The header or the entry table is cut short.
    Truncated,
    /// No entry (a pack always holds the image) or more than [`MAX_ENTRIES`].
    BadCount(u32),
    /// Entry `n` points outside the pack.
    OutOfBounds(usize),
}

/// Whether `bytes` is a pack.
pub fn is_pack(bytes: &[u8]) -> bool {
    bytes.starts_with(&MAGIC)
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The entries of the pack `bytes` (which [`is_pack`]), checked, into
/// `out`; returns how many.
pub fn unpack<'a>(bytes: &'a [u8], out: &mut [Entry<'a>; MAX_ENTRIES]) -> Result<usize, PackError> {
    let count = u32_at(bytes, 8).ok_or(PackError::Truncated)?;
    if count == 0 || count as usize > MAX_ENTRIES {
        return Err(PackError::BadCount(count));
    }
    let range = |off: u32, len: u32| {
        let start = off as usize;
        bytes.get(start..start.checked_add(len as usize)?)
    };
    for (i, slot) in out.iter_mut().enumerate().take(count as usize) {
        let at = HEADER_LEN + i * ENTRY_LEN;
        let field = |k: usize| u32_at(bytes, at + 4 * k).ok_or(PackError::Truncated);
        let (data_off, data_len) = (field(0)?, field(1)?);
        let (name_off, name_len) = (field(2)?, field(3)?);
        *slot = Entry {
            data: range(data_off, data_len).ok_or(PackError::OutOfBounds(i))?,
            name: range(name_off, name_len).ok_or(PackError::OutOfBounds(i))?,
        };
    }
    Ok(count as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    /// A pack of `files` laid out as xtask writes it.
    fn pack(files: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend((files.len() as u32).to_le_bytes());
        out.extend(0u32.to_le_bytes());
        let table = out.len();
        out.resize(table + ENTRY_LEN * files.len(), 0);
        for (i, (name, data)) in files.iter().enumerate() {
            let name_off = out.len() as u32;
            out.extend_from_slice(name);
            out.resize(out.len().next_multiple_of(8), 0);
            let data_off = out.len() as u32;
            out.extend_from_slice(data);
            let e = table + i * ENTRY_LEN;
            for (k, v) in [data_off, data.len() as u32, name_off, name.len() as u32]
                .iter()
                .enumerate()
            {
                out[e + 4 * k..e + 4 * k + 4].copy_from_slice(&v.to_le_bytes());
            }
        }
        out
    }

    fn empty() -> [Entry<'static>; MAX_ENTRIES] {
        [Entry {
            name: &[],
            data: &[],
        }; MAX_ENTRIES]
    }

    #[test]
    fn unpacks_the_image_and_its_modules() {
        let bytes = pack(&[(b"svm.flat", b"\x02\xb0\xad\x1b"), (b"env", b"NR_CPUS=1\n")]);
        assert!(is_pack(&bytes));
        let mut out = empty();
        assert_eq!(unpack(&bytes, &mut out), Ok(2));
        assert_eq!(
            out[0],
            Entry {
                name: b"svm.flat",
                data: b"\x02\xb0\xad\x1b"
            }
        );
        assert_eq!(
            out[1],
            Entry {
                name: b"env",
                data: b"NR_CPUS=1\n"
            }
        );
        // An empty module is a module.
        let bytes = pack(&[(b"a", b"x"), (b"empty", b"")]);
        assert_eq!(unpack(&bytes, &mut out), Ok(2));
        assert_eq!(out[1].data, b"");
    }

    #[test]
    fn a_plain_image_is_no_pack() {
        assert!(!is_pack(b"\x7fELF"));
        assert!(!is_pack(b"HVPACK0"));
    }

    #[test]
    fn bad_packs_are_refused() {
        assert_eq!(
            unpack(b"HVPACK01\x01\x00", &mut empty()),
            Err(PackError::Truncated)
        );
        let mut bytes = pack(&[(b"a", b"x")]);
        bytes[8] = 0;
        assert_eq!(unpack(&bytes, &mut empty()), Err(PackError::BadCount(0)));
        bytes[8] = 17;
        assert_eq!(unpack(&bytes, &mut empty()), Err(PackError::BadCount(17)));
        // Two entries claimed, one in the table: the second reads past.
        let mut bytes = pack(&[(b"a", b"x")]);
        bytes[8] = 2;
        assert!(unpack(&bytes, &mut empty()).is_err());
        // Data running past the end.
        let mut bytes = pack(&[(b"a", b"xyz")]);
        let len = bytes.len();
        bytes.truncate(len - 1);
        assert_eq!(unpack(&bytes, &mut empty()), Err(PackError::OutOfBounds(0)));
        // Offsets near u32::MAX do not wrap.
        let mut bytes = pack(&[(b"a", b"x")]);
        bytes[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(unpack(&bytes, &mut empty()), Err(PackError::OutOfBounds(0)));
    }
}
