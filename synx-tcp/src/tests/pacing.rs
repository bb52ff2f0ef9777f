//! Pacing, as Linux paces internally without fq (tcp_output.c): data leaves at twice
//! cwnd/SRTT in slow start, in bursts of about a millisecond, and unpaced after it; the pace
//! timer is an ordinary deadline of `poll_timeout`, so the driver needs nothing of its own.

use engine_common::handshake::{FACT_SACK, HandshakeFacts};

use super::*;

const MSS: u32 = 1460;

/// SACK, no Nagle, pacing on; 10 segments acknowledged 10 ms after they left (SRTT 10 ms,
/// cwnd 20 segments), `more` segments queued at 100 ms.
fn paced_sender(more: u32) -> Connection {
    let f = HandshakeFacts { flags: FACT_SACK, ..facts() };
    let mut c = accept_with(Config { nagle: false, ..config() }, f, &peer(0, 0), &[]);
    c.send(&vec![1u8; 10 * MSS as usize]);
    // Before any RTT sample there is no rate: the initial window leaves at once.
    assert_eq!(out(&mut c, ms(90)).len(), 10);
    c.handle(ms(100), &peer(0, 10 * MSS), &[]);
    assert_eq!(c.info().srtt, Some(Duration::from_millis(10)));
    c.send(&vec![2u8; (more * MSS) as usize]);
    c
}

#[test]
fn a_window_leaves_spread_over_the_round_trip() {
    let mut c = paced_sender(20);
    // Slow start: rate = 2 * 20 segments / 10 ms: 4 segments' worth per millisecond, a
    // millisecond's burst at once, the next when the pace timer says.
    let rate = 2.0 * 20.0 * MSS as f64 / 0.010;
    let first = out(&mut c, ms(100));
    assert!((3..=5).contains(&first.len()), "{}", first.len());
    assert_eq!(c.stats().paced, 1);
    let next = c.poll_timeout().unwrap();
    assert!(next > ms(100) && next <= ms(101) + Duration::from_micros(200), "{next:?}");
    // Stepping through the pace timers: the 20 segments take about 20 * 1500 / rate.
    let mut sent = first.len();
    let mut last = ms(100);
    while sent < 20 {
        let t = c.poll_timeout().unwrap();
        assert!(t < ms(200), "stuck");
        c.handle_timeout(t);
        let n = out(&mut c, t).len();
        if n > 0 {
            last = t;
        }
        sent += n;
    }
    let took = (last - ms(100)).as_secs_f64();
    let expected = 16.0 * (MSS + 40) as f64 / rate;
    assert!((took - expected).abs() < 0.0015, "took {took} s, {expected} expected");
    assert!(c.stats().paced >= 4);
}

#[test]
fn acks_are_not_paced_and_pacing_can_be_off() {
    let mut c = paced_sender(20);
    out(&mut c, ms(100));
    assert!(c.poll_timeout().is_some());
    // Data from the peer while the pacer holds ours back: the ACK goes at once (the second
    // full segment).
    c.handle(ms(100), &peer(0, 10 * MSS), &[7u8; 1460]);
    c.handle(ms(100), &peer(1460, 10 * MSS), &[7u8; 1460]);
    let segs = out(&mut c, ms(100));
    assert_eq!(segs.len(), 1);
    assert!(segs[0].1.is_empty(), "an ACK, not data");
    // Without pacing the window leaves at once.
    let f = HandshakeFacts { flags: FACT_SACK, ..facts() };
    let mut c = accept_with(Config { nagle: false, pacing: false, ..config() }, f, &peer(0, 0), &[]);
    c.send(&vec![1u8; 10 * MSS as usize]);
    out(&mut c, ms(90));
    c.handle(ms(100), &peer(0, 10 * MSS), &[]);
    c.send(&vec![2u8; 20 * MSS as usize]);
    assert_eq!(out(&mut c, ms(100)).len(), 20);
    assert_eq!(c.stats().paced, 0);
}

#[test]
fn the_initial_window_leaves_at_once_even_with_an_rtt_from_the_handshake() {
    // As fq's initial_quantum: the handshake's ACK gave an SRTT of 40 ms (RFC 7323 4.1), yet
    // the first 10 segments leave together; what follows them is paced.
    let f = HandshakeFacts { flags: FACT_SACK | engine_common::handshake::FACT_TS, ts_offset: 1000, ..facts() };
    let mut ack = peer(0, 0);
    ack.options.timestamps = Some((1, 1000));
    let config = Arc::new(Config { nagle: false, ..config() });
    let mut c = Connection::accept(ms(40), config, &f, local(), remote(), &ack, &[]).unwrap();
    assert_eq!(c.info().srtt, Some(Duration::from_millis(40)));
    c.send(&vec![1u8; 14 * 1448]);
    assert_eq!(out(&mut c, ms(40)).len(), 10, "the initial window at once");
    assert_eq!(c.stats().paced, 0);
    c.handle(ms(80), &peer(0, 10 * 1448), &[]);
    let first = out(&mut c, ms(80)).len();
    assert!(first < 4, "then paced: {first}");
    assert_eq!(c.stats().paced, 1);
}

#[test]
fn after_slow_start_the_ack_clock_spaces_the_data_not_the_pacer() {
    // A reduction (3 SACKed segments beyond a hole, RFC 6675) ends slow start; once it is
    // over, a window's worth of new data leaves at once.
    let mut c = paced_sender(0);
    c.send(&vec![2u8; (20 * MSS) as usize]);
    let mut sent = out(&mut c, ms(100)).len();
    let mut t = ms(100);
    while sent < 20 {
        t = c.poll_timeout().unwrap();
        c.handle_timeout(t);
        sent += out(&mut c, t).len();
    }
    // Segment 10 lost; 11 to 29 SACKed, then all acknowledged: recovery over, cwnd = ssthresh.
    let t = t + Duration::from_millis(10);
    c.handle(t, &sack_ack(10, &[(11, 30)]), &[]);
    out(&mut c, t);
    c.handle(t, &sack_ack(30, &[]), &[]);
    let i = c.info();
    assert!(i.ssthresh < u32::MAX && i.cwnd >= i.ssthresh, "slow start over: {} / {}", i.cwnd, i.ssthresh);
    let paced = c.stats().paced;
    c.send(&vec![3u8; (14 * MSS) as usize]);
    assert_eq!(out(&mut c, t).len(), (c.info().cwnd / MSS) as usize, "the window at once");
    assert_eq!(c.stats().paced, paced);
}
