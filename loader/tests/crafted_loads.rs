//! Crafted images that must load: the plan's fields, and `apply`'s effect on every byte of a
//! fake region that starts out full of a previous occupant's garbage.

mod common;

use common::*;
use loader::{
    apply, apply_to_zeroed, plan, ApplyError, Entry, Flags, ImageKind, Mapping, MemoryError,
    PhysMemory, Region, Relocation,
};

const R_X: Flags = Flags { read: true, write: false, execute: true };
const RW_: Flags = Flags { read: true, write: true, execute: false };

#[test]
fn exec_is_loaded_at_its_physical_addresses() {
    let image = ElfBuilder::exec().build();
    let region = Region::new(0x20_0000, 0x10_0000);
    let p = plan(&image, region).unwrap();
    assert_eq!(p.kind(), ImageKind::Executable);
    assert_eq!(p.base(), 0x20_1000);
    assert_eq!(p.entry(), Entry { vaddr: 0x20_1000, paddr: 0x20_1000 });
    let s = p.segments();
    assert_eq!(s.len(), 2);
    assert_eq!(
        (s[0].index, s[0].file_range(), s[0].phys_range()),
        (0, 0x1000..0x1100, 0x20_1000..0x20_1100)
    );
    assert_eq!(
        (s[1].index, s[1].copy_range(), s[1].zero_range()),
        (1, 0x20_2000..0x20_2080, 0x20_2080..0x20_3000)
    );
    assert_eq!((s[0].flags, s[1].flags), (R_X, RW_));
    assert_eq!(
        p.mappings(),
        [
            Mapping { vaddr: 0x20_1000, paddr: 0x20_1000, size: 0x1000, flags: R_X },
            Mapping { vaddr: 0x20_2000, paddr: 0x20_2000, size: 0x1000, flags: RW_ },
        ]
    );
    assert!(p.relocations().is_empty());
    assert_eq!(p.bytes_to_copy(), 0x180);
    assert_eq!(p.bytes_to_zero(), 0x10_0000 - 0x180);

    let mut memory = FakeMemory::new(region);
    apply(&p, &image, &mut memory).unwrap();
    let expected = expected_region(
        &image,
        region,
        &[(0x1000, 0x100, 0x20_1000), (0x2000, 0x80, 0x20_2000)],
        &[],
    );
    assert_region_eq(&memory.bytes, &expected, region);
}

#[test]
fn pie_is_placed_at_the_lowest_aligned_address_and_relocated() {
    let image = ElfBuilder::pie().build();
    let region = Region::new(0x20_0000, 0x10_0000);
    let p = plan(&image, region).unwrap();
    assert_eq!(p.kind(), ImageKind::PositionIndependent);
    // Linked extent starts at 0x1000 (page aligned): it lands on the region's base.
    let bias = 0x20_0000 - 0x1000;
    assert_eq!(p.base(), 0x20_0000);
    assert_eq!(p.entry(), Entry { vaddr: 0x1000 + bias, paddr: 0x1000 + bias });
    assert_eq!(p.segments()[1].vaddr, 0x2000 + bias);
    assert_eq!(p.segments()[1].paddr, 0x2000 + bias);
    assert_eq!(p.segments()[1].link_vaddr, 0x2000);
    assert_eq!(
        p.relocations(),
        [
            Relocation {
                offset: 0x2080,
                vaddr: 0x2080 + bias,
                paddr: 0x2080 + bias,
                value: 0x1010 + bias
            },
            Relocation {
                offset: 0x2088,
                vaddr: 0x2088 + bias,
                paddr: 0x2088 + bias,
                value: 0x2100 + bias
            },
        ]
    );
    // Identity mapped at the placement.
    assert!(p.mappings().iter().all(|m| m.vaddr == m.paddr));

    let mut memory = FakeMemory::new(region);
    apply(&p, &image, &mut memory).unwrap();
    let expected = expected_region(
        &image,
        region,
        &[(0x1000, 0x100, 0x1000 + bias), (0x2000, 0x100, 0x2000 + bias)],
        &[(0x2080 + bias, 0x1010 + bias), (0x2088 + bias, 0x2100 + bias)],
    );
    assert_region_eq(&memory.bytes, &expected, region);
    assert_eq!(memory.read_u64(0x2080 + bias), 0x1010 + bias);
}

