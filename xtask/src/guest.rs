//! `cargo xtask run --guest FILE`: the hypervisor runs FILE (a Multiboot 1
//! kernel such as kvm-unit-tests' `x86/svm.flat`, or an ELF64) as its one
//! guest instead of the self-tests.
//!
//! The file travels as a boot module (QEMU `-initrd`, which QEMU's PVH boot
//! puts in the start info's module list; a Limine `module_path`). What the
//! guest should see travels on the kernel command line, after the kernel's
//! own words: `guest=<name> guest_mem=<MiB> -- <guest words>`. `<name>` is
//! the file's base name, the first word of the guest's Multiboot command
//! line as QEMU makes it (`"<file> <args>"`; kvm-unit-tests drops it as
//! argv[0]); everything after the first `--` is the guest's, verbatim.
//!
//! Exit status: in this mode `cargo xtask run` exits with QEMU's own status,
//! so a test runner can swap bare QEMU for the hypervisor. The guest's write
//! of C to port 0xF4 gives `(C << 1) | 1`, as under bare QEMU. The
//! hypervisor's own verdicts are the odd statuses below, which
//! kvm-unit-tests never produces (it uses 1, 3, 77 and 127).

use std::path::{Path, PathBuf};

/// Guest RAM when `--guest-mem` is not given (what kvm-unit-tests' own
/// runner gives its tests).
pub const DEFAULT_MEM_MIB: u32 = 256;
/// Largest `--guest-mem`: the PVH boot maps (and the kernel uses) RAM below
/// 4 GiB only, and QEMU's q35 machine splits RAM at 2 GiB beyond ~2.75 GiB.
pub const MAX_MEM_MIB: u32 = 2048;
/// What the hypervisor needs besides the guest's RAM (kernel, heap, page
/// tables, the module itself), in MiB of QEMU `-m`.
pub const HYPERVISOR_MIB: u32 = 256;

/// QEMU status when the guest died: triple fault, an exit the hypervisor
/// cannot handle, a nested page fault it cannot resolve (kernel exit code
/// 0x13, `hv/src/arch/port.rs`).
pub const GUEST_DIED_STATUS: i32 = (0x13 << 1) | 1;
/// QEMU status when the guest image could not be loaded (malformed, too big
/// for its RAM, missing): nothing of it ran (kernel exit code 0x14).
pub const BAD_IMAGE_STATUS: i32 = (0x14 << 1) | 1;
/// xtask's own status when QEMU was killed at `--timeout` (as coreutils'
/// `timeout`).
pub const TIMEOUT_STATUS: u8 = 124;
/// xtask's own status when it failed before or around QEMU (build, QEMU
/// not startable): never a status QEMU's exit device can give (those are odd).
pub const XTASK_FAILED_STATUS: u8 = 126;

/// The kernel command-line key naming the guest (its Multiboot argv[0]).
pub const GUEST_KEY: &str = "guest";
/// The kernel command-line key giving the guest's RAM in MiB.
pub const GUEST_MEM_KEY: &str = "guest_mem";
/// The kernel command-line key giving the guest's vCPU count.
pub const GUEST_CPUS_KEY: &str = "guest_cpus";
/// Separates the kernel's words from the guest's.
pub const SEPARATOR: &str = "--";

/// What `--guest`, `--append` and `--guest-mem` asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestArgs {
    /// The image to run.
    pub file: PathBuf,
    /// The guest's command line after its name (may be empty).
    pub append: String,
    /// Guest RAM in MiB.
    pub mem_mib: u32,
    /// vCPUs (`--guest-cpus`, default 1).
    pub cpus: u32,
    /// Multiboot boot modules (`--guest-module`, in order); each one's
    /// string is its file's base name.
    pub modules: Vec<PathBuf>,
}

impl GuestArgs {
    /// The guest's name on the kernel command line and as its argv[0]: the
    /// file's base name, one word (bytes other than printable ASCII become
    /// `_`, so the word survives the command line).
    pub fn name(&self) -> String {
        word_of(&self.file)
    }

