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
const SKEW_RESIDUAL: u64 = 5_000;

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
    // requires within +/- 2500 ticks: a residual of twice that may show.
    let allowed = match params.test_name() {
        Some("smp::tsc_skew_compensated") => SKEW_RESIDUAL,
        _ => 0,
    };
    check!(
        back <= allowed,
        "largest backwards TSC step between vCPUs: {back:#x} ticks (at most {allowed})"
    );
}

/// Where L0 writes the vCPU and CPU counts for `vcpus_time_sliced` (low
/// guest RAM that nothing else uses; hv/src/selftest/smp_vm.rs).
const VCPUS_GPA: u64 = 0x6000;
/// Real-mode code for the SIPI'd vCPU (CPU 0's other vCPU): stores CS,
/// then counts without an exit until the byte at 0x7008 is set, then
/// halts for good. `mov ax, cs; mov [0x7000], ax; l: inc dword [0x7004];
/// cmp byte [0x7008], 0; je l; cli; h: hlt; jmp h` (DS = 0 after INIT).
const SPIN_CODE: [u8; 21] = [
    0x8C, 0xC8, 0xA3, 0x00, 0x70, 0x66, 0xFF, 0x06, 0x04, 0x70, 0x80, 0x3E, 0x08, 0x70, 0x00, 0x74,
    0xF4, 0xFA, 0xF4, 0xEB, 0xFD,
];
/// The SIPI'd vCPU stops counting when this byte is set.
const SPIN_STOP: u64 = REPORT + 8;
/// The ping-pong's turn: the halting vCPU sets it, the spinning one waits
/// for it.
static TURN_OF_SPINNER: AtomicU64 = AtomicU64::new(0);
/// Each vCPU's count while it spins (phase 0).
static SPINS: [AtomicU64; 16] = [const { AtomicU64::new(0) }; 16];
/// 0: spin, 1: the IPI ring and the mates' ping-pong.
static PHASE: AtomicU64 = AtomicU64::new(0);
/// What each vCPU's x87 stack held after the spin phase (0: not yet).
static X87_AFTER: [AtomicU64; 16] = [const { AtomicU64::new(0) }; 16];
/// The ping-pong's median round trip (ns; 0: not done).
static PING_PONG_NS: AtomicU64 = AtomicU64::new(0);
const RING_ROUNDS: u64 = 20;
/// Round trips between the two vCPUs of one CPU.
const PING_PONGS: u64 = 20;
/// Vector of vCPU i's IPIs: its own, since the interrupt counts are
/// shared by all vCPUs (one guest memory).
const RING_VECTOR: u8 = 0x50;
/// Longest median round trip between two vCPUs of one CPU (ns; the
/// median: the host's scheduling of QEMU's threads adds the odd slow
/// one): one waits in HLT for an IPI from the other, which spins (no
/// exits) until the first says it is its turn. A halted vCPU that keeps
/// its CPU (spinning until an event or L0's 10 ms HLT wait slice) makes
/// every round trip take the full slice: its event must come from its
/// CPU-mate, which cannot run meanwhile. Yielding, a round trip is a few
/// exits on one CPU (well under 1 ms).
const ROUND_TRIP_LIMIT_NS: u64 = 5_000_000;

/// The value vCPU `id` keeps in its x87 stack through the spin phase.
fn x87_mark(id: u32) -> u64 {
    0x1000 + u64::from(id)
}

/// FNINIT, then pushes `value` on the x87 stack.
fn x87_push(value: u64) {
    // SAFETY: x87 only (CR0.EM is clear); reads `value` from the stack.
    unsafe {
        core::arch::asm!("fninit", "fild qword ptr [{}]", in(reg) &value, options(nostack));
    }
}

/// Pops the x87 stack's top as an integer.
fn x87_pop() -> u64 {
    let mut value = 0u64;
    // SAFETY: as in `x87_push`; writes `value`.
    unsafe {
        core::arch::asm!("fistp qword ptr [{}]", in(reg) &mut value, options(nostack));
    }
    value
}

fn now_ns() -> u64 {
    call(HC_NOW_NS, 0, 0, 0)
}

/// Spins (hypercalls for the clock only) for `ns` of L0's clock.
fn pause_ns(ns: u64) {
    let t = now_ns();
    while now_ns() - t < ns {
        core::hint::spin_loop();
    }
}

/// The layout L0 chose (`VCPUS_GPA`): vCPU i runs on CPU i mod `cpus`.
#[derive(Clone, Copy)]
struct Layout {
    n: u32,
    cpus: u32,
}

