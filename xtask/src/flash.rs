//! `cargo xtask flash --device /dev/sdX [--firmware bios|uefi] [--manifest M] [--yes]
//! [--allow-fixed]`: build the USB image and write it to a stick, without ever writing the
//! wrong disk.
//!
//! # Design
//! Every refusal is decided before anything is opened for writing, by [`check_device`], from
//! what Linux says about the device: `/sys/class/block`, `/sys/block/<disk>`, `/sys/dev/block`
//! and `/proc/self/mounts`. Where those live is a [`Root`], so the checks run on a fake tree in
//! the tests (a temp dir laid out like `/sys`, a mounts file, and a regular file standing in for
//! the device). In order, the device must:
//! 1. exist and be a block device;
//! 2. be a disk Linux lists (`/sys/class/block/<name>`) and a whole disk, not a partition
//!    (`/sys/class/block/<name>/partition` exists for partitions);
//! 3. not hold the running system: neither the device of the root mount nor the device of `/`
//!    itself (`st_dev`, looked up in `/sys/dev/block/MAJOR:MINOR`) may be the disk, one of
//!    its partitions, or anything stacked on them (`holders/`: device-mapper, RAID);
//! 4. have nothing mounted from it (the same set; `/dev/disk/by-*` links and `/dev/mapper`
//!    names are resolved);
//! 5. be marked removable (`/sys/block/<name>/removable`), unless `--allow-fixed`;
//! 6. hold the image (`/sys/block/<name>/size` counts 512-byte sectors, whatever the disk's
//!    block size).
//!
//! Then the user sees the vendor, model and size and types the device's name. The device is
//! opened with `O_EXCL`, which Linux refuses for a block device that is mounted or in use
//! (open(2), "O_EXCL"): a last guard if something mounted it meanwhile. The image is written in
//! 4 MiB blocks ([`write_image`]) and `fsync`ed; the device is closed and reopened with
//! `O_DIRECT` where it allows, so [`verify`] compares what the disk holds, not the page cache
//! (where `O_DIRECT` is refused, the read goes through a cache Linux dropped when the last
//! opener closed the device). [`write_image`] and [`verify`] take any [`File`], so the tests
//! run them on regular files.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, IsTerminal, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use platform::partition::Size;
use qemu_tests::qemu::Firmware;
use qemu_tests::scenarios::KernelVariant;

use crate::{build, bundle};

/// The write and read-back unit.
pub const BLOCK: usize = 4 << 20;
/// `O_DIRECT` needs buffers, offsets and lengths aligned to the device's logical block size;
/// 4 KiB covers every block size in use.
const DIRECT_ALIGN: usize = 4096;
/// `/sys/block/<name>/size` is in 512-byte sectors (`Documentation/ABI/stable/sysfs-block`).
const SECTOR: u64 = 512;
/// How deep device stacking (`holders/`) is followed: far more than LVM on LUKS on RAID.
const MAX_HOLDER_DEPTH: usize = 8;

/// What `cargo xtask flash` was asked.
#[derive(Clone, Debug)]
pub struct Options {
    pub device: PathBuf,
    pub firmware: Firmware,
    pub manifest: PathBuf,
    pub yes: bool,
    pub allow_fixed: bool,
}

/// Where the checks look: the real `/sys`, `/proc/self/mounts`, `/dev` and `/` in production,
/// a temp dir in the tests.
#[derive(Clone, Debug)]
pub struct Root {
    pub sys: PathBuf,
    pub mounts: PathBuf,
    pub dev: PathBuf,
    /// A path on the running system's root file system (`/`).
    pub system: PathBuf,
    /// Whether a path's metadata is a block device's: [`FileTypeExt::is_block_device`] in
    /// production; the tests let a regular file stand in for one.
    pub is_block_device: fn(&std::fs::Metadata) -> bool,
}

impl Root {
    /// The running system's.
    pub fn host() -> Root {
        Root {
            sys: PathBuf::from("/sys"),
            mounts: PathBuf::from("/proc/self/mounts"),
            dev: PathBuf::from("/dev"),
            system: PathBuf::from("/"),
            is_block_device: |m| m.file_type().is_block_device(),
        }
    }
}

