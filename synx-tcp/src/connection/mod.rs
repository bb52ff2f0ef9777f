//! One TCB (RFC 9293 3.3.1), server side, from ESTABLISHED on: a validated SYN-cookie ACK is
//! where it starts. Incoming segments go through the RFC 9293 3.10.7.4 steps in order (PAWS,
//! sequence check, RST, SYN, ACK, text, FIN), one method per step ([`input`]); each step
//! returns a `Step` that says whether processing continues. Output is pulled by
//! `poll_transmit` ([`output`]).
//!
//! The TCB is made of parts, each with its own at-rest test and folded form ([`park`]):
//! the state, the send half ([`send`]), the receive half ([`recv`]), what the handshake
//! negotiated ([`negotiated`]), loss recovery with the RTT estimate and the congestion window
//! ([`recovery`]), the probes sent on our own ([`probes`]), the timer table, what passes to
//! the application (`Signals`), and the counters ([`stats`]).
//!
//! Why steps rather than one struct per state (netstack3's shape): every state from
//! ESTABLISHED on shares the same send and receive halves, and RFC 9293 itself is written per
//! step with a few per-state branches; so the state is a plain enum and each step matches on it
//! where the RFC does, with the section cited at the branch.

use core::fmt;
use core::time::Duration;
use std::net::SocketAddr;
use std::sync::Arc;

use engine_common::handshake::{FACT_WSCALE, HandshakeFacts};

use super::rtt::MAX_RTO;
use super::segment::Header;
use super::seq::SeqNum;
use super::timer::{TimerKind, TimerTable};
use super::{Config, Instant, Keepalive};

mod input;
mod negotiated;
mod output;
mod park;
mod probes;
mod recovery;
mod recv;
mod send;
mod stats;

use negotiated::Negotiated;
pub use park::Parked;
use probes::{Probe, Probes};
use recovery::{Armed, Recovery};
use recv::RecvHalf;
use send::SendHalf;
pub use stats::Stats;

/// RFC 9293 3.3.2 states a server-side TCB can be in (LISTEN, SYN-SENT and SYN-RECEIVED are
/// XDP's, statelessly).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Established,
    CloseWait,
    LastAck,
    FinWait1,
    FinWait2,
    Closing,
    TimeWait,
    Closed,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Established => "ESTABLISHED",
            State::CloseWait => "CLOSE_WAIT",
            State::LastAck => "LAST_ACK",
            State::FinWait1 => "FIN_WAIT_1",
            State::FinWait2 => "FIN_WAIT_2",
            State::Closing => "CLOSING",
            State::TimeWait => "TIME_WAIT",
            State::Closed => "CLOSED",
        })
    }
}

impl State {
    /// Every state, in RFC 9293's order from ESTABLISHED on.
    pub const ALL: [State; 8] = [
        State::Established,
        State::CloseWait,
        State::LastAck,
        State::FinWait1,
        State::FinWait2,
        State::Closing,
        State::TimeWait,
        State::Closed,
    ];

