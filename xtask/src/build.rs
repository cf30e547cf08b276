//! Building the manager and its boot images.
//!
//! The manager is built for `x86_64-unknown-none` with cargo (one build per feature set, see
//! `qemu_tests::scenarios::KernelVariant`), copied to `target/kernels/<variant>/kernel`, and
//! wrapped into raw disk images by the `bootloader` crate's `DiskImageBuilder`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use bootloader::{BootConfig, DiskImageBuilder};
use qemu_tests::qemu::Firmware;
use qemu_tests::scenarios::KernelVariant;

pub const KERNEL_TARGET: &str = "x86_64-unknown-none";

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"))
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// The kernel crate's cargo features for each variant (see `kernel/Cargo.toml`).
pub fn features(variant: KernelVariant) -> &'static [&'static str] {
    match variant {
        KernelVariant::Usb => &[],
        KernelVariant::Qemu => &["qemu-exit"],
        KernelVariant::SelftestPanic => &["qemu-exit", "selftest-panic"],
        KernelVariant::SelftestFault => &["qemu-exit", "selftest-fault"],
        KernelVariant::UsbSelftestPanic => &["selftest-panic"],
    }
}

/// Builds the manager with the variant's features; returns the path of its ELF.
pub fn build_kernel(variant: KernelVariant) -> anyhow::Result<PathBuf> {
    let features = features(variant).join(",");
    let mut cmd = cargo();
    cmd.args(["build", "--quiet", "--package", "kernel", "--release", "--target", KERNEL_TARGET]);
    if !features.is_empty() {
        cmd.args(["--features", &features]);
    }
    let status = cmd.status().context("running cargo build for the manager")?;
    if !status.success() {
        bail!("building the manager ({}) failed", variant.name());
    }
    let built = target_dir().join(KERNEL_TARGET).join("release").join("kernel");
    let dir = target_dir().join("kernels").join(variant.name());
    std::fs::create_dir_all(&dir)?;
    let dest = dir.join("kernel");
    std::fs::copy(&built, &dest)
        .with_context(|| format!("copying {} to {}", built.display(), dest.display()))?;
    Ok(dest)
}

/// Writes the disk image for one firmware; returns its path.
pub fn build_image(
    kernel: &Path,
    ramdisk: Option<&Path>,
    firmware: Firmware,
    out_dir: &Path,
    stem: &str,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(out_dir)?;
    let mut builder = DiskImageBuilder::new(kernel.to_path_buf());
    if let Some(r) = ramdisk {
        builder.set_ramdisk(r.to_path_buf());
    }
    let mut config = BootConfig::default();
    // The bootloader's trace output would bury the manager's console; keep its warnings.
    config.log_level = bootloader_boot_config::LevelFilter::Warn;
    builder.set_boot_config(&config);
    let path = out_dir.join(format!("{stem}-{}.img", firmware.name()));
    match firmware {
        Firmware::Bios => builder.create_bios_image(&path),
        Firmware::Uefi => builder.create_uefi_image(&path),
    }
    .with_context(|| format!("creating the {} image {}", firmware.name(), path.display()))?;
    Ok(path)
}
