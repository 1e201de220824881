//! `nested::l2_msr_sweep`: kvm-unit-tests' msr_intercept_check without
//! the intercepts. L1 reads every index of the three MSRPM ranges; then
//! L2, with L1's MSR map clear (L1 intercepts no MSR) and L1's IDT, reads
//! each one (L0 emulates or raises #GP in L2), compares with L1's view and
//! writes back what it read. L2 must see L1's values (nothing in the
//! table is switched by VMRUN but what the VMCB holds), every write-back
//! must be accepted, and the VM must not stop. Then L2 writes PAT and
//! DEBUGCTL, which L1 must see after the #VMEXIT.

use crate::l1;
use crate::l2::{self, Task};
use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};
use guest_stubs::cpu::{rdmsr, wrmsr};
use guest_stubs::msr_sweep::{sweep, try_rdmsr, INDICES};
use guest_stubs::{check_eq, println};
use svm::ExitCode;

/// What L1 read: the value, or `u64::MAX` with the index's bit set in
/// [`L1_GP`] for a #GP.
static L1_VIEW: [AtomicU64; INDICES] = [const { AtomicU64::new(0) }; INDICES];
/// Indices whose RDMSR raised #GP in L1.
static L1_GP: [AtomicU64; INDICES / 64] = [const { AtomicU64::new(0) }; INDICES / 64];

fn l1_gp(i: usize) -> bool {
    L1_GP[i / 64].load(Ordering::Relaxed) & (1 << (i % 64)) != 0
}

/// The PAT L2 writes after the sweep (WP in entry 0).
const L2_PAT: u64 = 0x0007_0406_0007_0405;
/// The DEBUGCTL L2 writes after the sweep (BTF: stored, not emulated).
const L2_DEBUGCTL: u64 = 2;

/// L1's IDT (L2 handles its own #GPs with the same handlers).
fn l1_idt() -> (u64, u32) {
    let mut idtr = [0u16; 5];
    // SAFETY: SIDT stores 10 bytes.
    unsafe { asm!("sidt [{}]", in(reg) idtr.as_mut_ptr(), options(nostack)) };
    let base = u64::from(idtr[1])
        | u64::from(idtr[2]) << 16
        | u64::from(idtr[3]) << 32
        | u64::from(idtr[4]) << 48;
    (base, u32::from(idtr[0]))
}

/// The L1 side.
pub fn l2_msr_sweep() {
    l1::enable_svm();
    let mut readable = 0u32;
    for (i, msr) in guest_stubs::msr_sweep::indices() {
        match try_rdmsr(msr) {
            Some(v) => {
                readable += 1;
                L1_VIEW[i].store(v, Ordering::Relaxed);
            }
            None => {
                L1_GP[i / 64].fetch_or(1 << (i % 64), Ordering::Relaxed);
            }
        }
    }
    l2::set(Task::MsrSweep, 0);
    l1::prepare(l2::entry);
    let v = l1::vmcb();
    let (idt, limit) = l1_idt();
    v.state.idtr = svm::VmcbSegment::new(0, 0, limit, idt);
    let mut regs = l1::Regs::default();
    crate::run_expect(&mut regs, ExitCode::Hlt);
    println!(
        "L1 read {readable}, L2 read {} of {INDICES} MSRs",
        l2::result(4)
    );
    check_eq!(
        (l2::result(0), l2::result(1)),
        (0, 0),
        "L2 reads that differ from L1's (count, first MSR)"
    );
    check_eq!(
        (l2::result(2), l2::result(3)),
        (0, 0),
        "L2 write-backs of a value read refused (count, first MSR)"
    );
    check_eq!(l2::result(4), u64::from(readable), "MSRs L2 could read");
    // Neither VMRUN nor #VMEXIT switches PAT without nested paging, nor
    // DEBUGCTL without LBR virtualization (APM 15.5.1, 15.25.4): L2's
    // writes are L1's values now.
    check_eq!(rdmsr(0x277), L2_PAT, "L1's PAT after L2 wrote it");
    check_eq!(rdmsr(0x1D9), L2_DEBUGCTL, "L1's DEBUGCTL after L2 wrote it");
    wrmsr(0x277, svm::msr::PAT_POWER_ON);
    wrmsr(0x1D9, 0);
}

/// The L2 side ([`Task::MsrSweep`]): R0/R1 = reads unlike L1's (count,
/// first MSR), R2/R3 = refused write-backs (count, first MSR), R4 = reads
/// that worked.
pub fn l2_side(put: impl Fn(usize, u64)) {
    let mut differ = 0u64;
    let mut first = 0u64;
    let s = sweep(|i, msr, v| {
        let l1 = match l1_gp(i) {
            true => None,
            false => Some(L1_VIEW[i].load(Ordering::Relaxed)),
        };
        // The TSC moves between the two reads.
        let same = match (l1, v) {
            (Some(_), Some(_)) if msr == 0x10 => true,
            (a, b) => a == b,
        };
        if !same {
            differ += 1;
            if first == 0 {
                first = u64::from(msr);
            }
        }
    });
    put(0, differ);
    put(1, first);
    put(2, u64::from(s.write_gps));
    put(3, s.first_write_gp.map_or(0, u64::from));
    put(4, u64::from(s.readable));
    wrmsr(0x277, L2_PAT);
    wrmsr(0x1D9, L2_DEBUGCTL);
}
