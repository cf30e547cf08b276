//! `cargo xtask check --machine [--sysfs DIR] MANIFEST` and `cargo xtask capture-machine OUT`:
//! will this manifest run on *this* machine? Asked under any Linux on the target (a live USB),
//! before a stick is flashed.
//!
//! # What is read
//! From `/sys`, or from a directory laid out the same way (a capture, or a test's fake tree):
//! - `firmware/acpi/tables/APIC`: the raw MADT (readable by root only);
//! - `firmware/memmap/<n>/{start,end,type}`: the firmware memory map as Linux received it
//!   (`end` inclusive; `type` is Linux's name of the E820 type, `e820_type_to_string()` in
//!   arch/x86/kernel/e820.c; on UEFI machines Linux's EFI stub made that E820 map from the UEFI
//!   one);
//! - `firmware/efi`: present when Linux was booted by UEFI, so the machine boots UEFI images;
//! - `class/tty/ttyS<n>/{port,type}`: the legacy UARTs Linux probed (`type` 0 is
//!   `PORT_UNKNOWN`: nothing answered at that port), to say whether an instance's COM port is
//!   there. The manager itself does not probe them.
//!
//! # How it answers: the manager's own code
//! The manifest becomes the very bundle `cargo xtask image` packs ([`crate::manifest_bundle`]),
//! encoded and parsed back with [`platform::bundle::parse`]; the MADT goes through
//! [`platform::madt::parse`]; the plan is [`platform::supervisor::plan`], and the refusals come
//! from [`Supervisor::new`] itself, run over a machine that cannot touch memory or send an IPI
//! ([`Recorder`]): each refusal line is the `Event::Failed` the manager logs at boot, in the
//! same words. Nothing of the plan is re-implemented here.
//!
//! # What is only estimated
//! Two facts exist only at boot:
//! - **Which CPU is the bootstrap CPU** (the manager's own, never given to an instance). This
//!   takes the first enabled CPU of the MADT: platform firmware lists the boot processor first
//!   (ACPI 6.5, "Multiple APIC Description Table (MADT)").
//! - **Where the bootloader put the manager** (its image file, the ramdisk, the loaded image
//!   with its heap, its stack, page tables, boot info): it is modelled as protected ranges of a
//!   bounded size ([`estimate_manager`]) placed where the `bootloader` crate puts them, and the
//!   output says so.
//!
//! The memory map's non-usable regions keep their E820 type number (`RegionKind::Bios(n)`),
//! which is what the manager sees on a BIOS boot. On a UEFI boot it sees UEFI memory types
//! instead; only the type named in parentheses of a refusal differs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use platform::apstart::{Ipi, IpiError};
use platform::bundle::{Protocol, Uart};
use platform::madt::Inventory;
use platform::memmap::{
    align_down, align_up, normalized_usable, Range, Region, RegionKind, PAGE_SIZE,
};
use platform::partition::{Protected, Size};
use platform::supervisor::{
    self, Clock, Devices, Event, Facts, MemError, Phys, Planned, Sink, Supervisor,
};
use qemu_tests::qemu::Firmware;

use crate::build;

/// The MADT, relative to the sysfs root.
const MADT: &str = "firmware/acpi/tables/APIC";
/// The firmware memory map (`Documentation/ABI/testing/sysfs-firmware-memmap`).
const MEMMAP: &str = "firmware/memmap";
/// Present when the running Linux was booted by UEFI.
const EFI: &str = "firmware/efi";
/// The tty class, whose `ttyS<n>` entries are the legacy UARTs.
const TTY_CLASS: &str = "class/tty";

/// More memory-map entries than any firmware writes: a bound on what is read.
const MAX_MEMMAP_ENTRIES: usize = 4096;
/// More serial ports than Linux registers (`8250.nr_uarts` is at most 32 by default).
const MAX_SERIAL_PORTS: usize = 256;
/// A MADT larger than this is not one (a 300-CPU table is under 4 KiB).
const MAX_MADT_BYTES: u64 = 1 << 20;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// 1 MiB: the bootloader's frame allocator never hands out frames below it
/// (`LOWER_MEMORY_END_PAGE`, bootloader-x86_64-common `legacy_memory_region.rs`).
const LOW_MEMORY_END: u64 = MIB;
/// Where the BIOS bootloader's second stage loads the manager's ELF file, with the ramdisk
/// right after it (`KERNEL_DST`, bootloader-x86_64-bios-stage-2); its fourth stage allocates
/// frames from the end of what it loaded.
const BIOS_KERNEL_ADDRESS: u64 = 16 * MIB;
/// UEFI images: the firmware allocates the pages for the ELF file and the ramdisk; OVMF, like
/// most firmware, takes them from the top of memory below 4 GiB.
const UEFI_FILES_BELOW: u64 = 4 * GIB;

/// The manager's ELF file, bounded: 3 to 5 MiB today (`profile.release` keeps `debug = 1`).
pub const IMAGE_FILE_BOUND: u64 = 8 * MIB;
/// The manager's heap: `HEAP_SIZE` in kernel/src/heap.rs, a `.bss` arena (a test keeps the
/// two equal).
pub const HEAP_BYTES: u64 = 8 * MIB;
/// The manager's loaded segments besides the heap (code, data, the rest of `.bss`): under
/// 1 MiB today.
pub const OTHER_SEGMENTS_BOUND: u64 = 4 * MIB;
/// The manager's stack: `kernel_stack_size` in kernel/src/main.rs is 256 KiB (a test keeps it
/// below this), plus the bootloader's guard page.
pub const STACK_BOUND: u64 = MIB;
/// Boot info, the memory map handed over, the GDT, the page tables that map the image, stack,
/// ramdisk and framebuffer, the BIOS loader's configuration file.
pub const BOOT_DATA_BOUND: u64 = 2 * MIB;

/// What was read of the target machine.
#[derive(Clone, Debug)]
pub struct Target {
    /// The sysfs root it was read from.
    pub sysfs: PathBuf,
    pub firmware: Firmware,
    /// The CPU inventory as the manager builds it (BSP marked), or why the manager refuses the
    /// table.
    pub madt: Result<Inventory, String>,
    /// The firmware memory map in `firmware/memmap` order.
    pub memmap: Vec<MapEntry>,
    /// The legacy UARTs Linux probed; empty if none were listed.
    pub serial: Vec<SerialPort>,
}

/// One entry of the firmware memory map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapEntry {
    pub region: Region,
    /// Linux's name for its type ("System RAM", "Reserved", ...).
    pub type_name: String,
}

/// One `ttyS<n>` Linux registered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SerialPort {
    pub tty: String,
    pub io_base: u64,
    /// Linux's UART type: 0 (`PORT_UNKNOWN`) when nothing answered at `io_base`.
    pub uart_type: u32,
}

