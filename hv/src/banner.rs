//! The boot banner: one `key: value` line per fact, for people and tests.

use crate::arch::cpu;
use crate::boot::BootInfo;
use crate::println;

/// Prints the banner.
pub fn print(boot: &BootInfo) {
    println!("boot: {}", boot.protocol.name());
    let c = cpu::describe();
    println!(
        "cpu: {} family {:#x} model {:#x} stepping {} ({})",
        c.vendor, c.family, c.model, c.stepping, c.brand
    );
    println!("svm: {}", crate::svm_support::probe());
    let (usable, regions) = boot.usable_memory();
    println!("memory: {} MiB in {} regions", usable >> 20, regions);
    let f = crate::time::tsc_frequency();
    println!(
        "tsc: {}.{:03} MHz (calibrated against {})",
        f.khz / 1000,
        f.khz % 1000,
        f.source
    );
}

/// The banner's `cpus:` line: how many CPUs run the hypervisor (printed
/// once the application processors are up).
pub fn print_cpus(online: usize) {
    println!("cpus: {online}");
}
