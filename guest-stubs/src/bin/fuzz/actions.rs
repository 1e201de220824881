//! Hostile things L1 does itself before its VMRUN: VMRUN at bad addresses
//! or of a page of random bytes, VMLOAD/VMSAVE at random addresses,
//! STGI/CLGI in any order, VM_HSAVE_PA, EFER.SVME and VM_CR writes,
//! INVLPGA and SKINIT, each checked against the APM.

use crate::report::{Ctx, Shown, ShownVector};
use crate::switch::{clgi, stgi, vmrun_checked, Outcome};
use crate::{l1, sandbox, Svm};
use core::arch::asm;
use core::ptr::addr_of_mut;
use guest_stubs::cpu::{rdmsr, wrmsr};
use guest_stubs::exceptions::{catch, Fault};
use svm::fuzz::{emulator_checks_first, svm_address, AddressVerdict, Rng};
use svm::msr::{EFER, EFER_SVME, FS_BASE, KERNEL_GS_BASE, VM_CR, VM_HSAVE_PA};
use svm::Vmcb;

/// L1's own VMLOAD state, saved at start, put back after a VMLOAD of
/// random memory.
static mut L1_SAVE: Vmcb = Vmcb::new();

pub(crate) fn save_vmload_state() {
    let pa = addr_of_mut!(L1_SAVE) as u64;
    // SAFETY: VMSAVE to L1's own page (EFER.SVME is set).
    unsafe { asm!("vmsave rax", in("rax") pa, options(nostack)) };
}

pub(crate) fn restore_vmload_state() {
    let pa = addr_of_mut!(L1_SAVE) as u64;
    // SAFETY: VMLOAD of the state L1 saved.
    unsafe { asm!("vmload rax", in("rax") pa, options(nostack)) };
}

fn vmload(pa: u64) -> Option<Fault> {
    // SAFETY: a fault is caught and skipped (3 bytes).
    catch(3, || unsafe {
        asm!("vmload rax", in("rax") pa, options(nostack))
    })
}

fn vmsave(pa: u64) -> Option<Fault> {
    // SAFETY: as for vmload; `pa` is never one of L1's live pages.
    catch(3, || unsafe {
        asm!("vmsave rax", in("rax") pa, options(nostack))
    })
}

/// An address for VMRUN/VMLOAD/VMSAVE that must fault: unaligned,
/// outside RAM, beyond MAXPHYADDR, or anything.
fn bad_address(rng: &mut Rng, ram: u64, max_phys: u8) -> u64 {
    let pa = match rng.below(5) {
        0 => (rng.below(ram) & !0xfff) | (1 + rng.below(0xfff)),
        1 => (ram + rng.below(1 << 30)) & !0xfff,
        2 => (1u64 << max_phys) + (rng.below(1 << 20) << 12),
        3 => rng.value(),
        _ => (1u64 << max_phys) - 0x1000 + rng.below(2) * 0x1000,
    };
    // Never one of L1's pages (a VMRUN or VMSAVE there would write it).
    match svm_address(pa, ram, max_phys) {
        AddressVerdict::Good => pa | 8,
        AddressVerdict::Gp => pa,
    }
}

/// What an SVM instruction with address `pa` must do, given L1's state.
/// `Some(vector)`: the fault; `None`: it runs.
fn expected(svm: &Svm, pa: u64, ctx: &Ctx) -> Option<u64> {
    if !svm.svme {
        Some(6)
    } else if svm_address(pa, ctx.ram, ctx.max_phys) == AddressVerdict::Gp {
        Some(13)
    } else {
        None
    }
}

/// Compares a faulting SVM instruction's outcome with the expectation,
/// telling apart what QEMU decides before L0 sees it.
fn judge_fault(ctx: &mut Ctx, svm: &Svm, what: &str, pa: u64, got: Option<Fault>) {
    let want = expected(svm, pa, ctx);
    let got_vector = got.map(|f| f.vector);
    if got_vector == want {
        return;
    }
    if !svm.svme && got_vector == Some(13) && emulator_checks_first(pa, ctx.max_phys) {
        ctx.deviation(format_args!(
            "{what} {pa:#x}, EFER.SVME clear: #GP (QEMU checks the address first), not #UD"
        ));
        return;
    }
    ctx.mismatch(format_args!(
        "{what} {pa:#x}: {}, expected {} (EFER.SVME {})",
        Shown(got),
        ShownVector(want),
        svm.svme
    ));
}

