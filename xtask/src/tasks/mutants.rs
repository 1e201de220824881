//! `cargo xtask mutants`: proves the guest self-tests bite. Each mutation
//! of `xtask/mutants.txt` (format: [`crate::mutants`]) is applied to a
//! scratch copy of the workspace (`target/mutants/work`, `work-1`, ...: one
//! per job, reused so builds stay incremental; `--jobs N` tries N at once), the kernel is built and the self-tests the
//! mutation names run under QEMU TCG (direct boot); the mutation must make
//! one of them fail.
//!
//! The kernel is the debug build with debug assertions off: the kernel's
//! own cross-checks (e.g. the TSC offset against the model) would otherwise
//! stop it first, and the point is that a guest self-test notices.
//!
//! Mutated kernels embed the guest stubs the baseline built, from the
//! unmutated tree (`HV_PREBUILT_GUEST_STUBS`, hv/build.rs): the stubs are
//! the tests, so a mutation of svm/ code they share stays out of them; this
//! also spares each svm/ mutation a release build of every stub.
//!
//! Output: one line per mutation, `mutant <name> ... killed (<first failing
//! test>)` or `... SURVIVED` (or `... does not apply (<why>)`, `... does not
//! build`), then `N killed, N survived`. Fails unless every mutation was
//! killed. A baseline run of the unmutated copy comes first.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::accel::Accel;
use crate::error::Context;
use crate::kernel::{self, Profile};
use crate::mutants::{self, Mutant};
use crate::qemu::{self, Firmware, Medium, RunConfig};
use crate::verdict::Verdict;
use crate::{bail, host_tools, process, runner, workspace, Result};

/// The list, relative to the workspace root.
pub const LIST: &str = "xtask/mutants.txt";

/// Longest a mutated kernel may run its self-tests.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs of the unmutated tree before it counts as failing.
const BASELINE_ATTEMPTS: u32 = 3;

/// Top-level names never copied to the scratch tree.
const SKIP: [&str; 3] = ["target", ".git", ".jj"];

/// Most scratch copies `--jobs` defaults to (each builds its own kernel).
const MAX_DEFAULT_JOBS: usize = 4;

