//! The supervisor: from the boot bundle to CPUs running kernel instances, and what happens to
//! them afterwards. Pure decisions over small traits ([`Machine`]), so every rule is tested on
//! the host against a simulated machine whose APs run the real start-up protocol.
//!
//! The order is the safety argument: everything that can refuse an instance runs before any
//! IPI is sent, and a refusal stops only that instance.
//!
//! 1. **Plan** ([`plan`]): CPUs against the MADT inventory (absent, disabled, the BSP, or
//!    already taken → refused, [`assign`]); then memory (`platform::partition`): a region per
//!    instance, the two start-up pages below 1 MiB, the CPU table and the page-table pool below
//!    4 GiB. The plan is the only source of addresses the supervisor uses.
//! 2. **Load** each instance (`load.rs`): loader plan, then writes; boot info, page tables,
//!    CPU slots and CPU table entries. Nothing is written before the loader accepted the image.
//! 3. **Start** every CPU at once through the shared start page (`start.rs`) and wait, halting,
//!    for each to check in. A CPU that misses the deadline is stopped and parked (verified)
//!    before its instance is called failed, and its memory is scrubbed before reuse.
//! 4. **Supervise** (`watch.rs`): drain consoles, follow status blocks, watch heartbeats, apply
//!    restart policies with back-off; stop (`stop.rs`: INIT, park, verify, scrub) and start on
//!    request ([`Supervisor::execute`]).
//!
//! # What the supervisor trusts
//! Nothing an instance writes: ring indices and capacity, `dropped`, status words, exit codes,
//! heartbeats, fault records, check-in and park records are all read as untrusted values. An
//! impossible one fails that instance with a reason naming the field and the value, and the
//! supervisor goes on; nothing an instance writes can make it panic, loop or allocate without
//! bound.

mod assign;
mod channels;
mod commands;
mod console;
mod error;
mod events;
mod images;
mod instance;
mod linux;
mod load;
mod machine;
mod panel;
mod start;
mod stop;
mod watch;

#[cfg(test)]
mod images_tests;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
#[cfg(test)]
mod tests;

use alloc::string::String;
use alloc::vec::Vec;

use crate::bundle::{Cpus, Parsed};
use crate::frames::FrameAllocator;
use crate::lifecycle::State;
use crate::madt::Inventory;
use crate::memmap::{Range, Region, RegionKind};
use crate::partition::{self, InstanceRequest, Plan, PlanError, PlanRequest, Protected};

pub use assign::{assign, CpuRequest};
pub use channels::{ChannelState, SideCounts};
pub use commands::Outcome;
pub use error::{
    vector_name, CheckinTimeout, CommandError, CpuProblem, Failure, StartError, StopError,
    Violation,
};
pub use events::{Event, Level};
pub use images::{ImageFacts, ImageSource, ImageStore, StoredImage, SwapError, Swapped};
pub use instance::{BoundedLog, Console, Fault, Instance, Loaded, Resources};
pub use load::plan_native;
pub use machine::{Clock, Devices, Machine, MemError, Phys, Sink};

/// How long the supervisor waits between looks at the instances while supervising.
pub const POLL_INTERVAL_US: u64 = 2_000;
/// How long a stopped CPU has to prove, from the parking page, that it took its INIT.
pub const PARK_TIMEOUT_US: u64 = 500_000;
/// How long the shell's `start` waits for a payload to report in before answering (it may
/// never: an image that does not speak the boot protocol stays `started`).
pub const REPORT_IN_WAIT_US: u64 = 1_000_000;
/// How many CPUs one instance can own (the boot info's room for their IDs).
pub const MAX_CPUS_PER_INSTANCE: usize = bootproto::info_page::MAX_CPUS;

/// What the manager learned about the machine, and the settings that shape the supervision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Facts {
    /// The CPU has the execute-disable bit (page tables may use it).
    pub nx: bool,
    /// The 10 ms INIT wait is needed (`apstart::init_delay_needed`).
    pub init_delay: bool,
    pub tsc_hz: u64,
    /// The firmware's ACPI RSDP (0: none).
    pub rsdp: u64,
    /// The local APIC's register page (mapped into native instances), 0 to map none.
    pub lapic_base: u64,
    /// The local APIC timer's input clock (0: unknown).
    pub lapic_timer_hz: u64,
    /// How long every CPU of a start has to check in.
    pub checkin_timeout_ms: u64,
}

