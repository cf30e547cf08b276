//! Unit tests of the manifest checks: every message's text and place, the values a valid
//! manifest gives, packing into a boot bundle, and the committed manifests (the error cases
//! under `tests/manifests/`, the default manifest and the example).

use std::path::{Path, PathBuf};

// `platform::bundle` by name, over this module's own `bundle` submodule that `super::*` brings.
use platform::bundle::{self, Cpus, Instance, Protocol, Restart, Settings};

use super::check::DEFAULT_MAX_RESTARTS;
use super::source::Source;
use super::*;
use crate::payloads::Payload;

/// Parses `text` as `m.toml`, with images looked up in `dir`.
fn parse_in(text: &str, dir: &Path) -> Result<Manifest, Vec<String>> {
    parse(Path::new("m.toml"), text, dir).map_err(|e| e.0.iter().map(ToString::to_string).collect())
}

fn check(text: &str) -> Result<Manifest, Vec<String>> {
    parse_in(text, Path::new("/nonexistent"))
}

/// The single error `text` gives.
fn one_error(text: &str) -> String {
    let errors = check(text).expect_err("the manifest should be refused");
    assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
    errors.into_iter().next().unwrap_or_default()
}

/// A scratch directory of its own for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xtask-manifest-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating a scratch directory");
    dir
}

const VALID: &str = r#"
[settings]
boot_timeout_ms = 500
run_ms = 0
log_level = "debug"

[[instance]]
name = "hello"
payload = "hello"
memory = "8M"
args = "ticks=5"

[[instance]]
name = "crunch"
payload = "compute"
cpu = 3
memory = 16777216
base = "0x4000000"
restart = "on-failure"
heartbeat_timeout_ms = 250

[[instance]]
name = "c"
payload = "hello-c"
memory = "1G"
base = 0x8000_0000
restart = "on-failure"
max_restarts = 7
"#;

#[test]
fn a_valid_manifest_gives_every_field_and_default() {
    let m = check(VALID).expect("valid");
    assert_eq!(
        m.settings,
        Settings {
            run_ms: 0,
            checkin_timeout_ms: 500,
            log_level: 3,
            flags: 0,
            image_store: platform::bundle::DEFAULT_IMAGE_STORE,
        }
    );
    let [hello, crunch, c] = &m.instances[..] else { panic!("three instances: {m:?}") };
    assert_eq!(hello.name, "hello");
    assert_eq!(hello.kernel, Kernel::Payload("hello".into()));
    assert_eq!((&hello.cpus, hello.memory, hello.base), (&Cpus::Any(1), 8 << 20, None));
    assert_eq!(hello.args, "ticks=5");
    assert_eq!(
        (hello.restart, hello.max_restarts, hello.heartbeat_timeout_ms),
        (Restart::Never, 0, None)
    );
    assert_eq!(hello.kernel_at, (9, 11));
    assert_eq!(
        (&crunch.cpus, crunch.memory, crunch.base),
        (&Cpus::Exactly(vec![3]), 16 << 20, Some(0x400_0000))
    );
    assert_eq!(crunch.args, "");
    assert_eq!((crunch.restart, crunch.max_restarts), (Restart::OnFailure, DEFAULT_MAX_RESTARTS));
    assert_eq!(crunch.heartbeat_timeout_ms, Some(250));
    assert_eq!((c.memory, c.base, c.max_restarts), (1 << 30, Some(0x8000_0000), 7));
    assert_eq!(
        crunch.summary(),
        "crunch: payload compute, cpu 3, memory 16M, base 0x4000000, restart on-failure \
         (at most 3), heartbeat timeout 250 ms, args \"\""
    );
}

#[test]
fn settings_are_optional() {
    let m =
        check("[[instance]]\nname = \"a\"\npayload = \"hello\"\nmemory = \"8M\"\n").expect("valid");
    assert_eq!(m.settings, Settings::default());
    assert_eq!(m.settings.run_ms, 3000);
    assert_eq!(m.settings.checkin_timeout_ms, 1000);
    assert_eq!(m.settings.log_level, 2);
}

