//! String port I/O in L2 (issue 10): L1 lets the ports through (its IOPM
//! bits clear), so L0 emulates INS/OUTS through L2's page tables (L1
//! offers no nested paging: they give L1-physical addresses), with the
//! address size, direction and count of the instruction, and a #PF in the
//! middle of a string goes to L1 with the registers as the CPU leaves them.

use crate::l1::{self, Regs};
use crate::run_expect;
use core::arch::asm;
use core::ptr::{addr_of, addr_of_mut};
use core::sync::atomic::{AtomicU64, Ordering};
use guest_stubs::{check, check_eq};
use svm::ExitCode;

/// What the L2 payload saw.
static SEEN: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];

fn seen(i: usize) -> u64 {
    SEEN[i].load(Ordering::SeqCst)
}

fn put(i: usize, v: u64) {
    SEEN[i].store(v, Ordering::SeqCst);
}

/// COM1's line status: 0x60 ("ready") on L0's self-test console.
const IN_PORT: u16 = 0x3fd;
/// L0's debug console.
const OUT_PORT: u16 = 0xe9;
/// The line L2 sends with `STD; REP OUTSB` (stored reversed in [`TEXT`]).
const LINE: &[u8] = b"hello from L2 by rep outsb, backwards\n";

static mut BUF: [u8; 16] = [0; 16];
static mut BUF32: [u8; 8] = [0; 8];
static mut TEXT: [u8; 64] = [0; 64];

#[repr(C, align(4096))]
struct Page([u64; 512]);

/// L2's page tables: L1's PML4 copied, plus entry 1 (512 GiB) mapping
/// [`SCRATCH`] at [`WINDOW`] and nothing in the page after it (until L1
/// fills it in).
static mut PML4: Page = Page([0; 512]);
static mut PDPT: Page = Page([0; 512]);
static mut PD: Page = Page([0; 512]);
static mut PT: Page = Page([0; 512]);
static mut SCRATCH: [Page; 2] = [Page([0; 512]), Page([0; 512])];
/// The linear address of the first scratch page in L2.
const WINDOW: u64 = 0x80_0000_0000;
/// Elements of the string that crosses into the unmapped page.
const CROSSING: u64 = 10;

extern "C" fn string_io_l2() -> ! {
    let ports = (u32::from(IN_PORT), u32::from(OUT_PORT));
    let (mut rdi, mut rcx, mut rsi): (u64, u64, u64);
    // SAFETY: INSB into this payload's buffers, OUTSB from its text, at
    // addresses L2 maps (the WINDOW ones after L1 handles the #PF).
    unsafe {
        asm!("rep insb", inout("rdi") addr_of_mut!(BUF) as u64 => rdi,
             inout("rcx") 16u64 => rcx, in("edx") ports.0, options(nostack));
        put(0, rdi - addr_of!(BUF) as u64);
        put(1, rcx);
        // 32-bit addressing (67): EDI and ECX only, zero-extended after.
        asm!(".byte 0x67, 0xf3, 0x6c",
             inout("rdi") 0xABCD_0000_0000_0000 | addr_of_mut!(BUF32) as u64 => rdi,
             inout("rcx") 0xFFFF_FFFF_0000_0000u64 | 8 => rcx, in("edx") ports.0,
             options(nostack));
        put(2, rdi);
        put(3, rcx);
        let last = addr_of!(TEXT) as u64 + LINE.len() as u64 - 1;
        asm!("std", "rep outsb", "cld", inout("rsi") last => rsi,
             inout("rcx") LINE.len() as u64 => rcx, in("edx") ports.1, options(nostack));
        put(4, rsi);
        put(5, rcx);
        asm!("rep insb", inout("rdi") WINDOW + 0xFFC => rdi,
             inout("rcx") CROSSING => rcx, in("edx") ports.0, options(nostack));
        put(6, rcx);
        put(7, rdi);
    }
    loop {
        // SAFETY: HLT in L2 exits to L1, which intercepts it.
        unsafe { asm!("hlt", options(nomem, nostack)) };
    }
}

/// OUTSB from a non-canonical address: through DS (#GP(0)), then through
/// an SS override (#SS(0)); L1 intercepts both and skips the instruction.
extern "C" fn non_canonical_l2() -> ! {
    let bad = 0x8000_0000_0000_0000u64;
    // SAFETY: both fault before any element moves; L1 moves RIP past them.
    unsafe {
        asm!("rep outsb", inout("rsi") bad => _, inout("rcx") 4u64 => _,
             in("edx") u32::from(OUT_PORT), options(nostack));
        asm!(".byte 0x36, 0xf3, 0x6e", inout("rsi") bad => _, inout("rcx") 4u64 => _,
             in("edx") u32::from(OUT_PORT), options(nostack));
    }
    loop {
        // SAFETY: HLT in L2 exits to L1, which intercepts it.
        unsafe { asm!("hlt", options(nomem, nostack)) };
    }
}

