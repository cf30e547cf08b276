//! Physical memory through the bootloader's complete physical-memory mapping.
//!
//! Two layers:
//! - [`PhysWindow`] turns a physical address into a pointer. Its accessors are `unsafe fn`:
//!   the caller promises the range is memory the manager may touch that no Rust reference
//!   aliases. Only firmware-table reads (`acpi.rs`) and [`PlanMemory`] use it.
//! - [`PlanMemory`] is the safe, checked window the supervisor works through: it holds the
//!   ranges the partition plan handed out (instance regions, low slices, the start-up pages,
//!   the CPU table, the page-table pool) and refuses, with a `MemError`, any access that is not
//!   entirely inside one of them. No careless caller can write a neighbour's memory or the
//!   manager's own without an `unsafe` block that says why.
//!
//! Bulk fills and copies use the primitive measured fastest at boot ([`crate::memspeed`]).

use alloc::vec::Vec;

use platform::memmap::Range;
use platform::supervisor::{MemError, Phys};

use crate::memspeed;

/// The physical-memory window: `virt = phys + offset`.
#[derive(Clone, Copy)]
pub struct PhysWindow {
    offset: u64,
}

impl PhysWindow {
    pub fn new() -> Self {
        PhysWindow { offset: crate::memory::phys_offset() }
    }

    /// The window's virtual address for `paddr`, if it does not overflow.
    fn ptr(&self, paddr: u64) -> Option<*mut u8> {
        paddr.checked_add(self.offset).map(|v| v as *mut u8)
    }

    /// Copies `out.len()` bytes from physical `paddr`.
    ///
    /// # Safety
    /// `[paddr, paddr + out.len())` must be RAM or firmware tables the bootloader's window maps.
    /// Another CPU may be writing it (everything read from an instance is untrusted bytes).
    pub unsafe fn read_bytes(&self, paddr: u64, out: &mut [u8]) {
        let Some(p) = self.ptr(paddr) else { return };
        // SAFETY: the caller guarantees the source is mapped; `out` is a distinct buffer.
        unsafe { memspeed::copy(out.as_mut_ptr(), p, out.len()) };
    }

    /// Copies `bytes` to physical `paddr`.
    ///
    /// # Safety
    /// `[paddr, paddr + bytes.len())` must be mapped memory the manager owns, that no Rust
    /// reference points into.
    pub unsafe fn write_bytes(&self, paddr: u64, bytes: &[u8]) {
        let Some(p) = self.ptr(paddr) else { return };
        // SAFETY: the caller guarantees the destination; `bytes` is a distinct buffer.
        unsafe { memspeed::copy(p, bytes.as_ptr(), bytes.len()) };
    }

    /// Sets `len` bytes at physical `paddr` to `byte`.
    ///
    /// # Safety
    /// As for [`PhysWindow::write_bytes`].
    pub unsafe fn fill_bytes(&self, paddr: u64, len: u64, byte: u8) {
        let Some(p) = self.ptr(paddr) else { return };
        // SAFETY: the caller guarantees the destination range.
        unsafe { memspeed::fill(p, byte, len as usize) };
    }

    /// `range` of physical memory as a byte slice for the rest of the run.
    ///
    /// # Safety
    /// `range` must be RAM the window maps that nothing else uses for the rest of the run: no
    /// other Rust reference, no [`PlanMemory`], no instance and no device may touch it, and
    /// this is called at most once for it.
    pub unsafe fn take_slice(&self, range: Range) -> Option<&'static mut [u8]> {
        let p = self.ptr(range.start)?;
        let len = usize::try_from(range.len()).ok()?;
        // SAFETY: the caller guarantees the range is mapped RAM used by nothing else; the
        // window maps it for the whole run.
        Some(unsafe { core::slice::from_raw_parts_mut(p, len) })
    }

    /// A 4-byte aligned volatile read of a shared word.
    ///
    /// # Safety
    /// As for [`PhysWindow::read_bytes`], and `paddr` must be 4-byte aligned.
    pub unsafe fn read_u32(&self, paddr: u64) -> u32 {
        let Some(p) = self.ptr(paddr) else { return 0 };
        // SAFETY: the caller guarantees a mapped, aligned word.
        unsafe { (p as *const u32).read_volatile() }
    }

    /// An 8-byte aligned volatile read of a shared word.
    ///
    /// # Safety
    /// As for [`PhysWindow::read_bytes`], and `paddr` must be 8-byte aligned.
    pub unsafe fn read_u64(&self, paddr: u64) -> u64 {
        let Some(p) = self.ptr(paddr) else { return 0 };
        // SAFETY: the caller guarantees a mapped, aligned word.
        unsafe { (p as *const u64).read_volatile() }
    }

    /// A 4-byte aligned volatile write of a shared word.
    ///
    /// # Safety
    /// As for [`PhysWindow::write_bytes`], and `paddr` must be 4-byte aligned.
    pub unsafe fn write_u32(&self, paddr: u64, v: u32) {
        let Some(p) = self.ptr(paddr) else { return };
        // SAFETY: the caller guarantees a mapped, aligned word the manager may write.
        unsafe { (p as *mut u32).write_volatile(v) }
    }
}

