//! The image transfer protocol of the control console: how `cargo xtask push` hands a kernel
//! image to a running manager over a serial line, in text lines both ways.
//!
//! ```text
//! sender                                   manager
//! load NAME SIZE SHA256                →
//!                                      ←   load: ready NAME size SIZE chunk 3072 chunks N from F
//! #INDEX CRC32 BASE64                  →   (one chunk, not echoed)
//!                                      ←   load: ok INDEX        | load: resend INDEX (why)
//! ...
//! #end                                 →
//!                                      ←   load: kept NAME size SIZE sha256 H
//!                                          | load: missing INDEX (K chunks missing)
//!                                          | load: refused NAME: why
//! #abort                               →
//!                                      ←   load: abandoned NAME (K of N chunks received)
//! ```
//!
//! Every chunk but the last is [`CHUNK`] bytes; each carries its index and the CRC-32 (IEEE
//! 802.3, as zlib computes it) of its bytes, base64-encoded (RFC 4648 §4, with padding). The
//! sender waits for each chunk's answer (stop-and-wait): a serial line without flow control
//! loses bytes when the receiver is busy, and a lost or damaged chunk is answered `resend`.
//! `#end` checks that every chunk arrived and that the SHA-256 of the whole matches the one
//! announced, then runs the loader's checks. A `load` line for the transfer that is already
//! under way (same name, size and hash) resumes it: `from F` is the first chunk still missing.
//!
//! This module is the pure part, shared by the manager and the sender: the checksums, the
//! encoding, the line formats and the bookkeeping of which chunks arrived. Every line is
//! untrusted input on the manager's side and gets a specific refusal.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// Bytes per chunk: its base64 text (4096 characters) and header fit a 4200-byte line.
pub const CHUNK: usize = 3072;
/// The longest data line the manager accepts: `#`, index, CRC, base64 of [`CHUNK`] bytes.
pub const MAX_DATA_LINE: usize = 4200;
/// How long the manager keeps a transfer with no line received before abandoning it.
pub const IDLE_TIMEOUT_US: u64 = 60_000_000;

