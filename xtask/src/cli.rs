//! The command line of `cargo xtask`: parsed by hand, since it is small and
//! the tool should build in seconds.

use std::time::Duration;

use crate::accel::Accel;
use crate::guest::{self, GuestArgs};
use crate::{usage, Result};

pub const USAGE: &str = "\
usage: cargo xtask <command> [options] [-- <kernel command line words>]

commands:
  build   build the kernel and the guest stubs
  run     build, boot under QEMU with the serial console on stdout, exit with the
          kernel's verdict (0 only when it reports success)
  image   build target/hv.iso (BIOS+UEFI, CD or USB) and target/hv.img (USB disk)
  test    host unit tests of every crate, then the QEMU boot tests
  lint    rustfmt check and clippy (host crates and bare-metal crates)
  bench   instructions per exit round trip, counted under QEMU -icount (release kernel);
          with a kvm-unit-tests tree also its latency subtests as L1 under ours and
          under bare QEMU TCG, with the ratio
  fuzz    the hostile-L1 fuzzer under QEMU TCG (release kernel): histogram, failures,
          `fuzz: N iterations, seed S: K hypervisor failures`; fails when K > 0 or
          QEMU died
  kut     kvm-unit-tests' SVM suite (x86/svm.flat, x86/svm_npt.flat of a built
          tree), one VM per subtest under our hypervisor (and bare QEMU TCG with
          --compare): `name  ours  qemu` per subtest (PASS, FAIL, SKIP, TIMEOUT,
          CRASH), totals, wall time. Fails when a subtest crashed or timed out
          under ours, or nothing ran (no tree: it says how to get one)
  mutants apply each mutation of xtask/mutants.txt to a scratch copy and run the guest
          self-tests it names (TCG, direct boot); every one must be killed.
          `mutants --list` lists them; `mutants NAME...` runs those only

options (each says which commands take it; `cargo xtask <command> --help`
shows one command's):
  --release                 build, run, image, test, kut: optimized kernel
                            (kut: the default)
  --debug                   kut: the debug kernel (debug assertions, slower)
  --boot limine|direct      run: through Limine (default when available) or
                            QEMU's direct PVH boot
  --accel kvm|tcg           run: default kvm when /dev/kvm offers SVM, else tcg
  --firmware bios|uefi      run: default bios; uefi needs Limine
  --gdb                     run: wait for gdb on :1234 before the first instruction
  --timeout SECS            run: kill QEMU and fail after SECS seconds
  --guest FILE              run: the hypervisor runs FILE (Multiboot 1, e.g.
                            kvm-unit-tests' x86/svm.flat, or ELF64) as its one
                            guest, offered nested SVM, instead of the
                            self-tests; its COM1 output is printed verbatim and
                            run exits with QEMU's status (see guest mode below)
  --append WORDS            run: the guest's command line after its name
                            (one argument; needs --guest)
  --guest-mem MIB           run: the guest's RAM in MiB, even, 2-2048 (default
                            256; needs --guest)
  --guest-cpus N            run: the guest's vCPU count (default 1, at most
                            64; needs --guest), also fw_cfg's CPU count; each
                            vCPU has a CPU of its own when --smp has enough,
                            else vCPUs share CPUs (time-sliced)
  --guest-module FILE       run: a Multiboot boot module for the guest
                            (repeatable, in order; its string is the file's
                            name; needs --guest and a Multiboot image)
  --no-build                run: boot the kernel built last (no cargo build)
  --smp N                   run: QEMU's CPU count (default 2); every CPU runs
                            the hypervisor
  --offline                 run, image, test: never download Limine (a failed
                            download is remembered for an hour anyway)
  --list                    mutants, kut: list the mutations or subtests, run none
  --jobs N                  mutants: mutations tried at once, each in its own
                            scratch copy (default: the host's CPUs, at most 4)
  -- WORDS...               run, image: kernel command line (e.g. fault=page)
  --kut-dir DIR             kut, bench: the built kvm-unit-tests tree (else
                            KUT_DIR; bench: adds its latency subtests as rows)
  --only REGEX              kut: subtests whose name (spaces as _) matches;
                            reg_corruption runs only when REGEX contains its name
  --compare                 kut: also run each subtest under bare QEMU TCG
  --smp N                   kut: CPUs of the bare QEMU VM and vCPUs of the
                            guest under ours (default 1)
  --host-cpus N             kut: QEMU's CPU count under ours (default: --smp,
                            at least 2); fewer than --smp time-slices vCPUs
  --mem MiB                 kut: RAM of the VM, even, 2-2048 (default 256)
  --verbose                 kut: print the output of runs that failed
  --timeout SECS            kut: kill a run after SECS seconds (default 120)
  --seed S                  fuzz: seed (default: from the clock, printed)
  --iterations N            fuzz: iterations (default 10000)
  --minutes M               fuzz: stop after M minutes
  --start I                 fuzz: first iteration (to replay one: --iterations 1)

