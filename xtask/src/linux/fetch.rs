//! Test material for Linux instances: Debian's cloud kernel (bzImage and config) and a static
//! busybox, fetched from the Debian archive once and cached.
//!
//! Recipe (`shared/research/linux-instance.md`, "Test material from Debian bookworm" and "Test
//! recipe"); nothing is installed on the host:
//! 1. resolve the kernel package from the metapackage: `apt-cache show --no-all-versions
//!    linux-image-cloud-amd64` has `Depends: linux-image-<abi>-cloud-amd64 (= <version>)` (the
//!    dependency `apt-cache depends` lists, with its version; one apt-cache run instead of two;
//!    `apt-cache policy` gives the version if the dependency is not pinned);
//! 2. if that version is cached complete in `<cache root>/<abi>_<version>/`, return it (no
//!    network, no apt-get);
//! 3. otherwise `apt-get download <kernel>=<version> busybox-static` into a temporary folder
//!    inside the cache root, extract only `./boot` from the kernel package and `./bin/busybox`
//!    from busybox-static (`dpkg-deb --fsys-tarfile X.deb | tar -x`: the 91 MB of modules are
//!    never written), check the files, move them into place and write the stamp last.
//!
//! Cache layout, per kernel package version:
//! ```text
//! <cache root>/6.1.0-57-cloud-amd64_6.1.192-3/vmlinuz     the bzImage
//!                                            /config      the kernel's .config
//!                                            /busybox     busybox-static's /bin/busybox
//!                                            /material.json  the stamp, written last
//! <cache root>/.lock                                      held while looking or fetching
//! ```
//! A folder without a readable stamp, or whose files' sizes disagree with it, is a fetch that
//! did not finish: it is fetched again.
//!
//! What is checked before anything is cached: the kernel with the manager's own bzImage parser
//! ([`platform::bzimage::parse`]: boot sector and `HdrS` signatures, protocol 2.12 or later,
//! the 64-bit entry, relocatable), and busybox must be an ELF file (ELF gABI, "ELF
//! Identification").
//!
//! Errors: when the material cannot be had here (not Debian/Ubuntu, no package lists and not
//! root, archive unreachable) the error is an [`Unavailable`] whose message is one line saying
//! what to run; tests turn it into an explicit SKIP ([`is_unavailable`]). Anything else (a
//! corrupt download, a wrong file) is a real failure. Every external command runs with a time
//! bound and is named in the error.

use std::fmt;
use std::fs::{self, File, TryLockError};
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};

/// The metapackage that always depends on Debian's current cloud kernel.
pub const KERNEL_METAPACKAGE: &str = "linux-image-cloud-amd64";
pub const BUSYBOX_PACKAGE: &str = "busybox-static";
/// The stamp that marks a finished fetch; written last.
const STAMP: &str = "material.json";
const STAMP_FORMAT: u32 = 1;

const APT_CACHE_TIMEOUT_S: u64 = 60;
const APT_UPDATE_TIMEOUT_S: u64 = 600;
/// About 28 MB in all (the kernel package is 26.7 MB).
const APT_DOWNLOAD_TIMEOUT_S: u64 = 900;
/// Decompressing the kernel package's data.tar to reach `./boot` (a few seconds here).
const EXTRACT_TIMEOUT_S: u64 = 300;
const DPKG_FIELD_TIMEOUT_S: u64 = 60;
/// Longer than a whole fetch, so a second process waits for the first one to finish.
const LOCK_TIMEOUT_S: u64 = 1800;
const POLL_INTERVAL_MS: u64 = 50;

// ELF gABI, "ELF Identification": EI_MAG0..EI_MAG3.
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";

/// The fetched material, all files inside one cache folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Material {
    /// The kernel release, as `uname -r` will say: `6.1.0-57-cloud-amd64`.
    pub version: String,
    /// `linux-image-6.1.0-57-cloud-amd64`.
    pub kernel_package: String,
    /// The Debian version of that package: `6.1.192-3`.
    pub kernel_package_version: String,
    /// `1:1.35.0-4+deb12u1+b1`.
    pub busybox_version: String,
    pub bzimage: PathBuf,
    pub busybox: PathBuf,
    /// The kernel's `.config`, when the package had one (Debian's always do).
    pub config: Option<PathBuf>,
}

/// The material cannot be fetched on this machine; the message is the one thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable(pub String);

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unavailable {}

/// Whether `err` means "cannot be had here" (skip) rather than "something is broken" (fail).
pub fn is_unavailable(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<Unavailable>())
}

