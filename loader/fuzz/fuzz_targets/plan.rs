//! Fuzz target: `plan` on arbitrary bytes must never panic, and any plan it returns must keep
//! the loader's promises when applied: every write inside the region, every region byte
//! written, mappings page aligned with their physical pages inside the region.

#![no_main]

use libfuzzer_sys::fuzz_target;
use loader::{apply, plan, MemoryError, PhysMemory, Region, PAGE_SIZE};

/// Checks bounds and counts bytes instead of storing them, so huge regions cost nothing.
struct BoundsChecked {
    region: Region,
    written: u64,
}

impl BoundsChecked {
    fn check(&mut self, paddr: u64, len: u64) -> Result<(), MemoryError> {
        assert!(
            self.region.contains_range(paddr, len),
            "write [{paddr:#x}, +{len:#x}) outside {}",
            self.region
        );
        self.written += len;
        Ok(())
    }
}

impl PhysMemory for BoundsChecked {
    fn write(&mut self, paddr: u64, bytes: &[u8]) -> Result<(), MemoryError> {
        self.check(paddr, bytes.len() as u64)
    }
    fn fill(&mut self, paddr: u64, len: u64, _byte: u8) -> Result<(), MemoryError> {
        self.check(paddr, len)
    }
}

/// A small region like a real instance's, the `inspect elf` default for PIEs, and the whole
/// 52-bit physical space (so ET_EXEC images linked anywhere reach the later checks).
const REGIONS: [Region; 3] = [
    Region::new(0x20_0000, 0x20_0000),
    Region::new(0x1000_0000, 64 << 20),
    Region::new(0, 1 << 52),
];

fuzz_target!(|data: &[u8]| {
    for region in REGIONS {
        let Ok(p) = plan(data, region) else { continue };
        for s in p.segments() {
            assert!(region.contains_range(s.paddr, s.mem_size));
            assert!(s.file_size <= s.mem_size);
            assert!(s.file_offset.checked_add(s.file_size).is_some_and(|e| e <= data.len() as u64));
        }
        for m in p.mappings() {
            assert!(
                m.vaddr % PAGE_SIZE == 0 && m.paddr % PAGE_SIZE == 0 && m.size % PAGE_SIZE == 0
            );
            assert!(m.size > 0 && region.contains_range(m.paddr, m.size));
        }
        for pair in p.mappings().windows(2) {
            assert!(pair[0].vaddr + pair[0].size <= pair[1].vaddr, "mappings overlap: {pair:?}");
        }
        let entry = p.entry();
        assert!(region.contains_range(entry.paddr, 1));
        let mut memory = BoundsChecked { region, written: 0 };
        apply(&p, data, &mut memory).expect("a plan from `plan` applies");
        let relocated = 8 * p.relocations().len() as u64;
        assert_eq!(memory.written, region.size + relocated, "every region byte written once");
    }
});
