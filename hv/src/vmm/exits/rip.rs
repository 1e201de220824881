//! The instruction at the guest's RIP: fetching and decoding it (any CPU
//! mode), moving the guest past it, and the fault the CPU would raise when
//! there is no instruction to emulate.
//!
//! With NRIP save the CPU reports the next RIP (`next_rip`, APM 15.7.1) and
//! that is used for lengths; without it (QEMU TCG) the instruction is
//! decoded. A guest's odd but valid encoding, or bytes that vanished under
//! L0, never stop the VM: the guest gets what the CPU would give it
//! (#UD for an invalid encoding, the page walk's #PF for unreadable bytes).

use super::{nested, raise, Action, Stop};
use crate::vmm::enable::HostCpu;
use crate::vmm::vcpu::Vcpu;
use crate::vmm::vm::Vm;
use svm::decode::{self, DecodeError, Decoded, Seg, MAX_INSN_LEN};
use svm::emulate::fetch;
use svm::emulate::unbacked;
use svm::nested::shadow_npt::walk::{NestedAccess, Stage};
use svm::vmcb::StateSaveArea;
pub use svm::walk::Access;
use svm::walk::{Failure, PagingRegs};
use svm::{EventInfo, ExitCode};

/// Why L0 has no instruction (or operand) to emulate.
#[derive(Debug)]
pub enum NoInsn {
    /// The fault the CPU would raise; `cr2` for a #PF.
    Fault {
        /// The exception.
        event: EventInfo,
        /// The faulting linear address (#PF only).
        cr2: Option<u64>,
    },
    /// A limit of L0 (a paging mode it does not walk yet, memory outside
    /// the guest's RAM): only this VM stops.
    Limit(Stop),
    /// L2 on nested paging: L1's nested table refuses the access (or a
    /// walk of L2's tables): L1's #VMEXIT(NPF) with these (nested::npt).
    Npf {
        /// EXITINFO1: error code and stage bit.
        exitinfo1: u64,
        /// EXITINFO2: the L2-physical address.
        exitinfo2: u64,
    },
}

impl From<nested::npt::Miss> for NoInsn {
    fn from(miss: nested::npt::Miss) -> Self {
        match miss {
            nested::npt::Miss::Npf {
                exitinfo1,
                exitinfo2,
            } => NoInsn::Npf {
                exitinfo1,
                exitinfo2,
            },
            nested::npt::Miss::Unreadable(at) => NoInsn::Limit(Stop::NestedPageFault {
                gpa: at,
                error_code: 0,
            }),
        }
    }
}

impl NoInsn {
    /// #UD: not an instruction L0 can emulate there.
    pub const fn ud() -> Self {
        NoInsn::Fault {
            event: EventInfo::exception(6),
            cr2: None,
        }
    }

    /// #GP(0).
    pub const fn gp0() -> Self {
        NoInsn::Fault {
            event: EventInfo::exception_with_error_code(13, 0),
            cr2: None,
        }
    }

    /// Raises the fault in the guest that ran the instruction (an L2's goes
    /// to L1 as a #VMEXIT when L1 intercepts the vector), or stops the VM.
    pub fn deliver(self, vcpu: &mut Vcpu, vm: &mut Vm, host: &HostCpu) -> Action {
        match self {
            NoInsn::Limit(stop) => {
                log::warn!("vm {}: {stop}", vm.name);
                Action::Stop(stop)
            }
            NoInsn::Fault {
                event,
                cr2: Some(cr2),
            } => raise_page_fault(vcpu, vm, host, event, cr2),
            NoInsn::Fault { event, cr2: None } => raise(vcpu, vm, host, event),
            NoInsn::Npf {
                exitinfo1,
                exitinfo2,
            } => nested::npt::reflect_npf(vcpu, vm, host, exitinfo1, exitinfo2),
        }
    }
}

