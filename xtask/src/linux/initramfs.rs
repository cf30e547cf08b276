//! Initramfs archives for Linux instances: a gzip-compressed newc cpio built in memory.
//!
//! Spec: Linux `Documentation/driver-api/early-userspace/buffer-format.rst` ("initramfs buffer
//! format"): a cpio archive in the SVR4 "newc" format (magic `070701`), each entry a 110-byte
//! header of ASCII-hex fields, the NUL-terminated name padded to a multiple of 4 bytes, the body
//! padded to a multiple of 4 bytes, and a closing entry named `TRAILER!!!`; the whole may be
//! gzip-compressed. A symlink's body is its target; a device node's numbers are in
//! `c_rdevmajor`/`c_rdevminor`. The kernel's reader is `init/initramfs.c`.
//!
//! Design:
//! - The newc records are written by the `cpio` crate (`cpio::newc::Builder`, which covers
//!   regular files, directories, symlinks and device nodes); this module decides the metadata
//!   and checks every entry first, because the crate checks nothing (a NUL in a name or a name
//!   longer than the kernel's `PATH_MAX` would be written as is and silently dropped by Linux).
//! - The archive is reproducible: inode numbers are the entry's position (from 1), mtime, uid
//!   and gid are 0, and the gzip header carries no time stamp or file name. The same entries
//!   always give the same bytes.
//! - Names are stored relative to the archive root (`bin/busybox`), as `gen_init_cpio` does: a
//!   leading `/` is dropped.
//!
//! # Invariants
//! A successful [`build`] holds exactly the given entries, in order, then `TRAILER!!!`; every
//! name is non-empty, NUL-free, without `.`/`..`/empty components, at most [`NAME_MAX_BYTES`]
//! bytes, and unique; no entry comes before a directory that contains it and is listed later.

use std::collections::HashMap;
use std::fmt;
use std::io::Write;

use anyhow::Context;
use cpio::newc::{self, ModeFileType};
use flate2::write::GzEncoder;
use flate2::{Compression, GzBuilder};

/// Longest name or symlink target, in bytes without the NUL: Linux drops entries whose
/// `c_namesize` (with the NUL) exceeds `PATH_MAX` (4096) (`init/initramfs.c`, `do_header`).
pub const NAME_MAX_BYTES: usize = 4095;
/// The name that ends a newc archive ("initramfs buffer format").
const TRAILER_NAME: &str = "TRAILER!!!";
/// Permission bits (with set-uid, set-gid and sticky) that [`Entry::mode`] may hold; the file
/// type comes from [`Kind`].
const PERMISSION_BITS: u32 = 0o7777;

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A regular file and its contents.
    File(Vec<u8>),
    Directory,
    /// A symbolic link to this target (stored as the body, without a NUL).
    Symlink(String),
    /// A character device node.
    CharDevice {
        major: u32,
        minor: u32,
    },
}

/// One archive entry: its path in the initramfs, its permission bits and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path in the initramfs (`/init` or `init`; a leading `/` is dropped).
    pub path: String,
    /// Permission bits only (at most `0o7777`).
    pub mode: u32,
    pub kind: Kind,
}

impl Entry {
    pub fn file(path: impl Into<String>, mode: u32, bytes: impl Into<Vec<u8>>) -> Self {
        Self { path: path.into(), mode, kind: Kind::File(bytes.into()) }
    }

    pub fn dir(path: impl Into<String>, mode: u32) -> Self {
        Self { path: path.into(), mode, kind: Kind::Directory }
    }

    /// A symlink `path -> target` (mode 0777, as symlinks always are on Linux).
    pub fn symlink(path: impl Into<String>, target: impl Into<String>) -> Self {
        Self { path: path.into(), mode: 0o777, kind: Kind::Symlink(target.into()) }
    }

    pub fn char_device(path: impl Into<String>, major: u32, minor: u32, mode: u32) -> Self {
        Self { path: path.into(), mode, kind: Kind::CharDevice { major, minor } }
    }
}

