//! The `tsc::*` self-test guest: measurements of the guest TSC, each
//! against a tolerance in TSC ticks derived from the frequency the
//! hypervisor reports in CPUID 0x4000_0010 (its PIT calibration).
//!
//! A test named `tsc::<name>::exiting` is the same test run with RDTSC
//! exiting instead of TSC offsetting (the hypervisor sets the mode).
#![no_std]
#![no_main]

use guest_stubs::cpu::{cpuid, has_rdtscp, rdmsr, rdtsc, rdtscp, wrmsr};
use guest_stubs::hypercall::call;
use guest_stubs::verdict::{fail, pass};
use guest_stubs::{check, check_eq, StartParams};
use svm::guest_abi::{
    HC_TSC_FREEZE_RESTORE, HC_TSC_SET_MODE, HC_TSC_SHIFT_HOST_BACK, HC_WAIT_PIT_US,
};

const IA32_TSC: u32 = 0x10;
const IA32_TSC_ADJUST: u32 = 0x3b;
const TSC_AUX: u32 = 0xc000_0103;

/// Tolerance for "no time to speak of passed" between two guest reads with
/// a few exits in between: 25 ms. Far above the microseconds it takes, so a
/// busy host descheduling QEMU does not fail the test, and far below the
/// 2^36-tick moves and 100 ms waits the tests look for.
const SMALL_US: u64 = 25_000;
/// The freeze tests' wait.
const FREEZE_WAIT_US: u64 = 100_000;

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

