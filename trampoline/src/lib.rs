//! The AP start-up trampoline: the code an application processor runs after its SIPI, and the
//! parameter block that tells it where to go.
//!
//! A SIPI starts the AP in real mode at `CS:IP = (vector << 8):0000`, i.e. at the start of a
//! 4 KiB page below 1 MiB (SDM Vol. 3A, "MP Initialization Protocol Algorithm for MP
//! Systems"). Each instance gets a page of its own, laid out as:
//!
//! | offset | size | what |
//! |---|---|---|
//! | `0x000` | ≤ [`CODE_MAX`] | the code ([`blob`]), copied verbatim |
//! | [`IDT_OFFSET`] | 512 | 32 interrupt gates → the exception stubs in the code |
//! | [`PARAMS_OFFSET`] | `size_of::<TrampolineParams>()` | GDT, descriptor pointers, far pointers, CR3, entry, stack, boot info, check-in, TSS |
//! | up to `0x1000` | rest | the stack the exception stubs run on (TSS IST1) |
//!
//! Because every instance has its own page, all APs can be started at once, and the page
//! stays valid (and mapped in the instance's tables) after start: it holds the early IDT,
//! GDT and TSS the payload runs with until it installs its own.
//!
//! [`build_page`] is the pure part: given where the page will live and the instance's
//! parameters, it returns the page's exact bytes. It is host-tested; the manager only copies
//! the result to physical memory.
//!
//! # Invariants
//! - The code never contains its own address; the far pointers, GDTR, IDT and TSS are the
//!   only page-address-dependent bytes, and [`build_page`] writes all of them.
//! - CR3 is loaded in 32-bit mode, so the instance's top-level page table must be below 4 GiB.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]

mod asm;

use core::fmt;
use core::mem::{offset_of, size_of};

pub const PAGE_SIZE: usize = 4096;
/// Bytes reserved for the code; the assembler refuses to build a larger blob.
pub const CODE_MAX: usize = 0x800;
/// 32 gates × 16 bytes (SDM Vol. 3A, "64-Bit Mode IDT").
pub const IDT_OFFSET: usize = 0x800;
pub const IDT_ENTRIES: usize = 32;
pub const PARAMS_OFFSET: usize = 0xA00;
/// Top of the exception stack (TSS IST1): the end of the page.
pub const IST_STACK_TOP: usize = PAGE_SIZE;

// GDT selectors (index × 8): SDM Vol. 3A, "Segment Selectors".
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

/// Check-in stages the AP writes into [`TrampolineParams::checkin_stage`].
pub const STAGE_NONE: u32 = 0;
pub const STAGE_REAL: u32 = 1;
pub const STAGE_PROTECTED: u32 = 2;
pub const STAGE_LONG: u32 = 3;
/// Everything loaded; the AP is jumping to the entry point. This is "checked in".
pub const STAGE_JUMPING: u32 = 4;

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

/// The parameter block at [`PARAMS_OFFSET`] in the trampoline page.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct TrampolineParams {
    /// Null, 32-bit code, data, 64-bit code, 64-bit TSS (two slots), unused.
    pub gdt: [u64; 7],
    pub gdtr: DescriptorPointer,
    pub _pad0: [u8; 6],
    pub idtr: DescriptorPointer,
    pub _pad1: [u8; 6],
    pub pm32_target: FarPointer,
    pub _pad2: [u8; 2],
    pub lm64_target: FarPointer,
    pub _pad3: [u8; 2],
    /// Physical address of the PML4 (below 4 GiB).
    pub cr3: u64,
    /// Bits ORed into IA32_EFER's low half: [`EFER_LME`], plus [`EFER_NXE`] when used.
    pub efer_or: u64,
    pub stack_top: u64,
    pub entry: u64,
    pub boot_info: u64,
    /// The instance's status block; the exception stubs write the fault record there.
    pub status_block: u64,
    /// Written by the AP: one of the `STAGE_*` values.
    pub checkin_stage: u32,
    /// Written by the AP: its own APIC ID (x2APIC ID when CPUID leaf 0Bh exists).
    pub checkin_apic_id: u32,
    /// Written by the AP: its TSC when it checked in.
    pub checkin_tsc: u64,
    /// 64-bit TSS (SDM Vol. 3A, "Task Management in 64-bit Mode"): only IST1 is used.
    pub tss: [u8; TSS_SIZE],
}

pub const TSS_SIZE: usize = 104;
/// IST1's offset inside the 64-bit TSS.
const TSS_IST1: usize = 0x24;
/// I/O map base field offset inside the TSS.
const TSS_IOMAP_BASE: usize = 0x66;

