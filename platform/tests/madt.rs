//! MADT parser tests: synthetic tables asserting exact error variants and rules, and real tables
//! captured from QEMU (`platform/tests/data/madt/README.md` says how) and from a development
//! machine.

use platform::madt::{
    entries, parse, CpuKind, CpuRefusal, InterruptOverride, IoApic, MadtError, Note,
    MADT_HEADER_LEN,
};

// ---------------------------------------------------------------------------------------------
// A tiny builder for synthetic tables.

/// A MADT with the given entry bytes, a correct length field and checksum.
fn table(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut t = vec![0u8; MADT_HEADER_LEN];
    t[..4].copy_from_slice(b"APIC");
    t[8] = 5; // revision
    t[10..16].copy_from_slice(b"TESTOE");
    t[36..40].copy_from_slice(&0xFEE0_0000u32.to_le_bytes());
    t[40..44].copy_from_slice(&1u32.to_le_bytes()); // PCAT_COMPAT
    for e in entries {
        t.extend_from_slice(e);
    }
    finish(t)
}

/// Sets the length field to the buffer length and fixes the checksum.
fn finish(mut t: Vec<u8>) -> Vec<u8> {
    let len = t.len() as u32;
    t[4..8].copy_from_slice(&len.to_le_bytes());
    fix_checksum(&mut t);
    t
}

fn fix_checksum(t: &mut [u8]) {
    platform::acpi::set_checksum(t, 9);
}

const ENABLED: u32 = 1;
const ONLINE_CAPABLE: u32 = 2;

fn lapic(uid: u8, id: u8, flags: u32) -> Vec<u8> {
    let mut e = vec![0, 8, uid, id];
    e.extend_from_slice(&flags.to_le_bytes());
    e
}

fn x2apic(uid: u32, id: u32, flags: u32) -> Vec<u8> {
    let mut e = vec![9, 16, 0, 0];
    e.extend_from_slice(&id.to_le_bytes());
    e.extend_from_slice(&flags.to_le_bytes());
    e.extend_from_slice(&uid.to_le_bytes());
    e
}

fn ioapic(id: u8, address: u32, gsi_base: u32) -> Vec<u8> {
    let mut e = vec![1, 12, id, 0];
    e.extend_from_slice(&address.to_le_bytes());
    e.extend_from_slice(&gsi_base.to_le_bytes());
    e
}

fn iso(source: u8, gsi: u32, flags: u16) -> Vec<u8> {
    let mut e = vec![2, 10, 0, source];
    e.extend_from_slice(&gsi.to_le_bytes());
    e.extend_from_slice(&flags.to_le_bytes());
    e
}

fn address_override(address: u64) -> Vec<u8> {
    let mut e = vec![5, 12, 0, 0];
    e.extend_from_slice(&address.to_le_bytes());
    e
}

// ---------------------------------------------------------------------------------------------
// Header validation.

#[test]
fn minimal_table_has_no_cpus() {
    let inv = parse(&table(&[])).unwrap();
    assert!(inv.cpus.is_empty() && inv.io_apics.is_empty());
    assert_eq!(inv.local_apic_address, 0xFEE0_0000);
    assert!(inv.pcat_compat);
    assert_eq!(inv.revision, 5);
    assert_eq!(&inv.oem_id, b"TESTOE");
}

#[test]
fn bad_signature() {
    let mut t = table(&[]);
    t[..4].copy_from_slice(b"FACP");
    assert_eq!(parse(&t), Err(MadtError::BadSignature { found: *b"FACP" }));
}

#[test]
fn too_short_buffer_and_too_short_length_field() {
    assert_eq!(parse(b""), Err(MadtError::TooShort { len: 0 }));
    assert_eq!(parse(b"APIC\x10"), Err(MadtError::TooShort { len: 5 }));
    let mut t = table(&[]);
    t[4..8].copy_from_slice(&40u32.to_le_bytes());
    fix_checksum(&mut t);
    assert_eq!(parse(&t), Err(MadtError::TooShort { len: 40 }));
}

