//! Length of the instructions the hypervisor intercepts, for CPUs without
//! NRIP save (QEMU TCG has none: docs/qemu-tcg.md). With NRIP the VMCB's
//! `next_rip` gives the answer; without it the hypervisor reads the bytes at
//! the guest's RIP and asks [`intercepted_len`]. IOIO exits need neither:
//! EXITINFO2 holds the next RIP (APM Vol. 2, 15.10.2).

/// The intercepted instructions this decoder knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insn {
    /// `0F A2`
    Cpuid,
    /// `0F 32`
    Rdmsr,
    /// `0F 30`
    Wrmsr,
    /// `0F 31`
    Rdtsc,
    /// `0F 01 F9`
    Rdtscp,
    /// `F4`
    Hlt,
    /// `0F 01 D8`
    Vmrun,
    /// `0F 01 D9`
    Vmmcall,
    /// `0F 01 DA`
    Vmload,
    /// `0F 01 DB`
    Vmsave,
    /// `0F 01 DC`
    Stgi,
    /// `0F 01 DD`
    Clgi,
    /// `0F 01 DE`
    Skinit,
    /// `0F 01 DF`
    Invlpga,
    /// `0F 01 D1`
    Xsetbv,
    /// `0F 09`
    Wbinvd,
    /// `0F 08`
    Invd,
}

/// Longest x86 instruction.
pub const MAX_INSN_LEN: usize = 15;

fn is_legacy_prefix(b: u8) -> bool {
    matches!(
        b,
        0x66 | 0x67 | 0xF0 | 0xF2 | 0xF3 | 0x2E | 0x36 | 0x3E | 0x26 | 0x64 | 0x65
    )
}

/// Decodes one intercepted instruction at the start of `bytes` (64-bit
/// mode): legacy prefixes, at most one REX prefix right before the opcode,
/// then the opcode. Returns the instruction and its length, or `None` for
/// anything else (the caller then stops the guest rather than guess).
pub fn intercepted_len(bytes: &[u8]) -> Option<(Insn, usize)> {
    let bytes = &bytes[..bytes.len().min(MAX_INSN_LEN)];
    let mut i = bytes.iter().take_while(|&&b| is_legacy_prefix(b)).count();
    if matches!(bytes.get(i), Some(0x40..=0x4F)) {
        i += 1;
    }
    let (insn, len) = match bytes.get(i..)? {
        [0xF4, ..] => (Insn::Hlt, 1),
        [0x0F, 0xA2, ..] => (Insn::Cpuid, 2),
        [0x0F, 0x32, ..] => (Insn::Rdmsr, 2),
        [0x0F, 0x30, ..] => (Insn::Wrmsr, 2),
        [0x0F, 0x31, ..] => (Insn::Rdtsc, 2),
        [0x0F, 0x09, ..] => (Insn::Wbinvd, 2),
        [0x0F, 0x08, ..] => (Insn::Invd, 2),
        [0x0F, 0x01, modrm, ..] => (
            match modrm {
                0xF9 => Insn::Rdtscp,
                0xD8 => Insn::Vmrun,
                0xD9 => Insn::Vmmcall,
                0xDA => Insn::Vmload,
                0xDB => Insn::Vmsave,
                0xDC => Insn::Stgi,
                0xDD => Insn::Clgi,
                0xDE => Insn::Skinit,
                0xDF => Insn::Invlpga,
                0xD1 => Insn::Xsetbv,
                _ => return None,
            },
            3,
        ),
        _ => return None,
    };
    let total = i + len;
    (total <= bytes.len()).then_some((insn, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_encodings() {
        let cases: &[(&[u8], Insn, usize)] = &[
            (&[0x0F, 0xA2], Insn::Cpuid, 2),
            (&[0x0F, 0x32, 0x90], Insn::Rdmsr, 2),
            (&[0x0F, 0x30], Insn::Wrmsr, 2),
            (&[0x0F, 0x31], Insn::Rdtsc, 2),
            (&[0x0F, 0x01, 0xF9], Insn::Rdtscp, 3),
            (&[0xF4], Insn::Hlt, 1),
            (&[0x0F, 0x01, 0xD8], Insn::Vmrun, 3),
            (&[0x0F, 0x01, 0xD9], Insn::Vmmcall, 3),
            (&[0x0F, 0x01, 0xDA], Insn::Vmload, 3),
            (&[0x0F, 0x01, 0xDB], Insn::Vmsave, 3),
            (&[0x0F, 0x01, 0xDC], Insn::Stgi, 3),
            (&[0x0F, 0x01, 0xDD], Insn::Clgi, 3),
            (&[0x0F, 0x01, 0xDE], Insn::Skinit, 3),
            (&[0x0F, 0x01, 0xDF], Insn::Invlpga, 3),
        ];
        for (bytes, insn, len) in cases {
            assert_eq!(intercepted_len(bytes), Some((*insn, *len)), "{bytes:02x?}");
        }
    }

    #[test]
    fn prefixes_count_towards_the_length() {
        // 67 0F 01 D8: VMRUN with address-size override (EAX instead of RAX).
        assert_eq!(
            intercepted_len(&[0x67, 0x0F, 0x01, 0xD8]),
            Some((Insn::Vmrun, 4))
        );
        // REX.W rdmsr, segment + operand-size prefixes before it.
        assert_eq!(
            intercepted_len(&[0x2E, 0x66, 0x48, 0x0F, 0x32]),
            Some((Insn::Rdmsr, 5))
        );
        // REP HLT is still HLT.
        assert_eq!(intercepted_len(&[0xF3, 0xF4]), Some((Insn::Hlt, 2)));
    }

    #[test]
    fn rex_must_be_last_before_the_opcode() {
        // A REX followed by a legacy prefix is ignored by the CPU; we refuse it.
        assert_eq!(intercepted_len(&[0x48, 0x66, 0x0F, 0x32]), None);
    }

    #[test]
    fn unknown_and_truncated_input_is_refused() {
        assert_eq!(intercepted_len(&[]), None);
        assert_eq!(intercepted_len(&[0x0F]), None);
        assert_eq!(intercepted_len(&[0x0F, 0x01]), None);
        assert_eq!(intercepted_len(&[0x0F, 0x01, 0xC1]), None); // VMCALL is Intel's
        assert_eq!(intercepted_len(&[0x90]), None);
        assert_eq!(intercepted_len(&[0x66; 20]), None);
    }

    #[test]
    fn never_longer_than_fifteen_bytes() {
        let mut bytes = [0x66u8; 16];
        bytes[13] = 0x0F;
        bytes[14] = 0x32;
        assert_eq!(intercepted_len(&bytes), Some((Insn::Rdmsr, 15)));
        bytes[13] = 0x66;
        bytes[14] = 0x0F;
        bytes[15] = 0x32;
        assert_eq!(intercepted_len(&bytes), None);
    }
}
