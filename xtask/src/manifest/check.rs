//! The checks: each field of `[settings]` and of every `[[instance]]`, then what must hold
//! across instances (unique names and CPUs).
//!
//! Each `check_*` function takes the raw field(s) it is about and what it needs to judge them,
//! pushes a located error into the [`Source`] for every problem (so one bad field does not hide
//! the next), and returns the checked value, or `None` when there is nothing usable.
//! [`check_instance`] runs them all and returns the instance only if none of them reported
//! anything. Message texts are what users see and tests compare: keep them.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use bootproto::layout::PAGE;
use platform::bundle::{Cpus, Protocol, Restart, Settings, Uart, MAX_CMDLINE, MAX_INSTANCE_CPUS};
use platform::partition::DEFAULT_INSTANCE_ALIGN;
use serde::de::IntoDeserializer;
use serde::Deserialize;
use toml::de::DeValue;
use toml::Spanned;

use super::bundle::loader_check;
use super::raw::{CpusValue, Number, RawInstance, RawSettings, RestartPolicy};
use super::source::Source;
use super::{memory_too_small, min_memory, size_text, InstanceSpec, Kernel, ARGS_MAX, NAME_MAX};

/// Restarts allowed by default with `restart = "on-failure"`.
pub(super) const DEFAULT_MAX_RESTARTS: u32 = 3;

pub(super) fn check_settings(src: &mut Source<'_>, value: &Spanned<DeValue<'_>>) -> Settings {
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
    if let Some(store) = raw.image_store {
        match store.get_ref().value() {
            Some(bytes) if bytes.is_multiple_of(PAGE) => settings.image_store = bytes,
            Some(_) => src.error(
                store.span(),
                format!("settings: image_store {} is not a multiple of 4K", store.get_ref()),
            ),
            None => src.error(
                store.span(),
                format!(
                    "settings: image_store {} is not a size (use e.g. 64M, or 0 for no store)",
                    store.get_ref()
                ),
            ),
        }
    }
    settings
}

/// The `index`-th `[[kind]]` table read into its raw form, with how messages name it
/// (`instance 'web'`, or `channel #2` when it has no readable name); a table that does not
/// read (an unknown key, a wrong type) is reported and `None`.
fn open_table<'de, T: Deserialize<'de>>(
    src: &mut Source<'_>,
    kind: &str,
    index: usize,
    value: &Spanned<DeValue<'de>>,
) -> Option<(String, T)> {
    let declared = value.get_ref().get("name").and_then(|n| n.get_ref().as_str());
    let who = match declared {
        Some(n) => format!("{kind} '{n}'"),
        None => format!("{kind} #{}", index + 1),
    };
    match T::deserialize(value.clone().into_deserializer()) {
        Ok(raw) => Some((who, raw)),
        Err(e) => {
            src.error(e.span().unwrap_or(value.span()), format!("{who}: {}", e.message()));
            None
        }
    }
}

/// An instance that passed its own checks, with the places the cross-checks point at.
pub(super) struct Checked {
    pub(super) spec: InstanceSpec,
    name_span: Range<usize>,
    /// Where the explicit CPUs were written (`cpu` or `cpus`), for the conflict check.
    cpu_span: Option<Range<usize>>,
    /// Where `devices` was written.
    devices_span: Option<Range<usize>>,
}

