//! `smp::` tests of the L1 test hypervisor with two vCPUs
//! (hv/src/selftest/smp_vm.rs). Both vCPUs run this image on one
//! guest-physical memory and learn which they are from their APIC ID;
//! vCPU 0 reports the verdict.

use crate::l1::Regs;
use crate::l2::Task;
use crate::{setup, ticks};
use core::sync::atomic::{AtomicU64, Ordering};
use guest_stubs::cpu::{cpuid, rdtsc};
use guest_stubs::hypercall::call;
use guest_stubs::verdict::fail;
use guest_stubs::{check, check_eq, println};
use svm::guest_abi::{HC_NOW_NS, HC_TSC_FREEZE_RESTORE};
use svm::ExitCode;

/// vmcb12's TSC offset for vCPU 1's L2 (2^40 ticks: minutes at GHz rates).
const O12: u64 = 1 << 40;
/// Turns of the ping-pong (even: vCPU 0's, odd: vCPU 1's); vCPU 1 plays
/// its turns below [`L2_TURNS`] in L2, the rest in L1 after L2's exit.
const TURNS: u64 = 1600;
const L2_TURNS: u64 = 1000;
/// vCPU 0 freezes the VM's TSC at its turn [`FREEZE_AT`] (vCPU 1 is in L2).
const FREEZE_AT: u64 = 500;
const FREEZE_US: u64 = 300_000;

/// Whose turn it is, and the last turn's reading in L1's time base (L2's
/// reading less vmcb12's offset).
static TURN: AtomicU64 = AtomicU64::new(0);
static LAST: AtomicU64 = AtomicU64::new(0);
/// Largest backwards step from one vCPU's reading to the other's.
static CROSS_BACK: AtomicU64 = AtomicU64::new(0);
/// The step from L2's last reading before the freeze to vCPU 0's first
/// after it.
static FREEZE_STEP: AtomicU64 = AtomicU64::new(0);
/// Per role (0: vCPU 0's L1, 1: vCPU 1's L2, 2: vCPU 1's L1), of its own
/// readings (it reads the TSC all the time, also while it waits): the
/// largest backwards and the largest forward step.
static OWN_BACK: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];
static OWN_STEP: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];
/// vCPU 1: L1's TSC before its VMRUN and after L2's exit, L2's first and
/// last readings (L2's own time base), a bad exit (bit 63 | code), and L0's
/// clock (ns) before the VMRUN and after the exit.
static V1: [AtomicU64; 7] = [const { AtomicU64::new(0) }; 7];

fn apic_id() -> u32 {
    cpuid(1, 0)[1] >> 24
}

/// One role's ping-pong: plays turns `from..to` of its parity, reading
/// the TSC less `sub` all the time; `before_read(turn)` runs on its turn
/// before the reading. `timeout`: fail if a wait lasts 10 s of L0's clock.
fn play(role: usize, from: u64, to: u64, sub: u64, timeout: bool, before_read: impl Fn(u64)) {
    let parity = if role == 0 { 0 } else { 1 };
    let mut prev = rdtsc().wrapping_sub(sub);
    let mut own = |now: u64| {
        if now < prev {
            OWN_BACK[role].fetch_max(prev - now, Ordering::SeqCst);
        } else {
            OWN_STEP[role].fetch_max(now - prev, Ordering::SeqCst);
        }
        prev = now;
    };
    let mut turn = from + (from + parity) % 2;
    while turn < to {
        let start = if timeout { call(HC_NOW_NS, 0, 0, 0) } else { 0 };
        let mut n = 0u64;
        while TURN.load(Ordering::SeqCst) != turn {
            own(rdtsc().wrapping_sub(sub));
            n += 1;
            if timeout
                && n.is_multiple_of(4096)
                && call(HC_NOW_NS, 0, 0, 0) - start > 10_000_000_000
            {
                fail(format_args!("timed out waiting for turn {turn}"));
            }
        }
        before_read(turn);
        // LFENCE: RDTSC is not executed before the load above.
        // SAFETY: LFENCE has no side effects.
        unsafe { core::arch::asm!("lfence", options(nostack)) };
        let now = rdtsc().wrapping_sub(sub);
        own(now);
        let last = LAST.load(Ordering::SeqCst);
        if now < last {
            CROSS_BACK.fetch_max(last - now, Ordering::SeqCst);
        }
        if turn == FREEZE_AT {
            FREEZE_STEP.store(now.wrapping_sub(last), Ordering::SeqCst);
        }
        LAST.store(now, Ordering::SeqCst);
        TURN.store(turn + 1, Ordering::SeqCst);
        turn += 2;
    }
}

/// L2's part ([`Task::TscPingPong`], `o12` = vmcb12's offset): its turns
/// below [`L2_TURNS`], then its first and last readings, then it yields.
pub fn l2_turns(o12: u64) {
    V1[2].store(rdtsc(), Ordering::SeqCst);
    play(1, 0, L2_TURNS, o12, false, |_| {});
    V1[3].store(rdtsc(), Ordering::SeqCst);
}

