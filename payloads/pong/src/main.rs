//! `pong`: echoes every message it receives on a channel.
//!
//! Args: `mode=poll|doorbell` (how it waits: spinning, or halting until the peer's doorbell;
//! in doorbell mode it also rings the peer's), `channel=NAME` (default: the first channel),
//! `exit_after=K` (exit with code 1 after echoing the K-th message the channel has carried
//! from this side, counting earlier lives: a restart test's way to die once mid-run).
//! It heartbeats while it waits. Exit code [`BROKEN`] when the peer wrote garbage into the
//! channel.
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

use payload_sdk::bootproto::channel::ChannelError;
use payload_sdk::channel::{Wait, MESSAGE_MAX};
use payload_sdk::time::Deadline;
use payload_sdk::{exit, heartbeat, println, Context};

const BROKEN: u32 = 4;
const BAD_ARGS: u32 = 2;

payload_sdk::entry!(main);

fn main(ctx: &Context) -> ! {
    let doorbell = match ctx.arg_value("mode").unwrap_or("poll") {
        "poll" => false,
        "doorbell" => true,
        other => {
            println!("pong: bad mode={other} (poll or doorbell)");
            exit(BAD_ARGS);
        }
    };
    let exit_after = ctx.arg_value("exit_after").and_then(|v| v.parse::<u64>().ok());
    let name = ctx.arg_value("channel").or_else(|| ctx.channel_names().next());
    let Some(name) = name else {
        println!("pong: this instance has no channel");
        exit(BAD_ARGS);
    };
    let mut link = match ctx.channel(name) {
        Ok(c) => c,
        Err(e) => {
            println!("pong: cannot open channel '{name}': {e}");
            exit(BROKEN);
        }
    };
    println!("pong: echoing on channel '{name}' ({})", if doorbell { "doorbell" } else { "poll" });
    let wait = if doorbell { Wait::Halt } else { Wait::Poll };
    let mut buf = [0u8; MESSAGE_MAX];
    loop {
        heartbeat();
        match link.recv_wait(&mut buf, Deadline::after_ms(50), wait) {
            Ok(None) => {}
            Ok(Some(n)) => {
                let resend = Deadline::after_ms(1000);
                loop {
                    match link.send(&buf[..n]) {
                        Ok(()) => break,
                        Err(ChannelError::Full) if !resend.expired() => core::hint::spin_loop(),
                        Err(e) => broken(e),
                    }
                }
                if doorbell {
                    link.ring_doorbell();
                }
                if exit_after.is_some_and(|k| link.counts().0 == k) {
                    println!("pong: exiting after {} echoes, as asked", link.counts().0);
                    exit(1);
                }
            }
            Err(e) => broken(e),
        }
    }
}

fn broken(e: ChannelError) -> ! {
    println!("pong: channel broken: {e}");
    exit(BROKEN)
}
