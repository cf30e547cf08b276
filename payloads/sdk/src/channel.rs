//! Channels to other instances: message rings in shared memory, with an IPI doorbell.
//!
//! The manager lists an instance's channels in its boot info (`ChannelInfo`: name, peer,
//! base, size, the peer's CPU, the doorbell vector, which side this instance is) and maps each
//! one read/write into both of its instances. The ring logic is `bootproto::channel`'s (shared
//! with the C header and tested on the host); this module gives it the channel's memory and
//! the doorbell:
//!
//! ```ignore
//! let mut link = ctx.channel("link")?;                  // by the manifest's name
//! link.send(b"hello")?;                                  // into our ring; never waits
//! link.ring_doorbell();                                  // an IPI to the peer's CPU
//! let mut buf = [0u8; payload_sdk::channel::MESSAGE_MAX];
//! match link.recv_wait(&mut buf, Deadline::after_ms(100), Wait::Halt)? { .. }
//! ```
//!
//! [`Channel::recv_wait`] with [`Wait::Halt`] halts the CPU between looks: the peer's doorbell
//! (an interrupt on the channel's vector, which the SDK's IDT accepts) or the local APIC timer
//! wakes it; a lost doorbell costs at most [`HALT_SLICE_US`]. [`Wait::Poll`] spins, for the
//! lowest latency at the cost of a busy CPU.
//!
//! Everything the peer writes is untrusted: corrupt indices or lengths are a
//! [`ChannelError`], and the channel stays unusable ("broken") rather than being read out of
//! range. A restart of the peer is reported by [`Channel::peer_restarted`] (and messages its
//! previous life left unread are dropped, not delivered).

use core::sync::atomic::Ordering;

pub use bootproto::channel::{ChannelError, Peer, MESSAGE_MAX};
use bootproto::channel::{ChannelHeader, Endpoint, Slots, MIN_SIZE};
use bootproto::{info_page, BootInfo, ChannelInfo};

use crate::time::Deadline;

/// The longest halt between two looks in [`Wait::Halt`] mode.
pub const HALT_SLICE_US: u64 = 1000;

/// How [`Channel::recv_wait`] waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Spin, looking all the time.
    Poll,
    /// Halt until an interrupt (the doorbell, or the timer after at most [`HALT_SLICE_US`]).
    Halt,
}

/// Why a channel could not be opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenError {
    /// The boot info lists no channel of that name (or is older than version 2).
    NoSuchChannel,
    /// The record or the channel memory is not what the protocol says.
    Channel(ChannelError),
}

impl core::fmt::Display for OpenError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            OpenError::NoSuchChannel => f.write_str("no channel of that name in the boot info"),
            OpenError::Channel(e) => e.fmt(f),
        }
    }
}

/// The channel's slots, at its identity-mapped base.
struct Memory {
    base: u64,
    size: u64,
}

impl Slots for Memory {
    fn read(&self, offset: u64, out: &mut [u8]) {
        if offset.saturating_add(out.len() as u64) > self.size {
            return;
        }
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: `offset + i < size` (checked above): inside the channel, which the manager
            // maps read/write into this instance for its lifetime. Volatile: the peer writes it.
            *b = unsafe { ((self.base + offset + i as u64) as *const u8).read_volatile() };
        }
    }

    fn write(&mut self, offset: u64, bytes: &[u8]) {
        if offset.saturating_add(bytes.len() as u64) > self.size {
            return;
        }
        for (i, &b) in bytes.iter().enumerate() {
            // SAFETY: as in `read`; this side owns the slots it writes (its own ring).
            unsafe { ((self.base + offset + i as u64) as *mut u8).write_volatile(b) };
        }
    }
}

/// An open channel.
pub struct Channel {
    header: &'static ChannelHeader,
    memory: Memory,
    endpoint: Endpoint,
    peer_apic_id: u32,
    vector: u8,
    broken: Option<ChannelError>,
}

