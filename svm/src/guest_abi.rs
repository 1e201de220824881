//! The contract between the hypervisor and its test guests (`guest-stubs`):
//! the guest-physical layout and start state the hypervisor prepares, and
//! the hypercall ABI.
//!
//! Start state: 64-bit long mode, CPL 0, paging on with an identity map of
//! the first [`IDENTITY_MAP_SIZE`] of guest-physical memory (2 MiB pages,
//! so addresses past the guest's RAM translate and reach the NPT, where
//! they fault), a flat GDT, no IDT, interrupts off, `RSP` at the top of
//! guest RAM, `RIP` at the image's ELF entry, `RDI` = [`PARAMS_GPA`].
//!
//! Hypercalls: `VMMCALL` with the number in `RAX`, arguments in `RBX`,
//! `RCX`, `RDX`; the result comes back in `RAX` (unknown numbers return
//! [`HC_UNKNOWN`]). Only CPL 0 may call (#UD otherwise). Numbers 2-10 and
//! 16-19 are test hooks: they answer only in VMs set up for tests (else
//! [`HC_UNKNOWN`]), and they are the only hypercalls an L2 can make when its
//! L1 does not intercept VMMCALL (any other is #UD there, which goes to L1
//! if L1 intercepts #UD).

/// Guest RAM per test VM.
pub const GUEST_MEMORY_SIZE: u64 = 4 << 20;
/// How much of the guest-physical space the start page tables map.
pub const IDENTITY_MAP_SIZE: u64 = 1 << 30;
/// The start PML4.
pub const PML4_GPA: u64 = 0x1000;
/// The start PDPT.
pub const PDPT_GPA: u64 = 0x2000;
/// The start page directory (2 MiB pages).
pub const PD_GPA: u64 = 0x3000;
/// The start GDT: null, 64-bit code (0x08), data (0x10).
pub const GDT_GPA: u64 = 0x4000;
/// The [`StartParams`] page.
pub const PARAMS_GPA: u64 = 0x5000;
/// Where guest images are linked and loaded.
pub const IMAGE_GPA: u64 = 0x10_0000;
/// Code segment selector at start.
pub const CODE_SELECTOR: u16 = 0x08;
/// Data segment selector at start.
pub const DATA_SELECTOR: u16 = 0x10;
/// GDT contents at [`GDT_GPA`].
pub const GDT: [u64; 3] = [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];

/// Magic at the start of [`StartParams`].
pub const PARAMS_MAGIC: u64 = 0x5356_4d48_565f_4741; // "AG_VHMVS"
/// Longest test name passed to a guest.
pub const MAX_TEST_NAME: usize = 64;

/// What the hypervisor tells a guest at start (at [`PARAMS_GPA`], pointed to
/// by `RDI`).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct StartParams {
    /// [`PARAMS_MAGIC`].
    pub magic: u64,
    /// Bytes of guest RAM (from guest-physical 0).
    pub memory_size: u64,
    /// Length of `test_name`.
    pub test_name_len: u64,
    /// The test to run, ASCII.
    pub test_name: [u8; MAX_TEST_NAME],
}

impl StartParams {
    /// Parameters for `test` (truncated to [`MAX_TEST_NAME`] bytes).
    pub fn new(test: &str, memory_size: u64) -> Self {
        let mut test_name = [0; MAX_TEST_NAME];
        let len = test.len().min(MAX_TEST_NAME);
        test_name[..len].copy_from_slice(&test.as_bytes()[..len]);
        Self {
            magic: PARAMS_MAGIC,
            memory_size,
            test_name_len: len as u64,
            test_name,
        }
    }

    /// The test name, if well formed.
    pub fn test_name(&self) -> Option<&str> {
        let len = usize::try_from(self.test_name_len).ok()?;
        core::str::from_utf8(self.test_name.get(..len)?).ok()
    }
}

