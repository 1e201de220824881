//! PVH direct boot (`qemu-system-x86_64 -kernel hv`).
//!
//! QEMU finds the XEN_ELFNOTE_PHYS32_ENTRY note, loads the PT_LOAD segments at
//! their physical addresses and enters `pvh_start32` in 32-bit protected mode
//! with paging off and EBX = physical address of `hvm_start_info`. The 32-bit
//! code builds temporary page tables (identity map and direct map of the low
//! 4 GiB with 2 MiB pages, the kernel's higher half), enters long mode and
//! calls [`pvh_main`], which copies the start info into a [`BootInfo`] before
//! anything can reuse the low memory it lives in.
//!
//! Layout of `hvm_start_info`: xen/include/public/arch-x86/hvm/start_info.h.

use super::info::{BootInfo, BootProtocol, Cpu, FixedStr, MemoryKind, MemoryRegion, Module};
use crate::arch::acpi;

/// Where the direct map of physical memory starts, as Limine's default HHDM.
pub const HHDM_OFFSET: u64 = 0xffff_8000_0000_0000;
/// Linked virtual base of the kernel (linker.ld: KERNEL_VIRT).
const KERNEL_VIRT: u64 = 0xffff_ffff_8000_0000;
/// Physical load address of the kernel (linker.ld: KERNEL_PHYS).
const KERNEL_PHYS: u64 = 0x20_0000;
/// Subtracted from a linked address to get the physical one.
const VIRT_TO_PHYS: u64 = KERNEL_VIRT - KERNEL_PHYS;
/// The PVH map covers the kernel image with this many 2 MiB pages (linker.ld asserts the size).
const KERNEL_2M_PAGES: u32 = 16;

const START_INFO_MAGIC: u32 = 0x336e_c578;

#[repr(C)]
struct StartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    // version >= 1
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

#[repr(C)]
struct ModlistEntry {
    paddr: u64,
    size: u64,
    cmdline_paddr: u64,
    reserved: u64,
}

#[repr(C)]
struct MemmapEntry {
    addr: u64,
    size: u64,
    kind: u32,
    reserved: u32,
}

/// Boot page tables: PML4, low PDPT, four PDs (0-4 GiB), high PDPT, kernel PD.
#[repr(C, align(4096))]
struct BootPageTables {
    pml4: [u64; 512],
    pdpt_low: [u64; 512],
    pd_low: [[u64; 512]; 4],
    pdpt_high: [u64; 512],
    pd_kernel: [u64; 512],
}

#[unsafe(no_mangle)]
static mut PVH_PAGE_TABLES: BootPageTables = BootPageTables {
    pml4: [0; 512],
    pdpt_low: [0; 512],
    pd_low: [[0; 512]; 4],
    pdpt_high: [0; 512],
    pd_kernel: [0; 512],
};

// The ELF note QEMU looks for: name "Xen", type 18 (XEN_ELFNOTE_PHYS32_ENTRY),
// an 8-byte descriptor holding the physical entry address.
core::arch::global_asm!(
    r#"
    .section .note.pvh, "a", @note
    .balign 4
    .long 4
    .long 8
    .long 18
    .asciz "Xen"
    .balign 4
    .quad pvh_start32 - {v2p}
    .balign 4
    "#,
    v2p = const VIRT_TO_PHYS,
);

