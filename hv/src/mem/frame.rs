//! Physical frame allocator: one bit per 4 KiB frame over all RAM.
//!
//! A bitmap (rather than a free list) so that contiguous, aligned runs can be
//! allocated: VMCB-adjacent structures such as the 8 KiB MSR permission map,
//! the 12 KiB I/O permission map and 2 MiB-aligned guest memory need them.
//! Frames below 1 MiB are never handed out (firmware, AP trampolines).

use crate::boot::{BootInfo, MemoryKind};
use spin::Mutex;

/// Frame size.
pub const FRAME_SIZE: u64 = 4096;
const LOW_MEMORY_END: u64 = 0x10_0000;

struct Bitmap {
    /// Bit set = frame in use (or not RAM).
    words: &'static mut [u64],
    frames: u64,
    /// Where the next search starts (next fit).
    cursor: u64,
    free: u64,
}

impl Bitmap {
    fn is_used(&self, frame: u64) -> bool {
        self.words[(frame / 64) as usize] & (1 << (frame % 64)) != 0
    }

    fn set(&mut self, frame: u64, used: bool) {
        let (w, b) = ((frame / 64) as usize, frame % 64);
        let was = self.words[w] & (1 << b) != 0;
        if used {
            self.words[w] |= 1 << b;
        } else {
            self.words[w] &= !(1 << b);
        }
        match (was, used) {
            (true, false) => self.free += 1,
            (false, true) => self.free -= 1,
            _ => {}
        }
    }

    fn set_range(&mut self, base: u64, len: u64, used: bool) {
        // Free only whole frames inside the range; mark used every frame it touches.
        let (first, last) = if used {
            (base / FRAME_SIZE, (base + len).div_ceil(FRAME_SIZE))
        } else {
            (base.div_ceil(FRAME_SIZE), (base + len) / FRAME_SIZE)
        };
        let first = if used {
            first
        } else {
            first.max(LOW_MEMORY_END / FRAME_SIZE)
        };
        // Whole words at once: bit by bit, 512 MiB is 131072 calls, which
        // kept a debug kernel silent for about a minute under a slow KVM.
        let last = last.min(self.frames);
        let mut f = first;
        while f < last {
            if f % 64 == 0 && f + 64 <= last {
                let word = &mut self.words[(f / 64) as usize];
                let was_used = u64::from(word.count_ones());
                if used {
                    self.free -= 64 - was_used;
                    *word = !0;
                } else {
                    self.free += was_used;
                    *word = 0;
                }
                f += 64;
            } else {
                self.set(f, used);
                f += 1;
            }
        }
    }

    /// Finds `count` free frames starting at a multiple of `align` frames.
    fn find(&self, count: u64, align: u64) -> Option<u64> {
        let total = self.frames;
        let start = self.cursor.next_multiple_of(align);
        let search = |from: u64, to: u64| {
            let mut f = from;
            while f + count <= to {
                match (f..f + count).find(|&g| self.is_used(g)) {
                    // Skip past the used frame, keeping the alignment.
                    Some(used) => f = (used + 1).next_multiple_of(align),
                    None => return Some(f),
                }
            }
            None
        };
        search(start, total).or_else(|| search(0, total.min(start + count)))
    }
}

static FRAMES: Mutex<Option<Bitmap>> = Mutex::new(None);

/// Usable RAM below 1 MiB the bitmap never hands out, `[start, end)`:
/// for [`alloc_low`] (the AP trampoline). Page 0 is left alone.
static LOW_FREE: Mutex<(u64, u64)> = Mutex::new((0, 0));

/// Takes `count` frames of usable RAM below 1 MiB for good (the AP
/// trampoline, which a STARTUP IPI can only reach there).
pub fn alloc_low(count: u64) -> Option<u64> {
    let mut low = LOW_FREE.lock();
    let (start, end) = *low;
    let size = count * FRAME_SIZE;
    if end.saturating_sub(start) < size {
        return None;
    }
    // From the top, away from what firmware keeps near 0.
    low.1 = end - size;
    Some(end - size)
}

