//! Loss recovery: how much is in flight ("pipe"), when a loss is declared (duplicate ACKs, SACK,
//! early retransmit), what to resend next, the tail-loss probe (RFC 8985 7), RTT measurement
//! and the retransmission timeout's backoff. The congestion window itself is [`Congestion`]'s;
//! every change to it goes through its methods from here.

use core::time::Duration;
use std::collections::VecDeque;

use super::send::SendHalf;
use crate::congestion::Congestion;
use crate::rtt::RttEstimator;
use crate::sack::Scoreboard;
use crate::seq::SeqNum;
use crate::{Config, Instant};

/// RFC 5681 3.2: the third duplicate ACK starts fast retransmit.
const DUPACK_THRESHOLD: u32 = 3;
/// Retransmissions remembered per recovery episode to detect a lost one (the oldest are
/// forgotten, and then only the timer recovers them).
const MAX_TRACKED_REXMITS: usize = 64;
/// `Recovery::timed_at` when no segment is timed.
const NOT_TIMING: Instant = Instant::MAX;

#[derive(Debug)]
pub(super) struct Recovery {
    pub rtt: RttEstimator,
    /// Karn: the one timed segment's send time ([`NOT_TIMING`]: none) and end.
    timed_at: Instant,
    timed_end: SeqNum,
    pub consecutive_rtos: u32,
    pub cc: Congestion,
    dupacks: u32,
    /// RFC 6582 "recover": set while in fast recovery.
    recover: Option<SeqNum>,
    /// RFC 6675 HighRxt: retransmissions in this recovery reached here.
    high_rxt: SeqNum,
    pub scoreboard: Scoreboard,
    /// Retransmissions of this recovery not yet acknowledged or SACKed: (first byte, SND.MAX
    /// when it was resent). See [`Recovery::detect_lost_retransmission`].
    rexmits: VecDeque<(SeqNum, SeqNum)>,
    /// A retransmission found lost again, to resend before anything else.
    lost_again: Option<SeqNum>,
    /// The retransmission timer is armed as a tail-loss probe timeout (RFC 8985 7.2).
    pub tlp_pending: bool,
    /// A tail-loss probe is due in `poll_transmit`.
    pub tlp_probe: bool,
}

/// Recovery at rest: only the RTT estimate and the congestion state carry over.
#[derive(Clone, Copy, Debug)]
pub(super) struct Folded {
    rtt: RttEstimator,
    cc: Congestion,
}

impl Recovery {
    /// `una`: SND.UNA after the handshake; `mss`: the send MSS for data.
    pub fn new(config: &Config, una: SeqNum, mss: u32) -> Self {
        Self {
            rtt: RttEstimator::new(config.initial_rto),
            timed_at: NOT_TIMING,
            timed_end: una,
            consecutive_rtos: 0,
            cc: Congestion::new(config.congestion, mss, config.initial_cwnd.max(1)),
            dupacks: 0,
            recover: None,
            high_rxt: una,
            scoreboard: Scoreboard::default(),
            rexmits: VecDeque::new(),
            lost_again: None,
            tlp_pending: false,
            tlp_probe: false,
        }
    }

    /// The retransmission timeout, clamped by the configuration.
    pub fn rto(&self, config: &Config) -> Duration {
        self.rtt.rto(config.min_rto, config.max_rto)
    }

    /// Flight size estimate ("pipe", RFC 6675 SetPipe; RFC 6582 inflation without SACK).
    pub fn pipe(&self, s: &SendHalf, mss: u32, sack: bool) -> u32 {
        let flight = s.nxt.since(s.una).max(if self.recover.is_some() { s.flight() } else { 0 });
        if self.recover.is_none() {
            // RFC 6675 4 (SetPipe): SACKed segments have left the network, recovery or not, so
            // each SACK clocks out new data (the effect RFC 3042 limited transmit asks for)
            // and the ACKs that follow can reveal the loss before the timer does.
            return flight.saturating_sub(if sack { self.scoreboard.sacked_bytes() } else { 0 });
        }
        if sack && !self.scoreboard.is_empty() {
            let sacked = self.scoreboard.sacked_bytes();
            let lost = match self.scoreboard.lost_edge(mss) {
                Some(edge) => self.scoreboard.unsacked_between(self.high_rxt.max(s.una), edge),
                None => 0,
            };
            flight.saturating_sub(sacked).saturating_sub(lost)
        } else {
            // RFC 5681 3.2 step 4: each duplicate ACK means a segment left the network.
            flight.saturating_sub(self.dupacks.saturating_mul(mss))
        }
    }

