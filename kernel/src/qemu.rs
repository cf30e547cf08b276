//! Ending a QEMU run with a verdict.
//!
//! Images built for a QEMU run (feature `qemu-exit`) have QEMU's `isa-debug-exit` device at
//! port 0xf4: writing `v` makes QEMU exit with status `(v << 1) | 1`. We write 0x10 for a
//! pass (status 33) and 0x11 for a failure (status 35). Images meant for real machines never
//! touch that port: there the manager halts with its last message on the console.

/// `-device isa-debug-exit,iobase=0xf4,iosize=0x04` (QEMU docs, "isa-debug-exit").
#[cfg(feature = "qemu-exit")]
const ISA_DEBUG_EXIT_PORT: u16 = bootproto::report::DEBUG_EXIT_PORT;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Verdict {
    Pass = bootproto::report::DEBUG_EXIT_PASS,
    Fail = bootproto::report::DEBUG_EXIT_FAIL,
}

/// Ends the run: exits QEMU with the verdict where that is possible, otherwise halts forever.
pub fn finish(verdict: Verdict) -> ! {
    crate::fbcon::flush();
    crate::serial::flush();
    #[cfg(feature = "qemu-exit")]
    {
        let mut port = x86_64::instructions::port::Port::<u32>::new(ISA_DEBUG_EXIT_PORT);
        // SAFETY: in a QEMU-run image the debug-exit device owns this port; the write ends
        // the virtual machine.
        unsafe { port.write(verdict as u32) };
    }
    #[cfg(not(feature = "qemu-exit"))]
    let _ = verdict;
    halt_forever()
}

pub fn halt_forever() -> ! {
    x86_64::instructions::interrupts::disable();
    loop {
        x86_64::instructions::hlt();
    }
}
