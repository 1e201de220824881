//! Running an external guest image instead of the self-tests
//! (`cargo xtask run --guest FILE`): the kernel command line holds
//! `guest=<name> [guest_mem=<MiB>] -- <guest words>`, the loader's first
//! boot module is the image, or a pack of the image and its Multiboot
//! modules ([`svm::boot_pack`], `--guest-module`).
//!
//! One VM, offered nested SVM, with the PC platform's port devices
//! ([`svm::devices::PortBus`]): its COM1 output reaches the host console
//! verbatim, its write of C to the exit device ends the run with QEMU status
//! `(C << 1) | 1` as under bare QEMU. A Multiboot 1 image is loaded by
//! [`svm::multiboot`] and entered in 32-bit protected mode; otherwise an
//! ELF64 is loaded and started like the self-tests' stubs (its "test name"
//! the guest's command line), and its HC_DONE ends the run as a write of
//! 0 (pass) or 1 (fail) to the exit device would. The hypervisor says one line
//! before and one after (`hv: ...`); a guest that dies ends the run with
//! [`ExitCode::GuestDied`], an image that cannot be loaded with
//! [`ExitCode::BadImage`].

use crate::arch::port::{exit, exit_raw, ExitCode};
use crate::boot::BootInfo;
use crate::mem::paging::phys_to_virt;
use crate::println;
use crate::vmm::exits::Stop;
use crate::vmm::vcpu::Vcpu;
use crate::vmm::vm::{Vm, VmConfig};
use crate::vmm::{enable, loader, setup};
use svm::boot_pack;
use svm::devices::fw_cfg::FwCfgConfig;
use svm::devices::PortBus;
use svm::multiboot;

/// The command-line key naming the guest (its Multiboot argv[0]).
pub const KEY: &str = "guest";
/// The command-line key giving the guest's RAM in MiB.
pub const MEM_KEY: &str = "guest_mem";
/// The command-line key naming CPU features the guest's CPU model leaves
/// out, QEMU style: `guest_cpu=-rdtscp,-xsave` ([`svm::cpuid_filter::parse_hidden`]).
pub const CPU_KEY: &str = "guest_cpu";
/// Guest RAM without `guest_mem=`.
const DEFAULT_MEM: u64 = 256 << 20;
/// The kernel command-line key giving the guest's vCPU count (default 1).
pub const CPUS_KEY: &str = "guest_cpus";
/// Room for the Multiboot info block (the command line is at most
/// [`crate::boot::info::MAX_CMDLINE`] bytes).
const INFO_BUF: usize = 4096;

/// How the image was loaded, for the start line.
enum Kind {
    Multiboot,
    Elf64,
}

