//! Physical CPUs whose TSCs differ (ISSUE12 item 3): one host clock for
//! every CPU, so a VM's offsets mean the same wherever its vCPUs run.
//!
//! CPU `c`'s TSC is `R_c = R_0 + s_c` (`s_c`: its skew to the boot CPU).
//! At boot the kernel measures `s_c` as `m_c ± e_c` (`smp::tsc_sync`: the
//! skew lies in `[m_c - e_c, m_c + e_c]`) and from then on reads the host
//! TSC on CPU `c` in the boot CPU's time base: `R_c - k_c`, with the
//! compensation `k_c` of [`compensation`]. The hypervisor's view of the
//! host TSC adds its test shift `K` (`time::host_tsc`): `H = R_c - k_c + K`
//! ([`HostClock::view`]). A vCPU whose model offset is `O`
//! ([`crate::tsc::VmTsc::offset`]) must read `H + O`; the CPU adds the VMCB
//! offset to `R_c`, so the VMCB gets `O + K - k_c` ([`HostClock::vmcb_offset`]:
//! the L1 offset; L2's is composed from it, seed 000). Every L0 reading of
//! the host TSC for a guest (emulated RDTSC, RDMSR of the TSC, the
//! backwards check, freeze and restore) goes through the same view, so the
//! emulated and the hardware TSC agree on every CPU.
//!
//! With `k_c = s_c` exactly, vCPUs on different CPUs read one TSC. What is
//! left is the residual `s_c - k_c`: a guest reading the TSC on vCPU A and
//! then on vCPU B sees it go backwards only if the handoff between the two
//! reads took fewer ticks than `res_A - res_B`.

/// The compensation for a skew measured as `measured ± error` ticks: the
/// measured value, or 0 when the window contains 0 (`|measured| <= error`).
///
/// Why 0 inside the window: CPUs whose TSCs are synchronized (invariant
/// TSCs reset together: the common case, and always so under QEMU TCG) are
/// indistinguishable from ones skewed by less than the error. Compensating
/// such noise would skew truly synchronized CPUs by up to `error` ticks,
/// which a fast cross-CPU handoff then sees as a backwards step; leaving
/// it keeps them exact. Outside the window the skew is real, and the
/// window's middle is the estimate whose worst residual (`error`) is the
/// smallest; inside it the residual is at most `2 * error`.
pub fn compensation(measured: i64, error: u64) -> i64 {
    if measured.unsigned_abs() <= error {
        0
    } else {
        measured
    }
}

/// One CPU's host clock as the hypervisor uses it: its compensation and
/// the hypervisor-wide test shift.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostClock {
    /// `k_c`: subtracted from the CPU's TSC ([`compensation`]).
    pub compensation: i64,
    /// `K`: the test hook's shift of the hypervisor's view (0 normally).
    pub shift: u64,
}

impl HostClock {
    /// The CPU's TSC `cpu_tsc` in the boot CPU's time base (`R_c - k_c`).
    pub fn reference(&self, cpu_tsc: u64) -> u64 {
        cpu_tsc.wrapping_sub(self.compensation as u64)
    }

    /// The hypervisor's view of the host TSC (`R_c - k_c + K`): what the
    /// VM's TSC model is computed against.
    pub fn view(&self, cpu_tsc: u64) -> u64 {
        self.reference(cpu_tsc).wrapping_add(self.shift)
    }