/// Checks one `[[instance]]` table; reports its problems and returns it if it had none.
pub(super) fn check_instance(
    src: &mut Source<'_>,
    dir: &Path,
    index: usize,
    value: &Spanned<DeValue<'_>>,
) -> Option<Checked> {
    let table_span = value.span();
    let (who, raw) = open_table::<RawInstance>(src, "instance", index, value)?;
    let before = src.error_count();

    let name = check_name(src, &who, &table_span, raw.name);
    let memory = check_memory(src, &who, &table_span, raw.memory.as_ref());
    let base = check_base(src, &who, raw.base.as_ref(), memory);
    let cpu_span = raw.cpus.as_ref().map(|c| c.span()).or(raw.cpu.as_ref().map(|c| c.span()));
    let cpus = check_cpus(src, &who, raw.cpu.as_ref(), raw.cpus.as_ref());
    let protocol = check_protocol(src, &who, raw.protocol.as_ref(), raw.boot_protocol.as_ref());
    let devices_span = raw.devices.as_ref().map(|d| d.span());
    let devices = check_devices(src, &who, raw.devices.as_ref());
    let initrd = raw.initrd.as_ref().and_then(|i| read_initrd(src, dir, &who, i, protocol));
    let cmdline = check_cmdline(src, &who, raw.cmdline.as_ref(), protocol);
    let args = check_args(src, &who, raw.args);
    let (restart, max_restarts) = check_restart(src, &who, raw.restart, raw.max_restarts);
    let heartbeat_timeout_ms = check_heartbeat(src, &who, raw.heartbeat_timeout_ms);
    let protocol_version = check_protocol_version(src, &who, raw.protocol_version, protocol);
    let linux_fit = LinuxFit {
        cpus: cpus.as_ref().map_or(1, Cpus::count),
        initrd_len: initrd.as_ref().map_or(0, |(_, b)| b.len() as u64),
        cmdline: cmdline.clone().unwrap_or_default(),
        devices: devices.clone(),
    };
    let (kernel, kernel_span) =
        check_kernel(src, &who, &table_span, raw.payload, raw.image, protocol, |src, image| {
            match protocol {
                Some(Protocol::Linux) => read_bzimage(src, dir, &who, image, memory, &linux_fit),
                _ => read_image(src, dir, &who, image, memory, base, linux_fit.cpus),
            }
        });

    if src.error_count() != before {
        return None;
    }
    let (name, memory, kernel, cpus, protocol) = (name?, memory?, kernel?, cpus?, protocol?);
    let name_span = name.span();
    Some(Checked {
        spec: InstanceSpec {
            name: name.into_inner(),
            kernel,
            cpus,
            memory,
            base,
            args,
            restart,
            max_restarts,
            heartbeat_timeout_ms,
            protocol,
            protocol_version,
            devices: devices.unwrap_or_default(),
            initrd,
            cmdline: cmdline.unwrap_or_default(),
            kernel_at: src.place(kernel_span.start),
        },
        name_span,
        cpu_span,
        devices_span,
    })
}

/// `name`: present, non-empty, fits the bundle, no control characters. Returns the name (with
/// its span, for the uniqueness check) whenever one is given, so that its other problems are
/// still found; the error count tells whether it was good.
fn check_name(
    src: &mut Source<'_>,
    who: &str,
    table_span: &Range<usize>,
    name: Option<Spanned<String>>,
) -> Option<Spanned<String>> {
    match name {
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
    }
}

/// `memory`: present, a size, at least [`min_memory`], a page multiple.
fn check_memory(
    src: &mut Source<'_>,
    who: &str,
    table_span: &Range<usize>,
    memory: Option<&Spanned<Number>>,
) -> Option<u64> {
    match memory {
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
                src.error(m.span(), format!("{who}: {}", memory_too_small(m.get_ref())));
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
    }
}

/// `base`, if given: an address, non-zero, aligned to `DEFAULT_INSTANCE_ALIGN`, and (when the
/// memory size is known) with an end that fits in 64 bits. An aligned address is returned even
/// when its end overflows (the error is reported all the same).
fn check_base(
    src: &mut Source<'_>,
    who: &str,
    base: Option<&Spanned<Number>>,
    memory: Option<u64>,
) -> Option<u64> {
    let b = base?;
    match b.get_ref().value() {
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
    }
}

