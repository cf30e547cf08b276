//! What the manager prints about its plan and instances: the plan table, the instance table,
//! one instance's status, and the run report's `plan`, `instances` and `frames` sections.

use alloc::format;
use alloc::string::{String, ToString};

use platform::bundle::Restart;
use platform::lifecycle::State;
use platform::partition::{self, Owner};
use platform::supervisor::{vector_name, Instance, Supervisor};

use crate::println;
use crate::report;

/// Instances listed one per line in the periodic table; past this, a summary line.
const TABLE_ROWS: usize = 32;

fn cpus_text(cpus: &[u32]) -> String {
    match cpus {
        [] => "-".into(),
        [one] => one.to_string(),
        [first, .., last] => format!("{first}..{last}({})", cpus.len()),
    }
}

pub fn print_table(instances: &[Instance]) {
    println!(
        "{:<12} {:>9} {:>12} {:>9} {:<8} {:>9} {:>8}",
        "instance", "apic", "region", "size", "state", "heartbeat", "restarts"
    );
    for i in instances.iter().take(TABLE_ROWS) {
        let (base, size) = i.region().map_or(("-".to_string(), "-".to_string()), |r| {
            (format!("{:#x}", r.start), format!("{} KiB", r.len() >> 10))
        });
        println!(
            "{:<12} {:>9} {:>12} {:>9} {:<8} {:>9} {:>8}",
            i.name,
            cpus_text(i.cpus()),
            base,
            size,
            i.state.name(),
            i.heartbeat,
            i.restarts
        );
    }
    if instances.len() > TABLE_ROWS {
        let running = instances.iter().filter(|i| i.state == State::Running).count();
        println!(
            "... and {} more ({running} of all {} running; `list` shows every one)",
            instances.len() - TABLE_ROWS,
            instances.len()
        );
    }
}

/// `status NAME`: the instance, then its channels with what each side says it sent and got.
pub fn print_status_with_channels<M: platform::supervisor::Machine>(
    sup: &Supervisor<'_, M>,
    idx: usize,
) {
    let inst = &sup.instances[idx];
    print_status(inst);
    println!("  image: {}", sup.image_text(inst.image, idx));
    if let Some(id) = inst.next_image {
        let next = platform::supervisor::ImageSource::Stored(id);
        println!("  next image (for 'swap {}'): {}", inst.name, sup.image_text(next, idx));
    }
    if let Some(prev) = inst.previous_image {
        println!("  previous image: {}", sup.image_text(prev, idx));
    }
    if inst.swaps > 0 {
        let last = inst.swap_us.iter().last().copied().unwrap_or(0);
        println!("  swaps: {}, last took {} ms", inst.swaps, last / 1000);
    }
    for (c, side) in sup.channels_of(idx) {
        let ch = &sup.channels[c];
        let peer = ch.spec.between[1 - side] as usize;
        let peer_name = sup.instances.get(peer).map_or("?", |p| p.name.as_str());
        let counts = sup.channel_counts(c);
        match ch.region {
            Some(r) => println!(
                "  channel '{}' to '{peer_name}': {:#x}..{:#x}, sent {}, received {} (peer: sent {}, received {}), doorbell vector {:#x}",
                ch.spec.name,
                r.start,
                r.end,
                counts[side].sent,
                counts[side].received,
                counts[1 - side].sent,
                counts[1 - side].received,
                u32::from(bootproto::channel::DOORBELL_BASE) + c as u32
            ),
            None => println!(
                "  channel '{}' to '{peer_name}': none ({})",
                ch.spec.name,
                ch.refused.as_deref().unwrap_or("not placed")
            ),
        }
    }
}

/// The shell's `images`: the store, each kept image and who runs it.
pub fn print_images<M: platform::supervisor::Machine>(sup: &Supervisor<'_, M>) {
    let Some(store) = sup.store() else {
        println!(
            "no image store: {}",
            sup.store_refused().unwrap_or("[settings] image_store = 0 in the manifest")
        );
        return;
    };
    println!(
        "image store {:#x}..{:#x}: {} KiB of {} KiB used, largest free run {} KiB",
        store.range.start,
        store.range.end,
        store.used() >> 10,
        store.capacity() >> 10,
        store.largest_free() >> 10
    );
    if let Some((name, got, of)) = sup.transfer_progress() {
        println!("  receiving an image for '{name}': {got} of {of} chunks");
    }
    for im in store.images.iter().filter(|im| im.kept_us != 0) {
        let src = platform::supervisor::ImageSource::Stored(im.id);
        let role = sup.instances.iter().find(|x| x.name == im.instance).map_or("unused", |x| {
            if x.image == src {
                "running"
            } else if x.next_image == Some(im.id) {
                "next"
            } else {
                "previous"
            }
        });
        println!(
            "  {:<12} {:<8} {} bytes, sha256 {}, kept at {}.{:03} s",
            im.instance,
            role,
            im.size,
            platform::transfer::hex(&im.sha256),
            im.kept_us / 1_000_000,
            im.kept_us / 1000 % 1000
        );
    }
}

