//! RACK (RFC 8985 6): a segment is lost once a segment sent after it has been delivered and
//! more than an RTT plus a reordering window has passed since it was sent. The reordering
//! window starts at min_RTT/4, drops to zero while no reordering has been seen and a loss is
//! being recovered, and widens by min_RTT/4 for each round trip in which a DSACK showed a
//! retransmission to have been spurious (as Linux's tcp_rack_update_reo_wnd).

use core::time::Duration;

use super::sent::{RETRANS, Sent, SentQueue};
use crate::Instant;
use crate::seq::SeqNum;

/// RFC 8985 6.2 step 4: recoveries the widened window persists for.
const REO_WND_PERSIST: u8 = 16;
/// RFC 6675 2 DupThresh, in segments SACKed.
const DUP_THRESH: u32 = 3;

#[derive(Debug)]
pub struct Rack {
    /// RACK.xmit_ts and RACK.end_seq: the most recently sent segment delivered.
    xmit: Option<Instant>,
    end: SeqNum,
    /// RACK.rtt: that segment's round trip.
    rtt: Duration,
    /// RACK.fack: the highest sequence delivered.
    fack: SeqNum,
    /// RACK.reordering_seen.
    reordering_seen: bool,
    /// RACK.reo_wnd_mult and RACK.reo_wnd_persist.
    reo_wnd_mult: u8,
    reo_wnd_persist: u8,
    /// RACK.dsack_round: SND.NXT when the window was last widened for a DSACK.
    dsack_round: Option<SeqNum>,
    /// The smallest RTT seen, microseconds (`u32::MAX`: none yet). Linux keeps a 5-minute
    /// windowed minimum; the connection's minimum errs toward a narrower window.
    min_rtt_us: u32,
}

/// The part of RACK an idle connection keeps.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Folded {
    min_rtt_us: u32,
    reo_wnd_mult: u8,
    reo_wnd_persist: u8,
    reordering_seen: bool,
}

/// RFC 8985 6.2: `t1`/`seq1` was sent after `t2`/`seq2` (ties broken by sequence).
fn sent_after(t1: Instant, t2: Instant, seq1: SeqNum, seq2: SeqNum) -> bool {
    t1 > t2 || (t1 == t2 && seq1.gt(seq2))
}

impl Rack {
    pub fn new(una: SeqNum) -> Self {
        Self::unfold(&Folded { min_rtt_us: u32::MAX, reo_wnd_mult: 1, reo_wnd_persist: 0, reordering_seen: false }, una)
    }

    /// RACK.fack: the highest sequence delivered.
    pub fn fack(&self) -> SeqNum {
        self.fack
    }

    pub fn min_rtt(&self) -> Option<Duration> {
        (self.min_rtt_us != u32::MAX).then(|| Duration::from_micros(self.min_rtt_us as u64))
    }

    /// An RTT sample from a segment sent once (RFC 8985 6.2 step 1: min_RTT).
    pub fn on_rtt_sample(&mut self, rtt: Duration) {
        self.min_rtt_us = self.min_rtt_us.min(rtt.as_micros().min(u32::MAX as u128 - 1) as u32);
    }

    /// RFC 8985 6.2 steps 2 and 3, for a segment newly delivered (cumulatively or by SACK).
    pub fn on_delivered(&mut self, seg: &Sent, now: Instant) {
        let rtt = now.saturating_duration_since(seg.xmit);
        // Step 2: a retransmitted segment delivered sooner than min_RTT after its last
        // transmission was most likely the original's delivery: ambiguous, skipped.
        let ambiguous = seg.has(RETRANS) && self.min_rtt().is_none_or(|m| rtt < m);
        if !ambiguous && self.xmit.is_none_or(|x| sent_after(seg.xmit, x, seg.end(), self.end)) {
            self.xmit = Some(seg.xmit);
            self.end = seg.end();
            self.rtt = rtt;
        }
        // Step 3: delivered below the highest delivered without having been retransmitted:
        // the path reorders.
        if seg.end().gt(self.fack) {
            self.fack = seg.end();
        } else if seg.end().lt(self.fack) && !seg.has(RETRANS) {
            self.reordering_seen = true;
        }
    }

    /// The path reorders (or delays) beyond what was assumed, so the reordering window applies
    /// from now on: a DSACK arrived (something was delivered twice, most often a
    /// retransmission sent too early for a segment that was only late), or timestamps showed
    /// a retransmitted segment's hole filled by its late original.
    pub fn on_reordering(&mut self) {
        self.reordering_seen = true;
    }

