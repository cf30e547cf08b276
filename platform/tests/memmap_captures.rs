//! The memory-map code, the frame allocator and the partition planner on REAL firmware memory
//! maps: the `memmap ` lines the manager printed when booted under QEMU q35 with SeaBIOS and
//! with OVMF at 512 MiB, 2 GiB and 4 GiB (`platform/tests/data/memmap/`, see the README there
//! for how each file was made).
//!
//! The synthetic maps of `tests/partition.rs` test the planner's rules one by one; these tests
//! check that the rules hold on what firmware really reports: SeaBIOS's short E820 map with a
//! 12 GiB reservation at 1012 GiB, OVMF's 130-odd entries with runtime and ACPI memory in the
//! middle of RAM, the MMCONFIG window, RAM above 4 GiB.

use platform::frames::{FrameAllocator, LOW_MEMORY_END};
use platform::memmap::{
    infer_firmware, normalized_usable, summarize, Firmware, Range, Region, RegionKind, PAGE_SIZE,
};
use platform::partition::{
    plan, InstanceProblem, InstanceRequest, Owner, Plan, PlanRequest, Protected,
    DEFAULT_INSTANCE_ALIGN, LOW_SLICE_START, PAGE_TABLE_POOL_LIMIT,
};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const FOUR_GIB: u64 = 4 * GIB;

/// One captured map and what is known about the boot that produced it.
struct Capture {
    file: &'static str,
    firmware: Firmware,
    /// QEMU `-m`.
    memory: u64,
    text: &'static str,
}

macro_rules! capture {
    ($file:literal, $firmware:expr, $memory:expr) => {
        Capture {
            file: $file,
            firmware: $firmware,
            memory: $memory,
            text: include_str!(concat!("data/memmap/", $file)),
        }
    };
}

const CAPTURES: &[Capture] = &[
    capture!("bios-512M.txt", Firmware::Bios, 512 * MIB),
    capture!("bios-2G.txt", Firmware::Bios, 2 * GIB),
    capture!("bios-4G.txt", Firmware::Bios, 4 * GIB),
    capture!("uefi-512M.txt", Firmware::Uefi, 512 * MIB),
    capture!("uefi-2G.txt", Firmware::Uefi, 2 * GIB),
    capture!("uefi-4G.txt", Firmware::Uefi, 4 * GIB),
];

/// Every line of the capture as a region; panics, naming the line, if one does not parse.
fn load(c: &Capture) -> Vec<Region> {
    let map: Vec<Region> = c
        .text
        .lines()
        .enumerate()
        .map(|(i, line)| {
            Region::parse_line(line)
                .unwrap_or_else(|| panic!("{}:{}: not a memmap line: {line:?}", c.file, i + 1))
        })
        .collect();
    assert!(!map.is_empty(), "{} is empty", c.file);
    map
}

fn range(r: &Region) -> Range {
    Range::new(r.start, r.end)
}

fn non_usable(map: &[Region]) -> impl Iterator<Item = &Region> {
    map.iter().filter(|r| r.kind != RegionKind::Usable)
}

/// Whether the map's usable regions cover every byte of `r` (checked on the raw map, not
/// through `normalized_usable`).
fn covered_by_usable(map: &[Region], r: Range) -> bool {
    let mut cursor = r.start;
    while cursor < r.end {
        let reach = map
            .iter()
            .filter(|m| m.kind == RegionKind::Usable && m.start <= cursor && cursor < m.end)
            .map(|m| m.end)
            .max();
        match reach {
            Some(end) => cursor = end,
            None => return false,
        }
    }
    true
}

/// `r` widened to whole pages.
fn page_span(r: Range) -> Range {
    Range::new(r.start & !(PAGE_SIZE - 1), r.end.next_multiple_of(PAGE_SIZE))
}

/// Removes `cut` from a sorted list of disjoint ranges.
fn subtract(free: &mut Vec<Range>, cut: Range) {
    let mut out = Vec::with_capacity(free.len() + 1);
    for f in free.iter() {
        if !f.overlaps(&cut) {
            out.push(*f);
            continue;
        }
        if f.start < cut.start {
            out.push(Range::new(f.start, cut.start));
        }
        if cut.end < f.end {
            out.push(Range::new(cut.end, f.end));
        }
    }
    *free = out;
}