    /// In recovery, the next range to retransmit (RFC 6675 NextSeg rule 1, RFC 6582 3.2 step 4).
    pub fn next_retransmission(&self, s: &SendHalf, mss: u32, sack: bool) -> Option<(SeqNum, u32)> {
        self.recover?;
        let from = self.high_rxt.max(s.una);
        let data_end = s.data_end();
        if sack && !self.scoreboard.is_empty() {
            let mut seq = from;
            while let Some(right) = self.scoreboard.sacked_at(seq) {
                seq = right;
            }
            let edge = self.scoreboard.lost_edge(mss).unwrap_or(s.una + 1).max(s.una + 1);
            if !seq.lt(edge) || !seq.lt(data_end) {
                return None;
            }
            let limit = self.scoreboard.next_sacked_after(seq).unwrap_or(data_end).min(data_end);
            Some((seq, limit.since(seq).min(mss)))
        } else if from == s.una && s.una.lt(data_end) {
            Some((s.una, data_end.since(s.una).min(mss)))
        } else {
            None
        }
    }

    /// A retransmission found lost again, if it is still missing and may go now (`may_send`:
    /// the window has room; the first unacknowledged byte always may). Forgotten once it is
    /// no longer missing.
    pub fn lost_again_range(&mut self, s: &SendHalf, mss: u32, may_send: bool) -> Option<(SeqNum, u32)> {
        let seq = self.lost_again?;
        if !may_send && seq != s.una {
            return None;
        }
        let data_end = s.data_end();
        if seq.ge(s.una) && seq.lt(data_end) && self.scoreboard.sacked_at(seq).is_none() {
            let limit = self.scoreboard.next_sacked_after(seq).unwrap_or(data_end).min(data_end);
            return Some((seq, limit.since(seq).min(mss)));
        }
        self.lost_again = None;
        None
    }

    /// The range from [`Self::lost_again_range`] was resent.
    pub fn sent_lost_again(&mut self, seq: SeqNum, snd_max: SeqNum, sack: bool) {
        self.lost_again = None;
        self.note_retransmission(seq, snd_max, sack);
    }

    /// The range from [`Self::next_retransmission`] was resent, `len` bytes of it.
    pub fn sent_retransmission(&mut self, seq: SeqNum, len: u32, snd_max: SeqNum, sack: bool) {
        self.high_rxt = seq + len;
        self.note_retransmission(seq, snd_max, sack);
    }

    /// Remember a retransmission made in recovery for [`Self::detect_lost_retransmission`].
    fn note_retransmission(&mut self, seq: SeqNum, snd_max: SeqNum, sack: bool) {
        if sack && self.recover.is_some() {
            if self.rexmits.len() == MAX_TRACKED_REXMITS {
                self.rexmits.pop_front();
            }
            self.rexmits.push_back((seq, snd_max));
        }
    }

    /// Karn's rule (RFC 6298 3) for data just sent at `seq`: time one new segment when
    /// timestamps do not measure every ACK, and never a retransmitted one.
    pub fn on_data_sent(&mut self, now: Instant, seq: SeqNum, len: u32, retransmission: bool, timestamps: bool) {
        let timing = self.timed_at != NOT_TIMING;
        if !retransmission && !timing && !timestamps && len > 0 {
            (self.timed_at, self.timed_end) = (now, seq + len);
        }
        if retransmission && timing && self.timed_end.gt(seq) {
            self.timed_at = NOT_TIMING;
        }
    }

    /// A segment that may duplicate one in flight went out (a loss probe): stop timing.
    pub fn forget_timing(&mut self) {
        self.timed_at = NOT_TIMING;
    }

