//! Host tests of the assembled code and of the bytes the builders produce.

use super::*;

fn u64_at(p: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(p[off..off + 8].try_into().unwrap())
}
fn u32_at(p: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(p[off..off + 4].try_into().unwrap())
}
fn u16_at(p: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(p[off..off + 2].try_into().unwrap())
}
fn find(code: &[u8], needle: &[u8]) -> Option<usize> {
    code.windows(needle.len()).position(|w| w == needle)
}

const H: usize = HEADER_OFFSET;

fn target() -> SlotTarget {
    SlotTarget {
        entry: 0x20_1234,
        stack_top: 0x3e_8000,
        arg0: 0x3f_f000,
        arg1: 1,
        status_block: 0x3f_e000,
        selectors: Selectors::Multikernel,
    }
}

#[test]
fn the_code_fits_and_starts_in_real_mode() {
    let code = start_code();
    assert_eq!(code.bytes.len(), CODE_MAX, "the code area is padded to CODE_MAX");
    // cli; cld; then o32 xor ebx, ebx (66 31 db) as assembled for .code16.
    assert_eq!(&code.bytes[..5], &[0xfa, 0xfc, 0x66, 0x31, 0xdb]);
    assert!(code.pm32_offset < code.lm64_offset && code.lm64_offset < code.bytes.len());
    // lock incl <entered>: the real-mode code counts every CPU that arrives.
    let entered = ((H + offset_of!(StartHeader, entered)) as u16).to_le_bytes();
    assert!(find(code.bytes, &[0x66, 0xf0, 0xff, 0x06, entered[0], entered[1]]).is_some());
}

#[test]
fn the_lookup_compares_apic_ids_and_the_armed_word() {
    let code = start_code();
    // cmpl $ARMED, 4(%edi): 81 7f 04 imm32.
    let mut want = vec![0x81, 0x7f, offset_of!(CpuEntry, armed) as u8];
    want.extend_from_slice(&ARMED.to_le_bytes());
    assert!(find(&code.bytes[code.pm32_offset..code.lm64_offset], &want).is_some());
    // cmpl %esi, (%edi): 39 37.
    assert!(find(&code.bytes[code.pm32_offset..code.lm64_offset], &[0x39, 0x37]).is_some());
}

#[test]
fn exception_stubs_push_the_vector_and_a_dummy_error_code_where_the_cpu_pushes_none() {
    let code = start_code();
    const WITH_ERROR_CODE: [usize; 10] = [8, 10, 11, 12, 13, 14, 17, 21, 29, 30];
    for (v, &off) in code.stub_offsets.iter().enumerate() {
        let s = &code.bytes[off as usize..];
        if WITH_ERROR_CODE.contains(&v) {
            assert_eq!(&s[..2], &[0x6a, v as u8], "stub {v} must push only its vector");
        } else {
            assert_eq!(&s[..4], &[0x6a, 0x00, 0x6a, v as u8], "stub {v} must push 0, then {v}");
        }
    }
}

#[test]
fn the_start_page_is_patched_for_its_address_and_table() {
    let code = start_code();
    let page = 0x8000;
    let p = build_start_page(&code, page, 0x7f_0000, 300, true).unwrap();
    assert_eq!(&p[..code.bytes.len()], code.bytes);
    assert_eq!(u16_at(&p, H + 0x20), 4 * 8 - 1);
    assert_eq!(u64_at(&p, H + 0x22), page + H as u64);
    assert_eq!(u64_at(&p, H + 8), GDT_CODE32);
    assert_eq!(u64_at(&p, H + 16), GDT_DATA);
    assert_eq!(u64_at(&p, H + 24), GDT_CODE64);
    // Far pointers: page + label offsets, with the right selectors.
    assert_eq!(u32_at(&p, H + 0x30) as u64, page + code.pm32_offset as u64);
    assert_eq!(u16_at(&p, H + 0x34), SEL_CODE32);
    assert_eq!(u32_at(&p, H + 0x38) as u64, page + code.lm64_offset as u64);
    assert_eq!(u16_at(&p, H + 0x3c), SEL_CODE64);
    assert_eq!(u32_at(&p, H + 0x40), 0x7f_0000);
    assert_eq!(u32_at(&p, H + 0x44), 300);
    assert_eq!(u32_at(&p, H + 0x48), EFER_LME | EFER_NXE);
    assert_eq!(StartCounters::read(&p), StartCounters::default());
    let p = build_start_page(&code, page, 0x7f_0000, 1, false).unwrap();
    assert_eq!(u32_at(&p, H + 0x48), EFER_LME);
}

