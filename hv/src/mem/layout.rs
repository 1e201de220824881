//! The kernel image's layout, from symbols the linker script defines.

unsafe extern "C" {
    static __kernel_start: u8;
    static __text_start: u8;
    static __text_end: u8;
    static __rodata_start: u8;
    static __rodata_end: u8;
    static __data_start: u8;
    static __data_end: u8;
    static __kernel_end: u8;
}

/// A part of the kernel image with its access rights.
#[derive(Clone, Copy, Debug)]
pub struct Section {
    /// Name, for messages.
    pub name: &'static str,
    /// First virtual address (page aligned).
    pub start: u64,
    /// One past the last virtual address (page aligned).
    pub end: u64,
    /// Writable?
    pub writable: bool,
    /// Executable?
    pub executable: bool,
}

macro_rules! addr {
    ($sym:ident) => {
        // Only the address of a linker-defined symbol is taken (safe since 1.82).
        core::ptr::addr_of!($sym) as u64
    };
}

/// The image's sections in address order.
pub fn sections() -> [Section; 3] {
    [
        Section {
            name: "text",
            start: addr!(__text_start),
            end: addr!(__text_end),
            writable: false,
            executable: true,
        },
        Section {
            name: "rodata",
            start: addr!(__rodata_start),
            end: addr!(__rodata_end),
            writable: false,
            executable: false,
        },
        Section {
            name: "data",
            start: addr!(__data_start),
            end: addr!(__data_end),
            writable: true,
            executable: false,
        },
    ]
}

/// Size of the loaded image in bytes (page aligned).
pub fn kernel_image_len() -> u64 {
    addr!(__kernel_end) - addr!(__kernel_start)
}
