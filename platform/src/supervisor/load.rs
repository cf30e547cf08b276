//! Loading one instance: image → region, boot info, page tables, CPU slots and CPU table
//! entries.
//!
//! Nothing is written before the loader's plan accepted the image against the instance's load
//! area ([`bootproto::layout::Layout::load_area`]: the region minus the shared pages and each
//! CPU's slot and stack), so a refused image leaves the region untouched. A region known to be
//! zero (scrubbed and verified at the last stop) is not zeroed again. Page-table frames come
//! from the plan's pool and are recorded, so stopping the instance gives them back. Nothing
//! here allocates in proportion to the image: the checksum is computed in page-sized pieces.

use alloc::vec::Vec;
use core::mem::{offset_of, size_of};

use bootproto::layout::{self, Layout};
use bootproto::{info_page, BootInfo, ConsoleRing};

use crate::frames::FrameAllocator;
use crate::memmap::{Range, PAGE_SIZE};
use crate::pagetable::{Mapper, PageTableError, Perms, TableMemory};

use super::error::StartError;
use super::events::Event;
use super::images::pick;
use super::instance::Loaded;
use super::machine::{LoaderMemory, Machine, MemError, Phys};
use super::Supervisor;

/// Page-table frames for one instance, from the plan's page-table pool, written through the
/// supervisor's physical memory.
pub(super) struct TableFrames<'a, P: Phys> {
    pub(super) phys: &'a mut P,
    pub(super) pool: &'a mut FrameAllocator,
    /// Frames handed out, so a stopped instance gives them back.
    pub(super) used: Vec<u64>,
    /// The first memory error (the trait's reads and writes cannot return one).
    pub(super) error: Option<MemError>,
}

impl<P: Phys> TableMemory for TableFrames<'_, P> {
    fn alloc_table(&mut self) -> Result<u64, PageTableError> {
        let f = self.pool.allocate_frame().map_err(|_| PageTableError::OutOfFrames)?;
        self.used.push(f);
        if let Err(e) = self.phys.fill(f, PAGE_SIZE, 0) {
            self.error.get_or_insert(e);
            return Err(PageTableError::OutOfFrames);
        }
        Ok(f)
    }

    fn read_entry(&self, table: u64, index: usize) -> u64 {
        self.phys.read_u64(table + index as u64 * 8).unwrap_or(0)
    }

    fn write_entry(&mut self, table: u64, index: usize, entry: u64) {
        if let Err(e) = self.phys.write(table + index as u64 * 8, &entry.to_le_bytes()) {
            self.error.get_or_insert(e);
        }
    }
}

