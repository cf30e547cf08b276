//! Building an instance's 4-level page tables.
//!
//! The manager gives every instance tables of its own, built from the loader's plan: the
//! image's virtual→physical mappings with their segment permissions, then an identity map of
//! the rest of the instance's region (read/write, no execute), and the instance's trampoline
//! page. Nothing else is mapped, so an instance that follows its tables cannot touch the
//! manager or another instance (see `docs/isolation.md` for why that is only cooperative).
//!
//! Tables are written through [`TableMemory`], so the builder is tested on the host against a
//! fake memory, and [`Mapper::translate`] walks what was built, the way the CPU would.
//!
//! Format: SDM Vol. 3A, "4-Level Paging and 5-Level Paging" (tables "Format of a PML4 Entry",
//! "…Page-Directory Entry that Maps a 2-MByte Page", "…Page-Table Entry that Maps a 4-KByte
//! Page"). Intermediate entries are present + writable and never execute-disable, so the leaf
//! alone decides a page's permissions.
//!
//! # Invariants
//! - A virtual page is mapped at most once: [`Mapper::map`] refuses to remap
//!   ([`PageTableError::AlreadyMapped`]); [`Mapper::map_unmapped`] skips what is mapped.
//! - Every table frame comes from [`TableMemory::alloc_table`] and is zeroed there.

use core::fmt;

pub const PAGE_4K: u64 = bootproto::PAGE_SIZE;
pub const PAGE_2M: u64 = 0x20_0000;

/// Entry bits (SDM Vol. 3A, "Paging-Structure Entries").
pub const PRESENT: u64 = 1 << 0;
pub const WRITABLE: u64 = 1 << 1;
/// Page-level write-through and cache disable: with the PAT at its power-up value, PWT|PCD
/// selects UC, uncached (SDM Vol. 3A, "Memory Types", "Selecting a Memory Type from the PAT").
pub const WRITE_THROUGH: u64 = 1 << 3;
pub const CACHE_DISABLE: u64 = 1 << 4;
pub const HUGE: u64 = 1 << 7;
pub const NO_EXECUTE: u64 = 1 << 63;
/// Bits 12..52 hold the physical address of the next table or page.
pub const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;

/// Permissions of a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Perms {
    pub writable: bool,
    pub executable: bool,
    /// Uncached (for device registers such as the local APIC's page).
    pub uncached: bool,
}

impl Perms {
    pub const RW: Perms = Perms { writable: true, executable: false, uncached: false };
    pub const RX: Perms = Perms { writable: false, executable: true, uncached: false };
    pub const RWX: Perms = Perms { writable: true, executable: true, uncached: false };
    pub const R: Perms = Perms { writable: false, executable: false, uncached: false };
    /// Device registers: read/write, no execute, uncached.
    pub const MMIO: Perms = Perms { writable: true, executable: false, uncached: true };

    /// The permissions of an ELF segment mapping.
    pub const fn segment(writable: bool, executable: bool) -> Perms {
        Perms { writable, executable, uncached: false }
    }
}

