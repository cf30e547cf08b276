//! Finding the MADT: the `acpi` crate walks RSDP → XSDT/RSDT to the table, then we copy its
//! raw bytes and hand them to `platform::madt`, whose own bounds-checked walk validates every
//! entry before anything interprets it (the `acpi` crate's entry iterator is not trusted with
//! malformed tables).

use alloc::vec::Vec;
use core::fmt;
use core::ptr::NonNull;

use acpi::{AcpiHandler, AcpiTables, PhysicalMapping};

use crate::physmem::PhysWindow;

/// MADTs are a few KiB even with hundreds of CPUs; refuse to copy more than this.
const MAX_MADT_BYTES: usize = 256 * 1024;

#[derive(Clone, Copy)]
struct Handler {
    offset: u64,
}

impl AcpiHandler for Handler {
    unsafe fn map_physical_region<T>(&self, phys: usize, size: usize) -> PhysicalMapping<Self, T> {
        let virt = (phys as u64 + self.offset) as *mut T;
        // The physical-memory window maps everything, so a mapping is just an offset.
        let ptr = NonNull::new(virt).expect("the physical-memory window does not start at 0");
        // SAFETY: `virt` maps `size` bytes at `phys` for the program's life (the window is
        // never unmapped), which is what PhysicalMapping requires.
        unsafe { PhysicalMapping::new(phys, ptr, size, size, *self) }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

#[derive(Debug)]
pub enum DiscoveryError {
    NoRsdp,
    Acpi(acpi::AcpiError),
    MadtTooLarge { len: usize },
}

impl fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiscoveryError::NoRsdp => f.write_str("the firmware reported no ACPI RSDP"),
            DiscoveryError::Acpi(acpi::AcpiError::TableMissing(sig)) => write!(
                f,
                "no valid {sig} table (absent, or rejected for a bad checksum or header: see the warning above)"
            ),
            DiscoveryError::Acpi(e) => write!(f, "ACPI tables unreadable: {e:?}"),
            DiscoveryError::MadtTooLarge { len } => {
                write!(f, "the MADT claims {len} bytes; refusing more than {MAX_MADT_BYTES}")
            }
        }
    }
}

/// Copies the MADT's raw bytes out of firmware memory.
pub fn madt_bytes(rsdp: Option<u64>, phys_offset: u64) -> Result<Vec<u8>, DiscoveryError> {
    let rsdp = rsdp.ok_or(DiscoveryError::NoRsdp)?;
    let handler = Handler { offset: phys_offset };
    // SAFETY: `rsdp` is the address the bootloader found or the firmware reported, and the
    // handler maps any physical address.
    let tables =
        unsafe { AcpiTables::from_rsdp(handler, rsdp as usize) }.map_err(DiscoveryError::Acpi)?;
    let madt = tables.find_table::<acpi::madt::Madt>().map_err(DiscoveryError::Acpi)?;
    let phys = madt.physical_start() as u64;
    let window = PhysWindow::new();
    // SAFETY: the `acpi` crate found and checksummed the MADT at `phys`: firmware memory the
    // window maps, which nothing writes. The SDT header's length field is at a 4-byte
    // aligned offset of the 4-byte aligned table.
    let len = unsafe { window.read_u32(phys + platform::madt::OFFSET_LENGTH as u64) } as usize;
    if len > MAX_MADT_BYTES {
        return Err(DiscoveryError::MadtTooLarge { len });
    }
    let mut bytes = alloc::vec![0u8; len];
    // SAFETY: as above; the table is `len` bytes long (its own header says so, and the crate
    // checksummed exactly those bytes).
    unsafe { window.read_bytes(phys, &mut bytes) };
    Ok(bytes)
}
