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

/// Builds `tests/images/big.c`: a 12 MiB static PIE (its data is in the file) that knows
/// nothing of the boot protocol, for the scenario that loads an image of a distribution
/// kernel's size. Returns the ELF's path.
pub fn build_big_image(root: &Path, target_dir: &Path) -> anyhow::Result<PathBuf> {
    let out_dir = target_dir.join("images");
    std::fs::create_dir_all(&out_dir)?;
    let out = out_dir.join("big.elf");
    let cc = std::env::var("CC").unwrap_or_else(|_| "gcc".into());
    let status = Command::new(&cc)
        .args(["-ffreestanding", "-nostdlib", "-static-pie", "-fPIE", "-O2"])
        .args(["-mno-red-zone", "-mgeneral-regs-only", "-fno-stack-protector"])
        .args(["-Wl,-e,_start", "-Wl,--build-id=none", "-Wl,-z,text", "-o"])
        .arg(&out)
        .arg(root.join("tests/images/big.c"))
        .status()
        .with_context(|| format!("running {cc} for tests/images/big.c (install gcc or set CC)"))?;
    if !status.success() {
        bail!("{cc} failed to build tests/images/big.c");
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
const RUST_PAYLOADS: &[(&str, &str)] = &[
    ("hello", "payload-hello"),
    ("compute", "payload-compute"),
    ("fault", "payload-fault"),
    ("ping", "payload-ping"),
    ("pong", "payload-pong"),
];

/// The C payloads: (short name, source relative to the workspace root).
const C_PAYLOADS: &[(&str, &str)] = &[
    ("hello-c", "payloads/hello-c/hello.c"),
    ("hostile-c", "payloads/hostile-c/hostile.c"),
    ("pong-c", "payloads/pong-c/pong.c"),
];

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

fn check_static_pie(path: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    match loader::identify(&bytes) {
        Ok(loader::ImageKind::PositionIndependent) => Ok(()),
        Ok(loader::ImageKind::Executable) => bail!(
            "{} is linked at fixed addresses (ET_EXEC): payloads must be static PIEs, because \
             the manager chooses their load address at run time",
            path.display()
        ),
        Err(e) => bail!("{}: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(e_type: u16, e_machine: u16) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2; // ELFCLASS64
        h[5] = 1; // little-endian
        h[16..18].copy_from_slice(&e_type.to_le_bytes());
        h[18..20].copy_from_slice(&e_machine.to_le_bytes());
        h
    }

    #[test]
    fn only_x86_64_position_independent_elfs_pass() {
        let dir = std::env::temp_dir().join(format!("mk-payload-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let check = |bytes: Vec<u8>| {
            let p = dir.join("x.elf");
            std::fs::write(&p, bytes).unwrap();
            check_static_pie(&p).map_err(|e| e.to_string())
        };
        assert_eq!(check(header(3, 62)), Ok(()));
        assert!(check(header(2, 62)).unwrap_err().contains("fixed addresses (ET_EXEC)"));
        assert!(check(header(3, 3)).unwrap_err().contains("machine"));
        assert!(check(b"\x7fELF".to_vec()).is_err());
        let mut elf32 = header(3, 62);
        elf32[4] = 1;
        assert!(check(elf32).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
