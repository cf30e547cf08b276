//! Host tests of run-time images: the transfer into the store, its refusals, and `swap`.

use alloc::format;
use alloc::vec::Vec;

use super::sim::*;
use super::*;
use crate::shell::Command;
use crate::transfer::{self, chunk_line, Reply, CHUNK};

/// The test ELF with its code segment grown to `file_bytes` (so its loads can be told apart).
fn elf_of(file_bytes: u64) -> Vec<u8> {
    let mut f = tiny_elf();
    f.resize(0x1000 + file_bytes as usize, 0xf4);
    f[64 + 32..64 + 40].copy_from_slice(&file_bytes.to_le_bytes()); // p_filesz
    let memsz = file_bytes.next_multiple_of(0x1000) + 0x1000;
    f[64 + 40..64 + 48].copy_from_slice(&memsz.to_le_bytes()); // p_memsz
    f
}

fn world() -> World {
    let mut w = World::new(4, vec![spec("a", 1), spec("b", 2)]);
    w.parsed.settings.image_store = 1 << 20;
    w
}

/// Sends `image` for `name` the way `cargo xtask push` does; returns the final answer.
fn push(sup: &mut Supervisor<'_, Sim>, name: &str, image: &[u8]) -> Reply {
    let sha = transfer::sha256(image);
    let ready = sup.begin_transfer(name, image.len() as u64, sha);
    let Reply::Ready { chunks, .. } = ready else { return ready };
    for (i, c) in image.chunks(CHUNK).enumerate() {
        assert_eq!(sup.transfer_line(chunk_line(i as u32, c).as_bytes()), Reply::Ok(i as u32));
    }
    assert_eq!(chunks as usize, image.len().div_ceil(CHUNK));
    sup.transfer_line(b"#end")
}

/// The world's supervisor with a 1 MiB store (leaked: freed with the test process), booted.
fn booted(w: &World) -> Supervisor<'_, Sim> {
    let mut sup = w.supervisor(w.sim(), FACTS);
    let range = sup.store_range.expect("the plan placed the store");
    assert_eq!(range.len(), 1 << 20);
    assert!(sup.m.allowed.iter().any(|r| r.contains_range(&range)), "the store is planned memory");
    let store = alloc::boxed::Box::leak(vec![0u8; 1 << 20].into_boxed_slice());
    sup.attach_store(store).unwrap();
    sup.boot().unwrap();
    run_for(&mut sup, 30);
    sup
}

#[test]
fn a_pushed_image_is_kept_swapped_in_and_swapped_back() {
    let w = world();
    let mut sup = booted(&w);
    assert_eq!(sup.instances[0].state, State::Running);
    let new = elf_of(0x2345);
    let sha = transfer::hex(&transfer::sha256(&new));
    assert_eq!(
        push(&mut sup, "a", &new),
        Reply::Kept { name: "a".into(), size: new.len() as u64, sha256: sha.clone() }
    );
    assert_eq!(events_with(&sup, "checked and kept").len(), 1);
    // Kept, not yet running: the instance was not touched.
    assert_eq!(sup.instances[0].state, State::Running);
    assert_eq!(sup.instances[0].image, ImageSource::Bundle);
    assert!(sup.instances[0].next_image.is_some());
    assert_eq!(loads(&sup, "a").len(), 1);

    let Outcome::Swapped(s) =
        sup.execute(Command::Swap { name: "a".into(), previous: false }).unwrap()
    else {
        panic!("not a swap")
    };
    assert_eq!((s.from, s.state), (ImageSource::Bundle, State::Running));
    let a = &sup.instances[0];
    assert!(matches!(a.image, ImageSource::Stored(_)));
    assert_eq!(a.previous_image, Some(ImageSource::Bundle));
    assert_eq!(a.next_image, None);
    assert_eq!(a.swaps, 1);
    let l = loads(&sup, "a");
    assert!(l[1].contains("loaded 9029 bytes"), "the new image was loaded: {}", l[1]);
    assert_eq!(sup.image_facts(0).hash, format!("sha256:{sha}"));
    assert_eq!(sup.image_facts(0).source, "pushed");
    // The neighbour ran on.
    assert_eq!(sup.instances[1].state, State::Running);
    assert!(sup.instances[1].transitions.iter().all(|(_, s)| *s != State::Stopped));

    // And back.
    let back = sup.execute(Command::Swap { name: "a".into(), previous: true }).unwrap();
    assert!(matches!(back, Outcome::Swapped(Swapped { to: ImageSource::Bundle, .. })));
    assert!(loads(&sup, "a")[2].contains("loaded 256 bytes"));
    assert_eq!(sup.image_facts(0).source, "bundle");
    // The pushed image is still kept, as the previous one, so it can come back again.
    assert!(matches!(sup.instances[0].previous_image, Some(ImageSource::Stored(_))));
    assert_eq!(sup.store().unwrap().images.len(), 1);
}

