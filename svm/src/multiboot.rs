//! Multiboot 1 loader logic (Multiboot Specification 0.6.96): find and check
//! the header, plan where an image's bytes go in guest-physical memory, build
//! the Multiboot information block, and describe the entry state.
//!
//! Pure functions over byte slices: the kernel copies the planned segments,
//! zero-fills BSS, writes the info block and loads [`EntryState`] into a VMCB.
//! Nothing here allocates; a malformed image is an [`ImageError`] and nothing
//! of it is loaded.

use crate::vmcb::VmcbSegment;

/// Header magic (spec 3.1.2).
pub const HEADER_MAGIC: u32 = 0x1BAD_B002;
/// EAX at entry (spec 3.2).
pub const BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;
/// The header lies within this many leading bytes of the image (spec 3.1.1).
pub const SEARCH_LIMIT: usize = 8192;
/// Most load segments a plan holds (kvm-unit-tests has two).
pub const MAX_SEGMENTS: usize = 8;

/// Header flag bit 0: align modules on 4 KiB pages.
pub const FLAG_PAGE_ALIGN: u32 = 1 << 0;
/// Header flag bit 1: provide mem_* (and the memory map).
pub const FLAG_MEMORY_INFO: u32 = 1 << 1;
/// Header flag bit 2: video mode table (not supported here).
pub const FLAG_VIDEO_MODE: u32 = 1 << 2;
/// Header flag bit 16: the a.out kludge address fields are valid.
pub const FLAG_AOUT_KLUDGE: u32 = 1 << 16;
/// Required bits (0-15) this loader honours: page-aligned modules (the
/// caller places modules; [`Header::wants_page_aligned_modules`]) and memory
/// info (always provided).
const SUPPORTED_REQUIRED: u32 = FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO;

/// Why an image cannot be loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageError {
    /// No 4-byte aligned magic in the first 8192 bytes.
    NoHeader,
    /// A magic was found, but magic + flags + checksum is not 0 (mod 2^32)
    /// there and at every later magic.
    BadChecksum,
    /// The header is cut off: by the 8192-byte limit, or its a.out fields
    /// by the end of the image.
    HeaderTruncated,
    /// A required flag bit (0-15) this loader cannot honour, e.g. bit 2 video.
    UnsupportedFlags(u32),
    /// Flag bit 16 clear and the image is not ELF.
    NotElf,
    /// ELF, but not ELF32 little-endian i386 executable.
    UnsupportedElf,
    /// Program headers run past the end of the image or have a bad entry size.
    ProgramHeadersTruncated,
    /// A segment's file bytes lie outside the image, or filesz > memsz.
    SegmentOutsideImage,
    /// A segment reaches beyond guest RAM (or past 4 GiB).
    SegmentBeyondRam,
    /// Two segments overlap in guest-physical memory.
    SegmentsOverlap,
    /// More than [`MAX_SEGMENTS`] load segments.
    TooManySegments,
    /// Nothing to load.
    NoSegments,
    /// The entry point is not inside a loaded segment.
    EntryOutsideImage,
    /// a.out kludge addresses contradict each other or the file.
    AoutInconsistent,
}

/// A checked Multiboot header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// File offset of the magic.
    pub offset: usize,
    /// The flags word.
    pub flags: u32,
    /// a.out kludge fields, present when flag bit 16 is set.
    pub aout: Option<AoutFields>,
}

impl Header {
    /// Bit 0: boot modules must start on 4 KiB boundaries.
    pub fn wants_page_aligned_modules(&self) -> bool {
        self.flags & FLAG_PAGE_ALIGN != 0
    }
}