impl<'a, M: Machine> Supervisor<'a, M> {
    /// Loads instance `i` into its region and writes its slots and CPU table entries (armed).
    /// Returns the bytes written for the image (copied and zeroed).
    pub(super) fn load(&mut self, i: usize) -> Result<u64, StartError> {
        if self.instances[i].spec.protocol == crate::bundle::Protocol::Linux {
            return self.load_linux(i);
        }
        let (Some(res), Some(pages), true) =
            (self.instances[i].resources.clone(), self.pages, self.pool.is_some())
        else {
            return Err(StartError::Transition(crate::lifecycle::TransitionError::Refused));
        };
        let region = res.region;
        let source = self.instances[i].image;
        let bundle = self.bundle_image(i)?;
        let image = pick(source, bundle, &self.store)?;
        let (layout, plan) = plan_native(region, res.cpus.len() as u64, image)?;
        // Its channels: headers written once, its side's epoch moved on, mapped below.
        let channel_infos = self.prepare_channels(i)?;
        let channels_regions = self.channel_regions(i);

        // The image, then the rest of the region (shared pages, slots, stacks) zeroed, unless
        // the region is known to be zero already.
        let zeroed_region = self.instances[i].zeroed;
        let image = pick(source, bundle, &self.store)?;
        let mut mem = LoaderMemory(&mut self.m);
        let mut zeroed = if zeroed_region {
            loader::apply_to_zeroed(&plan, image, &mut mem)
        } else {
            loader::apply(&plan, image, &mut mem)
        }
        .map_err(StartError::Apply)?;
        if !zeroed_region {
            let reserved = layout.end() - layout.reserved_start;
            self.m.fill(layout.reserved_start, reserved, 0).map_err(StartError::Memory)?;
            zeroed += reserved;
        }
        self.instances[i].zeroed = false;

        // Checksum the first executable segment as loaded, in pieces.
        let (ck_base, ck_len, checksum) = match plan.segments().iter().find(|s| s.flags.execute) {
            Some(s) => {
                let r = s.phys_range();
                (r.start, r.end - r.start, self.checksum(r.start, r.end)?)
            }
            None => (0, 0, 0),
        };

        // Page tables: the image's mappings with their permissions, the rest of the region
        // RW/NX, the start page RX (its code runs after paging is on, and the early IDT's stubs
        // live there), and the local APIC's page uncached.
        let Some(pool) = self.pool.as_mut() else {
            return Err(StartError::Transition(crate::lifecycle::TransitionError::Refused));
        };
        let channel_regions = channels_regions.clone();
        let mut frames = TableFrames { phys: &mut self.m, pool, used: Vec::new(), error: None };
        let built = build_tables(
            &mut frames,
            &plan,
            region,
            &channel_regions,
            pages.start_page,
            &self.facts,
        );
        let (used, mem_error) = (core::mem::take(&mut frames.used), frames.error);
        let give_back = |pool: &mut FrameAllocator, used: &[u64]| {
            for &f in used {
                let _ = pool.free(Range::new(f, f + PAGE_SIZE));
            }
        };
        let (cr3, tables) = match (built, mem_error) {
            (_, Some(e)) => {
                give_back(pool, &used);
                return Err(StartError::Memory(e));
            }
            (Err(e), None) => {
                give_back(pool, &used);
                return Err(StartError::Tables(e));
            }
            (Ok(t), None) => t,
        };

        let entry = plan.entry().vaddr;
        let result = self.write_start_data(
            i,
            &layout,
            cr3,
            entry,
            (ck_base, ck_len, checksum),
            &channel_infos,
        );
        if let Err(e) = result {
            if let Some(pool) = self.pool.as_mut() {
                give_back(pool, &used);
            }
            return Err(e);
        }
        let inst = &mut self.instances[i];
        inst.entry = entry;
        inst.loaded = Some(Loaded { layout, tables: used, cr3 });
        self.m.event(&Event::Loaded {
            name: &self.instances[i].name,
            bytes: plan.bytes_to_copy(),
            zeroed,
            segments: plan.segments().len(),
            relocations: plan.relocations().len(),
            region,
            entry,
            tables,
            cpus: &res.cpus,
        });
        Ok(plan.bytes_to_copy() + zeroed)
    }

