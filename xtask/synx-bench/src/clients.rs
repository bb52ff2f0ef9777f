//! Load generators that open connections: the closed-loop connection rate, the open-loop connect
//! probe (legitimate clients during a flood), one bulk transfer, and idle connections held open.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use mio::{Events, Interest, Poll, Token, net::TcpStream};

use crate::latency::{Failures, Latencies, io_reason};

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
const BODY: &[u8] = b"hello from synx\n";

/// What a connection-rate run did.
#[derive(Debug, Default)]
pub struct ConnRate {
    pub attempted: u64,
    pub completed: u64,
    /// Connections still open when time ran out (neither counted as done nor as failed).
    pub unfinished: u64,
    pub failures: Failures,
    pub secs: f64,
}

impl ConnRate {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "attempted": self.attempted,
            "completed": self.completed,
            "unfinished": self.unfinished,
            "failed": self.failures.total(),
            "failures": self.failures.to_json(),
            "secs": self.secs,
        })
    }
}

enum Phase {
    Connecting,
    Reading,
}

struct Attempt {
    stream: TcpStream,
    phase: Phase,
    started: Instant,
    response: Vec<u8>,
}

/// How long one connection of the rate loop may take before it counts as failed: above Linux's
/// first SYN retransmission (1 s), so a dropped SYN shows up as slow, and a second one as failed.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);

/// Closed loop: `concurrency` connections in flight; each connects, sends one request with
/// `Connection: close`, reads the response to EOF and checks it, then the next one starts.
pub fn conn_rate(addr: SocketAddr, duration: Duration, concurrency: usize) -> anyhow::Result<ConnRate> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let mut slots: Vec<Option<Attempt>> = (0..concurrency).map(|_| None).collect();
    let mut r = ConnRate::default();
    let start = Instant::now();
    let deadline = start + duration;
    let mut buf = vec![0u8; 4096];
    let start_one = |slot: usize, slots: &mut Vec<Option<Attempt>>, r: &mut ConnRate, poll: &Poll| {
        // A connect that fails at once (e.g. no local port left) counts, and the slot retries
        // on the next pass.
        r.attempted += 1;
        match TcpStream::connect(addr) {
            Ok(mut stream) => {
                if let Err(e) = poll.registry().register(&mut stream, Token(slot), Interest::READABLE | Interest::WRITABLE) {
                    r.failures.add(io_reason("register", &e));
                    return;
                }
                slots[slot] = Some(Attempt { stream, phase: Phase::Connecting, started: Instant::now(), response: Vec::with_capacity(256) });
            }
            Err(e) => r.failures.add(io_reason("connect", &e)),
        }
    };
    while Instant::now() < deadline {
        for slot in 0..concurrency {
            if slots[slot].is_none() {
                start_one(slot, &mut slots, &mut r, &poll);
            }
        }
        let wait = deadline.saturating_duration_since(Instant::now()).min(Duration::from_millis(100));
        if let Err(e) = poll.poll(&mut events, Some(wait))
            && e.kind() != ErrorKind::Interrupted
        {
            return Err(e.into());
        }
        for ev in events.iter() {
            let slot = ev.token().0;
            let Some(a) = slots[slot].as_mut() else { continue };
            match step(a, &mut buf) {
                Step::Wait => {}
                Step::Done => {
                    r.completed += 1;
                    slots[slot] = None;
                }
                Step::Failed(reason) => {
                    r.failures.add(reason);
                    slots[slot] = None;
                }
            }
        }
        let now = Instant::now();
        for slot in slots.iter_mut() {
            if slot.as_ref().is_some_and(|a| now - a.started > ATTEMPT_TIMEOUT) {
                let phase = match slot.as_ref().map(|a| &a.phase) {
                    Some(Phase::Connecting) => "connect",
                    _ => "response",
                };
                r.failures.add(format!("{phase}: no answer within {} s", ATTEMPT_TIMEOUT.as_secs()));
                *slot = None;
            }
        }
    }
    r.secs = start.elapsed().as_secs_f64();
    r.unfinished = slots.iter().filter(|s| s.is_some()).count() as u64;
    // Those were counted as attempted: take them back out, the run ended under them.
    r.attempted -= r.unfinished;
    Ok(r)
}

