//! A deterministic two-peer simulator: our server connection against a client-side peer (the
//! same TCB code, created with mirrored handshake facts) over a link with seeded loss,
//! duplication, delay and reordering. Megabytes move both ways; every byte must arrive exactly
//! once and in order, and both sides must close.

use core::time::Duration;
use std::sync::Arc;

use engine_common::handshake::{FACT_SACK, FACT_TS, FACT_WSCALE, HandshakeFacts};

use super::*;

/// SplitMix64: small, seeded, good enough for a lossy link.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// True with probability `p_per_mille / 1000`.
    pub(crate) fn chance(&mut self, p_per_mille: u64) -> bool {
        self.next() % 1000 < p_per_mille
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Link {
    pub loss: u64,
    pub dup: u64,
    pub delay: Duration,
    /// Extra random delay up to this much: reorders segments.
    pub jitter: Duration,
}

struct Side {
    conn: Connection,
    source: Vec<u8>,
    sent: usize,
    sink: Vec<u8>,
    shut: bool,
}

fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_left(7) as u8 ^ (i >> 13) as u8 ^ salt).collect()
}

pub(crate) struct Outcome {
    /// When the last byte reached its application (virtual time).
    pub delivered_at: Instant,
    pub retransmits: u64,
}

/// Our server connection and a client-side peer (the same TCB code, created with mirrored
/// handshake facts), both ESTABLISHED at time 0 with options `flags`, window scale `wscale` both
/// ways and timestamp offsets `ts_offsets` (server, client).
pub(crate) fn connected_pair(config: &Arc<Config>, flags: u8, wscale: u8, ts_offsets: (u32, u32)) -> (Connection, Connection) {
    let (server_ts, client_ts) = ts_offsets;
    let server_facts = HandshakeFacts {
        iss: ISS,
        irs: IRS,
        mss: 1460,
        snd_wscale: wscale,
        rcv_wscale: wscale,
        flags,
        ts_offset: server_ts,
        ..Default::default()
    };
    let client_facts = HandshakeFacts { iss: IRS, irs: ISS, ts_offset: client_ts, ..server_facts };
    let mut ack = peer(0, 0);
    if flags & FACT_TS != 0 {
        ack.options.timestamps = Some((client_ts, server_ts));
    }
    ack.window = 1000;
    let server = Connection::accept(ms(0), config.clone(), &server_facts, local(), remote(), &ack, &[]).unwrap();
    // The client's view of the same handshake: the server's SYN-ACK as "the ACK".
    let mut synack = Header {
        src_port: 80,
        dst_port: 40000,
        seq: SeqNum(ISS + 1),
        ack: SeqNum(IRS + 1),
        flags: Flags::ACK,
        window: 1000,
        ..Default::default()
    };
    if flags & FACT_TS != 0 {
        synack.options.timestamps = Some((server_ts, client_ts));
    }
    let client = Connection::accept(ms(0), config.clone(), &client_facts, remote(), local(), &synack, &[]).unwrap();
    (server, client)
}

