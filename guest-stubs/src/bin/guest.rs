//! The `guest::*` self-test guest: one binary, the test picked by name from
//! the start parameters. Each function checks what the guest itself can see
//! and ends with a verdict; the hypervisor side checks the rest (exits taken,
//! console lines, stop reasons).
#![no_std]
#![no_main]

#[path = "guest/apic.rs"]
mod apic;
#[path = "guest/smp.rs"]
mod smp;
#[path = "guest/xcr0.rs"]
mod xcr0;

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};
use guest_stubs::cpu::{cpuid, rdmsr, wrmsr};
use guest_stubs::cpu::{read_dr, read_dr6, single_step_nop, write_dr, DR6_BS, DR6_CLEAR};
use guest_stubs::exceptions::{catch, catch_trap, nmis_taken, set_nmi_hook};
use guest_stubs::hypercall::call;
use guest_stubs::verdict::{fail, pass};
use guest_stubs::{check, check_eq, println, unbacked, StartParams};
use svm::guest_abi::{self, HC_ECHO_SUM, HC_EXIT_COUNT, HC_UNKNOWN};
use svm::guest_abi::{
    HC_HOST_TICKS, HC_QUEUE_INTERRUPT, HC_TSC_FREEZE_RESTORE, HC_TSC_MOVE_L1, HC_TSC_SET_MODE,
    HC_TSC_SHIFT_HOST_BACK, HC_WAIT_PIT_US,
};
use svm::guest_abi::{HC_L0_INTERCEPTS, HC_PHYSICAL_NMI, HC_QUEUE_NMI};
use svm::ExitCode;

#[unsafe(no_mangle)]
fn guest_main(params: &'static StartParams) -> ! {
    let Some(name) = params.test_name() else {
        fail(format_args!("unreadable test name"))
    };
    let test: fn(&StartParams) = match name {
        "guest::cpuid" => cpuid_filtered,
        "guest::rdmsr_unknown_gp" => rdmsr_unknown_gp,
        "guest::msr_passthrough" => msr_passthrough,
        "guest::console" => console,
        "guest::hlt" => hlt,
        "guest::vmmcall" => vmmcall,
        "guest::page_fault" => page_fault,
        "guest::triple_fault" => triple_fault,
        "guest::npf_outside_memory" => npf_outside_memory,
        "guest::debug_exit_blocked" => debug_exit_blocked,
        "guest::runaway_stopped" => runaway,
        "guest::l0_intercepts_ac_db_nmi" => l0_intercepts_ac_db_nmi,
        "guest::db_single_step_reinjected" => db_single_step_reinjected,
        "guest::db_data_breakpoint_reinjected" => db_data_breakpoint_reinjected,
        "guest::cve_2015_8104_db_loop" => cve_2015_8104_db_loop,
        "guest::ac_user_mode_reinjected" => ac_user_mode_reinjected,
        "guest::nmi_delivered" => nmi_delivered,
        "guest::nmi_blocked_until_iret" => nmi_blocked_until_iret,
        "guest::physical_nmi_stays_with_l0" => physical_nmi_stays_with_l0,
        "guest::test_hooks_off" => test_hooks_off,
        "guest::exit_limit_from_config" => exit_loop,
        "guest::cpuid_odd_prefixes" => cpuid_odd_prefixes,
        "guest::cr_writes_checked" => cr_writes_checked,
        "guest::leave_long_mode" => leave_long_mode,
        "guest::ltr_checked" => ltr_checked,
        "guest::cr3_write_checked" => cr3_write_checked,
        "guest::fetch_after_remap" => fetch_after_remap,
        "guest::single_step_over_emulated" => single_step_over_emulated,
        "guest::unbacked_page_walk_rsvd" => unbacked_page_walk_rsvd,
        "guest::unbacked_up_to_maxphyaddr" => unbacked_up_to_maxphyaddr,
        "guest::unbacked_read_modify_write" => unbacked_read_modify_write,
        "guest::pc_hole_unbacked" => pc_hole_unbacked,
        "guest::dr0_3_writes_armed" => dr0_3_writes_armed,
        "guest::lapic_mmio_id_version" => apic::mmio_id_version,
        "guest::lapic_timer_one_shot" => apic::timer_one_shot,
        "guest::lapic_timer_periodic" => apic::timer_periodic,
        "guest::lapic_tpr_eoi" => apic::tpr_eoi,
        "guest::lapic_timer_periodic_minimum" => apic::timer_periodic_minimum,
        "guest::x2apic_self_ipi" => apic::x2apic_self_ipi,
        "guest::lapic_mmio_unemulated_ud" => apic::mmio_unemulated_ud,
        "guest::cpu_modes_tour" => cpu_modes_tour,
        "guest::string_io_32bit_paging" => string_io_32bit_paging,
        "guest::efer_writes_checked" => efer_writes_checked,
        "guest::msr_sweep" => msr_sweep,
        "guest::amd_cpuid" => cpuid_amd_cpu,
        "guest::xcr0_starts_at_reset" | "guest::xcr0_starts_at_reset_again" => {
            xcr0::starts_at_reset
        }
        "smp::vcpu_ipi" => smp::vcpu_ipi,
        "smp::init_sipi_restart" => smp::init_sipi_restart,
        "smp::tsc_monotonic_across_vcpus" => smp::tsc_monotonic_across_vcpus,
        "smp::tsc_skew_compensated" => smp::tsc_monotonic_across_vcpus,
        "smp::vcpus_time_sliced" => smp::vcpus_time_sliced,
        "smp::waits_release_vm" => smp::waits_release_vm,
        "smp::tsc_aux_per_cpu" => smp::tsc_aux_per_cpu,
        "smp::logical_ipi" => smp::logical_ipi,
        "smp::cross_modified_store" => smp::cross_modified_store,
        other => fail(format_args!("no guest test named {other}")),
    };
    test(params);
    pass()
}

fn exits(code: u64) -> u64 {
    call(HC_EXIT_COUNT, code, 0, 0)
}

/// CPUID: the hypervisor bit and leaves are there, SVM is hidden.
fn cpuid_filtered(_: &StartParams) {
    check!(
        cpuid(1, 0)[2] & (1 << 31) != 0,
        "CPUID.1:ECX.hypervisor clear"
    );
    let ext = cpuid(0x8000_0001, 0);
    check!(
        ext[2] & (1 << 2) == 0,
        "CPUID.80000001:ECX.SVM visible to the guest"
    );
    check_eq!(cpuid(0x8000_000A, 0), [0; 4], "CPUID leaf 0x8000000A");
    let hv = cpuid(0x4000_0000, 0);
    check!(hv[0] >= 0x4000_0001, "hypervisor max leaf {:#x}", hv[0]);
    let mut sig = [0u8; 12];
    for (i, r) in hv[1..].iter().enumerate() {
        sig[4 * i..4 * i + 4].copy_from_slice(&r.to_le_bytes());
    }
    check_eq!(&sig, b"SVMRustHyper", "hypervisor signature");
}

