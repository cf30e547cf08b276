//! One instance as the supervisor keeps it: what was asked for, what it was given, where it is
//! in its lifecycle, and what it has said.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;

use bootproto::layout::Layout;

use crate::bundle::{self, Restart};
use crate::lifecycle::{Policy, State, Watchdog};
use crate::memmap::Range;

use super::error::Failure;

/// A fault record, as the instance's status block held it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fault {
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cr2: u64,
    pub rsp: u64,
    /// The CPU that faulted (0 from a version 1 kernel's own handler).
    pub apic_id: u32,
}

/// A list that keeps its newest `N` entries and counts the ones it let go.
#[derive(Clone, Debug)]
pub struct BoundedLog<T> {
    items: VecDeque<T>,
    dropped: u64,
}

impl<T> Default for BoundedLog<T> {
    fn default() -> Self {
        BoundedLog { items: VecDeque::new(), dropped: 0 }
    }
}

impl<T> BoundedLog<T> {
    pub fn push(&mut self, x: T, cap: usize) {
        if self.items.len() >= cap {
            self.items.pop_front();
            self.dropped = self.dropped.saturating_add(1);
        }
        self.items.push_back(x);
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// How many entries were let go to keep the bound.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// Transitions kept per instance for the report and `status` (older ones are counted).
pub const MAX_TRANSITIONS: usize = 64;
/// Stop and start durations kept per instance.
pub const MAX_DURATIONS: usize = 64;
/// Console lines kept per instance for the shell's `log` command.
pub const RECENT_LINES: usize = 40;

/// What the plan gave an instance; fixed for its whole life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resources {
    /// Its CPUs' APIC IDs; the first is the one Linux (or a one-CPU kernel) boots on.
    pub cpus: Vec<u32>,
    /// Index of its first CPU's entry in the CPU table (the others follow).
    pub table_index: usize,
    pub region: Range,
    /// Its slice of memory below 1 MiB, if it asked for one.
    pub low: Option<Range>,
}

/// What the current load put where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    pub layout: Layout,
    /// Page-table frames taken from the pool (given back at stop).
    pub tables: Vec<u64>,
    pub cr3: u64,
}

/// Console bookkeeping for one instance.
#[derive(Clone, Debug, Default)]
pub struct Console {
    pub(super) line: String,
    /// The ring's `dropped` value already reported in this life.
    pub(super) dropped_seen: u64,
    pub bytes: u64,
    pub lines: u64,
    /// Bytes the instance reported dropping, over all its lives (saturating).
    pub dropped: u64,
    pub recent: BoundedLog<String>,
}

/// One instance.
pub struct Instance {
    pub name: String,
    pub spec: bundle::Instance,
    /// `None`: refused at boot (no CPU or no memory); it never runs.
    pub resources: Option<Resources>,
    pub state: State,
    /// Why it is not running (failed, exited, faulted, hung), if it is not.
    pub reason: Option<Failure>,
    pub loaded: Option<Loaded>,
    pub entry: u64,
    /// Time from its first INIT to the last of its CPUs checking in, for the current start.
    pub checkin_us: Option<u64>,
    pub heartbeat: u64,
    pub result: u64,
    pub exit_code: u32,
    pub fault: Option<Fault>,
    /// Restarts made (by the policy or the shell).
    pub restarts: u32,
    pub transitions: BoundedLog<(u64, State)>,
    pub stop_us: BoundedLog<u64>,
    pub start_us: BoundedLog<u64>,
    pub console: Console,
    pub(super) watchdog: Watchdog,
    /// The restart policy has looked at the current failure (reset at every start).
    pub(super) policy_done: bool,
    /// When the policy will start it again, and the back-off it waited.
    pub next_restart: Option<(u64, u64)>,
    /// Its CPUs may be running its code in an unknown state (a park failed): its memory is
    /// never scrubbed or reused and it is never started again.
    pub quarantined: bool,
    /// Its region is known to be all zero (scrubbed and verified since its last run).
    pub(super) zeroed: bool,
    /// The image it runs (the boot bundle's until a `swap`).
    pub image: super::images::ImageSource,
    /// A pushed image kept for its next `swap`.
    pub next_image: Option<u32>,
    /// What it ran before its last `swap` (`swap NAME --previous`).
    pub previous_image: Option<super::images::ImageSource>,
    pub swaps: u32,
    /// Durations of its swaps: from the stop request to the new image running.
    pub swap_us: BoundedLog<u64>,
}

impl Instance {
    pub(super) fn new(spec: bundle::Instance, now_us: u64) -> Self {
        let mut i = Instance {
            name: spec.name.clone(),
            spec,
            resources: None,
            state: State::Loaded,
            reason: None,
            loaded: None,
            entry: 0,
            checkin_us: None,
            heartbeat: 0,
            result: 0,
            exit_code: 0,
            fault: None,
            restarts: 0,
            transitions: BoundedLog::default(),
            stop_us: BoundedLog::default(),
            start_us: BoundedLog::default(),
            console: Console::default(),
            watchdog: Watchdog::default(),
            policy_done: false,
            next_restart: None,
            quarantined: false,
            zeroed: false,
            image: super::images::ImageSource::Bundle,
            next_image: None,
            previous_image: None,
            swaps: 0,
            swap_us: BoundedLog::default(),
        };
        i.transitions.push((now_us, State::Loaded), MAX_TRANSITIONS);
        i
    }

    pub fn policy(&self) -> Policy {
        match self.spec.restart {
            Restart::Never => Policy::Never,
            Restart::OnFailure => Policy::OnFailure { max_restarts: self.spec.max_restarts },
        }
    }

    /// Running, or, for an image that does not speak the boot protocol, started (all the
    /// manager can know of it).
    pub fn healthy(&self) -> bool {
        self.state == State::Running
            || (!self.spec.speaks_protocol() && self.state == State::Started)
    }

    /// How long its heartbeat has not moved, or since it was started (`None` before any start).
    pub fn heartbeat_age_us(&self, now_us: u64) -> Option<u64> {
        let since = self.watchdog.last_change_us();
        (since > 0).then(|| now_us.saturating_sub(since))
    }

    /// Its CPUs (empty if refused at boot).
    pub fn cpus(&self) -> &[u32] {
        self.resources.as_ref().map_or(&[], |r| &r.cpus)
    }

    /// Its region, if it has one.
    pub fn region(&self) -> Option<Range> {
        self.resources.as_ref().map(|r| r.region)
    }

    /// The reason as text ("" if none).
    pub fn reason_text(&self) -> String {
        self.reason.as_ref().map_or_else(String::new, |r| alloc::format!("{r}"))
    }
}