/// Move `bytes` each way over `link` with option `flags`; panics on any misdelivery.
pub(crate) fn run(seed: u64, bytes: usize, link: Link, flags: u8, config: Config) -> Outcome {
    let mut rng = Rng(seed);
    let config = Arc::new(config);
    let (server, client) = connected_pair(&config, flags, 7, (12345, 999));
    let mut sides = [
        Side { conn: server, source: pattern(bytes, 0x5a), sent: 0, sink: Vec::new(), shut: false },
        Side { conn: client, source: pattern(bytes, 0xa5), sent: 0, sink: Vec::new(), shut: false },
    ];
    // In flight: (deliver at, sequence for stable ordering, to side, bytes).
    let mut wire: Vec<(Instant, u64, usize, Vec<u8>)> = Vec::new();
    let mut serial = 0u64;
    let mut now = ms(0);
    let mut buf = vec![0u8; 2048];
    let mut rounds = 0u64;
    let mut delivered_at = None;
    loop {
        rounds += 1;
        assert!(rounds < 5_000_000, "simulation does not converge");
        assert!(now < secs(3600), "simulation ran out of virtual time: {:?} {:?}", sides[0].conn, sides[1].conn);
        // Applications: write what fits, read everything, close when all is sent.
        for s in sides.iter_mut() {
            if s.sent < s.source.len() {
                s.sent += s.conn.send(&s.source[s.sent..]);
            } else if !s.shut {
                s.conn.shutdown(now);
                s.shut = true;
            }
            loop {
                let n = s.conn.recv(&mut buf);
                if n == 0 {
                    break;
                }
                s.sink.extend_from_slice(&buf[..n]);
            }
            assert!(s.conn.heap_bytes() <= 4 * 256 * 1024, "buffers bounded");
        }
        // Transmit through the lossy link.
        for (i, s) in sides.iter_mut().enumerate() {
            while let Some(n) = s.conn.poll_transmit(now, &mut buf) {
                if rng.chance(link.loss) {
                    continue;
                }
                let copies = if rng.chance(link.dup) { 2 } else { 1 };
                for _ in 0..copies {
                    let jitter = link.jitter.as_nanos() as u64;
                    let extra = if jitter > 0 { rng.next() % jitter } else { 0 };
                    let at = now + link.delay + Duration::from_nanos(extra);
                    serial += 1;
                    wire.push((at, serial, 1 - i, buf[..n].to_vec()));
                }
            }
        }
        if delivered_at.is_none() && sides[0].sink.len() == bytes && sides[1].sink.len() == bytes {
            delivered_at = Some(now);
        }
        let done = sides.iter().all(|s| s.conn.state() == State::Closed) && wire.is_empty();
        if done {
            break;
        }
        // Advance virtual time to the next delivery or timer.
        let next_delivery = wire.iter().map(|w| w.0).min();
        let next_timer = sides.iter().filter_map(|s| s.conn.poll_timeout()).min();
        let Some(next) = [next_delivery, next_timer].into_iter().flatten().min() else {
            panic!("stuck with nothing scheduled: {:?} / {:?}", sides[0].conn, sides[1].conn);
        };
        now = now.max(next);
        wire.sort_by_key(|w| (w.0, w.1));
        let due = wire.iter().take_while(|w| w.0 <= now).count();
        for (_, _, to, bytes) in wire.drain(..due) {
            let (h, p) = segment::parse(&bytes).unwrap();
            if std::env::var_os("SIM_TRACE").is_some() {
                eprintln!("{now:?} -> {to} {:?} seq={} ack={} win={} len={} sack={:?}", h.flags, h.seq, h.ack, h.window, p.len(), h.options.sack.as_slice());
            }
            sides[to].conn.handle(now, &h, p);
        }
        for s in sides.iter_mut() {
            if s.conn.poll_timeout().is_some_and(|t| t <= now) {
                s.conn.handle_timeout(now);
            }
        }
    }
    for (i, s) in sides.iter_mut().enumerate() {
        let ev: Vec<Event> = std::iter::from_fn(|| s.conn.poll_event()).collect();
        assert!(
            ev.contains(&Event::Closed(CloseReason::Normal)),
            "side {i} closed normally: {ev:?} {:?}",
            s.conn.timed_out_by()
        );
    }
    for (i, s) in sides.iter().enumerate() {
        let other = &sides[1 - i];
        assert_eq!(s.sink.len(), other.source.len(), "side {i} received all bytes");
        assert!(s.sink == other.source, "side {i} received the bytes in order, once");
    }
    let retransmits = sides.iter().map(|s| s.conn.stats().retransmits).sum();
    Outcome { delivered_at: delivered_at.unwrap_or(now), retransmits }
}

const ALL: u8 = FACT_SACK | FACT_TS | FACT_WSCALE;

fn lossy() -> Link {
    Link { loss: 20, dup: 10, delay: Duration::from_millis(10), jitter: Duration::from_millis(8) }
}

#[test]
fn clean_link_megabytes_both_ways() {
    let link = Link { loss: 0, dup: 0, delay: Duration::from_millis(5), jitter: Duration::ZERO };
    let o = run(1, 2 << 20, link, ALL, config());
    assert_eq!(o.retransmits, 0);
    // 4 MiB in well under a second of virtual time at 10 ms RTT.
    assert!(o.delivered_at < secs(1), "{:?}", o.delivered_at);
}

#[test]
fn lossy_reordering_duplicating_link_all_options() {
    for seed in 0..3 {
        run(seed, 1 << 20, lossy(), ALL, config());
    }
}

#[test]
fn lossy_link_without_sack_or_timestamps_newreno() {
    let cfg = Config { congestion: CongestionAlgorithm::NewReno, ..config() };
    for seed in 10..12 {
        let o = run(seed, 512 << 10, lossy(), 0, cfg.clone());
        assert!(o.retransmits > 0);
    }
}

#[test]
fn heavy_loss_small_buffers() {
    let link = Link { loss: 150, dup: 50, delay: Duration::from_millis(3), jitter: Duration::from_millis(10) };
    let cfg = Config { recv_buffer: 8 * 1024, send_buffer: 4 * 1024, ..config() };
    for seed in 20..22 {
        run(seed, 128 << 10, link, ALL, cfg.clone());
    }
}

/// The long soak: more seeds and more data. `cargo test -- --ignored` runs it.
#[test]
#[ignore]
fn soak_many_seeds() {
    for seed in 100..140 {
        let flags = [0, FACT_SACK, FACT_TS, ALL][seed as usize % 4];
        run(seed, 2 << 20, lossy(), flags, config());
    }
}