    /// States in which the peer may still send us data (no FIN received yet).
    fn receives_data(self) -> bool {
        matches!(self, State::Established | State::FinWait1 | State::FinWait2)
    }
    /// States in which the application may still queue data.
    fn app_can_send(self) -> bool {
        matches!(self, State::Established | State::CloseWait)
    }
    /// States reached after the peer's FIN.
    fn fin_received(self) -> bool {
        matches!(self, State::CloseWait | State::LastAck | State::Closing | State::TimeWait)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutKind {
    Keepalive,
    Retransmission,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// Both FINs exchanged and acknowledged (or TIME_WAIT expired).
    Normal,
    /// The peer sent an acceptable RST.
    Reset,
    /// Keepalive or retransmission gave up; we sent a RST ([`Connection::timed_out_by`] says
    /// which).
    TimedOut,
    /// The application aborted, or closed with data unread (RFC 1122 4.2.2.13); we sent a RST.
    Aborted,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// New in-order data can be read.
    Readable,
    /// Send-buffer space opened after `send` accepted less than offered.
    Writable,
    /// The peer's FIN arrived: after the buffered data, end of stream.
    PeerFin,
    /// The connection is CLOSED; no further events from the connection.
    Closed(CloseReason),
    /// From the endpoint, after `Closed`: the slot is free and the tuple forgotten; delete the
    /// flow from the BPF maps.
    Released { local: SocketAddr, remote: SocketAddr },
    /// From the endpoint: the connection folded into its slot, its buffers freed with its TCB
    /// (it holds no heap until it unfolds); whoever counts its memory counts none from now.
    Parked,
}

const EV_READABLE: u8 = 1;
const EV_WRITABLE: u8 = 2;
const EV_PEER_FIN: u8 = 4;
const EV_CLOSED: u8 = 8;

/// Why a segment was dropped, by a connection ([`Handled::Dropped`]) or by the endpoint's
/// demux (`Disposition::Dropped`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    Closed,
    /// RFC 7323 5.3 PAWS.
    Paws,
    /// RFC 9293 3.10.7.4 first check.
    Unacceptable,
    /// RFC 5961 3.2: in-window RST not at RCV.NXT (challenge ACK sent, rate permitting).
    RstNotExact,
    /// RFC 5961 4.2: SYN on a synchronized connection.
    Syn,
    NoAck,
    /// RFC 5961 5.2 / RFC 9293: ACK of unsent data or too old.
    BadAck,
    /// A new SYN for a tuple in TIME_WAIT (RFC 6191, RFC 9293 3.10.7.4 note): the old
    /// incarnation is now CLOSED and will be released, so the client's SYN (or its
    /// retransmission) meets the SYN-cookie path.
    TimeWaitReuse,
}

/// What [`Connection::handle`] did with a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handled {
    Processed,
    Dropped(DropReason),
}

/// Why a cookie ACK did not become a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AcceptError {
    #[error("the handshake's final segment must be an ACK without SYN or RST")]
    NotAnAck,
    #[error("the ACK does not acknowledge our SYN-ACK (ISS+1)")]
    AckMismatch,
    #[error("connection table full")]
    Full,
    #[error("a connection with this 4-tuple exists")]
    Exists,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConnectionInfo {
    pub state: State,
    /// Last segment accepted from the peer.
    pub last_activity: Instant,
    /// Keepalive probes sent since the peer was last heard from.
    pub keepalive_probes_sent: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub srtt: Option<Duration>,
    pub rto: Duration,
    pub cwnd: u32,
    pub ssthresh: u32,
    pub snd_wnd: u32,
    pub rcv_wnd: u32,
    pub send_queued: usize,
    /// Sent and not yet acknowledged (SND.NXT - SND.UNA).
    pub in_flight: u32,
    pub recv_queued: usize,
    /// The timer that fires next, and when.
    pub next_timer: Option<(TimerKind, Instant)>,
    pub stats: Stats,
}

/// What passes between the TCB and its application: events to poll, why it closed, whether
/// the application still reads (not an orphan) or waits for send-buffer room.
#[derive(Debug, Default)]
struct Signals {
    events: u8,
    close_reason: Option<CloseReason>,
    timed_out_by: Option<TimeoutKind>,
    want_writable: bool,
    /// The application closed (not just shut down) its side: nobody reads any more.
    orphan: bool,
}

impl Signals {
    /// Nothing waiting to be polled or reported; whether the application closed is kept.
    fn is_at_rest(&self) -> bool {
        !self.want_writable && self.events == 0 && self.close_reason.is_none() && self.timed_out_by.is_none()
    }
}

pub struct Connection {
    config: Arc<Config>,
    local: SocketAddr,
    remote: SocketAddr,
    state: State,
    /// A RST is owed to the peer (abort, or a timer giving up).
    send_rst: bool,
    snd: SendHalf,
    rcv: RecvHalf,
    opts: Negotiated,
    recovery: Recovery,
    probes: Probes,
    timers: TimerTable,
    signals: Signals,
    stats: Stats,
    /// Buffer growth taken from `Config::buffer_budget`, given back when the TCB goes.
    reserved: u64,
    /// The segment `poll_transmit` wrote last is new data of an ECN connection: the wire
    /// layer marks it ECT(0) (RFC 3168 6.1.2, 6.1.5).
    ect: bool,
}