/// An upper bound on the table frames below the root that mapping `len` bytes at any address
/// can need: a page table per 2 MiB touched, a page directory per GiB touched, a PDPT per
/// 512 GiB touched, each plus one for a range that straddles a boundary.
pub const fn tables_bound(len: u64) -> u64 {
    len.div_ceil(PAGE_2M) + 1 + len.div_ceil(1 << 30) + 1 + len.div_ceil(1 << 39) + 1
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageTableError {
    /// No frame left for a new table.
    OutOfFrames,
    /// `virt` is already mapped (to `existing`).
    AlreadyMapped { virt: u64, existing: u64 },
    /// Addresses and lengths must be 4 KiB aligned.
    Misaligned { virt: u64, phys: u64, len: u64 },
    /// `virt` is not a canonical 48-bit address.
    NonCanonical { virt: u64 },
    /// `virt + len` or `phys + len` overflows, or `phys` is beyond 52 bits.
    OutOfRange { virt: u64, phys: u64, len: u64 },
}

impl fmt::Display for PageTableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PageTableError::OutOfFrames => f.write_str("no free frame for a page table"),
            PageTableError::AlreadyMapped { virt, existing } => {
                write!(f, "virtual page {virt:#x} is already mapped (to {existing:#x})")
            }
            PageTableError::Misaligned { virt, phys, len } => {
                write!(f, "mapping {len:#x} bytes {virt:#x} -> {phys:#x} is not 4 KiB aligned")
            }
            PageTableError::NonCanonical { virt } => {
                write!(f, "virtual address {virt:#x} is not canonical")
            }
            PageTableError::OutOfRange { virt, phys, len } => write!(
                f,
                "mapping {len:#x} bytes {virt:#x} -> {phys:#x} runs past the address space"
            ),
        }
    }
}

/// Where tables live: the manager's physical memory, or a fake one in tests.
pub trait TableMemory {
    /// A zeroed 4 KiB frame for a new table.
    fn alloc_table(&mut self) -> Result<u64, PageTableError>;
    fn read_entry(&self, table: u64, index: usize) -> u64;
    fn write_entry(&mut self, table: u64, index: usize, entry: u64);
}

pub fn is_canonical(virt: u64) -> bool {
    let top = virt >> 47;
    top == 0 || top == 0x1_FFFF
}

fn index(virt: u64, level: u32) -> usize {
    ((virt >> (12 + 9 * level)) & 0x1FF) as usize
}

/// Builds one address space.
pub struct Mapper<'m, M: TableMemory> {
    root: u64,
    mem: &'m mut M,
    /// Use the execute-disable bit (needs EFER.NXE; CPUID 8000_0001h EDX bit 20).
    nx: bool,
    tables: usize,
}

impl<'m, M: TableMemory> Mapper<'m, M> {
    pub fn new(mem: &'m mut M, nx: bool) -> Result<Self, PageTableError> {
        let root = mem.alloc_table()?;
        Ok(Mapper { root, mem, nx, tables: 1 })
    }

    /// Physical address of the PML4 (what goes into CR3).
    pub fn root(&self) -> u64 {
        self.root
    }

    /// How many table frames this address space uses.
    pub fn table_count(&self) -> usize {
        self.tables
    }

    fn leaf_bits(&self, perms: Perms) -> u64 {
        let mut e = PRESENT;
        if perms.writable {
            e |= WRITABLE;
        }
        if perms.uncached {
            e |= WRITE_THROUGH | CACHE_DISABLE;
        }
        if self.nx && !perms.executable {
            e |= NO_EXECUTE;
        }
        e
    }

    fn check(virt: u64, phys: u64, len: u64) -> Result<(), PageTableError> {
        if !virt.is_multiple_of(PAGE_4K)
            || !phys.is_multiple_of(PAGE_4K)
            || !len.is_multiple_of(PAGE_4K)
        {
            return Err(PageTableError::Misaligned { virt, phys, len });
        }
        let range = PageTableError::OutOfRange { virt, phys, len };
        let last_virt = virt.checked_add(len.saturating_sub(1)).ok_or(range)?;
        let end_phys = phys.checked_add(len).ok_or(range)?;
        if end_phys > 1 << 52 {
            return Err(range);
        }
        if !is_canonical(virt) {
            return Err(PageTableError::NonCanonical { virt });
        }
        if len > 0 && !is_canonical(last_virt) {
            return Err(PageTableError::NonCanonical { virt: last_virt });
        }
        // The range must not straddle the canonical hole.
        if len > 0 && (virt >> 47) != (last_virt >> 47) {
            return Err(PageTableError::NonCanonical { virt: last_virt });
        }
        Ok(())
    }

