//! A simulated machine for the supervisor's host tests and fuzz target (feature `sim`).
//!
//! [`Sim`] is physical memory (sparse pages, confined to the ranges the plan handed out, like
//! the manager's window), a clock that advances only when the supervisor waits, a local APIC
//! that delivers INIT and SIPI, and fake APs. A fake AP runs the start-up protocol the way the
//! real code in `trampoline` does: at the start page it counts itself, looks its APIC ID up in
//! the CPU table the supervisor wrote, checks that the instance's page tables map its slot and
//! the start page, records its check-in in the slot and "enters" the payload; at the parking
//! page it appends itself to the park log. A fake payload then behaves as the test says:
//! well (heartbeats, console lines), or badly (lies in a shared field, exits at once, hangs).

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::mem::offset_of;

use bootproto::{ConsoleRing, StatusBlock};

use super::*;
use crate::apstart::{Ipi, IpiError};
use crate::bundle::{Bundle, Cpus, File, Instance as Spec, Protocol, Restart, Settings};
use crate::memmap::Range;
use crate::pagetable::{self, TableMemory};

pub const PAGE_BYTES: usize = 4096;
pub const MIB: u64 = 1 << 20;

/// What a fake payload does once entered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Behavior {
    /// Reports RUNNING, heartbeats every 10 ms, prints `lines` numbered lines (one per 10 ms).
    Good { lines: u32 },
    /// Reports RUNNING and exits at once with this code.
    Exit(u32),
    /// Reports RUNNING, never heartbeats again.
    Hang,
    /// Behaves well, and after `after_us` writes `value` into the shared field `field`.
    Lie { field: Field, value: u64, after_us: u64 },
    /// Writes FAULTED with this vector at once.
    Fault(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    State,
    Dropped,
    RingHead,
    RingCapacity,
}

#[derive(Clone, Debug)]
pub enum Mode {
    WaitForSipi,
    Arriving { at: u64, vector: u8 },
    Running(Run),
    Halted,
}

#[derive(Clone, Debug)]
pub struct Run {
    pub since: u64,
    pub boot_info: u64,
    pub cpu_index: u64,
    pub next_tick: u64,
    pub ticks: u32,
    pub lied: bool,
}

#[derive(Clone, Debug)]
pub struct FakeCpu {
    pub mode: Mode,
    /// Time from a SIPI to arriving at the page (how long the start-up code takes).
    pub arrive_after_us: u64,
    /// Never leaves the instance (a CPU stuck where INIT cannot reach it).
    pub deaf: bool,
    /// Start-up IPIs this CPU loses before it takes one (the SDM's reason for a second SIPI).
    pub lost_sipis: u32,
}

pub struct Sim {
    pub pages: BTreeMap<u64, Box<[u8; PAGE_BYTES]>>,
    /// What the plan handed out: every access outside is refused, as the manager's window does.
    pub allowed: Vec<Range>,
    pub now: u64,
    pub cpus: BTreeMap<u32, FakeCpu>,
    /// Behaviour per instance, found from the boot info's name.
    pub behaviors: BTreeMap<String, Behavior>,
    pub events: Vec<String>,
    pub ipis: Vec<(char, u32, u8)>,
    /// Page-table faults a real CPU would have taken (tables that do not map what it needs).
    pub triple_faults: Vec<String>,
    /// UARTs quiesced, by I/O base, in order.
    pub quiesced: Vec<u16>,
}

impl Sim {
    pub fn new(apic_ids: &[u32]) -> Sim {
        Sim {
            pages: BTreeMap::new(),
            allowed: Vec::new(),
            quiesced: Vec::new(),
            now: 0,
            cpus: apic_ids
                .iter()
                .map(|&id| {
                    (
                        id,
                        FakeCpu {
                            mode: Mode::Halted,
                            arrive_after_us: 50,
                            deaf: false,
                            lost_sipis: 0,
                        },
                    )
                })
                .collect(),
            behaviors: BTreeMap::new(),
            events: Vec::new(),
            ipis: Vec::new(),
            triple_faults: Vec::new(),
        }
    }

