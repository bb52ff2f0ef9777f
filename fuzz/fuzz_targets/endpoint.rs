//! The endpoint as a hostile or careless set of peers meets it: connections created from
//! cookie facts (any MSS, window scale up to 14, SACK, timestamps, ECN) on a few tuples of both
//! families, more of them than the table holds; data in order, out of order, overlapping and
//! retransmitted; arbitrary flags, ACKs, windows (zero and huge scaled ones), stale
//! timestamps and SACK blocks; strangers; application reads (also in-order data taken straight
//! from the segment, as the engine's `deliver` does), writes, shutdowns, closes with
//! unread data and aborts; time jumping over retransmission, keepalive, FIN_WAIT_2 and
//! TIME_WAIT deadlines; keepalive answers a driver in front says it took, for any slot, at any
//! time, with any TSval.
//!
//! Every peer sends its slice of one fixed byte stream (byte k of tuple t is `stream(t, k)`),
//! so whatever the core accepts can be checked, and after every step:
//! - what the application reads is the stream, in order, from its start, and never beyond
//!   what the peer sent or past its FIN;
//! - nothing acknowledged is lost while the connection lives: bytes read plus bytes readable
//!   cover every byte the endpoint acknowledged;
//! - every segment sent and every event belongs to a connection the model holds, with its
//!   own tuple; a slot is reused only after its `Released` event; the endpoint holds exactly
//!   the connections the model does, each found by its tuple (no connection without a slot,
//!   no slot without a connection), at most `max_conns`;
//! - a live connection's buffers stay within the configured sizes (with the doubling slack of
//!   a growing `Vec`);
//! - a keepalive probe asks for the answer its own header implies, and only a slot whose last
//!   segment was a probe withdraws one.
#![no_main]

use std::{net::SocketAddr, time::Duration};

use engine_common::handshake::{FACT_ECN, FACT_SACK, FACT_TS, FACT_WSCALE, HandshakeFacts};
use libfuzzer_sys::fuzz_target;
use synx_fuzz::Input;
use synx_tcp::{
    CloseReason, Config, ConnectionHandle, config::BufferBudget, Disposition, Endpoint, Event, Flags, Header, Instant, Keepalive, ProbeAnswer,
    ProbeAnswers, SeqNum, State, TakenAnswer, endpoint::AcceptError, segment,
};

/// The answers a driver in front of the endpoint took (see `ProbeAnswers`), by slot: here
/// whatever the input says, true or not.
#[derive(Clone, Default)]
struct Taken(std::sync::Arc<std::sync::Mutex<std::collections::HashMap<u32, TakenAnswer>>>);

impl ProbeAnswers for Taken {
    fn take(&mut self, slot: u32) -> Option<TakenAnswer> {
        self.0.lock().unwrap().remove(&slot)
    }
}

const TUPLES: usize = 6;

fn tuple(t: usize) -> (SocketAddr, SocketAddr) {
    let port = 40000 + t as u16;
    if t < 4 {
        (SocketAddr::from(([198, 18, 0, 1], 80)), SocketAddr::from(([198, 18, 1, t as u8], port)))
    } else {
        let local: std::net::Ipv6Addr = "fd00:5eed::1".parse().unwrap();
        let remote = std::net::Ipv6Addr::new(0xfd00, 0x5eed, 0, 0, 0, 0, 1, t as u16);
        (SocketAddr::new(local.into(), 80), SocketAddr::new(remote.into(), port))
    }
}

/// Byte `k` of the stream the peer of tuple `t` sends.
fn stream(t: usize, k: u64) -> u8 {
    (k.wrapping_mul(31) ^ (k >> 9) ^ (t as u64 * 0x5b)) as u8
}

