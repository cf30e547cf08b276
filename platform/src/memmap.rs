//! The firmware memory map, in plain types.
//!
//! The bootloader hands the manager a list of physical regions, each `Usable`, `Bootloader`
//! (frames it used for the manager's image, stack, page tables, boot info and ramdisk) or a
//! firmware type it did not translate (a BIOS E820 type or a UEFI memory type). The manager
//! converts that list into [`Region`]s once, and every planner works on those.
//!
//! The text form of a region (`Display` / [`Region::parse_line`]) is what the manager prints at
//! boot. The same lines, captured from QEMU boots, are the test inputs under
//! `platform/tests/data/memmap/`, so a planner is tested against real firmware maps.
//!
//! # Invariants
//! A [`Region`] is a half-open range `[start, end)`; a map is not assumed sorted or
//! non-overlapping (firmware maps are not always either), so consumers that need that call
//! [`normalized_usable`].

use core::fmt;

/// 4 KiB, the x86_64 base page size (SDM Vol. 3A, "Paging", 4-Level Paging).
pub const PAGE_SIZE: u64 = bootproto::PAGE_SIZE;

/// What a physical region is used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionKind {
    /// Free RAM.
    Usable,
    /// Taken by the bootloader for the manager (image, stack, page tables, boot info, ramdisk).
    Bootloader,
    /// A BIOS E820 type other than 1 (ACPI 6.5, "System Address Map Interfaces", E820 types).
    Bios(u32),
    /// A UEFI memory type other than `EfiConventionalMemory` (UEFI 2.10, "EFI_BOOT_SERVICES.GetMemoryMap()").
    Uefi(u32),
}

/// One physical memory region, `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub start: u64,
    pub end: u64,
    pub kind: RegionKind,
}

impl Region {
    pub const fn new(start: u64, end: u64, kind: RegionKind) -> Self {
        Region { start, end, kind }
    }

    /// Length in bytes (0 for an inverted region, which firmware should never report).
    pub const fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Parses one line as printed by `Display`: `memmap 0x…-0x… usable|bootloader|bios(N)|uefi(N)`.
    /// Returns `None` for any other line, so a whole serial log can be fed through it.
    pub fn parse_line(line: &str) -> Option<Region> {
        let rest = line.trim().strip_prefix("memmap ")?;
        let mut parts = rest.split_whitespace();
        let range = parts.next()?;
        let kind = parts.next()?;
        let (start, end) = range.split_once('-')?;
        let start = parse_hex(start)?;
        let end = parse_hex(end)?;
        let kind = match kind {
            "usable" => RegionKind::Usable,
            "bootloader" => RegionKind::Bootloader,
            other => {
                let (name, num) = other.strip_suffix(')')?.split_once('(')?;
                let num: u32 = num.parse().ok()?;
                match name {
                    "bios" => RegionKind::Bios(num),
                    "uefi" => RegionKind::Uefi(num),
                    _ => return None,
                }
            }
        };
        Some(Region { start, end, kind })
    }
}

fn parse_hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.strip_prefix("0x")?, 16).ok()
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "memmap {:#018x}-{:#018x} ", self.start, self.end)?;
        match self.kind {
            RegionKind::Usable => f.write_str("usable"),
            RegionKind::Bootloader => f.write_str("bootloader"),
            RegionKind::Bios(n) => write!(f, "bios({n})"),
            RegionKind::Uefi(n) => write!(f, "uefi({n})"),
        }
    }
}

/// The firmware that produced a memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    Bios,
    Uefi,
    /// The map carried no firmware-specific type, so the firmware cannot be told.
    Unknown,
}

impl fmt::Display for Firmware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Firmware::Bios => "BIOS",
            Firmware::Uefi => "UEFI",
            Firmware::Unknown => "unknown",
        })
    }
}

/// Infers the firmware from the untranslated region types.
///
/// The bootloader passes no firmware flag, but it keeps the firmware's own type for every
/// region it does not understand: E820 types on BIOS, UEFI memory types on UEFI. A UEFI map
/// always has some (loader code, boot services, ACPI); a BIOS map almost always has a reserved
/// E820 range (the EBDA or the BIOS ROM shadow).
pub fn infer_firmware(regions: &[Region]) -> Firmware {
    let uefi = regions.iter().any(|r| matches!(r.kind, RegionKind::Uefi(_)));
    let bios = regions.iter().any(|r| matches!(r.kind, RegionKind::Bios(_)));
    match (bios, uefi) {
        (false, true) => Firmware::Uefi,
        (true, false) => Firmware::Bios,
        _ => Firmware::Unknown,
    }
}