/// `cargo xtask mutants [--list] [--jobs N] [NAME...]`.
pub fn mutants(list: bool, names: &[String], jobs: Option<u32>) -> Result<bool> {
    let root = workspace::root();
    let text = fs::read_to_string(root.join(LIST)).context(|| format!("reading {LIST}"))?;
    let all = match mutants::parse(&text) {
        Ok(all) => all,
        Err(e) => bail!("{LIST}: {e}"),
    };
    let chosen = match mutants::select(&all, names) {
        Ok(chosen) => chosen,
        Err(e) => bail!("{e}"),
    };
    if list {
        for m in &chosen {
            let tests = if m.tests.is_empty() {
                "all tests".to_string()
            } else {
                m.tests.join(",")
            };
            let pending = m
                .pending
                .as_ref()
                .map(|why| format!(" (pending: {why})"))
                .unwrap_or_default();
            println!("{:32} [{tests}] {}{pending}", m.name, m.about);
        }
        return Ok(true);
    }
    host_tools::require(&[host_tools::QEMU])?;
    let started = Instant::now();
    let runnable: Vec<&Mutant> = chosen
        .iter()
        .copied()
        .filter(|m| m.pending.is_none())
        .collect();
    let jobs = jobs
        .map_or_else(default_jobs, |n| n as usize)
        .clamp(1, runnable.len().max(1));
    // One scratch copy per job; the first keeps its old name so a
    // developer's incremental build carries over.
    let copies: Vec<PathBuf> = (0..jobs)
        .map(|i| {
            let dir = if i == 0 {
                "work".to_string()
            } else {
                format!("work-{i}")
            };
            workspace::target_dir().join("mutants").join(dir)
        })
        .collect();

    // Baseline: the unmutated copy must pass the tests the mutants use.
    sync_tree(root, &copies[0])?;
    let filter = mutants::tests_filter(&chosen);
    eprintln!(
        "xtask: mutants: baseline ({}), then {} mutations on {jobs} job(s)",
        filter.as_deref().unwrap_or("all tests"),
        runnable.len()
    );
    // The TSC self-tests measure time: on a loaded host one can fail
    // without any mutation, so the baseline gets a second and third try.
    let mut attempt = 1;
    loop {
        match build_and_run(&copies[0], filter.as_deref(), None)? {
            Run::Passed => break,
            Run::Failed(why) if attempt < BASELINE_ATTEMPTS => {
                eprintln!("xtask: mutants: baseline attempt {attempt} failed ({why}); again");
                attempt += 1;
            }
            Run::Failed(why) => bail!("the unmutated tree fails its self-tests: {why}"),
            Run::BuildFailed => bail!("the unmutated tree does not build"),
        }
    }

    let stubs = copies[0]
        .join("target")
        .join("guest-stubs")
        .join(workspace::KERNEL_TARGET)
        .join("release");
    let stubs = stubs.as_path();

    let mut pending = 0;
    for m in chosen.iter().filter(|m| m.pending.is_some()) {
        pending += 1;
        println!(
            "mutant {} ... pending ({})",
            m.name,
            m.pending.as_deref().unwrap_or("")
        );
    }
    // Each job takes the next untried mutation and tries it in its own copy.
    let next = AtomicUsize::new(0);
    let outcomes: Mutex<Vec<Outcome>> = Mutex::new(Vec::new());
    let failure: Mutex<Option<crate::error::Error>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for work in &copies {
            let (next, outcomes, failure, runnable) = (&next, &outcomes, &failure, &runnable);
            scope.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(m) = runnable.get(i) else { break };
                if failure.lock().unwrap().is_some() {
                    break;
                }
                match try_mutant(root, work, m, stubs) {
                    Ok(outcome) => {
                        println!("mutant {} ... {}", m.name, outcome.text());
                        outcomes.lock().unwrap().push(outcome);
                    }
                    Err(e) => {
                        *failure.lock().unwrap() = Some(e);
                        break;
                    }
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().unwrap() {
        return Err(e);
    }
    // Leave the copies unmutated for the next incremental build.
    for work in &copies {
        sync_tree(root, work)?;
    }
    let outcomes = outcomes.into_inner().unwrap();
    let count = |f: fn(&Outcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
    let killed = count(|o| matches!(o, Outcome::Killed(_)));
    let survived = count(|o| matches!(o, Outcome::Survived));
    let broken = count(|o| matches!(o, Outcome::NotApplied(_) | Outcome::NotBuilt));
    let mut extra = String::new();
    if broken > 0 {
        extra += &format!(", {broken} did not apply or build");
    }
    if pending > 0 {
        extra += &format!(", {pending} pending");
    }
    println!("{killed} killed, {survived} survived{extra}");
    eprintln!("xtask: mutants: {:.0} s", started.elapsed().as_secs_f64());
    Ok(survived == 0 && broken == 0)
}

/// The host's CPUs, at most [`MAX_DEFAULT_JOBS`].
fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_DEFAULT_JOBS))
}

/// What one mutation did.
enum Outcome {
    /// A self-test failed (its name).
    Killed(String),
    Survived,
    NotApplied(String),
    NotBuilt,
}

impl Outcome {
    fn text(&self) -> String {
        match self {
            Outcome::Killed(first) => format!("killed ({first})"),
            Outcome::Survived => "SURVIVED".to_string(),
            Outcome::NotApplied(why) => format!("does not apply ({why})"),
            Outcome::NotBuilt => "does not build".to_string(),
        }
    }
}

