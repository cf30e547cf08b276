//! A 16550-compatible UART on the legacy I/O ports: the manager's console (COM1).
//!
//! Registers and bits: National Semiconductor PC16550D datasheet ("Register Summary"); the
//! PC/AT I/O bases COM1 0x3F8, COM2 0x2F8, COM3 0x3E8, COM4 0x2E8.
//!
//! Output fills the 16-byte transmit FIFO in one go after each "transmitter holding register
//! empty" (which, with FIFOs enabled, means the FIFO is empty) instead of polling the line
//! status before every byte: one status read per 16 bytes. Under QEMU each port access is an
//! exit into the emulator that takes its global lock, and with hundreds of virtual CPUs that
//! lock is contended: the per-byte poll made every log line cost milliseconds. Every wait is
//! bounded: a UART that never drains (absent, or stuck) drops output instead of hanging.

use x86_64::instructions::port::Port;

/// Register offsets from the I/O base.
const THR_RBR_DLL: u16 = 0; // transmit / receive / divisor latch low (DLAB = 1)
const IER_DLM: u16 = 1; // interrupt enable / divisor latch high (DLAB = 1)
const FCR: u16 = 2; // FIFO control (write)
const LCR: u16 = 3; // line control
const MCR: u16 = 4; // modem control
const LSR: u16 = 5; // line status

const LCR_DLAB: u8 = 0x80;
const LCR_8N1: u8 = 0x03;
/// FIFO enable, clear both FIFOs, receive trigger at 14 bytes.
const FCR_ENABLE_CLEAR: u8 = 0xC7;
/// DTR, RTS, OUT2 (OUT2 gates the interrupt line on PCs; interrupts stay disabled in IER).
const MCR_DTR_RTS_OUT2: u8 = 0x0B;
const LSR_DATA_READY: u8 = 0x01;
const LSR_THR_EMPTY: u8 = 0x20;
/// The transmit FIFO's depth.
pub const FIFO_BYTES: usize = 16;
/// How long the UART takes to send a full FIFO at 115200 baud, 8N1 (10 bits a byte).
pub const FIFO_DRAIN_US: u64 = FIFO_BYTES as u64 * 10 * 1_000_000 / 115_200;
/// 115200 baud: the divisor for the 1.8432 MHz crystal / 16.
const DIVISOR_115200: u16 = 1;
/// Bound on polls of the line status before output is dropped.
const THRE_POLLS: u32 = 100_000;

/// COM1, the manager's console.
pub const COM1: u16 = 0x3F8;

pub struct Uart {
    base: u16,
}

impl Uart {
    /// A UART at I/O `base`.
    ///
    /// # Safety
    /// `base` must be a 16550-compatible UART's I/O base (or no device at all), and nothing else
    /// may drive it at the same time.
    pub const unsafe fn new(base: u16) -> Uart {
        Uart { base }
    }

    fn out(&self, reg: u16, v: u8) {
        let mut p: Port<u8> = Port::new(self.base + reg);
        // SAFETY: a register of the UART this value was made for (`new`'s contract); writing
        // it affects only that UART.
        unsafe { p.write(v) };
    }

    fn inb(&self, reg: u16) -> u8 {
        let mut p: Port<u8> = Port::new(self.base + reg);
        // SAFETY: as in `out`; reading LSR or RBR only consumes the UART's own status or data.
        unsafe { p.read() }
    }

    /// 115200 baud, 8N1, FIFOs on, interrupts off.
    pub fn init(&self) {
        self.out(IER_DLM, 0);
        self.out(LCR, LCR_DLAB);
        self.out(THR_RBR_DLL, (DIVISOR_115200 & 0xFF) as u8);
        self.out(IER_DLM, (DIVISOR_115200 >> 8) as u8);
        self.out(LCR, LCR_8N1);
        self.out(FCR, FCR_ENABLE_CLEAR);
        self.out(MCR, MCR_DTR_RTS_OUT2);
    }

    /// Writes `bytes`, a FIFO's worth at a time; drops what a stuck UART will not take.
    pub fn write(&self, bytes: &[u8]) {
        for chunk in bytes.chunks(FIFO_BYTES) {
            if !(0..THRE_POLLS).any(|_| self.inb(LSR) & LSR_THR_EMPTY != 0) {
                return;
            }
            for &b in chunk {
                self.out(THR_RBR_DLL, b);
            }
        }
    }

    /// Leaves the UART quiet for its next owner: interrupts off, OUT2/DTR/RTS off, FIFOs
    /// cleared, 8N1 with the divisor latch closed.
    pub fn quiesce(&self) {
        self.out(IER_DLM, 0);
        self.out(LCR, LCR_8N1);
        self.out(FCR, FCR_ENABLE_CLEAR);
        self.out(MCR, 0);
    }

    /// The transmit FIFO is empty: [`Uart::send_burst`] may write up to [`FIFO_BYTES`].
    pub fn can_send(&self) -> bool {
        self.inb(LSR) & LSR_THR_EMPTY != 0
    }

    /// Writes at most [`FIFO_BYTES`] of `bytes` without waiting (call after [`Uart::can_send`])
    /// and returns how many it wrote.
    pub fn send_burst(&self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(FIFO_BYTES);
        for &b in &bytes[..n] {
            self.out(THR_RBR_DLL, b);
        }
        n
    }

    /// A received byte, if one is waiting.
    pub fn try_read(&self) -> Option<u8> {
        (self.inb(LSR) & LSR_DATA_READY != 0).then(|| self.inb(THR_RBR_DLL))
    }
}

/// Text output: each `\n` goes out as `\r\n`, as terminals expect.
impl core::fmt::Write for Uart {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let mut lines = s.split('\n');
        if let Some(first) = lines.next() {
            Uart::write(self, first.as_bytes());
        }
        for line in lines {
            Uart::write(self, b"\r\n");
            Uart::write(self, line.as_bytes());
        }
        Ok(())
    }
}
