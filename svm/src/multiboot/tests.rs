use super::*;
use std::vec;
use std::vec::Vec;

const MIB: u64 = 1 << 20;
const RAM: u64 = 256 * MIB;

fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

fn get32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn get64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// Writes a header with `flags` and a correct checksum at `off`.
fn put_header(b: &mut [u8], off: usize, flags: u32) {
    put32(b, off, HEADER_MAGIC);
    put32(b, off + 4, flags);
    put32(
        b,
        off + 8,
        0u32.wrapping_sub(HEADER_MAGIC).wrapping_sub(flags),
    );
}

/// (p_type, p_offset, p_vaddr = p_paddr, p_filesz, p_memsz)
type Ph = (u32, u32, u32, u32, u32);

/// An ELF32 i386 executable with a Multiboot header (flags 0) at 0xb0 and
/// the program headers at 0x34 (header after them if they pass 0xb0),
/// `len` bytes long.
fn elf(len: usize, entry: u32, phs: &[Ph]) -> Vec<u8> {
    let mut b = vec![0u8; len];
    b[..4].copy_from_slice(b"\x7fELF");
    b[4] = 1; // ELFCLASS32
    b[5] = 1; // ELFDATA2LSB
    b[6] = 1; // EV_CURRENT
    put16(&mut b, 0x10, 2); // ET_EXEC
    put16(&mut b, 0x12, 3); // EM_386
    put32(&mut b, 0x14, 1);
    put32(&mut b, 0x18, entry);
    put32(&mut b, 0x1C, 0x34);
    put16(&mut b, 0x28, 52);
    put16(&mut b, 0x2A, 32);
    put16(&mut b, 0x2C, phs.len() as u16);
    for (i, &(t, off, addr, filesz, memsz)) in phs.iter().enumerate() {
        let p = 0x34 + 32 * i;
        put32(&mut b, p, t);
        put32(&mut b, p + 4, off);
        put32(&mut b, p + 8, addr);
        put32(&mut b, p + 12, addr);
        put32(&mut b, p + 16, filesz);
        put32(&mut b, p + 20, memsz);
    }
    // At 0xb0 as in kvm-unit-tests, unless many program headers reach there.
    put_header(
        &mut b,
        (0x34 + 32 * phs.len()).next_multiple_of(4).max(0xb0),
        0,
    );
    b
}

const KUT_BSS: u32 = 0xC4_0000; // ~12.3 MiB, as x86/svm.flat

/// kvm-unit-tests' layout: text at 0x4000b0 (file 0xb0, header first),
/// data + BSS from 0x410000 (file 0x1000), entry 0x4000bc.
fn kut() -> Vec<u8> {
    elf(
        0x1100,
        0x40_00bc,
        &[
            (1, 0xb0, 0x40_00b0, 0x100, 0x100),
            (4, 0, 0, 0, 0), // PT_NOTE: skipped
            (1, 0x1000, 0x41_0000, 0x100, 0x100 + KUT_BSS),
        ],
    )
}

#[test]
fn kvm_unit_tests_layout_loads_by_program_headers() {
    let img = kut();
    let p = plan(&img, RAM).unwrap();
    assert_eq!(p.header.offset, 0xb0);
    assert_eq!(p.header.flags, 0);
    assert_eq!(p.header.aout, None);
    assert_eq!(p.entry, 0x40_00bc);
    assert_eq!(
        p.segments(),
        &[
            Segment {
                paddr: 0x40_00b0,
                file_offset: 0xb0,
                file_len: 0x100,
                zero_len: 0
            },
            Segment {
                paddr: 0x41_0000,
                file_offset: 0x1000,
                file_len: 0x100,
                zero_len: KUT_BSS
            },
        ]
    );
    assert_eq!(p.segments()[0].bytes(&img)[..4], HEADER_MAGIC.to_le_bytes());
    assert_eq!(p.span(), (0x40_00b0, 0x41_0100 + u64::from(KUT_BSS)));
    assert!(!p.overlaps(0, 0x40_00b0));
    assert!(p.overlaps(0x40_00af, 0x40_00b1));
}

