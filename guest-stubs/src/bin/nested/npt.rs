//! `nested::npt_*`: L1 runs its L2 with nested paging (issue 11). L1
//! builds a nested page table in its own memory (4-level long-mode format,
//! U=1 at every level, APM 15.25.5), sets NP_ENABLE and nCR3 in vmcb12,
//! and runs an L2 that shares L1's page tables (linear = L2-physical in
//! the first gigabytes) and follows a script of accesses ([`Op`]).
//!
//! L2-physical (gPA) layout of the nested table [`build`] makes:
//! - `[0, RAM)`: L1's RAM, identity, 2 MiB pages (L2's code, stack and
//!   page tables live there).
//! - `8 MiB + 4 KiB * i`: the 4 KiB pages of [`Pte`] (remaps, faults).
//! - `10 MiB`: a 2 MiB page onto the 2 MiB block of L1's RAM that holds
//!   frame 2 of [`FRAMES`].
//! - `12 MiB`: a 2 MiB page onto unbacked L1-physical memory.
//! - `14 MiB`: a 4 KiB page writable in its PTE, read-only in its PDE.
//! - `1 GiB`: a 1 GiB page onto L1-physical 0.
//! - `2 GiB`: a 1 GiB page onto L1-physical 4 GiB (unbacked).

use crate::l1::{self, Regs};
use core::arch::asm;
use core::ptr::addr_of_mut;
use core::sync::atomic::{AtomicU64, Ordering};
use guest_stubs::cpu::{cpuid, rdmsr, wrmsr};
use guest_stubs::verdict::fail;
use guest_stubs::{check, check_eq, println};
use svm::msr::{EFER, EFER_NXE};
use svm::ExitCode;

const P: u64 = 1;
const W: u64 = 1 << 1;
const U: u64 = 1 << 2;
const PS: u64 = 1 << 7;
const NX: u64 = 1 << 63;
/// Accessed and dirty, preset where a leaf's rights are the point (L0
/// may map a clean leaf read-only until it sets D: that would hide a
/// shadow entry wider than L1's).
const AD: u64 = (1 << 5) | (1 << 6);
/// A non-leaf entry: everything allowed, the leaves decide.
const TABLE: u64 = P | W | U;
const MB2: u64 = 2 << 20;
const GB1: u64 = 1 << 30;

/// EXITINFO1 bits of a #NPF (APM 15.25.6): the #PF error code bits, and
/// which translation faulted.
const EI_P: u64 = 1;
const EI_RW: u64 = 1 << 1;
const EI_US: u64 = 1 << 2;
const EI_RSVD: u64 = 1 << 3;
const EI_ID: u64 = 1 << 4;
const EI_FINAL: u64 = 1 << 32;
const EI_WALK: u64 = 1 << 33;

/// gPA of the 4 KiB page table [`Pte`] entries map.
const G4K: u64 = 8 << 20;
/// gPA of the 2 MiB remap of L1's RAM.
const G2M: u64 = 10 << 20;
/// gPA of the 2 MiB page onto unbacked memory.
const G2M_OUT: u64 = 12 << 20;
/// gPA of a 4 KiB page whose PD entry (not its PTE) is read-only.
const G_RO_PDE: u64 = 14 << 20;
/// gPA of the 1 GiB page onto L1-physical 0.
const G1G: u64 = GB1;
/// gPA of the 1 GiB page onto L1-physical 4 GiB.
const G1G_OUT: u64 = 2 * GB1;

/// The 4 KiB pages at [`G4K`]: entry index in the table.
#[derive(Clone, Copy)]
#[repr(usize)]
enum Pte {
    /// Onto frame 0.
    Remap = 0,
    /// Onto frame 1, and [`Pte::Alias2`] too.
    Alias1,
    Alias2,
    /// Read-only, onto frame 4.
    ReadOnly,
    /// Not executable (NX), onto frame 5.
    NoExec,
    /// Not present.
    NotPresent,
    /// A reserved bit set (bit MAXPHYADDR of the address field).
    Reserved,
    /// U=0 (supervisor): every nested access is a user one.
    Supervisor,
    /// Where L2's own PDPT is (the page-walk faults).
    L2Pdpt,
    /// Onto frame 6, then frame 7 (stale mappings).
    Stale,
    /// Onto L1-physical just past RAM (unbacked).
    OutJustPastRam,
    /// Onto L1-physical 16 MiB (host RAM on the machine running L0).
    Out16M,
    /// Onto the last page below MAXPHYADDR.
    OutTop,
    /// Onto L1's local APIC page (0xFEE0_0000, MMIO L0 emulates).
    Apic,
    /// Onto frame 8: code L0 must fetch through L1's table to emulate it.
    Code,
}

impl Pte {
    /// The gPA of the page.
    const fn gpa(self) -> u64 {
        G4K + 0x1000 * self as u64
    }
}

/// Table pages: the nested PML4, PDPT, PD of the first GiB, PT at
/// [`G4K`]; L2's own PML4 (page-walk tests); L1's PDs for linear 1-2 GiB
/// and 2-3 GiB (identity 2 MiB pages, so L2 reaches gPA 1-3 GiB); L2's
/// own PDPT (a copy of L1's, reached at a remapped gPA).
#[repr(C, align(4096))]
struct Tables([[u64; 512]; 9]);
static mut TABLES: Tables = Tables([[0; 512]; 9]);
const NPML4: usize = 0;
const NPDPT: usize = 1;
const NPD: usize = 2;
const NPT4K: usize = 3;
const L2PML4: usize = 4;
const LPD1: usize = 5;
const LPD2: usize = 6;
const NPT_RO: usize = 7;
const L2PDPT: usize = 8;
/// Accessed and dirty bits of a page-table entry (APM 5.4.1).
const A: u64 = 1 << 5;
const D: u64 = 1 << 6;
/// The address field of a long-mode entry.
const ENTRY_ADDR: u64 = 0x000F_FFFF_FFFF_F000;

