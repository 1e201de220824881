//! The kernel's own page tables.
//!
//! Whatever loader ran, the kernel replaces its tables with one layout:
//! - the image at its linked address, per section: text RX, rodata R, data RW
//!   (no-execute wherever not text), the boot stack's guard page unmapped;
//! - a direct map of all RAM at the loader's HHDM offset (2 MiB pages where
//!   aligned), so `phys + offset` pointers stay valid across the switch;
//! - nothing else: MMIO and firmware tables outside RAM are mapped on demand
//!   with [`map_mmio`].

use super::frame::{self, TableFrames, FRAME_SIZE};
use crate::boot::BootInfo;
use core::sync::atomic::{AtomicU64, Ordering};
use spin::Mutex;
use x86_64::registers::control::{Cr3, Cr3Flags};
use x86_64::registers::model_specific::{Efer, EferFlags};
use x86_64::structures::paging::mapper::{MapToError, TranslateResult};
use x86_64::structures::paging::{
    Mapper, OffsetPageTable, Page, PageSize, PageTable, PageTableFlags as Flags, PhysFrame,
    Size2MiB, Size4KiB, Translate,
};
use x86_64::{PhysAddr, VirtAddr};

static HHDM_OFFSET: AtomicU64 = AtomicU64::new(0);
/// Physical address of the kernel's PML4; 0 until [`init`] switched to it.
static KERNEL_PML4: Mutex<u64> = Mutex::new(0);

/// Records the direct-map offset the loader set up (before [`init`]).
pub fn set_hhdm_offset(offset: u64) {
    HHDM_OFFSET.store(offset, Ordering::Relaxed);
}

/// Virtual address of physical `phys` in the direct map.
pub fn phys_to_virt(phys: u64) -> u64 {
    phys + HHDM_OFFSET.load(Ordering::Relaxed)
}

/// # Safety
/// `pml4` must be a page table reachable through the direct map.
unsafe fn mapper(pml4: u64) -> OffsetPageTable<'static> {
    let offset = HHDM_OFFSET.load(Ordering::Relaxed);
    // SAFETY: guaranteed by the caller.
    unsafe {
        OffsetPageTable::new(
            &mut *((pml4 + offset) as *mut PageTable),
            VirtAddr::new(offset),
        )
    }
}

const TABLE_FLAGS: Flags = Flags::PRESENT.union(Flags::WRITABLE);

fn map_4k(
    m: &mut OffsetPageTable<'_>,
    virt: u64,
    phys: u64,
    flags: Flags,
) -> Result<(), MapToError<Size4KiB>> {
    let page = Page::<Size4KiB>::containing_address(VirtAddr::new(virt));
    let frame = PhysFrame::containing_address(PhysAddr::new(phys));
    // SAFETY: callers map each virtual page once, to RAM or MMIO they own.
    unsafe { m.map_to_with_table_flags(page, frame, flags, TABLE_FLAGS, &mut TableFrames) }
        .map(|f| f.ignore())
}

fn map_2m(
    m: &mut OffsetPageTable<'_>,
    virt: u64,
    phys: u64,
    flags: Flags,
) -> Result<(), MapToError<Size2MiB>> {
    let page = Page::<Size2MiB>::containing_address(VirtAddr::new(virt));
    let frame = PhysFrame::<Size2MiB>::containing_address(PhysAddr::new(phys));
    // SAFETY: as for map_4k.
    unsafe { m.map_to_with_table_flags(page, frame, flags, TABLE_FLAGS, &mut TableFrames) }
        .map(|f| f.ignore())
}

/// Maps `[phys, phys + len)` into the direct map, with 2 MiB pages where the
/// range allows.
fn map_direct(m: &mut OffsetPageTable<'_>, phys: u64, len: u64, flags: Flags) {
    let offset = HHDM_OFFSET.load(Ordering::Relaxed);
    let mut at = phys & !(FRAME_SIZE - 1);
    let end = (phys + len).next_multiple_of(FRAME_SIZE);
    while at < end {
        let big = Size2MiB::SIZE;
        let done = if at.is_multiple_of(big) && end - at >= big {
            map_2m(m, at + offset, at, flags | Flags::HUGE_PAGE)
                .is_ok()
                .then_some(big)
        } else {
            None
        };
        let step = match done {
            Some(step) => step,
            None => {
                // Already mapped (regions may share a 2 MiB page) is fine.
                match map_4k(m, at + offset, at, flags) {
                    Ok(())
                    | Err(MapToError::PageAlreadyMapped(_))
                    | Err(MapToError::ParentEntryHugePage) => {}
                    Err(MapToError::FrameAllocationFailed) => {
                        crate::fatal(format_args!("out of memory for page tables"))
                    }
                }
                FRAME_SIZE
            }
        };
        at += step;
    }
}

