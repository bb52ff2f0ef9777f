//! The endpoint: demux, creation from facts, resets for strangers, wheel-driven timers with
//! keepalive deadlines, release and slot reuse.

use core::time::Duration;
use std::net::SocketAddr;

use super::super::endpoint::{AcceptError, Disposition, DropReason, Endpoint, Exported, ImportError, ProbeAnswer, ProbeAnswers, TakenAnswer, Transmit};
use super::*;

fn client(i: u32) -> SocketAddr {
    SocketAddr::new([10, (i >> 16) as u8, (i >> 8) as u8, i as u8].into(), 40000)
}

fn ack_from(i: u32) -> Header {
    let mut h = peer(0, 0);
    h.src_port = client(i).port();
    h
}

fn drain(ep: &mut Endpoint, now: Instant) -> Vec<(Transmit, Header, Vec<u8>)> {
    let mut v = Vec::new();
    let mut buf = [0u8; 2048];
    while let Some(t) = ep.poll_transmit(now, &mut buf) {
        let (h, p) = segment::parse(&buf[..t.len]).unwrap();
        v.push((t, h, p.to_vec()));
    }
    v
}

/// Serve the timers as a driver would, waking at each [`Endpoint::poll_timeout`], until a
/// wake sends something (before `limit`): when, and what.
fn next_sent(ep: &mut Endpoint, mut now: Instant, limit: Instant) -> (Instant, Vec<(Transmit, Header, Vec<u8>)>) {
    while let Some(t) = ep.poll_timeout()
        && t.max(now) <= limit
    {
        now = t.max(now);
        ep.handle_timeout(now);
        let out = drain(ep, now);
        if !out.is_empty() {
            return (now, out);
        }
    }
    panic!("nothing sent by {limit:?}");
}

fn all_events(ep: &mut Endpoint) -> Vec<(ConnectionHandle, Event)> {
    std::iter::from_fn(|| ep.poll_event()).collect()
}

#[test]
fn accept_demux_reset_and_limits() {
    let mut ep = Endpoint::new(config(), 2);
    let h0 = ep.accept(ms(0), facts(), local(), client(1), &ack_from(1), b"hi").unwrap();
    let h1 = ep.accept(ms(0), facts(), local(), client(2), &ack_from(2), &[]).unwrap();
    assert_ne!(h0.slot(), h1.slot());
    assert_eq!(ep.accept(ms(0), facts(), local(), client(1), &ack_from(1), &[]), Err(AcceptError::Exists));
    assert_eq!(ep.accept(ms(0), facts(), local(), client(3), &ack_from(3), &[]), Err(AcceptError::Full));
    let bad = peer(0, 5);
    let mut ep2 = Endpoint::new(config(), 2);
    assert_eq!(ep2.accept(ms(0), facts(), local(), client(1), &bad, &[]), Err(AcceptError::AckMismatch));
    assert_eq!(ep.handle(ms(1), local(), client(2), &ack_from(2), b"yo"), Disposition::Delivered(h1));
    // A stranger: Unknown, then the RFC 9293 3.10.7.1 reset on request.
    assert_eq!(ep.handle(ms(1), local(), client(9), &ack_from(9), b"?"), Disposition::Unknown);
    ep.reset_unknown(local(), client(9), &ack_from(9), 1);
    let out = drain(&mut ep, ms(1));
    assert_eq!(out[0].0.handle, None);
    assert_eq!(out[0].0.remote, client(9));
    assert_eq!(out[0].1.flags, Flags::RST);
    let readable: Vec<_> = all_events(&mut ep).into_iter().filter(|e| e.1 == Event::Readable).map(|e| e.0).collect();
    assert_eq!(readable, [h0, h1]);
    let mut buf = [0u8; 8];
    let n = ep.connection_mut(h0).unwrap().recv(&mut buf);
    assert_eq!(&buf[..n], b"hi");
}

#[test]
fn close_releases_the_slot_for_reuse() {
    let mut ep = Endpoint::new(config(), 10);
    let h = ep.accept(ms(0), facts(), local(), client(1), &ack_from(1), &[]).unwrap();
    ep.connection_mut(h).unwrap().abort(ms(1));
    let out = drain(&mut ep, ms(1));
    assert!(out[0].1.flags.rst());
    let ev = all_events(&mut ep);
    assert_eq!(ev, [(h, Event::Closed(CloseReason::Aborted)), (h, Event::Released { local: local(), remote: client(1) })]);
    assert!(ep.is_empty());
    assert_eq!(ep.handle(ms(2), local(), client(1), &ack_from(1), &[]), Disposition::Unknown);
    let h2 = ep.accept(ms(3), facts(), local(), client(2), &ack_from(2), &[]).unwrap();
    assert_eq!(h2.slot(), h.slot(), "slot reused");
}

#[test]
fn a_slot_is_not_reused_before_its_released_event_is_polled() {
    let mut ep = Endpoint::new(config(), 10);
    let a = ep.accept(ms(0), facts(), local(), client(1), &ack_from(1), &[]).unwrap();
    ep.connection_mut(a).unwrap().abort(ms(1));
    drain(&mut ep, ms(1));
    // Closed and Released are queued for `a`, not yet polled: a new connection gets another slot.
    let b = ep.accept(ms(2), facts(), local(), client(2), &ack_from(2), &[]).unwrap();
    assert_ne!(a.slot(), b.slot());
    let ev = all_events(&mut ep);
    assert!(ev.iter().all(|(h, _)| *h == a), "{ev:?}");
    let c = ep.accept(ms(3), facts(), local(), client(3), &ack_from(3), &[]).unwrap();
    assert_eq!(c.slot(), a.slot());
    assert!(all_events(&mut ep).iter().all(|(h, e)| *h != c || !matches!(e, Event::Closed(_) | Event::Released { .. })));
}

#[test]
fn time_wait_through_the_wheel_and_syn_reuse() {
    let mut ep = Endpoint::new(config(), 10);
    let h = ep.accept(ms(0), facts(), local(), client(1), &ack_from(1), &[]).unwrap();
    ep.connection_mut(h).unwrap().shutdown(ms(0));
    drain(&mut ep, ms(0));
    ep.handle(ms(5), local(), client(1), &with(ack_from(1), Flags::FIN), &[]);
    // Our FIN unacknowledged: CLOSING; now the peer acknowledges it.
    assert_eq!(ep.connection(h).unwrap().state(), State::Closing);
    let mut a = ack_from(1);
    a.seq = SeqNum(IRS + 2);
    a.ack = SeqNum(ISS + 2);
    ep.handle(ms(6), local(), client(1), &a, &[]);
    assert_eq!(ep.connection(h).unwrap().state(), State::TimeWait);
    // The peer's FIN again (it lost our ACK): re-ACKed and counted.
    ep.handle(ms(6), local(), client(1), &with(ack_from(1), Flags::FIN), &[]);
    drain(&mut ep, ms(6));
    assert_eq!(ep.time_wait_fin_reacked, 1, "the second FIN was a retransmission");
    assert!(ep.is_parked(h), "TIME_WAIT waits folded");
    assert_eq!(ep.infos().next().map(|(_, i)| i.state), Some(State::TimeWait));
    // 2*MSL later, via the wheel.
    let mut t = ep.poll_timeout().unwrap();
    while t < ms(6) + Duration::from_secs(60) {
        ep.handle_timeout(t);
        drain(&mut ep, t);
        t = ep.poll_timeout().unwrap();
    }
    assert!(t <= ms(6) + Duration::from_secs(60));
    ep.handle_timeout(ms(6) + Duration::from_secs(60));
    drain(&mut ep, ms(6) + Duration::from_secs(60));
    let ev = all_events(&mut ep);
    assert!(ev.contains(&(h, Event::Closed(CloseReason::Normal))), "{ev:?}");
    assert!(ev.iter().any(|e| matches!(e.1, Event::Released { .. })));
    // A reused tuple in TIME_WAIT: the new SYN frees it at once.
    time_wait_by_our_close(&mut ep, secs(100));
    let syn = newer_syn();
    assert_eq!(ep.handle(secs(101), local(), client(1), &syn, &[]), Disposition::Dropped(DropReason::TimeWaitReuse));
    assert_eq!(ep.handle(secs(101), local(), client(1), &syn, &[]), Disposition::Unknown);
    drain(&mut ep, secs(101));
    assert!(all_events(&mut ep).iter().any(|e| matches!(e.1, Event::Released { .. })));
    assert!(ep.is_empty());
}

