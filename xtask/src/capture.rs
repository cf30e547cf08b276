//! `cargo xtask capture-madt`: capture the MADT QEMU builds for a machine configuration.
//!
//! The MADTs under `platform/tests/data/madt/` are real firmware tables: QEMU generates them
//! for each `-machine`/`-smp`/x2APIC configuration and SeaBIOS installs them in guest memory.
//! No guest kernel is needed:
//! 1. start `qemu-system-x86_64 -machine M -smp N -m 128M -display none -nodefaults` with its
//!    HMP monitor on a Unix socket and SeaBIOS (the default firmware) and no disk, so the BIOS
//!    builds its ACPI tables and then idles at "No bootable device";
//! 2. over the monitor, `pmemsave 0 <RAM size> FILE` dumps guest RAM to a host file;
//! 3. on the host, find the RSDP, follow the XSDT (or RSDT) to the table signed `"APIC"`, cut it
//!    to its header's length and check it with the manager's own parser
//!    ([`platform::madt::parse`]); if the firmware was not done yet, dump again;
//! 4. `quit`, and write the table.
//!
//! Every wait is bounded (`--timeout-secs` overall, short per-read timeouts on the socket), and
//! QEMU is killed on every error path (a guard kills it on drop).
//!
//! # Spec
//! ACPI 6.5, "Root System Description Pointer (RSDP)", "Finding the RSDP on IA-PC Systems",
//! "Root System Description Table (RSDT)", "Extended System Description Table (XSDT)",
//! "System Description Table Header".

use bootproto::le::{u16_at as read_u16, u32_at as read_u32, u64_at as read_u64};
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Guest RAM given to QEMU. SeaBIOS puts the ACPI tables near the top of RAM below 4 GiB, so
/// the whole of it is dumped.
const GUEST_RAM_BYTES: u64 = 128 << 20;
/// How long to let SeaBIOS run before the first dump; later dumps follow every
/// `RETRY_INTERVAL_MS` until the overall timeout.
const FIRST_DUMP_DELAY_MS: u64 = 1000;
const RETRY_INTERVAL_MS: u64 = 500;
/// Per-read timeout on the monitor socket (each wait loop also checks the overall deadline).
const SOCKET_READ_TIMEOUT_MS: u64 = 200;
/// How long QEMU gets to exit after `quit` before it is killed.
const QUIT_GRACE_MS: u64 = 3000;
/// The HMP prompt QEMU prints when it is ready for the next command.
const HMP_PROMPT: &str = "(qemu) ";

// ACPI 6.5, "Finding the RSDP on IA-PC Systems": the EBDA segment is the real-mode segment
// stored at 0x40E; its first 1 KiB is searched, then the BIOS area 0xE0000..0x100000, on 16-byte
// boundaries.
const EBDA_SEGMENT_PTR: usize = 0x40E;
const EBDA_SEARCH_LEN: usize = 1024;
const BIOS_AREA: std::ops::Range<usize> = 0xE_0000..0x10_0000;
const RSDP_SIGNATURE: &[u8; 8] = b"RSD PTR ";
// ACPI 6.5, "Root System Description Pointer (RSDP) Structure": the ACPI 1.0 part (20 bytes,
// checksum at 8) has the revision at 15 and the RSDT address at 16; revision 2 and later add
// Length at 20, the XSDT address at 24 and an extended checksum over `Length` bytes.
const RSDP_V1_LEN: usize = 20;
const RSDP_REVISION: usize = 15;
const RSDP_RSDT_ADDRESS: usize = 16;
const RSDP_LENGTH: usize = 20;
const RSDP_XSDT_ADDRESS: usize = 24;
const RSDP_V2_LEN: usize = 36;
// ACPI 6.5, "System Description Table Header".
const SDT_HEADER_LEN: usize = 36;
const SDT_LENGTH: usize = 4;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Machine {
    /// i440FX + PIIX (`-machine pc`).
    Pc,
    /// Q35 + ICH9 (`-machine q35`).
    Q35,
}

impl Machine {
    fn qemu_name(self) -> &'static str {
        match self {
            Machine::Pc => "pc",
            Machine::Q35 => "q35",
        }
    }
}

