//! The supervisor: from the boot bundle to CPUs running kernel instances, and what happens to
//! them afterwards.
//!
//! The order is the safety argument: everything that can refuse an instance runs before any
//! IPI is sent, and a refusal stops only that instance.
//!
//! 1. **Resolve CPUs** against the MADT inventory: absent, disabled, the BSP, or already
//!    taken → refused ([`assign_cpus`]).
//! 2. **Plan memory** (`platform::partition`): a region per instance, one trampoline page per
//!    instance below 1 MiB, a page-table pool below 4 GiB; all carved out of the frame
//!    allocator, so the manager can never hand them out.
//! 3. **Load** each instance ([`load::prepare`]): checksum, loader plan, then writes.
//! 4. **Start** every AP at once (`platform::apstart`) and wait, bounded, for each to check in.
//! 5. **Supervise**: drain consoles, follow status blocks, watch heartbeats, apply restart
//!    policies, and serve the control shell on the serial console.
//!
//! Lifecycle rules (states, allowed transitions, watchdog, restart policy) are the pure
//! `platform::lifecycle`; this module performs their side effects: INIT to stop a CPU, scrub
//! its memory, reload from the bundle, INIT-SIPI-SIPI again.

mod console;
mod load;
mod shell;
mod table;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::mem::offset_of;

use bootproto::layout::Shared;
use bootproto::StatusBlock;
use platform::apstart::{self, Ipi, Target};
use platform::bundle::{self, Parsed, Restart, CPU_AUTO};
use platform::frames::FrameAllocator;
use platform::lifecycle::{self, Decision, Policy, State, Watchdog};
use platform::madt::{CpuRefusal, Inventory};
use platform::memmap::{Range, Region, RegionKind};
use platform::partition::{self, InstanceRequest, PlanRequest, Protected};

use crate::lapic::{Lapic, TscDelay};
use crate::physmem::PhysWindow;
use crate::time;

pub use table::print_table;

/// Page-table pool per instance: a PML4, a PDPT and PD per GiB touched, page tables for the
/// image and the trampoline page; 64 frames is ample for a region of a few GiB.
const PAGE_TABLE_POOL_PER_INSTANCE: u64 = 64 * 4096;
/// How often the supervisor looks at the instances.
const POLL_INTERVAL_US: u64 = 2_000;
/// How often a status table is printed while supervising (not in shell mode).
const STATUS_EVERY_US: u64 = 1_000_000;
/// Transitions kept per instance for the report and `status` (older ones are counted).
const MAX_TRANSITIONS: usize = 64;
/// How long a stopped CPU has to prove, from the parking page, that it took its INIT.
const PARK_TIMEOUT_US: u64 = 500_000;
/// How long `start` waits for a payload to report in before answering (it may never: an
/// image that does not speak the boot protocol stays `started`).
const REPORT_IN_WAIT_US: u64 = 1_000_000;

#[derive(Clone, Copy, Debug, Default)]
pub struct Fault {
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cr2: u64,
    pub rsp: u64,
}

pub struct Instance {
    pub name: String,
    pub spec: bundle::Instance,
    pub apic_id: Option<u32>,
    pub region: Option<Range>,
    shared: Option<Shared>,
    tramp_page: Option<u64>,
    /// Page-table frames taken from the pool for the current start.
    tables: Vec<u64>,
    pub entry: u64,
    pub state: State,
    pub reason: String,
    pub checkin_us: Option<u64>,
    pub heartbeat: u64,
    watchdog: Watchdog,
    pub exit_code: u32,
    pub result: u64,
    pub fault: Option<Fault>,
    pub restarts: u32,
    /// (time since boot in µs, state entered); the newest [`MAX_TRANSITIONS`].
    pub transitions: Vec<(u64, State)>,
    pub transitions_dropped: u64,
    /// Durations of the newest stops (INIT, park, drain, scrub and verify) and of the newest
    /// starts (load, tables, INIT-SIPI-SIPI, check-in, report-in), in µs, for the report and
    /// `cargo xtask bench`.
    pub stop_us: Vec<u64>,
    pub start_us: Vec<u64>,
    /// The restart policy has looked at the current failure (reset at every start).
    policy_done: bool,
    console: console::Console,
}

