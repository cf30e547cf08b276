//! Test helpers: an ELF builder that crafts headers byte by byte (independently of goblin, so
//! the tests do not check the parser against itself), a fake physical memory, and a minimal
//! program-header reader used as an oracle for real images.

#![allow(dead_code)] // each test binary uses a different subset

use loader::{MemoryError, PhysMemory, Region};

pub const PT_LOAD: u32 = 1;
pub const PT_DYNAMIC: u32 = 2;
pub const PT_INTERP: u32 = 3;
pub const PT_NOTE: u32 = 4;
pub const PF_X: u32 = 1;
pub const PF_W: u32 = 2;
pub const PF_R: u32 = 4;
pub const ET_REL: u16 = 1;
pub const ET_EXEC: u16 = 2;
pub const ET_DYN: u16 = 3;
pub const ET_CORE: u16 = 4;
pub const EM_X86_64: u16 = 62;
pub const DT_NULL: u64 = 0;
pub const DT_NEEDED: u64 = 1;
pub const DT_PLTRELSZ: u64 = 2;
pub const DT_RELA: u64 = 7;
pub const DT_RELASZ: u64 = 8;
pub const DT_RELAENT: u64 = 9;
pub const DT_REL: u64 = 17;
pub const DT_PLTREL: u64 = 20;
pub const DT_JMPREL: u64 = 23;
pub const DT_RELR: u64 = 36;
pub const R_X86_64_NONE: u64 = 0;
pub const R_X86_64_64: u64 = 1;
pub const R_X86_64_JUMP_SLOT: u64 = 7;
pub const R_X86_64_RELATIVE: u64 = 8;

/// One program header, in ELF64 field order of meaning (not of layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phdr {
    pub p_type: u32,
    pub p_flags: u32,
    pub p_offset: u64,
    pub p_vaddr: u64,
    pub p_paddr: u64,
    pub p_filesz: u64,
    pub p_memsz: u64,
    pub p_align: u64,
}

impl Phdr {
    /// A PT_LOAD with vaddr == paddr.
    pub fn load(offset: u64, addr: u64, filesz: u64, memsz: u64, flags: u32) -> Self {
        Self {
            p_type: PT_LOAD,
            p_flags: flags,
            p_offset: offset,
            p_vaddr: addr,
            p_paddr: addr,
            p_filesz: filesz,
            p_memsz: memsz,
            p_align: 0x1000,
        }
    }
}

/// An ELF64 image under construction. `build` lays out: ELF header at 0, program headers at
/// `e_phoff`, then `contents` patched in at their offsets, the rest filled with a pattern that
/// is never zero (so a missing copy shows up as zeros, and a stray zero-fill as a mismatch).
#[derive(Debug, Clone)]
pub struct ElfBuilder {
    pub magic: [u8; 4],
    pub class: u8,
    pub data: u8,
    pub e_type: u16,
    pub e_machine: u16,
    pub e_entry: u64,
    pub e_phoff: u64,
    pub e_phentsize: u16,
    /// Overrides `phdrs.len()` in the header when set.
    pub e_phnum: Option<u16>,
    pub phdrs: Vec<Phdr>,
    pub file_len: usize,
    pub contents: Vec<(usize, Vec<u8>)>,
}

/// The filler byte at file offset `i`.
pub fn pattern(i: usize) -> u8 {
    (i % 251) as u8 | 1
}

impl ElfBuilder {
    /// A valid ET_EXEC: text R-X at 0x201000 (file 0x1000, 0x100 bytes), data RW- at 0x202000
    /// (file 0x2000, 0x80 bytes, 0x1000 in memory). Entry 0x201000.
    pub fn exec() -> Self {
        Self {
            magic: *b"\x7fELF",
            class: 2,
            data: 1,
            e_type: ET_EXEC,
            e_machine: EM_X86_64,
            e_entry: 0x20_1000,
            e_phoff: 64,
            e_phentsize: 56,
            e_phnum: None,
            phdrs: vec![
                Phdr::load(0x1000, 0x20_1000, 0x100, 0x100, PF_R | PF_X),
                Phdr::load(0x2000, 0x20_2000, 0x80, 0x1000, PF_R | PF_W),
            ],
            file_len: 0x2080,
            contents: Vec::new(),
        }
    }

