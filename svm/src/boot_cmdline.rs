//! The kernel command line when the hypervisor runs a guest image
//! (`cargo xtask run --guest`): the kernel's words, then a `--` word, then
//! the guest's command line, passed on verbatim. The guest's words may look
//! like kernel keys (`tests=...`) or hold `--` themselves: only the first
//! `--` splits.

/// Splits `cmdline` at its first `--` word: the kernel's part and the
/// guest's part (trimmed; empty when there is no `--`).
pub fn split(cmdline: &str) -> (&str, &str) {
    let mut rest = cmdline;
    let mut consumed = 0;
    while let Some(start) = rest.find(|c: char| !c.is_ascii_whitespace()) {
        let len = rest[start..]
            .find(|c: char| c.is_ascii_whitespace())
            .unwrap_or(rest.len() - start);
        let word_start = consumed + start;
        let word_end = word_start + len;
        if &cmdline[word_start..word_end] == "--" {
            return (&cmdline[..word_start], cmdline[word_end..].trim_ascii());
        }
        consumed = word_end;
        rest = &cmdline[word_end..];
    }
    (cmdline, "")
}

/// Parses the `guest_mem=` value: MiB, even (guest RAM is made of 2 MiB
/// pages), from 2 to 2048; returns bytes.
pub fn guest_mem_bytes(value: &str) -> Option<u64> {
    let mib: u64 = value.parse().ok()?;
    ((2..=2048).contains(&mib) && mib.is_multiple_of(2)).then_some(mib << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_the_first_separator_word() {
        assert_eq!(
            split("log=warn guest=svm.flat guest_mem=256 -- vmrun -npt_*"),
            ("log=warn guest=svm.flat guest_mem=256 ", "vmrun -npt_*")
        );
        assert_eq!(split("guest=k --"), ("guest=k ", ""));
        assert_eq!(split("a -- b -- c"), ("a ", "b -- c"));
        assert_eq!(split("a  --   tests=x  "), ("a  ", "tests=x"));
        assert_eq!(split("--"), ("", ""));
    }

    #[test]
    fn a_separator_inside_a_word_does_not_split() {
        assert_eq!(
            split("tests=nested:: log=debug"),
            ("tests=nested:: log=debug", "")
        );
        assert_eq!(split("a --b c-- d"), ("a --b c-- d", ""));
        assert_eq!(split(""), ("", ""));
        assert_eq!(split("   "), ("   ", ""));
    }

    #[test]
    fn guest_mem_values() {
        assert_eq!(guest_mem_bytes("256"), Some(256 << 20));
        assert_eq!(guest_mem_bytes("2"), Some(2 << 20));
        assert_eq!(guest_mem_bytes("2048"), Some(2048 << 20));
        for bad in ["0", "3", "2050", "-2", "", "256M"] {
            assert_eq!(guest_mem_bytes(bad), None, "{bad}");
        }
    }
}
