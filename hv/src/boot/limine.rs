//! Limine boot protocol adapter (base revision 3).
//!
//! Limine enters `limine_entry` in long mode on its own page tables, GDT and
//! stack, with interrupts off and IDTR = 0. The entry switches to the kernel's
//! boot stack at once and [`limine_main`] copies every response it needs into
//! a [`BootInfo`]: responses live in bootloader-reclaimable memory, which the
//! kernel frees once it runs on its own page tables.

use super::info::{BootInfo, BootProtocol, Cpu, FixedStr, MemoryKind, MemoryRegion, Module};
use limine::memory_map::EntryType;
use limine::request::{
    ExecutableAddressRequest, ExecutableCmdlineRequest, HhdmRequest, MemoryMapRequest,
    ModuleRequest, MpRequest, RequestsEndMarker, RequestsStartMarker, RsdpRequest,
    StackSizeRequest,
};
use limine::BaseRevision;

#[used]
#[unsafe(link_section = ".requests_start_marker")]
static START_MARKER: RequestsStartMarker = RequestsStartMarker::new();

#[used]
#[unsafe(link_section = ".requests")]
static BASE_REVISION: BaseRevision = BaseRevision::with_revision(3);

#[used]
#[unsafe(link_section = ".requests")]
static MEMORY_MAP: MemoryMapRequest = MemoryMapRequest::new();

#[used]
#[unsafe(link_section = ".requests")]
static HHDM: HhdmRequest = HhdmRequest::new();

#[used]
#[unsafe(link_section = ".requests")]
static RSDP: RsdpRequest = RsdpRequest::new();

#[used]
#[unsafe(link_section = ".requests")]
static KERNEL_ADDRESS: ExecutableAddressRequest = ExecutableAddressRequest::new();

#[used]
#[unsafe(link_section = ".requests")]
static CMDLINE: ExecutableCmdlineRequest = ExecutableCmdlineRequest::new();

#[used]
#[unsafe(link_section = ".requests")]
static MODULES: ModuleRequest = ModuleRequest::new();

#[used]
#[unsafe(link_section = ".requests")]
static MP: MpRequest = MpRequest::new();

/// Stacks Limine gives the BSP before the switch, and the APs it parks.
#[used]
#[unsafe(link_section = ".requests")]
static STACK_SIZE: StackSizeRequest = StackSizeRequest::new().with_size(64 * 1024);

#[used]
#[unsafe(link_section = ".requests_end_marker")]
static END_MARKER: RequestsEndMarker = RequestsEndMarker::new();

/// The ELF entry point Limine jumps to: switch to the kernel stack, go to Rust.
#[unsafe(naked)]
#[unsafe(no_mangle)]
extern "C" fn limine_entry() -> ! {
    core::arch::naked_asm!(
        "lea rsp, [rip + BOOT_STACK + {stack_top}]",
        "xor ebp, ebp",
        "call {main}",
        "ud2",
        stack_top = const core::mem::size_of::<super::stack::BootStack>(),
        main = sym limine_main,
    )
}

fn memory_kind(t: EntryType) -> MemoryKind {
    match t {
        EntryType::USABLE => MemoryKind::Usable,
        EntryType::BOOTLOADER_RECLAIMABLE => MemoryKind::BootloaderReclaimable,
        EntryType::EXECUTABLE_AND_MODULES => MemoryKind::KernelAndModules,
        EntryType::ACPI_RECLAIMABLE => MemoryKind::AcpiReclaimable,
        EntryType::ACPI_NVS => MemoryKind::AcpiNvs,
        EntryType::FRAMEBUFFER => MemoryKind::Framebuffer,
        _ => MemoryKind::Reserved,
    }
}

extern "C" fn limine_main() -> ! {
    crate::console::init();
    if !BASE_REVISION.is_supported() {
        crate::fatal(format_args!("Limine does not support base revision 3"));
    }
    let mut boot = BootInfo::new(BootProtocol::Limine);

    let Some(hhdm) = HHDM.get_response() else {
        crate::fatal(format_args!("Limine: no HHDM response"));
    };
    boot.hhdm_offset = hhdm.offset();

    let Some(map) = MEMORY_MAP.get_response() else {
        crate::fatal(format_args!("Limine: no memory map response"));
    };
    for e in map.entries() {
        boot.memory.push(MemoryRegion {
            base: e.base,
            len: e.length,
            kind: memory_kind(e.entry_type),
        });
    }
    boot.sort_memory();

    let Some(addr) = KERNEL_ADDRESS.get_response() else {
        crate::fatal(format_args!("Limine: no executable address response"));
    };
    boot.kernel_phys = addr.physical_base();
    boot.kernel_virt = addr.virtual_base();

    // Base revision 3 reports the RSDP as a physical address.
    boot.rsdp = RSDP.get_response().map(|r| r.address() as u64);

    if let Some(c) = CMDLINE.get_response() {
        boot.cmdline = FixedStr::from_bytes(c.cmdline().to_bytes());
    }

    if let Some(mods) = MODULES.get_response() {
        for m in mods.modules() {
            boot.modules.push(Module {
                phys: m.addr() as u64 - boot.hhdm_offset,
                len: m.size(),
                cmdline: FixedStr::from_bytes(m.string().to_bytes()),
            });
        }
    }

    if let Some(mp) = MP.get_response() {
        for cpu in mp.cpus() {
            boot.cpus.push(Cpu {
                apic_id: cpu.lapic_id,
                is_bsp: cpu.lapic_id == mp.bsp_lapic_id(),
            });
        }
    }
    boot.leave_loader = |cr3| {
        let parked = park_application_processors(cr3);
        log::info!("limine: {parked} application processors parked on kernel tables");
    };
    crate::kernel_main(boot)
}

/// Moves every application processor Limine parked onto kernel code.
///
/// Limine parks APs in bootloader-reclaimable memory, on its page tables.
/// Before that memory is reused they must leave it: each AP loads `cr3` (the
/// kernel's tables), counts itself in `parked` and halts with interrupts off.
/// Returns how many APs were moved. Called once, on the BSP, after the kernel
/// switched to its own page tables.
pub fn park_application_processors(cr3: u64) -> usize {
    let Some(mp) = MP.get_response() else {
        return 0;
    };
    AP_CR3.store(cr3, core::sync::atomic::Ordering::SeqCst);
    let mut started = 0;
    for cpu in mp.cpus().iter().filter(|c| c.lapic_id != mp.bsp_lapic_id()) {
        cpu.goto_address.write(ap_park);
        started += 1;
    }
    while AP_PARKED.load(core::sync::atomic::Ordering::SeqCst) < started {
        core::hint::spin_loop();
    }
    started
}

static AP_CR3: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
static AP_PARKED: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// Where parked APs go: switch to the kernel's tables, check in, halt for good.
/// Touches no stack, so the Limine stack it arrives on may be reclaimed.
#[unsafe(naked)]
unsafe extern "C" fn ap_park(_cpu: &limine::mp::Cpu) -> ! {
    core::arch::naked_asm!(
        "cli",
        "mov rax, [rip + {cr3}]",
        "mov cr3, rax",
        "lock inc qword ptr [rip + {parked}]",
        "2:",
        "hlt",
        "jmp 2b",
        cr3 = sym AP_CR3,
        parked = sym AP_PARKED,
    )
}
