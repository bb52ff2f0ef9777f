//! One TCB (RFC 9293 3.3.1), server side, from ESTABLISHED on: a validated SYN-cookie ACK is
//! where it starts. Incoming segments go through the RFC 9293 3.10.7.4 steps in order (PAWS,
//! sequence check, RST, SYN, ACK, text, FIN), one method per step; each step returns a
//! [`Step`] that says whether processing continues. Output is pulled by `poll_transmit`.
//!
//! Why steps rather than one struct per state (netstack3's shape): every state from
//! ESTABLISHED on shares the same send and receive halves, and RFC 9293 itself is written per
//! step with a few per-state branches; so the state is a plain enum and each step matches on it
//! where the RFC does, with the section cited at the branch (the longest handler, new-ACK
//! processing, is about 70 lines).

use core::fmt;
use core::time::Duration;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use engine_common::handshake::{FACT_SACK, FACT_TS, FACT_WSCALE, HandshakeFacts};

use super::congestion::Congestion;
use super::recv_buf::RecvBuffer;
use super::rtt::{MAX_RTO, RttEstimator};
use super::sack::Scoreboard;
use super::segment::{self, Flags, Header, Options, SackBlocks};
use super::send_buf::SendBuffer;
use super::seq::SeqNum;
use super::timer::{TimerKind, TimerTable};
use super::{Config, Instant, Keepalive};

mod park;
pub use park::Parked;

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
    /// States in which the peer may still send us data (no FIN received yet).
    fn receives_data(self) -> bool {
        matches!(self, State::Established | State::FinWait1 | State::FinWait2)
    }
    /// States in which the application may still queue data.
    fn app_can_send(self) -> bool {
        matches!(self, State::Established | State::CloseWait)
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
    /// The application aborted; we sent a RST.
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
}

const EV_READABLE: u8 = 1;
const EV_WRITABLE: u8 = 2;
const EV_PEER_FIN: u8 = 4;
const EV_CLOSED: u8 = 8;

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
}

/// What [`Connection::handle`] did with a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handled {
    Processed,
    Dropped(DropReason),
    /// A new SYN for this tuple arrived in TIME_WAIT and is acceptable (RFC 6191, RFC 9293
    /// 3.10.7.4 note): this TCB is now CLOSED; hand the SYN to the cookie path.
    TimeWaitReuse,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AcceptError {
    #[error("the handshake's final segment must be an ACK without SYN or RST")]
    NotAnAck,
    #[error("the ACK does not acknowledge our SYN-ACK (ISS+1)")]
    AckMismatch,
}

/// Counters for `synx conns`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub bytes_sent: u64,
    pub bytes_acked: u64,
    pub bytes_received: u64,
    pub segments_sent: u64,
    pub segments_received: u64,
    pub retransmits: u64,
    pub keepalive_probes: u64,
    pub zero_window_probes: u64,
    /// RFC 8985 tail loss probes sent.
    pub loss_probes: u64,
    pub challenge_acks: u64,
    pub time_wait_fin_reacks: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConnectionInfo {
    pub state: State,
    /// Last segment accepted from the peer (or noted from XDP's LAST_SEEN).
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
    pub recv_queued: usize,
    pub stats: Stats,
}

/// Pending zero-length probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Probe {
    None,
    ZeroWindow,
    Keepalive,
}

/// Whether segment processing goes on to the next RFC 9293 3.10.7.4 step.
enum Step {
    Continue,
    Done(Handled),
}

/// One step of RFC 9293 3.10.7.4 segment processing.
type StepFn = fn(&mut Connection, Instant, &Header, &[u8]) -> Step;

pub struct Connection {
    config: Arc<Config>,
    local: SocketAddr,
    remote: SocketAddr,
    state: State,

    // Send sequence space (RFC 9293 3.3.1). SND.MAX is the highest sequence sent; SND.NXT
    // drops back to SND.UNA after a retransmission timeout (go-back-N).
    snd_una: SeqNum,
    snd_nxt: SeqNum,
    snd_max: SeqNum,
    snd_wl1: SeqNum,
    snd_wl2: SeqNum,
    snd_wnd: u32,
    max_snd_wnd: u32,
    /// Sequence number of our FIN once sent.
    fin_seq: Option<SeqNum>,
    fin_queued: bool,
    /// The application closed (not just shut down) its side: nobody reads any more.
    orphan: bool,
    send_buf: SendBuffer,

    // Receive sequence space.
    rcv_nxt: SeqNum,
    /// Right edge of the window we last advertised.
    rcv_adv: SeqNum,
    last_ack_sent: SeqNum,
    /// The peer's FIN, seen beyond a hole.
    peer_fin: Option<SeqNum>,
    recv_buf: RecvBuffer,
    /// Bytes received since our last ACK (RFC 5681 4.2: ACK every second full segment).
    unacked_bytes: u32,
    /// Largest payload seen: the peer's segment size estimate.
    rcv_mss: u16,
    /// Most recent out-of-order segment, reported first in SACK blocks (RFC 2018 4).
    last_ooo: Option<SeqNum>,

    // Negotiated options.
    snd_wscale: u8,
    rcv_wscale: u8,
    /// Send MSS from the handshake (payload + options).
    smss: u16,
    ts_enabled: bool,
    sack_enabled: bool,
    ts_recent: u32,
    ts_recent_age: Instant,
    ts_offset: u32,

    // Retransmission and congestion.
    rtt: RttEstimator,
    /// Karn: (end sequence, send time) of the one timed segment.
    rtt_timing: Option<(SeqNum, Instant)>,
    consecutive_rtos: u32,
    /// The retransmission timer is armed as a tail-loss probe timeout (RFC 8985 7.2).
    tlp_pending: bool,
    /// A tail-loss probe is due in `poll_transmit`.
    tlp_probe: bool,
    cc: Congestion,
    dupacks: u32,
    /// RFC 6582 "recover": set while in fast recovery.
    recovery: Option<SeqNum>,
    /// RFC 6675 HighRxt: retransmissions in this recovery reached here.
    high_rxt: SeqNum,
    scoreboard: Scoreboard,
    /// Retransmissions of this recovery not yet acknowledged or SACKed: (first byte, SND.MAX
    /// when it was resent). See [`Connection::detect_lost_retransmission`].
    rexmits: VecDeque<(SeqNum, SeqNum)>,
    /// A retransmission found lost again, to resend before anything else.
    lost_again: Option<SeqNum>,

    timers: TimerTable,
    keepalive: Keepalive,
    last_activity: Instant,
    keepalive_probes_out: u32,
    persist_backoff: u8,
    probe: Probe,
    ack_now: bool,
    send_rst: bool,
    challenge_window: Instant,
    challenge_count: u32,

    events: u8,
    close_reason: Option<CloseReason>,
    timed_out_by: Option<TimeoutKind>,
    want_writable: bool,
    stats: Stats,
}

/// Bytes our timestamps option takes in every segment (10 + 2 NOPs).
const TS_LEN: u16 = 12;

