//! Manifests: the TOML file a user writes to say which kernels to start, and how.
//!
//! The manager never parses TOML. xtask reads a manifest here, checks everything that can be
//! checked on the host, and packs the result into a boot bundle (`platform::bundle`), the
//! compact binary form the manager reads from its ramdisk. `docs/manifest.md` is the user's
//! reference; `multikernel.example.toml` is a commented example.
//!
//! # Design
//! - Parsing keeps byte spans: the document is parsed into toml's spanned tree
//!   ([`DeTable::parse_recoverable`], which reports every syntax error), then the top level, the
//!   `[settings]` table and each `[[instance]]` table are deserialized separately with serde and
//!   `deny_unknown_fields`, every field as a [`Spanned`] value. So one bad instance does not hide
//!   the errors of the next, and every message can say `file:line:column`.
//! - [`load`] collects **all** errors before returning ([`ManifestErrors`]); nothing is
//!   reported one at a time.
//! - What is checked here: field types and unknown fields; names (present, unique, fit the
//!   bundle); exactly one of `payload` / `image`; payload names; CPUs given twice; sizes, bases
//!   and their alignment; argument length; restart policy combinations; image files exist and
//!   the loader accepts them inside the instance's usable memory ([`load`]); the payloads' built
//!   ELFs likewise, and the bundle's own limits ([`to_bundle`]).
//! - What is **not** checked here: whether a CPU exists and can be started, and whether the
//!   memory fits the machine's memory map. Only the manager knows the machine; it refuses such an
//!   instance at boot, before sending any IPI.
//!
//! # Invariants
//! A [`Manifest`] returned by [`load`] has at least one instance, unique non-empty names of at
//! most [`NAME_MAX`] bytes, unique explicit CPUs, memory sizes that are page multiples of at
//! least [`min_memory`], bases that are non-zero and aligned to
//! `platform::partition::DEFAULT_INSTANCE_ALIGN`, and images that the loader accepts.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use bootproto::layout::{DEFAULT_STACK_BYTES, PAGE, SHARED_BYTES};
use platform::bundle::{self, Bundle, File, Instance, Restart, Settings, CPU_AUTO};
use platform::partition::DEFAULT_INSTANCE_ALIGN;
use serde::de::{IgnoredAny, IntoDeserializer};
use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::payloads::Payload;

/// Longest instance name, in bytes (the bundle's field keeps a terminating NUL for C readers).
pub const NAME_MAX: usize = bundle::NAME_LEN - 1;
/// Longest argument string, in bytes (likewise).
pub const ARGS_MAX: usize = bundle::ARGS_LEN - 1;

/// Where the loader is asked to place a position-independent image when checking it on the
/// host: any 2 MiB-aligned address works, since the manager chooses the real one at boot.
const REPRESENTATIVE_BASE: u64 = 0x1000_0000;

/// Restarts allowed by default with `restart = "on-failure"`.
const DEFAULT_MAX_RESTARTS: u32 = 3;

/// The smallest `memory` an instance can have: the shared pages, the stack, and one page for
/// the image (the loader then checks the real image against what is left).
pub const fn min_memory() -> u64 {
    SHARED_BYTES + DEFAULT_STACK_BYTES + PAGE
}

/// A validated manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The file as the user named it (used in messages).
    pub path: PathBuf,
    pub settings: Settings,
    pub instances: Vec<InstanceSpec>,
}

/// What an instance runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// A payload of this repository, built by xtask.
    Payload(String),
    /// An ELF file, read (and checked by the loader) when the manifest was loaded.
    Image { path: PathBuf, bytes: Vec<u8> },
}

/// One `[[instance]]`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceSpec {
    pub name: String,
    pub kernel: Kernel,
    /// APIC ID, or `None` for the next free CPU.
    pub cpu: Option<u32>,
    pub memory: u64,
    pub base: Option<u64>,
    pub args: String,
    pub restart: Restart,
    pub max_restarts: u32,
    pub heartbeat_timeout_ms: Option<u32>,
    /// Whether the kernel reports in through the boot protocol (`boot_protocol = false` for an
    /// image built without the payload SDK or the C header: it is healthy once started).
    pub boot_protocol: bool,
    /// Line and column of the `payload` or `image` value, for errors found by [`to_bundle`].
    kernel_at: (usize, usize),
}

impl InstanceSpec {
    /// One line for `cargo xtask check`.
    pub fn summary(&self) -> String {
        let kernel = match &self.kernel {
            Kernel::Payload(p) => format!("payload {p}"),
            Kernel::Image { path, .. } => format!("image {}", path.display()),
        };
        let cpu = self.cpu.map_or("auto".to_string(), |c| c.to_string());
        let base = self.base.map_or("auto".to_string(), |b| format!("{b:#x}"));
        let restart = match self.restart {
            Restart::Never => "never".to_string(),
            Restart::OnFailure => format!("on-failure (at most {})", self.max_restarts),
        };
        let heartbeat =
            self.heartbeat_timeout_ms.map_or("off".to_string(), |ms| format!("{ms} ms"));
        format!(
            "{name}: {kernel}, cpu {cpu}, memory {mem}, base {base}, restart {restart}, \
             heartbeat timeout {heartbeat}, args {args:?}",
            name = self.name,
            mem = size_text(self.memory),
            args = self.args,
        )
    }
}

/// The settings as a manifest writes them, for `cargo xtask check`.
pub fn settings_summary(s: &Settings) -> String {
    let level = match s.log_level {
        0 => "error",
        1 => "warn",
        2 => "info",
        3 => "debug",
        _ => "trace",
    };
    format!("boot_timeout_ms {}, run_ms {}, log_level {level}", s.checkin_timeout_ms, s.run_ms)
}

