//! Host tests of the supervisor on a simulated machine.
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
use crate::bundle::{Bundle, File, Instance as Spec, Restart, Settings};
use crate::memmap::Range;
use crate::pagetable::{self, TableMemory};
use crate::shell::Command;

const PAGE_BYTES: usize = 4096;
const MIB: u64 = 1 << 20;

/// What a fake payload does once entered.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Behavior {
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
enum Field {
    State,
    Dropped,
    RingHead,
    RingCapacity,
}

#[derive(Clone, Debug)]
enum Mode {
    WaitForSipi,
    Arriving { at: u64, vector: u8 },
    Running(Run),
    Halted,
}

#[derive(Clone, Debug)]
struct Run {
    since: u64,
    boot_info: u64,
    cpu_index: u64,
    next_tick: u64,
    ticks: u32,
    lied: bool,
}

#[derive(Clone, Debug)]
struct FakeCpu {
    mode: Mode,
    /// Time from a SIPI to arriving at the page (how long the start-up code takes).
    arrive_after_us: u64,
    /// Never leaves the instance (a CPU stuck where INIT cannot reach it).
    deaf: bool,
}

struct Sim {
    pages: BTreeMap<u64, Box<[u8; PAGE_BYTES]>>,
    /// What the plan handed out: every access outside is refused, as the manager's window does.
    allowed: Vec<Range>,
    now: u64,
    cpus: BTreeMap<u32, FakeCpu>,
    /// Behaviour per instance, found from the boot info's name.
    behaviors: BTreeMap<String, Behavior>,
    events: Vec<String>,
    ipis: Vec<(char, u32, u8)>,
    /// Page-table faults a real CPU would have taken (tables that do not map what it needs).
    triple_faults: Vec<String>,
}

impl Sim {
    fn new(apic_ids: &[u32]) -> Sim {
        Sim {
            pages: BTreeMap::new(),
            allowed: Vec::new(),
            now: 0,
            cpus: apic_ids
                .iter()
                .map(|&id| (id, FakeCpu { mode: Mode::Halted, arrive_after_us: 50, deaf: false }))
                .collect(),
            behaviors: BTreeMap::new(),
            events: Vec::new(),
            ipis: Vec::new(),
            triple_faults: Vec::new(),
        }
    }