/// Usable memory at or above 1 MiB as sorted, disjoint, merged, whole-page runs.
fn usable_above_1mib(map: &[Region]) -> Vec<Range> {
    let mut out = vec![Range::new(0, 0); map.len() + 1];
    let n = normalized_usable(map, &mut out);
    let mut merged: Vec<Range> = Vec::new();
    for r in &out[..n] {
        let r = Range::new(r.start.max(LOW_MEMORY_END), r.end);
        if r.is_empty() {
            continue;
        }
        match merged.last_mut() {
            Some(last) if last.end == r.start => last.end = r.end,
            _ => merged.push(r),
        }
    }
    merged
}

/// What is left above 1 MiB once the protected ranges (whole pages) and `taken` are removed.
fn free_memory(map: &[Region], prot: &[Protected], taken: &[Range]) -> Vec<Range> {
    let mut free = usable_above_1mib(map);
    for p in prot {
        subtract(&mut free, page_span(p.range));
    }
    for t in taken {
        subtract(&mut free, *t);
    }
    free
}

/// The largest run (ties: the lowest), as the planner reports it.
fn largest(free: &[Range]) -> Option<Range> {
    free.iter().fold(None, |best: Option<Range>, r| match best {
        Some(b) if b.len() >= r.len() => Some(b),
        _ => Some(*r),
    })
}

/// Whether `size` bytes at `align` fit anywhere in `free`.
fn fits(free: &[Range], size: u64, align: u64) -> bool {
    free.iter().any(|f| {
        f.start
            .checked_next_multiple_of(align)
            .and_then(|s| s.checked_add(size))
            .is_some_and(|e| e <= f.end)
    })
}

/// Made-up manager ranges placed on the real map: a "heap" inside the first large usable run
/// above 1 MiB (the map calls it usable, so only the planner's own check keeps it safe), and a
/// "ramdisk" that straddles the end of the highest bootloader region into usable memory. Both
/// are deliberately not page-aligned.
fn fake_protected(c: &Capture, map: &[Region]) -> Vec<Protected> {
    let run = usable_above_1mib(map)
        .into_iter()
        .find(|r| r.len() >= 8 * MIB)
        .unwrap_or_else(|| panic!("{}: no 8 MiB usable run above 1 MiB", c.file));
    let heap = Protected::new("heap", run.start + MIB + 0x800, run.start + 3 * MIB + 0x100);
    let bl = map
        .iter()
        .filter(|r| r.kind == RegionKind::Bootloader)
        .max_by_key(|r| r.end)
        .unwrap_or_else(|| panic!("{}: no bootloader region", c.file));
    let ramdisk = Protected::new("ramdisk", bl.end - 0x10000, bl.end + 0x20080);
    assert!(
        covered_by_usable(map, Range::new(bl.end, ramdisk.range.end)),
        "{}: the fake ramdisk should reach into usable memory",
        c.file
    );
    vec![heap, ramdisk]
}

fn standard_request() -> PlanRequest {
    PlanRequest {
        channels: {
            let mut link = InstanceRequest::new("link", 64 * 1024);
            link.align = PAGE_SIZE;
            vec![link]
        },
        instances: vec![
            InstanceRequest::new("a", 8 * MIB),
            InstanceRequest::new("b", 8 * MIB),
            InstanceRequest::new("c", 8 * MIB),
            InstanceRequest::new("big", 64 * MIB),
        ],
        page_table_pool: MIB,
        cpu_table: 3 * PAGE_SIZE,
        image_store: 16 * MIB,
    }
}

