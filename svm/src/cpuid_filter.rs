//! What guests see of CPUID: an AMD CPU ("AuthenticAMD", an AMD64
//! family) with the host's features, minus what the hypervisor does not
//! virtualize, plus what it emulates (IA32_TSC_ADJUST, SVM with NRIP save
//! for an L1 hypervisor, the x2APIC once the local APIC model has it), and
//! the hypervisor leaves at 0x4000_0000 (0x4000_0010: TSC frequency in kHz
//! in EAX, the de-facto VMware/KVM convention). SMEP, NX and MAXPHYADDR
//! are the host's: the CPU enforces them in the guest, and
//! [`crate::nested::l1_cpu`] reads this same view for the VMRUN checks.

/// The signature in leaf 0x4000_0000 EBX, ECX, EDX.
pub const HYPERVISOR_SIGNATURE: &[u8; 12] = b"SVMRustHyper";
/// Highest hypervisor leaf answered.
pub const HYPERVISOR_MAX_LEAF: u32 = 0x4000_0010;
/// The timing leaf: EAX = TSC kHz, EBX = local APIC bus kHz (0: unknown).
pub const TIMING_LEAF: u32 = 0x4000_0010;

/// What the hypervisor offers a guest, where that differs from the host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestCpuidPolicy {
    /// Whether SVM is offered (nested virtualization); hidden when false.
    pub svm: bool,
    /// TSC frequency reported in [`TIMING_LEAF`] (0: unknown).
    pub tsc_khz: u32,
    /// Whether the x2APIC (MSRs 0x800–0x8FF) is emulated: CPUID.1:ECX\[21\].
    pub x2apic: bool,
    /// The vCPU's initial APIC ID (CPUID.1:EBX\[31:24\]).
    pub apic_id: u8,
    /// Instruction-set features this guest's CPUID hides although the
    /// host has them (the CPU model the user asked for).
    pub hidden: HiddenFeatures,
}

bitflags::bitflags! {
    /// Features a guest's CPU model may leave out (`guest_cpu=-rdtscp,...`
    /// on the kernel command line, QEMU's `-cpu` names). Hidden from CPUID,
    /// and their instructions are #UD in that guest, from L1 and from L2,
    /// whatever L1 intercepts (KVM: an L1 cannot intercept an instruction
    /// its CPUID does not offer; kvm-unit-tests
    /// svm_unsupported_instruction_intercept_test).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct HiddenFeatures: u8 {
        /// RDTSCP (CPUID 0x8000_0001 EDX\[27\]).
        const RDTSCP = 1 << 0;
        /// SKINIT (CPUID 0x8000_0001 ECX\[12\]).
        const SKINIT = 1 << 1;
        /// XSAVE and XSETBV (CPUID 1 ECX\[26\], OSXSAVE ECX\[27\], leaf 0xD).
        const XSAVE = 1 << 2;
        /// INVPCID (CPUID 7 EBX\[10\]).
        const INVPCID = 1 << 3;
        /// RDPRU (CPUID 0x8000_0008 EBX\[4\]).
        const RDPRU = 1 << 4;
    }
}

impl HiddenFeatures {
    /// The feature QEMU's `-cpu` option calls `name`.
    pub fn from_qemu_name(name: &str) -> Option<Self> {
        Some(match name {
            "rdtscp" => Self::RDTSCP,
            "skinit" => Self::SKINIT,
            "xsave" => Self::XSAVE,
            "invpcid" => Self::INVPCID,
            "rdpru" => Self::RDPRU,
            _ => return None,
        })
    }

    /// The feature whose instruction caused exit `code`, if it is one a
    /// CPU model can leave out.
    pub fn of_exit(code: crate::ExitCode) -> Option<Self> {
        use crate::ExitCode as C;
        Some(match code {
            C::Rdtscp => Self::RDTSCP,
            C::Skinit => Self::SKINIT,
            C::Xsetbv => Self::XSAVE,
            C::Invpcid => Self::INVPCID,
            C::Rdpru => Self::RDPRU,
            _ => return None,
        })
    }
}

/// Parses `guest_cpu=`'s value, QEMU style (`-rdtscp,-xsave`, a leading
/// `-` optional): the features to hide, and the first name not known.
pub fn parse_hidden(list: &str) -> (HiddenFeatures, Option<&str>) {
    let mut hidden = HiddenFeatures::empty();
    let mut unknown = None;
    for word in list.split(',').filter(|w| !w.is_empty()) {
        match HiddenFeatures::from_qemu_name(word.strip_prefix('-').unwrap_or(word)) {
            Some(f) => hidden |= f,
            None => unknown = unknown.or(Some(word)),
        }
    }
    (hidden, unknown)
}