exit status: 0 success; 1 the work failed (build, QEMU, a kernel verdict other
than success, nothing ran); 2 a bad command line (unknown command or flag, bad
value, flags that do not go together, --accel kvm where KVM offers no SVM,
a --guest FILE that is missing)

guest mode (run --guest): run exits with QEMU's own status, as a runner of
bare QEMU would see it: (C<<1)|1 when the guest wrote C to port 0xF4 (so 1,
3, 77, 127 for kvm-unit-tests). The hypervisor's own statuses are 39 (the
guest died: triple fault, unhandled exit, unresolvable nested page fault;
a `hv: ` report precedes it), 41 (the image could not be loaded: nothing
ran), 35 (the hypervisor failed), 37 (no usable SVM). xtask's own: 2 (bad
command line), 124 (--timeout), 126 (xtask failed: build, QEMU not started)

environment:
  LIMINE_DIR=DIR            Limine binaries to use instead of the pinned release
  XTASK_VERBOSE=1           print every command before running it
  KUT_DIR=DIR               kut, bench: the built kvm-unit-tests tree
";

/// A parsed command.
#[derive(Debug, Clone, PartialEq)]
pub enum Task {
    Help,
    /// `cargo xtask <command> --help` or `cargo xtask help <command>`.
    CommandHelp(&'static str),
    Build {
        release: bool,
    },
    Run(RunArgs),
    Image {
        release: bool,
        cmdline: Vec<String>,
        offline: bool,
    },
    Test {
        release: bool,
        offline: bool,
    },
    Lint,
    Bench {
        /// `--kut-dir DIR`: a kvm-unit-tests tree for the latency rows.
        kut_dir: Option<std::path::PathBuf>,
    },
    Fuzz(crate::tasks::fuzz::FuzzArgs),
    Kut(crate::tasks::kut::KutArgs),
    Mutants {
        list: bool,
        names: Vec<String>,
        /// `--jobs N`: mutations tried at once (default: the host's CPUs,
        /// at most 4).
        jobs: Option<u32>,
    },
}

/// How `run` should boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boot {
    Limine,
    Direct,
}

/// Which firmware `run` should use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FirmwareKind {
    #[default]
    Bios,
    Uefi,
}

/// Options of `cargo xtask run`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunArgs {
    pub release: bool,
    /// `None`: Limine when available, else direct.
    pub boot: Option<Boot>,
    /// `None`: KVM when it offers SVM, else TCG.
    pub accel: Option<Accel>,
    pub firmware: FirmwareKind,
    pub gdb: bool,
    pub timeout: Option<Duration>,
    pub cmdline: Vec<String>,
    /// `--offline`: never download Limine.
    pub offline: bool,
    /// `--guest FILE [--append WORDS] [--guest-mem MIB]`.
    pub guest: Option<GuestArgs>,
    /// `--no-build`: boot the kernel built last.
    pub no_build: bool,
    /// `--smp N`: QEMU's CPU count (`None`: [`crate::qemu::DEFAULT_SMP`]).
    pub smp: Option<u32>,
}

