//! A channel between two instances: one page of header, then two single-producer
//! single-consumer rings of fixed-size message slots, one per direction. The memory is shared
//! by the two instances (and the manager, which resets a side when it restarts).
//!
//! # Layout (all little-endian; docs/boot-protocol.md, "Channels")
//! ```text
//! base + 0x000  ChannelHeader (one page)
//!                 0x000 magic "MKCH", version, size, slots (per ring)   written by the manager
//!                 0x040 side[0] { epoch, sent, received }                side 0 (epoch: manager)
//!                 0x080 side[1] { epoch, sent, received }                side 1 (epoch: manager)
//!                 0x0C0 head[0]   0x100 head[1]                          ring s's producer index
//!                 0x140 tail[0]   0x180 tail[1]                          ring s's consumer index
//! base + 0x1000 ring 0's slots (side 0 → side 1), `slots` × 64 bytes
//!               ring 1's slots (side 1 → side 0), `slots` × 64 bytes
//! ```
//! Ring `s` is written by side `s` (`head[s]` and its slots) and read by side `1 − s`
//! (`tail[s]`). Each index has a cache line of its own. A slot is `len: u16`, `tag: u16` (the
//! sender's life, below), then up to [`MESSAGE_MAX`] bytes. `slots` is the largest power of two
//! with two rings in `size − 4 KiB` ([`slots_for`]); each side computes it from the size its
//! boot info gives, never from the header.
//!
//! # Restarts
//! The manager adds 2 to `side[s].epoch` before each start of side `s`, so `epoch / 2` counts
//! its lives. Every message carries its sender's life in `tag` (the low 16 bits of
//! `epoch / 2`); a reader drops, and counts, messages whose tag is not the sender's current
//! life, so nothing a previous life sent is presented as new. The indices are never reset, so
//! the two sides never disagree about them: at its start a side continues its ring from its
//! `head` (repairing it to `tail` if its previous life left it impossible) and skips what the
//! peer sent to its previous life (`tail` := the peer's `head`). A reader that sees the peer's
//! epoch change reports the restart ([`Peer::Restarted`]) so the application can resend what
//! may have been lost.
//!
//! # Trust
//! Everything the peer writes is untrusted: `head` and `tail` values that claim more pending
//! slots than the ring has, or a slot length above [`MESSAGE_MAX`], are [`ChannelError`]s, never
//! an out-of-range access. The operations never panic, never wait and never allocate.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// "MKCH".
pub const MAGIC: u32 = u32::from_le_bytes(*b"MKCH");
pub const VERSION: u32 = 1;
/// The header page.
pub const HEADER_BYTES: u64 = 4096;
/// A slot: a `u16` length, a `u16` tag (the sender's life) and the message.
pub const SLOT_BYTES: u64 = 64;
/// The longest message.
pub const MESSAGE_MAX: usize = SLOT_BYTES as usize - 4;
/// The smallest channel: the header and a page of slots (32 per ring).
pub const MIN_SIZE: u64 = 2 * HEADER_BYTES;
/// The default channel size (a manifest's `size`).
pub const DEFAULT_SIZE: u64 = 64 * 1024;
/// The first doorbell vector; channel `i` of the bundle uses `DOORBELL_BASE + i`.
pub const DOORBELL_BASE: u8 = 0x40;
/// How many channels a bundle may declare (their doorbells are 0x40..=0x7F).
pub const MAX_CHANNELS: usize = 64;

/// What one side writes (its `epoch` is the manager's).
#[repr(C, align(64))]
#[derive(Default)]
pub struct SideHeader {
    /// Twice the number of starts of this side (the manager adds 2 before each).
    pub epoch: AtomicU32,
    pub _reserved0: u32,
    /// Messages this side published.
    pub sent: AtomicU64,
    /// Messages this side consumed.
    pub received: AtomicU64,
}

/// One index in a cache line of its own.
#[repr(C, align(64))]
#[derive(Default)]
pub struct Index(pub AtomicU32);

/// The channel's first page.
#[repr(C)]
pub struct ChannelHeader {
    pub magic: u32,
    pub version: u32,
    pub size: u64,
    pub slots: u32,
    pub _reserved: [u32; 11],
    pub side: [SideHeader; 2],
    pub head: [Index; 2],
    pub tail: [Index; 2],
}

