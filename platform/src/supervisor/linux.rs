//! Loading a Linux instance (`protocol = "linux"`): the bzImage's protected-mode kernel and the
//! initrd into the region, the command line, a private ACPI view, the zero page with an e820
//! map of only the instance's memory, page tables, and the boot CPU's slot.
//!
//! Only the instance's first CPU is started by the manager; its other CPUs are parked (INIT,
//! then the parking page), where Linux's own INIT-SIPI-SIPI finds them (see `start.rs`). The
//! image is copied from the bundle on every start: Linux decompresses over it.
//! What goes where is [`crate::linuxboot`]; the zero page is [`crate::bzimage`].

use alloc::vec::Vec;
use core::mem::offset_of;

use bootproto::layout::{self, PAGE};
use bootproto::ConsoleRing;

use crate::acpiview::{self, ViewSpec};
use crate::bzimage::{self, BootParams};
use crate::linuxboot::{self, LinuxLayout};
use crate::memmap::Range;
use crate::pagetable::{Mapper, PageTableError, Perms, TableMemory};

use super::error::StartError;
use super::events::Event;
use super::instance::Loaded;
use super::load::{entry_address, TableFrames};
use super::machine::Machine;
use super::Supervisor;

/// The OEM ID of every table the manager makes.
pub const OEM_ID: [u8; 6] = *b"MKRNL ";

impl<M: Machine> Supervisor<'_, M> {
    /// Loads Linux instance `i`; returns the bytes written (copied and zeroed).
    pub(super) fn load_linux(&mut self, i: usize) -> Result<u64, StartError> {
        let (Some(res), Some(pages), true) =
            (self.instances[i].resources.clone(), self.pages, self.pool.is_some())
        else {
            return Err(StartError::Transition(crate::lifecycle::TransitionError::Refused));
        };
        let spec = self.instances[i].spec.clone();
        let initrd: &[u8] = match spec.initrd {
            Some(f) => self.image(f).map_err(StartError::Bundle)?,
            None => &[],
        };
        let source = self.instances[i].image;
        let bundle = self.bundle_image(i)?;
        let image = super::images::pick(source, bundle, &self.store)?;
        let kernel = bzimage::parse(image).map_err(StartError::BzImage)?;
        let region = res.region;
        let uarts: Vec<u16> = spec.devices.iter().map(|d| d.io_base()).collect();
        let view_spec = self.view_spec(&res.cpus, &uarts);
        let (layout, placed, mut cmdline) =
            self.plan_linux(&res, &spec, &view_spec, &kernel, initrd.len() as u64)?;
        cmdline.push(0);
        let view = acpiview::build(&view_spec, layout.acpi)
            .map_err(|e| StartError::Linux(linuxboot::LinuxError::Acpi(e)))?;
        let e820 = layout.e820(res.low);
        let params = BootParams {
            cmdline_addr: layout.cmdline,
            initrd: placed.initrd,
            rsdp: view.rsdp_address(),
            e820: &e820,
        };
        let zero_page =
            bzimage::zero_page(image, &kernel, &params).map_err(StartError::ZeroPage)?;

        // Nothing was written yet; now the region: zeroed unless known to be, the kernel, the
        // initrd, then the boot data.
        let mem = StartError::Memory;
        let mut written = 0u64;
        if !self.instances[i].zeroed {
            self.m.fill(region.start, region.len(), 0).map_err(mem)?;
            written += region.len();
        }
        self.instances[i].zeroed = false;
        let (pm_at, pm_len) = kernel.protected_mode;
        let pm = image.get(pm_at..pm_at + pm_len).unwrap_or(&[]);
        self.m.write(placed.load, pm).map_err(mem)?;
        if !initrd.is_empty() {
            self.m.write(placed.initrd.0, initrd).map_err(mem)?;
        }
        self.m.write(layout.cmdline, &cmdline).map_err(mem)?;
        self.m.write(layout.acpi, &view.bytes).map_err(mem)?;
        self.m.write(layout.zero_page(), &zero_page).map_err(mem)?;
        let ring_capacity = layout.native.console + offset_of!(ConsoleRing, capacity) as u64;
        self.m.write_u32(ring_capacity, layout::CONSOLE_CAPACITY).map_err(mem)?;
        written += (pm.len() + initrd.len() + cmdline.len() + view.bytes.len()) as u64 + PAGE;

        // Page tables: the whole region executable (the decompressor runs in its window and
        // writes what it runs), the start page, the local APIC uncached.
        let Some(pool) = self.pool.as_mut() else {
            return Err(StartError::Transition(crate::lifecycle::TransitionError::Refused));
        };
        let mut frames = TableFrames { phys: &mut self.m, pool, used: Vec::new(), error: None };
        let built = linux_tables(&mut frames, region, pages.start_page, &self.facts);
        let (used, mem_error) = (core::mem::take(&mut frames.used), frames.error);
        let result = match (built, mem_error) {
            (_, Some(e)) => Err(StartError::Memory(e)),
            (Err(e), None) => Err(StartError::Tables(e)),
            (Ok(t), None) => Ok(t),
        };
        let (cr3, tables) = match result {
            Ok(t) => t,
            Err(e) => {
                if let Some(pool) = self.pool.as_mut() {
                    for &f in &used {
                        let _ = pool.free(Range::new(f, f + PAGE));
                    }
                }
                return Err(e);
            }
        };

        // The boot CPU's slot and table entry: Linux's selectors, RSI = the zero page, no stack
        // (the decompressor sets its own), faults before Linux's IDT recorded in the status page.
        let slot = layout.native.slot(0);
        let target = trampoline::SlotTarget {
            entry: placed.entry(),
            stack_top: 0,
            arg0: 0,
            arg1: layout.zero_page(),
            status_block: layout.native.status,
            selectors: trampoline::Selectors::Linux,
        };
        let start = trampoline::build_slot(&self.code, pages.start_page, slot, &target)
            .and_then(|bytes| {
                let boot_cpu = res.cpus.first().copied().unwrap_or(0);
                Ok((bytes, trampoline::cpu_entry(boot_cpu, cr3, slot)?))
            })
            .map_err(StartError::Slot);
        let written_slot = start.and_then(|(bytes, entry)| {
            self.m.write(slot, &bytes).map_err(mem)?;
            self.m.write(entry_address(&pages, res.table_index), &entry).map_err(mem)
        });
        if let Err(e) = written_slot {
            if let Some(pool) = self.pool.as_mut() {
                for &f in &used {
                    let _ = pool.free(Range::new(f, f + PAGE));
                }
            }
            return Err(e);
        }
        let inst = &mut self.instances[i];
        inst.entry = placed.entry();
        inst.loaded = Some(Loaded { layout: layout.native, tables: used, cr3 });
        self.m.event(&Event::LoadedLinux {
            name: &self.instances[i].name,
            kernel: placed.load,
            init_size: kernel.init_size,
            initrd: placed.initrd,
            acpi: layout.acpi,
            region,
            low: res.low,
            cpus: &res.cpus,
            tables,
        });
        Ok(written)
    }
}

