//! The L1 hypervisor's machinery: enabling SVM, a vmcb12 for an L2 that
//! shares L1's page tables and code, and the world switch around VMRUN.

use core::arch::asm;
use core::ptr::addr_of_mut;
use guest_stubs::cpu::{rdmsr, wrmsr};
use svm::msr::{EFER, EFER_SVME, VM_HSAVE_PA};
use svm::{InterceptMisc1, InterceptMisc2, Vmcb};

/// A page-aligned 4 KiB page.
#[repr(C, align(4096))]
pub struct Page(pub [u8; 4096]);

/// The host save area L1 gives VM_HSAVE_PA (L0 only records the address).
pub static mut HSAVE: Page = Page([0; 4096]);
/// vmcb12.
pub static mut VMCB12: Vmcb = Vmcb::new();
/// L1's MSR permission map for L2 (8 KiB).
#[repr(C, align(4096))]
pub struct Msrpm(pub [u8; 8192]);
/// L1's I/O permission map for L2 (12 KiB).
#[repr(C, align(4096))]
pub struct Iopm(pub [u8; 12288]);
/// L1's MSR permission map.
pub static mut MSRPM: Msrpm = Msrpm([0; 8192]);
/// L1's I/O permission map.
pub static mut IOPM: Iopm = Iopm([0; 12288]);

const L2_STACK_SIZE: usize = 16 * 1024;
#[repr(C, align(16))]
struct Stack([u8; L2_STACK_SIZE]);
static mut L2_STACK: Stack = Stack([0; L2_STACK_SIZE]);

/// L2's general registers besides RAX/RSP (kept in vmcb12).
#[repr(C)]
#[derive(Default)]
pub struct Regs {
    /// rbx, rcx, rdx, rsi, rdi, rbp, r8-r15.
    pub gpr: [u64; 14],
}

/// vmcb12, exclusively (single vCPU; tests run one at a time).
pub fn vmcb() -> &'static mut Vmcb {
    // SAFETY: one vCPU, and only L1 code touches vmcb12 while L2 is stopped.
    unsafe { &mut *addr_of_mut!(VMCB12) }
}

/// L1's MSR map.
pub fn msrpm() -> &'static mut [u8; 8192] {
    // SAFETY: as for vmcb.
    unsafe { &mut (*addr_of_mut!(MSRPM)).0 }
}

/// L1's I/O map.
pub fn iopm() -> &'static mut [u8; 12288] {
    // SAFETY: as for vmcb.
    unsafe { &mut (*addr_of_mut!(IOPM)).0 }
}

/// EFER.SVME on and the host save area set.
pub fn enable_svm() {
    wrmsr(EFER, rdmsr(EFER) | EFER_SVME);
    wrmsr(VM_HSAVE_PA, addr_of_mut!(HSAVE) as u64);
}

/// Prepares vmcb12 for an L2 starting at `entry`, in L1's own mode,
/// page tables and GDT, on its own stack, with no IDT. Intercepts: VMRUN
/// (required), HLT (L2's "yield to L1"), SHUTDOWN (an L2 crash stays L2's),
/// and MSR/IOIO through the (empty) maps.
pub fn prepare(entry: extern "C" fn() -> !) {
    msrpm().fill(0);
    iopm().fill(0);
    let v = vmcb();
    *v = Vmcb::new();
    let c = &mut v.control;
    c.intercept_misc1 = (InterceptMisc1::HLT
        | InterceptMisc1::SHUTDOWN
        | InterceptMisc1::MSR_PROT
        | InterceptMisc1::IOIO_PROT)
        .bits();
    c.intercept_misc2 = InterceptMisc2::VMRUN.bits();
    c.guest_asid = 1;
    c.msrpm_base_pa = addr_of_mut!(MSRPM) as u64;
    c.iopm_base_pa = addr_of_mut!(IOPM) as u64;
    let s = &mut v.state;
    svm::guest_abi::load_start_segments(s);
    s.cr0 = guest_stubs::privileged::read_cr(0);
    s.cr3 = guest_stubs::privileged::read_cr(3);
    s.cr4 = guest_stubs::privileged::read_cr(4);
    s.efer = rdmsr(EFER);
    s.rflags = 2;
    s.rip = entry as *const () as u64;
    s.rsp = addr_of_mut!(L2_STACK) as u64 + L2_STACK_SIZE as u64;
    s.dr6 = 0xffff_0ff0;
    s.dr7 = 0x400;
    s.g_pat = svm::msr::PAT_POWER_ON;
}

