//! Receive buffer: a ring holding in-order data not yet read by the application, followed by
//! out-of-order data tracked by a small fixed-size assembler. The ring is allocated on the first
//! byte, starts small and doubles as data needs it (up to `cap`): a 100-byte request does not
//! cost a `cap`-sized zeroed allocation. Read empty, a ring of the first size is kept for the
//! next segment (the engine reads it empty after every segment of a bulk flow, and a fresh
//! zeroed ring each time cost more than the copy), until [`RecvBuffer::release`] (the
//! connection goes quiet: parked, or memory is short): an idle connection holds no heap
//! memory. A ring grown larger (the reader fell behind, or holes) is freed when read empty.
//! Everything stored lies within the advertised window, so memory is bounded by `cap`.

/// Out-of-order ranges remembered at once; a segment that would need more is dropped (and the
/// peer retransmits it), which bounds both memory and work per segment. A window of hundreds of
/// segments on a path losing a few percent has that many holes, and each one dropped beyond
/// this costs a needless retransmission.
pub const MAX_RANGES: usize = 64;

/// First ring allocation, and the largest kept when read empty: a segment of a 1500-byte MTU
/// and what a reader a little behind leaves, read after every segment.
const MIN_RING: usize = 4096;

#[derive(Debug, Default)]
pub struct RecvBuffer {
    buf: Vec<u8>,
    cap: u32,
    head: u32,
    readable: u32,
    /// `[start, end)` offsets relative to RCV.NXT (the end of the readable data), sorted, disjoint,
    /// non-adjacent.
    /// Allocated with the first hole, freed with the last.
    ranges: Vec<(u32, u32)>,
}

impl RecvBuffer {
    pub fn new(cap: u32) -> Self {
        Self { cap, ..Default::default() }
    }

    pub fn readable(&self) -> usize {
        self.readable as usize
    }

    /// Bytes that may still arrive beyond RCV.NXT.
    pub fn window(&self) -> u32 {
        self.cap - self.readable
    }

    pub fn has_out_of_order(&self) -> bool {
        !self.ranges.is_empty()
    }

    pub fn out_of_order(&self) -> &[(u32, u32)] {
        &self.ranges
    }

    pub fn heap_bytes(&self) -> usize {
        self.buf.capacity() + self.ranges.capacity() * core::mem::size_of::<(u32, u32)>()
    }

    /// Capacity: the window when nothing is unread.
    pub fn cap(&self) -> u32 {
        self.cap
    }

    /// Let the buffer hold more (a window once offered is never taken back); the ring grows
    /// as data needs it.
    pub fn grow_to(&mut self, cap: u32) {
        self.cap = self.cap.max(cap);
    }

    /// Store `data` at `offset` bytes past RCV.NXT; the caller has trimmed it to the window.
    /// Returns how far RCV.NXT advances (0 for out-of-order data), or `None` if the data could
    /// not be stored (too many holes).
    pub fn write(&mut self, offset: u32, data: &[u8]) -> Option<u32> {
        let len = data.len() as u32;
        if len == 0 || offset.saturating_add(len) > self.window() {
            return (len == 0).then_some(0);
        }
        // Grow first: the ring must still describe only what it holds while it is copied.
        self.reserve((self.readable + offset + len) as usize);
        if offset > 0 && !self.insert_range(offset, offset + len) {
            return None;
        }
        let start = (self.head as usize + self.readable as usize + offset as usize) % self.buf.len();
        let first = data.len().min(self.buf.len() - start);
        self.buf[start..start + first].copy_from_slice(&data[..first]);
        self.buf[..data.len() - first].copy_from_slice(&data[first..]);
        if offset > 0 {
            return Some(0);
        }
        // In order: advance over this data and any out-of-order range it now touches.
        let mut advance = len;
        let mut keep = 0;
        for i in 0..self.ranges.len() {
            let (s, e) = self.ranges[i];
            if s <= advance {
                advance = advance.max(e);
            } else {
                self.ranges[keep] = (s - advance, e - advance);
                keep += 1;
            }
        }
        // Ranges are sorted: once one lies beyond `advance`, so do the rest, and `advance` no
        // longer changes, so each kept range was shifted by the final value.
        self.ranges.truncate(keep);
        if self.ranges.is_empty() {
            self.ranges = Vec::new();
        }
        self.readable += advance;
        Some(advance)
    }

