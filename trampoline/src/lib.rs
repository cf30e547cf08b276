//! The AP start-up path: the code an application processor runs after its Start-up IPI, the
//! tables that tell it where to go, and the parking page a stopped CPU proves itself on.
//!
//! A SIPI starts the AP in real mode at `CS:IP = (vector << 8):0000`, i.e. at the start of a
//! 4 KiB page below 1 MiB (SDM Vol. 3A, "MP Initialization Protocol Algorithm for MP
//! Systems"). Low memory is scarce (about 150 usable pages on a PC, and Linux instances need
//! some), so the manager uses **two low pages whatever the number of CPUs**:
//!
//! - the **start page** ([`build_start_page`]): the start-up code and a [`StartHeader`] (a
//!   transition GDT, far pointers, and where the CPU table is). Every AP of every instance is
//!   sent here;
//! - the **park page** ([`build_park_page`]): real-mode code that appends the CPU's APIC ID to
//!   a [`ParkLog`] and halts. A stopped CPU is sent here after its INIT; seeing its ID in the
//!   log proves it left the instance's code.
//!
//! Each AP finds its own parameters by its APIC ID, as Linux's parallel bring-up does: the
//! **CPU table** ([`CpuEntry`], manager memory above 1 MiB and below 4 GiB, mapped in no
//! instance) names, for each armed APIC ID, the page-table root and the CPU's **slot**: a page
//! inside its instance's region ([`Slot`]) holding the GDT, TSS, early IDT, exception stack,
//! entry point, stack and arguments it will run with. So all APs start together through one
//! page, and nothing per-instance lives below 1 MiB.
//!
//! The sequence (SDM Vol. 3A, "Switching to Protected Mode", "Initializing IA-32e Mode"):
//! 1. real mode (start page): `cli`, count itself in [`StartHeader::entered`], `lgdt` the
//!    transition GDT, `CR0.PE`, far jump;
//! 2. protected mode, paging off: read its APIC ID (CPUID leaf 0Bh, else leaf 1), scan the CPU
//!    table for an armed entry with that ID. None: count itself as a *stray* and halt. Found:
//!    write [`STAGE_FOUND`] and the TSC into the entry, `CR4.PAE|OSFXSR|OSXMMEXCPT`, `CR3` from
//!    the entry, `EFER.LME` (and `NXE`), `CR0.PG|MP`, far jump to 64-bit code;
//! 3. long mode, on the instance's page tables (which map the start page and the slot): load
//!    the slot's GDT (reloading CS and the data segments with the slot's selectors), IDT and
//!    TSS, write [`STAGE_LONG`], its APIC ID and TSC into the slot, set the stack (a zero return
//!    address pushed), `RDI`/`RSI` from the slot, write [`STAGE_JUMPING`] (the *check-in*), and
//!    jump to the entry.
//!
//! Everything here is pure: the builders return exact bytes, and host tests check them and the
//! assembled code. The manager copies the bytes to physical memory.
//!
//! # Invariants
//! - The code never contains its own address; the start header's far pointers and GDTR and
//!   each slot's descriptors are the only address-dependent bytes, and the builders write all
//!   of them.
//! - The transition GDT has its descriptors' accessed bits set, so no CPU ever writes to the
//!   shared start page after the header's counters (SDM Vol. 3A, "Segment Descriptors").
//! - Page-table roots are below 4 GiB (CR3 is loaded in 32-bit mode).
//! - A slot's exception stack is the top of the slot page, so an exception stub finds its slot
//!   by rounding the stack pointer down to the page.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]

mod asm;

use core::fmt;
use core::mem::{offset_of, size_of};

pub const PAGE_SIZE: usize = bootproto::PAGE_SIZE as usize;
/// Bytes reserved for the code at the start of the start page; the assembler refuses more.
pub const CODE_MAX: usize = 0x800;
/// Where the [`StartHeader`] sits in the start page.
pub const HEADER_OFFSET: usize = 0x800;
/// Where the early IDT sits in a slot page: 32 gates × 16 bytes (SDM Vol. 3A, "64-Bit Mode
/// IDT").
pub const SLOT_IDT_OFFSET: usize = 0x200;
pub const IDT_ENTRIES: usize = 32;
/// The exception stack (TSS IST1) runs from here to the end of the slot page.
pub const SLOT_STACK_BOTTOM: usize = 0x400;

