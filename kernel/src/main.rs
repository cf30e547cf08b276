//! The multikernel manager: the kernel that runs on the bootstrap CPU.
//!
//! It is entered by the `bootloader` crate (BIOS or UEFI) with all physical memory mapped,
//! brings up a console, time, heap and frame allocator, describes the machine, then hands the
//! boot bundle to the supervisor (`platform::supervisor`), which starts and supervises the
//! kernel instances on the other CPUs.
//!
//! The logic that can be tested without hardware lives in `platform/` and `loader/`; this
//! crate is the thin hardware-facing layer around it: the machine behind the supervisor's
//! traits (`machine.rs`, `physmem.rs`, `lapic.rs`, `time.rs`), the consoles, and what is
//! printed (`view.rs`, `shell.rs`, `report.rs`).
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]
#![feature(abi_x86_interrupt)]

extern crate alloc;

mod acpi;
mod fbcon;
mod heap;
mod interrupts;
mod keyboard;
mod lapic;
mod machine;
mod memory;
mod memspeed;
mod physmem;
mod qemu;
mod report;
mod serial;
mod shell;
mod time;
mod uart;
mod view;

use bootloader_api::config::Mapping;
use bootloader_api::{entry_point, BootInfo, BootloaderConfig};
use platform::memmap;
use platform::supervisor;

/// Bootloader configuration (`bootloader_api` docs, "BootloaderConfig").
pub static BOOTLOADER_CONFIG: BootloaderConfig = {
    let mut config = BootloaderConfig::new_default();
    // The manager reads ACPI tables and writes instance regions anywhere in physical memory.
    config.mappings.physical_memory = Some(Mapping::Dynamic);
    config.kernel_stack_size = 256 * 1024;
    config
};

entry_point!(kernel_main, config = &BOOTLOADER_CONFIG);