/// A #PF with its address: CR2 for the guest, or EXITINFO2 for L1 when it
/// intercepts #PF in L2 (APM 15.12).
fn raise_page_fault(
    vcpu: &mut Vcpu,
    vm: &mut Vm,
    host: &HostCpu,
    event: EventInfo,
    cr2: u64,
) -> Action {
    if let Some(l2) = &vcpu.nested.l2 {
        if l2.vmcb12.control.intercept_exceptions & (1 << 14) != 0 {
            let c = &mut vcpu.vmcb.control;
            c.exit_info1 = u64::from(event.error_code().unwrap_or(0));
            c.exit_info2 = cr2;
            c.exit_int_info = 0;
            return nested::vmexit::reflect(vcpu, vm, host, ExitCode::Exception(14));
        }
    }
    vcpu.vmcb.state.cr2 = cr2;
    super::inject(vcpu, event)
}

/// The code size the guest runs with (16, 32, 64).
pub fn bitness(vcpu: &Vcpu) -> u32 {
    let s = &vcpu.vmcb.state;
    decode::bitness(s.cr0, s.efer, s.rflags, s.cs.attrib)
}

/// The base of segment `seg` (0 for ES/CS/SS/DS in 64-bit mode).
pub fn segment_base(vcpu: &Vcpu, seg: Seg) -> u64 {
    let s = &vcpu.vmcb.state;
    let long = bitness(vcpu) == 64;
    match seg {
        Seg::Fs => s.fs.base,
        Seg::Gs => s.gs.base,
        _ if long => 0,
        Seg::Es => s.es.base,
        Seg::Cs => s.cs.base,
        Seg::Ss => s.ss.base,
        Seg::Ds => s.ds.base,
    }
}

/// Reads the 8-byte entry at guest-physical `gpa` as the CPU's page walk
/// does: RAM, or all-ones from unbacked memory below MAXPHYADDR
/// (svm::emulate::unbacked); `None` beyond it.
fn read_phys_u64(vm: &Vm, gpa: u64) -> Option<u64> {
    vm.memory
        .read_u64(gpa)
        .or_else(|| is_unbacked(vm, gpa).then_some(u64::MAX))
}

/// Whether `gpa` is unbacked guest-physical memory (reads all-ones).
pub fn is_unbacked(vm: &Vm, gpa: u64) -> bool {
    let limit = unbacked::phys_limit(vm.l1_limits.max_phys_bits);
    unbacked::is_unbacked(gpa, vm.memory.layout(), limit)
}

/// Whether the four PAE PDPTEs at `cr3` load (none present with a reserved
/// bit, [`svm::walk::pdptes_valid`]); unbacked memory reads all-ones.
pub fn pdptes_valid(vm: &Vm, cr3: u64) -> bool {
    svm::walk::pdptes_valid(|a| read_phys_u64(vm, a), cr3, vm.l1_limits.max_phys_bits)
}

/// [`pdptes_valid`] for the running guest's MOV CR3: an L2 on nested
/// paging has its PDPTEs at L2-physical addresses, read through L1's
/// nested table; one that table refuses is left to the CPU's own load,
/// whose #NPF goes to L1.
pub fn guest_pdptes_valid(vcpu: &Vcpu, vm: &Vm, cr3: u64) -> bool {
    let Some(n) = vcpu.nested.npt.active() else {
        return pdptes_valid(vm, cr3);
    };
    let read = |gpa| match nested::npt::to_l1(vm, n, gpa, NestedAccess::READ, Stage::GuestTables) {
        Ok(pa) => read_phys_u64(vm, pa),
        Err(_) => Some(0),
    };
    svm::walk::pdptes_valid(read, cr3, vm.l1_limits.max_phys_bits)
}