/// Capture the MADT that QEMU + SeaBIOS build for a machine configuration.
#[derive(clap::Args, Debug)]
pub struct CaptureArgs {
    /// QEMU machine type.
    #[arg(long, value_enum, default_value = "q35")]
    pub machine: Machine,
    /// Number of CPUs (`-smp N`).
    #[arg(long, default_value_t = 1)]
    pub smp: u32,
    /// Possible CPUs beyond `--smp` (`-smp N,maxcpus=M`): QEMU lists the absent ones as
    /// hot-pluggable, i.e. not Enabled.
    #[arg(long)]
    pub maxcpus: Option<u32>,
    /// Where to write the raw MADT.
    #[arg(long)]
    pub out: PathBuf,
    /// Give the CPUs x2APIC (`-cpu qemu64,+x2apic` with an Intel IOMMU in EIM mode), so that
    /// APIC IDs above 254 are possible and are listed as Local x2APIC entries. Needs q35 and
    /// QEMU 8 or later.
    #[arg(long)]
    pub x2apic: bool,
    /// More arguments for QEMU, one per use (e.g. `--qemu-arg=-cpu --qemu-arg=max`).
    #[arg(long = "qemu-arg", allow_hyphen_values = true)]
    pub qemu_args: Vec<String>,
    /// The QEMU binary.
    #[arg(long, default_value = "qemu-system-x86_64")]
    pub qemu: PathBuf,
    /// Give up (and kill QEMU) after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
}

pub fn run(args: CaptureArgs) -> anyhow::Result<()> {
    let table = capture(&args)?;
    let inv = platform::madt::parse(&table).map_err(|e| anyhow::anyhow!("{e}"))?;
    fs::write(&args.out, &table).with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "wrote {}: {} bytes, {} CPUs ({} x2APIC entries), {} IO APIC(s)",
        args.out.display(),
        table.len(),
        inv.cpus.len(),
        inv.cpus.iter().filter(|c| c.kind == platform::madt::CpuKind::X2apic).count(),
        inv.io_apics.len()
    );
    Ok(())
}

/// The QEMU command line for a capture (without the monitor option).
fn qemu_args(args: &CaptureArgs) -> anyhow::Result<Vec<String>> {
    if args.smp == 0 {
        bail!("--smp must be at least 1");
    }
    if args.x2apic && args.machine != Machine::Q35 {
        bail!("--x2apic needs --machine q35 (the Intel IOMMU that provides EIM is a Q35 device)");
    }
    let smp = match args.maxcpus {
        Some(max) if max < args.smp => bail!("--maxcpus {max} is below --smp {}", args.smp),
        Some(max) => format!("{},maxcpus={max}", args.smp),
        None => args.smp.to_string(),
    };
    let mut v: Vec<String> = vec![
        "-machine".into(),
        args.machine.qemu_name().into(),
        "-smp".into(),
        smp,
        "-m".into(),
        format!("{}M", GUEST_RAM_BYTES >> 20),
        "-display".into(),
        "none".into(),
        "-nodefaults".into(),
    ];
    if args.x2apic {
        v.extend(["-cpu", qemu_tests::qemu::X2APIC_CPU].map(String::from));
        v.extend(qemu_tests::qemu::X2APIC_DEVICE.map(String::from));
    }
    v.extend(args.qemu_args.iter().cloned());
    Ok(v)
}

/// Kills QEMU and removes the scratch directory however the capture ends.
struct Session {
    child: Option<Child>,
    dir: PathBuf,
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Both may fail if QEMU already exited; there is nothing more to do then.
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Session {
    fn child(&mut self) -> anyhow::Result<&mut Child> {
        self.child.as_mut().context("QEMU is no longer running")
    }

    /// Fails with QEMU's own stderr if it has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child()?.try_wait()? {
            let log = fs::read_to_string(self.dir.join("qemu.stderr")).unwrap_or_default();
            bail!("QEMU exited early ({status}): {}", log.trim());
        }
        Ok(())
    }
}

