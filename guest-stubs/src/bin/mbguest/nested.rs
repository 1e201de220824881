//! This kernel as an SVM hypervisor (AMD APM vol. 2, ch. 15): one L2 in
//! 64-bit mode on our own page tables (no nested paging) reads and writes
//! the local APIC through MMIO, then VMMCALL ends it.

use core::arch::asm;

use crate::apic::{Apic, XApic, ID, TPR, VERSION};
use crate::boot::{CODE64, DATA};
use crate::cpu::{cpuid, cr0, cr3, cr4, rdmsr, wrmsr, EFER_SVME, IA32_EFER};
use crate::report::{bail, expect_eq, Outcome, Why};

const VM_CR: u32 = 0xC001_0114;
const VM_CR_SVMDIS: u64 = 1 << 4;
const VM_HSAVE_PA: u32 = 0xC001_0117;

/// VMCB offsets (APM appendix B).
mod vmcb {
    pub const INTERCEPT_EXCEPTIONS: usize = 0x08;
    pub const INTERCEPT_MISC1: usize = 0x0C;
    pub const INTERCEPT_MISC2: usize = 0x10;
    pub const IOPM_BASE: usize = 0x40;
    pub const MSRPM_BASE: usize = 0x48;
    pub const ASID: usize = 0x58;
    pub const EXITCODE: usize = 0x70;
    pub const EXITINFO1: usize = 0x78;
    pub const ES: usize = 0x400;
    pub const CS: usize = 0x410;
    pub const SS: usize = 0x420;
    pub const DS: usize = 0x430;
    pub const GDTR: usize = 0x460;
    pub const IDTR: usize = 0x480;
    pub const CPL: usize = 0x4CB;
    pub const EFER: usize = 0x4D0;
    pub const CR4: usize = 0x548;
    pub const CR3: usize = 0x550;
    pub const CR0: usize = 0x558;
    pub const DR7: usize = 0x560;
    pub const DR6: usize = 0x568;
    pub const RFLAGS: usize = 0x570;
    pub const RIP: usize = 0x578;
    pub const RSP: usize = 0x5D8;
    pub const RAX: usize = 0x5F8;
    pub const G_PAT: usize = 0x668;
}

const MISC1_SHUTDOWN: u32 = 1 << 31;
const MISC2_VMRUN: u32 = 1 << 0;
const MISC2_VMMCALL: u32 = 1 << 1;
const EXIT_VMMCALL: u64 = 0x81;

#[repr(C, align(4096))]
struct Pages<const N: usize>([u8; N]);

static mut VMCB: Pages<4096> = Pages([0; 4096]);
static mut HSAVE: Pages<4096> = Pages([0; 4096]);
static mut IOPM: Pages<{ 3 * 4096 }> = Pages([0; 3 * 4096]);
static mut MSRPM: Pages<{ 2 * 4096 }> = Pages([0; 2 * 4096]);
static mut L2_STACK: Pages<4096> = Pages([0; 4096]);
/// What L2 read: APIC ID and version registers.
static mut L2_RESULTS: [u32; 2] = [0; 2];

// L2: RAX points at L2_RESULTS. Reads ID and version, writes TPR, exits.
core::arch::global_asm!(
    r#"
    .section .text
    .global mb_l2_entry, mb_l2_vmmcall
mb_l2_entry:
    movabsq $0xFEE00000, %rbx
    movl 0x20(%rbx), %ecx
    movl %ecx, (%rax)
    movl 0x30(%rbx), %ecx
    movl %ecx, 4(%rax)
    movl $0x20, 0x80(%rbx)
mb_l2_vmmcall:
    vmmcall
    ud2
    "#,
    options(att_syntax)
);

unsafe extern "C" {
    /// L2's first instruction.
    static mb_l2_entry: u8;
    /// L2's VMMCALL.
    static mb_l2_vmmcall: u8;
}

fn put<T>(page: *mut u8, offset: usize, value: T) {
    // SAFETY: offsets are inside the 4 KiB VMCB page; unaligned is fine.
    unsafe { core::ptr::write_unaligned(page.add(offset).cast::<T>(), value) }
}

fn get<T: Copy>(page: *const u8, offset: usize) -> T {
    // SAFETY: as for put.
    unsafe { core::ptr::read_unaligned(page.add(offset).cast::<T>()) }
}

/// A flat segment in VMCB form: selector, attributes (access byte, then
/// AVL/L/DB/G in bits 8-11), limit, base.
fn segment(page: *mut u8, offset: usize, selector: u16, attrib: u16) {
    put(page, offset, selector);
    put(page, offset + 2, attrib);
    put(page, offset + 4, 0xFFFF_FFFFu32);
    put(page, offset + 8, 0u64);
}

