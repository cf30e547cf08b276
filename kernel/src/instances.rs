//! Kernel instances: from the boot bundle to CPUs running payloads, then supervision.
//!
//! The order is the safety argument: everything that can refuse an instance runs before any
//! IPI is sent, and a refusal stops only that instance.
//!
//! 1. **Resolve CPUs** against the MADT inventory: absent, disabled, the BSP, or already
//!    taken → refused.
//! 2. **Plan memory** (`platform::partition`): a region per instance, one trampoline page per
//!    instance below 1 MiB, a page-table pool below 4 GiB; all carved out of the frame
//!    allocator.
//! 3. **Load**: the image's bundle checksum, then `loader::plan` against the instance's load
//!    area (its region minus the stack and shared pages) before a byte is written; then
//!    `loader::apply`, the stack and shared pages zeroed, the boot info written.
//! 4. **Page tables** (`platform::pagetable`): the image's mappings with segment permissions,
//!    the rest of the region read/write no-execute, the trampoline page.
//! 5. **Start** every AP at once (`platform::apstart`), then wait, bounded, for each to check
//!    in at the trampoline.
//! 6. **Supervise**: drain console rings to the serial console with a `[name]` prefix, follow
//!    each status block (running, heartbeat, exited, faulted), and report.
//!
//! Everything read back from an instance (ring indices, status words) is untrusted input.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt::Write;
use core::mem::{offset_of, size_of};

use bootproto::layout::{self, Shared};
use bootproto::{ring, BootInfo, ConsoleRing, StatusBlock};
use platform::bundle::{self, Parsed, CPU_AUTO};
use platform::frames::FrameAllocator;
use platform::madt::{CpuRefusal, Inventory};
use platform::memmap::{Range, Region, RegionKind};
use platform::pagetable::{Mapper, Perms};
use platform::partition::{self, InstanceRequest, Owner, PlanRequest, Protected};

use crate::lapic::{Lapic, TscDelay};
use crate::physmem::{PhysWindow, TableFrames};
use crate::report;
use crate::time;

/// Page-table pool per instance: a PML4, a PDPT and PD per GiB touched, page tables for the
/// image and the trampoline page; 64 frames is ample for a region of a few GiB.
const PAGE_TABLE_POOL_PER_INSTANCE: u64 = 64 * 4096;
/// How often the supervisor looks at the instances.
const POLL_INTERVAL_US: u64 = 2_000;
/// How often a status table is printed while supervising.
const STATUS_EVERY_US: u64 = 1_000_000;
/// A console line longer than this is printed in pieces.
const MAX_LINE: usize = 200;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Planned and loaded, not started.
    Loaded,
    /// The AP checked in at the trampoline and jumped to the entry point.
    Started,
    /// The payload reported in (status block `RUNNING`).
    Running,
    Exited,
    Faulted,
    /// Refused before start, or failed to start; `reason` says why.
    Failed,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Loaded => "loaded",
            State::Started => "started",
            State::Running => "running",
            State::Exited => "exited",
            State::Faulted => "faulted",
            State::Failed => "failed",
        }
    }
}

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
    pub entry: u64,
    pub state: State,
    pub reason: String,
    pub checkin_us: Option<u64>,
    started_at_us: u64,
    console_line: String,
    dropped_seen: u64,
    pub heartbeat: u64,
    pub exit_code: u32,
    pub result: u64,
    pub fault: Option<Fault>,
    pub console_bytes: u64,
}

impl Instance {
    fn new(spec: bundle::Instance) -> Self {
        Instance {
            name: spec.name.clone(),
            spec,
            apic_id: None,
            region: None,
            shared: None,
            tramp_page: None,
            entry: 0,
            state: State::Loaded,
            reason: String::new(),
            checkin_us: None,
            started_at_us: 0,
            console_line: String::new(),
            dropped_seen: 0,
            heartbeat: 0,
            exit_code: 0,
            result: 0,
            fault: None,
            console_bytes: 0,
        }
    }

