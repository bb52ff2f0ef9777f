//! Loss recovery, as Linux does it: every segment in flight has a record ([`sent`]) with its
//! send time; RACK ([`rack`], RFC 8985 6) finds losses by time, a tail-loss probe (RFC 8985 7)
//! finds them when no ACK comes, and a retransmission timeout (RFC 6298) is the last resort.
//! The window shrinks by Proportional Rate Reduction while a loss is recovered (RFC 6937), and
//! grows back at once when the loss proves spurious: by DSACK (RFC 2883, as Linux's DSACK
//! undo), by timestamps (RFC 3522 Eifel detection, as Linux's tcp_packet_delayed) or, after a
//! timeout, by F-RTO (RFC 5682 with SACK, as Linux). Without SACK, NewReno (RFC 6582) on
//! duplicate ACKs. The RTT estimate is here too; the congestion window itself is
//! [`Congestion`]'s and changes only through its methods.

use core::time::Duration;

use super::send::SendHalf;
use super::stats::Stats;
use crate::congestion::{AckTrain, Congestion};
use crate::rtt::RttEstimator;
use crate::seq::SeqNum;
use crate::segment::MAX_SACK_BLOCKS;
use crate::{Config, Instant};

mod rack;
pub mod sent;

use rack::Rack;
pub use sent::FIN;
use sent::{RETRANS, Sent, SentQueue};

/// RFC 5681 3.2: the third duplicate ACK starts fast retransmit (without SACK).
const DUPACK_THRESHOLD: u32 = 3;

/// Where loss recovery stands (Linux's congestion-avoidance states).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No loss being recovered.
    Open,
    /// A window reduction without retransmissions, for an ECN echo (RFC 3168 6.1.2), until
    /// SND.UNA passes the point (Linux's CWR state): PRR sizes the window meanwhile.
    Cwr(SeqNum),
    /// Fast recovery until SND.UNA passes the point (RFC 6675 RecoveryPoint, RFC 6582 recover).
    Recovery(SeqNum),
    /// After a retransmission timeout, until SND.UNA passes what SND.NXT was then.
    Loss(SeqNum),
}

/// F-RTO (RFC 5682 3.1, with SACK as Linux) after a retransmission timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Frto {
    Off,
    /// The first retransmission went out; waiting for the ACK that follows it.
    AwaitFirstAck,
    /// That ACK advanced SND.UNA: new data goes out instead of retransmissions (step 2b), and
    /// the next ACK tells whether the timeout was spurious.
    SentNew,
}

/// What the retransmission timer is armed for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Armed {
    /// The retransmission timeout (RFC 6298).
    Rto,
    /// The tail-loss probe timeout (RFC 8985 7.2).
    Probe,
    /// RACK's reordering timer (RFC 8985 6.3).
    Reorder,
}

/// What is needed to undo a window reduction shown spurious.
#[derive(Clone, Copy, Debug)]
struct Undo {
    /// SND.UNA when the episode began (Linux's undo_marker).
    marker: SeqNum,
    /// Retransmissions of the episode not yet shown spurious by a DSACK (Linux's undo_retrans;
    /// `None` before the first, which an early DSACK must not be taken to undo).
    retrans: Option<u32>,
    /// Congestion state before the reduction.
    before: Congestion,
    /// Our TSval on the episode's first retransmission (RFC 3522).
    first_retrans_tsval: Option<u32>,
}

/// RFC 6937 3: Proportional Rate Reduction's counters for the current reduction.
#[derive(Clone, Copy, Debug, Default)]
struct Prr {
    /// prr_delivered: bytes the receiver got since the reduction began.
    delivered: u32,
    /// prr_out: bytes sent since.
    out: u32,
    /// RecoverFS: the window when the reduction began (as Linux: the prior cwnd).
    recover_fs: u32,
}

/// An acceptable ACK, as recovery sees it.
pub struct AckIn<'a> {
    pub prior_una: SeqNum,
    /// The send MSS for data, and whether SACK was negotiated.
    pub mss: u32,
    pub sack_ok: bool,
    /// RFC 5681 2's duplicate ACK (counted without SACK).
    pub dupack: bool,
    /// The SACK blocks (empty without SACK).
    pub sack: &'a [(SeqNum, SeqNum)],
    /// The RTT the echoed timestamp gives (RFC 7323 4.2), for an ACK of new data.
    pub ts_rtt: Option<Duration>,
    /// The echoed timestamp (TSecr), for RFC 3522.
    pub tsecr: Option<u32>,
    /// ECE on an ECN connection (RFC 3168 6.1.2).
    pub ece: bool,
}

