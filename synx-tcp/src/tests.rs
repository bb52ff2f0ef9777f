//! Scenario tests of the TCP core: one connection driven segment by segment in virtual time,
//! asserting the exact segments that come out (in the style of smoltcp's socket tests).

use core::time::Duration;
use std::net::SocketAddr;
use std::sync::Arc;

use engine_common::handshake::{FACT_SACK, FACT_TS, FACT_WSCALE, HandshakeFacts};

use super::connection::{AcceptError, DropReason};
use super::*;

mod cookie_ack;
mod ecn;
mod endpoint;
mod pacing;
mod park;
mod properties;
mod quickack;
mod recovery;
mod scenarios;
mod simulator;
mod smoltcp_peer;
mod states;
mod tuning;

pub(crate) const ISS: u32 = 1_000;
pub(crate) const IRS: u32 = 5_000;

pub(crate) fn local() -> SocketAddr {
    "10.0.0.1:80".parse().unwrap()
}
pub(crate) fn remote() -> SocketAddr {
    "10.0.0.2:40000".parse().unwrap()
}

pub(crate) fn ms(n: u64) -> Instant {
    Instant::from_nanos(n * 1_000_000)
}
pub(crate) fn secs(n: u64) -> Instant {
    ms(n * 1000)
}

pub(crate) fn facts() -> HandshakeFacts {
    HandshakeFacts { iss: ISS, irs: IRS, mss: 1460, ..Default::default() }
}

pub(crate) fn config() -> Config {
    Config { recv_buffer: 64 * 1024, send_buffer: 64 * 1024, ..Config::default() }
}

/// A segment from the peer: <SEQ=IRS+1+seq_off><ACK=ISS+1+ack_off><CTL=ACK>, window 65535.
pub(crate) fn peer(seq_off: u32, ack_off: u32) -> Header {
    Header {
        src_port: remote().port(),
        dst_port: local().port(),
        seq: SeqNum(IRS + 1) + seq_off,
        ack: SeqNum(ISS + 1) + ack_off,
        flags: Flags::ACK,
        window: 65535,
        ..Default::default()
    }
}

pub(crate) fn with(mut h: Header, flags: Flags) -> Header {
    h.flags = h.flags | flags;
    h
}

pub(crate) fn accept_with(config: Config, facts: HandshakeFacts, ack: &Header, payload: &[u8]) -> Connection {
    Connection::accept(ms(0), Arc::new(config), &facts, local(), remote(), ack, payload).unwrap()
}

pub(crate) fn established() -> Connection {
    accept_with(config(), facts(), &peer(0, 0), &[])
}

/// An established connection that negotiated SACK, with Nagle and pacing off so segments leave
/// as the tests write them.
pub(crate) fn sack_sender() -> Connection {
    let f = HandshakeFacts { flags: FACT_SACK, ..facts() };
    accept_with(Config { nagle: false, pacing: false, ..config() }, f, &peer(0, 0), &[])
}

/// The peer's ACK of `acked` full segments with SACK blocks `[l, r)`, all counted in 1460-byte
/// segments from our ISS + 1.
pub(crate) fn sack_ack(acked: u32, blocks: &[(u32, u32)]) -> Header {
    const MSS: u32 = 1460;
    let mut h = peer(0, acked * MSS);
    for &(l, r) in blocks {
        h.options.sack.push(SeqNum(ISS + 1 + l * MSS), SeqNum(ISS + 1 + r * MSS));
    }
    h
}

/// Everything the connection sends at `now`, parsed.
pub(crate) fn out(c: &mut Connection, now: Instant) -> Vec<(Header, Vec<u8>)> {
    let mut v = Vec::new();
    let mut buf = [0u8; 2048];
    while let Some(n) = c.poll_transmit(now, &mut buf) {
        let (h, p) = segment::parse(&buf[..n]).unwrap();
        assert_eq!(&buf[16..18], &[0, 0], "checksum left 0");
        v.push((h, p.to_vec()));
        assert!(v.len() < 10_000, "runaway output");
    }
    v
}

/// Exactly one segment goes out at `now`.
#[track_caller]
pub(crate) fn one(c: &mut Connection, now: Instant) -> (Header, Vec<u8>) {
    let mut v = out(c, now);
    assert_eq!(v.len(), 1, "expected one segment, got {v:?}");
    v.pop().unwrap()
}