// Transition GDT selectors (index × 8): SDM Vol. 3A, "Segment Selectors".
pub const SEL_CODE32: u16 = 0x08;
pub const SEL_DATA: u16 = 0x10;
pub const SEL_CODE64: u16 = 0x18;
pub const SEL_TSS: u16 = 0x20;

/// CR4.PAE (bit 5), CR4.OSFXSR (bit 9), CR4.OSXMMEXCPT (bit 10): SDM Vol. 3A, "Control Registers".
pub const CR4_SET: u32 = (1 << 5) | (1 << 9) | (1 << 10);
/// CR0.PG (bit 31), CR0.MP (bit 1).
pub const CR0_SET: u32 = (1 << 31) | (1 << 1);
/// Clears CR0.EM (bit 2) so SSE instructions do not fault.
pub const CR0_CLEAR_MASK: u32 = !(1 << 2);
/// IA32_EFER (SDM Vol. 4, "Model-Specific Registers", C000_0080H).
pub const MSR_EFER: u32 = 0xC000_0080;
/// EFER.LME (bit 8): long mode enable.
pub const EFER_LME: u32 = 1 << 8;
/// EFER.NXE (bit 11): execute-disable bit in page tables (needs CPUID 8000_0001h EDX bit 20).
pub const EFER_NXE: u32 = 1 << 11;

/// How far an AP got. [`STAGE_FOUND`] is written into its CPU table entry (paging still off);
/// the later stages into its slot (the table is not mapped once paging is on).
pub const STAGE_NONE: u32 = 0;
/// Protected mode: found its armed entry in the CPU table, about to enable paging.
pub const STAGE_FOUND: u32 = 2;
/// Long mode on the instance's page tables, slot descriptors loaded.
pub const STAGE_LONG: u32 = 3;
/// Everything loaded; the AP is jumping to the entry point. This is "checked in".
pub const STAGE_JUMPING: u32 = 4;

/// [`CpuEntry::armed`] value of an entry the AP may use ("ARMD").
pub const ARMED: u32 = u32::from_le_bytes(*b"ARMD");

/// Operand of `lgdt`/`lidt`: 16-bit limit, then base (32-bit use reads 6 bytes, 64-bit 10).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, packed)]
pub struct DescriptorPointer {
    pub limit: u16,
    pub base: u64,
}

/// Operand of an indirect far jump `ljmpl *m16:32`: offset, then selector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, packed)]
pub struct FarPointer {
    pub offset: u32,
    pub selector: u16,
}

/// The start page's header, at [`HEADER_OFFSET`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct StartHeader {
    /// Null, 32-bit code (0x08), data (0x10), 64-bit code (0x18): the transition GDT.
    pub gdt: [u64; 4],
    pub gdtr: DescriptorPointer,
    pub _pad0: [u8; 6],
    pub pm32_target: FarPointer,
    pub _pad1: [u8; 2],
    pub lm64_target: FarPointer,
    pub _pad2: [u8; 2],
    /// Physical address of the CPU table (below 4 GiB) and its number of entries.
    pub table: u32,
    pub table_len: u32,
    /// Bits ORed into IA32_EFER's low half: [`EFER_LME`], plus [`EFER_NXE`] when used.
    pub efer_or: u32,
    /// Written by APs: how many ran the real-mode code (a locked increment).
    pub entered: u32,
    /// Written by APs: how many found no armed entry for their APIC ID, and the last one's ID.
    pub strays: u32,
    pub stray_apic_id: u32,
}

/// One CPU table entry: which armed APIC ID goes where.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct CpuEntry {
    pub apic_id: u32,
    /// [`ARMED`] while the manager expects this CPU to start; anything else is skipped.
    pub armed: u32,
    /// The instance's PML4 (below 4 GiB).
    pub cr3: u32,
    /// Written by the AP: [`STAGE_FOUND`].
    pub stage: u32,
    /// Physical (= virtual in the instance's tables) address of the CPU's [`Slot`].
    pub slot: u64,
    /// Written by the AP: its TSC when it found the entry.
    pub tsc: u64,
}