/// How many stop/start durations each instance keeps.
const MAX_DURATIONS: usize = 64;

fn push_bounded(v: &mut Vec<u64>, x: u64) {
    if v.len() == MAX_DURATIONS {
        v.remove(0);
    }
    v.push(x);
}

impl Instance {
    fn new(spec: bundle::Instance) -> Self {
        let mut i = Instance {
            name: spec.name.clone(),
            spec,
            apic_id: None,
            region: None,
            shared: None,
            tramp_page: None,
            tables: Vec::new(),
            entry: 0,
            state: State::Loaded,
            reason: String::new(),
            checkin_us: None,
            heartbeat: 0,
            watchdog: Watchdog::default(),
            exit_code: 0,
            result: 0,
            fault: None,
            restarts: 0,
            transitions: Vec::new(),
            transitions_dropped: 0,
            stop_us: Vec::new(),
            start_us: Vec::new(),
            policy_done: false,
            console: console::Console::default(),
        };
        i.record(State::Loaded);
        i
    }

    fn record(&mut self, s: State) {
        if self.transitions.len() == MAX_TRANSITIONS {
            self.transitions.remove(0);
            self.transitions_dropped += 1;
        }
        self.transitions.push((time::micros_since_boot(), s));
    }

    /// Moves to `new`, logging the transition with its reason.
    fn set_state(&mut self, new: State, why: &str) {
        let old = self.state;
        self.state = new;
        self.record(new);
        if why.is_empty() {
            log::info!("instance '{}': {old} -> {new}", self.name);
        } else {
            log::info!("instance '{}': {old} -> {new} ({why})", self.name);
        }
    }

    fn fail(&mut self, reason: String) {
        log::error!("instance '{}': {reason}", self.name);
        self.reason = reason;
        let old = self.state;
        self.state = State::Failed;
        self.record(State::Failed);
        log::info!("instance '{}': {old} -> failed", self.name);
    }

    fn policy(&self) -> Policy {
        match self.spec.restart {
            Restart::Never => Policy::Never,
            Restart::OnFailure => Policy::OnFailure { max_restarts: self.spec.max_restarts },
        }
    }

    /// Running, or, for an image that does not speak the boot protocol, started (all the
    /// manager can know of it).
    pub fn healthy(&self) -> bool {
        self.state == State::Running || (!self.spec.boot_protocol && self.state == State::Started)
    }

    /// Refused at boot: it never got a CPU and memory.
    fn has_resources(&self) -> bool {
        self.apic_id.is_some() && self.region.is_some() && self.tramp_page.is_some()
    }
}

/// What the manager knows when it starts instances.
pub struct Machine<'a> {
    pub regions: &'a [Region],
    pub protected: Vec<Protected>,
    pub inventory: Option<&'a Inventory>,
    pub lapic: &'a mut Lapic,
    pub rsdp: u64,
    pub nx: bool,
    pub init_delay: bool,
}

pub struct Supervisor<'a> {
    pub instances: Vec<Instance>,
    lapic: &'a mut Lapic,
    init_delay: bool,
    load: load::LoadContext<'a>,
    pool: Option<FrameAllocator>,
    /// The start page stopped CPUs are sent to (see `trampoline::build_park_page`).
    park_page: Option<u64>,
    window: PhysWindow,
    shell: shell::Shell,
    quit: bool,
}

