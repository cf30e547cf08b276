//! Phase one: validate an image against a region and compute every byte `apply` will write.
//!
//! The steps, each refusing with its own [`LoadError`] variant:
//! 1. ELF header (ELF gABI, "ELF Header"): magic, `ELFCLASS64`, `ELFDATA2LSB`, then the whole
//!    64-byte header read with goblin's `elf64::header::Header` through scroll's bounds-checked
//!    `pread`; `EM_X86_64`; `ET_EXEC` or `ET_DYN` (`ET_REL` named as an object file).
//! 2. Program headers (ELF gABI, "Program Header"): `e_phentsize == 56`, `e_phnum <=`
//!    [`MAX_PROGRAM_HEADERS`], table inside the file, then each header read one at a time with
//!    goblin's `elf64::program_header::ProgramHeader`. Per `PT_LOAD`: `p_filesz <= p_memsz`, file
//!    bytes inside the file, no overflowing end, `p_align` a power of two.
//! 3. Placement. `ET_EXEC` segments go to `p_paddr` and run at `p_vaddr` (which may be a higher
//!    half address). `ET_DYN` (static PIE) is moved as a whole by a multiple of its alignment
//!    (`max(p_align, 4 KiB)`) to the lowest such address in the region, and runs identity
//!    mapped there. Either way: the extent fits the region, each segment lies inside it,
//!    `p_vaddr ≡ p_paddr (mod 4 KiB)`, virtual ranges are canonical (Intel SDM Vol. 1,
//!    "Canonical Addressing"), and no two segments overlap physically or virtually.
//! 4. Entry: `e_entry` inside a `PF_X` segment; reported at its run-time virtual address and the
//!    physical address of its first instruction.
//! 5. Mappings: each segment's pages, rounded out to 4 KiB, with its flags. Two segments that
//!    share a boundary page must place it at the same physical page; the shared page gets the
//!    union of their flags.
//! 6. Relocations (System V ABI AMD64, "Relocation Types"): RELA tables from `PT_DYNAMIC` (see
//!    [`crate::dynamic`]), located in the file through the segment that contains them; each
//!    entry must be `R_X86_64_NONE` (skipped) or `R_X86_64_RELATIVE`, whose value `B + A` (load
//!    bias plus addend) is computed here, and whose 8-byte target must lie in one segment.
//!
//! # Invariants of a [`LoadPlan`]
//! Only [`plan`] makes one. Its segments are the non-empty `PT_LOAD`s (`p_memsz > 0`; empty
//! ones are validated, then left out, since they occupy nothing). Every segment's physical range (and so every copy and every
//! relocation write) lies inside the region; segments are pairwise disjoint in physical and in
//! virtual memory; every file range lies inside the image; mappings are page aligned, do not
//! overlap virtually, and their physical pages lie inside the (page-aligned) region.

use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

use goblin::elf::header::{
    EI_CLASS, EI_DATA, ELFCLASS64, ELFDATA2LSB, ELFMAG, EM_X86_64, ET_DYN, ET_EXEC, ET_REL, SELFMAG,
};
use goblin::elf::program_header::{PF_R, PF_W, PF_X, PT_DYNAMIC, PT_INTERP, PT_LOAD};
use goblin::elf::reloc::{R_X86_64_NONE, R_X86_64_RELATIVE};
use goblin::elf64::header::{Header, SIZEOF_EHDR};
use goblin::elf64::program_header::{ProgramHeader, SIZEOF_PHDR};
use goblin::elf64::reloc::Rela;
use scroll::Pread;

use crate::dynamic::{rela_tables, RelaTable};
use crate::error::LoadError;
use crate::gabi::SIZEOF_RELA;
use crate::region::{Region, PAGE_SIZE};

/// Most program headers an image may have. Real kernels have fewer than 16 (vmlinux: ~5,
/// Rust `x86_64-unknown-none` PIE: ~8); the cap bounds every per-header loop and allocation.
/// It also refuses `PN_XNUM` (0xffff), the gABI escape to a count stored in section 0.
pub const MAX_PROGRAM_HEADERS: u16 = 64;