    /// RFC 8985 6.2 step 4: a DSACK widens the window once per round trip (`snd_nxt` ends the
    /// round); after `REO_WND_PERSIST` recoveries without one it narrows again.
    pub fn update_reo_wnd(&mut self, una: SeqNum, snd_nxt: SeqNum, dsack: bool, recovery_ended: bool) {
        if self.dsack_round.is_some_and(|r| una.ge(r)) {
            self.dsack_round = None;
        }
        if self.dsack_round.is_none() && dsack {
            self.dsack_round = Some(snd_nxt);
            self.reo_wnd_mult = self.reo_wnd_mult.saturating_add(1);
            self.reo_wnd_persist = REO_WND_PERSIST;
        } else if recovery_ended {
            self.reo_wnd_persist = self.reo_wnd_persist.saturating_sub(1);
            if self.reo_wnd_persist == 0 {
                self.reo_wnd_mult = 1;
            }
        }
    }

    /// RFC 8985 6.2 step 4 (RACK.reo_wnd): zero while no reordering has been seen and a loss is
    /// being recovered or DupThresh segments are SACKed; else min_RTT/4 per step, at most SRTT.
    pub fn reo_wnd(&self, recovering: bool, sacked: u32, mss: u32, srtt: Option<Duration>) -> Duration {
        if !self.reordering_seen && (recovering || sacked >= DUP_THRESH * mss) {
            return Duration::ZERO;
        }
        let Some(min_rtt) = self.min_rtt() else { return Duration::ZERO };
        (min_rtt / 4 * self.reo_wnd_mult as u32).min(srtt.unwrap_or(Duration::MAX))
    }

    /// RFC 8985 6.2 step 5: mark lost every segment in flight sent before the most recently
    /// sent one delivered, once RACK.rtt + `reo_wnd` has passed since it was sent. Returns
    /// the segments marked and, when some may yet be lost, how long until they are (the
    /// reordering timer, RFC 8985 6.3).
    pub fn detect_loss(&self, q: &mut SentQueue, now: Instant, reo_wnd: Duration) -> (u32, Option<Duration>) {
        let Some(rack_xmit) = self.xmit else { return (0, None) };
        let mut timeout: Option<Duration> = None;
        let mut marked = 0;
        q.mark_lost(|s| {
            if !sent_after(rack_xmit, s.xmit, self.end, s.end()) {
                // Segments sent once go out in sequence order, and a retransmission precedes
                // in sequence everything first sent after it: past the first segment sent once
                // after RACK's, every segment was sent after it too.
                return if s.has(RETRANS) { Some(false) } else { None };
            }
            let deadline = s.xmit + self.rtt + reo_wnd;
            if deadline <= now {
                marked += 1;
                return Some(true);
            }
            let wait = deadline - now;
            timeout = Some(timeout.map_or(wait, |t| t.max(wait)));
            Some(false)
        });
        (marked, timeout)
    }

    /// Everything acknowledged (SND.UNA = SND.NXT): what RACK knows of segments in flight is
    /// moot, so it is reset. This never changes a later decision: every segment sent from
    /// now on is sent after any segment delivered so far.
    pub fn settle(&mut self, una: SeqNum) {
        self.xmit = None;
        self.end = una;
        self.rtt = Duration::ZERO;
        self.fack = una;
        self.dsack_round = None;
    }

    pub fn is_at_rest(&self, una: SeqNum) -> bool {
        self.xmit.is_none() && self.end == una && self.rtt.is_zero() && self.fack == una && self.dsack_round.is_none()
    }

    pub fn fold(&self) -> Folded {
        Folded {
            min_rtt_us: self.min_rtt_us,
            reo_wnd_mult: self.reo_wnd_mult,
            reo_wnd_persist: self.reo_wnd_persist,
            reordering_seen: self.reordering_seen,
        }
    }

    pub fn unfold(f: &Folded, una: SeqNum) -> Self {
        Self {
            xmit: None,
            end: una,
            rtt: Duration::ZERO,
            fack: una,
            reordering_seen: f.reordering_seen,
            reo_wnd_mult: f.reo_wnd_mult,
            reo_wnd_persist: f.reo_wnd_persist,
            dsack_round: None,
            min_rtt_us: f.min_rtt_us,
        }
    }
}
