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
/// x2APIC asked for: Limine refuses to boot with an MP request when firmware
/// enabled x2APIC for good otherwise, and APIC IDs of 255 and up need it.
static MP: MpRequest = MpRequest::new().with_flags(limine::mp::RequestFlags::X2APIC);

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
    if boot.cpus.as_slice().is_empty() {
        // No MP response: at least the processor running this.
        boot.cpus.push(Cpu {
            apic_id: crate::arch::cpu::apic_id(),
            is_bsp: true,
        });
    }
    boot.leave_loader = |cr3| {
        let moved = move_application_processors(cr3);
        log::info!("limine: {moved} application processors moved to kernel memory");
    };
    crate::kernel_main(boot)
}

/// Moves every application processor Limine parked out of Limine's memory,
/// to wait in the kernel until [`release_ap`] (`smp::start_aps`).
///
/// Limine parks APs in bootloader-reclaimable memory, on its page tables,
/// GDT and stack, with an empty IDT. Before that memory is reused they must
/// leave it. Each AP gets a per-CPU block (its index in `extra`) and a
/// kernel stack of its own; it switches to that stack and at once to the
/// kernel's page tables (the stack is mapped only there, and nothing touches
/// it in between), loads the kernel's GDT and an IDT whose only gate is an
/// NMI handler that returns (an NMI on a waiting AP must not triple-fault
/// the machine), and only then counts itself arrived ([`ap_arrived`], which
/// records that state for the `smp::every_cpu_runs` self-test): from then
/// on it uses no Limine memory. Returns how many arrived (within about a
/// second). Called once, on the BSP, after the kernel switched to its own page tables
/// and loaded its GDT, before loader memory is reclaimed.
pub fn move_application_processors(cr3: u64) -> usize {
    let Some(mp) = MP.get_response() else {
        return 0;
    };
    use core::sync::atomic::Ordering::SeqCst;
    AP_CR3.store(cr3, SeqCst);
    let gdtr = x86_64::instructions::tables::sgdt();
    // SAFETY: written before any AP is released, read only by APs after.
    unsafe {
        AP_GDTR = gdtr;
        AP_IDT[2] = nmi_gate(ap_nmi as *const () as u64);
        AP_IDTR = x86_64::structures::DescriptorTablePointer {
            limit: (core::mem::size_of::<[[u64; 2]; 3]>() - 1) as u16,
            base: x86_64::VirtAddr::new(core::ptr::addr_of!(AP_IDT) as u64),
        };
    }
    let mut started = 0;
    for cpu in mp.cpus().iter().filter(|c| c.lapic_id != mp.bsp_lapic_id()) {
        let Some(block) = crate::smp::percpu::assign(cpu.lapic_id) else {
            log::warn!("limine: more CPUs than per-CPU blocks; the rest stay parked");
            break;
        };
        let top = match crate::smp::alloc_stack() {
            Ok(top) => top,
            Err(e) => crate::fatal(format_args!("limine: AP stack: {e}")),
        };
        block.stack_top.store(top, SeqCst);
        // SAFETY: written before this AP is sent off, read by it only.
        unsafe { AP_STACKS[block.index()] = top };
        cpu.extra.store(block.index() as u64, SeqCst);
        cpu.goto_address.write(ap_park);
        started += 1;
    }
    for _ in 0..1000 {
        if AP_PARKED.load(SeqCst) >= started {
            break;
        }
        crate::time::pit::wait_us(1000);
    }
    let parked = AP_PARKED.load(SeqCst);
    if parked < started {
        // Reclaiming what they still run on would be unsafe.
        crate::fatal(format_args!(
            "only {parked} of {started} APs left Limine's memory"
        ));
    }
    parked
}

/// What an AP's CPU state was when it counted itself arrived (out of
/// Limine's memory): recorded by [`ap_arrived`] for the `smp::every_cpu_runs`
/// self-test, which compares it with [`arrival_expected`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    pub cr3: u64,
    pub gdt_base: u64,
    pub idt_base: u64,
    /// RSP inside [`ap_arrived`], a few bytes below the AP's stack pointer.
    pub rsp: u64,
}

/// The state of the AP of per-CPU index `index` when it arrived; `None`
/// unless Limine started it and it arrived.
pub fn arrival(index: usize) -> Option<Arrival> {
    use core::sync::atomic::Ordering::SeqCst;
    let [cr3, gdt, idt, rsp] = AP_ARRIVALS.get(index)?;
    let cr3 = cr3.load(SeqCst);
    (cr3 != 0).then(|| Arrival {
        cr3,
        gdt_base: gdt.load(SeqCst),
        idt_base: idt.load(SeqCst),
        rsp: rsp.load(SeqCst),
    })
}

/// What every AP must have loaded before it counts itself arrived: the
/// kernel's page tables, the kernel's GDT and the waiting IDT (its `rsp`
/// is 0: each AP's own stack is in its per-CPU block).
pub fn arrival_expected() -> Arrival {
    use core::sync::atomic::Ordering::SeqCst;
    // SAFETY: written once before any AP is sent off, read-only after.
    let (gdt, idt) = unsafe { (AP_GDTR.base.as_u64(), AP_IDTR.base.as_u64()) };
    Arrival {
        cr3: AP_CR3.load(SeqCst),
        gdt_base: gdt,
        idt_base: idt,
        rsp: 0,
    }
}

