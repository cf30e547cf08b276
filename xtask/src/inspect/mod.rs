//! `cargo xtask inspect`: run the manager's own validation code on the host.
//!
//! Users run these before flashing a stick, to learn whether their machine's MADT and their
//! kernel images will be accepted, with the exact message the manager would print.

use std::process::ExitCode;

pub mod elf;
pub mod madt;

#[derive(clap::Subcommand, Debug)]
pub enum Inspect {
    /// Read raw MADT files (e.g. /sys/firmware/acpi/tables/APIC) and print the CPU inventory
    /// the manager would build from them.
    Madt(madt::MadtArgs),
    /// Plan loading an ELF kernel image into a region and print the plan, or why it is refused.
    Elf(elf::ElfArgs),
}

pub fn run(cmd: Inspect) -> anyhow::Result<ExitCode> {
    match cmd {
        Inspect::Madt(args) => madt::run(args),
        Inspect::Elf(args) => elf::run(args),
    }
}
