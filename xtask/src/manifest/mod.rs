//! Manifests: the TOML file a user writes to say which kernels to start, and how.
//!
//! The manager never parses TOML. xtask reads a manifest here, checks everything that can be
//! checked on the host, and packs the result into a boot bundle (`platform::bundle`), the
//! compact binary form the manager reads from its ramdisk. `docs/manifest.md` is the user's
//! reference; `multikernel.example.toml` is a commented example.
//!
//! # Modules
//! - this module: the validated types ([`Manifest`], [`InstanceSpec`], [`Kernel`]) and
//!   [`load`] / [`parse`], which run the steps below in order;
//! - [`source`]: the manifest text and its located errors ([`ManifestErrors`], spans turned
//!   into `file:line:column`);
//! - [`raw`]: the manifest as written, the serde types every table is deserialized into;
//! - [`check`]: the checks of `[settings]`, of each `[[instance]]` field by field, and across
//!   instances;
//! - [`bundle`]: [`to_bundle`], and the loader check shared with image checking;
//! - `tests`: unit tests, and the committed manifests under `tests/manifests/`.
//!
//! # Design
//! - Parsing keeps byte spans: the document is parsed into toml's spanned tree
//!   ([`DeTable::parse_recoverable`], which reports every syntax error), then the top level, the
//!   `[settings]` table and each `[[instance]]` table are deserialized separately with serde and
//!   `deny_unknown_fields`, every field as a [`Spanned`](toml::Spanned) value. So one bad
//!   instance does not hide the errors of the next, and every message can say
//!   `file:line:column`.
//! - [`load`] collects **all** errors before returning ([`ManifestErrors`]); nothing is
//!   reported one at a time.
//! - What is checked here: field types and unknown fields; names (present, unique, fit the
//!   bundle); exactly one of `payload` / `image`; payload names; CPUs given twice; sizes, bases
//!   and their alignment; argument length; restart policy combinations; image files exist and
//!   the loader accepts them inside the instance's usable memory ([`load`]); the payloads' built
//!   ELFs likewise, and the bundle's own limits ([`to_bundle`]).
//! - The region rules are `bootproto::layout`'s, the ones the manager applies: the smallest
//!   region ([`min_memory`]) and the load area an image must fit in.
//! - What is **not** checked here: whether a CPU exists and can be started, and whether the
//!   memory fits the machine's memory map. Only the manager knows the machine; it refuses such an
//!   instance at boot, before sending any IPI.
//!
//! # Invariants
//! A [`Manifest`] returned by [`load`] has at least one instance, unique non-empty names of at
//! most [`NAME_MAX`] bytes, unique explicit CPUs, memory sizes that are page multiples of at
//! least [`min_memory`], bases that are non-zero and aligned to
//! `platform::partition::DEFAULT_INSTANCE_ALIGN`, and images that the loader accepts.

use std::fmt;
use std::path::{Path, PathBuf};

use bootproto::layout::{self, DEFAULT_STACK_BYTES, PAGE, SHARED_BYTES, SLOT_BYTES};
use platform::bundle::{Cpus, Protocol, Restart, Settings, Uart, MAX_INSTANCES};
use serde::Deserialize;
use toml::de::DeTable;

mod bundle;
mod check;
mod raw;
mod source;
#[cfg(test)]
mod tests;

pub use bundle::to_bundle;
pub use source::{ManifestError, ManifestErrors};

use check::{check_instance, check_settings, check_unique};
use raw::RawTop;
use source::Source;

/// Longest instance name, in bytes (the bundle's field keeps a terminating NUL for C readers).
pub const NAME_MAX: usize = platform::bundle::NAME_LEN - 1;
/// Longest argument string, in bytes (likewise).
pub const ARGS_MAX: usize = platform::bundle::ARGS_LEN - 1;

/// The smallest `memory` an instance can have: the smallest region the manager can lay out
/// for one CPU ([`layout::min_region`]), that is its shared pages, CPU slot and stack, and one
/// page for the image (the loader then checks the real image against what is left).
pub const fn min_memory() -> u64 {
    const BYTES: u64 = match layout::min_region(1) {
        Some(bytes) => bytes,
        None => panic!("the layout of one CPU's region overflows"),
    };
    BYTES
}

// `memory_too_small` names the parts of the smallest region: keep it true.
const _: () = assert!(min_memory() == SHARED_BYTES + SLOT_BYTES + DEFAULT_STACK_BYTES + PAGE);

/// The message for a `memory` (as written, or as a size) below [`min_memory`].
fn memory_too_small(memory: impl fmt::Display) -> String {
    format!(
        "memory {memory} is too small: an instance needs at least {} ({} of shared pages, a {} \
         CPU slot, a {} stack and its image)",
        size_text(min_memory()),
        size_text(SHARED_BYTES),
        size_text(SLOT_BYTES),
        size_text(DEFAULT_STACK_BYTES)
    )
}

