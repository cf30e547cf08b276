//! The manager's control shell: parsing what a user typed on the serial console.
//!
//! The shell is line-based and deliberately small: `list`, `status NAME`, `stop NAME`,
//! `start NAME`, `restart NAME`, `log NAME`, `load NAME SIZE SHA256`, `swap NAME [--previous]`,
//! `images`, `help`, `quit`. Lines that start with `#` are an image transfer's data lines
//! ([`crate::transfer`]): longer, not echoed, handed over whole. Parsing is pure and host-tested;
//! the manager (`kernel/src/instances.rs`) carries the commands out and reports impossible
//! transitions itself. Input bytes come from a serial line and are untrusted: the line editor
//! bounds its buffer and ignores control bytes it does not understand.

use alloc::string::String;
use core::fmt;

/// Longest command line kept; further bytes are dropped (and the line refused).
pub const MAX_LINE: usize = 128;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    List,
    Status(String),
    Stop(String),
    Start(String),
    Restart(String),
    Log(String),
    /// Receive an image for the instance (`cargo xtask push` sends this line, then chunks).
    Load {
        name: String,
        size: u64,
        sha256: [u8; 32],
    },
    /// Replace the instance's image by the one kept for it (or its previous one).
    Swap {
        name: String,
        previous: bool,
    },
    Images,
    Help,
    Quit,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShellError {
    Unknown(String),
    MissingName(&'static str),
    ExtraArguments(&'static str),
    TooLong,
    /// `load` without its size and hash (it is the transfer protocol's first line).
    LoadUsage,
    BadSize(String),
    BadDigest(String),
    UnknownOption {
        command: &'static str,
        option: String,
    },
}

impl fmt::Display for ShellError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShellError::Unknown(w) => write!(f, "unknown command '{w}' (try 'help')"),
            ShellError::MissingName(c) => write!(f, "'{c}' needs an instance name: {c} NAME"),
            ShellError::ExtraArguments(c) => write!(f, "'{c}' takes at most one argument"),
            ShellError::TooLong => write!(f, "command line longer than {MAX_LINE} bytes"),
            ShellError::LoadUsage => f.write_str(
                "'load' takes NAME SIZE SHA256 and then the image's data lines; \
                 send an image with: cargo xtask push --instance NAME --image FILE",
            ),
            ShellError::BadSize(s) => write!(f, "load: size '{s}' is not a byte count"),
            ShellError::BadDigest(s) => {
                write!(f, "load: '{s}' is not a SHA-256 digest (64 hex digits)")
            }
            ShellError::UnknownOption { command, option } => {
                write!(f, "'{command}' has no option '{option}'")
            }
        }
    }
}

pub const HELP: &str = "commands:
  list            every instance with its CPU, region, state, heartbeat, restarts
  status NAME     one instance in detail (transitions, fault record, console counters)
  stop NAME       INIT its CPU (back to wait-for-SIPI) and scrub its memory
  start NAME      reload its image from the boot bundle and start it again
  restart NAME    stop, then start
  log NAME        its recent console lines
  images          images kept for swapping (size, SHA-256, when loaded) and the store's room
  swap NAME       stop NAME and start the image pushed for it (cargo xtask push)
  swap NAME --previous
                  go back to the image NAME ran before its last swap
  load NAME SIZE SHA256
                  receive an image in data lines (sent by cargo xtask push, not typed)
  help            this text
  quit            end the run (QEMU: exit with the verdict; real machine: halt)";