/// Physical memory confined to the ranges the plan handed out.
pub struct PlanMemory {
    window: PhysWindow,
    /// Sorted, the plan's carved ranges.
    allowed: Vec<Range>,
}

impl PlanMemory {
    /// A window over exactly `allowed` (the plan's carved ranges).
    pub fn new(mut allowed: Vec<Range>) -> Self {
        allowed.sort_by_key(|r| r.start);
        PlanMemory { window: PhysWindow::new(), allowed }
    }

    fn check(&self, paddr: u64, len: u64) -> Result<(), MemError> {
        let err = MemError { paddr, len };
        let end = paddr.checked_add(len).ok_or(err)?;
        // The last range starting at or below `paddr` is the only one that can hold it.
        let i = self.allowed.partition_point(|r| r.start <= paddr);
        match i.checked_sub(1).and_then(|i| self.allowed.get(i)) {
            Some(r) if end <= r.end => Ok(()),
            _ if len == 0 => Ok(()),
            _ => Err(err),
        }
    }

    fn check_word(&self, paddr: u64, size: u64) -> Result<(), MemError> {
        self.check(paddr, size)?;
        if paddr.is_multiple_of(size) {
            Ok(())
        } else {
            Err(MemError { paddr, len: size })
        }
    }
}

impl Phys for PlanMemory {
    fn read(&self, paddr: u64, out: &mut [u8]) -> Result<(), MemError> {
        self.check(paddr, out.len() as u64)?;
        // SAFETY: the range lies inside memory the plan gave the manager (checked above),
        // which the window maps; no Rust reference points into planned memory.
        unsafe { self.window.read_bytes(paddr, out) };
        Ok(())
    }

    fn write(&mut self, paddr: u64, bytes: &[u8]) -> Result<(), MemError> {
        self.check(paddr, bytes.len() as u64)?;
        // SAFETY: as in `read`; the manager owns planned memory.
        unsafe { self.window.write_bytes(paddr, bytes) };
        Ok(())
    }

    fn fill(&mut self, paddr: u64, len: u64, byte: u8) -> Result<(), MemError> {
        self.check(paddr, len)?;
        // SAFETY: as in `write`.
        unsafe { self.window.fill_bytes(paddr, len, byte) };
        Ok(())
    }

    fn read_u32(&self, paddr: u64) -> Result<u32, MemError> {
        self.check_word(paddr, 4)?;
        // SAFETY: as in `read`, and the word is aligned (checked).
        Ok(unsafe { self.window.read_u32(paddr) })
    }

    fn read_u64(&self, paddr: u64) -> Result<u64, MemError> {
        self.check_word(paddr, 8)?;
        // SAFETY: as in `read`, and the word is aligned (checked).
        Ok(unsafe { self.window.read_u64(paddr) })
    }

    fn write_u32(&mut self, paddr: u64, v: u32) -> Result<(), MemError> {
        self.check_word(paddr, 4)?;
        // SAFETY: as in `write`, and the word is aligned (checked).
        unsafe { self.window.write_u32(paddr, v) };
        Ok(())
    }

    fn first_nonzero(&self, paddr: u64, len: u64) -> Result<Option<u64>, MemError> {
        self.check(paddr, len)?;
        let Some(start) = self.window.ptr(paddr) else { return Err(MemError { paddr, len }) };
        // SAFETY: the range lies inside planned memory (checked above), mapped by the window.
        let found = unsafe { memspeed::first_nonzero(start, len as usize) };
        Ok(found.map(|i| paddr + i as u64))
    }
}