/// `cpu = N` (one named CPU) or `cpus` (a list of APIC IDs, the first being the boot CPU, or a
/// count of free CPUs); neither means one free CPU. `None` if what was written is unusable.
fn check_cpus(
    src: &mut Source<'_>,
    who: &str,
    cpu: Option<&Spanned<u32>>,
    cpus: Option<&Spanned<CpusValue>>,
) -> Option<Cpus> {
    let max = MAX_INSTANCE_CPUS;
    match (cpu, cpus) {
        (Some(c), Some(cs)) => {
            src.error(
                cs.span(),
                format!(
                    "{who}: both `cpu` ({}) and `cpus` are given; `cpu = N` is the one-CPU \
                     spelling of `cpus = [N]`: keep one",
                    c.get_ref()
                ),
            );
            None
        }
        (None, None) => Some(Cpus::Any(1)),
        (Some(c), None) if *c.get_ref() == u32::MAX => {
            src.error(
                c.span(),
                format!(
                    "{who}: cpu {} is not an APIC ID (0xFFFFFFFF marks an absent x2APIC CPU)",
                    u32::MAX
                ),
            );
            None
        }
        (Some(c), None) => Some(Cpus::Exactly(vec![*c.get_ref()])),
        (None, Some(cs)) => match cs.get_ref() {
            CpusValue::Count(n) if (1..=max as i64).contains(n) => Some(Cpus::Any(*n as u32)),
            CpusValue::Count(n) => {
                src.error(
                    cs.span(),
                    format!("{who}: cpus = {n}: an instance has from 1 to {max} CPUs"),
                );
                None
            }
            CpusValue::List(ids) => {
                let problem = if ids.is_empty() {
                    Some("the list is empty".to_string())
                } else if ids.len() > max {
                    Some(format!("{} CPUs; an instance has at most {max}", ids.len()))
                } else if let Some(bad) =
                    ids.iter().find(|&&id| !(0..u32::MAX as i64).contains(&id))
                {
                    Some(format!("{bad} is not an APIC ID"))
                } else {
                    ids.iter()
                        .enumerate()
                        .find(|(i, id)| ids[..*i].contains(id))
                        .map(|(_, id)| format!("APIC ID {id} is listed twice"))
                };
                match problem {
                    Some(p) => {
                        src.error(cs.span(), format!("{who}: cpus: {p}"));
                        None
                    }
                    None => Some(Cpus::Exactly(ids.iter().map(|&id| id as u32).collect())),
                }
            }
        },
    }
}

/// `protocol` ("multikernel", the default; "linux"; "none"), or the old `boot_protocol = false`
/// (which means "none").
fn check_protocol(
    src: &mut Source<'_>,
    who: &str,
    protocol: Option<&Spanned<String>>,
    boot_protocol: Option<&Spanned<bool>>,
) -> Option<Protocol> {
    let named = match protocol.map(|p| (p, p.get_ref().as_str())) {
        None => None,
        Some((_, "multikernel")) => Some(Protocol::Multikernel),
        Some((_, "linux")) => Some(Protocol::Linux),
        Some((_, "none")) => Some(Protocol::None),
        Some((p, other)) => {
            src.error(
                p.span(),
                format!(
                    "{who}: protocol {other:?} is not one of \"multikernel\" (the default: an ELF \
                     kernel built with the payload SDK or multikernel.h), \"linux\" (a bzImage) or \
                     \"none\" (an ELF kernel that knows nothing of the manager)"
                ),
            );
            return None;
        }
    };
    match (named, boot_protocol) {
        (named, None) => Some(named.unwrap_or(Protocol::Multikernel)),
        (None, Some(b)) => Some(if *b.get_ref() { Protocol::Multikernel } else { Protocol::None }),
        (Some(p), Some(b)) => {
            src.error(
                b.span(),
                format!(
                    "{who}: `boot_protocol` is the old spelling of `protocol` (boot_protocol = \
                     false is protocol = \"none\"); give only protocol = {:?}",
                    p.name()
                ),
            );
            None
        }
    }
}

/// `devices`: legacy UARTs by name ("com2", "com3", "com4"), each at most once.
fn check_devices(
    src: &mut Source<'_>,
    who: &str,
    devices: Option<&Spanned<Vec<Spanned<String>>>>,
) -> Option<Vec<Uart>> {
    let list = devices?;
    let mut out: Vec<Uart> = Vec::new();
    let mut ok = true;
    for d in list.get_ref() {
        let name = d.get_ref();
        match Uart::from_name(name) {
            Some(u) if out.contains(&u) => {
                src.error(d.span(), format!("{who}: device {name:?} is listed twice"));
                ok = false;
            }
            Some(u) => out.push(u),
            None if name.eq_ignore_ascii_case("com1") => {
                src.error(
                    d.span(),
                    format!(
                        "{who}: com1 is the manager's console and cannot be given to an \
                         instance; use com2, com3 or com4"
                    ),
                );
                ok = false;
            }
            None => {
                src.error(
                    d.span(),
                    format!("{who}: device {name:?} is not one of com2, com3, com4"),
                );
                ok = false;
            }
        }
    }
    out.sort();
    ok.then_some(out)
}

