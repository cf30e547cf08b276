//! From a checked [`Manifest`] to the boot bundle the manager reads (`platform::bundle`), and
//! the loader check that images (when the manifest is loaded) and payloads (when the bundle is
//! made) must pass.
//!
//! [`loader_check`] plans an image the way the manager will: into the load area of the
//! instance's region as `bootproto::layout::Layout` lays it out for one CPU, so the host and
//! the manager share one rule for what is left once the shared pages, the CPU slot and the
//! stack are set aside.

use std::collections::HashMap;

use bootproto::layout::Layout;
use platform::bundle::{Bundle, File, Instance};

use super::source::{ManifestError, ManifestErrors};
use super::{memory_too_small, size_text, Kernel, Manifest, NAME_MAX};
use crate::payloads::Payload;

/// Where the loader is asked to place a position-independent image when checking it on the
/// host: any 2 MiB-aligned address works, since the manager chooses the real one at boot.
const REPRESENTATIVE_BASE: u64 = 0x1000_0000;

/// The boot bundle for `manifest`, with the payloads' ELFs from `payloads`. Checks each
/// payload with the loader against its instance's memory, and the bundle's own limits.
pub fn to_bundle(manifest: &Manifest, payloads: &[Payload]) -> Result<Bundle, ManifestErrors> {
    let mut errors = Vec::new();
    let error = |at: Option<(usize, usize)>, message: String| ManifestError {
        file: manifest.path.clone(),
        at,
        message,
    };
    let mut bundle = Bundle { settings: manifest.settings.clone(), ..Bundle::default() };
    // Files are shared between instances that run the same payload or image.
    let mut file_index: HashMap<(bool, String), u32> = HashMap::new();
    for inst in &manifest.instances {
        let who = format!("instance '{}'", inst.name);
        let (key, file_name, bytes) = match &inst.kernel {
            Kernel::Payload(name) => {
                let Some(p) = payloads.iter().find(|p| p.name == name) else {
                    errors.push(error(
                        Some(inst.kernel_at),
                        format!("{who}: payload {name:?} was not built"),
                    ));
                    continue;
                };
                let bytes = match std::fs::read(&p.path) {
                    Ok(b) => b,
                    Err(e) => {
                        errors.push(error(
                            Some(inst.kernel_at),
                            format!("{who}: cannot read payload {}: {e}", p.path.display()),
                        ));
                        continue;
                    }
                };
                if let Err(why) = loader_check(&bytes, inst.memory, inst.base, inst.cpus.count()) {
                    errors.push(error(
                        Some(inst.kernel_at),
                        format!("{who}: payload {name:?} refused by the loader: {why}"),
                    ));
                    continue;
                }
                ((false, name.clone()), name.clone(), bytes)
            }
            Kernel::Image { path, bytes } => {
                let file_name = path
                    .file_name()
                    .map_or_else(|| "image".to_string(), |n| n.to_string_lossy().into_owned());
                ((true, path.display().to_string()), truncate(&file_name, NAME_MAX), bytes.clone())
            }
        };
        let mut add = |key: (bool, String), name: String, data: Vec<u8>| match file_index.get(&key)
        {
            Some(&i) => i,
            None => {
                bundle.files.push(File { name, data });
                let i = (bundle.files.len() - 1) as u32;
                file_index.insert(key, i);
                i
            }
        };
        let file = add(key, file_name, bytes);
        let initrd = inst.initrd.as_ref().map(|(path, bytes)| {
            let name = path
                .file_name()
                .map_or_else(|| "initrd".into(), |n| n.to_string_lossy().into_owned());
            add((true, path.display().to_string()), truncate(&name, NAME_MAX), bytes.clone())
        });
        bundle.instances.push(Instance {
            name: inst.name.clone(),
            file,
            cpus: inst.cpus.clone(),
            memory: inst.memory,
            base: inst.base,
            restart: inst.restart,
            max_restarts: inst.max_restarts,
            heartbeat_timeout_ms: inst.heartbeat_timeout_ms.unwrap_or(0),
            protocol: inst.protocol,
            protocol_version: inst.protocol_version,
            devices: inst.devices.clone(),
            initrd,
            cmdline: inst.cmdline.clone(),
            args: inst.args.clone(),
        });
    }
    bundle.channels = manifest
        .channels
        .iter()
        .map(|c| platform::bundle::Channel {
            name: c.name.clone(),
            between: [c.between[0] as u32, c.between[1] as u32],
            size: c.size,
            base: c.base,
        })
        .collect();
    if errors.is_empty() {
        if let Err(e) = bundle.encode() {
            errors.push(error(None, format!("cannot make a boot bundle: {e}")));
        }
    }
    if errors.is_empty() {
        Ok(bundle)
    } else {
        Err(ManifestErrors(errors))
    }
}

/// Plans `image` the way the manager will (`Supervisor::load` in `platform::supervisor`): in
/// the load area of the instance's region with `cpus` CPUs, below their stacks, CPU slots and
/// the shared pages ([`Layout::load_area`]).
pub(super) fn loader_check(
    image: &[u8],
    memory: u64,
    base: Option<u64>,
    cpus: usize,
) -> Result<(), String> {
    let region_base = base.unwrap_or(REPRESENTATIVE_BASE);
    let Some(layout) = Layout::new(region_base, memory, cpus.max(1) as u64) else {
        return Err(match region_base.checked_add(memory) {
            None => format!("base {region_base:#x} + memory {memory:#x} overflows 64 bits"),
            Some(_) => memory_too_small(size_text(memory)),
        });
    };
    let (load_base, load_len) = layout.load_area();
    let region = loader::Region::new(load_base, load_len);
    match loader::plan(image, region) {
        Ok(_) => Ok(()),
        Err(e) => {
            let fixed = loader::identify(image) == Ok(loader::ImageKind::Executable);
            if fixed && base.is_none() {
                Err(format!(
                    "{e} (it is linked at fixed addresses (ET_EXEC): set `base` to the region \
                     it was linked for)"
                ))
            } else {
                Err(e.to_string())
            }
        }
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}
