//! The virtual machine control block: one 4 KiB page holding the control
//! area (0x000-0x3FF) and the guest state save area (0x400-0xFFF).
//!
//! Field by field per APM Vol. 2 Appendix B, Table B-1 (control area) and
//! Table B-2 (state save area, non-SEV-ES). Each field's doc starts with its
//! byte offset in the VMCB; save-area fields also give the Table B-2 offset
//! (relative to 0x400). Gaps the APM marks reserved are private padding, so
//! the struct has no compiler padding: every one of the 4096 bytes belongs
//! to exactly one field (checked at compile time below), which is what makes
//! the raw-byte views [`Vmcb::as_bytes`] / [`Vmcb::as_bytes_mut`] sound.
//!
//! All named fields are plain integers; the typed views of their bits live in
//! [`crate::intercept`], [`crate::int_ctl`], [`crate::exec_ctl`],
//! [`crate::event`] and [`crate::exit`].

use core::fmt;
use core::mem::{align_of, offset_of, size_of};
use static_assertions::const_assert_eq;

/// Bytes the APM marks reserved (SBZ). Kept private: software has no
/// business writing them, and they print as `..` to keep `Debug` readable.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(transparent)]
struct Reserved<const N: usize>([u8; N]);

impl<const N: usize> fmt::Debug for Reserved<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("..")
    }
}

/// A segment register as the VMCB stores it (APM 15.5.1 "Segment State in
/// the VMCB"): base and limit fully expanded, attributes packed into 12 bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct VmcbSegment {
    /// +0x0: selector.
    pub selector: u16,
    /// +0x2: attributes: descriptor bits 47:40 in attrib 7:0 and bits 55:52
    /// in attrib 11:8 (see [`VmcbSegment::attrib_from_descriptor`]).
    pub attrib: u16,
    /// +0x4: limit, expanded to bytes (granularity already applied).
    pub limit: u32,
    /// +0x8: base (canonicalized by VMRUN/#VMEXIT).
    pub base: u64,
}

impl VmcbSegment {
    /// Attribute bits 3:0: segment type.
    pub const ATTR_TYPE_MASK: u16 = 0xF;
    /// Attribute bit 4: S (code/data rather than system segment).
    pub const ATTR_S: u16 = 1 << 4;
    /// Attribute bits 6:5: DPL.
    pub const ATTR_DPL_MASK: u16 = 3 << 5;
    /// Attribute bit 7: P. The VMCB uses P=0 to mark a NULL segment.
    pub const ATTR_P: u16 = 1 << 7;
    /// Attribute bit 8: AVL.
    pub const ATTR_AVL: u16 = 1 << 8;
    /// Attribute bit 9: L (64-bit code segment).
    pub const ATTR_L: u16 = 1 << 9;
    /// Attribute bit 10: D/B.
    pub const ATTR_DB: u16 = 1 << 10;
    /// Attribute bit 11: G.
    pub const ATTR_G: u16 = 1 << 11;

    /// A segment from its four fields.
    pub const fn new(selector: u16, attrib: u16, limit: u32, base: u64) -> Self {
        Self {
            selector,
            attrib,
            limit,
            base,
        }
    }

    /// The 12-bit VMCB attribute value of an 8-byte in-memory descriptor:
    /// the concatenation of descriptor bits 55:52 and 47:40 (APM 15.5.1).
    pub const fn attrib_from_descriptor(descriptor: u64) -> u16 {
        let low = (descriptor >> 40) & 0xFF;
        let high = (descriptor >> 52) & 0xF;
        (low | (high << 8)) as u16
    }
}