/// Client 1's connection, closed by us first and then by its FIN: in TIME_WAIT.
fn time_wait_by_our_close(ep: &mut Endpoint, now: Instant) -> ConnectionHandle {
    let h = ep.accept(now, facts(), local(), client(1), &ack_from(1), &[]).unwrap();
    ep.connection_mut(h).unwrap().shutdown(now);
    drain(ep, now);
    let mut fin = with(ack_from(1), Flags::FIN);
    fin.ack = SeqNum(ISS + 2);
    ep.handle(now, local(), client(1), &fin, &[]);
    h
}

/// Client 1's connection in TIME_WAIT (at 1 ms, folded), ended at 2 ms by the SYN of a new
/// incarnation (RFC 6191) and released, its `Released` event polled: its slot is held.
fn time_wait_ended_by_a_new_syn(ep: &mut Endpoint) -> ConnectionHandle {
    let old = time_wait_by_our_close(ep, ms(1));
    drain(ep, ms(1));
    assert_eq!(ep.handle(ms(2), local(), client(1), &newer_syn(), &[]), Disposition::Dropped(DropReason::TimeWaitReuse));
    drain(ep, ms(2));
    assert!(all_events(ep).iter().any(|&(h, ref e)| h == old && matches!(e, Event::Released { .. })));
    old
}

/// Client 1's SYN for a new incarnation of its tuple (RFC 6191: its sequence number is past
/// the old one's).
fn newer_syn() -> Header {
    let mut syn = ack_from(1);
    syn.flags = Flags::SYN;
    syn.seq = SeqNum(IRS + 1_000_000);
    syn
}

#[test]
fn a_new_incarnation_takes_the_slot_its_time_wait_left_and_no_other_connection_does() {
    // RFC 6191 reuse: the TIME_WAIT a new SYN ended leaves its slot, once released, to the
    // tuple's next connection, so that a flow table naming slots (XDP's FLOWS) names the new
    // connection already. Meanwhile the slot counts as no connection and other tuples take
    // other slots.
    let mut ep = Endpoint::new(config(), 3);
    let old = time_wait_ended_by_a_new_syn(&mut ep);
    assert_eq!((ep.len(), ep.reserved_slots()), (0, 1));
    let stranger = ep.accept(ms(3), facts(), local(), client(2), &ack_from(2), &[]).unwrap();
    assert_ne!(stranger.slot(), old.slot(), "another tuple took the held slot");
    let again = ep.accept(ms(3), facts(), local(), client(1), &ack_from(1), &[]).unwrap();
    assert_eq!(again.slot(), old.slot());
    assert_eq!((ep.len(), ep.reserved_slots()), (2, 0));
    // The new incarnation is found by its slot and by the index, and counts against the limit.
    let d = ep.handle_hinted(ms(4), local(), client(1), Some(old.slot()), &ack_from(1), &[], &mut |_, _| 0);
    assert_eq!(d, Disposition::Delivered(again));
    assert_eq!(ep.demux_hinted, 1);
    ep.accept(ms(4), facts(), local(), client(3), &ack_from(3), &[]).unwrap();
    assert_eq!(ep.accept(ms(4), facts(), local(), client(4), &ack_from(4), &[]), Err(AcceptError::Full));

    // A slot held so is still one an import may need (a takeover names slots): it takes it.
    let mut new = Endpoint::new(config(), 3);
    let held = time_wait_ended_by_a_new_syn(&mut new);
    assert_eq!(new.reserved_slots(), 1);
    let mut other = Endpoint::new(config(), 3);
    let moving = other.accept(ms(0), facts(), local(), client(7), &ack_from(7), &[]).unwrap();
    drain(&mut other, ms(0));
    let e = other.export(moving).unwrap();
    assert_eq!(e.slot, held.slot());
    assert_eq!(new.import(&e).unwrap().slot(), held.slot());
    assert_eq!((new.len(), new.reserved_slots()), (1, 0));
    // The tuple's next connection then takes a free slot like any other.
    let next = new.accept(ms(3), facts(), local(), client(1), &ack_from(1), &[]).unwrap();
    assert_ne!(next.slot(), held.slot());
}

#[test]
fn a_full_table_takes_a_held_slot_rather_than_grow_past_its_limit() {
    // Slots held for new incarnations count as no connection; a table at its limit with none
    // free takes the oldest held one rather than a slot past the limit (the driver's tables,
    // a queue's range of FLOWS values, end there).
    let mut ep = Endpoint::new(config(), 2);
    let old = time_wait_ended_by_a_new_syn(&mut ep);
    assert_eq!((ep.len(), ep.reserved_slots()), (0, 1));
    let b = ep.accept(ms(3), facts(), local(), client(2), &ack_from(2), &[]).unwrap();
    assert_ne!(b.slot(), old.slot());
    let c = ep.accept(ms(3), facts(), local(), client(3), &ack_from(3), &[]).unwrap();
    assert_eq!(c.slot(), old.slot(), "a slot past the limit");
    assert_eq!((ep.len(), ep.reserved_slots()), (2, 0));
    assert_eq!(ep.accept(ms(3), facts(), local(), client(1), &ack_from(1), &[]), Err(AcceptError::Full));
}

#[test]
fn slots_held_for_new_incarnations_are_bounded_and_the_oldest_go_back_first() {
    // A churn of reused tuples whose new incarnations never complete (their clients gave up)
    // holds at most MAX_RESERVED slots; the slab grows no further than that.
    let n = 4096 + 10;
    let mut ep = Endpoint::new(config(), n + 1);
    let mut held = Vec::new();
    for i in 0..n {
        let h = ep.accept(ms(0), facts(), local(), client(i), &ack_from(i), &[]).unwrap();
        ep.connection_mut(h).unwrap().shutdown(ms(0));
        drain(&mut ep, ms(0));
        let mut fin = with(ack_from(i), Flags::FIN);
        fin.ack = SeqNum(ISS + 2);
        ep.handle(ms(0), local(), client(i), &fin, &[]);
        drain(&mut ep, ms(0));
        let mut syn = newer_syn();
        syn.src_port = client(i).port();
        assert_eq!(ep.handle(ms(1), local(), client(i), &syn, &[]), Disposition::Dropped(DropReason::TimeWaitReuse));
        drain(&mut ep, ms(1));
        all_events(&mut ep);
        held.push(h.slot());
    }
    assert_eq!((ep.len(), ep.reserved_slots()), (0, 4096));
    // The ten oldest went back to the free list: a stranger takes one of them (LIFO: the last
    // freed), the first client's next connection no longer finds its own.
    let stranger = ep.accept(ms(2), facts(), local(), client(n + 1), &ack_from(n + 1), &[]).unwrap();
    assert!(held[..10].contains(&stranger.slot()), "{}", stranger.slot());
    let last = ep.accept(ms(2), facts(), local(), client(n - 1), &ack_from(n - 1), &[]).unwrap();
    assert_eq!(last.slot(), held[n as usize - 1], "the newest hold is kept");
    assert_eq!(ep.reserved_slots(), 4095);
}

