//! The `tsc::*` self-test guest: measurements of the guest TSC, each
//! against a tolerance in TSC ticks derived from the frequency the
//! hypervisor reports in CPUID 0x4000_0010 (its PIT calibration).
//!
//! A test named `tsc::<name>::exiting` is the same test run with RDTSC
//! exiting instead of TSC offsetting (the hypervisor sets the mode).
//!
//! Under emulation the TSC follows host time, so a QEMU descheduled by a
//! busy host makes any interval longer. Each measurement is therefore
//! bracketed by L0's clock ([`HC_NOW_NS`]) and judged against what the
//! TSC rule predicts for the real time that passed; a run the clock shows
//! was disturbed is retried a bounded number of times (see [`timed`]).
#![no_std]
#![no_main]

use guest_stubs::cpu::{cpuid, has_rdtscp, rdmsr, rdtsc, rdtscp, wrmsr};
use guest_stubs::hypercall::call;
use guest_stubs::verdict::{fail, pass};
use guest_stubs::{check, check_eq, StartParams};
use svm::guest_abi::{
    HC_NOW_NS, HC_TSC_FREEZE_RESTORE, HC_TSC_SET_MODE, HC_TSC_SHIFT_HOST_BACK, HC_WAIT_PIT_US,
};

const IA32_TSC: u32 = 0x10;
const IA32_TSC_ADJUST: u32 = 0x3b;
const TSC_AUX: u32 = 0xc000_0103;

/// The freeze tests' wait.
const FREEZE_WAIT_US: u64 = 100_000;
/// A bracketed run that took this much real time beyond what it should
/// was disturbed (QEMU descheduled, or L0 code translated for the first
/// time) and is retried.
const DISTURBED_US: u64 = 2_000;
/// Runs of one measurement at most (the first plus the retries).
const TRIES: u32 = 8;
/// Rounding slack in a comparison with real time: the guest's frequency
/// and L0's clock come from the same calibration, so only the integer
/// conversions (µs, kHz) differ.
const SLACK_US: u64 = 20;

/// L0's clock, in microseconds (rounded down).
fn now_us() -> u64 {
    call(HC_NOW_NS, 0, 0, 0) / 1000
}

/// Runs `f` between two readings of L0's clock and returns its result with
/// the real time the run took in µs (rounded up). A run that took more
/// than `expect_us` + [`DISTURBED_US`] is repeated, up to [`TRIES`] runs.
/// The caller judges the returned run against the real time it took, so a
/// retry only tightens the measurement: it never turns a broken rule into
/// a pass.
fn timed<T>(expect_us: u64, mut f: impl FnMut() -> T) -> (T, u64) {
    let mut runs = 0;
    loop {
        let start = now_us();
        let result = f();
        let real = now_us() - start + 1;
        runs += 1;
        if real <= expect_us + DISTURBED_US || runs == TRIES {
            return (result, real);
        }
    }
}

/// At most the ticks of `real_us` of real time: the TSC cannot count faster
/// than time (or the test's readings jumped).
fn within_real(ticks: u64, real_us: u64) -> bool {
    ticks <= us(real_us + SLACK_US)
}

/// Ticks in `us` microseconds at the reported frequency.
fn us(us: u64) -> u64 {
    khz() * us / 1000
}

fn khz() -> u64 {
    let khz = u64::from(cpuid(0x4000_0010, 0)[0]);
    check!(khz != 0, "CPUID 0x40000010 reports no TSC frequency");
    khz
}

#[unsafe(no_mangle)]
fn guest_main(params: &'static StartParams) -> ! {
    let Some(name) = params.test_name() else {
        fail(format_args!("unreadable test name"))
    };
    let base = name.strip_suffix("::exiting").unwrap_or(name);
    match base {
        "tsc::starts_near_zero" => starts_near_zero(),
        "tsc::monotonic_rdtsc" => monotonic_rdtsc(),
        "tsc::rdmsr_matches_rdtsc" => rdmsr_matches_rdtsc(),
        "tsc::wrmsr_sets_value" => wrmsr_sets_value(),
        "tsc::wrmsr_moves_adjust" => wrmsr_moves_adjust(),
        "tsc::adjust_write_moves_tsc" => adjust_write_moves_tsc(),
        "tsc::adjust_read_back" => adjust_read_back(),
        "tsc::exiting_mode_matches_offset_mode" => exiting_mode_matches_offset_mode(),
        "tsc::backwards_host_is_hidden" => backwards_host_is_hidden(),
        "tsc::freeze_pause_policy" => freeze(0),
        "tsc::freeze_continue_policy" => freeze(1),
        "tsc::cpuid_frequency_leaf" => cpuid_frequency_leaf(),
        other => fail(format_args!("no tsc test named {other}")),
    }
    pass()
}