#[test]
fn length_field_larger_than_buffer() {
    let t = table(&[lapic(0, 0, ENABLED)]);
    let cut = &t[..t.len() - 3];
    assert_eq!(parse(cut), Err(MadtError::LengthMismatch { header: 52, actual: 49 }));
    let mut huge = table(&[]);
    huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        parse(&huge),
        Err(MadtError::LengthMismatch { header: u32::MAX as usize, actual: 44 })
    );
}

#[test]
fn trailing_bytes_past_the_length_field_are_not_part_of_the_table() {
    let mut t = table(&[lapic(0, 0, ENABLED)]);
    t.extend_from_slice(&[0xAA, 0, 0]); // would be a zero-length entry if it were walked
    assert_eq!(parse(&t).unwrap().cpus.len(), 1);
}

#[test]
fn bad_checksum_reports_the_sum() {
    let mut t = table(&[lapic(0, 0, ENABLED)]);
    t[20] = t[20].wrapping_add(3);
    assert_eq!(parse(&t), Err(MadtError::BadChecksum { sum: 3 }));
}

// ---------------------------------------------------------------------------------------------
// Entry structure.

#[test]
fn zero_length_entry_is_refused_with_its_offset() {
    let t = table(&[lapic(0, 0, ENABLED), vec![0x7F, 0, 0, 0]]);
    assert_eq!(parse(&t), Err(MadtError::ZeroLengthEntry { offset: 52 }));
}

#[test]
fn entry_running_past_the_table() {
    // The x2APIC entry claims 16 bytes but only 10 remain (the table was cut before the
    // checksum was fixed, so the header is consistent and only the entry is bad).
    let mut t = table(&[x2apic(1, 1, ENABLED)]);
    t.truncate(MADT_HEADER_LEN + 10);
    let t = finish(t);
    assert_eq!(
        parse(&t),
        Err(MadtError::EntryOverrunsTable { offset: 44, len: 16, table_len: 54 })
    );
}

#[test]
fn entry_shorter_than_its_structure() {
    let t = table(&[vec![0, 6, 0, 0, 1, 0]]);
    assert_eq!(parse(&t), Err(MadtError::EntryTooShort { offset: 44, kind: 0, len: 6, need: 8 }));
    let t = table(&[lapic(0, 0, ENABLED), vec![9, 12, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0]]);
    assert_eq!(parse(&t), Err(MadtError::EntryTooShort { offset: 52, kind: 9, len: 12, need: 16 }));
    let t = table(&[vec![5, 4, 0, 0]]);
    assert_eq!(parse(&t), Err(MadtError::EntryTooShort { offset: 44, kind: 5, len: 4, need: 12 }));
}

#[test]
fn length_one_entry_is_too_short_for_its_own_header() {
    let t = table(&[vec![0x42, 1, 0, 0]]);
    assert_eq!(
        parse(&t),
        Err(MadtError::EntryTooShort { offset: 44, kind: 0x42, len: 1, need: 2 })
    );
}

#[test]
fn single_trailing_byte_is_a_truncated_entry_header() {
    let t = table(&[lapic(0, 0, ENABLED), vec![0]]);
    assert_eq!(parse(&t), Err(MadtError::TruncatedEntryHeader { offset: 52, table_len: 53 }));
}

#[test]
fn validation_precedes_interpretation() {
    // A good CPU entry followed by a broken one: the table is refused as a whole, no partial
    // inventory comes out.
    let t = table(&[lapic(0, 0, ENABLED), lapic(1, 1, ENABLED), vec![1, 0]]);
    assert_eq!(parse(&t), Err(MadtError::ZeroLengthEntry { offset: 60 }));
}

#[test]
fn unknown_entries_are_skipped_but_length_checked() {
    let nmi = vec![4, 6, 0xFF, 5, 0, 1]; // Local APIC NMI, not interpreted
    let future = vec![0x80, 3, 0]; // reserved type, odd length
    let t = table(&[lapic(0, 0, ENABLED), nmi, future, lapic(1, 1, ENABLED)]);
    let inv = parse(&t).unwrap();
    assert_eq!(inv.cpus.len(), 2);
    assert_eq!(inv.skipped_entries, 2);
    let overrun = table(&[vec![0x80, 200, 0]]);
    assert_eq!(
        parse(&overrun),
        Err(MadtError::EntryOverrunsTable { offset: 44, len: 200, table_len: 47 })
    );
}