/// Data frames of L1's RAM that the nested table names.
#[repr(C, align(4096))]
struct Frames([[u64; 512]; 9]);
static mut FRAMES: Frames = Frames([[0; 512]; 9]);

fn tables() -> &'static mut [[u64; 512]; 9] {
    // SAFETY: single vCPU; L2 does not run while L1 holds this.
    unsafe { &mut (*addr_of_mut!(TABLES)).0 }
}

fn table_pa(i: usize) -> u64 {
    // SAFETY: only the address is taken (L1 identity-maps its RAM).
    unsafe { addr_of_mut!(TABLES.0[i]) as u64 }
}

/// Frame `i` (L1 reads what L2 wrote there).
fn frame(i: usize) -> &'static mut [u64; 512] {
    // SAFETY: as for `tables`.
    unsafe { &mut (*addr_of_mut!(FRAMES)).0[i] }
}

fn frame_pa(i: usize) -> u64 {
    // SAFETY: only the address is taken.
    unsafe { addr_of_mut!(FRAMES.0[i]) as u64 }
}

/// Volatile read of a frame word (L2 wrote it behind the compiler's back).
fn peek(f: usize, word: usize) -> u64 {
    // SAFETY: a word of a static frame.
    unsafe { core::ptr::read_volatile(&raw const frame(f)[word]) }
}

fn poke(f: usize, word: usize, v: u64) {
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(&raw mut frame(f)[word], v) }
}

fn set_pte(p: Pte, e: u64) {
    // SAFETY: L2 is stopped; the table is L1's static.
    unsafe { core::ptr::write_volatile(&raw mut tables()[NPT4K][p as usize], e) }
}

fn max_phys_bits() -> u32 {
    cpuid(0x8000_0008, 0)[0] & 0xFF
}

/// Fails the test (no silent pass) when CPUID 0x8000000A EDX.NP is clear.
fn require_npt() {
    if cpuid(0x8000_000A, 0)[3] & 1 == 0 {
        fail(format_args!(
            "NPT not offered (CPUID 0x8000000A EDX bit 0 clear)"
        ));
    }
}

/// Builds the nested table (layout in the module docs) for L1 RAM of
/// `ram` bytes, and L1's own linear mappings of 1-3 GiB. Returns nCR3.
fn build(ram: u64) -> u64 {
    let t = tables();
    for page in t.iter_mut() {
        page.fill(0);
    }
    t[NPML4][0] = table_pa(NPDPT) | TABLE;
    t[NPDPT][0] = table_pa(NPD) | TABLE;
    for i in 0..ram / MB2 {
        t[NPD][i as usize] = (i * MB2) | TABLE | PS;
    }
    t[NPD][(G4K / MB2) as usize] = table_pa(NPT4K) | TABLE;
    let frames_block = frame_pa(2) & !(MB2 - 1);
    t[NPD][(G2M / MB2) as usize] = frames_block | TABLE | PS;
    let unbacked_2m = (ram + 0x1000_0000) & !(MB2 - 1);
    t[NPD][(G2M_OUT / MB2) as usize] = unbacked_2m | TABLE | PS;
    t[NPD][(G_RO_PDE / MB2) as usize] = table_pa(NPT_RO) | P | U | AD;
    t[NPT_RO][0] = frame_pa(3) | TABLE | AD;
    t[NPDPT][1] = TABLE | PS;
    if max_phys_bits() > 32 {
        t[NPDPT][2] = (4 * GB1) | TABLE | PS;
    }
    let top = (1u64 << max_phys_bits()) - 0x1000;
    let leaves = [
        (Pte::Remap, frame_pa(0) | TABLE),
        (Pte::Alias1, frame_pa(1) | TABLE),
        (Pte::Alias2, frame_pa(1) | TABLE),
        (Pte::ReadOnly, frame_pa(4) | P | U | AD),
        (Pte::NoExec, frame_pa(5) | TABLE | NX | AD),
        (Pte::NotPresent, frame_pa(2) | W | U),
        (Pte::Reserved, frame_pa(2) | TABLE | reserved_bit()),
        (Pte::Supervisor, frame_pa(2) | P | W),
        (Pte::L2Pdpt, 0),
        (Pte::Stale, frame_pa(6) | TABLE),
        (Pte::OutJustPastRam, ram | TABLE),
        (Pte::Out16M, (16 << 20).max(ram + MB2) | TABLE),
        (Pte::OutTop, top | TABLE),
        (Pte::Apic, guest_stubs::lapic::BASE | TABLE),
        (Pte::Code, frame_pa(8) | TABLE),
    ];
    for (p, e) in leaves {
        t[NPT4K][p as usize] = e;
    }
    // L1's linear 1-3 GiB, identity (L2 shares L1's page tables).
    for i in 0..512u64 {
        t[LPD1][i as usize] = (GB1 + i * MB2) | P | W | PS;
        t[LPD2][i as usize] = (2 * GB1 + i * MB2) | P | W | PS;
    }
    guest_stubs::unbacked::set_pdpt(1, table_pa(LPD1) | P | W);
    guest_stubs::unbacked::set_pdpt(2, table_pa(LPD2) | P | W);
    table_pa(NPML4)
}

