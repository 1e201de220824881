//! Guest-physical memory that is neither the VM's RAM nor beyond the
//! MAXPHYADDR its CPUID shows: on a PC with nothing at an address, reads
//! return all-ones, writes are dropped and instruction fetches get 0xFF
//! bytes; a page walk through it reads all-ones entries, which have
//! reserved bits set (a #PF with RSVD, APM Vol. 2, 5.3.1 and 8.4.2).
//! Addresses at or above MAXPHYADDR never reach memory: the guest's own
//! walk faults on them (reserved bits), and with paging off linear
//! addresses are 32 bits wide.

use crate::event::{EventInfo, EventType};

/// The first guest-physical address beyond a MAXPHYADDR of
/// `max_phys_bits`, capped at 2^48 (what 4-level nested tables map).
pub fn phys_limit(max_phys_bits: u8) -> u64 {
    1u64 << max_phys_bits.min(48)
}

/// The PC's legacy VGA window: no RAM there on a PC (the E820 map of a
/// Multiboot guest reports `[0xA0000, 0x100000)` reserved,
/// svm::multiboot::pc_memory_map). Only the VGA part is a hole: the
/// rest of the reserved range is ROM on a PC (option ROMs, the BIOS),
/// which reads its contents, not all-ones. KVM's guests exit to L0 there
/// (MMIO), which kvm-unit-tests relies on (svm_tests.c,
/// cr3_read_intercept_emulate: a store to 0xA0000 exits to L0).
pub const PC_HOLE: core::ops::Range<u64> = 0xA_0000..0xC_0000;

/// Where a VM's RAM is: guest-physical `[0, size)`, less [`PC_HOLE`] when
/// `pc_hole` is set (Multiboot guests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamLayout {
    /// Bytes from guest-physical 0 (a multiple of 2 MiB).
    pub size: u64,
    /// Whether [`PC_HOLE`] is unbacked.
    pub pc_hole: bool,
}

impl RamLayout {
    /// Whether `gpa` is RAM.
    #[inline]
    pub fn is_ram(&self, gpa: u64) -> bool {
        gpa < self.size && !self.in_hole(gpa)
    }

    /// Whether `gpa` is in the PC hole (when it has one).
    #[inline]
    pub fn in_hole(&self, gpa: u64) -> bool {
        self.pc_hole && PC_HOLE.contains(&gpa)
    }

    /// Whether `[gpa, gpa + len)` (len > 0) is all RAM: the check of every
    /// guest-memory access L0 makes (hv's GuestMemory), so no overflow and
    /// few compares: `gpa <= size`, then `len` fits after it, then the hole.
    #[inline(always)]
    pub fn is_ram_range(&self, gpa: u64, len: u64) -> bool {
        gpa <= self.size
            && len <= self.size - gpa
            && !(self.pc_hole && gpa < PC_HOLE.end && gpa + len > PC_HOLE.start)
    }
}

/// Whether `gpa` is unbacked: not RAM (`ram`) and below MAXPHYADDR
/// (`limit`, from [`phys_limit`]).
pub fn is_unbacked(gpa: u64, ram: RamLayout, limit: u64) -> bool {
    !ram.is_ram(gpa) && gpa < limit
}

/// Retries in a row at one RIP before L0 gives up on a store fault that
/// finds no store ([`no_store`]). More than one: a guest may rewrite the
/// same instruction again and again with no other exit in between (each
/// round a fault, a retry that runs the new code, then the old code
/// again), which L0 cannot tell from a loop on the same bytes; a loop
/// costs this many exits before the VM stops.
pub const MAX_NO_STORE_RETRIES: u32 = 1000;

/// Consecutive no-store retries: the RIP and how many so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retries {
    /// RIP of the faulting instruction.
    pub rip: u64,
    /// Retries in a row at `rip`.
    pub count: u32,
}

/// What L0 does with a store fault in unbacked memory whose instruction,
/// decoded now, makes no store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoStore {
    /// Re-enter the guest at the same RIP (the new retry state): the code
    /// changed since the CPU fetched it (cross-modifying code), so the CPU
    /// runs what is there now (what KVM's emulator does: it re-fetches the
    /// bytes and emulates them).
    Retry(Retries),
    /// [`MAX_NO_STORE_RETRIES`] in a row at this RIP: a decoder gap that
    /// never sees the store, which would loop forever. The VM stops.
    Stop,
}