#[test]
fn pie_honours_large_alignment() {
    let mut elf = ElfBuilder::pie();
    elf.phdrs[0].p_align = 0x20_0000;
    let image = elf.build();
    let region = Region::new(0x20_1000, 0x40_0000);
    let p = plan(&image, region).unwrap();
    // Link base aligns down to 0; the first 2 MiB boundary in the region is 0x400000.
    assert_eq!(p.base(), 0x40_0000);
    assert_eq!(p.entry().paddr, 0x40_1000);
    assert_eq!(p.relocations()[0].value, 0x40_1010);
    let mut memory = FakeMemory::new(region);
    apply(&p, &image, &mut memory).unwrap();
    let expected = expected_region(
        &image,
        region,
        &[(0x1000, 0x100, 0x40_1000), (0x2000, 0x100, 0x40_2000)],
        &[(0x40_2080, 0x40_1010), (0x40_2088, 0x40_2100)],
    );
    assert_region_eq(&memory.bytes, &expected, region);
}

#[test]
fn higher_half_exec_runs_at_its_virtual_address() {
    let mut elf = ElfBuilder::exec();
    const VMA: u64 = 0xffff_ffff_8000_0000;
    for p in &mut elf.phdrs {
        p.p_vaddr += VMA;
    }
    elf.e_entry = VMA + 0x20_1010;
    let image = elf.build();
    let region = Region::new(0x20_0000, 0x4000);
    let p = plan(&image, region).unwrap();
    assert_eq!(p.entry(), Entry { vaddr: VMA + 0x20_1010, paddr: 0x20_1010 });
    assert_eq!(
        p.mappings(),
        [
            Mapping { vaddr: VMA + 0x20_1000, paddr: 0x20_1000, size: 0x1000, flags: R_X },
            Mapping { vaddr: VMA + 0x20_2000, paddr: 0x20_2000, size: 0x1000, flags: RW_ },
        ]
    );
    let mut memory = FakeMemory::new(region);
    apply(&p, &image, &mut memory).unwrap();
    let expected = expected_region(
        &image,
        region,
        &[(0x1000, 0x100, 0x20_1000), (0x2000, 0x80, 0x20_2000)],
        &[],
    );
    assert_region_eq(&memory.bytes, &expected, region);
}

#[test]
fn segments_sharing_pages_get_one_mapping_with_the_union_of_flags() {
    let mut elf = ElfBuilder::exec();
    elf.phdrs = vec![
        Phdr::load(0x1000, 0x20_1000, 0x100, 0x100, PF_R | PF_X),
        Phdr::load(0x1100, 0x20_1100, 0x100, 0x100, PF_R),
        Phdr::load(0x1200, 0x20_1200, 0x80, 0x1000, PF_R | PF_W),
        // An empty PT_LOAD occupies nothing: accepted even outside the region, and left out.
        Phdr::load(0x1280, 0x9000_0000, 0, 0, PF_R),
    ];
    elf.file_len = 0x1280;
    let image = elf.build();
    let region = Region::new(0x20_0000, 0x10_0000);
    let p = plan(&image, region).unwrap();
    assert_eq!(p.segments().iter().map(|s| s.index).collect::<Vec<_>>(), [0, 1, 2]);
    let rwx = Flags { read: true, write: true, execute: true };
    assert_eq!(
        p.mappings(),
        [
            Mapping { vaddr: 0x20_1000, paddr: 0x20_1000, size: 0x1000, flags: rwx },
            Mapping { vaddr: 0x20_2000, paddr: 0x20_2000, size: 0x1000, flags: RW_ },
        ]
    );
    let mut memory = FakeMemory::new(region);
    apply(&p, &image, &mut memory).unwrap();
    let expected = expected_region(&image, region, &[(0x1000, 0x280, 0x20_1000)], &[]);
    assert_region_eq(&memory.bytes, &expected, region);
}