impl Connection {
    /// RFC 9293 3.10.7.3 (SYN-RECEIVED, ACK acceptable): build the TCB from the facts XDP's
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
        let irs = SeqNum(facts.irs);
        if ack.ack != iss + 1 {
            return Err(AcceptError::AckMismatch);
        }
        let (snd_wscale, rcv_wscale) =
            if facts.has(FACT_WSCALE) { (facts.snd_wscale.min(14), facts.rcv_wscale.min(14)) } else { (0, 0) };
        let ts_enabled = facts.has(FACT_TS);
        let smss = facts.mss.clamp(64, config.mss.max(64));
        let smss_payload = (smss - if ts_enabled { TS_LEN } else { 0 }) as u32;
        let mut c = Connection {
            local,
            remote,
            state: State::Established,
            snd_una: iss + 1,
            snd_nxt: iss + 1,
            snd_max: iss + 1,
            // Ensures the ACK's window is taken (RFC 9293 3.10.7.3: SND.WL1 = SEG.SEQ - 1 style).
            snd_wl1: ack.seq - 1,
            snd_wl2: ack.ack,
            snd_wnd: 0,
            max_snd_wnd: 0,
            fin_seq: None,
            fin_queued: false,
            orphan: false,
            send_buf: SendBuffer::new(config.send_buffer.max(1)),
            rcv_nxt: irs + 1,
            // What XDP's SYN-ACK offered (SYN windows are never scaled, RFC 7323 2.2).
            rcv_adv: irs + 1 + config.recv_buffer.min(65535),
            last_ack_sent: irs + 1,
            peer_fin: None,
            recv_buf: RecvBuffer::new(config.recv_buffer.clamp(1, if facts.has(FACT_WSCALE) { 1 << 30 } else { 65535 })),
            unacked_bytes: 0,
            rcv_mss: 536,
            last_ooo: None,
            snd_wscale,
            rcv_wscale,
            smss,
            ts_enabled,
            sack_enabled: facts.has(FACT_SACK),
            ts_recent: facts.ts_recent,
            ts_recent_age: now,
            ts_offset: facts.ts_offset,
            rtt: RttEstimator::new(config.initial_rto),
            rtt_timing: None,
            consecutive_rtos: 0,
            tlp_pending: false,
            tlp_probe: false,
            cc: Congestion::new(config.congestion, smss_payload, config.initial_cwnd.max(1)),
            dupacks: 0,
            recovery: None,
            high_rxt: iss + 1,
            scoreboard: Scoreboard::default(),
            rexmits: VecDeque::new(),
            lost_again: None,
            timers: TimerTable::default(),
            keepalive: config.keepalive,
            last_activity: now,
            keepalive_probes_out: 0,
            persist_backoff: 0,
            probe: Probe::None,
            ack_now: false,
            send_rst: false,
            challenge_window: now,
            challenge_count: 0,
            events: 0,
            close_reason: None,
            timed_out_by: None,
            want_writable: false,
            stats: Stats::default(),
            config,
        };
        c.arm_keepalive();
        c.handle(now, ack, payload);
        Ok(c)
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
    /// Heap memory held by the data buffers (0 for an idle connection).
    pub fn heap_bytes(&self) -> usize {
        self.send_buf.heap_bytes() + self.recv_buf.heap_bytes()
    }

    pub fn info(&self) -> ConnectionInfo {
        ConnectionInfo {
            state: self.state,
            last_activity: self.last_activity,
            keepalive_probes_sent: self.keepalive_probes_out,
            local: self.local,
            remote: self.remote,
            srtt: self.rtt.srtt(),
            rto: self.rto(),
            cwnd: self.cc.cwnd,
            ssthresh: self.cc.ssthresh,
            snd_wnd: self.snd_wnd,
            rcv_wnd: self.recv_buf.window(),
            send_queued: self.send_buf.len(),
            recv_queued: self.recv_buf.readable(),
            stats: self.stats,
        }
    }

    fn rto(&self) -> Duration {
        self.rtt.rto(self.config.min_rto).min(self.config.max_rto.max(self.config.min_rto))
    }

    /// Which timer gave up, after `CloseReason::TimedOut`.
    pub fn timed_out_by(&self) -> Option<TimeoutKind> {
        self.timed_out_by
    }

    /// Keepalive settings for this connection (e.g. the listener's).
    pub fn set_keepalive(&mut self, k: Keepalive) {
        self.keepalive = k;
        self.arm_keepalive();
    }

    pub fn keepalive(&self) -> Keepalive {
        self.keepalive
    }

    /// Received data not yet read by the application.
    pub fn has_unread(&self) -> bool {
        self.recv_buf.readable() > 0
    }

    /// The peer's FIN has been received (its data may still be unread).
    pub fn peer_finished(&self) -> bool {
        self.fin_received()
    }

    /// CLOSED with nothing left to send: the endpoint may free the slot.
    pub fn is_released(&self) -> bool {
        self.state == State::Closed && !self.send_rst
    }

    /// Send MSS for data: the handshake MSS minus the timestamps option.
    fn mss(&self) -> u32 {
        (self.smss - if self.ts_enabled { TS_LEN } else { 0 }) as u32
    }

    fn ts_now(&self, now: Instant) -> u32 {
        (now.as_millis() as u32).wrapping_add(self.ts_offset)
    }

    fn close_with(&mut self, reason: CloseReason) {
        self.state = State::Closed;
        self.close_reason = Some(reason);
        self.events |= EV_CLOSED;
        self.timers.stop_all();
        // RFC 9293 3.10.7.4 (RST): "all segment queues should be flushed".
        self.send_buf.clear();
        self.recv_buf = RecvBuffer::new(0);
        self.ack_now = false;
        self.probe = Probe::None;
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
        if !self.state.app_can_send() || self.fin_queued {
            return 0;
        }
        let n = self.send_buf.push(data);
        if n < data.len() {
            self.want_writable = true;
        }
        n
    }

    /// Read in-order received bytes.
    pub fn recv(&mut self, out: &mut [u8]) -> usize {
        let n = self.recv_buf.read(out);
        if n > 0 && self.state.receives_data() {
            // Window update when the window we advertised has at least doubled (as Linux's
            // __tcp_cleanup_rbuf; RFC 9293 3.8.6.2.2 receiver SWS avoidance).
            let advertised = if self.rcv_adv.gt(self.rcv_nxt) { self.rcv_adv.since(self.rcv_nxt) } else { 0 };
            let now_wnd = self.recv_buf.window();
            let cap = self.recv_buf.window() + self.recv_buf.readable() as u32;
            let threshold = (cap / 2).min(self.mss()).max(1);
            if now_wnd.saturating_sub(advertised) >= threshold && now_wnd >= 2 * advertised {
                self.ack_now = true;
            }
        }
        n
    }

    /// Bytes ready for `recv`.
    pub fn readable(&self) -> usize {
        self.recv_buf.readable()
    }

    /// Free space in the send buffer.
    pub fn writable(&self) -> usize {
        if self.state.app_can_send() && !self.fin_queued { self.send_buf.free() } else { 0 }
    }

    /// The peer's FIN has been received and all data before it read.
    pub fn is_eof(&self) -> bool {
        self.fin_received() && self.recv_buf.readable() == 0
    }

    fn fin_received(&self) -> bool {
        matches!(self.state, State::CloseWait | State::LastAck | State::Closing | State::TimeWait)
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
        self.fin_queued = true;
    }

