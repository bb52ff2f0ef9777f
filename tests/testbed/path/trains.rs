//! Trains: how one TCP flow's data segments reach the bottleneck. A segment that arrives within
//! one full frame's time at the bottleneck rate of the flow's previous data segment rides in
//! the same train: the queue cannot drain the one before it arrives, so a train of n segments
//! stands n frames deep in the queue for a moment. Where a drop-tail queue is nearly full, the
//! later segments of a long train are the ones it drops; a sender whose segments come in longer
//! trains loses more of them for the same share of the link (the burstiness a fairness
//! comparison has to rule out or name).
//!
//! Each data segment gets its position in its train (1 for the first); the counters keep them
//! in [`BUCKETS`] buckets, see [`bucket`].

use std::collections::HashMap;

use super::link::Nanos;

/// Position buckets: 1st, 2nd, 3rd-4th, 5th-8th, 9th-16th, 17th and later.
pub const BUCKETS: usize = 6;

/// The bucket of a segment's 1-based position in its train.
pub fn bucket(position: u32) -> usize {
    // 1 -> 0, 2 -> 1, 3..=4 -> 2, 5..=8 -> 3, ...
    ((u32::BITS - position.saturating_sub(1).leading_zeros()) as usize).min(BUCKETS - 1)
}

/// The lower edge of a bucket's positions.
fn bucket_first(b: usize) -> u32 {
    if b == 0 { 1 } else { (1 << (b - 1)) + 1 }
}

/// A bucket's positions as a label: `1`, `2`, `3-4`, ..., `17+`.
pub fn bucket_label(b: usize) -> String {
    let first = bucket_first(b);
    if b + 1 >= BUCKETS {
        format!("{first}+")
    } else if bucket_first(b + 1) == first + 1 {
        first.to_string()
    } else {
        format!("{first}-{}", bucket_first(b + 1) - 1)
    }
}

/// Flows kept at most; past it the table starts over (a bench opens far fewer at once).
const MAX_FLOWS: usize = 1 << 16;

/// Every flow's last data segment and its position in its train.
#[derive(Debug, Default)]
pub struct Trains {
    flows: HashMap<(u128, u128, u16, u16), (Nanos, u32)>,
}

impl Trains {
    /// The 1-based position in its flow's train of a data segment of `tuple` arriving `at`,
    /// where segments no more than `gap` apart ride together. Arrivals come in time order.
    pub fn position(&mut self, tuple: (u128, u128, u16, u16), at: Nanos, gap: Nanos) -> u32 {
        if self.flows.len() >= MAX_FLOWS && !self.flows.contains_key(&tuple) {
            self.flows.clear();
        }
        let e = self.flows.entry(tuple).or_insert((at, 0));
        let position = if e.1 > 0 && at.saturating_sub(e.0) <= gap { e.1 + 1 } else { 1 };
        *e = (at, position);
        position
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: (u128, u128, u16, u16) = (1, 2, 3, 4);
    const B: (u128, u128, u16, u16) = (1, 2, 3, 5);

    #[test]
    fn segments_closer_than_the_gap_ride_one_train_per_flow() {
        let mut t = Trains::default();
        let gap = 100;
        // A: 0, 50, 150 (each within 100 of the last) then 300 (a new train).
        assert_eq!(t.position(A, 0, gap), 1);
        assert_eq!(t.position(B, 10, gap), 1);
        assert_eq!(t.position(A, 50, gap), 2);
        assert_eq!(t.position(B, 60, gap), 2);
        assert_eq!(t.position(A, 150, gap), 3);
        assert_eq!(t.position(A, 300, gap), 1);
        // B's gap ran out meanwhile; a GSO super-frame's segments share one arrival.
        assert_eq!(t.position(B, 161, gap), 1);
        assert_eq!(t.position(B, 161, gap), 2);
    }

    #[test]
    fn buckets_double() {
        let got: Vec<usize> = (1..=20).map(bucket).collect();
        assert_eq!(got, [0, 1, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5]);
        assert_eq!(bucket(u32::MAX), BUCKETS - 1);
        assert_eq!((0..BUCKETS).map(bucket_first).collect::<Vec<_>>(), [1, 2, 3, 5, 9, 17]);
        for b in 0..BUCKETS {
            assert_eq!(bucket(bucket_first(b)), b);
        }
        assert_eq!((0..BUCKETS).map(bucket_label).collect::<Vec<_>>(), ["1", "2", "3-4", "5-8", "9-16", "17+"]);
    }
}
