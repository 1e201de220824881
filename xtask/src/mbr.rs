//! A classic MBR partition table with one bootable FAT32 partition: the layout
//! BIOSes and UEFI firmware both boot from a USB stick. The boot code area is
//! left zero; `limine bios-install` fills it later and keeps the table.

/// Bytes per sector: USB sticks and our images use 512.
pub const SECTOR: u64 = 512;

/// MBR partition type for FAT32 addressed by LBA.
const FAT32_LBA: u8 = 0x0C;

/// One partition in an MBR: where it starts and how long it is, in sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    pub first_lba: u32,
    pub sectors: u32,
}

/// The 512-byte MBR for a disk with one bootable FAT32 partition.
pub fn single_fat32(partition: Partition, disk_signature: u32) -> [u8; 512] {
    let mut mbr = [0u8; 512];
    // Windows and some firmware use the signature to tell disks apart.
    mbr[440..444].copy_from_slice(&disk_signature.to_le_bytes());
    mbr[446..462].copy_from_slice(&entry(partition));
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    mbr
}

/// A 16-byte partition entry, marked active so BIOSes that insist on one boot.
fn entry(partition: Partition) -> [u8; 16] {
    let last_lba = partition.first_lba + partition.sectors - 1;
    let mut entry = [0u8; 16];
    entry[0] = 0x80;
    entry[1..4].copy_from_slice(&chs(partition.first_lba));
    entry[4] = FAT32_LBA;
    entry[5..8].copy_from_slice(&chs(last_lba));
    entry[8..12].copy_from_slice(&partition.first_lba.to_le_bytes());
    entry[12..16].copy_from_slice(&partition.sectors.to_le_bytes());
    entry
}

/// CHS address in the conventional 255-head, 63-sector geometry, saturating
/// to the "use LBA" marker beyond what CHS can express. Old BIOSes still read
/// these fields, so they should be right, not zero.
fn chs(lba: u32) -> [u8; 3] {
    const HEADS: u32 = 255;
    const SECTORS: u32 = 63;
    let cylinder = lba / (HEADS * SECTORS);
    if cylinder > 1023 {
        return [0xFE, 0xFF, 0xFF];
    }
    let head = (lba / SECTORS) % HEADS;
    let sector = lba % SECTORS + 1;
    [
        head as u8,
        (sector as u8) | (((cylinder >> 8) as u8) << 6),
        cylinder as u8,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_one_active_fat32_partition() {
        let mbr = single_fat32(
            Partition {
                first_lba: 2048,
                sectors: 129_024,
            },
            0x1234_5678,
        );
        assert_eq!(&mbr[510..], &[0x55, 0xAA]);
        assert_eq!(&mbr[440..444], &0x1234_5678u32.to_le_bytes());
        let e = &mbr[446..462];
        assert_eq!(e[0], 0x80);
        assert_eq!(e[4], 0x0C);
        assert_eq!(u32::from_le_bytes(e[8..12].try_into().unwrap()), 2048);
        assert_eq!(u32::from_le_bytes(e[12..16].try_into().unwrap()), 129_024);
        // The other three entries stay empty.
        assert!(mbr[462..510].iter().all(|&b| b == 0));
        // No boot code: limine bios-install provides it.
        assert!(mbr[..440].iter().all(|&b| b == 0));
    }

    #[test]
    fn chs_matches_the_usual_geometry() {
        // LBA 2048 is cylinder 0, head 32, sector 33 with 255 heads x 63 sectors.
        assert_eq!(chs(2048), [32, 33, 0]);
        // 1024 * 255 * 63 sectors is beyond CHS.
        assert_eq!(chs(1024 * 255 * 63), [0xFE, 0xFF, 0xFF]);
        // Cylinder 256: the high bits go to the top of the sector byte.
        assert_eq!(chs(256 * 255 * 63), [0, 0x41, 0]);
    }
}