    fn fail(&mut self, reason: String) {
        log::error!("instance '{}': {reason}", self.name);
        self.state = State::Failed;
        self.reason = reason;
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

/// Runs the bundle's instances until `run_ms` has passed; returns the instances' final state.
pub fn run(machine: Machine<'_>, bundle_bytes: &[u8], parsed: &Parsed) -> Vec<Instance> {
    let mut instances: Vec<Instance> =
        parsed.instances.iter().cloned().map(Instance::new).collect();
    let window = PhysWindow::new();

    // 1. CPUs.
    assign_cpus(&mut instances, machine.inventory);

    // 2. Memory.
    let live: Vec<usize> =
        (0..instances.len()).filter(|&i| instances[i].state != State::Failed).collect();
    let requests: Vec<InstanceRequest> = live
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
        page_table_pool: PAGE_TABLE_POOL_PER_INSTANCE * live.len().max(1) as u64,
        trampoline_pages: live.len().max(1) as u64,
    };
    let plan = match partition::plan(machine.regions, &machine.protected, &request) {
        Ok(p) => p,
        Err(e) => {
            for &i in &live {
                instances[i].fail(format!("no memory plan: {e}"));
            }
            return finish(instances);
        }
    };
    for refusal in &plan.refused {
        if let Some(inst) = instances.iter_mut().find(|x| x.name == refusal.name) {
            inst.fail(format!("memory: {refusal}"));
        }
    }
    print_plan(&plan);
    {
        let mut frames = crate::memory::FRAMES.lock();
        if let Some(frames) = frames.as_mut() {
            if let Err(e) = plan.apply_to(frames) {
                for &i in &live {
                    instances[i].fail(format!("could not reserve the plan's memory: {e}"));
                }
                return finish(instances);
            }
            log::info!("frames: {} free after carving the plan", frames.free_frames());
        }
    }
    let (Some(tramp), Some(pool)) = (plan.trampoline(), plan.page_table_pool()) else {
        for &i in &live {
            instances[i].fail("the plan has no trampoline page or page-table pool".into());
        }
        return finish(instances);
    };
    let mut pool_frames =
        FrameAllocator::from_regions(&[Region::new(pool.start, pool.end, RegionKind::Usable)]);

    // 3-4. Load and build tables; trampoline pages in plan order.
    let code = trampoline::blob();
    let mut next_page = tramp.start;
    let mut targets = Vec::new();
    for inst in instances.iter_mut().filter(|x| x.state != State::Failed) {
        let Some(region) = plan.instance(&inst.name) else {
            inst.fail("the plan gave it no region".into());
            continue;
        };
        inst.region = Some(region);
        let page = next_page;
        next_page += 4096;
        match prepare(inst, region, page, bundle_bytes, parsed, &machine, &mut pool_frames, &code, window) {
            Ok(()) => {
                inst.tramp_page = Some(page);
                targets.push(platform::apstart::Target {
                    apic_id: inst.apic_id.unwrap_or(u32::MAX),
                    page,
                });
            }
            Err(reason) => inst.fail(reason),
        }
    }

    // 5. Start everything at once, then wait for check-ins.
    if !targets.is_empty() {
        log::info!(
            "apstart: INIT-SIPI-SIPI to {} CPUs ({} the 10 ms INIT wait)",
            targets.len(),
            if machine.init_delay { "with" } else { "skipping" }
        );
        let start_us = time::micros_since_boot();
        let results =
            platform::apstart::start_all(machine.lapic, &mut TscDelay, &targets, machine.init_delay);
        for (t, r) in results {
            if let Some(inst) = instances.iter_mut().find(|x| x.tramp_page == Some(t.page)) {
                inst.started_at_us = start_us;
                if let Err(e) = r {
                    inst.fail(format!("start-up IPIs failed: {e}"));
                }
            }
        }
        wait_for_checkins(&mut instances, parsed.settings.checkin_timeout_ms as u64, window);
    }

    // 6. Supervise.
    supervise(&mut instances, parsed.settings.run_ms as u64, window);
    finish(instances)
}

fn assign_cpus(instances: &mut [Instance], inventory: Option<&Inventory>) {
    let Some(inv) = inventory else {
        for inst in instances.iter_mut() {
            inst.fail("no CPU inventory (the MADT could not be read); no AP can be started".into());
        }
        return;
    };
    let mut taken: Vec<u32> = Vec::new();
    // Explicit CPUs first, so "auto" never steals a CPU someone named.
    for inst in instances.iter_mut().filter(|x| x.spec.cpu != CPU_AUTO) {
        let id = inst.spec.cpu;
        if let Some(owner) = taken.iter().position(|&t| t == id) {
            let _ = owner;
            inst.fail(format!("CPU {id} is already given to another instance"));
            continue;
        }
        match inv.check_startable(id) {
            Ok(_) => {
                taken.push(id);
                inst.apic_id = Some(id);
            }
            Err(refusal) => inst.fail(cpu_refusal_text(refusal, inv)),
        }
    }
    for inst in instances.iter_mut().filter(|x| x.spec.cpu == CPU_AUTO) {
        match inv.startable_cpus().find(|c| !taken.contains(&c.apic_id)) {
            Some(c) => {
                taken.push(c.apic_id);
                inst.apic_id = Some(c.apic_id);
            }
            None => inst.fail("no free startable CPU left for it".into()),
        }
    }
}

fn cpu_refusal_text(refusal: CpuRefusal, inv: &Inventory) -> String {
    let ids: Vec<String> = inv.cpus.iter().map(|c| c.apic_id.to_string()).collect();
    match refusal {
        CpuRefusal::NoSuchCpu { apic_id } => format!(
            "CPU {apic_id} does not exist: the MADT lists APIC IDs {}",
            ids.join(", ")
        ),
        CpuRefusal::IsBsp { apic_id } => {
            format!("CPU {apic_id} is the bootstrap CPU, which runs the manager")
        }
        CpuRefusal::Disabled { apic_id } => {
            format!("CPU {apic_id} is disabled in the MADT and not online-capable")
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn prepare(
    inst: &mut Instance,
    region: Range,
    page: u64,
    bundle_bytes: &[u8],
    parsed: &Parsed,
    machine: &Machine<'_>,
    pool: &mut FrameAllocator,
    code: &trampoline::Code<'_>,
    mut window: PhysWindow,
) -> Result<(), String> {
    let image = parsed.file(bundle_bytes, inst.spec.file).map_err(|e| format!("bundle: {e}"))?;
    let shared = layout::shared(region.start, region.len(), layout::DEFAULT_STACK_BYTES).ok_or_else(
        || format!("its region of {} KiB cannot hold a stack and the shared pages", region.len() >> 10),
    )?;
    let stack_bottom = shared.stack_top - layout::DEFAULT_STACK_BYTES;
    let load_region = loader::Region::new(region.start, stack_bottom - region.start);
    let plan = loader::plan(image, load_region).map_err(|e| format!("image refused: {e}"))?;
    loader::apply(&plan, image, &mut window).map_err(|e| format!("loading failed: {e}"))?;
    window.fill_bytes(stack_bottom, region.end - stack_bottom, 0);

    // Checksum the executable segments as loaded, for the payload to verify.
    let (ck_base, ck_len, ck) = match plan.segments().iter().find(|s| s.flags.execute) {
        Some(s) => {
            let r = s.phys_range();
            let mut buf = alloc::vec![0u8; (r.end - r.start) as usize];
            window.read_bytes(r.start, &mut buf);
            // The checksum range is given in the instance's (identity) view: the physical one.
            (r.start, r.end - r.start, bootproto::fnv1a64(&buf))
        }
        None => (0, 0, 0),
    };

    let mut info = BootInfo {
        magic: bootproto::BOOT_INFO_MAGIC,
        version: bootproto::PROTOCOL_VERSION,
        size: size_of::<BootInfo>() as u32,
        name: [0; bootproto::NAME_LEN],
        apic_id: inst.apic_id.unwrap_or(0),
        _reserved0: 0,
        region_base: region.start,
        region_size: region.len(),
        checksum_base: ck_base,
        checksum_len: ck_len,
        checksum: ck,
        args: [0; bootproto::ARGS_LEN],
        console: shared.console,
        status: shared.status,
        tsc_hz: time::tsc_hz(),
        acpi_rsdp: machine.rsdp,
    };
    bootproto::fill_str(&inst.spec.name, &mut info.name);
    bootproto::fill_str(&inst.spec.args, &mut info.args);
    let info_ptr = core::ptr::addr_of!(info).cast::<u8>();
    // SAFETY: BootInfo is repr(C) with every byte belonging to a field (its padding is
    // explicit), so viewing the initialized local as bytes is sound.
    let info_bytes = unsafe { core::slice::from_raw_parts(info_ptr, size_of::<BootInfo>()) };
    window.write_bytes(shared.boot_info, info_bytes);
    window.write_u32(shared.console + offset_of!(ConsoleRing, capacity) as u64, layout::CONSOLE_CAPACITY);

    // Page tables.
    let mut tables = TableFrames { window, pool, used: Vec::new() };
    let mut mapper = Mapper::new(&mut tables, machine.nx).map_err(|e| format!("page tables: {e}"))?;
    for m in plan.mappings() {
        let perms = Perms { writable: m.flags.write, executable: m.flags.execute };
        mapper.map(m.vaddr, m.paddr, m.size, perms).map_err(|e| format!("page tables: {e}"))?;
    }
    mapper
        .map_unmapped(region.start, region.start, region.len(), Perms::RW)
        .map_err(|e| format!("page tables: {e}"))?;
    // The trampoline page: its code runs after paging is on, and its IDT/GDT/TSS stay in use.
    mapper.map(page, page, 4096, Perms::RWX).map_err(|e| format!("page tables: {e}"))?;
    let cr3 = mapper.root();
    let table_count = mapper.table_count();

    let entry = plan.entry().vaddr;
    let target = trampoline::Target {
        cr3,
        entry,
        stack_top: shared.stack_top,
        boot_info: shared.boot_info,
        status_block: shared.status,
        nxe: machine.nx,
    };
    let bytes = trampoline::build_page(code, page, &target).map_err(|e| format!("trampoline: {e}"))?;
    window.write_bytes(page, &bytes);
    inst.entry = entry;
    inst.shared = Some(shared);
    log::info!(
        "instance '{}': loaded {} bytes ({} segments, {} relocations) into {:#x}..{:#x}, entry {:#x}, {} page tables, start page {:#x}",
        inst.name,
        plan.bytes_to_copy(),
        plan.segments().len(),
        plan.relocations().len(),
        region.start,
        region.end,
        entry,
        table_count,
        page
    );
    Ok(())
}

fn wait_for_checkins(instances: &mut [Instance], timeout_ms: u64, window: PhysWindow) {
    let deadline = time::Deadline::after_micros(timeout_ms.max(1) * 1000);
    loop {
        let mut waiting = false;
        for inst in instances.iter_mut().filter(|x| x.state == State::Loaded) {
            let Some(page) = inst.tramp_page else { continue };
            let stage = window.read_u32(page + trampoline::CHECKIN_STAGE_OFFSET as u64);
            if stage == trampoline::STAGE_JUMPING {
                let id = window.read_u32(page + trampoline::CHECKIN_APIC_ID_OFFSET as u64);
                let tsc = window.read_u64(page + trampoline::CHECKIN_TSC_OFFSET as u64);
                let now = time::micros_since_boot();
                let at = now.saturating_sub(time::ticks_to_micros(time::rdtsc().saturating_sub(tsc)));
                inst.checkin_us = Some(at.saturating_sub(inst.started_at_us));
                if Some(id) != inst.apic_id {
                    log::warn!(
                        "instance '{}': the AP that checked in reports APIC ID {id}, expected {:?}",
                        inst.name,
                        inst.apic_id
                    );
                }
                inst.state = State::Started;
                log::info!(
                    "instance '{}': APIC {} checked in after {} us",
                    inst.name,
                    id,
                    inst.checkin_us.unwrap_or(0)
                );
            } else {
                waiting = true;
            }
        }
        if !waiting {
            return;
        }
        if deadline.passed() {
            break;
        }
        time::delay_micros(POLL_INTERVAL_US / 4);
    }
    for inst in instances.iter_mut().filter(|x| x.state == State::Loaded) {
        let Some(page) = inst.tramp_page else { continue };
        let stage = window.read_u32(page + trampoline::CHECKIN_STAGE_OFFSET as u64);
        let apic = inst.apic_id.unwrap_or(u32::MAX);
        inst.fail(format!(
            "the AP (APIC {apic}) did not check in within {timeout_ms} ms: it {}",
            trampoline::stage_name(stage)
        ));
    }
}

/// Reads the instance's status block and moves its state forward.
fn poll_status(inst: &mut Instance, window: PhysWindow) {
    let Some(shared) = inst.shared else { return };
    let s = shared.status;
    let state = window.read_u32(s + offset_of!(StatusBlock, state) as u64);
    inst.heartbeat = window.read_u64(s + offset_of!(StatusBlock, heartbeat) as u64);
    inst.result = window.read_u64(s + offset_of!(StatusBlock, result) as u64);
    let new = match state {
        bootproto::state::RUNNING => State::Running,
        bootproto::state::EXITED => State::Exited,
        bootproto::state::FAULTED => State::Faulted,
        _ => return,
    };
    if new == inst.state || !matches!(inst.state, State::Started | State::Running) {
        return;
    }
    inst.state = new;
    match new {
        State::Running => log::info!("instance '{}': running", inst.name),
        State::Exited => {
            inst.exit_code = window.read_u32(s + offset_of!(StatusBlock, exit_code) as u64);
            log::info!("instance '{}': exited with code {}", inst.name, inst.exit_code);
        }
        State::Faulted => {
            let f = Fault {
                vector: window.read_u64(s + offset_of!(StatusBlock, fault_vector) as u64),
                error_code: window.read_u64(s + offset_of!(StatusBlock, fault_error_code) as u64),
                rip: window.read_u64(s + offset_of!(StatusBlock, fault_rip) as u64),
                cr2: window.read_u64(s + offset_of!(StatusBlock, fault_cr2) as u64),
                rsp: window.read_u64(s + offset_of!(StatusBlock, fault_rsp) as u64),
            };
            log::error!(
                "instance '{}': FAULTED: {} (vector {}), error code {:#x}, RIP {:#x}, CR2 {:#x}, RSP {:#x}; its CPU is parked",
                inst.name,
                vector_name(f.vector),
                f.vector,
                f.error_code,
                f.rip,
                f.cr2,
                f.rsp
            );
            inst.fault = Some(f);
        }
        _ => {}
    }
}

/// The instance's data area of its console ring, read through the physical window.
struct RingView {
    window: PhysWindow,
    data: u64,
}

impl ring::RingData for RingView {
    fn read(&self, i: u32) -> u8 {
        let mut b = [0u8];
        self.window.read_bytes(self.data + i as u64, &mut b);
        b[0]
    }
    fn write(&mut self, _i: u32, _b: u8) {
        // The manager never writes an instance's console data.
    }
}

/// Moves pending console bytes to the serial console, one `[name]` line at a time.
fn drain_console(inst: &mut Instance, window: PhysWindow) {
    let Some(shared) = inst.shared else { return };
    let base = shared.console;
    let head = window.read_u32(base + offset_of!(ConsoleRing, head) as u64);
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::Acquire);
    let tail = window.read_u32(base + offset_of!(ConsoleRing, tail) as u64);
    let view = RingView { window, data: base + bootproto::CONSOLE_DATA_OFFSET as u64 };
    let mut buf = [0u8; 512];
    loop {
        let tail_now = window.read_u32(base + offset_of!(ConsoleRing, tail) as u64);
        match ring::consume(head, tail_now, layout::CONSOLE_CAPACITY, &view, &mut buf) {
            Ok(c) => {
                for &b in &buf[..c.copied] {
                    push_console_byte(inst, b);
                }
                inst.console_bytes += c.copied as u64;
                core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::Release);
                window.write_u32(base + offset_of!(ConsoleRing, tail) as u64, c.tail);
                if c.remaining == 0 || c.copied == 0 {
                    break;
                }
            }
            Err(e) => {
                if inst.reason.is_empty() {
                    log::error!("instance '{}': console: {e}; resetting its ring", inst.name);
                    inst.reason = format!("console ring corrupted: {e}");
                }
                window.write_u32(base + offset_of!(ConsoleRing, tail) as u64, head);
                break;
            }
        }
    }
    let _ = tail;
    let dropped = window.read_u64(base + offset_of!(ConsoleRing, dropped) as u64);
    if dropped > inst.dropped_seen {
        crate::println!("[{}] ... {} bytes dropped (console ring full)", inst.name, dropped - inst.dropped_seen);
        inst.dropped_seen = dropped;
    }
}

fn push_console_byte(inst: &mut Instance, b: u8) {
    match b {
        b'\n' => flush_line(inst),
        b'\r' => {}
        b if b.is_ascii_graphic() || b == b' ' || b == b'\t' => inst.console_line.push(b as char),
        b => {
            let _ = write!(inst.console_line, "\\x{b:02x}");
        }
    }
    if inst.console_line.len() >= MAX_LINE {
        flush_line(inst);
    }
}

fn flush_line(inst: &mut Instance) {
    crate::println!("[{}] {}", inst.name, inst.console_line);
    inst.console_line.clear();
}

fn supervise(instances: &mut [Instance], run_ms: u64, window: PhysWindow) {
    let start = time::micros_since_boot();
    let mut last_table = start;
    loop {
        for inst in instances.iter_mut().filter(|x| x.shared.is_some() && x.state != State::Failed) {
            drain_console(inst, window);
            poll_status(inst, window);
        }
        let now = time::micros_since_boot();
        if run_ms != 0 && now.saturating_sub(start) >= run_ms * 1000 {
            break;
        }
        if now.saturating_sub(last_table) >= STATUS_EVERY_US {
            print_table(instances);
            last_table = now;
        }
        time::delay_micros(POLL_INTERVAL_US);
    }
    for inst in instances.iter_mut().filter(|x| !x.console_line.is_empty()) {
        flush_line(inst);
    }
}

fn vector_name(v: u64) -> &'static str {
    // SDM Vol. 3A, "Exception and Interrupt Reference".
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

pub fn print_table(instances: &[Instance]) {
    crate::println!(
        "{:<12} {:>7} {:>18} {:>10} {:<8} {:>10}",
        "instance",
        "apic",
        "region",
        "size",
        "state",
        "heartbeat"
    );
    for i in instances {
        let apic = i.apic_id.map_or("-".to_string(), |a| a.to_string());
        let (base, size) = i.region.map_or(("-".to_string(), "-".to_string()), |r| {
            (format!("{:#x}", r.start), format!("{} KiB", r.len() >> 10))
        });
        crate::println!(
            "{:<12} {:>7} {:>18} {:>10} {:<8} {:>10}",
            i.name,
            apic,
            base,
            size,
            i.state.name(),
            i.heartbeat
        );
    }
}

fn print_plan(plan: &partition::Plan) {
    crate::println!("{:<34} {:>18} {:>18} {:>12}", "plan: owner", "start", "end", "size");
    for c in &plan.regions {
        crate::println!(
            "{:<34} {:>#18x} {:>#18x} {:>9} KiB",
            owner_text(&c.owner),
            c.range.start,
            c.range.end,
            c.range.len() >> 10
        );
    }
    let mut items = String::from("[");
    for (n, c) in plan.regions.iter().enumerate() {
        if n > 0 {
            items.push(',');
        }
        let mut l = report::Line::object();
        l.str("owner", &owner_text(&c.owner)).num("base", c.range.start).num("size", c.range.len());
        items.push_str(&l.finish());
    }
    items.push(']');
    report::Line::new("plan").raw("items", &items).emit();
}

fn owner_text(o: &Owner) -> String {
    match o {
        Owner::Manager(label) => format!("manager: {label}"),
        Owner::Trampoline => "trampoline pages".into(),
        Owner::PageTablePool => "page-table pool".into(),
        Owner::Instance(n) => format!("instance: {n}"),
    }
}

/// Prints the final table and the report's `instances` section.
fn finish(instances: Vec<Instance>) -> Vec<Instance> {
    print_table(&instances);
    let mut items = String::from("[");
    for (n, i) in instances.iter().enumerate() {
        if n > 0 {
            items.push(',');
        }
        let mut l = report::Line::object();
        l.str("name", &i.name)
            .str("state", i.state.name())
            .num("heartbeat", i.heartbeat)
            .num("result", i.result)
            .num("entry", i.entry)
            .num("console_bytes", i.console_bytes);
        if let Some(a) = i.apic_id {
            l.num("apic_id", a as u64);
        }
        if let Some(r) = i.region {
            l.num("region_base", r.start).num("region_size", r.len());
        }
        if let Some(c) = i.checkin_us {
            l.num("checkin_us", c);
        }
        if !i.reason.is_empty() {
            l.str("reason", &i.reason);
        }
        if i.state == State::Exited {
            l.num("exit_code", i.exit_code as u64);
        }
        if let Some(f) = i.fault {
            let mut fl = report::Line::object();
            fl.num("vector", f.vector)
                .str("name", vector_name(f.vector))
                .num("error_code", f.error_code)
                .num("rip", f.rip)
                .num("cr2", f.cr2)
                .num("rsp", f.rsp);
            l.raw("fault", &fl.finish());
        }
        items.push_str(&l.finish());
    }
    items.push(']');
    report::Line::new("instances").raw("items", &items).emit();
    instances
}
