//! Starting instances: load each, send every CPU of the batch INIT-SIPI-SIPI to the shared start
//! page at once, and wait, halting, for each to check in.
//!
//! A CPU checks in when its slot records [`trampoline::STAGE_JUMPING`]; its instance is
//! `started` when all its CPUs have. A CPU that misses the deadline (`boot_timeout_ms`) is
//! stopped and parked, and its instance's memory scrubbed, before the instance is called
//! failed; if it did check in after all (just past the deadline), the reason says it was late
//! and by how much. While waiting, the other instances are still observed (consoles drained),
//! so a slow start costs nobody their output.

use alloc::vec::Vec;
use core::mem::offset_of;

use crate::apstart;
use crate::bundle::Protocol;
use crate::lifecycle::{self, State};

use super::error::{CheckinTimeout, Failure, StartError};
use super::events::Event;
use super::load::entry_address;
use super::machine::Machine;
use super::{console, Supervisor};

/// How often the check-ins are looked at.
const CHECKIN_POLL_US: u64 = 250;

/// What the wait learned about one CPU.
#[derive(Clone, Copy)]
struct Cpu {
    inst: usize,
    /// Index among its instance's CPUs.
    k: usize,
    apic_id: u32,
    checked_in: bool,
}

impl<M: Machine> Supervisor<'_, M> {
    /// Loads and starts instances `idx` together. Failures are recorded on the instances (and
    /// reported); the result says, per instance, whether its CPUs checked in.
    pub(super) fn start(&mut self, idx: &[usize]) -> Vec<(usize, Result<(), StartError>)> {
        self.start_timed(idx, &mut super::Timeline::default())
    }

    /// [`Self::start`], recording when each phase happened.
    pub(super) fn start_timed(
        &mut self,
        idx: &[usize],
        timeline: &mut super::Timeline,
    ) -> Vec<(usize, Result<(), StartError>)> {
        let mut results = Vec::new();
        let mut batch = Vec::new();
        timeline.load_start_us = self.m.now_us();
        for &i in idx {
            let inst = &self.instances[i];
            let allowed = match inst.state {
                _ if inst.quarantined => Err(StartError::Quarantined),
                State::Loaded => Ok(()),
                s => lifecycle::can_start(s, inst.resources.is_some())
                    .map_err(StartError::Transition),
            };
            if let Err(e) = allowed {
                results.push((i, Err(e)));
                continue;
            }
            self.reset_for_start(i);
            match self.load(i) {
                Ok(bytes) => {
                    timeline.load_bytes += bytes;
                    batch.push(i);
                }
                Err(e) => {
                    self.fail(i, Failure::Start(e.clone()));
                    results.push((i, Err(e)));
                }
            }
        }
        timeline.load_end_us = self.m.now_us();
        let Some(pages) = self.pages else { return results };
        // Each instance's UARTs are quiet before it gets them.
        for &i in &batch {
            for d in self.instances[i].spec.devices.clone() {
                self.m.quiesce_uart(d.io_base());
            }
        }
        // Linux starts its other CPUs itself: the manager parks them (INIT, then the parking
        // page, where Linux's INIT-SIPI-SIPI finds them) and starts only the boot CPU.
        let is_linux = |s: &Self, i: usize| s.instances[i].spec.protocol == Protocol::Linux;
        let secondary: Vec<u32> = batch
            .iter()
            .filter(|&&i| is_linux(self, i))
            .flat_map(|&i| self.instances[i].cpus().iter().skip(1).copied().collect::<Vec<_>>())
            .collect();
        if let Err(e) = self.park(&secondary) {
            let linux: Vec<usize> = batch.iter().copied().filter(|&i| is_linux(self, i)).collect();
            batch.retain(|&i| !is_linux(self, i));
            for i in linux {
                let err = StartError::Secondary(e.clone());
                self.abort_start(i, err.clone(), None);
                results.push((i, Err(err)));
            }
        }
        let mut cpus: Vec<Cpu> = Vec::new();
        for &i in &batch {
            let only_boot_cpu = is_linux(self, i);
            for (k, &apic_id) in self.instances[i].cpus().iter().enumerate() {
                if k > 0 && only_boot_cpu {
                    break;
                }
                cpus.push(Cpu { inst: i, k, apic_id, checked_in: false });
            }
        }
        if cpus.is_empty() {
            return results;
        }
        self.m.event(&Event::Starting {
            cpus: cpus.len(),
            instances: batch.len(),
            init_delay: self.facts.init_delay,
        });
        let ids: Vec<u32> = cpus.iter().map(|c| c.apic_id).collect();
        let t0 = self.m.now_us();
        (timeline.instances, timeline.cpus, timeline.ipi_start_us) = (batch.len(), ids.len(), t0);
        let mut sent =
            apstart::start_all(&mut self.m, &ids, pages.start_page, self.facts.init_delay);
        if let Ok(per_cpu) = &mut sent {
            // The SDM's second SIPI, only for CPUs that have not found their entry yet.
            let late: Vec<(usize, u32)> = cpus
                .iter()
                .enumerate()
                .filter(|(n, c)| per_cpu[*n].1.is_ok() && !self.found_entry(&pages, c))
                .map(|(n, c)| (n, c.apic_id))
                .collect();
            timeline.second_sipis = late.len();
            if !late.is_empty() {
                let late_ids: Vec<u32> = late.iter().map(|l| l.1).collect();
                match apstart::second_sipi(&mut self.m, &late_ids, pages.start_page) {
                    Ok(again) => {
                        for ((n, _), (_, r)) in late.iter().zip(again) {
                            per_cpu[*n].1 = r;
                        }
                    }
                    Err(e) => sent = Err(e),
                }
            }
        }
        timeline.ipi_end_us = self.m.now_us();
        let mut failed: Vec<(usize, StartError)> = Vec::new();
        match sent {
            Ok(per_cpu) => {
                for (c, (apic_id, r)) in cpus.iter().zip(per_cpu) {
                    if let Err(error) = r {
                        if !failed.iter().any(|(i, _)| *i == c.inst) {
                            failed.push((c.inst, StartError::Ipi { apic_id, error }));
                        }
                    }
                }
            }
            Err(error) => {
                for &i in &batch {
                    let apic_id = self.instances[i].cpus().first().copied().unwrap_or(0);
                    failed.push((i, StartError::Ipi { apic_id, error }));
                }
            }
        }
        let waiting: Vec<usize> =
            batch.iter().copied().filter(|i| !failed.iter().any(|(f, _)| f == i)).collect();
        cpus.retain(|c| waiting.contains(&c.inst));
        for (i, e) in failed {
            self.abort_start(i, e.clone(), None);
            results.push((i, Err(e)));
        }
        results.extend(self.wait_for_checkins(&waiting, &mut cpus, t0, timeline));
        self.report_strays();
        results
    }

    /// CPU `c` has reached its CPU table entry (stage FOUND or later): it took a SIPI.
    fn found_entry(&self, pages: &super::StartPages, c: &Cpu) -> bool {
        let index = self.instances[c.inst].resources.as_ref().map_or(0, |r| r.table_index);
        let mut entry = [0u8; 32];
        let read = self.m.read(entry_address(pages, index + c.k), &mut entry);
        read.is_ok() && trampoline::entry_stage(&entry).0 >= trampoline::STAGE_FOUND
    }

    /// Clears what a previous life left in the instance's bookkeeping.
    fn reset_for_start(&mut self, i: usize) {
        let inst = &mut self.instances[i];
        console::reset(inst);
        inst.policy_done = false;
        inst.fault = None;
        inst.exit_code = 0;
        inst.heartbeat = 0;
        inst.result = 0;
        inst.reason = None;
        inst.checkin_us = None;
        inst.next_restart = None;
    }

    fn wait_for_checkins(
        &mut self,
        batch: &[usize],
        cpus: &mut [Cpu],
        t0: u64,
        timeline: &mut super::Timeline,
    ) -> Vec<(usize, Result<(), StartError>)> {
        let Some(pages) = self.pages else { return Vec::new() };
        let deadline = t0.saturating_add(self.facts.checkin_timeout_ms.max(1) * 1000);
        let mut results = Vec::new();
        // Per instance: CPUs still to check in (linear bookkeeping: hundreds of CPUs start
        // together), whether it is still waited for, and its latest check-in time.
        let n = self.instances.len();
        let mut left = alloc::vec![0usize; n];
        let mut pending = alloc::vec![false; n];
        let mut last = alloc::vec![t0; n];
        for c in cpus.iter() {
            left[c.inst] += 1;
        }
        for &i in batch {
            pending[i] = true;
        }
        let mut waiting = batch.len();
        loop {
            // Looked at before the pass, so the last pass (after the deadline) still accepts a
            // check-in stamped in time that arrived while the previous pass was busy.
            let expired = self.m.now_us() >= deadline;
            for c in cpus.iter_mut() {
                if c.checked_in || !pending[c.inst] {
                    continue;
                }
                let Some(layout) = self.instances[c.inst].loaded.as_ref().map(|l| l.layout) else {
                    continue;
                };
                let checkin = self.read_checkin(layout.slot(c.k as u64));
                // A check-in stamped after the deadline is late, whenever it is seen.
                let at = self.m.tsc_to_us(checkin.tsc);
                if checkin.stage != trampoline::STAGE_JUMPING || at > deadline {
                    continue;
                }
                c.checked_in = true;
                last[c.inst] = last[c.inst].max(at);
                timeline.last_checkin_us = timeline.last_checkin_us.max(at);
                // Disarm the entry: a replayed SIPI must not run this instance again.
                let index = self.instances[c.inst].resources.as_ref().map_or(0, |r| r.table_index);
                let armed =
                    entry_address(&pages, index + c.k) + trampoline::ENTRY_ARMED_OFFSET as u64;
                let _ = self.m.write_u32(armed, 0);
                if checkin.apic_id != c.apic_id {
                    pending[c.inst] = false;
                    waiting -= 1;
                    let e = StartError::WrongCpu { expected: c.apic_id, found: checkin.apic_id };
                    results.push((c.inst, Err(e)));
                    continue;
                }
                left[c.inst] -= 1;
                if left[c.inst] == 0 {
                    // All its CPUs checked in: it is started.
                    let i = c.inst;
                    pending[i] = false;
                    waiting -= 1;
                    let after = last[i].saturating_sub(t0);
                    let now = self.m.now_us();
                    let inst = &mut self.instances[i];
                    inst.checkin_us = Some(after);
                    inst.watchdog.reset(now, 0);
                    let apic = inst.cpus().first().copied().unwrap_or(0);
                    let why = alloc::format!("APIC {apic} checked in after {after} us");
                    self.set_state(i, State::Started, &why);
                    results.push((i, Ok(())));
                }
            }
            if waiting == 0 || expired {
                break;
            }
            // Keep everyone else's consoles moving while we wait.
            for (j, waited_for) in pending.iter().enumerate() {
                if !waited_for {
                    self.observe(j);
                }
            }
            self.m.wait_us(CHECKIN_POLL_US);
        }
        timeline.checkins_done_us = self.m.now_us();
        // Wrong CPUs (already in the results), then the ones still pending: stop and park
        // before calling them failed.
        let wrong: Vec<(usize, StartError)> =
            results.iter().filter_map(|(i, r)| r.as_ref().err().map(|e| (*i, e.clone()))).collect();
        for (i, e) in wrong {
            self.abort_start(i, e, None);
        }
        for i in (0..n).filter(|&i| pending[i]) {
            let late = cpus.iter().find(|c| c.inst == i && !c.checked_in).copied();
            // Park first, so the record read afterwards is final.
            let cpus = self.instances[i].cpus().to_vec();
            let parked = self.park(&cpus);
            let timeout = self.timeout_for(i, late, t0, deadline);
            self.abort_start(i, StartError::Checkin(timeout), Some(parked));
            results.push((i, Err(StartError::Checkin(timeout))));
        }
        results
    }

    /// What a CPU that missed the deadline had reached (read after it was parked).
    fn timeout_for(&self, i: usize, cpu: Option<Cpu>, t0: u64, deadline: u64) -> CheckinTimeout {
        let deadline_ms = deadline.saturating_sub(t0) / 1000;
        let Some(c) = cpu else {
            return CheckinTimeout { apic_id: 0, stage: 0, deadline_ms, late_us: None };
        };
        let layout = self.instances[i].loaded.as_ref().map(|l| l.layout);
        let (mut stage, mut late_us) = (0, None);
        if let (Some(layout), Some(pages)) = (layout, self.pages) {
            let checkin = self.read_checkin(layout.slot(c.k as u64));
            let index = self.instances[i].resources.as_ref().map_or(0, |r| r.table_index) + c.k;
            let mut entry = [0u8; 32];
            let _ = self.m.read(entry_address(&pages, index), &mut entry);
            stage = trampoline::entry_stage(&entry).0;
            if checkin.stage > stage && checkin.stage <= trampoline::STAGE_JUMPING {
                stage = checkin.stage;
            }
            if checkin.stage == trampoline::STAGE_JUMPING {
                late_us = Some(self.m.tsc_to_us(checkin.tsc).saturating_sub(t0));
            }
        }
        CheckinTimeout { apic_id: c.apic_id, stage, deadline_ms, late_us }
    }

    /// A start that cannot go on: its CPUs are stopped and parked (unless `parked` says that
    /// was done) and its memory scrubbed, then it is failed with `why`. A CPU that does not
    /// park quarantines the instance: its memory is not scrubbed or reused.
    fn abort_start(
        &mut self,
        i: usize,
        why: StartError,
        parked: Option<Result<(), super::StopError>>,
    ) {
        let parked = match parked {
            Some(p) => p,
            None => {
                let cpus = self.instances[i].cpus().to_vec();
                self.park(&cpus)
            }
        };
        if let Err(e) = parked.and_then(|()| self.release(i).map(|_| ())) {
            self.instances[i].quarantined = true;
            self.m.event(&Event::Failed { name: &self.instances[i].name, why: &Failure::Stop(e) });
        }
        self.fail(i, Failure::Start(why));
    }

    fn read_checkin(&self, slot: u64) -> trampoline::Checkin {
        let mut b = [0u8; trampoline::SLOT_CHECKIN_LEN];
        let _ = self.m.read(slot + trampoline::SLOT_CHECKIN_OFFSET as u64, &mut b);
        trampoline::Checkin::read(&b)
    }

    /// Reports CPUs that ran the start-up code with nothing expecting them.
    fn report_strays(&mut self) {
        let Some(pages) = self.pages else { return };
        let mut b = [0u8; 12];
        let at = pages.start_page
            + (trampoline::HEADER_OFFSET + offset_of!(trampoline::StartHeader, entered)) as u64;
        if self.m.read(at, &mut b).is_err() {
            return;
        }
        let mut page = [0u8; trampoline::PAGE_SIZE];
        page[trampoline::HEADER_OFFSET + offset_of!(trampoline::StartHeader, entered)..][..12]
            .copy_from_slice(&b);
        let counters = trampoline::StartCounters::read(&page);
        if counters.strays > self.strays_seen {
            self.strays_seen = counters.strays;
            self.m.event(&Event::Strays {
                count: counters.strays,
                last_apic_id: counters.stray_apic_id,
            });
        }
    }
}
