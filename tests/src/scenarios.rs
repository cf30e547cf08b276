//! The QEMU test scenarios run by `cargo xtask test`.
//!
//! Each scenario names the manager build it needs, how to boot it, and a check over what the
//! machine printed and reported. A check asserts on content (the banner, the firmware the
//! manager detected, report fields), never only on the exit status.

use serde_json::Value;

use crate::qemu::{Firmware, Outcome};
use crate::report::collect_sections;
use bootproto::report::section;

/// Which build of the manager a scenario boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelVariant {
    /// The manager for real machines (USB stick images): never touches QEMU's exit port.
    Usb,
    /// The normal manager, built for QEMU runs (exit port enabled).
    Qemu,
    /// The manager with the `selftest-panic` feature: panics right after its banner.
    SelftestPanic,
    /// The manager with the `selftest-fault` feature: page-faults right after its banner.
    SelftestFault,
    /// A USB-stick build (no QEMU exit port) that panics on purpose: it must halt and keep the
    /// message on screen.
    UsbSelftestPanic,
}

impl KernelVariant {
    /// The variant's name (its build directory; the cargo features it is built with are in
    /// `xtask/src/build.rs`).
    pub fn name(self) -> &'static str {
        match self {
            KernelVariant::Usb => "usb",
            KernelVariant::Qemu => "qemu",
            KernelVariant::SelftestPanic => "selftest-panic",
            KernelVariant::SelftestFault => "selftest-fault",
            KernelVariant::UsbSelftestPanic => "usb-selftest-panic",
        }
    }
}

/// Damage done to a payload image inside a scenario's bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tamper {
    /// Flip a byte after the bundle's checksum was computed (a corrupted ramdisk entry).
    BreakChecksum,
    /// Make the ELF claim another machine, with a valid checksum (the loader must refuse it).
    WrongMachine,
}

/// One instance of a scenario's boot bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InstanceSpec {
    pub name: &'static str,
    /// A payload of this repository (`hello`, `compute`, `fault`, `hello-c`).
    pub payload: &'static str,
    /// APIC ID, or `None` for the next free CPU.
    pub cpu: Option<u32>,
    pub memory_mib: u64,
    pub args: &'static str,
    /// Restart automatically on fault, hang or non-zero exit, up to this many times.
    pub restart_on_failure: Option<u32>,
    /// Declare the instance hung after this long without a heartbeat (0: never).
    pub heartbeat_timeout_ms: u32,
}

const fn inst(
    name: &'static str,
    payload: &'static str,
    cpu: Option<u32>,
    args: &'static str,
) -> InstanceSpec {
    InstanceSpec {
        name,
        payload,
        cpu,
        memory_mib: 8,
        args,
        restart_on_failure: None,
        heartbeat_timeout_ms: 0,
    }
}

/// The default run: the manifest `cargo xtask run-qemu` boots (two Rust kernels and a C
/// kernel), relative to the workspace root. Scenarios that boot it take it from the file, so
/// what they test is what a user runs.
pub const DEFAULT_MANIFEST: &str = "manifests/default.toml";

/// Sixty-four `hello` instances for -smp 65 (a repository manifest users can boot too).
pub const SCALE_64_MANIFEST: &str = "manifests/scale-64.toml";

/// Debian's Linux on APICs 2 and 3 with COM2 and 256 MiB, beside `hello` and `hello-c`
/// (-smp 5). It reports in through its status page (the demo init's opt-in heartbeat).
const LINUX_BESIDE_SMALL_KERNELS: &str = r#"
[settings]
run_ms = 0
boot_timeout_ms = 2000

[[instance]]
name = "linux"
protocol = "linux"
image = "{vmlinuz}"
initrd = "{initrd}"
memory = "256M"
cpus = [2, 3]
devices = ["com2"]
heartbeat_timeout_ms = 5000

[[instance]]
name = "hello"
payload = "hello"
memory = "8M"
cpu = 1
args = "ticks=1000"

[[instance]]
name = "hello-c"
payload = "hello-c"
memory = "8M"
cpu = 4
"#;

/// `hello` is replaced at run time while `compute` counts (for long enough to span the
/// pushes); the run ends with the shell's `quit`.
const PUSH_AND_SWAP: &str = r#"
[settings]
run_ms = 0
image_store = "4M"

[[instance]]
name = "hello"
payload = "hello"
memory = "8M"
args = "ticks=1000"

[[instance]]
name = "compute"
payload = "compute"
memory = "8M"
args = "primes=30000000"
"#;

/// A Linux instance whose kernel is pushed again and swapped in, beside `hello`.
const PUSH_LINUX: &str = r#"
[settings]
run_ms = 0
boot_timeout_ms = 2000

[[instance]]
name = "small"
protocol = "linux"
image = "{vmlinuz}"
initrd = "{initrd}"
memory = "256M"
cpu = 2
devices = ["com2"]
heartbeat_timeout_ms = 5000

[[instance]]
name = "hello"
payload = "hello"
memory = "8M"
cpu = 1
args = "ticks=1000"
"#;

/// A 12 MiB static-PIE image (a distribution kernel's size) beside two payloads.
const BIG_IMAGE: &str = r#"
[[instance]]
name = "big"
image = "{big}"
protocol = "none"
memory = "16M"

[[instance]]
name = "hello"
payload = "hello"
memory = "8M"

[[instance]]
name = "hello-c"
payload = "hello-c"
memory = "8M"
"#;

/// Rust ping and pong polling on one channel; a Rust ping and the C pong-c with doorbells on
/// another (-smp 5).
const CHANNELS_BOTH_MODES: &str = r#"
[settings]
run_ms = 4000

[[instance]]
name = "ping"
payload = "ping"
memory = "8M"
args = "rounds=2000 mode=poll"

[[instance]]
name = "pong"
payload = "pong"
memory = "8M"
args = "mode=poll"

[[instance]]
name = "ping-d"
payload = "ping"
memory = "8M"
args = "rounds=2000 mode=doorbell"

[[instance]]
name = "pong-c"
payload = "pong-c"
memory = "8M"
args = "mode=doorbell"

[[channel]]
name = "polled"
between = ["ping", "pong"]

[[channel]]
name = "rung"
between = ["ping-d", "pong-c"]
size = "16K"
"#;

/// pong dies after 500 echoes and is restarted by its policy; ping carries on (-smp 4).
const CHANNEL_PEER_RESTART: &str = r#"
[settings]
run_ms = 5000

[[instance]]
name = "ping"
payload = "ping"
memory = "8M"
args = "rounds=2000 mode=poll"

[[instance]]
name = "pong"
payload = "pong"
memory = "8M"
args = "mode=poll exit_after=500"
restart = "on-failure"
max_restarts = 1

[[channel]]
name = "link"
between = ["ping", "pong"]
"#;

/// A hostile peer writes garbage into its channel with ping; a third instance tries to read
/// that channel's memory; hello must not notice any of it (-smp 5).
const CHANNEL_HOSTILE_AND_THIRD: &str = r#"
[settings]
run_ms = 2000

[[instance]]
name = "ping"
payload = "ping"
memory = "8M"
args = "rounds=100000 mode=poll"

[[instance]]
name = "hostile"
payload = "hostile-c"
memory = "8M"
args = "channel-garbage"

[[instance]]
name = "third"
payload = "fault"
memory = "8M"
args = "read=0x10000000"

[[instance]]
name = "hello"
payload = "hello"
memory = "8M"

[[channel]]
name = "spoiled"
between = ["ping", "hostile"]
base = "0x10000000"
"#;

/// A `compute` instance on two CPUs (both enter the image and share the sieve) beside `hello`.
const TWO_CPU_INSTANCE: &str = r#"
[[instance]]
name = "pair"
payload = "compute"
memory = "8M"
cpus = [1, 3]
args = "primes=2000000"

[[instance]]
name = "hello"
payload = "hello"
memory = "8M"
cpu = 2
"#;

/// Two Linux instances at once, each on two CPUs and its own UART (-smp 5).
const TWO_LINUX: &str = r#"
[settings]
run_ms = 0
boot_timeout_ms = 2000

[[instance]]
name = "linux-a"
protocol = "linux"
image = "{vmlinuz}"
initrd = "{initrd}"
memory = "192M"
cpus = [1, 2]
devices = ["com2"]

[[instance]]
name = "linux-b"
protocol = "linux"
image = "{vmlinuz}"
initrd = "{initrd}"
memory = "192M"
cpus = [3, 4]
devices = ["com3"]
"#;

/// Four instances for the three APs of -smp 4.
const FOUR_ON_THREE_APS: &str = r#"
[[instance]]
name = "a"
payload = "hello"
memory = "2M"
[[instance]]
name = "b"
payload = "hello"
memory = "2M"
[[instance]]
name = "c"
payload = "hello"
memory = "2M"
[[instance]]
name = "d"
payload = "hello"
memory = "2M"
"#;

/// Seven instances for -smp 8.
pub const SEVEN_INSTANCES: &[InstanceSpec] = &[
    inst("hello-1", "hello", None, "ticks=3"),
    inst("compute-1", "compute", None, "primes=50000"),
    inst("c-1", "hello-c", None, ""),
    inst("hello-2", "hello", None, "ticks=3"),
    inst("compute-2", "compute", None, "primes=20000"),
    inst("c-2", "hello-c", None, ""),
    inst("hello-3", "hello", None, "ticks=3"),
];

/// A CPU that does not exist next to two good instances.
pub const MISSING_CPU_INSTANCES: &[InstanceSpec] = &[
    inst("hello", "hello", Some(1), "ticks=3"),
    inst("ghost", "hello", Some(9), ""),
    inst("hello-c", "hello-c", Some(3), ""),
];

/// A faulting instance between two that keep heartbeating.
pub const FAULT_INSTANCES: &[InstanceSpec] = &[
    inst("hello", "hello", Some(1), "ticks=8"),
    inst("crash", "fault", Some(2), "page-fault"),
    inst("compute", "compute", Some(3), "primes=100000"),
];

/// A crashing instance restarted by policy next to one that prints steadily.
pub const RESTART_INSTANCES: &[InstanceSpec] = &[
    inst("hello", "hello", Some(1), "ticks=12"),
    InstanceSpec { restart_on_failure: Some(3), ..inst("crash", "fault", Some(2), "page-fault") },
    InstanceSpec { heartbeat_timeout_ms: 300, ..inst("stuck", "fault", Some(3), "hang") },
];

