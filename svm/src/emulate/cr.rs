//! MOV to CR0/CR3/CR4/CR8, LMSW and CLTS, with the checks the CPU makes
//! (APM Vol. 2, 3.1.1 "CR0", 3.1.3 "CR4", 14.6/14.7 long-mode activation and
//! consistency, 15.21.4 "TPR access"; CR3: 3.1.2). L0 intercepts these writes for every
//! guest so that no guest state the CPU would refuse reaches the emulator
//! (docs/qemu-tcg.md: QEMU takes `mov cr0, 0` in 64-bit mode, and hangs
//! at the next #VMEXIT after a guest reached CR0.PG=0, CR4.PAE=0,
//! EFER.LME=1).

use super::Fault;
use crate::cr::{CR0_CD, CR0_ET, CR0_MP, CR0_NE, CR0_NW, CR0_PE, CR0_PG, CR0_WP, CR4_PAE};
use crate::msr::{EFER_LMA, EFER_LME};

/// CR0.EM
pub const CR0_EM: u64 = 1 << 2;
/// CR0.TS
pub const CR0_TS: u64 = 1 << 3;
/// CR0.AM
pub const CR0_AM: u64 = 1 << 18;
/// The CR0 bits that exist; the other low bits are reserved and ignored
/// on writes (bits 63:32 are #GP), as KVM does.
const CR0_DEFINED: u64 = CR0_PE
    | CR0_MP
    | CR0_EM
    | CR0_TS
    | CR0_ET
    | CR0_NE
    | CR0_WP
    | CR0_AM
    | CR0_NW
    | CR0_CD
    | CR0_PG;

/// CR4.PSE
pub const CR4_PSE: u64 = 1 << 4;
/// CR4.PGE
pub const CR4_PGE: u64 = 1 << 7;
/// CR4.LA57
pub const CR4_LA57: u64 = 1 << 12;
/// CR4.PCIDE
pub const CR4_PCIDE: u64 = 1 << 17;
/// CR4.SMEP
pub const CR4_SMEP: u64 = 1 << 20;

/// The state a control-register write depends on and changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrState {
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER as the guest sees it (LME included, see [`efer_for_cpu`]).
    pub efer: u64,
    /// CS.L: the guest runs 64-bit code (with EFER.LMA).
    pub cs_l: bool,
}

impl CrState {
    fn in_64bit_mode(&self) -> bool {
        self.efer & EFER_LMA != 0 && self.cs_l
    }
}

/// MOV to CR0 (and LMSW/CLTS through [`lmsw_value`]/[`clts_value`]):
/// the new state, or #GP(0) when the CPU refuses it. Activating paging
/// with EFER.LME set activates long mode (EFER.LMA), deactivating it
/// leaves long mode, as the CPU does (APM 14.6.1/14.7).
pub fn write_cr0(s: &CrState, value: u64) -> Result<CrState, Fault> {
    let gp = Err(Fault::Gp(0));
    if value >> 32 != 0 {
        return gp;
    }
    // ET is hard-wired to 1 (APM 3.1.1).
    let new = (value & CR0_DEFINED) | CR0_ET;
    if new & CR0_PG != 0 && new & CR0_PE == 0 {
        return gp;
    }
    if new & CR0_NW != 0 && new & CR0_CD == 0 {
        return gp;
    }
    let mut out = *s;
    let was_paging = s.cr0 & CR0_PG != 0;
    let paging = new & CR0_PG != 0;
    if paging && !was_paging && s.efer & EFER_LME != 0 {
        // Long mode needs PAE, and is entered from non-64-bit code (KVM).
        if s.cr4 & CR4_PAE == 0 || s.cs_l {
            return gp;
        }
        out.efer |= EFER_LMA;
    }
    if !paging && was_paging {
        // Leaving long mode is done from compatibility mode (APM 14.7).
        if s.in_64bit_mode() || s.cr4 & CR4_PCIDE != 0 {
            return gp;
        }
        out.efer &= !EFER_LMA;
    }
    out.cr0 = new;
    Ok(out)
}

