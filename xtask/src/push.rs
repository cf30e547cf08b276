//! `cargo xtask push`: send a kernel image to a running manager and optionally swap it in.
//!
//! The manager is reached through a QEMU run's `console.sock` (`--run RUN_DIR`, the directory
//! `run-qemu` prints) or a serial device (`--tty /dev/ttyUSB0`, 115200 8N1 raw). Before a byte
//! is sent, the image goes through the checks the manager will make, with the manager's code:
//! the instance exists, the image fits the image store, and it is an image of the instance's
//! protocol that fits its region (`loader::plan`, or the bzImage header for Linux).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use platform::bundle::{Cpus, Protocol};
use qemu_tests::push::{self, Console, PushJob};
use qemu_tests::qemu::CONSOLE_SOCKET;

/// Where the manager's console is.
pub enum Target {
    Run(PathBuf),
    Tty(PathBuf),
}

pub struct Options {
    pub instance: String,
    pub image: PathBuf,
    pub swap: bool,
    /// `None`: the user gave neither `--run` nor `--tty`.
    pub target: Option<Target>,
    /// The manifest the target machine booted (for the host checks with `--tty`).
    pub manifest: Option<PathBuf>,
}

/// What the host knows of the instance the image is for.
struct HostView {
    names: Vec<String>,
    memory: u64,
    cpus: u64,
    protocol: Protocol,
    image_store: u64,
    /// Its region's base, when the run's console told it (`REPORT` plan section).
    region_base: Option<u64>,
}

pub fn run(opts: Options) -> anyhow::Result<ExitCode> {
    let Some(target) = &opts.target else {
        bail!("push needs --run RUN_DIR (a running `cargo xtask run-qemu`) or --tty DEVICE");
    };
    let image = std::fs::read(&opts.image)
        .with_context(|| format!("reading the image {}", opts.image.display()))?;
    match host_view(&opts)? {
        Some(view) => {
            check(&opts.instance, &image, &view)?;
            println!("push: {} passes the manager's checks on the host", opts.image.display());
        }
        None => println!(
            "push: no manifest given (--manifest): the image is checked by the manager only"
        ),
    }
    let job =
        PushJob { instance: opts.instance.clone(), image, swap: opts.swap, ..Default::default() };
    let bar = indicatif::ProgressBar::new(job.image.len() as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg:>9} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message("pushing");
    let result = match target {
        Target::Run(dir) => {
            let socket = dir.join(CONSOLE_SOCKET);
            let mut conn = std::os::unix::net::UnixStream::connect(&socket).with_context(|| {
                format!(
                    "connecting to {} (is the `cargo xtask run-qemu` of that directory still \
                     running?)",
                    socket.display()
                )
            })?;
            push::push(&mut conn, &job, |b| bar.set_position(b))
        }
        Target::Tty(dev) => {
            let mut tty = Tty::open(dev)?;
            push::push(&mut tty, &job, |b| bar.set_position(b))
        }
    };
    bar.finish_and_clear();
    let report = result?;
    println!("push: {report}");
    println!("push: {}", report.outcome);
    match &report.swap {
        Some(s) if s.starts_with("swapped") => println!("push: {s}"),
        Some(s) => {
            println!("push: {s}");
            return Ok(ExitCode::FAILURE);
        }
        None => {
            println!("push: kept; type `swap {}` on the manager's console to run it", opts.instance)
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The instance as the run's bundle (or the manifest) describes it.
fn host_view(opts: &Options) -> anyhow::Result<Option<HostView>> {
    match (&opts.target, &opts.manifest) {
        (None, _) => Ok(None),
        (_, Some(m)) => {
            let m = crate::manifest::load(m).map_err(|e| anyhow::anyhow!("{e}"))?;
            let list = m.instances.iter().map(|i| (i.name.as_str(), i.memory, &i.cpus, i.protocol));
            Ok(Some(view_of(&opts.instance, list, m.settings.image_store, None)))
        }
        (Some(Target::Run(dir)), None) => {
            let path = dir.join("bundle.bin");
            let bytes = std::fs::read(&path).with_context(|| {
                format!("reading {} (is {} a run directory?)", path.display(), dir.display())
            })?;
            let parsed = platform::bundle::parse(&bytes)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let list =
                parsed.instances.iter().map(|i| (i.name.as_str(), i.memory, &i.cpus, i.protocol));
            let base = region_from_log(&dir.join("serial.log"), &opts.instance);
            Ok(Some(view_of(&opts.instance, list, parsed.settings.image_store, base)))
        }
        (Some(Target::Tty(_)), None) => Ok(None),
    }
}

/// The view of instance `name` among `instances` (name, memory, CPUs, protocol).
fn view_of<'a>(
    name: &str,
    instances: impl Iterator<Item = (&'a str, u64, &'a Cpus, Protocol)>,
    image_store: u64,
    region_base: Option<u64>,
) -> HostView {
    let mut view = HostView {
        names: Vec::new(),
        memory: 0,
        cpus: 0,
        protocol: Protocol::Multikernel,
        image_store,
        region_base,
    };
    for (n, memory, cpus, protocol) in instances {
        view.names.push(n.to_string());
        if n == name {
            view.memory = memory;
            view.cpus = match cpus {
                Cpus::Any(k) => u64::from(*k),
                Cpus::Exactly(ids) => ids.len() as u64,
            };
            view.protocol = protocol;
        }
    }
    view
}

/// The instance's region base from the `plan` report section the manager printed.
fn region_from_log(log: &Path, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(log).ok()?;
    let (sections, _) = qemu_tests::report::collect_sections(&text);
    let items = sections.get(bootproto::report::section::PLAN)?.as_array()?;
    let owner = format!("instance: {name}");
    items.iter().find(|i| i["owner"] == owner.as_str())?["base"].as_u64()
}

/// The manager's refusals, made on the host first.
fn check(name: &str, image: &[u8], v: &HostView) -> anyhow::Result<()> {
    if !v.names.iter().any(|n| n == name) {
        bail!("there is no instance '{name}' (instances: {})", v.names.join(", "));
    }
    if image.is_empty() {
        bail!("the image is empty");
    }
    if v.image_store == 0 {
        bail!("the manager has no image store ([settings] image_store = 0)");
    }
    if image.len() as u64 > v.image_store {
        bail!(
            "{} bytes do not fit the image store ({} bytes; raise [settings] image_store)",
            image.len(),
            v.image_store
        );
    }
    match v.protocol {
        Protocol::Linux => {
            let k = platform::bzimage::parse(image)
                .map_err(|e| anyhow::anyhow!("instance '{name}' runs Linux: {e}"))?;
            if k.init_size > v.memory {
                bail!(
                    "Linux needs {} MiB to decompress in; instance '{name}' has {} MiB",
                    k.init_size >> 20,
                    v.memory >> 20
                );
            }
        }
        _ => {
            // Where it lands matters only for an image linked at a fixed address; without the
            // run's plan, a position-independent image is planned at a stand-in base.
            let pie = image.get(16..18) == Some(&3u16.to_le_bytes()[..]);
            let base = match (v.region_base, pie) {
                (Some(b), _) => b,
                (None, true) => 0x4000_0000,
                (None, false) => {
                    println!("push: the region's address is unknown here; the manager checks where the image lands");
                    return Ok(());
                }
            };
            let region = platform::memmap::Range::new(base, base.saturating_add(v.memory));
            platform::supervisor::plan_native(region, v.cpus.max(1), image).map_err(
                |e| match e {
                    platform::supervisor::StartError::Image(e) => {
                        anyhow::anyhow!("image refused for instance '{name}': {e}")
                    }
                    e => anyhow::anyhow!("instance '{name}': {e}"),
                },
            )?;
        }
    }
    Ok(())
}

/// A serial device in raw mode at 115200 8N1.
struct Tty(File);

impl Tty {
    fn open(path: &Path) -> anyhow::Result<Tty> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let fd = f.as_raw_fd();
        // SAFETY: termios is plain data; tcgetattr fills it for an open descriptor.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `fd` is open for the life of `f`; `t` is a valid termios.
        if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
            bail!("{} is not a serial device: {}", path.display(), io::Error::last_os_error());
        }
        // SAFETY: `t` is a valid termios.
        unsafe { libc::cfmakeraw(&mut t) };
        t.c_cflag |= libc::CLOCAL | libc::CREAD;
        t.c_cc[libc::VMIN] = 0;
        t.c_cc[libc::VTIME] = 0;
        // SAFETY: `t` is a valid termios; B115200 is a valid speed.
        unsafe { libc::cfsetspeed(&mut t, libc::B115200) };
        // SAFETY: `fd` is open; `t` is a valid termios.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) } != 0 {
            bail!("configuring {}: {}", path.display(), io::Error::last_os_error());
        }
        Ok(Tty(f))
    }
}