impl Target {
    /// Reads the machine under `sysfs` (`/sys`, or a capture laid out the same way).
    pub fn read(sysfs: &Path) -> anyhow::Result<Target> {
        let firmware = if sysfs.join(EFI).exists() { Firmware::Uefi } else { Firmware::Bios };
        let madt_path = sysfs.join(MADT);
        let bytes = read_bounded(&madt_path, MAX_MADT_BYTES).map_err(|e| {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                anyhow::anyhow!(
                    "cannot read {}: {e}: the ACPI tables are readable by root only; run this \
                     as root (e.g. `sudo -E env \"PATH=$PATH\" cargo xtask ...`)",
                    madt_path.display()
                )
            } else {
                anyhow::anyhow!("cannot read the MADT at {}: {e}", madt_path.display())
            }
        })?;
        let madt = platform::madt::parse(&bytes).map_err(|e| e.to_string()).and_then(|mut inv| {
            // The BSP is the first enabled CPU the MADT lists (see the module docs).
            if let Some(bsp) = inv.cpus.iter().find(|c| c.enabled).map(|c| c.apic_id) {
                inv.mark_bsp(bsp).map_err(|e| e.to_string())?;
            }
            Ok(inv)
        });
        Ok(Target {
            sysfs: sysfs.to_path_buf(),
            firmware,
            madt,
            memmap: read_memmap(&sysfs.join(MEMMAP))?,
            serial: read_serial(&sysfs.join(TTY_CLASS)),
        })
    }

    pub fn regions(&self) -> Vec<Region> {
        self.memmap.iter().map(|e| e.region).collect()
    }
}

/// Reads at most `limit` bytes of `path`; a longer file is an error.
fn read_bounded(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::other(format!("longer than {limit} bytes")));
    }
    Ok(bytes)
}

fn read_text(path: &Path) -> anyhow::Result<String> {
    let bytes = read_bounded(path, 4096).with_context(|| format!("reading {}", path.display()))?;
    Ok(String::from_utf8_lossy(&bytes).trim().to_string())
}

fn parse_hex(text: &str) -> Option<u64> {
    let t = text.trim();
    let digits = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")).unwrap_or(t);
    u64::from_str_radix(digits, 16).ok()
}

/// The region kind for Linux's name of an E820 type (`e820_type_to_string()`): "System RAM" is
/// usable, anything else keeps its E820 number. A name this does not know (a newer kernel's,
/// or "Unknown E820 type") is reserved: never used, as the manager treats every non-usable
/// type.
pub fn kind_of(type_name: &str) -> RegionKind {
    match type_name.trim().to_ascii_lowercase().as_str() {
        "system ram" => RegionKind::Usable,
        "acpi tables" => RegionKind::Bios(3),
        "acpi non-volatile storage" => RegionKind::Bios(4),
        "unusable memory" => RegionKind::Bios(5),
        "persistent memory" => RegionKind::Bios(7),
        "persistent memory (legacy)" => RegionKind::Bios(12),
        "soft reserved" => RegionKind::Bios(0xefff_ffff),
        _ => RegionKind::Bios(2),
    }
}

/// Reads `firmware/memmap/<n>/{start,end,type}`, in entry order.
fn read_memmap(dir: &Path) -> anyhow::Result<Vec<MapEntry>> {
    let listing = std::fs::read_dir(dir).with_context(|| {
        format!(
            "reading the firmware memory map {} (Linux provides it on x86 with \
             CONFIG_FIRMWARE_MEMMAP, which distribution kernels have)",
            dir.display()
        )
    })?;
    let mut indices = Vec::new();
    for entry in listing {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        if let Some(n) = entry.file_name().to_str().and_then(|s| s.parse::<usize>().ok()) {
            indices.push(n);
            if indices.len() > MAX_MEMMAP_ENTRIES {
                bail!("{} has more than {MAX_MEMMAP_ENTRIES} entries", dir.display());
            }
        }
    }
    if indices.is_empty() {
        bail!("{} lists no memory map entries", dir.display());
    }
    indices.sort_unstable();
    let mut map = Vec::with_capacity(indices.len());
    for n in indices {
        let entry = dir.join(n.to_string());
        let field = |name: &str| read_text(&entry.join(name));
        let (start_text, end_text) = (field("start")?, field("end")?);
        let type_name = field("type")?;
        let (Some(start), Some(end)) = (parse_hex(&start_text), parse_hex(&end_text)) else {
            bail!(
                "{}: start {start_text:?} or end {end_text:?} is not a hexadecimal address",
                entry.display()
            );
        };
        if end < start {
            bail!("{}: ends ({end:#x}) before it starts ({start:#x})", entry.display());
        }
        // `end` is the last byte; a region is half-open.
        let region = Region::new(start, end.saturating_add(1), kind_of(&type_name));
        map.push(MapEntry { region, type_name });
    }
    Ok(map)
}

/// Reads `class/tty/ttyS<n>/{port,type}`; ports whose files are missing are skipped, and a
/// missing class directory gives none (the answer then says "not probed").
fn read_serial(dir: &Path) -> Vec<SerialPort> {
    let Ok(listing) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut ports = Vec::new();
    for entry in listing.flatten().take(4 * MAX_SERIAL_PORTS) {
        let tty = entry.file_name().to_string_lossy().to_string();
        if !tty.starts_with("ttyS") || ports.len() == MAX_SERIAL_PORTS {
            continue;
        }
        let path = entry.path();
        let io_base = read_text(&path.join("port")).ok().and_then(|t| parse_hex(&t));
        let uart_type = read_text(&path.join("type")).ok().and_then(|t| t.parse::<u32>().ok());
        if let (Some(io_base), Some(uart_type)) = (io_base, uart_type) {
            ports.push(SerialPort { tty, io_base, uart_type });
        }
    }
    ports.sort_by(|a, b| a.tty.cmp(&b.tty));
    ports
}

/// What the estimate of the manager's memory is made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Estimate {
    /// The ranges, labelled, as the planner's protected ranges.
    pub protected: Vec<Protected>,
    /// Bytes of the image file and ramdisk, and of everything else.
    pub files: u64,
    pub loaded: u64,
    /// Of `loaded`: the page tables mapping all physical memory.
    pub physical_map_tables: u64,
    /// Where it does not fit this map as the bootloader needs.
    pub notes: Vec<String>,
}

impl Estimate {
    pub fn total(&self) -> u64 {
        self.files.saturating_add(self.loaded)
    }
}

/// The label of the estimated image file and ramdisk.
pub const FILES_LABEL: &str = "image file and ramdisk (estimated)";
/// The label of the estimated loaded image, heap, stack, page tables and boot data.
pub const LOADED_LABEL: &str = "heap, code, stack and page tables (estimated)";

/// Page tables for the bootloader's map of all physical memory (`Mapping::Dynamic`, 2 MiB
/// pages up to the highest address of the map and at least 4 GiB): a page directory per GiB
/// and a page-directory-pointer table per 512 GiB.
pub fn physical_map_tables(top: u64) -> u64 {
    let top = top.max(4 * GIB);
    (top.div_ceil(GIB) + top.div_ceil(512 * GIB)).saturating_mul(PAGE_SIZE)
}