// 32-bit entry. Every symbol is used at its physical address (sym - v2p):
// paging is off until the jump to 64-bit code.
core::arch::global_asm!(
    r#"
    .section .text.boot32, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    # EBP holds the start info address until it is passed to Rust (CPUID clobbers EBX).
    mov ebp, ebx

    # Zero the page tables (the loader zero-fills .bss, but be sure).
    mov edi, offset PVH_PAGE_TABLES - {v2p}
    mov ecx, {pt_size} / 4
    xor eax, eax
    rep stosd

    mov esi, offset PVH_PAGE_TABLES - {v2p}
    # PML4[0] and PML4[256] -> low PDPT (identity and direct map), PML4[511] -> high PDPT.
    lea eax, [esi + {off_pdpt_low} + 3]
    mov [esi], eax
    mov [esi + 256 * 8], eax
    lea eax, [esi + {off_pdpt_high} + 3]
    mov [esi + 511 * 8], eax

    # Low PDPT[0..4] -> the four PDs.
    xor ecx, ecx
1:
    mov eax, ecx
    shl eax, 12
    lea eax, [esi + eax + {off_pd_low} + 3]
    mov [esi + {off_pdpt_low} + ecx * 8], eax
    inc ecx
    cmp ecx, 4
    jb 1b

    # The four PDs: 2048 entries of 2 MiB pages, physical 0..4 GiB (P, RW, PS).
    xor ecx, ecx
2:
    mov eax, ecx
    shl eax, 21
    or eax, 0x83
    mov [esi + {off_pd_low} + ecx * 8], eax
    mov eax, ecx
    shr eax, 11
    mov [esi + {off_pd_low} + ecx * 8 + 4], eax
    inc ecx
    cmp ecx, 2048
    jb 2b

    # High PDPT[510] -> kernel PD; kernel PD maps KERNEL_VIRT.. to KERNEL_PHYS..
    lea eax, [esi + {off_pd_kernel} + 3]
    mov [esi + {off_pdpt_high} + 510 * 8], eax
    xor ecx, ecx
3:
    mov eax, ecx
    shl eax, 21
    add eax, {kernel_phys} + 0x83
    mov [esi + {off_pd_kernel} + ecx * 8], eax
    inc ecx
    cmp ecx, {kernel_pages}
    jb 3b

    # PAE on, CR3, EFER.LME (+NXE when the CPU has NX), then paging on.
    mov eax, cr4
    or eax, 1 << 5
    mov cr4, eax
    mov cr3, esi
    mov eax, 0x80000001
    cpuid
    mov edi, 1 << 8
    test edx, 1 << 20
    jz 4f
    or edi, 1 << 11
4:
    mov ecx, 0xC0000080
    rdmsr
    or eax, edi
    wrmsr
    mov eax, cr0
    or eax, 0x80010001
    mov cr0, eax

    lgdt [pvh_gdt_ptr - {v2p}]
    # ljmp 0x08:pvh_start64, encoded by hand (opcode EA, ptr16:32).
    .byte 0xea
    .long pvh_start64 - {v2p}
    .word 0x08

    .balign 8
pvh_gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
pvh_gdt_ptr:
    .word pvh_gdt_ptr - pvh_gdt - 1
    .long pvh_gdt - {v2p}

    .code64
pvh_start64:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    movabs rsp, offset BOOT_STACK + {stack_top}
    mov edi, ebp
    xor ebp, ebp
    movabs rax, offset {main}
    call rax
    ud2
    "#,
    v2p = const VIRT_TO_PHYS,
    pt_size = const core::mem::size_of::<BootPageTables>(),
    off_pdpt_low = const core::mem::offset_of!(BootPageTables, pdpt_low),
    off_pd_low = const core::mem::offset_of!(BootPageTables, pd_low),
    off_pdpt_high = const core::mem::offset_of!(BootPageTables, pdpt_high),
    off_pd_kernel = const core::mem::offset_of!(BootPageTables, pd_kernel),
    kernel_phys = const KERNEL_PHYS,
    kernel_pages = const KERNEL_2M_PAGES,
    stack_top = const core::mem::size_of::<super::stack::BootStack>(),
    main = sym pvh_main,
);

/// Reads a `T` at physical address `phys` through the boot direct map.
///
/// # Safety
/// `phys` must lie in the low 4 GiB mapped by the boot tables and hold a `T`.
unsafe fn phys_ref<'a, T>(phys: u64) -> &'a T {
    // SAFETY: guaranteed by the caller.
    unsafe { &*((phys + HHDM_OFFSET) as *const T) }
}

/// Copies a NUL-terminated string at `phys` (empty for 0).
///
/// # Safety
/// As for [`phys_ref`].
unsafe fn phys_cstr<const N: usize>(phys: u64) -> FixedStr<N> {
    if phys == 0 {
        return FixedStr::default();
    }
    // SAFETY: guaranteed by the caller; at most N + 1 bytes are read.
    let bytes = unsafe { core::slice::from_raw_parts((phys + HHDM_OFFSET) as *const u8, N + 1) };
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(N);
    FixedStr::from_bytes(&bytes[..end])
}

