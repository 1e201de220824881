//! Helpers for the boot tests: find (or build) the kernel, boot it under QEMU
//! through the xtask library, and return what the serial console showed.
//!
//! `cargo xtask test` passes the kernel it built in `HV_KERNEL`; a plain
//! `cargo test -p hv-tests` builds one itself into `target/hv-tests`, a
//! separate target directory so that it does not wait on the lock of the
//! cargo that runs the tests.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use xtask::accel::Accel;
use xtask::kernel::{self, Profile};
use xtask::qemu::{self, Firmware, Medium, RunConfig};
use xtask::runner::{self, Options};
use xtask::verdict::Verdict;
use xtask::workspace;

pub use xtask::verdict::{FAILURE_STATUS, SUCCESS_STATUS};

/// Long enough for an OVMF boot under TCG on a slow machine (about 6 s on the
/// development machine), short enough that a hang fails the run.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// The banner keys every successful boot prints, each at the start of a line.
pub const BANNER_KEYS: [&str; 6] = ["boot: ", "cpu: ", "svm: ", "memory: ", "cpus: ", "tsc: "];

/// Scratch space for the tests: images, debugcon logs, OVMF variables.
pub fn scratch_dir() -> PathBuf {
    workspace::target_dir().join("hv-tests")
}

/// The kernel ELF to boot: `HV_KERNEL`, else built once per test binary.
pub fn kernel() -> &'static Path {
    static KERNEL: OnceLock<PathBuf> = OnceLock::new();
    KERNEL.get_or_init(|| match std::env::var_os("HV_KERNEL") {
        Some(path) if !path.is_empty() => {
            let path = PathBuf::from(path);
            assert!(path.is_file(), "HV_KERNEL={} is no file", path.display());
            path
        }
        _ => kernel::build_kernel(Profile::Debug, &scratch_dir())
            .unwrap_or_else(|e| panic!("building the kernel: {e}")),
    })
}

/// The Multiboot test guest to boot: `HV_MBGUEST` (set by `cargo xtask
/// test`), else built once per test binary into the scratch target directory.
pub fn mbguest() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| match std::env::var_os("HV_MBGUEST") {
        Some(path) if !path.is_empty() => {
            let path = PathBuf::from(path);
            assert!(path.is_file(), "HV_MBGUEST={} is no file", path.display());
            path
        }
        _ => {
            kernel::build_packages(&["guest-stubs"], Profile::Debug, &scratch_dir())
                .unwrap_or_else(|e| panic!("building the guest stubs: {e}"));
            xtask::mbguest::image_path(Profile::Debug, &scratch_dir())
        }
    })
}

/// What one boot showed.
#[derive(Debug)]
pub struct Boot {
    /// What the boot was, for messages.
    pub label: String,
    /// QEMU's exit status; `None` if it was killed (timeout) or crashed.
    pub status: Option<i32>,
    pub verdict: Verdict,
    /// Everything written to COM1, with `\r` removed.
    pub serial: String,
    /// QEMU's own messages.
    pub qemu_stderr: String,
}

impl Boot {
    /// Serial lines, trimmed of line-ending debris.
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.serial.lines().map(|l| l.trim_end_matches('\r'))
    }

    /// The first banner line starting with `key` (e.g. `"boot: "`).
    pub fn banner(&self, key: &str) -> Option<&str> {
        self.lines().find(|line| line.starts_with(key))
    }

    /// The banner keys missing from the serial output.
    pub fn missing_banner_keys(&self) -> Vec<&'static str> {
        BANNER_KEYS
            .into_iter()
            .filter(|key| self.banner(key).is_none())
            .collect()
    }

    /// Asserts that every banner key appears.
    #[track_caller]
    pub fn assert_banner(&self) {
        let missing = self.missing_banner_keys();
        assert!(
            missing.is_empty(),
            "{}: no banner line for {missing:?} (serial output above)",
            self.label
        );
    }

    /// Asserts QEMU's exit status.
    #[track_caller]
    pub fn assert_status(&self, expected: i32) {
        assert_eq!(
            self.status,
            Some(expected),
            "{}: {} (serial output above)",
            self.label,
            self.verdict
        );
    }
}

/// The boot as a report: verdict, serial output and QEMU's messages.
impl fmt::Display for Boot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "--- {}: {}", self.label, self.verdict)?;
        writeln!(f, "--- serial output:")?;
        writeln!(f, "{}", self.serial.trim_end())?;
        if !self.qemu_stderr.trim().is_empty() {
            writeln!(f, "--- qemu stderr:")?;
            writeln!(f, "{}", self.qemu_stderr.trim_end())?;
        }
        write!(f, "---")
    }
}

