//! Replays the committed fuzz corpus (`loader/fuzz/corpus/plan`: crafted seeds, small real
//! images, and regressions found by fuzzing) through `plan`, and `apply` where it succeeds, so
//! CI checks the fuzz findings without running the fuzzer. Mirrors `fuzz_targets/plan.rs`.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use loader::{apply, plan, MemoryError, PhysMemory, Region};

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/plan");

/// The same regions as the fuzz target.
const REGIONS: [Region; 3] = [
    Region::new(0x20_0000, 0x20_0000),
    Region::new(0x1000_0000, 64 << 20),
    Region::new(0, 1 << 52),
];

struct BoundsChecked {
    region: Region,
    written: u64,
}

impl PhysMemory for BoundsChecked {
    fn write(&mut self, paddr: u64, bytes: &[u8]) -> Result<(), MemoryError> {
        self.fill(paddr, bytes.len() as u64, 0)
    }
    fn fill(&mut self, paddr: u64, len: u64, _: u8) -> Result<(), MemoryError> {
        assert!(self.region.contains_range(paddr, len), "write [{paddr:#x}, +{len:#x}) outside");
        self.written += len;
        Ok(())
    }
}

#[test]
fn corpus_replays_without_panicking() {
    let mut files = 0;
    let mut planned = 0;
    for entry in fs::read_dir(CORPUS).expect("fuzz corpus directory") {
        let path = entry.unwrap().path();
        let data = fs::read(&path).unwrap();
        files += 1;
        eprintln!("{}", path.display());
        planned += exercise(&data);
    }
    assert!(files >= 10, "expected the committed seed corpus in {CORPUS}, found {files} files");
    assert!(planned > 0, "no corpus file planned successfully: the seeds are broken");
}

/// Plans (and applies) `data` against every region, checking the writes stay inside.
fn exercise(data: &[u8]) -> usize {
    let mut planned = 0;
    for region in REGIONS {
        if let Ok(p) = plan(data, region) {
            planned += 1;
            let mut memory = BoundsChecked { region, written: 0 };
            apply(&p, data, &mut memory).expect("a plan from `plan` applies");
            assert_eq!(memory.written, region.size + 8 * p.relocations().len() as u64);
        }
    }
    planned
}

/// A deterministic complement to fuzzing that runs in CI: every seed with each byte of its
/// first 512 (ELF header and program headers) replaced by a few interesting values.
#[test]
fn single_byte_mutations_of_the_seeds() {
    for entry in fs::read_dir(CORPUS).expect("fuzz corpus directory") {
        let mut data = fs::read(entry.unwrap().path()).unwrap();
        for at in 0..data.len().min(512) {
            let original = data[at];
            for value in [0x00, 0xff, 0x80, 0x7f, original ^ 0x01, original ^ 0x40] {
                data[at] = value;
                exercise(&data);
            }
            data[at] = original;
        }
    }
}

/// Rewrites the crafted seeds (`crafted-*`). Run after changing the builder:
/// `cargo test -p loader --test corpus -- --ignored regenerate_crafted_seeds`.
#[test]
#[ignore]
fn regenerate_crafted_seeds() {
    let dir = Path::new(CORPUS);
    let mut seeds: Vec<(&str, ElfBuilder)> =
        vec![("exec", ElfBuilder::exec()), ("pie", ElfBuilder::pie())];

    let mut higher_half = ElfBuilder::exec();
    for p in &mut higher_half.phdrs {
        p.p_vaddr += 0xffff_ffff_8000_0000;
    }
    higher_half.e_entry += 0xffff_ffff_8000_0000;
    seeds.push(("higher-half", higher_half));

    let mut shared = ElfBuilder::exec();
    shared.phdrs = vec![
        Phdr::load(0x1000, 0x20_1000, 0x100, 0x100, PF_R | PF_X),
        Phdr::load(0x1100, 0x20_1100, 0x100, 0x100, PF_R),
        Phdr::load(0x1200, 0x20_1200, 0x80, 0x1000, PF_R | PF_W),
    ];
    shared.file_len = 0x1280;
    seeds.push(("shared-pages", shared));

    let mut plt = ElfBuilder::pie();
    plt.set_dynamic(
        &[(DT_JMPREL, 0x2040), (DT_PLTRELSZ, 24), (DT_PLTREL, DT_RELA)],
        &[(0x2080, R_X86_64_RELATIVE, 0x1000)],
    );
    seeds.push(("pie-jmprel", plt));

    let mut none = ElfBuilder::pie();
    none.set_dynamic(
        &[(DT_RELA, 0x2040), (DT_RELASZ, 48), (DT_RELAENT, 24)],
        &[(0x2080, R_X86_64_NONE, 0), (0x2088, R_X86_64_64, 0)],
    );
    seeds.push(("pie-unsupported-reloc", none));

    let mut aligned = ElfBuilder::pie();
    aligned.phdrs[0].p_align = 0x20_0000;
    seeds.push(("pie-2m-align", aligned));

    let mut interp = ElfBuilder::exec();
    interp.phdrs.insert(0, Phdr { p_type: PT_INTERP, ..Phdr::load(0x200, 0, 0x1c, 0x1c, PF_R) });
    seeds.push(("interp", interp));

    let mut overlap = ElfBuilder::exec();
    overlap.phdrs[1].p_paddr = 0x20_1000;
    seeds.push(("phys-overlap", overlap));

    let mut truncated = ElfBuilder::exec();
    truncated.file_len = 0x1080;
    seeds.push(("truncated", truncated));

    for (name, elf) in seeds {
        fs::write(dir.join(format!("crafted-{name}.elf")), elf.build()).unwrap();
    }
}