impl<'a> Supervisor<'a> {
    /// Steps 1 and 2: CPUs and memory. Refusals are recorded on the instances.
    pub fn plan(
        machine: Machine<'a>,
        bundle_bytes: &'a [u8],
        parsed: &'a Parsed,
        code: &'a trampoline::Code<'static>,
    ) -> Supervisor<'a> {
        let mut instances: Vec<Instance> =
            parsed.instances.iter().cloned().map(Instance::new).collect();
        assign_cpus(&mut instances, machine.inventory);
        let (pool, park_page) = match carve(&mut instances, machine.regions, &machine.protected) {
            Some((pool, park)) => (Some(pool), Some(park)),
            None => (None, None),
        };
        Supervisor {
            instances,
            lapic: machine.lapic,
            init_delay: machine.init_delay,
            load: load::LoadContext {
                bundle_bytes,
                parsed,
                code,
                rsdp: machine.rsdp,
                nx: machine.nx,
            },
            pool,
            park_page,
            window: PhysWindow::new(),
            shell: shell::Shell::default(),
            quit: false,
        }
    }

    /// Steps 3 and 4: load every planned instance, start all their APs at once, wait for
    /// check-ins.
    pub fn boot(&mut self) {
        let idx: Vec<usize> =
            (0..self.instances.len()).filter(|&i| self.instances[i].has_resources()).collect();
        self.start(&idx);
    }

    /// Loads and starts the given instances together.
    fn start(&mut self, idx: &[usize]) {
        let Some(pool) = self.pool.as_mut() else { return };
        let mut targets = Vec::new();
        for &i in idx {
            let inst = &mut self.instances[i];
            inst.console.reset_ring();
            inst.policy_done = false;
            inst.fault = None;
            inst.exit_code = 0;
            inst.reason.clear();
            match load::prepare(inst, &self.load, pool, self.window) {
                Ok(()) => targets.push((
                    i,
                    Target {
                        apic_id: inst.apic_id.unwrap_or(u32::MAX),
                        page: inst.tramp_page.unwrap_or(0),
                    },
                )),
                Err(reason) => {
                    for f in core::mem::take(&mut inst.tables) {
                        let _ = pool.free(Range::new(f, f + 4096));
                    }
                    inst.fail(reason);
                }
            }
        }
        if targets.is_empty() {
            return;
        }
        log::info!(
            "apstart: INIT-SIPI-SIPI to {} CPU(s) ({} the 10 ms INIT wait)",
            targets.len(),
            if self.init_delay { "with" } else { "skipping" }
        );
        let t: Vec<Target> = targets.iter().map(|(_, t)| *t).collect();
        let start_us = time::micros_since_boot();
        let results = apstart::start_all(&mut *self.lapic, &mut TscDelay, &t, self.init_delay);
        let mut waiting = Vec::new();
        for ((i, _), (_, r)) in targets.iter().zip(results) {
            match r {
                Ok(()) => waiting.push(*i),
                Err(e) => self.instances[*i].fail(format!("start-up IPIs failed: {e}")),
            }
        }
        self.wait_for_checkins(&waiting, start_us);
    }

    fn wait_for_checkins(&mut self, idx: &[usize], start_us: u64) {
        let timeout_ms = (self.load.parsed.settings.checkin_timeout_ms as u64).max(1);
        let deadline = time::Deadline::after_micros(timeout_ms * 1000);
        let window = self.window;
        let mut pending: Vec<usize> = idx.to_vec();
        while !pending.is_empty() {
            pending.retain(|&i| {
                let inst = &mut self.instances[i];
                let Some(page) = inst.tramp_page else { return false };
                let stage = window.read_u32(page + trampoline::CHECKIN_STAGE_OFFSET as u64);
                if stage != trampoline::STAGE_JUMPING {
                    return true;
                }
                let id = window.read_u32(page + trampoline::CHECKIN_APIC_ID_OFFSET as u64);
                let tsc = window.read_u64(page + trampoline::CHECKIN_TSC_OFFSET as u64);
                let ago = time::ticks_to_micros(time::rdtsc().saturating_sub(tsc));
                let at = time::micros_since_boot().saturating_sub(ago);
                inst.checkin_us = Some(at.saturating_sub(start_us));
                if Some(id) != inst.apic_id {
                    log::warn!(
                        "instance '{}': the AP that checked in reports APIC ID {id}, expected {:?}",
                        inst.name,
                        inst.apic_id
                    );
                }
                inst.watchdog.reset(time::micros_since_boot(), 0);
                let why = format!("APIC {id} checked in after {} us", inst.checkin_us.unwrap_or(0));
                inst.set_state(State::Started, &why);
                false
            });
            if deadline.passed() {
                break;
            }
            time::delay_micros(POLL_INTERVAL_US / 4);
        }
        for i in pending {
            let inst = &mut self.instances[i];
            let stage = inst
                .tramp_page
                .map_or(0, |p| window.read_u32(p + trampoline::CHECKIN_STAGE_OFFSET as u64));
            let apic = inst.apic_id.unwrap_or(u32::MAX);
            inst.fail(format!(
                "the AP (APIC {apic}) did not check in within {timeout_ms} ms: it {}",
                trampoline::stage_name(stage)
            ));
        }
    }

    /// Stops an instance: INIT to its CPU (back to wait-for-SIPI), console drained, memory
    /// scrubbed and verified, page tables returned to the pool.
    fn stop(&mut self, i: usize) -> Result<(), String> {
        self.timed(i, Self::stop_inner, |inst| &mut inst.stop_us)
    }

    /// Runs a lifecycle operation on instance `i`, recording how long it took if it succeeded.
    fn timed(
        &mut self,
        i: usize,
        op: fn(&mut Self, usize) -> Result<(), String>,
        durations: fn(&mut Instance) -> &mut Vec<u64>,
    ) -> Result<(), String> {
        let t0 = time::micros_since_boot();
        op(self, i)?;
        push_bounded(durations(&mut self.instances[i]), time::micros_since_boot() - t0);
        Ok(())
    }

    fn stop_inner(&mut self, i: usize) -> Result<(), String> {
        let inst = &mut self.instances[i];
        lifecycle::can_stop(inst.state, inst.has_resources()).map_err(|e| e.to_string())?;
        let apic = inst.apic_id.unwrap_or(u32::MAX);
        // A CPU still executing the instance is stopped, and proven stopped, before its memory
        // goes away. A failed instance may be halfway through the trampoline: INIT it too.
        self.park(apic)?;
        let inst = &mut self.instances[i];
        console::drain(inst, self.window);
        if console::has_partial_line(inst) {
            console::flush(inst);
        }
        let scrub = load::scrub(inst, self.window);
        if let Some(pool) = self.pool.as_mut() {
            for f in core::mem::take(&mut inst.tables) {
                if let Err(e) = pool.free(Range::new(f, f + 4096)) {
                    log::error!("instance '{}': page-table frame {f:#x}: {e}", inst.name);
                }
            }
        }
        inst.shared = None;
        match scrub {
            Ok(bytes) => {
                let r = inst.region.unwrap_or(Range::new(0, 0));
                log::info!(
                    "instance '{}': region {:#x}..{:#x} scrubbed: {} KiB verified zero",
                    inst.name,
                    r.start,
                    r.end,
                    bytes >> 10
                );
                inst.set_state(State::Stopped, &format!("INIT sent to APIC {apic}"));
                Ok(())
            }
            Err(at) => {
                inst.set_state(State::Stopped, "INIT sent");
                Err(format!("scrubbing failed: byte at {at:#x} is not zero"))
            }
        }
    }

    /// INIT, then a SIPI to the parking page; returns once the CPU has written its record
    /// there, which it can only do after taking the INIT.
    fn park(&mut self, apic: u32) -> Result<(), String> {
        let page = self.park_page.ok_or("no parking page was planned")?;
        let vector =
            apstart::sipi_vector(page).ok_or("the parking page is not a valid SIPI page")?;
        self.window.write_bytes(page, &trampoline::build_park_page());
        // A SIPI to the parking page before the INIT: ignored by a running CPU, but it points
        // any SIPI an emulator latched earlier (and replays after the INIT) at the parking page
        // instead of the instance's old start page (see `platform::apstart`).
        self.lapic.send_startup(apic, vector).map_err(|e| format!("SIPI failed: {e}"))?;
        self.lapic.send_init_assert(apic).map_err(|e| format!("INIT failed: {e}"))?;
        self.lapic.send_init_deassert(apic).map_err(|e| format!("INIT failed: {e}"))?;
        if self.init_delay {
            time::delay_micros(apstart::INIT_ASSERT_DELAY_US);
        }
        let mark = page + trampoline::PARK_MARK_OFFSET as u64;
        let id_at = page + trampoline::PARK_APIC_OFFSET as u64;
        let deadline = time::Deadline::after_micros(PARK_TIMEOUT_US);
        // One SIPI, a second after the SDM's interval if the first was not taken yet, then wait.
        for attempt in 0..2 {
            self.lapic.send_startup(apic, vector).map_err(|e| format!("SIPI failed: {e}"))?;
            let second = time::Deadline::after_micros(if attempt == 0 {
                apstart::SIPI_DELAY_US
            } else {
                PARK_TIMEOUT_US
            });
            while !second.passed() && !deadline.passed() {
                if self.window.read_u32(mark) == trampoline::PARK_MAGIC {
                    let id = self.window.read_u32(id_at);
                    if id != apic {
                        return Err(format!("APIC {id}, not {apic}, answered at the parking page"));
                    }
                    return Ok(());
                }
                time::delay_micros(50);
            }
        }
        Err(format!(
            "APIC {apic} did not confirm its INIT within {} ms; its memory is left as it was",
            PARK_TIMEOUT_US / 1000
        ))
    }

    fn start_stopped(&mut self, i: usize) -> Result<(), String> {
        self.timed(i, Self::start_stopped_inner, |inst| &mut inst.start_us)
    }

    fn start_stopped_inner(&mut self, i: usize) -> Result<(), String> {
        let inst = &self.instances[i];
        lifecycle::can_start(inst.state, inst.has_resources()).map_err(|e| e.to_string())?;
        self.start(&[i]);
        // Give the payload a moment to report in, so the answer says whether it runs.
        let deadline = time::Deadline::after_micros(REPORT_IN_WAIT_US);
        while self.instances[i].state == State::Started && !deadline.passed() {
            time::delay_micros(POLL_INTERVAL_US);
            self.observe(i);
        }
        let inst = &self.instances[i];
        match inst.state {
            State::Started | State::Running => Ok(()),
            _ => Err(format!("it did not start: {}", inst.reason)),
        }
    }

    /// The shell's `restart`: stop (unless stopped), start, count it.
    fn restart(&mut self, i: usize) -> Result<(), String> {
        let state = self.instances[i].state;
        if state != State::Stopped {
            self.stop(i)?;
        }
        self.start_stopped(i)?;
        self.instances[i].restarts += 1;
        Ok(())
    }

    /// One supervision pass over every instance.
    /// One supervision pass: observe every instance, then apply restart policies.
    fn poll(&mut self) {
        for i in 0..self.instances.len() {
            self.observe(i);
        }
        self.apply_policies();
    }

    /// Drains the instance's console and follows its status block and heartbeat. Applies no
    /// policy, so it is safe to call while an instance is being started.
    fn observe(&mut self, i: usize) {
        let now = time::micros_since_boot();
        let window = self.window;
        let inst = &mut self.instances[i];
        let Some(shared) = inst.shared else { return };
        console::drain(inst, window);
        let s = shared.status;
        let word = window.read_u32(s + offset_of!(StatusBlock, state) as u64);
        inst.heartbeat = window.read_u64(s + offset_of!(StatusBlock, heartbeat) as u64);
        inst.result = window.read_u64(s + offset_of!(StatusBlock, result) as u64);
        if let Some(next) = lifecycle::from_status(inst.state, word) {
            match next {
                State::Exited => {
                    inst.exit_code = window.read_u32(s + offset_of!(StatusBlock, exit_code) as u64);
                    let why = format!("exit code {}", inst.exit_code);
                    inst.set_state(next, &why);
                }
                State::Faulted => {
                    let f = read_fault(window, s);
                    log::error!(
                        "instance '{}': FAULTED: {} (vector {}), error code {:#x}, RIP {:#x}, CR2 {:#x}, RSP {:#x}; its CPU is parked",
                        inst.name,
                        table::vector_name(f.vector),
                        f.vector,
                        f.error_code,
                        f.rip,
                        f.cr2,
                        f.rsp
                    );
                    inst.fault = Some(f);
                    inst.set_state(next, table::vector_name(f.vector));
                }
                _ => inst.set_state(next, "the payload reported in"),
            }
        }
        if inst.state == State::Running
            && inst.watchdog.hung(now, inst.heartbeat, inst.spec.heartbeat_timeout_ms)
        {
            let why = format!("no heartbeat for {} ms", inst.spec.heartbeat_timeout_ms);
            inst.reason = why.clone();
            inst.set_state(State::Hung, &why);
        }
    }

    /// Applies each instance's restart policy once per failure (fault, hang, non-zero exit).
    /// The restart is counted when it is decided, so a restart that itself fails still moves
    /// the instance towards its limit.
    fn apply_policies(&mut self) {
        let mut to_restart = Vec::new();
        for (i, inst) in self.instances.iter_mut().enumerate() {
            if inst.policy_done
                || !matches!(inst.state, State::Faulted | State::Hung | State::Exited)
            {
                continue;
            }
            inst.policy_done = true;
            match lifecycle::decide(inst.policy(), inst.state, inst.exit_code, inst.restarts) {
                Decision::Restart => {
                    inst.restarts += 1;
                    to_restart.push(i);
                }
                Decision::GiveUp => log::error!(
                    "instance '{}': {} again; restart limit of {} reached, leaving it {}",
                    inst.name,
                    inst.state,
                    inst.spec.max_restarts,
                    inst.state
                ),
                Decision::Leave => {}
            }
        }
        for i in to_restart {
            let (name, n) = (self.instances[i].name.clone(), self.instances[i].restarts);
            log::info!("instance '{name}': restarting (on-failure policy, restart {n})");
            if let Err(e) = self.stop(i).and_then(|()| self.start_stopped(i)) {
                log::error!("instance '{name}': restart failed: {e}");
            }
        }
    }

    /// Step 5: supervise for `run_ms` (0 = until `quit`).
    pub fn run(&mut self, run_ms: u64) {
        let start = time::micros_since_boot();
        let mut last_table = start;
        self.greet(run_ms);
        loop {
            self.poll();
            self.reprompt();
            self.serve_shell();
            if self.quit {
                break;
            }
            let now = time::micros_since_boot();
            if run_ms != 0 && now.saturating_sub(start) >= run_ms * 1000 {
                break;
            }
            if run_ms != 0 && now.saturating_sub(last_table) >= STATUS_EVERY_US {
                print_table(&self.instances);
                last_table = now;
            }
            time::delay_micros(POLL_INTERVAL_US);
        }
        for inst in self.instances.iter_mut() {
            if inst.shared.is_some() {
                console::drain(inst, self.window);
            }
            if console::has_partial_line(inst) {
                console::flush(inst);
            }
        }
    }

    fn index_of(&self, name: &str) -> Result<usize, String> {
        self.instances.iter().position(|i| i.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.instances.iter().map(|i| i.name.as_str()).collect();
            format!("no instance named '{name}' (instances: {})", names.join(", "))
        })
    }

    pub fn pool_free_frames(&self) -> u64 {
        self.pool.as_ref().map_or(0, |p| p.free_frames())
    }

    /// Prints the final table, emits the report's `instances` section, and says whether the
    /// run passes: every instance running (or, for an image that does not speak the boot
    /// protocol, started), none failed, faulted or hung.
    pub fn finish(&self) -> bool {
        print_table(&self.instances);
        table::emit_report(&self.instances, self.pool_free_frames());
        self.instances.iter().all(|i| i.healthy())
    }
}