#[track_caller]
pub(crate) fn none(c: &mut Connection, now: Instant) {
    let v = out(c, now);
    assert!(v.is_empty(), "expected no segment, got {v:?}");
}

/// Assert a pure ACK (no data, no FIN) acknowledging peer offset `ack_off`, from our offset
/// `seq_off`.
#[track_caller]
pub(crate) fn assert_ack(seg: &(Header, Vec<u8>), seq_off: u32, ack_off: u32) {
    let (h, p) = seg;
    assert_eq!(h.flags, Flags::ACK, "{h:?}");
    assert!(p.is_empty());
    assert_eq!(h.seq, SeqNum(ISS + 1 + seq_off), "seq");
    assert_eq!(h.ack, SeqNum(IRS + 1 + ack_off), "ack");
}

pub(crate) fn events(c: &mut Connection) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

pub(crate) fn read_all(c: &mut Connection) -> Vec<u8> {
    let mut v = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = c.recv(&mut buf);
        if n == 0 {
            return v;
        }
        v.extend_from_slice(&buf[..n]);
    }
}

/// Run every timer up to and including `until`, collecting the output with its time.
pub(crate) fn run_until(c: &mut Connection, until: Instant) -> Vec<(Instant, Header, Vec<u8>)> {
    let mut v = Vec::new();
    while let Some(t) = c.poll_timeout() {
        if t > until {
            break;
        }
        c.handle_timeout(t);
        for (h, p) in out(c, t) {
            v.push((t, h, p));
        }
    }
    v
}