#[test]
fn an_unknown_field_is_named_with_its_place() {
    let e = one_error(
        "[[instance]]\nname = \"a\"\npayload = \"hello\"\nmemory = \"8M\"\ncolour = \"red\"\n",
    );
    assert!(
        e.starts_with("m.toml:5:1: instance 'a': unknown field `colour`, expected one of"),
        "{e}"
    );
    let e = one_error(
        "[setings]\nrun_ms = 1\n[[instance]]\nname = \"a\"\npayload = \"hello\"\nmemory = \"8M\"\n",
    );
    assert!(e.starts_with("m.toml:1:2: unknown field `setings`, expected"), "{e}");
    let e = one_error("[settings]\nrun_secs = 1\n[[instance]]\nname = \"a\"\npayload = \"hello\"\nmemory = \"8M\"\n");
    assert!(e.starts_with("m.toml:2:1: settings: unknown field `run_secs`"), "{e}");
}

#[test]
fn wrong_types_and_values_are_located() {
    let e = one_error("[settings]\nlog_level = \"loud\"\n[[instance]]\nname = \"a\"\npayload = \"hello\"\nmemory = \"8M\"\n");
    assert!(e.starts_with("m.toml:2:13: settings: unknown variant `loud`"), "{e}");
    let e = one_error(
        "[[instance]]\nname = \"a\"\npayload = \"hello\"\nmemory = \"8M\"\ncpu = \"one\"\n",
    );
    assert!(e.starts_with("m.toml:5:7: instance 'a': invalid type: string \"one\""), "{e}");
}

#[test]
fn syntax_errors_are_located() {
    let errors = check("[[instance]]\nname = \"a\nmemory = 8M\n").expect_err("refused");
    assert!(!errors.is_empty());
    assert!(errors[0].starts_with("m.toml:2:"), "{errors:#?}");
    assert!(errors[0].contains("TOML syntax"), "{errors:#?}");
}

#[test]
fn a_missing_name_is_reported_at_its_table() {
    let e = one_error("[[instance]]\npayload = \"hello\"\nmemory = \"8M\"\n");
    assert_eq!(e, "m.toml:1:1: instance #1: `name` is missing");
}

#[test]
fn payload_and_image_exclude_each_other() {
    let e = one_error(
        "[[instance]]\nname = \"a\"\npayload = \"hello\"\nimage = \"k.elf\"\nmemory = \"8M\"\n",
    );
    assert_eq!(
        e,
        "m.toml:4:9: instance 'a': both `payload` (\"hello\") and `image` (\"k.elf\") are \
         given; choose one"
    );
    let e = one_error("[[instance]]\nname = \"a\"\nmemory = \"8M\"\n");
    assert_eq!(
        e,
        "m.toml:1:1: instance 'a': give either `payload` (one of hello, compute, fault, \
         ping, pong, hello-c, hostile-c, pong-c) or `image` (an ELF file)"
    );
    let e = one_error("[[instance]]\nname = \"a\"\npayload = \"hallo\"\nmemory = \"8M\"\n");
    assert_eq!(
        e,
        "m.toml:3:11: instance 'a': payload \"hallo\" is not one of this repository's \
         payloads (hello, compute, fault, ping, pong, hello-c, hostile-c, pong-c)"
    );
}

#[test]
fn duplicate_names_point_at_both() {
    let e = one_error(
        "[[instance]]\nname = \"hello\"\npayload = \"hello\"\nmemory = \"8M\"\n\n\
         [[instance]]\nname = \"hello\"\npayload = \"compute\"\nmemory = \"8M\"\n",
    );
    assert_eq!(e, "m.toml:7:8: instance name 'hello' is used twice (first at line 2)");
}

#[test]
fn duplicate_cpus_name_both_instances() {
    let e = one_error(
        "[[instance]]\nname = \"a\"\npayload = \"hello\"\ncpu = 5\nmemory = \"8M\"\n\n\
         [[instance]]\nname = \"b\"\npayload = \"hello\"\ncpu = 5\nmemory = \"8M\"\n",
    );
    assert_eq!(e, "m.toml:10:7: cpu 5 is given to both 'a' and 'b'");
    let e = one_error(
        "[[instance]]\nname = \"a\"\npayload = \"hello\"\ncpu = 4294967295\nmemory = \"8M\"\n",
    );
    assert!(e.starts_with("m.toml:4:7: instance 'a': cpu 4294967295 is not an APIC ID"), "{e}");
}

