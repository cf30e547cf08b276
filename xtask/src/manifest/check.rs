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
use platform::bundle::{Restart, Settings, CPU_AUTO};
use platform::partition::DEFAULT_INSTANCE_ALIGN;
use serde::de::IntoDeserializer;
use serde::Deserialize;
use toml::de::DeValue;
use toml::Spanned;

use super::bundle::loader_check;
use super::raw::{Number, RawInstance, RawSettings, RestartPolicy};
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
    settings
}

/// An instance that passed its own checks, with the places the cross-checks point at.
pub(super) struct Checked {
    pub(super) spec: InstanceSpec,
    name_span: Range<usize>,
    cpu_span: Option<Range<usize>>,
}

/// Checks one `[[instance]]` table; reports its problems and returns it if it had none.
pub(super) fn check_instance(
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
    let before = src.error_count();

    let name = check_name(src, &who, &table_span, raw.name);
    let memory = check_memory(src, &who, &table_span, raw.memory.as_ref());
    let base = check_base(src, &who, raw.base.as_ref(), memory);
    let cpu = check_cpu(src, &who, raw.cpu.as_ref());
    let args = check_args(src, &who, raw.args);
    let (restart, max_restarts) = check_restart(src, &who, raw.restart, raw.max_restarts);
    let heartbeat_timeout_ms = check_heartbeat(src, &who, raw.heartbeat_timeout_ms);
    let protocol_version =
        check_protocol_version(src, &who, raw.protocol_version, raw.boot_protocol);
    let (kernel, kernel_span) =
        check_kernel(src, &who, &table_span, raw.payload, raw.image, |src, image| {
            read_image(src, dir, &who, image, memory, base)
        });

    if src.error_count() != before {
        return None;
    }
    let (name, memory, kernel) = (name?, memory?, kernel?);
    let name_span = name.span();
    Some(Checked {
        spec: InstanceSpec {
            name: name.into_inner(),
            kernel,
            cpu,
            memory,
            base,
            args,
            restart,
            max_restarts,
            heartbeat_timeout_ms,
            boot_protocol: raw.boot_protocol.unwrap_or(true),
            protocol_version,
            kernel_at: src.place(kernel_span.start),
        },
        name_span,
        cpu_span: raw.cpu.map(|c| c.span()),
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

/// `cpu`, if given: any APIC ID but the bundle's "auto" marker. `None` means any free CPU.
fn check_cpu(src: &mut Source<'_>, who: &str, cpu: Option<&Spanned<u32>>) -> Option<u32> {
    let c = cpu?;
    if *c.get_ref() == CPU_AUTO {
        src.error(
            c.span(),
            format!("{who}: cpu {CPU_AUTO} is reserved (leave `cpu` out for any free CPU)"),
        );
        return None;
    }
    Some(*c.get_ref())
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
    boot_protocol: Option<bool>,
) -> u32 {
    let current = bootproto::PROTOCOL_VERSION;
    let Some(v) = version else { return current };
    let (span, value) = (v.span(), v.into_inner());
    if boot_protocol == Some(false) {
        src.error(
            span,
            format!(
                "{who}: protocol_version has no meaning with boot_protocol = false (the kernel \
                 reads no boot info)"
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
    read: impl FnOnce(&mut Source<'_>, &Spanned<String>) -> Option<Kernel>,
) -> (Option<Kernel>, Range<usize>) {
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

/// Names and explicit CPUs must be unique across instances.
pub(super) fn check_unique(src: &mut Source<'_>, instances: &[Checked]) {
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