impl Layout {
    fn read() -> Self {
        // SAFETY: L0 wrote both counts there before the start.
        let (n, cpus) = unsafe {
            (
                core::ptr::read_volatile(VCPUS_GPA as *const u64),
                core::ptr::read_volatile((VCPUS_GPA + 8) as *const u64),
            )
        };
        Self {
            n: n as u32,
            cpus: cpus as u32,
        }
    }
    /// CPU 0's second vCPU: started by SIPI, then runs real-mode code.
    fn sipi(self) -> u32 {
        self.cpus
    }
    /// Two vCPUs of the last CPU, neither the SIPI'd one: they ping-pong.
    fn mates(self) -> (u32, u32) {
        (self.cpus - 1, self.n - 1)
    }
    /// The ring member after `id`: every vCPU but the SIPI'd one.
    fn ring_next(self, id: u32) -> u32 {
        let next = (id + 1) % self.n;
        if next == self.sipi() {
            (next + 1) % self.n
        } else {
            next
        }
    }
}

/// Sends vCPU `to` its IPI.
fn send_to(to: u32) {
    send(to as u8, u32::from(RING_VECTOR) + to);
}

/// Takes IPI number `seen + 1` of vCPU `id` (in HLT until it comes) and
/// EOIs it.
fn take(id: u32, seen: u64) {
    while interrupts_taken(RING_VECTOR + id as u8) == seen {
        lapic::safe_halt();
    }
    lapic::write(0xB0, 0);
}

/// More vCPUs than CPUs (L0 writes the counts at `VCPUS_GPA`; it uses at
/// most 2 CPUs, so the timing below does not depend on how the host
/// schedules more QEMU threads than it has cores). vCPU i runs on CPU
/// i mod CPUs, sharing it with at least one other:
/// - CPU 0's second vCPU waits for a SIPI from the start; vCPU 0 starts it
///   with INIT and SIPI after giving it time to wait (a SIPI wait that
///   keeps the CPU never lets vCPU 0 send it); it then spins in real mode.
/// - Every vCPU spins without exits until each one's count has moved
///   twice (the slice end preempts), each keeping a value of its own on
///   the x87 stack (L0 switches the FPU registers). Then the SIPI'd vCPU
///   halts for good.
/// - A token goes round the others by IPI, each waiting in HLT; then two
///   vCPUs of one CPU ping-pong: one waits in HLT for the other's IPI,
///   which spins until it is its turn (a halted vCPU yields its CPU to
///   its mate at once).
pub fn vcpus_time_sliced(_: &StartParams) {
    lapic::map();
    lapic::enable();
    let l = Layout::read();
    let id = apic_id();
    if id != 0 {
        time_sliced_member(id, l);
    }
    check!(
        l.cpus >= 1 && l.n > l.cpus && l.n as usize <= SPINS.len(),
        "{} vCPUs on {} CPUs",
        l.n,
        l.cpus
    );
    x87_push(x87_mark(0));
    // SAFETY: low guest RAM that nothing else uses (guest_abi layout).
    unsafe {
        core::ptr::copy_nonoverlapping(SPIN_CODE.as_ptr(), AP_PAGE as *mut u8, SPIN_CODE.len());
        core::ptr::write_bytes(REPORT as *mut u8, 0, 9);
    }
    let sipi = l.sipi();
    let vector = (AP_PAGE >> 12) as u32;
    pause_ns(30_000_000);
    send(sipi as u8, 0x4500); // INIT
    pause_ns(30_000_000);
    send(sipi as u8, 0x4600 | vector);
    let spins = |i: u32| match i {
        i if i == sipi => u64::from(report(4)) | u64::from(report(6)) << 16,
        i => SPINS[i as usize].load(Ordering::SeqCst),
    };
    wait("the SIPI'd vCPU to run", || spins(sipi) != 0);
    check_eq!(report(0), 0x0800, "the SIPI'd vCPU's CS");
    // Every vCPU's count moves, twice: each shares its CPU with another.
    for _ in 0..2 {
        let before: [u64; 16] = core::array::from_fn(|i| spins(i as u32));
        for i in 1..l.n {
            wait("every vCPU to run while its CPU-mate spins", || {
                spins(i) != before[i as usize]
            });
        }
    }
    X87_AFTER[0].store(x87_pop(), Ordering::SeqCst);
    // SAFETY: the SIPI'd vCPU's stop byte (low guest RAM).
    unsafe { core::ptr::write_volatile(SPIN_STOP as *mut u8, 1) };
    PHASE.store(1, Ordering::SeqCst);
    for i in (0..l.n).filter(|&i| i != sipi) {
        wait("every vCPU's x87 check", || {
            X87_AFTER[i as usize].load(Ordering::SeqCst) != 0
        });
        check_eq!(
            X87_AFTER[i as usize].load(Ordering::SeqCst),
            x87_mark(i),
            "vCPU {i}'s x87 stack top after the spin phase"
        );
    }
    let mut rounds = [0u64; RING_ROUNDS as usize];
    for (r, t) in rounds.iter_mut().enumerate() {
        let start = now_ns();
        send_to(l.ring_next(0));
        take(0, r as u64);
        *t = now_ns() - start;
    }
    let ring = median(&mut rounds);
    if l.mates().0 == 0 {
        ping_pong_mates(0, l);
    }
    wait("the ping-pong between CPU-mates", || {
        PING_PONG_NS.load(Ordering::SeqCst) != 0
    });
    let trip = PING_PONG_NS.load(Ordering::SeqCst);
    guest_stubs::println!(
        "smp: {} vCPUs on {} CPUs (medians): IPI ring round {} us (HLT waits), round trip between CPU-mates {} us (HLT and spin)",
        l.n,
        l.cpus,
        ring / 1000,
        trip / 1000
    );
    for i in (1..l.n).filter(|&i| i != sipi) {
        let (a, _) = l.mates();
        let expected = RING_ROUNDS + if i == a { PING_PONGS } else { 0 };
        check_eq!(
            interrupts_taken(RING_VECTOR + i as u8),
            expected,
            "IPIs vCPU {i} took"
        );
    }
    check!(
        trip < ROUND_TRIP_LIMIT_NS,
        "the median round trip between CPU-mates took {trip} ns (limit {ROUND_TRIP_LIMIT_NS})"
    );
}