impl ChannelHeader {
    /// The header the manager writes for a channel of `size` bytes (both sides never started).
    pub fn new(size: u64) -> ChannelHeader {
        ChannelHeader {
            magic: MAGIC,
            version: VERSION,
            size,
            slots: slots_for(size),
            _reserved: [0; 11],
            side: Default::default(),
            head: Default::default(),
            tail: Default::default(),
        }
    }
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(offset_of!(ChannelHeader, side) == 0x40);
    assert!(offset_of!(ChannelHeader, head) == 0xC0);
    assert!(offset_of!(ChannelHeader, tail) == 0x140);
    assert!(size_of::<ChannelHeader>() == 0x1C0);
    assert!(size_of::<ChannelHeader>() as u64 <= HEADER_BYTES);
    assert!(DOORBELL_BASE as usize + MAX_CHANNELS <= 0x80);
};

/// Byte offsets in the header page of the fields the manager touches.
pub mod offset {
    pub const MAGIC: u64 = 0x00;
    pub const VERSION: u64 = 0x04;
    pub const SIZE: u64 = 0x08;
    pub const SLOTS: u64 = 0x10;
    pub const fn epoch(side: usize) -> u64 {
        0x40 + 0x40 * side as u64
    }
    pub const fn sent(side: usize) -> u64 {
        epoch(side) + 8
    }
    pub const fn received(side: usize) -> u64 {
        epoch(side) + 16
    }
    pub const fn head(ring: usize) -> u64 {
        0xC0 + 0x40 * ring as u64
    }
    pub const fn tail(ring: usize) -> u64 {
        0x140 + 0x40 * ring as u64
    }
}

/// Slots per ring for a channel of `size` bytes: the largest power of two such that two
/// rings fit after the header (0 if `size` is below [`MIN_SIZE`]).
pub const fn slots_for(size: u64) -> u32 {
    if size < MIN_SIZE {
        return 0;
    }
    let per_ring = (size - HEADER_BYTES) / (2 * SLOT_BYTES);
    let per_ring = if per_ring > u32::MAX as u64 { u32::MAX as u64 } else { per_ring };
    // The largest power of two <= per_ring (per_ring >= 32 here).
    1 << (63 - per_ring.leading_zeros())
}

/// Byte offset of ring `ring`'s slot `index` from the channel's base.
pub const fn slot_offset(slots: u32, ring: usize, index: u32) -> u64 {
    HEADER_BYTES + (ring as u64 * slots as u64 + (index & (slots - 1)) as u64) * SLOT_BYTES
}

/// The ring slots, reached through this trait: the SDK over the channel's identity-mapped
/// memory, tests over a buffer. Offsets are from the channel's base and lie in
/// `[HEADER_BYTES, HEADER_BYTES + 2 * slots * SLOT_BYTES)`.
pub trait Slots {
    fn read(&self, offset: u64, out: &mut [u8]);
    fn write(&mut self, offset: u64, bytes: &[u8]);
}

/// Why a message could not be sent or received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelError {
    /// The message is longer than [`MESSAGE_MAX`].
    TooLong { len: usize },
    /// The ring is full (the peer is not consuming).
    Full,
    /// The peer's indices claim more pending slots than the ring has.
    Corrupt { head: u32, tail: u32, slots: u32 },
    /// A slot's length field is larger than a message can be.
    BadLength { len: u32 },
    /// This side's channel memory does not look like a channel (bad magic, version or size).
    NotAChannel,
}

impl core::fmt::Display for ChannelError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            ChannelError::TooLong { len } => {
                write!(f, "a {len}-byte message is longer than {MESSAGE_MAX} bytes")
            }
            ChannelError::Full => f.write_str("the ring is full"),
            ChannelError::Corrupt { head, tail, slots } => write!(
                f,
                "broken channel: head {head} and tail {tail} claim more than {slots} pending slots"
            ),
            ChannelError::BadLength { len } => {
                write!(f, "broken channel: a slot claims a {len}-byte message")
            }
            ChannelError::NotAChannel => f.write_str("the memory is not a channel"),
        }
    }
}

/// What happened to the peer since this side last looked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// As before.
    Same,
    /// It was started again (its epoch changed).
    Restarted { epoch: u32 },
}

/// A life's tag: the low 16 bits of `epoch / 2`.
const fn tag(epoch: u32) -> u16 {
    (epoch / 2) as u16
}

/// One side's view of a channel: which side it is, the ring size it trusts, the peer epoch it
/// last saw, and how many stale messages it dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub side: usize,
    pub slots: u32,
    pub peer_epoch: u32,
    /// Messages from a previous life of the peer that were dropped unread.
    pub stale: u64,
}