/// What the model knows of one connection (one incarnation of a tuple).
struct Model {
    t: usize,
    h: ConnectionHandle,
    facts: HandshakeFacts,
    /// Stream bytes the peer has put on the wire (the highest offset sent).
    sent: u64,
    /// Where the peer's FIN sits in its stream, once it has sent one.
    fin_at: Option<u64>,
    /// Stream bytes the application has read (checked against the stream).
    read: u64,
    /// The highest of our sequence numbers the endpoint sent (relative to ISS+1).
    server_nxt: u32,
    /// The highest ACK the endpoint sent, relative to IRS+1 (stream bytes acknowledged, plus
    /// one for a FIN).
    acked: u32,
    /// Our (the endpoint's) latest TSval, for the peer to echo.
    server_tsval: u32,
    /// The peer's timestamp clock.
    tsval: u32,
    /// The connection reported `Closed`.
    closed: Option<CloseReason>,
    /// The application closed or aborted it: it reads no more.
    app_done: bool,
    /// The endpoint forgot its tuple (a new SYN met its TIME_WAIT): the slot lives on until
    /// released, the tuple may already hold a new incarnation.
    unindexed: bool,
}

impl Model {
    /// The application got `data` (read, or delivered straight from a segment): it must be the
    /// stream where the app left off, never past what was sent or past the FIN.
    fn app_got(&mut self, data: &[u8], how: &str) {
        for (j, &b) in data.iter().enumerate() {
            assert_eq!(b, stream(self.t, self.read + j as u64), "byte {} of tuple {} {how} wrong", self.read + j as u64, self.t);
        }
        self.read += data.len() as u64;
        assert!(self.read <= self.sent, "{how} {} of {} sent", self.read, self.sent);
        if let Some(f) = self.fin_at {
            assert!(self.read <= f, "{how} past the FIN");
        }
    }
}

struct World {
    ep: Endpoint,
    config: Config,
    max_conns: u32,
    models: Vec<Model>,
    now: Instant,
    buf: Vec<u8>,
    /// Answers the driver took, for the endpoint to find.
    taken: Taken,
    /// The answers the endpoint's probes asked for, by slot (until withdrawn).
    awaited: std::collections::HashMap<u32, ProbeAnswer>,
}

impl World {
    /// The incarnation of tuple `t` the endpoint finds by its tuple.
    fn current(&self, t: usize) -> Option<usize> {
        self.models.iter().position(|m| m.t == t && !m.unindexed)
    }