impl Drop for Connection {
    fn drop(&mut self) {
        if self.reserved > 0 {
            self.config.buffer_budget.release(self.reserved);
        }
    }
}

/// The buffers a connection starts with: (send, receive).
fn initial_buffers(config: &Config, wscale: bool) -> (u32, u32) {
    (config.send_buffer.max(1), config.recv_buffer.clamp(1, if wscale { 1 << 30 } else { 65535 }))
}

impl Connection {
    /// RFC 9293 3.10.7.4 fifth check (SYN-RECEIVED, SND.UNA < SEG.ACK =< SND.NXT): build the TCB from the facts XDP's
    /// cookie carried and process the handshake's final ACK, which may carry data and a FIN.
    pub fn accept(
        now: Instant,
        config: Arc<Config>,
        facts: &HandshakeFacts,
        local: SocketAddr,
        remote: SocketAddr,
        ack: &Header,
        payload: &[u8],
    ) -> Result<Connection, AcceptError> {
        if !ack.flags.ack() || ack.flags.syn() || ack.flags.rst() {
            return Err(AcceptError::NotAnAck);
        }
        let iss = SeqNum(facts.iss);
        if ack.ack != iss + 1 {
            return Err(AcceptError::AckMismatch);
        }
        let opts = Negotiated::new(now, facts, &config);
        let (send_cap, recv_cap) = initial_buffers(&config, facts.has(FACT_WSCALE));
        let snd = SendHalf::new(iss, ack.seq, ack.ack, send_cap);
        // What XDP's SYN-ACK offered (SYN windows are never scaled, RFC 7323 2.2).
        let offered = config.recv_buffer.min(65535);
        let mut c = Connection {
            local,
            remote,
            state: State::Established,
            send_rst: false,
            recovery: Recovery::new(&config, snd.una, opts.mss()),
            snd,
            rcv: RecvHalf::new(now, SeqNum(facts.irs), offered, recv_cap, opts.mss()),
            opts,
            probes: Probes::new(now, config.keepalive),
            timers: TimerTable::default(),
            signals: Signals::default(),
            stats: Stats::default(),
            reserved: 0,
            ect: false,
            config,
        };
        c.handshake_rtt(now, ack);
        c.arm_keepalive();
        c.handle(now, ack, payload);
        Ok(c)
    }

    /// RFC 7323 4.1 (as Linux's tcp_synack_rtt_meas for a syncookie, through
    /// tcp_ack_update_rtt): the handshake's ACK echoes our SYN-ACK's TSval, an RTT sample from
    /// the SYN-ACK, so the first RTO and tail-loss probe follow the path rather than RFC 6298
    /// 2.1's initial 1 s. The SYN-ACK's TSval carries options in its low bits below the clock
    /// (engine_common::cookie::ts_encode), so the sample exceeds the RTT by up to 63 ms, never
    /// less (Linux's cookies the same). 0 is no sample: a clock continued from the echoed TSval
    /// (continue_ts_clock, another host's SYN-ACK) says nothing of the RTT.
    fn handshake_rtt(&mut self, now: Instant, ack: &Header) {
        if let (true, Some((_, tsecr))) = (self.opts.ts_enabled, ack.options.timestamps)
            && tsecr != 0
        {
            let ms = self.opts.ts_now(now).wrapping_sub(tsecr);
            // Linux's bound (delta < INT_MAX / 10^6 ms): anything longer is no RTT.
            if ms > 0 && ms < 2_147_000 {
                self.recovery.rtt.sample(Duration::from_millis(ms as u64), self.config.min_rto);
            }
        }
    }

