//! The QEMU test scenarios run by `cargo xtask test`.
//!
//! Each scenario names the manager build it needs, how to boot it, and a check over what the
//! machine printed and reported. A check asserts on content (the banner, the firmware the
//! manager detected, report fields), never only on the exit status.

use serde_json::Value;

use crate::qemu::{Firmware, Outcome};
use crate::report::collect_sections;

/// Which build of the manager a scenario boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelVariant {
    /// The manager for real machines (USB stick images): never touches QEMU's exit port.
    Usb,
    /// The normal manager, built for QEMU runs (exit port enabled).
    Qemu,
    /// The manager with the `selftest-panic` feature: panics right after its banner.
    SelftestPanic,
}

impl KernelVariant {
    /// Cargo features for the kernel crate.
    pub fn features(self) -> &'static [&'static str] {
        match self {
            KernelVariant::Usb => &[],
            KernelVariant::Qemu => &["qemu-exit"],
            KernelVariant::SelftestPanic => &["qemu-exit", "selftest-panic"],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KernelVariant::Usb => "usb",
            KernelVariant::Qemu => "qemu",
            KernelVariant::SelftestPanic => "selftest-panic",
        }
    }
}

/// One instance of a scenario's boot bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InstanceSpec {
    pub name: &'static str,
    /// A payload of this repository (`hello`, `compute`, `fault`, `hello-c`).
    pub payload: &'static str,
    /// APIC ID, or `None` for the next free CPU.
    pub cpu: Option<u32>,
    pub memory_mib: u64,
    pub args: &'static str,
}

const fn inst(
    name: &'static str,
    payload: &'static str,
    cpu: Option<u32>,
    args: &'static str,
) -> InstanceSpec {
    InstanceSpec { name, payload, cpu, memory_mib: 8, args }
}

/// The default run: two different Rust kernels and a C kernel on APs 1-3.
pub const DEFAULT_INSTANCES: &[InstanceSpec] = &[
    inst("hello", "hello", None, "ticks=5 greeting=side-by-side"),
    inst("compute", "compute", None, "primes=100000"),
    inst("hello-c", "hello-c", None, ""),
];

/// Seven instances for -smp 8.
pub const SEVEN_INSTANCES: &[InstanceSpec] = &[
    inst("hello-1", "hello", None, "ticks=3"),
    inst("compute-1", "compute", None, "primes=50000"),
    inst("c-1", "hello-c", None, ""),
    inst("hello-2", "hello", None, "ticks=3"),
    inst("compute-2", "compute", None, "primes=20000"),
    inst("c-2", "hello-c", None, ""),
    inst("hello-3", "hello", None, "ticks=3"),
];

/// A CPU that does not exist next to two good instances.
pub const MISSING_CPU_INSTANCES: &[InstanceSpec] = &[
    inst("hello", "hello", Some(1), "ticks=3"),
    inst("ghost", "hello", Some(9), ""),
    inst("hello-c", "hello-c", Some(3), ""),
];

/// A faulting instance between two that keep heartbeating.
pub const FAULT_INSTANCES: &[InstanceSpec] = &[
    inst("hello", "hello", Some(1), "ticks=8"),
    inst("crash", "fault", Some(2), "page-fault"),
    inst("compute", "compute", Some(3), "primes=100000"),
];

pub struct Scenario {
    pub name: &'static str,
    pub firmware: Firmware,
    pub kernel: KernelVariant,
    pub instances: &'static [InstanceSpec],
    pub smp: u32,
    pub memory: &'static str,
    /// QEMU `-cpu` model, if not the default.
    pub cpu: Option<&'static str>,
    /// The oldest QEMU (major, minor) that can run the scenario; older ones skip it, saying so.
    pub needs_qemu: Option<(u32, u32)>,
    pub timeout_secs: u64,
    /// Returns what is wrong, or `Ok` when the run shows the behaviour.
    pub check: fn(&Outcome) -> Result<(), String>,
}