fn descriptor_table(page: *mut u8, offset: usize, sgdt: bool) {
    let mut buf = [0u8; 10];
    // SAFETY: SGDT/SIDT store 10 bytes in long mode.
    unsafe {
        if sgdt {
            asm!("sgdt [{}]", in(reg) buf.as_mut_ptr(), options(nostack));
        } else {
            asm!("sidt [{}]", in(reg) buf.as_mut_ptr(), options(nostack));
        }
    }
    let limit = u16::from_le_bytes([buf[0], buf[1]]);
    let base = u64::from_le_bytes(buf[2..10].try_into().unwrap_or([0; 8]));
    put(page, offset + 4, u32::from(limit));
    put(page, offset + 8, base);
}

/// The L2 run; `Skip` without SVM.
pub fn check_l2_apic_mmio() -> Outcome {
    if cpuid(0x8000_0001, 0)[2] & (1 << 2) == 0 {
        return Outcome::Skip("no SVM in CPUID 0x80000001");
    }
    if rdmsr(VM_CR) & VM_CR_SVMDIS != 0 {
        return Outcome::Skip("VM_CR.SVMDIS set");
    }
    match run_l2() {
        Ok(()) => Outcome::Pass,
        Err(why) => Outcome::Fail(why),
    }
}

fn run_l2() -> Result<(), Why> {
    let apic = XApic;
    let (l1_id, l1_version) = (apic.read(ID), apic.read(VERSION));
    wrmsr(IA32_EFER, rdmsr(IA32_EFER) | EFER_SVME);
    wrmsr(VM_HSAVE_PA, (&raw mut HSAVE) as u64);

    let v = (&raw mut VMCB).cast::<u8>();
    // SAFETY: one CPU; the VMCB is ours until VMRUN.
    unsafe { core::ptr::write_bytes(v, 0, 4096) };
    put(v, vmcb::INTERCEPT_EXCEPTIONS, 0xFFFF_FFFFu32);
    put(v, vmcb::INTERCEPT_MISC1, MISC1_SHUTDOWN);
    put(v, vmcb::INTERCEPT_MISC2, MISC2_VMRUN | MISC2_VMMCALL);
    put(v, vmcb::IOPM_BASE, (&raw mut IOPM) as u64);
    put(v, vmcb::MSRPM_BASE, (&raw mut MSRPM) as u64);
    put(v, vmcb::ASID, 1u32);
    // 64-bit code: access 0x9B, L and G; data: access 0x93, D/B and G.
    segment(v, vmcb::CS, CODE64, 0xA9B);
    for seg in [vmcb::ES, vmcb::SS, vmcb::DS] {
        segment(v, seg, DATA, 0xC93);
    }
    descriptor_table(v, vmcb::GDTR, true);
    descriptor_table(v, vmcb::IDTR, false);
    put(v, vmcb::CPL, 0u8);
    put(v, vmcb::EFER, rdmsr(IA32_EFER));
    put(v, vmcb::CR0, cr0());
    put(v, vmcb::CR3, cr3());
    put(v, vmcb::CR4, cr4());
    put(v, vmcb::DR7, 0x400u64);
    put(v, vmcb::DR6, 0xFFFF_0FF0u64);
    put(v, vmcb::RFLAGS, 0x2u64);
    put(v, vmcb::RIP, (&raw const mb_l2_entry) as u64);
    put(v, vmcb::RSP, (&raw mut L2_STACK) as u64 + 4096);
    put(v, vmcb::RAX, (&raw mut L2_RESULTS) as u64);
    put(v, vmcb::G_PAT, 0x0007_0406_0007_0406u64);

    // SAFETY: a valid VMCB and host save area; GIF is cleared around the
    // world switch and set again after #VMEXIT (which clears it, APM 15.17).
    // L2 clobbers RBX and RCX; VMRUN restores RSP and RAX (APM 15.5.1).
    unsafe {
        asm!(
            "push rbx",
            "clgi",
            "vmrun rax",
            "stgi",
            "pop rbx",
            in("rax") v as u64,
            out("rcx") _,
        );
    }

    let exit: u64 = get(v, vmcb::EXITCODE);
    if exit != EXIT_VMMCALL {
        bail!(
            "L2 exit code {exit:#x} (info1 {:#x}) at RIP {:#x}, expected VMMCALL",
            get::<u64>(v, vmcb::EXITINFO1),
            get::<u64>(v, vmcb::RIP)
        );
    }
    expect_eq!(
        "RIP at the VMMCALL exit",
        get::<u64>(v, vmcb::RIP),
        (&raw const mb_l2_vmmcall) as u64
    );
    // SAFETY: L2 is done with the buffer.
    let [id, version] = unsafe { core::ptr::read_volatile(&raw const L2_RESULTS) };
    expect_eq!("APIC ID as L2 read it", id, l1_id);
    expect_eq!("APIC version as L2 read it", version, l1_version);
    expect_eq!("TPR after L2 wrote 0x20", apic.read(TPR) & 0xFF, 0x20);
    apic.write(TPR, 0);
    Ok(())
}