#[test]
fn a_slot_hint_is_taken_only_where_the_slot_holds_the_tuple() {
    // What XDP's flow table names with a segment (see `Endpoint::handle_hinted`): right, another
    // connection's slot, a free or missing one, or none. The answer is the index's every time.
    let n = 6u32;
    for park in [false, true] {
        let mut ep = Endpoint::new(config(), n + 2);
        ep.set_parking(park);
        let handles: Vec<_> = (0..n).map(|i| ep.accept(ms(0), facts(), local(), client(i), &ack_from(i), &[]).unwrap()).collect();
        drain(&mut ep, ms(0));
        assert_eq!(ep.parked(), if park { n as usize } else { 0 });
        let hints = [None, Some(0), Some(n - 1), Some(n), Some(n + 100), Some(u32::MAX)];
        for (i, &h) in handles.iter().enumerate() {
            let hinted = ep.demux_hinted;
            for hint in hints.into_iter().chain([Some(h.slot())]) {
                let d = ep.handle_hinted(ms(1), local(), client(i as u32), hint, &ack_from(i as u32), &[], &mut |_, _| 0);
                assert_eq!(d, Disposition::Delivered(h), "connection {i}, hint {hint:?}, parked {park}");
            }
            let right = 1 + hints.iter().filter(|&&x| x == Some(h.slot())).count() as u64;
            assert_eq!(ep.demux_hinted - hinted, right, "connection {i}: only a right hint is taken");
            drain(&mut ep, ms(1));
        }
        for hint in hints.into_iter().chain(handles.iter().map(|h| Some(h.slot()))) {
            let d = ep.handle_hinted(ms(1), local(), client(n + 7), hint, &ack_from(n + 7), &[], &mut |_, _| 0);
            assert_eq!(d, Disposition::Unknown, "a stranger, hint {hint:?}");
        }
    }
    // A TIME_WAIT a new SYN ended: its slot lives on until released, its tuple is free at once.
    // A hint naming that slot (XDP's entry for the tuple stays, kept for the new incarnation)
    // finds nothing, as the index does; before, the slot still held the tuple.
    let mut ep = Endpoint::new(config(), 4);
    let h = time_wait_by_our_close(&mut ep, ms(1));
    assert_eq!(ep.connection(h).unwrap().state(), State::TimeWait);
    let syn = newer_syn();
    let reuse = ep.handle_hinted(ms(2), local(), client(1), Some(h.slot()), &syn, &[], &mut |_, _| 0);
    assert_eq!(reuse, Disposition::Dropped(DropReason::TimeWaitReuse));
    assert!(ep.connection(h).is_some(), "the old incarnation is not released yet");
    assert_eq!(ep.handle_hinted(ms(2), local(), client(1), Some(h.slot()), &syn, &[], &mut |_, _| 0), Disposition::Unknown);
    assert_eq!(ep.lookup(local(), client(1)), None);
    // The new incarnation, in another slot, is found by its own hint and by a stale one.
    let h2 = ep.accept(ms(3), facts(), local(), client(1), &ack_from(1), &[]).unwrap();
    assert_ne!(h2, h);
    for hint in [Some(h.slot()), Some(h2.slot()), None] {
        let d = ep.handle_hinted(ms(3), local(), client(1), hint, &ack_from(1), &[], &mut |_, _| 0);
        assert_eq!(d, Disposition::Delivered(h2), "hint {hint:?}");
    }
}

#[test]
fn idle_connections_cost_one_wheel_entry_and_only_quiet_peers_are_probed() {
    let n = 2000u32;
    let mut ep = Endpoint::new(config(), n);
    for i in 0..n {
        ep.accept(ms(0), facts(), local(), client(i), &ack_from(i), &[]).unwrap();
    }
    drain(&mut ep, ms(0));
    assert_eq!(ep.armed_timers(), n as usize);
    assert_eq!(ep.parked(), n as usize, "idle connections are folded, no heap");
    // Half of the peers are heard from at 3600 s (an ACK each): their keepalive deadline moves
    // to 3600 + 7200 s, still one wheel entry each.
    for i in (0..n).filter(|i| i % 2 == 0) {
        assert!(matches!(ep.handle(secs(3600), local(), client(i), &ack_from(i), &[]), Disposition::Delivered(_)));
    }
    assert!(drain(&mut ep, secs(3600)).is_empty());
    assert_eq!(ep.armed_timers(), n as usize);
    // The first deadline comes: the quiet half is probed (at SND.NXT - 1, no data), all in one
    // wake, the others not. Keepalive deadlines share coarse ticks: never early, late by under
    // 1/32 of the time they were set ahead (225 s of 7200). The wheel may wake early too (a
    // coarse slot of its own); early wakes do nothing.
    let (t, probes) = next_sent(&mut ep, secs(3600), secs(7200 + 225));
    assert!(t >= secs(7200), "{t:?}");
    assert_eq!(probes.len(), n as usize / 2);
    assert!(probes.iter().all(|(t, h, p)| t.handle.unwrap().slot() % 2 == 1 && p.is_empty() && h.seq == SeqNum(ISS)));
    // Their next probe is an interval later (75 s, late by under 75/32 s), again in one wake.
    let interval = Duration::from_secs(75);
    let (retry, probes) = next_sent(&mut ep, t, t + interval + interval / 32);
    assert!(retry >= t + interval, "{retry:?}");
    assert_eq!(probes.len(), n as usize / 2);
    assert!(probes.iter().all(|(t, _, _)| t.handle.unwrap().slot() % 2 == 1));
    // The peers heard from at 3600 s are probed 7200 s after that, once each.
    let heard_at = secs(3600 + 7200 + 225);
    ep.handle_timeout(heard_at);
    let heard: Vec<_> = drain(&mut ep, heard_at).into_iter().filter(|(t, _, _)| t.handle.unwrap().slot() % 2 == 0).collect();
    assert_eq!(heard.len(), n as usize / 2);
    assert!(heard.iter().all(|(_, h, p)| p.is_empty() && h.seq == SeqNum(ISS) && !h.flags.rst()));
}

#[test]
fn an_ack_stretched_past_64_kb_is_overdue_until_it_is_sent() {
    use engine_common::handshake::FACT_WSCALE;
    // A window wide enough to take more than 64 KB unacknowledged.
    let mut ep = Endpoint::new(Config { recv_buffer: 256 * 1024, ..config() }, 4);
    let scaled = HandshakeFacts { snd_wscale: 7, rcv_wscale: 7, flags: FACT_WSCALE, ..facts() };
    let h = ep.accept(ms(0), scaled, local(), client(1), &ack_from(1), &[]).unwrap();
    drain(&mut ep, ms(0));
    let seg = [7u8; 1448];
    let mut off = 0;
    let mut arrive = |ep: &mut Endpoint| {
        let mut d = peer(off, 0);
        d.src_port = client(1).port();
        assert_eq!(ep.handle(ms(1), local(), client(1), &d, &seg), Disposition::Delivered(h));
        off += seg.len() as u32;
    };
    // 45 full segments, 65,160 bytes: an ACK is owed (every second one asks for it) but not
    // overdue; a driver reading a batch sends it with the batch's other output.
    for _ in 0..45 {
        arrive(&mut ep);
    }
    assert!(!ep.acks_overdue());
    // The 46th makes 66,608 bytes since the last ACK: overdue until a transmit sends it.
    arrive(&mut ep);
    assert!(ep.acks_overdue());
    let out = drain(&mut ep, ms(1));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1.ack, SeqNum(IRS + 1) + off);
    assert!(!ep.acks_overdue());
}