/// The a.out kludge address fields (header offsets 12-28).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AoutFields {
    /// Physical address of the header's magic.
    pub header_addr: u32,
    /// Physical address of the first loaded byte.
    pub load_addr: u32,
    /// End of the loaded bytes (0: to the end of the file).
    pub load_end_addr: u32,
    /// End of BSS (0: none).
    pub bss_end_addr: u32,
    /// Entry point.
    pub entry_addr: u32,
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    let s = b.get(off..off.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Finds and checks the Multiboot header (spec 3.1.1-3.1.3).
pub fn find_header(image: &[u8]) -> Result<Header, ImageError> {
    // The whole 12-byte header lies in the first 8192 bytes. Like GRUB 2 and
    // QEMU, a magic whose checksum fails is skipped (it may be data); if no
    // magic checks out, the first one found names the error.
    let head = &image[..image.len().min(SEARCH_LIMIT)];
    let mut first_bad = None;
    let mut found = None;
    for o in (0..head.len()).step_by(4) {
        if u32_at(head, o) != Some(HEADER_MAGIC) {
            continue;
        }
        match (u32_at(head, o + 4), u32_at(head, o + 8)) {
            (Some(flags), Some(sum)) if HEADER_MAGIC.wrapping_add(flags).wrapping_add(sum) == 0 => {
                found = Some((o, flags));
                break;
            }
            (Some(_), Some(_)) => first_bad = first_bad.or(Some(ImageError::BadChecksum)),
            _ => first_bad = first_bad.or(Some(ImageError::HeaderTruncated)),
        }
    }
    let (offset, flags) = found.ok_or(first_bad.unwrap_or(ImageError::NoHeader))?;
    let unsupported = flags & 0xFFFF & !SUPPORTED_REQUIRED;
    if unsupported != 0 {
        return Err(ImageError::UnsupportedFlags(unsupported));
    }
    let aout = if flags & FLAG_AOUT_KLUDGE != 0 {
        let f = |i: usize| u32_at(image, offset + 12 + 4 * i).ok_or(ImageError::HeaderTruncated);
        Some(AoutFields {
            header_addr: f(0)?,
            load_addr: f(1)?,
            load_end_addr: f(2)?,
            bss_end_addr: f(3)?,
            entry_addr: f(4)?,
        })
    } else {
        None
    };
    Ok(Header {
        offset,
        flags,
        aout,
    })
}

/// One piece of the image in guest-physical memory: `file_len` bytes from
/// `file_offset` copied to `paddr`, then `zero_len` zero bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical load address.
    pub paddr: u32,
    /// Offset of the bytes in the image file.
    pub file_offset: usize,
    /// Bytes copied from the file.
    pub file_len: u32,
    /// Zero bytes after them (BSS).
    pub zero_len: u32,
}

impl Segment {
    /// Bytes of guest memory covered.
    pub fn mem_len(&self) -> u64 {
        u64::from(self.file_len) + u64::from(self.zero_len)
    }

    /// One past the last guest-physical byte.
    pub fn end(&self) -> u64 {
        u64::from(self.paddr) + self.mem_len()
    }

    /// The file bytes of this segment (in range by construction).
    pub fn bytes<'a>(&self, image: &'a [u8]) -> &'a [u8] {
        &image[self.file_offset..self.file_offset + self.file_len as usize]
    }
}

/// Where everything goes and where execution starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadPlan {
    /// The checked header.
    pub header: Header,
    segments: [Segment; MAX_SEGMENTS],
    count: usize,
    /// Guest-physical entry point.
    pub entry: u32,
}

impl LoadPlan {
    /// The segments, in image order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments[..self.count]
    }

    /// Lowest and one-past-highest guest-physical byte the image covers, so
    /// the caller can place the info block and modules elsewhere.
    pub fn span(&self) -> (u64, u64) {
        let lo = self.segments().iter().map(|s| u64::from(s.paddr)).min();
        let hi = self.segments().iter().map(Segment::end).max();
        (lo.unwrap_or(0), hi.unwrap_or(0))
    }

    /// Whether `[start, end)` overlaps any segment.
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        self.segments()
            .iter()
            .any(|s| start < s.end() && u64::from(s.paddr) < end)
    }

    fn push(&mut self, s: Segment, image_len: usize, ram_size: u64) -> Result<(), ImageError> {
        if s.file_offset
            .checked_add(s.file_len as usize)
            .is_none_or(|e| e > image_len)
        {
            return Err(ImageError::SegmentOutsideImage);
        }
        // Below 4 GiB: the entry runs with paging off, 32-bit addresses.
        if s.end() > ram_size || s.end() > 1 << 32 {
            return Err(ImageError::SegmentBeyondRam);
        }
        if s.mem_len() == 0 {
            return Ok(());
        }
        if self.overlaps(u64::from(s.paddr), s.end()) {
            return Err(ImageError::SegmentsOverlap);
        }
        if self.count == MAX_SEGMENTS {
            return Err(ImageError::TooManySegments);
        }
        self.segments[self.count] = s;
        self.count += 1;
        Ok(())
    }

    fn contains(&self, addr: u32) -> bool {
        self.overlaps(u64::from(addr), u64::from(addr) + 1)
    }
}

