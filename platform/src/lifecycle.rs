//! Instance lifecycle: states, the transitions the manager allows, the heartbeat watchdog and
//! the restart policy. Pure, so every rule is tested on the host; the manager only performs
//! the side effects (IPIs, scrubbing, reloading) a transition calls for.
//!
//! ```text
//! loaded ─start→ started ─payload reports in→ running ─→ exited | faulted | hung
//!    │              │                             │              │
//!    └──────────────┴──── failed (refused, or did not check in) ┘
//! any started/running/exited/faulted/hung/failed-after-start ─stop→ stopped ─start→ started
//! ```

use core::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Planned and loaded, not started yet.
    Loaded,
    /// The AP checked in at the trampoline and jumped to the entry point.
    Started,
    /// The payload reported in through its status block.
    Running,
    /// The payload ended on purpose with an exit code.
    Exited,
    /// The CPU took an exception; the fault record is valid.
    Faulted,
    /// Running, but its heartbeat stopped for longer than its timeout.
    Hung,
    /// Refused before start, or its AP did not check in.
    Failed,
    /// Stopped by the manager: its CPU is in wait-for-SIPI and its memory scrubbed.
    Stopped,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Loaded => "loaded",
            State::Started => "started",
            State::Running => "running",
            State::Exited => "exited",
            State::Faulted => "faulted",
            State::Hung => "hung",
            State::Failed => "failed",
            State::Stopped => "stopped",
        }
    }

    /// Its CPU may be executing the instance's code.
    pub fn is_live(self) -> bool {
        matches!(self, State::Started | State::Running | State::Hung)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransitionError {
    /// `stop` on something that never got a CPU (refused at boot), or is stopped already.
    NotStoppable(State),
    /// `start` on something that is not stopped.
    NotStartable(State),
    /// The instance was refused at boot (no CPU or memory); it can never start.
    Refused,
}

impl fmt::Display for TransitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransitionError::NotStoppable(State::Stopped) => f.write_str("it is already stopped"),
            TransitionError::NotStoppable(s) => write!(f, "it is {s}, which has nothing to stop"),
            TransitionError::NotStartable(s) => {
                write!(f, "it is {s}; only a stopped instance can be started (use restart)")
            }
            TransitionError::Refused => {
                f.write_str("it was refused at boot (no CPU or memory), so it has nothing to start")
            }
        }
    }
}

/// May an instance in `state` be stopped? `has_cpu` is false for instances refused at boot.
pub fn can_stop(state: State, has_cpu: bool) -> Result<(), TransitionError> {
    if !has_cpu {
        return Err(TransitionError::Refused);
    }
    match state {
        State::Stopped | State::Loaded => Err(TransitionError::NotStoppable(state)),
        _ => Ok(()),
    }
}

pub fn can_start(state: State, has_cpu: bool) -> Result<(), TransitionError> {
    if !has_cpu {
        return Err(TransitionError::Refused);
    }
    match state {
        State::Stopped => Ok(()),
        s => Err(TransitionError::NotStartable(s)),
    }
}

/// The state a status-block word moves a live instance to, if any (a payload cannot move an
/// instance that the manager considers stopped, failed, or already finished).
pub fn from_status(current: State, status_word: u32) -> Option<State> {
    let next = match status_word {
        bootproto::state::RUNNING => State::Running,
        bootproto::state::EXITED => State::Exited,
        bootproto::state::FAULTED => State::Faulted,
        _ => return None,
    };
    let allowed = match current {
        State::Started => true,
        State::Running => next != State::Running,
        // A hung instance that faults or exits is reported as such.
        State::Hung => next != State::Running,
        _ => false,
    };
    allowed.then_some(next)
}

/// Heartbeat watchdog for one instance.
#[derive(Clone, Copy, Debug, Default)]
pub struct Watchdog {
    last_value: u64,
    last_change_us: u64,
}

impl Watchdog {
    /// When the heartbeat last moved (or the watchdog was reset), µs since the manager started.
    pub fn last_change_us(&self) -> u64 {
        self.last_change_us
    }

    pub fn reset(&mut self, now_us: u64, value: u64) {
        self.last_value = value;
        self.last_change_us = now_us;
    }