fn e820_kind(kind: u32) -> MemoryKind {
    match kind {
        1 => MemoryKind::Usable,
        3 => MemoryKind::AcpiReclaimable,
        4 => MemoryKind::AcpiNvs,
        _ => MemoryKind::Reserved,
    }
}

/// Rust side of the PVH entry: runs on the boot stack with the boot tables.
extern "C" fn pvh_main(start_info_phys: u32) -> ! {
    crate::console::init();
    // SAFETY: the loader passes a valid start info below 4 GiB.
    let si: &StartInfo = unsafe { phys_ref(u64::from(start_info_phys)) };
    if si.magic != START_INFO_MAGIC {
        crate::fatal(format_args!(
            "PVH: bad hvm_start_info magic {:#x}",
            si.magic
        ));
    }
    if si.version < 1 || si.memmap_paddr == 0 {
        crate::fatal(format_args!(
            "PVH: start info version {} has no memory map",
            si.version
        ));
    }

    let mut boot = BootInfo::new(BootProtocol::Pvh);
    boot.hhdm_offset = HHDM_OFFSET;
    boot.kernel_phys = KERNEL_PHYS;
    boot.kernel_virt = KERNEL_VIRT;
    // SAFETY: the loader's command line lives in low memory it reports.
    boot.cmdline = unsafe { phys_cstr(si.cmdline_paddr) };

    for i in 0..u64::from(si.memmap_entries) {
        // SAFETY: memmap_entries entries at memmap_paddr, per the PVH ABI.
        let e: &MemmapEntry =
            unsafe { phys_ref(si.memmap_paddr + i * core::mem::size_of::<MemmapEntry>() as u64) };
        let region = MemoryRegion {
            base: e.addr,
            len: e.size,
            kind: e820_kind(e.kind),
        };
        // The boot map reaches 4 GiB; RAM above is dropped rather than touched unmapped.
        if region.base >= 1 << 32 && region.kind != MemoryKind::Reserved {
            log::warn!("PVH: ignoring RAM above 4 GiB at {:#x}", region.base);
            continue;
        }
        boot.memory.push(region);
    }
    boot.sort_memory();

    // QEMU reports the memory it loaded the kernel and modules into as RAM.
    let image_len = crate::mem::layout::kernel_image_len();
    boot.carve(KERNEL_PHYS, image_len, MemoryKind::KernelAndModules);
    for i in 0..u64::from(si.nr_modules) {
        // SAFETY: nr_modules entries at modlist_paddr, per the PVH ABI.
        let m: &ModlistEntry =
            unsafe { phys_ref(si.modlist_paddr + i * core::mem::size_of::<ModlistEntry>() as u64) };
        // SAFETY: as above.
        let cmdline = unsafe { phys_cstr(m.cmdline_paddr) };
        boot.modules.push(Module {
            phys: m.paddr,
            len: m.size,
            cmdline,
        });
        boot.carve(m.paddr, m.size, MemoryKind::KernelAndModules);
    }

    boot.rsdp = if si.rsdp_paddr != 0 {
        Some(si.rsdp_paddr)
    } else {
        // SAFETY: the BIOS area is in the boot direct map.
        unsafe { acpi::find_rsdp_in_bios_area(HHDM_OFFSET) }
    };
    // PVH reports no processors: read them from the ACPI MADT.
    if let Some(rsdp) = boot.rsdp {
        // SAFETY: ACPI tables are below 4 GiB under QEMU, inside the boot direct map.
        let cpus = unsafe { acpi::madt_cpus(rsdp, HHDM_OFFSET) };
        let bsp = crate::arch::cpu::apic_id();
        for id in cpus.as_slice() {
            boot.cpus.push(Cpu {
                apic_id: *id,
                is_bsp: *id == bsp,
            });
        }
    }
    crate::kernel_main(boot)
}