/// The middle value of `values` (sorts them).
fn median(values: &mut [u64]) -> u64 {
    values.sort_unstable();
    values[values.len() / 2]
}

/// The ping-pong of `l.mates()`, as vCPU `id`: the first says it is the
/// second's turn and waits in HLT for its IPI; the second spins (no
/// exits) until its turn, then sends. The first records the median round
/// trip. Its APIC timer runs meanwhile (one-shot, minutes away): a HLT
/// that the timer could end must yield the CPU too.
fn ping_pong_mates(id: u32, l: Layout) {
    let (a, _) = l.mates();
    if id == a {
        lapic::write(0x3E0, 0xA); // divide by 128
        lapic::write(0x320, 0x60); // one-shot, vector 0x60
        lapic::write(0x380, u32::MAX);
    }
    let mut trips = [0u64; PING_PONGS as usize];
    for (k, t) in (0..).zip(trips.iter_mut()) {
        if id == a {
            let start = now_ns();
            TURN_OF_SPINNER.store(k + 1, Ordering::SeqCst);
            take(a, RING_ROUNDS + k);
            *t = now_ns() - start;
        } else {
            while TURN_OF_SPINNER.load(Ordering::SeqCst) != k + 1 {
                core::hint::spin_loop();
            }
            send_to(a);
        }
    }
    if id == a {
        lapic::write(0x380, 0);
        PING_PONG_NS.store(median(&mut trips).max(1), Ordering::SeqCst);
    }
}

fn time_sliced_member(id: u32, l: Layout) -> ! {
    x87_push(x87_mark(id));
    while PHASE.load(Ordering::SeqCst) == 0 {
        SPINS[id as usize].fetch_add(1, Ordering::SeqCst);
    }
    X87_AFTER[id as usize].store(x87_pop(), Ordering::SeqCst);
    for r in 0..RING_ROUNDS {
        take(id, r);
        send_to(l.ring_next(id));
    }
    let (a, b) = l.mates();
    if id == a || id == b {
        ping_pong_mates(id, l);
    }
    loop {
        lapic::safe_halt();
    }
}

/// `waits_release_vm`: vCPU 1's APIC timer vector and one-shot wait, and
/// its PIT waits (HC_WAIT_PIT_US, us).
const HALT_TIMER_VECTOR: u8 = 0x61;
const HALT_TIMER_NS: u32 = 20_000_000;
const PIT_WAIT_US: u64 = 20_000;
/// Each window in which vCPU 0 counts its exits (ns), and the windows of
/// each kind (vCPU 1 spinning, halting, waiting by the PIT), interleaved
/// so that every kind sees the same host load.
const EXIT_WINDOW_NS: u64 = 100_000_000;
const EXIT_WINDOWS: usize = 4;
/// An exit round trip this slow waited for something (TCG's take tens
/// of us; reported, not checked: a loaded host deschedules QEMU).
const SLOW_EXIT_NS: u64 = 5_000_000;
/// vCPU 1's HLT instructions and the ns they lasted; its PIT waits.
static HALTS: AtomicU64 = AtomicU64::new(0);
static HALTED_NS: AtomicU64 = AtomicU64::new(0);
static PIT_WAITS: AtomicU64 = AtomicU64::new(0);
/// What vCPU 1 does (`WAITER_*`), as vCPU 0 asks and as vCPU 1 last saw.
static WAITER_MODE: AtomicU64 = AtomicU64::new(WAITER_SPIN);
static WAITER_SEEN: AtomicU64 = AtomicU64::new(u64::MAX);
/// Spins without exits.
const WAITER_SPIN: u64 = 0;
/// Waits in HLTs its APIC timer ends.
const WAITER_HLT: u64 = 1;
/// Waits by the PIT (HC_WAIT_PIT_US).
const WAITER_PIT: u64 = 2;