/// Every invariant of a plan, checked against the raw map.
fn check_plan(file: &str, map: &[Region], prot: &[Protected], req: &PlanRequest, p: &Plan) {
    let carved: Vec<_> = p.carved().collect();
    for (i, c) in carved.iter().enumerate() {
        let r = c.range;
        assert!(
            !r.is_empty() && r.start.is_multiple_of(PAGE_SIZE) && r.end.is_multiple_of(PAGE_SIZE),
            "{file}: {c:?} is not whole pages"
        );
        assert!(covered_by_usable(map, r), "{file}: {c:?} is not inside usable memory");
        for m in non_usable(map) {
            assert!(!r.overlaps(&range(m)), "{file}: {c:?} overlaps {m}");
        }
        for pr in prot {
            assert!(!r.overlaps(&pr.range), "{file}: {c:?} overlaps protected {pr:?}");
        }
        for other in &carved[i + 1..] {
            assert!(!r.overlaps(&other.range), "{file}: {c:?} overlaps {other:?}");
        }
        match &c.owner {
            Owner::StartPage | Owner::ParkPage => {
                assert!(r.start >= PAGE_SIZE && r.end <= LOW_MEMORY_END, "{file}: {c:?}");
                assert_eq!(r.len(), PAGE_SIZE, "{file}: {c:?}");
            }
            Owner::CpuTable => {
                assert!(
                    r.start >= LOW_MEMORY_END && r.end <= PAGE_TABLE_POOL_LIMIT,
                    "{file}: {c:?}"
                );
                assert!(r.len() >= req.cpu_table, "{file}: {c:?}");
            }
            Owner::ImageStore => {
                assert!(r.start >= LOW_MEMORY_END && r.len() >= req.image_store, "{file}: {c:?}");
            }
            Owner::Channel(name) => {
                let want = req.channels.iter().find(|i| &i.name == name).unwrap();
                assert!(r.start >= LOW_MEMORY_END && r.len() >= want.size, "{file}: {c:?}");
                assert!(r.start.is_multiple_of(PAGE_SIZE), "{file}: {c:?}");
            }
            Owner::LowMemory(name) => {
                let want = req.instances.iter().find(|i| &i.name == name).unwrap();
                assert!(r.start >= LOW_SLICE_START && r.end <= LOW_MEMORY_END, "{file}: {c:?}");
                assert!(r.len() >= want.low_memory, "{file}: {c:?}");
            }
            Owner::PageTablePool => {
                assert!(
                    r.start >= LOW_MEMORY_END && r.end <= PAGE_TABLE_POOL_LIMIT,
                    "{file}: {c:?}"
                );
                assert!(r.len() >= req.page_table_pool, "{file}: {c:?}");
            }
            Owner::Instance(name) => {
                let want = req.instances.iter().find(|i| &i.name == name).unwrap();
                assert!(r.start >= LOW_MEMORY_END, "{file}: {c:?}");
                assert!(
                    r.len() >= want.size && r.start.is_multiple_of(want.align),
                    "{file}: {c:?} vs {want:?}"
                );
                if let Some(b) = want.fixed_base {
                    assert_eq!(r.start, b, "{file}: {c:?}");
                }
            }
            Owner::Manager(_) => unreachable!(),
        }
    }
    assert!(p.start_page().is_some() && p.park_page().is_some(), "{file}: no start-up pages");
    assert_eq!(p.page_table_pool().is_some(), req.page_table_pool > 0, "{file}");
    for inst in &req.instances {
        let placed = p.instance(&inst.name).is_some();
        let refused = p.refused.iter().filter(|r| r.name == inst.name).count();
        assert_eq!(
            usize::from(placed) + refused,
            1,
            "{file}: {inst:?} placed once or refused once"
        );
    }
    assert!(p.regions.windows(2).all(|w| w[0].range.start <= w[1].range.start), "{file}: sorted");
}

/// `plan.apply_to` on a fresh allocator for the map; then nothing the allocator still holds
/// (or hands out) touches a region of the plan or a non-usable byte.
fn check_apply(file: &str, map: &[Region], p: &Plan) -> FrameAllocator {
    let mut frames = FrameAllocator::from_regions(map);
    p.apply_to(&mut frames).unwrap_or_else(|e| panic!("{file}: apply_to: {e}"));
    for f in frames.free_ranges() {
        for c in &p.regions {
            assert!(!f.overlaps(&page_span(c.range)), "{file}: free {f:?} overlaps {c:?}");
        }
        for m in non_usable(map) {
            assert!(!f.overlaps(&range(m)), "{file}: free {f:?} overlaps {m}");
        }
    }
    frames
}

