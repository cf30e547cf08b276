//! The boot protocol between the multikernel manager and the kernels it starts.
//!
//! This crate is the contract: payload kernels depend on it (Rust payloads directly, C
//! payloads through `include/multikernel.h`, which mirrors it), and the manager fills and reads
//! these structures. `docs/boot-protocol.md` is the prose version; the two must agree, and the
//! compile-time assertions below pin every offset that the C header and the trampoline's
//! assembly rely on.
//!
//! # State at entry (protocol version 2)
//! - 64-bit long mode, paging on with the instance's own page tables: the instance's region
//!   identity-mapped, the image's virtual→physical mappings, the shared start page
//!   identity-mapped read/execute, the local APIC's register page identity-mapped uncached
//!   ([`BootInfo::lapic_base`]), and the instance's channels ([`ChannelInfo`]). Nothing of the
//!   manager's memory and nothing of another instance's region is mapped.
//! - Every CPU of the instance enters the image at the same entry point (an instance may own
//!   several CPUs: [`BootInfo::cpus`]); each has its own stack, GDT, TSS and early IDT in its
//!   own *CPU slot* page inside the region ([`layout::Layout::slot`]).
//! - Interrupts off (`IF = 0`). The slot's IDT records CPU exceptions in the status block and
//!   parks the CPU; a payload replaces it with its own when it is ready.
//! - SSE enabled (`CR4.OSFXSR`, `CR4.OSXMMEXCPT`, `CR0.MP` set, `CR0.EM` clear).
//! - The stack top is 16-byte aligned and inside the region; the entry is entered as if called:
//!   `RSP = top - 8`, and `[RSP]` holds a zero return address (so a C or Rust `extern "C"`
//!   entry function sees the alignment the System V ABI promises).
//! - `RDI` = physical (= virtual, identity-mapped) address of the [`BootInfo`], `RSI` = the
//!   index of the entering CPU in [`BootInfo::cpus`] (0 for the first CPU).
//!
//! # Versions
//! Version 2 only appends to version 1: every v1 field keeps its offset and meaning, and the
//! v1 state at entry holds (same GDT selectors, `RDI`). A kernel checks `version >=` the
//! version whose fields it reads and `size >=` the end of the last field it reads. Kernels built
//! against the v1 header checked `version == 1`; the manifest's `protocol_version = 1` makes
//! the manager write version 1 for them.
//!
//! # Shared memory
//! The boot info, the [`StatusBlock`] and the [`ConsoleRing`] live in the instance's region (its
//! top pages, [`layout`]) and are mapped in both the manager and the instance. The manager
//! treats every byte of them as untrusted: it bounds-checks indices and never follows a pointer
//! an instance wrote.
#![no_std]

use core::mem::{offset_of, size_of};
use core::sync::atomic::{AtomicU32, AtomicU64};

pub mod channel;
pub mod le;
pub mod report;
pub mod ring;

/// The one page size everything here is built on: 4 KiB (SDM Vol. 3A, "4-Level Paging").
pub const PAGE_SIZE: u64 = 4096;

/// "MKBOOTIN", little-endian.
pub const BOOT_INFO_MAGIC: u64 = u64::from_le_bytes(*b"MKBOOTIN");
/// The protocol version this crate describes.
pub const PROTOCOL_VERSION: u32 = 2;
/// `size` of a version 1 boot info (the fields up to and including `acpi_rsdp`).
pub const BOOT_INFO_V1_SIZE: u32 = 384;

pub const NAME_LEN: usize = 32;
pub const ARGS_LEN: usize = 256;

