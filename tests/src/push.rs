//! The sending side of the image transfer protocol (`platform::transfer`): what
//! `cargo xtask push` and the push scenarios run against a manager's console, whether that is
//! the `console.sock` of a QEMU run or a serial device.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use platform::transfer::{self, chunk_line, Reply, CHUNK};

/// A manager's console as the sender sees it: bytes out, lines in.
pub trait Console {
    fn send(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Reads some bytes, waiting at most `timeout`; `Ok(0)` when nothing came.
    fn receive(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize>;
}

impl Console for std::os::unix::net::UnixStream {
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_all(bytes)?;
        self.flush()
    }

    fn receive(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
        self.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        match self.read(buf) {
            Ok(0) => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the console closed")),
            Ok(n) => Ok(n),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                Ok(0)
            }
            Err(e) => Err(e),
        }
    }
}

/// What to send and how (the fault knobs exist for the scenarios that prove recovery).
#[derive(Clone, Debug, Default)]
pub struct PushJob {
    pub instance: String,
    pub image: Vec<u8>,
    /// Type `swap NAME` once the image is kept.
    pub swap: bool,
    /// Damage this chunk's first transmission (one character of its base64).
    pub corrupt_chunk: Option<u32>,
    /// Send `#abort` after this many chunks instead of finishing.
    pub abandon_after: Option<u32>,
}

/// What a push did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PushReport {
    pub bytes: u64,
    pub chunks: u32,
    /// Chunks sent again after a `resend` answer or a lost answer.
    pub resends: u32,
    /// From the `load` line to the manager's final answer.
    pub elapsed: Duration,
    /// The manager's final answer to the transfer.
    pub outcome: String,
    /// The answer to `swap`, when one was asked for.
    pub swap: Option<String>,
}

/// `N bytes in S s (R KiB/s, C chunks, K sent again)`: the figures of a transfer.
impl std::fmt::Display for PushReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} bytes in {:.2} s ({:.1} KiB/s, {} chunks, {} sent again)",
            self.bytes,
            self.elapsed.as_secs_f64(),
            self.rate() / 1024.0,
            self.chunks,
            self.resends
        )
    }
}

impl PushReport {
    /// Image bytes per second over the transfer.
    pub fn rate(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Console lines from the byte stream, across reads.
struct Lines<'c, C: Console> {
    console: &'c mut C,
    partial: Vec<u8>,
}

impl<C: Console> Lines<'_, C> {
    /// The next line, or `None` after `timeout` without a complete one.
    fn next(&mut self, timeout: Duration) -> io::Result<Option<String>> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(nl) = self.partial.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.partial.drain(..=nl).collect();
                let text = String::from_utf8_lossy(&line);
                return Ok(Some(text.trim_end_matches(['\r', '\n']).to_string()));
            }
            let now = Instant::now();
            if now >= end {
                return Ok(None);
            }
            let mut buf = [0u8; 4096];
            let n = self.console.receive(&mut buf, end - now)?;
            self.partial.extend_from_slice(&buf[..n]);
        }
    }

    /// The next transfer answer (other console output is skipped).
    fn reply(&mut self, timeout: Duration) -> io::Result<Option<Reply>> {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.next(left)? {
                None => return Ok(None),
                Some(line) => {
                    if let Some(r) = Reply::parse(&line) {
                        return Ok(Some(r));
                    }
                }
            }
        }
    }
}

/// How long to wait for a chunk's answer before sending it again.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(5);
/// How often one chunk is sent before the push gives up.
const MAX_TRIES: u32 = 8;
/// `#end` hashes and checks the image on the manager: allow for a big one under TCG.
const END_TIMEOUT: Duration = Duration::from_secs(180);

