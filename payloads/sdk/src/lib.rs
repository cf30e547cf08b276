//! The payload SDK: what a Rust kernel needs to run as an instance under the multikernel
//! manager.
//!
//! A payload is a `#![no_std] #![no_main]` binary for `x86_64-unknown-none` (a static PIE the
//! manager's loader relocates into the instance's region) that names its main function with
//! [`entry!`]. The SDK then provides:
//!
//! - the entry point `_start`, which checks the [`BootInfo`] (magic, version, size, and that
//!   the status block and console ring lie inside the region), marks the instance
//!   [`state::RUNNING`] and calls `main(&Context)`;
//! - [`print!`]/[`println!`] into the console ring (see [`console`]), the instance's only output
//!   channel: never blocking, dropped bytes counted in the ring's `dropped`;
//! - the status block: [`heartbeat`], [`set_result`], [`exit`];
//! - a panic handler that prints the message and exits with [`PANIC_EXIT_CODE`];
//! - TSC time ([`time`]) and the image checksum check ([`Context::verify_checksum`]).
//!
//! # The environment (boot protocol version 1, `bootproto` crate docs)
//! Long mode, interrupts off, the region identity-mapped, `RDI` = boot info, no devices. The
//! SDK touches no port and no APIC: the console ring and status block are the only channels.
//!
//! # Invariants
//! - The SDK's globals are written once, in `_start`, before `main` runs, on the instance's
//!   only CPU; afterwards they are read-only. A payload is single-threaded and takes no
//!   interrupts unless it installs its own IDT, in which case its handlers must not print
//!   while the interrupted code is printing (the ring has a single producer).
//! - Until `_start` has validated the boot info, every SDK function is a no-op (printing drops,
//!   heartbeats are lost), so nothing writes through an unchecked pointer.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![feature(abi_x86_interrupt)]

pub mod console;
pub mod irq;
pub mod lapic;
pub mod time;

#[cfg(target_os = "none")]
use core::sync::atomic::AtomicBool;
use core::sync::atomic::{AtomicPtr, Ordering};

pub use bootproto;
use bootproto::{state, BootInfo, ConsoleRing, StatusBlock, BOOT_INFO_MAGIC};

/// The exit code of a payload that panicked (as Rust's test harness uses 101).
pub const PANIC_EXIT_CODE: u32 = 101;

/// The validated boot info, set once by `_start`.
static BOOT_INFO: AtomicPtr<BootInfo> = AtomicPtr::new(core::ptr::null_mut());
/// The validated status block, set once by `_start`.
static STATUS: AtomicPtr<StatusBlock> = AtomicPtr::new(core::ptr::null_mut());

/// Names the payload's main function and generates the `_start` entry point around it.
///
/// `main` takes `&Context` and returns `()` (exit code 0), a `u32` exit code, or `!` (never
/// returns). A returning main ends the instance through [`exit`].
///
/// ```ignore
/// payload_sdk::entry!(main);
/// fn main(ctx: &payload_sdk::Context) -> ! { loop { payload_sdk::heartbeat(); } }
/// ```
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        /// The instance's entry point.
        ///
        /// # Safety
        /// Entered only by the manager, once, per the boot protocol: `RDI` = the boot info,
        /// interrupts off, the stack set up as if by a call.
        #[no_mangle]
        pub unsafe extern "C" fn _start(boot_info: *const $crate::bootproto::BootInfo) -> ! {
            // SAFETY: the manager enters `_start` once, per the boot protocol, with `boot_info`
            // pointing at the instance's boot info page in identity-mapped memory (this
            // function's contract).
            let ctx = unsafe { $crate::__start(boot_info) };
            let code = $crate::Main::run($main as fn(&$crate::Context) -> _, &ctx);
            $crate::exit(code)
        }
    };
}

/// The main function signatures [`entry!`] accepts, and the exit code each one's return means.
pub trait Main {
    /// Runs main; returns its exit code (if it returns at all).
    fn run(self, ctx: &Context) -> u32;
}

/// `fn main(&Context)`: returning means exit code 0.
impl Main for fn(&Context) {
    fn run(self, ctx: &Context) -> u32 {
        self(ctx);
        0
    }
}

/// `fn main(&Context) -> u32`: the returned value is the exit code.
impl Main for fn(&Context) -> u32 {
    fn run(self, ctx: &Context) -> u32 {
        self(ctx)
    }
}

/// `fn main(&Context) -> !`: never returns.
impl Main for fn(&Context) -> ! {
    fn run(self, ctx: &Context) -> u32 {
        self(ctx)
    }
}

