//! Partition planner tests: synthetic firmware maps shaped like SeaBIOS/OVMF ones, exact refusal
//! variants and messages, the frame-allocator hand-off, and randomized properties (no carved
//! region ever overlaps anything, every one is inside usable memory).

use platform::frames::{FrameAllocator, FrameError};
use platform::memmap::{normalized_usable, Range, Region, RegionKind, PAGE_SIZE};
use platform::partition::{
    plan, InstanceProblem, InstanceRefusal, InstanceRequest, Owner, Plan, PlanError, PlanRequest,
    Protected, DEFAULT_INSTANCE_ALIGN, LOW_SLICE_START, PAGE_TABLE_POOL_LIMIT,
};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const U: RegionKind = RegionKind::Usable;
const BL: RegionKind = RegionKind::Bootloader;
const E820_RESERVED: RegionKind = RegionKind::Bios(2);

/// A BIOS-like map: 640 KiB low memory, the manager's bootloader region at 1-4 MiB, RAM up to
/// 1 GiB minus a firmware tail, the BIOS ROM below 4 GiB, and 2 GiB above 4 GiB.
fn bios_map() -> Vec<Region> {
    vec![
        Region::new(0, 0x9fc00, U),
        Region::new(0x9fc00, 0xa0000, E820_RESERVED),
        Region::new(0xf0000, 0x100000, E820_RESERVED),
        Region::new(0x100000, 0x400000, BL),
        Region::new(0x400000, 0x3ffe0000, U),
        Region::new(0x3ffe0000, 0x40000000, E820_RESERVED),
        Region::new(0xfffc0000, 0x1_0000_0000, E820_RESERVED),
        Region::new(0x1_0000_0000, 0x1_8000_0000, U),
    ]
}

/// The manager's ranges: image and stack inside the bootloader region, the heap in memory the
/// map calls usable (so only the explicit check keeps it safe).
fn protected() -> Vec<Protected> {
    vec![
        Protected::new("image", 0x100000, 0x200000),
        Protected::new("stack", 0x200000, 0x280000),
        Protected::new("heap", 0x500000, 0x600000),
    ]
}

fn request(instances: Vec<InstanceRequest>) -> PlanRequest {
    PlanRequest {
        image_store: 0,
        channels: Vec::new(),
        instances,
        page_table_pool: 64 * 4096,
        cpu_table: 4096,
    }
}

fn refusal(p: &Plan, name: &str) -> InstanceProblem {
    p.refused.iter().find(|r| r.name == name).map(|r| r.problem.clone()).expect(name)
}

fn message(p: &Plan, name: &str) -> String {
    p.refused.iter().find(|r| r.name == name).expect(name).to_string()
}