#[derive(Debug)]
pub(super) struct Recovery {
    pub rtt: RttEstimator,
    pub consecutive_rtos: u32,
    pub cc: Congestion,
    /// HyStart's ACK train in the initial slow start (not folded: see [`AckTrain`]).
    ack_train: AckTrain,
    sent: SentQueue,
    rack: Rack,
    phase: Phase,
    frto: Frto,
    prr: Prr,
    undo: Option<Undo>,
    /// Duplicate ACKs in a row (NewReno, without SACK).
    dupacks: u32,
    /// What the retransmission timer is armed for.
    pub armed: Armed,
    /// A tail-loss probe is due in `poll_transmit`.
    pub tlp_probe: bool,
    /// RFC 8985 7.4: SND.NXT after the last probe, while its outcome is unknown (TLP.end_seq).
    tlp_high_seq: Option<SeqNum>,
    /// That probe retransmitted data (rather than sending new data).
    tlp_retrans: bool,
    /// Whether the window limited sending in the last round trip (as Linux's
    /// tcp_cwnd_validate): an application-limited sender does not grow it.
    cwnd_limited: bool,
    max_flight: u32,
    cwnd_usage_seq: SeqNum,
    /// SND.NXT when the current round trip began (RFC 9406's windowEnd).
    round_end: SeqNum,
    /// When the pacer lets the next segment go.
    pace_next: Instant,
    /// RFC 3168 6.1.2: the window was reduced for ECE; CWR goes on the next new data.
    cwr_pending: bool,
}

/// Recovery at rest: the RTT estimate, the congestion state and what RACK learned of the path.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Folded {
    /// SRTT and RTTVAR (the RTO follows from them).
    rtt: (u32, u32),
    cc: Congestion,
    rack: rack::Folded,
}

impl Recovery {
    /// `una`: SND.UNA after the handshake; `mss`: the send MSS for data.
    pub fn new(config: &Config, una: SeqNum, mss: u32) -> Self {
        let cc = Congestion::new(config.congestion, mss, config.initial_cwnd.max(1));
        let rack = Rack::new(una);
        Self::with(RttEstimator::new(config.initial_rto), cc, rack, una)
    }

    fn with(rtt: RttEstimator, cc: Congestion, rack: Rack, una: SeqNum) -> Self {
        Self {
            rtt,
            consecutive_rtos: 0,
            cc,
            ack_train: AckTrain::default(),
            sent: SentQueue::default(),
            rack,
            phase: Phase::Open,
            frto: Frto::Off,
            prr: Prr::default(),
            undo: None,
            dupacks: 0,
            armed: Armed::Rto,
            tlp_probe: false,
            tlp_high_seq: None,
            tlp_retrans: false,
            cwnd_limited: false,
            max_flight: 0,
            cwnd_usage_seq: una,
            round_end: una,
            pace_next: Instant::ZERO,
            cwr_pending: false,
        }
    }

    /// The retransmission timeout, clamped by the configuration.
    pub fn rto(&self, config: &Config) -> Duration {
        self.rtt.rto(config.min_rto, config.max_rto)
    }

    fn recovering(&self) -> bool {
        matches!(self.phase, Phase::Recovery(_) | Phase::Loss(_))
    }

    fn reducing(&self) -> bool {
        matches!(self.phase, Phase::Recovery(_) | Phase::Cwr(_))
    }

    /// Flight size estimate ("pipe", RFC 6675 SetPipe): sent, not SACKed, not lost. Without
    /// SACK, each duplicate ACK means a segment left the network (RFC 5681 3.2 step 4).
    pub fn pipe(&self, mss: u32, sack: bool) -> u32 {
        let pipe = self.sent.in_flight();
        if sack { pipe } else { pipe.saturating_sub(self.dupacks.saturating_mul(mss)) }
    }

    /// The next segment to retransmit (RFC 6675 NextSeg rule 1: the first lost one), unless
    /// F-RTO holds retransmissions back to see whether the timeout was spurious.
    pub fn next_retransmission(&self) -> Option<Sent> {
        if self.frto == Frto::SentNew {
            return None;
        }
        self.sent.first_lost()
    }

    /// When the oldest segment in flight was last sent.
    pub fn oldest_send(&self) -> Option<Instant> {
        self.sent.iter().next().map(|s| s.xmit)
    }

    /// The last segment sent, for a tail-loss probe with no new data to send (RFC 8985 7.3).
    pub fn last_sent(&self) -> Option<Sent> {
        self.sent.last().copied()
    }