/// Builds the kernel's page tables and switches to them. Returns CR3.
pub fn init(boot: &BootInfo) -> u64 {
    // SAFETY: NXE only enables the no-execute bit, which the new tables use.
    unsafe { Efer::update(|f| f.insert(EferFlags::NO_EXECUTE_ENABLE)) };
    let Some(pml4) = frame::alloc_zeroed(1, FRAME_SIZE) else {
        crate::fatal(format_args!("out of memory for the kernel PML4"));
    };
    // SAFETY: a fresh zeroed frame in the direct map.
    let mut m = unsafe { mapper(pml4) };

    let guard = crate::boot::stack::guard_page();
    for s in crate::mem::layout::sections() {
        let mut flags = Flags::PRESENT | Flags::GLOBAL;
        if s.writable {
            flags |= Flags::WRITABLE;
        }
        if !s.executable {
            flags |= Flags::NO_EXECUTE;
        }
        for virt in (s.start..s.end).step_by(FRAME_SIZE as usize) {
            if virt == guard {
                continue;
            }
            let phys = virt - boot.kernel_virt + boot.kernel_phys;
            if let Err(e) = map_4k(&mut m, virt, phys, flags) {
                crate::fatal(format_args!(
                    "mapping kernel {} at {virt:#x}: {e:?}",
                    s.name
                ));
            }
        }
    }

    for r in boot.memory.as_slice().iter().filter(|r| r.kind.is_ram()) {
        map_direct(
            &mut m,
            r.base,
            r.len,
            Flags::PRESENT | Flags::WRITABLE | Flags::NO_EXECUTE | Flags::GLOBAL,
        );
    }

    let frame = PhysFrame::containing_address(PhysAddr::new(pml4));
    // SAFETY: the new tables map the running code, its stack and data, and the
    // direct map at the same addresses as the loader's tables did.
    unsafe { Cr3::write(frame, Cr3Flags::empty()) };
    *KERNEL_PML4.lock() = pml4;
    pml4
}

/// Makes `[phys, phys + len)` reachable at `phys_to_virt(phys)` as uncached
/// memory (device registers, firmware tables outside RAM). Pages already in the
/// direct map are left as they are. Returns the virtual address of `phys`.
pub fn map_mmio(phys: u64, len: u64) -> Result<u64, &'static str> {
    let pml4 = *KERNEL_PML4.lock();
    if pml4 == 0 {
        return Err("kernel page tables not active yet");
    }
    // SAFETY: the kernel's PML4 is in the direct map; the lock serialises edits.
    let mut m = unsafe { mapper(pml4) };
    let flags = Flags::PRESENT
        | Flags::WRITABLE
        | Flags::NO_EXECUTE
        | Flags::NO_CACHE
        | Flags::WRITE_THROUGH;
    let mut at = phys & !(FRAME_SIZE - 1);
    while at < phys + len {
        let virt = phys_to_virt(at);
        if let TranslateResult::NotMapped = m.translate(VirtAddr::new(virt)) {
            map_4k(&mut m, virt, at, flags).map_err(|_| "cannot map MMIO page")?;
            x86_64::instructions::tlb::flush(VirtAddr::new(virt));
        }
        at += FRAME_SIZE;
    }
    Ok(phys_to_virt(phys))
}

/// Where [`map_stack`] maps kernel stacks (PML4 slot 384, far from the
/// direct map and the image).
const STACKS_BASE: u64 = 0xffff_c000_0000_0000;
static NEXT_STACK: AtomicU64 = AtomicU64::new(STACKS_BASE);

/// Maps `frames` fresh frames as a kernel stack, with an unmapped guard page
/// below it (an overflow faults, and #DF runs on its IST stack). Returns the
/// stack's top.
pub fn map_stack(frames: u64) -> Result<u64, &'static str> {
    let pml4 = *KERNEL_PML4.lock();
    if pml4 == 0 {
        return Err("kernel page tables not active yet");
    }
    let phys = frame::alloc(frames, FRAME_SIZE).ok_or("out of memory for a stack")?;
    let span = (frames + 1) * FRAME_SIZE;
    let guard = NEXT_STACK.fetch_add(span, Ordering::Relaxed);
    let bottom = guard + FRAME_SIZE;
    // SAFETY: the kernel's PML4 is in the direct map; the lock serialises edits.
    let mut m = unsafe { mapper(pml4) };
    let _lock = KERNEL_PML4.lock();
    let flags = Flags::PRESENT | Flags::WRITABLE | Flags::NO_EXECUTE | Flags::GLOBAL;
    for i in 0..frames {
        map_4k(
            &mut m,
            bottom + i * FRAME_SIZE,
            phys + i * FRAME_SIZE,
            flags,
        )
        .map_err(|_| "cannot map a stack page")?;
    }
    Ok(bottom + frames * FRAME_SIZE)
}
