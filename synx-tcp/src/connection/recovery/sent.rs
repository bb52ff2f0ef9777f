//! The segments between SND.UNA and SND.NXT, one record each (the SACK scoreboard of RFC 6675
//! and the per-segment send times RACK needs, RFC 8985 5.2): where each starts and ends, when
//! it was last sent, whether the peer SACKed it, whether we consider it lost (and so no longer
//! in flight), whether it was ever retransmitted. Allocated while data is in flight, freed
//! when all is acknowledged.

use std::collections::VecDeque;

use crate::Instant;
use crate::seq::SeqNum;

/// The peer holds it (SACKed).
pub const SACKED: u8 = 1;
/// Considered lost: no longer in flight, waiting to be retransmitted.
pub const LOST: u8 = 2;
/// Sent more than once.
pub const RETRANS: u8 = 4;
/// Carries our FIN (its last sequence number).
pub const FIN: u8 = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sent {
    pub seq: SeqNum,
    /// Sequence space it covers (the FIN counts one).
    pub len: u16,
    pub flags: u8,
    /// When it was last (re)sent.
    pub xmit: Instant,
}

impl Sent {
    pub fn end(&self) -> SeqNum {
        self.seq + self.len as u32
    }
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
    /// Payload bytes (the FIN's sequence number is not one).
    pub fn data_len(&self) -> u32 {
        self.len as u32 - u32::from(self.has(FIN))
    }
    fn in_flight(&self) -> bool {
        self.flags & (SACKED | LOST) == 0
    }
}

#[derive(Debug, Default)]
pub struct SentQueue {
    segs: VecDeque<Sent>,
    /// Sequence space of SACKED records.
    sacked: u32,
    /// Sequence space of LOST records (not SACKED).
    lost: u32,
}

impl SentQueue {
    pub fn is_empty(&self) -> bool {
        self.segs.is_empty()
    }

    pub fn sacked_bytes(&self) -> u32 {
        self.sacked
    }

    #[cfg(test)]
    pub fn lost_bytes(&self) -> u32 {
        self.lost
    }

    pub fn iter(&self) -> impl Iterator<Item = &Sent> {
        self.segs.iter()
    }

    pub fn last(&self) -> Option<&Sent> {
        self.segs.back()
    }

    /// Sequence space in flight (RFC 6675 SetPipe): sent, not SACKed, not lost.
    pub fn in_flight(&self) -> u32 {
        let span = match (self.segs.front(), self.segs.back()) {
            (Some(f), Some(b)) => b.end().since(f.seq),
            _ => 0,
        };
        span - self.sacked - self.lost
    }

    /// New data `[seq, seq + len)` (with our FIN if `fin`) went out at `now`.
    pub fn push(&mut self, seq: SeqNum, len: u32, fin: bool, now: Instant) {
        let len = len + u32::from(fin);
        if len == 0 {
            return;
        }
        debug_assert!(self.segs.back().is_none_or(|b| b.end() == seq), "records are contiguous");
        self.segs.push_back(Sent { seq, len: len as u16, flags: if fin { FIN } else { 0 }, xmit: now });
    }

    fn index_of(&self, seq: SeqNum) -> Option<usize> {
        let i = self.segs.partition_point(|s| s.end().le(seq));
        (i < self.segs.len() && self.segs[i].seq.le(seq)).then_some(i)
    }

    /// Split the record holding `at` so that one starts there; no-op at a record boundary.
    fn split_at(&mut self, at: SeqNum) {
        let Some(i) = self.index_of(at) else { return };
        let s = self.segs[i];
        if s.seq == at {
            return;
        }
        let head = at.since(s.seq) as u16;
        let tail = Sent { seq: at, len: s.len - head, flags: s.flags, xmit: s.xmit };
        self.segs[i] = Sent { len: head, flags: s.flags & !FIN, ..s };
        self.segs.insert(i + 1, tail);
    }