/// Which GDT layout a slot gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selectors {
    /// The multikernel boot protocol's: 0x08 32-bit code, 0x10 data, 0x18 64-bit code (CS),
    /// 0x20 TSS (unchanged since version 1).
    Multikernel,
    /// Linux's 64-bit boot protocol (`Documentation/arch/x86/boot.rst`, "64-bit Boot
    /// Protocol"): `__BOOT_CS` = 0x10 (64-bit code), `__BOOT_DS` = 0x18 (data), 0x20 TSS.
    Linux,
}

impl Selectors {
    /// (CS, DS/ES/SS) for this layout.
    pub const fn code_data(self) -> (u16, u16) {
        match self {
            Selectors::Multikernel => (0x18, 0x10),
            Selectors::Linux => (0x10, 0x18),
        }
    }

    const fn gdt(self, tss: [u64; 2]) -> [u64; 7] {
        match self {
            Selectors::Multikernel => [0, GDT_CODE32, GDT_DATA, GDT_CODE64, tss[0], tss[1], 0],
            Selectors::Linux => [0, GDT_CODE32, GDT_CODE64, GDT_DATA, tss[0], tss[1], 0],
        }
    }
}

/// A CPU's slot page: what it runs with from long mode on. The IDT follows at
/// [`SLOT_IDT_OFFSET`], the exception stack fills the page from [`SLOT_STACK_BOTTOM`] up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Slot {
    /// Null, then the [`Selectors`] layout: code and data descriptors, 64-bit TSS (two
    /// entries), unused.
    pub gdt: [u64; 7],
    pub gdtr: DescriptorPointer,
    pub _pad0: [u8; 6],
    pub idtr: DescriptorPointer,
    pub _pad1: [u8; 6],
    /// Selectors loaded into CS and into DS/ES/SS/FS/GS.
    pub cs: u16,
    pub ds: u16,
    pub _pad2: u32,
    pub entry: u64,
    /// Initial stack top (16-byte aligned; a zero return address is pushed), or 0 to leave
    /// the stack on the slot's own exception stack (for kernels that set up their own).
    pub stack_top: u64,
    /// Loaded into `RDI` and `RSI` at entry.
    pub arg0: u64,
    pub arg1: u64,
    /// The instance's status block (the exception stubs write the fault record there), or 0.
    pub status_block: u64,
    /// Written by the AP: [`STAGE_LONG`], then [`STAGE_JUMPING`].
    pub checkin_stage: u32,
    /// Written by the AP: its own APIC ID (x2APIC ID when CPUID leaf 0Bh exists).
    pub checkin_apic_id: u32,
    /// Written by the AP: its TSC when it checked in.
    pub checkin_tsc: u64,
    pub _pad3: u64,
    /// 64-bit TSS (SDM Vol. 3A, "Task Management in 64-bit Mode"): only IST1 is used.
    pub tss: [u8; TSS_SIZE],
}

pub const TSS_SIZE: usize = 104;
/// IST1's offset inside the 64-bit TSS.
const TSS_IST1: usize = 0x24;
/// I/O map base field offset inside the TSS.
const TSS_IOMAP_BASE: usize = 0x66;

/// The park page's record, at [`HEADER_OFFSET`]: every parked CPU appends its APIC ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct ParkLog {
    /// Incremented (locked) by each CPU that runs the park code; may exceed the capacity.
    pub count: u32,
    pub _pad: u32,
    /// `ids[i]` for `i < min(count, PARK_LOG_CAPACITY)`; [`PARK_LOG_EMPTY`] until written.
    pub ids: [u32; PARK_LOG_CAPACITY],
}

/// How many IDs the park log holds; further CPUs are counted but not recorded.
pub const PARK_LOG_CAPACITY: usize = (PAGE_SIZE - HEADER_OFFSET - 8) / 4;
/// An unwritten park log entry (an APIC ID no CPU has: the MADT's x2APIC placeholder).
pub const PARK_LOG_EMPTY: u32 = u32::MAX;

