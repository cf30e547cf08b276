//! Host tests of the supervisor on the simulated machine of `sim.rs`.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use super::sim::*;
use super::*;
use crate::apstart::Ipi;
use crate::bundle::Restart;
use crate::shell::Command;

#[test]
fn every_cpu_starts_through_one_start_page_and_reports_in() {
    let w = World::new(4, vec![spec("a", ANY_CPU), spec("b", ANY_CPU), spec("c", 3)]);
    let mut sup = w.supervisor(w.sim(), FACTS);
    sup.boot().unwrap();
    let pages = sup.pages.unwrap();
    assert!(sup.m.triple_faults.is_empty(), "{:?}", sup.m.triple_faults);
    for inst in &sup.instances {
        assert_eq!(inst.state, State::Started, "{}: {:?}", inst.name, inst.reason);
        assert!(inst.checkin_us.is_some());
    }
    // "c" named CPU 3, so the automatic ones got 1 and 2.
    let cpus: Vec<&[u32]> = sup.instances.iter().map(|i| i.cpus()).collect();
    assert_eq!(cpus, [&[1][..], &[2], &[3]]);
    // One start page for everyone: every SIPI names it. Two per CPU: the one before the INIT
    // and the start; nobody needed the second.
    let start_vector = (pages.start_page >> 12) as u8;
    assert!(sup.m.ipis.iter().filter(|(k, ..)| *k == 'S').all(|&(_, _, v)| v == start_vector));
    assert_eq!(sup.m.ipis.iter().filter(|(k, ..)| *k == 'S').count(), 6);
    assert_eq!(sup.boot_timeline.unwrap().second_sipis, 0);
    run_for(&mut sup, 50);
    for inst in &sup.instances {
        assert_eq!(inst.state, State::Running, "{}", inst.name);
        assert!(inst.heartbeat > 0);
    }
    // Console lines came through in order.
    let lines: Vec<_> = events_with(&sup, "[a] a: tick").into_iter().cloned().collect();
    assert_eq!(lines, ["[a] a: tick 1", "[a] a: tick 2", "[a] a: tick 3"]);
    // Every entry was disarmed once its CPU checked in.
    for k in 0..3u64 {
        assert_eq!(sup.m.r32(pages.table + 32 * k + 4), 0);
    }
}

#[test]
fn low_memory_and_tables_do_not_grow_with_the_number_of_cpus() {
    let instances = (1..300).map(|i| spec(&format!("i{i}"), ANY_CPU)).collect();
    let w = World::new(300, instances);
    let mut sup = w.supervisor(w.sim(), Facts { init_delay: true, ..FACTS });
    sup.boot().unwrap();
    assert!(sup.instances.iter().all(|i| i.state == State::Started));
    let low: Vec<_> = sup.m.allowed.iter().filter(|r| r.start < 0x10_0000).collect();
    assert_eq!(low.len(), 2, "{low:?}");
    // One INIT per CPU, two SIPIs per CPU, and a single 10 ms INIT wait for all of them.
    assert_eq!(sup.m.ipis.iter().filter(|(k, ..)| *k == 'I').count(), 299);
    assert_eq!(sup.m.ipis.iter().filter(|(k, ..)| *k == 'S').count(), 2 * 299);
    let started = sup.instances.iter().filter_map(|i| i.checkin_us).max().unwrap();
    assert!(started < 20_000, "the last CPU checked in after {started} us");
    let table = sup.pages.unwrap();
    assert_eq!(table.table_len as usize, trampoline::PAGE_SIZE * 3 / 32);
}

#[test]
fn a_cpu_that_misses_its_deadline_is_parked_before_its_instance_is_failed() {
    let w = World::new(4, vec![spec("slow", 1), spec("ok", 2)]);
    let mut sim = w.sim();
    sim.cpus.get_mut(&1).unwrap().arrive_after_us = 10_000_000;
    let mut sup = w.supervisor(sim, FACTS);
    sup.boot().unwrap();
    let pages = sup.pages.unwrap();
    let slow = &sup.instances[0];
    assert_eq!(slow.state, State::Failed);
    let why = slow.reason_text();
    assert!(
        why.contains("APIC 1 did not reach the entry point within 100 ms")
            && why.contains("never found its start parameters")
            && why.contains("it was stopped and parked"),
        "{why}"
    );
    assert!(sup.m.parked(1, pages.park_page), "the late CPU was not parked");
    assert!(!sup.m.running(1));
    assert_eq!(loads(&sup, "slow").len(), 1);
    // Its memory was scrubbed (and so is known to be zero).
    assert!(sup.instances[0].zeroed);
    // The neighbour was watched while the slow one was waited for: it already reported in.
    assert_eq!(sup.instances[1].state, State::Running);
}