/// What a plan decided for each instance, before any supervisor exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    pub plan: Plan,
    /// Per bundle instance: its CPUs, or why it has none.
    pub cpus: Vec<Result<Vec<u32>, CpuProblem>>,
}

/// The most page-table frames [`crate::pagetable::Mapper`] can need for an instance with a
/// `region`-byte region: its own PML4, the image's mappings and the region's identity map
/// (each at most [`crate::pagetable::tables_bound`]), and a PDPT, PD and PT for each of the
/// small extra mappings (the start page and the local APIC page).
pub fn page_tables_for(region: u64) -> u64 {
    const SMALL_MAPPINGS: u64 = 2;
    1 + 2 * crate::pagetable::tables_bound(region) + 3 * SMALL_MAPPINGS
}

/// Plans CPUs and memory for the bundle's instances on this machine.
pub fn plan(
    parsed: &Parsed,
    inventory: Option<&Inventory>,
    map: &[Region],
    protected: &[Protected],
) -> Result<Planned, PlanError> {
    let requests: Vec<(&str, CpuRequest)> = parsed
        .instances
        .iter()
        .map(|i| {
            let req = match &i.cpus {
                Cpus::Any(n) => CpuRequest::Any(*n as usize),
                Cpus::Exactly(ids) => CpuRequest::Explicit(ids.clone()),
            };
            (i.name.as_str(), req)
        })
        .collect();
    let cpus = assign(&requests, inventory, MAX_CPUS_PER_INSTANCE);
    let mut memory = Vec::new();
    let (mut pool, mut table) = (0u64, 0u64);
    for (spec, cpus) in parsed.instances.iter().zip(&cpus) {
        let Ok(cpus) = cpus else { continue };
        let mut req = InstanceRequest::new(&spec.name, spec.memory);
        if let Some(b) = spec.base {
            req = req.at(b);
        }
        if spec.protocol == crate::bundle::Protocol::Linux {
            // Linux's real-mode trampoline needs memory below 1 MiB even on one CPU, and its
            // decompressor runs at 16 MiB or above (shared/research/linux-instance.md).
            req = req
                .with_low_memory(crate::linuxboot::LOW_MEMORY_BYTES)
                .with_min_base(crate::bzimage::MIN_LOAD_ADDRESS);
        }
        memory.push(req);
        pool = pool.saturating_add(page_tables_for(spec.memory).saturating_mul(PAGE));
        table = table.saturating_add(cpus.len() as u64 * trampoline_entry_size());
    }
    let channels: Vec<InstanceRequest> = parsed
        .channels
        .iter()
        .map(|c| {
            let mut r = InstanceRequest::new(&c.name, c.size);
            r.align = PAGE;
            if let Some(b) = c.base {
                r = r.at(b);
            }
            // Each side maps it: a few tables more for each.
            pool = pool.saturating_add(2 * page_tables_for(c.size).saturating_mul(PAGE));
            r
        })
        .collect();
    let request = PlanRequest {
        instances: memory,
        page_table_pool: pool,
        cpu_table: table,
        channels,
        image_store: parsed.settings.image_store,
    };
    let plan = partition::plan(map, protected, &request)?;
    Ok(Planned { plan, cpus })
}

const PAGE: u64 = crate::memmap::PAGE_SIZE;

const fn trampoline_entry_size() -> u64 {
    core::mem::size_of::<trampoline::CpuEntry>() as u64
}

/// When the phases of a batch start happened (µs since the manager started), for the report
/// and `cargo xtask bench`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timeline {
    pub instances: usize,
    pub cpus: usize,
    pub load_start_us: u64,
    pub load_end_us: u64,
    /// Bytes written by the loads: image bytes copied plus region bytes zeroed.
    pub load_bytes: u64,
    pub ipi_start_us: u64,
    pub ipi_end_us: u64,
    /// CPUs that had not found their entry after the first SIPI and were sent a second.
    pub second_sipis: usize,
    /// The latest check-in stamp (by the APs' clocks) among the batch's CPUs.
    pub last_checkin_us: u64,
    /// When the wait for check-ins ended.
    pub checkins_done_us: u64,
}

/// Where the start-up code and the CPU table live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartPages {
    pub start_page: u64,
    pub park_page: u64,
    pub table: u64,
    pub table_len: u32,
}

