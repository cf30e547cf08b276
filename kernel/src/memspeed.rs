//! Bulk memory primitives, and the boot-time measurement that picks the fastest.
//!
//! Loading and scrubbing instances is mostly filling and copying memory, and the best way to
//! do it differs by machine: `rep stosb`/`rep movsb` are fastest on CPUs with ERMSB (Intel
//! SDM Vol. 1, "Fast-String Operation"), wide SSE stores elsewhere, and under QEMU's TCG the
//! string instructions are emulated one element at a time (an earlier measurement here found
//! a 37x difference). So the manager times each candidate on a scratch buffer at boot
//! ([`measure`]), uses the fastest from then on, and reports the figures.
//!
//! The SSE variants use `xmm0`..`xmm3` without telling the compiler: code for
//! `x86_64-unknown-none` never uses SSE registers (the target is soft-float), so nothing the
//! compiler generates can hold a value there. [`init`] enables SSE in CR0/CR4 first (Intel SDM
//! Vol. 3A, "Initialization of the SSE Extensions").

use core::arch::asm;
use core::sync::atomic::{AtomicU8, Ordering};

use crate::time;

/// The candidates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Method {
    /// `rep stosb` / `rep movsb`.
    RepByte = 0,
    /// `rep stosq` / `rep movsq` for the bulk, bytes for the ends.
    RepQword = 1,
    /// 64-byte unrolled SSE stores (`movdqu`), bytes for the ends.
    Sse = 2,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::RepByte => "rep-byte",
            Method::RepQword => "rep-qword",
            Method::Sse => "sse",
        }
    }

    fn from_u8(v: u8) -> Method {
        match v {
            1 => Method::RepQword,
            2 => Method::Sse,
            _ => Method::RepByte,
        }
    }
}

static FILL: AtomicU8 = AtomicU8::new(Method::RepQword as u8);
static COPY: AtomicU8 = AtomicU8::new(Method::RepQword as u8);

/// CR4.OSFXSR (bit 9), CR4.OSXMMEXCPT (bit 10); CR0.MP (bit 1) set, CR0.EM (bit 2) clear.
const CR4_SSE: u64 = (1 << 9) | (1 << 10);
const CR0_MP: u64 = 1 << 1;
const CR0_EM: u64 = 1 << 2;

/// Enables SSE on the BSP (it is present on every x86_64 CPU).
pub fn init() {
    let mut cr0: u64;
    // SAFETY: reading CR0 has no side effects.
    unsafe { asm!("mov {}, cr0", out(reg) cr0, options(nomem, nostack, preserves_flags)) };
    cr0 = (cr0 | CR0_MP) & !CR0_EM;
    // SAFETY: setting MP and clearing EM only changes how x87/SSE instructions trap.
    unsafe { asm!("mov cr0, {}", in(reg) cr0, options(nomem, nostack, preserves_flags)) };
    let mut cr4: u64;
    // SAFETY: reading CR4 has no side effects.
    unsafe { asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack, preserves_flags)) };
    cr4 |= CR4_SSE;
    // SAFETY: OSFXSR/OSXMMEXCPT enable SSE instructions and their exceptions; SSE exists on
    // every x86_64 CPU.
    unsafe { asm!("mov cr4, {}", in(reg) cr4, options(nomem, nostack, preserves_flags)) };
}

