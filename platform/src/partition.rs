//! The partition planner: which physical memory each kernel instance, the AP start-up pages,
//! the CPU table and the page-table pool get.
//!
//! Input: the firmware memory map ([`Region`]s), the ranges the manager itself lives in
//! ([`Protected`]: its image, stack, heap, boot info, ramdisk, page tables), and a
//! [`PlanRequest`]. Output: a [`Plan`] listing every region with its [`Owner`], or typed reasons.
//!
//! # Design
//! - Free memory is the map's usable memory ([`normalized_usable`]: sorted, disjoint, whole
//!   pages, with anything a non-usable region also claims cut out), minus every protected range
//!   (widened to whole pages). Protected ranges usually sit inside `Bootloader` regions, but
//!   that is checked, not assumed: a protected range reported as usable is still never carved.
//! - Placement order, deterministic: (1) fixed-base instances, in request order; (2) the two AP
//!   start-up pages (the shared start page and the parking page): the lowest free 4 KiB pages
//!   below 1 MiB that can be SIPI targets; (3) each instance's low-memory slice, if it asks for
//!   one (Linux needs one for its own real-mode trampoline), lowest fit in
//!   [`LOW_SLICE_START`]..1 MiB, in request order; (4) the page-table pool and (5) the CPU table,
//!   lowest fit between 1 MiB and 4 GiB; (6) the other instances, largest first (ties in request
//!   order), each at the lowest aligned address at or above 1 MiB where it fits. Each placed
//!   region is removed from free memory before the next is placed.
//! - Low memory use does not grow with the number of CPUs: two pages, plus the slices
//!   instances ask for. Instance regions never go below 1 MiB; low memory is not part of the
//!   [`FrameAllocator`]'s pool.
//!
//! # Failures are per instance
//! A problem with one instance (bad request, fixed base on someone else's memory, no room)
//! does not fail the plan: that instance is listed in [`Plan::refused`] with an
//! [`InstanceRefusal`] and the others are still placed, so the manager can report it, skip it
//! and boot the rest. Only what every instance depends on fails the whole plan with a
//! [`PlanError`]: no room for the two start-up pages, the page-table pool or the CPU table, an
//! invalid protected range.
//!
//! # Invariants of a [`Plan`]
//! - Carved regions (every owner but [`Owner::Manager`]) are page-aligned, non-empty, pairwise
//!   disjoint, inside the map's usable memory, and overlap no protected range and no non-usable
//!   region of the map.
//! - Each instance of the request is either in `regions` (once) or in `refused` (once).
//! - `regions` is sorted by start address.
//!
//! # Spec
//! SDM Vol. 3A, "MP Initialization Protocol Algorithm for MP Systems" (the start-up IPI vector
//! names a 4 KiB page below 1 MiB); ACPI 6.5, "System Address Map Interfaces" (what non-usable
//! map types mean: never touch them).

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use crate::frames::{FrameAllocator, FrameError, LOW_MEMORY_END};
use crate::memmap::{
    align_down, align_up, normalized_usable, Range, Region, RegionKind, PAGE_SIZE,
};

/// The default alignment of an instance: one 2 MiB large page (SDM Vol. 3A, "4-Level Paging",
/// a PDE that maps a 2 MiB page), so instances can be mapped with large pages.
pub const DEFAULT_INSTANCE_ALIGN: u64 = 2 << 20;
/// The page-table pool and the CPU table must be below 4 GiB: the AP start-up code reads the
/// table and loads CR3 while still in 32-bit protected mode, where addresses and CR3 are 32-bit
/// (SDM Vol. 3A, "Initializing IA-32e Mode").
pub const PAGE_TABLE_POOL_LIMIT: u64 = 1 << 32;
/// Low-memory slices start here: Linux reserves the first 64 KiB for itself
/// (`early_reserve_memory()`, arch/x86/kernel/setup.c) and the page at 0 holds the real-mode
/// interrupt vectors and the BIOS data area.
pub const LOW_SLICE_START: u64 = 0x1_0000;
/// SIPI vectors A0h–BFh are reserved (SDM Vol. 3A, "MP Initialization Protocol Algorithm for
/// MP Systems"): no start-up page may lie in this range.
const RESERVED_SIPI_PAGES: Range = Range::new(0xA_0000, 0xC_0000);

/// A range the manager already uses, which nothing may be carved from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Protected {
    /// What it is, e.g. "heap", "stack", "image" (messages say "the manager's heap").
    pub label: String,
    pub range: Range,
}

impl Protected {
    pub fn new(label: &str, start: u64, end: u64) -> Self {
        Protected { label: label.into(), range: Range::new(start, end) }
    }
}