impl LoadPlan {
    /// Copies the segments of `image` (the image this plan was made from)
    /// into `ram`, guest-physical 0 at index 0, and zero-fills their BSS.
    /// Returns `SegmentBeyondRam` (writing nothing) if `ram` is too short.
    pub fn load_into(&self, image: &[u8], ram: &mut [u8]) -> Result<(), ImageError> {
        if self.span().1 > ram.len() as u64 {
            return Err(ImageError::SegmentBeyondRam);
        }
        for s in self.segments() {
            let dst = &mut ram[s.paddr as usize..s.end() as usize];
            let (file, bss) = dst.split_at_mut(s.file_len as usize);
            file.copy_from_slice(s.bytes(image));
            bss.fill(0);
        }
        Ok(())
    }
}

const PT_LOAD: u32 = 1;
const EM_386: u16 = 3;
const ET_EXEC: u16 = 2;
const PHDR_SIZE: usize = 32;

/// Plans loading `image` into a guest with `ram_size` bytes of RAM from
/// physical 0 (page 0 is RAM): by the a.out kludge when flag bit 16 is set,
/// else by the ELF32 program headers (GRUB 2 and QEMU order).
pub fn plan(image: &[u8], ram_size: u64) -> Result<LoadPlan, ImageError> {
    let header = find_header(image)?;
    let mut p = LoadPlan {
        header,
        segments: [Segment::default(); MAX_SEGMENTS],
        count: 0,
        entry: 0,
    };
    match header.aout {
        Some(a) => plan_aout(&mut p, image, a, ram_size)?,
        None => plan_elf(&mut p, image, ram_size)?,
    }
    Ok(p)
}

/// Spec 3.1.3: the file from the header's offset minus (header_addr -
/// load_addr) is loaded at load_addr up to load_end_addr, then zeroed up to
/// bss_end_addr.
fn plan_aout(
    p: &mut LoadPlan,
    image: &[u8],
    a: AoutFields,
    ram_size: u64,
) -> Result<(), ImageError> {
    use ImageError::AoutInconsistent as Bad;
    let before = a.header_addr.checked_sub(a.load_addr).ok_or(Bad)? as usize;
    let file_offset = p.header.offset.checked_sub(before).ok_or(Bad)?;
    let file_len = if a.load_end_addr == 0 {
        u32::try_from(image.len() - file_offset).map_err(|_| Bad)?
    } else {
        a.load_end_addr.checked_sub(a.load_addr).ok_or(Bad)?
    };
    // The header itself must be among the loaded bytes.
    if (before as u64) + 12 > u64::from(file_len) {
        return Err(Bad);
    }
    let load_end = u64::from(a.load_addr) + u64::from(file_len);
    let zero_len = if a.bss_end_addr == 0 {
        0
    } else {
        u64::from(a.bss_end_addr).checked_sub(load_end).ok_or(Bad)? as u32
    };
    p.push(
        Segment {
            paddr: a.load_addr,
            file_offset,
            file_len,
            zero_len,
        },
        image.len(),
        ram_size,
    )?;
    if !p.contains(a.entry_addr) {
        return Err(ImageError::EntryOutsideImage);
    }
    p.entry = a.entry_addr;
    Ok(())
}

fn plan_elf(p: &mut LoadPlan, image: &[u8], ram_size: u64) -> Result<(), ImageError> {
    if image.get(..4) != Some(b"\x7fELF") {
        return Err(ImageError::NotElf);
    }
    // EI_CLASS 1 = ELF32, EI_DATA 1 = little-endian; QEMU refuses x86-64 too.
    if image.get(4..6) != Some(&[1, 1])
        || u16_at(image, 0x10) != Some(ET_EXEC)
        || u16_at(image, 0x12) != Some(EM_386)
    {
        return Err(ImageError::UnsupportedElf);
    }
    let trunc = ImageError::ProgramHeadersTruncated;
    let entry = u32_at(image, 0x18).ok_or(trunc)?;
    let phoff = u32_at(image, 0x1C).ok_or(trunc)? as usize;
    let phentsize = u16_at(image, 0x2A).ok_or(trunc)? as usize;
    let phnum = u16_at(image, 0x2C).ok_or(trunc)? as usize;
    if phentsize < PHDR_SIZE
        || phoff
            .checked_add(phentsize * phnum)
            .is_none_or(|e| e > image.len())
    {
        return Err(trunc);
    }
    let mut entry_paddr = None;
    for i in 0..phnum {
        let ph = &image[phoff + i * phentsize..][..PHDR_SIZE];
        let f = |o: usize| u32_at(ph, o).unwrap_or(0);
        let (p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz) =
            (f(0), f(4), f(8), f(12), f(16), f(20));
        if p_type != PT_LOAD {
            continue;
        }
        if p_filesz > p_memsz {
            return Err(ImageError::SegmentOutsideImage);
        }
        // e_entry is virtual: translate through the segment holding it
        // (QEMU and GRUB load by p_paddr; kvm-unit-tests has vaddr == paddr).
        if entry.wrapping_sub(p_vaddr) < p_memsz {
            entry_paddr = Some(u64::from(p_paddr) + u64::from(entry - p_vaddr));
        }
        p.push(
            Segment {
                paddr: p_paddr,
                file_offset: p_offset as usize,
                file_len: p_filesz,
                zero_len: p_memsz - p_filesz,
            },
            image.len(),
            ram_size,
        )?;
    }
    if p.count == 0 {
        return Err(ImageError::NoSegments);
    }
    // Checked after all pushes so a bad segment reports as such.
    match entry_paddr.and_then(|e| u32::try_from(e).ok()) {
        Some(e) if p.contains(e) => p.entry = e,
        _ => return Err(ImageError::EntryOutsideImage),
    }
    Ok(())
}