/// Why an entry was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitramfsError {
    /// The path is empty (or only `/`).
    EmptyPath,
    /// The path contains a NUL byte (newc names are NUL-terminated).
    NulInPath { path: String },
    /// The path is longer than [`NAME_MAX_BYTES`].
    PathTooLong { path: String, len: usize },
    /// The path has an empty, `.` or `..` component.
    BadComponent { path: String },
    /// The path is the archive's end marker.
    ReservedName,
    /// Two entries have the same path.
    Duplicate { path: String },
    /// A directory holding this entry is listed after it: Linux would fail to create the entry.
    ParentListedLater { path: String, parent: String },
    /// The mode has bits other than permission bits.
    BadMode { path: String, mode: u32 },
    /// A symlink target that is empty, contains a NUL or is longer than [`NAME_MAX_BYTES`].
    BadSymlinkTarget { path: String },
    /// A file larger than newc's 32-bit size field.
    FileTooLarge { path: String, len: usize },
    /// The `/init` script does not start with `#!`, so the kernel could not execute it.
    InitNotScript,
}

impl fmt::Display for InitramfsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EmptyPath => write!(f, "initramfs entry with an empty path"),
            Self::NulInPath { path } => {
                write!(f, "initramfs path {path:?} contains a NUL byte")
            }
            Self::PathTooLong { path, len } => write!(
                f,
                "initramfs path {:?}… is {len} bytes long; Linux accepts at most {NAME_MAX_BYTES}",
                path.chars().take(40).collect::<String>()
            ),
            Self::BadComponent { path } => {
                write!(f, "initramfs path {path:?} has an empty, `.` or `..` component")
            }
            Self::ReservedName => {
                write!(f, "initramfs path {TRAILER_NAME:?} is the archive's end marker")
            }
            Self::Duplicate { path } => write!(f, "initramfs path {path:?} is listed twice"),
            Self::ParentListedLater { path, parent } => write!(
                f,
                "initramfs entry {path:?} comes before its directory {parent:?}; list the directory first"
            ),
            Self::BadMode { path, mode } => write!(
                f,
                "initramfs entry {path:?}: mode {mode:#o} has bits beyond the permissions (0o7777)"
            ),
            Self::BadSymlinkTarget { path } => write!(
                f,
                "initramfs symlink {path:?}: the target is empty, contains a NUL or is longer than {NAME_MAX_BYTES} bytes"
            ),
            Self::FileTooLarge { path, len } => {
                write!(f, "initramfs file {path:?} is {len} bytes; newc holds at most 4 GiB - 1")
            }
            Self::InitNotScript => {
                write!(f, "the init script must start with `#!` (e.g. `#!/bin/sh`)")
            }
        }
    }
}

impl std::error::Error for InitramfsError {}

/// The stored name of `path`, checked.
fn archive_name(path: &str) -> Result<&str, InitramfsError> {
    let name = path.trim_start_matches('/');
    if name.is_empty() {
        return Err(InitramfsError::EmptyPath);
    }
    if name.contains('\0') {
        return Err(InitramfsError::NulInPath { path: path.to_owned() });
    }
    if name.len() > NAME_MAX_BYTES {
        return Err(InitramfsError::PathTooLong { path: path.to_owned(), len: name.len() });
    }
    if name.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(InitramfsError::BadComponent { path: path.to_owned() });
    }
    if name == TRAILER_NAME {
        return Err(InitramfsError::ReservedName);
    }
    Ok(name)
}

