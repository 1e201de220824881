//! Nested tests for kvm-unit-tests subtests that failed under L0 (ISSUE
//! 10): each L2 payload here is its own entry point; it leaves what it
//! saw in [`SEEN`] and yields with HLT.

use crate::l1::{self, Regs};
use crate::run_expect;
use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};
use guest_stubs::check_eq;
use guest_stubs::privileged as p;
use svm::{ExitCode, InterceptMisc1};

/// What the L2 payload saw.
static SEEN: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

fn seen(i: usize) -> u64 {
    SEEN[i].load(Ordering::SeqCst)
}

fn put(i: usize, v: u64) {
    SEEN[i].store(v, Ordering::SeqCst);
}

fn yield_forever() -> ! {
    loop {
        // SAFETY: HLT in L2 exits to L1, which intercepts it.
        unsafe { asm!("hlt", options(nomem, nostack)) };
    }
}

/// A fresh vmcb12 for `entry`.
fn setup(entry: extern "C" fn() -> !) -> Regs {
    l1::enable_svm();
    SEEN.iter().for_each(|s| s.store(0, Ordering::SeqCst));
    l1::prepare(entry);
    Regs::default()
}

const CR0_MP: u64 = 1 << 1;

extern "C" fn lmsw_mp() -> ! {
    let cr0 = p::read_cr(0);
    p::lmsw((cr0 | CR0_MP) as u16);
    put(0, 1);
    p::lmsw(cr0 as u16);
    put(1, 1);
    yield_forever()
}

/// kvm-unit-tests sel_cr0_lmsw_intercept: L1's selective CR0 write
/// intercept catches LMSW whatever it writes (APM Table 15-7), here a
/// write of MP only, which MOV to CR0 would pass; then an LMSW that
/// changes nothing. L2's CR0 is left as it was.
pub fn l2_lmsw_selective_cr0() {
    let mut regs = setup(lmsw_mp);
    let v = l1::vmcb();
    v.state.cr0 &= !CR0_MP;
    v.control.intercept_misc1 |= InterceptMisc1::CR0_SEL_WRITE.bits();
    run_expect(&mut regs, ExitCode::Cr0SelWrite);
    check_eq!(seen(0), 0, "L2 went past LMSW setting MP");
    check_eq!(l1::vmcb().state.cr0 & CR0_MP, 0, "vmcb12 CR0.MP");
    // Skip the first LMSW (3 bytes): the second writes the same MSW.
    l1::vmcb().state.rip += 3;
    run_expect(&mut regs, ExitCode::Cr0SelWrite);
    check_eq!(
        (seen(0), seen(1)),
        (1, 0),
        "L2's progress at the second LMSW"
    );
}