    /// A valid static PIE linked at 0: text R-X at 0x1000 (file 0x1000, 0x100 bytes), data RW-
    /// at 0x2000 (file 0x2000, 0x100 bytes, 0x2000 in memory) holding the dynamic array at
    /// 0x2000, a RELA table at 0x2040 and two pointers at 0x2080/0x2088 relocated with
    /// R_X86_64_RELATIVE to 0x1010 and 0x2100. Entry 0x1000.
    pub fn pie() -> Self {
        let mut elf = Self::exec();
        elf.e_type = ET_DYN;
        elf.e_entry = 0x1000;
        elf.phdrs = vec![
            Phdr::load(0x1000, 0x1000, 0x100, 0x100, PF_R | PF_X),
            Phdr::load(0x2000, 0x2000, 0x100, 0x2000, PF_R | PF_W),
        ];
        elf.file_len = 0x2100;
        elf.set_dynamic(
            &[(DT_RELA, 0x2040), (DT_RELASZ, 48), (DT_RELAENT, 24)],
            &[(0x2080, R_X86_64_RELATIVE, 0x1010), (0x2088, R_X86_64_RELATIVE, 0x2100)],
        );
        elf
    }

    /// Adds (or replaces) a PT_DYNAMIC at file/vaddr 0x2000 with `entries` (DT_NULL appended)
    /// and a RELA table at file/vaddr 0x2040 with `relas` (r_offset, r_info, r_addend). The
    /// data segment must cover 0x2000.. in the file.
    pub fn set_dynamic(&mut self, entries: &[(u64, u64)], relas: &[(u64, u64, i64)]) {
        self.phdrs.retain(|p| p.p_type != PT_DYNAMIC);
        let mut dynamic = Vec::new();
        for &(tag, val) in entries.iter().chain(&[(DT_NULL, 0)]) {
            dynamic.extend_from_slice(&tag.to_le_bytes());
            dynamic.extend_from_slice(&val.to_le_bytes());
        }
        assert!(dynamic.len() <= 0x40, "test dynamic array too long for its slot");
        let mut table = Vec::new();
        for &(offset, info, addend) in relas {
            table.extend_from_slice(&offset.to_le_bytes());
            table.extend_from_slice(&info.to_le_bytes());
            table.extend_from_slice(&addend.to_le_bytes());
        }
        self.phdrs.push(Phdr {
            p_type: PT_DYNAMIC,
            p_flags: PF_R | PF_W,
            p_offset: 0x2000,
            p_vaddr: 0x2000,
            p_paddr: 0x2000,
            p_filesz: dynamic.len() as u64,
            p_memsz: dynamic.len() as u64,
            p_align: 8,
        });
        self.contents.retain(|(at, _)| *at != 0x2000 && *at != 0x2040);
        self.contents.push((0x2000, dynamic));
        self.contents.push((0x2040, table));
    }

    pub fn build(&self) -> Vec<u8> {
        let mut out: Vec<u8> = (0..self.file_len).map(pattern).collect();
        let mut header = Vec::with_capacity(64);
        header.extend_from_slice(&self.magic);
        header.extend_from_slice(&[self.class, self.data, 1, 0]);
        header.extend_from_slice(&[0; 8]);
        header.extend_from_slice(&self.e_type.to_le_bytes());
        header.extend_from_slice(&self.e_machine.to_le_bytes());
        header.extend_from_slice(&1u32.to_le_bytes()); // e_version
        header.extend_from_slice(&self.e_entry.to_le_bytes());
        header.extend_from_slice(&self.e_phoff.to_le_bytes());
        header.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
        header.extend_from_slice(&0u32.to_le_bytes()); // e_flags
        header.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
        header.extend_from_slice(&self.e_phentsize.to_le_bytes());
        let phnum = self.e_phnum.unwrap_or(self.phdrs.len() as u16);
        header.extend_from_slice(&phnum.to_le_bytes());
        header.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
        header.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
        header.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
        assert_eq!(header.len(), 64);
        patch(&mut out, 0, &header);
        let mut table = Vec::new();
        for p in &self.phdrs {
            table.extend_from_slice(&p.p_type.to_le_bytes());
            table.extend_from_slice(&p.p_flags.to_le_bytes());
            for v in [p.p_offset, p.p_vaddr, p.p_paddr, p.p_filesz, p.p_memsz, p.p_align] {
                table.extend_from_slice(&v.to_le_bytes());
            }
        }
        if let Ok(at) = usize::try_from(self.e_phoff) {
            patch(&mut out, at, &table);
        }
        for (at, bytes) in &self.contents {
            patch(&mut out, *at, bytes);
        }
        out
    }
}