impl RunArgs {
    /// Rejects flag combinations that cannot work, before anything is built.
    fn checked(self) -> Result<Self> {
        if let Some(g) = &self.guest {
            // `vmm::multi`: 64 vCPUs at most (one bit each in an IPI's
            // destination set); more than --smp share CPUs.
            if g.cpus > MAX_GUEST_CPUS {
                usage!("--guest-cpus {}: at most {MAX_GUEST_CPUS}", g.cpus);
            }
        }
        if self.boot == Some(Boot::Direct) && self.firmware == FirmwareKind::Uefi {
            usage!(
                "--boot direct works with --firmware bios only (QEMU boots PVH ELFs without UEFI)"
            );
        }
        Ok(self)
    }
}

/// The commands, in the order of [`USAGE`].
pub const COMMANDS: [&str; 9] = [
    "build", "run", "image", "test", "lint", "bench", "fuzz", "kut", "mutants",
];

/// One command's usage, cut from [`USAGE`] so there is one text to keep
/// right: the command's description, the options whose description starts
/// with a list of commands that names it, the exit statuses and the
/// environment.
pub fn command_usage(command: &str) -> String {
    let options = options_of(command);
    let mut out = format!("usage: cargo xtask {command}");
    if !options.is_empty() {
        out.push_str(" [options]");
    }
    if options
        .iter()
        .any(|lines| lines[0].trim_start().starts_with("-- "))
    {
        out.push_str(" [-- <kernel command line words>]");
    }
    out.push_str("\n\n");
    let mut section = "";
    let mut keep = false;
    for line in USAGE.lines() {
        if !line.starts_with(' ') {
            section = line;
            continue;
        }
        if section == "commands:" {
            // A command line starts at column 2, its continuations deeper.
            if !line.starts_with("   ") {
                keep = line.split_whitespace().next() == Some(command);
            }
            if keep {
                out.push_str(line.strip_prefix("  ").unwrap_or(line));
                out.push('\n');
            }
        }
    }
    if !options.is_empty() {
        out.push_str("\noptions:\n");
        for lines in &options {
            for line in lines {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    // The exit statuses and the environment hold for every command.
    if let Some(at) = USAGE.find("\nexit status:") {
        out.push_str(&USAGE[at..]);
    }
    out
}

/// The option entries of [`USAGE`] (first line and continuations) whose
/// description starts with `cmd, cmd: ...` naming `command`.
fn options_of(command: &str) -> Vec<Vec<&'static str>> {
    let mut entries: Vec<Vec<&'static str>> = Vec::new();
    let section = USAGE
        .lines()
        .skip_while(|l| !l.starts_with("options"))
        .skip_while(|l| !l.starts_with(' '))
        .take_while(|l| l.starts_with(' '));
    for line in section {
        match entries.last_mut() {
            // Continuation lines are indented deeper than an option.
            Some(entry) if !line.starts_with("  -") => entry.push(line),
            _ => entries.push(vec![line]),
        }
    }
    entries.retain(|entry| {
        // The description follows the flag after a run of spaces.
        let description = entry[0]
            .trim_start()
            .split_once("  ")
            .map_or("", |(_, rest)| rest.trim_start());
        description
            .split_once(':')
            .is_some_and(|(names, _)| names.split(", ").any(|name| name == command))
    });
    entries
}

/// Parses the arguments after `cargo xtask`.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Task> {
    let mut args = args.into_iter();
    let Some(command) = args.next() else {
        return Ok(Task::Help);
    };
    let mut options = Options::new(&command, args.collect());
    if let Some(known) = COMMANDS.iter().find(|c| **c == command) {
        // Help wins over every other word, so `run --boot x --help` helps.
        if options.flag("--help") | options.flag("-h") {
            return Ok(Task::CommandHelp(known));
        }
    }
    let task = match command.as_str() {
        "help" | "-h" | "--help" => match options.positional().as_slice() {
            [] => Task::Help,
            [name] => match COMMANDS.iter().find(|c| *c == name) {
                Some(known) => Task::CommandHelp(known),
                None => usage!("unknown command `{name}` (see cargo xtask --help)"),
            },
            _ => usage!("`help` takes one command name"),
        },
        "build" => Task::Build {
            release: options.flag("--release"),
        },
        "run" => Task::Run(
            RunArgs {
                release: options.flag("--release"),
                boot: options.value("--boot", parse_boot)?,
                accel: options.value("--accel", |w| Accel::parse(w).ok_or("kvm or tcg"))?,
                firmware: options
                    .value("--firmware", parse_firmware)?
                    .unwrap_or_default(),
                gdb: options.flag("--gdb"),
                timeout: options.value("--timeout", parse_seconds)?,
                cmdline: options.take_cmdline(),
                offline: options.flag("--offline"),
                guest: parse_guest(&mut options)?,
                no_build: options.flag("--no-build"),
                smp: options.value("--smp", parse_count)?,
            }
            .checked()?,
        ),
        "image" => Task::Image {
            release: options.flag("--release"),
            cmdline: options.take_cmdline(),
            offline: options.flag("--offline"),
        },
        "test" => Task::Test {
            release: options.flag("--release"),
            offline: options.flag("--offline"),
        },
        "lint" => Task::Lint,
        "bench" => Task::Bench {
            kut_dir: options.value("--kut-dir", |w| Ok(std::path::PathBuf::from(w)))?,
        },
        "fuzz" => Task::Fuzz(parse_fuzz(&mut options)?),
        "kut" => Task::Kut(parse_kut(&mut options)?),
        "mutants" => Task::Mutants {
            list: options.flag("--list"),
            jobs: options.value("--jobs", parse_count)?,
            names: options.positional(),
        },
        other => usage!("unknown command `{other}` (see cargo xtask --help)"),
    };
    options.finish()?;
    Ok(task)
}

fn parse_fuzz(options: &mut Options) -> Result<crate::tasks::fuzz::FuzzArgs> {
    let defaults = crate::tasks::fuzz::FuzzArgs::default();
    Ok(crate::tasks::fuzz::FuzzArgs {
        seed: options.value("--seed", parse_u64)?,
        iterations: options
            .value("--iterations", parse_u64)?
            .unwrap_or(defaults.iterations),
        minutes: options.value("--minutes", parse_u64)?,
        start: options.value("--start", parse_u64)?.unwrap_or(0),
    })
}

/// `--guest FILE [--append WORDS] [--guest-mem MIB]`: the file must exist,
/// and the other two mean nothing without it.
fn parse_guest(options: &mut Options) -> Result<Option<GuestArgs>> {
    let file = options.value("--guest", |w| Ok(std::path::PathBuf::from(w)))?;
    let append = options.value("--append", |w| Ok(w.to_string()))?;
    let mem_mib = options.value("--guest-mem", guest::parse_mem_mib)?;
    let cpus = options.value("--guest-cpus", parse_count)?;
    let mut modules = Vec::new();
    while let Some(m) = options.value("--guest-module", |w| Ok(std::path::PathBuf::from(w)))? {
        modules.push(m);
    }
    let Some(file) = file else {
        if append.is_some() || mem_mib.is_some() || cpus.is_some() || !modules.is_empty() {
            usage!("--append, --guest-mem, --guest-cpus and --guest-module need --guest FILE");
        }
        return Ok(None);
    };
    if let Err(why) = guest::check_file(&file) {
        usage!("{why}");
    }
    if modules.len() >= guest::PACK_MAX_FILES {
        usage!(
            "--guest-module: at most {} modules",
            guest::PACK_MAX_FILES - 1
        );
    }
    for m in &modules {
        if let Err(why) = guest::check_module(m) {
            usage!("{why}");
        }
    }
    Ok(Some(GuestArgs {
        file,
        append: append.unwrap_or_default(),
        mem_mib: mem_mib.unwrap_or(guest::DEFAULT_MEM_MIB),
        cpus: cpus.unwrap_or(1),
        modules,
    }))
}

fn parse_u64(word: &str) -> std::result::Result<u64, &'static str> {
    word.parse().map_err(|_| "a non-negative integer")
}