/// Clears the CPUID bits of the `hidden` features from `regs`, the answer
/// for `leaf`/`subleaf`.
fn hide(leaf: u32, subleaf: u32, regs: Regs, hidden: HiddenFeatures) -> Regs {
    let [eax, ebx, ecx, edx] = regs;
    let off = |f: HiddenFeatures, bits: u32| if hidden.contains(f) { bits } else { 0 };
    match leaf {
        0x1 => [eax, ebx, ecx & !off(HiddenFeatures::XSAVE, 3 << 26), edx],
        0x7 if subleaf == 0 => [eax, ebx & !off(HiddenFeatures::INVPCID, 1 << 10), ecx, edx],
        0xD if hidden.contains(HiddenFeatures::XSAVE) => [0; 4],
        0x8000_0001 => [
            eax,
            ebx,
            ecx & !off(HiddenFeatures::SKINIT, 1 << 12),
            edx & !off(HiddenFeatures::RDTSCP, 1 << 27),
        ],
        0x8000_0008 => [eax, ebx & !off(HiddenFeatures::RDPRU, 1 << 4), ecx, edx],
        _ => regs,
    }
}

/// CPUID registers in the order EAX, EBX, ECX, EDX.
pub type Regs = [u32; 4];

/// The vendor string in leaves 0 and 0x8000_0000 (EBX, EDX, ECX).
pub const VENDOR: &[u8; 12] = b"AuthenticAMD";
/// Lowest highest-extended-leaf shown to an L1 hypervisor: it finds its
/// SVM features in 0x8000_000A (kvm-unit-tests reads none without it).
pub const MIN_MAX_EXT_LEAF_SVM: u32 = 0x8000_000A;
const LEAF1_ECX_VMX: u32 = 1 << 5;
const LEAF1_ECX_X2APIC: u32 = 1 << 21;
const LEAF1_EDX_APIC: u32 = 1 << 9;
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const EXT1_ECX_SVM: u32 = 1 << 2;
/// ASIDs offered to an L1 hypervisor (CPUID 0x8000_000A EBX).
pub const NESTED_ASIDS: u32 = 64;
/// SVM features offered to an L1 hypervisor (CPUID 0x8000_000A EDX):
/// nested paging (bit 0: shadow nested tables, hv's nested::npt) and
/// NRIPS (bit 3).
pub const NESTED_SVM_FEATURES: u32 = NESTED_NP | (1 << 3);
/// CPUID 0x8000_000A EDX\[0\]: nested paging.
pub const NESTED_NP: u32 = 1 << 0;
/// CPUID.(EAX=7,ECX=0):EBX[1]: IA32_TSC_ADJUST, emulated for every guest.
const LEAF7_EBX_TSC_ADJUST: u32 = 1 << 1;

/// The vendor string as CPUID's EBX, EDX, ECX.
fn vendor_words() -> (u32, u32, u32) {
    let v = VENDOR;
    let w = |i: usize| u32::from_le_bytes([v[i], v[i + 1], v[i + 2], v[i + 3]]);
    (w(0), w(4), w(8))
}

/// Leaf 1 EAX with an AMD64 family: a host family below 0xF (not an
/// AMD64 family numbering) becomes family 0x17 (base 0xF + extended 8);
/// model and stepping stay.
const fn amd_family(eax: u32) -> u32 {
    if (eax >> 8) & 0xF == 0xF {
        eax
    } else {
        (eax & !(0xF << 8) & !(0xFF << 20)) | 0xF << 8 | 0x08 << 20
    }
}

/// The guest's view of CPUID `leaf`/`subleaf`, given the host's answer.
pub fn filter(leaf: u32, subleaf: u32, host: Regs, policy: GuestCpuidPolicy) -> Regs {
    hide(
        leaf,
        subleaf,
        shown(leaf, subleaf, host, policy),
        policy.hidden,
    )
}