#[test]
fn keepalive_deadlines_spread_over_a_second_are_probed_in_a_few_wakes_none_early() {
    let n = 1000u32;
    let idle = Duration::from_secs(10);
    let keepalive = Keepalive { idle, interval: Duration::from_secs(5), ..Keepalive::default() };
    let mut ep = Endpoint::new(Config { keepalive, ..config() }, n);
    // Deadlines 1 ms apart, over a second.
    for i in 0..n {
        ep.accept(ms(i as u64), facts(), local(), client(i), &ack_from(i), &[]).unwrap();
        drain(&mut ep, ms(i as u64));
    }
    let (mut now, mut wakes, mut probed) = (ms(n as u64), 0, 0);
    let end = ms(n as u64) + idle + idle / 32;
    while probed < n {
        let (t, out) = next_sent(&mut ep, now, end);
        for (tx, h, p) in &out {
            let std::net::IpAddr::V4(ip) = tx.remote.ip() else { panic!() };
            let i = u32::from(ip) & 0xff_ffff;
            // RFC 1122 4.2.3.6: no sooner than the idle time after the peer was last heard.
            assert!(t >= ms(i as u64) + idle, "probe of {i} at {t:?}");
            assert!(p.is_empty() && h.seq == SeqNum(ISS));
        }
        probed += out.len() as u32;
        wakes += 1;
        now = t;
    }
    // 128 ms ticks (10 s / 64, to a power of two): the 8 that 10.000-10.999 s round up to
    // (79-86 times 128 ms), not 1,000 wakes.
    assert_eq!(wakes, 8);
}

#[test]
fn due_timers_are_served_in_batches_oldest_first_each_once() {
    let n = 1000u32;
    // Keepalive after 100 ms idle: deadlines that near keep the wheel's own 1 ms ticks.
    let keepalive = Keepalive { idle: Duration::from_millis(100), interval: Duration::from_millis(50), ..Keepalive::default() };
    let mut ep = Endpoint::new(Config { keepalive, ..config() }, n);
    // Keepalive deadlines 1 ms apart, in the order of the slots.
    let handles: Vec<_> = (0..n).map(|i| ep.accept(ms(i as u64), facts(), local(), client(i), &ack_from(i), &[]).unwrap()).collect();
    drain(&mut ep, ms(n as u64));
    // A driver that comes back a second after the last deadline, serving 100 a call.
    let late = ms(100 + 1000) + Duration::from_millis(n as u64);
    assert_eq!(ep.handle_timeouts(late, 100), n as usize - 100);
    assert_eq!(ep.timers_waiting(), n as usize - 100);
    assert_eq!(ep.poll_timeout(), Some(Instant::ZERO), "the rest is due now");
    let first = drain(&mut ep, late);
    assert_eq!(first.len(), 100);
    let oldest: Vec<_> = handles[..100].iter().map(|h| h.slot()).collect();
    assert!(first.iter().all(|(t, h, p)| oldest.contains(&t.handle.unwrap().slot()) && p.is_empty() && h.seq == SeqNum(ISS)));
    // A peer heard from while its timer waits: its idle time starts again, no probe.
    let heard = handles[500];
    assert_eq!(ep.handle(late, local(), client(500), &ack_from(500), &[]), Disposition::Delivered(heard));
    assert!(drain(&mut ep, late).is_empty());
    let mut probed: std::collections::HashSet<u32> = first.iter().map(|(t, _, _)| t.handle.unwrap().slot()).collect();
    loop {
        let left = ep.handle_timeouts(late, 100);
        let out = drain(&mut ep, late);
        assert!(out.len() <= 100);
        for (t, _, _) in out {
            assert!(probed.insert(t.handle.unwrap().slot()), "one probe per connection");
        }
        if left == 0 {
            break;
        }
    }
    assert_eq!(probed.len(), n as usize - 1);
    assert!(!probed.contains(&heard.slot()));
    assert_eq!(ep.timers_waiting(), 0);
    // Next: the probes' interval, counted from when each was sent (late), not from its
    // deadline.
    let next = ep.poll_timeout().unwrap();
    assert!(next > late, "{next:?}");
    ep.handle_timeout(late + Duration::from_millis(49));
    assert!(drain(&mut ep, late + Duration::from_millis(49)).is_empty(), "no probe before its interval");
    ep.handle_timeout(late + Duration::from_millis(50));
    assert_eq!(drain(&mut ep, late + Duration::from_millis(50)).len(), n as usize - 1);
}

#[test]
fn idle_connections_park_and_unfold_on_traffic_calls_and_timers() {
    let v6_client: SocketAddr = "[fd00:5e::2]:40001".parse().unwrap();
    let v6_local: SocketAddr = "[fd00:5e::1]:80".parse().unwrap();
    let mut ep = Endpoint::new(config(), 100);
    let handles: Vec<_> = (0..10).map(|i| ep.accept(ms(0), facts(), local(), client(i), &ack_from(i), &[]).unwrap()).collect();
    let mut v6_ack = peer(0, 0);
    v6_ack.src_port = v6_client.port();
    let h6 = ep.accept(ms(0), facts(), v6_local, v6_client, &v6_ack, &[]).unwrap();
    drain(&mut ep, ms(0));
    // Quiescent after the handshake: all folded (each says so, once, for whoever counts its
    // memory), keepalive still armed, tuples still found.
    let mut folded: Vec<_> = handles.iter().chain([&h6]).map(|&h| (h, Event::Parked)).collect();
    let mut events = all_events(&mut ep);
    folded.sort_by_key(|e| e.0.slot());
    events.sort_by_key(|e| e.0.slot());
    assert_eq!(events, folded);
    assert_eq!(ep.parked(), 11);
    assert_eq!(ep.armed_timers(), 11);
    assert!(ep.live_connections().next().is_none());
    assert_eq!(ep.lookup(local(), client(3)), Some(handles[3]));
    assert_eq!(ep.lookup(v6_local, v6_client), Some(h6));
    assert_eq!(ep.accept(ms(1), facts(), local(), client(3), &ack_from(3), &[]), Err(AcceptError::Exists));
    let infos: Vec<_> = ep.infos().collect();
    assert_eq!(infos.len(), 11);
    let (_, v6_info) = infos.iter().find(|(h, _)| *h == h6).unwrap();
    assert_eq!((v6_info.local, v6_info.remote, v6_info.state), (v6_local, v6_client, State::Established));
    assert!(infos.iter().any(|(h, i)| *h == handles[7] && i.remote == client(7) && i.local == local()));

    // A request to one of them: unfolded, delivered; answered, acknowledged: folded again.
    let h = handles[3];
    assert_eq!(ep.handle(ms(10), local(), client(3), &ack_from(3), b"ping"), Disposition::Delivered(h));
    assert!(!ep.is_parked(h));
    assert_eq!(ep.parked(), 10);
    let mut buf = [0u8; 8];
    let conn = ep.connection_mut(h).unwrap();
    assert_eq!(conn.recv(&mut buf), 4);
    conn.send(b"pong");
    let out = drain(&mut ep, ms(11));
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].1.ack, out[0].2.as_slice()), (SeqNum(IRS + 1 + 4), &b"pong"[..]));
    assert!(!ep.is_parked(h), "the response is in flight");
    let mut ack = peer(4, 4);
    ack.src_port = client(3).port();
    assert_eq!(ep.handle(ms(20), local(), client(3), &ack, &[]), Disposition::Delivered(h));
    drain(&mut ep, ms(20));
    let events = all_events(&mut ep);
    assert!(events.iter().all(|(_, e)| matches!(e, Event::Readable | Event::Writable | Event::Parked)), "{events:?}");
    assert_eq!(events.last(), Some(&(h, Event::Parked)), "folded again, after its other news");
    assert!(ep.is_parked(h));
    assert_eq!(ep.parked(), 11);
    let info = ep.infos().find(|(x, _)| *x == h).unwrap().1;
    assert_eq!((info.stats.bytes_received, info.stats.bytes_acked), (4, 4));

    // An application call unfolds it too; its own keepalive settings survive folding again.
    let short = Keepalive { idle: Duration::from_secs(60), ..Keepalive::default() };
    ep.connection_mut(handles[5]).unwrap().set_keepalive(short);
    assert!(!ep.is_parked(handles[5]));
    assert!(drain(&mut ep, ms(30)).is_empty());
    assert!(ep.is_parked(handles[5]));
    // Due 60 s after it was last heard from; coarse, under 60/32 s late.
    let t = secs(62);
    ep.handle_timeout(t);
    let probes = drain(&mut ep, t);
    assert_eq!(probes.len(), 1);
    assert_eq!(probes[0].0.remote, client(5));
    assert!(ep.is_parked(handles[5]), "a probe is owed nothing: folded again");

    // Nobody answers it: after its probes it is reset and released (unfolded for each probe).
    let mut out = Vec::new();
    let mut events = Vec::new();
    while let Some(t) = ep.poll_timeout()
        && t <= secs(3600)
    {
        ep.handle_timeout(t);
        out.extend(drain(&mut ep, t));
        events.extend(all_events(&mut ep));
    }
    assert!(out.iter().all(|(t, _, _)| t.remote == client(5)), "{out:?}");
    assert_eq!(out.len(), 9 + 1, "the other nine of its ten probes, then the reset");
    assert!(out.last().unwrap().1.flags.rst());
    assert!(events.iter().any(|(h, e)| *h == handles[5] && matches!(e, Event::Released { .. })));
    assert_eq!((ep.len(), ep.parked()), (10, 10));

    // Keepalive: the parked ones are probed at their (coarse) deadline, answered, folded again.
    let t = secs(7200 + 225);
    ep.handle_timeout(t);
    let probes = drain(&mut ep, t);
    assert_eq!(probes.len(), 10);
    assert!(probes.iter().all(|(_, h, p)| p.is_empty() && h.flags == Flags::ACK));
    assert!(all_events(&mut ep).is_empty(), "probed in their slots: never unfolded for it");
    for (tx, probe, _) in &probes {
        let off = if tx.remote == client(3) { 4 } else { 0 };
        let mut answer = peer(off, off);
        answer.src_port = tx.remote.port();
        answer.dst_port = tx.local.port();
        assert_eq!(answer.ack, probe.seq + 1);
        let h = ep.lookup(tx.local, tx.remote).unwrap();
        assert_eq!(ep.handle(t, tx.local, tx.remote, &answer, &[]), Disposition::Delivered(h));
        assert!(ep.is_parked(h), "an answer is taken in the parked slot: never unfolded for it");
    }
    assert!(drain(&mut ep, t).is_empty(), "an answer is owed nothing");
    assert!(all_events(&mut ep).is_empty(), "and the connections never left their slots");
    assert_eq!(ep.parked(), 10);
    assert!(ep.infos().all(|(_, i)| i.keepalive_probes_sent == 0));
    // Heard from at t: the next probes are an idle time (7200 s) later, coarse, none early.
    let (when, again) = next_sent(&mut ep, t, t + Duration::from_secs(2 * 7200));
    assert!(when >= t + Duration::from_secs(7200) && when <= t + Duration::from_secs(7200 + 225), "{when:?}");
    assert_eq!(again.len(), 10);
}