/// Runs QEMU and returns the raw MADT it built.
pub fn capture(args: &CaptureArgs) -> anyhow::Result<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let qemu_args = qemu_args(args)?;
    let dir = std::env::temp_dir().join(format!(
        "xtask-capture-madt-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut session = Session { child: None, dir: dir.clone() };
    let sock = dir.join("monitor.sock");
    let dump = dir.join("ram.bin");
    let stderr = fs::File::create(dir.join("qemu.stderr"))?;

    let child = Command::new(&args.qemu)
        .args(&qemu_args)
        .arg("-monitor")
        .arg(format!("unix:{},server,nowait", sock.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("starting {} (is QEMU installed?)", args.qemu.display()))?;
    session.child = Some(child);

    let mut monitor = connect(&mut session, &sock, deadline)?;
    let mut buf = String::new();
    read_until_prompts(&mut monitor, &mut buf, 1, deadline).context("waiting for the monitor")?;

    std::thread::sleep(Duration::from_millis(FIRST_DUMP_DELAY_MS));
    let table = loop {
        session.check_alive()?;
        buf.clear();
        // HMP parses the size as an expression: the file name must be quoted, or `/` divides.
        let cmd = format!("pmemsave 0 {GUEST_RAM_BYTES:#x} \"{}\"\n", dump.display());
        monitor.write_all(cmd.as_bytes()).context("sending pmemsave")?;
        read_until_prompts(&mut monitor, &mut buf, 1, deadline).context("waiting for pmemsave")?;
        let mem = fs::read(&dump).with_context(|| {
            format!("reading the RAM dump {} (monitor said: {})", dump.display(), reply(&buf))
        })?;
        let last_err = match find_table(&mem, b"APIC") {
            Ok(t) => match platform::madt::parse(t) {
                Ok(_) => break t.to_vec(),
                Err(e) => anyhow::anyhow!("the MADT found does not validate yet: {e}"),
            },
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(last_err
                .context(format!("no valid MADT in guest RAM after {} s", args.timeout_secs)));
        }
        std::thread::sleep(Duration::from_millis(RETRY_INTERVAL_MS));
    };

    // Ask QEMU to leave; the guard kills it if it does not within the grace period.
    let _ = monitor.write_all(b"quit\n");
    let grace = Instant::now() + Duration::from_millis(QUIT_GRACE_MS);
    while Instant::now() < grace {
        if session.child()?.try_wait()?.is_some() {
            session.child = None;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(table)
}

fn connect(session: &mut Session, sock: &Path, deadline: Instant) -> anyhow::Result<UnixStream> {
    loop {
        session.check_alive()?;
        match UnixStream::connect(sock) {
            Ok(s) => {
                s.set_read_timeout(Some(Duration::from_millis(SOCKET_READ_TIMEOUT_MS)))?;
                return Ok(s);
            }
            Err(e) if Instant::now() >= deadline => {
                return Err(e).context(format!("connecting to the QEMU monitor {}", sock.display()))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The monitor's answer to a command, without the echo of the command line (the first line,
/// full of terminal escapes) and without the prompt.
fn reply(output: &str) -> &str {
    let after_echo = output.split_once('\n').map_or("", |(_, rest)| rest);
    after_echo.trim_end().trim_end_matches(HMP_PROMPT.trim_end()).trim()
}

/// Reads monitor output into `buf` until it holds `prompts` HMP prompts, or the deadline.
fn read_until_prompts(
    s: &mut UnixStream,
    buf: &mut String,
    prompts: usize,
    deadline: Instant,
) -> anyhow::Result<()> {
    let mut chunk = [0u8; 4096];
    while buf.matches(HMP_PROMPT).count() < prompts {
        if Instant::now() >= deadline {
            bail!("timed out; monitor output so far: {:?}", reply(buf));
        }
        match s.read(&mut chunk) {
            Ok(0) => bail!("the monitor closed the connection; output so far: {:?}", reply(buf)),
            Ok(n) => buf.push_str(&String::from_utf8_lossy(chunk.get(..n).unwrap_or_default())),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e).context("reading the monitor"),
        }
    }
    Ok(())
}

fn sums_to_zero(bytes: &[u8]) -> bool {
    platform::acpi::checksum(bytes) == 0
}

/// Whether a valid RSDP starts at `at`: signature and the ACPI 1.0 checksum, plus the extended
/// checksum for revision 2 and later.
fn is_rsdp(mem: &[u8], at: usize) -> bool {
    let Some(v1) = at.checked_add(RSDP_V1_LEN).and_then(|end| mem.get(at..end)) else {
        return false;
    };
    if !v1.starts_with(RSDP_SIGNATURE) || !sums_to_zero(v1) {
        return false;
    }
    if v1.get(RSDP_REVISION).copied().unwrap_or(0) >= 2 {
        let len = read_u32(mem, at + RSDP_LENGTH).and_then(|l| usize::try_from(l).ok());
        let Some(len) = len.filter(|&l| l >= RSDP_V2_LEN) else { return false };
        return at.checked_add(len).and_then(|end| mem.get(at..end)).is_some_and(sums_to_zero);
    }
    true
}

/// Finds the RSDP in a dump of guest RAM that starts at physical address 0 (ACPI 6.5, "Finding
/// the RSDP on IA-PC Systems").
pub fn find_rsdp(mem: &[u8]) -> Option<usize> {
    let ebda = read_u16(mem, EBDA_SEGMENT_PTR).map(|seg| usize::from(seg) << 4).filter(|&a| a != 0);
    let ebda_range = ebda.map(|a| a..a.saturating_add(EBDA_SEARCH_LEN));
    ebda_range
        .into_iter()
        .chain(std::iter::once(BIOS_AREA))
        .flat_map(|r| r.step_by(16))
        .find(|&at| is_rsdp(mem, at))
}

/// A whole ACPI table at physical address `addr` of the dump, cut to its header's length.
fn table_at(mem: &[u8], addr: u64) -> anyhow::Result<&[u8]> {
    let at = usize::try_from(addr)?;
    let len = read_u32(mem, at.saturating_add(SDT_LENGTH))
        .with_context(|| format!("table at {addr:#x} lies outside the RAM dump"))?;
    let len = usize::try_from(len)?;
    if len < SDT_HEADER_LEN {
        bail!("table at {addr:#x} has length {len}, shorter than its header");
    }
    at.checked_add(len)
        .and_then(|end| mem.get(at..end))
        .with_context(|| format!("table at {addr:#x} ({len} bytes) runs past the RAM dump"))
}

/// Follows RSDP → XSDT (revision 2+, if present) or RSDT → the table with `signature`.
pub fn find_table<'m>(mem: &'m [u8], signature: &[u8; 4]) -> anyhow::Result<&'m [u8]> {
    let rsdp =
        find_rsdp(mem).context("no RSDP in the EBDA or 0xE0000..0x100000 (firmware not done?)")?;
    let revision = mem.get(rsdp + RSDP_REVISION).copied().unwrap_or(0);
    let xsdt = if revision >= 2 { read_u64(mem, rsdp + RSDP_XSDT_ADDRESS).unwrap_or(0) } else { 0 };
    let (root, entry_size) = if xsdt != 0 {
        (xsdt, 8)
    } else {
        (u64::from(read_u32(mem, rsdp + RSDP_RSDT_ADDRESS).unwrap_or(0)), 4)
    };
    let root_table = table_at(mem, root)?;
    if !sums_to_zero(root_table) {
        bail!("the root table at {root:#x} has a bad checksum");
    }
    let pointers = root_table.get(SDT_HEADER_LEN..).unwrap_or_default();
    for p in pointers.chunks_exact(entry_size) {
        let addr = match entry_size {
            8 => read_u64(p, 0),
            _ => read_u32(p, 0).map(u64::from),
        }
        .unwrap_or(0);
        let Ok(t) = table_at(mem, addr) else { continue };
        if t.starts_with(signature) {
            return Ok(t);
        }
    }
    bail!(
        "no {:?} table among the {} tables the root table at {root:#x} lists",
        String::from_utf8_lossy(signature),
        pointers.len() / entry_size
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fix_checksum(t: &mut [u8], at: usize) {
        platform::acpi::set_checksum(t, at);
    }

    fn sdt(sig: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut t = vec![0u8; SDT_HEADER_LEN];
        t[..4].copy_from_slice(sig);
        t.extend_from_slice(body);
        let len = t.len() as u32;
        t[4..8].copy_from_slice(&len.to_le_bytes());
        fix_checksum(&mut t, 9);
        t
    }

    /// A fake 1 MiB + 64 KiB RAM dump with an RSDP at 0xF5000 and tables at 1 MiB.
    fn dump(xsdt: bool) -> Vec<u8> {
        let mut mem = vec![0u8; 0x11_0000];
        let madt = sdt(b"APIC", &[0u8; 8]);
        let facp = sdt(b"FACP", &[1, 2, 3]);
        let (facp_at, madt_at, root_at) = (0x10_0000usize, 0x10_0100usize, 0x10_0200usize);
        mem[facp_at..facp_at + facp.len()].copy_from_slice(&facp);
        mem[madt_at..madt_at + madt.len()].copy_from_slice(&madt);
        let root = if xsdt {
            let mut body = (facp_at as u64).to_le_bytes().to_vec();
            body.extend_from_slice(&(madt_at as u64).to_le_bytes());
            sdt(b"XSDT", &body)
        } else {
            let mut body = (facp_at as u32).to_le_bytes().to_vec();
            body.extend_from_slice(&(madt_at as u32).to_le_bytes());
            sdt(b"RSDT", &body)
        };
        mem[root_at..root_at + root.len()].copy_from_slice(&root);
        let mut rsdp = [0u8; RSDP_V2_LEN];
        rsdp[..8].copy_from_slice(RSDP_SIGNATURE);
        if xsdt {
            rsdp[RSDP_REVISION] = 2;
            rsdp[RSDP_LENGTH..RSDP_LENGTH + 4].copy_from_slice(&(RSDP_V2_LEN as u32).to_le_bytes());
            rsdp[RSDP_XSDT_ADDRESS..RSDP_XSDT_ADDRESS + 8]
                .copy_from_slice(&(root_at as u64).to_le_bytes());
        } else {
            rsdp[RSDP_RSDT_ADDRESS..RSDP_RSDT_ADDRESS + 4]
                .copy_from_slice(&(root_at as u32).to_le_bytes());
        }
        fix_checksum(&mut rsdp[..RSDP_V1_LEN], 8);
        fix_checksum(&mut rsdp, 32);
        // A decoy signature without a valid checksum comes first.
        mem[0xE0010..0xE0018].copy_from_slice(RSDP_SIGNATURE);
        mem[0xF5000..0xF5000 + RSDP_V2_LEN].copy_from_slice(&rsdp);
        mem
    }

    #[test]
    fn finds_madt_through_rsdt_and_xsdt() {
        for xsdt in [false, true] {
            let mem = dump(xsdt);
            assert_eq!(find_rsdp(&mem), Some(0xF5000));
            let t = find_table(&mem, b"APIC").unwrap();
            assert_eq!(&t[..4], b"APIC");
            assert_eq!(t.len(), SDT_HEADER_LEN + 8);
            assert!(find_table(&mem, b"HPET").is_err());
        }
    }

    #[test]
    fn missing_rsdp_and_wild_pointers_are_errors_not_panics() {
        assert!(find_table(&vec![0u8; 0x10_0000], b"APIC").is_err());
        assert!(find_table(&[], b"APIC").is_err());
        let mut mem = dump(false);
        mem.truncate(0x10_0180); // cuts the root table off
        assert!(find_table(&mem, b"APIC").is_err());
    }

    #[test]
    fn x2apic_needs_q35() {
        let args = CaptureArgs {
            machine: Machine::Pc,
            smp: 2,
            maxcpus: None,
            out: "x".into(),
            x2apic: true,
            qemu_args: vec![],
            qemu: "qemu-system-x86_64".into(),
            timeout_secs: 1,
        };
        assert!(qemu_args(&args).is_err());
    }
}