/// The manager's memory on this map, as protected ranges: a conservative bound on what the
/// bootloader uses, placed where the `bootloader` crate puts it.
///
/// - Sizes: the ELF file ([`IMAGE_FILE_BOUND`]) and the ramdisk (the bundle, exactly); the
///   loaded segments ([`HEAP_BYTES`] + [`OTHER_SEGMENTS_BOUND`]), the stack
///   ([`STACK_BOUND`]), boot data ([`BOOT_DATA_BOUND`]) and the page tables of the physical
///   memory map ([`physical_map_tables`]).
/// - BIOS: the file and ramdisk at exactly 16 MiB, everything else in the usable memory right
///   above them (the fourth stage allocates upwards from the end of what the second loaded).
/// - UEFI: everything else in the lowest usable memory from 1 MiB up (the bootloader's frame
///   allocator), the file and ramdisk at the top of usable memory below 4 GiB (where the
///   firmware usually allocates them).
pub fn estimate_manager(firmware: Firmware, ramdisk_len: u64, map: &[Region]) -> Estimate {
    let top = map.iter().map(|r| r.end).max().unwrap_or(0);
    let tables = physical_map_tables(top);
    let files =
        IMAGE_FILE_BOUND.saturating_add(align_up(ramdisk_len, PAGE_SIZE).unwrap_or(u64::MAX));
    let loaded = HEAP_BYTES + OTHER_SEGMENTS_BOUND + STACK_BOUND + BOOT_DATA_BOUND + tables;
    let free = usable_ranges(map);
    let mut notes = Vec::new();
    let (file_ranges, loaded_ranges) = match firmware {
        Firmware::Bios => {
            let at = Range::new(BIOS_KERNEL_ADDRESS, BIOS_KERNEL_ADDRESS.saturating_add(files));
            if !free.iter().any(|f| f.contains_range(&at)) {
                notes.push(format!(
                    "the BIOS bootloader loads the manager's file and ramdisk at {:#x}-{:#x}, \
                     which is not all usable RAM in this map: the boot would fail",
                    at.start, at.end
                ));
            }
            let rest = subtract(&free, &[at]);
            (vec![at], take_up(&rest, at.end, loaded))
        }
        Firmware::Uefi => {
            let low = take_up(&free, LOW_MEMORY_END, loaded);
            let rest = subtract(&free, &low);
            (take_down(&rest, UEFI_FILES_BELOW, files), low)
        }
    };
    let covered = |rs: &[Range]| rs.iter().map(Range::len).sum::<u64>();
    if covered(&loaded_ranges) < loaded || covered(&file_ranges) < files {
        notes.push(format!(
            "this map has less usable RAM than the manager itself needs (about {})",
            Size(files.saturating_add(loaded))
        ));
    }
    let protected = file_ranges
        .iter()
        .map(|r| Protected::new(FILES_LABEL, r.start, r.end))
        .chain(loaded_ranges.iter().map(|r| Protected::new(LOADED_LABEL, r.start, r.end)))
        .collect();
    Estimate { protected, files, loaded, physical_map_tables: tables, notes }
}

/// The map's usable memory: sorted, disjoint, whole pages, touching runs merged.
fn usable_ranges(map: &[Region]) -> Vec<Range> {
    let mut out = vec![Range::new(0, 0); map.len().saturating_add(1)];
    let n = normalized_usable(map, &mut out);
    out.truncate(n);
    let mut merged: Vec<Range> = Vec::with_capacity(out.len());
    for r in out {
        match merged.last_mut() {
            Some(last) if last.end == r.start => last.end = r.end,
            _ => merged.push(r),
        }
    }
    merged
}

/// `free` without anything in `cut`.
fn subtract(free: &[Range], cut: &[Range]) -> Vec<Range> {
    let mut out = free.to_vec();
    for c in cut {
        out = out
            .iter()
            .flat_map(|f| {
                if !f.overlaps(c) {
                    return vec![*f];
                }
                let mut pieces = Vec::new();
                if f.start < c.start {
                    pieces.push(Range::new(f.start, c.start));
                }
                if c.end < f.end {
                    pieces.push(Range::new(c.end, f.end));
                }
                pieces
            })
            .collect();
    }
    out
}

/// `bytes` of `free` at or above `from`, lowest first (as a frame allocator hands them out).
fn take_up(free: &[Range], from: u64, bytes: u64) -> Vec<Range> {
    let mut left = bytes;
    let mut out = Vec::new();
    for f in free {
        let start = f.start.max(from);
        if left == 0 || start >= f.end {
            continue;
        }
        let len = (f.end - start).min(left);
        out.push(Range::new(start, start + len));
        left -= len;
    }
    out
}

/// `bytes` of `free` below `below`, highest first (as firmware allocates from the top).
fn take_down(free: &[Range], below: u64, bytes: u64) -> Vec<Range> {
    let mut left = bytes;
    let mut out = Vec::new();
    for f in free.iter().rev() {
        let end = align_down(f.end.min(below), PAGE_SIZE);
        if left == 0 || end <= f.start {
            continue;
        }
        let len = (end - f.start).min(left);
        out.push(Range::new(end - len, end));
        left -= len;
    }
    out.reverse();
    out
}

/// A machine for [`Supervisor::new`] that cannot do anything: every memory access is refused,
/// every IPI fails, and it records the refusals the supervisor reports. `Supervisor::new` only
/// decides and reports; it neither writes nor sends.
#[derive(Default)]
struct Recorder {
    /// `(instance, the manager's log line)` per `Event::Failed`.
    refusals: Vec<(String, String)>,
}

impl Phys for Recorder {
    fn read(&self, paddr: u64, out: &mut [u8]) -> Result<(), MemError> {
        Err(MemError { paddr, len: out.len() as u64 })
    }

    fn write(&mut self, paddr: u64, bytes: &[u8]) -> Result<(), MemError> {
        Err(MemError { paddr, len: bytes.len() as u64 })
    }

    fn fill(&mut self, paddr: u64, len: u64, _byte: u8) -> Result<(), MemError> {
        Err(MemError { paddr, len })
    }
}

impl Clock for Recorder {
    fn now_us(&self) -> u64 {
        0
    }

    fn wait_us(&mut self, _us: u64) {}

    fn tsc_to_us(&self, _tsc: u64) -> u64 {
        0
    }
}

impl Ipi for Recorder {
    fn send_init_assert(&mut self, apic_id: u32) -> Result<(), IpiError> {
        Err(IpiError::DeliveryTimeout { apic_id })
    }

    fn send_init_deassert(&mut self, apic_id: u32) -> Result<(), IpiError> {
        Err(IpiError::DeliveryTimeout { apic_id })
    }

    fn send_startup(&mut self, apic_id: u32, _vector: u8) -> Result<(), IpiError> {
        Err(IpiError::DeliveryTimeout { apic_id })
    }
}

impl Devices for Recorder {
    fn quiesce_uart(&mut self, _io_base: u16) {}
}

