//! Real images, built during the test from `tests/fixtures` with the system C compiler and
//! linker and with the workspace's rustc, loaded into a fake region and checked byte for byte.
//!
//! The expected region contents come from oracles that share no code with the loader: program
//! headers read with plain byte reads (`common::oracle_phdrs`), relocations listed by binutils'
//! `readelf -rW`, and symbol addresses from `nm`, which also let each test check that the
//! pointer table in the fixture holds the run-time addresses of what it points to.
//!
//! gcc, readelf, nm and rustc are required: a missing tool fails the test with a message saying
//! what to install, it does not skip.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use loader::{apply, plan, Flags, ImageKind, LoadError, LoadPlan, Region};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// Freestanding, no libc, no unwind tables; 4 KiB max page size keeps the images small.
const CFLAGS: &[&str] = &[
    "-ffreestanding",
    "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables",
    "-nostdlib",
    "-Os",
    "-Wl,--build-id=none",
    "-Wl,-z,max-page-size=4096",
    "-Wl,-z,noexecstack",
];

fn out_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("loader-real-images");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(command: &mut Command, what: &str) -> Output {
    let output = command.output().unwrap_or_else(|e| {
        panic!(
            "{what}: could not run {:?}: {e}. The real-image tests need gcc and binutils \
             (readelf, nm) from the system, e.g. `apt install gcc binutils`, and the pinned \
             Rust toolchain; they are required, not optional",
            command.get_program()
        )
    });
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Compiles `tests/fixtures/kernel.c` with `extra` flags into `name`; returns path and bytes.
fn gcc(name: &str, extra: &[&str]) -> (PathBuf, Vec<u8>) {
    let out = out_dir().join(name);
    run(
        Command::new("gcc")
            .args(CFLAGS)
            .args(extra)
            .arg(Path::new(FIXTURES).join("kernel.c"))
            .arg("-o")
            .arg(&out),
        &format!("gcc building {name}"),
    );
    let bytes = std::fs::read(&out).unwrap();
    (out, bytes)
}

/// Symbol → link-time address, from `nm`.
fn symbols(path: &Path) -> HashMap<String, u64> {
    let output = run(Command::new("nm").arg(path), "nm");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let value = u64::from_str_radix(fields.next()?, 16).ok()?;
            let _kind = fields.next()?;
            Some((fields.next()?.to_string(), value))
        })
        .collect()
}

/// (r_offset, addend) of every relocation `readelf -rW` lists; all must be R_X86_64_RELATIVE.
fn readelf_relocations(path: &Path) -> Vec<(u64, u64)> {
    let output = run(Command::new("readelf").arg("-rW").arg(path), "readelf -rW");
    let text = String::from_utf8(output.stdout).unwrap();
    text.lines()
        .filter(|line| line.contains("R_X86_64_"))
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(fields[2], "R_X86_64_RELATIVE", "unexpected relocation: {line}");
            let offset = u64::from_str_radix(fields[0], 16).unwrap();
            let addend = u64::from_str_radix(fields.last().unwrap(), 16).unwrap();
            (offset, addend)
        })
        .collect()
}

/// Physical address of link-time virtual address `vaddr`, by the oracle's program headers.
fn oracle_paddr(loads: &[Phdr], vaddr: u64, bias: u64) -> u64 {
    let p = loads
        .iter()
        .find(|p| vaddr >= p.p_vaddr && vaddr < p.p_vaddr + p.p_memsz)
        .unwrap_or_else(|| panic!("{vaddr:#x} is in no PT_LOAD"));
    p.p_paddr + (vaddr - p.p_vaddr) + bias
}

