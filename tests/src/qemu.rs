//! Running QEMU: the command line, console capture, a hard timeout, and the verdict.
//!
//! The serial console goes through QEMU's `stdio` character device. Without `--interactive`
//! we read it from a pipe, copy it to the log file (and the terminal when echoing) as it
//! arrives, and kill QEMU if no verdict came within the timeout. With `--interactive` the
//! terminal is attached to the console and QEMU's own `logfile=` keeps the log.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::push::{PushJob, PushReport};
use crate::verdict::{self, Ending, Verdict};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    Bios,
    Uefi,
}

impl Firmware {
    pub fn name(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Tcg,
    Kvm,
}

/// OVMF's two flash images: the read-only code and a template for the writable variables.
#[derive(Clone, Debug)]
pub struct Ovmf {
    pub code: PathBuf,
    pub vars_template: PathBuf,
}

/// Where distributions put OVMF (Debian/Ubuntu 4M builds first, then older names, Fedora).
pub const OVMF_CANDIDATES: &[(&str, &str)] = &[
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
    ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
    ("/usr/share/edk2/ovmf/OVMF_CODE.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd"),
];

pub fn find_ovmf() -> Option<Ovmf> {
    OVMF_CANDIDATES
        .iter()
        .find(|(c, v)| Path::new(c).exists() && Path::new(v).exists())
        .map(|(c, v)| Ovmf { code: PathBuf::from(c), vars_template: PathBuf::from(v) })
}

#[derive(Clone, Debug)]
pub struct Config {
    pub firmware: Firmware,
    pub image: PathBuf,
    pub smp: u32,
    /// QEMU `-m` syntax, e.g. `512M`.
    pub memory: String,
    pub accel: Accel,
    pub machine: String,
    /// `-cpu` model; `None` leaves QEMU's default.
    pub cpu: Option<String>,
    /// Further QEMU arguments (extra devices, e.g. an IOMMU for x2APIC runs).
    pub extra_args: Vec<String>,
    pub timeout: Duration,
    pub serial_log: PathBuf,
    /// Required for `Firmware::Uefi`.
    pub ovmf: Option<Ovmf>,
    /// Scratch directory (the writable OVMF variables copy lives here).
    pub work_dir: PathBuf,
    /// Copy the console to our stdout as it arrives.
    pub echo: bool,
    /// Attach the terminal to the console (no timeout, no pipe).
    pub interactive: bool,
    /// Console input to type, each step once its `wait_for` text has appeared (after the
    /// previous step's match): how the tests drive the manager's shell.
    pub input: Vec<InputStep>,
    /// Once this text appears on the console, take a screenshot of the display (QEMU monitor
    /// `screendump`, PPM) into the work directory and end the run: how the tests see what a
    /// machine without a serial port shows.
    pub screendump_after: Option<String>,
    /// The legacy UARTs instances own: each gets its own log file in the work directory.
    pub devices: Vec<Device>,
}

/// A UART an instance owns, as QEMU provides it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// "com2", "com3" or "com4".
    pub name: String,
    /// The instance that owns it (its lines are echoed as `[instance] ...`).
    pub instance: String,
}

impl Device {
    /// The ISA serial index QEMU gives it: the n-th `-serial` option is COMn.
    fn index(&self) -> Option<usize> {
        match self.name.as_str() {
            "com2" => Some(2),
            "com3" => Some(3),
            "com4" => Some(4),
            _ => None,
        }
    }
}

/// What a device UART printed during a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceOutput {
    pub device: String,
    pub instance: String,
    pub log: PathBuf,
    pub text: String,
}

