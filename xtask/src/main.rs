//! `cargo xtask`: the single entry point for building, imaging, booting and testing the
//! multikernel manager.
//!
//! Every subcommand and flag documents itself (`cargo xtask help`, `cargo xtask run-qemu
//! --help`). The host-side logic it uses lives in library crates (`tests/` for QEMU runs and
//! scenarios, `platform/` and `loader/` for inspection), so xtask stays a thin command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use qemu_tests::qemu::{self, Accel, Firmware};
use qemu_tests::report::{collect_sections, RunReport, REPORT_VERSION};
use qemu_tests::scenarios::{self, KernelVariant};

mod bench;
mod build;
mod bundle;
mod capture;
mod flash;
mod inspect;
mod lint;
mod linux;
mod machine;
mod manifest;
mod payloads;
mod prereq;
mod push;
mod soak;

/// Build, boot and test the multikernel boot manager.
#[derive(Parser, Debug)]
#[command(name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Build the manager (and the payloads, once there are any) for x86_64-unknown-none.
    Build,
    /// Build raw disk images (for QEMU or a USB stick) and print their paths.
    ///
    /// The images start the manifest's instances and supervise them forever (the manifest's
    /// run_ms is for QEMU runs).
    Image {
        /// Which firmware the image boots on.
        #[arg(long, value_enum, default_value_t = FirmwareArg::Both)]
        firmware: FirmwareArg,
        /// Directory for the images.
        #[arg(long)]
        out: Option<PathBuf>,
        /// The manifest: which kernels to start (default: manifests/default.toml).
        #[arg(long, value_name = "PATH")]
        manifest: Option<PathBuf>,
    },
    /// Measure how fast kernels start and restart under QEMU, and the memory the manager uses;
    /// prints a table of figures.
    Bench {
        /// Firmware to boot with.
        #[arg(long, value_enum, default_value_t = RunFirmware::Bios)]
        firmware: RunFirmware,
        /// Boots per machine size (and of the restart figures).
        #[arg(long, default_value_t = 3)]
        runs: u32,
        /// Restarts of the `hello` instance per boot, through the control shell.
        #[arg(long, default_value_t = 10)]
        restarts: u32,
        /// The machine sizes of the scale sweep (-smp; above 255 runs with x2APIC).
        #[arg(long, value_delimiter = ',', default_value = "4,16,64,255,300")]
        smp: Vec<u32>,
        /// The CI version: sizes 4, 16 and 64, one run each, three restarts (under 2 minutes).
        #[arg(long)]
        quick: bool,
        /// Where to write the JSON record (default target/bench/bench.json); the PNG plot goes
        /// beside it.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Run only these parts (default: all of scale, restart, channels).
        #[arg(long, value_enum, value_delimiter = ',')]
        only: Vec<bench::Part>,
    },
    /// Restart an instance many times next to hostile neighbours, then check that no frame,
    /// heap byte or console line was lost (minutes; not part of `test`).
    Soak {
        /// Firmware to boot with.
        #[arg(long, value_enum, default_value_t = RunFirmware::Bios)]
        firmware: RunFirmware,
        /// Restarts of the victim instance.
        #[arg(long, default_value_t = 500)]
        cycles: u32,
    },
    /// Check a manifest on the host without booting anything.
    ///
    /// Prints the instances it would start, one line each, or every error found
    /// (`file:line:column: ...`) and exits non-zero. Whether a CPU exists and whether the memory
    /// fits the machine are checked by the manager at boot, or here with --machine.
    Check {
        /// The manifest to check (see docs/manifest.md).
        manifest: PathBuf,
        /// Also plan it on this machine, with the manager's own code (run it on the target
        /// under any Linux, e.g. a live USB, as root): the CPU inventory, each instance's CPUs,
        /// memory, low memory and UARTs or the manager's refusal in its own words, and which
        /// image to write (bios or uefi). Exits non-zero if the manager would refuse anything.
        #[arg(long)]
        machine: bool,
        /// Read the machine from this directory instead of /sys (laid out like /sys: a
        /// `cargo xtask capture-machine` directory).
        #[arg(long, value_name = "DIR", requires = "machine")]
        sysfs: Option<PathBuf>,
    },
    /// Copy what `check --machine` reads of this machine into a directory, for a bug report.
    ///
    /// The MADT, the firmware memory map, whether it booted UEFI and its serial ports, with
    /// `uname -a`; `check --machine --sysfs OUT` reads it back. Run as root (the ACPI tables
    /// are readable by root only).
    CaptureMachine {
        /// The directory to write (created; must not hold a capture already).
        out: PathBuf,
    },
    /// Build the USB disk image and write it to a removable disk, with checks first.
    ///
    /// Refuses anything but a whole, unmounted, removable disk that is not the running system's
    /// and is big enough; shows its vendor, model and size and asks you to type its name; writes
    /// in 4 MiB blocks, syncs, reads it back and compares. Needs write access to the device
    /// (root, or the disk group).
    Flash {
        /// The whole disk to write, e.g. /dev/sdb (or a /dev/disk/by-id/... link to it).
        /// Everything on it is lost.
        #[arg(long, value_name = "DEVICE")]
        device: PathBuf,
        /// Which firmware the target boots with (`check --machine` says which).
        #[arg(long, value_enum, default_value_t = RunFirmware::Bios)]
        firmware: RunFirmware,
        /// The manifest: which kernels to start (default: manifests/default.toml).
        #[arg(long, value_name = "PATH")]
        manifest: Option<PathBuf>,
        /// Do not ask for confirmation (for scripts).
        #[arg(long)]
        yes: bool,
        /// Also write a disk that is not marked removable (some USB disks report themselves
        /// as fixed; so do internal disks).
        #[arg(long)]
        allow_fixed: bool,
    },
    /// Send a kernel image to a running manager (and swap it in with --swap).
    ///
    /// The image is checked on the host first with the manager's code (the instance exists, the
    /// image fits the image store and the instance's region, it is an ELF or, for a Linux
    /// instance, a bzImage), then sent in checksummed chunks over the manager's console: a
    /// `run-qemu` run's console.sock (--run, the run directory it printed) or a serial device.
    Push {
        /// The instance the image is for.
        #[arg(long)]
        instance: String,
        /// The kernel image (an ELF, or a bzImage for a Linux instance).
        #[arg(long)]
        image: PathBuf,
        /// Stop the instance and start the new image once it is kept.
        #[arg(long)]
        swap: bool,
        /// The run directory of a `cargo xtask run-qemu` that is still running.
        #[arg(
            long,
            value_name = "RUN_DIR",
            conflicts_with = "tty",
            required_unless_present = "tty"
        )]
        run: Option<PathBuf>,
        /// A serial device connected to the machine's COM1 (115200 8N1), e.g. /dev/ttyUSB0.
        #[arg(long, value_name = "DEVICE")]
        tty: Option<PathBuf>,
        /// The manifest the machine booted, for the host checks (default with --run: the
        /// run's bundle).
        #[arg(long, value_name = "PATH")]
        manifest: Option<PathBuf>,
    },
    /// Boot the manager under QEMU, stream its console, and end with a verdict.
    ///
    /// Exits 0 when the manager reports a pass, non-zero otherwise with a one-line reason.
    /// Writes a JSON run report and prints its path as the last line.
    RunQemu(RunArgs),
    /// Check firmware tables and kernel images on the host with the manager's own code.
    #[command(subcommand)]
    Inspect(inspect::Inspect),
    /// Capture QEMU's MADT for a machine configuration (SeaBIOS builds it; no guest kernel is
    /// needed), e.g. to add a test input under platform/tests/data/madt/.
    CaptureMadt(capture::CaptureArgs),
    /// Run the quality gates: rustfmt, clippy and rustdoc with warnings denied, for the host
    /// crates and for the manager and payloads.
    Lint,
    /// Fetch Debian's cloud kernel and a static busybox (cached under target/linux; needs
    /// apt-get, or prints the one command to run) and build the demo initramfs: what
    /// manifests/linux.toml boots.
    Linux,
    /// Run the whole suite: the lint gates, host tests, then the QEMU scenarios on BIOS and UEFI.
    Test {
        /// Only run QEMU scenarios whose name contains this text (host tests still run).
        #[arg(long)]
        filter: Option<String>,
        /// Skip the host tests (`cargo test`).
        #[arg(long)]
        no_host: bool,
        /// Skip the lint gates (`cargo xtask lint`).
        #[arg(long)]
        no_lint: bool,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Firmware to boot with (UEFI uses OVMF).
    #[arg(long, value_enum, default_value_t = RunFirmware::Bios)]
    firmware: RunFirmware,
    /// Number of CPUs (QEMU -smp).
    #[arg(long, default_value_t = 4)]
    smp: u32,
    /// Guest memory in QEMU -m syntax (e.g. 512M, 2G).
    #[arg(long, default_value = "512M")]
    memory: String,
    /// Kill QEMU and fail after this many seconds without a verdict.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// tcg (default; works everywhere) or kvm (faster where /dev/kvm works).
    #[arg(long, value_enum, default_value_t = AccelArg::Tcg)]
    accel: AccelArg,
    /// QEMU machine type.
    #[arg(long, default_value = "q35")]
    machine: String,
    /// QEMU CPU model (e.g. "qemu64,+x2apic"); QEMU's default when absent.
    #[arg(long)]
    cpu: Option<String>,
    /// x2APIC CPUs, so that -smp may exceed 255 (QEMU 9 or later): `-cpu qemu64,+x2apic` and
    /// an Intel IOMMU in Extended Interrupt Mode.
    #[arg(long, conflicts_with = "cpu")]
    x2apic: bool,
    /// More arguments for QEMU, one per use (e.g. `--qemu-arg=-mem-prealloc`).
    #[arg(long = "qemu-arg", value_name = "ARG", allow_hyphen_values = true)]
    qemu_args: Vec<String>,
    /// The manifest: which kernels to start (default: manifests/default.toml).
    #[arg(long, value_name = "PATH")]
    manifest: Option<PathBuf>,
    /// How long the manager supervises the instances before it reports its verdict
    /// (default: the manifest's settings.run_ms, 3000 unless it says otherwise).
    #[arg(long)]
    run_ms: Option<u32>,
    /// Attach this terminal to the manager's console (no timeout; quit QEMU with Ctrl-A X).
    #[arg(long)]
    interactive: bool,
    /// Boot the manager built to panic on purpose (to see how a failure is reported).
    #[arg(long, hide = true)]
    selftest_panic: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum FirmwareArg {
    Bios,
    Uefi,
    Both,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum RunFirmware {
    Bios,
    Uefi,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum AccelArg {
    Tcg,
    Kvm,
}

impl From<RunFirmware> for Firmware {
    fn from(f: RunFirmware) -> Self {
        match f {
            RunFirmware::Bios => Firmware::Bios,
            RunFirmware::Uefi => Firmware::Uefi,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Build => cmd_build(),
        Cmd::Image { firmware, out, manifest } => cmd_image(firmware, out, manifest),
        Cmd::Check { manifest, machine: false, .. } => cmd_check(&manifest),
        Cmd::Check { manifest, machine: true, sysfs } => {
            machine::check(&manifest, &sysfs.unwrap_or_else(|| PathBuf::from("/sys")))
        }
        Cmd::CaptureMachine { out } => machine::capture(Path::new("/sys"), &out),
        Cmd::Push { instance, image, swap, run, tty, manifest } => push::run(push::Options {
            instance,
            image,
            swap,
            target: match (run, tty) {
                (Some(dir), _) => Some(push::Target::Run(dir)),
                (None, dev) => dev.map(push::Target::Tty),
            },
            manifest,
        }),
        Cmd::Flash { device, firmware, manifest, yes, allow_fixed } => flash::run(flash::Options {
            device,
            firmware: firmware.into(),
            manifest: manifest.unwrap_or_else(default_manifest),
            yes,
            allow_fixed,
        }),
        Cmd::Bench { firmware, runs, restarts, smp, quick, json, only } => {
            let firmware = firmware.into();
            let options = bench::Options { firmware, runs, restarts, smp, quick, json, only };
            bench::run(options).map(|()| ExitCode::SUCCESS)
        }
        Cmd::RunQemu(args) => cmd_run_qemu(args),
        Cmd::Soak { firmware, cycles } => {
            soak::run(firmware.into(), cycles).map(|()| ExitCode::SUCCESS)
        }
        Cmd::Lint => cmd_lint(),
        Cmd::Linux => cmd_linux(),
        Cmd::Test { filter, no_host, no_lint } => cmd_test(filter.as_deref(), no_host, no_lint),
        Cmd::Inspect(cmd) => inspect::run(cmd),
        Cmd::CaptureMadt(args) => capture::run(args).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn cmd_build() -> anyhow::Result<ExitCode> {
    let kernel = build::build_kernel(KernelVariant::Qemu)?;
    println!("{}", kernel.display());
    for p in payloads::build_all(&build::root(), &build::target_dir())? {
        println!("{}", p.path.display());
    }
    println!("{}", payloads::build_foreign_image(&build::root(), &build::target_dir())?.display());
    Ok(ExitCode::SUCCESS)
}

/// The manifest `run-qemu` and `image` use when none is given.
fn default_manifest() -> PathBuf {
    build::root().join("manifests").join("default.toml")
}

/// Loads and checks a manifest, builds the payloads it names, and returns its boot bundle.
fn manifest_bundle(path: &Path) -> anyhow::Result<platform::bundle::Bundle> {
    let manifest = manifest::load(path)?;
    let uses_payloads =
        manifest.instances.iter().any(|i| matches!(i.kernel, manifest::Kernel::Payload(_)));
    let payloads = if uses_payloads {
        payloads::build_all(&build::root(), &build::target_dir())?
    } else {
        Vec::new()
    };
    Ok(manifest::to_bundle(&manifest, &payloads)?)
}

fn cmd_check(path: &Path) -> anyhow::Result<ExitCode> {
    let manifest = match manifest::load(path) {
        Ok(m) => m,
        Err(errors) => return Ok(report_manifest_errors(path, &errors)),
    };
    let uses_payloads =
        manifest.instances.iter().any(|i| matches!(i.kernel, manifest::Kernel::Payload(_)));
    if uses_payloads {
        let payloads = payloads::build_all(&build::root(), &build::target_dir())?;
        if let Err(errors) = manifest::to_bundle(&manifest, &payloads) {
            return Ok(report_manifest_errors(path, &errors));
        }
    }
    for inst in &manifest.instances {
        println!("{}", inst.summary());
    }
    eprintln!(
        "xtask: {}: OK: {} instances; {}",
        path.display(),
        manifest.instances.len(),
        manifest::settings_summary(&manifest.settings)
    );
    Ok(ExitCode::SUCCESS)
}

fn report_manifest_errors(path: &Path, errors: &manifest::ManifestErrors) -> ExitCode {
    for e in &errors.0 {
        eprintln!("{e}");
    }
    let n = errors.0.len();
    eprintln!("xtask: {}: {n} error{}", path.display(), if n == 1 { "" } else { "s" });
    ExitCode::FAILURE
}

fn cmd_image(
    firmware: FirmwareArg,
    out: Option<PathBuf>,
    manifest: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    // Images for real machines: no QEMU exit port; the manifest's instances, supervised forever.
    let mut bundle = manifest_bundle(&manifest.unwrap_or_else(default_manifest))?;
    bundle.settings.run_ms = 0;
    let kernel = build::build_kernel(KernelVariant::Usb)?;
    let out = out.unwrap_or_else(|| build::target_dir().join("images"));
    let ramdisk = bundle::save(&bundle, &out.join("multikernel-bundle.bin"))?;
    let firmwares: &[Firmware] = match firmware {
        FirmwareArg::Bios => &[Firmware::Bios],
        FirmwareArg::Uefi => &[Firmware::Uefi],
        FirmwareArg::Both => &[Firmware::Bios, Firmware::Uefi],
    };
    for &fw in firmwares {
        let path = build::build_image(&kernel, Some(&ramdisk), fw, &out, "multikernel")?;
        println!("{}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// A directory for one run's log, report and scratch files.
fn run_dir(label: &str) -> anyhow::Result<PathBuf> {
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
    let dir = build::target_dir().join("runs").join(format!("{stamp}-{label}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn cmd_run_qemu(args: RunArgs) -> anyhow::Result<ExitCode> {
    let firmware = Firmware::from(args.firmware);
    // The manifest first: a mistake in it is reported before anything slow happens.
    let mut bundle = manifest_bundle(&args.manifest.clone().unwrap_or_else(default_manifest))?;
    if let Some(run_ms) = args.run_ms {
        bundle.settings.run_ms = run_ms;
    }
    if args.interactive {
        bundle.settings.run_ms = 0;
    }
    let ovmf = prereq::ensure_qemu(firmware)?;
    let variant =
        if args.selftest_panic { KernelVariant::SelftestPanic } else { KernelVariant::Qemu };
    let kernel = build::build_kernel(variant)?;
    let dir = run_dir(firmware.name())?;
    let ramdisk = bundle::save(&bundle, &dir.join("bundle.bin"))?;
    let image = build::build_image(
        &kernel,
        Some(&ramdisk),
        firmware,
        &build::target_dir().join("images"),
        &format!("qemu-{}", variant.name()),
    )?;
    let cfg = qemu::Config {
        smp: args.smp,
        memory: args.memory.clone(),
        accel: match args.accel {
            AccelArg::Tcg => Accel::Tcg,
            AccelArg::Kvm => Accel::Kvm,
        },
        machine: args.machine.clone(),
        cpu: if args.x2apic { Some(qemu::X2APIC_CPU.into()) } else { args.cpu.clone() },
        extra_args: args
            .x2apic
            .then_some(qemu::X2APIC_DEVICE.map(String::from))
            .into_iter()
            .flatten()
            .chain(args.qemu_args.iter().cloned())
            .collect(),
        timeout: Duration::from_secs(args.timeout),
        echo: true,
        interactive: args.interactive,
        devices: devices_of(&bundle),
        ..qemu::Config::new(firmware, image, &dir, ovmf)
    };
    eprintln!(
        "xtask: booting {} on {} with -smp {} -m {} ({}), timeout {} s",
        cfg.image.display(),
        firmware.name(),
        cfg.smp,
        cfg.memory,
        cfg.machine,
        args.timeout
    );
    let outcome = qemu::run(&cfg)?;
    let report_path = write_report(&cfg, &outcome, &dir)?;
    if outcome.verdict.pass {
        println!("\nrun-qemu: PASS: {}", outcome.verdict.reason);
    } else {
        println!("\nrun-qemu: FAIL: {}", outcome.verdict.reason);
    }
    println!("{}", report_path.display());
    Ok(if outcome.verdict.pass { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// A scenario's script as the runner's input steps (pushes get their image bytes here).
fn script_steps(
    s: &qemu_tests::scenarios::Scenario,
    payloads: &[payloads::Payload],
    linux: Option<&Result<linux::Prepared, String>>,
) -> anyhow::Result<Vec<qemu::InputStep>> {
    use qemu_tests::scenarios::{Action, PushImage};
    let mut steps = Vec::new();
    for a in &s.script {
        steps.push(match a {
            Action::Type { wait_for, text } => qemu::InputStep::new(wait_for, text),
            Action::Keys { wait_for, keys } => qemu::InputStep::keys(wait_for, keys),
            Action::TypeAfterDevice { device, wait_for, text } => {
                qemu::InputStep::on_device(device, wait_for, text)
            }
            Action::Screenshot { wait_for, name } => qemu::InputStep::screenshot(wait_for, name),
            Action::End { wait_for } => qemu::InputStep::end(wait_for),
            Action::Push(p) => {
                let bytes = match p.image {
                    PushImage::Junk => {
                        b"this is not a kernel image. ".repeat(358)[..10_000].to_vec()
                    }
                    PushImage::Payload(name) => {
                        let p = payloads
                            .iter()
                            .find(|x| x.name == name)
                            .with_context(|| format!("no payload named {name}"))?;
                        std::fs::read(&p.path)?
                    }
                    PushImage::Linux => match linux {
                        Some(Ok(p)) => std::fs::read(&p.vmlinuz)?,
                        _ => anyhow::bail!("{}: a Linux push needs the Linux material", s.name),
                    },
                };
                qemu::InputStep::push(
                    p.wait_for,
                    qemu_tests::push::PushJob {
                        instance: p.instance.to_string(),
                        image: bytes,
                        swap: p.swap,
                        corrupt_chunk: p.corrupt_chunk,
                        abandon_after: p.abandon_after,
                    },
                )
            }
        });
    }
    Ok(steps)
}

/// The UARTs the bundle's instances own, as QEMU must provide them.
fn devices_of(bundle: &platform::bundle::Bundle) -> Vec<qemu::Device> {
    bundle
        .instances
        .iter()
        .flat_map(|i| {
            i.devices
                .iter()
                .map(|d| qemu::Device { name: d.name().into(), instance: i.name.clone() })
        })
        .collect()
}

fn write_report(
    cfg: &qemu::Config,
    outcome: &qemu::Outcome,
    dir: &Path,
) -> anyhow::Result<PathBuf> {
    let (sections, malformed_lines) = collect_sections(&outcome.serial);
    let report = RunReport {
        version: REPORT_VERSION,
        firmware: cfg.firmware.name().into(),
        smp: cfg.smp,
        memory: cfg.memory.clone(),
        machine: cfg.machine.clone(),
        accel: format!("{:?}", cfg.accel).to_lowercase(),
        result: if outcome.verdict.pass { "pass" } else { "fail" }.into(),
        reason: outcome.verdict.reason.clone(),
        serial_log: cfg.serial_log.display().to_string(),
        duration_ms: outcome.duration.as_millis() as u64,
        qemu_command: outcome.command.clone(),
        devices: outcome
            .devices
            .iter()
            .map(|d| qemu_tests::report::DeviceRecord {
                device: d.device.clone(),
                instance: d.instance.clone(),
                log: d.log.display().to_string(),
            })
            .collect(),
        sections,
        malformed_lines,
    };
    let path = dir.join("report.json");
    report.write(&path)?;
    Ok(path)
}

fn cmd_linux() -> anyhow::Result<ExitCode> {
    let p = linux::prepare(&build::target_dir().join("linux"))?;
    println!(
        "linux: {} ({} {}), busybox {}",
        p.material.version,
        p.material.kernel_package,
        p.material.kernel_package_version,
        p.material.busybox_version
    );
    println!("  kernel     {}", p.vmlinuz.display());
    println!("  initramfs  {}", p.initramfs.display());
    println!(
        "Boot it beside the small kernels: cargo xtask run-qemu --manifest manifests/linux.toml"
    );
    Ok(ExitCode::SUCCESS)
}

fn cmd_lint() -> anyhow::Result<ExitCode> {
    let failed = lint::run()?;
    if failed.is_empty() {
        println!("lint: all gates passed");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("lint: {} gate(s) failed: {}", failed.len(), failed.join(", "));
        Ok(ExitCode::FAILURE)
    }
}

fn cmd_test(filter: Option<&str>, no_host: bool, no_lint: bool) -> anyhow::Result<ExitCode> {
    if !no_lint {
        println!("== lint gates (cargo xtask lint)");
        let failed = lint::run()?;
        if !failed.is_empty() {
            println!("lint gates failed ({}); not running the tests", failed.join(", "));
            return Ok(ExitCode::FAILURE);
        }
    }
    if !no_host {
        println!("== host tests (cargo test)");
        let status =
            std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .current_dir(build::root())
                .arg("test")
                .status()
                .context("running cargo test")?;
        if !status.success() {
            println!("host tests failed; not running the QEMU scenarios");
            return Ok(ExitCode::FAILURE);
        }
    }
    let selected: Vec<_> = scenarios::all()
        .into_iter()
        .filter(|s| filter.is_none_or(|f| s.name.contains(f)))
        .collect();
    println!("== QEMU scenarios ({} selected)", selected.len());
    let mut kernels = std::collections::HashMap::new();
    let payloads = payloads::build_all(&build::root(), &build::target_dir())?;
    let qemu_version = prereq::qemu_version();
    // Linux scenarios need Debian's kernel: fetched (or found cached) once, or skipped with
    // the one command that would make them run.
    let mut linux_material: Option<Result<linux::Prepared, String>> = None;
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for s in &selected {
        let ovmf = prereq::ensure_qemu(s.firmware)?;
        if let (Some(need), Some(have)) = (s.needs_qemu, qemu_version) {
            if have < need {
                skipped += 1;
                println!(
                    "SKIP {}: needs QEMU {}.{} or later (this is {}.{}), e.g. for x2APIC under TCG",
                    s.name, need.0, need.1, have.0, have.1
                );
                continue;
            }
        }
        if let std::collections::hash_map::Entry::Vacant(e) = kernels.entry(s.kernel) {
            e.insert(build::build_kernel(s.kernel)?);
        }
        let dir = run_dir(s.name)?;
        let mut devices = Vec::new();
        let ramdisk = if let Some(file) = s.manifest_file {
            let mut bundle = manifest_bundle(&build::root().join(file))?;
            bundle.settings.run_ms = s.run_ms;
            devices = devices_of(&bundle);
            Some(bundle::save(&bundle, &dir.join("bundle.bin"))?)
        } else if let Some(template) = s.manifest {
            let spin = payloads::build_foreign_image(&build::root(), &build::target_dir())?;
            let mut text = template.replace("{spin}", &spin.display().to_string());
            if text.contains("{big}") {
                let big = payloads::build_big_image(&build::root(), &build::target_dir())?;
                text = text.replace("{big}", &big.display().to_string());
            }
            if s.linux {
                let prepared = linux_material.get_or_insert_with(|| {
                    match linux::prepare(&build::target_dir().join("linux")) {
                        Ok(p) => Ok(p),
                        Err(e) if linux::fetch::is_unavailable(&e) => Err(e.to_string()),
                        Err(e) => Err(format!("{e:#}")),
                    }
                });
                match prepared {
                    Ok(p) => {
                        text = text
                            .replace("{vmlinuz}", &p.vmlinuz.display().to_string())
                            .replace("{initrd}", &p.initramfs.display().to_string());
                    }
                    Err(why) => {
                        skipped += 1;
                        println!("SKIP {}: no Linux test material: {why}", s.name);
                        continue;
                    }
                }
            }
            let path = dir.join("manifest.toml");
            std::fs::write(&path, text)?;
            let m = manifest::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
            let bundle = manifest::to_bundle(&m, &payloads).map_err(|e| anyhow::anyhow!("{e}"))?;
            devices = devices_of(&bundle);
            Some(bundle::save(&bundle, &dir.join("bundle.bin"))?)
        } else if s.instances.is_empty() {
            None
        } else {
            let settings = platform::bundle::Settings { run_ms: s.run_ms, ..Default::default() };
            Some(bundle::write(
                s.instances,
                &payloads,
                settings,
                s.tamper,
                &dir.join("bundle.bin"),
            )?)
        };
        let image =
            build::build_image(&kernels[&s.kernel], ramdisk.as_deref(), s.firmware, &dir, "disk")?;
        let cfg = qemu::Config {
            smp: s.smp,
            memory: s.memory.into(),
            cpu: s.cpu.map(String::from),
            timeout: Duration::from_secs(s.timeout_secs),
            input: s
                .input
                .iter()
                .map(|(w, t)| qemu::InputStep::new(w, t))
                .chain(s.steps.iter().map(|(d, w, t)| match d {
                    Some(d) => qemu::InputStep::on_device(d, w, t),
                    None => qemu::InputStep::new(w, t),
                }))
                .chain(script_steps(s, &payloads, linux_material.as_ref())?)
                .collect(),
            screendump_after: s.screendump_after.map(String::from),
            devices,
            ..qemu::Config::new(s.firmware, image, &dir, ovmf)
        };
        let outcome = qemu::run(&cfg)?;
        let report = write_report(&cfg, &outcome, &dir)?;
        match (s.check)(&outcome) {
            Ok(()) => {
                passed += 1;
                println!("PASS {} ({:.1} s)", s.name, outcome.duration.as_secs_f64());
            }
            Err(why) => {
                failed += 1;
                println!(
                    "FAIL {}: {why}\n     log: {}\n     report: {}",
                    s.name,
                    cfg.serial_log.display(),
                    report.display()
                );
            }
        }
    }
    if skipped > 0 {
        println!("qemu: {skipped} scenarios skipped (see SKIP lines above)");
    }
    println!("qemu: {passed} passed, {failed} failed");
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