    pub fn state(&self) -> State {
        self.state
    }
    pub fn local(&self) -> SocketAddr {
        self.local
    }
    pub fn remote(&self) -> SocketAddr {
        self.remote
    }
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    /// Heap memory held by the data buffers: what they hold, and, emptied, what they keep for
    /// the next burst (0 once parked or after [`Connection::release_buffers`]).
    pub fn heap_bytes(&self) -> usize {
        self.snd.buf.heap_bytes() + self.rcv.buf.heap_bytes()
    }

    /// Free the data buffers that hold nothing. They are kept while the connection is live (a
    /// bulk flow empties them after every few segments and would otherwise allocate, zero and
    /// grow them again each time); parking drops them with the TCB, and the engine calls this
    /// when memory is short.
    pub fn release_buffers(&mut self) {
        self.snd.buf.release();
        self.rcv.buf.release();
    }

    pub fn info(&self) -> ConnectionInfo {
        ConnectionInfo {
            state: self.state,
            last_activity: self.probes.last_activity,
            keepalive_probes_sent: self.probes.keepalive_probes_out,
            local: self.local,
            remote: self.remote,
            srtt: self.recovery.rtt.srtt(),
            rto: self.rto(),
            cwnd: self.recovery.cc.cwnd(),
            ssthresh: self.recovery.cc.ssthresh(),
            snd_wnd: self.snd.wnd,
            rcv_wnd: self.rcv.wnd(),
            send_queued: self.snd.buf.len(),
            in_flight: self.snd.nxt.since(self.snd.una),
            recv_queued: self.rcv.buf.readable(),
            next_timer: self.timers.next_kind(),
            stats: self.stats,
        }
    }

    fn rto(&self) -> Duration {
        self.recovery.rto(&self.config)
    }

    /// Which timer gave up, after `CloseReason::TimedOut`.
    pub fn timed_out_by(&self) -> Option<TimeoutKind> {
        self.signals.timed_out_by
    }

    /// Keepalive settings for this connection (e.g. the listener's).
    pub fn set_keepalive(&mut self, k: Keepalive) {
        self.probes.keepalive = k;
        self.arm_keepalive();
    }

    pub fn keepalive(&self) -> Keepalive {
        self.probes.keepalive
    }

    /// Keepalive probes sent since the peer was last heard from.
    pub fn keepalive_probes_out(&self) -> u32 {
        self.probes.keepalive_probes_out
    }

    /// What the answer to the keepalive probe this connection sends will look like (see
    /// [`crate::endpoint::ProbeAnswer`]). The window is the field the peer last sent: the
    /// scaled window shifted back (RFC 7323 2.3), exact since it was that field shifted.
    pub fn probe_answer(&self) -> crate::endpoint::ProbeAnswer {
        crate::endpoint::ProbeAnswer {
            seq: self.rcv.nxt,
            ack: self.snd.nxt,
            window: u16::try_from(self.snd.wnd >> self.opts.snd_wscale).unwrap_or(u16::MAX),
            timestamps: self.opts.ts_enabled,
        }
    }

    /// The answer to this connection's keepalive probe, which its driver took on the way in at
    /// `at` (see [`crate::endpoint::ProbeAnswers`]), with its TSval: the peer is heard from
    /// then, as when the connection reads the answer itself (RFC 1122 4.2.3.6), and the TSval
    /// is taken for TS.Recent as RFC 7323 4.3 takes it (the answer's SEG.SEQ is RCV.NXT).
    /// Ignored when no probe is out, when the peer was heard from since (`at` is older than
    /// what the connection last read: also an answer meant for a connection the slot held
    /// before), or in TIME_WAIT and CLOSED, where no probe goes. `at` counts no later than
    /// `now`. Whether it counted.
    pub fn probe_answered(&mut self, now: Instant, at: Instant, tsval: Option<u32>) -> bool {
        let at = at.min(now);
        if self.probes.keepalive_probes_out == 0
            || at < self.probes.last_activity
            || matches!(self.state, State::TimeWait | State::Closed)
        {
            return false;
        }
        self.probes.heard(at);
        if let Some(tsval) = tsval {
            self.opts.update_ts_recent_to(at, tsval, self.rcv.nxt, self.rcv.last_ack_sent);
        }
        self.arm_keepalive();
        true
    }

