//! The boot bundle: what xtask packs into the bootloader's ramdisk and the manager reads.
//!
//! A bundle holds the instances to start (a compact, validated form of the manifest, so the
//! manager needs no TOML parser) and the ELF images they run, with a table of contents and a
//! checksum per image. xtask writes it with [`Bundle::encode`]; the manager reads it with
//! [`parse`], which trusts nothing: every offset, length, count, string and checksum is checked,
//! and a bad image entry becomes an error for the instances that use it, not a crash.
//!
//! # Format, version 2 (all integers little-endian)
//! ```text
//! header   64 B   magic "MKBUNDLE", version u32, header_size u32, file_count u32,
//!                 instance_count u32, total_len u64, extra_offset u64, extra_len u64,
//!                 channel_count u32, reserved 12 B
//! settings 32 B   run_ms u32, checkin_timeout_ms u32, log_level u32, flags u32,
//!                 image_store u64 (bytes), reserved 8 B
//! files    file_count × 64 B     name[32], offset u64, len u64, fnv1a64 u64, reserved u64
//! insts    instance_count × 384 B
//!            0 name[32]          32 file u32            36 flags u32
//!           40 memory u64        48 base u64 (0: any)   56 restart u32
//!           60 max_restarts u32  64 heartbeat_timeout_ms u32
//!           68 protocol u32 (0 multikernel, 1 linux, 2 none)
//!           72 cpu_count u32     76 cpus_at u32 (offset in extra of cpu_count u32 APIC IDs,
//!                                   or NONE for "any cpu_count free CPUs")
//!           80 devices u32 (bit 0 COM2, bit 1 COM3, bit 2 COM4)
//!           84 initrd u32 (file index, or NONE)
//!           88 cmdline_at u32, 92 cmdline_len u32 (UTF-8 in extra; len 0: none)
//!           96 args[256]        352 reserved 32 B
//!          flags: bit 1 = write boot info version 1 (a kernel built against the v1 header)
//! chans    channel_count × 64 B  name[32], between u32 × 2 (instance indices), size u64,
//!                 base u64 (0: any), reserved u64
//! extra    extra_len bytes: CPU lists and command lines, referenced by the instances
//! data     the files' bytes, at their offsets
//! ```
//! Version 1 (no CPU lists, protocols, devices, initrds or command lines) is no longer read:
//! xtask builds the bundle and the manager together.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

pub const MAGIC: [u8; 8] = *b"MKBUNDLE";
pub const VERSION: u32 = 2;
pub const HEADER_LEN: usize = 64;
pub const CHANNEL_LEN: usize = 64;
pub const SETTINGS_LEN: usize = 32;
/// The image store a manifest gets when it does not say: room for a distribution's Linux
/// kernel and initrd, or many small kernels.
pub const DEFAULT_IMAGE_STORE: u64 = 64 << 20;
pub const FILE_ENTRY_LEN: usize = 64;
pub const INSTANCE_LEN: usize = 384;
pub const NAME_LEN: usize = 32;
pub const ARGS_LEN: usize = 256;
/// Limits that keep a corrupted count from turning into a huge loop or allocation.
pub const MAX_FILES: usize = 64;
pub const MAX_INSTANCES: usize = 1024;
/// "None" for an index or an offset field.
pub const NONE: u32 = u32::MAX;
/// The most CPUs one instance can have (the boot info's CPU list: `info_page::MAX_CPUS`).
pub const MAX_INSTANCE_CPUS: usize = bootproto::info_page::MAX_CPUS;
/// The longest command line the manifest may give (Linux takes 2047 bytes in all).
pub const MAX_CMDLINE: usize = 2048;
/// Instance flag: write boot info version 1.
pub const FLAG_PROTOCOL_V1: u32 = 1 << 1;

/// How the manager hands a kernel its machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// The multikernel boot protocol (docs/boot-protocol.md): an ELF image, a boot info, a
    /// status block and a console ring; every CPU of the instance enters the image.
    Multikernel,
    /// An unmodified Linux bzImage through its 64-bit boot protocol: a zero page, a private
    /// e820 and ACPI view; Linux starts its other CPUs itself.
    Linux,
    /// An ELF image that knows nothing of the manager: healthy once its CPUs entered it.
    None,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Multikernel => "multikernel",
            Protocol::Linux => "linux",
            Protocol::None => "none",
        }
    }
}

/// The CPUs an instance asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cpus {
    /// This many free CPUs, in inventory order.
    Any(u32),
    /// These APIC IDs; the first is the instance's boot CPU.
    Exactly(Vec<u32>),
}

