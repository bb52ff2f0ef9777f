//! What the handshake settled (MSS, window scale, timestamps, SACK; RFC 7323, RFC 2018) and
//! the timestamp state that rides on it (TS.Recent, RFC 7323 4.3; PAWS, RFC 7323 5).

use core::time::Duration;

use engine_common::handshake::{FACT_ECN, FACT_SACK, FACT_TS, FACT_WSCALE, HandshakeFacts};

use crate::segment::Header;
use crate::seq::SeqNum;
use crate::{Config, Instant};

/// Bytes our timestamps option takes in every segment (10 + 2 NOPs).
pub(super) const TS_LEN: u16 = 12;

/// Ticks a TSval may be behind TS.Recent and still pass PAWS (Linux's TCP_PAWS_WINDOW).
pub(super) const PAWS_WINDOW: u32 = 1;

/// Negotiated options; at rest as it is, so it folds as itself.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Negotiated {
    pub snd_wscale: u8,
    pub rcv_wscale: u8,
    /// Send MSS from the handshake (payload + options).
    pub smss: u16,
    pub ts_enabled: bool,
    pub sack_enabled: bool,
    /// ECN (RFC 3168): the client asked for it and the configuration agrees.
    pub ecn: bool,
    pub ts_recent: u32,
    pub ts_recent_age: Instant,
    pub ts_offset: u32,
}

impl Negotiated {
    pub fn new(now: Instant, facts: &HandshakeFacts, config: &Config) -> Self {
        let (snd_wscale, rcv_wscale) =
            if facts.has(FACT_WSCALE) { (facts.snd_wscale.min(14), facts.rcv_wscale.min(14)) } else { (0, 0) };
        Self {
            snd_wscale,
            rcv_wscale,
            smss: facts.mss.clamp(64, config.mss.max(64)),
            ts_enabled: facts.has(FACT_TS),
            sack_enabled: facts.has(FACT_SACK),
            ecn: facts.has(FACT_ECN) && config.ecn,
            ts_recent: facts.ts_recent,
            ts_recent_age: now,
            ts_offset: facts.ts_offset,
        }
    }

    /// Send MSS for data: the handshake MSS minus the timestamps option.
    pub fn mss(&self) -> u32 {
        (self.smss - if self.ts_enabled { TS_LEN } else { 0 }) as u32
    }

    /// Our TSval at `now` (RFC 7323 5.4: a millisecond clock with a per-connection offset).
    pub fn ts_now(&self, now: Instant) -> u32 {
        (now.as_millis() as u32).wrapping_add(self.ts_offset)
    }

    /// RFC 7323 5.3: PAWS rejects a non-RST segment whose TSval is older than TS.Recent, unless
    /// TS.Recent has been idle for more than 24 days (RFC 7323 5.5). As Linux
    /// (`tcp_paws_check` with TCP_PAWS_WINDOW), a TSval one tick behind still passes: two
    /// segments sent within a millisecond or two of each other may swap on the path, and the
    /// later one may have moved TS.Recent on (a retransmission that fills the hole before a
    /// reordered original, say), which must not cost the original its data.
    pub fn paws_rejects(&self, now: Instant, h: &Header) -> bool {
        if !self.ts_enabled || h.flags.rst() {
            return false;
        }
        let stale_recent = now.saturating_duration_since(self.ts_recent_age) > Duration::from_secs(24 * 86400);
        self.ts_behind(h) > PAWS_WINDOW && !stale_recent
    }

    /// How many ticks SEG.TSval is behind TS.Recent (0 if it is not, or has no timestamps).
    pub fn ts_behind(&self, h: &Header) -> u32 {
        let Some((tsval, _)) = h.options.timestamps else { return 0 };
        let behind = self.ts_recent.wrapping_sub(tsval);
        if (behind as i32) > 0 { behind } else { 0 }
    }

    /// RFC 7323 4.3: TS.Recent = SEG.TSval if SEG.TSval >= TS.Recent and SEG.SEQ =< Last.ACK.sent.
    pub fn update_ts_recent(&mut self, now: Instant, h: &Header, last_ack_sent: SeqNum) {
        if let Some((tsval, _)) = h.options.timestamps {
            self.update_ts_recent_to(now, tsval, h.seq, last_ack_sent);
        }
    }

    /// [`Negotiated::update_ts_recent`] for a segment at `seq` with `tsval`.
    pub fn update_ts_recent_to(&mut self, now: Instant, tsval: u32, seq: SeqNum, last_ack_sent: SeqNum) {
        if self.ts_enabled && (tsval.wrapping_sub(self.ts_recent) as i32) >= 0 && seq.le(last_ack_sent) {
            self.ts_recent = tsval;
            self.ts_recent_age = now;
        }
    }

    /// RFC 6191 / RFC 9293 3.10.7.4 note: a SYN may reopen a TIME_WAIT tuple when its timestamp
    /// (or, without timestamps, its sequence number) is beyond the old incarnation's.
    pub fn syn_is_newer(&self, h: &Header, rcv_nxt: SeqNum) -> bool {
        match (self.ts_enabled, h.options.timestamps) {
            (true, Some((tsval, _))) => (tsval.wrapping_sub(self.ts_recent) as i32) > 0,
            (true, None) => false,
            (false, _) => h.seq.gt(rcv_nxt),
        }
    }
}
