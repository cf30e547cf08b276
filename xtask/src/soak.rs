//! `cargo xtask soak`: restart one instance many times while hostile neighbours misbehave, and
//! check at the end that nothing leaked and nothing was lost. Not part of `cargo xtask test`
//! (it takes minutes); its figures go into the issue notes and the README.
//!
//! The machine runs `victim` (a `hello`, restarted through the control shell `--cycles` times),
//! `good` (a `hello` that must keep every console line), and three hostile neighbours that the
//! restart policy keeps restarting the whole time: `storm` exits at once, `liar` writes an
//! impossible status word, `spam` floods its console. At the end it checks:
//! - the manager's free frames and page-table pool are what they were before the first cycle;
//! - every cycle scrubbed and verified the victim's region, and started it again;
//! - the heap did not grow (beyond a small slack for bounded logs filling up);
//! - `good` lost no console byte and printed its ticks in order;
//! - the manager reached its own verdict (no panic, reset or timeout).

use std::time::{Duration, Instant};

use anyhow::bail;
use qemu_tests::qemu::{self, Firmware, InputStep};
use qemu_tests::scenarios::KernelVariant;

use crate::{build, bundle, prereq};

/// Heap growth allowed between the first and the last `list` (bounded logs filling up).
const HEAP_SLACK_BYTES: u64 = 64 * 1024;

const MANIFEST: &str = r#"
[settings]
run_ms = 0
log_level = "info"

[[instance]]
name = "victim"
payload = "hello"
memory = "8M"
args = "ticks=1"

[[instance]]
name = "good"
payload = "hello"
memory = "8M"
args = "ticks=1000000"

[[instance]]
name = "storm"
payload = "hostile-c"
memory = "4M"
args = "exit=1"
restart = "on-failure"
max_restarts = 1000000

[[instance]]
name = "liar"
payload = "hostile-c"
memory = "4M"
args = "state=77"
restart = "on-failure"
max_restarts = 1000000

[[instance]]
name = "spam"
payload = "fault"
memory = "4M"
args = "flood=100000"
"#;

pub fn run(firmware: Firmware, cycles: u32) -> anyhow::Result<()> {
    let ovmf = prereq::ensure_qemu(firmware)?;
    let dir = crate::run_dir(&format!("soak-{}", firmware.name()))?;
    let manifest = dir.join("soak.toml");
    std::fs::write(&manifest, MANIFEST)?;
    let bundle = crate::manifest_bundle(&manifest)?;
    let kernel = build::build_kernel(KernelVariant::Qemu)?;
    let ramdisk = bundle::save(&bundle, &dir.join("bundle.bin"))?;
    let image = build::build_image(&kernel, Some(&ramdisk), firmware, &dir, "disk")?;
    // The two counts compared are taken with the same instances running: the restarting
    // neighbours are stopped around each (their page tables come and go with their restarts).
    let step = |cmd: &str| InputStep::new("mk> ", &format!("{cmd}\r"));
    let mut input = vec![InputStep::new("[good] hello: tick 1", "")];
    input.extend(["stop storm", "stop liar", "list", "start storm", "start liar"].map(step));
    input.extend((0..cycles).map(|_| step("restart victim")));
    input.extend(["stop storm", "stop liar", "list", "quit"].map(step));
    let cfg = qemu::Config {
        smp: 6,
        memory: "1G".into(),
        timeout: Duration::from_secs(60 + u64::from(cycles)),
        input,
        ..qemu::Config::new(firmware, image, &dir, ovmf)
    };
    eprintln!(
        "soak: {cycles} restarts of 'victim' next to three hostile neighbours ({})",
        firmware.name()
    );
    let t0 = Instant::now();
    let outcome = qemu::run(&cfg)?;
    let took = t0.elapsed();
    let report = crate::write_report(&cfg, &outcome, &dir)?;
    let s = &outcome.serial;
    let frames: Vec<&str> = s.lines().filter(|l| l.starts_with("frames: manager ")).collect();
    let heaps: Vec<u64> = s
        .lines()
        .filter_map(|l| l.strip_prefix("heap: "))
        .filter_map(|l| l.split(' ').next()?.parse::<u64>().ok())
        .collect();
    let scrubs = s
        .lines()
        .filter(|l| l.contains("instance 'victim': region ") && l.contains("KiB verified zero"))
        .count();
    let starts = s.matches("instance 'victim': stopped -> started").count();
    let storm = s.matches("instance 'storm': exited; restarting in").count();
    let liar = s.matches("status block field `state` holds 77").count();
    let ticks: Vec<u64> = s
        .lines()
        .filter_map(|l| l.strip_prefix("[good] hello: tick "))
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let in_order = ticks.windows(2).all(|w| w[1] == w[0] + 1);
    let good_dropped = s.contains("[good] ... ");

    println!(
        "soak: {cycles} cycles in {:.1} s ({} firmware, -smp 6, 1 GiB)",
        took.as_secs_f64(),
        firmware.name()
    );
    println!("  victim: {starts} restarts, {scrubs} verified scrubs");
    println!("  neighbours: storm restarted {storm} times, liar failed {liar} times");
    println!("  good: {} ticks, in order: {in_order}, bytes dropped: {good_dropped}", ticks.len());
    println!("  free frames: {frames:?}");
    println!("  heap (KiB): {heaps:?}");
    println!("  log: {}\n  report: {}", cfg.serial_log.display(), report.display());

    let mut problems = Vec::new();
    if !matches!(outcome.ending, qemu_tests::verdict::Ending::Exited(35 | 33)) {
        problems.push(format!("the manager did not reach its verdict: {}", outcome.verdict.reason));
    }
    if s.contains("PANIC") {
        problems.push("the manager panicked".to_string());
    }
    if frames.len() != 2 || frames[0] != frames[1] {
        problems.push(format!("free frames changed: {frames:?}"));
    }
    if scrubs != cycles as usize || starts != cycles as usize {
        problems.push(format!("{starts} starts and {scrubs} scrubs for {cycles} cycles"));
    }
    if heaps.len() != 2 || heaps[1] > heaps[0] + HEAP_SLACK_BYTES / 1024 {
        problems.push(format!("the heap grew: {heaps:?} KiB"));
    }
    if !in_order || good_dropped || ticks.is_empty() {
        problems.push("the well-behaved neighbour lost console lines".to_string());
    }
    if storm == 0 || liar == 0 {
        problems.push("the hostile neighbours did not misbehave".to_string());
    }
    if problems.is_empty() {
        println!("soak: PASS");
        return Ok(());
    }
    for p in &problems {
        println!("soak: FAIL: {p}");
    }
    bail!("soak failed ({} problems); see {}", problems.len(), cfg.serial_log.display())
}
