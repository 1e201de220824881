//! Time-slicing vCPUs on physical CPUs (`hv::vmm::multi`): where each vCPU
//! runs and which of a CPU's vCPUs runs next.
//!
//! Placement is fixed (vCPUs do not migrate): vCPU i on online CPU
//! i mod CPUs, so with at least as many CPUs as vCPUs each has its own. A
//! CPU runs its vCPUs round-robin; a vCPU gives up the CPU when it would
//! wait (a HLT only another vCPU or its timer can end, waiting for a SIPI)
//! and when its time slice ends. A waiting vCPU is picked again once what
//! it waits for has come.

/// The online CPU (0-based, among `cpus`) that runs vCPU `vcpu`.
pub fn placement(vcpu: usize, cpus: usize) -> usize {
    vcpu % cpus.max(1)
}

/// What a vCPU that gave up its CPU waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Nothing: its slice ended (it is runnable).
    Slice,
    /// A HLT: an event from another vCPU, or the clock reaching `until`
    /// (its APIC timer's deadline, or the end of the HLT's wait slice).
    Halt {
        /// Host nanoseconds.
        until: u64,
    },
    /// A Start-up IPI (or any other event: the vCPU looks and may wait again).
    Sipi,
    /// It stopped: never runs again.
    Stopped,
}

/// Whether a vCPU waiting for `wait` may run: `event` says another vCPU
/// posted it something (its inbox), `now` is the host clock (ns).
pub fn ready(wait: Wait, event: bool, now: u64) -> bool {
    match wait {
        Wait::Slice => true,
        Wait::Halt { until } => event || now >= until,
        Wait::Sipi => event,
        Wait::Stopped => false,
    }
}

/// The vCPU (an index below `n`) to run after `last`: the first ready one
/// in round-robin order after `last`, `last` itself only when no other is
/// ready; `None` when none is.
pub fn pick(last: usize, n: usize, mut ready: impl FnMut(usize) -> bool) -> Option<usize> {
    (1..=n).map(|k| (last + k) % n).find(|&i| ready(i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    #[test]
    fn placement_spreads_round_robin() {
        assert_eq!(
            (0..4).map(|v| placement(v, 4)).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        assert_eq!(
            (0..5).map(|v| placement(v, 2)).collect::<Vec<_>>(),
            [0, 1, 0, 1, 0]
        );
        assert_eq!(placement(3, 1), 0);
        assert_eq!(placement(3, 0), 0, "no CPU count: everything on the first");
    }

    #[test]
    fn readiness() {
        assert!(ready(Wait::Slice, false, 0));
        assert!(!ready(Wait::Halt { until: 10 }, false, 9));
        assert!(ready(Wait::Halt { until: 10 }, false, 10));
        assert!(ready(Wait::Halt { until: 10 }, true, 0));
        assert!(!ready(Wait::Sipi, false, u64::MAX));
        assert!(ready(Wait::Sipi, true, 0));
        assert!(!ready(Wait::Stopped, true, u64::MAX));
    }

    #[test]
    fn pick_is_round_robin_and_skips_waiting() {
        let all = |_| true;
        assert_eq!(pick(0, 3, all), Some(1));
        assert_eq!(pick(2, 3, all), Some(0));
        // The last one runs again only when nobody else can.
        assert_eq!(pick(1, 3, |i| i == 1), Some(1));
        assert_eq!(pick(1, 3, |i| i != 2), Some(0));
        assert_eq!(pick(0, 3, |_| false), None);
        assert_eq!(pick(0, 1, all), Some(0));
    }

    #[test]
    fn every_ready_vcpu_gets_a_turn() {
        // Three runnable vCPUs: any three consecutive picks run all three.
        let mut last = 0;
        let mut seen = [0u32; 3];
        for _ in 0..30 {
            last = pick(last, 3, |_| true).unwrap();
            seen[last] += 1;
        }
        assert_eq!(seen, [10, 10, 10]);
    }
}