/// What is wrong with a fetched file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Defect {
    /// Not a bzImage the manager can boot (the manager's own check).
    Kernel(platform::bzimage::BzImageError),
    /// Not starting with 0x7F 'E' 'L' 'F'.
    NotElf { found: [u8; 4] },
}

impl fmt::Display for Defect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Kernel(e) => e.fmt(f),
            Self::NotElf { found } => {
                write!(f, "starts with {found:02x?}, not 0x7f 'E' 'L' 'F': not an ELF file")
            }
        }
    }
}

/// A fetched or cached file that failed its check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadFile {
    pub path: PathBuf,
    pub defect: Defect,
}

impl fmt::Display for BadFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.defect)
    }
}

impl std::error::Error for BadFile {}

/// Checks a kernel with the manager's own parser.
pub fn check_bzimage(image: &[u8]) -> Result<platform::bzimage::Kernel, Defect> {
    platform::bzimage::parse(image).map_err(Defect::Kernel)
}

/// Checks that `bytes` start like an ELF file.
pub fn check_elf(bytes: &[u8]) -> Result<(), Defect> {
    let mut found = [0; 4];
    let n = bytes.len().min(4);
    found[..n].copy_from_slice(&bytes[..n]);
    if &found != ELF_MAGIC {
        return Err(Defect::NotElf { found });
    }
    Ok(())
}

/// Reads at most `limit` bytes from the start of `path`.
fn read_head(path: &Path, limit: usize) -> anyhow::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(limit);
    File::open(path)
        .and_then(|f| f.take(limit as u64).read_to_end(&mut head))
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(head)
}

fn check_files(bzimage: &Path, busybox: &Path) -> anyhow::Result<()> {
    let bad = |path: &Path, defect| BadFile { path: path.to_owned(), defect };
    let kernel =
        std::fs::read(bzimage).with_context(|| format!("reading {}", bzimage.display()))?;
    check_bzimage(&kernel).map_err(|d| bad(bzimage, d))?;
    check_elf(&read_head(busybox, ELF_MAGIC.len())?).map_err(|d| bad(busybox, d))?;
    Ok(())
}

/// Debian's cloud kernel and busybox-static under `cache_root` (callers pass `target/linux`),
/// fetched first if they are not cached complete there. See the module doc.
pub fn material(cache_root: &Path) -> anyhow::Result<Material> {
    fs::create_dir_all(cache_root)
        .with_context(|| format!("creating the cache folder {}", cache_root.display()))?;
    let _lock = CacheLock::acquire(cache_root)?;
    let mut updated = false;
    loop {
        let kernel = match resolve_kernel()? {
            Resolution::Found(k) => k,
            Resolution::NoApt => {
                if let Some(m) = newest_cached(cache_root)? {
                    return Ok(m);
                }
                return Err(Unavailable(format!(
                    "apt-cache not found: Linux test material comes from the Debian archive; run on Debian/Ubuntu (or put a cache from one in {})",
                    cache_root.display()
                ))
                .into());
            }
            Resolution::UnknownPackage if updated => {
                return Err(Unavailable(format!(
                    "apt knows no {KERNEL_METAPACKAGE} even after `apt-get update`: add Debian's main archive (amd64) to the apt sources"
                ))
                .into());
            }
            Resolution::UnknownPackage => {
                if let Some(m) = newest_cached(cache_root)? {
                    eprintln!(
                        "linux material: apt has no package lists; using the cached {} {}",
                        m.kernel_package, m.kernel_package_version
                    );
                    return Ok(m);
                }
                if !is_root() {
                    return Err(Unavailable(format!(
                        "apt knows no {KERNEL_METAPACKAGE} (no package lists yet): run `sudo apt-get update`, then retry"
                    ))
                    .into());
                }
                apt_get_update()?;
                updated = true;
                continue;
            }
        };
        let dir = cache_root.join(kernel.cache_dir_name()?);
        if let Some(m) = cached(&dir)? {
            return Ok(m);
        }
        match fetch(cache_root, &dir, &kernel) {
            Ok(m) => return Ok(m),
            // Stale lists name a version the archive no longer has: refresh them once.
            Err(FetchError::Download(why)) if is_root() && !updated => {
                eprintln!("linux material: {why}; running apt-get update and retrying");
                apt_get_update()?;
                updated = true;
            }
            Err(FetchError::Download(why)) => {
                let sudo = if is_root() { "" } else { "sudo " };
                return Err(Unavailable(format!(
                    "{why}: check that the Debian archive is reachable, run `{sudo}apt-get update`, then retry"
                ))
                .into());
            }
            Err(FetchError::Other(e)) => return Err(e),
        }
    }
}