#[test]
fn a_late_check_in_is_reported_as_late_with_its_time() {
    let w = World::new(4, vec![spec("late", 1)]);
    let mut sim = w.sim();
    // Arrives 50 us after the 100 ms deadline: between two looks at the check-ins.
    sim.cpus.get_mut(&1).unwrap().arrive_after_us = 100_050;
    let mut sup = w.supervisor(sim, FACTS);
    sup.boot().unwrap();
    let why = sup.instances[0].reason_text();
    assert!(why.contains("APIC 1 checked in late, 100 ms after its INIT"), "{why}");
    assert!(sup.m.parked(1, sup.pages.unwrap().park_page));
    assert_eq!(sup.instances[0].state, State::Failed);
}

#[test]
fn a_dropped_counter_of_u64_max_across_a_restart_does_not_overflow() {
    let mut s = spec("liar", 1);
    s.restart = Restart::OnFailure;
    s.max_restarts = 2;
    let w = World::new(4, vec![s, spec("good", 2)]);
    let mut sim = w.sim();
    sim.behaviors.insert(
        "liar".into(),
        Behavior::Lie { field: Field::Dropped, value: u64::MAX, after_us: 20_000 },
    );
    let mut sup = w.supervisor(sim, FACTS);
    sup.boot().unwrap();
    run_for(&mut sup, 100);
    assert_eq!(sup.instances[0].console.dropped, u64::MAX);
    // Make it exit with a failure: the policy restarts it, and its new life lies again.
    sup.m.behaviors.insert("liar".into(), Behavior::Exit(1));
    let status = sup.instances[0].loaded.as_ref().unwrap().layout.status;
    sup.m.w32(status + 4, 1);
    sup.m.w32(status, bootproto::state::EXITED);
    run_for(&mut sup, 20);
    sup.m
        .behaviors
        .insert("liar".into(), Behavior::Lie { field: Field::Dropped, value: 5, after_us: 0 });
    run_for(&mut sup, 200);
    assert!(sup.instances[0].restarts >= 1);
    assert_eq!(sup.instances[0].console.dropped, u64::MAX, "saturated, not wrapped");
    assert_eq!(sup.instances[1].state, State::Running);
}

#[test]
fn an_instance_that_exits_at_once_is_restarted_with_back_off_then_given_up() {
    let mut s = spec("storm", 1);
    s.restart = Restart::OnFailure;
    s.max_restarts = 6;
    let w = World::new(4, vec![s, spec("good", 2)]);
    let mut sim = w.sim();
    sim.behaviors.insert("storm".into(), Behavior::Exit(1));
    let mut sup = w.supervisor(sim, FACTS);
    sup.boot().unwrap();
    run_for(&mut sup, 3000);
    let storm = &sup.instances[0];
    assert_eq!(storm.restarts, 6);
    assert_eq!(storm.state, State::Exited);
    let why = storm.reason_text();
    assert!(why.starts_with("exit code 1 (exited again after 6 restarts"), "{why}");
    let delays: Vec<String> = events_with(&sup, "restarting in")
        .iter()
        .map(|e| e.split("restarting in ").nth(1).unwrap().split(' ').next().unwrap().to_string())
        .collect();
    assert_eq!(delays, ["0", "25", "50", "100", "200", "400"]);
    assert_eq!(events_with(&sup, "restart limit of 6 reached").len(), 1);
    // Every restart really started it: seven check-ins in all.
    assert_eq!(loads(&sup, "storm").len(), 7);
    // The neighbour ran throughout and lost nothing.
    assert_eq!(sup.instances[1].state, State::Running);
    assert_eq!(sup.instances[1].console.dropped, 0);
}

