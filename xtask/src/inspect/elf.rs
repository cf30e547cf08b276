//! `cargo xtask inspect elf FILE [--region BASE:SIZE] [--json]`: the manager's ELF loader, run
//! on the host.
//!
//! The file goes through [`loader::plan`], the same code the manager runs before it starts an
//! instance, so the verdict and the message are the manager's. It prints the plan (segments,
//! entry point, page mappings, relocations, bytes to copy and to zero) or the refusal, and exits
//! 0 only when the image would load.
//!
//! # Which region
//! - `--region BASE:SIZE`: the instance's region, each number decimal or `0x` hex with an
//!   optional `K`/`M`/`G` suffix (`0x10000000:64M`); see [`loader::Region`]'s text form.
//! - Without it, `ET_EXEC` images are checked against their own physical extent, rounded out to
//!   4 KiB pages (they can only load where they are linked), and static PIEs against
//!   [`DEFAULT_PIE_REGION`] (256 MiB..320 MiB, i.e. `0x10000000:64M`).
//!
//! # JSON (`--json`)
//! One object: `{"file", "region": {"base", "size"}, "region_source": "argument" | "image
//! extent" | "default PIE region" | "any region: ...", "loads": bool, "error": null | "message", "error_detail":
//! null | "Variant { .. }", "plan": null | {"kind", "base", "entry": {"vaddr", "paddr"},
//! "segments": [{"index", "flags" (e.g. "RX"), "file_offset", "file_size", "link_vaddr", "vaddr", "paddr",
//! "mem_size", "zero_fill": {"start", "end"}}], "mappings": [{"vaddr", "paddr", "size",
//! "flags"}], "relocations": [{"offset", "vaddr", "paddr", "value"}], "bytes_to_copy",
//! "bytes_to_zero"}}`. Addresses and sizes are `0x` hex strings (higher-half addresses do not
//! survive tools that read JSON numbers as doubles); byte totals are numbers.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use loader::{Flags, LoadError, LoadPlan, Region, PAGE_SIZE};
use serde_json::{json, Value};

/// Region PIE images are checked against when `--region` is not given: 64 MiB at 256 MiB, a
/// plausible reservation on a small machine, above the legacy low-memory holes.
pub const DEFAULT_PIE_REGION: Region = Region::new(0x1000_0000, 64 << 20);

/// All of physical memory as x86-64 can address it (MAXPHYADDR is at most 52 bits; Intel SDM
/// Vol. 3A, "Physical Address Space"): the region of the first, region-independent check.
const WHOLE_PHYSICAL_SPACE: Region = Region::new(0, 1 << 52);

#[derive(clap::Args, Debug)]
pub struct ElfArgs {
    /// ELF kernel image (ET_EXEC, or a static PIE such as Rust's x86_64-unknown-none output).
    pub file: PathBuf,
    /// Physical region the instance owns, BASE:SIZE (e.g. 0x10000000:64M; hex or decimal, K/M/G
    /// suffixes). Default: ET_EXEC images their own extent rounded to pages, PIE images
    /// 0x10000000:64M.
    #[arg(long, value_name = "BASE:SIZE")]
    pub region: Option<Region>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Where the region being checked came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RegionSource {
    Argument,
    ImageExtent,
    DefaultPie,
    /// The image failed a check that does not depend on the region.
    WholeSpace,
}

impl RegionSource {
    fn name(self) -> &'static str {
        match self {
            Self::Argument => "argument",
            Self::ImageExtent => "image extent",
            Self::DefaultPie => "default PIE region",
            Self::WholeSpace => "any region: the image itself is invalid",
        }
    }
}