/// What the manager tells an instance at entry. Read-only for the instance.
#[repr(C)]
pub struct BootInfo {
    /// [`BOOT_INFO_MAGIC`].
    pub magic: u64,
    /// [`PROTOCOL_VERSION`] (or 1, for a kernel started with `protocol_version = 1`).
    pub version: u32,
    /// `size_of::<BootInfo>()` as the manager knows it; fields are only ever appended.
    pub size: u32,
    /// Instance name, UTF-8, NUL-padded.
    pub name: [u8; NAME_LEN],
    /// The APIC ID of the instance's first CPU (`cpus[0]`).
    pub apic_id: u32,
    pub _reserved0: u32,
    /// The instance's physical memory region (identity-mapped), boot info and shared pages
    /// included.
    pub region_base: u64,
    pub region_size: u64,
    /// A range of the loaded image (its first executable segment, after relocation) and the
    /// FNV-1a 64 checksum the manager computed over it right after loading. A payload can
    /// recompute it to prove it was loaded intact.
    pub checksum_base: u64,
    pub checksum_len: u64,
    pub checksum: u64,
    /// Argument string, UTF-8, NUL-padded.
    pub args: [u8; ARGS_LEN],
    /// Address of this instance's [`ConsoleRing`].
    pub console: u64,
    /// Address of this instance's [`StatusBlock`].
    pub status: u64,
    /// TSC frequency in Hz, as calibrated by the manager (0 if unknown).
    pub tsc_hz: u64,
    /// Physical address of the machine's ACPI RSDP (0 if none). Not mapped for the instance.
    pub acpi_rsdp: u64,
    // ---- version 2 ----
    /// How many CPUs the instance owns (entries of `cpus`).
    pub cpu_count: u32,
    pub _reserved1: u32,
    /// Address of `cpu_count` `u32` APIC IDs (in the boot info page); CPU `i` enters with
    /// `RSI = i`.
    pub cpus: u64,
    /// Physical (= virtual) address of the local APIC's 4 KiB register page, identity-mapped
    /// uncached for xAPIC use; 0 if not mapped. A CPU whose `IA32_APIC_BASE` has x2APIC mode
    /// enabled uses the x2APIC MSRs instead.
    pub lapic_base: u64,
    /// The local APIC timer's input clock in Hz (divide by 1), measured by the manager; 0 if
    /// unknown.
    pub lapic_timer_hz: u64,
    /// Address of this instance's private ACPI RSDP (mapped; it lists only the instance's
    /// CPUs and devices); 0 if none.
    pub acpi_view: u64,
    /// How many channels the instance has (entries of `channels`).
    pub channel_count: u32,
    pub _reserved2: u32,
    /// Address of `channel_count` [`ChannelInfo`] records (in the boot info page).
    pub channels: u64,
}

impl BootInfo {
    /// The boot info's bytes, field by field at their `repr(C)` offsets (little-endian), so the
    /// manager writes it without viewing a struct as bytes.
    pub fn encode(&self) -> [u8; size_of::<BootInfo>()] {
        let mut b = [0u8; size_of::<BootInfo>()];
        let mut put = |off: usize, bytes: &[u8]| b[off..off + bytes.len()].copy_from_slice(bytes);
        put(offset_of!(BootInfo, magic), &self.magic.to_le_bytes());
        put(offset_of!(BootInfo, version), &self.version.to_le_bytes());
        put(offset_of!(BootInfo, size), &self.size.to_le_bytes());
        put(offset_of!(BootInfo, name), &self.name);
        put(offset_of!(BootInfo, apic_id), &self.apic_id.to_le_bytes());
        put(offset_of!(BootInfo, region_base), &self.region_base.to_le_bytes());
        put(offset_of!(BootInfo, region_size), &self.region_size.to_le_bytes());
        put(offset_of!(BootInfo, checksum_base), &self.checksum_base.to_le_bytes());
        put(offset_of!(BootInfo, checksum_len), &self.checksum_len.to_le_bytes());
        put(offset_of!(BootInfo, checksum), &self.checksum.to_le_bytes());
        put(offset_of!(BootInfo, args), &self.args);
        put(offset_of!(BootInfo, console), &self.console.to_le_bytes());
        put(offset_of!(BootInfo, status), &self.status.to_le_bytes());
        put(offset_of!(BootInfo, tsc_hz), &self.tsc_hz.to_le_bytes());
        put(offset_of!(BootInfo, acpi_rsdp), &self.acpi_rsdp.to_le_bytes());
        put(offset_of!(BootInfo, cpu_count), &self.cpu_count.to_le_bytes());
        put(offset_of!(BootInfo, cpus), &self.cpus.to_le_bytes());
        put(offset_of!(BootInfo, lapic_base), &self.lapic_base.to_le_bytes());
        put(offset_of!(BootInfo, lapic_timer_hz), &self.lapic_timer_hz.to_le_bytes());
        put(offset_of!(BootInfo, acpi_view), &self.acpi_view.to_le_bytes());
        put(offset_of!(BootInfo, channel_count), &self.channel_count.to_le_bytes());
        put(offset_of!(BootInfo, channels), &self.channels.to_le_bytes());
        b
    }
}

