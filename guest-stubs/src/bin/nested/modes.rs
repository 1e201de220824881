//! L2 in every CPU mode (issue 10 item 3): L1 starts L2 in real mode,
//! 16- and 32-bit protected mode, 32-bit paging and PAE paging, and L2
//! runs CPUID there (L1 does not intercept it, so L0 fetches it through
//! L2's paging and decodes it with L2's code size); an L2 started in long
//! mode visits every mode and comes back ([`guest_stubs::modes::tour`]).

use crate::l1::{self, Regs};
use crate::run_expect;
use core::arch::{asm, global_asm};
use core::ptr::addr_of_mut;
use guest_stubs::modes::{self, LegacyTables, CPUID_HLT};
use guest_stubs::{check, check_eq, cpu};
use svm::msr::{EFER_LMA, EFER_LME, EFER_SVME};
use svm::{ExitCode, VmcbSegment};

/// Where L1 puts [`CPUID_HLT`] for an L2 in real mode (segment 0x800).
const REAL_MODE_CODE: u64 = 0x8000;

/// PE, ET, NE.
const CR0_PM: u64 = 0x31;
const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;

/// A mode L2 starts in.
struct Start {
    name: &'static str,
    cr0: u64,
    cr3: u64,
    cr4: u64,
    cs: VmcbSegment,
    data: VmcbSegment,
    rip: u64,
}

fn starts(t: &LegacyTables) -> [Start; 7] {
    let code32 = VmcbSegment::new(0x18, 0xc9b, u32::MAX, 0);
    let code16 = VmcbSegment::new(0x20, 0x89b, u32::MAX, 0);
    let data = VmcbSegment::new(0x10, 0xc93, u32::MAX, 0);
    let at = modes::cpuid_hlt_address();
    let pm = |name, cr0, cr3, cr4, cs| Start {
        name,
        cr0,
        cr3,
        cr4,
        cs,
        data,
        rip: at,
    };
    [
        Start {
            name: "real mode",
            cr0: 0x30,
            cr3: 0,
            cr4: 0,
            cs: VmcbSegment::new((REAL_MODE_CODE >> 4) as u16, 0x9b, 0xffff, REAL_MODE_CODE),
            data: VmcbSegment::new(0, 0x93, 0xffff, 0),
            rip: 0,
        },
        pm("16-bit protected mode", CR0_PM, 0, 0, code16),
        pm("32-bit protected mode", CR0_PM, 0, 0, code32),
        pm(
            "32-bit paging, 4 MiB pages",
            CR0_PM | CR0_PG,
            t.pd_pse,
            CR4_PSE,
            code32,
        ),
        pm(
            "32-bit paging, 4 KiB pages",
            CR0_PM | CR0_PG,
            t.pd_4k,
            0,
            code32,
        ),
        pm("PAE paging", CR0_PM | CR0_PG, t.pdpt, CR4_PAE, code32),
        // CR3 bits 4:0 are ignored with PAE (APM 3.1.2).
        pm(
            "PAE paging, CR3 bits 4:3 set",
            CR0_PM | CR0_PG,
            t.pdpt | 0x18,
            CR4_PAE,
            code32,
        ),
    ]
}

/// Prepares vmcb12 for an L2 starting in `start`, at CPUID leaf 0.
fn prepare(start: &Start) -> Regs {
    l1::enable_svm();
    l1::prepare(crate::l2::entry);
    crate::npt::apply(l1::vmcb());
    let s = &mut l1::vmcb().state;
    s.cr0 = start.cr0;
    s.cr3 = start.cr3;
    s.cr4 = start.cr4;
    s.efer = EFER_SVME;
    s.cs = start.cs;
    for seg in [&mut s.ss, &mut s.ds, &mut s.es, &mut s.fs, &mut s.gs] {
        *seg = start.data;
    }
    s.rip = start.rip;
    s.rax = 0;
    Regs::default()
}

/// L2 starts in each mode of [`starts`], runs CPUID and HLT (shared with
/// `crate::npt`, which runs it on L1's nested table).
pub(crate) fn every_start_runs_cpuid() {
    let t = modes::legacy_tables();
    for (i, b) in CPUID_HLT.iter().enumerate() {
        // SAFETY: identity-mapped L1 RAM below the image, unused by L1.
        unsafe { ((REAL_MODE_CODE + i as u64) as *mut u8).write_volatile(*b) };
    }
    let [max_leaf, vendor, ..] = cpu::cpuid(0, 0);
    for start in starts(&t) {
        let mut regs = prepare(&start);
        run_expect(&mut regs, ExitCode::Hlt);
        let s = &l1::vmcb().state;
        check_eq!(
            (s.rax, regs.gpr[0]),
            (u64::from(max_leaf), u64::from(vendor)),
            format_args!("L2's CPUID.0 EAX, EBX in {}", start.name)
        );
        check_eq!(
            s.rip,
            start.rip + 2,
            format_args!("L2's RIP at HLT in {}", start.name)
        );
        check_eq!(
            (s.cr0, s.efer & (EFER_LME | EFER_LMA)),
            (start.cr0, 0),
            format_args!("vmcb12 CR0, EFER.LME/LMA after {}", start.name)
        );
    }
}

