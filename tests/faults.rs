//! Faults and hostile input, checked from the wire (issue 7, scenarios 8 to 11): a SYN flood
//! from spoofed sources, random loss on the client's link, malformed frames and blind
//! injections (RFC 5961), and a daemon killed mid-transfer. In every case the legitimate
//! connections carry on (or, after the kill, new ones work) and the counters say what happened.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::process::CommandExt as _,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use etherparse::{PacketBuilder, TcpOptionElement};
use testbed::{
    Bed, Daemon, PORT, PacketSocket, VethPair, digest, echo_roundtrip, mac_of, process_rss_bytes,
    tcp_of, wait_for,
};

/// The flood saturates both cores; the loss tests (which share them with each other fine) would
/// then starve it of CPU. The flood takes this lock exclusively, the loss tests shared.
static CPU_HEAVY: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// trafgen and its files, stopped and removed however the test ends (a panic included).
/// trafgen runs in a process group of its own: its worker process (`--cpus 1` forks one) is
/// signalled with it.
/// trafgen flooding from the client namespace, started again whenever it exits: sending from a
/// packet socket's TX ring past the qdisc, it gives up for good when the veth pushes back
/// ("Flushing TX_RING failed: Resource temporarily unavailable"), which a loaded machine makes
/// happen; the flood is the test's weather, not what it tests, so it must last.
struct Flood {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    restarts: std::sync::Arc<std::sync::atomic::AtomicU32>,
    supervisor: Option<std::thread::JoinHandle<()>>,
    files: [std::path::PathBuf; 2],
}