#[derive(Clone, Debug)]
pub struct InputStep {
    pub wait_for: String,
    pub send: String,
    /// Wait for the text on this device UART ("com2", ...) instead of the manager's console
    /// (typing always goes to the manager's console).
    pub on: Option<String>,
    /// Instead of typing: push an image through `console.sock` (as `cargo xtask push` does)
    /// and wait for the push to end before the next step.
    pub push: Option<PushJob>,
    /// Instead of typing on the serial line: press these keys on the PS/2 keyboard (QEMU
    /// monitor `sendkey`; letters, digits, space, `-`, `.`, `'`, `\r` for Enter).
    pub keys: Option<String>,
    /// Instead of typing: take a screenshot into this file of the work directory.
    pub screenshot: Option<String>,
    /// End the run (kill QEMU) once `wait_for` appears: for builds that never exit.
    pub end: bool,
}

impl InputStep {
    pub fn new(wait_for: &str, send: &str) -> Self {
        InputStep {
            wait_for: wait_for.into(),
            send: send.into(),
            on: None,
            push: None,
            keys: None,
            screenshot: None,
            end: false,
        }
    }

    /// A step that presses `keys` on the keyboard once `wait_for` appears.
    pub fn keys(wait_for: &str, keys: &str) -> Self {
        InputStep { keys: Some(keys.into()), ..InputStep::new(wait_for, "") }
    }

    /// A step that takes a screenshot (`name` in the work directory) once `wait_for` appears.
    pub fn screenshot(wait_for: &str, name: &str) -> Self {
        InputStep { screenshot: Some(name.into()), ..InputStep::new(wait_for, "") }
    }

    /// A step that ends the run once `wait_for` appears.
    pub fn end(wait_for: &str) -> Self {
        InputStep { end: true, ..InputStep::new(wait_for, "") }
    }

    /// A step that waits for `wait_for` on device `device` (counting from the `nth` time it
    /// appears there, 1 for the first).
    pub fn on_device(device: &str, wait_for: &str, send: &str) -> Self {
        InputStep { on: Some(device.into()), ..InputStep::new(wait_for, send) }
    }

    /// A step that pushes an image once `wait_for` appears on the manager's console.
    pub fn push(wait_for: &str, job: PushJob) -> Self {
        InputStep { push: Some(job), ..InputStep::new(wait_for, "") }
    }
}

/// The run directory's socket that carries the manager's console (`cargo xtask push --run`).
pub const CONSOLE_SOCKET: &str = "console.sock";

pub const QEMU: &str = "qemu-system-x86_64";

/// QEMU's recipe for x2APIC CPUs whose APIC IDs may exceed 254 (QEMU 9 or later under TCG,
/// `-machine q35`): the CPU flag, and an Intel IOMMU remapping interrupts in Extended
/// Interrupt Mode, without which QEMU refuses more than 255 CPUs (shared/TOOLCHAIN.md).
pub const X2APIC_CPU: &str = "qemu64,+x2apic";
pub const X2APIC_DEVICE: [&str; 2] = ["-device", "intel-iommu,intremap=on,eim=on"];

/// `-device isa-debug-exit,iobase=0xf4,iosize=0x04` (QEMU docs, "isa-debug-exit"); the port
/// is `bootproto::report::DEBUG_EXIT_PORT` (checked by a test).
pub const DEBUG_EXIT_DEVICE: &str = "isa-debug-exit,iobase=0xf4,iosize=0x04";

impl Config {
    /// A run of `image` on `firmware` with the defaults `cargo xtask run-qemu` uses (-smp 4,
    /// 512 MiB, TCG, q35, QEMU's CPU model, 120 s), its log and scratch files in `work_dir`.
    pub fn new(firmware: Firmware, image: PathBuf, work_dir: &Path, ovmf: Option<Ovmf>) -> Config {
        Config {
            firmware,
            image,
            smp: 4,
            memory: "512M".into(),
            accel: Accel::Tcg,
            machine: "q35".into(),
            cpu: None,
            extra_args: Vec::new(),
            timeout: Duration::from_secs(120),
            serial_log: work_dir.join("serial.log"),
            ovmf,
            work_dir: work_dir.to_path_buf(),
            echo: false,
            interactive: false,
            input: Vec::new(),
            screendump_after: None,
            devices: Vec::new(),
        }
    }