#[test]
fn state_names_are_rfc_spelling() {
    let names: Vec<String> = State::ALL.iter().map(|s| s.to_string()).collect();
    assert_eq!(names, ["ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "FIN_WAIT_1", "FIN_WAIT_2", "CLOSING", "TIME_WAIT", "CLOSED"]);
}

#[test]
fn tcb_is_under_1k_and_idle_holds_no_buffers() {
    let size = core::mem::size_of::<Connection>();
    assert!(size < 1024, "Connection is {size} bytes");
    // What an idle connection keeps (with its tuple, its wheel entry and the BPF maps' share)
    // must stay under 512 bytes in all.
    let parked = core::mem::size_of::<connection::Parked>();
    assert!(parked <= 248, "Parked is {parked} bytes");
    // Its slot: the folded TCB, the tuple with our address by index, the keepalive index.
    let slot = Endpoint::slot_bytes();
    assert!(slot <= parked + 24, "a slot is {slot} bytes");
    let mut c = established();
    assert_eq!(c.heap_bytes(), 0);
    // Data both ways, read and acknowledged: the live connection keeps its emptied buffers for
    // the next burst until released (the endpoint folds a quiet connection without them:
    // tests::endpoint).
    c.handle(ms(1), &peer(0, 0), b"ping");
    assert!(c.heap_bytes() > 0);
    assert_eq!(read_all(&mut c), b"ping");
    c.send(b"pong");
    let (h, p) = one(&mut c, ms(2));
    assert_eq!((h.seq, p.as_slice()), (SeqNum(ISS + 1), &b"pong"[..]));
    c.handle(ms(3), &peer(4, 4), &[]);
    let kept = c.heap_bytes();
    assert!(kept > 0, "a drained live connection keeps its buffers");
    c.release_buffers();
    assert_eq!(c.heap_bytes(), 0);
}

#[test]
fn accept_rejects_what_is_not_the_cookie_ack() {
    let cfg = Arc::new(config());
    let bad_ack = peer(0, 1);
    let r = Connection::accept(ms(0), cfg.clone(), &facts(), local(), remote(), &bad_ack, &[]);
    assert_eq!(r.unwrap_err(), AcceptError::AckMismatch);
    let syn = with(peer(0, 0), Flags::SYN);
    let r = Connection::accept(ms(0), cfg.clone(), &facts(), local(), remote(), &syn, &[]);
    assert_eq!(r.unwrap_err(), AcceptError::NotAnAck);
    let mut no_ack = peer(0, 0);
    no_ack.flags = Flags(0);
    let r = Connection::accept(ms(0), cfg, &facts(), local(), remote(), &no_ack, &[]);
    assert_eq!(r.unwrap_err(), AcceptError::NotAnAck);
}

#[test]
fn reset_for_closed_follows_rfc9293_3_10_7_1() {
    // ACK off: <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>; SYN and FIN count.
    let mut syn = peer(0, 0);
    syn.flags = Flags::SYN;
    let r = reset_for(&syn, 0).unwrap();
    assert_eq!((r.seq, r.ack, r.flags), (SeqNum(0), SeqNum(IRS + 2), Flags::RST | Flags::ACK));
    assert_eq!((r.src_port, r.dst_port), (80, 40000));
    let mut fin_data = peer(0, 0);
    fin_data.flags = Flags::FIN;
    let r = reset_for(&fin_data, 10).unwrap();
    assert_eq!(r.ack, SeqNum(IRS + 1 + 11));
    // ACK on: <SEQ=SEG.ACK><CTL=RST>.
    let r = reset_for(&peer(0, 7), 3).unwrap();
    assert_eq!((r.seq, r.flags), (SeqNum(ISS + 8), Flags::RST));
    // Never a reset for a reset.
    assert_eq!(reset_for(&with(peer(0, 0), Flags::RST), 0), None);
}

#[test]
fn options_from_facts_window_scale_timestamps_sack() {
    let f = HandshakeFacts {
        flags: FACT_WSCALE | FACT_TS | FACT_SACK,
        snd_wscale: 7,
        rcv_wscale: 2,
        ts_recent: 777,
        ts_offset: 1_000_000,
        ..facts()
    };
    let mut ack = peer(0, 0);
    ack.window = 100;
    ack.options.timestamps = Some((777, 1_000_000 + 5));
    let mut c = accept_with(config(), f, &ack, &[]);
    // RFC 7323 2.3: the peer's window is scaled by its shift.
    assert_eq!(c.info().snd_wnd, 100 << 7);
    // RTTM from the handshake ACK's TSecr: 10 ms - 5 ms... (now = 0 here, so no sample).
    c.send(b"x");
    let (h, p) = one(&mut c, ms(10));
    assert_eq!(p, b"x");
    // Our TSval is now_ms + ts_offset; TSecr echoes TS.Recent.
    assert_eq!(h.options.timestamps, Some((1_000_010, 777)));
    // Our window is the buffer scaled by our shift.
    assert_eq!(h.window as u32, (64 * 1024) >> 2);
    // The peer's ACK echoes our TSval: an RTT sample of 30 ms.
    let mut a = peer(0, 1);
    a.options.timestamps = Some((778, 1_000_010));
    c.handle(ms(40), &a, &[]);
    assert_eq!(c.info().srtt, Some(Duration::from_millis(30)));
}

#[test]
fn paws_drops_old_timestamps_with_an_ack() {
    let f = HandshakeFacts { flags: FACT_TS, ts_recent: 1000, ts_offset: 0, ..facts() };
    let mut ack = peer(0, 0);
    ack.options.timestamps = Some((1000, 0));
    let mut c = accept_with(config(), f, &ack, &[]);
    let mut old = peer(0, 0);
    old.options.timestamps = Some((998, 0));
    // RFC 7323 5.3: TSval < TS.Recent (by more than Linux's one tick): drop and ACK.
    assert_eq!(c.handle(ms(1), &old, b"stale"), Handled::Dropped(DropReason::Paws));
    let (h, p) = one(&mut c, ms(1));
    assert!(p.is_empty() && h.ack == SeqNum(IRS + 1));
    assert_eq!(c.readable(), 0);
    // Newer timestamps pass and update TS.Recent (echoed back).
    let mut new = peer(0, 0);
    new.options.timestamps = Some((2000, 0));
    assert_eq!(c.handle(ms(2), &new, b"fresh"), Handled::Processed);
    assert_eq!(read_all(&mut c), b"fresh");
    c.handle_timeout(ms(42));
    let (h, _) = one(&mut c, ms(42));
    assert_eq!(h.options.timestamps.unwrap().1, 2000);
    // A wrap-around-older TSval is older too.
    let mut wrapped = peer(5, 0);
    wrapped.options.timestamps = Some((2000u32.wrapping_sub(1 << 31).wrapping_add(1), 0));
    assert_eq!(c.handle(ms(50), &wrapped, b"x"), Handled::Dropped(DropReason::Paws));
}
