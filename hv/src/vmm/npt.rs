//! Nested page tables: guest-physical to host-physical, 4 levels, the same
//! format as ordinary long-mode tables. APM Vol. 2, 15.25.5: every level is
//! treated as a user access, so each entry needs U=1.
//!
//! The VM's own RAM block is mapped writable. Every other guest-physical
//! page below the MAXPHYADDR the guest sees is unbacked memory, which on a
//! PC reads all-ones and drops writes (svm::emulate::unbacked): it is
//! mapped read-only (and executable: a fetch gets 0xFF bytes) to one frame
//! of 0xFF bytes owned by this VM, through tables shared by every fully
//! unbacked range (one PT whose entries all map that frame, one PD whose
//! entries all point at that PT, one PDPT likewise), so the whole space
//! costs four frames. Writes there are nested page faults that L0 drops
//! (exits::npf). Nothing of the hypervisor is reachable from a guest: the
//! frame holds only 0xFF and no guest can write it; tables are never
//! mapped. At and above MAXPHYADDR nothing is mapped.

use crate::mem::frame::{self, FRAME_SIZE};
use alloc::vec::Vec;
use svm::emulate::unbacked::RamLayout;
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
    /// The shared unbacked tables (PT, PD, PDPT): copied before an entry
    /// under them changes ([`Npt::add_mmio_page`]).
    shared: [u64; 3],
    /// Pages left unmapped so every access exits to a device model
    /// (the local APIC page, exits::apic).
    mmio_pages: Vec<u64>,
    /// The frame of 0xFF bytes unbacked memory maps to (shadow NPTs for
    /// L2 map L1's unbacked memory onto it too: nested::npt).
    ones: u64,
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

/// Raw entry bits for the unbacked tables.
const P: u64 = 1;
const W: u64 = 1 << 1;
const U: u64 = 1 << 2;
const PS: u64 = 1 << 7;
const ADDR: u64 = 0x000f_ffff_ffff_f000;
/// A table entry: the leaves decide the access.
const TABLE_ENTRY: u64 = P | W | U;
/// A leaf onto the all-ones frame: read and execute, no write.
const UNBACKED_LEAF: u64 = P | U;

/// Entry `i` of the table at host-physical `table`.
fn entry(table: u64, i: u64) -> *mut u64 {
    (crate::mem::paging::phys_to_virt(table) + i * 8) as *mut u64
}

