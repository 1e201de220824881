//! Unit and property tests of the TSC model. Expectations are stated in
//! terms of what a guest observes (its TSC at a given host TSC), not by
//! re-deriving the implementation's formulas.

use super::*;
use proptest::prelude::*;
use std::vec;
use std::vec::Vec;

const KHZ: u64 = 2_000_000; // 2 GHz
const NEG_2_48: u64 = (1u64 << 48).wrapping_neg();

#[test]
fn starts_at_zero_for_every_vcpu() {
    let vm = VmTsc::new(123_456_789, KHZ, TscMode::Offsetting);
    let vcpus = [VcpuTsc::default(); 4];
    for v in &vcpus {
        assert_eq!(vm.guest_tsc(v, 123_456_789), 0);
        assert_eq!(vm.guest_tsc(v, 123_456_789 + 1000), 1000);
    }
}

#[test]
fn offsets_wrap() {
    // Host near the top of the range, offset -(1 << 48).
    let host = u64::MAX - 5;
    let mut vm = VmTsc::new(0, KHZ, TscMode::Offsetting);
    let mut v = VcpuTsc::default();
    vm.observe_host(0);
    v.write_adjust(NEG_2_48);
    assert_eq!(vm.offset(&v), NEG_2_48);
    assert_eq!(vm.guest_tsc(&v, host), host - (1 << 48));
    // And a TSC write of a small value from a huge guest TSC wraps too.
    vm.write_tsc(&mut v, host, 7);
    assert_eq!(vm.guest_tsc(&v, host), 7);
    assert_eq!(vm.guest_tsc(&v, host.wrapping_add(10)), 17);
}

#[test]
fn tsc_write_sets_value_and_moves_adjust() {
    let vm = VmTsc::new(1000, KHZ, TscMode::Offsetting);
    let mut v = VcpuTsc::default();
    v.write_adjust(50);
    let before = vm.guest_tsc(&v, 5000); // 4050
    vm.write_tsc(&mut v, 5000, 1 << 40);
    assert_eq!(vm.guest_tsc(&v, 5000), 1 << 40);
    assert_eq!(
        v.adjust(),
        50u64.wrapping_add((1u64 << 40).wrapping_sub(before))
    );
}

#[test]
fn adjust_write_moves_tsc_by_the_difference() {
    let vm = VmTsc::new(0, KHZ, TscMode::Offsetting);
    let mut v = VcpuTsc::default();
    v.write_adjust(100);
    assert_eq!(vm.guest_tsc(&v, 1000), 1100);
    v.write_adjust(40);
    assert_eq!(vm.guest_tsc(&v, 1000), 1040);
    assert_eq!(v.adjust(), 40);
}

#[test]
fn adjust_restore_does_not_move_tsc() {
    let vm = VmTsc::new(0, KHZ, TscMode::Offsetting);
    let mut v = VcpuTsc::default();
    v.write_adjust(100);
    v.restore_adjust(7);
    assert_eq!(v.adjust(), 7);
    assert_eq!(vm.guest_tsc(&v, 1000), 1100);
}

#[test]
fn host_going_backwards_is_absorbed() {
    let mut vm = VmTsc::new(1_000, KHZ, TscMode::Offsetting);
    let v = VcpuTsc::default();
    assert_eq!(vm.observe_host(5_000), 0);
    let seen = vm.guest_tsc(&v, 5_000);
    assert_eq!(vm.observe_host(2_000), 3_000);
    assert_eq!(vm.guest_tsc(&v, 2_000), seen);
    assert_eq!(vm.guest_tsc(&v, 2_500), seen + 500);
}

#[test]
fn host_going_backwards_across_zero_is_absorbed() {
    // A host view just past 0 that jumps back below it (wrapping to the top).
    let mut vm = VmTsc::new(10, KHZ, TscMode::Offsetting);
    let v = VcpuTsc::default();
    let seen = vm.guest_tsc(&v, 100);
    vm.observe_host(100);
    let behind = 100u64.wrapping_sub(1 << 40);
    assert_eq!(vm.observe_host(behind), 1 << 40);
    assert_eq!(vm.guest_tsc(&v, behind), seen);
    // Forward across the wrap point is not "backwards".
    assert_eq!(vm.observe_host(behind.wrapping_add(1 << 41)), 0);
}

#[test]
fn freeze_pause_resumes_where_it_stopped() {
    let mut vm = VmTsc::new(10_000, KHZ, TscMode::Offsetting);
    let mut vcpus = [VcpuTsc::default(); 2];
    vcpus[1].write_adjust(NEG_2_48);
    let at_freeze: Vec<u64> = vcpus.iter().map(|v| vm.guest_tsc(v, 50_000)).collect();
    let state = vm.freeze(&vcpus, 50_000, 1_000_000);
    // A different machine: host TSC far lower, 3 s later.
    vm.restore(&mut vcpus, &state, RestorePolicy::Pause, 777, 3_001_000_000)
        .unwrap();
    let after: Vec<u64> = vcpus.iter().map(|v| vm.guest_tsc(v, 777)).collect();
    assert_eq!(after, at_freeze);
}

