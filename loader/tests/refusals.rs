//! One test per refusal: a crafted image that is wrong in exactly one way, and the exact
//! `LoadError` variant (with its values) that `plan` must return.

mod common;

use common::*;
use loader::{plan, LoadError, Region, MAX_PROGRAM_HEADERS};

/// 2 MiB at 2 MiB: holds `ElfBuilder::exec()` and `ElfBuilder::pie()`.
const REGION: Region = Region::new(0x20_0000, 0x20_0000);

fn refuse(elf: &ElfBuilder) -> LoadError {
    refuse_bytes(&elf.build(), REGION)
}

fn refuse_bytes(image: &[u8], region: Region) -> LoadError {
    match plan(image, region) {
        Ok(p) => panic!("expected a refusal, got a plan: {p:#?}"),
        Err(e) => {
            // Every message is printable and non-empty.
            assert!(!e.to_string().is_empty());
            e
        }
    }
}

#[test]
fn builder_images_are_valid() {
    plan(&ElfBuilder::exec().build(), REGION).unwrap();
    plan(&ElfBuilder::pie().build(), REGION).unwrap();
}

#[test]
fn bad_magic_is_not_elf() {
    let mut elf = ElfBuilder::exec();
    elf.magic = *b"MZ\x90\x00";
    assert_eq!(refuse(&elf), LoadError::NotElf { magic: *b"MZ\x90\x00" });
    assert_eq!(refuse_bytes(&[], REGION), LoadError::NotElf { magic: [0; 4] });
    assert_eq!(refuse_bytes(b"\x7fEL", REGION), LoadError::NotElf { magic: *b"\x7fEL\0" });
}

#[test]
fn elf32_is_wrong_class() {
    let mut elf = ElfBuilder::exec();
    elf.class = 1;
    let e = refuse(&elf);
    assert_eq!(e, LoadError::WrongClass { class: 1 });
    assert!(e.to_string().contains("ELFCLASS64"));
}

#[test]
fn big_endian_is_wrong_endianness() {
    let mut elf = ElfBuilder::exec();
    elf.data = 2;
    assert_eq!(refuse(&elf), LoadError::WrongEndianness { data: 2 });
}

#[test]
fn short_file_is_truncated_header() {
    let image = ElfBuilder::exec().build();
    assert_eq!(refuse_bytes(&image[..40], REGION), LoadError::TruncatedHeader { file_len: 40 });
}

#[test]
fn aarch64_is_wrong_machine() {
    let mut elf = ElfBuilder::exec();
    elf.e_machine = 183;
    assert_eq!(refuse(&elf), LoadError::WrongMachine { machine: 183 });
}

#[test]
fn object_file_is_named_as_such() {
    let mut elf = ElfBuilder::exec();
    elf.e_type = ET_REL;
    let e = refuse(&elf);
    assert_eq!(e, LoadError::RelocatableObject);
    let text = e.to_string();
    assert!(text.contains(".o") && text.contains("not a kernel"), "{text}");
}

#[test]
fn core_dump_is_wrong_type() {
    let mut elf = ElfBuilder::exec();
    elf.e_type = ET_CORE;
    assert_eq!(refuse(&elf), LoadError::WrongType { e_type: ET_CORE });
}

#[test]
fn wrong_phentsize() {
    let mut elf = ElfBuilder::exec();
    elf.e_phentsize = 32;
    assert_eq!(refuse(&elf), LoadError::BadProgramHeaderSize { phentsize: 32, expected: 56 });
}

#[test]
fn too_many_program_headers() {
    let mut elf = ElfBuilder::exec();
    elf.e_phnum = Some(MAX_PROGRAM_HEADERS + 1);
    assert_eq!(
        refuse(&elf),
        LoadError::TooManyProgramHeaders { count: 65, max: MAX_PROGRAM_HEADERS }
    );
    // PN_XNUM (the count lives in section 0) is refused the same way, before any allocation.
    elf.e_phnum = Some(0xffff);
    assert_eq!(
        refuse(&elf),
        LoadError::TooManyProgramHeaders { count: 0xffff, max: MAX_PROGRAM_HEADERS }
    );
}

#[test]
fn exactly_max_program_headers_is_accepted() {
    let mut elf = ElfBuilder::exec();
    while elf.phdrs.len() < usize::from(MAX_PROGRAM_HEADERS) {
        elf.phdrs.push(Phdr { p_type: PT_NOTE, ..Phdr::load(0, 0, 0, 0, PF_R) });
    }
    elf.e_phoff = 0x2080;
    elf.file_len = 0x2080 + 64 * 56;
    plan(&elf.build(), REGION).unwrap();
}

