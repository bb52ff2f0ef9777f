//! Congestion window control: NewReno (RFC 5681, RFC 6582) and CUBIC (RFC 9438), with
//! HyStart++ (RFC 9406) ending the initial slow start on a rise in delay before the queue
//! overflows, and HyStart's ACK train (as Linux) ending it once the window fills the path.
//! Loss recovery itself (which segments to resend) is the connection's; this module only
//! sizes the window.

use core::time::Duration;

use super::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum CongestionAlgorithm {
    NewReno,
    #[default]
    Cubic,
}

/// RFC 9438 4.6: beta_cubic.
const BETA: f32 = 0.7;
/// RFC 9438 5: C.
const C: f32 = 0.4;

/// No CUBIC epoch running (`epoch_start`).
const NO_EPOCH: Instant = Instant::MAX;
/// While no W_max is known (no congestion event yet, or none since a timeout), the window
/// grows by at least one segment per this many acknowledged (Linux's bictcp_update: 5% per
/// round trip).
const UNKNOWN_WMAX_MIN_GROWTH_SEGS: f32 = 20.0;

/// RFC 9406 4.3 constants.
const MIN_RTT_THRESH_US: u32 = 4_000;
const MAX_RTT_THRESH_US: u32 = 16_000;
const MIN_RTT_DIVISOR: u32 = 8;
const N_RTT_SAMPLE: u8 = 8;
const CSS_GROWTH_DIVISOR: u32 = 4;
const CSS_ROUNDS: u8 = 5;
/// An RTT not (yet) known.
const NO_RTT: u32 = u32::MAX;
/// HyStart's ACK train (Linux's tcp_cubic: hystart_low_window, hystart_ack_delta_us, and the
/// most hystart_ack_delay allows for delayed and stretched ACKs).
const TRAIN_LOW_WINDOW: u32 = 16;
const TRAIN_ACK_DELTA: Duration = Duration::from_millis(2);
const TRAIN_ACK_DELAY: Duration = Duration::from_millis(1);

/// HyStart's ACK train (Linux's hystart_update): ACKs each within 2 ms of the one before
/// (hystart_ack_delta), within one round. As Linux's, a round's first ACK begins a train
/// (bictcp_hystart_reset): ACKs that run on from one round into the next are not one train.
/// Unlike Linux's, a gap begins a new train rather than ending the round's: a paced round's
/// first ACK is often the last of the previous flight's, its train proper starting after a
/// gap. Besides its length, the train keeps how long its data took to send and how much it
/// delivered, for a paced sender's test ([`Congestion::on_ack_train`]), and the fastest
/// delivery rate any train has shown. Kept by the connection beside its [`Congestion`], and
/// not folded with it: an idle connection's next ACK begins a new round anyway (one handed
/// over forgets the fastest rate, and takes the next train's own).
#[derive(Clone, Copy, Debug, Default)]
pub struct AckTrain {
    /// The train's first ACK, and when the newest segment it delivered was sent.
    start: Instant,
    sent_start: Instant,
    /// The newest send time of any segment the train's ACKs delivered: a segment the
    /// path held back (reordered) arrives with an older one, which says nothing about the
    /// spacing of the data sent since.
    sent_newest: Instant,
    /// The train's last ACK that delivered data in order (see [`AckTrain::on_ack`]); `None`
    /// before the first, or when a round begins.
    last: Option<Instant>,
    /// Bytes the train's ACKs delivered after its first.
    bytes: u64,
    /// The longest gap between two of its ACKs.
    longest_gap: Duration,
    /// The fastest delivery rate of any train long enough to give one, in bytes per second.
    fastest: u64,
}

/// One ACK train as it stands at its latest ACK.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Train {
    /// From its first ACK to this one.
    pub length: Duration,
    /// From sending the newest segment its first ACK delivered to sending the newest any of
    /// its ACKs delivered.
    pub sent_over: Duration,
    /// Bytes delivered after the first ACK.
    pub bytes: u64,
    /// The longest gap between two of its ACKs.
    pub longest_gap: Duration,
    /// The fastest delivery rate, in bytes per second, of any train so far (this one
    /// included) spanning at least [`train_span`] of the minimum RTT.
    pub fastest: u64,
}

/// How long a train must span to give a delivery rate: an eighth of the minimum RTT, 2 ms at
/// least (a millisecond's burst of a paced sender is not a rate).
pub fn train_span(min_rtt: Duration) -> Duration {
    (min_rtt / 8).max(TRAIN_ACK_DELTA)
}

impl AckTrain {
    /// A round begins (Linux's bictcp_hystart_reset): so does a train, at the next ACK.
    pub fn start_round(&mut self) {
        self.last = None;
    }