#[test]
fn page_zero_is_ram_and_the_last_byte_of_ram_is_usable() {
    let img = elf(0x200, 0x10, &[(1, 0x100, 0, 0x100, 0x1000)]);
    assert_eq!(plan(&img, 0x1000).unwrap().segments()[0].paddr, 0);
    assert_eq!(plan(&img, 0xFFF), Err(ImageError::SegmentBeyondRam));
}

#[test]
fn elf_entry_is_translated_from_virtual_to_physical() {
    let mut img = elf(0x200, 0xC010_0004, &[(1, 0x100, 0, 0x100, 0x100)]);
    put32(&mut img, 0x34 + 8, 0xC010_0000); // p_vaddr (higher half)
    put32(&mut img, 0x34 + 12, 0x10_0000); // p_paddr
    let p = plan(&img, RAM).unwrap();
    assert_eq!(p.segments()[0].paddr, 0x10_0000);
    assert_eq!(p.entry, 0x10_0004);
}

/// a.out kludge: header at file 0x40, header_addr 0x100040, so the file is
/// loaded from offset 0 at 0x100000; 0x200 bytes, BSS to 0x101000.
fn aout(len: usize) -> Vec<u8> {
    let mut b = vec![0xAAu8; len];
    put_header(
        &mut b,
        0x40,
        FLAG_AOUT_KLUDGE | FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO,
    );
    put32(&mut b, 0x4C, 0x10_0040);
    put32(&mut b, 0x50, 0x10_0000);
    put32(&mut b, 0x54, 0x10_0200);
    put32(&mut b, 0x58, 0x10_1000);
    put32(&mut b, 0x5C, 0x10_0060);
    b
}

#[test]
fn aout_kludge_loads_by_the_header_addresses() {
    let img = aout(0x300);
    let p = plan(&img, RAM).unwrap();
    assert!(p.header.wants_page_aligned_modules());
    assert_eq!(p.header.aout.unwrap().load_addr, 0x10_0000);
    assert_eq!(p.entry, 0x10_0060);
    assert_eq!(
        p.segments(),
        &[Segment {
            paddr: 0x10_0000,
            file_offset: 0,
            file_len: 0x200,
            zero_len: 0xE00
        }]
    );
}

#[test]
fn aout_zero_end_fields_mean_end_of_file_and_no_bss() {
    let mut img = aout(0x300);
    put32(&mut img, 0x54, 0);
    put32(&mut img, 0x58, 0);
    let p = plan(&img, RAM).unwrap();
    assert_eq!(p.segments()[0].file_len, 0x300);
    assert_eq!(p.segments()[0].zero_len, 0);
}

#[test]
fn aout_kludge_wins_over_elf() {
    // An ELF whose header asks for the kludge is loaded by the kludge
    // (GRUB 2, QEMU).
    let mut img = kut();
    put_header(&mut img, 0xb0, FLAG_AOUT_KLUDGE);
    put32(&mut img, 0xbc, 0x20_0000); // header_addr
    put32(&mut img, 0xc0, 0x20_0000 - 0xb0); // load_addr: file offset 0
    put32(&mut img, 0xc4, 0);
    put32(&mut img, 0xc8, 0);
    put32(&mut img, 0xcc, 0x20_0000);
    let p = plan(&img, RAM).unwrap();
    assert_eq!(p.segments().len(), 1);
    assert_eq!(p.segments()[0].paddr, 0x20_0000 - 0xb0);
    assert_eq!(p.segments()[0].file_len as usize, img.len());
}

