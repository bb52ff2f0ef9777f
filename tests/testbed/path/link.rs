//! One direction of an emulated path as a pure model in virtual time: what happens to a frame
//! offered at time `now` (lost, dropped at the full queue, or delivered at some later time,
//! perhaps marked CE, perhaps twice). No I/O and no clock: the forwarding thread
//! ([`super::Emulator`]) feeds it real frames and real times, the unit tests below feed it
//! numbers.

use std::time::Duration;

/// Nanoseconds on CLOCK_MONOTONIC.
pub type Nanos = u64;

/// What one direction of the path does to the frames it carries.
///
/// The stages run in this order, as on a real path: loss on the access link, then the
/// bottleneck (a drop-tail queue in front of a link of `rate`), then the propagation `delay`.
#[derive(Debug, Clone, PartialEq)]
pub struct PathSpec {
    /// One-way propagation delay.
    pub delay: Duration,
    /// Each frame's delay is drawn uniformly from `delay ± jitter` (netem's convention), but
    /// frames keep their order: a frame never overtakes the one before it (queueing delay on a
    /// real path varies without reordering; reordering is [`PathSpec::reorder`]'s job).
    pub jitter: Duration,
    /// The bottleneck's rate in bits per second, counting each Ethernet frame from its
    /// destination MAC to the end of its payload (no preamble, FCS or gap): at 100 Mbit/s a
    /// 1514-byte frame takes 121.1 us. `None`: no bottleneck.
    pub rate_bps: Option<u64>,
    /// The bottleneck's drop-tail queue, in bytes of frames waiting (the one on the wire
    /// included). `None`: unbounded. Meaningless without a rate.
    pub queue_bytes: Option<usize>,
    /// Frames lost before the bottleneck.
    pub loss: Loss,
    /// Frames held back so that later ones overtake them.
    pub reorder: Option<Reorder>,
    /// Probability that a frame is sent twice (the copy queues behind the original).
    pub duplicate: f64,
    /// Mark ECN-capable frames CE when more than this many bytes wait in the queue (a step
    /// marker, as DCTCP-style AQMs do); frames that are not ECN-capable are left alone.
    pub ecn_threshold: Option<usize>,
}

impl Default for PathSpec {
    /// A transparent path: no delay, no bottleneck, no loss.
    fn default() -> Self {
        Self {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            rate_bps: None,
            queue_bytes: None,
            loss: Loss::None,
            reorder: None,
            duplicate: 0.0,
            ecn_threshold: None,
        }
    }
}

impl PathSpec {
    /// One direction of a path with round-trip time `rtt` (half of it each way) through a
    /// bottleneck of `rate_bps` whose queue holds one bandwidth-delay product.
    pub fn wan(rtt: Duration, rate_bps: u64) -> Self {
        Self {
            delay: rtt / 2,
            rate_bps: Some(rate_bps),
            queue_bytes: Some(bdp_bytes(rtt, rate_bps)),
            ..Self::default()
        }
    }

    pub fn with_loss(mut self, loss: Loss) -> Self {
        self.loss = loss;
        self
    }

    pub fn with_reorder(mut self, probability: f64, gap: Duration) -> Self {
        self.reorder = Some(Reorder { probability, gap });
        self
    }
}

/// A full-size Ethernet frame (1500-byte MTU): the Gilbert-Elliott chain's unit of time.
const FULL_FRAME: usize = 1514;

/// Bytes in flight that fill a path of `rtt` at `rate_bps`.
pub fn bdp_bytes(rtt: Duration, rate_bps: u64) -> usize {
    (rate_bps as u128 * rtt.as_nanos() / 8 / 1_000_000_000) as usize
}

/// How frames are lost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Loss {
    None,
    /// Each frame independently with this probability.
    Random(f64),
    /// The Gilbert-Elliott model: a two-state Markov chain that steps once per full-size
    /// frame's time at the bottleneck rate, and at least once per frame. From
    /// the good state the chain moves to the bad one with probability `p`, back with
    /// probability `r`; a frame is lost with `loss_good` or `loss_bad` in the state the chain
    /// is then in. Back to back, frames see bursts of `1 / r` frames; a burst is a stretch of
    /// the channel's time, so a frame sent after a quiet second finds the chain settled at its
    /// long-run mean, not where the last frame left it. (A chain stepped by frames alone turns
    /// sparse traffic, such as retransmissions after a timeout seconds apart, into outages of
    /// minutes: each one lost with probability 1 - r after the one before.)
    GilbertElliott { p: f64, r: f64, loss_good: f64, loss_bad: f64 },
}

