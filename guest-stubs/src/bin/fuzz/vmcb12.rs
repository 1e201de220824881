//! vmcb12 for one iteration: a valid template for the sandbox L2, then 1-4
//! corruptions, and L2's payload.

use crate::l1;
use crate::sandbox::{self, SEL_CODE0, SEL_CODE3, SEL_DATA0, SEL_DATA3, SEL_TSS};
use svm::fuzz::{Rng, FIELDS};
use svm::msr::{EFER, PAT_POWER_ON};
use svm::{Vmcb, VmcbSegment};

/// What L2 runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// VMMCALL, then HLT.
    Vmmcall,
    /// Random bytes, single-stepped (RFLAGS.TF, #DB intercepted).
    Bytes,
    /// Random privileged (and SVM) instructions, single-stepped.
    Privileged,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Vmmcall => "vmmcall",
            Mode::Bytes => "bytes",
            Mode::Privileged => "privileged",
        }
    }
}

/// Misc1 intercepts L1 always keeps: HLT (every stub and the code page's
/// tail end in HLT) and SHUTDOWN (L2's triple fault). With no virtual timer
/// for L1, they are how L1 gets control back; without them an L2 that
/// loops would hang L1 on hardware too.
pub(crate) const KEEPALIVE_MISC1: u32 = (1 << 24) | (1 << 31);
const DB_INTERCEPT: u32 = 1 << 1;
/// POPF and IRET: the instructions that could clear a single-stepped L2's
/// TF behind L1's back.
const STEP_KEEPALIVE_MISC1: u32 = (1 << 17) | (1 << 20);
const TF: u64 = 1 << 8;

/// The corruptions of one iteration, by index into [`FIELDS`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Corrupted {
    pub fields: [u8; 4],
    pub len: usize,
}

impl core::fmt::Display for Corrupted {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (i, &field) in self.fields[..self.len].iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            write!(f, "{sep}{}", FIELDS[usize::from(field)])?;
        }
        if self.len == 0 {
            write!(f, "none")?;
        }
        Ok(())
    }
}

fn read_cr(n: u8) -> u64 {
    let v: u64;
    // SAFETY: reading control registers at CPL 0 has no side effects.
    unsafe {
        match n {
            0 => core::arch::asm!("mov {}, cr0", out(reg) v, options(nomem, nostack)),
            _ => core::arch::asm!("mov {}, cr4", out(reg) v, options(nomem, nostack)),
        }
    }
    v
}

/// A random bit flip (mostly in the low 32 bits), two, or a value.
pub(crate) fn mutate(rng: &mut Rng, x: u64) -> u64 {
    match rng.below(4) {
        0 | 1 => {
            x ^ (1
                << if rng.one_in(4) {
                    rng.below(64)
                } else {
                    rng.below(32)
                })
        }
        2 => x ^ (1 << rng.below(64)) ^ (1 << rng.below(64)),
        _ => rng.value(),
    }
}

/// A register value for L2: never the address of one of L1's pages (a
/// CR3 load from one would let L2's page walks write L1's memory).
pub(crate) fn l2_value(rng: &mut Rng, ram: u64) -> u64 {
    let v = match rng.below(4) {
        0 => sandbox::DATA + rng.below(0x8000),
        _ => rng.value(),
    };
    if sandbox::is_l1_page(v, ram) {
        sandbox::DATA + (v & 0x7fff)
    } else {
        v
    }
}