/// Two instances on one CPU, and one asking for more memory than the machine has.
pub const CONFLICT_INSTANCES: &[InstanceSpec] = &[
    inst("first", "hello", Some(2), "ticks=2"),
    inst("second", "hello-c", Some(2), ""),
    InstanceSpec { memory_mib: 1024, ..inst("big", "hello", Some(3), "") },
];

/// A manifest with an `image =` kernel built outside the SDK, next to a payload.
pub const FOREIGN_MANIFEST: &str = r#"
[settings]
run_ms = 2000

[[instance]]
name = "spin"
image = "{spin}"
memory = "4M"
base = "0x8000000"
cpu = 2
boot_protocol = false

[[instance]]
name = "hello"
payload = "hello"
memory = "8M"
args = "ticks=3"
"#;

/// One good instance, one whose image was corrupted in the bundle, one the loader refuses.
pub const REFUSED_IMAGE_INSTANCES: &[InstanceSpec] = &[
    inst("hello", "hello", Some(1), "ticks=2"),
    inst("corrupt", "compute", Some(2), ""),
    inst("badarch", "fault", Some(3), "exit=0"),
];

/// Kernels that lie in each shared field, next to one that must not notice (-smp 8).
pub const HOSTILE_FIELD_INSTANCES: &[InstanceSpec] = &[
    inst("hello", "hello", Some(1), "ticks=20"),
    inst("state", "hostile-c", Some(2), "state=77"),
    inst("vector", "hostile-c", Some(3), "fault-vector=9999"),
    InstanceSpec {
        restart_on_failure: Some(2),
        ..inst("dropped", "hostile-c", Some(4), "dropped=max")
    },
    inst("head", "hostile-c", Some(5), "head=3735928559"),
    inst("capacity", "hostile-c", Some(6), "capacity=12"),
];

/// A restart storm, a CPU spinning with interrupts off, and one that halts silently behind its
/// own IDT, next to a well-behaved kernel (-smp 5).
pub const HOSTILE_CPU_INSTANCES: &[InstanceSpec] = &[
    inst("hello", "hello", Some(1), "ticks=20"),
    InstanceSpec { restart_on_failure: Some(8), ..inst("storm", "hostile-c", Some(2), "exit=1") },
    InstanceSpec {
        restart_on_failure: Some(1),
        heartbeat_timeout_ms: 300,
        ..inst("spin", "hostile-c", Some(3), "cli-spin")
    },
    InstanceSpec { heartbeat_timeout_ms: 300, ..inst("idt", "hostile-c", Some(4), "idt-fault") },
];

/// A kernel that triple-faults its CPU: without a hypervisor that resets the whole machine.
pub const TRIPLE_FAULT_INSTANCES: &[InstanceSpec] = &[
    inst("hello", "hello", Some(1), "ticks=3"),
    inst("wrecker", "hostile-c", Some(2), "triple-fault"),
];

/// A kernel that prints far faster than its console ring drains, next to a quiet one.
pub const FLOOD_INSTANCES: &[InstanceSpec] =
    &[inst("spam", "fault", Some(1), "flood=20000"), inst("hello", "hello", Some(2), "ticks=5")];

pub struct Scenario {
    pub name: &'static str,
    pub firmware: Firmware,
    pub kernel: KernelVariant,
    pub instances: &'static [InstanceSpec],
    pub smp: u32,
    pub memory: &'static str,
    /// QEMU `-cpu` model, if not the default.
    pub cpu: Option<&'static str>,
    /// The oldest QEMU (major, minor) that can run the scenario; older ones skip it, saying so.
    pub needs_qemu: Option<(u32, u32)>,
    pub timeout_secs: u64,
    /// How long the manager supervises before its verdict (0: until the shell's `quit`).
    pub run_ms: u32,
    /// Console input: (text to wait for, text to type).
    pub input: Vec<(String, String)>,
    /// More input steps, after `input`'s, in order: (the instance UART to wait on, or `None`
    /// for the manager's console; the text; what to type on the manager's console).
    pub steps: Vec<(Option<&'static str>, &'static str, &'static str)>,
    /// The scenario boots Linux: `manifest` may use `{vmlinuz}` and `{initrd}` (Debian's cloud
    /// kernel and the demo initramfs, from `cargo xtask linux`); without them it is skipped.
    pub linux: bool,
    /// Images of the bundle to damage, by payload name.
    pub tamper: &'static [(&'static str, Tamper)],
    /// Take a screenshot once this console text appears, then end the run.
    pub screendump_after: Option<&'static str>,
    /// A manifest (TOML) to boot instead of `instances`; `{spin}` stands for the path of the
    /// freestanding test kernel built from tests/images/spin.c.
    pub manifest: Option<&'static str>,
    /// A manifest file of the repository to boot instead (path from the workspace root); its
    /// settings hold, except `run_ms`, which the scenario sets.
    pub manifest_file: Option<&'static str>,
    /// Steps after `steps`: typing, or pushing an image as `cargo xtask push` does.
    pub script: Vec<Action>,
    /// Returns what is wrong, or `Ok` when the run shows the behaviour.
    pub check: fn(&Outcome) -> Result<(), String>,
}

