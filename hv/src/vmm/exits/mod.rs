//! #VMEXIT handling: one dispatch, one handler per exit reason.

pub mod apic;
mod cpuid;
pub mod cr;
pub mod dr;
mod efer;
pub mod exception;
mod hypercall;
mod ioio;
mod msr;
mod npf;
mod reinject;
pub mod rip;
pub mod shadow;
mod soft_int;
mod tr;
mod tsc;

use super::enable::HostCpu;
use super::nested;
use super::vcpu::Vcpu;
use super::vm::Vm;
use alloc::string::String;
use core::fmt;
use svm::cpuid_filter::HiddenFeatures;
use svm::nested::route::{route_exit_lazy, ExitFacts, Route};
use svm::{EventInfo, ExitCode};

/// What the run loop does after a handler.
#[derive(Debug)]
pub enum Action {
    /// Enter the guest again.
    Resume,
    /// The guest is finished; the hypervisor goes on.
    Stop(Stop),
}

/// Why a guest stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The guest reported its verdict (`HC_DONE`).
    Done {
        /// Pass?
        pass: bool,
        /// Its message on failure.
        message: String,
    },
    /// The guest wrote to the exit device (port 0xF4): end the run with
    /// this QEMU exit status, `(value << 1) | 1` (svm::devices::exit_device).
    ExitDevice(u32),
    /// Triple fault (SHUTDOWN intercept).
    Shutdown,
    /// Nested page fault L0 does not resolve: beyond the guest's
    /// MAXPHYADDR, or a limit of L0 with unbacked memory (exits::npf).
    NestedPageFault {
        /// Guest-physical address (EXITINFO2).
        gpa: u64,
        /// Fault code (EXITINFO1).
        error_code: u64,
    },
    /// VMRUN refused the VMCB.
    InvalidVmcb,
    /// An exit the hypervisor has no handler for (or cannot complete).
    Unhandled(String),
    /// The exit limit of a self-test ([`super::vm::RunLimits`]) reached.
    TooManyExits(u64),
    /// The guest ran past its self-test time budget (milliseconds).
    TimedOut(u64),
    /// Not a stop: the vCPU gave its physical CPU to another vCPU
    /// (time-slicing, `vmm::multi`) and resumes at its next run.
    Yielded,
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::Done { pass: true, .. } => write!(f, "guest passed"),
            Stop::Done {
                pass: false,
                message,
            } => write!(f, "guest failed: {message}"),
            Stop::ExitDevice(status) => write!(f, "exit device written (qemu status {status})"),
            Stop::Shutdown => write!(f, "triple fault (shutdown)"),
            Stop::NestedPageFault { gpa, error_code } => {
                write!(
                    f,
                    "nested page fault at guest-physical {gpa:#x} (error code {error_code:#x})"
                )
            }
            Stop::InvalidVmcb => write!(f, "VMRUN refused the VMCB (VMEXIT_INVALID)"),
            Stop::Unhandled(why) => write!(f, "unhandled exit: {why}"),
            Stop::TooManyExits(n) => write!(f, "reached its limit of {n} exits"),
            Stop::TimedOut(ms) => write!(f, "still running after its {ms} ms budget"),
            Stop::Yielded => write!(f, "gave its CPU to another vCPU"),
        }
    }
}

