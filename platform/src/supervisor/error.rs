//! Why an instance could not be started or stopped, and why it is not running: typed, with
//! messages that say what happened and, where there is one, what to do.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use bootproto::ring::RingError;

use crate::apstart::TargetError;
use crate::bundle::FileError;
use crate::lifecycle::{State, TransitionError};
use crate::madt::CpuRefusal;
use crate::pagetable::PageTableError;
use crate::partition::{InstanceRefusal, PlanError};

use super::machine::MemError;

/// Why the CPUs of an instance were not assigned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CpuProblem {
    /// There is no CPU inventory (the MADT could not be read).
    NoInventory,
    /// The named CPU cannot be started; `listed` are the APIC IDs the MADT has.
    Refused { refusal: CpuRefusal, listed: Vec<u32> },
    /// The named CPU belongs to an earlier instance.
    Taken { apic_id: u32, owner: String },
    /// The instance asks for more CPUs than are left. `asked` is what the whole manifest asks
    /// for, `startable` what the machine has for instances (its APs).
    NoneLeft { wanted: usize, free: usize, asked: usize, startable: usize },
    /// The instance asks for more CPUs than the boot protocol can list.
    TooMany { wanted: usize, max: usize },
}

impl fmt::Display for CpuProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CpuProblem::NoInventory => {
                f.write_str("no CPU inventory (the MADT could not be read); no AP can be started")
            }
            CpuProblem::Refused { refusal: CpuRefusal::NoSuchCpu { apic_id }, listed } => {
                write!(f, "CPU {apic_id} does not exist: the MADT lists APIC IDs ")?;
                list_ids(f, listed)
            }
            CpuProblem::Refused { refusal, .. } => refusal.fmt(f),
            CpuProblem::Taken { apic_id, owner } => {
                write!(f, "CPU {apic_id} is already given to instance '{owner}'")
            }
            CpuProblem::NoneLeft { wanted, free, asked, startable } => {
                match wanted {
                    1 => f.write_str("no free startable CPU is left for it")?,
                    _ => write!(f, "it asks for {wanted} CPUs but only {free} are left for it")?,
                }
                write!(
                    f,
                    ": the manifest asks for {asked} CPUs in all, and this machine has \
                     {startable} that can run instances (every CPU but the manager's); give \
                     fewer instances or CPUs, or use a bigger machine"
                )
            }
            CpuProblem::TooMany { wanted, max } => {
                write!(f, "it asks for {wanted} CPUs; one instance can have at most {max}")
            }
        }
    }
}

/// Lists IDs, eliding the middle of long lists (a 300-CPU machine).
fn list_ids(f: &mut fmt::Formatter<'_>, ids: &[u32]) -> fmt::Result {
    const SHOWN: usize = 8;
    for (i, id) in ids.iter().enumerate() {
        if ids.len() > 2 * SHOWN && i == SHOWN {
            write!(f, ", ... ({} more)", ids.len() - 2 * SHOWN)?;
        }
        if ids.len() > 2 * SHOWN && (SHOWN..ids.len() - SHOWN).contains(&i) {
            continue;
        }
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{id}")?;
    }
    Ok(())
}

/// A CPU that did not reach its entry point in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckinTimeout {
    pub apic_id: u32,
    /// The last stage it recorded (`trampoline::STAGE_*`).
    pub stage: u32,
    pub deadline_ms: u64,
    /// It did check in, this long after its INIT, but only past the deadline.
    pub late_us: Option<u64>,
}