    /// A data segment went out: `len` bytes of payload at `seq`, with our FIN if `fin`.
    /// `tsval`: our timestamp on it.
    pub fn on_sent(&mut self, now: Instant, s: &SendHalf, seq: SeqNum, len: u32, fin: bool, tsval: Option<u32>) {
        let retransmission = seq.lt(s.nxt);
        if retransmission {
            self.sent.resent(seq, len + u32::from(fin), now);
            if let Some(u) = &mut self.undo {
                u.retrans = Some(u.retrans.unwrap_or(0) + 1);
                u.first_retrans_tsval = u.first_retrans_tsval.or(tsval);
            }
        } else {
            self.sent.push(seq, len, fin, now);
        }
        if self.reducing() {
            self.prr.out += len;
        }
    }

    /// The pacing rate in bytes per second (as Linux's tcp_update_pacing_rate): cwnd (or what
    /// is in flight, if more) per SRTT, times 2 in slow start (below half of ssthresh) and 1.2
    /// after. None before the first RTT sample, and after slow start (see
    /// [`Recovery::pace_wait`]).
    fn pacing_rate(&self, mss: u32, sack: bool) -> Option<u64> {
        if !self.cc.in_slow_start() {
            return None;
        }
        let srtt = self.rtt.srtt()?.as_nanos().max(1);
        let window = self.cc.cwnd().max(self.pipe(mss, sack)).max(mss) as u128;
        let percent = if self.cc.cwnd() < self.cc.ssthresh() / 2 { 200 } else { 120 };
        Some((window * percent * 1_000_000_000 / 100 / srtt).clamp(1, u64::MAX as u128) as u64)
    }

    /// Whether the pacer holds data back at `now`: when it lets the next segment go. Only in
    /// slow start, where a window doubling each round trip leaves in bursts that overflow a
    /// bottleneck's queue; after it the ACK clock spaces the data, and Linux's CUBIC without
    /// fq is not paced at all (internal pacing is for congestion controls that ask for it):
    /// paced at 1.2 cwnd per SRTT beside it through a drop-tail queue, 8 synx flows took 33%
    /// of the bytes against 8 of Linux's (46% unpaced), RTT 40 ms, 100 Mbit/s.
    pub fn pace_wait(&self, now: Instant) -> Option<Instant> {
        (self.cc.in_slow_start() && self.pace_next > now).then_some(self.pace_next)
    }

    /// `len` bytes of data left at `now`: the next may leave `len / rate` later. A sender that
    /// was held back less than it could have been catches up by one quantum at most: about a
    /// millisecond of data (at least two segments), as Linux's TSO autosizing sends it.
    pub fn on_paced_send(&mut self, now: Instant, len: u32, mss: u32, sack: bool) {
        let Some(rate) = self.pacing_rate(mss, sack) else { return };
        let quantum = Duration::from_millis(1).max(Duration::from_nanos(2 * mss as u64 * 1_000_000_000 / rate));
        let start = self.pace_next.max(now - quantum);
        self.pace_next = start + Duration::from_nanos(len as u64 * 1_000_000_000 / rate);
    }

    /// After a send, whether the window limited it (Linux's tcp_cwnd_validate, counted in
    /// bytes: limited when no further full segment fits).
    pub fn note_window_use(&mut self, s: &SendHalf, mss: u32, sack: bool) {
        let flight = self.pipe(mss, sack);
        let limited = flight + mss > self.cc.cwnd();
        if s.una.ge(self.cwnd_usage_seq) || limited || (!self.cwnd_limited && flight > self.max_flight) {
            self.cwnd_limited = limited;
            self.max_flight = flight;
            self.cwnd_usage_seq = s.nxt;
        }
    }

    /// Linux's tcp_is_cwnd_limited: grow the window only if the sender uses it (in slow start,
    /// half of it).
    fn is_cwnd_limited(&self) -> bool {
        self.cwnd_limited || (self.cc.in_slow_start() && self.cc.cwnd() < 2 * self.max_flight)
    }