const _: () = {
    assert!(offset_of!(TrampolineParams, gdt) == 0x00);
    assert!(offset_of!(TrampolineParams, gdtr) == 0x38);
    assert!(offset_of!(TrampolineParams, idtr) == 0x48);
    assert!(offset_of!(TrampolineParams, pm32_target) == 0x58);
    assert!(offset_of!(TrampolineParams, lm64_target) == 0x60);
    assert!(offset_of!(TrampolineParams, cr3) == 0x68);
    assert!(offset_of!(TrampolineParams, checkin_stage) == 0x98);
    assert!(offset_of!(TrampolineParams, tss) == 0xA8);
    assert!(size_of::<DescriptorPointer>() == 10);
    assert!(size_of::<FarPointer>() == 6);
    assert!(IDT_OFFSET + IDT_ENTRIES * 16 <= PARAMS_OFFSET);
    assert!(CODE_MAX <= IDT_OFFSET);
    // Leave at least 1 KiB of exception stack.
    assert!(PARAMS_OFFSET + size_of::<TrampolineParams>() + 1024 <= IST_STACK_TOP);
    // Real-mode code addresses the block with 16-bit offsets.
    assert!(PARAMS_OFFSET + size_of::<TrampolineParams>() < 0x10000);
};

/// Where the manager wants the AP to go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub cr3: u64,
    pub entry: u64,
    pub stack_top: u64,
    pub boot_info: u64,
    pub status_block: u64,
    /// Set EFER.NXE (the page tables use the execute-disable bit).
    pub nxe: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrampolineError {
    /// The page must be 4 KiB aligned, below 1 MiB, not page 0, and its SIPI vector must not
    /// be one of the reserved vectors A0h–BFh (SDM Vol. 3A, "MP Initialization Protocol
    /// Algorithm for MP Systems").
    BadPage { page: u64 },
    /// CR3 is loaded from 32-bit code: the PML4 must be 4 KiB aligned and below 4 GiB.
    BadCr3 { cr3: u64 },
    /// The stack top must be 16-byte aligned and non-zero.
    BadStack { stack_top: u64 },
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
                "trampoline page {page:#x} is unusable: it must be a 4 KiB page in 0x1000..0x100000 outside 0xa0000..0xc0000"
            ),
            TrampolineError::BadCr3 { cr3 } => {
                write!(f, "page-table root {cr3:#x} must be 4 KiB aligned and below 4 GiB")
            }
            TrampolineError::BadStack { stack_top } => {
                write!(f, "stack top {stack_top:#x} must be non-zero and 16-byte aligned")
            }
            TrampolineError::CodeTooLarge { len } => {
                write!(f, "trampoline code is {len} bytes, more than its {CODE_MAX}-byte area")
            }
            TrampolineError::BadStubOffset { vector, offset } => {
                write!(f, "exception stub {vector} at offset {offset:#x} lies outside the code")
            }
        }
    }
}

/// The assembled code, as linked into this binary, and the offsets of its labels.
#[derive(Clone, Copy, Debug)]
pub struct Code<'a> {
    pub bytes: &'a [u8],
    pub pm32_offset: usize,
    pub lm64_offset: usize,
    pub stub_offsets: [u16; IDT_ENTRIES],
}

extern "C" {
    static mk_trampoline_start: u8;
    static mk_trampoline_pm32: u8;
    static mk_trampoline_lm64: u8;
    static mk_trampoline_stub_table: [u16; IDT_ENTRIES];
    static mk_trampoline_end: u8;
}

/// The trampoline code assembled into this binary.
pub fn blob() -> Code<'static> {
    let start = core::ptr::addr_of!(mk_trampoline_start);
    let pm32 = core::ptr::addr_of!(mk_trampoline_pm32) as usize;
    let lm64 = core::ptr::addr_of!(mk_trampoline_lm64) as usize;
    let end = core::ptr::addr_of!(mk_trampoline_end) as usize;
    let len = end - start as usize;
    // SAFETY: `mk_trampoline_start..mk_trampoline_end` are two labels of one contiguous,
    // read-only block of bytes emitted by `asm.rs`, in that order; the block lives for the
    // whole program and is never written.
    let bytes = unsafe { core::slice::from_raw_parts(start, len) };
    // SAFETY: the stub table is 32 `.word`s emitted by `asm.rs` under this symbol, 2-aligned.
    let stub_offsets = unsafe { core::ptr::addr_of!(mk_trampoline_stub_table).read() };
    Code {
        bytes,
        pm32_offset: pm32 - start as usize,
        lm64_offset: lm64 - start as usize,
        stub_offsets,
    }
}

