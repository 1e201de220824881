//! Unbacked guest-physical memory for tests: an address past guest RAM
//! (below MAXPHYADDR) that the start tables map, a way to run code at any
//! address and come back from its fault, and a PDPT entry to point a
//! linear gigabyte at a table of the test's choosing.

use crate::exceptions::{catch, Fault};
use core::arch::asm;
use svm::guest_abi::PDPT_GPA;

/// An unbacked guest-physical address, identity-mapped by the start
/// tables (inside their first gigabyte).
pub fn address(memory_size: u64) -> u64 {
    memory_size + 0x1000_0000
}

core::arch::global_asm!(
    ".global unbacked_exec_probe",
    "unbacked_exec_probe:",
    "jmp rdi",
    ".global unbacked_exec_landing",
    "unbacked_exec_landing:",
    "ret",
);

unsafe extern "C" {
    fn unbacked_exec_probe(target: u64);
    static unbacked_exec_landing: u8;
}

/// Jumps to `target`; the fault raised there returns to a landing that
/// returns from here. The fault taken, if any.
pub fn exec_at(target: u64) -> Option<Fault> {
    let landing = &raw const unbacked_exec_landing as u64;
    // SAFETY: the code at `target` faults (0xFF bytes: #UD, or a #PF); the
    // handler resumes at the landing, with the stack of the probe's call.
    catch(landing.wrapping_sub(target), || unsafe {
        unbacked_exec_probe(target)
    })
}

/// Sets start PDPT entry `i` (linear `i` GiB) and flushes the TLB.
pub fn set_pdpt(i: u64, entry: u64) {
    let e = (PDPT_GPA + 8 * i) as *mut u64;
    // SAFETY: the start tables are identity-mapped and the guest's own;
    // entries other than 0 are not used by the guest's code or data.
    unsafe {
        e.write_volatile(entry);
        asm!("mov rax, cr3", "mov cr3, rax", out("rax") _, options(nostack));
    }
}