#[test]
fn relocation_none_is_skipped() {
    let mut elf = ElfBuilder::pie();
    elf.set_dynamic(
        &[(DT_RELA, 0x2040), (DT_RELASZ, 48), (DT_RELAENT, 24)],
        &[(0x2080, R_X86_64_NONE, 0), (0x2088, R_X86_64_RELATIVE, 0x1000)],
    );
    let p = plan(&elf.build(), Region::new(0x20_0000, 0x10_0000)).unwrap();
    assert_eq!(p.relocations().len(), 1);
    assert_eq!(p.relocations()[0].offset, 0x2088);
    assert_eq!(p.relocations()[0].value, 0x20_0000);
}

#[test]
fn apply_refuses_a_different_image() {
    let image = ElfBuilder::exec().build();
    let region = Region::new(0x20_0000, 0x10_0000);
    let p = plan(&image, region).unwrap();
    let mut memory = FakeMemory::new(region);
    assert_eq!(
        apply(&p, &image[..0x1000], &mut memory),
        Err(ApplyError::ImageMismatch { planned_len: 0x2080, actual_len: 0x1000 })
    );
    assert!(memory.log.is_empty(), "nothing may be written before the checks pass");
}

#[test]
fn apply_reports_memory_failures() {
    struct Broken;
    impl PhysMemory for Broken {
        fn write(&mut self, paddr: u64, bytes: &[u8]) -> Result<(), MemoryError> {
            Err(MemoryError { paddr, len: bytes.len() as u64 })
        }
        fn fill(&mut self, paddr: u64, len: u64, _: u8) -> Result<(), MemoryError> {
            Err(MemoryError { paddr, len })
        }
    }
    let image = ElfBuilder::exec().build();
    let p = plan(&image, Region::new(0x20_0000, 0x10_0000)).unwrap();
    assert_eq!(
        apply(&p, &image, &mut Broken),
        Err(ApplyError::Memory(MemoryError { paddr: 0x20_0000, len: 0x1000 }))
    );
}

#[test]
fn apply_writes_every_region_byte_exactly_once_apart_from_relocations() {
    let image = ElfBuilder::pie().build();
    let region = Region::new(0x20_0000, 0x10_0000);
    let p = plan(&image, region).unwrap();
    let mut memory = FakeMemory::new(region);
    apply(&p, &image, &mut memory).unwrap();
    let mut writes = vec![0u32; region.size as usize];
    for &(paddr, len) in &memory.log {
        for w in &mut writes[(paddr - region.base) as usize..][..len as usize] {
            *w += 1;
        }
    }
    let relocated: Vec<u64> = p.relocations().iter().map(|r| r.paddr).collect();
    for (i, count) in writes.iter().enumerate() {
        let paddr = region.base + i as u64;
        let in_reloc = relocated.iter().any(|&r| (r..r + 8).contains(&paddr));
        assert_eq!(*count, if in_reloc { 2 } else { 1 }, "byte {paddr:#x}");
    }
}

#[test]
fn a_region_known_to_be_zero_gets_only_its_file_bytes_and_relocations() {
    let image = ElfBuilder::pie().build();
    let region = Region::new(0x20_0000, 0x10_0000);
    let p = plan(&image, region).unwrap();
    let mut full = FakeMemory::new(region);
    let zeroed = apply(&p, &image, &mut full).unwrap();
    assert_eq!(zeroed, p.bytes_to_zero());
    let mut quick = FakeMemory::new(region);
    quick.bytes.fill(0); // what a verified scrub leaves
    assert_eq!(apply_to_zeroed(&p, &image, &mut quick).unwrap(), 0);
    // The same bytes end up in a zero region, with far fewer bytes written.
    assert_region_eq(&quick.bytes, &full.bytes, region);
    let written: u64 = quick.log.iter().map(|&(_, len)| len).sum();
    assert_eq!(written, p.bytes_to_copy() + 8 * p.relocations().len() as u64);
}
