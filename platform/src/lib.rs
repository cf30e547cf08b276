//! Pure platform logic for the multikernel manager.
//!
//! Everything here takes bytes and plain structs and returns typed results. Nothing touches
//! hardware, and nothing names a bootloader or `x86_64` type in a signature, so the whole crate
//! is tested on the host (`cargo test -p platform`) with synthetic and captured inputs. The
//! manager kernel (`kernel/`) is the thin layer that feeds it real firmware data.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

extern crate alloc;

pub mod acpi;
pub mod acpiview;
pub mod apic;
pub mod apstart;
pub mod bundle;
pub mod bzimage;
pub mod frames;
pub mod keyboard;
pub mod lifecycle;
pub mod linuxboot;
pub mod logbuf;
pub mod madt;
pub mod memmap;
pub mod pagetable;
pub mod partition;
pub mod shell;
pub mod supervisor;
pub mod textgrid;
pub mod transfer;