impl Flood {
    /// Run `start()` (a trafgen in its own process group) until dropped.
    fn start(start: impl Fn() -> std::process::Child + Send + 'static, files: [std::path::PathBuf; 2]) -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let restarts = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let (stop2, restarts2) = (stop.clone(), restarts.clone());
        let supervisor = std::thread::spawn(move || {
            loop {
                let mut child = start();
                while matches!(child.try_wait(), Ok(None)) && !stop2.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if stop2.load(Ordering::SeqCst) {
                    Self::end(&mut child);
                    return;
                }
                let _ = child.wait();
                restarts2.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Self { stop, restarts, supervisor: Some(supervisor), files }
    }

    /// SIGINT is how trafgen stops; its worker, busy sending, has been seen to miss it for
    /// many minutes, so the group is killed after a grace.
    fn end(child: &mut std::process::Child) {
        let group = -(child.id() as i32);
        // SAFETY: kill(2) on the process group of our own child.
        unsafe { libc::kill(group, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above; the group is gone already if trafgen stopped with all its workers.
        unsafe { libc::kill(group, libc::SIGKILL) };
        let _ = child.wait();
    }

    /// How often trafgen had to be started again, and the last lines it wrote.
    fn said(&self) -> String {
        let text = std::fs::read_to_string(&self.files[1]).unwrap_or_default();
        let last = text.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
        format!("restarted {} times; {last}", self.restarts.load(std::sync::atomic::Ordering::SeqCst))
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(s) = self.supervisor.take() {
            let _ = s.join();
        }
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

#[test]
fn s08_syn_flood_from_spoofed_sources_legit_clients_still_served_and_memory_flat() {
    let _alone = CPU_HEAVY.write().unwrap_or_else(|e| e.into_inner());
    let bed = Bed::start("echo", &["--metrics", METRICS]);
    // Warm up: one connection, so the engine's buffers and tables exist before we measure.
    assert_eq!(bed.client(false, |mut s| echo_roundtrip(&mut s, b"warm")), b"warm");
    assert!(bed.wait_no_conns());
    let pid = bed.daemon.pid();
    let rss_before = process_rss_bytes(pid).expect("the daemon's VmRSS");
    let synacks_before = bed.daemon.counter("xdp_syn_cookie_sent").unwrap();

    // trafgen in the client namespace: SYNs from random sources in the half of 198.18.0.0/15
    // (where every address here lies) that does not hold this bed's pair, and random ports, at
    // the rate it can reach.
    let server_mac = mac_of(&bed.net.server, &bed.net.server_if).unwrap();
    let client_mac = mac_of(&bed.net.client, &bed.net.client_if).unwrap();
    let mac = |m: [u8; 6]| m.map(|b| format!("{b:02x}")).join(":");
    let spoofed = if bed.net.server_v4.octets()[1] == 18 { 19 } else { 18 };
    let conf = format!(
        "{{ eth(da={}, sa={}), ipv4(sa=198.{spoofed}.0.0, sa[2:2]=drnd(), da={}, ttl=64, id=drnd()), \
         tcp(sp=drnd(1024, 65535), dp={PORT}, seq=drnd(), syn, win=64240) }}",
        mac(server_mac),
        mac(client_mac),
        bed.net.server_v4,
    );
    let conf_path = std::env::temp_dir().join(format!("{}-flood.cfg", bed.net.client.name()));
    std::fs::write(&conf_path, conf).unwrap();
    // trafgen's complaints go to a file: into an unread pipe they would fill it and stall the
    // flood once the veth pushes back.
    let log_path = conf_path.with_extension("log");
    let log = std::fs::File::create(&log_path).unwrap();
    let (client_ns, client_if, conf) = (bed.net.client.name().to_string(), bed.net.client_if.clone(), conf_path.clone());
    let flood = Flood::start(
        move || {
            std::process::Command::new("ip")
                .args(["netns", "exec", &client_ns, "trafgen"])
                .args(["--dev", &client_if, "--cpus", "1", "--num", "0", "--conf"])
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(log.try_clone().expect("the log's handle"))
                .process_group(0)
                .spawn()
                .expect("trafgen (netsniff-ng; `cargo xtask setup` installs it)")
        },
        [conf_path, log_path],
    );
    let started = Instant::now();
    // At least 30,000 SYN-ACKs before the legitimate clients start: a fraction of a second on
    // an otherwise idle machine (150,000 take about 1.4 s here), longer on a busy one.
    let flooding = wait_for(Duration::from_secs(60), || {
        bed.daemon.counter("xdp_syn_cookie_sent").unwrap() > synacks_before + 30_000
    });
    assert!(flooding, "the flood never got going: {:?}; trafgen said: {}", bed.daemon.stats().unwrap(), flood.said());
    // A scrape during the flood answers, and sees it: the exporter waits on no engine thread.
    let during = parse_exposition(&scrape(&bed).expect("a scrape during the flood"));
    assert!(during[&("synx_xdp_syn_cookie_sent_total".to_string(), String::new())] > synacks_before + 30_000);

    // Legitimate clients during the flood: 100 connections, 32 KiB echoed by each.
    let addr = bed.addr(false);
    let client_nstat = |name| bed.net.client.nstat(name).unwrap();
    let (syn_retrans0, retrans0) = (client_nstat("TcpExtTCPSynRetrans"), client_nstat("TcpRetransSegs"));
    let served = bed
        .net
        .client
        .run(move || {
            let mut failed = Vec::new();
            for i in 0..100u32 {
                let data: Vec<u8> = (0..32 * 1024u32).map(|j| (j ^ i) as u8).collect();
                let this = Instant::now();
                let echoed = TcpStream::connect_timeout(&addr, Duration::from_secs(15)).and_then(|mut s| {
                    s.set_read_timeout(Some(Duration::from_secs(15)))?;
                    s.write_all(&data)?; // 32 KiB fit in the socket buffers: no writer thread
                    let mut back = vec![0u8; data.len()];
                    s.read_exact(&mut back)?;
                    Ok(back)
                });
                match echoed {
                    Ok(back) if back == data => {}
                    Ok(_) => failed.push(format!("#{i}: echoed bytes differ")),
                    Err(e) => failed.push(format!("#{i}: {e} after {:?}", this.elapsed())),
                }
            }
            failed
        })
        .unwrap();
    let synacks = bed.daemon.counter("xdp_syn_cookie_sent").unwrap() - synacks_before;
    let rss_during = process_rss_bytes(pid).expect("the daemon's VmRSS");
    let flood_said = flood.said();
    drop(flood);
    // What the flood cost the legitimate clients' packets on the shared veth: the clients'
    // own retransmissions (SYNs, and data segments), for the record.
    let (syn_retrans, retrans) = (client_nstat("TcpExtTCPSynRetrans") - syn_retrans0, client_nstat("TcpRetransSegs") - retrans0);

    assert!(
        served.is_empty(),
        "legitimate connections failed during the flood: {served:?}; the clients retransmitted {syn_retrans} SYNs and \
         {retrans} segments; synx stats {:?}",
        bed.daemon.stats().unwrap()
    );
    assert!(synacks > 30_000, "{synacks}");
    // Only the legitimate connections (and the warm-up) ever became connections.
    assert_eq!(bed.daemon.counter("tcp_accepted").unwrap(), 101);
    let conns = bed.daemon.conns().unwrap();
    assert!(
        conns.iter().all(|c| c["remote"].as_str().is_some_and(|r| r.starts_with(&format!("{}:", bed.net.client_v4)))),
        "a spoofed SYN created a connection: {conns:?}"
    );
    // Stateless SYN-ACKs: tens of thousands and more of them cost no memory. Allow for
    // allocator noise, the legitimate connections' buffers (100 x 32 KiB passed through) and
    // what a flood fills to its bounds, whatever its length: the SYN-ACK retransmitter's table
    // at its cap (2,048 handshakes, about 360 KB) and the pages of XDP's record ring (128 KiB,
    // mapped twice); not for per-SYN state (30,000 SYNs x 72 bytes, less than a kernel request
    // sock, would be 2.1 MB on top). Seen: 0.7 MB of growth with 100,000-130,000 SYN-ACKs
    // without the retransmitter (--synack-retries 0), 1.1-1.3 MB with it.
    let grown = rss_during.saturating_sub(rss_before);
    assert!(grown < 2 << 20, "RSS grew by {grown} bytes during {synacks} SYN-ACKs");
    eprintln!(
        "flood: {synacks} SYN-ACKs in {:?}, RSS {rss_before} -> {rss_during}; the clients retransmitted {syn_retrans} SYNs \
         and {retrans} segments; trafgen {}",
        started.elapsed(),
        flood_said
    );
    metrics_agree_with_stats_and_promtool(&bed);
}

/// Where the daemons of this file serve metrics, inside their own namespace.
const METRICS: &str = "127.0.0.1:9464";

/// `GET /metrics` from inside the daemon's namespace: the body, within 10 s.
fn scrape(bed: &Bed) -> anyhow::Result<String> {
    bed.net.server.run(|| {
        let mut s = TcpStream::connect_timeout(&METRICS.parse().unwrap(), Duration::from_secs(10))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: synx\r\n\r\n")?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)?;
        let (head, body) = reply.split_once("\r\n\r\n").ok_or_else(|| anyhow::anyhow!("no head: {reply}"))?;
        anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "{head}");
        Ok(body.to_string())
    })?
}

/// Samples by name and labels (as written, in order).
fn parse_exposition(text: &str) -> std::collections::HashMap<(String, String), u64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line {l:?}"));
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            ((name.to_string(), labels.trim_end_matches('}').to_string()), value.parse().unwrap_or_else(|_| panic!("{l}")))
        })
        .collect()
}

/// promtool accepts a scrape, and every value of `synx stats --json` is there: a counter read
/// between two `synx stats` lies between their values, summed over queues (and reasons).
fn metrics_agree_with_stats_and_promtool(bed: &Bed) {
    let text = scrape(bed).unwrap();
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus; `cargo xtask setup` installs it)");
    promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success() && checked.stdout.is_empty() && checked.stderr.is_empty(),
        "promtool: {} {}\n{text}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    let before = bed.daemon.stats().unwrap();
    let samples = parse_exposition(&scrape(bed).unwrap());
    let after = bed.daemon.stats().unwrap();
    let before = before.as_object().unwrap();
    assert!(before.len() > 40, "{before:?}");
    for (stat, was) in before {
        let (was, now) = (was.as_u64().unwrap(), after[stat].as_u64().unwrap());
        let (family, reason) = synx::metrics::exposed_as(stat).unwrap_or((stat, None));
        let names = [format!("synx_{family}_total"), format!("synx_{family}")];
        let matching: Vec<u64> = samples
            .iter()
            .filter(|((name, labels), _)| {
                names.contains(name) && reason.is_none_or(|r| labels.contains(&format!("reason=\"{r}\"")))
            })
            .map(|(_, v)| *v)
            .collect();
        assert!(!matching.is_empty(), "{stat} is not exposed");
        let got: u64 = matching.iter().sum();
        assert!(was.min(now) <= got && got <= was.max(now), "{stat}: stats {was} then {now}, metrics {got}");
    }
    let memory = samples[&("synx_process_resident_memory_bytes".to_string(), String::new())];
    assert!(memory > 1 << 20, "{memory}");
    assert!(samples[&("synx_bpf_map_memory_bytes".to_string(), String::new())] > 0);
}

#[test]
fn s12_http_request_bodies_cost_no_memory_and_absurd_lengths_are_refused() {
    use std::io::{Read as _, Write as _};
    let bed = Bed::start("http", &[]);
    let pid = bed.daemon.pid();
    let ask = |request: Vec<u8>, body: usize| {
        bed.client(false, move |mut s| {
            s.write_all(&request).unwrap();
            let chunk = vec![b'x'; 64 * 1024];
            let mut left = body;
            while left > 0 {
                let n = left.min(chunk.len());
                s.write_all(&chunk[..n]).unwrap();
                left -= n;
            }
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got);
            String::from_utf8_lossy(&got).into_owned()
        })
    };
    // Warm up, so the engine's buffers exist before we measure.
    let warm = ask(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(), 0);
    assert!(warm.starts_with("HTTP/1.1 200"), "{warm}");
    let rss_before = process_rss_bytes(pid).expect("the daemon's VmRSS");
    // A terabyte declared: refused at once (the old app waited to hold it all).
    let got = ask(b"POST / HTTP/1.1\r\nContent-Length: 1000000000000\r\n\r\n".to_vec(), 0);
    assert!(got.starts_with("HTTP/1.1 413"), "{got}");
    // The u64 limit: a wrap or a panic in the old arithmetic.
    let got = ask(b"POST / HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\n".to_vec(), 0);
    assert!(got.starts_with("HTTP/1.1 413"), "{got}");
    // 48 MiB of body, then a response: the body is dropped as it arrives.
    let len = 48 << 20;
    let got = ask(format!("POST / HTTP/1.1\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n").into_bytes(), len);
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    let rss_after = process_rss_bytes(pid).expect("the daemon's VmRSS");
    let grown = rss_after.saturating_sub(rss_before);
    // What TCP may hold for one connection is not the app's doing: receive right-sizing grows
    // the window (and its buffer) up to `recv_buffer_max` when the app reads slower than the
    // path delivers, as on a loaded machine. A body kept in memory would be 48 MiB.
    let tcp_may_hold = synx_tcp::Config::default().recv_buffer_max as u64;
    let bound = tcp_may_hold + (8 << 20);
    assert!(grown < bound, "RSS grew by {grown} bytes (bound {bound}) for a {len}-byte request body");
    eprintln!("http bodies: RSS {rss_before} -> {rss_after}");
}

/// Lose `percent`% of the frames each way on the path (the path emulator's middle namespace:
/// a drop in the client's own netdev egress hook fails its transmit, and its TCP sends again at
/// once, so the client's segments would never be lost to synx), and move 64 MiB each way.
fn echo_64mib_through_loss(percent: u32) {
    use testbed::path::{Dir, Loss, PathBed, PathSpec, probe};
    let _shared = CPU_HEAVY.read().unwrap_or_else(|e| e.into_inner());
    let spec = PathSpec::default().with_loss(Loss::Random(f64::from(percent) / 100.0));
    let bed = PathBed::builder().both(spec).xdp_server().seed(u64::from(percent)).start().unwrap();
    let server = &bed.servers[0];
    let addr = SocketAddr::new(server.v4.into(), PORT);
    let daemon = Daemon::start(&server.ns, &server.iface, &["--listen", &format!("{addr}=echo")]).unwrap();
    // probe::echo checks the length and the hash of what came back.
    probe::echo(&bed.client, addr, 64 << 20, 9, Some(Duration::from_secs(60)))
        .unwrap_or_else(|e| panic!("64 MiB through {percent}% loss: {e:#}; synx {:?}", daemon.stats()));
    let (up, down) = (bed.stats(Dir::Up), bed.stats(Dir::Down));
    assert!(up.lost > 0 && down.lost > 0, "no loss was injected: up {} down {}", up.lost, down.lost);
    eprintln!("{percent}% loss: lost {} of {} frames up, {} of {} down; synx {:?}", up.lost, up.impairable, down.lost, down.impairable, daemon.stats().unwrap());
}

#[test]
fn s09_one_percent_loss_64_mib_each_way_intact() {
    echo_64mib_through_loss(1);
}

#[test]
fn s09b_five_percent_loss_64_mib_each_way_intact() {
    echo_64mib_through_loss(5);
}

/// What the client's side of one connection looks like on the wire, learned from a capture:
/// enough to forge segments for it.
#[derive(Debug, Clone, Copy)]
struct Seen {
    client_port: u16,
    /// The server's RCV.NXT (the next byte it expects from the client).
    rcv_nxt: u32,
    /// The server's SND.NXT.
    snd_nxt: u32,
    /// The client's latest TSval and the server's latest (our TSecr).
    ts: (u32, u32),
}

fn timestamps(t: &etherparse::TcpSlice<'_>) -> Option<(u32, u32)> {
    t.options_iterator().filter_map(Result::ok).find_map(|o| match o {
        TcpOptionElement::Timestamp(v, e) => Some((v, e)),
        _ => None,
    })
}

fn learn(frames: &[Vec<u8>], client_port: u16) -> Seen {
    let (mut rcv_nxt, mut snd_nxt, mut tsval, mut tsecr) = (None, None, 0, 0);
    for f in frames {
        let Some(t) = tcp_of(f) else { continue };
        if t.source_port() == client_port {
            rcv_nxt = Some(t.sequence_number().wrapping_add(t.payload().len() as u32));
            snd_nxt = Some(t.acknowledgment_number());
            if let Some((v, _)) = timestamps(&t) {
                tsval = v;
            }
        } else if t.destination_port() == client_port
            && let Some((v, _)) = timestamps(&t)
        {
            tsecr = v;
        }
    }
    Seen { client_port, rcv_nxt: rcv_nxt.unwrap(), snd_nxt: snd_nxt.unwrap(), ts: (tsval, tsecr) }
}

#[test]
fn s10_malformed_frames_and_blind_injections_are_counted_and_the_connection_carries_on() {
    let bed = Bed::start("echo", &[]);
    let net = &bed.net;
    let cap = PacketSocket::open(&net.client, &net.client_if).unwrap();
    let server_mac = mac_of(&net.server, &net.server_if).unwrap();
    let client_mac = mac_of(&net.client, &net.client_if).unwrap();
    let addr = bed.addr(false);
    let stream = net
        .client
        .run(move || {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            assert_eq!(echo_roundtrip(&mut s, b"hello"), b"hello");
            s
        })
        .unwrap();
    let client_port = stream.local_addr().unwrap().port();
    let frames = cap.collect(Duration::from_millis(300), 64, |f| tcp_of(f).is_some());
    let seen = learn(&frames, client_port);
    let (c4, s4) = (net.client_v4.octets(), net.server_v4.octets());

    // A segment of this connection as the client would send it (timestamps included, as the
    // connection negotiated them), with `edit` choosing flags and numbers.
    let forge = |seq: u32, edit: &dyn Fn(etherparse::PacketBuilderStep<etherparse::TcpHeader>) -> etherparse::PacketBuilderStep<etherparse::TcpHeader>, payload: &[u8]| {
        let b = PacketBuilder::ethernet2(client_mac, server_mac)
            .ipv4(c4, s4, 64)
            .tcp(seen.client_port, PORT, seq, 502)
            .options(&[
                TcpOptionElement::Noop,
                TcpOptionElement::Noop,
                TcpOptionElement::Timestamp(seen.ts.0, seen.ts.1),
            ])
            .unwrap();
        let mut v = Vec::new();
        edit(b).write(&mut v, payload).unwrap();
        v
    };
    const TCP: usize = 14 + 20;
    let counters_before = bed.daemon.stats().unwrap();
    let evil = b"EVIL";

    // --- Frames the XDP program refuses before any lookup (issue 4's malformed list), or passes to
    // the kernel when they do not even say which port they are for ---
    let good = forge(seen.rcv_nxt, &|b| b.ack(seen.snd_nxt).psh(), evil);
    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x44; // IHL 4: shorter than the minimum header
    let mut bad_doff = good.clone();
    bad_doff[TCP + 12] = 0x30; // data offset 3 words
    let mut doff_past_end = good.clone();
    doff_past_end[TCP + 12] = 0xf0; // 60-byte header in a 36-byte segment
    let truncated = good[..TCP + 10].to_vec();
    let mut fragment = good.clone();
    fragment[14 + 6] = 0x20; // More Fragments, offset 0: the first fragment, ports and all
    let mut bcast_mac = good.clone();
    bcast_mac[6..12].copy_from_slice(&[0xff; 6]);
    let syn_fin = forge(0x1000, &|b| b.syn().fin(), &[]);
    let syn_rst = forge(0x1000, &|b| b.syn().rst(), &[]);
    let mut zero_port = forge(0x1000, &|b| b.syn(), &[]);
    zero_port[TCP] = 0;
    zero_port[TCP + 1] = 0;
    // A SYN whose options run past the header (MSS claiming 40 bytes).
    let mut opt_overrun = forge(0x1000, &|b| b.syn(), &[]);
    opt_overrun[TCP] ^= 0x40; // another source port: a new tuple, so XDP parses the options
    opt_overrun[TCP + 20] = 2;
    opt_overrun[TCP + 21] = 40;
    // --- Segments that parse but that TCP must refuse (the flow's own engine decides) ---
    let mut bad_checksum = good.clone();
    bad_checksum[TCP + 16] ^= 0x55;
    // RFC 5961 3.2: a RST inside the window but not at RCV.NXT gets a challenge ACK.
    let rst_in_window = forge(seen.rcv_nxt.wrapping_add(1000), &|b| b.rst(), &[]);
    // RFC 9293 3.10.7.4: a RST outside the window is dropped silently.
    let rst_out_of_window = forge(seen.rcv_nxt.wrapping_add(1 << 30), &|b| b.rst(), &[]);
    // RFC 5961 4.2: a SYN on a synchronized connection gets a challenge ACK (one inside the
    // window, so that it passes the sequence check of RFC 9293 3.10.7.4 and meets this one).
    let syn_established = forge(seen.rcv_nxt.wrapping_add(100), &|b| b.syn(), &[]);
    // RFC 5961 5.2 / RFC 9293 3.10.7.4: data acknowledging bytes never sent is dropped (ACKed).
    let ack_unsent = forge(seen.rcv_nxt, &|b| b.ack(seen.snd_nxt.wrapping_add(1 << 20)).psh(), evil);
    // RFC 5961 5.2: an ACK older than SND.UNA - MAX.SND.WND is dropped (ACKed).
    let ack_ancient = forge(seen.rcv_nxt, &|b| b.ack(seen.snd_nxt.wrapping_sub(1 << 30)).psh(), evil);
    // RFC 9293 3.10.7.4: data outside the receive window is unacceptable (ACKed, dropped).
    let out_of_window = forge(seen.rcv_nxt.wrapping_add(1 << 30), &|b| b.ack(seen.snd_nxt).psh(), evil);

    let injections: [(&str, &[u8]); 18] = [
        ("bad IHL", &bad_ihl),
        ("bad data offset", &bad_doff),
        ("data offset past the end", &doff_past_end),
        ("truncated TCP header", &truncated),
        ("IP fragment", &fragment),
        ("broadcast source MAC", &bcast_mac),
        ("SYN+FIN", &syn_fin),
        ("SYN+RST", &syn_rst),
        ("zero source port", &zero_port),
        ("SYN options overrun", &opt_overrun),
        ("bad TCP checksum", &bad_checksum),
        ("RST in window", &rst_in_window),
        ("RST out of window", &rst_out_of_window),
        ("SYN on established", &syn_established),
        ("ACK of unsent data", &ack_unsent),
        ("ancient ACK", &ack_ancient),
        ("data out of window", &out_of_window),
        ("empty frame tail", &good[..14]),
    ];
    for (what, frame) in injections {
        cap.send(frame).unwrap_or_else(|e| panic!("{what}: {e}"));
        std::thread::sleep(Duration::from_millis(5));
    }
    // Challenge ACKs (and the ACKs RFC 9293 asks for) carry the true numbers and no data.
    let answers = cap.collect(Duration::from_millis(500), 64, |f| {
        tcp_of(f).is_some_and(|t| {
            t.source_port() == PORT
                && t.destination_port() == client_port
                && t.ack()
                && !t.rst()
                && t.payload().is_empty()
        })
    });
    // Two challenge ACKs (RST in window, SYN) and three ACKs for unacceptable segments (ACK of
    // unsent data, ancient ACK, data out of window); the out-of-window RST gets nothing.
    assert_eq!(answers.len(), 5, "answers to the injections");
    for f in &answers {
        let t = tcp_of(f).unwrap();
        assert_eq!((t.sequence_number(), t.acknowledgment_number()), (seen.snd_nxt, seen.rcv_nxt));
    }

    // The connection carries on: nothing injected reached the application, and it still echoes.
    let (back, _stream) = net
        .client
        .run(move || {
            let mut s = stream;
            (echo_roundtrip(&mut s, b"still here"), s)
        })
        .unwrap();
    assert_eq!(back, b"still here", "the connection was disturbed or injected data delivered");
    assert_eq!(bed.states(), vec!["ESTABLISHED".to_string()]);

    let after = bed.daemon.stats().unwrap();
    let delta = |name: &str| {
        after[name].as_u64().unwrap_or(0) - counters_before[name].as_u64().unwrap_or(0)
    };
    let report = after.to_string();
    // Exact counts: in these namespaces nothing else produces these outcomes.
    for (counter, n) in [
        ("xdp_drop_bad_header", 1),           // bad data offset
        ("xdp_drop_truncated", 2),            // offset past the end, truncated
        ("xdp_pass_malformed", 2),            // bad IHL, empty: no port to check, the kernel drops them
        ("xdp_drop_fragment", 1),             // the kernel would reset the peer of a reassembled one
        ("xdp_drop_bad_address", 1),          // broadcast source
        ("xdp_drop_bad_flags", 3),            // SYN+FIN, SYN+RST, zero port
        ("xdp_drop_bad_options", 1),          // option overrun in a SYN
        ("wire_drop_bad_checksum", 1),        // caught in userspace before TCP sees it
        ("tcp_drop_rst_not_exact", 1),        // RFC 5961 3.2
        ("tcp_drop_syn_synchronized", 1),     // RFC 5961 4.2
        ("tcp_drop_bad_ack", 2),              // RFC 5961 5.2
        ("tcp_drop_unacceptable", 2),         // RFC 9293 3.10.7.4: out-of-window RST and data
        ("tcp_dropped", 6),
    ] {
        assert_eq!(delta(counter), n, "{counter}: {report}");
    }
    assert_eq!(delta("tcp_closed_reset"), 0, "{report}");
}

#[test]
fn s11_kill_9_mid_transfer_the_client_is_reset_and_a_restarted_daemon_serves() {
    let net = VethPair::new().unwrap();
    net.attach_peer_xdp().unwrap();
    let listen = format!("{}:{PORT}=echo", net.server_v4);
    let addr: std::net::SocketAddr = format!("{}:{PORT}", net.server_v4).parse().unwrap();
    let daemon = Daemon::start(&net.server, &net.server_if, &["--listen", &listen]).unwrap();
    let moved = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (m, st) = (moved.clone(), stop.clone());
    // A client that streams through the echo until something breaks.
    let client = net.client.spawn(move || -> std::io::Result<()> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.set_write_timeout(Some(Duration::from_secs(30)))?;
        let mut r = s.try_clone()?;
        let reader = std::thread::spawn(move || -> std::io::Result<()> {
            let mut buf = vec![0u8; 65536];
            loop {
                match r.read(&mut buf)? {
                    0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                    n => m.fetch_add(n as u64, Ordering::Relaxed),
                };
            }
        });
        let chunk = vec![0x5a; 65536];
        let wrote = loop {
            if st.load(Ordering::Relaxed) {
                break Ok(());
            }
            if let Err(e) = s.write_all(&chunk) {
                break Err(e);
            }
        };
        let read = reader.join().unwrap();
        wrote.and(read)
    });
    assert!(wait_for(Duration::from_secs(10), || moved.load(Ordering::Relaxed) > 4 << 20));
    let killed_at = Instant::now();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGKILL) };
    // With synx gone, its XDP program goes with it and the server's kernel, which has no
    // socket on this port, answers the client's next segment with a reset.
    let outcome = client.join().unwrap().unwrap();
    stop.store(true, Ordering::Relaxed);
    let err = outcome.expect_err("the transfer survived the daemon's death?");
    assert!(
        matches!(err.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe),
        "{err:?} after {:?}",
        killed_at.elapsed()
    );

    // The next daemon starts cleanly on the same interface and serves new connections.
    drop(daemon);
    let daemon = Daemon::start(&net.server, &net.server_if, &["--listen", &listen]).unwrap();
    let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7) as u8).collect();
    let want = digest(&data);
    let got = net
        .client
        .run(move || {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            digest(&echo_roundtrip(&mut s, &data))
        })
        .unwrap();
    assert_eq!(got, want);
    assert_eq!(daemon.counter("tcp_accepted").unwrap(), 1);
}