#[test]
fn sizes_must_parse_fit_and_be_page_multiples() {
    let inst = |memory: &str| {
        format!("[[instance]]\nname = \"a\"\npayload = \"hello\"\nmemory = {memory}\n")
    };
    assert_eq!(
        one_error(&inst("\"12Q\"")),
        "m.toml:4:10: instance 'a': memory \"12Q\" is not a size (use e.g. 32M, 1G, or a byte count)"
    );
    assert_eq!(
        one_error(&inst("-5")),
        "m.toml:4:10: instance 'a': memory -5 is not a size (use e.g. 32M, 1G, or a byte count)"
    );
    assert_eq!(
        one_error(&inst("\"64K\"")),
        "m.toml:4:10: instance 'a': memory \"64K\" is too small: an instance needs at least \
         96K (24K of shared pages, a 4K CPU slot, a 64K stack and its image)"
    );
    assert_eq!(
        one_error(&inst("1048577")),
        "m.toml:4:10: instance 'a': memory 1048577 is not a multiple of 4K"
    );
    assert_eq!(
        one_error("[[instance]]\nname = \"a\"\npayload = \"hello\"\n"),
        "m.toml:1:1: instance 'a': `memory` is missing (e.g. memory = \"32M\")"
    );
    for ok in ["\"96K\"", "\"0x800000\"", "8388608", "\"2G\"", "\"1_048_576\""] {
        assert!(check(&inst(ok)).is_ok(), "{ok}");
    }
}

#[test]
fn bases_must_be_aligned_nonzero_addresses() {
    let inst = |base: &str| {
        format!("[[instance]]\nname = \"a\"\npayload = \"hello\"\nmemory = \"8M\"\nbase = {base}\n")
    };
    assert_eq!(
        one_error(&inst("\"0xZZ\"")),
        "m.toml:5:8: instance 'a': base \"0xZZ\" is not an address (use e.g. \"0x4000000\" or \
         an integer)"
    );
    assert_eq!(
        one_error(&inst("\"0x4001000\"")),
        "m.toml:5:8: instance 'a': base 0x4001000 is not aligned to 2M (0x200000)"
    );
    assert!(one_error(&inst("0")).contains("base 0 is not allowed"));
    assert!(one_error(&inst("\"0xffffffffffe00000\"")).contains("overflows 64 bits"));
    assert_eq!(check(&inst("\"64M\"")).expect("valid").instances[0].base, Some(64 << 20));
}

#[test]
fn names_and_args_must_fit_the_bundle() {
    let long_args = "x".repeat(ARGS_MAX + 1);
    let e = one_error(&format!(
        "[[instance]]\nname = \"a\"\npayload = \"hello\"\nmemory = \"8M\"\nargs = \"{long_args}\"\n"
    ));
    assert_eq!(e, "m.toml:5:8: instance 'a': args is 256 bytes long; at most 255 fit");
    let fits = "x".repeat(ARGS_MAX);
    assert!(check(&format!(
        "[[instance]]\nname = \"a\"\npayload = \"hello\"\nmemory = \"8M\"\nargs = \"{fits}\"\n"
    ))
    .is_ok());
    let long_name = "n".repeat(NAME_MAX + 1);
    let e = one_error(&format!(
        "[[instance]]\nname = \"{long_name}\"\npayload = \"hello\"\nmemory = \"8M\"\n"
    ));
    assert_eq!(
        e,
        format!("m.toml:2:8: instance name \"{long_name}\" is 32 bytes long; at most 31 fit")
    );
    assert!(one_error("[[instance]]\nname = \"\"\npayload = \"hello\"\nmemory = \"8M\"\n")
        .contains("must not be empty"));
}

#[test]
fn restart_policies() {
    let inst = |extra: &str| {
        format!("[[instance]]\nname = \"a\"\npayload = \"hello\"\nmemory = \"8M\"\n{extra}\n")
    };
    let get = |extra: &str| {
        let m = check(&inst(extra)).expect("valid");
        (m.instances[0].restart, m.instances[0].max_restarts)
    };
    assert_eq!(get(""), (Restart::Never, 0));
    assert_eq!(get("restart = \"never\""), (Restart::Never, 0));
    assert_eq!(get("restart = \"never\"\nmax_restarts = 0"), (Restart::Never, 0));
    assert_eq!(get("restart = \"on-failure\""), (Restart::OnFailure, 3));
    assert_eq!(get("restart = \"on-failure\"\nmax_restarts = 1"), (Restart::OnFailure, 1));
    assert_eq!(
        one_error(&inst("max_restarts = 2")),
        "m.toml:5:16: instance 'a': max_restarts 2 needs restart = \"on-failure\" (the \
         policy is \"never\")"
    );
    assert!(one_error(&inst("restart = \"on-failure\"\nmax_restarts = 0"))
        .starts_with("m.toml:6:16: instance 'a': max_restarts 0 with restart = \"on-failure\""));
    assert!(one_error(&inst("restart = \"always\"")).starts_with(
        "m.toml:5:11: instance 'a': unknown variant `always`, expected `never` or `on-failure`"
    ));
    assert!(one_error(&inst("heartbeat_timeout_ms = 0"))
        .contains("heartbeat_timeout_ms must be at least 1"));
}

