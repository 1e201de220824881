//! VMMCALL wrappers for the hypercall ABI of [`svm::guest_abi`].

/// Issues hypercall `nr` with three arguments; returns `RAX`.
pub fn call(nr: u64, a: u64, b: u64, c: u64) -> u64 {
    let ret;
    // SAFETY: VMMCALL exits to the hypervisor, which only writes RAX. RBX is
    // reserved by LLVM, so it is swapped in and out around the call.
    unsafe {
        core::arch::asm!(
            "xchg {a}, rbx",
            "vmmcall",
            "xchg {a}, rbx",
            a = inout(reg) a => _,
            inout("rax") nr => ret,
            in("rcx") b,
            in("rdx") c,
            options(nostack),
        );
    }
    ret
}

/// L0's ticks (`HC_HOST_TICKS`) between two back-to-back `HC_HOST_TICKS`:
/// a bench bracketing a loop with that pair subtracts it, since L0's count
/// then includes the tail of the first call and the head of the second.
pub fn host_ticks_bracket() -> u64 {
    let before = call(svm::guest_abi::HC_HOST_TICKS, 0, 0, 0);
    call(svm::guest_abi::HC_HOST_TICKS, 0, 0, 0) - before
}
