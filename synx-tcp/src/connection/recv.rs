//! The receive half of the TCB: the receive sequence space (RFC 9293 3.3.1), the bytes not yet
//! read, and the ACK we owe for them.

use crate::recv_buf::RecvBuffer;
use crate::segment::{Header, SackBlocks};
use crate::seq::SeqNum;

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
}

/// An idle receive half: everything received was read and acknowledged.
#[derive(Clone, Copy, Debug)]
pub(super) struct Folded {
    /// RCV.NXT, which is also the last ACK sent.
    nxt: SeqNum,
    adv: SeqNum,
    /// The receive buffer's capacity (its window, since it is empty).
    cap: u32,
    mss: u16,
}

impl RecvHalf {
    /// After the handshake: RCV.NXT = IRS + 1, and the window XDP's SYN-ACK offered.
    pub fn new(irs: SeqNum, offered: u32, buffer: u32) -> Self {
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
        }
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

    /// An ACK left with `h` (whose window is already scaled down by `wscale`).
    pub fn on_ack_sent(&mut self, h: &Header, wscale: u8) {
        self.ack_now = false;
        self.unacked_bytes = 0;
        self.last_ack_sent = h.ack;
        self.adv = h.ack + ((h.window as u32) << wscale);
    }

    /// RFC 2018 4: the block holding the most recent segment first, then the others.
    pub fn sack_blocks(&self) -> SackBlocks {
        let ranges = self.buf.out_of_order();
        let abs = |&(s, e): &(u32, u32)| (self.nxt + s, self.nxt + e);
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

    /// Everything received was read and acknowledged, and no ACK is owed.
    pub fn is_at_rest(&self) -> bool {
        self.buf.readable() == 0
            && !self.buf.has_out_of_order()
            && self.peer_fin.is_none()
            && self.last_ooo.is_none()
            && self.unacked_bytes == 0
            && !self.ack_now
            && self.last_ack_sent == self.nxt
    }

    pub fn fold(&self) -> Folded {
        Folded { nxt: self.nxt, adv: self.adv, cap: self.buf.window(), mss: self.mss }
    }

    pub fn unfold(f: &Folded) -> Self {
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
        }
    }
}

impl Folded {
    pub fn wnd(&self) -> u32 {
        self.cap
    }
}
