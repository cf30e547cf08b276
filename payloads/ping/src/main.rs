//! `ping`: measures a channel's round trip.
//!
//! Args: `rounds=N` (default 1000, at most 100000), `mode=poll|doorbell|self` (default `poll`),
//! `channel=NAME` (default: the instance's first channel). Each round sends an 8-byte sequence
//! number and waits for the peer (`pong`) to echo it: spinning in `poll` mode, halting until
//! the peer's doorbell in `doorbell` mode (and ringing the peer's). `self` is the baseline:
//! the same rings in this instance's own memory, sent and answered on this CPU, so what the
//! other modes add (the other CPU, the cache lines crossing, the IPI) can be read off.
//!
//! It prints `ping: N round trips, median X ns, p99 Y ns, Z msgs/s (mode)` (the rate counts
//! messages both ways from the end of round 1, so the peer's start-up is not in it), reports N
//! as its `result`, then heartbeats forever. If the peer is started again mid-run, it says so and
//! sends the round again. Exit codes: [`BROKEN`] when the peer wrote garbage into the channel,
//! [`NO_ANSWER`] when a round got no answer for [`ROUND_TIMEOUT_MS`], [`BAD_ARGS`].
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

use payload_sdk::bootproto::channel::{self as ch, ChannelHeader, Endpoint, Slots, MIN_SIZE};
use payload_sdk::channel::{Channel, Wait, MESSAGE_MAX};
use payload_sdk::time::{now_ticks, ticks_for_us, us_between, Deadline};
use payload_sdk::{exit, heartbeat, println, set_result, Context};

const BROKEN: u32 = 4;
const NO_ANSWER: u32 = 5;
const BAD_ARGS: u32 = 2;
const ROUND_TIMEOUT_MS: u64 = 10_000;
/// A round without an answer after this long is sent again (the peer may not be up yet).
const RESEND_MS: u64 = 200;
const MAX_ROUNDS: u32 = 100_000;
/// Round-trip samples kept for the percentiles (the first ones, if there are more rounds).
const SAMPLES: usize = 4096;

payload_sdk::entry!(main);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Poll,
    Doorbell,
    SameCpu,
}

fn main(ctx: &Context) -> ! {
    let rounds = match ctx.arg_value("rounds").map(str::parse::<u32>) {
        None => 1000,
        Some(Ok(n)) if (1..=MAX_ROUNDS).contains(&n) => n,
        Some(_) => {
            println!("ping: bad rounds= value (1..={MAX_ROUNDS})");
            exit(BAD_ARGS);
        }
    };
    let mode = match ctx.arg_value("mode").unwrap_or("poll") {
        "poll" => Mode::Poll,
        "doorbell" => Mode::Doorbell,
        "self" => Mode::SameCpu,
        other => {
            println!("ping: bad mode={other} (poll, doorbell or self)");
            exit(BAD_ARGS);
        }
    };
    let mut samples = [0u32; SAMPLES];
    // The rate counts from the end of round 1, so the wait for the peer to come up is not in it.
    let mut after_first = 0;
    let kept = match mode {
        Mode::SameCpu => same_cpu(rounds, &mut samples, &mut after_first),
        _ => {
            let name = ctx.arg_value("channel").or_else(|| ctx.channel_names().next());
            let Some(name) = name else {
                println!("ping: this instance has no channel (add a [[channel]] to the manifest)");
                exit(BAD_ARGS);
            };
            let mut link = match ctx.channel(name) {
                Ok(c) => c,
                Err(e) => {
                    println!("ping: cannot open channel '{name}': {e}");
                    exit(BROKEN);
                }
            };
            println!("ping: {rounds} rounds on channel '{name}' ({})", mode_name(mode));
            with_peer(&mut link, mode, rounds, &mut samples, &mut after_first)
        }
    };
    let steady_us = us_between(after_first, now_ticks()).max(1);
    let s = &mut samples[..kept];
    s.sort_unstable();
    let median = s.get(s.len() / 2).copied().unwrap_or(0);
    let p99 = s.get(s.len() * 99 / 100).copied().unwrap_or(0);
    let rate = u64::from(rounds.saturating_sub(1).max(1)) * 2 * 1_000_000 / steady_us;
    println!(
        "ping: {rounds} round trips, median {median} ns, p99 {p99} ns, {rate} msgs/s ({})",
        mode_name(mode)
    );
    set_result(u64::from(rounds));
    loop {
        heartbeat();
        Deadline::after_ms(50).wait();
    }
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Poll => "poll",
        Mode::Doorbell => "doorbell",
        Mode::SameCpu => "self",
    }
}