/// First address of the upper canonical half, and one past the last of the lower half, for
/// 48-bit virtual addresses. Intel SDM Vol. 1, "Canonical Addressing".
const LOWER_HALF_END: u64 = 0x0000_8000_0000_0000;
const UPPER_HALF_START: u64 = 0xffff_8000_0000_0000;

/// What kind of image was planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    /// `ET_EXEC`: loaded at its `p_paddr`, runs at its `p_vaddr`.
    Executable,
    /// `ET_DYN` static PIE: moved into the region, relocated, runs identity mapped.
    PositionIndependent,
}

impl fmt::Display for ImageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Executable => "ET_EXEC",
            Self::PositionIndependent => "ET_DYN (static PIE)",
        })
    }
}

/// Access permissions of a segment or mapping (from `p_flags`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags {
    pub read: bool,
    pub write: bool,
    pub execute: bool,
}

impl Flags {
    /// The R/W/X bits of an ELF `p_flags` (ELF gABI, "Segment Permissions").
    pub const fn from_p_flags(p_flags: u32) -> Self {
        Self { read: p_flags & PF_R != 0, write: p_flags & PF_W != 0, execute: p_flags & PF_X != 0 }
    }

    /// Permissions that allow what either allows (for a page two segments share).
    pub const fn union(self, other: Self) -> Self {
        Self {
            read: self.read || other.read,
            write: self.write || other.write,
            execute: self.execute || other.execute,
        }
    }
}

impl fmt::Display for Flags {
    /// `readelf` style: `R E`, `RW `.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bit = |on: bool, c: char| if on { c } else { ' ' };
        write!(f, "{}{}{}", bit(self.read, 'R'), bit(self.write, 'W'), bit(self.execute, 'E'))
    }
}

/// One `PT_LOAD` segment, placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Program header index (as `readelf -l` numbers them).
    pub index: usize,
    /// File bytes `[file_offset, file_offset + file_size)` are copied to `paddr`.
    pub file_offset: u64,
    pub file_size: u64,
    /// `p_vaddr` as linked.
    pub link_vaddr: u64,
    /// Virtual address the instance runs the segment at (`link_vaddr` moved with a PIE).
    pub vaddr: u64,
    /// Physical address of the first byte.
    pub paddr: u64,
    /// `p_memsz`: `[paddr + file_size, paddr + mem_size)` is zero (BSS).
    pub mem_size: u64,
    pub flags: Flags,
}

impl Segment {
    /// Source bytes in the image.
    pub fn file_range(&self) -> Range<u64> {
        self.file_offset..self.file_offset.saturating_add(self.file_size)
    }
    /// Destination of the whole segment in physical memory.
    pub fn phys_range(&self) -> Range<u64> {
        self.paddr..self.paddr.saturating_add(self.mem_size)
    }
    /// Destination of the file bytes.
    pub fn copy_range(&self) -> Range<u64> {
        self.paddr..self.paddr.saturating_add(self.file_size)
    }
    /// The zero-filled tail (BSS) of the segment.
    pub fn zero_range(&self) -> Range<u64> {
        self.paddr.saturating_add(self.file_size)..self.paddr.saturating_add(self.mem_size)
    }
    /// Run-time virtual range.
    pub fn virt_range(&self) -> Range<u64> {
        self.vaddr..self.vaddr.saturating_add(self.mem_size)
    }
}

/// Pages the instance's page tables must map: `[vaddr, vaddr + size)` to
/// `[paddr, paddr + size)`, all three page aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub vaddr: u64,
    pub paddr: u64,
    pub size: u64,
    pub flags: Flags,
}

/// An `R_X86_64_RELATIVE` relocation, resolved: write `value` as 8 little-endian bytes at
/// `paddr` (which the instance sees at `vaddr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relocation {
    /// `r_offset` as linked.
    pub offset: u64,
    pub vaddr: u64,
    pub paddr: u64,
    pub value: u64,
}