impl Loss {
    /// Bursty loss averaging `mean` of the frames, in bursts of `burst` frames on average
    /// (Gilbert's model: every frame in the bad state is lost, none in the good one).
    pub fn bursty(mean: f64, burst: f64) -> Self {
        let r = 1.0 / burst.max(1.0);
        // The bad state's share is p / (p + r); set it to `mean`.
        let p = mean * r / (1.0 - mean);
        Loss::GilbertElliott { p, r, loss_good: 0.0, loss_bad: 1.0 }
    }

    /// The long-run fraction of frames lost.
    pub fn mean(&self) -> f64 {
        match *self {
            Loss::None => 0.0,
            Loss::Random(p) => p,
            Loss::GilbertElliott { p, r, loss_good, loss_bad } => {
                if p + r == 0.0 {
                    loss_good
                } else {
                    (r * loss_good + p * loss_bad) / (p + r)
                }
            }
        }
    }
}

/// Reordering: with `probability`, a frame's delivery is held back by `gap`, so the frames
/// that follow within `gap` overtake it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reorder {
    pub probability: f64,
    pub gap: Duration,
}

/// What became of a frame offered to the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Lost to [`PathSpec::loss`].
    Lost,
    /// The queue was full.
    TailDrop,
    /// Delivered at `at`; `ce`: mark it Congestion Experienced; `copy_at`: a duplicate is
    /// delivered then too.
    Deliver { at: Nanos, ce: bool, copy_at: Option<Nanos>, reordered: bool },
}

/// SplitMix64's increment.
pub const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's finalizer: every bit of `z` moves every bit of the result.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A uniform 64-bit number as a uniform number in [0, 1) (its top 53 bits).
pub fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// A small, fast, seedable generator (SplitMix64): the path's randomness, reproducible from
/// its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN_GAMMA);
        mix64(self.0)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        unit(self.next_u64())
    }

    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }
}

/// One direction's state: the model of [`PathSpec`] over time.
#[derive(Debug, Clone)]
pub struct Link {
    spec: PathSpec,
    seed: u64,
    rng: Rng,
    /// The Gilbert-Elliott chain is in its bad state ...
    bad: bool,
    /// ... as of the last frame offered, at this time.
    chain_at: Nanos,
    /// When the bottleneck finishes serializing the last frame it accepted.
    busy_until: Nanos,
    /// The latest delivery time of an in-order frame: the next one is not delivered earlier.
    last_delivery: Nanos,
}

impl Link {
    pub fn new(spec: PathSpec, seed: u64) -> Self {
        Self { spec, seed, rng: Rng::new(seed), bad: false, chain_at: 0, busy_until: 0, last_delivery: 0 }
    }

