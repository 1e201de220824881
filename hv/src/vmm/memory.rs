//! A VM's guest-physical RAM: one contiguous, 2 MiB-aligned block of host
//! frames, so the nested page tables can use 2 MiB pages.

use crate::mem::frame::{self, FRAME_SIZE};
use crate::mem::paging::phys_to_virt;
use svm::emulate::unbacked::RamLayout;

const BLOCK_ALIGN: u64 = 2 << 20;

/// Guest RAM, guest-physical `[0, size)`.
#[derive(Debug)]
pub struct GuestMemory {
    host_phys: u64,
    /// The block's direct-map address (one load per access, not two).
    host_virt: u64,
    /// The block's size, less the PC hole when it has one (its bytes
    /// exist in the block but are not RAM to the guest).
    ram: RamLayout,
}

/// A guest-physical range outside guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutsideMemory {
    /// First guest-physical address of the access.
    pub gpa: u64,
    /// Its length.
    pub len: u64,
}

impl GuestMemory {
    /// Allocates `size` bytes (a multiple of 2 MiB) of zeroed guest RAM;
    /// `pc_hole`: the PC's VGA window is not RAM (Multiboot guests).
    pub fn new(size: u64, pc_hole: bool) -> Option<Self> {
        debug_assert!(size.is_multiple_of(BLOCK_ALIGN));
        let host_phys = frame::alloc_zeroed(size / FRAME_SIZE, BLOCK_ALIGN)?;
        Some(Self {
            host_phys,
            host_virt: phys_to_virt(host_phys),
            ram: RamLayout { size, pc_hole },
        })
    }

    /// Bytes of RAM.
    pub fn size(&self) -> u64 {
        self.ram.size
    }

    /// Where RAM is (what is unbacked: svm::emulate::unbacked).
    #[inline]
    pub fn layout(&self) -> RamLayout {
        self.ram
    }

    /// Host-physical address of guest-physical 0.
    pub fn host_phys(&self) -> u64 {
        self.host_phys
    }

    /// All of guest RAM as bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the block is ours and mapped in the direct map.
        unsafe { core::slice::from_raw_parts(self.host_virt as *const u8, self.ram.size as usize) }
    }

    /// All of guest RAM as little-endian 8-byte words (guest-physical
    /// `8 * i` at index `i`): page-table entries read in place.
    pub fn words(&self) -> &[u64] {
        // SAFETY: as for bytes; the block is 2 MiB aligned and its size a
        // multiple of 8, and any bit pattern is a u64.
        unsafe {
            core::slice::from_raw_parts(
                phys_to_virt(self.host_phys) as *const u64,
                (self.ram.size / 8) as usize,
            )
        }
    }

    /// All of guest RAM as bytes, writable.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for bytes; &mut self makes it exclusive.
        unsafe {
            core::slice::from_raw_parts_mut(self.host_virt as *mut u8, self.ram.size as usize)
        }
    }

    /// The bytes `[gpa, gpa + len)`, if inside guest RAM.
    #[inline]
    pub fn slice(&self, gpa: u64, len: u64) -> Result<&[u8], OutsideMemory> {
        if !self.ram.is_ram_range(gpa, len) {
            return Err(OutsideMemory { gpa, len });
        }
        // SAFETY: [gpa, gpa + len) is inside the block (checked above),
        // which is ours and mapped in the direct map.
        Ok(unsafe {
            core::slice::from_raw_parts((self.host_virt + gpa) as *const u8, len as usize)
        })
    }

    /// Writable bytes `[gpa, gpa + len)`, if inside guest RAM.
    pub fn slice_mut(&mut self, gpa: u64, len: u64) -> Result<&mut [u8], OutsideMemory> {
        if !self.ram.is_ram_range(gpa, len) {
            return Err(OutsideMemory { gpa, len });
        }
        // SAFETY: as in `slice`; `&mut self` makes it exclusive.
        Ok(unsafe {
            core::slice::from_raw_parts_mut((self.host_virt + gpa) as *mut u8, len as usize)
        })
    }

    /// Reads a little-endian u64 at `gpa`.
    #[inline]
    pub fn read_u64(&self, gpa: u64) -> Option<u64> {
        let b = self.slice(gpa, 8).ok()?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }

    /// Copies bytes at guest-virtual `gva` (translated with the guest's page
    /// tables at `cr3`) into `out`; returns how many were readable.
    pub fn read_virt(&self, cr3: u64, gva: u64, out: &mut [u8]) -> usize {
        let mut done = 0;
        while done < out.len() {
            let va = gva.wrapping_add(done as u64);
            let Ok(pa) = svm::walk::translate(|a| self.read_u64(a), cr3, va) else {
                break;
            };
            let in_page = (FRAME_SIZE - (pa % FRAME_SIZE)).min((out.len() - done) as u64);
            let Ok(src) = self.slice(pa, in_page) else {
                break;
            };
            out[done..done + in_page as usize].copy_from_slice(src);
            done += in_page as usize;
        }
        done
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        frame::free(self.host_phys, self.ram.size / FRAME_SIZE);
    }
}