/// One kernel instance's memory request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceRequest {
    pub name: String,
    /// Bytes; rounded up to whole 4 KiB pages.
    pub size: u64,
    /// A power of two of at least 4 KiB; [`DEFAULT_INSTANCE_ALIGN`] unless the manifest says
    /// otherwise.
    pub align: u64,
    /// Place the instance exactly here, or refuse it.
    pub fixed_base: Option<u64>,
    /// Bytes of memory below 1 MiB the instance needs for itself (0: none); rounded up to pages.
    pub low_memory: u64,
    /// A floating instance is placed at or above this address (Linux: 16 MiB, where its
    /// decompressor runs); 0 for anywhere above 1 MiB.
    pub min_base: u64,
}

impl InstanceRequest {
    /// A request with the default alignment, no fixed base and no low memory.
    pub fn new(name: &str, size: u64) -> Self {
        InstanceRequest {
            name: name.into(),
            size,
            align: DEFAULT_INSTANCE_ALIGN,
            fixed_base: None,
            low_memory: 0,
            min_base: 0,
        }
    }

    pub fn with_min_base(mut self, min_base: u64) -> Self {
        self.min_base = min_base;
        self
    }

    pub fn with_low_memory(mut self, bytes: u64) -> Self {
        self.low_memory = bytes;
        self
    }

    pub fn at(mut self, base: u64) -> Self {
        self.fixed_base = Some(base);
        self
    }

    pub fn aligned(mut self, align: u64) -> Self {
        self.align = align;
        self
    }
}

/// The name the image store's refusal carries ([`Plan::image_store_refused`]).
pub const IMAGE_STORE_NAME: &str = "image-store";

/// Everything the manager asks of the planner.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanRequest {
    pub instances: Vec<InstanceRequest>,
    /// Bytes of page-table pool below 4 GiB, rounded up to whole pages; 0 for none.
    pub page_table_pool: u64,
    /// Bytes of CPU table (the start-up code's APIC ID → parameters table) below 4 GiB, rounded
    /// up to whole pages; 0 for none.
    pub cpu_table: u64,
    /// Shared-memory channels between instances: placed like instances (a fixed base, or
    /// anywhere above 1 MiB, page-aligned), after them.
    pub channels: Vec<InstanceRequest>,
    /// Bytes for images pushed to the running manager (`load`), anywhere above 1 MiB, placed
    /// after everything else; 0 for none. Too little room refuses the store, not the plan.
    pub image_store: u64,
}

/// Who a region of the plan belongs to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Owner {
    /// A protected range of the manager, with its label.
    Manager(String),
    /// The shared AP start-up page below 1 MiB.
    StartPage,
    /// The page stopped CPUs are parked on, below 1 MiB.
    ParkPage,
    /// Memory for the instances' page tables, below 4 GiB.
    PageTablePool,
    /// The CPU table the start-up code reads, below 4 GiB.
    CpuTable,
    /// A kernel instance, by name.
    Instance(String),
    /// An instance's slice of memory below 1 MiB, by instance name.
    LowMemory(String),
    /// A channel between two instances, by channel name.
    Channel(String),
    /// Where images pushed at run time are kept until they are swapped in.
    ImageStore,
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Manager(label) => write!(f, "the manager's {label}"),
            Owner::StartPage => f.write_str("the AP start page"),
            Owner::ParkPage => f.write_str("the AP parking page"),
            Owner::PageTablePool => f.write_str("the page-table pool"),
            Owner::CpuTable => f.write_str("the CPU table"),
            Owner::Instance(name) => write!(f, "instance '{name}'"),
            Owner::LowMemory(name) => write!(f, "the low memory of instance '{name}'"),
            Owner::Channel(name) => write!(f, "channel '{name}'"),
            Owner::ImageStore => f.write_str("the image store"),
        }
    }
}

/// One region of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Carved {
    pub owner: Owner,
    pub range: Range,
}