/// CRC-32 as zlib and Ethernet compute it (reflected polynomial 0xEDB88320, initial value
/// and final XOR 0xFFFFFFFF).
pub fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut c = 0xFFFF_FFFFu32;
    for &b in bytes {
        c = TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
    }
    c ^ 0xFFFF_FFFF
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Base64 (RFC 4648 §4) with `=` padding.
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for k in 0..4 {
            if k <= c.len() {
                out.push(B64[((n >> (18 - 6 * k)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes base64 text into `out`; returns the number of bytes written. Refuses characters
/// outside the alphabet, a length that is not a multiple of 4, misplaced padding and output
/// that would not fit.
pub fn base64_decode(text: &[u8], out: &mut [u8]) -> Result<usize, ChunkError> {
    if !text.len().is_multiple_of(4) {
        return Err(ChunkError::Base64Length(text.len()));
    }
    let value = |c: u8| -> Option<u32> { B64.iter().position(|&x| x == c).map(|p| p as u32) };
    let mut n = 0usize;
    let groups = text.len() / 4;
    for (g, quad) in text.chunks(4).enumerate() {
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        let inner_pad = quad[..4 - pad].contains(&b'=');
        if pad > 2 || inner_pad || (pad > 0 && g + 1 != groups) {
            return Err(ChunkError::Base64Padding);
        }
        let mut acc = 0u32;
        for (k, &c) in quad.iter().enumerate() {
            let v = if k >= 4 - pad { 0 } else { value(c).ok_or(ChunkError::Base64Char(c))? };
            acc = (acc << 6) | v;
        }
        let bytes = [(acc >> 16) as u8, (acc >> 8) as u8, acc as u8];
        let take = 3 - pad;
        let dst = out.get_mut(n..n + take).ok_or(ChunkError::TooLong)?;
        dst.copy_from_slice(&bytes[..take]);
        n += take;
    }
    Ok(n)
}

/// A data line: one chunk, the end of the image, or the sender giving up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataLine {
    /// Chunk `index` decoded into the caller's buffer: `len` bytes, CRC verified.
    Chunk {
        index: u32,
        len: usize,
    },
    End,
    Abort,
}

/// Why a data line was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkError {
    /// The line is not `#INDEX CRC32 BASE64`, `#end` or `#abort`.
    Malformed,
    /// The line is longer than [`MAX_DATA_LINE`] (bytes were lost or the sender is wrong).
    LineTooLong,
    Base64Length(usize),
    Base64Padding,
    Base64Char(u8),
    /// More than [`CHUNK`] bytes.
    TooLong,
    Crc {
        expected: u32,
        actual: u32,
    },
}

impl fmt::Display for ChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChunkError::Malformed => f.write_str("not '#INDEX CRC32 BASE64', '#end' or '#abort'"),
            ChunkError::LineTooLong => write!(f, "line longer than {MAX_DATA_LINE} bytes"),
            ChunkError::Base64Length(n) => write!(f, "base64 length {n} is not a multiple of 4"),
            ChunkError::Base64Padding => f.write_str("misplaced base64 padding"),
            ChunkError::Base64Char(c) => write!(f, "byte {c:#04x} is not base64"),
            ChunkError::TooLong => write!(f, "more than {CHUNK} bytes"),
            ChunkError::Crc { expected, actual } => {
                write!(f, "crc32 {actual:08x}, the line says {expected:08x}")
            }
        }
    }
}

/// The data line for chunk `index` of `bytes`.
pub fn chunk_line(index: u32, bytes: &[u8]) -> String {
    alloc::format!("#{index} {:08x} {}", crc32(bytes), base64_encode(bytes))
}

/// Parses a data line (with its leading `#`, without its terminator). A chunk is decoded into
/// `out` and its CRC checked. When a chunk's index can be read but the rest is damaged, the
/// error comes with the index, so the manager can ask for exactly that chunk again.
pub fn parse_data_line(
    line: &[u8],
    out: &mut [u8; CHUNK],
) -> Result<DataLine, (Option<u32>, ChunkError)> {
    if line.len() > MAX_DATA_LINE {
        return Err((None, ChunkError::LineTooLong));
    }
    match line {
        b"#end" => return Ok(DataLine::End),
        b"#abort" => return Ok(DataLine::Abort),
        _ => {}
    }
    let rest = line.strip_prefix(b"#").ok_or((None, ChunkError::Malformed))?;
    let mut parts = rest.splitn(3, |&b| b == b' ');
    let index = parts
        .next()
        .and_then(|s| core::str::from_utf8(s).ok())
        .and_then(|s| s.parse::<u32>().ok())
        .ok_or((None, ChunkError::Malformed))?;
    let bad = |e| (Some(index), e);
    let crc = parts
        .next()
        .filter(|s| s.len() == 8)
        .and_then(|s| core::str::from_utf8(s).ok())
        .and_then(|s| u32::from_str_radix(s, 16).ok())
        .ok_or(bad(ChunkError::Malformed))?;
    let text = parts.next().ok_or(bad(ChunkError::Malformed))?;
    let len = base64_decode(text, out).map_err(bad)?;
    let actual = crc32(&out[..len]);
    if actual != crc {
        return Err(bad(ChunkError::Crc { expected: crc, actual }));
    }
    Ok(DataLine::Chunk { index, len })
}

/// A SHA-256 digest as 64 lowercase hex digits.
pub fn hex(digest: &[u8; 32]) -> String {
    let mut s = String::with_capacity(64);
    for b in digest {
        s.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('?'));
        s.push(char::from_digit(u32::from(b & 15), 16).unwrap_or('?'));
    }
    s
}

/// Parses 64 hex digits.
pub fn parse_hex_digest(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut d = [0u8; 32];
    for (k, pair) in s.as_bytes().chunks(2).enumerate() {
        let text = core::str::from_utf8(pair).ok()?;
        d[k] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(d)
}

/// SHA-256 of `bytes` (FIPS 180-4), in software: the manager runs with SSE off.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// Which chunks of an image have arrived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunks {
    size: u64,
    have: Vec<u64>,
    count: u32,
    received: u32,
}