/// Parses one line. Empty lines give `Ok(None)`.
pub fn parse(line: &str) -> Result<Option<Command>, ShellError> {
    if line.len() > MAX_LINE {
        return Err(ShellError::TooLong);
    }
    let mut words = line.split_whitespace();
    let Some(cmd) = words.next() else { return Ok(None) };
    let name_arg = |words: &mut core::str::SplitWhitespace<'_>, c: &'static str| {
        let name = words.next().ok_or(ShellError::MissingName(c))?;
        if words.next().is_some() {
            return Err(ShellError::ExtraArguments(c));
        }
        Ok(String::from(name))
    };
    let no_arg = |words: &mut core::str::SplitWhitespace<'_>, c: &'static str, v: Command| {
        if words.next().is_some() {
            return Err(ShellError::ExtraArguments(c));
        }
        Ok(v)
    };
    let c = match cmd {
        "list" | "ls" => no_arg(&mut words, "list", Command::List)?,
        "help" | "?" => no_arg(&mut words, "help", Command::Help)?,
        "quit" | "exit" => no_arg(&mut words, "quit", Command::Quit)?,
        "status" => Command::Status(name_arg(&mut words, "status")?),
        "stop" => Command::Stop(name_arg(&mut words, "stop")?),
        "start" => Command::Start(name_arg(&mut words, "start")?),
        "restart" => Command::Restart(name_arg(&mut words, "restart")?),
        "log" => Command::Log(name_arg(&mut words, "log")?),
        "images" => no_arg(&mut words, "images", Command::Images)?,
        "swap" => {
            let name = String::from(words.next().ok_or(ShellError::MissingName("swap"))?);
            let previous = match words.next() {
                None => false,
                Some("--previous") => true,
                Some(o) => {
                    return Err(ShellError::UnknownOption { command: "swap", option: o.into() })
                }
            };
            if words.next().is_some() {
                return Err(ShellError::ExtraArguments("swap"));
            }
            Command::Swap { name, previous }
        }
        "load" => {
            let name = String::from(words.next().ok_or(ShellError::MissingName("load"))?);
            let (Some(size), Some(digest)) = (words.next(), words.next()) else {
                return Err(ShellError::LoadUsage);
            };
            if words.next().is_some() {
                return Err(ShellError::LoadUsage);
            }
            let size = size.parse::<u64>().map_err(|_| ShellError::BadSize(size.into()))?;
            let sha256 = crate::transfer::parse_hex_digest(digest)
                .ok_or_else(|| ShellError::BadDigest(digest.into()))?;
            Command::Load { name, size, sha256 }
        }
        other => return Err(ShellError::Unknown(String::from(other))),
    };
    Ok(Some(c))
}

/// A bounded line editor over raw serial bytes.
#[derive(Default)]
pub struct LineEditor {
    buf: String,
    overflow: bool,
    /// The current line started with `#`: a transfer's data line (raw bytes, not echoed).
    data: Option<alloc::vec::Vec<u8>>,
}

/// What one input byte did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Edit {
    /// Nothing to show.
    None,
    /// Echo this byte.
    Echo(u8),
    /// Erase the last character on the terminal.
    Erase,
    /// A full line (without its terminator); `Err` if it overflowed.
    Line(Result<String, ShellError>),
    /// A full data line (starting with `#`), as received; `Err` if it was longer than
    /// [`crate::transfer::MAX_DATA_LINE`].
    Data(Result<alloc::vec::Vec<u8>, crate::transfer::ChunkError>),
}

impl LineEditor {
    /// What has been typed on the current line so far.
    pub fn current(&self) -> &str {
        &self.buf
    }

    /// A data line is being received (its bytes are not echoed).
    pub fn in_data_line(&self) -> bool {
        self.data.is_some()
    }

    pub fn feed(&mut self, b: u8) -> Edit {
        if let Some(data) = self.data.as_mut() {
            if b == b'\r' || b == b'\n' {
                let line = self.data.take().unwrap_or_default();
                let overflow = core::mem::replace(&mut self.overflow, false);
                return Edit::Data(if overflow {
                    Err(crate::transfer::ChunkError::LineTooLong)
                } else {
                    Ok(line)
                });
            }
            if data.len() >= crate::transfer::MAX_DATA_LINE {
                self.overflow = true;
            } else {
                data.push(b);
            }
            return Edit::None;
        }
        if b == b'#' && self.buf.is_empty() && !self.overflow {
            let mut line = alloc::vec::Vec::with_capacity(crate::transfer::MAX_DATA_LINE);
            line.push(b);
            self.data = Some(line);
            return Edit::None;
        }
        match b {
            b'\r' | b'\n' => {
                let line = core::mem::take(&mut self.buf);
                let overflow = core::mem::replace(&mut self.overflow, false);
                Edit::Line(if overflow { Err(ShellError::TooLong) } else { Ok(line) })
            }
            0x08 | 0x7f => {
                if self.buf.pop().is_some() {
                    Edit::Erase
                } else {
                    Edit::None
                }
            }
            b if b.is_ascii_graphic() || b == b' ' => {
                if self.buf.len() >= MAX_LINE {
                    self.overflow = true;
                    Edit::None
                } else {
                    self.buf.push(b as char);
                    Edit::Echo(b)
                }
            }
            _ => Edit::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        assert_eq!(parse("list"), Ok(Some(Command::List)));
        assert_eq!(parse("  stop   hello "), Ok(Some(Command::Stop("hello".into()))));
        assert_eq!(parse("restart c-1"), Ok(Some(Command::Restart("c-1".into()))));
        assert_eq!(parse("log x"), Ok(Some(Command::Log("x".into()))));
        assert_eq!(parse("status x"), Ok(Some(Command::Status("x".into()))));
        assert_eq!(parse("start x"), Ok(Some(Command::Start("x".into()))));
        assert_eq!(parse("quit"), Ok(Some(Command::Quit)));
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("   "), Ok(None));
    }

