//! Restart figures: how fast the manager stops and starts kernels and how much memory it uses.
//!
//! Each run boots the default manifest with no time limit, restarts `hello` through the
//! control shell a number of times, and quits; the figures come from the run report the
//! manager writes: AP check-in latency (first INIT → the AP's time stamp at the trampoline),
//! report-in latency (check-in → the payload's RUNNING), stop and start durations, page-table
//! frames per instance, and the manager's heap use.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use bootproto::report::section;
use qemu_tests::qemu::{self, Firmware, InputStep};
use qemu_tests::report::collect_sections;
use serde_json::{json, Value};

use super::{stats, stats_json};
use crate::{build, prereq};

#[derive(Default)]
struct Samples {
    checkin_us: Vec<u64>,
    report_in_us: Vec<u64>,
    stop_us: Vec<u64>,
    start_us: Vec<u64>,
    page_tables: Vec<u64>,
    heap_used: Vec<u64>,
    boot_ms: Vec<u64>,
}

pub fn run(firmware: Firmware, runs: u32, restarts: u32, smp: u32) -> anyhow::Result<Value> {
    let ovmf = prereq::ensure_qemu(firmware)?;
    let kernel = build::build_kernel(qemu_tests::scenarios::KernelVariant::Qemu)?;
    let mut bundle = crate::manifest_bundle(&crate::default_manifest())?;
    bundle.settings.run_ms = 0;
    let mut samples = Samples::default();
    for n in 0..runs {
        let dir = crate::run_dir(&format!("bench-{}-{n}", firmware.name()))?;
        let ramdisk = crate::bundle::save(&bundle, &dir.join("bundle.bin"))?;
        let image = build::build_image(&kernel, Some(&ramdisk), firmware, &dir, "disk")?;
        let mut input: Vec<InputStep> =
            (0..restarts).map(|_| InputStep::new("mk> ", "restart hello\r")).collect();
        input.push(InputStep::new("mk> ", "quit\r"));
        let cfg = qemu::Config {
            smp,
            timeout: Duration::from_secs(120 + 10 * restarts as u64),
            input,
            ..qemu::Config::new(firmware, image, &dir, ovmf.clone())
        };
        let outcome = qemu::run(&cfg)?;
        if !outcome.verdict.pass {
            bail!(
                "bench run {n} failed: {} (log: {})",
                outcome.verdict.reason,
                cfg.serial_log.display()
            );
        }
        collect(&outcome.serial, &mut samples, &cfg.serial_log)?;
        eprintln!("bench: run {} of {runs} done ({:.1} s)", n + 1, outcome.duration.as_secs_f64());
    }
    print(&samples, runs, restarts, smp);
    Ok(json!({
        "smp": smp,
        "runs": runs,
        "restarts_per_run": restarts,
        "boot_ms": stats_json(&samples.boot_ms),
        "checkin_us": stats_json(&samples.checkin_us),
        "report_in_us": stats_json(&samples.report_in_us),
        "stop_us": stats_json(&samples.stop_us),
        "start_us": stats_json(&samples.start_us),
        "page_tables": stats_json(&samples.page_tables),
        "heap_used": stats_json(&samples.heap_used),
    }))
}

fn collect(serial: &str, s: &mut Samples, log: &Path) -> anyhow::Result<()> {
    let (sections, _) = collect_sections(serial);
    let instances = sections
        .get("instances")
        .and_then(Value::as_array)
        .with_context(|| format!("no instances section in {}", log.display()))?;
    for i in instances {
        let t = i["transitions"].as_array().cloned().unwrap_or_default();
        let at =
            |state: &str| t.iter().find(|x| x["state"] == state).and_then(|x| x["t_us"].as_u64());
        if let Some(c) = i["checkin_us"].as_u64() {
            s.checkin_us.push(c);
        }
        if let (Some(a), Some(b)) = (at("started"), at("running")) {
            s.report_in_us.push(b.saturating_sub(a));
        }
        let nums = |v: &Value| {
            v.as_array().map(|a| a.iter().filter_map(Value::as_u64).collect::<Vec<_>>())
        };
        s.stop_us.extend(nums(&i["stop_us"]).unwrap_or_default());
        s.start_us.extend(nums(&i["start_us"]).unwrap_or_default());
        if let Some(p) = i["page_tables"].as_u64() {
            s.page_tables.push(p);
        }
    }
    if let Some(h) = sections.get(section::FRAMES).and_then(|f| f["heap_used"].as_u64()) {
        s.heap_used.push(h);
    }
    // Boot time: the first time stamp on the line that says the last instance reported in.
    let last_running = serial
        .lines()
        .filter(|l| l.contains("-> running"))
        .take(instances.len())
        .last()
        .and_then(|l| l.trim_start_matches('[').split(']').next())
        .and_then(|t| t.trim().parse::<f64>().ok());
    if let Some(secs) = last_running {
        s.boot_ms.push((secs * 1000.0) as u64);
    }
    Ok(())
}

fn print(s: &Samples, runs: u32, restarts: u32, smp: u32) {
    println!(
        "\nrestarts: default manifest, -smp {smp}, {runs} run(s), {restarts} restarts of 'hello' per run"
    );
    println!("{:<44} {:>6} {:>10} {:>10} {:>10}", "metric", "n", "min", "median", "max");
    let rows: [(&str, &[u64], &str); 7] = [
        ("manager start to all instances running", &s.boot_ms, "ms"),
        ("AP check-in after the first INIT", &s.checkin_us, "us"),
        ("check-in to payload running", &s.report_in_us, "us"),
        ("stop (INIT, park, drain, scrub 8 MiB, verify)", &s.stop_us, "us"),
        ("start (load, tables, IPIs, check-in, running)", &s.start_us, "us"),
        ("page-table frames per instance", &s.page_tables, "frames"),
        ("manager heap in use at the end", &s.heap_used, "bytes"),
    ];
    for (name, v, unit) in rows {
        match stats(v) {
            Some((min, med, max)) => {
                println!("{:<44} {:>6} {:>10} {:>10} {:>10} {unit}", name, v.len(), min, med, max)
            }
            None => println!("{name:<44} {:>6} {:>10}", 0, "-"),
        }
    }
}