/// VMCB control area, offsets 0x000-0x3FF (APM Table B-1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct ControlArea {
    /// 0x000: intercept reads (bits 15:0) and writes (bits 31:16) of
    /// CR0-15; see [`crate::CrIntercepts`].
    pub intercept_cr: u32,
    /// 0x004: intercept reads (15:0) and writes (31:16) of DR0-15; see
    /// [`crate::DrIntercepts`].
    pub intercept_dr: u32,
    /// 0x008: intercept exception vectors 0-31; see
    /// [`crate::ExceptionIntercepts`].
    pub intercept_exceptions: u32,
    /// 0x00C: intercept vector 3 (INTR ... shutdown); see
    /// [`crate::InterceptMisc1`].
    pub intercept_misc1: u32,
    /// 0x010: intercept vector 4 (VMRUN ... CR write traps); see
    /// [`crate::InterceptMisc2`].
    pub intercept_misc2: u32,
    /// 0x014: intercept vector 5 (INVLPGB ... IDLE_HLT); see
    /// [`crate::InterceptMisc3`].
    pub intercept_misc3: u32,
    _rsvd_018: Reserved<0x24>,
    /// 0x03C: PAUSE filter threshold (cycles), if PauseFilterThreshold.
    pub pause_filter_thresh: u16,
    /// 0x03E: PAUSE filter count, if PauseFilter (APM 15.14.4).
    pub pause_filter_count: u16,
    /// 0x040: physical base of the I/O permission map (bits 11:0 ignored).
    pub iopm_base_pa: u64,
    /// 0x048: physical base of the MSR permission map (bits 11:0 ignored).
    pub msrpm_base_pa: u64,
    /// 0x050: added to the TSC for guest RDTSC/RDTSCP. Covered by clean
    /// bit 0 ([`crate::CleanBits::INTERCEPTS`]).
    pub tsc_offset: u64,
    /// 0x058: guest ASID; 0 is the host's and makes VMRUN fail.
    pub guest_asid: u32,
    /// 0x05C: TLB_CONTROL; see [`crate::TlbControl`].
    pub tlb_control: u8,
    /// 0x05D: RAP control (qword 0x058 bits 41:40): bit 0
    /// ALLOW_LARGER_RAP, bit 1 CLEAR_RAP.
    pub rap_control: u8,
    _rsvd_05e: Reserved<2>,
    /// 0x060: virtual interrupt control (V_TPR, V_IRQ, V_GIF, ...); see
    /// [`crate::IntCtl`].
    pub int_ctl: u64,
    /// 0x068: bit 0 INTERRUPT_SHADOW, bit 1 GUEST_INTERRUPT_MASK; see
    /// [`crate::InterruptState`].
    pub interrupt_shadow: u64,
    /// 0x070: EXITCODE; decode with [`crate::ExitCode::from_raw`].
    pub exit_code: u64,
    /// 0x078: EXITINFO1.
    pub exit_info1: u64,
    /// 0x080: EXITINFO2.
    pub exit_info2: u64,
    /// 0x088: EXITINTINFO; see [`crate::EventInfo`].
    pub exit_int_info: u64,
    /// 0x090: NP_ENABLE and other nested-paging/SEV enables; see
    /// [`crate::NestedCtl`].
    pub nested_ctl: u64,
    /// 0x098: AVIC APIC_BAR (bits 51:0).
    pub avic_apic_bar: u64,
    /// 0x0A0: guest physical address of the GHCB (SEV-ES).
    pub ghcb_gpa: u64,
    /// 0x0A8: EVENTINJ; see [`crate::EventInfo`].
    pub event_inj: u64,
    /// 0x0B0: N_CR3, the nested page table root.
    pub ncr3: u64,
    /// 0x0B8: LBR / VMSAVE-VMLOAD / IBS / PMC virtualization enables; see
    /// [`crate::VirtExt`].
    pub virt_ext: u64,
    /// 0x0C0: VMCB clean bits (31:0); see [`crate::CleanBits`].
    pub vmcb_clean: u32,
    _rsvd_0c4: Reserved<4>,
    /// 0x0C8: nRIP, next sequential RIP (if NRIPS; zero otherwise).
    pub next_rip: u64,
    /// 0x0D0: number of guest instruction bytes fetched (decode assists).
    pub insn_len: u8,
    /// 0x0D1: the guest instruction bytes (up to 15).
    pub insn_bytes: [u8; 15],
    /// 0x0E0: AVIC APIC_BACKING_PAGE pointer (bits 51:0).
    pub avic_backing_page: u64,
    _rsvd_0e8: Reserved<8>,
    /// 0x0F0: AVIC LOGICAL_TABLE pointer (bits 51:12).
    pub avic_logical_table: u64,
    /// 0x0F8: AVIC PHYSICAL_TABLE pointer (51:12) and
    /// AVIC_PHYSICAL_MAX_INDEX (11:0).
    pub avic_physical_table: u64,
    _rsvd_100: Reserved<8>,
    /// 0x108: VMSA pointer (bits 51:12), SEV-ES.
    pub vmsa_pa: u64,
    /// 0x110: VMGEXIT_RAX.
    pub vmgexit_rax: u64,
    /// 0x118: VMGEXIT_CPL.
    pub vmgexit_cpl: u8,
    _rsvd_119: Reserved<7>,
    /// 0x120: bus lock threshold counter (APM 15.14.5).
    pub bus_lock_counter: u16,
    _rsvd_122: Reserved<0x12>,
    /// 0x134: bit 0 UPDATE_IRR.
    pub update_irr: u32,
    /// 0x138: ALLOWED_SEV_FEATURES mask (61:0) and enable (bit 63).
    pub allowed_sev_features: u64,
    /// 0x140: GUEST_SEV_FEATURES (61:0).
    pub guest_sev_features: u64,
    _rsvd_148: Reserved<8>,
    /// 0x150: REQUESTED_IRR, 256 bits.
    pub requested_irr: [u64; 4],
    _rsvd_170: Reserved<0x270>,
    /// 0x3E0: reserved for host (hypervisor software) use; the CPU never
    /// touches it.
    pub host_reserved: [u8; 0x20],
}