    /// An acceptable ACK (`s.una` already moved past what it acknowledges): RTT, delivery,
    /// DSACK, SACK, loss detection, recovery entry and exit, window, undo, the tail-loss probe's
    /// outcome. Returns RACK's reordering timeout when a segment may yet be found lost.
    pub fn on_ack(&mut self, now: Instant, a: &AckIn, s: &SendHalf, config: &Config, stats: &mut Stats) -> Option<Duration> {
        let (mss, sack) = (a.mss, a.sack_ok);
        let una_advanced = s.una.gt(a.prior_una);
        if una_advanced {
            self.dupacks = 0;
        }
        // After a timeout, whether data sent only once (before the timeout) was delivered
        // (Linux's FLAG_ORIG_SACK_ACKED, for F-RTO).
        let loss_point = if let Phase::Loss(p) = self.phase { Some(p) } else { None };
        let mut original_delivered = false;
        let original = |seg: &Sent| loss_point.is_some_and(|p| !seg.has(RETRANS) && seg.end().le(p));
        // Cumulatively acknowledged segments; RTT from the oldest sent only once, unless the
        // ACK also covers a retransmission (RFC 6298 3, Karn; as Linux's seq_rtt), min_RTT
        // from the newest.
        let (mut acked, mut oldest, mut newest, mut retransmission_acked) = (0u32, None, None, false);
        let prior_fack = self.rack.fack();
        let (sent, rack) = (&mut self.sent, &mut self.rack);
        sent.ack(s.una, |seg| {
            acked += seg.len as u32;
            rack.on_delivered(seg, now);
            original_delivered |= original(seg);
            if seg.has(RETRANS) {
                retransmission_acked = true;
            } else {
                oldest = oldest.or(Some(seg.xmit));
                newest = Some(seg.xmit);
            }
        });
        let oldest = oldest.filter(|_| !retransmission_acked);
        if let Some(rtt) = a.ts_rtt.or(oldest.map(|t| now.saturating_duration_since(t))) {
            self.rtt.sample(rtt, config.min_rto);
        }

        // RFC 2883 4: the first block is a DSACK if below the cumulative ACK or inside the
        // second block.
        let (dsack, blocks) = match a.sack {
            [first, rest @ ..] if first.0.lt(s.una) || rest.first().is_some_and(|b| b.0.le(first.0) && first.1.le(b.1)) => {
                (Some(*first), rest)
            }
            all => (None, all),
        };
        if let Some((_, right)) = dsack {
            stats.dsacks_received += 1;
            self.rack.on_reordering();
            // Linux's tcp_check_dsack: a duplicate within the episode shows one of its
            // retransmissions to have been unnecessary.
            if let Some(u) = &mut self.undo
                && right.gt(u.marker)
                && let Some(n) = &mut u.retrans
            {
                *n = n.saturating_sub(1);
            }
        }
        // Within one ACK delivery has no order, but a receiver lists the block it changed last
        // first (RFC 2018 4): taken as listed, an ACK covering two new arrivals would show
        // RFC 8985 6.2 step 3 the lower block's segments delivered below the higher's, a
        // reordering the path never did. In sequence order, as Linux's
        // tcp_sacktag_write_queue sorts them.
        let mut in_order = [(s.una, s.una); MAX_SACK_BLOCKS];
        let n = blocks.len().min(MAX_SACK_BLOCKS);
        in_order[..n].copy_from_slice(&blocks[..n]);
        let blocks = &mut in_order[..n];
        blocks.sort_unstable_by_key(|&(l, _)| l.0.wrapping_sub(s.una.0));
        let mut sacked = 0u32;
        let (sent, rack) = (&mut self.sent, &mut self.rack);
        for &(l, r) in &*blocks {
            sent.sack(l, r, |seg| {
                sacked += seg.len as u32;
                rack.on_delivered(seg, now);
                original_delivered |= original(seg);
                if !seg.has(RETRANS) {
                    newest = Some(newest.map_or(seg.xmit, |t: Instant| t.max(seg.xmit)));
                }
            });
        }
        // This ACK's RTT from the newest segment it delivered (Linux's ca_rtt).
        let ca_rtt = newest.map(|t| now.saturating_duration_since(t));
        if let Some(rtt) = ca_rtt {
            self.rack.on_rtt_sample(rtt);
        }
        // RFC 9406 4.3: a round ends when the ACK reaches what SND.NXT was at its start.
        if una_advanced && s.una.ge(self.round_end) {
            if self.cc.start_round() {
                stats.hystart_delay_exits += 1;
            }
            self.ack_train.start_round();
            self.round_end = s.nxt;
        }
        if a.dupack && !sack {
            self.dupacks += 1;
        }
        let delivered = acked + sacked + if sack || !a.dupack { 0 } else { mss };

        // A partial ACK echoing a timestamp older than the first retransmission: the hole was
        // filled by the late original (Linux's tcp_try_undo_partial, RFC 3522). With no
        // retransmission left in flight, the reduction is undone.
        let partial = matches!(self.phase, Phase::Recovery(point) if una_advanced && s.una.lt(point));
        if partial && self.eifel_delayed(a.tsecr) {
            // The original arrived after segments sent later: the path reorders (as Linux's
            // tcp_check_sack_reordering there). RFC 8985 6.2 step 3 cannot tell, the segment
            // having been retransmitted, and the DSACK that would comes a round trip later:
            // until then each late segment cost another spurious fast recovery (2% of
            // segments held back 2 ms at RTT 40 ms, 4 MiB each: 39 over 40 transfers in the
            // simulator, 19 with this; 3-5 per 32 MiB seen from the daemon).
            self.rack.on_reordering();
            if !self.sent.retransmission_in_flight() && self.try_undo(a.tsecr, true, stats) {
                self.phase = Phase::Open;
            }
        }
        // Exits: SND.UNA passed the point.
        let mut recovery_ended = false;
        match self.phase {
            Phase::Recovery(point) | Phase::Cwr(point) if s.una.ge(point) => {
                recovery_ended = matches!(self.phase, Phase::Recovery(_));
                // RFC 3522 (Linux's tcp_try_undo_recovery): the ACK echoes a timestamp older
                // than our first retransmission, so the originals arrived.
                if !self.try_undo(a.tsecr, false, stats) {
                    // RFC 6937 3: the window is ssthresh when the reduction ends.
                    self.cc.end_reduction();
                }
                self.phase = Phase::Open;
                self.dupacks = 0;
            }
            Phase::Loss(point) => {
                // Linux's tcp_process_loss: RFC 3522 on any ACK of new data, then F-RTO.
                if una_advanced && self.try_undo(a.tsecr, true, stats) {
                    self.phase = Phase::Open;
                    stats.spurious_rtos += 1;
                } else if self.frto != Frto::Off {
                    self.frto_on_ack(a, s, una_advanced, sacked > 0, original_delivered, stats);
                }
                if self.phase == Phase::Loss(point) && s.una.ge(point) {
                    recovery_ended = true;
                    self.try_undo(a.tsecr, false, stats);
                    self.phase = Phase::Open;
                    self.frto = Frto::Off;
                }
            }
            _ => {}
        }

        // Loss detection: RACK with SACK; duplicate ACKs and partial ACKs without (RFC 6582).
        self.rack.update_reo_wnd(s.una, s.nxt, dsack.is_some(), recovery_ended);
        let mut reorder_timeout = None;
        let mut newly_lost = 0;
        if sack {
            let reo_wnd = self.rack.reo_wnd(self.recovering(), self.sent.sacked_bytes(), mss, self.rtt.srtt());
            let (marked, timeout) = self.rack.detect_loss(&mut self.sent, now, reo_wnd);
            stats.rack_losses += marked;
            newly_lost = marked;
            reorder_timeout = timeout;
        } else if (self.phase == Phase::Open && self.dupacks >= DUPACK_THRESHOLD)
            || (matches!(self.phase, Phase::Recovery(_)) && una_advanced)
        {
            newly_lost = u32::from(self.sent.mark_first_lost() > 0);
        }
        if newly_lost > 0 && matches!(self.phase, Phase::Open | Phase::Cwr(_)) {
            self.enter_recovery(s, mss, stats);
        }
        // An ECN echo reduces the window before this ACK could grow it (as Linux).
        if a.ece {
            self.on_ece(s, mss, stats);
        }

        // What the ACK says about a tail-loss probe, before the window grows (as Linux).
        self.tlp_on_ack(s, dsack, una_advanced || sacked > 0, mss, stats);
        // HyStart's ACK train, on every ACK that delivered data (as Linux's bictcp_acked).
        if let (false, Some(sent), Some(min_rtt)) = (self.reducing(), newest, self.rack.min_rtt()) {
            let train = self.ack_train.on_ack(now, sent, delivered, self.rack.fack().gt(prior_fack), min_rtt);
            if self.cc.on_ack_train(train, mss, min_rtt, config.pacing) {
                stats.hystart_train_exits += 1;
            }
        }
        // The window: PRR while reducing, else slow start or congestion avoidance by what was
        // delivered, on ACKs that move SND.UNA (as Linux's tcp_may_raise_cwnd).
        if self.reducing() {
            self.prr_ack(delivered, mss, sack, una_advanced && newly_lost == 0);
        } else if una_advanced && self.is_cwnd_limited() {
            self.cc.on_ack(now, delivered, mss, self.rtt.srtt(), ca_rtt);
        }
        // DSACK undo (Linux's tcp_try_undo_dsack): every retransmission of the episode
        // proved unnecessary.
        if dsack.is_some() && self.undo.is_some_and(|u| u.retrans == Some(0)) && self.try_undo(None, false, stats) {
            self.phase = Phase::Open;
        }

        if s.una == s.nxt {
            self.settle(s.una);
        }
        reorder_timeout
    }

