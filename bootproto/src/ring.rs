//! The console ring's index arithmetic: the producer (a payload) and the consumer (the manager)
//! of the single-producer single-consumer byte ring described on [`ConsoleRing`].
//!
//! # Design
//! The logic is pure and safe. It takes the header's index values as plain integers and reaches
//! the data area only through the small [`RingData`] trait, so the unsafe pointer work stays in
//! the SDK (payload side) and in the manager, and the arithmetic is tested here on the host
//! with an ordinary buffer.
//!
//! - [`produce`] writes as much of a message as fits and reports how many bytes it dropped and
//!   the new `head`; it never waits. A full ring, a zero or non-power-of-two capacity, or a
//!   `tail` that claims more bytes pending than the ring holds all mean "no room": the bytes are
//!   dropped and counted, never written out of place.
//! - [`consume`] is for the manager and trusts nothing the payload wrote: it uses the capacity
//!   the manager configured (never the header's field; [`check_capacity`] compares the two if
//!   the manager wants to report a rewritten header), rejects indices with
//!   `head - tail > capacity` as [`RingError::Corrupt`], and copies at most `out.len()` bytes.
//! - [`write()`] and [`drain`] are the thin atomic wrappers around them that operate on a
//!   [`ConsoleRing`] header, with the orderings the protocol prescribes: the producer writes the
//!   data, then stores `head` with release; the consumer loads `head` with acquire, copies, then
//!   stores `tail` with release (so the producer, loading `tail` with acquire, never overwrites
//!   bytes still being copied).
//!
//! # Invariants
//! - `head` and `tail` are free-running `u32` byte counters; the number of pending bytes is
//!   `head.wrapping_sub(tail)`, which a well-behaved pair keeps `<= capacity`.
//! - Stream byte `i` lives at data index `i & (capacity - 1)` (`capacity` is a power of two), so
//!   every index passed to [`RingData`] is `< capacity`.
//! - Nothing here panics, loops more than the number of bytes it moves, or allocates.

use core::sync::atomic::Ordering;

use crate::ConsoleRing;

/// The ring's data area (`capacity` bytes directly after the header).
///
/// Implementations receive indices `< capacity` only. The payload side implements it over the
/// raw data pointer; the manager over its mapping of the instance's region; tests over a
/// buffer.
pub trait RingData {
    /// Reads data byte `i` (`i < capacity`).
    fn read(&self, i: u32) -> u8;
    /// Writes data byte `i` (`i < capacity`).
    fn write(&mut self, i: u32, b: u8);
}

/// What [`produce`] did with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Produced {
    /// The new `head`, to be stored (release) after the data.
    pub head: u32,
    /// Bytes written into the ring.
    pub written: u32,
    /// Bytes that did not fit; the caller adds them to `dropped`.
    pub dropped: u64,
}

/// What [`consume`] copied out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Consumed {
    /// The new `tail`, to be stored (release) after the copy.
    pub tail: u32,
    /// Bytes copied to the front of the output buffer.
    pub copied: usize,
    /// Bytes still pending in the ring after this copy (the output buffer was too small).
    pub remaining: u32,
}

/// Why the consumer refused a ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingError {
    /// The capacity the manager configured is zero or not a power of two (a manager bug).
    BadCapacity { capacity: u32 },
    /// The header's capacity field is not what the manager configured: the instance rewrote it.
    CapacityMismatch { expected: u32, found: u32 },
    /// `head - tail` exceeds the capacity: the instance wrote garbage indices.
    Corrupt { head: u32, tail: u32, capacity: u32 },
}

impl core::fmt::Display for RingError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            RingError::BadCapacity { capacity } => {
                write!(f, "console ring capacity {capacity} is not a non-zero power of two")
            }
            RingError::CapacityMismatch { expected, found } => write!(
                f,
                "console ring header says capacity {found}, the manager configured {expected}: \
                 the instance overwrote the header"
            ),
            RingError::Corrupt { head, tail, capacity } => write!(
                f,
                "console ring indices are corrupt: head {head:#x} - tail {tail:#x} exceeds \
                 capacity {capacity}"
            ),
        }
    }
}

fn valid_capacity(capacity: u32) -> bool {
    capacity.is_power_of_two()
}

/// Bytes that can be written now, as the producer sees the ring (0 if the capacity is unusable
/// or the indices claim more pending bytes than the ring holds).
pub fn free_space(head: u32, tail: u32, capacity: u32) -> u32 {
    if !valid_capacity(capacity) {
        return 0;
    }
    capacity.saturating_sub(head.wrapping_sub(tail))
}