fn kernel_main(boot_info: &'static mut BootInfo) -> ! {
    serial::init(log::LevelFilter::Info);
    heap::init();
    // The screen mirrors the console, so a machine without a serial port still shows the log
    // and, on a panic, keeps the message on screen.
    if let Some(fb) = boot_info.framebuffer.take() {
        fbcon::init(fb);
    }
    let calibration = time::calibrate();
    interrupts::init();
    interrupts::mask_legacy_pics();
    memspeed::init();
    println!();
    println!("multikernel manager {} starting", env!("CARGO_PKG_VERSION"));
    match calibration {
        Ok(hz) => log::info!("tsc: {} kHz (calibrated against the PIT)", hz / 1000),
        Err(e) => log::warn!(
            "tsc: calibration failed ({e:?}); assuming {} MHz, time stamps and timeouts may be off",
            time::tsc_hz() / 1_000_000
        ),
    }

    let regions = memory::regions_from_bootloader(&boot_info.memory_regions);
    let Some(phys_offset) = boot_info.physical_memory_offset.into_option() else {
        log::error!("the bootloader did not map physical memory; the manager cannot run");
        qemu::finish(qemu::Verdict::Fail);
    };
    memory::init(phys_offset, &regions);

    let firmware = memmap::infer_firmware(&regions);
    let summary = memmap::summarize(&regions);
    let rsdp = boot_info.rsdp_addr.into_option();
    let ramdisk = boot_info.ramdisk_addr.into_option();
    log::info!("firmware: {firmware} (inferred from the memory map's region types)");
    for r in &regions {
        serial::print_serial_only(format_args!("{r}\n"));
    }
    log::info!(
        "memory: {} regions, {} MiB usable, {} MiB bootloader, {} KiB reserved below the top of RAM ({} MiB of reserved address space in all), usable top {:#x}",
        summary.regions,
        summary.usable_bytes >> 20,
        summary.bootloader_bytes >> 20,
        summary.reserved_below_top >> 10,
        summary.reserved_bytes >> 20,
        summary.usable_top
    );
    match rsdp {
        Some(a) => log::info!("acpi: RSDP at {a:#x}"),
        None => log::warn!("acpi: the firmware reported no RSDP"),
    }
    match ramdisk {
        Some(a) => log::info!("ramdisk: {} bytes at {a:#x}", boot_info.ramdisk_len),
        None => log::info!("ramdisk: none"),
    }
    let frames_free = memory::FRAMES.lock().as_ref().map_or(0, |f| f.free_frames());
    log::info!("frames: {frames_free} free 4 KiB frames above 1 MiB");

    report::Line::new(bootproto::report::section::BOOT)
        .str("firmware", &report::fmt_string(format_args!("{firmware}")))
        .num("usable_bytes", summary.usable_bytes)
        .num("reserved_bytes", summary.reserved_bytes)
        .num("reserved_below_top", summary.reserved_below_top)
        .num("bootloader_bytes", summary.bootloader_bytes)
        .num("rsdp", rsdp.unwrap_or(0))
        .num("ramdisk", ramdisk.unwrap_or(0))
        .num("ramdisk_len", boot_info.ramdisk_len)
        .num("tsc_hz", time::tsc_hz())
        .num("free_frames", frames_free)
        .emit();

    #[cfg(feature = "selftest-panic")]
    if core::hint::black_box(true) {
        // (A condition the compiler cannot see through, so the code below stays "reachable".)
        panic!("self-test: the manager panics on purpose");
    }
    #[cfg(feature = "selftest-fault")]
    {
        let p = 0x5ead_0000_0000 as *const u64;
        // SAFETY: none: this self-test reads an unmapped address on purpose, to show that the
        // manager's page-fault handler reports it.
        let v = unsafe { p.read_volatile() };
        log::error!("self-test: read {v:#x} from an unmapped address?");
    }

    let cpu = cpu_facts();
    if lapic::enable_x2apic_if_supported(cpu.x2apic) {
        log::info!("apic: switched the BSP's local APIC to x2APIC mode");
    }
    let lapic = lapic::Lapic::bsp(phys_offset);
    let inventory = discover_cpus(&lapic, &cpu, rsdp, phys_offset);
    let timer_hz = lapic.calibrate_timer();
    let speed = memspeed::measure();
    log::info!(
        "memory speed: fill {} MB/s (rep-byte {}, rep-qword {}, sse {}), copy {} MB/s (rep-byte {}, rep-qword {}, sse {}); apic timer {} kHz",
        speed.fill.map_or(0, |m| speed.fill_mb_s[m as usize]),
        speed.fill_mb_s[0],
        speed.fill_mb_s[1],
        speed.fill_mb_s[2],
        speed.copy.map_or(0, |m| speed.copy_mb_s[m as usize]),
        speed.copy_mb_s[0],
        speed.copy_mb_s[1],
        speed.copy_mb_s[2],
        timer_hz / 1000
    );
    report::Line::new(bootproto::report::section::MEMSPEED)
        .str("fill", speed.fill.map_or("none", memspeed::Method::name))
        .str("copy", speed.copy.map_or("none", memspeed::Method::name))
        .raw("fill_mb_s", &report::numbers(speed.fill_mb_s.iter().copied()))
        .raw("copy_mb_s", &report::numbers(speed.copy_mb_s.iter().copied()))
        .num("apic_timer_hz", timer_hz)
        .emit();
    log::info!("manager: boot complete");

    let bundle = ramdisk.map(|virt| {
        let len = boot_info.ramdisk_len as usize;
        // SAFETY: the bootloader mapped the ramdisk's `ramdisk_len` bytes at `ramdisk_addr`
        // for the kernel's lifetime and nothing writes it.
        unsafe { core::slice::from_raw_parts(virt as *const u8, len) }
    });
    let Some(bundle_bytes) = bundle else {
        log::info!("bundle: no ramdisk, so no instances to start");
        qemu::finish(qemu::Verdict::Pass)
    };
    let parsed = match platform::bundle::parse(bundle_bytes) {
        Ok(p) => p,
        Err(e) => {
            log::error!("bundle: {e}");
            qemu::finish(qemu::Verdict::Fail)
        }
    };
    log::set_max_level(log_level(parsed.settings.log_level));
    log::info!(
        "bundle: {} images, {} instances, supervise for {} ms, log level {}",
        parsed.files.len(),
        parsed.instances.len(),
        parsed.settings.run_ms,
        log::max_level()
    );

    let mut protected = alloc::vec::Vec::new();
    let mut protect = |label: &str, virt: u64, len: u64| {
        for r in memory::phys_runs(virt, len) {
            protected.push(platform::partition::Protected::new(label, r.start, r.end));
        }
    };
    let (heap_start, heap_end) = heap::arena_virt();
    protect("heap", heap_start, heap_end - heap_start);
    protect("stack", boot_info.kernel_stack_bottom, boot_info.kernel_stack_len);
    protect("boot info", core::ptr::addr_of!(*boot_info) as u64, bootproto::PAGE_SIZE);
    if let Some(r) = ramdisk {
        protect("ramdisk", r, boot_info.ramdisk_len);
    }
    protected.push(platform::partition::Protected::new(
        "image",
        boot_info.kernel_addr,
        boot_info.kernel_addr + boot_info.kernel_len,
    ));

    let planned = supervisor::plan(&parsed, inventory.as_ref(), &regions, &protected);
    let mut allowed = alloc::vec::Vec::new();
    if let Ok(p) = &planned {
        view::print_plan(&p.plan);
        let mut frames = memory::FRAMES.lock();
        if let Some(frames) = frames.as_mut() {
            if let Err(e) = p.plan.apply_to(frames) {
                log::error!("plan: could not reserve the plan's memory: {e}");
                qemu::finish(qemu::Verdict::Fail)
            }
            log::info!("frames: {} free after carving the plan", frames.free_frames());
        }
        // The image store is handed to the supervisor as a byte slice, not through the
        // checked window: no instance or device ever owns it.
        allowed = p
            .plan
            .carved()
            .filter(|c| c.owner != platform::partition::Owner::ImageStore)
            .map(|c| c.range)
            .collect();
    }
    let store = planned.as_ref().ok().and_then(|p| p.plan.image_store());
    let facts = supervisor::Facts {
        nx: cpu.nx,
        init_delay: platform::apstart::init_delay_needed(cpu.vendor, cpu.family, cpu.hypervisor),
        tsc_hz: time::tsc_hz(),
        rsdp: rsdp.unwrap_or(0),
        lapic_base: lapic.base.base,
        lapic_timer_hz: timer_hz,
        checkin_timeout_ms: u64::from(parsed.settings.checkin_timeout_ms),
    };
    let bsp = machine::Bsp { mem: physmem::PlanMemory::new(allowed), lapic, timer_hz };
    let code = trampoline::start_code();
    let mut sup = supervisor::Supervisor::new(bsp, bundle_bytes, &parsed, code, facts, planned);
    if let Some(range) = store {
        // SAFETY: the plan carved `range` for the image store alone (reserved in the frame
        // allocator above, left out of `PlanMemory`'s ranges, mapped into no instance), and
        // this is the only slice ever taken of it.
        let buf = unsafe { physmem::PhysWindow::new().take_slice(range) };
        match buf.map(|b| sup.attach_store(b)) {
            Some(Ok(())) => log::info!(
                "images: store of {} KiB at {:#x}..{:#x} for images pushed at run time",
                range.len() >> 10,
                range.start,
                range.end
            ),
            _ => log::error!("images: the image store at {:#x} could not be mapped", range.start),
        }
    } else if let Some(why) = sup.store_refused() {
        log::warn!("images: no image store ({why}); 'load' will refuse images");
    }
    if let Err(e) = sup.boot() {
        log::error!("apstart: {e}");
    }
    let run_ms = u64::from(parsed.settings.run_ms);
    if keyboard::init() {
        log::info!("keyboard: i8042 found; the shell takes keys as well as the serial line");
    } else {
        log::info!("keyboard: no i8042 controller; the shell is on the serial line only");
    }
    let mut sh = shell::Shell::default();
    sh.greet(run_ms);
    let mut last_table = time::micros_since_boot();
    let mut last_panel = 0u64;
    sup.run(run_ms, |sup| {
        sh.serve(sup);
        let now = time::micros_since_boot();
        if now.saturating_sub(last_panel) >= PANEL_EVERY_US {
            fbcon::set_panel(&sup.panel_lines(fbcon::panel_rows()));
            last_panel = now;
        }
        if run_ms != 0 && now.saturating_sub(last_table) >= STATUS_EVERY_US {
            view::print_table(&sup.instances);
            last_table = now;
        }
    });
    view::print_table(&sup.instances);
    view::emit_report(&sup);
    if sup.all_healthy() {
        log::info!("manager: all {} instances healthy", sup.instances.len());
        qemu::finish(qemu::Verdict::Pass)
    }
    for i in sup.instances.iter().filter(|i| !i.healthy()) {
        let why = i.reason_text();
        log::error!(
            "manager: FAIL: instance '{}' is {}{}{}",
            i.name,
            i.state.name(),
            if why.is_empty() { "" } else { ": " },
            why
        );
    }
    qemu::finish(qemu::Verdict::Fail)
}

