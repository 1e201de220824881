//! The local APIC as a guest drives it: the xAPIC page at 0xFEE0_0000
//! (mapped by [`map`] through the start PDPT's fourth entry, uncached)
//! with plain 32-bit loads and stores as kvm-unit-tests' lib/x86/apic.c
//! does, and the x2APIC MSRs.

use crate::cpu::{rdmsr, wrmsr};

/// The APIC page (guest-physical = linear once [`map`] ran).
pub const BASE: u64 = 0xFEE0_0000;
/// IA32_APIC_BASE.
pub const MSR_APIC_BASE: u32 = 0x1B;

#[repr(C, align(4096))]
struct Table([u64; 512]);
static mut PD: Table = Table([0; 512]);

/// Maps linear 3-4 GiB 1:1 with 2 MiB pages (PCD|PWT: uncached), so the
/// APIC page is at its physical address. Only L1's tables change; an L2
/// that shares them sees the same.
pub fn map() {
    const PRESENT_RW_2M_UC: u64 = 0x83 | 0x18;
    // SAFETY: a static of this guest, identity-mapped (GPA = address).
    unsafe {
        let pd = &raw mut PD;
        for (i, e) in (*pd).0.iter_mut().enumerate() {
            *e = ((3u64 << 30) + ((i as u64) << 21)) | PRESENT_RW_2M_UC;
        }
    }
    crate::unbacked::set_pdpt(3, &raw const PD as u64 | 3);
}

/// Reads the register at `offset` (32 bits).
pub fn read(offset: u32) -> u32 {
    // SAFETY: the APIC page, mapped by `map`; L0 emulates the access.
    unsafe { core::ptr::read_volatile((BASE + u64::from(offset)) as *const u32) }
}

/// Writes the register at `offset` (32 bits).
pub fn write(offset: u32, value: u32) {
    // SAFETY: as for `read`.
    unsafe { core::ptr::write_volatile((BASE + u64::from(offset)) as *mut u32, value) }
}

/// Software-enables the APIC (SPIV bit 8, spurious vector 0xFF).
pub fn enable() {
    write(0xF0, 0x1FF);
}

/// Whether `vector`'s bit is set in the 256-bit register at `first`
/// (ISR 0x100, TMR 0x180, IRR 0x200).
pub fn bit(first: u32, vector: u8) -> bool {
    read(first + u32::from(vector >> 5) * 0x10) & (1 << (vector & 31)) != 0
}

/// x2APIC register `offset` as its MSR (0x800 + offset / 16).
pub fn x2_read(offset: u32) -> u64 {
    rdmsr(0x800 + (offset >> 4))
}

/// Writes x2APIC register `offset`.
pub fn x2_write(offset: u32, value: u64) {
    wrmsr(0x800 + (offset >> 4), value)
}

/// Opens the interrupt window for one instruction boundary: any pending
/// interrupt the APIC lets through is taken here.
pub fn sti_nop_cli() {
    // SAFETY: the guest's IDT handles every vector (exceptions.rs).
    unsafe { core::arch::asm!("sti", "nop", "cli", options(nomem, nostack)) };
}

/// STI; HLT (the HLT in the STI shadow: no interrupt comes between them),
/// then CLI.
pub fn safe_halt() {
    // SAFETY: as above.
    unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
}
