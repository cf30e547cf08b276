//! `compute`: a payload that does real, checkable work.
//!
//! It counts the primes below `N` (args `primes=N`, default [`DEFAULT_N`] → 9592) with a
//! segmented sieve of Eratosthenes whose memory is a few KiB of stack, whatever `N` is: the
//! base primes up to √N (found by trial division) and one [`SEGMENT_BYTES`] window at a time.
//! It prints progress every tenth of the range, heartbeats once per segment, reports the count
//! with `set_result` and prints it, then keeps heartbeating forever (the manager's default run
//! expects every instance to stay `running`).
//!
//! With several CPUs (`cpus = [..]` in the manifest) every CPU sieves its share of the
//! segments (segment `s` belongs to CPU `s mod cpus`); the others publish their counts, CPU 0
//! waits for them (bounded), prints each CPU's share with its APIC ID and reports the sum.
//!
//! Bad arguments (not a number, or `N` above [`MAX_N`]) print an error and exit with
//! [`BAD_ARGS_EXIT_CODE`].
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

use core::sync::atomic::{AtomicU32, Ordering};

use payload_sdk::time::Deadline;
use payload_sdk::{exit, heartbeat, println, set_result, Context};

const DEFAULT_N: u32 = 100_000;
/// √MAX_N = 10 000, below which there are 1229 primes: [`BASE_PRIMES_MAX`] bounds the table.
const MAX_N: u32 = 100_000_000;
const BASE_PRIMES_MAX: usize = 1229;
const SEGMENT_BYTES: usize = 4096;
const BAD_ARGS_EXIT_CODE: u32 = 2;
const HEARTBEAT_INTERVAL_MS: u64 = 50;

/// CPUs whose counts the table below can hold.
const MAX_CPUS: usize = 16;
/// How long CPU 0 waits for the others' counts.
const WAIT_FOR_OTHERS_MS: u64 = 60_000;
/// Each CPU's count, plus one (0: not done yet).
static COUNTS: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];

payload_sdk::entry!(main, secondary);

fn limit(ctx: &Context) -> u32 {
    match ctx.arg_value("primes").map(str::parse::<u32>) {
        None => DEFAULT_N,
        Some(Ok(n)) if n <= MAX_N => n,
        Some(_) => {
            if ctx.cpu_index() == 0 {
                println!("compute: bad primes= value in args \"{}\" (0..={MAX_N})", ctx.args());
                exit(BAD_ARGS_EXIT_CODE);
            }
            payload_sdk::park()
        }
    }
}

/// How many CPUs share the work.
fn workers(ctx: &Context) -> u32 {
    ctx.cpu_count().min(MAX_CPUS as u32)
}

fn main(ctx: &Context) -> ! {
    let n = limit(ctx);
    let cpus = workers(ctx);
    println!(
        "compute: {} on apic {}: counting primes below {n} on {cpus} CPU(s)",
        ctx.name(),
        ctx.apic_id()
    );
    let start = payload_sdk::time::now_ticks();
    let mine = count_primes_below(n, 0, cpus, |percent, so_far| {
        println!("compute: {percent}% ({so_far} primes so far)");
    });
    let mut count = mine;
    if cpus > 1 {
        println!("compute: cpu 0 (apic {}) counted {mine}", ctx.apic_id());
        let deadline = Deadline::after_ms(WAIT_FOR_OTHERS_MS);
        for k in 1..cpus {
            let theirs = loop {
                match COUNTS[k as usize].load(Ordering::Acquire) {
                    0 if deadline.expired() => {
                        println!("compute: cpu {k} never reported its count");
                        exit(3);
                    }
                    0 => {
                        heartbeat();
                        Deadline::after_ms(1).wait();
                    }
                    c => break c - 1,
                }
            };
            let apic = ctx.cpu_apic_id(k).unwrap_or(u32::MAX);
            println!("compute: cpu {k} (apic {apic}) counted {theirs}");
            count += theirs;
        }
    }
    let ms = payload_sdk::time::us_between(start, payload_sdk::time::now_ticks()) / 1000;
    set_result(u64::from(count));
    println!("compute: primes below {n}: {count} ({ms} ms)");
    loop {
        heartbeat();
        Deadline::after_ms(HEARTBEAT_INTERVAL_MS).wait();
    }
}

/// Every other CPU: its share of the segments, published for CPU 0, then halting waits.
fn secondary(ctx: &Context) -> ! {
    let (n, cpus, me) = (limit(ctx), workers(ctx), ctx.cpu_index());
    if me < cpus {
        let count = count_primes_below(n, me, cpus, |_, _| {});
        COUNTS[me as usize].store(count + 1, Ordering::Release);
    }
    loop {
        Deadline::after_ms(1000).wait();
    }
}

/// The number of primes `p < n` in the segments `s` with `s mod of == share`. Calls
/// `progress(percent, count_so_far)` each time another tenth of the range is done, and
/// heartbeats once per segment.
fn count_primes_below(n: u32, share: u32, of: u32, mut progress: impl FnMut(u32, u32)) -> u32 {
    if n <= 2 {
        return 0;
    }
    // Base primes p with p * p < n: enough to sieve every composite below n.
    let mut base = [0u32; BASE_PRIMES_MAX];
    let mut nbase = 0;
    let mut candidate = 2u32;
    while u64::from(candidate) * u64::from(candidate) < u64::from(n) {
        if base[..nbase]
            .iter()
            .take_while(|&&p| p * p <= candidate)
            .all(|&p| !candidate.is_multiple_of(p))
        {
            base[nbase] = candidate;
            nbase += 1;
        }
        candidate += 1;
    }
    let base = &base[..nbase];

    let mut count = 0u32;
    let mut next_report = 1u32; // in tenths
    let mut segment = [true; SEGMENT_BYTES];
    let mut low = 0u32;
    let mut index = 0u32;
    while low < n {
        let high = n.min(low.saturating_add(SEGMENT_BYTES as u32)); // [low, high)
        let ours = index % of.max(1) == share;
        index += 1;
        if !ours {
            low = high;
            continue;
        }
        let window = &mut segment[..(high - low) as usize];
        window.fill(true);
        for &p in base {
            // The first multiple of p in the window that is not p itself.
            let first = (p * p).max(low.div_ceil(p) * p);
            let mut m = first;
            while m < high {
                window[(m - low) as usize] = false;
                m += p;
            }
        }
        // 0 and 1 are not prime.
        for v in low..high.min(2) {
            window[v as usize] = false;
        }
        count += window.iter().filter(|&&is_prime| is_prime).count() as u32;
        low = high;
        heartbeat();
        while next_report <= 10 && u64::from(low) * 10 >= u64::from(n) * u64::from(next_report) {
            progress(next_report * 10, count);
            next_report += 1;
        }
    }
    count
}