/// VMCB state save area, VMCB offsets 0x400-0xFFF (APM Table B-2, whose
/// offsets are relative to 0x400 and given second below).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct StateSaveArea {
    /// 0x400 (+0x000): ES.
    pub es: VmcbSegment,
    /// 0x410 (+0x010): CS.
    pub cs: VmcbSegment,
    /// 0x420 (+0x020): SS.
    pub ss: VmcbSegment,
    /// 0x430 (+0x030): DS.
    pub ds: VmcbSegment,
    /// 0x440 (+0x040): FS.
    pub fs: VmcbSegment,
    /// 0x450 (+0x050): GS.
    pub gs: VmcbSegment,
    /// 0x460 (+0x060): GDTR (selector/attrib reserved, limit 16 bits).
    pub gdtr: VmcbSegment,
    /// 0x470 (+0x070): LDTR.
    pub ldtr: VmcbSegment,
    /// 0x480 (+0x080): IDTR (selector/attrib reserved, limit 16 bits).
    pub idtr: VmcbSegment,
    /// 0x490 (+0x090): TR.
    pub tr: VmcbSegment,
    _rsvd_0a0: Reserved<0x2B>,
    /// 0x4CB (+0x0CB): CPL (forced to 0 in real mode, 3 in v86 mode).
    pub cpl: u8,
    _rsvd_0cc: Reserved<4>,
    /// 0x4D0 (+0x0D0): EFER.
    pub efer: u64,
    _rsvd_0d8: Reserved<8>,
    /// 0x4E0 (+0x0E0): PERF_CTL0.
    pub perf_ctl0: u64,
    /// 0x4E8 (+0x0E8): PERF_CTR0.
    pub perf_ctr0: u64,
    /// 0x4F0 (+0x0F0): PERF_CTL1.
    pub perf_ctl1: u64,
    /// 0x4F8 (+0x0F8): PERF_CTR1.
    pub perf_ctr1: u64,
    /// 0x500 (+0x100): PERF_CTL2.
    pub perf_ctl2: u64,
    /// 0x508 (+0x108): PERF_CTR2.
    pub perf_ctr2: u64,
    /// 0x510 (+0x110): PERF_CTL3.
    pub perf_ctl3: u64,
    /// 0x518 (+0x118): PERF_CTR3.
    pub perf_ctr3: u64,
    /// 0x520 (+0x120): PERF_CTL4.
    pub perf_ctl4: u64,
    /// 0x528 (+0x128): PERF_CTR4.
    pub perf_ctr4: u64,
    /// 0x530 (+0x130): PERF_CTL5.
    pub perf_ctl5: u64,
    /// 0x538 (+0x138): PERF_CTR5.
    pub perf_ctr5: u64,
    // Table B-2 leaves +0x140 unlisted (it is XSS in the SEV-ES VMSA).
    _rsvd_140: Reserved<8>,
    /// 0x548 (+0x148): CR4.
    pub cr4: u64,
    /// 0x550 (+0x150): CR3.
    pub cr3: u64,
    /// 0x558 (+0x158): CR0.
    pub cr0: u64,
    /// 0x560 (+0x160): DR7.
    pub dr7: u64,
    /// 0x568 (+0x168): DR6.
    pub dr6: u64,
    /// 0x570 (+0x170): RFLAGS.
    pub rflags: u64,
    /// 0x578 (+0x178): RIP.
    pub rip: u64,
    _rsvd_180: Reserved<0x40>,
    /// 0x5C0 (+0x1C0): INSTR_RETIRED_CTR.
    pub instr_retired_ctr: u64,
    /// 0x5C8 (+0x1C8): PERF_CTR_GLOBAL_STS.
    pub perf_ctr_global_sts: u64,
    /// 0x5D0 (+0x1D0): PERF_CTR_GLOBAL_CTL. Table B-2 says qword but also
    /// reserves +0x1D4-0x1D7; Table B-4 says dword, which is what this is.
    pub perf_ctr_global_ctl: u32,
    _rsvd_1d4: Reserved<4>,
    /// 0x5D8 (+0x1D8): RSP.
    pub rsp: u64,
    /// 0x5E0 (+0x1E0): S_CET.
    pub s_cet: u64,
    /// 0x5E8 (+0x1E8): SSP.
    pub ssp: u64,
    /// 0x5F0 (+0x1F0): ISST_ADDR.
    pub isst_addr: u64,
    /// 0x5F8 (+0x1F8): RAX.
    pub rax: u64,
    /// 0x600 (+0x200): STAR.
    pub star: u64,
    /// 0x608 (+0x208): LSTAR.
    pub lstar: u64,
    /// 0x610 (+0x210): CSTAR.
    pub cstar: u64,
    /// 0x618 (+0x218): SFMASK.
    pub sfmask: u64,
    /// 0x620 (+0x220): KernelGsBase.
    pub kernel_gs_base: u64,
    /// 0x628 (+0x228): SYSENTER_CS.
    pub sysenter_cs: u64,
    /// 0x630 (+0x230): SYSENTER_ESP.
    pub sysenter_esp: u64,
    /// 0x638 (+0x238): SYSENTER_EIP.
    pub sysenter_eip: u64,
    /// 0x640 (+0x240): CR2.
    pub cr2: u64,
    _rsvd_248: Reserved<0x20>,
    /// 0x668 (+0x268): G_PAT, the guest PAT (used only with nested paging).
    pub g_pat: u64,
    /// 0x670 (+0x270): DBGCTL (guest DebugCtl, with LBR virtualization).
    pub dbgctl: u64,
    /// 0x678 (+0x278): BR_FROM (LastBranchFromIP).
    pub br_from: u64,
    /// 0x680 (+0x280): BR_TO (LastBranchToIP).
    pub br_to: u64,
    /// 0x688 (+0x288): LASTEXCPFROM (LastIntFromIP).
    pub last_excp_from: u64,
    /// 0x690 (+0x290): LASTEXCPTO (LastIntToIP).
    pub last_excp_to: u64,
    /// 0x698 (+0x298): DBGEXTNCTL (with LBR stack virtualization).
    pub dbgextnctl: u64,
    _rsvd_2a0: Reserved<0x40>,
    /// 0x6E0 (+0x2E0): SPEC_CTRL.
    pub spec_ctrl: u64,
    _rsvd_2e8: Reserved<0x388>,
    /// 0xA70 (+0x670): LBR_STACK_FROM / LBR_STACK_TO MSRs, in MSR address
    /// order.
    pub lbr_stack: [u64; 32],
    /// 0xB70 (+0x770): LBR_SELECT.
    pub lbr_select: u64,
    /// 0xB78 (+0x778): IBS_FETCH_CTL.
    pub ibs_fetch_ctl: u64,
    /// 0xB80 (+0x780): IBS_FETCH_LINADDR.
    pub ibs_fetch_linaddr: u64,
    /// 0xB88 (+0x788): IBS_OP_CTL.
    pub ibs_op_ctl: u64,
    /// 0xB90 (+0x790): IBS_OP_RIP.
    pub ibs_op_rip: u64,
    /// 0xB98 (+0x798): IBS_OP_DATA.
    pub ibs_op_data: u64,
    /// 0xBA0 (+0x7A0): IBS_OP_DATA2.
    pub ibs_op_data2: u64,
    /// 0xBA8 (+0x7A8): IBS_OP_DATA3.
    pub ibs_op_data3: u64,
    /// 0xBB0 (+0x7B0): IBS_DC_LINADDR.
    pub ibs_dc_linaddr: u64,
    /// 0xBB8 (+0x7B8): BP_IBSTGT_RIP.
    pub bp_ibstgt_rip: u64,
    /// 0xBC0 (+0x7C0): IC_IBS_EXTD_CTL.
    pub ic_ibs_extd_ctl: u64,
    _rsvd_7c8: Reserved<0x438>,
}

