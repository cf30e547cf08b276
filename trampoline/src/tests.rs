use super::*;

fn target() -> Target {
    Target {
        cr3: 0x7f_0000,
        entry: 0x20_1234,
        stack_top: 0x3f_a000,
        boot_info: 0x3f_f000,
        status_block: 0x3f_e000,
        nxe: true,
    }
}

fn u64_at(p: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(p[off..off + 8].try_into().unwrap())
}
fn u32_at(p: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(p[off..off + 4].try_into().unwrap())
}
fn u16_at(p: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(p[off..off + 2].try_into().unwrap())
}

const P: usize = PARAMS_OFFSET;

#[test]
fn the_code_fits_and_starts_in_real_mode() {
    let code = blob();
    assert!(code.bytes.len() <= CODE_MAX, "code is {} bytes", code.bytes.len());
    // cli; cld; then o32 xor ebx, ebx (66 31 db) as assembled for .code16.
    assert_eq!(&code.bytes[..5], &[0xfa, 0xfc, 0x66, 0x31, 0xdb]);
    assert!(code.pm32_offset < code.lm64_offset && code.lm64_offset < code.bytes.len());
}

#[test]
fn exception_stubs_push_the_vector_and_a_dummy_error_code_where_the_cpu_pushes_none() {
    let code = blob();
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
fn page_is_patched_for_its_address() {
    let code = blob();
    let page = 0x8000;
    let p = build_page(&code, page, &target()).unwrap();
    assert_eq!(&p[..code.bytes.len()], code.bytes);
    // GDTR points at the GDT inside this page.
    assert_eq!(u16_at(&p, P + 0x38), 7 * 8 - 1);
    assert_eq!(u64_at(&p, P + 0x3a), page + P as u64);
    assert_eq!(u64_at(&p, P + 8), GDT_CODE32);
    assert_eq!(u64_at(&p, P + 0x18), GDT_CODE64);
    // Far pointers: page + label offsets, with the right selectors.
    assert_eq!(u32_at(&p, P + 0x58) as u64, page + code.pm32_offset as u64);
    assert_eq!(u16_at(&p, P + 0x5c), SEL_CODE32);
    assert_eq!(u32_at(&p, P + 0x60) as u64, page + code.lm64_offset as u64);
    assert_eq!(u16_at(&p, P + 0x64), SEL_CODE64);
    // Target fields.
    assert_eq!(u64_at(&p, P + 0x68), 0x7f_0000);
    assert_eq!(u64_at(&p, P + offset_of!(TrampolineParams, efer_or)), (EFER_LME | EFER_NXE) as u64);
    assert_eq!(u64_at(&p, P + offset_of!(TrampolineParams, entry)), 0x20_1234);
    assert_eq!(u64_at(&p, P + offset_of!(TrampolineParams, stack_top)), 0x3f_a000);
    assert_eq!(u64_at(&p, P + offset_of!(TrampolineParams, boot_info)), 0x3f_f000);
    assert_eq!(u64_at(&p, P + offset_of!(TrampolineParams, status_block)), 0x3f_e000);
    assert_eq!(u32_at(&p, CHECKIN_STAGE_OFFSET), STAGE_NONE);
}

#[test]
fn idt_gates_point_at_the_stubs_in_this_page_on_ist1() {
    let code = blob();
    let page = 0x9000;
    let p = build_page(&code, page, &target()).unwrap();
    assert_eq!(u16_at(&p, P + 0x48), 32 * 16 - 1);
    assert_eq!(u64_at(&p, P + 0x4a), page + IDT_OFFSET as u64);
    for v in 0..IDT_ENTRIES {
        let g = &p[IDT_OFFSET + v * 16..IDT_OFFSET + v * 16 + 16];
        let handler =
            u16_at(g, 0) as u64 | (u16_at(g, 6) as u64) << 16 | (u32_at(g, 8) as u64) << 32;
        assert_eq!(handler, page + code.stub_offsets[v] as u64, "vector {v}");
        assert_eq!(u16_at(g, 2), SEL_CODE64);
        assert_eq!(g[4], 1, "IST1");
        assert_eq!(g[5], GATE_INTERRUPT);
    }
}

#[test]
fn tss_gives_ist1_the_top_of_the_page() {
    let page = 0x7000;
    let p = build_page(&blob(), page, &target()).unwrap();
    let tss = P + offset_of!(TrampolineParams, tss);
    assert_eq!(u64_at(&p, tss + 0x24), page + 0x1000);
    assert_eq!(u16_at(&p, tss + 0x66), TSS_SIZE as u16);
    // The descriptor in GDT slots 4-5 names this TSS.
    let lo = u64_at(&p, P + 4 * 8);
    let hi = u64_at(&p, P + 5 * 8);
    let base = ((lo >> 16) & 0xFF_FFFF) | ((lo >> 56) << 24) | (hi << 32);
    assert_eq!(base, page + tss as u64);
    assert_eq!((lo >> 40) & 0xFF, 0x89);
    assert_eq!(lo & 0xFFFF, TSS_SIZE as u64 - 1);
}

#[test]
fn bad_pages_and_targets_are_refused() {
    let code = blob();
    for page in [0, 0x8001, 0x10_0000, 0xA_0000, 0xB_F000] {
        assert_eq!(build_page(&code, page, &target()), Err(TrampolineError::BadPage { page }));
    }
    let mut t = target();
    t.cr3 = 0x1_0000_0000;
    assert_eq!(build_page(&code, 0x8000, &t), Err(TrampolineError::BadCr3 { cr3: t.cr3 }));
    let mut t = target();
    t.stack_top = 0x3f_a008;
    assert!(matches!(build_page(&code, 0x8000, &t), Err(TrampolineError::BadStack { .. })));
    let mut t = target();
    t.nxe = false;
    let p = build_page(&code, 0x8000, &t).unwrap();
    assert_eq!(u64_at(&p, P + offset_of!(TrampolineParams, efer_or)), EFER_LME as u64);
}

#[test]
fn park_page_is_small_real_mode_code_with_a_clear_record() {
    let code = park_code();
    assert!(code.len() < PARK_MARK_OFFSET, "park code is {} bytes", code.len());
    assert_eq!(code[0], 0xfa, "starts with cli");
    // Ends with hlt; jmp back to it (f4 eb fd).
    assert_eq!(&code[code.len() - 3..], &[0xf4, 0xeb, 0xfd]);
    let p = build_park_page();
    assert_eq!(u32_at(&p, PARK_MARK_OFFSET), 0);
    assert_eq!(u32_at(&p, PARK_APIC_OFFSET), 0);
    // The code writes the record at exactly these offsets (o32 mov to absolute addresses).
    let mark = (PARK_MARK_OFFSET as u16).to_le_bytes();
    assert!(code.windows(2).any(|w| w == mark), "park code never addresses the mark");
}

#[test]
fn the_tss_busy_bit_is_cleared_before_ltr() {
    // andb $0xfd, disp32(%r15) with disp32 = the TSS descriptor's type byte (GDT slot 4, byte 5).
    let disp = (PARAMS_OFFSET + 4 * 8 + 5) as u32;
    let mut want = vec![0x41, 0x80, 0xa7];
    want.extend_from_slice(&disp.to_le_bytes());
    want.push(0xfd);
    let code = blob();
    let at = code.bytes.windows(want.len()).position(|w| w == want.as_slice());
    let ltr = code.bytes.windows(3).position(|w| w == [0x0f, 0x00, 0xd8]); // ltr %ax
    assert!(matches!((at, ltr), (Some(a), Some(l)) if a < l), "busy bit not cleared before ltr");
}