impl Chunks {
    /// The chunk bookkeeping for an image of `size` bytes (`size` > 0).
    pub fn new(size: u64) -> Self {
        let count = size.div_ceil(CHUNK as u64).min(u64::from(u32::MAX)) as u32;
        Chunks { size, have: alloc::vec![0; (count as usize).div_ceil(64)], count, received: 0 }
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn received(&self) -> u32 {
        self.received
    }

    /// The byte offset and length chunk `index` must have, or `None` past the end.
    pub fn span(&self, index: u32) -> Option<(u64, usize)> {
        if index >= self.count {
            return None;
        }
        let at = u64::from(index) * CHUNK as u64;
        Some((at, (self.size - at).min(CHUNK as u64) as usize))
    }

    pub fn mark(&mut self, index: u32) {
        let (w, b) = ((index / 64) as usize, index % 64);
        if let Some(word) = self.have.get_mut(w) {
            if *word & (1 << b) == 0 {
                *word |= 1 << b;
                self.received += 1;
            }
        }
    }

    /// The first chunk not received yet (`count()` when all are).
    pub fn first_missing(&self) -> u32 {
        for (w, &word) in self.have.iter().enumerate() {
            if word != u64::MAX {
                let i = w as u32 * 64 + word.trailing_ones();
                return i.min(self.count);
            }
        }
        self.count
    }
}

/// The manager's answers, one line each, prefixed `load: `.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Ready {
        name: String,
        size: u64,
        chunks: u32,
        from: u32,
    },
    Ok(u32),
    Resend {
        index: u32,
        why: String,
    },
    Missing {
        index: u32,
        missing: u32,
    },
    Kept {
        name: String,
        size: u64,
        sha256: String,
    },
    Refused {
        name: String,
        why: String,
    },
    Abandoned {
        name: String,
        received: u32,
        chunks: u32,
    },
    /// A data line with no transfer under way, or a line that could not be read at all.
    Error(String),
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Ready { name, size, chunks, from } => {
                write!(
                    f,
                    "load: ready {name} size {size} chunk {CHUNK} chunks {chunks} from {from}"
                )
            }
            Reply::Ok(i) => write!(f, "load: ok {i}"),
            Reply::Resend { index, why } => write!(f, "load: resend {index} ({why})"),
            Reply::Missing { index, missing } => {
                write!(f, "load: missing {index} ({missing} chunks missing)")
            }
            Reply::Kept { name, size, sha256 } => {
                write!(f, "load: kept {name} size {size} sha256 {sha256}")
            }
            Reply::Refused { name, why } => write!(f, "load: refused {name}: {why}"),
            Reply::Abandoned { name, received, chunks } => {
                write!(f, "load: abandoned {name} ({received} of {chunks} chunks received)")
            }
            Reply::Error(why) => write!(f, "load: error: {why}"),
        }
    }
}