/// The paging registers of the running guest (L1, or L2, whose physical
/// addresses are L1's unless L1 runs it on nested paging: [`translate_as`]).
fn paging_regs(vcpu: &Vcpu, vm: &Vm) -> PagingRegs {
    let s = &vcpu.vmcb.state;
    PagingRegs {
        cr0: s.cr0,
        cr3: s.cr3,
        cr4: s.cr4,
        efer: s.efer,
        max_phys_bits: vm.l1_limits.max_phys_bits,
    }
}

/// The guest-physical address of linear address `la`, through the guest's
/// paging in its mode (none, 32-bit, PAE or long mode:
/// [`svm::walk::translate_mode`]), or the fault the CPU's walk gives, with
/// its rights checks (a page-table entry in unbacked memory is all-ones:
/// #PF with RSVD); `write` and `fetch` say what the access is, CPL 3 makes
/// it a user access (the #PF error code says so).
pub fn translate_access(
    vcpu: &Vcpu,
    vm: &Vm,
    la: u64,
    write: bool,
    fetch: bool,
) -> Result<u64, NoInsn> {
    let user = vcpu.vmcb.state.cpl == 3;
    translate_as(vcpu, vm, la, Access { write, fetch, user })
}

/// [`translate_access`] for an access whose kind the caller states: an
/// implicit supervisor access (the IDT, GDT or stack of an event delivery)
/// is a supervisor access at any CPL (APM 5.6.1).
///
/// For an L2 on nested paging the result is L1-physical: L2's tables and
/// the final address go through L1's nested table (nested::npt::to_l1;
/// its refusal is L1's #NPF, with the page-table-walk bit for L2's tables).
pub fn translate_as(vcpu: &Vcpu, vm: &Vm, la: u64, access: Access) -> Result<u64, NoInsn> {
    let regs = paging_regs(vcpu, vm);
    // Without nested paging (every L1 access, most L2s) the walk reads
    // L1-physical memory directly: no per-entry check, no miss to carry.
    let Some(n) = vcpu.nested.npt.active() else {
        return walk_linear(vcpu, &regs, la, access, |gpa| read_phys_u64(vm, gpa))
            .map_err(|e| walk_failure(e, la, None));
    };
    let miss = core::cell::Cell::new(None);
    let read =
        |gpa: u64| match nested::npt::to_l1(vm, n, gpa, NestedAccess::WRITE, Stage::GuestTables) {
            Ok(pa) => read_phys_u64(vm, pa),
            Err(m) => {
                miss.set(Some(m));
                None
            }
        };
    let gpa =
        walk_linear(vcpu, &regs, la, access, read).map_err(|e| walk_failure(e, la, miss.take()))?;
    let nested_access = NestedAccess {
        write: access.write,
        fetch: access.fetch,
    };
    nested::npt::to_l1(vm, n, gpa, nested_access, Stage::Final).map_err(NoInsn::from)
}

/// The guest-physical address of `la` through the running guest's tables,
/// each entry read by `read`. Fetches (the instruction at RIP, decoded at
/// most intercepts) go through the vCPU's exact walk memo
/// (svm::walk_memo): it re-reads every entry through `read`, so under
/// nested paging too.
#[inline(always)]
fn walk_linear(
    vcpu: &Vcpu,
    regs: &PagingRegs,
    la: u64,
    access: Access,
    read: impl Fn(u64) -> Option<u64>,
) -> Result<u64, Failure> {
    match (access.fetch, vcpu.walk_memo.try_borrow_mut()) {
        (true, Ok(mut memo)) => svm::walk_memo::translate_memo(read, regs, la, access, &mut memo),
        _ => svm::walk::translate_mode(read, regs, la, access),
    }
}

/// A failed walk of `la` as the guest sees it; `miss` is what L1's nested
/// table refused on the way, if it did.
#[cold]
fn walk_failure(e: Failure, la: u64, miss: Option<nested::npt::Miss>) -> NoInsn {
    match e {
        Failure::PageFault(code) => NoInsn::Fault {
            event: EventInfo::exception_with_error_code(14, code),
            cr2: Some(la),
        },
        Failure::NonCanonical => NoInsn::gp0(),
        Failure::OutsideMemory(gpa) => match miss {
            Some(m) => m.into(),
            None => NoInsn::Limit(Stop::NestedPageFault { gpa, error_code: 0 }),
        },
    }
}

