//! A subtest's CPU model, from the built tree's `x86/unittests.cfg`: the
//! section that runs exactly that subtest of that image may take features
//! out of its `-cpu` model (`svm_unsupported_instruction_intercept_test`:
//! `-cpu max,+svm,-rdtscp,-xsave,-invpcid,-skinit`). Both L0s get them:
//! bare QEMU in its `-cpu`, our hypervisor as `guest_cpu=` (the guest's
//! CPUID hides them and their instructions are #UD).

/// Where the tree keeps the test configurations.
pub const CFG: &str = "x86/unittests.cfg";

/// The features removed (`-name` items of `-cpu`) by the section of `cfg`
/// whose `file` is `file` (e.g. `svm.flat`) and whose `test_args` is
/// exactly `subtest`; empty when there is none.
pub fn removed_features(cfg: &str, file: &str, subtest: &str) -> Vec<String> {
    let mut found = Vec::new();
    for section in cfg.split("\n[").skip(1) {
        let value = |key: &str| {
            section.lines().find_map(|line| {
                let (k, v) = line.split_once('=')?;
                (k.trim() == key).then(|| v.trim().trim_matches('"').trim())
            })
        };
        if value("file") != Some(file) || value("test_args") != Some(subtest) {
            continue;
        }
        let Some(params) = value("qemu_params") else {
            continue;
        };
        let mut words = params.split_whitespace();
        while let Some(word) = words.next() {
            if word != "-cpu" {
                continue;
            }
            let model = words.next().unwrap_or("");
            found.extend(
                model
                    .split(',')
                    .skip(1)
                    .filter_map(|f| f.strip_prefix('-'))
                    .map(String::from),
            );
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG_TEXT: &str = r#"
[svm]
file = svm.flat
smp = 2
test_args = "-pause_filter_test -svm_unsupported_instruction_intercept_test"
qemu_params = -cpu max,+svm -m 4g

[svm_unsupported_instruction_intercept_test]
file = svm.flat
test_args = "svm_unsupported_instruction_intercept_test"
qemu_params = -cpu max,+svm,-rdtscp,-xsave,-invpcid,-skinit

[svm_no_npt]
file = svm.flat
test_args = "-pause_filter_test"
qemu_params = -cpu max,+svm,-npt -m 4g

[other]
file = vmx.flat
test_args = "vmx_test"
qemu_params = -cpu max,-vmx
"#;

    #[test]
    fn the_section_running_exactly_the_subtest_gives_its_removals() {
        assert_eq!(
            removed_features(
                CFG_TEXT,
                "svm.flat",
                "svm_unsupported_instruction_intercept_test"
            ),
            ["rdtscp", "xsave", "invpcid", "skinit"]
        );
    }

    #[test]
    fn other_subtests_images_and_filters_give_none() {
        assert!(removed_features(CFG_TEXT, "svm.flat", "vmrun_intercept_check").is_empty());
        assert!(removed_features(CFG_TEXT, "svm.flat", "pause_filter_test").is_empty());
        assert!(removed_features(CFG_TEXT, "svm_npt.flat", "vmx_test").is_empty());
        assert_eq!(removed_features(CFG_TEXT, "vmx.flat", "vmx_test"), ["vmx"]);
        assert!(removed_features("", "svm.flat", "x").is_empty());
    }
}