    #[test]
    fn mistakes_get_specific_errors() {
        assert_eq!(parse("stpo x"), Err(ShellError::Unknown("stpo".into())));
        assert_eq!(parse("stop"), Err(ShellError::MissingName("stop")));
        assert_eq!(parse("stop a b"), Err(ShellError::ExtraArguments("stop")));
        assert_eq!(parse("list all"), Err(ShellError::ExtraArguments("list")));
        assert!(parse("stop x").is_ok());
        let long = "x".repeat(MAX_LINE + 1);
        assert_eq!(parse(&long), Err(ShellError::TooLong));
    }

    #[test]
    fn the_line_editor_echoes_erases_and_bounds() {
        let mut e = LineEditor::default();
        assert_eq!(e.feed(b'l'), Edit::Echo(b'l'));
        assert_eq!(e.feed(b'x'), Edit::Echo(b'x'));
        assert_eq!(e.feed(0x7f), Edit::Erase);
        assert_eq!(e.feed(0x1b), Edit::None, "escape bytes are ignored");
        for b in *b"ist" {
            e.feed(b);
        }
        assert_eq!(e.feed(b'\r'), Edit::Line(Ok("list".into())));
        assert_eq!(e.feed(0x08), Edit::None, "nothing to erase");
        for _ in 0..MAX_LINE + 10 {
            e.feed(b'a');
        }
        assert_eq!(e.feed(b'\n'), Edit::Line(Err(ShellError::TooLong)));
        assert_eq!(e.feed(b'\n'), Edit::Line(Ok(String::new())), "overflow is reset per line");
    }

    #[test]
    fn data_lines_are_taken_whole_and_bounded() {
        let mut e = LineEditor::default();
        for b in *b"#end" {
            assert_eq!(e.feed(b), Edit::None, "data lines are not echoed");
        }
        assert!(e.in_data_line());
        assert_eq!(e.feed(b'\n'), Edit::Data(Ok(b"#end".to_vec())));
        assert!(!e.in_data_line());
        for _ in 0..crate::transfer::MAX_DATA_LINE + 5 {
            e.feed(b'#');
        }
        assert_eq!(e.feed(b'\r'), Edit::Data(Err(crate::transfer::ChunkError::LineTooLong)));
        // A '#' inside a command line is an ordinary character.
        e.feed(b'x');
        assert_eq!(e.feed(b'#'), Edit::Echo(b'#'));
        assert_eq!(e.feed(b'\n'), Edit::Line(Ok("x#".into())));
    }

    #[test]
    fn load_and_swap_parse() {
        let h = "ab".repeat(32);
        assert_eq!(
            parse(&alloc::format!("load hello 9000 {h}")),
            Ok(Some(Command::Load { name: "hello".into(), size: 9000, sha256: [0xab; 32] }))
        );
        assert_eq!(parse("load hello"), Err(ShellError::LoadUsage));
        assert_eq!(
            parse(&alloc::format!("load hello 9k {h}")),
            Err(ShellError::BadSize("9k".into()))
        );
        assert_eq!(parse("load hello 9 abc"), Err(ShellError::BadDigest("abc".into())));
        assert_eq!(
            parse("swap hello"),
            Ok(Some(Command::Swap { name: "hello".into(), previous: false }))
        );
        assert_eq!(
            parse("swap hello --previous"),
            Ok(Some(Command::Swap { name: "hello".into(), previous: true }))
        );
        assert_eq!(
            parse("swap hello --prev"),
            Err(ShellError::UnknownOption { command: "swap", option: "--prev".into() })
        );
        assert_eq!(parse("images"), Ok(Some(Command::Images)));
    }
}