/// Seed 004 with one vCPU in L1 and another in L2: vCPU 1 runs an L2 (its
/// vmcb12 offset 2^40) that takes turns reading the TSC with vCPU 0's L1
/// through shared memory, and reads it all the time in between. vCPU 0
/// freezes the VM's TSC for 300 ms (pause policy) at its turn 500; vCPU
/// 1's L2 is then out of guest mode (held for the whole freeze) and the
/// restore's one delta reaches it in hsave and the live L2 VMCB (seed
/// 000). After the freeze no reading goes backwards, L2's own or across
/// vCPUs (L2's less vmcb12's offset), and none jumps by the freeze; L2's
/// readings lie within its L1's before VMRUN and after the exit, plus
/// vmcb12's offset; and after L2's exit vCPU 1's L1 (its offset back from
/// hsave) plays on with vCPU 0 without a backwards step.
pub fn freeze_restore_l1_and_l2() {
    if apic_id() != 0 {
        let mut regs: Regs = setup(Task::TscPingPong, O12);
        crate::l1::vmcb().control.tsc_offset = O12;
        V1[5].store(call(HC_NOW_NS, 0, 0, 0), Ordering::SeqCst);
        V1[0].store(rdtsc(), Ordering::SeqCst);
        let (_, exit) = crate::l1::run(&mut regs);
        V1[1].store(rdtsc(), Ordering::SeqCst);
        V1[6].store(call(HC_NOW_NS, 0, 0, 0), Ordering::SeqCst);
        if exit != ExitCode::Hlt.to_raw() {
            V1[4].store(exit | 1 << 63, Ordering::SeqCst);
        }
        play(2, L2_TURNS, TURNS, 0, false, |_| {});
        loop {
            core::hint::spin_loop();
        }
    }
    let freeze = AtomicU64::new(u64::MAX);
    let (ns0, tsc0) = (call(HC_NOW_NS, 0, 0, 0), rdtsc());
    play(0, 0, TURNS, 0, true, |turn| {
        if turn == FREEZE_AT {
            freeze.store(
                call(HC_TSC_FREEZE_RESTORE, 0, FREEZE_US, 0),
                Ordering::SeqCst,
            );
        }
    });
    let start = call(HC_NOW_NS, 0, 0, 0);
    while TURN.load(Ordering::SeqCst) < TURNS {
        if call(HC_NOW_NS, 0, 0, 0) - start > 10_000_000_000 {
            fail(format_args!("timed out waiting for vCPU 1's last turn"));
        }
    }
    let (tsc1, ns1) = (rdtsc(), call(HC_NOW_NS, 0, 0, 0));
    let [l1_before, l1_after, l2_first, l2_last, bad_exit, v1_ns0, v1_ns1] =
        V1.each_ref().map(|v| v.load(Ordering::SeqCst));
    let back = CROSS_BACK.load(Ordering::SeqCst);
    let own_back = OWN_BACK.each_ref().map(|v| v.load(Ordering::SeqCst));
    let own_step = OWN_STEP.each_ref().map(|v| v.load(Ordering::SeqCst));
    let across = FREEZE_STEP.load(Ordering::SeqCst);
    println!(
        "tsc: largest backwards step {back} ticks over {TURNS} handoffs between vCPU 0 (L1) \
         and vCPU 1 (L2, then L1), a 300 ms freeze at handoff {FREEZE_AT}; own backwards \
         steps {own_back:?}, largest own steps {own_step:?}, step across the freeze {across}"
    );
    check_eq!(freeze.load(Ordering::SeqCst), 0, "freeze hypercall result");
    check_eq!(bad_exit, 0, "vCPU 1's L2 exit (HLT expected; bit 63 set)");
    check_eq!(back, 0, "largest backwards TSC step between vCPUs (ticks)");
    check_eq!(
        own_back,
        [0; 3],
        "largest backwards step of vCPU 0's L1, vCPU 1's L2, vCPU 1's L1"
    );
    // Pause policy: over a stretch of L0's real time that includes the
    // freeze, each TSC advances at most by the time less the freeze (90 %
    // of it by the PIT; 1 ms of rounding). Real time, not a bound on one
    // step: a descheduled QEMU lengthens both alike.
    let unfrozen = |ns_from: u64, ns_to: u64| {
        ticks(((ns_to - ns_from) / 1000 + 1000).saturating_sub(FREEZE_US * 9 / 10))
    };
    check!(
        tsc1 - tsc0 <= unfrozen(ns0, ns1),
        "vCPU 0's L1 advanced {} ticks, {} unfrozen",
        tsc1 - tsc0,
        unfrozen(ns0, ns1)
    );
    check!(
        l2_last - l2_first <= unfrozen(v1_ns0, v1_ns1)
            && l1_after - l1_before <= unfrozen(v1_ns0, v1_ns1),
        "vCPU 1: L2 advanced {} ticks, its L1 {}, {} unfrozen",
        l2_last - l2_first,
        l1_after - l1_before,
        unfrozen(v1_ns0, v1_ns1)
    );
    check!(
        l2_first >= l1_before.wrapping_add(O12) && l2_last <= l1_after.wrapping_add(O12),
        "vCPU 1: L2 read {l2_first:#x}..{l2_last:#x}, its L1 {l1_before:#x}..{l1_after:#x} \
         before VMRUN and after the exit, o12 {O12:#x}"
    );
}

