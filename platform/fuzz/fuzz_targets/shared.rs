//! Fuzz target: nothing an instance writes into the memory it shares with the manager can make
//! the supervisor panic, loop or misbehave towards a neighbour.
//!
//! The script (what each input byte means, and what is checked afterwards) is
//! `platform::supervisor::sim::shared_memory_script`, kept in the library so that
//! `cargo test -p platform` replays this target's corpus (`corpus/shared/`) without fuzzing.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| platform::supervisor::sim::shared_memory_script(data));