/// L2's OUTSB from a non-canonical address is #GP(0), or #SS(0) through
/// SS, with nothing moved (RSI and RCX as they were).
fn non_canonical_in_l2() {
    l1::enable_svm();
    l1::prepare(non_canonical_l2);
    let port = OUT_PORT;
    l1::iopm()[usize::from(port / 8)] &= !(1 << (port % 8));
    let v = l1::vmcb();
    v.control.intercept_exceptions |= 1 << 13 | 1 << 12;
    let mut regs = Regs::default();
    for (vector, len, what) in [(13, 2, "#GP"), (12, 3, "#SS")] {
        run_expect(&mut regs, ExitCode::Exception(vector));
        check_eq!(v.control.exit_info1, 0, format_args!("{what} error code"));
        check_eq!(
            (regs.gpr[1], regs.gpr[3]),
            (4, 0x8000_0000_0000_0000),
            format_args!("RCX, RSI at the {what}")
        );
        v.state.rip += len;
    }
    run_expect(&mut regs, ExitCode::Hlt);
}

/// Builds L2's page tables (see [`PML4`]); returns its CR3.
fn l2_tables() -> u64 {
    // SAFETY: single vCPU; L2 is not running; identity-mapped statics.
    unsafe {
        let l1_pml4 = (guest_stubs::privileged::read_cr(3) & !0xFFF) as *const u64;
        let pml4 = &mut (*addr_of_mut!(PML4)).0;
        for (i, e) in pml4.iter_mut().enumerate() {
            *e = l1_pml4.add(i).read_volatile();
        }
        pml4[1] = addr_of!(PDPT) as u64 | 0x3;
        (*addr_of_mut!(PDPT)).0[0] = addr_of!(PD) as u64 | 0x3;
        (*addr_of_mut!(PD)).0[0] = addr_of!(PT) as u64 | 0x3;
        let pt = &mut (*addr_of_mut!(PT)).0;
        pt[0] = addr_of!(SCRATCH) as u64 | 0x3;
        pt[1] = 0;
        (*addr_of_mut!(SCRATCH))[0].0[511] = 0;
        addr_of!(PML4) as u64
    }
}

/// L2 runs REP INSB (64- and 32-bit addressing) and STD; REP OUTSB on
/// ports L1 does not intercept; then a REP INSB that runs into a page
/// L2 does not map: L1 gets the #PF with 4 elements done (RDI at the
/// unmapped page, RCX the 6 left, RIP on the instruction), maps it, and L2
/// finishes the string when it runs again.
pub fn string_io_in_l2() {
    // SAFETY: single vCPU; L2 is not running.
    unsafe {
        let text = &mut *addr_of_mut!(TEXT);
        for (i, b) in LINE.iter().rev().enumerate() {
            text[i] = *b;
        }
        *addr_of_mut!(BUF) = [0; 16];
        *addr_of_mut!(BUF32) = [0; 8];
    }
    l1::enable_svm();
    SEEN.iter().for_each(|s| s.store(0, Ordering::SeqCst));
    l1::prepare(string_io_l2);
    for port in [IN_PORT, OUT_PORT] {
        l1::iopm()[usize::from(port / 8)] &= !(1 << (port % 8));
    }
    let v = l1::vmcb();
    v.state.cr3 = l2_tables();
    v.control.intercept_exceptions |= 1 << 14;
    let mut regs = Regs::default();
    run_expect(&mut regs, ExitCode::Exception(14));
    check_eq!(
        (v.control.exit_info1, v.control.exit_info2),
        (0x2, WINDOW + 0x1000),
        "#PF error code and address (a write to a page not present)"
    );
    check_eq!(
        (regs.gpr[1], regs.gpr[4]),
        (CROSSING - 4, WINDOW + 0x1000),
        "RCX, RDI at the #PF"
    );
    // SAFETY: as above; L2 is stopped.
    let tail = unsafe { (*addr_of!(SCRATCH))[0].0[511] };
    check_eq!(tail >> 32, 0x6060_6060, "the 4 bytes before the #PF");
    // RIP stays on REP INSB (F3 6C): L2 runs it again for the rest.
    let rip = v.state.rip;
    // SAFETY: L2's code is L1's (identity-mapped).
    let opcode = unsafe { core::ptr::read_volatile(rip as *const [u8; 2]) };
    check_eq!(opcode, [0xF3, 0x6C], "the bytes at L2's RIP after the #PF");
    // SAFETY: as above.
    unsafe { (*addr_of_mut!(PT)).0[1] = (addr_of!(SCRATCH) as u64 + 0x1000) | 0x3 };
    run_expect(&mut regs, ExitCode::Hlt);
    check_eq!((seen(0), seen(1)), (16, 0), "RDI moved, RCX after REP INSB");
    check_eq!(
        (seen(2), seen(3)),
        (addr_of!(BUF32) as u64 + 8, 0),
        "RDI, RCX after a 32-bit-addressed REP INSB (zero-extended)"
    );
    check_eq!(
        (seen(4), seen(5)),
        (addr_of!(TEXT) as u64 - 1, 0),
        "RSI, RCX after STD; REP OUTSB"
    );
    check_eq!(
        (seen(6), seen(7)),
        (0, WINDOW + 0x1000 + CROSSING - 4),
        "RCX, RDI after the string crossing the #PF"
    );
    // SAFETY: L2 has stopped.
    let (buf, buf32) = unsafe { (*addr_of!(BUF), *addr_of!(BUF32)) };
    check!(
        buf.iter().chain(buf32.iter()).all(|&b| b == 0x60),
        "INSB bytes {buf:x?} {buf32:x?}"
    );
    non_canonical_in_l2();
}