/// `8M`, `1G`, `96K` or a byte count.
fn size_text(bytes: u64) -> String {
    for (unit, shift) in [("G", 30), ("M", 20), ("K", 10)] {
        if bytes != 0 && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// One problem, located in the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    pub file: PathBuf,
    /// 1-based line and column (in characters), when the problem has a place in the file.
    pub at: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some((line, column)) => {
                write!(f, "{}:{line}:{column}: {}", self.file.display(), self.message)
            }
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Every problem found in a manifest, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestErrors(pub Vec<ManifestError>);

impl fmt::Display for ManifestErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ManifestErrors {}

/// The manifest text, for turning byte offsets into places and collecting errors.
struct Source<'a> {
    path: &'a Path,
    text: &'a str,
    errors: Vec<(usize, ManifestError)>,
}

impl<'a> Source<'a> {
    fn new(path: &'a Path, text: &'a str) -> Self {
        Source { path, text, errors: Vec::new() }
    }

    /// 1-based line and column (in characters) of byte `offset`.
    fn place(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or(self.text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
        (line, column)
    }

    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let at = Some(self.place(span.start));
        let message = message.into();
        self.errors.push((span.start, ManifestError { file: self.path.into(), at, message }));
    }

    fn finish(mut self) -> ManifestErrors {
        self.errors.sort_by_key(|(offset, _)| *offset);
        ManifestErrors(self.errors.into_iter().map(|(_, e)| e).collect())
    }
}

// The manifest as written. Every field is optional here, so that a missing one becomes a
// located message of ours rather than serde's first-and-only error.

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a manifest with [settings] and [[instance]] tables")]
struct RawTop {
    #[allow(dead_code)]
    settings: Option<IgnoredAny>,
    #[allow(dead_code)]
    instance: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [settings] table")]
struct RawSettings {
    boot_timeout_ms: Option<Spanned<u32>>,
    run_ms: Option<u32>,
    log_level: Option<LogLevel>,
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum LogLevel {
    // The values are the bundle's (`platform::bundle::Settings::log_level`).
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
    Trace = 4,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an [[instance]] table")]
struct RawInstance {
    name: Option<Spanned<String>>,
    payload: Option<Spanned<String>>,
    image: Option<Spanned<String>>,
    cpu: Option<Spanned<u32>>,
    memory: Option<Spanned<Number>>,
    base: Option<Spanned<Number>>,
    args: Option<Spanned<String>>,
    restart: Option<RestartPolicy>,
    max_restarts: Option<Spanned<u32>>,
    heartbeat_timeout_ms: Option<Spanned<u32>>,
    boot_protocol: Option<bool>,
}

#[derive(Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum RestartPolicy {
    Never,
    OnFailure,
}

/// A size or address: an integer, or text such as `"32M"` or `"0x4000000"`. Parsed after
/// deserializing, so that a bad one gets a message that says what the field wants.
#[derive(Clone, Debug)]
enum Number {
    Integer(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NumberVisitor;
        impl serde::de::Visitor<'_> for NumberVisitor {
            type Value = Number;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer or a string such as \"32M\" or \"0x4000000\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Number, E> {
                Ok(Number::Integer(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Number, E> {
                Ok(i64::try_from(v).map_or_else(|_| Number::Text(v.to_string()), Number::Integer))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Number, E> {
                Ok(Number::Text(v.to_string()))
            }
        }
        deserializer.deserialize_any(NumberVisitor)
    }
}

impl Number {
    fn value(&self) -> Option<u64> {
        match self {
            Number::Integer(i) => u64::try_from(*i).ok(),
            Number::Text(t) => loader::parse_number(t).ok(),
        }
    }
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Number::Integer(i) => write!(f, "{i}"),
            Number::Text(t) => write!(f, "{t:?}"),
        }
    }
}

/// Reads and checks the manifest at `path`; image paths are relative to its directory.
pub fn load(path: &Path) -> Result<Manifest, ManifestErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ManifestErrors(vec![ManifestError {
            file: path.into(),
            at: None,
            message: format!("cannot read the manifest: {e}"),
        }])
    })?;
    let dir = path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
    parse(path, &text, &dir)
}

/// Checks manifest `text` (named `path` in messages; images are looked up under `dir`).
pub fn parse(path: &Path, text: &str, dir: &Path) -> Result<Manifest, ManifestErrors> {
    let mut src = Source::new(path, text);
    let (doc, syntax_errors) = DeTable::parse_recoverable(text);
    if !syntax_errors.is_empty() {
        for e in syntax_errors {
            src.error(e.span().unwrap_or(0..0), format!("TOML syntax: {}", e.message()));
        }
        return Err(src.finish());
    }
    let doc_span = doc.span();
    if let Err(e) = RawTop::deserialize(toml::de::Deserializer::from(doc.clone())) {
        src.error(e.span().unwrap_or(doc_span.clone()), e.message().to_string());
    }
    let table = doc.get_ref();
    let settings = match table.get("settings") {
        Some(v) => check_settings(&mut src, v),
        None => Settings::default(),
    };
    let mut instances = Vec::new();
    match table.get("instance") {
        None => src.error(
            text.len()..text.len(),
            "the manifest starts no instances: add an [[instance]] table for each kernel",
        ),
        Some(v) => match v.get_ref().as_array() {
            Some(items) if items.is_empty() => {
                src.error(v.span(), "the manifest starts no instances")
            }
            Some(items) => {
                if items.len() > bundle::MAX_INSTANCES {
                    src.error(
                        v.span(),
                        format!(
                            "{} instances given; a boot bundle holds at most {}",
                            items.len(),
                            bundle::MAX_INSTANCES
                        ),
                    );
                }
                for (index, item) in items.iter().enumerate() {
                    if let Some(inst) = check_instance(&mut src, dir, index, item) {
                        instances.push(inst);
                    }
                }
                check_unique(&mut src, &instances);
            }
            None => src.error(
                v.span(),
                "`instance` must be a list of tables: write one [[instance]] table per kernel",
            ),
        },
    }
    if !src.errors.is_empty() {
        return Err(src.finish());
    }
    let instances = instances.into_iter().map(|c| c.spec).collect();
    Ok(Manifest { path: path.into(), settings, instances })
}