#[test]
fn totals_add_up_every_connection_released_or_not() {
    let mut ep = Endpoint::new(config(), 10);
    let a = ep.accept(ms(0), facts(), local(), client(1), &ack_from(1), b"hello").unwrap();
    let b = ep.accept(ms(0), facts(), local(), client(2), &ack_from(2), &[]).unwrap();
    ep.handle(ms(1), local(), client(2), &ack_from(2), b"hi");
    ep.connection_mut(a).unwrap().send(b"answer");
    drain(&mut ep, ms(2));
    // Connection a goes; its counts stay in the totals.
    ep.connection_mut(a).unwrap().abort(ms(3));
    drain(&mut ep, ms(3));
    all_events(&mut ep);
    assert!(!ep.contains(a) && ep.contains(b));
    let t = ep.totals();
    assert_eq!((t.segments_received, t.bytes_received), (3, 7));
    assert_eq!(t.bytes_sent, 6);
    // The answer, the RST, and b's delayed ACK is not due yet.
    assert_eq!(t.segments_sent, 2);
    // A retransmission timeout of b's data counts too.
    ep.connection_mut(b).unwrap().send(b"x");
    drain(&mut ep, ms(4));
    ep.handle_timeout(secs(2));
    drain(&mut ep, secs(2));
    assert_eq!((ep.totals().timeouts, ep.totals().retransmits), (1, 1));
}

#[test]
fn a_connection_exported_by_one_endpoint_carries_on_in_another_in_the_same_slot() {
    let mut old = Endpoint::new(config(), 100);
    let handles: Vec<_> = (0..5).map(|i| old.accept(ms(0), facts(), local(), client(i), &ack_from(i), &[]).unwrap()).collect();
    drain(&mut old, ms(0));
    // One is busy: data unread (not quiescent), it does not leave.
    assert_eq!(old.handle(ms(5), local(), client(4), &ack_from(4), b"unread"), Disposition::Delivered(handles[4]));
    drain(&mut old, ms(5));
    assert!(old.export(handles[4]).is_none(), "a busy connection stays");
    // The others leave through their bytes, named fields, as between two processes.
    let moved: Vec<Exported> = handles[..4]
        .iter()
        .map(|&h| serde_json::from_slice(&serde_json::to_vec(&old.export(h).unwrap()).unwrap()).unwrap())
        .collect();
    let mut new = Endpoint::new(config(), 100);
    for e in &moved {
        assert_eq!(new.import(e).unwrap().slot(), e.slot, "the slot FLOWS names");
    }
    assert_eq!(new.import(&moved[0]).unwrap_err(), ImportError::Exists);
    // A binary whose folded form lacks a field refuses it by name instead of misreading it.
    let mut other = serde_json::to_value(moved[0]).unwrap();
    other["tcb"]["snd"].as_object_mut().unwrap().remove("wnd");
    let err = serde_json::from_value::<Exported>(other).unwrap_err().to_string();
    assert!(err.contains("missing field `wnd`"), "{err}");
    assert_eq!((new.parked(), new.armed_timers()), (4, 4), "parked, keepalive armed");
    // The same input to both: the same answer, and later the same keepalive probes.
    let h = handles[2];
    for ep in [&mut old, &mut new] {
        assert_eq!(ep.handle(ms(10), local(), client(2), &ack_from(2), b"ping"), Disposition::Delivered(h));
        let mut buf = [0u8; 8];
        let conn = ep.connection_mut(h).unwrap();
        assert_eq!(conn.recv(&mut buf), 4);
        conn.send(b"pong");
    }
    let (a, b) = (drain(&mut old, ms(11)), drain(&mut new, ms(11)));
    let segments = |v: &[(Transmit, Header, Vec<u8>)]| v.iter().map(|(_, h, p)| (*h, p.clone())).collect::<Vec<_>>();
    assert_eq!(segments(&a), segments(&b));
    assert!(!a.is_empty());
    let later = secs(3 * 3600);
    old.handle_timeout(later);
    new.handle_timeout(later);
    let probes = |v: Vec<(Transmit, Header, Vec<u8>)>| v.into_iter().map(|(t, h, _)| (t.remote, h.seq)).collect::<Vec<_>>();
    let (pa, pb) = (probes(drain(&mut old, later)), probes(drain(&mut new, later)));
    // (The same probes; in what order one wake sends those sharing a tick is the wheel's.)
    let sorted = |mut v: Vec<(SocketAddr, SeqNum)>| {
        v.sort_by_key(|&(r, seq)| (r, seq.0));
        v
    };
    assert_eq!(sorted(pa.iter().filter(|(r, _)| *r != client(4)).cloned().collect()), sorted(pb.clone()));
    assert_eq!(pb.len(), 4, "each moved connection's keepalive fires");
    // A new connection of the new process takes a free slot, not a moved one's.
    let fresh = new.accept(later, facts(), local(), client(9), &ack_from(9), &[]).unwrap();
    assert!(!moved.iter().any(|e| e.slot == fresh.slot()));
}

