//! ELF gABI values goblin 0.10 does not name, used by the dynamic-section reader and by the
//! error messages alike (a leaf module, so neither depends on the other).

/// `DT_RELRSZ`, `DT_RELR`: ELF gABI, "Dynamic Section" (packed relative relocations, added to the
/// gABI in 2022).
pub(crate) const DT_RELRSZ: u64 = 35;
pub(crate) const DT_RELR: u64 = 36;

/// Size of `Elf64_Dyn`. ELF gABI, "Dynamic Section".
pub(crate) const SIZEOF_DYN: u64 = 16;

/// Size of `Elf64_Rela`. ELF gABI, "Relocation"; also `DT_RELAENT` of every x86-64 image.
pub(crate) const SIZEOF_RELA: u64 = 24;
