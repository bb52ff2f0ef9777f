//! The send half of the TCB: the send sequence space (RFC 9293 3.3.1), our FIN, and the bytes
//! from SND.UNA on.

use crate::send_buf::SendBuffer;
use crate::seq::SeqNum;

/// Send sequence variables (RFC 9293 3.3.1) and the send buffer. Retransmissions go by the
/// records of loss recovery, so SND.NXT is always the highest sequence sent.
#[derive(Debug)]
pub(super) struct SendHalf {
    pub una: SeqNum,
    pub nxt: SeqNum,
    pub wl1: SeqNum,
    pub wl2: SeqNum,
    pub wnd: u32,
    pub max_wnd: u32,
    /// Sequence number of our FIN once sent.
    pub fin_seq: Option<SeqNum>,
    pub fin_queued: bool,
    pub buf: SendBuffer,
}

/// An idle send half: nothing in flight or queued (SND.UNA = SND.NXT).
#[derive(Clone, Copy, Debug)]
pub(super) struct Folded {
    nxt: SeqNum,
    wl1: SeqNum,
    wl2: SeqNum,
    wnd: u32,
    max_wnd: u32,
    /// Our FIN's sequence number when it was sent (TIME_WAIT), else SND.NXT.
    fin_seq: SeqNum,
    /// The send buffer's capacity (it grows with the window).
    cap: u32,
}

impl SendHalf {
    /// After the handshake: SND.UNA = SND.NXT = ISS + 1, and the window is taken from `ack`.
    pub fn new(iss: SeqNum, ack_seq: SeqNum, ack_ack: SeqNum, buffer: u32) -> Self {
        Self {
            una: iss + 1,
            nxt: iss + 1,
            // RFC 9293 3.10.7.4 fifth (SYN-RECEIVED -> ESTABLISHED) sets SND.WL1 <- SEG.SEQ from the
            // ACK; one less here makes the ACK's own window update (same step) take its window.
            wl1: ack_seq - 1,
            wl2: ack_ack,
            wnd: 0,
            max_wnd: 0,
            fin_seq: None,
            fin_queued: false,
            buf: SendBuffer::new(buffer.max(1)),
        }
    }

    /// One past the last byte queued.
    pub fn data_end(&self) -> SeqNum {
        self.una + self.buf.len() as u32
    }

    /// One past the last byte the peer's window admits.
    pub fn window_end(&self) -> SeqNum {
        self.una + self.wnd
    }

    /// Sequence space between SND.UNA and SND.NXT.
    pub fn flight(&self) -> u32 {
        self.nxt.since(self.una)
    }

    /// Bytes queued but not yet sent (FIN not counted).
    pub fn unsent(&self) -> usize {
        let sent = self.nxt.since(self.una) as usize;
        self.buf.len().saturating_sub(sent)
    }

    /// Our FIN was sent and acknowledged.
    pub fn fin_acked(&self) -> bool {
        self.fin_seq.is_some_and(|f| self.una.gt(f))
    }

    /// Nothing in flight, nothing queued.
    pub fn is_at_rest(&self) -> bool {
        self.una == self.nxt && self.buf.is_empty()
    }

    pub fn fold(&self) -> Folded {
        Folded {
            nxt: self.nxt,
            wl1: self.wl1,
            wl2: self.wl2,
            wnd: self.wnd,
            max_wnd: self.max_wnd,
            fin_seq: self.fin_seq.unwrap_or(self.nxt),
            cap: self.buf.cap(),
        }
    }

    /// `fin_sent`: a folded connection in TIME_WAIT, whose FIN was queued and sent.
    pub fn unfold(f: &Folded, fin_sent: bool) -> Self {
        Self {
            una: f.nxt,
            nxt: f.nxt,
            wl1: f.wl1,
            wl2: f.wl2,
            wnd: f.wnd,
            max_wnd: f.max_wnd,
            fin_seq: fin_sent.then_some(f.fin_seq),
            fin_queued: fin_sent,
            buf: SendBuffer::new(f.cap),
        }
    }
}

impl Folded {
    pub fn wnd(&self) -> u32 {
        self.wnd
    }
}
