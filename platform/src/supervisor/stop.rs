//! Stopping instances: INIT every CPU and prove, on the parking page, that each took it; only
//! then drain the console, scrub the region (and its low-memory slice) and read it back, and
//! give its page tables back.
//!
//! An INIT is delivered asynchronously: until the target processes it, the CPU may still be
//! running the instance's code. The parking page's code can only run after the INIT (a SIPI
//! is accepted only in wait-for-SIPI), so a CPU's APIC ID in the park log proves it left the
//! instance. A CPU that never shows up leaves the instance *quarantined*: its memory is not
//! scrubbed or reused and it is not started again.

use alloc::vec::Vec;
use core::mem::offset_of;

use crate::apstart;
use crate::frames::FrameAllocator;
use crate::lifecycle::{self, State};
use crate::memmap::{Range, PAGE_SIZE};

use super::error::{Failure, StopError};
use super::events::Event;
use super::instance::MAX_DURATIONS;
use super::load::entry_address;
use super::machine::Machine;
use super::{console, Supervisor, PARK_TIMEOUT_US};

/// How often the park log is looked at.
const PARK_POLL_US: u64 = 100;

impl<M: Machine> Supervisor<'_, M> {
    /// Stops instance `i` (the shell's `stop`, and the first half of a restart). A restart the
    /// policy had scheduled is cancelled (the policy schedules its own after stopping).
    pub fn stop(&mut self, i: usize) -> Result<(), StopError> {
        let t0 = self.m.now_us();
        self.instances[i].next_restart = None;
        let inst = &self.instances[i];
        lifecycle::can_stop(inst.state, inst.resources.is_some() && !inst.quarantined)
            .map_err(StopError::Transition)?;
        let verified = match self.halt(i) {
            Ok(v) => v,
            Err(e) => {
                if matches!(e, StopError::ParkTimeout { .. } | StopError::Ipi { .. }) {
                    self.instances[i].quarantined = true;
                }
                self.fail(i, Failure::Stop(e.clone()));
                return Err(e);
            }
        };
        let region = self.instances[i].region().unwrap_or(Range::new(0, 0));
        self.m.event(&Event::Scrubbed { name: &self.instances[i].name, region, verified });
        let apics = alloc::format!("INIT sent to APIC {}", ApicList(self.instances[i].cpus()));
        self.set_state(i, State::Stopped, &apics);
        let took = self.m.now_us().saturating_sub(t0);
        self.instances[i].stop_us.push(took, MAX_DURATIONS);
        Ok(())
    }

    /// Parks the instance's CPUs and releases its memory. Returns the bytes verified zero.
    pub(super) fn halt(&mut self, i: usize) -> Result<u64, StopError> {
        let cpus = self.instances[i].cpus().to_vec();
        self.park(&cpus)?;
        self.release(i)
    }

    /// INIT + SIPI to the parking page for every CPU in `apic_ids`, then waits (bounded) until
    /// each has recorded itself there.
    pub(super) fn park(&mut self, apic_ids: &[u32]) -> Result<(), StopError> {
        let Some(pages) = self.pages else { return Ok(()) };
        if apic_ids.is_empty() {
            return Ok(());
        }
        let log_at = pages.park_page + trampoline::HEADER_OFFSET as u64;
        let mut log = [0u8; trampoline::PAGE_SIZE - trampoline::HEADER_OFFSET];
        trampoline::clear_park_log(&mut log);
        self.m.write(log_at, &log).map_err(StopError::Memory)?;
        let sent = apstart::park_all(&mut self.m, apic_ids, pages.park_page, self.facts.init_delay);
        let per_cpu = sent.map_err(|error| StopError::Ipi { apic_id: apic_ids[0], error })?;
        if let Some((apic_id, Err(error))) = per_cpu.iter().find(|(_, r)| r.is_err()).copied() {
            return Err(StopError::Ipi { apic_id, error });
        }
        let t0 = self.m.now_us();
        let mut resent = false;
        loop {
            self.m.read(log_at, &mut log).map_err(StopError::Memory)?;
            let missing: Vec<u32> = apic_ids
                .iter()
                .copied()
                .filter(|&id| !trampoline::park_log_has(&log, id))
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            let waited = self.m.now_us().saturating_sub(t0);
            if waited >= PARK_TIMEOUT_US {
                return Err(StopError::ParkTimeout {
                    apic_ids: missing,
                    waited_ms: PARK_TIMEOUT_US / 1000,
                });
            }
            // The SDM's second SIPI, for CPUs that did not take the first.
            if !resent && waited >= apstart::SIPI_DELAY_US {
                resent = true;
                let _ = apstart::second_sipi(&mut self.m, &missing, pages.park_page);
            }
            self.m.wait_us(PARK_POLL_US);
        }
    }

    /// Once the instance's CPUs are parked: drain its console, disarm its CPU table entries,
    /// scrub its region (and low slice) and read it back, give its page tables back.
    pub(super) fn release(&mut self, i: usize) -> Result<u64, StopError> {
        // What is left in the console, as far as it can be read: a broken ring is what may
        // have brought us here, so its errors are not acted on again.
        if let Some(ring) = self.instances[i].loaded.as_ref().map(|l| l.layout.console) {
            let (m, inst) = (&mut self.m, &mut self.instances[i]);
            let _ = console::drain(m, inst, ring);
            console::flush(m, inst);
        }
        for d in self.instances[i].spec.devices.clone() {
            self.m.quiesce_uart(d.io_base());
        }
        let Some(res) = self.instances[i].resources.clone() else { return Ok(0) };
        if let Some(pages) = self.pages {
            for k in 0..res.cpus.len() {
                let at = entry_address(&pages, res.table_index + k)
                    + offset_of!(trampoline::CpuEntry, armed) as u64;
                self.m.write_u32(at, 0).map_err(StopError::Memory)?;
            }
        }
        if let Some(loaded) = self.instances[i].loaded.take() {
            if let Some(pool) = self.pool.as_mut() {
                give_back(pool, &loaded.tables);
            }
        }
        let mut verified = 0;
        for r in [Some(res.region), res.low].into_iter().flatten() {
            self.m.fill(r.start, r.len(), 0).map_err(StopError::Memory)?;
            if let Some(addr) = self.m.first_nonzero(r.start, r.len()).map_err(StopError::Memory)? {
                return Err(StopError::Scrub { addr });
            }
            verified += r.len();
        }
        self.instances[i].zeroed = true;
        self.release_channels(i).map_err(|e| StopError::Scrub { addr: e.paddr })?;
        Ok(verified)
    }
}

fn give_back(pool: &mut FrameAllocator, frames: &[u64]) {
    for &f in frames {
        let _ = pool.free(Range::new(f, f + PAGE_SIZE));
    }
}

/// `1, 2, 3` for messages.
struct ApicList<'a>(&'a [u32]);

impl core::fmt::Display for ApicList<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (i, id) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{id}")?;
        }
        Ok(())
    }
}
