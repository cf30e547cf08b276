//! `compute`: a payload that does real, checkable work.
//!
//! It counts the primes below `N` (args `primes=N`, default [`DEFAULT_N`] → 9592) with a
//! segmented sieve of Eratosthenes whose memory is a few KiB of stack, whatever `N` is: the
//! base primes up to √N (found by trial division) and one [`SEGMENT_BYTES`] window at a time.
//! It prints progress every tenth of the range, heartbeats once per segment, reports the count
//! with `set_result` and prints it, then keeps heartbeating forever (the manager's default run
//! expects every instance to stay `running`).
//!
//! Bad arguments (not a number, or `N` above [`MAX_N`]) print an error and exit with
//! [`BAD_ARGS_EXIT_CODE`].
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

use payload_sdk::time::Deadline;
use payload_sdk::{exit, heartbeat, println, set_result, Context};

const DEFAULT_N: u32 = 100_000;
/// √MAX_N = 10 000, below which there are 1229 primes: [`BASE_PRIMES_MAX`] bounds the table.
const MAX_N: u32 = 100_000_000;
const BASE_PRIMES_MAX: usize = 1229;
const SEGMENT_BYTES: usize = 4096;
const BAD_ARGS_EXIT_CODE: u32 = 2;
const HEARTBEAT_INTERVAL_MS: u64 = 50;

payload_sdk::entry!(main);

fn main(ctx: &Context) -> ! {
    let n = match ctx.arg_value("primes").map(str::parse::<u32>) {
        None => DEFAULT_N,
        Some(Ok(n)) if n <= MAX_N => n,
        Some(_) => {
            println!("compute: bad primes= value in args \"{}\" (0..={MAX_N})", ctx.args());
            exit(BAD_ARGS_EXIT_CODE);
        }
    };
    println!("compute: {} on apic {}: counting primes below {n}", ctx.name(), ctx.apic_id());
    let start = payload_sdk::time::now_ticks();
    let count = count_primes_below(n, |percent, so_far| {
        println!("compute: {percent}% ({so_far} primes so far)");
    });
    let ms = payload_sdk::time::us_between(start, payload_sdk::time::now_ticks()) / 1000;
    set_result(u64::from(count));
    println!("compute: primes below {n}: {count} ({ms} ms)");
    loop {
        heartbeat();
        Deadline::after_ms(HEARTBEAT_INTERVAL_MS).wait();
    }
}

/// The number of primes `p < n`. Calls `progress(percent, count_so_far)` each time another
/// tenth of the range is done, and heartbeats once per segment.
fn count_primes_below(n: u32, mut progress: impl FnMut(u32, u32)) -> u32 {
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
    while low < n {
        let high = n.min(low.saturating_add(SEGMENT_BYTES as u32)); // [low, high)
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
