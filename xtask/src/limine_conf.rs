//! `limine.conf` for the hypervisor (Limine 8+ syntax).

/// Where the kernel ELF sits on every boot medium we build.
pub const KERNEL_PATH: &str = "/boot/hv";

/// A config with one entry that boots the kernel at once with the given
/// command line words.
pub fn render(cmdline: &[String]) -> String {
    // boot() is the volume Limine itself was loaded from.
    let mut conf = format!(
        "timeout: 0\n\n/hypervisor\n    protocol: limine\n    path: boot():{KERNEL_PATH}\n"
    );
    if !cmdline.is_empty() {
        conf.push_str(&format!("    cmdline: {}\n", cmdline.join(" ")));
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
    fn omits_an_empty_command_line() {
        assert!(!render(&[]).contains("cmdline"));
    }
}
