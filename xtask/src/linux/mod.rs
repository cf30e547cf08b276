//! Linux as an instance: the test material (Debian's cloud kernel and a static busybox,
//! [`fetch`]) and the initramfs the Linux tests boot ([`initramfs`]).
//!
//! Background and measurements: `shared/research/linux-instance.md`.

pub mod fetch;
pub mod initramfs;

use std::path::{Path, PathBuf};

use anyhow::Context;

/// The `/init` of the demo initramfs (and of the Linux scenarios): mounts the kernel's file
/// systems, prints what the instance sees (its CPUs, its memory map, its console) between
/// `MK-` markers, runs a shell command, tells the manager it is alive through the status page
/// the manager names on the command line (`mk.status=`; docs/linux.md), then leaves a shell
/// on the console. Only `halt -f`/`poweroff -f` may end it: a reboot would reset the machine.
pub const DEMO_INIT: &str = r#"#!/bin/sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "MK-LINUX-INIT uptime=$(cut -d' ' -f1 /proc/uptime)"
echo "MK-CPUS online=$(cat /sys/devices/system/cpu/online) present=$(cat /sys/devices/system/cpu/present)"
grep MemTotal /proc/meminfo
echo "MK-MEMMAP-BEGIN"
for d in /sys/firmware/memmap/*; do echo "memmap $(cat $d/start)-$(cat $d/end) $(cat $d/type)"; done
grep -v "^ " /proc/iomem
echo "MK-MEMMAP-END"
echo "MK-CONSOLE $(grep -c . /proc/tty/driver/serial 2>/dev/null) $(cat /proc/tty/driver/serial 2>/dev/null | grep -v 'uart:unknown' | tail -n +2 | tr '\n' ' ')"
echo 'echo MK-SHELL-OK' | sh
status=$(sed -n 's/.*mk\.status=\(0x[0-9a-fA-F]*\).*/\1/p' /proc/cmdline)
if [ -n "$status" ]; then
    # StatusBlock (docs/boot-protocol.md): state (u32) at +0, heartbeat (u64) at +8.
    if devmem "$status" 32 1 2>/dev/null; then
        echo "MK-HEARTBEAT on at $status"
        ( n=0; while true; do n=$((n + 1)); devmem $((status + 8)) 64 $n; sleep 1; done ) &
    else
        echo "MK-HEARTBEAT unavailable (devmem refused $status)"
    fi
fi
echo "MK-LINUX-DONE"
exec setsid cttyhack sh
"#;

/// What `cargo xtask linux` prepares under `target/linux`.
pub struct Prepared {
    pub material: fetch::Material,
    /// A copy of the kernel with a stable name, for manifests.
    pub vmlinuz: PathBuf,
    /// The demo initramfs ([`DEMO_INIT`] and busybox).
    pub initramfs: PathBuf,
}

/// Fetches (or finds cached) Debian's cloud kernel and busybox under `root`, and writes
/// `root/vmlinuz` and `root/initramfs.cpio.gz`.
pub fn prepare(root: &Path) -> anyhow::Result<Prepared> {
    let material = fetch::material(root)?;
    let vmlinuz = root.join("vmlinuz");
    std::fs::copy(&material.bzimage, &vmlinuz).with_context(|| {
        format!("copying {} to {}", material.bzimage.display(), vmlinuz.display())
    })?;
    let busybox = std::fs::read(&material.busybox)
        .with_context(|| format!("reading {}", material.busybox.display()))?;
    let image = initramfs::busybox_initramfs(&busybox, DEMO_INIT)?;
    let initramfs = root.join("initramfs.cpio.gz");
    std::fs::write(&initramfs, image)
        .with_context(|| format!("writing {}", initramfs.display()))?;
    Ok(Prepared { material, vmlinuz, initramfs })
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;
    use std::time::Instant;

    use super::{fetch, initramfs};

    /// What the smoke test's `/init` runs: markers on the console, a shell pipeline, power off.
    const SMOKE_INIT: &str = "#!/bin/sh
busybox mount -t proc proc /proc
busybox mount -t sysfs sys /sys
echo \"MK-INIT-OK uptime=$(busybox cat /proc/uptime)\"
echo 'echo MK-SHELL-OK' | sh
busybox poweroff -f
";

    /// Manual check that the material boots: Debian's kernel with the busybox initramfs under
    /// plain QEMU (not the manager), `-kernel`/`-initrd`, TCG, 60 s bound:
    /// `cargo test -p xtask -- --ignored boots_under_plain_qemu --nocapture`.
    #[test]
    #[ignore = "downloads from the Debian archive and boots QEMU (about 5 s under TCG)"]
    fn boots_under_plain_qemu() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/linux");
        let m = match fetch::material(&root) {
            Ok(m) => m,
            Err(e) if fetch::is_unavailable(&e) => {
                println!("SKIP boots_under_plain_qemu: {e}");
                return;
            }
            Err(e) => panic!("{e:#}"),
        };
        let busybox = std::fs::read(&m.busybox).unwrap();
        let image = initramfs::busybox_initramfs(&busybox, SMOKE_INIT).unwrap();
        let initrd = std::env::temp_dir().join(format!("mk-smoke-{}.cpio.gz", std::process::id()));
        std::fs::write(&initrd, &image).unwrap();
        println!("initramfs: {} B gzip, {}", image.len(), initrd.display());

        let started = Instant::now();
        let out = Command::new("timeout")
            .arg("60")
            .arg("qemu-system-x86_64")
            .args(["-machine", "q35", "-m", "256M", "-smp", "1", "-nographic", "-no-reboot"])
            .arg("-kernel")
            .arg(&m.bzimage)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", "console=ttyS0 panic=-1 rdinit=/init"])
            .output()
            .expect("running timeout 60 qemu-system-x86_64");
        let seconds = started.elapsed().as_secs_f64();
        let _ = std::fs::remove_file(&initrd);
        let console = String::from_utf8_lossy(&out.stdout);
        println!("{console}");
        println!("qemu: {} after {seconds:.2} s", out.status);
        assert!(console.contains("MK-INIT-OK"), "no MK-INIT-OK on the console");
        assert!(console.contains("MK-SHELL-OK"), "no MK-SHELL-OK on the console");
        assert!(out.status.success(), "QEMU did not power off by itself within 60 s");
    }
}
