//! What the supervisor prints: the plan, the instance table, one instance's status, and the
//! report's `plan` and `instances` sections.

use alloc::format;
use alloc::string::{String, ToString};

use platform::lifecycle::State;
use platform::partition::{self, Owner};

use super::Instance;
use crate::println;
use crate::report;

/// Exception names (SDM Vol. 3A, "Exception and Interrupt Reference").
pub fn vector_name(v: u64) -> &'static str {
    match v {
        0 => "divide error (#DE)",
        1 => "debug (#DB)",
        2 => "NMI",
        3 => "breakpoint (#BP)",
        4 => "overflow (#OF)",
        5 => "BOUND range exceeded (#BR)",
        6 => "invalid opcode (#UD)",
        7 => "device not available (#NM)",
        8 => "double fault (#DF)",
        10 => "invalid TSS (#TS)",
        11 => "segment not present (#NP)",
        12 => "stack fault (#SS)",
        13 => "general protection (#GP)",
        14 => "page fault (#PF)",
        16 => "x87 floating-point error (#MF)",
        17 => "alignment check (#AC)",
        18 => "machine check (#MC)",
        19 => "SIMD floating-point (#XM)",
        20 => "virtualization exception (#VE)",
        21 => "control protection (#CP)",
        _ => "exception",
    }
}

pub fn print_table(instances: &[Instance]) {
    println!(
        "{:<12} {:>5} {:>12} {:>9} {:<8} {:>9} {:>8}",
        "instance", "apic", "region", "size", "state", "heartbeat", "restarts"
    );
    for i in instances {
        let apic = i.apic_id.map_or("-".to_string(), |a| a.to_string());
        let (base, size) = i.region.map_or(("-".to_string(), "-".to_string()), |r| {
            (format!("{:#x}", r.start), format!("{} KiB", r.len() >> 10))
        });
        println!(
            "{:<12} {:>5} {:>12} {:>9} {:<8} {:>9} {:>8}",
            i.name,
            apic,
            base,
            size,
            i.state.name(),
            i.heartbeat,
            i.restarts
        );
    }
}

pub fn print_status(i: &Instance) {
    println!("instance '{}': {}", i.name, i.state);
    if !i.reason.is_empty() {
        println!("  reason: {}", i.reason);
    }
    match (i.apic_id, i.region) {
        (Some(a), Some(r)) => {
            println!("  APIC {a}, region {:#x}..{:#x}, entry {:#x}", r.start, r.end, i.entry)
        }
        _ => println!("  no CPU or memory (refused at boot)"),
    }
    println!(
        "  heartbeat {}, result {}, restarts {} ({} policy, max {}), heartbeat timeout {} ms",
        i.heartbeat,
        i.result,
        i.restarts,
        match i.spec.restart {
            platform::bundle::Restart::Never => "never",
            platform::bundle::Restart::OnFailure => "on-failure",
        },
        i.spec.max_restarts,
        i.spec.heartbeat_timeout_ms
    );
    if i.state == State::Exited {
        println!("  exit code {}", i.exit_code);
    }
    if let Some(f) = i.fault {
        println!(
            "  fault: {} (vector {}), error code {:#x}, RIP {:#x}, CR2 {:#x}, RSP {:#x}",
            vector_name(f.vector),
            f.vector,
            f.error_code,
            f.rip,
            f.cr2,
            f.rsp
        );
    }
    println!(
        "  console: {} bytes, {} lines, {} bytes dropped{}",
        i.console.bytes,
        i.console.lines,
        i.console.dropped,
        i.console.corrupt.as_deref().map_or(String::new(), |c| format!(", ring reset: {c}"))
    );
    let mut t = String::from("  transitions:");
    for (us, s) in &i.transitions {
        t.push_str(&format!(" {}.{:03}s {s};", us / 1_000_000, (us / 1000) % 1000));
    }
    println!("{t}");
}

pub fn print_plan(plan: &partition::Plan) {
    println!("{:<34} {:>18} {:>18} {:>12}", "plan: owner", "start", "end", "size");
    for c in &plan.regions {
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
    let mut items = String::from("[");
    for (n, c) in plan.regions.iter().enumerate() {
        if n > 0 {
            items.push(',');
        }
        let mut l = report::Line::object();
        l.str("owner", &owner_text(&c.owner)).num("base", c.range.start).num("size", c.range.len());
        items.push_str(&l.finish());
    }
    items.push(']');
    report::Line::new("plan").raw("items", &items).emit();
}

fn owner_text(o: &Owner) -> String {
    match o {
        Owner::Manager(label) => format!("manager: {label}"),
        Owner::Trampoline => "trampoline pages".into(),
        Owner::PageTablePool => "page-table pool".into(),
        Owner::Instance(n) => format!("instance: {n}"),
    }
}

pub fn emit_report(instances: &[Instance], pool_free: u64) {
    let mut items = String::from("[");
    for (n, i) in instances.iter().enumerate() {
        if n > 0 {
            items.push(',');
        }
        let mut l = report::Line::object();
        l.str("name", &i.name)
            .str("state", i.state.name())
            .num("heartbeat", i.heartbeat)
            .num("result", i.result)
            .num("entry", i.entry)
            .num("restarts", i.restarts as u64)
            .num("console_bytes", i.console.bytes)
            .num("console_dropped", i.console.dropped);
        if let Some(a) = i.apic_id {
            l.num("apic_id", a as u64);
        }
        if let Some(r) = i.region {
            l.num("region_base", r.start).num("region_size", r.len());
        }
        if let Some(c) = i.checkin_us {
            l.num("checkin_us", c);
        }
        if !i.reason.is_empty() {
            l.str("reason", &i.reason);
        }
        if i.state == State::Exited {
            l.num("exit_code", i.exit_code as u64);
        }
        if let Some(f) = i.fault {
            let mut fl = report::Line::object();
            fl.num("vector", f.vector)
                .str("name", vector_name(f.vector))
                .num("error_code", f.error_code)
                .num("rip", f.rip)
                .num("cr2", f.cr2)
                .num("rsp", f.rsp);
            l.raw("fault", &fl.finish());
        }
        let mut t = String::from("[");
        for (k, (us, s)) in i.transitions.iter().enumerate() {
            if k > 0 {
                t.push(',');
            }
            let mut tl = report::Line::object();
            tl.num("t_us", *us).str("state", s.name());
            t.push_str(&tl.finish());
        }
        t.push(']');
        l.raw("transitions", &t);
        l.raw("stop_us", &json_list(&i.stop_us));
        l.raw("start_us", &json_list(&i.start_us));
        l.num("page_tables", i.tables.len() as u64);
        items.push_str(&l.finish());
    }
    items.push(']');
    report::Line::new("instances").raw("items", &items).emit();
    let manager = crate::memory::FRAMES.lock().as_ref().map_or(0, |f| f.free_frames());
    report::Line::new("frames")
        .num("manager_free", manager)
        .num("page_table_pool_free", pool_free)
        .num("heap_used", crate::heap::used_bytes() as u64)
        .emit();
}

fn json_list(v: &[u64]) -> String {
    let mut s = String::from("[");
    for (k, x) in v.iter().enumerate() {
        if k > 0 {
            s.push(',');
        }
        s.push_str(&x.to_string());
    }
    s.push(']');
    s
}