#[test]
fn program_header_table_outside_file() {
    let mut elf = ElfBuilder::exec();
    elf.e_phoff = 0x2080 - 56; // second header would end past the file
    assert_eq!(
        refuse(&elf),
        LoadError::ProgramHeadersOutsideFile { offset: 0x2080 - 56, size: 112, file_len: 0x2080 }
    );
    elf.e_phoff = u64::MAX - 8;
    assert_eq!(
        refuse(&elf),
        LoadError::Overflow { index: None, what: "e_phoff + program header table size" }
    );
}

#[test]
fn no_pt_load() {
    let mut elf = ElfBuilder::exec();
    for p in &mut elf.phdrs {
        p.p_type = PT_NOTE;
    }
    assert_eq!(refuse(&elf), LoadError::NoLoadSegments);
    elf.phdrs.clear();
    assert_eq!(refuse(&elf), LoadError::NoLoadSegments);
}

#[test]
fn filesz_larger_than_memsz() {
    let mut elf = ElfBuilder::exec();
    elf.phdrs[1].p_memsz = 0x40;
    let e = refuse(&elf);
    assert_eq!(e, LoadError::FileSizeExceedsMemSize { index: 1, filesz: 0x80, memsz: 0x40 });
    assert!(e.to_string().contains("program header 1"), "{e}");
}

#[test]
fn segment_past_end_of_file() {
    let mut elf = ElfBuilder::exec();
    elf.phdrs[1].p_filesz = 0x81;
    assert_eq!(
        refuse(&elf),
        LoadError::SegmentOutsideFile { index: 1, offset: 0x2000, filesz: 0x81, file_len: 0x2080 }
    );
}

#[test]
fn offset_plus_filesz_overflows() {
    let mut elf = ElfBuilder::exec();
    elf.phdrs[0].p_offset = u64::MAX - 0x10;
    assert_eq!(refuse(&elf), LoadError::Overflow { index: Some(0), what: "p_offset + p_filesz" });
}

#[test]
fn vaddr_plus_memsz_overflows() {
    let mut elf = ElfBuilder::exec();
    elf.phdrs[1].p_vaddr = u64::MAX - 0x10;
    assert_eq!(refuse(&elf), LoadError::Overflow { index: Some(1), what: "p_vaddr + p_memsz" });
}

#[test]
fn paddr_plus_memsz_overflows() {
    let mut elf = ElfBuilder::exec();
    elf.phdrs[1].p_paddr = u64::MAX - 0x10;
    assert_eq!(refuse(&elf), LoadError::Overflow { index: Some(1), what: "p_paddr + p_memsz" });
}

#[test]
fn segment_outside_region() {
    let mut elf = ElfBuilder::exec();
    // Fits in size, but starts below the region.
    elf.phdrs[0].p_paddr = 0x1f_f000;
    elf.phdrs[0].p_vaddr = 0x1f_f000;
    elf.e_entry = 0x1f_f000;
    let e = refuse(&elf);
    assert_eq!(
        e,
        LoadError::SegmentOutsideRegion {
            index: 0,
            start: 0x1f_f000,
            end: 0x1f_f100,
            region: REGION
        }
    );
    let text = e.to_string();
    assert!(text.contains("program header 0") && text.contains("0x1ff000"), "{text}");
}

#[test]
fn image_larger_than_region() {
    let elf = ElfBuilder::exec();
    // Extent 0x201000..0x203000 = 0x2000 bytes; region of one page.
    let small = Region::new(0x20_1000, 0x1000);
    assert_eq!(
        refuse_bytes(&elf.build(), small),
        LoadError::ImageTooLarge { image_size: 0x2000, available: 0x1000, region: small }
    );
    // PIE: extent 0x1000..0x4000, region of 2 pages.
    let small = Region::new(0x40_0000, 0x2000);
    assert_eq!(
        refuse_bytes(&ElfBuilder::pie().build(), small),
        LoadError::ImageTooLarge { image_size: 0x3000, available: 0x2000, region: small }
    );
}

#[test]
fn pie_alignment_counts_against_the_region() {
    let mut elf = ElfBuilder::pie();
    elf.phdrs[0].p_align = 0x20_0000;
    // The region is big enough for the image but its first 2 MiB boundary leaves too little.
    let region = Region::new(0x20_1000, 0x20_0000);
    assert_eq!(
        refuse_bytes(&elf.build(), region),
        LoadError::ImageTooLarge { image_size: 0x4000, available: 0x1000, region }
    );
}