/// L1 starts L2 in each mode; L2 runs CPUID (emulated by L0 in that mode)
/// and HLT (L1's exit, 2 bytes further). A PAE vmcb12 whose PDPTE has a
/// reserved bit gets VMEXIT_INVALID (no nested paging for L2: VMRUN loads
/// the PDPTEs); ignored bits (11:9) run.
pub fn l2_starts_in_every_mode() {
    every_start_runs_cpuid();
    let t = modes::legacy_tables();
    let [max_leaf, ..] = cpu::cpuid(0, 0);
    let pae = &starts(&t)[5];
    let pdpte0 = modes::pdpte0();
    for (what, pdpte1, invalid) in [
        ("bit 52", pdpte0 | 1 << 52, true),
        ("bit 1", pdpte0 | 1 << 1, true),
        ("bits 11:9 (ignored)", pdpte0 | 0xe00, false),
    ] {
        modes::set_pdpte(1, pdpte1);
        let mut regs = prepare(pae);
        let (_, code) = l1::run(&mut regs);
        modes::set_pdpte(1, 0);
        match invalid {
            true => check_eq!(
                code,
                crate::VMEXIT_INVALID,
                format_args!("VMRUN with PDPTE 1 {what}")
            ),
            false => check_eq!(
                ExitCode::from_raw(code),
                ExitCode::Hlt,
                format_args!("L2's exit with PDPTE 1 {what}")
            ),
        }
    }
    check!(
        l1::vmcb().state.rax == u64::from(max_leaf),
        "L2's CPUID after the PDPTE cases"
    );
}

static mut TOUR: Option<modes::Seen> = None;

extern "C" fn tour_then_hlt() -> ! {
    let seen = modes::tour();
    // SAFETY: L1 reads it only after L2's HLT exit.
    unsafe { *addr_of_mut!(TOUR) = Some(seen) };
    loop {
        // SAFETY: HLT in L2 exits to L1, which intercepts it.
        unsafe { asm!("hlt", options(nomem, nostack)) };
    }
}

/// L2, started in long mode, visits every mode and comes back (as
/// kvm-unit-tests' `mode_switch` does): L0 emulates its CR0/CR3/CR4 and
/// EFER writes (L1 intercepts none), LMSW in 16-bit code and real mode,
/// and CPUID in every mode.
pub fn l2_tours_every_mode() {
    // SAFETY: L2 is not running.
    unsafe { *addr_of_mut!(TOUR) = None };
    l1::enable_svm();
    l1::prepare(tour_then_hlt);
    crate::npt::apply(l1::vmcb());
    let mut regs = Regs::default();
    run_expect(&mut regs, ExitCode::Hlt);
    // SAFETY: L2 is stopped.
    let Some(seen) = (unsafe { *addr_of_mut!(TOUR) }) else {
        guest_stubs::verdict::fail(format_args!("L2 did not finish its tour"))
    };
    let vendor = cpu::cpuid(0, 0)[1];
    for (stop, ebx) in modes::STOPS.iter().zip(seen.cpuid) {
        check_eq!(ebx, vendor, format_args!("L2's CPUID.0 EBX in {stop}"));
    }
    let (lme, lma) = (EFER_LME as u32, EFER_LMA as u32);
    check_eq!(
        (
            seen.efer_lme_no_paging & (lme | lma),
            seen.efer_cleared & (lme | lma),
            seen.efer_legacy_paging & (lme | lma),
            seen.efer_back & (lme | lma),
        ),
        (lme, 0, 0, lme | lma),
        "L2's EFER.LME/LMA: paging off, LME cleared, 32-bit paging, back"
    );
    check_eq!(
        (seen.cr0_lmsw_pm16 & 0xf, seen.cr0_lmsw_real & 0xf),
        (0xb, 0x2),
        "L2's CR0[3:0] after LMSW in 16-bit protected mode, in real mode"
    );
    let s = &l1::vmcb().state;
    check_eq!(
        s.efer & (EFER_LME | EFER_LMA),
        EFER_LME | EFER_LMA,
        "vmcb12 EFER after the tour"
    );
    check_eq!(
        s.cs.attrib & VmcbSegment::ATTR_L,
        VmcbSegment::ATTR_L,
        "vmcb12 CS.L"
    );
}

global_asm!(
    r#"
    .global nested_modes_pdpte_cr3
    // 32-bit: mark PDPTE 1 present (ECX = its address), reload CR3 (EAX),
    // HLT.
nested_modes_pdpte_cr3:
    .byte 0x80, 0x09, 0x01
    .byte 0x0f, 0x22, 0xd8
    hlt
    "#
);