fn translate(vcpu: &Vcpu, vm: &Vm, la: u64, fetch: bool) -> Result<u64, NoInsn> {
    translate_access(vcpu, vm, la, false, fetch)
}

/// Reads up to `out.len()` bytes at linear address `la`: how many were
/// read, and the fault that stopped the read early. Unbacked memory reads
/// 0xFF bytes.
fn read_linear_upto(
    vcpu: &Vcpu,
    vm: &Vm,
    la: u64,
    out: &mut [u8],
    fetch: bool,
) -> (usize, Option<NoInsn>) {
    let mut done = 0;
    while done < out.len() {
        let at = la.wrapping_add(done as u64);
        let remembered = match fetch {
            true => remembered_code_page(vcpu, &vcpu.vmcb.state, vm, at),
            false => None,
        };
        let pa = match remembered.map_or_else(|| translate(vcpu, vm, at, fetch), Ok) {
            Ok(pa) => pa,
            Err(e) => return (done, Some(e)),
        };
        let in_page = (4096 - (pa % 4096)).min((out.len() - done) as u64);
        let dst = &mut out[done..done + in_page as usize];
        match vm.memory.slice(pa, in_page) {
            Ok(src) => dst.copy_from_slice(src),
            // RAM ends on a 2 MiB boundary and the PC hole is whole
            // pages: a page is RAM or not.
            Err(_) if is_unbacked(vm, pa) => dst.fill(0xFF),
            Err(o) => {
                let stop = Stop::NestedPageFault {
                    gpa: o.gpa,
                    error_code: 0,
                };
                return (done, Some(NoInsn::Limit(stop)));
            }
        }
        done += in_page as usize;
    }
    (done, None)
}

/// Reads `out.len()` bytes at linear address `la` (an operand).
pub fn read_linear(vcpu: &Vcpu, vm: &Vm, la: u64, out: &mut [u8]) -> Result<(), NoInsn> {
    match read_linear_upto(vcpu, vm, la, out, false) {
        (_, Some(fault)) => Err(fault),
        (_, None) => Ok(()),
    }
}

/// Writes `data` at linear address `la`, byte by byte (a GDT entry: 8
/// bytes); writes to unbacked memory are dropped.
pub fn write_linear(vcpu: &Vcpu, vm: &mut Vm, la: u64, data: &[u8]) -> Result<(), NoInsn> {
    for (i, b) in data.iter().enumerate() {
        let pa = translate_access(vcpu, vm, la.wrapping_add(i as u64), true, false)?;
        if is_unbacked(vm, pa) {
            continue;
        }
        match vm.memory.slice_mut(pa, 1) {
            Ok(dst) => dst[0] = *b,
            Err(o) => {
                let stop = Stop::NestedPageFault {
                    gpa: o.gpa,
                    error_code: 0,
                };
                return Err(NoInsn::Limit(stop));
            }
        }
    }
    Ok(())
}

/// The linear address of the byte at RIP + `offset`.
fn code_address(vcpu: &Vcpu, offset: u64) -> u64 {
    let s = &vcpu.vmcb.state;
    fetch::code_address(bitness(vcpu), s.cs.base, s.rip, offset)
}

/// The instruction at the guest's RIP, decoded from guest memory in the
/// guest's mode.
pub fn decode_at_rip(vcpu: &Vcpu, vm: &Vm) -> Result<Decoded, NoInsn> {
    let (bytes, n, fault) = fetch_at_rip(vcpu, vm);
    decode_fetched(vcpu, &bytes[..n], fault)
}

