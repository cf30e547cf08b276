//! The Multiple APIC Description Table (MADT): raw bytes in, CPU inventory out.
//!
//! The manager reads the firmware's MADT to learn which CPUs exist, which of them may be
//! started, where the I/O APICs are and how ISA interrupts are routed. The table comes from
//! firmware and is untrusted: a bad table must give a typed error, never a panic, an
//! out-of-bounds read or an unbounded loop.
//!
//! # Design
//! [`parse`] works in two passes over the same bounds-checked walker ([`entries`]):
//! 1. **Validate** the raw table before anything interprets an entry: signature `"APIC"`, the
//!    header's length field (at least the 44-byte fixed part, at most the bytes given), the
//!    checksum, then every entry header: no zero-length entry, none shorter than its structure
//!    or than the 2-byte entry header, none running past the table.
//! 2. **Interpret** the entries this crate knows; unknown types are skipped (they were still
//!    length-checked in pass 1).
//!
//! Every entry is at least 2 bytes long and zero-length entries are refused, so the number of
//! entries, and so the loop count and the size of every `Vec` built here, is bounded by
//! `table length / 2`.
//!
//! # Rules applied to the processor entries
//! - The bootstrap processor is **not** "the first entry": it is the CPU whose APIC ID the
//!   manager reads from its own local APIC, given to [`Inventory::mark_bsp`].
//! - An APIC ID listed twice (e.g. once as a Local APIC and once as a Local x2APIC entry) is one
//!   CPU: the first entry wins, the later one is recorded as a [`Note::DuplicateApicId`].
//! - The x2APIC ID `0xFFFF_FFFF` (and the xAPIC ID `0xFF`, the xAPIC broadcast destination) are
//!   placeholders some firmware emits for absent CPUs; they are not CPUs ([`Note::Placeholder`]).
//! - A processor that is neither Enabled nor Online Capable must not be started
//!   ([`Cpu::startable`], [`Inventory::check_startable`]).
//!
//! # Spec
//! ACPI 6.5, "System Description Table Header"; "Multiple APIC Description Table (MADT)" and its
//! subsections "Processor Local APIC Structure", "I/O APIC Structure", "Interrupt Source Override
//! Structure", "Local APIC Address Override Structure", "Processor Local x2APIC Structure", and
//! the table "Local APIC Flags" (Enabled, Online Capable). All fields are little-endian.
//!
//! # Invariants of an [`Inventory`]
//! - `cpus` holds each APIC ID at most once, never a placeholder ID, in table order.
//! - At most one CPU has `bsp == true`, and only after a successful [`Inventory::mark_bsp`].

use alloc::vec::Vec;
use bootproto::le::{u16_at as read_u16, u32_at as read_u32, u64_at as read_u64};
use core::fmt;

// ACPI 6.5, "System Description Table Header": 36 bytes, signature at 0, length at 4,
// checksum covering the whole table at 9, OEM ID at 10.
const SDT_HEADER_LEN: usize = 36;
/// Offset of the SDT header's Length field (ACPI 6.5, "System Description Table Header").
pub const OFFSET_LENGTH: usize = 4;
const OFFSET_REVISION: usize = 8;
const OFFSET_OEM_ID: usize = 10;

// ACPI 6.5, "Multiple APIC Description Table (MADT)", table "MADT Format": after the SDT header,
// Local Interrupt Controller Address (u32) at 36, Flags (u32) at 40, entries from 44.
const OFFSET_LOCAL_APIC_ADDRESS: usize = 36;
const OFFSET_FLAGS: usize = 40;
/// The fixed part of the MADT: SDT header + local APIC address + flags.
pub const MADT_HEADER_LEN: usize = 44;
const _: () = assert!(OFFSET_LOCAL_APIC_ADDRESS == SDT_HEADER_LEN);
const _: () = assert!(OFFSET_FLAGS + 4 == MADT_HEADER_LEN);

