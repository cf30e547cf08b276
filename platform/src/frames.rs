//! Physical frame allocator over the usable memory of a firmware map.
//!
//! The allocator keeps a sorted list of disjoint free ranges in a fixed-capacity array (it
//! works before the heap exists and never allocates). It hands out 4 KiB frames or contiguous,
//! aligned runs, takes frames back (merging neighbours), and lets the partition planner
//! [`FrameAllocator::reserve`] whole ranges so that memory carved for an instance can never be
//! handed out again.
//!
//! Low memory (below 1 MiB) is never part of the general pool: the AP trampoline page comes
//! from there, chosen explicitly by the planner, and legacy firmware structures live there.
//!
//! # Invariants
//! - `free[..len]` is sorted by start, disjoint, non-adjacent (touching ranges are merged),
//!   page-aligned, and every range is non-empty.
//! - `free_bytes()` equals the sum of the lengths of `free[..len]`.

use core::fmt;

use crate::memmap::{self, normalized_usable, Range, Region, PAGE_SIZE};

/// Memory below this address is kept out of the general pool (real-mode and legacy firmware
/// area; the SIPI start-up page must come from here: SDM Vol. 3A, "MP Initialization Protocol
/// Algorithm for MP Systems": the vector names a 4 KiB page below 1 MiB).
pub const LOW_MEMORY_END: u64 = 0x10_0000;

/// How many disjoint free ranges the allocator can track.
pub const MAX_RANGES: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// No free run of `size` bytes aligned to `align` (below `below`) exists.
    OutOfMemory { size: u64, align: u64, below: u64 },
    /// The range was not entirely free when someone tried to reserve it.
    NotFree { range: Range },
    /// Freeing this range would overlap memory that is already free (a double free).
    DoubleFree { range: Range },
    /// An address or size was not page-aligned, or was empty.
    Misaligned { range: Range },
    /// Splitting a range needs one more slot than the allocator has.
    TooFragmented,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::OutOfMemory { size, align, below } => {
                write!(f, "no free run of {size:#x} bytes aligned to {align:#x} below {below:#x}")
            }
            FrameError::NotFree { range } => write!(f, "physical range {range} is not free"),
            FrameError::DoubleFree { range } => {
                write!(f, "physical range {range} freed twice (it overlaps free memory)")
            }
            FrameError::Misaligned { range } => {
                write!(f, "physical range {range} is empty or not 4 KiB aligned")
            }
            FrameError::TooFragmented => {
                write!(f, "free memory is split into more than {MAX_RANGES} ranges")
            }
        }
    }
}

pub struct FrameAllocator {
    free: [Range; MAX_RANGES],
    len: usize,
}

impl FrameAllocator {
    /// Builds the pool from a firmware map: its usable memory at or above 1 MiB.
    pub fn from_regions(regions: &[Region]) -> Self {
        let mut usable = [Range::new(0, 0); MAX_RANGES];
        let n = normalized_usable(regions, &mut usable);
        let mut fa = FrameAllocator { free: [Range::new(0, 0); MAX_RANGES], len: 0 };
        for r in &usable[..n] {
            let start = r.start.max(LOW_MEMORY_END);
            if start < r.end {
                fa.free[fa.len] = Range::new(start, r.end);
                fa.len += 1;
            }
        }
        fa
    }

    pub fn free_ranges(&self) -> &[Range] {
        &self.free[..self.len]
    }

    pub fn free_bytes(&self) -> u64 {
        self.free_ranges().iter().map(Range::len).sum()
    }

    pub fn free_frames(&self) -> u64 {
        self.free_bytes() / PAGE_SIZE
    }

    /// One 4 KiB frame, the lowest free one.
    pub fn allocate_frame(&mut self) -> Result<u64, FrameError> {
        self.allocate(PAGE_SIZE, PAGE_SIZE, u64::MAX)
    }