/// The CR0 value LMSW writes: bits 3:0 (PE, MP, EM, TS) from the source;
/// it can set PE but never clear it (APM Vol. 3, LMSW).
pub fn lmsw_value(cr0: u64, source: u16) -> u64 {
    (cr0 & !0xf) | u64::from(source & 0xf) | (cr0 & CR0_PE)
}

/// The CR0 value CLTS writes: TS cleared.
pub fn clts_value(cr0: u64) -> u64 {
    cr0 & !CR0_TS
}

/// Whether a CR0 write changes bits other than TS and MP, i.e. is what
/// the selective CR0 write intercept catches (APM 15.9.1).
pub fn is_selective_cr0_write(old: u64, new: u64) -> bool {
    (old ^ new) & !(CR0_TS | CR0_MP) != 0
}

/// Whether L1's selective CR0 write intercept catches a CR0 write by
/// `lmsw` or MOV to CR0: LMSW treats it as non-selective, intercepted
/// whatever it writes (APM Table 15-7; KVM svm_check_intercept). CLTS is
/// never caught by it.
pub fn selective_cr0_intercepts(old: u64, new: u64, lmsw: bool) -> bool {
    lmsw || is_selective_cr0_write(old, new)
}

/// MOV to CR4: the new state, or #GP(0). `allowed` is the set of CR4 bits
/// the guest's CPUID shows ([`crate::nested::l1_cpu::L1Cpuid::cr4_allowed`],
/// the one source L0's vmcb12 checks use too); anything else is reserved.
pub fn write_cr4(s: &CrState, value: u64, allowed: u64) -> Result<CrState, Fault> {
    let gp = Err(Fault::Gp(0));
    if value >> 32 != 0 || value & !allowed != 0 {
        return gp;
    }
    let lma = s.efer & EFER_LMA != 0;
    // PAE cannot be cleared in long mode, nor LA57 changed (APM 3.1.3).
    if lma && (value & CR4_PAE == 0 || (value ^ s.cr4) & CR4_LA57 != 0) {
        return gp;
    }
    // PCIDE can be set only in long mode with CR3[11:0] = 0 (APM 3.1.3).
    if value & CR4_PCIDE != 0 && s.cr4 & CR4_PCIDE == 0 && (!lma || s.cr3 & 0xfff != 0) {
        return gp;
    }
    Ok(CrState { cr4: value, ..*s })
}

/// Whether a CR0/CR4 change flushes the TLB (paging-mode bits, APM 5.5.2;
/// L0 flushes the guest's ASID, which is a superset).
pub fn flushes_tlb(old: &CrState, new: &CrState) -> bool {
    const CR0_BITS: u64 = CR0_PG | CR0_WP | CR0_PE | CR0_CD | CR0_NW;
    const CR4_BITS: u64 = CR4_PAE | CR4_PSE | CR4_PGE | CR4_PCIDE | CR4_SMEP | CR4_LA57;
    (old.cr0 ^ new.cr0) & CR0_BITS != 0 || (old.cr4 ^ new.cr4) & CR4_BITS != 0
}

/// CR3 bit 63 with CR4.PCIDE: keep the new PCID's TLB entries (APM 3.1.2).
/// It is an instruction flag, never stored in CR3.
pub const CR3_NO_FLUSH: u64 = 1 << 63;

/// MOV to CR3: the new state and whether the TLB is flushed, or #GP(0)
/// when the value has bits at or above MAXPHYADDR (`max_phys_bits`, from
/// the guest's CPUID 0x8000_0008) or in 63:52 (APM 3.1.2 "CR3": reserved,
/// MBZ). With CR4.PCIDE bit 63 is the no-flush flag and bits 11:0 the PCID.
/// As KVM's `kvm_set_cr3`: the address check whatever the paging mode
/// (outside 64-bit mode the operand has 32 bits anyway, and the 32-bit and
/// PAE formats ignore the low bits the walk does not use); in PAE paging
/// the PDPTEs it points at are checked too ([`loads_pdptes`]).
pub fn write_cr3(s: &CrState, value: u64, max_phys_bits: u8) -> Result<(CrState, bool), Fault> {
    let pcide = s.cr4 & CR4_PCIDE != 0;
    let no_flush = pcide && value & CR3_NO_FLUSH != 0;
    let cr3 = if pcide { value & !CR3_NO_FLUSH } else { value };
    if cr3 >> max_phys_bits.min(52) != 0 {
        return Err(Fault::Gp(0));
    }
    Ok((CrState { cr3, ..*s }, !no_flush))
}