    /// RFC 6298 3 (Karn): the timed segment's RTT, once `una` covers it.
    pub fn karn_sample(&mut self, now: Instant, una: SeqNum) -> Option<Duration> {
        if self.timed_at == NOT_TIMING || una.lt(self.timed_end) {
            return None;
        }
        let sent = core::mem::replace(&mut self.timed_at, NOT_TIMING);
        Some(now.saturating_duration_since(sent))
    }

    /// New data acknowledged (`s.una` already moved; `data_acked` bytes of the buffer): end or
    /// continue recovery, or grow the window.
    pub fn on_new_ack(&mut self, now: Instant, s: &SendHalf, mss: u32, sack: bool, data_acked: u32) {
        match self.recover {
            Some(recover) if s.una.ge(recover) => {
                // RFC 6582 3.2 step 3, full ACK.
                self.cc.exit_recovery(s.flight(), mss);
                self.recover = None;
                self.dupacks = 0;
                self.end_episode();
            }
            Some(_) => {
                // RFC 6582 3.2 step 3, partial ACK: the next unacknowledged segment is lost too;
                // deflate the dupack inflation.
                self.dupacks = 0;
                if !sack {
                    self.high_rxt = s.una;
                }
            }
            None => {
                self.dupacks = 0;
                self.cc.on_ack(now, data_acked, mss, self.rtt.srtt());
            }
        }
    }

    /// SND.UNA moved to `una`: forget what lies below it and end the timeout backoff.
    pub fn on_una_advanced(&mut self, una: SeqNum) {
        if self.high_rxt.lt(una) {
            self.high_rxt = una;
        }
        self.scoreboard.trim(una);
        self.consecutive_rtos = 0;
        self.rtt.reset_backoff();
    }

    /// RFC 5681 2: a duplicate ACK.
    pub fn on_dupack(&mut self, s: &SendHalf, mss: u32) {
        self.dupacks += 1;
        if self.recover.is_none() && self.dupacks == DUPACK_THRESHOLD {
            self.enter_fast_recovery(s, mss);
        }
    }

    /// SACK blocks arrived with an acceptable ACK.
    pub fn on_sack(&mut self, blocks: &[(SeqNum, SeqNum)], s: &SendHalf, mss: u32) {
        for &(l, r) in blocks {
            self.scoreboard.add(l, r, s.una, s.max);
        }
        // RFC 6675 5 (and its definition of a duplicate ACK in section 2, which drops RFC
        // 5681's "window unchanged"): with SACK, loss is declared when IsLost(HighACK + 1),
        // however many of the ACKs counted as duplicates. A receiver whose window moves as
        // its application reads sends no RFC 5681 duplicates at all, and a cumulative ACK
        // may carry the SACK blocks above the next hole: without this the hole waits for
        // the retransmission timer.
        if self.recover.is_none()
            && s.una != s.max
            && (self.scoreboard.lost_edge(mss).is_some_and(|edge| edge.gt(s.una)) || self.early_retransmit_due(s, mss))
        {
            self.enter_fast_recovery(s, mss);
        }
        self.detect_lost_retransmission(s.una);
    }

    /// RFC 5827 3.2 (Early Retransmit, SACK-based): with fewer than four segments outstanding
    /// and nothing new that may be sent, three segments can never be SACKed above a hole, so the
    /// threshold drops to (outstanding - 1) segments. Small windows are the common case under
    /// heavy loss; without this every such hole costs a retransmission timeout.
    fn early_retransmit_due(&self, s: &SendHalf, mss: u32) -> bool {
        let mss = mss.max(1);
        let outstanding = s.flight().div_ceil(mss);
        let can_send_new =
            s.max.lt(s.data_end()) && s.max.lt(s.window_end()) && self.pipe(s, mss, true) + mss <= self.cc.cwnd();
        (2..4).contains(&outstanding) && !can_send_new && self.scoreboard.sacked_bytes() >= (outstanding - 1) * mss
    }