/// Every index of the three MSRPM ranges: RDMSR, then WRMSR of the value
/// read (kvm-unit-tests' msr_intercept_check from L2). Each is emulated or
/// #GP, a value read is always accepted back, the VM never stops; the
/// value-store MSRs keep what is written and refuse reserved bits.
fn msr_sweep(_: &StartParams) {
    use guest_stubs::msr_sweep::{sweep, try_rdmsr, try_wrmsr, INDICES};
    let before = exits(ExitCode::Msr.to_raw());
    let s = sweep(|_, _, _| {});
    let taken = exits(ExitCode::Msr.to_raw()) - before;
    println!("msr sweep: {} of {INDICES} MSRs readable", s.readable);
    check_eq!(
        (s.write_gps, s.first_write_gp),
        (0, None),
        "write-backs of a value read that raised #GP (count, first)"
    );
    // Every read and write-back exits, except FS/GS/KernelGS base (passed
    // through: 3 reads, 3 writes) and the TSC (not written back).
    check_eq!(
        taken,
        (INDICES as u64 + u64::from(s.readable)) - 1 - 6,
        "MSR exits of the sweep"
    );
    // Emulated, not #GP: the PMU (kvm-unit-tests writes 0 to it at boot
    // with no #GP handler), MTRRs, PAT, DEBUGCTL and LBR, SYSENTER, the
    // SYSCALL MSRs, machine check, HWCR.
    let must_read = [
        0xC001_0000,
        0xC001_0003,
        0xC001_0007,
        0xC001_0200,
        0xC001_020B,
        0xFE,
        0x2FF,
        0x200,
        0x20F,
        0x250,
        0x26F,
        0x277,
        0x1D9,
        0x1DB,
        0x1DE,
        0x174,
        0x176,
        0x179,
        0x401,
        0xC000_0081,
        0xC000_0084,
        0xC001_0015,
    ];
    for msr in must_read {
        check!(try_rdmsr(msr).is_some(), "RDMSR {msr:#x} raised #GP");
    }
    // What is written is read back (counters to their 48 bits).
    let stored: [(u32, u64); 10] = [
        (0xC001_0000, 0x43_0076),
        (0xC001_0004, 0x1234_5678_9ABC),
        (0xC001_0209, 0xFFFF_0000_0000_0001),
        (0x1D9, 0x3),
        (0x2FF, 0xC06),
        (0x202, 0x8000_0006),
        (0x203, 0xF_8000_0800),
        (0x258, 0x0606_0505_0404_0100),
        (0x277, 0x0006_0406_0007_0406),
        (0xC000_0082, 0xFFFF_8000_1234_5000),
    ];
    for (msr, v) in stored {
        check!(try_wrmsr(msr, v), "WRMSR {msr:#x} := {v:#x} raised #GP");
        let want = match msr {
            0xC001_0209 => v & ((1 << 48) - 1),
            _ => v,
        };
        check_eq!(try_rdmsr(msr), Some(want), format_args!("RDMSR {msr:#x}"));
    }
    // Reserved bits, invalid memory types, read-only MSRs: #GP, and the
    // value stays.
    let refused: [(u32, u64); 7] = [
        (0x1D9, 1 << 6),
        (0x2FF, 0x02),
        (0x202, 0x8000_0007),
        (0x277, 0x0006_0406_0007_0402),
        (0xC001_0000, 1 << 40),
        (0xFE, 0x509),
        (0x179, 1),
    ];
    for (msr, v) in refused {
        let was = try_rdmsr(msr);
        check!(!try_wrmsr(msr, v), "WRMSR {msr:#x} := {v:#x} accepted");
        check_eq!(
            try_rdmsr(msr),
            was,
            format_args!("RDMSR {msr:#x} after the refused write")
        );
    }
    // Unknown, Intel-only, not offered (TSC_RATIO): #GP.
    for msr in [0xC001_1FFE, 0xCE, 0x1A0, 0xC000_0104, 0x3A] {
        check!(try_rdmsr(msr).is_none(), "RDMSR {msr:#x} did not raise #GP");
    }
}

/// CPUID shows an AMD CPU: the vendor in leaves 0 and 0x8000_0000, an
/// AMD64 family, the local APIC and initial APIC ID 0, TSC_ADJUST, NX;
/// no SVM for a guest not offered it, the x2APIC only with the APIC MSRs.
fn cpuid_amd_cpu(_: &StartParams) {
    let vendor = |r: [u32; 4]| {
        let mut v = [0u8; 12];
        v[0..4].copy_from_slice(&r[1].to_le_bytes());
        v[4..8].copy_from_slice(&r[3].to_le_bytes());
        v[8..12].copy_from_slice(&r[2].to_le_bytes());
        v
    };
    check_eq!(&vendor(cpuid(0, 0)), b"AuthenticAMD", "leaf 0 vendor");
    check_eq!(
        &vendor(cpuid(0x8000_0000, 0)),
        b"AuthenticAMD",
        "leaf 0x80000000 vendor"
    );
    let [eax, ebx, _, edx] = cpuid(1, 0);
    let family = ((eax >> 8) & 0xF) + ((eax >> 20) & 0xFF);
    check!(family >= 0xF, "family {family:#x} is not an AMD64 family");
    check_eq!(ebx >> 24, 0, "initial APIC ID of vCPU 0");
    check!(edx & (1 << 9) != 0, "CPUID.1:EDX.APIC clear");
    // The x2APIC only if the local APIC's MSRs are emulated.
    if cpuid(1, 0)[2] & (1 << 21) != 0 {
        check!(
            guest_stubs::msr_sweep::try_rdmsr(0x1B).is_some(),
            "x2APIC shown, but RDMSR IA32_APIC_BASE raises #GP"
        );
    }
    check!(cpuid(7, 0)[1] & (1 << 1) != 0, "TSC_ADJUST not shown");
    check!(cpuid(0x8000_0001, 0)[3] & (1 << 20) != 0, "NX not shown");
    check_eq!(
        cpuid(0x8000_0001, 0)[2] & (1 << 2),
        0,
        "SVM shown, not offered"
    );
}

/// RDMSR of an MSR nobody emulates raises #GP(0) in the guest.
fn rdmsr_unknown_gp(_: &StartParams) {
    let fault = catch(2, || {
        // SAFETY: the #GP is expected and skipped (RDMSR is 2 bytes).
        unsafe {
            asm!("rdmsr", in("ecx") 0xc001_dead_u32, out("eax") _, out("edx") _, options(nomem, nostack))
        };
    });
    let Some(f) = fault else {
        fail(format_args!("RDMSR 0xc001dead did not fault"))
    };
    check_eq!(
        (f.vector, f.error_code),
        (13, 0),
        "fault of RDMSR 0xc001dead"
    );
}

/// FS_BASE is passed through: WRMSR takes effect on FS-relative loads,
/// RDMSR reads it back, and neither exits.
fn msr_passthrough(_: &StartParams) {
    static TARGET: u64 = 0x5eed_cafe_f00d_beef;
    const FS_BASE: u32 = 0xc000_0100;
    let before = exits(svm::ExitCode::Msr.to_raw());
    wrmsr(FS_BASE, &raw const TARGET as u64);
    let through_fs: u64;
    // SAFETY: FS points at TARGET, a readable static.
    unsafe { asm!("mov {}, fs:[0]", out(reg) through_fs, options(nostack, readonly)) };
    check_eq!(through_fs, TARGET, "load through FS after WRMSR FS_BASE");
    check_eq!(rdmsr(FS_BASE), &raw const TARGET as u64, "RDMSR FS_BASE");
    check_eq!(
        exits(svm::ExitCode::Msr.to_raw()) - before,
        0,
        "MSR exits for FS_BASE"
    );
}

/// A console line reaches the host console (the hypervisor checks the text).
fn console(_: &StartParams) {
    println!("hello from the guest console");
}

/// HLT exits once and the guest resumes after it.
fn hlt(_: &StartParams) {
    let before = exits(svm::ExitCode::Hlt.to_raw());
    // SAFETY: interrupts are off; HLT only exits to the hypervisor.
    unsafe { asm!("hlt", options(nomem, nostack)) };
    check_eq!(exits(svm::ExitCode::Hlt.to_raw()) - before, 1, "HLT exits");
}

/// Hypercall arguments and result make the round trip.
fn vmmcall(_: &StartParams) {
    check_eq!(
        call(HC_ECHO_SUM, 1, 10, 100),
        321,
        "HC_ECHO_SUM(1, 10, 100)"
    );
    let big = call(HC_ECHO_SUM, u64::MAX, 0x8000_0000_0000_0000, 1);
    check_eq!(
        big,
        guest_abi::echo_sum(u64::MAX, 0x8000_0000_0000_0000, 1),
        "HC_ECHO_SUM wrapping"
    );
    check_eq!(call(0xdead, 0, 0, 0), HC_UNKNOWN, "unknown hypercall");
    // The cost of a plain exit, for `cargo xtask bench`.
    const N: u64 = 100;
    let bracket = guest_stubs::hypercall::host_ticks_bracket();
    let exits_before = call(svm::guest_abi::HC_EXIT_TOTAL, 0, 0, 0);
    let l0_before = call(svm::guest_abi::HC_HOST_TICKS, 0, 0, 0);
    let t0 = guest_stubs::cpu::rdtsc();
    for _ in 0..N {
        call(HC_ECHO_SUM, 1, 2, 3);
    }
    let per = (guest_stubs::cpu::rdtsc() - t0) / N;
    let l0 = (call(svm::guest_abi::HC_HOST_TICKS, 0, 0, 0) - l0_before).saturating_sub(bracket) / N;
    let exits = l0_exits_per(exits_before, N);
    guest_stubs::println!("hypercall round trip (VMMCALL -> L0 -> guest): {per} TSC ticks as the guest measures it, {l0} in L0, {exits} L0 exits");
}