/// vCPU 0's exits in some windows: count, how many were slow, the slowest.
#[derive(Clone, Copy, Default)]
struct ExitTimes {
    exits: u64,
    slow: u64,
    worst: u64,
}

/// Exits back to back for `EXIT_WINDOW_NS` (consecutive HC_NOW_NS: L0's
/// clock at each exit, so each difference is one round trip including
/// any wait for the VM lock).
fn time_exits(total: &mut ExitTimes) {
    let start = now_ns();
    let mut last = start;
    while last - start < EXIT_WINDOW_NS {
        let t = now_ns();
        let trip = t - last;
        total.exits += 1;
        total.slow += u64::from(trip > SLOW_EXIT_NS);
        total.worst = total.worst.max(trip);
        last = t;
    }
}

/// A vCPU's waits in L0 must not hold the VM (every other vCPU's exits
/// would wait): a HLT that the APIC timer ends (interrupts enabled, the
/// timer 20 ms away, as an idle Linux vCPU's) and a test hook's wait by
/// the PIT (20 ms). vCPU 0 counts its own exits in windows of 100 ms,
/// in turn while vCPU 1 spins without exits, waits in such HLTs again
/// and again, and waits by the PIT again and again: each waiting kind
/// must see at least a quarter of the spin windows' exits (the same host
/// load slows all). With a wait under the VM lock, vCPU 0's exits wait
/// for most of it: a few per window instead of hundreds.
pub fn waits_release_vm(_: &StartParams) {
    lapic::map();
    lapic::enable();
    if apic_id() != 0 {
        waiter();
    }
    let mut spin = ExitTimes::default();
    let mut halt = ExitTimes::default();
    let mut pit = ExitTimes::default();
    let (mut halts, mut halted, mut ticks, mut pit_waits) = (0, 0, 0, 0);
    for _ in 0..EXIT_WINDOWS {
        for mode in [WAITER_SPIN, WAITER_HLT, WAITER_PIT] {
            WAITER_MODE.store(mode, Ordering::SeqCst);
            wait("vCPU 1 to switch", || {
                WAITER_SEEN.load(Ordering::SeqCst) == mode
            });
            let before = (
                HALTS.load(Ordering::SeqCst),
                HALTED_NS.load(Ordering::SeqCst),
                interrupts_taken(HALT_TIMER_VECTOR),
                PIT_WAITS.load(Ordering::SeqCst),
            );
            time_exits(match mode {
                WAITER_SPIN => &mut spin,
                WAITER_HLT => &mut halt,
                _ => &mut pit,
            });
            if mode == WAITER_HLT {
                halts += HALTS.load(Ordering::SeqCst) - before.0;
                halted += HALTED_NS.load(Ordering::SeqCst) - before.1;
                ticks += interrupts_taken(HALT_TIMER_VECTOR) - before.2;
            }
            if mode == WAITER_PIT {
                pit_waits += PIT_WAITS.load(Ordering::SeqCst) - before.3;
            }
        }
    }
    WAITER_MODE.store(WAITER_SPIN, Ordering::SeqCst);
    let show = |t: &ExitTimes| (t.exits, t.worst / 1000, t.slow, SLOW_EXIT_NS / 1_000_000);
    guest_stubs::println!(
        "smp: vCPU 0's exits (worst us, over ms) in {EXIT_WINDOWS} x {} ms while vCPU 1 spins: {:?}; waits in {halts} timer HLTs ({} ms on average): {:?}; waits by the PIT {pit_waits} times: {:?}",
        EXIT_WINDOW_NS / 1_000_000,
        show(&spin),
        halted / halts.max(1) / 1_000_000,
        show(&halt),
        show(&pit)
    );
    // vCPU 1 did wait in L0 meanwhile: its HLTs lasted (about the timer's
    // 20 ms; at least half) and went on through the windows, and so did
    // its PIT waits.
    check!(
        halts >= EXIT_WINDOWS as u64
            && ticks >= halts
            && halted / halts >= u64::from(HALT_TIMER_NS / 2),
        "vCPU 1's timer HLTs in the windows: {halts}, {ticks} timer interrupts, {halted} ns"
    );
    check!(
        pit_waits >= EXIT_WINDOWS as u64,
        "vCPU 1's PIT waits in the windows: {pit_waits}"
    );
    check!(
        halt.exits * 4 >= spin.exits,
        "vCPU 0 made {} exits while vCPU 1 waited in HLT, {} while it spun: its exits waited for the HLT",
        halt.exits,
        spin.exits
    );
    check!(
        pit.exits * 4 >= spin.exits,
        "vCPU 0 made {} exits while vCPU 1 waited by the PIT, {} while it spun: its exits waited for the PIT",
        pit.exits,
        spin.exits
    );
}