/// The kernel package the metapackage resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KernelPackage {
    /// `linux-image-6.1.0-57-cloud-amd64`.
    name: String,
    /// `6.1.0-57-cloud-amd64`.
    release: String,
    /// `6.1.192-3`.
    version: String,
}

impl KernelPackage {
    /// `6.1.0-57-cloud-amd64_6.1.192-3` (an epoch's `:` written `%3a`, as apt names .debs).
    fn cache_dir_name(&self) -> anyhow::Result<String> {
        let name = format!("{}_{}", self.release, self.version.replace(':', "%3a"));
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || "._+~-%".contains(c)) {
            bail!("unexpected characters in the kernel package version {name:?}");
        }
        Ok(name)
    }
}

enum Resolution {
    Found(KernelPackage),
    /// apt-cache is not installed.
    NoApt,
    /// apt-cache runs but does not know the metapackage (no package lists yet).
    UnknownPackage,
}

/// The kernel package and, when pinned, its version from the metapackage's `Depends` field in
/// `apt-cache show --no-all-versions linux-image-cloud-amd64`:
/// `Depends: linux-image-6.1.0-57-cloud-amd64 (= 6.1.192-3)`. (The same dependency as the
/// `Depends:` line of `apt-cache depends`, with the version the metapackage requires.)
fn kernel_from_show(output: &str) -> Option<(&str, Option<&str>)> {
    let field = output.lines().find_map(|l| l.strip_prefix("Depends:"))?;
    field.split([',', '|']).map(str::trim).find_map(|dep| {
        let (name, rest) = dep.split_once(' ').unwrap_or((dep, ""));
        let is_kernel = name
            .strip_prefix("linux-image-")
            .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()));
        let pinned = rest
            .trim()
            .strip_prefix("(=")
            .and_then(|v| v.strip_suffix(')'))
            .map(str::trim)
            .filter(|v| !v.is_empty());
        is_kernel.then_some((name, pinned))
    })
}

/// The candidate version from `apt-cache policy PKG` (`  Candidate: 6.1.192-3`).
fn candidate_from_policy(output: &str) -> Option<&str> {
    output
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(str::trim)
        .find(|v| !v.is_empty() && *v != "(none)")
}

fn apt_cache(args: &[&str]) -> anyhow::Result<Finished> {
    let mut cmd = Command::new("apt-cache");
    cmd.args(args).env("LC_ALL", "C");
    run(&mut cmd, Duration::from_secs(APT_CACHE_TIMEOUT_S))
}

fn resolve_kernel() -> anyhow::Result<Resolution> {
    if !in_path("apt-cache") {
        return Ok(Resolution::NoApt);
    }
    let show = apt_cache(&["show", "--no-all-versions", KERNEL_METAPACKAGE])?;
    let show_text = String::from_utf8_lossy(&show.stdout);
    let Some((name, pinned)) = kernel_from_show(&show_text).filter(|_| show.status.success())
    else {
        // Exit status 100 and "E: No packages found" when the lists do not have it; any
        // other complaint is a problem of its own.
        let complaint = last_error_line(&show.stderr);
        if show.status.success() || complaint.contains("No packages found") {
            return Ok(Resolution::UnknownPackage);
        }
        bail!("`apt-cache show --no-all-versions {KERNEL_METAPACKAGE}` failed: {complaint}");
    };
    let version = match pinned {
        Some(v) => v.to_owned(),
        None => {
            let policy = apt_cache(&["policy", name])?;
            let policy_text = String::from_utf8_lossy(&policy.stdout);
            let Some(v) = candidate_from_policy(&policy_text) else {
                return Ok(Resolution::UnknownPackage);
            };
            v.to_owned()
        }
    };
    let release = name.strip_prefix("linux-image-").unwrap_or(name);
    Ok(Resolution::Found(KernelPackage {
        name: name.to_owned(),
        release: release.to_owned(),
        version,
    }))
}

fn apt_get_update() -> anyhow::Result<()> {
    eprintln!("linux material: apt-get update");
    let mut cmd = Command::new("apt-get");
    cmd.arg("update").env("LC_ALL", "C").env("DEBIAN_FRONTEND", "noninteractive");
    let done = run(&mut cmd, Duration::from_secs(APT_UPDATE_TIMEOUT_S)).map_err(|e| {
        Unavailable(format!("apt-get update failed ({e:#}): is the Debian archive reachable?"))
    })?;
    if !done.status.success() {
        return Err(Unavailable(format!(
            "`apt-get update` failed ({}): is the Debian archive reachable?",
            last_error_line(&done.stderr)
        ))
        .into());
    }
    Ok(())
}

