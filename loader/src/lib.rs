//! ELF kernel loader: validates an image against the physical region reserved for one kernel
//! instance, then writes it there, and nowhere else.
//!
//! The Linux multikernel RFC copies segments wherever the image asks, with its reserved-region
//! checks disabled. This loader refuses anything that would write outside the instance's
//! region, and says exactly why, naming the program header and the addresses.
//!
//! # Design: two phases
//! - [`plan`] (pure, no side effects) parses and validates everything and computes everything:
//!   each segment's source range in the file, physical destination, zero-filled tail and R/W/X
//!   flags; the entry point (virtual and physical); the page-granular virtual→physical
//!   [`Mapping`]s the instance's page tables must contain; and the resolved [`Relocation`]s.
//!   The result is a [`LoadPlan`]; `cargo xtask inspect elf` prints it on the host.
//! - [`apply`] carries a plan out through the small [`PhysMemory`] trait: it zero-fills the whole
//!   region except the bytes copied from the file, copies those, and patches relocations. No
//!   raw pointers here (`forbid(unsafe_code)`): the kernel's implementation of the trait is the
//!   only code that touches memory, and tests use a fake that checks every byte.
//!
//! # What loads
//! ELF64, little-endian, x86-64, with at least one `PT_LOAD`:
//! - `ET_EXEC` at `p_paddr`, every segment inside the region. Higher-half images
//!   (`p_vaddr != p_paddr`, as vmlinux and many hobby kernels are linked) load by physical
//!   address and run at their virtual addresses through the plan's mappings.
//! - `ET_DYN` static PIE (what Rust's `x86_64-unknown-none` target produces by default): moved
//!   to the lowest address of the region aligned to `max(p_align, 4 KiB)`, identity mapped,
//!   with `R_X86_64_RELATIVE` relocations applied.
//!
//! Everything refused has its own [`LoadError`] variant; the module docs of `src/plan.rs` list
//! the checks in order.
//!
//! # Parsing
//! Only goblin's fixed-layout structs are used (`elf64::header::Header`,
//! `elf64::program_header::ProgramHeader`, `elf64::dynamic::Dyn`, `elf64::reloc::Rela`), each
//! read with scroll's bounds-checked `pread` at an offset validated first. Not `Elf::parse`,
//! which walks sections, symbols and relocations and has a history of panics and large
//! allocations on malformed input.
//!
//! # Invariants (for any input bytes)
//! No panic, no indexing (only `get`), `checked_*` arithmetic on every address and size, loops
//! bounded by [`MAX_PROGRAM_HEADERS`] or by the image length, and no allocation sized by a count
//! not first checked against the image. The `plan` fuzz target in `loader/fuzz` exercises this;
//! see `loader/README.md`.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod apply;
mod dynamic;
mod error;
mod gabi;
mod plan;
mod region;

pub use apply::{apply, apply_to_zeroed, PhysMemory};
pub use error::{ApplyError, LoadError, MemoryError};
pub use plan::{
    identify, plan, Entry, Flags, ImageKind, LoadPlan, Mapping, Relocation, Segment,
    MAX_PROGRAM_HEADERS,
};
pub use region::{parse_number, ParseNumberError, ParseRegionError, Region, PAGE_SIZE};
