//! Common random numbers per TCP segment: the draw that decides whether random loss takes a
//! segment is a hash of the path's seed, the segment's flow, its place in that flow and how
//! often it was sent before, instead of the next number of one stream shared by every frame.
//!
//! Why: the bench compares two TCP stacks on the same path one after the other. With one
//! stream per direction the two meet the same draws only until their sending first differs
//! (one more ACK, one segment split differently) and from then on independent losses; and
//! flows that run at once take their draws in the order their frames happen to interleave.
//! Keyed by content, the n-th new flow of either stack meets the same fate for the same bytes
//! (the segment at relative sequence s, its k-th transmission) wherever it falls in time, so
//! what differs between the stacks is how they react, not the luck of the draw. Every draw is
//! still uniform and independent of every other key, so a loss probability p loses each
//! transmission with probability p as before (the tests of this module check it).
//!
//! A flow is numbered when its SYN (or SYN-ACK) passes: the first flow after a reseed is 0.
//! A segment's place is the block of [`BLOCK`] bytes (a full segment's payload) of the byte
//! stream that holds its last byte: two stacks that cut the same stream differently (one
//! sends a response's header as a short segment of its own, shifting every boundary after it)
//! still meet the same draw for the segment that ends in block b. The segments that end in the
//! same block are told apart by their order, and a retransmission by how often its start was
//! sent. Segments that carry no sequence space (pure ACKs, window updates) are keyed by the
//! block of their acknowledgment number (relative to the flow's first ACK in this direction)
//! and their order within it (duplicate ACKs included). Frames of flows whose start was not
//! seen, resets and non-TCP frames get no key and take the link's own stream.

use std::collections::HashMap;

use super::{
    frame::TcpSeg,
    link::{GOLDEN_GAMMA, mix64},
};

/// Flows seen in one direction since the last reseed.
#[derive(Debug, Default)]
pub struct Flows {
    seed: u64,
    next: u32,
    flows: HashMap<(u128, u128, u16, u16), Flow>,
}

#[derive(Debug)]
struct Flow {
    index: u32,
    /// The SYN's sequence number.
    isn: u32,
    /// One past the highest relative sequence number sent so far.
    high: u32,
    /// Transmissions after the first, per relative sequence number resent.
    resent: HashMap<u32, u32>,
    /// The acknowledgment number of the flow's first ACK in this direction.
    ack_base: Option<u32>,
    /// The block the last new segment ended in and how many before it ended there.
    last_end: (u32, u32),
    /// The block of the last pure ACK's acknowledgment number and how many before it fell there.
    last_ack: (u32, u32),
}

/// The bytes of a place in a flow: a full-size segment's payload at MTU 1500 with timestamps
/// (IPv4). Other sizes only change which segments share a block, which their order in it
/// tells apart.
pub const BLOCK: u32 = 1448;

/// Flows kept at most; beyond, new flows take the link's stream (a bench or test opens far
/// fewer between reseeds).
const MAX_FLOWS: usize = 1 << 16;

impl Flows {
    pub fn new(seed: u64) -> Self {
        Self { seed, ..Self::default() }
    }

    /// Forget every flow; the next one to start is flow 0 again, with draws from `seed`.
    pub fn reset(&mut self, seed: u64) {
        *self = Self::new(seed);
    }