/// Why a device is not written. One line each, saying what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    Missing {
        path: PathBuf,
        error: String,
    },
    NotBlockDevice {
        path: PathBuf,
    },
    /// Linux lists no block device of that name.
    Unknown {
        path: PathBuf,
        name: String,
    },
    Partition {
        path: PathBuf,
        disk: Option<String>,
    },
    /// `partition` (the disk, one of its partitions, or a device stacked on them) is mounted on
    /// `/`, or is the device of `/`.
    RunningSystem {
        name: String,
        partition: String,
    },
    Mounted {
        name: String,
        partition: String,
        mount: String,
    },
    Fixed {
        name: String,
    },
    TooSmall {
        name: String,
        size: u64,
        needed: u64,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Missing { path, error } => {
                write!(f, "cannot open {}: {error}", path.display())
            }
            Refusal::NotBlockDevice { path } => write!(
                f,
                "{} is not a block device; give a whole disk such as /dev/sdb (lsblk lists them)",
                path.display()
            ),
            Refusal::Unknown { path, name } => write!(
                f,
                "{} ({name}) is not a block device Linux lists under /sys/class/block",
                path.display()
            ),
            Refusal::Partition { path, disk: Some(disk) } => write!(
                f,
                "{} is a partition of {disk}; give the whole disk, /dev/{disk}",
                path.display()
            ),
            Refusal::Partition { path, disk: None } => {
                write!(f, "{} is a partition; give the whole disk", path.display())
            }
            Refusal::RunningSystem { name, partition } => write!(
                f,
                "{name} holds the running system (/ is on {partition}); refusing to overwrite it"
            ),
            Refusal::Mounted { name, partition, mount } => write!(
                f,
                "{name} is in use: {partition} is mounted on {mount}; unmount it first \
                 (umount {mount})"
            ),
            Refusal::Fixed { name } => write!(
                f,
                "{name} is not marked removable (/sys/block/{name}/removable is 0), so it may be \
                 an internal disk; if it is the USB disk you mean (some call themselves fixed), \
                 pass --allow-fixed"
            ),
            Refusal::TooSmall { name, size, needed } => write!(
                f,
                "{name} holds {} ({size} bytes) but the image is {} ({needed} bytes)",
                Size(*size),
                Size(*needed)
            ),
        }
    }
}

impl std::error::Error for Refusal {}

/// A disk that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    /// The device node, links resolved.
    pub path: PathBuf,
    /// Its kernel name (`sdb`).
    pub name: String,
    pub size: u64,
    pub vendor: String,
    pub model: String,
    pub removable: bool,
}

fn read_trimmed(path: &Path) -> Option<String> {
    let mut text = String::new();
    File::open(path).ok()?.take(4096).read_to_string(&mut text).ok()?;
    Some(text.trim().to_string())
}

/// The kernel name of a `/dev` path: links (`/dev/disk/by-id/...`, `/dev/mapper/...`)
/// resolved, then the file name. A path under `/dev` is looked up under `root.dev`; one that
/// does not resolve (`/dev/root`) keeps its own file name.
fn kernel_name(root: &Root, dev_path: &str) -> Option<String> {
    let rel = dev_path.strip_prefix("/dev/")?;
    let path = root.dev.join(rel);
    let resolved = std::fs::canonicalize(&path).unwrap_or(path);
    resolved.file_name().map(|n| n.to_string_lossy().to_string())
}

/// One line of a mounts file: the source and the mount point, with their `\ooo` escapes
/// (space, tab, newline, backslash) decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Mount {
    source: String,
    target: String,
}

fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let d = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(d, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).to_string()
}

fn read_mounts(path: &Path) -> anyhow::Result<Vec<Mount>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let (source, target) = (fields.next()?, fields.next()?);
            Some(Mount { source: unescape(source), target: unescape(target) })
        })
        .collect())
}