    fn set_flag(&mut self, i: usize, flag: u8) {
        let s = &mut self.segs[i];
        if s.flags & flag != 0 {
            return;
        }
        let len = s.len as u32;
        match flag {
            SACKED => {
                if s.has(LOST) {
                    self.lost -= len;
                }
                self.sacked += len;
            }
            LOST if !s.has(SACKED) => self.lost += len,
            _ => {}
        }
        s.flags |= flag;
    }

    fn clear_flag(&mut self, i: usize, flag: u8) {
        let s = &mut self.segs[i];
        if s.flags & flag == 0 {
            return;
        }
        let len = s.len as u32;
        match flag {
            SACKED => {
                self.sacked -= len;
                if s.has(LOST) {
                    self.lost += len;
                }
            }
            LOST if !s.has(SACKED) => self.lost -= len,
            _ => {}
        }
        s.flags &= !flag;
    }

    /// Records fully at or below `una` are acknowledged: remove them, calling `delivered` for
    /// each that was not SACKed before (and so is newly delivered). A record `una` cuts is
    /// trimmed.
    pub fn ack(&mut self, una: SeqNum, mut delivered: impl FnMut(&Sent)) {
        while let Some(&s) = self.segs.front() {
            if s.end().le(una) {
                self.segs.pop_front();
                if s.has(SACKED) {
                    self.sacked -= s.len as u32;
                } else {
                    if s.has(LOST) {
                        self.lost -= s.len as u32;
                    }
                    delivered(&s);
                }
            } else {
                if s.seq.lt(una) {
                    self.split_at(una);
                    continue;
                }
                break;
            }
        }
        if self.segs.is_empty() {
            // Drop the allocation too: an idle connection holds none.
            *self = Self::default();
        }
    }

    /// The peer SACKed `[left, right)`: mark the records inside it, calling `delivered` for
    /// each newly SACKed one. Records the block cuts are split at its edges.
    pub fn sack(&mut self, left: SeqNum, right: SeqNum, mut delivered: impl FnMut(&Sent)) {
        let (Some(first), Some(last)) = (self.segs.front(), self.segs.back()) else { return };
        let (left, right) = (left.max(first.seq), right.min(last.end()));
        if !left.lt(right) {
            return;
        }
        self.split_at(left);
        self.split_at(right);
        let Some(mut i) = self.index_of(left) else { return };
        while i < self.segs.len() && self.segs[i].end().le(right) {
            if !self.segs[i].has(SACKED) {
                self.set_flag(i, SACKED);
                delivered(&self.segs[i]);
            }
            i += 1;
        }
    }

    /// Mark lost each record in flight, in sequence order, for which `lost` says
    /// `Some(true)`, until it says `None`; returns the sequence space newly marked.
    pub fn mark_lost(&mut self, mut lost: impl FnMut(&Sent) -> Option<bool>) -> u32 {
        let mut marked = 0;
        for i in 0..self.segs.len() {
            let s = self.segs[i];
            if !s.in_flight() {
                continue;
            }
            match lost(&s) {
                Some(true) => {
                    self.set_flag(i, LOST);
                    marked += s.len as u32;
                }
                Some(false) => {}
                None => break,
            }
        }
        marked
    }

    /// The first record not SACKed (RFC 6582's "first unacknowledged segment"): mark it lost;
    /// returns the sequence space newly marked.
    pub fn mark_first_lost(&mut self) -> u32 {
        match self.segs.iter().position(|s| !s.has(SACKED)) {
            Some(i) if !self.segs[i].has(LOST) => {
                self.set_flag(i, LOST);
                self.segs[i].len as u32
            }
            _ => 0,
        }
    }

    /// A retransmission timeout: every record not SACKed is lost. If the first record is
    /// SACKed (it would have been acknowledged unless the receiver reneged, RFC 2018 8), the
    /// SACK information is forgotten and every record is lost.
    pub fn mark_all_lost(&mut self) {
        let reneged = self.segs.front().is_some_and(|s| s.has(SACKED));
        for i in 0..self.segs.len() {
            if reneged {
                self.clear_flag(i, SACKED);
            }
            self.set_flag(i, LOST);
        }
    }