#[test]
fn physical_overlap() {
    let mut elf = ElfBuilder::exec();
    // Distinct virtual pages, same physical page.
    elf.phdrs[1].p_paddr = 0x20_1000;
    let e = refuse(&elf);
    assert_eq!(
        e,
        LoadError::PhysicalOverlap { first: 0, second: 1, start: 0x20_1000, end: 0x20_1100 }
    );
    assert!(e.to_string().contains("program headers 0 and 1"), "{e}");
}

#[test]
fn virtual_overlap() {
    let mut elf = ElfBuilder::exec();
    elf.phdrs[1].p_vaddr = 0x20_1000;
    assert_eq!(
        refuse(&elf),
        LoadError::VirtualOverlap { first: 0, second: 1, start: 0x20_1000, end: 0x20_1100 }
    );
}

#[test]
fn shared_virtual_page_on_different_physical_pages() {
    let mut elf = ElfBuilder::exec();
    // Data right after text in the same virtual page, but 0x10000 further physically.
    elf.phdrs[1].p_vaddr = 0x20_1100;
    elf.phdrs[1].p_paddr = 0x21_1100;
    assert_eq!(
        refuse(&elf),
        LoadError::ConflictingPageMapping { first: 0, second: 1, page: 0x20_1000 }
    );
}

#[test]
fn entry_outside_segments() {
    let mut elf = ElfBuilder::exec();
    elf.e_entry = 0x20_1100; // one past the end of text
    let e = refuse(&elf);
    assert_eq!(e, LoadError::EntryOutsideSegments { entry: 0x20_1100 });
    assert!(e.to_string().contains("0x201100"), "{e}");
}

#[test]
fn only_empty_segments_leave_the_entry_nowhere() {
    let mut elf = ElfBuilder::exec();
    for p in &mut elf.phdrs {
        p.p_filesz = 0;
        p.p_memsz = 0;
    }
    assert_eq!(refuse(&elf), LoadError::EntryOutsideSegments { entry: 0x20_1000 });
}

#[test]
fn entry_in_data_segment() {
    let mut elf = ElfBuilder::exec();
    elf.e_entry = 0x20_2000;
    assert_eq!(refuse(&elf), LoadError::EntryNotExecutable { entry: 0x20_2000, index: 1 });
}

#[test]
fn interpreter_is_refused() {
    let mut elf = ElfBuilder::exec();
    elf.phdrs.insert(0, Phdr { p_type: PT_INTERP, ..Phdr::load(0x200, 0, 0x1c, 0x1c, PF_R) });
    assert_eq!(refuse(&elf), LoadError::InterpreterRequested { index: 0 });
}

#[test]
fn alignment_not_a_power_of_two() {
    let mut elf = ElfBuilder::exec();
    elf.phdrs[1].p_align = 0x3000;
    assert_eq!(refuse(&elf), LoadError::BadAlignment { index: 1, align: 0x3000 });
}

#[test]
fn vaddr_and_paddr_in_different_page_offsets() {
    let mut elf = ElfBuilder::exec();
    elf.phdrs[1].p_vaddr = 0xffff_ffff_8020_2010;
    assert_eq!(
        refuse(&elf),
        LoadError::MisalignedSegment { index: 1, vaddr: 0xffff_ffff_8020_2010, paddr: 0x20_2000 }
    );
}

#[test]
fn non_canonical_virtual_range() {
    let mut elf = ElfBuilder::exec();
    elf.phdrs[1].p_vaddr = 0x0000_7fff_ffff_f800; // crosses into the hole
    elf.phdrs[1].p_paddr = 0x20_2800;
    assert_eq!(
        refuse(&elf),
        LoadError::NonCanonicalSegment {
            index: 1,
            vaddr: 0x0000_7fff_ffff_f800,
            end: 0x0000_8000_0000_0800
        }
    );
}

#[test]
fn unusable_regions() {
    let image = ElfBuilder::exec().build();
    let unaligned = Region::new(0x20_0800, 0x20_0000);
    assert_eq!(refuse_bytes(&image, unaligned), LoadError::UnalignedRegion { region: unaligned });
    let overflowing = Region::new(u64::MAX - 0xfff, 0x2000);
    assert_eq!(
        refuse_bytes(&image, overflowing),
        LoadError::RegionOverflows { region: overflowing }
    );
}

#[test]
fn unsupported_relocation_names_type_and_offset() {
    let mut elf = ElfBuilder::pie();
    elf.set_dynamic(
        &[(DT_RELA, 0x2040), (DT_RELASZ, 48), (DT_RELAENT, 24)],
        &[(0x2080, R_X86_64_RELATIVE, 0x1010), (0x2088, (3 << 32) | R_X86_64_64, 0)],
    );
    let e = refuse(&elf);
    assert_eq!(e, LoadError::UnsupportedRelocation { r_type: 1, offset: 0x2088 });
    let text = e.to_string();
    assert!(text.contains("R_X86_64_64") && text.contains("0x2088"), "{text}");
}