    /// A segment from the peer of model `i`, its payload taken from the stream at `offset`.
    fn from_peer(&mut self, i: usize, offset: u64, len: usize, flags: Flags, ack: u32, window: u16, input: &mut Input) {
        let m = &mut self.models[i];
        let (local, remote) = tuple(m.t);
        let payload: Vec<u8> = (offset..offset + len as u64).map(|k| stream(m.t, k)).collect();
        let mut h = Header {
            src_port: remote.port(),
            dst_port: local.port(),
            seq: SeqNum(m.facts.irs.wrapping_add(1)) + offset as u32,
            ack: SeqNum(m.facts.iss.wrapping_add(1)) + ack,
            flags,
            window,
            ..Default::default()
        };
        if m.facts.has(FACT_TS) {
            // Now and then an old TSval: RFC 7323 5.3 PAWS drops it.
            let stale = input.u8() < 16;
            m.tsval = m.tsval.wrapping_add(u32::from(!stale) * 7);
            let tsval = if stale { m.tsval.wrapping_sub(1 << 20) } else { m.tsval };
            h.options.timestamps = Some((tsval, m.server_tsval));
        }
        if m.facts.has(FACT_SACK) && input.u8() < 48 {
            // SACK blocks over what we sent, or anywhere.
            for _ in 0..input.u8() % 5 {
                let (a, b) = (input.u16() as u32, input.u16() as u32);
                let base = if input.u8() & 1 == 0 { m.facts.iss.wrapping_add(1) } else { input.u32() };
                h.options.sack.push(SeqNum(base) + a.min(b), SeqNum(base) + a.max(b));
            }
        }
        let sent_end = offset + len as u64;
        if !flags.rst() && !flags.syn() {
            m.sent = m.sent.max(sent_end);
        }
        let t = m.t;
        let now = self.now;
        // The slot a flow table in front of the endpoint might name (XDP's FLOWS): none, this
        // incarnation's (stale once a new SYN took its tuple), another connection's, or any
        // number. The endpoint must answer as it would without one.
        let hint = match (offset as usize ^ len) % 4 {
            0 => None,
            1 => Some(self.models[i].h.slot()),
            2 => Some(self.models[offset as usize % self.models.len()].h.slot()),
            _ => Some(offset as u32 ^ 0x5a5a),
        };
        // The driver's queue for the app: half the time it takes in-order data straight from
        // the segment (as much as it has room for), and that is the app's read, checked as one.
        let room = if input.u8() < 128 { 0 } else { input.u16() as usize };
        let models = &mut self.models;
        let mut deliver = |got: ConnectionHandle, data: &[u8]| {
            let Some(m) = models.iter_mut().find(|m| m.h == got && m.t == t && !m.unindexed && !m.app_done) else { return 0 };
            let n = data.len().min(room);
            m.app_got(&data[..n], "delivered");
            n
        };
        // Whatever the hint, the connection the segment meets is the one the index names.
        let known = self.ep.lookup(local, remote);
        match self.ep.handle_hinted(now, local, remote, hint, &h, &payload, &mut deliver) {
            Disposition::Delivered(got) => {
                assert_eq!(known, Some(got), "hint {hint:?}");
                assert_eq!(Some(got), self.ep.lookup(local, remote));
                let i = self.current(t).expect("a segment delivered to a tuple the model does not hold");
                assert_eq!(self.models[i].h, got, "delivered to another slot than the tuple's");
            }
            Disposition::Unknown => {
                assert_eq!(known, None, "hint {hint:?}");
                assert_eq!(self.ep.lookup(local, remote), None);
                self.ep.reset_unknown(local, remote, &h, payload.len());
            }
            Disposition::Dropped(synx_tcp::endpoint::DropReason::TimeWaitReuse) => {
                assert!(known.is_some(), "dropped by no connection (hint {hint:?})");
                if let Some(i) = self.current(t) {
                    self.models[i].unindexed = true;
                }
                assert_eq!(self.ep.lookup(local, remote), None, "TIME_WAIT reuse leaves the tuple free");
            }
            Disposition::Dropped(_) => assert!(known.is_some(), "dropped by no connection (hint {hint:?})"),
        }
    }

    /// Collect what the endpoint sends and reports, checking each against the model.
    fn drain(&mut self) {
        let mut segments = 0;
        while let Some(tx) = self.ep.poll_transmit(self.now, &mut self.buf) {
            segments += 1;
            assert!(segments < 100_000, "poll_transmit does not run dry");
            assert!(tx.len <= self.buf.len());
            let (h, payload) = segment::parse(&self.buf[..tx.len]).expect("the endpoint writes segments that parse");
            let Some(handle) = tx.handle else {
                // A reset to a stranger (or to a segment the endpoint refused).
                assert!(h.flags.rst() && payload.is_empty(), "only resets go to strangers: {h:?}");
                continue;
            };
            let m = self
                .models
                .iter_mut()
                .find(|m| m.h == handle)
                .unwrap_or_else(|| panic!("a segment from slot {} that holds no connection", handle.slot()));
            assert_eq!((tx.local, tx.remote), tuple(m.t), "slot {} sent on another tuple", handle.slot());
            if let Some(a) = tx.probe_answer {
                // RFC 1122 4.2.3.6: a probe is a bare ACK at SND.NXT - 1; the answer it asks for
                // is the peer's ACK of SND.NXT at our RCV.NXT.
                assert!(payload.is_empty() && h.flags == Flags::ACK && !tx.answer_withdrawn, "a probe: {h:?}");
                assert_eq!((a.seq, a.ack), (h.ack, h.seq + 1), "the answer a probe asks for: {h:?}");
                self.awaited.insert(handle.slot(), a);
            } else if tx.answer_withdrawn {
                // The slot's last segment was a probe (perhaps its previous connection's).
                assert!(self.awaited.remove(&handle.slot()).is_some(), "slot {} withdrew an answer no probe asked for", handle.slot());
            }
            assert!(!h.flags.syn(), "a SYN from an accepted connection: {h:?}");
            let end = h.seq.0.wrapping_sub(m.facts.iss.wrapping_add(1)).wrapping_add(h.seg_len(payload.len()));
            if !h.flags.rst() && (end as i32) > (m.server_nxt as i32) {
                m.server_nxt = end;
            }
            if h.flags.ack() {
                let acked = h.ack.0.wrapping_sub(m.facts.irs.wrapping_add(1));
                // ACKs never run ahead of what the peer sent (plus its FIN).
                let limit = m.sent + u64::from(m.fin_at.is_some());
                assert!(u64::from(acked) <= limit, "ACK of {acked} bytes, only {limit} sent: {h:?}");
                if (acked as i32) > (m.acked as i32) {
                    m.acked = acked;
                }
            }
            if let Some((tsval, _)) = h.options.timestamps {
                m.server_tsval = tsval;
            }
        }
        while let Some((handle, event)) = self.ep.poll_event() {
            let i = self
                .models
                .iter()
                .position(|m| m.h == handle)
                .unwrap_or_else(|| panic!("{event:?} for slot {} that holds no connection", handle.slot()));
            match event {
                Event::Closed(reason) => {
                    assert!(self.models[i].closed.is_none(), "closed twice");
                    self.models[i].closed = Some(reason);
                }
                Event::Released { local, remote } => {
                    let m = self.models.remove(i);
                    assert!(m.closed.is_some(), "released before closed");
                    assert_eq!((local, remote), tuple(m.t));
                    assert!(!self.ep.contains(handle), "the slot is still held after Released");
                    assert_ne!(self.ep.lookup(local, remote), Some(handle));
                }
                Event::PeerFin => assert!(self.models[i].fin_at.is_some(), "PeerFin without a FIN"),
                Event::Readable | Event::Writable | Event::Parked => {}
            }
        }
        self.check();
    }