#[test]
fn entry_walk_is_bounded_by_the_table_length() {
    // 1000 minimal unknown entries: the walk yields exactly that many, then stops.
    let many: Vec<Vec<u8>> = (0..1000).map(|_| vec![0x7F, 2]).collect();
    let t = table(&many);
    assert_eq!(entries(&t).count(), 1000);
    assert_eq!(parse(&t).unwrap().skipped_entries, 1000);
}

// ---------------------------------------------------------------------------------------------
// Interpretation and rules.

#[test]
fn lapic_and_x2apic_entries_become_cpus() {
    let t = table(&[
        lapic(0, 0, ENABLED),
        lapic(1, 2, ENABLED),
        x2apic(300, 0x1_0000, ENABLED),
        x2apic(7, 256, ONLINE_CAPABLE),
    ]);
    let inv = parse(&t).unwrap();
    let ids: Vec<_> = inv.cpus.iter().map(|c| (c.uid, c.apic_id, c.kind)).collect();
    assert_eq!(
        ids,
        [
            (0, 0, CpuKind::Lapic),
            (1, 2, CpuKind::Lapic),
            (300, 0x1_0000, CpuKind::X2apic),
            (7, 256, CpuKind::X2apic)
        ]
    );
    let hot = inv.cpu(256).unwrap();
    assert!(!hot.enabled && hot.online_capable && hot.startable());
}

#[test]
fn io_apics_overrides_and_address_override() {
    let t = table(&[
        ioapic(1, 0xFEC0_0000, 0),
        ioapic(2, 0xFEC0_1000, 24),
        iso(0, 2, 0),
        iso(9, 9, 0xD),
        address_override(0x1_FEE0_0000),
        address_override(0x2_0000_0000),
    ]);
    let inv = parse(&t).unwrap();
    assert_eq!(
        inv.io_apics,
        [
            IoApic { id: 1, address: 0xFEC0_0000, gsi_base: 0 },
            IoApic { id: 2, address: 0xFEC0_1000, gsi_base: 24 }
        ]
    );
    assert_eq!(inv.overrides[1], InterruptOverride { bus: 0, source: 9, gsi: 9, flags: 0xD });
    assert_eq!(inv.local_apic_address, 0x1_FEE0_0000, "the first override replaces the field");
    assert_eq!(inv.notes, [Note::ExtraAddressOverride { offset: 44 + 12 + 12 + 10 + 10 + 12 }]);
}

#[test]
fn duplicate_apic_id_is_one_cpu_and_noted() {
    // Same APIC ID 3 as a Local APIC entry and as a Local x2APIC entry: first one kept.
    let t = table(&[lapic(3, 3, ENABLED), x2apic(99, 3, 0), lapic(4, 4, ENABLED)]);
    let inv = parse(&t).unwrap();
    assert_eq!(inv.cpus.len(), 2);
    let c = inv.cpu(3).unwrap();
    assert_eq!((c.uid, c.kind, c.enabled), (3, CpuKind::Lapic, true));
    assert_eq!(inv.notes, [Note::DuplicateApicId { apic_id: 3, offset: 52, first_offset: 44 }]);
}

#[test]
fn placeholder_ids_are_not_cpus() {
    let t = table(&[
        lapic(0, 0, ENABLED),
        x2apic(1, 0xFFFF_FFFF, 0),
        x2apic(2, 0xFFFF_FFFF, ONLINE_CAPABLE),
        lapic(3, 0xFF, 0),
    ]);
    let inv = parse(&t).unwrap();
    assert_eq!(inv.cpus.len(), 1);
    assert_eq!(
        inv.notes,
        [
            Note::Placeholder { apic_id: 0xFFFF_FFFF, offset: 52 },
            Note::Placeholder { apic_id: 0xFFFF_FFFF, offset: 68 },
            Note::Placeholder { apic_id: 0xFF, offset: 84 },
        ]
    );
    assert_eq!(
        inv.check_startable(0xFFFF_FFFF),
        Err(CpuRefusal::NoSuchCpu { apic_id: 0xFFFF_FFFF })
    );
}

