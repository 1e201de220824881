//! Reading a fuzz boot's console: the kernel's and L1's lines.

use std::collections::BTreeMap;

/// What one boot's console showed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BootReport {
    /// The kernel's final line: (iterations, seed, hypervisor failures).
    pub result: Option<(u64, u64, u64)>,
    /// `fuzz: FAILURE ...` lines (L0 stopped the VM, leaks).
    pub failures: Vec<String>,
    /// L1's `fuzz: MISMATCH ...` lines.
    pub mismatches: Vec<String>,
    /// L1's `fuzz: DEVIATION ...` lines.
    pub deviations: Vec<String>,
    /// The merged histogram, name → count.
    pub histogram: BTreeMap<String, u64>,
    /// The last iteration L1 reported starting.
    pub last_iteration: Option<u64>,
    /// Count of `fuzz: N oracle mismatches, M emulator deviations` figures.
    pub deviation_count: u64,
    /// L1's `fuzz: NOTE ...` lines (a vmcb12 the oracle finds legal ended
    /// in VMEXIT_INVALID).
    pub notes: Vec<String>,
    /// L0's warnings that the CPU refused a vmcb12 its checks accepted.
    pub cpu_refusals: u64,
    /// The kernel's `fuzz: kind <hash> <n>` lines: exact counts of each
    /// kind of L1 report (the reproducer lines carry `kind=<hash>`).
    pub kinds: BTreeMap<String, u64>,
}

/// A message without its numbers (every run of `[0-9a-fA-Fx]` that starts
/// with a digit dropped), to group lines that differ only in them.
pub fn kind_of(message: &str) -> String {
    let mut out = String::new();
    let mut chars = message.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            while chars
                .next_if(|c| c.is_ascii_hexdigit() || *c == 'x')
                .is_some()
            {}
        } else {
            out.push(c);
        }
    }
    out
}

/// The `kind=<hash>` of a MISMATCH/DEVIATION/NOTE line.
pub(super) fn line_kind(line: &str) -> Option<&str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("kind="))
}

/// Parses `fuzz: <N> iterations, seed <S>: <K> hypervisor failures`.
pub fn parse_result_line(line: &str) -> Option<(u64, u64, u64)> {
    let rest = strip_guest(line).strip_prefix("fuzz: ")?;
    let (n, rest) = rest.split_once(" iterations, seed ")?;
    let (s, rest) = rest.split_once(": ")?;
    let k = rest.strip_suffix(" hypervisor failures")?;
    Some((n.parse().ok()?, s.parse().ok()?, k.parse().ok()?))
}

/// The line without a `[guest fuzz] ` console prefix.
fn strip_guest(line: &str) -> &str {
    let line = line.trim_end_matches(['\r', '\n']);
    match line.strip_prefix("[guest ") {
        Some(rest) => rest.split_once("] ").map_or(line, |(_, l)| l),
        None => line,
    }
}

