//! What the TCB sends, pulled by `poll_transmit`: a RST owed, a tail-loss probe, data (new or
//! retransmitted, RFC 9293 3.8.6.2.1 SWS avoidance, RFC 9293 3.7.4 Nagle), probes, ACKs.

use super::negotiated::TS_LEN;
use super::{Connection, Probe, State};
use crate::Instant;
use crate::segment::{self, Flags, Header, Options};
use crate::seq::SeqNum;
use crate::timer::TimerKind;

impl Connection {
    /// Write the next segment to send (header, options, payload; checksum 0) into `buf`.
    /// `buf` should hold at least 60 + MSS bytes. Returns its length, or `None` if nothing is due.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        if self.send_rst {
            self.send_rst = false;
            // RFC 9293 3.10.4 ABORT: <SEQ=SND.NXT><CTL=RST> (with ACK, as Linux).
            let h = Header {
                src_port: self.local.port(),
                dst_port: self.remote.port(),
                seq: self.snd.max,
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
            let seq = if probe == Probe::Keepalive { self.snd.max - 1 } else { self.snd.una - 1 };
            let h = self.header(now, seq, Flags::ACK);
            return self.emit_ack(buf, h);
        }
        if self.rcv.ack_now {
            // SND.NXT in RFC terms is our highest sequence sent (SND.MAX here): after a timeout
            // our go-back-N pointer is below what the peer has received, and an ACK carrying it
            // would fail the peer's acceptability test (RFC 9293 3.10.7.4 first), so a peer
            // also in go-back-N would ignore our ACKs until retransmission gave up.
            let h = self.header(now, self.snd.max, Flags::ACK);
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
        if self.opts.ts_enabled {
            options.timestamps = Some((self.opts.ts_now(now), self.opts.ts_recent));
        }
        if self.opts.sack_enabled && self.rcv.buf.has_out_of_order() {
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
        }
    }

    /// RFC 8985 7.3: new data if the windows allow, else the last segment (with our FIN if sent).
    fn send_loss_probe(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        let mss = self.mss();
        let data_end = self.snd.data_end();
        let window_end = self.snd.window_end();
        if self.snd.nxt == self.snd.max && self.snd.nxt.lt(data_end) && self.snd.nxt.lt(window_end) {
            let seq = self.snd.nxt;
            let len = data_end.since(seq).min(window_end.since(seq)).min(mss);
            let fin_due = self.snd.fin_queued && seq + len == data_end && self.snd.fin_seq.is_none();
            let (n, sent) = self.write_data(now, buf, seq, len, fin_due)?;
            let fin_sent = fin_due && seq + sent == data_end;
            if fin_sent {
                self.snd.fin_seq = Some(data_end);
            }
            self.snd.nxt = seq + sent + fin_sent as u32;
            self.snd.max = self.snd.max.max(self.snd.nxt);
            return Some(n);
        }
        let last = self.snd.fin_seq.unwrap_or(self.snd.max.min(data_end));
        let start = last - last.since(self.snd.una).min(mss);
        self.recovery.forget_timing();
        self.write_data(now, buf, start, last.since(start), self.snd.fin_seq.is_some()).map(|(n, _)| n)
    }

    fn transmit_data(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        if matches!(self.state, State::FinWait2 | State::TimeWait | State::Closed) {
            return None;
        }
        let (mss, sack) = (self.mss(), self.opts.sack_enabled);
        let cwnd = self.recovery.cc.cwnd();
        let pipe = self.recovery.pipe(&self.snd, mss, sack);
        if let Some((seq, len)) = self.recovery.lost_again_range(&self.snd, mss, pipe < cwnd) {
            let (n, _) = self.write_data(now, buf, seq, len, false)?;
            self.recovery.sent_lost_again(seq, self.snd.max, sack);
            return Some(n);
        }
        if let Some((seq, len)) = self.recovery.next_retransmission(&self.snd, mss, sack)
            && (pipe < cwnd || seq == self.snd.una)
        {
            let (n, sent) = self.write_data(now, buf, seq, len, false)?;
            self.recovery.sent_retransmission(seq, sent, self.snd.max, sack);
            return Some(n);
        }
        let s = &self.snd;
        let data_end = s.data_end();
        let window_end = s.window_end();
        let avail = if s.nxt.lt(data_end) { data_end.since(s.nxt) } else { 0 };
        let wnd_room = if s.nxt.lt(window_end) { window_end.since(s.nxt) } else { 0 };
        let cwnd_room = cwnd.saturating_sub(pipe);
        let len = avail.min(wnd_room).min(cwnd_room).min(mss);
        let retransmitting = s.nxt.lt(s.max);
        let fin_due = s.fin_queued && len == avail && (s.fin_seq.is_none() || retransmitting);
        if len == 0 && !fin_due {
            return None;
        }
        if len > 0 && len < mss && !retransmitting && !fin_due {
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
        let seq = s.nxt;
        let (n, sent) = self.write_data(now, buf, seq, len, fin_due)?;
        let fin_sent = fin_due && sent == len;
        if fin_sent && self.snd.fin_seq.is_none() {
            self.snd.fin_seq = Some(seq + sent);
        }
        // RFC 6298 3 (Karn): time new data, never a retransmitted segment.
        self.recovery.on_data_sent(now, seq, sent, retransmitting, self.opts.ts_enabled);
        self.snd.nxt = seq + sent + fin_sent as u32;
        self.snd.max = self.snd.max.max(self.snd.nxt);
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
        if seq.lt(self.snd.max) {
            self.stats.retransmits += 1;
        } else {
            self.stats.bytes_sent += n as u64;
        }
        self.stats.segments_sent += 1;
        self.on_ack_sent(&h);
        // RFC 6298 5.1: start the timer when sending data and it is not running; RFC 8985
        // 7.2: restart a probe timeout after new data.
        if !self.timers.is_set(TimerKind::Retransmit) || (self.recovery.tlp_pending && seq == self.snd.max) {
            self.arm_retransmit(now);
        }
        self.timers.stop(TimerKind::Persist);
        Some((written + n as usize, n))
    }
}