    fn check(&self, paddr: u64, len: u64) -> Result<(), MemError> {
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

    fn byte(&self, a: u64) -> u8 {
        self.pages.get(&(a & !0xfff)).map_or(0, |p| p[(a & 0xfff) as usize])
    }

    fn set(&mut self, a: u64, b: u8) {
        if b == 0 && !self.pages.contains_key(&(a & !0xfff)) {
            return;
        }
        let page = self.pages.entry(a & !0xfff).or_insert_with(|| Box::new([0; PAGE_BYTES]));
        page[(a & 0xfff) as usize] = b;
    }

    /// `N` bytes at `a`, with one page lookup when they share a page.
    fn bytes<const N: usize>(&self, a: u64) -> [u8; N] {
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
    fn r32(&self, a: u64) -> u32 {
        u32::from_le_bytes(self.bytes(a))
    }
    fn r64(&self, a: u64) -> u64 {
        u64::from_le_bytes(self.bytes(a))
    }
    fn w32(&mut self, a: u64, v: u32) {
        for (i, b) in v.to_le_bytes().iter().enumerate() {
            self.set(a + i as u64, *b);
        }
    }
    fn w64(&mut self, a: u64, v: u64) {
        for (i, b) in v.to_le_bytes().iter().enumerate() {
            self.set(a + i as u64, *b);
        }
    }

    fn is_park_page(&self, page: u64) -> bool {
        let code = trampoline::park_code();
        self.pages.get(&page).is_some_and(|p| p.starts_with(code))
    }

    /// A fake AP arrives at the page its SIPI named.
    fn arrive(&mut self, id: u32, vector: u8) {
        let page = u64::from(vector) << 12;
        if self.is_park_page(page) {
            let log = page + trampoline::HEADER_OFFSET as u64;
            let n = self.r32(log);
            self.w32(log, n + 1);
            if (n as usize) < trampoline::PARK_LOG_CAPACITY {
                self.w32(log + 8 + 4 * u64::from(n), id);
            }
            self.cpus.get_mut(&id).unwrap().mode = Mode::Halted;
            return;
        }
        let h = page + trampoline::HEADER_OFFSET as u64;
        self.w32(h + 0x4c, self.r32(h + 0x4c) + 1);
        let (table, len) = (u64::from(self.r32(h + 0x40)), self.r32(h + 0x44));
        let found = (0..u64::from(len))
            .map(|i| table + 32 * i)
            .find(|&e| self.r32(e) == id && self.r32(e + 4) == trampoline::ARMED);
        let Some(e) = found else {
            self.w32(h + 0x50, self.r32(h + 0x50) + 1);
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
    fn run_payload(&mut self, id: u32, mut run: Run) -> Mode {
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
            self.w64(hb, self.r64(hb) + 1);
            if run.ticks < lines {
                run.ticks += 1;
                let line = format!("{name}: tick {}\n", run.ticks);
                self.print(console, line.as_bytes());
            }
        }
        Mode::Running(run)
    }

    /// The SDK's console write: produce into the ring, publish head, count drops.
    fn print(&mut self, ring: u64, bytes: &[u8]) {
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

    fn step(&mut self) {
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

    fn parked(&self, id: u32, park_page: u64) -> bool {
        let mut log = vec![0u8; trampoline::PAGE_SIZE - trampoline::HEADER_OFFSET];
        for (i, b) in log.iter_mut().enumerate() {
            *b = self.byte(park_page + (trampoline::HEADER_OFFSET + i) as u64);
        }
        trampoline::park_log_has(&log, id)
    }

    fn running(&self, id: u32) -> bool {
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
        if matches!(cpu.mode, Mode::WaitForSipi) {
            let after = if park { 20 } else { cpu.arrive_after_us };
            cpu.mode = Mode::Arriving { at: now + after, vector };
        }
        Ok(())
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
fn tiny_elf() -> Vec<u8> {
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

fn spec(name: &str, cpu: u32) -> Spec {
    Spec {
        name: name.into(),
        file: 0,
        cpu,
        memory: 2 * MIB,
        base: None,
        restart: Restart::Never,
        max_restarts: 0,
        heartbeat_timeout_ms: 0,
        boot_protocol: true,
        args: String::new(),
    }
}

fn inventory(ids: &[u32]) -> crate::madt::Inventory {
    crate::madt::test_inventory(ids, &[])
}

const FACTS: Facts = Facts {
    nx: true,
    init_delay: false,
    tsc_hz: 1_000_000_000,
    rsdp: 0,
    lapic_base: 0xfee0_0000,
    lapic_timer_hz: 0,
    checkin_timeout_ms: 100,
};

/// A machine with CPUs `0..cpus` (0 is the BSP), 1 GiB of RAM, and the bundle's instances.
struct World {
    bundle: Vec<u8>,
    parsed: Parsed,
    cpus: Vec<u32>,
}

impl World {
    fn new(cpus: u32, instances: Vec<Spec>) -> World {
        let b = Bundle {
            settings: Settings::default(),
            files: vec![File { name: "tiny".into(), data: tiny_elf() }],
            instances,
        };
        let bundle = b.encode().unwrap();
        let parsed = crate::bundle::parse(&bundle).unwrap();
        World { bundle, parsed, cpus: (0..cpus).collect() }
    }

    fn supervisor(&self, sim: Sim, facts: Facts) -> Supervisor<'_, Sim> {
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

    fn sim(&self) -> Sim {
        Sim::new(&self.cpus)
    }
}

fn run_for<M: Machine>(sup: &mut Supervisor<'_, M>, ms: u64) {
    let end = sup.m.now_us() + ms * 1000;
    while sup.m.now_us() < end {
        sup.poll();
        sup.m.wait_us(POLL_INTERVAL_US);
    }
}

fn events_with<'a>(sup: &'a Supervisor<'_, Sim>, needle: &str) -> Vec<&'a String> {
    sup.m.events.iter().filter(|e| e.contains(needle)).collect()
}

/// The "loaded N bytes" events of an instance.
fn loads<'a>(sup: &'a Supervisor<'_, Sim>, name: &str) -> Vec<&'a String> {
    let needle = format!("instance '{name}': loaded ");
    sup.m.events.iter().filter(|e| e.starts_with(&needle) && e.contains(" bytes (")).collect()
}

// ---------------------------------------------------------------------------------------------

#[test]
fn every_cpu_starts_through_one_start_page_and_reports_in() {
    let w = World::new(4, vec![spec("a", CPU_AUTO), spec("b", CPU_AUTO), spec("c", 3)]);
    let mut sup = w.supervisor(w.sim(), FACTS);
    sup.boot().unwrap();
    let pages = sup.pages.unwrap();
    assert!(sup.m.triple_faults.is_empty(), "{:?}", sup.m.triple_faults);
    for inst in &sup.instances {
        assert_eq!(inst.state, State::Started, "{}: {:?}", inst.name, inst.reason);
        assert!(inst.checkin_us.is_some());
    }
    // "c" named CPU 3, so the automatic ones got 1 and 2.
    let cpus: Vec<&[u32]> = sup.instances.iter().map(|i| i.cpus()).collect();
    assert_eq!(cpus, [&[1][..], &[2], &[3]]);
    // One start page for everyone: every SIPI names it.
    let start_vector = (pages.start_page >> 12) as u8;
    assert!(sup.m.ipis.iter().filter(|(k, ..)| *k == 'S').all(|&(_, _, v)| v == start_vector));
    assert_eq!(sup.m.ipis.iter().filter(|(k, ..)| *k == 'S').count(), 9);
    run_for(&mut sup, 50);
    for inst in &sup.instances {
        assert_eq!(inst.state, State::Running, "{}", inst.name);
        assert!(inst.heartbeat > 0);
    }
    // Console lines came through in order.
    let lines: Vec<_> = events_with(&sup, "[a] a: tick").into_iter().cloned().collect();
    assert_eq!(lines, ["[a] a: tick 1", "[a] a: tick 2", "[a] a: tick 3"]);
    // Every entry was disarmed once its CPU checked in.
    for k in 0..3u64 {
        assert_eq!(sup.m.r32(pages.table + 32 * k + 4), 0);
    }
}

#[test]
fn low_memory_and_tables_do_not_grow_with_the_number_of_cpus() {
    let instances = (1..300).map(|i| spec(&format!("i{i}"), CPU_AUTO)).collect();
    let w = World::new(300, instances);
    let mut sup = w.supervisor(w.sim(), Facts { init_delay: true, ..FACTS });
    sup.boot().unwrap();
    assert!(sup.instances.iter().all(|i| i.state == State::Started));
    let low: Vec<_> = sup.m.allowed.iter().filter(|r| r.start < 0x10_0000).collect();
    assert_eq!(low.len(), 2, "{low:?}");
    // One INIT per CPU, three SIPIs per CPU, and a single 10 ms INIT wait for all of them.
    assert_eq!(sup.m.ipis.iter().filter(|(k, ..)| *k == 'I').count(), 299);
    assert_eq!(sup.m.ipis.iter().filter(|(k, ..)| *k == 'S').count(), 3 * 299);
    let started = sup.instances.iter().filter_map(|i| i.checkin_us).max().unwrap();
    assert!(started < 20_000, "the last CPU checked in after {started} us");
    let table = sup.pages.unwrap();
    assert_eq!(table.table_len as usize, trampoline::PAGE_SIZE * 3 / 32);
}

#[test]
fn a_cpu_that_misses_its_deadline_is_parked_before_its_instance_is_failed() {
    let w = World::new(4, vec![spec("slow", 1), spec("ok", 2)]);
    let mut sim = w.sim();
    sim.cpus.get_mut(&1).unwrap().arrive_after_us = 10_000_000;
    let mut sup = w.supervisor(sim, FACTS);
    sup.boot().unwrap();
    let pages = sup.pages.unwrap();
    let slow = &sup.instances[0];
    assert_eq!(slow.state, State::Failed);
    let why = slow.reason_text();
    assert!(
        why.contains("APIC 1 did not reach the entry point within 100 ms")
            && why.contains("never found its start parameters")
            && why.contains("it was stopped and parked"),
        "{why}"
    );
    assert!(sup.m.parked(1, pages.park_page), "the late CPU was not parked");
    assert!(!sup.m.running(1));
    assert_eq!(loads(&sup, "slow").len(), 1);
    // Its memory was scrubbed (and so is known to be zero).
    assert!(sup.instances[0].zeroed);
    // The neighbour was watched while the slow one was waited for: it already reported in.
    assert_eq!(sup.instances[1].state, State::Running);
}

#[test]
fn a_late_check_in_is_reported_as_late_with_its_time() {
    let w = World::new(4, vec![spec("late", 1)]);
    let mut sim = w.sim();
    // Arrives 50 us after the 100 ms deadline: between two looks at the check-ins.
    sim.cpus.get_mut(&1).unwrap().arrive_after_us = 100_050;
    let mut sup = w.supervisor(sim, FACTS);
    sup.boot().unwrap();
    let why = sup.instances[0].reason_text();
    assert!(why.contains("APIC 1 checked in late, 100 ms after its INIT"), "{why}");
    assert!(sup.m.parked(1, sup.pages.unwrap().park_page));
    assert_eq!(sup.instances[0].state, State::Failed);
}

#[test]
fn a_dropped_counter_of_u64_max_across_a_restart_does_not_overflow() {
    let mut s = spec("liar", 1);
    s.restart = Restart::OnFailure;
    s.max_restarts = 2;
    let w = World::new(4, vec![s, spec("good", 2)]);
    let mut sim = w.sim();
    sim.behaviors.insert(
        "liar".into(),
        Behavior::Lie { field: Field::Dropped, value: u64::MAX, after_us: 20_000 },
    );
    let mut sup = w.supervisor(sim, FACTS);
    sup.boot().unwrap();
    run_for(&mut sup, 100);
    assert_eq!(sup.instances[0].console.dropped, u64::MAX);
    // Make it exit with a failure: the policy restarts it, and its new life lies again.
    sup.m.behaviors.insert("liar".into(), Behavior::Exit(1));
    let status = sup.instances[0].loaded.as_ref().unwrap().layout.status;
    sup.m.w32(status + 4, 1);
    sup.m.w32(status, bootproto::state::EXITED);
    run_for(&mut sup, 20);
    sup.m
        .behaviors
        .insert("liar".into(), Behavior::Lie { field: Field::Dropped, value: 5, after_us: 0 });
    run_for(&mut sup, 200);
    assert!(sup.instances[0].restarts >= 1);
    assert_eq!(sup.instances[0].console.dropped, u64::MAX, "saturated, not wrapped");
    assert_eq!(sup.instances[1].state, State::Running);
}

#[test]
fn an_instance_that_exits_at_once_is_restarted_with_back_off_then_given_up() {
    let mut s = spec("storm", 1);
    s.restart = Restart::OnFailure;
    s.max_restarts = 6;
    let w = World::new(4, vec![s, spec("good", 2)]);
    let mut sim = w.sim();
    sim.behaviors.insert("storm".into(), Behavior::Exit(1));
    let mut sup = w.supervisor(sim, FACTS);
    sup.boot().unwrap();
    run_for(&mut sup, 3000);
    let storm = &sup.instances[0];
    assert_eq!(storm.restarts, 6);
    assert_eq!(storm.state, State::Exited);
    let why = storm.reason_text();
    assert!(why.starts_with("exit code 1 (exited again after 6 restarts"), "{why}");
    let delays: Vec<String> = events_with(&sup, "restarting in")
        .iter()
        .map(|e| e.split("restarting in ").nth(1).unwrap().split(' ').next().unwrap().to_string())
        .collect();
    assert_eq!(delays, ["0", "25", "50", "100", "200", "400"]);
    assert_eq!(events_with(&sup, "restart limit of 6 reached").len(), 1);
    // Every restart really started it: seven check-ins in all.
    assert_eq!(loads(&sup, "storm").len(), 7);
    // The neighbour ran throughout and lost nothing.
    assert_eq!(sup.instances[1].state, State::Running);
    assert_eq!(sup.instances[1].console.dropped, 0);
}

#[test]
fn impossible_values_fail_the_instance_naming_field_and_value_and_stop_its_cpu() {
    let cases = [
        (Field::State, 77, "status block field `state` holds 77, which is not a state (0-3)"),
        (Field::RingHead, 0xdead_beef, "console ring: console ring indices are corrupt"),
        (Field::RingCapacity, 12, "console ring header says capacity 12"),
    ];
    for (field, value, want) in cases {
        let w = World::new(4, vec![spec("liar", 1), spec("good", 2)]);
        let mut sim = w.sim();
        sim.behaviors.insert("liar".into(), Behavior::Lie { field, value, after_us: 20_000 });
        sim.behaviors.insert("good".into(), Behavior::Good { lines: 10 });
        let mut sup = w.supervisor(sim, FACTS);
        sup.boot().unwrap();
        run_for(&mut sup, 150);
        let liar = &sup.instances[0];
        assert_eq!(liar.state, State::Failed, "{field:?}");
        let why = liar.reason_text();
        assert!(why.contains(want) && why.ends_with("its CPUs were stopped"), "{field:?}: {why}");
        assert!(sup.m.parked(1, sup.pages.unwrap().park_page), "{field:?}: CPU 1 not parked");
        assert!(liar.zeroed, "{field:?}: not scrubbed");
        let good: Vec<_> = events_with(&sup, "[good] good: tick").into_iter().cloned().collect();
        let want_lines: Vec<String> = (1..=10).map(|n| format!("[good] good: tick {n}")).collect();
        assert_eq!(good, want_lines, "{field:?}: the neighbour lost console lines");
    }
}

#[test]
fn a_fault_record_with_an_impossible_vector_is_refused() {
    let w = World::new(4, vec![spec("f", 1), spec("real", 2)]);
    let mut sim = w.sim();
    sim.behaviors.insert("f".into(), Behavior::Fault(9999));
    sim.behaviors.insert("real".into(), Behavior::Fault(14));
    let mut sup = w.supervisor(sim, FACTS);
    sup.boot().unwrap();
    run_for(&mut sup, 20);
    assert!(sup.instances[0].reason_text().contains("`fault_vector` holds 9999"));
    assert_eq!(sup.instances[1].state, State::Faulted);
    assert_eq!(sup.instances[1].fault.unwrap().apic_id, 2);
    assert!(events_with(&sup, "FAULTED: page fault (#PF) (vector 14) on APIC 2").len() == 1);
}

#[test]
fn stop_and_start_from_the_shell_scrub_and_reload_and_skip_zeroing_a_clean_region() {
    let w = World::new(4, vec![spec("a", 1), spec("b", 2)]);
    let mut sup = w.supervisor(w.sim(), FACTS);
    sup.boot().unwrap();
    run_for(&mut sup, 30);
    assert_eq!(sup.execute(Command::Stop("a".into())), Ok(Outcome::Stopped(0)));
    assert_eq!(sup.instances[0].state, State::Stopped);
    assert!(sup.m.parked(1, sup.pages.unwrap().park_page));
    assert_eq!(events_with(&sup, "instance 'a': region").len(), 1);
    let again = sup.execute(Command::Stop("a".into())).unwrap_err();
    assert_eq!(again.to_string(), "cannot stop 'a': it is already stopped");
    let running = sup.execute(Command::Start("b".into())).unwrap_err();
    assert!(running.to_string().starts_with("cannot start 'b': it is running"));
    let missing = sup.execute(Command::Stop("zz".into())).unwrap_err();
    assert_eq!(missing.to_string(), "no instance named 'zz' (instances: a, b)");
    let out = sup.execute(Command::Start("a".into())).unwrap();
    assert_eq!(out, Outcome::Started { index: 0, state: State::Running, restarted: false });
    // The region was known zero after the scrub: only the image was written.
    let l = loads(&sup, "a");
    assert!(l[0].contains("KiB zeroed") && !l[0].contains(" 0 KiB zeroed"), "{}", l[0]);
    assert!(l[1].contains(" 0 KiB zeroed"), "{}", l[1]);
    let out = sup.execute(Command::Restart("a".into())).unwrap();
    assert!(matches!(out, Outcome::Started { restarted: true, .. }));
    assert_eq!(sup.instances[0].restarts, 1);
    assert_eq!(sup.pool_free_frames(), {
        let mut fresh = w.supervisor(w.sim(), FACTS);
        fresh.boot().unwrap();
        fresh.pool_free_frames()
    });
}

#[test]
fn a_cpu_that_never_parks_quarantines_its_instance() {
    let w = World::new(4, vec![spec("stuck", 1)]);
    let mut sup = w.supervisor(w.sim(), FACTS);
    sup.boot().unwrap();
    sup.m.cpus.get_mut(&1).unwrap().deaf = true;
    let err = sup.execute(Command::Stop("stuck".into())).unwrap_err();
    assert!(err
        .to_string()
        .contains("APIC 1 did not confirm its INIT on the parking page within 500 ms"));
    let inst = &sup.instances[0];
    assert!(inst.quarantined && inst.state == State::Failed);
    assert!(!inst.zeroed, "the memory of a CPU that may still run it must not be touched");
    let err = sup.execute(Command::Start("stuck".into())).unwrap_err();
    assert!(err.to_string().contains("never confirmed they stopped"), "{err}");
}

#[test]
fn refused_cpus_get_no_ipi_and_no_memory() {
    let w = World::new(4, vec![spec("ghost", 9), spec("bsp", 0), spec("ok", 1), spec("dup", 1)]);
    let mut sup = w.supervisor(w.sim(), FACTS);
    sup.boot().unwrap();
    let reasons: Vec<String> = sup.instances.iter().map(Instance::reason_text).collect();
    assert_eq!(reasons[0], "CPU 9 does not exist: the MADT lists APIC IDs 0, 1, 2, 3");
    assert!(reasons[1].contains("bootstrap processor"), "{}", reasons[1]);
    assert_eq!(reasons[3], "CPU 1 is already given to instance 'ok'");
    assert!(sup.instances[0].region().is_none());
    assert!(sup.m.ipis.iter().all(|&(_, id, _)| id == 1), "{:?}", sup.m.ipis);
    assert_eq!(sup.instances[2].state, State::Started);
}

#[test]
fn a_stray_cpu_on_the_start_page_is_counted_and_halted() {
    let w = World::new(4, vec![spec("a", 1)]);
    let mut sup = w.supervisor(w.sim(), FACTS);
    sup.boot().unwrap();
    // Someone else sends CPU 3 to the start page: nothing is armed for it.
    let vector = (sup.pages.unwrap().start_page >> 12) as u8;
    sup.m.cpus.get_mut(&3).unwrap().mode = Mode::WaitForSipi;
    sup.m.send_startup(3, vector).unwrap();
    sup.m.wait_us(1000);
    sup.execute(Command::Restart("a".into())).unwrap();
    assert_eq!(
        events_with(&sup, "1 CPU(s) ran the start-up code with no start expected (last: APIC 3)")
            .len(),
        1
    );
    assert!(!sup.m.running(3));
}

#[test]
fn a_silent_heartbeat_is_a_hang_that_the_policy_restarts() {
    let mut s = spec("stuck", 1);
    s.heartbeat_timeout_ms = 50;
    s.restart = Restart::OnFailure;
    s.max_restarts = 1;
    let w = World::new(4, vec![s]);
    let mut sim = w.sim();
    sim.behaviors.insert("stuck".into(), Behavior::Hang);
    let mut sup = w.supervisor(sim, FACTS);
    sup.boot().unwrap();
    run_for(&mut sup, 400);
    let inst = &sup.instances[0];
    assert_eq!(inst.state, State::Hung);
    assert_eq!(inst.restarts, 1);
    assert!(inst.reason_text().starts_with("no heartbeat for 50 ms (hung again after 1 restarts"));
    assert_eq!(loads(&sup, "stuck").len(), 2);
    // The first life's CPU was parked before the restart.
    assert!(events_with(&sup, "instance 'stuck': running -> hung").len() == 2);
}
