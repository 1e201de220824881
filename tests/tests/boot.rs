//! Direct (PVH) boots of the kernel under QEMU TCG: the banner, and the two
//! deliberate failures the kernel offers on its command line, unknown
//! command-line words, and a CPU without SVM.

use hv_tests::{
    boot_direct, contains_ignore_case, kernel, run_dir, Boot, FAILURE_STATUS, SUCCESS_STATUS,
    TIMEOUT,
};
use xtask::accel::Accel;
use xtask::qemu::{self, Firmware, Medium, RunConfig};
use xtask::runner::{self, Options};
use xtask::verdict::{Verdict, NOTHING_RAN_STATUS};

/// The first non-empty serial line: the kernel's first words.
fn first_line(boot: &Boot) -> &str {
    boot.lines().find(|l| !l.trim().is_empty()).unwrap_or("")
}

#[test]
fn direct_boot_prints_the_banner_and_succeeds() {
    let boot = boot_direct(&[]);
    boot.assert_banner();
    assert_eq!(boot.banner("boot: "), Some("boot: pvh"));
    // The banner is the first thing the kernel prints.
    assert_eq!(first_line(&boot), "boot: pvh", "first line (serial above)");
    // QEMU runs -smp 2 by default, and both CPUs run the hypervisor.
    assert_eq!(boot.banner("cpus: "), Some("cpus: 2"));
    boot.assert_status(SUCCESS_STATUS);
}

#[test]
fn page_fault_is_reported_and_fails() {
    let boot = boot_direct(&["fault=page"]);
    assert!(
        contains_ignore_case(&boot.serial, "page fault"),
        "no page fault report (serial output above)"
    );
    // The banner comes first, complete, before the fault fires.
    assert_eq!(first_line(&boot), "boot: pvh", "first line (serial above)");
    boot.assert_banner();
    let tsc = boot.serial.find("\ntsc: ").expect("tsc banner line");
    let fault = boot.serial.to_ascii_lowercase().find("page fault").unwrap();
    assert!(tsc < fault, "the fault report comes before the banner");
    // A failure verdict, not a success and not a triple fault (status 0).
    boot.assert_status(FAILURE_STATUS);
}

#[test]
fn panic_is_reported_and_fails() {
    let boot = boot_direct(&["fault=panic"]);
    assert!(
        boot.lines().any(|line| line.contains("panic")),
        "no panic line (serial output above)"
    );
    boot.assert_status(FAILURE_STATUS);
}

#[test]
fn unknown_command_line_words_are_warned_about() {
    // Words after `--` are a guest's: the kernel never reads them.
    let boot = boot_direct(&["tests=none", "frob", "colour=blue", "--", "guestword"]);
    assert!(
        !boot.serial.contains("guestword"),
        "a guest's word was read as the kernel's"
    );
    for word in ["frob", "colour=blue"] {
        let warning = format!(
            "[WARN ] unknown command-line word {word:?} (known: log=, fault=, tests=, apic=, fuzz=, guest=, guest_mem=, guest_cpu=, guest_cpus=)"
        );
        assert!(
            boot.lines().any(|l| l == warning),
            "no `{warning}` line (serial output above)"
        );
    }
    assert!(
        !boot.serial.contains("\"tests=none\""),
        "a known word was warned about"
    );
    // `tests=none` stays valid: no test, success.
    assert!(boot.lines().any(|l| l == "0 passed, 0 failed"));
    boot.assert_status(SUCCESS_STATUS);
}

