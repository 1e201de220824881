//! The six intercept vectors at the start of the VMCB control area
//! (APM Table B-1, offsets 0x000-0x017), as bitflags.
//!
//! Store them with `.bits()` into the matching `u32` field of
//! [`crate::ControlArea`]. Changing any of them requires clearing clean
//! bit 0 ([`crate::CleanBits::INTERCEPTS`]).

use bitflags::bitflags;

bitflags! {
    /// 0x000: intercept reads (bits 15:0) and writes (bits 31:16) of CR0-15.
    ///
    /// QEMU 10.0 TCG mishandles the CR2/CR3/CR4/CR8 read intercepts (7.2
    /// is right; docs/qemu-tcg.md): do not rely on them there.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct CrIntercepts: u32 {
        /// Read of CR0 (also SMSW).
        const CR0_READ = 1 << 0;
        /// Read of CR1.
        const CR1_READ = 1 << 1;
        /// Read of CR2.
        const CR2_READ = 1 << 2;
        /// Read of CR3.
        const CR3_READ = 1 << 3;
        /// Read of CR4.
        const CR4_READ = 1 << 4;
        /// Read of CR5.
        const CR5_READ = 1 << 5;
        /// Read of CR6.
        const CR6_READ = 1 << 6;
        /// Read of CR7.
        const CR7_READ = 1 << 7;
        /// Read of CR8 (TPR).
        const CR8_READ = 1 << 8;
        /// Read of CR9.
        const CR9_READ = 1 << 9;
        /// Read of CR10.
        const CR10_READ = 1 << 10;
        /// Read of CR11.
        const CR11_READ = 1 << 11;
        /// Read of CR12.
        const CR12_READ = 1 << 12;
        /// Read of CR13.
        const CR13_READ = 1 << 13;
        /// Read of CR14.
        const CR14_READ = 1 << 14;
        /// Read of CR15.
        const CR15_READ = 1 << 15;
        /// Write of CR0 (also LMSW, CLTS).
        const CR0_WRITE = 1 << 16;
        /// Write of CR1.
        const CR1_WRITE = 1 << 17;
        /// Write of CR2.
        const CR2_WRITE = 1 << 18;
        /// Write of CR3.
        const CR3_WRITE = 1 << 19;
        /// Write of CR4.
        const CR4_WRITE = 1 << 20;
        /// Write of CR5.
        const CR5_WRITE = 1 << 21;
        /// Write of CR6.
        const CR6_WRITE = 1 << 22;
        /// Write of CR7.
        const CR7_WRITE = 1 << 23;
        /// Write of CR8 (TPR).
        const CR8_WRITE = 1 << 24;
        /// Write of CR9.
        const CR9_WRITE = 1 << 25;
        /// Write of CR10.
        const CR10_WRITE = 1 << 26;
        /// Write of CR11.
        const CR11_WRITE = 1 << 27;
        /// Write of CR12.
        const CR12_WRITE = 1 << 28;
        /// Write of CR13.
        const CR13_WRITE = 1 << 29;
        /// Write of CR14.
        const CR14_WRITE = 1 << 30;
        /// Write of CR15.
        const CR15_WRITE = 1 << 31;
    }
}

impl CrIntercepts {
    /// The read intercept of CR`n`. Panics if `n > 15`.
    pub const fn read(n: u8) -> Self {
        assert!(n < 16, "control registers are CR0-CR15");
        Self::from_bits_retain(1 << n)
    }

    /// The write intercept of CR`n`. Panics if `n > 15`.
    pub const fn write(n: u8) -> Self {
        assert!(n < 16, "control registers are CR0-CR15");
        Self::from_bits_retain(1 << (16 + n))
    }
}