/// The valid template: L2 at CPL 0 or 3 in 64-bit mode on the sandbox,
/// L1's CR0/CR4/EFER, random but legal controls (TLB_CONTROL 3 and 7 only
/// with FlushByAsid).
pub(crate) fn template(v: &mut Vmcb, rng: &mut Rng, mode: Mode, entry: u64, flush_by_asid: bool) {
    *v = Vmcb::new();
    let c = &mut v.control;
    c.intercept_misc1 = KEEPALIVE_MISC1 | (rng.bits() as u32 & rng.bits() as u32);
    // VMRUN (required), VMMCALL usually, the rest at random.
    c.intercept_misc2 = 1 | (if rng.one_in(8) { 0 } else { 2 }) | (rng.bits() as u32 & 0x3ffc);
    c.intercept_exceptions = DB_INTERCEPT | (rng.bits() as u32 & rng.bits() as u32);
    if rng.one_in(4) {
        c.intercept_cr = rng.bits() as u32 & rng.bits() as u32 & rng.bits() as u32;
        c.intercept_dr = rng.bits() as u32 & rng.bits() as u32 & rng.bits() as u32;
    }
    c.iopm_base_pa = l1::iopm().as_ptr() as u64;
    c.msrpm_base_pa = l1::msrpm().as_ptr() as u64;
    c.guest_asid = 1 + rng.below(16) as u32;
    c.tlb_control = match flush_by_asid {
        true => rng.pick(&[0u8, 1, 3, 7]),
        false => rng.pick(&[0u8, 1]),
    };
    c.int_ctl = if rng.one_in(2) { 1 << 24 } else { 0 };
    c.tsc_offset = if rng.one_in(2) { 0 } else { rng.value() };
    let s = &mut v.state;
    let user = rng.one_in(4);
    let (code_sel, data_sel) = match user {
        true => (SEL_CODE3, SEL_DATA3),
        false => (SEL_CODE0, SEL_DATA0),
    };
    let code_desc = sandbox::GDT_ENTRIES[usize::from(code_sel >> 3)];
    let data_desc = sandbox::GDT_ENTRIES[usize::from(data_sel >> 3)];
    s.cs = VmcbSegment::new(
        code_sel,
        VmcbSegment::attrib_from_descriptor(code_desc),
        u32::MAX,
        0,
    );
    let data = VmcbSegment::new(
        data_sel,
        VmcbSegment::attrib_from_descriptor(data_desc),
        u32::MAX,
        0,
    );
    s.ss = data;
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.gdtr = VmcbSegment::new(0, 0, sandbox::GDT_LIMIT, sandbox::GDT);
    s.idtr = VmcbSegment::new(0, 0, 0xfff, sandbox::IDT);
    s.tr = VmcbSegment::new(SEL_TSS, 0x8b, 0x67, sandbox::TSS);
    s.cpl = if user { 3 } else { 0 };
    s.efer = guest_stubs::cpu::rdmsr(EFER);
    s.cr0 = read_cr(0);
    s.cr3 = sandbox::cr3();
    s.cr4 = read_cr(4);
    s.dr6 = 0xffff_0ff0;
    s.dr7 = 0x400;
    s.rflags = 2 | if mode == Mode::Vmmcall { 0 } else { TF };
    s.rip = entry;
    s.rsp = sandbox::STACK_TOP - 8 * rng.below(64);
    s.g_pat = PAT_POWER_ON;
}

/// Applies 1-4 corruptions; returns which.
pub(crate) fn corrupt(v: &mut Vmcb, rng: &mut Rng, ram: u64, mode: Mode) -> Corrupted {
    let mut done = Corrupted {
        len: 1 + rng.below(4) as usize,
        ..Corrupted::default()
    };
    for i in 0..done.len {
        let field = rng.below(FIELDS.len() as u64) as u8;
        done.fields[i] = field;
        corrupt_one(v, rng, field);
    }
    // L1's survival, not the emulator's: see KEEPALIVE_MISC1 and l2_value.
    v.control.intercept_misc1 |= KEEPALIVE_MISC1;
    // L1 has no timer (physical interrupts are L0's): a single-stepped L2
    // must stay single-stepped, or `jnz $` with a corrupted RFLAGS runs
    // forever, as it would on hardware for an L1 without a timer. So TF
    // and the #DB intercept stay, and POPF/IRET (which could clear TF)
    // exit to L1.
    if mode != Mode::Vmmcall {
        v.state.rflags |= TF;
        v.control.intercept_exceptions |= DB_INTERCEPT;
        v.control.intercept_misc1 |= STEP_KEEPALIVE_MISC1;
    }
    if sandbox::is_l1_page(v.state.cr3, ram) {
        v.state.cr3 = (v.state.cr3 & !0x000f_ffff_ffff_f000) | sandbox::cr3();
    }
    done
}