/// The table signature (ACPI 6.5, "Multiple APIC Description Table (MADT)").
pub const SIGNATURE: [u8; 4] = *b"APIC";

/// MADT Flags bit 0, PCAT_COMPAT: the system also has dual 8259 PICs (ACPI 6.5, table "Multiple
/// APIC Flags").
pub const FLAG_PCAT_COMPAT: u32 = 1 << 0;

/// Every interrupt controller structure starts with Type (u8) and Length (u8).
const ENTRY_HEADER_LEN: usize = 2;

// ACPI 6.5, table "Interrupt Controller Structure Types".
/// Processor Local APIC.
pub const TYPE_LOCAL_APIC: u8 = 0;
/// I/O APIC.
pub const TYPE_IO_APIC: u8 = 1;
/// Interrupt Source Override.
pub const TYPE_INTERRUPT_SOURCE_OVERRIDE: u8 = 2;
/// Local APIC Address Override.
pub const TYPE_LOCAL_APIC_ADDRESS_OVERRIDE: u8 = 5;
/// Processor Local x2APIC.
pub const TYPE_LOCAL_X2APIC: u8 = 9;

// Structure lengths, from each structure's subsection in ACPI 6.5.
const LEN_LOCAL_APIC: usize = 8;
const LEN_IO_APIC: usize = 12;
const LEN_INTERRUPT_SOURCE_OVERRIDE: usize = 10;
const LEN_LOCAL_APIC_ADDRESS_OVERRIDE: usize = 12;
const LEN_LOCAL_X2APIC: usize = 16;

// ACPI 6.5, table "Local APIC Flags" (shared by the Local APIC and Local x2APIC structures).
/// Enabled: the processor is ready for use.
pub const LAPIC_FLAG_ENABLED: u32 = 1 << 0;
/// Online Capable: with Enabled clear, the processor can be enabled at OS run time.
pub const LAPIC_FLAG_ONLINE_CAPABLE: u32 = 1 << 1;

/// The x2APIC ID firmware uses in a Processor Local x2APIC structure for an absent processor.
pub const X2APIC_PLACEHOLDER_ID: u32 = 0xFFFF_FFFF;
/// The xAPIC broadcast destination (SDM Vol. 3A, "Local APIC ID"); never a processor's ID.
pub const XAPIC_PLACEHOLDER_ID: u8 = 0xFF;

/// Why a table was refused. Offsets are byte offsets from the start of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MadtError {
    /// The first four bytes are not `"APIC"`.
    BadSignature { found: [u8; 4] },
    /// The bytes given, or the header's length field, are shorter than the 44-byte MADT header.
    TooShort { len: usize },
    /// The header's length field says more bytes than were given.
    LengthMismatch { header: usize, actual: usize },
    /// The bytes of the table do not sum to 0 mod 256; `sum` is what they sum to.
    BadChecksum { sum: u8 },
    /// Fewer than 2 bytes are left at `offset`, too few for an entry's type and length.
    TruncatedEntryHeader { offset: usize, table_len: usize },
    /// The entry at `offset` has length 0 (it would never advance the walk).
    ZeroLengthEntry { offset: usize },
    /// The entry at `offset` claims `len` bytes, past the end of the table.
    EntryOverrunsTable { offset: usize, len: usize, table_len: usize },
    /// The entry of type `kind` at `offset` is `len` bytes, shorter than the `need` bytes of its
    /// structure.
    EntryTooShort { offset: usize, kind: u8, len: usize, need: usize },
    /// [`Inventory::mark_bsp`]: the APIC ID the bootstrap processor read from its own local APIC
    /// is not in the table.
    BspNotInTable { apic_id: u32 },
}