/// An image a push scenario sends.
#[derive(Clone, Copy, Debug)]
pub enum PushImage {
    /// A payload built by xtask, by its short name.
    Payload(&'static str),
    /// 10 000 bytes that are not a kernel image of any kind.
    Junk,
    /// The Linux kernel of the test material (`{vmlinuz}`).
    Linux,
}

/// One step of a scenario's script, once `wait_for` appears on the manager's console.
#[derive(Clone, Debug)]
pub enum Action {
    Type {
        wait_for: &'static str,
        text: &'static str,
    },
    Push(PushStep),
    /// Type on the manager's console once `wait_for` appears on an instance's UART ("com2";
    /// counted from the previous step on that UART).
    TypeAfterDevice {
        device: &'static str,
        wait_for: &'static str,
        text: &'static str,
    },
    /// Press keys on the PS/2 keyboard (QEMU `sendkey`).
    Keys {
        wait_for: &'static str,
        keys: &'static str,
    },
    /// Take a screenshot (file name in the run directory).
    Screenshot {
        wait_for: &'static str,
        name: &'static str,
    },
    /// End the run (for builds that never exit).
    End {
        wait_for: &'static str,
    },
}

/// A push, as `cargo xtask push` makes it.
#[derive(Clone, Debug)]
pub struct PushStep {
    pub wait_for: &'static str,
    pub instance: &'static str,
    pub image: PushImage,
    pub swap: bool,
    /// Damage this chunk's first transmission.
    pub corrupt_chunk: Option<u32>,
    /// Give up after this many chunks.
    pub abandon_after: Option<u32>,
}

impl PushStep {
    const fn new(wait_for: &'static str, instance: &'static str, image: PushImage) -> PushStep {
        PushStep {
            wait_for,
            instance,
            image,
            swap: false,
            corrupt_chunk: None,
            abandon_after: None,
        }
    }
}

const fn scenario(
    name: &'static str,
    firmware: Firmware,
    instances: &'static [InstanceSpec],
    smp: u32,
    check: fn(&Outcome) -> Result<(), String>,
) -> Scenario {
    Scenario {
        name,
        firmware,
        kernel: KernelVariant::Qemu,
        instances,
        smp,
        memory: "512M",
        cpu: None,
        needs_qemu: None,
        timeout_secs: 120,
        run_ms: 3000,
        input: Vec::new(),
        steps: Vec::new(),
        linux: false,
        manifest: None,
        manifest_file: None,
        tamper: &[],
        screendump_after: None,
        script: Vec::new(),
        check,
    }
}

pub fn all() -> Vec<Scenario> {
    use Firmware::{Bios, Uefi};
    let mut v = vec![
        default_run(scenario("default-three-kernels-bios", Bios, &[], 4, |o| {
            check_banner(o, "BIOS")?;
            check_default_run(o, 4)
        })),
        default_run(scenario("default-three-kernels-uefi", Uefi, &[], 4, |o| {
            check_banner(o, "UEFI")?;
            check_default_run(o, 4)
        })),
        scenario("seven-instances-smp8-bios", Bios, SEVEN_INSTANCES, 8, check_seven),
        scenario("seven-instances-smp8-uefi", Uefi, SEVEN_INSTANCES, 8, check_seven),
        scenario("missing-cpu-refused-bios", Bios, MISSING_CPU_INSTANCES, 4, check_missing_cpu),
        scenario("missing-cpu-refused-uefi", Uefi, MISSING_CPU_INSTANCES, 4, check_missing_cpu),
        scenario("fault-contained-bios", Bios, FAULT_INSTANCES, 4, check_fault),
        scenario("fault-contained-uefi", Uefi, FAULT_INSTANCES, 4, check_fault),
    ];
    for (name, fw) in [("sixty-four-instances-bios", Bios), ("sixty-four-instances-uefi", Uefi)] {
        let mut s = scenario(name, fw, &[], 65, check_sixty_four);
        s.manifest_file = Some(SCALE_64_MANIFEST);
        s.timeout_secs = 180;
        v.push(s);
    }
    for (name, fw) in
        [("more-instances-than-cpus-bios", Bios), ("more-instances-than-cpus-uefi", Uefi)]
    {
        let mut s = scenario(name, fw, &[], 4, check_more_instances_than_cpus);
        s.manifest = Some(FOUR_ON_THREE_APS);
        v.push(s);
    }
    for (name, fw) in
        [("linux-beside-small-kernels-bios", Bios), ("linux-beside-small-kernels-uefi", Uefi)]
    {
        let mut s = scenario(name, fw, &[], 5, check_linux_beside_small_kernels);
        s.linux = true;
        s.manifest = Some(LINUX_BESIDE_SMALL_KERNELS);
        s.memory = "1G";
        s.timeout_secs = 240;
        // Linux reaches its init and reports in; the shell stops it and starts it again; after
        // its second init, the run ends.
        s.steps = vec![
            (Some("com2"), "MK-LINUX-DONE", "stop linux\r"),
            (None, "-> stopped", "start linux\r"),
            (Some("com2"), "MK-LINUX-DONE", "quit\r"),
        ];
        v.push(s);
    }
    for (name, fw) in [("a-12-mib-image-loads-bios", Bios), ("a-12-mib-image-loads-uefi", Uefi)] {
        let mut s = scenario(name, fw, &[], 4, check_big_image);
        s.manifest = Some(BIG_IMAGE);
        s.memory = "1G";
        v.push(s);
    }
    for (name, fw) in
        [("channels-poll-and-doorbell-bios", Bios), ("channels-poll-and-doorbell-uefi", Uefi)]
    {
        let mut s = scenario(name, fw, &[], 5, check_channels_both_modes);
        s.manifest = Some(CHANNELS_BOTH_MODES);
        // Once the polled pair is done, the shell shows ping's channel and its counts.
        s.input = vec![("[ping] ping: 2000 round trips".into(), "status ping\r".into())];
        v.push(s);
    }
    for (name, fw) in [("channel-peer-restart-bios", Bios), ("channel-peer-restart-uefi", Uefi)] {
        let mut s = scenario(name, fw, &[], 4, check_channel_peer_restart);
        s.manifest = Some(CHANNEL_PEER_RESTART);
        v.push(s);
    }
    for (name, fw) in [
        ("channel-hostile-peer-and-third-bios", Bios),
        ("channel-hostile-peer-and-third-uefi", Uefi),
    ] {
        let mut s = scenario(name, fw, &[], 5, check_channel_hostile_and_third);
        s.manifest = Some(CHANNEL_HOSTILE_AND_THIRD);
        v.push(s);
    }
    for (name, fw) in
        [("screen-panel-and-keyboard-bios", Bios), ("screen-panel-and-keyboard-uefi", Uefi)]
    {
        let mut s = default_run(scenario(name, fw, &[], 4, check_screen_panel_and_keyboard));
        s.kernel = KernelVariant::Usb;
        s.run_ms = 0;
        s.timeout_secs = 120;
        s.script = vec![
            // hello's last tick: by then all three run and the panel has been redrawn.
            Action::Screenshot { wait_for: "[hello] hello: tick 5", name: "panel.ppm" },
            Action::Keys { wait_for: "", keys: "status hello\r" },
            Action::Screenshot {
                wait_for: "  image: boot bundle file 'hello'",
                name: "status.ppm",
            },
            Action::End { wait_for: "" },
        ];
        v.push(s);
    }
    for (name, fw) in [("push-and-swap-bios", Bios), ("push-and-swap-uefi", Uefi)] {
        let mut s = scenario(name, fw, &[], 4, check_push_and_swap);
        s.manifest = Some(PUSH_AND_SWAP);
        s.timeout_secs = 180;
        let hello_c = PushImage::Payload("hello-c");
        s.script = vec![
            // Refused by the loader's checks: the running instance is untouched.
            Action::Push(PushStep::new("shell: ready", "hello", PushImage::Junk)),
            // Abandoned after one chunk: the shell goes on.
            Action::Push(PushStep {
                abandon_after: Some(1),
                ..PushStep::new("", "hello", hello_c)
            }),
            // The real one, with chunk 1 damaged on its first try, swapped in.
            Action::Push(PushStep {
                swap: true,
                corrupt_chunk: Some(1),
                ..PushStep::new("", "hello", hello_c)
            }),
            Action::Type { wait_for: "swapped 'hello'", text: "status hello\r" },
            Action::Type { wait_for: "previous image:", text: "swap hello --previous\r" },
            Action::Type { wait_for: "swapped 'hello'", text: "images\r" },
            Action::Type { wait_for: "image store", text: "quit\r" },
        ];
        v.push(s);
    }
    // Debian's 14 MB kernel over QEMU's emulated UART: about 100 s on an idle host.
    for (name, fw) in [("push-linux-and-swap-bios", Bios), ("push-linux-and-swap-uefi", Uefi)] {
        let mut s = scenario(name, fw, &[], 4, check_push_linux);
        s.linux = true;
        s.manifest = Some(PUSH_LINUX);
        s.memory = "1G";
        // 140 KiB/s on an idle host, six times slower on a busy one (measured).
        s.timeout_secs = 900;
        s.script = vec![
            Action::Push(PushStep {
                swap: true,
                ..PushStep::new("shell: ready", "small", PushImage::Linux)
            }),
            // Linux's init finished at boot, then again after the swap.
            Action::TypeAfterDevice { device: "com2", wait_for: "MK-LINUX-DONE", text: "" },
            Action::TypeAfterDevice { device: "com2", wait_for: "MK-LINUX-DONE", text: "quit\r" },
        ];
        v.push(s);
    }
    for (name, fw) in [("two-cpu-instance-bios", Bios), ("two-cpu-instance-uefi", Uefi)] {
        let mut s = scenario(name, fw, &[], 4, check_two_cpu_instance);
        s.manifest = Some(TWO_CPU_INSTANCE);
        v.push(s);
    }
    for (name, fw) in [("two-linux-instances-bios", Bios), ("two-linux-instances-uefi", Uefi)] {
        let mut s = scenario(name, fw, &[], 5, check_two_linux);
        s.linux = true;
        s.manifest = Some(TWO_LINUX);
        s.memory = "1G";
        s.timeout_secs = 240;
        s.steps =
            vec![(Some("com3"), "MK-LINUX-DONE", ""), (Some("com2"), "MK-LINUX-DONE", "quit\r")];
        v.push(s);
    }
    for (name, fw) in [("x2apic-default-run-bios", Bios), ("x2apic-default-run-uefi", Uefi)] {
        let mut s = default_run(scenario(name, fw, &[], 4, check_x2apic));
        s.cpu = Some(crate::qemu::X2APIC_CPU);
        // TCG models x2APIC from QEMU 9 on (shared/TOOLCHAIN.md: 7.2 has none).
        s.needs_qemu = Some((9, 0));
        v.push(s);
    }
    for (name, fw) in [("restart-policy-bios", Bios), ("restart-policy-uefi", Uefi)] {
        let mut s = scenario(name, fw, RESTART_INSTANCES, 4, check_restart_policy);
        // hello needs 2.4 s for its 12 ticks; leave room on a loaded host.
        s.run_ms = 4500;
        v.push(s);
    }
    for (name, fw) in
        [("cpu-and-memory-conflicts-bios", Bios), ("cpu-and-memory-conflicts-uefi", Uefi)]
    {
        v.push(scenario(name, fw, CONFLICT_INSTANCES, 4, check_conflicts));
    }
    for (name, fw) in [("refused-images-bios", Bios), ("refused-images-uefi", Uefi)] {
        let mut s = scenario(name, fw, REFUSED_IMAGE_INSTANCES, 4, check_refused_images);
        s.tamper = &[("compute", Tamper::BreakChecksum), ("fault", Tamper::WrongMachine)];
        v.push(s);
    }
    for (name, fw) in [("hostile-shared-fields-bios", Bios), ("hostile-shared-fields-uefi", Uefi)] {
        let mut s = scenario(name, fw, HOSTILE_FIELD_INSTANCES, 8, check_hostile_fields);
        // hello needs 4 s for its 20 ticks.
        s.run_ms = 5000;
        v.push(s);
    }
    for (name, fw) in [("hostile-cpus-bios", Bios), ("hostile-cpus-uefi", Uefi)] {
        let mut s = scenario(name, fw, HOSTILE_CPU_INSTANCES, 5, check_hostile_cpus);
        s.run_ms = 6000;
        v.push(s);
    }
    for (name, fw) in [
        ("triple-fault-resets-the-machine-bios", Bios),
        ("triple-fault-resets-the-machine-uefi", Uefi),
    ] {
        v.push(scenario(name, fw, TRIPLE_FAULT_INSTANCES, 4, check_triple_fault));
    }
    for (name, fw) in [("console-flood-bios", Bios), ("console-flood-uefi", Uefi)] {
        v.push(scenario(name, fw, FLOOD_INSTANCES, 4, check_flood));
    }
    for (name, fw) in [("shell-stop-start-bios", Bios), ("shell-stop-start-uefi", Uefi)] {
        let mut s = default_run(scenario(name, fw, &[], 4, check_shell));
        s.run_ms = 0;
        // Wait for hello's greeting before stopping it, and for its second greeting before
        // looking at its log, so the console lines the check counts are all there.
        let step = |w: &str, c: &str| (w.to_string(), format!("{c}\r"));
        s.input = vec![
            ("[hello] hello: checksum ok".into(), String::new()),
            step("mk> ", "list"),
            step("mk> ", "stop hello"),
            step("mk> ", "status hello"),
            step("mk> ", "stop hello"),
            step("mk> ", "start compute"),
            step("mk> ", "stop nosuch"),
            step("mk> ", "frobnicate"),
            step("mk> ", "start hello"),
            ("[hello] hello: checksum ok".into(), String::new()),
            step("mk> ", "log hello"),
            step("mk> ", "list"),
            step("mk> ", "quit"),
        ];
        v.push(s);
    }
    for (name, fw) in [("twenty-restarts-bios", Bios), ("twenty-restarts-uefi", Uefi)] {
        let mut s = default_run(scenario(name, fw, &[], 4, check_twenty_restarts));
        s.run_ms = 0;
        let mut cmds = vec!["list"];
        cmds.extend(std::iter::repeat_n("restart hello", 20));
        s.input = shell_script(&cmds);
        // Let the last incarnation print before counting: wait for the prompt after the 20th
        // restart, then for its first tick.
        s.input.push(("mk> ".into(), String::new()));
        s.input.push(("[hello] hello: tick 1".into(), "list\r".into()));
        s.input.push(("mk> ".into(), "quit\r".into()));
        s.timeout_secs = 240;
        v.push(s);
    }
    for (name, fw) in [("foreign-image-manifest-bios", Bios), ("foreign-image-manifest-uefi", Uefi)]
    {
        let mut s = scenario(name, fw, &[], 4, check_foreign_image);
        s.manifest = Some(FOREIGN_MANIFEST);
        v.push(s);
    }
    let mut panic = scenario("panic-is-a-failure-bios", Bios, &[], 4, check_panic_reported);
    panic.kernel = KernelVariant::SelftestPanic;
    v.push(panic);
    for (name, fw) in
        [("usb-panic-stays-on-screen-bios", Bios), ("usb-panic-stays-on-screen-uefi", Uefi)]
    {
        let mut s = scenario(name, fw, &[], 4, check_panic_on_screen);
        s.kernel = KernelVariant::UsbSelftestPanic;
        s.screendump_after = Some("PANIC: ");
        s.timeout_secs = 60;
        v.push(s);
    }
    for (name, fw) in [("manager-fault-reported-bios", Bios), ("manager-fault-reported-uefi", Uefi)]
    {
        let mut s = scenario(name, fw, &[], 4, check_manager_fault);
        s.kernel = KernelVariant::SelftestFault;
        v.push(s);
    }
    v
}

/// The scenario boots the default manifest.
fn default_run(mut s: Scenario) -> Scenario {
    s.manifest_file = Some(DEFAULT_MANIFEST);
    s
}

/// Types each command after the next shell prompt.
fn shell_script(cmds: &[&str]) -> Vec<(String, String)> {
    cmds.iter().map(|c| ("mk> ".to_string(), format!("{c}\r"))).collect()
}

fn instances(o: &Outcome) -> Result<Vec<Value>, String> {
    let (sections, _) = collect_sections(&o.serial);
    match sections.get(section::INSTANCES) {
        Some(Value::Array(items)) => Ok(items.clone()),
        _ => Err("no `instances` report section".into()),
    }
}

fn instance<'a>(list: &'a [Value], name: &str) -> Result<&'a Value, String> {
    list.iter().find(|i| i["name"] == name).ok_or_else(|| format!("instance '{name}' not reported"))
}