    /// The whole kernel command line: the kernel's own words, the guest
    /// keys, the separator, then the guest's words.
    pub fn kernel_cmdline(&self, kernel_words: &[String]) -> Vec<String> {
        let mut words = kernel_words.to_vec();
        words.push(format!("{GUEST_KEY}={}", self.name()));
        words.push(format!("{GUEST_MEM_KEY}={}", self.mem_mib));
        if self.cpus > 1 {
            words.push(format!("{GUEST_CPUS_KEY}={}", self.cpus));
        }
        words.push(SEPARATOR.into());
        words.extend(self.append.split_whitespace().map(String::from));
        words
    }

    /// QEMU's `-m` in MiB: the guest's RAM plus the hypervisor's share, and
    /// never less than the self-tests' machine.
    pub fn qemu_memory_mib(&self) -> u32 {
        (self.mem_mib + HYPERVISOR_MIB).max(crate::qemu::MEMORY_MIB)
    }
}

/// A file's base name as one command-line word: bytes other than printable
/// ASCII become `_`; "guest" when there is none.
fn word_of(file: &Path) -> String {
    let base = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name: String = base
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect();
    if name.is_empty() {
        "guest".into()
    } else {
        name
    }
}

/// The magic of a guest pack (`svm::boot_pack`, which the kernel reads).
pub const PACK_MAGIC: &[u8; 8] = b"HVPACK01";
/// Most files in a pack (the image and 15 modules; `svm::boot_pack`).
pub const PACK_MAX_FILES: usize = 16;

/// Packs named files into one boot module (`svm::boot_pack` has the
/// layout): QEMU 7.2's PVH loader takes one `-initrd`, so the guest image
/// and its Multiboot modules travel together.
pub fn pack(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = PACK_MAGIC.to_vec();
    out.extend((files.len() as u32).to_le_bytes());
    out.extend(0u32.to_le_bytes());
    let table = out.len();
    out.resize(table + 16 * files.len(), 0);
    for (i, (name, data)) in files.iter().enumerate() {
        let name_off = out.len() as u32;
        out.extend_from_slice(name.as_bytes());
        out.resize(out.len().next_multiple_of(8), 0);
        let data_off = out.len() as u32;
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(8), 0);
        let fields = [data_off, data.len() as u32, name_off, name.len() as u32];
        for (k, v) in fields.iter().enumerate() {
            let at = table + 16 * i + 4 * k;
            out[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
    }
    out
}

impl GuestArgs {
    /// The file QEMU or Limine hands the kernel: the image itself, or with
    /// modules a pack of the image and the modules, written into `dir`.
    pub fn boot_module(&self, dir: &Path) -> std::io::Result<PathBuf> {
        if self.modules.is_empty() {
            return Ok(self.file.clone());
        }
        let mut files = vec![(self.name(), std::fs::read(&self.file)?)];
        for m in &self.modules {
            files.push((word_of(m), std::fs::read(m)?));
        }
        std::fs::create_dir_all(dir)?;
        let out = dir.join("guest-pack.bin");
        std::fs::write(&out, pack(&files))?;
        Ok(out)
    }
}

/// Parses `--guest-mem`: MiB, even (guest RAM is made of 2 MiB pages),
/// from 2 to [`MAX_MEM_MIB`].
pub fn parse_mem_mib(word: &str) -> std::result::Result<u32, &'static str> {
    match word.parse::<u32>() {
        Ok(mib) if (2..=MAX_MEM_MIB).contains(&mib) && mib.is_multiple_of(2) => Ok(mib),
        _ => Err("an even number of MiB from 2 to 2048"),
    }
}

/// Checks that `--guest FILE` names a readable regular file.
pub fn check_file(file: &Path) -> std::result::Result<(), String> {
    match std::fs::metadata(file) {
        Ok(m) if m.is_file() && m.len() > 0 => Ok(()),
        Ok(m) if m.is_file() => Err(format!("--guest {}: the file is empty", file.display())),
        Ok(_) => Err(format!("--guest {}: not a regular file", file.display())),
        Err(e) => Err(format!("--guest {}: {e}", file.display())),
    }
}