/// Why one instance was not placed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstanceProblem {
    ZeroSize,
    /// Rounding the size up to pages, or base + size, overflows 64 bits.
    SizeOverflow {
        size: u64,
    },
    /// The alignment is not a power of two of at least 4 KiB.
    BadAlign {
        align: u64,
    },
    /// The fixed base is not a multiple of the alignment.
    MisalignedBase {
        base: u64,
        align: u64,
    },
    /// The fixed base puts (part of) the instance below 1 MiB.
    LowMemory {
        base: u64,
    },
    /// Another request earlier in the list has the same name.
    DuplicateName,
    /// The fixed range overlaps one of the manager's protected ranges.
    OverlapsManager {
        base: u64,
        label: String,
        range: Range,
    },
    /// The fixed range overlaps a non-usable region of the firmware map.
    OverlapsReserved {
        base: u64,
        range: Range,
        kind: RegionKind,
    },
    /// The fixed range overlaps a region already given to someone else.
    OverlapsCarved {
        base: u64,
        owner: Owner,
        range: Range,
    },
    /// Part of the fixed range (`gap`) is not usable memory in the map at all.
    NotUsable {
        base: u64,
        gap: Range,
    },
    /// No free run holds `size` bytes at `align`; `largest` is the largest free run at or above
    /// 1 MiB when the instance was tried.
    NoRoom {
        size: u64,
        align: u64,
        largest: Option<Range>,
    },
    /// No free run below 1 MiB holds the `size` bytes of low memory the instance needs;
    /// `largest` is the largest free run there.
    NoLowMemory {
        size: u64,
        largest: Option<Range>,
    },
}

/// One refused instance: its name and the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceRefusal {
    pub name: String,
    pub problem: InstanceProblem,
}

/// Prints a range as `0x…-0x…` (half-open).
struct Span(Range);

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}-{:#x}", self.0.start, self.0.end)
    }
}

/// Prints a byte count in the largest binary unit, with one decimal when it is not exact.
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 4] =
            [(1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
        let n = self.0;
        for (unit, name) in UNITS {
            if n >= unit {
                let whole = n / unit;
                let tenths = (n % unit).saturating_mul(10) / unit;
                return if n.is_multiple_of(unit) {
                    write!(f, "{whole} {name}")
                } else {
                    write!(f, "{whole}.{tenths} {name}")
                };
            }
        }
        write!(f, "{n} bytes")
    }
}

fn kind_name(kind: RegionKind) -> impl fmt::Display {
    struct K(RegionKind);
    impl fmt::Display for K {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self.0 {
                RegionKind::Usable => f.write_str("usable"),
                RegionKind::Bootloader => f.write_str("bootloader"),
                RegionKind::Bios(n) => write!(f, "bios({n})"),
                RegionKind::Uefi(n) => write!(f, "uefi({n})"),
            }
        }
    }
    K(kind)
}

impl fmt::Display for InstanceRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = &self.name;
        match &self.problem {
            InstanceProblem::ZeroSize => write!(f, "instance '{name}' asks for 0 bytes"),
            InstanceProblem::SizeOverflow { size } => {
                write!(f, "instance '{name}': size {size:#x} does not fit the 64-bit address space")
            }
            InstanceProblem::BadAlign { align } => write!(
                f,
                "instance '{name}': alignment {align:#x} is not a power of two of at least 4 KiB"
            ),
            InstanceProblem::MisalignedBase { base, align } => write!(
                f,
                "fixed base {base:#x} of instance '{name}' is not aligned to {} ({align:#x})",
                Size(*align)
            ),
            InstanceProblem::LowMemory { base } => write!(
                f,
                "fixed base {base:#x} of instance '{name}' is below 1 MiB, which is kept for the \
                 AP trampoline and firmware"
            ),
            InstanceProblem::DuplicateName => {
                write!(f, "instance name '{name}' is used twice; names must be unique")
            }
            InstanceProblem::OverlapsManager { base, label, range } => write!(
                f,
                "fixed base {base:#x} of instance '{name}' overlaps the manager's {label} ({})",
                Span(*range)
            ),
            InstanceProblem::OverlapsReserved { base, range, kind } => {
                let what = match kind {
                    RegionKind::Bootloader => "memory the bootloader reserved",
                    _ => "reserved firmware memory",
                };
                write!(
                    f,
                    "fixed base {base:#x} of instance '{name}' overlaps {what} {} ({})",
                    Span(*range),
                    kind_name(*kind)
                )
            }
            InstanceProblem::OverlapsCarved { base, owner, range } => write!(
                f,
                "fixed base {base:#x} of instance '{name}' overlaps {owner} ({})",
                Span(*range)
            ),
            InstanceProblem::NotUsable { base, gap } => write!(
                f,
                "fixed base {base:#x} of instance '{name}': {} is not usable RAM in the firmware \
                 memory map",
                Span(*gap)
            ),
            InstanceProblem::NoRoom { size, align, largest } => {
                write!(f, "instance '{name}' asks {}", Size(*size))?;
                if *align > PAGE_SIZE {
                    write!(f, " (aligned to {})", Size(*align))?;
                }
                match largest {
                    Some(r) => {
                        write!(f, "; the largest free run is {} at {:#x}", Size(r.len()), r.start)
                    }
                    None => f.write_str("; no free memory is left above 1 MiB"),
                }
            }
            InstanceProblem::NoLowMemory { size, largest } => {
                write!(f, "instance '{name}' needs {} of memory below 1 MiB", Size(*size))?;
                match largest {
                    Some(r) => write!(
                        f,
                        "; the largest free run there is {} at {:#x}",
                        Size(r.len()),
                        r.start
                    ),
                    None => f.write_str("; none is free (the firmware map leaves no more)"),
                }
            }
        }
    }
}

