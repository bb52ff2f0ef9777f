//! Parking must be invisible: a server connection that is folded and unfolded at every
//! quiescent moment sends exactly the segments, at exactly the times, and reports exactly the
//! state, of one that never is. Seeded conversations (requests and responses, server pushes,
//! idle gaps long enough for keepalive probes, a client that goes silent until keepalive gives
//! up, a client that stops reading, injected RSTs and SYNs, loss, either side closing first, so
//! TIME_WAIT with retransmitted FINs too) run twice and are compared segment by segment.

use core::time::Duration;
use std::sync::Arc;

use engine_common::handshake::{FACT_SACK, FACT_TS, FACT_WSCALE};

use super::simulator::{Rng, connected_pair};
use super::*;

#[derive(Clone, Copy, Debug)]
enum Action {
    /// The client writes this many bytes; the server echoes what it reads.
    Request(usize),
    /// The server writes this many bytes unprompted.
    Push(usize),
    /// The client's segments are lost until the given time.
    SilentUntil(Instant),
    /// The client's application stops (false) or resumes (true) reading.
    ClientReads(bool),
    /// The server's application stops (false) or resumes (true) reading.
    ServerReads(bool),
    /// A RST inside the window but not at RCV.NXT (RFC 5961 challenge ACK).
    BlindRst,
    /// A SYN on the established connection (RFC 5961 4.2 challenge ACK).
    Syn,
    /// Lose this share (per mille) of the segments from now on.
    Loss(u64),
}

#[derive(Debug, PartialEq)]
enum Trace {
    /// (time, from server?, segment bytes)
    Segment(Instant, bool, Vec<u8>),
    Event(Instant, Event),
    Info(Instant, Box<ConnectionInfo>),
}

fn script(rng: &mut Rng) -> Vec<(Instant, Action)> {
    let mut t = ms(10);
    let mut out = Vec::new();
    for _ in 0..40 {
        let action = match rng.next() % 18 {
            0..=5 => Action::Request(1 + (rng.next() % 6000) as usize),
            6..=7 => Action::Push(1 + (rng.next() % 3000) as usize),
            8 => Action::SilentUntil(t + Duration::from_millis(rng.next() % 12_000)),
            9 => Action::ClientReads(false),
            10 => Action::ClientReads(true),
            11 => Action::BlindRst,
            12 => Action::Syn,
            13 => Action::Loss(rng.next() % 150),
            14 => Action::ServerReads(false),
            15 => Action::ServerReads(true),
            _ => Action::Loss(0),
        };
        out.push((t, action));
        // Gaps from back-to-back to well past the keepalive idle time.
        t = t + match rng.next() % 4 {
            0 => Duration::from_millis(rng.next() % 5),
            1 => Duration::from_millis(rng.next() % 400),
            2 => Duration::from_millis(rng.next() % 4000),
            _ => Duration::from_millis(rng.next() % 15_000),
        };
    }
    out
}

/// How a conversation folds the server.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fold {
    Never,
    /// Whenever it is quiescent.
    InPlace,
    /// Whenever it is quiescent, and the folded form goes through its bytes (named fields, as
    /// a connection moves to another process) before it is unfolded.
    ThroughBytes,
}