/// The supervisor over a machine `M`.
pub struct Supervisor<'a, M: Machine> {
    pub m: M,
    bundle: &'a [u8],
    parsed: &'a Parsed,
    code: trampoline::Code<'a>,
    pub facts: Facts,
    pub pages: Option<StartPages>,
    pool: Option<FrameAllocator>,
    pub instances: Vec<Instance>,
    /// Stray CPUs counted so far on the start page (reported when the count grows).
    strays_seen: u32,
    /// Per bundle file: its checksum was verified.
    verified: Vec<bool>,
    /// Set by the shell's `quit`.
    pub quit: bool,
    /// The phases of the first (boot) start.
    pub boot_timeline: Option<Timeline>,
    /// The bundle's channels.
    pub channels: Vec<ChannelState>,
    /// Where the plan put the image store, and why there is none if it is absent.
    store_range: Option<Range>,
    store_refused: Option<String>,
    store: Option<ImageStore<'a>>,
    transfer: Option<images::Transfer>,
}

impl<'a, M: Machine> Supervisor<'a, M> {
    /// The supervisor for a bundle and its plan; refusals are recorded on the instances (and
    /// reported) here, before anything is written or sent.
    pub fn new(
        m: M,
        bundle: &'a [u8],
        parsed: &'a Parsed,
        code: trampoline::Code<'a>,
        facts: Facts,
        planned: Result<Planned, PlanError>,
    ) -> Self {
        let now = m.now_us();
        let instances = parsed.instances.iter().cloned().map(|s| Instance::new(s, now)).collect();
        let mut sup = Supervisor {
            m,
            bundle,
            parsed,
            code,
            facts,
            pages: None,
            pool: None,
            instances,
            strays_seen: 0,
            verified: alloc::vec![false; parsed.files.len()],
            quit: false,
            boot_timeline: None,
            channels: parsed
                .channels
                .iter()
                .map(|c| ChannelState {
                    spec: c.clone(),
                    region: None,
                    refused: None,
                    ready: false,
                    scrubs: 0,
                })
                .collect(),
            store_range: None,
            store_refused: None,
            store: None,
            transfer: None,
        };
        let planned = match planned {
            Ok(p) => p,
            Err(e) => {
                for i in 0..sup.instances.len() {
                    sup.fail(i, Failure::NoPlan(e.clone()));
                }
                return sup;
            }
        };
        let plan = &planned.plan;
        let (Some(start_page), Some(park_page)) = (plan.start_page(), plan.park_page()) else {
            for i in 0..sup.instances.len() {
                sup.fail(i, Failure::NoPlan(PlanError::NoStartPages { found: 0 }));
            }
            return sup;
        };
        if let Some(t) = plan.cpu_table() {
            sup.pages = Some(StartPages {
                start_page,
                park_page,
                table: t.start,
                table_len: (t.len() / trampoline_entry_size()) as u32,
            });
        }
        for c in sup.channels.iter_mut() {
            c.region = plan.channel(&c.spec.name);
            c.refused = plan
                .refused_channels
                .iter()
                .find(|r| r.name == c.spec.name)
                // The planner words its refusals for instances; this one is a channel's.
                .map(|r| alloc::format!("{r}").replacen("instance '", "channel '", 1));
            if c.region.is_none() && c.refused.is_none() {
                c.refused = Some("the plan gave it no memory".into());
            }
        }
        sup.store_range = plan.image_store();
        // The planner words its refusals for instances; this one is the store's.
        sup.store_refused = plan.image_store_refused.as_ref().map(|r| {
            let instance = alloc::format!("instance '{}'", partition::IMAGE_STORE_NAME);
            alloc::format!("{r}").replacen(&instance, "the image store", 1)
        });
        sup.pool = plan.page_table_pool().map(|p| {
            FrameAllocator::from_regions(&[Region::new(p.start, p.end, RegionKind::Usable)])
        });
        let mut table_index = 0usize;
        for i in 0..sup.instances.len() {
            let name = sup.instances[i].name.clone();
            match &planned.cpus.get(i) {
                Some(Ok(cpus)) => {
                    if let Some(r) = plan.refused.iter().find(|r| r.name == name) {
                        sup.fail(i, Failure::Memory(r.clone()));
                        continue;
                    }
                    let Some(region) = plan.instance(&name) else {
                        sup.fail(i, Failure::NoPlan(PlanError::NoStartPages { found: 0 }));
                        continue;
                    };
                    sup.instances[i].resources = Some(Resources {
                        cpus: cpus.clone(),
                        table_index,
                        region,
                        low: plan.low_memory(&name),
                    });
                    table_index += cpus.len();
                }
                Some(Err(p)) => sup.fail(i, Failure::Cpu(p.clone())),
                None => sup.fail(i, Failure::Cpu(CpuProblem::NoInventory)),
            }
        }
        sup
    }