/// Why no plan could be made at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanError {
    /// Fewer than two usable, unprotected 4 KiB pages in 4 KiB..1 MiB outside the reserved SIPI
    /// vectors: the start page and the parking page need one each. `found` is how many there
    /// were.
    NoStartPages { found: u64 },
    /// The CPU table does not fit between 1 MiB and 4 GiB.
    NoRoomForCpuTable { size: u64, largest: Option<Range> },
    /// The page-table pool does not fit between 1 MiB and 4 GiB; `largest` is the largest free
    /// run there.
    NoRoomForPageTablePool { size: u64, largest: Option<Range> },
    /// The pool size does not round up to pages without overflow.
    PageTablePoolSizeOverflow { size: u64 },
    /// A protected range ends before it starts.
    InvalidProtected { label: String, range: Range },
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::NoStartPages { found } => write!(
                f,
                "the AP start-up code needs 2 free 4 KiB pages of usable RAM below 1 MiB (the \
                 start page and the parking page); the firmware memory map leaves {found}"
            ),
            PlanError::NoRoomForCpuTable { size, largest } => {
                write!(f, "the CPU table needs {} below 4 GiB", Size(*size))?;
                match largest {
                    Some(r) => write!(
                        f,
                        "; the largest free run there is {} at {:#x}",
                        Size(r.len()),
                        r.start
                    ),
                    None => f.write_str("; nothing is free between 1 MiB and 4 GiB"),
                }
            }
            PlanError::NoRoomForPageTablePool { size, largest } => {
                write!(f, "the page-table pool needs {} below 4 GiB", Size(*size))?;
                match largest {
                    Some(r) => write!(
                        f,
                        "; the largest free run there is {} at {:#x}",
                        Size(r.len()),
                        r.start
                    ),
                    None => f.write_str("; nothing is free between 1 MiB and 4 GiB"),
                }
            }
            PlanError::PageTablePoolSizeOverflow { size } => {
                write!(f, "page-table pool size {size:#x} overflows")
            }
            PlanError::InvalidProtected { label, range } => write!(
                f,
                "the manager's {label} range {:#x}-{:#x} ends before it starts",
                range.start, range.end
            ),
        }
    }
}

/// The result of planning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Every region: the manager's protected ranges (as given) and everything carved, sorted by
    /// start.
    pub regions: Vec<Carved>,
    /// Instances that could not be placed, in request order.
    pub refused: Vec<InstanceRefusal>,
    /// Channels that could not be placed, in request order.
    pub refused_channels: Vec<InstanceRefusal>,
    /// Why the image store asked for was not placed (named [`IMAGE_STORE_NAME`]).
    pub image_store_refused: Option<InstanceRefusal>,
}

impl Plan {
    /// The range given to the named instance.
    pub fn instance(&self, name: &str) -> Option<Range> {
        self.find(|o| matches!(o, Owner::Instance(n) if n == name))
    }

    /// The shared AP start page (always present in a plan).
    pub fn start_page(&self) -> Option<u64> {
        self.find(|o| *o == Owner::StartPage).map(|r| r.start)
    }

    /// The parking page (always present in a plan).
    pub fn park_page(&self) -> Option<u64> {
        self.find(|o| *o == Owner::ParkPage).map(|r| r.start)
    }

    /// The CPU table (absent if none was requested).
    pub fn cpu_table(&self) -> Option<Range> {
        self.find(|o| *o == Owner::CpuTable)
    }

    /// The named instance's slice of low memory, if it asked for one.
    pub fn channel(&self, name: &str) -> Option<Range> {
        self.find(|o| matches!(o, Owner::Channel(n) if n == name))
    }

    pub fn low_memory(&self, name: &str) -> Option<Range> {
        self.find(|o| matches!(o, Owner::LowMemory(n) if n == name))
    }

    /// The image store (absent if none was requested or it did not fit).
    pub fn image_store(&self) -> Option<Range> {
        self.find(|o| *o == Owner::ImageStore)
    }

    /// The page-table pool (absent if none was requested).
    pub fn page_table_pool(&self) -> Option<Range> {
        self.find(|o| *o == Owner::PageTablePool)
    }