/// Where execution starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Virtual address to jump to, once the plan's mappings are in place.
    pub vaddr: u64,
    /// Physical address of the first instruction.
    pub paddr: u64,
}

/// Everything [`crate::apply`] writes and everything the instance's page tables must map.
/// See the module docs for its invariants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadPlan {
    kind: ImageKind,
    region: Region,
    base: u64,
    image_len: u64,
    segments: Vec<Segment>,
    entry: Entry,
    mappings: Vec<Mapping>,
    relocations: Vec<Relocation>,
}

impl LoadPlan {
    pub fn kind(&self) -> ImageKind {
        self.kind
    }
    /// The region the plan was made for; `apply` writes every byte of it and nothing else.
    pub fn region(&self) -> Region {
        self.region
    }
    /// Physical address of the image's first page (for a PIE: where it was placed).
    pub fn base(&self) -> u64 {
        self.base
    }
    /// Length of the image the plan was made from.
    pub fn image_len(&self) -> u64 {
        self.image_len
    }
    /// `PT_LOAD` segments in program header order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }
    pub fn entry(&self) -> Entry {
        self.entry
    }
    /// Page mappings sorted by virtual address.
    pub fn mappings(&self) -> &[Mapping] {
        &self.mappings
    }
    /// Relocations in table order.
    pub fn relocations(&self) -> &[Relocation] {
        &self.relocations
    }
    /// Bytes copied from the file.
    pub fn bytes_to_copy(&self) -> u64 {
        self.segments.iter().map(|s| s.file_size).sum()
    }
    /// Bytes of the region zero-filled (BSS and everything between and around segments).
    pub fn bytes_to_zero(&self) -> u64 {
        self.region.size.saturating_sub(self.bytes_to_copy())
    }
}

/// Validates `image` for loading into `region` and computes the load (phase one).
///
/// Reads `image` only through bounds-checked accessors; never panics; allocates at most
/// [`MAX_PROGRAM_HEADERS`] entries per table plus one entry per relocation in a table that
/// lies inside the image.
pub fn plan(image: &[u8], region: Region) -> Result<LoadPlan, LoadError> {
    let region_end = region.end().ok_or(LoadError::RegionOverflows { region })?;
    if !region.base.is_multiple_of(PAGE_SIZE) || !region.size.is_multiple_of(PAGE_SIZE) {
        return Err(LoadError::UnalignedRegion { region });
    }
    let file_len = image.len() as u64;
    let header = read_header(image)?;
    let kind = image_kind(&header)?;
    let headers = read_program_headers(image, &header)?;

    let mut segments = Vec::new();
    let mut any_load = false;
    let mut max_align = PAGE_SIZE;
    let mut dynamic: Option<(usize, DynamicRange)> = None;
    for (index, ph) in headers.iter().enumerate() {
        match ph.p_type {
            PT_LOAD => {
                let segment = check_load(index, ph, file_len, kind)?;
                if ph.p_align > 1 {
                    if !ph.p_align.is_power_of_two() {
                        return Err(LoadError::BadAlignment { index, align: ph.p_align });
                    }
                    max_align = max_align.max(ph.p_align);
                }
                any_load = true;
                // An empty PT_LOAD occupies nothing: it is validated above but not placed.
                if segment.mem_size > 0 {
                    segments.push(segment);
                }
            }
            PT_DYNAMIC => {
                if let Some((first, _)) = dynamic {
                    return Err(LoadError::MultipleDynamic { first, second: index });
                }
                check_file_range(index, ph, file_len)?;
                dynamic = Some((index, DynamicRange { offset: ph.p_offset, size: ph.p_filesz }));
            }
            PT_INTERP => return Err(LoadError::InterpreterRequested { index }),
            _ => {}
        }
    }
    if !any_load {
        return Err(LoadError::NoLoadSegments);
    }

    let (base, bias) = match kind {
        ImageKind::Executable => place_executable(&segments, region)?,
        ImageKind::PositionIndependent => place_pie(&mut segments, region, region_end, max_align)?,
    };

    for s in &segments {
        check_placed(s, region)?;
    }
    check_overlaps(&segments)?;
    let entry = find_entry(&segments, header.e_entry)?;
    let mappings = build_mappings(&segments)?;
    let relocations = match dynamic {
        Some((_, range)) => collect_relocations(image, range, &segments, bias)?,
        None => Vec::new(),
    };

    Ok(LoadPlan { kind, region, base, image_len: file_len, segments, entry, mappings, relocations })
}