#[test]
fn the_transition_descriptors_are_pre_accessed_so_no_cpu_writes_the_shared_page() {
    for d in [GDT_CODE32, GDT_DATA, GDT_CODE64] {
        assert_eq!((d >> 40) & 1, 1, "descriptor {d:#x} lacks the accessed bit");
    }
}

#[test]
fn bad_start_pages_and_tables_are_refused() {
    let code = start_code();
    for page in [0, 0x8001, 0x10_0000, 0xA_0000, 0xB_F000] {
        assert_eq!(
            build_start_page(&code, page, 0x10_0000, 1, true),
            Err(TrampolineError::BadPage { page })
        );
    }
    assert!(matches!(
        build_start_page(&code, 0x8000, 0xffff_f000, 200, true),
        Err(TrampolineError::BadTable { .. })
    ));
    assert!(matches!(
        build_start_page(&code, 0x8000, 0x10_0004, 1, true),
        Err(TrampolineError::BadTable { .. })
    ));
}

#[test]
fn cpu_entries_name_the_cpu_its_tables_and_its_slot() {
    let e = cpu_entry(257, 0x7f_3000, 0x1_2345_6000).unwrap();
    assert_eq!(u32_at(&e, 0), 257);
    assert_eq!(u32_at(&e, 4), ARMED);
    assert_eq!(u32_at(&e, 8), 0x7f_3000);
    assert_eq!(u32_at(&e, 12), STAGE_NONE);
    assert_eq!(u64_at(&e, 16), 0x1_2345_6000);
    assert_eq!(entry_stage(&e), (STAGE_NONE, 0));
    assert_eq!(cpu_entry(1, 0x1_0000_0000, 0x1000), Err(TrampolineError::BadCr3 { cr3: 1 << 32 }));
    assert_eq!(cpu_entry(1, 0x1000, 0x1800), Err(TrampolineError::BadSlot { slot: 0x1800 }));
}

#[test]
fn a_slot_holds_its_descriptors_parameters_and_gates_to_the_start_page() {
    let code = start_code();
    let (start, slot) = (0x9000, 0x3f_9000);
    let s = build_slot(&code, start, slot, &target()).unwrap();
    // GDT: the v1 multikernel layout, TSS in slots 4-5 naming this slot's TSS.
    assert_eq!(u64_at(&s, 8), GDT_CODE32);
    assert_eq!(u64_at(&s, 16), GDT_DATA);
    assert_eq!(u64_at(&s, 24), GDT_CODE64);
    let (lo, hi) = (u64_at(&s, 32), u64_at(&s, 40));
    let base = ((lo >> 16) & 0xFF_FFFF) | ((lo >> 56) << 24) | (hi << 32);
    assert_eq!(base, slot + offset_of!(Slot, tss) as u64);
    assert_eq!((lo >> 40) & 0xFF, 0x89);
    assert_eq!(u16_at(&s, 0x38), 7 * 8 - 1);
    assert_eq!(u64_at(&s, 0x3a), slot);
    assert_eq!(u16_at(&s, 0x48), 32 * 16 - 1);
    assert_eq!(u64_at(&s, 0x4a), slot + SLOT_IDT_OFFSET as u64);
    assert_eq!((u16_at(&s, 0x58), u16_at(&s, 0x5a)), (0x18, 0x10));
    assert_eq!(u64_at(&s, 0x60), 0x20_1234);
    assert_eq!(u64_at(&s, 0x68), 0x3e_8000);
    assert_eq!(u64_at(&s, 0x70), 0x3f_f000);
    assert_eq!(u64_at(&s, 0x78), 1);
    assert_eq!(u64_at(&s, 0x80), 0x3f_e000);
    assert_eq!(Checkin::read(&s[SLOT_CHECKIN_OFFSET..]), Checkin::default());
    // IST1 is the top of the slot page.
    let tss = offset_of!(Slot, tss);
    assert_eq!(u64_at(&s, tss + 0x24), slot + PAGE_SIZE as u64);
    assert_eq!(u16_at(&s, tss + 0x66), TSS_SIZE as u16);
    for v in 0..IDT_ENTRIES {
        let g = &s[SLOT_IDT_OFFSET + v * 16..SLOT_IDT_OFFSET + v * 16 + 16];
        let handler =
            u16_at(g, 0) as u64 | (u16_at(g, 6) as u64) << 16 | (u32_at(g, 8) as u64) << 32;
        assert_eq!(handler, start + code.stub_offsets[v] as u64, "vector {v}");
        assert_eq!(u16_at(g, 2), 0x18);
        assert_eq!(g[4], 1, "IST1");
        assert_eq!(g[5], GATE_INTERRUPT);
    }
}