/// Undoes L1's linear mappings of 1-3 GiB.
fn unmap_linear() {
    guest_stubs::unbacked::set_pdpt(1, 0);
    guest_stubs::unbacked::set_pdpt(2, 0);
}

/// A reserved bit of a 4 KiB nested PTE: the lowest address bit at or
/// above MAXPHYADDR (bits MAXPHYADDR..51 are reserved, APM 5.3.1).
fn reserved_bit() -> u64 {
    let bits = max_phys_bits();
    if bits >= 52 {
        fail(format_args!("MAXPHYADDR 52: no reserved address bit"));
    }
    1 << bits
}

// --- L2's script ------------------------------------------------------------

const OP_END: u64 = 0;
const OP_READ: u64 = 1;
const OP_WRITE: u64 = 2;
const OP_FETCH: u64 = 3;
const OP_READ32: u64 = 4;
const OP_WRITE32: u64 = 5;
const OP_CALL_RDI: u64 = 6;
const OP_INSB: u64 = 7;
const MAX_OPS: usize = 8;

/// One access of L2's script.
#[derive(Clone, Copy)]
enum Op {
    /// Read the u64 at the address (the result in [`seen`]).
    Read(u64),
    /// Write the value at the address.
    Write(u64, u64),
    /// Call the address (a RET there).
    Fetch(u64),
    /// 32-bit read (MMIO registers).
    Read32(u64),
    /// 32-bit write.
    Write32(u64, u32),
    /// Call the address with RDI = the value; EAX after it is the result.
    CallRdi(u64, u64),
    /// REP INSB of the value's count of bytes from COM1's line status
    /// port (L0 emulates it, L1 does not intercept it) to the address.
    InsB(u64, u64),
}

/// The port [`Op::InsB`] reads, and what L0's COM1 says there (ready).
const INS_PORT: u16 = 0x3FD;
const INS_BYTE: u8 = 0x60;

static KIND: [AtomicU64; MAX_OPS] = [const { AtomicU64::new(0) }; MAX_OPS];
static ADDR: [AtomicU64; MAX_OPS] = [const { AtomicU64::new(0) }; MAX_OPS];
static VALUE: [AtomicU64; MAX_OPS] = [const { AtomicU64::new(0) }; MAX_OPS];
static SEEN: [AtomicU64; MAX_OPS] = [const { AtomicU64::new(0) }; MAX_OPS];
/// How many ops L2 completed.
static DONE: AtomicU64 = AtomicU64::new(0);

fn script(ops: &[Op]) {
    for i in 0..MAX_OPS {
        let (k, a, v) = match ops.get(i) {
            None => (OP_END, 0, 0),
            Some(Op::Read(a)) => (OP_READ, *a, 0),
            Some(Op::Write(a, v)) => (OP_WRITE, *a, *v),
            Some(Op::Fetch(a)) => (OP_FETCH, *a, 0),
            Some(Op::Read32(a)) => (OP_READ32, *a, 0),
            Some(Op::Write32(a, v)) => (OP_WRITE32, *a, u64::from(*v)),
            Some(Op::CallRdi(a, v)) => (OP_CALL_RDI, *a, *v),
            Some(Op::InsB(a, n)) => (OP_INSB, *a, *n),
        };
        KIND[i].store(k, Ordering::SeqCst);
        ADDR[i].store(a, Ordering::SeqCst);
        VALUE[i].store(v, Ordering::SeqCst);
        SEEN[i].store(0xDEAD_DEAD_DEAD_DEAD, Ordering::SeqCst);
    }
    DONE.store(0, Ordering::SeqCst);
}

/// What L2's op `i` read.
fn seen(i: usize) -> u64 {
    SEEN[i].load(Ordering::SeqCst)
}

fn done() -> u64 {
    DONE.load(Ordering::SeqCst)
}

/// L2: runs the script, then yields with HLT forever.
extern "C" fn l2_entry() -> ! {
    for i in 0..MAX_OPS {
        let a = ADDR[i].load(Ordering::SeqCst);
        match KIND[i].load(Ordering::SeqCst) {
            OP_READ => {
                // SAFETY: the address is mapped by L2's tables; a nested
                // fault goes to L1, which does not resume this access.
                let v = unsafe { core::ptr::read_volatile(a as *const u64) };
                SEEN[i].store(v, Ordering::SeqCst);
            }
            OP_WRITE => {
                let v = VALUE[i].load(Ordering::SeqCst);
                // SAFETY: as above.
                unsafe { core::ptr::write_volatile(a as *mut u64, v) };
            }
            OP_READ32 => {
                // SAFETY: as above.
                let v = unsafe { core::ptr::read_volatile(a as *const u32) };
                SEEN[i].store(u64::from(v), Ordering::SeqCst);
            }
            OP_WRITE32 => {
                let v = VALUE[i].load(Ordering::SeqCst) as u32;
                // SAFETY: as above.
                unsafe { core::ptr::write_volatile(a as *mut u32, v) };
            }
            OP_CALL_RDI => {
                let rdi = VALUE[i].load(Ordering::SeqCst);
                let eax: u32;
                // SAFETY: the page holds code that L1 put there (ending in
                // RET), or the fetch faults to L1.
                unsafe {
                    asm!("call {}", in(reg) a, inout("rdi") rdi => _, out("eax") eax,
                         clobber_abi("C"))
                };
                SEEN[i].store(u64::from(eax), Ordering::SeqCst);
            }
            OP_INSB => {
                let n = VALUE[i].load(Ordering::SeqCst);
                // SAFETY: writes `n` bytes at the address, mapped by L2's
                // tables (DF is clear: the ABI's default).
                unsafe {
                    asm!("rep insb", in("dx") INS_PORT, inout("rdi") a => _,
                         inout("rcx") n => _, options(nostack))
                };
            }
            OP_FETCH => {
                // SAFETY: the page holds a RET (or the fetch faults to L1).
                unsafe { asm!("call {}", in(reg) a, clobber_abi("C")) };
            }
            _ => break,
        }
        DONE.store(i as u64 + 1, Ordering::SeqCst);
    }
    loop {
        // SAFETY: HLT exits to L1 (intercepted).
        unsafe { asm!("hlt", options(nomem, nostack)) };
    }
}