/// File range of the dynamic array.
#[derive(Debug, Clone, Copy)]
struct DynamicRange {
    offset: u64,
    size: u64,
}

/// What kind of ELF image `image` is, from its header alone (the first checks of [`plan`]):
/// for tools that need to know before a region is chosen, e.g. whether a kernel is linked at
/// fixed addresses.
pub fn identify(image: &[u8]) -> Result<ImageKind, LoadError> {
    image_kind(&read_header(image)?)
}

fn image_kind(header: &Header) -> Result<ImageKind, LoadError> {
    match header.e_type {
        ET_EXEC => Ok(ImageKind::Executable),
        ET_DYN => Ok(ImageKind::PositionIndependent),
        ET_REL => Err(LoadError::RelocatableObject),
        e_type => Err(LoadError::WrongType { e_type }),
    }
}

fn read_header(image: &[u8]) -> Result<Header, LoadError> {
    let mut magic = [0u8; SELFMAG];
    for (slot, byte) in magic.iter_mut().zip(image.iter()) {
        *slot = *byte;
    }
    if image.get(..SELFMAG) != Some(&ELFMAG[..]) {
        return Err(LoadError::NotElf { magic });
    }
    let class = image.get(EI_CLASS).copied().unwrap_or(0);
    if class != ELFCLASS64 {
        return Err(LoadError::WrongClass { class });
    }
    let data = image.get(EI_DATA).copied().unwrap_or(0);
    if data != ELFDATA2LSB {
        return Err(LoadError::WrongEndianness { data });
    }
    if image.len() < SIZEOF_EHDR {
        return Err(LoadError::TruncatedHeader { file_len: image.len() as u64 });
    }
    let header: Header = image
        .pread_with(0, scroll::LE)
        .map_err(|_| LoadError::TruncatedHeader { file_len: image.len() as u64 })?;
    if header.e_machine != EM_X86_64 {
        return Err(LoadError::WrongMachine { machine: header.e_machine });
    }
    Ok(header)
}

fn read_program_headers(image: &[u8], header: &Header) -> Result<Vec<ProgramHeader>, LoadError> {
    // SIZEOF_PHDR is 56: the cast cannot truncate.
    let expected = SIZEOF_PHDR as u16;
    if header.e_phentsize != expected {
        return Err(LoadError::BadProgramHeaderSize { phentsize: header.e_phentsize, expected });
    }
    if header.e_phnum > MAX_PROGRAM_HEADERS {
        return Err(LoadError::TooManyProgramHeaders {
            count: header.e_phnum,
            max: MAX_PROGRAM_HEADERS,
        });
    }
    let file_len = image.len() as u64;
    let size = u64::from(header.e_phnum) * SIZEOF_PHDR as u64; // ≤ 64 × 56: no overflow
    let end = header
        .e_phoff
        .checked_add(size)
        .ok_or(LoadError::Overflow { index: None, what: "e_phoff + program header table size" })?;
    if end > file_len {
        return Err(LoadError::ProgramHeadersOutsideFile {
            offset: header.e_phoff,
            size,
            file_len,
        });
    }
    let mut headers = Vec::with_capacity(usize::from(header.e_phnum));
    for i in 0..u64::from(header.e_phnum) {
        let outside =
            LoadError::ProgramHeadersOutsideFile { offset: header.e_phoff, size, file_len };
        // In bounds: the whole table was checked above, `at < end <= file_len`.
        let at = usize::try_from(header.e_phoff + i * SIZEOF_PHDR as u64)
            .map_err(|_| outside.clone())?;
        let ph: ProgramHeader = image.pread_with(at, scroll::LE).map_err(|_| outside)?;
        headers.push(ph);
    }
    Ok(headers)
}