/// The VMCB. VMRUN takes its physical address, which must be 4 KiB aligned
/// (APM 15.5.1); the type's alignment guarantees that for any placement.
#[derive(Clone, Debug, PartialEq, Eq)]
#[repr(C, align(4096))]
pub struct Vmcb {
    /// 0x000-0x3FF.
    pub control: ControlArea,
    /// 0x400-0xFFF.
    pub state: StateSaveArea,
}

impl ControlArea {
    /// An all-zero control area (nothing intercepted, ASID 0: not yet
    /// runnable).
    pub const fn new() -> Self {
        // SAFETY: every field is an integer or an array of integers, for
        // which the all-zero bit pattern is a valid value.
        unsafe { core::mem::zeroed() }
    }
}

impl ControlArea {
    /// The bytes of the control area L0 uses: the intercepts through
    /// NEXT_RIP (0x000-0x0CF). From 0x0D0 on there are decode-assist bytes,
    /// AVIC, SEV and host-reserved fields, none of which L0 enables, offers
    /// to L1, or reads.
    pub const LIVE_BYTES: usize = 0xD0;

    /// Copies [`Self::LIVE_BYTES`] of `other` into `self` (the rest stays):
    /// the control copies of a nested VMRUN and #VMEXIT.
    pub fn copy_live_from(&mut self, other: &ControlArea) {
        // SAFETY: `ControlArea` is `repr(C)`, 0x400 bytes without padding
        // (every byte belongs to an integer field: asserted below), so its
        // first LIVE_BYTES bytes are initialized integers, valid as `u8`
        // and writable with any value.
        let (dst, src) = unsafe {
            (
                &mut *(self as *mut Self).cast::<[u8; Self::LIVE_BYTES]>(),
                &*(other as *const Self).cast::<[u8; Self::LIVE_BYTES]>(),
            )
        };
        dst.copy_from_slice(src);
    }
}

impl ControlArea {
    /// Copies bytes `START..END` of `other` into `self`: a run of adjacent
    /// fields (bounds from `offset_of!`) in a few 8-byte moves, not one per
    /// field (the control copies of a nested VMRUN and #VMEXIT).
    #[inline(always)]
    pub fn copy_span_from<const START: usize, const END: usize>(&mut self, other: &ControlArea) {
        const { assert!(START <= END && END <= size_of::<ControlArea>()) };
        // SAFETY: `ControlArea` is `repr(C)` without padding (asserted
        // below): bytes START..END (in bounds, checked above) are
        // initialized integers in both, any value is valid for them, and
        // `&mut self` and `&other` cannot overlap.
        unsafe {
            core::ptr::copy_nonoverlapping(
                (other as *const Self).cast::<u8>().add(START),
                (self as *mut Self).cast::<u8>().add(START),
                END - START,
            );
        }
    }
}

impl Default for ControlArea {
    fn default() -> Self {
        Self::new()
    }
}

impl StateSaveArea {
    /// An all-zero state save area.
    pub const fn new() -> Self {
        // SAFETY: every field is an integer, an array of integers or a
        // `VmcbSegment` of integers: all-zero is a valid value.
        unsafe { core::mem::zeroed() }
    }
}

impl Default for StateSaveArea {
    fn default() -> Self {
        Self::new()
    }
}

impl Vmcb {
    /// Size of a VMCB in bytes.
    pub const SIZE: usize = 4096;

    /// An all-zero VMCB.
    pub const fn new() -> Self {
        Self {
            control: ControlArea::new(),
            state: StateSaveArea::new(),
        }
    }

    /// The VMCB as its 4096 raw bytes (for copying a guest's VMCB, dumps,
    /// and checking reserved fields).
    pub fn as_bytes(&self) -> &[u8; Self::SIZE] {
        // SAFETY: `Vmcb` is `repr(C)`, exactly 4096 bytes, and has no
        // padding (every byte belongs to an integer field: asserted below),
        // so all 4096 bytes are initialized and readable as `u8`.
        unsafe { &*(self as *const Self).cast::<[u8; Self::SIZE]>() }
    }

    /// The VMCB as 4096 mutable raw bytes.
    pub fn as_bytes_mut(&mut self) -> &mut [u8; Self::SIZE] {
        // SAFETY: as in `as_bytes`; in addition every field is a plain
        // integer, so any byte pattern written through the view is a valid
        // `Vmcb`.
        unsafe { &mut *(self as *mut Self).cast::<[u8; Self::SIZE]>() }
    }

    /// The bytes of the VMCB that the features this hypervisor enables
    /// read or write: the control area and the state save area through
    /// SPEC_CTRL (0x000-0x6E7). From 0x6E8 on there are only the LBR stack
    /// and IBS fields, used with LBR stack or IBS virtualization, which L0
    /// never enables (nor offers to L1), and reserved bytes.
    pub const LIVE_BYTES: usize = 0x6E8;

