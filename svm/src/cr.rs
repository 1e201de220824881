//! Control-register bits the hypervisor sets or checks (APM Vol. 2, 3.1).

/// CR0.PE: protection enable.
pub const CR0_PE: u64 = 1 << 0;
/// CR0.MP: monitor coprocessor.
pub const CR0_MP: u64 = 1 << 1;
/// CR0.ET: extension type (reads as 1).
pub const CR0_ET: u64 = 1 << 4;
/// CR0.NE: numeric error.
pub const CR0_NE: u64 = 1 << 5;
/// CR0.WP: write protect.
pub const CR0_WP: u64 = 1 << 16;
/// CR0.NW: not write-through.
pub const CR0_NW: u64 = 1 << 29;
/// CR0.CD: cache disable.
pub const CR0_CD: u64 = 1 << 30;
/// CR0.PG: paging.
pub const CR0_PG: u64 = 1 << 31;
/// CR4.PAE: physical-address extension.
pub const CR4_PAE: u64 = 1 << 5;
