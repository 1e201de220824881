//! A value in its own zeroed, physically contiguous frames, for structures
//! the CPU reads by physical address (VMCB, MSR and I/O permission maps).

use crate::mem::frame::{self, FRAME_SIZE};
use crate::mem::paging::phys_to_virt;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};

/// Owns `size_of::<T>()` bytes (rounded up to frames) of zeroed memory.
#[derive(Debug)]
pub struct PhysBox<T> {
    phys: u64,
    /// Its direct-map address, kept so a deref (many per exit) is one load.
    virt: u64,
    frames: u64,
    _t: PhantomData<T>,
}

impl<T> PhysBox<T> {
    /// Allocates zeroed frames for a `T`. `T` must be valid when all-zero
    /// (plain integer structures).
    pub fn new_zeroed() -> Option<Self> {
        const { assert!(core::mem::align_of::<T>() <= FRAME_SIZE as usize) };
        let frames = (core::mem::size_of::<T>() as u64)
            .div_ceil(FRAME_SIZE)
            .max(1);
        let phys = frame::alloc_zeroed(frames, FRAME_SIZE)?;
        Some(Self {
            phys,
            virt: phys_to_virt(phys),
            frames,
            _t: PhantomData,
        })
    }

    /// Physical address, for the CPU.
    pub fn phys(&self) -> u64 {
        self.phys
    }
}

impl<T> Deref for PhysBox<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the frames are ours, mapped in the direct map, aligned, and
        // hold a valid T (zeroed at creation; only written through &mut T).
        unsafe { &*(self.virt as *const T) }
    }
}

impl<T> DerefMut for PhysBox<T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as for deref, and &mut self makes the access exclusive.
        unsafe { &mut *(self.virt as *mut T) }
    }
}

impl<T> Drop for PhysBox<T> {
    fn drop(&mut self) {
        frame::free(self.phys, self.frames);
    }
}