/// The disk, its partitions, and every device stacked on any of them (device-mapper, RAID),
/// by kernel name.
fn members(root: &Root, disk: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::from([disk.to_string()]);
    let mut frontier = vec![root.sys.join("block").join(disk)];
    for _ in 0..MAX_HOLDER_DEPTH {
        let mut next = Vec::new();
        for dir in &frontier {
            let mut dirs = vec![dir.clone()];
            // Partitions are subdirectories with a `partition` file.
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if entry.path().join("partition").is_file() {
                    found.insert(entry.file_name().to_string_lossy().to_string());
                    dirs.push(entry.path());
                }
            }
            for d in dirs {
                for holder in std::fs::read_dir(d.join("holders")).into_iter().flatten().flatten() {
                    let name = holder.file_name().to_string_lossy().to_string();
                    if found.insert(name.clone()) {
                        next.push(root.sys.join("block").join(name));
                    }
                }
            }
        }
        if next.is_empty() {
            break;
        }
        frontier = next;
    }
    found
}

/// The kernel name of the block device `/` is on, from its `st_dev` (none for a root that is
/// not on a block device: tmpfs, overlay on a live system).
fn system_device(root: &Root) -> Option<String> {
    let dev = std::fs::metadata(&root.system).ok()?.dev();
    // glibc's encoding of dev_t (`gnu_dev_major`, `gnu_dev_minor`).
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0xff);
    let link = root.sys.join("dev/block").join(format!("{major}:{minor}"));
    let resolved = std::fs::canonicalize(link).ok()?;
    resolved.file_name().map(|n| n.to_string_lossy().to_string())
}

/// Decides whether `device` may be written, with nothing opened for writing. `image_len`:
/// the image's size, once it is built (`None` skips the size check).
pub fn check_device(
    root: &Root,
    device: &Path,
    allow_fixed: bool,
    image_len: Option<u64>,
) -> Result<Disk, Refusal> {
    let meta = std::fs::metadata(device)
        .map_err(|e| Refusal::Missing { path: device.into(), error: e.to_string() })?;
    if !(root.is_block_device)(&meta) {
        return Err(Refusal::NotBlockDevice { path: device.into() });
    }
    let path = std::fs::canonicalize(device)
        .map_err(|e| Refusal::Missing { path: device.into(), error: e.to_string() })?;
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let class = root.sys.join("class/block").join(&name);
    if name.is_empty() || !class.exists() {
        return Err(Refusal::Unknown { path: device.into(), name });
    }
    if class.join("partition").exists() {
        let disk = std::fs::canonicalize(&class).ok().and_then(|p| {
            p.parent().and_then(|d| d.file_name()).map(|d| d.to_string_lossy().to_string())
        });
        return Err(Refusal::Partition { path: device.into(), disk });
    }
    let ours = members(root, &name);
    let mounts = read_mounts(&root.mounts).unwrap_or_default();
    let mounted_name = |m: &Mount| kernel_name(root, &m.source);
    let on_root = mounts
        .iter()
        .filter(|m| m.target == "/")
        .filter_map(mounted_name)
        .chain(system_device(root))
        .find(|n| ours.contains(n));
    if let Some(partition) = on_root {
        return Err(Refusal::RunningSystem { name, partition: format!("/dev/{partition}") });
    }
    if let Some((m, part)) =
        mounts.iter().find_map(|m| mounted_name(m).filter(|n| ours.contains(n)).map(|n| (m, n)))
    {
        return Err(Refusal::Mounted {
            name,
            partition: format!("/dev/{part}"),
            mount: m.target.clone(),
        });
    }
    let block = root.sys.join("block").join(&name);
    let removable = read_trimmed(&block.join("removable")).is_some_and(|r| r == "1");
    if !removable && !allow_fixed {
        return Err(Refusal::Fixed { name });
    }
    let size = read_trimmed(&block.join("size"))
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(0, |sectors| sectors.saturating_mul(SECTOR));
    if let Some(needed) = image_len {
        if size < needed {
            return Err(Refusal::TooSmall { name, size, needed });
        }
    }
    let info = |f: &str| read_trimmed(&block.join("device").join(f)).unwrap_or_default();
    Ok(Disk { path, name, size, vendor: info("vendor"), model: info("model"), removable })
}

/// Shows the disk and asks for its name; true if the user typed it.
pub fn confirm(
    disk: &Disk,
    image: &Path,
    image_len: u64,
    input: &mut impl BufRead,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    writeln!(out, "{}", describe(disk))?;
    writeln!(out, "write {} ({}) to it?", image.display(), Size(image_len))?;
    write!(
        out,
        "Everything on {} will be lost. Type its name ({}) to go on: ",
        disk.path.display(),
        disk.name
    )?;
    out.flush()?;
    let mut answer = String::new();
    input.read_line(&mut answer).context("reading the answer")?;
    Ok(answer.trim() == disk.name)
}