/// Whether a write that took the guest from `old` to `new` (control
/// register `cr`) loads the four PAE PDPTEs, which the CPU then checks
/// ([`crate::walk::pdptes_valid`]; #GP(0) when one has a reserved bit): the
/// new state is PAE paging outside long mode, and the write is MOV CR3, or
/// changed CR0.PG/CD/NW, or CR4.PAE/PSE/PGE/SMEP (APM 3.1.2, 5.3.1; KVM
/// `kvm_set_cr0/3/4` and `X86_CR{0,4}_PDPTR_BITS`).
pub fn loads_pdptes(old: &CrState, new: &CrState, cr: u8) -> bool {
    let pae_paging = new.cr0 & CR0_PG != 0 && new.cr4 & CR4_PAE != 0 && new.efer & EFER_LMA == 0;
    let changed = match cr {
        3 => true,
        0 => (old.cr0 ^ new.cr0) & (CR0_PG | CR0_CD | CR0_NW) != 0,
        4 => (old.cr4 ^ new.cr4) & (CR4_PAE | CR4_PSE | CR4_PGE | CR4_SMEP) != 0,
        _ => false,
    };
    pae_paging && changed
}

/// MOV to CR8: the new task priority (V_TPR under V_INTR_MASKING, APM
/// 15.21.4), or #GP(0) when bits 63:4 are set (APM 3.1.5).
pub fn write_cr8(value: u64) -> Result<u8, Fault> {
    match value {
        0..=15 => Ok(value as u8),
        _ => Err(Fault::Gp(0)),
    }
}

/// EFER as the CPU gets it at VMRUN, and whether LME was hidden: while the
/// guest's CR0.PG is clear, EFER.LME has no effect (APM 14.6.1), and
/// hiding it keeps the state PG=0, PAE=0, LME=1 away from the emulator,
/// which cannot restore the host from it at #VMEXIT (docs/qemu-tcg.md).
/// [`efer_for_guest`] undoes it after the exit.
pub fn efer_for_cpu(efer: u64, cr0: u64) -> (u64, bool) {
    if efer & EFER_LME != 0 && cr0 & CR0_PG == 0 {
        (efer & !EFER_LME, true)
    } else {
        (efer, false)
    }
}

