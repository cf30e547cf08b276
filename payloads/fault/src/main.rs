//! `fault`: misbehaves on purpose, so the manager's supervision can be tested.
//!
//! The first argument word chooses the behaviour; the payload prints what it is about to do,
//! then does it:
//!
//! | args          | what happens                                       | manager should see      |
//! |---------------|----------------------------------------------------|-------------------------|
//! | `page-fault`  | writes to unmapped [`UNMAPPED_ADDR`]               | FAULTED, vector 14, CR2 |
//! | `ud`          | executes `ud2`                                     | FAULTED, vector 6       |
//! | `gp`          | loads from non-canonical [`NON_CANONICAL_ADDR`]    | FAULTED, vector 13      |
//! | `divide`      | `div` by zero in inline assembly                   | FAULTED, vector 0       |
//! | `hang`        | spins forever without heartbeating                 | RUNNING, heartbeat stops|
//! | `panic`       | panics (the SDK's handler prints the message)      | EXITED, code 101        |
//! | `exit=N`      | exits with code `N`                                | EXITED, code N          |
//! | `flood=N`     | prints N numbered lines as fast as it can, then heartbeats | `... bytes dropped`, RUNNING |
//! | `read=ADDR`   | reads the 8 bytes at `ADDR` (hex `0x...`), e.g. another instance's channel | FAULTED, vector 14, CR2 = ADDR, if the page is not its own |
//! | anything else | prints an error                                    | EXITED, code 2          |
//!
//! Each fault is raised in inline assembly, so the compiler can neither remove it nor treat it
//! as undefined behaviour. If an instruction that should fault does not, the payload says so
//! and exits with [`SURVIVED_EXIT_CODE`].
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

use core::arch::asm;

use payload_sdk::{exit, heartbeat, println, Context};

/// Canonical, but outside every region: the instance's page tables do not map it.
const UNMAPPED_ADDR: u64 = 0x7fff_0000_0000;
/// Bit 47 set with bits 63:48 clear: not canonical, so any access raises #GP.
const NON_CANONICAL_ADDR: u64 = 0x0000_8000_0000_0000;
const BAD_ARGS_EXIT_CODE: u32 = 2;
/// The fault did not happen.
const SURVIVED_EXIT_CODE: u32 = 3;

payload_sdk::entry!(main);

fn main(ctx: &Context) -> ! {
    let what = ctx.arg_words().next().unwrap_or("");
    heartbeat();
    if let Some(addr) = what.strip_prefix("read=") {
        let Some(addr) = addr.strip_prefix("0x").and_then(|h| u64::from_str_radix(h, 16).ok())
        else {
            println!("fault: read= wants a hex address such as 0x40000000");
            exit(BAD_ARGS_EXIT_CODE);
        };
        println!("fault: about to read {addr:#x}");
        let value: u64;
        // SAFETY: deliberately probing: a load from an address this instance's page tables may
        // not map; if they do not, #PF is raised before anything is read and the SDK's IDT
        // records it and parks the CPU.
        unsafe {
            asm!(
                "mov {out}, qword ptr [{addr}]",
                addr = in(reg) addr,
                out = out(reg) value,
                options(nostack, readonly),
            );
        }
        println!("fault: read {value:#x} from {addr:#x}: it is mapped here");
        exit(SURVIVED_EXIT_CODE);
    }
    match what {
        "page-fault" => {
            println!("fault: about to write to unmapped address {UNMAPPED_ADDR:#x} (page fault)");
            // SAFETY: deliberately faulting: the store to an unmapped page raises #PF before it
            // writes anything, and the manager's IDT parks the CPU. Nothing in this program's
            // memory is touched.
            unsafe {
                asm!(
                    "mov qword ptr [{addr}], {val}",
                    addr = in(reg) UNMAPPED_ADDR,
                    val = in(reg) 0u64,
                    options(nostack),
                );
            }
        }
        "ud" => {
            println!("fault: about to execute ud2 (invalid opcode)");
            // SAFETY: deliberately faulting: `ud2` raises #UD and has no other effect.
            unsafe { asm!("ud2", options(nomem, nostack)) };
        }
        "gp" => {
            println!(
                "fault: about to load from non-canonical address {NON_CANONICAL_ADDR:#x} \
                 (general protection)"
            );
            // SAFETY: deliberately faulting: a load from a non-canonical address raises #GP
            // before any memory is accessed; the register it would load is an output only.
            unsafe {
                asm!(
                    "mov {out}, qword ptr [{addr}]",
                    addr = in(reg) NON_CANONICAL_ADDR,
                    out = out(reg) _,
                    options(nostack, readonly),
                );
            }
        }
        "divide" => {
            println!("fault: about to divide by zero (divide error)");
            // SAFETY: deliberately faulting: `div` by a zero register raises #DE; RAX and RDX
            // are declared clobbered in case it did not.
            unsafe {
                asm!(
                    "div {zero}",
                    zero = in(reg) 0u64,
                    inout("rax") 1u64 => _,
                    inout("rdx") 0u64 => _,
                    options(nomem, nostack),
                );
            }
        }
        "panic" => {
            println!("fault: about to panic");
            panic!("deliberate panic requested by args \"{}\"", ctx.args());
        }
        "hang" => {
            println!("fault: about to hang (spinning without heartbeat)");
            loop {
                core::hint::spin_loop();
            }
        }
        _ if what.starts_with("flood=") => {
            let lines = what["flood=".len()..].parse::<u32>().unwrap_or(0);
            println!("fault: about to print {lines} lines faster than the manager drains them");
            for i in 0..lines {
                println!("fault: flood line {i:06} .........................................");
            }
            // Give the manager time to drain the ring, so the end of the flood is seen.
            payload_sdk::time::delay_ms(100);
            println!("fault: flood done");
            loop {
                heartbeat();
                payload_sdk::time::delay_ms(10);
            }
        }
        _ => {
            if let Some(code) = what.strip_prefix("exit=") {
                match code.parse::<u32>() {
                    Ok(code) => {
                        println!("fault: about to exit with code {code}");
                        exit(code);
                    }
                    Err(_) => println!("fault: bad exit code \"{code}\" (expected 0..=4294967295)"),
                }
            } else {
                println!(
                    "fault: unknown args \"{}\"; expected page-fault, ud, gp, divide, hang, \
                     panic, flood=N or exit=N",
                    ctx.args()
                );
            }
            exit(BAD_ARGS_EXIT_CODE);
        }
    }
    println!("fault: survived \"{what}\"; the expected exception did not happen");
    exit(SURVIVED_EXIT_CODE)
}