#[test]
fn a_connection_handed_over_leaves_without_a_trace_and_its_slot_stays_the_other_process_s() {
    let mut old = Endpoint::new(config(), 100);
    let a = old.accept(ms(0), facts(), local(), client(1), &ack_from(1), &[]).unwrap();
    let b = old.accept(ms(0), facts(), local(), client(2), &ack_from(2), &[]).unwrap();
    // Still queued for transmit (its events not collected): not yet.
    assert!(old.hand_over(a).is_none());
    drain(&mut old, ms(0));
    assert_eq!(old.handle(ms(5), local(), client(2), &ack_from(2), b"unread"), Disposition::Delivered(b));
    drain(&mut old, ms(5));
    assert!(old.hand_over(b).is_none(), "a busy connection stays");
    let e = old.hand_over(a).unwrap();
    assert_eq!((old.len(), old.parked(), old.armed_timers()), (1, 0, 1), "gone, its timer too");
    assert!(old.lookup(local(), client(1)).is_none());
    // Nothing sent for it, no event: the other process carries it on.
    assert!(drain(&mut old, ms(6)).is_empty());
    while let Some((h, _)) = old.poll_event() {
        assert_ne!(h, a);
    }
    assert_eq!(old.handle(ms(7), local(), client(1), &ack_from(1), &[]), Disposition::Unknown);
    let mut new = Endpoint::new(config(), 100);
    assert_eq!(new.import(&e).unwrap(), a);
    // The slot stays the other process's: the old process's next connection takes another.
    assert_ne!(old.accept(ms(8), facts(), local(), client(3), &ack_from(3), &[]).unwrap().slot(), a.slot());
    assert_eq!(old.len(), 2);
}

#[test]
fn a_connection_to_an_address_beyond_what_a_parked_slot_can_name_stays_unfolded_and_works() {
    // Parked slots name our address by a 16-bit index: 65536 distinct addresses.
    let n = 1u32 << 16;
    let ours = |i: u32| SocketAddr::new([11, (i >> 16) as u8, (i >> 8) as u8, i as u8].into(), 80);
    let mut ep = Endpoint::new(config(), n + 1);
    let handles: Vec<_> = (0..=n).map(|i| ep.accept(ms(0), facts(), ours(i), client(0), &ack_from(0), &[]).unwrap()).collect();
    drain(&mut ep, ms(0));
    assert_eq!(ep.parked(), n as usize);
    let last = handles[n as usize];
    assert!(!ep.is_parked(last));
    for i in [0, 1, n - 1, n] {
        assert_eq!(ep.lookup(ours(i), client(0)), Some(handles[i as usize]));
    }
    let (_, info) = ep.infos().find(|(h, _)| *h == handles[n as usize - 1]).unwrap();
    assert_eq!((info.local, info.remote), (ours(n - 1), client(0)));
    assert_eq!(ep.handle(ms(5), ours(n), client(0), &ack_from(0), b"ping"), Disposition::Delivered(last));
    assert!(drain(&mut ep, ms(5)).is_empty());
    ep.handle_timeout(ms(50));
    let out = drain(&mut ep, ms(50));
    assert_eq!(out.len(), 1, "the delayed ACK");
    assert_eq!((out[0].0.local, out[0].1.ack), (ours(n), SeqNum(IRS + 1 + 4)));
}

#[test]
fn a_busy_connection_keeps_its_emptied_buffers_and_parks_without_them() {
    let cfg = Config { nagle: false, pacing: false, ..config() };
    let mut ep = Endpoint::new(cfg, 10);
    let h = ep.accept(ms(0), facts(), local(), client(1), &ack_from(1), &[]).unwrap();
    drain(&mut ep, ms(0));
    assert!(ep.is_parked(h), "quiet from the start: folded");
    // An echo: each segment read at once and written back; the peer's next segment
    // acknowledges all we sent, so both buffers are emptied at every step, but the connection
    // never goes quiet (data always in flight one way or the other).
    let seg = [0x5a; 1000];
    let mut buf = [0u8; 2048];
    let mut kept = None;
    for i in 0..20u32 {
        let now = ms(1 + u64::from(i));
        let mut hdr = ack_from(1);
        hdr.seq = SeqNum(IRS + 1) + i * 1000;
        hdr.ack = SeqNum(ISS + 1) + i * 1000;
        assert_eq!(ep.handle(now, local(), client(1), &hdr, &seg), Disposition::Delivered(h));
        let c = ep.connection_mut(h).expect("live while busy");
        assert_eq!(c.info().send_queued, 0, "step {i}: everything we sent is acknowledged");
        assert_eq!(c.recv(&mut buf), 1000);
        assert_eq!(c.readable(), 0);
        assert_eq!(c.send(&seg), 1000);
        let sent = drain(&mut ep, now);
        assert_eq!(sent.iter().map(|s| s.2.len()).sum::<usize>(), 1000, "step {i}: echoed");
        let held = ep.connection(h).expect("data in flight: not folded").heap_bytes();
        assert!(held > 0);
        // Emptied and refilled in place: the same allocations serve every step.
        assert_eq!(*kept.get_or_insert(held), held, "step {i}");
    }
    // The peer acknowledges the last of it and goes quiet: folded, with no buffer left.
    let mut last = ack_from(1);
    last.seq = SeqNum(IRS + 1) + 20_000;
    last.ack = SeqNum(ISS + 1) + 20_000;
    assert_eq!(ep.handle(ms(30), local(), client(1), &last, &[]), Disposition::Delivered(h));
    drain(&mut ep, ms(30));
    assert!(ep.is_parked(h), "quiescent: folded");
    assert_eq!(ep.connection_mut(h).expect("unfolded on demand").heap_bytes(), 0, "parked: its buffers went with the TCB");
}