/// Reads one boot's serial output.
pub fn parse_boot(serial: &str) -> BootReport {
    let mut r = BootReport::default();
    let mut in_histogram = false;
    for raw in serial.lines() {
        let line = strip_guest(raw);
        if line.contains("the CPU refused a vmcb12 the checks accepted") {
            r.cpu_refusals += 1;
        }
        if let Some(result) = parse_result_line(line) {
            r.result = Some(result);
        }
        let Some(body) = line.strip_prefix("fuzz: ") else {
            in_histogram = false;
            continue;
        };
        if body.starts_with("histogram") {
            in_histogram = true;
            continue;
        }
        if in_histogram {
            if let Some((n, name)) = body.trim_start().split_once("  ") {
                if let Ok(n) = n.trim().parse::<u64>() {
                    *r.histogram.entry(name.trim().to_string()).or_default() += n;
                    continue;
                }
            }
            in_histogram = false;
        }
        if body.starts_with("FAILURE ") {
            r.failures.push(line.to_string());
        } else if body.starts_with("MISMATCH ") {
            r.mismatches.push(line.to_string());
        } else if body.starts_with("DEVIATION ") {
            r.deviations.push(line.to_string());
        } else if body.starts_with("NOTE ") {
            r.notes.push(line.to_string());
        } else if let Some(rest) = body.strip_prefix("kind ") {
            if let Some((hash, n)) = rest.split_once(' ') {
                *r.kinds.entry(hash.to_string()).or_default() += n.parse().unwrap_or(0);
            }
        } else if let Some(rest) = body.strip_prefix("progress ") {
            r.last_iteration = rest
                .split_whitespace()
                .find_map(|w| w.strip_prefix("iter="))
                .and_then(|i| i.parse().ok());
        } else if let Some((_, rest)) = body.split_once(" oracle mismatches, ") {
            r.deviation_count = rest
                .split_once(' ')
                .and_then(|(d, _)| d.parse().ok())
                .unwrap_or(0);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_result_line() {
        assert_eq!(
            parse_result_line("fuzz: 20000 iterations, seed 7: 3 hypervisor failures\r"),
            Some((20000, 7, 3))
        );
        assert_eq!(
            parse_result_line("fuzz: 1 iterations, seed x: 0 hypervisor failures"),
            None
        );
        assert_eq!(parse_result_line("fuzz: 20000 iterations in 3 ms"), None);
    }

    #[test]
    fn parses_a_boot() {
        let serial = "\
fuzz: seed 1 iterations 0..300
[guest fuzz] fuzz: progress seed=1 iter=100
[guest fuzz] fuzz: MISMATCH kind=00000000000000ab seed=1 iter=48 mode=vmmcall fields=event_inj action=none: EVENTINJ still valid
[guest fuzz] fuzz: DEVIATION seed=1 iter=60 mode=bytes fields=cr0 action=vmrun_bad: #GP
[guest fuzz] fuzz: progress seed=1 iter=200
[WARN ] vm fuzz: the CPU refused a vmcb12 the checks accepted; VMEXIT_INVALID for L1
[guest fuzz] fuzz: NOTE seed=1 iter=201 mode=bytes fields=cr0 action=none: legal vmcb12 refused
fuzz: FAILURE seed=1 iter=210: L0 stopped the VM while L2 ran: nested page fault (replay: ...)
fuzz: histogram of what L1 saw after its VMRUNs:
fuzz:          120  Hlt (0x78)
fuzz:            7  VMEXIT_INVALID
fuzz: kind 00000000000000ab 12
fuzz: kind 00000000000000cd 3
fuzz: 1 oracle mismatches, 4 emulator deviations (not counted), 2 legal-looking vmcb12s ended in VMEXIT_INVALID
fuzz: 300 iterations, seed 1: 2 hypervisor failures
";
        let r = parse_boot(serial);
        assert_eq!(r.result, Some((300, 1, 2)));
        assert_eq!(r.last_iteration, Some(200));
        assert_eq!(r.mismatches.len(), 1);
        assert!(r.mismatches[0].starts_with("fuzz: MISMATCH kind=00000000000000ab seed=1 iter=48"));
        assert_eq!(r.deviations.len(), 1);
        assert_eq!(r.failures.len(), 1);
        assert_eq!(r.deviation_count, 4);
        assert_eq!(r.histogram.get("Hlt (0x78)"), Some(&120));
        assert_eq!(r.histogram.get("VMEXIT_INVALID"), Some(&7));
        assert_eq!(r.histogram.len(), 2);
        assert_eq!((r.notes.len(), r.cpu_refusals), (1, 1));
        assert_eq!(r.kinds.get("00000000000000ab"), Some(&12));
        assert_eq!(r.kinds.get("00000000000000cd"), Some(&3));
        assert_eq!(line_kind(&r.mismatches[0]), Some("00000000000000ab"));
        assert_eq!(kind_of("VMRUN 0x1000 ran, exit 0x81"), "VMRUN  ran, exit ");
    }

    #[test]
    fn a_crashed_boot_has_no_result() {
        let r =
            parse_boot("[guest fuzz] fuzz: progress seed=1 iter=1700\nqemu: fatal: invalid tss\n");
        assert_eq!(r.result, None);
        assert_eq!(r.last_iteration, Some(1700));
    }
}