enum Step {
    Wait,
    Done,
    Failed(String),
}

fn step(a: &mut Attempt, buf: &mut [u8]) -> Step {
    if let Phase::Connecting = a.phase {
        match a.stream.take_error() {
            Ok(Some(e)) | Err(e) => return Step::Failed(io_reason("connect", &e)),
            Ok(None) => {}
        }
        match a.stream.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotConnected => return Step::Wait,
            Err(e) => return Step::Failed(io_reason("connect", &e)),
        }
        // 50 bytes into an empty send buffer: all of it goes.
        match a.stream.write(REQUEST) {
            Ok(n) if n == REQUEST.len() => a.phase = Phase::Reading,
            Ok(_) => return Step::Failed("write: short".into()),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::Wait,
            Err(e) => return Step::Failed(io_reason("write", &e)),
        }
    }
    loop {
        match a.stream.read(buf) {
            Ok(0) => {
                return if a.response.starts_with(b"HTTP/1.1 200 ") && a.response.ends_with(BODY) {
                    Step::Done
                } else if a.response.starts_with(b"HTTP/1.1 ") {
                    Step::Failed(format!("response: status {}", String::from_utf8_lossy(&a.response[9..a.response.len().min(12)])))
                } else {
                    Step::Failed(format!("response: {} bytes, not an HTTP response", a.response.len()))
                };
            }
            Ok(n) => a.response.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::Wait,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Step::Failed(io_reason("read", &e)),
        }
    }
}