// ---------------------------------------------------------------------------------------------

#[test]
fn every_capture_parses_fully_and_prints_back_identically() {
    for c in CAPTURES {
        let map = load(c);
        for (line, r) in c.text.lines().zip(&map) {
            assert_eq!(r.to_string(), line, "{}", c.file);
            assert!(r.start < r.end, "{}: empty or inverted {r}", c.file);
        }
        // What the real maps look like (the planner does not rely on it): sorted, disjoint.
        for w in map.windows(2) {
            assert!(w[0].end <= w[1].start, "{}: {} and {} are out of order", c.file, w[0], w[1]);
        }
    }
}

#[test]
fn firmware_is_inferred_from_each_capture() {
    for c in CAPTURES {
        assert_eq!(infer_firmware(&load(c)), c.firmware, "{}", c.file);
    }
}

#[test]
fn summaries_are_plausible() {
    for c in CAPTURES {
        let map = load(c);
        let s = summarize(&map);
        let file = c.file;
        assert_eq!(s.regions, c.text.lines().count(), "{file}");
        // RAM is at most what QEMU was given; the firmware keeps a few MiB (ACPI tables,
        // runtime services, its own data), the bootloader a few more.
        assert!(s.usable_bytes + s.bootloader_bytes <= c.memory, "{file}: {s:?}");
        assert!(s.usable_bytes >= c.memory / 10 * 9, "{file}: less than 90% usable: {s:?}");
        assert!(
            s.usable_bytes + s.bootloader_bytes >= c.memory - c.memory / 50,
            "{file}: usable + bootloader below 98% of RAM: {s:?}"
        );
        assert!(s.bootloader_bytes > 0 && s.bootloader_bytes < 64 * MIB, "{file}: {s:?}");
        // q35 keeps RAM below 2 GiB when it all fits there, else splits it at 2 GiB and puts
        // the rest at 4 GiB.
        if c.memory <= 2 * GIB {
            assert!(s.usable_top <= c.memory, "{file}: {s:?}");
        } else {
            assert!(
                s.usable_top > FOUR_GIB && s.usable_top <= FOUR_GIB + c.memory,
                "{file}: {s:?}"
            );
        }
        for r in map.iter().filter(|r| r.kind == RegionKind::Usable) {
            assert!(r.end <= 2 * GIB || r.start >= FOUR_GIB, "{file}: usable {r} in the PCI hole");
        }
        // Both firmwares report q35's MMCONFIG (PCIe ECAM) window as reserved.
        let mmconfig = Range::new(0xb000_0000, 0xc000_0000);
        assert!(
            non_usable(&map).any(|r| range(r) == mmconfig),
            "{file}: no reserved MMCONFIG window"
        );
        // Reserved bytes are address space, not RAM: SeaBIOS's map reserves 12 GiB at
        // 1012 GiB (0xfd_0000_0000, the HyperTransport window QEMU always marks reserved).
        if c.firmware == Firmware::Bios {
            assert!(s.reserved_bytes > c.memory, "{file}: {s:?}");
            assert!(
                map.contains(&Region::new(0xfd_0000_0000, 0x100_0000_0000, RegionKind::Bios(2))),
                "{file}"
            );
        }
    }
}