    fn check(&mut self) {
        let ep = &self.ep;
        assert_eq!(ep.len(), self.models.len(), "the endpoint and the model hold different connections");
        assert!(ep.len() <= self.max_conns as usize);
        assert!(ep.parked() <= ep.len());
        let mut slots: Vec<u32> = self.models.iter().map(|m| m.h.slot()).collect();
        slots.sort_unstable();
        slots.dedup();
        assert_eq!(slots.len(), self.models.len(), "two connections in one slot");
        for m in &self.models {
            assert!(ep.contains(m.h));
            let (local, remote) = tuple(m.t);
            if !m.unindexed {
                assert_eq!(ep.lookup(local, remote), Some(m.h), "tuple {} not found", m.t);
            }
        }
        let infos: Vec<_> = ep.infos().collect();
        assert_eq!(infos.len(), ep.len());
        for (h, info) in &infos {
            let m = self.models.iter().find(|m| m.h == *h).expect("an info without a connection");
            assert_eq!((info.local, info.remote), tuple(m.t));
        }
        // Memory: each connection within its largest buffers, all of them within their first
        // buffers plus the growth the budget granted, and the budget given back in full once
        // no connection is left (a leak there would stop every buffer's growth for good).
        let c = &self.config;
        let bound = 2 * (c.recv_buffer.max(c.recv_buffer_max) as usize + c.send_buffer.max(c.send_buffer_max) as usize);
        let budget = c.buffer_budget.used();
        let most = c.buffer_budget.limit() + ep.len() as u64 * u64::from(c.recv_buffer_max + c.send_buffer_max);
        assert!(budget <= most, "the buffer budget counts {budget} bytes used");
        if ep.is_empty() {
            assert_eq!(budget, 0, "buffer growth not given back");
        }
        let mut heap = 0;
        for (h, c) in ep.live_connections() {
            heap += c.heap_bytes();
            assert!(c.heap_bytes() <= bound, "slot {} holds {} heap bytes", h.slot(), c.heap_bytes());
            let m = self.models.iter().find(|m| m.h == h).unwrap();
            if c.state() != State::Closed && m.closed.is_none() {
                // Nothing acknowledged is lost while the connection lives (a FIN takes one
                // sequence number and no byte).
                let data_acked = u64::from(m.acked).min(m.fin_at.unwrap_or(u64::MAX));
                let held = m.read + c.readable() as u64;
                assert!(
                    held >= data_acked || m.app_done,
                    "slot {}: acknowledged {data_acked}, read {} + readable {}",
                    h.slot(),
                    m.read,
                    c.readable()
                );
            }
        }
        let base = ep.len() * (self.config.recv_buffer as usize + self.config.send_buffer as usize);
        assert!(heap <= 2 * (base + budget as usize), "{heap} heap bytes in all, budget {budget} used");
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let size = |b: u8| [4096u32, 65536, 1 << 20][b as usize % 3];
    let (recv_buffer, send_buffer) = (size(input.u8()), size(input.u8()));
    let growth = input.u8();
    let config = Config {
        recv_buffer,
        send_buffer,
        // Buffers grow with the traffic up to these, within a budget all connections share.
        recv_buffer_max: recv_buffer << (growth & 3),
        send_buffer_max: send_buffer << ((growth >> 2) & 3),
        buffer_budget: BufferBudget::new([0, 64 << 10, 1 << 20, 1 << 30][(growth >> 4) as usize & 3]),
        ecn: growth & 0x40 != 0,
        pacing: growth & 0x80 != 0,
        mss: [536, 1220, 1460][input.u8() as usize % 3],
        msl: Duration::from_millis(100 + u64::from(input.u8()) * 20),
        fin_wait2_timeout: Duration::from_millis(200 + u64::from(input.u8()) * 40),
        keepalive: Keepalive {
            enabled: input.u8() & 1 == 0,
            idle: Duration::from_millis(100 + u64::from(input.u8()) * 50),
            interval: Duration::from_millis(100 + u64::from(input.u8()) * 10),
            probes: 1 + u32::from(input.u8() % 4),
        },
        ..Config::default()
    };
    let max_conns = 1 + u32::from(input.u8() % 4);
    let taken = Taken::default();
    let mut ep = Endpoint::new(config.clone(), max_conns);
    ep.set_probe_answers(Box::new(taken.clone()));
    let mut w = World {
        ep,
        config,
        max_conns,
        models: Vec::new(),
        now: Instant::ZERO,
        buf: vec![0u8; 60 + 1460],
        taken,
        awaited: std::collections::HashMap::new(),
    };
    let mut steps = 0;
    while !input.is_empty() && steps < 2000 {
        steps += 1;
        let op = input.u8();
        let t = (op >> 4) as usize % TUPLES;
        let (local, remote) = tuple(t);
        match op & 15 {
            // A cookie ACK (possibly with data and FIN): a new connection, or refused.
            0 | 1 => {
                let flags = input.u8() & (FACT_WSCALE | FACT_SACK | FACT_TS | FACT_ECN);
                let facts = HandshakeFacts {
                    iss: input.u32(),
                    irs: input.u32(),
                    mss: [536, 1220, 1440, 1460][input.u8() as usize % 4],
                    snd_wscale: input.u8() % 15,
                    rcv_wscale: input.u8() % 15,
                    flags,
                    ts_recent: input.u32(),
                    ts_offset: input.u32(),
                    ..Default::default()
                };
                let len = (input.u8() as usize * 7) % 1500;
                let fin = input.u8() & 7 == 0;
                let payload: Vec<u8> = (0..len as u64).map(|k| stream(t, k)).collect();
                let mut ack = Header {
                    src_port: remote.port(),
                    dst_port: local.port(),
                    seq: SeqNum(facts.irs.wrapping_add(1)),
                    ack: SeqNum(facts.iss.wrapping_add(1)),
                    flags: if fin { Flags::ACK | Flags::FIN } else { Flags::ACK },
                    window: input.u16(),
                    ..Default::default()
                };
                if facts.has(FACT_TS) {
                    ack.options.timestamps = Some((facts.ts_recent, 0));
                }
                let held = w.current(t);
                let len_before = w.ep.len();
                let result = if op & 1 == 0 {
                    w.ep.accept(w.now, facts, local, remote, &ack, &payload)
                } else {
                    let listener = (input.u8() & 7 != 0).then_some(());
                    let cookie_ok = input.u8() & 7 != 0;
                    match w.ep.accept_cookie(w.now, local, remote, &ack, &payload, listener, || cookie_ok.then_some(facts)) {
                        Ok((h, ())) => Ok(h),
                        Err(synx_tcp::endpoint::Refusal::Accept(e)) => Err(e),
                        Err(_) => {
                            assert_eq!(w.ep.len(), len_before);
                            w.drain();
                            continue;
                        }
                    }
                };
                match result {
                    Ok(h) => {
                        assert!(held.is_none(), "a second connection on tuple {t}");
                        assert!(len_before < max_conns as usize, "accepted beyond max_conns");
                        assert!(w.models.iter().all(|m| m.h != h), "slot {} handed out twice", h.slot());
                        w.models.push(Model {
                            t,
                            h,
                            facts,
                            sent: len as u64,
                            fin_at: fin.then_some(len as u64),
                            read: 0,
                            server_nxt: 0,
                            acked: 0,
                            server_tsval: 0,
                            tsval: facts.ts_recent,
                            closed: None,
                            app_done: false,
                            unindexed: false,
                        });
                    }
                    Err(AcceptError::Full) => assert!(len_before >= max_conns as usize),
                    Err(AcceptError::Exists) => assert!(held.is_some()),
                    Err(e) => panic!("a well-formed cookie ACK refused: {e}"),
                }
            }
            // Stream data from the peer: next, retransmitted, overlapping or beyond a hole.
            2..=4 => {
                let Some(i) = w.current(t) else { continue };
                let m = &w.models[i];
                let how = input.u8();
                let jump = u64::from(input.u16());
                let offset = match how % 4 {
                    0 | 1 => m.sent,
                    2 => m.sent.saturating_sub(jump),
                    _ => m.sent + jump,
                };
                let mut len = (input.u16() as usize) % 3000;
                if let Some(f) = m.fin_at {
                    len = len.min(f.saturating_sub(offset) as usize);
                }
                let end = offset + len as u64;
                // A FIN only at the end of the stream (once set, always the same place).
                let fin = how & 0x30 == 0x30 && end >= m.sent && m.fin_at.is_none_or(|f| f == end);
                let mut flags = Flags::ACK;
                if fin {
                    flags = flags | Flags::FIN;
                }
                if how & 0x40 != 0 {
                    flags = flags | Flags::PSH;
                }
                let ack = match input.u8() % 4 {
                    0 => m.server_nxt.wrapping_sub(u32::from(input.u16())),
                    1 => input.u32(),
                    _ => m.server_nxt,
                };
                let window = input.u16();
                if fin {
                    w.models[i].fin_at = Some(end);
                }
                w.from_peer(i, offset, len, flags, ack, window, &mut input);
            }
            // Whatever flags (RST, SYN, URG, no ACK, ECN bits) anywhere near the window.
            5 => {
                let Some(i) = w.current(t) else { continue };
                let m = &w.models[i];
                let mut flags = Flags::ACK;
                let bits = input.u8();
                for (bit, f) in [Flags::RST, Flags::SYN, Flags::URG, Flags::ECE, Flags::CWR].into_iter().enumerate() {
                    if bits & (1 << bit) != 0 {
                        flags = flags | f;
                    }
                }
                if bits & 0x80 != 0 {
                    flags = Flags(flags.0 & !Flags::ACK.0);
                }
                let offset = m.sent.saturating_sub(u64::from(input.u8())) + u64::from(input.u8());
                let ack = m.server_nxt.wrapping_add(u32::from(input.u8())).wrapping_sub(128);
                let window = input.u16();
                // Data only where the stream says, and no SYN or RST data counted as sent.
                let len = if flags.syn() || flags.rst() { 0 } else { (input.u8() as usize).min(m.fin_at.map_or(255, |f| f.saturating_sub(offset) as usize)) };
                w.from_peer(i, offset, len, flags, ack, window, &mut input);
            }
            // A pure ACK of what we sent, with a window (zero: persist; huge with scaling).
            6 => {
                let Some(i) = w.current(t) else { continue };
                let (offset, ack) = (w.models[i].sent, w.models[i].server_nxt);
                let window = if input.u8() & 3 == 0 { 0 } else { input.u16() };
                w.from_peer(i, offset, 0, Flags::ACK, ack, window, &mut input);
            }
            // The application reads: what it gets is the stream, in order.
            7 => {
                let Some(i) = w.models.iter().position(|m| m.t == t && !m.app_done) else { continue };
                let h = w.models[i].h;
                let want = 1 + input.u16() as usize;
                let mut out = vec![0u8; want];
                let Some(c) = w.ep.connection_mut(h) else { panic!("slot {} held but no connection", h.slot()) };
                let n = c.recv(&mut out);
                w.models[i].app_got(&out[..n], "read");
            }
            // The application writes.
            8 => {
                let Some(i) = w.models.iter().position(|m| m.t == t && !m.app_done) else { continue };
                let n = input.u16() as usize * 4;
                let data = vec![0x5a; n];
                let c = w.ep.connection_mut(w.models[i].h).expect("a held slot has its connection");
                assert!(c.send(&data) <= n);
            }
            // The application shuts down, closes (perhaps leaving data unread), or aborts.
            9 => {
                let Some(i) = w.models.iter().position(|m| m.t == t && !m.app_done) else { continue };
                let how = input.u8() % 4;
                let now = w.now;
                let c = w.ep.connection_mut(w.models[i].h).expect("a held slot has its connection");
                match how {
                    0 => c.shutdown(now),
                    1 => c.close(now),
                    2 => c.close_discarding(now, 1 + input.u8() as usize),
                    _ => c.abort(now),
                }
                w.models[i].app_done = how != 0;
            }
            // Time passes: timers fire.
            10 | 11 => {
                let step = match input.u8() % 4 {
                    0 => u64::from(input.u8()),
                    1 => u64::from(input.u16()),
                    2 => u64::from(input.u16()) * 16,
                    _ => 40,
                };
                w.now = w.now + Duration::from_millis(step);
                w.ep.handle_timeout(w.now);
            }
            // The driver took an answer for the tuple's slot (or any slot): when the peer's
            // idle ACK came, which may be before anything the connection heard, or ahead of
            // now, with any TSval. Only its time and TSval reach the connection.
            12 => {
                let slot = w.models.iter().rev().find(|m| m.t == t).map_or(u32::from(input.u8()) % (max_conns + 1), |m| m.h.slot());
                let off = u64::from(input.u16()) * 1_000_000;
                let at = match input.u8() & 1 {
                    0 => Instant::from_nanos(w.now.as_nanos().saturating_sub(off)),
                    _ => w.now + Duration::from_nanos(off),
                };
                let tsval = (input.u8() & 1 == 0).then(|| input.u32());
                w.taken.0.lock().unwrap().insert(slot, TakenAnswer { at, tsval });
            }
            // Per-connection keepalive settings.
            13 => {
                let Some(i) = w.models.iter().position(|m| m.t == t && m.closed.is_none()) else { continue };
                let k = Keepalive {
                    enabled: input.u8() & 1 == 0,
                    idle: Duration::from_millis(100 + u64::from(input.u16())),
                    interval: Duration::from_millis(100 + u64::from(input.u8()) * 10),
                    probes: 1 + u32::from(input.u8() % 8),
                };
                w.ep.connection_mut(w.models[i].h).expect("a held slot has its connection").set_keepalive(k);
            }
            // A stranger: a tuple nobody holds.
            _ => {
                let (local, _) = tuple(t);
                let remote = SocketAddr::new(remote.ip(), 1 + input.u16() % 30000);
                let h = Header {
                    src_port: remote.port(),
                    dst_port: local.port(),
                    seq: SeqNum(input.u32()),
                    ack: SeqNum(input.u32()),
                    flags: Flags(input.u8()),
                    window: input.u16(),
                    ..Default::default()
                };
                let payload = vec![0u8; input.u8() as usize];
                match w.ep.handle(w.now, local, remote, &h, &payload) {
                    Disposition::Unknown => w.ep.reset_unknown(local, remote, &h, payload.len()),
                    d => panic!("a stranger's segment was {d:?}"),
                }
            }
        }
        w.drain();
    }
});