    /// The lowest free run of `size` bytes starting at a multiple of `align`, ending at or
    /// below `below`. `size` is rounded up to whole pages; `align` must be a power of two of at
    /// least 4 KiB.
    pub fn allocate(&mut self, size: u64, align: u64, below: u64) -> Result<u64, FrameError> {
        let oom = FrameError::OutOfMemory { size, align, below };
        let align = align.max(PAGE_SIZE);
        if !align.is_power_of_two() || size == 0 {
            return Err(oom);
        }
        let size = memmap::align_up(size, PAGE_SIZE).ok_or(oom)?;
        let found = self.free_ranges().iter().find_map(|r| {
            let start = memmap::align_up(r.start, align)?;
            let end = start.checked_add(size)?;
            (end <= r.end && end <= below).then_some(start)
        });
        let start = found.ok_or(oom)?;
        self.reserve(Range::new(start, start + size))?;
        Ok(start)
    }

    /// Takes `range` out of the pool. It must be page-aligned and entirely free.
    pub fn reserve(&mut self, range: Range) -> Result<(), FrameError> {
        check_aligned(range)?;
        let idx = self
            .free_ranges()
            .iter()
            .position(|r| r.contains_range(&range))
            .ok_or(FrameError::NotFree { range })?;
        let r = self.free[idx];
        let left = Range::new(r.start, range.start);
        let right = Range::new(range.end, r.end);
        match (left.is_empty(), right.is_empty()) {
            (true, true) => self.remove_at(idx),
            (false, true) => self.free[idx] = left,
            (true, false) => self.free[idx] = right,
            (false, false) => {
                if self.len == MAX_RANGES {
                    return Err(FrameError::TooFragmented);
                }
                self.free[idx] = left;
                self.insert_at(idx + 1, right);
            }
        }
        Ok(())
    }

    /// Returns `range` to the pool, merging it with free neighbours.
    pub fn free(&mut self, range: Range) -> Result<(), FrameError> {
        check_aligned(range)?;
        if self.free_ranges().iter().any(|r| r.overlaps(&range)) {
            return Err(FrameError::DoubleFree { range });
        }
        let idx = self.free_ranges().iter().position(|r| r.start > range.start).unwrap_or(self.len);
        let merges_left = idx > 0 && self.free[idx - 1].end == range.start;
        let merges_right = idx < self.len && self.free[idx].start == range.end;
        match (merges_left, merges_right) {
            (true, true) => {
                self.free[idx - 1].end = self.free[idx].end;
                self.remove_at(idx);
            }
            (true, false) => self.free[idx - 1].end = range.end,
            (false, true) => self.free[idx].start = range.start,
            (false, false) => {
                if self.len == MAX_RANGES {
                    return Err(FrameError::TooFragmented);
                }
                self.insert_at(idx, range);
            }
        }
        Ok(())
    }

    fn remove_at(&mut self, idx: usize) {
        self.free.copy_within(idx + 1..self.len, idx);
        self.len -= 1;
    }

    fn insert_at(&mut self, idx: usize, r: Range) {
        self.free.copy_within(idx..self.len, idx + 1);
        self.free[idx] = r;
        self.len += 1;
    }
}

