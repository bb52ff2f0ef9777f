//! What the TCB sends, pulled by `poll_transmit`: a RST owed, a tail-loss probe, data (new or
//! retransmitted, RFC 9293 3.8.6.2.1 SWS avoidance, RFC 9293 3.7.4 Nagle), probes, ACKs.

use super::negotiated::TS_LEN;
use super::recovery::FIN;
use super::{Connection, Probe, State};
use crate::Instant;
use crate::segment::{self, Flags, Header, Options};
use crate::seq::SeqNum;
use crate::timer::TimerKind;

impl Connection {
    /// Write the next segment to send (header, options, payload; checksum 0) into `buf`.
    /// `buf` should hold at least 60 + MSS bytes. Returns its length, or `None` if nothing is due.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        self.ect = false;
        if self.send_rst {
            self.send_rst = false;
            // RFC 9293 3.10.4 ABORT: <SEQ=SND.NXT><CTL=RST> (with ACK, as Linux).
            let h = Header {
                src_port: self.local.port(),
                dst_port: self.remote.port(),
                seq: self.snd.nxt,
                ack: self.rcv.nxt,
                flags: Flags::RST | Flags::ACK,
                ..Default::default()
            };
            self.stats.segments_sent += 1;
            return segment::write(&h, &[], buf).ok();
        }
        if self.state == State::Closed {
            return None;
        }
        if self.recovery.tlp_probe {
            self.recovery.tlp_probe = false;
            if let Some(n) = self.send_loss_probe(now, buf) {
                self.stats.loss_probes += 1;
                return Some(n);
            }
        }
        if let Some(n) = self.transmit_data(now, buf) {
            return Some(n);
        }
        if self.probes.pending != Probe::None {
            let probe = core::mem::replace(&mut self.probes.pending, Probe::None);
            match probe {
                Probe::Keepalive => self.stats.keepalive_probes += 1,
                _ => self.stats.zero_window_probes += 1,
            }
            // RFC 1122 4.2.3.6 / RFC 9293 3.8.6.1: zero-length probe at SND.NXT-1, which the
            // peer must answer with an ACK (Linux: SND.UNA-1; equal when idle).
            let seq = if probe == Probe::Keepalive { self.snd.nxt - 1 } else { self.snd.una - 1 };
            let h = self.header(now, seq, Flags::ACK);
            return self.emit_ack(buf, h);
        }
        if self.rcv.ack_now {
            let h = self.header(now, self.snd.nxt, Flags::ACK);
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
        self.rcv.on_ack_sent(h, self.opts.rcv_wscale);
        self.timers.stop(TimerKind::DelayedAck);
    }

    /// A header with ACK, our window, timestamps and SACK blocks.
    fn header(&self, now: Instant, seq: SeqNum, flags: Flags) -> Header {
        let wnd = self.rcv.wnd();
        let window = (wnd >> self.opts.rcv_wscale).min(u16::MAX as u32) as u16;
        let mut options = Options::default();
        // RFC 3168 6.1.3: ECE on every segment while the echo is owed.
        let flags = if self.rcv.ece { flags | Flags::ECE } else { flags };
        if self.opts.ts_enabled {
            options.timestamps = Some((self.opts.ts_now(now), self.opts.ts_recent));
        }
        if self.opts.sack_enabled && (self.rcv.buf.has_out_of_order() || self.rcv.dsack.is_some()) {
            options.sack = self.rcv.sack_blocks();
        }
        options.fit();
        Header {
            src_port: self.local.port(),
            dst_port: self.remote.port(),
            seq,
            ack: self.rcv.nxt,
            flags: flags | Flags::ACK,
            window,
            urgent: 0,
            options,
            ce: false,
        }
    }

    /// RFC 8985 7.3: new data if the peer's window allows (the congestion window does not
    /// matter), else the last segment sent again (with our FIN if it carried it).
    fn send_loss_probe(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        let mss = self.mss();
        let data_end = self.snd.data_end();
        let window_end = self.snd.window_end();
        if self.snd.nxt.lt(data_end) && self.snd.nxt.lt(window_end) {
            let seq = self.snd.nxt;
            let len = data_end.since(seq).min(window_end.since(seq)).min(mss);
            let fin_due = self.snd.fin_queued && seq + len == data_end && self.snd.fin_seq.is_none();
            let n = self.send_new(now, buf, seq, len, fin_due)?;
            self.recovery.probe_sent(self.snd.nxt, false);
            return Some(n);
        }
        let last = self.recovery.last_sent()?;
        let n = self.resend(now, buf, last.seq, last.data_len(), last.has(FIN))?;
        self.recovery.probe_sent(self.snd.nxt, true);
        Some(n)
    }

