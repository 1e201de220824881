//! Every CPU runs the hypervisor.
//!
//! The boot CPU (index 0) brings up the application processors once the
//! kernel runs on its own page tables and heap ([`start_aps`]): on direct
//! boot it finds them in the ACPI MADT and starts each with INIT and two
//! STARTUP IPIs through a real-mode trampoline ([`trampoline`]); under
//! Limine they come from its MP response (`boot::limine`), already moved
//! out of Limine's memory and waiting for [`release_limine_aps`]. One at a
//! time, each AP then runs [`ap_main`]: its own GDT and TSS (with IST
//! stacks), the shared read-only IDT, its per-CPU block in the GS base
//! ([`percpu`]), its own watchdog timer and SVM with its own host save
//! area; it marks itself online and waits for work in its mailbox
//! ([`mailbox`]) in a HLT loop with interrupts on ([`idle`]).
//!
//! Log lines of an AP carry its CPU (`[INFO ] cpu1: ...`); the boot CPU's
//! lines stay as they were.

pub mod mailbox;
pub mod percpu;
mod trampoline;
pub mod tsc_sync;

use crate::boot::{info::BootProtocol, BootInfo};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
pub use percpu::{this, PerCpu};

/// Set once APs may run: log lines name their CPU from then on.
static STARTED: AtomicBool = AtomicBool::new(false);
/// The boot CPU's CR0 and CR4, which APs copy.
static BSP_CR0: AtomicU64 = AtomicU64::new(0);
static BSP_CR4: AtomicU64 = AtomicU64::new(0);
/// Size of each AP's kernel stack (the boot CPU's is as large).
pub const AP_STACK_SIZE: u64 = crate::boot::stack::STACK_SIZE as u64;
/// How long the boot CPU waits for one AP to come online.
const ONLINE_TIMEOUT_MS: u64 = 2_000;

/// Gives the boot CPU its per-CPU block (index 0). Call right after its GDT
/// is loaded, before anything uses [`this`].
pub fn init_bsp() {
    let Some(cpu) = percpu::assign(crate::arch::cpu::apic_id()) else {
        crate::fatal(format_args!("no per-CPU block for the boot CPU"));
    };
    percpu::install(cpu);
    cpu.stack_top
        .store(crate::boot::stack::stack_top(), Ordering::Relaxed);
    cpu.online.store(true, Ordering::Release);
}

/// The CPU to name in a line: `None` for the boot CPU (and before any AP
/// runs), else this CPU's index.
pub fn log_index() -> Option<usize> {
    if !STARTED.load(Ordering::Relaxed) {
        return None;
    }
    match this().index() {
        0 => None,
        i => Some(i),
    }
}

/// The running CPU's index for fault and panic reports: found by APIC ID,
/// so it does not trust the GS base.
pub fn report_index() -> usize {
    percpu::index_by_apic_id()
}

/// CPUs running the hypervisor (online), the boot CPU included.
pub fn online_count() -> usize {
    percpu::all()
        .iter()
        .filter(|c| c.online.load(Ordering::Acquire))
        .count()
}

/// Starts every application processor the loader reported; returns how many
/// CPUs run the hypervisor afterwards (the boot CPU included). Needs the
/// kernel's page tables (`kernel_cr3`), heap and watchdog.
pub fn start_aps(boot: &BootInfo, kernel_cr3: u64) -> usize {
    // SAFETY: reading control registers has no side effects.
    unsafe {
        let (cr0, cr4): (u64, u64);
        core::arch::asm!("mov {}, cr0", "mov {}, cr4", out(reg) cr0, out(reg) cr4, options(nomem, nostack));
        BSP_CR0.store(cr0, Ordering::Relaxed);
        BSP_CR4.store(cr4, Ordering::Relaxed);
    }
    STARTED.store(true, Ordering::SeqCst);
    match boot.protocol {
        BootProtocol::Pvh => start_with_sipi(boot, kernel_cr3),
        BootProtocol::Limine => release_limine_aps(),
    }
    online_count()
}

/// Maps a kernel stack for an AP (with an unmapped guard page below it) and
/// returns its top.
pub fn alloc_stack() -> Result<u64, &'static str> {
    crate::mem::paging::map_stack(AP_STACK_SIZE / crate::mem::frame::FRAME_SIZE)
}