/// One shared-memory channel to another instance (version 2). See `docs/boot-protocol.md`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelInfo {
    /// Channel name, UTF-8, NUL-padded.
    pub name: [u8; NAME_LEN],
    /// The peer instance's name.
    pub peer_name: [u8; NAME_LEN],
    /// Physical (= virtual) address of the channel's pages, identity-mapped read/write,
    /// no-execute, in both instances.
    pub base: u64,
    pub size: u64,
    /// The peer's first CPU (the doorbell's destination) and how many CPUs it has.
    pub peer_apic_id: u32,
    pub peer_cpu_count: u32,
    /// The interrupt vector both sides use for this channel's doorbell IPI.
    pub doorbell_vector: u32,
    /// 0 if this instance is the channel's first side (`between[0]`), 1 otherwise: which half
    /// of the channel it sends on.
    pub side: u32,
}

impl ChannelInfo {
    /// The record's bytes, field by field at their `repr(C)` offsets (little-endian).
    pub fn encode(&self) -> [u8; size_of::<ChannelInfo>()] {
        let mut b = [0u8; size_of::<ChannelInfo>()];
        let mut put = |off: usize, bytes: &[u8]| b[off..off + bytes.len()].copy_from_slice(bytes);
        put(offset_of!(ChannelInfo, name), &self.name);
        put(offset_of!(ChannelInfo, peer_name), &self.peer_name);
        put(offset_of!(ChannelInfo, base), &self.base.to_le_bytes());
        put(offset_of!(ChannelInfo, size), &self.size.to_le_bytes());
        put(offset_of!(ChannelInfo, peer_apic_id), &self.peer_apic_id.to_le_bytes());
        put(offset_of!(ChannelInfo, peer_cpu_count), &self.peer_cpu_count.to_le_bytes());
        put(offset_of!(ChannelInfo, doorbell_vector), &self.doorbell_vector.to_le_bytes());
        put(offset_of!(ChannelInfo, side), &self.side.to_le_bytes());
        b
    }
}

/// Instance states a payload (or the trampoline) writes into [`StatusBlock::state`].
pub mod state {
    /// Nothing written yet (the manager zeroes the block before start).
    pub const NONE: u32 = 0;
    /// The payload reached its entry and reported in.
    pub const RUNNING: u32 = 1;
    /// The payload ended on purpose; `exit_code` holds its code.
    pub const EXITED: u32 = 2;
    /// The CPU took an exception the payload did not handle; the fault record is valid.
    pub const FAULTED: u32 = 3;
    /// The highest defined state; anything above it is an impossible value.
    pub const MAX: u32 = FAULTED;
}

/// Per-instance status, written by the instance, read by the manager.
#[repr(C)]
pub struct StatusBlock {
    /// One of [`state`].
    pub state: AtomicU32,
    pub exit_code: AtomicU32,
    /// Incremented by the payload while it is alive.
    pub heartbeat: AtomicU64,
    /// A value the payload reports (e.g. a computed result); meaning is the payload's.
    pub result: AtomicU64,
    /// Exception record, written by the early IDT (or a payload's own handler).
    pub fault_vector: u64,
    pub fault_error_code: u64,
    pub fault_rip: u64,
    pub fault_cr2: u64,
    pub fault_rsp: u64,
    // ---- version 2 ----
    /// The APIC ID of the CPU that faulted.
    pub fault_apic_id: u32,
    pub _reserved: u32,
}