    /// An ACK arrived at `now`, delivering `delivered` bytes, the newest of them sent at
    /// `sent`; `in_order`: it delivered data above all delivered before it; `min_rtt`: the
    /// path's. The train it belongs to.
    pub fn on_ack(&mut self, now: Instant, sent: Instant, delivered: u32, in_order: bool, min_rtt: Duration) -> Train {
        let running = self.last.is_some_and(|last| now.saturating_duration_since(last) <= TRAIN_ACK_DELTA);
        if !in_order {
            // Only segments below the highest delivered: the path reordered them (RFC 8985
            // 6.2 step 3), and when this ACK comes says how long the path held them back, not
            // how a bottleneck spaced the data. Their bytes belong to the train's data; the
            // ACK neither lengthens the train nor begins one. (Measured on the emulated path,
            // RTT 40 ms, 100 Mbit/s, 2% held back 2 ms: a hole filled 1.9 ms late at the end
            // of a train whose data left over 8.5 ms made the train look spaced a quarter wider
            // than its data, and slow start ended at 57 segments, a sixth of the path.)
            if !running {
                return Train { length: Duration::ZERO, sent_over: Duration::ZERO, bytes: 0, longest_gap: Duration::ZERO, fastest: self.fastest };
            }
            self.bytes += u64::from(delivered);
        } else if !running {
            *self = AckTrain { start: now, sent_start: sent, sent_newest: sent, last: Some(now), bytes: 0, longest_gap: Duration::ZERO, fastest: self.fastest };
        } else {
            if let Some(last) = self.last {
                self.longest_gap = self.longest_gap.max(now.saturating_duration_since(last));
            }
            self.last = Some(now);
            self.bytes += u64::from(delivered);
            self.sent_newest = self.sent_newest.max(sent);
        }
        let length = self.last.map_or(Duration::ZERO, |last| last.saturating_duration_since(self.start));
        let sent_over = self.sent_newest.saturating_duration_since(self.sent_start);
        // A delivery rate over the longer of the send and the ACK spans (as Linux's
        // tcp_rate.c: bw = min(send_rate, ack_rate)): ACKs bunched on the way back show no
        // more than the data left at.
        let span = length.max(sent_over);
        if span >= train_span(min_rtt) {
            let rate = (u128::from(self.bytes) * 1_000_000_000 / span.as_nanos()).min(u128::from(u64::MAX)) as u64;
            self.fastest = self.fastest.max(rate);
        }
        Train { length, sent_over, bytes: self.bytes, longest_gap: self.longest_gap, fastest: self.fastest }
    }
}

#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Congestion {
    algorithm: CongestionAlgorithm,
    cwnd: u32,
    ssthresh: u32,
    /// Bytes acknowledged toward the next congestion-avoidance increase (RFC 5681 3.1).
    bytes_acked: u32,
    // CUBIC state, in segments. `w_max` is the curve's plateau in the current epoch (at
    // least the window the epoch began with); `w_max_known`: a congestion event set it (Linux's
    // last_max_cwnd != 0), which a timeout forgets (RFC 9438 4.8).
    w_max: f32,
    // A connection handed over by a synx without this field arrives with none known: its
    // window grows at least as Linux's with no W_max until its next congestion event.
    #[serde(default)]
    w_max_known: bool,
    w_est: f32,
    k: f32,
    /// Start of the congestion-avoidance epoch (RFC 9438 4.2), or `NO_EPOCH`.
    epoch_start: Instant,
    // RFC 9406 HyStart++, in the initial slow start only (4.3: while ssthresh is at its
    // initial value). Rounds are the caller's: it calls `start_round` when an ACK reaches
    // what SND.NXT was when the previous round began.
    last_round_min_rtt_us: u32,
    current_round_min_rtt_us: u32,
    /// Conservative Slow Start: its baseline, `NO_RTT` when not in CSS.
    css_baseline_min_rtt_us: u32,
    rtt_sample_count: u8,
    css_round_count: u8,
}

impl Congestion {
    /// RFC 5681 3.1 / RFC 6928: initial window of `iw` segments.
    pub fn new(algorithm: CongestionAlgorithm, mss: u32, iw: u32) -> Self {
        Self {
            algorithm,
            cwnd: mss * iw,
            ssthresh: u32::MAX,
            bytes_acked: 0,
            w_max: 0.0,
            w_max_known: false,
            w_est: 0.0,
            k: 0.0,
            epoch_start: NO_EPOCH,
            last_round_min_rtt_us: NO_RTT,
            current_round_min_rtt_us: NO_RTT,
            css_baseline_min_rtt_us: NO_RTT,
            rtt_sample_count: 0,
            css_round_count: 0,
        }
    }

    fn in_css(&self) -> bool {
        self.css_baseline_min_rtt_us != NO_RTT
    }

    /// RFC 9406 4.3: a new round begins (the ACK reached the previous round's end). Whether
    /// this ended the initial slow start (the delay rose and stayed up for CSS_ROUNDS).
    pub fn start_round(&mut self) -> bool {
        if self.ssthresh != u32::MAX {
            return false;
        }
        let h = self;
        if h.in_css() {
            h.css_round_count += 1;
            if h.css_round_count >= CSS_ROUNDS {
                // RFC 9406 4.3: CSS_ROUNDS rounds in CSS: enter congestion avoidance.
                h.ssthresh = h.cwnd;
                return true;
            }
        }
        h.last_round_min_rtt_us = h.current_round_min_rtt_us;
        h.current_round_min_rtt_us = NO_RTT;
        h.rtt_sample_count = 0;
        false
    }

    /// RFC 9406 4.3: an RTT sample in the initial slow start; a rise of the round's minimum by
    /// more than an eighth of the last round's (4 to 16 ms) leaves standard slow start for
    /// Conservative Slow Start, and a fall back below the baseline returns to it.
    fn hystart_sample(&mut self, rtt: Duration) {
        let h = self;
        let rtt_us = rtt.as_micros().min(NO_RTT as u128 - 1) as u32;
        h.current_round_min_rtt_us = h.current_round_min_rtt_us.min(rtt_us);
        h.rtt_sample_count = h.rtt_sample_count.saturating_add(1);
        if h.rtt_sample_count < N_RTT_SAMPLE || h.current_round_min_rtt_us == NO_RTT {
            return;
        }
        if h.in_css() {
            if h.current_round_min_rtt_us < h.css_baseline_min_rtt_us {
                // Spurious: back to standard slow start.
                h.css_baseline_min_rtt_us = NO_RTT;
                h.css_round_count = 0;
            }
        } else if h.last_round_min_rtt_us != NO_RTT {
            let thresh = (h.last_round_min_rtt_us / MIN_RTT_DIVISOR).clamp(MIN_RTT_THRESH_US, MAX_RTT_THRESH_US);
            if h.current_round_min_rtt_us >= h.last_round_min_rtt_us.saturating_add(thresh) {
                h.css_baseline_min_rtt_us = h.current_round_min_rtt_us;
                h.css_round_count = 0;
            }
        }
    }