/// L0 exits per operation of a timed loop of `n` since HC_EXIT_TOTAL said
/// `before`: the two HC_HOST_TICKS around the loop and that first
/// HC_EXIT_TOTAL are not the operation's.
fn l0_exits_per(before: u64, n: u64) -> u64 {
    (call(svm::guest_abi::HC_EXIT_TOTAL, 0, 0, 0) - before - 3) / n
}

/// A page fault in the guest's own tables goes to the guest's handler.
fn page_fault(_: &StartParams) {
    let addr = guest_abi::IDENTITY_MAP_SIZE; // first address the start tables leave unmapped
    let fault = catch(3, || {
        // SAFETY: the #PF is expected and skipped (`mov rax, [rcx]` is 3 bytes).
        unsafe { asm!("mov rax, [rcx]", in("rcx") addr, out("rax") _, options(nostack, readonly)) };
    });
    let Some(f) = fault else {
        fail(format_args!("read of unmapped {addr:#x} did not fault"))
    };
    check_eq!(
        (f.vector, f.error_code, f.cr2),
        (14, 0, addr),
        "#PF vector, error code, CR2"
    );
}

/// Triple fault: no usable IDT, then an exception. The hypervisor must stop
/// this guest (SHUTDOWN) and go on with the next test.
fn triple_fault(_: &StartParams) {
    let null_idt = [0u16; 5];
    // SAFETY: deliberately fatal for this guest.
    unsafe { asm!("lidt [{}]", "ud2", in(reg) null_idt.as_ptr(), options(nostack, noreturn)) };
}

/// Memory past guest RAM (below MAXPHYADDR, inside the guest's page
/// tables) behaves as on a PC with nothing there: reads give all-ones,
/// stores are dropped (the guest goes on, string stores finish with their
/// registers moved), and code there is 0xFF bytes (`FF FF`: #UD).
fn npf_outside_memory(params: &StartParams) {
    let a = unbacked::address(params.memory_size);
    let read = |at: u64| {
        // SAFETY: `a` and the pages after it are identity-mapped unbacked
        // memory: it reads all-ones and drops stores (so for all below).
        unsafe { core::ptr::read_volatile(at as *const u64) }
    };
    check_eq!(read(a), u64::MAX, format_args!("read of unbacked {a:#x}"));
    // SAFETY: as above.
    let byte = unsafe { core::ptr::read_volatile((a + 3) as *const u8) };
    check_eq!(
        byte,
        0xFF,
        format_args!("byte read of unbacked {:#x}", a + 3)
    );
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(a as *mut u64, 0x1234_5678) };
    check_eq!(
        read(a),
        u64::MAX,
        format_args!("read of {a:#x} after a store")
    );
    // Two pages of REP STOSQ.
    let (rcx, rdi): (u64, u64);
    // SAFETY: as above.
    unsafe {
        asm!("rep stosq", inout("rcx") 1024u64 => rcx, inout("rdi") a + 0x2000 => rdi,
             in("rax") 0u64, options(nostack))
    };
    check_eq!((rcx, rdi), (0, a + 0x4000), "RCX, RDI after REP STOSQ");
    check_eq!(read(a + 0x3000), u64::MAX, "read after REP STOSQ");
    // REP MOVSB from RAM, across a page boundary.
    static SRC: [u8; 256] = [0x5A; 256];
    let (rcx, rsi, rdi): (u64, u64, u64);
    // SAFETY: as above.
    unsafe {
        asm!("rep movsb", inout("rcx") 256u64 => rcx, inout("rsi") SRC.as_ptr() => rsi,
             inout("rdi") a + 0xF80 => rdi, options(nostack))
    };
    check_eq!(
        (rcx, rsi, rdi),
        (0, SRC.as_ptr() as u64 + 256, a + 0x1080),
        "RCX, RSI, RDI after REP MOVSB"
    );
    check_eq!(read(a + 0xFF8), u64::MAX, "read after REP MOVSB");
    // Downwards (DF=1), across a page boundary.
    let (rcx, rdi): (u64, u64);
    // SAFETY: as above.
    unsafe {
        asm!("std", "rep stosb", "cld", inout("rcx") 0x20u64 => rcx,
             inout("rdi") a + 0x1010 => rdi, in("al") 0u8, options(nostack))
    };
    check_eq!((rcx, rdi), (0, a + 0xFF0), "RCX, RDI after STD; REP STOSB");
    let Some(f) = unbacked::exec_at(a + 0x40) else {
        fail(format_args!(
            "code at unbacked {:#x} ran without a fault",
            a + 0x40
        ))
    };
    check_eq!(f.vector, 6, "vector of the fault running 0xFF bytes");
}

/// A page walk through unbacked memory reads all-ones entries, whose
/// reserved bits give a #PF with P and RSVD (APM 5.3.1, 8.4.2): linear
/// 1 GiB's PD is in unbacked memory; a read, a write and a fetch there.
fn unbacked_page_walk_rsvd(params: &StartParams) {
    let a = unbacked::address(params.memory_size);
    unbacked::set_pdpt(1, a | 3);
    let la = 1u64 << 30;
    let read = catch(3, || {
        // SAFETY: the #PF is expected and skipped (3 bytes).
        unsafe { asm!("mov rax, [rcx]", in("rcx") la, out("rax") _, options(nostack, readonly)) };
    });
    let write = catch(3, || {
        // SAFETY: as above.
        unsafe { asm!("mov [rcx], rax", in("rcx") la + 8, in("rax") 0u64, options(nostack)) };
    });
    let fetch = unbacked::exec_at(la + 0x10);
    unbacked::set_pdpt(1, 0);
    let got =
        |f: Option<guest_stubs::exceptions::Fault>| f.map(|f| (f.vector, f.error_code, f.cr2));
    check_eq!(
        got(read),
        Some((14, 0x9, la)),
        "#PF of a read (vector, error code, CR2)"
    );
    check_eq!(got(write), Some((14, 0xB, la + 8)), "#PF of a write");
    // I/D is set only with EFER.NXE.
    let id = if rdmsr(svm::msr::EFER) & svm::msr::EFER_NXE != 0 {
        0x10
    } else {
        0
    };
    check_eq!(
        got(fetch),
        Some((14, 0x9 | id, la + 0x10)),
        "#PF of a fetch"
    );
}

/// The last unbacked page below MAXPHYADDR reads all-ones and drops
/// stores; the first page at MAXPHYADDR is a reserved-bit #PF from the
/// guest's own walk (the CPU's, no exit).
fn unbacked_up_to_maxphyaddr(_: &StartParams) {
    #[repr(C, align(4096))]
    struct Table([u64; 512]);
    static mut PD: Table = Table([0; 512]);
    let bits = cpuid(0x8000_0008, 0)[0] & 0xFF;
    let top = 1u64 << bits;
    const PRESENT_RW_2M: u64 = 0x83;
    // SAFETY: a static of this guest, identity-mapped (GPA = address).
    unsafe {
        let pd = &raw mut PD;
        (*pd).0[0] = (top - (2 << 20)) | PRESENT_RW_2M;
        (*pd).0[1] = top | PRESENT_RW_2M;
    }
    unbacked::set_pdpt(2, &raw const PD as u64 | 3);
    let la = 2u64 << 30;
    let last = la + (2 << 20) - 8;
    // SAFETY: mapped to the last 8 bytes below MAXPHYADDR.
    let before = unsafe { core::ptr::read_volatile(last as *const u64) };
    // SAFETY: as above; the store is dropped.
    unsafe { core::ptr::write_volatile(last as *mut u64, 0) };
    // SAFETY: as above.
    let after = unsafe { core::ptr::read_volatile(last as *const u64) };
    let beyond = catch(3, || {
        // SAFETY: the #PF is expected and skipped (3 bytes).
        unsafe {
            asm!("mov rax, [rcx]", in("rcx") la + (2 << 20), out("rax") _, options(nostack, readonly))
        };
    });
    unbacked::set_pdpt(2, 0);
    check_eq!(
        (before, after),
        (u64::MAX, u64::MAX),
        format_args!(
            "reads of GPA {:#x} (MAXPHYADDR {bits}) before and after a store",
            top - 8
        )
    );
    // Hardware reports P|RSVD (0x9); QEMU TCG's own walk reports RSVD
    // without P (0x8, docs/qemu-tcg.md): P is not checked here.
    check_eq!(
        beyond.map(|f| (f.vector, f.error_code & !1, f.cr2)),
        Some((14, 0x8, la + (2 << 20))),
        format_args!("#PF reading GPA {top:#x} (vector, error code without P, CR2)")
    );
}

