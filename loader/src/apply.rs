//! Phase two: carry out a [`LoadPlan`] through a [`PhysMemory`] writer.
//!
//! `apply` touches exactly the plan's region: it zero-fills every byte of it that receives no
//! file bytes (BSS, gaps between segments, and the space before and after the image, so nothing
//! of a previous occupant survives), copies each segment's file bytes, then writes each
//! relocation's value. It makes no decisions; those were made by [`crate::plan`].
//!
//! # Invariants
//! Every write it issues lies inside `plan.region()`, and every read inside `image`; both are
//! re-checked here (cheaply) so the guarantee does not depend on `plan` alone. The crate has no
//! `unsafe`: the real writer (in the kernel) owns the one place that turns addresses into
//! pointers.

use alloc::vec::Vec;

use crate::error::{ApplyError, MemoryError};
use crate::plan::LoadPlan;

/// Writes to physical memory. The kernel implements it over its physical-memory mapping;
/// tests implement it over a `Vec<u8>` standing for the region.
pub trait PhysMemory {
    /// Writes `bytes` at physical address `paddr`.
    fn write(&mut self, paddr: u64, bytes: &[u8]) -> Result<(), MemoryError>;
    /// Writes `len` copies of `byte` starting at physical address `paddr`.
    fn fill(&mut self, paddr: u64, len: u64, byte: u8) -> Result<(), MemoryError>;
}

/// Writes the image into the region as `plan` says (phase two). `image` must be the bytes
/// `plan` was made from. On error, the region is partly written. Returns the bytes zeroed.
pub fn apply(
    plan: &LoadPlan,
    image: &[u8],
    memory: &mut impl PhysMemory,
) -> Result<u64, ApplyError> {
    apply_inner(plan, image, memory, false)
}

/// Like [`apply`], for a region the caller knows to be all zero already (scrubbed and read
/// back since it was last used): writes only the file bytes and the relocations, so loading
/// costs what the image is, not what the region is. Returns 0 (bytes zeroed).
pub fn apply_to_zeroed(
    plan: &LoadPlan,
    image: &[u8],
    memory: &mut impl PhysMemory,
) -> Result<u64, ApplyError> {
    apply_inner(plan, image, memory, true)
}

fn apply_inner(
    plan: &LoadPlan,
    image: &[u8],
    memory: &mut impl PhysMemory,
    region_is_zero: bool,
) -> Result<u64, ApplyError> {
    let actual_len = image.len() as u64;
    if actual_len != plan.image_len() {
        return Err(ApplyError::ImageMismatch { planned_len: plan.image_len(), actual_len });
    }
    let region = plan.region();
    let region_end = region
        .end()
        .ok_or(ApplyError::InconsistentPlan { paddr: region.base, len: region.size })?;

    // Copies in physical order; the plan guarantees they are disjoint (checked below).
    let mut copies: Vec<_> = plan.segments().iter().filter(|s| s.file_size > 0).collect();
    copies.sort_by_key(|s| s.paddr);

    let mut zeroed = 0u64;
    let mut zero = |memory: &mut dyn PhysMemory, at: u64, len: u64| {
        if region_is_zero || len == 0 {
            return Ok(());
        }
        zeroed += len;
        memory.fill(at, len, 0)
    };
    let mut cursor = region.base;
    for s in copies {
        let inconsistent = ApplyError::InconsistentPlan { paddr: s.paddr, len: s.file_size };
        if s.paddr < cursor || !region.contains_range(s.paddr, s.file_size) {
            return Err(inconsistent);
        }
        let bytes = usize::try_from(s.file_offset)
            .ok()
            .zip(usize::try_from(s.file_size).ok())
            .and_then(|(start, len)| image.get(start..start.checked_add(len)?))
            .ok_or(inconsistent)?;
        zero(memory, cursor, s.paddr - cursor)?;
        memory.write(s.paddr, bytes)?;
        cursor = s.paddr + s.file_size; // inside the region: checked above
    }
    zero(memory, cursor, region_end - cursor)?;

    for r in plan.relocations() {
        if !region.contains_range(r.paddr, 8) {
            return Err(ApplyError::InconsistentPlan { paddr: r.paddr, len: 8 });
        }
        // System V ABI AMD64, "Relocation Types": word64 fields are little-endian.
        memory.write(r.paddr, &r.value.to_le_bytes())?;
    }
    Ok(zeroed)
}