    /// HyStart's ACK-train detection in the initial slow start (as Linux's hystart_update with
    /// HYSTART_ACK_TRAIN; RFC 9406 keeps only the delay test, which with a doubling window
    /// comes a round late: a round's minimum RTT rises only once a queue stands from its
    /// start, when the window is already twice what the path holds). The window fills the
    /// path, and slow start ends here (ssthresh = cwnd) before the queue overflows, when:
    /// - unpaced, a round leaves in a burst and its ACKs come back spaced by the bottleneck:
    ///   a train longer than half the minimum RTT (plus a delayed ACK's allowance) is a window
    ///   of at least half the path, growing to the whole by the ACK (Linux's threshold without
    ///   pacing);
    /// - paced (at twice cwnd per SRTT), a round leaves spread over about half an SRTT, so its
    ///   train is long whether the bottleneck spaced it or not, and Linux's test (a train of
    ///   the whole minimum RTT) ends slow start only with the window at twice the path. Where
    ///   the ACKs come back an eighth or more further apart than their data left, the
    ///   bottleneck spaced them: they arrive at its rate, and the window holds the path once
    ///   it reaches that rate times the minimum RTT. The train must span an eighth of the
    ///   minimum RTT (2 ms at least) to give a rate. A bottleneck's rate is the fastest any
    ///   train showed (as BBR's max filter of delivery rates, Linux's bbr_update_bw):
    ///   ACKs held up on the way back (a busy receiver or path, a millisecond or two) make a
    ///   short train look spaced and slow, never faster than the bottleneck lets data through.
    ///   And a bottleneck that spaces ACKs an eighth wider than their data delivers at the
    ///   fastest rate seen or more: its data left an eighth faster than that rate or more.
    ///   ACKs of data sent slower came back spaced by chance (a stall, the timer wheel).
    ///   A bottleneck spaces a train's ACKs evenly, so they must come back spaced even
    ///   without the train's longest gap: a stall just under 2 ms (the most a train bridges)
    ///   in a train of a few milliseconds stretches it by an eighth in one gap.
    ///
    /// Whether this train ended the initial slow start.
    pub fn on_ack_train(&mut self, train: Train, mss: u32, min_rtt: Duration, paced: bool) -> bool {
        if self.ssthresh != u32::MAX || self.cwnd < TRAIN_LOW_WINDOW * mss {
            return false;
        }
        let full = if paced {
            let spaced = train.length >= train_span(min_rtt) && train.length.saturating_sub(train.longest_gap) * 8 >= train.sent_over * 9;
            let beyond = u128::from(train.bytes) * 8_000_000_000 >= 9 * u128::from(train.fastest) * train.sent_over.as_nanos();
            let path = u128::from(train.fastest) * min_rtt.as_nanos() / 1_000_000_000;
            spaced && beyond && u128::from(self.cwnd) >= path
        } else {
            train.length > (min_rtt + TRAIN_ACK_DELAY) / 2
        };
        if full {
            self.ssthresh = self.cwnd;
        }
        full
    }

    pub fn cwnd(&self) -> u32 {
        self.cwnd
    }

    pub fn ssthresh(&self) -> u32 {
        self.ssthresh
    }

    pub fn in_slow_start(&self) -> bool {
        self.cwnd < self.ssthresh
    }

    /// New data acknowledged outside recovery; `rtt`: this ACK's RTT sample, if any.
    pub fn on_ack(&mut self, now: Instant, acked: u32, mss: u32, srtt: Option<Duration>, rtt: Option<Duration>) {
        if self.in_slow_start() {
            if self.ssthresh == u32::MAX
                && let Some(rtt) = rtt
            {
                self.hystart_sample(rtt);
            }
            // RFC 5681 3.1 slow start, by all that was acknowledged as Linux's tcp_slow_start
            // (RFC 3465's limit of 2 SMSS per ACK would crawl behind receivers whose offloads
            // acknowledge many segments at once; RFC 9406 4.3 lifts it for paced senders); in
            // Conservative Slow Start a quarter of that (RFC 9406 4.3).
            let divisor = if self.in_css() { CSS_GROWTH_DIVISOR } else { 1 };
            self.cwnd = self.cwnd.saturating_add(acked / divisor);
            return;
        }
        match self.algorithm {
            CongestionAlgorithm::NewReno => self.reno_avoidance(acked, mss),
            CongestionAlgorithm::Cubic => self.cubic_avoidance(now, acked, mss, srtt),
        }
    }

    fn reno_avoidance(&mut self, acked: u32, mss: u32) {
        // RFC 5681 3.1: one SMSS per cwnd of acknowledged bytes.
        self.bytes_acked = self.bytes_acked.saturating_add(acked);
        if self.bytes_acked >= self.cwnd {
            self.bytes_acked -= self.cwnd;
            self.cwnd = self.cwnd.saturating_add(mss);
        }
    }

