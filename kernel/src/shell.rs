//! The control shell on the manager's serial console: reads bytes, edits a line, parses it
//! with `platform::shell`, has the supervisor carry it out, and prints the outcome.

use core::sync::atomic::Ordering;

use platform::shell::{self, Edit, LineEditor};
use platform::supervisor::{Machine, Outcome, Supervisor};

use crate::serial;
use crate::time::Deadline;
use crate::{println, view};

/// Bytes taken from the UART per supervision pass (bounds the time one pass can spend here).
const MAX_BYTES_PER_POLL: usize = 256;
/// While an image transfer is under way, how long one pass keeps reading the UART (waiting
/// for the sender's next line instead of leaving it to the 16-byte receive FIFO, which a real
/// 115200-baud line fills in 1.4 ms). Bounded so supervision goes on during a transfer.
const TRANSFER_WINDOW_US: u64 = 50_000;
pub const PROMPT: &str = "mk> ";

/// The shell shows its prompt once it is in use: from the start when the run has no time
/// limit (an interactive session), otherwise from the first byte typed, so an unattended
/// run's console is not littered with prompts.
#[derive(Default)]
pub struct Shell {
    editor: LineEditor,
    active: bool,
}

/// A fresh prompt, except during an image transfer: its sender reads answers, not prompts.
fn prompt_unless_transferring<M: Machine>(sup: &Supervisor<'_, M>) {
    if sup.transfer_progress().is_none() {
        show_prompt("");
    }
}

fn show_prompt(typed: &str) {
    serial::print(format_args!("{PROMPT}{typed}"));
    serial::PROMPT_SHOWN.store(true, Ordering::Relaxed);
}

impl Shell {
    pub fn greet(&mut self, run_ms: u64) {
        if run_ms == 0 {
            println!("shell: ready; type 'help' for commands");
            self.active = true;
        } else {
            println!(
                "shell: ready for {run_ms} ms (the run's time limit); type 'help' for commands"
            );
        }
    }

    /// Shows the prompt again (with what was typed so far) after other output ended its line.
    pub fn reprompt(&self, quitting: bool) {
        let shown = serial::PROMPT_SHOWN.load(Ordering::Relaxed);
        if self.active && !shown && !quitting {
            show_prompt(self.editor.current());
        }
    }

    /// Takes what was typed and carries out complete lines.
    pub fn serve<M: Machine>(&mut self, sup: &mut Supervisor<'_, M>) {
        let window = Deadline::after_micros(TRANSFER_WINDOW_US);
        let mut budget = MAX_BYTES_PER_POLL;
        loop {
            let transferring = self.editor.in_data_line() || sup.transfer_progress().is_some();
            let b = match serial::try_read().or_else(crate::keyboard::try_read) {
                Some(b) => b,
                None if transferring && !window.passed() => {
                    // Answers go out while the sender is waiting for them.
                    serial::drain_until(&Deadline::after_micros(100));
                    core::hint::spin_loop();
                    continue;
                }
                None => break,
            };
            if !transferring {
                budget -= 1;
            }
            if !self.active {
                self.active = true;
                serial::start_line();
                show_prompt("");
            }
            match self.editor.feed(b) {
                Edit::None => {}
                Edit::Echo(c) => serial::print(format_args!("{}", c as char)),
                Edit::Erase => serial::print(format_args!("\x08 \x08")),
                Edit::Data(line) => {
                    let reply = match line {
                        Ok(l) => sup.transfer_line(&l),
                        Err(e) => platform::transfer::Reply::Error(alloc::format!("{e}")),
                    };
                    serial::PROMPT_SHOWN.store(false, Ordering::Relaxed);
                    println!("{reply}");
                    prompt_unless_transferring(sup);
                }
                Edit::Line(line) => {
                    serial::PROMPT_SHOWN.store(false, Ordering::Relaxed);
                    println!();
                    match line.and_then(|l| shell::parse(&l)) {
                        Ok(Some(cmd)) => match sup.execute(cmd) {
                            Ok(outcome) => show(sup, &outcome),
                            Err(e) => println!("error: {e}"),
                        },
                        Ok(None) => {}
                        Err(e) => println!("error: {e}"),
                    }
                    if sup.quit {
                        return;
                    }
                    prompt_unless_transferring(sup);
                }
            }
            if budget == 0 {
                break;
            }
        }
        if sup.transfer_progress().is_none() {
            self.reprompt(sup.quit);
        }
    }
}

fn show<M: Machine>(sup: &Supervisor<'_, M>, outcome: &Outcome) {
    match *outcome {
        Outcome::Help => println!("{}", shell::HELP),
        Outcome::List => {
            view::print_table(&sup.instances);
            if sup.instances.len() > 32 {
                for i in sup.instances.iter().skip(32) {
                    println!("{:<12} {:<8} {}", i.name, i.state.name(), i.reason_text());
                }
            }
            let manager = crate::memory::FRAMES.lock().as_ref().map_or(0, |f| f.free_frames());
            println!(
                "frames: manager {manager} free, page-table pool {} free",
                sup.pool_free_frames()
            );
            println!(
                "heap: {} KiB of {} KiB used",
                crate::heap::used_bytes() >> 10,
                crate::heap::HEAP_SIZE >> 10
            );
        }
        Outcome::Status(i) => view::print_status_with_channels(sup, i),
        Outcome::Log(i) => {
            let inst = &sup.instances[i];
            println!("last {} console lines of '{}':", inst.console.recent.len(), inst.name);
            for l in inst.console.recent.iter() {
                println!("  | {l}");
            }
        }
        Outcome::Stopped(i) => println!("stopped '{}'", sup.instances[i].name),
        Outcome::Started { index, state, restarted } => {
            let inst = &sup.instances[index];
            let verb = if restarted { "restarted" } else { "started" };
            match state {
                platform::lifecycle::State::Started | platform::lifecycle::State::Running => {
                    println!("{verb} '{}'", inst.name)
                }
                s => println!("{verb} '{}'; it is {s} already ({})", inst.name, inst.reason_text()),
            }
        }
        Outcome::Quit => println!("shell: quitting"),
        Outcome::Transfer(ref reply) => println!("{reply}"),
        Outcome::Swapped(s) => {
            let inst = &sup.instances[s.index];
            let ms = s.took_us / 1000;
            if inst.healthy() || inst.state == platform::lifecycle::State::Started {
                let waiting = if inst.healthy() { "" } else { " (started; not reported in yet)" };
                println!(
                    "swapped '{}' in {ms} ms: it runs {}{waiting}",
                    inst.name,
                    sup.image_text(s.to, s.index)
                );
            } else {
                println!(
                    "swapped '{}' in {ms} ms, but it is {} ({}); 'swap {} --previous' brings \
                     back {}",
                    inst.name,
                    inst.state,
                    inst.reason_text(),
                    inst.name,
                    sup.image_text(s.from, s.index)
                );
            }
        }
        Outcome::Images => view::print_images(sup),
    }
}
