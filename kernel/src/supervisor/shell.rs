//! The control shell on the manager's serial console: reads bytes, edits a line, parses it
//! with `platform::shell`, and carries the command out on the supervisor.

use alloc::format;
use alloc::string::String;

use platform::shell::{self, Command, Edit, LineEditor};

use super::{table, Supervisor};
use crate::println;
use crate::serial;

/// Bytes taken from the UART per supervision pass (bounds the time one pass can spend here).
const MAX_BYTES_PER_POLL: usize = 256;
pub const PROMPT: &str = "mk> ";

/// The shell shows its prompt once it is in use: from the start when the run has no time
/// limit (an interactive session), otherwise from the first byte typed, so an unattended
/// run's console is not littered with prompts.
#[derive(Default)]
pub struct Shell {
    editor: LineEditor,
    active: bool,
}

fn show_prompt(typed: &str) {
    serial::print(format_args!("{PROMPT}{typed}"));
    serial::PROMPT_SHOWN.store(true, core::sync::atomic::Ordering::Relaxed);
}

impl Supervisor<'_> {
    pub(super) fn greet(&mut self, run_ms: u64) {
        if run_ms == 0 {
            println!("shell: ready; type 'help' for commands");
            self.shell.active = true;
        } else {
            println!(
                "shell: ready for {run_ms} ms (the run's time limit); type 'help' for commands"
            );
        }
        self.reprompt();
    }

    /// Shows the prompt again (with what was typed so far) after other output ended its line.
    pub(super) fn reprompt(&self) {
        let shown = serial::PROMPT_SHOWN.load(core::sync::atomic::Ordering::Relaxed);
        if self.shell.active && !shown && !self.quit {
            show_prompt(self.shell.editor.current());
        }
    }

    pub(super) fn serve_shell(&mut self) {
        for _ in 0..MAX_BYTES_PER_POLL {
            let Some(b) = serial::try_read() else { return };
            if !self.shell.active {
                self.shell.active = true;
                serial::start_line();
                show_prompt("");
            }
            match self.shell.editor.feed(b) {
                Edit::None => {}
                Edit::Echo(c) => serial::print(format_args!("{}", c as char)),
                Edit::Erase => serial::print(format_args!("\x08 \x08")),
                Edit::Line(line) => {
                    serial::PROMPT_SHOWN.store(false, core::sync::atomic::Ordering::Relaxed);
                    println!();
                    let result = line
                        .map_err(|e| format!("{e}"))
                        .and_then(|l| shell::parse(&l).map_err(|e| format!("{e}")));
                    match result {
                        Ok(Some(cmd)) => self.execute(cmd),
                        Ok(None) => {}
                        Err(e) => println!("error: {e}"),
                    }
                    if self.quit {
                        return;
                    }
                    show_prompt("");
                }
            }
        }
    }

    fn execute(&mut self, cmd: Command) {
        let outcome: Result<(), String> = match cmd {
            Command::Help => {
                println!("{}", shell::HELP);
                Ok(())
            }
            Command::List => {
                table::print_table(&self.instances);
                let manager = crate::memory::FRAMES.lock().as_ref().map_or(0, |f| f.free_frames());
                println!(
                    "frames: manager {manager} free, page-table pool {} free",
                    self.pool_free_frames()
                );
                println!(
                    "heap: {} KiB of {} KiB used",
                    crate::heap::used_bytes() >> 10,
                    crate::heap::HEAP_SIZE >> 10
                );
                Ok(())
            }
            Command::Status(name) => {
                self.index_of(&name).map(|i| table::print_status(&self.instances[i]))
            }
            Command::Log(name) => self.index_of(&name).map(|i| {
                let inst = &self.instances[i];
                println!("last {} console lines of '{}':", inst.console.recent.len(), inst.name);
                for l in &inst.console.recent {
                    println!("  | {l}");
                }
            }),
            Command::Stop(name) => self
                .index_of(&name)
                .and_then(|i| self.stop(i).map_err(|e| format!("cannot stop '{name}': {e}")))
                .map(|()| println!("stopped '{name}'")),
            Command::Start(name) => self
                .index_of(&name)
                .and_then(|i| {
                    self.start_stopped(i).map_err(|e| format!("cannot start '{name}': {e}"))
                })
                .map(|()| println!("started '{name}'")),
            Command::Restart(name) => self
                .index_of(&name)
                .and_then(|i| self.restart(i).map_err(|e| format!("cannot restart '{name}': {e}")))
                .map(|()| println!("restarted '{name}'")),
            Command::Quit => {
                println!("shell: quitting");
                self.quit = true;
                Ok(())
            }
        };
        if let Err(e) = outcome {
            println!("error: {e}");
        }
    }
}
