//! The loader-independent description of the machine at boot.

use core::fmt;

/// Upper bounds of what [`BootInfo`] records; fixed so it lives without a heap.
pub const MAX_REGIONS: usize = 512;
/// Most boot modules recorded.
pub const MAX_MODULES: usize = 8;
/// Most CPUs recorded.
pub const MAX_CPUS: usize = 64;
/// Longest kernel command line kept, in bytes (it may carry a guest's
/// command line after `--`, e.g. kvm-unit-tests subtest names).
pub const MAX_CMDLINE: usize = 1024;

/// Which loader started the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootProtocol {
    /// The Limine boot protocol (base revision 3).
    Limine,
    /// Xen/QEMU PVH direct boot (`qemu -kernel`).
    Pvh,
}

impl BootProtocol {
    /// Name used in the banner.
    pub fn name(self) -> &'static str {
        match self {
            BootProtocol::Limine => "limine",
            BootProtocol::Pvh => "pvh",
        }
    }
}

/// What a physical memory region holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryKind {
    /// Free RAM.
    Usable,
    /// RAM the loader still uses (its page tables, responses); free once the
    /// kernel runs on its own tables and stack.
    BootloaderReclaimable,
    /// The kernel image and boot modules.
    KernelAndModules,
    /// ACPI tables (reclaimable after parsing; kept here).
    AcpiReclaimable,
    /// ACPI non-volatile storage.
    AcpiNvs,
    /// The boot framebuffer.
    Framebuffer,
    /// Anything else: firmware, MMIO holes, bad RAM.
    Reserved,
}

impl MemoryKind {
    /// Memory the kernel maps (write-back) in its direct map. Not the
    /// framebuffer, which the kernel never touches and which wants another
    /// memory type.
    pub fn is_ram(self) -> bool {
        !matches!(self, MemoryKind::Reserved | MemoryKind::Framebuffer)
    }
}

/// A physical memory range `[base, base + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    /// First byte.
    pub base: u64,
    /// Length in bytes.
    pub len: u64,
    /// What it holds.
    pub kind: MemoryKind,
}

impl MemoryRegion {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.base + self.len
    }
}

/// A file the loader put in memory for the kernel.
#[derive(Clone, Copy, Debug, Default)]
pub struct Module {
    /// Physical address of the contents.
    pub phys: u64,
    /// Size in bytes.
    pub len: u64,
    /// The module's command line (lossy: truncated to fit).
    pub cmdline: FixedStr<64>,
}

/// A processor the firmware reports.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu {
    /// Local APIC ID.
    pub apic_id: u32,
    /// Whether this is the processor that runs the boot code.
    pub is_bsp: bool,
}

/// A string copied into a fixed buffer (boot data must outlive loader memory).
#[derive(Clone, Copy)]
pub struct FixedStr<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Default for FixedStr<N> {
    fn default() -> Self {
        Self {
            buf: [0; N],
            len: 0,
        }
    }
}

impl<const N: usize> FixedStr<N> {
    /// Copies `bytes` up to the first NUL, truncated to `N` bytes; invalid
    /// UTF-8 is replaced by `?`.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let mut s = Self::default();
        for &b in bytes.iter().take_while(|&&b| b != 0).take(N) {
            s.buf[s.len] = if b.is_ascii() { b } else { b'?' };
            s.len += 1;
        }
        s
    }

    /// The string.
    pub fn as_str(&self) -> &str {
        // Only ASCII bytes are ever stored.
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl<const N: usize> fmt::Debug for FixedStr<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl<const N: usize> fmt::Display for FixedStr<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A fixed-capacity list, filled by the boot adapters.
#[derive(Clone, Copy, Debug)]
pub struct FixedVec<T: Copy + Default, const N: usize> {
    items: [T; N],
    len: usize,
    dropped: usize,
}

impl<T: Copy + Default, const N: usize> Default for FixedVec<T, N> {
    fn default() -> Self {
        Self {
            items: [T::default(); N],
            len: 0,
            dropped: 0,
        }
    }
}

impl<T: Copy + Default, const N: usize> FixedVec<T, N> {
    /// Appends `item`; past the capacity it is counted in [`Self::dropped`].
    pub fn push(&mut self, item: T) {
        if self.len < N {
            self.items[self.len] = item;
            self.len += 1;
        } else {
            self.dropped += 1;
        }
    }

    /// The items.
    pub fn as_slice(&self) -> &[T] {
        &self.items[..self.len]
    }

    /// The items, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        &mut self.items[..self.len]
    }

    /// How many items did not fit.
    pub fn dropped(&self) -> usize {
        self.dropped
    }
}