const fn scenario(
    name: &'static str,
    firmware: Firmware,
    instances: &'static [InstanceSpec],
    smp: u32,
    check: fn(&Outcome) -> Result<(), String>,
) -> Scenario {
    Scenario {
        name,
        firmware,
        kernel: KernelVariant::Qemu,
        instances,
        smp,
        memory: "512M",
        cpu: None,
        needs_qemu: None,
        timeout_secs: 120,
        check,
    }
}

pub fn all() -> Vec<Scenario> {
    use Firmware::{Bios, Uefi};
    let mut v = vec![
        scenario("default-three-kernels-bios", Bios, DEFAULT_INSTANCES, 4, |o| {
            check_banner(o, "BIOS")?;
            check_default_run(o, 4)
        }),
        scenario("default-three-kernels-uefi", Uefi, DEFAULT_INSTANCES, 4, |o| {
            check_banner(o, "UEFI")?;
            check_default_run(o, 4)
        }),
        scenario("seven-instances-smp8-bios", Bios, SEVEN_INSTANCES, 8, check_seven),
        scenario("seven-instances-smp8-uefi", Uefi, SEVEN_INSTANCES, 8, check_seven),
        scenario("missing-cpu-refused-bios", Bios, MISSING_CPU_INSTANCES, 4, check_missing_cpu),
        scenario("missing-cpu-refused-uefi", Uefi, MISSING_CPU_INSTANCES, 4, check_missing_cpu),
        scenario("fault-contained-bios", Bios, FAULT_INSTANCES, 4, check_fault),
        scenario("fault-contained-uefi", Uefi, FAULT_INSTANCES, 4, check_fault),
    ];
    for (name, fw) in [("x2apic-default-run-bios", Bios), ("x2apic-default-run-uefi", Uefi)] {
        let mut s = scenario(name, fw, DEFAULT_INSTANCES, 4, check_x2apic);
        s.cpu = Some("qemu64,+x2apic");
        // TCG models x2APIC from QEMU 9 on (shared/TOOLCHAIN.md: 7.2 has none).
        s.needs_qemu = Some((9, 0));
        v.push(s);
    }
    let mut panic = scenario("panic-is-a-failure-bios", Bios, &[], 4, check_panic_reported);
    panic.kernel = KernelVariant::SelftestPanic;
    v.push(panic);
    v
}

fn instances(o: &Outcome) -> Result<Vec<Value>, String> {
    let (sections, _) = collect_sections(&o.serial);
    match sections.get("instances") {
        Some(Value::Array(items)) => Ok(items.clone()),
        _ => Err("no `instances` report section".into()),
    }
}

fn instance<'a>(list: &'a [Value], name: &str) -> Result<&'a Value, String> {
    list.iter().find(|i| i["name"] == name).ok_or_else(|| format!("instance '{name}' not reported"))
}

/// Lines the manager printed for an instance's console.
fn console<'a>(o: &'a Outcome, name: &str) -> Vec<&'a str> {
    let prefix = format!("[{name}] ");
    o.serial.lines().filter_map(|l| l.strip_prefix(prefix.as_str())).collect()
}

fn check_cpus(o: &Outcome, smp: u64) -> Result<(), String> {
    let (sections, _) = collect_sections(&o.serial);
    let cpus = sections.get("cpus").and_then(Value::as_array).ok_or("no `cpus` report section")?;
    expect(cpus.len() as u64 == smp, || format!("{} CPUs reported, expected {smp}", cpus.len()))?;
    let bsps: Vec<_> = cpus.iter().filter(|c| c["bsp"] == true).collect();
    expect(bsps.len() == 1 && bsps[0]["apic_id"] == 0, || format!("BSP marking wrong: {bsps:?}"))?;
    for (i, c) in cpus.iter().enumerate() {
        expect(c["apic_id"] == i as u64 && c["enabled"] == true, || format!("CPU {i}: {c}"))?;
    }
    let plan = sections.get("plan").and_then(Value::as_array).ok_or("no `plan` report section")?;
    // No two planned regions overlap.
    let mut ranges: Vec<(u64, u64, String)> = plan
        .iter()
        .map(|r| {
            let base = r["base"].as_u64().unwrap_or(0);
            (base, base + r["size"].as_u64().unwrap_or(0), r["owner"].to_string())
        })
        .collect();
    ranges.sort();
    for w in ranges.windows(2) {
        expect(w[0].1 <= w[1].0, || format!("plan regions overlap: {:?} and {:?}", w[0], w[1]))?;
    }
    Ok(())
}