/// Runs the guest named by `name` on the command line; never returns.
pub fn run(boot: &BootInfo, name: &str) -> ! {
    let memory = match boot.cmdline_value(MEM_KEY) {
        None => DEFAULT_MEM,
        Some(v) => match svm::boot_cmdline::guest_mem_bytes(v) {
            Some(bytes) => bytes,
            None => bad_image(format_args!(
                "{MEM_KEY}={v}: expected an even number of MiB from 2 to 2048"
            )),
        },
    };
    let Some(module) = boot.modules.as_slice().first() else {
        bad_image(format_args!(
            "{KEY}={name}, but the loader passed no boot module (the image)"
        ));
    };
    // SAFETY: the loader put the module in RAM the direct map covers and
    // the frame allocator never hands out (KernelAndModules); nothing
    // writes it.
    let module = unsafe {
        core::slice::from_raw_parts(phys_to_virt(module.phys) as *const u8, module.len as usize)
    };
    // A pack (svm::boot_pack) carries the image and its Multiboot modules.
    let mut files = [boot_pack::Entry {
        name: &[],
        data: &[],
    }; boot_pack::MAX_ENTRIES];
    let (image, modules) = if boot_pack::is_pack(module) {
        match boot_pack::unpack(module, &mut files) {
            Ok(n) => (files[0].data, &files[1..n]),
            Err(e) => bad_image(format_args!("{name}: guest pack: {e:?}")),
        }
    } else {
        (module, &files[..0])
    };
    let host = match enable::this_cpu() {
        Ok(host) => host,
        Err(why) => {
            println!("hv: cannot run guest {name}: SVM unavailable: {why}");
            exit(ExitCode::NothingRan)
        }
    };
    let hidden_cpu = match boot.cmdline_value(CPU_KEY) {
        None => svm::cpuid_filter::HiddenFeatures::empty(),
        Some(v) => match svm::cpuid_filter::parse_hidden(v) {
            (hidden, None) => hidden,
            (_, Some(unknown)) => bad_image(format_args!(
                "{CPU_KEY}={v}: cannot leave out {unknown:?} (known: rdtscp, skinit, xsave, invpcid, rdpru)"
            )),
        },
    };
    // A Multiboot guest sees a PC: no RAM in the VGA window.
    let pc_hole = !matches!(
        multiboot::find_header(image),
        Err(multiboot::ImageError::NoHeader)
    );
    let config = VmConfig {
        hidden_cpu,
        pc_hole,
        ..VmConfig::guest(true)
    };
    let mut vm = match Vm::new(name, memory, config) {
        Ok(vm) => vm,
        Err(why) => {
            println!(
                "hv: cannot run guest {name}: {why} ({} MiB asked)",
                memory >> 20
            );
            exit(ExitCode::Failure)
        }
    };
    // More vCPUs than online CPUs share CPUs (time-sliced, `vmm::multi`).
    let max = svm::devices::ipi::MAX_VCPUS;
    let cpus = match boot.cmdline_value(CPUS_KEY) {
        None => 1,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => n,
            _ => bad_image(format_args!("{CPUS_KEY}={v}: expected 1 to {max}")),
        },
    };
    if cpus > crate::smp::online_count() {
        log::info!(
            "guest: {cpus} vCPUs on {} CPUs: time-sliced",
            crate::smp::online_count()
        );
    }
    vm.devices = Some(PortBus::new(FwCfgConfig {
        // fw_cfg's CPU count (key 0x05), what kvm-unit-tests reads.
        cpus: cpus as u16,
        ram_size: memory,
    }));
    let mut vcpu = match Vcpu::new() {
        Ok(vcpu) => vcpu,
        Err(why) => {
            println!("hv: cannot run guest {name}: {why}");
            exit(ExitCode::Failure)
        }
    };
    let (kind, entry) = load(
        &mut vm,
        &mut vcpu,
        image,
        modules,
        name,
        boot.guest_cmdline(),
    );
    println!(
        "hv: running guest {name} ({}, {} MiB, entry {entry:#x}{})",
        match kind {
            Kind::Multiboot => "Multiboot",
            Kind::Elf64 => "ELF64",
        },
        memory >> 20,
        match modules.len() {
            0 => alloc::string::String::new(),
            n => alloc::format!(", {n} module{}", if n == 1 { "" } else { "s" }),
        }
    );
    let (stop, vcpu) = match cpus {
        1 => (vcpu.run(&mut vm, host), vcpu),
        n => run_smp(vm, vcpu, n, host),
    };
    crate::console::end_raw_line();
    match stop {
        Stop::ExitDevice(status) => {
            println!(
                "hv: guest {name} wrote {} to the exit device after {} exits",
                status >> 1,
                vcpu.exits
            );
            print_exit_counts(&vcpu);
            // The same value to the real device: QEMU exits as it would
            // have under the guest alone.
            exit_raw(status >> 1)
        }
        // A guest of the stubs' ABI reports through HC_DONE: as the
        // kvm-unit-tests convention on the exit device, 0 pass, 1 fail.
        Stop::Done { pass, message } => {
            let code = u32::from(!pass);
            println!(
                "hv: guest {name} reported {} after {} exits{}{message}",
                if pass { "success" } else { "failure" },
                vcpu.exits,
                if message.is_empty() { "" } else { ": " }
            );
            print_exit_counts(&vcpu);
            exit_raw(code)
        }
        stop => {
            // exits::dispatch already logged the exit state (rip, exit
            // code, exit info).
            let s = &vcpu.vmcb.state;
            println!(
                "hv: guest {name} died: {stop}; rip {:#x} cs {:#x} cr0 {:#x} cr4 {:#x} efer {:#x} exit code {:#x} after {} exits",
                s.rip,
                s.cs.selector,
                s.cr0,
                s.cr4,
                s.efer,
                vcpu.vmcb.control.exit_code,
                vcpu.exits
            );
            print_exit_counts(&vcpu);
            exit(ExitCode::GuestDied)
        }
    }
}