/// Runs L2 until its next #VMEXIT: CLGI, VMRUN, STGI like a real
/// hypervisor. Returns the RAX VMRUN left (vmcb12's address) and the exit
/// code.
pub fn run(regs: &mut Regs) -> (u64, u64) {
    let rax = vmrun(regs, addr_of_mut!(VMCB12) as u64);
    (rax, vmcb().control.exit_code)
}

/// Resumes L2 after the exit it took (at nRIP).
pub fn skip_and_run(regs: &mut Regs) -> (u64, u64) {
    let v = vmcb();
    v.state.rip = v.control.next_rip;
    run(regs)
}

/// The world switch: L1's callee-saved registers on its stack, L2's
/// general registers from/to `regs`.
pub fn vmrun(regs: &mut Regs, vmcb_pa: u64) -> u64 {
    let rax: u64;
    // SAFETY: VMRUN is intercepted and emulated by L0; the asm saves and
    // restores every register it clobbers except RAX (returned).
    unsafe {
        asm!(
            "push rbx", "push rbp", "push r12", "push r13", "push r14", "push r15",
            "push rdi",
            "mov rbx, [rdi + 0x00]", "mov rcx, [rdi + 0x08]", "mov rdx, [rdi + 0x10]",
            "mov rsi, [rdi + 0x18]", "mov rbp, [rdi + 0x28]", "mov r8, [rdi + 0x30]",
            "mov r9, [rdi + 0x38]", "mov r10, [rdi + 0x40]", "mov r11, [rdi + 0x48]",
            "mov r12, [rdi + 0x50]", "mov r13, [rdi + 0x58]", "mov r14, [rdi + 0x60]",
            "mov r15, [rdi + 0x68]", "mov rdi, [rdi + 0x20]",
            "clgi",
            "vmrun rax",
            "stgi",
            "push rdi",
            "mov rdi, [rsp + 8]",
            "mov [rdi + 0x00], rbx", "mov [rdi + 0x08], rcx", "mov [rdi + 0x10], rdx",
            "mov [rdi + 0x18], rsi", "mov [rdi + 0x28], rbp", "mov [rdi + 0x30], r8",
            "mov [rdi + 0x38], r9", "mov [rdi + 0x40], r10", "mov [rdi + 0x48], r11",
            "mov [rdi + 0x50], r12", "mov [rdi + 0x58], r13", "mov [rdi + 0x60], r14",
            "mov [rdi + 0x68], r15",
            "pop rbx", "mov [rdi + 0x20], rbx",
            "pop rdi",
            "pop r15", "pop r14", "pop r13", "pop r12", "pop rbp", "pop rbx",
            in("rdi") regs as *mut Regs,
            inout("rax") vmcb_pa => rax,
            out("rcx") _, out("rdx") _, out("rsi") _, out("r8") _, out("r9") _, out("r10") _, out("r11") _,
        );
    }
    rax
}

/// Sets L1's interception of reads (`read`) and writes of `msr` for L2.
pub fn intercept_msr(msr: u32, read: bool, write: bool) {
    if let Some((byte, bit)) = svm::msrpm::bit_position(msr) {
        let map = msrpm();
        if read {
            map[byte] |= 1 << bit;
        }
        if write {
            map[byte] |= 1 << (bit + 1);
        }
    }
}

/// Sets L1's interception of `port` for L2.
pub fn intercept_port(port: u16) {
    iopm()[usize::from(port / 8)] |= 1 << (port % 8);
}