/// See [`NoStore`]: `rip` is the faulting instruction's, `last` the
/// retries so far (cleared when a store fault finds its store).
pub fn no_store(rip: u64, last: Option<Retries>) -> NoStore {
    let count = match last {
        Some(r) if r.rip == rip => r.count,
        _ => 0,
    };
    if count >= MAX_NO_STORE_RETRIES {
        NoStore::Stop
    } else {
        NoStore::Retry(Retries {
            rip,
            count: count + 1,
        })
    }
}

/// The #PF error code of a walk that met a reserved bit (an all-ones
/// entry): P and RSVD, W/R for a write, U/S at CPL 3, I/D for a fetch
/// when EFER.NXE is set (APM 8.4.2).
pub fn reserved_error_code(cpl: u8, write: bool, fetch: bool, nxe: bool) -> u32 {
    const P: u32 = 1;
    const RSVD: u32 = 1 << 3;
    let mut code = P | RSVD;
    if write {
        code |= 1 << 1;
    }
    if cpl == 3 {
        code |= 1 << 2;
    }
    if fetch && nxe {
        code |= 1 << 4;
    }
    code
}

/// What a #PF raised while the CPU delivers `first` becomes (APM Vol. 2,
/// 8.2.9, the double-fault table): after a #PF, a #DF; after a #DF, a
/// shutdown (triple fault); after a benign or contributory event, the #PF
/// itself (delivered serially).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultInDelivery {
    /// The #PF.
    PageFault,
    /// #DF (error code 0).
    DoubleFault,
    /// Shutdown.
    Shutdown,
}

/// See [`FaultInDelivery`]; `first` is EXITINTINFO.
pub fn page_fault_in_delivery(first: EventInfo) -> FaultInDelivery {
    match (first.event_type(), first.vector()) {
        (Some(EventType::Exception), 8) => FaultInDelivery::Shutdown,
        (Some(EventType::Exception), 14) => FaultInDelivery::DoubleFault,
        _ => FaultInDelivery::PageFault,
    }
}

/// A string store (STOS, MOVS) whose destination is unbacked: what the CPU
/// does when the stores go nowhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StringStore {
    /// Element size in bytes (1, 2, 4, 8).
    pub size: u64,
    /// A REP prefix (RCX counts).
    pub rep: bool,
    /// MOVS (RSI moves too); STOS otherwise.
    pub has_source: bool,
    /// Address size: 16, 32 or 64 (which part of RCX/RSI/RDI counts).
    pub address_size: u32,
}

/// The registers a string instruction changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StringRegs {
    /// RCX.
    pub rcx: u64,
    /// RSI.
    pub rsi: u64,
    /// RDI.
    pub rdi: u64,
    /// Whether the instruction is finished (RIP moves past it).
    pub done: bool,
}

/// Elements of `size` bytes from linear `la` to the end of its page in the
/// direction of the string (down with RFLAGS.DF), at least 1.
fn elements_in_page(la: u64, size: u64, down: bool) -> u64 {
    let off = la & 0xFFF;
    let bytes = if down { off + size } else { 0x1000 - off };
    (bytes / size).max(1)
}

/// Writes `value` into the low `bits` of `reg` as the CPU does for that
/// address size: 32-bit results zero-extend, 16-bit ones keep the rest.
fn set_low(reg: u64, value: u64, bits: u32) -> u64 {
    match bits {
        64 => value,
        32 => value & 0xFFFF_FFFF,
        _ => (reg & !0xFFFF) | (value & 0xFFFF),
    }
}

fn low(reg: u64, bits: u32) -> u64 {
    match bits {
        64 => reg,
        32 => reg & 0xFFFF_FFFF,
        _ => reg & 0xFFFF,
    }
}

