//! Linux's bzImage: reading its setup header, placing it in an instance's region, and building
//! the zero page (`struct boot_params`) its 64-bit entry point expects.
//!
//! Spec: the Linux x86 boot protocol, `Documentation/arch/x86/boot.rst` ("The Real-Mode Kernel
//! Header", "Details of Header Fields", "64-bit Boot Protocol") and
//! `Documentation/arch/x86/zero-page.rst`; offsets also in `arch/x86/include/uapi/asm/bootparam.h`.
//! What an unmodified Debian kernel needed, measured, is in `shared/research/linux-instance.md`.
//!
//! Design:
//! - [`parse`] checks everything the manager relies on before anything is loaded (boot sector
//!   and `HdrS` signatures, protocol 2.12 or later, the 64-bit entry, relocatable, a sane
//!   `init_size`); `cargo xtask check` and the manager run the same code.
//! - [`place`] decides where the protected-mode kernel goes in a region: at the first address
//!   that is at or above 16 MiB (`LOAD_PHYSICAL_ADDR`: the decompressor moves below-16-MiB
//!   loads there anyway) and aligned to `kernel_alignment`, with `init_size` bytes of room for
//!   the in-place decompression, and the initrd page-aligned above that window.
//! - [`zero_page`] starts from a zeroed page and copies only the setup header (0x1F1 up to the
//!   end the header's own jump names), as kexec does: the byte at 0x1EF (`sentinel`) stays 0,
//!   or Linux would wipe most of the fields. It then fills `type_of_loader`, the command line,
//!   the initrd, `acpi_rsdp_addr` and an e820 table the caller built (only the instance's own
//!   memory). `screen_info` and `efi_info` stay zero: no VGA console, no EFI runtime.
//!
//! Decompression overwrites the loaded image, so the manager keeps the pristine bzImage (in
//! the boot bundle) and copies it again on every start.
//!
//! # Invariants
//! A [`Kernel`] returned by [`parse`] has `protected_mode` inside the image and non-empty,
//! a 64-bit entry, `kernel_alignment` a power of two of at least 4 KiB, and `init_size` at
//! least the protected-mode part. A [`Placement`] lies inside the region it was made for.

use alloc::vec::Vec;
use core::fmt;

use bootproto::le::{u16_at, u32_at, u64_at};

/// Offsets in the image's first sector and the zero page ("The Real-Mode Kernel Header").
pub mod offset {
    pub const SETUP_SECTS: usize = 0x1F1;
    pub const BOOT_FLAG: usize = 0x1FE;
    pub const JUMP: usize = 0x200;
    pub const HEADER: usize = 0x202;
    pub const VERSION: usize = 0x206;
    pub const TYPE_OF_LOADER: usize = 0x210;
    pub const LOADFLAGS: usize = 0x211;
    pub const RAMDISK_IMAGE: usize = 0x218;
    pub const RAMDISK_SIZE: usize = 0x21C;
    pub const CMD_LINE_PTR: usize = 0x228;
    pub const INITRD_ADDR_MAX: usize = 0x22C;
    pub const KERNEL_ALIGNMENT: usize = 0x230;
    pub const RELOCATABLE_KERNEL: usize = 0x234;
    pub const XLOADFLAGS: usize = 0x236;
    pub const CMDLINE_SIZE: usize = 0x238;
    pub const PAYLOAD_OFFSET: usize = 0x248;
    pub const PAYLOAD_LENGTH: usize = 0x24C;
    pub const PREF_ADDRESS: usize = 0x258;
    pub const INIT_SIZE: usize = 0x260;
    /// Zero page ("zero-page.rst"): `acpi_rsdp_addr`, the high halves of the initrd and
    /// command-line addresses, the e820 count, the sentinel and the e820 table.
    pub const ACPI_RSDP_ADDR: usize = 0x070;
    pub const EXT_RAMDISK_IMAGE: usize = 0x0C0;
    pub const EXT_RAMDISK_SIZE: usize = 0x0C4;
    pub const EXT_CMD_LINE_PTR: usize = 0x0C8;
    pub const E820_ENTRIES: usize = 0x1E8;
    pub const SENTINEL: usize = 0x1EF;
    pub const E820_TABLE: usize = 0x2D0;
}