impl<M: Machine> Supervisor<'_, M> {
    /// The checks a pushed bzImage must pass before it is kept for Linux instance `i`: the
    /// setup header, the placement in the region (with the bundle's initrd), the command line
    /// length. The same functions [`Self::load_linux`] runs, without writing anything.
    pub(super) fn check_linux_image(&mut self, i: usize, id: u32) -> Result<(), StartError> {
        let Some(res) = self.instances[i].resources.clone() else {
            return Err(StartError::Transition(crate::lifecycle::TransitionError::Refused));
        };
        let spec = self.instances[i].spec.clone();
        let initrd_len = match spec.initrd {
            Some(f) => self.image(f).map_err(StartError::Bundle)?.len() as u64,
            None => 0,
        };
        let image = super::images::stored_bytes(&self.store, id)
            .ok_or(StartError::StoredImageGone { id })?;
        let kernel = bzimage::parse(image).map_err(StartError::BzImage)?;
        let uarts: Vec<u16> = spec.devices.iter().map(|d| d.io_base()).collect();
        let view_spec = self.view_spec(&res.cpus, &uarts);
        self.plan_linux(&res, &spec, &view_spec, &kernel, initrd_len).map(|_| ())
    }

    /// The private ACPI view a Linux instance on `cpus` with `uarts` gets.
    fn view_spec<'s>(&self, cpus: &'s [u32], uarts: &'s [u16]) -> ViewSpec<'s> {
        ViewSpec { cpus, uarts, lapic_base: self.facts.lapic_base, oem_id: OEM_ID }
    }

    /// What loading Linux decides before writing anything, shared by [`Self::load_linux`] and
    /// [`Self::check_linux_image`]: the region's layout around the ACPI view, where the kernel
    /// and the initrd go, and the command line (without its NUL), checked against the kernel's
    /// limit.
    fn plan_linux(
        &self,
        res: &super::Resources,
        spec: &crate::bundle::Instance,
        view_spec: &ViewSpec<'_>,
        kernel: &bzimage::Kernel,
        initrd_len: u64,
    ) -> Result<(LinuxLayout, bzimage::Placement, Vec<u8>), StartError> {
        let linux = StartError::Linux;
        let acpi_len =
            acpiview::size(view_spec).map_err(|e| linux(linuxboot::LinuxError::Acpi(e)))?;
        let region = res.region;
        let layout = LinuxLayout::new(region.start, region.len(), acpi_len as u64)
            .ok_or(linux(linuxboot::LinuxError::RegionTooSmall { memory: region.len() }))?;
        let placed = bzimage::place(kernel, region.start, layout.kernel_limit(), initrd_len)
            .map_err(|e| linux(linuxboot::LinuxError::Place(e)))?;
        let defaults = linuxboot::default_cmdline(
            spec.devices.first().copied(),
            self.facts.tsc_hz / 1000,
            initrd_len > 0,
            layout.native.status,
        );
        let cmdline = linuxboot::cmdline(&defaults, &spec.cmdline).into_bytes();
        if cmdline.len() > kernel.cmdline_size as usize {
            let len = cmdline.len();
            return Err(linux(linuxboot::LinuxError::CmdlineTooLong {
                len,
                max: kernel.cmdline_size,
            }));
        }
        Ok((layout, placed, cmdline))
    }
}

fn linux_tables<T: TableMemory>(
    tables: &mut T,
    region: Range,
    start_page: u64,
    facts: &super::Facts,
) -> Result<(u64, usize), PageTableError> {
    let mut mapper = Mapper::new(tables, facts.nx)?;
    mapper.map(region.start, region.start, region.len(), Perms::RWX)?;
    mapper.map(start_page, start_page, PAGE, Perms::RX)?;
    if facts.lapic_base != 0 {
        mapper.map_unmapped(facts.lapic_base, facts.lapic_base, PAGE, Perms::MMIO)?;
    }
    Ok((mapper.root(), mapper.table_count()))
}