/// `/dev/sdb: SanDisk Cruzer Blade, 14.3 GiB, removable`.
pub fn describe(disk: &Disk) -> String {
    let what = [disk.vendor.as_str(), disk.model.as_str()]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "{}: {}, {} ({} bytes), {}",
        disk.path.display(),
        if what.is_empty() { "unknown vendor and model" } else { &what },
        Size(disk.size),
        disk.size,
        if disk.removable { "removable" } else { "NOT marked removable" }
    )
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Writes all of `image` to the start of `device` in [`BLOCK`]-byte blocks, then `fsync`s it.
/// Returns the bytes written.
pub fn write_image(
    image: &mut File,
    device: &mut File,
    progress: &ProgressBar,
) -> anyhow::Result<u64> {
    image.seek(SeekFrom::Start(0))?;
    device.seek(SeekFrom::Start(0))?;
    let mut buf = vec![0u8; BLOCK];
    let mut written = 0u64;
    loop {
        let n = read_full(image, &mut buf).context("reading the image")?;
        if n == 0 {
            break;
        }
        device
            .write_all(&buf[..n])
            .with_context(|| format!("writing the device at byte {written:#x}"))?;
        written += n as u64;
        progress.inc(n as u64);
        if n < BLOCK {
            break;
        }
    }
    device.sync_all().context("syncing the device (fsync)")?;
    Ok(written)
}

/// Why a read-back failed.
#[derive(Debug)]
pub enum VerifyError {
    /// The first byte that differs.
    Mismatch {
        offset: u64,
    },
    /// The device ended at `at`, before the image did.
    Short {
        at: u64,
    },
    Io(std::io::Error),
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyError::Mismatch { offset } => write!(
                f,
                "read-back mismatch at byte {offset:#x} ({}): the device does not hold what was \
                 written; the stick may be failing, or smaller than it claims",
                Size(*offset)
            ),
            VerifyError::Short { at } => {
                write!(f, "read-back: the device ended at byte {at:#x}, before the image did")
            }
            VerifyError::Io(e) => write!(f, "read-back: {e}"),
        }
    }
}

impl std::error::Error for VerifyError {}

/// A [`BLOCK`]-byte buffer aligned for `O_DIRECT`, inside an over-allocated `Vec`.
struct AlignedBlock {
    storage: Vec<u8>,
    offset: usize,
}

impl AlignedBlock {
    fn new() -> Self {
        let storage = vec![0u8; BLOCK + DIRECT_ALIGN];
        let offset = storage.as_ptr().align_offset(DIRECT_ALIGN).min(DIRECT_ALIGN);
        AlignedBlock { storage, offset }
    }

    fn get(&mut self, len: usize) -> &mut [u8] {
        &mut self.storage[self.offset..self.offset + len]
    }
}

/// Reads the first `len` bytes of `device` and compares them with `image`. The device is
/// read in aligned blocks whose lengths are multiples of 4 KiB, so it may have been opened
/// with `O_DIRECT`.
pub fn verify(
    image: &mut File,
    device: &mut File,
    len: u64,
    progress: &ProgressBar,
) -> Result<(), VerifyError> {
    image.seek(SeekFrom::Start(0)).map_err(VerifyError::Io)?;
    device.seek(SeekFrom::Start(0)).map_err(VerifyError::Io)?;
    let mut want = vec![0u8; BLOCK];
    let mut have = AlignedBlock::new();
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(BLOCK as u64) as usize;
        let read = read_full(image, &mut want[..n]).map_err(VerifyError::Io)?;
        if read < n {
            return Err(VerifyError::Io(std::io::Error::other("the image shrank while reading")));
        }
        let ask = n.next_multiple_of(DIRECT_ALIGN).min(BLOCK);
        let got = read_full(device, have.get(ask)).map_err(VerifyError::Io)?;
        if got < n {
            return Err(VerifyError::Short { at: at + got as u64 });
        }
        let block = have.get(n);
        if let Some(i) = (0..n).find(|&i| block[i] != want[i]) {
            return Err(VerifyError::Mismatch { offset: at + i as u64 });
        }
        at += n as u64;
        progress.inc(n as u64);
    }
    Ok(())
}

