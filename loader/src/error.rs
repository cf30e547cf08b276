//! Why an image is refused ([`LoadError`]) or could not be written ([`ApplyError`]).
//!
//! One variant per refusal, each carrying the offending values, so tests assert the exact
//! variant and users read a message that names the program header index and the addresses
//! involved. Indexes are program header indexes (what `readelf -l` numbers), not PT_LOAD counts.

use core::fmt;

use crate::region::Region;

/// Why [`crate::plan`] refused an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadError {
    /// The region's end overflows 64 bits.
    RegionOverflows { region: Region },
    /// The region's base or size is not a multiple of the page size.
    UnalignedRegion { region: Region },
    /// The file does not start with `\x7fELF`; `magic` holds what it starts with (zero padded).
    NotElf { magic: [u8; 4] },
    /// `EI_CLASS` is not `ELFCLASS64`.
    WrongClass { class: u8 },
    /// `EI_DATA` is not `ELFDATA2LSB`.
    WrongEndianness { data: u8 },
    /// The file is shorter than an ELF64 header.
    TruncatedHeader { file_len: u64 },
    /// `e_machine` is not `EM_X86_64`.
    WrongMachine { machine: u16 },
    /// `e_type` is `ET_REL`: an object file (`.o`), not a linked kernel.
    RelocatableObject,
    /// `e_type` is neither `ET_EXEC` nor `ET_DYN` (nor `ET_REL`, which has its own variant).
    WrongType { e_type: u16 },
    /// `e_phentsize` is not the size of an ELF64 program header.
    BadProgramHeaderSize { phentsize: u16, expected: u16 },
    /// `e_phnum` is above [`crate::MAX_PROGRAM_HEADERS`] (this includes `PN_XNUM`).
    TooManyProgramHeaders { count: u16, max: u16 },
    /// The program header table does not lie inside the file.
    ProgramHeadersOutsideFile { offset: u64, size: u64, file_len: u64 },
    /// No program header is `PT_LOAD`.
    NoLoadSegments,
    /// A `PT_INTERP` header asks for a dynamic linker; there is none before a kernel.
    InterpreterRequested { index: usize },
    /// More than one `PT_DYNAMIC` header.
    MultipleDynamic { first: usize, second: usize },
    /// `p_filesz > p_memsz`.
    FileSizeExceedsMemSize { index: usize, filesz: u64, memsz: u64 },
    /// `[p_offset, p_offset + p_filesz)` is not inside the file.
    SegmentOutsideFile { index: usize, offset: u64, filesz: u64, file_len: u64 },
    /// Address or size arithmetic overflowed 64 bits; `what` names the computation.
    Overflow { index: Option<usize>, what: &'static str },
    /// `p_align` is neither 0, 1 nor a power of two.
    BadAlignment { index: usize, align: u64 },
    /// `p_vaddr` and `p_paddr` differ within a page, so no page-granular mapping can place the
    /// segment's bytes at both addresses.
    MisalignedSegment { index: usize, vaddr: u64, paddr: u64 },
    /// The segment's virtual range is not canonical (it touches the x86-64 address hole).
    NonCanonicalSegment { index: usize, vaddr: u64, end: u64 },
    /// The image's extent (including, for PIE, alignment) exceeds the room in the region.
    ImageTooLarge { image_size: u64, available: u64, region: Region },
    /// A segment's physical range `[start, end)` is not inside the region.
    SegmentOutsideRegion { index: usize, start: u64, end: u64, region: Region },
    /// Two segments' physical ranges overlap.
    PhysicalOverlap { first: usize, second: usize, start: u64, end: u64 },
    /// Two segments' virtual ranges overlap.
    VirtualOverlap { first: usize, second: usize, start: u64, end: u64 },
    /// Two segments share the virtual page at `page` but place it at different physical pages.
    ConflictingPageMapping { first: usize, second: usize, page: u64 },
    /// `e_entry` lies in no loaded segment.
    EntryOutsideSegments { entry: u64 },
    /// `e_entry` lies in a loaded segment that is not executable.
    EntryNotExecutable { entry: u64, index: usize },
    /// A dynamic entry needs a companion that is missing (e.g. `DT_RELA` without `DT_RELASZ`).
    MissingDynamicEntry { tag: u64, needs: u64 },
    /// A dynamic entry the loader cannot honour (`DT_NEEDED`, `DT_REL`, `DT_RELR`, non-RELA
    /// `DT_PLTREL`).
    UnsupportedDynamic { tag: u64, value: u64 },
    /// `DT_RELAENT` is not the size of an ELF64 `Rela`.
    BadRelaEntrySize { relaent: u64, expected: u64 },
    /// A relocation table's size is not a multiple of the entry size.
    BadRelaTableSize { size: u64, entry_size: u64 },
    /// A relocation table `[vaddr, vaddr + size)` is not inside the file bytes of one segment.
    RelocationTableOutsideFile { vaddr: u64, size: u64 },
    /// A relocation type other than `R_X86_64_RELATIVE` (or `R_X86_64_NONE`).
    UnsupportedRelocation { r_type: u32, offset: u64 },
    /// A relocation's 8-byte target does not lie inside one loaded segment.
    RelocationOutsideSegments { offset: u64 },
}