/// Totals over a memory map, for the boot banner.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub regions: usize,
    pub usable_bytes: u64,
    pub bootloader_bytes: u64,
    /// Everything that is neither usable nor the bootloader's: firmware, ACPI, MMIO, holes the
    /// firmware described.
    pub reserved_bytes: u64,
    /// One past the highest usable byte.
    pub usable_top: u64,
    /// The part of `reserved_bytes` below `usable_top`: what firmware keeps out of RAM, as
    /// opposed to address-space windows above it (MMIO, QEMU's 12 GiB HyperTransport hole).
    pub reserved_below_top: u64,
}

pub fn summarize(regions: &[Region]) -> Summary {
    let mut s = Summary { regions: regions.len(), ..Summary::default() };
    let top =
        regions.iter().filter(|r| r.kind == RegionKind::Usable).map(|r| r.end).max().unwrap_or(0);
    for r in regions {
        if matches!(r.kind, RegionKind::Bios(_) | RegionKind::Uefi(_)) && r.start < top {
            let end = r.end.min(top);
            s.reserved_below_top = s.reserved_below_top.saturating_add(end - r.start);
        }
        match r.kind {
            RegionKind::Usable => {
                s.usable_bytes = s.usable_bytes.saturating_add(r.len());
                s.usable_top = s.usable_top.max(r.end);
            }
            RegionKind::Bootloader => {
                s.bootloader_bytes = s.bootloader_bytes.saturating_add(r.len())
            }
            RegionKind::Bios(_) | RegionKind::Uefi(_) => {
                s.reserved_bytes = s.reserved_bytes.saturating_add(r.len())
            }
        }
    }
    s
}

/// A half-open physical range `[start, end)` with no kind attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Range {
    pub start: u64,
    pub end: u64,
}

impl Range {
    pub const fn new(start: u64, end: u64) -> Self {
        Range { start, end }
    }

    pub const fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    pub const fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    pub const fn overlaps(&self, other: &Range) -> bool {
        self.start < other.end && other.start < self.end
    }

    pub const fn contains_range(&self, other: &Range) -> bool {
        self.start <= other.start && other.end <= self.end
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}..{:#x}", self.start, self.end)
    }
}

/// Rounds `x` up to a multiple of `align` (a power of two); `None` on overflow.
pub const fn align_up(x: u64, align: u64) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    match x.checked_add(align - 1) {
        Some(v) => Some(v & !(align - 1)),
        None => None,
    }
}

/// Rounds `x` down to a multiple of `align` (a power of two).
pub const fn align_down(x: u64, align: u64) -> u64 {
    x & !(align - 1)
}