/// Hypercall: the guest is done. `RBX` = 0 for pass, else fail with a
/// message of `RDX` bytes (at most 256 are read) at guest-virtual address
/// `RCX`.
pub const HC_DONE: u64 = 0;
/// Hypercall: returns `RBX + 2*RCX + 3*RDX` (wrapping), so swapped or lost
/// arguments show.
pub const HC_ECHO_SUM: u64 = 1;
/// Hypercall: returns how many #VMEXITs of exit code `RBX` this vCPU took
/// so far (the current VMMCALL excluded).
pub const HC_EXIT_COUNT: u64 = 2;
/// Hypercall: serve RDTSC/RDTSCP by offsetting (`RBX` = 0) or by exiting
/// (`RBX` = 1) from now on. Returns 0, or [`HC_UNKNOWN`] for another value.
pub const HC_TSC_SET_MODE: u64 = 3;
/// Test hook: the hypervisor's view of the host TSC jumps back by `RBX`
/// ticks (as after a host TSC write). Returns 0.
pub const HC_TSC_SHIFT_HOST_BACK: u64 = 4;
/// Freezes the VM's TSC state, waits `RCX` microseconds (by the PIT), and
/// restores it with policy `RBX` (0 = pause, 1 = continue). Waits are capped
/// at 1 s. Returns 0, or [`HC_UNKNOWN`] for another policy.
pub const HC_TSC_FREEZE_RESTORE: u64 = 5;
/// Waits `RBX` microseconds (at most 1 s) by the PIT, a clock independent
/// of the TSC. Returns 0.
pub const HC_WAIT_PIT_US: u64 = 6;
/// Hypercall: L0 moves L1's TSC offset by `RBX` (wrapping), as it would
/// after a host TSC change; issued by L2 while it runs, it moves L1's offset
/// under a running L2 (the nested TSC rule of `svm::nested::tsc`). Returns 0.
pub const HC_TSC_MOVE_L1: u64 = 7;
/// Hypercall: queue an external interrupt with vector `RBX` (32-255) for
/// this (L1) vCPU; L0 delivers it once L1's GIF and RFLAGS.IF allow. While
/// L2 runs and L1 intercepts INTR, it first ends L2's run with #VMEXIT(INTR)
/// when the masking IF allows (L1's saved IF with V_INTR_MASKING, else
/// L2's); otherwise it waits for L2's next exit to L1. One interrupt is held; a
/// second call replaces it. Returns 0, or [`HC_UNKNOWN`] below vector 32.
pub const HC_QUEUE_INTERRUPT: u64 = 8;
/// Hypercall: host TSC ticks L0 spent handling this vCPU's exits so far
/// (under QEMU's `-icount shift=0`, L0's instruction count). For benches.
pub const HC_HOST_TICKS: u64 = 9;
/// Test hook: L0 intercepts exception `RBX` (0-31, not one L0 always
/// intercepts) for the calling L1 until it first occurs, then drops the
/// intercept and resumes L1 without delivering it, as after a fix-up of its
/// own (shadow paging, MMIO). An event whose delivery the exception cut
/// short is delivered again (EXITINTINFO re-injection). Returns 0, or
/// [`HC_UNKNOWN`] for another vector or from L2.
pub const HC_INTERCEPT_ONCE: u64 = 10;
/// Test hook: queue a virtual NMI for this (L1) vCPU. L0 delivers it once
/// L1's GIF allows and no NMI handler of L1 is still running (NMIs are
/// blocked from an injected NMI to the IRET that ends its handler). While
/// L2 runs and L1 intercepts NMI, it first ends L2's run with
/// #VMEXIT(NMI). One NMI is held; more merge. Returns 0.
pub const HC_QUEUE_NMI: u64 = 16;
/// Test hook: L0 sends a physical NMI to its own CPU so that it arrives
/// while this guest runs (at the next entry). It is L0's: the guest (and
/// an L1 intercepting NMI) must never see it. Returns 0.
pub const HC_PHYSICAL_NMI: u64 = 17;
/// Test hook: the intercepts of the VMCB the caller runs in (L2: the
/// merged one), `intercept_misc1 << 32 | intercept_exceptions`.
pub const HC_L0_INTERCEPTS: u64 = 18;
/// Test hook: nanoseconds since the VM was created, by L0's clock (the raw
/// host TSC over its PIT calibration; unaffected by
/// [`HC_TSC_SHIFT_HOST_BACK`] and by any guest TSC rule). Timing tests
/// bracket a measurement with it to see how much real time passed (a
/// descheduled QEMU shows here too).
pub const HC_NOW_NS: u64 = 19;
/// Test hook: how many #VMEXITs of any code this vCPU took so far (the
/// current VMMCALL excluded). Benches divide the change by their
/// iterations to report L0 exits per operation.
pub const HC_EXIT_TOTAL: u64 = 20;
/// Result of an unknown hypercall.
pub const HC_UNKNOWN: u64 = u64::MAX;

/// [`HC_ECHO_SUM`]'s function.
pub fn echo_sum(a: u64, b: u64, c: u64) -> u64 {
    a.wrapping_add(b.wrapping_mul(2))
        .wrapping_add(c.wrapping_mul(3))
}