fn index_text(index: &Option<usize>) -> impl fmt::Display + '_ {
    struct Text<'a>(&'a Option<usize>);
    impl fmt::Display for Text<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self.0 {
                Some(i) => write!(f, "program header {i}: "),
                None => Ok(()),
            }
        }
    }
    Text(index)
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use LoadError::*;
        match self {
            RegionOverflows { region } => {
                write!(f, "region base {:#x} size {:#x} overflows 64 bits", region.base, region.size)
            }
            UnalignedRegion { region } => write!(
                f,
                "region base {:#x} size {:#x} is not 4 KiB aligned: the instance's pages would \
                 reach memory outside it",
                region.base, region.size
            ),
            NotElf { magic } => write!(
                f,
                "not an ELF file: starts with {magic:02x?}, expected [7f, 45, 4c, 46] (\\x7fELF)"
            ),
            WrongClass { class } => write!(
                f,
                "ELF class {class} is not ELFCLASS64 (2): build the kernel for x86_64, not i386"
            ),
            WrongEndianness { data } => {
                write!(f, "ELF data encoding {data} is not little-endian (ELFDATA2LSB, 1)")
            }
            TruncatedHeader { file_len } => {
                write!(f, "file is {file_len} bytes, shorter than the 64-byte ELF64 header")
            }
            WrongMachine { machine } => {
                write!(f, "e_machine {machine} is not x86-64 (EM_X86_64, 62)")
            }
            RelocatableObject => write!(
                f,
                "this is a relocatable object (ET_REL, a .o file), not a kernel: link it into an \
                 executable (ET_EXEC) or a static PIE (ET_DYN)"
            ),
            WrongType { e_type } => write!(
                f,
                "e_type {e_type:#x} is not loadable: expected ET_EXEC (2) or a static PIE ET_DYN (3)"
            ),
            BadProgramHeaderSize { phentsize, expected } => {
                write!(f, "e_phentsize is {phentsize}, expected {expected} for ELF64")
            }
            TooManyProgramHeaders { count, max } => {
                write!(f, "{count} program headers, more than the {max} this loader accepts")
            }
            ProgramHeadersOutsideFile { offset, size, file_len } => write!(
                f,
                "program header table [{offset:#x}, +{size:#x}) lies outside the {file_len}-byte \
                 file (truncated image?)"
            ),
            NoLoadSegments => write!(f, "no PT_LOAD program header: nothing to load"),
            InterpreterRequested { index } => write!(
                f,
                "program header {index}: PT_INTERP asks for a dynamic linker; link the kernel \
                 statically (-static or -static-pie)"
            ),
            MultipleDynamic { first, second } => {
                write!(f, "program headers {first} and {second} are both PT_DYNAMIC")
            }
            FileSizeExceedsMemSize { index, filesz, memsz } => write!(
                f,
                "program header {index}: p_filesz {filesz:#x} is larger than p_memsz {memsz:#x}"
            ),
            SegmentOutsideFile { index, offset, filesz, file_len } => write!(
                f,
                "program header {index}: file bytes [{offset:#x}, +{filesz:#x}) lie past the end \
                 of the {file_len}-byte file (truncated image?)"
            ),
            Overflow { index, what } => {
                write!(f, "{}{what} overflows 64 bits", index_text(index))
            }
            BadAlignment { index, align } => {
                write!(f, "program header {index}: p_align {align:#x} is not a power of two")
            }
            MisalignedSegment { index, vaddr, paddr } => write!(
                f,
                "program header {index}: p_vaddr {vaddr:#x} and p_paddr {paddr:#x} differ within \
                 a 4 KiB page, so pages cannot map one onto the other"
            ),
            NonCanonicalSegment { index, vaddr, end } => write!(
                f,
                "program header {index}: virtual range [{vaddr:#x}, {end:#x}) is not canonical \
                 (x86-64 addresses must be below 0x800000000000 or from 0xffff800000000000)"
            ),
            ImageTooLarge { image_size, available, region } => write!(
                f,
                "image spans {image_size:#x} bytes but region {region} has room for only \
                 {available:#x} (after alignment)"
            ),
            SegmentOutsideRegion { index, start, end, region } => write!(
                f,
                "program header {index}: physical range [{start:#x}, {end:#x}) is outside the \
                 region {region}"
            ),
            PhysicalOverlap { first, second, start, end } => write!(
                f,
                "program headers {first} and {second} overlap in physical memory at \
                 [{start:#x}, {end:#x})"
            ),
            VirtualOverlap { first, second, start, end } => write!(
                f,
                "program headers {first} and {second} overlap in virtual memory at \
                 [{start:#x}, {end:#x})"
            ),
            ConflictingPageMapping { first, second, page } => write!(
                f,
                "program headers {first} and {second} share the virtual page {page:#x} but place \
                 it at different physical pages"
            ),
            EntryOutsideSegments { entry } => {
                write!(f, "entry point {entry:#x} is not inside any PT_LOAD segment")
            }
            EntryNotExecutable { entry, index } => write!(
                f,
                "entry point {entry:#x} is in program header {index}, which is not executable \
                 (no PF_X)"
            ),
            MissingDynamicEntry { tag, needs } => {
                write!(f, "dynamic entry {} is present but {} is missing", dt_name(*tag), dt_name(*needs))
            }
            UnsupportedDynamic { tag, value } => write!(
                f,
                "dynamic entry {} (value {value:#x}) is not supported: {}",
                dt_name(*tag),
                dt_advice(*tag)
            ),
            BadRelaEntrySize { relaent, expected } => {
                write!(f, "DT_RELAENT is {relaent}, expected {expected} (Elf64_Rela)")
            }
            BadRelaTableSize { size, entry_size } => write!(
                f,
                "relocation table size {size:#x} is not a multiple of the entry size {entry_size}"
            ),
            RelocationTableOutsideFile { vaddr, size } => write!(
                f,
                "relocation table [{vaddr:#x}, +{size:#x}) is not inside the file bytes of a \
                 PT_LOAD segment"
            ),
            UnsupportedRelocation { r_type, offset } => {
                // goblin names known types without the `R_` prefix ("X86_64_64") and unknown
                // ones with it ("R_UNKNOWN_X86_64").
                let name = goblin::elf::reloc::r_to_str(*r_type, goblin::elf::header::EM_X86_64);
                let prefix = if name.starts_with("R_") { "" } else { "R_" };
                write!(
                    f,
                    "relocation type {prefix}{name} ({r_type}) at {offset:#x} is not supported: \
                     only R_X86_64_RELATIVE is (link as a static PIE with no symbol references \
                     left)"
                )
            }
            RelocationOutsideSegments { offset } => write!(
                f,
                "relocation target [{offset:#x}, +8) is not inside a PT_LOAD segment"
            ),
        }
    }
}

