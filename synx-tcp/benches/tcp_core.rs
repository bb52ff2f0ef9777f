//! Throughput of the sans-IO TCP core on one core: in-order data segments, an echo served
//! segment by segment, ACK processing, the timing wheel with 1M armed timers, demux among 100k
//! connections, a keepalive round over 1M parked connections, and memory per idle connection.
//! `cargo bench -p synx-tcp --bench tcp_core`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant as WallClock};

use engine_common::handshake::{FACT_SACK, FACT_TS, FACT_WSCALE, HandshakeFacts};
use synx_tcp::timer::TimingWheel;
use synx_tcp::{Config, Connection, Endpoint, Flags, Handled, Header, Instant, Keepalive, SeqNum};

const ISS: u32 = 1000;
const IRS: u32 = 5000;

fn facts() -> HandshakeFacts {
    HandshakeFacts {
        iss: ISS,
        irs: IRS,
        mss: 1460,
        snd_wscale: 7,
        rcv_wscale: 7,
        flags: FACT_SACK | FACT_TS | FACT_WSCALE,
        ..Default::default()
    }
}

fn header(seq: u32, ack: u32) -> Header {
    let mut h = Header {
        src_port: 40000,
        dst_port: 80,
        seq: SeqNum(seq),
        ack: SeqNum(ack),
        flags: Flags::ACK,
        window: 4096,
        ..Default::default()
    };
    h.options.timestamps = Some((1, 0));
    h
}

fn conn(config: &Arc<Config>) -> Connection {
    let local = "10.0.0.1:80".parse().unwrap();
    let remote = "10.0.0.2:40000".parse().unwrap();
    Connection::accept(Instant::ZERO, config.clone(), &facts(), local, remote, &header(IRS + 1, ISS + 1), &[]).unwrap()
}

fn report(name: &str, n: u64, elapsed: Duration, unit: &str) {
    let per_sec = n as f64 / elapsed.as_secs_f64();
    println!("{name:<44} {:>12.0} {unit}/s  ({:.1} ns each)", per_sec, elapsed.as_nanos() as f64 / n as f64);
}

fn in_order_data() {
    let config = Arc::new(Config::default());
    let mut c = conn(&config);
    let payload = vec![0x42u8; 1448];
    let mut out = [0u8; 2048];
    let mut read = vec![0u8; 64 * 1024];
    let n = 500_000u64;
    let start = WallClock::now();
    let mut seq = IRS + 1;
    for i in 0..n {
        let now = Instant::from_nanos(i * 1000);
        c.handle(now, &header(seq, ISS + 1), &payload);
        seq = seq.wrapping_add(1448);
        while c.poll_transmit(now, &mut out).is_some() {}
        if i % 8 == 7 {
            while c.recv(&mut read) > 0 {}
        }
    }
    report("in-order data segments (1448 B, recv+ACK)", n, start.elapsed(), "segments");
    black_box(&c);
}

/// A bulk echo as the engine serves it when segments come one at a time: each segment read at
/// once (the engine empties the receive buffer into the app's queue after every segment),
/// written back, sent; the peer's next segment acknowledges all of it, so both buffers are
/// emptied at every step.
fn echo_per_segment() {
    let config = Arc::new(Config { nagle: false, pacing: false, ..Config::default() });
    let mut c = conn(&config);
    let payload = vec![0x42u8; 1448];
    let mut out = [0u8; 2048];
    let mut read = vec![0u8; 64 * 1024];
    let n = 500_000u64;
    let (mut seq, mut acked) = (IRS + 1, ISS + 1);
    let start = WallClock::now();
    for i in 0..n {
        let now = Instant::from_nanos(i * 1000);
        c.handle(now, &header(seq, acked), &payload);
        seq = seq.wrapping_add(1448);
        let got = c.recv(&mut read);
        assert_eq!(c.send(&read[..got]), got);
        while c.poll_transmit(now, &mut out).is_some() {}
        acked = acked.wrapping_add(got as u32);
    }
    report("echo, segment by segment (1448 B each way)", n, start.elapsed(), "segments");
    black_box(&c);
}