    /// Loads every planned instance and starts all their CPUs at once.
    pub fn boot(&mut self) -> Result<(), MemError> {
        let Some(pages) = self.pages else { return Ok(()) };
        let start = trampoline::build_start_page(
            &self.code,
            pages.start_page,
            pages.table,
            pages.table_len,
            self.facts.nx,
        );
        let start = match start {
            Ok(s) => s,
            Err(e) => {
                for i in 0..self.instances.len() {
                    if self.instances[i].resources.is_some() {
                        self.fail(i, Failure::Start(StartError::Slot(e)));
                    }
                }
                return Ok(());
            }
        };
        self.m.write(pages.start_page, &start)?;
        self.m.write(pages.park_page, &trampoline::build_park_page())?;
        self.m.fill(pages.table, u64::from(pages.table_len) * trampoline_entry_size(), 0)?;
        let all: Vec<usize> =
            (0..self.instances.len()).filter(|&i| self.instances[i].resources.is_some()).collect();
        let mut timeline = Timeline::default();
        self.start_timed(&all, &mut timeline);
        self.boot_timeline = Some(timeline);
        Ok(())
    }

    /// One supervision pass: observe every instance, then apply restart policies.
    pub fn poll(&mut self) {
        for i in 0..self.instances.len() {
            self.observe(i);
        }
        self.apply_policies();
        self.expire_transfer();
    }

    /// Supervises for `run_ms` milliseconds (0 = until `quit`), calling `each_pass` after every
    /// pass (the manager serves its shell and prints its table there).
    pub fn run(&mut self, run_ms: u64, mut each_pass: impl FnMut(&mut Self)) {
        let start = self.m.now_us();
        loop {
            self.poll();
            each_pass(self);
            if self.quit {
                break;
            }
            let now = self.m.now_us();
            if run_ms != 0 && now.saturating_sub(start) >= run_ms.saturating_mul(1000) {
                break;
            }
            self.m.wait_us(POLL_INTERVAL_US);
        }
        for i in 0..self.instances.len() {
            self.drain(i);
            let (m, inst) = (&mut self.m, &mut self.instances[i]);
            console::flush(m, inst);
        }
    }

    /// Whether the run passes: every instance running (or, for an image that does not speak
    /// the boot protocol, started), none failed, faulted or hung.
    pub fn all_healthy(&self) -> bool {
        self.instances.iter().all(Instance::healthy)
    }

    pub fn index_of(&self, name: &str) -> Result<usize, CommandError> {
        self.instances.iter().position(|i| i.name == name).ok_or_else(|| {
            CommandError::NoSuchInstance {
                name: String::from(name),
                known: self.instances.iter().map(|i| i.name.clone()).collect(),
            }
        })
    }

    /// Free frames in the page-table pool.
    pub fn pool_free_frames(&self) -> u64 {
        self.pool.as_ref().map_or(0, FrameAllocator::free_frames)
    }

    /// Moves instance `i` to `new`, recording and reporting the transition.
    fn set_state(&mut self, i: usize, new: State, why: &dyn core::fmt::Display) {
        let now = self.m.now_us();
        let inst = &mut self.instances[i];
        let old = inst.state;
        inst.state = new;
        inst.transitions.push((now, new), instance::MAX_TRANSITIONS);
        self.m.event(&Event::Transition { name: &self.instances[i].name, from: old, to: new, why });
    }

    /// Marks instance `i` failed with `why` (its CPUs must already be stopped, or never
    /// started).
    fn fail(&mut self, i: usize, why: Failure) {
        self.m.event(&Event::Failed { name: &self.instances[i].name, why: &why });
        self.instances[i].reason = Some(why);
        self.instances[i].policy_done = false;
        self.set_state(i, State::Failed, &"");
    }
}