/// Boots the kernel directly (PVH, no bootloader) under TCG with these kernel
/// command line words.
pub fn boot_direct(cmdline: &[&str]) -> Boot {
    let medium = Medium::Direct {
        kernel: kernel().to_path_buf(),
        cmdline: cmdline.iter().map(|w| w.to_string()).collect(),
    };
    let label = match cmdline {
        [] => "direct boot".to_string(),
        words => format!("direct boot [{}]", words.join(" ")),
    };
    boot(&label, medium, Firmware::Bios)
}

/// [`boot_direct`] on a machine with `smp` CPUs.
pub fn boot_direct_smp(cmdline: &[&str], smp: u32) -> Boot {
    let medium = Medium::Direct {
        kernel: kernel().to_path_buf(),
        cmdline: cmdline.iter().map(|w| w.to_string()).collect(),
    };
    let label = format!("direct boot, {smp} CPUs [{}]", cmdline.join(" "));
    boot_with(&label, medium, Firmware::Bios, smp)
}

/// Boots a medium under TCG, whatever the host offers: the tests must behave
/// the same on every machine.
pub fn boot(label: &str, medium: Medium, firmware: Firmware) -> Boot {
    boot_with(label, medium, firmware, qemu::DEFAULT_SMP)
}

/// [`boot`] on a machine with `smp` CPUs.
pub fn boot_smp(label: &str, medium: Medium, firmware: Firmware, smp: u32) -> Boot {
    boot_with(label, medium, firmware, smp)
}

fn boot_with(label: &str, medium: Medium, firmware: Firmware, smp: u32) -> Boot {
    let config = RunConfig {
        medium,
        firmware,
        accel: Accel::Tcg,
        gdb: false,
        debugcon: run_dir().join("qemu-debugcon.log"),
        icount: false,
        smp,
    };
    let command = qemu::command(&config).unwrap_or_else(|e| panic!("{label}: {e}"));
    let outcome = runner::run(
        command,
        Options {
            timeout: Some(TIMEOUT),
            echo: false,
        },
    )
    .unwrap_or_else(|e| panic!("{label}: {e}"));
    let boot = Boot {
        label: label.to_string(),
        status: outcome.status,
        verdict: Verdict::of(&outcome),
        serial: without_terminal_controls(&outcome.serial.replace('\r', "")),
        qemu_stderr: outcome.stderr,
    };
    // The harness captures this and shows it when the test fails, so every
    // failure comes with the serial output that explains it.
    println!("{boot}");
    boot
}

/// `text` without terminal control sequences (ECMA-48 CSI: ESC `[`, then
/// parameter bytes, up to a final byte): under UEFI the firmware's serial
/// console clears the screen (for OVMF and for Limine) with no line break
/// before the kernel's first line (`ESC[2J ESC[01;01H boot: limine`).
pub fn without_terminal_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            // Parameter and intermediate bytes, then one final byte.
            for c in chars.by_ref() {
                if ('\u{40}'..='\u{7e}').contains(&c) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A fresh directory for one boot's files, since tests boot in parallel.
/// Named `<pid>-<n>`; directories of test processes that have ended are
/// removed on first use, so the scratch space does not grow run after run
/// while the last run's files stay for a look after a failure.
pub fn run_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let runs = scratch_dir().join("runs");
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    if n == 0 {
        remove_stale_runs(&runs);
    }
    let dir = runs.join(format!("{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

fn remove_stale_runs(runs: &Path) {
    let Ok(entries) = std::fs::read_dir(runs) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name.to_string_lossy();
        let pid = pid.split('-').next().unwrap_or_default();
        let alive = Path::new("/proc").join(pid).exists();
        if !alive && !pid.is_empty() {
            // Best effort: a leftover directory only costs disk space.
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// `true` if `haystack` contains `needle` ignoring ASCII case.
pub fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    haystack
        .to_ascii_lowercase()
        .contains(&needle.to_ascii_lowercase())
}

/// The `smp::` self-tests (every CPU runs the hypervisor; multi-vCPU
/// guests), as the kernel names them.
pub const SMP_TESTS: &[&str] = &[
    "smp::every_cpu_runs",
    "smp::ap_host_tsc",
    "smp::ap_watchdog_ticks",
    "smp::mailbox_kick_is_an_ipi",
    "smp::vcpu_ipi",
    "smp::init_sipi_restart",
    "smp::tsc_monotonic_across_vcpus",
    "smp::tsc_skew_compensated",
    "smp::freeze_restore_l1_and_l2",
    "smp::init_in_l2_without_intercept",
    "smp::vcpus_time_sliced",
    "smp::waits_release_vm",
    "smp::tsc_aux_per_cpu",
    "smp::logical_ipi",
    "smp::cross_modified_store",
];