/// Open loop: a connect every 1/`rate` s whatever became of the earlier ones, each checked
/// with a 5-byte echo round trip within `timeout`. Connect latency runs from the connect call
/// to the handshake's completion (the generator's own lateness is reported apart).
pub fn connect_probe(addr: SocketAddr, rate: f64, duration: Duration, timeout: Duration) -> anyhow::Result<serde_json::Value> {
    struct Probe {
        stream: TcpStream,
        called: Instant,
        connected: bool,
        got: usize,
    }
    anyhow::ensure!(rate > 0.0, "rate must be positive");
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(256);
    let mut probes: std::collections::HashMap<usize, Probe> = Default::default();
    let (mut failures, mut connect, mut lateness) = (Failures::default(), Latencies::default(), Latencies::default());
    let (mut attempted, mut succeeded, mut next_token) = (0u64, 0u64, 0usize);
    let start = Instant::now();
    let mut next = start;
    let end = start + duration;
    let mut buf = [0u8; 64];
    while Instant::now() < end || !probes.is_empty() {
        let now = Instant::now();
        while next <= now && next < end {
            attempted += 1;
            lateness.push((now - next).as_nanos() as u64);
            next += interval;
            match TcpStream::connect(addr) {
                Ok(mut stream) => {
                    let t = next_token;
                    next_token += 1;
                    poll.registry().register(&mut stream, Token(t), Interest::READABLE | Interest::WRITABLE)?;
                    probes.insert(t, Probe { stream, called: Instant::now(), connected: false, got: 0 });
                }
                Err(e) => failures.add(io_reason("connect", &e)),
            }
        }
        let until_next = if next < end { next.saturating_duration_since(Instant::now()) } else { Duration::from_millis(50) };
        if let Err(e) = poll.poll(&mut events, Some(until_next.min(Duration::from_millis(50))))
            && e.kind() != ErrorKind::Interrupted
        {
            return Err(e.into());
        }
        for ev in events.iter() {
            let t = ev.token().0;
            let Some(p) = probes.get_mut(&t) else { continue };
            let mut outcome: Option<Result<(), String>> = None;
            if !p.connected {
                match p.stream.take_error() {
                    Ok(Some(e)) | Err(e) => outcome = Some(Err(io_reason("connect", &e))),
                    Ok(None) => match p.stream.peer_addr() {
                        Ok(_) => {
                            p.connected = true;
                            connect.push(p.called.elapsed().as_nanos() as u64);
                            if let Err(e) = p.stream.write_all(b"legit") {
                                outcome = Some(Err(io_reason("write", &e)));
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::NotConnected => {}
                        Err(e) => outcome = Some(Err(io_reason("connect", &e))),
                    },
                }
            }
            if p.connected && outcome.is_none() {
                loop {
                    match p.stream.read(&mut buf) {
                        Ok(0) => {
                            outcome = Some(Err("echo: closed before the round trip".into()));
                            break;
                        }
                        Ok(n) => {
                            if p.got + n > 5 || buf[..n] != b"legit"[p.got..p.got + n] {
                                outcome = Some(Err("echo: other bytes came back".into()));
                                break;
                            }
                            p.got += n;
                            if p.got == 5 {
                                outcome = Some(Ok(()));
                                break;
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => {
                            outcome = Some(Err(io_reason("read", &e)));
                            break;
                        }
                    }
                }
            }
            match outcome {
                Some(Ok(())) => {
                    succeeded += 1;
                    probes.remove(&t);
                }
                Some(Err(reason)) => {
                    failures.add(reason);
                    probes.remove(&t);
                }
                None => {}
            }
        }
        probes.retain(|_, p| {
            let late = p.called.elapsed() > timeout;
            if late {
                failures.add(if p.connected {
                    format!("echo: no answer within {:.0} s", timeout.as_secs_f64())
                } else {
                    format!("connect: not established within {:.0} s", timeout.as_secs_f64())
                });
            }
            !late
        });
    }
    Ok(serde_json::json!({
        "attempted": attempted,
        "succeeded": succeeded,
        "failed": failures.total(),
        "failures": failures.to_json(),
        "success_pct": if attempted > 0 { 100.0 * succeeded as f64 / attempted as f64 } else { 0.0 },
        "connect_ms": connect.summary(),
        "start_lateness_ms": lateness.summary(),
        "rate": rate,
        "secs": duration.as_secs_f64(),
    }))
}

/// One connection: `bytes` into discard (then the server's FIN), or through echo while reading
/// everything back. Gbit/s of payload over the whole transfer.
pub fn bulk(addr: SocketAddr, bytes: usize, echo: bool) -> anyhow::Result<serde_json::Value> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)).context("connect")?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let chunk = vec![0x5au8; 256 * 1024];
    let start = Instant::now();
    let mut reader = s.try_clone()?;
    let rx = std::thread::spawn(move || -> std::io::Result<usize> {
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0;
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                return Ok(got);
            }
            got += n;
        }
    });
    let mut sent = 0;
    while sent < bytes {
        let n = chunk.len().min(bytes - sent);
        s.write_all(&chunk[..n]).context("write")?;
        sent += n;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    // Echo sends it all back, then closes after our FIN; discard closes after our FIN.
    let got = rx.join().map_err(|_| anyhow::anyhow!("reader panicked"))?.context("read")?;
    let secs = start.elapsed().as_secs_f64();
    let want = if echo { bytes } else { 0 };
    anyhow::ensure!(got == want, "{} returned {got} bytes, not {want}", if echo { "echo" } else { "discard" });
    Ok(serde_json::json!({ "bytes": bytes, "secs": secs, "gbit_s": bytes as f64 * 8.0 / secs / 1e9 }))
}

/// Hold `count` connections from `src` to `addr` until stdin closes.
/// Read one response with a Content-Length body.
fn read_one_response(t: &mut std::net::TcpStream) -> anyhow::Result<()> {
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        let n = t.read(&mut b)?;
        anyhow::ensure!(n > 0, "closed after {} bytes", got.len());
        got.extend_from_slice(&b[..n]);
        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
        anyhow::ensure!(head.starts_with("http/1.1 200"), "answered {head:?}");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .context("no content-length")?
            .trim()
            .parse()?;
        if got.len() >= end + 4 + len {
            return Ok(());
        }
    }
}

/// The first source port of [`idle_clients`]: connection `i` comes from `FIRST_IDLE_PORT + i`.
const FIRST_IDLE_PORT: u16 = 1024;

