//! What L1 may put in vmcb12, derived from the CPUID L1 sees (after
//! [`crate::cpuid_filter::filter`]): the CR4 and EFER bits that are not
//! reserved, MAXPHYADDR, and the SVM features L0 offers. One source for
//! all of them, so that a bit CPUID shows L1 is never refused by L0's
//! checks, and a bit it hides is (KVM: `kvm_is_valid_cr4` /
//! `__cr4_reserved_bits`, `__kvm_valid_efer`, `cpuid_maxphyaddr`).

use crate::cpuid_filter::Regs;
use crate::msr::{EFER_LMA, EFER_LME, EFER_NXE, EFER_SCE, EFER_SVME};

/// EFER.FFXSR (fast FXSAVE/FXRSTOR).
const EFER_FFXSR: u64 = 1 << 14;

/// CR4 bits every x86-64 processor has: VME, PVI, TSD, DE, PSE, PAE, MCE,
/// PGE, PCE, OSFXSR, OSXMMEXCPT (bits 0-10). KVM allows them whatever
/// CPUID says.
pub const CR4_BASE: u64 = 0x7FF;
/// CR4.UMIP.
pub const CR4_UMIP: u64 = 1 << 11;
/// CR4.LA57.
pub const CR4_LA57: u64 = 1 << 12;
/// CR4.FSGSBASE.
pub const CR4_FSGSBASE: u64 = 1 << 16;
/// CR4.PCIDE.
pub const CR4_PCIDE: u64 = 1 << 17;
/// CR4.OSXSAVE.
pub const CR4_OSXSAVE: u64 = 1 << 18;
/// CR4.SMEP.
pub const CR4_SMEP: u64 = 1 << 20;
/// CR4.SMAP.
pub const CR4_SMAP: u64 = 1 << 21;
/// CR4.PKE.
pub const CR4_PKE: u64 = 1 << 22;
/// CR4.CET.
pub const CR4_CET: u64 = 1 << 23;

/// MAXPHYADDR when CPUID 0x8000_0008 is absent (SDM/APM: 36 bits).
const DEFAULT_PHYS_BITS: u8 = 36;
/// No physical address is wider than 52 bits (APM 5.3: 52-bit physical
/// addresses in long mode).
const MAX_PHYS_BITS: u8 = 52;

/// CPUID 0x8000_000A EDX bit 6: FlushByAsid (TLB_CONTROL 3 and 7).
const SVM_FLUSH_BY_ASID: u32 = 1 << 6;

/// The CPUID leaves L1 sees that decide what vmcb12 may hold. Leaves
/// above the maximum L1 sees read as zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct L1Cpuid {
    /// Leaf 1.
    pub leaf1: Regs,
    /// Leaf 7, subleaf 0.
    pub leaf7: Regs,
    /// Leaf 0x8000_0001.
    pub ext1: Regs,
    /// Leaf 0x8000_0008 (EAX\[7:0\]: MAXPHYADDR). `None` if absent.
    pub ext8: Option<Regs>,
    /// Leaf 0x8000_000A (SVM features).
    pub ext_a: Regs,
}

impl L1Cpuid {
    /// Reads the leaves through `cpuid(leaf, subleaf)`, which must answer
    /// what L1 sees (the filtered view).
    pub fn read(mut cpuid: impl FnMut(u32, u32) -> Regs) -> Self {
        let max = cpuid(0, 0)[0];
        let max_ext = cpuid(0x8000_0000, 0)[0];
        let mut basic = |leaf: u32| match max >= leaf {
            true => cpuid(leaf, 0),
            false => [0; 4],
        };
        let (leaf1, leaf7) = (basic(1), basic(7));
        let mut ext = |leaf: u32| (max_ext >= leaf).then(|| cpuid(leaf, 0));
        let ext1 = ext(0x8000_0001).unwrap_or_default();
        let ext8 = ext(0x8000_0008);
        let ext_a = ext(0x8000_000A).unwrap_or_default();
        Self {
            leaf1,
            leaf7,
            ext1,
            ext8,
            ext_a,
        }
    }