/// Checks every entry; returns the stored names in order.
fn check(entries: &[Entry]) -> Result<Vec<&str>, InitramfsError> {
    let mut names = Vec::with_capacity(entries.len());
    let mut position: HashMap<&str, usize> = HashMap::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let name = archive_name(&e.path)?;
        if e.mode & !PERMISSION_BITS != 0 {
            return Err(InitramfsError::BadMode { path: e.path.clone(), mode: e.mode });
        }
        match &e.kind {
            Kind::File(bytes) if u32::try_from(bytes.len()).is_err() => {
                return Err(InitramfsError::FileTooLarge { path: e.path.clone(), len: bytes.len() })
            }
            Kind::Symlink(t) if t.is_empty() || t.contains('\0') || t.len() > NAME_MAX_BYTES => {
                return Err(InitramfsError::BadSymlinkTarget { path: e.path.clone() })
            }
            _ => {}
        }
        if position.insert(name, i).is_some() {
            return Err(InitramfsError::Duplicate { path: e.path.clone() });
        }
        names.push(name);
    }
    // Parents that are not in the archive at all are allowed (Linux unpacks its built-in
    // initramfs, with /dev and /root, first); parents listed after a child are not.
    for (i, name) in names.iter().enumerate() {
        let mut parent = *name;
        while let Some((p, _)) = parent.rsplit_once('/') {
            parent = p;
            if position.get(parent).is_some_and(|&at| at > i) {
                return Err(InitramfsError::ParentListedLater {
                    path: entries[i].path.clone(),
                    parent: parent.to_owned(),
                });
            }
        }
    }
    Ok(names)
}

/// The newc cpio archive (uncompressed) holding `entries` in order, then the trailer.
fn cpio_archive(entries: &[Entry]) -> anyhow::Result<Vec<u8>> {
    let names = check(entries)?;
    let mut out = Vec::new();
    for (i, (e, name)) in entries.iter().zip(names).enumerate() {
        let ino = u32::try_from(i + 1).context("more than 4 billion initramfs entries")?;
        let (file_type, nlink, body, rdev) = match &e.kind {
            Kind::File(bytes) => (ModeFileType::Regular, 1, bytes.as_slice(), (0, 0)),
            Kind::Directory => (ModeFileType::Directory, 2, &[][..], (0, 0)),
            Kind::Symlink(target) => (ModeFileType::Symlink, 1, target.as_bytes(), (0, 0)),
            Kind::CharDevice { major, minor } => (ModeFileType::Char, 1, &[][..], (*major, *minor)),
        };
        // `check` bounded every body to u32.
        let size = u32::try_from(body.len()).context("initramfs entry body over 4 GiB")?;
        let mut w = newc::Builder::new(name)
            .ino(ino)
            .mode(e.mode)
            .set_mode_file_type(file_type)
            .uid(0)
            .gid(0)
            .nlink(nlink)
            .mtime(0)
            .rdev_major(rdev.0)
            .rdev_minor(rdev.1)
            .write(&mut out, size);
        w.write_all(body).with_context(|| format!("writing initramfs entry {name:?}"))?;
        w.finish().with_context(|| format!("finishing initramfs entry {name:?}"))?;
    }
    newc::trailer(&mut out).context("writing the initramfs trailer")?;
    Ok(out)
}

/// The gzip-compressed newc cpio archive holding `entries` in order (see the module doc).
pub fn build(entries: &[Entry]) -> anyhow::Result<Vec<u8>> {
    let archive = cpio_archive(entries)?;
    // No mtime, no file name: the output depends on the entries only.
    let mut gz: GzEncoder<Vec<u8>> =
        GzBuilder::new().mtime(0).write(Vec::new(), Compression::best());
    gz.write_all(&archive).context("compressing the initramfs")?;
    gz.finish().context("finishing the initramfs gzip stream")
}