    /// Where device `d`'s output goes.
    pub fn device_log(&self, d: &Device) -> PathBuf {
        self.work_dir.join(format!("{}.log", d.name))
    }

    fn monitor_socket(&self) -> PathBuf {
        self.work_dir.join("monitor.sock")
    }

    /// The QEMU argument list (without the program name). Pure, so it is unit-tested.
    pub fn args(&self, ovmf_vars: Option<&Path>) -> anyhow::Result<Vec<String>> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |s: &str| a.push(s.to_string());
        push("-machine");
        push(&self.machine);
        push("-smp");
        push(&self.smp.to_string());
        push("-m");
        push(&self.memory);
        push("-accel");
        push(match self.accel {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        });
        if let Some(cpu) = &self.cpu {
            push("-cpu");
            push(cpu);
        }
        push("-no-reboot");
        push("-display");
        push("none");
        push("-monitor");
        let monitor = self.screendump_after.is_some()
            || self.input.iter().any(|s| s.keys.is_some() || s.screenshot.is_some());
        if monitor {
            push(&format!("unix:{},server,nowait", self.monitor_socket().display()));
        } else {
            push("none");
        }
        push("-net");
        push("none");
        push("-device");
        push(DEBUG_EXIT_DEVICE);
        push("-chardev");
        let log = self.serial_log.display();
        if self.interactive {
            push(&format!("stdio,id=console,signal=off,logfile={log}"));
        } else {
            push("stdio,id=console,signal=off");
        }
        push("-serial");
        push("chardev:console");
        // COM2..COM4 in order: the n-th -serial is COMn, so a gap gets a null backend.
        let highest = self.devices.iter().filter_map(Device::index).max().unwrap_or(1);
        for n in 2..=highest {
            match self.devices.iter().find(|d| d.index() == Some(n)) {
                Some(d) => {
                    push("-chardev");
                    push(&format!("file,id={},path={}", d.name, self.device_log(d).display()));
                    push("-serial");
                    push(&format!("chardev:{}", d.name));
                }
                None => {
                    push("-serial");
                    push("null");
                }
            }
        }
        if self.firmware == Firmware::Uefi {
            let ovmf = self.ovmf.as_ref().context("UEFI runs need OVMF (see `find_ovmf`)")?;
            let vars = ovmf_vars.context("UEFI runs need a writable OVMF variables file")?;
            push("-drive");
            push(&format!("if=pflash,format=raw,readonly=on,file={}", ovmf.code.display()));
            push("-drive");
            push(&format!("if=pflash,format=raw,file={}", vars.display()));
        }
        push("-drive");
        push(&format!("format=raw,file={}", self.image.display()));
        for x in &self.extra_args {
            push(x);
        }
        Ok(a)
    }
}

/// What one run produced.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub ending: Ending,
    pub verdict: Verdict,
    pub serial: String,
    pub duration: Duration,
    pub command: Vec<String>,
    /// The screenshot taken for `screendump_after`, if it was taken.
    pub screendump: Option<PathBuf>,
    /// What each device UART printed.
    pub devices: Vec<DeviceOutput>,
    /// The pushes of the input steps, in order: the report, or what went wrong.
    pub pushes: Vec<Result<PushReport, String>>,
    /// The screenshots of the input steps, in order (a failed one is missing).
    pub screenshots: Vec<PathBuf>,
}

/// QEMU's `sendkey` name for a character the shell understands (QEMU monitor docs, "sendkey").
fn qemu_key(c: char) -> Option<String> {
    Some(match c {
        'a'..='z' | '0'..='9' => c.to_string(),
        'A'..='Z' => format!("shift-{}", c.to_ascii_lowercase()),
        ' ' => "spc".into(),
        '\r' | '\n' => "ret".into(),
        '-' => "minus".into(),
        '.' => "dot".into(),
        '\'' => "apostrophe".into(),
        _ => return None,
    })
}