impl fmt::Display for MadtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MadtError::BadSignature { found } => write!(
                f,
                "not a MADT: signature is {:?}, expected \"APIC\" (is this the right ACPI table file?)",
                EscapedBytes(found)
            ),
            MadtError::TooShort { len } => write!(
                f,
                "MADT is {len} bytes, shorter than its {MADT_HEADER_LEN}-byte fixed header \
                 (truncated file or corrupt length field)"
            ),
            MadtError::LengthMismatch { header, actual } => write!(
                f,
                "MADT header says {header} bytes but only {actual} were given (truncated dump?)"
            ),
            MadtError::BadChecksum { sum } => write!(
                f,
                "MADT checksum is wrong: its bytes sum to {sum:#04x} mod 256 instead of 0 \
                 (corrupt or hand-edited table)"
            ),
            MadtError::TruncatedEntryHeader { offset, table_len } => write!(
                f,
                "MADT entry at offset {offset:#x} is cut off: only {} byte(s) left of a \
                 {table_len}-byte table, an entry needs at least 2",
                table_len.saturating_sub(*offset)
            ),
            MadtError::ZeroLengthEntry { offset } => {
                write!(f, "MADT entry at offset {offset:#x} has length 0 (corrupt table)")
            }
            MadtError::EntryOverrunsTable { offset, len, table_len } => write!(
                f,
                "MADT entry at offset {offset:#x} is {len} bytes long and runs past the end of \
                 the {table_len}-byte table"
            ),
            MadtError::EntryTooShort { offset, kind, len, need } => write!(
                f,
                "MADT entry at offset {offset:#x} (type {kind}) is {len} bytes, shorter than \
                 the {need} bytes of its structure"
            ),
            MadtError::BspNotInTable { apic_id } => write!(
                f,
                "the bootstrap processor's own APIC ID {apic_id} ({apic_id:#x}) is not listed \
                 in the MADT: the firmware's table does not describe this machine"
            ),
        }
    }
}

/// Prints bytes as ASCII with non-printable ones escaped, for signatures in messages.
struct EscapedBytes<'a>(&'a [u8]);

impl fmt::Debug for EscapedBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for &b in self.0 {
            for c in core::ascii::escape_default(b) {
                write!(f, "{}", c as char)?;
            }
        }
        f.write_str("\"")
    }
}

/// Which MADT structure described a processor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuKind {
    /// Processor Local APIC structure (type 0): 8-bit APIC ID and UID.
    Lapic,
    /// Processor Local x2APIC structure (type 9): 32-bit x2APIC ID and UID.
    X2apic,
}

/// One processor listed in the MADT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpu {
    /// ACPI Processor UID (matches a processor object in the namespace).
    pub uid: u32,
    /// The local APIC ID (xAPIC) or x2APIC ID: the destination of INIT and SIPI.
    pub apic_id: u32,
    /// Local APIC Flags, Enabled.
    pub enabled: bool,
    /// Local APIC Flags, Online Capable.
    pub online_capable: bool,
    pub kind: CpuKind,
    /// Set by [`Inventory::mark_bsp`] on the CPU that is running the manager.
    pub bsp: bool,
    /// Byte offset of the entry in the table, for messages.
    pub offset: usize,
}

impl Cpu {
    /// Whether the manager may send this CPU INIT-SIPI-SIPI: it is Enabled, or Online Capable
    /// (ACPI 6.5, "Local APIC Flags"), and it is not the bootstrap processor.
    pub fn startable(&self) -> bool {
        !self.bsp && (self.enabled || self.online_capable)
    }
}

/// An I/O APIC structure (type 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoApic {
    pub id: u8,
    /// Physical address of its registers.
    pub address: u32,
    /// The first Global System Interrupt it serves.
    pub gsi_base: u32,
}

/// An Interrupt Source Override structure (type 2): how an ISA IRQ is wired to a GSI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterruptOverride {
    /// Bus: 0 is ISA, the only value ACPI 6.5 defines.
    pub bus: u8,
    /// The bus-relative IRQ (e.g. ISA IRQ 0, the PIT).
    pub source: u8,
    pub gsi: u32,
    /// MPS INTI flags: polarity in bits 1:0, trigger mode in bits 3:2 (ACPI 6.5, table "MPS INTI
    /// Flags").
    pub flags: u16,
}

