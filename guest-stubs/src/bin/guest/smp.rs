//! `smp::` guests with two vCPUs (hv/src/selftest/smp_vm.rs). Both vCPUs
//! share this image and its statics (one guest-physical memory); each
//! learns which it is from its APIC ID. vCPU 0 reports the verdict.

use core::sync::atomic::{AtomicU64, Ordering};
use guest_stubs::exceptions::{interrupts_taken, nmis_taken};
use guest_stubs::hypercall::call;
use guest_stubs::verdict::fail;
use guest_stubs::{check, check_eq, lapic, StartParams};
use svm::guest_abi::HC_NOW_NS;

/// vCPU 1's progress, as vCPU 0 sees it.
static READY: AtomicU64 = AtomicU64::new(0);
static GOT_IRQ: AtomicU64 = AtomicU64::new(0);
static GOT_NMI: AtomicU64 = AtomicU64::new(0);
static HLT_EARLY: AtomicU64 = AtomicU64::new(0);

const IPI_VECTOR: u8 = 0x40;
const ICR: u32 = 0x300;
const ICR2: u32 = 0x310;

/// Sends `low` (vector, delivery mode, level) to APIC ID `dest`.
fn send(dest: u8, low: u32) {
    lapic::write(ICR2, u32::from(dest) << 24);
    lapic::write(ICR, low);
}

/// Waits up to 5 s of L0's clock for `cond`, else fails with `what`.
fn wait(what: &str, cond: impl Fn() -> bool) {
    let start = call(HC_NOW_NS, 0, 0, 0);
    let mut n = 0u64;
    while !cond() {
        core::hint::spin_loop();
        n += 1;
        if n.is_multiple_of(4096) && call(HC_NOW_NS, 0, 0, 0) - start > 5_000_000_000 {
            fail(format_args!("timed out waiting for {what}"));
        }
    }
}

fn apic_id() -> u32 {
    lapic::read(0x20) >> 24
}

/// vCPU 0 sends vCPU 1 a fixed IPI, then an NMI; vCPU 1 takes each (its
/// handlers count them) and says so through shared memory. vCPU 1 waits
/// for the IPI in HLT: the HLT lasts until the IPI comes.
pub fn vcpu_ipi(_: &StartParams) {
    lapic::map();
    lapic::enable();
    if apic_id() != 0 {
        second_vcpu_takes_ipis();
    }
    wait("vCPU 1 to start", || READY.load(Ordering::SeqCst) == 1);
    // vCPU 1 is in HLT by now (or soon): it must stay there until the IPI.
    let t = call(HC_NOW_NS, 0, 0, 0);
    while call(HC_NOW_NS, 0, 0, 0) - t < 30_000_000 {
        core::hint::spin_loop();
    }
    send(1, u32::from(IPI_VECTOR));
    wait("vCPU 1 to take the fixed IPI", || {
        GOT_IRQ.load(Ordering::SeqCst) == 1
    });
    check_eq!(interrupts_taken(IPI_VECTOR), 1, "interrupts taken");
    check_eq!(
        HLT_EARLY.load(Ordering::SeqCst),
        0,
        "vCPU 1's HLT ended before the IPI came"
    );
    send(1, 0x400);
    wait("vCPU 1 to take the NMI", || {
        GOT_NMI.load(Ordering::SeqCst) == 1
    });
    check_eq!(nmis_taken(), 1, "NMIs taken");
}

fn second_vcpu_takes_ipis() -> ! {
    READY.store(1, Ordering::SeqCst);
    // STI; HLT with no timer: only vCPU 0's IPI can end it.
    lapic::safe_halt();
    if interrupts_taken(IPI_VECTOR) == 0 {
        HLT_EARLY.store(1, Ordering::SeqCst);
    }
    while interrupts_taken(IPI_VECTOR) == 0 {
        lapic::sti_nop_cli();
        core::hint::spin_loop();
    }
    lapic::write(0xB0, 0);
    GOT_IRQ.store(1, Ordering::SeqCst);
    while nmis_taken() == 0 {
        core::hint::spin_loop();
    }
    GOT_NMI.store(1, Ordering::SeqCst);
    loop {
        core::hint::spin_loop();
    }
}

/// Real-mode code for the SIPI page: stores CS and counts its starts,
/// then spins. `mov ax, cs; mov [0x7000], ax; inc word [0x7002]; jmp $`
/// (DS = 0 after INIT).
const AP_CODE: [u8; 11] = [
    0x8C, 0xC8, 0xA3, 0x00, 0x70, 0xFF, 0x06, 0x02, 0x70, 0xEB, 0xFE,
];
const AP_PAGE: u64 = 0x8000;
const REPORT: u64 = 0x7000;

