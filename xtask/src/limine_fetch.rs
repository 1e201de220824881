//! The pinned Limine release: downloaded once into `target/limine/`, checked
//! against its recorded SHA-256, and built from source.
//!
//! Limine 12 and later publish no binary branches, and binaries built by us
//! from a hashed source tarball are reproducible anyway, so we always build.
//! Every failure here is a reason to boot without Limine, not an error, so the
//! functions return the reason as a plain string.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{checksum, host_tools, limine, process};

/// The pinned release. 9.x boots base revision 3 (8.3 and later do, except
/// 11.0.0) and predates 10.8, which starts disabling IOMMUs by default.
pub const VERSION: &str = "9.6.7";

/// SHA-256 of `limine-9.6.7.tar.gz`, taken from Homebrew's formula for this
/// release (Homebrew/homebrew-core, `Formula/l/limine.rb`, the revision with
/// `url ".../v9.6.7/limine-9.6.7.tar.gz"`).
pub const SHA256: &str = "5469ff372f7054a055156ed23534f1faeeebaf9d7d8d0f82cdb719c134c12a9b";

/// Where the release is published: Codeberg is Limine's home since 2025; the
/// GitHub project is tried as a mirror. The hash makes the source irrelevant.
const URLS: [&str; 2] = [
    "https://codeberg.org/Limine/Limine/releases/download/v9.6.7/limine-9.6.7.tar.gz",
    "https://github.com/limine-bootloader/limine/releases/download/v9.6.7/limine-9.6.7.tar.gz",
];

/// Returns the directory of built binaries, building them first if needed.
pub fn ensure_built(cache: &Path) -> Result<PathBuf, String> {
    let source = cache.join(format!("limine-{VERSION}"));
    let bin = source.join("bin");
    if is_built(&bin) {
        return Ok(bin);
    }
    std::fs::create_dir_all(cache)
        .map_err(|e| format!("cannot create {}: {e}", cache.display()))?;
    let tarball = cache.join(format!("limine-{VERSION}.tar.gz"));
    if !has_expected_hash(&tarball) {
        download(&tarball)?;
    }
    unpack(&tarball, cache, &source)?;
    build(&source, &cache.join("build.log"))?;
    if is_built(&bin) {
        Ok(bin)
    } else {
        Err(format!(
            "building Limine {VERSION} left no binaries in {}",
            bin.display()
        ))
    }
}

fn is_built(bin: &Path) -> bool {
    limine::from_dir(bin).is_ok_and(|found| found.files_dir == bin)
}

fn has_expected_hash(path: &Path) -> bool {
    path.is_file() && checksum::sha256_file(path).is_ok_and(|hash| hash == SHA256)
}

fn download(tarball: &Path) -> Result<(), String> {
    if process::find_program("curl").is_none() {
        return Err(format!(
            "Limine {VERSION} is not cached and curl is not installed"
        ));
    }
    let partial = tarball.with_extension("gz.part");
    eprintln!("xtask: fetching Limine {VERSION}");
    let mut failures = Vec::new();
    for url in URLS {
        let mut cmd = Command::new("curl");
        // A closed network must fail in seconds, not minutes; --fail turns an
        // HTTP error page into an error instead of a "tarball".
        cmd.args(["--fail", "--silent", "--show-error", "--location"])
            .args(["--connect-timeout", "10", "--max-time", "300"])
            .arg("--output")
            .arg(&partial)
            .arg(url)
            .stdin(Stdio::null());
        process::echo(&cmd);
        // curl's complaint becomes part of our one-line reason instead of
        // extra lines on the terminal.
        match cmd.output() {
            Ok(out) if out.status.success() && has_expected_hash(&partial) => {
                return std::fs::rename(&partial, tarball)
                    .map_err(|e| format!("cannot move {}: {e}", partial.display()));
            }
            Ok(out) if out.status.success() => {
                failures.push(format!("{url} has the wrong SHA-256"));
            }
            Ok(out) => failures.push(
                String::from_utf8_lossy(&out.stderr)
                    .trim()
                    .replace('\n', " "),
            ),
            Err(e) => failures.push(format!("cannot start curl: {e}")),
        }
        let _ = std::fs::remove_file(&partial);
    }
    Err(format!(
        "cannot download Limine {VERSION} ({})",
        failures.join("; ")
    ))
}

fn unpack(tarball: &Path, cache: &Path, source: &Path) -> Result<(), String> {
    // Start clean: a half-built tree from an interrupted run is not trusted.
    if source.exists() {
        std::fs::remove_dir_all(source)
            .map_err(|e| format!("cannot remove {}: {e}", source.display()))?;
    }
    let mut cmd = Command::new("tar");
    cmd.arg("-xzf").arg(tarball).arg("-C").arg(cache);
    process::run(&mut cmd).map_err(|e| e.to_string())
}

fn build(source: &Path, log: &Path) -> Result<(), String> {
    host_tools::require(&[
        host_tools::NASM,
        host_tools::MFORMAT,
        host_tools::MAKE,
        host_tools::CC,
    ])
    .map_err(|e| format!("cannot build Limine {VERSION}: {e}"))?;
    eprintln!("xtask: building Limine {VERSION} (log: {})", log.display());
    let log_file =
        File::create(log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let steps: [Vec<String>; 2] = [
        [
            "./configure",
            "--enable-bios",
            "--enable-bios-cd",
            "--enable-uefi-x86-64",
            "--enable-uefi-cd",
        ]
        .map(String::from)
        .to_vec(),
        vec!["make".into(), format!("-j{jobs}")],
    ];
    for step in steps {
        let mut cmd = Command::new(&step[0]);
        cmd.args(&step[1..])
            .current_dir(source)
            .stdin(Stdio::null());
        // The build is long and noisy; its output goes to the log.
        let out = log_file.try_clone().map_err(|e| e.to_string())?;
        let err = log_file.try_clone().map_err(|e| e.to_string())?;
        cmd.stdout(out).stderr(err);
        process::run(&mut cmd).map_err(|e| {
            format!(
                "building Limine {VERSION} failed: {e} (see {})",
                log.display()
            )
        })?;
    }
    Ok(())
}