pub fn print_status(i: &Instance) {
    println!("instance '{}': {}", i.name, i.state);
    if let Some(r) = &i.reason {
        println!("  reason: {r}");
    }
    match i.region() {
        Some(r) => println!(
            "  APIC {}, region {:#x}..{:#x}, entry {:#x}",
            cpus_text(i.cpus()),
            r.start,
            r.end,
            i.entry
        ),
        None => println!("  no CPU or memory (refused at boot)"),
    }
    println!(
        "  heartbeat {}, result {}, restarts {} ({} policy, max {}), heartbeat timeout {} ms",
        i.heartbeat,
        i.result,
        i.restarts,
        match i.spec.restart {
            Restart::Never => "never",
            Restart::OnFailure => "on-failure",
        },
        i.spec.max_restarts,
        i.spec.heartbeat_timeout_ms
    );
    if let Some((_, delay)) = i.next_restart {
        println!("  restart pending (back-off {delay} ms)");
    }
    if i.state == State::Exited {
        println!("  exit code {}", i.exit_code);
    }
    if let Some(f) = i.fault {
        println!(
            "  fault: {} (vector {}) on APIC {}, error code {:#x}, RIP {:#x}, CR2 {:#x}, RSP {:#x}",
            vector_name(f.vector),
            f.vector,
            f.apic_id,
            f.error_code,
            f.rip,
            f.cr2,
            f.rsp
        );
    }
    println!(
        "  console: {} bytes, {} lines, {} bytes dropped",
        i.console.bytes, i.console.lines, i.console.dropped
    );
    let mut t = String::from("  transitions:");
    for (us, s) in i.transitions.iter() {
        t.push_str(&format!(" {}.{:03}s {s};", us / 1_000_000, (us / 1000) % 1000));
    }
    println!("{t}");
}

pub fn print_plan(plan: &partition::Plan) {
    println!("{:<34} {:>18} {:>18} {:>12}", "plan: owner", "start", "end", "size");
    // Hundreds of instance regions would bury the log: the first ones, then a count.
    for (n, c) in plan.regions.iter().enumerate() {
        if n == 3 * TABLE_ROWS {
            println!(
                "plan: ... {} more regions (all in the report's plan section)",
                plan.regions.len() - n
            );
            break;
        }
        println!(
            "{:<34} {:>#18x} {:>#18x} {:>8} KiB",
            owner_text(&c.owner),
            c.range.start,
            c.range.end,
            c.range.len() >> 10
        );
    }
    for r in &plan.refused {
        println!("plan: refused: {r}");
    }
    let mut items = report::Array::new();
    for c in &plan.regions {
        let mut l = report::Line::object();
        l.str("owner", &owner_text(&c.owner)).num("base", c.range.start).num("size", c.range.len());
        items.push(&l.finish());
    }
    report::Line::new(bootproto::report::section::PLAN).raw("items", &items.finish()).emit();
}

fn owner_text(o: &Owner) -> String {
    match o {
        Owner::Manager(label) => format!("manager: {label}"),
        Owner::StartPage => "AP start page".into(),
        Owner::ParkPage => "AP parking page".into(),
        Owner::CpuTable => "CPU table".into(),
        Owner::PageTablePool => "page-table pool".into(),
        Owner::Instance(n) => format!("instance: {n}"),
        Owner::LowMemory(n) => format!("low memory: {n}"),
        Owner::Channel(n) => format!("channel: {n}"),
        Owner::ImageStore => "image store".into(),
    }
}