#[test]
fn a_damaged_chunk_is_asked_for_again_and_a_transfer_resumes() {
    let w = world();
    let mut sup = booted(&w);
    let new = elf_of(3 * CHUNK as u64);
    let sha = transfer::sha256(&new);
    let Reply::Ready { chunks, from: 0, .. } = sup.begin_transfer("a", new.len() as u64, sha)
    else {
        panic!()
    };
    assert_eq!(chunks, 5);
    let line = chunk_line(0, &new[..CHUNK]);
    let mut bad = line.clone().into_bytes();
    bad[20] ^= 1;
    assert!(matches!(sup.transfer_line(&bad), Reply::Resend { index: 0, .. }));
    assert_eq!(sup.transfer_line(line.as_bytes()), Reply::Ok(0));
    // A chunk of the wrong length for its index.
    assert!(matches!(
        sup.transfer_line(chunk_line(1, &new[..10]).as_bytes()),
        Reply::Resend { index: 1, .. }
    ));
    assert!(matches!(
        sup.transfer_line(chunk_line(9, &new[..10]).as_bytes()),
        Reply::Resend { index: 9, .. }
    ));
    assert_eq!(sup.transfer_line(b"#end"), Reply::Missing { index: 1, missing: 4 });
    // The sender reconnects: the same `load` resumes where it was.
    assert!(matches!(
        sup.begin_transfer("a", new.len() as u64, sha),
        Reply::Ready { from: 1, chunks: 5, .. }
    ));
    for (i, c) in new.chunks(CHUNK).enumerate().skip(1) {
        assert_eq!(sup.transfer_line(chunk_line(i as u32, c).as_bytes()), Reply::Ok(i as u32));
    }
    assert!(matches!(sup.transfer_line(b"#end"), Reply::Kept { .. }));
}

#[test]
fn images_that_fail_the_checks_are_refused_by_name_and_change_nothing() {
    let w = world();
    let mut sup = booted(&w);
    let before = sup.m.events.len();
    // Not an ELF: the loader's own error.
    let r = push(&mut sup, "a", b"this is not a kernel image at all");
    let Reply::Refused { name, why } = r else { panic!("{r:?}") };
    assert_eq!(name, "a");
    assert!(why.contains("ELF"), "{why}");
    // An ELF too big for the instance's load area (2 MiB region).
    let r = push(&mut sup, "a", &elf_of(0x0c_0000));
    assert!(matches!(r, Reply::Kept { .. }), "{r:?}");
    let mut huge = elf_of(0x100);
    huge[64 + 40..64 + 48].copy_from_slice(&(4u64 << 20).to_le_bytes()); // p_memsz 4 MiB
    let Reply::Refused { why, .. } = push(&mut sup, "a", &huge) else { panic!() };
    assert!(why.contains("region") || why.contains("fit"), "{why}");
    // The hash announced is not the image's.
    let img = elf_of(0x300);
    let _ = sup.begin_transfer("a", img.len() as u64, [7; 32]);
    for (i, c) in img.chunks(CHUNK).enumerate() {
        sup.transfer_line(chunk_line(i as u32, c).as_bytes());
    }
    let Reply::Refused { why, .. } = sup.transfer_line(b"#end") else { panic!() };
    assert!(why.contains("differs from the announced 0707"), "{why}");
    // Too big for the store, an unknown instance, an empty image.
    let Reply::Refused { why, .. } = sup.begin_transfer("a", 2 << 20, [0; 32]) else { panic!() };
    assert!(why.contains("do not fit the image store (1048576 bytes"), "{why}");
    let Reply::Refused { why, .. } = sup.begin_transfer("zz", 10, [0; 32]) else { panic!() };
    assert!(why.contains("no instance named 'zz' (instances: a, b)"), "{why}");
    assert!(matches!(sup.begin_transfer("a", 0, [0; 32]), Reply::Refused { .. }));
    // Nothing ran differently: no stop, no load since boot.
    assert_eq!(sup.instances[0].state, State::Running);
    assert_eq!(loads(&sup, "a").len(), 1);
    assert!(sup.m.events[before..].iter().all(|e| !e.contains("scrubbed")));
    // Only the one good image is kept (refused ones gave their room back), still as next.
    assert_eq!(sup.store().unwrap().images.len(), 1);
    assert_eq!(sup.instances[0].next_image, Some(sup.store().unwrap().images[0].id));
    // A second good image replaces it.
    assert!(matches!(push(&mut sup, "a", &elf_of(0x700)), Reply::Kept { .. }));
    let store = sup.store().unwrap();
    assert_eq!((store.images.len(), store.images[0].size), (1, 0x1700));
}