/// Validates the boot info and sets up the SDK. Called by the `_start` that [`entry!`] generates;
/// parks the CPU (without writing anything) if the boot info is not one this SDK understands.
///
/// # Safety
/// Must be called once, as the first thing at the instance's entry, with the `RDI` value the
/// manager passed: either null or the address of a readable, 8-byte aligned page that holds
/// the boot info and stays mapped and unchanged for the instance's lifetime.
#[doc(hidden)]
pub unsafe fn __start(boot_info: *const BootInfo) -> Context {
    if boot_info.is_null() || !boot_info.is_aligned() {
        park();
    }
    // SAFETY: non-null and aligned (checked above); the caller guarantees the manager's boot
    // info page is mapped, readable for the instance's lifetime, and never written again.
    let info: &'static BootInfo = unsafe { &*boot_info };
    if info.magic != BOOT_INFO_MAGIC || info.version < 1 || info.size < bootproto::BOOT_INFO_V1_SIZE
    {
        // A different protocol: the status block may be elsewhere, so write nothing.
        park();
    }
    let Some(region_end) = info.region_base.checked_add(info.region_size) else { park() };
    let inside = |addr: u64, len: u64, align: u64| {
        addr.is_multiple_of(align)
            && addr >= info.region_base
            && addr.checked_add(len).is_some_and(|end| end <= region_end)
    };
    let status_len = core::mem::size_of::<StatusBlock>() as u64;
    if !inside(info.status, status_len, 8) {
        park();
    }
    BOOT_INFO.store(boot_info.cast_mut(), Ordering::Relaxed);
    STATUS.store(info.status as *mut StatusBlock, Ordering::Relaxed);
    time::init(info.tsc_hz);

    let ring_addr = info.console;
    let header_len = core::mem::size_of::<ConsoleRing>() as u64;
    if inside(ring_addr, header_len, 8) {
        // SAFETY: the header lies inside the instance's identity-mapped region (checked above),
        // is 8-byte aligned, and is only accessed through its atomic fields (and `capacity`,
        // which the manager set before the start and never changes).
        let ring: &'static ConsoleRing = unsafe { &*(ring_addr as *const ConsoleRing) };
        let capacity = ring.capacity;
        let data = ring_addr + bootproto::CONSOLE_DATA_OFFSET as u64;
        if capacity.is_power_of_two() && inside(data, u64::from(capacity), 1) {
            // SAFETY: the header and `capacity` data bytes after it lie inside the region
            // (checked above), which is identity-mapped and writable for the instance's
            // lifetime, and this is the only producer (the SDK's single CPU).
            unsafe { console::init(ring, data as *mut u8, capacity) };
        }
    }
    // Version 2 names the local APIC and its timer rate: with them, waits halt.
    if info.version >= 2 && info.size as usize >= core::mem::size_of::<BootInfo>() {
        irq::init(info.lapic_base, info.lapic_timer_hz);
    }
    if let Some(status) = status_block() {
        status.state.store(state::RUNNING, Ordering::Release);
    }
    Context { info }
}

/// This CPU's APIC ID (CPUID leaf 0Bh's x2APIC ID where the CPU has that leaf, else leaf 1's
/// initial APIC ID: SDM Vol. 3A, "Identifying Logical Processors in an MP System").
pub fn cpu_apic_id() -> u32 {
    use core::arch::x86_64::__cpuid;
    if __cpuid(0).eax >= 0xB {
        __cpuid(0xB).edx
    } else {
        __cpuid(1).ebx >> 24
    }
}

/// The status block, once `_start` has validated it.
pub(crate) fn status_block() -> Option<&'static StatusBlock> {
    let p = STATUS.load(Ordering::Relaxed);
    // SAFETY: `STATUS` is either null or the status block address `__start` checked to lie,
    // aligned, inside the identity-mapped region; the block is only accessed through its
    // atomic fields here.
    unsafe { p.as_ref() }
}

/// Proves the instance alive: increments the heartbeat counter the manager watches.
pub fn heartbeat() {
    if let Some(s) = status_block() {
        s.heartbeat.fetch_add(1, Ordering::Relaxed);
    }
}

/// Reports a value to the manager (its meaning is the payload's).
pub fn set_result(value: u64) {
    if let Some(s) = status_block() {
        s.result.store(value, Ordering::Release);
    }
}

/// Ends the instance: records `code`, sets the state to [`state::EXITED`] and halts the CPU
/// forever.
pub fn exit(code: u32) -> ! {
    if let Some(s) = status_block() {
        s.exit_code.store(code, Ordering::Relaxed);
        // Release: the manager that sees EXITED also sees the code and every earlier write.
        s.state.store(state::EXITED, Ordering::Release);
    }
    park()
}

