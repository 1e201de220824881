//! Nested page tables: guest-physical to host-physical, 4 levels, the same
//! format as ordinary long-mode tables. APM Vol. 2, 15.25.5: every level is
//! treated as a user access, so each entry needs U=1.
//!
//! Only the VM's own RAM block is mapped: nothing of the hypervisor is ever
//! reachable from a guest, and any other access is a nested page fault.

use crate::mem::frame::{self, FRAME_SIZE};
use alloc::vec::Vec;
use x86_64::structures::paging::mapper::MapToError;
use x86_64::structures::paging::{
    FrameAllocator, Mapper, OffsetPageTable, Page, PageTable, PageTableFlags as Flags, PhysFrame,
    Size2MiB, Size4KiB,
};
use x86_64::{PhysAddr, VirtAddr};

/// A VM's nested page tables.
#[derive(Debug)]
pub struct Npt {
    pml4: u64,
    /// Every table frame, freed with the VM.
    tables: Vec<u64>,
}

struct Recording<'a>(&'a mut Vec<u64>);

// SAFETY: frames come from the frame allocator, unused and 4 KiB aligned.
unsafe impl FrameAllocator<Size4KiB> for Recording<'_> {
    fn allocate_frame(&mut self) -> Option<PhysFrame> {
        let phys = frame::alloc(1, FRAME_SIZE)?;
        self.0.push(phys);
        Some(PhysFrame::containing_address(PhysAddr::new(phys)))
    }
}

const TABLE: Flags = Flags::PRESENT
    .union(Flags::WRITABLE)
    .union(Flags::USER_ACCESSIBLE);

impl Npt {
    /// Maps guest-physical `[0, size)` to host-physical `[host, host + size)`
    /// with 2 MiB pages (both must be 2 MiB aligned).
    pub fn new(host: u64, size: u64) -> Result<Self, &'static str> {
        let mut tables = Vec::new();
        let pml4 = frame::alloc_zeroed(1, FRAME_SIZE).ok_or("out of memory for the NPT root")?;
        tables.push(pml4);
        let mut npt = Self { pml4, tables };
        let offset = crate::mem::paging::phys_to_virt(0);
        // SAFETY: the root is a fresh zeroed frame in the direct map.
        let mut m = unsafe {
            OffsetPageTable::new(
                &mut *((pml4 + offset) as *mut PageTable),
                VirtAddr::new(offset),
            )
        };
        let step = 2 << 20;
        for gpa in (0..size).step_by(step as usize) {
            let page = Page::<Size2MiB>::containing_address(VirtAddr::new(gpa));
            let frame = PhysFrame::<Size2MiB>::containing_address(PhysAddr::new(host + gpa));
            let flags = TABLE | Flags::HUGE_PAGE;
            // SAFETY: the frames are the VM's own RAM; these are not the
            // host's tables, so no TLB flush is due.
            let result = unsafe {
                m.map_to_with_table_flags(
                    page,
                    frame,
                    flags,
                    TABLE,
                    &mut Recording(&mut npt.tables),
                )
            };
            match result {
                Ok(flush) => flush.ignore(),
                Err(MapToError::FrameAllocationFailed) => return Err("out of memory for the NPT"),
                Err(_) => return Err("overlapping NPT mapping"),
            }
        }
        Ok(npt)
    }

    /// The nCR3 value.
    pub fn root(&self) -> u64 {
        self.pml4
    }
}

impl Drop for Npt {
    fn drop(&mut self) {
        for &t in &self.tables {
            frame::free(t, 1);
        }
    }
}