const _: () = {
    assert!(offset_of!(StartHeader, gdt) == 0x00);
    assert!(offset_of!(StartHeader, gdtr) == 0x20);
    assert!(offset_of!(StartHeader, pm32_target) == 0x30);
    assert!(offset_of!(StartHeader, lm64_target) == 0x38);
    assert!(offset_of!(StartHeader, table) == 0x40);
    assert!(offset_of!(StartHeader, entered) == 0x4c);
    assert!(size_of::<StartHeader>() == 0x58);
    assert!(HEADER_OFFSET + size_of::<StartHeader>() <= PAGE_SIZE);
    assert!(CODE_MAX <= HEADER_OFFSET);
    assert!(size_of::<CpuEntry>() == 32);
    assert!(offset_of!(CpuEntry, slot) == 16);
    assert!(offset_of!(Slot, gdtr) == 0x38);
    assert!(offset_of!(Slot, idtr) == 0x48);
    assert!(offset_of!(Slot, cs) == 0x58);
    assert!(offset_of!(Slot, entry) == 0x60);
    assert!(offset_of!(Slot, status_block) == 0x80);
    assert!(offset_of!(Slot, checkin_stage) == 0x88);
    assert!(offset_of!(Slot, tss) == 0xA0);
    assert!(size_of::<Slot>() <= SLOT_IDT_OFFSET);
    assert!(SLOT_IDT_OFFSET + IDT_ENTRIES * 16 <= SLOT_STACK_BOTTOM);
    // Leave at least 2 KiB of exception stack.
    assert!(PAGE_SIZE - SLOT_STACK_BOTTOM >= 2048);
    assert!(size_of::<DescriptorPointer>() == 10);
    assert!(size_of::<FarPointer>() == 6);
    assert!(HEADER_OFFSET + size_of::<ParkLog>() <= PAGE_SIZE);
    // Real-mode code addresses the headers with 16-bit offsets.
    assert!(PAGE_SIZE < 0x10000);
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrampolineError {
    /// A start or park page must be 4 KiB aligned, below 1 MiB, not page 0, and its SIPI
    /// vector must not be one of the reserved vectors A0h–BFh (SDM Vol. 3A, "MP
    /// Initialization Protocol Algorithm for MP Systems").
    BadPage { page: u64 },
    /// The CPU table must be 8-byte aligned and lie below 4 GiB.
    BadTable { table: u64, entries: u64 },
    /// CR3 is loaded from 32-bit code: the PML4 must be 4 KiB aligned and below 4 GiB.
    BadCr3 { cr3: u64 },
    /// The stack top must be 0 or 16-byte aligned.
    BadStack { stack_top: u64 },
    /// A slot must be a 4 KiB-aligned page.
    BadSlot { slot: u64 },
    /// The assembled code is larger than its area (cannot happen with this crate's assembly).
    CodeTooLarge { len: usize },
    /// A stub offset in the code's table points outside the code.
    BadStubOffset { vector: usize, offset: u16 },
}

impl fmt::Display for TrampolineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrampolineError::BadPage { page } => write!(
                f,
                "start-up page {page:#x} is unusable: it must be a 4 KiB page in 0x1000..0x100000 \
                 outside 0xa0000..0xc0000"
            ),
            TrampolineError::BadTable { table, entries } => write!(
                f,
                "the CPU table at {table:#x} ({entries} entries) must be 8-byte aligned and below \
                 4 GiB"
            ),
            TrampolineError::BadCr3 { cr3 } => {
                write!(f, "page-table root {cr3:#x} must be 4 KiB aligned and below 4 GiB")
            }
            TrampolineError::BadStack { stack_top } => {
                write!(f, "stack top {stack_top:#x} must be 0 or 16-byte aligned")
            }
            TrampolineError::BadSlot { slot } => {
                write!(f, "CPU slot {slot:#x} must be a 4 KiB-aligned page")
            }
            TrampolineError::CodeTooLarge { len } => {
                write!(f, "start-up code is {len} bytes, more than its {CODE_MAX}-byte area")
            }
            TrampolineError::BadStubOffset { vector, offset } => {
                write!(f, "exception stub {vector} at offset {offset:#x} lies outside the code")
            }
        }
    }
}