/// Lines the manager printed for an instance's console.
fn console<'a>(o: &'a Outcome, name: &str) -> Vec<&'a str> {
    let prefix = format!("[{name}] ");
    o.serial.lines().filter_map(|l| l.strip_prefix(prefix.as_str())).collect()
}

/// (INITs, SIPIs) the manager sent to `apic`, from the report's `ipis` section.
fn ipis_to(o: &Outcome, apic: u64) -> Result<(u64, u64), String> {
    let (sections, _) = collect_sections(&o.serial);
    let items =
        sections.get(section::IPIS).and_then(Value::as_array).ok_or("no `ipis` report section")?;
    Ok(items
        .iter()
        .find(|i| i["apic_id"] == apic)
        .map_or((0, 0), |i| (i["init"].as_u64().unwrap_or(0), i["sipi"].as_u64().unwrap_or(0))))
}

fn check_cpus(o: &Outcome, smp: u64) -> Result<(), String> {
    let (sections, _) = collect_sections(&o.serial);
    let cpus =
        sections.get(section::CPUS).and_then(Value::as_array).ok_or("no `cpus` report section")?;
    expect(cpus.len() as u64 == smp, || format!("{} CPUs reported, expected {smp}", cpus.len()))?;
    let bsps: Vec<_> = cpus.iter().filter(|c| c["bsp"] == true).collect();
    expect(bsps.len() == 1 && bsps[0]["apic_id"] == 0, || format!("BSP marking wrong: {bsps:?}"))?;
    for (i, c) in cpus.iter().enumerate() {
        expect(c["apic_id"] == i as u64 && c["enabled"] == true, || format!("CPU {i}: {c}"))?;
    }
    let plan =
        sections.get(section::PLAN).and_then(Value::as_array).ok_or("no `plan` report section")?;
    // No two planned regions overlap.
    let mut ranges: Vec<(u64, u64, String)> = plan
        .iter()
        .map(|r| {
            let base = r["base"].as_u64().unwrap_or(0);
            (base, base + r["size"].as_u64().unwrap_or(0), r["owner"].to_string())
        })
        .collect();
    ranges.sort();
    for w in ranges.windows(2) {
        expect(w[0].1 <= w[1].0, || format!("plan regions overlap: {:?} and {:?}", w[0], w[1]))?;
    }
    Ok(())
}

fn check_running(list: &[Value], name: &str) -> Result<(), String> {
    let i = instance(list, name)?;
    expect(i["state"] == "running", || {
        format!("instance '{name}' is {} ({})", i["state"], i["reason"])
    })?;
    expect(i["heartbeat"].as_u64().unwrap_or(0) > 0, || {
        format!("instance '{name}' never heartbeat")
    })?;
    expect(i["checkin_us"].is_u64(), || format!("instance '{name}' has no check-in time"))
}

fn check_default_run(o: &Outcome, smp: u64) -> Result<(), String> {
    expect(o.verdict.pass, || format!("run failed: {}", o.verdict.reason))?;
    check_cpus(o, smp)?;
    let list = instances(o)?;
    expect(list.len() == 3, || format!("{} instances reported, expected 3", list.len()))?;
    let mut apics = Vec::new();
    for name in ["hello", "compute", "hello-c"] {
        check_running(&list, name)?;
        apics.push(instance(&list, name)?["apic_id"].as_u64().unwrap_or(0));
    }
    apics.sort();
    expect(apics == [1, 2, 3], || format!("instances ran on APICs {apics:?}, expected 1, 2, 3"))?;
    let hello = console(o, "hello");
    expect(hello.iter().any(|l| l.contains("checksum ok")), || {
        format!("hello did not verify its image: {hello:?}")
    })?;
    expect(hello.iter().any(|l| l.contains("args \"ticks=5 greeting=side-by-side\"")), || {
        format!("hello did not print its args: {hello:?}")
    })?;
    expect(hello.iter().any(|l| l.contains("tick 5")), || {
        format!("hello stopped early: {hello:?}")
    })?;
    let compute = console(o, "compute");
    expect(compute.iter().any(|l| l.contains("primes below 100000: 9592")), || {
        format!("compute printed no correct result: {compute:?}")
    })?;
    expect(instance(&list, "compute")?["result"] == 9592, || "compute reported no result".into())?;
    let c = console(o, "hello-c");
    expect(c.iter().any(|l| l.contains("hello from C")), || {
        format!("the C kernel printed nothing: {c:?}")
    })
}

fn check_seven(o: &Outcome) -> Result<(), String> {
    expect(o.verdict.pass, || format!("run failed: {}", o.verdict.reason))?;
    check_cpus(o, 8)?;
    let list = instances(o)?;
    expect(list.len() == 7, || format!("{} instances reported, expected 7", list.len()))?;
    for spec in SEVEN_INSTANCES {
        check_running(&list, spec.name)?;
        expect(!console(o, spec.name).is_empty(), || {
            format!("no console output from {}", spec.name)
        })?;
    }
    let mut apics: Vec<u64> = list.iter().map(|i| i["apic_id"].as_u64().unwrap_or(0)).collect();
    apics.sort();
    expect(apics == [1, 2, 3, 4, 5, 6, 7], || format!("APICs used: {apics:?}"))
}

/// 64 instances on 64 APs: all running, each on its own CPU, each AP sent one INIT, the start
/// path using two low pages whatever the CPU count.
fn check_sixty_four(o: &Outcome) -> Result<(), String> {
    expect(o.verdict.pass, || format!("run failed: {}", o.verdict.reason))?;
    check_cpus(o, 65)?;
    let list = instances(o)?;
    expect(list.len() == 64, || format!("{} instances reported, expected 64", list.len()))?;
    for i in 1..=64 {
        check_running(&list, &format!("h{i}"))?;
        expect(!console(o, &format!("h{i}")).is_empty(), || {
            format!("no console output from h{i}")
        })?;
    }
    let mut apics: Vec<u64> = list.iter().map(|i| i["apic_id"].as_u64().unwrap_or(0)).collect();
    apics.sort();
    expect(apics == (1..=64).collect::<Vec<u64>>(), || format!("APICs used: {apics:?}"))?;
    for apic in 1..=64 {
        let (init, sipi) = ipis_to(o, apic)?;
        // A SIPI before the INIT, the start, and at most the second for a late CPU.
        expect(init == 1 && (2..=3).contains(&sipi), || {
            format!("APIC {apic} got {init} INITs and {sipi} SIPIs")
        })?;
    }
    let (sections, _) = collect_sections(&o.serial);
    let plan = sections.get(section::PLAN).and_then(Value::as_array).ok_or("no plan section")?;
    let low: Vec<&str> = plan
        .iter()
        .filter(|r| r["base"].as_u64().is_some_and(|b| b < 0x10_0000))
        .filter_map(|r| r["owner"].as_str())
        .collect();
    expect(low == ["AP start page", "AP parking page"], || {
        format!("the start path used more low memory than two pages: {low:?}")
    })?;
    let t = sections.get(section::TIMELINE).ok_or("no timeline section")?;
    expect(t["instances"] == 64 && t["cpus"] == 64, || format!("timeline: {t}"))
}

/// Four instances for three APs: the fourth is refused, by name and with the counts, before
/// any IPI; the other three run.
fn check_more_instances_than_cpus(o: &Outcome) -> Result<(), String> {
    expect(!o.verdict.pass, || "a run with a refused instance must not pass".into())?;
    let list = instances(o)?;
    for name in ["a", "b", "c"] {
        check_running(&list, name)?;
    }
    let d = instance(&list, "d")?;
    expect(d["state"] == "failed", || format!("d is {}", d["state"]))?;
    let reason = d["reason"].as_str().unwrap_or("");
    expect(
        reason.contains("no free startable CPU")
            && reason.contains("asks for 4 CPUs in all")
            && reason.contains("has 3 that can run instances"),
        || format!("unspecific refusal: {reason:?}"),
    )?;
    expect(!d["region_base"].is_u64(), || "memory was carved for a refused instance".into())?;
    let inits: u64 = (0..8).map(|a| ipis_to(o, a).map_or(0, |x| x.0)).sum();
    expect(inits == 3, || format!("{inits} INITs sent; expected one per AP, none for d"))
}