#[test]
fn frame_pool_is_usable_memory_above_1mib_only() {
    for c in CAPTURES {
        let map = load(c);
        let file = c.file;
        let mut frames = FrameAllocator::from_regions(&map);
        // Every usable region above 1 MiB of these maps is page-aligned and overlaps nothing,
        // so the pool is exactly their bytes.
        let usable_high: u64 = map
            .iter()
            .filter(|r| r.kind == RegionKind::Usable)
            .map(|r| r.end.saturating_sub(r.start.max(LOW_MEMORY_END)))
            .sum();
        assert_eq!(frames.free_bytes(), usable_high, "{file}");
        let check = |r: Range| {
            assert!(r.start >= LOW_MEMORY_END, "{file}: {r:?} is below 1 MiB");
            assert!(
                r.start.is_multiple_of(PAGE_SIZE) && r.end.is_multiple_of(PAGE_SIZE),
                "{file}: {r:?}"
            );
            assert!(covered_by_usable(&map, r), "{file}: {r:?} is not usable memory");
            for m in non_usable(&map) {
                assert!(!r.overlaps(&range(m)), "{file}: {r:?} overlaps {m}");
            }
        };
        for r in frames.free_ranges() {
            check(*r);
        }
        // Drain it: 2 MiB runs while they last, then single frames.
        let mut handed_out = 0;
        while let Ok(s) = frames.allocate(2 * MIB, 2 * MIB, u64::MAX) {
            check(Range::new(s, s + 2 * MIB));
            handed_out += 2 * MIB;
        }
        while let Ok(s) = frames.allocate_frame() {
            check(Range::new(s, s + PAGE_SIZE));
            handed_out += PAGE_SIZE;
        }
        assert_eq!(handed_out, usable_high, "{file}");
    }
}

#[test]
fn plans_instances_start_pages_and_pool_on_every_capture() {
    for c in CAPTURES {
        let map = load(c);
        let prot = fake_protected(c, &map);
        let req = standard_request();
        let p = plan(&map, &prot, &req).unwrap_or_else(|e| panic!("{}: {e}", c.file));
        check_plan(c.file, &map, &prot, &req, &p);
        assert!(p.refused.is_empty(), "{}: {:?}", c.file, p.refused);
        assert_eq!(
            (p.start_page(), p.park_page()),
            (Some(PAGE_SIZE), Some(2 * PAGE_SIZE)),
            "{}: lowest pages after page 0",
            c.file
        );
        let pool = p.page_table_pool().unwrap();
        assert_eq!(pool.len(), MIB, "{}", c.file);
        for name in ["a", "b", "c", "big"] {
            let r = p.instance(name).unwrap();
            assert_eq!(r.start % DEFAULT_INSTANCE_ALIGN, 0, "{}: {name}", c.file);
        }
        assert_eq!(p.instance("big").unwrap().len(), 64 * MIB);
    }
}

#[test]
fn an_instance_larger_than_any_run_is_refused_naming_the_largest_run() {
    for c in CAPTURES {
        let map = load(c);
        let prot = fake_protected(c, &map);
        let largest_usable = usable_above_1mib(&map).iter().map(Range::len).max().unwrap();
        let huge = largest_usable + DEFAULT_INSTANCE_ALIGN;
        let mut req = standard_request();
        req.instances.push(InstanceRequest::new("huge", huge));
        let p = plan(&map, &prot, &req).unwrap();
        check_plan(c.file, &map, &prot, &req, &p);
        // The huge instance is tried first among the floating ones (largest first), after
        // the pool and the CPU table: the largest run then is usable memory minus the
        // protected pages, the pool and the table.
        let carved_before = [p.page_table_pool().unwrap(), p.cpu_table().unwrap()];
        let expected = largest(&free_memory(&map, &prot, &carved_before));
        assert!(expected.is_some());
        assert_eq!(p.refused.len(), 1, "{}: {:?}", c.file, p.refused);
        assert_eq!(p.refused[0].name, "huge");
        assert_eq!(
            p.refused[0].problem,
            InstanceProblem::NoRoom {
                size: huge,
                align: DEFAULT_INSTANCE_ALIGN,
                largest: expected
            },
            "{}",
            c.file
        );
        let msg = p.refused[0].to_string();
        assert!(
            msg.contains("the largest free run is")
                && msg.contains(&format!("at {:#x}", expected.unwrap().start)),
            "{}: {msg}",
            c.file
        );
        for name in ["a", "b", "c", "big"] {
            assert!(p.instance(name).is_some(), "{}: {name} should still be placed", c.file);
        }
    }
}