fn check_running(list: &[Value], name: &str) -> Result<(), String> {
    let i = instance(list, name)?;
    expect(i["state"] == "running", || format!("instance '{name}' is {} ({})", i["state"], i["reason"]))?;
    expect(i["heartbeat"].as_u64().unwrap_or(0) > 0, || format!("instance '{name}' never heartbeat"))?;
    expect(i["checkin_us"].is_u64(), || format!("instance '{name}' has no check-in time"))
}

fn check_default_run(o: &Outcome, smp: u64) -> Result<(), String> {
    expect(o.verdict.pass, || format!("run failed: {}", o.verdict.reason))?;
    check_cpus(o, smp)?;
    let list = instances(o)?;
    expect(list.len() == 3, || format!("{} instances reported, expected 3", list.len()))?;
    let mut apics = Vec::new();
    for name in ["hello", "compute", "hello-c"] {
        check_running(&list, name)?;
        apics.push(instance(&list, name)?["apic_id"].as_u64().unwrap_or(0));
    }
    apics.sort();
    expect(apics == [1, 2, 3], || format!("instances ran on APICs {apics:?}, expected 1, 2, 3"))?;
    let hello = console(o, "hello");
    expect(hello.iter().any(|l| l.contains("checksum ok")), || format!("hello did not verify its image: {hello:?}"))?;
    expect(hello.iter().any(|l| l.contains("args \"ticks=5 greeting=side-by-side\"")), || {
        format!("hello did not print its args: {hello:?}")
    })?;
    expect(hello.iter().any(|l| l.contains("tick 5")), || format!("hello stopped early: {hello:?}"))?;
    let compute = console(o, "compute");
    expect(compute.iter().any(|l| l.contains("primes below 100000: 9592")), || {
        format!("compute printed no correct result: {compute:?}")
    })?;
    expect(instance(&list, "compute")?["result"] == 9592, || "compute reported no result".into())?;
    let c = console(o, "hello-c");
    expect(c.iter().any(|l| l.contains("hello from C")), || format!("the C kernel printed nothing: {c:?}"))
}

fn check_seven(o: &Outcome) -> Result<(), String> {
    expect(o.verdict.pass, || format!("run failed: {}", o.verdict.reason))?;
    check_cpus(o, 8)?;
    let list = instances(o)?;
    expect(list.len() == 7, || format!("{} instances reported, expected 7", list.len()))?;
    for spec in SEVEN_INSTANCES {
        check_running(&list, spec.name)?;
        expect(!console(o, spec.name).is_empty(), || format!("no console output from {}", spec.name))?;
    }
    let mut apics: Vec<u64> = list.iter().map(|i| i["apic_id"].as_u64().unwrap_or(0)).collect();
    apics.sort();
    expect(apics == [1, 2, 3, 4, 5, 6, 7], || format!("APICs used: {apics:?}"))
}

fn check_missing_cpu(o: &Outcome) -> Result<(), String> {
    expect(!o.verdict.pass, || "a run with a refused instance must not pass".into())?;
    let list = instances(o)?;
    let ghost = instance(&list, "ghost")?;
    expect(ghost["state"] == "failed", || format!("ghost is {}", ghost["state"]))?;
    let reason = ghost["reason"].as_str().unwrap_or("");
    expect(reason.contains("CPU 9 does not exist") && reason.contains("0, 1, 2, 3"), || {
        format!("unspecific refusal: {reason:?}")
    })?;
    expect(!o.serial.contains("-> APIC 9"), || "an IPI was sent to the missing CPU".into())?;
    expect(!ghost["region_base"].is_u64(), || "memory was carved for a refused instance".into())?;
    check_running(&list, "hello")?;
    check_running(&list, "hello-c")?;
    expect(o.serial.contains("ipi: SIPI -> APIC 1") && o.serial.contains("ipi: SIPI -> APIC 3"), || {
        "the good instances were not started".into()
    })
}

