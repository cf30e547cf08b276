//! The dynamic section, read only for what a static PIE needs: where its RELA tables are.
//!
//! ELF gABI, "Dynamic Section": `PT_DYNAMIC` holds an array of `Elf64_Dyn { d_tag, d_val }`
//! ended by `DT_NULL`. A static PIE records its relocations in `DT_RELA`/`DT_RELASZ`/
//! `DT_RELAENT` and possibly `DT_JMPREL`/`DT_PLTRELSZ` (with `DT_PLTREL == DT_RELA`). Tags that
//! would need a dynamic linker or a relocation format we do not apply (`DT_NEEDED`, `DT_REL`,
//! `DT_RELR`) are refused rather than ignored, since ignoring them would leave pointers unpatched.
//!
//! # Invariants
//! The walk reads at most `p_filesz / 16` entries of a range already checked to lie inside the
//! file, stops at `DT_NULL`, and allocates nothing.

use goblin::elf::dynamic::{
    DT_JMPREL, DT_NEEDED, DT_NULL, DT_PLTREL, DT_PLTRELSZ, DT_REL, DT_RELA, DT_RELAENT, DT_RELASZ,
    DT_RELSZ,
};
use goblin::elf64::dynamic::Dyn;
use scroll::Pread;

use crate::error::LoadError;

use crate::gabi::{DT_RELR, DT_RELRSZ, SIZEOF_DYN, SIZEOF_RELA};

/// A relocation table, by link-time virtual address and size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RelaTable {
    pub vaddr: u64,
    pub size: u64,
}

/// The RELA tables named by the dynamic array at `[offset, offset + size)` of `image`
/// (already bounds-checked by the caller): `DT_RELA` first, then `DT_JMPREL`.
pub(crate) fn rela_tables(
    image: &[u8],
    offset: u64,
    size: u64,
) -> Result<[Option<RelaTable>; 2], LoadError> {
    let mut rela = None;
    let mut relasz = None;
    let mut relaent = None;
    let mut jmprel = None;
    let mut pltrelsz = None;
    let mut pltrel = None;

    let count = size / SIZEOF_DYN;
    for i in 0..count {
        let at = i
            .checked_mul(SIZEOF_DYN)
            .and_then(|o| o.checked_add(offset))
            .and_then(|o| usize::try_from(o).ok())
            .ok_or(LoadError::Overflow { index: None, what: "dynamic entry offset" })?;
        // The range was checked to be inside the file; a failed read means it was not.
        let entry: Dyn = image
            .pread_with(at, scroll::LE)
            .map_err(|_| LoadError::Overflow { index: None, what: "dynamic entry offset" })?;
        match entry.d_tag {
            DT_NULL => break,
            DT_RELA => rela = Some(entry.d_val),
            DT_RELASZ => relasz = Some(entry.d_val),
            DT_RELAENT => relaent = Some(entry.d_val),
            DT_JMPREL => jmprel = Some(entry.d_val),
            DT_PLTRELSZ => pltrelsz = Some(entry.d_val),
            DT_PLTREL => pltrel = Some(entry.d_val),
            DT_NEEDED | DT_REL | DT_RELR => {
                return Err(LoadError::UnsupportedDynamic { tag: entry.d_tag, value: entry.d_val })
            }
            // A zero-sized REL/RELR table is harmless (some linkers emit one); anything else
            // would be relocations we silently skip.
            DT_RELSZ | DT_RELRSZ if entry.d_val != 0 => {
                return Err(LoadError::UnsupportedDynamic { tag: entry.d_tag, value: entry.d_val })
            }
            _ => {}
        }
    }

    if let Some(ent) = relaent {
        if ent != SIZEOF_RELA {
            return Err(LoadError::BadRelaEntrySize { relaent: ent, expected: SIZEOF_RELA });
        }
    }
    let rela = match (rela, relasz) {
        (Some(vaddr), Some(size)) => Some(RelaTable { vaddr, size }),
        (Some(_), None) => {
            return Err(LoadError::MissingDynamicEntry { tag: DT_RELA, needs: DT_RELASZ })
        }
        (None, Some(0) | None) => None,
        (None, Some(_)) => {
            return Err(LoadError::MissingDynamicEntry { tag: DT_RELASZ, needs: DT_RELA })
        }
    };
    let plt = match (jmprel, pltrelsz) {
        (Some(vaddr), Some(size)) => {
            match pltrel {
                Some(DT_RELA) => {}
                Some(other) => {
                    return Err(LoadError::UnsupportedDynamic { tag: DT_PLTREL, value: other })
                }
                None => {
                    return Err(LoadError::MissingDynamicEntry { tag: DT_JMPREL, needs: DT_PLTREL })
                }
            }
            Some(RelaTable { vaddr, size })
        }
        (Some(_), None) => {
            return Err(LoadError::MissingDynamicEntry { tag: DT_JMPREL, needs: DT_PLTRELSZ })
        }
        (None, Some(0) | None) => None,
        (None, Some(_)) => {
            return Err(LoadError::MissingDynamicEntry { tag: DT_PLTRELSZ, needs: DT_JMPREL })
        }
    };
    for table in [rela, plt].iter().flatten() {
        if !table.size.is_multiple_of(SIZEOF_RELA) {
            return Err(LoadError::BadRelaTableSize { size: table.size, entry_size: SIZEOF_RELA });
        }
    }
    Ok([rela, plt])
}