    pub fn check(&self, paddr: u64, len: u64) -> Result<(), MemError> {
        let end = paddr.checked_add(len).ok_or(MemError { paddr, len })?;
        // `allowed` is sorted: only the last range starting at or below `paddr` can hold it.
        let i = self.allowed.partition_point(|r| r.start <= paddr);
        let inside = i.checked_sub(1).is_some_and(|i| end <= self.allowed[i].end);
        if len == 0 || inside {
            Ok(())
        } else {
            Err(MemError { paddr, len })
        }
    }

    pub fn byte(&self, a: u64) -> u8 {
        self.pages.get(&(a & !0xfff)).map_or(0, |p| p[(a & 0xfff) as usize])
    }

    pub fn set(&mut self, a: u64, b: u8) {
        if b == 0 && !self.pages.contains_key(&(a & !0xfff)) {
            return;
        }
        let page = self.pages.entry(a & !0xfff).or_insert_with(|| Box::new([0; PAGE_BYTES]));
        page[(a & 0xfff) as usize] = b;
    }

    /// `N` bytes at `a`, with one page lookup when they share a page.
    pub fn bytes<const N: usize>(&self, a: u64) -> [u8; N] {
        let off = (a & 0xfff) as usize;
        if off + N <= PAGE_BYTES {
            return self
                .pages
                .get(&(a & !0xfff))
                .map_or([0; N], |p| core::array::from_fn(|i| p[off + i]));
        }
        core::array::from_fn(|i| self.byte(a + i as u64))
    }

    // Unchecked accessors for the fake hardware (CPUs may write anywhere they like).
    pub fn r32(&self, a: u64) -> u32 {
        u32::from_le_bytes(self.bytes(a))
    }
    pub fn r64(&self, a: u64) -> u64 {
        u64::from_le_bytes(self.bytes(a))
    }
    pub fn w32(&mut self, a: u64, v: u32) {
        for (i, b) in v.to_le_bytes().iter().enumerate() {
            self.set(a + i as u64, *b);
        }
    }
    pub fn w64(&mut self, a: u64, v: u64) {
        for (i, b) in v.to_le_bytes().iter().enumerate() {
            self.set(a + i as u64, *b);
        }
    }

    pub fn is_park_page(&self, page: u64) -> bool {
        let code = trampoline::park_code();
        self.pages.get(&page).is_some_and(|p| p.starts_with(code))
    }