    /// Full close: FIN after the queued data, as `shutdown`, and the application will not read
    /// again, so FIN_WAIT_2 is bounded by `Config::fin_wait2_timeout` (as Linux bounds orphaned
    /// sockets) instead of waiting forever for a peer that never closes.
    pub fn close(&mut self, now: Instant) {
        self.orphan = true;
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
        for (bit, ev) in [(EV_READABLE, Event::Readable), (EV_WRITABLE, Event::Writable), (EV_PEER_FIN, Event::PeerFin)] {
            if self.events & bit != 0 {
                self.events &= !bit;
                return Some(ev);
            }
        }
        if self.events & EV_CLOSED != 0 {
            self.events &= !EV_CLOSED;
            return Some(Event::Closed(self.close_reason.unwrap_or(CloseReason::Normal)));
        }
        None
    }

    // ---------------------------------------------------------------- keepalive

    /// The last time the peer was seen, from outside (XDP's LAST_SEEN map). Moves the keepalive
    /// deadline when it is newer than what this TCB knows; answers to probes count.
    pub fn note_peer_activity(&mut self, last_seen: Instant) {
        if last_seen > self.last_activity {
            self.last_activity = last_seen;
            self.keepalive_probes_out = 0;
            self.arm_keepalive();
        }
    }

    fn arm_keepalive(&mut self) {
        if self.keepalive.enabled && self.state != State::TimeWait && self.state != State::Closed {
            let due = self.last_activity
                + self.keepalive.idle
                + self.keepalive.interval * self.keepalive_probes_out.min(u32::MAX / 2);
            self.timers.set(TimerKind::Keepalive, due);
        } else {
            self.timers.stop(TimerKind::Keepalive);
        }
    }

    fn on_keepalive_timer(&mut self, now: Instant) {
        let cfg = self.keepalive;
        if !cfg.enabled || matches!(self.state, State::TimeWait | State::Closed) {
            return;
        }
        // RFC 1122 4.2.3.6: only an idle connection is probed; data in flight has the
        // retransmission timer (Linux tcp_keepalive_timer reschedules likewise).
        if self.snd_una != self.snd_max || !self.send_buf.is_empty() {
            self.timers.set(TimerKind::Keepalive, now + cfg.idle);
            return;
        }
        let due = self.last_activity + cfg.idle + cfg.interval * self.keepalive_probes_out;
        if now < due {
            // Stale deadline: activity was noted since it was computed.
            self.timers.set(TimerKind::Keepalive, due);
            return;
        }
        if self.keepalive_probes_out >= cfg.probes {
            // RFC 1122 4.2.3.6 / seed: the peer is dead; reset as Linux does.
            self.timed_out_by = Some(TimeoutKind::Keepalive);
            self.reset_and_close(CloseReason::TimedOut);
            return;
        }
        self.keepalive_probes_out += 1;
        self.probe = Probe::Keepalive;
        self.timers.set(TimerKind::Keepalive, now + cfg.interval);
    }

