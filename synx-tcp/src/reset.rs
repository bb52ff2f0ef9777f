//! Answers for segments that match no connection.

use crate::segment::{Flags, Header};

/// The reset RFC 9293 3.10.7.1 sends for a segment that matches no connection (state CLOSED).
/// `header` is the incoming segment's; the result has the ports swapped. No reset answers a reset.
pub fn reset_for(header: &Header, payload_len: usize) -> Option<Header> {
    if header.flags.rst() {
        return None;
    }
    let mut h = Header { src_port: header.dst_port, dst_port: header.src_port, ..Default::default() };
    if header.flags.ack() {
        // RFC 9293 3.10.7.1: <SEQ=SEG.ACK><CTL=RST>.
        h.seq = header.ack;
        h.flags = Flags::RST;
    } else {
        // RFC 9293 3.10.7.1: <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>.
        h.ack = header.seq + header.seg_len(payload_len);
        h.flags = Flags::RST | Flags::ACK;
    }
    Some(h)
}