#[test]
fn impossible_values_fail_the_instance_naming_field_and_value_and_stop_its_cpu() {
    let cases = [
        (Field::State, 77, "status block field `state` holds 77, which is not a state (0-3)"),
        (Field::RingHead, 0xdead_beef, "console ring: console ring indices are corrupt"),
        (Field::RingCapacity, 12, "console ring header says capacity 12"),
    ];
    for (field, value, want) in cases {
        let w = World::new(4, vec![spec("liar", 1), spec("good", 2)]);
        let mut sim = w.sim();
        sim.behaviors.insert("liar".into(), Behavior::Lie { field, value, after_us: 20_000 });
        sim.behaviors.insert("good".into(), Behavior::Good { lines: 10 });
        let mut sup = w.supervisor(sim, FACTS);
        sup.boot().unwrap();
        run_for(&mut sup, 150);
        let liar = &sup.instances[0];
        assert_eq!(liar.state, State::Failed, "{field:?}");
        let why = liar.reason_text();
        assert!(why.contains(want) && why.ends_with("its CPUs were stopped"), "{field:?}: {why}");
        assert!(sup.m.parked(1, sup.pages.unwrap().park_page), "{field:?}: CPU 1 not parked");
        assert!(liar.zeroed, "{field:?}: not scrubbed");
        let good: Vec<_> = events_with(&sup, "[good] good: tick").into_iter().cloned().collect();
        let want_lines: Vec<String> = (1..=10).map(|n| format!("[good] good: tick {n}")).collect();
        assert_eq!(good, want_lines, "{field:?}: the neighbour lost console lines");
    }
}

#[test]
fn a_fault_record_with_an_impossible_vector_is_refused() {
    let w = World::new(4, vec![spec("f", 1), spec("real", 2)]);
    let mut sim = w.sim();
    sim.behaviors.insert("f".into(), Behavior::Fault(9999));
    sim.behaviors.insert("real".into(), Behavior::Fault(14));
    let mut sup = w.supervisor(sim, FACTS);
    sup.boot().unwrap();
    run_for(&mut sup, 20);
    assert!(sup.instances[0].reason_text().contains("`fault_vector` holds 9999"));
    assert_eq!(sup.instances[1].state, State::Faulted);
    assert_eq!(sup.instances[1].fault.unwrap().apic_id, 2);
    assert!(events_with(&sup, "FAULTED: page fault (#PF) (vector 14) on APIC 2").len() == 1);
}

#[test]
fn stop_and_start_from_the_shell_scrub_and_reload_and_skip_zeroing_a_clean_region() {
    let w = World::new(4, vec![spec("a", 1), spec("b", 2)]);
    let mut sup = w.supervisor(w.sim(), FACTS);
    sup.boot().unwrap();
    run_for(&mut sup, 30);
    assert_eq!(sup.execute(Command::Stop("a".into())), Ok(Outcome::Stopped(0)));
    assert_eq!(sup.instances[0].state, State::Stopped);
    assert!(sup.m.parked(1, sup.pages.unwrap().park_page));
    assert_eq!(events_with(&sup, "instance 'a': region").len(), 1);
    let again = sup.execute(Command::Stop("a".into())).unwrap_err();
    assert_eq!(again.to_string(), "cannot stop 'a': it is already stopped");
    let running = sup.execute(Command::Start("b".into())).unwrap_err();
    assert!(running.to_string().starts_with("cannot start 'b': it is running"));
    let missing = sup.execute(Command::Stop("zz".into())).unwrap_err();
    assert_eq!(missing.to_string(), "no instance named 'zz' (instances: a, b)");
    let out = sup.execute(Command::Start("a".into())).unwrap();
    assert_eq!(out, Outcome::Started { index: 0, state: State::Running, restarted: false });
    // The region was known zero after the scrub: only the image was written.
    let l = loads(&sup, "a");
    assert!(l[0].contains("KiB zeroed") && !l[0].contains(" 0 KiB zeroed"), "{}", l[0]);
    assert!(l[1].contains(" 0 KiB zeroed"), "{}", l[1]);
    let out = sup.execute(Command::Restart("a".into())).unwrap();
    assert!(matches!(out, Outcome::Started { restarted: true, .. }));
    assert_eq!(sup.instances[0].restarts, 1);
    assert_eq!(sup.pool_free_frames(), {
        let mut fresh = w.supervisor(w.sim(), FACTS);
        fresh.boot().unwrap();
        fresh.pool_free_frames()
    });
}