/// Applies `m` to a fresh copy of `root` in `work`, builds and runs its tests.
fn try_mutant(root: &Path, work: &Path, m: &Mutant, stubs: &Path) -> Result<Outcome> {
    sync_tree(root, work)?;
    if let Err(why) = apply_in(work, m) {
        return Ok(Outcome::NotApplied(why));
    }
    let filter = (!m.tests.is_empty()).then(|| m.tests.join(","));
    Ok(match build_and_run(work, filter.as_deref(), Some(stubs))? {
        Run::Failed(first) => Outcome::Killed(first),
        Run::Passed => Outcome::Survived,
        Run::BuildFailed => Outcome::NotBuilt,
    })
}

/// Applies every hunk of `m` inside the scratch tree `work`.
fn apply_in(work: &Path, m: &Mutant) -> std::result::Result<(), String> {
    for h in &m.hunks {
        let path = work.join(&h.file);
        let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", h.file))?;
        let mutated = mutants::apply(&text, h).map_err(|e| format!("{}: {e}", h.file))?;
        fs::write(&path, mutated).map_err(|e| format!("{}: {e}", h.file))?;
    }
    Ok(())
}

enum Run {
    Passed,
    /// The first failing test, or how the kernel ended without one.
    Failed(String),
    BuildFailed,
}

/// Builds the kernel in the scratch tree and runs the self-tests `filter`
/// selects (all when `None`), embedding the guest stubs of `stubs` when
/// given (else building them from the tree).
fn build_and_run(work: &Path, filter: Option<&str>, stubs: Option<&Path>) -> Result<Run> {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(program);
    cmd.current_dir(work)
        .args(["build", "-p", "hv", "--target", workspace::KERNEL_TARGET])
        .arg("--target-dir")
        .arg(work.join("target"))
        // The guest self-tests must notice, not the kernel's debug checks.
        .env("CARGO_PROFILE_DEV_DEBUG_ASSERTIONS", "false")
        .env_remove("CARGO_TARGET_DIR");
    match stubs {
        Some(dir) => cmd.env("HV_PREBUILT_GUEST_STUBS", dir),
        None => cmd.env_remove("HV_PREBUILT_GUEST_STUBS"),
    };
    // A mutation's warnings are noise; its errors are shown.
    if let Err(e) = process::run_quiet(&mut cmd) {
        eprintln!("xtask: {e}");
        return Ok(Run::BuildFailed);
    }
    let kernel = kernel::elf_path(Profile::Debug, &work.join("target"));
    let cmdline = filter.map(|f| format!("tests={f}")).into_iter().collect();
    let config = RunConfig {
        medium: Medium::Direct { kernel, cmdline },
        firmware: Firmware::Bios,
        accel: Accel::Tcg,
        gdb: false,
        debugcon: work.join("target").join("qemu-debugcon.log"),
        icount: false,
        smp: qemu::DEFAULT_SMP,
    };
    let outcome = runner::run(
        qemu::command(&config)?,
        runner::Options {
            timeout: Some(RUN_TIMEOUT),
            echo: false,
        },
    )?;
    let verdict = Verdict::of(&outcome);
    Ok(match (verdict, mutants::first_failure(&outcome.serial)) {
        (Verdict::Success, None) => Run::Passed,
        (_, Some((test, why))) => {
            // The reason, to tell a real kill from a flaky timing test.
            eprintln!("xtask:   {test} ... {why}");
            Run::Failed(test.to_string())
        }
        (verdict, None) => Run::Failed(format!("no test failed; {verdict}")),
    })
}

/// Makes `dst` a copy of the workspace at `src` (without target/ and VCS
/// data), writing only files whose content differs so that cargo's
/// fingerprints see only real changes, and removing files `src` lacks.
pub fn sync_tree(src: &Path, dst: &Path) -> Result<()> {
    let mut wanted = BTreeSet::new();
    copy_dir(src, dst, Path::new(""), &mut wanted)?;
    remove_extra(dst, Path::new(""), &wanted)
}