#[test]
fn freeze_continue_counts_the_elapsed_time() {
    let mut vm = VmTsc::new(10_000, KHZ, TscMode::Offsetting);
    let mut vcpus = [VcpuTsc::default(); 2];
    vcpus[0].write_adjust(5);
    let state = vm.freeze(&vcpus, 50_000, 1_000_000);
    let frozen: Vec<u64> = vcpus.iter().map(|v| vm.guest_tsc(v, 50_000)).collect();
    // 1.5 ms later at 2 GHz = 3_000_000 ticks, on a host whose TSC is elsewhere.
    vm.restore(
        &mut vcpus,
        &state,
        RestorePolicy::Continue,
        9_999_999,
        2_500_000,
    )
    .unwrap();
    for (v, f) in vcpus.iter().zip(&frozen) {
        assert_eq!(vm.guest_tsc(v, 9_999_999), f + 3_000_000);
    }
}

#[test]
fn restore_refuses_a_different_vcpu_count() {
    let mut vm = VmTsc::new(0, KHZ, TscMode::Offsetting);
    let state = vm.freeze(&[VcpuTsc::default(); 2], 0, 0);
    let mut three = [VcpuTsc::default(); 3];
    let err = vm
        .restore(&mut three, &state, RestorePolicy::Pause, 0, 0)
        .unwrap_err();
    assert_eq!(
        err,
        TscStateMismatch {
            recorded: 2,
            present: 3
        }
    );
}

#[test]
fn state_words_round_trip() {
    let vm = VmTsc::new(42, KHZ, TscMode::Exiting);
    let mut vcpus = [VcpuTsc::default(); 3];
    vcpus[2].write_adjust(NEG_2_48);
    let state = vm.freeze(&vcpus, 99, 1234);
    assert_eq!(TscState::from_words(&state.to_words()), Some(state));
    let mut bad = state.to_words();
    bad[0] = 2;
    assert_eq!(TscState::from_words(&bad), None);
}

#[test]
fn shift_moves_every_vcpu_by_the_delta() {
    let mut vm = VmTsc::new(1000, KHZ, TscMode::Offsetting);
    let mut vcpus = [VcpuTsc::default(); 2];
    vcpus[1].write_adjust(500);
    vm.shift(NEG_2_48);
    assert_eq!(vm.guest_tsc(&vcpus[0], 1000), NEG_2_48);
    assert_eq!(vm.guest_tsc(&vcpus[1], 1000), NEG_2_48.wrapping_add(500));
}

#[test]
fn frequency_is_kept() {
    assert_eq!(VmTsc::new(7, 2_596_142, TscMode::Exiting).khz(), 2_596_142);
}

#[test]
fn restore_takes_the_most_vcpus_a_state_holds() {
    let mut vm = VmTsc::new(0, KHZ, TscMode::Offsetting);
    let mut vcpus = [VcpuTsc::default(); MAX_VCPUS];
    vcpus[MAX_VCPUS - 1].write_adjust(9);
    let state = vm.freeze(&vcpus, 100, 0);
    let mut back = [VcpuTsc::default(); MAX_VCPUS];
    vm.restore(&mut back, &state, RestorePolicy::Pause, 100, 0)
        .unwrap();
    assert_eq!(back, vcpus);
    // A hand-made state for more vCPUs than a state holds is refused.
    let mut big = state;
    big.vcpu_count = MAX_VCPUS as u64 + 1;
    let mut nine = [VcpuTsc::default(); MAX_VCPUS + 1];
    assert!(vm
        .restore(&mut nine, &big, RestorePolicy::Pause, 100, 0)
        .is_err());
}

/// The serialized layout is a format (version 1): six header words, then
/// `(A_i, F_i)` for each of the `MAX_VCPUS` slots.
#[test]
fn state_words_layout() {
    assert_eq!(STATE_WORDS, 6 + 2 * MAX_VCPUS);
    let vm = VmTsc::new(0, KHZ, TscMode::Offsetting);
    let mut vcpus = [VcpuTsc::default(); MAX_VCPUS];
    vcpus[MAX_VCPUS - 1].restore_adjust(0xa);
    vcpus[MAX_VCPUS - 1].write_adjust(0xb);
    let w = vm.freeze(&vcpus, 1, 2).to_words();
    assert_eq!(w.len(), 22);
    assert_eq!((w[0], w[1], w[2], w[5]), (1, 1, 2, MAX_VCPUS as u64));
    assert_eq!(
        (w[20], w[21]),
        (0xb, 1),
        "last slot: A = 0xb, F = 0xb - 0xa"
    );
    assert!(TscState::from_words(&w).is_some(), "a full state parses");
    let mut too_many = w;
    too_many[5] = MAX_VCPUS as u64 + 1;
    assert_eq!(TscState::from_words(&too_many), None);
}