fn check_settings(src: &mut Source<'_>, value: &Spanned<DeValue<'_>>) -> Settings {
    let mut settings = Settings::default();
    let raw = match RawSettings::deserialize(value.clone().into_deserializer()) {
        Ok(raw) => raw,
        Err(e) => {
            src.error(e.span().unwrap_or(value.span()), format!("settings: {}", e.message()));
            return settings;
        }
    };
    if let Some(t) = raw.boot_timeout_ms {
        if *t.get_ref() == 0 {
            src.error(t.span(), "settings: boot_timeout_ms must be at least 1");
        }
        settings.checkin_timeout_ms = t.into_inner();
    }
    if let Some(ms) = raw.run_ms {
        settings.run_ms = ms;
    }
    if let Some(level) = raw.log_level {
        settings.log_level = level as u32;
    }
    settings
}

/// An instance that passed its own checks, with the places the cross-checks point at.
struct Checked {
    spec: InstanceSpec,
    name_span: Range<usize>,
    cpu_span: Option<Range<usize>>,
}

/// Checks one `[[instance]]` table; reports its problems and returns it if it had none.
fn check_instance(
    src: &mut Source<'_>,
    dir: &Path,
    index: usize,
    value: &Spanned<DeValue<'_>>,
) -> Option<Checked> {
    let table_span = value.span();
    let declared_name = value.get_ref().get("name").and_then(|n| n.get_ref().as_str());
    let who = match declared_name {
        Some(n) => format!("instance '{n}'"),
        None => format!("instance #{}", index + 1),
    };
    let raw = match RawInstance::deserialize(value.clone().into_deserializer()) {
        Ok(raw) => raw,
        Err(e) => {
            src.error(e.span().unwrap_or(table_span), format!("{who}: {}", e.message()));
            return None;
        }
    };
    let before = src.errors.len();

    let name = match raw.name {
        None => {
            src.error(table_span.clone(), format!("{who}: `name` is missing"));
            None
        }
        Some(n) => {
            let bad = if n.get_ref().is_empty() {
                Some("must not be empty".to_string())
            } else if n.get_ref().len() > NAME_MAX {
                Some(format!("is {} bytes long; at most {NAME_MAX} fit", n.get_ref().len()))
            } else if n.get_ref().chars().any(char::is_control) {
                Some("must not contain control characters".to_string())
            } else {
                None
            };
            if let Some(why) = bad {
                src.error(n.span(), format!("instance name {:?} {why}", n.get_ref()));
            }
            Some(n)
        }
    };

    let memory = match &raw.memory {
        None => {
            src.error(
                table_span.clone(),
                format!("{who}: `memory` is missing (e.g. memory = \"32M\")"),
            );
            None
        }
        Some(m) => match m.get_ref().value() {
            None => {
                src.error(
                    m.span(),
                    format!(
                        "{who}: memory {} is not a size (use e.g. 32M, 1G, or a byte count)",
                        m.get_ref()
                    ),
                );
                None
            }
            Some(bytes) if bytes < min_memory() => {
                src.error(
                    m.span(),
                    format!(
                        "{who}: memory {} is too small: an instance needs at least {} \
                         ({} of shared pages, a {} stack and its image)",
                        m.get_ref(),
                        size_text(min_memory()),
                        size_text(SHARED_BYTES),
                        size_text(DEFAULT_STACK_BYTES)
                    ),
                );
                None
            }
            Some(bytes) if !bytes.is_multiple_of(PAGE) => {
                src.error(
                    m.span(),
                    format!("{who}: memory {} is not a multiple of 4K", m.get_ref()),
                );
                None
            }
            Some(bytes) => Some(bytes),
        },
    };

    let base = match &raw.base {
        None => None,
        Some(b) => match b.get_ref().value() {
            None => {
                src.error(
                    b.span(),
                    format!(
                        "{who}: base {} is not an address (use e.g. \"0x4000000\" or an integer)",
                        b.get_ref()
                    ),
                );
                None
            }
            Some(0) => {
                src.error(
                    b.span(),
                    format!("{who}: base 0 is not allowed (leave `base` out to place it anywhere)"),
                );
                None
            }
            Some(addr) if !addr.is_multiple_of(DEFAULT_INSTANCE_ALIGN) => {
                src.error(
                    b.span(),
                    format!(
                        "{who}: base {addr:#x} is not aligned to {} ({DEFAULT_INSTANCE_ALIGN:#x})",
                        size_text(DEFAULT_INSTANCE_ALIGN)
                    ),
                );
                None
            }
            Some(addr) => {
                if let Some(size) = memory {
                    if addr.checked_add(size).is_none() {
                        src.error(
                            b.span(),
                            format!("{who}: base {addr:#x} + memory {size:#x} overflows 64 bits"),
                        );
                    }
                }
                Some(addr)
            }
        },
    };

    if let Some(c) = &raw.cpu {
        if *c.get_ref() == CPU_AUTO {
            src.error(
                c.span(),
                format!("{who}: cpu {CPU_AUTO} is reserved (leave `cpu` out for any free CPU)"),
            );
        }
    }

    let args = match raw.args {
        None => String::new(),
        Some(a) => {
            if a.get_ref().len() > ARGS_MAX {
                src.error(
                    a.span(),
                    format!(
                        "{who}: args is {} bytes long; at most {ARGS_MAX} fit",
                        a.get_ref().len()
                    ),
                );
            } else if a.get_ref().contains('\0') {
                src.error(a.span(), format!("{who}: args must not contain NUL characters"));
            }
            a.into_inner()
        }
    };

    let policy = raw.restart.unwrap_or(RestartPolicy::Never);
    let (restart, max_restarts) = match (policy, raw.max_restarts) {
        (RestartPolicy::Never, None) => (Restart::Never, 0),
        (RestartPolicy::Never, Some(m)) if *m.get_ref() == 0 => (Restart::Never, 0),
        (RestartPolicy::Never, Some(m)) => {
            src.error(
                m.span(),
                format!(
                    "{who}: max_restarts {} needs restart = \"on-failure\" (the policy is \"never\")",
                    m.get_ref()
                ),
            );
            (Restart::Never, 0)
        }
        (RestartPolicy::OnFailure, None) => (Restart::OnFailure, DEFAULT_MAX_RESTARTS),
        (RestartPolicy::OnFailure, Some(m)) if *m.get_ref() == 0 => {
            src.error(
                m.span(),
                format!(
                    "{who}: max_restarts 0 with restart = \"on-failure\" never restarts: \
                     use restart = \"never\", or allow at least 1"
                ),
            );
            (Restart::OnFailure, 0)
        }
        (RestartPolicy::OnFailure, Some(m)) => (Restart::OnFailure, m.into_inner()),
    };

    let heartbeat_timeout_ms = match raw.heartbeat_timeout_ms {
        None => None,
        Some(h) if *h.get_ref() == 0 => {
            src.error(
                h.span(),
                format!("{who}: heartbeat_timeout_ms must be at least 1 (leave it out for none)"),
            );
            None
        }
        Some(h) => Some(h.into_inner()),
    };

    let (kernel, kernel_span) = match (raw.payload, raw.image) {
        (Some(p), Some(i)) => {
            src.error(
                i.span(),
                format!(
                    "{who}: both `payload` ({:?}) and `image` ({:?}) are given; choose one",
                    p.get_ref(),
                    i.get_ref()
                ),
            );
            (None, i.span())
        }
        (None, None) => {
            src.error(
                table_span.clone(),
                format!(
                    "{who}: give either `payload` (one of {}) or `image` (an ELF file)",
                    known_payloads()
                ),
            );
            (None, table_span.clone())
        }
        (Some(p), None) => {
            if !crate::payloads::names().any(|n| n == p.get_ref()) {
                src.error(
                    p.span(),
                    format!(
                        "{who}: payload {:?} is not one of this repository's payloads ({})",
                        p.get_ref(),
                        known_payloads()
                    ),
                );
            }
            let span = p.span();
            (Some(Kernel::Payload(p.into_inner())), span)
        }
        (None, Some(i)) => {
            let span = i.span();
            let kernel = read_image(src, dir, &who, &i, memory, base);
            (kernel, span)
        }
    };

    if src.errors.len() != before {
        return None;
    }
    let (name, memory, kernel) = (name?, memory?, kernel?);
    let name_span = name.span();
    Some(Checked {
        spec: InstanceSpec {
            name: name.into_inner(),
            kernel,
            cpu: raw.cpu.as_ref().map(|c| *c.get_ref()),
            memory,
            base,
            args,
            restart,
            max_restarts,
            heartbeat_timeout_ms,
            boot_protocol: raw.boot_protocol.unwrap_or(true),
            kernel_at: src.place(kernel_span.start),
        },
        name_span,
        cpu_span: raw.cpu.map(|c| c.span()),
    })
}