    /// The uniform 64-bit draw for this segment, or `None` when it has no key.
    pub fn draw(&mut self, s: &TcpSeg) -> Option<u64> {
        if s.rst {
            return None;
        }
        if s.syn {
            let (next, room) = (self.next, self.flows.len() < MAX_FLOWS);
            let fresh = || Flow { index: next, isn: s.seq, high: 0, resent: HashMap::new(), ack_base: None, last_end: (u32::MAX, 0), last_ack: (u32::MAX, 0) };
            match self.flows.get_mut(&s.tuple) {
                // A SYN again: a retransmission (keyed below), or a new connection on the tuple.
                Some(f) if f.isn == s.seq => {}
                Some(f) => {
                    *f = fresh();
                    self.next += 1;
                }
                None if room => {
                    self.flows.insert(s.tuple, fresh());
                    self.next += 1;
                }
                None => return None,
            }
        }
        let f = self.flows.get_mut(&s.tuple)?;
        if s.acks && f.ack_base.is_none() {
            f.ack_base = Some(s.ack);
        }
        let len = s.payload + u32::from(s.syn) + u32::from(s.fin);
        let (kind, block, order, nth) = if len > 0 {
            let rel = s.seq.wrapping_sub(f.isn);
            // Data starts one after the SYN: the block of the last byte of payload (a FIN
            // counts as the byte before it; a SYN has a place of its own).
            let block = if s.syn { u32::MAX } else { rel.wrapping_add(len).wrapping_sub(2) / BLOCK };
            // Sequence space wraps; a flow of ours stays far below 2 GiB, so "before `high`"
            // is a plain comparison in the half space.
            let (order, nth) = if rel.wrapping_sub(f.high) as i32 >= 0 {
                f.last_end = if f.last_end.0 == block { (block, f.last_end.1 + 1) } else { (block, 0) };
                (f.last_end.1, 0)
            } else {
                let n = f.resent.entry(rel).or_insert(0);
                *n += 1;
                (0, *n)
            };
            if rel.wrapping_add(len).wrapping_sub(f.high) as i32 > 0 {
                f.high = rel.wrapping_add(len);
            }
            (0, block, order, nth)
        } else {
            let block = s.ack.wrapping_sub(f.ack_base.unwrap_or(s.ack)) / BLOCK;
            f.last_ack = if f.last_ack.0 == block { (block, f.last_ack.1 + 1) } else { (block, 0) };
            (1, block, f.last_ack.1, 0)
        };
        Some(mix(&[self.seed, u64::from(f.index), kind, u64::from(block), u64::from(order), u64::from(nth)]))
    }
}