/// An L2 run's end: the exit code and EXITINFO1/2.
#[derive(Debug, PartialEq, Eq)]
struct Exit {
    code: ExitCode,
    info1: u64,
    info2: u64,
}

/// Runs L2 with `ops` on nested table `ncr3`; `tweak` adjusts vmcb12.
fn run(ncr3: u64, ops: &[Op], tweak: impl FnOnce(&mut svm::Vmcb)) -> Exit {
    l1::enable_svm();
    script(ops);
    l1::prepare(l2_entry);
    let v = l1::vmcb();
    v.control.nested_ctl = 1;
    v.control.ncr3 = ncr3;
    tweak(v);
    let mut regs = Regs::default();
    let (_, code) = l1::run(&mut regs);
    let c = &l1::vmcb().control;
    Exit {
        code: ExitCode::from_raw(code),
        info1: c.exit_info1,
        info2: c.exit_info2,
    }
}

/// Runs L2 and checks it finished its script (HLT, no #NPF for L1).
#[track_caller]
fn run_ok(ncr3: u64, ops: &[Op], what: &str) {
    let e = run(ncr3, ops, |_| {});
    check!(
        e.code == ExitCode::Hlt && done() == ops.len() as u64,
        "{what}: L2 ended with {e:x?} after {} of {} accesses",
        done(),
        ops.len()
    );
}

// --- The tests ----------------------------------------------------------------

/// L2 reads and writes through L1's nested table where L2-physical is not
/// L1-physical: a 4 KiB remap, two gPAs aliasing one frame, a 2 MiB page
/// onto another 2 MiB block and a 1 GiB page onto L1-physical 0. The
/// data must be in the L1 frame the table names.
pub fn npt_l2_mapped_through_ncr3(ram: u64) {
    require_npt();
    let ncr3 = build(ram);
    poke(0, 3, 0x0A0A_0001);
    poke(1, 5, 0);
    let ops = [
        Op::Read(Pte::Remap.gpa() + 3 * 8),
        Op::Write(Pte::Remap.gpa() + 4 * 8, 0x0A0A_0002),
        Op::Write(Pte::Alias1.gpa() + 5 * 8, 0x0A0A_0003),
        Op::Read(Pte::Alias2.gpa() + 5 * 8),
    ];
    run_ok(ncr3, &ops, "4 KiB pages");
    check_eq!(
        seen(0),
        0x0A0A_0001,
        "L2's read of its gPA remapped to frame 0"
    );
    check_eq!(peek(0, 4), 0x0A0A_0002, "frame 0 after L2's write");
    check_eq!(
        seen(3),
        0x0A0A_0003,
        "L2's read through the alias of frame 1"
    );
    check_eq!(peek(1, 5), 0x0A0A_0003, "frame 1 after L2's write");

    // 2 MiB: gPA G2M + x is L1-physical (frames' 2 MiB block) + x.
    let off = frame_pa(2) & (MB2 - 1);
    poke(2, 0, 0x0B0B_0001);
    let ops = [Op::Read(G2M + off), Op::Write(G2M + off + 8, 0x0B0B_0002)];
    run_ok(ncr3, &ops, "2 MiB page");
    check_eq!(seen(0), 0x0B0B_0001, "L2's read through the 2 MiB page");
    check_eq!(peek(2, 1), 0x0B0B_0002, "frame 2 after L2's write (2 MiB)");

    // 1 GiB: gPA G1G + x is L1-physical x.
    poke(3, 0, 0x0C0C_0001);
    let ops = [
        Op::Read(G1G + frame_pa(3)),
        Op::Write(G1G + frame_pa(3) + 8, 0x0C0C_0002),
    ];
    run_ok(ncr3, &ops, "1 GiB page");
    check_eq!(seen(0), 0x0C0C_0001, "L2's read through the 1 GiB page");
    check_eq!(peek(3, 1), 0x0C0C_0002, "frame 3 after L2's write (1 GiB)");
    // And past L0's first 2 MiB page of L1's RAM (L1's stack, at the top
    // of its RAM): the 1 GiB page spans L0's 2 MiB ones.
    let mut probe = [0u64; 2];
    let p = probe.as_mut_ptr();
    let at = p as u64;
    check!(at >= MB2, "L1's stack at {at:#x}, below 2 MiB");
    // SAFETY: L1's own stack array; L2 reads and writes it while L1 waits
    // in VMRUN, so every access here is volatile.
    unsafe {
        core::ptr::write_volatile(p, 0x0C0C_0003);
        core::ptr::write_volatile(p.add(1), 0);
    }
    let ops = [Op::Read(G1G + at), Op::Write(G1G + at + 8, 0x0C0C_0004)];
    run_ok(ncr3, &ops, "1 GiB page, beyond 2 MiB");
    check_eq!(seen(0), 0x0C0C_0003, "L2's read of L1's stack (1 GiB page)");
    // SAFETY: as above.
    let written = unsafe { core::ptr::read_volatile(p.add(1)) };
    check_eq!(
        written,
        0x0C0C_0004,
        "L1's stack after L2's write (1 GiB page)"
    );
    unmap_linear();
}

