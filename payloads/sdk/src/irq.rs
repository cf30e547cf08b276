//! The SDK's interrupt table, so a payload can wait by halting instead of spinning.
//!
//! Under QEMU's TCG every virtual CPU is a host thread: a payload that spins while it waits
//! takes host time from every other CPU of the machine (the manager's included); on real
//! hardware it burns power. So the SDK installs an IDT of its own (`init`, called by `_start`
//! before `main`): the 32 exception vectors record the fault in the status block and park the
//! CPU (as the manager's early IDT did, on the slot's exception stack, IST1), the local APIC
//! timer ([`TIMER_VECTOR`]) wakes a halted CPU, and the spurious vector is ignored. Waits
//! ([`halt_until`], used by [`crate::time`]) arm the timer for the time left and execute
//! `sti; hlt`; the payload otherwise runs with interrupts off, as the protocol hands it over.
//!
//! Without a usable local APIC (no page mapped and no x2APIC) or a timer rate, waits spin.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bootproto::state;

use crate::lapic;

/// The vector the local APIC timer interrupts on.
pub const TIMER_VECTOR: u8 = 0x20;
/// The spurious-interrupt vector (SDM Vol. 3A, "Spurious Interrupt"): no EOI.
pub const SPURIOUS_VECTOR: u8 = 0xFF;
/// Waits shorter than this spin: arming the timer and halting costs more.
const MIN_HALT_US: u64 = 20;

/// 256 gates of 16 bytes (SDM Vol. 3A, "64-Bit Mode IDT").
#[repr(C, align(16))]
struct Idt([AtomicU64; 512]);

static IDT: Idt = Idt([const { AtomicU64::new(0) }; 512]);
static READY: AtomicBool = AtomicBool::new(false);
static TIMER_HZ: AtomicU64 = AtomicU64::new(0);

