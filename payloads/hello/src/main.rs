//! `hello`: the smallest useful payload, and the one the manager's default run starts.
//!
//! It reports who and where it is (name, APIC ID, region, args), proves its image was loaded
//! intact by recomputing the manager's checksum, then stays alive: it heartbeats about every
//! [`HEARTBEAT_INTERVAL_MS`] and prints `tick N` every [`TICK_INTERVAL_MS`] for the first
//! `ticks=N` ticks (default [`DEFAULT_TICKS`]), then only heartbeats, forever.
//!
//! Exit codes: [`CHECKSUM_MISMATCH_EXIT_CODE`] when the image checksum does not match.
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

use payload_sdk::time::Deadline;
use payload_sdk::{heartbeat, println, Context};

/// Exit code when the loaded image does not hash to the manager's checksum.
const CHECKSUM_MISMATCH_EXIT_CODE: u32 = 3;
const TICK_INTERVAL_MS: u64 = 200;
const HEARTBEAT_INTERVAL_MS: u64 = 50;
const DEFAULT_TICKS: u64 = 5;

payload_sdk::entry!(main);

fn main(ctx: &Context) -> u32 {
    let (base, size) = ctx.region();
    println!("hello: name {} apic {}", ctx.name(), ctx.apic_id());
    println!("hello: region {:#x}+{:#x}", base, size);
    println!("hello: args \"{}\"", ctx.args());
    match ctx.verify_checksum() {
        Ok(sum) => println!("hello: checksum ok ({sum:#018x})"),
        Err(e) => {
            println!("hello: checksum MISMATCH: {e}");
            return CHECKSUM_MISMATCH_EXIT_CODE;
        }
    }
    let ticks = match ctx.arg_value("ticks").map(str::parse::<u64>) {
        None => DEFAULT_TICKS,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            println!("hello: ignoring a bad ticks= value; printing {DEFAULT_TICKS} ticks");
            DEFAULT_TICKS
        }
    };
    heartbeat();

    let mut tick = 0u64;
    let mut next_tick = Deadline::after_ms(TICK_INTERVAL_MS);
    loop {
        Deadline::after_ms(HEARTBEAT_INTERVAL_MS).wait();
        heartbeat();
        if tick < ticks && next_tick.expired() {
            tick += 1;
            println!("hello: tick {tick}");
            next_tick = Deadline::after_ms(TICK_INTERVAL_MS);
        }
    }
}