/// Every invariant of a plan against its inputs.
fn check_plan(map: &[Region], prot: &[Protected], req: &PlanRequest, p: &Plan) {
    let mut usable = vec![Range::new(0, 0); map.len() + 1];
    let n = normalized_usable(map, &mut usable);
    usable.truncate(n);
    let carved: Vec<_> = p.carved().collect();
    for (i, c) in carved.iter().enumerate() {
        let r = c.range;
        assert!(
            !r.is_empty() && r.start.is_multiple_of(PAGE_SIZE) && r.end.is_multiple_of(PAGE_SIZE),
            "{c:?}"
        );
        // Inside usable memory (touching normalized runs count as one).
        let mut cursor = r.start;
        for u in &usable {
            if u.start <= cursor && cursor < u.end {
                cursor = u.end;
            }
        }
        assert!(cursor >= r.end, "{c:?} is not inside usable memory {usable:x?}");
        for m in map.iter().filter(|m| m.kind != U) {
            assert!(!r.overlaps(&Range::new(m.start, m.end)), "{c:?} overlaps {m:?}");
        }
        for pr in prot {
            assert!(!r.overlaps(&pr.range), "{c:?} overlaps protected {pr:?}");
        }
        for other in &carved[i + 1..] {
            assert!(!r.overlaps(&other.range), "{c:?} overlaps {other:?}");
        }
        match &c.owner {
            Owner::StartPage | Owner::ParkPage => {
                assert!(r.start >= PAGE_SIZE && r.end <= 0x100000 && r.len() == PAGE_SIZE);
                assert!(!(0xa0000..0xc0000).contains(&r.start), "{c:?} is a reserved SIPI page");
            }
            Owner::PageTablePool => {
                assert!(r.start >= 0x100000 && r.end <= PAGE_TABLE_POOL_LIMIT);
                assert!(r.len() >= req.page_table_pool);
            }
            Owner::CpuTable => {
                assert!(r.start >= 0x100000 && r.end <= PAGE_TABLE_POOL_LIMIT);
                assert!(r.len() >= req.cpu_table);
            }
            Owner::Channel(name) => {
                let want = req.channels.iter().find(|i| &i.name == name).unwrap();
                assert!(r.start >= 0x100000 && r.len() >= want.size, "{c:?}");
            }
            Owner::ImageStore => {
                assert!(r.start >= 0x100000 && r.len() >= req.image_store, "{c:?}");
            }
            Owner::LowMemory(name) => {
                let want = req.instances.iter().find(|i| &i.name == name).unwrap();
                assert!(r.start >= LOW_SLICE_START && r.end <= 0x100000, "{c:?}");
                assert!(r.len() >= want.low_memory, "{c:?} vs {want:?}");
                assert!(p.instance(name).is_some(), "{c:?}: its instance was not placed");
            }
            Owner::Instance(name) => {
                let want = req.instances.iter().find(|i| &i.name == name).unwrap();
                assert!(
                    r.len() >= want.size && r.start.is_multiple_of(want.align),
                    "{c:?} vs {want:?}"
                );
                assert!(r.start >= 0x100000);
                if let Some(b) = want.fixed_base {
                    assert_eq!(r.start, b);
                }
            }
            Owner::Manager(_) => unreachable!(),
        }
    }
    // Each request is placed or refused, exactly once (duplicates: the later ones are refused).
    for (i, inst) in req.instances.iter().enumerate() {
        let placed =
            carved.iter().filter(|c| c.owner == Owner::Instance(inst.name.clone())).count();
        let refused = p.refused.iter().filter(|r| r.name == inst.name).count();
        let copies = req.instances.iter().filter(|o| o.name == inst.name).count();
        assert_eq!(placed + refused, copies, "instance #{i} {inst:?}");
        assert!(placed <= 1);
    }
    // An instance that asked for low memory has it exactly when it was placed.
    for inst in req.instances.iter().filter(|i| i.low_memory > 0) {
        if p.refused.iter().any(|r| r.name == inst.name) {
            continue;
        }
        assert!(p.low_memory(&inst.name).is_some(), "{inst:?} placed without its low memory");
    }
    assert!(p.start_page().is_some() && p.park_page().is_some() && p.start_page() != p.park_page());
    assert!(p.regions.windows(2).all(|w| w[0].range.start <= w[1].range.start), "sorted");
    assert_eq!(
        p.regions.iter().filter(|c| matches!(c.owner, Owner::Manager(_))).count(),
        prot.len()
    );
}

// ---------------------------------------------------------------------------------------------

#[test]
fn plans_start_pages_pool_table_and_instances() {
    let map = bios_map();
    let prot = protected();
    let req =
        request(vec![InstanceRequest::new("a", 16 * MIB), InstanceRequest::new("b", 100 * MIB)]);
    let p = plan(&map, &prot, &req).unwrap();
    check_plan(&map, &prot, &req, &p);
    assert!(p.refused.is_empty());
    assert_eq!((p.start_page(), p.park_page()), (Some(0x1000), Some(0x2000)));
    // The pool goes first-fit above 1 MiB: 4 MiB (the bootloader region and the heap are out),
    // the CPU table right after it.
    assert_eq!(p.page_table_pool(), Some(Range::new(0x400000, 0x440000)));
    assert_eq!(p.cpu_table(), Some(Range::new(0x440000, 0x441000)));
    // Largest first: b, then a; both 2 MiB aligned, skipping the pool and the heap.
    assert_eq!(p.instance("b"), Some(Range::new(0x600000, 0x600000 + 100 * MIB)));
    assert_eq!(p.instance("a"), Some(Range::new(0x600000 + 100 * MIB, 0x600000 + 116 * MIB)));
}