/// A segment for a parked connection is processed in its slot, and when it leaves the
/// connection quiescent (a keepalive probe's answer, a duplicate ACK) the connection is folded
/// straight back without ever leaving the slot; a parked connection's deadline (its keepalive
/// probe, the end of TIME_WAIT) is served the same way. That must change nothing a peer or the
/// application can see: seeded traffic from a few clients (ACKs of everything, old and future
/// ACKs, windows that move, timestamps behind, at and ahead of TS.Recent, stale and future
/// sequence numbers, data, FINs, RSTs and SYNs), timers and application reads and writes, fed
/// to an endpoint that parks and one that never does. Every segment sent (in each peer's
/// order), every disposition, every event but `Parked` (in each connection's order), every
/// connection's info and the next deadline must be the same.
#[test]
fn segments_taken_in_a_parked_slot_change_nothing_a_peer_or_the_application_can_see() {
    use super::simulator::Rng;
    const CLIENTS: u32 = 4;
    let keepalive = Keepalive { enabled: true, idle: Duration::from_secs(5), interval: Duration::from_secs(1), probes: 3 };
    let cfg = Config { keepalive, challenge_acks_per_sec: 1000, ..config() };
    let facts = HandshakeFacts { flags: FACT_SACK | FACT_TS | FACT_WSCALE, snd_wscale: 7, rcv_wscale: 7, ..facts() };
    let mut taken_in_slot = 0;
    for seed in 1..=100u64 {
        let mut rng = Rng(seed);
        let mut eps = [Endpoint::new(cfg.clone(), 16), Endpoint::new(cfg.clone(), 16)];
        eps[1].set_parking(false);
        // Per client: the next sequence number it sends, what of ours it has seen (SND.NXT as
        // the server last sent it), its clock, and the server's last TSval.
        let (mut seq, mut ours, mut clock, mut echo) = ([IRS + 1; CLIENTS as usize], [ISS + 1; CLIENTS as usize], [100u32; CLIENTS as usize], [0u32; CLIENTS as usize]);
        let mut handles = Vec::new();
        for i in 0..CLIENTS {
            let mut h = ack_from(i);
            h.options.timestamps = Some((clock[i as usize], 0));
            let got: Vec<_> = eps.iter_mut().map(|ep| ep.accept(ms(0), facts, local(), client(i), &h, &[]).unwrap()).collect();
            assert_eq!(got[0], got[1]);
            handles.push(got[0]);
        }
        let mut now = ms(0);
        for step in 0..400 {
            now = now
                + match rng.next() % 5 {
                    0 => Duration::ZERO,
                    1 => Duration::from_millis(rng.next() % 50),
                    2 => Duration::from_millis(rng.next() % 1500),
                    _ => Duration::from_millis(rng.next() % 7000),
                };
            let i = (rng.next() % u64::from(CLIENTS)) as usize;
            let h = handles[i];
            match rng.next() % 10 {
                0..=5 => {
                    // A segment from client i.
                    clock[i] = clock[i].wrapping_add((rng.next() % 100) as u32);
                    let mut s = ack_from(i as u32);
                    s.seq = SeqNum(seq[i]);
                    s.ack = SeqNum(ours[i]);
                    s.window = 65535;
                    let mut tsval = clock[i];
                    let mut payload = Vec::new();
                    match rng.next() % 16 {
                        0 => s.ack = s.ack - (1 + (rng.next() % 3000) as u32),
                        1 => s.ack += 1 + (rng.next() % 3000) as u32,
                        2 => s.seq = s.seq - 1,
                        3 => s.seq += 1 + (rng.next() % 70_000) as u32,
                        4 => s.window = (rng.next() % 65536) as u16,
                        5 => tsval = tsval.wrapping_sub(1 + (rng.next() % 2000) as u32),
                        6 => tsval = tsval.wrapping_add(0x8000_0000),
                        7 => payload = vec![b'd'; 1 + (rng.next() % 3000) as usize],
                        8 if rng.chance(300) => s.flags = Flags::ACK | Flags::FIN,
                        9 if rng.chance(200) => s.flags = Flags::RST,
                        10 if rng.chance(200) => s.flags = Flags::SYN,
                        _ => {}
                    }
                    s.options.timestamps = (!rng.chance(30)).then_some((tsval, echo[i]));
                    if s.seq == SeqNum(seq[i]) {
                        seq[i] = seq[i].wrapping_add(s.seg_len(payload.len()));
                    }
                    let parked = eps[0].is_parked(h);
                    let d: Vec<_> = eps.iter_mut().map(|ep| ep.handle(now, local(), client(i as u32), &s, &payload)).collect();
                    assert_eq!(d[0], d[1], "seed {seed} step {step}: {s:?}");
                    taken_in_slot += usize::from(parked && eps[0].is_parked(h));
                }
                6 => {
                    for ep in &mut eps {
                        ep.handle_timeout(now);
                    }
                }
                7 => {
                    let n = 1 + (rng.next() % 2000) as usize;
                    for ep in &mut eps {
                        if let Some(c) = ep.connection_mut(h) {
                            c.send(&vec![b's'; n]);
                        }
                    }
                }
                _ => {
                    for ep in &mut eps {
                        if let Some(c) = ep.connection_mut(h) {
                            let mut buf = vec![0u8; 4096];
                            while c.recv(&mut buf) > 0 {}
                        }
                    }
                }
            }
            let out: Vec<_> = eps.iter_mut().map(|ep| drain(ep, now)).collect();
            // What each peer sees, in its order (the order between connections is no peer's).
            let per_peer = |o: &[(Transmit, Header, Vec<u8>)]| {
                let mut o = o.to_vec();
                o.sort_by_key(|(t, _, _)| t.remote);
                o
            };
            assert_eq!(per_peer(&out[0]), per_peer(&out[1]), "seed {seed} step {step}: segments");
            for (t, sh, p) in &out[0] {
                let Some(c) = (0..CLIENTS as usize).find(|&c| client(c as u32) == t.remote) else { continue };
                // The client takes what comes in order (lost otherwise: the server retransmits).
                if sh.seq == SeqNum(ours[c]) || sh.seq.lt(SeqNum(ours[c])) {
                    ours[c] = ours[c].max(sh.seq.0.wrapping_add(sh.seg_len(p.len())));
                }
                if let Some((tsval, _)) = sh.options.timestamps {
                    echo[c] = tsval;
                }
            }
            let events: Vec<Vec<_>> = eps
                .iter_mut()
                .map(|ep| {
                    let mut e: Vec<_> = all_events(ep).into_iter().filter(|(_, e)| *e != Event::Parked).collect();
                    e.sort_by_key(|(h, _)| h.slot());
                    e
                })
                .collect();
            assert_eq!(events[0], events[1], "seed {seed} step {step}: events");
            let infos: Vec<Vec<_>> = eps.iter().map(|ep| ep.infos().collect()).collect();
            assert_eq!(infos[0], infos[1], "seed {seed} step {step}: infos");
            let next: Vec<_> = eps.iter_mut().map(|ep| ep.poll_timeout()).collect();
            assert_eq!(next[0], next[1], "seed {seed} step {step}: next deadline");
        }
    }
    assert!(taken_in_slot > 2000, "only {taken_in_slot} segments were taken in a parked slot");
}

#[test]
fn demux_tells_apart_tuples_that_differ_in_one_field_live_or_parked() {
    // Each tuple differs from the first in one field: our address, our port, the peer's
    // address, the peer's port, the family (the same IPv4 addresses, v4-mapped in IPv6).
    let v4 = |a: [u8; 4], p: u16| SocketAddr::new(a.into(), p);
    let mapped = |a: [u8; 4], p: u16| SocketAddr::new(std::net::Ipv4Addr::from(a).to_ipv6_mapped().into(), p);
    let tuples = [
        (v4([10, 0, 0, 1], 80), v4([10, 9, 0, 1], 40000)),
        (v4([10, 0, 0, 2], 80), v4([10, 9, 0, 1], 40000)),
        (v4([10, 0, 0, 1], 81), v4([10, 9, 0, 1], 40000)),
        (v4([10, 0, 0, 1], 80), v4([10, 9, 0, 2], 40000)),
        (v4([10, 0, 0, 1], 80), v4([10, 9, 0, 1], 40001)),
        (mapped([10, 0, 0, 1], 80), mapped([10, 9, 0, 1], 40000)),
    ];
    let strangers = [
        (v4([10, 0, 0, 3], 80), v4([10, 9, 0, 1], 40000)),
        (v4([10, 0, 0, 1], 82), v4([10, 9, 0, 1], 40000)),
        (v4([10, 0, 0, 1], 80), v4([10, 9, 0, 3], 40000)),
        (v4([10, 0, 0, 1], 80), v4([10, 9, 0, 1], 40002)),
        (mapped([10, 0, 0, 2], 80), mapped([10, 9, 0, 1], 40000)),
    ];
    // Every tuple hashed alike: each lookup compares against every entry.
    for park in [false, true] {
        let mut ep = Endpoint::new(config(), tuples.len() as u32);
        ep.collide_tuple_hashes();
        ep.set_parking(park);
        let handles: Vec<_> = tuples
            .iter()
            .map(|&(l, r)| {
                let mut h = peer(0, 0);
                h.src_port = r.port();
                h.dst_port = l.port();
                ep.accept(ms(0), facts(), l, r, &h, &[]).unwrap()
            })
            .collect();
        drain(&mut ep, ms(0));
        assert_eq!(ep.parked(), if park { tuples.len() } else { 0 });
        for (&(l, r), &h) in tuples.iter().zip(&handles) {
            assert_eq!(ep.lookup(l, r), Some(h), "{l} {r}, parked {park}");
        }
        for &(l, r) in &strangers {
            assert_eq!(ep.lookup(l, r), None, "{l} {r}, parked {park}");
        }
    }
}