    /// Everything the planner carved (all regions but the manager's).
    pub fn carved(&self) -> impl Iterator<Item = &Carved> {
        self.regions.iter().filter(|c| !matches!(c.owner, Owner::Manager(_)))
    }

    fn find(&self, pred: impl Fn(&Owner) -> bool) -> Option<Range> {
        self.regions.iter().find(|c| pred(&c.owner)).map(|c| c.range)
    }

    /// Takes everything this plan gives out, and every page of the manager's protected ranges,
    /// out of the frame allocator, so it can never hand them out.
    ///
    /// Carved regions above 1 MiB must be entirely free in `frames`; this is checked for all of
    /// them before anything is reserved, so a `NotFree` error leaves `frames` unchanged. (A
    /// `TooFragmented` error can still come after some reservations; the manager treats any
    /// error here as fatal.) Pages below 1 MiB are outside the allocator's pool and are
    /// skipped. Protected ranges are reserved wherever they overlap free memory.
    pub fn apply_to(&self, frames: &mut FrameAllocator) -> Result<(), FrameError> {
        let carved: Vec<Range> = self
            .carved()
            .filter(|c| c.range.end > LOW_MEMORY_END)
            .map(|c| Range::new(c.range.start.max(LOW_MEMORY_END), c.range.end))
            .collect();
        for r in &carved {
            if !frames.free_ranges().iter().any(|f| f.contains_range(r)) {
                return Err(FrameError::NotFree { range: *r });
            }
        }
        for r in carved {
            frames.reserve(r)?;
        }
        for c in self.regions.iter().filter(|c| matches!(c.owner, Owner::Manager(_))) {
            let Some(p) = page_span(c.range) else { continue };
            let overlaps: Vec<Range> = frames
                .free_ranges()
                .iter()
                .filter(|f| f.overlaps(&p))
                .map(|f| Range::new(f.start.max(p.start), f.end.min(p.end)))
                .collect();
            for r in overlaps {
                frames.reserve(r)?;
            }
        }
        Ok(())
    }
}

/// `r` widened to whole pages; `None` if empty (or at the very top of the address space,
/// where no usable page exists anyway).
fn page_span(r: Range) -> Option<Range> {
    if r.is_empty() {
        return None;
    }
    let start = align_down(r.start, PAGE_SIZE);
    let end = align_up(r.end, PAGE_SIZE).unwrap_or(align_down(u64::MAX, PAGE_SIZE));
    (start < end).then_some(Range::new(start, end))
}

/// Removes `cut` from a sorted list of disjoint ranges.
fn subtract(free: &mut Vec<Range>, cut: Range) {
    let mut out = Vec::with_capacity(free.len().saturating_add(1));
    for f in free.iter() {
        if !f.overlaps(&cut) {
            out.push(*f);
            continue;
        }
        if f.start < cut.start {
            out.push(Range::new(f.start, cut.start));
        }
        if cut.end < f.end {
            out.push(Range::new(cut.end, f.end));
        }
    }
    *free = out;
}

/// The lowest `align`-aligned start of a `size`-byte run inside `free` within `[lo, hi)`.
fn first_fit(free: &[Range], size: u64, align: u64, lo: u64, hi: u64) -> Option<u64> {
    free.iter().find_map(|f| {
        let start = align_up(f.start.max(lo), align)?;
        let end = start.checked_add(size)?;
        (end <= f.end && end <= hi).then_some(start)
    })
}

/// The largest free run within `[lo, hi)` (ties: the lowest).
fn largest_run(free: &[Range], lo: u64, hi: u64) -> Option<Range> {
    free.iter().map(|f| Range::new(f.start.max(lo), f.end.min(hi))).filter(|r| !r.is_empty()).fold(
        None,
        |best: Option<Range>, r| match best {
            Some(b) if b.len() >= r.len() => Some(b),
            _ => Some(r),
        },
    )
}

/// A request checked and normalised: page-rounded size, valid alignment.
struct Checked<'a> {
    req: &'a InstanceRequest,
    size: u64,
    /// Page-rounded low memory (0: none).
    low: u64,
}

fn check_request(req: &InstanceRequest) -> Result<Checked<'_>, InstanceProblem> {
    if req.size == 0 {
        return Err(InstanceProblem::ZeroSize);
    }
    if !req.align.is_power_of_two() || req.align < PAGE_SIZE {
        return Err(InstanceProblem::BadAlign { align: req.align });
    }
    let size =
        align_up(req.size, PAGE_SIZE).ok_or(InstanceProblem::SizeOverflow { size: req.size })?;
    if let Some(base) = req.fixed_base {
        if !base.is_multiple_of(req.align) {
            return Err(InstanceProblem::MisalignedBase { base, align: req.align });
        }
        base.checked_add(size).ok_or(InstanceProblem::SizeOverflow { size: req.size })?;
        if base < LOW_MEMORY_END {
            return Err(InstanceProblem::LowMemory { base });
        }
    }
    let low = align_up(req.low_memory, PAGE_SIZE)
        .filter(|&l| l < LOW_MEMORY_END)
        .ok_or(InstanceProblem::NoLowMemory { size: req.low_memory, largest: None })?;
    Ok(Checked { req, size, low })
}