/// A VM with the PC hole (a Multiboot guest's layout, here on this stub):
/// the VGA window `[0xA0000, 0xC0000)` reads all-ones and drops stores, as
/// on a PC with nothing there; the RAM on either side keeps them. The
/// first 2 MiB are identity-mapped.
fn pc_hole_unbacked(_: &StartParams) {
    let at = [0x9_FFF8u64, 0xA_0000, 0xB_FFF8, 0xC_0000];
    for (i, &a) in at.iter().enumerate() {
        // SAFETY: identity-mapped: RAM the stub does not use, or the hole.
        unsafe { core::ptr::write_volatile(a as *mut u64, 0x1111 * (i as u64 + 1)) };
    }
    // SAFETY: as above.
    let got = at.map(|a| unsafe { core::ptr::read_volatile(a as *const u64) });
    check_eq!(
        got,
        [0x1111, u64::MAX, u64::MAX, 0x4444],
        "reads of 0x9fff8, 0xa0000, 0xbfff8, 0xc0000 after a store to each"
    );
    // An RMW's load from the hole is all-ones (L0 completes XADD at its
    // store's fault).
    let mut old = 1u64;
    // SAFETY: the hole (stores dropped).
    unsafe {
        core::arch::asm!("xadd qword ptr [{a}], {v}", a = in(reg) 0xA_0008u64, v = inout(reg) old, options(nostack));
    }
    check_eq!(old, u64::MAX, "XADD's load from 0xa0008");
}

/// Read-modify-writes of unbacked memory (the fuzzer's `00 00`, ADD
/// [RAX], AL, is one) complete with the flags of an all-ones operand,
/// the store dropped (shifts too); XCHG, XADD and a failed CMPXCHG load
/// all-ones, BTS sets CF; pushes and calls onto a stack
/// there move RSP.
fn unbacked_read_modify_write(params: &StartParams) {
    let a = unbacked::address(params.memory_size);
    const ARITH: u64 = 0x8D5;
    let flags = |f: u64| f & ARITH;
    let (add, inc, neg, and): (u64, u64, u64, u64);
    // SAFETY: `a` is identity-mapped unbacked memory: it reads all-ones and
    // drops stores. STC before INC: INC keeps CF.
    unsafe {
        asm!("add qword ptr [{a}], 1", "pushfq", "pop {f}", a = in(reg) a, f = out(reg) add);
        asm!("stc", "lock inc dword ptr [{a}]", "pushfq", "pop {f}", a = in(reg) a, f = out(reg) inc);
        asm!("neg byte ptr [{a}]", "pushfq", "pop {f}", a = in(reg) a, f = out(reg) neg);
        asm!("and word ptr [{a}], 0x7fff", "pushfq", "pop {f}", a = in(reg) a, f = out(reg) and);
    }
    let (shl, ror): (u64, u64);
    // SAFETY: as above.
    unsafe {
        asm!("shl dword ptr [{a}], 1", "pushfq", "pop {f}", a = in(reg) a, f = out(reg) shl);
        asm!("clc", "ror byte ptr [{a}], cl", "pushfq", "pop {f}", a = in(reg) a, in("cl") 3u8, f = out(reg) ror);
    }
    // 0xffffffff << 1 = 0xfffffffe: CF, SF (PF: 0xfe has 7 bits set: odd).
    check_eq!(
        flags(shl) & !0x10,
        0x81,
        "flags of SHL dword [unbacked], 1 (AF undefined)"
    );
    // ROR 0xff by 3: CF = MSB = 1, OF undefined; SF/ZF/PF unchanged.
    check_eq!(ror & 1, 1, "CF of CLC; ROR byte [unbacked], CL=3");
    // -1 + 1 = 0: CF, PF, AF, ZF.
    check_eq!(flags(add), 0x55, "flags of ADD qword [unbacked], 1");
    // 0xffffffff + 1 = 0 (CF kept from STC): CF, PF, AF, ZF.
    check_eq!(flags(inc), 0x55, "flags of STC; LOCK INC dword [unbacked]");
    // -(0xff) = 1: CF, AF.
    check_eq!(flags(neg), 0x11, "flags of NEG byte [unbacked]");
    // 0xffff & 0x7fff = 0x7fff: PF (0xff: even).
    check_eq!(flags(and), 0x04, "flags of AND word [unbacked], 0x7fff");
    let mut r9 = 5u64;
    let mut ah = 0x1234u64;
    // SAFETY: as above.
    unsafe {
        asm!("xchg qword ptr [{a}], r9", a = in(reg) a, inout("r9") r9, options(nostack));
        // AH cannot be encoded with a REX prefix: the address in RDX.
        asm!("xchg byte ptr [rdx], ah", in("rdx") a, inout("rax") ah, options(nostack));
    }
    check_eq!(r9, u64::MAX, "R9 after XCHG with unbacked memory");
    check_eq!(ah, 0xFF34, "RAX after XCHG AH with unbacked memory");
    let (mut r10, mut rax, mut rax2, cmpxchg, bts): (u64, u64, u64, u64, u64);
    r10 = 1;
    // SAFETY: as above.
    unsafe {
        asm!("lock xadd dword ptr [{a}], r10d", a = in(reg) a, inout("r10") r10, options(nostack));
        asm!("lock cmpxchg qword ptr [{a}], r10", "pushfq", "pop {f}", a = in(reg) a,
             in("r10") 0u64, inout("rax") 7u64 => rax, f = out(reg) cmpxchg);
        asm!("cmpxchg word ptr [{a}], r10w", a = in(reg) a, in("r10") 0u64,
             inout("rax") 0x5555_FFFFu64 => rax2, options(nostack));
        asm!("clc", "bts qword ptr [{a}], 5", "pushfq", "pop {f}", a = in(reg) a, f = out(reg) bts);
    }
    check_eq!(r10, 0xFFFF_FFFF, "R10 after XADD with unbacked memory");
    check_eq!(
        rax,
        u64::MAX,
        "RAX after a failed CMPXCHG with unbacked memory"
    );
    check_eq!(cmpxchg & 0x40, 0, "ZF of a failed CMPXCHG");
    check_eq!(
        rax2,
        0x5555_FFFF,
        "RAX after a CMPXCHG that matched (AX = 0xFFFF)"
    );
    check_eq!(bts & 1, 1, "CF of BTS on unbacked memory");
    // A stack in unbacked memory: pushes and a call go nowhere, RSP moves.
    let (rsp, pushed): (u64, u64);
    // SAFETY: as above; interrupts are off and no fault is raised between
    // the two RSP moves, so nothing else uses this stack.
    unsafe {
        asm!(
            "mov {old}, rsp",
            "mov rsp, {a}",
            "push 0x1234",
            "pushfq",
            "push {old}",
            "call 2f",
            "2:",
            "pop {pushed}",
            "mov {a}, rsp",
            "mov rsp, {old}",
            old = out(reg) _,
            a = inout(reg) a + 0x100 => rsp,
            pushed = out(reg) pushed,
        );
    }
    check_eq!(
        rsp,
        a + 0x100 - 24,
        "RSP after three pushes, a CALL and a POP"
    );
    check_eq!(
        pushed,
        u64::MAX,
        "the return address popped from unbacked memory"
    );
    // A dropped store is an instruction L0 completes: a single step over it
    // traps right after it, raised by L0 (the host side checks that no #DB
    // exit happened).
    write_dr(6, DR6_CLEAR);
    let stepped = catch_trap(|| {
        // SAFETY: as above; POPFQ sets TF, the trap follows the store and
        // the #DB handler clears TF.
        unsafe {
            asm!("pushfq", "or qword ptr [rsp], 0x100", "popfq", "mov qword ptr [{a}], 0", a = in(reg) a)
        };
    });
    check!(
        matches!(stepped, Some(f) if f.vector == 1 && f.dr6 & DR6_BS != 0),
        "single step over a dropped store: {stepped:?}"
    );
    // SAFETY: as above.
    let v = unsafe { core::ptr::read_volatile(a as *const u64) };
    check_eq!(v, u64::MAX, "unbacked memory after the stores");
}