/// Presses `keys` through QEMU's monitor, one key at a time.
fn send_keys(socket: &Path, keys: &str) -> anyhow::Result<()> {
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("connecting to the QEMU monitor at {}", socket.display()))?;
    for c in keys.chars() {
        let key = qemu_key(c).with_context(|| format!("no QEMU key for {c:?}"))?;
        writeln!(s, "sendkey {key}")?;
        // sendkey holds the key 100 ms by default; let it be released before the next one.
        std::thread::sleep(Duration::from_millis(150));
    }
    Ok(())
}

/// How long the console may wait for a `console.sock` client to take its output.
const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Streams that receive the console's output as it arrives (clients of `console.sock`).
type Clients = Arc<Mutex<Vec<std::os::unix::net::UnixStream>>>;

/// Serves `console.sock` in `dir`: every client gets the console's output from the moment it
/// connects (through `clients`), and what it writes goes to QEMU's stdin. Returns the socket's
/// path, or `None` (with a warning) if it cannot be created, e.g. a path too long for a Unix
/// socket.
fn serve_console_socket(
    dir: &Path,
    stdin: Arc<Mutex<Option<std::process::ChildStdin>>>,
    clients: Clients,
) -> Option<PathBuf> {
    let path = dir.join(CONSOLE_SOCKET);
    let _ = std::fs::remove_file(&path);
    let listener = match std::os::unix::net::UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "run-qemu: no {} ({e}); `cargo xtask push --run` will not work",
                path.display()
            );
            return None;
        }
    };
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { break };
            let (Ok(mut from_client), Ok(to_client)) = (conn.try_clone(), conn.try_clone()) else {
                continue;
            };
            // A client that stops reading is dropped after this long, rather than stalling the
            // console capture (and with it QEMU) behind a full socket buffer.
            if to_client.set_write_timeout(Some(CLIENT_WRITE_TIMEOUT)).is_err() {
                continue;
            }
            clients.lock().expect("console clients lock").push(to_client);
            let stdin = Arc::clone(&stdin);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    match from_client.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let mut guard = stdin.lock().expect("QEMU stdin lock");
                            let Some(input) = guard.as_mut() else { break };
                            if input.write_all(&buf[..n]).and_then(|()| input.flush()).is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    Some(path)
}