fn parse_boot(word: &str) -> std::result::Result<Boot, &'static str> {
    match word {
        "limine" => Ok(Boot::Limine),
        "direct" => Ok(Boot::Direct),
        _ => Err("limine or direct"),
    }
}

fn parse_firmware(word: &str) -> std::result::Result<FirmwareKind, &'static str> {
    match word {
        "bios" => Ok(FirmwareKind::Bios),
        "uefi" => Ok(FirmwareKind::Uefi),
        _ => Err("bios or uefi"),
    }
}

fn parse_seconds(word: &str) -> std::result::Result<Duration, &'static str> {
    match word.parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs.is_finite() => Ok(Duration::from_secs_f64(secs)),
        _ => Err("a positive number of seconds"),
    }
}

fn parse_kut(options: &mut Options) -> Result<crate::tasks::kut::KutArgs> {
    let defaults = crate::tasks::kut::KutArgs::default();
    Ok(crate::tasks::kut::KutArgs {
        kut_dir: options.value("--kut-dir", |w| Ok(std::path::PathBuf::from(w)))?,
        // Compiled (and a bad one refused, exit 2) before anything runs.
        only: options.value("--only", |w| Ok(w.to_string()))?,
        list: options.flag("--list"),
        compare: options.flag("--compare"),
        timeout: options
            .value("--timeout", parse_seconds)?
            .unwrap_or(defaults.timeout),
        smp: options.value("--smp", parse_count)?.unwrap_or(defaults.smp),
        host_cpus: options.value("--host-cpus", parse_count)?,
        mem_mib: options
            .value("--mem", parse_count)?
            .unwrap_or(defaults.mem_mib),
        verbose: options.flag("--verbose"),
        // An optimized kernel unless --debug: kut runs external suites
        // against timeouts (--release is accepted and is the default).
        release: match (options.flag("--release"), options.flag("--debug")) {
            (true, true) => usage!("--release and --debug do not go together"),
            (_, debug) => !debug,
        },
    })
}