/// A guest that never exits: only the hypervisor's watchdog can stop it.
fn runaway(_: &StartParams) {
    loop {
        core::hint::spin_loop();
    }
}

/// Writes to QEMU's isa-debug-exit port must not end the machine.
fn debug_exit_blocked(_: &StartParams) {
    // SAFETY: port output; the hypervisor must drop it. 0x11 would end QEMU
    // with a failure status if it got through.
    unsafe { asm!("out dx, eax", in("dx") 0xf4u16, in("eax") 0x11u32, options(nomem, nostack)) };
    println!("still running after writing the debug-exit port");
}

/// L0 intercepts #AC, #DB and #MC and physical NMIs in this guest (QEMU
/// TCG never raises #AC, so the #AC intercept can only be seen here).
fn l0_intercepts_ac_db_nmi(_: &StartParams) {
    let v = call(HC_L0_INTERCEPTS, 0, 0, 0);
    let (exceptions, misc1) = (v as u32, (v >> 32) as u32);
    check!(
        exceptions & (1 << 17) != 0,
        "#AC not intercepted: {exceptions:#x}"
    );
    check!(
        exceptions & (1 << 1) != 0,
        "#DB not intercepted: {exceptions:#x}"
    );
    check!(
        exceptions & (1 << 18) != 0,
        "#MC not intercepted: {exceptions:#x}"
    );
    check!(
        misc1 & svm::InterceptMisc1::NMI.bits() != 0,
        "NMI not intercepted: {misc1:#x}"
    );
}

/// A single-step #DB exits to L0 and comes back to this guest's handler
/// with DR6.BS set (as the CPU wrote it before the intercept).
fn db_single_step_reinjected(_: &StartParams) {
    let before = exits(ExitCode::Exception(1).to_raw());
    write_dr(6, DR6_CLEAR);
    let got = catch_trap(single_step_nop);
    let Some(f) = got else {
        fail(format_args!("single step raised no #DB"))
    };
    check_eq!(f.vector, 1, "vector");
    check!(
        f.dr6 & DR6_BS != 0,
        "DR6.BS clear in the handler: {:#x}",
        f.dr6
    );
    check!(
        exits(ExitCode::Exception(1).to_raw()) - before >= 1,
        "L0 saw no #DB exit"
    );
}

/// A data breakpoint (DR0, write, 4 bytes) exits to L0 and reaches this
/// guest's handler with DR6.B0 set.
fn db_data_breakpoint_reinjected(_: &StartParams) {
    static TARGET: AtomicU64 = AtomicU64::new(0);
    let before = exits(ExitCode::Exception(1).to_raw());
    write_dr(6, DR6_CLEAR);
    write_dr(0, &raw const TARGET as u64);
    // L0 enable, RW0 = 01 (writes), LEN0 = 11 (4 bytes).
    write_dr(7, 0x400 | 1 | (0b01 << 16) | (0b11 << 18));
    let got = catch_trap(|| TARGET.store(1, Ordering::SeqCst));
    write_dr(7, 0x400);
    let Some(f) = got else {
        fail(format_args!("the write to DR0's address raised no #DB"))
    };
    check_eq!(f.vector, 1, "vector");
    check!(f.dr6 & 1 != 0, "DR6.B0 clear in the handler: {:#x}", f.dr6);
    check!(
        exits(ExitCode::Exception(1).to_raw()) - before >= 1,
        "L0 saw no #DB exit"
    );
    check_eq!(read_dr6() & 1, 1, "DR6.B0 after the handler");
}

/// CVE-2015-8104: a data breakpoint on the stack slots a #DB delivery
/// pushes to, then a #DB. Each delivery raises another #DB (benign on
/// benign: no #DF), forever. With L0's #DB intercept every attempt exits,
/// so L0 stops the guest at its budget; the host stays alive.
fn cve_2015_8104_db_loop(_: &StartParams) {
    write_dr(6, DR6_CLEAR);
    // SAFETY: deliberately fatal for this guest. RSP is made 8 mod 16 at
    // the NOP (R), so the #DB frame starts at R - 8 aligned down, R - 16
    // (SS first), away from PUSHFQ's R - 8: DR0 covers that quadword
    // (RW0 = 11 reads/writes, LEN0 = 10 8 bytes). RSP is restored after.
    unsafe {
        core::arch::asm!(
            "mov r11, rsp",
            "and rsp, -16",
            "sub rsp, 8",
            "lea rax, [rsp - 16]",
            "mov dr0, rax",
            "mov rax, {dr7}",
            "mov dr7, rax",
            "pushfq",
            "or qword ptr [rsp], 0x100",
            "popfq",
            "nop",
            "mov rsp, r11",
            dr7 = const 0x400u64 | 1 | (0b11 << 16) | (0b10 << 18),
            out("rax") _,
            out("r11") _,
        )
    };
    write_dr(7, 0x400);
    fail(format_args!(
        "the #DB was delivered: its stack pushes did not hit the data breakpoint"
    ));
}

/// An NMI L0 queues reaches this guest's handler at the next entry.
fn nmi_delivered(_: &StartParams) {
    let before = nmis_taken();
    check_eq!(call(HC_QUEUE_NMI, 0, 0, 0), 0, "queue hypercall");
    check_eq!(nmis_taken() - before, 1, "NMIs taken after the hypercall");
}

static NMIS_IN_HANDLER: AtomicU64 = AtomicU64::new(0);

/// In the first NMI's handler: queue a second one and exit to L0 a few
/// times; L0 must hold it until this handler's IRET.
fn queue_second_nmi() {
    if nmis_taken() != 1 {
        return;
    }
    call(HC_QUEUE_NMI, 0, 0, 0);
    for _ in 0..3 {
        call(HC_ECHO_SUM, 0, 0, 0);
    }
    NMIS_IN_HANDLER.store(nmis_taken(), Ordering::SeqCst);
}

/// NMIs are blocked from an injected NMI to the IRET of its handler (L0
/// intercepts IRET meanwhile); the held NMI comes after.
fn nmi_blocked_until_iret(_: &StartParams) {
    set_nmi_hook(Some(queue_second_nmi));
    call(HC_QUEUE_NMI, 0, 0, 0);
    check_eq!(
        NMIS_IN_HANDLER.load(Ordering::SeqCst),
        1,
        "NMIs taken when the first handler ended"
    );
    // The handler has returned; the next exit lets the second NMI in.
    call(HC_ECHO_SUM, 0, 0, 0);
    set_nmi_hook(None);
    check_eq!(nmis_taken(), 2, "NMIs taken after the IRET");
    check!(
        exits(ExitCode::Iret.to_raw()) >= 1,
        "no IRET exit (L0 must watch for the end of the handler)"
    );
}

/// A physical NMI that arrives while the guest runs is L0's: the guest's
/// handler never sees it, L0 took an NMI exit.
fn physical_nmi_stays_with_l0(_: &StartParams) {
    let before = exits(ExitCode::Nmi.to_raw());
    check_eq!(call(HC_PHYSICAL_NMI, 0, 0, 0), 0, "hypercall");
    for _ in 0..1000 {
        core::hint::spin_loop();
    }
    call(HC_ECHO_SUM, 0, 0, 0);
    check_eq!(nmis_taken(), 0, "NMIs in the guest");
    check!(
        exits(ExitCode::Nmi.to_raw()) - before >= 1,
        "L0 took no NMI exit"
    );
}

core::arch::global_asm!(
    r#"
    .section .text.user, "ax"
    .global user_misaligned_load
user_misaligned_load:
    mov rax, [rsp + 1]
    ud2
    "#
);

unsafe extern "C" {
    fn user_misaligned_load();
}