/// Boots `cfg.image` and waits (bounded) for the verdict.
pub fn run(cfg: &Config) -> anyhow::Result<Outcome> {
    if !cfg.image.exists() {
        bail!("disk image {} does not exist (run `cargo xtask image`)", cfg.image.display());
    }
    std::fs::create_dir_all(&cfg.work_dir)
        .with_context(|| format!("creating {}", cfg.work_dir.display()))?;
    if let Some(parent) = cfg.serial_log.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let vars = match (&cfg.firmware, &cfg.ovmf) {
        (Firmware::Uefi, Some(ovmf)) => {
            let stem = cfg.serial_log.file_stem().and_then(|s| s.to_str()).unwrap_or("run");
            let vars = cfg.work_dir.join(format!("{stem}-ovmf-vars.fd"));
            std::fs::copy(&ovmf.vars_template, &vars).with_context(|| {
                format!("copying OVMF variables {}", ovmf.vars_template.display())
            })?;
            Some(vars)
        }
        _ => None,
    };
    let mut args = cfg.args(vars.as_deref())?;
    // Debugging aid: extra QEMU arguments for every run, e.g.
    // MK_QEMU_EXTRA="-d cpu_reset,guest_errors -D /tmp/qemu.log".
    if let Ok(extra) = std::env::var("MK_QEMU_EXTRA") {
        args.extend(extra.split_whitespace().map(String::from));
    }
    let mut command = vec![QEMU.to_string()];
    command.extend(args.iter().cloned());

    let start = Instant::now();
    if cfg.interactive {
        let status = Command::new(QEMU)
            .args(&args)
            .status()
            .with_context(|| format!("starting {QEMU} (is QEMU installed?)"))?;
        let serial = std::fs::read_to_string(&cfg.serial_log).unwrap_or_default();
        let ending = status.code().map_or(Ending::Signalled, Ending::Exited);
        let verdict = verdict::decide(&ending, &serial);
        let devices = device_outputs(cfg);
        return Ok(Outcome {
            ending,
            verdict,
            serial,
            duration: start.elapsed(),
            command,
            screendump: None,
            devices,
            pushes: Vec::new(),
            screenshots: Vec::new(),
        });
    }

    let mut child = Command::new(QEMU)
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {QEMU} (is QEMU installed?)"))?;
    let mut log = File::create(&cfg.serial_log)
        .with_context(|| format!("creating {}", cfg.serial_log.display()))?;
    let captured = Arc::new(Mutex::new(Vec::<u8>::new()));
    let mut stdout = child.stdout.take().context("QEMU stdout")?;
    let sink = Arc::clone(&captured);
    let echo = cfg.echo;
    let stdin = Arc::new(Mutex::new(child.stdin.take()));
    let clients: Clients = Arc::new(Mutex::new(Vec::new()));
    let socket = serve_console_socket(&cfg.work_dir, Arc::clone(&stdin), Arc::clone(&clients));
    let to_clients = Arc::clone(&clients);
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let chunk = &buf[..n];
                    let _ = log.write_all(chunk);
                    if echo {
                        let mut out = std::io::stdout().lock();
                        let _ = out.write_all(chunk);
                        let _ = out.flush();
                    }
                    sink.lock().expect("console buffer lock").extend_from_slice(chunk);
                    to_clients
                        .lock()
                        .expect("console clients lock")
                        .retain_mut(|c| c.write_all(chunk).is_ok());
                }
            }
        }
    });
    let mut stderr = child.stderr.take().context("QEMU stderr")?;
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    // Device UARTs write to files; follow them, echoing their lines as `[instance] line`.
    for d in &cfg.devices {
        let _ = File::create(cfg.device_log(d));
    }
    let mut followed: Vec<(Device, usize, String)> =
        cfg.devices.iter().map(|d| (d.clone(), 0usize, String::new())).collect();
    let device_search: std::collections::HashMap<String, usize> = Default::default();
    let mut device_search = device_search;

    let mut steps = cfg.input.iter();
    let mut pushing: Option<std::thread::JoinHandle<Result<PushReport, String>>> = None;
    let mut pushes = Vec::new();
    let mut screenshots = Vec::new();
    let mut step = steps.next();
    let mut search_from = 0usize;
    let mut screendump = None;
    let ending = loop {
        if let (Some(pattern), None) = (&cfg.screendump_after, &screendump) {
            let seen = {
                let text = captured.lock().expect("console buffer lock");
                find_bytes(&text, pattern.as_bytes()).is_some()
            };
            if seen {
                // Let the framebuffer catch up with the serial line, then take the picture.
                std::thread::sleep(Duration::from_millis(500));
                let file = cfg.work_dir.join("screen.ppm");
                match take_screendump(&cfg.monitor_socket(), &file) {
                    Ok(()) => screendump = Some(file),
                    Err(e) => eprintln!("screendump failed: {e:#}"),
                }
                let _ = child.kill();
                let _ = child.wait();
                break Ending::Signalled;
            }
        }
        for (d, seen, partial) in followed.iter_mut() {
            let bytes = std::fs::read(cfg.device_log(d)).unwrap_or_default();
            if bytes.len() > *seen {
                let new = String::from_utf8_lossy(&bytes[*seen..]).into_owned();
                *seen = bytes.len();
                partial.push_str(&new);
                while let Some(nl) = partial.find('\n') {
                    let line: String = partial.drain(..=nl).collect();
                    if cfg.echo {
                        let line = line.trim_end_matches(['\r', '\n']);
                        println!("[{}] {line}", d.instance);
                    }
                }
            }
        }
        if pushing.as_ref().is_some_and(|h| h.is_finished()) {
            if let Some(h) = pushing.take() {
                pushes.push(h.join().unwrap_or_else(|_| Err("the push thread panicked".into())));
            }
            step = steps.next();
        }
        if let (Some(s), None) = (step, &pushing) {
            let found = match &s.on {
                None => {
                    let text = captured.lock().expect("console buffer lock");
                    find_bytes(text.get(search_from..).unwrap_or(&[]), s.wait_for.as_bytes())
                        .map(|at| search_from + at)
                }
                Some(dev) => {
                    let from = device_search.get(dev).copied().unwrap_or(0);
                    let d = cfg.devices.iter().find(|d| &d.name == dev);
                    let text = d.map(|d| std::fs::read(cfg.device_log(d)).unwrap_or_default());
                    text.and_then(|t| {
                        find_bytes(t.get(from..).unwrap_or(&[]), s.wait_for.as_bytes())
                            .map(|at| from + at)
                    })
                }
            };
            if let Some(at) = found {
                match &s.on {
                    None => search_from = at + s.wait_for.len(),
                    Some(dev) => {
                        device_search.insert(dev.clone(), at + s.wait_for.len());
                    }
                }
                if s.end {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Ending::Signalled;
                }
                if let Some(keys) = &s.keys {
                    if let Err(e) = send_keys(&cfg.monitor_socket(), keys) {
                        eprintln!("sendkey failed: {e:#}");
                    }
                    step = steps.next();
                    continue;
                }
                if let Some(name) = &s.screenshot {
                    // Let the screen catch up with the serial line (it is drawn at most
                    // every 100 ms, the panel every second).
                    std::thread::sleep(Duration::from_millis(1500));
                    let file = cfg.work_dir.join(name);
                    match take_screendump(&cfg.monitor_socket(), &file) {
                        Ok(()) => screenshots.push(file),
                        Err(e) => eprintln!("screendump failed: {e:#}"),
                    }
                    step = steps.next();
                    continue;
                }
                if let Some(job) = &s.push {
                    let (job, socket) = (job.clone(), socket.clone());
                    pushing = Some(std::thread::spawn(move || {
                        let socket = socket.ok_or("no console socket")?;
                        let mut conn = std::os::unix::net::UnixStream::connect(&socket)
                            .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
                        crate::push::push(&mut conn, &job, |_| {}).map_err(|e| format!("{e:#}"))
                    }));
                    continue;
                }
                // Type slowly enough for a 16550 without FIFO handling on the other side.
                for b in s.send.bytes() {
                    let mut guard = stdin.lock().expect("QEMU stdin lock");
                    if let Some(input) = guard.as_mut() {
                        let _ = input.write_all(&[b]);
                        let _ = input.flush();
                    }
                    drop(guard);
                    std::thread::sleep(Duration::from_millis(2));
                }
                step = steps.next();
            }
        }
        if let Some(status) = child.try_wait()? {
            break status.code().map_or(Ending::Signalled, Ending::Exited);
        }
        if start.elapsed() >= cfg.timeout {
            let _ = child.kill();
            let _ = child.wait();
            break Ending::TimedOut(cfg.timeout);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let duration = start.elapsed();
    let _ = reader.join();
    let qemu_stderr = err_reader.join().unwrap_or_default();
    let serial =
        String::from_utf8_lossy(&captured.lock().expect("console buffer lock")).into_owned();
    let mut verdict = verdict::decide(&ending, &serial);
    if let Ending::Exited(code) = ending {
        if code != verdict::EXIT_PASS
            && code != verdict::EXIT_FAIL
            && !qemu_stderr.trim().is_empty()
        {
            verdict.reason = format!("{}; QEMU said: {}", verdict.reason, qemu_stderr.trim());
        }
    }
    let devices = device_outputs(cfg);
    // QEMU is gone: a push still waiting for an answer sees the console close.
    for c in clients.lock().expect("console clients lock").drain(..) {
        let _ = c.shutdown(std::net::Shutdown::Both);
    }
    if let Some(h) = pushing.take() {
        pushes.push(h.join().unwrap_or_else(|_| Err("the push thread panicked".into())));
    }
    stdin.lock().expect("QEMU stdin lock").take();
    if let Some(s) = &socket {
        let _ = std::fs::remove_file(s);
    }
    Ok(Outcome {
        ending,
        verdict,
        serial,
        duration,
        command,
        screendump,
        devices,
        pushes,
        screenshots,
    })
}

/// Every device UART's log, read back.
fn device_outputs(cfg: &Config) -> Vec<DeviceOutput> {
    cfg.devices
        .iter()
        .map(|d| {
            let log = cfg.device_log(d);
            let text =
                String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).into_owned();
            DeviceOutput { device: d.name.clone(), instance: d.instance.clone(), log, text }
        })
        .collect()
}