/// `cmdline`: for `protocol = "linux"` only; it must fit the bundle (the kernel's own limit is
/// checked with the image).
fn check_cmdline(
    src: &mut Source<'_>,
    who: &str,
    cmdline: Option<&Spanned<String>>,
    protocol: Option<Protocol>,
) -> Option<String> {
    let Some(c) = cmdline else { return Some(String::new()) };
    if protocol != Some(Protocol::Linux) {
        src.error(
            c.span(),
            format!(
                "{who}: `cmdline` is for protocol = \"linux\"; a multikernel kernel gets `args`"
            ),
        );
        return None;
    }
    let text = c.get_ref();
    if text.len() > MAX_CMDLINE || text.contains('\0') {
        src.error(
            c.span(),
            format!("{who}: cmdline is {} bytes; at most {MAX_CMDLINE}, without NUL", text.len()),
        );
        return None;
    }
    Some(text.clone())
}

/// `initrd`: for `protocol = "linux"` only; the file must exist.
fn read_initrd(
    src: &mut Source<'_>,
    dir: &Path,
    who: &str,
    initrd: &Spanned<String>,
    protocol: Option<Protocol>,
) -> Option<(PathBuf, Vec<u8>)> {
    if protocol != Some(Protocol::Linux) {
        src.error(initrd.span(), format!("{who}: `initrd` is for protocol = \"linux\""));
        return None;
    }
    let relative = PathBuf::from(initrd.get_ref());
    let full = dir.join(&relative);
    match std::fs::read(&full) {
        Ok(bytes) => Some((relative, bytes)),
        Err(e) => {
            let looked = std::path::absolute(&full).unwrap_or(full);
            src.error(
                initrd.span(),
                format!(
                    "{who}: initrd {:?} cannot be read ({e}; looked in {})",
                    initrd.get_ref(),
                    looked.display()
                ),
            );
            None
        }
    }
}

/// What a Linux kernel's fit is checked against, besides its memory.
pub(super) struct LinuxFit {
    pub(super) cpus: usize,
    pub(super) initrd_len: u64,
    pub(super) cmdline: String,
    pub(super) devices: Option<Vec<Uart>>,
}

/// Reads a bzImage and checks it with the manager's own code: its header, and that it, its
/// initrd and its command line fit what the instance has.
fn read_bzimage(
    src: &mut Source<'_>,
    dir: &Path,
    who: &str,
    image: &Spanned<String>,
    memory: Option<u64>,
    fit: &LinuxFit,
) -> Option<Kernel> {
    let relative = PathBuf::from(image.get_ref());
    let full = dir.join(&relative);
    let bytes = match std::fs::read(&full) {
        Ok(bytes) => bytes,
        Err(e) => {
            let looked = std::path::absolute(&full).unwrap_or(full);
            src.error(
                image.span(),
                format!(
                    "{who}: image {:?} cannot be read ({e}; looked in {})",
                    image.get_ref(),
                    looked.display()
                ),
            );
            return None;
        }
    };
    let kernel = match platform::bzimage::parse(&bytes) {
        Ok(k) => k,
        Err(e) => {
            src.error(image.span(), format!("{who}: image {:?} refused: {e}", image.get_ref()));
            return None;
        }
    };
    if let Some(memory) = memory {
        let uart = fit.devices.as_ref().and_then(|d| d.first().copied());
        let need = platform::linuxboot::Fit {
            memory,
            cpus: fit.cpus,
            initrd_len: fit.initrd_len,
            cmdline: &fit.cmdline,
            uart,
        };
        if let Err(e) = platform::linuxboot::check_fit(&kernel, &need) {
            src.error(image.span(), format!("{who}: image {:?} refused: {e}", image.get_ref()));
            return None;
        }
    }
    Some(Kernel::Image { path: relative, bytes })
}

/// `args`: fits the bundle and holds no NUL. Empty when not given.
fn check_args(src: &mut Source<'_>, who: &str, args: Option<Spanned<String>>) -> String {
    let Some(a) = args else { return String::new() };
    if a.get_ref().len() > ARGS_MAX {
        src.error(
            a.span(),
            format!("{who}: args is {} bytes long; at most {ARGS_MAX} fit", a.get_ref().len()),
        );
    } else if a.get_ref().contains('\0') {
        src.error(a.span(), format!("{who}: args must not contain NUL characters"));
    }
    a.into_inner()
}

/// `restart` and `max_restarts` together: a count needs `on-failure`, and `on-failure` needs a
/// count of at least 1 ([`DEFAULT_MAX_RESTARTS`] when not given).
fn check_restart(
    src: &mut Source<'_>,
    who: &str,
    restart: Option<RestartPolicy>,
    max_restarts: Option<Spanned<u32>>,
) -> (Restart, u32) {
    let policy = restart.unwrap_or(RestartPolicy::Never);
    match (policy, max_restarts) {
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
    }
}