    fn transmit_data(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        if matches!(self.state, State::FinWait2 | State::TimeWait | State::Closed) {
            return None;
        }
        let (mss, sack) = (self.mss(), self.opts.sack_enabled);
        let cwnd = self.recovery.cc.cwnd();
        let pipe = self.recovery.pipe(mss, sack);
        // RFC 6675 5 step 4.1 / RFC 6582: retransmit what is lost first, as the window allows
        // (the first unacknowledged segment always may go); and not beyond the peer's window
        // (as Linux's tcp_retransmit_skb).
        if let Some(seg) = self.recovery.next_retransmission()
            && (pipe < cwnd || seg.seq == self.snd.una)
            && (seg.seq.lt(self.snd.window_end()) || seg.seq == self.snd.una)
        {
            if self.paced(now) {
                return None;
            }
            return self.resend(now, buf, seg.seq, seg.data_len(), seg.has(FIN));
        }
        let s = &self.snd;
        let data_end = s.data_end();
        let window_end = s.window_end();
        let avail = if s.nxt.lt(data_end) { data_end.since(s.nxt) } else { 0 };
        let wnd_room = if s.nxt.lt(window_end) { window_end.since(s.nxt) } else { 0 };
        let cwnd_room = cwnd.saturating_sub(pipe);
        let len = avail.min(wnd_room).min(cwnd_room).min(mss);
        let fin_due = s.fin_queued && len == avail && s.fin_seq.is_none();
        if len == 0 && !fin_due {
            return None;
        }
        if len > 0 && len < mss && !fin_due {
            if len < avail {
                // RFC 9293 3.8.6.2.1 sender SWS avoidance: only a segment of at least half the
                // largest window the peer offered.
                if len < s.max_wnd / 2 {
                    return None;
                }
            } else if self.config.nagle && s.nxt != s.una {
                // RFC 9293 3.7.4 Nagle: hold a small segment while data is unacknowledged.
                return None;
            }
        }
        if self.paced(now) {
            return None;
        }
        self.send_new(now, buf, self.snd.nxt, len, fin_due)
    }

    /// Whether the pacer holds the next data segment back; if so, the pace timer is set for
    /// when it lets it go.
    fn paced(&mut self, now: Instant) -> bool {
        if !self.config.pacing {
            return false;
        }
        let Some(at) = self.recovery.pace_wait(now) else { return false };
        if self.timers.get(TimerKind::Pace) != Some(at) {
            self.timers.set(TimerKind::Pace, at);
            self.stats.paced += 1;
        }
        true
    }

    /// Send new data at SND.NXT (and our FIN if `fin` and all fits). With ECN it goes out
    /// ECT(0), and carries CWR if the window was just reduced for an echo (RFC 3168 6.1.2).
    fn send_new(&mut self, now: Instant, buf: &mut [u8], seq: SeqNum, len: u32, fin: bool) -> Option<usize> {
        let (n, sent) = self.write_data(now, buf, seq, len, fin)?;
        if sent > 0 && now.saturating_duration_since(self.probes.last_activity) < self.config.delayed_ack {
            // Linux's tcp_event_data_sent: a reply within the delayed-ACK time of what we heard
            // makes the connection interactive: no quick ACKs, ours ride on replies.
            self.rcv.pingpong = true;
        }
        if self.opts.ecn && sent > 0 {
            self.ect = true;
            if self.recovery.take_cwr() {
                // Flags are byte 13 of the TCP header.
                buf[13] |= Flags::CWR.0;
            }
        }
        let fin_sent = fin && seq + sent == self.snd.data_end();
        if fin_sent {
            self.snd.fin_seq = Some(seq + sent);
        }
        let tsval = self.opts.ts_enabled.then(|| self.opts.ts_now(now));
        self.recovery.on_sent(now, &self.snd, seq, sent, fin_sent, tsval);
        self.snd.nxt = seq + sent + fin_sent as u32;
        let (mss, sack) = (self.mss(), self.opts.sack_enabled);
        self.recovery.note_window_use(&self.snd, mss, sack);
        self.arm_after_send(now, true);
        Some(n)
    }

    /// Send again the segment at `seq` (`len` bytes, and our FIN if `fin` and all fits).
    fn resend(&mut self, now: Instant, buf: &mut [u8], seq: SeqNum, len: u32, fin: bool) -> Option<usize> {
        let (n, sent) = self.write_data(now, buf, seq, len, fin)?;
        let fin_sent = fin && seq + sent == self.snd.data_end();
        let tsval = self.opts.ts_enabled.then(|| self.opts.ts_now(now));
        self.recovery.on_sent(now, &self.snd, seq, sent, fin_sent, tsval);
        self.arm_after_send(now, false);
        Some(n)
    }

    /// Write a data segment of up to `len` bytes at `seq` (and FIN if `fin` and all fits).
    /// Returns (segment length, payload bytes).
    fn write_data(&mut self, now: Instant, buf: &mut [u8], seq: SeqNum, len: u32, fin: bool) -> Option<(usize, u32)> {
        let mut h = self.header(now, seq, Flags::ACK);
        let hlen = h.header_len();
        // Options beyond the timestamps shrink the payload so the packet stays within the MSS.
        let extra = (h.options.encoded_len() as u32).saturating_sub(if self.opts.ts_enabled { TS_LEN as u32 } else { 0 });
        let room = buf.len().checked_sub(hlen)? as u32;
        let len = len.min(self.mss().saturating_sub(extra)).min(room);
        if len == 0 && !fin {
            return None;
        }
        let offset = seq.since(self.snd.una) as usize;
        let n = self.snd.buf.peek(offset, &mut buf[hlen..hlen + len as usize]) as u32;
        let data_end = self.snd.data_end();
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
        if seq.lt(self.snd.nxt) {
            self.stats.retransmits += 1;
        } else {
            self.stats.bytes_sent += n as u64;
        }
        self.stats.segments_sent += 1;
        self.on_ack_sent(&h);
        self.timers.stop(TimerKind::Persist);
        // As fq's initial_quantum (10 segments), a connection's first flight (its initial
        // window) leaves unpaced: pacing it over half an SRTT would only delay a short
        // response (an SRTT is known from the handshake).
        let mss = self.mss();
        if self.config.pacing && self.stats.bytes_sent > u64::from(self.config.initial_cwnd) * u64::from(mss) {
            let sack = self.opts.sack_enabled;
            self.recovery.on_paced_send(now, (written + n as usize) as u32, mss, sack);
        }
        Some((written + n as usize, n))
    }
}
