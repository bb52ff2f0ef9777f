//! `cargo xtask demo`: synx on a veth pair, real Linux clients on the other side, and what
//! happened at each step: handshake, data, the server's and the client's close, keepalive
//! against a live and a dead peer, and the counters. Everything it creates is removed at the
//! end, also after Ctrl-C (the signal only sets a flag; the guards' Drop does the cleanup).

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpStream},
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};
use testbed::{Daemon, Nginx, PacketSocket, VethPair, wait_for};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn step(title: &str) -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted; cleaning up");
    }
    println!("\n== {title}");
    Ok(())
}

fn say(msg: &str) {
    println!("   {msg}");
}

fn show_conns(daemon: &Daemon) -> anyhow::Result<()> {
    let conns = daemon.conns()?;
    if conns.is_empty() {
        say("synx conns: (none)");
    }
    for c in conns {
        say(&format!(
            "synx conns: {:<12} {} <- {}  idle {} ms, {} keepalive probes",
            c["state"].as_str().unwrap_or("?"),
            c["local"].as_str().unwrap_or("?"),
            c["remote"].as_str().unwrap_or("?"),
            c["idle_ms"],
            c["keepalive_probes"]
        ));
    }
    Ok(())
}

pub fn demo(bin: &Path) -> anyhow::Result<()> {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    // SAFETY: single-threaded at this point.
    unsafe { std::env::set_var("SYNX_BIN", bin) };

    step("network: two namespaces joined by a veth pair (no route out)")?;
    let net = VethPair::new().context("creating the veth pair")?;
    net.attach_peer_xdp()?;
    say(&format!("server {} on {} ({} / {})", net.server.name(), net.server_if, net.server_v4, net.server_v6));
    say(&format!("client {} on {} ({} / {})", net.client.name(), net.client_if, net.client_v4, net.client_v6));

    step("nginx in the server namespace, on loopback only: :18080 reads the PROXY protocol, :18081 is plain HTTP")?;
    let nginx = Nginx::start(
        &net.server,
        "worker_processes 1;",
        "worker_connections 1024;",
        "log_format pp 'client $proxy_protocol_addr:$proxy_protocol_port (TCP peer $remote_addr:$remote_port)';\n\
         log_format fwd 'X-Forwarded-For $http_x_forwarded_for, nginx connection #$connection, request $connection_requests on it';\n\
         server { listen 127.0.0.1:18080 proxy_protocol; listen [::1]:18080 proxy_protocol;\n\
                  access_log {dir}/pp.log pp; location / { return 200 \"hello from nginx\\n\"; } }\n\
         server { listen 127.0.0.1:18081; access_log {dir}/fwd.log fwd; location / { return 200 \"hello from nginx\\n\"; } }",
        &[18080, 18081],
    )
    .context("starting nginx")?;
    say("nginx listens on 127.0.0.1:18080 and [::1]:18080 (proxy_protocol) and 127.0.0.1:18081");

    step("synx run: XDP in native mode, echo on :7, http on :80, a proxy to a kernel iperf3 server on :5201, nginx behind :8080 (PROXY protocol v2) and :8081 (http-proxy), short keepalive and MSL for the demo")?;
    // The proxy's backend: a one-shot iperf3 server on the server namespace's loopback.
    let iperf_server = Reaped(
        net.server
            .command("iperf3")
            .args(["-s", "-1", "-B", "127.0.0.1", "-p", "15201"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("starting iperf3 (cargo xtask setup installs it)")?,
    );
    let proxy = SocketAddr::new(net.server_v4.into(), 5201);
    let echo = SocketAddr::new(net.server_v4.into(), 7);
    let http = SocketAddr::new(net.server_v4.into(), 80);
    let echo6 = SocketAddr::new(net.server_v6.into(), 7);
    let pp = SocketAddr::new(net.server_v4.into(), 8080);
    let pp6 = SocketAddr::new(net.server_v6.into(), 8080);
    let hp = SocketAddr::new(net.server_v4.into(), 8081);
    let daemon = Daemon::start(
        &net.server,
        &net.server_if,
        &[
            "--listen", &format!("{echo}=echo"),
            "--listen", &format!("{http}=http"),
            "--listen", &format!("{echo6}=echo"),
            "--listen", &format!("{proxy}=proxy=127.0.0.1:15201"),
            "--listen", &format!("{pp}=proxy=127.0.0.1:18080,proxy-protocol=v2"),
            "--listen", &format!("{pp6}=proxy=[::1]:18080,proxy-protocol=v2"),
            "--listen", &format!("{hp}=http-proxy=127.0.0.1:18081,pool=2"),
            "--keepalive-idle", "2s", "--keepalive-interval", "1s", "--keepalive-probes", "3",
            "--msl", "1s",
        ],
    )?;
    for line in &daemon.banner {
        say(&format!("synx: {line}"));
    }

    step("handshake: the kernel's TCP connects; XDP answers the SYN with a cookie, the ACK creates the connection")?;
    let mut s = net.client.run(move || TcpStream::connect_timeout(&echo, Duration::from_secs(3)))??;
    say(&format!("client: connected {} -> {}", s.local_addr()?, echo));
    show_conns(&daemon)?;

    step("data: 1 MiB through echo, checked byte for byte")?;
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i * 31 + 7) as u8).collect();
    let expect = data.clone();
    let s2 = net.client.run(move || -> anyhow::Result<TcpStream> {
        let mut w = s.try_clone()?;
        let writer = std::thread::spawn(move || w.write_all(&data));
        let mut got = vec![0u8; expect.len()];
        s.read_exact(&mut got)?;
        writer.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
        ensure!(got == expect, "echo corrupted the data");
        Ok(s)
    })??;
    say("client: 1048576 bytes echoed intact");

    step("client closes first: synx passes CLOSE_WAIT and LAST_ACK (passive close)")?;
    let rest = net.client.run(move || -> anyhow::Result<usize> {
        let mut s = s2;
        s.shutdown(Shutdown::Write)?;
        let mut rest = Vec::new();
        s.read_to_end(&mut rest)?;
        Ok(rest.len())
    })??;
    say(&format!("client: sent FIN, read EOF after {rest} more bytes"));
    wait_for(Duration::from_secs(3), || daemon.conns().is_ok_and(|c| c.is_empty()));
    show_conns(&daemon)?;

    step("server closes first: http with Connection: close walks FIN_WAIT_1 -> FIN_WAIT_2 -> TIME_WAIT (2*MSL = 2 s)")?;
    let reply = net.client.run(move || -> anyhow::Result<String> {
        let mut s = TcpStream::connect_timeout(&http, Duration::from_secs(3))?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")?;
        let mut v = String::new();
        s.read_to_string(&mut v)?;
        Ok(v)
    })??;
    say(&format!("client: {:?} ... then EOF", reply.lines().next().unwrap_or("")));
    show_conns(&daemon)?;
    wait_for(Duration::from_secs(5), || daemon.conns().is_ok_and(|c| c.is_empty()));
    say("after 2*MSL:");
    show_conns(&daemon)?;

    step("curl: two requests on one keep-alive connection to --app http")?;
    let out = net.client.command("curl").args(["-sS", "-v", "--max-time", "5", &format!("http://{http}/a"), &format!("http://{http}/b")]).output()?;
    let log = String::from_utf8_lossy(&out.stderr);
    say(&format!(
        "curl: exit {}, {} responses, connection re-used: {}",
        out.status.code().unwrap_or(-1),
        log.matches("< HTTP/1.1 200").count(),
        if log.contains("Re-using existing connection") || log.contains("Reusing existing") { "yes" } else { "no" }
    ));

    step("wrk: 2 s, 2 threads, 32 connections against --app http")?;
    let out = net.client.command("wrk").args(["-t2", "-c32", "-d2s", &format!("http://{http}/")]).output()?;
    for line in String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains("Requests/sec") || l.contains("requests in") || l.contains("Latency")) {
        say(&format!("wrk: {}", line.trim()));
    }

    step("iperf3 through --app proxy=: client -> synx -> kernel TCP -> iperf3 server, 2 s")?;
    let out = net.client.command("iperf3").args(["-c", &net.server_v4.to_string(), "-p", "5201", "-t", "2", "--json"]).output()?;
    drop(iperf_server);
    match serde_json::from_slice::<serde_json::Value>(&out.stdout) {
        Ok(v) if v["end"]["sum_received"]["bytes"].as_u64().is_some() => say(&format!(
            "iperf3: {} bytes sent, {} received by the kernel server, {:.2} Gbit/s",
            v["end"]["sum_sent"]["bytes"],
            v["end"]["sum_received"]["bytes"],
            v["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9
        )),
        _ => say(&format!("iperf3 failed: {}", String::from_utf8_lossy(&out.stderr).trim())),
    }

    step("nginx behind synx: the proxy app sends a PROXY protocol v2 header; nginx logs the client's real address")?;
    let mut clients = Vec::new();
    for target in [pp, pp, pp6] {
        let me = net.client.run(move || -> anyhow::Result<SocketAddr> {
            let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(3))?;
            s.write_all(b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")?;
            let mut v = String::new();
            s.read_to_string(&mut v)?;
            ensure!(v.ends_with("hello from nginx\n"), "nginx answered {v:?}");
            Ok(s.local_addr()?)
        })??;
        say(&format!("client: {me} -> {target}: 200 hello from nginx"));
        clients.push(me);
    }
    wait_for(Duration::from_secs(3), || nginx.read("pp.log").lines().count() >= clients.len());
    for line in nginx.read("pp.log").lines() {
        say(&format!("nginx log: {line}"));
    }

    step("http-proxy in front of nginx: 3 clients x 3 requests, kept alive, over a pool of 2 backend connections")?;
    let asked = net.client.run(move || -> anyhow::Result<usize> {
        let mut conns = (0..3).map(|_| TcpStream::connect_timeout(&hp, Duration::from_secs(3))).collect::<Result<Vec<_>, _>>()?;
        let mut answered = 0;
        for _ in 0..3 {
            for s in &mut conns {
                s.write_all(b"GET / HTTP/1.1\r\nHost: demo\r\n\r\n")?;
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf)?;
                answered += usize::from(String::from_utf8_lossy(&buf[..n]).ends_with("hello from nginx\n"));
            }
        }
        Ok(answered)
    })??;
    say(&format!("clients: {asked} of 9 requests answered by nginx"));
    wait_for(Duration::from_secs(3), || nginx.read("fwd.log").lines().count() >= 9);
    for line in nginx.read("fwd.log").lines() {
        say(&format!("nginx log: {line}"));
    }
    drop(nginx);

    step("keepalive, live peer: idle 2 s, then probes every 1 s; the client's kernel answers each")?;
    let cap = PacketSocket::open(&net.client, &net.client_if)?;
    let idle = net.client.run(move || TcpStream::connect_timeout(&echo, Duration::from_secs(3)))??;
    let probes = cap.collect(Duration::from_secs(4), 2, |f| is_probe(f, 7));
    say(&format!("client side saw {} keepalive probes (zero-length, SEQ = SND.NXT-1), all answered", probes.len()));
    show_conns(&daemon)?;
    // Between probes the idle connection is folded in its slot and its echo app holds no task.
    let stats = daemon.stats()?;
    say(&format!(
        "while idle: tcp_parked {}, app_waiting {}, app_tasks {} (folded TCB, no app task)",
        stats["tcp_parked"], stats["app_waiting"], stats["app_tasks"]
    ));

    step("keepalive, dead peer: the client namespace drops everything; 3 probes, then a RST")?;
    net.client.nft("table inet dead {\n chain in {\n type filter hook input priority 0; policy drop;\n }\n chain out {\n type filter hook output priority 0; policy drop;\n }\n}\n")?;
    let gone = wait_for(Duration::from_secs(10), || daemon.conns().is_ok_and(|c| c.is_empty()));
    say(if gone { "synx reset the connection after the last unanswered probe" } else { "connection still there?" });
    let _ = net.client.exec("nft", &["delete", "table", "inet", "dead"]);
    drop(idle);

    step("IPv6: the same engine on fd00:5eed::/32")?;
    let ok6 = net.client.run(move || -> anyhow::Result<bool> {
        let mut s = TcpStream::connect_timeout(&echo6, Duration::from_secs(3))?;
        s.write_all(b"hello over IPv6")?;
        let mut b = [0u8; 15];
        s.read_exact(&mut b)?;
        Ok(&b == b"hello over IPv6")
    })??;
    say(&format!("echo over IPv6: {}", if ok6 { "ok" } else { "MISMATCH" }));

    step("synx stats: XDP counters (per-CPU, summed) and the engine's")?;
    for (k, v) in daemon.stats()?.as_object().context("stats")? {
        if v.as_u64() != Some(0) {
            say(&format!("{k:<32} {v}"));
        }
    }
    let status = daemon.stop()?;
    step(&format!("synx stopped ({status}); XDP detached, namespaces removed"))?;
    drop(net);
    three_hosts()
}