#[test]
fn header_search_rules() {
    // Not 4-byte aligned: not found.
    let mut b = vec![0u8; 64];
    put_header(&mut b, 2, 0);
    assert_eq!(find_header(&b), Err(ImageError::NoHeader));
    // Past 8192 bytes: not found.
    let mut b = vec![0u8; SEARCH_LIMIT + 64];
    put_header(&mut b, SEARCH_LIMIT, 0);
    assert_eq!(find_header(&b), Err(ImageError::NoHeader));
    // Last aligned slot: found.
    let mut b = vec![0u8; SEARCH_LIMIT + 64];
    put_header(&mut b, SEARCH_LIMIT - 12, 0);
    assert_eq!(find_header(&b).unwrap().offset, SEARCH_LIMIT - 12);
    // Magic at the edge, flags/checksum cut off.
    let mut b = vec![0u8; 8];
    put32(&mut b, 4, HEADER_MAGIC);
    assert_eq!(find_header(&b), Err(ImageError::HeaderTruncated));
    // A magic with a bad checksum (data, say) is skipped for a good one.
    let mut b = vec![0u8; 64];
    put32(&mut b, 4, HEADER_MAGIC);
    put_header(&mut b, 32, 0);
    assert_eq!(find_header(&b).unwrap().offset, 32);
    // Only bad ones: the first names the error.
    put32(&mut b, 40, 1);
    assert_eq!(find_header(&b), Err(ImageError::BadChecksum));
    // Optional flag bits 17-31 are ignored.
    let mut b = vec![0u8; 16];
    put_header(&mut b, 0, 0x8000_0000 | FLAG_MEMORY_INFO);
    assert_eq!(find_header(&b).unwrap().flags, 0x8000_0002);
}

fn err(img: &[u8]) -> ImageError {
    plan(img, RAM).unwrap_err()
}

#[test]
fn malformed_images_are_specific_errors() {
    assert_eq!(err(&[]), ImageError::NoHeader);
    assert_eq!(err(&[0u8; 100]), ImageError::NoHeader);

    let mut img = kut();
    put32(&mut img, 0xb8, 0);
    assert_eq!(err(&img), ImageError::BadChecksum);

    let mut img = kut();
    put_header(&mut img, 0xb0, FLAG_VIDEO_MODE);
    assert_eq!(err(&img), ImageError::UnsupportedFlags(FLAG_VIDEO_MODE));
    put_header(&mut img, 0xb0, 1 << 15 | FLAG_MEMORY_INFO);
    assert_eq!(err(&img), ImageError::UnsupportedFlags(1 << 15));

    let mut img = kut();
    img[0] = 0;
    assert_eq!(err(&img), ImageError::NotElf);
    let mut img = kut();
    img[4] = 2; // ELFCLASS64
    assert_eq!(err(&img), ImageError::UnsupportedElf);
    let mut img = kut();
    put16(&mut img, 0x12, 62); // EM_X86_64
    assert_eq!(err(&img), ImageError::UnsupportedElf);

    let mut img = kut();
    put16(&mut img, 0x2C, 200); // phnum past the end
    assert_eq!(err(&img), ImageError::ProgramHeadersTruncated);
    let mut img = kut();
    put16(&mut img, 0x2A, 16); // phentsize too small
    assert_eq!(err(&img), ImageError::ProgramHeadersTruncated);
    let mut img = kut();
    put32(&mut img, 0x1C, 0xFFFF_FFF0);
    assert_eq!(err(&img), ImageError::ProgramHeadersTruncated);

    let mut img = kut();
    put32(&mut img, 0x34 + 64 + 4, 0x1080); // data file range past the end
    assert_eq!(err(&img), ImageError::SegmentOutsideImage);
    let mut img = kut();
    put32(&mut img, 0x34 + 16, 0x200); // filesz > memsz
    assert_eq!(err(&img), ImageError::SegmentOutsideImage);

    // 0x410000 + 12.3 MiB is beyond 16 MiB of RAM.
    assert_eq!(plan(&kut(), 16 * MIB), Err(ImageError::SegmentBeyondRam));
    let mut img = kut();
    put32(&mut img, 0x34 + 64 + 12, 0xFFFF_FF00); // past 4 GiB
    assert_eq!(plan(&img, 8 << 30), Err(ImageError::SegmentBeyondRam));

    let mut img = kut();
    put32(&mut img, 0x34 + 64 + 12, 0x40_0100); // data paddr inside text
    assert_eq!(err(&img), ImageError::SegmentsOverlap);

    let mut img = kut();
    put32(&mut img, 0x18, 0x50_0000_u32.wrapping_add(KUT_BSS));
    assert_eq!(err(&img), ImageError::EntryOutsideImage);

    let img = elf(0x200, 0, &[(4, 0, 0, 0, 0)]);
    assert_eq!(err(&img), ImageError::NoSegments);
    let img = elf(0x200, 0, &[(1, 0x100, 0, 0, 0)]);
    assert_eq!(err(&img), ImageError::NoSegments);

    let phs: Vec<Ph> = (0..9).map(|i| (1, 0x100, i * 0x1000, 0x10, 0x10)).collect();
    let img = elf(0x400, 0, &phs);
    assert_eq!(err(&img), ImageError::TooManySegments);
}

