//! The pinned Limine release: downloaded once into `target/limine/`, checked
//! against its recorded SHA-256, and built from source.
//!
//! Limine 12 and later publish no binary branches, and binaries built by us
//! from a hashed source tarball are reproducible anyway, so we always build.
//! Every failure here is a reason to boot without Limine, not an error, so the
//! functions return the reason as a plain string.
//!
//! A failed download is remembered in `target/limine/download-failed` (the
//! time and the reason): on a closed or stalled network every command would
//! otherwise spend up to 20 s per URL again. The marker is honoured for
//! `RETRY_AFTER`; deleting it retries at once. `--offline` never tries.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

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

/// The marker of a failed download, in the cache directory.
pub const MARKER: &str = "download-failed";

/// How long a failed download is remembered: long enough for a working
/// session, short enough that a network that comes back is used the same day.
pub const RETRY_AFTER: Duration = Duration::from_secs(60 * 60);

/// Whether the network may be used to fetch Limine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    #[default]
    Allowed,
    /// `--offline`: never try.
    Offline,
}

impl Network {
    pub fn from_offline_flag(offline: bool) -> Self {
        if offline {
            Network::Offline
        } else {
            Network::Allowed
        }
    }
}

/// A remembered failed download: how long ago, and what the marker says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub age: Duration,
    pub reason: String,
}

/// Whether to try downloading, or why not (worded to follow "Limine not
/// available: ").
pub fn download_decision(
    network: Network,
    marker: Option<&Marker>,
    marker_path: &Path,
) -> Result<(), String> {
    if network == Network::Offline {
        return Err(format!(
            "Limine {VERSION} is not cached and --offline forbids downloading it"
        ));
    }
    match marker {
        Some(marker) if marker.age < RETRY_AFTER => Err(format!(
            "download failed {} ago: {}; delete {} to retry now",
            minutes(marker.age),
            marker.reason,
            crate::workspace::display_path(marker_path)
        )),
        _ => Ok(()),
    }
}

fn minutes(age: Duration) -> String {
    match age.as_secs() / 60 {
        0 => "less than a minute".to_string(),
        1 => "1 min".to_string(),
        n => format!("{n} min"),
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` for a time since the epoch (proleptic Gregorian
/// calendar; the civil-from-days algorithm of Howard Hinnant).
fn utc(secs: u64) -> String {
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// Reads the marker of a failed download, if there is one.
pub fn read_marker(path: &Path, now: SystemTime) -> Option<Marker> {
    let text = std::fs::read_to_string(path).ok()?;
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok()?;
    // A clock that went backwards makes the marker fresh: retry later.
    let age = now.duration_since(modified).unwrap_or_default();
    let reason = text
        .lines()
        .find_map(|line| line.strip_prefix("reason: "))
        .unwrap_or("(no reason recorded)")
        .to_string();
    Some(Marker { age, reason })
}

/// Remembers a failed download; a marker that cannot be written only means
/// the next command tries again.
pub fn write_marker(path: &Path, reason: &str, now: SystemTime) {
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let text = format!(
        "Limine {VERSION} could not be downloaded; xtask will not try again for {} min.\n\
         time: {}\n\
         reason: {}\n\
         To retry now, delete this file. To never try, pass --offline; to skip\n\
         Limine, pass --boot direct; to use a Limine build, set LIMINE_DIR.\n",
        RETRY_AFTER.as_secs() / 60,
        utc(secs),
        reason.replace('\n', " ")
    );
    let _ = std::fs::write(path, text);
}

/// Returns the directory of built binaries, building them first if needed.
pub fn ensure_built(cache: &Path, network: Network) -> Result<PathBuf, String> {
    let source = cache.join(format!("limine-{VERSION}"));
    let bin = source.join("bin");
    if is_built(&bin) {
        return Ok(bin);
    }
    std::fs::create_dir_all(cache)
        .map_err(|e| format!("cannot create {}: {e}", cache.display()))?;
    let tarball = cache.join(format!("limine-{VERSION}.tar.gz"));
    if !has_expected_hash(&tarball) {
        let marker = cache.join(MARKER);
        let now = SystemTime::now();
        download_decision(network, read_marker(&marker, now).as_ref(), &marker)?;
        match download(&tarball) {
            Ok(()) => {
                let _ = std::fs::remove_file(&marker);
            }
            Err(why) => {
                write_marker(&marker, &why, now);
                return Err(format!(
                    "{why}; remembered in {} for {} min",
                    crate::workspace::display_path(&marker),
                    RETRY_AFTER.as_secs() / 60
                ));
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(minutes: u64) -> Marker {
        Marker {
            age: Duration::from_secs(minutes * 60),
            reason: "curl: (6) Could not resolve host: codeberg.org".into(),
        }
    }

    #[test]
    fn downloads_without_a_marker_unless_offline() {
        let path = Path::new("target/limine/download-failed");
        assert_eq!(download_decision(Network::Allowed, None, path), Ok(()));
        let why = download_decision(Network::Offline, None, path).unwrap_err();
        assert!(why.contains("--offline"), "{why}");
    }

    #[test]
    fn a_fresh_marker_stops_the_download_and_says_why() {
        let path = Path::new("target/limine/download-failed");
        let why = download_decision(Network::Allowed, Some(&marker(5)), path).unwrap_err();
        assert!(why.contains("Could not resolve host"), "{why}");
        assert!(why.contains("failed 5 min ago"), "{why}");
        assert!(
            why.contains("delete target/limine/download-failed"),
            "{why}"
        );
        // Offline wins over an old marker too.
        assert!(download_decision(Network::Offline, Some(&marker(500)), path).is_err());
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_796_047_108), "2026-11-30 13:58:28 UTC");
    }

    #[test]
    fn a_stale_marker_is_retried() {
        let path = Path::new("m");
        let stale = RETRY_AFTER.as_secs() / 60;
        assert_eq!(
            download_decision(Network::Allowed, Some(&marker(stale)), path),
            Ok(())
        );
        assert!(download_decision(Network::Allowed, Some(&marker(stale - 1)), path).is_err());
    }

    #[test]
    fn a_written_marker_reads_back() {
        let dir = std::env::temp_dir().join(format!("xtask-marker-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(MARKER);
        let now = SystemTime::now();
        assert_eq!(read_marker(&path, now), None);
        write_marker(&path, "curl: (28) timed out\nsecond line", now);
        let read = read_marker(&path, now + Duration::from_secs(120));
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let read = read.unwrap();
        assert_eq!(read.reason, "curl: (28) timed out second line");
        assert!(read.age >= Duration::from_secs(119), "{:?}", read.age);
        assert!(text.contains("delete this file"), "{text}");
        assert!(text.contains("--boot direct"), "{text}");
    }
}