bitflags! {
    /// 0x004: intercept reads (bits 15:0) and writes (bits 31:16) of DR0-15.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct DrIntercepts: u32 {
        /// Read of DR0.
        const DR0_READ = 1 << 0;
        /// Read of DR1.
        const DR1_READ = 1 << 1;
        /// Read of DR2.
        const DR2_READ = 1 << 2;
        /// Read of DR3.
        const DR3_READ = 1 << 3;
        /// Read of DR4.
        const DR4_READ = 1 << 4;
        /// Read of DR5.
        const DR5_READ = 1 << 5;
        /// Read of DR6.
        const DR6_READ = 1 << 6;
        /// Read of DR7.
        const DR7_READ = 1 << 7;
        /// Read of DR8.
        const DR8_READ = 1 << 8;
        /// Read of DR9.
        const DR9_READ = 1 << 9;
        /// Read of DR10.
        const DR10_READ = 1 << 10;
        /// Read of DR11.
        const DR11_READ = 1 << 11;
        /// Read of DR12.
        const DR12_READ = 1 << 12;
        /// Read of DR13.
        const DR13_READ = 1 << 13;
        /// Read of DR14.
        const DR14_READ = 1 << 14;
        /// Read of DR15.
        const DR15_READ = 1 << 15;
        /// Write of DR0.
        const DR0_WRITE = 1 << 16;
        /// Write of DR1.
        const DR1_WRITE = 1 << 17;
        /// Write of DR2.
        const DR2_WRITE = 1 << 18;
        /// Write of DR3.
        const DR3_WRITE = 1 << 19;
        /// Write of DR4.
        const DR4_WRITE = 1 << 20;
        /// Write of DR5.
        const DR5_WRITE = 1 << 21;
        /// Write of DR6.
        const DR6_WRITE = 1 << 22;
        /// Write of DR7.
        const DR7_WRITE = 1 << 23;
        /// Write of DR8.
        const DR8_WRITE = 1 << 24;
        /// Write of DR9.
        const DR9_WRITE = 1 << 25;
        /// Write of DR10.
        const DR10_WRITE = 1 << 26;
        /// Write of DR11.
        const DR11_WRITE = 1 << 27;
        /// Write of DR12.
        const DR12_WRITE = 1 << 28;
        /// Write of DR13.
        const DR13_WRITE = 1 << 29;
        /// Write of DR14.
        const DR14_WRITE = 1 << 30;
        /// Write of DR15.
        const DR15_WRITE = 1 << 31;
    }
}

impl DrIntercepts {
    /// The read intercept of DR`n`. Panics if `n > 15`.
    pub const fn read(n: u8) -> Self {
        assert!(n < 16, "debug registers are DR0-DR15");
        Self::from_bits_retain(1 << n)
    }

    /// The write intercept of DR`n`. Panics if `n > 15`.
    pub const fn write(n: u8) -> Self {
        assert!(n < 16, "debug registers are DR0-DR15");
        Self::from_bits_retain(1 << (16 + n))
    }
}

bitflags! {
    /// 0x008: intercept exception vectors 0-31, bit n for vector n
    /// (APM 15.12). INTn and external interrupts never check these, even
    /// for vectors below 32.
    ///
    /// Only the architecturally defined exceptions are named; bits 2 (NMI:
    /// "not implemented, use the NMI intercept", APM 15.12.3) and 9
    /// (APM 15.12.10) have undefined effect and should stay clear.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct ExceptionIntercepts: u32 {
        /// #DE, vector 0.
        const DE = 1 << 0;
        /// #DB, vector 1 (not raised by ICEBP: use its own intercept).
        const DB = 1 << 1;
        /// #BP, vector 3 (INT3).
        const BP = 1 << 3;
        /// #OF, vector 4 (INTO).
        const OF = 1 << 4;
        /// #BR, vector 5.
        const BR = 1 << 5;
        /// #UD, vector 6.
        const UD = 1 << 6;
        /// #NM, vector 7.
        const NM = 1 << 7;
        /// #DF, vector 8.
        const DF = 1 << 8;
        /// #TS, vector 10.
        const TS = 1 << 10;
        /// #NP, vector 11.
        const NP = 1 << 11;
        /// #SS, vector 12.
        const SS = 1 << 12;
        /// #GP, vector 13.
        const GP = 1 << 13;
        /// #PF, vector 14 (tested before CR2 is written).
        const PF = 1 << 14;
        /// #MF, vector 16.
        const MF = 1 << 16;
        /// #AC, vector 17.
        const AC = 1 << 17;
        /// #MC, vector 18.
        const MC = 1 << 18;
        /// #XF, vector 19.
        const XF = 1 << 19;
        /// #CP, vector 21.
        const CP = 1 << 21;
        /// #HV, vector 28.
        const HV = 1 << 28;
        /// #VC, vector 29.
        const VC = 1 << 29;
        /// #SX, vector 30.
        const SX = 1 << 30;

        // The remaining bits are still "intercept vector n".
        const _ = !0;
    }
}

impl ExceptionIntercepts {
    /// The intercept bit of exception vector `n`. Panics if `n > 31`.
    pub const fn vector(n: u8) -> Self {
        assert!(n < 32, "exception vectors are 0-31");
        Self::from_bits_retain(1 << n)
    }
}