/// Answers a driver took (see `ProbeAnswers`), by slot, shared with the test.
#[derive(Clone, Default)]
struct TakenAnswers(Arc<std::sync::Mutex<std::collections::HashMap<u32, TakenAnswer>>>);

impl ProbeAnswers for TakenAnswers {
    fn take(&mut self, slot: u32) -> Option<TakenAnswer> {
        self.0.lock().unwrap().remove(&slot)
    }
}

/// Every wake a driver makes from `now` until `limit`: what each sent, with when.
fn sent_until(ep: &mut Endpoint, mut now: Instant, limit: Instant) -> Vec<(Instant, Transmit, Header)> {
    let mut v = Vec::new();
    while let Some(t) = ep.poll_timeout()
        && t.max(now) <= limit
    {
        now = t.max(now);
        ep.handle_timeout(now);
        v.extend(drain(ep, now).into_iter().map(|(tx, h, _)| (now, tx, h)));
    }
    v
}

#[test]
fn keepalive_answers_a_driver_took_count_as_heard_when_they_came() {
    use engine_common::handshake::{FACT_TS, FACT_WSCALE};
    let (idle, interval) = (Duration::from_secs(10), Duration::from_secs(5));
    let keepalive = Keepalive { idle, interval, probes: 3, ..Keepalive::default() };
    for park in [true, false] {
        let mut ep = Endpoint::new(Config { keepalive, ..config() }, 8);
        ep.set_parking(park);
        let taken = TakenAnswers::default();
        ep.set_probe_answers(Box::new(taken.clone()));
        let f = HandshakeFacts { flags: FACT_TS | FACT_WSCALE, snd_wscale: 7, rcv_wscale: 7, ts_recent: 100, ..facts() };
        let with_ts = |i: u32, tsval: u32| {
            let mut a = ack_from(i);
            a.options.timestamps = Some((tsval, 1));
            a
        };
        let hs: Vec<_> = (0..4).map(|i| ep.accept(secs(1), f, local(), client(i), &with_ts(i, 100), &[]).unwrap()).collect();
        drain(&mut ep, secs(1));
        // First probes, 10 s after each peer was heard from: each with the answer it asks for,
        // the peer's idle ACK (RCV.NXT, SND.NXT, the window field as the peer sent it, 65535
        // with a scale of 7, and timestamps).
        let (t, probes) = next_sent(&mut ep, secs(1), secs(12));
        assert_eq!(probes.len(), 4, "parked {park}");
        for (tx, h, p) in &probes {
            assert!(p.is_empty() && h.seq == SeqNum(ISS), "{h:?}");
            let want = ProbeAnswer { seq: SeqNum(IRS + 1), ack: h.seq + 1, window: 65535, timestamps: true };
            assert_eq!(tx.probe_answer, Some(want));
        }
        // 20 ms later the driver takes the answers of peers 0 and 1 (TSvals 500 and 600); peer
        // 3's reaches the endpoint as a segment; peer 2 is silent. A stale answer is offered for
        // peer 2, one that came before it was last heard from (what a slot's previous connection
        // could leave): not counted.
        let came = t + Duration::from_millis(20);
        {
            let mut m = taken.0.lock().unwrap();
            m.insert(hs[0].slot(), TakenAnswer { at: came, tsval: Some(500) });
            m.insert(hs[1].slot(), TakenAnswer { at: came, tsval: Some(600) });
            m.insert(hs[2].slot(), TakenAnswer { at: ms(500), tsval: Some(900) });
        }
        assert_eq!(ep.handle(came, local(), client(3), &with_ts(3, 700), &[]), Disposition::Delivered(hs[3]));
        assert!(drain(&mut ep, came).is_empty());
        // Over the next 20 s: peer 2 is probed every interval (asked about each time, nothing
        // found) and reset after its third; the others are next probed one idle time after
        // their answer came (not after the deadline that found it, an interval after the
        // probe), each probe echoing the answer's TSval (TS.Recent, RFC 7323 4.3).
        let sent = sent_until(&mut ep, came, came + Duration::from_secs(20));
        let of = |i: usize| sent.iter().filter(|(_, tx, _)| tx.handle == Some(hs[i])).collect::<Vec<_>>();
        let silent = of(2);
        assert_eq!(silent.len(), 3, "two more probes, then the reset: {silent:?}");
        assert!(silent[..2].iter().all(|(_, tx, h)| tx.probe_answer.is_some() && !h.flags.rst()));
        assert!(silent[2].2.flags.rst() && silent[2].1.probe_answer.is_none());
        for (i, tsval) in [(0, 500), (1, 600), (3, 700)] {
            let next = of(i);
            let (at, tx, h) = next[0];
            // (Unanswered, that probe is followed by the next an interval later.)
            assert!(next[1..].iter().all(|(t, _, _)| *t >= *at + interval), "peer {i}: {next:?}");
            assert!(*at >= came + idle && *at <= came + idle + idle / 32, "peer {i} probed at {at:?}, answered at {came:?}");
            assert!(tx.probe_answer.is_some());
            assert_eq!(h.options.timestamps.map(|(_, ecr)| ecr), Some(tsval), "peer {i}");
        }
        assert_eq!(ep.probe_answers_taken, 2, "parked {park}");
        assert!(taken.0.lock().unwrap().is_empty(), "the stale answer was asked for, and dropped");
    }
}

#[test]
fn the_first_other_segment_after_a_probe_withdraws_its_answer() {
    let keepalive = Keepalive { idle: Duration::from_secs(10), interval: Duration::from_secs(5), ..Keepalive::default() };
    let mut ep = Endpoint::new(Config { keepalive, nagle: false, ..config() }, 4);
    let h = ep.accept(secs(1), facts(), local(), client(1), &ack_from(1), &[]).unwrap();
    drain(&mut ep, secs(1));
    let (t, probes) = next_sent(&mut ep, secs(1), secs(12));
    assert_eq!(probes.len(), 1);
    assert!(probes[0].0.probe_answer.is_some() && !probes[0].0.answer_withdrawn);
    // Data goes out before any answer: with it in flight the peer's duplicate ACKs would look
    // like the probe's answer, so this segment withdraws it, and only this one.
    assert_eq!(ep.connection_mut(h).unwrap().send(b"news"), 4);
    let out = drain(&mut ep, t);
    assert_eq!(out.len(), 1);
    assert!(out[0].0.answer_withdrawn && out[0].0.probe_answer.is_none() && out[0].2 == b"news");
    assert_eq!(ep.connection_mut(h).unwrap().send(b"more"), 4);
    let out = drain(&mut ep, t);
    assert!(out.len() == 1 && !out[0].0.answer_withdrawn && out[0].0.probe_answer.is_none(), "{out:?}");
    // A driver that took the answer: nothing is left to withdraw.
    let taken = TakenAnswers::default();
    ep.set_probe_answers(Box::new(taken.clone()));
    let mut ack = ack_from(1);
    ack.ack = SeqNum(ISS + 9);
    ep.handle(t, local(), client(1), &ack, &[]);
    drain(&mut ep, t);
    let (t2, probes) = next_sent(&mut ep, t, t + Duration::from_secs(11));
    assert!(probes.len() == 1 && probes[0].0.probe_answer.is_some());
    taken.0.lock().unwrap().insert(h.slot(), TakenAnswer { at: t2 + Duration::from_millis(1), tsval: None });
    // (The probe's next deadline: an interval on, rounded up to a coarse tick.)
    let due = t2 + Duration::from_secs(6);
    ep.handle_timeout(due);
    assert!(drain(&mut ep, due).is_empty(), "answered: no second probe");
    assert_eq!(ep.probe_answers_taken, 1);
    assert_eq!(ep.connection_mut(h).unwrap().send(b"x"), 1);
    let out = drain(&mut ep, due);
    assert!(out.len() == 1 && !out[0].0.answer_withdrawn);
}