/// The frame the CPU pushes (SDM Vol. 3A, "Exception and Interrupt Handling in 64-bit Mode").
#[repr(C)]
pub struct Frame {
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

fn set_gate(vector: u8, handler: u64, ist: u8) {
    let cs: u16;
    // SAFETY: reading CS has no side effects.
    unsafe {
        core::arch::asm!("mov {:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags))
    };
    // Present, DPL 0, 64-bit interrupt gate (type 0xE): SDM Vol. 3A, "IDT Descriptors".
    let low = (handler & 0xFFFF)
        | (u64::from(cs) << 16)
        | (u64::from(ist & 7) << 32)
        | (0x8E << 40)
        | ((handler >> 16) & 0xFFFF) << 48;
    let v = usize::from(vector);
    IDT.0[2 * v].store(low, Ordering::Relaxed);
    IDT.0[2 * v + 1].store(handler >> 32, Ordering::Relaxed);
}

/// Installs the SDK's IDT on this CPU and, if the local APIC is reachable, enables its timer.
/// `lapic_base` and `timer_hz` come from the boot info (0: unknown).
pub(crate) fn init(lapic_base: u64, timer_hz: u64) {
    if !READY.load(Ordering::Acquire) {
        for (v, h) in fault_handlers().into_iter().enumerate() {
            set_gate(v as u8, h, 1);
        }
        set_gate(TIMER_VECTOR, timer as extern "x86-interrupt" fn(Frame) as usize as u64, 0);
        // Channel doorbells: an interrupt that only wakes the CPU (`crate::channel`).
        let first = bootproto::channel::DOORBELL_BASE;
        for v in first..first + bootproto::channel::MAX_CHANNELS as u8 {
            set_gate(v, timer as extern "x86-interrupt" fn(Frame) as usize as u64, 0);
        }
        set_gate(SPURIOUS_VECTOR, spurious as extern "x86-interrupt" fn(Frame) as usize as u64, 0);
    }
    #[repr(C, packed)]
    struct Pointer {
        limit: u16,
        base: u64,
    }
    let p = Pointer { limit: (512 * 8 - 1) as u16, base: IDT.0.as_ptr() as u64 };
    // SAFETY: the IDT is static, fully initialised above, and its gates point at handlers of
    // this image; interrupts stay off until a wait enables them.
    unsafe {
        core::arch::asm!("lidt [{}]", in(reg) &p, options(readonly, nostack, preserves_flags))
    };
    if let Some(mode) = lapic::detect(lapic_base) {
        lapic::set_mode(mode);
        lapic::enable(SPURIOUS_VECTOR, TIMER_VECTOR);
        TIMER_HZ.store(timer_hz, Ordering::Relaxed);
    }
    READY.store(true, Ordering::Release);
}

/// Whether waits halt (the timer is usable).
pub fn halting() -> bool {
    READY.load(Ordering::Acquire) && lapic::ready() && TIMER_HZ.load(Ordering::Relaxed) != 0
}

/// Waits until the TSC reaches `deadline`, halting between timer interrupts when it can.
pub fn halt_until(deadline: u64) {
    let hz = TIMER_HZ.load(Ordering::Relaxed);
    loop {
        let now = crate::time::now_ticks();
        if now >= deadline {
            break;
        }
        let left_us = crate::time::us_between(now, deadline);
        if !halting() || left_us < MIN_HALT_US {
            while crate::time::now_ticks() < deadline {
                core::hint::spin_loop();
            }
            break;
        }
        let count = (u128::from(left_us) * u128::from(hz) / 1_000_000).clamp(1, u32::MAX as u128);
        lapic::arm_timer(count as u32);
        // SAFETY: `sti; hlt` enables interrupts for the halt only (the interrupt shadow of
        // `sti` covers `hlt`, so a timer that already fired still wakes it); the SDK's IDT
        // handles every vector that can arrive; `cli` restores the protocol's IF = 0.
        unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
    }
    if halting() {
        lapic::arm_timer(0);
    }
}

/// Halts once: until any interrupt (a channel's doorbell, for instance) or `deadline` (TSC
/// ticks), whichever comes first. Spins to the deadline if waits cannot halt.
pub fn halt_once_until(deadline: u64) {
    let now = crate::time::now_ticks();
    if now >= deadline {
        return;
    }
    let left_us = crate::time::us_between(now, deadline);
    if !halting() || left_us < MIN_HALT_US {
        while crate::time::now_ticks() < deadline {
            core::hint::spin_loop();
        }
        return;
    }
    let hz = TIMER_HZ.load(Ordering::Relaxed);
    let count = (u128::from(left_us) * u128::from(hz) / 1_000_000).clamp(1, u32::MAX as u128);
    lapic::arm_timer(count as u32);
    // SAFETY: as in `halt_until`: interrupts are enabled for the halt only.
    unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
    lapic::arm_timer(0);
}

extern "x86-interrupt" fn timer(_frame: Frame) {
    lapic::eoi();
}

extern "x86-interrupt" fn spurious(_frame: Frame) {}

/// Records an exception in the status block and parks this CPU (what the manager's early IDT
/// did before the SDK replaced it).
fn fault(vector: u64, error_code: u64, frame: &Frame) -> ! {
    if let Some(s) = crate::status_block() {
        let cr2: u64;
        // SAFETY: reading CR2 has no side effects.
        unsafe {
            core::arch::asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack, preserves_flags))
        };
        // SAFETY: the fault fields are plain fields of the validated status block; only this
        // CPU writes them, before it publishes `state` below with release.
        let block = (s as *const bootproto::StatusBlock).cast_mut();
        // SAFETY: as above.
        unsafe { (*block).fault_vector = vector };
        // SAFETY: as above.
        unsafe { (*block).fault_error_code = error_code };
        // SAFETY: as above.
        unsafe { (*block).fault_rip = frame.rip };
        // SAFETY: as above.
        unsafe { (*block).fault_rsp = frame.rsp };
        // SAFETY: as above.
        unsafe { (*block).fault_cr2 = cr2 };
        // SAFETY: as above.
        unsafe { (*block).fault_apic_id = crate::cpu_apic_id() };
        s.state.store(state::FAULTED, Ordering::Release);
    }
    crate::park()
}

macro_rules! handlers {
    ($($v:literal $kind:ident),* $(,)?) => {
        /// The addresses of the 32 exception handlers, by vector.
        fn fault_handlers() -> [u64; 32] {
            [$(handlers!(@fn $v $kind) as u64),*]
        }
    };
    (@fn $v:literal plain) => {{
        extern "x86-interrupt" fn h(frame: Frame) -> ! {
            fault($v, 0, &frame)
        }
        h as extern "x86-interrupt" fn(Frame) -> ! as usize
    }};
    (@fn $v:literal code) => {{
        extern "x86-interrupt" fn h(frame: Frame, code: u64) -> ! {
            fault($v, code, &frame)
        }
        h as extern "x86-interrupt" fn(Frame, u64) -> ! as usize
    }};
}

// Vectors that push an error code: SDM Vol. 3A, "Exception and Interrupt Reference".
handlers!(
    0 plain, 1 plain, 2 plain, 3 plain, 4 plain, 5 plain, 6 plain, 7 plain,
    8 code, 9 plain, 10 code, 11 code, 12 code, 13 code, 14 code, 15 plain,
    16 plain, 17 code, 18 plain, 19 plain, 20 plain, 21 code, 22 plain, 23 plain,
    24 plain, 25 plain, 26 plain, 27 plain, 28 plain, 29 code, 30 code, 31 plain,
);