impl core::error::Error for TrampolineError {}

/// The assembled start-up code, as linked into this binary, and the offsets of its labels.
#[derive(Clone, Copy, Debug)]
pub struct Code<'a> {
    pub bytes: &'a [u8],
    pub pm32_offset: usize,
    pub lm64_offset: usize,
    pub stub_offsets: [u16; IDT_ENTRIES],
}

extern "C" {
    static mk_start_begin: u8;
    static mk_start_pm32: u8;
    static mk_start_lm64: u8;
    static mk_start_stub_table: [u16; IDT_ENTRIES];
    static mk_start_end: u8;
    static mk_park_begin: u8;
    static mk_park_end: u8;
}

/// The start-up code assembled into this binary.
pub fn start_code() -> Code<'static> {
    let start = core::ptr::addr_of!(mk_start_begin);
    let pm32 = core::ptr::addr_of!(mk_start_pm32) as usize;
    let lm64 = core::ptr::addr_of!(mk_start_lm64) as usize;
    let end = core::ptr::addr_of!(mk_start_end) as usize;
    let len = end - start as usize;
    // SAFETY: `mk_start_begin..mk_start_end` are two labels of one contiguous, read-only block
    // of bytes emitted by `asm.rs`, in that order; the block lives for the whole program and
    // is never written.
    let bytes = unsafe { core::slice::from_raw_parts(start, len) };
    // SAFETY: the stub table is 32 `.word`s emitted by `asm.rs` under this symbol, 2-aligned.
    let stub_offsets = unsafe { core::ptr::addr_of!(mk_start_stub_table).read() };
    Code {
        bytes,
        pm32_offset: pm32 - start as usize,
        lm64_offset: lm64 - start as usize,
        stub_offsets,
    }
}

/// The parking code assembled into this binary.
pub fn park_code() -> &'static [u8] {
    let start = core::ptr::addr_of!(mk_park_begin);
    let end = core::ptr::addr_of!(mk_park_end) as usize;
    // SAFETY: two labels of one contiguous read-only block emitted by `asm.rs`, in order.
    unsafe { core::slice::from_raw_parts(start, end - start as usize) }
}

/// Flat 4 GiB descriptors (SDM Vol. 3A, "Segment Descriptors"; "Code-Segment Descriptor in
/// 64-bit Mode"): G=1, P=1, S=1; code32 D=1 type 0xB; data D/B=1 type 0x3; code64 L=1 type
/// 0xB. The types have the accessed bit set, so loading them never writes the descriptor.
pub const GDT_CODE32: u64 = 0x00CF_9B00_0000_FFFF;
pub const GDT_DATA: u64 = 0x00CF_9300_0000_FFFF;
pub const GDT_CODE64: u64 = 0x00AF_9B00_0000_FFFF;
/// Present, DPL 0, 64-bit interrupt gate (type 0xE): SDM Vol. 3A, "IDT Descriptors".
pub const GATE_INTERRUPT: u8 = 0x8E;
/// Available 64-bit TSS system descriptor type (0x9), present.
const TSS_TYPE_PRESENT: u64 = 0x89;

/// One 64-bit IDT gate.
pub fn idt_gate(handler: u64, selector: u16, ist: u8) -> [u8; 16] {
    let mut g = [0u8; 16];
    g[0..2].copy_from_slice(&(handler as u16).to_le_bytes());
    g[2..4].copy_from_slice(&selector.to_le_bytes());
    g[4] = ist & 0x7;
    g[5] = GATE_INTERRUPT;
    g[6..8].copy_from_slice(&((handler >> 16) as u16).to_le_bytes());
    g[8..12].copy_from_slice(&((handler >> 32) as u32).to_le_bytes());
    g
}

/// The two GDT slots of a 64-bit TSS descriptor.
pub fn tss_descriptor(base: u64, limit: u32) -> [u64; 2] {
    let low = (limit as u64 & 0xFFFF)
        | ((base & 0xFF_FFFF) << 16)
        | (TSS_TYPE_PRESENT << 40)
        | (((limit as u64 >> 16) & 0xF) << 48)
        | (((base >> 24) & 0xFF) << 56);
    [low, base >> 32]
}