/// The guest's EFER from the VMCB's after an exit ([`efer_for_cpu`]).
pub fn efer_for_guest(vmcb_efer: u64, lme_hidden: bool) -> u64 {
    if lme_hidden {
        vmcb_efer | EFER_LME
    } else {
        vmcb_efer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: CrState = CrState {
        cr0: CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG,
        cr3: 0x1000,
        cr4: CR4_PAE,
        efer: EFER_LME | EFER_LMA,
        cs_l: true,
    };

    #[test]
    fn cr0_refusals_in_64_bit_mode() {
        let gp = Err(Fault::Gp(0));
        assert_eq!(write_cr0(&LONG, 0), gp, "mov cr0, 0 in 64-bit mode");
        assert_eq!(write_cr0(&LONG, LONG.cr0 & !CR0_PG), gp);
        assert_eq!(write_cr0(&LONG, LONG.cr0 | 1 << 32), gp);
        assert_eq!(write_cr0(&LONG, LONG.cr0 & !CR0_PE), gp, "PG without PE");
        assert_eq!(write_cr0(&LONG, LONG.cr0 | CR0_NW), gp, "NW without CD");
        let ok = write_cr0(&LONG, LONG.cr0 | CR0_NW | CR0_CD).unwrap();
        assert_eq!(ok.cr0, LONG.cr0 | CR0_NW | CR0_CD);
        // Reserved low bits are dropped, ET forced.
        let ok = write_cr0(&LONG, (LONG.cr0 & !CR0_ET) | 1 << 6).unwrap();
        assert_eq!(ok.cr0, LONG.cr0);
    }

    #[test]
    fn leaving_and_reentering_long_mode() {
        let compat = CrState {
            cs_l: false,
            ..LONG
        };
        let off = write_cr0(&compat, compat.cr0 & !CR0_PG).unwrap();
        assert_eq!(off.efer, EFER_LME, "LMA cleared, LME kept");
        // PAE may go now; LME=1 with PG=0 and PAE=0 is legal.
        let no_pae = write_cr4(&off, 0, !0).unwrap();
        // Paging back on without PAE while LME: #GP.
        assert_eq!(write_cr0(&no_pae, no_pae.cr0 | CR0_PG), Err(Fault::Gp(0)));
        let pae = write_cr4(&no_pae, CR4_PAE, !0).unwrap();
        let on = write_cr0(&pae, pae.cr0 | CR0_PG).unwrap();
        assert_eq!(on.efer, EFER_LME | EFER_LMA);
        // PCIDE blocks clearing PG.
        let pcid = CrState {
            cr4: CR4_PAE | CR4_PCIDE,
            ..compat
        };
        assert_eq!(write_cr0(&pcid, pcid.cr0 & !CR0_PG), Err(Fault::Gp(0)));
        // Without LME, paging is legacy paging: no LMA.
        let legacy = CrState { efer: 0, ..no_pae };
        assert_eq!(write_cr0(&legacy, legacy.cr0 | CR0_PG).unwrap().efer, 0);
    }

    #[test]
    fn cr4_rules() {
        let gp = Err(Fault::Gp(0));
        let allowed = 0x7ff | CR4_PCIDE;
        assert_eq!(write_cr4(&LONG, 0, allowed), gp, "PAE cleared in long mode");
        assert_eq!(write_cr4(&LONG, CR4_PAE | 1 << 13, allowed), gp, "reserved");
        assert_eq!(write_cr4(&LONG, CR4_PAE | 1 << 40, !0), gp, "bits 63:32");
        assert_eq!(
            write_cr4(&LONG, CR4_PAE | CR4_LA57, !0),
            gp,
            "LA57 in long mode"
        );
        let cr3_low = CrState {
            cr3: 0x1008,
            ..LONG
        };
        assert_eq!(
            write_cr4(&cr3_low, CR4_PAE | CR4_PCIDE, allowed),
            gp,
            "PCIDE with CR3[11:0] != 0"
        );
        let cr3_ok = CrState {
            cr3: 0x2000,
            ..LONG
        };
        assert!(write_cr4(&cr3_ok, CR4_PAE | CR4_PCIDE, allowed).is_ok());
        assert_eq!(
            write_cr4(&LONG, CR4_PAE | CR4_PGE, allowed).unwrap().cr4,
            CR4_PAE | CR4_PGE
        );
    }

    #[test]
    fn lmsw_clts_and_selective_writes() {
        let cr0 = CR0_PE | CR0_TS | CR0_PG;
        assert_eq!(lmsw_value(cr0, 0), CR0_PE | CR0_PG, "PE cannot be cleared");
        assert_eq!(lmsw_value(CR0_PG, 0xffff), CR0_PG | 0xf);
        assert_eq!(clts_value(cr0), CR0_PE | CR0_PG);
        assert!(!is_selective_cr0_write(cr0, cr0 & !CR0_TS | CR0_MP));
        assert!(is_selective_cr0_write(cr0, cr0 | CR0_WP));
        // LMSW: caught even when it changes only MP, or nothing.
        assert!(selective_cr0_intercepts(cr0, cr0 | CR0_MP, true));
        assert!(selective_cr0_intercepts(cr0, cr0, true));
        assert!(!selective_cr0_intercepts(cr0, cr0 | CR0_MP, false));
        assert!(selective_cr0_intercepts(cr0, cr0 | CR0_WP, false));
    }

    #[test]
    fn cr3_reserved_bits_and_pcid() {
        let gp = Err(Fault::Gp(0));
        // The fuzzer's value (bit 63 and bits above MAXPHYADDR).
        assert_eq!(write_cr3(&LONG, 0xea38_a504_73e1_82b5, 40), gp);
        assert_eq!(write_cr3(&LONG, 1 << 40, 40), gp, "bit MAXPHYADDR");
        assert_eq!(write_cr3(&LONG, 1 << 63, 40), gp, "bit 63 without PCIDE");
        assert_eq!(write_cr3(&LONG, 1 << 52, 64), gp, "bits 63:52 MBZ");
        let (ok, flush) = write_cr3(&LONG, ((1 << 40) - 0x1000) | 0x18, 40).unwrap();
        assert_eq!((ok.cr3, flush), (((1 << 40) - 0x1000) | 0x18, true));
        assert_eq!(
            ok,
            CrState {
                cr3: ok.cr3,
                ..LONG
            },
            "only CR3 changes"
        );
        assert_eq!(
            write_cr3(&LONG, 0x2000, 36).unwrap(),
            (
                CrState {
                    cr3: 0x2000,
                    ..LONG
                },
                true
            )
        );
        // PCIDE: bit 63 is the no-flush flag, not stored; the rest is checked.
        let pcid = CrState {
            cr4: CR4_PAE | CR4_PCIDE,
            ..LONG
        };
        let (ok, flush) = write_cr3(&pcid, CR3_NO_FLUSH | 0x3005, 40).unwrap();
        assert_eq!((ok.cr3, flush), (0x3005, false));
        assert!(
            write_cr3(&pcid, 0x3005, 40).unwrap().1,
            "flush without bit 63"
        );
        assert_eq!(write_cr3(&pcid, CR3_NO_FLUSH | 1 << 62, 40), gp);
    }

    #[test]
    fn pae_pdptes_load_on_the_writes_that_reach_pae_paging() {
        let legacy = CrState {
            cr0: CR0_PE | CR0_ET,
            cr3: 0x1000,
            cr4: CR4_PAE,
            efer: 0,
            cs_l: false,
        };
        let paging = write_cr0(&legacy, legacy.cr0 | CR0_PG).unwrap();
        assert_eq!(paging.efer, 0, "no LME: legacy PAE paging");
        assert!(loads_pdptes(&legacy, &paging, 0), "PG set");
        assert!(loads_pdptes(&paging, &paging, 3), "MOV CR3");
        let pge = write_cr4(&paging, CR4_PAE | CR4_PGE, !0).unwrap();
        assert!(loads_pdptes(&paging, &pge, 4), "CR4.PGE");
        let mp = write_cr0(&paging, paging.cr0 | CR0_MP).unwrap();
        assert!(!loads_pdptes(&paging, &mp, 0), "CR0.MP");
        // Long mode has no PDPTEs; paging off neither; 32-bit paging neither.
        assert!(!loads_pdptes(&LONG, &LONG, 3));
        assert!(!loads_pdptes(&legacy, &legacy, 3));
        let no_pae = CrState { cr4: 0, ..paging };
        assert!(!loads_pdptes(&no_pae, &no_pae, 3));
        // Entering long mode (LME set) loads none.
        let lme = CrState {
            efer: EFER_LME,
            ..legacy
        };
        let long = write_cr0(&lme, lme.cr0 | CR0_PG).unwrap();
        assert!(!loads_pdptes(&lme, &long, 0));
    }

    #[test]
    fn cr8_takes_four_bits() {
        assert_eq!(write_cr8(15), Ok(15));
        assert_eq!(write_cr8(16), Err(Fault::Gp(0)));
    }

    #[test]
    fn lme_is_hidden_from_the_cpu_only_without_paging() {
        assert_eq!(
            efer_for_cpu(EFER_LME | EFER_LMA, CR0_PG),
            (EFER_LME | EFER_LMA, false)
        );
        assert_eq!(efer_for_cpu(EFER_LME | 1, 0), (1, true));
        assert_eq!(efer_for_guest(1, true), EFER_LME | 1);
        assert_eq!(efer_for_guest(1, false), 1);
    }
}