/// The payload names, for messages.
fn known_payloads() -> String {
    crate::payloads::names().collect::<Vec<_>>().join(", ")
}

/// Reads an `image` file and, when the memory size is known, has the loader check it.
fn read_image(
    src: &mut Source<'_>,
    dir: &Path,
    who: &str,
    image: &Spanned<String>,
    memory: Option<u64>,
    base: Option<u64>,
) -> Option<Kernel> {
    let relative = PathBuf::from(image.get_ref());
    let full = dir.join(&relative);
    let bytes = match std::fs::read(&full) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let looked = std::path::absolute(&full).unwrap_or(full);
            src.error(
                image.span(),
                format!(
                    "{who}: image {:?} not found (looked in {})",
                    image.get_ref(),
                    looked.display()
                ),
            );
            return None;
        }
        Err(e) => {
            src.error(
                image.span(),
                format!("{who}: image {:?} cannot be read: {e}", image.get_ref()),
            );
            return None;
        }
    };
    if let Some(memory) = memory {
        if let Err(why) = loader_check(&bytes, memory, base) {
            src.error(image.span(), format!("{who}: image refused by the loader: {why}"));
            return None;
        }
    }
    Some(Kernel::Image { path: relative, bytes })
}

/// Plans `image` the way the manager will (`prepare` in the kernel's supervisor): in the
/// instance's region below its stack and shared pages.
fn loader_check(image: &[u8], memory: u64, base: Option<u64>) -> Result<(), String> {
    let usable = memory.saturating_sub(SHARED_BYTES + DEFAULT_STACK_BYTES);
    let region = loader::Region::new(base.unwrap_or(REPRESENTATIVE_BASE), usable);
    match loader::plan(image, region) {
        Ok(_) => Ok(()),
        Err(e) => {
            // ELF gABI, "ELF Header": e_type 2 is ET_EXEC, an image linked at fixed addresses.
            let fixed = image.get(16..18) == Some([2, 0].as_slice());
            if fixed && base.is_none() {
                Err(format!(
                    "{e} (it is linked at fixed addresses (ET_EXEC): set `base` to the region \
                     it was linked for)"
                ))
            } else {
                Err(e.to_string())
            }
        }
    }
}

/// Names and explicit CPUs must be unique across instances.
fn check_unique(src: &mut Source<'_>, instances: &[Checked]) {
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut cpus: HashMap<u32, &str> = HashMap::new();
    for c in instances {
        let name = c.spec.name.as_str();
        match names.get(name) {
            Some(&first) => {
                let (line, _) = src.place(first);
                src.error(
                    c.name_span.clone(),
                    format!("instance name '{name}' is used twice (first at line {line})"),
                );
            }
            None => {
                names.insert(name, c.name_span.start);
            }
        }
        if let (Some(cpu), Some(span)) = (c.spec.cpu, &c.cpu_span) {
            match cpus.get(&cpu) {
                Some(&owner) => src.error(
                    span.clone(),
                    format!("cpu {cpu} is given to both '{owner}' and '{name}'"),
                ),
                None => {
                    cpus.insert(cpu, name);
                }
            }
        }
    }
}

