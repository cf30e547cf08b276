//! Prerequisites that xtask checks (and, where it safely can, installs) before it boots QEMU.
//!
//! The toolchain itself is pinned by `rust-toolchain.toml`; `rustup toolchain install` in the
//! repository installs it (CI and the README do that, since xtask needs it to be compiled at
//! all). QEMU and OVMF are installed with apt-get when we run as root on Debian or Ubuntu;
//! anywhere else we print the one command to run and stop.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};
use qemu_tests::qemu::{self, Firmware, Ovmf};

const APT_PACKAGES: &[&str] = &["qemu-system-x86", "ovmf"];

fn qemu_present() -> bool {
    Command::new(qemu::QEMU).arg("--version").output().is_ok_and(|o| o.status.success())
}

/// QEMU's version as (major, minor), if QEMU runs.
pub fn qemu_version() -> Option<(u32, u32)> {
    let out = Command::new(qemu::QEMU).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.split("version ").nth(1)?.split_whitespace().next()?;
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((it.next()??, it.next()??))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn apt_install() -> anyhow::Result<()> {
    eprintln!("xtask: installing {} with apt-get", APT_PACKAGES.join(" "));
    let update =
        Command::new("apt-get").arg("update").status().context("running apt-get update")?;
    if !update.success() {
        bail!("apt-get update failed");
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(APT_PACKAGES)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get install")?;
    if !status.success() {
        bail!("apt-get install {} failed", APT_PACKAGES.join(" "));
    }
    Ok(())
}

/// Makes sure QEMU (and OVMF for UEFI runs) is present; returns OVMF when asked for.
pub fn ensure_qemu(firmware: Firmware) -> anyhow::Result<Option<Ovmf>> {
    let need_ovmf = firmware == Firmware::Uefi;
    let missing = !qemu_present() || (need_ovmf && qemu::find_ovmf().is_none());
    if missing {
        if is_root() && Path::new("/etc/debian_version").exists() {
            apt_install()?;
        } else {
            bail!(
                "QEMU{} is missing; install it with:\n    sudo apt-get install -y {}\n(or your distribution's qemu-system-x86_64 and OVMF/edk2 packages)",
                if need_ovmf { " or OVMF" } else { "" },
                APT_PACKAGES.join(" ")
            );
        }
    }
    if !qemu_present() {
        bail!("{} still does not run after installing", qemu::QEMU);
    }
    if need_ovmf {
        let ovmf = qemu::find_ovmf().with_context(|| {
            format!(
                "OVMF not found in any of: {}",
                qemu::OVMF_CANDIDATES.iter().map(|(c, _)| *c).collect::<Vec<_>>().join(", ")
            )
        })?;
        return Ok(Some(ovmf));
    }
    Ok(None)
}