#[test]
fn malformed_aout_fields_are_errors() {
    let bad = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut img = aout(0x300);
        f(&mut img);
        plan(&img, RAM).unwrap_err()
    };
    // header_addr below load_addr.
    assert_eq!(
        bad(&|b| put32(b, 0x4C, 0xF_0000)),
        ImageError::AoutInconsistent
    );
    // load_addr further before the header than the file has bytes.
    assert_eq!(
        bad(&|b| put32(b, 0x50, 0xF_0000)),
        ImageError::AoutInconsistent
    );
    // load_end_addr below load_addr.
    assert_eq!(
        bad(&|b| put32(b, 0x54, 0xF_0000)),
        ImageError::AoutInconsistent
    );
    // Header not among the loaded bytes.
    assert_eq!(
        bad(&|b| put32(b, 0x54, 0x10_0040)),
        ImageError::AoutInconsistent
    );
    // bss_end_addr below load_end_addr.
    assert_eq!(
        bad(&|b| put32(b, 0x58, 0x10_0100)),
        ImageError::AoutInconsistent
    );
    // load_end_addr past the end of the file.
    assert_eq!(
        bad(&|b| put32(b, 0x54, 0x10_0400)),
        ImageError::SegmentOutsideImage
    );
    // Entry outside load..bss_end.
    assert_eq!(
        bad(&|b| put32(b, 0x5C, 0x10_1000)),
        ImageError::EntryOutsideImage
    );
    // a.out fields cut off by the end of the file.
    let mut img = vec![0u8; 0x18];
    put_header(&mut img, 0, FLAG_AOUT_KLUDGE);
    assert_eq!(plan(&img, RAM), Err(ImageError::HeaderTruncated));
}

#[test]
fn pc_memory_map_has_the_legacy_hole() {
    let m = pc_memory_map(RAM);
    assert_eq!(
        m[0],
        MemoryRegion {
            base: 0,
            len: 0xA_0000,
            kind: MEM_RAM
        }
    );
    assert_eq!(m[1].kind, MEM_RESERVED);
    assert_eq!(
        m[2],
        MemoryRegion {
            base: MIB,
            len: RAM - MIB,
            kind: MEM_RAM
        }
    );
}