/// Boots directly on a CPU without SVM (QEMU takes the last `-cpu`).
fn boot_without_svm(cmdline: &[&str]) -> Boot {
    let config = RunConfig {
        medium: Medium::Direct {
            kernel: kernel().to_path_buf(),
            cmdline: cmdline.iter().map(|w| w.to_string()).collect(),
        },
        firmware: Firmware::Bios,
        accel: Accel::Tcg,
        gdb: false,
        debugcon: run_dir().join("qemu-debugcon.log"),
        icount: false,
        smp: qemu::DEFAULT_SMP,
    };
    let mut command = qemu::command(&config).expect("QEMU command");
    command.args(["-cpu", "qemu64,-svm"]);
    let options = Options {
        timeout: Some(TIMEOUT),
        echo: false,
    };
    let outcome = runner::run(command, options).expect("running QEMU");
    let boot = Boot {
        label: format!("direct boot without SVM [{}]", cmdline.join(" ")),
        status: outcome.status,
        verdict: Verdict::of(&outcome),
        serial: outcome.serial.replace('\r', ""),
        qemu_stderr: outcome.stderr,
    };
    println!("{boot}");
    boot
}

#[test]
fn a_run_where_every_test_is_skipped_is_not_a_success() {
    let boot = boot_without_svm(&["tests=guest::cpuid"]);
    assert!(
        boot.lines()
            .any(|l| l.starts_with("svm: ") && l.contains("clear")),
        "the banner does not say SVM is missing (serial output above)"
    );
    let skipped = boot
        .lines()
        .filter(|l| l.starts_with("test ") && l.contains(" ... skipped (SVM unavailable: "))
        .count();
    assert_eq!(skipped, 2, "skip lines (serial output above)");
    assert!(
        boot.lines()
            .any(|l| l == "nothing ran: all 2 selected tests were skipped (exit status 37)"),
        "no `nothing ran` line (serial output above)"
    );
    assert_eq!(boot.verdict, Verdict::NothingRan);
    boot.assert_status(NOTHING_RAN_STATUS);
}

/// A Multiboot 1 image with the a.out kludge (flags bit 16), loaded and
/// entered at 1 MiB: the 32-byte header, then `code`.
fn multiboot_image(code: &[u8]) -> Vec<u8> {
    const LOAD: u32 = 0x10_0000;
    let flags: u32 = 1 << 16;
    let magic: u32 = 0x1BAD_B002;
    let fields = [
        magic,
        flags,
        0u32.wrapping_sub(magic).wrapping_sub(flags),
        LOAD,      // header_addr
        LOAD,      // load_addr
        0,         // load_end_addr: the whole file
        0,         // bss_end_addr: no BSS
        LOAD + 32, // entry_addr: just after the header
    ];
    let mut image: Vec<u8> = fields.iter().flat_map(|f| f.to_le_bytes()).collect();
    image.extend_from_slice(code);
    image
}

/// Checks the Multiboot entry (EAX magic, else exit code 0x20), prints the
/// info block's command line and a newline on COM1, reads the CPU count
/// from fw_cfg (key 5) and writes 4 + that count to the exit device.
const MB_ECHO_CMDLINE: &[u8] = &[
    0x3d, 0x02, 0xb0, 0xad, 0x2b, // cmp eax, 0x2BADB002
    0x75, 0x2a, // jne bad
    0x8b, 0x73, 0x10, // mov esi, [ebx + 16] (cmdline)
    0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0xac, // loop: lodsb
    0x84, 0xc0, // test al, al
    0x74, 0x03, // jz done
    0xee, // out dx, al
    0xeb, 0xf8, // jmp loop
    0xb0, 0x0a, 0xee, // done: mov al, 10; out dx, al
    0x66, 0xba, 0x10, 0x05, // mov dx, 0x510
    0x66, 0xb8, 0x05, 0x00, // mov ax, 5 (FW_CFG_NB_CPUS)
    0x66, 0xef, // out dx, ax
    0x42, // inc edx (0x511)
    0xec, // in al, dx
    0x0f, 0xb6, 0xc0, // movzx eax, al
    0x83, 0xc0, 0x04, // add eax, 4
    0x66, 0xba, 0xf4, 0x00, // mov dx, 0xf4
    0xef, 0xf4, // out dx, eax; hlt
    0xb8, 0x20, 0x00, 0x00, 0x00, // bad: mov eax, 0x20
    0x66, 0xba, 0xf4, 0x00, // mov dx, 0xf4
    0xef, 0xf4, // out dx, eax; hlt
];