/// E820 / Multiboot memory type: usable RAM.
pub const MEM_RAM: u32 = 1;
/// E820 / Multiboot memory type: reserved.
pub const MEM_RESERVED: u32 = 2;

/// One memory map entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    /// Physical base.
    pub base: u64,
    /// Length in bytes.
    pub len: u64,
    /// [`MEM_RAM`] or [`MEM_RESERVED`].
    pub kind: u32,
}

/// The PC map of a guest with `ram_size` bytes from physical 0: RAM below
/// 640 KiB, the VGA/BIOS hole reserved, RAM from 1 MiB (page 0 is RAM).
pub fn pc_memory_map(ram_size: u64) -> [MemoryRegion; 3] {
    let low = ram_size.min(0xA_0000);
    [
        MemoryRegion {
            base: 0,
            len: low,
            kind: MEM_RAM,
        },
        MemoryRegion {
            base: 0xA_0000,
            len: 0x6_0000,
            kind: MEM_RESERVED,
        },
        MemoryRegion {
            base: 0x10_0000,
            len: ram_size.saturating_sub(0x10_0000),
            kind: MEM_RAM,
        },
    ]
}

/// A boot module already placed in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Module<'a> {
    /// First guest-physical byte.
    pub start: u32,
    /// One past the last byte.
    pub end: u32,
    /// Its string (e.g. the file name), written NUL-terminated.
    pub string: &'a [u8],
}

/// What goes into the info block.
#[derive(Clone, Copy, Debug)]
pub struct InfoInput<'a> {
    /// The image's file name: the command line's first word, as QEMU
    /// passes "<file> <args>" (kvm-unit-tests drops it as argv[0]).
    pub file_name: &'a [u8],
    /// The rest of the command line (may be empty).
    pub args: &'a [u8],
    /// The memory map; mem_lower/mem_upper are derived from it.
    pub memory_map: &'a [MemoryRegion],
    /// Boot modules.
    pub modules: &'a [Module<'a>],
}

/// Why the info block cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InfoError {
    /// The buffer is too small.
    BufferTooSmall,
    /// The block would cross 4 GiB.
    AddressOverflow,
    /// The file name is empty or holds a space or NUL (it must be one word).
    BadFileName,
    /// A command line or module string holds a NUL.
    EmbeddedNul,
    /// A module ends before it starts.
    BadModule,
}

/// Info flag bit 0: mem_lower/mem_upper valid.
pub const INFO_MEMORY: u32 = 1 << 0;
/// Info flag bit 2: cmdline valid.
pub const INFO_CMDLINE: u32 = 1 << 2;
/// Info flag bit 3: mods_count/mods_addr valid.
pub const INFO_MODS: u32 = 1 << 3;
/// Info flag bit 6: mmap_length/mmap_addr valid.
pub const INFO_MMAP: u32 = 1 << 6;

/// Size of the fixed info structure (spec 3.3, up to vbe_interface_len).
pub const INFO_SIZE: usize = 88;
/// One memory map entry: the size field (20) and 20 bytes of entry.
pub const MMAP_ENTRY_SIZE: usize = 24;
/// One module entry: start, end, string, reserved.
pub const MODULE_ENTRY_SIZE: usize = 16;