/// The boot bundle for `manifest`, with the payloads' ELFs from `payloads`. Checks each
/// payload with the loader against its instance's memory, and the bundle's own limits.
pub fn to_bundle(manifest: &Manifest, payloads: &[Payload]) -> Result<Bundle, ManifestErrors> {
    let mut errors = Vec::new();
    let error = |at: Option<(usize, usize)>, message: String| ManifestError {
        file: manifest.path.clone(),
        at,
        message,
    };
    let mut bundle = Bundle { settings: manifest.settings.clone(), ..Bundle::default() };
    // Files are shared between instances that run the same payload or image.
    let mut file_index: HashMap<(bool, String), u32> = HashMap::new();
    for inst in &manifest.instances {
        let who = format!("instance '{}'", inst.name);
        let (key, file_name, bytes) = match &inst.kernel {
            Kernel::Payload(name) => {
                let Some(p) = payloads.iter().find(|p| p.name == name) else {
                    errors.push(error(
                        Some(inst.kernel_at),
                        format!("{who}: payload {name:?} was not built"),
                    ));
                    continue;
                };
                let bytes = match std::fs::read(&p.path) {
                    Ok(b) => b,
                    Err(e) => {
                        errors.push(error(
                            Some(inst.kernel_at),
                            format!("{who}: cannot read payload {}: {e}", p.path.display()),
                        ));
                        continue;
                    }
                };
                if let Err(why) = loader_check(&bytes, inst.memory, inst.base) {
                    errors.push(error(
                        Some(inst.kernel_at),
                        format!("{who}: payload {name:?} refused by the loader: {why}"),
                    ));
                    continue;
                }
                ((false, name.clone()), name.clone(), bytes)
            }
            Kernel::Image { path, bytes } => {
                let file_name = path
                    .file_name()
                    .map_or_else(|| "image".to_string(), |n| n.to_string_lossy().into_owned());
                ((true, path.display().to_string()), truncate(&file_name, NAME_MAX), bytes.clone())
            }
        };
        let file = match file_index.get(&key) {
            Some(&i) => i,
            None => {
                bundle.files.push(File { name: file_name, data: bytes });
                let i = (bundle.files.len() - 1) as u32;
                file_index.insert(key, i);
                i
            }
        };
        bundle.instances.push(Instance {
            name: inst.name.clone(),
            file,
            cpu: inst.cpu.unwrap_or(CPU_AUTO),
            memory: inst.memory,
            base: inst.base,
            restart: inst.restart,
            max_restarts: inst.max_restarts,
            heartbeat_timeout_ms: inst.heartbeat_timeout_ms.unwrap_or(0),
            boot_protocol: inst.boot_protocol,
            args: inst.args.clone(),
        });
    }
    if errors.is_empty() {
        if let Err(e) = bundle.encode() {
            errors.push(error(None, format!("cannot make a boot bundle: {e}")));
        }
    }
    if errors.is_empty() {
        Ok(bundle)
    } else {
        Err(ManifestErrors(errors))
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `text` as `m.toml`, with images looked up in `dir`.
    fn parse_in(text: &str, dir: &Path) -> Result<Manifest, Vec<String>> {
        parse(Path::new("m.toml"), text, dir)
            .map_err(|e| e.0.iter().map(ToString::to_string).collect())
    }

    fn check(text: &str) -> Result<Manifest, Vec<String>> {
        parse_in(text, Path::new("/nonexistent"))
    }

    /// The single error `text` gives.
    fn one_error(text: &str) -> String {
        let errors = check(text).expect_err("the manifest should be refused");
        assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
        errors.into_iter().next().unwrap_or_default()
    }

    /// A scratch directory of its own for one test.
    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("xtask-manifest-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a scratch directory");
        dir
    }

    const VALID: &str = r#"
[settings]
boot_timeout_ms = 500
run_ms = 0
log_level = "debug"

[[instance]]
name = "hello"
payload = "hello"
memory = "8M"
args = "ticks=5"

[[instance]]
name = "crunch"
payload = "compute"
cpu = 3
memory = 16777216
base = "0x4000000"
restart = "on-failure"
heartbeat_timeout_ms = 250

[[instance]]
name = "c"
payload = "hello-c"
memory = "1G"
base = 0x8000_0000
restart = "on-failure"
max_restarts = 7
"#;

    #[test]
    fn a_valid_manifest_gives_every_field_and_default() {
        let m = check(VALID).expect("valid");
        assert_eq!(
            m.settings,
            Settings { run_ms: 0, checkin_timeout_ms: 500, log_level: 3, flags: 0 }
        );
        let [hello, crunch, c] = &m.instances[..] else { panic!("three instances: {m:?}") };
        assert_eq!(hello.name, "hello");
        assert_eq!(hello.kernel, Kernel::Payload("hello".into()));
        assert_eq!((hello.cpu, hello.memory, hello.base), (None, 8 << 20, None));
        assert_eq!(hello.args, "ticks=5");
        assert_eq!(
            (hello.restart, hello.max_restarts, hello.heartbeat_timeout_ms),
            (Restart::Never, 0, None)
        );
        assert_eq!(hello.kernel_at, (9, 11));
        assert_eq!((crunch.cpu, crunch.memory, crunch.base), (Some(3), 16 << 20, Some(0x400_0000)));
        assert_eq!(crunch.args, "");
        assert_eq!(
            (crunch.restart, crunch.max_restarts),
            (Restart::OnFailure, DEFAULT_MAX_RESTARTS)
        );
        assert_eq!(crunch.heartbeat_timeout_ms, Some(250));
        assert_eq!((c.memory, c.base, c.max_restarts), (1 << 30, Some(0x8000_0000), 7));
        assert_eq!(
            crunch.summary(),
            "crunch: payload compute, cpu 3, memory 16M, base 0x4000000, restart on-failure \
             (at most 3), heartbeat timeout 250 ms, args \"\""
        );
    }

    #[test]
    fn settings_are_optional() {
        let m = check("[[instance]]\nname = \"a\"\npayload = \"hello\"\nmemory = \"8M\"\n")
            .expect("valid");
        assert_eq!(m.settings, Settings::default());
        assert_eq!(m.settings.run_ms, 3000);
        assert_eq!(m.settings.checkin_timeout_ms, 1000);
        assert_eq!(m.settings.log_level, 2);
    }

    #[test]
    fn an_unknown_field_is_named_with_its_place() {
        let e = one_error(
            "[[instance]]\nname = \"a\"\npayload = \"hello\"\nmemory = \"8M\"\ncolour = \"red\"\n",
        );
        assert!(
            e.starts_with("m.toml:5:1: instance 'a': unknown field `colour`, expected one of"),
            "{e}"
        );
        let e = one_error("[setings]\nrun_ms = 1\n[[instance]]\nname = \"a\"\npayload = \"hello\"\nmemory = \"8M\"\n");
        assert!(e.starts_with("m.toml:1:2: unknown field `setings`, expected"), "{e}");
        let e = one_error("[settings]\nrun_secs = 1\n[[instance]]\nname = \"a\"\npayload = \"hello\"\nmemory = \"8M\"\n");
        assert!(e.starts_with("m.toml:2:1: settings: unknown field `run_secs`"), "{e}");
    }

    #[test]
    fn wrong_types_and_values_are_located() {
        let e = one_error("[settings]\nlog_level = \"loud\"\n[[instance]]\nname = \"a\"\npayload = \"hello\"\nmemory = \"8M\"\n");
        assert!(e.starts_with("m.toml:2:13: settings: unknown variant `loud`"), "{e}");
        let e = one_error(
            "[[instance]]\nname = \"a\"\npayload = \"hello\"\nmemory = \"8M\"\ncpu = \"one\"\n",
        );
        assert!(e.starts_with("m.toml:5:7: instance 'a': invalid type: string \"one\""), "{e}");
    }

    #[test]
    fn syntax_errors_are_located() {
        let errors = check("[[instance]]\nname = \"a\nmemory = 8M\n").expect_err("refused");
        assert!(!errors.is_empty());
        assert!(errors[0].starts_with("m.toml:2:"), "{errors:#?}");
        assert!(errors[0].contains("TOML syntax"), "{errors:#?}");
    }

    #[test]
    fn a_missing_name_is_reported_at_its_table() {
        let e = one_error("[[instance]]\npayload = \"hello\"\nmemory = \"8M\"\n");
        assert_eq!(e, "m.toml:1:1: instance #1: `name` is missing");
    }

    #[test]
    fn payload_and_image_exclude_each_other() {
        let e = one_error(
            "[[instance]]\nname = \"a\"\npayload = \"hello\"\nimage = \"k.elf\"\nmemory = \"8M\"\n",
        );
        assert_eq!(
            e,
            "m.toml:4:9: instance 'a': both `payload` (\"hello\") and `image` (\"k.elf\") are \
             given; choose one"
        );
        let e = one_error("[[instance]]\nname = \"a\"\nmemory = \"8M\"\n");
        assert_eq!(
            e,
            "m.toml:1:1: instance 'a': give either `payload` (one of hello, compute, fault, \
             hello-c) or `image` (an ELF file)"
        );
        let e = one_error("[[instance]]\nname = \"a\"\npayload = \"hallo\"\nmemory = \"8M\"\n");
        assert_eq!(
            e,
            "m.toml:3:11: instance 'a': payload \"hallo\" is not one of this repository's \
             payloads (hello, compute, fault, hello-c)"
        );
    }

    #[test]
    fn duplicate_names_point_at_both() {
        let e = one_error(
            "[[instance]]\nname = \"hello\"\npayload = \"hello\"\nmemory = \"8M\"\n\n\
             [[instance]]\nname = \"hello\"\npayload = \"compute\"\nmemory = \"8M\"\n",
        );
        assert_eq!(e, "m.toml:7:8: instance name 'hello' is used twice (first at line 2)");
    }

    #[test]
    fn duplicate_cpus_name_both_instances() {
        let e = one_error(
            "[[instance]]\nname = \"a\"\npayload = \"hello\"\ncpu = 5\nmemory = \"8M\"\n\n\
             [[instance]]\nname = \"b\"\npayload = \"hello\"\ncpu = 5\nmemory = \"8M\"\n",
        );
        assert_eq!(e, "m.toml:10:7: cpu 5 is given to both 'a' and 'b'");
        let e = one_error(
            "[[instance]]\nname = \"a\"\npayload = \"hello\"\ncpu = 4294967295\nmemory = \"8M\"\n",
        );
        assert!(e.starts_with("m.toml:4:7: instance 'a': cpu 4294967295 is reserved"), "{e}");
    }

    #[test]
    fn sizes_must_parse_fit_and_be_page_multiples() {
        let inst = |memory: &str| {
            format!("[[instance]]\nname = \"a\"\npayload = \"hello\"\nmemory = {memory}\n")
        };
        assert_eq!(
            one_error(&inst("\"12Q\"")),
            "m.toml:4:10: instance 'a': memory \"12Q\" is not a size (use e.g. 32M, 1G, or a byte count)"
        );
        assert_eq!(
            one_error(&inst("-5")),
            "m.toml:4:10: instance 'a': memory -5 is not a size (use e.g. 32M, 1G, or a byte count)"
        );
        assert_eq!(
            one_error(&inst("\"64K\"")),
            "m.toml:4:10: instance 'a': memory \"64K\" is too small: an instance needs at least \
             92K (24K of shared pages, a 64K stack and its image)"
        );
        assert_eq!(
            one_error(&inst("1048577")),
            "m.toml:4:10: instance 'a': memory 1048577 is not a multiple of 4K"
        );
        assert_eq!(
            one_error("[[instance]]\nname = \"a\"\npayload = \"hello\"\n"),
            "m.toml:1:1: instance 'a': `memory` is missing (e.g. memory = \"32M\")"
        );
        for ok in ["\"92K\"", "\"0x800000\"", "8388608", "\"2G\"", "\"1_048_576\""] {
            assert!(check(&inst(ok)).is_ok(), "{ok}");
        }
    }

    #[test]
    fn bases_must_be_aligned_nonzero_addresses() {
        let inst = |base: &str| {
            format!(
                "[[instance]]\nname = \"a\"\npayload = \"hello\"\nmemory = \"8M\"\nbase = {base}\n"
            )
        };
        assert_eq!(
            one_error(&inst("\"0xZZ\"")),
            "m.toml:5:8: instance 'a': base \"0xZZ\" is not an address (use e.g. \"0x4000000\" or \
             an integer)"
        );
        assert_eq!(
            one_error(&inst("\"0x4001000\"")),
            "m.toml:5:8: instance 'a': base 0x4001000 is not aligned to 2M (0x200000)"
        );
        assert!(one_error(&inst("0")).contains("base 0 is not allowed"));
        assert!(one_error(&inst("\"0xffffffffffe00000\"")).contains("overflows 64 bits"));
        assert_eq!(check(&inst("\"64M\"")).expect("valid").instances[0].base, Some(64 << 20));
    }

    #[test]
    fn names_and_args_must_fit_the_bundle() {
        let long_args = "x".repeat(ARGS_MAX + 1);
        let e = one_error(&format!(
            "[[instance]]\nname = \"a\"\npayload = \"hello\"\nmemory = \"8M\"\nargs = \"{long_args}\"\n"
        ));
        assert_eq!(e, "m.toml:5:8: instance 'a': args is 256 bytes long; at most 255 fit");
        let fits = "x".repeat(ARGS_MAX);
        assert!(check(&format!(
            "[[instance]]\nname = \"a\"\npayload = \"hello\"\nmemory = \"8M\"\nargs = \"{fits}\"\n"
        ))
        .is_ok());
        let long_name = "n".repeat(NAME_MAX + 1);
        let e = one_error(&format!(
            "[[instance]]\nname = \"{long_name}\"\npayload = \"hello\"\nmemory = \"8M\"\n"
        ));
        assert_eq!(
            e,
            format!("m.toml:2:8: instance name \"{long_name}\" is 32 bytes long; at most 31 fit")
        );
        assert!(one_error("[[instance]]\nname = \"\"\npayload = \"hello\"\nmemory = \"8M\"\n")
            .contains("must not be empty"));
    }

    #[test]
    fn restart_policies() {
        let inst = |extra: &str| {
            format!("[[instance]]\nname = \"a\"\npayload = \"hello\"\nmemory = \"8M\"\n{extra}\n")
        };
        let get = |extra: &str| {
            let m = check(&inst(extra)).expect("valid");
            (m.instances[0].restart, m.instances[0].max_restarts)
        };
        assert_eq!(get(""), (Restart::Never, 0));
        assert_eq!(get("restart = \"never\""), (Restart::Never, 0));
        assert_eq!(get("restart = \"never\"\nmax_restarts = 0"), (Restart::Never, 0));
        assert_eq!(get("restart = \"on-failure\""), (Restart::OnFailure, 3));
        assert_eq!(get("restart = \"on-failure\"\nmax_restarts = 1"), (Restart::OnFailure, 1));
        assert_eq!(
            one_error(&inst("max_restarts = 2")),
            "m.toml:5:16: instance 'a': max_restarts 2 needs restart = \"on-failure\" (the \
             policy is \"never\")"
        );
        assert!(one_error(&inst("restart = \"on-failure\"\nmax_restarts = 0")).starts_with(
            "m.toml:6:16: instance 'a': max_restarts 0 with restart = \"on-failure\""
        ));
        assert!(one_error(&inst("restart = \"always\"")).starts_with(
            "m.toml:5:11: instance 'a': unknown variant `always`, expected `never` or `on-failure`"
        ));
        assert!(one_error(&inst("heartbeat_timeout_ms = 0"))
            .contains("heartbeat_timeout_ms must be at least 1"));
    }

    #[test]
    fn every_error_is_reported_not_just_the_first() {
        let errors = check(
            "[[instance]]\nname = \"a\"\npayload = \"hello\"\nmemory = \"12Q\"\nbogus = 1\n\n\
             [[instance]]\nname = \"b\"\npayload = \"nope\"\nmemory = \"8X\"\n\n\
             [[instance]]\npayload = \"hello\"\nmemory = \"8M\"\n",
        )
        .expect_err("refused");
        assert_eq!(errors.len(), 4, "{errors:#?}");
        assert!(errors[0].starts_with("m.toml:5:1: instance 'a': unknown field `bogus`"));
        assert!(errors[1].starts_with("m.toml:9:11: instance 'b': payload \"nope\""));
        assert!(errors[2].starts_with("m.toml:10:10: instance 'b': memory \"8X\""));
        assert!(errors[3].starts_with("m.toml:12:1: instance #3: `name` is missing"));
    }

    #[test]
    fn a_manifest_without_instances_is_refused() {
        assert_eq!(
            one_error("[settings]\nrun_ms = 5\n"),
            "m.toml:3:1: the manifest starts no instances: add an [[instance]] table for each kernel"
        );
        assert!(one_error("instance = 3\n").contains("must be a list of tables"));
    }

    #[test]
    fn a_nonexistent_image_says_where_it_looked() {
        let dir = scratch("missing");
        let errors = parse_in(
            "[[instance]]\nname = \"x\"\nimage = \"kernels/foo.elf\"\nmemory = \"8M\"\n",
            &dir,
        )
        .expect_err("refused");
        assert_eq!(
            errors,
            vec![format!(
                "m.toml:3:9: instance 'x': image \"kernels/foo.elf\" not found (looked in {})",
                dir.join("kernels/foo.elf").display()
            )]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_image_the_loader_refuses_is_reported() {
        let dir = scratch("refused");
        std::fs::write(dir.join("notes.txt"), b"this is not an ELF file").expect("writing");
        let errors =
            parse_in("[[instance]]\nname = \"x\"\nimage = \"notes.txt\"\nmemory = \"8M\"\n", &dir)
                .expect_err("refused");
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(
            errors[0].starts_with("m.toml:3:9: instance 'x': image refused by the loader: "),
            "{errors:#?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn to_bundle_reports_missing_and_refused_payloads() {
        let dir = scratch("bundle");
        let m = check(VALID).expect("valid");
        let errors = to_bundle(&m, &[]).expect_err("payloads were not built");
        assert_eq!(errors.0.len(), 3);
        assert_eq!(
            errors.0[0].to_string(),
            "m.toml:9:11: instance 'hello': payload \"hello\" was not built"
        );
        // A payload whose ELF the loader refuses.
        std::fs::write(dir.join("hello.elf"), b"junk").expect("writing");
        let payloads = [Payload { name: "hello", path: dir.join("hello.elf") }];
        let one = check("[[instance]]\nname = \"a\"\npayload = \"hello\"\nmemory = \"8M\"\n")
            .expect("valid");
        let errors = to_bundle(&one, &payloads).expect_err("refused");
        assert!(
            errors.0[0].to_string().starts_with(
                "m.toml:3:11: instance 'a': payload \"hello\" refused by the loader: "
            ),
            "{errors}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Small ELF images from the loader's fuzz corpus, copied into `dir`.
    fn copy_corpus_images(dir: &Path) {
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../loader/fuzz/corpus/plan");
        for name in ["crafted-pie.elf", "crafted-exec.elf"] {
            std::fs::copy(corpus.join(name), dir.join(name)).expect("copying a corpus image");
        }
    }

    #[test]
    fn to_bundle_packs_images_once_each() {
        let dir = scratch("images");
        copy_corpus_images(&dir);
        let m = parse_in(
            "[settings]\nrun_ms = 0\n\n\
             [[instance]]\nname = \"a\"\nimage = \"crafted-pie.elf\"\nmemory = \"4M\"\ncpu = 2\n\n\
             [[instance]]\nname = \"b\"\nimage = \"crafted-pie.elf\"\nmemory = \"8M\"\nargs = \"x=1\"\n\n\
             [[instance]]\nname = \"fixed\"\nimage = \"crafted-exec.elf\"\nmemory = \"8M\"\n\
             base = \"0x200000\"\nrestart = \"on-failure\"\nheartbeat_timeout_ms = 100\n",
            &dir,
        )
        .expect("valid");
        let bundle = to_bundle(&m, &[]).expect("packs");
        assert_eq!(bundle.settings.run_ms, 0);
        let files: Vec<_> = bundle.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(files, ["crafted-pie.elf", "crafted-exec.elf"]);
        assert_eq!(
            bundle.instances[0],
            Instance {
                name: "a".into(),
                file: 0,
                cpu: 2,
                memory: 4 << 20,
                base: None,
                restart: Restart::Never,
                max_restarts: 0,
                heartbeat_timeout_ms: 0,
                boot_protocol: true,
                args: String::new(),
            }
        );
        assert_eq!((bundle.instances[1].file, bundle.instances[1].cpu), (0, CPU_AUTO));
        assert_eq!(bundle.instances[1].args, "x=1");
        let fixed = &bundle.instances[2];
        assert_eq!((fixed.file, fixed.base), (1, Some(0x20_0000)));
        assert_eq!(
            (fixed.restart, fixed.max_restarts, fixed.heartbeat_timeout_ms),
            (Restart::OnFailure, 3, 100)
        );
        // What the manager will read back.
        let bytes = bundle.encode().expect("encodes");
        let parsed = bundle::parse(&bytes).expect("parses");
        assert_eq!(parsed.instances, bundle.instances);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_fixed_address_image_without_base_gets_a_hint() {
        let dir = scratch("exec");
        copy_corpus_images(&dir);
        let errors = parse_in(
            "[[instance]]\nname = \"fixed\"\nimage = \"crafted-exec.elf\"\nmemory = \"8M\"\n",
            &dir,
        )
        .expect_err("refused");
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(
            errors[0].starts_with("m.toml:3:9: instance 'fixed': image refused by the loader: ")
        );
        assert!(errors[0].ends_with("set `base` to the region it was linked for)"), "{errors:#?}");
        // Too little memory for the image once the stack and shared pages are set aside.
        let errors = parse_in(
            "[[instance]]\nname = \"fixed\"\nimage = \"crafted-exec.elf\"\nmemory = \"92K\"\n\
             base = \"0x200000\"\n",
            &dir,
        )
        .expect_err("refused");
        assert!(errors[0].contains("image refused by the loader"), "{errors:#?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The error manifests under tests/manifests/, as `cargo xtask check` reports them.
    #[test]
    fn committed_error_manifests() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let cases: &[(&str, &[&str])] = &[
            ("duplicate-cpu.toml", &[":13:7: cpu 2 is given to both 'left' and 'right'"]),
            (
                "bad-memory.toml",
                &[":6:10: instance 'big': memory \"12Q\" is not a size (use e.g. 32M, 1G, or a byte count)"],
            ),
            ("unknown-field.toml", &[":7:1: instance 'hello': unknown field `memroy`, expected one of"]),
            (
                "duplicate-name.toml",
                &[":10:8: instance name 'hello' is used twice (first at line 4)"],
            ),
            (
                "payload-and-image.toml",
                &[":6:9: instance 'both': both `payload` (\"hello\") and `image` (\"kernels/hello.elf\") are given; choose one"],
            ),
            (
                "missing-image.toml",
                &[":5:9: instance 'custom': image \"kernels/not-built.elf\" not found (looked in "],
            ),
            (
                "bad-restart.toml",
                &[":7:16: instance 'once': max_restarts 2 needs restart = \"on-failure\""],
            ),
        ];
        for (file, expected) in cases {
            let path = root.join("tests/manifests").join(file);
            let errors = load(&path).expect_err(file).0;
            assert_eq!(errors.len(), expected.len(), "{file}: {errors:#?}");
            for (e, want) in errors.iter().zip(expected.iter()) {
                let text = e.to_string();
                let after_path = text.strip_prefix(&path.display().to_string()).unwrap_or(&text);
                assert!(after_path.starts_with(want), "{file}: got {text:?}, want {want:?}");
            }
        }
    }

    #[test]
    fn the_committed_manifests_are_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        // What the default run starts is checked by the QEMU scenarios that boot this very
        // file; here, that it and the example load without an error.
        let default = load(&root.join("manifests/default.toml")).expect("default manifest");
        assert_eq!(default.settings, Settings::default());
        load(&root.join("multikernel.example.toml")).expect("example manifest");
    }

    #[test]
    fn places_count_characters_from_one() {
        let src = Source::new(Path::new("m.toml"), "ab\ncdé\nf");
        assert_eq!(src.place(0), (1, 1));
        assert_eq!(src.place(2), (1, 3));
        assert_eq!(src.place(3), (2, 1));
        assert_eq!(src.place(7), (2, 4));
        assert_eq!(src.place(8), (3, 1));
        assert_eq!(src.place(99), (3, 2));
    }
}