/// What one Linux instance showed on its UART, checked against the memory the manager gave it
/// (from the report's plan): reached init, saw `cpus` CPUs and nothing of anyone else's memory,
/// drove only its own UART, ran a shell command. Returns how many times it reached init.
fn check_linux_console(
    o: &Outcome,
    instance: &str,
    device: &str,
    cpus: usize,
) -> Result<usize, String> {
    let out = o
        .devices
        .iter()
        .find(|d| d.instance == instance && d.device == device)
        .ok_or_else(|| format!("no {device} output for '{instance}'"))?;
    let text = &out.text;
    let log = out.log.display();
    for marker in ["KASLR disabled: 'nokaslr'", "Run /init", "MK-SHELL-OK", "MK-LINUX-DONE"] {
        expect(text.contains(marker), || format!("'{instance}' never printed {marker:?} ({log})"))?;
    }
    for bad in [
        "Kernel panic",
        "unable to open an initial console",
        "Real mode trampoline was not allocated",
        "0x3f8",
    ] {
        expect(!text.contains(bad), || format!("'{instance}' printed {bad:?} ({log})"))?;
    }
    expect(text.contains("ttyS0 at I/O 0x"), || format!("'{instance}' found no UART ({log})"))?;
    let online =
        if cpus == 1 { "online=0 ".to_string() } else { format!("online=0-{} ", cpus - 1) };
    expect(text.contains(&format!("MK-CPUS {online}")), || {
        format!(
            "'{instance}' does not see exactly {cpus} CPUs: {:?}",
            text.lines().find(|l| l.starts_with("MK-CPUS"))
        )
    })?;
    // Every range of its firmware memory map lies in its region or its low slice.
    let (sections, _) = collect_sections(&o.serial);
    let plan = sections.get(section::PLAN).and_then(Value::as_array).ok_or("no plan section")?;
    let owned: Vec<(u64, u64)> = plan
        .iter()
        .filter(|r| {
            let owner = r["owner"].as_str().unwrap_or("");
            owner == format!("instance: {instance}") || owner == format!("low memory: {instance}")
        })
        .filter_map(|r| Some((r["base"].as_u64()?, r["base"].as_u64()? + r["size"].as_u64()?)))
        .collect();
    expect(owned.len() == 2, || {
        format!("'{instance}' has {} planned ranges, expected region + low slice", owned.len())
    })?;
    let mut seen = 0;
    for line in text.lines().filter_map(|l| l.trim_end_matches('\r').strip_prefix("memmap ")) {
        let range = line.split(' ').next().unwrap_or("");
        let parse = |s: &str| u64::from_str_radix(s.strip_prefix("0x")?, 16).ok();
        // A line the kernel's own messages cut in two (printk interleaves with the init's
        // output on the same UART) cannot be judged; the whole ones must all be right.
        let Some((Some(start), Some(last))) =
            range.split_once('-').map(|(a, b)| (parse(a), parse(b)))
        else {
            continue;
        };
        let end = last + 1;
        expect(owned.iter().any(|&(lo, hi)| lo <= start && end <= hi), || {
            format!("'{instance}' was told about memory it does not own: {line}")
        })?;
        seen += 1;
    }
    expect(seen >= 3, || format!("'{instance}' printed {seen} memmap lines ({log})"))?;
    Ok(text.matches("MK-LINUX-DONE").count())
}

fn check_linux_beside_small_kernels(o: &Outcome) -> Result<(), String> {
    let inits = check_linux_console(o, "linux", "com2", 2)?;
    expect(inits == 2, || {
        format!("Linux reached its init {inits} times; expected 2 (boot, then stop + start)")
    })?;
    let list = instances(o)?;
    check_running(&list, "hello")?;
    check_running(&list, "hello-c")?;
    let linux = instance(&list, "linux")?;
    let states: Vec<&str> = linux["transitions"]
        .as_array()
        .map(|t| t.iter().filter_map(|x| x["state"].as_str()).collect())
        .unwrap_or_default();
    let stopped = states.iter().position(|s| *s == "stopped");
    expect(stopped.is_some_and(|i| states[i..].contains(&"running")), || {
        format!("Linux was not stopped and started again to running: {states:?}")
    })?;
    expect(linux["heartbeat"].as_u64().unwrap_or(0) > 0, || "Linux never heartbeat".into())?;
    // The neighbours kept printing while Linux booted, stopped and booted again.
    let ticks = console(o, "hello").iter().filter(|l| l.contains("tick")).count();
    expect(ticks >= 10, || format!("hello printed only {ticks} ticks"))?;
    let hello = instance(&list, "hello")?;
    expect(hello["console_dropped"] == 0, || "hello lost console bytes".into())?;
    // Linux's other CPU was started by Linux, not by the manager: one INIT (the park) and the
    // park's SIPIs per start from the manager, and the manager's boot CPU never touched.
    let (init3, _) = ipis_to(o, 3)?;
    expect(init3 == 3, || {
        format!("APIC 3 got {init3} INITs from the manager; expected 3 (park at each of two starts, stop)")
    })
}

/// A USB build's screen: the status panel lists the three default instances `running`; keys
/// typed on the PS/2 keyboard reach the shell, and its answer is on screen.
fn check_screen_panel_and_keyboard(o: &Outcome) -> Result<(), String> {
    expect(o.screenshots.len() == 2, || {
        format!("{} screenshots were taken, expected 2", o.screenshots.len())
    })?;
    let read = |k: usize| -> Result<Vec<String>, String> {
        let bytes = std::fs::read(&o.screenshots[k]).map_err(|e| e.to_string())?;
        let pic = crate::qemu::Picture::parse_ppm(&bytes).map_err(|e| format!("{e:#}"))?;
        Ok(crate::screen::read_text(&pic))
    };
    let panel = read(0)?;
    let top: Vec<&str> = panel.iter().take(12).map(String::as_str).collect();
    expect(top.first().is_some_and(|l| l.starts_with("instance     cpus")), || {
        format!("no panel header on the first screen row: {top:#?}")
    })?;
    for name in ["hello", "compute", "hello-c"] {
        let row = top.iter().find(|l| l.split_whitespace().next() == Some(name));
        expect(row.is_some_and(|l| l.split_whitespace().nth(2) == Some("running")), || {
            format!("the panel has no 'running' row for {name}: {top:#?}")
        })?;
    }
    expect(top.iter().any(|l| l.starts_with("-----")), || "no rule under the panel".into())?;
    // The typed command reached the shell (its echo is on the serial line and the screen) and
    // the answer is on screen, below the panel.
    expect(o.serial.contains("mk> status hello"), || "the keys never reached the shell".into())?;
    let status = read(1)?;
    let log = &status[12.min(status.len())..];
    expect(log.iter().any(|l| l.contains("mk> status hello")), || {
        format!("the typed command is not on screen: {log:#?}")
    })?;
    expect(log.iter().any(|l| l.starts_with("instance 'hello': running")), || {
        format!("the status answer is not on screen: {log:#?}")
    })?;
    expect(log.iter().any(|l| l.starts_with("  image: boot bundle file 'hello'")), || {
        "the status answer's image line is not on screen".into()
    })
}

/// Junk refused by name, an abandoned transfer, then hello-c pushed (one chunk resent) and
/// swapped in for `hello` while `compute` ran undisturbed; then swapped back.
fn check_push_and_swap(o: &Outcome) -> Result<(), String> {
    expect(o.verdict.pass, || format!("run failed: {}", o.verdict.reason))?;
    expect(o.pushes.len() == 3, || {
        format!("{} pushes ran, expected 3: {:?}", o.pushes.len(), o.pushes)
    })?;
    let junk = o.pushes[0].as_ref().err().map_or("", String::as_str);
    expect(junk.contains("refused the image for 'hello'") && junk.contains("ELF"), || {
        format!("the junk image was not refused by the loader: {:?}", o.pushes[0])
    })?;
    let abandoned = o.pushes[1].as_ref().map_err(Clone::clone)?;
    expect(abandoned.outcome.starts_with("load: abandoned hello (1 of "), || {
        format!("the abandoned push: {}", abandoned.outcome)
    })?;
    let good = o.pushes[2].as_ref().map_err(Clone::clone)?;
    expect(good.outcome.starts_with("load: kept hello") && good.resends >= 1, || {
        format!("the good push: {} with {} resends", good.outcome, good.resends)
    })?;
    let swap = good.swap.as_deref().unwrap_or("");
    expect(swap.starts_with("swapped 'hello' in ") && swap.contains("it runs pushed"), || {
        format!("the swap answer: {swap:?}")
    })?;
    // The new kernel's line under [hello], between the two swaps.
    let hello = console(o, "hello");
    let c_at = hello.iter().position(|l| l.starts_with("hello from C: name hello"));
    expect(c_at.is_some(), || format!("hello-c never printed under [hello]: {hello:?}"))?;
    // After `--previous`, the Rust hello starts again.
    let rust_again =
        hello.iter().skip(c_at.unwrap_or(0)).any(|l| l.starts_with("hello: name hello"));
    expect(rust_again, || "the previous image did not come back".into())?;
    // compute: never stopped, every progress line there in order, nothing dropped.
    let list = instances(o)?;
    check_running(&list, "compute")?;
    let compute = instance(&list, "compute")?;
    expect(compute["console_dropped"] == 0 && compute["restarts"] == 0, || {
        format!("compute was disturbed: {compute}")
    })?;
    let percents: Vec<u32> = console(o, "compute")
        .iter()
        .filter_map(|l| l.strip_prefix("compute: ")?.split('%').next()?.parse().ok())
        .collect();
    let want: Vec<u32> = (1..=percents.len() as u32).map(|k| k * 10).collect();
    expect(!percents.is_empty() && percents == want, || {
        format!("compute's progress lines are not 10%, 20%, ... in order: {percents:?}")
    })?;
    let states: Vec<&str> = compute["transitions"]
        .as_array()
        .map(|t| t.iter().filter_map(|x| x["state"].as_str()).collect())
        .unwrap_or_default();
    expect(!states.contains(&"stopped"), || format!("compute was stopped: {states:?}"))?;
    // The report: hello runs its bundle image again after two swaps; status showed both.
    let h = instance(&list, "hello")?;
    expect(h["swaps"] == 2 && h["image"] == "bundle", || {
        format!("hello: {} swaps, image {}", h["swaps"], h["image"])
    })?;
    expect(h["image_hash"].as_str().is_some_and(|s| s.starts_with("fnv1a64:")), || {
        format!("hello's image hash: {}", h["image_hash"])
    })?;
    expect(o.serial.contains("  image: pushed, "), || {
        "status did not show the pushed image".into()
    })?;
    expect(o.serial.contains("previous    ") || o.serial.contains(" previous "), || {
        "images did not list the kept image".into()
    })
}