fn ack_processing() {
    let config = Arc::new(Config { send_buffer: 4 << 20, nagle: false, ..Config::default() });
    let mut c = conn(&config);
    let data = vec![0x17u8; 1 << 20];
    let mut out = [0u8; 2048];
    let mut acked = ISS + 1;
    let mut acks = 0u64;
    let mut segs = 0u64;
    let start = WallClock::now();
    let mut t = 0u64;
    while acks < 500_000 {
        t += 1000;
        let now = Instant::from_nanos(t);
        c.send(&data);
        while let Some(n) = c.poll_transmit(now, &mut out) {
            black_box(n);
            segs += 1;
        }
        // ACK two segments at a time until nothing is outstanding.
        let mut h = header(IRS + 1, acked);
        for _ in 0..32 {
            acked = acked.wrapping_add(2 * 1448);
            h.ack = SeqNum(acked);
            h.window = u16::MAX;
            if !matches!(c.handle(now, &h, &[]), Handled::Processed) {
                acked = acked.wrapping_sub(2 * 1448);
                break;
            }
            acks += 1;
        }
    }
    let e = start.elapsed();
    report("ACK processing (+ the data segments they clock)", acks, e, "ACKs");
    report("  data segments written meanwhile", segs, e, "segments");
}

fn wheel() {
    let n = 1_000_000u32;
    let mut w = TimingWheel::new(Instant::ZERO);
    let start = WallClock::now();
    for k in 0..n {
        // Keepalive-like deadlines spread over 2 hours, plus retransmission-like ones.
        let at = if k % 4 == 0 { 200 + (k as u64 % 1000) } else { 7_200_000 + (k as u64 * 7) % 100_000 };
        w.insert(k, Instant::from_nanos(at * 1_000_000));
    }
    report("wheel insert (1M armed)", n as u64, start.elapsed(), "inserts");
    let start = WallClock::now();
    for k in (0..n).step_by(2) {
        w.remove(k);
    }
    report("wheel cancel", n as u64 / 2, start.elapsed(), "cancels");
    let start = WallClock::now();
    for k in (0..n).step_by(2) {
        w.insert(k, Instant::from_nanos((7_200_000 + k as u64 % 50_000) * 1_000_000));
    }
    report("wheel re-arm", n as u64 / 2, start.elapsed(), "inserts");
    let start = WallClock::now();
    let mut fired = 0u64;
    let mut t = 0u64;
    while !w.is_empty() {
        t += 10_000; // 10 s steps
        w.poll(Instant::from_nanos(t * 1_000_000), |_| fired += 1);
    }
    report("wheel expiry (2.1 h of 10 s polls)", fired, start.elapsed(), "expiries");
}

/// The TCP core's share of a keepalive probe: 1M parked (folded) connections come due, each
/// is unfolded to send its probe and folded again, and the peer's answer (an ACK of SND.NXT at
/// RCV.NXT) is demuxed, unfolds it again, is processed, and folds it. The answer comes with its
/// slot as a hint, as XDP's FLOWS hands it to the engine. What the engine adds (the frames, XDP,
/// AF_XDP) is not here; the memory traffic of a million slots is.
fn keepalive_round() {
    const N: u32 = 1_000_000;
    let keepalive = Keepalive { enabled: true, idle: Duration::from_secs(10), interval: Duration::from_secs(5), probes: 10 };
    let mut ep = Endpoint::new(Config { keepalive, ..Config::default() }, N);
    let local: std::net::SocketAddr = "10.0.0.1:80".parse().unwrap();
    let remote = |i: u32| std::net::SocketAddr::new(std::net::Ipv4Addr::from(0x0b00_0000 + (i >> 14)).into(), 1024 + (i & 0x3fff) as u16);
    let mut out = [0u8; 2048];
    for i in 0..N {
        ep.accept(Instant::ZERO, facts(), local, remote(i), &header(IRS + 1, ISS + 1), &[]).unwrap();
        while ep.poll_transmit(Instant::ZERO, &mut out).is_some() {}
    }
    while ep.poll_event().is_some() {}
    assert_eq!(ep.parked(), N as usize, "every idle connection folded");
    // Past the idle time and every coarse tick: all are due.
    let now = Instant::from_nanos(11_000_000_000);
    let mut answers = Vec::with_capacity(N as usize);
    let start = WallClock::now();
    // In batches of 256, as an engine thread serves timers between its reads.
    loop {
        let left = ep.handle_timeouts(now, 256);
        while let Some(t) = ep.poll_transmit(now, &mut out) {
            let (h, _) = synx_tcp::segment::parse(&out[..t.len]).unwrap();
            // The answer: ACK of SND.NXT (the probe's sequence number plus one) at RCV.NXT.
            let mut a = header(h.ack.0, h.seq.0.wrapping_add(1));
            a.options.timestamps = h.options.timestamps.map(|(tsval, _)| (2, tsval));
            answers.push((t.remote, t.handle.map(|h| h.slot()), a));
        }
        if left == 0 {
            break;
        }
    }
    let sent = start.elapsed();
    assert_eq!(answers.len(), N as usize, "one probe per connection");
    let start = WallClock::now();
    // A receive batch of 256, then the transmit step that folds what it woke.
    for batch in answers.chunks(256) {
        for (r, slot, a) in batch {
            ep.handle_hinted(now, local, *r, *slot, a, &[], &mut |_, _| 0);
        }
        while ep.poll_transmit(now, &mut out).is_some() {}
        while ep.poll_event().is_some() {}
    }
    let answered = start.elapsed();
    assert_eq!(ep.parked(), N as usize, "every answered connection folded again");
    report("keepalive: 1M parked, probes sent", N as u64, sent, "probes");
    report("keepalive: their answers taken", N as u64, answered, "answers");
    report("keepalive: a probe and its answer", N as u64, sent + answered, "probes");
}