fn corrupt_one(v: &mut Vmcb, rng: &mut Rng, field: u8) {
    let (c, s) = (&mut v.control, &mut v.state);
    match FIELDS[usize::from(field)] {
        "byte" | "bit" => {
            let at = rng.below(4096) as usize;
            let flip = match field {
                0 => rng.bits() as u8,
                _ => 1 << rng.below(8),
            };
            // SAFETY: the Vmcb is 4 KiB of plain integers.
            let bytes = unsafe { &mut *(v as *mut Vmcb as *mut [u8; 4096]) };
            bytes[at] ^= flip;
        }
        "intercepts" => {
            let word = match rng.below(6) {
                0 => &mut c.intercept_cr,
                1 => &mut c.intercept_dr,
                2 => &mut c.intercept_exceptions,
                3 => &mut c.intercept_misc1,
                4 => &mut c.intercept_misc2,
                _ => &mut c.intercept_misc3,
            };
            *word = mutate(rng, u64::from(*word)) as u32;
        }
        "iopm_base" => c.iopm_base_pa = mutate(rng, c.iopm_base_pa),
        "msrpm_base" => c.msrpm_base_pa = mutate(rng, c.msrpm_base_pa),
        "asid" => c.guest_asid = mutate(rng, u64::from(c.guest_asid)) as u32,
        "tlb_control" => c.tlb_control = rng.bits() as u8,
        "int_ctl" => c.int_ctl = mutate(rng, c.int_ctl),
        "event_inj" => {
            c.event_inj = match rng.below(3) {
                0 => rng.value(),
                _ => {
                    (1 << 31)
                        | (rng.below(8) << 8)
                        | rng.below(256)
                        | (rng.below(2) << 11)
                        | (rng.bits() & 0xffff_ffff_0000_0000)
                }
            }
        }
        "nested_ctl" => c.nested_ctl ^= 1 << rng.below(4),
        "ncr3" => {
            c.ncr3 = mutate(rng, c.ncr3);
            c.nested_ctl |= rng.below(2);
        }
        "clean" => c.vmcb_clean = rng.bits() as u32,
        "int_shadow" => c.interrupt_shadow = mutate(rng, c.interrupt_shadow),
        "tsc_offset" => c.tsc_offset = mutate(rng, c.tsc_offset),
        "cr0" => s.cr0 = mutate(rng, s.cr0),
        "cr3" => s.cr3 = mutate(rng, s.cr3),
        "cr4" => s.cr4 = mutate(rng, s.cr4),
        "efer" => s.efer = mutate(rng, s.efer),
        "dr6" => s.dr6 = mutate(rng, s.dr6),
        "dr7" => s.dr7 = mutate(rng, s.dr7),
        "segment" => {
            let seg = match rng.below(10) {
                0 => &mut s.es,
                1 => &mut s.cs,
                2 => &mut s.ss,
                3 => &mut s.ds,
                4 => &mut s.fs,
                5 => &mut s.gs,
                6 => &mut s.gdtr,
                7 => &mut s.ldtr,
                8 => &mut s.idtr,
                _ => &mut s.tr,
            };
            match rng.below(4) {
                0 => seg.selector = mutate(rng, u64::from(seg.selector)) as u16,
                1 => seg.attrib = mutate(rng, u64::from(seg.attrib)) as u16,
                2 => seg.limit = mutate(rng, u64::from(seg.limit)) as u32,
                _ => seg.base = mutate(rng, seg.base),
            }
        }
        "rflags" => s.rflags = mutate(rng, s.rflags),
        "rip_rsp" => match rng.below(2) {
            0 => s.rip = mutate(rng, s.rip),
            _ => s.rsp = mutate(rng, s.rsp),
        },
        "cpl" => s.cpl = mutate(rng, u64::from(s.cpl)) as u8,
        _ => s.rax = rng.value(),
    }
}