/// Sends `job.image` for `job.instance`; `progress(bytes_acknowledged)` after each chunk.
/// Returns the report when the manager kept the image (and started it, with `swap`); an error
/// naming the manager's answer otherwise.
pub fn push<C: Console>(
    console: &mut C,
    job: &PushJob,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<PushReport> {
    let sha = transfer::sha256(&job.image);
    let mut lines = Lines { console, partial: Vec::new() };
    let start = Instant::now();
    // A fresh line first, so whatever was typed before is not taken into the command.
    let load = format!("\nload {} {} {}\n", job.instance, job.image.len(), transfer::hex(&sha));
    lines.console.send(load.as_bytes()).context("writing to the console")?;
    let (chunks, from) = match lines.reply(Duration::from_secs(30))? {
        Some(Reply::Ready { chunks, from, .. }) => (chunks, from),
        Some(Reply::Refused { name, why }) => {
            bail!("the manager refused the image for '{name}': {why}")
        }
        Some(other) => bail!("unexpected answer to 'load': {other}"),
        None => bail!("no answer to 'load' within 30 s (is the manager's shell on this console?)"),
    };
    let mut report = PushReport { bytes: job.image.len() as u64, chunks, ..Default::default() };
    let mut corrupt = job.corrupt_chunk;
    for index in from..chunks {
        if job.abandon_after == Some(index) {
            lines.console.send(b"#abort\n")?;
            return match lines.reply(CHUNK_TIMEOUT)? {
                Some(r @ Reply::Abandoned { .. }) => {
                    report.outcome = r.to_string();
                    report.elapsed = start.elapsed();
                    Ok(report)
                }
                other => bail!("unexpected answer to '#abort': {other:?}"),
            };
        }
        let at = index as usize * CHUNK;
        let data = &job.image[at..(at + CHUNK).min(job.image.len())];
        let line = chunk_line(index, data);
        let mut tries = 0;
        loop {
            tries += 1;
            if tries > MAX_TRIES {
                let _ = lines.console.send(b"#abort\n");
                bail!("chunk {index} was not accepted after {MAX_TRIES} tries; transfer abandoned");
            }
            let mut bytes = line.clone().into_bytes();
            if corrupt == Some(index) {
                corrupt = None;
                let k = bytes.len() - 3;
                bytes[k] = if bytes[k] == b'A' { b'B' } else { b'A' };
            }
            bytes.push(b'\n');
            lines.console.send(&bytes)?;
            // Skip answers to earlier chunks (a late `ok` after a retry).
            let answer = loop {
                match lines.reply(CHUNK_TIMEOUT)? {
                    Some(Reply::Ok(i)) if i != index => continue,
                    other => break other,
                }
            };
            match answer {
                Some(Reply::Ok(_)) => break,
                Some(Reply::Resend { .. }) | Some(Reply::Error(_)) | None => {
                    report.resends += 1;
                }
                Some(other) => bail!("unexpected answer to chunk {index}: {other}"),
            }
        }
        progress((at + data.len()) as u64);
    }
    let mut final_answer = None;
    for _ in 0..MAX_TRIES {
        lines.console.send(b"#end\n")?;
        match lines.reply(END_TIMEOUT)? {
            Some(Reply::Missing { index, .. }) => {
                // A chunk the manager lost track of: send it again, then end again.
                let at = index as usize * CHUNK;
                let data = job.image.get(at..(at + CHUNK).min(job.image.len())).unwrap_or(&[]);
                lines.console.send(format!("{}\n", chunk_line(index, data)).as_bytes())?;
                let _ = lines.reply(CHUNK_TIMEOUT)?;
                report.resends += 1;
            }
            other => {
                final_answer = other;
                break;
            }
        }
    }
    report.elapsed = start.elapsed();
    match final_answer {
        Some(r @ Reply::Kept { .. }) => report.outcome = r.to_string(),
        Some(Reply::Refused { name, why }) => {
            bail!("the manager refused the image for '{name}': {why}")
        }
        Some(other) => bail!("unexpected answer to '#end': {other}"),
        None => bail!("no answer to '#end'"),
    }
    if job.swap {
        lines.console.send(format!("swap {}\n", job.instance).as_bytes())?;
        let end = Instant::now() + Duration::from_secs(60);
        while Instant::now() < end {
            let Some(line) = lines.next(end.saturating_duration_since(Instant::now()))? else {
                break;
            };
            let line = line.trim_start_matches("mk> ");
            if line.starts_with("swapped '") || line.starts_with("error: cannot swap") {
                report.swap = Some(line.to_string());
                break;
            }
        }
        if report.swap.is_none() {
            bail!("no answer to 'swap {}' within 60 s", job.instance);
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A console that answers like the manager's shell, through the real transfer parser;
    /// `drop_answer` loses the answer to that many lines.
    struct FakeManager {
        out: VecDeque<u8>,
        line: Vec<u8>,
        image: Vec<u8>,
        received: Vec<Option<Vec<u8>>>,
        drop_answer_to: Option<usize>,
        lines_seen: usize,
    }

    impl FakeManager {
        fn answer(&mut self, r: Reply) {
            self.out.extend(format!("{r}\r\nmk> ").bytes());
        }
    }

    impl Console for FakeManager {
        fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
            for &b in bytes {
                if b != b'\n' {
                    self.line.push(b);
                    continue;
                }
                let line = std::mem::take(&mut self.line);
                self.lines_seen += 1;
                let drop = self.drop_answer_to == Some(self.lines_seen);
                let text = String::from_utf8_lossy(&line).to_string();
                let reply = if let Some(rest) = text.strip_prefix("load ") {
                    let size: usize = rest.split(' ').nth(1).unwrap().parse().unwrap();
                    self.received = vec![None; size.div_ceil(CHUNK)];
                    Some(Reply::Ready {
                        name: "x".into(),
                        size: size as u64,
                        chunks: self.received.len() as u32,
                        from: 0,
                    })
                } else if text.starts_with('#') {
                    let mut buf = [0u8; CHUNK];
                    Some(match transfer::parse_data_line(&line, &mut buf) {
                        Ok(transfer::DataLine::Chunk { index, len }) => {
                            self.received[index as usize] = Some(buf[..len].to_vec());
                            Reply::Ok(index)
                        }
                        Ok(transfer::DataLine::End) => {
                            let all: Vec<u8> =
                                self.received.iter().flatten().flatten().copied().collect();
                            self.image = all;
                            Reply::Kept { name: "x".into(), size: 0, sha256: "00".into() }
                        }
                        Ok(transfer::DataLine::Abort) => {
                            Reply::Abandoned { name: "x".into(), received: 0, chunks: 0 }
                        }
                        Err((Some(index), e)) => Reply::Resend { index, why: e.to_string() },
                        Err((None, e)) => Reply::Error(e.to_string()),
                    })
                } else if text.starts_with("swap ") {
                    self.out.extend(b"swapped 'x' in 12 ms: it runs pushed\r\n");
                    None
                } else {
                    None
                };
                if let (Some(r), false) = (reply, drop) {
                    self.answer(r);
                }
            }
            Ok(())
        }

        fn receive(&mut self, buf: &mut [u8], _timeout: Duration) -> io::Result<usize> {
            // An instance's line that looks like an answer must be ignored.
            if self.out.is_empty() {
                std::thread::sleep(Duration::from_millis(1));
                return Ok(0);
            }
            let n = buf.len().min(self.out.len()).min(7);
            for b in buf.iter_mut().take(n) {
                *b = self.out.pop_front().unwrap();
            }
            Ok(n)
        }
    }

    fn fake() -> FakeManager {
        FakeManager {
            out: VecDeque::from(b"[hello] load: ok 0\r\n".to_vec()),
            line: Vec::new(),
            image: Vec::new(),
            received: Vec::new(),
            drop_answer_to: None,
            lines_seen: 0,
        }
    }

    fn image() -> Vec<u8> {
        (0..3 * CHUNK + 100).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn an_image_arrives_whole_and_a_damaged_chunk_is_sent_again() {
        let mut m = fake();
        let job = PushJob {
            instance: "x".into(),
            image: image(),
            swap: true,
            corrupt_chunk: Some(2),
            ..Default::default()
        };
        let mut acked = Vec::new();
        let r = push(&mut m, &job, |b| acked.push(b)).unwrap();
        assert_eq!(m.image, job.image);
        assert_eq!((r.chunks, r.resends), (4, 1));
        assert_eq!(acked.last(), Some(&(job.image.len() as u64)));
        assert!(r.outcome.starts_with("load: kept x"), "{}", r.outcome);
        assert_eq!(r.swap.as_deref(), Some("swapped 'x' in 12 ms: it runs pushed"));
    }

    #[test]
    fn a_lost_answer_is_recovered_by_sending_the_chunk_again() {
        let mut m = fake();
        // Line 1 is the empty line before `load`, 2 is `load`, 3 is chunk 0, 4 is chunk 1.
        m.drop_answer_to = Some(4);
        let job = PushJob { instance: "x".into(), image: image(), ..Default::default() };
        // The lost answer costs one CHUNK_TIMEOUT; the fake answers at once otherwise.
        let r = push(&mut m, &job, |_| {}).unwrap();
        assert_eq!(m.image, job.image);
        assert_eq!(r.resends, 1);
    }

    #[test]
    fn an_abandoned_push_says_so() {
        let mut m = fake();
        let job = PushJob {
            instance: "x".into(),
            image: image(),
            abandon_after: Some(1),
            ..Default::default()
        };
        let r = push(&mut m, &job, |_| {}).unwrap();
        assert!(r.outcome.starts_with("load: abandoned"), "{}", r.outcome);
        assert!(m.image.is_empty());
    }
}