fn check_file_range(index: usize, ph: &ProgramHeader, file_len: u64) -> Result<(), LoadError> {
    let end = ph
        .p_offset
        .checked_add(ph.p_filesz)
        .ok_or(LoadError::Overflow { index: Some(index), what: "p_offset + p_filesz" })?;
    if end > file_len {
        return Err(LoadError::SegmentOutsideFile {
            index,
            offset: ph.p_offset,
            filesz: ph.p_filesz,
            file_len,
        });
    }
    Ok(())
}

/// Checks one `PT_LOAD` on its own; for `ET_EXEC` this also fixes its placement.
fn check_load(
    index: usize,
    ph: &ProgramHeader,
    file_len: u64,
    kind: ImageKind,
) -> Result<Segment, LoadError> {
    if ph.p_filesz > ph.p_memsz {
        return Err(LoadError::FileSizeExceedsMemSize {
            index,
            filesz: ph.p_filesz,
            memsz: ph.p_memsz,
        });
    }
    check_file_range(index, ph, file_len)?;
    ph.p_vaddr
        .checked_add(ph.p_memsz)
        .ok_or(LoadError::Overflow { index: Some(index), what: "p_vaddr + p_memsz" })?;
    if kind == ImageKind::Executable {
        ph.p_paddr
            .checked_add(ph.p_memsz)
            .ok_or(LoadError::Overflow { index: Some(index), what: "p_paddr + p_memsz" })?;
    }
    Ok(Segment {
        index,
        file_offset: ph.p_offset,
        file_size: ph.p_filesz,
        link_vaddr: ph.p_vaddr,
        vaddr: ph.p_vaddr,
        paddr: ph.p_paddr,
        mem_size: ph.p_memsz,
        flags: Flags::from_p_flags(ph.p_flags),
    })
}

/// `ET_EXEC`: segments stay where linked. Returns (base, relocation bias 0).
fn place_executable(segments: &[Segment], region: Region) -> Result<(u64, i128), LoadError> {
    // `check_load` verified `paddr + mem_size` does not overflow.
    let low = segments.iter().map(|s| s.paddr).min().unwrap_or(0);
    let high = segments.iter().map(|s| s.paddr.saturating_add(s.mem_size)).max().unwrap_or(0);
    let image_size = high.saturating_sub(low);
    if image_size > region.size {
        return Err(LoadError::ImageTooLarge { image_size, available: region.size, region });
    }
    Ok((align_down(low, PAGE_SIZE), 0))
}

/// `ET_DYN`: move the image by a multiple of `align` so that its lowest `align`-aligned link
/// address lands on the lowest `align`-aligned address of the region. Returns (base, bias).
fn place_pie(
    segments: &mut [Segment],
    region: Region,
    region_end: u64,
    align: u64,
) -> Result<(u64, i128), LoadError> {
    let low = segments.iter().map(|s| s.link_vaddr).min().unwrap_or(0);
    let high = segments.iter().map(|s| s.link_vaddr.saturating_add(s.mem_size)).max().unwrap_or(0);
    let link_base = align_down(low, align);
    let image_size = high.saturating_sub(link_base);
    let base = align_up(region.base, align);
    let available = base.map_or(0, |b| region_end.saturating_sub(b));
    let base = match base {
        Some(b) if image_size <= available => b,
        _ => return Err(LoadError::ImageTooLarge { image_size, available, region }),
    };
    for s in segments.iter_mut() {
        // base + (link_vaddr - link_base) + mem_size <= base + image_size <= region_end.
        let placed = base
            .checked_add(s.link_vaddr.saturating_sub(link_base))
            .ok_or(LoadError::Overflow { index: Some(s.index), what: "placed address" })?;
        s.vaddr = placed;
        s.paddr = placed;
    }
    Ok((base, i128::from(base) - i128::from(link_base)))
}