/// Demux alone: the tuple index's lookup (hash, probe, compare against the slot's connection)
/// among 100k connections, live (boxed) or parked (folded in their slots), in a scattered order;
/// then the same with the slot as a hint (what XDP's FLOWS hands the engine with each frame):
/// one look at the slot, no index.
fn demux() {
    const N: u32 = 100_000;
    let local: std::net::SocketAddr = "10.0.0.1:80".parse().unwrap();
    let remote = |i: u32| std::net::SocketAddr::new(std::net::Ipv4Addr::from(0x0b00_0000 + (i >> 14)).into(), 1024 + (i & 0x3fff) as u16);
    for park in [false, true] {
        let mut ep = Endpoint::new(Config::default(), N);
        ep.set_parking(park);
        let mut out = [0u8; 2048];
        let mut slots = Vec::with_capacity(N as usize);
        for i in 0..N {
            slots.push(ep.accept(Instant::ZERO, facts(), local, remote(i), &header(IRS + 1, ISS + 1), &[]).unwrap().slot());
            while ep.poll_transmit(Instant::ZERO, &mut out).is_some() {}
        }
        while ep.poll_event().is_some() {}
        assert_eq!(ep.parked(), if park { N as usize } else { 0 });
        // 7919 is prime to N: i * 7919 mod N visits every connection once a pass.
        let order: Vec<_> = (0..N).map(|i| (i as u64 * 7919 % N as u64) as u32).map(|i| (remote(i), slots[i as usize])).collect();
        for hinted in [false, true] {
            let (passes, mut found) = (10, 0u64);
            let start = WallClock::now();
            for _ in 0..passes {
                for &(r, slot) in &order {
                    let hint = black_box(hinted.then_some(slot));
                    found += u64::from(black_box(ep.lookup_hinted(local, r, hint)).map(|h| h.slot()) == Some(slot));
                }
            }
            let e = start.elapsed();
            assert_eq!(found, u64::from(N) * passes, "every lookup finds its connection");
            let name = match (hinted, park) {
                (false, false) => "demux: lookup among 100k live",
                (false, true) => "demux: lookup among 100k parked",
                (true, false) => "demux: slot hint among 100k live",
                (true, true) => "demux: slot hint among 100k parked",
            };
            report(name, found, e, "lookups");
        }
    }
}

fn memory() {
    let config = Arc::new(Config::default());
    let c = conn(&config);
    println!(
        "idle ESTABLISHED connection: {} B of TCB (boxed in the endpoint slab), {} B of buffers",
        std::mem::size_of::<Connection>(),
        c.heap_bytes()
    );
    println!(
        "folded idle connection: {} B of endpoint slot (the folded TCB, {} B, with its tuple), 0 B of buffers",
        synx_tcp::Endpoint::slot_bytes(),
        std::mem::size_of::<synx_tcp::connection::Parked>()
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    memory();
    in_order_data();
    echo_per_segment();
    ack_processing();
    wheel();
    demux();
    keepalive_round();
}