    /// Received data not yet read by the application.
    pub fn has_unread(&self) -> bool {
        self.rcv.buf.readable() > 0
    }

    /// The peer's FIN has been received (its data may still be unread).
    pub fn peer_finished(&self) -> bool {
        self.state.fin_received()
    }

    /// Whether the segment `poll_transmit` wrote last goes out ECN-capable, ECT(0) (RFC 3168:
    /// new data of an ECN connection; never retransmissions, probes, ACKs or RSTs).
    pub fn ect(&self) -> bool {
        self.ect
    }

    /// CLOSED with nothing left to send: the endpoint may free the slot.
    pub fn is_released(&self) -> bool {
        self.state == State::Closed && !self.send_rst
    }

    /// Send MSS for data: the handshake MSS minus the timestamps option.
    fn mss(&self) -> u32 {
        self.opts.mss()
    }

    fn close_with(&mut self, reason: CloseReason) {
        self.state = State::Closed;
        self.signals.close_reason = Some(reason);
        self.signals.events |= EV_CLOSED;
        self.timers.stop_all();
        // RFC 9293 3.10.7.4 (RST): "all segment queues should be flushed".
        self.snd.buf.clear();
        self.rcv.buf = super::recv_buf::RecvBuffer::new(0);
        self.rcv.ack_now = false;
        self.probes.pending = Probe::None;
    }

    /// Close with a RST to the peer (user ABORT, RFC 9293 3.10.4; or a timeout giving up).
    fn reset_and_close(&mut self, reason: CloseReason) {
        if self.state != State::Closed {
            self.send_rst = true;
            self.close_with(reason);
        }
    }

    // ---------------------------------------------------------------- application side

    /// Queue bytes to send; returns how many were accepted (0 after shutdown or close).
    pub fn send(&mut self, data: &[u8]) -> usize {
        if !self.state.app_can_send() || self.snd.fin_queued {
            return 0;
        }
        let n = self.snd.buf.push(data);
        if n < data.len() {
            self.signals.want_writable = true;
        }
        n
    }

    /// Read in-order received bytes.
    pub fn recv(&mut self, out: &mut [u8]) -> usize {
        let n = self.rcv.buf.read(out);
        self.read_by_app(n)
    }

    /// [`Connection::recv`] into the caller's own queue: up to `max` bytes go to `take` in one
    /// or two pieces, straight from the receive buffer (a driver that queues them for its app
    /// copies them once, not into a buffer and then into its queue).
    pub fn recv_with(&mut self, max: usize, take: impl FnMut(&[u8])) -> usize {
        let n = self.rcv.buf.read_with(max, take);
        self.read_by_app(n)
    }

    /// The app read `n` bytes: the window update is sent now if the window opened enough.
    fn read_by_app(&mut self, n: usize) -> usize {
        if n > 0 && self.state.receives_data() && self.rcv.window_update_due(self.mss()) {
            self.rcv.ack_now = true;
        }
        n
    }

    /// Bytes ready for `recv`.
    pub fn readable(&self) -> usize {
        self.rcv.buf.readable()
    }

    /// Free space in the send buffer.
    pub fn writable(&self) -> usize {
        if self.state.app_can_send() && !self.snd.fin_queued { self.snd.buf.free() } else { 0 }
    }

    /// The peer's FIN has been received and all data before it read.
    pub fn is_eof(&self) -> bool {
        self.state.fin_received() && self.rcv.buf.readable() == 0
    }

    /// Half-close (RFC 9293 3.10.4 CLOSE): send FIN after the queued data.
    pub fn shutdown(&mut self, _now: Instant) {
        match self.state {
            // RFC 9293 3.10.4 ESTABLISHED: queue FIN, enter FIN-WAIT-1.
            State::Established => self.state = State::FinWait1,
            // RFC 9293 3.10.4 CLOSE-WAIT: queue FIN, enter LAST-ACK.
            State::CloseWait => self.state = State::LastAck,
            _ => return,
        }
        self.snd.fin_queued = true;
    }