#[test]
fn abandoned_and_idle_transfers_leave_everything_as_it_was() {
    let w = world();
    let mut sup = booted(&w);
    let img = elf_of(4 * CHUNK as u64);
    let sha = transfer::sha256(&img);
    sup.begin_transfer("a", img.len() as u64, sha);
    sup.transfer_line(chunk_line(0, &img[..CHUNK]).as_bytes());
    assert_eq!(sup.transfer_progress(), Some(("a", 1, 6)));
    assert_eq!(
        sup.transfer_line(b"#abort"),
        Reply::Abandoned { name: "a".into(), received: 1, chunks: 6 }
    );
    assert_eq!(sup.transfer_progress(), None);
    assert!(sup.store().unwrap().images.is_empty());
    assert!(matches!(sup.transfer_line(b"#end"), Reply::Error(_)));
    // Garbage with no transfer under way, then during one: answered, never a panic.
    for junk in
        [&b"#"[..], b"#-1 zz", b"#4294967295 00000000 ====", b"#0 0000000g AAAA", &[0xff; 40]]
    {
        let _ = sup.transfer_line(junk);
    }
    sup.begin_transfer("a", img.len() as u64, sha);
    for junk in
        [&b"#"[..], b"#-1 zz", b"#4294967295 00000000 ====", b"#0 0000000g AAAA", &[0xff; 40]]
    {
        assert!(!matches!(sup.transfer_line(junk), Reply::Ok(_) | Reply::Kept { .. }));
    }
    // Silence: abandoned after the idle timeout.
    run_for(&mut sup, transfer::IDLE_TIMEOUT_US / 1000 + 10);
    assert_eq!(sup.transfer_progress(), None);
    assert_eq!(events_with(&sup, "image transfer abandoned after 0 of 6 chunks").len(), 1);
    assert!(sup.store().unwrap().images.is_empty());
    assert_eq!(sup.instances[0].state, State::Running);
    assert_eq!(loads(&sup, "a").len(), 1);
}

#[test]
fn swap_says_what_is_missing_and_a_failing_image_can_be_swapped_back() {
    let w = world();
    let mut sup = booted(&w);
    let err = sup.execute(Command::Swap { name: "a".into(), previous: false }).unwrap_err();
    assert!(format!("{err}").contains("no image is kept for it"), "{err}");
    let err = sup.execute(Command::Swap { name: "a".into(), previous: true }).unwrap_err();
    assert!(format!("{err}").contains("has no previous image"), "{err}");
    // An image that exits at once (the sim's behaviour is per name, so "a" exits now).
    assert!(matches!(push(&mut sup, "a", &elf_of(0x500)), Reply::Kept { .. }));
    sup.m.behaviors.insert("a".into(), Behavior::Exit(3));
    let Outcome::Swapped(s) =
        sup.execute(Command::Swap { name: "a".into(), previous: false }).unwrap()
    else {
        panic!()
    };
    assert_eq!(s.state, State::Exited);
    sup.m.behaviors.remove("a");
    sup.execute(Command::Swap { name: "a".into(), previous: true }).unwrap();
    run_for(&mut sup, 30);
    assert_eq!(sup.instances[0].state, State::Running);
    assert_eq!(sup.image_facts(0).source, "bundle");
    assert_eq!(sup.instances[0].swap_us.len(), 2);
}

#[test]
fn without_a_store_load_says_why() {
    let mut w = world();
    w.parsed.settings.image_store = 0;
    let mut sup = w.supervisor(w.sim(), FACTS);
    sup.boot().unwrap();
    let Reply::Refused { why, .. } = sup.begin_transfer("a", 10, [0; 32]) else { panic!() };
    assert!(why.contains("image_store = 0"), "{why}");
    let mut w = world();
    w.parsed.settings.image_store = 4 << 30;
    let sup = w.supervisor(w.sim(), FACTS);
    assert!(
        sup.store_refused().unwrap().starts_with("the image store"),
        "{:?}",
        sup.store_refused()
    );
}

#[test]
fn the_screen_panel_shows_every_instance_or_says_how_many_more() {
    let w = World::new(4, vec![spec("a", 1), spec("b", 2), spec("c", 3)]);
    let mut sup = w.supervisor(w.sim(), FACTS);
    sup.boot().unwrap();
    run_for(&mut sup, 40);
    let lines = sup.panel_lines(10);
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(lines[0].starts_with("instance     cpus      state"), "{}", lines[0]);
    for (line, (name, cpu)) in lines[1..].iter().zip([("a", 1), ("b", 2), ("c", 3)]) {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(&words[..3], &[name, &format!("{cpu}"), "running"], "{line}");
        assert!(line.ends_with(&format!("{name}: tick 3")), "the last console line: {line}");
        let age: f64 = words[3].parse().unwrap();
        assert!(words[4] == "s" && age < 0.1, "the heartbeat moved within 10 ms: {line}");
    }
    // Too little room: the last line counts the rest.
    let lines = sup.panel_lines(3);
    assert_eq!(lines.len(), 3);
    assert!(lines[1].starts_with("a "));
    assert_eq!(lines[2], "... and 2 more instances ('list' on the serial console)");
    assert!(sup.panel_lines(0).is_empty());
}