/// Run one seeded conversation, folding the server as `park` says. `server_first`: at the end the server closes first (and waits in TIME_WAIT).
/// Returns the trace and how often it was folded, in all and in TIME_WAIT.
fn converse(seed: u64, flags: u8, server_first: bool, park: Fold) -> (Vec<Trace>, usize, usize) {
    let mut rng = Rng(seed);
    let actions = script(&mut rng);
    let keepalive = Keepalive { enabled: true, idle: Duration::from_secs(5), interval: Duration::from_secs(1), probes: 3 };
    let config =
        Arc::new(Config { recv_buffer: 16 * 1024, send_buffer: 16 * 1024, keepalive, challenge_acks_per_sec: 2, ..config() });
    let (mut server, mut client) = connected_pair(&config, flags, 2, (777, 31));
    client.set_keepalive(Keepalive { enabled: false, ..keepalive });

    let mut trace = Vec::new();
    let (mut folds, mut time_wait_folds) = (0, 0);
    let mut wire: Vec<(Instant, u64, bool, Vec<u8>)> = Vec::new();
    let mut serial = 0u64;
    let mut next_action = 0;
    let (mut silent_until, mut client_reads, mut server_reads, mut loss) = (Instant::ZERO, true, true, 0u64);
    let mut to_echo = 0usize;
    let mut buf = vec![0u8; 2048];
    let mut now = ms(0);
    let end = actions.last().map_or(ms(0), |a| a.0) + Duration::from_secs(30);
    let (mut closing, mut server_closed, mut lost_last_ack) = (false, false, false);
    loop {
        // Deliveries due, then timers.
        wire.sort_by_key(|w| (w.0, w.1));
        let due = wire.iter().take_while(|w| w.0 <= now).count();
        for (_, _, to_server, bytes) in wire.drain(..due).collect::<Vec<_>>() {
            let (h, p) = segment::parse(&bytes).unwrap();
            if to_server {
                server.handle(now, &h, p);
            } else {
                client.handle(now, &h, p);
            }
        }
        for c in [&mut server, &mut client] {
            if c.poll_timeout().is_some_and(|t| t <= now) {
                c.handle_timeout(now);
            }
        }
        // Scripted actions.
        while let Some(&(at, action)) = actions.get(next_action)
            && at <= now
        {
            next_action += 1;
            match action {
                Action::Request(n) => {
                    client.send(&vec![b'q'; n]);
                }
                Action::Push(n) => {
                    server.send(&vec![b'p'; n]);
                }
                Action::SilentUntil(t) => silent_until = t,
                Action::ClientReads(on) => client_reads = on,
                Action::ServerReads(on) => server_reads = on,
                Action::BlindRst | Action::Syn => {
                    let mut h = peer(0, 0);
                    h.flags = if matches!(action, Action::BlindRst) { Flags::RST } else { Flags::SYN };
                    // Somewhere inside the server's receive window, not at RCV.NXT.
                    let rcv_nxt = server.info().stats.bytes_received as u32 + 1 + (server.peer_finished() as u32);
                    h.seq = SeqNum(IRS) + rcv_nxt + 100;
                    h.ack = SeqNum(0);
                    let mut bytes = vec![0u8; 60];
                    let n = segment::write(&h, &[], &mut bytes).unwrap();
                    bytes.truncate(n);
                    // A burst, beyond the challenge ACK rate limit (RFC 5961 7).
                    for _ in 0..1 + rng.next() % 4 {
                        serial += 1;
                        wire.push((now, serial, true, bytes.clone()));
                    }
                }
                Action::Loss(p) => loss = p,
            }
        }
        if !closing && now >= end {
            closing = true;
            if !server_first {
                client.shutdown(now);
            }
        }
        if closing && server_first && !server_closed && to_echo == 0 {
            server_closed = true;
            server.close(now);
        }
        if server_first && client.is_eof() && client.state() == State::CloseWait {
            client.shutdown(now);
        }
        // Applications: the server echoes requests and closes after the client does; the client
        // reads unless told not to.
        if server_reads {
            loop {
                let n = server.recv(&mut buf);
                if n == 0 {
                    break;
                }
                to_echo += n;
            }
        }
        if to_echo > 0 {
            let n = to_echo.min(buf.len());
            to_echo -= server.send(&vec![b'e'; n]);
        }
        if server.is_eof() && to_echo == 0 && !server_closed && server_reads {
            server_closed = true;
            server.close(now);
        }
        if client_reads {
            while client.recv(&mut buf) > 0 {}
        }
        // Transmit.
        for (from_server, c) in [(true, &mut server), (false, &mut client)] {
            while let Some(n) = c.poll_transmit(now, &mut buf) {
                if from_server {
                    trace.push(Trace::Segment(now, true, buf[..n].to_vec()));
                }
                if (!from_server && now < silent_until) || rng.chance(loss) {
                    continue;
                }
                if from_server && c.state() == State::TimeWait && !lost_last_ack {
                    // The seed's lost last ACK: the client's FIN comes again, to TIME_WAIT.
                    lost_last_ack = true;
                    continue;
                }
                serial += 1;
                let delay = Duration::from_millis(5 + rng.next() % 3);
                wire.push((now + delay, serial, !from_server, buf[..n].to_vec()));
            }
        }
        while let Some(e) = server.poll_event() {
            trace.push(Trace::Event(now, e));
        }
        while client.poll_event().is_some() {}
        trace.push(Trace::Info(now, Box::new(server.info())));
        if park != Fold::Never && let Some(mut p) = server.park() {
            time_wait_folds += usize::from(server.state() == State::TimeWait);
            if park == Fold::ThroughBytes {
                p = serde_json::from_slice(&serde_json::to_vec(&p).unwrap()).unwrap();
            }
            server = Connection::unpark(&p, config.clone(), server.local(), server.remote(), server.keepalive());
            folds += 1;
        }
        if server.state() == State::Closed && wire.is_empty() {
            break;
        }
        let next = [
            wire.iter().map(|w| w.0).min(),
            server.poll_timeout(),
            client.poll_timeout(),
            actions.get(next_action).map(|a| a.0),
            (!closing).then_some(end),
        ]
        .into_iter()
        .flatten()
        .min();
        match next {
            Some(t) if t < secs(3600) => now = now.max(t),
            // Nothing left to happen (e.g. the server waits for a client that never closes).
            _ => break,
        }
    }
    (trace, folds, time_wait_folds)
}