#[test]
fn info_block_layout_follows_the_spec() {
    let base = 0x9000;
    let map = pc_memory_map(RAM);
    let mods = [
        Module {
            start: 0x20_0000,
            end: 0x20_0123,
            string: b"env",
        },
        Module {
            start: 0x20_1000,
            end: 0x20_1000,
            string: b"",
        },
    ];
    let input = InfoInput {
        file_name: b"x86/svm.flat",
        args: b"next_rip -latency_*",
        memory_map: &map,
        modules: &mods,
    };
    let mut buf = [0xEEu8; 512];
    let n = build_info(&mut buf, base, &input).unwrap();
    let b = &buf[..n];
    let cmdline = b"x86/svm.flat next_rip -latency_*\0";
    assert_eq!(n, 88 + 3 * 24 + 2 * 16 + cmdline.len() + 4 + 1);
    assert_eq!(buf[n], 0xEE, "nothing written past the block");

    assert_eq!(
        get32(b, 0),
        INFO_MEMORY | INFO_CMDLINE | INFO_MODS | INFO_MMAP
    );
    assert_eq!(get32(b, 0), 0b100_1101);
    assert_eq!(get32(b, 4), 640); // mem_lower
    assert_eq!(get32(b, 8), (RAM - MIB) as u32 / 1024); // mem_upper
    assert_eq!(get32(b, 12), 0); // boot_device: flag clear
    assert_eq!(get32(b, 20), 2); // mods_count
    let mods_addr = get32(b, 24);
    assert_eq!(mods_addr, base + 88 + 72);
    assert_eq!(get32(b, 44), 72); // mmap_length
    assert_eq!(get32(b, 48), base + 88); // mmap_addr: the first size field
    assert!(b[28..44].iter().chain(&b[52..88]).all(|&x| x == 0));

    // mmap entries: size = 20, base, length, type.
    for (i, r) in map.iter().enumerate() {
        let e = 88 + 24 * i;
        assert_eq!(get32(b, e), 20);
        assert_eq!(get64(b, e + 4), r.base);
        assert_eq!(get64(b, e + 12), r.len);
        assert_eq!(get32(b, e + 20), r.kind);
    }

    let at = |addr: u32| (addr - base) as usize;
    let c = at(get32(b, 16));
    assert_eq!(&b[c..c + cmdline.len()], cmdline);

    let m = at(mods_addr);
    assert_eq!(get32(b, m), 0x20_0000);
    assert_eq!(get32(b, m + 4), 0x20_0123);
    let s = at(get32(b, m + 8));
    assert_eq!(&b[s..s + 4], b"env\0");
    assert_eq!(get32(b, m + 12), 0);
    assert_eq!(get32(b, m + 16), 0x20_1000);
    let s = at(get32(b, m + 24));
    assert_eq!(b[s], 0);
    assert_eq!(s, n - 1);
}

#[test]
fn info_block_without_args_or_modules() {
    let map = pc_memory_map(64 * MIB);
    let input = InfoInput {
        file_name: b"k.elf",
        args: b"",
        memory_map: &map,
        modules: &[],
    };
    let mut buf = [0xEEu8; 256];
    let n = build_info(&mut buf, 0x1000, &input).unwrap();
    assert_eq!(get32(&buf, 0), INFO_MEMORY | INFO_CMDLINE | INFO_MMAP);
    assert_eq!(get32(&buf, 8), 63 * 1024);
    assert_eq!(get32(&buf, 20), 0);
    assert_eq!(get32(&buf, 24), 0);
    assert_eq!(get32(&buf, 16), 0x1000 + 88 + 72);
    assert_eq!(&buf[88 + 72..n], b"k.elf\0");
}

#[test]
fn info_block_errors() {
    let map = pc_memory_map(RAM);
    let ok = InfoInput {
        file_name: b"f",
        args: b"a",
        memory_map: &map,
        modules: &[],
    };
    let mut buf = [0u8; 512];
    let run = |i: &InfoInput<'_>, buf: &mut [u8], base| build_info(buf, base, i);
    assert_eq!(
        run(
            &InfoInput {
                file_name: b"",
                ..ok
            },
            &mut buf,
            0
        ),
        Err(InfoError::BadFileName)
    );
    assert_eq!(
        run(
            &InfoInput {
                file_name: b"a b",
                ..ok
            },
            &mut buf,
            0
        ),
        Err(InfoError::BadFileName)
    );
    assert_eq!(
        run(&InfoInput { args: b"a\0", ..ok }, &mut buf, 0),
        Err(InfoError::EmbeddedNul)
    );
    let bad_mod = [Module {
        start: 2,
        end: 1,
        string: b"",
    }];
    assert_eq!(
        run(
            &InfoInput {
                modules: &bad_mod,
                ..ok
            },
            &mut buf,
            0
        ),
        Err(InfoError::BadModule)
    );
    let nul_mod = [Module {
        start: 1,
        end: 2,
        string: b"\0",
    }];
    assert_eq!(
        run(
            &InfoInput {
                modules: &nul_mod,
                ..ok
            },
            &mut buf,
            0
        ),
        Err(InfoError::EmbeddedNul)
    );
    assert_eq!(run(&ok, &mut buf[..88], 0), Err(InfoError::BufferTooSmall));
    assert_eq!(
        run(&ok, &mut buf, 0xFFFF_FFF0),
        Err(InfoError::AddressOverflow)
    );
}