struct Planner<'a> {
    map: &'a [Region],
    protected: &'a [Protected],
    free: Vec<Range>,
    carved: Vec<Carved>,
}

impl Planner<'_> {
    fn carve(&mut self, owner: Owner, range: Range) {
        subtract(&mut self.free, range);
        self.carved.push(Carved { owner, range });
    }

    /// Why `[base, base + size)` cannot be given to a fixed-base instance, most specific
    /// first: the manager's ranges, then the map's non-usable regions, then earlier carvings,
    /// then holes in usable memory.
    fn check_fixed(&self, base: u64, r: Range) -> Result<(), InstanceProblem> {
        for p in self.protected {
            if page_span(p.range).is_some_and(|s| s.overlaps(&r)) {
                return Err(InstanceProblem::OverlapsManager {
                    base,
                    label: p.label.clone(),
                    range: p.range,
                });
            }
        }
        let reserved = self
            .map
            .iter()
            .filter(|m| m.kind != RegionKind::Usable && Range::new(m.start, m.end).overlaps(&r))
            .min_by_key(|m| m.start);
        if let Some(m) = reserved {
            return Err(InstanceProblem::OverlapsReserved {
                base,
                range: Range::new(m.start, m.end),
                kind: m.kind,
            });
        }
        if let Some(c) = self.carved.iter().find(|c| c.range.overlaps(&r)) {
            return Err(InstanceProblem::OverlapsCarved {
                base,
                owner: c.owner.clone(),
                range: c.range,
            });
        }
        if !self.free.iter().any(|f| f.contains_range(&r)) {
            // Report the first byte range of `r` that no free range covers.
            let mut cursor = r.start;
            for f in self.free.iter().filter(|f| f.overlaps(&r)) {
                if f.start > cursor {
                    break;
                }
                cursor = cursor.max(f.end);
            }
            let gap_end = self
                .free
                .iter()
                .map(|f| f.start)
                .filter(|&s| s > cursor)
                .min()
                .unwrap_or(r.end)
                .min(r.end);
            return Err(InstanceProblem::NotUsable { base, gap: Range::new(cursor, gap_end) });
        }
        Ok(())
    }
}