#[test]
fn every_error_is_reported_not_just_the_first() {
    let errors = check(
        "[[instance]]\nname = \"a\"\npayload = \"hello\"\nmemory = \"12Q\"\nbogus = 1\n\n\
         [[instance]]\nname = \"b\"\npayload = \"nope\"\nmemory = \"8X\"\n\n\
         [[instance]]\npayload = \"hello\"\nmemory = \"8M\"\n",
    )
    .expect_err("refused");
    assert_eq!(errors.len(), 4, "{errors:#?}");
    assert!(errors[0].starts_with("m.toml:5:1: instance 'a': unknown field `bogus`"));
    assert!(errors[1].starts_with("m.toml:9:11: instance 'b': payload \"nope\""));
    assert!(errors[2].starts_with("m.toml:10:10: instance 'b': memory \"8X\""));
    assert!(errors[3].starts_with("m.toml:12:1: instance #3: `name` is missing"));
}

#[test]
fn a_manifest_without_instances_is_refused() {
    assert_eq!(
        one_error("[settings]\nrun_ms = 5\n"),
        "m.toml:3:1: the manifest starts no instances: add an [[instance]] table for each kernel"
    );
    assert!(one_error("instance = 3\n").contains("must be a list of tables"));
}

#[test]
fn a_nonexistent_image_says_where_it_looked() {
    let dir = scratch("missing");
    let errors = parse_in(
        "[[instance]]\nname = \"x\"\nimage = \"kernels/foo.elf\"\nmemory = \"8M\"\n",
        &dir,
    )
    .expect_err("refused");
    assert_eq!(
        errors,
        vec![format!(
            "m.toml:3:9: instance 'x': image \"kernels/foo.elf\" not found (looked in {})",
            dir.join("kernels/foo.elf").display()
        )]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_image_the_loader_refuses_is_reported() {
    let dir = scratch("refused");
    std::fs::write(dir.join("notes.txt"), b"this is not an ELF file").expect("writing");
    let errors =
        parse_in("[[instance]]\nname = \"x\"\nimage = \"notes.txt\"\nmemory = \"8M\"\n", &dir)
            .expect_err("refused");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].starts_with("m.toml:3:9: instance 'x': image refused by the loader: "),
        "{errors:#?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn to_bundle_reports_missing_and_refused_payloads() {
    let dir = scratch("bundle");
    let m = check(VALID).expect("valid");
    let errors = to_bundle(&m, &[]).expect_err("payloads were not built");
    assert_eq!(errors.0.len(), 3);
    assert_eq!(
        errors.0[0].to_string(),
        "m.toml:9:11: instance 'hello': payload \"hello\" was not built"
    );
    // A payload whose ELF the loader refuses.
    std::fs::write(dir.join("hello.elf"), b"junk").expect("writing");
    let payloads = [Payload { name: "hello", path: dir.join("hello.elf") }];
    let one =
        check("[[instance]]\nname = \"a\"\npayload = \"hello\"\nmemory = \"8M\"\n").expect("valid");
    let errors = to_bundle(&one, &payloads).expect_err("refused");
    assert!(
        errors.0[0]
            .to_string()
            .starts_with("m.toml:3:11: instance 'a': payload \"hello\" refused by the loader: "),
        "{errors}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Small ELF images from the loader's fuzz corpus, copied into `dir`.
fn copy_corpus_images(dir: &Path) {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../loader/fuzz/corpus/plan");
    for name in ["crafted-pie.elf", "crafted-exec.elf"] {
        std::fs::copy(corpus.join(name), dir.join(name)).expect("copying a corpus image");
    }
}

#[test]
fn to_bundle_packs_images_once_each() {
    let dir = scratch("images");
    copy_corpus_images(&dir);
    let m = parse_in(
        "[settings]\nrun_ms = 0\n\n\
         [[instance]]\nname = \"a\"\nimage = \"crafted-pie.elf\"\nmemory = \"4M\"\ncpu = 2\n\n\
         [[instance]]\nname = \"b\"\nimage = \"crafted-pie.elf\"\nmemory = \"8M\"\nargs = \"x=1\"\n\n\
         [[instance]]\nname = \"fixed\"\nimage = \"crafted-exec.elf\"\nmemory = \"8M\"\n\
         base = \"0x200000\"\nrestart = \"on-failure\"\nheartbeat_timeout_ms = 100\n",
        &dir,
    )
    .expect("valid");
    let bundle = to_bundle(&m, &[]).expect("packs");
    assert_eq!(bundle.settings.run_ms, 0);
    let files: Vec<_> = bundle.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(files, ["crafted-pie.elf", "crafted-exec.elf"]);
    assert_eq!(
        bundle.instances[0],
        Instance {
            name: "a".into(),
            file: 0,
            cpus: Cpus::Exactly(vec![2]),
            memory: 4 << 20,
            base: None,
            restart: Restart::Never,
            max_restarts: 0,
            heartbeat_timeout_ms: 0,
            protocol: Protocol::Multikernel,
            protocol_version: bootproto::PROTOCOL_VERSION,
            devices: vec![],
            initrd: None,
            cmdline: String::new(),
            args: String::new(),
        }
    );
    assert_eq!((bundle.instances[1].file, &bundle.instances[1].cpus), (0, &Cpus::Any(1)));
    assert_eq!(bundle.instances[1].args, "x=1");
    let fixed = &bundle.instances[2];
    assert_eq!((fixed.file, fixed.base), (1, Some(0x20_0000)));
    assert_eq!(
        (fixed.restart, fixed.max_restarts, fixed.heartbeat_timeout_ms),
        (Restart::OnFailure, 3, 100)
    );
    // What the manager will read back.
    let bytes = bundle.encode().expect("encodes");
    let parsed = bundle::parse(&bytes).expect("parses");
    assert_eq!(parsed.instances, bundle.instances);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_fixed_address_image_without_base_gets_a_hint() {
    let dir = scratch("exec");
    copy_corpus_images(&dir);
    let errors = parse_in(
        "[[instance]]\nname = \"fixed\"\nimage = \"crafted-exec.elf\"\nmemory = \"8M\"\n",
        &dir,
    )
    .expect_err("refused");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].starts_with("m.toml:3:9: instance 'fixed': image refused by the loader: "));
    assert!(errors[0].ends_with("set `base` to the region it was linked for)"), "{errors:#?}");
    // Too little memory for the image once the stack, CPU slot and shared pages are set aside.
    let errors = parse_in(
        "[[instance]]\nname = \"fixed\"\nimage = \"crafted-exec.elf\"\nmemory = \"96K\"\n\
         base = \"0x200000\"\n",
        &dir,
    )
    .expect_err("refused");
    assert!(errors[0].contains("image refused by the loader"), "{errors:#?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The error manifests under tests/manifests/, as `cargo xtask check` reports them.
#[test]
fn committed_error_manifests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cases: &[(&str, &[&str])] = &[
        ("duplicate-cpu.toml", &[":13:7: cpu 2 is given to both 'left' and 'right'"]),
        (
            "bad-memory.toml",
            &[":6:10: instance 'big': memory \"12Q\" is not a size (use e.g. 32M, 1G, or a byte count)"],
        ),
        ("unknown-field.toml", &[":7:1: instance 'hello': unknown field `memroy`, expected one of"]),
        (
            "duplicate-name.toml",
            &[":10:8: instance name 'hello' is used twice (first at line 4)"],
        ),
        (
            "payload-and-image.toml",
            &[":6:9: instance 'both': both `payload` (\"hello\") and `image` (\"kernels/hello.elf\") are given; choose one"],
        ),
        (
            "missing-image.toml",
            &[":5:9: instance 'custom': image \"kernels/not-built.elf\" not found (looked in "],
        ),
        (
            "bad-restart.toml",
            &[":7:16: instance 'once': max_restarts 2 needs restart = \"on-failure\""],
        ),
    ];
    for (file, expected) in cases {
        let path = root.join("tests/manifests").join(file);
        let errors = load(&path).expect_err(file).0;
        assert_eq!(errors.len(), expected.len(), "{file}: {errors:#?}");
        for (e, want) in errors.iter().zip(expected.iter()) {
            let text = e.to_string();
            let after_path = text.strip_prefix(&path.display().to_string()).unwrap_or(&text);
            assert!(after_path.starts_with(want), "{file}: got {text:?}, want {want:?}");
        }
    }
}

#[test]
fn the_committed_manifests_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // What the default run starts is checked by the QEMU scenarios that boot this very
    // file; here, that it and the example load without an error.
    let default = load(&root.join("manifests/default.toml")).expect("default manifest");
    assert_eq!(default.settings, Settings::default());
    load(&root.join("multikernel.example.toml")).expect("example manifest");
}

/// The example's commented-out tables are meant to be uncommented: with the channel example
/// switched on (its TOML lines, not its prose), it still loads and declares the channel.
#[test]
fn the_examples_commented_channel_works_when_uncommented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("multikernel.example.toml")).unwrap();
    let at = text.find("# Two kernels that talk").expect("the channel example");
    let (before, block) = text.split_at(at);
    let uncommented: String = block
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(t)
                if t.starts_with('[')
                    || t.split_once(" = ").is_some_and(|(k, _)| !k.contains(' ')) =>
            {
                t
            }
            _ => l,
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let m = parse(Path::new("example.toml"), &format!("{before}{uncommented}"), &root)
        .unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!(m.channels.len(), 1);
    assert_eq!(m.channels[0].name, "link");
}

