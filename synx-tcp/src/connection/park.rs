//! A quiescent connection folded into [`Parked`]: what an idle ESTABLISHED TCB, or one waiting
//! out TIME_WAIT, needs to carry on exactly where it left off, without its buffers, recovery
//! state and timer table. A connection with nothing in flight, nothing buffered and nothing
//! owed to the peer (no ACK, probe or RST pending) has one timer armed (keepalive, or the
//! 2*MSL of TIME_WAIT), and everything else in [`Connection`] is either at rest or derived
//! from the endpoint's [`Config`]; so the endpoint keeps it in about a third of the space and
//! unfolds it when a segment, an application call or its deadline comes. `unpark(park(c))`
//! behaves exactly as `c` (tested by running conversations both ways and comparing every
//! segment).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use super::{Connection, ConnectionInfo, Probe, State, Stats};
use crate::congestion::Congestion;
use crate::recv_buf::RecvBuffer;
use crate::rtt::RttEstimator;
use crate::sack::Scoreboard;
use crate::send_buf::SendBuffer;
use crate::seq::SeqNum;
use crate::timer::{TimerKind, TimerTable};
use crate::{Config, Instant, Keepalive};

const TS: u8 = 1;
const SACK: u8 = 2;
/// TIME_WAIT (else ESTABLISHED).
const TIME_WAIT: u8 = 4;
/// Our FIN was queued (always with TIME_WAIT).
const FIN_QUEUED: u8 = 8;
/// The application closed rather than shut down.
const ORPHAN: u8 = 16;

/// The state of an idle ESTABLISHED or TIME_WAIT connection (see the module docs). Its
/// 4-tuple and keepalive settings are the caller's to keep.
#[derive(Clone, Copy, Debug)]
pub struct Parked {
    /// SND.UNA = SND.NXT = SND.MAX (nothing in flight).
    snd_nxt: SeqNum,
    snd_wl1: SeqNum,
    snd_wl2: SeqNum,
    snd_wnd: u32,
    max_snd_wnd: u32,
    /// RCV.NXT, which is also the last ACK sent.
    rcv_nxt: SeqNum,
    rcv_adv: SeqNum,
    /// The receive buffer's capacity (its window, since it is empty).
    recv_cap: u32,
    ts_recent: u32,
    ts_offset: u32,
    ts_recent_age: u64,
    last_activity: u64,
    challenge_window: u64,
    /// The one timer's deadline (`u64::MAX`: none): keepalive, or the end of TIME_WAIT.
    due: u64,
    /// Our FIN's sequence number (TIME_WAIT).
    fin_seq: SeqNum,
    keepalive_probes_out: u32,
    challenge_count: u32,
    rtt: RttEstimator,
    cc: Congestion,
    stats: ParkedStats,
    rcv_mss: u16,
    smss: u16,
    snd_wscale: u8,
    rcv_wscale: u8,
    persist_backoff: u8,
    flags: u8,
}

/// [`Stats`] with the rare counters narrowed (a connection whose counts do not fit stays
/// unparked).
#[derive(Clone, Copy, Debug)]
struct ParkedStats {
    bytes_sent: u64,
    bytes_acked: u64,
    bytes_received: u64,
    segments_sent: u64,
    segments_received: u64,
    retransmits: u32,
    keepalive_probes: u32,
    zero_window_probes: u32,
    loss_probes: u32,
    challenge_acks: u32,
    time_wait_fin_reacks: u32,
}

impl ParkedStats {
    fn new(s: &Stats) -> Option<Self> {
        let n = |v: u64| u32::try_from(v).ok();
        Some(Self {
            bytes_sent: s.bytes_sent,
            bytes_acked: s.bytes_acked,
            bytes_received: s.bytes_received,
            segments_sent: s.segments_sent,
            segments_received: s.segments_received,
            retransmits: n(s.retransmits)?,
            keepalive_probes: n(s.keepalive_probes)?,
            zero_window_probes: n(s.zero_window_probes)?,
            loss_probes: n(s.loss_probes)?,
            challenge_acks: n(s.challenge_acks)?,
            time_wait_fin_reacks: n(s.time_wait_fin_reacks)?,
        })
    }