impl Default for MemoryRegion {
    fn default() -> Self {
        Self {
            base: 0,
            len: 0,
            kind: MemoryKind::Reserved,
        }
    }
}

/// Everything the kernel needs from its loader, copied out of loader memory.
#[derive(Debug)]
pub struct BootInfo {
    /// Which loader ran.
    pub protocol: BootProtocol,
    /// Physical memory map, sorted by base, non-overlapping.
    pub memory: FixedVec<MemoryRegion, MAX_REGIONS>,
    /// Offset of the direct map of physical memory (virt = phys + offset).
    pub hhdm_offset: u64,
    /// Physical address of the ACPI RSDP, if known.
    pub rsdp: Option<u64>,
    /// Kernel command line.
    pub cmdline: FixedStr<MAX_CMDLINE>,
    /// Boot modules.
    pub modules: FixedVec<Module, MAX_MODULES>,
    /// Processors.
    pub cpus: FixedVec<Cpu, MAX_CPUS>,
    /// Physical address the kernel image (its first linked byte) was loaded at.
    pub kernel_phys: u64,
    /// Virtual address the kernel image is linked at.
    pub kernel_virt: u64,
    /// Called once the kernel runs on its own page tables (given as CR3), so
    /// the loader's adapter can move anything still running in loader memory
    /// (Limine's parked APs) out of it before that memory is reclaimed.
    pub leave_loader: fn(kernel_cr3: u64),
}

impl BootInfo {
    /// An empty record for `protocol`, to be filled by an adapter.
    pub fn new(protocol: BootProtocol) -> Self {
        Self {
            protocol,
            memory: FixedVec::default(),
            hhdm_offset: 0,
            rsdp: None,
            cmdline: FixedStr::default(),
            modules: FixedVec::default(),
            cpus: FixedVec::default(),
            kernel_phys: 0,
            kernel_virt: 0,
            leave_loader: |_| {},
        }
    }

    /// Total usable RAM in bytes and the number of usable regions.
    pub fn usable_memory(&self) -> (u64, usize) {
        self.memory
            .as_slice()
            .iter()
            .filter(|r| r.kind == MemoryKind::Usable)
            .fold((0, 0), |(bytes, n), r| (bytes + r.len, n + 1))
    }

    /// The kernel's own words: those before the first `--` word.
    pub fn kernel_words(&self) -> impl Iterator<Item = &str> + '_ {
        svm::boot_cmdline::split(self.cmdline.as_str())
            .0
            .split_ascii_whitespace()
    }

    /// The guest's command line: the text after the first `--` word
    /// (`cargo xtask run --guest`), trimmed; empty without one.
    pub fn guest_cmdline(&self) -> &str {
        svm::boot_cmdline::split(self.cmdline.as_str()).1
    }

    /// Value of `key=value` among the kernel's words, if present.
    pub fn cmdline_value(&self, key: &str) -> Option<&str> {
        self.kernel_words()
            .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
    }

    /// Kernel words whose key (the part before `=`) is not in `known`.
    pub fn unknown_cmdline_words<'a>(
        &'a self,
        known: &'a [&str],
    ) -> impl Iterator<Item = &'a str> + 'a {
        self.kernel_words()
            .filter(move |w| !known.contains(&w.split('=').next().unwrap_or(w)))
    }

    /// Marks `[base, base + len)` as `kind`, splitting the regions it overlaps.
    /// Used by adapters whose loader reports the kernel's own memory as usable.
    pub fn carve(&mut self, base: u64, len: u64, kind: MemoryKind) {
        let end = base + len;
        let mut out: FixedVec<MemoryRegion, MAX_REGIONS> = FixedVec::default();
        for r in self.memory.as_slice() {
            if r.end() <= base || r.base >= end {
                out.push(*r);
                continue;
            }
            if r.base < base {
                out.push(MemoryRegion {
                    base: r.base,
                    len: base - r.base,
                    kind: r.kind,
                });
            }
            let lo = r.base.max(base);
            let hi = r.end().min(end);
            out.push(MemoryRegion {
                base: lo,
                len: hi - lo,
                kind,
            });
            if r.end() > end {
                out.push(MemoryRegion {
                    base: end,
                    len: r.end() - end,
                    kind: r.kind,
                });
            }
        }
        self.memory = out;
    }

    /// Sorts the memory map by base address.
    pub fn sort_memory(&mut self) {
        // Insertion sort: at most MAX_REGIONS entries, no allocation.
        let m = self.memory.as_mut_slice();
        for i in 1..m.len() {
            let mut j = i;
            while j > 0 && m[j - 1].base > m[j].base {
                m.swap(j - 1, j);
                j -= 1;
            }
        }
    }
}