/// Plans and applies `image` into a fake `region`, then checks against the oracles:
/// - every byte of the region: file bytes at each PT_LOAD's physical address (moved by `bias`
///   for a PIE), `readelf`'s relocations patched to `bias + addend`, zeros everywhere else;
/// - the entry point, virtual and physical;
/// - every page of every segment mapped to the right physical page with at least its flags.
fn load_and_check(image: &[u8], exe: &Path, region: Region, bias: u64) -> (LoadPlan, FakeMemory) {
    let p = plan(image, region).unwrap_or_else(|e| panic!("{}: {e}", exe.display()));
    let mut memory = FakeMemory::new(region);
    apply(&p, image, &mut memory).unwrap();

    let loads: Vec<Phdr> =
        oracle_phdrs(image).into_iter().filter(|ph| ph.p_type == PT_LOAD).collect();
    let copies: Vec<(u64, u64, u64)> =
        loads.iter().map(|ph| (ph.p_offset, ph.p_filesz, ph.p_paddr + bias)).collect();
    let relocations = readelf_relocations(exe);
    let words: Vec<(u64, u64)> = relocations
        .iter()
        .map(|&(offset, addend)| (oracle_paddr(&loads, offset, bias), bias + addend))
        .collect();
    let expected = expected_region(image, region, &copies, &words);
    assert_region_eq(&memory.bytes, &expected, region);
    assert_eq!(p.relocations().len(), relocations.len());

    let e_entry = oracle_entry(image);
    assert_eq!(p.entry().vaddr, e_entry + bias);
    assert_eq!(p.entry().paddr, oracle_paddr(&loads, e_entry, bias));

    for ph in &loads {
        let flags = Flags::from_p_flags(ph.p_flags);
        let first = (ph.p_vaddr + bias) & !0xfff;
        let mut page = first;
        while page < ph.p_vaddr + bias + ph.p_memsz {
            let m = p
                .mappings()
                .iter()
                .find(|m| page >= m.vaddr && page < m.vaddr + m.size)
                .unwrap_or_else(|| panic!("page {page:#x} not mapped"));
            // p_vaddr ≡ p_paddr (mod 4 KiB): each virtual page maps at a constant distance.
            let expected_paddr = page.wrapping_add(ph.p_paddr.wrapping_sub(ph.p_vaddr));
            assert_eq!(m.paddr + (page - m.vaddr), expected_paddr, "page {page:#x}");
            assert_eq!(m.flags.union(flags), m.flags, "page {page:#x} lacks {flags}");
            page += 0x1000;
        }
    }
    (p, memory)
}

/// Checks the fixture's `table` (message, message + 5, &counter, &scratch[7]) holds run-time
/// virtual addresses: link-time addresses moved by `bias`.
fn check_c_pointer_table(exe: &Path, image: &[u8], memory: &FakeMemory, bias: u64) {
    let sym = symbols(exe);
    let loads: Vec<Phdr> =
        oracle_phdrs(image).into_iter().filter(|ph| ph.p_type == PT_LOAD).collect();
    let table = oracle_paddr(&loads, sym["table"], bias);
    let expected = [sym["message"], sym["message"] + 5, sym["counter"], sym["scratch"] + 7 * 8]
        .map(|a| a + bias);
    for (i, want) in expected.iter().enumerate() {
        assert_eq!(memory.read_u64(table + 8 * i as u64), *want, "table[{i}]");
    }
    // Initialised data arrived; BSS is zero (it was garbage before).
    let counter = oracle_paddr(&loads, sym["counter"], bias);
    assert_eq!(memory.read(counter, 4), 42u32.to_le_bytes());
    let scratch = oracle_paddr(&loads, sym["scratch"], bias);
    assert!(memory.read(scratch, 512 * 8).iter().all(|&b| b == 0));
}

#[test]
fn gcc_exec_linked_at_a_fixed_address() {
    let (exe, image) =
        gcc("exec.elf", &["-static", "-no-pie", "-fno-pic", "-Wl,-Ttext-segment=0x200000"]);
    let region = Region::new(0x20_0000, 0x10_0000);
    let (p, memory) = load_and_check(&image, &exe, region, 0);
    assert_eq!(p.kind(), ImageKind::Executable);
    assert!(p.relocations().is_empty());
    check_c_pointer_table(&exe, &image, &memory, 0);

    // The same image refuses a region that does not hold its fixed addresses.
    let elsewhere = Region::new(0x100_0000, 0x10_0000);
    assert!(matches!(
        plan(&image, elsewhere),
        Err(LoadError::SegmentOutsideRegion { index: 0, start: 0x20_0000, .. })
    ));
}

