//! The QEMU side of the project: boot an image, capture its console, decide a verdict, and
//! write a run report.
//!
//! `cargo xtask run-qemu` (one run, streamed to the terminal) and `cargo xtask test` (the
//! scenario suite) both go through [`qemu::run`], so what the suite checks is exactly what a
//! user sees. The pure parts, building the QEMU command line, mapping an exit status to a
//! verdict, and collecting report lines, are unit-tested here without QEMU.

pub mod push;
pub mod qemu;
pub mod report;
pub mod scenarios;
pub mod screen;
pub mod verdict;
