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
//! - TSC time ([`time`]) and the image checksum check ([`Context::verify_checksum`]);
//! - several CPUs: every CPU of the instance enters `_start` (`RSI` = its index in the boot
//!   info's CPU list); CPU 0 sets the SDK up and runs `main`, the others wait for it, load the
//!   SDK's IDT and timer on themselves, and run the function named with
//!   `entry!(main, secondary)` (or halt, with `entry!(main)`). See [`Context::cpu_index`].
//!
//! # The environment (boot protocol version 2, `bootproto` crate docs)
//! Long mode, interrupts off, the region identity-mapped, `RDI` = boot info, `RSI` = the CPU's
//! index, each CPU on its own stack, no devices. The SDK touches no port; it programs only the
//! local APIC timer of each CPU it runs on, for waits that halt.
//!
//! # Invariants
//! - The SDK's globals are written once, in CPU 0's `_start`, before `main` runs; afterwards
//!   they are read-only. Other CPUs read them only after CPU 0 published them (`READY`).
//! - The console ring has a single producer at a time: [`console`] takes a lock around each
//!   write (bounded: a CPU that cannot get it drops its bytes, counted), so every CPU may
//!   print, but an interrupt handler must not print while the code it interrupted prints.
//! - Until `_start` has validated the boot info, every SDK function is a no-op (printing drops,
//!   heartbeats are lost), so nothing writes through an unchecked pointer.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![feature(abi_x86_interrupt)]

pub mod channel;
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
/// Set by CPU 0 once the SDK is ready; the other CPUs wait for it.
static READY: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
/// How long another CPU waits for CPU 0 to set the SDK up before it halts.
const SECONDARY_WAIT_MS: u64 = 5_000;

/// Names the payload's main function and generates the `_start` entry point around it.
///
/// `main` takes `&Context` and returns `()` (exit code 0), a `u32` exit code, or `!` (never
/// returns). A returning main ends the instance through [`exit`].
///
/// ```ignore
/// payload_sdk::entry!(main);
/// fn main(ctx: &payload_sdk::Context) -> ! { loop { payload_sdk::heartbeat(); } }
/// ```
///
/// With a second argument, the instance's other CPUs (if it has any) run `secondary`, a
/// `fn(&Context) -> !`, once CPU 0 has set the SDK up; without one they halt.
///
/// ```ignore
/// payload_sdk::entry!(main, secondary);
/// fn secondary(ctx: &payload_sdk::Context) -> ! { /* ctx.cpu_index() >= 1 */ loop {} }
/// ```
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        $crate::entry!($main, $crate::halt_secondary);
    };
    ($main:path, $secondary:path) => {
        /// The instance's entry point, on every CPU of the instance.
        ///
        /// # Safety
        /// Entered only by the manager, once per CPU, per the boot protocol: `RDI` = the boot
        /// info, `RSI` = the CPU's index, interrupts off, the stack set up as if by a call.
        #[no_mangle]
        pub unsafe extern "C" fn _start(
            boot_info: *const $crate::bootproto::BootInfo,
            cpu_index: u64,
        ) -> ! {
            if cpu_index != 0 {
                // SAFETY: as below, for another CPU of the instance.
                let ctx = unsafe { $crate::__start_secondary(boot_info, cpu_index) };
                ($secondary as fn(&$crate::Context) -> !)(&ctx)
            }
            // SAFETY: the manager enters `_start` once on CPU 0, per the boot protocol, with
            // `boot_info` pointing at the instance's boot info page in identity-mapped memory
            // (this function's contract).
            let ctx = unsafe { $crate::__start(boot_info) };
            let code = $crate::Main::run($main as fn(&$crate::Context) -> _, &ctx);
            $crate::exit(code)
        }
    };
}