/// `boot_flag`: the boot sector signature.
pub const BOOT_FLAG: u16 = 0xAA55;
/// `header`: "HdrS".
pub const HDRS: u32 = u32::from_le_bytes(*b"HdrS");
/// Protocol 2.12 added `xloadflags` (and with it the 64-bit entry flag).
pub const MIN_VERSION: u16 = 0x020C;
/// `xloadflags` bit 0, `XLF_KERNEL_64`: the kernel has the legacy 64-bit entry at +0x200.
pub const XLF_KERNEL_64: u16 = 1 << 0;
/// `xloadflags` bit 1, `XLF_CAN_BE_LOADED_ABOVE_4G`.
pub const XLF_CAN_BE_LOADED_ABOVE_4G: u16 = 1 << 1;
/// The 64-bit entry is this far into the protected-mode kernel ("64-bit Boot Protocol").
pub const ENTRY_64_OFFSET: u64 = 0x200;
/// `LOAD_PHYSICAL_ADDR` of distribution kernels (CONFIG_PHYSICAL_START): the decompressor runs
/// here when loaded lower (`startup_64` in `arch/x86/boot/compressed/head_64.S`).
pub const MIN_LOAD_ADDRESS: u64 = 16 << 20;
/// `type_of_loader` 0xFF: "undefined" loader ID; nonzero, which `reserve_initrd` needs.
pub const TYPE_OF_LOADER_UNDEFINED: u8 = 0xFF;
/// The zero page holds at most this many e820 entries (`E820_MAX_ENTRIES_ZEROPAGE`).
pub const E820_MAX: usize = 128;
/// e820 entry types ("zero-page.rst", ACPI "Address Range Types").
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;
pub const E820_ACPI: u32 = 3;
pub const PAGE_SIZE: u64 = 4096;
/// The zero page is one page.
pub const ZERO_PAGE_LEN: usize = 4096;
/// Header fields up to `init_size` must exist: the image is at least this long.
const MIN_LEN: usize = offset::INIT_SIZE + 4;

/// Why an image is not a bzImage the manager can boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BzImageError {
    /// Shorter than the setup header.
    TooShort { len: usize },
    /// No 0xAA55 at 0x1FE: not a boot sector.
    NoBootFlag { found: u16 },
    /// No "HdrS" at 0x202: a pre-2.00 kernel or not a kernel.
    NoHdrS,
    /// The boot protocol is older than 2.12 (no 64-bit entry flag).
    OldProtocol { version: u16 },
    /// `xloadflags` lacks `XLF_KERNEL_64`: a 32-bit kernel or one without the 64-bit entry.
    No64BitEntry { xloadflags: u16 },
    /// `relocatable_kernel` is 0: it would run only at its one link address.
    NotRelocatable,
    /// `kernel_alignment` is not a power of two of at least 4 KiB.
    BadAlignment { alignment: u32 },
    /// The setup sectors run past the end of the file, or leave no protected-mode kernel.
    BadSetupSize { setup_bytes: usize, len: usize },
    /// `init_size` is smaller than the protected-mode kernel it must hold.
    BadInitSize { init_size: u32, protected_mode: usize },
}

impl fmt::Display for BzImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BzImageError::TooShort { len } => write!(
                f,
                "not a bzImage: {len} bytes is shorter than the setup header ({MIN_LEN} bytes)"
            ),
            BzImageError::NoBootFlag { found } => write!(
                f,
                "not a bzImage: no boot sector signature 0xAA55 at offset 0x1FE (found {found:#06x})"
            ),
            BzImageError::NoHdrS => {
                f.write_str("not a bzImage: no \"HdrS\" setup header signature at offset 0x202")
            }
            BzImageError::OldProtocol { version } => write!(
                f,
                "boot protocol {}.{:02} is too old: 2.12 or later is needed (Linux 3.8 and later)",
                version >> 8,
                version & 0xFF
            ),
            BzImageError::No64BitEntry { xloadflags } => write!(
                f,
                "the kernel has no 64-bit entry point (xloadflags {xloadflags:#x} lacks \
                 XLF_KERNEL_64): a 64-bit x86 kernel is needed"
            ),
            BzImageError::NotRelocatable => {
                f.write_str("the kernel is not relocatable (relocatable_kernel = 0): build it with CONFIG_RELOCATABLE=y")
            }
            BzImageError::BadAlignment { alignment } => write!(
                f,
                "kernel_alignment {alignment:#x} is not a power of two of at least 4 KiB"
            ),
            BzImageError::BadSetupSize { setup_bytes, len } => write!(
                f,
                "the setup code claims {setup_bytes} bytes of a {len}-byte file, leaving no \
                 protected-mode kernel"
            ),
            BzImageError::BadInitSize { init_size, protected_mode } => write!(
                f,
                "init_size {init_size:#x} is smaller than the {protected_mode:#x}-byte \
                 protected-mode kernel"
            ),
        }
    }
}