/// `heartbeat_timeout_ms`, if given: at least 1. `None` means no heartbeat watch.
fn check_heartbeat(
    src: &mut Source<'_>,
    who: &str,
    heartbeat_timeout_ms: Option<Spanned<u32>>,
) -> Option<u32> {
    match heartbeat_timeout_ms {
        None => None,
        Some(h) if *h.get_ref() == 0 => {
            src.error(
                h.span(),
                format!("{who}: heartbeat_timeout_ms must be at least 1 (leave it out for none)"),
            );
            None
        }
        Some(h) => Some(h.into_inner()),
    }
}

/// `protocol_version`: 1 (a kernel built against the version 1 header) or the current version;
/// meaningless for a kernel that does not speak the protocol.
fn check_protocol_version(
    src: &mut Source<'_>,
    who: &str,
    version: Option<Spanned<u32>>,
    protocol: Option<Protocol>,
) -> u32 {
    let current = bootproto::PROTOCOL_VERSION;
    let Some(v) = version else { return current };
    let (span, value) = (v.span(), v.into_inner());
    if matches!(protocol, Some(Protocol::None | Protocol::Linux)) {
        src.error(
            span,
            format!(
                "{who}: protocol_version is the multikernel boot info's version; it has no \
                 meaning with protocol = {:?}",
                protocol.map_or("?", Protocol::name)
            ),
        );
    } else if value != 1 && value != current {
        src.error(
            span,
            format!(
                "{who}: protocol_version {value} does not exist: use 1 (a kernel built against \
                 the version 1 header) or {current} (the default; docs/boot-protocol.md)"
            ),
        );
    }
    value
}

/// Exactly one of `payload` (one of this repository's) and `image`; an image is handed to
/// `read`. Returns the kernel, if usable, and the span its errors point at later.
fn check_kernel(
    src: &mut Source<'_>,
    who: &str,
    table_span: &Range<usize>,
    payload: Option<Spanned<String>>,
    image: Option<Spanned<String>>,
    protocol: Option<Protocol>,
    read: impl FnOnce(&mut Source<'_>, &Spanned<String>) -> Option<Kernel>,
) -> (Option<Kernel>, Range<usize>) {
    if let (Some(Protocol::Linux), Some(p)) = (protocol, &payload) {
        src.error(
            p.span(),
            format!(
                "{who}: protocol = \"linux\" runs a bzImage: give `image` = the kernel file, \
                 not payload {:?}",
                p.get_ref()
            ),
        );
        return (None, p.span());
    }
    match (payload, image) {
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
            let kernel = read(src, &i);
            (kernel, span)
        }
    }
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
    cpus: usize,
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
        if let Err(why) = loader_check(&bytes, memory, base, cpus) {
            src.error(image.span(), format!("{who}: image refused by the loader: {why}"));
            return None;
        }
    }
    Some(Kernel::Image { path: relative, bytes })
}

/// Names and explicit CPUs must be unique across instances.
pub(super) fn check_unique(src: &mut Source<'_>, instances: &[Checked]) {
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut cpus: HashMap<u32, &str> = HashMap::new();
    let mut devices: HashMap<Uart, &str> = HashMap::new();
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
        if let (Cpus::Exactly(ids), Some(span)) = (&c.spec.cpus, &c.cpu_span) {
            for &cpu in ids {
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
        if let Some(span) = &c.devices_span {
            for d in &c.spec.devices {
                match devices.get(d) {
                    Some(&owner) => src.error(
                        span.clone(),
                        format!(
                            "device {} is given to both '{owner}' and '{name}': a UART belongs \
                             to one instance",
                            d.name()
                        ),
                    ),
                    None => {
                        devices.insert(*d, name);
                    }
                }
            }
        }
    }
}

/// A channel that passed its own checks, with where its name was written.
pub(super) struct CheckedChannel {
    pub(super) spec: super::ChannelSpec,
    name_span: Range<usize>,
}

/// Checks one `[[channel]]` table against the instances' names.
/// What [`check_channel`] needs to know of an instance a channel may join.
pub(super) struct ChannelEnd<'a> {
    pub(super) name: &'a str,
    pub(super) protocol: Protocol,
    pub(super) version: u32,
}

