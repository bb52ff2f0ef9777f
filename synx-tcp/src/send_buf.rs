//! Send buffer: bytes from SND.UNA on (sent but unacknowledged, then unsent), bounded by a
//! capacity. Allocated on the first write; when fully acknowledged it keeps its allocation for
//! the next burst (a bulk flow drains it over and over), until [`SendBuffer::release`] (the
//! connection goes quiet: parked, or memory is short) or the connection's end.

use std::collections::VecDeque;

#[derive(Debug, Default)]
pub struct SendBuffer {
    data: VecDeque<u8>,
    cap: u32,
}

impl SendBuffer {
    pub fn new(cap: u32) -> Self {
        Self { data: VecDeque::new(), cap }
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn free(&self) -> usize {
        (self.cap as usize).saturating_sub(self.data.len())
    }

    pub fn cap(&self) -> u32 {
        self.cap
    }

    /// Let the buffer hold more (it never shrinks).
    pub fn grow_to(&mut self, cap: u32) {
        self.cap = self.cap.max(cap);
    }

    pub fn heap_bytes(&self) -> usize {
        self.data.capacity()
    }

    /// Append as much of `bytes` as fits; returns how much was taken.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.free());
        // Grows by doubling as data is queued; never beyond what `cap` admits plus slack.
        self.data.extend(&bytes[..n]);
        n
    }

    /// Copy bytes starting `offset` past SND.UNA into `out`; returns how many.
    pub fn peek(&self, offset: usize, out: &mut [u8]) -> usize {
        if offset >= self.data.len() {
            return 0;
        }
        let n = out.len().min(self.data.len() - offset);
        let (a, b) = self.data.as_slices();
        if offset < a.len() {
            let first = n.min(a.len() - offset);
            out[..first].copy_from_slice(&a[offset..offset + first]);
            out[first..n].copy_from_slice(&b[..n - first]);
        } else {
            let o = offset - a.len();
            out[..n].copy_from_slice(&b[o..o + n]);
        }
        n
    }

    /// Drop `n` acknowledged bytes from the front (the allocation stays).
    pub fn ack(&mut self, n: usize) {
        let n = n.min(self.data.len());
        self.data.drain(..n);
    }

    /// Free the allocation if nothing is left in it.
    pub fn release(&mut self) {
        if self.data.is_empty() {
            self.data = VecDeque::new();
        }
    }

    pub fn clear(&mut self) {
        self.data = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_peek_ack_and_lazy() {
        let mut s = SendBuffer::new(5);
        assert_eq!(s.heap_bytes(), 0);
        assert_eq!(s.push(b"abcdefg"), 5);
        let mut out = [0; 8];
        assert_eq!(s.peek(2, &mut out), 3);
        assert_eq!(&out[..3], b"cde");
        s.ack(2);
        assert_eq!(s.push(b"xyz"), 2);
        assert_eq!(s.peek(0, &mut out), 5);
        assert_eq!(&out[..5], b"cdexy");
        s.ack(10);
        assert!(s.is_empty());
        // Emptied, it keeps its allocation for the next burst, until released.
        let held = s.heap_bytes();
        assert!(held >= 5);
        assert_eq!(s.push(b"again"), 5);
        assert_eq!(s.heap_bytes(), held, "refilled without allocating");
        s.release();
        assert_eq!(s.heap_bytes(), held, "not empty: kept");
        s.ack(5);
        s.release();
        assert_eq!(s.heap_bytes(), 0);
    }
}