/// The most vCPUs a guest may have (`hv::vmm::multi`).
const MAX_GUEST_CPUS: u32 = 64;

fn parse_count(word: &str) -> std::result::Result<u32, &'static str> {
    match word.parse() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("a positive integer"),
    }
}

/// The options of one command, consumed as the command asks for them; what
/// is left at the end was not understood.
struct Options {
    command: String,
    /// `--name` or `--name=value` words and separate values, in order.
    words: Vec<String>,
    /// The words after `--`.
    cmdline: Option<Vec<String>>,
}

impl Options {
    fn new(command: &str, args: Vec<String>) -> Self {
        let (words, cmdline) = match args.iter().position(|a| a == "--") {
            Some(split) => (args[..split].to_vec(), Some(args[split + 1..].to_vec())),
            None => (args, None),
        };
        Options {
            command: command.to_string(),
            words,
            cmdline,
        }
    }

    fn flag(&mut self, name: &str) -> bool {
        let before = self.words.len();
        self.words.retain(|w| w != name);
        self.words.len() != before
    }

    fn value<T>(
        &mut self,
        name: &str,
        parse: impl Fn(&str) -> std::result::Result<T, &'static str>,
    ) -> Result<Option<T>> {
        let prefix = format!("{name}=");
        let Some(at) = self
            .words
            .iter()
            .position(|w| w == name || w.starts_with(&prefix))
        else {
            return Ok(None);
        };
        let word = self.words.remove(at);
        let value = match word.strip_prefix(&prefix) {
            Some(value) => value.to_string(),
            None if at < self.words.len() => self.words.remove(at),
            None => usage!("{name} needs a value"),
        };
        match parse(&value) {
            Ok(parsed) => Ok(Some(parsed)),
            Err(expected) => usage!("{name} {value}: expected {expected}"),
        }
    }

    /// The words that are not options (`--...`), taken.
    fn positional(&mut self) -> Vec<String> {
        let (options, words) = self.words.drain(..).partition(|w| w.starts_with("--"));
        self.words = options;
        words
    }

    fn take_cmdline(&mut self) -> Vec<String> {
        self.cmdline.take().unwrap_or_default()
    }

