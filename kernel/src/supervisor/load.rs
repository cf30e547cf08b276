//! Loading one instance: image → region, shared pages, boot info, page tables, trampoline page.
//!
//! Nothing is written before the loader's plan accepted the image against the instance's load
//! area (its region minus the stack and the shared pages at the top), so a refused image
//! leaves the region untouched. Page-table frames come from the plan's page-table pool and are
//! recorded on the instance, so stopping it gives them back.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::mem::{offset_of, size_of};

use bootproto::layout;
use bootproto::{BootInfo, ConsoleRing};
use platform::bundle::Parsed;
use platform::frames::FrameAllocator;
use platform::memmap::Range;
use platform::pagetable::{Mapper, Perms};

use super::Instance;
use crate::physmem::{PhysWindow, TableFrames};
use crate::time;

/// What the loader needs to know about the machine.
pub struct LoadContext<'a> {
    pub bundle_bytes: &'a [u8],
    pub parsed: &'a Parsed,
    pub code: &'a trampoline::Code<'static>,
    pub rsdp: u64,
    pub nx: bool,
}

/// Loads `inst` into its region and writes its trampoline page; records the page-table frames
/// it took from `pool` in `inst.tables`.
pub fn prepare(
    inst: &mut Instance,
    ctx: &LoadContext<'_>,
    pool: &mut FrameAllocator,
    mut window: PhysWindow,
) -> Result<(), String> {
    let (Some(region), Some(page)) = (inst.region, inst.tramp_page) else {
        return Err("it has no region or start page".into());
    };
    let image =
        ctx.parsed.file(ctx.bundle_bytes, inst.spec.file).map_err(|e| format!("bundle: {e}"))?;
    let shared = layout::shared(region.start, region.len(), layout::DEFAULT_STACK_BYTES)
        .ok_or_else(|| {
            format!(
                "its region of {} KiB cannot hold a stack and the shared pages",
                region.len() >> 10
            )
        })?;
    let stack_bottom = shared.stack_top - layout::DEFAULT_STACK_BYTES;
    let load_region = loader::Region::new(region.start, stack_bottom - region.start);
    let plan = loader::plan(image, load_region).map_err(|e| format!("image refused: {e}"))?;
    loader::apply(&plan, image, &mut window).map_err(|e| format!("loading failed: {e}"))?;
    window.fill_bytes(stack_bottom, region.end - stack_bottom, 0);

    // Checksum the (first) executable segment as loaded, for the payload to verify.
    let (ck_base, ck_len, ck) = match plan.segments().iter().find(|s| s.flags.execute) {
        Some(s) => {
            let r = s.phys_range();
            let mut buf = alloc::vec![0u8; (r.end - r.start) as usize];
            window.read_bytes(r.start, &mut buf);
            (r.start, r.end - r.start, bootproto::fnv1a64(&buf))
        }
        None => (0, 0, 0),
    };

    let mut info = BootInfo {
        magic: bootproto::BOOT_INFO_MAGIC,
        version: bootproto::PROTOCOL_VERSION,
        size: size_of::<BootInfo>() as u32,
        name: [0; bootproto::NAME_LEN],
        apic_id: inst.apic_id.unwrap_or(0),
        _reserved0: 0,
        region_base: region.start,
        region_size: region.len(),
        checksum_base: ck_base,
        checksum_len: ck_len,
        checksum: ck,
        args: [0; bootproto::ARGS_LEN],
        console: shared.console,
        status: shared.status,
        tsc_hz: time::tsc_hz(),
        acpi_rsdp: ctx.rsdp,
    };
    bootproto::fill_str(&inst.spec.name, &mut info.name);
    bootproto::fill_str(&inst.spec.args, &mut info.args);
    let info_ptr = core::ptr::addr_of!(info).cast::<u8>();
    // SAFETY: BootInfo is repr(C) and every byte belongs to a field (its padding is an explicit
    // field), so viewing the initialized local as bytes is sound.
    let info_bytes = unsafe { core::slice::from_raw_parts(info_ptr, size_of::<BootInfo>()) };
    window.write_bytes(shared.boot_info, info_bytes);
    window.write_u32(
        shared.console + offset_of!(ConsoleRing, capacity) as u64,
        layout::CONSOLE_CAPACITY,
    );

    // Page tables: the image's mappings with their permissions, the rest of the region RW/NX,
    // the trampoline page (its code runs after paging is on; its IDT/GDT/TSS stay in use).
    let mut tables = TableFrames { window, pool, used: Vec::new() };
    let built = build_tables(&mut tables, &plan, region, page, ctx.nx);
    inst.tables = core::mem::take(&mut tables.used);
    let (cr3, table_count) = built.map_err(|e| format!("page tables: {e}"))?;

    let entry = plan.entry().vaddr;
    let target = trampoline::Target {
        cr3,
        entry,
        stack_top: shared.stack_top,
        boot_info: shared.boot_info,
        status_block: shared.status,
        nxe: ctx.nx,
    };
    let bytes =
        trampoline::build_page(ctx.code, page, &target).map_err(|e| format!("trampoline: {e}"))?;
    window.write_bytes(page, &bytes);
    inst.entry = entry;
    inst.shared = Some(shared);
    log::info!(
        "instance '{}': loaded {} bytes ({} segments, {} relocations) into {:#x}..{:#x}, entry {:#x}, {} page tables, start page {:#x}",
        inst.name,
        plan.bytes_to_copy(),
        plan.segments().len(),
        plan.relocations().len(),
        region.start,
        region.end,
        entry,
        table_count,
        page
    );
    Ok(())
}

fn build_tables(
    tables: &mut TableFrames<'_>,
    plan: &loader::LoadPlan,
    region: Range,
    page: u64,
    nx: bool,
) -> Result<(u64, usize), platform::pagetable::PageTableError> {
    let mut mapper = Mapper::new(tables, nx)?;
    for m in plan.mappings() {
        let perms = Perms { writable: m.flags.write, executable: m.flags.execute };
        mapper.map(m.vaddr, m.paddr, m.size, perms)?;
    }
    mapper.map_unmapped(region.start, region.start, region.len(), Perms::RW)?;
    mapper.map(page, page, 4096, Perms::RWX)?;
    Ok((mapper.root(), mapper.table_count()))
}

/// Zeroes the instance's region and start page, then reads the region back to prove it.
/// Returns the number of bytes verified zero, or the first non-zero address.
pub fn scrub(inst: &Instance, window: PhysWindow) -> Result<u64, u64> {
    let Some(region) = inst.region else { return Ok(0) };
    window.fill_bytes(region.start, region.len(), 0);
    if let Some(page) = inst.tramp_page {
        window.fill_bytes(page, 4096, 0);
    }
    let mut buf = [0u8; 4096];
    let mut at = region.start;
    while at < region.end {
        let n = (region.end - at).min(buf.len() as u64) as usize;
        window.read_bytes(at, &mut buf[..n]);
        // Word-wide first (fast under emulation), byte-wide only to name the culprit.
        let dirty = buf[..n].chunks(8).any(|w| w.iter().fold(0u8, |a, &b| a | b) != 0);
        if dirty {
            let i = buf[..n].iter().position(|&b| b != 0).unwrap_or(0);
            return Err(at + i as u64);
        }
        at += n as u64;
    }
    Ok(region.len())
}