bitflags! {
    /// 0x00C: intercept vector 3.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct InterceptMisc1: u32 {
        /// Physical maskable interrupt (INTR).
        const INTR = 1 << 0;
        /// NMI.
        const NMI = 1 << 1;
        /// SMI.
        const SMI = 1 << 2;
        /// INIT.
        const INIT = 1 << 3;
        /// Virtual maskable interrupt (VINTR), just before the guest takes it.
        const VINTR = 1 << 4;
        /// CR0 writes that change bits other than CR0.TS or CR0.MP.
        const CR0_SEL_WRITE = 1 << 5;
        /// Reads of IDTR (SIDT).
        const IDTR_READ = 1 << 6;
        /// Reads of GDTR (SGDT).
        const GDTR_READ = 1 << 7;
        /// Reads of LDTR (SLDT).
        const LDTR_READ = 1 << 8;
        /// Reads of TR (STR).
        const TR_READ = 1 << 9;
        /// Writes of IDTR (LIDT).
        const IDTR_WRITE = 1 << 10;
        /// Writes of GDTR (LGDT).
        const GDTR_WRITE = 1 << 11;
        /// Writes of LDTR (LLDT).
        const LDTR_WRITE = 1 << 12;
        /// Writes of TR (LTR).
        const TR_WRITE = 1 << 13;
        /// RDTSC (QEMU TCG also routes RDTSCP here).
        const RDTSC = 1 << 14;
        /// RDPMC.
        const RDPMC = 1 << 15;
        /// PUSHF.
        const PUSHF = 1 << 16;
        /// POPF.
        const POPF = 1 << 17;
        /// CPUID.
        const CPUID = 1 << 18;
        /// RSM.
        const RSM = 1 << 19;
        /// IRET.
        const IRET = 1 << 20;
        /// INTn (QEMU TCG also routes INT3/INTO here).
        const INTN = 1 << 21;
        /// INVD.
        const INVD = 1 << 22;
        /// PAUSE (subject to the pause filter).
        const PAUSE = 1 << 23;
        /// HLT.
        const HLT = 1 << 24;
        /// INVLPG.
        const INVLPG = 1 << 25;
        /// INVLPGA.
        const INVLPGA = 1 << 26;
        /// IOIO_PROT: IN/OUT to ports set in the I/O permission map.
        const IOIO_PROT = 1 << 27;
        /// MSR_PROT: RDMSR/WRMSR of MSRs set in the MSR permission map.
        const MSR_PROT = 1 << 28;
        /// Task switches.
        const TASK_SWITCH = 1 << 29;
        /// FERR_FREEZE: processor "freezing" during legacy FERR handling.
        const FERR_FREEZE = 1 << 30;
        /// Shutdown events (e.g. triple fault).
        const SHUTDOWN = 1 << 31;
    }
}

bitflags! {
    /// 0x010: intercept vector 4.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct InterceptMisc2: u32 {
        /// VMRUN. VMRUN fails with VMEXIT_INVALID unless this is set
        /// (APM 15.5.1 consistency checks).
        const VMRUN = 1 << 0;
        /// VMMCALL (#UD in the guest when not intercepted).
        const VMMCALL = 1 << 1;
        /// VMLOAD.
        const VMLOAD = 1 << 2;
        /// VMSAVE.
        const VMSAVE = 1 << 3;
        /// STGI.
        const STGI = 1 << 4;
        /// CLGI.
        const CLGI = 1 << 5;
        /// SKINIT.
        const SKINIT = 1 << 6;
        /// RDTSCP.
        const RDTSCP = 1 << 7;
        /// ICEBP (INT1).
        const ICEBP = 1 << 8;
        /// WBINVD and WBNOINVD.
        const WBINVD = 1 << 9;
        /// MONITOR / MONITORX.
        const MONITOR = 1 << 10;
        /// MWAIT / MWAITX, unconditionally.
        const MWAIT = 1 << 11;
        /// MWAIT / MWAITX if the monitor hardware is armed.
        const MWAIT_CONDITIONAL = 1 << 12;
        /// XSETBV.
        const XSETBV = 1 << 13;
        /// RDPRU.
        const RDPRU = 1 << 14;
        /// Writes of EFER, trapped after the instruction completes.
        const EFER_WRITE_TRAP = 1 << 15;
        /// Writes of CR0, trapped after the instruction completes.
        const CR0_WRITE_TRAP = 1 << 16;
        /// Writes of CR1 (trap).
        const CR1_WRITE_TRAP = 1 << 17;
        /// Writes of CR2 (trap).
        const CR2_WRITE_TRAP = 1 << 18;
        /// Writes of CR3 (trap).
        const CR3_WRITE_TRAP = 1 << 19;
        /// Writes of CR4 (trap).
        const CR4_WRITE_TRAP = 1 << 20;
        /// Writes of CR5 (trap).
        const CR5_WRITE_TRAP = 1 << 21;
        /// Writes of CR6 (trap).
        const CR6_WRITE_TRAP = 1 << 22;
        /// Writes of CR7 (trap).
        const CR7_WRITE_TRAP = 1 << 23;
        /// Writes of CR8 (trap).
        const CR8_WRITE_TRAP = 1 << 24;
        /// Writes of CR9 (trap).
        const CR9_WRITE_TRAP = 1 << 25;
        /// Writes of CR10 (trap).
        const CR10_WRITE_TRAP = 1 << 26;
        /// Writes of CR11 (trap).
        const CR11_WRITE_TRAP = 1 << 27;
        /// Writes of CR12 (trap).
        const CR12_WRITE_TRAP = 1 << 28;
        /// Writes of CR13 (trap).
        const CR13_WRITE_TRAP = 1 << 29;
        /// Writes of CR14 (trap).
        const CR14_WRITE_TRAP = 1 << 30;
        /// Writes of CR15 (trap).
        const CR15_WRITE_TRAP = 1 << 31;
    }
}