    /// RFC 3168 6.1.2 (as Linux's tcp_enter_cwr): an ACK echoed ECE; the window is reduced as
    /// for a loss, at most once per round trip (not while a reduction or recovery runs), and
    /// the next new data segment carries CWR. Returns whether it was reduced.
    fn on_ece(&mut self, s: &SendHalf, mss: u32, stats: &mut Stats) -> bool {
        if self.phase != Phase::Open {
            return false;
        }
        self.begin_reduction(s, mss);
        // A congestion signal, not a loss that may prove spurious: never undone (as Linux's
        // tcp_enter_cwr clears undo_marker).
        self.undo = None;
        if s.una == s.nxt {
            // Nothing in flight to pace the reduction over: done at once.
            self.cc.end_reduction();
        } else {
            self.phase = Phase::Cwr(s.nxt);
        }
        self.cwr_pending = true;
        stats.ecn_reductions += 1;
        true
    }

    /// Whether the next new data segment carries CWR (RFC 3168 6.1.2); taken once sent.
    pub fn take_cwr(&mut self) -> bool {
        core::mem::take(&mut self.cwr_pending)
    }

    /// RFC 6675 5 step 4 / RFC 6582 3.2 step 2 / RFC 8985: a loss starts fast recovery, with
    /// the window reduced by PRR.
    fn enter_recovery(&mut self, s: &SendHalf, mss: u32, stats: &mut Stats) {
        stats.fast_recoveries += 1;
        if self.phase == Phase::Open {
            self.begin_reduction(s, mss);
        }
        self.phase = Phase::Recovery(s.nxt);
    }