impl StringStore {
    /// Drops the stores of as many iterations as stay inside the pages of
    /// the current destination `dst` (and source `src`) linear addresses,
    /// which the CPU reached: the registers after them. RIP stays on a REP
    /// instruction until RCX reaches 0, so the CPU continues with the next
    /// page (APM Vol. 3, REP: the registers are updated per iteration).
    pub fn drop_stores(&self, regs: StringRegs, df: bool, dst: u64, src: u64) -> StringRegs {
        let bits = self.address_size;
        let count = if self.rep {
            let mut n = low(regs.rcx, bits).min(elements_in_page(dst, self.size, df));
            if self.has_source {
                n = n.min(elements_in_page(src, self.size, df));
            }
            n.max(1)
        } else {
            1
        };
        let delta = count.wrapping_mul(self.size);
        let step = |r: u64| {
            let v = low(r, bits);
            set_low(
                r,
                if df {
                    v.wrapping_sub(delta)
                } else {
                    v.wrapping_add(delta)
                },
                bits,
            )
        };
        let rcx = if self.rep {
            set_low(regs.rcx, low(regs.rcx, bits).wrapping_sub(count), bits)
        } else {
            regs.rcx
        };
        StringRegs {
            rcx,
            rsi: if self.has_source {
                step(regs.rsi)
            } else {
                regs.rsi
            },
            rdi: step(regs.rdi),
            done: !self.rep || low(rcx, bits) == 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unbacked_is_between_ram_and_maxphyaddr() {
        let limit = phys_limit(40);
        assert_eq!(limit, 1 << 40);
        assert_eq!(phys_limit(52), 1 << 48);
        let ram = RamLayout {
            size: 0x40_0000,
            pc_hole: false,
        };
        assert!(!is_unbacked(0x3F_FFFF, ram, limit));
        assert!(!is_unbacked(0xA_0000, ram, limit), "no hole: RAM");
        assert!(is_unbacked(0x40_0000, ram, limit));
        assert!(is_unbacked(limit - 1, ram, limit));
        assert!(!is_unbacked(limit, ram, limit));
    }

    #[test]
    fn the_pc_hole_is_the_vga_window() {
        let limit = phys_limit(40);
        let ram = RamLayout {
            size: 0x40_0000,
            pc_hole: true,
        };
        assert!(!is_unbacked(0x9_FFFF, ram, limit));
        assert!(is_unbacked(0xA_0000, ram, limit));
        assert!(is_unbacked(0xB_FFFF, ram, limit));
        assert!(!is_unbacked(0xC_0000, ram, limit), "ROM area stays RAM");
        assert!(is_unbacked(0x40_0000, ram, limit));
        assert!(ram.is_ram_range(0x9_F000, 0x1000));
        assert!(!ram.is_ram_range(0x9_FFFC, 8), "straddles the hole");
        assert!(!ram.is_ram_range(0xB_FFF8, 16));
        assert!(ram.is_ram_range(0xC_0000, 8));
        assert!(!ram.is_ram_range(0x3F_FFF8, 16), "past RAM's end");
        assert!(!ram.is_ram_range(u64::MAX, 2), "overflow");
        let no_hole = RamLayout {
            pc_hole: false,
            ..ram
        };
        assert!(no_hole.is_ram_range(0x9_FFFC, 8));
    }

    #[test]
    fn a_vanished_store_is_retried_a_bounded_number_of_times() {
        let at = |rip, count| Retries { rip, count };
        assert_eq!(no_store(0x1000, None), NoStore::Retry(at(0x1000, 1)));
        assert_eq!(
            no_store(0x1000, Some(at(0x2000, MAX_NO_STORE_RETRIES))),
            NoStore::Retry(at(0x1000, 1)),
            "another RIP starts over"
        );
        assert_eq!(
            no_store(0x1000, Some(at(0x1000, 1))),
            NoStore::Retry(at(0x1000, 2))
        );
        let mut last = None;
        for _ in 0..MAX_NO_STORE_RETRIES {
            match no_store(0x1000, last) {
                NoStore::Retry(r) => last = Some(r),
                NoStore::Stop => panic!("stopped before the limit"),
            }
        }
        assert_eq!(no_store(0x1000, last), NoStore::Stop);
    }

    #[test]
    fn page_faults_while_delivering() {
        use FaultInDelivery as F;
        let f = page_fault_in_delivery;
        assert_eq!(
            f(EventInfo::exception_with_error_code(14, 9)),
            F::DoubleFault
        );
        assert_eq!(f(EventInfo::exception_with_error_code(8, 0)), F::Shutdown);
        assert_eq!(f(EventInfo::exception_with_error_code(13, 0)), F::PageFault);
        assert_eq!(f(EventInfo::exception(6)), F::PageFault);
        assert_eq!(f(EventInfo::external_interrupt(0x30)), F::PageFault);
        assert_eq!(f(EventInfo::nmi()), F::PageFault);
        assert_eq!(f(EventInfo::software_interrupt(14)), F::PageFault, "INT 14");
    }

    #[test]
    fn reserved_bit_error_codes() {
        assert_eq!(reserved_error_code(0, false, false, true), 0x9);
        assert_eq!(reserved_error_code(0, true, false, true), 0xB);
        assert_eq!(reserved_error_code(3, true, false, false), 0xF);
        assert_eq!(reserved_error_code(0, false, true, true), 0x19);
        assert_eq!(reserved_error_code(0, false, true, false), 0x9);
    }

    const REGS: StringRegs = StringRegs {
        rcx: 0,
        rsi: 0,
        rdi: 0,
        done: false,
    };

    #[test]
    fn one_store_moves_rdi_only() {
        let stosq = StringStore {
            size: 8,
            rep: false,
            has_source: false,
            address_size: 64,
        };
        let r = stosq.drop_stores(
            StringRegs {
                rcx: 5,
                rdi: 0x1000,
                ..REGS
            },
            false,
            0x1000,
            0,
        );
        assert_eq!(
            r,
            StringRegs {
                rcx: 5,
                rsi: 0,
                rdi: 0x1008,
                done: true
            }
        );
        let r = stosq.drop_stores(
            StringRegs {
                rdi: 0x1000,
                ..REGS
            },
            true,
            0x1000,
            0,
        );
        assert_eq!(r.rdi, 0xFF8, "DF counts down");
    }

    #[test]
    fn rep_stops_at_the_page_end_and_at_rcx() {
        let rep_stosb = StringStore {
            size: 1,
            rep: true,
            has_source: false,
            address_size: 64,
        };
        let at = |rcx, rdi| StringRegs { rcx, rdi, ..REGS };
        // 0x100 bytes left in the page, 0x1000 to go: the page's worth.
        let r = rep_stosb.drop_stores(at(0x1000, 0x5F00), false, 0x5F00, 0);
        assert_eq!((r.rcx, r.rdi, r.done), (0xF00, 0x6000, false));
        // Fewer than the page holds: finished.
        let r = rep_stosb.drop_stores(at(0x10, 0x5F00), false, 0x5F00, 0);
        assert_eq!((r.rcx, r.rdi, r.done), (0, 0x5F10, true));
        // Downwards: from 0x5F00 to the page start is 0xF01 bytes.
        let r = rep_stosb.drop_stores(at(0x1000, 0x5F00), true, 0x5F00, 0);
        assert_eq!((r.rcx, r.rdi, r.done), (0xFF, 0x4FFF, false));
    }

    #[test]
    fn movs_is_bounded_by_the_source_page_too() {
        let rep_movsd = StringStore {
            size: 4,
            rep: true,
            has_source: true,
            address_size: 64,
        };
        let regs = StringRegs {
            rcx: 100,
            rsi: 0x7FF8,
            rdi: 0x9000,
            done: false,
        };
        let r = rep_movsd.drop_stores(regs, false, 0x9000, 0x7FF8);
        assert_eq!((r.rcx, r.rsi, r.rdi, r.done), (98, 0x8000, 0x9008, false));
    }

    #[test]
    fn address_size_selects_the_counted_registers() {
        let rep_stosw16 = StringStore {
            size: 2,
            rep: true,
            has_source: false,
            address_size: 16,
        };
        let regs = StringRegs {
            rcx: 0xAAAA_0000_0000_0003,
            rsi: 7,
            rdi: 0x1234_0000_0000_FFFE,
            done: false,
        };
        let r = rep_stosw16.drop_stores(regs, false, 0xFFFE, 0);
        // DI wraps within 16 bits; the upper parts stay.
        assert_eq!(r.rdi, 0x1234_0000_0000_0000);
        assert_eq!(r.rcx, 0xAAAA_0000_0000_0002);
        assert_eq!(r.rsi, 7);
        let rep_stosb32 = StringStore {
            size: 1,
            address_size: 32,
            ..rep_stosw16
        };
        let r = rep_stosb32.drop_stores(
            StringRegs {
                rcx: 0xFFFF_FFFF_0000_0001,
                rdi: 0xFFFF_FFFF_0000_0010,
                ..REGS
            },
            false,
            0x10,
            0,
        );
        // 32-bit results zero-extend.
        assert_eq!((r.rcx, r.rdi, r.done), (0, 0x11, true));
    }
}