unsafe extern "C" {
    static nested_modes_pdpte_cr3: u8;
}

/// L2 in PAE paging makes PDPTE 1 present and reloads CR3: with a reserved
/// bit (52) in it, MOV CR3 is #GP(0) (L1 intercepts #GP; the CPU loads and
/// checks the four PDPTEs, APM 3.1.2; KVM `load_pdptrs`) and CR3 stays;
/// with only ignored bits (11:9) the load succeeds.
pub fn l2_pae_cr3_checks_pdptes() {
    let t = modes::legacy_tables();
    let pdpte0 = modes::pdpte0();
    let at = core::ptr::addr_of!(nested_modes_pdpte_cr3) as u64;
    let pae = Start {
        rip: at,
        ..starts(&t).into_iter().nth(5).expect("the PAE start")
    };
    for (what, pdpte1, gp) in [
        ("bit 52", (pdpte0 & !1) | 1 << 52, true),
        ("bits 11:9 (ignored)", (pdpte0 & !1) | 0xe00, false),
    ] {
        modes::set_pdpte(1, pdpte1);
        let mut regs = prepare(&pae);
        let v = l1::vmcb();
        v.control.intercept_exceptions |= 1 << 13;
        v.state.rax = t.pdpt;
        regs.gpr[1] = t.pdpt + 8;
        let (_, code) = l1::run(&mut regs);
        modes::set_pdpte(1, 0);
        let v = l1::vmcb();
        match gp {
            true => {
                check_eq!(
                    (ExitCode::from_raw(code), v.control.exit_info1),
                    (ExitCode::Exception(13), 0),
                    format_args!("L2's MOV CR3 with PDPTE 1 {what}")
                );
                check_eq!(v.state.rip, at + 3, "RIP at the refused MOV CR3");
            }
            false => {
                check_eq!(
                    ExitCode::from_raw(code),
                    ExitCode::Hlt,
                    format_args!("L2's exit after MOV CR3 with PDPTE 1 {what}")
                );
                check_eq!(v.state.rip, at + 6, "RIP at HLT");
            }
        }
        check_eq!(v.state.cr3, t.pdpt, "L2's CR3");
    }
}

/// The tour again, with L1 intercepting CPUID: at each stop L2 exits to L1
/// in that mode (vmcb12 holds it: CR0.PG/PE, CR4.PAE/PSE, EFER.LME/LMA as
/// below), L1 answers the CPUID, moves RIP past it and runs L2 again with
/// VMRUN in that mode, as kvm-unit-tests' `mode_switch` does in real mode.
pub fn l2_tour_exits_to_l1_in_every_mode() {
    // SAFETY: L2 is not running.
    unsafe { *addr_of_mut!(TOUR) = None };
    const PG_PE: u64 = (1 << 31) | 1;
    const PAE_PSE: u64 = CR4_PAE | CR4_PSE;
    const LME_LMA: u64 = EFER_LME | EFER_LMA;
    let want: [(u64, u64, u64); 8] = [
        (PG_PE, CR4_PAE, LME_LMA),
        (1, CR4_PAE, EFER_LME),
        (PG_PE, CR4_PSE, 0),
        (PG_PE, 0, 0),
        (PG_PE, CR4_PAE, 0),
        (1, 0, 0),
        (0, 0, 0),
        (PG_PE, CR4_PAE, LME_LMA),
    ];
    l1::enable_svm();
    l1::prepare(tour_then_hlt);
    l1::vmcb().control.intercept_misc1 |= svm::InterceptMisc1::CPUID.bits();
    let mut regs = Regs::default();
    for (stop, want) in modes::STOPS.iter().zip(want) {
        let (_, code) = l1::run(&mut regs);
        check_eq!(
            ExitCode::from_raw(code),
            ExitCode::Cpuid,
            format_args!("L2's exit in {stop}")
        );
        let s = &mut l1::vmcb().state;
        check_eq!(
            (s.cr0 & PG_PE, s.cr4 & PAE_PSE, s.efer & LME_LMA),
            want,
            format_args!("vmcb12 CR0.PG/PE, CR4.PAE/PSE, EFER.LME/LMA in {stop}")
        );
        let [a, b, c, d] = cpu::cpuid(s.rax as u32, regs.gpr[1] as u32);
        s.rax = u64::from(a);
        (regs.gpr[0], regs.gpr[1], regs.gpr[2]) = (u64::from(b), u64::from(c), u64::from(d));
        s.rip += 2;
    }
    run_expect(&mut regs, ExitCode::Hlt);
    // SAFETY: L2 is stopped.
    let Some(seen) = (unsafe { *addr_of_mut!(TOUR) }) else {
        guest_stubs::verdict::fail(format_args!("L2 did not finish its tour"))
    };
    let vendor = cpu::cpuid(0, 0)[1];
    check_eq!(
        seen.cpuid,
        [vendor; 8],
        "L2's CPUID.0 EBX at each stop (L1's answers)"
    );
}