/// Sets `len` bytes at `dst` to `byte` with `method`.
///
/// # Safety
/// `dst..dst + len` must be valid for writes.
unsafe fn fill_with(method: Method, dst: *mut u8, byte: u8, len: usize) {
    match method {
        Method::RepByte => {
            // SAFETY: the caller guarantees the destination; `rep stosb` writes exactly `len`
            // bytes at `dst` (DF is clear in the manager).
            unsafe {
                asm!("rep stosb", inout("rcx") len => _, inout("rdi") dst => _, in("al") byte,
                    options(nostack, preserves_flags))
            };
        }
        Method::RepQword => {
            let head = dst.align_offset(8).min(len);
            let words = (len - head) / 8;
            let tail = len - head - words * 8;
            let pattern = u64::from_ne_bytes([byte; 8]);
            // SAFETY: head, words and tail partition `dst..dst + len`, which the caller
            // guarantees; DF is clear.
            unsafe {
                asm!(
                    "rep stosb",
                    "mov rcx, {words}",
                    "rep stosq",
                    "mov rcx, {tail}",
                    "rep stosb",
                    words = in(reg) words,
                    tail = in(reg) tail,
                    inout("rcx") head => _,
                    inout("rdi") dst => _,
                    in("rax") pattern,
                    options(nostack, preserves_flags)
                )
            };
        }
        Method::Sse => {
            let head = dst.align_offset(16).min(len);
            let blocks = (len - head) / 64;
            let tail = len - head - blocks * 64;
            let pattern = u64::from_ne_bytes([byte; 8]);
            // SAFETY: head, blocks and tail partition the caller's range; the stores are
            // aligned (after the head); xmm0 is not used by compiler-generated code on this
            // target (see the module docs); SSE was enabled by `init`.
            unsafe {
                asm!(
                    "rep stosb",
                    "movq xmm0, rax",
                    "punpcklqdq xmm0, xmm0",
                    "test {blocks}, {blocks}",
                    "jz 3f",
                    "2:",
                    "movdqa [rdi], xmm0",
                    "movdqa [rdi + 16], xmm0",
                    "movdqa [rdi + 32], xmm0",
                    "movdqa [rdi + 48], xmm0",
                    "add rdi, 64",
                    "dec {blocks}",
                    "jnz 2b",
                    "3:",
                    "mov rcx, {tail}",
                    "rep stosb",
                    blocks = inout(reg) blocks => _,
                    tail = in(reg) tail,
                    inout("rcx") head => _,
                    inout("rdi") dst => _,
                    in("rax") pattern,
                    options(nostack)
                )
            };
        }
    }
}

/// Copies `len` bytes from `src` to `dst` with `method`.
///
/// # Safety
/// `src..src + len` valid for reads, `dst..dst + len` for writes, not overlapping.
unsafe fn copy_with(method: Method, dst: *mut u8, src: *const u8, len: usize) {
    match method {
        Method::RepByte => {
            // SAFETY: the caller guarantees both ranges; `rep movsb` moves exactly `len` bytes
            // forwards (DF clear).
            unsafe {
                asm!("rep movsb", inout("rcx") len => _, inout("rdi") dst => _,
                    inout("rsi") src => _, options(nostack, preserves_flags))
            };
        }
        Method::RepQword => {
            let words = len / 8;
            let tail = len - words * 8;
            // SAFETY: words and tail partition the caller's ranges; DF clear.
            unsafe {
                asm!(
                    "rep movsq",
                    "mov rcx, {tail}",
                    "rep movsb",
                    tail = in(reg) tail,
                    inout("rcx") words => _,
                    inout("rdi") dst => _,
                    inout("rsi") src => _,
                    options(nostack, preserves_flags)
                )
            };
        }
        Method::Sse => {
            let blocks = len / 64;
            let tail = len - blocks * 64;
            // SAFETY: blocks and tail partition the caller's ranges; unaligned loads and
            // stores; xmm0-3 are not used by compiler-generated code on this target; SSE was
            // enabled by `init`.
            unsafe {
                asm!(
                    "test {blocks}, {blocks}",
                    "jz 3f",
                    "2:",
                    "movdqu xmm0, [rsi]",
                    "movdqu xmm1, [rsi + 16]",
                    "movdqu xmm2, [rsi + 32]",
                    "movdqu xmm3, [rsi + 48]",
                    "movdqu [rdi], xmm0",
                    "movdqu [rdi + 16], xmm1",
                    "movdqu [rdi + 32], xmm2",
                    "movdqu [rdi + 48], xmm3",
                    "add rsi, 64",
                    "add rdi, 64",
                    "dec {blocks}",
                    "jnz 2b",
                    "3:",
                    "mov rcx, {tail}",
                    "rep movsb",
                    blocks = inout(reg) blocks => _,
                    tail = in(reg) tail,
                    out("rcx") _,
                    inout("rdi") dst => _,
                    inout("rsi") src => _,
                    options(nostack)
                )
            };
        }
    }
}

/// Sets `len` bytes at `dst` to `byte`, with the fastest method measured.
///
/// # Safety
/// `dst..dst + len` must be valid for writes.
pub unsafe fn fill(dst: *mut u8, byte: u8, len: usize) {
    // SAFETY: forwarded from the caller.
    unsafe { fill_with(Method::from_u8(FILL.load(Ordering::Relaxed)), dst, byte, len) }
}

