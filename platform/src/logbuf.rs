//! A fixed-size byte queue between the manager's log and its serial port.
//!
//! Writing a log line must not cost the manager the line's transmission time: at 115200 baud a
//! 100-byte line takes 8.7 ms on a real UART, and under QEMU every byte is a trap into the
//! device model (2.9 µs each at 4 vCPUs, 18 µs at 255, measured). So `print` only appends the
//! line's bytes here, and the port is fed from the front of the queue while the manager waits
//! anyway (`kernel/src/machine.rs`); the run's end, a panic and a full queue drain it at once.
//! Nothing is dropped: a writer that finds the queue full must drain the front first (the
//! kernel does, synchronously), so order and content are always the log's.
//!
//! The queue is an array inside the value (no heap: the log works before the heap exists), so
//! a `static` holds it in `.bss`.
//!
//! # Invariants
//! `len <= N`, `head < N` (for `N > 0`); the queued bytes are `data[head..]` followed by
//! `data[..]` wrapping, `len` of them in all.

/// A queue of at most `N` bytes.
pub struct LogBuf<const N: usize> {
    data: [u8; N],
    head: usize,
    len: usize,
}

impl<const N: usize> LogBuf<N> {
    pub const fn new() -> Self {
        LogBuf { data: [0; N], head: 0, len: 0 }
    }

    /// Bytes waiting to be sent.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Room left.
    pub fn free(&self) -> usize {
        N - self.len
    }

    /// Appends as much of `bytes` as fits and returns how many bytes that was.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.free());
        for (i, &b) in bytes[..n].iter().enumerate() {
            let at = (self.head + self.len + i) % N;
            self.data[at] = b;
        }
        self.len += n;
        n
    }

    /// The oldest queued bytes that are contiguous in memory (empty if nothing is queued).
    pub fn front(&self) -> &[u8] {
        let end = (self.head + self.len).min(N);
        &self.data[self.head..end]
    }

    /// Drops the `n` oldest bytes (all of them if fewer are queued).
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.len);
        self.len -= n;
        self.head = if self.len == 0 { 0 } else { (self.head + n) % N };
    }
}

impl<const N: usize> Default for LogBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn drain<const N: usize>(q: &mut LogBuf<N>, max: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while !q.is_empty() && out.len() < max {
            let take = q.front().len().min(max - out.len());
            out.extend_from_slice(&q.front()[..take]);
            q.consume(take);
        }
        out
    }

    #[test]
    fn bytes_come_out_in_order_across_the_wrap() {
        let mut q = LogBuf::<8>::new();
        assert_eq!(q.push(b"abcdef"), 6);
        assert_eq!(drain(&mut q, 4), b"abcd");
        // head is now 4: "ef" then 6 more wrap around the end of the array.
        assert_eq!(q.push(b"ghijklmn"), 6, "only the free room is taken");
        assert_eq!(q.free(), 0);
        assert_eq!(q.front(), b"efgh", "front stops at the end of the array");
        assert_eq!(drain(&mut q, 100), b"efghijkl");
        assert!(q.is_empty() && q.front().is_empty());
    }

    #[test]
    fn consume_never_goes_past_what_is_queued() {
        let mut q = LogBuf::<4>::new();
        q.push(b"xy");
        q.consume(10);
        assert_eq!((q.len(), q.free()), (0, 4));
        assert_eq!(q.push(b"1234"), 4);
        assert_eq!(drain(&mut q, 9), b"1234");
    }

    #[test]
    fn a_random_interleaving_loses_and_reorders_nothing() {
        let mut q = LogBuf::<13>::new();
        let (mut sent, mut got) = (Vec::new(), Vec::new());
        let mut x = 7u32;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as usize
        };
        let mut counter = 0u8;
        for _ in 0..5000 {
            let want: Vec<u8> = (0..next() % 9)
                .map(|_| {
                    counter = counter.wrapping_add(1);
                    counter
                })
                .collect();
            let n = q.push(&want);
            sent.extend_from_slice(&want[..n]);
            // What did not fit is "sent" after draining, as the kernel's writer does.
            if n < want.len() {
                got.extend(drain(&mut q, usize::MAX));
                assert_eq!(q.push(&want[n..]), want.len() - n);
                sent.extend_from_slice(&want[n..]);
            }
            got.extend(drain(&mut q, next() % 7));
        }
        got.extend(drain(&mut q, usize::MAX));
        assert_eq!(got, sent);
    }
}