    /// Make the ring hold at least `need` bytes from the head (at most `cap`), keeping what it
    /// holds: readable data and out-of-order ranges, laid out again from index 0.
    fn reserve(&mut self, need: usize) {
        if need <= self.buf.len() {
            return;
        }
        let size = need.next_power_of_two().max(MIN_RING).min(self.cap as usize);
        let mut grown = vec![0u8; size];
        let old = self.buf.len();
        if old > 0 {
            // The span in use: readable data plus everything up to the last out-of-order byte.
            let used = self.readable as usize + self.out_of_order().last().map_or(0, |r| r.1 as usize);
            let head = self.head as usize;
            let first = used.min(old - head);
            grown[..first].copy_from_slice(&self.buf[head..head + first]);
            grown[first..used].copy_from_slice(&self.buf[..used - first]);
        }
        self.buf = grown;
        self.head = 0;
    }

    /// Add `[s, e)` to the assembler, merging overlapping or adjacent ranges; false when full.
    fn insert_range(&mut self, s: u32, e: u32) -> bool {
        // The first range ending at or after `s`, and the first starting after `e`: those in
        // between touch [s, e) and merge with it.
        let first = self.ranges.partition_point(|&(_, re)| re < s);
        let last = self.ranges.partition_point(|&(rs, _)| rs <= e);
        if first == last && self.ranges.len() >= MAX_RANGES {
            return false;
        }
        let merged = if first < last {
            (s.min(self.ranges[first].0), e.max(self.ranges[last - 1].1))
        } else {
            (s, e)
        };
        self.ranges.splice(first..last, [merged]);
        true
    }

    /// Free the ring if nothing is left in it (no unread data, no out-of-order data).
    pub fn release(&mut self) {
        if self.readable == 0 && self.ranges.is_empty() {
            self.buf = Vec::new();
            self.head = 0;
        }
    }