/// Producer: writes `bytes` at `head` and returns the new head and the count of dropped bytes.
/// A message that does not fit whole is dropped whole, so the lines that arrive are intact;
/// only a message larger than the whole ring is cut to what fits. The caller publishes the head
/// (release) only after this returns.
pub fn produce<D: RingData + ?Sized>(
    head: u32,
    tail: u32,
    capacity: u32,
    data: &mut D,
    bytes: &[u8],
) -> Produced {
    let free = free_space(head, tail, capacity);
    let fits_whole = usize::try_from(free).is_ok_and(|free| bytes.len() <= free);
    let larger_than_ring = usize::try_from(capacity).is_ok_and(|cap| bytes.len() > cap);
    // `free <= capacity <= u32::MAX`, so the count fits a u32 whatever the message length.
    let n = if fits_whole {
        bytes.len()
    } else if larger_than_ring {
        usize::try_from(free).map_or(bytes.len(), |free| bytes.len().min(free))
    } else {
        0
    };
    let mask = capacity.wrapping_sub(1);
    let mut at = head;
    for &b in &bytes[..n] {
        data.write(at & mask, b);
        at = at.wrapping_add(1);
    }
    let written = u32::try_from(n).unwrap_or(free);
    let dropped = u64::try_from(bytes.len() - n).unwrap_or(u64::MAX);
    Produced { head: at, written, dropped }
}

/// Compares the header's capacity field with the capacity the manager configured.
pub fn check_capacity(found: u32, expected: u32) -> Result<(), RingError> {
    if found == expected {
        Ok(())
    } else {
        Err(RingError::CapacityMismatch { expected, found })
    }
}

/// Consumer: validates the untrusted `head`/`tail` against the configured `capacity` and copies
/// up to `out.len()` pending bytes, oldest first. The caller stores the returned tail (release)
/// after this returns.
pub fn consume<D: RingData + ?Sized>(
    head: u32,
    tail: u32,
    capacity: u32,
    data: &D,
    out: &mut [u8],
) -> Result<Consumed, RingError> {
    if !valid_capacity(capacity) {
        return Err(RingError::BadCapacity { capacity });
    }
    let pending = head.wrapping_sub(tail);
    if pending > capacity {
        return Err(RingError::Corrupt { head, tail, capacity });
    }
    let n = usize::try_from(pending).map_or(out.len(), |p| out.len().min(p));
    let mask = capacity - 1;
    let mut at = tail;
    for slot in &mut out[..n] {
        *slot = data.read(at & mask);
        at = at.wrapping_add(1);
    }
    Ok(Consumed { tail: at, copied: n, remaining: head.wrapping_sub(at) })
}

/// Producer side on a live header: writes `bytes` (as much as fits), publishes the new head and
/// adds the dropped count to `dropped`. Returns the number of dropped bytes.
///
/// Single producer: the caller must not run two `write`s on one ring at the same time (the
/// payload's console is used from one CPU, without reentrancy). The capacity is read from the
/// header, which the producer trusts (the manager set it before starting the instance).
pub fn write<D: RingData + ?Sized>(ring: &ConsoleRing, data: &mut D, bytes: &[u8]) -> u64 {
    let head = ring.head.load(Ordering::Relaxed);
    let tail = ring.tail.load(Ordering::Acquire);
    let p = produce(head, tail, ring.capacity, data, bytes);
    if p.written > 0 {
        ring.head.store(p.head, Ordering::Release);
    }
    if p.dropped > 0 {
        ring.dropped.fetch_add(p.dropped, Ordering::Relaxed);
    }
    p.dropped
}

