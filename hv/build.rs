//! Links the kernel with its own linker script, and builds the guest stubs
//! that the self-tests embed (a nested cargo build into its own target
//! directory, so it never waits on the outer build's lock).
use std::path::PathBuf;
use std::process::Command;

/// A directory of already built guest stubs to embed instead of building
/// them (set by `cargo xtask mutants`).
const PREBUILT: &str = "HV_PREBUILT_GUEST_STUBS";

fn main() {
    let dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        println!(
            "cargo:rustc-link-arg-bins=-T{}",
            dir.join("linker.ld").display()
        );
        println!("cargo:rustc-link-arg-bins=--no-pie");
        println!("cargo:rustc-link-arg-bins=-zmax-page-size=0x1000");
    }
    let root = dir
        .parent()
        .expect("hv/ sits in the workspace")
        .to_path_buf();
    // `cargo xtask mutants` builds mutated kernels against the guest stubs
    // of its unmutated baseline: the stubs are the tests, and a mutation of
    // svm/ code they share must not reach them (nor rebuild them each time).
    println!("cargo:rerun-if-env-changed={PREBUILT}");
    if let Some(prebuilt) = std::env::var_os(PREBUILT).filter(|d| !d.is_empty()) {
        println!(
            "cargo:rustc-env=HV_GUEST_DIR={}",
            PathBuf::from(prebuilt).display()
        );
        for watched in ["linker.ld", "build.rs"] {
            println!("cargo:rerun-if-changed={}", dir.join(watched).display());
        }
        return;
    }
    let target_dir = root.join("target").join("guest-stubs");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args([
            "build",
            "--release",
            "--package",
            "guest-stubs",
            "--target",
            "x86_64-unknown-none",
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer build's environment (build-script variables, clippy's
    // wrapper, profile overrides) must not leak into the guests' build.
    for (key, _) in std::env::vars() {
        let keep = key == "CARGO_HOME" || key.starts_with("RUSTUP");
        if !keep
            && (key.starts_with("CARGO")
                || key.starts_with("RUSTC")
                || key == "RUSTFLAGS"
                || key.starts_with("DEP_"))
        {
            cmd.env_remove(&key);
        }
    }
    let status = cmd
        .status()
        .expect("running cargo to build the guest stubs");
    assert!(status.success(), "building the guest stubs failed");
    let bins = target_dir.join("x86_64-unknown-none").join("release");
    println!("cargo:rustc-env=HV_GUEST_DIR={}", bins.display());

    for watched in ["linker.ld", "build.rs", "../guest-stubs", "../svm/src"] {
        println!("cargo:rerun-if-changed={}", dir.join(watched).display());
    }
}
