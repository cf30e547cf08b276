//! Supervising running instances: consoles, status blocks, heartbeats, and the restart policy.
//!
//! [`Supervisor::observe`] applies no policy, so it is safe to call while other instances are
//! being started. Every value it reads was written by the instance and is checked: a status
//! word outside the defined states, a fault vector that is not an exception vector, a console
//! ring with impossible indices or a `dropped` counter that goes backwards fail the instance
//! (its CPUs are stopped first) with a reason naming the field and the value.

use core::mem::offset_of;

use bootproto::StatusBlock;

use crate::lifecycle::{self, Decision, State};

use super::console::{self, DrainError};
use super::error::{Failure, Violation};
use super::events::Event;
use super::instance::Fault;
use super::machine::Machine;
use super::Supervisor;

impl<M: Machine> Supervisor<'_, M> {
    /// Drains the instance's console ring. An impossible ring fails the instance.
    pub(super) fn drain(&mut self, i: usize) {
        let Some(ring) = self.instances[i].loaded.as_ref().map(|l| l.layout.console) else {
            return;
        };
        let (m, inst) = (&mut self.m, &mut self.instances[i]);
        match console::drain(m, inst, ring) {
            Ok(()) => {}
            Err(DrainError::Violation(v)) => self.fail_untrusted(i, v),
            // The window refused the instance's own pages: a manager bug, reported as such.
            Err(DrainError::Memory(e)) => {
                let why = Failure::Stop(super::StopError::Memory(e));
                self.m.event(&Event::Failed { name: &self.instances[i].name, why: &why });
            }
        }
    }

    /// Drains the console and follows the status block and heartbeat of instance `i`.
    pub(super) fn observe(&mut self, i: usize) {
        if !self.instances[i].state.is_live() {
            // Exited, faulted, failed or stopped instances may still have console bytes.
            if self.instances[i].loaded.is_some() {
                self.drain(i);
            }
            return;
        }
        let Some(status) = self.instances[i].loaded.as_ref().map(|l| l.layout.status) else {
            return;
        };
        self.drain(i);
        if !self.instances[i].state.is_live() {
            return; // the drain found the ring impossible
        }
        let now = self.m.now_us();
        let word = self.read_status_u32(status + offset_of!(StatusBlock, state) as u64);
        if word > bootproto::state::MAX {
            self.fail_untrusted(i, Violation::StateWord { value: word });
            return;
        }
        let heartbeat = self.read_status_u64(status + offset_of!(StatusBlock, heartbeat) as u64);
        let result = self.read_status_u64(status + offset_of!(StatusBlock, result) as u64);
        {
            let inst = &mut self.instances[i];
            inst.heartbeat = heartbeat;
            inst.result = result;
        }
        let current = self.instances[i].state;
        match lifecycle::from_status(current, word) {
            Some(State::Exited) => {
                let code = self.read_status_u32(status + offset_of!(StatusBlock, exit_code) as u64);
                self.instances[i].exit_code = code;
                let why = Failure::Exited { code };
                self.set_state(i, State::Exited, &why);
                self.instances[i].reason = Some(why);
            }
            Some(State::Faulted) => {
                let f = self.read_fault(status);
                if f.vector > 31 {
                    self.fail_untrusted(i, Violation::FaultVector { value: f.vector });
                    return;
                }
                self.m.event(&Event::Fault { name: &self.instances[i].name, fault: &f });
                self.instances[i].fault = Some(f);
                let why = Failure::Faulted { vector: f.vector };
                self.set_state(i, State::Faulted, &why);
                self.instances[i].reason = Some(why);
            }
            Some(next) => self.set_state(i, next, &"the payload reported in"),
            None => {}
        }
        let inst = &mut self.instances[i];
        let timeout = inst.spec.heartbeat_timeout_ms;
        if inst.state == State::Running && inst.watchdog.hung(now, heartbeat, timeout) {
            let why = Failure::Hung { timeout_ms: timeout };
            self.set_state(i, State::Hung, &why);
            self.instances[i].reason = Some(why);
        }
    }

    fn read_status_u32(&self, at: u64) -> u32 {
        self.m.read_u32(at).unwrap_or(0)
    }

    fn read_status_u64(&self, at: u64) -> u64 {
        self.m.read_u64(at).unwrap_or(0)
    }

    fn read_fault(&self, status: u64) -> Fault {
        let u64_at = |off: usize| self.read_status_u64(status + off as u64);
        Fault {
            vector: u64_at(offset_of!(StatusBlock, fault_vector)),
            error_code: u64_at(offset_of!(StatusBlock, fault_error_code)),
            rip: u64_at(offset_of!(StatusBlock, fault_rip)),
            cr2: u64_at(offset_of!(StatusBlock, fault_cr2)),
            rsp: u64_at(offset_of!(StatusBlock, fault_rsp)),
            apic_id: self.read_status_u32(status + offset_of!(StatusBlock, fault_apic_id) as u64),
        }
    }

    /// The instance wrote something impossible: stop its CPUs, scrub, and fail it.
    fn fail_untrusted(&mut self, i: usize, v: Violation) {
        if let Err(e) = self.halt(i) {
            self.instances[i].quarantined = true;
            self.m.event(&Event::Failed { name: &self.instances[i].name, why: &Failure::Stop(e) });
        }
        self.fail(i, Failure::Untrusted(v));
    }

    /// Applies each instance's restart policy once per failure (fault, hang, non-zero exit,
    /// an impossible value, a missed check-in) and starts the instances whose back-off is over.
    pub(super) fn apply_policies(&mut self) {
        for i in 0..self.instances.len() {
            let inst = &self.instances[i];
            if inst.policy_done || inst.resources.is_none() || inst.quarantined {
                continue;
            }
            let transient = match &inst.reason {
                Some(Failure::Start(e)) => !e.permanent(),
                Some(Failure::Untrusted(_)) => true,
                _ => false,
            };
            if !matches!(inst.state, State::Faulted | State::Hung | State::Exited | State::Failed) {
                continue;
            }
            self.instances[i].policy_done = true;
            let inst = &self.instances[i];
            let failed = lifecycle::is_failure(inst.state, inst.exit_code, transient);
            match lifecycle::decide(inst.policy(), failed, inst.restarts) {
                Decision::Leave => {}
                Decision::GiveUp => {
                    let (state, max) = (inst.state, inst.spec.max_restarts);
                    self.m.event(&Event::GaveUp { name: &self.instances[i].name, state, max });
                    if let Some(last) = self.instances[i].reason.take() {
                        self.instances[i].reason = Some(Failure::GaveUp {
                            after: state,
                            last: alloc::boxed::Box::new(last),
                            max_restarts: max,
                        });
                    }
                }
                Decision::Restart { delay_ms } => {
                    let after = inst.state;
                    self.instances[i].restarts = self.instances[i].restarts.saturating_add(1);
                    let (restart, max) =
                        (self.instances[i].restarts, self.instances[i].spec.max_restarts);
                    self.m.event(&Event::RestartScheduled {
                        name: &self.instances[i].name,
                        after,
                        restart,
                        max,
                        delay_ms,
                    });
                    // Free its CPUs now (a hung one may still be spinning); start it later.
                    let reason = self.instances[i].reason.clone();
                    if after != State::Failed {
                        let _ = self.stop(i);
                    }
                    if self.instances[i].state == State::Stopped || after == State::Failed {
                        let at = self.m.now_us().saturating_add(delay_ms.saturating_mul(1000));
                        self.instances[i].next_restart = Some((at, delay_ms));
                        // Keep saying why it is being restarted until it is.
                        self.instances[i].reason = reason;
                    }
                }
            }
        }
        let now = self.m.now_us();
        let due: alloc::vec::Vec<usize> = (0..self.instances.len())
            .filter(|&i| self.instances[i].next_restart.is_some_and(|(at, _)| now >= at))
            .collect();
        for i in due {
            self.instances[i].next_restart = None;
            if self.instances[i].state == State::Failed {
                // A failed start left it stopped in all but name.
                self.set_state(i, State::Stopped, &"restarting");
            }
            let _ = self.start(&[i]);
        }
    }
}