/// Why a start failed (before or while the instance's CPUs started).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartError {
    Transition(TransitionError),
    Bundle(FileError),
    /// The region cannot hold the shared pages, the per-CPU slots and stacks, and an image.
    Layout {
        region: u64,
        cpus: u64,
    },
    Image(loader::LoadError),
    Apply(loader::ApplyError),
    Tables(PageTableError),
    Slot(trampoline::TrampolineError),
    Memory(MemError),
    Ipi {
        apic_id: u32,
        error: TargetError,
    },
    /// A CPU missed the check-in deadline; it was stopped and parked.
    Checkin(CheckinTimeout),
    /// The AP that checked in on a CPU's slot is not that CPU.
    WrongCpu {
        expected: u32,
        found: u32,
    },
    /// A CPU of the instance never confirmed it stopped: it may still run the old image.
    Quarantined,
    /// The Linux image is not a bzImage the manager can boot.
    BzImage(crate::bzimage::BzImageError),
    /// The Linux kernel does not fit what the instance has.
    Linux(crate::linuxboot::LinuxError),
    /// The zero page cannot be built.
    ZeroPage(crate::bzimage::ZeroPageError),
    /// A Linux instance's other CPUs could not be parked for Linux to start.
    Secondary(StopError),
    /// A channel of the instance has no memory.
    Channel {
        name: String,
        why: String,
    },
    /// The pushed image it should run is no longer in the image store.
    StoredImageGone {
        id: u32,
    },
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Transition(e) => e.fmt(f),
            StartError::Bundle(e) => write!(f, "bundle: {e}"),
            StartError::StoredImageGone { id } => {
                write!(f, "pushed image {id} is no longer in the image store")
            }
            StartError::Layout { region, cpus } => write!(
                f,
                "its region of {} KiB cannot hold the shared pages, {cpus} CPU slot(s) and \
                 stack(s), and an image",
                region >> 10
            ),
            StartError::Image(e) => write!(f, "image refused: {e}"),
            StartError::Apply(e) => write!(f, "loading failed: {e}"),
            StartError::Tables(e) => write!(f, "page tables: {e}"),
            StartError::Slot(e) => write!(f, "start-up parameters: {e}"),
            StartError::Memory(e) => e.fmt(f),
            StartError::BzImage(e) => write!(f, "Linux image refused: {e}"),
            StartError::Linux(e) => write!(f, "Linux kernel refused: {e}"),
            StartError::ZeroPage(e) => write!(f, "Linux boot parameters: {e}"),
            StartError::Channel { name, why } => {
                write!(f, "its channel '{name}' could not be placed: {why}")
            }
            StartError::Secondary(e) => {
                write!(f, "its other CPUs could not be readied for Linux to start: {e}")
            }
            StartError::Ipi { apic_id, error } => {
                write!(f, "start-up IPIs to APIC {apic_id} failed: {error}")
            }
            StartError::Checkin(t) => match t.late_us {
                Some(us) => write!(
                    f,
                    "APIC {} checked in late, {} ms after its INIT (the deadline is {} ms, \
                     boot_timeout_ms); it was stopped and parked",
                    t.apic_id,
                    us / 1000,
                    t.deadline_ms
                ),
                None => write!(
                    f,
                    "APIC {} did not reach the entry point within {} ms (boot_timeout_ms): it {}; \
                     it was stopped and parked",
                    t.apic_id,
                    t.deadline_ms,
                    trampoline::stage_name(t.stage)
                ),
            },
            StartError::WrongCpu { expected, found } => write!(
                f,
                "the CPU that checked in on APIC {expected}'s start-up slot says it is APIC {found}"
            ),
            StartError::Quarantined => f.write_str(
                "its CPUs never confirmed they stopped, so they may still run its old image; it \
                 cannot be started again until the machine is reset",
            ),
        }
    }
}

impl core::error::Error for StartError {}

impl StartError {
    /// Would trying again give the same answer? (An image the loader refuses will always be
    /// refused; a CPU that was slow may be fast next time.)
    pub fn permanent(&self) -> bool {
        !matches!(
            self,
            StartError::Checkin(_) | StartError::Ipi { .. } | StartError::WrongCpu { .. }
        )
    }
}

/// Why a stop failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopError {
    Transition(TransitionError),
    Ipi {
        apic_id: u32,
        error: TargetError,
    },
    /// These CPUs never showed up on the parking page after their INIT: they may still be
    /// running the instance, so its memory is left as it is.
    ParkTimeout {
        apic_ids: Vec<u32>,
        waited_ms: u64,
    },
    /// Scrubbing did not leave the region zero.
    Scrub {
        addr: u64,
    },
    Memory(MemError),
}

impl fmt::Display for StopError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopError::Transition(e) => e.fmt(f),
            StopError::Ipi { apic_id, error } => {
                write!(f, "INIT to APIC {apic_id} failed: {error}")
            }
            StopError::ParkTimeout { apic_ids, waited_ms } => {
                f.write_str("APIC ")?;
                for (i, id) in apic_ids.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{id}")?;
                }
                write!(
                    f,
                    " did not confirm its INIT on the parking page within {waited_ms} ms; the \
                     instance's memory is left as it was and its CPUs are not reused"
                )
            }
            StopError::Scrub { addr } => {
                write!(f, "scrubbing failed: byte at {addr:#x} is not zero after zeroing")
            }
            StopError::Memory(e) => e.fmt(f),
        }
    }
}

impl core::error::Error for StopError {}