/// A fixed base that runs into a reserved range of the real map, chosen by hand per capture:
/// (file, base, size, the region the refusal must name).
const FIXED_ON_RESERVED: &[(&str, u64, u64, &str)] = &[
    // RAM's last 132 KiB, which SeaBIOS reserves (its tables), just below the top.
    ("bios-512M.txt", 0x1fe0_0000, 8 * MIB, "memmap 0x000000001ffdf000-0x0000000020000000 bios(2)"),
    ("bios-2G.txt", 0x7fe0_0000, 8 * MIB, "memmap 0x000000007ffdf000-0x0000000080000000 bios(2)"),
    // Runs from the hole below MMCONFIG into it: the reservation is reported before the hole.
    ("bios-4G.txt", 0xafe0_0000, 8 * MIB, "memmap 0x00000000b0000000-0x00000000c0000000 bios(2)"),
    // OVMF's runtime-services data (type 6) in the middle of RAM.
    ("uefi-512M.txt", 0x1ea0_0000, 8 * MIB, "memmap 0x000000001ea8a000-0x000000001eb8c000 uefi(6)"),
    ("uefi-2G.txt", 0x7ea0_0000, 8 * MIB, "memmap 0x000000007ea8a000-0x000000007eb8c000 uefi(6)"),
    // ACPI NVS (type 10) below the first 16 MiB, between two bootloader regions.
    (
        "uefi-4G.txt",
        0x80_6000,
        2 * PAGE_SIZE,
        "memmap 0x0000000000806000-0x0000000000808000 uefi(10)",
    ),
];

#[test]
fn fixed_base_on_a_reserved_range_of_the_real_map_is_refused() {
    assert_eq!(FIXED_ON_RESERVED.len(), CAPTURES.len());
    for &(file, base, size, line) in FIXED_ON_RESERVED {
        let c = CAPTURES.iter().find(|c| c.file == file).unwrap();
        let map = load(c);
        let region = Region::parse_line(line).unwrap();
        assert!(map.contains(&region), "{file} has no {line}");
        let prot = fake_protected(c, &map);
        let mut req = standard_request();
        let align = if base.is_multiple_of(DEFAULT_INSTANCE_ALIGN) {
            DEFAULT_INSTANCE_ALIGN
        } else {
            PAGE_SIZE
        };
        req.instances.push(InstanceRequest::new("fixed", size).aligned(align).at(base));
        let p = plan(&map, &prot, &req).unwrap();
        check_plan(file, &map, &prot, &req, &p);
        assert_eq!(p.refused.len(), 1, "{file}: {:?}", p.refused);
        assert_eq!(
            p.refused[0].problem,
            InstanceProblem::OverlapsReserved { base, range: range(&region), kind: region.kind },
            "{file}"
        );
        let msg = p.refused[0].to_string();
        assert!(msg.contains("reserved firmware memory"), "{file}: {msg}");
    }
}

#[test]
fn fixed_base_at_every_non_usable_region_is_refused_naming_it() {
    for c in CAPTURES {
        let map = load(c);
        let prot = fake_protected(c, &map);
        for m in non_usable(&map).filter(|m| m.start >= LOW_MEMORY_END) {
            assert_eq!(m.start % PAGE_SIZE, 0, "{}: {m}", c.file);
            let req = PlanRequest {
                channels: Vec::new(),
                instances: vec![InstanceRequest::new("x", PAGE_SIZE)
                    .aligned(PAGE_SIZE)
                    .at(m.start)],
                page_table_pool: 0,
                cpu_table: 0,
                image_store: 0,
            };
            let p = plan(&map, &prot, &req).unwrap();
            let problem =
                &p.refused.first().unwrap_or_else(|| panic!("{}: {m} accepted", c.file)).problem;
            // The fake ramdisk reaches into the last bootloader region: the manager's range
            // is reported first there.
            let expected_manager = prot
                .iter()
                .find(|pr| page_span(pr.range).overlaps(&Range::new(m.start, m.start + PAGE_SIZE)));
            match expected_manager {
                Some(pr) => assert!(
                    matches!(problem, InstanceProblem::OverlapsManager { label, .. } if *label == pr.label),
                    "{}: {m}: {problem:?}",
                    c.file
                ),
                None => assert_eq!(
                    *problem,
                    InstanceProblem::OverlapsReserved {
                        base: m.start,
                        range: range(m),
                        kind: m.kind
                    },
                    "{}",
                    c.file
                ),
            }
        }
    }
}