#[test]
fn placement_is_largest_first_then_request_order() {
    let map = bios_map();
    let req = request(vec![
        InstanceRequest::new("small", 2 * MIB),
        InstanceRequest::new("big", 64 * MIB),
        InstanceRequest::new("mid1", 8 * MIB),
        InstanceRequest::new("mid2", 8 * MIB),
    ]);
    let p = plan(&map, &[], &req).unwrap();
    let order: Vec<&str> = p
        .regions
        .iter()
        .filter_map(|c| match &c.owner {
            Owner::Instance(n) => Some(n.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(order, ["big", "mid1", "mid2", "small"]);
    assert_eq!(plan(&map, &[], &req).unwrap(), p, "deterministic");
}

#[test]
fn fixed_bases_are_placed_first() {
    let map = bios_map();
    let prot = protected();
    let req = request(vec![
        InstanceRequest::new("floating", 32 * MIB),
        InstanceRequest::new("pinned", 4 * MIB).at(0x800000),
    ]);
    let p = plan(&map, &prot, &req).unwrap();
    check_plan(&map, &prot, &req, &p);
    assert_eq!(p.instance("pinned"), Some(Range::new(0x800000, 0xC00000)));
    assert_eq!(p.instance("floating"), Some(Range::new(0xC00000, 0xC00000 + 32 * MIB)));
}

#[test]
fn fixed_base_on_the_managers_heap() {
    let req = request(vec![InstanceRequest::new("x", 4 * MIB).at(0x400000)]);
    let p = plan(&bios_map(), &protected(), &req).unwrap();
    assert_eq!(
        refusal(&p, "x"),
        InstanceProblem::OverlapsManager {
            base: 0x400000,
            label: "heap".into(),
            range: Range::new(0x500000, 0x600000)
        }
    );
    assert_eq!(
        message(&p, "x"),
        "fixed base 0x400000 of instance 'x' overlaps the manager's heap (0x500000-0x600000)"
    );
}

#[test]
fn fixed_base_on_firmware_memory() {
    let req = request(vec![InstanceRequest::new("x", 4 * MIB).at(0x3fe00000)]);
    let p = plan(&bios_map(), &protected(), &req).unwrap();
    assert_eq!(
        refusal(&p, "x"),
        InstanceProblem::OverlapsReserved {
            base: 0x3fe00000,
            range: Range::new(0x3ffe0000, 0x40000000),
            kind: E820_RESERVED
        }
    );
    assert_eq!(
        message(&p, "x"),
        "fixed base 0x3fe00000 of instance 'x' overlaps reserved firmware memory \
         0x3ffe0000-0x40000000 (bios(2))"
    );
}

#[test]
fn fixed_base_on_unprotected_bootloader_memory() {
    // 0x300000.. is in the bootloader's region but in no protected range: still refused.
    let req = request(vec![InstanceRequest::new("x", 2 * MIB).aligned(MIB).at(0x300000)]);
    let p = plan(&bios_map(), &protected(), &req).unwrap();
    assert_eq!(
        refusal(&p, "x"),
        InstanceProblem::OverlapsReserved {
            base: 0x300000,
            range: Range::new(0x100000, 0x400000),
            kind: BL
        }
    );
    assert!(message(&p, "x").contains("memory the bootloader reserved 0x100000-0x400000"));
}

#[test]
fn fixed_base_in_a_hole_of_the_map() {
    // 1 GiB..4 GiB minus the ROM is not described at all (PCI hole).
    let req = request(vec![InstanceRequest::new("x", 4 * MIB).at(0x8000_0000)]);
    let p = plan(&bios_map(), &[], &req).unwrap();
    assert_eq!(
        refusal(&p, "x"),
        InstanceProblem::NotUsable { base: 0x8000_0000, gap: Range::new(0x8000_0000, 0x8040_0000) }
    );
    // Straddling the end of usable memory: the gap starts where RAM ends.
    let req = request(vec![InstanceRequest::new("y", 4 * MIB).at(0x1_7fe0_0000)]);
    let p = plan(&bios_map(), &[], &req).unwrap();
    assert_eq!(
        refusal(&p, "y"),
        InstanceProblem::NotUsable {
            base: 0x1_7fe0_0000,
            gap: Range::new(0x1_8000_0000, 0x1_8020_0000)
        }
    );
    assert!(message(&p, "y").contains("0x180000000-0x180200000 is not usable RAM"));
}

#[test]
fn fixed_bases_that_collide() {
    let req = request(vec![
        InstanceRequest::new("first", 4 * MIB).at(0x1000_0000),
        InstanceRequest::new("second", 4 * MIB).at(0x1020_0000),
    ]);
    let p = plan(&bios_map(), &[], &req).unwrap();
    assert_eq!(p.instance("first"), Some(Range::new(0x1000_0000, 0x1040_0000)));
    assert_eq!(
        refusal(&p, "second"),
        InstanceProblem::OverlapsCarved {
            base: 0x1020_0000,
            owner: Owner::Instance("first".into()),
            range: Range::new(0x1000_0000, 0x1040_0000)
        }
    );
    assert_eq!(
        message(&p, "second"),
        "fixed base 0x10200000 of instance 'second' overlaps instance 'first' (0x10000000-0x10400000)"
    );
}

#[test]
fn invalid_requests_are_refused_one_by_one() {
    let req = request(vec![
        InstanceRequest::new("zero", 0),
        InstanceRequest::new("misaligned", 4 * MIB).at(0x1010_0000),
        InstanceRequest::new("badalign", 4 * MIB).aligned(3 * 4096),
        InstanceRequest::new("tinyalign", 4 * MIB).aligned(512),
        InstanceRequest::new("huge", u64::MAX),
        InstanceRequest::new("wraps", 4 * MIB).aligned(4096).at(u64::MAX - 0xFFF),
        InstanceRequest::new("low", 4096).aligned(4096).at(0x8000),
        InstanceRequest::new("ok", 4 * MIB),
        InstanceRequest::new("ok", 2 * MIB),
    ]);
    let map = bios_map();
    let p = plan(&map, &[], &req).unwrap();
    check_plan(&map, &[], &req, &p);
    let want = [
        ("zero", InstanceProblem::ZeroSize),
        (
            "misaligned",
            InstanceProblem::MisalignedBase { base: 0x1010_0000, align: DEFAULT_INSTANCE_ALIGN },
        ),
        ("badalign", InstanceProblem::BadAlign { align: 3 * 4096 }),
        ("tinyalign", InstanceProblem::BadAlign { align: 512 }),
        ("huge", InstanceProblem::SizeOverflow { size: u64::MAX }),
        ("wraps", InstanceProblem::SizeOverflow { size: 4 * MIB }),
        ("low", InstanceProblem::LowMemory { base: 0x8000 }),
        ("ok", InstanceProblem::DuplicateName),
    ];
    let got: Vec<(&str, InstanceProblem)> =
        p.refused.iter().map(|r| (r.name.as_str(), r.problem.clone())).collect();
    assert_eq!(got, want);
    assert_eq!(p.instance("ok").map(|r| r.len()), Some(4 * MIB), "the first 'ok' is placed");
    assert_eq!(
        message(&p, "misaligned"),
        "fixed base 0x10100000 of instance 'misaligned' is not aligned to 2 MiB (0x200000)"
    );
    assert_eq!(message(&p, "zero"), "instance 'zero' asks for 0 bytes");
}

#[test]
fn no_room_names_the_largest_free_run() {
    // 300 MiB of RAM above the manager.
    let map = vec![
        Region::new(0, 0x9f000, U),
        Region::new(0x100000, 0x400000, BL),
        Region::new(0x400000, 0x400000 + 300 * MIB, U),
    ];
    let req = PlanRequest {
        image_store: 0,
        channels: Vec::new(),
        instances: vec![InstanceRequest::new("x", 512 * MIB), InstanceRequest::new("y", 100 * MIB)],
        page_table_pool: 0,
        cpu_table: 0,
    };
    let p = plan(&map, &[], &req).unwrap();
    assert_eq!(
        p.refused,
        [InstanceRefusal {
            name: "x".into(),
            problem: InstanceProblem::NoRoom {
                size: 512 * MIB,
                align: DEFAULT_INSTANCE_ALIGN,
                largest: Some(Range::new(0x400000, 0x400000 + 300 * MIB))
            }
        }]
    );
    assert_eq!(
        p.refused[0].to_string(),
        "instance 'x' asks 512 MiB (aligned to 2 MiB); the largest free run is 300 MiB at 0x400000"
    );
    // The refusal did not stop the next instance.
    assert_eq!(p.instance("y"), Some(Range::new(0x400000, 0x400000 + 100 * MIB)));
}

#[test]
fn start_and_park_pages_are_chosen_from_the_map() {
    // Low memory starts at 0x7000 here, and the manager's boot info sits at 0x7000-0x7800.
    let map = vec![Region::new(0x7000, 0x9f000, U), Region::new(0x400000, 0x800000, U)];
    let prot = vec![Protected::new("boot info", 0x7000, 0x7800)];
    let p = plan(&map, &prot, &request(vec![])).unwrap();
    assert_eq!((p.start_page(), p.park_page()), (Some(0x8000), Some(0x9000)));
    // Only page 0 is usable below 1 MiB: no start page.
    let map = vec![Region::new(0, 0x1000, U), Region::new(0x400000, 0x800000, U)];
    let err = plan(&map, &[], &request(vec![])).unwrap_err();
    assert_eq!(err, PlanError::NoStartPages { found: 0 });
    assert_eq!(
        err.to_string(),
        "the AP start-up code needs 2 free 4 KiB pages of usable RAM below 1 MiB (the start page \
         and the parking page); the firmware memory map leaves 0"
    );
    // One page is not enough; sub-page fragments and reserved SIPI vectors do not count.
    let map = vec![
        Region::new(0x1800, 0x2800, U),
        Region::new(0x5000, 0x6000, U),
        Region::new(0xa0000, 0xc0000, U),
        Region::new(0x400000, 0x800000, U),
    ];
    assert_eq!(plan(&map, &[], &request(vec![])), Err(PlanError::NoStartPages { found: 1 }));
}

#[test]
fn low_memory_use_does_not_grow_with_the_number_of_instances() {
    let map = vec![Region::new(0, 0x9f000, U), Region::new(0x100000, 0x4000_0000, U)];
    let instances = (0..300).map(|i| InstanceRequest::new(&format!("i{i}"), 2 * MIB)).collect();
    let req = PlanRequest {
        image_store: 0,
        channels: Vec::new(),
        instances,
        page_table_pool: 300 * 22 * 4096,
        cpu_table: 300 * 32,
    };
    let p = plan(&map, &[], &req).unwrap();
    check_plan(&map, &[], &req, &p);
    assert!(p.refused.is_empty());
    let low: Vec<_> = p.carved().filter(|c| c.range.start < 0x100000).collect();
    assert_eq!(low.len(), 2, "{low:?}");
}

#[test]
fn low_memory_slices_come_from_usable_ram_above_64_kib_or_the_instance_is_refused() {
    let map = vec![
        Region::new(0, 0x20000, U),
        Region::new(0x20000, 0x30000, RegionKind::Bios(2)),
        Region::new(0x30000, 0x9f000, U),
        Region::new(0x100000, 0x4000_0000, U),
    ];
    let req = PlanRequest {
        image_store: 0,
        channels: Vec::new(),
        instances: vec![
            InstanceRequest::new("linux-1", 128 * MIB).with_low_memory(0x11000),
            InstanceRequest::new("linux-2", 128 * MIB).with_low_memory(0x20000),
            InstanceRequest::new("hello", 2 * MIB),
        ],
        page_table_pool: MIB,
        cpu_table: 4096,
    };
    let p = plan(&map, &[], &req).unwrap();
    check_plan(&map, &[], &req, &p);
    // 0x10000-0x20000 is too small for the first (0x11000), so both land above the hole.
    assert_eq!(p.low_memory("linux-1"), Some(Range::new(0x30000, 0x41000)));
    assert_eq!(p.low_memory("linux-2"), Some(Range::new(0x41000, 0x61000)));
    // Ask for more than is left: that instance alone is refused, and gets no region.
    let req = PlanRequest {
        image_store: 0,
        channels: Vec::new(),
        instances: vec![
            InstanceRequest::new("linux-1", 128 * MIB).with_low_memory(0x60000),
            InstanceRequest::new("linux-2", 128 * MIB).with_low_memory(0x20000),
            InstanceRequest::new("hello", 2 * MIB),
        ],
        ..req
    };
    let p = plan(&map, &[], &req).unwrap();
    check_plan(&map, &[], &req, &p);
    assert_eq!(p.low_memory("linux-1"), Some(Range::new(0x30000, 0x90000)));
    assert_eq!(p.instance("linux-2"), None);
    assert_eq!(p.low_memory("linux-2"), None);
    assert_eq!(
        message(&p, "linux-2"),
        "instance 'linux-2' needs 128 KiB of memory below 1 MiB; the largest free run there is \
         64 KiB at 0x10000"
    );
    assert!(p.instance("hello").is_some());
}

#[test]
fn a_refused_fixed_base_instance_keeps_no_low_memory() {
    let map = vec![Region::new(0, 0x9f000, U), Region::new(0x100000, 0x4000_0000, U)];
    let req = PlanRequest {
        image_store: 0,
        channels: Vec::new(),
        instances: vec![InstanceRequest::new("l", 128 * MIB)
            .with_low_memory(0x8000)
            .at(0x5000_0000)],
        page_table_pool: MIB,
        cpu_table: 4096,
    };
    let p = plan(&map, &[], &req).unwrap();
    check_plan(&map, &[], &req, &p);
    assert!(p.low_memory("l").is_none() && p.instance("l").is_none());
}

#[test]
fn page_table_pool_stays_below_4_gib() {
    // Only 2 MiB free below 4 GiB, plenty above.
    let map = vec![
        Region::new(0, 0x9f000, U),
        Region::new(0x100000, 0x300000, U),
        Region::new(0x1_0000_0000, 0x2_0000_0000, U),
    ];
    let ok = PlanRequest {
        image_store: 0,
        channels: Vec::new(),
        instances: vec![InstanceRequest::new("a", GIB)],
        page_table_pool: 2 * MIB,
        cpu_table: 0,
    };
    let p = plan(&map, &[], &ok).unwrap();
    assert_eq!(p.page_table_pool(), Some(Range::new(0x100000, 0x300000)));
    assert_eq!(p.instance("a"), Some(Range::new(0x1_0000_0000, 0x1_4000_0000)));
    let too_big = PlanRequest {
        image_store: 0,
        channels: Vec::new(),
        instances: vec![],
        page_table_pool: 3 * MIB,
        cpu_table: 0,
    };
    let err = plan(&map, &[], &too_big).unwrap_err();
    assert_eq!(
        err,
        PlanError::NoRoomForPageTablePool {
            size: 3 * MIB,
            largest: Some(Range::new(0x100000, 0x300000))
        }
    );
    assert_eq!(
        err.to_string(),
        "the page-table pool needs 3 MiB below 4 GiB; the largest free run there is 2 MiB at 0x100000"
    );
    // Pool sizes are rounded up to pages.
    let odd = PlanRequest {
        image_store: 0,
        channels: Vec::new(),
        instances: vec![],
        page_table_pool: 5000,
        cpu_table: 0,
    };
    assert_eq!(plan(&map, &[], &odd).unwrap().page_table_pool().map(|r| r.len()), Some(8192));
}

#[test]
fn inverted_protected_range_is_an_error() {
    let prot = vec![Protected::new("ramdisk", 0x900000, 0x800000)];
    assert_eq!(
        plan(&bios_map(), &prot, &request(vec![])),
        Err(PlanError::InvalidProtected {
            label: "ramdisk".into(),
            range: Range::new(0x900000, 0x800000)
        })
    );
}

#[test]
fn unaligned_protected_range_blocks_whole_pages() {
    let map = vec![Region::new(0, 0x9f000, U), Region::new(0x100000, 0x1000000, U)];
    let prot = vec![Protected::new("boot info", 0x100800, 0x200001)];
    let req = PlanRequest {
        image_store: 0,
        channels: Vec::new(),
        instances: vec![InstanceRequest::new("a", 4096).aligned(4096)],
        page_table_pool: 4096,
        cpu_table: 0,
    };
    let p = plan(&map, &prot, &req).unwrap();
    assert_eq!(p.page_table_pool(), Some(Range::new(0x201000, 0x202000)));
    assert_eq!(p.instance("a"), Some(Range::new(0x202000, 0x203000)));
}

// ---------------------------------------------------------------------------------------------
// Hand-off to the frame allocator.

#[test]
fn apply_to_keeps_the_allocator_off_everything_planned() {
    let map = bios_map();
    let prot = protected();
    let req =
        request(vec![InstanceRequest::new("a", 64 * MIB), InstanceRequest::new("b", 8 * MIB)]);
    let p = plan(&map, &prot, &req).unwrap();
    let mut fa = FrameAllocator::from_regions(&map);
    let before = fa.free_bytes();
    p.apply_to(&mut fa).unwrap();
    let carved_above_1m: u64 =
        p.carved().filter(|c| c.range.start >= 0x100000).map(|c| c.range.len()).sum();
    // The heap (in usable memory) is taken too; image and stack were never in the pool.
    assert_eq!(fa.free_bytes(), before - carved_above_1m - MIB);
    // Drain the allocator below 4 GiB: nothing it returns belongs to anyone.
    while let Ok(f) = fa.allocate(PAGE_SIZE, PAGE_SIZE, 0x4000_0000) {
        let frame = Range::new(f, f + PAGE_SIZE);
        for c in &p.regions {
            assert!(!frame.overlaps(&c.range), "allocator handed out {frame:?} of {:?}", c.owner);
        }
    }
}

#[test]
fn apply_to_refuses_memory_already_handed_out_and_changes_nothing() {
    let map = bios_map();
    let p = plan(&map, &[], &request(vec![InstanceRequest::new("a", 8 * MIB)])).unwrap();
    let mut fa = FrameAllocator::from_regions(&map);
    // Something allocated a frame inside the instance's range before the plan was applied.
    let inst = p.instance("a").unwrap();
    fa.reserve(Range::new(inst.start + 0x3000, inst.start + 0x4000)).unwrap();
    let ranges_before = fa.free_ranges().to_vec();
    assert_eq!(p.apply_to(&mut fa), Err(FrameError::NotFree { range: inst }));
    assert_eq!(fa.free_ranges(), &ranges_before[..]);
}

// ---------------------------------------------------------------------------------------------
// Randomized properties. A small deterministic generator (no dependency, reproducible): every
// seed builds a messy map (unsorted, overlapping, unaligned, holes, reserved ranges inside
// usable ones), protected ranges, and random fixed and floating requests.

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 16
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

fn random_case(rng: &mut Lcg) -> (Vec<Region>, Vec<Protected>, PlanRequest) {
    let mut map = vec![Region::new(0, 0x9fc00, U)];
    let kinds = [U, U, U, BL, E820_RESERVED, RegionKind::Bios(3), RegionKind::Uefi(4)];
    for _ in 0..rng.below(12) + 1 {
        // Mostly page-aligned, sometimes not; within 8 GiB.
        let start = rng.below(8 * GIB) & !(if rng.below(4) == 0 { 0 } else { 0xFFF });
        let len =
            rng.pick(&[0x1000, 0x10000, MIB, 16 * MIB, 256 * MIB, GIB]) + rng.below(3) * 0x800;
        map.push(Region::new(start, start.saturating_add(len), rng.pick(&kinds)));
    }
    let mut prot = Vec::new();
    for i in 0..rng.below(4) {
        let start = rng.below(2 * GIB);
        let len = rng.below(8 * MIB) + 1;
        prot.push(Protected::new(
            ["image", "stack", "heap", "ramdisk"][i as usize],
            start,
            start + len,
        ));
    }
    if rng.below(3) == 0 {
        prot.push(Protected::new("boot info", 0x1000, 0x2000));
    }
    let mut instances = Vec::new();
    for i in 0..rng.below(8) {
        let size = rng.pick(&[0, 4096, MIB, 2 * MIB, 16 * MIB, 100 * MIB, GIB, 3 * GIB])
            + rng.below(2) * 0x123;
        let align = rng.pick(&[4096, DEFAULT_INSTANCE_ALIGN, DEFAULT_INSTANCE_ALIGN, GIB, 3000]);
        let mut r = InstanceRequest::new(&format!("i{}", i % 6), size)
            .aligned(align)
            .with_low_memory(rng.pick(&[0, 0, 0, 0x8000, 0x11000, 0x80000]));
        if rng.below(3) == 0 {
            r = r.at(rng.below(4 * GIB) & !(align.max(4096) - 1));
        }
        instances.push(r);
    }
    (
        map,
        prot,
        PlanRequest {
            image_store: 0,
            channels: Vec::new(),
            instances,
            page_table_pool: rng.pick(&[0, 4096, 64 * 4096, 4 * MIB]),
            cpu_table: rng.pick(&[0, 32, 4096, 3 * 4096]),
        },
    )
}

#[test]
fn random_plans_never_overlap_anything() {
    let mut rng = Lcg(0x5eed);
    let (mut planned, mut refused_all, mut failed) = (0, 0, 0);
    for _ in 0..3000 {
        let (map, prot, req) = random_case(&mut rng);
        match plan(&map, &prot, &req) {
            Ok(p) => {
                check_plan(&map, &prot, &req, &p);
                planned += p.carved().filter(|c| matches!(c.owner, Owner::Instance(_))).count();
                refused_all += p.refused.len();
                // The hand-off works on a fresh allocator and leaves nothing planned free.
                let mut fa = FrameAllocator::from_regions(&map);
                p.apply_to(&mut fa).unwrap();
                for f in fa.free_ranges() {
                    for c in &p.regions {
                        assert!(!f.overlaps(&c.range), "{f:?} still free inside {c:?}");
                    }
                }
            }
            Err(
                PlanError::NoStartPages { .. }
                | PlanError::NoRoomForPageTablePool { .. }
                | PlanError::NoRoomForCpuTable { .. },
            ) => failed += 1,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    // The generator exercises both outcomes.
    assert!(planned > 1000 && refused_all > 1000, "{planned} placed, {refused_all} refused");
    assert!(failed < 1500, "{failed} whole-plan failures");
}

#[test]
fn a_minimum_base_keeps_a_floating_instance_above_it_and_others_may_go_below() {
    let map = bios_map();
    let req = request(vec![
        InstanceRequest::new("linux", 128 * MIB).with_min_base(16 * MIB).with_low_memory(64 << 10),
        InstanceRequest::new("small", 4 * MIB),
    ]);
    let p = plan(&map, &[], &req).unwrap();
    check_plan(&map, &[], &req, &p);
    let linux = p.instance("linux").unwrap();
    assert_eq!(linux.start, 16 * MIB, "the first 2 MiB-aligned free address at or above 16 MiB");
    assert!(p.instance("small").unwrap().start < 16 * MIB, "no minimum for the other");
    let low = p.low_memory("linux").unwrap();
    assert!(low.start >= LOW_SLICE_START && low.end <= 0x9f000 && low.len() == 64 << 10, "{low:?}");
    // A minimum nothing fits above is a refusal that reports the largest run above it.
    let req = request(vec![InstanceRequest::new("high", 64 * MIB).with_min_base(0x2_0000_0000)]);
    let p = plan(&map, &[], &req).unwrap();
    assert!(matches!(p.refused[0].problem, InstanceProblem::NoRoom { .. }), "{:?}", p.refused);
}

#[test]
fn the_image_store_takes_what_is_left_and_never_an_instances_room() {
    // 64 MiB of RAM above 1 MiB: two 24 MiB instances and a 32 MiB store cannot all fit.
    let map = [
        Region::new(0, 0x9f000, RegionKind::Usable),
        Region::new(0x100000, 0x100000 + 64 * MIB, RegionKind::Usable),
    ];
    let mut req =
        request(vec![InstanceRequest::new("a", 24 * MIB), InstanceRequest::new("b", 24 * MIB)]);
    req.image_store = 32 * MIB;
    let p = plan(&map, &[], &req).unwrap();
    assert!(p.instance("a").is_some() && p.instance("b").is_some(), "{:?}", p.refused);
    assert_eq!(p.image_store(), None);
    let refusal = p.image_store_refused.as_ref().unwrap();
    assert_eq!(refusal.name, platform::partition::IMAGE_STORE_NAME);
    assert!(format!("{refusal}").contains("32 MiB"), "{refusal}");
    // With room, it is placed outside everything else.
    req.image_store = 8 * MIB;
    let p = plan(&map, &[], &req).unwrap();
    let store = p.image_store().unwrap();
    assert_eq!(store.len(), 8 * MIB);
    for c in p.carved().filter(|c| c.owner != Owner::ImageStore) {
        assert!(!c.range.overlaps(&store), "{c:?}");
    }
    assert_eq!(p.image_store_refused, None);
}
