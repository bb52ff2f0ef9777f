//! Wrapping 32-bit sequence numbers (RFC 9293 3.4): comparisons are modulo 2^32, valid while the
//! two numbers are less than 2^31 apart.

use core::fmt;
use core::ops::{Add, AddAssign, Sub};

#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
pub struct SeqNum(pub u32);

impl SeqNum {
    pub const fn new(v: u32) -> Self {
        Self(v)
    }

    /// Signed distance from `other` to `self` (positive when `self` is after `other`).
    pub fn diff(self, other: SeqNum) -> i32 {
        self.0.wrapping_sub(other.0) as i32
    }
    /// RFC 9293 3.4: `a < b` iff `(a - b)` as a signed 32-bit number is negative.
    pub fn lt(self, other: Self) -> bool {
        self.diff(other) < 0
    }
    pub fn le(self, other: Self) -> bool {
        self.diff(other) <= 0
    }
    pub fn gt(self, other: Self) -> bool {
        self.diff(other) > 0
    }
    pub fn ge(self, other: Self) -> bool {
        self.diff(other) >= 0
    }
    /// `lo <= self < hi`, modulo 2^32.
    pub fn in_range(self, lo: Self, hi: Self) -> bool {
        self.ge(lo) && self.lt(hi)
    }
    /// Bytes from `earlier` to `self`; only meaningful when `earlier.le(self)`.
    pub fn since(self, earlier: Self) -> u32 {
        self.0.wrapping_sub(earlier.0)
    }
    pub fn max(self, other: Self) -> Self {
        if self.ge(other) { self } else { other }
    }
    pub fn min(self, other: Self) -> Self {
        if self.le(other) { self } else { other }
    }
}

impl Add<u32> for SeqNum {
    type Output = SeqNum;
    fn add(self, rhs: u32) -> SeqNum {
        SeqNum(self.0.wrapping_add(rhs))
    }
}

impl AddAssign<u32> for SeqNum {
    fn add_assign(&mut self, rhs: u32) {
        self.0 = self.0.wrapping_add(rhs);
    }
}

impl Sub<u32> for SeqNum {
    type Output = SeqNum;
    fn sub(self, rhs: u32) -> SeqNum {
        SeqNum(self.0.wrapping_sub(rhs))
    }
}

impl fmt::Debug for SeqNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for SeqNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn comparisons_at_the_wrap() {
        let max = SeqNum(u32::MAX);
        let zero = SeqNum(0);
        assert!(max.lt(zero));
        assert!(zero.gt(max));
        assert!(max.le(max) && max.ge(max));
        assert!(!max.lt(max));
        assert_eq!(max + 1, zero);
        assert_eq!(zero - 1, max);
        assert_eq!(SeqNum(5).since(SeqNum(u32::MAX - 4)), 10);
        assert!(SeqNum(2).in_range(SeqNum(u32::MAX - 1), SeqNum(3)));
        assert!(!SeqNum(3).in_range(SeqNum(u32::MAX - 1), SeqNum(3)));
        assert_eq!(SeqNum(1).max(SeqNum(u32::MAX)), SeqNum(1));
        assert_eq!(SeqNum(1).min(SeqNum(u32::MAX)), SeqNum(u32::MAX));
    }

    proptest! {
        #[test]
        fn order_is_translation_invariant(a: u32, d in 1u32..(1 << 31)) {
            let x = SeqNum(a);
            let y = x + d;
            prop_assert!(x.lt(y) && y.gt(x) && !y.lt(x) && x.le(y) && y.ge(x));
            prop_assert_eq!(y.since(x), d);
        }
    }
}