/// A single-producer (the instance) single-consumer (the manager) byte ring.
///
/// `head` and `tail` are free-running byte counters (they wrap at 2^32); the data area is
/// `capacity` bytes (a power of two) directly after this header, and byte `i` of the stream
/// lives at `data[i % capacity]`. The producer writes bytes, then publishes them by storing
/// `head` with release ordering; the consumer reads `head` with acquire ordering, copies, then
/// stores `tail`. A message that does not fit whole is dropped whole (so the lines that do
/// arrive are intact) and its length added to `dropped`: a producer never waits for the
/// manager.
#[repr(C)]
pub struct ConsoleRing {
    pub head: AtomicU32,
    pub tail: AtomicU32,
    pub capacity: u32,
    pub _reserved: u32,
    pub dropped: AtomicU64,
}

/// The data area follows the header at this offset.
pub const CONSOLE_DATA_OFFSET: usize = size_of::<ConsoleRing>();

/// Where things sit in the boot info page, after the [`BootInfo`] itself.
pub mod info_page {
    /// The `cpus` array.
    pub const CPUS_OFFSET: u64 = 0x200;
    /// The most CPUs one instance can own (the `cpus` array's room).
    pub const MAX_CPUS: usize = 256;
    /// The `channels` array.
    pub const CHANNELS_OFFSET: u64 = 0x600;
    /// The most channels one instance can have.
    pub const MAX_CHANNELS: usize = 16;
}

/// The layout of an instance's region: the shared pages and per-CPU pages at its top, the
/// image's load area below them. The manager (placing things), `cargo xtask check` (checking
/// that an image fits) and payloads (finding their pages) all use this one rule.
///
/// ```text
/// base                                                                        base + size
/// | load area ... | stacks (cpu n-1 .. 0) | slots (cpu 0 .. n-1) | console | status | boot info |
/// ```
pub mod layout {
    pub const PAGE: u64 = super::PAGE_SIZE;
    pub const BOOT_INFO_PAGES: u64 = 1;
    pub const STATUS_PAGES: u64 = 1;
    pub const CONSOLE_PAGES: u64 = 4;
    /// Pages shared with the manager, once per instance.
    pub const SHARED_PAGES: u64 = BOOT_INFO_PAGES + STATUS_PAGES + CONSOLE_PAGES;
    pub const SHARED_BYTES: u64 = SHARED_PAGES * PAGE;
    /// One CPU slot page per CPU: its GDT, TSS, early IDT and exception stack, and the
    /// parameters the start-up code reads (see the `trampoline` crate).
    pub const SLOT_BYTES: u64 = PAGE;
    /// Ring data capacity: the console pages minus the header, rounded down to a power of two.
    pub const CONSOLE_CAPACITY: u32 = 8192;
    /// Each CPU's initial stack.
    pub const DEFAULT_STACK_BYTES: u64 = 64 * 1024;

    /// Bytes at the top of a region that are not load area, for `cpus` CPUs.
    pub const fn reserved_bytes(cpus: u64) -> Option<u64> {
        let Some(per_cpu) = cpus.checked_mul(SLOT_BYTES + DEFAULT_STACK_BYTES) else {
            return None;
        };
        per_cpu.checked_add(SHARED_BYTES)
    }