fn is_canonical_range(start: u64, end: u64) -> bool {
    // `end` is exclusive and > start.
    let last = end.saturating_sub(1);
    (last < LOWER_HALF_END) || (start >= UPPER_HALF_START)
}

/// Per-segment checks that need the final placement.
fn check_placed(s: &Segment, region: Region) -> Result<(), LoadError> {
    let index = s.index;
    let end = s
        .paddr
        .checked_add(s.mem_size)
        .ok_or(LoadError::Overflow { index: Some(index), what: "p_paddr + p_memsz" })?;
    if !region.contains_range(s.paddr, s.mem_size) {
        return Err(LoadError::SegmentOutsideRegion { index, start: s.paddr, end, region });
    }
    if s.vaddr % PAGE_SIZE != s.paddr % PAGE_SIZE {
        return Err(LoadError::MisalignedSegment { index, vaddr: s.vaddr, paddr: s.paddr });
    }
    let vend = s
        .vaddr
        .checked_add(s.mem_size)
        .ok_or(LoadError::Overflow { index: Some(index), what: "p_vaddr + p_memsz" })?;
    if s.mem_size > 0 && !is_canonical_range(s.vaddr, vend) {
        return Err(LoadError::NonCanonicalSegment { index, vaddr: s.vaddr, end: vend });
    }
    Ok(())
}

fn intersection(a: &Range<u64>, b: &Range<u64>) -> Option<(u64, u64)> {
    let start = a.start.max(b.start);
    let end = a.end.min(b.end);
    (start < end).then_some((start, end))
}

/// Pairwise: at most `MAX_PROGRAM_HEADERS`² comparisons.
fn check_overlaps(segments: &[Segment]) -> Result<(), LoadError> {
    for (i, a) in segments.iter().enumerate() {
        for b in segments.iter().skip(i + 1) {
            if let Some((start, end)) = intersection(&a.phys_range(), &b.phys_range()) {
                return Err(LoadError::PhysicalOverlap {
                    first: a.index,
                    second: b.index,
                    start,
                    end,
                });
            }
            if let Some((start, end)) = intersection(&a.virt_range(), &b.virt_range()) {
                return Err(LoadError::VirtualOverlap {
                    first: a.index,
                    second: b.index,
                    start,
                    end,
                });
            }
        }
    }
    Ok(())
}

/// The segment whose link-time range holds `[addr, addr + len)`.
fn segment_holding(segments: &[Segment], addr: u64, len: u64) -> Option<&Segment> {
    let end = addr.checked_add(len)?;
    segments.iter().find(|s| {
        s.mem_size > 0 && addr >= s.link_vaddr && end <= s.link_vaddr.saturating_add(s.mem_size)
    })
}

fn find_entry(segments: &[Segment], e_entry: u64) -> Result<Entry, LoadError> {
    let s = segment_holding(segments, e_entry, 1)
        .ok_or(LoadError::EntryOutsideSegments { entry: e_entry })?;
    if !s.flags.execute {
        return Err(LoadError::EntryNotExecutable { entry: e_entry, index: s.index });
    }
    let delta = e_entry - s.link_vaddr; // e_entry >= link_vaddr (segment_holding)
    Ok(Entry { vaddr: s.vaddr + delta, paddr: s.paddr + delta })
}