impl Reply {
    /// Reads a reply from a line of console output: the line starts with `load: `, after
    /// any shell prompts (`mk> `). An instance's console line (`[name] load: ...`) is never
    /// taken for one.
    pub fn parse(line: &str) -> Option<Reply> {
        let mut line = line.trim_start();
        while let Some(rest) = line.strip_prefix("mk> ") {
            line = rest;
        }
        let text = line.strip_prefix("load: ")?;
        let (word, rest) = text.split_once(' ').unwrap_or((text, ""));
        let num = |s: Option<&str>| s.and_then(|s| s.parse::<u64>().ok());
        let mut w = rest.split_whitespace();
        Some(match word {
            "ready" => {
                let name = String::from(w.next()?);
                let (size, _, chunks, from) = match (
                    w.next(),
                    num(w.next()),
                    w.next(),
                    num(w.next()),
                    w.next(),
                    num(w.next()),
                    w.next(),
                    num(w.next()),
                ) {
                    (
                        Some("size"),
                        Some(s),
                        Some("chunk"),
                        Some(c),
                        Some("chunks"),
                        Some(n),
                        Some("from"),
                        Some(f),
                    ) => (s, c, n, f),
                    _ => return None,
                };
                Reply::Ready { name, size, chunks: chunks as u32, from: from as u32 }
            }
            "ok" => Reply::Ok(num(w.next())? as u32),
            "resend" => {
                let index = num(w.next())? as u32;
                let why = rest.split_once(' ').map_or("", |(_, r)| r);
                Reply::Resend { index, why: String::from(why.trim_matches(['(', ')'])) }
            }
            "missing" => {
                let index = num(w.next())? as u32;
                let missing = num(w.next().map(|s| s.trim_start_matches('(')))? as u32;
                Reply::Missing { index, missing }
            }
            "kept" => {
                let name = String::from(w.next()?);
                let size = match (w.next(), num(w.next())) {
                    (Some("size"), Some(s)) => s,
                    _ => return None,
                };
                let sha256 = match (w.next(), w.next()) {
                    (Some("sha256"), Some(h)) => String::from(h),
                    _ => return None,
                };
                Reply::Kept { name, size, sha256 }
            }
            "refused" => {
                let (name, why) = rest.split_once(": ")?;
                Reply::Refused { name: String::from(name), why: String::from(why) }
            }
            "abandoned" => {
                let name = String::from(w.next()?);
                let received = num(w.next().map(|s| s.trim_start_matches('(')))? as u32;
                let chunks = match (w.next(), num(w.next())) {
                    (Some("of"), Some(n)) => n as u32,
                    _ => return None,
                };
                Reply::Abandoned { name, received, chunks }
            }
            "error:" => Reply::Error(String::from(rest)),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        // The "check" value of CRC-32/ISO-HDLC (the zlib CRC) over "123456789".
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn base64_round_trips_and_matches_rfc4648_vectors() {
        // RFC 4648 §10 test vectors.
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(plain.as_bytes()), enc);
            let mut out = [0u8; 8];
            let n = base64_decode(enc.as_bytes(), &mut out).unwrap();
            assert_eq!(&out[..n], plain.as_bytes());
        }
        let all: Vec<u8> = (0..=255u8).collect();
        let mut out = [0u8; 256];
        let n = base64_decode(base64_encode(&all).as_bytes(), &mut out).unwrap();
        assert_eq!(&out[..n], &all[..]);
    }

    #[test]
    fn bad_base64_is_refused_specifically() {
        let mut out = [0u8; 8];
        assert_eq!(base64_decode(b"Zm9", &mut out), Err(ChunkError::Base64Length(3)));
        assert_eq!(base64_decode(b"Zm=vYmFy", &mut out), Err(ChunkError::Base64Padding));
        assert_eq!(base64_decode(b"Zm9v!mFy", &mut out), Err(ChunkError::Base64Char(b'!')));
        assert_eq!(base64_decode(b"Zm9vYmFyZm9v", &mut out), Err(ChunkError::TooLong));
    }

    #[test]
    fn data_lines_round_trip_and_damage_names_the_chunk() {
        let data: Vec<u8> = (0..CHUNK).map(|i| (i * 7) as u8).collect();
        let line = chunk_line(41, &data);
        assert!(line.len() <= MAX_DATA_LINE, "a full chunk fits a data line: {}", line.len());
        let mut out = [0u8; CHUNK];
        assert_eq!(
            parse_data_line(line.as_bytes(), &mut out),
            Ok(DataLine::Chunk { index: 41, len: CHUNK })
        );
        assert_eq!(&out[..], &data[..]);
        // One character changed in the payload: the CRC catches it and names chunk 41.
        let mut bad = line.clone().into_bytes();
        let k = bad.len() - 10;
        bad[k] = if bad[k] == b'A' { b'B' } else { b'A' };
        assert!(matches!(parse_data_line(&bad, &mut out), Err((Some(41), ChunkError::Crc { .. }))));
        // A byte lost: the base64 length is wrong, still chunk 41.
        let mut short = line.clone().into_bytes();
        short.remove(30);
        assert!(matches!(parse_data_line(&short, &mut out), Err((Some(41), _))));
        assert_eq!(parse_data_line(b"#end", &mut out), Ok(DataLine::End));
        assert_eq!(parse_data_line(b"#abort", &mut out), Ok(DataLine::Abort));
        assert_eq!(parse_data_line(b"#x 0 AAAA", &mut out), Err((None, ChunkError::Malformed)));
        assert_eq!(parse_data_line(b"#3", &mut out), Err((Some(3), ChunkError::Malformed)));
        let huge = alloc::vec![b'A'; MAX_DATA_LINE + 1];
        assert_eq!(parse_data_line(&huge, &mut out), Err((None, ChunkError::LineTooLong)));
    }

    #[test]
    fn chunks_track_what_arrived() {
        let mut c = Chunks::new(2 * CHUNK as u64 + 5);
        assert_eq!(c.count(), 3);
        assert_eq!(c.span(2), Some((2 * CHUNK as u64, 5)));
        assert_eq!(c.span(3), None);
        assert_eq!(c.first_missing(), 0);
        c.mark(0);
        c.mark(0);
        assert_eq!(c.received(), 1, "a chunk received twice counts once");
        c.mark(2);
        assert_eq!(c.first_missing(), 1);
        c.mark(1);
        assert_eq!(c.first_missing(), 3);
        c.mark(99);
        assert_eq!(c.received(), 3, "an index past the end is not counted");
        let mut big = Chunks::new(130 * CHUNK as u64);
        for i in 0..130 {
            big.mark(i);
        }
        assert_eq!(big.first_missing(), 130);
    }

    #[test]
    fn replies_print_and_parse_back() {
        for r in [
            Reply::Ready { name: "hello".into(), size: 9000, chunks: 3, from: 0 },
            Reply::Ok(7),
            Reply::Resend { index: 2, why: "crc32 00000000, the line says 12345678".into() },
            Reply::Missing { index: 4, missing: 2 },
            Reply::Kept { name: "hello".into(), size: 9000, sha256: "ab".repeat(32) },
            Reply::Refused { name: "hello".into(), why: "it does not fit: x".into() },
            Reply::Abandoned { name: "hello".into(), received: 1, chunks: 3 },
            Reply::Error("no transfer under way".into()),
        ] {
            let line = alloc::format!("mk> {r}");
            assert_eq!(Reply::parse(&line), Some(r.clone()), "{line}");
        }
        assert_eq!(Reply::parse("[hello] load: nothing"), None);
        assert_eq!(Reply::parse("[hello] load: ok 3"), None, "an instance cannot answer");
    }

    #[test]
    fn sha256_and_hex_digests() {
        // FIPS 180-4 example "abc".
        let d = sha256(b"abc");
        let h = hex(&d);
        assert_eq!(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(parse_hex_digest(&h), Some(d));
        assert_eq!(parse_hex_digest("xyz"), None);
        assert_eq!(parse_hex_digest(&"g".repeat(64)), None);
    }
}
