//! Building the payload kernels the manager starts.
//!
//! The Rust payloads (`payloads/hello`, `compute`, `fault`, on the `payload-sdk` crate) are built
//! with cargo for `x86_64-unknown-none`, whose default output is a static PIE; the C payload
//! (`payloads/hello-c`) with the system C compiler (`$CC`, default `gcc`) against
//! `bootproto/include/multikernel.h`, with the flags in [`C_FLAGS`] that make it a freestanding
//! static PIE too. Every ELF is copied to `<target>/payloads/<name>.elf` and checked to be a
//! position-independent x86_64 executable (`ET_DYN`): the manager places each image at a region
//! chosen at run time, so a fixed-address `ET_EXEC` would be useless.
//!
//! The loader validates everything else (segments, entry, relocation types) when it plans the
//! load; this module only catches a build that went wrong before it reaches a QEMU run.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::build::KERNEL_TARGET;

/// A freestanding kernel outside the SDK (see `tests/images/spin.c`): linked at this fixed
/// physical address, so a manifest gives it `base` = this value.
pub const FOREIGN_IMAGE_BASE: u64 = 0x800_0000;

/// Builds `tests/images/spin.c` as a fixed-address ET_EXEC with the system C compiler and
/// returns its path.
pub fn build_foreign_image(root: &Path, target_dir: &Path) -> anyhow::Result<PathBuf> {
    let out_dir = target_dir.join("images");
    std::fs::create_dir_all(&out_dir)?;
    let out = out_dir.join("spin.elf");
    let cc = std::env::var("CC").unwrap_or_else(|_| "gcc".into());
    let status = Command::new(&cc)
        .args(["-ffreestanding", "-nostdlib", "-static", "-no-pie", "-fno-pic", "-O2"])
        .args(["-mno-red-zone", "-mgeneral-regs-only", "-fno-stack-protector"])
        .arg(format!("-Wl,-Ttext-segment={FOREIGN_IMAGE_BASE:#x}"))
        .args(["-Wl,-e,_start", "-Wl,--build-id=none", "-o"])
        .arg(&out)
        .arg(root.join("tests/images/spin.c"))
        .status()
        .with_context(|| format!("running {cc} for tests/images/spin.c (install gcc or set CC)"))?;
    if !status.success() {
        bail!("{cc} failed to build tests/images/spin.c");
    }
    Ok(out)
}

/// A built payload: its short name (used in the manager's configuration) and its ELF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    pub name: &'static str,
    pub path: PathBuf,
}

/// The Rust payloads: (short name, cargo package; the binary has the package's name).
const RUST_PAYLOADS: &[(&str, &str)] =
    &[("hello", "payload-hello"), ("compute", "payload-compute"), ("fault", "payload-fault")];

/// The C payloads: (short name, source relative to the workspace root).
const C_PAYLOADS: &[(&str, &str)] =
    &[("hello-c", "payloads/hello-c/hello.c"), ("hostile-c", "payloads/hostile-c/hostile.c")];

/// The names of the payloads [`build_all`] builds, as a manifest's `payload =` names them.
pub fn names() -> impl Iterator<Item = &'static str> {
    RUST_PAYLOADS.iter().chain(C_PAYLOADS).map(|(name, _)| *name)
}

/// Compiler and linker flags for a C payload: freestanding, no SSE (like the Rust target), no
/// red zone, no stack protector or CET instrumentation (nothing provides their runtime), and a
/// static PIE whose only relocations are R_X86_64_RELATIVE ones the manager's loader applies
/// (`-z text` fails the link if code would need relocating). The entry is `_start(const struct
/// mk_boot_info *)`.
const C_FLAGS: &[&str] = &[
    "-std=c11",
    "-O2",
    "-g",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-ffreestanding",
    "-fno-builtin",
    "-nostdlib",
    "-nostartfiles",
    "-fno-stack-protector",
    "-fno-stack-clash-protection",
    "-fcf-protection=none",
    "-mno-red-zone",
    "-mgeneral-regs-only",
    "-fno-tree-loop-distribute-patterns",
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",
    "-fpie",
    "-static-pie",
    "-Wl,--no-dynamic-linker",
    "-Wl,-e,_start",
    "-Wl,-z,text",
    "-Wl,-z,noexecstack",
    "-Wl,-z,separate-code",
    "-Wl,--build-id=none",
];

/// Builds every payload; returns them in a fixed order: the Rust ones, then the C ones.
pub fn build_all(root: &Path, target_dir: &Path) -> anyhow::Result<Vec<Payload>> {
    let out_dir = target_dir.join("payloads");
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("creating the payload directory {}", out_dir.display()))?;
    let mut payloads = build_rust(root, target_dir, &out_dir)?;
    for &(name, source) in C_PAYLOADS {
        payloads.push(build_c(root, &out_dir, name, source)?);
    }
    for p in &payloads {
        check_static_pie(&p.path)?;
    }
    Ok(payloads)
}