/// Boots the kernel with `image` as the guest (`cargo xtask run --guest`):
/// QEMU's status and the raw serial output.
fn boot_guest(name: &str, image: &[u8], append: &str) -> (Option<i32>, String) {
    boot_guest_with_modules(name, image, append, &[])
}

/// [`boot_guest`] with Multiboot modules (`--guest-module`): name, bytes.
fn boot_guest_with_modules(
    name: &str,
    image: &[u8],
    append: &str,
    modules: &[(&str, &[u8])],
) -> (Option<i32>, String) {
    let dir = run_dir();
    let file = dir.join(name);
    std::fs::write(&file, image).unwrap();
    let mut paths = Vec::new();
    for (module, bytes) in modules {
        let path = dir.join(module);
        std::fs::write(&path, bytes).unwrap();
        paths.push(path);
    }
    let guest = xtask::guest::GuestArgs {
        file: file.clone(),
        append: append.into(),
        mem_mib: 64,
        cpus: 1,
        modules: paths,
    };
    let file = guest.boot_module(&dir).unwrap();
    let config = RunConfig {
        medium: Medium::Direct {
            kernel: kernel().to_path_buf(),
            cmdline: guest.kernel_cmdline(&[]),
        },
        firmware: Firmware::Bios,
        accel: Accel::Tcg,
        gdb: false,
        debugcon: dir.join("qemu-debugcon.log"),
        icount: false,
        smp: qemu::DEFAULT_SMP,
    };
    let module = qemu::GuestModule {
        file,
        memory_mib: guest.qemu_memory_mib(),
    };
    let command = qemu::command_with(&config, Some(&module)).unwrap();
    let options = Options {
        timeout: Some(TIMEOUT),
        echo: false,
    };
    let outcome = runner::run(command, options).unwrap();
    println!(
        "--- status {:?}, serial:\n{}\n--- qemu stderr:\n{}",
        outcome.status, outcome.serial, outcome.stderr
    );
    (outcome.status, outcome.serial)
}

#[test]
fn a_multiboot_guest_runs_with_its_command_line_and_exit_status() {
    let (status, serial) = boot_guest("mb.bin", &multiboot_image(MB_ECHO_CMDLINE), "hello  world");
    // (4 + 1 CPU) << 1 | 1, as bare QEMU's isa-debug-exit would give.
    assert_eq!(status, Some(11), "serial output above");
    // The guest's bytes verbatim (no prefix, no CR added), its command line
    // led by its file name; the hypervisor's own lines around them.
    assert!(
        serial.contains("\nmb.bin hello world\nhv: guest mb.bin wrote 5 to the exit device"),
        "serial output above"
    );
    assert!(serial.starts_with("hv: running guest mb.bin (Multiboot, 64 MiB, entry 0x100020)"));
    // Where the time went: the exits by reason, port I/O the most here.
    assert!(serial.contains("\nhv: exits: Ioio "), "serial output above");
    // Quiet: no banner, no self-tests.
    assert!(!serial.contains("boot: pvh") && !serial.contains("passed"));
}

#[test]
fn a_guest_that_dies_ends_with_its_own_status_and_a_report() {
    // "x" without a newline, then UD2 with no IDT: #UD, then #GP on the
    // empty IDT, then a triple fault.
    let code = [
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'x', 0xee, // mov al, 'x'; out dx, al
        0x0f, 0x0b, // ud2
    ];
    let (status, serial) = boot_guest("ud2.bin", &multiboot_image(&code), "");
    assert_eq!(
        status,
        Some(xtask::guest::GUEST_DIED_STATUS),
        "serial output above"
    );
    // The hypervisor's report starts on a line of its own.
    assert!(
        serial.contains("x\r\n[WARN ] vm ud2.bin: stopped: triple fault (shutdown); rip 0x100027"),
        "serial output above"
    );
    assert!(
        serial.contains("hv: guest ud2.bin died: triple fault"),
        "serial output above"
    );
}