/// Something in a valid table that the manager should mention but that is not an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Note {
    /// The entry at `offset` repeats the APIC ID of the CPU listed at `first_offset`; the first
    /// entry was kept.
    DuplicateApicId { apic_id: u32, offset: usize, first_offset: usize },
    /// The processor entry at `offset` carries a placeholder ID (x2APIC `0xFFFFFFFF` or xAPIC
    /// `0xFF`) and was not counted as a CPU.
    Placeholder { apic_id: u32, offset: usize },
    /// A second Local APIC Address Override at `offset` was ignored (ACPI 6.5 allows one).
    ExtraAddressOverride { offset: usize },
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Note::DuplicateApicId { apic_id, offset, first_offset } => write!(
                f,
                "entry at {offset:#x} repeats APIC ID {apic_id} already listed at \
                 {first_offset:#x}; kept the first"
            ),
            Note::Placeholder { apic_id, offset } => {
                write!(f, "entry at {offset:#x} has placeholder APIC ID {apic_id:#x}; not a CPU")
            }
            Note::ExtraAddressOverride { offset } => write!(
                f,
                "second Local APIC Address Override at {offset:#x} ignored; the first one is used"
            ),
        }
    }
}

/// Why the manager refuses to start a CPU ([`Inventory::check_startable`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuRefusal {
    /// No processor entry of the MADT has this APIC ID.
    NoSuchCpu { apic_id: u32 },
    /// It is the bootstrap processor, which runs the manager.
    IsBsp { apic_id: u32 },
    /// Its entry has neither Enabled nor Online Capable set.
    Disabled { apic_id: u32 },
}

impl fmt::Display for CpuRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CpuRefusal::NoSuchCpu { apic_id } => write!(
                f,
                "no CPU with APIC ID {apic_id} in the MADT (see `cargo xtask inspect madt` for \
                 the IDs this machine has)"
            ),
            CpuRefusal::IsBsp { apic_id } => write!(
                f,
                "CPU with APIC ID {apic_id} is the bootstrap processor running the manager; \
                 choose another CPU"
            ),
            CpuRefusal::Disabled { apic_id } => write!(
                f,
                "CPU with APIC ID {apic_id} is marked neither Enabled nor Online Capable by the \
                 firmware and must not be started"
            ),
        }
    }
}

/// What the MADT says about the machine's interrupt controllers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inventory {
    /// Physical address of the local APIC registers: the 32-bit header field, or the 64-bit
    /// Local APIC Address Override if the table has one.
    pub local_apic_address: u64,
    /// The raw MADT Flags field.
    pub flags: u32,
    /// Flags bit 0: dual 8259 PICs are present and must be masked before using the APICs.
    pub pcat_compat: bool,
    /// The SDT header's revision byte.
    pub revision: u8,
    /// The SDT header's OEM ID (6 bytes, space-padded by convention).
    pub oem_id: [u8; 6],
    pub cpus: Vec<Cpu>,
    pub io_apics: Vec<IoApic>,
    pub overrides: Vec<InterruptOverride>,
    pub notes: Vec<Note>,
    /// Entries of types this parser does not interpret (e.g. Local APIC NMI), skipped after
    /// their length was checked.
    pub skipped_entries: usize,
}

impl Inventory {
    /// The CPU with this APIC ID, if listed.
    pub fn cpu(&self, apic_id: u32) -> Option<&Cpu> {
        self.cpus.iter().find(|c| c.apic_id == apic_id)
    }

    /// The CPU marked as the bootstrap processor, once [`Inventory::mark_bsp`] succeeded.
    pub fn bsp(&self) -> Option<&Cpu> {
        self.cpus.iter().find(|c| c.bsp)
    }

