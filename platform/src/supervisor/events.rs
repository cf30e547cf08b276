//! What the supervisor reports while it works. Each event has a level and a one-line message
//! (`Display`), so the manager's log and the host tests read the same words.

use alloc::string::String;
use core::fmt;

use crate::lifecycle::State;
use crate::memmap::Range;

use super::error::{vector_name, Failure};
use super::instance::Fault;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

#[derive(Clone, Copy)]
pub enum Event<'a> {
    /// An instance moved between states.
    Transition { name: &'a str, from: State, to: State, why: &'a dyn fmt::Display },
    /// An instance is refused or failed; `why` says why.
    Failed { name: &'a str, why: &'a Failure },
    /// An image was loaded into its region.
    Loaded {
        name: &'a str,
        bytes: u64,
        zeroed: u64,
        segments: usize,
        relocations: usize,
        region: Range,
        entry: u64,
        tables: usize,
        cpus: &'a [u32],
    },
    /// A Linux kernel was placed in its region with its boot data.
    LoadedLinux {
        name: &'a str,
        /// Load address of the protected-mode kernel (its entry is 0x200 further).
        kernel: u64,
        init_size: u64,
        /// Address and length of the initrd (length 0: none).
        initrd: (u64, u64),
        /// The private ACPI view's RSDP.
        acpi: u64,
        region: Range,
        low: Option<Range>,
        cpus: &'a [u32],
        tables: usize,
    },
    /// A batch of CPUs is about to be started.
    Starting { cpus: usize, instances: usize, init_delay: bool },
    /// A console line of an instance.
    Console { name: &'a str, line: &'a str },
    /// Bytes the instance dropped because its console ring was full.
    ConsoleDropped { name: &'a str, bytes: u64 },
    /// A CPU exception the instance did not handle.
    Fault { name: &'a str, fault: &'a Fault },
    /// A stopped instance's memory was zeroed and read back.
    Scrubbed { name: &'a str, region: Range, verified: u64 },
    /// The restart policy will start the instance again after a back-off.
    RestartScheduled { name: &'a str, after: State, restart: u32, max: u32, delay_ms: u64 },
    /// The restart policy's limit was reached.
    GaveUp { name: &'a str, state: State, max: u32 },
    /// CPUs ran the start-up code that no instance expected (a replayed SIPI, or a CPU
    /// started by someone else); they were halted.
    Strays { count: u32, last_apic_id: u32 },
    /// A pushed image passed its checks and is kept as the instance's next image.
    ImageKept { name: &'a str, size: u64, sha256: &'a str, took_us: u64 },
    /// A transfer ended without an image; the store's room was freed.
    TransferAbandoned { name: &'a str, received: u32, chunks: u32, why: &'a str },
    /// An instance is being started on another image.
    Swapping { name: &'a str, from: super::images::ImageSource, to: super::images::ImageSource },
}

impl Event<'_> {
    pub fn level(&self) -> Level {
        match self {
            Event::Failed { .. } | Event::Fault { .. } | Event::GaveUp { .. } => Level::Error,
            Event::Strays { .. }
            | Event::ConsoleDropped { .. }
            | Event::TransferAbandoned { .. } => Level::Warn,
            Event::Transition { .. }
            | Event::Loaded { .. }
            | Event::LoadedLinux { .. }
            | Event::Starting { .. }
            | Event::Console { .. }
            | Event::Scrubbed { .. }
            | Event::RestartScheduled { .. }
            | Event::ImageKept { .. }
            | Event::Swapping { .. } => Level::Info,
        }
    }
}

impl fmt::Display for Event<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Transition { name, from, to, why } => {
                let why = alloc::format!("{why}");
                if why.is_empty() {
                    write!(f, "instance '{name}': {from} -> {to}")
                } else {
                    write!(f, "instance '{name}': {from} -> {to} ({why})")
                }
            }
            Event::Failed { name, why } => write!(f, "instance '{name}': {why}"),
            Event::LoadedLinux {
                name,
                kernel,
                init_size,
                initrd,
                acpi,
                region,
                low,
                cpus,
                tables,
            } => {
                write!(
                    f,
                    "instance '{name}': Linux at {kernel:#x} (entry {:#x}, {} MiB to decompress in), ",
                    kernel + crate::bzimage::ENTRY_64_OFFSET,
                    init_size.div_ceil(1 << 20)
                )?;
                match initrd {
                    (at, len) if *len > 0 => {
                        write!(f, "initrd {} KiB at {at:#x}, ", len.div_ceil(1024))?
                    }
                    _ => f.write_str("no initrd, ")?,
                }
                write!(f, "ACPI view at {acpi:#x}, region {:#x}..{:#x}", region.start, region.end)?;
                if let Some(l) = low {
                    write!(f, ", low memory {:#x}..{:#x}", l.start, l.end)?;
                }
                write!(
                    f,
                    ", {tables} page tables, boot CPU {}",
                    cpus.first().copied().unwrap_or(0)
                )?;
                if cpus.len() > 1 {
                    f.write_str(" (Linux starts")?;
                    for c in &cpus[1..] {
                        write!(f, " {c}")?;
                    }
                    f.write_str(" itself)")?;
                }
                Ok(())
            }
            Event::Loaded {
                name,
                bytes,
                zeroed,
                segments,
                relocations,
                region,
                entry,
                tables,
                cpus,
            } => {
                write!(
                    f,
                    "instance '{name}': loaded {bytes} bytes ({segments} segments, {relocations} \
                     relocations, {} KiB zeroed) into {:#x}..{:#x}, entry {entry:#x}, {tables} \
                     page tables, CPU",
                    zeroed >> 10,
                    region.start,
                    region.end
                )?;
                if cpus.len() > 1 {
                    f.write_str("s")?;
                }
                for (i, c) in cpus.iter().enumerate() {
                    write!(f, "{}{c}", if i == 0 { " " } else { ", " })?;
                }
                Ok(())
            }
            Event::Starting { cpus, instances, init_delay } => write!(
                f,
                "apstart: INIT-SIPI-SIPI to {cpus} CPU(s) of {instances} instance(s) ({} the \
                 10 ms INIT wait)",
                if *init_delay { "with" } else { "skipping" }
            ),
            Event::Console { name, line } => write!(f, "[{name}] {line}"),
            Event::ConsoleDropped { name, bytes } => {
                write!(f, "[{name}] ... {bytes} bytes dropped (console ring full)")
            }
            Event::Fault { name, fault } => write!(
                f,
                "instance '{name}': FAULTED: {} (vector {}) on APIC {}, error code {:#x}, RIP \
                 {:#x}, CR2 {:#x}, RSP {:#x}; its CPU is parked",
                vector_name(fault.vector),
                fault.vector,
                fault.apic_id,
                fault.error_code,
                fault.rip,
                fault.cr2,
                fault.rsp
            ),
            Event::Scrubbed { name, region, verified } => write!(
                f,
                "instance '{name}': region {:#x}..{:#x} scrubbed: {} KiB verified zero",
                region.start,
                region.end,
                verified >> 10
            ),
            Event::RestartScheduled { name, after, restart, max, delay_ms } => write!(
                f,
                "instance '{name}': {after}; restarting in {delay_ms} ms (on-failure policy, \
                 restart {restart} of {max})"
            ),
            Event::GaveUp { name, state, max } => write!(
                f,
                "instance '{name}': {state} again; restart limit of {max} reached, leaving it \
                 {state}"
            ),
            Event::Strays { count, last_apic_id } => write!(
                f,
                "apstart: {count} CPU(s) ran the start-up code with no start expected (last: APIC \
                 {last_apic_id}); they were halted"
            ),
            Event::ImageKept { name, size, sha256, took_us } => write!(
                f,
                "instance '{name}': image of {size} bytes received in {}.{:03} s, checked and \
                 kept (sha256 {sha256}); 'swap {name}' starts it",
                took_us / 1_000_000,
                took_us / 1000 % 1000
            ),
            Event::TransferAbandoned { name, received, chunks, why } => write!(
                f,
                "instance '{name}': image transfer abandoned after {received} of {chunks} chunks \
                 ({why}); nothing was changed"
            ),
            Event::Swapping { name, from, to } => {
                let text = |s: &super::images::ImageSource| match s {
                    super::images::ImageSource::Bundle => String::from("its boot bundle image"),
                    super::images::ImageSource::Stored(id) => alloc::format!("pushed image {id}"),
                };
                write!(f, "instance '{name}': swapping {} for {}", text(from), text(to))
            }
        }
    }
}