/// Direct boot: INIT, STARTUP, STARTUP to each AP of the MADT, one at a time.
fn start_with_sipi(boot: &BootInfo, kernel_cr3: u64) {
    let bsp = percpu::this().apic_id.load(Ordering::Relaxed);
    let aps = boot.cpus.as_slice().iter().filter(|c| c.apic_id != bsp);
    // Every stack first: the trampoline copies the kernel's upper-half PML4
    // entries, which the first stack mapping may add to.
    let mut starts = alloc::vec::Vec::new();
    for cpu in aps {
        let Some(block) = percpu::assign(cpu.apic_id) else {
            log::warn!(
                "smp: more than {} CPUs; the rest stay off",
                percpu::MAX_CPUS
            );
            break;
        };
        match alloc_stack() {
            Ok(top) => {
                block.stack_top.store(top, Ordering::Relaxed);
                starts.push((block, top));
            }
            Err(e) => log::warn!("smp: apic id {}: no stack: {e}", cpu.apic_id),
        }
    }
    if starts.is_empty() {
        return;
    }
    let Some(phys) = crate::mem::frame::alloc_low(trampoline::PAGES) else {
        log::warn!("smp: no low memory for the AP trampoline; APs stay off");
        return;
    };
    let tramp = match trampoline::Trampoline::install(phys, kernel_cr3) {
        Ok(t) => t,
        Err(e) => {
            log::warn!("smp: {e}; APs stay off");
            return;
        }
    };
    for (block, top) in starts {
        let id = block.apic_id.load(Ordering::Relaxed);
        tramp.prepare(top, block.index());
        crate::arch::lapic::send_init(id);
        crate::time::pit::wait_us(10_000);
        for _ in 0..2 {
            crate::arch::lapic::send_startup(id, tramp.vector());
            crate::time::pit::wait_us(200);
        }
        if !wait_online(block) {
            log::warn!(
                "smp: cpu{} (apic id {id}) did not come online",
                block.index()
            );
        }
    }
}

/// Waits (bounded) until `cpu` marks itself online.
fn wait_online(cpu: &PerCpu) -> bool {
    for _ in 0..ONLINE_TIMEOUT_MS {
        if cpu.online.load(Ordering::Acquire) {
            return true;
        }
        crate::time::pit::wait_us(1000);
    }
    cpu.online.load(Ordering::Acquire)
}

/// Limine: the APs wait in `boot::limine` (out of Limine's memory, on their
/// own stacks); let them go, one at a time.
fn release_limine_aps() {
    for cpu in percpu::all().iter().skip(1) {
        crate::boot::limine::release_ap(cpu.index());
        if !wait_online(cpu) {
            log::warn!(
                "smp: cpu{} (apic id {}) did not come online",
                cpu.index(),
                cpu.apic_id.load(Ordering::Relaxed)
            );
        }
    }
}

/// An AP's life in the kernel, on its own stack and the kernel's page
/// tables: per-CPU set-up, then [`idle`].
pub extern "C" fn ap_main(index: u64) -> ! {
    let Some(cpu) = percpu::get(index as usize) else {
        crate::fatal(format_args!("AP with unknown index {index}"));
    };
    if let Err(e) = crate::arch::gdt::init_ap() {
        crate::fatal(format_args!("cpu{index}: {e}"));
    }
    percpu::install(cpu);
    crate::arch::idt::load();
    // SAFETY: the boot CPU's CR0/CR4 are valid for every CPU of the machine.
    unsafe {
        core::arch::asm!(
            "mov cr0, {}", "mov cr4, {}",
            in(reg) BSP_CR0.load(Ordering::Relaxed),
            in(reg) BSP_CR4.load(Ordering::Relaxed),
            options(nostack)
        );
    }
    crate::time::start_watchdog_ap();
    let host = crate::vmm::enable::this_cpu();
    match host {
        Ok(h) => log::info!(
            "online (apic id {}), SVM on, host save area {:#x}",
            cpu.apic_id.load(Ordering::Relaxed),
            h.hsave_pa()
        ),
        Err(why) => log::info!(
            "online (apic id {}), no SVM: {why}",
            cpu.apic_id.load(Ordering::Relaxed)
        ),
    }
    cpu.online.store(true, Ordering::Release);
    idle(cpu)
}

/// Waits for work: serve the mailbox, else sleep until an interrupt (the
/// wake IPI or the watchdog tick). STI's one-instruction shadow makes
/// "check, then sleep" race-free: an IPI sent after the check wakes the HLT.
fn idle(cpu: &'static PerCpu) -> ! {
    loop {
        if !cpu.mailbox.serve() {
            // SAFETY: the IDT handles every vector this CPU enables.
            unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
        }
    }
}