/// #AC: CR0.AM and RFLAGS.AC set, a misaligned load at CPL 3. L0
/// intercepts #AC and re-injects it: this guest's handler gets vector 17,
/// error code 0, and L0 counted the exit (0x51).
fn ac_user_mode_reinjected(_: &StartParams) {
    const CR0_AM: u64 = 1 << 18;
    const RFLAGS_AC: u64 = 1 << 18;
    guest_stubs::user::init();
    let before = exits(ExitCode::Exception(17).to_raw());
    // SAFETY: CR0.AM only enables alignment checks at CPL 3.
    unsafe {
        asm!("mov rax, cr0", "or rax, {am}", "mov cr0, rax", am = const CR0_AM, out("rax") _, options(nomem, nostack))
    };
    let got = guest_stubs::exceptions::run_user(
        user_misaligned_load as *const () as u64,
        guest_stubs::user::user_stack_top() - 64,
        0x2 | RFLAGS_AC,
    );
    let Some(f) = got else {
        fail(format_args!("CPL 3 code returned without a fault"))
    };
    check!(
        (f.vector, f.error_code) == (17, 0),
        "misaligned CPL 3 load with AC: vector {} error code {:#x}, not #AC(0)",
        f.vector,
        f.error_code
    );
    check!(
        exits(ExitCode::Exception(17).to_raw()) - before >= 1,
        "L0 saw no #AC exit"
    );
}

/// In a VM that is not a test, the test hooks do not exist: each answers
/// HC_UNKNOWN (and does nothing), the ordinary hypercalls still work.
fn test_hooks_off(_: &StartParams) {
    let hooks = [
        (HC_EXIT_COUNT, 0x81),
        (HC_TSC_SET_MODE, 1),
        (HC_TSC_SHIFT_HOST_BACK, 1 << 40),
        (HC_TSC_FREEZE_RESTORE, 0),
        (HC_WAIT_PIT_US, 1_000_000),
        (HC_TSC_MOVE_L1, 1 << 40),
        (HC_QUEUE_INTERRUPT, 0x40),
        (HC_HOST_TICKS, 0),
        (svm::guest_abi::HC_INTERCEPT_ONCE, 3),
        (HC_QUEUE_NMI, 0),
        (HC_PHYSICAL_NMI, 0),
        (HC_L0_INTERCEPTS, 0),
        (svm::guest_abi::HC_NOW_NS, 0),
        (svm::guest_abi::HC_EXIT_TOTAL, 0),
    ];
    for (nr, arg) in hooks {
        check_eq!(
            call(nr, arg, 100, 0),
            HC_UNKNOWN,
            format_args!("test hook {nr}")
        );
    }
    check_eq!(
        call(HC_ECHO_SUM, 1, 2, 3),
        guest_abi::echo_sum(1, 2, 3),
        "HC_ECHO_SUM"
    );
}

/// Exits forever (a hypercall each time): only an exit limit ends it.
fn exit_loop(_: &StartParams) {
    loop {
        call(HC_ECHO_SUM, 1, 2, 3);
    }
}

/// CPUID with prefix orders the CPU accepts (a REX before a legacy prefix
/// is ignored): L0 must emulate each and step over all of its bytes.
fn cpuid_odd_prefixes(_: &StartParams) {
    use guest_stubs::privileged::{cpuid_odd, ODD_CPUID};
    let want = cpuid(0x4000_0000, 0);
    for (form, bytes) in ODD_CPUID.iter().enumerate() {
        check_eq!(
            cpuid_odd(form, 0x4000_0000),
            want,
            format_args!("CPUID encoded {bytes:02x?}")
        );
    }
}

/// Runs `f`, whose instruction is `len` bytes, and checks it raised
/// #GP(`code`) (and was skipped).
fn expect_gp(what: &str, len: u64, code: u64, f: impl FnOnce()) {
    match catch(len, f) {
        Some(fault) => check_eq!((fault.vector, fault.error_code), (13, code), what),
        None => fail(format_args!("{what}: no #GP")),
    }
}

/// CR0/CR4/CR8 writes get the CPU's checks (ISSUE 8 C1): what the CPU
/// refuses raises #GP and changes nothing, the rest takes effect.
fn cr_writes_checked(_: &StartParams) {
    use guest_stubs::privileged::*;
    let (cr0, cr4) = (read_cr(0), read_cr(4));
    let (pe, ts, mp, nw, cd, pg) = (
        1u64,
        1u64 << 3,
        1u64 << 1,
        1u64 << 29,
        1u64 << 30,
        1u64 << 31,
    );
    expect_gp("mov cr0, 0 in 64-bit mode", 3, 0, || write_cr0(0));
    expect_gp("CR0.PG cleared in 64-bit mode", 3, 0, || {
        write_cr0(cr0 & !pg)
    });
    expect_gp("CR0.PG without PE", 3, 0, || write_cr0(cr0 & !pe));
    expect_gp("CR0.NW without CD", 3, 0, || write_cr0(cr0 | nw));
    expect_gp("CR0 bit 32", 3, 0, || write_cr0(cr0 | 1 << 32));
    expect_gp("CR4.PAE cleared in long mode", 3, 0, || {
        write_cr4(cr4 & !(1 << 5))
    });
    expect_gp("CR4 reserved bit 15", 3, 0, || write_cr4(cr4 | 1 << 15));
    expect_gp("CR4 bit 40", 3, 0, || write_cr4(cr4 | 1 << 40));
    check_eq!(
        (read_cr(0), read_cr(4)),
        (cr0, cr4),
        "CR0/CR4 after refused writes"
    );
    // What the CPU takes.
    lmsw((cr0 as u16) | ts as u16);
    check_eq!(read_cr(0), cr0 | ts, "CR0 after LMSW setting TS");
    clts();
    check_eq!(read_cr(0), cr0 & !ts, "CR0 after CLTS");
    lmsw(0);
    check_eq!(read_cr(0), cr0 & !(ts | mp | 0b100), "LMSW 0 (PE stays)");
    let word = (cr0 as u16) | mp as u16;
    lmsw_mem(&word);
    check_eq!(read_cr(0), cr0 | mp, "CR0 after LMSW from memory");
    write_cr0(cr0 | cd);
    check_eq!(read_cr(0), cr0 | cd, "CR0 with CD");
    write_cr0(cr0);
    if cpuid(1, 0)[3] & (1 << 13) != 0 {
        write_cr4(cr4 | 1 << 7);
        check_eq!(read_cr(4), cr4 | 1 << 7, "CR4 with PGE");
        write_cr4(cr4);
    }
    write_cr8(5);
    check_eq!(read_cr8(), 5, "CR8 after mov cr8, 5");
    expect_gp("CR8 bit 4", 4, 0, || write_cr8(16));
    write_cr8_r9(0);
    check_eq!(read_cr8(), 0, "CR8 after mov cr8, r9");
}

/// A guest leaving long mode through compatibility mode reaches CR0.PG=0,
/// CR4.PAE=0, EFER.LME=1 legally; exits in that state must not take the
/// machine down (ISSUE 8 C1), and the guest sees its own EFER.
fn leave_long_mode(_: &StartParams) {
    use guest_stubs::privileged::{load_test_gdt, visit_legacy_mode};
    use svm::msr::{EFER, EFER_LMA, EFER_LME};
    load_test_gdt();
    let (leaf0, efer) = visit_legacy_mode();
    check_eq!(leaf0, cpuid(0, 0)[0], "CPUID.0 EAX without paging");
    check_eq!(
        u64::from(efer) & (EFER_LME | EFER_LMA),
        EFER_LME,
        "EFER.LME/LMA without paging"
    );
    check_eq!(
        rdmsr(EFER) & (EFER_LME | EFER_LMA),
        EFER_LME | EFER_LMA,
        "EFER back in long mode"
    );
}