/// Asks QEMU's monitor for a screenshot and waits (bounded) until the file is complete.
fn take_screendump(socket: &Path, file: &Path) -> anyhow::Result<()> {
    use std::os::unix::net::UnixStream;
    let mut s = UnixStream::connect(socket)
        .with_context(|| format!("connecting to the QEMU monitor at {}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    writeln!(s, "screendump {}", file.display())?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = 0;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let len = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        if len > 0 && len == last {
            return Ok(());
        }
        last = len;
    }
    bail!("QEMU wrote no complete screenshot to {} within 10 s", file.display())
}

/// A decoded binary PPM (P6) image: width, height, RGB bytes.
pub struct Picture {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

impl Picture {
    pub fn parse_ppm(bytes: &[u8]) -> anyhow::Result<Picture> {
        // Header: "P6", width, height, maxval, each separated by whitespace, then one byte.
        let mut fields = Vec::new();
        let mut at = 0;
        while fields.len() < 4 {
            while at < bytes.len() && bytes[at].is_ascii_whitespace() {
                at += 1;
            }
            let start = at;
            while at < bytes.len() && !bytes[at].is_ascii_whitespace() {
                at += 1;
            }
            if start == at {
                bail!("truncated PPM header");
            }
            fields.push(String::from_utf8_lossy(&bytes[start..at]).into_owned());
        }
        if fields[0] != "P6" || fields[3] != "255" {
            bail!("not an 8-bit binary PPM ({} {})", fields[0], fields[3]);
        }
        let width: usize = fields[1].parse().context("PPM width")?;
        let height: usize = fields[2].parse().context("PPM height")?;
        let data = bytes.get(at + 1..).context("PPM has no pixel data")?;
        if data.len() < width * height * 3 {
            bail!("PPM pixel data is short");
        }
        Ok(Picture { width, height, rgb: data[..width * height * 3].to_vec() })
    }