/// Flat 4 GiB descriptors (SDM Vol. 3A, "Segment Descriptors"; "Code-Segment Descriptor in
/// 64-bit Mode"): G=1, P=1, S=1; code32 D=1 type 0xA; data D/B=1 type 0x2; code64 L=1 type 0xA.
pub const GDT_CODE32: u64 = 0x00CF_9A00_0000_FFFF;
pub const GDT_DATA: u64 = 0x00CF_9200_0000_FFFF;
pub const GDT_CODE64: u64 = 0x00AF_9A00_0000_FFFF;
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

/// Is `page` a valid SIPI start page?
pub fn valid_page(page: u64) -> bool {
    page.is_multiple_of(PAGE_SIZE as u64)
        && page != 0
        && page < 0x10_0000
        && !(0xA_0000..0xC_0000).contains(&page)
}

/// The exact bytes of a trampoline page that will live at physical `page`.
pub fn build_page(
    code: &Code<'_>,
    page: u64,
    target: &Target,
) -> Result<[u8; PAGE_SIZE], TrampolineError> {
    if !valid_page(page) {
        return Err(TrampolineError::BadPage { page });
    }
    if !target.cr3.is_multiple_of(4096) || target.cr3 >= 1 << 32 {
        return Err(TrampolineError::BadCr3 { cr3: target.cr3 });
    }
    if target.stack_top == 0 || !target.stack_top.is_multiple_of(16) {
        return Err(TrampolineError::BadStack { stack_top: target.stack_top });
    }
    if code.bytes.len() > CODE_MAX {
        return Err(TrampolineError::CodeTooLarge { len: code.bytes.len() });
    }
    let mut out = [0u8; PAGE_SIZE];
    out[..code.bytes.len()].copy_from_slice(code.bytes);

    for (vector, &off) in code.stub_offsets.iter().enumerate() {
        if off as usize >= code.bytes.len() {
            return Err(TrampolineError::BadStubOffset { vector, offset: off });
        }
        let gate = idt_gate(page + off as u64, SEL_CODE64, 1);
        let at = IDT_OFFSET + vector * 16;
        out[at..at + 16].copy_from_slice(&gate);
    }

    let params_base = page + PARAMS_OFFSET as u64;
    let mut tss = [0u8; TSS_SIZE];
    tss[TSS_IST1..TSS_IST1 + 8].copy_from_slice(&(page + IST_STACK_TOP as u64).to_le_bytes());
    tss[TSS_IOMAP_BASE..TSS_IOMAP_BASE + 2].copy_from_slice(&(TSS_SIZE as u16).to_le_bytes());
    let tss_base = params_base + offset_of!(TrampolineParams, tss) as u64;
    let [tss_lo, tss_hi] = tss_descriptor(tss_base, TSS_SIZE as u32 - 1);
    let gdt = [0, GDT_CODE32, GDT_DATA, GDT_CODE64, tss_lo, tss_hi, 0];

    let params = TrampolineParams {
        gdt,
        gdtr: DescriptorPointer {
            limit: (size_of::<[u64; 7]>() - 1) as u16,
            base: params_base + offset_of!(TrampolineParams, gdt) as u64,
        },
        _pad0: [0; 6],
        idtr: DescriptorPointer {
            limit: (IDT_ENTRIES * 16 - 1) as u16,
            base: page + IDT_OFFSET as u64,
        },
        _pad1: [0; 6],
        pm32_target: FarPointer {
            offset: (page + code.pm32_offset as u64) as u32,
            selector: SEL_CODE32,
        },
        _pad2: [0; 2],
        lm64_target: FarPointer {
            offset: (page + code.lm64_offset as u64) as u32,
            selector: SEL_CODE64,
        },
        _pad3: [0; 2],
        cr3: target.cr3,
        efer_or: (EFER_LME | if target.nxe { EFER_NXE } else { 0 }) as u64,
        stack_top: target.stack_top,
        entry: target.entry,
        boot_info: target.boot_info,
        status_block: target.status_block,
        checkin_stage: STAGE_NONE,
        checkin_apic_id: 0,
        checkin_tsc: 0,
        tss,
    };
    write_params(&mut out[PARAMS_OFFSET..PARAMS_OFFSET + size_of::<TrampolineParams>()], &params);
    Ok(out)
}

