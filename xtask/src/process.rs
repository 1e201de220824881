//! Running other programs: one place that echoes commands (with
//! `XTASK_VERBOSE=1`) and turns a bad exit status into an error that names the
//! command.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{bail, workspace, Result};

/// True when `XTASK_VERBOSE` is set to something other than `0`: every
/// external command is printed before it runs.
pub fn verbose() -> bool {
    std::env::var_os("XTASK_VERBOSE").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Prints the command when verbose.
pub fn echo(cmd: &Command) {
    if verbose() {
        eprintln!("xtask: $ {}", describe(cmd));
    }
}

/// The command as a shell would read it (environment overrides first), so a
/// verbose log can be pasted into a terminal.
pub fn describe(cmd: &Command) -> String {
    let mut words = Vec::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            words.push(format!(
                "{}={}",
                key.to_string_lossy(),
                quote(&value.to_string_lossy())
            ));
        }
    }
    words.push(quote(&cmd.get_program().to_string_lossy()));
    words.extend(cmd.get_args().map(|a| quote(&a.to_string_lossy())));
    words.join(" ")
}

fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Runs a command with inherited stdio and fails unless it exits with 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    echo(cmd);
    let status = match cmd.status() {
        Ok(status) => status,
        Err(e) => bail!("cannot start `{}`: {e}", program_name(cmd)),
    };
    if !status.success() {
        bail!("`{}` failed ({status})", describe(cmd));
    }
    Ok(())
}

/// Runs a command and returns its standard output; its stderr still reaches
/// the terminal so that the reason for a failure is visible.
pub fn output(cmd: &mut Command) -> Result<String> {
    echo(cmd);
    let out = match cmd.stdin(Stdio::null()).stderr(Stdio::inherit()).output() {
        Ok(out) => out,
        Err(e) => bail!("cannot start `{}`: {e}", program_name(cmd)),
    };
    if !out.status.success() {
        bail!("`{}` failed ({})", describe(cmd), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a chatty tool (xorriso, mtools, limine) without showing its output
/// unless it fails, when the output becomes part of the error.
pub fn run_quiet(cmd: &mut Command) -> Result<()> {
    echo(cmd);
    let out = match cmd.stdin(Stdio::null()).output() {
        Ok(out) => out,
        Err(e) => bail!("cannot start `{}`: {e}", program_name(cmd)),
    };
    if !out.status.success() {
        bail!(
            "`{}` failed ({}):\n{}{}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn program_name(cmd: &Command) -> String {
    cmd.get_program().to_string_lossy().into_owned()
}

/// A `cargo` command run from the workspace root, so that the root's
/// `rust-toolchain.toml` and `.cargo/config.toml` apply. Uses the cargo that
/// started us when known (`CARGO`), which keeps the toolchain consistent.
pub fn cargo() -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(program);
    cmd.current_dir(workspace::root());
    cmd
}

/// Finds a program on `PATH`, like `command -v`.
pub fn find_program(name: impl AsRef<OsStr>) -> Option<PathBuf> {
    let name = name.as_ref();
    if Path::new(name).components().count() > 1 {
        return is_executable(Path::new(name)).then(|| PathBuf::from(name));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// True for a regular file with an execute bit.
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_quotes_only_what_needs_it() {
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-append", "fault=page quiet", "-m", "512M"]);
        cmd.env("HV_KERNEL", "/tmp/it's");
        assert_eq!(
            describe(&cmd),
            r"HV_KERNEL='/tmp/it'\''s' qemu-system-x86_64 -append 'fault=page quiet' -m 512M"
        );
    }

    #[test]
    fn finds_programs_on_path() {
        assert!(find_program("sh").is_some());
        assert!(find_program("surely-no-such-program-here").is_none());
    }
}
