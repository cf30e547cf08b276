//! The manager's heap: a fixed arena in the kernel image's `.bss`, managed by
//! `linked_list_allocator`.
//!
//! Keeping the arena inside the image means the bootloader has already placed it in frames
//! it marks `Bootloader`, so no planner can ever carve it for an instance; the partition plan
//! still lists it (with its physical range) so that a user can see where it is.

use linked_list_allocator::LockedHeap;

pub const HEAP_SIZE: usize = 8 * 1024 * 1024;

#[repr(C, align(4096))]
struct Arena([u8; HEAP_SIZE]);

static mut ARENA: Arena = Arena([0; HEAP_SIZE]);

#[global_allocator]
static ALLOCATOR: LockedHeap = LockedHeap::empty();

/// Hands the arena to the allocator. Call exactly once, before the first allocation.
pub fn init() {
    let start = core::ptr::addr_of_mut!(ARENA).cast::<u8>();
    // SAFETY: `ARENA` is used by nothing but the allocator, and init runs once, so the
    // allocator gets exclusive use of HEAP_SIZE valid, writable bytes for the program's life.
    unsafe { ALLOCATOR.lock().init(start, HEAP_SIZE) };
}

/// The arena's virtual range (start, end), for the partition plan.
pub fn arena_virt() -> (u64, u64) {
    let start = core::ptr::addr_of!(ARENA) as u64;
    (start, start + HEAP_SIZE as u64)
}

pub fn used_bytes() -> usize {
    ALLOCATOR.lock().used()
}