    /// A fake AP arrives at the page its SIPI named.
    pub fn arrive(&mut self, id: u32, vector: u8) {
        let page = u64::from(vector) << 12;
        if self.is_park_page(page) {
            let log = page + trampoline::HEADER_OFFSET as u64;
            let n = self.r32(log);
            self.w32(log, n.wrapping_add(1));
            if (n as usize) < trampoline::PARK_LOG_CAPACITY {
                self.w32(log + 8 + 4 * u64::from(n), id);
            }
            self.cpus.get_mut(&id).unwrap().mode = Mode::Halted;
            return;
        }
        let h = page + trampoline::HEADER_OFFSET as u64;
        self.w32(h + 0x4c, self.r32(h + 0x4c).wrapping_add(1));
        let (table, len) = (u64::from(self.r32(h + 0x40)), self.r32(h + 0x44));
        let found = (0..u64::from(len))
            .map(|i| table + 32 * i)
            .find(|&e| self.r32(e) == id && self.r32(e + 4) == trampoline::ARMED);
        let Some(e) = found else {
            self.w32(h + 0x50, self.r32(h + 0x50).wrapping_add(1));
            self.w32(h + 0x54, id);
            self.cpus.get_mut(&id).unwrap().mode = Mode::Halted;
            return;
        };
        self.w32(e + 12, trampoline::STAGE_FOUND);
        self.w64(e + 24, self.now * 1000);
        let (cr3, slot) = (u64::from(self.r32(e + 8)), self.r64(e + 16));
        // What the CPU needs mapped once paging is on: the start page (to execute) and its slot.
        let ok_start = pagetable::translate(self, cr3, page)
            .is_some_and(|(p, perms)| p == page && perms.executable);
        let ok_slot = pagetable::translate(self, cr3, slot)
            .is_some_and(|(p, perms)| p == slot && perms.writable);
        if !ok_start || !ok_slot {
            self.triple_faults
                .push(format!("APIC {id}: start page mapped {ok_start}, slot mapped {ok_slot}"));
            self.cpus.get_mut(&id).unwrap().mode = Mode::Halted;
            return;
        }
        let c = slot + trampoline::SLOT_CHECKIN_OFFSET as u64;
        self.w32(c, trampoline::STAGE_JUMPING);
        self.w32(c + 4, id);
        self.w64(c + 8, self.now * 1000);
        let run = Run {
            since: self.now,
            boot_info: self.r64(slot + 0x70),
            cpu_index: self.r64(slot + 0x78),
            next_tick: self.now,
            ticks: 0,
            lied: false,
        };
        self.cpus.get_mut(&id).unwrap().mode = Mode::Running(run);
    }

    /// Runs a fake payload up to now.
    pub fn run_payload(&mut self, id: u32, mut run: Run) -> Mode {
        let bi = run.boot_info;
        if self.r64(bi) != bootproto::BOOT_INFO_MAGIC {
            return Mode::Halted; // the SDK parks on a bad boot info
        }
        let name_bytes: Vec<u8> = (0..32).map(|i| self.byte(bi + 16 + i)).collect();
        let name = bootproto::read_str(&name_bytes).unwrap_or("").to_string();
        let (console, status) = (self.r64(bi + 352), self.r64(bi + 360));
        let behavior = self.behaviors.get(&name).cloned().unwrap_or(Behavior::Good { lines: 3 });
        if run.cpu_index != 0 {
            return Mode::Running(run); // only CPU 0 of an instance talks
        }
        let state_at = status + offset_of!(StatusBlock, state) as u64;
        if self.r32(state_at) == 0 {
            self.w32(state_at, bootproto::state::RUNNING);
        }
        match behavior {
            Behavior::Exit(code) => {
                self.w32(status + offset_of!(StatusBlock, exit_code) as u64, code);
                self.w32(state_at, bootproto::state::EXITED);
                return Mode::Halted;
            }
            Behavior::Fault(vector) => {
                self.w64(status + offset_of!(StatusBlock, fault_vector) as u64, vector);
                self.w64(status + offset_of!(StatusBlock, fault_rip) as u64, 0x1234);
                self.w32(status + offset_of!(StatusBlock, fault_apic_id) as u64, id);
                self.w32(state_at, bootproto::state::FAULTED);
                return Mode::Halted;
            }
            Behavior::Hang => return Mode::Running(run),
            Behavior::Lie { field, value, after_us }
                if !run.lied && self.now >= run.since + after_us =>
            {
                run.lied = true;
                match field {
                    Field::State => self.w32(state_at, value as u32),
                    Field::Dropped => self.w64(console + 16, value),
                    Field::RingHead => self.w32(console, value as u32),
                    Field::RingCapacity => self.w32(console + 8, value as u32),
                }
            }
            _ => {}
        }
        let lines = match behavior {
            Behavior::Good { lines } => lines,
            _ => 2,
        };
        while run.next_tick <= self.now {
            run.next_tick += 10_000;
            let hb = status + offset_of!(StatusBlock, heartbeat) as u64;
            self.w64(hb, self.r64(hb).wrapping_add(1));
            if run.ticks < lines {
                run.ticks += 1;
                let line = format!("{name}: tick {}\n", run.ticks);
                self.print(console, line.as_bytes());
            }
        }
        Mode::Running(run)
    }