#[test]
fn a_cpu_that_never_parks_quarantines_its_instance() {
    let w = World::new(4, vec![spec("stuck", 1)]);
    let mut sup = w.supervisor(w.sim(), FACTS);
    sup.boot().unwrap();
    sup.m.cpus.get_mut(&1).unwrap().deaf = true;
    let err = sup.execute(Command::Stop("stuck".into())).unwrap_err();
    assert!(err
        .to_string()
        .contains("APIC 1 did not confirm its INIT on the parking page within 500 ms"));
    let inst = &sup.instances[0];
    assert!(inst.quarantined && inst.state == State::Failed);
    assert!(!inst.zeroed, "the memory of a CPU that may still run it must not be touched");
    let err = sup.execute(Command::Start("stuck".into())).unwrap_err();
    assert!(err.to_string().contains("never confirmed they stopped"), "{err}");
}

#[test]
fn refused_cpus_get_no_ipi_and_no_memory() {
    let w = World::new(4, vec![spec("ghost", 9), spec("bsp", 0), spec("ok", 1), spec("dup", 1)]);
    let mut sup = w.supervisor(w.sim(), FACTS);
    sup.boot().unwrap();
    let reasons: Vec<String> = sup.instances.iter().map(Instance::reason_text).collect();
    assert_eq!(reasons[0], "CPU 9 does not exist: the MADT lists APIC IDs 0, 1, 2, 3");
    assert!(reasons[1].contains("bootstrap processor"), "{}", reasons[1]);
    assert_eq!(reasons[3], "CPU 1 is already given to instance 'ok'");
    assert!(sup.instances[0].region().is_none());
    assert!(sup.m.ipis.iter().all(|&(_, id, _)| id == 1), "{:?}", sup.m.ipis);
    assert_eq!(sup.instances[2].state, State::Started);
}

#[test]
fn a_stray_cpu_on_the_start_page_is_counted_and_halted() {
    let w = World::new(4, vec![spec("a", 1)]);
    let mut sup = w.supervisor(w.sim(), FACTS);
    sup.boot().unwrap();
    // Someone else sends CPU 3 to the start page: nothing is armed for it.
    let vector = (sup.pages.unwrap().start_page >> 12) as u8;
    sup.m.cpus.get_mut(&3).unwrap().mode = Mode::WaitForSipi;
    sup.m.send_startup(3, vector).unwrap();
    sup.m.wait_us(1000);
    sup.execute(Command::Restart("a".into())).unwrap();
    assert_eq!(
        events_with(&sup, "1 CPU(s) ran the start-up code with no start expected (last: APIC 3)")
            .len(),
        1
    );
    assert!(!sup.m.running(3));
}

#[test]
fn stopping_an_instance_between_two_policy_restarts_cancels_the_next_one() {
    let mut s = spec("storm", 1);
    s.restart = Restart::OnFailure;
    s.max_restarts = 100;
    let w = World::new(4, vec![s]);
    let mut sim = w.sim();
    sim.behaviors.insert("storm".into(), Behavior::Exit(1));
    let mut sup = w.supervisor(sim, FACTS);
    sup.boot().unwrap();
    // Run until it sits stopped, waiting out a back-off.
    for _ in 0..2000 {
        sup.poll();
        if sup.instances[0].state == State::Stopped && sup.instances[0].next_restart.is_some() {
            break;
        }
        sup.m.wait_us(POLL_INTERVAL_US);
    }
    assert!(sup.instances[0].next_restart.is_some());
    let restarts = sup.instances[0].restarts;
    assert_eq!(sup.execute(Command::Stop("storm".into())), Ok(Outcome::Stopped(0)));
    run_for(&mut sup, 3000);
    assert_eq!(sup.instances[0].state, State::Stopped);
    assert_eq!(sup.instances[0].restarts, restarts, "it was restarted after the stop");
}

