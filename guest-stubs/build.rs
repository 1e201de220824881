//! Links the guest binaries at their guest-physical load address: each with
//! linker.ld, except the Multiboot test guest, an external kernel with its
//! own layout (mbguest.ld).
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        let bins = std::fs::read_dir(format!("{dir}/src/bin")).expect("reading src/bin");
        for entry in bins {
            let path = entry.expect("reading src/bin").path();
            let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let script = if name == "mbguest" {
                "mbguest.ld"
            } else {
                "linker.ld"
            };
            println!("cargo:rustc-link-arg-bin={name}=-T{dir}/{script}");
        }
        println!("cargo:rustc-link-arg-bins=--no-pie");
        println!("cargo:rustc-link-arg-bins=-zmax-page-size=0x1000");
    }
    println!("cargo:rerun-if-changed=linker.ld");
    println!("cargo:rerun-if-changed=mbguest.ld");
    println!("cargo:rerun-if-changed=src/bin");
}