    /// The SDK's console write: produce into the ring, publish head, count drops.
    pub fn print(&mut self, ring: u64, bytes: &[u8]) {
        struct Data<'a>(&'a mut Sim, u64);
        impl bootproto::ring::RingData for Data<'_> {
            fn read(&self, i: u32) -> u8 {
                self.0.byte(self.1 + u64::from(i))
            }
            fn write(&mut self, i: u32, b: u8) {
                self.0.set(self.1 + u64::from(i), b);
            }
        }
        let (head, tail, cap) = (self.r32(ring), self.r32(ring + 4), self.r32(ring + 8));
        let data = ring + bootproto::CONSOLE_DATA_OFFSET as u64;
        let p = bootproto::ring::produce(head, tail, cap, &mut Data(self, data), bytes);
        self.w32(ring, p.head);
        let d = ring + offset_of!(ConsoleRing, dropped) as u64;
        self.w64(d, self.r64(d).wrapping_add(p.dropped));
    }

    pub fn step(&mut self) {
        let ids: Vec<u32> = self.cpus.keys().copied().collect();
        for id in ids {
            let mode = self.cpus[&id].mode.clone();
            match mode {
                Mode::Arriving { at, vector } if at <= self.now => self.arrive(id, vector),
                Mode::Running(run) => {
                    let next = self.run_payload(id, run);
                    self.cpus.get_mut(&id).unwrap().mode = next;
                }
                _ => {}
            }
        }
    }

    pub fn parked(&self, id: u32, park_page: u64) -> bool {
        let mut log = vec![0u8; trampoline::PAGE_SIZE - trampoline::HEADER_OFFSET];
        for (i, b) in log.iter_mut().enumerate() {
            *b = self.byte(park_page + (trampoline::HEADER_OFFSET + i) as u64);
        }
        trampoline::park_log_has(&log, id)
    }

    pub fn running(&self, id: u32) -> bool {
        matches!(self.cpus[&id].mode, Mode::Running(_))
    }
}

impl TableMemory for Sim {
    fn alloc_table(&mut self) -> Result<u64, crate::pagetable::PageTableError> {
        Err(crate::pagetable::PageTableError::OutOfFrames)
    }
    fn read_entry(&self, table: u64, index: usize) -> u64 {
        self.r64(table + 8 * index as u64)
    }
    fn write_entry(&mut self, _: u64, _: usize, _: u64) {}
}

impl Phys for Sim {
    fn read(&self, paddr: u64, out: &mut [u8]) -> Result<(), MemError> {
        self.check(paddr, out.len() as u64)?;
        let mut done = 0;
        while done < out.len() {
            let a = paddr + done as u64;
            let off = (a & 0xfff) as usize;
            let n = (PAGE_BYTES - off).min(out.len() - done);
            match self.pages.get(&(a & !0xfff)) {
                Some(p) => out[done..done + n].copy_from_slice(&p[off..off + n]),
                None => out[done..done + n].fill(0),
            }
            done += n;
        }
        Ok(())
    }
    fn write(&mut self, paddr: u64, bytes: &[u8]) -> Result<(), MemError> {
        self.check(paddr, bytes.len() as u64)?;
        let mut done = 0;
        while done < bytes.len() {
            let a = paddr + done as u64;
            let off = (a & 0xfff) as usize;
            let n = (PAGE_BYTES - off).min(bytes.len() - done);
            let page = self.pages.entry(a & !0xfff).or_insert_with(|| Box::new([0; PAGE_BYTES]));
            page[off..off + n].copy_from_slice(&bytes[done..done + n]);
            done += n;
        }
        Ok(())
    }
    fn fill(&mut self, paddr: u64, len: u64, byte: u8) -> Result<(), MemError> {
        self.check(paddr, len)?;
        if byte == 0 {
            // Whole pages go away; partial ones are cleared byte by byte.
            let mut a = paddr;
            while a < paddr + len {
                if a.is_multiple_of(4096) && a + 4096 <= paddr + len {
                    self.pages.remove(&a);
                    a += 4096;
                } else {
                    self.set(a, 0);
                    a += 1;
                }
            }
            return Ok(());
        }
        for a in paddr..paddr + len {
            self.set(a, byte);
        }
        Ok(())
    }
    fn first_nonzero(&self, paddr: u64, len: u64) -> Result<Option<u64>, MemError> {
        self.check(paddr, len)?;
        let end = paddr + len;
        for (&base, page) in self.pages.range(paddr & !0xfff..end) {
            for (i, &b) in page.iter().enumerate() {
                let a = base + i as u64;
                if b != 0 && a >= paddr && a < end {
                    return Ok(Some(a));
                }
            }
        }
        Ok(None)
    }
}