impl Cpus {
    pub fn count(&self) -> usize {
        match self {
            Cpus::Any(n) => *n as usize,
            Cpus::Exactly(ids) => ids.len(),
        }
    }
}

/// A legacy UART an instance may own (COM1 is the manager's console).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Uart {
    Com2,
    Com3,
    Com4,
}

impl Uart {
    pub const ALL: [Uart; 3] = [Uart::Com2, Uart::Com3, Uart::Com4];

    /// The PC/AT I/O base (COM2 0x2F8, COM3 0x3E8, COM4 0x2E8).
    pub fn io_base(self) -> u16 {
        match self {
            Uart::Com2 => 0x2F8,
            Uart::Com3 => 0x3E8,
            Uart::Com4 => 0x2E8,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Uart::Com2 => "com2",
            Uart::Com3 => "com3",
            Uart::Com4 => "com4",
        }
    }

    pub fn from_name(name: &str) -> Option<Uart> {
        Uart::ALL.into_iter().find(|u| u.name().eq_ignore_ascii_case(name))
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    Never,
    OnFailure,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// How long the manager supervises before it prints its verdict (0 = forever).
    pub run_ms: u32,
    /// How long to wait for each AP to check in at the trampoline.
    pub checkin_timeout_ms: u32,
    /// 0 error, 1 warn, 2 info, 3 debug, 4 trace.
    pub log_level: u32,
    pub flags: u32,
    /// Bytes reserved for images pushed at run time (`[settings] image_store`; 0: none).
    pub image_store: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            run_ms: 3000,
            checkin_timeout_ms: 1000,
            log_level: 2,
            flags: 0,
            image_store: DEFAULT_IMAGE_STORE,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct File {
    pub name: String,
    pub data: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub name: String,
    /// Index into the bundle's files.
    pub file: u32,
    pub cpus: Cpus,
    pub memory: u64,
    /// Fixed physical base, or `None` for "anywhere".
    pub base: Option<u64>,
    pub restart: Restart,
    pub max_restarts: u32,
    /// 0 = no hang detection.
    pub heartbeat_timeout_ms: u32,
    pub protocol: Protocol,
    /// The boot info version the manager writes for it: [`bootproto::PROTOCOL_VERSION`], or 1
    /// for a kernel built against the version 1 header (docs/boot-protocol.md, "Versions").
    pub protocol_version: u32,
    /// The UARTs it owns, in [`Uart`] order.
    pub devices: Vec<Uart>,
    /// Bundle file index of its initial RAM disk (Linux).
    pub initrd: Option<u32>,
    /// Its kernel command line (Linux: appended to the manager's defaults).
    pub cmdline: String,
    pub args: String,
}

impl Instance {
    /// The kernel reports in through the multikernel boot protocol (status block, console
    /// ring); any other is healthy once `started`, as far as the manager can see.
    pub fn speaks_protocol(&self) -> bool {
        self.protocol == Protocol::Multikernel
    }
}

/// A shared-memory channel between two instances (see `bootproto::channel`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Channel {
    pub name: String,
    /// The two instances it joins, by index; `between[0]` is side 0.
    pub between: [u32; 2],
    /// Bytes: a multiple of 4 KiB, at least `bootproto::channel::MIN_SIZE`.
    pub size: u64,
    /// Fixed physical base, or `None` for "anywhere".
    pub base: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bundle {
    pub settings: Settings,
    pub files: Vec<File>,
    pub instances: Vec<Instance>,
    pub channels: Vec<Channel>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BundleError {
    TooShort {
        len: usize,
    },
    BadMagic,
    UnsupportedVersion {
        version: u32,
    },
    BadHeaderSize {
        size: u32,
    },
    /// The header's total length disagrees with the ramdisk's.
    LengthMismatch {
        header: u64,
        actual: usize,
    },
    TooManyFiles {
        count: u32,
    },
    TooManyInstances {
        count: u32,
    },
    TooManyChannels {
        count: u32,
    },
    /// A channel names an instance that does not exist, names one twice, or has a bad size.
    BadChannel {
        index: usize,
    },
    TableOutOfBounds,
    /// A string field is not UTF-8, or has bytes after its NUL padding.
    BadString {
        what: &'static str,
        index: usize,
    },
    FileOutOfBounds {
        index: usize,
        offset: u64,
        len: u64,
    },
    BadRestartPolicy {
        index: usize,
        value: u32,
    },
    /// An instance field holds a value the format does not define.
    BadField {
        index: usize,
        what: &'static str,
        value: u32,
    },
    /// An instance's CPU list or command line lies outside the extra area (or is too long).
    ExtraOutOfBounds {
        index: usize,
        what: &'static str,
    },
    /// Encoding: a field does not fit its fixed size.
    FieldTooLong {
        what: &'static str,
        value: String,
    },
}

impl fmt::Display for BundleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BundleError::TooShort { len } => write!(f, "boot bundle is only {len} bytes"),
            BundleError::BadMagic => f.write_str("ramdisk is not a boot bundle (bad magic)"),
            BundleError::UnsupportedVersion { version } => {
                write!(f, "boot bundle version {version} is not supported (this manager reads {VERSION})")
            }
            BundleError::BadHeaderSize { size } => write!(f, "boot bundle header size {size} is wrong"),
            BundleError::LengthMismatch { header, actual } => write!(
                f,
                "boot bundle says it is {header} bytes but the ramdisk holds {actual}: truncated or corrupted"
            ),
            BundleError::TooManyFiles { count } => {
                write!(f, "boot bundle lists {count} files (at most {MAX_FILES})")
            }
            BundleError::TooManyInstances { count } => {
                write!(f, "boot bundle lists {count} instances (at most {MAX_INSTANCES})")
            }
            BundleError::TableOutOfBounds => f.write_str("boot bundle tables run past its end"),
            BundleError::TooManyChannels { count } => write!(
                f,
                "boot bundle lists {count} channels (at most {})",
                bootproto::channel::MAX_CHANNELS
            ),
            BundleError::BadChannel { index } => write!(
                f,
                "boot bundle channel #{index} names a missing instance, the same instance twice, \
                 or a size that is not a multiple of 4 KiB of at least {} bytes",
                bootproto::channel::MIN_SIZE
            ),
            BundleError::BadString { what, index } => {
                write!(f, "boot bundle {what} #{index} is not valid NUL-padded UTF-8")
            }
            BundleError::FileOutOfBounds { index, offset, len } => write!(
                f,
                "boot bundle file #{index} ({len} bytes at {offset:#x}) lies outside the bundle"
            ),
            BundleError::BadRestartPolicy { index, value } => {
                write!(f, "instance #{index} has unknown restart policy {value}")
            }
            BundleError::BadField { index, what, value } => {
                write!(f, "instance #{index} has an undefined {what} value {value:#x}")
            }
            BundleError::ExtraOutOfBounds { index, what } => {
                write!(f, "instance #{index}'s {what} lies outside the bundle's extra area")
            }
            BundleError::FieldTooLong { what, value } => {
                write!(f, "{what} {value:?} is too long for the boot bundle")
            }
        }
    }
}