#[test]
fn plt_relocations_are_checked_too() {
    let mut elf = ElfBuilder::pie();
    elf.set_dynamic(
        &[(DT_JMPREL, 0x2040), (DT_PLTRELSZ, 24), (DT_PLTREL, DT_RELA)],
        &[(0x2080, (1 << 32) | R_X86_64_JUMP_SLOT, 0)],
    );
    assert_eq!(refuse(&elf), LoadError::UnsupportedRelocation { r_type: 7, offset: 0x2080 });
    elf.set_dynamic(&[(DT_JMPREL, 0x2040), (DT_PLTRELSZ, 24), (DT_PLTREL, DT_REL)], &[]);
    assert_eq!(refuse(&elf), LoadError::UnsupportedDynamic { tag: DT_PLTREL, value: DT_REL });
}

#[test]
fn relocation_target_outside_segments() {
    let mut elf = ElfBuilder::pie();
    // 0x3ffc..0x4004 straddles the end of the data segment (memsz ends at 0x4000).
    elf.set_dynamic(
        &[(DT_RELA, 0x2040), (DT_RELASZ, 24), (DT_RELAENT, 24)],
        &[(0x3ffc, R_X86_64_RELATIVE, 0)],
    );
    assert_eq!(refuse(&elf), LoadError::RelocationOutsideSegments { offset: 0x3ffc });
}

#[test]
fn relocation_value_overflow() {
    let mut elf = ElfBuilder::pie();
    elf.set_dynamic(
        &[(DT_RELA, 0x2040), (DT_RELASZ, 24), (DT_RELAENT, 24)],
        &[(0x2080, R_X86_64_RELATIVE, -0x100_0000)],
    );
    assert_eq!(
        refuse(&elf),
        LoadError::Overflow { index: None, what: "relocation value (base + addend)" }
    );
}

#[test]
fn relocation_table_problems() {
    let mut elf = ElfBuilder::pie();
    elf.set_dynamic(&[(DT_RELA, 0x2040)], &[]);
    assert_eq!(refuse(&elf), LoadError::MissingDynamicEntry { tag: DT_RELA, needs: DT_RELASZ });

    elf.set_dynamic(&[(DT_RELA, 0x2040), (DT_RELASZ, 24), (DT_RELAENT, 16)], &[]);
    assert_eq!(refuse(&elf), LoadError::BadRelaEntrySize { relaent: 16, expected: 24 });

    elf.set_dynamic(&[(DT_RELA, 0x2040), (DT_RELASZ, 25)], &[]);
    assert_eq!(refuse(&elf), LoadError::BadRelaTableSize { size: 25, entry_size: 24 });

    // 0x2040 + 0x1000 runs past the data segment's file bytes (which end at 0x2100).
    elf.set_dynamic(&[(DT_RELA, 0x2040), (DT_RELASZ, 0x1008)], &[]);
    assert_eq!(refuse(&elf), LoadError::RelocationTableOutsideFile { vaddr: 0x2040, size: 0x1008 });

    elf.set_dynamic(&[(DT_RELA, u64::MAX - 8), (DT_RELASZ, 24)], &[]);
    assert_eq!(
        refuse(&elf),
        LoadError::RelocationTableOutsideFile { vaddr: u64::MAX - 8, size: 24 }
    );
}

#[test]
fn dynamic_tags_needing_a_dynamic_linker_or_other_formats() {
    let mut elf = ElfBuilder::pie();
    for tag in [DT_NEEDED, DT_REL, DT_RELR] {
        elf.set_dynamic(&[(tag, 0x40)], &[]);
        assert_eq!(refuse(&elf), LoadError::UnsupportedDynamic { tag, value: 0x40 });
    }
}

#[test]
fn dynamic_segment_outside_file_and_duplicated() {
    let mut elf = ElfBuilder::pie();
    let dynamic = elf.phdrs.iter().position(|p| p.p_type == PT_DYNAMIC).unwrap();
    elf.phdrs[dynamic].p_filesz = 0x1000;
    assert_eq!(
        refuse(&elf),
        LoadError::SegmentOutsideFile {
            index: 2,
            offset: 0x2000,
            filesz: 0x1000,
            file_len: 0x2100
        }
    );
    let mut elf = ElfBuilder::pie();
    let copy = elf.phdrs[dynamic];
    elf.phdrs.push(copy);
    assert_eq!(refuse(&elf), LoadError::MultipleDynamic { first: 2, second: 3 });
}