#[test]
fn apply_to_keeps_the_allocator_off_the_plan() {
    for c in CAPTURES {
        let map = load(c);
        let file = c.file;
        let prot = fake_protected(c, &map);
        let req = standard_request();
        let p = plan(&map, &prot, &req).unwrap();
        let before = FrameAllocator::from_regions(&map);
        let mut frames = check_apply(file, &map, &p);
        // Exactly the carved regions above 1 MiB and the free pages of the protected ranges
        // left the pool.
        let carved: u64 =
            p.carved().filter(|c| c.range.start >= LOW_MEMORY_END).map(|c| c.range.len()).sum();
        let protected_free: u64 = prot
            .iter()
            .map(|pr| {
                let s = page_span(pr.range);
                before
                    .free_ranges()
                    .iter()
                    .map(|f| f.end.min(s.end).saturating_sub(f.start.max(s.start)))
                    .sum::<u64>()
            })
            .sum();
        assert!(protected_free > 0, "{file}: the fake ranges should cover some free memory");
        assert_eq!(before.free_bytes() - frames.free_bytes(), carved + protected_free, "{file}");
        // Nothing handed out afterwards touches the plan.
        let mut n = 0u64;
        while let Ok(s) = frames.allocate(2 * MIB, PAGE_SIZE, u64::MAX) {
            let got = Range::new(s, s + 2 * MIB);
            for reg in &p.regions {
                assert!(!got.overlaps(&page_span(reg.range)), "{file}: {got:?} overlaps {reg:?}");
            }
            n += 1;
        }
        while let Ok(s) = frames.allocate_frame() {
            let got = Range::new(s, s + PAGE_SIZE);
            for reg in &p.regions {
                assert!(!got.overlaps(&page_span(reg.range)), "{file}: {got:?} overlaps {reg:?}");
            }
        }
        assert!(n * 2 * MIB >= c.memory / 2, "{file}: only {n} runs of 2 MiB were left");
    }
}

// ---------------------------------------------------------------------------------------------
// Property test: random request sets on every real map.

/// xorshift64 (Marsaglia 2003): deterministic, no dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform enough in `[0, n)`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

fn random_case(rng: &mut XorShift, map: &[Region]) -> (Vec<Protected>, PlanRequest) {
    let top = summarize(map).usable_top;
    // 0-3 manager ranges anywhere above 1 MiB, of any length up to 32 MiB, unaligned.
    let prot = (0..rng.below(4))
        .map(|i| {
            let start = LOW_MEMORY_END + rng.below(top - LOW_MEMORY_END);
            let len = 1 + rng.below(32 * MIB);
            Protected::new(&format!("p{i}"), start, start + len)
        })
        .collect();
    let instances = (0..rng.below(9))
        .map(|i| {
            let size = match rng.below(3) {
                0 => (1 + rng.below(512)) * PAGE_SIZE,
                1 => (1 + rng.below(64)) * MIB,
                _ => (64 + rng.below(1024)) * MIB + rng.below(MIB),
            };
            let align = rng.pick(&[
                PAGE_SIZE,
                64 * KIB,
                DEFAULT_INSTANCE_ALIGN,
                DEFAULT_INSTANCE_ALIGN,
                GIB,
            ]);
            let mut req = InstanceRequest::new(&format!("i{i}"), size).aligned(align);
            if rng.below(4) == 0 {
                // Anywhere in the address space the map describes, reserved ranges included.
                req = req.at((rng.below(top) / align) * align);
            }
            req
        })
        .collect();
    let req = PlanRequest {
        channels: Vec::new(),
        instances,
        page_table_pool: rng.below(16 * MIB / PAGE_SIZE + 1) * PAGE_SIZE,
        cpu_table: rng.below(4) * PAGE_SIZE,
        image_store: rng.below(3) * 16 * MIB,
    };
    (prot, req)
}