/// Handles the exit the vCPU just took.
///
/// This runs at every exit: the checks before the handler compare variant
/// tags (`matches!`), and L1's permission maps are looked up only for the
/// exits that need them (`route_exit_lazy`).
pub fn dispatch(vcpu: &mut Vcpu, vm: &mut Vm, host: &HostCpu, code: ExitCode) -> Action {
    exception::observe_exit(vcpu);
    // While L2 runs, an exit L1 asked for is L1's; the rest are L0's.
    if matches!(code, ExitCode::Invalid) && vcpu.nested.in_l2() {
        return nested::vmexit::reflect_invalid(vcpu, vm);
    }
    // QEMU TCG reports RDTSCP with the RDTSC code: route what L2 really ran
    // (and what L1 ran, when its CPU model has no RDTSCP).
    let hidden = vm.hidden_cpu;
    let code = match code {
        ExitCode::Rdtsc if vcpu.nested.in_l2() || hidden.contains(HiddenFeatures::RDTSCP) => {
            match rip::decode_at_rip(vcpu, vm) {
                Ok(d) if d.insn == svm::decode::Insn::Rdtscp => ExitCode::Rdtscp,
                _ => code,
            }
        }
        _ => code,
    };
    // An instruction the guest's CPUID leaves out is #UD, before any
    // intercept of L1's: L1 sees the #UD (its #UD intercept) and never the
    // instruction's exit (KVM: intercepts of unadvertised instructions are
    // dropped from vmcb12; the instruction is #UD). Most CPU models hide
    // nothing: then no exit code needs looking up.
    if !hidden.is_empty() && HiddenFeatures::of_exit(code).is_some_and(|f| hidden.contains(f)) {
        return raise(vcpu, vm, host, EventInfo::exception(6));
    }
    if matches!(code, ExitCode::Swint) {
        if let Some(action) = soft_int::l2_swint(vcpu, vm, host) {
            return action;
        }
    }
    if let Some(l2) = &vcpu.nested.l2 {
        let facts = ExitFacts {
            code,
            exit_info1: vcpu.vmcb.control.exit_info1,
            rcx: vcpu.regs.rcx,
        };
        let memory = &vm.memory;
        let route = route_exit_lazy(&facts, &l2.vmcb12.control, || {
            nested::l1_maps(memory, &l2.vmcb12)
        });
        if route == Route::L1 {
            return nested::vmexit::reflect(vcpu, vm, host, code);
        }
    }
    // L0 handles this exit: an event it interrupted is delivered again.
    reinject::complete_interrupts(vcpu, host);
    let l1_hypervisor = vm.nested_svm && !vcpu.nested.in_l2();
    let action = match code {
        ExitCode::Cpuid => cpuid::handle(vcpu, vm, host),
        ExitCode::Msr => msr::handle(vcpu, vm, host),
        ExitCode::Ioio => ioio::handle(vcpu, vm, host),
        ExitCode::Hlt => apic::hlt(vcpu, vm, host),
        // L0's interrupt window opened (apic::after_exit closed it).
        ExitCode::Vintr => Action::Resume,
        ExitCode::CrWrite(n @ (0 | 3 | 4 | 8)) => cr::handle(vcpu, vm, host, n),
        ExitCode::DrWrite(n @ (0..=3 | 5 | 7)) => dr::handle(vcpu, vm, host, n),
        ExitCode::TrWrite => tr::handle(vcpu, vm, host),
        ExitCode::Rdtsc | ExitCode::Rdtscp => tsc::handle(vcpu, vm, host),
        ExitCode::Vmmcall => hypercall::handle(vcpu, vm, host),
        ExitCode::Vmrun if l1_hypervisor => nested::vmrun::emulate(vcpu, vm, host),
        // From L1, or from an L2 whose L1 does not intercept them: the
        // instruction acts on the running guest (nested::insns).
        ExitCode::Vmload
        | ExitCode::Vmsave
        | ExitCode::Stgi
        | ExitCode::Clgi
        | ExitCode::Skinit
        | ExitCode::Invlpga
            if vm.nested_svm =>
        {
            nested::insns::emulate(vcpu, vm, host, code)
        }
        // SVM not offered (or VMRUN from an L2, which L1 must intercept:
        // only a test turning L0's checks off gets here): undefined.
        ExitCode::Vmrun
        | ExitCode::Vmload
        | ExitCode::Vmsave
        | ExitCode::Stgi
        | ExitCode::Clgi
        | ExitCode::Skinit
        | ExitCode::Invlpga => raise(vcpu, vm, host, EventInfo::exception(6)),
        ExitCode::Exception(v) if hypercall::intercept_once_hit(vcpu, vm, v) => Action::Resume,
        // The host took the interrupt already (Vcpu::run); nothing else to
        // do. Physical interrupts are L0's also while L2 runs (route_exit):
        // L2 resumes.
        ExitCode::Intr => Action::Resume,
        ExitCode::Exception(vector) => exception::handle(vcpu, vector),
        // A physical NMI: the host took it at its STGI (world_switch).
        ExitCode::Nmi => Action::Resume,
        ExitCode::Iret => exception::iret(vcpu),
        ExitCode::Shutdown => Action::Stop(Stop::Shutdown),
        ExitCode::Npf => npf::handle(vcpu, vm, host),
        ExitCode::Invalid => Action::Stop(Stop::InvalidVmcb),
        other => Action::Stop(Stop::Unhandled(alloc::format!("{other:?}"))),
    };
    if let Action::Stop(stop) = &action {
        report(vcpu, vm, stop);
    }
    action
}

/// Raises exception `event` in the running guest. While L2 runs and L1
/// intercepts that vector, L1 gets the #VMEXIT it asked for instead
/// (EXITINFO1 = the error code), as the CPU would do for L1.
pub fn raise(vcpu: &mut Vcpu, vm: &mut Vm, host: &HostCpu, event: EventInfo) -> Action {
    if let Some(l2) = &vcpu.nested.l2 {
        let vector = event.vector();
        if vector < 32 && l2.vmcb12.control.intercept_exceptions & (1 << vector) != 0 {
            let c = &mut vcpu.vmcb.control;
            c.exit_info1 = u64::from(event.error_code().unwrap_or(0));
            c.exit_info2 = 0;
            c.exit_int_info = 0;
            return nested::vmexit::reflect(vcpu, vm, host, ExitCode::Exception(vector));
        }
    }
    inject(vcpu, event)
}

/// Injects `event` at the next VMRUN (RIP stays on the faulting instruction).
pub fn inject(vcpu: &mut Vcpu, event: EventInfo) -> Action {
    vcpu.vmcb.control.event_inj = event.0;
    Action::Resume
}

/// Prints why a guest stopped, with the exit state, unless it simply finished.
fn report(vcpu: &Vcpu, vm: &Vm, stop: &Stop) {
    if matches!(stop, Stop::Done { .. } | Stop::ExitDevice(_)) {
        return;
    }
    let c = &vcpu.vmcb.control;
    log::warn!(
        "vm {}: stopped: {stop}; rip {:#x} exit code {:#x} exitinfo1 {:#x} exitinfo2 {:#x} exitintinfo {:#x} after {} exits",
        vm.name,
        vcpu.vmcb.state.rip,
        c.exit_code,
        c.exit_info1,
        c.exit_info2,
        c.exit_int_info,
        vcpu.exits
    );
}