/// [`filter`] before the CPU model's hidden features are taken out.
fn shown(leaf: u32, subleaf: u32, host: Regs, policy: GuestCpuidPolicy) -> Regs {
    let [eax, ebx, ecx, edx] = host;
    let (v_ebx, v_edx, v_ecx) = vendor_words();
    match leaf {
        0x0 => [eax, v_ebx, v_ecx, v_edx],
        // A hypervisor is present; VMX never is on AMD. The local APIC is
        // there, the x2APIC only if emulated; the initial APIC ID is the
        // vCPU's.
        0x1 => {
            let x2apic = match policy.x2apic {
                true => LEAF1_ECX_X2APIC,
                false => 0,
            };
            let ecx = (ecx | LEAF1_ECX_HYPERVISOR) & !LEAF1_ECX_VMX & !LEAF1_ECX_X2APIC | x2apic;
            let ebx = (ebx & 0x00FF_FFFF) | u32::from(policy.apic_id) << 24;
            [amd_family(eax), ebx, ecx, edx | LEAF1_EDX_APIC]
        }
        0x7 if subleaf == 0 => [eax, ebx | LEAF7_EBX_TSC_ADJUST, ecx, edx],
        0x8000_0000 if policy.svm => [eax.max(MIN_MAX_EXT_LEAF_SVM), v_ebx, v_ecx, v_edx],
        0x8000_0000 => [eax, v_ebx, v_ecx, v_edx],
        0x8000_0001 if !policy.svm => [eax, ebx, ecx & !EXT1_ECX_SVM, edx],
        0x8000_0001 => [eax, ebx, ecx | EXT1_ECX_SVM, edx],
        0x8000_000A if !policy.svm => [0; 4],
        // What L1 gets: revision 1, its own ASIDs, and only the features
        // the hypervisor emulates: nested paging (shadowed), NRIP save (it
        // fills next_rip itself). No TSC scaling, decode assists, VGIF, clean bits.
        0x8000_000A => [1, NESTED_ASIDS, 0, NESTED_SVM_FEATURES],
        0x4000_0000 => {
            let s = HYPERVISOR_SIGNATURE;
            let word = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
            [HYPERVISOR_MAX_LEAF, word(0), word(4), word(8)]
        }
        TIMING_LEAF => [policy.tsc_khz, 0, 0, 0],
        // Other hypervisor leaves: none defined. (The host's own values
        // there would describe a hypervisor below us, if any.)
        0x4000_0001..=0x4000_00FF => [0; 4],
        _ => host,
    }
}

/// CPUID.1:ECX\[27\] OSXSAVE.
const LEAF1_ECX_OSXSAVE: u32 = 1 << 27;
/// CPUID.1:ECX\[26\] XSAVE.
const LEAF1_ECX_XSAVE: u32 = 1 << 26;
/// CR4.OSXSAVE.
const CR4_OSXSAVE: u64 = 1 << 18;