/// Copies `len` bytes, with the fastest method measured.
///
/// # Safety
/// `src..src + len` valid for reads, `dst..dst + len` for writes, not overlapping.
pub unsafe fn copy(dst: *mut u8, src: *const u8, len: usize) {
    // SAFETY: forwarded from the caller.
    unsafe { copy_with(Method::from_u8(COPY.load(Ordering::Relaxed)), dst, src, len) }
}

/// The offset of the first non-zero byte of `start..start + len`, reading eight bytes at a
/// time.
///
/// # Safety
/// `start..start + len` must be valid for reads.
pub unsafe fn first_nonzero(start: *const u8, len: usize) -> Option<usize> {
    let head = start.align_offset(8).min(len);
    for i in 0..head {
        // SAFETY: `i < len`, inside the caller's range.
        let b = unsafe { start.wrapping_add(i).read_volatile() };
        if b != 0 {
            return Some(i);
        }
    }
    let words = (len - head) / 8;
    let w = start.wrapping_add(head) as *const u64;
    for k in 0..words {
        // SAFETY: word `k` lies inside the caller's range (head + 8k + 8 <= len) and is
        // aligned.
        let word = unsafe { w.wrapping_add(k).read_volatile() };
        if word != 0 {
            let at = head + 8 * k;
            return (at..at + 8).find(|&i| {
                // SAFETY: one of the eight bytes just read.
                let b = unsafe { start.wrapping_add(i).read_volatile() };
                b != 0
            });
        }
    }
    (head + 8 * words..len).find(|&i| {
        // SAFETY: `i < len`.
        let b = unsafe { start.wrapping_add(i).read_volatile() };
        b != 0
    })
}

/// What [`measure`] found: MB/s per method, and the choices.
#[derive(Clone, Copy, Debug, Default)]
pub struct Figures {
    pub fill_mb_s: [u64; 3],
    pub copy_mb_s: [u64; 3],
    pub fill: Option<Method>,
    pub copy: Option<Method>,
}

/// Bytes timed per candidate.
const SAMPLE_BYTES: usize = 1 << 20;

/// Times each method on a heap buffer and keeps the fastest fill and copy.
pub fn measure() -> Figures {
    let mut a = alloc::vec![0u8; SAMPLE_BYTES];
    let b = alloc::vec![1u8; SAMPLE_BYTES];
    let mut f = Figures::default();
    let methods = [Method::RepByte, Method::RepQword, Method::Sse];
    for m in methods {
        let t0 = time::rdtsc();
        // SAFETY: `a` is a live buffer of SAMPLE_BYTES bytes.
        unsafe { fill_with(m, a.as_mut_ptr(), 0x5a, SAMPLE_BYTES) };
        f.fill_mb_s[m as usize] = mb_per_s(SAMPLE_BYTES, time::rdtsc().wrapping_sub(t0));
        // A method that does not do its job is never chosen.
        if a.iter().any(|&x| x != 0x5a) {
            f.fill_mb_s[m as usize] = 0;
        }
        let t0 = time::rdtsc();
        // SAFETY: `a` and `b` are distinct live buffers of SAMPLE_BYTES bytes.
        unsafe { copy_with(m, a.as_mut_ptr(), b.as_ptr(), SAMPLE_BYTES) };
        f.copy_mb_s[m as usize] = mb_per_s(SAMPLE_BYTES, time::rdtsc().wrapping_sub(t0));
        if a.iter().any(|&x| x != 1) {
            f.copy_mb_s[m as usize] = 0;
        }
    }
    let best = |v: &[u64; 3]| methods.into_iter().max_by_key(|m| v[*m as usize]);
    f.fill = best(&f.fill_mb_s);
    f.copy = best(&f.copy_mb_s);
    if let Some(m) = f.fill {
        FILL.store(m as u8, Ordering::Relaxed);
    }
    if let Some(m) = f.copy {
        COPY.store(m as u8, Ordering::Relaxed);
    }
    f
}

fn mb_per_s(bytes: usize, ticks: u64) -> u64 {
    let us = time::ticks_to_micros(ticks).max(1);
    bytes as u64 / us
}
