//! The control shell's commands, carried out on the supervisor. What a command changes is
//! decided here (and host-tested); the manager only prints the [`Outcome`].

use crate::lifecycle::State;
use crate::shell::Command;

use super::error::CommandError;
use super::machine::Machine;
use super::{Supervisor, POLL_INTERVAL_US, REPORT_IN_WAIT_US};

/// What a command did, for the manager to show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Help,
    List,
    /// Show instance `0` in detail.
    Status(usize),
    /// Show instance `0`'s recent console lines.
    Log(usize),
    Stopped(usize),
    /// Started (or restarted) instance `index`; `state` is where it was when the answer was
    /// given (it may have exited or faulted already: the policy deals with that).
    Started {
        index: usize,
        state: State,
        restarted: bool,
    },
    /// A transfer answer (`load`), to print as it is.
    Transfer(crate::transfer::Reply),
    Swapped(super::images::Swapped),
    Images,
    Quit,
}

impl<M: Machine> Supervisor<'_, M> {
    /// Carries out one shell command.
    pub fn execute(&mut self, cmd: Command) -> Result<Outcome, CommandError> {
        match cmd {
            Command::Help => Ok(Outcome::Help),
            Command::List => Ok(Outcome::List),
            Command::Quit => {
                self.quit = true;
                Ok(Outcome::Quit)
            }
            Command::Status(name) => self.index_of(&name).map(Outcome::Status),
            Command::Log(name) => self.index_of(&name).map(Outcome::Log),
            Command::Images => Ok(Outcome::Images),
            Command::Load { name, size, sha256 } => {
                Ok(Outcome::Transfer(self.begin_transfer(&name, size, sha256)))
            }
            Command::Swap { name, previous } => {
                let i = self.index_of(&name)?;
                let s =
                    self.swap(i, previous).map_err(|error| CommandError::Swap { name, error })?;
                Ok(Outcome::Swapped(s))
            }
            Command::Stop(name) => {
                let i = self.index_of(&name)?;
                // Stopped between two restarts of its policy: cancelling the restart is the stop.
                if self.instances[i].state == State::Stopped
                    && self.instances[i].next_restart.take().is_some()
                {
                    return Ok(Outcome::Stopped(i));
                }
                self.stop(i).map_err(|error| CommandError::Stop { name, error })?;
                Ok(Outcome::Stopped(i))
            }
            Command::Start(name) => {
                let i = self.index_of(&name)?;
                self.start_one(i).map_err(|error| CommandError::Start { name, error })?;
                Ok(Outcome::Started { index: i, state: self.instances[i].state, restarted: false })
            }
            Command::Restart(name) => {
                let i = self.index_of(&name)?;
                if self.instances[i].state != State::Stopped {
                    self.stop(i)
                        .map_err(|error| CommandError::Stop { name: name.clone(), error })?;
                }
                self.start_one(i).map_err(|error| CommandError::Start { name, error })?;
                self.instances[i].restarts = self.instances[i].restarts.saturating_add(1);
                Ok(Outcome::Started { index: i, state: self.instances[i].state, restarted: true })
            }
        }
    }

    /// Starts one stopped instance and waits (bounded) for it to report in, so the answer can
    /// say whether it runs. Everything is observed meanwhile.
    pub(super) fn start_one(&mut self, i: usize) -> Result<(), super::StartError> {
        let t0 = self.m.now_us();
        let result = self.start(&[i]).into_iter().find(|(j, _)| *j == i).map(|(_, r)| r);
        result.unwrap_or(Ok(()))?;
        let deadline = self.m.now_us().saturating_add(REPORT_IN_WAIT_US);
        while self.instances[i].state == State::Started
            && self.instances[i].spec.speaks_protocol()
            && self.m.now_us() < deadline
        {
            self.m.wait_us(POLL_INTERVAL_US);
            for j in 0..self.instances.len() {
                self.observe(j);
            }
        }
        let took = self.m.now_us().saturating_sub(t0);
        self.instances[i].start_us.push(took, super::instance::MAX_DURATIONS);
        Ok(())
    }
}