/// Real-mode code for the SIPI page (DS = 0 after INIT): stores CS, the
/// TSC and EFER's low half, counts its starts, then spins.
/// `mov ax, cs; mov [0x7000], ax; rdtsc; mov [0x7008], eax;
/// mov [0x700c], edx; mov ecx, 0xc0000080; rdmsr; mov [0x7010], eax;
/// inc word [0x7002]; jmp $`
const AP_CODE: [u8; 34] = [
    0x8C, 0xC8, 0xA3, 0x00, 0x70, 0x0F, 0x31, 0x66, 0xA3, 0x08, 0x70, 0x66, 0x89, 0x16, 0x0C, 0x70,
    0x66, 0xB9, 0x80, 0x00, 0x00, 0xC0, 0x0F, 0x32, 0x66, 0xA3, 0x10, 0x70, 0xFF, 0x06, 0x02, 0x70,
    0xEB, 0xFE,
];
const AP_PAGE: u64 = 0x8000;
const REPORT: u64 = 0x7000;

fn report<T: Copy>(offset: u64) -> T {
    // SAFETY: identity-mapped guest RAM below the image, which vCPU 1
    // writes in real mode; read volatile.
    unsafe { core::ptr::read_volatile((REPORT + offset) as *const T) }
}

/// INIT to a vCPU running L2 whose L1 does not intercept INIT (APM 15.x
/// "INIT Support"; KVM leaves nested mode, then resets): vCPU 1's L1 runs
/// an L2 (vmcb12 TSC offset 2^40) that spins; vCPU 0 sends it INIT, then a
/// SIPI. vCPU 1 leaves L2 and is reset: after the INIT L2 no longer runs
/// and the vCPU waits for the SIPI; then it starts once, in real mode at
/// the SIPI vector, with EFER clear and L1's TSC (not L2's: L0's controls
/// and L1's offset are back before the reset).
pub fn init_in_l2_without_intercept() {
    if apic_id() != 0 {
        let mut regs: Regs = setup(Task::QueueAndSpin, 0);
        crate::l1::vmcb().control.tsc_offset = O12;
        let (_, exit) = crate::l1::run(&mut regs);
        // Never: the INIT ends L1 too.
        fail(format_args!(
            "vCPU 1's L1 ran again after L2's exit {exit:#x}"
        ));
    }
    // SAFETY: low guest RAM that nothing else uses (guest_abi layout).
    unsafe {
        core::ptr::copy_nonoverlapping(AP_CODE.as_ptr(), AP_PAGE as *mut u8, AP_CODE.len());
        core::ptr::write_bytes(REPORT as *mut u8, 0, 0x20);
    }
    guest_stubs::lapic::map();
    guest_stubs::lapic::enable();
    let wait = |what: &str, cond: &dyn Fn() -> bool| {
        let start = call(HC_NOW_NS, 0, 0, 0);
        while !cond() {
            if call(HC_NOW_NS, 0, 0, 0) - start > 5_000_000_000 {
                fail(format_args!("timed out waiting for {what}"));
            }
        }
    };
    wait("vCPU 1's L2 to run", &|| crate::l2::result(0) > 1000);
    let send = |low: u32| {
        guest_stubs::lapic::write(0x310, 1 << 24);
        guest_stubs::lapic::write(0x300, low);
    };
    let before = rdtsc();
    send(0x4500); // INIT, level assert
                  // INIT alone: L2 stops, and the vCPU waits for a SIPI (20 ms of L0's
                  // clock: neither L2's spin count nor the SIPI code's count moves).
    let settle = || {
        let t = call(HC_NOW_NS, 0, 0, 0);
        while call(HC_NOW_NS, 0, 0, 0) - t < 20_000_000 {
            core::hint::spin_loop();
        }
    };
    settle();
    let spins = crate::l2::result(0);
    settle();
    check_eq!(crate::l2::result(0), spins, "L2's spin count after INIT");
    check_eq!(report::<u16>(2), 0, "vCPU 1's starts before the SIPI");
    send(0x4600 | (AP_PAGE >> 12) as u32); // Start-up
    wait("vCPU 1 to start at the SIPI vector", &|| {
        report::<u16>(2) >= 1
    });
    let after = rdtsc();
    let tsc = report::<u64>(8);
    check_eq!(report::<u16>(0), 0x0800, "vCPU 1's CS in real mode");
    check_eq!(report::<u16>(2), 1, "vCPU 1's starts");
    check_eq!(
        report::<u32>(0x10),
        0,
        "vCPU 1's EFER (low half) after INIT"
    );
    check!(
        before <= tsc && tsc <= after,
        "vCPU 1's TSC after INIT {tsc:#x}, vCPU 0 read {before:#x} and {after:#x} around \
         (L2's offset would add {O12:#x})"
    );
}
