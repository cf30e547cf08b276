//! The thin layer between the bootloader's view of memory and the pure planners.
//!
//! Converts the bootloader's memory map into `platform::memmap::Region`s, owns the global
//! frame allocator, and gives access to physical memory through the bootloader's complete
//! physical-memory mapping (`Mapping::Dynamic`, see `main.rs`).

use alloc::vec::Vec;

use bootloader_api::info::{MemoryRegionKind, MemoryRegions};
use platform::frames::FrameAllocator;
use platform::memmap::{Region, RegionKind};
use spin::Mutex;
use x86_64::structures::paging::{OffsetPageTable, PageTable, Translate};
use x86_64::VirtAddr;

pub static FRAMES: Mutex<Option<FrameAllocator>> = Mutex::new(None);

static PHYS_OFFSET: spin::Once<u64> = spin::Once::new();

pub fn regions_from_bootloader(map: &MemoryRegions) -> Vec<Region> {
    map.iter()
        .map(|r| {
            let kind = match r.kind {
                MemoryRegionKind::Usable => RegionKind::Usable,
                MemoryRegionKind::Bootloader => RegionKind::Bootloader,
                MemoryRegionKind::UnknownBios(t) => RegionKind::Bios(t),
                MemoryRegionKind::UnknownUefi(t) => RegionKind::Uefi(t),
                // The enum is non-exhaustive: treat anything new as reserved.
                _ => RegionKind::Bios(u32::MAX),
            };
            Region::new(r.start, r.end, kind)
        })
        .collect()
}

pub fn init(phys_offset: u64, regions: &[Region]) {
    PHYS_OFFSET.call_once(|| phys_offset);
    *FRAMES.lock() = Some(FrameAllocator::from_regions(regions));
}

pub fn phys_offset() -> u64 {
    *PHYS_OFFSET.get().expect("memory::init runs before any physical access")
}

/// Translates a virtual address of the manager's own address space to physical.
pub fn virt_to_phys(virt: u64) -> Option<u64> {
    let offset = VirtAddr::new(phys_offset());
    let (l4_frame, _) = x86_64::registers::control::Cr3::read();
    let l4_virt = offset + l4_frame.start_address().as_u64();
    let l4_ptr = l4_virt.as_mut_ptr::<PageTable>();
    // SAFETY: CR3 names the active level-4 table, which the bootloader mapped through the
    // physical-memory window at `offset`; we only read it, and the manager never changes its
    // own page tables, so no other reference mutates it meanwhile.
    let l4 = unsafe { &mut *l4_ptr };
    // SAFETY: `offset` is the start of a mapping of all physical memory, as OffsetPageTable
    // requires.
    let table = unsafe { OffsetPageTable::new(l4, offset) };
    table.translate_addr(VirtAddr::new(virt)).map(|p| p.as_u64())
}

/// The physical ranges behind a virtual range of the manager's address space, merged where
/// they are contiguous (pages the bootloader mapped one frame at a time need not be).
pub fn phys_runs(virt: u64, len: u64) -> Vec<platform::memmap::Range> {
    use platform::memmap::{align_down, Range, PAGE_SIZE};
    let mut runs: Vec<Range> = Vec::new();
    let mut page = align_down(virt, PAGE_SIZE);
    let end = virt.saturating_add(len);
    while page < end {
        if let Some(p) = virt_to_phys(page) {
            let p = align_down(p, PAGE_SIZE);
            match runs.last_mut() {
                Some(last) if last.end == p => last.end = p + PAGE_SIZE,
                _ => runs.push(Range::new(p, p + PAGE_SIZE)),
            }
        }
        page += PAGE_SIZE;
    }
    runs
}
