//! TSC offsets while nested (seed 000), in AMD's convention (guest TSC =
//! host TSC + offset, wrapping).
//!
//! - VMRUN: the active VMCB runs L2 with `L1 offset + vmcb12 offset`
//!   ([`compose`]); hsave keeps the L1 offset.
//! - #VMEXIT: the active offset comes back by copying hsave's; it is never
//!   computed by subtracting vmcb12's offset.
//! - L0 changes L1's offset to `L1'` while L2 runs
//!   ([`l1_offset_changed_while_nested`]): hsave gets `L1'` and the live L2
//!   VMCB the same delta, so `active = L1' + vmcb12 offset` and the next
//!   exit hands L1 its new offset.
//!
//! The TSC L2 sees is therefore `host + L1 + o12` whenever it runs, and
//! L0's own reads of L1's TSC while nested use the L1 offset (hsave's),
//! never the active VMCB's.
//!
//! The kernel programs L1's offset only when it changes it, through
//! [`program_l1_offset`]; nothing recomputes it before an entry, so the
//! copy back from hsave is what L1 runs with after a nested #VMEXIT.

/// The L2 offset for L1 offset `l1` and vmcb12 offset `o12`.
pub fn compose(l1: u64, o12: u64) -> u64 {
    l1.wrapping_add(o12)
}

/// L0 sets L1's offset to `new_l1` while L2 runs in the active VMCB: hsave
/// takes the new L1 offset and the active (L2) offset moves by the same
/// delta.
pub fn l1_offset_changed_while_nested(
    hsave_offset: &mut u64,
    active_offset: &mut u64,
    new_l1: u64,
) {
    let delta = new_l1.wrapping_sub(*hsave_offset);
    *hsave_offset = new_l1;
    *active_offset = active_offset.wrapping_add(delta);
}