    // ---------------------------------------------------------------- timers

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(kind) = self.timers.take_expired(now) {
            match kind {
                TimerKind::Retransmit => self.on_retransmit_timer(now),
                // RFC 9293 3.8.6.3: the delayed ACK is due.
                TimerKind::DelayedAck => self.ack_now = true,
                TimerKind::Persist => self.on_persist_timer(now),
                TimerKind::Keepalive => self.on_keepalive_timer(now),
                // RFC 9293 3.10.8: TIME-WAIT timeout deletes the TCB (and so does the
                // FIN_WAIT_2 timeout of an orphan).
                TimerKind::TimeWait => self.close_with(CloseReason::Normal),
            }
        }
    }

    fn on_retransmit_timer(&mut self, now: Instant) {
        if self.snd_una == self.snd_max || self.state == State::Closed || self.state == State::TimeWait {
            return;
        }
        if self.tlp_pending {
            // RFC 8985 7.3: the probe timeout fired before the RTO; send one probe and arm the
            // RTO behind it.
            self.tlp_pending = false;
            self.tlp_probe = true;
            self.timers.set(TimerKind::Retransmit, now + self.rto());
            return;
        }
        self.consecutive_rtos = self.consecutive_rtos.saturating_add(1);
        if self.consecutive_rtos > self.config.max_retries {
            // RFC 9293 3.8.3 R2: give up and reset the connection.
            self.timed_out_by = Some(TimeoutKind::Retransmission);
            self.reset_and_close(CloseReason::TimedOut);
            return;
        }
        let mss = self.mss();
        // RFC 5681 3.1 eq 4 and the loss window; RFC 6298 5.4-5.6: resend from SND.UNA with a
        // doubled RTO.
        if self.consecutive_rtos == 1 || self.recovery.is_some() {
            self.cc.on_timeout(self.snd_max.since(self.snd_una), mss);
        } else {
            self.cc.cwnd = mss;
        }
        self.recovery = None;
        self.dupacks = 0;
        // RFC 2018 8: after a timeout the receiver may have reneged; forget the SACKs.
        self.scoreboard.clear();
        self.end_recovery_episode();
        self.snd_nxt = self.snd_una;
        self.high_rxt = self.snd_una;
        self.rtt_timing = None;
        self.rtt.back_off();
        self.timers.set(TimerKind::Retransmit, now + self.rto());
    }

    /// Arm the retransmission timer: with SACK and an RTT estimate, first as a tail-loss probe
    /// timeout (RFC 8985 7.2, as Linux: a lost tail is recovered in about two RTTs instead of an
    /// RTO), otherwise for the RTO (RFC 6298 5.1/5.3).
    fn arm_retransmit(&mut self, now: Instant) {
        let rto = self.rto();
        self.tlp_pending = false;
        if self.sack_enabled
            && self.recovery.is_none()
            && self.consecutive_rtos == 0
            && self.snd_nxt == self.snd_max
            && let Some(srtt) = self.rtt.srtt()
        {
            let mut pto = srtt * 2;
            if self.snd_max.since(self.snd_una) <= self.mss() {
                // RFC 8985 7.2: a lone segment may wait for a delayed ACK (WCDelAckT).
                pto += Duration::from_millis(200);
            }
            let pto = pto.max(Duration::from_millis(10));
            if pto < rto {
                self.tlp_pending = true;
                self.timers.set(TimerKind::Retransmit, now + pto);
                return;
            }
        }
        self.timers.set(TimerKind::Retransmit, now + rto);
    }

    /// RFC 8985 7.3: new data if the windows allow, else the last segment (with our FIN if sent).
    fn send_loss_probe(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        let mss = self.mss();
        let data_end = self.snd_una + self.send_buf.len() as u32;
        let window_end = self.snd_una + self.snd_wnd;
        if self.snd_nxt == self.snd_max && self.snd_nxt.lt(data_end) && self.snd_nxt.lt(window_end) {
            let seq = self.snd_nxt;
            let len = data_end.since(seq).min(window_end.since(seq)).min(mss);
            let fin_due = self.fin_queued && seq + len == data_end && self.fin_seq.is_none();
            let (n, sent) = self.write_data(now, buf, seq, len, fin_due)?;
            let fin_sent = fin_due && seq + sent == data_end;
            if fin_sent {
                self.fin_seq = Some(data_end);
            }
            self.snd_nxt = seq + sent + fin_sent as u32;
            self.snd_max = self.snd_max.max(self.snd_nxt);
            return Some(n);
        }
        let last = self.fin_seq.unwrap_or(self.snd_max.min(data_end));
        let start = last - last.since(self.snd_una).min(mss);
        self.rtt_timing = None;
        self.write_data(now, buf, start, last.since(start), self.fin_seq.is_some()).map(|(n, _)| n)
    }

    fn on_persist_timer(&mut self, now: Instant) {
        if self.snd_wnd == 0 && self.unsent() > 0 {
            // RFC 9293 3.8.6.1: probe the zero window; Linux-style zero-length at SND.UNA-1.
            self.probe = Probe::ZeroWindow;
            self.persist_backoff = self.persist_backoff.saturating_add(1).min(16);
            self.arm_persist(now);
        }
    }

    fn arm_persist(&mut self, now: Instant) {
        let max = self.config.max_rto.min(MAX_RTO);
        let d = self.rto().checked_mul(1 << self.persist_backoff).unwrap_or(max).min(max);
        self.timers.set(TimerKind::Persist, now + d);
    }

    /// Bytes queued but not yet sent (FIN not counted).
    fn unsent(&self) -> usize {
        let sent = self.snd_nxt.since(self.snd_una) as usize;
        self.send_buf.len().saturating_sub(sent)
    }

    /// Start or stop the persist timer after window or queue changes.
    fn update_persist(&mut self, now: Instant) {
        if self.snd_wnd == 0 && self.unsent() > 0 && self.snd_una == self.snd_max {
            if !self.timers.is_set(TimerKind::Persist) {
                self.arm_persist(now);
            }
        } else {
            self.timers.stop(TimerKind::Persist);
            if self.snd_wnd > 0 {
                self.persist_backoff = 0;
            }
        }
    }

    fn challenge_ack(&mut self, now: Instant) {
        // RFC 5961 7: rate-limit challenge ACKs (per connection here).
        if now.saturating_duration_since(self.challenge_window) >= Duration::from_secs(1) {
            self.challenge_window = now;
            self.challenge_count = 0;
        }
        if self.challenge_count < self.config.challenge_acks_per_sec {
            self.challenge_count += 1;
            self.stats.challenge_acks += 1;
            self.ack_now = true;
        }
    }

    // ---------------------------------------------------------------- input

    /// Process one segment for this connection (RFC 9293 3.10.7.4).
    pub fn handle(&mut self, now: Instant, h: &Header, payload: &[u8]) -> Handled {
        self.stats.segments_received += 1;
        let steps: [StepFn; 8] = [
            Self::step_closed,
            Self::step_time_wait,
            Self::step_paws,
            Self::step_sequence,
            Self::step_rst,
            Self::step_syn,
            Self::step_ack,
            Self::step_text_and_fin,
        ];
        for step in steps {
            if let Step::Done(d) = step(self, now, h, payload) {
                self.update_persist(now);
                return d;
            }
        }
        self.update_persist(now);
        Handled::Processed
    }

    fn step_closed(&mut self, _now: Instant, _h: &Header, _p: &[u8]) -> Step {
        // RFC 9293 3.10.7.1: the endpoint answers for CLOSED (see `reset_for`).
        if self.state == State::Closed { Step::Done(Handled::Dropped(DropReason::Closed)) } else { Step::Continue }
    }

    fn step_time_wait(&mut self, now: Instant, h: &Header, p: &[u8]) -> Step {
        if self.state != State::TimeWait {
            return Step::Continue;
        }
        if h.flags.rst() {
            // RFC 9293 3.10.7.4 second (TIME-WAIT) with RFC 5961 3.2: only an exact RST closes.
            if h.seq == self.rcv_nxt {
                self.close_with(CloseReason::Normal);
                return Step::Done(Handled::Processed);
            }
            return Step::Done(Handled::Dropped(DropReason::RstNotExact));
        }
        if h.flags.syn() && !h.flags.ack() {
            // RFC 6191 / RFC 9293 3.10.7.4 note: a new SYN may reopen the tuple when its
            // timestamp (or, without timestamps, its sequence number) is beyond the old one.
            let newer = match (self.ts_enabled, h.options.timestamps) {
                (true, Some((tsval, _))) => (tsval.wrapping_sub(self.ts_recent) as i32) > 0,
                (true, None) => false,
                (false, _) => h.seq.gt(self.rcv_nxt),
            };
            if newer {
                self.close_with(CloseReason::Normal);
                return Step::Done(Handled::TimeWaitReuse);
            }
            self.challenge_ack(now);
            return Step::Done(Handled::Dropped(DropReason::Syn));
        }
        if h.flags.fin() && h.seq + p.len() as u32 + 1 == self.rcv_nxt {
            // RFC 9293 3.10.7.4 eighth, TIME-WAIT: a retransmitted FIN is ACKed again and the
            // 2 MSL timeout restarted (the seed's lost-last-ACK case).
            self.ack_now = true;
            self.stats.time_wait_fin_reacks += 1;
            self.timers.set(TimerKind::TimeWait, now + 2 * self.config.msl);
            return Step::Done(Handled::Processed);
        }
        // RFC 9293 3.10.7.4 first: anything else unacceptable gets an ACK, rate-limited.
        if h.seg_len(p.len()) > 0 {
            self.challenge_ack(now);
        }
        Step::Done(Handled::Dropped(DropReason::Unacceptable))
    }

    fn step_paws(&mut self, now: Instant, h: &Header, _p: &[u8]) -> Step {
        // RFC 7323 5.3: PAWS; RSTs are exempt (R1).
        let Some((tsval, _)) = h.options.timestamps else { return Step::Continue };
        if !self.ts_enabled || h.flags.rst() {
            return Step::Continue;
        }
        let older = (tsval.wrapping_sub(self.ts_recent) as i32) < 0;
        // RFC 7323 5.5: TS.Recent idle for more than 24 days is invalid.
        let stale_recent = now.saturating_duration_since(self.ts_recent_age) > Duration::from_secs(24 * 86400);
        if older && !stale_recent {
            self.challenge_ack(now);
            return Step::Done(Handled::Dropped(DropReason::Paws));
        }
        Step::Continue
    }

    fn rcv_wnd(&self) -> u32 {
        self.recv_buf.window()
    }

    fn step_sequence(&mut self, now: Instant, h: &Header, p: &[u8]) -> Step {
        let seg_len = h.seg_len(p.len());
        let wnd = self.rcv_wnd();
        let nxt = self.rcv_nxt;
        // RFC 9293 3.10.7.4 first: the four acceptability cases.
        let acceptable = match (seg_len, wnd) {
            (0, 0) => h.seq == nxt,
            (0, _) => h.seq.in_range(nxt, nxt + wnd),
            (_, 0) => false,
            (_, _) => h.seq.in_range(nxt, nxt + wnd) || (h.seq + (seg_len - 1)).in_range(nxt, nxt + wnd),
        };
        // A zero window still takes ACKs, URGs and RSTs (RFC 9293 3.10.7.4).
        let zero_window_ack = wnd == 0 && h.seq == nxt;
        if !acceptable && !zero_window_ack {
            if !h.flags.rst() {
                // RFC 9293 3.10.7.4 first: <SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK>, rate-limited.
                self.challenge_ack(now);
            }
            return Step::Done(Handled::Dropped(DropReason::Unacceptable));
        }
        Step::Continue
    }

    fn step_rst(&mut self, now: Instant, h: &Header, _p: &[u8]) -> Step {
        if !h.flags.rst() {
            return Step::Continue;
        }
        // RFC 5961 3.2: only a RST exactly at RCV.NXT resets; in-window ones get a challenge ACK.
        if h.seq != self.rcv_nxt {
            self.challenge_ack(now);
            return Step::Done(Handled::Dropped(DropReason::RstNotExact));
        }
        // RFC 9293 3.10.7.4 second: every synchronized state enters CLOSED.
        self.close_with(CloseReason::Reset);
        Step::Done(Handled::Processed)
    }

    fn step_syn(&mut self, now: Instant, h: &Header, _p: &[u8]) -> Step {
        if !h.flags.syn() {
            return Step::Continue;
        }
        // RFC 5961 4.2 (RFC 9293 3.10.7.4 fourth): any SYN here gets a challenge ACK.
        self.challenge_ack(now);
        Step::Done(Handled::Dropped(DropReason::Syn))
    }

    fn step_ack(&mut self, now: Instant, h: &Header, p: &[u8]) -> Step {
        // RFC 9293 3.10.7.4 fifth: no ACK, drop.
        if !h.flags.ack() {
            return Step::Done(Handled::Dropped(DropReason::NoAck));
        }
        // RFC 5961 5.2: acceptable if SND.UNA - MAX.SND.WND <= SEG.ACK <= SND.NXT.
        if h.ack.gt(self.snd_max) || h.ack.lt(self.snd_una - self.max_snd_wnd.max(1)) {
            self.challenge_ack(now);
            return Step::Done(Handled::Dropped(DropReason::BadAck));
        }
        // A valid segment: the peer is alive (RFC 1122 4.2.3.6).
        self.last_activity = now;
        self.keepalive_probes_out = 0;
        self.arm_keepalive();
        self.update_ts_recent(now, h);

        let window = (h.window as u32) << self.snd_wscale;
        if h.ack.gt(self.snd_una) {
            self.on_new_ack(now, h);
        } else if h.ack == self.snd_una
            && self.snd_una != self.snd_max
            && p.is_empty()
            && !h.flags.fin()
            && window == self.snd_wnd
        {
            // RFC 5681 2: a duplicate ACK.
            self.on_dupack(h);
        }
        if self.sack_enabled {
            for &(l, r) in h.options.sack.as_slice() {
                self.scoreboard.add(l, r, self.snd_una, self.snd_max);
            }
            // RFC 6675 5 (and its definition of a duplicate ACK in section 2, which drops RFC
            // 5681's "window unchanged"): with SACK, loss is declared when IsLost(HighACK + 1),
            // however many of the ACKs counted as duplicates. A receiver whose window moves as
            // its application reads sends no RFC 5681 duplicates at all, and a cumulative ACK
            // may carry the SACK blocks above the next hole: without this the hole waits for
            // the retransmission timer.
            if self.recovery.is_none()
                && self.snd_una != self.snd_max
                && (self.scoreboard.lost_edge(self.mss()).is_some_and(|edge| edge.gt(self.snd_una))
                    || self.early_retransmit_due())
            {
                self.enter_fast_recovery();
            }
            self.detect_lost_retransmission();
        }
        // RFC 9293 3.10.7.4 fifth: window update if SND.WL1 < SEG.SEQ or (SND.WL1 = SEG.SEQ and
        // SND.WL2 =< SEG.ACK).
        if self.snd_wl1.lt(h.seq) || (self.snd_wl1 == h.seq && self.snd_wl2.le(h.ack)) {
            self.snd_wnd = window;
            self.max_snd_wnd = self.max_snd_wnd.max(window);
            self.snd_wl1 = h.seq;
            self.snd_wl2 = h.ack;
        }

        let fin_acked = self.fin_seq.is_some_and(|f| self.snd_una.gt(f));
        match self.state {
            // RFC 9293 3.10.7.4 fifth, FIN-WAIT-1: our FIN acknowledged, enter FIN-WAIT-2.
            State::FinWait1 if fin_acked => {
                self.state = State::FinWait2;
                if self.orphan {
                    // Linux tcp_fin_timeout: an orphan waits a bounded time for the peer's FIN.
                    self.timers.set(TimerKind::TimeWait, now + self.config.fin_wait2_timeout);
                }
            }
            // RFC 9293 3.10.7.4 fifth, CLOSING: our FIN acknowledged, enter TIME-WAIT.
            State::Closing if fin_acked => self.enter_time_wait(now),
            // RFC 9293 3.10.7.4 fifth, LAST-ACK: our FIN acknowledged, delete the TCB.
            State::LastAck if fin_acked => {
                self.close_with(CloseReason::Normal);
                return Step::Done(Handled::Processed);
            }
            _ => {}
        }
        Step::Continue
    }

    fn update_ts_recent(&mut self, now: Instant, h: &Header) {
        // RFC 7323 4.3: TS.Recent = SEG.TSval if SEG.TSval >= TS.Recent and SEG.SEQ =< Last.ACK.sent.
        if let (true, Some((tsval, _))) = (self.ts_enabled, h.options.timestamps)
            && (tsval.wrapping_sub(self.ts_recent) as i32) >= 0
            && h.seq.le(self.last_ack_sent)
        {
            self.ts_recent = tsval;
            self.ts_recent_age = now;
        }
    }

    fn on_new_ack(&mut self, now: Instant, h: &Header) {
        let acked = h.ack.since(self.snd_una);
        let data_acked = (acked as usize).min(self.send_buf.len());
        self.send_buf.ack(data_acked);
        self.stats.bytes_acked += data_acked as u64;
        self.snd_una = h.ack;
        if self.snd_nxt.lt(self.snd_una) {
            self.snd_nxt = self.snd_una;
        }
        if self.high_rxt.lt(self.snd_una) {
            self.high_rxt = self.snd_una;
        }
        self.scoreboard.trim(self.snd_una);
        self.consecutive_rtos = 0;
        self.rtt.reset_backoff();

        // RFC 7323 4.2 RTTM from the echoed timestamp; otherwise Karn's timed segment (RFC 6298 3).
        let min_rto = self.config.min_rto;
        match (self.ts_enabled, h.options.timestamps) {
            (true, Some((_, tsecr))) if tsecr != 0 => {
                let ms = self.ts_now(now).wrapping_sub(tsecr);
                if (ms as i32) >= 0 {
                    self.rtt.sample(Duration::from_millis(ms as u64), min_rto);
                }
            }
            _ => {
                if let Some((end, sent)) = self.rtt_timing
                    && self.snd_una.ge(end)
                {
                    self.rtt.sample(now.saturating_duration_since(sent), min_rto);
                    self.rtt_timing = None;
                }
            }
        }

        let mss = self.mss();
        match self.recovery {
            Some(recover) if self.snd_una.ge(recover) => {
                // RFC 6582 3.2 step 3, full ACK: cwnd = min(ssthresh, max(FlightSize, SMSS) + SMSS).
                let flight = self.snd_max.since(self.snd_una);
                self.cc.cwnd = self.cc.ssthresh.min(flight.max(mss) + mss);
                self.recovery = None;
                self.dupacks = 0;
                self.end_recovery_episode();
            }
            Some(_) => {
                // RFC 6582 3.2 step 3, partial ACK: the next unacknowledged segment is lost too;
                // deflate the dupack inflation.
                self.dupacks = 0;
                if !self.sack_enabled {
                    self.high_rxt = self.snd_una;
                }
            }
            None => {
                self.dupacks = 0;
                self.cc.on_ack(now, data_acked as u32, mss, self.rtt.srtt());
            }
        }

        // RFC 6298 5.2 / 5.3: stop the timer when all is acknowledged, else restart it.
        if self.snd_una == self.snd_max {
            self.timers.stop(TimerKind::Retransmit);
            self.tlp_pending = false;
        } else {
            self.arm_retransmit(now);
        }
        if self.want_writable && self.send_buf.free() > 0 && self.state.app_can_send() {
            self.want_writable = false;
            self.events |= EV_WRITABLE;
        }
    }

    fn on_dupack(&mut self, _h: &Header) {
        self.dupacks += 1;
        if self.recovery.is_none() && self.dupacks == 3 {
            self.enter_fast_recovery();
        }
    }

    /// RFC 5827 3.2 (Early Retransmit, SACK-based): with fewer than four segments outstanding
    /// and nothing new that may be sent, three segments can never be SACKed above a hole, so the
    /// threshold drops to (outstanding - 1) segments. Small windows are the common case under
    /// heavy loss; without this every such hole costs a retransmission timeout.
    fn early_retransmit_due(&self) -> bool {
        let mss = self.mss().max(1);
        let flight = self.snd_max.since(self.snd_una);
        let outstanding = flight.div_ceil(mss);
        let data_end = self.snd_una + self.send_buf.len() as u32;
        let window_end = self.snd_una + self.snd_wnd;
        let can_send_new = self.snd_max.lt(data_end)
            && self.snd_max.lt(window_end)
            && self.pipe() + mss <= self.cc.cwnd;
        (2..4).contains(&outstanding)
            && !can_send_new
            && self.scoreboard.sacked_bytes() >= (outstanding - 1) * mss
    }

    /// A retransmission can be lost too, and RFC 6675 leaves it to the retransmission timer
    /// (HighRxt has moved past it). As RFC 8985 6.2 reasons, if the peer SACKs data we first
    /// sent after a retransmission while the retransmitted bytes are still missing, the
    /// retransmission was lost (reordering beyond a whole round trip aside): resend it now.
    fn detect_lost_retransmission(&mut self) {
        if self.rexmits.is_empty() {
            return;
        }
        let (una, board) = (self.snd_una, &self.scoreboard);
        self.rexmits.retain(|&(seq, _)| seq.ge(una) && board.sacked_at(seq).is_none());
        if self.lost_again.is_some() {
            return;
        }
        let Some(highest) = self.scoreboard.highest() else { return };
        if let Some(i) = self.rexmits.iter().position(|&(_, snd_max)| highest.gt(snd_max)) {
            self.lost_again = self.rexmits.remove(i).map(|(seq, _)| seq);
        }
    }

    fn end_recovery_episode(&mut self) {
        // Drop the allocation too: a connection that once saw loss costs nothing extra idle.
        self.rexmits = VecDeque::new();
        self.lost_again = None;
    }

    /// RFC 5681 3.2 steps 2-4 / RFC 6582 3.2 step 2 / RFC 6675 5 step 4: enter fast recovery.
    fn enter_fast_recovery(&mut self) {
        let mss = self.mss();
        let flight = self.snd_max.since(self.snd_una);
        self.cc.on_loss(flight, mss);
        self.cc.cwnd = self.cc.ssthresh;
        self.recovery = Some(self.snd_max);
        // The first unacknowledged segment is retransmitted right away.
        self.high_rxt = self.snd_una;
        self.rtt_timing = None;
    }

    fn step_text_and_fin(&mut self, now: Instant, h: &Header, p: &[u8]) -> Step {
        let fin_seq = h.seq + p.len() as u32;
        if self.state.receives_data() {
            // RFC 9293 3.10.7.4 seventh: deliver in-window data; trim what lies before RCV.NXT.
            self.receive_data(now, h.seq, p);
            if h.flags.fin() && fin_seq.ge(self.rcv_nxt) && fin_seq.since(self.rcv_nxt) <= self.rcv_wnd() {
                self.peer_fin = Some(fin_seq);
            }
            if self.peer_fin == Some(self.rcv_nxt) {
                self.peer_fin = None;
                self.on_fin(now);
            }
        } else if h.seg_len(p.len()) > 0 && h.seq.lt(self.rcv_nxt) {
            // RFC 9293 3.10.7.4 seventh: CLOSE-WAIT, CLOSING, LAST-ACK: the FIN was received, so
            // this is a retransmission; ACK it.
            self.ack_now = true;
        }
        Step::Continue
    }

    fn receive_data(&mut self, now: Instant, seq: SeqNum, p: &[u8]) {
        if p.is_empty() {
            return;
        }
        let (mut seq, mut data) = (seq, p);
        if seq.lt(self.rcv_nxt) {
            let skip = self.rcv_nxt.since(seq) as usize;
            if skip >= data.len() {
                // RFC 5681 4.2: a duplicate segment is ACKed at once.
                self.ack_now = true;
                return;
            }
            data = &data[skip..];
            seq = self.rcv_nxt;
        }
        let offset = seq.since(self.rcv_nxt);
        let room = self.rcv_wnd().saturating_sub(offset) as usize;
        data = &data[..data.len().min(room)];
        if data.is_empty() {
            // Beyond a closed window (e.g. a zero-window probe with data): re-advertise at once.
            self.ack_now = true;
            return;
        }
        self.rcv_mss = self.rcv_mss.max(p.len().min(u16::MAX as usize) as u16);
        let had_holes = self.recv_buf.has_out_of_order();
        match self.recv_buf.write(offset, data) {
            Some(0) => {
                // RFC 5681 4.2 / RFC 9293 3.10.7.4: out-of-order data gets an immediate ACK.
                self.last_ooo = Some(seq);
                self.ack_now = true;
            }
            Some(advance) => {
                self.rcv_nxt += advance;
                self.stats.bytes_received += advance as u64;
                self.events |= EV_READABLE;
                self.unacked_bytes += advance;
                if had_holes || self.unacked_bytes >= 2 * self.rcv_mss as u32 {
                    // RFC 5681 4.2: ACK at least every second full segment, and at once when
                    // filling a hole.
                    self.ack_now = true;
                } else if !self.timers.is_set(TimerKind::DelayedAck) {
                    // RFC 9293 3.8.6.3: delay the ACK.
                    self.timers.set(TimerKind::DelayedAck, now + self.config.delayed_ack);
                }
            }
            None => self.ack_now = true,
        }
        if !self.recv_buf.has_out_of_order() {
            self.last_ooo = None;
        }
    }

    /// RFC 9293 3.10.7.4 eighth: the peer's FIN, in sequence.
    fn on_fin(&mut self, now: Instant) {
        self.rcv_nxt += 1;
        self.events |= EV_PEER_FIN;
        match self.state {
            // RFC 9293 3.10.7.4 eighth, ESTABLISHED: enter CLOSE-WAIT. The ACK is delayed so a
            // prompt close can fold it into our FIN (as Linux).
            State::Established => {
                self.state = State::CloseWait;
                if !self.timers.is_set(TimerKind::DelayedAck) {
                    self.timers.set(TimerKind::DelayedAck, now + self.config.delayed_ack);
                }
                return;
            }
            // RFC 9293 3.10.7.4 eighth, FIN-WAIT-1: FIN acked -> TIME-WAIT, else CLOSING
            // (simultaneous close).
            State::FinWait1 => {
                if self.fin_seq.is_some_and(|f| self.snd_una.gt(f)) {
                    self.enter_time_wait(now);
                } else {
                    self.state = State::Closing;
                }
            }
            // RFC 9293 3.10.7.4 eighth, FIN-WAIT-2: enter TIME-WAIT.
            State::FinWait2 => self.enter_time_wait(now),
            _ => {}
        }
        self.ack_now = true;
    }

    fn enter_time_wait(&mut self, now: Instant) {
        self.state = State::TimeWait;
        self.timers.stop_all();
        // RFC 9293 3.10.8: TIME-WAIT lasts 2 MSL.
        self.timers.set(TimerKind::TimeWait, now + 2 * self.config.msl);
        self.send_buf.clear();
    }

    // ---------------------------------------------------------------- output

    /// Write the next segment to send (header, options, payload; checksum 0) into `buf`.
    /// `buf` should hold at least 60 + MSS bytes. Returns its length, or `None` if nothing is due.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        if self.send_rst {
            self.send_rst = false;
            // RFC 9293 3.10.4 ABORT: <SEQ=SND.NXT><CTL=RST> (with ACK, as Linux).
            let h = Header {
                src_port: self.local.port(),
                dst_port: self.remote.port(),
                seq: self.snd_max,
                ack: self.rcv_nxt,
                flags: Flags::RST | Flags::ACK,
                ..Default::default()
            };
            self.stats.segments_sent += 1;
            return segment::write(&h, &[], buf).ok();
        }
        if self.state == State::Closed {
            return None;
        }
        if self.tlp_probe {
            self.tlp_probe = false;
            if let Some(n) = self.send_loss_probe(now, buf) {
                self.stats.loss_probes += 1;
                return Some(n);
            }
        }
        if let Some(n) = self.transmit_data(now, buf) {
            return Some(n);
        }
        if self.probe != Probe::None {
            let probe = core::mem::replace(&mut self.probe, Probe::None);
            match probe {
                Probe::Keepalive => self.stats.keepalive_probes += 1,
                _ => self.stats.zero_window_probes += 1,
            }
            // RFC 1122 4.2.3.6 / RFC 9293 3.8.6.1: zero-length probe at SND.NXT-1, which the
            // peer must answer with an ACK (Linux: SND.UNA-1; equal when idle).
            let seq = if probe == Probe::Keepalive { self.snd_max - 1 } else { self.snd_una - 1 };
            let h = self.header(now, seq, Flags::ACK);
            return self.emit_ack(buf, h);
        }
        if self.ack_now {
            // SND.NXT in RFC terms is our highest sequence sent (SND.MAX here): after a timeout
            // our go-back-N pointer is below what the peer has received, and an ACK carrying it
            // would fail the peer's acceptability test (found by the simulator: both sides in
            // go-back-N ignored each other's ACKs until retransmission gave up).
            let h = self.header(now, self.snd_max, Flags::ACK);
            return self.emit_ack(buf, h);
        }
        // Data queued against a zero window (RFC 9293 3.8.6.1): make sure a probe is scheduled.
        self.update_persist(now);
        None
    }

    fn emit_ack(&mut self, buf: &mut [u8], h: Header) -> Option<usize> {
        self.on_ack_sent(&h);
        self.stats.segments_sent += 1;
        segment::write(&h, &[], buf).ok()
    }

    fn on_ack_sent(&mut self, h: &Header) {
        self.ack_now = false;
        self.unacked_bytes = 0;
        self.timers.stop(TimerKind::DelayedAck);
        self.last_ack_sent = h.ack;
        self.rcv_adv = h.ack + ((h.window as u32) << self.rcv_wscale);
    }

    /// A header with ACK, our window, timestamps and SACK blocks.
    fn header(&self, now: Instant, seq: SeqNum, flags: Flags) -> Header {
        let wnd = self.rcv_wnd();
        let window = (wnd >> self.rcv_wscale).min(u16::MAX as u32) as u16;
        let mut options = Options::default();
        if self.ts_enabled {
            options.timestamps = Some((self.ts_now(now), self.ts_recent));
        }
        if self.sack_enabled && self.recv_buf.has_out_of_order() {
            options.sack = self.sack_blocks();
        }
        options.fit();
        Header {
            src_port: self.local.port(),
            dst_port: self.remote.port(),
            seq,
            ack: self.rcv_nxt,
            flags: flags | Flags::ACK,
            window,
            urgent: 0,
            options,
        }
    }

    /// RFC 2018 4: the block holding the most recent segment first, then the others.
    fn sack_blocks(&self) -> SackBlocks {
        let ranges = self.recv_buf.out_of_order();
        let abs = |&(s, e): &(u32, u32)| (self.rcv_nxt + s, self.rcv_nxt + e);
        let mut blocks = SackBlocks::default();
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

    /// Flight size estimate ("pipe", RFC 6675 SetPipe; RFC 6582 inflation without SACK).
    fn pipe(&self) -> u32 {
        let flight = self.snd_nxt.since(self.snd_una).max(if self.recovery.is_some() {
            self.snd_max.since(self.snd_una)
        } else {
            0
        });
        if self.recovery.is_none() {
            // RFC 6675 4 (SetPipe): SACKed segments have left the network, recovery or not, so
            // each SACK clocks out new data (the effect RFC 3042 limited transmit asks for)
            // and the ACKs that follow can reveal the loss before the timer does.
            return flight.saturating_sub(if self.sack_enabled { self.scoreboard.sacked_bytes() } else { 0 });
        }
        if self.sack_enabled && !self.scoreboard.is_empty() {
            let mss = self.mss();
            let sacked = self.scoreboard.sacked_bytes();
            let lost = match self.scoreboard.lost_edge(mss) {
                Some(edge) => {
                    let from = self.high_rxt.max(self.snd_una);
                    self.scoreboard.unsacked_between(from, edge)
                }
                None => 0,
            };
            flight.saturating_sub(sacked).saturating_sub(lost)
        } else {
            // RFC 5681 3.2 step 4: each duplicate ACK means a segment left the network.
            flight.saturating_sub(self.dupacks.saturating_mul(self.mss()))
        }
    }

    /// In recovery, the next range to retransmit (RFC 6675 NextSeg rule 1, RFC 6582 3.2 step 4).
    fn next_retransmission(&self) -> Option<(SeqNum, u32)> {
        self.recovery?;
        let mss = self.mss();
        let from = self.high_rxt.max(self.snd_una);
        let data_end = self.snd_una + self.send_buf.len() as u32;
        if self.sack_enabled && !self.scoreboard.is_empty() {
            let mut seq = from;
            while let Some(right) = self.scoreboard.sacked_at(seq) {
                seq = right;
            }
            let edge = self.scoreboard.lost_edge(mss).unwrap_or(self.snd_una + 1).max(self.snd_una + 1);
            if !seq.lt(edge) || !seq.lt(data_end) {
                return None;
            }
            let limit = self.scoreboard.next_sacked_after(seq).unwrap_or(data_end).min(data_end);
            Some((seq, limit.since(seq).min(mss)))
        } else if from == self.snd_una && self.snd_una.lt(data_end) {
            Some((self.snd_una, data_end.since(self.snd_una).min(mss)))
        } else {
            None
        }
    }

    fn transmit_data(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        if matches!(self.state, State::FinWait2 | State::TimeWait | State::Closed) {
            return None;
        }
        let window_end = self.snd_una + self.snd_wnd;
        let cwnd = self.cc.cwnd;
        let pipe = self.pipe();
        let data_end = self.snd_una + self.send_buf.len() as u32;
        if let Some(seq) = self.lost_again
            && (pipe < cwnd || seq == self.snd_una)
        {
            if seq.ge(self.snd_una) && seq.lt(data_end) && self.scoreboard.sacked_at(seq).is_none() {
                let limit = self.scoreboard.next_sacked_after(seq).unwrap_or(data_end).min(data_end);
                let (n, _) = self.write_data(now, buf, seq, limit.since(seq).min(self.mss()), false)?;
                self.lost_again = None;
                self.note_retransmission(seq);
                return Some(n);
            }
            self.lost_again = None;
        }
        if let Some((seq, len)) = self.next_retransmission()
            && (pipe < cwnd || seq == self.snd_una)
        {
            let retransmission = self.write_data(now, buf, seq, len, false)?;
            self.high_rxt = seq + retransmission.1;
            self.note_retransmission(seq);
            return Some(retransmission.0);
        }
        let avail = if self.snd_nxt.lt(data_end) { data_end.since(self.snd_nxt) } else { 0 };
        let wnd_room = if self.snd_nxt.lt(window_end) { window_end.since(self.snd_nxt) } else { 0 };
        let cwnd_room = cwnd.saturating_sub(pipe);
        let mss = self.mss();
        let len = avail.min(wnd_room).min(cwnd_room).min(mss);
        let retransmitting = self.snd_nxt.lt(self.snd_max);
        let fin_due = self.fin_queued && len == avail && (self.fin_seq.is_none() || retransmitting);
        if len == 0 && !fin_due {
            return None;
        }
        if len > 0 && len < mss && !retransmitting && !fin_due {
            if len < avail {
                // RFC 9293 3.8.6.2.1 sender SWS avoidance: only a segment of at least half the
                // largest window the peer offered.
                if len < self.max_snd_wnd / 2 {
                    return None;
                }
            } else if self.config.nagle && self.snd_nxt != self.snd_una {
                // RFC 9293 3.7.4 Nagle: hold a small segment while data is unacknowledged.
                return None;
            }
        }
        let seq = self.snd_nxt;
        let (n, sent) = self.write_data(now, buf, seq, len, fin_due)?;
        let fin_sent = fin_due && sent == len;
        if fin_sent && self.fin_seq.is_none() {
            self.fin_seq = Some(seq + sent);
        }
        if !retransmitting && self.rtt_timing.is_none() && !self.ts_enabled && sent > 0 {
            self.rtt_timing = Some((seq + sent, now));
        }
        if retransmitting && self.rtt_timing.is_some_and(|(end, _)| end.gt(seq)) {
            // RFC 6298 3 (Karn): never time a retransmitted segment.
            self.rtt_timing = None;
        }
        self.snd_nxt = seq + sent + fin_sent as u32;
        self.snd_max = self.snd_max.max(self.snd_nxt);
        Some(n)
    }

    /// Remember a retransmission made in recovery for [`Self::detect_lost_retransmission`]
    /// (bounded: the oldest are forgotten, and then only the timer recovers them).
    fn note_retransmission(&mut self, seq: SeqNum) {
        if self.sack_enabled && self.recovery.is_some() {
            if self.rexmits.len() == 64 {
                self.rexmits.pop_front();
            }
            self.rexmits.push_back((seq, self.snd_max));
        }
    }

    /// Write a data segment of up to `len` bytes at `seq` (and FIN if `fin` and all fits).
    /// Returns (segment length, payload bytes).
    fn write_data(&mut self, now: Instant, buf: &mut [u8], seq: SeqNum, len: u32, fin: bool) -> Option<(usize, u32)> {
        let mut h = self.header(now, seq, Flags::ACK);
        let hlen = h.header_len();
        // Options beyond the timestamps shrink the payload so the packet stays within the MSS.
        let extra = (h.options.encoded_len() as u32).saturating_sub(if self.ts_enabled { TS_LEN as u32 } else { 0 });
        let room = buf.len().checked_sub(hlen)? as u32;
        let len = len.min(self.mss().saturating_sub(extra)).min(room);
        if len == 0 && !fin {
            return None;
        }
        let offset = seq.since(self.snd_una) as usize;
        let n = self.send_buf.peek(offset, &mut buf[hlen..hlen + len as usize]) as u32;
        let data_end = self.snd_una + self.send_buf.len() as u32;
        if fin && seq + n == data_end {
            h.flags = h.flags | Flags::FIN;
        }
        if n > 0 && seq + n == data_end {
            h.flags = h.flags | Flags::PSH;
        }
        if n == 0 && !h.flags.fin() {
            return None;
        }
        let mut hdr = [0u8; segment::MAX_HEADER_LEN];
        let written = segment::write(&h, &[], &mut hdr).ok()?;
        buf[..written].copy_from_slice(&hdr[..written]);
        if seq.lt(self.snd_max) {
            self.stats.retransmits += 1;
        } else {
            self.stats.bytes_sent += n as u64;
        }
        self.stats.segments_sent += 1;
        self.on_ack_sent(&h);
        // RFC 6298 5.1: start the timer when sending data and it is not running; RFC 8985
        // 7.2: restart a probe timeout after new data.
        if !self.timers.is_set(TimerKind::Retransmit) || (self.tlp_pending && seq == self.snd_max) {
            self.arm_retransmit(now);
        }
        self.timers.stop(TimerKind::Persist);
        Some((written + n as usize, n))
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("state", &self.state)
            .field("local", &self.local)
            .field("remote", &self.remote)
            .field("snd_una", &self.snd_una)
            .field("snd_nxt", &self.snd_nxt)
            .field("snd_max", &self.snd_max)
            .field("rcv_nxt", &self.rcv_nxt)
            .finish_non_exhaustive()
    }
}
