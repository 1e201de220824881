//! MSR numbers the hypervisor uses, and the SVM-related bits in them
//! (APM Vol. 2 15.30 "SVM Related MSRs", 3.1.7 EFER, Appendix A).
//!
//! QEMU TCG reads IA32_TSC as 0 and ignores writes to it, and has no
//! TSC_ADJUST; VM_CR and SVM_KEY read 0 (docs/qemu-tcg.md).

use bitflags::bitflags;

/// IA32_TSC: time stamp counter.
pub const IA32_TSC: u32 = 0x0000_0010;
/// IA32_APIC_BASE.
pub const IA32_APIC_BASE: u32 = 0x0000_001B;
/// IA32_TSC_ADJUST.
pub const IA32_TSC_ADJUST: u32 = 0x0000_003B;
/// IA32_SYSENTER_CS.
pub const IA32_SYSENTER_CS: u32 = 0x0000_0174;
/// IA32_SYSENTER_ESP.
pub const IA32_SYSENTER_ESP: u32 = 0x0000_0175;
/// IA32_SYSENTER_EIP.
pub const IA32_SYSENTER_EIP: u32 = 0x0000_0176;
/// DebugCtl.
pub const IA32_DEBUGCTL: u32 = 0x0000_01D9;
/// IA32_PAT.
pub const IA32_PAT: u32 = 0x0000_0277;
/// EFER: extended feature enable register.
pub const EFER: u32 = 0xC000_0080;
/// IA32_PAT's power-on value (APM Vol. 2, 7.8.2): WB, WT, UC-, UC, twice.
pub const PAT_POWER_ON: u64 = 0x0007_0406_0007_0406;
/// STAR: SYSCALL target CS/SS and legacy EIP.
pub const STAR: u32 = 0xC000_0081;
/// LSTAR: 64-bit SYSCALL target RIP.
pub const LSTAR: u32 = 0xC000_0082;
/// CSTAR: compatibility-mode SYSCALL target RIP.
pub const CSTAR: u32 = 0xC000_0083;
/// SFMASK: RFLAGS mask for SYSCALL.
pub const SFMASK: u32 = 0xC000_0084;
/// FS.base.
pub const FS_BASE: u32 = 0xC000_0100;
/// GS.base.
pub const GS_BASE: u32 = 0xC000_0101;
/// KernelGSbase, swapped in by SWAPGS.
pub const KERNEL_GS_BASE: u32 = 0xC000_0102;
/// TSC_AUX, returned in ECX by RDTSCP.
pub const TSC_AUX: u32 = 0xC000_0103;
/// TSC_RATIO, guest TSC scaling (if CPUID Fn8000_000A_EDX\[TscRateMsr\]).
pub const TSC_RATIO: u32 = 0xC000_0104;
/// VM_CR: SVM control (APM 15.30.1); see [`VmCr`].
pub const VM_CR: u32 = 0xC001_0114;
/// IGNNE.
pub const IGNNE: u32 = 0xC001_0115;
/// SMM_CTL.
pub const SMM_CTL: u32 = 0xC001_0116;
/// VM_HSAVE_PA: physical address of the host save area, 4 KiB aligned
/// (APM 15.30.4). VMRUN does not check it was set under QEMU TCG.
pub const VM_HSAVE_PA: u32 = 0xC001_0117;
/// SVM_KEY: the key that unlocks VM_CR.LOCK (SVM-Lock).
pub const SVM_KEY: u32 = 0xC001_0118;

/// EFER.SCE (bit 0): SYSCALL/SYSRET enable.
pub const EFER_SCE: u64 = 1 << 0;
/// EFER.LME (bit 8): long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA (bit 10): long mode active.
pub const EFER_LMA: u64 = 1 << 10;
/// EFER.NXE (bit 11): no-execute enable.
pub const EFER_NXE: u64 = 1 << 11;
/// EFER.SVME (bit 12): SVM enable; VMRUN and friends #UD without it, and
/// VMRUN fails if the guest's EFER in the VMCB lacks it (APM 15.5.1).
pub const EFER_SVME: u64 = 1 << 12;

bitflags! {
    /// VM_CR MSR (0xC001_0114), APM 15.30.1.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct VmCr: u64 {
        /// Bit 0: DPD, debug port disable.
        const DPD = 1 << 0;
        /// Bit 1: R_INIT, redirect INIT to #SX (APM 15.21.8).
        const R_INIT = 1 << 1;
        /// Bit 2: DIS_A20M, disable A20 masking.
        const DIS_A20M = 1 << 2;
        /// Bit 3: LOCK, SVMDIS is read-only (until unlocked with SVM_KEY).
        const LOCK = 1 << 3;
        /// Bit 4: SVMDIS, setting EFER.SVME is refused (#GP).
        const SVMDIS = 1 << 4;

        const _ = !0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(EFER, 0xC000_0080);
        assert_eq!(VM_CR, 0xC001_0114);
        assert_eq!(VM_HSAVE_PA, 0xC001_0117);
        assert_eq!(IA32_TSC, 0x10);
        assert_eq!(IA32_TSC_ADJUST, 0x3B);
        assert_eq!(TSC_AUX, 0xC000_0103);
        assert_eq!(IA32_PAT, 0x277);
        assert_eq!(KERNEL_GS_BASE, 0xC000_0102);
    }

    #[test]
    fn bits() {
        assert_eq!(EFER_SVME, 0x1000);
        assert_eq!(EFER_LME | EFER_LMA | EFER_NXE, 0xD00);
        assert_eq!(VmCr::DPD.bits(), 1);
        assert_eq!(VmCr::R_INIT.bits(), 2);
        assert_eq!(VmCr::DIS_A20M.bits(), 4);
        assert_eq!(VmCr::LOCK.bits(), 8);
        assert_eq!(VmCr::SVMDIS.bits(), 0x10);
    }
}