#[test]
fn a_malformed_guest_image_is_refused_before_it_runs() {
    // A bad checksum: the header is found but refused.
    let mut image = multiboot_image(MB_ECHO_CMDLINE);
    image[8] ^= 1;
    let (status, serial) = boot_guest("bad.bin", &image, "");
    assert_eq!(
        status,
        Some(xtask::guest::BAD_IMAGE_STATUS),
        "serial output above"
    );
    assert!(
        serial.contains("hv: cannot load the guest: bad.bin: Multiboot image: BadChecksum"),
        "serial output above"
    );
    assert!(!serial.contains("hv: running guest"));
}

#[test]
fn an_elf64_guest_runs_with_its_verdict_as_the_exit_status() {
    // The guest stubs, which building the kernel builds (hv/build.rs).
    kernel();
    let stub =
        xtask::workspace::root().join("target/guest-stubs/x86_64-unknown-none/release/guest");
    let image = std::fs::read(&stub).unwrap_or_else(|e| panic!("{}: {e}", stub.display()));
    // The command line is the stub's test name; HC_DONE(pass) is status 1.
    let (status, serial) = boot_guest("guest", &image, "guest::console");
    assert_eq!(status, Some(1), "serial output above");
    assert!(
        serial.contains("\nhello from the guest console\n"),
        "serial output above"
    );
    assert!(serial.contains("hv: running guest guest (ELF64, 64 MiB"));
    // A failure report is status 3, as kvm-unit-tests' failures.
    let (status, serial) = boot_guest("guest", &image, "no_such_test");
    assert_eq!(status, Some(3), "serial output above");
    assert!(
        serial.contains("reported failure after"),
        "serial output above"
    );
}

/// REP INSB of fw_cfg's signature (key 0) into memory at 2 MiB, then REP
/// OUTSB of it to COM1 and a newline; REP INSB of 5000 bytes from an
/// unassigned port; exit code 7 + the ECX left (0) + (last byte ^ 0xFF).
const MB_STRING_IO: &[u8] = &[
    0x66, 0xba, 0x10, 0x05, // mov dx, 0x510
    0x31, 0xc0, // xor eax, eax
    0x66, 0xef, // out dx, ax (select the signature)
    0x42, // inc edx (0x511)
    0xbf, 0x00, 0x00, 0x20, 0x00, // mov edi, 0x200000
    0xb9, 0x04, 0x00, 0x00, 0x00, // mov ecx, 4
    0xfc, // cld
    0xf3, 0x6c, // rep insb
    0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0xbe, 0x00, 0x00, 0x20, 0x00, // mov esi, 0x200000
    0xb9, 0x04, 0x00, 0x00, 0x00, // mov ecx, 4
    0xf3, 0x6e, // rep outsb
    0xb0, 0x0a, 0xee, // mov al, 10; out dx, al
    // 5000 bytes from an unassigned port: more than one exit's worth.
    0x66, 0xba, 0xd0, 0x04, // mov dx, 0x4d0
    0xbf, 0x00, 0x00, 0x30, 0x00, // mov edi, 0x300000
    0xb9, 0x88, 0x13, 0x00, 0x00, // mov ecx, 5000
    0xf3, 0x6c, // rep insb
    0x0f, 0xb6, 0x05, 0x87, 0x13, 0x30, 0x00, // movzx eax, byte [0x301387] (the last)
    0x35, 0xff, 0x00, 0x00, 0x00, // xor eax, 0xff (0 when all-ones was read)
    0x01, 0xc1, // add ecx, eax
    0x8d, 0x41, 0x07, // lea eax, [ecx + 7]
    0x66, 0xba, 0xf4, 0x00, // mov dx, 0xf4
    0xef, 0xf4, // out dx, eax; hlt
];

