//! The receive half of the TCB: the receive sequence space (RFC 9293 3.3.1), the bytes not yet
//! read, and the ACK we owe for them.

use core::time::Duration;

use crate::Instant;
use crate::recv_buf::RecvBuffer;
use crate::segment::{Header, SackBlocks};
use crate::seq::SeqNum;

/// Initial measure of what the application reads per round trip (Linux's rcvq_space, from
/// TCP_INIT_CWND segments).
const INITIAL_SPACE_SEGMENTS: u32 = 10;

/// Most quick ACKs one event grants (Linux's TCP_MAX_QUICKACKS).
pub(super) const MAX_QUICKACKS: u8 = 16;

#[derive(Debug)]
pub(super) struct RecvHalf {
    pub nxt: SeqNum,
    /// Right edge of the window we last advertised.
    pub adv: SeqNum,
    pub last_ack_sent: SeqNum,
    /// The peer's FIN, seen beyond a hole.
    pub peer_fin: Option<SeqNum>,
    pub buf: RecvBuffer,
    /// Bytes received since our last ACK (RFC 5681 4.2: ACK every second full segment).
    pub unacked_bytes: u32,
    /// Largest payload seen: the peer's segment size estimate.
    pub mss: u16,
    /// Most recent out-of-order segment, reported first in SACK blocks (RFC 2018 4).
    pub last_ooo: Option<SeqNum>,
    /// An ACK is owed now (not delayed).
    pub ack_now: bool,
    /// Quick ACKs left (Linux's icsk_ack.quick): while some are left and the connection is not
    /// interactive, every data segment is ACKed at once instead of every second one.
    pub quick: u8,
    /// Interactive (Linux's pingpong mode): we sent data within the delayed-ACK time of the
    /// last segment heard, so our ACKs wait to ride on replies and quick ACKs are off.
    pub pingpong: bool,
    /// RFC 3168 6.1.3: a CE mark arrived and the peer has not yet answered with CWR: our
    /// segments carry ECE.
    pub ece: bool,
    /// RFC 2883: a range that arrived twice, reported as the first SACK block of the next ACK
    /// only.
    pub dsack: Option<(SeqNum, SeqNum)>,
    /// Dynamic right-sizing (Linux's tcp_rcv_space_adjust): bytes the application read in the
    /// last measured round trip, and where and when the current measure began.
    space: u32,
    space_seq: SeqNum,
    space_time: Instant,
    /// The receiver's RTT estimate from timestamps, microseconds (0: none), the minimum seen
    /// (as Linux's tcp_rcv_rtt_measure_ts).
    rtt_us: u32,
}

/// An idle receive half: everything received was read and acknowledged.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Folded {
    /// RCV.NXT, which is also the last ACK sent.
    nxt: SeqNum,
    adv: SeqNum,
    /// The receive buffer's capacity (its window, since it is empty).
    cap: u32,
    space: u32,
    /// Bytes read since the current right-sizing measure began.
    space_copied: u32,
    /// How long before the last segment accepted it began, saturated (see `fold`).
    space_age_ns: u32,
    rtt_us: u32,
    mss: u16,
    quick: u8,
}

impl RecvHalf {
    /// After the handshake at `now`: RCV.NXT = IRS + 1, and the window XDP's SYN-ACK offered.
    /// `mss`: our MSS, for the first measure of the application's reading.
    pub fn new(now: Instant, irs: SeqNum, offered: u32, buffer: u32, mss: u32) -> Self {
        Self {
            nxt: irs + 1,
            adv: irs + 1 + offered,
            last_ack_sent: irs + 1,
            peer_fin: None,
            buf: RecvBuffer::new(buffer),
            unacked_bytes: 0,
            mss: 536,
            last_ooo: None,
            ack_now: false,
            quick: 0,
            pingpong: false,
            ece: false,
            dsack: None,
            space: (INITIAL_SPACE_SEGMENTS * mss).min(buffer).max(1),
            space_seq: irs + 1,
            space_time: now,
            rtt_us: 0,
        }
    }

    /// An RTT sample from a timestamp our peer echoed on data (RFC 7323 4.2 on the receive
    /// side); the minimum is kept.
    pub fn on_rtt_sample(&mut self, rtt: Duration) {
        let us = rtt.as_micros().clamp(1, u32::MAX as u128) as u32;
        self.rtt_us = if self.rtt_us == 0 { us } else { self.rtt_us.min(us) };
    }

    pub fn rtt(&self) -> Option<Duration> {
        (self.rtt_us != 0).then(|| Duration::from_micros(self.rtt_us as u64))
    }

    /// Dynamic right-sizing (as Linux's tcp_rcv_space_adjust): once a round trip (`rtt`) has
    /// passed since the measure began, compare what the application read meanwhile with the
    /// last measure; if it read more, the window should hold twice as much plus room for the
    /// sender's growth (16 segments, and twice the growth seen). Returns the buffer wanted,
    /// when more than it has, at most `max`.
    pub fn space_adjust(&mut self, now: Instant, rtt: Duration, mss: u32, max: u32) -> Option<u32> {
        if now.saturating_duration_since(self.space_time) < rtt {
            return None;
        }
        let copied_seq = self.nxt - self.buf.readable() as u32;
        let copied = copied_seq.since(self.space_seq);
        let mut want = None;
        if copied > self.space {
            let mut rcvwin = 2 * copied as u64 + 16 * mss as u64;
            let grow = rcvwin * (copied - self.space) as u64 / self.space as u64;
            rcvwin = (rcvwin + 2 * grow).min(max as u64);
            if rcvwin > self.buf.cap() as u64 {
                want = Some(rcvwin as u32);
            }
            self.space = copied;
        }
        self.space_seq = copied_seq;
        self.space_time = now;
        want
    }