fn read_fault(window: PhysWindow, s: u64) -> Fault {
    Fault {
        vector: window.read_u64(s + offset_of!(StatusBlock, fault_vector) as u64),
        error_code: window.read_u64(s + offset_of!(StatusBlock, fault_error_code) as u64),
        rip: window.read_u64(s + offset_of!(StatusBlock, fault_rip) as u64),
        cr2: window.read_u64(s + offset_of!(StatusBlock, fault_cr2) as u64),
        rsp: window.read_u64(s + offset_of!(StatusBlock, fault_rsp) as u64),
    }
}

fn assign_cpus(instances: &mut [Instance], inventory: Option<&Inventory>) {
    let Some(inv) = inventory else {
        for inst in instances.iter_mut() {
            inst.fail("no CPU inventory (the MADT could not be read); no AP can be started".into());
        }
        return;
    };
    let mut taken: Vec<(u32, String)> = Vec::new();
    // Explicit CPUs first, so "auto" never takes a CPU someone named.
    for inst in instances.iter_mut().filter(|x| x.spec.cpu != CPU_AUTO) {
        let id = inst.spec.cpu;
        if let Some((_, owner)) = taken.iter().find(|(t, _)| *t == id) {
            let why = format!("CPU {id} is already given to instance '{owner}'");
            inst.fail(why);
            continue;
        }
        match inv.check_startable(id) {
            Ok(_) => {
                taken.push((id, inst.name.clone()));
                inst.apic_id = Some(id);
            }
            Err(refusal) => inst.fail(cpu_refusal_text(refusal, inv)),
        }
    }
    for inst in instances.iter_mut().filter(|x| x.spec.cpu == CPU_AUTO) {
        match inv.startable_cpus().find(|c| !taken.iter().any(|(t, _)| *t == c.apic_id)) {
            Some(c) => {
                taken.push((c.apic_id, inst.name.clone()));
                inst.apic_id = Some(c.apic_id);
            }
            None => inst.fail("no free startable CPU is left for it".into()),
        }
    }
}