pub fn idle_clients(addr: SocketAddr, src: Ipv4Addr, count: usize, http: bool) -> anyhow::Result<()> {
    anyhow::ensure!(count <= usize::from(u16::MAX - FIRST_IDLE_PORT) + 1, "{count} connections from one address: more than its ports");
    let mut held = Vec::with_capacity(count);
    for i in 0..count {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        // Closed with a RST at the end: no TIME_WAIT sockets lingering into the next round's
        // slab figure.
        s.set_linger(Some(Duration::ZERO))?;
        // The source address is this process's alone, so its ports are named, not searched for
        // among the namespace's bound ports as bind(port 0) does (a million of them at 1M).
        let port = FIRST_IDLE_PORT + i as u16;
        s.bind(&SocketAddr::new(IpAddr::V4(src), port).into()).with_context(|| format!("binding {src}:{port}"))?;
        // A SYN the server dropped while busy is sent again after 1, 3, 7 and 15 s (Linux's
        // initial RTO doubling): waiting 30 s lets a loaded server take its time, not fail the
        // round at the second retransmission.
        s.connect_timeout(&addr.into(), Duration::from_secs(30)).with_context(|| format!("connection {i} from {src}"))?;
        if http {
            // A keep-alive HTTP client between requests: one request answered, then quiet.
            let mut t: std::net::TcpStream = s.try_clone()?.into();
            t.set_read_timeout(Some(Duration::from_secs(10)))?;
            t.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")?;
            read_one_response(&mut t).with_context(|| format!("the response on connection {i} from {src}"))?;
        }
        held.push(s);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {count}")?;
    out.flush()?;
    drop(out);
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    drop(held);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_server::{self, App, ListenSpec};

    /// The kernel peer on a loopback port, serving `app` from a thread of this process.
    fn peer(app: App) -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let opts = kernel_server::Options { listen: vec![ListenSpec { addr, app }], cpus: vec![0], keepalive: None, backlog: 128 };
        std::thread::spawn(move || kernel_server::run(&opts));
        // Until it listens.
        for _ in 0..200 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return addr;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the kernel peer did not listen on {addr}");
    }

    #[test]
    fn the_connection_loop_completes_connections_and_accounts_for_each() {
        let addr = peer(App::Http);
        let r = conn_rate(addr, Duration::from_millis(300), 4).unwrap();
        assert!(r.completed > 0, "{:?}", r.to_json());
        assert_eq!(r.failures.total(), 0, "{:?}", r.to_json());
        assert_eq!(r.attempted, r.completed + r.failures.total(), "{:?}", r.to_json());
    }

    #[test]
    fn refused_connections_are_failures_with_their_reason() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let r = conn_rate(closed, Duration::from_millis(100), 2).unwrap();
        assert_eq!(r.completed, 0);
        assert!(r.failures.total() > 0);
        assert!(r.failures.0.keys().all(|k| k.starts_with("connect: ") && k.contains("refused")), "{:?}", r.failures);
        let p = connect_probe(closed, 50.0, Duration::from_millis(100), Duration::from_secs(1)).unwrap();
        assert_eq!(p["succeeded"], 0);
        assert_eq!(p["failed"], p["attempted"], "{p}");
    }

    #[test]
    fn legitimate_probes_round_trip_through_echo() {
        let addr = peer(App::Echo);
        let p = connect_probe(addr, 100.0, Duration::from_millis(200), Duration::from_secs(2)).unwrap();
        assert!(p["attempted"].as_u64().unwrap() > 0, "{p}");
        assert_eq!(p["succeeded"], p["attempted"], "{p}");
        assert_eq!(p["connect_ms"]["samples"], p["attempted"], "{p}");
    }

    #[test]
    fn the_fixed_rate_generator_answers_every_scheduled_request() {
        let addr = peer(App::Http);
        let o = crate::rate::RateOptions { addr, conns: 2, rate: 400.0, duration: Duration::from_millis(300), warmup: Duration::from_millis(50) };
        let v = crate::rate::http_rate(&o).unwrap();
        assert!(v["scheduled"].as_u64().unwrap() > 0, "{v}");
        assert_eq!(v["completed"], v["scheduled"], "{v}");
        assert_eq!(v["failed"], 0, "{v}");
        assert_eq!(v["non_2xx"], 0, "{v}");
        assert_eq!(v["latency_ms"]["samples"], v["completed"], "{v}");
    }

    #[test]
    fn bulk_sends_everything_through_echo_and_into_discard() {
        for (app, echo) in [(App::Echo, true), (App::Discard, false)] {
            let v = bulk(peer(app), 4 << 20, echo).unwrap();
            assert_eq!(v["bytes"], 4 << 20, "{v}");
        }
    }
}
