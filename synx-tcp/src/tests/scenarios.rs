//! Scenarios through every state and every timer, at exact virtual instants.

use core::time::Duration;

use engine_common::handshake::{FACT_SACK, FACT_TS, HandshakeFacts};

use super::super::connection::{DropReason, TimeoutKind};
use super::*;

// ------------------------------------------------------------------ handshake

#[test]
fn handshake_ack_creates_an_idle_established_connection() {
    let mut c = established();
    assert_eq!(c.state(), State::Established);
    none(&mut c, ms(0));
    assert!(events(&mut c).is_empty());
    // Only the keepalive timer runs: 2 h after the handshake.
    assert_eq!(c.poll_timeout(), Some(secs(7200)));
}

#[test]
fn handshake_ack_carrying_data_is_delivered_and_ack_delayed() {
    let mut c = accept_with(config(), facts(), &peer(0, 0), b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(events(&mut c), [Event::Readable]);
    assert_eq!(read_all(&mut c), b"GET / HTTP/1.1\r\n\r\n");
    none(&mut c, ms(39));
    // RFC 9293 3.8.6.3: the delayed ACK after 40 ms.
    assert_eq!(c.poll_timeout(), Some(ms(40)));
    c.handle_timeout(ms(40));
    assert_ack(&one(&mut c, ms(40)), 0, 18);
}

#[test]
fn handshake_ack_carrying_data_and_fin_enters_close_wait() {
    let ack = with(peer(0, 0), Flags::FIN);
    let mut c = accept_with(config(), facts(), &ack, b"bye");
    assert_eq!(c.state(), State::CloseWait);
    assert_eq!(events(&mut c), [Event::Readable, Event::PeerFin]);
    assert_eq!(read_all(&mut c), b"bye");
    assert!(c.is_eof());
    c.handle_timeout(ms(40));
    // FIN consumes a sequence number: ACK = 3 bytes + 1.
    assert_ack(&one(&mut c, ms(40)), 0, 4);
}

// ------------------------------------------------------------------ receiving

#[test]
fn every_second_full_segment_is_acked_at_once() {
    let mut c = established();
    let seg = vec![7u8; 1460];
    c.handle(ms(1), &peer(0, 0), &seg);
    none(&mut c, ms(1));
    c.handle(ms(2), &peer(1460, 0), &seg);
    // RFC 5681 4.2: at least every second full-sized segment.
    assert_ack(&one(&mut c, ms(2)), 0, 2920);
    assert!(c.poll_timeout().unwrap() > ms(1000), "no delayed ACK pending");
}

#[test]
fn out_of_order_is_acked_at_once_with_sack_and_reassembled() {
    let f = HandshakeFacts { flags: FACT_SACK, ..facts() };
    let mut c = accept_with(config(), f, &peer(0, 0), &[]);
    c.handle(ms(1), &peer(10, 0), b"klmno");
    let (h, _) = one(&mut c, ms(1));
    // RFC 5681 4.2: an out-of-order segment gets an immediate duplicate ACK, with SACK (RFC 2018).
    assert_eq!(h.ack, SeqNum(IRS + 1));
    assert_eq!(h.options.sack.as_slice(), &[(SeqNum(IRS + 11), SeqNum(IRS + 16))]);
    c.handle(ms(2), &peer(20, 0), b"uvw");
    let (h, _) = one(&mut c, ms(2));
    // The most recent block first (RFC 2018 4).
    assert_eq!(h.options.sack.as_slice()[0], (SeqNum(IRS + 21), SeqNum(IRS + 24)));
    assert_eq!(h.options.sack.len(), 2);
    assert_eq!(c.readable(), 0);
    // Overlapping fill of the first hole, then the second.
    c.handle(ms(3), &peer(0, 0), b"abcdefghijkl");
    let (h, _) = one(&mut c, ms(3));
    assert_eq!(h.ack, SeqNum(IRS + 16));
    c.handle(ms(4), &peer(15, 0), b"pqrst");
    // Filling a hole is ACKed at once (RFC 5681 4.2).
    let (h, _) = one(&mut c, ms(4));
    assert_eq!(h.ack, SeqNum(IRS + 24));
    assert!(h.options.sack.is_empty());
    assert_eq!(read_all(&mut c), b"abcdefghijklmnopqrstuvw");
}

#[test]
fn in_order_data_goes_to_the_reader_first_and_only_the_rest_is_buffered() {
    let mut c = established();
    // The reader has room for 3 bytes: it takes them from the segment, the rest is buffered.
    let mut got = Vec::new();
    let mut take3 = |d: &[u8]| {
        let n = d.len().min(3);
        got.extend_from_slice(&d[..n]);
        n
    };
    c.handle_into(ms(1), &peer(0, 0), b"abcdef", &mut take3);
    assert_eq!(got, b"abc");
    assert_eq!(c.readable(), 3);
    // Unread data waits: later data queues behind it, never offered ahead of it.
    let mut offered = 0;
    c.handle_into(ms(2), &peer(6, 0), b"gh", &mut |_| {
        offered += 1;
        0
    });
    assert_eq!(read_all(&mut c), b"defgh");
    // Out of order: buffered; in order with a hole beyond it: buffered too (it joins what is
    // held), and ACKed at once for filling the hole (RFC 5681 4.2).
    c.handle_into(ms(3), &peer(10, 0), b"kl", &mut |_| {
        offered += 1;
        0
    });
    none_but_acks(&mut c, ms(3));
    c.handle_into(ms(4), &peer(8, 0), b"ij", &mut |_| {
        offered += 1;
        0
    });
    assert_eq!(offered, 0, "only in-order data with nothing unread before it is offered");
    assert_ack(&one(&mut c, ms(4)), 0, 12);
    assert_eq!(read_all(&mut c), b"ijkl");
    // All of it taken: nothing buffered, RCV.NXT past it, the ACK owed as for buffered data
    // (every second full segment, RFC 5681 4.2: here a delayed one).
    got.clear();
    c.handle_into(ms(5), &peer(12, 0), b"mnop", &mut |d| {
        got.extend_from_slice(d);
        d.len()
    });
    assert_eq!(got, b"mnop");
    assert_eq!(c.readable(), 0);
    let acks = run_until(&mut c, ms(1000));
    assert_eq!(acks.len(), 1, "{acks:?}");
    assert_ack(&(acks[0].1, acks[0].2.clone()), 0, 16);
    assert_eq!(c.stats().bytes_received, 16);
}

/// Drain what goes out: ACKs only.
#[track_caller]
fn none_but_acks(c: &mut Connection, now: Instant) {
    for (h, p) in out(c, now) {
        assert!(p.is_empty() && h.flags == Flags::ACK, "{h:?}");
    }
}

#[test]
fn duplicate_and_overlapping_data_is_delivered_once() {
    let mut c = established();
    c.handle(ms(1), &peer(0, 0), b"hello");
    c.handle(ms(2), &peer(0, 0), b"hello"); // exact duplicate: ACKed at once
    assert_ack(&one(&mut c, ms(2)), 0, 5);
    c.handle(ms(3), &peer(3, 0), b"lo world"); // overlaps by two bytes
    assert_eq!(read_all(&mut c), b"hello world");
}

#[test]
fn data_beyond_the_window_is_trimmed_and_unacceptable_data_acked() {
    let cfg = Config { recv_buffer: 8, ..config() };
    let mut c = accept_with(cfg, facts(), &peer(0, 0), &[]);
    c.handle(ms(1), &peer(0, 0), b"0123456789");
    assert_eq!(read_all(&mut c), b"01234567");
    // Entirely beyond the window: RFC 9293 3.10.7.4 first, ACK and drop.
    c.handle(ms(1), &peer(100, 0), b"zz");
    let segs = out(&mut c, ms(1));
    assert!(segs.iter().all(|(h, p)| p.is_empty() && h.ack == SeqNum(IRS + 9)));
    assert_eq!(c.readable(), 0);
}

#[test]
fn zero_receive_window_accepts_only_acks_at_rcv_nxt() {
    let cfg = Config { recv_buffer: 4, ..config() };
    let mut c = accept_with(cfg, facts(), &peer(0, 0), &[]);
    c.handle(ms(1), &peer(0, 0), b"full");
    none(&mut c, ms(1));
    // Buffer full: window 0 advertised with the delayed ACK.
    c.handle_timeout(ms(41));
    let (h, _) = one(&mut c, ms(41));
    assert_eq!((h.ack, h.window), (SeqNum(IRS + 5), 0));
    // RFC 9293 3.10.7.4: a zero window still takes the ACK; the data is not stored and the
    // zero window is re-advertised.
    assert_eq!(c.handle(ms(42), &peer(4, 0), b"x"), Handled::Processed);
    assert_ack(&one(&mut c, ms(42)), 0, 4);
    assert_eq!(c.handle(ms(42), &peer(5, 0), b"y"), Handled::Dropped(DropReason::Unacceptable));
    assert_ack(&one(&mut c, ms(42)), 0, 4);
    assert_eq!(c.handle(ms(43), &peer(4, 0), &[]), Handled::Processed);
    // Reading opens the window: a window update goes out.
    assert_eq!(read_all(&mut c), b"full");
    let (h, _) = one(&mut c, ms(44));
    assert_eq!(h.window, 4);
}

// ------------------------------------------------------------------ passive close

#[test]
fn passive_close_with_the_app_still_sending_in_close_wait() {
    let mut c = established();
    c.handle(ms(10), &with(peer(0, 0), Flags::FIN), &[]);
    assert_eq!(c.state(), State::CloseWait);
    assert_eq!(events(&mut c), [Event::PeerFin]);
    c.handle_timeout(ms(50));
    assert_ack(&one(&mut c, ms(50)), 0, 1);
    // Half-closed: the application keeps sending.
    assert_eq!(c.send(b"still here"), 10);
    let (h, p) = one(&mut c, ms(60));
    assert_eq!((h.seq, h.ack, p.as_slice()), (SeqNum(ISS + 1), SeqNum(IRS + 2), &b"still here"[..]));
    c.handle(ms(70), &peer(1, 10), &[]);
    c.shutdown(ms(80));
    assert_eq!(c.state(), State::LastAck);
    let (h, p) = one(&mut c, ms(80));
    assert!(h.flags.fin() && p.is_empty());
    assert_eq!(h.seq, SeqNum(ISS + 11));
    assert_eq!(c.send(b"late"), 0);
    // The ACK of our FIN (which consumed a sequence number) closes.
    c.handle(ms(90), &peer(1, 11), &[]);
    assert_eq!(c.state(), State::Closed);
    assert_eq!(events(&mut c), [Event::Closed(CloseReason::Normal)]);
    assert!(c.is_released());
}

#[test]
fn passive_close_folds_the_fin_ack_into_our_fin() {
    let mut c = established();
    c.handle(ms(10), &with(peer(0, 0), Flags::FIN), &[]);
    c.shutdown(ms(20)); // before the 40 ms delayed ACK
    let (h, _) = one(&mut c, ms(20));
    assert_eq!(h.flags, Flags::FIN | Flags::ACK);
    assert_eq!(h.ack, SeqNum(IRS + 2));
    none(&mut c, ms(60));
}

#[test]
fn last_ack_retransmits_the_fin_until_acked() {
    let mut c = established();
    c.handle(ms(0), &with(peer(0, 0), Flags::FIN), &[]);
    c.shutdown(ms(0));
    let (h, _) = one(&mut c, ms(0));
    assert!(h.flags.fin());
    // RFC 6298: initial RTO 1 s, then doubled.
    let sent = run_until(&mut c, secs(4));
    let times: Vec<Instant> = sent.iter().map(|(t, _, _)| *t).collect();
    assert_eq!(times, [secs(1), secs(3)]);
    assert!(sent.iter().all(|(_, h, _)| h.flags.fin() && h.seq == SeqNum(ISS + 1)));
    c.handle(secs(4), &peer(1, 1), &[]);
    assert_eq!(c.state(), State::Closed);
}

// ------------------------------------------------------------------ active close

#[test]
fn active_close_through_fin_wait_to_time_wait_for_exactly_2msl() {
    let mut c = established();
    c.send(b"last words");
    c.shutdown(ms(0));
    assert_eq!(c.state(), State::FinWait1);
    // The FIN rides on the last data segment.
    let (h, p) = one(&mut c, ms(0));
    assert_eq!(p, b"last words");
    assert!(h.flags.fin());
    c.handle(ms(10), &peer(0, 11), &[]);
    assert_eq!(c.state(), State::FinWait2);
    // Half-closed the other way: we keep receiving in FIN_WAIT_2.
    c.handle(ms(20), &peer(0, 11), b"reply");
    assert_eq!(read_all(&mut c), b"reply");
    c.handle(ms(30), &with(peer(5, 11), Flags::FIN), &[]);
    assert_eq!(c.state(), State::TimeWait);
    assert_ack(&one(&mut c, ms(30)), 11, 6);
    // TIME_WAIT lasts 2*MSL = 60 s.
    assert_eq!(c.poll_timeout(), Some(ms(30) + Duration::from_secs(60)));
    c.handle_timeout(ms(30) + Duration::from_secs(60) - Duration::from_nanos(1));
    assert_eq!(c.state(), State::TimeWait);
    c.handle_timeout(ms(30) + Duration::from_secs(60));
    assert_eq!(c.state(), State::Closed);
    assert!(events(&mut c).contains(&Event::Closed(CloseReason::Normal)));
}

#[test]
fn lost_last_ack_the_retransmitted_fin_is_reacked_and_time_wait_restarts() {
    let mut c = established();
    c.shutdown(ms(0));
    one(&mut c, ms(0));
    c.handle(ms(10), &with(peer(0, 1), Flags::FIN), &[]);
    assert_eq!(c.state(), State::TimeWait);
    assert_ack(&one(&mut c, ms(10)), 1, 1);
    // Our ACK was lost: the peer retransmits its FIN 20 s later.
    let t = secs(20);
    c.handle(t, &with(peer(0, 1), Flags::FIN), &[]);
    assert_ack(&one(&mut c, t), 1, 1);
    assert_eq!(c.stats().time_wait_fin_reacks, 1);
    // The 2*MSL timer restarted: still TIME_WAIT when the first would have expired.
    c.handle_timeout(ms(10) + Duration::from_secs(60));
    assert_eq!(c.state(), State::TimeWait);
    assert_eq!(c.poll_timeout(), Some(t + Duration::from_secs(60)));
    c.handle_timeout(t + Duration::from_secs(60));
    assert_eq!(c.state(), State::Closed);
}

#[test]
fn simultaneous_close_goes_through_closing() {
    let mut c = established();
    c.shutdown(ms(0));
    one(&mut c, ms(0));
    // The peer's FIN crosses ours: it does not acknowledge our FIN yet.
    c.handle(ms(5), &with(peer(0, 0), Flags::FIN), &[]);
    assert_eq!(c.state(), State::Closing);
    assert_ack(&one(&mut c, ms(5)), 1, 1);
    c.handle(ms(6), &peer(1, 1), &[]);
    assert_eq!(c.state(), State::TimeWait);
}

#[test]
fn fin_ack_of_our_fin_goes_from_fin_wait_1_straight_to_time_wait() {
    let mut c = established();
    c.shutdown(ms(0));
    one(&mut c, ms(0));
    c.handle(ms(5), &with(peer(0, 1), Flags::FIN), &[]);
    assert_eq!(c.state(), State::TimeWait);
}

#[test]
fn time_wait_syn_may_reopen_the_tuple() {
    let mut c = established();
    c.shutdown(ms(0));
    one(&mut c, ms(0));
    c.handle(ms(5), &with(peer(0, 1), Flags::FIN), &[]);
    // An old SYN (at or below RCV.NXT) gets a challenge ACK (RFC 5961 4.2).
    let mut old = peer(0, 0);
    old.flags = Flags::SYN;
    assert_eq!(c.handle(ms(6), &old, &[]), Handled::Dropped(DropReason::Syn));
    assert_eq!(c.state(), State::TimeWait);
    assert_eq!(out(&mut c, ms(6)).len(), 1); // the FIN's ACK and the challenge ACK coalesce
    // RFC 6191 without timestamps: a SYN above RCV.NXT reopens.
    let mut new = peer(100_000, 0);
    new.flags = Flags::SYN;
    assert_eq!(c.handle(ms(7), &new, &[]), Handled::Dropped(DropReason::TimeWaitReuse));
    assert_eq!(c.state(), State::Closed);
}

// ------------------------------------------------------------------ RST and SYN (RFC 5961)

#[test]
fn rst_in_every_state() {
    type Setup = fn(&mut Connection);
    let setups: [(State, Setup); 6] = [
        (State::Established, |_| {}),
        (State::CloseWait, |c| {
            c.handle(ms(1), &with(peer(0, 0), Flags::FIN), &[]);
        }),
        (State::FinWait1, |c| {
            c.shutdown(ms(1));
            out(c, ms(1));
        }),
        (State::FinWait2, |c| {
            c.shutdown(ms(1));
            out(c, ms(1));
            c.handle(ms(2), &peer(0, 1), &[]);
        }),
        (State::LastAck, |c| {
            c.handle(ms(1), &with(peer(0, 0), Flags::FIN), &[]);
            c.shutdown(ms(1));
            out(c, ms(1));
        }),
        (State::Closing, |c| {
            c.shutdown(ms(1));
            out(c, ms(1));
            c.handle(ms(2), &with(peer(0, 0), Flags::FIN), &[]);
        }),
    ];
    for (state, setup) in setups {
        let mut c = established();
        setup(&mut c);
        assert_eq!(c.state(), state);
        out(&mut c, ms(3));
        let rcv_nxt = c_rcv_nxt_offset(state);
        // In window but not exactly RCV.NXT: challenge ACK, no reset (RFC 5961 3.2).
        let inexact = with(peer(rcv_nxt + 1, 0), Flags::RST);
        assert_eq!(c.handle(ms(4), &inexact, &[]), Handled::Dropped(DropReason::RstNotExact), "{state}");
        let (h, _) = one(&mut c, ms(4));
        assert_eq!(h.ack, SeqNum(IRS + 1 + rcv_nxt), "{state}");
        // Outside the window: dropped silently.
        let far = with(peer(rcv_nxt + 1_000_000, 0), Flags::RST);
        assert_eq!(c.handle(ms(5), &far, &[]), Handled::Dropped(DropReason::Unacceptable));
        none(&mut c, ms(5));
        // Exactly RCV.NXT: reset.
        let exact = with(peer(rcv_nxt, 0), Flags::RST);
        assert_eq!(c.handle(ms(6), &exact, &[]), Handled::Processed);
        assert_eq!(c.state(), State::Closed, "{state}");
        assert_eq!(events(&mut c).last(), Some(&Event::Closed(CloseReason::Reset)), "{state}");
        none(&mut c, ms(7));
        assert_eq!(c.handle(ms(8), &peer(rcv_nxt, 0), b"x"), Handled::Dropped(DropReason::Closed));
    }
}

fn c_rcv_nxt_offset(state: State) -> u32 {
    match state {
        State::CloseWait | State::LastAck | State::Closing => 1,
        _ => 0,
    }
}

#[test]
fn rst_in_time_wait_closes_only_when_exact() {
    let mut c = established();
    c.shutdown(ms(0));
    one(&mut c, ms(0));
    c.handle(ms(5), &with(peer(0, 1), Flags::FIN), &[]);
    assert_eq!(c.handle(ms(6), &with(peer(5, 0), Flags::RST), &[]), Handled::Dropped(DropReason::RstNotExact));
    assert_eq!(c.state(), State::TimeWait);
    c.handle(ms(7), &with(peer(1, 0), Flags::RST), &[]);
    assert_eq!(c.state(), State::Closed);
}

#[test]
fn in_window_syn_gets_a_rate_limited_challenge_ack() {
    let mut c = established();
    let mut syn = peer(3, 0);
    syn.flags = Flags::SYN;
    for i in 0..15 {
        assert_eq!(c.handle(ms(100 + i), &syn, &[]), Handled::Dropped(DropReason::Syn));
    }
    assert_eq!(c.state(), State::Established);
    // RFC 5961 7: at most `challenge_acks_per_sec` (10) per second.
    let acks = out(&mut c, ms(200));
    assert_eq!(acks.len(), 1, "pending ACKs coalesce into one segment");
    assert_eq!(c.stats().challenge_acks, 10);
    c.handle(ms(1200), &syn, &[]);
    assert_eq!(c.stats().challenge_acks, 11);
    assert_ack(&one(&mut c, ms(1200)), 0, 0);
}

#[test]
fn ack_range_checks() {
    let mut c = established();
    c.send(b"abc");
    one(&mut c, ms(0));
    // RFC 5961 5.2 / RFC 9293: an ACK for data never sent is answered with an ACK and dropped.
    assert_eq!(c.handle(ms(1), &peer(0, 10), &[]), Handled::Dropped(DropReason::BadAck));
    assert_ack(&one(&mut c, ms(1)), 3, 0);
    // Old duplicate ACKs below SND.UNA - MAX.SND.WND are dropped too.
    c.handle(ms(2), &peer(0, 3), &[]);
    let ancient = peer(0, 3u32.wrapping_sub(1_000_000));
    assert_eq!(c.handle(ms(3), &ancient, b"data"), Handled::Dropped(DropReason::BadAck));
    assert_eq!(c.readable(), 0);
    // A segment without ACK is dropped (RFC 9293 3.10.7.4 fifth).
    let mut no_ack = peer(0, 3);
    no_ack.flags = Flags(0);
    assert_eq!(c.handle(ms(4), &no_ack, b"data"), Handled::Dropped(DropReason::NoAck));
}

#[test]
fn abort_sends_rst_and_closes() {
    let mut c = established();
    c.send(b"abc");
    one(&mut c, ms(0));
    c.abort(ms(1));
    assert_eq!(c.state(), State::Closed);
    let (h, p) = one(&mut c, ms(1));
    assert!(h.flags.rst() && p.is_empty());
    assert_eq!(h.seq, SeqNum(ISS + 4));
    assert_eq!(events(&mut c), [Event::Closed(CloseReason::Aborted)]);
    assert!(c.is_released());
}

// ------------------------------------------------------------------ keepalive

fn ka_config() -> Config {
    Config {
        keepalive: Keepalive { enabled: true, idle: Duration::from_secs(7200), interval: Duration::from_secs(75), probes: 10 },
        ..config()
    }
}

#[test]
fn keepalive_dead_peer_exactly_probes_probes_then_rst_and_timeout() {
    let mut c = accept_with(ka_config(), facts(), &peer(0, 0), &[]);
    let sent = run_until(&mut c, secs(100_000));
    let probes: Vec<_> = sent.iter().filter(|(_, h, _)| !h.flags.rst()).collect();
    assert_eq!(probes.len(), 10);
    for (i, (t, h, p)) in probes.iter().enumerate() {
        // RFC 1122 4.2.3.6: at idle, idle + interval, ...; zero length at SND.NXT - 1.
        assert_eq!(*t, secs(7200 + 75 * i as u64), "probe {i}");
        assert_eq!(h.seq, SeqNum(ISS), "probe {i}");
        assert!(p.is_empty());
        assert_eq!(h.ack, SeqNum(IRS + 1));
    }
    let (t, rst, _) = sent.last().unwrap();
    assert!(rst.flags.rst());
    assert_eq!(*t, secs(7200 + 75 * 10));
    assert_eq!(c.state(), State::Closed);
    assert_eq!(events(&mut c), [Event::Closed(CloseReason::TimedOut)]);
    assert_eq!(c.timed_out_by(), Some(TimeoutKind::Keepalive));
    assert_eq!(c.info().stats.keepalive_probes, 10);
}

#[test]
fn keepalive_live_peer_answers_and_the_connection_survives() {
    let mut c = accept_with(ka_config(), facts(), &peer(0, 0), &[]);
    for round in 0..3u64 {
        let base = secs(round * 7300);
        let t = c.poll_timeout().unwrap();
        assert_eq!(t, base + Duration::from_secs(7200));
        c.handle_timeout(t);
        let (h, _) = one(&mut c, t);
        assert_eq!(h.seq, SeqNum(ISS));
        // The peer answers the probe with an ACK for RCV.NXT.
        c.handle(t + Duration::from_millis(1), &peer(0, 0), &[]);
        assert_eq!(c.info().keepalive_probes_sent, 0);
        // Idle again until the next round.
        let next = c.poll_timeout().unwrap();
        assert_eq!(next, t + Duration::from_millis(1) + Duration::from_secs(7200));
        // The peer sends something at round*7300+7300 s: the deadline moves again.
        c.handle(secs((round + 1) * 7300), &peer(0, 0), &[]);
        assert_eq!(c.poll_timeout(), Some(secs((round + 1) * 7300 + 7200)));
    }
    assert_eq!(c.state(), State::Established);
}

#[test]
fn keepalive_disabled_and_busy_connections_send_no_probes() {
    let cfg = Config { keepalive: Keepalive { enabled: false, ..Keepalive::default() }, ..config() };
    let c = accept_with(cfg, facts(), &peer(0, 0), &[]);
    assert_eq!(c.poll_timeout(), None);
    // Data in flight: the retransmission timer is in charge, keepalive reschedules.
    let mut c = accept_with(ka_config(), facts(), &peer(0, 0), &[]);
    c.set_keepalive(Keepalive { idle: Duration::from_secs(1), ..ka_config().keepalive });
    c.send(b"x");
    one(&mut c, ms(0));
    c.handle(ms(500), &peer(0, 1), &[]);
    c.send(b"y");
    one(&mut c, ms(600));
    let sent = run_until(&mut c, ms(1600));
    assert!(sent.iter().all(|(_, _, p)| p == b"y"), "only retransmissions: {sent:?}");
}

// ------------------------------------------------------------------ retransmission

#[test]
fn retransmission_backs_off_and_gives_up_with_rst() {
    let cfg = Config { max_retries: 3, ..config() };
    let mut c = accept_with(cfg, facts(), &peer(0, 0), &[]);
    c.send(b"hello");
    one(&mut c, ms(0));
    let sent = run_until(&mut c, secs(100));
    let times: Vec<Instant> = sent.iter().map(|(t, _, _)| *t).collect();
    // RFC 6298 5.5: 1 s, then doubling; after the 3rd retransmission times out, RST.
    assert_eq!(times, [secs(1), secs(3), secs(7), secs(15)]);
    assert!(sent[..3].iter().all(|(_, h, p)| p == b"hello" && h.seq == SeqNum(ISS + 1)));
    assert!(sent[3].1.flags.rst());
    assert_eq!(events(&mut c), [Event::Closed(CloseReason::TimedOut)]);
    assert_eq!(c.timed_out_by(), Some(TimeoutKind::Retransmission));
}

#[test]
fn rtt_sample_sets_the_rto_and_karn_ignores_retransmissions() {
    let mut c = established();
    c.send(b"a");
    one(&mut c, ms(0));
    c.handle(ms(100), &peer(0, 1), &[]);
    assert_eq!(c.info().srtt, Some(Duration::from_millis(100)));
    // 100 ms + max(4 * 50 ms, 200 ms).
    assert_eq!(c.info().rto, Duration::from_millis(300));
    // A retransmitted segment is not timed (Karn).
    c.send(b"b");
    one(&mut c, ms(1000));
    c.handle_timeout(ms(1300));
    one(&mut c, ms(1300));
    c.handle(ms(1900), &peer(0, 2), &[]);
    assert_eq!(c.info().srtt, Some(Duration::from_millis(100)));
}

#[test]
fn fast_retransmit_on_three_dupacks_then_newreno_partial_ack() {
    let cfg = Config { congestion: CongestionAlgorithm::NewReno, nagle: false, ..config() };
    let mut c = accept_with(cfg, facts(), &peer(0, 0), &[]);
    let data = vec![1u8; 1460 * 6];
    c.send(&data);
    let segs = out(&mut c, ms(0));
    assert_eq!(segs.len(), 6);
    // Segments 1 and 3 are lost; the peer dup-ACKs segment 0's end.
    c.handle(ms(10), &peer(0, 1460), &[]);
    for i in 0..2 {
        c.handle(ms(11 + i), &peer(0, 1460), &[]);
        none(&mut c, ms(11 + i));
    }
    c.handle(ms(13), &peer(0, 1460), &[]);
    // RFC 5681 3.2: the third duplicate ACK retransmits the first unacknowledged segment.
    let (h, p) = one(&mut c, ms(13));
    assert_eq!((h.seq, p.len()), (SeqNum(ISS + 1 + 1460), 1460));
    // Partial ACK (up to the second hole): RFC 6582 retransmits the next one at once.
    c.handle(ms(20), &peer(0, 1460 * 3), &[]);
    let segs = out(&mut c, ms(20));
    assert_eq!(segs[0].0.seq, SeqNum(ISS + 1 + 1460 * 3));
    // Full ACK ends recovery.
    c.handle(ms(30), &peer(0, 1460 * 6), &[]);
    assert!(c.info().cwnd >= 1460 * 2);
    assert_eq!(c.info().send_queued, 0);
}

#[test]
fn sack_recovery_resends_only_the_holes() {
    let mut c = sack_sender();
    c.send(&vec![2u8; 1460 * 8]);
    assert_eq!(out(&mut c, ms(0)).len(), 8);
    // Segments 0 and 4 lost; SACKs for 1-3 and 5-7 arrive.
    let mss = 1460u32;
    let sack = |blocks: &[(u32, u32)]| sack_ack(0, blocks);
    c.handle(ms(10), &sack(&[(1, 2)]), &[]);
    c.handle(ms(11), &sack(&[(1, 3)]), &[]);
    c.handle(ms(12), &sack(&[(1, 4)]), &[]);
    let segs = out(&mut c, ms(12));
    assert_eq!(segs[0].0.seq, SeqNum(ISS + 1), "first hole resent");
    c.handle(ms(13), &sack(&[(5, 6), (1, 4)]), &[]);
    c.handle(ms(14), &sack(&[(5, 8), (1, 4)]), &[]);
    let segs = out(&mut c, ms(14));
    let seqs: Vec<u32> = segs.iter().map(|(h, _)| h.seq.0 - ISS - 1).collect();
    assert_eq!(seqs, [4 * mss], "only the second hole: {seqs:?}");
    c.handle(ms(20), &peer(0, 8 * mss), &[]);
    assert_eq!(c.info().send_queued, 0);
}

#[test]
fn sack_loss_is_recovered_at_once_even_when_the_peer_window_moves() {
    // A receiving application that reads as data arrives moves its window with every ACK, so
    // none of its ACKs is a duplicate in RFC 5681's sense, and a cumulative ACK can carry the
    // SACK blocks above the next hole. RFC 6675 5 (IsLost(HighACK + 1)) still declares the
    // hole lost once three segments above it are SACKed: no retransmission timeout.
    let mut c = sack_sender();
    c.send(&vec![3u8; 1460 * 8]);
    assert_eq!(out(&mut c, ms(0)).len(), 8);
    let mss = 1460u32;
    // Segment 1 is lost. Each ACK opens the window a little further.
    let ack = |cum: u32, sacked_to: u32, window: u16| {
        let blocks = [(2, sacked_to)];
        let mut h = sack_ack(cum, if sacked_to > 2 { &blocks } else { &[] });
        h.window = window;
        h
    };
    c.handle(ms(10), &ack(1, 0, 40_000), &[]);
    c.handle(ms(11), &ack(1, 3, 40_100), &[]);
    c.handle(ms(12), &ack(1, 4, 40_200), &[]);
    c.handle(ms(13), &ack(1, 5, 40_300), &[]);
    let segs = out(&mut c, ms(13));
    assert_eq!(segs.first().map(|(h, _)| h.seq), Some(SeqNum(ISS + 1 + mss)), "hole not resent");
    c.handle(ms(20), &peer(0, 8 * mss), &[]);
    assert_eq!(c.info().send_queued, 0);
}

#[test]
fn a_hole_with_few_segments_outstanding_is_resent_by_the_reordering_timer() {
    // Three segments in flight, the first lost, nothing more to send: two SACKed segments are
    // all the evidence there can be (RFC 5827's case). RACK (RFC 8985 6.2, 6.3) waits RACK.rtt
    // plus the reordering window (min_RTT/4: fewer than DupThresh segments SACKed) after the
    // hole was sent, then resends it, without a retransmission timeout.
    let mut c = sack_sender();
    let mss = 1460u32;
    c.send(&vec![4u8; 3 * mss as usize]);
    assert_eq!(out(&mut c, ms(0)).len(), 3);
    let sack = |to: u32| sack_ack(0, &[(1, to)]);
    // min_RTT 10 ms from the first SACKed segment: a 2.5 ms window.
    c.handle(ms(10), &sack(2), &[]);
    none(&mut c, ms(10));
    c.handle(ms(11), &sack(3), &[]);
    none(&mut c, ms(11));
    // RACK.rtt is now 11 ms: the hole is lost at 0 + 11 + 2.5 ms.
    let sent = run_until(&mut c, ms(1000));
    assert_eq!(sent.len(), 1, "{sent:?}");
    let (t, h, p) = &sent[0];
    assert_eq!((*t, h.seq, p.len()), (ms(13) + Duration::from_micros(500), SeqNum(ISS + 1), mss as usize));
    assert_eq!((c.stats().rack_losses, c.stats().fast_recoveries, c.stats().timeouts), (1, 1, 0));
}

#[test]
fn sacked_segments_leave_the_pipe_and_clock_out_new_data() {
    // RFC 6675 4: a SACKed segment is no longer in flight, so a cwnd-limited sender sends one
    // new segment for each SACKed one before recovery starts.
    let mut c = sack_sender();
    let mss = 1460u32;
    c.send(&vec![5u8; 40 * mss as usize]);
    let first = out(&mut c, ms(0)).len() as u32;
    assert!(first < 40, "initial window sends everything?");
    let mut h = peer(0, 0);
    h.options.sack.push(SeqNum(ISS + 1 + mss), SeqNum(ISS + 1 + 2 * mss));
    c.handle(ms(10), &h, &[]);
    let (h, _) = one(&mut c, ms(10));
    assert_eq!(h.seq, SeqNum(ISS + 1 + first * mss), "new data, not a retransmission");
}

#[test]
fn a_lost_retransmission_is_resent_once_later_data_is_sacked() {
    // Segment 0 is lost, and so is its fast retransmission. Data first sent after that
    // retransmission is SACKed while segment 0 is still missing: resend it at once (RFC 8985
    // 6.2's reasoning) rather than after the retransmission timeout.
    let mut c = sack_sender();
    let mss = 1460u32;
    c.send(&vec![6u8; 8 * mss as usize]);
    assert_eq!(out(&mut c, ms(0)).len(), 8);
    let sack = |to: u32| sack_ack(0, &[(1, to)]);
    for (t, to) in [(10, 2), (11, 3), (12, 4)] {
        c.handle(ms(t), &sack(to), &[]);
    }
    let segs = out(&mut c, ms(12));
    assert_eq!(segs[0].0.seq, SeqNum(ISS + 1), "fast retransmit");
    // More data goes out after the retransmission (the SACKs keep clocking).
    c.send(&vec![6u8; 4 * mss as usize]);
    for (t, to) in [(13, 5), (14, 6), (15, 7), (16, 8)] {
        c.handle(ms(t), &sack(to), &[]);
        out(&mut c, ms(t));
    }
    // Still no segment 0, but data beyond what was sent before the retransmission arrives.
    c.handle(ms(17), &sack(9), &[]);
    let segs = out(&mut c, ms(17));
    assert_eq!(segs.first().map(|(h, _)| h.seq), Some(SeqNum(ISS + 1)), "lost retransmission not resent");
    c.handle(ms(20), &peer(0, 12 * mss), &[]);
    assert_eq!(c.info().send_queued, 0);
}

#[test]
fn nagle_holds_small_segments_while_data_is_unacked() {
    let mut c = established();
    c.send(b"a");
    one(&mut c, ms(0));
    c.send(b"b");
    none(&mut c, ms(1));
    c.send(b"c");
    none(&mut c, ms(2));
    c.handle(ms(10), &peer(0, 1), &[]);
    let (_, p) = one(&mut c, ms(10));
    assert_eq!(p, b"bc");
    let cfg = Config { nagle: false, ..config() };
    let mut c = accept_with(cfg, facts(), &peer(0, 0), &[]);
    c.send(b"a");
    one(&mut c, ms(0));
    c.send(b"b");
    one(&mut c, ms(1));
}

#[test]
fn zero_window_is_probed_by_the_persist_timer() {
    let mut ack = peer(0, 0);
    ack.window = 0;
    let mut c = accept_with(config(), facts(), &ack, &[]);
    c.send(b"data");
    none(&mut c, ms(0));
    // RFC 9293 3.8.6.1: probes at the RTO, backing off; zero length at SND.UNA - 1 (Linux).
    let sent = run_until(&mut c, ms(3500));
    let times: Vec<Instant> = sent.iter().map(|(t, _, _)| *t).collect();
    assert_eq!(times, [secs(1), secs(3)]);
    assert!(sent.iter().all(|(_, h, p)| p.is_empty() && h.seq == SeqNum(ISS)));
    // The window opens: the data goes.
    c.handle(ms(3500), &peer(0, 0), &[]);
    let (_, p) = one(&mut c, ms(3500));
    assert_eq!(p, b"data");
}

#[test]
fn send_respects_the_peer_window_and_buffer_limits() {
    let mut ack = peer(0, 0);
    ack.window = 1000;
    let cfg = Config { send_buffer: 3000, nagle: false, ..config() };
    let mut c = accept_with(cfg, facts(), &ack, &[]);
    assert_eq!(c.send(&[0u8; 5000]), 3000);
    let segs = out(&mut c, ms(0));
    assert_eq!(segs.iter().map(|(_, p)| p.len()).sum::<usize>(), 1000);
    // The window moves with the ACK; Writable once space frees up.
    let mut a = peer(0, 1000);
    a.window = 1000;
    c.handle(ms(10), &a, &[]);
    assert!(events(&mut c).contains(&Event::Writable));
    let segs = out(&mut c, ms(10));
    assert_eq!(segs.iter().map(|(_, p)| p.len()).sum::<usize>(), 1000);
}

// ------------------------------------------------------------------ more tables

#[test]
fn text_after_the_peers_fin_is_ignored_in_every_state() {
    type Setup = fn(&mut Connection);
    // RFC 9293 3.10.7.4 seventh: CLOSE-WAIT, CLOSING, LAST-ACK, TIME-WAIT ignore segment text.
    let setups: [(State, Setup); 4] = [
        (State::CloseWait, |c| {
            c.handle(ms(1), &with(peer(0, 0), Flags::FIN), &[]);
        }),
        (State::LastAck, |c| {
            c.handle(ms(1), &with(peer(0, 0), Flags::FIN), &[]);
            c.shutdown(ms(1));
        }),
        (State::Closing, |c| {
            c.shutdown(ms(1));
            out(c, ms(1));
            c.handle(ms(2), &with(peer(0, 0), Flags::FIN), &[]);
        }),
        (State::TimeWait, |c| {
            c.shutdown(ms(1));
            out(c, ms(1));
            c.handle(ms(2), &with(peer(0, 1), Flags::FIN), &[]);
        }),
    ];
    for (state, setup) in setups {
        let mut c = established();
        setup(&mut c);
        assert_eq!(c.state(), state);
        out(&mut c, ms(3));
        // Data beyond the FIN: never delivered.
        c.handle(ms(4), &peer(1, 0), b"after fin");
        assert_eq!(c.readable(), 0, "{state}");
        assert!(!events(&mut c).contains(&Event::Readable), "{state}");
        assert_eq!(c.state(), state);
    }
}

#[test]
fn a_fin_beyond_a_hole_waits_for_the_hole() {
    let mut c = established();
    c.handle(ms(1), &with(peer(5, 0), Flags::FIN), b"world");
    assert_eq!(c.state(), State::Established);
    c.handle(ms(2), &peer(0, 0), b"hello");
    assert_eq!(c.state(), State::CloseWait);
    assert_eq!(read_all(&mut c), b"helloworld");
    assert!(c.is_eof());
    let acks = out(&mut c, ms(2));
    assert_eq!(acks.last().unwrap().0.ack, SeqNum(IRS + 12));
}

#[test]
fn stale_segments_from_the_past_are_acked_and_ignored() {
    let mut c = established();
    c.handle(ms(1), &peer(0, 0), b"0123456789");
    assert_eq!(read_all(&mut c), b"0123456789");
    out(&mut c, ms(50));
    // An old duplicate (already delivered) and a stray from far in the past.
    c.handle(ms(60), &peer(2, 0), b"23");
    assert_ack(&one(&mut c, ms(60)), 0, 10);
    assert_eq!(c.handle(ms(61), &peer(0u32.wrapping_sub(1 << 30), 0), b"old"), Handled::Dropped(DropReason::Unacceptable));
    assert_ack(&one(&mut c, ms(61)), 0, 10);
    // An old FIN from a previous incarnation neither closes nor delivers.
    assert_eq!(
        c.handle(ms(62), &with(peer(0u32.wrapping_sub(5000), 0), Flags::FIN), &[]),
        Handled::Dropped(DropReason::Unacceptable)
    );
    assert_eq!(c.state(), State::Established);
    assert_eq!(c.readable(), 0);
}

#[test]
fn time_wait_syn_reuse_by_timestamp_rfc6191() {
    let f = HandshakeFacts { flags: FACT_TS, ts_recent: 500, ..facts() };
    let mut ack = peer(0, 0);
    ack.options.timestamps = Some((500, 0));
    let mut c = accept_with(config(), f, &ack, &[]);
    c.shutdown(ms(0));
    out(&mut c, ms(0));
    let mut fin = with(peer(0, 1), Flags::FIN);
    fin.options.timestamps = Some((600, 0));
    c.handle(ms(5), &fin, &[]);
    assert_eq!(c.state(), State::TimeWait);
    // With timestamps, the SYN's sequence number does not matter; its TSval must be newer.
    let mut old = peer(0u32.wrapping_sub(100), 0);
    old.flags = Flags::SYN;
    old.options.timestamps = Some((600, 0));
    assert_eq!(c.handle(ms(6), &old, &[]), Handled::Dropped(DropReason::Syn));
    let mut new = old;
    new.options.timestamps = Some((601, 0));
    assert_eq!(c.handle(ms(7), &new, &[]), Handled::Dropped(DropReason::TimeWaitReuse));
}

#[test]
fn close_wait_still_probes_an_idle_peer() {
    let mut c = established();
    c.handle(ms(0), &with(peer(0, 0), Flags::FIN), &[]);
    c.handle_timeout(ms(40));
    assert_ack(&one(&mut c, ms(40)), 0, 1);
    assert_eq!(c.poll_timeout(), Some(secs(7200)));
    c.handle_timeout(secs(7200));
    let (h, _) = one(&mut c, secs(7200));
    assert_eq!((h.seq, h.ack), (SeqNum(ISS), SeqNum(IRS + 2)));
}

#[test]
fn fin_wait_2_is_bounded_only_after_close() {
    // close(): the orphan gives up on a peer that never sends its FIN (Linux tcp_fin_timeout).
    let mut c = established();
    c.close(ms(0));
    one(&mut c, ms(0));
    c.handle(ms(10), &peer(0, 1), &[]);
    assert_eq!(c.state(), State::FinWait2);
    assert_eq!(c.poll_timeout(), Some(ms(10) + Duration::from_secs(60)));
    c.handle_timeout(ms(10) + Duration::from_secs(60));
    assert_eq!(c.state(), State::Closed);
    none(&mut c, secs(61));
    // shutdown() is a half-close: the application may read for as long as the peer sends.
    let mut c = established();
    c.shutdown(ms(0));
    one(&mut c, ms(0));
    c.handle(ms(10), &peer(0, 1), &[]);
    c.handle_timeout(secs(3600));
    assert_eq!(c.state(), State::FinWait2);
    c.handle(secs(3600), &peer(0, 1), b"late reply");
    assert_eq!(read_all(&mut c), b"late reply");
}

#[test]
fn tail_loss_probe_recovers_a_lost_tail_before_the_rto() {
    let mut c = sack_sender();
    // An RTT sample first: 100 ms, so RTO = 300 ms and PTO = 2 * SRTT = 200 ms.
    c.send(b"x");
    one(&mut c, ms(0));
    c.handle(ms(100), &peer(0, 1), &[]);
    let mss = 1460u32;
    c.send(&vec![3u8; 5 * mss as usize]);
    assert_eq!(out(&mut c, ms(100)).len(), 5);
    // The peer got the first two segments only: the tail (3 segments) is lost.
    c.handle(ms(200), &peer(0, 1 + 2 * mss), &[]);
    assert_eq!(c.poll_timeout(), Some(ms(400)), "PTO = 2 * SRTT after the ACK");
    c.handle_timeout(ms(400));
    let (h, p) = one(&mut c, ms(400));
    // RFC 8985 7.3: no new data, so the last segment is sent again.
    assert_eq!((h.seq, p.len()), (SeqNum(ISS + 2 + 4 * mss), mss as usize));
    assert_eq!(c.stats().loss_probes, 1);
    // Its SACK exposes the hole; fast recovery fills it without any RTO.
    let mut a = peer(0, 1 + 2 * mss);
    a.options.sack.push(SeqNum(ISS + 2 + 4 * mss), SeqNum(ISS + 2 + 5 * mss));
    c.handle(ms(500), &a, &[]);
    c.handle(ms(500), &peer(0, 1 + 4 * mss), &[]);
    let _ = out(&mut c, ms(500));
    c.handle(ms(600), &peer(0, 1 + 5 * mss), &[]);
    assert_eq!(c.info().send_queued, 0);
    assert_eq!(c.stats().timeouts, 0, "no RTO fired");
}

// ------------------------------------------------------------------ rules pinned one by one

#[test]
fn initial_window_is_ten_segments_rfc6928() {
    let mut c = sack_sender();
    c.send(&vec![1u8; 20 * 1460]);
    let segs = out(&mut c, ms(0));
    assert_eq!(segs.len(), 10);
    assert!(segs.iter().all(|(_, p)| p.len() == 1460));
}

#[test]
fn sender_sws_avoidance_waits_for_half_the_largest_window() {
    // RFC 9293 3.8.6.2.1: with more queued than the window admits, a segment smaller than the
    // MSS goes only once it is at least half the largest window the peer offered.
    let mut ack = peer(0, 0);
    ack.window = 2000;
    let mut c = accept_with(Config { nagle: false, ..config() }, facts(), &ack, &[]);
    c.send(&vec![1u8; 5000]);
    // 540 bytes of window are left after a full segment: below half of 2000, held.
    let segs = out(&mut c, ms(0));
    assert_eq!(segs.iter().map(|(_, p)| p.len()).collect::<Vec<_>>(), [1460]);
    let acked = |n: u32| Header { window: 2000, ..peer(0, n) };
    // 100 bytes acknowledged: 640 bytes of window, still held.
    c.handle(ms(10), &acked(100), &[]);
    assert_eq!(out(&mut c, ms(10)).len(), 0);
    // 500 bytes acknowledged: 1040 bytes of window, at least half the largest: they go.
    c.handle(ms(11), &acked(500), &[]);
    let (_, p) = one(&mut c, ms(11));
    assert_eq!(p.len(), 1040);
}

#[test]
fn paws_ignores_a_ts_recent_idle_for_more_than_24_days() {
    // RFC 7323 5.5: after 24 days idle TS.Recent is invalid, so an older TSval is taken.
    let f = HandshakeFacts { flags: FACT_TS, ts_recent: 1000, ..facts() };
    let mut ack = peer(0, 0);
    ack.options.timestamps = Some((1000, 0));
    let cfg = Config { keepalive: Keepalive { enabled: false, ..Keepalive::default() }, ..config() };
    let mut c = accept_with(cfg, f, &ack, &[]);
    let mut old = peer(0, 0);
    old.options.timestamps = Some((998, 0));
    let day = 86_400u64;
    assert_eq!(c.handle(secs(24 * day), &old, b"a"), Handled::Dropped(DropReason::Paws));
    assert_eq!(c.handle(secs(24 * day + 1), &old, b"a"), Handled::Processed);
    assert_eq!(read_all(&mut c), b"a");
}

/// A connection with timestamps and SACK whose TS.Recent is `ts`, keepalive off.
fn ts_conn(ts: u32) -> Connection {
    let f = HandshakeFacts { flags: FACT_TS | FACT_SACK, ts_recent: ts, ..facts() };
    let cfg = Config { keepalive: Keepalive { enabled: false, ..Keepalive::default() }, ..config() };
    accept_with(cfg, f, &stamped(peer(0, 0), ts), &[])
}

fn stamped(mut h: Header, tsval: u32) -> Header {
    h.options.timestamps = Some((tsval, 0));
    h
}

#[test]
fn paws_lets_a_tsval_one_tick_behind_through_and_drops_two() {
    // RFC 7323 5.3 R1 with Linux's TCP_PAWS_WINDOW of one tick: a retransmission sent a
    // millisecond after a reordered original fills the hole first and moves TS.Recent on; the
    // original, one tick older, still delivers its data.
    let mut c = ts_conn(1000);
    // A hole at 0..10: 10..20 arrives, then the retransmission of 0..10 (TSval 1001).
    c.handle(ms(1), &stamped(peer(10, 0), 1000), b"0123456789");
    c.handle(ms(2), &stamped(peer(0, 0), 1001), b"abcdefghij");
    out(&mut c, ms(2));
    // The original of 20..30, sent before the retransmission (TSval 1000), arrives late.
    assert_eq!(c.handle(ms(3), &stamped(peer(20, 0), 1000), b"ABCDEFGHIJ"), Handled::Processed);
    assert_eq!(read_all(&mut c), b"abcdefghij0123456789ABCDEFGHIJ");
    // Two ticks behind is rejected, new data or not, and answered at once with a plain ACK.
    run_until(&mut c, ms(300));
    c.handle(ms(301), &stamped(peer(30, 0), 1003), b"k");
    assert_eq!(c.handle(ms(302), &stamped(peer(31, 0), 1001), b"l"), Handled::Dropped(DropReason::Paws));
    let (h, p) = one(&mut c, ms(302));
    assert!(p.is_empty());
    assert_eq!((h.ack, h.options.sack.len()), (SeqNum(IRS + 32), 0));
    // Far beyond the window (a blind or stray segment): answered only within the challenge
    // ACK limit (10 a second by default), as out-of-window data that passes PAWS is.
    let before = c.stats().challenge_acks;
    for t in 303..333 {
        assert_eq!(c.handle(ms(t), &stamped(peer(1 << 30, 0), 1001), b"x"), Handled::Dropped(DropReason::Paws));
        out(&mut c, ms(t));
    }
    let answered = c.stats().challenge_acks - before;
    assert!((1..=10).contains(&answered), "{answered} of 30 answered");
}

#[test]
fn a_paws_rejected_duplicate_is_reported_as_a_dsack() {
    // Linux's tcp_send_dupack after PAWS (RFC 2883 4): an original that arrives after its
    // retransmission, with a TSval more than a tick older, is answered with its DSACK block at
    // once, so the sender can undo the spurious retransmission. Not rate-limited: data is no
    // ACK loop.
    let mut c = ts_conn(1000);
    c.handle(ms(1), &stamped(peer(0, 0), 1005), b"0123456789");
    out(&mut c, ms(1));
    for t in 2..5 {
        assert_eq!(c.handle(ms(t), &stamped(peer(0, 0), 1000), b"0123456789"), Handled::Dropped(DropReason::Paws));
        let (h, _) = one(&mut c, ms(t));
        assert_eq!(h.ack, SeqNum(IRS + 11));
        assert_eq!(h.options.sack.as_slice(), &[(SeqNum(IRS + 1), SeqNum(IRS + 11))]);
    }
    // Straddling RCV.NXT: only the part received twice is the DSACK block; the rest waits for
    // a segment that passes PAWS.
    assert_eq!(c.handle(ms(6), &stamped(peer(5, 0), 1000), b"56789xyz"), Handled::Dropped(DropReason::Paws));
    let (h, _) = one(&mut c, ms(6));
    assert_eq!(h.options.sack.as_slice(), &[(SeqNum(IRS + 6), SeqNum(IRS + 11))]);
    assert_eq!(read_all(&mut c), b"0123456789");
}

#[test]
fn an_overtaken_duplicate_ack_passes_paws_and_an_old_ack_is_dropped_unanswered() {
    // Linux's tcp_disordered_ack: a duplicate ACK a few ticks behind TS.Recent (overtaken on
    // the path) still brings its SACK blocks; an older ACK below RCV.NXT is dropped and not
    // answered (Linux's PAWS_OLD_ACK).
    let mut c = Connection::accept(
        ms(0),
        Arc::new(Config { nagle: false, pacing: false, keepalive: Keepalive { enabled: false, ..Keepalive::default() }, ..config() }),
        &HandshakeFacts { flags: FACT_TS | FACT_SACK, ts_recent: 1000, ..facts() },
        local(),
        remote(),
        &stamped(peer(0, 0), 1000),
        &[],
    )
    .unwrap();
    c.send(&vec![1u8; 6 * 1448]);
    assert_eq!(out(&mut c, ms(0)).len(), 6);
    // An ACK of the first segment moves TS.Recent to 1010.
    c.handle(ms(40), &stamped(sack_ack(1, &[]), 1010), &[]);
    let base = c.stats().challenge_acks;
    // A duplicate ACK with news (segment 3 SACKed), TSval 1005: let through.
    let dup = stamped(sack_ack(1, &[(3, 4)]), 1005);
    assert_eq!(c.handle(ms(41), &dup, &[]), Handled::Processed);
    // One from further back than 1.2 RTOs (RTO 200 ms here: 240 ticks): a replay, dropped.
    assert_eq!(c.handle(ms(41), &stamped(sack_ack(1, &[(3, 4)]), 1010 - 300), &[]), Handled::Dropped(DropReason::Paws));
    out(&mut c, ms(41));
    // Another, closing the window (a window update): not disordered, dropped (and answered,
    // rate-limited).
    let mut closes = stamped(sack_ack(1, &[(3, 5)]), 1005);
    closes.window = 0;
    assert_eq!(c.handle(ms(42), &closes, &[]), Handled::Dropped(DropReason::Paws));
    out(&mut c, ms(42));
    // An ACK below RCV.NXT with an old TSval: dropped, not answered.
    let mut old = stamped(sack_ack(0, &[]), 1002);
    old.seq = SeqNum(IRS);
    assert_eq!(c.handle(ms(43), &old, &[]), Handled::Dropped(DropReason::Paws));
    none(&mut c, ms(43));
    assert_eq!(c.stats().challenge_acks - base, 2, "the replay and the window update answered, the old ACK not");
}

#[test]
fn a_retransmission_timeout_keeps_the_sack_scoreboard_unless_the_receiver_reneged() {
    // As Linux (RFC 2018 8 and RFC 6675 5.1 leave the choice): after a timeout what the peer
    // SACKed is not sent again, unless the first segment itself is SACKed yet unacknowledged
    // (the receiver reneged), when everything is.
    let mss = 1460u32;
    let index = |segs: &[(Instant, Header, Vec<u8>)]| segs.iter().map(|(_, h, _)| (h.seq.0 - ISS - 1) / mss).collect::<Vec<_>>();
    let rto_at = ms(12) + Duration::from_micros(500) + Duration::from_secs(1);
    for (blocks, after_ack) in [(&[(2, 3)][..], [1, 3]), (&[(0, 1), (2, 3)][..], [1, 2])] {
        let mut c = sack_sender();
        c.send(&vec![7u8; 4 * mss as usize]);
        assert_eq!(out(&mut c, ms(0)).len(), 4);
        // SACKs 10 ms later; RACK resends the first hole 2.5 ms after that (the reordering
        // window), and it is lost again, with everything else not SACKed.
        c.handle(ms(10), &sack_ack(0, blocks), &[]);
        out(&mut c, ms(10));
        let fast = run_until(&mut c, ms(20));
        assert_eq!(c.stats().fast_recoveries, 1);
        assert_eq!(index(&fast), [blocks.len() as u32 - 1], "{blocks:?}");
        // The timeout: one segment, the loss window.
        let timed_out = run_until(&mut c, rto_at);
        assert_eq!((timed_out.len(), timed_out[0].0), (1, rto_at));
        assert_eq!(index(&timed_out), [0], "{blocks:?}");
        assert_eq!(c.stats().timeouts, 1);
        // Segment 0 acknowledged: two segments of window for what is lost.
        let t = rto_at + Duration::from_millis(10);
        c.handle(t, &peer(0, mss), &[]);
        let resent: Vec<(Instant, Header, Vec<u8>)> = out(&mut c, t).into_iter().map(|(h, p)| (t, h, p)).collect();
        assert_eq!(index(&resent), after_ack, "{blocks:?}");
    }
}

#[test]
fn a_lone_segment_probe_waits_for_the_delayed_ack_too() {
    // RFC 8985 7.2: with one segment in flight, PTO = 2 * SRTT + WCDelAckT (200 ms).
    let mut c = sack_sender();
    c.send(b"x");
    one(&mut c, ms(0));
    c.handle(ms(50), &peer(0, 1), &[]);
    c.send(b"y");
    one(&mut c, ms(50));
    // SRTT 50 ms, RTO 250 ms: 2 * 50 + 200 = 300 ms is not sooner, so the RTO is armed
    // (without WCDelAckT the probe would fire at 150 ms).
    assert_eq!(c.poll_timeout(), Some(ms(300)));
}
