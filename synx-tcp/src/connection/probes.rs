//! What the TCB sends on its own to learn about the peer: keepalive probes (RFC 1122 4.2.3.6),
//! zero-window probes (RFC 9293 3.8.6.1), and the rate limit on challenge ACKs (RFC 5961 7).

use core::time::Duration;

use crate::{Instant, Keepalive};

/// A zero-length probe waiting for `poll_transmit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Probe {
    None,
    ZeroWindow,
    Keepalive,
}

#[derive(Debug)]
pub(super) struct Probes {
    pub keepalive: Keepalive,
    /// Last segment accepted from the peer.
    pub last_activity: Instant,
    /// Keepalive probes sent since the peer was last heard from.
    pub keepalive_probes_out: u32,
    pub persist_backoff: u8,
    pub pending: Probe,
    challenge_window: Instant,
    challenge_count: u32,
}

/// Idle probes: none pending, the counters and clocks kept.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Folded {
    last_activity: u64,
    challenge_window: u64,
    keepalive_probes_out: u32,
    challenge_count: u16,
    persist_backoff: u8,
}

impl Probes {
    pub fn new(now: Instant, keepalive: Keepalive) -> Self {
        Self {
            keepalive,
            last_activity: now,
            keepalive_probes_out: 0,
            persist_backoff: 0,
            pending: Probe::None,
            challenge_window: now,
            challenge_count: 0,
        }
    }

    /// The peer was heard from at `at`.
    pub fn heard(&mut self, at: Instant) {
        self.last_activity = at;
        self.keepalive_probes_out = 0;
    }

    /// RFC 1122 4.2.3.6: the next keepalive probe is due `idle` after the peer was last heard
    /// from, then every `interval` while probes go unanswered.
    pub fn keepalive_due(&self) -> Instant {
        let k = self.keepalive;
        self.last_activity + k.idle + k.interval * self.keepalive_probes_out.min(u32::MAX / 2)
    }

    /// RFC 5961 7: whether one more challenge ACK fits this second's budget (`per_sec`); counts
    /// it if so.
    pub fn allow_challenge_ack(&mut self, now: Instant, per_sec: u32) -> bool {
        if now.saturating_duration_since(self.challenge_window) >= Duration::from_secs(1) {
            self.challenge_window = now;
            self.challenge_count = 0;
        }
        if self.challenge_count < per_sec {
            self.challenge_count += 1;
            return true;
        }
        false
    }

    pub fn is_at_rest(&self) -> bool {
        self.pending == Probe::None
    }

    /// `None` if a counter does not fit the folded form (the connection then stays unfolded).
    pub fn fold(&self) -> Option<Folded> {
        Some(Folded {
            last_activity: self.last_activity.as_nanos(),
            challenge_window: self.challenge_window.as_nanos(),
            keepalive_probes_out: self.keepalive_probes_out,
            challenge_count: u16::try_from(self.challenge_count).ok()?,
            persist_backoff: self.persist_backoff,
        })
    }

    pub fn unfold(f: &Folded, keepalive: Keepalive) -> Self {
        Self {
            keepalive,
            last_activity: Instant::from_nanos(f.last_activity),
            keepalive_probes_out: f.keepalive_probes_out,
            persist_backoff: f.persist_backoff,
            pending: Probe::None,
            challenge_window: Instant::from_nanos(f.challenge_window),
            challenge_count: f.challenge_count.into(),
        }
    }
}

impl Folded {
    pub fn last_activity(&self) -> Instant {
        Instant::from_nanos(self.last_activity)
    }
    pub fn keepalive_probes_out(&self) -> u32 {
        self.keepalive_probes_out
    }
}