#[test]
fn time_conversions() {
    assert_eq!(ns_to_ticks(1_000_000_000, KHZ), 2_000_000_000);
    assert_eq!(ticks_to_ns(2_000_000_000, KHZ), 1_000_000_000);
    assert_eq!(ticks_to_ns(5, 0), 0);
    // No overflow for a day at 5 GHz.
    assert_eq!(
        ns_to_ticks(86_400 * 1_000_000_000, 5_000_000),
        86_400 * 5_000_000_000
    );
}

/// One step of a random history.
#[derive(Clone, Debug)]
enum Op {
    /// The host TSC moves forward.
    Advance(u64),
    /// The host TSC jumps backwards (another CPU, a host TSC write).
    Backwards(u64),
    WriteTsc(usize, u64),
    WriteAdjust(usize, u64),
    RestoreAdjust(usize, u64),
    /// Freeze, then restore `gap` ticks / `gap_ns` later with a host TSC moved by `jump`.
    FreezeRestore {
        policy: RestorePolicy,
        jump: u64,
        gap_ns: u64,
    },
}

fn op(vcpus: usize) -> impl Strategy<Value = Op> {
    let value = prop_oneof![any::<u64>(), Just(NEG_2_48), 0u64..1_000_000];
    prop_oneof![
        (1u64..1_000_000_000).prop_map(Op::Advance),
        (1u64..1_000_000_000).prop_map(Op::Backwards),
        (0..vcpus, value.clone()).prop_map(|(i, v)| Op::WriteTsc(i, v)),
        (0..vcpus, value.clone()).prop_map(|(i, v)| Op::WriteAdjust(i, v)),
        (0..vcpus, value).prop_map(|(i, v)| Op::RestoreAdjust(i, v)),
        (any::<bool>(), any::<u64>(), 0u64..10_000_000_000).prop_map(|(pause, jump, gap_ns)| {
            Op::FreezeRestore {
                policy: if pause {
                    RestorePolicy::Pause
                } else {
                    RestorePolicy::Continue
                },
                jump,
                gap_ns,
            }
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// For any history, each step has exactly its architectural effect on
    /// what the guests see and leaves the other vCPUs alone.
    #[test]
    fn any_history_keeps_the_formulas(
        n in 1usize..=4,
        start in any::<u64>(),
        ops in proptest::collection::vec(op(4), 1..60),
    ) {
        let mut host = start;
        let mut ns = 0u64;
        let mut vm = VmTsc::new(host, KHZ, TscMode::Offsetting);
        let mut vcpus = vec![VcpuTsc::default(); n];
        for v in &vcpus {
            prop_assert_eq!(vm.guest_tsc(v, host), 0);
        }
        for op in ops {
            let before: Vec<u64> = vcpus.iter().map(|v| vm.guest_tsc(v, host)).collect();
            let adjust_before: Vec<u64> = vcpus.iter().map(|v| v.adjust()).collect();
            let mut expected = before.clone();
            let mut expected_adjust = adjust_before.clone();
            match op {
                Op::Advance(d) => {
                    host = host.wrapping_add(d);
                    ns += ticks_to_ns(d, KHZ);
                    vm.observe_host(host);
                    expected.iter_mut().for_each(|t| *t = t.wrapping_add(d));
                }
                Op::Backwards(d) => {
                    let new_host = host.saturating_sub(d);
                    vm.observe_host(new_host);
                    host = new_host;
                    // Nobody's TSC moves at all.
                }
                Op::WriteTsc(i, v) => {
                    let i = i % n;
                    vm.write_tsc(&mut vcpus[i], host, v);
                    expected[i] = v;
                    expected_adjust[i] = adjust_before[i].wrapping_add(v.wrapping_sub(before[i]));
                }
                Op::WriteAdjust(i, a) => {
                    let i = i % n;
                    vcpus[i].write_adjust(a);
                    expected[i] = before[i].wrapping_add(a.wrapping_sub(adjust_before[i]));
                    expected_adjust[i] = a;
                }
                Op::RestoreAdjust(i, a) => {
                    let i = i % n;
                    vcpus[i].restore_adjust(a);
                    expected_adjust[i] = a;
                }
                Op::FreezeRestore { policy, jump, gap_ns } => {
                    let state = TscState::from_words(&vm.freeze(&vcpus, host, ns).to_words()).unwrap();
                    host = host.wrapping_add(jump);
                    ns += gap_ns;
                    vm.restore(&mut vcpus, &state, policy, host, ns).unwrap();
                    let extra = match policy {
                        RestorePolicy::Pause => 0,
                        RestorePolicy::Continue => gap_ns as u128 * KHZ as u128 / 1_000_000,
                    } as u64;
                    expected.iter_mut().for_each(|t| *t = t.wrapping_add(extra));
                }
            }
            let now: Vec<u64> = vcpus.iter().map(|v| vm.guest_tsc(v, host)).collect();
            prop_assert_eq!(&now, &expected);
            let adjusts: Vec<u64> = vcpus.iter().map(|v| v.adjust()).collect();
            prop_assert_eq!(&adjusts, &expected_adjust);
            // (That every vCPU shares one base offset is structural: VmTsc
            // holds a single base, and each vCPU only its own share.)
        }
    }
}