/// The SIPI vector of a start or park page, if the page is valid (SDM: a 4 KiB page below
/// 1 MiB; vectors A0h–BFh are reserved).
pub fn sipi_vector(page: u64) -> Option<u8> {
    let valid = page.is_multiple_of(PAGE_SIZE as u64) && (0x1000..0x10_0000).contains(&page);
    let vector = (page >> 12) as u8;
    (valid && !(0xA0..=0xBF).contains(&vector)).then_some(vector)
}

/// Little-endian field writer over a byte buffer, at `repr(C)` offsets: no transmutes.
struct Out<'a>(&'a mut [u8]);

impl Out<'_> {
    fn put(&mut self, off: usize, bytes: &[u8]) {
        self.0[off..off + bytes.len()].copy_from_slice(bytes);
    }
    fn u16(&mut self, off: usize, v: u16) {
        self.put(off, &v.to_le_bytes());
    }
    fn u32(&mut self, off: usize, v: u32) {
        self.put(off, &v.to_le_bytes());
    }
    fn u64(&mut self, off: usize, v: u64) {
        self.put(off, &v.to_le_bytes());
    }
    fn descriptor_pointer(&mut self, off: usize, p: DescriptorPointer) {
        self.u16(off, p.limit);
        self.u64(off + 2, p.base);
    }
    fn far_pointer(&mut self, off: usize, p: FarPointer) {
        self.u32(off, p.offset);
        self.u16(off + 4, p.selector);
    }
}

/// Reads little-endian fields back (for the manager's view of AP-written records).
fn le_u32(b: &[u8], off: usize) -> u32 {
    bootproto::le::u32_at(b, off).unwrap_or(0)
}

fn le_u64(b: &[u8], off: usize) -> u64 {
    bootproto::le::u64_at(b, off).unwrap_or(0)
}

/// The exact bytes of the start page that will live at physical `page`, with the CPU table of
/// `table_len` entries at `table`.
pub fn build_start_page(
    code: &Code<'_>,
    page: u64,
    table: u64,
    table_len: u32,
    nxe: bool,
) -> Result<[u8; PAGE_SIZE], TrampolineError> {
    if sipi_vector(page).is_none() {
        return Err(TrampolineError::BadPage { page });
    }
    let table_end = (table_len as u64)
        .checked_mul(size_of::<CpuEntry>() as u64)
        .and_then(|n| table.checked_add(n));
    if !table.is_multiple_of(8) || table_end.is_none_or(|end| end > 1 << 32) {
        return Err(TrampolineError::BadTable { table, entries: table_len as u64 });
    }
    if code.bytes.len() > CODE_MAX {
        return Err(TrampolineError::CodeTooLarge { len: code.bytes.len() });
    }
    let mut page_bytes = [0u8; PAGE_SIZE];
    page_bytes[..code.bytes.len()].copy_from_slice(code.bytes);
    for (vector, &off) in code.stub_offsets.iter().enumerate() {
        if off as usize >= code.bytes.len() {
            return Err(TrampolineError::BadStubOffset { vector, offset: off });
        }
    }
    let h = HEADER_OFFSET;
    let mut out = Out(&mut page_bytes);
    for (i, d) in [0, GDT_CODE32, GDT_DATA, GDT_CODE64].iter().enumerate() {
        out.u64(h + offset_of!(StartHeader, gdt) + i * 8, *d);
    }
    let gdtr = DescriptorPointer {
        limit: (4 * 8 - 1) as u16,
        base: page + (h + offset_of!(StartHeader, gdt)) as u64,
    };
    out.descriptor_pointer(h + offset_of!(StartHeader, gdtr), gdtr);
    // The page is below 1 MiB, so page-relative code addresses fit the 32-bit offsets.
    let pm32 = FarPointer { offset: (page + code.pm32_offset as u64) as u32, selector: SEL_CODE32 };
    out.far_pointer(h + offset_of!(StartHeader, pm32_target), pm32);
    let lm64 = FarPointer { offset: (page + code.lm64_offset as u64) as u32, selector: SEL_CODE64 };
    out.far_pointer(h + offset_of!(StartHeader, lm64_target), lm64);
    out.u32(h + offset_of!(StartHeader, table), table as u32);
    out.u32(h + offset_of!(StartHeader, table_len), table_len);
    out.u32(h + offset_of!(StartHeader, efer_or), EFER_LME | if nxe { EFER_NXE } else { 0 });
    Ok(page_bytes)
}