    /// The seed of the randomness (as last given).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn spec(&self) -> &PathSpec {
        &self.spec
    }

    /// Change what the path does from now on; frames already accepted keep their fate.
    pub fn set_spec(&mut self, spec: PathSpec) {
        self.spec = spec;
        self.bad = false;
    }

    /// Restart the randomness from `seed`: the next frames meet the draws a new link seeded
    /// so would give them.
    pub fn reseed(&mut self, seed: u64) {
        self.seed = seed;
        self.rng = Rng::new(seed);
        self.bad = false;
    }

    /// A full-size frame's time at the bottleneck rate; `None` without a rate.
    pub fn frame_time(&self) -> Option<Nanos> {
        self.spec.rate_bps.filter(|&r| r > 0).map(|rate| (FULL_FRAME as u128 * 8 * 1_000_000_000 / rate as u128).max(1) as Nanos)
    }

    /// Bytes waiting at the bottleneck at `now` (the frame being serialized included).
    pub fn backlog(&self, now: Nanos) -> usize {
        match self.spec.rate_bps {
            Some(rate) if self.busy_until > now => {
                ((self.busy_until - now) as u128 * rate as u128 / 8 / 1_000_000_000) as usize
            }
            _ => 0,
        }
    }

    /// Offer a frame of `len` bytes at `now`. `impair`: loss, duplication and reordering apply
    /// (the caller passes false for frames the path should not lose, e.g. ARP); `ect`: the frame
    /// is ECN-capable and may be marked.
    pub fn offer(&mut self, now: Nanos, len: usize, impair: bool, ect: bool) -> Fate {
        self.offer_drawn(now, len, impair, ect, None)
    }

    /// [`Link::offer`], with random loss decided by `draw` (a uniform 64-bit number, see
    /// [`super::flows`]) instead of the link's stream when one is given. Bursty loss, jitter,
    /// duplication and reordering always draw from the stream.
    pub fn offer_drawn(&mut self, now: Nanos, len: usize, impair: bool, ect: bool, draw: Option<u64>) -> Fate {
        let lost = impair
            && match (self.spec.loss, draw) {
                (Loss::Random(p), Some(d)) => p > 0.0 && unit(d) < p,
                _ => self.lose(now),
            };
        if lost {
            return Fate::Lost;
        }
        let Some((at, ce)) = self.enqueue(now, len, ect) else { return Fate::TailDrop };
        let copy_at = if impair && self.rng.chance(self.spec.duplicate) {
            self.enqueue(now, len, ect).map(|(at, _)| at)
        } else {
            None
        };
        let held = impair && self.spec.reorder.is_some_and(|r| self.rng.chance(r.probability));
        let at = if held {
            // Not recorded as the latest in-order delivery: the frames behind it pass it.
            at + self.spec.reorder.map_or(0, |r| r.gap.as_nanos() as Nanos)
        } else {
            at
        };
        Fate::Deliver { at, ce, copy_at, reordered: held }
    }

    fn lose(&mut self, now: Nanos) -> bool {
        match self.spec.loss {
            Loss::None => false,
            Loss::Random(p) => self.rng.chance(p),
            Loss::GilbertElliott { p, r, loss_good, loss_bad } => {
                let steps = self.chain_steps(now);
                // The chain's k-step transition: the bad state's long-run share pi, approached
                // geometrically at rate lambda = 1 - p - r.
                let (pi, lambda) = if p + r > 0.0 { (p / (p + r), 1.0 - p - r) } else { (0.0, 1.0) };
                let decay = lambda.powi(steps.min(i32::MAX as u64) as i32);
                let to_bad = if self.bad { pi + (1.0 - pi) * decay } else { pi * (1.0 - decay) };
                self.bad = self.rng.chance(to_bad);
                self.rng.chance(if self.bad { loss_bad } else { loss_good })
            }
        }
    }

    /// How many steps the Gilbert-Elliott chain takes for a frame offered at `now`: one per
    /// full-size frame's time at the bottleneck rate since the last frame, at least one (just
    /// one without a rate).
    fn chain_steps(&mut self, now: Nanos) -> u64 {
        let idle = now.saturating_sub(self.chain_at);
        self.chain_at = self.chain_at.max(now);
        self.frame_time().map_or(1, |slot| (idle / slot).max(1))
    }

    /// Through the bottleneck and the propagation delay: the delivery time, and whether to mark
    /// CE; `None` when the queue is full.
    fn enqueue(&mut self, now: Nanos, len: usize, ect: bool) -> Option<(Nanos, bool)> {
        let backlog = self.backlog(now);
        if self.spec.rate_bps.is_some() && self.spec.queue_bytes.is_some_and(|q| backlog + len > q) {
            return None;
        }
        let ce = ect && self.spec.ecn_threshold.is_some_and(|t| backlog > t);
        let departure = match self.spec.rate_bps {
            Some(rate) if rate > 0 => {
                let start = self.busy_until.max(now);
                self.busy_until = start + (len as u128 * 8 * 1_000_000_000 / rate as u128) as Nanos;
                self.busy_until
            }
            _ => now,
        };
        let delay = self.spec.delay.as_nanos() as i128;
        let jitter = self.spec.jitter.as_nanos() as i128;
        let drawn = if jitter > 0 {
            delay - jitter + (self.rng.unit() * (2 * jitter) as f64) as i128
        } else {
            delay
        };
        let at = (departure + drawn.max(0) as Nanos).max(self.last_delivery);
        self.last_delivery = at;
        Some((at, ce))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Nanos = 1_000_000;

    fn delivered(f: Fate) -> Nanos {
        match f {
            Fate::Deliver { at, .. } => at,
            other => panic!("not delivered: {other:?}"),
        }
    }

    #[test]
    fn a_transparent_path_delivers_at_once() {
        let mut l = Link::new(PathSpec::default(), 1);
        for t in [0, 5, 5, 100] {
            assert_eq!(l.offer(t, 1514, true, false), Fate::Deliver { at: t, ce: false, copy_at: None, reordered: false });
        }
    }

    #[test]
    fn delay_is_added_and_the_rate_spaces_frames_by_their_serialization_time() {
        let spec = PathSpec { delay: Duration::from_millis(20), rate_bps: Some(100_000_000), ..PathSpec::default() };
        let mut l = Link::new(spec, 1);
        // 1514 B at 100 Mbit/s: 121,120 ns each; a burst of three at t=0 leaves back to back.
        let at: Vec<Nanos> = (0..3).map(|_| delivered(l.offer(0, 1514, true, false))).collect();
        assert_eq!(at, [20 * MS + 121_120, 20 * MS + 242_240, 20 * MS + 363_360]);
        // After the link went idle, a frame waits only for its own serialization.
        assert_eq!(delivered(l.offer(10 * MS, 1514, true, false)), 30 * MS + 121_120);
    }

    #[test]
    fn the_queue_drops_the_tail_once_its_bytes_are_full() {
        let spec = PathSpec { rate_bps: Some(8_000_000), queue_bytes: Some(3000), ..PathSpec::default() };
        let mut l = Link::new(spec, 1);
        // 1000 B at 8 Mbit/s: 1 ms each. Three fit, the fourth would make 4000 B.
        for _ in 0..3 {
            delivered(l.offer(0, 1000, true, false));
        }
        assert_eq!(l.backlog(0), 3000);
        assert_eq!(l.offer(0, 1000, true, false), Fate::TailDrop);
        // Non-impaired frames (ARP) queue like the rest and are dropped alike.
        assert_eq!(l.offer(0, 100, false, false), Fate::TailDrop);
        // One frame has left after 1 ms: room for one more.
        assert_eq!(l.backlog(MS), 2000);
        assert_eq!(delivered(l.offer(MS, 1000, true, false)), 4 * MS);
        assert_eq!(l.offer(MS, 1000, true, false), Fate::TailDrop);
    }

    #[test]
    fn ecn_capable_frames_are_marked_above_the_threshold_and_others_are_not() {
        let spec = PathSpec { rate_bps: Some(8_000_000), ecn_threshold: Some(1500), ..PathSpec::default() };
        let mut l = Link::new(spec, 1);
        let ce = |f| matches!(f, Fate::Deliver { ce: true, .. });
        assert!(!ce(l.offer(0, 1000, true, true))); // backlog 0
        assert!(!ce(l.offer(0, 1000, true, true))); // 1000
        assert!(ce(l.offer(0, 1000, true, true))); // 2000 > 1500
        assert!(!ce(l.offer(0, 1000, true, false))); // not ECT: queued, unmarked
        assert!(matches!(l.offer(0, 1000, true, false), Fate::Deliver { .. }));
    }

    #[test]
    fn random_loss_matches_its_probability() {
        let mut l = Link::new(PathSpec { loss: Loss::Random(0.03), ..PathSpec::default() }, 7);
        let n = 200_000;
        let lost = (0..n).filter(|&i| l.offer(i, 100, true, false) == Fate::Lost).count();
        // Binomial: sd = sqrt(n p (1-p)) = 76; 5 sd either side.
        assert!((6000 - 380..=6000 + 380).contains(&lost), "{lost}");
        // Frames the path must not lose are not.
        assert!((0..1000).all(|i| l.offer(n + i, 100, false, false) != Fate::Lost));
    }

    #[test]
    fn a_reseeded_link_loses_what_a_new_one_with_that_seed_would() {
        let spec = PathSpec { loss: Loss::Random(0.05), ..PathSpec::default() };
        let losses = |l: &mut Link| -> Vec<u64> { (0..2000).filter(|&i| l.offer(i, 100, true, false) == Fate::Lost).collect() };
        let fresh = losses(&mut Link::new(spec.clone(), 42));
        let mut used = Link::new(spec.clone(), 7);
        let before = losses(&mut used);
        used.reseed(42);
        assert_eq!(losses(&mut used), fresh);
        assert_ne!(before, fresh, "another seed, other losses");
    }

    #[test]
    fn a_given_draw_decides_random_loss_and_leaves_the_stream_alone() {
        let spec = PathSpec { loss: Loss::Random(0.5), reorder: Some(Reorder { probability: 0.3, gap: Duration::from_millis(1) }), ..PathSpec::default() };
        let (low, high) = (0u64, u64::MAX);
        let mut keyed = Link::new(spec.clone(), 9);
        assert_eq!(keyed.offer_drawn(0, 100, true, false, Some(low)), Fate::Lost);
        assert!(matches!(keyed.offer_drawn(0, 100, true, false, Some(high)), Fate::Deliver { .. }));
        // Not impairable: never lost, whatever the draw.
        assert!(matches!(keyed.offer_drawn(0, 100, false, false, Some(low)), Fate::Deliver { .. }));
        // The keyed decisions took nothing from the stream: reordering goes on as on a link
        // that only saw the delivered frames.
        let mut plain = Link::new(PathSpec { loss: Loss::None, ..spec.clone() }, 9);
        plain.offer(0, 100, true, false);
        plain.offer(0, 100, false, false);
        let reordered = |l: &mut Link| -> Vec<bool> {
            (1..200).map(|i| matches!(l.offer_drawn(i, 100, true, false, Some(high)), Fate::Deliver { reordered: true, .. })).collect()
        };
        assert_eq!(reordered(&mut keyed), reordered(&mut plain));
        // Bursty loss ignores the draw (its chain is a stream of time).
        let mut ge = Link::new(PathSpec { loss: Loss::bursty(0.5, 4.0), ..PathSpec::default() }, 3);
        let mut ge_plain = ge.clone();
        let a: Vec<_> = (0..500).map(|i| ge.offer_drawn(i, 100, true, false, Some(high)) == Fate::Lost).collect();
        let b: Vec<_> = (0..500).map(|i| ge_plain.offer(i, 100, true, false) == Fate::Lost).collect();
        assert_eq!(a, b);
    }

    #[test]
    fn bursty_loss_has_its_mean_and_its_burst_length() {
        let loss = Loss::bursty(0.03, 4.0);
        assert!((loss.mean() - 0.03).abs() < 1e-12);
        let mut l = Link::new(PathSpec { loss, ..PathSpec::default() }, 11);
        let n = 400_000u64;
        let mut lost = 0;
        let mut bursts = 0;
        let mut prev = false;
        for i in 0..n {
            let gone = l.offer(i, 100, true, false) == Fate::Lost;
            lost += u64::from(gone);
            bursts += u64::from(gone && !prev);
            prev = gone;
        }
        let mean = lost as f64 / n as f64;
        let burst = lost as f64 / bursts as f64;
        assert!((0.027..0.033).contains(&mean), "mean loss {mean}");
        assert!((3.6..4.4).contains(&burst), "mean burst {burst}");
    }

    /// With a bottleneck, the chain keeps time: frames back to back see the bursts, frames a
    /// second apart see losses as independent as the mean (a burst does not outlast the quiet).
    #[test]
    fn bursty_loss_bursts_are_stretches_of_time() {
        let spec = PathSpec { rate_bps: Some(100_000_000), loss: Loss::bursty(0.03, 3.0), ..PathSpec::default() };
        let run = |gap: Nanos| {
            let mut l = Link::new(spec.clone(), 5);
            let (mut lost, mut after_loss, mut lost_after_loss, mut prev) = (0u64, 0u64, 0u64, false);
            let n = 200_000u64;
            for i in 0..n {
                // Offered at `gap` intervals; the queue never holds more than one frame.
                let gone = l.offer(i * gap, 1514, true, false) == Fate::Lost;
                lost += u64::from(gone);
                if prev {
                    after_loss += 1;
                    lost_after_loss += u64::from(gone);
                }
                prev = gone;
            }
            (lost as f64 / n as f64, lost_after_loss as f64 / after_loss as f64)
        };
        // One frame time apart: the mean, and a loss follows a loss two times in three (r = 1/3).
        let (mean, sticky) = run(121_120);
        assert!((0.027..0.033).contains(&mean), "mean loss {mean}");
        assert!((0.62..0.71).contains(&sticky), "loss after a loss {sticky}");
        // A second apart: the mean, and a loss after a loss no likelier than any.
        let (mean, sticky) = run(1_000 * MS);
        assert!((0.027..0.033).contains(&mean), "mean loss {mean}");
        assert!(sticky < 0.06, "loss after a loss {sticky}");
    }

    #[test]
    fn jitter_stays_in_its_band_and_never_reorders() {
        let spec = PathSpec { delay: Duration::from_millis(10), jitter: Duration::from_millis(2), ..PathSpec::default() };
        // Frames far apart: their delays spread over the whole band.
        let mut l = Link::new(spec.clone(), 3);
        let mut spread = (Nanos::MAX, 0);
        for i in 0..2000u64 {
            let now = i * 20 * MS;
            let d = delivered(l.offer(now, 100, true, false)) - now;
            spread = (spread.0.min(d), spread.1.max(d));
        }
        assert!(spread.0 >= 8 * MS && spread.0 < 8 * MS + MS / 10, "{spread:?}");
        assert!(spread.1 <= 12 * MS && spread.1 > 12 * MS - MS / 10, "{spread:?}");
        // Frames closer than the jitter: none overtakes the one before it.
        let mut l = Link::new(spec, 3);
        let mut prev = 0;
        for i in 0..10_000u64 {
            let now = i * 100_000;
            let at = delivered(l.offer(now, 100, true, false));
            assert!(at >= prev && at >= now + 8 * MS, "frame {i}");
            prev = at;
        }
    }

    #[test]
    fn reordered_frames_are_overtaken_and_the_rest_keep_their_order() {
        let spec = PathSpec { delay: Duration::from_millis(10), ..PathSpec::default() }.with_reorder(0.02, Duration::from_millis(1));
        let mut l = Link::new(spec, 5);
        let n = 100_000u64;
        let mut held = 0;
        let mut in_order_prev = 0;
        for i in 0..n {
            let now = i * 10_000;
            match l.offer(now, 100, true, false) {
                Fate::Deliver { at, reordered: true, .. } => {
                    held += 1;
                    assert_eq!(at, now + 11 * MS);
                }
                Fate::Deliver { at, reordered: false, .. } => {
                    assert!(at >= in_order_prev);
                    in_order_prev = at;
                }
                other => panic!("{other:?}"),
            }
        }
        assert!((2000 - 250..=2000 + 250).contains(&held), "{held}");
    }

    #[test]
    fn duplicates_queue_behind_their_original() {
        let spec = PathSpec { rate_bps: Some(8_000_000), duplicate: 1.0, ..PathSpec::default() };
        let mut l = Link::new(spec, 1);
        assert_eq!(
            l.offer(0, 1000, true, false),
            Fate::Deliver { at: MS, ce: false, copy_at: Some(2 * MS), reordered: false }
        );
        // Frames the path must not impair are not duplicated.
        assert!(matches!(l.offer(0, 1000, false, false), Fate::Deliver { copy_at: None, .. }));
    }

    #[test]
    fn the_wan_preset_holds_one_bdp() {
        let s = PathSpec::wan(Duration::from_millis(40), 100_000_000);
        assert_eq!(s.delay, Duration::from_millis(20));
        assert_eq!(s.queue_bytes, Some(500_000));
    }
}