/// One random action.
pub(crate) fn one(ctx: &mut Ctx, svm: &mut Svm, rng: &mut Rng) {
    let (ram, max_phys) = (ctx.ram, ctx.max_phys);
    match rng.below(10) {
        0 => {
            ctx.action = "vmrun_bad";
            let pa = bad_address(rng, ram, max_phys);
            let mut regs = l1::Regs::default();
            let outcome = vmrun_checked(ctx, &mut regs, pa, svm);
            let got = match outcome {
                Outcome::Fault(f) => Some(f),
                Outcome::Exit(code) => {
                    ctx.mismatch(format_args!("VMRUN {pa:#x} ran, exit {code:#x}"));
                    return;
                }
            };
            // Without VM_HSAVE_PA a good... there is no good address here.
            judge_fault(ctx, svm, "VMRUN", pa, got);
        }
        1 => {
            // A page of random bytes as vmcb12 (with L1's keep-alive
            // intercepts, and no L1 page as CR3).
            ctx.action = "vmrun_garbage";
            let pa = sandbox::SCRATCH + 0x1000;
            sandbox::scratch_fill(pa, rng);
            // SAFETY: L1's scratch page, not mapped for L2.
            let v = unsafe { &mut *(pa as *mut Vmcb) };
            v.control.intercept_misc1 |= crate::vmcb12::KEEPALIVE_MISC1;
            if sandbox::is_l1_page(v.state.cr3, ram) {
                v.state.cr3 = sandbox::cr3();
            }
            let sent = v.clone();
            let mut regs = l1::Regs::default();
            let outcome = vmrun_checked(ctx, &mut regs, pa, svm);
            crate::judge_vmrun(ctx, svm, &sent, v, outcome, false);
        }
        2 => {
            ctx.action = "vmload";
            let pa = match rng.below(3) {
                0 => bad_address(rng, ram, max_phys),
                // Any page of L1's memory (VMLOAD only reads it).
                _ => rng.below(ram) & !0xfff,
            };
            let got = vmload(pa);
            if got.is_none() {
                svm.garbage_loaded = true;
            }
            judge_fault(ctx, svm, "VMLOAD", pa, got);
        }
        3 => {
            ctx.action = "vmsave";
            let pa = match rng.below(2) {
                0 => bad_address(rng, ram, max_phys),
                _ => sandbox::SCRATCH,
            };
            let (fs, kgs) = (rdmsr(FS_BASE), rdmsr(KERNEL_GS_BASE));
            let got = vmsave(pa);
            judge_fault(ctx, svm, "VMSAVE", pa, got);
            if got.is_none() && pa == sandbox::SCRATCH {
                // SAFETY: the scratch page VMSAVE just wrote.
                let saved = unsafe { &*(pa as *const Vmcb) };
                if (saved.state.fs.base, saved.state.kernel_gs_base) != (fs, kgs) {
                    ctx.mismatch(format_args!(
                        "VMSAVE stored FS.base {:#x} KernelGsBase {:#x}, L1 has {fs:#x} {kgs:#x}",
                        saved.state.fs.base, saved.state.kernel_gs_base
                    ));
                }
            }
        }
        4 => {
            ctx.action = "gif";
            for _ in 0..1 + rng.below(3) {
                let set = rng.one_in(2);
                let got = catch(3, || if set { stgi() } else { clgi() });
                let want = if svm.svme { None } else { Some(6) };
                if got.map(|f| f.vector) != want {
                    ctx.mismatch(format_args!(
                        "{}: {}",
                        if set { "STGI" } else { "CLGI" },
                        Shown(got)
                    ));
                }
                if got.is_none() {
                    svm.gif_clear = !set;
                }
            }
        }
        5 => {
            ctx.action = "hsave";
            let value = match rng.below(3) {
                0 => 0,
                1 => rng.value(),
                _ => rng.below(ram) & !0xfff,
            };
            let got = catch(2, || wrmsr(VM_HSAVE_PA, value));
            // APM 15.30.4: not page aligned or beyond MAXPHYADDR is #GP.
            let bad = value & 0xfff != 0 || (max_phys < 64 && value >> max_phys != 0);
            if got.map(|f| f.vector) != bad.then_some(13) {
                ctx.mismatch(format_args!(
                    "WRMSR VM_HSAVE_PA {value:#x}: {}, expected {}",
                    Shown(got),
                    ShownVector(bad.then_some(13))
                ));
            }
            if got.is_none() {
                svm.hsave = value != 0;
            }
        }
        6 => {
            ctx.action = "svme";
            let efer = rdmsr(EFER);
            let got = catch(2, || wrmsr(EFER, efer ^ EFER_SVME));
            if got.is_some() {
                ctx.mismatch(format_args!(
                    "toggling EFER.SVME ({efer:#x}): {}",
                    Shown(got)
                ));
            } else {
                svm.svme = rdmsr(EFER) & EFER_SVME != 0;
                if svm.svme == (efer & EFER_SVME != 0) {
                    ctx.mismatch(format_args!("EFER.SVME did not toggle ({efer:#x})"));
                }
            }
        }
        7 => {
            ctx.action = "vm_cr";
            // DPD, R_INIT, DIS_A20M and SVMDIS (never LOCK: it would stay
            // for the iterations after this one).
            let value = rng.below(32) & !(1 << 3);
            svm.vm_cr_touched = true;
            let got = catch(2, || wrmsr(VM_CR, value));
            // SVMDIS cannot be set while EFER.SVME is (APM 15.30.1).
            if got.is_none() && svm.svme && value & (1 << 4) != 0 {
                ctx.mismatch(format_args!("VM_CR.SVMDIS set with EFER.SVME set"));
            }
            let _ = rdmsr(VM_CR);
        }
        8 => {
            ctx.action = "invlpga";
            let (addr, asid) = (rng.value(), rng.bits() as u32);
            // SAFETY: INVLPGA only drops TLB entries (or faults).
            let got = catch(3, || unsafe {
                asm!("invlpga rax, ecx", in("rax") addr, in("ecx") asid, options(nostack))
            });
            let want = if svm.svme { None } else { Some(6) };
            if got.map(|f| f.vector) != want {
                ctx.mismatch(format_args!(
                    "INVLPGA: {}, expected {}",
                    Shown(got),
                    ShownVector(want)
                ));
            }
        }
        _ => {
            ctx.action = "skinit";
            // SAFETY: SKINIT is not offered (CPUID): #UD, which is skipped.
            let got = catch(3, || unsafe {
                asm!("skinit eax", in("eax") 0x10_0000u32, options(nostack))
            });
            if got.map(|f| f.vector) != Some(6) {
                ctx.mismatch(format_args!("SKINIT: {}, expected #UD", Shown(got)));
            }
        }
    }
}