fn check_fault(o: &Outcome) -> Result<(), String> {
    let list = instances(o)?;
    let crash = instance(&list, "crash")?;
    expect(crash["state"] == "faulted", || format!("crash is {} ({})", crash["state"], crash["reason"]))?;
    expect(crash["fault"]["vector"] == 14, || format!("fault record: {}", crash["fault"]))?;
    expect(crash["fault"]["cr2"] == 0x7fff_0000_0000u64, || format!("fault CR2: {}", crash["fault"]))?;
    let rip = crash["fault"]["rip"].as_u64().unwrap_or(0);
    let base = crash["region_base"].as_u64().unwrap_or(u64::MAX);
    let size = crash["region_size"].as_u64().unwrap_or(0);
    expect(rip >= base && rip < base + size, || format!("fault RIP {rip:#x} is not inside the instance"))?;
    expect(o.serial.contains("FAULTED: page fault (#PF) (vector 14)"), || "no fault message on the console".into())?;
    // The neighbours kept going after the fault: hello printed all its ticks.
    check_running(&list, "hello")?;
    check_running(&list, "compute")?;
    let hello = console(o, "hello");
    expect(hello.iter().any(|l| l.contains("tick 8")), || format!("hello stopped after the fault: {hello:?}"))?;
    let hb = instance(&list, "compute")?["heartbeat"].as_u64().unwrap_or(0);
    expect(hb > 20, || format!("compute heartbeat only {hb}"))?;
    expect(!o.verdict.pass, || "a faulted instance must fail the run".into())
}

fn check_x2apic(o: &Outcome) -> Result<(), String> {
    let (sections, _) = collect_sections(&o.serial);
    let apic = sections.get("apic").ok_or("no `apic` report section")?;
    expect(apic["mode"] == "X2Apic", || format!("APIC mode in force: {}", apic["mode"]))?;
    check_default_run(o, 4)
}

fn expect(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(what())
    }
}

fn check_banner(o: &Outcome, firmware: &str) -> Result<(), String> {
    expect(o.verdict.pass, || format!("run failed: {}", o.verdict.reason))?;
    let s = &o.serial;
    expect(s.contains("multikernel manager"), || "no banner on the console".into())?;
    expect(s.contains(&format!("firmware: {firmware}")), || {
        format!("the manager did not detect {firmware} firmware")
    })?;
    expect(s.contains("acpi: RSDP at 0x"), || "no RSDP address in the banner".into())?;
    expect(s.lines().any(|l| l.starts_with("memmap 0x") && l.ends_with("usable")), || {
        "no usable memory region listed".into()
    })?;
    let (sections, _) = collect_sections(s);
    let boot = sections.get("boot").ok_or("no `boot` report section")?;
    expect(boot["firmware"] == Value::from(firmware), || {
        format!("report firmware is {}", boot["firmware"])
    })?;
    // 512 MiB of RAM: well over 400 MiB must be usable, and never more than the machine has.
    let usable = boot["usable_bytes"].as_u64().unwrap_or(0);
    expect((400 << 20..=512 << 20).contains(&usable), || {
        format!("implausible usable memory for a 512 MiB machine: {usable} bytes")
    })?;
    expect(boot["rsdp"].as_u64().unwrap_or(0) != 0, || "report has no RSDP".into())?;
    expect(boot["free_frames"].as_u64().unwrap_or(0) > 1000, || "frame allocator is empty".into())?;
    expect(s.contains("manager: boot complete"), || "the manager did not finish booting".into())
}

fn check_panic_reported(o: &Outcome) -> Result<(), String> {
    expect(!o.verdict.pass, || "a panicking manager was reported as a pass".into())?;
    expect(o.verdict.reason.contains("self-test: the manager panics on purpose"), || {
        format!("the verdict does not carry the panic message: {}", o.verdict.reason)
    })?;
    expect(o.verdict.reason.contains("kernel/src/main.rs"), || {
        format!("the verdict does not carry the panic location: {}", o.verdict.reason)
    })
}
