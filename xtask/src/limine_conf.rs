//! `limine.conf` for the hypervisor (Limine 8+ syntax).

/// Where the kernel ELF sits on every boot medium we build.
pub const KERNEL_PATH: &str = "/boot/hv";

/// Where a guest image (`cargo xtask run --guest`) sits on the medium.
pub const GUEST_MODULE_PATH: &str = "/boot/guest";

/// A config with one entry that boots the kernel at once with the given
/// command line words.
pub fn render(cmdline: &[String]) -> String {
    render_with_module(cmdline, None)
}

/// [`render`], plus a boot module at `module` (a path on the boot volume):
/// the guest image of `run --guest`, which the kernel finds in Limine's
/// module response. Its string is the file's path, as Limine's default.
pub fn render_with_module(cmdline: &[String], module: Option<&str>) -> String {
    // boot() is the volume Limine itself was loaded from.
    let mut conf = format!(
        "timeout: 0\n\n/hypervisor\n    protocol: limine\n    path: boot():{KERNEL_PATH}\n"
    );
    if !cmdline.is_empty() {
        conf.push_str(&format!("    cmdline: {}\n", cmdline.join(" ")));
    }
    if let Some(path) = module {
        conf.push_str(&format!("    module_path: boot():{path}\n"));
    }
    conf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_an_entry_with_the_command_line() {
        let conf = render(&["fault=page".into(), "quiet".into()]);
        assert_eq!(
            conf,
            "timeout: 0\n\n/hypervisor\n    protocol: limine\n    path: boot():/boot/hv\n    \
             cmdline: fault=page quiet\n"
        );
    }

    #[test]
    fn a_guest_is_a_module_of_the_entry() {
        let words: Vec<String> = ["guest=svm.flat", "guest_mem=256", "--", "vmrun"]
            .map(String::from)
            .into();
        let conf = render_with_module(&words, Some(GUEST_MODULE_PATH));
        assert_eq!(
            conf,
            "timeout: 0\n\n/hypervisor\n    protocol: limine\n    path: boot():/boot/hv\n    \
             cmdline: guest=svm.flat guest_mem=256 -- vmrun\n    module_path: boot():/boot/guest\n"
        );
        assert!(!render(&words).contains("module_path"));
    }

    #[test]
    fn omits_an_empty_command_line() {
        assert!(!render(&[]).contains("cmdline"));
    }
}