    /// Full close: FIN after the queued data, as `shutdown`, and the application will not read
    /// again, so FIN_WAIT_2 is bounded by `Config::fin_wait2_timeout` (as Linux bounds orphaned
    /// sockets) instead of waiting forever for a peer that never closes. Received data left
    /// unread turns the close into a reset (see [`Connection::close_discarding`]).
    pub fn close(&mut self, now: Instant) {
        self.close_discarding(now, 0);
    }

    /// [`Connection::close`] by an application that also leaves `discarded` received bytes
    /// unread outside this TCB (a driver's queue toward the application). RFC 1122 4.2.2.13
    /// (RFC 2525 2.17, as Linux's tcp_close): closing with received data unread, here or
    /// there, sends a RST instead of a FIN, so the peer learns that data was lost.
    pub fn close_discarding(&mut self, now: Instant, discarded: usize) {
        if (discarded > 0 || self.has_unread()) && self.state != State::Closed {
            self.signals.orphan = true;
            self.abort(now);
            return;
        }
        self.signals.orphan = true;
        self.shutdown(now);
        if self.state == State::FinWait2 {
            self.timers.set(TimerKind::TimeWait, now + self.config.fin_wait2_timeout);
        }
    }

    /// Reset the connection (RFC 9293 3.10.4 ABORT): RST to the peer, queues discarded.
    pub fn abort(&mut self, _now: Instant) {
        match self.state {
            State::Closed => {}
            // RFC 9293 3.10.4 ABORT, CLOSING/LAST-ACK/TIME-WAIT: just delete the TCB.
            State::TimeWait | State::LastAck | State::Closing => self.close_with(CloseReason::Aborted),
            _ => self.reset_and_close(CloseReason::Aborted),
        }
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        let signals = &mut self.signals;
        for (bit, ev) in [(EV_READABLE, Event::Readable), (EV_WRITABLE, Event::Writable), (EV_PEER_FIN, Event::PeerFin)] {
            if signals.events & bit != 0 {
                signals.events &= !bit;
                return Some(ev);
            }
        }
        if signals.events & EV_CLOSED != 0 {
            signals.events &= !EV_CLOSED;
            return Some(Event::Closed(signals.close_reason.unwrap_or(CloseReason::Normal)));
        }
        None
    }

    // ---------------------------------------------------------------- keepalive

    fn arm_keepalive(&mut self) {
        if self.probes.keepalive.enabled && self.state != State::TimeWait && self.state != State::Closed {
            self.timers.set(TimerKind::Keepalive, self.probes.keepalive_due());
        } else {
            self.timers.stop(TimerKind::Keepalive);
        }
    }

    fn on_keepalive_timer(&mut self, now: Instant) {
        let cfg = self.probes.keepalive;
        if !cfg.enabled || matches!(self.state, State::TimeWait | State::Closed) {
            return;
        }
        // RFC 1122 4.2.3.6: only an idle connection is probed; data in flight has the
        // retransmission timer (Linux tcp_keepalive_timer reschedules likewise).
        if self.snd.una != self.snd.nxt || !self.snd.buf.is_empty() {
            self.timers.set(TimerKind::Keepalive, now + cfg.idle);
            return;
        }
        let due = self.probes.keepalive_due();
        if now < due {
            // Stale deadline: activity was noted since it was computed.
            self.timers.set(TimerKind::Keepalive, due);
            return;
        }
        if self.probes.keepalive_probes_out >= cfg.probes {
            // RFC 1122 4.2.3.6: the peer is dead; reset as Linux does.
            self.signals.timed_out_by = Some(TimeoutKind::Keepalive);
            self.reset_and_close(CloseReason::TimedOut);
            return;
        }
        self.probes.keepalive_probes_out += 1;
        self.probes.pending = Probe::Keepalive;
        self.timers.set(TimerKind::Keepalive, now + cfg.interval);
    }

    // ---------------------------------------------------------------- timers

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// Bytes received and not yet acknowledged: what the next ACK will cover.
    pub fn unacked_bytes(&self) -> u32 {
        self.rcv.unacked_bytes
    }