#[test]
fn a_silent_heartbeat_is_a_hang_that_the_policy_restarts() {
    let mut s = spec("stuck", 1);
    s.heartbeat_timeout_ms = 50;
    s.restart = Restart::OnFailure;
    s.max_restarts = 1;
    let w = World::new(4, vec![s]);
    let mut sim = w.sim();
    sim.behaviors.insert("stuck".into(), Behavior::Hang);
    let mut sup = w.supervisor(sim, FACTS);
    sup.boot().unwrap();
    run_for(&mut sup, 400);
    let inst = &sup.instances[0];
    assert_eq!(inst.state, State::Hung);
    assert_eq!(inst.restarts, 1);
    assert!(inst.reason_text().starts_with("no heartbeat for 50 ms (hung again after 1 restarts"));
    assert_eq!(loads(&sup, "stuck").len(), 2);
    // The first life's CPU was parked before the restart.
    assert!(events_with(&sup, "instance 'stuck': running -> hung").len() == 2);
}

/// The `shared` fuzz target's corpus (`platform/fuzz/corpus/shared/`), replayed without the
/// fuzzer: every input that once found new coverage, and every input that once crashed it.
#[test]
fn shared_fuzz_corpus_replays_cleanly() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/shared");
    let mut inputs: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    inputs.sort();
    assert!(inputs.len() >= 50, "{} lost its seeds", dir.display());
    for path in inputs {
        let data = std::fs::read(&path).unwrap();
        let run = std::panic::catch_unwind(|| sim::shared_memory_script(&data));
        assert!(run.is_ok(), "{} fails the shared-memory script", path.display());
    }
}

#[test]
fn a_cpu_that_loses_the_first_sipi_gets_the_second_and_only_it_does() {
    let w = World::new(4, vec![spec("a", 1), spec("b", 2), spec("c", 3)]);
    let mut sim = w.sim();
    sim.cpus.get_mut(&2).unwrap().lost_sipis = 1;
    let mut sup = w.supervisor(sim, FACTS);
    sup.boot().unwrap();
    assert!(
        sup.instances.iter().all(|i| i.state == State::Started),
        "{:?}",
        sup.instances[1].reason
    );
    let sipis = |id| sup.m.ipis.iter().filter(|&&(k, to, _)| k == 'S' && to == id).count();
    assert_eq!((sipis(1), sipis(2), sipis(3)), (2, 3, 2));
    assert_eq!(sup.boot_timeline.unwrap().second_sipis, 1);
}

#[test]
fn a_kernel_asking_for_protocol_version_1_gets_version_1_and_its_size() {
    use bootproto::BootInfo;
    use core::mem::offset_of;
    let mut old = spec("old", 1);
    old.protocol_version = 1;
    let w = World::new(4, vec![old, spec("new", 2)]);
    let mut sup = w.supervisor(w.sim(), FACTS);
    sup.boot().unwrap();
    let info = |i: usize| sup.instances[i].loaded.as_ref().unwrap().layout.boot_info;
    let field = |i: usize, off: usize| sup.m.r32(info(i) + off as u64);
    let (version, size) = (offset_of!(BootInfo, version), offset_of!(BootInfo, size));
    assert_eq!((field(0, version), field(0, size)), (1, bootproto::BOOT_INFO_V1_SIZE));
    assert_eq!(
        (field(1, version), field(1, size)),
        (bootproto::PROTOCOL_VERSION, core::mem::size_of::<BootInfo>() as u32)
    );
}

#[test]
fn every_cpu_of_a_native_instance_enters_with_its_own_slot_stack_and_index() {
    let mut pair = spec("pair", 1);
    pair.cpus = crate::bundle::Cpus::Exactly(alloc::vec![1, 3]);
    let w = World::new(4, vec![pair, spec("one", 2)]);
    let mut sup = w.supervisor(w.sim(), FACTS);
    sup.boot().unwrap();
    assert_eq!(sup.instances[0].state, State::Started, "{:?}", sup.instances[0].reason);
    assert_eq!(sup.instances[0].cpus(), [1, 3]);
    let layout = sup.instances[0].loaded.as_ref().unwrap().layout;
    assert_ne!(layout.slot(0), layout.slot(1));
    assert_ne!(layout.stack_top(0), layout.stack_top(1));
    // Each fake CPU entered with RDI = the boot info and RSI = its index.
    let entered = |id: u32| match &sup.m.cpus[&id].mode {
        Mode::Running(run) => Some((run.boot_info, run.cpu_index)),
        _ => None,
    };
    assert_eq!(entered(1), Some((layout.boot_info, 0)));
    assert_eq!(entered(3), Some((layout.boot_info, 1)));
    // The boot info lists both CPUs, in order.
    let cpus_at = layout.boot_info + bootproto::info_page::CPUS_OFFSET;
    assert_eq!((sup.m.r32(cpus_at), sup.m.r32(cpus_at + 4)), (1, 3));
    // Stopping parks both.
    sup.execute(Command::Stop("pair".into())).unwrap();
    let pages = sup.pages.unwrap();
    assert!(sup.m.parked(1, pages.park_page) && sup.m.parked(3, pages.park_page));
}