impl Clock for Sim {
    fn now_us(&self) -> u64 {
        self.now
    }
    fn wait_us(&mut self, us: u64) {
        self.now += us.max(1);
        self.step();
    }
    fn tsc_to_us(&self, tsc: u64) -> u64 {
        (tsc / 1000).min(self.now)
    }
}

impl Ipi for Sim {
    fn send_init_assert(&mut self, id: u32) -> Result<(), IpiError> {
        self.ipis.push(('I', id, 0));
        let cpu = self.cpus.get_mut(&id).ok_or(IpiError::DeliveryTimeout { apic_id: id })?;
        if !cpu.deaf {
            cpu.mode = Mode::WaitForSipi;
        }
        Ok(())
    }
    fn send_init_deassert(&mut self, _: u32) -> Result<(), IpiError> {
        Ok(())
    }
    fn send_startup(&mut self, id: u32, vector: u8) -> Result<(), IpiError> {
        self.ipis.push(('S', id, vector));
        let now = self.now;
        // Parking is a few real-mode instructions; the start-up code is what can be slow.
        let park = self.is_park_page(u64::from(vector) << 12);
        let cpu = self.cpus.get_mut(&id).ok_or(IpiError::DeliveryTimeout { apic_id: id })?;
        // A SIPI is taken only in wait-for-SIPI (SDM); a running CPU ignores it.
        if matches!(cpu.mode, Mode::WaitForSipi) && cpu.lost_sipis > 0 {
            cpu.lost_sipis -= 1;
        } else if matches!(cpu.mode, Mode::WaitForSipi) {
            let after = if park { 20 } else { cpu.arrive_after_us };
            cpu.mode = Mode::Arriving { at: now + after, vector };
        }
        Ok(())
    }
}

impl super::machine::Devices for Sim {
    fn quiesce_uart(&mut self, io_base: u16) {
        self.quiesced.push(io_base);
    }
}

impl Sink for Sim {
    fn event(&mut self, e: &Event<'_>) {
        self.events.push(format!("{e}"));
    }
}

// ---------------------------------------------------------------------------------------------

/// A minimal static PIE: one R+X PT_LOAD of 0x100 file bytes (0x2000 in memory), entry at its
/// start.
pub fn tiny_elf() -> Vec<u8> {
    let mut f = vec![0u8; 0x1100];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = 2; // ELFCLASS64
    f[5] = 1; // little-endian
    f[6] = 1;
    let mut put = |off: usize, b: &[u8]| f[off..off + b.len()].copy_from_slice(b);
    put(16, &3u16.to_le_bytes()); // ET_DYN
    put(18, &0x3eu16.to_le_bytes()); // EM_X86_64
    put(20, &1u32.to_le_bytes());
    put(24, &0x1000u64.to_le_bytes()); // e_entry
    put(32, &64u64.to_le_bytes()); // e_phoff
    put(52, &64u16.to_le_bytes());
    put(54, &56u16.to_le_bytes());
    put(56, &1u16.to_le_bytes());
    let ph = 64;
    put(ph, &1u32.to_le_bytes()); // PT_LOAD
    put(ph + 4, &5u32.to_le_bytes()); // R+X
    put(ph + 8, &0x1000u64.to_le_bytes());
    put(ph + 16, &0x1000u64.to_le_bytes());
    put(ph + 24, &0x1000u64.to_le_bytes());
    put(ph + 32, &0x100u64.to_le_bytes());
    put(ph + 40, &0x2000u64.to_le_bytes());
    put(ph + 48, &0x1000u64.to_le_bytes());
    for b in &mut f[0x1000..] {
        *b = 0xf4;
    }
    f
}