/// The channel records of a boot info (empty before version 2), each checked to lie in the
/// boot info page.
pub(crate) fn records(info: &'static BootInfo) -> &'static [ChannelInfo] {
    if info.version < 2 || info.channel_count == 0 {
        return &[];
    }
    let count = (info.channel_count as usize).min(info_page::MAX_CHANNELS);
    let page = info as *const BootInfo as u64;
    let at = info.channels;
    let len = (count * core::mem::size_of::<ChannelInfo>()) as u64;
    if at != page + info_page::CHANNELS_OFFSET
        || !at.is_multiple_of(8)
        || at + len > page + bootproto::PAGE_SIZE
    {
        return &[];
    }
    // SAFETY: `count` records at `at`, inside the boot info page (checked above), which the
    // manager wrote before the start and never changes; ChannelInfo is plain integers.
    unsafe { core::slice::from_raw_parts(at as *const ChannelInfo, count) }
}

impl Channel {
    /// Opens the channel described by `rec`.
    pub(crate) fn open(rec: &ChannelInfo) -> Result<Channel, OpenError> {
        let bad = OpenError::Channel(ChannelError::NotAChannel);
        if !rec.base.is_multiple_of(bootproto::PAGE_SIZE) || rec.size < MIN_SIZE || rec.side > 1 {
            return Err(bad);
        }
        let Ok(vector) = u8::try_from(rec.doorbell_vector) else { return Err(bad) };
        // SAFETY: the manager maps the channel (base, size; page-aligned, at least MIN_SIZE:
        // checked above) read/write into this instance; the header is its first page, accessed
        // through atomics and fields only the manager writes.
        let header: &'static ChannelHeader = unsafe { &*(rec.base as *const ChannelHeader) };
        let endpoint =
            Endpoint::join(header, rec.side as usize, rec.size).map_err(OpenError::Channel)?;
        Ok(Channel {
            header,
            memory: Memory { base: rec.base, size: rec.size },
            endpoint,
            peer_apic_id: rec.peer_apic_id,
            vector,
            broken: None,
        })
    }

    /// Sends one message (at most [`MESSAGE_MAX`] bytes); never waits. [`ChannelError::Full`]
    /// means the peer has not read enough yet: try again later.
    pub fn send(&mut self, msg: &[u8]) -> Result<(), ChannelError> {
        if let Some(e) = self.broken {
            return Err(e);
        }
        let r = self.endpoint.send(self.header, &mut self.memory, msg);
        self.note(r)
    }

    /// Interrupts the peer's first CPU on the channel's vector (wakes it from a halt).
    pub fn ring_doorbell(&self) {
        crate::lapic::send_ipi(self.peer_apic_id, self.vector);
    }

    /// Takes the next message into `out`; `None` if there is none.
    pub fn try_recv(&mut self, out: &mut [u8; MESSAGE_MAX]) -> Result<Option<usize>, ChannelError> {
        if let Some(e) = self.broken {
            return Err(e);
        }
        let r = self.endpoint.recv(self.header, &self.memory, out);
        self.note(r)
    }

    /// Waits (bounded by `deadline`) for the next message.
    pub fn recv_wait(
        &mut self,
        out: &mut [u8; MESSAGE_MAX],
        deadline: Deadline,
        wait: Wait,
    ) -> Result<Option<usize>, ChannelError> {
        loop {
            if let Some(n) = self.try_recv(out)? {
                return Ok(Some(n));
            }
            if deadline.expired() {
                return Ok(None);
            }
            match wait {
                Wait::Poll => core::hint::spin_loop(),
                Wait::Halt => {
                    let slice = Deadline::after_us(HALT_SLICE_US);
                    crate::irq::halt_once_until(slice.min(deadline).ticks());
                }
            }
        }
    }

    /// The peer's new epoch if it was started again since the last look.
    pub fn peer_restarted(&mut self) -> Option<u32> {
        match self.endpoint.check_peer(self.header) {
            Peer::Restarted { epoch } => Some(epoch),
            Peer::Same => None,
        }
    }

    /// Messages from a previous life of the peer that were dropped unread.
    pub fn stale_dropped(&self) -> u64 {
        self.endpoint.stale
    }

    /// What this side and the peer say they sent and received (from the header).
    pub fn counts(&self) -> (u64, u64) {
        let s = &self.header.side[self.endpoint.side];
        (s.sent.load(Ordering::Relaxed), s.received.load(Ordering::Relaxed))
    }

    /// Once broken (the peer wrote garbage), the channel stays broken.
    fn note<T>(&mut self, r: Result<T, ChannelError>) -> Result<T, ChannelError> {
        if let Err(e @ (ChannelError::Corrupt { .. } | ChannelError::BadLength { .. })) = r {
            self.broken = Some(e);
        }
        r
    }
}
