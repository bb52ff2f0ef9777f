//! ECN (RFC 3168) with a client that asked for it: data goes out ECT(0) (retransmissions,
//! probes and ACKs do not, 6.1.5, 6.1.6), a CE mark is echoed with ECE until the peer's CWR
//! (6.1.3), and an echo reduces the window once per round trip, the next new data carrying
//! CWR (6.1.2).

use engine_common::handshake::{FACT_ECN, FACT_SACK, FACT_TS, HandshakeFacts};

use super::*;

const MSS: u32 = 1460;

fn ecn_sender(ecn_config: bool, client_asked: bool) -> Connection {
    let flags = FACT_SACK | if client_asked { FACT_ECN } else { 0 };
    let f = HandshakeFacts { flags, ..facts() };
    accept_with(Config { nagle: false, pacing: false, ecn: ecn_config, ..config() }, f, &peer(0, 0), &[])
}

/// Everything sent at `now`, with whether each segment went out ECT(0).
fn out_ect(c: &mut Connection, now: Instant) -> Vec<(Header, usize, bool)> {
    let mut v = Vec::new();
    let mut buf = [0u8; 2048];
    while let Some(n) = c.poll_transmit(now, &mut buf) {
        let (h, p) = segment::parse(&buf[..n]).unwrap();
        v.push((h, p.len(), c.ect()));
    }
    v
}

#[test]
fn ce_marks_are_echoed_until_cwr() {
    let mut c = ecn_sender(true, true);
    let mut ce = peer(0, 0);
    ce.ce = true;
    c.handle(ms(1), &ce, b"abc");
    // RFC 3168 6.1.3: ECE at once, and on every segment after, data too.
    let segs = out_ect(&mut c, ms(1));
    assert_eq!(segs.len(), 1);
    assert!(segs[0].0.flags.contains(Flags::ECE));
    assert_eq!(c.stats().ce_received, 1);
    c.handle(ms(2), &peer(3, 0), b"def");
    c.send(b"reply");
    let segs = out_ect(&mut c, ms(2));
    assert!(segs.iter().all(|(h, _, _)| h.flags.contains(Flags::ECE)), "{segs:?}");
    // The peer's CWR ends the echo.
    c.handle(ms(3), &with(peer(6, 5), Flags::CWR), b"ghi");
    c.handle_timeout(ms(50));
    let segs = out_ect(&mut c, ms(50));
    assert!(!segs.is_empty() && segs.iter().all(|(h, _, _)| !h.flags.contains(Flags::ECE)), "{segs:?}");
}

#[test]
fn an_echo_reduces_the_window_once_and_the_next_data_carries_cwr() {
    let mut c = ecn_sender(true, true);
    c.send(&vec![1u8; 20 * MSS as usize]);
    let segs = out_ect(&mut c, ms(0));
    assert_eq!(segs.len(), 10);
    // RFC 3168 6.1.2: new data goes out ECT(0).
    assert!(segs.iter().all(|&(_, len, ect)| len > 0 && ect));
    let cwnd = c.info().cwnd;
    // ECE on the ACK of two segments: cwnd reduced as for a loss (CUBIC: 0.7), and the next
    // new data segment carries CWR.
    c.handle(ms(10), &with(peer(0, 2 * MSS), Flags::ECE), &[]);
    assert_eq!(c.stats().ecn_reductions, 1);
    assert_eq!(c.info().ssthresh, cwnd * 7 / 10);
    let segs = out_ect(&mut c, ms(10));
    assert!(!segs.is_empty());
    assert!(segs[0].0.flags.contains(Flags::CWR) && segs[0].2, "{segs:?}");
    assert!(segs[1..].iter().all(|(h, _, _)| !h.flags.contains(Flags::CWR)));
    // More echoes in the same round trip: no further reduction (once per window).
    c.handle(ms(11), &with(peer(0, 4 * MSS), Flags::ECE), &[]);
    assert_eq!(c.stats().ecn_reductions, 1);
    assert_eq!(c.stats().retransmits, 0, "no loss, no retransmission");
}

#[test]
fn retransmissions_and_probes_are_not_ect() {
    let mut c = ecn_sender(true, true);
    c.send(&vec![1u8; 4 * MSS as usize]);
    assert_eq!(out_ect(&mut c, ms(0)).len(), 4);
    // The RTO resends the first segment: not ECT (RFC 3168 6.1.5).
    c.handle_timeout(secs(1));
    let segs = out_ect(&mut c, secs(1));
    assert_eq!(segs.len(), 1);
    assert!(segs[0].1 > 0 && !segs[0].2);
    // A keepalive probe or an ACK: never ECT.
    let mut c = ecn_sender(true, true);
    c.handle(ms(1), &peer(0, 0), b"x");
    c.handle_timeout(ms(50));
    let segs = out_ect(&mut c, ms(50));
    assert_eq!(segs.len(), 1);
    assert!(!segs[0].2);
}

#[test]
fn without_agreement_there_is_no_ecn() {
    // The client did not ask, or the configuration does not agree: no ECT, no echo, and an
    // ECE flag is no congestion signal.
    for (config, asked) in [(true, false), (false, true)] {
        let mut c = ecn_sender(config, asked);
        let mut ce = peer(0, 0);
        ce.ce = true;
        c.handle(ms(1), &ce, b"abc");
        c.send(&vec![1u8; 4 * MSS as usize]);
        let segs = out_ect(&mut c, ms(1));
        assert!(segs.iter().all(|(h, _, ect)| !ect && !h.flags.contains(Flags::ECE)));
        let cwnd = c.info().cwnd;
        c.handle(ms(10), &with(peer(3, MSS), Flags::ECE), &[]);
        assert!(c.info().cwnd >= cwnd);
        assert_eq!((c.stats().ce_received, c.stats().ecn_reductions), (0, 0));
    }
}

#[test]
fn with_timestamps_too() {
    // The cookie carries ECN in the timestamps: the usual case.
    let f = HandshakeFacts { flags: FACT_SACK | FACT_TS | FACT_ECN, ts_recent: 1, ..facts() };
    let mut ack = peer(0, 0);
    ack.options.timestamps = Some((1, 0));
    let mut c = accept_with(Config { ecn: true, ..config() }, f, &ack, &[]);
    c.send(b"hello");
    let segs = out_ect(&mut c, ms(0));
    assert!(segs[0].2);
}