impl Sink for Recorder {
    fn event(&mut self, e: &Event<'_>) {
        if let Event::Failed { name, .. } = e {
            self.refusals.push((name.to_string(), e.to_string()));
        }
    }
}

/// The answer for one manifest on one machine.
#[derive(Clone, Debug)]
pub struct Answer {
    pub text: String,
    /// Instances the manager would refuse at boot.
    pub refused: usize,
}

/// `cargo xtask check --machine`: prints the answer; exits 1 if the manager would refuse any
/// instance (or the manifest itself is refused).
pub fn check(manifest: &Path, sysfs: &Path) -> anyhow::Result<ExitCode> {
    if let Err(errors) = crate::manifest::load(manifest) {
        return Ok(crate::report_manifest_errors(manifest, &errors));
    }
    let mut bundle = crate::manifest_bundle(manifest)?;
    // The bundle of `cargo xtask image`: supervise forever.
    bundle.settings.run_ms = 0;
    let bytes = bundle.encode().map_err(|e| anyhow::anyhow!("encoding the bundle: {e}"))?;
    let target = Target::read(sysfs)?;
    let answer = answer(manifest, &bytes, &target)?;
    print!("{}", answer.text);
    Ok(if answer.refused == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Plans the bundle `bytes` on `target` with the manager's code and says what it would do.
pub fn answer(manifest: &Path, bytes: &[u8], target: &Target) -> anyhow::Result<Answer> {
    let parsed = platform::bundle::parse(bytes).map_err(|e| anyhow::anyhow!("the bundle: {e}"))?;
    let regions = target.regions();
    let estimate = estimate_manager(target.firmware, bytes.len() as u64, &regions);
    let inventory = target.madt.as_ref().ok();
    let planned = supervisor::plan(&parsed, inventory, &regions, &estimate.protected);
    let facts = Facts {
        nx: true,
        init_delay: true,
        tsc_hz: 0,
        rsdp: 0,
        lapic_base: inventory.map_or(0, |i| i.local_apic_address),
        lapic_timer_hz: 0,
        checkin_timeout_ms: u64::from(parsed.settings.checkin_timeout_ms),
    };
    let sup = Supervisor::new(
        Recorder::default(),
        bytes,
        &parsed,
        trampoline::start_code(),
        facts,
        planned.clone(),
    );

    let mut s = String::new();
    write_machine(&mut s, target);
    write_estimate(&mut s, target.firmware, &estimate);
    let _ = writeln!(s, "plan for {} on this machine:", manifest.display());
    if let Ok(p) = &planned {
        write_shared(&mut s, p);
    }
    let mut refused = 0;
    for (inst, spec) in sup.instances.iter().zip(&parsed.instances) {
        match &inst.resources {
            Some(res) => {
                let _ = writeln!(s, "  OK       {}", ok_line(&inst.name, spec, res, target));
            }
            None => {
                refused += 1;
                let line = sup.m.refusals.iter().find(|(name, _)| *name == inst.name).map_or_else(
                    || format!("instance '{}': {}", inst.name, inst.reason_text()),
                    |(_, line)| line.clone(),
                );
                let _ = writeln!(s, "  REFUSED  {line}");
            }
        }
    }
    let _ = writeln!(
        s,
        "  (the images were checked by the loader when the bundle was built; the manager checks \
         them again against each region at boot)"
    );
    let fw = target.firmware.name();
    let image = build::target_dir().join("images").join(format!("multikernel-{fw}.img"));
    let image = image.strip_prefix(build::root()).unwrap_or(&image);
    let _ = writeln!(s, "\nwrite the {fw} image ({}):", image.display());
    let _ = writeln!(
        s,
        "  cargo xtask flash --device /dev/sdX --firmware {fw} --manifest {}",
        manifest.display()
    );
    let n = parsed.instances.len();
    if refused == 0 {
        let _ = writeln!(s, "check: all {n} instances would start on this machine");
    } else {
        let _ = writeln!(s, "check: {refused} of {n} instances would be refused at boot");
    }
    Ok(Answer { text: s, refused })
}

fn write_machine(s: &mut String, target: &Target) {
    let sysfs = target.sysfs.display();
    let _ = match target.firmware {
        Firmware::Uefi => writeln!(s, "machine {sysfs}: UEFI firmware ({sysfs}/{EFI} exists)"),
        Firmware::Bios => writeln!(
            s,
            "machine {sysfs}: BIOS firmware ({sysfs}/{EFI} is absent; a UEFI machine that \
             booted this Linux through CSM boots the BIOS image the same way)"
        ),
    };
    let madt_path = target.sysfs.join(MADT);
    let listing = crate::inspect::madt::to_text(&madt_path, &target.madt);
    s.push_str(listing.trim_end());
    s.push('\n');
    match &target.madt {
        Ok(inv) => match inv.bsp() {
            Some(bsp) => {
                let _ = writeln!(
                    s,
                    "  the manager runs on APIC ID {} (taken as the bootstrap CPU: the first \
                     enabled CPU listed, as ACPI asks firmware to list them); {} CPU(s) can run \
                     instances\n",
                    bsp.apic_id,
                    inv.startable_cpus().count()
                );
            }
            None => s.push_str("  no enabled CPU is listed: no bootstrap CPU\n\n"),
        },
        Err(_) => s.push_str(
            "  the manager refuses this MADT, so it has no CPU inventory and starts no instance\n\n",
        ),
    }
    let _ = writeln!(s, "memory map ({sysfs}/{MEMMAP}), as the manager will see it:");
    for e in &target.memmap {
        let _ = writeln!(s, "  {:<52} {}", e.region.to_string(), e.type_name);
    }
    let summary = platform::memmap::summarize(&target.regions());
    let low: u64 = usable_ranges(&target.regions())
        .iter()
        .filter(|r| r.start < LOW_MEMORY_END)
        .map(|r| r.end.min(LOW_MEMORY_END) - r.start)
        .sum();
    let _ = writeln!(
        s,
        "  {} usable ({} below 1 MiB), {} reserved below the top of RAM\n",
        Size(summary.usable_bytes),
        Size(low),
        Size(summary.reserved_below_top)
    );
}

fn write_estimate(s: &mut String, firmware: Firmware, e: &Estimate) {
    let where_ = match firmware {
        Firmware::Bios => "the file and ramdisk at 16 MiB, the rest right above them",
        Firmware::Uefi => {
            "the rest from 1 MiB up, the file and ramdisk at the top of RAM below 4 GiB"
        }
    };
    let _ = writeln!(
        s,
        "the manager's own memory: AN ESTIMATE (the real ranges are known only at boot), {} in \
         all, placed as the bootloader places it on {}: {where_}",
        Size(e.total()),
        firmware.name().to_uppercase()
    );
    let _ = writeln!(
        s,
        "  {} = image file (at most {}) + ramdisk (the bundle); {} = heap ({}) + other segments \
         (at most {}) + stack (at most {}) + boot data (at most {}) + physical-memory page \
         tables ({})",
        Size(e.files),
        Size(IMAGE_FILE_BOUND),
        Size(e.loaded),
        Size(HEAP_BYTES),
        Size(OTHER_SEGMENTS_BOUND),
        Size(STACK_BOUND),
        Size(BOOT_DATA_BOUND),
        Size(e.physical_map_tables)
    );
    for p in &e.protected {
        let _ = writeln!(
            s,
            "  {:#x}-{:#x} {:>10}  the manager's {}",
            p.range.start,
            p.range.end,
            Size(p.range.len()).to_string(),
            p.label
        );
    }
    for n in &e.notes {
        let _ = writeln!(s, "  note: {n}");
    }
    s.push('\n');
}

/// The start pages, page-table pool and CPU table of a plan, on one line.
fn write_shared(s: &mut String, p: &Planned) {
    let mut parts = Vec::new();
    if let (Some(start), Some(park)) = (p.plan.start_page(), p.plan.park_page()) {
        parts.push(format!("AP start page {start:#x}, parking page {park:#x}"));
    }
    if let Some(r) = p.plan.page_table_pool() {
        parts.push(format!("page-table pool {:#x}-{:#x} ({})", r.start, r.end, Size(r.len())));
    }
    if let Some(r) = p.plan.cpu_table() {
        parts.push(format!("CPU table {:#x}-{:#x} ({})", r.start, r.end, Size(r.len())));
    }
    if !parts.is_empty() {
        let _ = writeln!(s, "  manager  {}", parts.join("; "));
    }
}

fn ok_line(
    name: &str,
    spec: &platform::bundle::Instance,
    res: &supervisor::Resources,
    target: &Target,
) -> String {
    let ids: Vec<String> = res.cpus.iter().map(u32::to_string).collect();
    let cpus = match ids.len() {
        1 => format!("CPU {}", ids[0]),
        _ => format!("CPUs {}", ids.join(", ")),
    };
    let r = res.region;
    let mut line = format!(
        "instance '{name}': {cpus}, memory {:#x}-{:#x} ({})",
        r.start,
        r.end,
        Size(r.len())
    );
    if let Some(low) = res.low {
        let _ = write!(line, ", low memory {:#x}-{:#x} ({})", low.start, low.end, Size(low.len()));
    } else if spec.protocol == Protocol::Linux {
        line.push_str(", no low memory");
    }
    for d in &spec.devices {
        let _ = write!(line, ", {} ({})", d.name(), uart_presence(*d, &target.serial));
    }
    line
}

/// What Linux found at a UART's port.
fn uart_presence(uart: Uart, ports: &[SerialPort]) -> String {
    let base = u64::from(uart.io_base());
    match ports.iter().find(|p| p.io_base == base) {
        Some(p) if p.uart_type != 0 => format!("Linux found a UART at {base:#x}, {}", p.tty),
        Some(p) => format!(
            "Linux found no UART at {base:#x} ({} is type 0, unknown): its console would be silent",
            p.tty
        ),
        None => format!("not probed: Linux lists no serial port at {base:#x}"),
    }
}

/// `cargo xtask capture-machine OUT`: copies what `check --machine` reads into `out`, with
/// `uname -a` and a README line, for a bug report; `check --machine --sysfs OUT` reads it.
pub fn capture(sysfs: &Path, out: &Path) -> anyhow::Result<ExitCode> {
    if out.join("firmware").exists() {
        bail!("{} already holds a capture; give an empty or new directory", out.display());
    }
    let copy = |rel: &str| -> anyhow::Result<()> {
        let from = sysfs.join(rel);
        let to = out.join(rel);
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let bytes = read_bounded(&from, MAX_MADT_BYTES).map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                ": the ACPI tables are readable by root only; run this as root"
            } else {
                ""
            };
            anyhow::anyhow!("cannot read {}: {e}{hint}", from.display())
        })?;
        std::fs::write(&to, bytes).with_context(|| format!("writing {}", to.display()))
    };
    copy(MADT)?;
    let memmap = read_memmap(&sysfs.join(MEMMAP))?;
    let listing = std::fs::read_dir(sysfs.join(MEMMAP))?;
    let mut entries = 0;
    for entry in listing.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.parse::<usize>().is_err() {
            continue;
        }
        for field in ["start", "end", "type"] {
            copy(&format!("{MEMMAP}/{name}/{field}"))?;
        }
        entries += 1;
    }
    let efi = sysfs.join(EFI).exists();
    if efi {
        let marker = out.join(EFI).join("CAPTURED");
        std::fs::create_dir_all(out.join(EFI))?;
        std::fs::write(&marker, "/sys/firmware/efi existed on the captured machine: UEFI boot\n")
            .with_context(|| format!("writing {}", marker.display()))?;
    }
    let serial = read_serial(&sysfs.join(TTY_CLASS));
    for p in &serial {
        for field in ["port", "type"] {
            copy(&format!("{TTY_CLASS}/{}/{field}", p.tty))?;
        }
    }
    let uname = match std::process::Command::new("uname").arg("-a").output() {
        Ok(o) => String::from_utf8_lossy(&o.stdout).to_string(),
        Err(e) => format!("(uname -a failed: {e})\n"),
    };
    std::fs::write(out.join("uname.txt"), uname)?;
    std::fs::write(
        out.join("README"),
        format!(
            "What `cargo xtask capture-machine` read from {} (the MADT, the firmware memory map, \
             whether UEFI booted, the serial ports); check a manifest against it with `cargo \
             xtask check --machine --sysfs DIR MANIFEST`.\n",
            sysfs.display()
        ),
    )?;
    println!(
        "capture-machine: {}: the MADT, {entries} memory map entries ({} usable), {}, {} serial \
         port(s), uname.txt",
        out.display(),
        Size(
            platform::memmap::summarize(&memmap.iter().map(|e| e.region).collect::<Vec<_>>())
                .usable_bytes
        ),
        if efi { "UEFI" } else { "BIOS" },
        serial.len()
    );
    println!("attach it to a bug report, e.g. `tar czf machine-report.tgz -C {} .`", out.display());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QEMU q35's E820 map with 512 MiB, as Linux lists it in /sys/firmware/memmap (`end`
    /// inclusive).
    const QEMU_512M: &[(u64, u64, &str)] = &[
        (0x0, 0x9_fbff, "System RAM"),
        (0x9_fc00, 0x9_ffff, "Reserved"),
        (0xf_0000, 0xf_ffff, "Reserved"),
        (0x10_0000, 0x1ffd_efff, "System RAM"),
        (0x1ffd_f000, 0x1fff_ffff, "Reserved"),
        (0xb000_0000, 0xbfff_ffff, "Reserved"),
        (0xfed1_c000, 0xfed1_ffff, "Reserved"),
        (0xfffc_0000, 0xffff_ffff, "Reserved"),
        (0xfd_0000_0000, 0xff_ffff_ffff, "Reserved"),
    ];

    /// A scratch directory of its own for one test.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-machine-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a scratch directory");
        dir
    }

    fn madt(file: &str) -> Vec<u8> {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../platform/tests/data/madt").join(file);
        std::fs::read(&path).expect("a committed MADT")
    }

    fn write(path: &Path, bytes: impl AsRef<[u8]>) {
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("creating a directory");
        std::fs::write(path, bytes).expect("writing a file");
    }

    /// A fake sysfs tree under `dir/sys`: the MADT, the memory map, and the UEFI marker.
    fn fake_sysfs(dir: &Path, madt: &[u8], map: &[(u64, u64, &str)], uefi: bool) -> PathBuf {
        let sys = dir.join("sys");
        write(&sys.join(MADT), madt);
        for (n, (start, end, kind)) in map.iter().enumerate() {
            let entry = sys.join(MEMMAP).join(n.to_string());
            write(&entry.join("start"), format!("{start:#x}\n"));
            write(&entry.join("end"), format!("{end:#x}\n"));
            write(&entry.join("type"), format!("{kind}\n"));
        }
        if uefi {
            std::fs::create_dir_all(sys.join(EFI).join("efivars")).expect("creating efi");
        }
        sys
    }

    fn fake_serial(sys: &Path, tty: &str, port: &str, uart_type: u32) {
        write(&sys.join(TTY_CLASS).join(tty).join("port"), format!("{port}\n"));
        write(&sys.join(TTY_CLASS).join(tty).join("type"), format!("{uart_type}\n"));
    }

    /// Writes `manifest` (with a PIE ELF `pie.elf` and a bzImage `vmlinuz` beside it) and
    /// answers it for the machine under `sys`.
    fn answer_for(dir: &Path, manifest: &str, sys: &Path) -> Answer {
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../loader/fuzz/corpus/plan");
        std::fs::copy(corpus.join("crafted-pie.elf"), dir.join("pie.elf")).expect("an ELF");
        write(&dir.join("vmlinuz"), platform::bzimage::header_only_image(0x337_8000, 0x2000));
        let path = dir.join("m.toml");
        write(&path, manifest);
        let bundle = crate::manifest_bundle(&path).expect("a valid manifest");
        let bytes = bundle.encode().expect("encodes");
        let target = Target::read(sys).expect("a readable machine");
        answer(&path, &bytes, &target).expect("an answer")
    }

    fn instance(name: &str, extra: &str) -> String {
        format!("[[instance]]\nname = \"{name}\"\nimage = \"pie.elf\"\nmemory = \"8M\"\n{extra}\n")
    }

    /// The answer's line about instance `name`.
    fn line<'a>(a: &'a Answer, name: &str) -> &'a str {
        let needle = format!("instance '{name}':");
        a.text
            .lines()
            .find(|l| {
                let t = l.trim_start();
                (t.starts_with("OK") || t.starts_with("REFUSED")) && t.contains(&needle)
            })
            .unwrap_or_else(|| panic!("no line for '{name}' in:\n{}", a.text))
    }

    #[test]
    fn the_memory_map_is_read_in_entry_order_with_e820_kinds() {
        let dir = scratch("memmap");
        let names = [
            "System RAM",
            "Reserved",
            "ACPI Tables",
            "ACPI Non-volatile Storage",
            "Unusable memory",
            "Persistent Memory",
            "Persistent Memory (legacy)",
            "Soft Reserved",
            "Unknown E820 type",
            "Reserved",
            "System RAM",
        ];
        let map: Vec<(u64, u64, &str)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (i as u64 * 0x1000, i as u64 * 0x1000 + 0xfff, *n))
            .collect();
        let sys = fake_sysfs(&dir, &madt("q35-smp4.bin"), &map, false);
        let t = Target::read(&sys).expect("reads");
        let kinds: Vec<RegionKind> = t.memmap.iter().map(|e| e.region.kind).collect();
        use RegionKind::{Bios, Usable};
        assert_eq!(
            kinds,
            [
                Usable,
                Bios(2),
                Bios(3),
                Bios(4),
                Bios(5),
                Bios(7),
                Bios(12),
                Bios(0xefff_ffff),
                Bios(2),
                Bios(2),
                Usable
            ]
        );
        // Entry 10 comes after entry 9, and `end` is inclusive.
        assert_eq!(t.memmap[10].region, Region::new(0xa000, 0xb000, Usable));
        assert_eq!(t.memmap[10].type_name, "System RAM");
        assert_eq!(t.firmware, Firmware::Bios);
        let bsp: Vec<u32> = t
            .madt
            .as_ref()
            .expect("parses")
            .cpus
            .iter()
            .filter(|c| c.bsp)
            .map(|c| c.apic_id)
            .collect();
        assert_eq!(bsp, [0], "the first enabled CPU is taken as the BSP");

        write(&sys.join(MEMMAP).join("3").join("end"), "0x2ffz\n");
        let e = Target::read(&sys).expect_err("a bad address").to_string();
        assert!(e.contains("is not a hexadecimal address"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_manifest_that_fits_gets_one_ok_line_per_instance_and_the_bios_image() {
        let dir = scratch("fits");
        let sys = fake_sysfs(&dir, &madt("q35-smp4.bin"), QEMU_512M, false);
        let manifest = instance("a", "") + &instance("b", "cpu = 3") + &instance("c", "");
        let a = answer_for(&dir, &manifest, &sys);
        assert_eq!(a.refused, 0, "{}", a.text);
        assert!(
            line(&a, "a").starts_with("  OK       instance 'a': CPU 1, memory 0x"),
            "{}",
            a.text
        );
        assert!(line(&a, "b").contains("instance 'b': CPU 3, memory"), "{}", a.text);
        assert!(line(&a, "c").contains("instance 'c': CPU 2, memory"), "{}", a.text);
        for needle in [
            "machine ",
            ": BIOS firmware",
            "4 CPU(s): 4 enabled",
            "the manager runs on APIC ID 0",
            "memory map (",
            "memmap 0x0000000000100000-0x000000001ffdf000 usable",
            "AN ESTIMATE",
            "the manager's image file and ramdisk (estimated)",
            "AP start page 0x1000, parking page 0x2000",
            // target/images/ unless CARGO_TARGET_DIR says otherwise.
            "write the bios image (",
            "images/multikernel-bios.img):",
            "cargo xtask flash --device /dev/sdX --firmware bios --manifest",
            "check: all 3 instances would start on this machine",
        ] {
            assert!(a.text.contains(needle), "{needle:?} missing from:\n{}", a.text);
        }
        // Nothing is placed on the manager's estimated memory at 16 MiB.
        assert!(!a.text.contains("memory 0x1000000-"), "{}", a.text);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_uefi_machine_gets_the_uefi_image_and_the_uefi_placement() {
        let dir = scratch("uefi");
        let sys = fake_sysfs(&dir, &madt("q35-smp4.bin"), QEMU_512M, true);
        let a = answer_for(&dir, &instance("a", ""), &sys);
        assert_eq!(a.refused, 0, "{}", a.text);
        assert!(a.text.contains(": UEFI firmware ("), "{}", a.text);
        assert!(a.text.contains("write the uefi image ("), "{}", a.text);
        assert!(a.text.contains("images/multikernel-uefi.img):"), "{}", a.text);
        assert!(a.text.contains("--firmware uefi"), "{}", a.text);
        assert!(a.text.contains("0x100000-"), "the loaded part from 1 MiB: {}", a.text);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_estimate_sits_where_the_bootloader_puts_the_manager() {
        let map: Vec<Region> =
            QEMU_512M.iter().map(|(s, e, k)| Region::new(*s, e + 1, kind_of(k))).collect();
        let ramdisk = 0x18_0001; // rounds up to 0x181000
        let bios = estimate_manager(Firmware::Bios, ramdisk, &map);
        let files = IMAGE_FILE_BOUND + 0x18_1000;
        // The map reaches 1 TiB (QEMU's reserved window): 1024 page directories + 2 PDPTs.
        assert_eq!(bios.physical_map_tables, (1024 + 2) * PAGE_SIZE);
        let loaded = HEAP_BYTES
            + OTHER_SEGMENTS_BOUND
            + STACK_BOUND
            + BOOT_DATA_BOUND
            + bios.physical_map_tables;
        assert_eq!((bios.files, bios.loaded), (files, loaded));
        assert_eq!(
            bios.protected,
            [
                Protected::new(FILES_LABEL, 16 * MIB, 16 * MIB + files),
                Protected::new(LOADED_LABEL, 16 * MIB + files, 16 * MIB + files + loaded),
            ]
        );
        assert!(bios.notes.is_empty(), "{:?}", bios.notes);
        let uefi = estimate_manager(Firmware::Uefi, ramdisk, &map);
        assert_eq!(
            uefi.protected,
            [
                Protected::new(FILES_LABEL, 0x1ffd_f000 - files, 0x1ffd_f000),
                Protected::new(LOADED_LABEL, MIB, MIB + loaded),
            ]
        );
        // A map too small for the manager says so.
        let tiny = [
            Region::new(0, 0x9_f000, RegionKind::Usable),
            Region::new(MIB, 8 * MIB, RegionKind::Usable),
        ];
        let notes = estimate_manager(Firmware::Bios, 0, &tiny).notes.join("\n");
        assert!(notes.contains("the boot would fail"), "{notes}");
        assert!(notes.contains("less usable RAM than the manager itself needs"), "{notes}");
        // Holes are skipped, as the bootloader's frame allocator skips them.
        let holey = [
            Region::new(0, 0x9_f000, RegionKind::Usable),
            Region::new(MIB, 30 * MIB, RegionKind::Usable),
            Region::new(40 * MIB, GIB, RegionKind::Usable),
        ];
        let e = estimate_manager(Firmware::Bios, 0, &holey);
        let after = 16 * MIB + IMAGE_FILE_BOUND;
        assert_eq!(e.protected[1].range, Range::new(after, 30 * MIB));
        assert_eq!(e.protected[2].range.start, 40 * MIB);
        assert_eq!(e.protected[2].range.len(), e.loaded - (30 * MIB - after));
    }

    #[test]
    fn the_estimate_matches_the_managers_sources() {
        /// The value of `NAME: usize = a * b * ...;` in `source`.
        fn product(source: &str, name: &str) -> u64 {
            let line = source
                .lines()
                .find(|l| l.contains(name) && l.contains('='))
                .unwrap_or_else(|| panic!("{name} not found"));
            let expr = line.split('=').nth(1).unwrap_or("").trim().trim_end_matches(';');
            expr.split('*').map(|f| f.trim().replace('_', "").parse::<u64>().expect(f)).product()
        }
        let heap = include_str!("../../kernel/src/heap.rs");
        assert_eq!(product(heap, "pub const HEAP_SIZE"), HEAP_BYTES);
        let main = include_str!("../../kernel/src/main.rs");
        let stack = product(main, "config.kernel_stack_size");
        assert!(stack + PAGE_SIZE <= STACK_BOUND, "stack {stack} exceeds the estimate");
        // A manager built here fits the file bound.
        let kernels = build::target_dir().join("kernels");
        for k in std::fs::read_dir(kernels).into_iter().flatten().flatten() {
            if let Ok(m) = std::fs::metadata(k.path().join("kernel")) {
                assert!(m.len() <= IMAGE_FILE_BOUND, "{} is {} bytes", k.path().display(), m.len());
            }
        }
    }

    #[test]
    fn a_cpu_that_does_not_exist_is_refused_in_the_managers_words() {
        let dir = scratch("no-cpu");
        let sys = fake_sysfs(&dir, &madt("q35-smp4.bin"), QEMU_512M, false);
        let a = answer_for(&dir, &(instance("ghost", "cpu = 7") + &instance("fine", "")), &sys);
        assert_eq!(a.refused, 1, "{}", a.text);
        assert_eq!(
            line(&a, "ghost"),
            "  REFUSED  instance 'ghost': CPU 7 does not exist: the MADT lists APIC IDs 0, 1, 2, 3"
        );
        assert!(line(&a, "fine").contains("OK"), "{}", a.text);
        assert!(a.text.contains("check: 1 of 2 instances would be refused at boot"), "{}", a.text);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn more_instances_than_cpus_are_refused() {
        let dir = scratch("few-cpus");
        // A real machine's MADT: two CPUs, one of them the manager's.
        let sys = fake_sysfs(&dir, &madt("host-dev-machine.bin"), QEMU_512M, false);
        let a = answer_for(&dir, &(instance("one", "") + &instance("two", "")), &sys);
        assert_eq!(a.refused, 1, "{}", a.text);
        assert!(line(&a, "one").contains("instance 'one': CPU 1,"), "{}", a.text);
        assert_eq!(
            line(&a, "two"),
            "  REFUSED  instance 'two': no free startable CPU is left for it: the manifest asks \
             for 2 CPUs in all, and this machine has 1 that can run instances (every CPU but the \
             manager's); give fewer instances or CPUs, or use a bigger machine"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn memory_that_does_not_fit_is_refused() {
        let dir = scratch("big");
        let sys = fake_sysfs(&dir, &madt("q35-smp4.bin"), QEMU_512M, false);
        let big = "[[instance]]\nname = \"big\"\nimage = \"pie.elf\"\nmemory = \"1G\"\n";
        let a = answer_for(&dir, &(instance("small", "") + big), &sys);
        assert_eq!(a.refused, 1, "{}", a.text);
        let l = line(&a, "big");
        assert!(
            l.starts_with(
                "  REFUSED  instance 'big': memory: instance 'big' asks 1 GiB (aligned to 2 MiB); \
                 the largest free run is "
            ),
            "{l}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    const LINUX: &str = "[[instance]]\nname = \"linux\"\nprotocol = \"linux\"\n\
                         image = \"vmlinuz\"\nmemory = \"128M\"\n";

    #[test]
    fn a_linux_instance_without_low_memory_is_refused() {
        let dir = scratch("low");
        // 64 KiB of RAM below 1 MiB: room for the two start-up pages, none for Linux's slice
        // (which starts at 64 KiB).
        let mut map = QEMU_512M.to_vec();
        map[0] = (0x0, 0xffff, "System RAM");
        map[1] = (0x1_0000, 0x9_ffff, "Reserved");
        let sys = fake_sysfs(&dir, &madt("q35-smp4.bin"), &map, false);
        let a = answer_for(&dir, &(instance("native", "") + LINUX), &sys);
        assert_eq!(a.refused, 1, "{}", a.text);
        assert_eq!(
            line(&a, "linux"),
            "  REFUSED  instance 'linux': memory: instance 'linux' needs 64 KiB of memory below \
             1 MiB; none is free (the firmware map leaves no more)"
        );
        assert!(line(&a, "native").contains("OK"), "{}", a.text);

        // With all the low memory there is, Linux gets its slice.
        let dir2 = scratch("low-ok");
        let sys = fake_sysfs(&dir2, &madt("q35-smp4.bin"), QEMU_512M, false);
        let a = answer_for(&dir2, LINUX, &sys);
        assert_eq!(a.refused, 0, "{}", a.text);
        assert!(line(&a, "linux").contains(", low memory 0x10000-0x20000 (64 KiB)"), "{}", a.text);
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&dir2);
    }

    #[test]
    fn a_map_without_ram_below_1_mib_refuses_everyone() {
        let dir = scratch("no-low");
        let mut map = QEMU_512M.to_vec();
        map[0] = (0x0, 0x9_fbff, "Reserved");
        let sys = fake_sysfs(&dir, &madt("q35-smp4.bin"), &map, false);
        let a = answer_for(&dir, &(instance("native", "") + LINUX), &sys);
        assert_eq!(a.refused, 2, "{}", a.text);
        for name in ["native", "linux"] {
            assert_eq!(
                line(&a, name),
                format!(
                    "  REFUSED  instance '{name}': no memory plan: the AP start-up code needs 2 \
                     free 4 KiB pages of usable RAM below 1 MiB (the start page and the parking \
                     page); the firmware memory map leaves 0"
                )
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_fixed_base_on_reserved_or_manager_memory_is_refused() {
        let dir = scratch("fixed");
        let sys = fake_sysfs(&dir, &madt("q35-smp4.bin"), QEMU_512M, false);
        let manifest = "[[instance]]\nname = \"reserved\"\nimage = \"pie.elf\"\nmemory = \"2M\"\n\
                        base = \"0x1fe00000\"\n\n\
                        [[instance]]\nname = \"manager\"\nimage = \"pie.elf\"\nmemory = \"2M\"\n\
                        base = \"0x1000000\"\n\n"
            .to_string()
            + &instance("free", "base = \"0x8000000\"");
        let a = answer_for(&dir, &manifest, &sys);
        assert_eq!(a.refused, 2, "{}", a.text);
        assert_eq!(
            line(&a, "reserved"),
            "  REFUSED  instance 'reserved': memory: fixed base 0x1fe00000 of instance 'reserved' \
             overlaps reserved firmware memory 0x1ffdf000-0x20000000 (bios(2))"
        );
        let l = line(&a, "manager");
        assert!(
            l.starts_with(
                "  REFUSED  instance 'manager': memory: fixed base 0x1000000 of instance 'manager' \
                 overlaps the manager's image file and ramdisk (estimated) (0x1000000-0x"
            ),
            "{l}"
        );
        assert!(line(&a, "free").contains("memory 0x8000000-0x8800000 (8 MiB)"), "{}", a.text);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_madt_the_manager_refuses_leaves_no_instance_a_cpu() {
        let dir = scratch("bad-madt");
        let sys = fake_sysfs(&dir, b"APIC but not really a table", QEMU_512M, false);
        let a = answer_for(&dir, &instance("a", ""), &sys);
        assert_eq!(a.refused, 1, "{}", a.text);
        assert!(a.text.contains("APIC: REFUSED: "), "{}", a.text);
        assert_eq!(
            line(&a, "a"),
            "  REFUSED  instance 'a': no CPU inventory (the MADT could not be read); no AP can be \
             started"
        );
        std::fs::remove_file(sys.join(MADT)).expect("removing the MADT");
        let e = Target::read(&sys).expect_err("no MADT").to_string();
        assert!(e.contains("cannot read the MADT at") && e.contains("APIC"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn uarts_are_reported_as_linux_found_them() {
        let dir = scratch("uarts");
        let sys = fake_sysfs(&dir, &madt("q35-smp4.bin"), QEMU_512M, false);
        fake_serial(&sys, "ttyS0", "0x3F8", 4);
        fake_serial(&sys, "ttyS1", "0x2F8", 4);
        fake_serial(&sys, "ttyS2", "0x3E8", 0);
        let a = answer_for(&dir, &instance("io", "devices = [\"com2\", \"com3\", \"com4\"]"), &sys);
        assert_eq!(a.refused, 0, "a missing UART is not a refusal: {}", a.text);
        let l = line(&a, "io");
        assert!(l.contains(", com2 (Linux found a UART at 0x2f8, ttyS1)"), "{l}");
        assert!(l.contains(", com3 (Linux found no UART at 0x3e8 (ttyS2 is type 0"), "{l}");
        assert!(l.contains(", com4 (not probed: Linux lists no serial port at 0x2e8)"), "{l}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_capture_is_read_back_as_the_machine_it_came_from() {
        let dir = scratch("capture");
        let sys = fake_sysfs(&dir, &madt("q35-smp8.bin"), QEMU_512M, true);
        fake_serial(&sys, "ttyS1", "0x2F8", 4);
        // Things a capture must leave out.
        write(&sys.join("firmware/acpi/tables/DSDT"), b"not copied");
        write(&sys.join("firmware/efi/efivars/Boot0000"), b"not copied");
        let out = dir.join("report");
        assert_eq!(capture(&sys, &out).expect("captures"), ExitCode::SUCCESS);
        assert!(!out.join("firmware/acpi/tables/DSDT").exists());
        assert!(!out.join("firmware/efi/efivars").exists());
        assert!(out.join("uname.txt").exists() && out.join("README").exists());
        let (from, to) = (Target::read(&sys).expect("reads"), Target::read(&out).expect("reads"));
        assert_eq!(
            (from.firmware, &from.memmap, &from.serial),
            (to.firmware, &to.memmap, &to.serial)
        );
        assert_eq!(from.madt, to.madt);
        let manifest = instance("a", "cpu = 5 \ndevices = [\"com2\"]");
        let (a, b) = (answer_for(&dir, &manifest, &sys), answer_for(&dir, &manifest, &out));
        let strip = |t: &str, root: &Path| t.replace(&root.display().to_string(), "SYSFS");
        assert_eq!(strip(&a.text, &sys), strip(&b.text, &out));
        let e = capture(&sys, &out).expect_err("not over an earlier capture").to_string();
        assert!(e.contains("already holds a capture"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