    /// Where everything sits in a region `[base, base + size)` with `cpus` CPUs.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Layout {
        pub base: u64,
        pub size: u64,
        pub cpus: u64,
        pub boot_info: u64,
        pub status: u64,
        pub console: u64,
        /// CPU 0's slot; CPU `i`'s is `slots + i * SLOT_BYTES`.
        pub slots: u64,
        /// Top of CPU 0's stack (16-byte aligned); CPU `i`'s is `stacks_top - i * stack`.
        pub stacks_top: u64,
        /// Lowest byte that is not load area.
        pub reserved_start: u64,
    }

    impl Layout {
        /// `None` if the region cannot hold the shared pages, `cpus` slots and stacks and at
        /// least one page of image, if `cpus` is 0, or if the region's end overflows.
        pub const fn new(base: u64, size: u64, cpus: u64) -> Option<Layout> {
            if cpus == 0 || !base.is_multiple_of(PAGE) || !size.is_multiple_of(PAGE) {
                return None;
            }
            let Some(end) = base.checked_add(size) else { return None };
            let Some(reserved) = reserved_bytes(cpus) else { return None };
            if size < reserved + PAGE {
                return None;
            }
            let boot_info = end - BOOT_INFO_PAGES * PAGE;
            let status = boot_info - STATUS_PAGES * PAGE;
            let console = status - CONSOLE_PAGES * PAGE;
            let slots = console - cpus * SLOT_BYTES;
            let stacks_top = slots;
            Some(Layout {
                base,
                size,
                cpus,
                boot_info,
                status,
                console,
                slots,
                stacks_top,
                reserved_start: end - reserved,
            })
        }

        /// CPU `i`'s slot page.
        pub const fn slot(&self, i: u64) -> u64 {
            self.slots + i * SLOT_BYTES
        }

        /// The top of CPU `i`'s stack.
        pub const fn stack_top(&self, i: u64) -> u64 {
            self.stacks_top - i * DEFAULT_STACK_BYTES
        }

        /// The image's load area: `(base, length)`.
        pub const fn load_area(&self) -> (u64, u64) {
            (self.base, self.reserved_start - self.base)
        }

        /// The region's end.
        pub const fn end(&self) -> u64 {
            self.base + self.size
        }
    }

    /// The smallest region that holds `cpus` CPUs and one page of image.
    pub const fn min_region(cpus: u64) -> Option<u64> {
        match reserved_bytes(cpus) {
            Some(r) => r.checked_add(PAGE),
            None => None,
        }
    }
}