#[test]
fn places_count_characters_from_one() {
    let src = Source::new(Path::new("m.toml"), "ab\ncdé\nf");
    assert_eq!(src.place(0), (1, 1));
    assert_eq!(src.place(2), (1, 3));
    assert_eq!(src.place(3), (2, 1));
    assert_eq!(src.place(7), (2, 4));
    assert_eq!(src.place(8), (3, 1));
    assert_eq!(src.place(99), (3, 2));
}

#[test]
fn protocol_version_is_1_or_current_and_needs_the_protocol() {
    let base = "[[instance]]\nname = \"old\"\npayload = \"hello\"\nmemory = \"8M\"\n";
    let m = check(&format!("{base}protocol_version = 1\n")).expect("valid");
    assert_eq!(m.instances[0].protocol_version, 1);
    assert!(
        m.instances[0].summary().ends_with(", boot info version 1"),
        "{}",
        m.instances[0].summary()
    );
    let m = check(base).expect("valid");
    assert_eq!(m.instances[0].protocol_version, bootproto::PROTOCOL_VERSION);
    let e = one_error(&format!("{base}protocol_version = 7\n"));
    assert!(e.contains("protocol_version 7 does not exist") && e.contains("use 1"), "{e}");
    let e = one_error(&format!("{base}boot_protocol = false\nprotocol_version = 1\n"));
    assert!(e.contains("has no meaning with protocol = \"none\""), "{e}");
}