/// Plans the memory of every instance, the trampoline and the page-table pool.
///
/// Returns `Err` only when nothing can run (see [`PlanError`]); an instance that cannot be
/// placed is listed in [`Plan::refused`] and the others are still planned.
pub fn plan(
    map: &[Region],
    protected: &[Protected],
    request: &PlanRequest,
) -> Result<Plan, PlanError> {
    for p in protected {
        if p.range.end < p.range.start {
            return Err(PlanError::InvalidProtected { label: p.label.clone(), range: p.range });
        }
    }
    // Every output range of `normalized_usable` is a usable run, or a piece of one cut by a
    // non-usable region, so there are at most `map.len()` of them (+1 as a margin).
    let mut usable = vec![Range::new(0, 0); map.len().saturating_add(1)];
    let n = normalized_usable(map, &mut usable);
    usable.truncate(n);
    // Merge runs that touch (a zero-length non-usable region can split a usable run in two), so
    // "inside free memory" means "inside one free range".
    let mut merged: Vec<Range> = Vec::with_capacity(usable.len());
    for r in usable {
        match merged.last_mut() {
            Some(last) if last.end == r.start => last.end = r.end,
            _ => merged.push(r),
        }
    }
    let usable = merged;
    let mut planner = Planner { map, protected, free: usable, carved: Vec::new() };
    for p in protected {
        if let Some(s) = page_span(p.range) {
            subtract(&mut planner.free, s);
        }
    }

    // Validate every request, and refuse later duplicates of a name.
    let mut refused: Vec<InstanceRefusal> = Vec::new();
    let mut checked: Vec<Checked<'_>> = Vec::new();
    for (i, req) in request.instances.iter().enumerate() {
        let duplicate = request
            .instances
            .get(..i)
            .is_some_and(|earlier| earlier.iter().any(|e| e.name == req.name));
        let result =
            if duplicate { Err(InstanceProblem::DuplicateName) } else { check_request(req) };
        match result {
            Ok(c) => checked.push(c),
            Err(problem) => refused.push(InstanceRefusal { name: req.name.clone(), problem }),
        }
    }

    // (1) The start page and the parking page: single free pages in [4 KiB, 1 MiB) that are
    // valid SIPI targets. Counted first, so a refusal says how many there are.
    let sipi_pages = |free: &[Range]| -> Vec<u64> {
        let mut pages = Vec::new();
        for f in free.iter().filter(|f| f.start < LOW_MEMORY_END) {
            let mut p = align_up(f.start.max(PAGE_SIZE), PAGE_SIZE).unwrap_or(u64::MAX);
            while p.checked_add(PAGE_SIZE).is_some_and(|end| end <= f.end.min(LOW_MEMORY_END))
                && pages.len() < 2
            {
                if !RESERVED_SIPI_PAGES.overlaps(&Range::new(p, p + PAGE_SIZE)) {
                    pages.push(p);
                }
                p += PAGE_SIZE;
            }
        }
        pages
    };
    let pages = sipi_pages(&planner.free);
    let [start_page, park_page] = pages[..] else {
        return Err(PlanError::NoStartPages { found: pages.len() as u64 });
    };
    planner.carve(Owner::StartPage, Range::new(start_page, start_page + PAGE_SIZE));
    planner.carve(Owner::ParkPage, Range::new(park_page, park_page + PAGE_SIZE));

    // (2) Low-memory slices, in request order.
    let mut placed_low: Vec<String> = Vec::new();
    for c in checked.iter().filter(|c| c.low > 0) {
        match first_fit(&planner.free, c.low, PAGE_SIZE, LOW_SLICE_START, LOW_MEMORY_END) {
            Some(start) => {
                planner
                    .carve(Owner::LowMemory(c.req.name.clone()), Range::new(start, start + c.low));
                placed_low.push(c.req.name.clone());
            }
            None => refused.push(InstanceRefusal {
                name: c.req.name.clone(),
                problem: InstanceProblem::NoLowMemory {
                    size: c.low,
                    largest: largest_run(&planner.free, LOW_SLICE_START, LOW_MEMORY_END),
                },
            }),
        }
    }
    // An instance without its low slice is not placed at all.
    checked.retain(|c| c.low == 0 || placed_low.contains(&c.req.name));

    // (3) Fixed-base instances, in request order.
    for c in checked.iter().filter(|c| c.req.fixed_base.is_some()) {
        let Some(base) = c.req.fixed_base else { continue };
        // check_request proved base + size does not overflow.
        let r = Range::new(base, base.saturating_add(c.size));
        match planner.check_fixed(base, r) {
            Ok(()) => planner.carve(Owner::Instance(c.req.name.clone()), r),
            Err(problem) => refused.push(InstanceRefusal { name: c.req.name.clone(), problem }),
        }
    }

    // (4) The page-table pool and the CPU table, between 1 MiB and 4 GiB.
    for (owner, bytes) in
        [(Owner::PageTablePool, request.page_table_pool), (Owner::CpuTable, request.cpu_table)]
    {
        if bytes == 0 {
            continue;
        }
        let overflow = || match owner {
            Owner::CpuTable => PlanError::NoRoomForCpuTable { size: bytes, largest: None },
            _ => PlanError::PageTablePoolSizeOverflow { size: bytes },
        };
        let size = align_up(bytes, PAGE_SIZE).ok_or_else(overflow)?;
        let start =
            first_fit(&planner.free, size, PAGE_SIZE, LOW_MEMORY_END, PAGE_TABLE_POOL_LIMIT)
                .ok_or_else(|| {
                    let largest = largest_run(&planner.free, LOW_MEMORY_END, PAGE_TABLE_POOL_LIMIT);
                    match owner {
                        Owner::CpuTable => PlanError::NoRoomForCpuTable { size, largest },
                        _ => PlanError::NoRoomForPageTablePool { size, largest },
                    }
                })?;
        planner.carve(owner, Range::new(start, start + size));
    }

    // (5) The other instances, largest first; a stable sort keeps request order among equals.
    let mut floating: Vec<&Checked<'_>> =
        checked.iter().filter(|c| c.req.fixed_base.is_none()).collect();
    floating.sort_by_key(|c| core::cmp::Reverse(c.size));
    for c in floating {
        let lo = c.req.min_base.max(LOW_MEMORY_END);
        match first_fit(&planner.free, c.size, c.req.align, lo, u64::MAX) {
            Some(start) => planner
                .carve(Owner::Instance(c.req.name.clone()), Range::new(start, start + c.size)),
            None => refused.push(InstanceRefusal {
                name: c.req.name.clone(),
                problem: InstanceProblem::NoRoom {
                    size: c.size,
                    align: c.req.align,
                    largest: largest_run(&planner.free, lo, u64::MAX),
                },
            }),
        }
    }

    // (6) Channels: fixed ones where they ask, then the others, page-aligned above 1 MiB.
    let mut refused_channels: Vec<InstanceRefusal> = Vec::new();
    for req in &request.channels {
        let problem = match check_request(req) {
            Err(p) => Some(p),
            Ok(c) => {
                let owner = Owner::Channel(req.name.clone());
                match req.fixed_base {
                    Some(base) => {
                        let r = Range::new(base, base.saturating_add(c.size));
                        match planner.check_fixed(base, r) {
                            Ok(()) => {
                                planner.carve(owner, r);
                                None
                            }
                            Err(p) => Some(p),
                        }
                    }
                    None => {
                        match first_fit(&planner.free, c.size, PAGE_SIZE, LOW_MEMORY_END, u64::MAX)
                        {
                            Some(start) => {
                                planner.carve(owner, Range::new(start, start + c.size));
                                None
                            }
                            None => Some(InstanceProblem::NoRoom {
                                size: c.size,
                                align: PAGE_SIZE,
                                largest: largest_run(&planner.free, LOW_MEMORY_END, u64::MAX),
                            }),
                        }
                    }
                }
            }
        };
        if let Some(problem) = problem {
            refused_channels.push(InstanceRefusal { name: req.name.clone(), problem });
        }
    }

    // (7) The image store, last: it takes what is left, never an instance's room.
    let mut image_store_refused = None;
    if request.image_store > 0 {
        let problem = match align_up(request.image_store, PAGE_SIZE) {
            None => Some(InstanceProblem::SizeOverflow { size: request.image_store }),
            Some(size) => {
                match first_fit(&planner.free, size, PAGE_SIZE, LOW_MEMORY_END, u64::MAX) {
                    Some(start) => {
                        planner.carve(Owner::ImageStore, Range::new(start, start + size));
                        None
                    }
                    None => Some(InstanceProblem::NoRoom {
                        size,
                        align: PAGE_SIZE,
                        largest: largest_run(&planner.free, LOW_MEMORY_END, u64::MAX),
                    }),
                }
            }
        };
        image_store_refused =
            problem.map(|problem| InstanceRefusal { name: IMAGE_STORE_NAME.into(), problem });
    }

    // A refused instance gets nothing: drop the low slice it may have been given (from the
    // output only; it is not offered to anyone else).
    planner.carved.retain(|k| match &k.owner {
        Owner::LowMemory(n) => !refused.iter().any(|r| &r.name == n),
        _ => true,
    });
    // Report refusals in request order, whatever the placement order was.
    refused.sort_by_key(|r| {
        request.instances.iter().position(|i| i.name == r.name).unwrap_or(usize::MAX)
    });
    let mut regions: Vec<Carved> = protected
        .iter()
        .map(|p| Carved { owner: Owner::Manager(p.label.clone()), range: p.range })
        .collect();
    regions.append(&mut planner.carved);
    regions.sort_by(|a, b| a.range.start.cmp(&b.range.start).then(a.range.end.cmp(&b.range.end)));
    Ok(Plan { regions, refused, refused_channels, image_store_refused })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_in_binary_units() {
        assert_eq!(Size(512 << 20).to_string(), "512 MiB");
        assert_eq!(Size(300 << 20).to_string(), "300 MiB");
        assert_eq!(Size((3 << 29) + (1 << 20)).to_string(), "1.5 GiB");
        assert_eq!(Size(4096).to_string(), "4 KiB");
        assert_eq!(Size(100).to_string(), "100 bytes");
    }

    #[test]
    fn subtract_splits_and_trims() {
        let mut free = vec![Range::new(0, 10), Range::new(20, 30)];
        subtract(&mut free, Range::new(5, 25));
        assert_eq!(free, [Range::new(0, 5), Range::new(25, 30)]);
        subtract(&mut free, Range::new(1, 2));
        assert_eq!(free, [Range::new(0, 1), Range::new(2, 5), Range::new(25, 30)]);
        subtract(&mut free, Range::new(0, 100));
        assert!(free.is_empty());
    }

    #[test]
    fn page_span_widens() {
        assert_eq!(page_span(Range::new(0x1001, 0x2001)), Some(Range::new(0x1000, 0x3000)));
        assert_eq!(page_span(Range::new(5, 5)), None);
        assert!(page_span(Range::new(u64::MAX - 5, u64::MAX)).is_none());
    }
}