    /// Records a heartbeat reading; true when it has not moved for longer than `timeout_ms`
    /// (0 disables the watchdog).
    pub fn hung(&mut self, now_us: u64, value: u64, timeout_ms: u32) -> bool {
        if value != self.last_value {
            self.reset(now_us, value);
            return false;
        }
        timeout_ms != 0 && now_us.saturating_sub(self.last_change_us) > timeout_ms as u64 * 1000
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Never,
    OnFailure { max_restarts: u32 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Leave,
    /// Stop it now and start it again after `delay_ms` (the back-off).
    Restart {
        delay_ms: u64,
    },
    /// The policy would restart, but the limit is reached.
    GiveUp,
}

/// The first restart is immediate; each further one waits twice as long as the previous,
/// from this, so a kernel that fails at once costs the machine little.
pub const BACKOFF_START_MS: u64 = 25;
/// The longest back-off between two restarts.
pub const BACKOFF_MAX_MS: u64 = 1000;

/// The wait before restart number `restarts + 1` (`restarts` already made).
pub fn backoff_ms(restarts: u32) -> u64 {
    match restarts {
        0 => 0,
        n => BACKOFF_START_MS.saturating_mul(1u64 << (n - 1).min(16)).min(BACKOFF_MAX_MS),
    }
}

/// Is `state` (with this exit code) a failure the restart policy acts on? `Failed` counts when
/// the failure is transient (a CPU that missed its check-in, an instance that wrote garbage
/// into shared memory); a refusal that would repeat (an image the loader refuses) does not.
pub fn is_failure(state: State, exit_code: u32, transient: bool) -> bool {
    match state {
        State::Faulted | State::Hung => true,
        State::Exited => exit_code != 0,
        State::Failed => transient,
        _ => false,
    }
}

/// What the restart policy says about an instance that just failed (`failed`, see
/// [`is_failure`]) after `restarts` restarts.
pub fn decide(policy: Policy, failed: bool, restarts: u32) -> Decision {
    match (policy, failed) {
        (Policy::OnFailure { max_restarts }, true) if restarts < max_restarts => {
            Decision::Restart { delay_ms: backoff_ms(restarts) }
        }
        (Policy::OnFailure { .. }, true) => Decision::GiveUp,
        _ => Decision::Leave,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_and_start_follow_the_state_machine() {
        assert_eq!(can_stop(State::Running, true), Ok(()));
        assert_eq!(can_stop(State::Faulted, true), Ok(()));
        assert_eq!(
            can_stop(State::Stopped, true),
            Err(TransitionError::NotStoppable(State::Stopped))
        );
        assert_eq!(can_stop(State::Failed, false), Err(TransitionError::Refused));
        assert_eq!(can_start(State::Stopped, true), Ok(()));
        assert_eq!(
            can_start(State::Running, true),
            Err(TransitionError::NotStartable(State::Running))
        );
        assert_eq!(can_start(State::Stopped, false), Err(TransitionError::Refused));
        assert_eq!(
            TransitionError::NotStoppable(State::Stopped).to_string(),
            "it is already stopped"
        );
    }

    #[test]
    fn status_words_move_only_live_instances_forward() {
        assert_eq!(from_status(State::Started, 1), Some(State::Running));
        assert_eq!(from_status(State::Running, 1), None);
        assert_eq!(from_status(State::Running, 3), Some(State::Faulted));
        assert_eq!(from_status(State::Running, 2), Some(State::Exited));
        assert_eq!(from_status(State::Hung, 3), Some(State::Faulted));
        assert_eq!(from_status(State::Stopped, 1), None, "a stopped instance stays stopped");
        assert_eq!(from_status(State::Faulted, 1), None, "no resurrection through the status word");
        assert_eq!(from_status(State::Running, 77), None, "garbage is ignored");
    }

    #[test]
    fn watchdog_fires_only_after_the_timeout_without_change() {
        let mut w = Watchdog::default();
        w.reset(0, 5);
        assert!(!w.hung(400_000, 5, 500));
        assert!(w.hung(600_000, 5, 500));
        assert!(!w.hung(700_000, 6, 500), "a new heartbeat resets it");
        assert!(!w.hung(1_150_000, 6, 500));
        assert!(!w.hung(10_000_000, 6, 0), "0 disables it");
    }

    #[test]
    fn restart_policy_counts_backs_off_and_gives_up() {
        let p = Policy::OnFailure { max_restarts: 2 };
        assert_eq!(
            decide(p, is_failure(State::Faulted, 0, false), 0),
            Decision::Restart { delay_ms: 0 }
        );
        assert_eq!(
            decide(p, is_failure(State::Hung, 0, false), 1),
            Decision::Restart { delay_ms: 25 }
        );
        assert_eq!(decide(p, true, 2), Decision::GiveUp);
        assert!(!is_failure(State::Exited, 0, false), "a clean exit is not a failure");
        assert!(is_failure(State::Exited, 3, false));
        assert!(is_failure(State::Failed, 0, true) && !is_failure(State::Failed, 0, false));
        assert!(!is_failure(State::Running, 0, true));
        assert_eq!(decide(Policy::Never, true, 0), Decision::Leave);
        assert_eq!(decide(p, false, 0), Decision::Leave);
    }

    #[test]
    fn the_back_off_doubles_up_to_its_cap_and_never_overflows() {
        let waits: Vec<u64> = (0..8).map(backoff_ms).collect();
        assert_eq!(waits, [0, 25, 50, 100, 200, 400, 800, 1000]);
        assert_eq!(backoff_ms(u32::MAX), BACKOFF_MAX_MS);
    }
}