impl core::error::Error for BzImageError {}

/// What the manager needs to know about a bzImage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kernel {
    /// Boot protocol version (e.g. 0x020F for 2.15).
    pub version: u16,
    /// File offset and length of the protected-mode kernel (what is loaded).
    pub protected_mode: (usize, usize),
    pub kernel_alignment: u64,
    pub xloadflags: u16,
    /// Bytes the kernel needs from its load address on, to decompress in place.
    pub init_size: u64,
    /// The longest command line, without the terminating NUL.
    pub cmdline_size: u32,
    /// The highest address the initrd may end at, plus one (`initrd_addr_max` + 1).
    pub initrd_end_max: u64,
    /// Where the compressed payload sits in the protected-mode kernel, and its length.
    pub payload: (u32, u32),
    /// End of the setup header (0x202 + the jump's displacement): what is copied.
    pub header_end: usize,
}

/// Reads and checks the setup header of `image`.
pub fn parse(image: &[u8]) -> Result<Kernel, BzImageError> {
    let len = image.len();
    if len < MIN_LEN {
        return Err(BzImageError::TooShort { len });
    }
    let u8_at = |o: usize| image.get(o).copied().unwrap_or(0);
    let w16 = |o: usize| u16_at(image, o).unwrap_or(0);
    let w32 = |o: usize| u32_at(image, o).unwrap_or(0);
    let boot_flag = w16(offset::BOOT_FLAG);
    if boot_flag != BOOT_FLAG {
        return Err(BzImageError::NoBootFlag { found: boot_flag });
    }
    if w32(offset::HEADER) != HDRS {
        return Err(BzImageError::NoHdrS);
    }
    let version = w16(offset::VERSION);
    if version < MIN_VERSION {
        return Err(BzImageError::OldProtocol { version });
    }
    let xloadflags = w16(offset::XLOADFLAGS);
    if xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BzImageError::No64BitEntry { xloadflags });
    }
    if u8_at(offset::RELOCATABLE_KERNEL) == 0 {
        return Err(BzImageError::NotRelocatable);
    }
    let alignment = w32(offset::KERNEL_ALIGNMENT);
    if !alignment.is_power_of_two() || u64::from(alignment) < PAGE_SIZE {
        return Err(BzImageError::BadAlignment { alignment });
    }
    // "setup_sects: the size of the setup in sectors; if 0, the real value is 4", plus the
    // boot sector itself.
    let sects = match u8_at(offset::SETUP_SECTS) {
        0 => 4,
        n => usize::from(n),
    };
    let setup_bytes = (sects + 1) * 512;
    if setup_bytes >= len {
        return Err(BzImageError::BadSetupSize { setup_bytes, len });
    }
    let protected_mode = (setup_bytes, len - setup_bytes);
    let init_size = w32(offset::INIT_SIZE);
    if (init_size as usize) < protected_mode.1 {
        return Err(BzImageError::BadInitSize { init_size, protected_mode: protected_mode.1 });
    }
    // The header ends where the 2-byte short jump at 0x200 lands: 0x202 + its displacement.
    let header_end = (offset::HEADER + usize::from(u8_at(offset::JUMP + 1))).clamp(MIN_LEN, 0x1000);
    Ok(Kernel {
        version,
        protected_mode,
        kernel_alignment: u64::from(alignment),
        xloadflags,
        init_size: u64::from(init_size),
        cmdline_size: w32(offset::CMDLINE_SIZE),
        initrd_end_max: u64::from(w32(offset::INITRD_ADDR_MAX)) + 1,
        payload: (w32(offset::PAYLOAD_OFFSET), w32(offset::PAYLOAD_LENGTH)),
        header_end: header_end.min(len),
    })
}