/// The guest visits every CPU mode and comes back (issue 10 item 3): L0
/// emulates CPUID at each stop, fetching through the mode's paging (none,
/// 32-bit with 4 MiB and 4 KiB pages, PAE) and decoding with its code size
/// (16-bit protected mode and real mode at EIP > 0xFFFF, with LMSW from
/// memory); EFER.LME changes with paging off, LMA follows CR0.PG.
fn cpu_modes_tour(_: &StartParams) {
    use guest_stubs::modes::{tour, STOPS};
    use svm::msr::{EFER, EFER_LMA, EFER_LME};
    let vendor = cpuid(0, 0)[1];
    let seen = tour();
    for (stop, ebx) in STOPS.iter().zip(seen.cpuid) {
        check_eq!(ebx, vendor, format_args!("CPUID.0 EBX in {stop}"));
    }
    let (lme, lma) = (EFER_LME as u32, EFER_LMA as u32);
    check_eq!(
        seen.efer_lme_no_paging & (lme | lma),
        lme,
        "EFER with paging off (LMA clear, LME kept)"
    );
    check_eq!(
        seen.efer_cleared & (lme | lma),
        0,
        "EFER after clearing LME"
    );
    check_eq!(
        seen.efer_legacy_paging & (lme | lma),
        0,
        "EFER in 32-bit paging"
    );
    check_eq!(
        seen.efer_back & (lme | lma),
        lme | lma,
        "EFER after paging on with LME (LMA derived)"
    );
    check_eq!(
        rdmsr(EFER) & (EFER_LME | EFER_LMA),
        EFER_LME | EFER_LMA,
        "EFER back in 64-bit mode"
    );
    check_eq!(
        (seen.cr0_lmsw_pm16 & 0xf, seen.cr0_lmsw_real & 0xf),
        (0xb, 0x2),
        "CR0[3:0] after LMSW in 16-bit protected mode, in real mode"
    );
    check_eq!(
        guest_stubs::privileged::read_cr(0) & 0xf,
        0x3,
        "CR0 PE|MP after the tour"
    );
}

/// The line `string_io_32bit_paging` sends with `STD; REP OUTSB`.
const OUTSB_LINE: &[u8] = b"string io: rep outsb down in 32-bit paging\n";

/// REP INSB and REP OUTSB in 32-bit protected mode with 32-bit paging
/// (issue 10): L0 moves every element through the guest's 4 KiB pages
/// (the INSB buffer crosses a page), ES:EDI up, DS:ESI down with DF set,
/// ECX counted to 0, as the CPU does. INSB reads COM1's LSR (0x60, "ready"
/// on the self-test console); OUTSB sends a line to port 0xE9 from its
/// last byte down, so the text is stored reversed.
fn string_io_32bit_paging(_: &StartParams) {
    #[repr(C, align(4096))]
    struct Pages([u8; 8192]);
    static mut PAGES: Pages = Pages([0; 8192]);
    static mut TEXT: [u8; 64] = [0; 64];
    let n = OUTSB_LINE.len();
    // SAFETY: single vCPU; these statics are this test's alone.
    let (buf, text) = unsafe {
        let text = &mut *core::ptr::addr_of_mut!(TEXT);
        for (i, b) in OUTSB_LINE.iter().rev().enumerate() {
            text[i] = *b;
        }
        let pages = &mut (*core::ptr::addr_of_mut!(PAGES)).0;
        (&mut pages[4096 - 20..4096 - 20 + n], &text[..n])
    };
    let start = buf.as_ptr() as u32;
    let seen = guest_stubs::modes::string_io_32(buf, text, 0x3fd, 0xe9);
    check!(buf.iter().all(|&b| b == 0x60), "INSB bytes {buf:x?}");
    check_eq!(
        (seen.ins_edi, seen.ins_ecx),
        (start + n as u32, 0),
        "EDI, ECX after REP INSB"
    );
    check_eq!(
        (seen.outs_esi, seen.outs_ecx),
        (text.as_ptr() as u32 - 1, 0),
        "ESI, ECX after STD; REP OUTSB"
    );
}

/// WRMSR EFER gets the CPU's checks (APM 3.1.7, 14.6.1): reserved bits and
/// a change of LME with paging on are #GP(0) and change nothing; LMA is
/// read-only (a write to it is ignored); SCE changes.
fn efer_writes_checked(_: &StartParams) {
    use svm::msr::{EFER, EFER_LMA, EFER_LME, EFER_SCE};
    let efer = rdmsr(EFER);
    check_eq!(
        efer & (EFER_LME | EFER_LMA),
        EFER_LME | EFER_LMA,
        "EFER in long mode"
    );
    expect_gp("EFER reserved bit 1", 2, 0, || wrmsr(EFER, efer | 1 << 1));
    expect_gp("EFER reserved bit 63", 2, 0, || wrmsr(EFER, efer | 1 << 63));
    expect_gp("EFER.LME cleared with paging on", 2, 0, || {
        wrmsr(EFER, efer & !EFER_LME)
    });
    check_eq!(rdmsr(EFER), efer, "EFER after refused writes");
    wrmsr(EFER, efer & !EFER_LMA);
    check_eq!(rdmsr(EFER), efer, "EFER after a write clearing LMA");
    wrmsr(EFER, efer ^ EFER_SCE);
    check_eq!(rdmsr(EFER), efer ^ EFER_SCE, "EFER after toggling SCE");
    wrmsr(EFER, efer);
}

/// LTR raises the CPU's faults (a null selector is #GP(0), not an empty
/// TR) and loads an available TSS, marking it busy (ISSUE 8 C2).
fn ltr_checked(_: &StartParams) {
    use guest_stubs::privileged::{descriptor, load_test_gdt, ltr, str_selector, TSS_SEL};
    load_test_gdt();
    expect_gp("ltr with a null selector", 3, 0, || ltr(0));
    expect_gp("ltr of a code segment", 3, 0x08, || ltr(0x08));
    expect_gp("ltr with TI set", 3, 0x34, || ltr(0x34));
    expect_gp("ltr past the GDT limit", 3, 0x40, || ltr(0x40));
    ltr(TSS_SEL);
    check_eq!(str_selector(), TSS_SEL, "TR after ltr");
    check_eq!(
        (descriptor(TSS_SEL) >> 40) & 0xf,
        0xb,
        "TSS type after ltr (busy)"
    );
    expect_gp("ltr of a busy TSS", 3, u64::from(TSS_SEL), || ltr(TSS_SEL));
}

/// L0 decodes the instruction at RIP through the guest's current tables
/// even after it remembered a walk of that page (svm::walk_memo): linear
/// page X runs CPUID from page A, then the guest points X's PTE at page B
/// in place (same CR3, reloaded) and runs CPUID at another offset of X. At
/// that offset A holds VMMCALL (3 bytes), B holds CPUID (2 bytes), RET,
/// then UD2: L0 reading A's stale bytes would resume the guest on the UD2.
fn fetch_after_remap(_: &StartParams) {
    #[repr(C, align(4096))]
    struct Page([u64; 512]);
    #[repr(C, align(4096))]
    struct Code([u8; 4096]);
    static mut PD: Page = Page([0; 512]);
    static mut PT: Page = Page([0; 512]);
    static mut A: Code = Code([0xCC; 4096]);
    static mut B: Code = Code([0xCC; 4096]);
    // SAFETY: statics of this guest, identity-mapped (GPA = address);
    // linear 2 GiB (start PDPT entry 2) is this test's alone.
    let (a, b, pt) = unsafe {
        let (a, b) = (&raw mut A, &raw mut B);
        let (a, b) = (&mut (*a).0, &mut (*b).0);
        a[..3].copy_from_slice(&[0x0F, 0xA2, 0xC3]); // CPUID; RET
        a[16..19].copy_from_slice(&[0x0F, 0x01, 0xD9]); // VMMCALL
        b[16..21].copy_from_slice(&[0x0F, 0xA2, 0xC3, 0x0F, 0x0B]); // CPUID; RET; UD2
        let pt = &raw mut PT;
        let pd = &raw mut PD;
        (*pd).0[0] = pt as u64 | 3;
        (a.as_ptr() as u64, b.as_ptr() as u64, pt)
    };
    let x = 2u64 << 30;
    let run = |at: u64| -> (u32, Option<guest_stubs::exceptions::Fault>) {
        let mut eax = 0u32;
        let fault = catch(2, || {
            // SAFETY: `at` is CPUID; RET in the page mapped at X; RBX is
            // saved around the call (CPUID writes it).
            unsafe {
                asm!("push rbx", "call {f}", "pop rbx", f = in(reg) at,
                    inout("eax") 0u32 => eax, out("ecx") _, out("edx") _)
            };
        });
        (eax, fault)
    };
    let max_leaf = cpuid(0, 0)[0];
    // SAFETY: the PT maps X only; the start PDPT entry 2 is unused.
    unsafe { (*pt).0[0] = a | 3 };
    unbacked::set_pdpt(2, &raw const PD as u64 | 3);
    let first = run(x);
    // SAFETY: as above; the reload of CR3 (in set_pdpt) flushes X.
    unsafe { (*pt).0[0] = b | 3 };
    unbacked::set_pdpt(2, &raw const PD as u64 | 3);
    let second = run(x + 16);
    unbacked::set_pdpt(2, 0);
    check!(
        first == (max_leaf, None),
        "CPUID through page A: {first:x?}"
    );
    check!(
        second == (max_leaf, None),
        "CPUID through page B after the remap: {second:x?}"
    );
}