fn ns_between(a: u64, b: u64) -> u32 {
    // us_between works in whole microseconds; keep nanoseconds from the tick count.
    let ticks = b.saturating_sub(a);
    let per_us = ticks_for_us(1).max(1);
    u32::try_from(ticks * 1000 / per_us).unwrap_or(u32::MAX)
}

/// Rounds against the peer; returns how many samples were kept.
fn with_peer(
    link: &mut Channel,
    mode: Mode,
    rounds: u32,
    samples: &mut [u32; SAMPLES],
    after_first: &mut u64,
) -> usize {
    let wait = if mode == Mode::Doorbell { Wait::Halt } else { Wait::Poll };
    let mut buf = [0u8; MESSAGE_MAX];
    let mut kept = 0;
    for round in 1..=rounds {
        let msg = u64::from(round).to_le_bytes();
        let t0 = now_ticks();
        let give_up = Deadline::after_ms(ROUND_TIMEOUT_MS);
        'round: loop {
            if let Some(e) = link.peer_restarted() {
                println!(
                    "ping: the peer was started again (life {}); sending round {round} again",
                    e / 2
                );
            }
            loop {
                match link.send(&msg) {
                    Ok(()) => break,
                    Err(ch::ChannelError::Full) if !give_up.expired() => core::hint::spin_loop(),
                    Err(e) => broken(e),
                }
            }
            if mode == Mode::Doorbell {
                link.ring_doorbell();
            }
            let resend = Deadline::after_ms(RESEND_MS).min(give_up);
            loop {
                match link.recv_wait(&mut buf, resend, wait) {
                    Ok(Some(8)) if buf[..8] == msg => break 'round,
                    Ok(Some(_)) => continue, // an answer to an earlier, resent round
                    Ok(None) if give_up.expired() => {
                        println!("ping: no answer to round {round} within {ROUND_TIMEOUT_MS} ms");
                        exit(NO_ANSWER);
                    }
                    Ok(None) => continue 'round,
                    Err(e) => broken(e),
                }
            }
        }
        let t1 = now_ticks();
        if round == 1 {
            *after_first = t1;
        }
        if kept < SAMPLES {
            samples[kept] = ns_between(t0, t1);
            kept += 1;
        }
        if round % 256 == 0 {
            heartbeat();
        }
    }
    kept
}

fn broken(e: ch::ChannelError) -> ! {
    println!("ping: channel broken: {e}");
    exit(BROKEN)
}

/// A channel in this instance's own memory, both sides on this CPU.
#[repr(C, align(4096))]
struct Local([u8; MIN_SIZE as usize]);

struct LocalSlots<'a>(&'a mut [u8]);

impl Slots for LocalSlots<'_> {
    fn read(&self, offset: u64, out: &mut [u8]) {
        let at = offset as usize;
        if let Some(src) = self.0.get(at..at + out.len()) {
            out.copy_from_slice(src);
        }
    }
    fn write(&mut self, offset: u64, bytes: &[u8]) {
        let at = offset as usize;
        if let Some(dst) = self.0.get_mut(at..at + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    }
}

/// The same-CPU baseline: each round is a message into ring 0, its echo into ring 1.
fn same_cpu(rounds: u32, samples: &mut [u32; SAMPLES], after_first: &mut u64) -> usize {
    let header = ChannelHeader::new(MIN_SIZE);
    let mut local = Local([0; MIN_SIZE as usize]);
    let mut slots = LocalSlots(&mut local.0);
    let (Ok(mut a), Ok(mut b)) =
        (Endpoint::join(&header, 0, MIN_SIZE), Endpoint::join(&header, 1, MIN_SIZE))
    else {
        println!("ping: the local channel did not open");
        exit(BROKEN);
    };
    let mut buf = [0u8; MESSAGE_MAX];
    let mut kept = 0;
    for round in 1..=rounds {
        let msg = u64::from(round).to_le_bytes();
        let t0 = now_ticks();
        let ok = a.send(&header, &mut slots, &msg).is_ok()
            && matches!(b.recv(&header, &slots, &mut buf), Ok(Some(8)))
            && b.send(&header, &mut slots, &buf[..8]).is_ok()
            && matches!(a.recv(&header, &slots, &mut buf), Ok(Some(8)))
            && buf[..8] == msg;
        if !ok {
            println!("ping: the local channel lost round {round}");
            exit(BROKEN);
        }
        let t1 = now_ticks();
        if round == 1 {
            *after_first = t1;
        }
        if kept < SAMPLES {
            samples[kept] = ns_between(t0, t1);
            kept += 1;
        }
    }
    kept
}
