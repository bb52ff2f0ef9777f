//! [`Endpoint::accept_cookie`]: a segment for no connection becomes one (RFC 9293 3.10.7.4,
//! the ACK of SYN-RECEIVED, that state held in the cookie) or is refused with the RFC 9293
//! 3.10.7.1 reset.

use std::net::SocketAddr;

use super::super::endpoint::{AcceptError, Disposition, Endpoint, Refusal};
use super::*;

fn client(port: u16) -> SocketAddr {
    SocketAddr::new(remote().ip(), port)
}

fn ack_from(port: u16) -> Header {
    let mut h = peer(0, 0);
    h.src_port = port;
    h
}

/// What the endpoint sends at `now`, parsed, with the peer it goes to.
fn sent(ep: &mut Endpoint, now: Instant) -> Vec<(SocketAddr, Header)> {
    let mut v = Vec::new();
    let mut buf = [0u8; 2048];
    while let Some(t) = ep.poll_transmit(now, &mut buf) {
        v.push((t.remote, segment::parse(&buf[..t.len]).unwrap().0));
    }
    v
}

/// The RFC 9293 3.10.7.1 reset for an ACK that belongs to no connection: <SEQ=SEG.ACK><CTL=RST>.
#[track_caller]
fn assert_reset_to(out: &[(SocketAddr, Header)], to: SocketAddr, ack: &Header) {
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].0, to);
    assert_eq!(out[0].1.flags, Flags::RST);
    assert_eq!(out[0].1.seq, ack.ack);
}

#[test]
fn a_listened_cookie_ack_is_a_new_connection_with_its_listener() {
    let mut ep = Endpoint::new(config(), 4);
    let ack = ack_from(40001);
    let (h, listener) = ep.accept_cookie(ms(0), local(), client(40001), &ack, b"hi", Some("web"), || Some(facts())).unwrap();
    assert_eq!(listener, "web", "the caller's listener comes back with the connection");
    assert_eq!(ep.lookup(local(), client(40001)), Some(h));
    assert_eq!(ep.connection(h).map(Connection::state), Some(State::Established));
    assert!(ep.connection(h).unwrap().has_unread(), "the ACK's data is received");
    let out = sent(&mut ep, ms(0));
    assert!(out.iter().all(|(_, s)| !s.flags.rst()), "{out:?}");
}

#[test]
fn no_listener_refuses_with_a_reset_and_never_decodes_the_cookie() {
    let mut ep = Endpoint::new(config(), 4);
    let ack = ack_from(40002);
    let asked = std::cell::Cell::new(false);
    let got = ep.accept_cookie(ms(0), local(), client(40002), &ack, &[], None::<()>, || {
        asked.set(true);
        Some(facts())
    });
    assert_eq!(got, Err(Refusal::NoListener));
    assert!(!asked.get(), "the cookie is decoded only when someone listens");
    assert!(ep.is_empty());
    assert_reset_to(&sent(&mut ep, ms(0)), client(40002), &ack);
}

#[test]
fn a_bad_cookie_is_refused_with_a_reset() {
    let mut ep = Endpoint::new(config(), 4);
    let ack = ack_from(40003);
    assert_eq!(ep.accept_cookie(ms(0), local(), client(40003), &ack, &[], Some(()), || None), Err(Refusal::BadCookie));
    assert!(ep.is_empty());
    assert_eq!(ep.handle(ms(1), local(), client(40003), &ack, &[]), Disposition::Unknown);
    assert_reset_to(&sent(&mut ep, ms(1)), client(40003), &ack);
}

#[test]
fn a_full_table_or_a_taken_tuple_is_refused_with_a_reset() {
    let mut ep = Endpoint::new(config(), 1);
    let first = ack_from(40004);
    ep.accept_cookie(ms(0), local(), client(40004), &first, &[], Some(()), || Some(facts())).unwrap();
    sent(&mut ep, ms(0));
    let second = ack_from(40005);
    let full = ep.accept_cookie(ms(1), local(), client(40005), &second, &[], Some(()), || Some(facts()));
    assert_eq!(full, Err(Refusal::Accept(AcceptError::Full)));
    assert_reset_to(&sent(&mut ep, ms(1)), client(40005), &second);
    let again = ep.accept_cookie(ms(2), local(), client(40004), &first, &[], Some(()), || Some(facts()));
    assert_eq!(again, Err(Refusal::Accept(AcceptError::Exists)));
    assert_eq!(ep.len(), 1, "the live connection is untouched");
}

#[test]
fn a_reset_is_never_answered_with_a_reset() {
    // RFC 9293 3.10.7.1: an incoming segment with RST is discarded.
    let mut ep = Endpoint::new(config(), 4);
    let rst = with(ack_from(40006), Flags::RST);
    assert_eq!(ep.accept_cookie(ms(0), local(), client(40006), &rst, &[], Some(()), || None), Err(Refusal::BadCookie));
    assert!(sent(&mut ep, ms(0)).is_empty());
}

/// The client's handshake ACK and first data segment were lost; its second segment is the
/// first to arrive, and the cookie named the ISN (engine_common::cookie::check_ack): the
/// connection begins with the hole before it. The segment is held out of order and SACKed
/// (RFC 2018 4), nothing is readable until the first arrives, then both are, in order.
#[test]
fn a_connection_can_begin_with_its_first_segment_missing() {
    let mut ep = Endpoint::new(config(), 4);
    let (first, second) = (vec![b'a'; 1000], vec![b'b'; 1000]);
    let late = peer(1000, 0);
    let facts = HandshakeFacts { flags: engine_common::handshake::FACT_SACK, ..facts() };
    let (h, ()) = ep.accept_cookie(ms(0), local(), remote(), &late, &second, Some(()), || Some(facts)).unwrap();
    assert_eq!(ep.connection(h).map(Connection::state), Some(State::Established));
    assert!(!ep.connection(h).unwrap().has_unread(), "the second segment waits for the first");
    let out = sent(&mut ep, ms(0));
    let ack = out.iter().map(|(_, s)| s).find(|s| !s.flags.rst()).expect("an ACK for the out-of-order segment");
    assert_eq!(ack.ack, SeqNum(IRS + 1), "{out:?}");
    assert_eq!(ack.options.sack.as_slice().first(), Some(&(SeqNum(IRS + 1001), SeqNum(IRS + 2001))), "{out:?}");
    assert_eq!(ep.handle(ms(40), local(), remote(), &peer(0, 0), &first), Disposition::Delivered(h));
    let mut got = vec![0u8; 4000];
    let n = ep.connection_mut(h).unwrap().recv(&mut got);
    assert_eq!(&got[..n], [first, second].concat().as_slice());
}