    /// Marks the CPU whose APIC ID the bootstrap processor read from its own local APIC as the
    /// BSP (clearing any earlier mark). Fails if that ID is not in the table: then the table
    /// does not describe the CPU the manager is running on and nothing in it can be trusted.
    pub fn mark_bsp(&mut self, apic_id: u32) -> Result<(), MadtError> {
        if self.cpu(apic_id).is_none() {
            return Err(MadtError::BspNotInTable { apic_id });
        }
        for c in &mut self.cpus {
            c.bsp = c.apic_id == apic_id;
        }
        Ok(())
    }

    /// The CPU with this APIC ID if the manager may start it, or why not. Call
    /// [`Inventory::mark_bsp`] first so that the BSP is refused.
    pub fn check_startable(&self, apic_id: u32) -> Result<&Cpu, CpuRefusal> {
        let cpu = self.cpu(apic_id).ok_or(CpuRefusal::NoSuchCpu { apic_id })?;
        if cpu.bsp {
            Err(CpuRefusal::IsBsp { apic_id })
        } else if !cpu.enabled && !cpu.online_capable {
            Err(CpuRefusal::Disabled { apic_id })
        } else {
            Ok(cpu)
        }
    }

    /// The CPUs that may be started (every startable CPU but the BSP), in table order.
    pub fn startable_cpus(&self) -> impl Iterator<Item = &Cpu> {
        self.cpus.iter().filter(|c| c.startable())
    }
}

/// An inventory of xAPIC CPUs with these IDs, the first the BSP, those in `disabled` neither
/// enabled nor online-capable: for tests of what consumes an inventory.
#[cfg(any(test, feature = "sim"))]
pub fn test_inventory(ids: &[u32], disabled: &[u32]) -> Inventory {
    Inventory {
        local_apic_address: 0xfee0_0000,
        flags: 0,
        pcat_compat: false,
        revision: 1,
        oem_id: *b"TEST  ",
        cpus: ids
            .iter()
            .enumerate()
            .map(|(i, &id)| Cpu {
                uid: i as u32,
                apic_id: id,
                kind: CpuKind::Lapic,
                enabled: !disabled.contains(&id),
                online_capable: false,
                bsp: i == 0,
                offset: 44 + 8 * i,
            })
            .collect(),
        io_apics: Vec::new(),
        overrides: Vec::new(),
        notes: Vec::new(),
        skipped_entries: 0,
    }
}

/// One interrupt controller structure of a validated table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawEntry<'a> {
    /// Byte offset of the entry in the table.
    pub offset: usize,
    /// Type byte.
    pub kind: u8,
    /// The whole entry, type and length bytes included.
    pub bytes: &'a [u8],
}

/// The minimum length of each entry type this parser interprets; 2 (the entry header) for
/// the others.
fn min_entry_len(kind: u8) -> usize {
    match kind {
        TYPE_LOCAL_APIC => LEN_LOCAL_APIC,
        TYPE_IO_APIC => LEN_IO_APIC,
        TYPE_INTERRUPT_SOURCE_OVERRIDE => LEN_INTERRUPT_SOURCE_OVERRIDE,
        TYPE_LOCAL_APIC_ADDRESS_OVERRIDE => LEN_LOCAL_APIC_ADDRESS_OVERRIDE,
        TYPE_LOCAL_X2APIC => LEN_LOCAL_X2APIC,
        _ => ENTRY_HEADER_LEN,
    }
}

/// A bounds-checked walk over the entries of `table` (which must already be cut to the
/// header's length). Yields each entry, or the first structural error and then nothing.
/// Every successful step advances by at least 2 bytes, so it ends after at most
/// `table.len() / 2` steps.
pub fn entries(table: &[u8]) -> Entries<'_> {
    Entries { table, offset: MADT_HEADER_LEN, failed: false }
}

/// Iterator returned by [`entries`].
pub struct Entries<'a> {
    table: &'a [u8],
    offset: usize,
    failed: bool,
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<RawEntry<'a>, MadtError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.offset >= self.table.len() {
            return None;
        }
        let r = self.step();
        if r.is_err() {
            self.failed = true;
        }
        Some(r)
    }
}