/// MOV CR3 gets the CPU's checks (QEMU loads any value, then refuses the
/// next VMRUN): bits at or above MAXPHYADDR, and bit 63 without PCIDE, are
/// #GP(0) and leave CR3 as it was (APM 3.1.2); valid values load, PWT/PCD
/// included; with PCIDE (if the CPU has PCID) bit 63 is not stored.
fn cr3_write_checked(_: &StartParams) {
    use guest_stubs::privileged::{read_cr, write_cr3, write_cr4};
    let cr3 = read_cr(3);
    let max_phys = cpuid(0x8000_0008, 0)[0] & 0xff;
    expect_gp("CR3 bit MAXPHYADDR", 3, 0, || {
        write_cr3(cr3 | 1 << max_phys)
    });
    expect_gp("CR3 bit 63 without PCIDE", 3, 0, || {
        write_cr3(cr3 | 1 << 63)
    });
    expect_gp("CR3 = the fuzzer's value", 3, 0, || {
        write_cr3(0xea38_a504_73e1_82b5)
    });
    check_eq!(read_cr(3), cr3, "CR3 after refused writes");
    write_cr3(cr3);
    check_eq!(read_cr(3), cr3, "CR3 reloaded");
    write_cr3(cr3 | 0x18);
    check_eq!(read_cr(3), cr3 | 0x18, "CR3 with PWT and PCD");
    write_cr3(cr3);
    // Single-stepped: the #DB follows the MOV (L0 raises it; the host side
    // checks that the CPU raised none after the next instruction).
    write_dr(6, DR6_CLEAR);
    match catch_trap(|| guest_stubs::privileged::single_step_write_cr3(cr3)) {
        Some(f) => check!(
            f.vector == 1 && f.dr6 & DR6_BS != 0,
            "single-stepped MOV CR3: vector {}, DR6 {:#x}",
            f.vector,
            f.dr6
        ),
        None => fail(format_args!("single-stepped MOV CR3: no #DB")),
    }
    // The cost of a CR3 write (every one exits), for `cargo xtask bench`.
    const N: u64 = 100;
    let bracket = guest_stubs::hypercall::host_ticks_bracket();
    let exits_before = call(svm::guest_abi::HC_EXIT_TOTAL, 0, 0, 0);
    let l0_before = call(svm::guest_abi::HC_HOST_TICKS, 0, 0, 0);
    let t0 = guest_stubs::cpu::rdtsc();
    for _ in 0..N {
        write_cr3(cr3);
    }
    let per = (guest_stubs::cpu::rdtsc() - t0) / N;
    let l0 = (call(svm::guest_abi::HC_HOST_TICKS, 0, 0, 0) - l0_before).saturating_sub(bracket) / N;
    let exits = l0_exits_per(exits_before, N);
    println!("MOV CR3 round trip (MOV CR3 -> L0 -> guest): {per} TSC ticks as the guest measures it, {l0} in L0, {exits} L0 exits");
    if cpuid(1, 0)[2] & (1 << 17) == 0 {
        println!("no PCID: PCIDE part skipped");
        return;
    }
    let (cr4, pcide) = (read_cr(4), 1u64 << 17);
    write_cr4(cr4 | pcide);
    write_cr3(cr3 | 1 << 63 | 5);
    check_eq!(read_cr(3), cr3 | 5, "CR3 after a no-flush write of PCID 5");
    expect_gp("CR3 bit 62 with PCIDE", 3, 0, || {
        write_cr3(cr3 | 1 << 63 | 1 << 62)
    });
    write_cr3(cr3);
    write_cr4(cr4);
}

/// Single-stepping over instructions L0 emulates (CPUID, RDMSR, OUT):
/// each ends with the single-step #DB (DR6.BS) right after it, as on the
/// CPU, raised by L0 itself (the host side checks that the CPU raised no
/// #DB: an emulated instruction never runs on it).
fn single_step_over_emulated(_: &StartParams) {
    fn stepped(name: &str, step: fn()) {
        write_dr(6, DR6_CLEAR);
        let Some(f) = catch_trap(step) else {
            fail(format_args!("{name}: single step raised no #DB"))
        };
        check!(
            f.vector == 1 && f.dr6 & DR6_BS != 0,
            "{name}: vector {} DR6 {:#x}, expected #DB with BS",
            f.vector,
            f.dr6
        );
    }
    stepped("CPUID", step_cpuid);
    stepped("RDMSR", step_rdmsr);
    stepped("OUT", step_out);
}

// In the three below, POPFQ sets TF, so the trap follows the next
// instruction; the #DB handler clears TF.
fn step_cpuid() {
    // SAFETY: CPUID changes only the registers named (RBX saved around it).
    unsafe {
        asm!(
            "push rbx",
            "pushfq",
            "or qword ptr [rsp], 0x100",
            "popfq",
            "cpuid",
            "pop rbx",
            inout("eax") 0 => _,
            out("ecx") _,
            out("edx") _,
        )
    };
}

fn step_rdmsr() {
    // SAFETY: RDMSR of EFER changes only EAX and EDX.
    unsafe {
        asm!(
            "pushfq",
            "or qword ptr [rsp], 0x100",
            "popfq",
            "rdmsr",
            in("ecx") svm::msr::EFER,
            out("eax") _,
            out("edx") _,
        )
    };
}

fn step_out() {
    // SAFETY: port 0x80 has no device; the OUT is dropped by L0.
    unsafe {
        asm!(
            "pushfq",
            "or qword ptr [rsp], 0x100",
            "popfq",
            "out 0x80, al",
            in("al") 0u8,
        )
    };
}

/// DR7 values a guest arms before writing DR0-DR3: DR0 a 1-byte write
/// watchpoint, then an instruction breakpoint, then all four enabled as in
/// the fuzz case (seed 2, iteration 29884), then DR0 read/write.
const ARMED_DR7S: [u64; 5] = [0x10401, 0x401, 0x11fff, 0x300ff, 0x10401];

/// A breakpoint address nothing executes or touches (not mapped).
fn unused_address(round: usize, n: u8) -> u64 {
    0xdead_0000 + (round as u64) * 0x100 + u64::from(n) * 8
}

/// MOV DR0-DR3 with breakpoints armed in DR7 (ISSUE 8 C, the fuzz
/// SIGSEGV): L0 emulates them and the guest reads back what it wrote. With
/// the writes native, QEMU inserts DR0's watchpoint in round 0 and removes
/// it as an instruction breakpoint in round 1 (DR7 changed by L0's
/// emulated MOV DR7, which QEMU does not see): the emulator dies.
fn dr0_3_writes_armed(_: &StartParams) {
    for n in 0..4 {
        check_eq!(read_dr(n), 0, format_args!("DR{n} of a fresh vCPU"));
    }
    for (round, dr7) in ARMED_DR7S.into_iter().enumerate() {
        write_dr(7, dr7);
        for n in 0..4 {
            write_dr(n, unused_address(round, n));
        }
        for n in 0..4 {
            check_eq!(
                read_dr(n),
                unused_address(round, n),
                format_args!("DR{n} with DR7 {dr7:#x}")
            );
        }
    }
    write_dr(7, 0x400);
    for n in 0..4 {
        write_dr(n, 0);
        check_eq!(read_dr(n), 0, format_args!("DR{n} cleared"));
    }
    // Left for L0 to clear when this VM stops (nested::l2_dr0_3_writes_armed,
    // later in the run, checks that a new VM starts with zeros).
    for n in 0..4 {
        write_dr(n, unused_address(9, n));
    }
}
