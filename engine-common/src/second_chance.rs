//! What hosts serving one address behind ECMP send each other, in UDP to one port.
//!
//! **Second chance** (as GitHub's GLB director and Beamer do it): a segment that reaches a host
//! which holds no connection for it and which is not a valid cookie ACK (the router rehashed
//! the flow after a host was added or removed) is not reset at once. The XDP program wraps the
//! frame in IPv4 + UDP + [`HEADER_LEN`] bytes and sends it to the next host of a ring of all
//! hosts (addresses sorted); a host that holds the connection takes it, one that does not passes
//! it on, and the last one (`hops_left` 1) answers as a lone host does (RFC 9293 3.10.7.1
//! reset, or silence). Each host is visited at most once. The frame goes back out of the
//! interface it came in on, to the MAC it came from (the router), which routes it to the next
//! host; the receiver unwraps it in XDP and rebuilds its Ethernet header from the outer one, so
//! its replies go to the client through its own link.
//!
//! **Time** (userspace, heartbeats): each host asks each other host for its clock once a second
//! (NTP's four timestamps, RFC 5905 8) and learns how far their clocks disagree, whether their
//! cookie keys agree and whether they drain. The XDP program passes these to the kernel.
//!
//! Header, after the UDP header:
//! ```text
//! 0      2         3      4           5    6                8
//! | "SX" | version | kind | hops_left | 0  | inner ethertype |
//! ```
//! `hops_left` and the ethertype are meaningful in [`KIND_SEGMENT`] only; the wrapped frame
//! starts at its IP header.

/// The header's first two bytes.
pub const MAGIC: [u8; 2] = *b"SX";
pub const VERSION: u8 = 1;
/// A forwarded TCP segment (XDP to XDP).
pub const KIND_SEGMENT: u8 = 1;
/// A heartbeat asking for the receiver's clock (userspace to userspace).
pub const KIND_TIME_ASK: u8 = 2;
/// The answer to [`KIND_TIME_ASK`].
pub const KIND_TIME_ANSWER: u8 = 3;
/// Bytes of the header.
pub const HEADER_LEN: usize = 8;
/// What wrapping adds to a frame: an IPv4 header, a UDP header and ours (the frame's own
/// Ethernet header is replaced by the outer one). The links between hosts must carry frames
/// this much larger than the largest a client sends.
pub const GROWTH: usize = 20 + 8 + HEADER_LEN;

/// The UDP port hosts use unless told otherwise.
pub const DEFAULT_PORT: u16 = 19523;

/// A heartbeat: [`HEADER_LEN`] bytes of header, then this, big-endian.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Heartbeat {
    /// [`KIND_TIME_ASK`] or [`KIND_TIME_ANSWER`].
    pub kind: u8,
    /// The asker's shared clock (ns) when it sent the question (echoed in the answer).
    pub t1: u64,
    /// The answerer's clock when the question arrived, and when it answered (0 in questions).
    pub t2: u64,
    pub t3: u64,
    /// A fingerprint of the sender's cookie key (0 without one): hosts whose keys differ
    /// cannot check each other's cookies.
    pub key_fingerprint: u64,
    /// `HEARTBEAT_*` bits of the sender.
    pub flags: u32,
}

/// The sender drains (`synx drain`).
pub const HEARTBEAT_DRAINING: u32 = 1 << 0;

/// Bytes of a heartbeat datagram.
pub const HEARTBEAT_LEN: usize = HEADER_LEN + 8 * 4 + 4;

impl Heartbeat {
    pub fn encode(&self) -> [u8; HEARTBEAT_LEN] {
        let mut b = [0u8; HEARTBEAT_LEN];
        b[..2].copy_from_slice(&MAGIC);
        b[2] = VERSION;
        b[3] = self.kind;
        for (i, v) in [self.t1, self.t2, self.t3, self.key_fingerprint].into_iter().enumerate() {
            b[HEADER_LEN + 8 * i..HEADER_LEN + 8 * (i + 1)].copy_from_slice(&v.to_be_bytes());
        }
        b[HEADER_LEN + 32..].copy_from_slice(&self.flags.to_be_bytes());
        b
    }

    /// The heartbeat in a datagram, if it is one of ours.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != HEARTBEAT_LEN || b[..2] != MAGIC || b[2] != VERSION {
            return None;
        }
        let kind = b[3];
        if kind != KIND_TIME_ASK && kind != KIND_TIME_ANSWER {
            return None;
        }
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[HEADER_LEN + 8 * i..HEADER_LEN + 8 * (i + 1)]);
            u64::from_be_bytes(w)
        };
        let mut f = [0u8; 4];
        f.copy_from_slice(&b[HEADER_LEN + 32..]);
        Some(Self { kind, t1: word(0), t2: word(1), t3: word(2), key_fingerprint: word(3), flags: u32::from_be_bytes(f) })
    }

    /// From an answer received at `t4`: how far the answerer's clock is ahead of ours (ns,
    /// negative if behind) and the round trip's network time, RFC 5905 8: offset
    /// ((t2 - t1) + (t3 - t4)) / 2, delay (t4 - t1) - (t3 - t2). The offset is off by at most
    /// half the delay.
    pub fn offset_and_delay(&self, t4: u64) -> (i64, u64) {
        let d = |a: u64, b: u64| a.wrapping_sub(b) as i64;
        let offset = (d(self.t2, self.t1) + d(self.t3, t4)) / 2;
        let delay = d(t4, self.t1) - d(self.t3, self.t2);
        (offset, delay.max(0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_roundtrip_and_strangers_are_refused() {
        let h = Heartbeat { kind: KIND_TIME_ANSWER, t1: 1, t2: u64::MAX, t3: 3, key_fingerprint: 0xfeed, flags: HEARTBEAT_DRAINING };
        let b = h.encode();
        assert_eq!(&b[..4], b"SX\x01\x03");
        assert_eq!(Heartbeat::decode(&b), Some(h));
        let mut other = b;
        other[3] = KIND_SEGMENT;
        assert_eq!(Heartbeat::decode(&other), None, "a segment is the XDP program's");
        assert_eq!(Heartbeat::decode(&b[..HEARTBEAT_LEN - 1]), None);
        let mut v = b;
        v[2] = 2;
        assert_eq!(Heartbeat::decode(&v), None);
    }

    #[test]
    fn offset_and_delay_follow_rfc_5905() {
        // The answerer's clock 5 s ahead; 2 ms each way; it takes 1 ms to answer.
        let t1 = 1_000_000_000_000;
        let ahead = 5_000_000_000;
        let t2 = t1 + 2_000_000 + ahead;
        let t3 = t2 + 1_000_000;
        let t4 = t3 - ahead + 2_000_000;
        let h = Heartbeat { kind: KIND_TIME_ANSWER, t1, t2, t3, ..Heartbeat::default() };
        assert_eq!(h.offset_and_delay(t4), (ahead as i64, 4_000_000));
        // Behind: negative.
        let h = Heartbeat { t2: t1 + 2_000_000 - ahead, t3: t1 + 3_000_000 - ahead, ..h };
        assert_eq!(h.offset_and_delay(t1 + 5_000_000), (-(ahead as i64), 4_000_000));
    }
}