    /// Copy in-order data out; read empty, a ring of at most [`MIN_RING`] bytes stays
    /// allocated (see [`RecvBuffer::release`]), a larger one is freed.
    pub fn read(&mut self, out: &mut [u8]) -> usize {
        let mut at = 0;
        self.read_with(out.len(), |part| {
            out[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        })
    }

    /// [`RecvBuffer::read`] without a buffer in between: up to `max` bytes of in-order data go
    /// to `take` where they lie, in one piece or two (the ring's wrap), and are consumed.
    pub fn read_with(&mut self, max: usize, mut take: impl FnMut(&[u8])) -> usize {
        let n = max.min(self.readable as usize);
        if n == 0 {
            return 0;
        }
        let head = self.head as usize;
        let first = n.min(self.buf.len() - head);
        take(&self.buf[head..head + first]);
        if first < n {
            take(&self.buf[..n - first]);
        }
        self.head = ((head + n) % self.buf.len()) as u32;
        self.readable -= n as u32;
        if self.readable == 0 && self.ranges.is_empty() {
            // Empty: the next segment starts at the front, in one piece.
            self.head = 0;
            if self.buf.len() > MIN_RING {
                self.buf = Vec::new();
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_out_of_order_overlap_and_wrap() {
        let mut b = RecvBuffer::new(8);
        assert_eq!(b.heap_bytes(), 0);
        assert_eq!(b.write(0, b"abc"), Some(3));
        assert_eq!(b.write(2, b"fg"), Some(0)); // offset 2 past "abc": f at 5, g at 6
        assert_eq!(b.out_of_order(), &[(2, 4)]);
        assert_eq!(b.write(0, b"de"), Some(4)); // fills the hole, joins "fg"
        assert!(!b.has_out_of_order());
        let mut out = [0u8; 16];
        assert_eq!(b.read(&mut out[..5]), 5);
        assert_eq!(&out[..5], b"abcde");
        assert_eq!(b.window(), 6);
        // Wraps around the ring end.
        assert_eq!(b.write(0, b"hijkl"), Some(5));
        assert_eq!(b.window(), 1);
        assert_eq!(b.write(0, b"xy"), None); // beyond the window
        let n = b.read(&mut out);
        assert_eq!(&out[..n], b"fghijkl");
        // Read empty: the ring stays for the next segment, until released.
        assert_eq!(b.heap_bytes(), 8);
        b.release();
        assert_eq!(b.heap_bytes(), 0);
    }

    #[test]
    fn read_with_hands_out_wrapped_data_in_two_pieces_up_to_max() {
        let mut b = RecvBuffer::new(8);
        assert_eq!(b.write(0, b"abcdef"), Some(6));
        let mut out = [0u8; 4];
        assert_eq!(b.read(&mut out), 4);
        // "efgh" at the ring's end, "ij" wrapped to its front.
        assert_eq!(b.write(0, b"ghij"), Some(4));
        let mut pieces: Vec<Vec<u8>> = Vec::new();
        assert_eq!(b.read_with(5, |p| pieces.push(p.to_vec())), 5);
        assert_eq!(pieces, [b"efgh".to_vec(), b"i".to_vec()]);
        assert_eq!(b.readable(), 1);
        assert_eq!(b.window(), 7);
        pieces.clear();
        assert_eq!(b.read_with(usize::MAX, |p| pieces.push(p.to_vec())), 1);
        assert_eq!(pieces, [b"j".to_vec()]);
        assert_eq!(b.read_with(usize::MAX, |_| panic!("nothing to hand out")), 0);
    }

    #[test]
    fn the_ring_grows_with_the_data_and_keeps_it() {
        let mut b = RecvBuffer::new(1 << 20);
        assert_eq!(b.write(0, &[1; 100]), Some(100));
        assert_eq!(b.heap_bytes(), MIN_RING);
        let mut out = [0u8; 60];
        assert_eq!(b.read(&mut out), 60); // head moves: the next growth must unwrap the ring
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        assert_eq!(b.write(5000, &data[5000..6000]), Some(0)); // out of order, grows
        assert_eq!(b.write(0, &data[..5000]), Some(6000));
        assert!(b.heap_bytes() >= 6040 && b.heap_bytes() <= 16384);
        let mut all = vec![0u8; 7000];
        let n = b.read(&mut all);
        assert_eq!(n, 6040);
        assert_eq!(&all[..40], &[1; 40]);
        assert_eq!(&all[40..6040], &data[..6000]);
        assert_eq!(b.heap_bytes(), 0, "grown beyond its first size: freed when read empty");
    }

    #[test]
    fn read_empty_the_ring_is_reused_until_released() {
        let mut b = RecvBuffer::new(1 << 20);
        let mut out = [0u8; 2000];
        // A bulk flow's reader empties the ring after every segment: one allocation serves
        // them all, each segment starting at the front.
        assert_eq!(b.write(0, &[7; 1448]), Some(1448));
        let ring = b.heap_bytes();
        assert_eq!(ring, MIN_RING);
        for i in 0..100u8 {
            if i > 0 {
                assert_eq!(b.write(0, &[i; 1448]), Some(1448));
            }
            let n = b.read(&mut out);
            assert_eq!(n, 1448);
            assert!(out[..n].iter().all(|&x| x == if i == 0 { 7 } else { i }));
            assert_eq!(b.heap_bytes(), ring, "segment {i}: the ring was kept");
        }
        // Not released while something is unread or out of order.
        assert_eq!(b.write(10, b"x"), Some(0));
        b.release();
        assert!(b.heap_bytes() > ring, "the ring and the assembler's range");
        assert_eq!(b.write(0, &[1; 10]), Some(11));
        b.release();
        assert_eq!(b.heap_bytes(), ring);
        assert_eq!(b.read(&mut out), 11);
        b.release();
        assert_eq!(b.heap_bytes(), 0);
        // And it starts again from nothing.
        assert_eq!(b.write(0, b"abc"), Some(3));
        assert_eq!(b.heap_bytes(), MIN_RING);
    }

    #[test]
    fn too_many_holes_is_refused() {
        let mut b = RecvBuffer::new(1000);
        for i in 0..MAX_RANGES as u32 {
            assert_eq!(b.write(2 + 3 * i, b"x"), Some(0));
        }
        assert_eq!(b.out_of_order().len(), MAX_RANGES);
        assert_eq!(b.write(500, b"x"), None);
        // Merging into an existing range still works.
        assert_eq!(b.write(3, b"y"), Some(0));
        assert_eq!(b.write(0, b"ab"), Some(4));
    }
}