/// A file entry as read from a bundle: its bytes are checked lazily (per instance), so a
/// corrupted image only fails the instances that use it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRef {
    pub name: String,
    pub offset: u64,
    pub len: u64,
    pub checksum: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub settings: Settings,
    pub files: Vec<FileRef>,
    pub instances: Vec<Instance>,
    pub channels: Vec<Channel>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileError {
    NoSuchFile {
        index: u32,
        count: usize,
    },
    /// The file's bytes are not inside the slice given (not the bundle `parse` checked).
    OutOfBounds {
        index: u32,
    },
    ChecksumMismatch {
        name: String,
        expected: u64,
        actual: u64,
    },
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileError::NoSuchFile { index, count } => {
                write!(f, "image #{index} does not exist (the bundle has {count})")
            }
            FileError::OutOfBounds { index } => {
                write!(f, "image #{index} lies outside the bundle it was read from")
            }
            FileError::ChecksumMismatch { name, expected, actual } => write!(
                f,
                "image '{name}' is corrupted: checksum {actual:#018x}, expected {expected:#018x}"
            ),
        }
    }
}

impl core::error::Error for FileError {}

impl core::error::Error for BundleError {}

impl Parsed {
    /// The bytes of file `index`, without checking its checksum (for a caller that checked it
    /// with [`Parsed::file`] before, on the same read-only bundle).
    pub fn file_unverified<'a>(&self, bundle: &'a [u8], index: u32) -> Result<&'a [u8], FileError> {
        let f = self
            .files
            .get(index as usize)
            .ok_or(FileError::NoSuchFile { index, count: self.files.len() })?;
        // `parse` checked the bounds against the bundle it read; `get` covers a caller that
        // passes another slice.
        usize::try_from(f.offset)
            .ok()
            .zip(usize::try_from(f.len).ok())
            .and_then(|(start, len)| bundle.get(start..start.checked_add(len)?))
            .ok_or(FileError::OutOfBounds { index })
    }

    /// The bytes of file `index`, checked against its checksum.
    pub fn file<'a>(&self, bundle: &'a [u8], index: u32) -> Result<&'a [u8], FileError> {
        let bytes = self.file_unverified(bundle, index)?;
        let count = self.files.len();
        let f = self.files.get(index as usize).ok_or(FileError::NoSuchFile { index, count })?;
        let actual = bootproto::fnv1a64(bytes);
        if actual != f.checksum {
            return Err(FileError::ChecksumMismatch {
                name: f.name.clone(),
                expected: f.checksum,
                actual,
            });
        }
        Ok(bytes)
    }
}