const _: () = {
    assert!(layout::CONSOLE_CAPACITY.is_power_of_two());
    assert!(
        CONSOLE_DATA_OFFSET as u64 + layout::CONSOLE_CAPACITY as u64
            <= layout::CONSOLE_PAGES * layout::PAGE
    );
    assert!(size_of::<BootInfo>() as u64 <= info_page::CPUS_OFFSET);
    assert!(info_page::CPUS_OFFSET + 4 * info_page::MAX_CPUS as u64 <= info_page::CHANNELS_OFFSET);
    assert!(
        info_page::CHANNELS_OFFSET + (size_of::<ChannelInfo>() * info_page::MAX_CHANNELS) as u64
            <= layout::BOOT_INFO_PAGES * layout::PAGE
    );
    // Offsets the C header (include/multikernel.h) and the trampoline depend on.
    assert!(offset_of!(BootInfo, magic) == 0);
    assert!(offset_of!(BootInfo, version) == 8);
    assert!(offset_of!(BootInfo, size) == 12);
    assert!(offset_of!(BootInfo, name) == 16);
    assert!(offset_of!(BootInfo, apic_id) == 48);
    assert!(offset_of!(BootInfo, region_base) == 56);
    assert!(offset_of!(BootInfo, region_size) == 64);
    assert!(offset_of!(BootInfo, checksum_base) == 72);
    assert!(offset_of!(BootInfo, checksum_len) == 80);
    assert!(offset_of!(BootInfo, checksum) == 88);
    assert!(offset_of!(BootInfo, args) == 96);
    assert!(offset_of!(BootInfo, console) == 352);
    assert!(offset_of!(BootInfo, status) == 360);
    assert!(offset_of!(BootInfo, tsc_hz) == 368);
    assert!(offset_of!(BootInfo, acpi_rsdp) == 376);
    assert!(BOOT_INFO_V1_SIZE as usize == 384);
    assert!(offset_of!(BootInfo, cpu_count) == 384);
    assert!(offset_of!(BootInfo, cpus) == 392);
    assert!(offset_of!(BootInfo, lapic_base) == 400);
    assert!(offset_of!(BootInfo, lapic_timer_hz) == 408);
    assert!(offset_of!(BootInfo, acpi_view) == 416);
    assert!(offset_of!(BootInfo, channel_count) == 424);
    assert!(offset_of!(BootInfo, channels) == 432);
    assert!(size_of::<BootInfo>() == 440);
    assert!(offset_of!(ChannelInfo, name) == 0);
    assert!(offset_of!(ChannelInfo, peer_name) == 32);
    assert!(offset_of!(ChannelInfo, base) == 64);
    assert!(offset_of!(ChannelInfo, size) == 72);
    assert!(offset_of!(ChannelInfo, peer_apic_id) == 80);
    assert!(offset_of!(ChannelInfo, peer_cpu_count) == 84);
    assert!(offset_of!(ChannelInfo, doorbell_vector) == 88);
    assert!(offset_of!(ChannelInfo, side) == 92);
    assert!(size_of::<ChannelInfo>() == 96);
    assert!(offset_of!(StatusBlock, state) == 0);
    assert!(offset_of!(StatusBlock, exit_code) == 4);
    assert!(offset_of!(StatusBlock, heartbeat) == 8);
    assert!(offset_of!(StatusBlock, result) == 16);
    assert!(offset_of!(StatusBlock, fault_vector) == 24);
    assert!(offset_of!(StatusBlock, fault_error_code) == 32);
    assert!(offset_of!(StatusBlock, fault_rip) == 40);
    assert!(offset_of!(StatusBlock, fault_cr2) == 48);
    assert!(offset_of!(StatusBlock, fault_rsp) == 56);
    assert!(offset_of!(StatusBlock, fault_apic_id) == 64);
    assert!(size_of::<StatusBlock>() == 72);
    assert!(offset_of!(ConsoleRing, head) == 0);
    assert!(offset_of!(ConsoleRing, tail) == 4);
    assert!(offset_of!(ConsoleRing, capacity) == 8);
    assert!(offset_of!(ConsoleRing, dropped) == 16);
    assert!(size_of::<ConsoleRing>() == 24);
};

/// FNV-1a 64's starting value (Fowler–Noll–Vo, "FNV-1a alternate algorithm").
pub const FNV1A64_START: u64 = 0xcbf2_9ce4_8422_2325;

/// Continues an FNV-1a 64 hash over `bytes`, so that a long range can be hashed in pieces
/// without holding it all: `fnv1a64_update(fnv1a64_update(FNV1A64_START, a), b)` equals
/// `fnv1a64` of `a` followed by `b`.
pub const fn fnv1a64_update(mut h: u64, bytes: &[u8]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(PRIME);
        i += 1;
    }
    h
}

/// FNV-1a, 64-bit: the image checksum.
pub const fn fnv1a64(bytes: &[u8]) -> u64 {
    fnv1a64_update(FNV1A64_START, bytes)
}