    /// A reduction begins: ssthresh lowered, PRR and undo state started.
    fn begin_reduction(&mut self, s: &SendHalf, mss: u32) {
        self.undo = Some(Undo { marker: s.una, retrans: None, before: self.cc.before_reduction(), first_retrans_tsval: None });
        self.prr = Prr { delivered: 0, out: 0, recover_fs: self.cc.cwnd().max(1) };
        self.cc.begin_reduction(s.flight(), mss);
        self.tlp_high_seq = None;
    }

    /// RFC 6937 3 (as Linux's tcp_cwnd_reduction): the window for this ACK while reducing;
    /// an ACK that delivered nothing leaves it.
    fn prr_ack(&mut self, delivered: u32, mss: u32, sack: bool, slow_start_bound: bool) {
        if delivered == 0 {
            return;
        }
        let prr = &mut self.prr;
        prr.delivered += delivered;
        let pipe = self.pipe(mss, sack);
        let ssthresh = self.cc.ssthresh();
        let prr = &self.prr;
        let sndcnt = if pipe > ssthresh {
            // Proportional: sndcnt = CEIL(prr_delivered * ssthresh / RecoverFS) - prr_out.
            let target = (prr.delivered as u64 * ssthresh as u64).div_ceil(prr.recover_fs as u64);
            (target.min(u32::MAX as u64) as u32).saturating_sub(prr.out)
        } else {
            // What was delivered may go (PRR-CRB, at least this ACK's delivery as Linux), one
            // more segment when the ACK made progress and found no new loss (PRR-SSRB); never
            // beyond ssthresh.
            let limit = prr.delivered.saturating_sub(prr.out).max(delivered) + if slow_start_bound { mss } else { 0 };
            (ssthresh - pipe).min(limit)
        };
        // As Linux: the fast retransmit itself always goes.
        let sndcnt = sndcnt.max(if prr.out == 0 { mss } else { 0 });
        self.cc.set_reduced_window(pipe + sndcnt);
    }

    /// F-RTO (RFC 5682 3.1 with SACK, as Linux's tcp_process_loss) on an ACK after a timeout.
    fn frto_on_ack(&mut self, a: &AckIn, s: &SendHalf, una_advanced: bool, sacked_new: bool, original_delivered: bool, stats: &mut Stats) {
        // Step 3b (SACK-enhanced): data sent only once, before the timeout, was delivered, so
        // not everything was lost: the timeout was spurious.
        if original_delivered && self.try_undo_timeout(stats) {
            return;
        }
        match self.frto {
            Frto::SentNew if a.dupack || sacked_new => {
                // Step 3a: the loss was real; conventional recovery from here.
                self.frto = Frto::Off;
            }
            Frto::AwaitFirstAck if una_advanced => {
                // Step 2b: send new data (if there is any the window takes) rather than more
                // retransmissions, and judge by the next ACK.
                self.frto = if s.nxt.lt(s.data_end()) && s.nxt.lt(s.window_end()) { Frto::SentNew } else { Frto::Off };
                self.phase = Phase::Loss(s.nxt);
            }
            Frto::AwaitFirstAck if a.dupack || sacked_new => self.frto = Frto::Off,
            _ => {}
        }
    }