    pub fn pixel(&self, x: usize, y: usize) -> (u8, u8, u8) {
        let i = (y * self.width + x) * 3;
        (self.rgb[i], self.rgb[i + 1], self.rgb[i + 2])
    }
}

/// The offset of the first occurrence of `needle` in `hay`.
pub fn find_bytes(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(firmware: Firmware) -> Config {
        Config {
            firmware,
            image: "/img/bios.img".into(),
            smp: 4,
            memory: "512M".into(),
            accel: Accel::Tcg,
            machine: "q35".into(),
            cpu: None,
            extra_args: vec![],
            timeout: Duration::from_secs(60),
            serial_log: "/tmp/x/serial.log".into(),
            ovmf: Some(Ovmf { code: "/o/CODE.fd".into(), vars_template: "/o/VARS.fd".into() }),
            work_dir: "/tmp/x".into(),
            echo: false,
            interactive: false,
            input: vec![],
            screendump_after: None,
            devices: vec![],
        }
    }

    #[test]
    fn device_uarts_get_their_own_files_and_gaps_get_null_backends() {
        let mut c = cfg(Firmware::Bios);
        c.devices = vec![Device { name: "com4".into(), instance: "linux".into() }];
        let a = joined(&c.args(None).unwrap());
        // -serial #1 is the console (COM1), #2 and #3 are null, #4 the instance's file.
        assert!(
            a.contains("-serial chardev:console -serial null -serial null -chardev file,id=com4,path=/tmp/x/com4.log -serial chardev:com4"),
            "{a}"
        );
        assert!(!joined(&cfg(Firmware::Bios).args(None).unwrap()).contains("-serial null"));
    }

    fn joined(a: &[String]) -> String {
        a.join(" ")
    }

    #[test]
    fn the_exit_device_is_at_the_managers_port() {
        let port = format!("iobase={:#x},", bootproto::report::DEBUG_EXIT_PORT);
        assert!(DEBUG_EXIT_DEVICE.contains(&port));
        assert_eq!((verdict::EXIT_PASS, verdict::EXIT_FAIL), (33, 35));
    }

    #[test]
    fn bios_command_line_has_exit_device_and_no_reboot() {
        let a = joined(&cfg(Firmware::Bios).args(None).unwrap());
        assert!(a.contains("-machine q35 -smp 4 -m 512M -accel tcg"), "{a}");
        assert!(a.contains("-no-reboot"));
        assert!(a.contains("-device isa-debug-exit,iobase=0xf4,iosize=0x04"));
        assert!(a.contains("-drive format=raw,file=/img/bios.img"));
        assert!(!a.contains("pflash"));
    }

    #[test]
    fn uefi_command_line_uses_pflash_and_a_writable_vars_copy() {
        let c = cfg(Firmware::Uefi);
        assert!(c.args(None).is_err(), "UEFI without a vars copy must be refused");
        let a = joined(&c.args(Some(Path::new("/tmp/x/vars.fd"))).unwrap());
        assert!(a.contains("if=pflash,format=raw,readonly=on,file=/o/CODE.fd"), "{a}");
        assert!(a.contains("if=pflash,format=raw,file=/tmp/x/vars.fd"));
    }

    #[test]
    fn kvm_cpu_and_extra_args_are_passed() {
        let mut c = cfg(Firmware::Bios);
        c.accel = Accel::Kvm;
        c.cpu = Some("qemu64,+x2apic".into());
        c.extra_args = vec!["-device".into(), "intel-iommu".into()];
        let a = joined(&c.args(None).unwrap());
        assert!(a.contains("-accel kvm -cpu qemu64,+x2apic"), "{a}");
        assert!(a.ends_with("-device intel-iommu"));
    }

    #[test]
    fn ppm_pictures_parse() {
        let mut ppm = b"P6\n2 1\n255\n".to_vec();
        ppm.extend_from_slice(&[255, 0, 0, 0, 0, 9]);
        let p = Picture::parse_ppm(&ppm).unwrap();
        assert_eq!((p.width, p.height), (2, 1));
        assert_eq!(p.pixel(0, 0), (255, 0, 0));
        assert_eq!(p.pixel(1, 0), (0, 0, 9));
        assert!(Picture::parse_ppm(b"P5\n1 1\n255\n\0").is_err());
        assert!(Picture::parse_ppm(b"P6\n4 4\n255\n\0").is_err());
    }

    #[test]
    fn screendump_runs_get_a_monitor_socket() {
        let mut c = cfg(Firmware::Bios);
        c.screendump_after = Some("PANIC".into());
        let a = joined(&c.args(None).unwrap());
        assert!(a.contains("-monitor unix:/tmp/x/monitor.sock,server,nowait"), "{a}");
    }

    #[test]
    fn find_bytes_finds_the_first_match() {
        assert_eq!(find_bytes(b"mk> list\nmk> ", b"mk> "), Some(0));
        assert_eq!(find_bytes(b"ab\xffmk> ", b"mk> "), Some(3));
        assert_eq!(find_bytes(b"abc", b"x"), None);
    }

    #[test]
    fn interactive_mode_logs_through_qemu() {
        let mut c = cfg(Firmware::Bios);
        c.interactive = true;
        let a = joined(&c.args(None).unwrap());
        assert!(a.contains("logfile=/tmp/x/serial.log"), "{a}");
    }
}