/// Halts the CPU forever with interrupts off, leaving the status block as it is.
pub fn park() -> ! {
    loop {
        // SAFETY: `cli` only clears IF; the instance owns its CPU and nothing here relies on
        // interrupts being delivered.
        unsafe { core::arch::asm!("cli", options(nomem, nostack, preserves_flags)) };
        // SAFETY: `hlt` waits for an interrupt; with IF clear only an NMI or SMI ends it, and
        // the loop halts again.
        unsafe { core::arch::asm!("hlt", options(nomem, nostack, preserves_flags)) };
    }
}

/// Why [`Context::verify_checksum`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChecksumError {
    /// The range in the boot info does not lie inside the instance's region.
    OutOfRegion { base: u64, len: u64 },
    /// The image does not hash to what the manager computed after loading it.
    Mismatch { expected: u64, actual: u64 },
}

impl core::fmt::Display for ChecksumError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            ChecksumError::OutOfRegion { base, len } => {
                write!(f, "checksum range {base:#x}+{len:#x} is outside the region")
            }
            ChecksumError::Mismatch { expected, actual } => {
                write!(f, "expected {expected:#018x}, computed {actual:#018x}")
            }
        }
    }
}

/// What `main` receives: read access to the boot info, with typed helpers.
#[derive(Clone, Copy)]
pub struct Context {
    info: &'static BootInfo,
}

impl Context {
    /// The boot info, as the manager wrote it (validated magic, version and size).
    pub fn boot_info(&self) -> &'static BootInfo {
        self.info
    }

    /// The instance name (`"?"` if it is not valid UTF-8).
    pub fn name(&self) -> &'static str {
        bootproto::read_str(&self.info.name).unwrap_or("?")
    }

    /// The whole argument string (empty if it is not valid UTF-8).
    pub fn args(&self) -> &'static str {
        bootproto::read_str(&self.info.args).unwrap_or("")
    }

    /// The arguments split at ASCII whitespace.
    pub fn arg_words(&self) -> impl Iterator<Item = &'static str> {
        self.args().split_ascii_whitespace()
    }

    /// The value of the first `key=value` argument, if any.
    pub fn arg_value(&self, key: &str) -> Option<&'static str> {
        self.arg_words().find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
    }

    /// The APIC ID of the CPU the instance runs on.
    pub fn apic_id(&self) -> u32 {
        self.info.apic_id
    }

    /// The instance's physical region (identity-mapped): `(base, size)`.
    pub fn region(&self) -> (u64, u64) {
        (self.info.region_base, self.info.region_size)
    }

    /// The TSC frequency the manager calibrated (0 if unknown; see [`time`] for the fallback).
    pub fn tsc_hz(&self) -> u64 {
        self.info.tsc_hz
    }

    /// Recomputes FNV-1a 64 over the loaded image range the boot info names and compares it
    /// with the manager's checksum. Returns the checksum when they agree.
    pub fn verify_checksum(&self) -> Result<u64, ChecksumError> {
        let (base, len) = (self.info.checksum_base, self.info.checksum_len);
        let (region_base, region_size) = self.region();
        let inside = base >= region_base
            && base
                .checked_add(len)
                .zip(region_base.checked_add(region_size))
                .is_some_and(|(end, region_end)| end <= region_end);
        let Some(len_usize) = usize::try_from(len).ok().filter(|_| inside) else {
            return Err(ChecksumError::OutOfRegion { base, len });
        };
        // SAFETY: `[base, base + len)` lies inside the instance's region (checked above), which
        // is identity-mapped and readable; the image's code is not written while it runs.
        let image = unsafe { core::slice::from_raw_parts(base as *const u8, len_usize) };
        let actual = bootproto::fnv1a64(image);
        let expected = self.info.checksum;
        if actual == expected {
            Ok(actual)
        } else {
            Err(ChecksumError::Mismatch { expected, actual })
        }
    }
}

/// Set by the first panic: a panic while reporting a panic exits without printing again.
#[cfg(target_os = "none")]
static PANICKING: AtomicBool = AtomicBool::new(false);

#[cfg(target_os = "none")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    if !PANICKING.swap(true, Ordering::Relaxed) {
        match info.location() {
            Some(l) => {
                println!("PANIC at {}:{}:{}: {}", l.file(), l.line(), l.column(), info.message())
            }
            None => println!("PANIC: {}", info.message()),
        }
    }
    exit(PANIC_EXIT_CODE)
}