/// Fields the bounds checks in [`parse`] already proved to be inside `b` (0 otherwise).
fn u32_at(b: &[u8], off: usize) -> u32 {
    bootproto::le::u32_at(b, off).unwrap_or(0)
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    bootproto::le::u64_at(b, off).unwrap_or(0)
}

fn str_field(b: &[u8], what: &'static str, index: usize) -> Result<String, BundleError> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    if b[end..].iter().any(|&c| c != 0) {
        return Err(BundleError::BadString { what, index });
    }
    core::str::from_utf8(&b[..end])
        .map(String::from)
        .map_err(|_| BundleError::BadString { what, index })
}

/// Reads and checks a bundle's structure (not the image checksums: see [`Parsed::file`]).
pub fn parse(bytes: &[u8]) -> Result<Parsed, BundleError> {
    if bytes.len() < HEADER_LEN + SETTINGS_LEN {
        return Err(BundleError::TooShort { len: bytes.len() });
    }
    if bytes[..8] != MAGIC {
        return Err(BundleError::BadMagic);
    }
    let version = u32_at(bytes, 8);
    if version != VERSION {
        return Err(BundleError::UnsupportedVersion { version });
    }
    let header_size = u32_at(bytes, 12);
    if header_size as usize != HEADER_LEN {
        return Err(BundleError::BadHeaderSize { size: header_size });
    }
    let file_count = u32_at(bytes, 16);
    let instance_count = u32_at(bytes, 20);
    let total = u64_at(bytes, 24);
    let (extra_offset, extra_len) = (u64_at(bytes, 32), u64_at(bytes, 40));
    let channel_count = u32_at(bytes, 48);
    if channel_count as usize > bootproto::channel::MAX_CHANNELS {
        return Err(BundleError::TooManyChannels { count: channel_count });
    }
    if total != bytes.len() as u64 {
        return Err(BundleError::LengthMismatch { header: total, actual: bytes.len() });
    }
    if file_count as usize > MAX_FILES {
        return Err(BundleError::TooManyFiles { count: file_count });
    }
    if instance_count as usize > MAX_INSTANCES {
        return Err(BundleError::TooManyInstances { count: instance_count });
    }
    let s = &bytes[HEADER_LEN..HEADER_LEN + SETTINGS_LEN];
    let settings = Settings {
        run_ms: u32_at(s, 0),
        checkin_timeout_ms: u32_at(s, 4),
        log_level: u32_at(s, 8),
        flags: u32_at(s, 12),
        image_store: u64::from(u32_at(s, 16)) | (u64::from(u32_at(s, 20)) << 32),
    };
    let files_at = HEADER_LEN + SETTINGS_LEN;
    let insts_at = files_at + file_count as usize * FILE_ENTRY_LEN;
    let chans_at = insts_at + instance_count as usize * INSTANCE_LEN;
    let extra_at = chans_at + channel_count as usize * CHANNEL_LEN;
    let data_at = usize::try_from(extra_len).ok().and_then(|l| extra_at.checked_add(l));
    let data_at = match data_at {
        Some(d) if extra_offset == extra_at as u64 && d <= bytes.len() => d,
        _ => return Err(BundleError::TableOutOfBounds),
    };
    let extra = &bytes[extra_at..data_at];
    let mut files = Vec::with_capacity(file_count as usize);
    for i in 0..file_count as usize {
        let e = &bytes[files_at + i * FILE_ENTRY_LEN..files_at + (i + 1) * FILE_ENTRY_LEN];
        let name = str_field(&e[..NAME_LEN], "file name", i)?;
        let offset = u64_at(e, 32);
        let len = u64_at(e, 40);
        let in_bounds = offset >= data_at as u64
            && offset.checked_add(len).is_some_and(|end| end <= bytes.len() as u64);
        if !in_bounds {
            return Err(BundleError::FileOutOfBounds { index: i, offset, len });
        }
        files.push(FileRef { name, offset, len, checksum: u64_at(e, 48) });
    }
    let mut instances = Vec::with_capacity(instance_count as usize);
    for i in 0..instance_count as usize {
        let e = &bytes[insts_at + i * INSTANCE_LEN..insts_at + (i + 1) * INSTANCE_LEN];
        let name = str_field(&e[..NAME_LEN], "instance name", i)?;
        let base = u64_at(e, 48);
        let restart = match u32_at(e, 56) {
            0 => Restart::Never,
            1 => Restart::OnFailure,
            value => return Err(BundleError::BadRestartPolicy { index: i, value }),
        };
        let flags = u32_at(e, 36);
        let field = |what, value| BundleError::BadField { index: i, what, value };
        let protocol = match u32_at(e, 68) {
            0 => Protocol::Multikernel,
            1 => Protocol::Linux,
            2 => Protocol::None,
            value => return Err(field("protocol", value)),
        };
        let cpu_count = u32_at(e, 72);
        if cpu_count == 0 || cpu_count as usize > MAX_INSTANCE_CPUS {
            return Err(field("CPU count", cpu_count));
        }
        let extra_slice = |at: u32, len: usize, what| {
            (at as usize)
                .checked_add(len)
                .and_then(|end| extra.get(at as usize..end))
                .ok_or(BundleError::ExtraOutOfBounds { index: i, what })
        };
        let cpus = match u32_at(e, 76) {
            NONE => Cpus::Any(cpu_count),
            at => Cpus::Exactly(
                extra_slice(at, 4 * cpu_count as usize, "CPU list")?
                    .as_chunks::<4>()
                    .0
                    .iter()
                    .map(|c| u32::from_le_bytes(*c))
                    .collect(),
            ),
        };
        let device_bits = u32_at(e, 80);
        let devices: Vec<Uart> =
            Uart::ALL.into_iter().filter(|u| device_bits & u.bit() != 0).collect();
        if devices.iter().fold(device_bits, |b, u| b & !u.bit()) != 0 {
            return Err(field("devices", device_bits));
        }
        let initrd = match u32_at(e, 84) {
            NONE => None,
            f if f < file_count => Some(f),
            f => return Err(field("initrd file", f)),
        };
        let cmdline_len = u32_at(e, 92) as usize;
        if cmdline_len > MAX_CMDLINE {
            return Err(BundleError::ExtraOutOfBounds { index: i, what: "command line" });
        }
        let cmdline = match cmdline_len {
            0 => String::new(),
            len => {
                let b = extra_slice(u32_at(e, 88), len, "command line")?;
                match core::str::from_utf8(b) {
                    Ok(s) if !s.contains('\0') => String::from(s),
                    _ => return Err(BundleError::BadString { what: "command line", index: i }),
                }
            }
        };
        instances.push(Instance {
            name,
            file: u32_at(e, 32),
            cpus,
            memory: u64_at(e, 40),
            base: if base == 0 { None } else { Some(base) },
            restart,
            max_restarts: u32_at(e, 60),
            heartbeat_timeout_ms: u32_at(e, 64),
            protocol,
            protocol_version: if flags & FLAG_PROTOCOL_V1 != 0 {
                1
            } else {
                bootproto::PROTOCOL_VERSION
            },
            devices,
            initrd,
            cmdline,
            args: str_field(&e[96..96 + ARGS_LEN], "instance args", i)?,
        });
    }
    let mut channels = Vec::with_capacity(channel_count as usize);
    for i in 0..channel_count as usize {
        let e = &bytes[chans_at + i * CHANNEL_LEN..chans_at + (i + 1) * CHANNEL_LEN];
        let name = str_field(&e[..NAME_LEN], "channel name", i)?;
        let between = [u32_at(e, 32), u32_at(e, 36)];
        let (size, base) = (u64_at(e, 40), u64_at(e, 48));
        let valid = between.iter().all(|&b| b < instance_count)
            && between[0] != between[1]
            && size >= bootproto::channel::MIN_SIZE
            && size.is_multiple_of(bootproto::PAGE_SIZE);
        if !valid {
            return Err(BundleError::BadChannel { index: i });
        }
        channels.push(Channel { name, between, size, base: (base != 0).then_some(base) });
    }
    Ok(Parsed { settings, files, instances, channels })
}