/// What the cache folder's stamp records (the sizes catch a half-copied file).
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct Stamp {
    format: u32,
    kernel_package: String,
    kernel_package_version: String,
    release: String,
    busybox_version: String,
    vmlinuz_bytes: u64,
    config_bytes: Option<u64>,
    busybox_bytes: u64,
}

const VMLINUZ: &str = "vmlinuz";
const CONFIG: &str = "config";
const BUSYBOX: &str = "busybox";

fn file_len(path: &Path) -> Option<u64> {
    fs::metadata(path).ok().filter(|m| m.is_file()).map(|m| m.len())
}

/// The material cached complete in `dir`, or `None` when `dir` has no usable stamp or a file
/// disagrees with it. A file that is there, whole, and fails its check is an error.
fn cached(dir: &Path) -> anyhow::Result<Option<Material>> {
    let stamp_path = dir.join(STAMP);
    let text = match fs::read_to_string(&stamp_path) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", stamp_path.display())),
    };
    let Ok(stamp) = serde_json::from_str::<Stamp>(&text) else {
        return Ok(None);
    };
    let (bzimage, busybox, config) = (dir.join(VMLINUZ), dir.join(BUSYBOX), dir.join(CONFIG));
    let complete = stamp.format == STAMP_FORMAT
        && file_len(&bzimage) == Some(stamp.vmlinuz_bytes)
        && file_len(&busybox) == Some(stamp.busybox_bytes)
        && stamp.config_bytes.is_none_or(|n| file_len(&config) == Some(n));
    if !complete {
        return Ok(None);
    }
    check_files(&bzimage, &busybox)?;
    Ok(Some(Material {
        version: stamp.release,
        kernel_package: stamp.kernel_package,
        kernel_package_version: stamp.kernel_package_version,
        busybox_version: stamp.busybox_version,
        bzimage,
        busybox,
        config: stamp.config_bytes.map(|_| config),
    }))
}

/// The most recently fetched complete material under `cache_root`, for when apt cannot say
/// which version is current.
fn newest_cached(cache_root: &Path) -> anyhow::Result<Option<Material>> {
    let entries = match fs::read_dir(cache_root) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("listing {}", cache_root.display())),
    };
    let mut best = None;
    for entry in entries {
        let dir = entry.with_context(|| format!("listing {}", cache_root.display()))?.path();
        let Ok(modified) = fs::metadata(dir.join(STAMP)).and_then(|m| m.modified()) else {
            continue;
        };
        if best.as_ref().is_some_and(|(t, _)| *t >= modified) {
            continue;
        }
        if let Some(m) = cached(&dir)? {
            best = Some((modified, m));
        }
    }
    Ok(best.map(|(_, m)| m))
}

