//! The kernel heap: a linked-list allocator over contiguous frames.

use linked_list_allocator::LockedHeap;

/// Heap size.
pub const HEAP_SIZE: u64 = 8 * 1024 * 1024;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// Gives the heap its memory.
pub fn init() {
    let frames = HEAP_SIZE / super::frame::FRAME_SIZE;
    let Some(phys) = super::frame::alloc(frames, super::frame::FRAME_SIZE) else {
        crate::fatal(format_args!(
            "no memory for the {} KiB kernel heap",
            HEAP_SIZE / 1024
        ));
    };
    // SAFETY: the frames are ours for good and mapped in the direct map.
    unsafe {
        HEAP.lock().init(
            super::paging::phys_to_virt(phys) as *mut u8,
            HEAP_SIZE as usize,
        )
    };
}