fn cpu_refusal_text(refusal: CpuRefusal, inv: &Inventory) -> String {
    let ids: Vec<String> = inv.cpus.iter().map(|c| c.apic_id.to_string()).collect();
    match refusal {
        CpuRefusal::NoSuchCpu { apic_id } => {
            format!("CPU {apic_id} does not exist: the MADT lists APIC IDs {}", ids.join(", "))
        }
        CpuRefusal::IsBsp { apic_id } => {
            format!("CPU {apic_id} is the bootstrap CPU, which runs the manager")
        }
        CpuRefusal::Disabled { apic_id } => {
            format!("CPU {apic_id} is disabled in the MADT and not online-capable")
        }
    }
}

/// Plans memory for the instances that have a CPU, reserves the plan in the frame allocator,
/// assigns regions and start pages; returns the page-table pool's allocator and the parking
/// page (the last of the trampoline pages).
fn carve(
    instances: &mut [Instance],
    regions: &[Region],
    protected: &[Protected],
) -> Option<(FrameAllocator, u64)> {
    let live: Vec<usize> =
        (0..instances.len()).filter(|&i| instances[i].state != State::Failed).collect();
    if live.is_empty() {
        return None;
    }
    let requests = live
        .iter()
        .map(|&i| {
            let spec = &instances[i].spec;
            let r = InstanceRequest::new(&spec.name, spec.memory);
            match spec.base {
                Some(b) => r.at(b),
                None => r,
            }
        })
        .collect();
    let request = PlanRequest {
        instances: requests,
        page_table_pool: PAGE_TABLE_POOL_PER_INSTANCE * live.len() as u64,
        // One start page per instance, plus the parking page.
        trampoline_pages: live.len() as u64 + 1,
    };
    let plan = match partition::plan(regions, protected, &request) {
        Ok(p) => p,
        Err(e) => {
            for &i in &live {
                instances[i].fail(format!("no memory plan: {e}"));
            }
            return None;
        }
    };
    for refusal in &plan.refused {
        if let Some(inst) = instances.iter_mut().find(|x| x.name == refusal.name) {
            inst.fail(format!("memory: {refusal}"));
        }
    }
    table::print_plan(&plan);
    {
        let mut frames = crate::memory::FRAMES.lock();
        if let Some(frames) = frames.as_mut() {
            if let Err(e) = plan.apply_to(frames) {
                for &i in &live {
                    instances[i].fail(format!("could not reserve the plan's memory: {e}"));
                }
                return None;
            }
            log::info!("frames: {} free after carving the plan", frames.free_frames());
        }
    }
    let (Some(tramp), Some(pool)) = (plan.trampoline(), plan.page_table_pool()) else {
        for &i in &live {
            instances[i].fail("the plan has no trampoline page or page-table pool".into());
        }
        return None;
    };
    let mut next_page = tramp.start;
    for inst in instances.iter_mut().filter(|x| x.state != State::Failed) {
        match plan.instance(&inst.name) {
            Some(region) => {
                inst.region = Some(region);
                inst.tramp_page = Some(next_page);
                next_page += 4096;
            }
            None => inst.fail("the plan gave it no region".into()),
        }
    }
    let pool =
        FrameAllocator::from_regions(&[Region::new(pool.start, pool.end, RegionKind::Usable)]);
    Some((pool, tramp.end - 4096))
}
