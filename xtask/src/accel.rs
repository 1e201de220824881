//! Choosing QEMU's accelerator.
//!
//! KVM helps only if it lets a guest use SVM (nested virtualization): the
//! hypervisor is useless without it. `/dev/kvm` existing proves nothing (on
//! the development machine it belongs to a module that offers no SVM), so we
//! ask KVM which CPUID bits it supports for guests.

use std::fmt;
use std::fs::File;
use std::os::fd::AsRawFd;

/// A QEMU accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization with the host CPU model.
    Kvm,
    /// Software emulation of a CPU model with SVM, NPT and VGIF.
    Tcg,
}

impl Accel {
    pub fn parse(word: &str) -> Option<Self> {
        match word {
            "kvm" => Some(Accel::Kvm),
            "tcg" => Some(Accel::Tcg),
            _ => None,
        }
    }

    /// The `-accel` and `-cpu` arguments for QEMU.
    pub fn qemu_args(self) -> [&'static str; 4] {
        match self {
            Accel::Kvm => ["-accel", "kvm", "-cpu", "host"],
            // RDTSCP is not in qemu64 by default; the kernel uses it. SMEP
            // gives L1 a CR4 feature beyond the x86-64 base (its checks);
            // XSAVE lets guests set CR4.OSXSAVE (kvm-unit-tests
            // svm_cr4_osxsave_test).
            Accel::Tcg => [
                "-accel",
                "tcg",
                "-cpu",
                "qemu64,+svm,+npt,+vgif,+rdtscp,+smep,+xsave,+xsaveopt",
            ],
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// The accelerator to use and why, for the one-line report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub accel: Accel,
    pub reason: String,
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "accel {} ({})", self.accel, self.reason)
    }
}

/// Honours an explicit request; otherwise KVM exactly when it offers SVM.
/// `--accel kvm` where KVM offers no SVM is a usage error (exit 2), reported
/// before anything is built: every self-test would be skipped.
pub fn choose(requested: Option<Accel>) -> crate::Result<Choice> {
    if requested == Some(Accel::Tcg) {
        // No need to open /dev/kvm.
        return decide(requested, Ok(()));
    }
    decide(requested, probe_kvm_svm())
}

/// The choice for a request and a probe result.
fn decide(requested: Option<Accel>, probe: Result<(), String>) -> crate::Result<Choice> {
    Ok(match (requested, probe) {
        (Some(Accel::Tcg), _) => Choice {
            accel: Accel::Tcg,
            reason: "requested".into(),
        },
        (Some(Accel::Kvm), Ok(())) => Choice {
            accel: Accel::Kvm,
            reason: "requested; /dev/kvm offers SVM to guests".into(),
        },
        (Some(Accel::Kvm), Err(why)) => crate::usage!(
            "--accel kvm, but {why}: the hypervisor needs SVM in its virtual CPU, so \
             every self-test would be skipped; use --accel tcg (or leave --accel out)"
        ),
        (None, Ok(())) => Choice {
            accel: Accel::Kvm,
            reason: "/dev/kvm offers SVM to guests".into(),
        },
        (None, Err(why)) => Choice {
            accel: Accel::Tcg,
            reason: why,
        },
    })
}

// From <linux/kvm.h>; these numbers are part of the stable KVM ABI.
const KVMIO: u64 = 0xAE;
const KVM_API_VERSION: i32 = 12;
const KVM_GET_API_VERSION: u64 = KVMIO << 8; // _IO(KVMIO, 0x00)
/// `_IOWR(KVMIO, 0x05, struct kvm_cpuid2)`; the struct's fixed part is 8 bytes.
const KVM_GET_SUPPORTED_CPUID: u64 = (3 << 30) | (8 << 16) | (KVMIO << 8) | 0x05;

const CPUID_EXT_FEATURES: u32 = 0x8000_0001;
const CPUID_ECX_SVM: u32 = 1 << 2;

/// `struct kvm_cpuid_entry2`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct CpuidEntry {
    function: u32,
    index: u32,
    flags: u32,
    eax: u32,
    ebx: u32,
    ecx: u32,
    edx: u32,
    padding: [u32; 3],
}

/// `struct kvm_cpuid2` with room for a fixed number of entries.
#[repr(C)]
#[derive(Debug)]
struct Cpuid2<const N: usize> {
    nent: u32,
    padding: u32,
    entries: [CpuidEntry; N],
}

/// Ok when KVM is usable and would show SVM to a guest; otherwise why not,
/// worded to follow "accel tcg (".
pub fn probe_kvm_svm() -> Result<(), String> {
    let kvm = match File::options().read(true).write(true).open("/dev/kvm") {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err("no /dev/kvm".into());
        }
        Err(e) => return Err(format!("cannot open /dev/kvm: {e}")),
    };
    let fd = kvm.as_raw_fd();

    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns a value.
    let version = unsafe { libc::ioctl(fd, KVM_GET_API_VERSION as _, 0) };
    if version != KVM_API_VERSION {
        return Err(format!("/dev/kvm speaks API version {version}, not 12"));
    }

    let mut cpuid = Box::new(Cpuid2::<256> {
        nent: 256,
        padding: 0,
        entries: [CpuidEntry::default(); 256],
    });
    // SAFETY: the buffer is a kvm_cpuid2 whose nent matches the space that
    // follows it; KVM writes at most nent entries and updates nent.
    let rc = unsafe { libc::ioctl(fd, KVM_GET_SUPPORTED_CPUID as _, &mut *cpuid) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return Err(format!("KVM_GET_SUPPORTED_CPUID failed: {e}"));
    }
    let entries = &cpuid.entries[..(cpuid.nent as usize).min(256)];
    let svm = entries
        .iter()
        .any(|e| e.function == CPUID_EXT_FEATURES && e.ecx & CPUID_ECX_SVM != 0);
    if svm {
        Ok(())
    } else {
        Err("/dev/kvm offers no SVM to guests".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_linux_headers() {
        assert_eq!(KVM_GET_API_VERSION, 0xAE00);
        assert_eq!(KVM_GET_SUPPORTED_CPUID, 0xC008_AE05);
        assert_eq!(std::mem::size_of::<CpuidEntry>(), 40);
        assert_eq!(std::mem::size_of::<Cpuid2<2>>(), 8 + 2 * 40);
    }

    #[test]
    fn explicit_tcg_needs_no_probe_result() {
        assert_eq!(choose(Some(Accel::Tcg)).unwrap().accel, Accel::Tcg);
    }

    #[test]
    fn kvm_without_svm_is_refused_as_a_usage_error() {
        let no_svm = || Err("/dev/kvm offers no SVM to guests".to_string());
        let error = decide(Some(Accel::Kvm), no_svm()).unwrap_err();
        assert_eq!(error.exit_code(), 2);
        assert!(
            error
                .to_string()
                .starts_with("--accel kvm, but /dev/kvm offers no SVM to guests:"),
            "{error}"
        );
        assert_eq!(decide(None, no_svm()).unwrap().accel, Accel::Tcg);
        assert_eq!(decide(Some(Accel::Kvm), Ok(())).unwrap().accel, Accel::Kvm);
        assert_eq!(decide(None, Ok(())).unwrap().accel, Accel::Kvm);
    }

    #[test]
    fn tcg_cpu_model_offers_svm() {
        let args = Accel::Tcg.qemu_args();
        assert!(args[3].contains("+svm") && args[3].contains("+npt"));
    }
}