fn build_rust(root: &Path, target_dir: &Path, out_dir: &Path) -> anyhow::Result<Vec<Payload>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(root).args(["build", "--quiet", "--release", "--target", KERNEL_TARGET]);
    cmd.arg("--target-dir").arg(target_dir);
    for (_, package) in RUST_PAYLOADS {
        cmd.args(["--package", package]);
    }
    let status = cmd
        .status()
        .with_context(|| format!("running {} build for the payloads", cargo.to_string_lossy()))?;
    if !status.success() {
        bail!("building the Rust payloads failed ({status}); see cargo's messages above");
    }
    let built_dir = target_dir.join(KERNEL_TARGET).join("release");
    RUST_PAYLOADS
        .iter()
        .map(|&(name, package)| {
            let built = built_dir.join(package);
            let path = out_dir.join(format!("{name}.elf"));
            std::fs::copy(&built, &path)
                .with_context(|| format!("copying {} to {}", built.display(), path.display()))?;
            Ok(Payload { name, path })
        })
        .collect()
}

fn build_c(
    root: &Path,
    out_dir: &Path,
    name: &'static str,
    source: &str,
) -> anyhow::Result<Payload> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "gcc".to_string());
    let path = out_dir.join(format!("{name}.elf"));
    let include = root.join("bootproto").join("include");
    let mut cmd = Command::new(&cc);
    cmd.current_dir(root).args(C_FLAGS).arg("-I").arg(&include);
    cmd.arg(root.join(source)).arg("-o").arg(&path);
    let status = match cmd.status() {
        Ok(status) => status,
        Err(e) if e.kind() == ErrorKind::NotFound => bail!(
            "{cc} not found: install gcc (Debian/Ubuntu: apt-get install gcc) or set CC to a C \
             compiler that can link a static PIE; it builds the C payload {source}"
        ),
        Err(e) => return Err(e).with_context(|| format!("running {cc} for {source}")),
    };
    if !status.success() {
        bail!(
            "compiling the C payload {source} with {cc} failed ({status}); see its messages above"
        );
    }
    Ok(Payload { name, path })
}

/// ELF header facts this module checks (ELF gABI, "ELF Header").
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const ET_DYN: u16 = 3;
const EM_X86_64: u16 = 62;

/// Why an ELF is not a payload the manager can place at a run-time address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeaderProblem {
    NotElf64Le,
    Machine(u16),
    Type(u16),
}

fn check_header(bytes: &[u8]) -> Result<(), HeaderProblem> {
    let ident_ok = bytes.get(..4) == Some(b"\x7fELF".as_slice())
        && bytes.get(4) == Some(&ELFCLASS64)
        && bytes.get(5) == Some(&ELFDATA2LSB);
    let half = |at: usize| bytes.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let (Some(e_type), Some(e_machine)) = (half(16), half(18)) else {
        return Err(HeaderProblem::NotElf64Le);
    };
    if !ident_ok {
        return Err(HeaderProblem::NotElf64Le);
    }
    if e_machine != EM_X86_64 {
        return Err(HeaderProblem::Machine(e_machine));
    }
    if e_type != ET_DYN {
        return Err(HeaderProblem::Type(e_type));
    }
    Ok(())
}

fn check_static_pie(path: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    match check_header(&bytes) {
        Ok(()) => Ok(()),
        Err(HeaderProblem::NotElf64Le) => {
            bail!("{} is not a 64-bit little-endian ELF file", path.display())
        }
        Err(HeaderProblem::Machine(m)) => {
            bail!("{} is for ELF machine {m}, not x86_64 ({EM_X86_64})", path.display())
        }
        Err(HeaderProblem::Type(t)) => bail!(
            "{} has ELF type {t}, not ET_DYN ({ET_DYN}): payloads must be static PIEs, because \
             the manager chooses their load address at run time",
            path.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(e_type: u16, e_machine: u16) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = ELFCLASS64;
        h[5] = ELFDATA2LSB;
        h[16..18].copy_from_slice(&e_type.to_le_bytes());
        h[18..20].copy_from_slice(&e_machine.to_le_bytes());
        h
    }

    #[test]
    fn only_x86_64_position_independent_elfs_pass() {
        assert_eq!(check_header(&header(ET_DYN, EM_X86_64)), Ok(()));
        assert_eq!(check_header(&header(2, EM_X86_64)), Err(HeaderProblem::Type(2)));
        assert_eq!(check_header(&header(ET_DYN, 3)), Err(HeaderProblem::Machine(3)));
        assert_eq!(check_header(b"\x7fELF"), Err(HeaderProblem::NotElf64Le));
        let mut elf32 = header(ET_DYN, EM_X86_64);
        elf32[4] = 1;
        assert_eq!(check_header(&elf32), Err(HeaderProblem::NotElf64Le));
    }
}
