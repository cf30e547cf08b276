//! Fuzz target: nothing an instance writes into the memory it shares with the manager can make
//! the supervisor panic, loop or misbehave towards a neighbour.
//!
//! A simulated machine (`platform::supervisor::sim`) boots two instances whose fake APs run the
//! real start-up protocol. The input is a script: each 12-byte step writes an 8-byte value
//! (little-endian, at a fuzzed width) at a fuzzed offset of one of the victim's shared areas —
//! its status block, console ring header and data, CPU slot (check-in record), the park log —
//! or runs a shell command on it, then lets time pass. Afterwards the well-behaved neighbour
//! must still be running with every console line it printed delivered.

#![no_main]

use libfuzzer_sys::fuzz_target;
use platform::shell::Command;
use platform::supervisor::sim::{spec, Behavior, World, FACTS};
use platform::supervisor::Supervisor;

fuzz_target!(|data: &[u8]| {
    let w = World::new(4, vec![spec("victim", 1), spec("good", 2)]);
    let mut sim = w.sim();
    sim.behaviors.insert("good".into(), Behavior::Good { lines: 4 });
    let mut sup: Supervisor<'_, _> = w.supervisor(sim, FACTS);
    sup.boot().unwrap();
    let pages = sup.pages.unwrap();
    for step in data.chunks_exact(12).take(64) {
        let (what, width, offset) = (step[0], step[1] % 4, u16::from_le_bytes([step[2], step[3]]));
        let value = u64::from_le_bytes(step[4..12].try_into().unwrap());
        let layout = sup.instances[0].loaded.as_ref().map(|l| l.layout);
        let target = match (what % 8, layout) {
            (0, Some(l)) => Some(l.status + u64::from(offset % 80)),
            (1, Some(l)) => Some(l.console + u64::from(offset % 32)),
            (2, Some(l)) => Some(l.console + 24 + u64::from(offset) % 8192),
            (3, Some(l)) => Some(l.slot(0) + u64::from(offset % 0x1000)),
            (4, _) => Some(pages.park_page + 0x800 + u64::from(offset % 0x800)),
            (5, _) => {
                let cmd = match value % 3 {
                    0 => Command::Stop("victim".into()),
                    1 => Command::Start("victim".into()),
                    _ => Command::Restart("victim".into()),
                };
                let _ = sup.execute(cmd);
                None
            }
            _ => None,
        };
        if let Some(at) = target {
            let bytes = value.to_le_bytes();
            let n = 1usize << width;
            for (i, b) in bytes[..n].iter().enumerate() {
                sup.m.set(at + i as u64, *b);
            }
        }
        for _ in 0..=(step[1] >> 4) {
            sup.poll();
            platform::supervisor::Clock::wait_us(&mut sup.m, 2_000);
        }
    }
    // Let the neighbour finish its lines, then check it was not disturbed.
    for _ in 0..40 {
        sup.poll();
        platform::supervisor::Clock::wait_us(&mut sup.m, 2_000);
    }
    let good = &sup.instances[1];
    assert_eq!(good.state, platform::lifecycle::State::Running, "{:?}", good.reason);
    assert_eq!(good.console.lines, 4, "the neighbour lost console lines");
    assert_eq!(good.console.dropped, 0);
});