    /// The earliest timer and its deadline.
    pub fn next_timer(&self) -> Option<(TimerKind, Instant)> {
        self.timers.next_kind()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(kind) = self.timers.take_expired(now) {
            match kind {
                TimerKind::Retransmit => self.on_retransmit_timer(now),
                // RFC 9293 3.8.6.3: the delayed ACK is due.
                TimerKind::DelayedAck => {
                    self.rcv.ack_now = true;
                    // Linux's tcp_delack_timer_handler: a delayed ACK that no reply took
                    // along ends interactive (pingpong) mode.
                    self.rcv.pingpong = false;
                }
                TimerKind::Persist => self.on_persist_timer(now),
                TimerKind::Keepalive => self.on_keepalive_timer(now),
                // RFC 9293 3.10.8: TIME-WAIT timeout deletes the TCB (and so does the
                // FIN_WAIT_2 timeout of an orphan).
                TimerKind::TimeWait => self.close_with(CloseReason::Normal),
                // The pacer lets data go: `poll_transmit` sends it.
                TimerKind::Pace => {}
            }
        }
    }

    fn on_retransmit_timer(&mut self, now: Instant) {
        if self.snd.una == self.snd.nxt || self.state == State::Closed || self.state == State::TimeWait {
            return;
        }
        match self.recovery.armed {
            Armed::Probe => {
                // RFC 8985 7.3: the probe timeout fired; send one probe and arm the RTO
                // behind it.
                self.recovery.on_probe_timeout();
                self.arm_rto(now);
                return;
            }
            Armed::Reorder => {
                // RFC 8985 6.3: RACK's reordering window has passed for what was waiting.
                let mss = self.mss();
                self.recovery.on_reorder_timeout(now, &self.snd, mss, &mut self.stats);
                self.arm_rto(now);
                return;
            }
            Armed::Rto => {}
        }
        self.recovery.consecutive_rtos = self.recovery.consecutive_rtos.saturating_add(1);
        if self.recovery.consecutive_rtos > self.config.max_retries {
            // RFC 9293 3.8.3 R2: give up and reset the connection.
            self.signals.timed_out_by = Some(TimeoutKind::Retransmission);
            self.reset_and_close(CloseReason::TimedOut);
            return;
        }
        // RFC 6298 5.4-5.6: retransmit with a doubled RTO.
        let mss = self.mss();
        self.recovery.on_rto(&self.snd, mss, &mut self.stats);
        self.arm_rto(now);
    }

    fn arm_rto(&mut self, now: Instant) {
        self.recovery.armed = Armed::Rto;
        self.timers.set(TimerKind::Retransmit, now + self.rto());
    }

    /// Arm the retransmission timer after an ACK: as a tail-loss probe timeout where RFC 8985
    /// 7.2 applies ([`Recovery::probe_timeout`]), otherwise for the RTO (RFC 6298 5.3). An RTO
    /// that replaces a probe or reordering timer counts from the oldest segment's send (as
    /// Linux's tcp_rearm_rto), so such timers never postpone it.
    fn arm_retransmit(&mut self, now: Instant) {
        let rto = self.rto();
        match self.recovery.probe_timeout(&self.snd, self.mss(), self.opts.sack_enabled, rto) {
            Some(pto) => {
                self.recovery.armed = Armed::Probe;
                self.timers.set(TimerKind::Retransmit, now + pto);
            }
            None if self.recovery.armed != Armed::Rto => {
                let at = self.recovery.oldest_send().map_or(now + rto, |t| (t + rto).max(now));
                self.recovery.armed = Armed::Rto;
                self.timers.set(TimerKind::Retransmit, at);
            }
            None => self.arm_rto(now),
        }
    }