impl InterceptMisc2 {
    /// The write-trap intercept of CR`n`. Panics if `n > 15`.
    pub const fn cr_write_trap(n: u8) -> Self {
        assert!(n < 16, "control registers are CR0-CR15");
        Self::from_bits_retain(1 << (16 + n))
    }
}

bitflags! {
    /// 0x014: intercept vector 5. Bits 31:7 are reserved (SBZ) and left
    /// undefined here, so `from_bits` rejects them.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct InterceptMisc3: u32 {
        /// All INVLPGB instructions.
        const INVLPGB = 1 << 0;
        /// Only illegally specified INVLPGB instructions.
        const INVLPGB_ILLEGAL = 1 << 1;
        /// INVPCID.
        const INVPCID = 1 << 2;
        /// MCOMMIT.
        const MCOMMIT = 1 << 3;
        /// TLBSYNC (present if CPUID Fn8000_000A_EDX\[24\]).
        const TLBSYNC = 1 << 4;
        /// Bus locks while the bus lock threshold counter is 0.
        const BUS_LOCK = 1 << 5;
        /// HLT when no virtual interrupt is pending (idle HLT).
        const IDLE_HLT = 1 << 6;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cr_and_dr_helpers_match_table_b1_halves() {
        // Reads are bits 15:0, writes 31:16 (Table B-1 vectors 0 and 1).
        assert_eq!(CrIntercepts::read(0).bits(), 0x0000_0001);
        assert_eq!(CrIntercepts::read(8).bits(), 0x0000_0100);
        assert_eq!(CrIntercepts::read(15).bits(), 0x0000_8000);
        assert_eq!(CrIntercepts::write(0).bits(), 0x0001_0000);
        assert_eq!(CrIntercepts::write(3).bits(), 0x0008_0000);
        assert_eq!(CrIntercepts::write(15).bits(), 0x8000_0000);
        assert_eq!(CrIntercepts::read(3), CrIntercepts::CR3_READ);
        assert_eq!(CrIntercepts::write(8), CrIntercepts::CR8_WRITE);
        assert_eq!(CrIntercepts::all().bits(), u32::MAX);

        assert_eq!(DrIntercepts::read(7).bits(), 0x0000_0080);
        assert_eq!(DrIntercepts::write(7).bits(), 0x0080_0000);
        assert_eq!(DrIntercepts::write(6), DrIntercepts::DR6_WRITE);
        assert_eq!(DrIntercepts::all().bits(), u32::MAX);
    }

    #[test]
    #[should_panic]
    fn cr_read_rejects_cr16() {
        let _ = CrIntercepts::read(16);
    }

    #[test]
    fn exception_bits_are_vector_numbers() {
        assert_eq!(ExceptionIntercepts::PF.bits(), 1 << 14);
        assert_eq!(ExceptionIntercepts::vector(14), ExceptionIntercepts::PF);
        assert_eq!(ExceptionIntercepts::UD.bits(), 0x40);
        assert_eq!(ExceptionIntercepts::BP.bits(), 0x8);
        assert_eq!(ExceptionIntercepts::MC.bits(), 0x4_0000);
        assert_eq!(ExceptionIntercepts::vector(31).bits(), 0x8000_0000);
        // Unnamed vectors stay known bits, so nothing is lost on a round trip.
        let raw = 0xFFFF_FFFF;
        assert_eq!(
            ExceptionIntercepts::from_bits(raw).map(|e| e.bits()),
            Some(raw)
        );
    }

    #[test]
    fn misc1_positions() {
        let expect = [
            (InterceptMisc1::INTR, 0),
            (InterceptMisc1::NMI, 1),
            (InterceptMisc1::SMI, 2),
            (InterceptMisc1::INIT, 3),
            (InterceptMisc1::VINTR, 4),
            (InterceptMisc1::CR0_SEL_WRITE, 5),
            (InterceptMisc1::IDTR_READ, 6),
            (InterceptMisc1::GDTR_READ, 7),
            (InterceptMisc1::LDTR_READ, 8),
            (InterceptMisc1::TR_READ, 9),
            (InterceptMisc1::IDTR_WRITE, 10),
            (InterceptMisc1::GDTR_WRITE, 11),
            (InterceptMisc1::LDTR_WRITE, 12),
            (InterceptMisc1::TR_WRITE, 13),
            (InterceptMisc1::RDTSC, 14),
            (InterceptMisc1::RDPMC, 15),
            (InterceptMisc1::PUSHF, 16),
            (InterceptMisc1::POPF, 17),
            (InterceptMisc1::CPUID, 18),
            (InterceptMisc1::RSM, 19),
            (InterceptMisc1::IRET, 20),
            (InterceptMisc1::INTN, 21),
            (InterceptMisc1::INVD, 22),
            (InterceptMisc1::PAUSE, 23),
            (InterceptMisc1::HLT, 24),
            (InterceptMisc1::INVLPG, 25),
            (InterceptMisc1::INVLPGA, 26),
            (InterceptMisc1::IOIO_PROT, 27),
            (InterceptMisc1::MSR_PROT, 28),
            (InterceptMisc1::TASK_SWITCH, 29),
            (InterceptMisc1::FERR_FREEZE, 30),
            (InterceptMisc1::SHUTDOWN, 31),
        ];
        for (flag, bit) in expect {
            assert_eq!(flag.bits(), 1u32 << bit, "{flag:?}");
        }
        // Tandasat's Hypervisor-101 setup: INTR | PAUSE | SHUTDOWN.
        let set = InterceptMisc1::INTR | InterceptMisc1::PAUSE | InterceptMisc1::SHUTDOWN;
        assert_eq!(set.bits(), 0x8080_0001);
    }

    #[test]
    fn misc2_positions() {
        let expect = [
            (InterceptMisc2::VMRUN, 0),
            (InterceptMisc2::VMMCALL, 1),
            (InterceptMisc2::VMLOAD, 2),
            (InterceptMisc2::VMSAVE, 3),
            (InterceptMisc2::STGI, 4),
            (InterceptMisc2::CLGI, 5),
            (InterceptMisc2::SKINIT, 6),
            (InterceptMisc2::RDTSCP, 7),
            (InterceptMisc2::ICEBP, 8),
            (InterceptMisc2::WBINVD, 9),
            (InterceptMisc2::MONITOR, 10),
            (InterceptMisc2::MWAIT, 11),
            (InterceptMisc2::MWAIT_CONDITIONAL, 12),
            (InterceptMisc2::XSETBV, 13),
            (InterceptMisc2::RDPRU, 14),
            (InterceptMisc2::EFER_WRITE_TRAP, 15),
            (InterceptMisc2::CR0_WRITE_TRAP, 16),
            (InterceptMisc2::CR4_WRITE_TRAP, 20),
            (InterceptMisc2::CR8_WRITE_TRAP, 24),
            (InterceptMisc2::CR15_WRITE_TRAP, 31),
        ];
        for (flag, bit) in expect {
            assert_eq!(flag.bits(), 1u32 << bit, "{flag:?}");
        }
        assert_eq!(
            InterceptMisc2::cr_write_trap(3),
            InterceptMisc2::CR3_WRITE_TRAP
        );
    }

    #[test]
    fn misc3_positions_and_reserved_bits() {
        assert_eq!(InterceptMisc3::INVLPGB.bits(), 1 << 0);
        assert_eq!(InterceptMisc3::INVLPGB_ILLEGAL.bits(), 1 << 1);
        assert_eq!(InterceptMisc3::INVPCID.bits(), 1 << 2);
        assert_eq!(InterceptMisc3::MCOMMIT.bits(), 1 << 3);
        assert_eq!(InterceptMisc3::TLBSYNC.bits(), 1 << 4);
        assert_eq!(InterceptMisc3::BUS_LOCK.bits(), 1 << 5);
        assert_eq!(InterceptMisc3::IDLE_HLT.bits(), 1 << 6);
        assert_eq!(InterceptMisc3::all().bits(), 0x7F);
        assert_eq!(InterceptMisc3::from_bits(1 << 7), None);
    }
}