    fn stats(&self) -> Stats {
        Stats {
            bytes_sent: self.bytes_sent,
            bytes_acked: self.bytes_acked,
            bytes_received: self.bytes_received,
            segments_sent: self.segments_sent,
            segments_received: self.segments_received,
            retransmits: self.retransmits.into(),
            keepalive_probes: self.keepalive_probes.into(),
            zero_window_probes: self.zero_window_probes.into(),
            loss_probes: self.loss_probes.into(),
            challenge_acks: self.challenge_acks.into(),
            time_wait_fin_reacks: self.time_wait_fin_reacks.into(),
        }
    }
}

impl Connection {
    /// Whether nothing but one timer is left running: every byte sent acknowledged and every
    /// byte received read, no ACK, probe or RST owed, no loss recovery, no event waiting to be
    /// polled; and either ESTABLISHED with no FIN either way (the keepalive timer) or
    /// TIME_WAIT (its 2*MSL timer).
    pub fn is_quiescent(&self) -> bool {
        let state_at_rest = match self.state {
            State::Established => {
                !self.fin_queued && self.fin_seq.is_none() && !self.orphan && !self.timers.is_set(TimerKind::TimeWait)
            }
            State::TimeWait => self.fin_seq.is_some() && !self.timers.is_set(TimerKind::Keepalive),
            _ => false,
        };
        state_at_rest
            && self.snd_una == self.snd_nxt
            && self.snd_nxt == self.snd_max
            && self.high_rxt == self.snd_una
            && self.send_buf.is_empty()
            && self.recv_buf.readable() == 0
            && !self.recv_buf.has_out_of_order()
            && self.peer_fin.is_none()
            && self.last_ooo.is_none()
            && self.unacked_bytes == 0
            && !self.ack_now
            && self.last_ack_sent == self.rcv_nxt
            && self.probe == Probe::None
            && !self.send_rst
            && !self.tlp_pending
            && !self.tlp_probe
            && self.rtt_timing.is_none()
            && self.consecutive_rtos == 0
            && self.dupacks == 0
            && self.recovery.is_none()
            && self.rexmits.is_empty()
            && self.lost_again.is_none()
            && self.scoreboard.is_empty()
            && !self.want_writable
            && self.events == 0
            && self.close_reason.is_none()
            && self.timed_out_by.is_none()
            && [TimerKind::Retransmit, TimerKind::DelayedAck, TimerKind::Persist]
                .iter()
                .all(|&k| !self.timers.is_set(k))
    }

    /// Fold a quiescent connection; `None` if it is not quiescent (or a counter is too large
    /// for the folded form).
    pub fn park(&self) -> Option<Parked> {
        if !self.is_quiescent() {
            return None;
        }
        let bit = |on: bool, b: u8| if on { b } else { 0 };
        let flags = bit(self.ts_enabled, TS)
            | bit(self.sack_enabled, SACK)
            | bit(self.state == State::TimeWait, TIME_WAIT)
            | bit(self.fin_queued, FIN_QUEUED)
            | bit(self.orphan, ORPHAN);
        let timer = if self.state == State::TimeWait { TimerKind::TimeWait } else { TimerKind::Keepalive };
        Some(Parked {
            snd_nxt: self.snd_nxt,
            snd_wl1: self.snd_wl1,
            snd_wl2: self.snd_wl2,
            snd_wnd: self.snd_wnd,
            max_snd_wnd: self.max_snd_wnd,
            rcv_nxt: self.rcv_nxt,
            rcv_adv: self.rcv_adv,
            recv_cap: self.recv_buf.window(),
            ts_recent: self.ts_recent,
            ts_offset: self.ts_offset,
            ts_recent_age: self.ts_recent_age.as_nanos(),
            last_activity: self.last_activity.as_nanos(),
            challenge_window: self.challenge_window.as_nanos(),
            due: self.timers.get(timer).map_or(u64::MAX, Instant::as_nanos),
            fin_seq: self.fin_seq.unwrap_or(self.snd_nxt),
            keepalive_probes_out: self.keepalive_probes_out,
            challenge_count: self.challenge_count,
            rtt: self.rtt,
            cc: self.cc,
            stats: ParkedStats::new(&self.stats)?,
            rcv_mss: self.rcv_mss,
            smss: self.smss,
            snd_wscale: self.snd_wscale,
            rcv_wscale: self.rcv_wscale,
            persist_backoff: self.persist_backoff,
            flags,
        })
    }