#[test]
fn entry_state_is_the_spec_machine_state() {
    let s = entry_state(0x40_00bc, 0x9000);
    assert_eq!((s.eax, s.ebx, s.eip), (0x2BAD_B002, 0x9000, 0x40_00bc));
    assert_eq!(s.cr0 & 1, 1, "protected mode");
    assert_eq!(s.cr0 & (1 << 31), 0, "paging off");
    assert_eq!(s.rflags & (1 << 9), 0, "IF = 0");
    assert_eq!(s.efer, 0);
    for (seg, typ) in [(s.cs, 0xB), (s.data, 0x3)] {
        assert_eq!((seg.base, seg.limit), (0, 0xFFFF_FFFF));
        assert_eq!(seg.attrib & 0xF, typ);
        assert_eq!(seg.attrib & 0x90, 0x90, "S and P");
        assert_eq!(seg.attrib & 0xC00, 0xC00, "D/B and G: 32-bit, 4 GiB");
        assert_eq!(seg.attrib & 0x200, 0, "not long mode");
    }
    assert!(s.a20);
}

use proptest::prelude::*;

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(img in proptest::collection::vec(any::<u8>(), 0..512), ram in any::<u64>()) {
        let _ = plan(&img, ram);
    }

    /// Corrupting a valid image either fails cleanly or gives a plan whose
    /// segments are inside the file and RAM and do not overlap.
    #[test]
    fn corrupted_images_never_panic_and_plans_stay_sane(
        pokes in proptest::collection::vec((0usize..0x1100, any::<u8>()), 1..8),
        aout_image in any::<bool>(),
        ram in 0u64..(512 * MIB),
    ) {
        let mut img = if aout_image { aout(0x300) } else { kut() };
        let len = img.len();
        for (off, v) in pokes {
            img[off % len] = v;
        }
        if let Ok(p) = plan(&img, ram) {
            prop_assert!(!p.segments().is_empty());
            for (i, s) in p.segments().iter().enumerate() {
                prop_assert!(s.file_offset + s.file_len as usize <= img.len());
                prop_assert!(s.end() <= ram);
                for t in &p.segments()[i + 1..] {
                    prop_assert!(s.end() <= u64::from(t.paddr) || t.end() <= u64::from(s.paddr));
                }
                let _ = s.bytes(&img);
            }
            prop_assert!(p.overlaps(u64::from(p.entry), u64::from(p.entry) + 1));
        }
    }

    #[test]
    fn info_block_never_panics(
        name in proptest::collection::vec(any::<u8>(), 0..16),
        args in proptest::collection::vec(any::<u8>(), 0..32),
        base in any::<u32>(),
        size in 0usize..400,
        ram in any::<u64>(),
    ) {
        let map = pc_memory_map(ram);
        let mods = [Module { start: 0, end: 16, string: &args }];
        let input = InfoInput { file_name: &name, args: &args, memory_map: &map, modules: &mods };
        let mut buf = vec![0u8; size];
        if let Ok(n) = build_info(&mut buf, base, &input) {
            prop_assert!(n <= size);
            prop_assert_eq!(get32(&buf, 0) & INFO_MODS, INFO_MODS);
        }
    }
}

#[test]
fn mem_lower_and_upper_come_from_the_map() {
    let kib = |map: &[MemoryRegion]| {
        let input = InfoInput {
            file_name: b"k",
            args: b"",
            memory_map: map,
            modules: &[],
        };
        let mut buf = [0u8; 256];
        build_info(&mut buf, 0, &input).unwrap();
        (get32(&buf, 4), get32(&buf, 8))
    };
    // One flat RAM region: mem_lower is capped at 640 KiB (spec 3.3),
    // mem_upper counts from 1 MiB.
    let flat = [MemoryRegion {
        base: 0,
        len: 16 * MIB,
        kind: MEM_RAM,
    }];
    assert_eq!(kib(&flat), (640, 15 * 1024));
    // Less than 640 KiB of RAM, nothing above 1 MiB.
    assert_eq!(kib(&pc_memory_map(512 * 1024)), (512, 0));
    // A reserved region at 1 MiB: no upper memory.
    let hole = [MemoryRegion {
        base: MIB,
        len: MIB,
        kind: MEM_RESERVED,
    }];
    assert_eq!(kib(&hole), (0, 0));
}