/// Copies `s` into a NUL-padded fixed field, truncating at a UTF-8 character boundary.
pub fn fill_str<const N: usize>(s: &str, out: &mut [u8; N]) {
    *out = [0; N];
    let mut n = s.len().min(N);
    while n > 0 && !s.is_char_boundary(n) {
        n -= 1;
    }
    out[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// Reads a NUL-padded fixed field back as text (up to the first NUL; invalid UTF-8 → `None`).
pub fn read_str(field: &[u8]) -> Option<&str> {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    core::str::from_utf8(&field[..end]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_reference_vectors() {
        // Reference values from the FNV authors' test suite.
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn strings_round_trip_and_truncate_on_char_boundaries() {
        let mut f = [0u8; 8];
        fill_str("hello", &mut f);
        assert_eq!(read_str(&f), Some("hello"));
        fill_str("ééééé", &mut f); // 10 bytes: truncated to 4 characters (8 bytes)
        assert_eq!(read_str(&f), Some("éééé"));
        assert_eq!(read_str(&[0xff, 0]), None);
    }

    #[test]
    fn boot_info_encodes_every_field_at_its_offset() {
        let mut info = BootInfo {
            magic: BOOT_INFO_MAGIC,
            version: PROTOCOL_VERSION,
            size: size_of::<BootInfo>() as u32,
            name: [0; NAME_LEN],
            apic_id: 7,
            _reserved0: 0,
            region_base: 0x20_0000,
            region_size: 0x40_0000,
            checksum_base: 1,
            checksum_len: 2,
            checksum: 3,
            args: [0; ARGS_LEN],
            console: 4,
            status: 5,
            tsc_hz: 6,
            acpi_rsdp: 8,
            cpu_count: 2,
            _reserved1: 0,
            cpus: 9,
            lapic_base: 10,
            lapic_timer_hz: 11,
            acpi_view: 12,
            channel_count: 1,
            _reserved2: 0,
            channels: 13,
        };
        fill_str("hello", &mut info.name);
        fill_str("a=b", &mut info.args);
        let b = info.encode();
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        assert_eq!(u64_at(0), BOOT_INFO_MAGIC);
        assert_eq!((u32_at(8), u32_at(12)), (2, 440));
        assert_eq!(read_str(&b[16..48]), Some("hello"));
        assert_eq!(u32_at(48), 7);
        assert_eq!(read_str(&b[96..352]), Some("a=b"));
        let words: [u64; 9] = [
            u64_at(72),
            u64_at(80),
            u64_at(88),
            u64_at(352),
            u64_at(360),
            u64_at(368),
            u64_at(376),
            u64_at(392),
            u64_at(400),
        ];
        assert_eq!(words, [1, 2, 3, 4, 5, 6, 8, 9, 10]);
        assert_eq!(
            (u32_at(384), u64_at(408), u64_at(416), u32_at(424), u64_at(432)),
            (2, 11, 12, 1, 13)
        );
    }

    #[test]
    fn fnv_hashes_in_pieces_as_in_one_go() {
        let data: [u8; 100] = core::array::from_fn(|i| (i * 7) as u8);
        let whole = fnv1a64(&data);
        let pieces = data.chunks(13).fold(FNV1A64_START, fnv1a64_update);
        assert_eq!(whole, pieces);
    }

    #[test]
    fn shared_pages_slots_and_stacks_sit_at_the_top_of_the_region() {
        let l = layout::Layout::new(0x200000, 0x200000, 2).unwrap();
        assert_eq!(l.boot_info, 0x3ff000);
        assert_eq!(l.status, 0x3fe000);
        assert_eq!(l.console, 0x3fa000);
        assert_eq!(l.slot(0), 0x3f8000);
        assert_eq!(l.slot(1), 0x3f9000);
        assert_eq!(l.stack_top(0), 0x3f8000);
        assert_eq!(l.stack_top(1), 0x3e8000);
        assert_eq!(l.stack_top(1) % 16, 0);
        // Two 64 KiB stacks below the slots end the reserved area.
        assert_eq!(l.reserved_start, 0x3d8000);
        assert_eq!(l.load_area(), (0x200000, 0x1d8000));
        assert_eq!(layout::reserved_bytes(1), Some(0x6000 + 0x1000 + 0x10000));
    }

    #[test]
    fn regions_too_small_or_odd_are_refused() {
        let min = layout::min_region(1).unwrap();
        assert!(layout::Layout::new(0x200000, min, 1).is_some());
        assert!(layout::Layout::new(0x200000, min - 0x1000, 1).is_none());
        assert!(layout::Layout::new(0x200000, 0x200000, 0).is_none());
        assert!(layout::Layout::new(0x200800, 0x200000, 1).is_none());
        assert!(layout::Layout::new(u64::MAX - 0xfff, 0x100000, 1).is_none());
        assert!(layout::reserved_bytes(u64::MAX).is_none());
    }
}