fn dt_name(tag: u64) -> &'static str {
    use goblin::elf::dynamic::*;
    match tag {
        DT_NEEDED => "DT_NEEDED",
        DT_PLTRELSZ => "DT_PLTRELSZ",
        DT_RELA => "DT_RELA",
        DT_RELASZ => "DT_RELASZ",
        DT_RELAENT => "DT_RELAENT",
        DT_REL => "DT_REL",
        DT_RELSZ => "DT_RELSZ",
        DT_PLTREL => "DT_PLTREL",
        DT_JMPREL => "DT_JMPREL",
        crate::gabi::DT_RELRSZ => "DT_RELRSZ",
        crate::gabi::DT_RELR => "DT_RELR",
        _ => "unknown tag",
    }
}

fn dt_advice(tag: u64) -> &'static str {
    use goblin::elf::dynamic::*;
    match tag {
        DT_NEEDED => "the image needs a shared library; link it statically",
        DT_REL | DT_RELSZ => "x86-64 images use RELA relocations; relink with a standard linker",
        crate::gabi::DT_RELR | crate::gabi::DT_RELRSZ => "relink without -z pack-relative-relocs",
        DT_PLTREL => "PLT relocations must be RELA (7)",
        _ => "relink as a static PIE",
    }
}

impl core::error::Error for LoadError {}

/// A [`crate::PhysMemory`] write that failed: the range it covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryError {
    /// First physical address of the failed access.
    pub paddr: u64,
    /// Its length in bytes.
    pub len: u64,
}

impl fmt::Display for MemoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "physical memory [{:#x}, +{:#x}) could not be written", self.paddr, self.len)
    }
}

/// Why [`crate::apply`] stopped. Memory may be partly written; re-run `apply` or discard it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyError {
    /// `apply` was given a different image (by length) from the one that was planned.
    ImageMismatch { planned_len: u64, actual_len: u64 },
    /// The plan asks for a write outside its region or a read outside the image. A plan made by
    /// [`crate::plan`] never does; `apply` checks anyway so the guarantee does not rest on one
    /// function alone.
    InconsistentPlan { paddr: u64, len: u64 },
    /// The physical-memory writer reported a failure.
    Memory(MemoryError),
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ImageMismatch { planned_len, actual_len } => write!(
                f,
                "the image is {actual_len} bytes but the plan was made for a {planned_len}-byte \
                 image"
            ),
            Self::InconsistentPlan { paddr, len } => write!(
                f,
                "refusing to write [{paddr:#x}, +{len:#x}): outside the plan's region or image"
            ),
            Self::Memory(e) => write!(f, "{e}"),
        }
    }
}

impl core::error::Error for ApplyError {}

impl From<MemoryError> for ApplyError {
    fn from(e: MemoryError) -> Self {
        Self::Memory(e)
    }
}