impl Npt {
    /// Maps guest RAM (`ram`: `[0, size)`) to host-physical
    /// `[host, host + size)` with 2 MiB pages (both must be 2 MiB
    /// aligned), and the rest below `limit` read-only to all-ones
    /// (`limit`: svm::emulate::unbacked::phys_limit). With the PC hole,
    /// the first 2 MiB are 4 KiB pages, the hole's onto all-ones.
    pub fn new(host: u64, ram: RamLayout, limit: u64) -> Result<Self, &'static str> {
        let size = ram.size;
        let mut tables = Vec::new();
        let pml4 = frame::alloc_zeroed(1, FRAME_SIZE).ok_or("out of memory for the NPT root")?;
        tables.push(pml4);
        let mut npt = Self {
            pml4,
            tables,
            shared: [0; 3],
            mmio_pages: Vec::new(),
            ones: 0,
        };
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
            if ram.pc_hole && gpa == 0 {
                npt.map_small(&mut m, host, ram)?;
                continue;
            }
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
        npt.map_unbacked(limit)?;
        Ok(npt)
    }

    /// Maps the RAM pages of the first 2 MiB with 4 KiB pages; the PC
    /// hole's stay non-present here and become unbacked ([`Npt::fill`]).
    fn map_small(
        &mut self,
        m: &mut OffsetPageTable<'_>,
        host: u64,
        ram: RamLayout,
    ) -> Result<(), &'static str> {
        for gpa in (0..2u64 << 20).step_by(4096).filter(|&a| ram.is_ram(a)) {
            let page = Page::<Size4KiB>::containing_address(VirtAddr::new(gpa));
            let frame = PhysFrame::<Size4KiB>::containing_address(PhysAddr::new(host + gpa));
            // SAFETY: as for the 2 MiB pages in `new`.
            let result = unsafe {
                m.map_to_with_table_flags(
                    page,
                    frame,
                    TABLE,
                    TABLE,
                    &mut Recording(&mut self.tables),
                )
            };
            match result {
                Ok(flush) => flush.ignore(),
                Err(MapToError::FrameAllocationFailed) => return Err("out of memory for the NPT"),
                Err(_) => return Err("overlapping NPT mapping"),
            }
        }
        Ok(())
    }

    /// A fresh table frame (zeroed), recorded to be freed with the VM.
    fn new_table(&mut self) -> Result<u64, &'static str> {
        let t = frame::alloc_zeroed(1, FRAME_SIZE).ok_or("out of memory for the NPT")?;
        self.tables.push(t);
        Ok(t)
    }

    /// Maps every page below `limit` that is not RAM onto the all-ones
    /// frame, read-only.
    fn map_unbacked(&mut self, limit: u64) -> Result<(), &'static str> {
        let ones = self.new_table()?;
        self.ones = ones;
        // SAFETY: a fresh frame of ours, in the direct map.
        unsafe { core::ptr::write_bytes(entry(ones, 0) as *mut u8, 0xFF, FRAME_SIZE as usize) };
        // full[l - 1]: the entry at level l (1 = PT .. 4 = PML4) for a range
        // that is unbacked throughout. Each shared table is one frame in
        // `tables`, however many entries point at it: freed once.
        let mut full = [ones | UNBACKED_LEAF, 0, 0, 0];
        for level in 1..4 {
            let shared = self.new_table()?;
            for i in 0..512 {
                // SAFETY: our fresh table frame.
                unsafe { entry(shared, i).write(full[level - 1]) };
            }
            full[level] = shared | TABLE_ENTRY;
            self.shared[level - 1] = shared;
        }
        self.fill(self.pml4, 4, 0, limit, &full)
    }

    /// Fills the non-present entries of `table` (at `level`, mapping from
    /// guest-physical `base`) below `limit` with unbacked memory: shared
    /// tables where the entry's whole range is below `limit`, a table of
    /// its own where `limit` cuts it.
    fn fill(
        &mut self,
        table: u64,
        level: u8,
        base: u64,
        limit: u64,
        full: &[u64; 4],
    ) -> Result<(), &'static str> {
        let span = 1u64 << (12 + 9 * u32::from(level - 1));
        for i in 0..512u64 {
            let start = base + i * span;
            if start >= limit {
                break;
            }
            // SAFETY: `table` is one of this NPT's own table frames.
            let e = unsafe { entry(table, i).read() };
            if e & P != 0 {
                // RAM: a table (recurse) or a 2 MiB page (already mapped).
                if level > 1 && e & PS == 0 {
                    self.fill(e & ADDR, level - 1, start, limit, full)?;
                }
                continue;
            }
            let value = if start + span <= limit {
                full[usize::from(level) - 1]
            } else {
                // `limit` is a power of two of at least 4 KiB: level > 1.
                let own = self.new_table()?;
                self.fill(own, level - 1, start, limit, full)?;
                own | TABLE_ENTRY
            };
            // SAFETY: as above.
            unsafe { entry(table, i).write(value) };
        }
        Ok(())
    }

    /// Leaves the 4 KiB page at `gpa` (unbacked memory) unmapped, so
    /// every access to it is a nested page fault L0 hands to a device
    /// (MMIO). Shared unbacked tables on the way are copied first. RAM
    /// and pages beyond MAXPHYADDR are refused. The caller flushes the
    /// guest's TLB.
    pub fn add_mmio_page(&mut self, gpa: u64) -> Result<(), &'static str> {
        let gpa = gpa & !0xFFF;
        if self.is_mmio_page(gpa) {
            return Ok(());
        }
        let mut table = self.pml4;
        for level in (2..=4u8).rev() {
            let i = (gpa >> (12 + 9 * u32::from(level - 1))) & 511;
            // SAFETY: `table` is one of this NPT's table frames.
            let e = unsafe { entry(table, i).read() };
            if e & P == 0 {
                return Err("an MMIO page beyond the guest's MAXPHYADDR");
            }
            if e & PS != 0 {
                return Err("an MMIO page inside guest RAM");
            }
            let mut next = e & ADDR;
            if self.shared.contains(&next) {
                let own = self.new_table()?;
                // SAFETY: both are table frames of this NPT; `own` is fresh.
                unsafe {
                    core::ptr::copy_nonoverlapping(
                        entry(next, 0) as *const u64,
                        entry(own, 0),
                        512,
                    );
                    entry(table, i).write(own | TABLE_ENTRY);
                }
                next = own;
            }
            table = next;
        }
        let i = (gpa >> 12) & 511;
        // SAFETY: `table` is a PT of this NPT owned by this path alone
        // (copied above if it was shared).
        unsafe {
            // RAM's 4 KiB pages (the first 2 MiB with the PC hole) stay.
            if entry(table, i).read() != self.ones | UNBACKED_LEAF {
                return Err("an MMIO page inside guest RAM");
            }
            entry(table, i).write(0)
        };
        self.mmio_pages.push(gpa);
        Ok(())
    }

    /// Whether `gpa` is in a page [`Npt::add_mmio_page`] left unmapped.
    pub fn is_mmio_page(&self, gpa: u64) -> bool {
        self.mmio_pages.contains(&(gpa & !0xFFF))
    }

    /// The host frame of 0xFF bytes unbacked memory reads from.
    pub fn unbacked_frame(&self) -> u64 {
        self.ones
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