impl Endpoint {
    /// Joins `header` as `side` (0 or 1) of a channel whose size the boot info gave: checks
    /// the header the manager wrote, continues this side's ring (repairing an impossible
    /// `head`), and skips what the peer sent to this side's previous life.
    pub fn join(header: &ChannelHeader, side: usize, size: u64) -> Result<Endpoint, ChannelError> {
        let slots = slots_for(size);
        if side > 1
            || slots == 0
            || header.magic != MAGIC
            || header.version != VERSION
            || header.size != size
            || header.slots != slots
        {
            return Err(ChannelError::NotAChannel);
        }
        let peer = 1 - side;
        let (head, tail) = (
            header.head[side].0.load(Ordering::Relaxed),
            header.tail[side].0.load(Ordering::Acquire),
        );
        if head.wrapping_sub(tail) > slots {
            header.head[side].0.store(tail, Ordering::Release);
        }
        let peer_head = header.head[peer].0.load(Ordering::Acquire);
        header.tail[peer].0.store(peer_head, Ordering::Release);
        let peer_epoch = header.side[peer].epoch.load(Ordering::Acquire);
        Ok(Endpoint { side, slots, peer_epoch, stale: 0 })
    }

    /// Whether the peer was started again since this side last looked.
    pub fn check_peer(&mut self, header: &ChannelHeader) -> Peer {
        let e = header.side[1 - self.side].epoch.load(Ordering::Acquire);
        if e == self.peer_epoch {
            return Peer::Same;
        }
        self.peer_epoch = e;
        Peer::Restarted { epoch: e }
    }