/// CPUID.1:ECX.OSXSAVE follows the CR4 of the guest executing CPUID (the
/// level that runs it, L1 or L2), not L0's, where XSAVE is shown (APM
/// Vol. 3, CPUID Fn0000_0001_ECX; kvm-unit-tests svm_cr4_osxsave_test).
pub fn osxsave_from_cr4(leaf: u32, regs: Regs, guest_cr4: u64) -> Regs {
    let [eax, ebx, ecx, edx] = regs;
    if leaf != 1 {
        return regs;
    }
    let on = ecx & LEAF1_ECX_XSAVE != 0 && guest_cr4 & CR4_OSXSAVE != 0;
    let ecx = (ecx & !LEAF1_ECX_OSXSAVE) | if on { LEAF1_ECX_OSXSAVE } else { 0 };
    [eax, ebx, ecx, edx]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn osxsave_is_the_guests_cr4() {
        let xsave = [0, 0, LEAF1_ECX_XSAVE, 0];
        let both = [0, 0, LEAF1_ECX_XSAVE | LEAF1_ECX_OSXSAVE, 0];
        assert_eq!(osxsave_from_cr4(1, xsave, CR4_OSXSAVE), both);
        assert_eq!(osxsave_from_cr4(1, both, 0), xsave, "L0's own bit hidden");
        assert_eq!(
            osxsave_from_cr4(1, [0, 0, LEAF1_ECX_OSXSAVE, 0], CR4_OSXSAVE),
            [0; 4],
            "no XSAVE, no OSXSAVE"
        );
        assert_eq!(osxsave_from_cr4(7, both, 0), both, "other leaves");
    }

    const HOST: Regs = [0x1111_1111, 0x2222_2222, 0xFFFF_FFFF, 0x4444_4444];

    #[test]
    fn hidden_features_leave_cpuid() {
        let all = [u32::MAX; 4];
        let p = GuestCpuidPolicy {
            svm: true,
            hidden: HiddenFeatures::all(),
            ..Default::default()
        };
        assert_eq!(filter(1, 0, all, p)[2] & (3 << 26), 0, "XSAVE, OSXSAVE");
        assert_eq!(filter(7, 0, all, p)[1] & (1 << 10), 0, "INVPCID");
        assert_eq!(filter(7, 1, all, p), all, "leaf 7 subleaf 1 untouched");
        assert_eq!(filter(0xD, 1, all, p), [0; 4], "no XSAVE leaf");
        let ext1 = filter(0x8000_0001, 0, all, p);
        assert_eq!((ext1[2] & (1 << 12), ext1[3] & (1 << 27)), (0, 0));
        assert_ne!(ext1[2] & (1 << 2), 0, "SVM stays");
        assert_eq!(filter(0x8000_0008, 0, all, p)[1] & (1 << 4), 0, "RDPRU");
        // Only what is hidden goes: RDTSCP alone.
        let p = GuestCpuidPolicy {
            hidden: HiddenFeatures::RDTSCP,
            ..p
        };
        assert_eq!(filter(0x8000_0001, 0, all, p)[3], !(1 << 27));
        assert_eq!(filter(1, 0, all, p)[2] & (3 << 26), 3 << 26);
        assert_eq!(filter(0xD, 0, all, p), all);
        // Nothing hidden: the host's bits.
        let none = GuestCpuidPolicy::default();
        assert_eq!(filter(0x8000_0001, 0, all, none)[3], u32::MAX);
    }

    #[test]
    fn hidden_feature_names_and_exits() {
        let (h, unknown) = parse_hidden("-rdtscp,-xsave,-invpcid,-skinit");
        assert_eq!(
            h,
            HiddenFeatures::RDTSCP
                | HiddenFeatures::XSAVE
                | HiddenFeatures::INVPCID
                | HiddenFeatures::SKINIT
        );
        assert_eq!(unknown, None);
        assert_eq!(
            parse_hidden("rdpru,,-npt,-x"),
            (HiddenFeatures::RDPRU, Some("-npt"))
        );
        assert_eq!(parse_hidden(""), (HiddenFeatures::empty(), None));
        use crate::ExitCode as C;
        for (code, f) in [
            (C::Rdtscp, HiddenFeatures::RDTSCP),
            (C::Skinit, HiddenFeatures::SKINIT),
            (C::Xsetbv, HiddenFeatures::XSAVE),
            (C::Invpcid, HiddenFeatures::INVPCID),
            (C::Rdpru, HiddenFeatures::RDPRU),
        ] {
            assert_eq!(HiddenFeatures::of_exit(code), Some(f), "{code:?}");
        }
        assert_eq!(HiddenFeatures::of_exit(C::Rdtsc), None);
        assert_eq!(HiddenFeatures::of_exit(C::Cpuid), None);
    }

    #[test]
    fn leaf1_sets_hypervisor_and_clears_vmx() {
        let r = filter(1, 0, [0xF01, 2, 0, 4], GuestCpuidPolicy::default());
        assert_eq!(r, [0xF01, 2, 1 << 31, 4 | 1 << 9]);
        let r = filter(1, 0, HOST, GuestCpuidPolicy::default());
        // VMX (5) and x2APIC (21) clear: neither is emulated.
        assert_eq!(r[2], 0xFFDF_FFDF);
    }

    #[test]
    fn an_amd_cpu() {
        let p = GuestCpuidPolicy::default();
        let intel = [0xD, 0x756e_6547, 0x6c65_746e, 0x4965_6e69];
        let r = filter(0, 0, intel, p);
        let mut v = [0u8; 12];
        v[0..4].copy_from_slice(&r[1].to_le_bytes());
        v[4..8].copy_from_slice(&r[3].to_le_bytes());
        v[8..12].copy_from_slice(&r[2].to_le_bytes());
        assert_eq!(&v, b"AuthenticAMD");
        assert_eq!(r[0], 0xD);
        assert_eq!(filter(0x8000_0000, 0, intel, p)[1..], r[1..]);
        // Family 6 model 0x55 stepping 4 becomes family 0x17, same model.
        let eax = filter(1, 0, [0x0005_0654, 0, 0, 0], p)[0];
        assert_eq!(((eax >> 8) & 0xF) + ((eax >> 20) & 0xFF), 0x17);
        assert_eq!(eax & 0xF00FF, 0x50054);
        // An AMD family stays.
        assert_eq!(filter(1, 0, [0x00A0_0F11, 0, 0, 0], p)[0], 0x00A0_0F11);
    }

    #[test]
    fn x2apic_and_apic_id() {
        let p = GuestCpuidPolicy {
            x2apic: true,
            apic_id: 0,
            ..Default::default()
        };
        let r = filter(1, 0, [0xF00, 0x0102_0800, 0, 0], p);
        assert_eq!(r[1], 0x0002_0800, "initial APIC ID 0 for vCPU 0");
        assert_ne!(r[2] & 1 << 21, 0);
        assert_ne!(r[3] & 1 << 9, 0);
        let p = GuestCpuidPolicy { apic_id: 3, ..p };
        assert_eq!(filter(1, 0, [0xF00, 0x0102_0800, 0, 0], p)[1], 0x0302_0800);
    }

    #[test]
    fn max_extended_leaf_reaches_the_svm_leaf() {
        let svm = GuestCpuidPolicy {
            svm: true,
            ..Default::default()
        };
        assert_eq!(
            filter(0x8000_0000, 0, [0x8000_0008, 0, 0, 0], svm)[0],
            0x8000_000A
        );
        assert_eq!(
            filter(0x8000_0000, 0, [0x8000_0021, 0, 0, 0], svm)[0],
            0x8000_0021
        );
        let plain = GuestCpuidPolicy::default();
        assert_eq!(
            filter(0x8000_0000, 0, [0x8000_0008, 0, 0, 0], plain)[0],
            0x8000_0008
        );
        // SVM shown when offered even if the host hides it from us.
        assert_eq!(filter(0x8000_0001, 0, [0; 4], svm)[2], 1 << 2);
    }

    #[test]
    fn nx_smep_and_maxphyaddr_are_the_hosts() {
        let p = GuestCpuidPolicy::default();
        assert_eq!(filter(0x8000_0001, 0, [0, 0, 0, 1 << 20], p)[3], 1 << 20);
        assert_eq!(filter(7, 0, [0, 1 << 7, 0, 0], p)[1], 1 << 7 | 1 << 1);
        assert_eq!(filter(0x8000_0008, 0, [0x3028, 0, 0, 0], p)[0], 0x3028);
    }

    #[test]
    fn svm_hidden_unless_offered() {
        let hidden = GuestCpuidPolicy::default();
        assert_eq!(filter(0x8000_0001, 0, HOST, hidden)[2], 0xFFFF_FFFB);
        assert_eq!(filter(0x8000_000A, 0, HOST, hidden), [0; 4]);
        let offered = GuestCpuidPolicy {
            svm: true,
            ..Default::default()
        };
        assert_eq!(filter(0x8000_0001, 0, HOST, offered), HOST);
    }

    #[test]
    fn hypervisor_leaves() {
        let r = filter(0x4000_0000, 0, HOST, GuestCpuidPolicy::default());
        assert_eq!(r[0], HYPERVISOR_MAX_LEAF);
        let mut sig = [0u8; 12];
        sig[0..4].copy_from_slice(&r[1].to_le_bytes());
        sig[4..8].copy_from_slice(&r[2].to_le_bytes());
        sig[8..12].copy_from_slice(&r[3].to_le_bytes());
        assert_eq!(&sig, b"SVMRustHyper");
        assert_eq!(
            filter(0x4000_0001, 0, HOST, GuestCpuidPolicy::default()),
            [0; 4]
        );
    }

    #[test]
    fn other_leaves_pass_through() {
        assert_eq!(filter(7, 1, HOST, GuestCpuidPolicy::default()), HOST);
        assert_eq!(
            filter(0x8000_0008, 0, HOST, GuestCpuidPolicy::default()),
            HOST
        );
    }

    #[test]
    fn tsc_adjust_is_advertised() {
        let r = filter(7, 0, [0, 0, 3, 4], GuestCpuidPolicy::default());
        assert_eq!(r, [0, 0b10, 3, 4]);
    }

    #[test]
    fn timing_leaf_reports_the_tsc_frequency() {
        let policy = GuestCpuidPolicy {
            tsc_khz: 2_345_678,
            ..Default::default()
        };
        assert_eq!(filter(0x4000_0010, 0, HOST, policy), [2_345_678, 0, 0, 0]);
        assert!(filter(0x4000_0000, 0, HOST, policy)[0] >= 0x4000_0010);
        assert_eq!(filter(0x4000_0011, 0, HOST, policy), [0; 4]);
    }
}