#[test]
fn linux_slots_use_the_boot_protocols_selectors() {
    let code = start_code();
    let t = SlotTarget { selectors: Selectors::Linux, stack_top: 0, ..target() };
    let s = build_slot(&code, 0x9000, 0x3f_9000, &t).unwrap();
    assert_eq!(u64_at(&s, 16), GDT_CODE64, "__BOOT_CS = 0x10");
    assert_eq!(u64_at(&s, 24), GDT_DATA, "__BOOT_DS = 0x18");
    assert_eq!((u16_at(&s, 0x58), u16_at(&s, 0x5a)), (0x10, 0x18));
    let g = &s[SLOT_IDT_OFFSET..SLOT_IDT_OFFSET + 16];
    assert_eq!(u16_at(g, 2), 0x10);
}

#[test]
fn bad_slots_are_refused() {
    let code = start_code();
    assert_eq!(
        build_slot(&code, 0x9000, 0x3f_9800, &target()),
        Err(TrampolineError::BadSlot { slot: 0x3f_9800 })
    );
    let t = SlotTarget { stack_top: 0x3e_8008, ..target() };
    assert!(matches!(
        build_slot(&code, 0x9000, 0x3f_9000, &t),
        Err(TrampolineError::BadStack { .. })
    ));
    assert!(matches!(
        build_slot(&code, 0xB_0000, 0x3f_9000, &target()),
        Err(TrampolineError::BadPage { .. })
    ));
}

#[test]
fn the_exception_stubs_find_the_slot_by_rounding_the_stack_down() {
    // andq $-4096, %rax: 48 25 00 f0 ff ff.
    let code = start_code();
    assert!(find(code.bytes, &[0x48, 0x25, 0x00, 0xf0, 0xff, 0xff]).is_some());
}

#[test]
fn the_tss_busy_bit_is_cleared_before_ltr() {
    // andb $0xfd, disp32(%r14) with disp32 = the TSS descriptor's type byte (GDT slot 4, byte 5).
    let disp = (offset_of!(Slot, gdt) + 4 * 8 + 5) as u8;
    let code = start_code();
    let at = find(code.bytes, &[0x41, 0x80, 0x66, disp, 0xfd]);
    let ltr = find(code.bytes, &[0x0f, 0x00, 0xd8]); // ltr %ax
    assert!(matches!((at, ltr), (Some(a), Some(l)) if a < l), "busy bit not cleared before ltr");
}

#[test]
fn the_park_page_is_real_mode_code_with_an_empty_log() {
    let code = park_code();
    assert!(code.len() < HEADER_OFFSET, "park code is {} bytes", code.len());
    assert_eq!(code[0], 0xfa, "starts with cli");
    // Ends with hlt; jmp back to it (f4 eb fd).
    assert_eq!(&code[code.len() - 3..], &[0xf4, 0xeb, 0xfd]);
    // lock xadd on the log's count.
    let count = (H as u16).to_le_bytes();
    assert!(find(code, &[0x66, 0xf0, 0x0f, 0xc1, 0x06, count[0], count[1]]).is_some());
    let p = build_park_page();
    assert_eq!(u32_at(&p, H), 0);
    assert_eq!(u32_at(&p, H + 8), PARK_LOG_EMPTY);
    assert_eq!(u32_at(&p, PAGE_SIZE - 4), PARK_LOG_EMPTY);
    assert!(!park_log_has(&p[H..], 0));
}

#[test]
fn the_park_log_is_read_without_trusting_its_count() {
    let mut log = [0u8; PAGE_SIZE - HEADER_OFFSET];
    clear_park_log(&mut log);
    log[0..4].copy_from_slice(&2u32.to_le_bytes());
    log[8..12].copy_from_slice(&7u32.to_le_bytes());
    log[12..16].copy_from_slice(&300u32.to_le_bytes());
    assert!(park_log_has(&log, 7) && park_log_has(&log, 300));
    assert!(!park_log_has(&log, 8));
    // A count past the capacity (more CPUs than entries, or garbage) reads only the entries.
    log[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(park_log_has(&log, 300));
    assert!(!park_log_has(&log[..20], 9), "a short copy is read safely");
    // A CPU that incremented the count but has not written its ID yet is not seen.
    log[0..4].copy_from_slice(&3u32.to_le_bytes());
    assert!(!park_log_has(&log, PARK_LOG_EMPTY - 1));
}

#[test]
fn sipi_vectors() {
    assert_eq!(sipi_vector(0x8000), Some(8));
    assert_eq!(sipi_vector(0x9f000), Some(0x9f));
    assert_eq!(sipi_vector(0xC0000), Some(0xC0));
    assert_eq!(sipi_vector(0xBF000), None);
    assert_eq!(sipi_vector(0), None);
    assert_eq!(sipi_vector(0x100000), None);
}