    /// RFC 5682 / Linux's tcp_try_undo_loss with F-RTO: the timeout was spurious.
    fn try_undo_timeout(&mut self, stats: &mut Stats) -> bool {
        let Some(u) = self.undo.take() else { return false };
        self.cc.undo(&u.before);
        self.sent.unmark_lost();
        self.phase = Phase::Open;
        self.frto = Frto::Off;
        stats.undos += 1;
        stats.spurious_rtos += 1;
        true
    }

    /// Undo the current episode's reduction if it proved spurious (Linux's tcp_may_undo): every
    /// retransmission DSACKed, or the ACK echoing a timestamp older than the first
    /// retransmission (RFC 3522), so the originals arrived. `unmark`: after a timeout, what was
    /// marked lost is in flight after all (Linux's tcp_try_undo_loss).
    fn try_undo(&mut self, tsecr: Option<u32>, unmark: bool, stats: &mut Stats) -> bool {
        let Some(u) = self.undo else { return false };
        // Nothing retransmitted yet in the episode (the retransmission still waited for the
        // pacer) and the ACK passed what was marked lost: the originals arrived (Linux's
        // tcp_packet_delayed with no retrans_stamp).
        if u.retrans.is_some_and(|n| n > 0) && !self.eifel_delayed(tsecr) {
            return false;
        }
        self.undo = None;
        self.cc.undo(&u.before);
        if unmark {
            self.sent.unmark_lost();
        }
        self.frto = Frto::Off;
        stats.undos += 1;
        true
    }

    /// RFC 3522 (Linux's tcp_packet_delayed): the ACK echoes a timestamp older than the
    /// episode's first retransmission, so an original caused it. A zero TSecr says nothing.
    fn eifel_delayed(&self, tsecr: Option<u32>) -> bool {
        match (tsecr, self.undo.and_then(|u| u.first_retrans_tsval)) {
            (Some(ecr), Some(first)) if ecr != 0 => (ecr.wrapping_sub(first) as i32) < 0,
            _ => false,
        }
    }

    /// RFC 8985 7.4.2 (as Linux's tcp_process_tlp_ack): what the ACK says about the last probe.
    fn tlp_on_ack(&mut self, s: &SendHalf, dsack: Option<(SeqNum, SeqNum)>, progress: bool, mss: u32, stats: &mut Stats) {
        let Some(high) = self.tlp_high_seq else { return };
        if s.una.lt(high) {
            return;
        }
        if !self.tlp_retrans || dsack.is_some_and(|(_, r)| r.ge(high)) {
            // New data probed, or the probe's duplicate was reported: no loss.
            self.tlp_high_seq = None;
        } else if s.una.gt(high) {
            // The probe repaired a loss: reduce the window once.
            self.tlp_high_seq = None;
            if self.phase == Phase::Open {
                self.begin_reduction(s, mss);
                self.cc.end_reduction();
                // A loss repaired: nothing to undo.
                self.undo = None;
                stats.tlp_recoveries += 1;
            }
        } else if !progress {
            // A pure duplicate: the original and the probe both arrived.
            self.tlp_high_seq = None;
        }
    }

    /// RFC 8985 6.3: RACK's reordering timer fired. Returns whether segments were marked lost.
    pub fn on_reorder_timeout(&mut self, now: Instant, s: &SendHalf, mss: u32, stats: &mut Stats) -> bool {
        let reo_wnd = self.rack.reo_wnd(self.recovering(), self.sent.sacked_bytes(), mss, self.rtt.srtt());
        let (marked, _) = self.rack.detect_loss(&mut self.sent, now, reo_wnd);
        stats.rack_losses += marked;
        if marked > 0 && matches!(self.phase, Phase::Open | Phase::Cwr(_)) {
            self.enter_recovery(s, mss, stats);
            // As Linux's tcp_rack_reo_timeout: a segment's worth, for the retransmission.
            self.prr_ack(mss, mss, true, false);
        }
        marked > 0
    }