/// What the AP-written counters of a start page say (read from a copy of the page).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StartCounters {
    pub entered: u32,
    pub strays: u32,
    pub stray_apic_id: u32,
}

impl StartCounters {
    pub fn read(page: &[u8]) -> StartCounters {
        let h = HEADER_OFFSET;
        StartCounters {
            entered: le_u32(page, h + offset_of!(StartHeader, entered)),
            strays: le_u32(page, h + offset_of!(StartHeader, strays)),
            stray_apic_id: le_u32(page, h + offset_of!(StartHeader, stray_apic_id)),
        }
    }
}

/// The bytes of one CPU table entry.
pub fn cpu_entry(apic_id: u32, cr3: u64, slot: u64) -> Result<[u8; 32], TrampolineError> {
    if !cr3.is_multiple_of(PAGE_SIZE as u64) || cr3 >= 1 << 32 {
        return Err(TrampolineError::BadCr3 { cr3 });
    }
    if !slot.is_multiple_of(PAGE_SIZE as u64) {
        return Err(TrampolineError::BadSlot { slot });
    }
    let mut b = [0u8; 32];
    let mut out = Out(&mut b);
    out.u32(offset_of!(CpuEntry, apic_id), apic_id);
    out.u32(offset_of!(CpuEntry, armed), ARMED);
    out.u32(offset_of!(CpuEntry, cr3), cr3 as u32);
    out.u64(offset_of!(CpuEntry, slot), slot);
    Ok(b)
}

/// The AP-written fields of a CPU table entry (read from a copy of the entry's 32 bytes).
pub fn entry_stage(entry: &[u8]) -> (u32, u64) {
    (le_u32(entry, offset_of!(CpuEntry, stage)), le_u64(entry, offset_of!(CpuEntry, tsc)))
}

/// Offset of the `armed` word in a CPU table entry (the manager disarms an entry by writing 0).
pub const ENTRY_ARMED_OFFSET: usize = offset_of!(CpuEntry, armed);

/// Where a CPU goes from its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotTarget {
    pub entry: u64,
    /// 0: stay on the slot's exception stack (the kernel sets its own).
    pub stack_top: u64,
    pub arg0: u64,
    pub arg1: u64,
    /// 0: exceptions before the kernel's own IDT just park the CPU.
    pub status_block: u64,
    pub selectors: Selectors,
}