/// vCPU 1 of `waits_release_vm`: as vCPU 0 asks, spins without exits,
/// or arms its APIC timer (one-shot) and halts with interrupts enabled
/// until it fires, again and again, or waits by the PIT again and again.
fn waiter() -> ! {
    lapic::write(0x3E0, 0xB); // divide by 1: 1 count a ns
    lapic::write(0x320, u32::from(HALT_TIMER_VECTOR)); // one-shot
    loop {
        let mode = WAITER_MODE.load(Ordering::SeqCst);
        WAITER_SEEN.store(mode, Ordering::SeqCst);
        match mode {
            WAITER_HLT => {
                let seen = interrupts_taken(HALT_TIMER_VECTOR);
                lapic::write(0x380, HALT_TIMER_NS);
                let t = now_ns();
                while interrupts_taken(HALT_TIMER_VECTOR) == seen {
                    lapic::safe_halt();
                }
                HALTED_NS.fetch_add(now_ns() - t, Ordering::SeqCst);
                HALTS.fetch_add(1, Ordering::SeqCst);
                lapic::write(0xB0, 0);
            }
            WAITER_PIT => {
                call(svm::guest_abi::HC_WAIT_PIT_US, PIT_WAIT_US, 0, 0);
                PIT_WAITS.fetch_add(1, Ordering::SeqCst);
            }
            _ => core::hint::spin_loop(),
        }
    }
}

/// `tsc_aux_per_cpu`: the steps of the two vCPUs, and vCPU 1's RDTSCPs
/// whose ECX was not its TSC_AUX.
static AUX_STEP: AtomicU64 = AtomicU64::new(0);
static AUX_WRONG: AtomicU64 = AtomicU64::new(0);
/// Rounds of the exchange, each with its own values (`aux_values`).
const AUX_ROUNDS: u64 = 5;
/// vCPU 1's RDTSCPs of its final value per round, each after an exit.
const AUX_READS: u64 = 200;
const MSR_TSC_AUX: u32 = 0xC000_0103;

/// Round `r`'s values: vCPU 1's first, then both vCPUs'.
fn aux_values(r: u64) -> (u64, u64) {
    (0x111 + 0x1000 * r, 0x222 + 0x1000 * r)
}

/// Step `k` of round `r` in `AUX_STEP`.
fn aux_step(r: u64, k: u64) -> u64 {
    r * 8 + k
}

/// RDTSCP's ECX is the TSC_AUX of the vCPU that runs it, whatever CPU it
/// runs on (the MSR is per physical CPU; L0 loads the vCPU's value): per
/// round, vCPU 1 (CPU 1) writes its own value, vCPU 0 (CPU 0) then
/// another, then vCPU 1 that one too, which its CPU must load although
/// vCPU 0's CPU already holds it. vCPU 0 enters the guest (a hypercall)
/// right before vCPU 1's last write, so that L0's record of what a CPU
/// holds, were it one for all CPUs, says the value is loaded; a host tick
/// in vCPU 1 in between re-records its old value, hence several rounds.
pub fn tsc_aux_per_cpu(_: &StartParams) {
    lapic::map();
    check!(
        guest_stubs::cpu::has_rdtscp(),
        "RDTSCP (CPUID 0x80000001 EDX[27])"
    );
    if apic_id() != 0 {
        tsc_aux_second();
    }
    for r in 0..AUX_ROUNDS {
        let (_, both) = aux_values(r);
        wait("vCPU 1's TSC_AUX", || {
            AUX_STEP.load(Ordering::SeqCst) == aux_step(r, 1)
        });
        guest_stubs::cpu::wrmsr(MSR_TSC_AUX, both);
        call(HC_NOW_NS, 0, 0, 0);
        check_eq!(
            u64::from(guest_stubs::cpu::rdtscp().1),
            both,
            "vCPU 0's RDTSCP ECX in round {r}"
        );
        AUX_STEP.store(aux_step(r, 2), Ordering::SeqCst);
        wait("vCPU 1 to be ready", || {
            AUX_STEP.load(Ordering::SeqCst) == aux_step(r, 3)
        });
        call(HC_NOW_NS, 0, 0, 0);
        AUX_STEP.store(aux_step(r, 4), Ordering::SeqCst);
        wait("vCPU 1's RDTSCPs", || {
            AUX_STEP.load(Ordering::SeqCst) == aux_step(r, 5)
        });
        check_eq!(
            AUX_WRONG.load(Ordering::SeqCst),
            0,
            "vCPU 1's RDTSCPs (of {AUX_READS} per round, after exits) whose ECX was not its TSC_AUX {both:#x}, round {r}"
        );
        check_eq!(
            u64::from(guest_stubs::cpu::rdtscp().1),
            both,
            "vCPU 0's RDTSCP ECX at the end of round {r}"
        );
        AUX_STEP.store(aux_step(r, 6), Ordering::SeqCst);
    }
}