impl<'a> Entries<'a> {
    fn step(&mut self) -> Result<RawEntry<'a>, MadtError> {
        let offset = self.offset;
        let table_len = self.table.len();
        let (kind, len) = match (self.table.get(offset), self.table.get(offset.wrapping_add(1))) {
            (Some(&k), Some(&l)) => (k, usize::from(l)),
            _ => return Err(MadtError::TruncatedEntryHeader { offset, table_len }),
        };
        if len == 0 {
            return Err(MadtError::ZeroLengthEntry { offset });
        }
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= table_len)
            .ok_or(MadtError::EntryOverrunsTable { offset, len, table_len })?;
        let need = min_entry_len(kind);
        if len < need {
            return Err(MadtError::EntryTooShort { offset, kind, len, need });
        }
        let bytes = self.table.get(offset..end).ok_or(MadtError::EntryOverrunsTable {
            offset,
            len,
            table_len,
        })?;
        self.offset = end;
        Ok(RawEntry { offset, kind, bytes })
    }
}

fn read_u8(b: &[u8], at: usize) -> Option<u8> {
    b.get(at).copied()
}

/// Checks the table header and returns the table cut to the header's length field.
/// Trailing bytes past that length are ignored (they are not part of the table).
pub fn validate_header(bytes: &[u8]) -> Result<&[u8], MadtError> {
    let sig = bytes.get(0..4).ok_or(MadtError::TooShort { len: bytes.len() })?;
    if sig != SIGNATURE {
        let found = <[u8; 4]>::try_from(sig).unwrap_or_default();
        return Err(MadtError::BadSignature { found });
    }
    let header = read_u32(bytes, OFFSET_LENGTH).ok_or(MadtError::TooShort { len: bytes.len() })?;
    // A u32 always fits a usize on the targets this crate builds for (64-bit); saturate anyway.
    let header = usize::try_from(header).unwrap_or(usize::MAX);
    if header < MADT_HEADER_LEN {
        return Err(MadtError::TooShort { len: header });
    }
    let table =
        bytes.get(..header).ok_or(MadtError::LengthMismatch { header, actual: bytes.len() })?;
    let sum = crate::acpi::checksum(table);
    if sum != 0 {
        return Err(MadtError::BadChecksum { sum });
    }
    Ok(table)
}