fn progress_bar(len: u64, what: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:>9} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what);
    bar
}

/// Builds the image `cargo xtask image --firmware F --manifest M` builds; returns its path.
fn build_image(firmware: Firmware, manifest: &Path) -> anyhow::Result<PathBuf> {
    let mut bundle = crate::manifest_bundle(manifest)?;
    bundle.settings.run_ms = 0;
    let kernel = build::build_kernel(KernelVariant::Usb)?;
    let out = build::target_dir().join("images");
    let ramdisk = bundle::save(&bundle, &out.join("multikernel-bundle.bin"))?;
    build::build_image(&kernel, Some(&ramdisk), firmware, &out, "multikernel")
}

fn refuse(r: &Refusal) -> anyhow::Result<ExitCode> {
    eprintln!("flash: refused: {r}");
    Ok(ExitCode::FAILURE)
}

/// Opens the device for writing, exclusively: Linux refuses `O_EXCL` on a block device that
/// is mounted or otherwise in use.
fn open_for_write(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new().write(true).custom_flags(libc::O_EXCL).open(path).map_err(|e| {
        if e.raw_os_error() == Some(libc::EBUSY) {
            anyhow::anyhow!(
                "{} is busy (mounted or in use by the kernel); nothing was written",
                path.display()
            )
        } else {
            anyhow::anyhow!("opening {} for writing: {e}", path.display())
        }
    })
}

/// Opens the device for reading back, bypassing the page cache where the device allows.
fn open_for_read(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .or_else(|_| File::open(path))
        .with_context(|| format!("opening {} to read it back", path.display()))
}