#[test]
fn cpus_are_a_list_or_a_count_and_cpu_is_the_one_cpu_spelling() {
    let with = |extra: &str| {
        format!("[[instance]]\nname = \"a\"\npayload = \"hello\"\nmemory = \"8M\"\n{extra}")
    };
    assert_eq!(
        check(&with("cpus = [3, 1]\n")).unwrap().instances[0].cpus,
        Cpus::Exactly(vec![3, 1])
    );
    assert_eq!(check(&with("cpus = 2\n")).unwrap().instances[0].cpus, Cpus::Any(2));
    assert_eq!(check(&with("cpu = 5\n")).unwrap().instances[0].cpus, Cpus::Exactly(vec![5]));
    let e = one_error(&with("cpu = 1\ncpus = [2]\n"));
    assert!(e.contains("both `cpu` (1) and `cpus` are given"), "{e}");
    let e = one_error(&with("cpus = []\n"));
    assert!(e.contains("cpus: the list is empty"), "{e}");
    let e = one_error(&with("cpus = [2, 2]\n"));
    assert!(e.contains("APIC ID 2 is listed twice"), "{e}");
    let e = one_error(&with("cpus = 0\n"));
    assert!(e.contains("an instance has from 1 to 256 CPUs"), "{e}");
    let e = one_error(&with("cpus = \"two\"\n"));
    assert!(e.contains("a list of APIC IDs such as [2, 3] or a count such as 2"), "{e}");
    // Lists and single CPUs conflict across instances.
    let e = one_error(
        "[[instance]]\nname = \"a\"\npayload = \"hello\"\nmemory = \"8M\"\ncpus = [2, 3]\n\
         [[instance]]\nname = \"b\"\npayload = \"hello\"\nmemory = \"8M\"\ncpu = 3\n",
    );
    assert!(e.ends_with("cpu 3 is given to both 'a' and 'b'"), "{e}");
}