use std::os::unix::fs::OpenOptionsExt;

impl Console for Tty {
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.0.write_all(bytes)?;
        self.0.flush()
    }

    fn receive(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
        let mut pfd = libc::pollfd { fd: self.0.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for an open descriptor.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n <= 0 {
            return Ok(0);
        }
        self.0.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(protocol: Protocol) -> HostView {
        HostView {
            names: vec!["hello".into(), "linux".into()],
            memory: 8 << 20,
            cpus: 1,
            protocol,
            image_store: 1 << 20,
            region_base: Some(0x20_0000),
        }
    }

    #[test]
    fn the_host_refuses_what_the_manager_would() {
        let junk = vec![0x55u8; 5000];
        let e = check("nope", &junk, &view(Protocol::Multikernel)).unwrap_err();
        assert!(format!("{e}").contains("no instance 'nope' (instances: hello, linux)"), "{e}");
        let e = check("hello", &junk, &view(Protocol::Multikernel)).unwrap_err();
        assert!(format!("{e}").contains("image refused for instance 'hello'"), "{e}");
        let e = check("linux", &junk, &view(Protocol::Linux)).unwrap_err();
        assert!(format!("{e}").contains("runs Linux"), "{e}");
        let big = vec![0u8; 2 << 20];
        let e = check("hello", &big, &view(Protocol::Multikernel)).unwrap_err();
        assert!(format!("{e}").contains("do not fit the image store"), "{e}");
        let e = check("hello", &[], &view(Protocol::Multikernel)).unwrap_err();
        assert!(format!("{e}").contains("empty"), "{e}");
        let none = HostView { image_store: 0, ..view(Protocol::Multikernel) };
        assert!(format!("{}", check("hello", &junk, &none).unwrap_err()).contains("no image store"));
    }

    #[test]
    fn a_kernel_that_fits_passes_the_host_checks() {
        let image = platform::supervisor::sim::tiny_elf();
        check("hello", &image, &view(Protocol::Multikernel)).unwrap();
        // Without the run's plan, a position-independent image is still planned.
        let unknown_base = HostView { region_base: None, ..view(Protocol::Multikernel) };
        check("hello", &image, &unknown_base).unwrap();
        // The same image in a region too small for its 8 KiB segment and the shared pages.
        let tiny = HostView { memory: 0x4000, ..view(Protocol::Multikernel) };
        assert!(check("hello", &image, &tiny).is_err());
    }
}