/// The bytes at the guest's RIP: up to [`MAX_INSN_LEN`] of them, how many
/// were read, and the fault that stopped the read early.
fn fetch_at_rip(vcpu: &Vcpu, vm: &Vm) -> ([u8; MAX_INSN_LEN], usize, Option<NoInsn>) {
    let mut bytes = [0u8; MAX_INSN_LEN];
    // Read to the first unreadable byte; its fault counts only if the
    // instruction needs that byte.
    let la = code_address(vcpu, 0);
    let (n, fault) = if bitness(vcpu) == 64 {
        read_linear_upto(vcpu, vm, la, &mut bytes, true)
    } else {
        // Outside 64-bit mode the code address wraps per byte.
        let mut n = 0;
        let mut fault = None;
        for (i, b) in bytes.iter_mut().enumerate() {
            let (got, f) = read_linear_upto(
                vcpu,
                vm,
                code_address(vcpu, i as u64),
                core::slice::from_mut(b),
                true,
            );
            if got == 0 {
                fault = f;
                break;
            }
            n += 1;
        }
        (n, fault)
    };
    (bytes, n, fault)
}

/// Decodes fetched `bytes` in the guest's mode; `fault` is what stopped
/// the fetch, if the instruction needs more bytes than were read.
fn decode_fetched(vcpu: &Vcpu, bytes: &[u8], fault: Option<NoInsn>) -> Result<Decoded, NoInsn> {
    match decode::decode(bytes, bitness(vcpu), vcpu.vmcb.state.rip) {
        Ok(d) => Ok(d),
        Err(DecodeError::Invalid) => Err(NoInsn::ud()),
        // The bytes ran out where the read faulted: that fault (#PF).
        Err(DecodeError::Truncated(_)) => Err(fault.unwrap_or_else(NoInsn::gp0)),
    }
}

/// Length of the intercepted instruction at the guest's RIP.
#[inline]
pub fn insn_len(vcpu: &Vcpu, vm: &Vm, host: &HostCpu) -> Result<u64, NoInsn> {
    if host.features.has(svm::cpuid::SvmFeatureFlags::NRIPS) {
        return insn_len_slow(vcpu, vm, host);
    }
    match quick_len_in_page(vcpu, vm) {
        Some(len) => Ok(len),
        None => insn_len_slow(vcpu, vm, host),
    }
}

/// [`insn_len`] from the CPU's next RIP, else decoded the whole way.
#[inline(never)]
fn insn_len_slow(vcpu: &Vcpu, vm: &Vm, host: &HostCpu) -> Result<u64, NoInsn> {
    let s = &vcpu.vmcb.state;
    if host.features.has(svm::cpuid::SvmFeatureFlags::NRIPS) {
        let next = vcpu.vmcb.control.next_rip;
        if next > s.rip && next - s.rip <= MAX_INSN_LEN as u64 {
            return Ok(next - s.rip);
        }
    }
    if let Some(len) = quick_len_in_page(vcpu, vm) {
        return Ok(len);
    }
    let (bytes, n, fault) = fetch_at_rip(vcpu, vm);
    // The intercepted instructions' plain encodings need no full decode.
    if let Some(len) = decode::quick_len(&bytes[..n]) {
        return Ok(len as u64);
    }
    decode_fetched(vcpu, &bytes[..n], fault).map(|d| d.len as u64)
}