/// `spec`'s CPU argument for "any free CPU".
pub const ANY_CPU: u32 = u32::MAX;

/// A 2 MiB multikernel instance of the test image on APIC `cpu` (or [`ANY_CPU`]).
pub fn spec(name: &str, cpu: u32) -> Spec {
    Spec {
        name: name.into(),
        file: 0,
        cpus: if cpu == ANY_CPU { Cpus::Any(1) } else { Cpus::Exactly(vec![cpu]) },
        memory: 2 * MIB,
        base: None,
        restart: Restart::Never,
        max_restarts: 0,
        heartbeat_timeout_ms: 0,
        protocol: Protocol::Multikernel,
        protocol_version: bootproto::PROTOCOL_VERSION,
        devices: Vec::new(),
        initrd: None,
        cmdline: String::new(),
        args: String::new(),
    }
}

pub fn inventory(ids: &[u32]) -> crate::madt::Inventory {
    crate::madt::test_inventory(ids, &[])
}

pub const FACTS: Facts = Facts {
    nx: true,
    init_delay: false,
    tsc_hz: 1_000_000_000,
    rsdp: 0,
    lapic_base: 0xfee0_0000,
    lapic_timer_hz: 0,
    checkin_timeout_ms: 100,
};

/// A machine with CPUs `0..cpus` (0 is the BSP), 1 GiB of RAM, and the bundle's instances.
pub struct World {
    pub bundle: Vec<u8>,
    pub parsed: Parsed,
    pub cpus: Vec<u32>,
}

impl World {
    /// A machine with `cpus` CPUs (APIC IDs 0..) and a bundle whose file 0 is [`tiny_elf`].
    pub fn new(cpus: u32, instances: Vec<Spec>) -> World {
        World::with_files(cpus, vec![File { name: "tiny".into(), data: tiny_elf() }], instances)
    }

    /// The same with the bundle files given.
    pub fn with_files(cpus: u32, files: Vec<File>, instances: Vec<Spec>) -> World {
        World::with_channels(cpus, files, instances, Vec::new())
    }

    /// The same with channels between the instances.
    pub fn with_channels(
        cpus: u32,
        files: Vec<File>,
        instances: Vec<Spec>,
        channels: Vec<crate::bundle::Channel>,
    ) -> World {
        let b = Bundle { settings: Settings::default(), files, instances, channels };
        let bundle = b.encode().unwrap();
        let parsed = crate::bundle::parse(&bundle).unwrap();
        World { bundle, parsed, cpus: (0..cpus).collect() }
    }

    pub fn supervisor(&self, sim: Sim, facts: Facts) -> Supervisor<'_, Sim> {
        let map = [
            Region::new(0, 0x9f000, RegionKind::Usable),
            Region::new(0x10_0000, 0x4000_0000, RegionKind::Usable),
        ];
        let inv = inventory(&self.cpus);
        let planned = plan(&self.parsed, Some(&inv), &map, &[]);
        let mut sim = sim;
        if let Ok(p) = &planned {
            sim.allowed = p.plan.carved().map(|c| c.range).collect();
            sim.allowed.sort_by_key(|r| r.start);
        }
        Supervisor::new(sim, &self.bundle, &self.parsed, trampoline::start_code(), facts, planned)
    }

    pub fn sim(&self) -> Sim {
        Sim::new(&self.cpus)
    }
}