/// Runs the guest with `n` vCPUs (`vmm::multi`): vCPU 0 as loaded, the
/// others waiting for INIT and SIPI (application processors at reset).
/// Returns vCPU 0's stop and vCPU 0.
fn run_smp(vm: Vm, first: Vcpu, n: usize, host: &enable::HostCpu) -> (Stop, Vcpu) {
    let mut vcpus = alloc::vec![first];
    for i in 1..n {
        let mut v = match Vcpu::new() {
            Ok(v) => v,
            Err(why) => {
                println!("hv: cannot create vCPU {i}: {why}");
                exit(ExitCode::Failure)
            }
        };
        // Intercepts, NPT and maps; the state is the SIPI's.
        setup::init_vmcb(&mut v, &vm, 0);
        v.lapic = crate::vmm::multi::vcpu_lapic(i, vm.l1_limits.max_phys_bits);
        vcpus.push(v);
    }
    vcpus[0].lapic = crate::vmm::multi::vcpu_lapic(0, vm.l1_limits.max_phys_bits);
    let mut starts = alloc::vec![crate::vmm::multi::Start::WaitForSipi; n];
    starts[0] = crate::vmm::multi::Start::Running;
    match crate::vmm::multi::run(vm, &mut vcpus, &starts, host) {
        Ok((_vm, mut stops)) => {
            for (i, s) in stops.iter().enumerate().skip(1) {
                log::debug!("vCPU {i}: {s}");
            }
            (stops.swap_remove(0), vcpus.swap_remove(0))
        }
        Err(why) => {
            println!("hv: cannot run {n} vCPUs: {why}");
            exit(ExitCode::Failure)
        }
    }
}

/// Where the run's time went: the exits by reason, most frequent first
/// (`hv: exits: Ioio 812, Msr 40, ...`), and the host TSC ticks spent in L0.
fn print_exit_counts(vcpu: &Vcpu) {
    let mut counts: alloc::vec::Vec<(u64, u64)> = vcpu.exit_counts.iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut line = alloc::string::String::new();
    for (code, n) in counts {
        if !line.is_empty() {
            line.push_str(", ");
        }
        line.push_str(&alloc::format!("{:?} {n}", svm::ExitCode::from_raw(code)));
    }
    let other = vcpu.exit_counts.overflow();
    if other != 0 {
        line.push_str(&alloc::format!(", other {other}"));
    }
    println!(
        "hv: exits: {} ({} host TSC ticks in L0)",
        if line.is_empty() { "none" } else { &line },
        vcpu.host_ticks
    );
}