/// Builds the allocator from the memory map: usable RAM becomes free.
pub fn init(boot: &BootInfo) {
    let regions = boot.memory.as_slice();
    // The largest usable run below 1 MiB, above page 0, for alloc_low.
    let low = regions
        .iter()
        .filter(|r| r.kind == MemoryKind::Usable && r.base < LOW_MEMORY_END)
        .map(|r| {
            let start = r.base.max(FRAME_SIZE).next_multiple_of(FRAME_SIZE);
            let end = r.end().min(LOW_MEMORY_END) & !(FRAME_SIZE - 1);
            (start, end.max(start))
        })
        .max_by_key(|(s, e)| e - s);
    *LOW_FREE.lock() = low.unwrap_or((0, 0));
    let top = regions
        .iter()
        .filter(|r| {
            matches!(
                r.kind,
                MemoryKind::Usable | MemoryKind::BootloaderReclaimable
            )
        })
        .map(|r| r.end())
        .max()
        .unwrap_or(0);
    let frames = top.div_ceil(FRAME_SIZE);
    let bytes = frames.div_ceil(64) * 8;
    // The bitmap itself lives in the first usable region above 1 MiB that holds it.
    let Some(home) = regions.iter().find(|r| {
        r.kind == MemoryKind::Usable
            && r.end() > LOW_MEMORY_END
            && r.end() - r.base.max(LOW_MEMORY_END) >= bytes + FRAME_SIZE
    }) else {
        crate::fatal(format_args!(
            "no usable region can hold the {bytes}-byte frame bitmap"
        ));
    };
    let phys = home.base.max(LOW_MEMORY_END).next_multiple_of(FRAME_SIZE);
    // SAFETY: the region is usable RAM in the direct map and nothing else uses it yet.
    let words = unsafe {
        core::slice::from_raw_parts_mut((phys + boot.hhdm_offset) as *mut u64, (bytes / 8) as usize)
    };
    words.fill(!0);
    let mut map = Bitmap {
        words,
        frames,
        cursor: LOW_MEMORY_END / FRAME_SIZE,
        free: 0,
    };
    for r in regions.iter().filter(|r| r.kind == MemoryKind::Usable) {
        map.set_range(r.base, r.len, false);
    }
    map.set_range(phys, bytes, true);
    *FRAMES.lock() = Some(map);
}

/// Returns bootloader-reclaimable memory to the allocator. Call only when
/// nothing uses loader memory any more (own page tables, stack, GDT; APs parked).
pub fn reclaim_bootloader_memory(boot: &BootInfo) -> u64 {
    let mut guard = FRAMES.lock();
    let Some(map) = guard.as_mut() else { return 0 };
    let before = map.free;
    for r in boot
        .memory
        .as_slice()
        .iter()
        .filter(|r| r.kind == MemoryKind::BootloaderReclaimable)
    {
        map.set_range(r.base, r.len, false);
    }
    (map.free - before) * FRAME_SIZE
}

/// Allocates `count` contiguous frames aligned to `align` bytes (a power of
/// two, at least 4 KiB). Returns the physical address. Contents are undefined.
pub fn alloc(count: u64, align: u64) -> Option<u64> {
    let mut guard = FRAMES.lock();
    let map = guard.as_mut()?;
    let align_frames = (align / FRAME_SIZE).max(1);
    let first = map.find(count, align_frames)?;
    for f in first..first + count {
        map.set(f, true);
    }
    map.cursor = first + count;
    Some(first * FRAME_SIZE)
}

/// Allocates and zeroes `count` contiguous frames aligned to `align` bytes.
pub fn alloc_zeroed(count: u64, align: u64) -> Option<u64> {
    let phys = alloc(count, align)?;
    // SAFETY: freshly allocated RAM, reachable through the direct map.
    unsafe {
        core::ptr::write_bytes(
            super::paging::phys_to_virt(phys) as *mut u8,
            0,
            (count * FRAME_SIZE) as usize,
        )
    };
    Some(phys)
}

/// Frees `count` frames at `phys` (from [`alloc`]).
pub fn free(phys: u64, count: u64) {
    if let Some(map) = FRAMES.lock().as_mut() {
        for f in phys / FRAME_SIZE..phys / FRAME_SIZE + count {
            debug_assert!(map.is_used(f), "double free of frame {f:#x}");
            map.set(f, false);
        }
    }
}

/// Free memory in bytes.
pub fn free_bytes() -> u64 {
    FRAMES.lock().as_ref().map_or(0, |m| m.free * FRAME_SIZE)
}

/// Adapter for the `x86_64` crate's page-table code.
#[derive(Debug)]
pub struct TableFrames;

// SAFETY: every frame returned is unused, 4 KiB aligned RAM.
unsafe impl x86_64::structures::paging::FrameAllocator<x86_64::structures::paging::Size4KiB>
    for TableFrames
{
    fn allocate_frame(&mut self) -> Option<x86_64::structures::paging::PhysFrame> {
        let phys = alloc(1, FRAME_SIZE)?;
        Some(x86_64::structures::paging::PhysFrame::containing_address(
            x86_64::PhysAddr::new(phys),
        ))
    }
}