    /// Sends `msg` (at most [`MESSAGE_MAX`] bytes) on this side's ring; never waits.
    pub fn send(
        &self,
        header: &ChannelHeader,
        slots: &mut impl Slots,
        msg: &[u8],
    ) -> Result<(), ChannelError> {
        if msg.len() > MESSAGE_MAX {
            return Err(ChannelError::TooLong { len: msg.len() });
        }
        let me = self.side;
        let head = header.head[me].0.load(Ordering::Relaxed);
        let tail = header.tail[me].0.load(Ordering::Acquire);
        let pending = head.wrapping_sub(tail);
        if pending > self.slots {
            return Err(ChannelError::Corrupt { head, tail, slots: self.slots });
        }
        if pending == self.slots {
            return Err(ChannelError::Full);
        }
        let life = tag(header.side[me].epoch.load(Ordering::Relaxed));
        let at = slot_offset(self.slots, me, head);
        slots.write(at, &(msg.len() as u16).to_le_bytes());
        slots.write(at + 2, &life.to_le_bytes());
        slots.write(at + 4, msg);
        header.head[me].0.store(head.wrapping_add(1), Ordering::Release);
        header.side[me].sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Takes the next message of the peer's current life into `out`; returns its length, or
    /// `None` if there is none. Messages of a previous life are dropped (and counted in
    /// [`Endpoint::stale`]).
    pub fn recv(
        &mut self,
        header: &ChannelHeader,
        slots: &impl Slots,
        out: &mut [u8; MESSAGE_MAX],
    ) -> Result<Option<usize>, ChannelError> {
        let peer = 1 - self.side;
        // At most a ring's worth of stale messages is skipped per call.
        for _ in 0..=self.slots {
            let head = header.head[peer].0.load(Ordering::Acquire);
            let tail = header.tail[peer].0.load(Ordering::Relaxed);
            let pending = head.wrapping_sub(tail);
            if pending > self.slots {
                return Err(ChannelError::Corrupt { head, tail, slots: self.slots });
            }
            if pending == 0 {
                return Ok(None);
            }
            let life = tag(header.side[peer].epoch.load(Ordering::Acquire));
            let at = slot_offset(self.slots, peer, tail);
            let mut word = [0u8; 4];
            slots.read(at, &mut word);
            let len = u16::from_le_bytes([word[0], word[1]]);
            let from = u16::from_le_bytes([word[2], word[3]]);
            if usize::from(len) > MESSAGE_MAX {
                return Err(ChannelError::BadLength { len: u32::from(len) });
            }
            slots.read(at + 4, &mut out[..usize::from(len)]);
            header.tail[peer].0.store(tail.wrapping_add(1), Ordering::Release);
            if from != life {
                self.stale += 1;
                continue;
            }
            header.side[self.side].received.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(usize::from(len)));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    extern crate alloc;

    /// A channel in host memory: the header, and the slots in a buffer.
    struct Chan {
        header: alloc::boxed::Box<ChannelHeader>,
        slots: Vec<u8>,
    }

    impl Slots for Vec<u8> {
        fn read(&self, offset: u64, out: &mut [u8]) {
            let at = offset as usize;
            out.copy_from_slice(&self[at..at + out.len()]);
        }
        fn write(&mut self, offset: u64, bytes: &[u8]) {
            let at = offset as usize;
            self[at..at + bytes.len()].copy_from_slice(bytes);
        }
    }

    fn zeroed_header() -> alloc::boxed::Box<ChannelHeader> {
        // SAFETY: every field of ChannelHeader is an integer or an atomic integer, for which
        // all-zero bytes are a valid value.
        unsafe { alloc::boxed::Box::new(core::mem::zeroed()) }
    }

    /// What the manager writes at creation, and its reset of `side` (before a start).
    fn chan(size: u64) -> Chan {
        let mut header = zeroed_header();
        header.magic = MAGIC;
        header.version = VERSION;
        header.size = size;
        header.slots = slots_for(size);
        Chan { header, slots: vec![0; size as usize] }
    }

    /// The manager's part of a start of `side`.
    fn restart(c: &mut Chan, side: usize) {
        c.header.side[side].epoch.fetch_add(2, Ordering::Release);
    }

    #[test]
    fn sizes_give_power_of_two_rings_that_fit() {
        assert_eq!(slots_for(MIN_SIZE - 1), 0);
        assert_eq!(slots_for(MIN_SIZE), 32);
        assert_eq!(slots_for(DEFAULT_SIZE), 256, "60 KiB of slots: 480 per ring, rounded down");
        for size in [MIN_SIZE, DEFAULT_SIZE, 1 << 20, 3 << 20] {
            let n = slots_for(size);
            assert!(n.is_power_of_two());
            assert!(slot_offset(n, 1, n - 1) + SLOT_BYTES <= size);
        }
    }

    #[test]
    fn messages_go_both_ways_in_order_and_a_full_ring_says_so() {
        let mut c = chan(MIN_SIZE);
        let mut a = Endpoint::join(&c.header, 0, MIN_SIZE).unwrap();
        let mut b = Endpoint::join(&c.header, 1, MIN_SIZE).unwrap();
        let mut out = [0u8; MESSAGE_MAX];
        for i in 0..32u8 {
            a.send(&c.header, &mut c.slots, &[i; 7]).unwrap();
        }
        assert_eq!(a.send(&c.header, &mut c.slots, b"x"), Err(ChannelError::Full));
        for i in 0..32u8 {
            assert_eq!(b.recv(&c.header, &c.slots, &mut out), Ok(Some(7)));
            assert_eq!(out[..7], [i; 7]);
        }
        assert_eq!(b.recv(&c.header, &c.slots, &mut out), Ok(None));
        b.send(&c.header, &mut c.slots, &[9; MESSAGE_MAX]).unwrap();
        assert_eq!(a.recv(&c.header, &c.slots, &mut out), Ok(Some(MESSAGE_MAX)));
        assert_eq!(
            a.send(&c.header, &mut c.slots, &[0; MESSAGE_MAX + 1]),
            Err(ChannelError::TooLong { len: MESSAGE_MAX + 1 })
        );
        assert_eq!(c.header.side[0].sent.load(Ordering::Relaxed), 32);
        assert_eq!(c.header.side[1].received.load(Ordering::Relaxed), 32);
        // Indices wrap around u32 without trouble.
        c.header.head[0].0.store(u32::MAX - 1, Ordering::Relaxed);
        c.header.tail[0].0.store(u32::MAX - 1, Ordering::Relaxed);
        for i in 0..4u8 {
            a.send(&c.header, &mut c.slots, &[i]).unwrap();
            assert_eq!(b.recv(&c.header, &c.slots, &mut out), Ok(Some(1)));
            assert_eq!(out[0], i);
        }
    }

    #[test]
    fn garbage_from_the_peer_is_an_error_never_an_out_of_range_access() {
        let mut c = chan(MIN_SIZE);
        let mut a = Endpoint::join(&c.header, 0, MIN_SIZE).unwrap();
        let b = Endpoint::join(&c.header, 1, MIN_SIZE).unwrap();
        let mut out = [0u8; MESSAGE_MAX];
        // The peer (side 1) claims 1000 messages in its ring.
        c.header.head[1].0.store(1000, Ordering::Relaxed);
        assert_eq!(
            a.recv(&c.header, &c.slots, &mut out),
            Err(ChannelError::Corrupt { head: 1000, tail: 0, slots: 32 })
        );
        // A slot with an impossible length.
        c.header.head[1].0.store(1, Ordering::Relaxed);
        let at = slot_offset(32, 1, 0) as usize;
        c.slots[at..at + 4].copy_from_slice(&999u32.to_le_bytes());
        assert_eq!(
            a.recv(&c.header, &c.slots, &mut out),
            Err(ChannelError::BadLength { len: 999 })
        );
        // The peer moved our ring's tail beyond our head.
        c.header.tail[0].0.store(77, Ordering::Relaxed);
        assert!(matches!(a.send(&c.header, &mut c.slots, b"x"), Err(ChannelError::Corrupt { .. })));
        // A header the manager did not write.
        c.header.magic = 0;
        assert_eq!(Endpoint::join(&c.header, 0, MIN_SIZE), Err(ChannelError::NotAChannel));
        let _ = b;
    }

    #[test]
    fn a_restarted_peer_is_noticed_and_nothing_stale_is_presented_as_new() {
        let mut c = chan(MIN_SIZE);
        restart(&mut c, 0);
        restart(&mut c, 1);
        let mut a = Endpoint::join(&c.header, 0, MIN_SIZE).unwrap();
        let b = Endpoint::join(&c.header, 1, MIN_SIZE).unwrap();
        let mut out = [0u8; MESSAGE_MAX];
        for i in 0..5u8 {
            b.send(&c.header, &mut c.slots, &[i]).unwrap();
        }
        assert_eq!(a.recv(&c.header, &c.slots, &mut out), Ok(Some(1)));
        // a sends two messages to b's first life; b dies with 4 of its messages unread by a.
        a.send(&c.header, &mut c.slots, b"old1").unwrap();
        a.send(&c.header, &mut c.slots, b"old2").unwrap();
        restart(&mut c, 1);
        // b's second life does not see what a sent to its first.
        let mut b = Endpoint::join(&c.header, 1, MIN_SIZE).unwrap();
        assert_eq!(b.recv(&c.header, &c.slots, &mut out), Ok(None));
        // a notices the restart; b's unread first-life messages are dropped, not delivered.
        b.send(&c.header, &mut c.slots, b"new").unwrap();
        assert_eq!(a.check_peer(&c.header), Peer::Restarted { epoch: 4 });
        assert_eq!(a.check_peer(&c.header), Peer::Same);
        assert_eq!(a.recv(&c.header, &c.slots, &mut out), Ok(Some(3)));
        assert_eq!(&out[..3], b"new");
        assert_eq!(a.stale, 4);
        assert_eq!(a.recv(&c.header, &c.slots, &mut out), Ok(None));
        // Both directions work in the new life.
        a.send(&c.header, &mut c.slots, b"hi").unwrap();
        assert_eq!(b.recv(&c.header, &c.slots, &mut out), Ok(Some(2)));
        // A previous life that left its head impossible is repaired at the next join.
        c.header.head[1].0.store(12345, Ordering::Relaxed);
        restart(&mut c, 1);
        let b = Endpoint::join(&c.header, 1, MIN_SIZE).unwrap();
        b.send(&c.header, &mut c.slots, b"ok").unwrap();
        assert_eq!(a.recv(&c.header, &c.slots, &mut out), Ok(Some(2)));
    }

    #[test]
    fn a_random_interleaving_with_garbage_never_panics() {
        let mut c = chan(MIN_SIZE);
        let mut a = Endpoint::join(&c.header, 0, MIN_SIZE).unwrap();
        let mut out = [0u8; MESSAGE_MAX];
        let mut x = 0x2545_F491u32;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            match x % 5 {
                0 => c.header.head[1].0.store(x >> 3, Ordering::Relaxed),
                1 => c.header.tail[0].0.store(x >> 7, Ordering::Relaxed),
                2 => {
                    let at = HEADER_BYTES as usize
                        + (x as usize % (c.slots.len() - 8 - HEADER_BYTES as usize));
                    c.slots[at..at + 4].copy_from_slice(&x.to_le_bytes());
                }
                3 => {
                    let _ = a.send(&c.header, &mut c.slots, &[1; 10]);
                }
                _ => {
                    let _ = a.recv(&c.header, &c.slots, &mut out);
                }
            }
        }
    }
}