/// Runs L2 with `ops`; the last must fault: #VMEXIT(NPF) with exactly
/// `info1` and `info2`, after the others completed.
#[track_caller]
fn expect_npf(ncr3: u64, ops: &[Op], info1: u64, info2: u64, what: &str) {
    let e = run(ncr3, ops, |_| {});
    let want = Exit {
        code: ExitCode::Npf,
        info1,
        info2,
    };
    check!(
        e == want && done() == ops.len() as u64 - 1,
        "{what}: got {e:x?} after {} accesses, expected {want:x?} after {}",
        done(),
        ops.len() - 1
    );
}

/// Each kind of nested fault L1's table causes reaches L1 as #VMEXIT(NPF)
/// with EXITINFO1 as APM 15.25.6 defines it (the values kvm-unit-tests
/// svm_npt checks on hardware: every nested access is a user access, so
/// US is always set; guest page-table accesses are writes) and EXITINFO2
/// the L2-physical address. A read of the read-only page first (and of
/// the NX page) installs L0's shadow entry: the write (fetch) after it
/// must still fault, so the shadow's rights are L1's.
pub fn npt_permission_fault_exact(ram: u64) {
    require_npt();
    let efer = rdmsr(EFER);
    // NX in a nested entry counts with the host's (L1's) EFER.NXE.
    wrmsr(EFER, efer | EFER_NXE);
    let ncr3 = build(ram);
    poke(4, 0x25, 0x0D0D_0001);
    let ro = Pte::ReadOnly.gpa() + 0x128;
    expect_npf(
        ncr3,
        &[Op::Read(ro), Op::Write(ro, 1)],
        EI_FINAL | EI_US | EI_RW | EI_P,
        ro,
        "write to a read-only page",
    );
    check_eq!(seen(0), 0x0D0D_0001, "L2's read of the read-only page");
    check_eq!(peek(4, 0x25), 0x0D0D_0001, "the read-only frame");

    // Rights are those of every level (APM 5.6): R/W=0 in the PDE only.
    poke(3, 2, 0x0D0D_0003);
    let ro_pde = G_RO_PDE + 0x10;
    expect_npf(
        ncr3,
        &[Op::Read(ro_pde), Op::Write(ro_pde, 1)],
        EI_FINAL | EI_US | EI_RW | EI_P,
        ro_pde,
        "write to a page read-only in its PDE",
    );
    check_eq!(seen(0), 0x0D0D_0003, "L2's read of that page");
    check_eq!(peek(3, 2), 0x0D0D_0003, "that page's frame");

    // RET at offset 0x40 of the NX frame.
    poke(5, 8, 0xC3);
    let nx = Pte::NoExec.gpa() + 0x40;
    expect_npf(
        ncr3,
        &[Op::Read(nx), Op::Fetch(nx)],
        EI_FINAL | EI_ID | EI_US | EI_P,
        nx,
        "fetch from a no-execute page",
    );
    check_eq!(seen(0), 0xC3, "L2's read of the no-execute page");

    let np = Pte::NotPresent.gpa() + 0x208;
    expect_npf(
        ncr3,
        &[Op::Read(np)],
        EI_FINAL | EI_US,
        np,
        "read of a not-present page",
    );
    expect_npf(
        ncr3,
        &[Op::Write(np, 1)],
        EI_FINAL | EI_US | EI_RW,
        np,
        "write to a not-present page",
    );
    let rsvd = Pte::Reserved.gpa() + 0x10;
    expect_npf(
        ncr3,
        &[Op::Read(rsvd)],
        EI_FINAL | EI_RSVD | EI_US | EI_P,
        rsvd,
        "read of a page with a reserved bit in its entry",
    );
    let sup = Pte::Supervisor.gpa() + 0x18;
    expect_npf(
        ncr3,
        &[Op::Read(sup)],
        EI_FINAL | EI_US | EI_P,
        sup,
        "read of a U=0 page",
    );

    // L2's own page walk: its PML4 entry 1 (linear 512 GiB) points to a
    // PDPT at gPA Pte::L2Pdpt, which the nested table does not map, then
    // maps read-only. The fault is on the walk (bit 33), EXITINFO2 the
    // gPA of the PDPT entry.
    let t = tables();
    // SAFETY: L1's start PML4 is identity-mapped.
    let pml4e0 = unsafe { core::ptr::read_volatile(svm::guest_abi::PML4_GPA as *const u64) };
    t[L2PML4][0] = pml4e0;
    t[L2PML4][1] = Pte::L2Pdpt.gpa() | P | W;
    let l2_cr3 = table_pa(L2PML4);
    let la = (1u64 << 39) | (3 << 30) | 0x10;
    let pdpte = Pte::L2Pdpt.gpa() + 3 * 8;
    for (entry, info1, what) in [
        (
            0,
            EI_WALK | EI_US | EI_RW,
            "L2's PDPT not present in L1's table",
        ),
        (
            frame_pa(2) | P | U,
            EI_WALK | EI_US | EI_RW | EI_P,
            "L2's PDPT read-only in L1's table",
        ),
    ] {
        frame(2).fill(0);
        set_pte(Pte::L2Pdpt, entry);
        let e = run(ncr3, &[Op::Read(la)], |v| v.state.cr3 = l2_cr3);
        let want = Exit {
            code: ExitCode::Npf,
            info1,
            info2: pdpte,
        };
        check!(
            e == want && done() == 0,
            "{what}: got {e:x?} after {} accesses, expected {want:x?}",
            done()
        );
    }
    unmap_linear();
    wrmsr(EFER, efer);
}