/// A value an instance wrote into shared memory that no well-behaved instance can write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Violation {
    /// The status block's `state` is not one of the defined states.
    StateWord { value: u32 },
    /// A fault record whose vector is not an exception vector (0–31).
    FaultVector { value: u64 },
    /// The console ring's indices or header are impossible.
    ConsoleRing(RingError),
    /// The console ring's `dropped` counter went backwards.
    ConsoleDropped { before: u64, after: u64 },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::StateWord { value } => write!(
                f,
                "status block field `state` holds {value}, which is not a state (0-{})",
                bootproto::state::MAX
            ),
            Violation::FaultVector { value } => write!(
                f,
                "status block field `fault_vector` holds {value}, which is not an exception \
                 vector (0-31)"
            ),
            Violation::ConsoleRing(e) => write!(f, "console ring: {e}"),
            Violation::ConsoleDropped { before, after } => {
                write!(f, "console ring field `dropped` went backwards from {before} to {after}")
            }
        }
    }
}

/// Why an instance is not (or no longer) running: the `reason` the report and `status` show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Refused at boot: its CPUs.
    Cpu(CpuProblem),
    /// Refused at boot: its memory.
    Memory(InstanceRefusal),
    /// No memory plan could be made for anyone.
    NoPlan(PlanError),
    Start(StartError),
    Stop(StopError),
    /// It wrote an impossible value into shared memory; its CPUs were stopped.
    Untrusted(Violation),
    /// It ended with this exit code.
    Exited {
        code: u32,
    },
    /// A CPU exception it did not handle.
    Faulted {
        vector: u64,
    },
    /// Its heartbeat stopped for longer than its timeout; its CPUs were stopped.
    Hung {
        timeout_ms: u32,
    },
    /// The restart policy's limit was reached: `last` happened again after the last restart.
    GaveUp {
        after: State,
        last: Box<Failure>,
        max_restarts: u32,
    },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Cpu(p) => p.fmt(f),
            Failure::Memory(r) => write!(f, "memory: {r}"),
            Failure::NoPlan(e) => write!(f, "no memory plan: {e}"),
            Failure::Start(e) => e.fmt(f),
            Failure::Stop(e) => write!(f, "stop failed: {e}"),
            Failure::Untrusted(v) => write!(f, "{v}; its CPUs were stopped"),
            Failure::Exited { code } => write!(f, "exit code {code}"),
            Failure::Faulted { vector } => f.write_str(vector_name(*vector)),
            Failure::Hung { timeout_ms } => write!(f, "no heartbeat for {timeout_ms} ms"),
            Failure::GaveUp { after, last, max_restarts } => write!(
                f,
                "{last} ({after} again after {max_restarts} restarts: the restart limit; not \
                 restarted)"
            ),
        }
    }
}

/// Exception names (SDM Vol. 3A, "Exception and Interrupt Reference").
pub fn vector_name(v: u64) -> &'static str {
    match v {
        0 => "divide error (#DE)",
        1 => "debug (#DB)",
        2 => "NMI",
        3 => "breakpoint (#BP)",
        4 => "overflow (#OF)",
        5 => "BOUND range exceeded (#BR)",
        6 => "invalid opcode (#UD)",
        7 => "device not available (#NM)",
        8 => "double fault (#DF)",
        10 => "invalid TSS (#TS)",
        11 => "segment not present (#NP)",
        12 => "stack fault (#SS)",
        13 => "general protection (#GP)",
        14 => "page fault (#PF)",
        16 => "x87 floating-point error (#MF)",
        17 => "alignment check (#AC)",
        18 => "machine check (#MC)",
        19 => "SIMD floating-point (#XM)",
        20 => "virtualization exception (#VE)",
        21 => "control protection (#CP)",
        _ => "exception",
    }
}

/// Why a shell command could not be carried out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandError {
    NoSuchInstance { name: String, known: Vec<String> },
    Stop { name: String, error: StopError },
    Start { name: String, error: StartError },
    Swap { name: String, error: super::images::SwapError },
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::NoSuchInstance { name, known } => {
                write!(f, "no instance named '{name}' (instances: ")?;
                for (i, k) in known.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    f.write_str(k)?;
                }
                f.write_str(")")
            }
            CommandError::Stop { name, error } => write!(f, "cannot stop '{name}': {error}"),
            CommandError::Start { name, error } => write!(f, "cannot start '{name}': {error}"),
            CommandError::Swap { name, error } => write!(f, "cannot swap '{name}': {error}"),
        }
    }
}

impl core::error::Error for CommandError {}