/// A validated manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The file as the user named it (used in messages).
    pub path: PathBuf,
    pub settings: Settings,
    pub instances: Vec<InstanceSpec>,
    pub channels: Vec<ChannelSpec>,
}

/// One `[[channel]]`, validated: two instances of the manifest, by index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelSpec {
    pub name: String,
    pub between: [usize; 2],
    pub size: u64,
    pub base: Option<u64>,
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
    /// The APIC IDs it names, or how many free CPUs it wants.
    pub cpus: Cpus,
    pub memory: u64,
    pub base: Option<u64>,
    pub args: String,
    pub restart: Restart,
    pub max_restarts: u32,
    pub heartbeat_timeout_ms: Option<u32>,
    /// How the manager hands it the machine (`protocol`; `boot_protocol = false` is the old
    /// spelling of `protocol = "none"`).
    pub protocol: Protocol,
    /// The boot info version written for it (1 for a kernel built against the v1 header).
    pub protocol_version: u32,
    /// The UARTs it owns.
    pub devices: Vec<Uart>,
    /// Its initial RAM disk (Linux): the path as written and the bytes.
    pub initrd: Option<(PathBuf, Vec<u8>)>,
    /// Its command line (Linux), appended to the manager's defaults.
    pub cmdline: String,
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
        let cpu = match &self.cpus {
            Cpus::Any(1) => "cpu auto".to_string(),
            Cpus::Any(n) => format!("cpus any {n}"),
            Cpus::Exactly(ids) if ids.len() == 1 => format!("cpu {}", ids[0]),
            Cpus::Exactly(ids) => format!("cpus {ids:?}"),
        };
        let base = self.base.map_or("auto".to_string(), |b| format!("{b:#x}"));
        let restart = match self.restart {
            Restart::Never => "never".to_string(),
            Restart::OnFailure => format!("on-failure (at most {})", self.max_restarts),
        };
        let heartbeat =
            self.heartbeat_timeout_ms.map_or("off".to_string(), |ms| format!("{ms} ms"));
        let mut extra = match (self.protocol, self.protocol_version) {
            (Protocol::None, _) => String::from(", no boot protocol"),
            (Protocol::Linux, _) => String::from(", protocol linux"),
            (Protocol::Multikernel, v) if v != bootproto::PROTOCOL_VERSION => {
                format!(", boot info version {v}")
            }
            _ => String::new(),
        };
        if !self.devices.is_empty() {
            let names: Vec<&str> = self.devices.iter().map(|d| d.name()).collect();
            extra += &format!(", devices {}", names.join(" "));
        }
        if let Some((path, bytes)) = &self.initrd {
            extra += &format!(", initrd {} ({})", path.display(), size_text(bytes.len() as u64));
        }
        if !self.cmdline.is_empty() {
            extra += &format!(", cmdline {:?}", self.cmdline);
        }
        format!(
            "{name}: {kernel}, {cpu}, memory {mem}, base {base}, restart {restart}, \
             heartbeat timeout {heartbeat}, args {args:?}{extra}",
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
    let store = match s.image_store {
        0 => "none".to_string(),
        b => size_text(b),
    };
    format!(
        "boot_timeout_ms {}, run_ms {}, log_level {level}, image_store {store}",
        s.checkin_timeout_ms, s.run_ms
    )
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
                if items.len() > MAX_INSTANCES {
                    src.error(
                        v.span(),
                        format!(
                            "{} instances given; a boot bundle holds at most {}",
                            items.len(),
                            MAX_INSTANCES
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
    let mut channels = Vec::new();
    if let Some(v) = table.get("channel") {
        match v.get_ref().as_array() {
            Some(items) => {
                let names: Vec<check::ChannelEnd<'_>> = instances
                    .iter()
                    .map(|c| check::ChannelEnd {
                        name: c.spec.name.as_str(),
                        protocol: c.spec.protocol,
                        version: c.spec.protocol_version,
                    })
                    .collect();
                for (index, item) in items.iter().enumerate() {
                    if let Some(c) = check::check_channel(&mut src, index, item, &names) {
                        channels.push(c);
                    }
                }
                check::check_channels_unique(&mut src, &mut channels);
            }
            None => src.error(
                v.span(),
                "`channel` must be a list of tables: write one [[channel]] table per channel",
            ),
        }
    }
    if src.error_count() != 0 {
        return Err(src.finish());
    }
    let instances = instances.into_iter().map(|c| c.spec).collect();
    let channels = channels.into_iter().map(|c| c.spec).collect();
    Ok(Manifest { path: path.into(), settings, instances, channels })
}