/// How often a status table is printed while supervising (not in shell mode).
const STATUS_EVERY_US: u64 = 1_000_000;
/// How often the screen's status panel is refreshed.
const PANEL_EVERY_US: u64 = 1_000_000;

/// The bundle's log level (0 error .. 4 trace), as the manifest's `log_level` set it.
fn log_level(level: u32) -> log::LevelFilter {
    match level {
        0 => log::LevelFilter::Error,
        1 => log::LevelFilter::Warn,
        2 => log::LevelFilter::Info,
        3 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    }
}

struct CpuFacts {
    vendor: platform::apstart::Vendor,
    family: u32,
    hypervisor: bool,
    nx: bool,
    x2apic: bool,
}

fn cpu_facts() -> CpuFacts {
    use core::arch::x86_64::__cpuid;
    // CPUID leaves 0, 1 and 8000_0000h exist on every x86_64 CPU.
    let l0 = __cpuid(0);
    let l1 = __cpuid(1);
    let max_ext = __cpuid(0x8000_0000).eax;
    let ext1 = if max_ext >= 0x8000_0001 { __cpuid(0x8000_0001).edx } else { 0 };
    let base_family = (l1.eax >> 8) & 0xF;
    // SDM Vol. 2A, CPUID leaf 01H: family = base + extended when base is 0Fh.
    let family =
        if base_family == 0xF { base_family + ((l1.eax >> 20) & 0xFF) } else { base_family };
    CpuFacts {
        vendor: platform::apstart::Vendor::from_cpuid(l0.ebx, l0.edx, l0.ecx),
        family,
        // CPUID.1:ECX bit 31, "hypervisor present".
        hypervisor: l1.ecx & (1 << 31) != 0,
        // CPUID.80000001h:EDX bit 20, execute-disable.
        nx: ext1 & (1 << 20) != 0,
        x2apic: platform::apic::x2apic_supported(l1.ecx),
    }
}