#[test]
fn protocol_names_and_the_old_boot_protocol_spelling() {
    let with = |extra: &str| {
        format!("[[instance]]\nname = \"a\"\npayload = \"hello\"\nmemory = \"8M\"\n{extra}")
    };
    assert_eq!(check(&with("")).unwrap().instances[0].protocol, Protocol::Multikernel);
    assert_eq!(
        check(&with("protocol = \"none\"\n")).unwrap().instances[0].protocol,
        Protocol::None
    );
    assert_eq!(
        check(&with("boot_protocol = false\n")).unwrap().instances[0].protocol,
        Protocol::None
    );
    let e = one_error(&with("protocol = \"elf\"\n"));
    assert!(e.contains("protocol \"elf\" is not one of \"multikernel\""), "{e}");
    let e = one_error(&with("protocol = \"none\"\nboot_protocol = false\n"));
    assert!(e.contains("`boot_protocol` is the old spelling of `protocol`"), "{e}");
    let e = one_error(&with("protocol = \"linux\"\n"));
    assert!(e.contains("protocol = \"linux\" runs a bzImage: give `image`"), "{e}");
    let e = one_error(&with("cmdline = \"quiet\"\n"));
    assert!(e.contains("`cmdline` is for protocol = \"linux\""), "{e}");
    let e = one_error(&with("initrd = \"x.cpio\"\n"));
    assert!(e.contains("`initrd` is for protocol = \"linux\""), "{e}");
}

#[test]
fn devices_are_known_uarts_owned_once() {
    let with = |extra: &str| {
        format!("[[instance]]\nname = \"a\"\npayload = \"hello\"\nmemory = \"8M\"\n{extra}")
    };
    assert_eq!(
        check(&with("devices = [\"COM4\", \"com2\"]\n")).unwrap().instances[0].devices,
        [bundle::Uart::Com2, bundle::Uart::Com4]
    );
    let e = one_error(&with("devices = [\"com1\"]\n"));
    assert!(e.contains("com1 is the manager's console"), "{e}");
    let e = one_error(&with("devices = [\"lpt1\"]\n"));
    assert!(e.contains("device \"lpt1\" is not one of com2, com3, com4"), "{e}");
    let e = one_error(&with("devices = [\"com2\", \"com2\"]\n"));
    assert!(e.contains("device \"com2\" is listed twice"), "{e}");
    let e = one_error(
        "[[instance]]\nname = \"a\"\npayload = \"hello\"\nmemory = \"8M\"\ndevices = [\"com3\"]\n\
         [[instance]]\nname = \"b\"\npayload = \"hello\"\nmemory = \"8M\"\ndevices = [\"com3\"]\n",
    );
    assert!(e.contains("device com3 is given to both 'a' and 'b'"), "{e}");
}

fn bzimage(init_size: u32, pm: usize) -> Vec<u8> {
    platform::bzimage::header_only_image(init_size, pm)
}

