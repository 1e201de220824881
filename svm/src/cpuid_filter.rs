//! What guests see of CPUID: the host's values, minus what the hypervisor
//! does not virtualize, plus what it emulates (IA32_TSC_ADJUST) and the
//! hypervisor leaves at 0x4000_0000 (0x4000_0010: TSC frequency in kHz in
//! EAX, the de-facto VMware/KVM convention).

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
}

/// CPUID registers in the order EAX, EBX, ECX, EDX.
pub type Regs = [u32; 4];

const LEAF1_ECX_VMX: u32 = 1 << 5;
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const EXT1_ECX_SVM: u32 = 1 << 2;
/// ASIDs offered to an L1 hypervisor (CPUID 0x8000_000A EBX).
pub const NESTED_ASIDS: u32 = 64;
/// SVM features offered to an L1 hypervisor (CPUID 0x8000_000A EDX):
/// NRIPS (bit 3) only.
pub const NESTED_SVM_FEATURES: u32 = 1 << 3;
/// CPUID.(EAX=7,ECX=0):EBX[1]: IA32_TSC_ADJUST, emulated for every guest.
const LEAF7_EBX_TSC_ADJUST: u32 = 1 << 1;

/// The guest's view of CPUID `leaf`/`subleaf`, given the host's answer.
pub fn filter(leaf: u32, subleaf: u32, host: Regs, policy: GuestCpuidPolicy) -> Regs {
    let [eax, ebx, ecx, edx] = host;
    match leaf {
        // A hypervisor is present; VMX never is on AMD.
        0x1 => [eax, ebx, (ecx | LEAF1_ECX_HYPERVISOR) & !LEAF1_ECX_VMX, edx],
        0x7 if subleaf == 0 => [eax, ebx | LEAF7_EBX_TSC_ADJUST, ecx, edx],
        0x8000_0001 if !policy.svm => [eax, ebx, ecx & !EXT1_ECX_SVM, edx],
        0x8000_000A if !policy.svm => [0; 4],
        // What L1 gets: revision 1, its own ASIDs, and only the features
        // the hypervisor emulates: NRIP save (it fills next_rip itself).
        // No nested paging, TSC scaling, decode assists, VGIF, clean bits.
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

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: Regs = [0x1111_1111, 0x2222_2222, 0xFFFF_FFFF, 0x4444_4444];

    #[test]
    fn leaf1_sets_hypervisor_and_clears_vmx() {
        let r = filter(1, 0, [1, 2, 0, 4], GuestCpuidPolicy::default());
        assert_eq!(r, [1, 2, 1 << 31, 4]);
        let r = filter(1, 0, HOST, GuestCpuidPolicy::default());
        assert_eq!(r[2], 0xFFFF_FFDF);
    }

    #[test]
    fn svm_hidden_unless_offered() {
        let hidden = GuestCpuidPolicy {
            svm: false,
            tsc_khz: 0,
        };
        assert_eq!(filter(0x8000_0001, 0, HOST, hidden)[2], 0xFFFF_FFFB);
        assert_eq!(filter(0x8000_000A, 0, HOST, hidden), [0; 4]);
        let offered = GuestCpuidPolicy {
            svm: true,
            tsc_khz: 0,
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
        assert_eq!(filter(0, 0, HOST, GuestCpuidPolicy::default()), HOST);
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
            svm: false,
            tsc_khz: 2_345_678,
        };
        assert_eq!(filter(0x4000_0010, 0, HOST, policy), [2_345_678, 0, 0, 0]);
        assert!(filter(0x4000_0000, 0, HOST, policy)[0] >= 0x4000_0010);
        assert_eq!(filter(0x4000_0011, 0, HOST, policy), [0; 4]);
    }
}