/// The TSC counts from 0 at VM creation: the first RDTSC is no more than
/// the real time since creation (L0's clock, read right after it; VM
/// set-up, and a descheduled QEMU, count on both).
fn starts_near_zero() {
    let first = rdtsc();
    let real = now_us() + 1;
    check!(
        within_real(first, real),
        "first RDTSC {first:#x} is more than the {real} us since VM creation ({:#x} ticks)",
        us(real)
    );
}

/// RDTSC and RDTSCP interleaved never go backwards.
fn monotonic_rdtsc() {
    let rdtscp_ok = has_rdtscp();
    let mut last = rdtsc();
    for i in 0..20_000u32 {
        let now = if rdtscp_ok && i % 2 == 1 {
            rdtscp().0
        } else {
            rdtsc()
        };
        check!(
            now >= last,
            "TSC went backwards at iteration {i}: {last:#x} then {now:#x}"
        );
        last = now;
    }
}

/// RDMSR(IA32_TSC) lies between two RDTSCs taken around it, which are no
/// further apart than the real time around them.
fn rdmsr_matches_rdtsc() {
    let ((a, m, b), real) = timed(0, || {
        let a = rdtsc();
        let m = rdmsr(IA32_TSC);
        (a, m, rdtsc())
    });
    check!(
        a <= m && m <= b,
        "RDMSR TSC {m:#x} not between RDTSCs {a:#x} and {b:#x}"
    );
    check!(
        within_real(b - a, real),
        "RDTSC-RDMSR-RDTSC took {} ticks, more than the {real} us that passed",
        b - a
    );
}

/// WRMSR(IA32_TSC, V): the TSC continues from V, by no more than the real
/// time around the write and the read.
fn wrmsr_sets_value() {
    let v = 1u64 << 40;
    let (t, real) = timed(0, || {
        wrmsr(IA32_TSC, v);
        rdtsc()
    });
    check!(
        t >= v && within_real(t - v, real),
        "after WRMSR TSC={v:#x}, RDTSC = {t:#x} ({real} us passed)"
    );
}

/// WRMSR(IA32_TSC) moves IA32_TSC_ADJUST by the same delta, less the real
/// time between the RDTSC and the WRMSR.
fn wrmsr_moves_adjust() {
    let d = 1u64 << 36;
    let (moved, real) = timed(0, || {
        let adj0 = rdmsr(IA32_TSC_ADJUST);
        let t0 = rdtsc();
        wrmsr(IA32_TSC, t0 + d);
        let moved = rdmsr(IA32_TSC_ADJUST).wrapping_sub(adj0);
        // Back to where this run started, so a retry measures the same.
        wrmsr(IA32_TSC_ADJUST, adj0);
        moved
    });
    check!(
        moved <= d && within_real(d - moved, real),
        "TSC_ADJUST moved by {moved:#x}, expected just under {d:#x} ({real} us passed)"
    );
}

/// Writing TSC_ADJUST moves the TSC by the difference, forwards and (with
/// wrap-around) backwards by 2^48.
fn adjust_write_moves_tsc() {
    let d = 1u64 << 36;
    let a0 = rdmsr(IA32_TSC_ADJUST);
    let ((t0, t1), real) = timed(0, || {
        let t0 = rdtsc();
        wrmsr(IA32_TSC_ADJUST, a0.wrapping_add(d));
        let t1 = rdtsc();
        wrmsr(IA32_TSC_ADJUST, a0);
        (t0, t1)
    });
    check!(
        t1 - t0 >= d && within_real(t1 - t0 - d, real),
        "TSC moved by {:#x}, expected {d:#x} ({real} us passed)",
        t1 - t0
    );
    let back = 1u64 << 48;
    wrmsr(IA32_TSC_ADJUST, a0.wrapping_add(d));
    let ((t1, t2), real) = timed(0, || {
        let t1 = rdtsc();
        wrmsr(IA32_TSC_ADJUST, a0.wrapping_add(d).wrapping_sub(back));
        let t2 = rdtsc();
        wrmsr(IA32_TSC_ADJUST, a0.wrapping_add(d));
        (t1, t2)
    });
    let moved = t2.wrapping_sub(t1).wrapping_add(back);
    check!(
        within_real(moved, real),
        "TSC_ADJUST -2^48 moved the TSC by {:#x} ({real} us passed)",
        t2.wrapping_sub(t1)
    );
}

/// TSC_ADJUST is advertised and reads back what was written.
fn adjust_read_back() {
    check!(
        cpuid(7, 0)[1] & 0b10 != 0,
        "CPUID.7.0:EBX[1] (TSC_ADJUST) not advertised"
    );
    check_eq!(rdmsr(IA32_TSC_ADJUST), 0, "TSC_ADJUST at start");
    for value in [0x1234_5678_9abc_def0u64, (1u64 << 48).wrapping_neg(), 0] {
        wrmsr(IA32_TSC_ADJUST, value);
        check_eq!(rdmsr(IA32_TSC_ADJUST), value, "TSC_ADJUST read back");
    }
}