/// KiB of RAM in the region of `map` containing `addr`, from `addr` on.
fn ram_kib_from(map: &[MemoryRegion], addr: u64) -> u32 {
    let bytes = map
        .iter()
        .filter(|r| r.kind == MEM_RAM && r.base <= addr && addr < r.base.saturating_add(r.len))
        .map(|r| r.base + r.len - addr)
        .max()
        .unwrap_or(0);
    (bytes / 1024).min(u64::from(u32::MAX)) as u32
}

/// Writes the Multiboot info block (spec 3.3) into `buf`, which the caller
/// copies to guest-physical `base`: the 88-byte structure, the memory map,
/// the module entries, then the strings. Returns the bytes used; EBX = `base`.
pub fn build_info(buf: &mut [u8], base: u32, input: &InfoInput<'_>) -> Result<usize, InfoError> {
    let name = input.file_name;
    if name.is_empty() || name.iter().any(|&c| c == b' ' || c == 0) {
        return Err(InfoError::BadFileName);
    }
    if input.args.contains(&0) || input.modules.iter().any(|m| m.string.contains(&0)) {
        return Err(InfoError::EmbeddedNul);
    }
    if input.modules.iter().any(|m| m.end < m.start) {
        return Err(InfoError::BadModule);
    }
    let mmap_off = INFO_SIZE;
    let mods_off = mmap_off + MMAP_ENTRY_SIZE * input.memory_map.len();
    let cmdline_off = mods_off + MODULE_ENTRY_SIZE * input.modules.len();
    let cmdline_len = name.len()
        + if input.args.is_empty() {
            0
        } else {
            1 + input.args.len()
        };
    let mut strings_end = cmdline_off + cmdline_len + 1;
    let total = strings_end
        + input
            .modules
            .iter()
            .map(|m| m.string.len() + 1)
            .sum::<usize>();
    if total > buf.len() {
        return Err(InfoError::BufferTooSmall);
    }
    if u64::from(base) + total as u64 > 1 << 32 {
        return Err(InfoError::AddressOverflow);
    }
    let addr = |off: usize| base + off as u32;
    let buf = &mut buf[..total];
    buf.fill(0);
    let put =
        |buf: &mut [u8], off: usize, v: u32| buf[off..off + 4].copy_from_slice(&v.to_le_bytes());

    let mut flags = INFO_MEMORY | INFO_CMDLINE | INFO_MMAP;
    put(buf, 4, ram_kib_from(input.memory_map, 0).min(640));
    put(buf, 8, ram_kib_from(input.memory_map, 0x10_0000));
    put(buf, 16, addr(cmdline_off));
    if !input.modules.is_empty() {
        flags |= INFO_MODS;
        put(buf, 20, input.modules.len() as u32);
        put(buf, 24, addr(mods_off));
    }
    put(buf, 44, (MMAP_ENTRY_SIZE * input.memory_map.len()) as u32);
    put(buf, 48, addr(mmap_off));
    put(buf, 0, flags);

    for (i, r) in input.memory_map.iter().enumerate() {
        let e = &mut buf[mmap_off + i * MMAP_ENTRY_SIZE..][..MMAP_ENTRY_SIZE];
        e[0..4].copy_from_slice(&20u32.to_le_bytes());
        e[4..12].copy_from_slice(&r.base.to_le_bytes());
        e[12..20].copy_from_slice(&r.len.to_le_bytes());
        e[20..24].copy_from_slice(&r.kind.to_le_bytes());
    }

    buf[cmdline_off..][..name.len()].copy_from_slice(name);
    if !input.args.is_empty() {
        buf[cmdline_off + name.len()] = b' ';
        buf[cmdline_off + name.len() + 1..][..input.args.len()].copy_from_slice(input.args);
    }
    for (i, m) in input.modules.iter().enumerate() {
        let e = mods_off + i * MODULE_ENTRY_SIZE;
        put(buf, e, m.start);
        put(buf, e + 4, m.end);
        put(buf, e + 8, addr(strings_end));
        buf[strings_end..][..m.string.len()].copy_from_slice(m.string);
        strings_end += m.string.len() + 1;
    }
    Ok(total)
}

/// Where the info block goes by preference: low memory below the legacy
/// hole, which Multiboot kernels leave alone (kvm-unit-tests allocates from
/// the end of its image up to `mem_upper`, and uses page 0 for its AP
/// trampoline).
pub const INFO_ADDR: u32 = 0x9_0000;
/// Room the info block may take at [`INFO_ADDR`] (up to the 640 KiB hole).
pub const INFO_ROOM: usize = 0x1_0000;