/// The one way L0 programs a new L1 offset `new_l1`, at the moment it
/// changes it: while L2 runs (`hsave_offset` given) through
/// [`l1_offset_changed_while_nested`], else straight into the active VMCB.
pub fn program_l1_offset(new_l1: u64, active_offset: &mut u64, hsave_offset: Option<&mut u64>) {
    match hsave_offset {
        Some(hsave) => l1_offset_changed_while_nested(hsave, active_offset, new_l1),
        None => *active_offset = new_l1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nested::vmexit::restore_l1;
    use crate::tsc::{RestorePolicy, TscMode, VcpuTsc, VmTsc};
    use crate::Vmcb;
    use proptest::prelude::*;
    use std::boxed::Box;

    #[test]
    fn seed_scenario() {
        // L1 at offset L, L2 at L + o; L0 moves L1 to L' while L2 runs.
        let (l, o, l_new) = (1000u64.wrapping_neg(), 1u64 << 40, 5000u64);
        let mut hsave = l;
        let mut active = compose(l, o);
        l1_offset_changed_while_nested(&mut hsave, &mut active, l_new);
        assert_eq!(hsave, l_new);
        assert_eq!(active, compose(l_new, o));
    }

    /// A step of a random history of one vCPU with an L1 hypervisor.
    #[derive(Clone, Debug)]
    enum Op {
        Advance(u64),
        Backwards(u64),
        /// L1 runs L2 with this vmcb12 offset (ignored if L2 runs already).
        Vmrun(u64),
        /// A nested #VMEXIT (ignored if L1 runs).
        Vmexit,
        /// IA32_TSC := value, by L1 or by L2 through L0 (both set L1's TSC).
        WriteTsc(u64),
        WriteAdjust(u64),
        /// L0 moves the VM's TSC (HC_TSC_MOVE_L1).
        Shift(u64),
        FreezeRestore(bool, u64, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        let v = prop_oneof![
            any::<u64>(),
            Just((1u64 << 48).wrapping_neg()),
            0u64..1_000_000
        ];
        prop_oneof![
            (1u64..1 << 32).prop_map(Op::Advance),
            (1u64..1 << 32).prop_map(Op::Backwards),
            v.clone().prop_map(Op::Vmrun),
            Just(Op::Vmexit),
            v.clone().prop_map(Op::WriteTsc),
            v.clone().prop_map(Op::WriteAdjust),
            v.prop_map(Op::Shift),
            (any::<bool>(), any::<u64>(), 0u64..1 << 40)
                .prop_map(|(p, j, g)| Op::FreezeRestore(p, j, g)),
        ]
    }

    /// The active VMCB, hsave, and vmcb12's offset while L2 runs.
    struct Cpu {
        active: Box<Vmcb>,
        hsave: Box<Vmcb>,
        o12: Option<u64>,
    }

    impl Cpu {
        /// What the kernel does the moment it changes L1's offset
        /// (hv/src/vmm/tsc.rs `l1_offset_changed`).
        fn program(&mut self, vm: &VmTsc, vcpu: &VcpuTsc) {
            let hsave = self
                .o12
                .is_some()
                .then_some(&mut self.hsave.control.tsc_offset);
            program_l1_offset(vm.offset(vcpu), &mut self.active.control.tsc_offset, hsave);
        }

        /// A host TSC reading (hv/src/vmm/tsc.rs `observe`): a backwards
        /// host TSC is absorbed into L1's offset and programmed at once.
        fn observe(&mut self, vm: &mut VmTsc, vcpu: &VcpuTsc, host: u64) {
            if vm.observe_host(host) != 0 {
                self.program(vm, vcpu);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// For any interleaving, programmed the way the kernel does it (L1's
        /// offset programmed only when L0 changes it, through
        /// [`program_l1_offset`]; [`compose`] at VMRUN; [`restore_l1`]'s
        /// copy at #VMEXIT; no recomputation before entries): after every
        /// step the programmed offsets are the model's (hsave = L1 and
        /// active = L1 + o12 while nested, active = L1 otherwise), and after
        /// an exit L1's offset is the last one L0 set.
        #[test]
        fn any_interleaving_keeps_the_equivalence(start in any::<u64>(), ops in proptest::collection::vec(op(), 1..80)) {
            let khz = 1_000_000;
            let mut host = start;
            let mut ns = 0u64;
            let mut vm = VmTsc::new(host, khz, TscMode::Offsetting);
            let mut vcpu = [VcpuTsc::default()];
            let mut cpu = Cpu { active: Box::new(Vmcb::new()), hsave: Box::new(Vmcb::new()), o12: None };
            cpu.program(&vm, &vcpu[0]);
            for op in ops {
                match op {
                    // A host TSC seen at the next exit or emulated read.
                    Op::Advance(d) => {
                        host = host.wrapping_add(d);
                        cpu.observe(&mut vm, &vcpu[0], host);
                    }
                    Op::Backwards(d) => {
                        host = host.wrapping_sub(d);
                        cpu.observe(&mut vm, &vcpu[0], host);
                    }
                    Op::Vmrun(o) if cpu.o12.is_none() => {
                        cpu.hsave.clone_from(&cpu.active);
                        cpu.active.control.tsc_offset = compose(cpu.hsave.control.tsc_offset, o);
                        cpu.o12 = Some(o);
                    }
                    Op::Vmexit if cpu.o12.is_some() => {
                        restore_l1(&mut cpu.active, &cpu.hsave);
                        cpu.o12 = None;
                        // The copy hands L1 the offset L0 last set for it.
                        prop_assert_eq!(cpu.active.control.tsc_offset, vm.offset(&vcpu[0]));
                    }
                    Op::Vmrun(_) | Op::Vmexit => {}
                    Op::WriteTsc(v) => {
                        cpu.observe(&mut vm, &vcpu[0], host);
                        vm.write_tsc(&mut vcpu[0], host, v);
                        cpu.program(&vm, &vcpu[0]);
                    }
                    Op::WriteAdjust(a) => {
                        vcpu[0].write_adjust(a);
                        cpu.program(&vm, &vcpu[0]);
                    }
                    Op::Shift(d) => {
                        vm.shift(d);
                        cpu.program(&vm, &vcpu[0]);
                    }
                    Op::FreezeRestore(pause, jump, gap) => {
                        cpu.observe(&mut vm, &vcpu[0], host);
                        let state = vm.freeze(&vcpu, host, ns);
                        host = host.wrapping_add(jump);
                        ns += gap;
                        let policy = if pause { RestorePolicy::Pause } else { RestorePolicy::Continue };
                        vm.restore(&mut vcpu, &state, policy, host, ns).unwrap();
                        cpu.program(&vm, &vcpu[0]);
                    }
                }
                // The kernel's cross-check before every entry.
                let l1 = vm.offset(&vcpu[0]);
                match cpu.o12 {
                    Some(o) => {
                        prop_assert_eq!(cpu.hsave.control.tsc_offset, l1);
                        prop_assert_eq!(host.wrapping_add(cpu.active.control.tsc_offset), host.wrapping_add(l1).wrapping_add(o));
                    }
                    None => prop_assert_eq!(cpu.active.control.tsc_offset, l1),
                }
            }
            // And a final exit hands L1 exactly its current offset.
            if cpu.o12.is_some() {
                restore_l1(&mut cpu.active, &cpu.hsave);
                prop_assert_eq!(cpu.active.control.tsc_offset, vm.offset(&vcpu[0]));
            }
        }
    }
}