/// Three hosts serving one anycast address behind an ECMP router, announced with BGP: the
/// connections spread, a handshake moves between hosts, a host drains and leaves.
fn three_hosts() -> anyhow::Result<()> {
    use testbed::multihost::{ANYCAST, Cluster, PORT, Setup, echo};
    step("three hosts: synx on each with one --cookie-key-file and --peer-hosts, the anycast address announced by BIRD over BGP, the router installing the ECMP route (L4 hash)")?;
    let cluster = Cluster::start(3, &Setup::default())?;
    say(&format!("router: {ANYCAST}/32 via {}", cluster.nexthops().iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")));
    let sessions = cluster.router_birdc(&["show", "protocols"])?;
    say(&format!("router BIRD: {} BGP sessions established", sessions.lines().filter(|l| l.contains("BGP") && l.contains("Established")).count()));

    step(&format!("30 connections to {ANYCAST}:{PORT}, each echoing"))?;
    let mut conns = Vec::new();
    for i in 0..30 {
        let mut s = cluster.connect(0)?;
        let msg = format!("hello {i}");
        ensure!(echo(&mut s, msg.as_bytes())? == msg.as_bytes(), "echo {i}");
        conns.push(s);
    }
    for (i, h) in cluster.hosts.iter().enumerate() {
        say(&format!("host {i} ({}): {} connections", h.addr, h.counter("tcp_accepted")));
    }

    step("a handshake that moves: the router sends one client port's SYN to host 0 and its final ACK to host 1")?;
    cluster.steer(45_000, 0, 1)?;
    let (sent, valid) = (cluster.hosts[0].counter("xdp_syn_cookie_sent"), cluster.hosts[1].counter("xdp_cookie_ack_valid"));
    let mut moved = cluster.connect(45_000)?;
    ensure!(echo(&mut moved, b"moved")? == b"moved", "echo on the moved connection");
    say(&format!(
        "host 0 sent {} SYN-ACK, host 1 validated {} cookie of host 0's; synx conns shows the connection on host {}",
        cluster.hosts[0].counter("xdp_syn_cookie_sent") - sent,
        cluster.hosts[1].counter("xdp_cookie_ack_valid") - valid,
        cluster.holder(45_000).map_or("none".to_string(), |h| h.to_string())
    ));

    step("draining host 1: synx drain, then BIRD withdraws the route; its connections go on through the others (second chance)")?;
    say(&format!("synx drain: {}", cluster.drain(1)?.trim()));
    cluster.hosts[1].withdraw()?;
    ensure!(cluster.wait_nexthops(2), "the route was not withdrawn");
    say(&format!("router: {ANYCAST}/32 via {}", cluster.nexthops().iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")));
    for (i, s) in conns.iter_mut().chain(std::iter::once(&mut moved)).enumerate() {
        ensure!(echo(s, b"still here")? == b"still here", "connection {i} after the withdrawal");
    }
    say(&format!(
        "every connection still echoes; hosts 0 and 2 handed {} segments to host 1",
        cluster.hosts[0].counter("xdp_second_chance_sent") + cluster.hosts[2].counter("xdp_second_chance_sent")
    ));
    drop(conns);
    drop(moved);
    let left = wait_for(Duration::from_secs(10), || cluster.hosts[1].counter("connections_open") == 0);
    say(&format!("host 1: {} connections open{}", cluster.hosts[1].counter("connections_open"), if left { "; it can stop" } else { "" }));
    drop(cluster);
    step("three hosts stopped; BIRD, namespaces and files removed")?;
    Ok(())
}

/// A child process killed and reaped when dropped, so an early return or Ctrl-C leaves none.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn is_probe(frame: &[u8], port: u16) -> bool {
    let Ok(p) = etherparse::SlicedPacket::from_ethernet(frame) else { return false };
    let Some(etherparse::TransportSlice::Tcp(t)) = p.transport else { return false };
    t.source_port() == port && t.ack() && !t.syn() && !t.fin() && !t.rst() && t.payload().len() <= 1
}
