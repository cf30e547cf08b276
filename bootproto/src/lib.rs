//! The boot protocol between the multikernel manager and the kernels it starts.
//!
//! This crate is the contract: payload kernels depend on it (Rust payloads directly, C
//! payloads through `include/multikernel.h`, which mirrors it), and the manager fills and reads
//! these structures. `docs/boot-protocol.md` is the prose version; the two must agree, and the
//! compile-time assertions below pin every offset that the C header and the trampoline's
//! assembly rely on.
//!
//! # State at entry (protocol version 1)
//! - 64-bit long mode, paging on with the instance's own page tables: the instance's region
//!   identity-mapped, the image's virtual→physical mappings, the trampoline page identity-mapped.
//!   Nothing of the manager's memory and nothing of another instance's is mapped.
//! - Interrupts off (`IF = 0`). A minimal IDT is installed that records CPU exceptions in the
//!   status block and parks the CPU; a payload replaces it with its own when it is ready.
//! - SSE enabled (`CR4.OSFXSR`, `CR4.OSXMMEXCPT`, `CR0.MP` set, `CR0.EM` clear).
//! - The stack top is 16-byte aligned and inside the region; the entry is entered as if called:
//!   `RSP = top - 8`, and `[RSP]` holds a zero return address (so a C or Rust `extern "C"`
//!   entry function sees the alignment the System V ABI promises).
//! - `RDI` = physical (= virtual, identity-mapped) address of the [`BootInfo`].
//!
//! # Shared memory
//! The boot info, the [`StatusBlock`] and the [`ConsoleRing`] live in the instance's region (its
//! top pages) and are mapped in both the manager and the instance. The manager treats every
//! byte of them as untrusted: it bounds-checks indices and never follows a pointer an instance
//! wrote.
#![no_std]

use core::mem::{offset_of, size_of};
use core::sync::atomic::{AtomicU32, AtomicU64};

pub mod ring;

/// "MKBOOTIN", little-endian.
pub const BOOT_INFO_MAGIC: u64 = u64::from_le_bytes(*b"MKBOOTIN");
pub const PROTOCOL_VERSION: u32 = 1;

pub const NAME_LEN: usize = 32;
pub const ARGS_LEN: usize = 256;

/// What the manager tells an instance at entry. Read-only for the instance.
#[repr(C)]
pub struct BootInfo {
    /// [`BOOT_INFO_MAGIC`].
    pub magic: u64,
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// `size_of::<BootInfo>()` as the manager knows it; fields are only ever appended.
    pub size: u32,
    /// Instance name, UTF-8, NUL-padded.
    pub name: [u8; NAME_LEN],
    /// The APIC ID of the CPU the instance runs on.
    pub apic_id: u32,
    pub _reserved0: u32,
    /// The instance's physical memory region (identity-mapped), boot info and shared pages
    /// included.
    pub region_base: u64,
    pub region_size: u64,
    /// A range of the loaded image (its executable segments, after relocation) and the FNV-1a
    /// 64 checksum the manager computed over it right after loading. A payload can recompute
    /// it to prove it was loaded intact.
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
    /// Physical address of the ACPI RSDP (0 if none). Not mapped for the instance.
    pub acpi_rsdp: u64,
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
    /// Exception record, written by the trampoline's early IDT (or a payload's own handler).
    pub fault_vector: u64,
    pub fault_error_code: u64,
    pub fault_rip: u64,
    pub fault_cr2: u64,
    pub fault_rsp: u64,
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

/// The layout of the shared pages at the top of an instance's region, from the top down:
/// boot info page, status page, console ring pages. The stack sits right below them.
pub mod layout {
    pub const PAGE: u64 = 4096;
    pub const BOOT_INFO_PAGES: u64 = 1;
    pub const STATUS_PAGES: u64 = 1;
    pub const CONSOLE_PAGES: u64 = 4;
    pub const SHARED_PAGES: u64 = BOOT_INFO_PAGES + STATUS_PAGES + CONSOLE_PAGES;
    pub const SHARED_BYTES: u64 = SHARED_PAGES * PAGE;
    /// Ring data capacity: the console pages minus the header, rounded down to a power of two.
    pub const CONSOLE_CAPACITY: u32 = 8192;
    pub const DEFAULT_STACK_BYTES: u64 = 64 * 1024;

    /// Addresses of the shared structures for a region `[base, base + size)`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Shared {
        pub boot_info: u64,
        pub status: u64,
        pub console: u64,
        /// Lowest shared address (everything from here to the region's end is shared pages).
        pub start: u64,
        /// 16-byte aligned top of the initial stack (just below `start`).
        pub stack_top: u64,
    }

    /// `None` if the region cannot hold the shared pages and a stack.
    pub const fn shared(base: u64, size: u64, stack_bytes: u64) -> Option<Shared> {
        let Some(end) = base.checked_add(size) else { return None };
        if size < SHARED_BYTES + stack_bytes {
            return None;
        }
        let boot_info = end - BOOT_INFO_PAGES * PAGE;
        let status = boot_info - STATUS_PAGES * PAGE;
        let console = status - CONSOLE_PAGES * PAGE;
        Some(Shared { boot_info, status, console, start: console, stack_top: console })
    }
}

const _: () = {
    assert!(layout::CONSOLE_CAPACITY.is_power_of_two());
    assert!(
        CONSOLE_DATA_OFFSET as u64 + layout::CONSOLE_CAPACITY as u64
            <= layout::CONSOLE_PAGES * layout::PAGE
    );
    assert!(size_of::<BootInfo>() as u64 <= layout::BOOT_INFO_PAGES * layout::PAGE);
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
    assert!(size_of::<BootInfo>() == 384);
    assert!(offset_of!(StatusBlock, state) == 0);
    assert!(offset_of!(StatusBlock, exit_code) == 4);
    assert!(offset_of!(StatusBlock, heartbeat) == 8);
    assert!(offset_of!(StatusBlock, result) == 16);
    assert!(offset_of!(StatusBlock, fault_vector) == 24);
    assert!(offset_of!(StatusBlock, fault_error_code) == 32);
    assert!(offset_of!(StatusBlock, fault_rip) == 40);
    assert!(offset_of!(StatusBlock, fault_cr2) == 48);
    assert!(offset_of!(StatusBlock, fault_rsp) == 56);
    assert!(size_of::<StatusBlock>() == 64);
    assert!(offset_of!(ConsoleRing, head) == 0);
    assert!(offset_of!(ConsoleRing, tail) == 4);
    assert!(offset_of!(ConsoleRing, capacity) == 8);
    assert!(offset_of!(ConsoleRing, dropped) == 16);
    assert!(size_of::<ConsoleRing>() == 24);
};

/// FNV-1a, 64-bit (Fowler–Noll–Vo, "FNV-1a alternate algorithm"): the image checksum.
pub const fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET_BASIS;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(PRIME);
        i += 1;
    }
    h
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
    fn shared_pages_sit_at_the_top_of_the_region() {
        let s = layout::shared(0x200000, 0x200000, layout::DEFAULT_STACK_BYTES).unwrap();
        assert_eq!(s.boot_info, 0x3ff000);
        assert_eq!(s.status, 0x3fe000);
        assert_eq!(s.console, 0x3fa000);
        assert_eq!(s.stack_top % 16, 0);
        assert!(layout::shared(0x200000, 0x4000, 0x1000).is_none());
        assert!(layout::shared(u64::MAX - 0x1000, 0x100000, 0).is_none());
    }
}