fn tsc_aux_second() -> ! {
    let until = |k| {
        while AUX_STEP.load(Ordering::SeqCst) != k {
            core::hint::spin_loop();
        }
    };
    for r in 0..AUX_ROUNDS {
        let (own, both) = aux_values(r);
        guest_stubs::cpu::wrmsr(MSR_TSC_AUX, own);
        call(HC_NOW_NS, 0, 0, 0);
        if u64::from(guest_stubs::cpu::rdtscp().1) != own {
            AUX_WRONG.fetch_add(1, Ordering::SeqCst);
        }
        AUX_STEP.store(aux_step(r, 1), Ordering::SeqCst);
        until(aux_step(r, 2));
        AUX_STEP.store(aux_step(r, 3), Ordering::SeqCst);
        until(aux_step(r, 4));
        guest_stubs::cpu::wrmsr(MSR_TSC_AUX, both);
        for _ in 0..AUX_READS {
            call(HC_NOW_NS, 0, 0, 0);
            if u64::from(guest_stubs::cpu::rdtscp().1) != both {
                AUX_WRONG.fetch_add(1, Ordering::SeqCst);
            }
        }
        AUX_STEP.store(aux_step(r, 5), Ordering::SeqCst);
        // vCPU 0 checks, then says so, before the next round.
        until(aux_step(r, 6));
    }
    loop {
        core::hint::spin_loop();
    }
}

/// `logical_ipi`: what vCPU 0 tells vCPUs 1 and 2 to do (1: xAPIC flat,
/// LDR bit = APIC ID; 2: xAPIC cluster 1, bit = APIC ID; 3: x2APIC),
/// and what each did last.
static LOGICAL_CMD: AtomicU64 = AtomicU64::new(0);
static LOGICAL_ACK: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];
/// IPIs vCPUs 1 and 2 must take.
const HIT: u8 = 0x41;
/// IPIs neither may take (the destination names neither).
const MISS: u8 = 0x42;
/// Physical IPIs after a `MISS`: once both took theirs, a `MISS` sent
/// before would have been taken too (one inbox each, posted in order).
const FENCE: u8 = 0x43;
/// Lowest-priority IPIs.
const LOWEST: u8 = 0x44;
const LDR: u32 = 0xD0;
const DFR: u32 = 0xE0;
const DFR_FLAT: u32 = 0xFFFF_FFFF;
const DFR_CLUSTER: u32 = 0x0FFF_FFFF;
/// ICR: logical destination mode.
const ICR_LOGICAL: u32 = 1 << 11;
/// ICR: lowest-priority delivery.
const ICR_LOWEST: u32 = 1 << 8;
/// IA32_APIC_BASE.EXTD.
const X2APIC_ENABLE: u64 = 1 << 10;

/// Sends `low` to the logical destination `mda` (xAPIC).
fn send_logical(mda: u8, low: u32) {
    send(mda, low | ICR_LOGICAL);
}

/// Sends `low` to `dest` through the x2APIC ICR (MSR 0x830).
fn x2_send(dest: u32, low: u32) {
    lapic::x2_write(ICR, u64::from(dest) << 32 | u64::from(low));
}

/// Tells vCPUs 1 and 2 to do `cmd` and waits until both did.
fn command(cmd: u64) {
    LOGICAL_CMD.store(cmd, Ordering::SeqCst);
    wait("vCPUs 1 and 2 to set up their APICs", || {
        LOGICAL_ACK[1..]
            .iter()
            .all(|a| a.load(Ordering::SeqCst) == cmd)
    });
}

/// vCPUs 1 and 2 each take a physical `FENCE` (`send_to(id)` sends it):
/// everything sent to them before has been taken by then.
fn fence(send_to: impl Fn(u32)) {
    let before = interrupts_taken(FENCE);
    send_to(1);
    send_to(2);
    wait("vCPUs 1 and 2 to take the fence IPI", || {
        interrupts_taken(FENCE) == before + 2
    });
}