/// What the other CPUs of an instance run under `entry!(main)`: nothing (they halt).
pub fn halt_secondary(_: &Context) -> ! {
    park()
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
            // lifetime, and writes are serialised by the producer lock (`console::write_bytes`).
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
    READY.store(true, Ordering::Release);
    Context { info, cpu: 0 }
}

/// The start of every CPU but the first: waits (bounded) until CPU 0 has set the SDK up, then
/// loads the SDK's IDT and starts this CPU's timer. Halts if the boot info is not the one CPU 0
/// validated, the index is not in the boot info's CPU list, or CPU 0 never gets ready.
///
/// # Safety
/// As [`__start`], for CPU `cpu_index` of the instance.
#[doc(hidden)]
pub unsafe fn __start_secondary(boot_info: *const BootInfo, cpu_index: u64) -> Context {
    let tsc_start = time::now_ticks();
    let mut spins = 0u64;
    while !READY.load(Ordering::Acquire) {
        core::hint::spin_loop();
        spins += 1;
        // The TSC rate is not known yet (CPU 0 sets it): bound by spins as well.
        if time::us_between(tsc_start, time::now_ticks()) > SECONDARY_WAIT_MS * 1000
            || spins > 1 << 34
        {
            park();
        }
    }
    let info = BOOT_INFO.load(Ordering::Acquire);
    if info.is_null() || info.cast_const() != boot_info {
        park();
    }
    // SAFETY: CPU 0 validated this boot info and published it (READY, acquire above); the page
    // stays mapped and unchanged for the instance's lifetime.
    let info: &'static BootInfo = unsafe { &*info };
    if info.version < 2 || cpu_index >= u64::from(info.cpu_count) {
        park();
    }
    if info.size as usize >= core::mem::size_of::<BootInfo>() {
        irq::init(info.lapic_base, info.lapic_timer_hz);
    }
    Context { info, cpu: cpu_index as u32 }
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
    /// The index, in the boot info's CPU list, of the CPU this context was made on.
    cpu: u32,
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

    /// The APIC ID of the instance's first CPU (the one `main` runs on).
    pub fn apic_id(&self) -> u32 {
        self.info.apic_id
    }

    /// The index of the CPU this context belongs to in the instance's CPU list (0 for
    /// `main`'s, 1.. for the others').
    pub fn cpu_index(&self) -> u32 {
        self.cpu
    }

    /// Opens the channel the manifest named `name` (`[[channel]]`), joining it as this
    /// instance's side.
    pub fn channel(&self, name: &str) -> Result<channel::Channel, channel::OpenError> {
        let rec = channel::records(self.info)
            .iter()
            .find(|r| bootproto::read_str(&r.name) == Some(name))
            .ok_or(channel::OpenError::NoSuchChannel)?;
        channel::Channel::open(rec)
    }

    /// The names of this instance's channels.
    pub fn channel_names(&self) -> impl Iterator<Item = &'static str> {
        channel::records(self.info).iter().filter_map(|r| bootproto::read_str(&r.name))
    }

    /// How many CPUs the instance has (1 for a version 1 boot info).
    pub fn cpu_count(&self) -> u32 {
        if self.info.version >= 2 {
            self.info.cpu_count.max(1)
        } else {
            1
        }
    }

    /// The APIC ID of the instance's CPU `index`, from the boot info's CPU list (checked to lie
    /// inside the region).
    pub fn cpu_apic_id(&self, index: u32) -> Option<u32> {
        if self.info.version < 2 || index >= self.info.cpu_count {
            return (index == 0).then_some(self.info.apic_id);
        }
        let at = self.info.cpus.checked_add(4 * u64::from(index))?;
        let (base, size) = self.region();
        if at < base || at.checked_add(4)? > base.checked_add(size)? || !at.is_multiple_of(4) {
            return None;
        }
        // SAFETY: `at` is a 4-byte aligned address inside the instance's identity-mapped
        // region (checked above), in the boot info page the manager wrote before the start.
        Some(unsafe { (at as *const u32).read_volatile() })
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