/// Linux pushed again and swapped in: it reaches its init a second time; hello ran on.
fn check_push_linux(o: &Outcome) -> Result<(), String> {
    let inits = check_linux_console(o, "small", "com2", 1)?;
    expect(inits == 2, || format!("Linux reached its init {inits} times; expected 2"))?;
    let push = o.pushes.first().ok_or("no push ran")?.as_ref().map_err(Clone::clone)?;
    expect(push.swap.as_deref().is_some_and(|s| s.starts_with("swapped 'small'")), || {
        format!("the swap answer: {:?}", push.swap)
    })?;
    let list = instances(o)?;
    check_running(&list, "hello")?;
    let small = instance(&list, "small")?;
    expect(small["image"] == "pushed" && small["swaps"] == 1, || {
        format!("small: image {}, {} swaps", small["image"], small["swaps"])
    })?;
    println!("     push: {push}; {}", push.swap.as_deref().unwrap_or(""));
    Ok(())
}

/// The 12 MiB image was loaded (12 MiB copied) and entered; the neighbours run; the manager's
/// heap stayed far below the image's size.
fn check_big_image(o: &Outcome) -> Result<(), String> {
    expect(o.verdict.pass, || format!("run failed: {}", o.verdict.reason))?;
    let list = instances(o)?;
    check_running(&list, "hello")?;
    check_running(&list, "hello-c")?;
    let big = instance(&list, "big")?;
    expect(big["state"] == "started", || format!("big is {} ({})", big["state"], big["reason"]))?;
    let loaded = o.serial.lines().find(|l| l.contains("instance 'big': loaded ")).unwrap_or("");
    let bytes =
        loaded.split("loaded ").nth(1).and_then(|r| r.split(' ').next()?.parse::<u64>().ok());
    expect(bytes.is_some_and(|b| b >= 12 << 20), || {
        format!("big did not load 12 MiB: {loaded:?}")
    })?;
    let (sections, _) = collect_sections(&o.serial);
    let heap =
        sections.get(section::FRAMES).and_then(|f| f["heap_used"].as_u64()).unwrap_or(u64::MAX);
    expect(heap < 1 << 20, || format!("the manager's heap holds {heap} bytes after loading 12 MiB"))
}

/// The `channels` report section, by channel name.
fn channel_report(o: &Outcome, name: &str) -> Result<Value, String> {
    let (sections, _) = collect_sections(&o.serial);
    let list =
        sections.get(section::CHANNELS).and_then(Value::as_array).ok_or("no channels section")?;
    list.iter()
        .find(|c| c["name"] == name)
        .cloned()
        .ok_or_else(|| format!("channel '{name}' not reported"))
}

/// `ping: N round trips, median X ns, ...` from an instance's console, as (N, median ns).
fn round_trips(o: &Outcome, instance_name: &str) -> Option<(u64, u64)> {
    console(o, instance_name).iter().find_map(|l| {
        let rest = l.strip_prefix("ping: ")?;
        let (n, rest) = rest.split_once(" round trips, median ")?;
        let (median, _) = rest.split_once(" ns")?;
        Some((n.parse().ok()?, median.parse().ok()?))
    })
}

fn check_channels_both_modes(o: &Outcome) -> Result<(), String> {
    expect(o.verdict.pass, || format!("run failed: {}", o.verdict.reason))?;
    let list = instances(o)?;
    for (ping, channel, mode) in [("ping", "polled", "(poll)"), ("ping-d", "rung", "(doorbell)")] {
        check_running(&list, ping)?;
        let rt = round_trips(o, ping);
        expect(rt.is_some_and(|(n, median)| n == 2000 && median > 0), || {
            format!("{ping} did not finish 2000 round trips: {:?}", console(o, ping))
        })?;
        expect(console(o, ping).iter().any(|l| l.ends_with(mode)), || {
            format!("{ping} ran in the wrong mode")
        })?;
        expect(instance(&list, ping)?["result"] == 2000, || {
            format!("{ping}'s result is not 2000")
        })?;
        let c = channel_report(o, channel)?;
        for side in ["counts0", "counts1"] {
            let (sent, received) = (&c[side]["sent"], &c[side]["received"]);
            expect(sent.as_u64() >= Some(2000) && received.as_u64() >= Some(2000), || {
                format!("channel '{channel}' {side}: sent {sent}, received {received}")
            })?;
        }
    }
    expect(
        console(o, "pong-c")
            .iter()
            .any(|l| l.starts_with("pong-c: echoing on channel rung (doorbell)")),
        || "the C peer did not open its channel".into(),
    )?;
    // `status ping`: "  channel 'polled' to 'pong': BASE..END, sent N, received N (peer: ...)".
    let line = o
        .serial
        .lines()
        .find(|l| l.trim_start().starts_with("channel 'polled' to 'pong': 0x"))
        .ok_or("`status ping` did not show channel 'polled'")?;
    let sent = line
        .split_once(", sent ")
        .and_then(|(_, r)| r.split(',').next())
        .and_then(|n| n.parse::<u64>().ok());
    expect(sent.is_some_and(|n| n >= 2000), || {
        format!("`status ping` shows the wrong count: {line}")
    })
}

fn check_channel_peer_restart(o: &Outcome) -> Result<(), String> {
    let list = instances(o)?;
    let pong = instance(&list, "pong")?;
    expect(pong["restarts"] == 1, || {
        format!("pong restarted {} times, expected 1", pong["restarts"])
    })?;
    expect(console(o, "pong").iter().any(|l| l.contains("exiting after 500 echoes")), || {
        "pong did not die mid-run".into()
    })?;
    expect(console(o, "ping").iter().any(|l| l.contains("the peer was started again")), || {
        format!("ping did not notice pong's restart: {:?}", console(o, "ping"))
    })?;
    expect(round_trips(o, "ping").is_some_and(|(n, _)| n == 2000), || {
        format!("ping did not finish after the restart: {:?}", console(o, "ping"))
    })?;
    let c = channel_report(o, "link")?;
    expect(c["counts1"]["epoch"] == 4, || format!("pong's side should be in its second life: {c}"))
}

fn check_channel_hostile_and_third(o: &Outcome) -> Result<(), String> {
    let list = instances(o)?;
    let ping = instance(&list, "ping")?;
    expect(ping["state"] == "exited" && ping["exit_code"] == 4, || {
        format!(
            "ping should have exited with code 4 (broken channel): {} {}",
            ping["state"], ping["exit_code"]
        )
    })?;
    expect(console(o, "ping").iter().any(|l| l.starts_with("ping: channel broken")), || {
        format!("ping did not report the broken channel: {:?}", console(o, "ping"))
    })?;
    check_running(&list, "hostile")?;
    check_running(&list, "hello")?;
    let third = instance(&list, "third")?;
    expect(
        third["state"] == "faulted"
            && third["fault"]["vector"] == 14
            && third["fault"]["cr2"] == 0x1000_0000u64,
        || {
            format!(
                "third could read another pair's channel: {} {}",
                third["state"], third["fault"]
            )
        },
    )?;
    let c = channel_report(o, "spoiled")?;
    expect(c["base"] == 0x1000_0000u64, || {
        format!("the channel is not where the manifest put it: {c}")
    })
}

/// Both CPUs of `pair` ran: each reported its share, the shares add up to pi(2 000 000).
fn check_two_cpu_instance(o: &Outcome) -> Result<(), String> {
    expect(o.verdict.pass, || format!("run failed: {}", o.verdict.reason))?;
    let list = instances(o)?;
    check_running(&list, "pair")?;
    check_running(&list, "hello")?;
    let pair = instance(&list, "pair")?;
    expect(pair["cpus"] == serde_json::json!([1, 3]), || format!("pair runs on {}", pair["cpus"]))?;
    expect(pair["result"] == 148_933, || {
        format!("pair's result is {}, not 148933", pair["result"])
    })?;
    let lines = console(o, "pair");
    let share = |cpu: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(cpu)?.split("counted ").nth(1)?.trim().parse::<u64>().ok())
    };
    let (a, b) = (share("compute: cpu 0 (apic 1) "), share("compute: cpu 1 (apic 3) "));
    expect(matches!((a, b), (Some(x), Some(y)) if x > 0 && y > 0 && x + y == 148_933), || {
        format!("the two CPUs' shares are {a:?} and {b:?}: {lines:?}")
    })?;
    expect(ipis_to(o, 3)?.0 == 1, || "APIC 3 was not started by the manager".into())
}

fn check_two_linux(o: &Outcome) -> Result<(), String> {
    check_linux_console(o, "linux-a", "com2", 2)?;
    check_linux_console(o, "linux-b", "com3", 2)?;
    Ok(())
}

fn check_missing_cpu(o: &Outcome) -> Result<(), String> {
    expect(!o.verdict.pass, || "a run with a refused instance must not pass".into())?;
    let list = instances(o)?;
    let ghost = instance(&list, "ghost")?;
    expect(ghost["state"] == "failed", || format!("ghost is {}", ghost["state"]))?;
    let reason = ghost["reason"].as_str().unwrap_or("");
    expect(reason.contains("CPU 9 does not exist") && reason.contains("0, 1, 2, 3"), || {
        format!("unspecific refusal: {reason:?}")
    })?;
    expect(ipis_to(o, 9)? == (0, 0), || "an IPI was sent to the missing CPU".into())?;
    expect(!ghost["region_base"].is_u64(), || "memory was carved for a refused instance".into())?;
    check_running(&list, "hello")?;
    check_running(&list, "hello-c")?;
    expect(ipis_to(o, 1)?.1 > 0 && ipis_to(o, 3)?.1 > 0, || {
        "the good instances were not started".into()
    })
}

