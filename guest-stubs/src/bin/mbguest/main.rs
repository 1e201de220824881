//! The Multiboot test guest: an external kernel, written as a user's kernel
//! would be, with none of this repository's guest runtime or hypercalls. It
//! checks what such a kernel meets on a PC under QEMU (and so under the
//! hypervisor, which must look the same): the Multiboot 1 hand-over (a.out
//! kludge), its own switch to long mode, COM1, fw_cfg, the PIC pair,
//! unassigned ports, the local APIC in xAPIC and x2APIC mode with timer and
//! self-IPI interrupts, and, when the CPU offers SVM, an L2 reading the
//! APIC through MMIO. One line per check on COM1, then `N passed, N failed`,
//! then the exit device: code 0 when all passed, else 1 (QEMU status 1 or 3).
//!
//! Run on bare QEMU:
//! `qemu-system-x86_64 -accel tcg -cpu max,+svm -m 256 -smp 1 -nographic
//! -serial stdio -monitor none -display none
//! -device isa-debug-exit,iobase=0xf4,iosize=4 -kernel mbguest
//! -append "mbguest a b"`.
#![no_std]
#![no_main]

mod apic;
mod boot;
mod cpu;
mod fwcfg;
mod idt;
mod io;
mod multiboot;
mod nested;
mod platform;
mod report;

use apic::{Apic, X2Apic, XApic, IPI_VECTOR, TIMER_VECTOR};
use core::sync::atomic::Ordering;
use cpu::{cr0, cr4, rdmsr, wrmsr, EFER_LMA, EFER_LME, IA32_EFER};

use report::{bail, check, expect_eq, run, Outcome};

/// Zero at entry if the loader cleared BSS (spec 3.1.3: bss_end_addr).
/// Mutable so that it lands in .bss (an immutable zero static is .rodata,
/// bytes of the file); nothing writes it.
static mut BSS_PROBE: [u64; 512] = [0; 512];

/// Called by the 32-bit entry in 64-bit mode, interrupts off.
extern "C" fn mb_main() -> ! {
    let entry = boot::entry_state();
    // Before anything else writes BSS. Volatile: really read from memory.
    let probe = (&raw const BSS_PROBE).cast::<u64>();
    // SAFETY: reads within the static, which nothing writes.
    let bss_dirty = (0..512).find_map(|i| match unsafe { probe.add(i).read_volatile() } {
        0 => None,
        v => Some((i, v)),
    });
    io::serial_init();
    idt::init();
    io::println!("mbguest: Multiboot test guest");

    check("multiboot entry state", || multiboot::check_entry(&entry));
    check("multiboot bss zeroed", || match bss_dirty {
        Some((i, v)) => bail!("BSS word {i} is {v:#x}"),
        None => Ok(()),
    });
    let info = u64::from(entry.ebx);
    check("long mode", check_long_mode);
    check("multiboot memory", || {
        multiboot::check_memory(info, fwcfg::read_u64(fwcfg::RAM_SIZE))
    });
    check("multiboot memory map", || multiboot::check_mmap(info));
    check("multiboot cmdline", || multiboot::check_cmdline(info));
    check("fw_cfg signature", fwcfg::check_signature);
    check("fw_cfg ram size", fwcfg::check_ram_size);
    check("fw_cfg cpu count", fwcfg::check_cpu_count);
    check("fw_cfg key 0x11", fwcfg::check_key_0x11);
    check("com1 lsr", platform::check_com1);
    check("pic masks", platform::check_pic);
    check("unassigned ports", platform::check_unassigned);

    check("apic base", apic::check_base);
    check("xapic registers", || apic::check_registers(&XApic, false));
    check("xapic timer oneshot", || apic::check_timer_oneshot(&XApic));
    check("xapic self ipi", || {
        apic::check_self_ipi(&XApic, || XApic.self_ipi(IPI_VECTOR))
    });
    x2apic_checks();
    run("svm l2 apic mmio", nested::check_l2_apic_mmio);
    check("no stray interrupts", || {
        match idt::strays(&[TIMER_VECTOR, IPI_VECTOR]) {
            Some((v, n)) => bail!("vector {v:#x} came {n} times"),
            None => Ok(()),
        }
    });
    report::finish()
}

/// Our own switch worked: EFER.LME and LMA, paging, PAE.
fn check_long_mode() -> report::Check {
    let efer = rdmsr(IA32_EFER);
    expect_eq!(
        "EFER.LME|LMA",
        efer & (EFER_LME | EFER_LMA),
        EFER_LME | EFER_LMA
    );
    expect_eq!("CR0.PG|PE", cr0() & 0x8000_0001, 0x8000_0001);
    expect_eq!("CR4.PAE", cr4() & 0x20, 0x20);
    Ok(())
}

/// The x2APIC checks, skipped as a group without CPUID.1:ECX[21]: the
/// switch to x2APIC mode, timer and self-IPIs through the MSRs, and back to
/// xAPIC mode the only legal way, through disabled (Intel SDM 11.12.5).
fn x2apic_checks() {
    if !apic::has_x2apic() {
        run("x2apic", || Outcome::Skip("no x2APIC in CPUID.1:ECX[21]"));
        return;
    }
    let xapic_version = XApic.read(apic::VERSION);
    let base = rdmsr(apic::IA32_APIC_BASE);
    let mut switched = false;
    check("x2apic enable", || {
        wrmsr(apic::IA32_APIC_BASE, base | apic::BASE_EXTD);
        let now = rdmsr(apic::IA32_APIC_BASE);
        expect_eq!("IA32_APIC_BASE", now, base | apic::BASE_EXTD);
        switched = true;
        idt::X2APIC.store(true, Ordering::SeqCst);
        apic::check_registers(&X2Apic, true)?;
        expect_eq!("version", X2Apic.read(apic::VERSION), xapic_version);
        Ok(())
    });
    if switched {
        check("x2apic timer oneshot", || {
            apic::check_timer_oneshot(&X2Apic)
        });
        check("x2apic self ipi", || {
            apic::check_self_ipi(&X2Apic, || X2Apic.self_ipi(IPI_VECTOR))
        });
        check("x2apic self ipi register", || {
            apic::check_self_ipi(&X2Apic, || apic::x2apic_self_ipi_register(IPI_VECTOR))
        });
    }
    check("x2apic back to xapic", || {
        wrmsr(
            apic::IA32_APIC_BASE,
            base & !(apic::BASE_EN | apic::BASE_EXTD),
        );
        let off = rdmsr(apic::IA32_APIC_BASE);
        expect_eq!(
            "IA32_APIC_BASE disabled",
            off,
            base & !(apic::BASE_EN | apic::BASE_EXTD)
        );
        wrmsr(apic::IA32_APIC_BASE, base);
        idt::X2APIC.store(false, Ordering::SeqCst);
        apic::check_base()?;
        apic::check_registers(&XApic, false)
    });
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    report::abort(format_args!("panic: {}", info.message()))
}