pub fn run_for<M: Machine>(sup: &mut Supervisor<'_, M>, ms: u64) {
    let end = sup.m.now_us() + ms * 1000;
    while sup.m.now_us() < end {
        sup.poll();
        sup.m.wait_us(POLL_INTERVAL_US);
    }
}

/// The `shared` fuzz target's script, kept here so host tests replay its corpus.
///
/// Two instances boot; each 12-byte step writes an 8-byte value (little-endian, at a fuzzed
/// width) at a fuzzed offset of one of the victim's shared areas (status block, console ring
/// header and data, CPU slot, the park log) or runs a shell command on it, then lets time pass.
/// Afterwards the well-behaved neighbour must still be running with every line delivered.
/// Panics (the fuzzer's finding) if the supervisor panicked or the neighbour was disturbed.
pub fn shared_memory_script(data: &[u8]) {
    use crate::shell::Command;
    let w = World::new(4, vec![spec("victim", 1), spec("good", 2)]);
    let mut sim = w.sim();
    sim.behaviors.insert("good".into(), Behavior::Good { lines: 4 });
    let mut sup = w.supervisor(sim, FACTS);
    sup.boot().unwrap();
    let pages = sup.pages.unwrap();
    for step in data.as_chunks::<12>().0.iter().take(64) {
        let (what, width, offset) = (step[0], step[1] % 4, u16::from_le_bytes([step[2], step[3]]));
        let value = u64::from_le_bytes(step[4..12].try_into().unwrap());
        let layout = sup.instances[0].loaded.as_ref().map(|l| l.layout);
        let target = match (what % 8, layout) {
            (0, Some(l)) => Some(l.status + u64::from(offset % 80)),
            (1, Some(l)) => Some(l.console + u64::from(offset % 32)),
            (2, Some(l)) => Some(l.console + 24 + u64::from(offset) % 8192),
            (3, Some(l)) => Some(l.slot(0) + u64::from(offset % 0x1000)),
            (4, _) => Some(pages.park_page + 0x800 + u64::from(offset % 0x800)),
            (5, _) => {
                let cmd = match value % 3 {
                    0 => Command::Stop("victim".into()),
                    1 => Command::Start("victim".into()),
                    _ => Command::Restart("victim".into()),
                };
                let _ = sup.execute(cmd);
                None
            }
            _ => None,
        };
        if let Some(at) = target {
            let n = 1usize << width;
            for (i, b) in value.to_le_bytes()[..n].iter().enumerate() {
                sup.m.set(at + i as u64, *b);
            }
        }
        for _ in 0..=(step[1] >> 4) {
            sup.poll();
            sup.m.wait_us(2_000);
        }
    }
    // Let the neighbour finish its lines, then check it was not disturbed.
    run_for(&mut sup, 80);
    let good = &sup.instances[1];
    assert_eq!(good.state, crate::lifecycle::State::Running, "{:?}", good.reason);
    assert_eq!(good.console.lines, 4, "the neighbour lost console lines");
    assert_eq!(good.console.dropped, 0);
}

pub fn events_with<'a>(sup: &'a Supervisor<'_, Sim>, needle: &str) -> Vec<&'a String> {
    sup.m.events.iter().filter(|e| e.contains(needle)).collect()
}

/// The "loaded N bytes" events of an instance.
pub fn loads<'a>(sup: &'a Supervisor<'_, Sim>, name: &str) -> Vec<&'a String> {
    let needle = format!("instance '{name}': loaded ");
    sup.m.events.iter().filter(|e| e.starts_with(&needle) && e.contains(" bytes (")).collect()
}

// ---------------------------------------------------------------------------------------------