/// Why a fetch failed: the download (the archive or the lists; may be retried after `apt-get
/// update`), or anything else.
enum FetchError {
    Download(String),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for FetchError {
    fn from(e: anyhow::Error) -> Self {
        Self::Other(e)
    }
}

/// A folder removed (with what it holds) when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn create(path: PathBuf) -> anyhow::Result<Self> {
        if path.exists() {
            fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Best effort: a leftover is removed by the next fetch from this process id anyway.
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The one `<package>_*.deb` apt-get downloaded into `dir`.
fn find_deb(dir: &Path, package: &str) -> anyhow::Result<PathBuf> {
    let prefix = format!("{package}_");
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry.with_context(|| format!("listing {}", dir.display()))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            found.push(path);
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        n => bail!(
            "expected one {package}_*.deb in {} after apt-get download, found {n}",
            dir.display()
        ),
    }
}

/// A control field of a .deb (`dpkg-deb -f X.deb Version`).
fn deb_field(deb: &Path, field: &str) -> anyhow::Result<String> {
    let mut cmd = Command::new("dpkg-deb");
    cmd.arg("-f").arg(deb).arg(field).env("LC_ALL", "C");
    let done = run_ok(&mut cmd, Duration::from_secs(DPKG_FIELD_TIMEOUT_S))?;
    let value = String::from_utf8_lossy(&done.stdout).trim().to_owned();
    if value.is_empty() {
        bail!("{} has no {field} field", deb.display());
    }
    Ok(value)
}

/// `dpkg-deb --fsys-tarfile DEB | tar -x -f - -C INTO MEMBER`: only `member` is written.
fn extract(deb: &Path, into: &Path, member: &str) -> anyhow::Result<()> {
    fs::create_dir_all(into).with_context(|| format!("creating {}", into.display()))?;
    let deadline = Instant::now() + Duration::from_secs(EXTRACT_TIMEOUT_S);
    let mut dpkg = Command::new("dpkg-deb");
    dpkg.arg("--fsys-tarfile").arg(deb).env("LC_ALL", "C");
    let mut dpkg = Running::start(&mut dpkg, false)?;
    let tar_input = dpkg.child.stdout.take().context("dpkg-deb's stdout")?;
    let mut tar = Command::new("tar");
    tar.args(["-x", "-f", "-", "-C"]).arg(into).arg(member).stdin(tar_input).env("LC_ALL", "C");
    let tar = Running::start(&mut tar, true)?;
    // tar first: it ends when dpkg-deb closes the pipe (or fails, which ends dpkg-deb too).
    let tar = tar.wait(deadline)?;
    let dpkg = dpkg.wait(deadline)?;
    for done in [&dpkg, &tar] {
        if !done.status.success() {
            bail!("`{}` failed ({}): {}", done.shown, done.status, last_error_line(&done.stderr));
        }
    }
    Ok(())
}

/// Downloads, extracts, checks and caches the material in `dir` (see the module doc).
fn fetch(cache_root: &Path, dir: &Path, kernel: &KernelPackage) -> Result<Material, FetchError> {
    let missing: Vec<&str> =
        ["apt-get", "dpkg-deb", "tar"].into_iter().filter(|t| !in_path(t)).collect();
    if !missing.is_empty() {
        return Err(FetchError::Other(
            Unavailable(format!(
                "{} not found: fetching Linux test material needs Debian's apt-get, dpkg-deb and tar (apt-get install -y apt dpkg tar)",
                missing.join(", ")
            ))
            .into(),
        ));
    }
    let tmp = TempDir::create(cache_root.join(format!(".fetch-{}", std::process::id())))?;
    eprintln!(
        "linux material: downloading {}={} and {BUSYBOX_PACKAGE} (about 28 MB)",
        kernel.name, kernel.version
    );
    let mut download = Command::new("apt-get");
    download
        .arg("download")
        .arg(format!("{}={}", kernel.name, kernel.version))
        .arg(BUSYBOX_PACKAGE)
        .current_dir(&tmp.0)
        .env("LC_ALL", "C")
        .env("DEBIAN_FRONTEND", "noninteractive");
    // As root apt warns that the download is unsandboxed (the folder is not _apt's): harmless,
    // so stderr alone means nothing; the exit status and the files decide.
    let shown = shown(&download);
    match run(&mut download, Duration::from_secs(APT_DOWNLOAD_TIMEOUT_S)) {
        Ok(done) if done.status.success() => {}
        Ok(done) => {
            return Err(FetchError::Download(format!(
                "`{shown}` failed ({})",
                last_error_line(&done.stderr)
            )))
        }
        Err(e) => return Err(FetchError::Download(format!("{e:#}"))),
    }
    let kernel_deb = find_deb(&tmp.0, &kernel.name)?;
    let busybox_deb = find_deb(&tmp.0, BUSYBOX_PACKAGE)?;
    let got = deb_field(&kernel_deb, "Version")?;
    if got != kernel.version {
        return Err(anyhow!(
            "{} has version {got}, but {} was asked for",
            kernel_deb.display(),
            kernel.version
        )
        .into());
    }
    let busybox_version = deb_field(&busybox_deb, "Version")?;

    let kernel_tree = tmp.0.join("kernel");
    let busybox_tree = tmp.0.join("busybox");
    extract(&kernel_deb, &kernel_tree, "./boot")?;
    extract(&busybox_deb, &busybox_tree, "./bin/busybox")?;
    let vmlinuz = kernel_tree.join("boot").join(format!("vmlinuz-{}", kernel.release));
    let config = kernel_tree.join("boot").join(format!("config-{}", kernel.release));
    let busybox = busybox_tree.join("bin/busybox");
    let Some(vmlinuz_bytes) = file_len(&vmlinuz) else {
        return Err(anyhow!("{} has no {}", kernel_deb.display(), vmlinuz.display()).into());
    };
    let Some(busybox_bytes) = file_len(&busybox) else {
        return Err(anyhow!("{} has no /bin/busybox", busybox_deb.display()).into());
    };
    check_files(&vmlinuz, &busybox)?;
    let config_bytes = file_len(&config);

    // Into place: whatever an unfinished fetch left goes first; the stamp goes last.
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut moves = vec![(vmlinuz, dir.join(VMLINUZ)), (busybox, dir.join(BUSYBOX))];
    if config_bytes.is_some() {
        moves.push((config, dir.join(CONFIG)));
    }
    for (from, to) in &moves {
        fs::rename(from, to)
            .with_context(|| format!("moving {} to {}", from.display(), to.display()))?;
    }
    let stamp = Stamp {
        format: STAMP_FORMAT,
        kernel_package: kernel.name.clone(),
        kernel_package_version: kernel.version.clone(),
        release: kernel.release.clone(),
        busybox_version,
        vmlinuz_bytes,
        config_bytes,
        busybox_bytes,
    };
    let json = serde_json::to_string_pretty(&stamp).context("serialising the cache stamp")?;
    let partial = dir.join(format!("{STAMP}.partial"));
    fs::write(&partial, json + "\n").with_context(|| format!("writing {}", partial.display()))?;
    fs::rename(&partial, dir.join(STAMP))
        .with_context(|| format!("moving {} into place", partial.display()))?;
    Ok(cached(dir)?
        .with_context(|| format!("{} is not complete after the fetch", dir.display()))?)
}

/// An exclusive lock on `<cache root>/.lock`, released when dropped (the file is closed).
struct CacheLock(#[allow(dead_code)] File);

impl CacheLock {
    fn acquire(cache_root: &Path) -> anyhow::Result<Self> {
        let path = cache_root.join(".lock");
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let deadline = Instant::now() + Duration::from_secs(LOCK_TIMEOUT_S);
        let mut told = false;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Self(file)),
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    if !told {
                        eprintln!("linux material: waiting for another fetch ({})", path.display());
                        told = true;
                    }
                    std::thread::sleep(Duration::from_millis(10 * POLL_INTERVAL_MS));
                }
                Err(TryLockError::WouldBlock) => {
                    bail!("{} still locked after {LOCK_TIMEOUT_S} s", path.display())
                }
                Err(TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("locking {}", path.display()))
                }
            }
        }
    }
}