/// SplitMix64 folded over the parts: every part moves every bit of the result.
fn mix(parts: &[u64]) -> u64 {
    parts.iter().fold(0x6a09_e667_f3bc_c908, |h, &p| mix64((h ^ p).wrapping_add(GOLDEN_GAMMA)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(port: u16, seq: u32, ack: u32, payload: u32, syn: bool) -> TcpSeg {
        TcpSeg { tuple: (1, 2, port, 80), seq, ack, syn, fin: false, rst: false, acks: ack != 0, payload }
    }

    /// The draws of a flow that starts at `isn` and sends `n` full segments, then resends the
    /// third.
    fn run(flows: &mut Flows, port: u16, isn: u32, n: u32) -> Vec<u64> {
        let mut out = vec![flows.draw(&seg(port, isn, 0, 0, true)).unwrap()];
        for i in 0..n {
            out.push(flows.draw(&seg(port, isn.wrapping_add(1 + i * 1448), 9, 1448, false)).unwrap());
        }
        out.push(flows.draw(&seg(port, isn.wrapping_add(1 + 2 * 1448), 9, 1448, false)).unwrap());
        out
    }

    #[test]
    fn the_nth_flow_meets_the_same_draws_for_the_same_bytes_whatever_its_numbers() {
        let mut a = Flows::new(7);
        let mut b = Flows::new(7);
        // Other ports, other initial sequence numbers, the same place in the stream.
        assert_eq!(run(&mut a, 1000, 5, 20), run(&mut b, 2000, 0xffff_ff00, 20));
        // The second flow of each: the same as each other, not as the first.
        let (a2, b2) = (run(&mut a, 1001, 77, 20), run(&mut b, 2001, 99, 20));
        assert_eq!(a2, b2);
        let mut c = Flows::new(7);
        assert_ne!(a2, run(&mut c, 1000, 5, 20));
        // Another seed, other draws.
        assert_ne!(run(&mut Flows::new(8), 1000, 5, 20), run(&mut Flows::new(7), 1000, 5, 20));
    }

    #[test]
    fn a_stream_cut_differently_meets_the_same_draws_for_the_segment_ending_in_each_block() {
        // One stack sends a 200-byte head on its own, shifting every boundary after it; the
        // other sends full segments from the start. The head ends in block 0 as the other's
        // first segment does; segment i after it ends in block i + 1 (its last byte is byte
        // 200 + 1448 (i + 1) - 1 of the stream) as the other's segment i + 1 does.
        let mut a = Flows::new(5);
        let mut b = Flows::new(5);
        a.draw(&seg(1, 0, 0, 0, true));
        b.draw(&seg(2, 0, 0, 0, true));
        let head = a.draw(&seg(1, 1, 9, 200, false)).unwrap();
        let xa: Vec<u64> = (0..50).map(|i| a.draw(&seg(1, 201 + i * 1448, 9, 1448, false)).unwrap()).collect();
        let xb: Vec<u64> = (0..51).map(|i| b.draw(&seg(2, 1 + i * 1448, 9, 1448, false)).unwrap()).collect();
        assert_eq!(head, xb[0], "both end in block 0");
        assert_eq!(xa[..], xb[1..]);
        // Two small segments ending in one block draw apart.
        let mut c = Flows::new(5);
        c.draw(&seg(3, 0, 0, 0, true));
        assert_ne!(c.draw(&seg(3, 1, 9, 100, false)), c.draw(&seg(3, 101, 9, 100, false)));
    }

    #[test]
    fn a_resent_segment_draws_anew_each_time() {
        let mut f = Flows::new(1);
        let d = run(&mut f, 1, 0, 5);
        // Segment 3 (index 3 after the SYN) first sent, then resent: different draws; sent a
        // third time: different again.
        assert_ne!(d[3], d[6]);
        let third = f.draw(&seg(1, 1 + 2 * 1448, 9, 1448, false)).unwrap();
        assert!(third != d[3] && third != d[6]);
    }

    #[test]
    fn pure_acks_are_keyed_by_what_they_acknowledge_and_their_repeats() {
        let mut a = Flows::new(3);
        let mut b = Flows::new(3);
        a.draw(&seg(1, 10, 0, 0, true));
        b.draw(&seg(2, 90, 0, 0, true));
        let acks = |f: &mut Flows, port: u16, base: u32, seq: u32, shift: u32| -> Vec<u64> {
            [0, 2896, 2896, 5792].iter().map(|&r| f.draw(&seg(port, seq, base + r + shift, 0, false)).unwrap()).collect()
        };
        // The second acknowledges a stream cut 100 bytes later: the same blocks.
        let (x, y) = (acks(&mut a, 1, 500, 11, 0), acks(&mut b, 2, 7000, 91, 100));
        assert_eq!(x[1..], y[1..]);
        assert_ne!(x[1], x[2], "a duplicate ACK is its own draw");
    }

    #[test]
    fn flows_not_seen_from_their_start_and_resets_have_no_key() {
        let mut f = Flows::new(1);
        assert_eq!(f.draw(&seg(1, 500, 9, 1448, false)), None);
        f.draw(&seg(1, 500, 0, 0, true)).unwrap();
        assert_eq!(f.draw(&TcpSeg { rst: true, ..seg(1, 501, 9, 0, false) }), None);
        // Reset: forgotten, and the next flow is flow 0 again.
        let first = f.draw(&seg(3, 0, 0, 0, true)).unwrap();
        f.reset(1);
        assert_eq!(f.draw(&seg(1, 501, 9, 1448, false)), None);
        assert_eq!(f.draw(&seg(4, 123, 0, 0, true)), Some(Flows::new(1).draw(&seg(9, 0, 0, 0, true)).unwrap()));
        // The second flow after the reset draws as the second before it did.
        assert_eq!(first, f.draw(&seg(5, 0, 0, 0, true)).unwrap());
    }

    #[test]
    fn keyed_draws_are_uniform() {
        // Random loss at p over keyed draws loses a share p of the segments, as the link's
        // own stream does: 200 flows of 500 segments at 3%.
        let mut f = Flows::new(11);
        let mut lost = 0;
        let mut n = 0;
        for port in 0..200u16 {
            f.draw(&seg(port, u32::from(port) * 7919, 0, 0, true));
            for i in 0..500u32 {
                let d = f.draw(&seg(port, u32::from(port) * 7919 + 1 + i * 1448, 5, 1448, false)).unwrap();
                lost += u32::from(crate::path::link::unit(d) < 0.03);
                n += 1;
            }
        }
        let share = f64::from(lost) / f64::from(n);
        assert!((share - 0.03).abs() < 0.003, "{share}");
    }
}