#[test]
fn a_parked_connection_behaves_exactly_as_one_never_parked() {
    let (mut folds, mut time_wait_folds, mut segments, mut reacks) = (0, 0, 0, 0);
    for seed in 0..200u64 {
        let flags = [FACT_SACK | FACT_TS | FACT_WSCALE, 0, FACT_TS, FACT_SACK | FACT_WSCALE][seed as usize % 4];
        let server_first = seed % 3 == 0;
        let (plain, none, _) = converse(seed, flags, server_first, Fold::Never);
        let (parked, n, tw) = converse(seed, flags, server_first, Fold::InPlace);
        assert_eq!(none, 0);
        segments += plain.iter().filter(|t| matches!(t, Trace::Segment(..))).count();
        if let Some(i) = (0..plain.len().min(parked.len())).find(|&i| plain[i] != parked[i]) {
            panic!("seed {seed} (flags {flags}): first difference at step {i}:\n never parked: {:?}\n parked:       {:?}", plain[i], parked[i]);
        }
        assert_eq!(plain.len(), parked.len(), "seed {seed}");
        // Through the bytes a connection moves to another process in: the same again.
        let (moved, _, _) = converse(seed, flags, server_first, Fold::ThroughBytes);
        assert!(moved == parked, "seed {seed} (flags {flags}): folded through its bytes, it behaves otherwise");
        folds += n;
        time_wait_folds += tw;
        reacks += parked
            .iter()
            .filter_map(|t| match t {
                Trace::Info(_, i) => Some(i.stats.time_wait_fin_reacks),
                _ => None,
            })
            .max()
            .unwrap_or(0);
    }
    // The conversations happen, and go quiet often, in TIME_WAIT too.
    assert!(
        segments > 2000 && folds > 1000 && time_wait_folds > 10 && reacks > 0,
        "{segments} segments, {folds} folds, {time_wait_folds} in TIME_WAIT, {reacks} FINs re-ACKed there"
    );
}

#[test]
fn only_a_quiescent_connection_parks() {
    let config = Arc::new(config());
    let mut c = Connection::accept(ms(0), config.clone(), &facts(), local(), remote(), &peer(0, 0), &[]).unwrap();
    while c.poll_event().is_some() {}
    assert!(c.park().is_some(), "fresh and idle");
    // Data received and not yet read, then read but not yet acknowledged.
    c.handle(ms(1), &peer(0, 0), b"hello");
    assert!(c.park().is_none());
    let mut buf = [0u8; 16];
    assert_eq!(c.recv(&mut buf), 5);
    while c.poll_event().is_some() {}
    assert!(c.park().is_none(), "a delayed ACK is owed");
    let mut out = [0u8; 256];
    c.handle_timeout(ms(100));
    assert!(c.poll_transmit(ms(100), &mut out).is_some());
    assert!(c.park().is_some());
    // Data in flight.
    c.send(b"response");
    assert!(c.park().is_none());
    assert!(c.poll_transmit(ms(101), &mut out).is_some());
    assert!(c.park().is_none());
    c.handle(ms(110), &peer(5, 8), &[]);
    while c.poll_event().is_some() {}
    assert!(c.park().is_some());
    // The peer's FIN: CLOSE_WAIT never parks.
    c.handle(ms(120), &with(peer(5, 8), Flags::FIN), &[]);
    while c.poll_event().is_some() {}
    while c.poll_transmit(ms(400), &mut out).is_some() {}
    assert!(c.park().is_none());
}