#[test]
fn load_into_copies_file_bytes_and_zeroes_bss() {
    let mut img = aout(0x300);
    img[0x100] = 0x5A;
    let p = plan(&img, RAM).unwrap();
    let mut ram = vec![0xFFu8; 0x10_2000];
    p.load_into(&img, &mut ram).unwrap();
    assert_eq!(ram[0xF_FFFF], 0xFF, "below the segment untouched");
    assert_eq!(&ram[0x10_0000..0x10_0200], &img[..0x200]);
    assert_eq!(ram[0x10_0100], 0x5A);
    assert!(
        ram[0x10_0200..0x10_1000].iter().all(|&b| b == 0),
        "BSS zeroed"
    );
    assert_eq!(ram[0x10_1000], 0xFF, "above the BSS untouched");
    let mut short = vec![0xFFu8; 0x10_0FFF];
    assert_eq!(
        p.load_into(&img, &mut short),
        Err(ImageError::SegmentBeyondRam)
    );
    assert!(short.iter().all(|&b| b == 0xFF), "nothing written");
}

#[test]
fn info_goes_low_unless_the_image_is_there() {
    let ram = 64 << 20;
    let img = kut();
    let p = plan(&img, ram).unwrap();
    // kvm-unit-tests loads at 4 MiB: the low spot is free.
    assert_eq!(place_info(&p, ram, 4096), Some(INFO_ADDR));
    // Too big for the low room: after the image, page aligned.
    let (_, end) = p.span();
    let after = place_info(&p, ram, INFO_ROOM + 1).unwrap();
    assert_eq!(u64::from(after), end.next_multiple_of(4096));
    // An image over the low spot pushes the block past it.
    let low = elf(0x2000, 0x8_0000, &[(1, 0x1000, 0x8_0000, 0x100, 0x2_0000)]);
    let p = plan(&low, ram).unwrap();
    assert_eq!(place_info(&p, ram, 100), Some(0xA_0000));
    // RAM too small for the block after the image.
    assert_eq!(place_info(&p, 0xA_0000 + 50, 100), None);
    assert_eq!(place_info(&p, 0xA_0000 + 100, 100), Some(0xA_0000));
}

#[test]
fn modules_go_page_aligned_after_the_image_and_push_the_info_block() {
    let ram = 64 << 20;
    let img = kut();
    let p = plan(&img, ram).unwrap();
    let (_, end) = p.span();
    let first = end.next_multiple_of(4096);
    let mut starts = [0u32; 3];
    let top = place_modules(&p, ram, &[10, 4096, 1], &mut starts).unwrap();
    assert_eq!(
        starts.map(u64::from),
        [first, first + 4096, first + 2 * 4096]
    );
    assert_eq!(top, first + 3 * 4096);
    // The block stays low when it fits there, else goes above the modules.
    assert_eq!(place_info_above(&p, ram, 100, top), Some(INFO_ADDR));
    assert_eq!(
        place_info_above(&p, ram, INFO_ROOM + 1, top).map(u64::from),
        Some(top)
    );
    // No modules: nothing placed, the end is the first page after the image.
    assert_eq!(place_modules(&p, ram, &[], &mut []), Some(first));
    // An image below 1 MiB: modules still start at 1 MiB (above the block).
    let low = elf(0x2000, 0x8_0000, &[(1, 0x1000, 0x8_0000, 0x100, 0x2_0000)]);
    let p = plan(&low, ram).unwrap();
    let mut one = [0u32; 1];
    assert_eq!(place_modules(&p, ram, &[5], &mut one), Some(0x10_1000));
    assert_eq!(one, [0x10_0000]);
    // Too big for RAM, or more sizes than slots.
    assert_eq!(place_modules(&p, 0x10_0000 + 4, &[5], &mut one), None);
    assert_eq!(place_modules(&p, ram, &[1, 1], &mut one), None);
}