    /// After data went out: start the timer if it is not running (RFC 6298 5.1); after new
    /// data, move a probe timeout to 2 SRTT from now (RFC 8985 7.2, as Linux), never past the
    /// RTO of the oldest segment in flight.
    fn arm_after_send(&mut self, now: Instant, new_data: bool) {
        if !self.timers.is_set(TimerKind::Retransmit) {
            self.arm_retransmit(now);
            return;
        }
        if new_data && self.recovery.armed != Armed::Reorder {
            let rto = self.rto();
            if let Some(pto) = self.recovery.probe_timeout(&self.snd, self.mss(), self.opts.sack_enabled, rto) {
                let rto_at = self.recovery.oldest_send().map_or(now + rto, |t| (t + rto).max(now));
                self.recovery.armed = Armed::Probe;
                self.timers.set(TimerKind::Retransmit, (now + pto).min(rto_at));
            }
        }
    }

    /// RACK's reordering timer (RFC 8985 6.3), in the retransmission timer's place.
    fn arm_reorder(&mut self, now: Instant, wait: Duration) {
        self.recovery.armed = Armed::Reorder;
        self.timers.set(TimerKind::Retransmit, now + wait);
    }

    fn on_persist_timer(&mut self, now: Instant) {
        if self.snd.wnd == 0 && self.snd.unsent() > 0 {
            // RFC 9293 3.8.6.1: probe the zero window; Linux-style zero-length at SND.UNA-1.
            self.probes.pending = Probe::ZeroWindow;
            self.probes.persist_backoff = self.probes.persist_backoff.saturating_add(1).min(16);
            self.arm_persist(now);
        }
    }

    fn arm_persist(&mut self, now: Instant) {
        let max = self.config.max_rto.min(MAX_RTO);
        let d = self.rto().checked_mul(1 << self.probes.persist_backoff).unwrap_or(max).min(max);
        self.timers.set(TimerKind::Persist, now + d);
    }

    /// Start or stop the persist timer after window or queue changes.
    fn update_persist(&mut self, now: Instant) {
        if self.snd.wnd == 0 && self.snd.unsent() > 0 && self.snd.una == self.snd.nxt {
            if !self.timers.is_set(TimerKind::Persist) {
                self.arm_persist(now);
            }
        } else {
            self.timers.stop(TimerKind::Persist);
            if self.snd.wnd > 0 {
                self.probes.persist_backoff = 0;
            }
        }
    }

    /// Dynamic right-sizing of the receive buffer (see `RecvHalf::space_adjust`), within
    /// `Config::recv_buffer_max`, what the window scale can announce, and the budget.
    fn tune_recv_buffer(&mut self, now: Instant) {
        let Some(rtt) = self.rcv.rtt().or(self.recovery.rtt.srtt()) else { return };
        let scale_limit = 65535u32 << self.opts.rcv_wscale;
        let max = self.config.recv_buffer_max.min(scale_limit);
        if let Some(want) = self.rcv.space_adjust(now, rtt, self.mss(), max) {
            let cap = self.rcv.buf.cap();
            let granted = self.config.buffer_budget.reserve((want - cap) as u64);
            self.reserved += granted;
            self.rcv.buf.grow_to(cap + granted as u32);
        }
    }

    /// The send buffer follows the window: room for twice the congestion window (as Linux's
    /// tcp_sndbuf_expand), within `Config::send_buffer_max` and the budget.
    fn tune_send_buffer(&mut self) {
        let want = self.recovery.cc.cwnd().saturating_mul(2).min(self.config.send_buffer_max);
        let cap = self.snd.buf.cap();
        if want > cap {
            let granted = self.config.buffer_budget.reserve((want - cap) as u64);
            self.reserved += granted;
            self.snd.buf.grow_to(cap + granted as u32);
        }
    }

    /// RFC 5961 7: an ACK owed for an unacceptable or suspicious segment, rate-limited (per
    /// connection here).
    fn challenge_ack(&mut self, now: Instant) {
        if self.probes.allow_challenge_ack(now, self.config.challenge_acks_per_sec) {
            self.stats.challenge_acks += 1;
            self.rcv.ack_now = true;
        }
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("state", &self.state)
            .field("local", &self.local)
            .field("remote", &self.remote)
            .field("snd_una", &self.snd.una)
            .field("snd_nxt", &self.snd.nxt)
            .field("rcv_nxt", &self.rcv.nxt)
            .finish_non_exhaustive()
    }
}