pub fn run(args: ElfArgs) -> anyhow::Result<ExitCode> {
    let image = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let (region, source, result) = inspect(&image, args.region);
    let file = args.file.display().to_string();
    let text = if args.json {
        format!("{}\n", to_json(&file, region, source, &result))
    } else {
        to_text(&file, region, source, &result)
    };
    // A closed pipe (`| head`) is not an error worth a panic.
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other.context("writing to stdout")?,
    }
    Ok(if result.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Chooses the region (see the module docs) and plans against it.
fn inspect(
    image: &[u8],
    region: Option<Region>,
) -> (Region, RegionSource, Result<LoadPlan, LoadError>) {
    if let Some(region) = region {
        return (region, RegionSource::Argument, loader::plan(image, region));
    }
    // Everything that does not depend on the region is checked against all of physical memory
    // first; a refusal there is the image's own fault whatever region it is given.
    let probe = match loader::plan(image, WHOLE_PHYSICAL_SPACE) {
        Ok(plan) => plan,
        Err(e) => return (WHOLE_PHYSICAL_SPACE, RegionSource::WholeSpace, Err(e)),
    };
    let (region, source) = match probe.kind() {
        loader::ImageKind::Executable => (extent(&probe), RegionSource::ImageExtent),
        loader::ImageKind::PositionIndependent => (DEFAULT_PIE_REGION, RegionSource::DefaultPie),
    };
    (region, source, loader::plan(image, region))
}

/// The pages an ET_EXEC plan's segments occupy physically, as one region.
fn extent(plan: &LoadPlan) -> Region {
    let occupied = plan.segments().iter().filter(|s| s.mem_size > 0);
    let low = occupied.clone().map(|s| s.paddr).min().unwrap_or(0) & !(PAGE_SIZE - 1);
    let high = occupied.map(|s| s.paddr.saturating_add(s.mem_size)).max().unwrap_or(0);
    let high = high.saturating_add(PAGE_SIZE - 1) & !(PAGE_SIZE - 1);
    Region::new(low, high.saturating_sub(low))
}

fn hex(value: u64) -> String {
    format!("{value:#x}")
}

/// `"RX"`, `"RW"`: the letters of the permissions granted.
fn flags_text(flags: Flags) -> String {
    [(flags.read, 'R'), (flags.write, 'W'), (flags.execute, 'X')]
        .iter()
        .filter_map(|&(on, c)| on.then_some(c))
        .collect()
}

fn to_text(
    file: &str,
    region: Region,
    source: RegionSource,
    result: &Result<LoadPlan, LoadError>,
) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let plan = match result {
        Err(e) => {
            let _ = writeln!(out, "{file}: REFUSED for region {region} ({}): {e}", source.name());
            return out;
        }
        Ok(plan) => plan,
    };
    let _ =
        writeln!(out, "{file}: loads as {} into region {region} ({})", plan.kind(), source.name());
    let entry = plan.entry();
    let _ = writeln!(out, "  entry: virtual {:#x}, physical {:#x}", entry.vaddr, entry.paddr);
    let _ = writeln!(out, "  image base (physical): {:#x}", plan.base());
    let _ = writeln!(out, "  segments:");
    let _ = writeln!(
        out,
        "    {:>4}  {:<3}  {:>10}  {:>10}  {:>18}  {:>18}  {:>10}  zero-fill (physical)",
        "phdr", "flg", "file off", "file size", "vaddr", "paddr", "mem size"
    );
    for s in plan.segments() {
        let zero = s.zero_range();
        let zero = if zero.is_empty() {
            "-".to_string()
        } else {
            format!("[{:#x}, {:#x})", zero.start, zero.end)
        };
        let _ = writeln!(
            out,
            "    {:>4}  {}  {:>10}  {:>10}  {:>18}  {:>18}  {:>10}  {zero}",
            s.index,
            s.flags,
            hex(s.file_offset),
            hex(s.file_size),
            hex(s.vaddr),
            hex(s.paddr),
            hex(s.mem_size),
        );
    }
    let _ = writeln!(out, "  mappings (4 KiB pages):");
    for m in plan.mappings() {
        let _ = writeln!(
            out,
            "    {:>18} -> {:>18}  {:>10} bytes  {}",
            hex(m.vaddr),
            hex(m.paddr),
            hex(m.size),
            m.flags
        );
    }
    let relocations = plan.relocations();
    let _ = writeln!(out, "  relocations: {} R_X86_64_RELATIVE", relocations.len());
    const SHOWN: usize = 8;
    for r in relocations.iter().take(SHOWN) {
        let _ = writeln!(out, "    [{:#x}] (physical {:#x}) = {:#x}", r.vaddr, r.paddr, r.value);
    }
    if relocations.len() > SHOWN {
        let _ = writeln!(out, "    ... {} more (--json lists all)", relocations.len() - SHOWN);
    }
    let _ = writeln!(
        out,
        "  bytes to copy: {} ({:#x}); bytes to zero: {} ({:#x})",
        plan.bytes_to_copy(),
        plan.bytes_to_copy(),
        plan.bytes_to_zero(),
        plan.bytes_to_zero()
    );
    out
}

