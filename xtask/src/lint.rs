//! `cargo xtask lint`: the quality gates, run before the QEMU scenarios by `cargo xtask test`
//! (and so by CI).
//!
//! 1. `cargo fmt --check` over the whole workspace (the committed `rustfmt.toml`).
//! 2. clippy with warnings denied, for the host crates (all targets, tests included) and for the
//!    crates that only build for `x86_64-unknown-none` (the manager and the payloads). The
//!    workspace lints (`Cargo.toml`) deny undocumented `unsafe` blocks, `unsafe fn`s without a
//!    `# Safety` section and blocks holding more than one unsafe operation.
//! 3. `cargo doc` with warnings denied (broken intra-doc links, bad doc syntax), both targets.
//!
//! Each gate runs even when an earlier one failed, so one run lists every problem.

use std::process::Command;

use anyhow::Context;

use crate::build::{self, KERNEL_TARGET};

/// The workspace members that build only for `x86_64-unknown-none`.
pub const TARGET_ONLY: &[&str] = &[
    "kernel",
    "payload-sdk",
    "payload-hello",
    "payload-compute",
    "payload-fault",
    "payload-ping",
    "payload-pong",
];

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(build::root());
    c
}

fn host_members(cmd: &mut Command) {
    cmd.arg("--workspace");
    for p in TARGET_ONLY {
        cmd.args(["--exclude", p]);
    }
}

fn target_members(cmd: &mut Command) {
    for p in TARGET_ONLY {
        cmd.args(["--package", p]);
    }
    cmd.args(["--target", KERNEL_TARGET, "--release"]);
}

/// Runs every gate; returns the names of those that failed.
pub fn run() -> anyhow::Result<Vec<&'static str>> {
    let mut gates: Vec<(&'static str, Command)> = Vec::new();

    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--check"]);
    gates.push(("rustfmt", fmt));

    let mut clippy_host = cargo();
    clippy_host.arg("clippy").arg("--quiet");
    host_members(&mut clippy_host);
    clippy_host.args(["--all-targets", "--", "-D", "warnings"]);
    gates.push(("clippy (host crates)", clippy_host));

    let mut clippy_target = cargo();
    clippy_target.arg("clippy").arg("--quiet");
    target_members(&mut clippy_target);
    clippy_target.args(["--", "-D", "warnings"]);
    gates.push(("clippy (manager and payloads)", clippy_target));

    let mut doc_host = cargo();
    doc_host.args(["doc", "--quiet", "--no-deps"]);
    host_members(&mut doc_host);
    doc_host.env("RUSTDOCFLAGS", "-D warnings");
    gates.push(("rustdoc (host crates)", doc_host));

    let mut doc_target = cargo();
    doc_target.args(["doc", "--quiet", "--no-deps"]);
    target_members(&mut doc_target);
    doc_target.env("RUSTDOCFLAGS", "-D warnings");
    gates.push(("rustdoc (manager and payloads)", doc_target));

    let mut failed = Vec::new();
    for (name, mut cmd) in gates {
        println!("lint: {name}");
        let status = cmd.status().with_context(|| format!("running the {name} gate"))?;
        if !status.success() {
            println!("lint: FAIL {name}");
            failed.push(name);
        }
    }
    Ok(failed)
}