/// Why an instance cannot hold a channel end, if it cannot.
fn channel_end_refusal(end: &ChannelEnd<'_>) -> Option<String> {
    match end.protocol {
        Protocol::Linux => Some(format!(
            "instance '{}' runs Linux (protocol = \"linux\"), which has no channel driver; \
             channels join multikernel instances",
            end.name
        )),
        Protocol::None => Some(format!(
            "instance '{}' has protocol = \"none\": it gets no boot info, so it could not find \
             the channel",
            end.name
        )),
        Protocol::Multikernel if end.version < 2 => Some(format!(
            "instance '{}' is built against boot protocol version {}, whose boot info has no \
             channel records (channels need version 2)",
            end.name, end.version
        )),
        Protocol::Multikernel => None,
    }
}

pub(super) fn check_channel(
    src: &mut Source<'_>,
    index: usize,
    value: &Spanned<DeValue<'_>>,
    instances: &[ChannelEnd<'_>],
) -> Option<CheckedChannel> {
    let table_span = value.span();
    let (who, raw) = open_table::<super::raw::RawChannel>(src, "channel", index, value)?;
    let before = src.error_count();
    let name = check_name(src, &who, &table_span, raw.name);
    let mut between = [0usize; 2];
    match &raw.between {
        None => src.error(
            table_span.clone(),
            format!("{who}: `between` is missing: name the two instances it joins, e.g. between = [\"ping\", \"pong\"]"),
        ),
        Some(b) if b.get_ref().len() != 2 => src.error(
            b.span(),
            format!("{who}: `between` names {} instances; a channel joins exactly two", b.get_ref().len()),
        ),
        Some(b) => {
            for (k, end) in b.get_ref().iter().enumerate() {
                match instances.iter().position(|i| i.name == end.get_ref()) {
                    Some(at) => match channel_end_refusal(&instances[at]) {
                        None => between[k] = at,
                        Some(why) => src.error(end.span(), format!("{who}: {why}")),
                    },
                    None => {
                        let names: Vec<&str> = instances.iter().map(|i| i.name).collect();
                        src.error(
                            end.span(),
                            format!(
                                "{who}: there is no instance '{}' (the instances are {})",
                                end.get_ref(),
                                names.join(", ")
                            ),
                        )
                    }
                }
            }
            if b.get_ref()[0].get_ref() == b.get_ref()[1].get_ref() {
                src.error(
                    b.get_ref()[1].span(),
                    format!("{who}: '{}' is paired with itself; a channel joins two different instances", b.get_ref()[0].get_ref()),
                );
            }
        }
    }
    let min = bootproto::channel::MIN_SIZE;
    let size = match &raw.size {
        None => Some(bootproto::channel::DEFAULT_SIZE),
        Some(s) => match s.get_ref().value() {
            Some(v) if v >= min && v.is_multiple_of(PAGE) && v <= 1 << 30 => Some(v),
            _ => {
                src.error(
                    s.span(),
                    format!(
                        "{who}: size {} is not a multiple of 4 KiB between {} and 1G",
                        s.get_ref(),
                        size_text(min)
                    ),
                );
                None
            }
        },
    };
    let base = match &raw.base {
        None => None,
        Some(b) => match b.get_ref().value() {
            Some(v) if v.is_multiple_of(PAGE) && v >= 1 << 20 => Some(v),
            _ => {
                src.error(
                    b.span(),
                    format!(
                        "{who}: base {} is not a 4 KiB-aligned address above 1 MiB",
                        b.get_ref()
                    ),
                );
                None
            }
        },
    };
    if src.error_count() != before {
        return None;
    }
    let name = name?;
    Some(CheckedChannel {
        name_span: name.span(),
        spec: super::ChannelSpec { name: name.into_inner(), between, size: size?, base },
    })
}

/// Channel names are unique.
pub(super) fn check_channels_unique(src: &mut Source<'_>, channels: &mut [CheckedChannel]) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for c in channels.iter() {
        match seen.get(&c.spec.name) {
            Some(&first) => {
                let (line, _) = src.place(first);
                src.error(
                    c.name_span.clone(),
                    format!("channel name '{}' is used twice (first at line {line})", c.spec.name),
                );
            }
            None => {
                seen.insert(c.spec.name.clone(), c.name_span.start);
            }
        }
    }
}