/// Logical destination mode between vCPUs (SDM 11.6.2.2, 11.12.10.2):
/// vCPUs 1 and 2 set their LDR/DFR and take interrupts, spinning; vCPU 0
/// (IF clear, so every interrupt counted is theirs) sends fixed IPIs and
/// NMIs in the xAPIC flat model, the xAPIC cluster model and x2APIC
/// cluster mode, each to destinations naming one of them (must arrive)
/// and to ones naming neither (must not); and lowest-priority IPIs,
/// which exactly one of the vCPUs named takes (L0's choice: the sender
/// when named, else the lowest-indexed).
pub fn logical_ipi(_: &StartParams) {
    lapic::map();
    lapic::enable();
    let id = apic_id();
    if id != 0 {
        logical_receiver(id);
    }
    let hits = |n: u64, what: &str| {
        wait(what, || interrupts_taken(HIT) == n);
    };
    let no_miss = |what: &str| {
        let n = interrupts_taken(MISS);
        check!(
            n == 0,
            "vCPUs 1 and 2 took {n} IPIs {what}, which name neither"
        );
    };
    let xapic_fence = || fence(|id| send(id as u8, u32::from(FENCE)));
    // Flat (Linux, xAPIC, <= 8 CPUs): LDR bit = APIC ID.
    command(1);
    lapic::write(DFR, DFR_FLAT);
    lapic::write(LDR, 0x0100_0000);
    send_logical(0x02, u32::from(HIT));
    hits(1, "vCPU 1 to take a flat logical IPI to MDA 0x02");
    send_logical(0x06, u32::from(HIT));
    hits(3, "vCPUs 1 and 2 to take a flat logical IPI to MDA 0x06");
    send_logical(0x08, u32::from(MISS));
    // vCPU 0's own bit: its own APIC takes it (IF clear: it stays in IRR).
    send_logical(0x01, u32::from(MISS));
    xapic_fence();
    no_miss("to flat MDA 0x08 or 0x01");
    check!(lapic::bit(0x200, MISS), "vCPU 0 missed its own flat IPI");
    send_logical(0x04, 0x400);
    wait("vCPU 2 to take a flat logical NMI", || nmis_taken() == 1);
    // Cluster model: cluster 1, bit = APIC ID.
    command(2);
    lapic::write(DFR, DFR_CLUSTER);
    lapic::write(LDR, 0x1100_0000);
    send_logical(0x12, u32::from(HIT));
    hits(4, "vCPU 1 to take a cluster logical IPI to MDA 0x12");
    send_logical(0x16, u32::from(HIT));
    hits(6, "vCPUs 1 and 2 to take a cluster logical IPI to MDA 0x16");
    send_logical(0x26, u32::from(MISS));
    send_logical(0x18, u32::from(MISS));
    send_logical(0x06, u32::from(MISS));
    xapic_fence();
    no_miss("to cluster MDA 0x26, 0x18 or 0x06");
    // Lowest priority to all three: the sender takes it, no other does.
    send_logical(0x17, ICR_LOWEST | u32::from(LOWEST));
    xapic_fence();
    check_eq!(
        interrupts_taken(LOWEST),
        0,
        "lowest-priority IPIs vCPUs 1 and 2 took (vCPU 0 was named too)"
    );
    check!(
        lapic::bit(0x200, LOWEST),
        "vCPU 0 did not take the lowest-priority IPI naming it"
    );
    // ...to vCPUs 1 and 2: one of them takes it, once.
    send_logical(0x16, ICR_LOWEST | u32::from(LOWEST));
    wait("vCPU 1 or 2 to take a lowest-priority IPI", || {
        interrupts_taken(LOWEST) != 0
    });
    xapic_fence();
    check_eq!(
        interrupts_taken(LOWEST),
        1,
        "lowest-priority IPIs to vCPUs 1 and 2 taken"
    );
    // x2APIC: LDR from the x2APIC ID (cluster 0, bit = ID).
    command(3);
    guest_stubs::cpu::wrmsr(
        lapic::MSR_APIC_BASE,
        guest_stubs::cpu::rdmsr(lapic::MSR_APIC_BASE) | X2APIC_ENABLE,
    );
    check_eq!(lapic::x2_read(LDR), 1, "vCPU 0's x2APIC LDR");
    x2_send(0x0000_0002, u32::from(HIT) | ICR_LOGICAL);
    hits(7, "vCPU 1 to take an x2APIC cluster IPI to 0x00000002");
    x2_send(0x0000_0006, u32::from(HIT) | ICR_LOGICAL);
    hits(
        9,
        "vCPUs 1 and 2 to take an x2APIC cluster IPI to 0x00000006",
    );
    x2_send(0x0001_0006, u32::from(MISS) | ICR_LOGICAL);
    x2_send(0x0000_0008, u32::from(MISS) | ICR_LOGICAL);
    fence(|id| x2_send(id, u32::from(FENCE)));
    no_miss("to x2APIC 0x00010006 or 0x00000008");
    x2_send(0x0000_0004, 0x400 | ICR_LOGICAL);
    wait("vCPU 2 to take an x2APIC cluster NMI", || nmis_taken() == 2);
}