/// Loads `image` into `vm` and sets up `vcpu` to enter it: Multiboot 1 when
/// the image has a Multiboot header, else ELF64. A malformed image ends the
/// run here, before anything of it runs.
fn load(
    vm: &mut Vm,
    vcpu: &mut Vcpu,
    image: &[u8],
    modules: &[boot_pack::Entry<'_>],
    name: &str,
    args: &str,
) -> (Kind, u64) {
    match multiboot::find_header(image) {
        Err(multiboot::ImageError::NoHeader) => {}
        _ => {
            let entry = load_multiboot(vm, vcpu, image, modules, name, args);
            return (Kind::Multiboot, entry);
        }
    }
    if !modules.is_empty() {
        bad_image(format_args!(
            "{name}: boot modules need a Multiboot image (an ELF64 guest has no module list)"
        ));
    }
    match loader::load(image, &mut vm.memory) {
        Ok(entry) => {
            // The stubs' ABI (svm::guest_abi) has one string, the test
            // name: the guest's command line when there is one.
            let words = if args.is_empty() { name } else { args };
            if let Err(why) = setup::write_start_state(vm, words) {
                bad_image(format_args!("{name}: {why}"));
            }
            setup::init_vmcb(vcpu, vm, entry);
            (Kind::Elf64, entry)
        }
        Err(loader::LoadError::NotElf64) => bad_image(format_args!(
            "{name}: neither a Multiboot 1 image (no header in its first 8 KiB) nor an x86-64 ELF"
        )),
        Err(e) => bad_image(format_args!("{name}: ELF64 image: {e:?}")),
    }
}

fn load_multiboot(
    vm: &mut Vm,
    vcpu: &mut Vcpu,
    image: &[u8],
    files: &[boot_pack::Entry<'_>],
    name: &str,
    args: &str,
) -> u64 {
    let ram = vm.memory.size();
    let plan = multiboot::plan(image, ram)
        .unwrap_or_else(|e| bad_image(format_args!("{name}: Multiboot image: {e:?}")));
    if let Err(e) = plan.load_into(image, vm.memory.bytes_mut()) {
        bad_image(format_args!("{name}: Multiboot image: {e:?}"));
    }
    // Boot modules: page-aligned above the image, with their names as
    // their strings (the mods_addr list of the info block).
    let mut sizes = [0u64; boot_pack::MAX_ENTRIES];
    let mut starts = [0u32; boot_pack::MAX_ENTRIES];
    for (size, file) in sizes.iter_mut().zip(files) {
        *size = file.data.len() as u64;
    }
    let n = files.len();
    let Some(modules_end) = multiboot::place_modules(&plan, ram, &sizes[..n], &mut starts[..n])
    else {
        bad_image(format_args!(
            "{name}: its {n} boot modules do not fit in {} MiB of guest RAM",
            ram >> 20
        ));
    };
    let mut modules = [multiboot::Module {
        start: 0,
        end: 0,
        string: &[],
    }; boot_pack::MAX_ENTRIES];
    for ((module, file), &start) in modules.iter_mut().zip(files).zip(&starts) {
        let len = file.data.len() as u64;
        match vm.memory.slice_mut(u64::from(start), len) {
            Ok(dst) => dst.copy_from_slice(file.data),
            Err(_) => bad_image(format_args!("{name}: a boot module outside guest RAM")),
        }
        *module = multiboot::Module {
            start,
            end: start + len as u32,
            string: file.name,
        };
    }
    let map = multiboot::pc_memory_map(ram);
    let input = multiboot::InfoInput {
        file_name: name.as_bytes(),
        args: args.as_bytes(),
        memory_map: &map,
        modules: &modules[..n],
    };
    let mut buf = [0u8; INFO_BUF];
    // The address does not change the length: build once to size it.
    let len = multiboot::build_info(&mut buf, 0, &input)
        .unwrap_or_else(|e| bad_image(format_args!("{name}: Multiboot info: {e:?}")));
    let Some(base) = multiboot::place_info_above(&plan, ram, len, modules_end) else {
        bad_image(format_args!(
            "{name}: no room in {} MiB of guest RAM for the Multiboot info",
            ram >> 20
        ));
    };
    let len = multiboot::build_info(&mut buf, base, &input)
        .unwrap_or_else(|e| bad_image(format_args!("{name}: Multiboot info: {e:?}")));
    match vm.memory.slice_mut(u64::from(base), len as u64) {
        Ok(dst) => dst.copy_from_slice(&buf[..len]),
        Err(_) => bad_image(format_args!("{name}: Multiboot info outside guest RAM")),
    }
    let entry = multiboot::entry_state(plan.entry, base);
    setup::init_vmcb_multiboot(vcpu, vm, &entry);
    u64::from(plan.entry)
}

/// Reports an image that cannot run and ends the run with
/// [`ExitCode::BadImage`]; nothing of the guest ran.
fn bad_image(why: core::fmt::Arguments<'_>) -> ! {
    println!("hv: cannot load the guest: {why}");
    exit(ExitCode::BadImage)
}
