//! The world switch: host → guest → host around one VMRUN.
//!
//! VMRUN saves and restores only part of the host state (APM Vol. 2,
//! 15.5.1); the rest (FS, GS, TR, LDTR, KernelGSBase, STAR/LSTAR/CSTAR/
//! SFMASK, SYSENTER_*) is moved with VMSAVE/VMLOAD: the guest's from its
//! VMCB before VMRUN and back after, the host's from its own save VMCB
//! after. The host saved that VMCB once, when SVM was enabled
//! (`enable::this_cpu`): it sets those registers at boot and never again
//! (no syscalls, no FS/GS bases, one TSS), so a VMSAVE per exit would
//! store the same values each time. GIF is cleared
//! around the sequence so nothing interrupts a half-loaded state; RFLAGS.IF
//! is set only under GIF=0, so a physical interrupt (the watchdog) ends the
//! guest's run with #VMEXIT(INTR) and is taken by the host afterwards.
//!
//! Guest RAX, RSP and RIP live in the VMCB; the other general registers in
//! [`GuestRegs`]. The kernel never uses x87/SSE (see `main.rs`), so the
//! guest's FPU state stays in the registers across exits.

/// Guest general-purpose registers not kept in the VMCB.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[allow(missing_docs)]
pub struct GuestRegs {
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
}

/// Runs the guest of `vmcb_pa` until its next #VMEXIT.
///
/// # Safety
/// SVM must be enabled on this CPU, `vmcb_pa` must be a valid guest VMCB
/// (its NPT, MSRPM and IOPM included) and `host_vmcb_pa` the host's state
/// as VMSAVE stored it.
#[unsafe(naked)]
pub unsafe extern "C" fn run(regs: &mut GuestRegs, vmcb_pa: u64, host_vmcb_pa: u64) {
    core::arch::naked_asm!(
        // Callee-saved registers of the host, then the arguments we need after.
        "push rbx",
        "push rbp",
        "push r12",
        "push r13",
        "push r14",
        "push r15",
        "push rdi", // regs
        "push rdx", // host VMCB
        "push rsi", // guest VMCB
        "clgi",
        // IF=1 while GIF=0: with V_INTR_MASKING, physical interrupts reach
        // the host (as #VMEXIT INTR) only if RFLAGS.IF was 1 at VMRUN.
        "sti",
        "mov rax, rsi",
        "vmload rax",
        "mov rbx, [rdi + 0x00]",
        "mov rcx, [rdi + 0x08]",
        "mov rdx, [rdi + 0x10]",
        "mov rsi, [rdi + 0x18]",
        "mov rbp, [rdi + 0x28]",
        "mov r8,  [rdi + 0x30]",
        "mov r9,  [rdi + 0x38]",
        "mov r10, [rdi + 0x40]",
        "mov r11, [rdi + 0x48]",
        "mov r12, [rdi + 0x50]",
        "mov r13, [rdi + 0x58]",
        "mov r14, [rdi + 0x60]",
        "mov r15, [rdi + 0x68]",
        "mov rdi, [rdi + 0x20]",
        "vmrun rax",
        // #VMEXIT: RAX, RSP and RIP are the host's again (restored from hsave).
        "vmsave rax",
        "push rdi",
        "mov rdi, [rsp + 0x18]",
        "mov [rdi + 0x00], rbx",
        "mov [rdi + 0x08], rcx",
        "mov [rdi + 0x10], rdx",
        "mov [rdi + 0x18], rsi",
        "mov [rdi + 0x28], rbp",
        "mov [rdi + 0x30], r8",
        "mov [rdi + 0x38], r9",
        "mov [rdi + 0x40], r10",
        "mov [rdi + 0x48], r11",
        "mov [rdi + 0x50], r12",
        "mov [rdi + 0x58], r13",
        "mov [rdi + 0x60], r14",
        "mov [rdi + 0x68], r15",
        "pop rax",
        "mov [rdi + 0x20], rax",
        "pop rax", // guest VMCB
        "pop rax", // host VMCB
        "vmload rax",
        "cli",
        "stgi",
        // A physical NMI held since the exit (the NMI intercept) is taken
        // here: the host's NMI handler knows this window (arch::idt).
        ".global hv_world_switch_nmi_window",
        "hv_world_switch_nmi_window:",
        "pop rdi",
        "pop r15",
        "pop r14",
        "pop r13",
        "pop r12",
        "pop rbp",
        "pop rbx",
        "ret",
        ".global hv_world_switch_nmi_window_end",
        "hv_world_switch_nmi_window_end:",
    )
}

unsafe extern "C" {
    static hv_world_switch_nmi_window: u8;
    static hv_world_switch_nmi_window_end: u8;
}

/// Whether `rip` is where the host takes an NMI held since a guest's
/// #VMEXIT(NMI): from the world switch's STGI to its return.
pub fn in_nmi_window(rip: u64) -> bool {
    let start = &raw const hv_world_switch_nmi_window as u64;
    let end = &raw const hv_world_switch_nmi_window_end as u64;
    (start..end).contains(&rip)
}

static_assertions::const_assert_eq!(core::mem::offset_of!(GuestRegs, rdi), 0x20);
static_assertions::const_assert_eq!(core::mem::offset_of!(GuestRegs, r15), 0x68);