/// Where a kernel and its initrd go inside a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Load address of the protected-mode kernel (`A`); the entry is `A + 0x200`.
    pub load: u64,
    /// `[load, load + init_size)`: the decompression window.
    pub window_end: u64,
    /// The initrd's address and length (length 0: none).
    pub initrd: (u64, u64),
}

impl Placement {
    pub fn entry(&self) -> u64 {
        self.load + ENTRY_64_OFFSET
    }
}

/// Why a kernel does not fit a region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlaceError {
    /// The decompression window (and the initrd) does not fit below `limit`.
    NoRoom { load: u64, init_size: u64, initrd: u64, limit: u64 },
    /// The initrd would end above what the kernel can address (`initrd_addr_max`).
    InitrdTooHigh { end: u64, max: u64 },
}

impl fmt::Display for PlaceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlaceError::NoRoom { load, init_size, initrd, limit } => write!(
                f,
                "the kernel needs {} MiB from {load:#x} to decompress (init_size) plus {} KiB of \
                 initrd, but the region's usable part ends at {limit:#x}: give the instance more \
                 memory",
                init_size.div_ceil(1 << 20),
                initrd.div_ceil(1 << 10)
            ),
            PlaceError::InitrdTooHigh { end, max } => write!(
                f,
                "the initrd would end at {end:#x}, above the {max:#x} the kernel can reach \
                 (initrd_addr_max): place the instance lower"
            ),
        }
    }
}

impl core::error::Error for PlaceError {}

fn align_up(v: u64, a: u64) -> Option<u64> {
    Some(v.checked_add(a - 1)? & !(a - 1))
}

/// Places `kernel` and an initrd of `initrd_len` bytes in `[start, limit)` (the part of the
/// region the kernel may use; boot data lives above `limit`).
pub fn place(
    kernel: &Kernel,
    start: u64,
    limit: u64,
    initrd_len: u64,
) -> Result<Placement, PlaceError> {
    let load = align_up(start.max(MIN_LOAD_ADDRESS), kernel.kernel_alignment).unwrap_or(u64::MAX);
    let no_room =
        PlaceError::NoRoom { load, init_size: kernel.init_size, initrd: initrd_len, limit };
    let window_end = load.checked_add(kernel.init_size).ok_or(no_room.clone())?;
    let initrd_at = align_up(window_end, PAGE_SIZE).ok_or(no_room.clone())?;
    let initrd_end = initrd_at.checked_add(initrd_len).ok_or(no_room.clone())?;
    if initrd_end > limit || window_end > limit {
        return Err(no_room);
    }
    if initrd_len > 0 && initrd_end > kernel.initrd_end_max {
        return Err(PlaceError::InitrdTooHigh { end: initrd_end, max: kernel.initrd_end_max });
    }
    Ok(Placement {
        load,
        window_end,
        initrd: (if initrd_len > 0 { initrd_at } else { 0 }, initrd_len),
    })
}

/// One e820 entry: `[addr, addr + size)` of `kind` ([`E820_RAM`], ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820 {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// What goes into the zero page besides the image's header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootParams<'a> {
    pub cmdline_addr: u64,
    pub initrd: (u64, u64),
    pub rsdp: u64,
    pub e820: &'a [E820],
}

/// Why a zero page could not be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ZeroPageError {
    TooManyE820 {
        entries: usize,
    },
    /// An address is above 4 GiB and the kernel does not say it can reach such addresses.
    Above4G {
        what: &'static str,
        addr: u64,
    },
}

impl fmt::Display for ZeroPageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ZeroPageError::TooManyE820 { entries } => {
                write!(f, "{entries} e820 entries; the zero page holds {E820_MAX}")
            }
            ZeroPageError::Above4G { what, addr } => write!(
                f,
                "the {what} at {addr:#x} is above 4 GiB and the kernel does not say it can reach \
                 it (XLF_CAN_BE_LOADED_ABOVE_4G)"
            ),
        }
    }
}