/// The usable memory of a map as sorted, disjoint, page-aligned ranges.
///
/// Usable bytes that any non-usable region also claims are dropped (a firmware map that
/// reports the same byte twice is trusted for the more restrictive claim). Partial pages are
/// dropped. Returns the number of ranges written into `out`; ranges that do not fit are
/// dropped from the top (highest addresses), and the caller learns it from the return value
/// being `out.len()`.
pub fn normalized_usable(regions: &[Region], out: &mut [Range]) -> usize {
    let mut n = 0;
    // Walk usable regions in address order without sorting the input: repeatedly pick the
    // lowest usable start above the cursor. O(n^2) over a map of at most a few hundred entries.
    let mut cursor = 0u64;
    loop {
        let next = regions
            .iter()
            .filter(|r| r.kind == RegionKind::Usable && r.end > cursor && !r.is_empty())
            .min_by_key(|r| r.start.max(cursor));
        let Some(r) = next else { break };
        let start = r.start.max(cursor);
        // Extend across touching or overlapping usable regions.
        let mut end = r.end;
        loop {
            let more = regions
                .iter()
                .filter(|o| o.kind == RegionKind::Usable && o.start <= end && o.end > end)
                .map(|o| o.end)
                .max();
            match more {
                Some(e) => end = e,
                None => break,
            }
        }
        cursor = end;
        // Cut out anything a non-usable region claims inside [start, end). Each step moves
        // `piece_start` strictly forward (a blocker ends above it), so this terminates.
        let mut piece_start = start;
        while piece_start < end {
            let blocker = regions
                .iter()
                .filter(|o| o.kind != RegionKind::Usable && o.start < end && o.end > piece_start)
                .min_by_key(|o| o.start);
            let piece_end = match blocker {
                Some(b) => b.start.max(piece_start),
                None => end,
            };
            if let Some(s) = align_up(piece_start, PAGE_SIZE) {
                let e = align_down(piece_end, PAGE_SIZE);
                if s < e {
                    if n == out.len() {
                        return n;
                    }
                    out[n] = Range::new(s, e);
                    n += 1;
                }
            }
            match blocker {
                Some(b) => piece_start = b.end,
                None => break,
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: RegionKind = RegionKind::Usable;

    #[test]
    fn display_and_parse_round_trip() {
        for kind in [U, RegionKind::Bootloader, RegionKind::Bios(2), RegionKind::Uefi(7)] {
            let r = Region::new(0x1000, 0x9f000, kind);
            let line = r.to_string();
            assert_eq!(Region::parse_line(&line), Some(r), "{line}");
        }
        assert_eq!(Region::parse_line("[INFO] something else"), None);
        assert_eq!(Region::parse_line("memmap 0x0-0x10 weird(3)"), None);
    }

    #[test]
    fn firmware_is_inferred_from_untranslated_types() {
        let bios = [Region::new(0, 0x9fc00, U), Region::new(0x9fc00, 0xa0000, RegionKind::Bios(2))];
        let uefi = [Region::new(0, 0x9f000, U), Region::new(0x9f000, 0xa0000, RegionKind::Uefi(4))];
        assert_eq!(infer_firmware(&bios), Firmware::Bios);
        assert_eq!(infer_firmware(&uefi), Firmware::Uefi);
        assert_eq!(infer_firmware(&[Region::new(0, 0x1000, U)]), Firmware::Unknown);
    }

    #[test]
    fn summary_counts_each_kind() {
        let map = [
            Region::new(0, 0x9fc00, U),
            Region::new(0x9fc00, 0xa0000, RegionKind::Bios(2)),
            Region::new(0x100000, 0x200000, RegionKind::Bootloader),
            Region::new(0x200000, 0x1000000, U),
        ];
        let s = summarize(&map);
        assert_eq!(s.regions, 4);
        assert_eq!(s.usable_bytes, 0x9fc00 + 0xe00000);
        assert_eq!(s.reserved_bytes, 0x400);
        assert_eq!(s.bootloader_bytes, 0x100000);
        assert_eq!(s.usable_top, 0x1000000);
        assert_eq!(s.reserved_below_top, 0x400);
        let with_hole = [map[0], Region::new(0xfd_0000_0000, 0x100_0000_0000, RegionKind::Bios(2))];
        assert_eq!(summarize(&with_hole).reserved_below_top, 0, "windows above RAM are not RAM");
    }

    #[test]
    fn normalized_usable_sorts_merges_aligns_and_cuts() {
        let map = [
            Region::new(0x200000, 0x300000, U),
            Region::new(0x100800, 0x180000, U), // unaligned start
            Region::new(0x180000, 0x200000, U), // touches the previous one and the first
            Region::new(0x250000, 0x251000, RegionKind::Bios(2)), // a hole reported inside usable
            Region::new(0x0, 0x1000, U),
        ];
        let mut out = [Range::new(0, 0); 8];
        let n = normalized_usable(&map, &mut out);
        assert_eq!(
            &out[..n],
            &[
                Range::new(0x0, 0x1000),
                Range::new(0x101000, 0x250000),
                Range::new(0x251000, 0x300000)
            ]
        );
    }

    #[test]
    fn normalized_usable_reports_truncation_by_filling_out() {
        let map = [
            Region::new(0, 0x1000, U),
            Region::new(0x2000, 0x3000, U),
            Region::new(0x4000, 0x5000, U),
        ];
        let mut out = [Range::new(0, 0); 2];
        assert_eq!(normalized_usable(&map, &mut out), 2);
        assert_eq!(out[1], Range::new(0x2000, 0x3000));
    }

    #[test]
    fn blocker_covering_everything_leaves_nothing() {
        let map = [Region::new(0x1000, 0x3000, U), Region::new(0, 0x10000, RegionKind::Bootloader)];
        let mut out = [Range::new(0, 0); 4];
        assert_eq!(normalized_usable(&map, &mut out), 0);
    }
}