/// Whether the effective user is root (`/proc/self/status`, second `Uid:` field).
fn is_root() -> bool {
    fs::read_to_string("/proc/self/status").ok().is_some_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
            .unwrap_or(false)
    })
}

/// Whether an executable named `tool` is on `PATH`.
fn in_path(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            fs::metadata(dir.join(tool))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// The last line of a command's stderr that starts with `E:` (apt's errors), else its last
/// non-empty line: the one line worth quoting.
fn last_error_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    lines
        .iter()
        .rev()
        .find(|l| l.starts_with("E:"))
        .or(lines.last())
        .map_or_else(|| "no message".to_owned(), |l| (*l).to_owned())
}

/// A command line as one would type it, for messages.
fn shown(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A finished command: what it printed and how it ended.
struct Finished {
    shown: String,
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// A started command whose output threads drain; killed if dropped before it ends.
struct Running {
    shown: String,
    child: Child,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

fn drain(mut from: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        // A read error just ends the capture: the exit status tells whether it worked.
        let _ = from.read_to_end(&mut bytes);
        bytes
    })
}

impl Running {
    /// Starts `cmd` with stdout and stderr piped; stdout is drained only if `drain_stdout`
    /// (otherwise the caller takes it, e.g. to feed another command).
    fn start(cmd: &mut Command, drain_stdout: bool) -> anyhow::Result<Self> {
        let shown = shown(cmd);
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting `{shown}`"))?;
        let stdout = if drain_stdout { child.stdout.take().map(drain) } else { None };
        let stderr = child.stderr.take().map(drain);
        Ok(Self { shown, child, stdout, stderr })
    }

    /// Waits until the command ends or `deadline` passes (then kills it: an error).
    fn wait(mut self, deadline: Instant) -> anyhow::Result<Finished> {
        let status = loop {
            if let Some(status) =
                self.child.try_wait().with_context(|| format!("waiting for `{}`", self.shown))?
            {
                break status;
            }
            if Instant::now() >= deadline {
                bail!("`{}` did not finish in time; it was killed", self.shown);
            }
            std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
        };
        let join = |h: Option<JoinHandle<Vec<u8>>>| h.map(|h| h.join().unwrap_or_default());
        Ok(Finished {
            shown: self.shown.clone(),
            status,
            stdout: join(self.stdout.take()).unwrap_or_default(),
            stderr: join(self.stderr.take()).unwrap_or_default(),
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Only does something if the command is still running (timeout or error path).
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `cmd` (stdin closed) for at most `timeout`; returns its output whatever its status.
fn run(cmd: &mut Command, timeout: Duration) -> anyhow::Result<Finished> {
    let deadline = Instant::now() + timeout;
    cmd.stdin(Stdio::null());
    let running = Running::start(cmd, true)?;
    let shown = running.shown.clone();
    running
        .wait(deadline)
        .with_context(|| format!("running `{shown}` (limit {} s)", timeout.as_secs()))
}

/// [`run`], and a non-zero exit status is an error quoting stderr's last line.
fn run_ok(cmd: &mut Command, timeout: Duration) -> anyhow::Result<Finished> {
    let done = run(cmd, timeout)?;
    if !done.status.success() {
        bail!("`{}` failed ({}): {}", done.shown, done.status, last_error_line(&done.stderr));
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bzimage_checks_name_what_is_wrong() {
        let e = check_bzimage(&[0; 0x300]).unwrap_err();
        assert!(e.to_string().contains("no boot sector signature 0xAA55"), "{e}");
        assert_eq!(check_elf(b"\x7fELF\x02\x01"), Ok(()));
        assert_eq!(check_elf(b"#!/b"), Err(Defect::NotElf { found: *b"#!/b" }));
        assert_eq!(check_elf(b"\x7fE"), Err(Defect::NotElf { found: [0x7f, b'E', 0, 0] }));
        let bad = BadFile { path: "/c/busybox".into(), defect: Defect::NotElf { found: *b"#!/b" } };
        assert!(bad.to_string().starts_with("/c/busybox: "), "{bad}");
    }

    #[test]
    fn resolves_the_kernel_package_from_apt_output() {
        let show = "Package: linux-image-cloud-amd64\nSource: linux-signed-amd64 (6.1.192+3)\nVersion: 6.1.192-3\nDepends: linux-image-6.1.0-57-cloud-amd64 (= 6.1.192-3)\nDescription: x\n";
        assert_eq!(
            kernel_from_show(show),
            Some(("linux-image-6.1.0-57-cloud-amd64", Some("6.1.192-3")))
        );
        let unpinned = "Version: 6.12.95-1\nDepends: initramfs-tools | linux-initramfs-tool, linux-image-6.12.95+deb12-cloud-amd64\n";
        assert_eq!(
            kernel_from_show(unpinned),
            Some(("linux-image-6.12.95+deb12-cloud-amd64", None))
        );
        assert_eq!(kernel_from_show(""), None);
        assert_eq!(kernel_from_show("Depends: linux-image-cloud-amd64 (>= 1)\n"), None);
        assert_eq!(kernel_from_show("Pre-Depends: linux-image-6.1.0-57-amd64\n"), None);

        let policy = "linux-image-6.1.0-57-cloud-amd64:\n  Installed: (none)\n  Candidate: 6.1.192-3\n  Version table:\n";
        assert_eq!(candidate_from_policy(policy), Some("6.1.192-3"));
        assert_eq!(candidate_from_policy("x:\n  Installed: (none)\n  Candidate: (none)\n"), None);

        let k = KernelPackage {
            name: "linux-image-6.1.0-57-cloud-amd64".into(),
            release: "6.1.0-57-cloud-amd64".into(),
            version: "1:6.1.192-3".into(),
        };
        assert_eq!(k.cache_dir_name().unwrap(), "6.1.0-57-cloud-amd64_1%3a6.1.192-3");
        let evil = KernelPackage { version: "../x".into(), ..k };
        assert!(evil.cache_dir_name().is_err());
    }

    #[test]
    fn quotes_apts_error_line() {
        let stderr = b"W: Download is performed unsandboxed as root\nE: Failed to fetch http://x 404\nN: more\n";
        assert_eq!(last_error_line(stderr), "E: Failed to fetch http://x 404");
        assert_eq!(
            last_error_line(b"tar: ./boot: Not found in archive\n"),
            "tar: ./boot: Not found in archive"
        );
        assert_eq!(last_error_line(b""), "no message");
    }

    /// A folder under the system temp folder for one test, removed when dropped.
    fn scratch(name: &str) -> TempDir {
        TempDir::create(
            std::env::temp_dir().join(format!("mk-linux-{name}-{}", std::process::id())),
        )
        .unwrap()
    }

    fn write_cache(dir: &Path, stamp: &Stamp) {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join(VMLINUZ), platform::bzimage::header_only_image(0x100_0000, 0x1000))
            .unwrap();
        fs::write(dir.join(BUSYBOX), b"\x7fELF busybox").unwrap();
        fs::write(dir.join(CONFIG), b"CONFIG_X=y\n").unwrap();
        fs::write(dir.join(STAMP), serde_json::to_string(stamp).unwrap()).unwrap();
    }

    fn stamp() -> Stamp {
        Stamp {
            format: STAMP_FORMAT,
            kernel_package: "linux-image-6.1.0-57-cloud-amd64".into(),
            kernel_package_version: "6.1.192-3".into(),
            release: "6.1.0-57-cloud-amd64".into(),
            busybox_version: "1:1.35.0-4+deb12u1+b1".into(),
            vmlinuz_bytes: 0x1800,
            config_bytes: Some(11),
            busybox_bytes: 12,
        }
    }

    #[test]
    fn a_cache_counts_only_with_its_stamp_and_whole_files() {
        let root = scratch("cache");
        let dir = root.0.join("6.1.0-57-cloud-amd64_6.1.192-3");
        assert_eq!(cached(&dir).unwrap(), None, "nothing there");

        write_cache(&dir, &stamp());
        let m = cached(&dir).unwrap().expect("complete");
        assert_eq!(m.version, "6.1.0-57-cloud-amd64");
        assert_eq!(m.kernel_package_version, "6.1.192-3");
        assert_eq!((m.bzimage, m.busybox), (dir.join(VMLINUZ), dir.join(BUSYBOX)));
        assert_eq!(m.config, Some(dir.join(CONFIG)));
        assert_eq!(newest_cached(&root.0).unwrap().map(|m| m.version), Some(m.version));

        // The files without the stamp: a fetch that did not finish.
        fs::remove_file(dir.join(STAMP)).unwrap();
        assert_eq!(cached(&dir).unwrap(), None);
        assert_eq!(newest_cached(&root.0).unwrap(), None);
        // A truncated file.
        write_cache(&dir, &stamp());
        fs::write(
            dir.join(VMLINUZ),
            &platform::bzimage::header_only_image(0x100_0000, 0x1000)[..0x300],
        )
        .unwrap();
        assert_eq!(cached(&dir).unwrap(), None);
        // A stamp from another format.
        write_cache(&dir, &Stamp { format: STAMP_FORMAT + 1, ..stamp() });
        assert_eq!(cached(&dir).unwrap(), None);
        // Whole but wrong: an error naming the file.
        write_cache(&dir, &stamp());
        fs::write(dir.join(BUSYBOX), b"#!/bin/sh\nxx").unwrap();
        let err = cached(&dir).unwrap_err();
        let bad = err.downcast_ref::<BadFile>().expect("BadFile");
        assert_eq!(bad.path, dir.join(BUSYBOX));
        assert!(!is_unavailable(&err));
    }

    #[test]
    fn commands_are_bounded_and_named() {
        let mut sleep = Command::new("sleep");
        sleep.arg("5");
        let started = Instant::now();
        let err = run(&mut sleep, Duration::from_millis(200)).err().expect("timeout");
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(format!("{err:#}").contains("`sleep 5`"), "{err:#}");

        let mut fail = Command::new("sh");
        fail.args(["-c", "echo oops >&2; exit 3"]);
        let err = run_ok(&mut fail, Duration::from_secs(10)).err().expect("failure");
        assert!(format!("{err:#}").contains("oops"), "{err:#}");
    }

    /// Manual check against the real archive (about 28 MB the first time):
    /// `cargo test -p xtask -- --ignored fetches_debian_material --nocapture`; the cache is
    /// `target/linux`, or `$MK_LINUX_CACHE` when set.
    #[test]
    #[ignore = "downloads from the Debian archive"]
    fn fetches_debian_material() {
        let root = std::env::var_os("MK_LINUX_CACHE").map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/linux"),
            PathBuf::from,
        );
        let started = Instant::now();
        let m = match material(&root) {
            Ok(m) => m,
            Err(e) if is_unavailable(&e) => {
                println!("SKIP fetches_debian_material: {e}");
                return;
            }
            Err(e) => panic!("{e:#}"),
        };
        println!("first call: {:.2} s\n{m:#?}", started.elapsed().as_secs_f64());
        for path in [Some(&m.bzimage), Some(&m.busybox), m.config.as_ref()].into_iter().flatten() {
            println!("{:>10} B  {}", fs::metadata(path).unwrap().len(), path.display());
        }
        let header = check_bzimage(&fs::read(&m.bzimage).unwrap()).unwrap();
        println!("boot protocol {:#06x}, xloadflags {:#06x}", header.version, header.xloadflags);
        let again = Instant::now();
        assert_eq!(material(&root).unwrap(), m);
        println!("second call (cached): {:.3} s", again.elapsed().as_secs_f64());
    }
}