#[test]
fn a_linux_instance_gets_its_boot_data_its_boot_cpu_started_and_its_other_cpu_parked() {
    use crate::bundle::{Cpus, File, Protocol, Uart};
    use crate::bzimage;
    let mut linux = spec("linux", 2);
    linux.protocol = Protocol::Linux;
    linux.cpus = Cpus::Exactly(alloc::vec![2, 3]);
    linux.memory = 128 * MIB;
    linux.devices = alloc::vec![Uart::Com2];
    linux.initrd = Some(1);
    linux.cmdline = "quiet".into();
    linux.file = 0;
    let mut hello = spec("hello", 1);
    hello.file = 2;
    let files = alloc::vec![
        File { name: "vmlinuz".into(), data: bzimage::header_only_image(0x200_0000, 0x3000) },
        File { name: "initrd".into(), data: alloc::vec![0x1f; 5000] },
        File { name: "tiny".into(), data: tiny_elf() },
    ];
    let w = World::with_files(4, files, alloc::vec![linux, hello]);
    let mut sup = w.supervisor(w.sim(), FACTS);
    sup.boot().unwrap();
    assert!(sup.m.triple_faults.is_empty(), "{:?}", sup.m.triple_faults);
    let i = &sup.instances[0];
    assert_eq!(i.state, State::Started, "{:?}", i.reason);
    let region = i.region().unwrap();
    assert!(region.start >= 16 * MIB && region.start.is_multiple_of(2 * MIB), "{region:?}");
    let low = i.resources.as_ref().unwrap().low.expect("a low slice for the real-mode trampoline");
    assert!(low.end <= 0x10_0000 && low.len() == crate::linuxboot::LOW_MEMORY_BYTES);
    // Only the boot CPU was started; the other was parked for Linux to start.
    let pages = sup.pages.unwrap();
    assert!(sup.m.parked(3, pages.park_page), "APIC 3 should wait in the parking page");
    assert!(sup.m.running(2));
    assert_eq!(sup.m.quiesced, [0x2F8], "COM2 quiet before Linux gets it");
    // The zero page: the kernel's entry, our e820 (low slice + region), the command line.
    let layout = i.loaded.as_ref().unwrap().layout;
    let zp: alloc::vec::Vec<u8> = (0..4096).map(|k| sup.m.byte(layout.boot_info + k)).collect();
    let e820 = bzimage::e820_of(&zp);
    assert_eq!(e820[0].addr, low.start);
    assert!(
        e820.iter().all(|e| (e.addr >= region.start && e.addr + e.size <= region.end)
            || (e.addr >= low.start && e.addr + e.size <= low.end)),
        "{e820:?}"
    );
    let cmdline_at = bootproto::le::u32_at(&zp, bzimage::offset::CMD_LINE_PTR).unwrap() as u64;
    let cmdline: alloc::vec::Vec<u8> =
        (0..400).map(|k| sup.m.byte(cmdline_at + k)).take_while(|&b| b != 0).collect();
    let cmdline = String::from_utf8(cmdline).unwrap();
    assert!(
        cmdline.starts_with("console=uart8250,io,0x2f8") && cmdline.ends_with(" quiet"),
        "{cmdline}"
    );
    let rsdp = bootproto::le::u64_at(&zp, bzimage::offset::ACPI_RSDP_ADDR).unwrap();
    assert_eq!(sup.m.bytes::<8>(rsdp), *b"RSD PTR ");
    assert_eq!(i.entry, region.start.max(16 * MIB) + 0x200);
    // Stopping: both CPUs parked, COM2 quiesced again, region and low slice scrubbed.
    sup.execute(Command::Stop("linux".into())).unwrap();
    assert_eq!(sup.m.quiesced, [0x2F8, 0x2F8]);
    assert_eq!(sup.m.first_nonzero(low.start, low.len()), Ok(None));
    // And it starts again (the image is copied afresh each time).
    sup.execute(Command::Start("linux".into())).unwrap();
    assert_eq!(sup.instances[0].state, State::Started, "{:?}", sup.instances[0].reason);
}

