//! Retransmission timeout estimation (RFC 6298) with Karn's rule left to the caller (samples
//! come only from segments that were not retransmitted, or from timestamps, RFC 7323 4).

use core::time::Duration;

/// Linux's TCP_RTO_MAX; RFC 6298 2.5 allows any maximum of at least 60 s.
pub const MAX_RTO: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, Debug)]
pub struct RttEstimator {
    /// Smoothed RTT in microseconds; 0 until the first sample.
    srtt_us: u32,
    rttvar_us: u32,
    /// The RTO before backoff, microseconds.
    base_rto_us: u32,
    /// Number of doublings applied (RFC 6298 5.5).
    backoff: u8,
}

impl RttEstimator {
    pub fn new(initial_rto: Duration) -> Self {
        Self { srtt_us: 0, rttvar_us: 0, base_rto_us: initial_rto.as_micros().min(u32::MAX as u128) as u32, backoff: 0 }
    }

    pub fn srtt(&self) -> Option<Duration> {
        (self.srtt_us != 0).then(|| Duration::from_micros(self.srtt_us as u64))
    }

    pub fn rttvar(&self) -> Duration {
        Duration::from_micros(self.rttvar_us as u64)
    }

    /// Feed one RTT measurement (RFC 6298 2.2 and 2.3).
    ///
    /// The variance term is floored at `min_rto` rather than the clock granularity G, as Linux
    /// does (RTO >= SRTT + 200 ms): RFC 6298 2.4's 1 s floor is far above LAN and datacenter RTTs
    /// and clients are tuned to Linux servers, while a pure `max(G, 4*RTTVAR)` with a tiny
    /// variance would fire spuriously on delayed ACKs.
    pub fn sample(&mut self, rtt: Duration, min_rto: Duration) {
        let r = rtt.as_micros().clamp(1, u32::MAX as u128 / 8) as u32;
        if self.srtt_us == 0 {
            // RFC 6298 2.2: first measurement.
            self.srtt_us = r;
            self.rttvar_us = r / 2;
        } else {
            // RFC 6298 2.3: beta = 1/4, alpha = 1/8.
            let delta = self.srtt_us.abs_diff(r);
            self.rttvar_us = (3 * (self.rttvar_us as u64) / 4 + delta as u64 / 4) as u32;
            self.srtt_us = (7 * (self.srtt_us as u64) / 8 + r as u64 / 8) as u32;
        }
        let var = (4 * self.rttvar_us as u64).max(min_rto.as_micros() as u64);
        self.base_rto_us = (self.srtt_us as u64 + var).min(MAX_RTO.as_micros() as u64) as u32;
        // RFC 6298 5.7 / Karn: a new sample from new data ends the backoff.
        self.backoff = 0;
    }

    /// The current RTO including backoff, clamped to [min_rto, max_rto] (RFC 6298 2.4, 2.5),
    /// and never beyond [`MAX_RTO`].
    pub fn rto(&self, min_rto: Duration, max_rto: Duration) -> Duration {
        let base = Duration::from_micros(self.base_rto_us as u64).max(min_rto);
        let rto = base.checked_mul(1 << self.backoff.min(16)).unwrap_or(MAX_RTO).min(MAX_RTO);
        rto.min(max_rto.max(min_rto))
    }

    /// RFC 6298 5.5: double the RTO after a retransmission timeout.
    pub fn back_off(&mut self) {
        self.backoff = self.backoff.saturating_add(1).min(16);
    }

    pub fn reset_backoff(&mut self) {
        self.backoff = 0;
    }

    /// At rest (no backoff), all an estimator holds is SRTT and RTTVAR; the RTO follows from
    /// them (and the configuration). `None` while backing off.
    pub fn fold(&self) -> Option<(u32, u32)> {
        (self.backoff == 0).then_some((self.srtt_us, self.rttvar_us))
    }

    /// The estimator [`RttEstimator::fold`] gave, with the bounds its samples were taken with.
    pub fn unfold((srtt_us, rttvar_us): (u32, u32), initial_rto: Duration, min_rto: Duration) -> Self {
        let mut e = Self::new(initial_rto);
        if srtt_us != 0 {
            e.srtt_us = srtt_us;
            e.rttvar_us = rttvar_us;
            let var = (4 * rttvar_us as u64).max(min_rto.as_micros() as u64);
            e.base_rto_us = (srtt_us as u64 + var).min(MAX_RTO.as_micros() as u64) as u32;
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const MIN: Duration = Duration::from_millis(200);

    #[test]
    fn initial_then_samples_then_backoff() {
        let mut e = RttEstimator::new(Duration::from_secs(1));
        assert_eq!(e.rto(MIN, MAX_RTO), Duration::from_secs(1));
        e.sample(Duration::from_millis(100), MIN);
        assert_eq!(e.srtt(), Some(Duration::from_millis(100)));
        // 100 + max(4*50, 200) = 300 ms
        assert_eq!(e.rto(MIN, MAX_RTO), Duration::from_millis(300));
        e.sample(Duration::from_millis(100), MIN);
        // rttvar = 37.5ms, srtt = 100: 100 + max(150, 200)
        assert_eq!(e.rto(MIN, MAX_RTO), Duration::from_millis(300));
        e.back_off();
        assert_eq!(e.rto(MIN, MAX_RTO), Duration::from_millis(600));
        e.back_off();
        assert_eq!(e.rto(MIN, MAX_RTO), Duration::from_millis(1200));
        for _ in 0..20 {
            e.back_off();
        }
        assert_eq!(e.rto(MIN, MAX_RTO), MAX_RTO);
        e.sample(Duration::from_millis(100), MIN);
        assert!(e.rto(MIN, MAX_RTO) < Duration::from_secs(1));
        // Folded at rest and unfolded: the same RTO.
        let f = e.fold().unwrap();
        let u = RttEstimator::unfold(f, Duration::from_secs(1), MIN);
        assert_eq!((u.srtt(), u.rto(MIN, MAX_RTO)), (e.srtt(), e.rto(MIN, MAX_RTO)));
        e.back_off();
        assert_eq!(e.fold(), None);
        let fresh = RttEstimator::new(Duration::from_secs(1));
        assert_eq!(RttEstimator::unfold(fresh.fold().unwrap(), Duration::from_secs(1), MIN).rto(MIN, MAX_RTO), Duration::from_secs(1));
    }
}
