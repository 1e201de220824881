//! INIT and Start-up for a vCPU (SDM Vol. 3A 9.4 and 11.6.1; APM Vol. 2
//! 15.x "INIT support"): INIT puts a vCPU into its reset state and makes it
//! wait for a Start-up IPI; the SIPI starts it in real mode at
//! CS = vector << 8, IP = 0. A SIPI to a vCPU that is not waiting for one
//! is ignored; INIT is held while GIF = 0 (APM 15.17 "Global Interrupt
//! Flag"): the caller delivers it only with GIF set.

use crate::vmcb::{StateSaveArea, VmcbSegment};

/// Where a vCPU stands in the INIT/SIPI protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ApState {
    /// Running guest code.
    #[default]
    Running,
    /// After INIT: halted until a Start-up IPI.
    WaitForSipi,
}

/// What a Start-up IPI does to a vCPU in `state`: `Some(vector)` starts it
/// there (and it is running), `None` ignores it (SDM 9.4.4: a SIPI to a
/// CPU not in wait-for-SIPI has no effect).
pub fn on_sipi(state: &mut ApState, vector: u8) -> Option<u8> {
    match *state {
        ApState::WaitForSipi => {
            *state = ApState::Running;
            Some(vector)
        }
        ApState::Running => None,
    }
}

/// What INIT does to the state: the vCPU waits for a SIPI (also when it
/// was already waiting: a second INIT changes nothing).
pub fn on_init(state: &mut ApState) {
    *state = ApState::WaitForSipi;
}

/// CR0 after INIT: CD and NW set, ET set (SDM Table 9-1; APM 14.1.3).
pub const CR0_AT_INIT: u64 = 0x6000_0010;

/// A data segment at reset: selector 0, base 0, limit 0xFFFF, present
/// read/write accessed (APM Table 14-1).
const DATA: VmcbSegment = VmcbSegment::new(0, 0x93, 0xFFFF, 0);

/// Writes the state INIT leaves in `s` (SDM Table 9-1, APM Table 14-1),
/// with what the SIPI sets: CS = `vector` << 8 (base `vector` << 12), IP 0.
/// `efer_svme` keeps EFER.SVME, which VMRUN requires of the guest (APM
/// 15.5.1) and the MSR intercept hides. What the VMCB does not hold (the
/// general registers, DR0-DR3, the APIC) is the caller's to reset.
pub fn write_start_state(s: &mut StateSaveArea, vector: u8, efer_svme: u64) {
    let page = u64::from(vector) << 12;
    s.cs = VmcbSegment::new(u16::from(vector) << 8, 0x9B, 0xFFFF, page);
    s.ds = DATA;
    s.es = DATA;
    s.fs = DATA;
    s.gs = DATA;
    s.ss = DATA;
    s.gdtr = VmcbSegment::new(0, 0, 0xFFFF, 0);
    s.idtr = VmcbSegment::new(0, 0, 0xFFFF, 0);
    s.ldtr = VmcbSegment::new(0, 0x82, 0xFFFF, 0);
    s.tr = VmcbSegment::new(0, 0x8B, 0xFFFF, 0);
    s.cpl = 0;
    s.efer = efer_svme;
    s.cr0 = CR0_AT_INIT;
    s.cr3 = 0;
    s.cr4 = 0;
    s.dr6 = 0xFFFF_0FF0;
    s.dr7 = 0x400;
    s.rflags = 0x2;
    s.rip = 0;
    s.rsp = 0;
    s.rax = 0;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmcb::Vmcb;

    #[test]
    fn sipi_starts_only_a_waiting_vcpu() {
        let mut st = ApState::Running;
        assert_eq!(on_sipi(&mut st, 8), None);
        on_init(&mut st);
        assert_eq!(st, ApState::WaitForSipi);
        on_init(&mut st);
        assert_eq!(on_sipi(&mut st, 8), Some(8));
        assert_eq!(st, ApState::Running);
        // The second SIPI of the usual INIT-SIPI-SIPI is ignored.
        assert_eq!(on_sipi(&mut st, 8), None);
    }

    #[test]
    fn start_state_is_real_mode_at_the_vector() {
        let mut v = Vmcb::new();
        v.state.cr0 = 0x8000_0011;
        v.state.efer = 0x1D00;
        v.state.rip = 0x1234;
        write_start_state(&mut v.state, 0x9A, 1 << 12);
        let s = &v.state;
        assert_eq!(
            (s.cs.selector, s.cs.base, s.cs.limit),
            (0x9A00, 0x9A000, 0xFFFF)
        );
        assert_eq!(s.rip, 0);
        assert_eq!(s.cr0 & 1, 0, "protected mode after INIT");
        assert_eq!(s.cr0, 0x6000_0010);
        assert_eq!(s.efer, 1 << 12, "only SVME stays in EFER");
        assert_eq!((s.cr3, s.cr4, s.rflags), (0, 0, 2));
        assert_eq!((s.ss.base, s.ds.limit, s.ds.attrib), (0, 0xFFFF, 0x93));
        assert_eq!(s.idtr.limit, 0xFFFF);
    }
}