/// The exact bytes of the slot page at physical (= virtual) `slot`, whose exception gates
/// point at the stubs in the start page at `start_page`.
pub fn build_slot(
    code: &Code<'_>,
    start_page: u64,
    slot: u64,
    target: &SlotTarget,
) -> Result<[u8; PAGE_SIZE], TrampolineError> {
    if sipi_vector(start_page).is_none() {
        return Err(TrampolineError::BadPage { page: start_page });
    }
    if !slot.is_multiple_of(PAGE_SIZE as u64) || slot.checked_add(PAGE_SIZE as u64).is_none() {
        return Err(TrampolineError::BadSlot { slot });
    }
    if !target.stack_top.is_multiple_of(16) {
        return Err(TrampolineError::BadStack { stack_top: target.stack_top });
    }
    let (cs, ds) = target.selectors.code_data();
    let mut page = [0u8; PAGE_SIZE];
    for (vector, &off) in code.stub_offsets.iter().enumerate() {
        if off as usize >= code.bytes.len() {
            return Err(TrampolineError::BadStubOffset { vector, offset: off });
        }
        let gate = idt_gate(start_page + off as u64, cs, 1);
        let at = SLOT_IDT_OFFSET + vector * 16;
        page[at..at + 16].copy_from_slice(&gate);
    }
    let mut tss = [0u8; TSS_SIZE];
    tss[TSS_IST1..TSS_IST1 + 8].copy_from_slice(&(slot + PAGE_SIZE as u64).to_le_bytes());
    tss[TSS_IOMAP_BASE..TSS_IOMAP_BASE + 2].copy_from_slice(&(TSS_SIZE as u16).to_le_bytes());
    let tss_base = slot + offset_of!(Slot, tss) as u64;
    let gdt = target.selectors.gdt(tss_descriptor(tss_base, TSS_SIZE as u32 - 1));

    let mut out = Out(&mut page);
    for (i, d) in gdt.iter().enumerate() {
        out.u64(offset_of!(Slot, gdt) + i * 8, *d);
    }
    out.descriptor_pointer(
        offset_of!(Slot, gdtr),
        DescriptorPointer { limit: (7 * 8 - 1) as u16, base: slot + offset_of!(Slot, gdt) as u64 },
    );
    out.descriptor_pointer(
        offset_of!(Slot, idtr),
        DescriptorPointer {
            limit: (IDT_ENTRIES * 16 - 1) as u16,
            base: slot + SLOT_IDT_OFFSET as u64,
        },
    );
    out.u16(offset_of!(Slot, cs), cs);
    out.u16(offset_of!(Slot, ds), ds);
    out.u64(offset_of!(Slot, entry), target.entry);
    out.u64(offset_of!(Slot, stack_top), target.stack_top);
    out.u64(offset_of!(Slot, arg0), target.arg0);
    out.u64(offset_of!(Slot, arg1), target.arg1);
    out.u64(offset_of!(Slot, status_block), target.status_block);
    out.put(offset_of!(Slot, tss), &tss);
    Ok(page)
}

/// A CPU's check-in, as its slot records it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checkin {
    pub stage: u32,
    pub apic_id: u32,
    pub tsc: u64,
}

/// Offsets of the check-in fields in a slot, so the manager reads only those bytes.
pub const SLOT_CHECKIN_OFFSET: usize = offset_of!(Slot, checkin_stage);
pub const SLOT_CHECKIN_LEN: usize = 16;

impl Checkin {
    /// Reads a check-in from the 16 bytes at [`SLOT_CHECKIN_OFFSET`] of a slot.
    pub fn read(bytes: &[u8]) -> Checkin {
        Checkin { stage: le_u32(bytes, 0), apic_id: le_u32(bytes, 4), tsc: le_u64(bytes, 8) }
    }
}

/// The exact bytes of a park page: the code, then an empty log.
pub fn build_park_page() -> [u8; PAGE_SIZE] {
    let mut out = [0u8; PAGE_SIZE];
    let code = park_code();
    out[..code.len()].copy_from_slice(code);
    clear_park_log(&mut out[HEADER_OFFSET..]);
    out
}

/// The bytes of an empty park log (written before each batch of parks).
pub fn clear_park_log(log: &mut [u8]) {
    let n = log.len().min(size_of::<ParkLog>());
    for b in &mut log[..8.min(n)] {
        *b = 0;
    }
    for b in log.get_mut(8..n).into_iter().flatten() {
        *b = 0xFF;
    }
}

/// Whether `apic_id` has written itself into a copy of the park log (the bytes at
/// [`HEADER_OFFSET`] of the park page). Trusts nothing: the count is clamped to the capacity.
pub fn park_log_has(log: &[u8], apic_id: u32) -> bool {
    let count = (le_u32(log, offset_of!(ParkLog, count)) as usize).min(PARK_LOG_CAPACITY);
    (0..count).any(|i| le_u32(log, offset_of!(ParkLog, ids) + i * 4) == apic_id)
}

/// What a stage means, for messages about a CPU that did not check in.
pub fn stage_name(stage: u32) -> &'static str {
    match stage {
        STAGE_NONE => "never found its start parameters (no sign of it past real mode)",
        STAGE_FOUND => "stopped in protected mode while enabling paging and long mode",
        STAGE_LONG => "stopped in long mode before jumping to the entry point",
        STAGE_JUMPING => "jumped to the entry point",
        _ => "wrote an unknown stage",
    }
}

#[cfg(test)]
mod tests;
