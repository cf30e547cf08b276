//! The multikernel manager: the kernel that runs on the bootstrap CPU.
//!
//! It is entered by the `bootloader` crate (BIOS or UEFI) with all physical memory mapped,
//! brings up a console, time, heap and frame allocator, describes the machine, and (in later
//! stages) starts and supervises kernel instances on the other CPUs.
//!
//! The logic that can be tested without hardware lives in `platform/` and `loader/`; this
//! crate is the thin hardware-facing layer around it.
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate alloc;

mod heap;
mod memory;
mod qemu;
mod report;
mod serial;
mod time;

use bootloader_api::config::Mapping;
use bootloader_api::{entry_point, BootInfo, BootloaderConfig};
use platform::memmap;

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
    let calibration = time::calibrate();
    heap::init();
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
        println!("{r}");
    }
    log::info!(
        "memory: {} regions, {} MiB usable, {} MiB bootloader, {} MiB reserved, usable top {:#x}",
        summary.regions,
        summary.usable_bytes >> 20,
        summary.bootloader_bytes >> 20,
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

    report::Line::new("boot")
        .str("firmware", &report::fmt_string(format_args!("{firmware}")))
        .num("usable_bytes", summary.usable_bytes)
        .num("reserved_bytes", summary.reserved_bytes)
        .num("bootloader_bytes", summary.bootloader_bytes)
        .num("rsdp", rsdp.unwrap_or(0))
        .num("ramdisk", ramdisk.unwrap_or(0))
        .num("ramdisk_len", boot_info.ramdisk_len)
        .num("tsc_hz", time::tsc_hz())
        .num("free_frames", frames_free)
        .emit();

    #[cfg(feature = "selftest-panic")]
    panic!("self-test: the manager panics on purpose");

    log::info!("manager: boot complete");
    qemu::finish(qemu::Verdict::Pass)
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
