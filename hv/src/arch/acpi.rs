//! Just enough ACPI to find the RSDP and count processors in the MADT.
//!
//! Tables are read through a direct map given as `offset` (virt = phys +
//! offset); callers make sure the tables are mapped there.

use crate::boot::info::FixedVec;

/// Most processors [`madt_cpus`] reports.
pub const MAX_APIC_IDS: usize = 64;

#[repr(C, packed)]
struct Rsdp {
    signature: [u8; 8],
    checksum: u8,
    oem_id: [u8; 6],
    revision: u8,
    rsdt: u32,
    // revision >= 2
    length: u32,
    xsdt: u64,
    ext_checksum: u8,
    reserved: [u8; 3],
}

#[repr(C, packed)]
struct SdtHeader {
    signature: [u8; 4],
    length: u32,
    revision: u8,
    checksum: u8,
    oem_id: [u8; 6],
    oem_table_id: [u8; 8],
    oem_revision: u32,
    creator_id: u32,
    creator_revision: u32,
}

const SDT_HEADER_LEN: u64 = core::mem::size_of::<SdtHeader>() as u64;

fn checksum_ok(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b)) == 0
}

/// Scans the BIOS read-only area (0xE0000-0xFFFFF) for the RSDP signature.
///
/// # Safety
/// That area must be mapped at `offset`.
pub unsafe fn find_rsdp_in_bios_area(offset: u64) -> Option<u64> {
    (0xE_0000u64..0x10_0000).step_by(16).find(|&phys| {
        // SAFETY: the area is mapped (caller); 20 bytes stay inside it.
        let bytes = unsafe { core::slice::from_raw_parts((phys + offset) as *const u8, 20) };
        &bytes[..8] == b"RSD PTR " && checksum_ok(bytes)
    })
}

/// Physical addresses of the tables the RSDT/XSDT lists.
///
/// # Safety
/// The RSDP and the tables must be mapped at `offset`.
unsafe fn find_table(rsdp_phys: u64, offset: u64, signature: &[u8; 4]) -> Option<u64> {
    // SAFETY: mapped, per the caller.
    let rsdp = unsafe { &*((rsdp_phys + offset) as *const Rsdp) };
    if rsdp.signature != *b"RSD PTR " {
        return None;
    }
    let (root, entry_len) = if rsdp.revision >= 2 && rsdp.xsdt != 0 {
        (rsdp.xsdt, 8u64)
    } else {
        (u64::from(rsdp.rsdt), 4u64)
    };
    // SAFETY: mapped, per the caller.
    let header = unsafe { &*((root + offset) as *const SdtHeader) };
    let count = (u64::from(header.length).saturating_sub(SDT_HEADER_LEN)) / entry_len;
    (0..count).find_map(|i| {
        let at = root + offset + SDT_HEADER_LEN + i * entry_len;
        // SAFETY: inside the root table; entries are unaligned.
        let table = unsafe {
            if entry_len == 8 {
                core::ptr::read_unaligned(at as *const u64)
            } else {
                u64::from(core::ptr::read_unaligned(at as *const u32))
            }
        };
        // SAFETY: mapped, per the caller.
        let h = unsafe { &*((table + offset) as *const SdtHeader) };
        (h.signature == *signature).then_some(table)
    })
}

/// Local APIC IDs of the enabled (or online-capable) processors in the MADT.
///
/// # Safety
/// The RSDP and the ACPI tables must be mapped at `offset`.
pub unsafe fn madt_cpus(rsdp_phys: u64, offset: u64) -> FixedVec<u32, MAX_APIC_IDS> {
    let mut ids = FixedVec::default();
    // SAFETY: forwarded from the caller.
    let Some(madt) = (unsafe { find_table(rsdp_phys, offset, b"APIC") }) else {
        return ids;
    };
    // SAFETY: mapped, per the caller.
    let len = u64::from(unsafe { &*((madt + offset) as *const SdtHeader) }.length);
    // Entries follow the header, the LAPIC address (4) and flags (4). ACPI 6.5, 5.2.12.
    let mut at = SDT_HEADER_LEN + 8;
    while at + 2 <= len {
        // SAFETY: inside the MADT, whose length the header gives.
        let entry = unsafe { core::slice::from_raw_parts((madt + offset + at) as *const u8, 2) };
        let (kind, entry_len) = (entry[0], u64::from(entry[1]));
        if entry_len < 2 || at + entry_len > len {
            break;
        }
        // SAFETY: the whole entry is inside the MADT.
        let e = unsafe {
            core::slice::from_raw_parts((madt + offset + at) as *const u8, entry_len as usize)
        };
        match kind {
            // Processor Local APIC: id at 3, flags at 4 (bit 0 enabled, bit 1 online capable).
            0 if e.len() >= 8 && e[4] & 0b11 != 0 => ids.push(u32::from(e[3])),
            // Processor Local x2APIC: id at 4..8, flags at 8..12.
            9 if e.len() >= 16 && e[8] & 0b11 != 0 => {
                ids.push(u32::from_le_bytes([e[4], e[5], e[6], e[7]]))
            }
            _ => {}
        }
        at += entry_len;
    }
    ids
}
