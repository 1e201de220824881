//! Where the bytes of a guest's instruction and operands are: the linear
//! address of the code at RIP in each mode, which paging translates it,
//! and the #PF error code when the walk finds nothing (APM Vol. 2, 4.5.3
//! segment bases, 5.1 paging modes, 8.4.2 page-fault error code).

/// How the guest's linear addresses become guest-physical ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Paging {
    /// CR0.PG clear: linear = physical (32 bits).
    Off,
    /// Long mode (EFER.LMA): 4-level tables ([`crate::walk::translate`]).
    Long,
    /// Legacy 32-bit or PAE paging (CR0.PG without EFER.LMA).
    Legacy,
}

/// The paging mode of a guest with `cr0` and `efer`.
pub fn paging(cr0: u64, efer: u64) -> Paging {
    if cr0 & crate::cr::CR0_PG == 0 {
        Paging::Off
    } else if efer & crate::msr::EFER_LMA != 0 {
        Paging::Long
    } else {
        Paging::Legacy
    }
}

/// The linear address of the code byte at RIP + `offset` in code of
/// `bitness`: 64-bit code ignores CS.base and does not wrap at 4 GiB;
/// 16- and 32-bit code add CS.base to EIP and truncate the sum to 32 bits
/// (APM Vol. 2, 4.5.3; real mode too, where CS.base is the selector times
/// 16). 16-bit code fetches at the whole EIP, not IP: the CPU checks EIP
/// against CS.limit rather than wrapping it at 64 KiB, so code with a 4 GiB
/// CS limit runs above 64 KiB (QEMU does the same; kvm-unit-tests'
/// `mode_switch` runs real-mode code at EIP > 0xFFFF).
pub fn code_address(bitness: u32, cs_base: u64, rip: u64, offset: u64) -> u64 {
    let ip = rip.wrapping_add(offset);
    match bitness {
        64 => ip,
        _ => cs_base.wrapping_add(ip & 0xffff_ffff) & 0xffff_ffff,
    }
}

/// RIP after an instruction of `len` bytes at `rip` in code of `bitness`:
/// 64 bits in 64-bit mode, else EIP wrapping at 4 GiB (see
/// [`code_address`] for 16-bit code).
pub fn next_rip(bitness: u32, rip: u64, len: u64) -> u64 {
    let next = rip.wrapping_add(len);
    match bitness {
        64 => next,
        _ => next & 0xffff_ffff,
    }
}

/// The #PF error code for a walk that found a page not present: U/S at
/// CPL 3, I/D for an instruction fetch with EFER.NXE set.
pub fn not_present_error_code(cpl: u8, fetch: bool, nxe: bool) -> u32 {
    let user = if cpl == 3 { 1 << 2 } else { 0 };
    let instruction = if fetch && nxe { 1 << 4 } else { 0 };
    user | instruction
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cr::{CR0_PE, CR0_PG};
    use crate::msr::{EFER_LMA, EFER_LME};

    #[test]
    fn paging_modes() {
        assert_eq!(paging(CR0_PE, EFER_LME), Paging::Off);
        assert_eq!(paging(CR0_PE | CR0_PG, EFER_LME | EFER_LMA), Paging::Long);
        assert_eq!(paging(CR0_PE | CR0_PG, 0), Paging::Legacy);
    }

    #[test]
    fn code_addresses_per_mode() {
        assert_eq!(
            code_address(64, 0x1000, 0xffff_8000_0000_0000, 2),
            0xffff_8000_0000_0002
        );
        assert_eq!(code_address(32, 0x1000, 0x2000, 1), 0x3001);
        assert_eq!(code_address(32, 0x10, 0xffff_ffff, 1), 0x10, "EIP wraps");
        assert_eq!(code_address(16, 0xf_0000, 0xfff0, 0), 0xf_fff0);
        // Real mode at EIP > 0xFFFF (a 4 GiB CS limit kept from protected
        // mode): the whole EIP counts.
        assert_eq!(code_address(16, 0, 0x10_2345, 1), 0x10_2346);
        assert_eq!(code_address(16, 0xf_0000, 0xffff, 1), 0x10_0000);
        assert_eq!(code_address(16, 0x10, 0xffff_ffff, 1), 0x10, "EIP wraps");
    }

    #[test]
    fn next_rip_per_mode() {
        assert_eq!(next_rip(64, 0xffff_ffff, 3), 0x1_0000_0002);
        assert_eq!(next_rip(32, 0xffff_ffff, 3), 2, "EIP wraps");
        assert_eq!(next_rip(16, 0x10_2345, 3), 0x10_2348);
        assert_eq!(next_rip(16, 0xfffe, 3), 0x1_0001);
    }

    #[test]
    fn page_fault_error_codes() {
        assert_eq!(not_present_error_code(0, true, false), 0);
        assert_eq!(not_present_error_code(3, false, true), 4);
        assert_eq!(not_present_error_code(0, true, true), 0x10);
        assert_eq!(not_present_error_code(3, true, true), 0x14);
    }
}
