//! Nested tests of ISSUE 8 A6 and section C: an L2 with odd encodings and
//! the privileged writes that used to take the emulated machine down. Each
//! L2 payload here is its own entry point; it leaves what it saw in
//! [`SEEN`] and yields with HLT.

use crate::l1::{self, Regs};
use crate::run_expect;
use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};
use guest_stubs::privileged::{self as p, load_test_gdt};
use guest_stubs::{check, check_eq, cpu};
use svm::{ExitCode, VmcbSegment};

/// What the L2 payload saw.
pub(crate) static SEEN: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
/// The payload's input.
static INPUT: AtomicU64 = AtomicU64::new(0);

pub(crate) fn seen(i: usize) -> u64 {
    SEEN[i].load(Ordering::SeqCst)
}

pub(crate) fn put(i: usize, v: u64) {
    SEEN[i].store(v, Ordering::SeqCst);
}

pub(crate) fn yield_forever() -> ! {
    loop {
        // SAFETY: HLT in L2 exits to L1, which intercepts it.
        unsafe { asm!("hlt", options(nomem, nostack)) };
    }
}

/// A fresh vmcb12 for `entry` with `input`.
fn setup(entry: extern "C" fn() -> !, input: u64) -> Regs {
    l1::enable_svm();
    SEEN.iter().for_each(|s| s.store(0, Ordering::SeqCst));
    INPUT.store(input, Ordering::SeqCst);
    l1::prepare(entry);
    Regs::default()
}

extern "C" fn cpuid_odd() -> ! {
    for form in 0..4 {
        put(form, u64::from(p::cpuid_odd(form, 0)[0]));
    }
    yield_forever()
}

/// L2 runs CPUID in the encodings a fuzzer found (ISSUE 8 A6): L0
/// emulates them when L1 does not intercept CPUID, and gives L1 the right
/// nRIP when it does.
pub fn l2_cpuid_odd_prefixes() {
    let mut regs = setup(cpuid_odd, 0);
    run_expect(&mut regs, ExitCode::Hlt);
    let want = u64::from(guest_stubs::cpu::cpuid(0, 0)[0]);
    for (form, bytes) in p::ODD_CPUID.iter().enumerate() {
        check_eq!(seen(form), want, format_args!("L2's CPUID {bytes:02x?}"));
    }
    let mut regs = setup(cpuid_odd, 0);
    l1::vmcb().control.intercept_misc1 |= svm::InterceptMisc1::CPUID.bits();
    for bytes in p::ODD_CPUID {
        let (_, code) = l1::run(&mut regs);
        let v = l1::vmcb();
        check_eq!(ExitCode::from_raw(code), ExitCode::Cpuid, "L2's exit");
        check_eq!(
            v.control.next_rip - v.state.rip,
            bytes.len() as u64,
            format_args!("nRIP - RIP for {bytes:02x?}")
        );
        v.state.rax = 0;
        v.state.rip = v.control.next_rip;
    }
}

extern "C" fn legacy_visit() -> ! {
    let (leaf0, efer) = p::visit_legacy_mode();
    put(0, u64::from(leaf0));
    put(1, u64::from(efer));
    yield_forever()
}

extern "C" fn cr0_zero() -> ! {
    p::write_cr0(0);
    put(0, 1);
    yield_forever()
}

extern "C" fn cr0_selective() -> ! {
    let cr0 = p::read_cr(0);
    p::write_cr0(cr0 | 1 << 3);
    put(0, 1);
    p::write_cr0(cr0 | 1 << 30);
    put(1, 1);
    yield_forever()
}

