//! `cargo xtask`: see `cargo xtask --help`. The work is done by the library.

use std::process::ExitCode;

use xtask::cli::{self, Task};
use xtask::error::Kind as ErrorKind;
use xtask::limine::Network;
use xtask::{tasks, Result};

fn main() -> ExitCode {
    let task = match cli::parse(std::env::args().skip(1)) {
        Ok(task) => task,
        Err(e) => return fail(&e),
    };
    if let Task::Run(args) = &task {
        if args.guest.is_some() {
            return ExitCode::from(run_guest(args));
        }
    }
    match execute(task) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => fail(&e),
    }
}

/// Reports an error; the exit status says which kind (README "Exit status").
fn fail(e: &xtask::Error) -> ExitCode {
    match e.kind() {
        ErrorKind::Usage => eprintln!("xtask: {e}"),
        ErrorKind::Failed => eprintln!("xtask: error: {e}"),
    }
    ExitCode::from(e.exit_code())
}

/// `run --guest`: QEMU's status as it is (xtask::guest); xtask's own
/// failures must not look like one.
fn run_guest(args: &cli::RunArgs) -> u8 {
    match tasks::run::run_guest(args) {
        Ok(status) => status,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            xtask::guest::XTASK_FAILED_STATUS
        }
    }
}

/// Runs a command; `Ok(false)` is a run whose failure was already reported.
fn execute(task: Task) -> Result<bool> {
    match task {
        Task::Help => print!("{}", cli::USAGE),
        Task::CommandHelp(command) => print!("{}", cli::command_usage(command)),
        Task::Build { release } => tasks::build::build(release)?,
        Task::Image {
            release,
            cmdline,
            offline,
        } => tasks::image::image(release, &cmdline, Network::from_offline_flag(offline))?,
        Task::Test { release, offline } => {
            tasks::test::test(release, Network::from_offline_flag(offline))?
        }
        Task::Lint => return tasks::lint::lint(),
        Task::Bench { kut_dir } => tasks::bench::bench(kut_dir)?,
        Task::Fuzz(args) => return tasks::fuzz::fuzz(&args),
        Task::Kut(args) => return tasks::kut::kut(&args),
        Task::Mutants { list, names, jobs } => return tasks::mutants::mutants(list, &names, jobs),
        Task::Run(args) => {
            let verdict = tasks::run::run(&args)?;
            eprintln!("xtask: {verdict}");
            return Ok(verdict.is_success());
        }
    }
    Ok(true)
}