/// Serializes the parameter block field by field (little-endian, at the `repr(C)` offsets),
/// so no unsafe transmute is needed.
fn write_params(out: &mut [u8], p: &TrampolineParams) {
    let mut put = |off: usize, bytes: &[u8]| out[off..off + bytes.len()].copy_from_slice(bytes);
    for (i, d) in p.gdt.iter().enumerate() {
        put(offset_of!(TrampolineParams, gdt) + i * 8, &d.to_le_bytes());
    }
    let gdtr = p.gdtr;
    put(offset_of!(TrampolineParams, gdtr), &{ gdtr.limit }.to_le_bytes());
    put(offset_of!(TrampolineParams, gdtr) + 2, &{ gdtr.base }.to_le_bytes());
    let idtr = p.idtr;
    put(offset_of!(TrampolineParams, idtr), &{ idtr.limit }.to_le_bytes());
    put(offset_of!(TrampolineParams, idtr) + 2, &{ idtr.base }.to_le_bytes());
    let pm = p.pm32_target;
    put(offset_of!(TrampolineParams, pm32_target), &{ pm.offset }.to_le_bytes());
    put(offset_of!(TrampolineParams, pm32_target) + 4, &{ pm.selector }.to_le_bytes());
    let lm = p.lm64_target;
    put(offset_of!(TrampolineParams, lm64_target), &{ lm.offset }.to_le_bytes());
    put(offset_of!(TrampolineParams, lm64_target) + 4, &{ lm.selector }.to_le_bytes());
    put(offset_of!(TrampolineParams, cr3), &p.cr3.to_le_bytes());
    put(offset_of!(TrampolineParams, efer_or), &p.efer_or.to_le_bytes());
    put(offset_of!(TrampolineParams, stack_top), &p.stack_top.to_le_bytes());
    put(offset_of!(TrampolineParams, entry), &p.entry.to_le_bytes());
    put(offset_of!(TrampolineParams, boot_info), &p.boot_info.to_le_bytes());
    put(offset_of!(TrampolineParams, status_block), &p.status_block.to_le_bytes());
    put(offset_of!(TrampolineParams, checkin_stage), &p.checkin_stage.to_le_bytes());
    put(offset_of!(TrampolineParams, checkin_apic_id), &p.checkin_apic_id.to_le_bytes());
    put(offset_of!(TrampolineParams, checkin_tsc), &p.checkin_tsc.to_le_bytes());
    put(offset_of!(TrampolineParams, tss), &p.tss);
}

/// Parking page layout (see `asm.rs`): the record a parked CPU writes.
pub const PARK_MARK_OFFSET: usize = 0x800;
pub const PARK_APIC_OFFSET: usize = 0x804;
/// "PARK", little-endian.
pub const PARK_MAGIC: u32 = u32::from_le_bytes(*b"PARK");

extern "C" {
    static mk_park_start: u8;
    static mk_park_end: u8;
}

/// The parking code: copy it to a start page, clear the record, then INIT + SIPI a CPU to it.
pub fn park_code() -> &'static [u8] {
    let start = core::ptr::addr_of!(mk_park_start);
    let end = core::ptr::addr_of!(mk_park_end) as usize;
    // SAFETY: two labels of one contiguous read-only block emitted by `asm.rs`, in order.
    unsafe { core::slice::from_raw_parts(start, end - start as usize) }
}

/// The exact bytes of a parking page (code, then a cleared record).
pub fn build_park_page() -> [u8; PAGE_SIZE] {
    let mut out = [0u8; PAGE_SIZE];
    let code = park_code();
    out[..code.len()].copy_from_slice(code);
    out
}

/// Offsets of the check-in fields inside the page, for the manager's polling.
pub const CHECKIN_STAGE_OFFSET: usize = PARAMS_OFFSET + offset_of!(TrampolineParams, checkin_stage);
pub const CHECKIN_APIC_ID_OFFSET: usize =
    PARAMS_OFFSET + offset_of!(TrampolineParams, checkin_apic_id);
pub const CHECKIN_TSC_OFFSET: usize = PARAMS_OFFSET + offset_of!(TrampolineParams, checkin_tsc);

/// Reads a check-in from a copy of the page's bytes.
pub fn stage_name(stage: u32) -> &'static str {
    match stage {
        STAGE_NONE => "never ran (no sign of the SIPI)",
        STAGE_REAL => "stopped in real mode",
        STAGE_PROTECTED => "stopped in protected mode (enabling paging/long mode)",
        STAGE_LONG => "stopped in long mode before the entry jump",
        STAGE_JUMPING => "checked in",
        _ => "wrote an unknown stage",
    }
}

#[cfg(test)]
mod tests;
