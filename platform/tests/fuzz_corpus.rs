//! Replays the fuzz seed corpora (platform/fuzz/corpus/) through the parsers, so CI checks
//! them without running the fuzzer, and regenerates the bundle seeds (`--ignored`).

use std::path::PathBuf;

use platform::bundle::{
    self, Bundle, Channel, Cpus, File, Instance, Protocol, Restart, Settings, Uart,
};
use platform::madt;

/// The seeds of a fuzz target: the MADT target's are the captured tables of
/// `tests/data/madt` (kept once, there); the others live in `fuzz/corpus/<name>`.
fn corpus(name: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = match name {
        "madt" => root.join("tests/data/madt"),
        _ => root.join("fuzz/corpus").join(name),
    };
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no seeds", dir.display());
    files.into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect()
}

#[test]
fn madt_seeds_parse_or_fail_cleanly() {
    let mut parsed = 0;
    for (path, bytes) in corpus("madt") {
        // Every seed, and every truncation of it, must give a result, never a panic.
        for cut in [bytes.len(), bytes.len() / 2, 45, 44, 36, 3, 0] {
            let _ = madt::parse(&bytes[..cut.min(bytes.len())]);
        }
        parsed += madt::parse(&bytes).is_ok() as usize;
        let _ = path;
    }
    assert!(parsed >= 10, "the captured tables in the corpus must parse ({parsed} did)");
}

#[test]
fn bundle_seeds_parse_or_fail_cleanly() {
    for (path, bytes) in corpus("bundle") {
        let p = bundle::parse(&bytes);
        assert!(p.is_ok(), "{}: {p:?}", path.display());
        let p = p.unwrap();
        for i in 0..p.files.len() as u32 {
            assert!(p.file(&bytes, i).is_ok());
        }
    }
}

/// `cargo test -p platform --test fuzz_corpus -- --ignored` rewrites the bundle seeds.
#[test]
#[ignore]
fn regenerate_bundle_seeds() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/bundle");
    std::fs::create_dir_all(&dir).unwrap();
    let elf_like = |n: u8| {
        let mut v = b"\x7fELF".to_vec();
        v.extend(std::iter::repeat_n(n, 60));
        v
    };
    let inst = |name: &str, file: u32, cpus: Cpus| Instance {
        name: name.into(),
        file,
        cpus,
        memory: 8 << 20,
        base: None,
        restart: Restart::Never,
        max_restarts: 0,
        heartbeat_timeout_ms: 0,
        protocol: Protocol::Multikernel,
        protocol_version: bootproto::PROTOCOL_VERSION,
        devices: vec![],
        initrd: None,
        cmdline: String::new(),
        args: "ticks=5".into(),
    };
    let one = |id: u32| Cpus::Exactly(vec![id]);
    let seeds = [
        ("empty.bin", Bundle::default()),
        (
            "two-instances.bin",
            Bundle {
                settings: Settings::default(),
                files: vec![File { name: "a".into(), data: elf_like(1) }],
                instances: vec![inst("x", 0, one(1)), inst("y", 0, Cpus::Any(1))],
                channels: vec![],
            },
        ),
        (
            "restart-and-foreign.bin",
            Bundle {
                settings: Settings { run_ms: 0, ..Settings::default() },
                files: vec![
                    File { name: "a".into(), data: elf_like(2) },
                    File { name: "b".into(), data: elf_like(3) },
                ],
                instances: vec![
                    Instance {
                        restart: Restart::OnFailure,
                        max_restarts: 3,
                        heartbeat_timeout_ms: 500,
                        ..inst("r", 1, one(2))
                    },
                    Instance {
                        protocol: Protocol::None,
                        base: Some(0x800_0000),
                        ..inst("f", 0, one(3))
                    },
                ],
                channels: vec![],
            },
        ),
        (
            "linux-and-multi-cpu.bin",
            Bundle {
                settings: Settings::default(),
                files: vec![
                    File { name: "bz".into(), data: elf_like(4) },
                    File { name: "initrd".into(), data: vec![0x1f, 0x8b, 8, 0] },
                ],
                instances: vec![
                    Instance {
                        protocol: Protocol::Linux,
                        memory: 256 << 20,
                        devices: vec![Uart::Com2],
                        initrd: Some(1),
                        cmdline: "quiet".into(),
                        ..inst("linux", 0, Cpus::Exactly(vec![2, 3]))
                    },
                    inst("pair", 0, Cpus::Any(2)),
                ],
                channels: vec![Channel {
                    name: "link".into(),
                    between: [1, 0],
                    size: 64 << 10,
                    base: None,
                }],
            },
        ),
    ];
    for (name, b) in seeds {
        std::fs::write(dir.join(name), b.encode().unwrap()).unwrap();
    }
}
