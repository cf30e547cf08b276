//! Packing a boot bundle (the ramdisk the manager reads): instances plus their images.
//!
//! The format and its checks live in `platform::bundle`, shared with the manager; this module
//! turns a list of instances naming this repository's payloads into one, and writes bundles
//! (from that list or from a manifest) to the file the disk image builder takes.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use platform::bundle::{Bundle, Cpus, File, Instance, Protocol, Restart, Settings};
use qemu_tests::scenarios::{InstanceSpec, Tamper};

use crate::payloads::Payload;

/// Writes the bundle for `specs` to `out`, reading the payload ELFs built by `payloads`, and
/// damaging the named payload images as `tamper` says (tests of the manager's re-checks).
pub fn write(
    specs: &[InstanceSpec],
    payloads: &[Payload],
    settings: Settings,
    tamper: &[(&str, Tamper)],
    out: &Path,
) -> anyhow::Result<PathBuf> {
    let mut bundle = Bundle { settings, ..Bundle::default() };
    for spec in specs {
        let file = match bundle.files.iter().position(|f| f.name == spec.payload) {
            Some(i) => i,
            None => {
                let Some(p) = payloads.iter().find(|p| p.name == spec.payload) else {
                    bail!(
                        "instance '{}' names payload '{}', which this repository does not build (known: {})",
                        spec.name,
                        spec.payload,
                        payloads.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
                    );
                };
                let data = std::fs::read(&p.path)
                    .with_context(|| format!("reading {}", p.path.display()))?;
                bundle.files.push(File { name: spec.payload.into(), data });
                bundle.files.len() - 1
            }
        };
        bundle.instances.push(Instance {
            name: spec.name.into(),
            file: file as u32,
            cpus: spec.cpu.map_or(Cpus::Any(1), |c| Cpus::Exactly(vec![c])),
            memory: spec.memory_mib << 20,
            base: None,
            restart: if spec.restart_on_failure.is_some() {
                Restart::OnFailure
            } else {
                Restart::Never
            },
            max_restarts: spec.restart_on_failure.unwrap_or(0),
            heartbeat_timeout_ms: spec.heartbeat_timeout_ms,
            protocol: Protocol::Multikernel,
            protocol_version: bootproto::PROTOCOL_VERSION,
            devices: Vec::new(),
            initrd: None,
            cmdline: String::new(),
            args: spec.args.into(),
        });
    }
    for (name, t) in tamper {
        if *t == Tamper::WrongMachine {
            let f = bundle.files.iter_mut().find(|f| f.name == *name).context("tampered file")?;
            // e_machine (ELF gABI, "ELF Header", offset 18): EM_AARCH64 instead of EM_X86_64.
            f.data[18..20].copy_from_slice(&183u16.to_le_bytes());
        }
    }
    let mut bytes = bundle.encode().map_err(|e| anyhow::anyhow!("{e}"))?;
    for (name, t) in tamper {
        if *t == Tamper::BreakChecksum {
            let parsed = platform::bundle::parse(&bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
            let f = parsed.files.iter().find(|f| f.name == *name).context("tampered file")?;
            // Flip a byte in the middle of the image after its checksum was computed.
            let at = (f.offset + f.len / 2) as usize;
            bytes[at] ^= 0x5a;
        }
    }
    save_bytes(&bytes, out)
}

/// Encodes `bundle` and writes it to `out` (creating its folder); returns `out`.
pub fn save(bundle: &Bundle, out: &Path) -> anyhow::Result<PathBuf> {
    save_bytes(&bundle.encode().map_err(|e| anyhow::anyhow!("{e}"))?, out)
}

fn save_bytes(bytes: &[u8], out: &Path) -> anyhow::Result<PathBuf> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(out, bytes).with_context(|| format!("writing {}", out.display()))?;
    Ok(out.to_path_buf())
}
