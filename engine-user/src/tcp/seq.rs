//! Sequence numbers: 32-bit, compared modulo 2^32 (RFC 9293 3.4).

use core::{cmp::Ordering, fmt, ops};

#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SeqNum(pub u32);

impl SeqNum {
    /// Signed distance from `other` to `self` (positive when `self` is after `other`).
    pub fn diff(self, other: SeqNum) -> i32 {
        self.0.wrapping_sub(other.0) as i32
    }
    pub fn lt(self, o: SeqNum) -> bool {
        self.diff(o) < 0
    }
    pub fn le(self, o: SeqNum) -> bool {
        self.diff(o) <= 0
    }
    pub fn gt(self, o: SeqNum) -> bool {
        self.diff(o) > 0
    }
    pub fn ge(self, o: SeqNum) -> bool {
        self.diff(o) >= 0
    }
    /// `lo <= self < hi`, modulo 2^32.
    pub fn in_range(self, lo: SeqNum, hi: SeqNum) -> bool {
        self.ge(lo) && self.lt(hi)
    }
    pub fn max(self, o: SeqNum) -> SeqNum {
        if self.ge(o) { self } else { o }
    }
}

impl ops::Add<u32> for SeqNum {
    type Output = SeqNum;
    fn add(self, n: u32) -> SeqNum {
        SeqNum(self.0.wrapping_add(n))
    }
}

impl ops::Sub<u32> for SeqNum {
    type Output = SeqNum;
    fn sub(self, n: u32) -> SeqNum {
        SeqNum(self.0.wrapping_sub(n))
    }
}

impl ops::AddAssign<u32> for SeqNum {
    fn add_assign(&mut self, n: u32) {
        self.0 = self.0.wrapping_add(n);
    }
}

impl ops::Sub<SeqNum> for SeqNum {
    type Output = u32;
    /// Bytes from `o` up to `self` (callers ensure `self >= o`).
    fn sub(self, o: SeqNum) -> u32 {
        self.0.wrapping_sub(o.0)
    }
}

impl PartialOrd for SeqNum {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.diff(*o).cmp(&0))
    }
}

impl fmt::Debug for SeqNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparisons_wrap() {
        let a = SeqNum(u32::MAX - 5);
        let b = a + 10;
        assert_eq!(b.0, 4);
        assert!(a.lt(b) && b.gt(a) && a.le(a) && b.ge(b));
        assert_eq!(b - a, 10);
        assert!(SeqNum(3).in_range(a, b));
        assert!(!b.in_range(a, b));
        assert_eq!(a.max(b), b);
    }
}
