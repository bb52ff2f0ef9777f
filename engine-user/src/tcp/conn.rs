//! One TCP connection (TCB), server side, from a validated SYN-cookie ACK to CLOSED.
//!
//! Incoming segments go through the checks of RFC 9293 3.10.7.4 in order (PAWS, sequence
//! acceptability, RST, SYN, ACK, data, FIN); what must be sent is recorded and produced by
//! [`Connection::poll_transmit`]; timers are deadlines read by [`Connection::next_deadline`] and
//! served by [`Connection::handle_timeout`].

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use engine_common::handshake::{FACT_SACK, FACT_TS, FACT_WSCALE, HandshakeFacts};

use super::{
    Config, Instant, Keepalive,
    segment::{self, ACK, FIN, Header, Options, PSH, RST, SYN},
    seq::SeqNum,
};

/// RFC 9293 3.3.2 state names, printed in RFC spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Both FINs exchanged and acknowledged (or TIME_WAIT expired).
    Normal,
    /// The peer reset the connection.
    Reset,
    /// Keepalive or retransmission gave up.
    TimedOut,
    /// The application (or the daemon) aborted it.
    Aborted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// New data, or the peer's FIN, for the application.
    Readable,
    /// Room in the send buffer again.
    Writable,
    /// The connection ended; the application sees EOF or an error.
    Closed(CloseReason),
    /// Nothing is left of it (TIME_WAIT done): the endpoint frees its slot.
    Released { local: SocketAddr, remote: SocketAddr },
}

/// For `synx conns`.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub last_activity: Instant,
    pub keepalive_probes_sent: u32,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub retransmits: u64,
    pub srtt: Option<Duration>,
    pub cwnd: u32,
}

/// One connection.
pub struct Connection {
    local: SocketAddr,
    remote: SocketAddr,
    state: State,
    closed: Option<CloseReason>,

    // Send side (RFC 9293 3.3.1).
    snd_una: SeqNum,
    snd_nxt: SeqNum,
    snd_wnd: u32,
    max_snd_wnd: u32,
    snd_wl1: SeqNum,
    snd_wl2: SeqNum,
    snd_wscale: u8,
    mss: u32,
    /// Bytes from SND.UNA on: sent-unacknowledged, then unsent.
    sbuf: VecDeque<u8>,
    send_cap: u32,
    /// The application is done sending: FIN after `sbuf`.
    fin_queued: bool,
    /// Our FIN's sequence number, once sent.
    fin_seq: Option<SeqNum>,
    fin_acked: bool,

    // Receive side.
    rcv_nxt: SeqNum,
    rcv_wscale: u8,
    recv_cap: u32,
    rbuf: VecDeque<u8>,
    /// Out-of-order data by sequence number, bounded by the receive window.
    ooo: BTreeMap<u32, Vec<u8>>,
    ooo_bytes: u32,
    /// Sequence number of a FIN that arrived ahead of missing data.
    ooo_fin: Option<SeqNum>,
    peer_fin: bool,
    last_adv_wnd: u32,

    // Options.
    ts: bool,
    ts_recent: u32,
    ts_offset: u32,
    sack: bool,

    // RFC 6298 retransmission timer and RFC 5681 / 6582 congestion control.
    srtt: Option<Duration>,
    rttvar: Duration,
    rto: Duration,
    retries: u32,
    rtt_probe: Option<(SeqNum, Instant)>,
    cwnd: u32,
    ssthresh: u32,
    dupacks: u32,
    recover: Option<SeqNum>,
    retransmit_una: bool,

    // Timers (deadlines).
    rto_at: Option<Instant>,
    delack_at: Option<Instant>,
    persist_at: Option<Instant>,
    timewait_at: Option<Instant>,

    // Output requests.
    ack_now: bool,
    unacked_segments: u32,
    probe_now: bool,
    rst_now: bool,

    // Keepalive (RFC 1122 4.2.3.6).
    keepalive: Keepalive,
    last_activity: Instant,
    probes_sent: u32,

    // RFC 5961 7 challenge-ACK limit.
    challenge_window: Instant,
    challenges: u32,
    challenge_limit: u32,

    cfg_delack: Duration,
    cfg_min_rto: Duration,
    cfg_max_rto: Duration,
    cfg_max_retries: u32,
    cfg_nagle: bool,
    cfg_2msl: Duration,