fn to_json(
    file: &str,
    region: Region,
    source: RegionSource,
    result: &Result<LoadPlan, LoadError>,
) -> Value {
    let region_json = json!({ "base": hex(region.base), "size": hex(region.size) });
    match result {
        Err(e) => json!({
            "file": file,
            "region": region_json,
            "region_source": source.name(),
            "loads": false,
            "error": e.to_string(),
            "error_detail": format!("{e:?}"),
            "plan": null,
        }),
        Ok(plan) => {
            let segments: Vec<Value> = plan
                .segments()
                .iter()
                .map(|s| {
                    let zero = s.zero_range();
                    json!({
                        "index": s.index,
                        "flags": flags_text(s.flags),
                        "file_offset": hex(s.file_offset),
                        "file_size": hex(s.file_size),
                        "link_vaddr": hex(s.link_vaddr),
                        "vaddr": hex(s.vaddr),
                        "paddr": hex(s.paddr),
                        "mem_size": hex(s.mem_size),
                        "zero_fill": { "start": hex(zero.start), "end": hex(zero.end) },
                    })
                })
                .collect();
            let mappings: Vec<Value> = plan
                .mappings()
                .iter()
                .map(|m| {
                    json!({
                        "vaddr": hex(m.vaddr),
                        "paddr": hex(m.paddr),
                        "size": hex(m.size),
                        "flags": flags_text(m.flags),
                    })
                })
                .collect();
            let relocations: Vec<Value> = plan
                .relocations()
                .iter()
                .map(|r| {
                    json!({
                        "offset": hex(r.offset),
                        "vaddr": hex(r.vaddr),
                        "paddr": hex(r.paddr),
                        "value": hex(r.value),
                    })
                })
                .collect();
            json!({
                "file": file,
                "region": region_json,
                "region_source": source.name(),
                "loads": true,
                "error": null,
                "error_detail": null,
                "plan": {
                    "kind": plan.kind().to_string(),
                    "base": hex(plan.base()),
                    "entry": { "vaddr": hex(plan.entry().vaddr), "paddr": hex(plan.entry().paddr) },
                    "segments": segments,
                    "mappings": mappings,
                    "relocations": relocations,
                    "bytes_to_copy": plan.bytes_to_copy(),
                    "bytes_to_zero": plan.bytes_to_zero(),
                },
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_argument_parses_hex_decimal_and_suffixes() {
        use clap::Parser;
        #[derive(clap::Parser, Debug)]
        struct Cli {
            #[command(flatten)]
            args: ElfArgs,
        }
        let cli = Cli::try_parse_from(["x", "k.elf", "--region", "0x10000000:64M"]).unwrap();
        assert_eq!(cli.args.region, Some(Region::new(0x1000_0000, 64 << 20)));
        let cli = Cli::try_parse_from(["x", "k.elf", "--region", "2097152:0x200000"]).unwrap();
        assert_eq!(cli.args.region, Some(Region::new(0x20_0000, 0x20_0000)));
        assert!(Cli::try_parse_from(["x", "k.elf", "--region", "0x1000"]).is_err());
    }

    #[test]
    fn garbage_is_refused_against_the_whole_space() {
        let (region, source, result) = inspect(b"not an elf", None);
        assert_eq!((region, source), (WHOLE_PHYSICAL_SPACE, RegionSource::WholeSpace));
        assert!(matches!(result, Err(LoadError::NotElf { .. })));
    }
}