    /// RCV.WND: room left in the receive buffer.
    pub fn wnd(&self) -> u32 {
        self.buf.window()
    }

    /// After the application read some bytes: whether the window has opened enough to
    /// announce it now, when the window we advertised has at least doubled (as Linux's
    /// __tcp_cleanup_rbuf; RFC 9293 3.8.6.2.2 receiver SWS avoidance). `smss`: our send MSS.
    pub fn window_update_due(&self, smss: u32) -> bool {
        let advertised = if self.adv.gt(self.nxt) { self.adv.since(self.nxt) } else { 0 };
        let now_wnd = self.buf.window();
        let cap = self.buf.window() + self.buf.readable() as u32;
        let threshold = (cap / 2).min(smss).max(1);
        now_wnd.saturating_sub(advertised) >= threshold && now_wnd >= 2 * advertised
    }

    /// Linux's tcp_incr_quickack: quick ACKs for up to half the window in full segments (at
    /// least 2), at most `max`, never fewer than are left.
    pub fn incr_quickack(&mut self, max: u8) {
        let n = match self.wnd() / (2 * u32::from(self.mss.max(1))) {
            0 => 2,
            n => n,
        };
        self.quick = self.quick.max(n.min(u32::from(max)) as u8);
    }

    /// Linux's tcp_enter_quickack_mode: quick ACKs, and no longer interactive.
    pub fn enter_quickack(&mut self, max: u8) {
        self.incr_quickack(max);
        self.pingpong = false;
    }

    /// Linux's tcp_in_quickack_mode: every data segment is ACKed at once.
    pub fn in_quickack(&self) -> bool {
        self.quick > 0 && !self.pingpong
    }

    /// An ACK left with `h` (whose window is already scaled down by `wscale`).
    pub fn on_ack_sent(&mut self, h: &Header, wscale: u8) {
        if self.ack_now || self.unacked_bytes > 0 {
            // Linux's tcp_dec_quickack_mode: an ACK that was owed uses one quick ACK.
            self.quick = self.quick.saturating_sub(1);
        }
        self.ack_now = false;
        self.dsack = None;
        self.unacked_bytes = 0;
        self.last_ack_sent = h.ack;
        self.adv = h.ack + ((h.window as u32) << wscale);
    }

    /// RFC 2883 4: a DSACK block first, if owed; then RFC 2018 4: the block holding the most
    /// recent segment, then the others.
    pub fn sack_blocks(&self) -> SackBlocks {
        let ranges = self.buf.out_of_order();
        let abs = |&(s, e): &(u32, u32)| (self.nxt + s, self.nxt + e);
        let mut blocks = SackBlocks::default();
        if let Some((l, r)) = self.dsack {
            blocks.push(l, r);
        }
        let first = self.last_ooo.and_then(|seq| ranges.iter().position(|r| seq.in_range(abs(r).0, abs(r).1)));
        if let Some(i) = first {
            let (l, r) = abs(&ranges[i]);
            blocks.push(l, r);
        }
        for (i, r) in ranges.iter().enumerate() {
            if Some(i) != first {
                let (l, r) = abs(r);
                blocks.push(l, r);
            }
        }
        blocks
    }

    /// Everything received was read and acknowledged, and no ACK is owed.
    pub fn is_at_rest(&self) -> bool {
        self.buf.readable() == 0
            && !self.buf.has_out_of_order()
            && self.peer_fin.is_none()
            && self.last_ooo.is_none()
            && self.unacked_bytes == 0
            && !self.ack_now
            && self.dsack.is_none()
            && self.last_ack_sent == self.nxt
    }

    /// `None` if the right-sizing measure does not fold (see `space_age_ns`). `last_heard`:
    /// when the last segment was accepted; a measure begins at a segment's arrival, so no
    /// later. Saturating its age at 4.29 s changes nothing while the receiver RTT is shorter:
    /// the next check finds a round trip passed either way.
    pub fn fold(&self, last_heard: Instant) -> Option<Folded> {
        let age = last_heard.saturating_duration_since(self.space_time).as_nanos();
        if self.rtt_us as u128 * 1000 >= u32::MAX as u128 || self.space_time > last_heard {
            return None;
        }
        Some(Folded {
            nxt: self.nxt,
            adv: self.adv,
            cap: self.buf.window(),
            space: self.space,
            space_copied: self.nxt.since(self.space_seq),
            space_age_ns: age.min(u32::MAX as u128) as u32,
            rtt_us: self.rtt_us,
            mss: self.mss,
            quick: self.quick,
        })
    }

    /// `ece`: the folded connection still owes ECE; `pingpong`: it was interactive.
    pub fn unfold(f: &Folded, last_heard: Instant, ece: bool, pingpong: bool) -> Self {
        Self {
            nxt: f.nxt,
            adv: f.adv,
            last_ack_sent: f.nxt,
            peer_fin: None,
            buf: RecvBuffer::new(f.cap),
            unacked_bytes: 0,
            mss: f.mss,
            last_ooo: None,
            ack_now: false,
            quick: f.quick,
            pingpong,
            ece,
            dsack: None,
            space: f.space,
            space_seq: f.nxt - f.space_copied,
            space_time: last_heard - Duration::from_nanos(f.space_age_ns as u64),
            rtt_us: f.rtt_us,
        }
    }
}

impl Folded {
    pub fn wnd(&self) -> u32 {
        self.cap
    }
}