/// Checks that `--guest-module FILE` names a regular file (it may be
/// empty: an empty module is a module).
pub fn check_module(file: &Path) -> std::result::Result<(), String> {
    match std::fs::metadata(file) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(format!(
            "--guest-module {}: not a regular file",
            file.display()
        )),
        Err(e) => Err(format!("--guest-module {}: {e}", file.display())),
    }
}

/// What `cargo xtask run --guest` exits with for QEMU's end: QEMU's status
/// as it is; a timeout or a signal, xtask's own.
pub fn exit_status(outcome: &crate::runner::Outcome) -> u8 {
    if outcome.timed_out.is_some() {
        return TIMEOUT_STATUS;
    }
    match (outcome.status, outcome.signal) {
        (Some(status), _) => (status & 0xff) as u8,
        // As a shell reports a process killed by a signal.
        (None, Some(signal)) => (128 + signal).clamp(0, 255) as u8,
        (None, None) => XTASK_FAILED_STATUS,
    }
}

/// A line for stderr saying what QEMU's status means in guest mode.
pub fn describe_status(outcome: &crate::runner::Outcome) -> String {
    if let Some(t) = outcome.timed_out {
        return format!(
            "no end within {} s; QEMU killed (--timeout), exit status {TIMEOUT_STATUS}",
            t.as_secs_f64()
        );
    }
    match (outcome.status, outcome.signal) {
        (Some(GUEST_DIED_STATUS), _) => {
            format!(
                "the guest died (see the hypervisor's report) (qemu status {GUEST_DIED_STATUS})"
            )
        }
        (Some(BAD_IMAGE_STATUS), _) => {
            format!("the guest image could not be loaded (qemu status {BAD_IMAGE_STATUS})")
        }
        (Some(s), _) if s == crate::verdict::FAILURE_STATUS => {
            format!("the hypervisor failed (qemu status {s})")
        }
        (Some(s), _) if s == crate::verdict::NOTHING_RAN_STATUS => {
            format!("the hypervisor could not run the guest: no usable SVM (qemu status {s})")
        }
        (Some(0), _) => "the hypervisor itself reset or triple-faulted (qemu status 0)".into(),
        (Some(s), _) if s & 1 == 1 => {
            format!(
                "guest wrote {} to the exit device (qemu status {s})",
                s >> 1
            )
        }
        (Some(s), _) => format!("qemu exited with status {s}"),
        (None, Some(signal)) => format!("qemu was killed by signal {signal}"),
        (None, None) => "qemu ended without a status".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::Outcome;

    fn guest(file: &str, append: &str) -> GuestArgs {
        GuestArgs {
            file: file.into(),
            append: append.into(),
            mem_mib: DEFAULT_MEM_MIB,
            cpus: 1,
            modules: Vec::new(),
        }
    }

    #[test]
    fn pack_lays_out_names_and_data() {
        let bytes = pack(&[
            ("svm.flat".into(), vec![1, 2, 3]),
            ("env".into(), b"NR_CPUS=1\n".to_vec()),
        ]);
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        assert_eq!(&bytes[..8], PACK_MAGIC);
        assert_eq!(u32_at(8), 2);
        let slice = |e: usize, k: usize| {
            let (off, len) = (u32_at(16 + 16 * e + 4 * k), u32_at(16 + 16 * e + 4 * k + 4));
            &bytes[off as usize..(off + len) as usize]
        };
        assert_eq!(
            (slice(0, 0), slice(0, 2)),
            (&[1u8, 2, 3][..], &b"svm.flat"[..])
        );
        assert_eq!(
            (slice(1, 0), slice(1, 2)),
            (&b"NR_CPUS=1\n"[..], &b"env"[..])
        );
        assert_eq!(u32_at(16) % 8, 0, "data 8-aligned");
    }

    #[test]
    fn without_modules_the_image_is_the_boot_module() {
        let g = guest("/work/kut/x86/svm.flat", "");
        let dir = std::env::temp_dir();
        assert_eq!(g.boot_module(&dir).unwrap(), g.file);
        let mut g = guest("Cargo.toml", "");
        g.modules.push("/nonexistent/env".into());
        assert!(g.boot_module(&dir).is_err());
    }

    #[test]
    fn cmdline_puts_the_guest_words_after_the_separator() {
        let g = guest("/work/kut/x86/svm.flat", "vmrun  -npt_*  ");
        assert_eq!(
            g.kernel_cmdline(&["log=warn".into()]),
            [
                "log=warn",
                "guest=svm.flat",
                "guest_mem=256",
                "--",
                "vmrun",
                "-npt_*"
            ]
        );
        // No words: the separator still ends the kernel's part.
        assert_eq!(
            guest("x.elf", "").kernel_cmdline(&[]),
            ["guest=x.elf", "guest_mem=256", "--"]
        );
        // A guest word that looks like a kernel key stays the guest's.
        let words = guest("k", "tests=x --").kernel_cmdline(&[]);
        assert_eq!(words[2..], ["--", "tests=x", "--"]);
    }

    #[test]
    fn the_name_is_one_printable_word() {
        assert_eq!(guest("/a b/my kernel.elf", "").name(), "my_kernel.elf");
        assert_eq!(guest("/", "").name(), "guest");
        assert_eq!(guest("dir/k\u{e9}rn", "").name(), "k_rn");
    }

    #[test]
    fn memory_fits_the_guest_and_the_hypervisor() {
        let mut g = guest("k", "");
        assert_eq!(g.qemu_memory_mib(), 512);
        g.mem_mib = 1024;
        assert_eq!(g.qemu_memory_mib(), 1024 + HYPERVISOR_MIB);
        g.mem_mib = 2;
        assert_eq!(g.qemu_memory_mib(), crate::qemu::MEMORY_MIB);
    }

    #[test]
    fn guest_mem_values() {
        assert_eq!(parse_mem_mib("256"), Ok(256));
        assert_eq!(parse_mem_mib("2"), Ok(2));
        assert_eq!(parse_mem_mib("2048"), Ok(2048));
        for bad in ["0", "3", "2050", "-2", "1.5", "", "256M"] {
            assert!(parse_mem_mib(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn file_checks() {
        assert!(check_file(Path::new("/nonexistent/svm.flat"))
            .unwrap_err()
            .contains("/nonexistent/svm.flat"));
        assert!(check_file(Path::new("/"))
            .unwrap_err()
            .contains("not a regular file"));
        // Tests run in the crate's directory.
        assert_eq!(check_file(Path::new("Cargo.toml")), Ok(()));
    }

    fn exited(status: i32) -> Outcome {
        Outcome {
            status: Some(status),
            ..Outcome::default()
        }
    }

    #[test]
    fn exit_status_is_qemus() {
        for status in [
            0,
            1,
            3,
            77,
            127,
            33,
            35,
            GUEST_DIED_STATUS,
            BAD_IMAGE_STATUS,
        ] {
            assert_eq!(i32::from(exit_status(&exited(status))), status);
        }
        let timed_out = Outcome {
            timed_out: Some(std::time::Duration::from_secs(1)),
            ..Outcome::default()
        };
        assert_eq!(exit_status(&timed_out), TIMEOUT_STATUS);
        let killed = Outcome {
            signal: Some(9),
            ..Outcome::default()
        };
        assert_eq!(exit_status(&killed), 137);
    }

    #[test]
    fn our_statuses_are_not_kvm_unit_tests_ones() {
        for ours in [GUEST_DIED_STATUS, BAD_IMAGE_STATUS] {
            assert!(![0, 1, 3, 77, 127].contains(&ours));
            assert!(![
                crate::verdict::SUCCESS_STATUS,
                crate::verdict::FAILURE_STATUS,
                crate::verdict::NOTHING_RAN_STATUS
            ]
            .contains(&ours));
        }
        assert_eq!((GUEST_DIED_STATUS, BAD_IMAGE_STATUS), (39, 41));
        assert_eq!(
            describe_status(&exited(3)),
            "guest wrote 1 to the exit device (qemu status 3)"
        );
    }
}