fn check_aligned(range: Range) -> Result<(), FrameError> {
    if range.is_empty()
        || !range.start.is_multiple_of(PAGE_SIZE)
        || !range.end.is_multiple_of(PAGE_SIZE)
    {
        return Err(FrameError::Misaligned { range });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memmap::RegionKind;

    fn map() -> [Region; 4] {
        [
            Region::new(0, 0x9fc00, RegionKind::Usable),
            Region::new(0x9fc00, 0xa0000, RegionKind::Bios(2)),
            Region::new(0x100000, 0x400000, RegionKind::Bootloader),
            Region::new(0x400000, 0x2000000, RegionKind::Usable),
        ]
    }

    fn check_invariants(fa: &FrameAllocator) {
        let r = fa.free_ranges();
        for w in r.windows(2) {
            assert!(w[0].end < w[1].start, "ranges must be sorted, disjoint, non-adjacent: {r:?}");
        }
        assert!(r
            .iter()
            .all(|x| !x.is_empty() && x.start % PAGE_SIZE == 0 && x.end % PAGE_SIZE == 0));
    }

    #[test]
    fn pool_excludes_low_memory_and_non_usable() {
        let fa = FrameAllocator::from_regions(&map());
        assert_eq!(fa.free_ranges(), &[Range::new(0x400000, 0x2000000)]);
        assert_eq!(fa.free_frames(), (0x2000000 - 0x400000) / PAGE_SIZE);
    }

    #[test]
    fn allocation_is_lowest_first_aligned_and_bounded() {
        let mut fa = FrameAllocator::from_regions(&map());
        assert_eq!(fa.allocate_frame(), Ok(0x400000));
        assert_eq!(fa.allocate(0x200000, 0x200000, u64::MAX), Ok(0x600000));
        assert_eq!(fa.allocate_frame(), Ok(0x401000));
        assert_eq!(
            fa.allocate(0x10_0000_0000, PAGE_SIZE, u64::MAX),
            Err(FrameError::OutOfMemory {
                size: 0x10_0000_0000,
                align: PAGE_SIZE,
                below: u64::MAX
            })
        );
        assert!(fa.allocate(0x1000, PAGE_SIZE, 0x400000).is_err(), "nothing free below 4 MiB");
        check_invariants(&fa);
    }

    #[test]
    fn free_merges_and_restores_the_count() {
        let mut fa = FrameAllocator::from_regions(&map());
        let before = fa.free_frames();
        let a = fa.allocate_frame().unwrap();
        let b = fa.allocate(0x3000, PAGE_SIZE, u64::MAX).unwrap();
        let c = fa.allocate_frame().unwrap();
        fa.free(Range::new(b, b + 0x3000)).unwrap();
        fa.free(Range::new(a, a + PAGE_SIZE)).unwrap();
        fa.free(Range::new(c, c + PAGE_SIZE)).unwrap();
        assert_eq!(fa.free_frames(), before);
        assert_eq!(fa.free_ranges().len(), 1);
        check_invariants(&fa);
    }

    #[test]
    fn double_free_and_misalignment_are_refused() {
        let mut fa = FrameAllocator::from_regions(&map());
        let r = Range::new(0x500000, 0x501000);
        assert_eq!(fa.free(r), Err(FrameError::DoubleFree { range: r }));
        let bad = Range::new(0x500800, 0x501000);
        assert_eq!(fa.reserve(bad), Err(FrameError::Misaligned { range: bad }));
    }

    #[test]
    fn reserve_carves_out_and_refuses_what_is_not_free() {
        let mut fa = FrameAllocator::from_regions(&map());
        let r = Range::new(0x800000, 0xa00000);
        fa.reserve(r).unwrap();
        assert_eq!(
            fa.free_ranges(),
            &[Range::new(0x400000, 0x800000), Range::new(0xa00000, 0x2000000)]
        );
        assert_eq!(fa.reserve(r), Err(FrameError::NotFree { range: r }));
        // Allocation never returns carved memory.
        while let Ok(f) = fa.allocate_frame() {
            assert!(!r.overlaps(&Range::new(f, f + PAGE_SIZE)));
        }
        check_invariants(&fa);
    }

    #[test]
    fn random_alloc_free_keeps_invariants() {
        // A small deterministic LCG drives a random walk of allocations and frees.
        let mut fa = FrameAllocator::from_regions(&map());
        let total = fa.free_frames();
        let mut held: alloc::vec::Vec<Range> = alloc::vec::Vec::new();
        let mut seed = 0x1234_5678_u64;
        for _ in 0..2000 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            if seed >> 63 == 0 || held.is_empty() {
                let pages = 1 + (seed >> 40) % 8;
                if let Ok(s) = fa.allocate(pages * PAGE_SIZE, PAGE_SIZE, u64::MAX) {
                    held.push(Range::new(s, s + pages * PAGE_SIZE));
                }
            } else {
                let i = (seed >> 20) as usize % held.len();
                fa.free(held.swap_remove(i)).unwrap();
            }
            check_invariants(&fa);
        }
        for r in held.drain(..) {
            fa.free(r).unwrap();
        }
        assert_eq!(fa.free_frames(), total);
    }
}