    /// The table one level down from `table[idx]`, creating it if absent. `None` if that
    /// entry maps a huge page.
    fn next_table(&mut self, table: u64, idx: usize) -> Result<Option<u64>, PageTableError> {
        let e = self.mem.read_entry(table, idx);
        if e & PRESENT != 0 {
            if e & HUGE != 0 {
                return Ok(None);
            }
            return Ok(Some(e & ADDR_MASK));
        }
        let t = self.mem.alloc_table()?;
        self.tables += 1;
        self.mem.write_entry(table, idx, t | PRESENT | WRITABLE);
        Ok(Some(t))
    }

    /// Maps `[virt, virt+len)` to `[phys, phys+len)`; refuses if any page is already mapped.
    pub fn map(
        &mut self,
        virt: u64,
        phys: u64,
        len: u64,
        perms: Perms,
    ) -> Result<(), PageTableError> {
        Self::check(virt, phys, len)?;
        // Refuse before writing anything, so a failed map leaves no partial mapping.
        let mut off = 0;
        while off < len {
            if let Some((existing, _)) = self.translate(virt + off) {
                return Err(PageTableError::AlreadyMapped { virt: virt + off, existing });
            }
            off += PAGE_4K;
        }
        self.map_range(virt, phys, len, perms)
    }

    /// Maps the pages of `[virt, virt+len)` that are not mapped yet; leaves the others alone.
    pub fn map_unmapped(
        &mut self,
        virt: u64,
        phys: u64,
        len: u64,
        perms: Perms,
    ) -> Result<(), PageTableError> {
        Self::check(virt, phys, len)?;
        self.map_range(virt, phys, len, perms)
    }

    /// Maps every page of the range that is not mapped yet. [`Mapper::map`] has already
    /// refused ranges with mapped pages, so for it this maps the whole range.
    fn map_range(
        &mut self,
        virt: u64,
        phys: u64,
        len: u64,
        perms: Perms,
    ) -> Result<(), PageTableError> {
        let leaf = self.leaf_bits(perms);
        let mut off = 0;
        while off < len {
            let (v, p) = (virt + off, phys + off);
            // PML4 entries never map pages; a "huge" one means corrupted tables.
            let corrupt = PageTableError::AlreadyMapped { virt: v, existing: 0 };
            let Some(pdpt) = self.next_table(self.root, index(v, 3))? else { return Err(corrupt) };
            let Some(pd) = self.next_table(pdpt, index(v, 2))? else {
                // A 1 GiB page maps this (we never create those; treat as mapped).
                off += PAGE_4K;
                continue;
            };
            let pd_idx = index(v, 1);
            let pde = self.mem.read_entry(pd, pd_idx);
            // A whole free 2 MiB chunk: one huge page.
            if pde & PRESENT == 0 && v % PAGE_2M == 0 && p % PAGE_2M == 0 && len - off >= PAGE_2M {
                self.mem.write_entry(pd, pd_idx, p | leaf | HUGE);
                off += PAGE_2M;
                continue;
            }
            if pde & PRESENT != 0 && pde & HUGE != 0 {
                off += PAGE_4K;
                continue;
            }
            let Some(pt) = self.next_table(pd, pd_idx)? else { return Err(corrupt) };
            let pt_idx = index(v, 0);
            if self.mem.read_entry(pt, pt_idx) & PRESENT == 0 {
                self.mem.write_entry(pt, pt_idx, p | leaf);
            }
            off += PAGE_4K;
        }
        Ok(())
    }

    /// Walks the tables like the CPU: the physical address and permissions `virt` maps to.
    pub fn translate(&self, virt: u64) -> Option<(u64, Perms)> {
        translate(&*self.mem, self.root, virt)
    }
}

