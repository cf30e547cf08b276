//! Physical memory through the bootloader's complete physical-memory mapping.
//!
//! [`PhysWindow`] is the one place where the manager turns a physical address into a pointer.
//! It implements the loader's `PhysMemory` and the page-table builder's `TableMemory` traits,
//! and only ever touches ranges the caller names explicitly: the instance regions, trampoline
//! pages and page-table frames the partition plan gave out, and firmware tables it reads.

use loader::{MemoryError, PhysMemory};
use platform::frames::FrameAllocator;
use platform::pagetable::{PageTableError, TableMemory};

/// The physical-memory window: `virt = phys + offset`.
#[derive(Clone, Copy)]
pub struct PhysWindow {
    offset: u64,
}

impl PhysWindow {
    pub fn new() -> Self {
        PhysWindow { offset: crate::memory::phys_offset() }
    }

    fn ptr(&self, paddr: u64) -> *mut u8 {
        (paddr + self.offset) as *mut u8
    }

    pub fn write_bytes(&self, paddr: u64, bytes: &[u8]) {
        // SAFETY: callers only name physical ranges the plan gave this manager to write
        // (instance regions, trampoline pages, page-table frames); they are mapped by the
        // physical-memory window and no Rust reference points into them.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr(paddr), bytes.len()) };
    }

    pub fn fill_bytes(&self, paddr: u64, len: u64, byte: u8) {
        // SAFETY: as in `write_bytes`.
        unsafe { core::ptr::write_bytes(self.ptr(paddr), byte, len as usize) };
    }

    pub fn read_bytes(&self, paddr: u64, out: &mut [u8]) {
        // SAFETY: as in `write_bytes`; reads of shared pages race with the instance's writes,
        // which is why everything read from an instance is treated as untrusted bytes.
        unsafe { core::ptr::copy_nonoverlapping(self.ptr(paddr), out.as_mut_ptr(), out.len()) };
    }

    pub fn read_u32(&self, paddr: u64) -> u32 {
        // SAFETY: as in `read_bytes`; 4-byte aligned volatile read of a shared word.
        unsafe { (self.ptr(paddr) as *const u32).read_volatile() }
    }

    pub fn read_u64(&self, paddr: u64) -> u64 {
        // SAFETY: as in `read_u32`, 8 bytes.
        unsafe { (self.ptr(paddr) as *const u64).read_volatile() }
    }

    pub fn write_u32(&self, paddr: u64, v: u32) {
        // SAFETY: as in `write_bytes`; 4-byte aligned volatile write of a shared word.
        unsafe { (self.ptr(paddr) as *mut u32).write_volatile(v) }
    }
}

impl PhysMemory for PhysWindow {
    fn write(&mut self, paddr: u64, bytes: &[u8]) -> Result<(), MemoryError> {
        self.write_bytes(paddr, bytes);
        Ok(())
    }

    fn fill(&mut self, paddr: u64, len: u64, byte: u8) -> Result<(), MemoryError> {
        self.fill_bytes(paddr, len, byte);
        Ok(())
    }
}

/// Page-table frames for one instance, from the plan's page-table pool.
pub struct TableFrames<'a> {
    pub window: PhysWindow,
    pub pool: &'a mut FrameAllocator,
    /// Frames handed out, so a stopped instance gives them back.
    pub used: alloc::vec::Vec<u64>,
}

impl TableMemory for TableFrames<'_> {
    fn alloc_table(&mut self) -> Result<u64, PageTableError> {
        let f = self.pool.allocate_frame().map_err(|_| PageTableError::OutOfFrames)?;
        self.window.fill_bytes(f, 4096, 0);
        self.used.push(f);
        Ok(f)
    }

    fn read_entry(&self, table: u64, index: usize) -> u64 {
        self.window.read_u64(table + index as u64 * 8)
    }

    fn write_entry(&mut self, table: u64, index: usize, entry: u64) {
        self.window.write_bytes(table + index as u64 * 8, &entry.to_le_bytes());
    }
}