    /// A retransmission timeout (RFC 6298 5.4-5.7, RFC 5681 3.1, as Linux's tcp_enter_loss):
    /// everything in flight not SACKed is lost, the loss window, the RTO doubled; F-RTO
    /// watches the ACKs that follow (RFC 5682). RFC 2018 8 and RFC 6675 5.1 say to forget the
    /// SACK information, for a receiver may renege; as Linux, it is forgotten only when the
    /// receiver did (the first segment is SACKed yet not acknowledged), which spares
    /// retransmitting what the receiver holds.
    pub fn on_rto(&mut self, s: &SendHalf, mss: u32, stats: &mut Stats) {
        stats.timeouts += 1;
        let new_episode = self.phase == Phase::Open;
        let first = self.consecutive_rtos == 1 || matches!(self.phase, Phase::Recovery(_));
        if new_episode || self.undo.is_none() {
            self.undo = Some(Undo { marker: s.una, retrans: None, before: self.cc.before_reduction(), first_retrans_tsval: None });
        }
        self.frto = if new_episode || self.consecutive_rtos > 1 { Frto::AwaitFirstAck } else { Frto::Off };
        self.cc.on_timeout(s.flight(), mss, first);
        self.sent.mark_all_lost();
        self.phase = Phase::Loss(s.nxt);
        self.dupacks = 0;
        self.tlp_high_seq = None;
        self.rtt.back_off();
    }

    /// RFC 8985 7.2 (as Linux's tcp_schedule_loss_probe): when the retransmission timer should
    /// fire as a tail-loss probe instead: with SACK, data in flight, no loss being recovered and
    /// nothing SACKed; 2 SRTT after the last send, plus the worst-case delayed ACK (200 ms,
    /// Linux's tcp_rto_min) for a lone segment; never later than the RTO.
    pub fn probe_timeout(&self, s: &SendHalf, mss: u32, sack: bool, rto: Duration) -> Option<Duration> {
        if !sack || self.phase != Phase::Open || self.sent.is_empty() || self.sent.sacked_bytes() > 0 {
            return None;
        }
        let pto = match self.rtt.srtt() {
            Some(srtt) if s.flight() <= mss => srtt * 2 + Duration::from_millis(200),
            Some(srtt) => srtt * 2,
            // As Linux (TCP_TIMEOUT_INIT) before any RTT sample.
            None => Duration::from_secs(1),
        };
        Some(pto.min(rto))
    }

    /// The probe timeout fired: a probe is due, unless one is already outstanding (RFC 8985
    /// 7.3: one probe per tail). Returns whether it is.
    pub fn on_probe_timeout(&mut self) -> bool {
        self.tlp_probe = self.tlp_high_seq.is_none();
        self.tlp_probe
    }

    /// A probe went out: SND.NXT after it, and whether it was a retransmission.
    pub fn probe_sent(&mut self, snd_nxt: SeqNum, retransmission: bool) {
        self.tlp_high_seq = Some(snd_nxt);
        self.tlp_retrans = retransmission;
    }

    /// Everything acknowledged: nothing in flight is left to reason about. What a later ACK
    /// could still change is dropped here rather than kept for an idle connection: a DSACK
    /// arriving after this no longer undoes the episode (Linux keeps its undo marker until
    /// the next episode).
    fn settle(&mut self, una: SeqNum) {
        self.rack.settle(una);
        self.round_end = una;
        // Nothing in flight: the next flight starts unpaced, as after an idle period.
        self.pace_next = Instant::ZERO;
        self.undo = None;
        self.tlp_high_seq = None;
        self.dupacks = 0;
        self.frto = Frto::Off;
    }

    /// No loss being recovered, no probe pending, nothing in flight: what is left is the RTT
    /// estimate, the congestion state and RACK's view of the path.
    pub fn is_at_rest(&self, una: SeqNum) -> bool {
        self.phase == Phase::Open
            && self.frto == Frto::Off
            && self.undo.is_none()
            && !self.tlp_probe
            && self.tlp_high_seq.is_none()
            && self.consecutive_rtos == 0
            && self.dupacks == 0
            && self.sent.is_empty()
            && self.armed == Armed::Rto
            && self.round_end == una
            && self.pace_next == Instant::ZERO
            && self.rack.is_at_rest(una)
    }

    /// Whether CWR is still owed (folded as a flag).
    pub fn cwr_pending(&self) -> bool {
        self.cwr_pending
    }

    /// `None` while the RTO backs off.
    pub fn fold(&self) -> Option<Folded> {
        Some(Folded { rtt: self.rtt.fold()?, cc: self.cc, rack: self.rack.fold() })
    }

    pub fn unfold(f: &Folded, config: &Config, una: SeqNum, cwr_pending: bool) -> Self {
        let rtt = RttEstimator::unfold(f.rtt, config.initial_rto, config.min_rto);
        Self { cwr_pending, ..Self::with(rtt, f.cc, Rack::unfold(&f.rack, una), una) }
    }
}

impl Folded {
    pub fn rtt(&self, config: &Config) -> RttEstimator {
        RttEstimator::unfold(self.rtt, config.initial_rto, config.min_rto)
    }
    pub fn cc(&self) -> &Congestion {
        &self.cc
    }
}
