//! The C header must describe exactly the structures the Rust crate defines: compile a small
//! translation unit with the system C compiler whose static assertions restate the Rust
//! values (offsets, sizes, constants) next to the header's own assertions.

use std::mem::{offset_of, size_of};
use std::process::Command;

use bootproto::channel as ch;
use bootproto::{BootInfo, ChannelInfo, ConsoleRing, StatusBlock};

#[test]
fn the_c_header_matches_the_rust_layout() {
    let header = concat!(env!("CARGO_MANIFEST_DIR"), "/include/multikernel.h");
    let checks = [
        ("sizeof(struct mk_boot_info)", size_of::<BootInfo>()),
        ("offsetof(struct mk_boot_info, args)", offset_of!(BootInfo, args)),
        ("offsetof(struct mk_boot_info, console)", offset_of!(BootInfo, console)),
        ("offsetof(struct mk_boot_info, status)", offset_of!(BootInfo, status)),
        ("offsetof(struct mk_boot_info, acpi_rsdp)", offset_of!(BootInfo, acpi_rsdp)),
        ("offsetof(struct mk_boot_info, cpus)", offset_of!(BootInfo, cpus)),
        ("offsetof(struct mk_boot_info, lapic_timer_hz)", offset_of!(BootInfo, lapic_timer_hz)),
        ("offsetof(struct mk_boot_info, channels)", offset_of!(BootInfo, channels)),
        ("sizeof(struct mk_channel_info)", size_of::<ChannelInfo>()),
        (
            "offsetof(struct mk_channel_info, doorbell_vector)",
            offset_of!(ChannelInfo, doorbell_vector),
        ),
        ("offsetof(struct mk_status_block, fault_apic_id)", offset_of!(StatusBlock, fault_apic_id)),
        ("sizeof(struct mk_status_block)", size_of::<StatusBlock>()),
        ("offsetof(struct mk_status_block, heartbeat)", offset_of!(StatusBlock, heartbeat)),
        ("offsetof(struct mk_status_block, fault_rip)", offset_of!(StatusBlock, fault_rip)),
        ("sizeof(struct mk_console_ring)", size_of::<ConsoleRing>()),
        ("offsetof(struct mk_console_ring, dropped)", offset_of!(ConsoleRing, dropped)),
        ("sizeof(struct mk_channel_header)", size_of::<ch::ChannelHeader>()),
        ("offsetof(struct mk_channel_header, head)", offset_of!(ch::ChannelHeader, head)),
        ("offsetof(struct mk_channel_header, tail)", offset_of!(ch::ChannelHeader, tail)),
        ("MK_CHANNEL_MAGIC", ch::MAGIC as usize),
        ("MK_CHANNEL_VERSION", ch::VERSION as usize),
        ("MK_CHANNEL_HEADER_BYTES", ch::HEADER_BYTES as usize),
        ("MK_SLOT_BYTES", ch::SLOT_BYTES as usize),
        ("MK_MESSAGE_MAX", ch::MESSAGE_MAX),
        ("MK_CHANNEL_MIN_SIZE", ch::MIN_SIZE as usize),
        ("MK_DOORBELL_BASE", ch::DOORBELL_BASE as usize),
        ("MK_MAX_CHANNELS", ch::MAX_CHANNELS),
    ];
    let mut tu = format!("#include \"{header}\"\n");
    for (expr, value) in checks {
        tu.push_str(&format!("_Static_assert({expr} == {value}, \"{expr}\");\n"));
    }
    tu.push_str(&format!(
        "_Static_assert(MK_BOOT_INFO_MAGIC == {:#x}ULL, \"magic\");\n\
         _Static_assert(MK_PROTOCOL_VERSION == {}, \"version\");\n\
         _Static_assert(MK_BOOT_INFO_V1_SIZE == {}, \"v1 size\");\n\
         _Static_assert(MK_STATE_RUNNING == {} && MK_STATE_EXITED == {} && MK_STATE_FAULTED == {}, \"states\");\n",
        bootproto::BOOT_INFO_MAGIC,
        bootproto::PROTOCOL_VERSION,
        bootproto::BOOT_INFO_V1_SIZE,
        bootproto::state::RUNNING,
        bootproto::state::EXITED,
        bootproto::state::FAULTED,
    ));
    let dir = std::env::temp_dir().join(format!("mk-c-header-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("check.c");
    std::fs::write(&src, tu).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "gcc".into());
    let out = Command::new(&cc)
        .args(["-std=c11", "-ffreestanding", "-fsyntax-only", "-Wall", "-Werror"])
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cc} (install gcc or set CC): {e}"));
    assert!(
        out.status.success(),
        "the C header disagrees with the Rust layout:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The C examples in docs/boot-protocol.md are meant to be copied: each ```c block must
/// compile against the header as it is.
#[test]
fn the_c_examples_in_the_boot_protocol_doc_compile() {
    let doc = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/boot-protocol.md");
    let text = std::fs::read_to_string(doc).unwrap();
    let mut blocks = Vec::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("```c\n") {
        let body = &rest[start + 5..];
        let end = body.find("```").expect("an unterminated ```c block");
        blocks.push(&body[..end]);
        rest = &body[end + 3..];
    }
    assert!(!blocks.is_empty(), "docs/boot-protocol.md has no C example");
    let include = concat!(env!("CARGO_MANIFEST_DIR"), "/include");
    let dir = std::env::temp_dir().join(format!("mk-c-doc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "gcc".into());
    for (i, block) in blocks.iter().enumerate() {
        let src = dir.join(format!("example{i}.c"));
        std::fs::write(&src, block).unwrap();
        let out = Command::new(&cc)
            .args(["-std=c11", "-ffreestanding", "-fsyntax-only", "-Wall", "-Werror", "-I"])
            .arg(include)
            .arg(&src)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cc} (install gcc or set CC): {e}"));
        assert!(
            out.status.success(),
            "C example {i} of docs/boot-protocol.md does not compile:\n{block}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