/// L2 leaves long mode and runs CPUID with CR0.PG=0, CR4.PAE=0,
/// EFER.LME=1 (ISSUE 8 C1), then comes back; `mov cr0, 0` in 64-bit L2 is
/// #GP (to L1, which intercepts it); with L1's CR0 write intercept the
/// write is L1's exit; with L1's selective CR0 write intercept only a
/// write changing more than TS/MP is (L0 intercepts every CR0 write, so
/// L0 tells them apart, APM 15.9.1).
pub fn l2_leaves_long_mode() {
    use svm::msr::{EFER_LMA, EFER_LME};
    let (gdt, limit) = load_test_gdt();
    let mut regs = setup(legacy_visit, 0);
    l1::vmcb().state.gdtr = VmcbSegment::new(0, 0, limit, gdt);
    run_expect(&mut regs, ExitCode::Hlt);
    check_eq!(
        seen(0),
        u64::from(guest_stubs::cpu::cpuid(0, 0)[0]),
        "L2's CPUID.0 EAX without paging"
    );
    check_eq!(
        seen(1) & (EFER_LME | EFER_LMA),
        EFER_LME,
        "L2's EFER without paging"
    );
    check_eq!(
        l1::vmcb().state.efer & (EFER_LME | EFER_LMA),
        EFER_LME | EFER_LMA,
        "vmcb12 EFER after the exit"
    );

    let mut regs = setup(cr0_zero, 0);
    l1::vmcb().control.intercept_exceptions |= 1 << 13;
    run_expect(&mut regs, ExitCode::Exception(13));
    check_eq!(l1::vmcb().control.exit_info1, 0, "#GP error code");
    check_eq!(seen(0), 0, "L2 went past mov cr0, 0");

    let mut regs = setup(cr0_zero, 0);
    l1::vmcb().control.intercept_cr |= 1 << 16;
    run_expect(&mut regs, ExitCode::CrWrite(0));

    let mut regs = setup(cr0_selective, 0);
    l1::vmcb().control.intercept_misc1 |= svm::InterceptMisc1::CR0_SEL_WRITE.bits();
    run_expect(&mut regs, ExitCode::Cr0SelWrite);
    check_eq!(
        (seen(0), seen(1)),
        (1, 0),
        "L2's progress at the selective exit"
    );
    check_eq!(l1::vmcb().state.cr0 & (1 << 3), 1 << 3, "L2's CR0.TS");
}

extern "C" fn dr7_write() -> ! {
    p::write_dr7(INPUT.load(Ordering::SeqCst));
    put(0, p::read_dr7());
    yield_forever()
}

/// L1 arms DR7 = 0x10401, vmcb12.DR7 = 0x401, L2 writes DR7 = 0x400 (ISSUE
/// 8 C3): L2 sees its write, vmcb12 gets it; bits 63:32 are #GP.
pub fn l2_dr7_write() {
    p::write_dr7(0x10401);
    check_eq!(p::read_dr7(), 0x10401, "L1's DR7");
    let mut regs = setup(dr7_write, 0x400);
    l1::vmcb().state.dr7 = 0x401;
    run_expect(&mut regs, ExitCode::Hlt);
    check_eq!(seen(0), 0x400, "L2's DR7 after its write");
    check_eq!(l1::vmcb().state.dr7, 0x400, "vmcb12 DR7");
    // #VMEXIT disables L1's breakpoints (DR7 = 0x400), as KVM does.
    check_eq!(p::read_dr7(), 0x400, "L1's DR7 after the #VMEXIT");

    let mut regs = setup(dr7_write, 1 << 32);
    l1::vmcb().control.intercept_exceptions |= 1 << 13;
    run_expect(&mut regs, ExitCode::Exception(13));
    check_eq!(seen(0), 0, "L2 went past a DR7 write with bit 32");
    p::write_dr7(0x400);
}

extern "C" fn cr8_write() -> ! {
    p::write_cr8(INPUT.load(Ordering::SeqCst));
    put(0, p::read_cr8() | 0x100);
    yield_forever()
}

const V_IRQ: u64 = 1 << 8;