    fn cubic_avoidance(&mut self, now: Instant, acked: u32, mss: u32, srtt: Option<Duration>) {
        let mssf = mss as f32;
        let cwnd_seg = self.cwnd as f32 / mssf;
        if self.epoch_start == NO_EPOCH {
            // RFC 9438 4.2: a new congestion-avoidance epoch.
            if self.w_max < cwnd_seg {
                self.w_max = cwnd_seg;
            }
            self.k = ((self.w_max - cwnd_seg) / C).max(0.0).cbrt();
            self.w_est = cwnd_seg;
            self.epoch_start = now;
        }
        let epoch = self.epoch_start;
        let rtt = srtt.unwrap_or(Duration::from_millis(100)).as_secs_f32();
        let t = now.saturating_duration_since(epoch).as_secs_f32();
        let w_cubic = |t: f32| C * (t - self.k).powi(3) + self.w_max;
        // RFC 9438 4.3: Reno-friendly estimate, alpha = 3(1-beta)/(1+beta).
        let alpha = 3.0 * (1.0 - BETA) / (1.0 + BETA);
        self.w_est += alpha * (acked as f32 / mssf) / cwnd_seg;
        let target = w_cubic(t + rtt).clamp(cwnd_seg, 1.5 * cwnd_seg);
        // No congestion event to aim at (slow start ended by HyStart, or the first epoch after
        // a timeout): as Linux's bictcp_update, at least 5% per round trip in either region,
        // where the convex curve from K = 0 adds 0.4 segments in its first second and leaves
        // the window behind flows that saw a loss.
        let floor = if self.w_max_known { 0.0 } else { 1.0 / UNKNOWN_WMAX_MIN_GROWTH_SEGS };
        let acked_seg = acked as f32 / mssf;
        let next = if w_cubic(t) < self.w_est {
            // RFC 9438 4.3: Reno-friendly region.
            self.w_est.max(cwnd_seg + floor * acked_seg)
        } else {
            // RFC 9438 4.4/4.5: concave/convex region.
            cwnd_seg + ((target - cwnd_seg) / cwnd_seg).max(floor) * acked_seg
        };
        let next = (next * mssf) as u32;
        self.cwnd = next.clamp(self.cwnd, self.cwnd.saturating_add(acked.max(mss)));
    }

    /// A window reduction begins (fast recovery, RFC 5681 3.2 step 2 and RFC 6675 5 step 4.2;
    /// or a congestion signal without loss, RFC 3168 6.1.2): ssthresh is lowered; cwnd then
    /// follows Proportional Rate Reduction ([`Congestion::set_reduced_window`]) until
    /// [`Congestion::end_reduction`].
    pub fn begin_reduction(&mut self, flight: u32, mss: u32) {
        self.on_loss(flight, mss);
    }

    /// During a reduction, the window PRR computed for this ACK (RFC 6937 3).
    pub fn set_reduced_window(&mut self, cwnd: u32) {
        self.cwnd = cwnd;
    }

    /// The reduction is over (RFC 6937 3: cwnd = ssthresh when recovery ends).
    pub fn end_reduction(&mut self) {
        self.cwnd = self.ssthresh;
    }

    /// What [`Congestion::undo`] restores, taken when a reduction begins: the state before it,
    /// with ssthresh as Linux's tcp_current_ssthresh (at least 3/4 of cwnd).
    pub fn before_reduction(&self) -> Congestion {
        Congestion { ssthresh: self.ssthresh.max(self.cwnd / 2 + self.cwnd / 4), ..*self }
    }

    /// The reduction was spurious (RFC 5682, RFC 2883 and as Linux's tcp_undo_cwnd_reduction):
    /// back to the state before it, keeping any growth since.
    pub fn undo(&mut self, before: &Congestion) {
        let (cwnd, ssthresh) = (self.cwnd.max(before.cwnd), self.ssthresh.max(before.ssthresh));
        *self = Congestion { cwnd, ssthresh, ..*before };
    }

    /// A congestion signal: the new ssthresh (RFC 5681 3.2 eq 4, RFC 9438 4.6).
    fn on_loss(&mut self, flight: u32, mss: u32) {
        match self.algorithm {
            CongestionAlgorithm::NewReno => {
                self.ssthresh = (flight / 2).max(2 * mss);
            }
            CongestionAlgorithm::Cubic => {
                let cwnd_seg = self.cwnd as f32 / mss as f32;
                // RFC 9438 4.7: fast convergence.
                self.w_max = if cwnd_seg < self.w_max { cwnd_seg * (1.0 + BETA) / 2.0 } else { cwnd_seg };
                self.w_max_known = true;
                self.ssthresh = ((self.cwnd as f32 * BETA) as u32).max(2 * mss);
                self.epoch_start = NO_EPOCH;
            }
        }
        self.bytes_acked = 0;
    }