    /// Copies [`Self::LIVE_BYTES`] of `other` into `self` (the rest of
    /// `self` is left alone): the VMCB copies on every nested VMRUN and
    /// #VMEXIT, at 43% of the size of a whole page.
    pub fn copy_live_from(&mut self, other: &Vmcb) {
        self.as_bytes_mut()[..Self::LIVE_BYTES]
            .copy_from_slice(&other.as_bytes()[..Self::LIVE_BYTES]);
    }

    /// A VMCB holding a copy of `bytes`.
    pub fn from_bytes(bytes: &[u8; Self::SIZE]) -> Self {
        let mut vmcb = Self::new();
        vmcb.as_bytes_mut().copy_from_slice(bytes);
        vmcb
    }
}

impl Default for Vmcb {
    fn default() -> Self {
        Self::new()
    }
}

// ---------------------------------------------------------------------------
// Compile-time layout checks: every field at its Appendix B offset, and the
// field sizes adding up to the whole (so there is no hidden padding).

/// Size of the field a projection closure points at.
const fn field_size<T, F>(_: fn(&T) -> &F) -> usize {
    size_of::<F>()
}

macro_rules! assert_layout {
    ($ty:ident, $size:expr; $($field:ident @ $off:expr),+ $(,)?) => {
        $( const_assert_eq!(offset_of!($ty, $field), $off); )+
        const_assert_eq!(0 $(+ field_size(|s: &$ty| &s.$field))+, $size);
        const_assert_eq!(size_of::<$ty>(), $size);
    };
}

assert_layout!(VmcbSegment, 0x10;
    selector @ 0x0, attrib @ 0x2, limit @ 0x4, base @ 0x8,
);

assert_layout!(ControlArea, 0x400;
    intercept_cr @ 0x000,
    intercept_dr @ 0x004,
    intercept_exceptions @ 0x008,
    intercept_misc1 @ 0x00C,
    intercept_misc2 @ 0x010,
    intercept_misc3 @ 0x014,
    _rsvd_018 @ 0x018,
    pause_filter_thresh @ 0x03C,
    pause_filter_count @ 0x03E,
    iopm_base_pa @ 0x040,
    msrpm_base_pa @ 0x048,
    tsc_offset @ 0x050,
    guest_asid @ 0x058,
    tlb_control @ 0x05C,
    rap_control @ 0x05D,
    _rsvd_05e @ 0x05E,
    int_ctl @ 0x060,
    interrupt_shadow @ 0x068,
    exit_code @ 0x070,
    exit_info1 @ 0x078,
    exit_info2 @ 0x080,
    exit_int_info @ 0x088,
    nested_ctl @ 0x090,
    avic_apic_bar @ 0x098,
    ghcb_gpa @ 0x0A0,
    event_inj @ 0x0A8,
    ncr3 @ 0x0B0,
    virt_ext @ 0x0B8,
    vmcb_clean @ 0x0C0,
    _rsvd_0c4 @ 0x0C4,
    next_rip @ 0x0C8,
    insn_len @ 0x0D0,
    insn_bytes @ 0x0D1,
    avic_backing_page @ 0x0E0,
    _rsvd_0e8 @ 0x0E8,
    avic_logical_table @ 0x0F0,
    avic_physical_table @ 0x0F8,
    _rsvd_100 @ 0x100,
    vmsa_pa @ 0x108,
    vmgexit_rax @ 0x110,
    vmgexit_cpl @ 0x118,
    _rsvd_119 @ 0x119,
    bus_lock_counter @ 0x120,
    _rsvd_122 @ 0x122,
    update_irr @ 0x134,
    allowed_sev_features @ 0x138,
    guest_sev_features @ 0x140,
    _rsvd_148 @ 0x148,
    requested_irr @ 0x150,
    _rsvd_170 @ 0x170,
    host_reserved @ 0x3E0,
);

assert_layout!(StateSaveArea, 0xC00;
    es @ 0x000,
    cs @ 0x010,
    ss @ 0x020,
    ds @ 0x030,
    fs @ 0x040,
    gs @ 0x050,
    gdtr @ 0x060,
    ldtr @ 0x070,
    idtr @ 0x080,
    tr @ 0x090,
    _rsvd_0a0 @ 0x0A0,
    cpl @ 0x0CB,
    _rsvd_0cc @ 0x0CC,
    efer @ 0x0D0,
    _rsvd_0d8 @ 0x0D8,
    perf_ctl0 @ 0x0E0,
    perf_ctr0 @ 0x0E8,
    perf_ctl1 @ 0x0F0,
    perf_ctr1 @ 0x0F8,
    perf_ctl2 @ 0x100,
    perf_ctr2 @ 0x108,
    perf_ctl3 @ 0x110,
    perf_ctr3 @ 0x118,
    perf_ctl4 @ 0x120,
    perf_ctr4 @ 0x128,
    perf_ctl5 @ 0x130,
    perf_ctr5 @ 0x138,
    _rsvd_140 @ 0x140,
    cr4 @ 0x148,
    cr3 @ 0x150,
    cr0 @ 0x158,
    dr7 @ 0x160,
    dr6 @ 0x168,
    rflags @ 0x170,
    rip @ 0x178,
    _rsvd_180 @ 0x180,
    instr_retired_ctr @ 0x1C0,
    perf_ctr_global_sts @ 0x1C8,
    perf_ctr_global_ctl @ 0x1D0,
    _rsvd_1d4 @ 0x1D4,
    rsp @ 0x1D8,
    s_cet @ 0x1E0,
    ssp @ 0x1E8,
    isst_addr @ 0x1F0,
    rax @ 0x1F8,
    star @ 0x200,
    lstar @ 0x208,
    cstar @ 0x210,
    sfmask @ 0x218,
    kernel_gs_base @ 0x220,
    sysenter_cs @ 0x228,
    sysenter_esp @ 0x230,
    sysenter_eip @ 0x238,
    cr2 @ 0x240,
    _rsvd_248 @ 0x248,
    g_pat @ 0x268,
    dbgctl @ 0x270,
    br_from @ 0x278,
    br_to @ 0x280,
    last_excp_from @ 0x288,
    last_excp_to @ 0x290,
    dbgextnctl @ 0x298,
    _rsvd_2a0 @ 0x2A0,
    spec_ctrl @ 0x2E0,
    _rsvd_2e8 @ 0x2E8,
    lbr_stack @ 0x670,
    lbr_select @ 0x770,
    ibs_fetch_ctl @ 0x778,
    ibs_fetch_linaddr @ 0x780,
    ibs_op_ctl @ 0x788,
    ibs_op_rip @ 0x790,
    ibs_op_data @ 0x798,
    ibs_op_data2 @ 0x7A0,
    ibs_op_data3 @ 0x7A8,
    ibs_dc_linaddr @ 0x7B0,
    bp_ibstgt_rip @ 0x7B8,
    ic_ibs_extd_ctl @ 0x7C0,
    _rsvd_7c8 @ 0x7C8,
);