    /// Undo a loss marking (the losses were spurious): lost records are in flight again.
    pub fn unmark_lost(&mut self) {
        for i in 0..self.segs.len() {
            self.clear_flag(i, LOST);
        }
    }

    /// Whether a retransmission is still in flight (neither SACKed nor lost again).
    pub fn retransmission_in_flight(&self) -> bool {
        self.segs.iter().any(|s| s.has(RETRANS) && s.in_flight())
    }

    /// The first lost record (RFC 6675 NextSeg rule 1): what to retransmit next.
    pub fn first_lost(&self) -> Option<Sent> {
        if self.lost == 0 {
            return None;
        }
        self.segs.iter().find(|s| s.has(LOST) && !s.has(SACKED)).copied()
    }

    /// The record at `seq` was (re)sent at `now`, its first `len` units of sequence space (the
    /// rest, if any, becomes a record of its own, still waiting).
    pub fn resent(&mut self, seq: SeqNum, len: u32, now: Instant) {
        let Some(i) = self.index_of(seq) else { return };
        if self.segs[i].seq != seq {
            return;
        }
        if len < self.segs[i].len as u32 {
            self.split_at(seq + len);
        }
        self.clear_flag(i, LOST);
        let s = &mut self.segs[i];
        s.flags |= RETRANS;
        s.xmit = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::from_nanos(ms * 1_000_000)
    }

    #[test]
    fn records_ack_sack_split_lose_and_resend() {
        let s = SeqNum;
        let mut q = SentQueue::default();
        for i in 0..5 {
            q.push(s(100 + 10 * i), 10, i == 4, at(i as u64));
        }
        assert_eq!(q.in_flight(), 51);
        // A SACK block cutting records 1 and 3: they split at its edges.
        let mut newly = Vec::new();
        q.sack(s(115), s(135), |r| newly.push((r.seq, r.len)));
        assert_eq!(newly, [(s(115), 5), (s(120), 10), (s(130), 5)]);
        assert_eq!((q.sacked_bytes(), q.in_flight()), (20, 31));
        // Lost: everything in flight sent before 2 ms.
        assert_eq!(q.mark_lost(|r| Some(r.xmit < at(2))), 15);
        assert_eq!(q.first_lost().map(|r| (r.seq, r.len)), Some((s(100), 10)));
        assert_eq!(q.in_flight(), 16);
        // Resent in part: the rest stays lost.
        q.resent(s(100), 4, at(10));
        assert_eq!(q.first_lost().map(|r| (r.seq, r.len)), Some((s(104), 6)));
        assert_eq!(q.in_flight(), 20);
        // Cumulative ACK to 117: records below go, the cut one is trimmed.
        let mut acked = Vec::new();
        q.ack(s(117), |r| acked.push((r.seq, r.len, r.flags)));
        assert_eq!(acked, [(s(100), 4, RETRANS), (s(104), 6, LOST), (s(110), 5, LOST)]);
        assert_eq!((q.sacked_bytes(), q.lost_bytes()), (18, 0));
        // An RTO with the first record SACKed (the receiver reneged): all lost, SACKs forgotten;
        // the FIN rides on the last record.
        q.mark_all_lost();
        assert_eq!((q.sacked_bytes(), q.lost_bytes(), q.in_flight()), (0, 34, 0));
        assert!(q.last().unwrap().has(FIN));
        q.ack(s(151), |_| {});
        assert!(q.is_empty());
        assert_eq!((q.sacked_bytes(), q.lost_bytes(), q.in_flight()), (0, 0, 0));
        // An RTO otherwise keeps what was SACKed.
        q.push(s(151), 10, false, at(20));
        q.push(s(161), 10, false, at(20));
        q.sack(s(161), s(171), |_| {});
        q.mark_all_lost();
        assert_eq!((q.sacked_bytes(), q.lost_bytes(), q.in_flight()), (10, 10, 0));
    }
}