/// The hot path of [`insn_len`]: in 64-bit code, the bytes at RIP read in
/// place from the RAM page RIP is in (no copy, one translation), when
/// they hold one of [`decode::quick_len`]'s plain encodings. `None`
/// sends the caller the whole way (another mode, a fault, unbacked memory,
/// an instruction that needs more bytes or the decoder): the same answer,
/// since `quick_len` only says `Some` for bytes it has.
#[inline(never)]
fn quick_len_in_page(vcpu: &Vcpu, vm: &Vm) -> Option<u64> {
    let s = &vcpu.vmcb.state;
    if decode::bitness(s.cr0, s.efer, s.rflags, s.cs.attrib) != 64 {
        return None;
    }
    // 64-bit code: RIP is the linear address.
    let la = s.rip;
    let pa = match remembered_code_page(vcpu, s, vm, la) {
        Some(pa) => pa,
        None => translate(vcpu, vm, la, true).ok()?,
    };
    let len = match pa % 4096 {
        // Three bytes in the page: quick_len's, from one or two RAM words.
        ..=0xffd => {
            let ram = vm.memory.words();
            let (i, shift) = ((pa / 8) as usize, (pa % 8) * 8);
            let mut w = *ram.get(i)? >> shift;
            if shift > 40 {
                w |= *ram.get(i + 1)? << (64 - shift);
            }
            decode::quick_len3(w as u32)
        }
        offset => decode::quick_len(vm.memory.slice(pa, 4096 - offset).ok()?),
    };
    len.map(|len| len as u64)
}

/// The fetch translation of `la` straight from the walk memo
/// ([`svm::walk_memo::lookup`]: every entry of the remembered walk read
/// again and compared) when the guest's tables are in L1-physical RAM (no
/// nested paging for an L2): entries read in place from RAM, with no
/// unbacked-memory or nested-table cases. `None` (also for an entry outside
/// RAM) sends the caller through [`translate`]: the same answer, slower.
/// `s` is the running guest's state.
#[inline(always)]
fn remembered_code_page(vcpu: &Vcpu, s: &StateSaveArea, vm: &Vm, la: u64) -> Option<u64> {
    if vcpu.nested.npt.active().is_some() {
        return None;
    }
    let regs = PagingRegs {
        cr0: s.cr0,
        cr3: s.cr3,
        cr4: s.cr4,
        efer: s.efer,
        max_phys_bits: vm.l1_limits.max_phys_bits,
    };
    let access = Access {
        write: false,
        fetch: true,
        user: s.cpl == 3,
    };
    let memo = vcpu.walk_memo.try_borrow().ok()?;
    svm::walk_memo::lookup_in_ram(&memo, vm.memory.words(), &regs, la, access)
}

/// RIP after an instruction of `len` bytes, wrapped to the code size
/// ([`fetch::next_rip`]).
pub fn rip_after(vcpu: &Vcpu, len: u64) -> u64 {
    fetch::next_rip(bitness(vcpu), vcpu.vmcb.state.rip, len)
}

/// Advances RIP past the intercepted instruction.
pub fn advance(vcpu: &mut Vcpu, vm: &Vm, host: &HostCpu) -> Result<(), NoInsn> {
    let len = insn_len(vcpu, vm, host)?;
    vcpu.vmcb.state.rip = rip_after(vcpu, len);
    Ok(())
}

/// An exit with nothing (more) to emulate: step over the instruction.
pub fn skip(vcpu: &mut Vcpu, vm: &mut Vm, host: &HostCpu) -> Action {
    match advance(vcpu, vm, host) {
        Ok(()) => single_step(vcpu, vm, host),
        Err(no) => no.deliver(vcpu, vm, host),
    }
}

/// After L0 emulated an instruction and moved RIP past it: the
/// single-step #DB the CPU would have raised if RFLAGS.TF was set (the
/// guest's own single-stepping, or L1's through #VMEXIT(#DB)). Injected,
/// so it does not exit again.
pub fn single_step(vcpu: &mut Vcpu, vm: &mut Vm, host: &HostCpu) -> Action {
    // The instruction completed: an interrupt shadow it ran in is over.
    vcpu.vmcb.control.interrupt_shadow &= !1;
    let s = &mut vcpu.vmcb.state;
    match svm::exception::single_step_dr6(s.rflags, s.dr6) {
        Some(dr6) => {
            s.dr6 = dr6;
            raise(vcpu, vm, host, EventInfo::exception(1))
        }
        None => Action::Resume,
    }
}