/// Page-granular mappings, sorted by virtual address. Segments are virtually disjoint, so two
/// consecutive ones can share at most the one page where the first ends and the next begins.
fn build_mappings(segments: &[Segment]) -> Result<Vec<Mapping>, LoadError> {
    let mut order: Vec<&Segment> = segments.iter().filter(|s| s.mem_size > 0).collect();
    order.sort_by_key(|s| s.vaddr);
    let mut out: Vec<Mapping> = Vec::with_capacity(order.len().saturating_mul(2));
    let mut previous_index = 0;
    for s in order {
        let overflow = LoadError::Overflow { index: Some(s.index), what: "page-rounded end" };
        let vstart = align_down(s.vaddr, PAGE_SIZE);
        let vend = s.vaddr.checked_add(s.mem_size).and_then(|e| align_up(e, PAGE_SIZE));
        let vend = vend.ok_or(overflow)?;
        let mut m = Mapping {
            vaddr: vstart,
            paddr: align_down(s.paddr, PAGE_SIZE),
            size: vend - vstart,
            flags: s.flags,
        };
        if let Some(last) = out.last_mut() {
            let last_end = last.vaddr + last.size;
            if last_end > m.vaddr {
                // Shared page `m.vaddr`: the last page of `last`.
                let last_paddr = last.paddr + (m.vaddr - last.vaddr);
                if last_paddr != m.paddr {
                    return Err(LoadError::ConflictingPageMapping {
                        first: previous_index,
                        second: s.index,
                        page: m.vaddr,
                    });
                }
                let flags = last.flags.union(m.flags);
                if last.size > PAGE_SIZE {
                    last.size -= PAGE_SIZE;
                    out.push(Mapping { vaddr: m.vaddr, paddr: m.paddr, size: PAGE_SIZE, flags });
                } else {
                    last.flags = flags;
                }
                m.vaddr += PAGE_SIZE;
                m.paddr += PAGE_SIZE;
                m.size -= PAGE_SIZE;
            }
        }
        if m.size > 0 {
            out.push(m);
        }
        previous_index = s.index;
    }
    Ok(out)
}

/// Locates a RELA table in the file through the segment whose file bytes contain it.
fn table_file_offset(segments: &[Segment], table: RelaTable) -> Result<u64, LoadError> {
    let outside = LoadError::RelocationTableOutsideFile { vaddr: table.vaddr, size: table.size };
    let end = table.vaddr.checked_add(table.size).ok_or(outside.clone())?;
    segments
        .iter()
        .find(|s| table.vaddr >= s.link_vaddr && end <= s.link_vaddr.saturating_add(s.file_size))
        .map(|s| s.file_offset + (table.vaddr - s.link_vaddr))
        .ok_or(outside)
}

fn collect_relocations(
    image: &[u8],
    dynamic: DynamicRange,
    segments: &[Segment],
    bias: i128,
) -> Result<Vec<Relocation>, LoadError> {
    let mut out = Vec::new();
    for table in rela_tables(image, dynamic.offset, dynamic.size)?.into_iter().flatten() {
        let offset = table_file_offset(segments, table)?;
        // The table lies inside the file: `count` is bounded by the image length / 24.
        for i in 0..table.size / SIZEOF_RELA {
            let outside =
                LoadError::RelocationTableOutsideFile { vaddr: table.vaddr, size: table.size };
            let at = usize::try_from(offset + i * SIZEOF_RELA).map_err(|_| outside.clone())?;
            let rela: Rela = image.pread_with(at, scroll::LE).map_err(|_| outside)?;
            // ELF64_R_TYPE: the low 32 bits of r_info. The cast keeps exactly those.
            let r_type = (rela.r_info & 0xffff_ffff) as u32;
            match r_type {
                R_X86_64_NONE => continue,
                R_X86_64_RELATIVE => {}
                _ => {
                    return Err(LoadError::UnsupportedRelocation { r_type, offset: rela.r_offset })
                }
            }
            let s = segment_holding(segments, rela.r_offset, 8)
                .ok_or(LoadError::RelocationOutsideSegments { offset: rela.r_offset })?;
            let delta = rela.r_offset - s.link_vaddr;
            let value = u64::try_from(bias + i128::from(rela.r_addend)).map_err(|_| {
                LoadError::Overflow { index: None, what: "relocation value (base + addend)" }
            })?;
            out.push(Relocation {
                offset: rela.r_offset,
                vaddr: s.vaddr + delta,
                paddr: s.paddr + delta,
                value,
            });
        }
    }
    Ok(out)
}

/// `align` must be a power of two.
const fn align_down(value: u64, align: u64) -> u64 {
    value & !(align - 1)
}

/// `align` must be a power of two; `None` on overflow.
fn align_up(value: u64, align: u64) -> Option<u64> {
    value.checked_add(align - 1).map(|v| v & !(align - 1))
}