pub fn emit_report(sup: &Supervisor<'_, crate::machine::Bsp>) {
    let mut items = report::Array::new();
    for (k, i) in sup.instances.iter().enumerate() {
        let mut l = report::Line::object();
        let image = sup.image_facts(k);
        l.str("image", image.source)
            .num("image_size", image.size)
            .str("image_hash", &image.hash)
            .num("image_loaded_us", image.loaded_us)
            .num("swaps", u64::from(i.swaps))
            .raw("swap_us", &report::numbers(i.swap_us.iter().copied()));
        l.str("name", &i.name)
            .str("state", i.state.name())
            .num("heartbeat", i.heartbeat)
            .num("result", i.result)
            .num("entry", i.entry)
            .num("restarts", u64::from(i.restarts))
            .num("console_bytes", i.console.bytes)
            .num("console_lines", i.console.lines)
            .num("console_dropped", i.console.dropped)
            .bool("quarantined", i.quarantined);
        if let Some(&a) = i.cpus().first() {
            l.num("apic_id", u64::from(a));
        }
        l.raw("cpus", &report::numbers(i.cpus().iter().map(|&c| u64::from(c))));
        if let Some(r) = i.region() {
            l.num("region_base", r.start).num("region_size", r.len());
        }
        if let Some(c) = i.checkin_us {
            l.num("checkin_us", c);
        }
        if let Some(r) = &i.reason {
            l.str("reason", &format!("{r}"));
        }
        if i.state == State::Exited {
            l.num("exit_code", u64::from(i.exit_code));
        }
        if let Some((_, delay)) = i.next_restart {
            l.num("restart_backoff_ms", delay);
        }
        if let Some(f) = i.fault {
            let mut fl = report::Line::object();
            fl.num("vector", f.vector)
                .str("name", vector_name(f.vector))
                .num("error_code", f.error_code)
                .num("rip", f.rip)
                .num("cr2", f.cr2)
                .num("rsp", f.rsp)
                .num("apic_id", u64::from(f.apic_id));
            l.raw("fault", &fl.finish());
        }
        let mut t = report::Array::new();
        for (us, s) in i.transitions.iter() {
            let mut tl = report::Line::object();
            tl.num("t_us", *us).str("state", s.name());
            t.push(&tl.finish());
        }
        l.raw("transitions", &t.finish());
        l.num("transitions_dropped", i.transitions.dropped());
        l.raw("stop_us", &report::numbers(i.stop_us.iter().copied()));
        l.raw("start_us", &report::numbers(i.start_us.iter().copied()));
        l.num("page_tables", i.loaded.as_ref().map_or(0, |l| l.tables.len() as u64));
        items.push(&l.finish());
    }
    report::Line::new(bootproto::report::section::INSTANCES).raw("items", &items.finish()).emit();
    let mut ipis = report::Array::new();
    for (apic_id, c) in &sup.m.lapic.sent {
        let mut l = report::Line::object();
        l.num("apic_id", u64::from(*apic_id))
            .num("init", u64::from(c.init))
            .num("sipi", u64::from(c.sipi));
        ipis.push(&l.finish());
    }
    report::Line::new(bootproto::report::section::IPIS).raw("items", &ipis.finish()).emit();
    if let Some(t) = &sup.boot_timeline {
        report::Line::new(bootproto::report::section::TIMELINE)
            .num("instances", t.instances as u64)
            .num("cpus", t.cpus as u64)
            .num("load_start_us", t.load_start_us)
            .num("load_end_us", t.load_end_us)
            .num("load_bytes", t.load_bytes)
            .num("ipi_start_us", t.ipi_start_us)
            .num("ipi_end_us", t.ipi_end_us)
            .num("second_sipis", t.second_sipis as u64)
            .num("last_checkin_us", t.last_checkin_us)
            .num("checkins_done_us", t.checkins_done_us)
            .emit();
    }
    let mut chans = report::Array::new();
    for (c, ch) in sup.channels.iter().enumerate() {
        let mut l = report::Line::object();
        let names: alloc::vec::Vec<String> = ch
            .spec
            .between
            .iter()
            .map(|&b| sup.instances.get(b as usize).map_or_else(String::new, |i| i.name.clone()))
            .collect();
        l.str("name", &ch.spec.name).str("side0", &names[0]).str("side1", &names[1]);
        if let Some(r) = ch.region {
            l.num("base", r.start).num("size", r.len());
        }
        if let Some(why) = &ch.refused {
            l.str("refused", why);
        }
        let counts = sup.channel_counts(c);
        for (s, k) in counts.iter().enumerate() {
            let mut side = report::Line::object();
            side.num("epoch", u64::from(k.epoch)).num("sent", k.sent).num("received", k.received);
            l.raw(if s == 0 { "counts0" } else { "counts1" }, &side.finish());
        }
        l.num("scrubs", u64::from(ch.scrubs)).bool("ready", ch.ready);
        chans.push(&l.finish());
    }
    report::Line::new(bootproto::report::section::CHANNELS).raw("items", &chans.finish()).emit();
    let (draws, draw_us) = crate::fbcon::draw_stats();
    let serial = crate::serial::stats();
    report::Line::new(bootproto::report::section::CONSOLE)
        .num("serial_sent", serial.sent)
        .num("serial_send_us", serial.send_us)
        .num("serial_discarded", serial.discarded)
        .num("serial_peak_queued", serial.peak_queued)
        .num("screen_draws", draws)
        .num("screen_draw_us", draw_us)
        .emit();
    let manager = crate::memory::FRAMES.lock().as_ref().map_or(0, |f| f.free_frames());
    report::Line::new(bootproto::report::section::FRAMES)
        .num("manager_free", manager)
        .num("page_table_pool_free", sup.pool_free_frames())
        .num("heap_used", crate::heap::used_bytes() as u64)
        .emit();
}