    /// RFC 5681 3.1 eq 4 and "loss window": after a retransmission timeout cwnd = 1 SMSS.
    /// `reduce`: a first timeout (or one during fast recovery) also lowers ssthresh; a
    /// timeout of the same data again leaves it (RFC 5681 3.1: ssthresh is not halved again
    /// for a segment retransmitted more than once).
    pub fn on_timeout(&mut self, flight: u32, mss: u32, reduce: bool) {
        if reduce {
            self.on_loss(flight, mss);
        }
        if self.algorithm == CongestionAlgorithm::Cubic {
            // RFC 9438 4.8: the first congestion avoidance after a timeout starts from K = 0,
            // W_max the window it begins with (as Linux's bictcp_reset on entering Loss).
            self.w_max = 0.0;
            self.w_max_known = false;
            self.epoch_start = NO_EPOCH;
        }
        self.cwnd = mss;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The minimum RTT of the ACK-train tests: a train must span 5 ms to give a rate.
    const MIN_RTT: Duration = Duration::from_millis(40);

    #[test]
    fn newreno_slow_start_then_linear() {
        let mut c = Congestion::new(CongestionAlgorithm::NewReno, 1000, 10);
        c.on_ack(Instant::ZERO, 1000, 1000, None, None);
        assert_eq!(c.cwnd, 11_000);
        // A stretch ACK grows the window by all it acknowledges.
        c.on_ack(Instant::ZERO, 5000, 1000, None, None);
        assert_eq!(c.cwnd, 16_000);
        c.begin_reduction(20_000, 1000);
        c.end_reduction();
        assert_eq!((c.ssthresh, c.cwnd), (10_000, 10_000));
        for _ in 0..10 {
            c.on_ack(Instant::ZERO, 1000, 1000, None, None);
        }
        assert_eq!(c.cwnd, 11_000);
        c.on_timeout(11_000, 1000, true);
        assert_eq!((c.cwnd, c.ssthresh), (1000, 5500));
        c.on_timeout(1000, 1000, false);
        assert_eq!((c.cwnd, c.ssthresh), (1000, 5500));
    }

    /// RFC 9406: rounds of `acks` ACKs of one segment each, the RTT sample of round `r` given
    /// by `rtt(r)`; returns cwnd (in segments) after each round.
    fn slow_start_rounds(c: &mut Congestion, rounds: u32, acks: u32, rtt: impl Fn(u32) -> u64) -> Vec<u32> {
        let mut out = Vec::new();
        for r in 0..rounds {
            let in_slow_start = c.in_slow_start();
            // Whether the round's start ended slow start (counted as tcp_hystart_delay_exits).
            assert_eq!(c.start_round(), in_slow_start && !c.in_slow_start());
            for _ in 0..acks {
                c.on_ack(Instant::ZERO, 1000, 1000, None, Some(Duration::from_micros(rtt(r))));
            }
            out.push(c.cwnd / 1000);
        }
        out
    }

    #[test]
    fn hystart_plus_plus_leaves_slow_start_when_the_delay_rises() {
        // A flat RTT: standard slow start, cwnd + 10 per round of 10 ACKs.
        let mut c = Congestion::new(CongestionAlgorithm::Cubic, 1000, 10);
        assert_eq!(slow_start_rounds(&mut c, 3, 10, |_| 40_000), [20, 30, 40]);
        assert!(!c.in_css());
        // The round's minimum rises by 6 ms over 40 ms (threshold 5 ms): Conservative Slow
        // Start from the 8th sample, a quarter of the growth (RFC 9406 4.3).
        assert_eq!(slow_start_rounds(&mut c, 1, 10, |_| 46_000), [47]);
        assert!(c.in_css() && c.in_slow_start());
        // The delay falls back below the baseline: standard slow start again from the 8th
        // sample (7 quarter increases, then 3 whole).
        assert_eq!(slow_start_rounds(&mut c, 1, 10, |_| 41_000), [52]);
        assert!(!c.in_css());
        // A rise again, then CSS_ROUNDS rounds in CSS: congestion avoidance at that cwnd.
        let before = c.cwnd;
        let cwnd = slow_start_rounds(&mut c, 6, 10, |r| 50_000 + 1000 * r as u64);
        assert!(c.in_css());
        // Entered CSS in the first of these rounds; at the start of the sixth, five rounds in
        // CSS are complete: ssthresh is the cwnd then, and that round grows it as CUBIC does.
        assert_eq!(c.ssthresh, before + 7 * 1000 + 3 * 250 + 4 * 10 * 250, "{cwnd:?}");
        assert!(!c.in_slow_start());
        assert!(!c.start_round(), "slow start ends once");
        // A rise below the threshold (4 ms at least) does nothing.
        let mut c = Congestion::new(CongestionAlgorithm::Cubic, 1000, 10);
        slow_start_rounds(&mut c, 2, 10, |_| 10_000);
        slow_start_rounds(&mut c, 1, 10, |_| 13_900);
        assert!(!c.in_css());
    }

    /// A round's ACKs every `ack_gap`, each delivering 2 segments of 1000 bytes sent
    /// `sent_gap` apart, from 1 s on, into `c` with a minimum RTT of 40 ms; returns the
    /// window when slow start ended, if it did.
    fn train_round(c: &mut Congestion, acks: u64, ack_gap: Duration, sent_gap: Duration, paced: bool) -> Option<u32> {
        let mut train = AckTrain::default();
        train.start_round();
        let t0 = Instant::ZERO + Duration::from_secs(1);
        for i in 0..acks as u32 {
            let t = train.on_ack(t0 + ack_gap * i, t0 - Duration::from_millis(40) + sent_gap * i, 2000, true, MIN_RTT);
            assert_eq!((t.length, t.sent_over, t.bytes), (ack_gap * i, sent_gap * i, 2000 * u64::from(i)));
            c.on_ack_train(t, 1000, Duration::from_millis(40), paced);
            if !c.in_slow_start() {
                return Some(c.ssthresh);
            }
            c.on_ack(t0, 2000, 1000, None, None);
        }
        None
    }

    #[test]
    fn an_unpaced_train_longer_than_half_the_min_rtt_ends_slow_start() {
        // Linux's hystart_update without pacing: a round left in a burst and comes back at the
        // bottleneck's rate (2 segments per ms); past (40 + 1) / 2 ms, the window (100
        // segments and 2 per ACK since) fills the path: ssthresh is the window then.
        let mut c = Congestion::new(CongestionAlgorithm::Cubic, 1000, 100);
        let ms = Duration::from_millis(1);
        assert_eq!(train_round(&mut c, 40, ms, Duration::ZERO, false), Some(100_000 + 21 * 2000));
        // Below 16 segments, or after the initial slow start, the train decides nothing.
        let mut c = Congestion::new(CongestionAlgorithm::Cubic, 1000, 10);
        let long = Train { length: ms * 500, sent_over: Duration::ZERO, bytes: 1_000_000, longest_gap: Duration::ZERO, fastest: 2_000_000 };
        for paced in [false, true] {
            c.on_ack_train(long, 1000, ms * 40, paced);
            assert!(c.in_slow_start());
        }
    }

    #[test]
    fn a_paced_train_ends_slow_start_once_the_window_holds_the_bottleneck_rate_times_min_rtt() {
        let ms = Duration::from_millis(1);
        // ACKs come back as their data left (2 segments per ms): the pacer spaced them, not a
        // bottleneck. However long, the train is no sign of a full path.
        let mut c = Congestion::new(CongestionAlgorithm::Cubic, 1000, 50);
        assert_eq!(train_round(&mut c, 40, ms, ms, true), None);
        // Data left at 2 segments per 0.5 ms, ACKs come back at 2 per ms: the bottleneck's
        // rate, 2 segments per ms, times 40 ms: the path holds 80 segments. The window (50,
        // then 2 more per ACK) holds that at the 15th ACK, with the train at 14 ms, past
        // the 5 ms (an eighth of 40) a rate needs.
        let mut c = Congestion::new(CongestionAlgorithm::Cubic, 1000, 50);
        assert_eq!(train_round(&mut c, 40, ms, ms / 2, true), Some(80_000));
        // A window already beyond the path: the train must first span 5 ms.
        let mut c = Congestion::new(CongestionAlgorithm::Cubic, 1000, 200);
        assert_eq!(train_round(&mut c, 40, ms, ms / 2, true), Some(200_000 + 5 * 2000));
    }

    /// The `i`-th ACK of a round that began at `start`, as traced in the daemon: each ACK
    /// acknowledges 2 segments of 1448 bytes, ACKs `ack_us` apart, their data sent `sent_us`
    /// apart one minimum RTT before.
    fn traced_ack(train: &mut AckTrain, start: Instant, i: u32, ack_us: u32, sent_us: u32) -> Train {
        let us = Duration::from_micros(1);
        train.on_ack(start + us * ack_us * i, start - MIN_RTT + us * sent_us * i, 2 * 1448, true, MIN_RTT)
    }

    #[test]
    fn acks_held_up_on_the_way_back_do_not_make_a_short_train_look_like_a_slower_bottleneck() {
        // Traced in the daemon on the emulated path (RTT 40 ms, 100 Mbit/s, paced, no loss):
        // slow start ended at 174 segments (BDP ~345) on a train of 16 segments sent over
        // 3.3 ms whose ACKs came back over 5.25 ms: 35 Mbit/s, a third of the bottleneck's,
        // taken for its rate (and in rounds before, trains had delivered faster). Here:
        // 2 segments of 1448 bytes a train's ACK, first paced trains delivering at 58 Mbit/s
        // (ACKs as their data left: not spaced, no exit), then a short train at cwnd 174
        // whose ACKs are held up (sent 0.5 ms apart, acknowledged 0.75 ms apart): spaced, but
        // at 31 Mbit/s; the path holds at least the fastest rate seen times the minimum RTT,
        // 200 segments, so slow start goes on (with that train's own rate, 106 segments: it
        // ended). Then a bottleneck's spacing at 58 Mbit/s ends it once cwnd holds 200.
        let (mss, seg2) = (1448, 2 * 1448);
        let us = Duration::from_micros(1);
        let t0 = Instant::ZERO + Duration::from_secs(1);
        let mut c = Congestion::new(CongestionAlgorithm::Cubic, mss, 157);
        let mut train = AckTrain::default();
        train.start_round();
        for i in 0..25u32 {
            let t = traced_ack(&mut train, t0, i, 400, 400);
            c.on_ack_train(t, mss, MIN_RTT, true);
        }
        assert!(c.in_slow_start());
        let fastest = 7_240_000;
        assert_eq!(traced_ack(&mut train, t0, 25, 400, 400).fastest, fastest);
        let path = fastest * 40 / 1000;
        assert_eq!(path / u64::from(mss), 200);
        // The next round, at 174 segments: ACKs held up.
        let mut c = Congestion::new(CongestionAlgorithm::Cubic, mss, 174);
        let t1 = t0 + Duration::from_millis(40);
        train.start_round();
        for i in 0..8u32 {
            let t = traced_ack(&mut train, t1, i, 750, 500);
            if i == 7 {
                assert_eq!((t.length, t.sent_over, t.bytes), (us * 5250, us * 3500, 7 * u64::from(seg2)));
                assert!((t.length - t.longest_gap) * 8 >= t.sent_over * 9, "spaced, as by a bottleneck");
                assert!(u64::from(c.cwnd) > t.bytes * 40_000 / 5250, "that train's own rate says full");
            }
            c.on_ack_train(t, mss, MIN_RTT, true);
            assert!(c.in_slow_start(), "ACK {i}: cwnd {}", c.cwnd / mss);
        }
        // After a gap, a train spaced by the bottleneck (data sent 2 segments per 0.3 ms,
        // acknowledged 2 per 0.4 ms): slow start ends once the window holds the path.
        let t2 = t1 + Duration::from_millis(10);
        let mut exit = None;
        for i in 0..40u32 {
            let t = traced_ack(&mut train, t2, i, 400, 300);
            c.on_ack_train(t, mss, MIN_RTT, true);
            if !c.in_slow_start() {
                exit = Some(c.ssthresh);
                break;
            }
            c.on_ack(t2, seg2, mss, None, None);
        }
        let exit = u64::from(exit.expect("slow start ended"));
        assert!((path..path + u64::from(seg2)).contains(&exit), "ended at {exit}, the path holds {path}");
    }

    #[test]
    fn a_train_of_data_sent_no_faster_than_the_path_has_delivered_ends_nothing() {
        // Traced in the daemon on the emulated path (RTT 40 ms, 100 Mbit/s, paced, no loss):
        // slow start ended at 213 segments (BDP ~345) on a train of 53 segments sent over
        // 13.2 ms (46 Mbit/s) and acknowledged over 15.0 ms, an eighth wider, while earlier
        // trains had delivered 48 Mbit/s: data sent slower than the path had delivered met no
        // bottleneck, the spacing was chance. Here: trains delivering 2 segments of 1448
        // bytes per 0.48 ms (48 Mbit/s: 166 segments in 40 ms), then, at cwnd 213, data sent
        // 2 segments per 0.5 ms and acknowledged 2 per 0.6 ms (spaced, and with the window
        // beyond the fastest rate times the minimum RTT, it ended). Then data sent an eighth
        // faster than any rate seen, 2 segments per 0.4 ms, acknowledged 2 per 0.5 ms: that
        // ends it.
        let mss = 1448;
        let t0 = Instant::ZERO + Duration::from_secs(1);
        let mut c = Congestion::new(CongestionAlgorithm::Cubic, mss, 213);
        let mut train = AckTrain::default();
        train.start_round();
        for i in 0..25u32 {
            let t = traced_ack(&mut train, t0, i, 480, 480);
            assert_eq!(t.length, t.sent_over);
            c.on_ack_train(t, mss, MIN_RTT, true);
        }
        assert!(c.in_slow_start());
        let t1 = t0 + Duration::from_millis(40);
        train.start_round();
        for i in 0..27u32 {
            let t = traced_ack(&mut train, t1, i, 600, 500);
            if i == 26 {
                assert!((t.length - t.longest_gap) * 8 >= t.sent_over * 9, "spaced, as by a bottleneck");
                assert_eq!(t.fastest, 6_033_333);
                assert!(u128::from(c.cwnd) > u128::from(t.fastest) * 40 / 1000, "the window holds the fastest rate's path");
            }
            c.on_ack_train(t, mss, MIN_RTT, true);
            assert!(c.in_slow_start(), "ACK {i}");
        }
        let t2 = t1 + Duration::from_millis(20);
        let ended = (0..20u32).any(|i| {
            let t = traced_ack(&mut train, t2, i, 500, 400);
            c.on_ack_train(t, mss, MIN_RTT, true);
            !c.in_slow_start()
        });
        assert!(ended && c.ssthresh == 213 * mss);
    }

    #[test]
    fn a_segment_the_path_held_back_does_not_shrink_the_trains_send_spread() {
        // Paced data left 2 segments per 0.5 ms; one segment the path held back 5 ms is
        // delivered by the 31st ACK, the newest it delivers sent 20 ms before the others:
        // the spread the train's data left over stays what it was (measured from that old
        // send time, the ACKs would look spaced wider than the data, as by a bottleneck).
        let ms = Duration::from_millis(1);
        let mut train = AckTrain::default();
        train.start_round();
        let (t0, sent0) = (Instant::ZERO + ms * 1000, Instant::ZERO + ms * 960);
        for i in 0..40u32 {
            let sent = if i == 30 { sent0 - ms * 5 } else { sent0 + ms / 2 * i };
            let t = train.on_ack(t0 + ms / 2 * i, sent, 2000, true, MIN_RTT);
            assert_eq!(t.sent_over, ms / 2 * if i == 30 { 29 } else { i }, "ACK {i}");
        }
    }

    #[test]
    fn an_ack_that_only_fills_a_hole_neither_lengthens_nor_begins_a_train() {
        // Data left 1 segment per ms and came back so; segment 7, held back 2 ms, is delivered
        // by an ACK of nothing above what was delivered (RFC 8985 6.2 step 3) at 9 ms: its
        // bytes count, its lateness does not (else the train looks 1/8 wider than its data).
        let ms = Duration::from_millis(1);
        let (t0, sent0) = (Instant::ZERO + ms * 1000, Instant::ZERO + ms * 960);
        let mut train = AckTrain::default();
        train.start_round();
        for i in (0..7u32).chain([8]) {
            assert_eq!(train.on_ack(t0 + ms * i, sent0 + ms * i, 1000, true, MIN_RTT).length, ms * i);
        }
        let late = train.on_ack(t0 + ms * 9, sent0 + ms * 7, 1000, false, MIN_RTT);
        assert_eq!(late, Train { length: ms * 8, sent_over: ms * 8, bytes: 8000, longest_gap: ms * 2, fastest: 1_000_000 });
        // In order again: the train runs on from its last in-order ACK.
        assert_eq!(train.on_ack(t0 + ms * 10, sent0 + ms * 9, 1000, true, MIN_RTT), Train { length: ms * 10, sent_over: ms * 9, bytes: 9000, longest_gap: ms * 2, fastest: 1_000_000 });
        // After a gap, or at a round's start, a late ACK begins nothing.
        for gap in [true, false] {
            if !gap {
                train.start_round();
            }
            let t = train.on_ack(t0 + ms * 20, sent0, 1000, false, MIN_RTT);
            assert_eq!(t, Train { length: Duration::ZERO, sent_over: Duration::ZERO, bytes: 0, longest_gap: Duration::ZERO, fastest: 1_000_000 });
            let next = train.on_ack(t0 + ms * 21, sent0 + ms * 20, 1000, true, MIN_RTT);
            assert_eq!((next.length, next.bytes), (Duration::ZERO, 0), "a new train at the next in-order ACK");
        }
    }

    #[test]
    fn an_ack_train_begins_at_a_gap_or_a_round_and_never_spans_two() {
        // Linux's hystart_update: a train starts at the round's first ACK
        // (bictcp_hystart_reset); ACKs more than 2 ms apart are not one train.
        let ms = |n: u64| Duration::from_millis(n);
        let mut train = AckTrain::default();
        let r0 = Instant::ZERO + ms(1000);
        let mut ack = |t: u64| train.on_ack(r0 + ms(t), r0 + ms(t) - ms(40), 1000, true, MIN_RTT);
        assert_eq!(ack(0).length, ms(0));
        assert_eq!(ack(2), Train { length: ms(2), sent_over: ms(2), bytes: 1000, longest_gap: ms(2), fastest: 0 }, "2 ms: too short for a rate");
        assert_eq!(ack(5), Train { length: ms(0), sent_over: ms(0), bytes: 0, longest_gap: ms(0), fastest: 0 }, "a 3 ms gap: a new train");
        assert_eq!(ack(6).length, ms(1));
        // ACKs 1 ms apart that run from one round into the next: the next round's train
        // counts from its own first ACK, not from the previous round's.
        for i in 7..40 {
            assert_eq!(ack(i).length, ms(i - 5));
        }
        train.start_round();
        let mut ack = |t: u64| train.on_ack(r0 + ms(t), r0 + ms(t) - ms(40), 1000, true, MIN_RTT);
        for i in 40..50 {
            assert_eq!(ack(i).length, ms(i - 40));
        }
    }

    /// Congestion avoidance for `rounds` round trips of `rtt`, each acknowledging the window
    /// 2 segments (of 1000 bytes) per ACK, spread over the round; returns the window after.
    fn avoidance_rounds(c: &mut Congestion, now: &mut Instant, rounds: u32, rtt: Duration) -> u32 {
        for _ in 0..rounds {
            let acks = (c.cwnd / 2000).max(1);
            for _ in 0..acks {
                *now = *now + rtt / acks;
                c.on_ack(*now, 2000, 1000, Some(rtt), None);
            }
        }
        c.cwnd
    }

    #[test]
    fn a_congestion_state_handed_over_without_wmax_known_arrives_with_none_known() {
        // The folded form of a synx from before `w_max_known` (takeover by a newer binary).
        let mut c = Congestion::new(CongestionAlgorithm::Cubic, 1000, 100);
        c.begin_reduction(100_000, 1000);
        let mut v = serde_json::to_value(c).unwrap();
        assert_eq!(v["w_max_known"], true);
        v.as_object_mut().unwrap().remove("w_max_known");
        let back: Congestion = serde_json::from_value(v).unwrap();
        assert!(!back.w_max_known);
        assert_eq!((back.cwnd, back.ssthresh), (c.cwnd, c.ssthresh));
    }

    #[test]
    fn with_no_wmax_known_cubic_grows_at_least_5_percent_per_round_trip() {
        // Slow start ended without a loss (HyStart) at 100 segments: no W_max to aim at, and
        // the convex curve from K = 0 adds C t^3 (0.03 segments in 0.4 s). As Linux's
        // bictcp_update (cnt at most 20 while last_max_cwnd is 0): at least 1 segment per 20
        // acknowledged, 5% a round trip.
        let rtt = Duration::from_millis(40);
        let mut c = Congestion::new(CongestionAlgorithm::Cubic, 1000, 100);
        c.ssthresh = c.cwnd;
        let mut now = Instant::ZERO + Duration::from_secs(1);
        let cwnd = avoidance_rounds(&mut c, &mut now, 10, rtt);
        assert!((160_000..=163_000).contains(&cwnd), "1.05^10 = 1.63: {cwnd}");
        // After a congestion event W_max is known: CUBIC's concave approach to it, which
        // starts slower (RFC 9438 4.4).
        let mut c = Congestion::new(CongestionAlgorithm::Cubic, 1000, 100);
        c.begin_reduction(100_000, 1000);
        c.end_reduction();
        let cwnd = avoidance_rounds(&mut c, &mut now, 10, rtt);
        assert!((70_000..80_000).contains(&cwnd), "{cwnd}");
    }

    #[test]
    fn after_a_timeout_cubic_begins_its_next_epoch_at_k_zero() {
        // RFC 9438 4.8: ssthresh from beta as for any loss, but the first congestion
        // avoidance after the timeout starts with K = 0 and W_max the window it begins with,
        // not the W_max before the timeout (as Linux's bictcp_reset on entering Loss).
        let rtt = Duration::from_millis(40);
        let mut c = Congestion::new(CongestionAlgorithm::Cubic, 1000, 100);
        c.on_timeout(100_000, 1000, true);
        assert_eq!((c.cwnd, c.ssthresh), (1000, 70_000));
        let mut now = Instant::ZERO + Duration::from_secs(1);
        while c.in_slow_start() {
            now = now + Duration::from_millis(1);
            c.on_ack(now, 1000, 1000, Some(rtt), None);
        }
        c.on_ack(now, 1000, 1000, Some(rtt), None);
        assert_eq!(c.k, 0.0);
        assert_eq!(c.w_max, 70.0);
        // With no W_max known, about 5% a round trip from there (1.05^4 = 1.216; whole ACKs
        // of 2 segments per round trip lose a little).
        let cwnd = avoidance_rounds(&mut c, &mut now, 4, rtt);
        assert!(cwnd >= 70_000 * 12 / 10, "{cwnd}");
        // The next loss sets W_max again: back to the concave approach after it.
        c.begin_reduction(c.cwnd, 1000);
        c.end_reduction();
        assert!(c.w_max_known);
    }

    #[test]
    fn cubic_reduces_by_beta_and_regrows_toward_wmax() {
        let mut c = Congestion::new(CongestionAlgorithm::Cubic, 1000, 100);
        let before = c.before_reduction();
        c.begin_reduction(100_000, 1000);
        c.end_reduction();
        assert_eq!((c.ssthresh, c.cwnd), (70_000, 70_000));
        // Undone: the window and ssthresh as before (ssthresh at least 3/4 of cwnd).
        let mut undone = c;
        undone.undo(&before);
        assert_eq!((undone.ssthresh, undone.cwnd), (u32::MAX, 100_000));
        let mut now = Instant::ZERO;
        let rtt = Duration::from_millis(10);
        for _ in 0..2000 {
            now = now + Duration::from_millis(1);
            c.on_ack(now, 1000, 1000, Some(rtt), None);
        }
        assert!(c.cwnd > 70_000, "{}", c.cwnd);
        c.on_loss(c.cwnd, 1000);
        assert!(c.ssthresh >= 2000);
    }
}