    /// A retransmission can be lost too, and RFC 6675 leaves it to the retransmission timer
    /// (HighRxt has moved past it). As RFC 8985 6.2 reasons, if the peer SACKs data we first
    /// sent after a retransmission while the retransmitted bytes are still missing, the
    /// retransmission was lost (reordering beyond a whole round trip aside): resend it now.
    fn detect_lost_retransmission(&mut self, una: SeqNum) {
        if self.rexmits.is_empty() {
            return;
        }
        let board = &self.scoreboard;
        self.rexmits.retain(|&(seq, _)| seq.ge(una) && board.sacked_at(seq).is_none());
        if self.lost_again.is_some() {
            return;
        }
        let Some(highest) = self.scoreboard.highest() else { return };
        if let Some(i) = self.rexmits.iter().position(|&(_, snd_max)| highest.gt(snd_max)) {
            self.lost_again = self.rexmits.remove(i).map(|(seq, _)| seq);
        }
    }

    fn end_episode(&mut self) {
        // Drop the allocation too: a connection that once saw loss costs nothing extra idle.
        self.rexmits = VecDeque::new();
        self.lost_again = None;
    }

    /// RFC 5681 3.2 steps 2-4 / RFC 6582 3.2 step 2 / RFC 6675 5 step 4: enter fast recovery.
    fn enter_fast_recovery(&mut self, s: &SendHalf, mss: u32) {
        self.cc.enter_recovery(s.flight(), mss);
        self.recover = Some(s.max);
        // The first unacknowledged segment is retransmitted right away.
        self.high_rxt = s.una;
        self.timed_at = NOT_TIMING;
    }

    /// A retransmission timeout (RFC 6298 5.4-5.7, RFC 5681 3.1): the loss window, recovery
    /// abandoned, the SACK scoreboard forgotten (RFC 2018 8: the receiver may have reneged), the
    /// RTO doubled. The caller resends from SND.UNA.
    pub fn on_rto(&mut self, s: &SendHalf, mss: u32) {
        let first = self.consecutive_rtos == 1 || self.recover.is_some();
        self.cc.on_timeout(s.flight(), mss, first);
        self.recover = None;
        self.dupacks = 0;
        self.scoreboard.clear();
        self.end_episode();
        self.high_rxt = s.una;
        self.timed_at = NOT_TIMING;
        self.rtt.back_off();
    }

    /// RFC 8985 7.2: the probe timeout, when the retransmission timer should first fire as a
    /// tail-loss probe (with SACK and an RTT estimate, outside recovery, nothing held back by
    /// go-back-N, and sooner than `rto`). As Linux: a lost tail is recovered in about two RTTs
    /// instead of an RTO.
    pub fn probe_timeout(&self, s: &SendHalf, mss: u32, sack: bool, rto: Duration) -> Option<Duration> {
        if !sack || self.recover.is_some() || self.consecutive_rtos != 0 || s.nxt != s.max {
            return None;
        }
        let mut pto = self.rtt.srtt()? * 2;
        if s.flight() <= mss {
            // RFC 8985 7.2: a lone segment may wait for a delayed ACK (WCDelAckT).
            pto += Duration::from_millis(200);
        }
        let pto = pto.max(Duration::from_millis(10));
        (pto < rto).then_some(pto)
    }

    /// No loss being recovered, no probe pending, nothing timed: what is left is the RTT
    /// estimate and the congestion state.
    pub fn is_at_rest(&self, una: SeqNum) -> bool {
        !self.tlp_pending
            && !self.tlp_probe
            && self.timed_at == NOT_TIMING
            && self.consecutive_rtos == 0
            && self.dupacks == 0
            && self.recover.is_none()
            && self.rexmits.is_empty()
            && self.lost_again.is_none()
            && self.scoreboard.is_empty()
            && self.high_rxt == una
    }

    pub fn fold(&self) -> Folded {
        Folded { rtt: self.rtt, cc: self.cc }
    }

    pub fn unfold(f: &Folded, una: SeqNum) -> Self {
        Self {
            rtt: f.rtt,
            timed_at: NOT_TIMING,
            timed_end: una,
            consecutive_rtos: 0,
            cc: f.cc,
            dupacks: 0,
            recover: None,
            high_rxt: una,
            scoreboard: Scoreboard::default(),
            rexmits: VecDeque::new(),
            lost_again: None,
            tlp_pending: false,
            tlp_probe: false,
        }
    }
}

impl Folded {
    pub fn rtt(&self) -> &RttEstimator {
        &self.rtt
    }
    pub fn cc(&self) -> &Congestion {
        &self.cc
    }
}