    /// Unfold a parked connection: the same connection, ready for a segment, a timeout or an
    /// application call. `config` is the endpoint's; `keepalive` the connection's own settings.
    pub fn unpark(p: &Parked, config: Arc<Config>, local: SocketAddr, remote: SocketAddr, keepalive: Keepalive) -> Self {
        let time_wait = p.flags & TIME_WAIT != 0;
        let mut timers = TimerTable::default();
        if let Some(at) = p.deadline() {
            timers.set(if time_wait { TimerKind::TimeWait } else { TimerKind::Keepalive }, at);
        }
        Connection {
            local,
            remote,
            state: p.state(),
            snd_una: p.snd_nxt,
            snd_nxt: p.snd_nxt,
            snd_max: p.snd_nxt,
            snd_wl1: p.snd_wl1,
            snd_wl2: p.snd_wl2,
            snd_wnd: p.snd_wnd,
            max_snd_wnd: p.max_snd_wnd,
            fin_seq: time_wait.then_some(p.fin_seq),
            fin_queued: p.flags & FIN_QUEUED != 0,
            orphan: p.flags & ORPHAN != 0,
            send_buf: SendBuffer::new(config.send_buffer.max(1)),
            rcv_nxt: p.rcv_nxt,
            rcv_adv: p.rcv_adv,
            last_ack_sent: p.rcv_nxt,
            peer_fin: None,
            recv_buf: RecvBuffer::new(p.recv_cap),
            unacked_bytes: 0,
            rcv_mss: p.rcv_mss,
            last_ooo: None,
            snd_wscale: p.snd_wscale,
            rcv_wscale: p.rcv_wscale,
            smss: p.smss,
            ts_enabled: p.flags & TS != 0,
            sack_enabled: p.flags & SACK != 0,
            ts_recent: p.ts_recent,
            ts_recent_age: Instant::from_nanos(p.ts_recent_age),
            ts_offset: p.ts_offset,
            rtt: p.rtt,
            rtt_timing: None,
            consecutive_rtos: 0,
            tlp_pending: false,
            tlp_probe: false,
            cc: p.cc,
            dupacks: 0,
            recovery: None,
            high_rxt: p.snd_nxt,
            scoreboard: Scoreboard::default(),
            rexmits: VecDeque::new(),
            lost_again: None,
            timers,
            keepalive,
            last_activity: Instant::from_nanos(p.last_activity),
            keepalive_probes_out: p.keepalive_probes_out,
            persist_backoff: p.persist_backoff,
            probe: Probe::None,
            ack_now: false,
            send_rst: false,
            challenge_window: Instant::from_nanos(p.challenge_window),
            challenge_count: p.challenge_count,
            events: 0,
            close_reason: None,
            timed_out_by: None,
            want_writable: false,
            stats: p.stats.stats(),
            config,
        }
    }
}

impl Parked {
    /// The only timer of a parked connection: its keepalive deadline, or the end of TIME_WAIT.
    pub fn deadline(&self) -> Option<Instant> {
        (self.due != u64::MAX).then_some(Instant::from_nanos(self.due))
    }

    pub fn state(&self) -> State {
        if self.flags & TIME_WAIT != 0 { State::TimeWait } else { State::Established }
    }

    /// What [`Connection::info`] would say, without unfolding.
    pub fn info(&self, config: &Config, local: SocketAddr, remote: SocketAddr) -> ConnectionInfo {
        ConnectionInfo {
            state: self.state(),
            last_activity: Instant::from_nanos(self.last_activity),
            keepalive_probes_sent: self.keepalive_probes_out,
            local,
            remote,
            srtt: self.rtt.srtt(),
            rto: self.rtt.rto(config.min_rto).min(config.max_rto.max(config.min_rto)),
            cwnd: self.cc.cwnd,
            ssthresh: self.cc.ssthresh,
            snd_wnd: self.snd_wnd,
            rcv_wnd: self.recv_cap,
            send_queued: 0,
            recv_queued: 0,
            stats: self.stats.stats(),
        }
    }
}