    events: VecDeque<Event>,
    bytes_received: u64,
    bytes_sent: u64,
    retransmits: u64,
    /// A retransmitted FIN was acknowledged again from TIME_WAIT (the seed's lost last ACK).
    pub time_wait_fin_reacked: u64,
}

impl Connection {
    /// An ESTABLISHED connection from the facts of a valid SYN-cookie ACK: RFC 9293 3.10.7.3,
    /// SYN-RECEIVED with an acceptable ACK, the SYN-RECEIVED state having lived in the cookie.
    /// The ACK itself (which may carry data or even a FIN) is processed as well.
    pub fn accept(
        now: Instant,
        cfg: &Config,
        facts: &HandshakeFacts,
        local: SocketAddr,
        remote: SocketAddr,
        ack: &Header,
        payload: &[u8],
    ) -> Self {
        let ts = facts.has(FACT_TS);
        let scaled = facts.has(FACT_WSCALE);
        let mut mss = u32::from(facts.mss.min(cfg.mss).max(536));
        if ts {
            mss -= 12; // RFC 7323 / RFC 9293 3.7.1: options eat into the segment
        }
        let iss = SeqNum(facts.iss);
        let mut c = Self {
            local,
            remote,
            state: State::Established,
            closed: None,
            snd_una: iss + 1,
            snd_nxt: iss + 1,
            snd_wnd: 0,
            max_snd_wnd: 0,
            snd_wl1: ack.seq,
            snd_wl2: ack.ack,
            snd_wscale: if scaled { facts.snd_wscale.min(14) } else { 0 },
            mss,
            sbuf: VecDeque::new(),
            send_cap: cfg.send_buffer,
            fin_queued: false,
            fin_seq: None,
            fin_acked: false,
            rcv_nxt: SeqNum(facts.irs) + 1,
            rcv_wscale: if scaled { facts.rcv_wscale.min(14) } else { 0 },
            recv_cap: if scaled { cfg.recv_buffer } else { cfg.recv_buffer.min(65535) },
            rbuf: VecDeque::new(),
            ooo: BTreeMap::new(),
            ooo_bytes: 0,
            ooo_fin: None,
            peer_fin: false,
            last_adv_wnd: 0,
            ts,
            ts_recent: facts.ts_recent,
            ts_offset: facts.ts_offset,
            sack: facts.has(FACT_SACK),
            srtt: None,
            rttvar: Duration::ZERO,
            rto: cfg.initial_rto,
            retries: 0,
            rtt_probe: None,
            // RFC 6928: an initial window of 10 segments.
            cwnd: 10 * mss,
            ssthresh: u32::MAX,
            dupacks: 0,
            recover: None,
            retransmit_una: false,
            rto_at: None,
            delack_at: None,
            persist_at: None,
            timewait_at: None,
            ack_now: false,
            unacked_segments: 0,
            probe_now: false,
            rst_now: false,
            keepalive: cfg.keepalive,
            last_activity: now,
            probes_sent: 0,
            challenge_window: now,
            challenges: 0,
            challenge_limit: cfg.challenge_acks_per_sec,
            cfg_delack: cfg.delayed_ack,
            cfg_min_rto: cfg.min_rto,
            cfg_max_rto: cfg.max_rto,
            cfg_max_retries: cfg.max_retries,
            cfg_nagle: cfg.nagle,
            cfg_2msl: cfg.msl * 2,
            events: VecDeque::new(),
            bytes_received: 0,
            bytes_sent: 0,
            retransmits: 0,
            time_wait_fin_reacked: 0,
        };
        // RFC 7323 2.2: the window field of the ACK is already scaled.
        c.snd_wnd = u32::from(ack.window) << c.snd_wscale;
        c.max_snd_wnd = c.snd_wnd;
        c.handle(now, ack, payload);
        c
    }

    pub fn local(&self) -> SocketAddr {
        self.local
    }
    pub fn remote(&self) -> SocketAddr {
        self.remote
    }
    pub fn state(&self) -> State {
        self.state
    }
    pub fn info(&self) -> ConnInfo {
        ConnInfo {
            last_activity: self.last_activity,
            keepalive_probes_sent: self.probes_sent,
            bytes_received: self.bytes_received,
            bytes_sent: self.bytes_sent,
            retransmits: self.retransmits,
            srtt: self.srtt,
            cwnd: self.cwnd,
        }
    }
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
    pub fn set_keepalive(&mut self, k: Keepalive) {
        self.keepalive = k;
    }