#[test]
fn a_bzimage_is_checked_with_the_managers_code_one_line_per_refusal() {
    let dir = scratch("bzimage");
    std::fs::write(dir.join("vmlinuz"), bzimage(0x337_8000, 0x2000)).unwrap();
    std::fs::write(dir.join("initrd.cpio.gz"), vec![0x1f; 3 << 20]).unwrap();
    let mut bad = bzimage(0x337_8000, 0x2000);
    bad[0x236] = 0x7E;
    std::fs::write(dir.join("no64.bin"), &bad).unwrap();
    std::fs::write(dir.join("not-a-kernel.bin"), vec![0u8; 4096]).unwrap();
    let linux = |image: &str, memory: &str, extra: &str| {
        format!(
            "[[instance]]\nname = \"linux\"\nprotocol = \"linux\"\nimage = \"{image}\"\n\
             memory = \"{memory}\"\ncpus = [2, 3]\ndevices = [\"com2\"]\n{extra}"
        )
    };
    let m = parse_in(
        &linux("vmlinuz", "128M", "initrd = \"initrd.cpio.gz\"\ncmdline = \"quiet\"\n"),
        &dir,
    )
    .expect("valid");
    let i = &m.instances[0];
    assert_eq!(
        (i.protocol, &i.cmdline, i.initrd.as_ref().map(|x| x.1.len())),
        (Protocol::Linux, &"quiet".to_string(), Some(3 << 20))
    );
    assert!(
        i.summary().contains(
            "protocol linux, devices com2, initrd initrd.cpio.gz (3M), cmdline \"quiet\""
        ),
        "{}",
        i.summary()
    );
    let refused = |image: &str, memory: &str, extra: &str| {
        let errors = parse_in(&linux(image, memory, extra), &dir).expect_err("refused");
        assert_eq!(errors.len(), 1, "{errors:#?}");
        let e = errors[0].clone();
        assert!(!e.contains('\n'), "one line: {e}");
        e
    };
    let e = refused("not-a-kernel.bin", "128M", "");
    assert!(e.contains("not a bzImage: no boot sector signature 0xAA55"), "{e}");
    let e = refused("no64.bin", "128M", "");
    assert!(e.contains("the kernel has no 64-bit entry point"), "{e}");
    let e = refused("vmlinuz", "48M", "");
    assert!(
        e.contains("needs 52 MiB from 0x1000000 to decompress")
            && e.contains("give the instance more memory"),
        "{e}"
    );
    let e = refused("vmlinuz", "128M", &format!("cmdline = \"{}\"\n", "x".repeat(2000)));
    assert!(e.contains("this kernel takes at most 2047 (cmdline_size)"), "{e}");
    let e = refused(
        "vmlinuz",
        "128M",
        "[[instance]]\nname = \"ping\"\npayload = \"ping\"\nmemory = \"8M\"\n\
         [[channel]]\nname = \"l\"\nbetween = [\"ping\", \"linux\"]\n",
    );
    assert!(
        e.contains("channel 'l': instance 'linux' runs Linux (protocol = \"linux\"), which has no channel driver"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn channels_join_two_named_instances_with_a_sane_size() {
    let two = "[[instance]]\nname = \"ping\"\npayload = \"hello\"\nmemory = \"8M\"\n\
               [[instance]]\nname = \"pong\"\npayload = \"hello\"\nmemory = \"8M\"\n";
    let m = check(&format!("{two}[[channel]]\nname = \"link\"\nbetween = [\"pong\", \"ping\"]\n"))
        .unwrap();
    assert_eq!(
        m.channels,
        [ChannelSpec { name: "link".into(), between: [1, 0], size: 64 << 10, base: None }]
    );
    let m = check(&format!("{two}[[channel]]\nname = \"big\"\nbetween = [\"ping\", \"pong\"]\nsize = \"1M\"\nbase = \"0x40000000\"\n")).unwrap();
    assert_eq!((m.channels[0].size, m.channels[0].base), (1 << 20, Some(0x4000_0000)));
    let e = one_error(&format!("{two}[[channel]]\nname = \"l\"\nbetween = [\"ping\", \"pnog\"]\n"));
    assert_eq!(
        e,
        "m.toml:11:20: channel 'l': there is no instance 'pnog' (the instances are ping, pong)"
    );
    let e = one_error(&format!("{two}[[channel]]\nname = \"l\"\nbetween = [\"ping\", \"ping\"]\n"));
    assert!(e.contains("'ping' is paired with itself"), "{e}");
    let e = one_error(&format!("{two}[[channel]]\nname = \"l\"\nbetween = [\"ping\"]\n"));
    assert!(e.contains("`between` names 1 instances; a channel joins exactly two"), "{e}");
    let e = one_error(&format!("{two}[[channel]]\nname = \"l\"\n"));
    assert!(e.contains("`between` is missing"), "{e}");
    let e = one_error(&format!(
        "{two}[[channel]]\nname = \"l\"\nbetween = [\"ping\", \"pong\"]\nsize = \"10K\"\n"
    ));
    assert!(e.contains("size \"10K\" is not a multiple of 4 KiB between 8K and 1G"), "{e}");
    let e = one_error(&format!(
        "{two}[[channel]]\nname = \"l\"\nbetween = [\"ping\", \"pong\"]\n[[channel]]\nname = \"l\"\nbetween = [\"pong\", \"ping\"]\n"
    ));
    assert!(e.contains("channel name 'l' is used twice (first at line 10)"), "{e}");
    let e = one_error(&format!(
        "{two}[[channel]]\nname = \"l\"\nbetween = [\"ping\", \"pong\"]\nsise = 1\n"
    ));
    assert!(e.contains("channel 'l': unknown field `sise`"), "{e}");
}

#[test]
fn a_channel_end_must_be_an_instance_that_can_find_it() {
    let with = |extra: &str| {
        format!(
            "[[instance]]\nname = \"ping\"\npayload = \"hello\"\nmemory = \"8M\"\n\
             [[instance]]\nname = \"pong\"\npayload = \"hello\"\nmemory = \"8M\"\n{extra}\
             [[channel]]\nname = \"l\"\nbetween = [\"ping\", \"pong\"]\n"
        )
    };
    let e = one_error(&with("protocol = \"none\"\n"));
    assert!(e.contains("channel 'l': instance 'pong' has protocol = \"none\""), "{e}");
    let e = one_error(&with("protocol_version = 1\n"));
    assert!(
        e.contains("instance 'pong' is built against boot protocol version 1, whose boot info has no channel records"),
        "{e}"
    );
}
