//! Segment arrival (RFC 9293 3.10.7.4): the steps in the RFC's order, one method each.

use core::time::Duration;

use super::recovery::{AckIn, Armed};
use super::{CloseReason, Connection, DropReason, EV_PEER_FIN, EV_READABLE, EV_WRITABLE, Handled, State};
use crate::Instant;
use crate::segment::{Flags, Header};
use crate::seq::SeqNum;
use crate::timer::TimerKind;

/// Whether segment processing goes on to the next RFC 9293 3.10.7.4 step.
enum Step {
    Continue,
    Done(Handled),
}

/// One step of RFC 9293 3.10.7.4 segment processing.
type StepFn = fn(&mut Connection, Instant, &Header, &[u8]) -> Step;

impl Connection {
    /// Process one segment for this connection (RFC 9293 3.10.7.4).
    pub fn handle(&mut self, now: Instant, h: &Header, payload: &[u8]) -> Handled {
        self.handle_into(now, h, payload, &mut |_| 0)
    }

    /// [`Connection::handle`], offering the segment's in-order data to `deliver` before the
    /// receive buffer: while nothing older waits unread there, `deliver` takes what its reader
    /// has room for (returning how many bytes, from the front) and only the rest is buffered.
    /// For the connection it is as if the data were buffered and read at once; a driver that
    /// queues received bytes for its application saves a copy of every byte.
    pub fn handle_into(&mut self, now: Instant, h: &Header, payload: &[u8], deliver: &mut dyn FnMut(&[u8]) -> usize) -> Handled {
        self.stats.segments_received += 1;
        let steps: [StepFn; 7] = [
            Self::step_closed,
            Self::step_time_wait,
            Self::step_paws,
            Self::step_sequence,
            Self::step_rst,
            Self::step_syn,
            Self::step_ack,
        ];
        let mut done = steps.into_iter().find_map(|step| match step(self, now, h, payload) {
            Step::Done(d) => Some(d),
            Step::Continue => None,
        });
        if done.is_none()
            && let Step::Done(d) = self.step_text_and_fin(now, h, payload, deliver)
        {
            done = Some(d);
        }
        self.update_persist(now);
        done.unwrap_or(Handled::Processed)
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
            if h.seq == self.rcv.nxt {
                self.close_with(CloseReason::Normal);
                return Step::Done(Handled::Processed);
            }
            return Step::Done(Handled::Dropped(DropReason::RstNotExact));
        }
        if h.flags.syn() && !h.flags.ack() {
            // RFC 6191 / RFC 9293 3.10.7.4 note: a new SYN may reopen the tuple.
            if self.opts.syn_is_newer(h, self.rcv.nxt) {
                self.close_with(CloseReason::Normal);
                return Step::Done(Handled::Dropped(DropReason::TimeWaitReuse));
            }
            self.challenge_ack(now);
            return Step::Done(Handled::Dropped(DropReason::Syn));
        }
        if h.flags.fin() && h.seq + p.len() as u32 + 1 == self.rcv.nxt {
            // RFC 9293 3.10.7.4 eighth, TIME-WAIT: a retransmitted FIN (our last ACK was lost)
            // is ACKed again and the 2 MSL timeout restarted.
            self.rcv.ack_now = true;
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

    fn step_paws(&mut self, now: Instant, h: &Header, p: &[u8]) -> Step {
        // RFC 7323 5.3 R1: PAWS; RSTs are exempt.
        if !self.opts.paws_rejects(now, h) {
            return Step::Continue;
        }
        let pure_ack = p.is_empty() && !h.flags.syn() && !h.flags.fin();
        if pure_ack && h.seq.lt(self.rcv.nxt) {
            // Linux's tcp_disordered_ack_check: an old ACK that a later one overtook on the
            // path; common under reordering, dropped without an answer.
            return Step::Done(Handled::Dropped(DropReason::Paws));
        }
        if pure_ack && self.disordered_ack(h) {
            return Step::Continue;
        }
        let nxt = self.rcv.nxt;
        if !p.is_empty() && !h.flags.syn() && h.seq.lt(nxt) {
            // Data is no ACK loop: answered every time, as Linux's tcp_send_dupack after
            // PAWS, with the part already received as a DSACK (RFC 2883 4), so a sender whose
            // original arrived late learns its retransmission was spurious.
            self.ack_duplicate(h.seq, (h.seq + p.len() as u32).min(nxt));
        } else if !p.is_empty() && !h.flags.syn() && h.seq.in_range(nxt, nxt + self.rcv.wnd()) {
            self.rcv.ack_now = true;
        } else {
            // Beyond the window: rate-limited, as step_sequence answers such data.
            self.challenge_ack(now);
        }
        Step::Done(Handled::Dropped(DropReason::Paws))
    }

    /// Linux's tcp_disordered_ack (RFC 7323 leaves it open): a duplicate ACK with a TSval a
    /// little behind TS.Recent is one that was overtaken on the path, and its SACK blocks are
    /// news, so it is let through PAWS when it is at RCV.NXT, acknowledges nothing new, does not
    /// move the window, and its TSval is within 1.2 RTOs of TS.Recent (Linux's
    /// tcp_tsval_replay, in our millisecond ticks).
    fn disordered_ack(&self, h: &Header) -> bool {
        let window = (h.window as u32) << self.opts.snd_wscale;
        let snd = &self.snd;
        let updates_window = h.ack.gt(snd.una) || h.seq.gt(snd.wl1) || (h.seq == snd.wl1 && (window > snd.wnd || window == 0));
        let replay = self.rto().as_millis() as u64 * 12 / 10;
        h.seq == self.rcv.nxt && h.ack == snd.una && !updates_window && u64::from(self.opts.ts_behind(h)) <= replay
    }

    /// Data that arrived twice, `[left, right)` of it below RCV.NXT: ACKed at once and not
    /// rate-limited (a data segment is no ACK loop), as Linux's tcp_send_dupack, with the
    /// duplicate as a DSACK block (RFC 2883 4): the sender undoes a spurious retransmission by
    /// it.
    fn ack_duplicate(&mut self, left: SeqNum, right: SeqNum) {
        if self.opts.sack_enabled {
            self.rcv.dsack = Some((left, right));
        }
        self.rcv.ack_now = true;
        // Linux's tcp_send_dupack: our ACK was lost or late, so ACK at once for a while (the
        // sender's window is small after its retransmission).
        self.rcv.enter_quickack(super::recv::MAX_QUICKACKS);
    }

    fn step_sequence(&mut self, now: Instant, h: &Header, p: &[u8]) -> Step {
        let seg_len = h.seg_len(p.len());
        let wnd = self.rcv.wnd();
        let nxt = self.rcv.nxt;
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
            if h.flags.rst() && h.seq == nxt - 1 && matches!(self.state, State::CloseWait | State::LastAck | State::Closing) {
                // Linux's tcp_reset_check: once the peer's FIN is in, a RST at that FIN's own
                // sequence number resets, where RFC 5961 3.2 alone would drop it. A peer that
                // closes and then resets sends exactly that: macOS on ^C, and Linux when our data
                // reaches its socket after its close (its RST takes our segment's ACK, sent
                // before our ACK of the FIN reached it). Dropped, the connection went on
                // sending into a closed socket until a RST answering a later segment came back.
                self.close_with(CloseReason::Reset);
                return Step::Done(Handled::Processed);
            }
            if !h.flags.rst() && !p.is_empty() && (h.seq + seg_len).le(nxt) {
                // Data that arrived twice, all of it below RCV.NXT.
                self.ack_duplicate(h.seq, h.seq + p.len() as u32);
            } else if !h.flags.rst() {
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
        if h.seq != self.rcv.nxt {
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
        if h.ack.gt(self.snd.nxt) || h.ack.lt(self.snd.una - self.snd.max_wnd.max(1)) {
            self.challenge_ack(now);
            return Step::Done(Handled::Dropped(DropReason::BadAck));
        }
        if !p.is_empty()
            && h.seq == self.rcv.nxt
            && now.saturating_duration_since(self.probes.last_activity) > self.recovery.rto(&self.config)
        {
            // Linux's tcp_event_data_recv: in-sequence data after a silence longer than the RTO
            // (the sender's window restarts, e.g. from its retransmission timeout): quick ACKs,
            // so its slow start is clocked by an ACK per segment rather than a delayed ACK.
            self.rcv.incr_quickack(super::recv::MAX_QUICKACKS);
        }
        // A valid segment: the peer is alive (RFC 1122 4.2.3.6).
        self.probes.heard(now);
        self.arm_keepalive();
        self.opts.update_ts_recent(now, h, self.rcv.last_ack_sent);

        let window = (h.window as u32) << self.opts.snd_wscale;
        let prior_una = self.snd.una;
        // RFC 5681 2: a duplicate ACK.
        let dupack = h.ack == self.snd.una
            && self.snd.una != self.snd.nxt
            && p.is_empty()
            && !h.flags.fin()
            && window == self.snd.wnd;
        let mut ts_rtt = None;
        if h.ack.gt(self.snd.una) {
            self.on_new_ack(h);
            // RFC 7323 4.2: RTTM from the echoed timestamp.
            if let (true, Some((_, tsecr))) = (self.opts.ts_enabled, h.options.timestamps)
                && tsecr != 0
            {
                let ms = self.opts.ts_now(now).wrapping_sub(tsecr);
                ts_rtt = ((ms as i32) >= 0).then(|| Duration::from_millis(ms as u64));
            }
        }
        if prior_una != self.snd.nxt {
            let ack = AckIn {
                prior_una,
                mss: self.mss(),
                sack_ok: self.opts.sack_enabled,
                dupack,
                sack: if self.opts.sack_enabled { h.options.sack.as_slice() } else { &[] },
                ts_rtt,
                tsecr: h.options.timestamps.filter(|_| self.opts.ts_enabled).map(|(_, ecr)| ecr),
                ece: self.opts.ecn && h.flags.contains(Flags::ECE),
            };
            let reorder = self.recovery.on_ack(now, &ack, &self.snd, &self.config, &mut self.stats);
            self.tune_send_buffer();
            // RFC 6298 5.2 / 5.3: stop the timer when all is acknowledged, else restart it.
            if self.snd.una == self.snd.nxt {
                self.timers.stop(TimerKind::Retransmit);
                self.recovery.armed = Armed::Rto;
            } else if let Some(wait) = reorder {
                self.arm_reorder(now, wait);
            } else if self.snd.una != prior_una || self.recovery.armed != Armed::Rto {
                self.arm_retransmit(now);
            }
        }
        // RFC 9293 3.10.7.4 fifth: window update if SND.WL1 < SEG.SEQ or (SND.WL1 = SEG.SEQ and
        // SND.WL2 =< SEG.ACK).
        let snd = &mut self.snd;
        if snd.wl1.lt(h.seq) || (snd.wl1 == h.seq && snd.wl2.le(h.ack)) {
            snd.wnd = window;
            snd.max_wnd = snd.max_wnd.max(window);
            snd.wl1 = h.seq;
            snd.wl2 = h.ack;
        }

        let fin_acked = self.snd.fin_acked();
        match self.state {
            // RFC 9293 3.10.7.4 fifth, FIN-WAIT-1: our FIN acknowledged, enter FIN-WAIT-2.
            State::FinWait1 if fin_acked => {
                self.state = State::FinWait2;
                if self.signals.orphan {
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

    /// SEG.ACK acknowledges new data: SND.UNA moves, the acknowledged bytes leave the send
    /// buffer.
    fn on_new_ack(&mut self, h: &Header) {
        let acked = h.ack.since(self.snd.una);
        let data_acked = (acked as usize).min(self.snd.buf.len());
        self.snd.buf.ack(data_acked);
        self.stats.bytes_acked += data_acked as u64;
        self.snd.una = h.ack;
        self.recovery.consecutive_rtos = 0;
        // RFC 6298 5.7 / Karn: new data acknowledged ends the backoff.
        self.recovery.rtt.reset_backoff();
        if self.signals.want_writable && self.snd.buf.free() > 0 && self.state.app_can_send() {
            self.signals.want_writable = false;
            self.signals.events |= EV_WRITABLE;
        }
    }

    fn step_text_and_fin(&mut self, now: Instant, h: &Header, p: &[u8], deliver: &mut dyn FnMut(&[u8]) -> usize) -> Step {
        if self.opts.ecn {
            // RFC 3168 6.1.3: CWR ends the echo; a CE mark starts it (on this very segment too)
            // and is answered at once (as Linux's quick ACK on CE).
            if h.flags.contains(Flags::CWR) {
                self.rcv.ece = false;
            }
            if h.ce {
                self.stats.ce_received += 1;
                self.rcv.ece = true;
                self.rcv.ack_now = true;
            }
        }
        let fin_seq = h.seq + p.len() as u32;
        if self.state.receives_data() {
            if self.signals.orphan && !p.is_empty() && fin_seq.gt(self.rcv.nxt) {
                // RFC 1122 4.2.2.13 (RFC 2525 2.17, as Linux's TCPAbortOnData): new data after
                // the application closed can never be read; reset so the peer learns it was lost.
                self.reset_and_close(CloseReason::Aborted);
                return Step::Done(Handled::Processed);
            }
            // RFC 9293 3.10.7.4 seventh: deliver in-window data; trim what lies before RCV.NXT.
            if let (true, Some((_, tsecr)), false) = (self.opts.ts_enabled, h.options.timestamps, p.is_empty())
                && tsecr != 0
                && p.len() >= self.rcv.mss as usize
            {
                // The receiver's RTT (Linux's tcp_rcv_rtt_measure_ts), for right-sizing.
                let ms = self.opts.ts_now(now).wrapping_sub(tsecr);
                if (ms as i32) > 0 {
                    self.rcv.on_rtt_sample(Duration::from_millis(ms as u64));
                }
            }
            self.receive_data(now, h.seq, p, deliver);
            if !p.is_empty() {
                self.tune_recv_buffer(now);
            }
            if h.flags.fin() && fin_seq.ge(self.rcv.nxt) && fin_seq.since(self.rcv.nxt) <= self.rcv.wnd() {
                self.rcv.peer_fin = Some(fin_seq);
            }
            if self.rcv.peer_fin == Some(self.rcv.nxt) {
                self.rcv.peer_fin = None;
                self.on_fin(now);
            }
        } else if h.seg_len(p.len()) > 0 && h.seq.lt(self.rcv.nxt) {
            // RFC 9293 3.10.7.4 seventh: CLOSE-WAIT, CLOSING, LAST-ACK: the FIN was received, so
            // this is a retransmission; ACK it.
            self.rcv.ack_now = true;
        }
        Step::Continue
    }

    fn receive_data(&mut self, now: Instant, seq: SeqNum, p: &[u8], deliver: &mut dyn FnMut(&[u8]) -> usize) {
        if p.is_empty() {
            return;
        }
        let sack = self.opts.sack_enabled;
        let rcv = &mut self.rcv;
        let (mut seq, mut data) = (seq, p);
        if seq.lt(rcv.nxt) {
            let skip = rcv.nxt.since(seq) as usize;
            // RFC 2883 4: report what arrived twice (the part below RCV.NXT) as a DSACK block,
            // at once: the sender may be waiting for it to undo a spurious retransmission.
            if sack {
                rcv.dsack = Some((seq, seq + skip.min(data.len()) as u32));
                rcv.ack_now = true;
            }
            if skip >= data.len() {
                // RFC 5681 4.2: a duplicate segment is ACKed at once, and as Linux's
                // tcp_data_queue (old data) the next ones too.
                rcv.ack_now = true;
                rcv.enter_quickack(super::recv::MAX_QUICKACKS);
                return;
            }
            data = &data[skip..];
            seq = rcv.nxt;
        }
        let offset = seq.since(rcv.nxt);
        let room = rcv.wnd().saturating_sub(offset) as usize;
        data = &data[..data.len().min(room)];
        if data.is_empty() {
            // Beyond a closed window (e.g. a zero-window probe with data): re-advertise at once.
            rcv.ack_now = true;
            return;
        }
        rcv.mss = rcv.mss.max(p.len().min(u16::MAX as usize) as u16);
        if sack && offset > 0 {
            // RFC 2883 4: out-of-order data held already arrived twice; the part of it the
            // held ranges cover goes as a DSACK block.
            let end = offset + data.len() as u32;
            if let Some(&(s, e)) = rcv.buf.out_of_order().iter().find(|&&(s, e)| s < end && offset < e) {
                rcv.dsack = Some((rcv.nxt + offset.max(s), rcv.nxt + end.min(e)));
                rcv.ack_now = true;
            }
        }
        let had_holes = rcv.buf.has_out_of_order();
        // In order with nothing unread before it: the reader takes what it has room for (see
        // `handle_into`), the rest is buffered behind it.
        let taken = if offset == 0 && !had_holes && rcv.buf.readable() == 0 { deliver(data).min(data.len()) } else { 0 };
        let stored = if taken == data.len() { Some(0) } else { rcv.buf.write(offset, &data[taken..]) };
        match stored.map(|advance| advance + taken as u32) {
            Some(0) => {
                // RFC 5681 4.2 / RFC 9293 3.10.7.4: out-of-order data gets an immediate ACK.
                rcv.last_ooo = Some(seq);
                rcv.ack_now = true;
            }
            Some(advance) => {
                rcv.nxt += advance;
                self.stats.bytes_received += advance as u64;
                self.signals.events |= EV_READABLE;
                rcv.unacked_bytes += advance;
                if had_holes || rcv.unacked_bytes >= 2 * rcv.mss as u32 || rcv.in_quickack() {
                    // RFC 5681 4.2: ACK at least every second full segment, and at once when
                    // filling a hole; every segment in quick-ACK mode (as Linux's
                    // __tcp_ack_snd_check: RFC 5681 4.2 lets a receiver ACK more often).
                    rcv.ack_now = true;
                } else if !self.timers.is_set(TimerKind::DelayedAck) {
                    // RFC 9293 3.8.6.3: delay the ACK.
                    self.timers.set(TimerKind::DelayedAck, now + self.config.delayed_ack);
                }
            }
            None => rcv.ack_now = true,
        }
        if !rcv.buf.has_out_of_order() {
            rcv.last_ooo = None;
        }
    }

    /// RFC 9293 3.10.7.4 eighth: the peer's FIN, in sequence.
    fn on_fin(&mut self, now: Instant) {
        self.rcv.nxt += 1;
        self.signals.events |= EV_PEER_FIN;
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
                if self.snd.fin_acked() {
                    self.enter_time_wait(now);
                } else {
                    self.state = State::Closing;
                }
            }
            // RFC 9293 3.10.7.4 eighth, FIN-WAIT-2: enter TIME-WAIT.
            State::FinWait2 => self.enter_time_wait(now),
            _ => {}
        }
        self.rcv.ack_now = true;
    }

    fn enter_time_wait(&mut self, now: Instant) {
        self.state = State::TimeWait;
        self.timers.stop_all();
        // RFC 9293 3.10.8: TIME-WAIT lasts 2 MSL.
        self.timers.set(TimerKind::TimeWait, now + 2 * self.config.msl);
        self.snd.buf.clear();
    }
}