    fn push_event(&mut self, e: Event) {
        if !self.events.contains(&e) {
            self.events.push_back(e);
        }
    }

    fn close(&mut self, reason: CloseReason) {
        if self.closed.is_none() {
            self.closed = Some(reason);
            self.push_event(Event::Closed(reason));
        }
        self.state = State::Closed;
        self.rto_at = None;
        self.delack_at = None;
        self.persist_at = None;
        self.timewait_at = None;
    }

    /// Nothing left to do: the slot can be freed.
    pub fn is_released(&self) -> bool {
        self.state == State::Closed && !self.rst_now
    }

    // ----- application side -----

    /// Queue data to send; returns how much fit in the send buffer.
    pub fn send(&mut self, data: &[u8]) -> usize {
        if self.fin_queued || !matches!(self.state, State::Established | State::CloseWait) {
            return 0;
        }
        let room = (self.send_cap as usize).saturating_sub(self.sbuf.len());
        let n = room.min(data.len());
        self.sbuf.extend(&data[..n]);
        n
    }

    /// Read received in-order data; returns the number of bytes.
    pub fn recv(&mut self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.rbuf.len());
        let (a, b) = self.rbuf.as_slices();
        let from_a = n.min(a.len());
        out[..from_a].copy_from_slice(&a[..from_a]);
        out[from_a..n].copy_from_slice(&b[..n - from_a]);
        self.rbuf.drain(..n);
        if self.rbuf.is_empty() {
            self.rbuf.shrink_to(0);
        }
        // RFC 9293 3.8.6.2.2: tell the peer about a window that grew by a segment or more.
        if n > 0 && self.rcv_window().saturating_sub(self.last_adv_wnd) >= 2 * self.mss {
            self.ack_now = true;
        }
        n
    }

    pub fn has_unread(&self) -> bool {
        !self.rbuf.is_empty()
    }

    /// The peer's FIN has arrived (after all its data).
    pub fn peer_finished(&self) -> bool {
        self.peer_fin
    }

    /// Half-close: FIN after the queued data (RFC 9293 3.10.4).
    pub fn shutdown(&mut self, _now: Instant) {
        match self.state {
            State::Established | State::CloseWait => self.fin_queued = true,
            _ => {}
        }
    }

    /// Abort: RST and CLOSED (RFC 9293 3.10.5).
    pub fn abort(&mut self, _now: Instant) {
        if self.state != State::Closed && self.state != State::TimeWait {
            self.rst_now = true;
        }
        let was_time_wait = self.state == State::TimeWait;
        self.close(CloseReason::Aborted);
        if was_time_wait {
            self.rst_now = false;
        }
    }

    /// The XDP program's LAST_SEEN stamp: the peer was heard from at `t` (any segment resets
    /// keepalive, RFC 1122 4.2.3.6), without the segment having to wake this connection.
    pub fn note_peer_activity(&mut self, t: Instant) {
        if t > self.last_activity {
            self.last_activity = t;
            self.probes_sent = 0;
        }
    }

    // ----- receive path -----

    fn rcv_window(&self) -> u32 {
        let used = self.rbuf.len() as u32 + self.ooo_bytes;
        self.recv_cap.saturating_sub(used)
    }

    /// A challenge ACK (RFC 5961 3.2, 4.2, 5.2), rate-limited (RFC 5961 7).
    fn challenge_ack(&mut self, now: Instant) {
        if now.saturating_duration_since(self.challenge_window) >= Duration::from_secs(1) {
            self.challenge_window = now;
            self.challenges = 0;
        }
        if self.challenges < self.challenge_limit {
            self.challenges += 1;
            self.ack_now = true;
        }
    }

    /// Process one segment of this connection.
    pub fn handle(&mut self, now: Instant, h: &Header, payload: &[u8]) {
        if self.state == State::Closed {
            return;
        }
        let seg_len = h.seg_len(payload.len());
        // TIME-WAIT: the only thing that can arrive is a retransmission of the remote FIN;
        // acknowledge it and restart the 2 MSL timeout (RFC 9293 3.10.7.4, "eighth").
        if self.state == State::TimeWait && h.has(FIN) && !h.has(RST) {
            self.ack_now = true;
            self.timewait_at = Some(now + self.cfg_2msl);
            self.time_wait_fin_reacked += 1;
            return;
        }
        // RFC 7323 5.3 PAWS: a timestamp older than TS.Recent marks an old duplicate.
        if self.ts
            && !h.has(RST)
            && let Some((tsval, _)) = h.options.timestamps
            && (tsval.wrapping_sub(self.ts_recent) as i32) < 0
        {
            self.ack_now = true;
            return;
        }
        // RFC 9293 3.10.7.4 first: sequence number acceptability.
        let wnd = self.rcv_window();
        let acceptable = match (seg_len, wnd) {
            (0, 0) => h.seq == self.rcv_nxt,
            (0, _) => h.seq.in_range(self.rcv_nxt, self.rcv_nxt + wnd),
            (_, 0) => false,
            (n, _) => {
                h.seq.in_range(self.rcv_nxt, self.rcv_nxt + wnd)
                    || (h.seq + (n - 1)).in_range(self.rcv_nxt, self.rcv_nxt + wnd)
            }
        };
        // Zero-window probes and keepalives carry SEQ = RCV.NXT - 1: answer with an ACK.
        if !acceptable {
            if !h.has(RST) {
                self.ack_now = true;
            }
            return;
        }
        // Any acceptable segment shows the peer is alive (RFC 1122 4.2.3.6).
        self.last_activity = self.last_activity.max(now);
        self.probes_sent = 0;
        // RFC 7323 4.3: TS.Recent follows the segment that covers RCV.NXT.
        if self.ts
            && let Some((tsval, _)) = h.options.timestamps
            && h.seq.le(self.rcv_nxt)
        {
            self.ts_recent = tsval;
        }
        // Second: RST (RFC 5961 3.2): reset only when SEG.SEQ is exactly RCV.NXT.
        if h.has(RST) {
            if h.seq == self.rcv_nxt {
                let reason = match self.state {
                    State::LastAck | State::Closing | State::TimeWait => CloseReason::Normal,
                    _ => CloseReason::Reset,
                };
                self.close(reason);
            } else {
                self.challenge_ack(now);
            }
            return;
        }
        // Fourth: SYN in a synchronized state: challenge ACK (RFC 5961 4.2).
        if h.has(SYN) {
            self.challenge_ack(now);
            return;
        }
        // Fifth: segments without ACK are dropped (RFC 9293 3.10.7.4).
        if !h.has(ACK) {
            return;
        }
        if !self.process_ack(now, h, payload.len()) {
            return;
        }
        if self.state == State::Closed {
            return;
        }
        // Seventh: segment text, in states that still receive.
        if !payload.is_empty()
            && matches!(self.state, State::Established | State::FinWait1 | State::FinWait2)
        {
            self.receive_data(now, h.seq, payload);
        }
        // Eighth: FIN.
        if h.has(FIN) {
            let fin_seq = h.seq + payload.len() as u32;
            if fin_seq == self.rcv_nxt {
                self.receive_fin(now);
            } else if fin_seq.gt(self.rcv_nxt) {
                self.ooo_fin = Some(fin_seq);
                self.ack_now = true;
            }
        }
    }

    /// RFC 9293 3.10.7.4 fifth, with RFC 5961 5.2's ACK range check. Returns false when the
    /// segment must be dropped.
    fn process_ack(&mut self, now: Instant, h: &Header, payload_len: usize) -> bool {
        let ack = h.ack;
        // RFC 5961 5.2: acceptable if SND.UNA - MAX.SND.WND <= SEG.ACK <= SND.NXT.
        let fin_sent_nxt = self.snd_nxt;
        if ack.gt(fin_sent_nxt) {
            self.ack_now = true;
            return false;
        }
        if ack.lt(self.snd_una - self.max_snd_wnd.max(1)) {
            self.challenge_ack(now);
            return false;
        }
        let window = u32::from(h.window) << self.snd_wscale;
        if ack.gt(self.snd_una) {
            self.on_new_ack(now, h, ack);
        } else if ack == self.snd_una
            && payload_len == 0
            && window == self.snd_wnd
            && !h.has(FIN)
            && self.in_flight() > 0
        {
            self.on_dup_ack();
        }
        // Window update (RFC 9293 3.10.7.4): only from a newer segment.
        if self.snd_wl1.lt(h.seq) || (self.snd_wl1 == h.seq && self.snd_wl2.le(ack)) {
            self.snd_wnd = window;
            self.max_snd_wnd = self.max_snd_wnd.max(window);
            self.snd_wl1 = h.seq;
            self.snd_wl2 = ack;
            if window > 0 {
                self.persist_at = None;
            }
        }
        // State changes on our FIN being acknowledged.
        if self.fin_acked {
            match self.state {
                State::FinWait1 => self.state = State::FinWait2,
                State::Closing => self.enter_time_wait(now),
                State::LastAck => {
                    self.close(CloseReason::Normal);
                    return false;
                }
                _ => {}
            }
        }
        true
    }

    fn in_flight(&self) -> u32 {
        self.snd_nxt - self.snd_una
    }

    fn on_new_ack(&mut self, now: Instant, h: &Header, ack: SeqNum) {
        let acked = ack - self.snd_una;
        let mut data_acked = acked;
        if let Some(fs) = self.fin_seq
            && ack.gt(fs)
        {
            self.fin_acked = true;
            data_acked -= 1;
        }
        let drop = (data_acked as usize).min(self.sbuf.len());
        self.sbuf.drain(..drop);
        if self.sbuf.is_empty() {
            self.sbuf.shrink_to(0);
        }
        self.bytes_sent += drop as u64;
        self.snd_una = ack;
        if self.snd_nxt.lt(self.snd_una) {
            self.snd_nxt = self.snd_una;
        }
        // RTT sample (RFC 6298 3; with timestamps RFC 7323 4.1, else Karn's timed segment).
        let sample = if self.ts && let Some((_, tsecr)) = h.options.timestamps {
            let now_ts = self.ts_now(now);
            let d = now_ts.wrapping_sub(tsecr);
            (d < 60_000).then(|| Duration::from_millis(u64::from(d)))
        } else if let Some((seq, at)) = self.rtt_probe
            && ack.gt(seq)
        {
            Some(now.saturating_duration_since(at))
        } else {
            None
        };
        if let Some(s) = sample {
            self.rtt_probe = None;
            self.update_rtt(s);
        }
        self.retries = 0;
        // RFC 5681 3.1 / RFC 6582 3.2.
        if let Some(recover) = self.recover {
            if ack.ge(recover) {
                // Full acknowledgment: leave fast recovery.
                self.cwnd = self.ssthresh.max(2 * self.mss);
                self.recover = None;
            } else {
                // Partial acknowledgment: retransmit the next hole, deflate.
                self.retransmit_una = true;
                self.cwnd = self.cwnd.saturating_sub(acked).saturating_add(self.mss);
            }
        } else if self.cwnd < self.ssthresh {
            self.cwnd = self.cwnd.saturating_add(acked.min(self.mss)); // slow start
        } else {
            let inc = (self.mss * self.mss / self.cwnd.max(1)).max(1); // congestion avoidance
            self.cwnd = self.cwnd.saturating_add(inc);
        }
        self.dupacks = 0;
        // RFC 6298 5.2/5.3: restart the timer while data is outstanding.
        self.rto_at = if self.in_flight() > 0 { Some(now + self.rto) } else { None };
        if drop > 0 {
            self.push_event(Event::Writable);
        }
    }

    fn on_dup_ack(&mut self) {
        self.dupacks += 1;
        if self.recover.is_some() {
            self.cwnd = self.cwnd.saturating_add(self.mss); // RFC 5681 3.2 step 4
        } else if self.dupacks == 3 {
            // RFC 5681 3.2 / RFC 6582: fast retransmit, then fast recovery.
            self.ssthresh = (self.in_flight() / 2).max(2 * self.mss);
            self.cwnd = self.ssthresh + 3 * self.mss;
            self.recover = Some(self.snd_nxt);
            self.retransmit_una = true;
            self.rtt_probe = None;
        }
    }

    fn update_rtt(&mut self, r: Duration) {
        // RFC 6298 2.2 / 2.3.
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(srtt) => {
                let delta = if srtt > r { srtt - r } else { r - srtt };
                self.rttvar = (self.rttvar * 3 + delta) / 4;
                self.srtt = Some((srtt * 7 + r) / 8);
            }
        }
        let g = Duration::from_millis(1);
        self.rto = (self.srtt.unwrap_or(r) + (self.rttvar * 4).max(g))
            .clamp(self.cfg_min_rto, self.cfg_max_rto);
    }

    fn receive_data(&mut self, now: Instant, seq: SeqNum, payload: &[u8]) {
        // Trim what we already have (overlaps and duplicates).
        let (mut seq, mut data) = (seq, payload);
        if seq.lt(self.rcv_nxt) {
            let skip = (self.rcv_nxt - seq) as usize;
            if skip >= data.len() {
                self.ack_now = true;
                return;
            }
            data = &data[skip..];
            seq = self.rcv_nxt;
        }
        // Trim to the window: never hold more than we advertised.
        let wnd = self.rcv_window() as usize;
        let offset = (seq - self.rcv_nxt) as usize;
        if offset >= wnd {
            self.ack_now = true;
            return;
        }
        let data = &data[..data.len().min(wnd - offset)];
        if offset == 0 {
            self.rbuf.extend(data);
            self.rcv_nxt += data.len() as u32;
            self.bytes_received += data.len() as u64;
            self.drain_ooo();
            self.push_event(Event::Readable);
            // RFC 9293 3.8.6.3 / RFC 1122 4.2.3.2: ACK at least every second full segment,
            // and within the delayed-ACK time otherwise; at once if it filled a gap.
            self.unacked_segments += 1;
            if self.unacked_segments >= 2 || !self.ooo.is_empty() {
                self.ack_now = true;
            } else if self.delack_at.is_none() {
                self.delack_at = Some(now + self.cfg_delack);
            }
            if let Some(fin) = self.ooo_fin
                && fin == self.rcv_nxt
            {
                self.ooo_fin = None;
                self.receive_fin(now);
            }
        } else {
            // Out of order: keep it (bounded by the window) and ACK at once, so the peer's
            // fast retransmit can start (RFC 5681 4.2).
            let key = seq.0;
            let keep = match self.ooo.get(&key) {
                Some(existing) => data.len() > existing.len(),
                None => true,
            };
            if keep {
                if let Some(old) = self.ooo.insert(key, data.to_vec()) {
                    self.ooo_bytes -= old.len() as u32;
                }
                self.ooo_bytes += data.len() as u32;
            }
            self.ack_now = true;
        }
    }

    /// Move out-of-order segments that now fit after RCV.NXT into the in-order buffer.
    fn drain_ooo(&mut self) {
        while let Some((&start, _)) = self.ooo.iter().next() {
            let start = SeqNum(start);
            if start.gt(self.rcv_nxt) {
                break;
            }
            let data = self.ooo.remove(&start.0).expect("present");
            self.ooo_bytes -= data.len() as u32;
            let skip = (self.rcv_nxt - start) as usize;
            if skip < data.len() {
                self.rbuf.extend(&data[skip..]);
                self.rcv_nxt += (data.len() - skip) as u32;
                self.bytes_received += (data.len() - skip) as u64;
            }
        }
        // Anything left that now lies entirely below RCV.NXT is a duplicate.
        let stale: Vec<u32> = self
            .ooo
            .iter()
            .filter(|(s, d)| (SeqNum(**s) + d.len() as u32).le(self.rcv_nxt))
            .map(|(s, _)| *s)
            .collect();
        for s in stale {
            if let Some(d) = self.ooo.remove(&s) {
                self.ooo_bytes -= d.len() as u32;
            }
        }
    }

    fn receive_fin(&mut self, now: Instant) {
        // The FIN consumes a sequence number (RFC 9293 3.4).
        self.rcv_nxt += 1;
        self.peer_fin = true;
        self.ack_now = true;
        self.push_event(Event::Readable);
        match self.state {
            State::Established => self.state = State::CloseWait,
            State::FinWait1 => {
                if self.fin_acked {
                    self.enter_time_wait(now);
                } else {
                    self.state = State::Closing; // simultaneous close
                }
            }
            State::FinWait2 => self.enter_time_wait(now),
            _ => {}
        }
    }

    fn enter_time_wait(&mut self, now: Instant) {
        self.state = State::TimeWait;
        self.rto_at = None;
        self.persist_at = None;
        self.timewait_at = Some(now + self.cfg_2msl);
        // The application's side is complete: it sees EOF (no error).
        if self.closed.is_none() {
            self.closed = Some(CloseReason::Normal);
            self.push_event(Event::Closed(CloseReason::Normal));
        }
    }

    // ----- timers -----

    fn keepalive_at(&self) -> Option<Instant> {
        if !self.keepalive.enabled
            || !matches!(self.state, State::Established | State::CloseWait | State::FinWait2)
            || self.in_flight() > 0
        {
            return None;
        }
        Some(self.last_activity + self.keepalive.idle + self.keepalive.interval * self.probes_sent)
    }

    /// The earliest moment this connection needs `handle_timeout`.
    pub fn next_deadline(&self) -> Option<Instant> {
        [self.rto_at, self.delack_at, self.persist_at, self.timewait_at, self.keepalive_at()]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(t) = self.timewait_at
            && now >= t
        {
            // RFC 9293 3.10.8: 2 MSL passed in TIME-WAIT; delete the TCB.
            self.close(CloseReason::Normal);
            return;
        }
        if let Some(t) = self.delack_at
            && now >= t
        {
            self.delack_at = None;
            self.ack_now = true;
        }
        if let Some(t) = self.rto_at
            && now >= t
        {
            self.on_rto(now);
        }
        if let Some(t) = self.persist_at
            && now >= t
        {
            // RFC 9293 3.8.6.1: probe a zero window; back off like the RTO.
            self.probe_now = true;
            self.rto = (self.rto * 2).min(self.cfg_max_rto);
            self.persist_at = Some(now + self.rto);
        }
        if let Some(t) = self.keepalive_at()
            && now >= t
        {
            if self.probes_sent >= self.keepalive.probes {
                // RFC 1122 4.2.3.6: the peer is dead. Linux sends a RST before dropping it.
                self.rst_now = true;
                self.close(CloseReason::TimedOut);
            } else {
                self.probes_sent += 1;
                self.probe_now = true;
            }
        }
    }

    fn on_rto(&mut self, now: Instant) {
        if self.retries >= self.cfg_max_retries {
            // RFC 9293 3.8.3 R2: give up, reset.
            self.rst_now = true;
            self.close(CloseReason::TimedOut);
            return;
        }
        self.retries += 1;
        self.retransmits += 1;
        // RFC 5681 3.1 eq. 4: halve; RFC 6298 5.5-5.7: back off and go back to SND.UNA.
        self.ssthresh = (self.in_flight() / 2).max(2 * self.mss);
        self.cwnd = self.mss;
        self.recover = None;
        self.dupacks = 0;
        self.rtt_probe = None;
        self.snd_nxt = self.snd_una;
        if self.fin_seq.is_some() && !self.fin_acked {
            self.fin_seq = None;
        }
        self.rto = (self.rto * 2).min(self.cfg_max_rto);
        self.rto_at = Some(now + self.rto);
    }

    // ----- transmit path -----

    fn ts_now(&self, now: Instant) -> u32 {
        now.millis_u32().wrapping_add(self.ts_offset)
    }

    fn header(&mut self, now: Instant, seq: SeqNum, flags: u8) -> Header {
        let wnd = self.rcv_window();
        let scaled = (wnd >> self.rcv_wscale).min(65535);
        self.last_adv_wnd = scaled << self.rcv_wscale;
        let mut options = Options::default();
        if self.ts {
            options.timestamps = Some((self.ts_now(now), self.ts_recent));
        }
        if self.sack && flags & ACK != 0 {
            for (i, (s, d)) in self.ooo.iter().take(3).enumerate() {
                options.sack[i] = (*s, s.wrapping_add(d.len() as u32));
                options.sack_len = i as u8 + 1;
            }
            if options.timestamps.is_some() && options.sack_len > 3 {
                options.sack_len = 3;
            }
        }
        Header {
            src_port: self.local.port(),
            dst_port: self.remote.port(),
            seq,
            ack: self.rcv_nxt,
            flags,
            window: scaled as u16,
            options,
        }
    }

    fn emit(&mut self, h: &Header, payload_from: usize, len: usize, buf: &mut [u8]) -> Option<usize> {
        let hl = segment::header_len(h);
        if buf.len() < hl + len {
            return None;
        }
        let n = segment::write(h, &[], buf)?;
        // Copy the payload straight from the send buffer.
        let (a, b) = self.sbuf.as_slices();
        debug_assert_eq!(n, hl);
        let out = &mut buf[hl..hl + len];
        let mut copied = 0;
        let mut skip = payload_from;
        for part in [a, b] {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            let take = (part.len() - skip).min(len - copied);
            out[copied..copied + take].copy_from_slice(&part[skip..skip + take]);
            copied += take;
            skip = 0;
            if copied == len {
                break;
            }
        }
        self.ack_now = false;
        self.unacked_segments = 0;
        self.delack_at = None;
        Some(hl + len)
    }

    /// Write the next segment this connection wants to send into `buf` (TCP header and
    /// payload; checksum left to the wire layer). `None` when there is nothing to send.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        if self.rst_now {
            self.rst_now = false;
            // RFC 9293 3.10.5 / R2: <SEQ=SND.NXT><CTL=RST,ACK>.
            let h = self.header(now, self.snd_nxt, RST | ACK);
            return segment::write(&h, &[], buf);
        }
        if self.state == State::Closed {
            return None;
        }
        if self.probe_now {
            self.probe_now = false;
            // Keepalive and zero-window probes, as Linux sends them: no data,
            // SEG.SEQ = SND.UNA - 1, so the peer must answer with an ACK.
            let h = self.header(now, self.snd_una - 1, ACK);
            return self.emit(&h, 0, 0, buf);
        }
        let sending_state = matches!(
            self.state,
            State::Established | State::CloseWait | State::FinWait1 | State::Closing | State::LastAck
        );
        if sending_state {
            // Fast retransmit / partial ACK: one segment from SND.UNA.
            if self.retransmit_una {
                self.retransmit_una = false;
                let len = (self.mss as usize).min(self.sbuf.len());
                if len > 0 {
                    self.retransmits += 1;
                    let h = self.header(now, self.snd_una, ACK | PSH);
                    if self.rto_at.is_none() {
                        self.rto_at = Some(now + self.rto);
                    }
                    return self.emit(&h, 0, len, buf);
                }
            }
            let sent = (self.snd_nxt - self.snd_una) as usize;
            let data_sent = sent.min(self.sbuf.len());
            let unsent = self.sbuf.len() - data_sent;
            let wnd = self.snd_wnd.min(self.cwnd) as usize;
            let room = wnd.saturating_sub(sent);
            let mut len = unsent.min(room).min(self.mss as usize);
            // RFC 9293 3.7.4 Nagle: hold a small segment while data is unacknowledged.
            if len > 0 && len < self.mss as usize && len == unsent && self.cfg_nagle && sent > 0 && !self.fin_queued {
                len = 0;
            }
            let fin_now = self.fin_queued && self.fin_seq.is_none() && data_sent + len == self.sbuf.len();
            if len > 0 || fin_now {
                let mut flags = ACK;
                if len > 0 && data_sent + len == self.sbuf.len() {
                    flags |= PSH;
                }
                if fin_now {
                    flags |= FIN;
                }
                let seq = self.snd_nxt;
                let h = self.header(now, seq, flags);
                let n = self.emit(&h, data_sent, len, buf)?;
                if self.rtt_probe.is_none() && len > 0 && self.retries == 0 {
                    self.rtt_probe = Some((seq, now));
                }
                self.snd_nxt += len as u32;
                if fin_now {
                    self.fin_seq = Some(self.snd_nxt);
                    self.snd_nxt += 1;
                    self.state = match self.state {
                        State::Established => State::FinWait1,
                        State::CloseWait => State::LastAck,
                        s => s,
                    };
                }
                if self.rto_at.is_none() {
                    self.rto_at = Some(now + self.rto);
                }
                return Some(n);
            }
            // Zero window with data waiting: arm the persist timer (RFC 9293 3.8.6.1).
            if unsent > 0 && self.snd_wnd == 0 && sent == 0 && self.persist_at.is_none() {
                self.persist_at = Some(now + self.rto);
            }
        }
        if self.ack_now {
            let h = self.header(now, self.snd_nxt, ACK);
            return self.emit(&h, 0, 0, buf);
        }
        None
    }
}