/// Privileged and system instructions L2 may run (register operands are
/// RAX, RBX for memory, RCX for MSRs, RDX for ports).
const PRIVILEGED: &[&[u8]] = &[
    &[0x0f, 0x22, 0xc0],       // mov cr0, rax
    &[0x0f, 0x22, 0xd0],       // mov cr2, rax
    &[0x0f, 0x22, 0xd8],       // mov cr3, rax
    &[0x0f, 0x22, 0xe0],       // mov cr4, rax
    &[0x44, 0x0f, 0x22, 0xc0], // mov cr8, rax
    &[0x0f, 0x20, 0xc0],       // mov rax, cr0
    &[0x0f, 0x20, 0xd8],       // mov rax, cr3
    &[0x0f, 0x20, 0xe0],       // mov rax, cr4
    &[0x44, 0x0f, 0x20, 0xc0], // mov rax, cr8
    &[0x0f, 0x23, 0xf8],       // mov dr7, rax
    &[0x0f, 0x23, 0xf0],       // mov dr6, rax
    &[0x0f, 0x23, 0xc0],       // mov dr0, rax
    &[0x0f, 0x21, 0xf8],       // mov rax, dr7
    &[0x0f, 0x21, 0xf0],       // mov rax, dr6
    &[0x0f, 0x01, 0x13],       // lgdt [rbx]
    &[0x0f, 0x01, 0x1b],       // lidt [rbx]
    &[0x0f, 0x01, 0x03],       // sgdt [rbx]
    &[0x0f, 0x01, 0x0b],       // sidt [rbx]
    &[0x0f, 0x00, 0xd8],       // ltr ax
    &[0x0f, 0x00, 0xd0],       // lldt ax
    &[0x0f, 0x00, 0xc8],       // str ax
    &[0x0f, 0x01, 0xf0],       // lmsw ax
    &[0x48, 0x0f, 0x01, 0xe0], // smsw rax
    &[0x0f, 0x06],             // clts
    &[0x0f, 0x30],             // wrmsr
    &[0x0f, 0x32],             // rdmsr
    &[0x0f, 0x01, 0x3b],       // invlpg [rbx]
    &[0x0f, 0x09],             // wbinvd
    &[0x0f, 0x08],             // invd
    &[0xf4],                   // hlt
    &[0xfa],                   // cli
    &[0xfb],                   // sti
    &[0x9d],                   // popfq
    &[0xec],                   // in al, dx
    &[0xee],                   // out dx, al
    &[0xe4, 0x71],             // in al, 0x71
    &[0xe6, 0x80],             // out 0x80, al
    &[0x0f, 0xa2],             // cpuid
    &[0x0f, 0x31],             // rdtsc
    &[0x0f, 0x01, 0xf9],       // rdtscp
    &[0x0f, 0x33],             // rdpmc
    &[0x0f, 0x01, 0xd1],       // xsetbv
    &[0x0f, 0x01, 0xd0],       // xgetbv
    &[0x0f, 0x01, 0xf8],       // swapgs
    &[0x48, 0x0f, 0x07],       // sysretq
    &[0x0f, 0x05],             // syscall
    &[0x0f, 0x34],             // sysenter
    &[0x48, 0xcf],             // iretq
    &[0xcc],                   // int3
    &[0xcd, 0x30],             // int 0x30
    &[0xf1],                   // int1
    &[0x0f, 0x0b],             // ud2
    &[0x8e, 0xd0],             // mov ss, ax
    &[0x0f, 0x01, 0xd8],       // vmrun
    &[0x0f, 0x01, 0xd9],       // vmmcall
    &[0x0f, 0x01, 0xda],       // vmload
    &[0x0f, 0x01, 0xdb],       // vmsave
    &[0x0f, 0x01, 0xdc],       // stgi
    &[0x0f, 0x01, 0xdd],       // clgi
    &[0x0f, 0x01, 0xde],       // skinit
    &[0x0f, 0x01, 0xdf],       // invlpga
    &[0x0f, 0x01, 0xc8],       // monitor
    &[0x0f, 0x01, 0xc9],       // mwait
    &[0xf3, 0x90],             // pause
    &[0x0f, 0x01, 0xca],       // clac
    &[0x0f, 0x01, 0xcb],       // stac
];

/// Legal prefixes, put in front of privileged instructions in any order.
const PREFIXES: &[u8] = &[
    0x66, 0x67, 0xf2, 0xf3, 0x2e, 0x36, 0x3e, 0x26, 0x64, 0x65, 0x40, 0x41, 0x48, 0x4b,
];

/// MSRs L2's RDMSR/WRMSR pick from (and anything).
const MSRS: &[u32] = &[
    0xc000_0080,
    0xc000_0081,
    0xc000_0082,
    0xc000_0100,
    0xc000_0101,
    0xc000_0102,
    0xc000_0103,
    0x10,
    0x3b,
    0x1b,
    0xc001_0114,
    0xc001_0117,
    0x277,
    0x1d9,
    0x174,
    0x175,
    0x176,
    0xc001_0115,
];

/// L2's payload (code bytes, up to 48) for `mode`; its length.
pub(crate) fn payload(rng: &mut Rng, mode: Mode, out: &mut [u8; 48]) -> usize {
    match mode {
        Mode::Vmmcall => {
            out[..3].copy_from_slice(&[0x0f, 0x01, 0xd9]);
            3
        }
        Mode::Bytes => {
            let n = 1 + rng.below(32) as usize;
            out[..n].iter_mut().for_each(|b| *b = rng.bits() as u8);
            n
        }
        Mode::Privileged => {
            let mut n = 0;
            for _ in 0..1 + rng.below(3) {
                if rng.one_in(4) {
                    for _ in 0..1 + rng.below(3) {
                        out[n] = rng.pick(PREFIXES);
                        n += 1;
                    }
                }
                let insn = rng.pick(PRIVILEGED);
                out[n..n + insn.len()].copy_from_slice(insn);
                n += insn.len();
            }
            n
        }
    }
}

/// L2's general registers and RAX.
pub(crate) fn l2_registers(rng: &mut Rng, ram: u64, regs: &mut l1::Regs) -> u64 {
    for r in regs.gpr.iter_mut() {
        *r = l2_value(rng, ram);
    }
    // RCX: an MSR number usually (RDMSR/WRMSR); RDX: a port or MSR high half.
    if !rng.one_in(4) {
        regs.gpr[1] = u64::from(rng.pick(MSRS));
    }
    if rng.one_in(2) {
        regs.gpr[2] = rng.pick(&[0x80u64, 0x71, 0x3f8, 0xf4, 0xe9, 0xcf8, 0]);
    }
    l2_value(rng, ram)
}