/// Consumer side on a live header: copies pending bytes into `out`, then frees them by storing
/// the new tail. `capacity` is the one the manager configured; the header's field is ignored
/// (see [`check_capacity`]). On error nothing is stored.
pub fn drain<D: RingData + ?Sized>(
    ring: &ConsoleRing,
    capacity: u32,
    data: &D,
    out: &mut [u8],
) -> Result<Consumed, RingError> {
    let head = ring.head.load(Ordering::Acquire);
    let tail = ring.tail.load(Ordering::Relaxed);
    let c = consume(head, tail, capacity, data, out)?;
    if c.copied > 0 {
        ring.tail.store(c.tail, Ordering::Release);
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8};
    use std::sync::Arc;
    use std::vec;
    use std::vec::Vec;

    /// A plain buffer as the data area.
    struct Buf(Vec<u8>);

    impl RingData for Buf {
        fn read(&self, i: u32) -> u8 {
            self.0[i as usize]
        }
        fn write(&mut self, i: u32, b: u8) {
            self.0[i as usize] = b;
        }
    }

    /// A data area shared between threads, as the real one is shared between CPUs.
    struct Shared(Arc<Vec<AtomicU8>>);

    impl RingData for Shared {
        fn read(&self, i: u32) -> u8 {
            self.0[i as usize].load(Ordering::Relaxed)
        }
        fn write(&mut self, i: u32, b: u8) {
            self.0[i as usize].store(b, Ordering::Relaxed);
        }
    }

    fn header(capacity: u32, head: u32, tail: u32) -> ConsoleRing {
        ConsoleRing {
            head: AtomicU32::new(head),
            tail: AtomicU32::new(tail),
            capacity,
            _reserved: 0,
            dropped: AtomicU64::new(0),
        }
    }

    #[test]
    fn bytes_round_trip_across_the_wrap_of_the_data_area() {
        let mut data = Buf(vec![0; 8]);
        // Start at stream position 6: the message wraps from data[6] to data[1].
        let p = produce(6, 6, 8, &mut data, b"abcd");
        assert_eq!(p, Produced { head: 10, written: 4, dropped: 0 });
        assert_eq!(&data.0[..2], b"cd");
        assert_eq!(&data.0[6..], b"ab");
        let mut out = [0; 16];
        let c = consume(p.head, 6, 8, &data, &mut out).unwrap();
        assert_eq!(c, Consumed { tail: 10, copied: 4, remaining: 0 });
        assert_eq!(&out[..4], b"abcd");
    }

    #[test]
    fn counters_wrap_at_2_pow_32() {
        let mut data = Buf(vec![0; 8]);
        let start = u32::MAX - 1;
        let p = produce(start, start, 8, &mut data, b"xyz");
        assert_eq!(p.head, 1);
        let mut out = [0; 8];
        let c = consume(p.head, start, 8, &data, &mut out).unwrap();
        assert_eq!((c.tail, c.copied), (1, 3));
        assert_eq!(&out[..3], b"xyz");
    }

    #[test]
    fn a_full_ring_drops_and_counts_the_rest() {
        let ring = header(8, 0, 0);
        let mut data = Buf(vec![0; 8]);
        assert_eq!(write(&ring, &mut data, b"0123456"), 0);
        assert_eq!(write(&ring, &mut data, b"789"), 3); // does not fit whole: dropped whole
        assert_eq!(write(&ring, &mut data, b"z"), 0); // fits
        assert_eq!(write(&ring, &mut data, b"zz"), 2); // full
        assert_eq!(ring.head.load(Ordering::Relaxed), 8);
        assert_eq!(ring.dropped.load(Ordering::Relaxed), 5);
        let mut out = [0; 8];
        let c = drain(&ring, 8, &data, &mut out).unwrap();
        assert_eq!(&out[..c.copied], b"0123456z");
        // Draining made room again.
        assert_eq!(write(&ring, &mut data, b"ab"), 0);
        assert_eq!(ring.head.load(Ordering::Relaxed), 10);
        // A message larger than the whole ring is cut to what fits.
        let big = header(8, 0, 0);
        let mut d = Buf(vec![0; 8]);
        assert_eq!(write(&big, &mut d, b"0123456789"), 2);
        assert_eq!(big.head.load(Ordering::Relaxed), 8);
    }

    #[test]
    fn a_small_output_buffer_leaves_the_rest_pending() {
        let ring = header(8, 0, 0);
        let mut data = Buf(vec![0; 8]);
        write(&ring, &mut data, b"hello");
        let mut out = [0; 3];
        let c = drain(&ring, 8, &data, &mut out).unwrap();
        assert_eq!((c.copied, c.remaining, &out), (3, 2, b"hel"));
        let c = drain(&ring, 8, &data, &mut out).unwrap();
        assert_eq!((c.copied, c.remaining, &out[..2]), (2, 0, &b"lo"[..]));
        let c = drain(&ring, 8, &data, &mut out).unwrap();
        assert_eq!(c.copied, 0);
    }

    #[test]
    fn corrupt_indices_are_rejected_and_nothing_is_stored() {
        let data = Buf(vec![0; 8]);
        let mut out = [0; 64];
        assert_eq!(
            consume(9, 0, 8, &data, &mut out),
            Err(RingError::Corrupt { head: 9, tail: 0, capacity: 8 })
        );
        // The tail ahead of the head looks like ~4 GiB pending.
        assert_eq!(
            consume(0, 1, 8, &data, &mut out),
            Err(RingError::Corrupt { head: 0, tail: 1, capacity: 8 })
        );
        let ring = header(8, 0xdead_beef, 3);
        assert!(matches!(drain(&ring, 8, &data, &mut out), Err(RingError::Corrupt { .. })));
        assert_eq!(ring.tail.load(Ordering::Relaxed), 3);
        // Exactly full is fine.
        assert!(consume(8, 0, 8, &data, &mut out).is_ok());
    }

    #[test]
    fn the_consumer_uses_only_the_configured_capacity() {
        let data = Buf(vec![0; 8]);
        let mut out = [0; 64];
        // The header may claim a huge capacity: the consumer never sees it, so the same indices
        // are judged against the configured 8.
        let ring = header(1 << 30, 100, 0);
        assert!(matches!(drain(&ring, 8, &data, &mut out), Err(RingError::Corrupt { .. })));
        assert_eq!(
            check_capacity(ring.capacity, 8),
            Err(RingError::CapacityMismatch { expected: 8, found: 1 << 30 })
        );
        assert_eq!(check_capacity(8, 8), Ok(()));
        assert_eq!(consume(0, 0, 0, &data, &mut out), Err(RingError::BadCapacity { capacity: 0 }));
        assert_eq!(
            consume(0, 0, 12, &data, &mut out),
            Err(RingError::BadCapacity { capacity: 12 })
        );
    }

    #[test]
    fn the_producer_drops_everything_on_an_unusable_ring() {
        let mut data = Buf(vec![0; 8]);
        // Non-power-of-two capacity, zero capacity, tail ahead of head: no write at all.
        for (head, tail, capacity) in [(0, 0, 12), (0, 0, 0), (0, 5, 8), (100, 0, 8)] {
            let p = produce(head, tail, capacity, &mut data, b"abc");
            assert_eq!(p, Produced { head, written: 0, dropped: 3 });
        }
        assert_eq!(data.0, vec![0; 8]);
    }

    /// A byte pattern that does not repeat every 256 bytes, so a skipped block shows.
    fn pattern(i: u32) -> u8 {
        (i ^ (i >> 8) ^ (i >> 16)) as u8
    }

    #[test]
    fn every_byte_arrives_in_order_between_two_threads() {
        const CAPACITY: u32 = 64;
        const TOTAL: u32 = 200_000;
        let ring = Arc::new(header(CAPACITY, u32::MAX - 100, u32::MAX - 100));
        let area: Arc<Vec<AtomicU8>> = Arc::new((0..CAPACITY).map(|_| AtomicU8::new(0)).collect());

        let producer = {
            let ring = Arc::clone(&ring);
            let mut data = Shared(Arc::clone(&area));
            std::thread::spawn(move || {
                let mut next: u32 = 0;
                let mut chunk = [0u8; 23];
                while next < TOTAL {
                    // Write only what fits, so nothing is dropped: the test checks the ordering
                    // and publication, not the overflow policy.
                    let free = free_space(
                        ring.head.load(Ordering::Relaxed),
                        ring.tail.load(Ordering::Acquire),
                        CAPACITY,
                    );
                    let n = free.min(chunk.len() as u32).min(TOTAL - next);
                    if n == 0 {
                        std::thread::yield_now();
                        continue;
                    }
                    for (k, b) in chunk[..n as usize].iter_mut().enumerate() {
                        *b = pattern(next + k as u32);
                    }
                    assert_eq!(write(&ring, &mut data, &chunk[..n as usize]), 0);
                    next += n;
                }
            })
        };

        let data = Shared(Arc::clone(&area));
        let mut expected: u32 = 0;
        let mut out = [0u8; 17];
        while expected < TOTAL {
            let c = drain(&ring, CAPACITY, &data, &mut out).unwrap();
            for &b in &out[..c.copied] {
                assert_eq!(b, pattern(expected), "byte {expected}");
                expected += 1;
            }
            if c.copied == 0 {
                std::thread::yield_now();
            }
        }
        producer.join().unwrap();
        assert_eq!(ring.dropped.load(Ordering::Relaxed), 0);
        assert_eq!(ring.head.load(Ordering::Relaxed), ring.tail.load(Ordering::Relaxed));
    }
}