#[test]
fn gcc_static_pie_is_moved_and_relocated() {
    let (exe, image) = gcc("static-pie.elf", &["-fpie", "-static-pie"]);
    assert!(readelf_relocations(&exe).len() >= 4, "fixture must need R_X86_64_RELATIVE");
    let loads: Vec<Phdr> =
        oracle_phdrs(&image).into_iter().filter(|ph| ph.p_type == PT_LOAD).collect();
    assert_eq!(loads.iter().map(|p| p.p_vaddr).min(), Some(0), "PIE linked at 0");
    let region = Region::new(0x30_0000, 0x10_0000);
    let (p, memory) = load_and_check(&image, &exe, region, 0x30_0000);
    assert_eq!(p.kind(), ImageKind::PositionIndependent);
    assert_eq!(p.base(), 0x30_0000);
    check_c_pointer_table(&exe, &image, &memory, 0x30_0000);
}

#[test]
fn gcc_higher_half_loads_low_and_runs_high() {
    let script = Path::new(FIXTURES).join("higher_half.ld");
    let script = format!("-Wl,-T,{}", script.display());
    let (exe, image) = gcc(
        "higher-half.elf",
        &["-static", "-no-pie", "-fno-pic", "-mcmodel=kernel", "-mno-red-zone", &script],
    );
    let region = Region::new(0x20_0000, 0x10_0000);
    let (p, memory) = load_and_check(&image, &exe, region, 0);
    assert_eq!(p.entry().vaddr, 0xffff_ffff_8020_0000);
    assert_eq!(p.entry().paddr, 0x20_0000);
    assert!(p.mappings().iter().all(|m| m.vaddr == m.paddr + 0xffff_ffff_8000_0000));
    check_c_pointer_table(&exe, &image, &memory, 0);
}

#[test]
fn gcc_object_file_is_refused_as_not_a_kernel() {
    let (_, image) = gcc("kernel.o", &["-c"]);
    assert_eq!(plan(&image, Region::new(0x20_0000, 0x10_0000)), Err(LoadError::RelocatableObject));
}

#[test]
fn rustc_x86_64_unknown_none_static_pie() {
    let exe = out_dir().join("rust-kernel.elf");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    run(
        Command::new(&rustc)
            // Inside the workspace, so rustup picks the pinned toolchain (rust-toolchain.toml).
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["--edition", "2021", "--target", "x86_64-unknown-none", "--crate-type", "bin"])
            .args(["-C", "panic=abort", "-C", "opt-level=s", "-o"])
            .arg(&exe)
            .arg(Path::new(FIXTURES).join("rust_kernel.rs")),
        "rustc --target x86_64-unknown-none",
    );
    let image = std::fs::read(&exe).unwrap();
    assert!(!readelf_relocations(&exe).is_empty(), "fixture must need R_X86_64_RELATIVE");
    let region = Region::new(0x40_0000, 0x10_0000);
    let (p, memory) = load_and_check(&image, &exe, region, 0x40_0000);
    assert_eq!(p.kind(), ImageKind::PositionIndependent);

    let sym = symbols(&exe);
    let loads: Vec<Phdr> =
        oracle_phdrs(&image).into_iter().filter(|ph| ph.p_type == PT_LOAD).collect();
    let table = oracle_paddr(&loads, sym["TABLE"], 0x40_0000);
    assert_eq!(memory.read_u64(table), sym["FIRST"] + 0x40_0000, "TABLE[0] == &FIRST");
    let second = memory.read_u64(table + 8);
    let second_paddr = oracle_paddr(&loads, second - 0x40_0000, 0x40_0000);
    assert_eq!(memory.read(second_paddr, 1), [0x33], "TABLE[1] points at 0x33");
    let zeroed = oracle_paddr(&loads, sym["ZEROED"], 0x40_0000);
    assert!(memory.read(zeroed, 256 * 8).iter().all(|&b| b == 0));
}