fn put_str(out: &mut [u8], s: &str, what: &'static str) -> Result<(), BundleError> {
    if s.len() > out.len() || s.as_bytes().contains(&0) {
        return Err(BundleError::FieldTooLong { what, value: s.into() });
    }
    out[..s.len()].copy_from_slice(s.as_bytes());
    Ok(())
}

impl Bundle {
    /// Serializes the bundle (host side; xtask).
    pub fn encode(&self) -> Result<Vec<u8>, BundleError> {
        if self.files.len() > MAX_FILES {
            return Err(BundleError::TooManyFiles { count: self.files.len() as u32 });
        }
        if self.instances.len() > MAX_INSTANCES {
            return Err(BundleError::TooManyInstances { count: self.instances.len() as u32 });
        }
        let files_at = HEADER_LEN + SETTINGS_LEN;
        let insts_at = files_at + self.files.len() * FILE_ENTRY_LEN;
        if self.channels.len() > bootproto::channel::MAX_CHANNELS {
            return Err(BundleError::TooManyChannels { count: self.channels.len() as u32 });
        }
        let chans_at = insts_at + self.instances.len() * INSTANCE_LEN;
        let extra_at = chans_at + self.channels.len() * CHANNEL_LEN;
        // The extra area: each explicit CPU list, then each command line.
        let mut extra: Vec<u8> = Vec::new();
        let mut refs: Vec<(u32, u32, u32)> = Vec::new(); // (cpus_at, cmdline_at, cmdline_len)
        for inst in &self.instances {
            let n = inst.cpus.count();
            if n == 0 || n > MAX_INSTANCE_CPUS {
                return Err(BundleError::FieldTooLong {
                    what: "CPU list",
                    value: alloc::format!("{} CPUs for '{}'", n, inst.name),
                });
            }
            if inst.cmdline.len() > MAX_CMDLINE || inst.cmdline.contains('\0') {
                return Err(BundleError::FieldTooLong {
                    what: "command line",
                    value: inst.cmdline.clone(),
                });
            }
            let cpus_at = match &inst.cpus {
                Cpus::Any(_) => NONE,
                Cpus::Exactly(ids) => {
                    let at = extra.len() as u32;
                    ids.iter().for_each(|id| extra.extend_from_slice(&id.to_le_bytes()));
                    at
                }
            };
            let cmdline_at = extra.len() as u32;
            extra.extend_from_slice(inst.cmdline.as_bytes());
            refs.push((cpus_at, cmdline_at, inst.cmdline.len() as u32));
        }
        let data_at = extra_at + extra.len();
        let total = data_at + self.files.iter().map(|f| f.data.len()).sum::<usize>();
        let mut out = alloc::vec![0u8; total];
        out[..8].copy_from_slice(&MAGIC);
        out[8..12].copy_from_slice(&VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        out[16..20].copy_from_slice(&(self.files.len() as u32).to_le_bytes());
        out[20..24].copy_from_slice(&(self.instances.len() as u32).to_le_bytes());
        out[24..32].copy_from_slice(&(total as u64).to_le_bytes());
        out[32..40].copy_from_slice(&(extra_at as u64).to_le_bytes());
        out[48..52].copy_from_slice(&(self.channels.len() as u32).to_le_bytes());
        for (i, c) in self.channels.iter().enumerate() {
            let at = chans_at + i * CHANNEL_LEN;
            put_str(&mut out[at..at + NAME_LEN], &c.name, "channel name")?;
            out[at + 32..at + 36].copy_from_slice(&c.between[0].to_le_bytes());
            out[at + 36..at + 40].copy_from_slice(&c.between[1].to_le_bytes());
            out[at + 40..at + 48].copy_from_slice(&c.size.to_le_bytes());
            out[at + 48..at + 56].copy_from_slice(&c.base.unwrap_or(0).to_le_bytes());
        }
        out[40..48].copy_from_slice(&(extra.len() as u64).to_le_bytes());
        out[extra_at..data_at].copy_from_slice(&extra);
        let s = &mut out[HEADER_LEN..HEADER_LEN + SETTINGS_LEN];
        s[0..4].copy_from_slice(&self.settings.run_ms.to_le_bytes());
        s[4..8].copy_from_slice(&self.settings.checkin_timeout_ms.to_le_bytes());
        s[8..12].copy_from_slice(&self.settings.log_level.to_le_bytes());
        s[12..16].copy_from_slice(&self.settings.flags.to_le_bytes());
        s[16..24].copy_from_slice(&self.settings.image_store.to_le_bytes());
        let mut data_off = data_at;
        for (i, f) in self.files.iter().enumerate() {
            let at = files_at + i * FILE_ENTRY_LEN;
            put_str(&mut out[at..at + NAME_LEN], &f.name, "file name")?;
            out[at + 32..at + 40].copy_from_slice(&(data_off as u64).to_le_bytes());
            out[at + 40..at + 48].copy_from_slice(&(f.data.len() as u64).to_le_bytes());
            out[at + 48..at + 56].copy_from_slice(&bootproto::fnv1a64(&f.data).to_le_bytes());
            out[data_off..data_off + f.data.len()].copy_from_slice(&f.data);
            data_off += f.data.len();
        }
        for (i, (inst, &(cpus_at, cmdline_at, cmdline_len))) in
            self.instances.iter().zip(&refs).enumerate()
        {
            let at = insts_at + i * INSTANCE_LEN;
            let e = &mut out[at..at + INSTANCE_LEN];
            put_str(&mut e[..NAME_LEN], &inst.name, "instance name")?;
            let restart: u32 = match inst.restart {
                Restart::Never => 0,
                Restart::OnFailure => 1,
            };
            let flags = if inst.protocol_version == 1 { FLAG_PROTOCOL_V1 } else { 0 };
            let protocol: u32 = match inst.protocol {
                Protocol::Multikernel => 0,
                Protocol::Linux => 1,
                Protocol::None => 2,
            };
            let devices = inst.devices.iter().fold(0, |b, u| b | u.bit());
            let words: [(usize, u32); 13] = [
                (32, inst.file),
                (36, flags),
                (56, restart),
                (60, inst.max_restarts),
                (64, inst.heartbeat_timeout_ms),
                (68, protocol),
                (72, inst.cpus.count() as u32),
                (76, cpus_at),
                (80, devices),
                (84, inst.initrd.unwrap_or(NONE)),
                (88, cmdline_at),
                (92, cmdline_len),
                (352, 0),
            ];
            for (off, v) in words {
                e[off..off + 4].copy_from_slice(&v.to_le_bytes());
            }
            e[40..48].copy_from_slice(&inst.memory.to_le_bytes());
            e[48..56].copy_from_slice(&inst.base.unwrap_or(0).to_le_bytes());
            put_str(&mut e[96..96 + ARGS_LEN], &inst.args, "instance args")?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn sample() -> Bundle {
        Bundle {
            settings: Settings {
                run_ms: 2500,
                checkin_timeout_ms: 500,
                log_level: 3,
                flags: 0,
                image_store: 1 << 20,
            },
            files: vec![
                File { name: "hello".into(), data: vec![0x7f, b'E', b'L', b'F', 1, 2, 3] },
                File { name: "c".into(), data: vec![9; 100] },
            ],
            instances: vec![
                Instance {
                    name: "a".into(),
                    file: 0,
                    cpus: Cpus::Exactly(vec![1]),
                    memory: 8 << 20,
                    base: None,
                    restart: Restart::Never,
                    max_restarts: 0,
                    heartbeat_timeout_ms: 0,
                    protocol: Protocol::Multikernel,
                    protocol_version: bootproto::PROTOCOL_VERSION,
                    devices: vec![],
                    initrd: None,
                    cmdline: String::new(),
                    args: "x=1".into(),
                },
                Instance {
                    name: "b".into(),
                    file: 1,
                    cpus: Cpus::Any(1),
                    memory: 16 << 20,
                    base: Some(0x800_0000),
                    restart: Restart::OnFailure,
                    max_restarts: 3,
                    heartbeat_timeout_ms: 500,
                    protocol: Protocol::None,
                    protocol_version: 1,
                    devices: vec![],
                    initrd: None,
                    cmdline: String::new(),
                    args: String::new(),
                },
                Instance {
                    name: "linux".into(),
                    file: 1,
                    cpus: Cpus::Exactly(vec![5, 3, 300]),
                    memory: 256 << 20,
                    base: None,
                    restart: Restart::Never,
                    max_restarts: 0,
                    heartbeat_timeout_ms: 0,
                    protocol: Protocol::Linux,
                    protocol_version: bootproto::PROTOCOL_VERSION,
                    devices: vec![Uart::Com2, Uart::Com4],
                    initrd: Some(0),
                    cmdline: "quiet loglevel=3 é".into(),
                    args: String::new(),
                },
            ],
            channels: vec![Channel {
                name: "link".into(),
                between: [2, 0],
                size: 8192,
                base: Some(0x4000_0000),
            }],
        }
    }

    #[test]
    fn encode_then_parse_round_trips() {
        let b = sample();
        let bytes = b.encode().unwrap();
        let p = parse(&bytes).unwrap();
        assert_eq!(p.settings, b.settings);
        assert_eq!(p.instances, b.instances);
        assert_eq!(p.channels, b.channels);
        assert_eq!(p.file(&bytes, 0).unwrap(), &b.files[0].data[..]);
        assert_eq!(p.file(&bytes, 1).unwrap(), &b.files[1].data[..]);
        assert_eq!(p.file(&bytes, 2), Err(FileError::NoSuchFile { index: 2, count: 2 }));
    }

    #[test]
    fn a_corrupted_image_fails_only_itself() {
        let mut bytes = sample().encode().unwrap();
        let p = parse(&bytes).unwrap();
        let off = p.files[1].offset as usize;
        bytes[off + 10] ^= 0xff;
        assert!(matches!(p.file(&bytes, 1), Err(FileError::ChecksumMismatch { .. })));
        assert!(p.file(&bytes, 0).is_ok());
    }

    #[test]
    fn structural_damage_is_reported_specifically() {
        let good = sample().encode().unwrap();
        assert_eq!(parse(&good[..10]), Err(BundleError::TooShort { len: 10 }));
        let mut b = good.clone();
        b[0] = b'X';
        assert_eq!(parse(&b), Err(BundleError::BadMagic));
        let mut b = good.clone();
        b[8] = 9;
        assert_eq!(parse(&b), Err(BundleError::UnsupportedVersion { version: 9 }));
        assert!(matches!(parse(&good[..good.len() - 1]), Err(BundleError::LengthMismatch { .. })));
        let mut b = good.clone();
        b[16..20].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(parse(&b), Err(BundleError::TooManyFiles { count: 1000 }));
        let mut b = good.clone();
        b[20..24].copy_from_slice(&200u32.to_le_bytes());
        assert_eq!(parse(&b), Err(BundleError::TableOutOfBounds));
        // File 0's length pushed past the end.
        let mut b = good.clone();
        let at = HEADER_LEN + SETTINGS_LEN + 40;
        b[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(parse(&b), Err(BundleError::FileOutOfBounds { index: 0, .. })));
        // Restart policy 7.
        let mut b = good.clone();
        let at = HEADER_LEN + SETTINGS_LEN + 2 * FILE_ENTRY_LEN + 56;
        b[at] = 7;
        assert_eq!(parse(&b), Err(BundleError::BadRestartPolicy { index: 0, value: 7 }));
        // The new version-2 fields: an undefined protocol, a CPU list or command line that
        // points past the extra area, device bits that name no UART, an initrd that is no file.
        let inst0 = HEADER_LEN + SETTINGS_LEN + 2 * FILE_ENTRY_LEN;
        let inst2 = inst0 + 2 * INSTANCE_LEN;
        let with = |at: usize, v: u32| {
            let mut b = good.clone();
            b[at..at + 4].copy_from_slice(&v.to_le_bytes());
            parse(&b)
        };
        assert_eq!(
            with(inst0 + 68, 9),
            Err(BundleError::BadField { index: 0, what: "protocol", value: 9 })
        );
        assert_eq!(
            with(inst0 + 72, 0),
            Err(BundleError::BadField { index: 0, what: "CPU count", value: 0 })
        );
        assert_eq!(
            with(inst2 + 76, 1 << 20),
            Err(BundleError::ExtraOutOfBounds { index: 2, what: "CPU list" })
        );
        assert_eq!(
            with(inst2 + 72, 200),
            Err(BundleError::ExtraOutOfBounds { index: 2, what: "CPU list" })
        );
        assert_eq!(
            with(inst2 + 88, u32::MAX - 2),
            Err(BundleError::ExtraOutOfBounds { index: 2, what: "command line" })
        );
        assert_eq!(
            with(inst2 + 80, 0x9),
            Err(BundleError::BadField { index: 2, what: "devices", value: 9 })
        );
        assert_eq!(
            with(inst2 + 84, 2),
            Err(BundleError::BadField { index: 2, what: "initrd file", value: 2 })
        );
        // The extra area's place and size are checked against the tables.
        assert_eq!(with(32, 0), Err(BundleError::TableOutOfBounds));
        // A name with garbage after its NUL.
        let mut b = good;
        let at = HEADER_LEN + SETTINGS_LEN + 2 * FILE_ENTRY_LEN + 20;
        b[at] = b'!';
        assert_eq!(parse(&b), Err(BundleError::BadString { what: "instance name", index: 0 }));
    }

    #[test]
    fn parse_never_panics_on_mutations() {
        let good = sample().encode().unwrap();
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..5000 {
            let mut b = good.clone();
            for _ in 0..4 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let i = (seed as usize) % b.len();
                b[i] = (seed >> 32) as u8;
            }
            if let Ok(p) = parse(&b) {
                for i in 0..p.files.len() as u32 {
                    let _ = p.file(&b, i);
                }
            }
        }
    }

    #[test]
    fn oversized_fields_are_refused_when_encoding() {
        let mut b = sample();
        b.instances[0].name = "x".repeat(40);
        assert!(matches!(b.encode(), Err(BundleError::FieldTooLong { what: "instance name", .. })));
        let mut b = sample();
        b.instances[0].cpus = Cpus::Exactly(vec![1; MAX_INSTANCE_CPUS + 1]);
        assert!(matches!(b.encode(), Err(BundleError::FieldTooLong { what: "CPU list", .. })));
        let mut b = sample();
        b.instances[2].cmdline = "a\0b".into();
        assert!(matches!(b.encode(), Err(BundleError::FieldTooLong { what: "command line", .. })));
    }
}