fn check_fault(o: &Outcome) -> Result<(), String> {
    let list = instances(o)?;
    let crash = instance(&list, "crash")?;
    expect(crash["state"] == "faulted", || {
        format!("crash is {} ({})", crash["state"], crash["reason"])
    })?;
    expect(crash["fault"]["vector"] == 14, || format!("fault record: {}", crash["fault"]))?;
    expect(crash["fault"]["cr2"] == 0x7fff_0000_0000u64, || {
        format!("fault CR2: {}", crash["fault"])
    })?;
    let rip = crash["fault"]["rip"].as_u64().unwrap_or(0);
    let base = crash["region_base"].as_u64().unwrap_or(u64::MAX);
    let size = crash["region_size"].as_u64().unwrap_or(0);
    expect(rip >= base && rip < base + size, || {
        format!("fault RIP {rip:#x} is not inside the instance")
    })?;
    expect(o.serial.contains("FAULTED: page fault (#PF) (vector 14)"), || {
        "no fault message on the console".into()
    })?;
    // The neighbours kept going after the fault: hello printed all its ticks.
    check_running(&list, "hello")?;
    check_running(&list, "compute")?;
    let hello = console(o, "hello");
    expect(hello.iter().any(|l| l.contains("tick 8")), || {
        format!("hello stopped after the fault: {hello:?}")
    })?;
    let hb = instance(&list, "compute")?["heartbeat"].as_u64().unwrap_or(0);
    expect(hb > 20, || format!("compute heartbeat only {hb}"))?;
    expect(!o.verdict.pass, || "a faulted instance must fail the run".into())
}

fn transitions(i: &Value) -> Vec<String> {
    i["transitions"]
        .as_array()
        .map(|t| t.iter().map(|x| x["state"].as_str().unwrap_or("?").to_string()).collect())
        .unwrap_or_default()
}

fn check_restart_policy(o: &Outcome) -> Result<(), String> {
    let list = instances(o)?;
    let crash = instance(&list, "crash")?;
    expect(crash["restarts"] == 3 && crash["state"] == "faulted", || {
        format!("crash: {} restarts, {}", crash["restarts"], crash["state"])
    })?;
    let t = transitions(crash);
    let faults = t.iter().filter(|s| *s == "faulted").count();
    let stops = t.iter().filter(|s| *s == "stopped").count();
    expect(faults == 4 && stops == 3, || format!("crash transitions: {t:?}"))?;
    expect(
        o.serial.contains("instance 'crash': faulted again; restart limit of 3 reached"),
        || "no message when the restart limit was reached".into(),
    )?;
    // Each restart scrubbed the region before reloading.
    let scrubs = o.serial.matches("instance 'crash': region").filter(|_| true).count();
    expect(scrubs == 3, || format!("{scrubs} scrub messages for crash, expected 3"))?;
    // The hang was detected by the watchdog.
    let stuck = instance(&list, "stuck")?;
    expect(stuck["state"] == "hung", || format!("stuck is {}", stuck["state"]))?;
    expect(stuck["reason"].as_str().unwrap_or("").contains("no heartbeat for 300 ms"), || {
        format!("stuck reason: {}", stuck["reason"])
    })?;
    // The neighbour printed every tick, in order, and lost nothing.
    check_running(&list, "hello")?;
    let ticks: Vec<u32> = console(o, "hello")
        .iter()
        .filter_map(|l| l.strip_prefix("hello: tick ").and_then(|n| n.trim().parse().ok()))
        .collect();
    expect(ticks == (1..=12).collect::<Vec<_>>(), || format!("hello's ticks: {ticks:?}"))?;
    expect(instance(&list, "hello")?["console_dropped"] == 0, || {
        "hello lost console bytes".into()
    })?;
    expect(!o.serial.contains("[hello] ... "), || "hello's ring overflowed".into())
}

fn check_conflicts(o: &Outcome) -> Result<(), String> {
    let list = instances(o)?;
    check_running(&list, "first")?;
    let second = instance(&list, "second")?;
    expect(
        second["state"] == "failed"
            && second["reason"]
                .as_str()
                .unwrap_or("")
                .contains("CPU 2 is already given to instance 'first'"),
        || format!("second: {} ({})", second["state"], second["reason"]),
    )?;
    let big = instance(&list, "big")?;
    let reason = big["reason"].as_str().unwrap_or("");
    expect(
        big["state"] == "failed"
            && reason.contains("asks 1 GiB")
            && reason.contains("largest free run"),
        || format!("big: {} ({reason})", big["state"]),
    )?;
    expect(ipis_to(o, 3)? == (0, 0), || "an IPI went to the CPU of the refused instance".into())?;
    // One start: one INIT, a SIPI before it and the start's SIPI, plus the SDM's second one if
    // the CPU had not found its entry 200 us after the first.
    let sent = ipis_to(o, 2)?;
    expect(sent.0 == 1 && (2..=3).contains(&sent.1), || {
        format!("CPU 2 was sent {sent:?} (INIT, SIPI), expected one INIT and 2 or 3 SIPIs")
    })
}

fn check_shell(o: &Outcome) -> Result<(), String> {
    let s = &o.serial;
    for (what, needle) in [
        ("list output", "frames: manager "),
        ("stop confirmation", "stopped 'hello'"),
        ("scrub message", "instance 'hello': region "),
        ("status of a stopped instance", "instance 'hello': stopped"),
        ("second stop refused", "error: cannot stop 'hello': it is already stopped"),
        (
            "start of a running instance refused",
            "error: cannot start 'compute': it is running; only a stopped instance can be started",
        ),
        (
            "unknown instance",
            "error: no instance named 'nosuch' (instances: hello, compute, hello-c)",
        ),
        ("unknown command", "error: unknown command 'frobnicate' (try 'help')"),
        ("start confirmation", "started 'hello'"),
        ("log output", "console lines of 'hello':"),
        ("quit", "shell: quitting"),
    ] {
        expect(s.contains(needle), || format!("no {what} ({needle:?}) on the console"))?;
    }
    let list = instances(o)?;
    check_running(&list, "hello")?;
    check_running(&list, "compute")?;
    let t = transitions(instance(&list, "hello")?);
    expect(
        t.ends_with(&["running".into(), "stopped".into(), "started".into(), "running".into()]),
        || format!("hello transitions: {t:?}"),
    )?;
    // hello printed its greeting twice: once per start.
    let greetings =
        console(o, "hello").iter().filter(|l| l.starts_with("hello: name hello")).count();
    expect(greetings == 2, || format!("hello greeted {greetings} times, expected 2"))?;
    expect(o.verdict.pass, || format!("run failed: {}", o.verdict.reason))
}

fn check_twenty_restarts(o: &Outcome) -> Result<(), String> {
    expect(o.verdict.pass, || format!("run failed: {}", o.verdict.reason))?;
    let frames: Vec<&str> =
        o.serial.lines().filter(|l| l.starts_with("frames: manager ")).collect();
    expect(frames.len() == 2, || format!("expected 2 frame counts, got {frames:?}"))?;
    expect(frames[0] == frames[1], || {
        format!("free frames changed: {} -> {}", frames[0], frames[1])
    })?;
    let scrubbed = o
        .serial
        .lines()
        .filter(|l| l.contains("instance 'hello': region ") && l.contains("KiB verified zero"))
        .count();
    expect(scrubbed == 20, || format!("{scrubbed} verified scrubs, expected 20"))?;
    let list = instances(o)?;
    let hello = instance(&list, "hello")?;
    expect(hello["restarts"] == 20, || format!("hello restarts: {}", hello["restarts"]))?;
    check_running(&list, "hello")?;
    check_running(&list, "compute")?;
    // Every cycle really started it again (its AP checked in at the trampoline each time). An
    // incarnation may be stopped before it prints anything, so its console is not counted.
    let starts = o.serial.matches("instance 'hello': stopped -> started").count();
    expect(starts == 20, || format!("hello was started again {starts} times, expected 20"))
}

fn check_foreign_image(o: &Outcome) -> Result<(), String> {
    expect(o.verdict.pass, || format!("run failed: {}", o.verdict.reason))?;
    let list = instances(o)?;
    let spin = instance(&list, "spin")?;
    expect(spin["state"] == "started", || {
        format!("spin is {} ({})", spin["state"], spin["reason"])
    })?;
    expect(spin["apic_id"] == 2 && spin["region_base"] == 0x800_0000u64, || {
        format!("spin placed on APIC {} at {}", spin["apic_id"], spin["region_base"])
    })?;
    expect(spin["entry"].as_u64().is_some_and(|e| (0x800_0000..0x840_0000).contains(&e)), || {
        format!("spin's entry {} is not inside its fixed region", spin["entry"])
    })?;
    expect(spin["checkin_us"].is_u64(), || "spin never checked in".into())?;
    check_running(&list, "hello")
}

fn check_refused_images(o: &Outcome) -> Result<(), String> {
    expect(!o.verdict.pass, || "a run with refused images must not pass".into())?;
    let list = instances(o)?;
    check_running(&list, "hello")?;
    let corrupt = instance(&list, "corrupt")?;
    let why = corrupt["reason"].as_str().unwrap_or("");
    expect(
        corrupt["state"] == "failed" && why.contains("image 'compute' is corrupted: checksum"),
        || format!("corrupt: {} ({why})", corrupt["state"]),
    )?;
    let bad = instance(&list, "badarch")?;
    let why = bad["reason"].as_str().unwrap_or("");
    expect(
        bad["state"] == "failed" && why.starts_with("image refused:") && why.contains("machine"),
        || format!("badarch: {} ({why})", bad["state"]),
    )?;
    for apic in [2, 3] {
        expect(ipis_to(o, apic)? == (0, 0), || {
            format!("an IPI went to APIC {apic}, whose image was refused")
        })?;
    }
    expect(ipis_to(o, 1)?.1 > 0, || "the good instance was not started".into())
}

/// The well-behaved neighbour printed every one of its `ticks` ticks in order, lost no console
/// byte, is running and kept heartbeating (at least `min_heartbeat`).
fn check_neighbour(
    o: &Outcome,
    list: &[Value],
    ticks: u32,
    min_heartbeat: u64,
) -> Result<(), String> {
    check_running(list, "hello")?;
    let got: Vec<u32> = console(o, "hello")
        .iter()
        .filter_map(|l| l.strip_prefix("hello: tick ").and_then(|n| n.trim().parse().ok()))
        .collect();
    expect(got == (1..=ticks).collect::<Vec<_>>(), || format!("hello's ticks: {got:?}"))?;
    let hello = instance(list, "hello")?;
    expect(hello["console_dropped"] == 0, || "hello lost console bytes".into())?;
    let hb = hello["heartbeat"].as_u64().unwrap_or(0);
    expect(hb >= min_heartbeat, || format!("hello heartbeat only {hb}"))
}

