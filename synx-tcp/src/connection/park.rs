//! A quiescent connection folded into [`Parked`]: what an idle ESTABLISHED TCB, or one waiting
//! out TIME_WAIT, needs to carry on exactly where it left off, without its buffers, recovery
//! state and timer table. A connection with nothing in flight, nothing buffered and nothing
//! owed to the peer (no ACK, probe or RST pending) has one timer armed (keepalive, or the
//! 2*MSL of TIME_WAIT), and everything else in [`Connection`] is either at rest or derived
//! from the endpoint's [`Config`]; so the endpoint keeps it in about a third of the space and
//! unfolds it when a segment, an application call or its deadline comes. `unpark(park(c))`
//! behaves exactly as `c` (tested by running conversations both ways and comparing every
//! segment).
//!
//! Each part of the TCB says when it is at rest and what its folded form keeps; this module
//! only composes them.

use std::net::SocketAddr;
use std::sync::Arc;

use super::negotiated::Negotiated;
use super::probes::{self, Probes};
use super::recovery::{self, Recovery};
use super::recv::{self, RecvHalf};
use super::send::{self, SendHalf};
use super::{Connection, ConnectionInfo, Signals, State, initial_buffers, stats};
use crate::timer::{TimerKind, TimerTable};
use crate::{Config, Instant, Keepalive};

/// TIME_WAIT (else ESTABLISHED).
const TIME_WAIT: u8 = 1;
/// The application closed rather than shut down.
const ORPHAN: u8 = 2;
/// ECE still owed to the peer (RFC 3168 6.1.3).
const ECE: u8 = 4;
/// CWR still owed to the peer (RFC 3168 6.1.2).
const CWR: u8 = 8;
/// Interactive: ACKs wait for replies (Linux's pingpong mode).
const PINGPONG: u8 = 16;

/// The state of an idle ESTABLISHED or TIME_WAIT connection (see the module docs). Its
/// 4-tuple and keepalive settings are the caller's to keep.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parked {
    snd: send::Folded,
    rcv: recv::Folded,
    opts: Negotiated,
    recovery: recovery::Folded,
    probes: probes::Folded,
    stats: stats::Folded,
    /// The one timer's deadline (`u64::MAX`: none): keepalive, or the end of TIME_WAIT.
    due: u64,
    flags: u8,
}

impl Connection {
    /// The one timer a folded connection keeps: keepalive, or the end of TIME_WAIT.
    fn parked_timer(&self) -> TimerKind {
        if self.state == State::TimeWait { TimerKind::TimeWait } else { TimerKind::Keepalive }
    }

    /// Whether the state and timers are at rest: ESTABLISHED with no FIN either way and only
    /// the keepalive timer (if any), or TIME_WAIT with only its 2*MSL timer.
    fn state_is_at_rest(&self) -> bool {
        let state_at_rest = match self.state {
            State::Established => {
                !self.snd.fin_queued && self.snd.fin_seq.is_none() && !self.signals.orphan && !self.timers.is_set(TimerKind::TimeWait)
            }
            State::TimeWait => self.snd.fin_seq.is_some() && !self.timers.is_set(TimerKind::Keepalive),
            _ => false,
        };
        state_at_rest
            && !self.send_rst
            && [TimerKind::Retransmit, TimerKind::DelayedAck, TimerKind::Persist, TimerKind::Pace]
                .iter()
                .all(|&k| !self.timers.is_set(k))
    }

    /// Whether nothing but one timer is left running: every byte sent acknowledged and every
    /// byte received read, no ACK, probe or RST owed, no loss recovery, no event waiting to be
    /// polled; and either ESTABLISHED with no FIN either way (the keepalive timer) or
    /// TIME_WAIT (its 2*MSL timer).
    pub fn is_quiescent(&self) -> bool {
        self.state_is_at_rest()
            && self.snd.is_at_rest()
            && self.rcv.is_at_rest()
            && self.recovery.is_at_rest(self.snd.una)
            && self.probes.is_at_rest()
            && self.signals.is_at_rest()
    }

    /// Fold a quiescent connection; `None` if it is not quiescent (or a counter is too large
    /// for the folded form).
    pub fn park(&self) -> Option<Parked> {
        if !self.is_quiescent() {
            return None;
        }
        let bit = |on: bool, b: u8| if on { b } else { 0 };
        let flags = bit(self.state == State::TimeWait, TIME_WAIT)
            | bit(self.signals.orphan, ORPHAN)
            | bit(self.rcv.ece, ECE)
            | bit(self.recovery.cwr_pending(), CWR)
            | bit(self.rcv.pingpong, PINGPONG);
        Some(Parked {
            snd: self.snd.fold(),
            rcv: self.rcv.fold(self.probes.last_activity)?,
            opts: self.opts,
            recovery: self.recovery.fold()?,
            probes: self.probes.fold()?,
            stats: self.stats.fold()?,
            due: self.timers.get(self.parked_timer()).map_or(u64::MAX, Instant::as_nanos),
            flags,
        })
    }

    /// Unfold a parked connection: the same connection, ready for a segment, a timeout or an
    /// application call. `config` is the endpoint's; `keepalive` the connection's own settings.
    pub fn unpark(p: &Parked, config: Arc<Config>, local: SocketAddr, remote: SocketAddr, keepalive: Keepalive) -> Self {
        let time_wait = p.flags & TIME_WAIT != 0;
        let snd = SendHalf::unfold(&p.snd, time_wait);
        let probes = Probes::unfold(&p.probes, keepalive);
        let rcv = RecvHalf::unfold(&p.rcv, probes.last_activity, p.flags & ECE != 0, p.flags & PINGPONG != 0);
        // The buffers' growth is taken from the budget again (a window once offered stays).
        let (send_base, recv_base) = initial_buffers(&config, p.opts.rcv_wscale > 0 || p.opts.snd_wscale > 0);
        let reserved = (snd.buf.cap().saturating_sub(send_base) + rcv.buf.cap().saturating_sub(recv_base)) as u64;
        config.buffer_budget.force(reserved);
        let mut c = Connection {
            local,
            remote,
            state: p.state(),
            send_rst: false,
            recovery: Recovery::unfold(&p.recovery, &config, snd.una, p.flags & CWR != 0),
            snd,
            rcv,
            opts: p.opts,
            probes,
            timers: TimerTable::default(),
            signals: Signals { orphan: p.flags & ORPHAN != 0, ..Signals::default() },
            stats: p.stats.unfold(),
            reserved,
            ect: false,
            config,
        };
        if let Some(at) = p.deadline() {
            c.timers.set(c.parked_timer(), at);
        }
        c
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
        let (rtt, cc) = (self.recovery.rtt(config), self.recovery.cc());
        ConnectionInfo {
            state: self.state(),
            last_activity: self.probes.last_activity(),
            keepalive_probes_sent: self.probes.keepalive_probes_out(),
            local,
            remote,
            srtt: rtt.srtt(),
            rto: rtt.rto(config.min_rto, config.max_rto),
            cwnd: cc.cwnd(),
            ssthresh: cc.ssthresh(),
            snd_wnd: self.snd.wnd(),
            rcv_wnd: self.rcv.wnd(),
            send_queued: 0,
            in_flight: 0,
            recv_queued: 0,
            next_timer: self.deadline().map(|at| {
                let kind = if self.flags & TIME_WAIT != 0 { TimerKind::TimeWait } else { TimerKind::Keepalive };
                (kind, at)
            }),
            stats: self.stats.unfold(),
        }
    }
}