/// L2 reads a page; L1 points the gPA at another frame. Without a flush
/// L2 may see either (the APM lets a TLB keep the old translation); after
/// VMRUN with TLB_CONTROL=1, after INVLPGA of the page in L2's ASID, and
/// with a new ASID, L2 must see the new frame.
pub fn npt_stale_mapping_dropped(ram: u64) {
    require_npt();
    let ncr3 = build(ram);
    let (old, new) = (0x5555_0006, 0x7777_0007);
    poke(6, 0, old);
    poke(7, 0, new);
    let g = Pte::Stale.gpa();
    let read = [Op::Read(g)];
    let point_at = |f: usize| set_pte(Pte::Stale, frame_pa(f) | TABLE);
    let read_with = |what: &str, tweak: &dyn Fn(&mut svm::Vmcb)| {
        let e = run(ncr3, &read, tweak);
        check!(
            e.code == ExitCode::Hlt && done() == 1,
            "{what}: L2 ended with {e:x?}"
        );
        seen(0)
    };
    let asid1 = |v: &mut svm::Vmcb| v.control.guest_asid = 1;
    check_eq!(read_with("first read", &asid1), old, "L2's first read");
    point_at(7);
    let unflushed = read_with("no flush", &asid1);
    check!(
        unflushed == old || unflushed == new,
        "without a flush L2 read {unflushed:#x}, neither frame's value"
    );
    println!(
        "without a flush L2 saw the {} frame",
        if unflushed == old { "old" } else { "new" }
    );
    let flush_all = |v: &mut svm::Vmcb| {
        v.control.guest_asid = 1;
        v.control.tlb_control = 1;
    };
    check_eq!(
        read_with("TLB_CONTROL=1", &flush_all),
        new,
        "L2's read after L1 remapped and flushed (TLB_CONTROL=1)"
    );

    // INVLPGA of the page's linear address (= gPA here) in ASID 1.
    point_at(6);
    // SAFETY: INVLPGA (EFER.SVME on) only drops TLB entries.
    unsafe { asm!("invlpga rax, ecx", in("rax") g, in("ecx") 1u32, options(nostack)) };
    check_eq!(
        read_with("INVLPGA", &asid1),
        old,
        "L2's read after L1 remapped and ran INVLPGA"
    );

    // A new ASID has no translations cached.
    point_at(7);
    let asid2 = |v: &mut svm::Vmcb| v.control.guest_asid = 2;
    check_eq!(
        read_with("new ASID", &asid2),
        new,
        "L2's read after L1 remapped and changed ASID"
    );

    // Rights narrowed: L2 writes the page (a writable shadow entry), L1
    // makes it read-only and flushes: L2's next write is L1's #NPF.
    let w = [Op::Write(g + 8, 0x0E0E_0001)];
    let e = run(ncr3, &w, asid2);
    check!(
        e.code == ExitCode::Hlt && done() == 1,
        "L2's write before the narrowing: {e:x?}"
    );
    check_eq!(peek(7, 1), 0x0E0E_0001, "frame 7 after L2's write");
    set_pte(Pte::Stale, frame_pa(7) | P | U | AD);
    let e = run(ncr3, &[Op::Write(g + 8, 0x0E0E_0002)], |v| {
        v.control.guest_asid = 2;
        v.control.tlb_control = 1;
    });
    let want = Exit {
        code: ExitCode::Npf,
        info1: EI_FINAL | EI_US | EI_RW | EI_P,
        info2: g + 8,
    };
    check!(
        e == want,
        "L2's write after L1 made the page read-only and flushed: got {e:x?}, expected {want:x?}"
    );
    check_eq!(peek(7, 1), 0x0E0E_0001, "frame 7 after the refused write");
    unmap_linear();
}

/// L1's table maps L2-physical pages onto L1-physical addresses that are
/// not L1's RAM: just past it, at 16 MiB (host RAM where L0 itself runs),
/// the last page below MAXPHYADDR, a 2 MiB page and a 1 GiB page. They
/// are unbacked memory to L1: reads give all-ones, writes are dropped
/// (L0's rule for L1's unbacked memory, hv/src/vmm/npt.rs), no #NPF reaches
/// L1 (the fault is L0's), and nothing of the host shows through.
pub fn npt_outside_l1_ram(ram: u64) {
    require_npt();
    let ncr3 = build(ram);
    let targets = [
        ("just past RAM", Pte::OutJustPastRam.gpa() + 0x100),
        ("at 16 MiB", Pte::Out16M.gpa()),
        ("below MAXPHYADDR", Pte::OutTop.gpa() + 0xFF8),
        ("2 MiB page", G2M_OUT + 0x1_2340),
        ("1 GiB page", G1G_OUT + 0x20_0000),
    ];
    for (what, a) in targets {
        if a >= G1G_OUT && max_phys_bits() <= 32 {
            continue;
        }
        let ops = [Op::Read(a), Op::Write(a, 0x1234_5678), Op::Read(a)];
        run_ok(ncr3, &ops, what);
        check!(
            (seen(0), seen(2)) == (u64::MAX, u64::MAX),
            "{what}: L2 read {:#x} before its write, {:#x} after, expected all-ones",
            seen(0),
            seen(2)
        );
    }
    // L1's nested table itself outside L1's RAM: its root reads all-ones
    // (APM/PC: unbacked memory), a PML4E with reserved bits, so L2's first
    // access, the walk of its own PML4 (L1's, at PML4_GPA) for its code
    // fetch, is #NPF with RSVD on the walk of L2's tables (bit 33, a write
    // as guest page-table accesses are).
    let e = run(ram + 0x100_0000, &[], |_| {});
    let want = Exit {
        code: ExitCode::Npf,
        info1: EI_WALK | EI_RSVD | EI_US | EI_RW | EI_P,
        info2: svm::guest_abi::PML4_GPA,
    };
    check_eq!(e, want, "L2's exit with nCR3 outside L1's RAM");

    // Every page of the 2 MiB one reads all-ones too (no host frame leaks
    // in a larger shadow page).
    let ops = [
        Op::Read(G2M_OUT),
        Op::Read(G2M_OUT + 0x7_F000),
        Op::Read(G2M_OUT + MB2 - 8),
    ];
    run_ok(ncr3, &ops, "2 MiB page, three pages of it");
    check_eq!(
        (seen(0), seen(1), seen(2)),
        (u64::MAX, u64::MAX, u64::MAX),
        "L2's reads across the unbacked 2 MiB page"
    );
    unmap_linear();
}