    fn finish(self) -> Result<()> {
        if let Some(word) = self.words.first() {
            usage!(
                "`{}` does not take `{word}` (see cargo xtask {} --help)",
                self.command,
                self.command
            );
        }
        if self.cmdline.is_some() {
            usage!("`{}` takes no kernel command line after `--`", self.command);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_words(line: &str) -> Result<Task> {
        parse(line.split_whitespace().map(String::from))
    }

    #[test]
    fn no_command_is_help() {
        assert_eq!(parse(Vec::new()).unwrap(), Task::Help);
        assert_eq!(parse_words("--help").unwrap(), Task::Help);
    }

    #[test]
    fn run_takes_every_option() {
        let task = parse_words(
            "run --release --boot direct --accel=tcg --firmware bios --gdb --timeout 20 --smp 4 -- fault=page x",
        )
        .unwrap();
        assert_eq!(
            task,
            Task::Run(RunArgs {
                release: true,
                boot: Some(Boot::Direct),
                accel: Some(Accel::Tcg),
                firmware: FirmwareKind::Bios,
                gdb: true,
                timeout: Some(Duration::from_secs(20)),
                cmdline: vec!["fault=page".into(), "x".into()],
                offline: false,
                guest: None,
                no_build: false,
                smp: Some(4),
            })
        );
        assert_eq!(parse_words("run --smp 0").unwrap_err().exit_code(), 2);
    }

    #[test]
    fn run_takes_a_guest() {
        // Tests run in the crate's directory, where Cargo.toml is a file.
        let task = parse(
            [
                "run",
                "--boot",
                "direct",
                "--guest",
                "Cargo.toml",
                "--append",
                "vmrun -npt_*",
                "--guest-mem=64",
                "--no-build",
                "--",
                "log=warn",
            ]
            .map(String::from),
        )
        .unwrap();
        let Task::Run(args) = task else {
            panic!("not run");
        };
        assert_eq!(
            args.guest,
            Some(GuestArgs {
                file: "Cargo.toml".into(),
                append: "vmrun -npt_*".into(),
                mem_mib: 64,
                cpus: 1,
                modules: Vec::new(),
            })
        );
        assert!(args.no_build);
        assert_eq!(args.cmdline, vec!["log=warn".to_string()]);
        let Task::Run(args) = parse_words("run --guest Cargo.toml").unwrap() else {
            panic!("not run");
        };
        let guest = args.guest.unwrap();
        assert_eq!((guest.append.as_str(), guest.mem_mib), ("", 256));
        // Modules, in order, with either spelling.
        let line = "run --guest Cargo.toml --guest-module src/main.rs --guest-module=Cargo.toml";
        let Task::Run(args) = parse_words(line).unwrap() else {
            panic!("not run");
        };
        let modules = args.guest.unwrap().modules;
        assert_eq!(
            modules,
            [
                std::path::PathBuf::from("src/main.rs"),
                std::path::PathBuf::from("Cargo.toml")
            ]
        );
    }

    #[test]
    fn guest_flags_are_checked_before_anything_runs() {
        for line in [
            "run --append vmrun",
            "run --guest-mem 64",
            "run --guest /nonexistent/svm.flat",
            "run --guest /",
            "run --guest Cargo.toml --guest-mem 63",
            "run --guest Cargo.toml --guest-mem 0",
            "run --guest Cargo.toml --guest-mem lots",
            "run --guest",
            "build --guest Cargo.toml",
            "run --guest-module Cargo.toml",
            "run --guest Cargo.toml --guest-module /nonexistent/env",
            "run --guest Cargo.toml --guest-module /",
            "run --guest Cargo.toml --guest-module",
            "run --guest-cpus 2",
            "run --guest Cargo.toml --guest-cpus 0",
            "run --guest Cargo.toml --guest-cpus 65",
        ] {
            let error = parse_words(line).expect_err(line);
            assert_eq!(error.exit_code(), 2, "{line}: {error}");
        }
        let missing = parse_words("run --guest /nonexistent/svm.flat").unwrap_err();
        assert!(
            missing.to_string().contains("/nonexistent/svm.flat"),
            "{missing}"
        );
        let module =
            parse_words("run --guest Cargo.toml --guest-module /nonexistent/env").unwrap_err();
        assert!(
            module
                .to_string()
                .contains("--guest-module /nonexistent/env"),
            "{module}"
        );
        let mem = parse_words("run --guest Cargo.toml --guest-mem 3").unwrap_err();
        assert!(mem.to_string().contains("even number of MiB"), "{mem}");
        let cpus = parse_words("run --guest Cargo.toml --guest-cpus 65").unwrap_err();
        assert!(cpus.to_string().contains("at most 64"), "{cpus}");
    }

    #[test]
    fn more_guest_cpus_than_cpus_are_time_sliced() {
        for line in [
            "run --guest Cargo.toml --guest-cpus 3",
            "run --guest Cargo.toml --guest-cpus 4 --smp 3",
            "run --guest Cargo.toml --guest-cpus 64 --smp 1",
        ] {
            assert!(parse_words(line).is_ok(), "{line}");
        }
    }

    #[test]
    fn guest_cpus_reach_the_kernel_command_line() {
        let Task::Run(args) = parse_words("run --guest Cargo.toml --guest-cpus 3 --smp 4").unwrap()
        else {
            panic!("not a run");
        };
        let guest = args.guest.unwrap();
        assert_eq!(guest.cpus, 3);
        assert!(guest
            .kernel_cmdline(&[])
            .contains(&"guest_cpus=3".to_string()));
        let Task::Run(one) = parse_words("run --guest Cargo.toml").unwrap() else {
            panic!("not a run");
        };
        let one = one.guest.unwrap();
        assert_eq!(one.cpus, 1);
        assert!(!one
            .kernel_cmdline(&[])
            .iter()
            .any(|w| w.starts_with("guest_cpus")));
    }

    #[test]
    fn run_defaults_leave_choices_open() {
        let Task::Run(args) = parse_words("run").unwrap() else {
            panic!("not run");
        };
        assert_eq!(args, RunArgs::default());
    }

    #[test]
    fn words_after_the_separator_are_not_options() {
        let Task::Run(args) = parse_words("run -- --release").unwrap() else {
            panic!("not run");
        };
        assert!(!args.release);
        assert_eq!(args.cmdline, vec!["--release".to_string()]);
    }

    #[test]
    fn offline_is_taken_by_run_image_and_test_only() {
        let Task::Run(args) = parse_words("run --offline --boot limine").unwrap() else {
            panic!("not run");
        };
        assert!(args.offline);
        assert_eq!(
            parse_words("image --offline").unwrap(),
            Task::Image {
                release: false,
                cmdline: vec![],
                offline: true
            }
        );
        assert_eq!(
            parse_words("test --release --offline").unwrap(),
            Task::Test {
                release: true,
                offline: true
            }
        );
        assert!(parse_words("build --offline").is_err());
        assert!(parse_words("lint --offline").is_err());
    }

    #[test]
    fn fuzz_takes_its_options() {
        use crate::tasks::fuzz::{FuzzArgs, DEFAULT_ITERATIONS};
        assert_eq!(
            parse_words("fuzz").unwrap(),
            Task::Fuzz(FuzzArgs {
                seed: None,
                iterations: DEFAULT_ITERATIONS,
                minutes: None,
                start: 0
            })
        );
        assert_eq!(
            parse_words("fuzz --seed 7 --iterations=20000 --minutes 10 --start 1700").unwrap(),
            Task::Fuzz(FuzzArgs {
                seed: Some(7),
                iterations: 20000,
                minutes: Some(10),
                start: 1700
            })
        );
        assert!(parse_words("fuzz --seed -1").is_err());
        assert!(parse_words("fuzz --iterations").is_err());
        assert!(parse_words("fuzz --release").is_err());
        assert!(parse_words("fuzz -- x").is_err());
    }

    #[test]
    fn kut_takes_its_options() {
        use crate::tasks::kut::KutArgs;
        assert_eq!(parse_words("kut").unwrap(), Task::Kut(KutArgs::default()));
        assert_eq!(
            parse_words(
                "kut --kut-dir /k --only ^npt --compare --timeout 30 --smp 2 --mem=4096 \
                 --verbose --release --list --host-cpus 1"
            )
            .unwrap(),
            Task::Kut(KutArgs {
                kut_dir: Some("/k".into()),
                only: Some("^npt".into()),
                compare: true,
                list: true,
                timeout: Duration::from_secs(30),
                smp: 2,
                host_cpus: Some(1),
                mem_mib: 4096,
                verbose: true,
                release: true,
            })
        );
        let Task::Kut(debug) = parse_words("kut --debug").unwrap() else {
            panic!("kut --debug is kut");
        };
        assert!(!debug.release);
        for line in [
            "kut --release --debug",
            "kut --smp 0",
            "kut --mem x",
            "kut --timeout 0",
            "kut --gdb",
            "kut -- x",
        ] {
            assert_eq!(parse_words(line).expect_err(line).exit_code(), 2, "{line}");
        }
    }

    #[test]
    fn bench_takes_a_kut_dir() {
        assert_eq!(parse_words("bench").unwrap(), Task::Bench { kut_dir: None });
        assert_eq!(
            parse_words("bench --kut-dir /k").unwrap(),
            Task::Bench {
                kut_dir: Some("/k".into())
            }
        );
        assert!(command_usage("bench").contains("--kut-dir DIR"));
        for line in ["bench --kut-dir", "bench --only x", "bench -- x"] {
            assert_eq!(parse_words(line).expect_err(line).exit_code(), 2, "{line}");
        }
    }

    #[test]
    fn mutants_takes_names_and_list() {
        assert_eq!(
            parse_words("mutants --list a b").unwrap(),
            Task::Mutants {
                list: true,
                names: vec!["a".into(), "b".into()],
                jobs: None,
            }
        );
        assert_eq!(
            parse_words("mutants").unwrap(),
            Task::Mutants {
                list: false,
                names: vec![],
                jobs: None,
            }
        );
        assert_eq!(
            parse_words("mutants --jobs 2 a").unwrap(),
            Task::Mutants {
                list: false,
                names: vec!["a".into()],
                jobs: Some(2),
            }
        );
        assert!(parse_words("mutants --release").is_err());
        assert!(parse_words("mutants --jobs 0").is_err());
    }

    #[test]
    fn rejects_bad_values_and_stray_options_as_usage_errors() {
        for line in [
            "run --boot grub",
            "run --timeout",
            "run --timeout -3",
            "build --gdb",
            "lint -- x",
            "frobnicate",
            "frobnicate --help",
            "help frobnicate",
            "run --boot direct --firmware uefi",
            "run --firmware=uefi --boot=direct --release",
        ] {
            let error = parse_words(line).expect_err(line);
            assert_eq!(error.exit_code(), 2, "{line}: {error}");
        }
    }

    #[test]
    fn every_command_has_help() {
        for command in COMMANDS {
            for line in [
                format!("{command} --help"),
                format!("{command} -h"),
                format!("help {command}"),
                // Help wins over other words, even bad ones.
                format!("{command} --bogus --help"),
            ] {
                assert_eq!(
                    parse_words(&line).unwrap(),
                    Task::CommandHelp(command),
                    "{line}"
                );
            }
            let text = command_usage(command);
            assert!(
                text.starts_with(&format!("usage: cargo xtask {command}")),
                "{text}"
            );
            assert!(text.contains("XTASK_VERBOSE"), "{text}");
        }
        // After `--` it is a kernel word, not a request for help.
        let Task::Run(args) = parse_words("run -- --help").unwrap() else {
            panic!("not run");
        };
        assert_eq!(args.cmdline, vec!["--help".to_string()]);
    }

    #[test]
    fn command_help_shows_its_own_options_only() {
        let run = command_usage("run");
        for option in [
            "--release",
            "--boot",
            "--accel",
            "--firmware",
            "--gdb",
            "--timeout",
            "--guest",
            "--append",
            "--guest-mem",
            "--no-build",
            "--smp",
        ] {
            assert!(run.contains(&format!("\n  {option} ")), "{option}: {run}");
        }
        assert!(
            run.contains("QEMU's direct PVH boot"),
            "continuation: {run}"
        );
        assert!(run.contains("[-- <kernel command line words>]"));
        assert!(run.contains("kernel's verdict"), "description: {run}");
        assert!(!run.contains("--seed") && !run.contains("--list"));
        let fuzz = command_usage("fuzz");
        assert!(fuzz.contains("--seed") && fuzz.contains("--start"));
        assert!(!fuzz.contains("--release") && !fuzz.contains("[--"));
        assert!(command_usage("mutants").contains("--list"));
        assert!(!command_usage("lint").contains("options:"));
    }
}