    /// CR4 bits that are not reserved for L1 (and so for the L2s it runs).
    pub fn cr4_allowed(&self) -> u64 {
        let [_, _, ecx1, _] = self.leaf1;
        let [_, ebx7, ecx7, edx7] = self.leaf7;
        let gates: [(bool, u64); 9] = [
            (ecx7 & (1 << 2) != 0, CR4_UMIP),
            (ecx7 & (1 << 16) != 0, CR4_LA57),
            (ebx7 & (1 << 0) != 0, CR4_FSGSBASE),
            (ecx1 & (1 << 17) != 0, CR4_PCIDE),
            (ecx1 & (1 << 26) != 0, CR4_OSXSAVE),
            (ebx7 & (1 << 7) != 0, CR4_SMEP),
            (ebx7 & (1 << 20) != 0, CR4_SMAP),
            (ecx7 & (1 << 3) != 0, CR4_PKE),
            // Shadow stacks or indirect-branch tracking.
            (ecx7 & (1 << 7) != 0 || edx7 & (1 << 20) != 0, CR4_CET),
        ];
        gates
            .iter()
            .filter(|(shown, _)| *shown)
            .fold(CR4_BASE, |acc, (_, bit)| acc | bit)
    }

    /// EFER bits that are not reserved for L1: SCE always (as KVM), LME and
    /// LMA with long mode, NXE with NX, SVME with SVM, FFXSR with FFXSR.
    pub fn efer_allowed(&self) -> u64 {
        let [_, _, ecx, edx] = self.ext1;
        let gates: [(bool, u64); 4] = [
            (edx & (1 << 29) != 0, EFER_LME | EFER_LMA),
            (edx & (1 << 20) != 0, EFER_NXE),
            (ecx & (1 << 2) != 0, EFER_SVME),
            (edx & (1 << 25) != 0, EFER_FFXSR),
        ];
        gates
            .iter()
            .filter(|(shown, _)| *shown)
            .fold(EFER_SCE, |acc, (_, bit)| acc | bit)
    }

    /// MAXPHYADDR: CPUID 0x8000_0008 EAX\[7:0\] (36 without the leaf),
    /// at most 52.
    pub fn max_phys_bits(&self) -> u8 {
        match self.ext8 {
            Some([eax, ..]) if eax & 0xFF != 0 => (eax as u8).min(MAX_PHYS_BITS),
            _ => DEFAULT_PHYS_BITS,
        }
    }