    /// The bytes of bundle file `index`. Its checksum is verified the first time only: the
    /// bundle is read-only memory, and hashing a multi-megabyte image on every restart (or
    /// for each of hundreds of instances sharing it) would be most of the cost of a load.
    pub(super) fn image(&mut self, index: u32) -> Result<&'a [u8], crate::bundle::FileError> {
        let verified = self.verified.get(index as usize).copied().unwrap_or(false);
        let bytes = if verified {
            self.parsed.file_unverified(self.bundle, index)?
        } else {
            self.parsed.file(self.bundle, index)?
        };
        if let Some(v) = self.verified.get_mut(index as usize) {
            *v = true;
        }
        Ok(bytes)
    }

    /// FNV-1a 64 over `[start, end)` of physical memory, a page at a time.
    fn checksum(&self, start: u64, end: u64) -> Result<u64, StartError> {
        let mut buf = [0u8; PAGE_SIZE as usize];
        let mut h = bootproto::FNV1A64_START;
        let mut at = start;
        while at < end {
            let n = (end - at).min(PAGE_SIZE) as usize;
            self.m.read(at, &mut buf[..n]).map_err(StartError::Memory)?;
            h = bootproto::fnv1a64_update(h, &buf[..n]);
            at += n as u64;
        }
        Ok(h)
    }

    /// The boot info, the console ring's capacity, each CPU's slot and its CPU table entry.
    fn write_start_data(
        &mut self,
        i: usize,
        layout: &Layout,
        cr3: u64,
        entry: u64,
        (checksum_base, checksum_len, checksum): (u64, u64, u64),
        channels: &[bootproto::ChannelInfo],
    ) -> Result<(), StartError> {
        let (Some(res), Some(pages)) = (self.instances[i].resources.clone(), self.pages) else {
            return Err(StartError::Transition(crate::lifecycle::TransitionError::Refused));
        };
        let spec = &self.instances[i].spec;
        let mut info = BootInfo {
            magic: bootproto::BOOT_INFO_MAGIC,
            version: spec.protocol_version,
            size: match spec.protocol_version {
                1 => bootproto::BOOT_INFO_V1_SIZE,
                _ => size_of::<BootInfo>() as u32,
            },
            name: [0; bootproto::NAME_LEN],
            apic_id: res.cpus.first().copied().unwrap_or(0),
            _reserved0: 0,
            region_base: layout.base,
            region_size: layout.size,
            checksum_base,
            checksum_len,
            checksum,
            args: [0; bootproto::ARGS_LEN],
            console: layout.console,
            status: layout.status,
            tsc_hz: self.facts.tsc_hz,
            acpi_rsdp: self.facts.rsdp,
            cpu_count: res.cpus.len() as u32,
            _reserved1: 0,
            cpus: layout.boot_info + info_page::CPUS_OFFSET,
            lapic_base: self.facts.lapic_base,
            lapic_timer_hz: self.facts.lapic_timer_hz,
            acpi_view: 0,
            channel_count: channels.len() as u32,
            _reserved2: 0,
            channels: if channels.is_empty() {
                0
            } else {
                layout.boot_info + info_page::CHANNELS_OFFSET
            },
        };
        bootproto::fill_str(&spec.name, &mut info.name);
        bootproto::fill_str(&spec.args, &mut info.args);
        let mem = |e| StartError::Memory(e);
        self.m.write(layout.boot_info, &info.encode()).map_err(mem)?;
        let mut ids = [0u8; 4 * info_page::MAX_CPUS];
        for (k, id) in res.cpus.iter().enumerate().take(info_page::MAX_CPUS) {
            ids[4 * k..4 * k + 4].copy_from_slice(&id.to_le_bytes());
        }
        let ids = &ids[..4 * res.cpus.len().min(info_page::MAX_CPUS)];
        self.m.write(layout.boot_info + info_page::CPUS_OFFSET, ids).map_err(mem)?;
        for (k, c) in channels.iter().enumerate() {
            let at = layout.boot_info
                + info_page::CHANNELS_OFFSET
                + (k * size_of::<bootproto::ChannelInfo>()) as u64;
            self.m.write(at, &c.encode()).map_err(mem)?;
        }
        self.m
            .write_u32(
                layout.console + offset_of!(ConsoleRing, capacity) as u64,
                layout::CONSOLE_CAPACITY,
            )
            .map_err(mem)?;
        for (k, &apic_id) in res.cpus.iter().enumerate() {
            let slot = layout.slot(k as u64);
            let target = trampoline::SlotTarget {
                entry,
                stack_top: layout.stack_top(k as u64),
                arg0: layout.boot_info,
                arg1: k as u64,
                status_block: layout.status,
                selectors: trampoline::Selectors::Multikernel,
            };
            let bytes = trampoline::build_slot(&self.code, pages.start_page, slot, &target)
                .map_err(StartError::Slot)?;
            self.m.write(slot, &bytes).map_err(mem)?;
            let e = trampoline::cpu_entry(apic_id, cr3, slot).map_err(StartError::Slot)?;
            self.m.write(entry_address(&pages, res.table_index + k), &e).map_err(mem)?;
        }
        Ok(())
    }
}

/// Where a native (multikernel or `none`) image goes in `region` on `cpus` CPUs: the region's
/// layout and the loader's plan against its load area. The one rule the boot, a pushed
/// image's check and `cargo xtask push` on the host all apply.
pub fn plan_native(
    region: Range,
    cpus: u64,
    image: &[u8],
) -> Result<(Layout, loader::LoadPlan), StartError> {
    let layout = Layout::new(region.start, region.len(), cpus)
        .ok_or(StartError::Layout { region: region.len(), cpus })?;
    let (load_base, load_len) = layout.load_area();
    let plan =
        loader::plan(image, loader::Region::new(load_base, load_len)).map_err(StartError::Image)?;
    Ok((layout, plan))
}

/// The physical address of CPU table entry `index`.
pub(super) fn entry_address(pages: &super::StartPages, index: usize) -> u64 {
    pages.table + index as u64 * core::mem::size_of::<trampoline::CpuEntry>() as u64
}

fn build_tables<T: TableMemory>(
    tables: &mut T,
    plan: &loader::LoadPlan,
    region: Range,
    channels: &[Range],
    start_page: u64,
    facts: &super::Facts,
) -> Result<(u64, usize), PageTableError> {
    let mut mapper = Mapper::new(tables, facts.nx)?;
    for m in plan.mappings() {
        mapper.map(m.vaddr, m.paddr, m.size, Perms::segment(m.flags.write, m.flags.execute))?;
    }
    mapper.map_unmapped(region.start, region.start, region.len(), Perms::RW)?;
    for c in channels {
        mapper.map(c.start, c.start, c.len(), Perms::RW)?;
    }
    mapper.map(start_page, start_page, PAGE_SIZE, Perms::RX)?;
    if facts.lapic_base != 0 {
        mapper.map_unmapped(facts.lapic_base, facts.lapic_base, PAGE_SIZE, Perms::MMIO)?;
    }
    Ok((mapper.root(), mapper.table_count()))
}