/// L2 reads and writes L1's local APIC through L1's nested table, at a
/// gPA that is not the APIC's address: the version register, and TPR
/// written by L2 is L1's TPR (one APIC, emulated by L0).
pub fn npt_l2_apic_mmio(ram: u64) {
    require_npt();
    guest_stubs::lapic::map();
    let ncr3 = build(ram);
    let a = Pte::Apic.gpa();
    // The version again, by code at a gPA L1's table remaps (MOV EAX,
    // [RDI]; RET): L0 fetches the instruction it emulates through L1's
    // table too.
    let code = [0x8Bu8, 0x07, 0xC3, 0, 0, 0, 0, 0];
    poke(8, 0, u64::from_le_bytes(code));
    let ops = [
        Op::Read32(a + 0x30),
        Op::Write32(a + 0x80, 0x30),
        Op::Read32(a + 0x80),
        Op::CallRdi(Pte::Code.gpa(), a + 0x30),
    ];
    run_ok(ncr3, &ops, "L1's APIC page through L1's table");
    check_eq!(
        seen(3),
        0x0005_0014,
        "APIC version read by remapped L2 code"
    );
    check_eq!(seen(0), 0x0005_0014, "APIC version read by L2");
    check_eq!(seen(2), 0x30, "TPR written and read by L2");
    check_eq!(
        guest_stubs::lapic::read(0x80),
        0x30,
        "TPR seen by L1 after L2 wrote it"
    );
    guest_stubs::lapic::write(0x80, 0);
    unmap_linear();
}

/// nCR3 for the mode tests' L2s (`crate::modes`); 0: no nested paging.
static MODE_NCR3: AtomicU64 = AtomicU64::new(0);

/// Turns nested paging on in `v` while [`npt_l2_in_every_mode`] runs.
pub(crate) fn apply(v: &mut svm::Vmcb) {
    let ncr3 = MODE_NCR3.load(Ordering::SeqCst);
    if ncr3 != 0 {
        v.control.nested_ctl = 1;
        v.control.ncr3 = ncr3;
    }
}

/// L2 in every paging mode on top of L1's nested table (kvm-unit-tests'
/// `mode_switch` with NPT): started in each mode, and touring them all
/// from long mode. L2's own tables, code and the instructions L0 emulates
/// for it are reached through L1's table (identity over L1's RAM; the
/// table's format is L1's long mode whatever L2's mode, APM 15.25.4).
pub fn npt_l2_in_every_mode(ram: u64) {
    require_npt();
    let ncr3 = build(ram);
    MODE_NCR3.store(ncr3, Ordering::SeqCst);
    crate::modes::every_start_runs_cpuid();
    crate::modes::l2_tours_every_mode();
    MODE_NCR3.store(0, Ordering::SeqCst);
    unmap_linear();
}

/// L0 emulates instructions of an L2 whose own page tables are at
/// L2-physical addresses L1's nested table maps elsewhere: L2's PML4 and
/// PDPT are at gPA 1 GiB + their L1-physical address (the 1 GiB page onto
/// L1-physical 0), where L1-physical memory is unbacked (all-ones). L0's
/// walk of L2's tables must read them through L1's table (APM 15.25.4:
/// the guest's page-table addresses are guest-physical, translated by the
/// nested table) for the fetch of the MMIO instructions it emulates (L1's
/// APIC), for code at a remapped gPA, and for REP INSB's destination.
pub fn npt_l2_tables_remapped(ram: u64) {
    require_npt();
    guest_stubs::lapic::map();
    let ncr3 = build(ram);
    let t = tables();
    let l1_pml4 = svm::guest_abi::PML4_GPA as *const u64;
    for (i, e) in t[L2PML4].iter_mut().enumerate() {
        // SAFETY: L1's PML4 is in its identity-mapped RAM.
        *e = unsafe { core::ptr::read_volatile(l1_pml4.add(i)) };
    }
    let l1_pdpt = (t[L2PML4][0] & ENTRY_ADDR) as *const u64;
    for (i, e) in t[L2PDPT].iter_mut().enumerate() {
        // SAFETY: as above (after build: it maps linear 1-3 GiB too).
        *e = unsafe { core::ptr::read_volatile(l1_pdpt.add(i)) };
    }
    t[L2PML4][0] = (G1G + table_pa(L2PDPT)) | (t[L2PML4][0] & !ENTRY_ADDR);
    let l2_cr3 = G1G + table_pa(L2PML4);
    let apic = Pte::Apic.gpa();
    // MOV EAX, [RDI]; RET in frame 8, at the remapped gPA Pte::Code.
    poke(8, 0, u64::from_le_bytes([0x8B, 0x07, 0xC3, 0, 0, 0, 0, 0]));
    poke(0, 2, 0x1111_0001);
    poke(0, 9, 0);
    poke(0, 10, 0x2222_0002);
    let ops = [
        Op::Read(Pte::Remap.gpa() + 2 * 8),
        Op::Read32(apic + 0x30),
        Op::CallRdi(Pte::Code.gpa(), apic + 0x30),
        Op::InsB(Pte::Remap.gpa() + 9 * 8, 8),
    ];
    let e = run(ncr3, &ops, |v| v.state.cr3 = l2_cr3);
    check!(
        e.code == ExitCode::Hlt && done() == ops.len() as u64,
        "L2 on remapped tables ended with {e:x?} after {} of {} accesses",
        done(),
        ops.len()
    );
    check_eq!(seen(0), 0x1111_0001, "L2's read of frame 0 (its own walk)");
    check_eq!(
        seen(1),
        0x0005_0014,
        "APIC version read by L2 (L0 emulated)"
    );
    check_eq!(seen(2), 0x0005_0014, "APIC version read by remapped code");
    check_eq!(
        peek(0, 9),
        u64::from_le_bytes([INS_BYTE; 8]),
        "frame 0 after L2's REP INSB (L0 emulated)"
    );
    check_eq!(peek(0, 10), 0x2222_0002, "frame 0 past REP INSB's bytes");
    unmap_linear();
}