/// Reads the MADT, marks the BSP, prints the inventory; `None` if there is no usable MADT.
fn discover_cpus(
    lapic: &lapic::Lapic,
    facts: &CpuFacts,
    rsdp: Option<u64>,
    phys_offset: u64,
) -> Option<platform::madt::Inventory> {
    log::info!(
        "apic: {:?} mode, base {:#x}, x2APIC {}supported",
        lapic.base.mode,
        lapic.base.base,
        if facts.x2apic { "" } else { "not " }
    );
    report::Line::new(bootproto::report::section::APIC)
        .str("mode", &report::fmt_string(format_args!("{:?}", lapic.base.mode)))
        .num("base", lapic.base.base)
        .bool("x2apic_supported", facts.x2apic)
        .emit();
    let bytes = match acpi::madt_bytes(rsdp, phys_offset) {
        Ok(b) => b,
        Err(e) => {
            log::error!("acpi: {e}");
            return None;
        }
    };
    let mut inv = match platform::madt::parse(&bytes) {
        Ok(inv) => inv,
        Err(e) => {
            log::error!("acpi: MADT refused: {e}");
            return None;
        }
    };
    let bsp = lapic.id();
    match bsp.map(|id| inv.mark_bsp(id)) {
        Some(Ok(())) => {}
        Some(Err(e)) => log::error!("acpi: {e}"),
        None => log::error!("apic: the BSP's local APIC is disabled; its ID is unknown"),
    }
    for n in &inv.notes {
        log::warn!("acpi: {n}");
    }
    println!(
        "{:>5} {:>8} {:>7} {:>8} {:>14} {:<4}",
        "uid", "apic_id", "kind", "enabled", "online-capable", "role"
    );
    let mut items = alloc::string::String::from("[");
    for (i, c) in inv.cpus.iter().enumerate() {
        let kind = match c.kind {
            platform::madt::CpuKind::Lapic => "lapic",
            platform::madt::CpuKind::X2apic => "x2apic",
        };
        let role = if c.bsp {
            "BSP"
        } else if c.startable() {
            "AP"
        } else {
            "-"
        };
        println!(
            "{:>5} {:>8} {:>7} {:>8} {:>14} {:<4}",
            c.uid, c.apic_id, kind, c.enabled, c.online_capable, role
        );
        if i > 0 {
            items.push(',');
        }
        let mut l = report::Line::object();
        l.num("uid", c.uid as u64)
            .num("apic_id", c.apic_id as u64)
            .bool("enabled", c.enabled)
            .bool("online_capable", c.online_capable)
            .str("kind", kind)
            .bool("bsp", c.bsp);
        items.push_str(&l.finish());
    }
    items.push(']');
    log::info!(
        "acpi: {} CPUs ({} startable APs), {} IO APICs, local APIC at {:#x}",
        inv.cpus.len(),
        inv.startable_cpus().count(),
        inv.io_apics.len(),
        inv.local_apic_address
    );
    report::Line::new(bootproto::report::section::CPUS).raw("items", &items).emit();
    Some(inv)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    x86_64::instructions::interrupts::disable();
    serial::print_emergency(format_args!("\nPANIC: {}", info.message()));
    if let Some(loc) = info.location() {
        serial::print_emergency(format_args!(" at {}:{}:{}", loc.file(), loc.line(), loc.column()));
    }
    serial::print_emergency(format_args!("\n"));
    qemu::finish(qemu::Verdict::Fail)
}