#[test]
fn random_request_sets_on_real_maps_never_overlap_anything() {
    let mut placed = 0;
    let mut refused = 0;
    for (k, c) in CAPTURES.iter().enumerate() {
        let map = load(c);
        let file = c.file;
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15 ^ (k as u64 + 1));
        for case in 0..500 {
            let (prot, req) = random_case(&mut rng, &map);
            let p = plan(&map, &prot, &req)
                .unwrap_or_else(|e| panic!("{file} case {case}: {e}\n{prot:?}\n{req:?}"));
            check_plan(file, &map, &prot, &req, &p);
            let taken: Vec<Range> = p.carved().map(|c| c.range).collect();
            let left = free_memory(&map, &prot, &taken);
            for r in &p.refused {
                let inst = req.instances.iter().find(|i| i.name == r.name).unwrap();
                match &r.problem {
                    // Tried largest first, so memory only shrank afterwards: if it did not fit
                    // then, it does not fit in what is left at the end either.
                    InstanceProblem::NoRoom { size, align, .. } => {
                        assert!(inst.fixed_base.is_none(), "{file} case {case}: {r:?}");
                        assert!(!fits(&left, *size, *align), "{file} case {case}: {r:?} would fit");
                    }
                    InstanceProblem::OverlapsReserved { base, range: named, kind } => {
                        let want = Range::new(*base, base + inst.size.next_multiple_of(PAGE_SIZE));
                        assert!(named.overlaps(&want), "{file} case {case}: {r:?}");
                        assert!(
                            map.contains(&Region::new(named.start, named.end, *kind)),
                            "{file} case {case}: {r:?}"
                        );
                        assert_ne!(*kind, RegionKind::Usable);
                    }
                    InstanceProblem::OverlapsManager { .. }
                    | InstanceProblem::OverlapsCarved { .. }
                    | InstanceProblem::NotUsable { .. }
                    | InstanceProblem::LowMemory { .. } => {
                        assert!(inst.fixed_base.is_some(), "{file} case {case}: {r:?}")
                    }
                    other => panic!("{file} case {case}: unexpected {other:?} for {inst:?}"),
                }
            }
            check_apply(file, &map, &p);
            placed += p.carved().filter(|c| matches!(c.owner, Owner::Instance(_))).count();
            refused += p.refused.len();
        }
    }
    // The generator is not degenerate: both outcomes happen plenty.
    assert!(placed > 3000 && refused > 1000, "placed {placed}, refused {refused}");
}

/// The checker itself has teeth on a real map: an instance moved onto OVMF's runtime data, or
/// onto the manager's heap (usable in the map), is caught.
#[test]
#[should_panic(expected = "is not inside usable memory")]
fn check_plan_catches_an_instance_on_firmware_memory() {
    let c = CAPTURES.iter().find(|c| c.file == "uefi-2G.txt").unwrap();
    let map = load(c);
    let prot = fake_protected(c, &map);
    let req = standard_request();
    let mut p = plan(&map, &prot, &req).unwrap();
    let a = p.regions.iter_mut().find(|r| r.owner == Owner::Instance("a".into())).unwrap();
    a.range = Range::new(0x7ea0_0000, 0x7ea0_0000 + 8 * MIB);
    check_plan(c.file, &map, &prot, &req, &p);
}

#[test]
#[should_panic(expected = "overlaps protected")]
fn check_plan_catches_an_instance_on_the_managers_heap() {
    let c = CAPTURES.iter().find(|c| c.file == "bios-512M.txt").unwrap();
    let map = load(c);
    let prot = fake_protected(c, &map);
    let req = standard_request();
    let mut p = plan(&map, &prot, &req).unwrap();
    let heap = page_span(prot[0].range);
    let a = p.regions.iter_mut().find(|r| r.owner == Owner::Instance("a".into())).unwrap();
    a.range = heap;
    check_plan(c.file, &map, &prot, &req, &p);
}