/// The A/D bits the nested walk sets in L1's table (APM 15.25.5 and 5.4.2:
/// A in every nested entry the walk uses, D in the leaf of a written
/// page only; non-leaf entries get no D). Every entry starts with A=D=0
/// ([`build`]); L2 reads a 4 KiB page and a 2 MiB one, writes another
/// 4 KiB page and a 1 GiB one. Then L2 writes the page it only read: its
/// shadow entry must not have allowed the write (D clear), so D is set.
pub fn npt_ad_bits_set(ram: u64) {
    require_npt();
    let ncr3 = build(ram);
    let off2m = frame_pa(2) & (MB2 - 1);
    poke(0, 11, 0x3333_0001);
    poke(2, 3, 0x3333_0002);
    poke(3, 12, 0);
    let ops = [
        Op::Read(Pte::Remap.gpa() + 11 * 8),
        Op::Read(G2M + off2m + 3 * 8),
        Op::Write(Pte::Alias1.gpa() + 12 * 8, 0x3333_0003),
        Op::Write(G1G + frame_pa(3) + 12 * 8, 0x3333_0004),
    ];
    let flush = |v: &mut svm::Vmcb| {
        v.control.guest_asid = 3;
        v.control.tlb_control = 1;
    };
    let e = run(ncr3, &ops, flush);
    check!(
        e.code == ExitCode::Hlt && done() == ops.len() as u64,
        "L2 ended with {e:x?} after {} of {} accesses",
        done(),
        ops.len()
    );
    check_eq!(seen(0), 0x3333_0001, "L2's read of frame 0");
    check_eq!(seen(1), 0x3333_0002, "L2's read of frame 2 (2 MiB page)");
    check_eq!(peek(1, 12), 0x3333_0003, "frame 1 after L2's write");
    check_eq!(peek(3, 12), 0x3333_0004, "frame 3 after L2's write (1 GiB)");
    let ad = |table: usize, i: usize| {
        // SAFETY: L2 is stopped; the CPU (L0) wrote the bits behind the
        // compiler's back.
        unsafe { core::ptr::read_volatile(&raw const tables()[table][i]) & (A | D) }
    };
    let (g4k, g2m) = ((G4K / MB2) as usize, (G2M / MB2) as usize);
    for (table, i, want, what) in [
        (NPML4, 0, A, "PML4E 0 (table)"),
        (NPDPT, 0, A, "PDPTE 0 (table)"),
        (NPD, g4k, A, "PDE of the 4 KiB pages (table)"),
        (NPT4K, Pte::Remap as usize, A, "PTE of the page read"),
        (
            NPT4K,
            Pte::Alias1 as usize,
            A | D,
            "PTE of the page written",
        ),
        (NPT4K, Pte::Alias2 as usize, 0, "PTE of a page not used"),
        (
            NPT4K,
            Pte::Stale as usize,
            0,
            "PTE of another page not used",
        ),
        (NPD, g2m, A, "2 MiB PDE of the page read"),
        (NPDPT, 1, A | D, "1 GiB PDPTE of the page written"),
    ] {
        check!(
            ad(table, i) == want,
            "A/D of L1's nested {what}: got {:#x}, expected {want:#x}",
            ad(table, i)
        );
    }
    // The read-only-until-dirty shadow entry: L2's write to the page it
    // read reaches L0, which sets D (no flush: the shadow entry stays).
    let ops = [Op::Write(Pte::Remap.gpa() + 11 * 8, 0x3333_0005)];
    let e = run(ncr3, &ops, |v| v.control.guest_asid = 3);
    check!(
        e.code == ExitCode::Hlt && done() == 1,
        "L2's write to the page it read: {e:x?}"
    );
    check_eq!(peek(0, 11), 0x3333_0005, "frame 0 after L2's write");
    check_eq!(
        ad(NPT4K, Pte::Remap as usize),
        A | D,
        "A/D of L1's nested PTE after L2 wrote the page it read"
    );
    unmap_linear();
}
