//! `cargo xtask bench`: the project's performance record, measured under QEMU and printed as
//! tables, written as JSON with a PNG plot beside it. Never asserted by a test: TCG timings
//! vary with the host, so the record names the machine it came from.
//!
//! Two parts:
//! - [`scale`]: a sweep over machine sizes (`-smp` 4, 16, 64, 255, 300; 300 with x2APIC), one
//!   `hello` instance per AP, every phase of the boot start from the manager's `timeline`
//!   report, and the ratios the scale goals are stated in.
//! - [`restart`]: restart and stop/start figures on the default manifest, through the shell.
//! - [`channels`]: channel round-trip latency and message rate, polled and with doorbells,
//!   against the same exchange on one CPU.
//!
//! `--quick` (for CI, under two minutes): the sweep at 4, 16 and 64 CPUs, one run each, three
//! restarts, one boot per channel mode. `--only` picks parts.

mod channels;
mod plot;
mod restart;
mod scale;

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;
use qemu_tests::qemu::Firmware;
use serde_json::{json, Value};

use crate::build;

/// What `cargo xtask bench` was asked to do.
pub struct Options {
    pub firmware: Firmware,
    pub runs: u32,
    pub restarts: u32,
    pub smp: Vec<u32>,
    pub quick: bool,
    pub json: Option<PathBuf>,
    /// The parts to run; empty means all.
    pub only: Vec<Part>,
}

/// One part of the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Scale,
    Restart,
    Channels,
}

pub fn run(o: Options) -> anyhow::Result<()> {
    let (sizes, runs, restarts) = if o.quick {
        (vec![4, 16, 64], 1, o.restarts.min(3))
    } else {
        (o.smp.clone(), o.runs, o.restarts)
    };
    let machine = host_machine();
    println!(
        "bench: {} firmware, TCG, on {} ({} host CPUs), {}",
        o.firmware.name(),
        machine["cpu"].as_str().unwrap_or("?"),
        machine["host_cpus"],
        machine["qemu"].as_str().unwrap_or("?"),
    );
    let wanted = |p: Part| o.only.is_empty() || o.only.contains(&p);
    let sweep =
        if wanted(Part::Scale) { scale::run(o.firmware, &sizes, runs)? } else { Value::Null };
    let restart = if wanted(Part::Restart) {
        restart::run(o.firmware, runs, restarts, 4)?
    } else {
        Value::Null
    };
    let channels =
        if wanted(Part::Channels) { channels::run(o.firmware, runs)? } else { Value::Null };
    let record = json!({
        "version": 1,
        "firmware": o.firmware.name(),
        "quick": o.quick,
        "machine": machine,
        "scale": sweep,
        "restart": restart,
        "channels": channels,
    });
    let path = o.json.unwrap_or_else(|| build::target_dir().join("bench").join("bench.json"));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(&record)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    if record["scale"].is_null() {
        println!("\nbench: wrote {}", path.display());
    } else {
        let png = path.with_extension("png");
        plot::bring_up(&record, &png)?;
        println!("\nbench: wrote {} and {}", path.display(), png.display());
    }
    Ok(())
}

/// The host the figures came from: CPU model, CPU count, QEMU version.
fn host_machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split(':').nth(1)))
        .map_or("unknown CPU".to_string(), |s| s.trim().to_string());
    let host_cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let qemu = Command::new(qemu_tests::qemu::QEMU)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "QEMU version unknown".into());
    json!({ "cpu": cpu, "host_cpus": host_cpus, "qemu": qemu })
}

/// (min, median, max) of `v`, or `None` if it is empty.
pub(crate) fn stats(v: &[u64]) -> Option<(u64, u64, u64)> {
    let mut v = v.to_vec();
    v.sort_unstable();
    Some((*v.first()?, v[v.len() / 2], *v.last()?))
}

/// `{"n", "min", "median", "max"}` of `v` (nulls if empty).
pub(crate) fn stats_json(v: &[u64]) -> Value {
    match stats(v) {
        Some((min, med, max)) => json!({ "n": v.len(), "min": min, "median": med, "max": max }),
        None => json!({ "n": 0, "min": null, "median": null, "max": null }),
    }
}