impl core::error::Error for ZeroPageError {}

/// Builds the zero page for `image` (already checked by [`parse`] into `kernel`).
pub fn zero_page(
    image: &[u8],
    kernel: &Kernel,
    p: &BootParams<'_>,
) -> Result<Vec<u8>, ZeroPageError> {
    if p.e820.len() > E820_MAX {
        return Err(ZeroPageError::TooManyE820 { entries: p.e820.len() });
    }
    let high_ok = kernel.xloadflags & XLF_CAN_BE_LOADED_ABOVE_4G != 0;
    for (what, addr, len) in
        [("command line", p.cmdline_addr, 1), ("initrd", p.initrd.0, p.initrd.1)]
    {
        if !high_ok && len > 0 && addr.saturating_add(len) > 1 << 32 {
            return Err(ZeroPageError::Above4G { what, addr });
        }
    }
    let mut z = alloc::vec![0u8; ZERO_PAGE_LEN];
    let end = kernel.header_end.min(image.len()).min(ZERO_PAGE_LEN);
    if let (Some(dst), Some(src)) =
        (z.get_mut(offset::SETUP_SECTS..end), image.get(offset::SETUP_SECTS..end))
    {
        dst.copy_from_slice(src);
    }
    let mut put = |at: usize, bytes: &[u8]| {
        if let Some(dst) = z.get_mut(at..at + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    };
    put(offset::SENTINEL, &[0]);
    put(offset::TYPE_OF_LOADER, &[TYPE_OF_LOADER_UNDEFINED]);
    let (c_lo, c_hi) = halves(p.cmdline_addr);
    put(offset::CMD_LINE_PTR, &c_lo);
    put(offset::EXT_CMD_LINE_PTR, &c_hi);
    let (i_lo, i_hi) = halves(p.initrd.0);
    let (s_lo, s_hi) = halves(p.initrd.1);
    put(offset::RAMDISK_IMAGE, &i_lo);
    put(offset::EXT_RAMDISK_IMAGE, &i_hi);
    put(offset::RAMDISK_SIZE, &s_lo);
    put(offset::EXT_RAMDISK_SIZE, &s_hi);
    put(offset::ACPI_RSDP_ADDR, &p.rsdp.to_le_bytes());
    put(offset::E820_ENTRIES, &[p.e820.len() as u8]);
    for (i, e) in p.e820.iter().enumerate() {
        let at = offset::E820_TABLE + 20 * i;
        put(at, &e.addr.to_le_bytes());
        put(at + 8, &e.size.to_le_bytes());
        put(at + 16, &e.kind.to_le_bytes());
    }
    Ok(z)
}

/// The low and high 32-bit halves of `v`, little-endian (a header field and its `ext_` field).
fn halves(v: u64) -> ([u8; 4], [u8; 4]) {
    ((v as u32).to_le_bytes(), ((v >> 32) as u32).to_le_bytes())
}

/// A bzImage with a distribution kernel's header (protocol 2.15, relocatable, 2 MiB alignment,
/// `xloadflags` 0x7F, 3 setup sectors) and `protected_mode` zero bytes of "kernel": it passes
/// [`parse`] but holds no code. For host tests of the tools that handle kernels.
pub fn header_only_image(init_size: u32, protected_mode: usize) -> Vec<u8> {
    let mut v = alloc::vec![0u8; 4 * 512 + protected_mode];
    let mut put = |at: usize, b: &[u8]| {
        if let Some(dst) = v.get_mut(at..at + b.len()) {
            dst.copy_from_slice(b);
        }
    };
    put(offset::SETUP_SECTS, &[3]);
    put(0x1EF, &[0xFF]); // the file's sentinel byte, which must not reach the zero page
    put(offset::BOOT_FLAG, &BOOT_FLAG.to_le_bytes());
    put(offset::JUMP, &[0xEB, 0x6A]); // the header ends at 0x202 + 0x6A = 0x26C
    put(offset::HEADER, b"HdrS");
    put(offset::VERSION, &0x020Fu16.to_le_bytes());
    put(offset::LOADFLAGS, &[1]);
    put(offset::INITRD_ADDR_MAX, &0x7FFF_FFFFu32.to_le_bytes());
    put(offset::KERNEL_ALIGNMENT, &0x20_0000u32.to_le_bytes());
    put(offset::RELOCATABLE_KERNEL, &[1]);
    put(offset::XLOADFLAGS, &0x7Fu16.to_le_bytes());
    put(offset::CMDLINE_SIZE, &0x7FFu32.to_le_bytes());
    put(offset::INIT_SIZE, &init_size.to_le_bytes());
    v
}

/// Reads back a zero page's e820 table (for tests and the report).
pub fn e820_of(zero_page: &[u8]) -> Vec<E820> {
    let n = zero_page.get(offset::E820_ENTRIES).copied().unwrap_or(0) as usize;
    (0..n.min(E820_MAX))
        .filter_map(|i| {
            let at = offset::E820_TABLE + 20 * i;
            Some(E820 {
                addr: u64_at(zero_page, at)?,
                size: u64_at(zero_page, at + 8)?,
                kind: u32_at(zero_page, at + 16)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(pm: usize) -> Vec<u8> {
        header_only_image(0x337_8000, pm)
    }

    #[test]
    fn a_distribution_like_header_is_read() {
        let k = parse(&image(0x1000)).unwrap();
        assert_eq!(k.version, 0x020F);
        assert_eq!(k.protected_mode, (2048, 0x1000));
        assert_eq!(
            (k.kernel_alignment, k.init_size, k.cmdline_size),
            (0x20_0000, 0x337_8000, 0x7FF)
        );
        assert_eq!((k.initrd_end_max, k.header_end), (0x8000_0000, 0x26C));
    }

    #[test]
    fn each_refusal_names_what_is_wrong() {
        let with = |at: usize, b: &[u8]| {
            let mut v = image(0x1000);
            v[at..at + b.len()].copy_from_slice(b);
            parse(&v).unwrap_err()
        };
        assert_eq!(parse(&[0u8; 100]), Err(BzImageError::TooShort { len: 100 }));
        assert_eq!(with(offset::BOOT_FLAG, &[0, 0]), BzImageError::NoBootFlag { found: 0 });
        assert_eq!(with(offset::HEADER, b"ELF!"), BzImageError::NoHdrS);
        assert_eq!(with(offset::VERSION, &[0x0B, 2]), BzImageError::OldProtocol { version: 0x20B });
        assert_eq!(
            with(offset::XLOADFLAGS, &[0x7E, 0]),
            BzImageError::No64BitEntry { xloadflags: 0x7E }
        );
        assert_eq!(with(offset::RELOCATABLE_KERNEL, &[0]), BzImageError::NotRelocatable);
        assert_eq!(
            with(offset::KERNEL_ALIGNMENT, &0x3000u32.to_le_bytes()),
            BzImageError::BadAlignment { alignment: 0x3000 }
        );
        assert_eq!(
            with(offset::SETUP_SECTS, &[200]),
            BzImageError::BadSetupSize { setup_bytes: 201 * 512, len: 0x1800 }
        );
        assert_eq!(
            with(offset::INIT_SIZE, &0x100u32.to_le_bytes()),
            BzImageError::BadInitSize { init_size: 0x100, protected_mode: 0x1000 }
        );
        // Every message is one line a user can act on.
        for e in [
            BzImageError::NoHdrS,
            BzImageError::NotRelocatable,
            BzImageError::No64BitEntry { xloadflags: 0 },
        ] {
            let m = alloc::format!("{e}");
            assert!(!m.contains('\n') && m.len() > 30, "{m}");
        }
    }

    #[test]
    fn no_input_makes_parse_panic() {
        let base = image(0x800);
        for cut in 0..base.len() {
            let _ = parse(&base[..cut]);
        }
        let mut x = 0x12345678u32;
        for _ in 0..2000 {
            let mut v = base.clone();
            for _ in 0..8 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let at = 0x1E0 + (x as usize % 0x90);
                v[at] = (x >> 8) as u8;
            }
            let _ = parse(&v);
        }
    }

    #[test]
    fn placement_honours_16_mib_the_alignment_and_the_limit() {
        let k = parse(&image(0x1000)).unwrap();
        // A region starting low: the kernel goes to 16 MiB.
        let p = place(&k, 0x20_0000, 0x1000_0000, 0x10_0000).unwrap();
        assert_eq!((p.load, p.entry()), (0x100_0000, 0x100_0200));
        assert_eq!(p.window_end, 0x100_0000 + 0x337_8000);
        assert_eq!(p.initrd, (0x100_0000 + 0x337_8000, 0x10_0000));
        // Unaligned start: rounded up to 2 MiB.
        let p = place(&k, 0x540_1000, 0x1000_0000, 0).unwrap();
        assert_eq!((p.load, p.initrd), (0x560_0000, (0, 0)));
        // Too small: refused with the numbers.
        let e = place(&k, 0x400_0000, 0x600_0000, 0).unwrap_err();
        assert!(matches!(e, PlaceError::NoRoom { load: 0x400_0000, .. }), "{e:?}");
        assert!(alloc::format!("{e}").contains("give the instance more memory"));
        // An initrd beyond initrd_addr_max.
        let e = place(&k, 0x7C00_0000, 0x9000_0000, 0x100_0000).unwrap_err();
        assert!(matches!(e, PlaceError::InitrdTooHigh { .. }), "{e:?}");
        // Arithmetic at the top of the address space does not wrap.
        assert!(place(&k, u64::MAX - 0x1000, u64::MAX, 0).is_err());
    }

    #[test]
    fn the_zero_page_has_the_header_our_fields_and_a_private_e820() {
        let img = image(0x1000);
        let k = parse(&img).unwrap();
        let e820 = [
            E820 { addr: 0x9_0000, size: 0x8000, kind: E820_RAM },
            E820 { addr: 0x400_0000, size: 0x800_0000, kind: E820_RAM },
            E820 { addr: 0xC00_0000, size: 0x4000, kind: E820_ACPI },
        ];
        let p = BootParams {
            cmdline_addr: 0xC00_1000,
            initrd: (0x800_0000, 0x12345),
            rsdp: 0xC00_2000,
            e820: &e820,
        };
        let z = zero_page(&img, &k, &p).unwrap();
        assert_eq!(z.len(), 4096);
        assert_eq!(z[offset::SENTINEL], 0, "a nonzero sentinel makes Linux wipe the fields");
        assert_eq!(&z[offset::HEADER..offset::HEADER + 4], b"HdrS");
        assert_eq!(u16_at(&z, offset::VERSION), Some(0x020F));
        assert_eq!(z[offset::TYPE_OF_LOADER], TYPE_OF_LOADER_UNDEFINED);
        assert_eq!(u32_at(&z, offset::CMD_LINE_PTR), Some(0xC00_1000));
        assert_eq!(u32_at(&z, offset::RAMDISK_IMAGE), Some(0x800_0000));
        assert_eq!(u32_at(&z, offset::RAMDISK_SIZE), Some(0x12345));
        assert_eq!(u64_at(&z, offset::ACPI_RSDP_ADDR), Some(0xC00_2000));
        assert_eq!(e820_of(&z), e820);
        // Nothing past the header's end was copied (the file has zeros there anyway, so plant
        // a marker and check it stays out).
        let mut marked = img.clone();
        marked[0x270] = 0xAB;
        assert_eq!(zero_page(&marked, &k, &p).unwrap()[0x270], 0);
        // screen_info (offset 0) stays zero: no VGA console.
        assert!(z[..0x40].iter().all(|&b| b == 0));
        // High addresses go into the ext_ fields.
        let high = BootParams { cmdline_addr: 0x1_2000_0000, ..p.clone() };
        let z = zero_page(&img, &k, &high).unwrap();
        assert_eq!(
            (u32_at(&z, offset::CMD_LINE_PTR), u32_at(&z, offset::EXT_CMD_LINE_PTR)),
            (Some(0x2000_0000), Some(1))
        );
        let many = alloc::vec![e820[0]; 129];
        assert_eq!(
            zero_page(&img, &k, &BootParams { e820: &many, ..p }),
            Err(ZeroPageError::TooManyE820 { entries: 129 })
        );
    }
}