/// A minimal busybox initramfs: `/bin/busybox` (0755), `/bin/sh -> busybox`, `/init` (0755, the
/// script), the directories `/bin`, `/dev`, `/proc`, `/sys` (0755) and `/dev/console` (char
/// 5:1, 0600, so that the kernel can open the initial console whatever its built-in cpio
/// holds). `init_script` must start with `#!`; busybox applets other than `sh` are reached as
/// `busybox APPLET` (or after `busybox --install -s /bin`).
pub fn busybox_initramfs(busybox: &[u8], init_script: &str) -> anyhow::Result<Vec<u8>> {
    if !init_script.starts_with("#!") {
        return Err(InitramfsError::InitNotScript.into());
    }
    build(&[
        Entry::dir("/bin", 0o755),
        Entry::dir("/dev", 0o755),
        Entry::dir("/proc", 0o755),
        Entry::dir("/sys", 0o755),
        Entry::file("/bin/busybox", 0o755, busybox),
        Entry::symlink("/bin/sh", "busybox"),
        Entry::char_device("/dev/console", 5, 1, 0o600),
        Entry::file("/init", 0o755, init_script.as_bytes()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::process::{Command, Stdio};

    /// One record as an independent reader sees it ("initramfs buffer format").
    #[derive(Debug, PartialEq, Eq)]
    struct Record {
        name: String,
        ino: u32,
        mode: u32,
        nlink: u32,
        mtime: u32,
        rdev: (u32, u32),
        body: Vec<u8>,
    }

    fn gunzip(gz: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(gz).read_to_end(&mut out).expect("valid gzip");
        out
    }

    fn hex_field(header: &[u8], index: usize) -> u32 {
        let at = 6 + 8 * index;
        let text = std::str::from_utf8(&header[at..at + 8]).expect("ASCII hex field");
        u32::from_str_radix(text, 16).expect("hex field")
    }

    /// A strict newc reader written from the spec, independent of the `cpio` crate: checks the
    /// magic, the 4-byte alignment of every header and body, the NUL after each name, zero
    /// padding, and that the trailer ends the archive.
    fn parse_newc(archive: &[u8]) -> Vec<Record> {
        let align4 = |n: usize| (n + 3) & !3;
        let mut at = 0;
        let mut records = Vec::new();
        loop {
            assert_eq!(at % 4, 0, "header at {at} not 4-byte aligned");
            let header = &archive[at..at + 110];
            assert_eq!(&header[..6], b"070701", "magic at {at}");
            let namesize = hex_field(header, 11) as usize;
            let filesize = hex_field(header, 6) as usize;
            assert_eq!(hex_field(header, 12), 0, "c_check must be 0 in newc");
            let name_end = at + 110 + namesize;
            assert_eq!(archive[name_end - 1], 0, "name not NUL-terminated");
            let name = std::str::from_utf8(&archive[at + 110..name_end - 1]).unwrap().to_owned();
            assert!(!name.contains('\0'));
            let body_at = align4(name_end);
            assert!(archive[name_end..body_at].iter().all(|&b| b == 0), "name padding");
            let body_end = body_at + filesize;
            let next = align4(body_end);
            assert!(archive[body_end..next].iter().all(|&b| b == 0), "body padding");
            let record = Record {
                name,
                ino: hex_field(header, 0),
                mode: hex_field(header, 1),
                nlink: hex_field(header, 4),
                mtime: hex_field(header, 5),
                rdev: (hex_field(header, 9), hex_field(header, 10)),
                body: archive[body_at..body_end].to_vec(),
            };
            at = next;
            if record.name == TRAILER_NAME {
                assert!(record.body.is_empty());
                assert_eq!(at, archive.len(), "bytes after the trailer");
                return records;
            }
            records.push(record);
        }
    }

    fn sample_entries() -> Vec<Entry> {
        vec![
            Entry::dir("/bin", 0o755),
            Entry::dir("dev", 0o755),
            Entry::file("/bin/tool", 0o755, b"\x7fELF tool bytes".to_vec()),
            Entry::file("/etc-motd", 0o644, b"hello\n".to_vec()),
            Entry::file("/empty", 0o600, Vec::new()),
            Entry::symlink("/bin/sh", "tool"),
            Entry::char_device("/dev/console", 5, 1, 0o600),
            Entry::char_device("/dev/ttyS1", 4, 65, 0o620),
        ]
    }

    #[test]
    fn archive_holds_every_entry_with_its_metadata() {
        let records = parse_newc(&gunzip(&build(&sample_entries()).unwrap()));
        let names: Vec<&str> = records.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            ["bin", "dev", "bin/tool", "etc-motd", "empty", "bin/sh", "dev/console", "dev/ttyS1"]
        );
        let by_name = |n: &str| records.iter().find(|r| r.name == n).unwrap();
        assert_eq!(by_name("bin").mode, 0o040755);
        assert_eq!(by_name("bin").nlink, 2);
        assert_eq!(by_name("bin/tool").mode, 0o100755);
        assert_eq!(by_name("bin/tool").body, b"\x7fELF tool bytes");
        assert_eq!(by_name("etc-motd").mode, 0o100644);
        assert_eq!(by_name("etc-motd").body, b"hello\n");
        assert_eq!(by_name("empty").body, b"");
        assert_eq!(by_name("bin/sh").mode, 0o120777);
        assert_eq!(by_name("bin/sh").body, b"tool");
        assert_eq!(by_name("dev/console").mode, 0o020600);
        assert_eq!(by_name("dev/console").rdev, (5, 1));
        assert_eq!(by_name("dev/ttyS1").rdev, (4, 65));
        assert!(records.iter().all(|r| r.mtime == 0));
        let mut inos: Vec<u32> = records.iter().map(|r| r.ino).collect();
        inos.sort_unstable();
        inos.dedup();
        assert_eq!(inos.len(), records.len(), "inode numbers must be unique");
        assert!(!inos.contains(&0));
    }

    #[test]
    fn same_entries_give_the_same_bytes() {
        let a = build(&sample_entries()).unwrap();
        let b = build(&sample_entries()).unwrap();
        assert_eq!(a, b);
        // gzip header: magic, deflate, no flags, mtime 0 (RFC 1952, "Member format").
        assert_eq!(&a[..8], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0]);
        let mut other = sample_entries();
        other[3] = Entry::file("/etc-motd", 0o644, b"hellO\n".to_vec());
        assert_ne!(build(&other).unwrap(), a);
    }

    #[test]
    fn busybox_layout() {
        let script = "#!/bin/sh\necho hi\n";
        let records = parse_newc(&gunzip(&busybox_initramfs(b"\x7fELF-busybox", script).unwrap()));
        let find = |n: &str| records.iter().find(|r| r.name == n).unwrap_or_else(|| panic!("{n}"));
        for d in ["bin", "dev", "proc", "sys"] {
            assert_eq!(find(d).mode, 0o040755, "{d}");
        }
        assert_eq!(find("bin/busybox").mode, 0o100755);
        assert_eq!(find("bin/busybox").body, b"\x7fELF-busybox");
        assert_eq!(
            (find("bin/sh").mode, find("bin/sh").body.as_slice()),
            (0o120777, &b"busybox"[..])
        );
        assert_eq!((find("dev/console").mode, find("dev/console").rdev), (0o020600, (5, 1)));
        assert_eq!(
            (find("init").mode, find("init").body.as_slice()),
            (0o100755, script.as_bytes())
        );
        // Every directory comes before what it holds.
        let pos = |n: &str| records.iter().position(|r| r.name == n).unwrap();
        assert!(pos("bin") < pos("bin/busybox") && pos("bin") < pos("bin/sh"));
        assert!(pos("dev") < pos("dev/console"));
    }

    fn refused(entries: &[Entry]) -> InitramfsError {
        let err = build(entries).expect_err("must be refused");
        err.downcast_ref::<InitramfsError>().cloned().unwrap_or_else(|| panic!("{err:#}"))
    }

    #[test]
    fn bad_paths_are_refused_with_a_specific_error() {
        assert_eq!(
            refused(&[Entry::file("/bin/a\0b", 0o644, Vec::new())]),
            InitramfsError::NulInPath { path: "/bin/a\0b".into() }
        );
        let long = format!("/{}", "x".repeat(NAME_MAX_BYTES + 1));
        assert_eq!(
            refused(&[Entry::file(long.clone(), 0o644, Vec::new())]),
            InitramfsError::PathTooLong { path: long, len: NAME_MAX_BYTES + 1 }
        );
        // The longest name Linux takes is accepted.
        let longest = "y".repeat(NAME_MAX_BYTES);
        let records = parse_newc(&gunzip(&build(&[Entry::dir(longest.clone(), 0o755)]).unwrap()));
        assert_eq!(records[0].name, longest);

        assert_eq!(refused(&[Entry::dir("/", 0o755)]), InitramfsError::EmptyPath);
        for p in ["a//b", "a/./b", "../etc", "a/"] {
            assert_eq!(
                refused(&[Entry::dir(p, 0o755)]),
                InitramfsError::BadComponent { path: p.into() },
                "{p}"
            );
        }
        assert_eq!(refused(&[Entry::dir(TRAILER_NAME, 0o755)]), InitramfsError::ReservedName);
        assert_eq!(
            refused(&[Entry::dir("/a", 0o755), Entry::dir("a", 0o700)]),
            InitramfsError::Duplicate { path: "a".into() }
        );
        assert_eq!(
            refused(&[Entry::file("/d/f", 0o644, Vec::new()), Entry::dir("/d", 0o755)]),
            InitramfsError::ParentListedLater { path: "/d/f".into(), parent: "d".into() }
        );
        assert_eq!(
            refused(&[Entry::file("/f", 0o100644, Vec::new())]),
            InitramfsError::BadMode { path: "/f".into(), mode: 0o100644 }
        );
        for target in ["", "a\0b"] {
            assert_eq!(
                refused(&[Entry::symlink("/l", target)]),
                InitramfsError::BadSymlinkTarget { path: "/l".into() }
            );
        }
        let err = busybox_initramfs(b"\x7fELF", "echo no shebang\n").unwrap_err();
        assert_eq!(err.downcast_ref::<InitramfsError>(), Some(&InitramfsError::InitNotScript));
    }

    fn tool_present(tool: &str) -> bool {
        Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Runs `tool args` with `input` on stdin; returns stdout, panicking on failure.
    fn pipe_through(tool: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
        let mut child = Command::new(tool)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {tool}: {e}"));
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// GNU cpio and gzip, when installed, read the archive the same way.
    #[test]
    fn system_gzip_and_cpio_read_the_archive() {
        if !tool_present("gzip") || !tool_present("cpio") {
            println!("SKIP system_gzip_and_cpio_read_the_archive: gzip or cpio is not installed (apt-get install -y cpio gzip)");
            return;
        }
        let gz = busybox_initramfs(b"\x7fELF-busybox-bytes", "#!/bin/sh\necho MK\n").unwrap();
        let archive = pipe_through("gzip", &["-d", "-c"], &gz);
        assert_eq!(archive, gunzip(&gz));

        let listing = pipe_through("cpio", &["-t", "-v", "--quiet"], &archive);
        let listing = String::from_utf8(listing).unwrap();
        // `cpio -tv` prints `ls -l`-style lines: permissions first, the name (and ` -> target`)
        // last, `major, minor` in place of the size for devices.
        let line = |name: &str| {
            listing
                .lines()
                .find(|l| l.ends_with(&format!(" {name}")) || l.contains(&format!(" {name} -> ")))
                .unwrap_or_else(|| panic!("{name} missing from:\n{listing}"))
        };
        assert!(line("bin").starts_with("drwxr-xr-x "), "{listing}");
        assert!(line("proc").starts_with("drwxr-xr-x "), "{listing}");
        assert!(line("bin/busybox").starts_with("-rwxr-xr-x "), "{listing}");
        assert!(line("init").starts_with("-rwxr-xr-x "), "{listing}");
        assert!(line("bin/sh").starts_with("lrwxrwxrwx "), "{listing}");
        assert!(line("bin/sh").ends_with(" bin/sh -> busybox"), "{listing}");
        let console = line("dev/console");
        assert!(console.starts_with("crw------- "), "{listing}");
        let fields: Vec<&str> = console.split_whitespace().collect();
        let comma = fields.iter().position(|f| *f == "5,").expect("major 5");
        assert_eq!(fields[comma + 1], "1", "{console}");
        assert_eq!(listing.lines().count(), 8, "{listing}");

        let init = pipe_through("cpio", &["-i", "--to-stdout", "--quiet", "init"], &archive);
        assert_eq!(init, b"#!/bin/sh\necho MK\n");
        let busybox =
            pipe_through("cpio", &["-i", "--to-stdout", "--quiet", "bin/busybox"], &archive);
        assert_eq!(busybox, b"\x7fELF-busybox-bytes");
    }
}