/// vCPUs 1 and 2 of `logical_ipi`: apply vCPU 0's commands, take
/// interrupts (IF open one instruction at a time) and EOI each.
fn logical_receiver(id: u32) -> ! {
    let (mut done, mut eois, mut x2) = (0, 0, false);
    let mut seen = 0;
    loop {
        let cmd = LOGICAL_CMD.load(Ordering::SeqCst);
        if cmd != done {
            match cmd {
                1 => {
                    lapic::write(DFR, DFR_FLAT);
                    lapic::write(LDR, 1 << (24 + id));
                }
                2 => {
                    lapic::write(DFR, DFR_CLUSTER);
                    lapic::write(LDR, (0x10 | 1 << id) << 24);
                }
                _ => {
                    let base = guest_stubs::cpu::rdmsr(lapic::MSR_APIC_BASE);
                    guest_stubs::cpu::wrmsr(lapic::MSR_APIC_BASE, base | X2APIC_ENABLE);
                    x2 = true;
                }
            }
            done = cmd;
            LOGICAL_ACK[id as usize].store(cmd, Ordering::SeqCst);
        }
        let before: u64 = (HIT..=LOWEST).map(interrupts_taken).sum();
        lapic::sti_nop_cli();
        // The counts are both receivers': this one's interrupts are those
        // counted while its window was open.
        let after: u64 = (HIT..=LOWEST).map(interrupts_taken).sum();
        seen += after - before;
        while eois < seen {
            match x2 {
                true => lapic::x2_write(0xB0, 0),
                false => lapic::write(0xB0, 0),
            }
            eois += 1;
        }
    }
}

/// Code vCPU 0 calls: `mov [rax], rax; ret` (48 89 00 C3), which vCPU 1
/// rewrites to `xor eax, eax; nop; ret` (31 C0 90 C3) while vCPU 0 runs
/// it; a page per round. One round: under QEMU TCG a second round (even
/// on another page) never sees vCPU 1's rewrite: the CPU keeps running the
/// old store, L0 retries until its limit and stops the VM (observed, not
/// understood; the kvm-unit-tests test has one round too). Executable: the
/// identity map has no NX.
#[repr(C, align(4096))]
struct Code(core::cell::UnsafeCell<[[u8; 4096]; ROUNDS as usize]>);
// SAFETY: written with volatile stores, the vCPUs take turns through ROUND.
unsafe impl Sync for Code {}
static CODE: Code = Code(core::cell::UnsafeCell::new([[0xC3; 4096]; ROUNDS as usize]));
const STORE_RET: u32 = 0xC300_8948;
const XOR_RET: u32 = 0xC390_C031;
/// The round vCPU 0 started (vCPU 1 rewrites then acks with DONE).
static ROUND: AtomicU64 = AtomicU64::new(0);
static DONE: AtomicU64 = AtomicU64::new(0);
const ROUNDS: u64 = 1;
/// The PC hole (svm::emulate::unbacked::PC_HOLE): a store there faults to
/// L0, which drops it.
const HOLE: u64 = 0xA_0000;

/// vCPU 1 rewrites vCPU 0's store to the PC hole while it runs:
/// each run ends with the store dropped (RAX kept) or the new code run
/// (RAX 0), never a stopped VM (L0 finding no store when it decodes).
pub fn cross_modified_store(_: &StartParams) {
    lapic::map();
    let page = |round: u64| {
        CODE.0
            .get()
            .cast::<u32>()
            .wrapping_add(1024 * (round as usize - 1))
    };
    if apic_id() != 0 {
        for round in 1..=ROUNDS {
            let code = page(round);
            wait("vCPU 0's round", || ROUND.load(Ordering::SeqCst) == round);
            for _ in 0..4 {
                core::hint::spin_loop();
            }
            // SAFETY: our static; vCPU 0 runs it (the point of the test).
            unsafe { code.write_volatile(XOR_RET) };
            DONE.store(round, Ordering::SeqCst);
        }
        loop {
            core::hint::spin_loop();
        }
    }
    let mut rewritten = 0;
    for round in 1..=ROUNDS {
        let code = page(round);
        // SAFETY: vCPU 1 is waiting for this round.
        unsafe { code.write_volatile(STORE_RET) };
        ROUND.store(round, Ordering::SeqCst);
        let rax: u64;
        // SAFETY: CODE is `mov [rax], rax; ret` or `xor eax, eax; nop;
        // ret`; RAX points at the hole, whose stores are dropped.
        unsafe {
            core::arch::asm!("call {f}", f = in(reg) code, inout("rax") HOLE => rax);
        }
        match rax {
            HOLE => {}
            0 => rewritten += 1,
            _ => fail(format_args!("round {round}: RAX {rax:#x} after the call")),
        }
        wait("vCPU 1's rewrite", || DONE.load(Ordering::SeqCst) == round);
    }
    guest_stubs::println!("cross-modified store: {rewritten} of {ROUNDS} runs ran the new code");
}