assert_layout!(Vmcb, 0x1000; control @ 0x000, state @ 0x400);
const_assert_eq!(align_of::<Vmcb>(), 4096);

// The absolute offsets software most often cross-checks against dumps.
const_assert_eq!(offset_of!(Vmcb, control.exit_code), 0x070);
const_assert_eq!(offset_of!(Vmcb, state.efer), 0x4D0);
const_assert_eq!(offset_of!(Vmcb, state.cr4), 0x548);
const_assert_eq!(offset_of!(Vmcb, state.rip), 0x578);
const_assert_eq!(offset_of!(Vmcb, state.rsp), 0x5D8);
// The control area's live part ends right after NEXT_RIP.
const_assert_eq!(
    offset_of!(ControlArea, next_rip) + 8,
    ControlArea::LIVE_BYTES
);
// The live part ends right after SPEC_CTRL, the last field before the LBR
// stack.
const_assert_eq!(offset_of!(Vmcb, state.spec_ctrl) + 8, Vmcb::LIVE_BYTES);
const_assert_eq!(offset_of!(Vmcb, state.lbr_stack), 0xA70);
const_assert_eq!(offset_of!(Vmcb, state.rax), 0x5F8);
const_assert_eq!(offset_of!(Vmcb, state.cr2), 0x640);
const_assert_eq!(offset_of!(Vmcb, state.g_pat), 0x668);
const_assert_eq!(offset_of!(Vmcb, state.spec_ctrl), 0x6E0);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_live_from_copies_controls_and_state_through_spec_ctrl_only() {
        let mut src = Vmcb::new();
        src.as_bytes_mut().fill(0xA5);
        let mut dst = Vmcb::new();
        dst.copy_live_from(&src);
        let pattern = u64::from_ne_bytes([0xA5; 8]);
        assert_eq!(dst.control.intercept_misc1, 0xA5A5_A5A5);
        assert_eq!(dst.control.next_rip, pattern);
        assert_eq!(dst.state.rip, pattern);
        assert_eq!(dst.state.g_pat, pattern);
        assert_eq!(dst.state.dbgextnctl, pattern);
        assert_eq!(dst.state.spec_ctrl, pattern);
        assert_eq!(
            dst.as_bytes()[..Vmcb::LIVE_BYTES],
            src.as_bytes()[..Vmcb::LIVE_BYTES]
        );
        // The LBR stack and IBS fields (and the reserved tail) stay.
        assert_eq!(dst.state.lbr_stack, [0; 32]);
        assert_eq!(dst.state.ic_ibs_extd_ctl, 0);
        assert!(dst.as_bytes()[Vmcb::LIVE_BYTES..].iter().all(|&b| b == 0));
    }

    #[test]
    fn control_copy_live_from_stops_after_next_rip() {
        let mut src = Vmcb::new();
        src.as_bytes_mut().fill(0xA5);
        let mut dst = Vmcb::new();
        dst.control.copy_live_from(&src.control);
        assert_eq!(dst.control.intercept_cr, 0xA5A5_A5A5);
        assert_eq!(dst.control.next_rip, u64::from_ne_bytes([0xA5; 8]));
        assert_eq!(dst.control.insn_len, 0);
        assert_eq!(
            dst.as_bytes()[..ControlArea::LIVE_BYTES],
            src.as_bytes()[..ControlArea::LIVE_BYTES]
        );
        assert!(dst.as_bytes()[ControlArea::LIVE_BYTES..]
            .iter()
            .all(|&b| b == 0));
    }

    #[test]
    fn copy_span_from_copies_exactly_the_span() {
        let mut src = Vmcb::new();
        src.as_bytes_mut().fill(0xA5);
        let mut dst = Vmcb::new();
        dst.control
            .copy_span_from::<{ offset_of!(ControlArea, iopm_base_pa) }, { offset_of!(ControlArea, exit_code) }>(&src.control);
        let bytes = dst.as_bytes();
        assert!(bytes[..0x40].iter().all(|&b| b == 0));
        assert!(bytes[0x40..0x70].iter().all(|&b| b == 0xA5));
        assert!(bytes[0x70..].iter().all(|&b| b == 0));
    }

    /// Reads `N` little-endian bytes at `off` from the raw VMCB.
    fn read_le(bytes: &[u8; 4096], off: usize, n: usize) -> u64 {
        let mut v = 0u64;
        for i in 0..n {
            v |= u64::from(bytes[off + i]) << (8 * i);
        }
        v
    }

    /// Writes one field through the struct and finds exactly its bytes, at
    /// the APM offset, changed in the raw page.
    fn check_field(set: impl FnOnce(&mut Vmcb), off: usize, width: usize) {
        let mut vmcb = Vmcb::new();
        set(&mut vmcb);
        let bytes = vmcb.as_bytes();
        let expected = 0x8877_6655_4433_2211u64 & (u64::MAX >> (64 - 8 * width));
        assert_eq!(read_le(bytes, off, width), expected, "field at {off:#x}");
        let others = bytes
            .iter()
            .enumerate()
            .filter(|&(i, &b)| b != 0 && !(off..off + width).contains(&i))
            .count();
        assert_eq!(others, 0, "field at {off:#x} spilled");
    }

    const V64: u64 = 0x8877_6655_4433_2211;
    const V32: u32 = 0x4433_2211;
    const V16: u16 = 0x2211;
    const V8: u8 = 0x11;

    #[test]
    fn control_fields_land_at_table_b1_offsets() {
        check_field(|v| v.control.intercept_cr = V32, 0x000, 4);
        check_field(|v| v.control.intercept_dr = V32, 0x004, 4);
        check_field(|v| v.control.intercept_exceptions = V32, 0x008, 4);
        check_field(|v| v.control.intercept_misc1 = V32, 0x00C, 4);
        check_field(|v| v.control.intercept_misc2 = V32, 0x010, 4);
        check_field(|v| v.control.intercept_misc3 = V32, 0x014, 4);
        check_field(|v| v.control.pause_filter_thresh = V16, 0x03C, 2);
        check_field(|v| v.control.pause_filter_count = V16, 0x03E, 2);
        check_field(|v| v.control.iopm_base_pa = V64, 0x040, 8);
        check_field(|v| v.control.msrpm_base_pa = V64, 0x048, 8);
        check_field(|v| v.control.tsc_offset = V64, 0x050, 8);
        check_field(|v| v.control.guest_asid = V32, 0x058, 4);
        check_field(|v| v.control.tlb_control = V8, 0x05C, 1);
        check_field(|v| v.control.rap_control = V8, 0x05D, 1);
        check_field(|v| v.control.int_ctl = V64, 0x060, 8);
        check_field(|v| v.control.interrupt_shadow = V64, 0x068, 8);
        check_field(|v| v.control.exit_code = V64, 0x070, 8);
        check_field(|v| v.control.exit_info1 = V64, 0x078, 8);
        check_field(|v| v.control.exit_info2 = V64, 0x080, 8);
        check_field(|v| v.control.exit_int_info = V64, 0x088, 8);
        check_field(|v| v.control.nested_ctl = V64, 0x090, 8);
        check_field(|v| v.control.avic_apic_bar = V64, 0x098, 8);
        check_field(|v| v.control.ghcb_gpa = V64, 0x0A0, 8);
        check_field(|v| v.control.event_inj = V64, 0x0A8, 8);
        check_field(|v| v.control.ncr3 = V64, 0x0B0, 8);
        check_field(|v| v.control.virt_ext = V64, 0x0B8, 8);
        check_field(|v| v.control.vmcb_clean = V32, 0x0C0, 4);
        check_field(|v| v.control.next_rip = V64, 0x0C8, 8);
        check_field(|v| v.control.insn_len = V8, 0x0D0, 1);
        check_field(|v| v.control.insn_bytes[0] = V8, 0x0D1, 1);
        check_field(|v| v.control.insn_bytes[14] = V8, 0x0DF, 1);
        check_field(|v| v.control.avic_backing_page = V64, 0x0E0, 8);
        check_field(|v| v.control.avic_logical_table = V64, 0x0F0, 8);
        check_field(|v| v.control.avic_physical_table = V64, 0x0F8, 8);
        check_field(|v| v.control.vmsa_pa = V64, 0x108, 8);
        check_field(|v| v.control.vmgexit_rax = V64, 0x110, 8);
        check_field(|v| v.control.vmgexit_cpl = V8, 0x118, 1);
        check_field(|v| v.control.bus_lock_counter = V16, 0x120, 2);
        check_field(|v| v.control.update_irr = V32, 0x134, 4);
        check_field(|v| v.control.allowed_sev_features = V64, 0x138, 8);
        check_field(|v| v.control.guest_sev_features = V64, 0x140, 8);
        check_field(|v| v.control.requested_irr[0] = V64, 0x150, 8);
        check_field(|v| v.control.requested_irr[3] = V64, 0x168, 8);
        check_field(|v| v.control.host_reserved[0] = V8, 0x3E0, 1);
        check_field(|v| v.control.host_reserved[31] = V8, 0x3FF, 1);
    }

    #[test]
    fn state_fields_land_at_table_b2_offsets_plus_0x400() {
        check_field(|v| v.state.es.selector = V16, 0x400, 2);
        check_field(|v| v.state.es.attrib = V16, 0x402, 2);
        check_field(|v| v.state.es.limit = V32, 0x404, 4);
        check_field(|v| v.state.es.base = V64, 0x408, 8);
        check_field(|v| v.state.cs.selector = V16, 0x410, 2);
        check_field(|v| v.state.ss.base = V64, 0x428, 8);
        check_field(|v| v.state.ds.attrib = V16, 0x432, 2);
        check_field(|v| v.state.fs.base = V64, 0x448, 8);
        check_field(|v| v.state.gs.base = V64, 0x458, 8);
        check_field(|v| v.state.gdtr.limit = V32, 0x464, 4);
        check_field(|v| v.state.gdtr.base = V64, 0x468, 8);
        check_field(|v| v.state.ldtr.selector = V16, 0x470, 2);
        check_field(|v| v.state.idtr.limit = V32, 0x484, 4);
        check_field(|v| v.state.idtr.base = V64, 0x488, 8);
        check_field(|v| v.state.tr.base = V64, 0x498, 8);
        check_field(|v| v.state.cpl = V8, 0x4CB, 1);
        check_field(|v| v.state.efer = V64, 0x4D0, 8);
        check_field(|v| v.state.perf_ctl0 = V64, 0x4E0, 8);
        check_field(|v| v.state.perf_ctr5 = V64, 0x538, 8);
        check_field(|v| v.state.cr4 = V64, 0x548, 8);
        check_field(|v| v.state.cr3 = V64, 0x550, 8);
        check_field(|v| v.state.cr0 = V64, 0x558, 8);
        check_field(|v| v.state.dr7 = V64, 0x560, 8);
        check_field(|v| v.state.dr6 = V64, 0x568, 8);
        check_field(|v| v.state.rflags = V64, 0x570, 8);
        check_field(|v| v.state.rip = V64, 0x578, 8);
        check_field(|v| v.state.instr_retired_ctr = V64, 0x5C0, 8);
        check_field(|v| v.state.perf_ctr_global_sts = V64, 0x5C8, 8);
        check_field(|v| v.state.perf_ctr_global_ctl = V32, 0x5D0, 4);
        check_field(|v| v.state.rsp = V64, 0x5D8, 8);
        check_field(|v| v.state.s_cet = V64, 0x5E0, 8);
        check_field(|v| v.state.ssp = V64, 0x5E8, 8);
        check_field(|v| v.state.isst_addr = V64, 0x5F0, 8);
        check_field(|v| v.state.rax = V64, 0x5F8, 8);
        check_field(|v| v.state.star = V64, 0x600, 8);
        check_field(|v| v.state.lstar = V64, 0x608, 8);
        check_field(|v| v.state.cstar = V64, 0x610, 8);
        check_field(|v| v.state.sfmask = V64, 0x618, 8);
        check_field(|v| v.state.kernel_gs_base = V64, 0x620, 8);
        check_field(|v| v.state.sysenter_cs = V64, 0x628, 8);
        check_field(|v| v.state.sysenter_esp = V64, 0x630, 8);
        check_field(|v| v.state.sysenter_eip = V64, 0x638, 8);
        check_field(|v| v.state.cr2 = V64, 0x640, 8);
        check_field(|v| v.state.g_pat = V64, 0x668, 8);
        check_field(|v| v.state.dbgctl = V64, 0x670, 8);
        check_field(|v| v.state.br_from = V64, 0x678, 8);
        check_field(|v| v.state.br_to = V64, 0x680, 8);
        check_field(|v| v.state.last_excp_from = V64, 0x688, 8);
        check_field(|v| v.state.last_excp_to = V64, 0x690, 8);
        check_field(|v| v.state.dbgextnctl = V64, 0x698, 8);
        check_field(|v| v.state.spec_ctrl = V64, 0x6E0, 8);
        check_field(|v| v.state.lbr_stack[0] = V64, 0xA70, 8);
        check_field(|v| v.state.lbr_stack[31] = V64, 0xB68, 8);
        check_field(|v| v.state.lbr_select = V64, 0xB70, 8);
        check_field(|v| v.state.ibs_fetch_ctl = V64, 0xB78, 8);
        check_field(|v| v.state.ic_ibs_extd_ctl = V64, 0xBC0, 8);
    }

    #[test]
    fn new_is_zero_and_bytes_round_trip() {
        let vmcb = Vmcb::new();
        assert!(vmcb.as_bytes().iter().all(|&b| b == 0));
        assert_eq!(Vmcb::default(), vmcb);

        let mut raw = [0u8; 4096];
        raw[0x070] = 0x7B; // EXITCODE = IOIO
        raw[0x5F8..0x600].copy_from_slice(&0x1234_5678_9ABC_DEF0u64.to_le_bytes());
        raw[0x123] = 0x5A; // a reserved byte survives the copy too
        let vmcb = Vmcb::from_bytes(&raw);
        assert_eq!(vmcb.control.exit_code, 0x7B);
        assert_eq!(vmcb.state.rax, 0x1234_5678_9ABC_DEF0);
        assert_eq!(vmcb.as_bytes(), &raw);
    }

    #[test]
    fn vmcb_is_page_aligned_wherever_it_lives() {
        let boxed = std::boxed::Box::new(Vmcb::new());
        assert_eq!(&*boxed as *const Vmcb as usize % 4096, 0);
    }

    #[test]
    fn segment_attrib_concatenates_descriptor_bits_55_52_and_47_40() {
        // 64-bit kernel code: access byte 0x9B, flags nibble 0xA (G, L).
        let code64: u64 = 0x00AF_9B00_0000_FFFF;
        assert_eq!(VmcbSegment::attrib_from_descriptor(code64), 0xA9B);
        // Flat 32-bit data: access 0x93, flags 0xC (G, D/B).
        let data32: u64 = 0x00CF_9300_0000_FFFF;
        let attrib = VmcbSegment::attrib_from_descriptor(data32);
        assert_eq!(attrib, 0xC93);
        assert_ne!(attrib & VmcbSegment::ATTR_P, 0);
        assert_ne!(attrib & VmcbSegment::ATTR_G, 0);
        assert_ne!(attrib & VmcbSegment::ATTR_DB, 0);
        assert_eq!(attrib & VmcbSegment::ATTR_L, 0);
        assert_eq!(VmcbSegment::attrib_from_descriptor(0), 0);
    }
}