/// Validates a raw MADT (as read from `/sys/firmware/acpi/tables/APIC`, or from the physical
/// address the XSDT/RSDT gives) and builds its [`Inventory`].
pub fn parse(bytes: &[u8]) -> Result<Inventory, MadtError> {
    let table = validate_header(bytes)?;
    // Pass 1: the whole entry structure, before any entry is interpreted.
    for e in entries(table) {
        e?;
    }

    // The header fields exist: validate_header checked the length is at least 44.
    let short = MadtError::TooShort { len: table.len() };
    let mut inv = Inventory {
        local_apic_address: u64::from(
            read_u32(table, OFFSET_LOCAL_APIC_ADDRESS).ok_or(short.clone())?,
        ),
        flags: read_u32(table, OFFSET_FLAGS).ok_or(short.clone())?,
        pcat_compat: false,
        revision: read_u8(table, OFFSET_REVISION).ok_or(short.clone())?,
        oem_id: table
            .get(OFFSET_OEM_ID..OFFSET_OEM_ID + 6)
            .and_then(|s| s.try_into().ok())
            .ok_or(short.clone())?,
        cpus: Vec::new(),
        io_apics: Vec::new(),
        overrides: Vec::new(),
        notes: Vec::new(),
        skipped_entries: 0,
    };
    inv.pcat_compat = inv.flags & FLAG_PCAT_COMPAT != 0;
    let mut address_override: Option<u64> = None;

    // Pass 2: interpret. Every read below is inside an entry already checked to be at least as
    // long as its structure, so the `ok_or` fallbacks are unreachable; they keep the code free
    // of panicking paths.
    for e in entries(table) {
        let e = e?;
        let b = e.bytes;
        let too_short = || MadtError::EntryTooShort {
            offset: e.offset,
            kind: e.kind,
            len: b.len(),
            need: min_entry_len(e.kind),
        };
        match e.kind {
            // ACPI 6.5, "Processor Local APIC Structure": UID u8 at 2, APIC ID u8 at 3, flags
            // u32 at 4.
            TYPE_LOCAL_APIC => {
                let uid = read_u8(b, 2).ok_or_else(too_short)?;
                let id = read_u8(b, 3).ok_or_else(too_short)?;
                let flags = read_u32(b, 4).ok_or_else(too_short)?;
                if id == XAPIC_PLACEHOLDER_ID {
                    inv.notes.push(Note::Placeholder { apic_id: id.into(), offset: e.offset });
                } else {
                    add_cpu(&mut inv, uid.into(), id.into(), flags, CpuKind::Lapic, e.offset);
                }
            }
            // ACPI 6.5, "Processor Local x2APIC Structure": reserved u16 at 2, x2APIC ID u32 at
            // 4, flags u32 at 8, UID u32 at 12.
            TYPE_LOCAL_X2APIC => {
                let id = read_u32(b, 4).ok_or_else(too_short)?;
                let flags = read_u32(b, 8).ok_or_else(too_short)?;
                let uid = read_u32(b, 12).ok_or_else(too_short)?;
                if id == X2APIC_PLACEHOLDER_ID {
                    inv.notes.push(Note::Placeholder { apic_id: id, offset: e.offset });
                } else {
                    add_cpu(&mut inv, uid, id, flags, CpuKind::X2apic, e.offset);
                }
            }
            // ACPI 6.5, "I/O APIC Structure": ID u8 at 2, reserved at 3, address u32 at 4, GSI
            // base u32 at 8.
            TYPE_IO_APIC => inv.io_apics.push(IoApic {
                id: read_u8(b, 2).ok_or_else(too_short)?,
                address: read_u32(b, 4).ok_or_else(too_short)?,
                gsi_base: read_u32(b, 8).ok_or_else(too_short)?,
            }),
            // ACPI 6.5, "Interrupt Source Override Structure": bus u8 at 2, source u8 at 3, GSI
            // u32 at 4, flags u16 at 8.
            TYPE_INTERRUPT_SOURCE_OVERRIDE => inv.overrides.push(InterruptOverride {
                bus: read_u8(b, 2).ok_or_else(too_short)?,
                source: read_u8(b, 3).ok_or_else(too_short)?,
                gsi: read_u32(b, 4).ok_or_else(too_short)?,
                flags: read_u16(b, 8).ok_or_else(too_short)?,
            }),
            // ACPI 6.5, "Local APIC Address Override Structure": reserved u16 at 2, 64-bit
            // address at 4, which replaces the header's 32-bit field.
            TYPE_LOCAL_APIC_ADDRESS_OVERRIDE => {
                let address = read_u64(b, 4).ok_or_else(too_short)?;
                if address_override.is_some() {
                    inv.notes.push(Note::ExtraAddressOverride { offset: e.offset });
                } else {
                    address_override = Some(address);
                }
            }
            _ => inv.skipped_entries = inv.skipped_entries.saturating_add(1),
        }
    }
    if let Some(a) = address_override {
        inv.local_apic_address = a;
    }
    Ok(inv)
}

fn add_cpu(inv: &mut Inventory, uid: u32, apic_id: u32, flags: u32, kind: CpuKind, offset: usize) {
    if let Some(first) = inv.cpu(apic_id) {
        let first_offset = first.offset;
        inv.notes.push(Note::DuplicateApicId { apic_id, offset, first_offset });
        return;
    }
    inv.cpus.push(Cpu {
        uid,
        apic_id,
        enabled: flags & LAPIC_FLAG_ENABLED != 0,
        online_capable: flags & LAPIC_FLAG_ONLINE_CAPABLE != 0,
        kind,
        bsp: false,
        offset,
    });
}