/// Copies `bytes` to `out[at..]`, truncating at the end of `out` (tests craft truncated files).
fn patch(out: &mut [u8], at: usize, bytes: &[u8]) {
    for (i, b) in bytes.iter().enumerate() {
        if let Some(slot) = at.checked_add(i).and_then(|j| out.get_mut(j)) {
            *slot = *b;
        }
    }
}

/// Physical memory standing for exactly one region, pre-filled with garbage from "a previous
/// occupant". Any access outside the region fails the test.
pub struct FakeMemory {
    pub region: Region,
    pub bytes: Vec<u8>,
    /// Every (paddr, len) written or filled, in order.
    pub log: Vec<(u64, u64)>,
}

pub const GARBAGE: u8 = 0xa5;

impl FakeMemory {
    pub fn new(region: Region) -> Self {
        Self { region, bytes: vec![GARBAGE; region.size as usize], log: Vec::new() }
    }

    fn slot(&mut self, paddr: u64, len: u64) -> &mut [u8] {
        assert!(
            self.region.contains_range(paddr, len),
            "write [{paddr:#x}, +{len:#x}) outside region {}",
            self.region
        );
        self.log.push((paddr, len));
        let start = (paddr - self.region.base) as usize;
        &mut self.bytes[start..start + len as usize]
    }

    /// The bytes at `[paddr, paddr + len)`.
    pub fn read(&self, paddr: u64, len: usize) -> &[u8] {
        let start = (paddr - self.region.base) as usize;
        &self.bytes[start..start + len]
    }

    pub fn read_u64(&self, paddr: u64) -> u64 {
        u64::from_le_bytes(self.read(paddr, 8).try_into().unwrap())
    }
}

impl PhysMemory for FakeMemory {
    fn write(&mut self, paddr: u64, bytes: &[u8]) -> Result<(), MemoryError> {
        self.slot(paddr, bytes.len() as u64).copy_from_slice(bytes);
        Ok(())
    }

    fn fill(&mut self, paddr: u64, len: u64, byte: u8) -> Result<(), MemoryError> {
        self.slot(paddr, len).fill(byte);
        Ok(())
    }
}

/// Program headers read with plain little-endian field reads at the gABI offsets: the oracle
/// for real images, deliberately sharing no code with the loader.
pub fn oracle_phdrs(image: &[u8]) -> Vec<Phdr> {
    let u16_at = |at: usize| u16::from_le_bytes(image[at..at + 2].try_into().unwrap());
    let u32_at = |at: usize| u32::from_le_bytes(image[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(image[at..at + 8].try_into().unwrap());
    let phoff = u64_at(32) as usize;
    let phnum = u16_at(56) as usize;
    (0..phnum)
        .map(|i| {
            let at = phoff + i * 56;
            Phdr {
                p_type: u32_at(at),
                p_flags: u32_at(at + 4),
                p_offset: u64_at(at + 8),
                p_vaddr: u64_at(at + 16),
                p_paddr: u64_at(at + 24),
                p_filesz: u64_at(at + 32),
                p_memsz: u64_at(at + 40),
                p_align: u64_at(at + 48),
            }
        })
        .collect()
}

/// `e_entry`, read directly.
pub fn oracle_entry(image: &[u8]) -> u64 {
    u64::from_le_bytes(image[24..32].try_into().unwrap())
}

/// What the region must hold after `apply`: zeros, except `copies` (file offset, length,
/// physical address) and 8-byte little-endian `words` (physical address, value).
pub fn expected_region(
    image: &[u8],
    region: Region,
    copies: &[(u64, u64, u64)],
    words: &[(u64, u64)],
) -> Vec<u8> {
    let mut out = vec![0u8; region.size as usize];
    for &(offset, len, paddr) in copies {
        let at = (paddr - region.base) as usize;
        out[at..at + len as usize]
            .copy_from_slice(&image[offset as usize..(offset + len) as usize]);
    }
    for &(paddr, value) in words {
        let at = (paddr - region.base) as usize;
        out[at..at + 8].copy_from_slice(&value.to_le_bytes());
    }
    out
}

/// Asserts two region images are equal, reporting the first differing address.
pub fn assert_region_eq(actual: &[u8], expected: &[u8], region: Region) {
    assert_eq!(actual.len(), expected.len());
    if let Some(i) = actual.iter().zip(expected).position(|(a, e)| a != e) {
        panic!(
            "region differs first at physical {:#x}: got {:#04x}, expected {:#04x}",
            region.base + i as u64,
            actual[i],
            expected[i]
        );
    }
}