fn skipped(rel: &Path) -> bool {
    let first = rel.components().next();
    first.is_some_and(|c| {
        let name = c.as_os_str().to_string_lossy();
        SKIP.contains(&name.as_ref()) || name.starts_with("mutants.out")
    })
}

fn copy_dir(src: &Path, dst: &Path, rel: &Path, wanted: &mut BTreeSet<PathBuf>) -> Result<()> {
    let from = src.join(rel);
    let to = dst.join(rel);
    fs::create_dir_all(&to).context(|| format!("creating {}", to.display()))?;
    for entry in fs::read_dir(&from).context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let rel = rel.join(entry.file_name());
        if skipped(&rel) {
            continue;
        }
        let kind = entry.file_type()?;
        wanted.insert(rel.clone());
        if kind.is_dir() {
            copy_dir(src, dst, &rel, wanted)?;
        } else if kind.is_file() {
            let content = fs::read(src.join(&rel))?;
            let target = dst.join(&rel);
            if fs::read(&target).ok().as_deref() != Some(&content[..]) {
                fs::write(&target, &content).context(|| format!("writing {}", target.display()))?;
            }
        }
    }
    Ok(())
}

fn remove_extra(dst: &Path, rel: &Path, wanted: &BTreeSet<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dst.join(rel))? {
        let entry = entry?;
        let rel = rel.join(entry.file_name());
        if skipped(&rel) {
            continue;
        }
        let path = dst.join(&rel);
        if !wanted.contains(&rel) {
            if entry.file_type()?.is_dir() {
                fs::remove_dir_all(&path)?;
            } else {
                fs::remove_file(&path)?;
            }
        } else if entry.file_type()?.is_dir() {
            remove_extra(dst, &rel, wanted)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-mutants-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn sync_copies_changes_only_and_removes_extras() {
        let (src, dst) = (scratch("src"), scratch("dst"));
        fs::create_dir_all(src.join("a/b")).unwrap();
        fs::create_dir_all(src.join("target/x")).unwrap();
        fs::write(src.join("a/b/f.rs"), "one").unwrap();
        fs::write(src.join("g.rs"), "two").unwrap();
        fs::write(src.join("target/x/big"), "build output").unwrap();
        sync_tree(&src, &dst).unwrap();
        assert_eq!(fs::read_to_string(dst.join("a/b/f.rs")).unwrap(), "one");
        assert!(!dst.join("target").exists(), "target/ is not copied");

        // An unchanged file is not rewritten (its mtime stays).
        let before = fs::metadata(dst.join("g.rs")).unwrap().modified().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        fs::write(dst.join("a/b/f.rs"), "mutated").unwrap();
        fs::write(dst.join("stale.rs"), "gone soon").unwrap();
        fs::create_dir_all(dst.join("target")).unwrap();
        fs::write(dst.join("target/keep"), "cache").unwrap();
        sync_tree(&src, &dst).unwrap();
        assert_eq!(fs::read_to_string(dst.join("a/b/f.rs")).unwrap(), "one");
        assert_eq!(
            fs::metadata(dst.join("g.rs")).unwrap().modified().unwrap(),
            before
        );
        assert!(!dst.join("stale.rs").exists());
        assert!(dst.join("target/keep").exists(), "the copy's target/ stays");

        // A mutation applies inside the copy only.
        let m =
            mutants::parse("mutant m\nfile a/b/f.rs\nfind\none\nreplace\nthree\nend\n").unwrap();
        apply_in(&dst, &m[0]).unwrap();
        assert_eq!(fs::read_to_string(dst.join("a/b/f.rs")).unwrap(), "three");
        assert_eq!(fs::read_to_string(src.join("a/b/f.rs")).unwrap(), "one");
        assert!(apply_in(&dst, &m[0]).unwrap_err().contains("not found"));
        let _ = fs::remove_dir_all(&src);
        let _ = fs::remove_dir_all(&dst);
    }
}