/// vmcb12 holds a virtual interrupt above L2's TPR and L2 writes CR8
/// (ISSUE 8 C4): the write is V_TPR; with IF clear the interrupt stays
/// pending; with IF set, lowering the TPR below its priority delivers it.
pub fn l2_cr8_with_v_irq() {
    let int_ctl = |tpr: u64, prio: u64| V_IRQ | tpr | prio << 16 | 0x30 << 32;
    let mut regs = setup(cr8_write, 3);
    l1::vmcb().control.int_ctl = int_ctl(0, 0xf);
    run_expect(&mut regs, ExitCode::Hlt);
    check_eq!(seen(0), 0x103, "L2's CR8 after mov cr8, 3");
    let c = l1::vmcb().control.int_ctl;
    check_eq!(
        (c & 0xff, c & V_IRQ),
        (3, V_IRQ),
        "vmcb12 V_TPR, V_IRQ (IF clear)"
    );

    // Masked by TPR 15 until L2 writes 0; then taken at once.
    crate::l2::GOT_VECTOR.store(0, Ordering::SeqCst);
    let mut regs = setup(cr8_write, 0);
    let (idt, limit) = crate::l2::l2_idt();
    let v = l1::vmcb();
    v.control.int_ctl = int_ctl(0xf, 2);
    v.state.idtr = VmcbSegment::new(0, 0, limit, idt);
    v.state.rflags |= 1 << 9;
    run_expect(&mut regs, ExitCode::Hlt);
    check_eq!(
        crate::l2::GOT_VECTOR.load(Ordering::SeqCst),
        0x30,
        "vector taken after CR8 lowered the TPR"
    );
    check_eq!(
        l1::vmcb().control.int_ctl & V_IRQ,
        0,
        "V_IRQ after delivery"
    );

    let mut regs = setup(cr8_write, 16);
    l1::vmcb().control.intercept_exceptions |= 1 << 13;
    run_expect(&mut regs, ExitCode::Exception(13));
}

/// An IDT whose 32 exception vectors are present (their handler is never
/// reached: the stack switch fails first).
#[repr(C, align(16))]
struct Idt([[u64; 2]; 32]);

static mut USER_IDT: Idt = Idt([[0; 2]; 32]);

extern "C" fn user_entry() -> ! {
    yield_forever()
}

fn vmload_vmsave(insn_vmload: bool, pa: u64) {
    // SAFETY: emulated by L0 on L1's memory at a valid, aligned page.
    unsafe {
        if insn_vmload {
            asm!("vmload rax", in("rax") pa, options(nostack));
        } else {
            asm!("vmsave rax", in("rax") pa, options(nostack));
        }
    }
}

/// VMLOAD of a zeroed page gives L1 a TR without the present bit, and an
/// L2 at CPL 3 (inheriting it) takes a fault (ISSUE 8 C2): as on hardware
/// the stack switch through that TSS (limit 0) fails, #TS, #DF, shutdown —
/// L1 gets #VMEXIT(SHUTDOWN), and the machine lives on.
pub fn vmload_zero_tr_user_fault() {
    static mut SAVED: l1::Page = l1::Page([0; 4096]);
    static mut ZERO: l1::Page = l1::Page([0; 4096]);
    let (gdt, limit) = load_test_gdt();
    let mut regs = setup(user_entry, 0);
    vmload_vmsave(false, &raw mut SAVED as u64);
    vmload_vmsave(true, &raw mut ZERO as u64);
    // SAFETY: single vCPU; L2 does not run yet.
    let idt = unsafe { &mut *core::ptr::addr_of_mut!(USER_IDT) };
    let h = user_entry as *const () as u64;
    for gate in idt.0.iter_mut() {
        gate[0] = (h & 0xffff) | (0x08 << 16) | (0x8e00 << 32) | ((h >> 16) & 0xffff) << 48;
        gate[1] = h >> 32;
    }
    let v = l1::vmcb();
    v.state.gdtr = VmcbSegment::new(0, 0, limit, gdt);
    v.state.idtr = VmcbSegment::new(0, 0, 32 * 16 - 1, idt as *const Idt as u64);
    let seg = |sel: u16| {
        VmcbSegment::new(
            sel,
            VmcbSegment::attrib_from_descriptor(p::descriptor(sel)),
            0xffff_ffff,
            0,
        )
    };
    v.state.cs = seg(p::USER_CODE64);
    v.state.ss = seg(p::USER_DATA);
    v.state.ds = seg(p::USER_DATA);
    v.state.es = seg(p::USER_DATA);
    v.state.cpl = 3;
    let (_, code) = l1::run(&mut regs);
    vmload_vmsave(true, &raw mut SAVED as u64);
    check_eq!(ExitCode::from_raw(code), ExitCode::Shutdown, "L2's exit");
    check!(seen(0) == 0, "L2 ran");
}

extern "C" fn cr3_write() -> ! {
    p::write_cr3(INPUT.load(Ordering::SeqCst));
    put(0, p::read_cr(3));
    yield_forever()
}

/// The fuzzer's CR3 (bit 63 and bits above MAXPHYADDR).
const BAD_CR3: u64 = 0xea38_a504_73e1_82b5;