    /// Whether FlushByAsid is offered (TLB_CONTROL 3 and 7 are legal).
    pub fn flush_by_asid(&self) -> bool {
        self.ext_a[3] & SVM_FLUSH_BY_ASID != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpuid_filter::{filter, GuestCpuidPolicy};

    /// QEMU's qemu64 model with +svm,+smep: no XSAVE, no PCID, leaf 7
    /// only SMEP; 40 physical bits.
    fn qemu64(leaf: u32, _sub: u32) -> Regs {
        match leaf {
            0 => [0xD, 0, 0, 0],
            1 => [0x663, 0, 0x8000_2001, 0x0781_ABFD],
            7 => [0, 1 << 7, 0, 0],
            0x8000_0000 => [0x8000_000A, 0, 0, 0],
            0x8000_0001 => [0, 0, 0x5, 0x2010_0800],
            0x8000_0008 => [0x3028, 0, 0, 0],
            0x8000_000A => [1, 16, 0, 0x8 | 0x1],
            _ => [0; 4],
        }
    }

    #[test]
    fn qemu64_view() {
        let c = L1Cpuid::read(qemu64);
        assert_eq!(c.cr4_allowed(), CR4_BASE | CR4_SMEP);
        assert_eq!(
            c.efer_allowed(),
            EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE | EFER_SVME
        );
        assert_eq!(c.max_phys_bits(), 40);
        assert!(!c.flush_by_asid());
    }

    #[test]
    fn each_cr4_gate() {
        let cases: [(usize, usize, u32, u64); 10] = [
            (7, 2, 1 << 2, CR4_UMIP),
            (7, 2, 1 << 16, CR4_LA57),
            (7, 1, 1 << 0, CR4_FSGSBASE),
            (1, 2, 1 << 17, CR4_PCIDE),
            (1, 2, 1 << 26, CR4_OSXSAVE),
            (7, 1, 1 << 7, CR4_SMEP),
            (7, 1, 1 << 20, CR4_SMAP),
            (7, 2, 1 << 3, CR4_PKE),
            (7, 2, 1 << 7, CR4_CET),
            (7, 3, 1 << 20, CR4_CET),
        ];
        assert_eq!(L1Cpuid::default().cr4_allowed(), CR4_BASE);
        for (leaf, reg, bit, cr4) in cases {
            let mut c = L1Cpuid::default();
            match leaf {
                1 => c.leaf1[reg] = bit,
                _ => c.leaf7[reg] = bit,
            }
            assert_eq!(c.cr4_allowed(), CR4_BASE | cr4, "leaf {leaf} reg {reg}");
        }
        // Every gate open: still no VMXE, SMXE, PKS or anything newer.
        let c = L1Cpuid {
            leaf1: [!0; 4],
            leaf7: [!0; 4],
            ..L1Cpuid::default()
        };
        assert_eq!(c.cr4_allowed(), 0xF7_1FFF);
    }

    #[test]
    fn each_efer_gate() {
        assert_eq!(L1Cpuid::default().efer_allowed(), EFER_SCE);
        let cases: [(usize, u32, u64); 4] = [
            (3, 1 << 29, EFER_LME | EFER_LMA),
            (3, 1 << 20, EFER_NXE),
            (2, 1 << 2, EFER_SVME),
            (3, 1 << 25, EFER_FFXSR),
        ];
        for (reg, bit, efer) in cases {
            let mut c = L1Cpuid::default();
            c.ext1[reg] = bit;
            assert_eq!(c.efer_allowed(), EFER_SCE | efer, "reg {reg} bit {bit}");
        }
    }

    #[test]
    fn max_phys_bits_from_leaf_0x80000008() {
        let mut c = L1Cpuid::default();
        assert_eq!(c.max_phys_bits(), 36);
        c.ext8 = Some([0x3030, 0, 0, 0]);
        assert_eq!(c.max_phys_bits(), 48);
        c.ext8 = Some([0xFF, 0, 0, 0]);
        assert_eq!(c.max_phys_bits(), 52);
        c.ext8 = Some([0, 0, 0, 0]);
        assert_eq!(c.max_phys_bits(), 36);
    }

    #[test]
    fn leaves_above_the_maximum_read_as_absent() {
        let c = L1Cpuid::read(|leaf, _| match leaf {
            0 => [1, 0, 0, 0],
            0x8000_0000 => [0x8000_0001, 0, 0, 0],
            _ => [!0; 4],
        });
        assert_eq!(c.leaf7, [0; 4]);
        assert_eq!(c.ext8, None);
        assert_eq!(c.ext_a, [0; 4]);
        assert_eq!(c.leaf1, [!0; 4]);
    }

    #[test]
    fn reads_through_the_filter() {
        // The SVM bit L0 hides from a guest not offered SVM takes EFER.SVME
        // with it; offered, L1 sees L0's SVM leaf (no FlushByAsid).
        let host = |leaf: u32, sub: u32| qemu64(leaf, sub);
        let hidden = GuestCpuidPolicy::default();
        let c = L1Cpuid::read(|l, s| filter(l, s, host(l, s), hidden));
        assert_eq!(c.efer_allowed() & EFER_SVME, 0);
        let offered = GuestCpuidPolicy {
            svm: true,
            ..Default::default()
        };
        let c = L1Cpuid::read(|l, s| filter(l, s, host(l, s), offered));
        assert_ne!(c.efer_allowed() & EFER_SVME, 0);
        assert!(!c.flush_by_asid());
        // MAXPHYADDR as L1's CPUID shows it (the checks and the guest's
        // CPUID agree), and NX and SMEP are allowed as shown.
        assert_eq!(
            u32::from(c.max_phys_bits()),
            filter(0x8000_0008, 0, host(0x8000_0008, 0), offered)[0] & 0xFF
        );
        let ext1 = filter(0x8000_0001, 0, host(0x8000_0001, 0), offered);
        assert_eq!(c.efer_allowed() & EFER_NXE != 0, ext1[3] & (1 << 20) != 0);
        let leaf7 = filter(7, 0, host(7, 0), offered);
        assert_eq!(c.cr4_allowed() & CR4_SMEP != 0, leaf7[1] & (1 << 7) != 0);
    }
}
