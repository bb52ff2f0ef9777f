//! Quick-ACK mode as Linux's (tcp_incr_quickack, tcp_enter_quickack_mode, tcp_in_quickack_mode
//! and the pingpong mode that turns it off): when a sender's window restarts small (after a
//! silence longer than the RTO, or after a retransmission of what we had), every data segment
//! is ACKed at once for a while, not every second one with a delayed ACK for a lone segment.
//! RFC 5681 4.2 asks an ACK for at least every second full segment; ACKing more often is
//! allowed, and RFC 5681 4.2 / RFC 9293 3.8.6.3 leave the delay policy to the receiver.

use super::*;

const MSS: u32 = 1460;

fn seg() -> Vec<u8> {
    vec![7u8; MSS as usize]
}

/// The peer's `n`-th full segment (from 0), at `t`: what comes out at once.
fn data(c: &mut Connection, t: Instant, n: u32) -> Vec<(Header, Vec<u8>)> {
    c.handle(t, &peer(n * MSS, 0), &seg());
    read_all(c);
    out(c, t)
}

#[test]
fn after_a_silence_longer_than_the_rto_each_segment_is_acked_at_once() {
    let mut c = established();
    // Two segments: one ACK (every second full segment), none owed after.
    assert!(data(&mut c, ms(1), 0).is_empty());
    assert_ack(&data(&mut c, ms(2), 1)[0], 0, 2 * MSS);
    // The sender goes quiet for longer than our RTO (1 s, no RTT sample): its window
    // restarts at one segment. That one is ACKed at once, not after the 40 ms delayed ACK
    // (which would add a delayed-ACK time to each of its first round trips).
    let t = ms(2) + Duration::from_secs(3);
    assert_ack(&one_of(data(&mut c, t, 2)), 0, 3 * MSS);
    // And the next lone segments of its slow start too.
    for n in 3..8 {
        let t = t + Duration::from_millis(10 * n as u64);
        assert_ack(&one_of(data(&mut c, t, n)), 0, (n + 1) * MSS);
    }
}

#[test]
fn without_a_silence_a_lone_segment_waits_for_the_delayed_ack() {
    let mut c = established();
    assert!(data(&mut c, ms(1), 0).is_empty());
    assert_ack(&data(&mut c, ms(2), 1)[0], 0, 2 * MSS);
    // 100 ms later (less than the RTO): the lone segment waits (RFC 9293 3.8.6.3).
    assert!(data(&mut c, ms(102), 2).is_empty());
    assert_eq!(c.poll_timeout(), Some(ms(142)));
}

#[test]
fn quick_acks_run_out_and_every_second_segment_is_acked_again() {
    let mut c = established();
    assert!(data(&mut c, ms(1), 0).is_empty());
    assert_ack(&data(&mut c, ms(2), 1)[0], 0, 2 * MSS);
    let mut t = ms(2) + Duration::from_secs(3);
    // 64 KiB window / (2 x 1460) = 22 quick ACKs wanted, at most 16 granted.
    let mut n = 2;
    for _ in 0..16 {
        assert_eq!(data(&mut c, t, n).len(), 1, "segment {n}: a quick ACK");
        n += 1;
        t = t + Duration::from_millis(1);
    }
    // The 17th lone segment waits again; the 18th gets the ACK for both.
    assert!(data(&mut c, t, n).is_empty(), "quick ACKs used up");
    assert_ack(&one_of(data(&mut c, t, n + 1)), 0, (n + 2) * MSS);
}

#[test]
fn a_duplicate_segment_turns_quick_acks_on() {
    let mut c = established();
    assert!(data(&mut c, ms(1), 0).is_empty());
    assert_ack(&data(&mut c, ms(2), 1)[0], 0, 2 * MSS);
    // Segment 1 again: our ACK was lost and the sender retransmitted (Linux's
    // tcp_send_dupack). Its duplicate is ACKed at once (RFC 5681 4.2)...
    assert_ack(&one_of(data(&mut c, ms(50), 1)), 0, 2 * MSS);
    // ...and so is the next lone segment: the sender's window is small again.
    assert_ack(&one_of(data(&mut c, ms(60), 2)), 0, 3 * MSS);
}

#[test]
fn an_interactive_connection_keeps_delaying_its_acks_for_the_reply() {
    let mut c = established();
    // A request, and our reply within the delayed-ACK time: interactive (Linux's pingpong).
    c.handle(ms(1), &peer(0, 0), b"GET / HTTP/1.1\r\n\r\n");
    read_all(&mut c);
    c.send(b"HTTP/1.1 200 OK\r\n\r\n");
    let (h, p) = one(&mut c, ms(2));
    assert_eq!((h.ack, p.len()), (SeqNum(IRS + 1 + 18), 19), "the reply carries the ACK");
    c.handle(ms(42), &peer(18, 19), &[]);
    // The next request after a long idle: no quick ACK; the ACK waits to ride on the reply.
    let t = secs(10);
    c.handle(t, &peer(18, 19), b"GET / HTTP/1.1\r\n\r\n");
    read_all(&mut c);
    none(&mut c, t);
    c.send(b"HTTP/1.1 200 OK\r\n\r\n");
    let (h, p) = one(&mut c, t + Duration::from_millis(1));
    assert_eq!((h.ack, p.len()), (SeqNum(IRS + 1 + 36), 19));
}

#[track_caller]
fn one_of(mut v: Vec<(Header, Vec<u8>)>) -> (Header, Vec<u8>) {
    assert_eq!(v.len(), 1, "expected one segment, got {v:?}");
    v.pop().unwrap()
}
