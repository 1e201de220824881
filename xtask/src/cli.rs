//! The command line of `cargo xtask`: parsed by hand, since it is small and
//! the tool should build in seconds.

use std::time::Duration;

use crate::accel::Accel;
use crate::{bail, Result};

pub const USAGE: &str = "\
usage: cargo xtask <command> [options] [-- <kernel command line words>]

commands:
  build   build the kernel and the guest stubs
  run     build, boot under QEMU with the serial console on stdout, exit with the
          kernel's verdict (0 only when it reports success)
  image   build target/hv.iso (BIOS+UEFI, CD or USB) and target/hv.img (USB disk)
  test    host unit tests of every crate, then the QEMU boot tests
  lint    rustfmt check and clippy (host crates and bare-metal crates)
  bench   instructions per exit round trip, counted under QEMU -icount (release kernel)
  fuzz    the hostile-L1 fuzzer under QEMU TCG (release kernel): histogram, failures,
          `fuzz: N iterations, seed S: K hypervisor failures`; fails when K > 0 or
          QEMU died
  mutants apply each mutation of xtask/mutants.txt to a scratch copy and run the guest
          self-tests it names (TCG, direct boot); every one must be killed.
          `mutants --list` lists them; `mutants NAME...` runs those only

options:
  --release                 optimized kernel (build, run, image, test)
  --boot limine|direct      run: through Limine (default when available) or
                            QEMU's direct PVH boot
  --accel kvm|tcg           run: default kvm when /dev/kvm offers SVM, else tcg
  --firmware bios|uefi      run: default bios; uefi needs Limine
  --gdb                     run: wait for gdb on :1234 before the first instruction
  --timeout SECS            run: kill QEMU and fail after SECS seconds
  --offline                 run, image, test: never download Limine (a failed
                            download is remembered for an hour anyway)
  -- WORDS...               run, image: kernel command line (e.g. fault=page)
  --seed S                  fuzz: seed (default: from the clock, printed)
  --iterations N            fuzz: iterations (default 10000)
  --minutes M               fuzz: stop after M minutes
  --start I                 fuzz: first iteration (to replay one: --iterations 1)

environment:
  LIMINE_DIR=DIR            Limine binaries to use instead of the pinned release
  XTASK_VERBOSE=1           print every command before running it
";

/// A parsed command.
#[derive(Debug, Clone, PartialEq)]
pub enum Task {
    Help,
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
    Bench,
    Fuzz(crate::tasks::fuzz::FuzzArgs),
    Mutants {
        list: bool,
        names: Vec<String>,
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
}

/// Parses the arguments after `cargo xtask`.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Task> {
    let mut args = args.into_iter();
    let Some(command) = args.next() else {
        return Ok(Task::Help);
    };
    let mut options = Options::new(&command, args.collect());
    let task = match command.as_str() {
        "help" | "-h" | "--help" => Task::Help,
        "build" => Task::Build {
            release: options.flag("--release"),
        },
        "run" => Task::Run(RunArgs {
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
        }),
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
        "bench" => Task::Bench,
        "fuzz" => Task::Fuzz(parse_fuzz(&mut options)?),
        "mutants" => Task::Mutants {
            list: options.flag("--list"),
            names: options.positional(),
        },
        other => bail!("unknown command `{other}` (see cargo xtask --help)"),
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
            None => bail!("{name} needs a value"),
        };
        match parse(&value) {
            Ok(parsed) => Ok(Some(parsed)),
            Err(expected) => bail!("{name} {value}: expected {expected}"),
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
            bail!(
                "`{}` does not take `{word}` (see cargo xtask --help)",
                self.command
            );
        }
        if self.cmdline.is_some() {
            bail!("`{}` takes no kernel command line after `--`", self.command);
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
            "run --release --boot direct --accel=tcg --firmware bios --gdb --timeout 20 -- fault=page x",
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
            })
        );
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
    fn mutants_takes_names_and_list() {
        assert_eq!(
            parse_words("mutants --list a b").unwrap(),
            Task::Mutants {
                list: true,
                names: vec!["a".into(), "b".into()],
            }
        );
        assert_eq!(
            parse_words("mutants").unwrap(),
            Task::Mutants {
                list: false,
                names: vec![],
            }
        );
        assert!(parse_words("mutants --release").is_err());
    }

    #[test]
    fn rejects_bad_values_and_stray_options() {
        assert!(parse_words("run --boot grub").is_err());
        assert!(parse_words("run --timeout").is_err());
        assert!(parse_words("run --timeout -3").is_err());
        assert!(parse_words("build --gdb").is_err());
        assert!(parse_words("lint -- x").is_err());
        assert!(parse_words("frobnicate").is_err());
    }
}