#[test]
fn a_channel_is_mapped_into_its_two_instances_only_listed_in_their_boot_info_and_scrubbed_when_both_stop(
) {
    use crate::bundle::{Channel, File};
    use crate::pagetable::translate;
    let files = alloc::vec![File { name: "tiny".into(), data: tiny_elf() }];
    let link = Channel { name: "link".into(), between: [1, 0], size: 64 << 10, base: None };
    let w = World::with_channels(
        4,
        files,
        alloc::vec![spec("ping", 1), spec("pong", 2), spec("third", 3)],
        alloc::vec![link],
    );
    let mut sup = w.supervisor(w.sim(), FACTS);
    sup.boot().unwrap();
    let region = sup.channels[0].region.expect("the plan gave the channel memory");
    assert_eq!(region.len(), 64 << 10);
    for inst in &sup.instances {
        let r = inst.region().unwrap();
        assert!(
            region.end <= r.start || region.start >= r.end,
            "the channel overlaps '{}'",
            inst.name
        );
    }
    // Mapped read/write, no-execute, in ping and pong; not at all in third.
    let cr3 = |i: usize| sup.instances[i].loaded.as_ref().unwrap().cr3;
    for i in [0, 1] {
        let (phys, perms) = translate(&sup.m, cr3(i), region.start + 0x1000).expect("mapped");
        assert_eq!(phys, region.start + 0x1000);
        assert!(perms.writable && !perms.executable);
    }
    assert_eq!(translate(&sup.m, cr3(2), region.start), None, "third must not see the channel");
    // The boot info lists it, with the side, the peer and the doorbell vector.
    let info = |i: usize| {
        let l = sup.instances[i].loaded.as_ref().unwrap().layout;
        let at = l.boot_info + bootproto::info_page::CHANNELS_OFFSET;
        let b: alloc::vec::Vec<u8> = (0..96).map(|k| sup.m.byte(at + k)).collect();
        let count = sup
            .m
            .r32(l.boot_info + core::mem::offset_of!(bootproto::BootInfo, channel_count) as u64);
        (count, b)
    };
    let (count, ping) = info(0);
    assert_eq!(count, 1);
    assert_eq!(&ping[..4], b"link");
    assert_eq!(&ping[32..36], b"pong");
    assert_eq!(bootproto::le::u64_at(&ping, 64), Some(region.start));
    assert_eq!(bootproto::le::u32_at(&ping, 80), Some(2), "pong's CPU");
    assert_eq!(bootproto::le::u32_at(&ping, 88), Some(0x40), "doorbell vector of channel 0");
    assert_eq!(bootproto::le::u32_at(&ping, 92), Some(1), "ping is between[1]: side 1");
    assert_eq!(info(2).0, 0, "third has no channels");
    // The header is written, and each side's epoch counts its starts.
    assert_eq!(sup.m.r32(region.start), bootproto::channel::MAGIC);
    assert_eq!(sup.m.r32(region.start + bootproto::channel::offset::epoch(1)), 2);
    sup.execute(Command::Restart("ping".into())).unwrap();
    assert_eq!(
        sup.m.r32(region.start + bootproto::channel::offset::epoch(1)),
        4,
        "ping's second life"
    );
    assert_eq!(sup.m.r32(region.start + bootproto::channel::offset::epoch(0)), 2, "pong untouched");
    // Stopping one side keeps the channel; stopping both scrubs it.
    sup.execute(Command::Stop("ping".into())).unwrap();
    assert!(sup.channels[0].ready && sup.channels[0].scrubs == 0);
    sup.execute(Command::Stop("pong".into())).unwrap();
    assert_eq!((sup.channels[0].ready, sup.channels[0].scrubs), (false, 1));
    assert_eq!(sup.m.first_nonzero(region.start, region.len()), Ok(None));
}