#[test]
fn bsp_comes_from_its_own_apic_id_not_from_entry_order() {
    let t = table(&[lapic(0, 4, ENABLED), lapic(1, 0, ENABLED), lapic(2, 1, ENABLED)]);
    let mut inv = parse(&t).unwrap();
    assert!(inv.bsp().is_none());
    inv.mark_bsp(0).unwrap();
    assert_eq!(inv.bsp().map(|c| c.uid), Some(1));
    assert_eq!(inv.check_startable(0), Err(CpuRefusal::IsBsp { apic_id: 0 }));
    assert_eq!(inv.check_startable(4).map(|c| c.uid), Ok(0));
    let startable: Vec<u32> = inv.startable_cpus().map(|c| c.apic_id).collect();
    assert_eq!(startable, [4, 1]);
    // Marking again moves the mark; never two BSPs.
    inv.mark_bsp(1).unwrap();
    assert_eq!(inv.cpus.iter().filter(|c| c.bsp).count(), 1);
    assert_eq!(inv.mark_bsp(9), Err(MadtError::BspNotInTable { apic_id: 9 }));
    assert_eq!(inv.bsp().map(|c| c.apic_id), Some(1), "a failed mark keeps the old one");
}

#[test]
fn disabled_cpus_are_refused_online_capable_ones_are_not() {
    let t = table(&[lapic(0, 0, ENABLED), lapic(1, 1, 0), x2apic(2, 300, ONLINE_CAPABLE)]);
    let mut inv = parse(&t).unwrap();
    inv.mark_bsp(0).unwrap();
    assert_eq!(inv.check_startable(1), Err(CpuRefusal::Disabled { apic_id: 1 }));
    assert!(!inv.cpu(1).unwrap().startable());
    assert_eq!(inv.check_startable(300).map(|c| c.apic_id), Ok(300));
    assert_eq!(inv.check_startable(7), Err(CpuRefusal::NoSuchCpu { apic_id: 7 }));
}