/// The TSC counts from 0 at VM creation. Tolerance 50 ms: VM set-up
/// (loading the image, writing the VMCB) happens after creation, and takes
/// far less even under emulation.
fn starts_near_zero() {
    let first = rdtsc();
    let limit = us(50_000);
    check!(
        first < limit,
        "first RDTSC {first:#x} not within 50 ms ({limit:#x} ticks) of 0"
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

/// RDMSR(IA32_TSC) lies between two RDTSCs taken around it, all within
/// SMALL_US (one exit each way).
fn rdmsr_matches_rdtsc() {
    let a = rdtsc();
    let m = rdmsr(IA32_TSC);
    let b = rdtsc();
    check!(
        a <= m && m <= b,
        "RDMSR TSC {m:#x} not between RDTSCs {a:#x} and {b:#x}"
    );
    check!(
        b - a < us(SMALL_US),
        "RDTSC-RDMSR-RDTSC took {} ticks (> {SMALL_US} us = {} ticks)",
        b - a,
        us(SMALL_US)
    );
}

/// WRMSR(IA32_TSC, V): the TSC continues from V (within SMALL_US).
/// Up to three tries: the first WRMSR exit of a boot can run L0 code QEMU
/// has not translated yet (tens of ms of host time under TCG, which the
/// TSC counts); a broken write rule fails every try.
fn wrmsr_sets_value() {
    let v = 1u64 << 40;
    let mut t = 0;
    for _ in 0..3 {
        wrmsr(IA32_TSC, v);
        t = rdtsc();
        if t >= v && t - v < us(SMALL_US) {
            return;
        }
    }
    fail(format_args!(
        "after WRMSR TSC={v:#x}, RDTSC = {t:#x} (3 tries)"
    ))
}

/// WRMSR(IA32_TSC) moves IA32_TSC_ADJUST by the same delta (within the
/// SMALL_US between the RDTSC and the WRMSR).
fn wrmsr_moves_adjust() {
    let d = 1u64 << 36;
    let adj0 = rdmsr(IA32_TSC_ADJUST);
    let t0 = rdtsc();
    wrmsr(IA32_TSC, t0 + d);
    let moved = rdmsr(IA32_TSC_ADJUST).wrapping_sub(adj0);
    check!(
        moved <= d && d - moved < us(SMALL_US),
        "TSC_ADJUST moved by {moved:#x}, expected just under {d:#x}"
    );
}

/// Writing TSC_ADJUST moves the TSC by the difference, forwards and (with
/// wrap-around) backwards by 2^48.
fn adjust_write_moves_tsc() {
    let d = 1u64 << 36;
    let a0 = rdmsr(IA32_TSC_ADJUST);
    let t0 = rdtsc();
    wrmsr(IA32_TSC_ADJUST, a0.wrapping_add(d));
    let t1 = rdtsc();
    check!(
        t1 - t0 >= d && t1 - t0 - d < us(SMALL_US),
        "TSC moved by {:#x}, expected {d:#x}",
        t1 - t0
    );
    let back = 1u64 << 48;
    wrmsr(IA32_TSC_ADJUST, a0.wrapping_add(d).wrapping_sub(back));
    let t2 = rdtsc();
    let moved = t2.wrapping_sub(t1).wrapping_add(back);
    check!(
        moved < us(SMALL_US),
        "TSC_ADJUST -2^48 moved the TSC by {:#x}",
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
/// emulated and offset-mode reads are ordered and within SMALL_US. TSC_AUX
/// reaches RDTSCP in both modes.
fn exiting_mode_matches_offset_mode() {
    wrmsr(TSC_AUX, 0x2a);
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
    check!(
        a <= b && b <= c && c <= d,
        "not ordered: offset {a:#x}, exiting {b:#x} {c:#x}, offset {d:#x}"
    );
    check!(
        d - a < us(SMALL_US),
        "timeline spread {} ticks (> {SMALL_US} us = {} ticks)",
        d - a,
        us(SMALL_US)
    );
    check_eq!(
        (aux_exiting, aux_native),
        (0x2a, 0x2a),
        "TSC_AUX through RDTSCP (exiting, native)"
    );
}

/// The hypervisor's view of the host TSC jumps back by 2^40 ticks; the
/// guest sees no jump at all (within SMALL_US).
fn backwards_host_is_hidden() {
    let t1 = rdtsc();
    check_eq!(
        call(HC_TSC_SHIFT_HOST_BACK, 1 << 40, 0, 0),
        0,
        "shift hypercall"
    );
    let t2 = rdtsc();
    let t3 = rdmsr(IA32_TSC);
    check!(
        t1 <= t2 && t2 <= t3,
        "TSC went backwards: {t1:#x}, {t2:#x}, RDMSR {t3:#x}"
    );
    check!(t3 - t1 < us(SMALL_US), "TSC jumped by {:#x} ticks", t3 - t1);
}

/// Freeze, wait 100 ms by the PIT, restore. Pause: the 100 ms do not show
/// (less than SMALL_US passes). Continue: they do (90 ms to 100 ms +
/// SMALL_US: the wait is timed by the PIT, the TSC frequency by a
/// calibration against it, which agree to well under 10 %).
fn freeze(policy: u64) {
    let t1 = rdtsc();
    check_eq!(
        call(HC_TSC_FREEZE_RESTORE, policy, FREEZE_WAIT_US, 0),
        0,
        "freeze hypercall"
    );
    let t2 = rdtsc();
    let gap = t2 - t1;
    if policy == 0 {
        check!(
            gap < us(SMALL_US),
            "pause: {gap} ticks passed ({} us)",
            gap * 1000 / khz()
        );
    } else {
        let (lo, hi) = (us(FREEZE_WAIT_US * 9 / 10), us(FREEZE_WAIT_US + SMALL_US));
        check!(
            gap >= lo && gap <= hi,
            "continue: {gap} ticks passed ({} us)",
            gap * 1000 / khz()
        );
    }
}

/// CPUID 0x40000010 EAX is the TSC frequency: 50 ms by the PIT (a clock
/// independent of the TSC) take that many kHz × 50 ticks, within 5 %. A
/// busy host can only add ticks (QEMU descheduled around the wait), never
/// remove them, so the least of three measurements is the one compared.
fn cpuid_frequency_leaf() {
    check!(
        cpuid(0x4000_0000, 0)[0] >= 0x4000_0010,
        "hypervisor max leaf below 0x40000010"
    );
    let khz = khz();
    let measure = || {
        let t0 = rdtsc();
        check_eq!(call(HC_WAIT_PIT_US, 50_000, 0, 0), 0, "wait hypercall");
        (rdtsc() - t0) / 50
    };
    let measured = (0..3).map(|_| measure()).min().unwrap_or(0);
    check!(
        measured.abs_diff(khz) < khz / 20,
        "leaf says {khz} kHz, 50 ms by the PIT measured {measured} kHz"
    );
}