/// The guest-physical address for an info block of `len` bytes: at
/// [`INFO_ADDR`] when it fits there (no segment of `plan` overlaps and RAM
/// reaches), else on the first page after the image, inside RAM and below
/// 4 GiB. `None` when it fits nowhere.
pub fn place_info(plan: &LoadPlan, ram_size: u64, len: usize) -> Option<u32> {
    place_info_above(plan, ram_size, len, plan.span().1)
}

/// [`place_info`] with boot modules in guest RAM up to `floor` (the end
/// [`place_modules`] returned): outside [`INFO_ADDR`] the block goes on
/// the first page at or after `floor`.
pub fn place_info_above(plan: &LoadPlan, ram_size: u64, len: usize, floor: u64) -> Option<u32> {
    let fits = |at: u64| {
        let end = at + len as u64;
        end <= ram_size && end <= 1 << 32 && !plan.overlaps(at, end)
    };
    let low = u64::from(INFO_ADDR);
    if len <= INFO_ROOM && fits(low) {
        return Some(INFO_ADDR);
    }
    let after = floor.max(plan.span().1).next_multiple_of(4096);
    (fits(after)).then_some(after as u32)
}

/// Where boot modules of `sizes` bytes go in guest RAM: page-aligned, one
/// after another from the first page at or above 1 MiB after the image, so
/// they overlap neither it nor the info block at [`INFO_ADDR`]. Fills
/// `starts` (as long as `sizes`) and returns the page-aligned end of the
/// last; `None` when they do not all fit in RAM below 4 GiB.
pub fn place_modules(
    plan: &LoadPlan,
    ram_size: u64,
    sizes: &[u64],
    starts: &mut [u32],
) -> Option<u64> {
    if starts.len() < sizes.len() {
        return None;
    }
    let mut at = plan.span().1.max(0x10_0000).next_multiple_of(4096);
    for (size, start) in sizes.iter().zip(starts.iter_mut()) {
        let end = at.checked_add(*size)?;
        if end > ram_size || end > 1 << 32 {
            return None;
        }
        *start = at as u32;
        at = end.next_multiple_of(4096);
    }
    Some(at)
}

/// The machine state at the entry point (spec 3.2), for the kernel to load
/// into a VMCB's state save area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryState {
    /// [`BOOTLOADER_MAGIC`].
    pub eax: u32,
    /// Guest-physical address of the info block.
    pub ebx: u32,
    /// Entry point.
    pub eip: u32,
    /// CR0: PE and ET set, PG clear (paging off).
    pub cr0: u64,
    /// CR4: 0.
    pub cr4: u64,
    /// EFER: 0 (legacy mode; SVME is the hypervisor's business).
    pub efer: u64,
    /// RFLAGS: only the reserved bit 1 (IF = 0, VM = 0).
    pub rflags: u64,
    /// CS: 32-bit read/execute, base 0, limit 4 GiB.
    pub cs: VmcbSegment,
    /// DS, ES, FS, GS, SS: 32-bit read/write, base 0, limit 4 GiB.
    pub data: VmcbSegment,
    /// The A20 gate is enabled.
    pub a20: bool,
}

/// Flat 32-bit code: type 0xB (execute/read, accessed), S, P, D, G
/// (VMCB attribute layout, APM 15.5.1 / Appendix B).
pub const FLAT_CODE_ATTRIB: u16 = 0xC9B;
/// Flat 32-bit data: type 0x3 (read/write, accessed), S, P, B, G.
pub const FLAT_DATA_ATTRIB: u16 = 0xC93;

/// The entry state for `entry` with the info block at `info_addr`.
pub fn entry_state(entry: u32, info_addr: u32) -> EntryState {
    let seg = |selector, attrib| VmcbSegment {
        selector,
        attrib,
        limit: 0xFFFF_FFFF,
        base: 0,
    };
    EntryState {
        eax: BOOTLOADER_MAGIC,
        ebx: info_addr,
        eip: entry,
        cr0: 0x11, // PE | ET
        cr4: 0,
        efer: 0,
        rflags: 0x2,
        cs: seg(0x08, FLAT_CODE_ATTRIB),
        data: seg(0x10, FLAT_DATA_ATTRIB),
        a20: true,
    }
}

#[cfg(test)]
mod tests;