/// Loads the start segments into `state`: CS = the 64-bit code descriptor,
/// SS/DS/ES/FS/GS = the data descriptor (flat), GDTR = [`GDT`] at
/// [`GDT_GPA`], no IDT. Used for a test guest's start state and by the L1
/// test hypervisor for its L2 (which shares L1's GDT).
pub fn load_start_segments(state: &mut crate::StateSaveArea) {
    use crate::VmcbSegment;
    let code = VmcbSegment::new(
        CODE_SELECTOR,
        VmcbSegment::attrib_from_descriptor(GDT[1]),
        u32::MAX,
        0,
    );
    let data = VmcbSegment::new(
        DATA_SELECTOR,
        VmcbSegment::attrib_from_descriptor(GDT[2]),
        u32::MAX,
        0,
    );
    state.cs = code;
    for seg in [
        &mut state.ss,
        &mut state.ds,
        &mut state.es,
        &mut state.fs,
        &mut state.gs,
    ] {
        *seg = data;
    }
    state.gdtr = VmcbSegment::new(0, 0, (GDT.len() * 8 - 1) as u32, GDT_GPA);
    state.idtr = VmcbSegment::new(0, 0, 0, 0);
}

/// Page-table entry bits used by [`write_page_tables`].
const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const HUGE: u64 = 1 << 7;

/// Writes the start page tables and GDT into `ram` (guest-physical 0 at
/// index 0). `ram` must cover at least [`IMAGE_GPA`].
pub fn write_page_tables(ram: &mut [u8]) {
    let mut put = |gpa: u64, value: u64| {
        let at = gpa as usize;
        ram[at..at + 8].copy_from_slice(&value.to_le_bytes());
    };
    put(PML4_GPA, PDPT_GPA | PRESENT | WRITABLE);
    put(PDPT_GPA, PD_GPA | PRESENT | WRITABLE);
    for i in 0..IDENTITY_MAP_SIZE >> 21 {
        put(PD_GPA + i * 8, (i << 21) | PRESENT | WRITABLE | HUGE);
    }
    for (i, d) in GDT.iter().enumerate() {
        put(GDT_GPA + 8 * i as u64, *d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;

    fn read(ram: &[u8], gpa: u64) -> u64 {
        u64::from_le_bytes(ram[gpa as usize..gpa as usize + 8].try_into().unwrap())
    }

    /// Walks the tables like the CPU would for a 2 MiB page.
    fn translate(ram: &[u8], va: u64) -> Option<u64> {
        let pml4e = read(ram, PML4_GPA + ((va >> 39) & 511) * 8);
        if pml4e & PRESENT == 0 {
            return None;
        }
        let pdpte = read(ram, (pml4e & !0xfff) + ((va >> 30) & 511) * 8);
        if pdpte & PRESENT == 0 {
            return None;
        }
        let pde = read(ram, (pdpte & !0xfff) + ((va >> 21) & 511) * 8);
        if pde & PRESENT == 0 || pde & HUGE == 0 {
            return None;
        }
        Some((pde & !0x1f_ffff & 0x000f_ffff_ffff_ffff) | (va & 0x1f_ffff))
    }

    #[test]
    fn page_tables_identity_map_the_first_gigabyte_only() {
        let mut ram = vec![0u8; IMAGE_GPA as usize];
        write_page_tables(&mut ram);
        for va in [
            0,
            0x1234,
            IMAGE_GPA,
            GUEST_MEMORY_SIZE + 5,
            IDENTITY_MAP_SIZE - 1,
        ] {
            assert_eq!(translate(&ram, va), Some(va), "va {va:#x}");
        }
        assert_eq!(translate(&ram, IDENTITY_MAP_SIZE), None);
        assert_eq!(read(&ram, GDT_GPA + 8), 0x00af_9b00_0000_ffff);
    }

    #[test]
    fn start_params_round_trip_and_truncate() {
        let p = StartParams::new("guest::cpuid", 4096);
        assert_eq!(p.test_name(), Some("guest::cpuid"));
        let long = "x".repeat(100);
        assert_eq!(
            StartParams::new(&long, 0).test_name().map(str::len),
            Some(MAX_TEST_NAME)
        );
        let mut bad = p;
        bad.test_name_len = 1000;
        assert_eq!(bad.test_name(), None);
    }

    #[test]
    fn start_segments_are_flat_long_mode() {
        let mut s = crate::Vmcb::new().state;
        load_start_segments(&mut s);
        assert_eq!(
            (s.cs.selector, s.ss.selector, s.gs.selector),
            (0x08, 0x10, 0x10)
        );
        // CS: present, S, type 0xB, L (attrib bit 9) and not D (bit 10).
        assert_eq!(s.cs.attrib & 0x600, 0x200);
        assert_eq!(s.cs.attrib & 0x80, 0x80);
        assert_eq!((s.gdtr.base, s.gdtr.limit), (GDT_GPA, 23));
        assert_eq!(s.idtr.limit, 0);
    }

    #[test]
    fn echo_sum_weights_each_argument() {
        assert_eq!(echo_sum(1, 10, 100), 1 + 20 + 300);
        assert_ne!(echo_sum(1, 2, 3), echo_sum(2, 1, 3));
        assert_eq!(echo_sum(u64::MAX, 1, 0), 1);
    }
}