#[test]
fn a_guest_s_string_io_reaches_the_devices() {
    let (status, serial) = boot_guest("strio.bin", &multiboot_image(MB_STRING_IO), "");
    assert!(
        serial.contains("\nQEMU\nhv: guest strio.bin wrote 7"),
        "serial output above"
    );
    // (7 << 1) | 1: REP ran ECX down to 0.
    assert_eq!(status, Some(15), "serial output above");
}

/// Prints its first Multiboot module as `<string>:<bytes>` and a newline on
/// COM1, then writes mods_count + (the module's start & 0xFFF) to the exit
/// device (so a module that is not page-aligned shows in the status).
const MB_PRINT_MODULE: &[u8] = &[
    0x8b, 0x4b, 0x14, // mov ecx, [ebx + 20] (mods_count)
    0x8b, 0x7b, 0x18, // mov edi, [ebx + 24] (mods_addr)
    0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0x8b, 0x77, 0x08, // mov esi, [edi + 8] (its string)
    0xac, // loop: lodsb
    0x84, 0xc0, // test al, al
    0x74, 0x03, // jz name_done
    0xee, // out dx, al
    0xeb, 0xf8, // jmp loop
    0xb0, 0x3a, 0xee, // name_done: mov al, ':'; out dx, al
    0x8b, 0x37, // mov esi, [edi] (start)
    0x8b, 0x6f, 0x04, // mov ebp, [edi + 4] (end)
    0x39, 0xee, // bytes: cmp esi, ebp
    0x73, 0x04, // jae bytes_done
    0xac, // lodsb
    0xee, // out dx, al
    0xeb, 0xf8, // jmp bytes
    0xb0, 0x0a, 0xee, // bytes_done: mov al, 10; out dx, al
    0x8b, 0x07, // mov eax, [edi]
    0x25, 0xff, 0x0f, 0x00, 0x00, // and eax, 0xfff
    0x01, 0xc8, // add eax, ecx
    0x66, 0xba, 0xf4, 0x00, // mov dx, 0xf4
    0xef, 0xf4, // out dx, eax; hlt
];

#[test]
fn a_multiboot_guest_gets_its_modules() {
    // kvm-unit-tests reads an env module of NR_CPUS=/MEMSIZE= lines
    // (lib/x86/setup.c: exactly one module).
    let env: &[u8] = b"NR_CPUS=1\nMEMSIZE=64\n";
    let (status, serial) = boot_guest_with_modules(
        "mbmod.bin",
        &multiboot_image(MB_PRINT_MODULE),
        "",
        &[("env.txt", env), ("second.bin", b"\x01\x02")],
    );
    assert!(
        serial.starts_with(
            "hv: running guest mbmod.bin (Multiboot, 64 MiB, entry 0x100020, 2 modules)"
        ),
        "serial output above"
    );
    assert!(
        serial.contains("\nenv.txt:NR_CPUS=1\nMEMSIZE=64\n\nhv: guest mbmod.bin wrote 2"),
        "serial output above"
    );
    // (2 modules + 0 misalignment) << 1 | 1.
    assert_eq!(status, Some(5), "serial output above");
}

#[test]
fn modules_need_a_multiboot_image() {
    kernel();
    let stub =
        xtask::workspace::root().join("target/guest-stubs/x86_64-unknown-none/release/guest");
    let image = std::fs::read(&stub).unwrap_or_else(|e| panic!("{}: {e}", stub.display()));
    let (status, serial) =
        boot_guest_with_modules("guest", &image, "", &[("env.txt", b"NR_CPUS=1\n")]);
    assert_eq!(
        status,
        Some(xtask::guest::BAD_IMAGE_STATUS),
        "serial output above"
    );
    assert!(
        serial.contains("boot modules need a Multiboot image"),
        "serial output above"
    );
}