#[test]
fn error_messages_name_the_problem() {
    let msg = MadtError::EntryTooShort { offset: 0x34, kind: 9, len: 12, need: 16 }.to_string();
    assert!(msg.contains("0x34") && msg.contains("type 9") && msg.contains("16"), "{msg}");
    let msg = MadtError::BadSignature { found: *b"AP\0C" }.to_string();
    assert!(msg.contains(r#""AP\x00C""#), "{msg}");
    let msg = MadtError::BspNotInTable { apic_id: 5 }.to_string();
    assert!(msg.contains("APIC ID 5"), "{msg}");
    let msg = CpuRefusal::Disabled { apic_id: 2 }.to_string();
    assert!(msg.contains("neither Enabled nor Online Capable"), "{msg}");
}

// ---------------------------------------------------------------------------------------------
// Robustness: every truncation and every single-byte corruption of real tables gives a result,
// never a panic (a cheap, deterministic stand-in for the fuzz target).

#[test]
fn truncations_and_corruptions_never_panic() {
    let original = std::fs::read(data("q35-x2apic-smp300.bin")).unwrap();
    for len in 0..original.len() {
        let _ = parse(&original[..len]);
    }
    let small = std::fs::read(data("pc-smp4.bin")).unwrap();
    for i in 0..small.len() {
        for v in [0u8, 1, 2, 0x7F, 0xFF] {
            let mut t = small.clone();
            t[i] = v;
            let _ = parse(&t);
            // With the checksum repaired the entry checks themselves are exercised.
            fix_checksum(&mut t);
            let _ = parse(&t);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Captured tables.

fn data(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/madt").join(name)
}

fn check_capture(name: &str, n: u32) {
    let bytes = std::fs::read(data(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut inv = parse(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(inv.cpus.len(), n as usize, "{name}");
    let ids: Vec<u32> = inv.cpus.iter().map(|c| c.apic_id).collect();
    assert_eq!(ids, (0..n).collect::<Vec<_>>(), "{name}: APIC IDs 0..{n}");
    assert!(inv.cpus.iter().all(|c| c.enabled), "{name}");
    assert!(!inv.io_apics.is_empty(), "{name}: no IO APIC");
    assert_eq!(inv.local_apic_address, 0xFEE0_0000, "{name}");
    assert!(inv.notes.is_empty(), "{name}: {:?}", inv.notes);
    inv.mark_bsp(0).unwrap();
    assert_eq!(inv.startable_cpus().count(), n as usize - 1, "{name}");
}

#[test]
fn qemu_pc_captures() {
    for n in [1, 2, 4, 8, 64] {
        check_capture(&format!("pc-smp{n}.bin"), n);
    }
}

#[test]
fn qemu_q35_captures() {
    for n in [1, 2, 4, 8, 64] {
        check_capture(&format!("q35-smp{n}.bin"), n);
    }
}

#[test]
fn qemu_captures_route_isa_irq0_to_gsi2() {
    for name in ["pc-smp4.bin", "q35-smp4.bin"] {
        let inv = parse(&std::fs::read(data(name)).unwrap()).unwrap();
        assert!(inv.pcat_compat, "{name}");
        assert!(inv.overrides.iter().any(|o| o.bus == 0 && o.source == 0 && o.gsi == 2), "{name}");
        assert_eq!(inv.io_apics[0], IoApic { id: 0, address: 0xFEC0_0000, gsi_base: 0 }, "{name}");
    }
}

#[test]
fn qemu_x2apic_capture_lists_ids_above_254_as_x2apic_entries() {
    check_capture("q35-x2apic-smp300.bin", 300);
    let inv = parse(&std::fs::read(data("q35-x2apic-smp300.bin")).unwrap()).unwrap();
    assert!(inv.cpus.iter().filter(|c| c.apic_id < 255).all(|c| c.kind == CpuKind::Lapic));
    assert!(inv.cpus.iter().filter(|c| c.apic_id >= 255).all(|c| c.kind == CpuKind::X2apic));
    assert_eq!(inv.cpus.iter().filter(|c| c.kind == CpuKind::X2apic).count(), 45);
    assert_eq!(inv.cpu(299).map(|c| c.uid), Some(299));
}

#[test]
fn qemu_hotplug_capture_has_disabled_cpus() {
    // `-smp 2,maxcpus=4`: QEMU 10 lists the two absent CPUs with neither Enabled nor Online
    // Capable, so the manager must refuse them.
    let mut inv = parse(&std::fs::read(data("q35-smp2-maxcpus4.bin")).unwrap()).unwrap();
    assert_eq!(inv.cpus.len(), 4);
    inv.mark_bsp(0).unwrap();
    assert_eq!(inv.check_startable(1).map(|c| c.apic_id), Ok(1));
    assert_eq!(inv.check_startable(2), Err(CpuRefusal::Disabled { apic_id: 2 }));
    assert_eq!(inv.check_startable(3), Err(CpuRefusal::Disabled { apic_id: 3 }));
}

#[test]
fn development_machine_table() {
    // /sys/firmware/acpi/tables/APIC of the (Firecracker) VM this project is developed on:
    // 2 CPUs, one IO APIC, no PCAT_COMPAT, no overrides.
    let inv = parse(&std::fs::read(data("host-dev-machine.bin")).unwrap()).unwrap();
    let ids: Vec<u32> = inv.cpus.iter().map(|c| c.apic_id).collect();
    assert_eq!(ids, [0, 1]);
    assert!(inv.cpus.iter().all(|c| c.enabled && c.kind == CpuKind::Lapic));
    assert_eq!(inv.io_apics.len(), 1);
    assert!(!inv.pcat_compat);
    assert!(inv.overrides.is_empty());
}