/// Called by [`ap_park`] once the AP is out of Limine's memory: records
/// its state ([`arrival`]), then counts it arrived. Uses no per-CPU data
/// (the GS base is Limine's) and must not fault (the IDT has an NMI gate
/// only).
extern "C" fn ap_arrived(index: u64) {
    use core::sync::atomic::Ordering::SeqCst;
    let gdtr = x86_64::instructions::tables::sgdt();
    let idtr = x86_64::instructions::tables::sidt();
    let (cr3, rsp): (u64, u64);
    // SAFETY: reads registers.
    unsafe {
        core::arch::asm!("mov {}, cr3", "mov {}, rsp", out(reg) cr3, out(reg) rsp, options(nomem, nostack));
    }
    if let Some(slot) = AP_ARRIVALS.get(index as usize) {
        for (cell, value) in slot
            .iter()
            .zip([cr3, gdtr.base.as_u64(), idtr.base.as_u64(), rsp])
        {
            cell.store(value, SeqCst);
        }
    }
    AP_PARKED.fetch_add(1, SeqCst);
}

/// Lets the AP of per-CPU index `index` go on to `smp::ap_main`.
pub fn release_ap(index: usize) {
    if let Some(flag) = AP_RELEASED.get(index) {
        flag.store(1, core::sync::atomic::Ordering::SeqCst);
    }
}

/// A 64-bit interrupt gate (present, DPL 0, selector 0x08) to `handler`.
fn nmi_gate(handler: u64) -> [u64; 2] {
    let low = (handler & 0xffff) | (0x08 << 16) | (0x8e00 << 32) | ((handler >> 16) & 0xffff) << 48;
    [low, handler >> 32]
}

const MAX_APS: usize = crate::smp::percpu::MAX_CPUS;

static AP_CR3: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
static AP_PARKED: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
/// Each AP's state at arrival (CR3, GDT base, IDT base, RSP), by per-CPU
/// index ([`arrival`]).
static AP_ARRIVALS: [[core::sync::atomic::AtomicU64; 4]; MAX_APS] =
    [const { [const { core::sync::atomic::AtomicU64::new(0) }; 4] }; MAX_APS];
static AP_RELEASED: [core::sync::atomic::AtomicU8; MAX_APS] =
    [const { core::sync::atomic::AtomicU8::new(0) }; MAX_APS];
/// Each AP's kernel stack top, by per-CPU index.
static mut AP_STACKS: [u64; MAX_APS] = [0; MAX_APS];
static mut AP_GDTR: x86_64::structures::DescriptorTablePointer =
    x86_64::structures::DescriptorTablePointer {
        limit: 0,
        base: x86_64::VirtAddr::zero(),
    };
static mut AP_IDTR: x86_64::structures::DescriptorTablePointer =
    x86_64::structures::DescriptorTablePointer {
        limit: 0,
        base: x86_64::VirtAddr::zero(),
    };
static mut AP_IDT: [[u64; 2]; 3] = [[0; 2]; 3];

/// NMI on a waiting AP: nothing to do.
#[unsafe(naked)]
unsafe extern "C" fn ap_nmi() {
    core::arch::naked_asm!("iretq")
}

/// Where Limine sends APs (see [`move_application_processors`]).
#[unsafe(naked)]
unsafe extern "C" fn ap_park(_cpu: &limine::mp::Cpu) -> ! {
    core::arch::naked_asm!(
        "cli",
        // This AP's per-CPU index, from Limine's info block (`extra`).
        "mov r12, [rdi + {extra}]",
        // Own kernel stack, then at once the kernel's tables: the stack is
        // mapped only there, and nothing uses it before the switch.
        "lea rax, [rip + {stacks}]",
        "mov rsp, [rax + r12 * 8]",
        // EFER.NXE: the kernel's tables use the no-execute bit.
        "mov ecx, 0xC0000080",
        "rdmsr",
        "or eax, 1 << 11",
        "wrmsr",
        "mov rax, [rip + {cr3}]",
        "mov cr3, rax",
        "lgdt [rip + {gdtr}]",
        "lea rax, [rip + 3f]",
        "push 0x08",
        "push rax",
        "retfq",
        "3:",
        "mov ax, 0x10",
        "mov ss, ax",
        "mov ds, ax",
        "mov es, ax",
        "lidt [rip + {idtr}]",
        // Off Limine's stack, tables, GDT and IDT: arrived. The stack top
        // is 16-byte aligned (a page boundary), as the call wants.
        "mov rdi, r12",
        "call {arrived}",
        "lea rbx, [rip + {released}]",
        "2:",
        "pause",
        "cmp byte ptr [rbx + r12], 0",
        "je 2b",
        "mov rdi, r12",
        "call {main}",
        "ud2",
        extra = const core::mem::offset_of!(limine::mp::Cpu, extra),
        cr3 = sym AP_CR3,
        gdtr = sym AP_GDTR,
        idtr = sym AP_IDTR,
        arrived = sym ap_arrived,
        stacks = sym AP_STACKS,
        released = sym AP_RELEASED,
        main = sym crate::smp::ap_main,
    )
}