/// L2 writes a CR3 with reserved bits and L1 does not intercept CR3
/// writes: the write is #GP(0) (to L1, which intercepts #GP) and vmcb12's
/// CR3 is unchanged, where QEMU alone loads it and refuses the next VMRUN
/// (VMEXIT_INVALID mid-run). A valid write loads; with L1's CR3 write
/// intercept the write is L1's exit.
pub fn l2_cr3_reserved_bits() {
    let mut regs = setup(cr3_write, BAD_CR3);
    let cr3 = l1::vmcb().state.cr3;
    l1::vmcb().control.intercept_exceptions |= 1 << 13;
    run_expect(&mut regs, ExitCode::Exception(13));
    check_eq!(l1::vmcb().control.exit_info1, 0, "#GP error code");
    check_eq!(seen(0), 0, "L2 went past the bad CR3 write");
    check_eq!(l1::vmcb().state.cr3, cr3, "vmcb12 CR3 after the #GP");

    let mut regs = setup(cr3_write, cr3 | 0x18);
    run_expect(&mut regs, ExitCode::Hlt);
    check_eq!(seen(0), cr3 | 0x18, "L2's CR3 after a valid write");
    check_eq!(l1::vmcb().state.cr3, cr3 | 0x18, "vmcb12 CR3");

    let mut regs = setup(cr3_write, BAD_CR3);
    l1::vmcb().control.intercept_cr |= 1 << (16 + 3);
    run_expect(&mut regs, ExitCode::CrWrite(3));
    check_eq!(seen(0), 0, "L2 went past its intercepted CR3 write");
    check_eq!(l1::vmcb().state.cr3, cr3, "vmcb12 CR3 at L1's CR3 exit");
}

extern "C" fn dr0_3_write() -> ! {
    let v = INPUT.load(Ordering::SeqCst);
    // SAFETY: CPL 0; the fuzz case's instruction.
    unsafe { asm!("mov dr0, r8", in("r8") v, options(nomem, nostack)) };
    for n in 1..4u8 {
        cpu::write_dr(n, v + 8 * u64::from(n));
    }
    for n in 0..4u8 {
        put(usize::from(n), cpu::read_dr(n));
    }
    yield_forever()
}

/// vmcb12 arms DR7 (0x11fff as in the fuzz case, seed 2 iteration 29884,
/// with DR0's type changing between runs) and L2 writes DR0-DR3 (ISSUE 8
/// C, the fuzz SIGSEGV): L0 emulates the writes, L2 reads them back and L1
/// sees them after the #VMEXIT (one set, not switched: APM 15.5.1). With
/// vmcb12's DR0 write intercept the write is L1's exit. Native writes kill
/// QEMU: round 0 inserts a watchpoint, round 1 removes it as a breakpoint.
pub fn l2_dr0_3_writes_armed() {
    const DR7S: [u64; 6] = [0x10401, 0x401, 0x11fff, 0x300ff, 0x11fff, 0x401];
    // A new VM: the DR0-3 an earlier VM left (guest::dr0_3_writes_armed)
    // are not its own.
    for n in 0..4u8 {
        check_eq!(cpu::read_dr(n), 0, format_args!("DR{n} of a new VM"));
    }
    let mut last = 0;
    for (round, dr7) in DR7S.into_iter().enumerate() {
        last = 0xdead_0000 + round as u64 * 0x100;
        let mut regs = setup(dr0_3_write, last);
        l1::vmcb().state.dr7 = dr7;
        run_expect(&mut regs, ExitCode::Hlt);
        for n in 0..4u8 {
            let want = last + 8 * u64::from(n);
            let what = format_args!("L2's DR{n}, vmcb12 DR7 {dr7:#x}");
            check_eq!(seen(usize::from(n)), want, what);
            check_eq!(
                cpu::read_dr(n),
                want,
                format_args!("L1's DR{n} after the #VMEXIT")
            );
        }
    }
    let mut regs = setup(dr0_3_write, 0xbad0);
    l1::vmcb().state.dr7 = 0x11fff;
    l1::vmcb().control.intercept_dr |= 1 << 16;
    run_expect(&mut regs, ExitCode::DrWrite(0));
    check_eq!(cpu::read_dr(0), last, "DR0 after L1's DR0 write exit");
    for n in 0..4u8 {
        cpu::write_dr(n, 0);
    }
}