/// Walks the tables at `root` for `virt`, as the CPU does (SDM Vol. 3A, "Linear-Address
/// Translation to a 4-KByte Page using 4-Level Paging").
pub fn translate<M: TableMemory + ?Sized>(mem: &M, root: u64, virt: u64) -> Option<(u64, Perms)> {
    if !is_canonical(virt) {
        return None;
    }
    let mut table = root;
    let mut writable = true;
    let mut executable = true;
    for level in (0..4).rev() {
        let e = mem.read_entry(table, index(virt, level));
        if e & PRESENT == 0 {
            return None;
        }
        writable &= e & WRITABLE != 0;
        executable &= e & NO_EXECUTE == 0;
        let huge = e & HUGE != 0 && (level == 1 || level == 2);
        if level == 0 || huge {
            let page_size = 1u64 << (12 + 9 * level);
            let base = e & ADDR_MASK & !(page_size - 1);
            let uncached = e & (WRITE_THROUGH | CACHE_DISABLE) == WRITE_THROUGH | CACHE_DISABLE;
            return Some((
                base + (virt & (page_size - 1)),
                Perms { writable, executable, uncached },
            ));
        }
        table = e & ADDR_MASK;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;

    /// A fake physical memory holding only page tables.
    struct FakeTables {
        tables: BTreeMap<u64, [u64; 512]>,
        next: u64,
        limit: usize,
    }

    impl FakeTables {
        fn new(limit: usize) -> Self {
            FakeTables { tables: BTreeMap::new(), next: 0x10_0000, limit }
        }
    }

    impl TableMemory for FakeTables {
        fn alloc_table(&mut self) -> Result<u64, PageTableError> {
            if self.tables.len() >= self.limit {
                return Err(PageTableError::OutOfFrames);
            }
            let t = self.next;
            self.next += PAGE_4K;
            self.tables.insert(t, [0; 512]);
            Ok(t)
        }
        fn read_entry(&self, table: u64, index: usize) -> u64 {
            self.tables[&table][index]
        }
        fn write_entry(&mut self, table: u64, index: usize, entry: u64) {
            self.tables.get_mut(&table).expect("writes go to allocated tables")[index] = entry;
        }
    }

    #[test]
    fn identity_region_uses_huge_pages_and_translates() {
        let mut mem = FakeTables::new(64);
        let mut m = Mapper::new(&mut mem, true).unwrap();
        m.map(0x400_0000, 0x400_0000, 0x40_0000, Perms::RW).unwrap();
        assert_eq!(m.translate(0x400_1234), Some((0x400_1234, Perms::RW)));
        assert_eq!(m.translate(0x43f_ffff), Some((0x43f_ffff, Perms::RW)));
        assert_eq!(m.translate(0x440_0000), None);
        assert_eq!(m.translate(0x3ff_ffff), None);
        // PML4 + PDPT + PD, no page tables: two 2 MiB pages.
        assert_eq!(m.table_count(), 3);
    }

    #[test]
    fn higher_half_image_and_identity_region_coexist_with_their_own_permissions() {
        let mut mem = FakeTables::new(64);
        let mut m = Mapper::new(&mut mem, true).unwrap();
        let high = 0xffff_ffff_8000_0000;
        m.map(high, 0x20_0000, 0x3000, Perms::RX).unwrap();
        m.map(high + 0x3000, 0x20_3000, 0x1000, Perms::RW).unwrap();
        // Identity of the whole region, skipping nothing (different virtual addresses).
        m.map_unmapped(0x20_0000, 0x20_0000, 0x20_0000, Perms::RW).unwrap();
        assert_eq!(m.translate(high + 0x10), Some((0x20_0010, Perms::RX)));
        assert_eq!(m.translate(high + 0x3008), Some((0x20_3008, Perms::RW)));
        assert_eq!(m.translate(0x20_0010), Some((0x20_0010, Perms::RW)));
        assert_eq!(m.translate(high + 0x4000), None);
    }

    #[test]
    fn map_unmapped_keeps_segment_permissions_where_image_is_identity_placed() {
        let mut mem = FakeTables::new(64);
        let mut m = Mapper::new(&mut mem, true).unwrap();
        m.map(0x20_0000, 0x20_0000, 0x2000, Perms::RX).unwrap();
        m.map_unmapped(0x20_0000, 0x20_0000, 0x20_0000, Perms::RW).unwrap();
        assert_eq!(m.translate(0x20_1000), Some((0x20_1000, Perms::RX)));
        assert_eq!(m.translate(0x20_2000), Some((0x20_2000, Perms::RW)));
        assert_eq!(m.translate(0x3f_f000), Some((0x3f_f000, Perms::RW)));
    }

    #[test]
    fn remapping_is_refused_without_writing_anything() {
        let mut mem = FakeTables::new(64);
        let mut m = Mapper::new(&mut mem, true).unwrap();
        m.map(0x1000_0000, 0x1000_0000, 0x2000, Perms::RW).unwrap();
        let err = m.map(0x0fff_f000, 0x5000_0000, 0x3000, Perms::RX).unwrap_err();
        assert_eq!(err, PageTableError::AlreadyMapped { virt: 0x1000_0000, existing: 0x1000_0000 });
        assert_eq!(m.translate(0x0fff_f000), None, "nothing of the refused mapping was written");
    }

    #[test]
    fn without_nx_nothing_is_marked_execute_disable() {
        let mut mem = FakeTables::new(64);
        let mut m = Mapper::new(&mut mem, false).unwrap();
        m.map(0x1000, 0x1000, 0x1000, Perms::RW).unwrap();
        assert_eq!(m.translate(0x1000), Some((0x1000, Perms::RWX)));
    }

    #[test]
    fn bad_requests_are_refused() {
        let mut mem = FakeTables::new(64);
        let mut m = Mapper::new(&mut mem, true).unwrap();
        assert!(matches!(
            m.map(0x1001, 0x1000, 0x1000, Perms::RW),
            Err(PageTableError::Misaligned { .. })
        ));
        assert!(matches!(
            m.map(0x0000_8000_0000_0000, 0x1000, 0x1000, Perms::RW),
            Err(PageTableError::NonCanonical { .. })
        ));
        assert!(matches!(
            m.map(0x0000_7fff_ffff_f000, 0x1000, 0x2000, Perms::RW),
            Err(PageTableError::NonCanonical { .. })
        ));
        assert!(matches!(
            m.map(0x1000, u64::MAX - 0xfff, 0x2000, Perms::RW),
            Err(PageTableError::OutOfRange { .. })
        ));
        let mut small = FakeTables::new(2);
        let mut m = Mapper::new(&mut small, true).unwrap();
        assert_eq!(m.map(0x1000, 0x1000, 0x1000, Perms::RW), Err(PageTableError::OutOfFrames));
    }

    #[test]
    fn unmapped_addresses_around_mappings_stay_unmapped() {
        // Property-style: map a few scattered ranges; every probed page is mapped iff it lies
        // in one of them, and maps to the right physical address.
        let mut mem = FakeTables::new(256);
        let mut m = Mapper::new(&mut mem, true).unwrap();
        let ranges = [
            (0x20_0000u64, 0x9000_0000u64, 0x5000u64),
            (0x60_0000, 0x60_0000, 0x40_0000),
            (0x7fff_0000_0000, 0x1000, 0x1000),
        ];
        for (v, p, l) in ranges {
            m.map(v, p, l, Perms::RW).unwrap();
        }
        let mut probe = 0u64;
        while probe < 0xc0_0000 {
            let expect = ranges
                .iter()
                .find(|(v, _, l)| probe >= *v && probe < v + l)
                .map(|(v, p, _)| p + (probe - v));
            assert_eq!(m.translate(probe).map(|t| t.0), expect, "probe {probe:#x}");
            probe += 0x800;
        }
        assert_eq!(m.translate(0x7fff_0000_0800).map(|t| t.0), Some(0x1800));
    }
}