fn report(offset: u64) -> u16 {
    // SAFETY: identity-mapped guest RAM below the image, which vCPU 1
    // writes; read volatile.
    unsafe { core::ptr::read_volatile((REPORT + offset) as *const u16) }
}

/// vCPU 1 starts waiting for INIT and SIPI: vCPU 0 starts it at vector 8
/// (real mode, CS 0x0800, IP 0), a SIPI without INIT is ignored, and
/// INIT + SIPI restart it while it runs.
pub fn init_sipi_restart(_: &StartParams) {
    // SAFETY: low guest RAM that nothing else uses (guest_abi layout).
    unsafe {
        core::ptr::copy_nonoverlapping(AP_CODE.as_ptr(), AP_PAGE as *mut u8, AP_CODE.len());
        core::ptr::write_bytes(REPORT as *mut u8, 0, 4);
    }
    lapic::map();
    lapic::enable();
    let vector = (AP_PAGE >> 12) as u32;
    send(1, 0x4500); // INIT, level assert
    send(1, 0x4600 | vector); // Start-up
    wait("vCPU 1 to run at the SIPI vector", || report(2) == 1);
    check_eq!(report(0), 0x0800, "vCPU 1's CS in real mode");
    // A SIPI to a running vCPU does nothing (SDM 9.4.4).
    send(1, 0x4600 | vector);
    let t = call(HC_NOW_NS, 0, 0, 0);
    while call(HC_NOW_NS, 0, 0, 0) - t < 20_000_000 {
        core::hint::spin_loop();
    }
    check_eq!(report(2), 1, "starts after a SIPI without INIT");
    send(1, 0x4500);
    send(1, 0x4600 | vector);
    wait("vCPU 1 to restart after INIT and SIPI", || report(2) == 2);
}

/// Whose turn it is (even: vCPU 0, odd: vCPU 1) and the last TSC read.
static TURN: AtomicU64 = AtomicU64::new(0);
static LAST_TSC: AtomicU64 = AtomicU64::new(0);
static MAX_BACK: AtomicU64 = AtomicU64::new(0);
const HANDOFFS: u64 = 2000;
/// L0 moves the VM's TSC forward by this much halfway (HC_TSC_MOVE_L1):
/// every vCPU must follow before the mover's next read is seen.
const MOVE: u64 = 1 << 36;

/// The backwards step `smp::tsc_skew_compensated` tolerates (ticks).
const SKEW_RESIDUAL: u64 = 1000;

/// One side of the ping-pong: on its turn, reads the TSC (after seeing
/// the other's reading) and compares it with the other's.
fn ping_pong(me: u64) {
    let mut turn = me;
    while turn < HANDOFFS {
        while TURN.load(Ordering::SeqCst) != turn {
            core::hint::spin_loop();
        }
        if me == 0 && turn == HANDOFFS / 2 {
            call(svm::guest_abi::HC_TSC_MOVE_L1, MOVE, 0, 0);
        }
        // LFENCE: RDTSC is not executed before the load above.
        // SAFETY: LFENCE has no side effects.
        unsafe { core::arch::asm!("lfence", options(nostack)) };
        let now = guest_stubs::cpu::rdtsc();
        let last = LAST_TSC.load(Ordering::SeqCst);
        if now < last {
            MAX_BACK.fetch_max(last - now, Ordering::SeqCst);
        }
        LAST_TSC.store(now, Ordering::SeqCst);
        TURN.store(turn + 1, Ordering::SeqCst);
        turn += 2;
    }
}

/// vCPUs 0 and 1 take turns reading the TSC through shared memory; no
/// reading may be below the other vCPU's reading before it, also across
/// a VM-wide TSC move.
pub fn tsc_monotonic_across_vcpus(params: &StartParams) {
    lapic::map();
    if apic_id() != 0 {
        ping_pong(1);
        loop {
            core::hint::spin_loop();
        }
    }
    ping_pong(0);
    wait("vCPU 1's last turn", || {
        TURN.load(Ordering::SeqCst) >= HANDOFFS
    });
    let back = MAX_BACK.load(Ordering::SeqCst);
    guest_stubs::println!(
        "tsc: largest backwards step {back} ticks over {HANDOFFS} handoffs between 2 vCPUs"
    );
    // With CPU 1's TSC skewed on purpose (hv's smp::tsc_skew_compensated)
    // the compensation is as good as its measurement, which the host
    // requires within +/- 500 ticks: a residual below that may show.
    let allowed = match params.test_name() {
        Some("smp::tsc_skew_compensated") => SKEW_RESIDUAL,
        _ => 0,
    };
    check!(
        back <= allowed,
        "largest backwards TSC step between vCPUs: {back:#x} ticks (at most {allowed})"
    );
}