/// The manager reached its own verdict (no panic, reset or timeout) and failed the run.
fn check_manager_survived(o: &Outcome) -> Result<(), String> {
    expect(!o.verdict.pass, || "a run with misbehaving instances must not pass".into())?;
    expect(matches!(o.ending, crate::verdict::Ending::Exited(35)), || {
        format!("the manager did not reach its verdict: {:?}, {}", o.ending, o.verdict.reason)
    })?;
    expect(!o.serial.contains("PANIC"), || "the manager panicked".into())
}

fn reason_of<'a>(list: &'a [Value], name: &str) -> Result<(&'a Value, &'a str), String> {
    let i = instance(list, name)?;
    Ok((i, i["reason"].as_str().unwrap_or("")))
}

fn check_hostile_fields(o: &Outcome) -> Result<(), String> {
    check_manager_survived(o)?;
    let list = instances(o)?;
    for (name, want) in [
        ("state", "status block field `state` holds 77, which is not a state (0-3)"),
        (
            "vector",
            "status block field `fault_vector` holds 9999, which is not an exception vector",
        ),
        ("head", "console ring indices are corrupt: head 0xdeadbeef"),
        ("capacity", "console ring header says capacity 12, the manager configured 8192"),
    ] {
        let (i, why) = reason_of(&list, name)?;
        expect(
            i["state"] == "failed" && why.contains(want) && why.ends_with("its CPUs were stopped"),
            || format!("{name}: {} ({why})", i["state"]),
        )?;
        // Its CPU was stopped: INIT, then parked (one INIT from the start, one from the stop).
        let apic = i["apic_id"].as_u64().unwrap_or(0);
        let (init, _) = ipis_to(o, apic)?;
        expect(init == 2, || format!("{name}: APIC {apic} got {init} INITs, expected 2"))?;
    }
    let (dropped, why) = reason_of(&list, "dropped")?;
    expect(
        dropped["state"] == "exited"
            && dropped["restarts"] == 2
            && why.starts_with("exit code 1 (exited again after 2 restarts"),
        || format!("dropped: {} after {} restarts ({why})", dropped["state"], dropped["restarts"]),
    )?;
    expect(dropped["console_dropped"] == u64::MAX, || {
        format!("dropped: the counter should saturate, it is {}", dropped["console_dropped"])
    })?;
    check_neighbour(o, &list, 20, 50)
}

fn check_hostile_cpus(o: &Outcome) -> Result<(), String> {
    check_manager_survived(o)?;
    let list = instances(o)?;
    let (storm, why) = reason_of(&list, "storm")?;
    expect(
        storm["state"] == "exited"
            && storm["restarts"] == 8
            && why.starts_with("exit code 1 (exited again after 8 restarts"),
        || format!("storm: {} after {} restarts ({why})", storm["state"], storm["restarts"]),
    )?;
    // The back-off doubled between restarts.
    let backoffs: Vec<u64> = o
        .serial
        .lines()
        .filter(|l| l.contains("instance 'storm': exited; restarting in"))
        .filter_map(|l| l.split("restarting in ").nth(1)?.split(' ').next()?.parse().ok())
        .collect();
    expect(backoffs == [0, 25, 50, 100, 200, 400, 800, 1000], || {
        format!("storm back-offs: {backoffs:?}")
    })?;
    // A CPU spinning with interrupts off is still stopped by INIT (and restarted once).
    let (spin, why) = reason_of(&list, "spin")?;
    expect(
        spin["state"] == "hung"
            && spin["restarts"] == 1
            && why.starts_with("no heartbeat for 300 ms"),
        || format!("spin: {} after {} restarts ({why})", spin["state"], spin["restarts"]),
    )?;
    expect(o.serial.contains("instance 'spin': hung -> stopped (INIT sent to APIC 3)"), || {
        "the spinning CPU was not stopped".into()
    })?;
    let (idt, why) = reason_of(&list, "idt")?;
    expect(idt["state"] == "hung" && why == "no heartbeat for 300 ms", || {
        format!("idt: {} ({why})", idt["state"])
    })?;
    check_neighbour(o, &list, 20, 50)
}

fn check_triple_fault(o: &Outcome) -> Result<(), String> {
    expect(matches!(o.ending, crate::verdict::Ending::Exited(0)), || {
        format!(
            "a triple fault in an instance resets the machine (the documented limit); got {:?}",
            o.ending
        )
    })?;
    expect(o.verdict.reason.starts_with("the machine reset"), || o.verdict.reason.clone())?;
    expect(o.serial.contains("[wrecker] hostile: about to load an empty IDT and fault"), || {
        "the instance never got to its triple fault".into()
    })
}

fn check_flood(o: &Outcome) -> Result<(), String> {
    let list = instances(o)?;
    let spam = instance(&list, "spam")?;
    let dropped = spam["console_dropped"].as_u64().unwrap_or(0);
    expect(dropped > 0, || "the flood lost nothing: the ring never overflowed?".into())?;
    // Every loss was reported on the console, and the reported counts add up.
    let reported: u64 = o
        .serial
        .lines()
        .filter_map(|l| l.strip_prefix("[spam] ... "))
        .filter_map(|l| l.split(' ').next()?.parse::<u64>().ok())
        .sum();
    expect(reported == dropped, || {
        format!("console reported {reported} dropped bytes, report says {dropped}")
    })?;
    // What arrived arrived in order, and the end of the flood made it through.
    let numbers: Vec<u32> = console(o, "spam")
        .iter()
        .filter_map(|l| l.strip_prefix("fault: flood line ")?.get(..6)?.parse().ok())
        .collect();
    expect(numbers.windows(2).all(|w| w[0] < w[1]), || "flood lines arrived out of order".into())?;
    expect(console(o, "spam").contains(&"fault: flood done"), || {
        "the flood's last line is missing".into()
    })?;
    check_running(&list, "spam")?;
    // The quiet neighbour lost nothing.
    check_running(&list, "hello")?;
    expect(instance(&list, "hello")?["console_dropped"] == 0, || {
        "hello lost console bytes".into()
    })?;
    let ticks = console(o, "hello").iter().filter(|l| l.starts_with("hello: tick ")).count();
    expect(ticks == 5, || format!("hello printed {ticks} ticks, expected 5"))
}

fn check_x2apic(o: &Outcome) -> Result<(), String> {
    let (sections, _) = collect_sections(&o.serial);
    let apic = sections.get(section::APIC).ok_or("no `apic` report section")?;
    expect(apic["mode"] == "X2Apic", || format!("APIC mode in force: {}", apic["mode"]))?;
    check_default_run(o, 4)
}

fn expect(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(what())
    }
}

fn check_banner(o: &Outcome, firmware: &str) -> Result<(), String> {
    expect(o.verdict.pass, || format!("run failed: {}", o.verdict.reason))?;
    let s = &o.serial;
    expect(s.contains("multikernel manager"), || "no banner on the console".into())?;
    expect(s.contains(&format!("firmware: {firmware}")), || {
        format!("the manager did not detect {firmware} firmware")
    })?;
    expect(s.contains("acpi: RSDP at 0x"), || "no RSDP address in the banner".into())?;
    expect(s.lines().any(|l| l.starts_with("memmap 0x") && l.ends_with("usable")), || {
        "no usable memory region listed".into()
    })?;
    let (sections, _) = collect_sections(s);
    let boot = sections.get(section::BOOT).ok_or("no `boot` report section")?;
    expect(boot["firmware"] == firmware, || format!("report firmware is {}", boot["firmware"]))?;
    // 512 MiB of RAM: well over 400 MiB must be usable, and never more than the machine has.
    let usable = boot["usable_bytes"].as_u64().unwrap_or(0);
    expect((400 << 20..=512 << 20).contains(&usable), || {
        format!("implausible usable memory for a 512 MiB machine: {usable} bytes")
    })?;
    expect(boot["rsdp"].as_u64().unwrap_or(0) != 0, || "report has no RSDP".into())?;
    expect(boot["free_frames"].as_u64().unwrap_or(0) > 1000, || "frame allocator is empty".into())?;
    expect(s.contains("manager: boot complete"), || "the manager did not finish booting".into())
}

fn check_panic_on_screen(o: &Outcome) -> Result<(), String> {
    expect(o.serial.contains("PANIC: self-test: the manager panics on purpose"), || {
        "no panic message on the serial console".into()
    })?;
    expect(matches!(o.ending, crate::verdict::Ending::Signalled), || {
        format!("a USB build must halt, not end the run itself: {:?}", o.ending)
    })?;
    let path = o.screendump.as_ref().ok_or("no screenshot was taken")?;
    let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let pic = crate::qemu::Picture::parse_ppm(&bytes).map_err(|e| format!("{e:#}"))?;
    let (mut red, mut light, mut red_lowest) = (0usize, 0usize, 0usize);
    for y in 0..pic.height {
        for x in 0..pic.width {
            let (r, g, b) = pic.pixel(x, y);
            if r > 150 && g < 110 && b < 110 {
                red += 1;
                red_lowest = red_lowest.max(y);
            } else if r > 150 && g > 150 && b > 150 {
                light += 1;
            }
        }
    }
    // Text of the log (light) and the panic line (red) must both be on screen.
    expect(light > 2000, || format!("the screen shows almost no log text ({light} light pixels)"))?;
    expect(red > 300, || format!("the panic message is not on screen ({red} red pixels)"))?;
    expect(red_lowest > 0, || "the red text has no position".into())
}

fn check_manager_fault(o: &Outcome) -> Result<(), String> {
    expect(!o.verdict.pass, || "a faulting manager was reported as a pass".into())?;
    let r = &o.verdict.reason;
    expect(
        r.contains("manager CPU exception: page fault (#PF) at address 0x5ead00000000"),
        || format!("the verdict does not name the fault: {r}"),
    )?;
    expect(r.contains("RIP 0x"), || format!("the verdict has no RIP: {r}"))
}

fn check_panic_reported(o: &Outcome) -> Result<(), String> {
    expect(!o.verdict.pass, || "a panicking manager was reported as a pass".into())?;
    expect(o.verdict.reason.contains("self-test: the manager panics on purpose"), || {
        format!("the verdict does not carry the panic message: {}", o.verdict.reason)
    })?;
    expect(o.verdict.reason.contains("kernel/src/main.rs"), || {
        format!("the verdict does not carry the panic location: {}", o.verdict.reason)
    })
}
