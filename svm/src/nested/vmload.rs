//! VMLOAD and VMSAVE as L1 executes them: the hypervisor never runs them on
//! an L1-supplied address; it copies the fields between the VMCB in L1's
//! memory and L1's state in the active VMCB (APM Vol. 2, 15.5.2: FS, GS,
//! TR, LDTR with their hidden state, KernelGsBase, STAR, LSTAR, CSTAR,
//! SFMASK, SYSENTER_CS/ESP/EIP).

use crate::emulate::tr::tr_for_cpu;
use crate::StateSaveArea;

fn copy(from: &StateSaveArea, to: &mut StateSaveArea) {
    to.fs = from.fs;
    to.gs = from.gs;
    to.tr = from.tr;
    to.ldtr = from.ldtr;
    to.kernel_gs_base = from.kernel_gs_base;
    to.star = from.star;
    to.lstar = from.lstar;
    to.cstar = from.cstar;
    to.sfmask = from.sfmask;
    to.sysenter_cs = from.sysenter_cs;
    to.sysenter_esp = from.sysenter_esp;
    to.sysenter_eip = from.sysenter_eip;
}

/// VMLOAD: from the VMCB in L1 memory into L1's state. TR is taken as it
/// is, but with its present bit set ([`tr_for_cpu`]: the emulator aborts on
/// a TR without it where the CPU uses the cached TR as loaded).
pub fn vmload(l1_state: &mut StateSaveArea, from: &StateSaveArea) {
    copy(from, l1_state);
    l1_state.tr = tr_for_cpu(l1_state.tr);
}

/// VMSAVE: from L1's state into the VMCB in L1 memory.
pub fn vmsave(l1_state: &StateSaveArea, to: &mut StateSaveArea) {
    copy(l1_state, to);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Vmcb;

    #[test]
    fn vmload_and_vmsave_move_exactly_their_set() {
        let mut l1 = Vmcb::new();
        l1.state.rip = 0x1234;
        l1.state.cr3 = 0x5000;
        let mut mem = Vmcb::new();
        mem.state.fs.base = 0xf5;
        mem.state.gs.base = 0x65;
        mem.state.tr.selector = 0x28;
        mem.state.lstar = 0x77;
        mem.state.sysenter_eip = 0x99;
        mem.state.rip = 0xdead; // not part of VMLOAD
        vmload(&mut l1.state, &mem.state);
        assert_eq!(
            (l1.state.fs.base, l1.state.gs.base, l1.state.tr.selector),
            (0xf5, 0x65, 0x28)
        );
        assert_eq!((l1.state.lstar, l1.state.sysenter_eip), (0x77, 0x99));
        assert_eq!((l1.state.rip, l1.state.cr3), (0x1234, 0x5000));
        l1.state.kernel_gs_base = 0xabc;
        let mut out = Vmcb::new();
        out.state.rip = 0x42;
        vmsave(&l1.state, &mut out.state);
        assert_eq!((out.state.kernel_gs_base, out.state.fs.base), (0xabc, 0xf5));
        assert_eq!(out.state.rip, 0x42);
    }

    #[test]
    fn vmload_of_a_zeroed_page_gives_a_present_tr() {
        let mut l1 = Vmcb::new();
        l1.state.tr = crate::VmcbSegment::new(0x28, 0x8b, 0x67, 0x5000);
        vmload(&mut l1.state, &Vmcb::new().state);
        assert_eq!(l1.state.tr, crate::VmcbSegment::new(0, 0x80, 0, 0));
    }
}