    /// The VMCB offset for model offset `model` (`O + K - k_c`): the CPU
    /// adds it to its own TSC and the guest reads `view + model`.
    pub fn vmcb_offset(&self, model: u64) -> u64 {
        model
            .wrapping_add(self.shift)
            .wrapping_sub(self.compensation as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn noise_within_the_window_is_not_compensated() {
        assert_eq!(compensation(0, 0), 0);
        assert_eq!(compensation(900, 950), 0);
        assert_eq!(compensation(-950, 950), 0);
        assert_eq!(compensation(951, 950), 951);
        assert_eq!(compensation(-951, 950), -951);
        assert_eq!(compensation(1 << 32, 950), 1 << 32);
        assert_eq!(compensation(i64::MIN, u64::MAX), 0);
        assert_eq!(compensation(i64::MIN, 0), i64::MIN);
    }

    #[test]
    fn an_ahead_cpu_reads_the_boot_cpus_time() {
        // CPU 1's TSC is 2^32 ahead; at boot CPU time 1000 it reads 2^32 + 1000.
        let c1 = HostClock {
            compensation: compensation(1 << 32, 100),
            shift: 0,
        };
        assert_eq!(c1.reference((1 << 32) + 1000), 1000);
        // A vCPU with model offset -1000 reads 0 there, on either CPU.
        let model = 1000u64.wrapping_neg();
        assert_eq!(((1u64 << 32) + 1000).wrapping_add(c1.vmcb_offset(model)), 0);
        assert_eq!(
            1000u64.wrapping_add(HostClock::default().vmcb_offset(model)),
            0
        );
    }

    proptest! {
        /// The hardware (CPU TSC + VMCB offset) and L0's emulation (view +
        /// model offset) give the guest the same TSC, whatever the clock.
        #[test]
        fn hardware_and_emulation_agree(
            tsc in any::<u64>(), model in any::<u64>(),
            comp in any::<i64>(), shift in any::<u64>(),
        ) {
            let c = HostClock { compensation: comp, shift };
            prop_assert_eq!(
                tsc.wrapping_add(c.vmcb_offset(model)),
                c.view(tsc).wrapping_add(model)
            );
        }

        /// A skew measured exactly (or within an error smaller than it) is
        /// gone: at one instant, a vCPU reads within `error` of the same TSC
        /// on the boot CPU and on the skewed CPU, in hardware and emulated.
        #[test]
        fn measured_skew_is_compensated(
            t0 in any::<u64>(), model in any::<u64>(), shift in any::<u64>(),
            skew in any::<i64>(), miss in -1000i64..=1000, error in 0u64..=1000,
        ) {
            prop_assume!(skew.unsigned_abs() > 4000);
            let miss = miss.clamp(-(error as i64), error as i64);
            let measured = skew.wrapping_add(miss);
            let boot = HostClock { compensation: 0, shift };
            let cpu = HostClock { compensation: compensation(measured, error), shift };
            let on_boot = t0.wrapping_add(boot.vmcb_offset(model));
            let tc = t0.wrapping_add(skew as u64);
            let on_cpu = tc.wrapping_add(cpu.vmcb_offset(model));
            prop_assert!(on_cpu.wrapping_sub(on_boot) as i64 == -miss);
            prop_assert_eq!(cpu.view(tc).wrapping_add(model), on_cpu);
        }

        /// Whatever the true skew in a measured window, the residual is at
        /// most `2 * error` (at most `error` when the window excludes 0), so
        /// handoffs slower than the two CPUs' residuals never go backwards.
        #[test]
        fn residual_is_bounded_and_handoffs_stay_monotonic(
            lo in -100_000i64..100_000, width in 0i64..5000, at in 0.0f64..=1.0,
            t in 0u64..(1 << 62), handoff in 0u64..50_000,
        ) {
            let hi = lo + width;
            let skew = lo + ((width as f64) * at) as i64;
            let (m, e) = (lo / 2 + hi / 2, ((hi - lo) / 2) as u64);
            // The window's middle and half width, as `smp::tsc_sync` gives them.
            prop_assume!(m - e as i64 <= skew && skew <= m + e as i64 + 1);
            let k = compensation(m, e);
            let residual = (skew - k).unsigned_abs();
            let bound = if (m.unsigned_abs()) <= e { 2 * e + 1 } else { e + 1 };
            prop_assert!(residual <= bound, "residual {} bound {}", residual, bound);
            // A vCPU on the boot CPU reads at t, one on the skewed CPU
            // `handoff` ticks later (the same model offset on both).
            let cpu = HostClock { compensation: k, shift: 0 };
            let a = t;
            let b = cpu.view(t.wrapping_add(handoff).wrapping_add(skew as u64));
            if handoff > residual {
                prop_assert!(b > a);
            }
        }
    }
}