pub fn run(opts: Options) -> anyhow::Result<ExitCode> {
    let root = Root::host();
    // The checks that need no image first, before the build.
    if let Err(r) = check_device(&root, &opts.device, opts.allow_fixed, None) {
        return refuse(&r);
    }
    let image_path = build_image(opts.firmware, &opts.manifest)?;
    let mut image =
        File::open(&image_path).with_context(|| format!("opening {}", image_path.display()))?;
    let len = image.metadata()?.len();
    let disk = match check_device(&root, &opts.device, opts.allow_fixed, Some(len)) {
        Ok(d) => d,
        Err(r) => return refuse(&r),
    };
    if opts.yes {
        println!("{}", describe(&disk));
    } else {
        if !std::io::stdin().is_terminal() {
            anyhow::bail!(
                "standard input is not a terminal, so nobody can confirm; pass --yes to write \
                 without asking"
            );
        }
        let confirmed =
            confirm(&disk, &image_path, len, &mut std::io::stdin().lock(), &mut std::io::stdout())?;
        if !confirmed {
            eprintln!("flash: not confirmed; nothing was written");
            return Ok(ExitCode::FAILURE);
        }
    }
    let mut device = open_for_write(&disk.path)?;
    let bar = progress_bar(len, "writing");
    write_image(&mut image, &mut device, &bar)?;
    bar.finish();
    // Read back through O_DIRECT where the device allows it (see the module docs).
    drop(device);
    let mut device = open_for_read(&disk.path)?;
    let bar = progress_bar(len, "verifying");
    verify(&mut image, &mut device, len, &bar)?;
    bar.finish();
    println!(
        "flash: wrote and verified {} ({}) on {}",
        image_path.display(),
        Size(len),
        disk.path.display()
    );
    match opts.firmware {
        Firmware::Bios => println!(
            "boot it: in the target's firmware setup, enable legacy (CSM) boot; then pick the \
             USB disk in the boot menu (often F12, F11, F8 or Esc at power-on). The manager \
             logs to the screen and to COM1."
        ),
        Firmware::Uefi => println!(
            "boot it: in the target's firmware setup, turn Secure Boot off (the image is not \
             signed); then pick the USB disk's UEFI entry in the boot menu (often F12, F11, F8 \
             or Esc at power-on). The manager logs to the screen and to COM1."
        ),
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A scratch directory of its own for one test.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-flash-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a scratch directory");
        dir
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("creating a directory");
        std::fs::write(path, text).expect("writing a file");
    }

    /// A fake machine: disk `sdz` (64 MiB, removable, "Acme Stick") with partitions `sdz1` and
    /// `sdz2`; `/dev` holds regular files standing in for the device nodes; nothing of it is
    /// mounted; `/` is on `sda2`.
    struct Fake {
        dir: PathBuf,
        root: Root,
    }

    impl Fake {
        fn new(name: &str) -> Fake {
            let dir = scratch(name);
            let sys = dir.join("sys");
            write(&sys.join("block/sdz/removable"), "1\n");
            write(&sys.join("block/sdz/size"), &format!("{}\n", (64 << 20) / 512));
            write(&sys.join("block/sdz/device/vendor"), "Acme    \n");
            write(&sys.join("block/sdz/device/model"), "Stick           \n");
            std::fs::create_dir_all(sys.join("class/block")).expect("class dir");
            symlink("../../block/sdz", sys.join("class/block/sdz")).expect("link");
            for p in ["sdz1", "sdz2"] {
                write(&sys.join("block/sdz").join(p).join("partition"), "1\n");
                symlink(format!("../../block/sdz/{p}"), sys.join("class/block").join(p))
                    .expect("link");
            }
            for d in ["sdz", "sdz1", "sdz2"] {
                write(&dir.join("dev").join(d), "");
            }
            std::fs::create_dir_all(dir.join("dev/disk/by-uuid")).expect("by-uuid");
            symlink("../../sdz1", dir.join("dev/disk/by-uuid/1234-ABCD")).expect("link");
            std::fs::create_dir_all(dir.join("system")).expect("system");
            let mounts = "sysfs /sys sysfs rw 0 0\n/dev/sda2 / ext4 rw,relatime 0 0\n";
            write(&dir.join("mounts"), mounts);
            let root = Root {
                sys,
                mounts: dir.join("mounts"),
                dev: dir.join("dev"),
                system: dir.join("system"),
                is_block_device: |m| m.is_file(),
            };
            Fake { dir, root }
        }

        fn device(&self, name: &str) -> PathBuf {
            self.dir.join("dev").join(name)
        }

        fn mount(&self, line: &str) {
            let path = &self.root.mounts;
            let text = std::fs::read_to_string(path).expect("mounts") + line + "\n";
            std::fs::write(path, text).expect("mounts");
        }

        fn check(
            &self,
            device: &str,
            allow_fixed: bool,
            len: Option<u64>,
        ) -> Result<Disk, Refusal> {
            check_device(&self.root, &self.device(device), allow_fixed, len)
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn a_whole_unmounted_removable_disk_that_is_big_enough_passes() {
        let f = Fake::new("ok");
        let disk = f.check("sdz", false, Some(64 << 20)).expect("passes");
        assert_eq!(disk.name, "sdz");
        assert_eq!((disk.size, disk.removable), (64 << 20, true));
        assert_eq!((disk.vendor.as_str(), disk.model.as_str()), ("Acme", "Stick"));
        assert!(describe(&disk).ends_with(": Acme Stick, 64 MiB (67108864 bytes), removable"));
    }

    #[test]
    fn a_regular_file_is_not_a_block_device() {
        let f = Fake::new("regular");
        let root = Root { is_block_device: Root::host().is_block_device, ..f.root.clone() };
        let r = check_device(&root, &f.device("sdz"), false, None).expect_err("refused");
        assert_eq!(r, Refusal::NotBlockDevice { path: f.device("sdz") });
        assert!(r.to_string().ends_with(
            "is not a block device; give a whole disk such as /dev/sdb (lsblk lists them)"
        ));
        let missing = f.check("sdq", false, None).expect_err("refused");
        assert!(matches!(missing, Refusal::Missing { .. }), "{missing:?}");
    }

    #[test]
    fn a_device_linux_does_not_list_is_refused() {
        let f = Fake::new("unknown");
        write(&f.device("loopy"), "");
        let r = f.check("loopy", false, None).expect_err("refused");
        assert_eq!(r, Refusal::Unknown { path: f.device("loopy"), name: "loopy".into() });
    }

    #[test]
    fn a_partition_is_refused_with_its_disk_named() {
        let f = Fake::new("partition");
        let r = f.check("sdz1", false, None).expect_err("refused");
        assert_eq!(r, Refusal::Partition { path: f.device("sdz1"), disk: Some("sdz".into()) });
        assert!(r
            .to_string()
            .ends_with("sdz1 is a partition of sdz; give the whole disk, /dev/sdz"));
    }

    #[test]
    fn a_mounted_partition_is_refused_through_by_uuid_links_and_escapes() {
        let f = Fake::new("mounted");
        f.mount("/dev/disk/by-uuid/1234-ABCD /media/me/MY\\040STICK vfat rw 0 0");
        let r = f.check("sdz", false, None).expect_err("refused");
        assert_eq!(
            r,
            Refusal::Mounted {
                name: "sdz".into(),
                partition: "/dev/sdz1".into(),
                mount: "/media/me/MY STICK".into()
            }
        );
        assert_eq!(
            r.to_string(),
            "sdz is in use: /dev/sdz1 is mounted on /media/me/MY STICK; unmount it first \
             (umount /media/me/MY STICK)"
        );
    }

    #[test]
    fn a_device_stacked_on_a_partition_counts_as_the_disk() {
        let f = Fake::new("holders");
        // /dev/mapper/secret -> dm-0, which holds sdz2 (LUKS).
        write(&f.root.sys.join("block/sdz/sdz2/holders/dm-0/.keep"), "");
        std::fs::create_dir_all(f.root.dev.join("mapper")).expect("mapper");
        write(&f.device("dm-0"), "");
        symlink("../dm-0", f.root.dev.join("mapper/secret")).expect("link");
        f.mount("/dev/mapper/secret /home ext4 rw 0 0");
        let r = f.check("sdz", false, None).expect_err("refused");
        assert!(
            matches!(&r, Refusal::Mounted { partition, mount, .. } if partition == "/dev/dm-0" && mount == "/home"),
            "{r:?}"
        );
    }

    #[test]
    fn the_running_systems_disk_is_refused_by_its_root_mount() {
        let f = Fake::new("root-mount");
        let mounts = "/dev/sdz2 / ext4 rw 0 0\n/dev/sdz1 /boot/efi vfat rw 0 0\n";
        std::fs::write(&f.root.mounts, mounts).expect("mounts");
        let r = f.check("sdz", true, None).expect_err("refused");
        assert_eq!(r, Refusal::RunningSystem { name: "sdz".into(), partition: "/dev/sdz2".into() });
        assert_eq!(
            r.to_string(),
            "sdz holds the running system (/ is on /dev/sdz2); refusing to overwrite it"
        );
    }

    #[test]
    fn the_running_systems_disk_is_refused_by_the_device_of_slash() {
        let f = Fake::new("root-dev");
        // The root mount names /dev/root (no such node), as without an initramfs; the device of
        // `/` is found from its st_dev.
        std::fs::write(&f.root.mounts, "/dev/root / ext4 rw 0 0\n").expect("mounts");
        let dev = std::fs::metadata(&f.root.system).expect("stat").dev();
        let (major, minor) = (
            ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff),
            ((dev >> 12) & 0xffff_ff00) | (dev & 0xff),
        );
        std::fs::create_dir_all(f.root.sys.join("dev/block")).expect("dev/block");
        symlink("../../block/sdz/sdz2", f.root.sys.join(format!("dev/block/{major}:{minor}")))
            .expect("link");
        let r = f.check("sdz", true, None).expect_err("refused");
        assert_eq!(r, Refusal::RunningSystem { name: "sdz".into(), partition: "/dev/sdz2".into() });
    }

    #[test]
    fn a_fixed_disk_needs_allow_fixed() {
        let f = Fake::new("fixed");
        write(&f.root.sys.join("block/sdz/removable"), "0\n");
        let r = f.check("sdz", false, None).expect_err("refused");
        assert_eq!(r, Refusal::Fixed { name: "sdz".into() });
        assert!(r.to_string().contains("pass --allow-fixed"), "{r}");
        let disk = f.check("sdz", true, None).expect("allowed");
        assert!(!disk.removable);
        assert!(describe(&disk).ends_with("NOT marked removable"));
    }

    #[test]
    fn a_disk_smaller_than_the_image_is_refused() {
        let f = Fake::new("small");
        let r = f.check("sdz", false, Some((64 << 20) + 1)).expect_err("refused");
        assert_eq!(
            r,
            Refusal::TooSmall { name: "sdz".into(), size: 64 << 20, needed: (64 << 20) + 1 }
        );
        assert!(r
            .to_string()
            .starts_with("sdz holds 64 MiB (67108864 bytes) but the image is 64.0 MiB"));
    }

    #[test]
    fn confirmation_needs_the_device_name() {
        let f = Fake::new("confirm");
        let disk = f.check("sdz", false, None).expect("passes");
        let mut out = Vec::new();
        let image = Path::new("target/images/multikernel-bios.img");
        assert!(confirm(&disk, image, 1 << 20, &mut "sdz\n".as_bytes(), &mut out).expect("asks"));
        let shown = String::from_utf8(out).expect("text");
        assert!(shown.contains("Acme Stick, 64 MiB"), "{shown}");
        assert!(shown.contains("Type its name (sdz) to go on: "), "{shown}");
        for no in ["yes\n", "\n", "sdz1\n", ""] {
            assert!(!confirm(&disk, image, 1, &mut no.as_bytes(), &mut Vec::new()).expect("asks"));
        }
    }

    /// A test image that is not a whole number of blocks or sectors.
    fn image_bytes() -> Vec<u8> {
        (0..(2 * BLOCK + 12_345)).map(|i| (i * 7 + i / 4096) as u8).collect()
    }

    #[test]
    fn an_image_is_written_in_blocks_and_read_back() {
        let dir = scratch("write");
        let bytes = image_bytes();
        std::fs::write(dir.join("image"), &bytes).expect("image");
        // The "device" is larger than the image and full of something else.
        std::fs::write(dir.join("device"), vec![0xa5u8; 3 * BLOCK]).expect("device");
        let mut image = File::open(dir.join("image")).expect("image");
        let mut device =
            OpenOptions::new().read(true).write(true).open(dir.join("device")).expect("device");
        let bar = ProgressBar::hidden();
        let n = write_image(&mut image, &mut device, &bar).expect("writes");
        assert_eq!(n, bytes.len() as u64);
        assert_eq!(bar.position(), n);
        let on_device = std::fs::read(dir.join("device")).expect("device");
        assert_eq!(&on_device[..bytes.len()], &bytes[..]);
        assert!(on_device[bytes.len()..].iter().all(|&b| b == 0xa5), "nothing past the image");
        verify(&mut image, &mut device, n, &ProgressBar::hidden()).expect("reads back");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_read_back_mismatch_is_reported_with_its_offset() {
        let dir = scratch("mismatch");
        let bytes = image_bytes();
        std::fs::write(dir.join("image"), &bytes).expect("image");
        let mut bad = bytes.clone();
        let offset = BLOCK + 4_099;
        bad[offset] ^= 0x40;
        std::fs::write(dir.join("device"), &bad).expect("device");
        let mut image = File::open(dir.join("image")).expect("image");
        let mut device = File::open(dir.join("device")).expect("device");
        let len = bytes.len() as u64;
        let e = verify(&mut image, &mut device, len, &ProgressBar::hidden()).expect_err("differs");
        assert!(matches!(e, VerifyError::Mismatch { offset: o } if o == offset as u64), "{e:?}");
        assert!(e.to_string().starts_with("read-back mismatch at byte 0x401003 (4.0 MiB)"), "{e}");

        // A device that ends before the image.
        std::fs::write(dir.join("device"), &bytes[..BLOCK + 10]).expect("device");
        let mut device = File::open(dir.join("device")).expect("device");
        let e = verify(&mut image, &mut device, len, &ProgressBar::hidden()).expect_err("short");
        assert!(matches!(e, VerifyError::Short { at } if at == BLOCK as u64 + 10), "{e:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn mount_fields_are_unescaped() {
        assert_eq!(unescape("/media/a\\040b\\011c\\134d"), "/media/a b\tc\\d");
        assert_eq!(unescape("plain\\"), "plain\\");
        assert_eq!(unescape("\\09x"), "\\09x");
    }
}
