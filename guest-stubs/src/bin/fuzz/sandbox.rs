//! L2's sandbox: a small memory area of its own, mapped by page tables
//! that map nothing else, so that whatever L2 runs cannot write L1's code
//! or data and L1 keeps its oracles. L1 has no nested paging, so
//! L2-physical = L1-physical: L2's page tables (in L1's image, not mapped
//! for L2) simply leave L1's pages out. Rebuilt at every iteration, so an
//! iteration does not depend on what the one before left.

use core::ptr::addr_of_mut;

/// The sandbox's first page (L2-virtual = L1-physical).
pub(crate) const BASE: u64 = 0x40_0000;
/// L2's code page: the payload, then HLT to the end of the page.
pub(crate) const CODE: u64 = BASE;
/// L2's IDT: 256 gates to the stubs.
pub(crate) const IDT: u64 = BASE + 0x1000;
/// L2's GDT (selectors below), with its TSS at +0x800.
pub(crate) const GDT: u64 = BASE + 0x2000;
/// L2's TSS.
pub(crate) const TSS: u64 = GDT + 0x800;
/// Exception/interrupt stubs, 16 bytes per vector:
/// `mov eax, 0xe000_00vv; 1: hlt; jmp 1b`.
pub(crate) const STUBS: u64 = BASE + 0x3000;
/// Top of L2's stack (four pages below).
pub(crate) const STACK_TOP: u64 = BASE + 0x8000;
/// L2's data pages (memory operands land here).
pub(crate) const DATA: u64 = BASE + 0x8000;
/// Pages mapped for L2.
pub(crate) const L2_PAGES: u64 = 16;
/// Scratch pages for L1 (not mapped for L2): VMSAVE targets, random VMCBs.
pub(crate) const SCRATCH: u64 = BASE + L2_PAGES * 0x1000;
/// End of the sandbox (two scratch pages).
pub(crate) const END: u64 = SCRATCH + 0x2000;
/// RAX a stub leaves: this | vector.
pub(crate) const STUB_RAX: u64 = 0xe000_0000;

/// Ring-0 64-bit code, data, ring-3 code, data (selectors 0x08-0x20), TSS at 0x28.
pub(crate) const GDT_ENTRIES: [u64; 5] = [
    0,
    0x00af_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x00af_fb00_0000_ffff,
    0x00cf_f300_0000_ffff,
];
/// Ring-0 code/data, ring-3 code/data, TSS selectors.
pub(crate) const SEL_CODE0: u16 = 0x08;
pub(crate) const SEL_DATA0: u16 = 0x10;
pub(crate) const SEL_CODE3: u16 = 0x1b;
pub(crate) const SEL_DATA3: u16 = 0x23;
pub(crate) const SEL_TSS: u16 = 0x28;
/// GDT limit (7 entries: 5 + the 16-byte TSS descriptor).
pub(crate) const GDT_LIMIT: u32 = 7 * 8 - 1;

#[repr(C, align(4096))]
struct Table([u64; 512]);

static mut PML4: Table = Table([0; 512]);
static mut PDPT: Table = Table([0; 512]);
static mut PD: Table = Table([0; 512]);
static mut PT: Table = Table([0; 512]);

const P: u64 = 1;
const W: u64 = 2;
const U: u64 = 4;

/// L2's CR3.
pub(crate) fn cr3() -> u64 {
    addr_of_mut!(PML4) as u64
}

/// Whether a physical page is L1's (outside the sandbox): L2 must never
/// get it as a page-table root.
pub(crate) fn is_l1_page(pa: u64, ram: u64) -> bool {
    let page = pa & 0x000f_ffff_ffff_f000;
    page < ram && !(BASE..END).contains(&page)
}

/// Writes the page tables (once: L2 cannot reach them).
pub(crate) fn map() {
    // SAFETY: single vCPU; L2 does not run now.
    unsafe {
        (*addr_of_mut!(PML4)).0[0] = addr_of_mut!(PDPT) as u64 | P | W | U;
        (*addr_of_mut!(PDPT)).0[0] = addr_of_mut!(PD) as u64 | P | W | U;
        (*addr_of_mut!(PD)).0[(BASE >> 21) as usize] = addr_of_mut!(PT) as u64 | P | W | U;
        let pt = &mut (*addr_of_mut!(PT)).0;
        let first = ((BASE >> 12) & 511) as usize;
        for i in 0..L2_PAGES as usize {
            pt[first + i] = (BASE + (i as u64) * 0x1000) | P | W | U;
        }
    }
}

fn bytes(at: u64, len: u64) -> &'static mut [u8] {
    // SAFETY: sandbox memory, L1's to write while L2 does not run.
    unsafe { core::slice::from_raw_parts_mut(at as *mut u8, len as usize) }
}

fn put64(at: u64, v: u64) {
    // SAFETY: as for bytes.
    unsafe { core::ptr::write_volatile(at as *mut u64, v) }
}

/// Rebuilds IDT, GDT, TSS and stubs, and the code page with `payload`
/// at `offset`, HLT everywhere else.
pub(crate) fn rebuild(payload: &[u8], offset: usize) {
    let code = bytes(CODE, 0x1000);
    code.fill(0xf4);
    code[offset..offset + payload.len()].copy_from_slice(payload);
    for v in 0..256u64 {
        let stub = STUBS + v * 16;
        let s = bytes(stub, 16);
        s[0] = 0xb8;
        s[1..5].copy_from_slice(&((STUB_RAX | v) as u32).to_le_bytes());
        s[5] = 0xf4;
        s[6] = 0xeb;
        s[7] = 0xfd;
        // 64-bit interrupt gate, present, DPL 3, selector 0x08.
        put64(
            IDT + v * 16,
            (stub & 0xffff)
                | (u64::from(SEL_CODE0) << 16)
                | (0xee00 << 32)
                | ((stub >> 16) & 0xffff) << 48,
        );
        put64(IDT + v * 16 + 8, stub >> 32);
    }
    for (i, d) in GDT_ENTRIES.iter().enumerate() {
        put64(GDT + 8 * i as u64, *d);
    }
    // 64-bit TSS descriptor (available), limit 0x67.
    let tss_low = 0x67 | ((TSS & 0xff_ffff) << 16) | (0x89 << 40) | ((TSS >> 24) & 0xff) << 56;
    put64(GDT + 0x28, tss_low);
    put64(GDT + 0x30, TSS >> 32);
    bytes(TSS, 0x68).fill(0);
    put64(TSS + 4, STACK_TOP); // RSP0
                               // I/O map base beyond the limit: no I/O bitmap.
    bytes(TSS + 0x66, 2).copy_from_slice(&0x68u16.to_le_bytes());
}

/// Fills a scratch page with random bytes (a garbage VMCB).
pub(crate) fn scratch_fill(page: u64, rng: &mut svm::fuzz::Rng) {
    for i in 0..512 {
        put64(page + i * 8, rng.bits());
    }
}