/// Switching to RDTSC exiting and back keeps one timeline: offset-mode,
/// emulated and offset-mode reads are ordered and no further apart than
/// the real time around them. TSC_AUX reaches RDTSCP in both modes. One
/// run only: the self-test counts its RDTSC exits.
fn exiting_mode_matches_offset_mode() {
    wrmsr(TSC_AUX, 0x2a);
    let start = now_us();
    let a = rdtsc();
    check_eq!(call(HC_TSC_SET_MODE, 1, 0, 0), 0, "switch to exiting");
    let b = rdtsc();
    let (c, aux_exiting) = if has_rdtscp() {
        rdtscp()
    } else {
        (rdtsc(), 0x2a)
    };
    check_eq!(call(HC_TSC_SET_MODE, 0, 0, 0), 0, "switch to offsetting");
    let (d, aux_native) = if has_rdtscp() {
        rdtscp()
    } else {
        (rdtsc(), 0x2a)
    };
    let real = now_us() - start + 1;
    check!(
        a <= b && b <= c && c <= d,
        "not ordered: offset {a:#x}, exiting {b:#x} {c:#x}, offset {d:#x}"
    );
    check!(
        within_real(d - a, real),
        "timeline spread {} ticks, more than the {real} us that passed",
        d - a
    );
    check_eq!(
        (aux_exiting, aux_native),
        (0x2a, 0x2a),
        "TSC_AUX through RDTSCP (exiting, native)"
    );
}

/// The hypervisor's view of the host TSC jumps back by 2^40 ticks; the
/// guest sees no jump at all (no more than the real time that passed).
/// Four shifts in a row, each checked by the next native RDTSC: an exit
/// that lands between the hook and that RDTSC (the watchdog's) would
/// correct a missing compensation in time and hide it; four such exits
/// in a row do not happen.
fn backwards_host_is_hidden() {
    let start = now_us();
    let first = rdtsc();
    let mut last = first;
    for _ in 0..4 {
        let t1 = rdtsc();
        check_eq!(
            call(HC_TSC_SHIFT_HOST_BACK, 1 << 40, 0, 0),
            0,
            "shift hypercall"
        );
        let t2 = rdtsc();
        let t3 = rdmsr(IA32_TSC);
        check!(
            last <= t1 && t1 <= t2 && t2 <= t3,
            "TSC went backwards: {t1:#x}, {t2:#x}, RDMSR {t3:#x}"
        );
        last = t3;
    }
    let real = now_us() - start + 1;
    check!(
        within_real(last - first, real),
        "TSC jumped by {:#x} ticks in {real} us",
        last - first
    );
}

/// Freeze, wait 100 ms by the PIT, restore. Pause: the wait does not
/// show: the gap is at most the real time around the call less 90 ms.
/// Continue: it does: the gap is at least 90 ms and at most the real time
/// (the wait is timed by the PIT, the TSC frequency by a calibration
/// against it, which agree to well under 10 %).
fn freeze(policy: u64) {
    let ((t1, t2), real) = timed(FREEZE_WAIT_US, || {
        let t1 = rdtsc();
        check_eq!(
            call(HC_TSC_FREEZE_RESTORE, policy, FREEZE_WAIT_US, 0),
            0,
            "freeze hypercall"
        );
        (t1, rdtsc())
    });
    let gap = t2 - t1;
    let gap_us = gap * 1000 / khz();
    let frozen_min = FREEZE_WAIT_US * 9 / 10;
    if policy == 0 {
        check!(
            real > frozen_min && within_real(gap, real - frozen_min),
            "pause: {gap} ticks ({gap_us} us) passed in {real} us around a {FREEZE_WAIT_US} us freeze"
        );
    } else {
        check!(
            gap >= us(frozen_min) && within_real(gap, real),
            "continue: {gap} ticks ({gap_us} us) passed in {real} us around a {FREEZE_WAIT_US} us freeze"
        );
    }
}

/// CPUID 0x40000010 EAX is the TSC frequency: 50 ms by the PIT (a clock
/// independent of the TSC) take at least 95 % of that many kHz × 50 ticks,
/// and the ticks are at most 105 % of the real time around the wait by
/// L0's clock (which a descheduled QEMU lengthens, as it does the TSC).
fn cpuid_frequency_leaf() {
    check!(
        cpuid(0x4000_0000, 0)[0] >= 0x4000_0010,
        "hypervisor max leaf below 0x40000010"
    );
    let khz = khz();
    const WAIT_US: u64 = 50_000;
    let (ticks, real) = timed(WAIT_US, || {
        let t0 = rdtsc();
        check_eq!(call(HC_WAIT_PIT_US, WAIT_US, 0, 0), 0, "wait hypercall");
        rdtsc() - t0
    });
    let (lo, hi) = (us(WAIT_US) * 95 / 100, us(real) * 105 / 100);
    check!(
        ticks >= lo && ticks <= hi,
        "leaf says {khz} kHz; {ticks} ticks passed in a {WAIT_US} us PIT wait ({real} us real), expected {lo} to {hi}"
    );
}
