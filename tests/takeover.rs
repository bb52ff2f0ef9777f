//! Issue 17 item 1: `synx run --takeover` under load. A successor takes over the XDP
//! attachment, the maps, the cookie secrets and every connection of the running daemon, five
//! times in a row (the last with another build of synx), while clients keep connecting,
//! echoing and idling: no client sees a reset or a failed connect, no byte is lost or changed,
//! and every idle connection still echoes afterwards and is still probed by keepalive.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use testbed::{Bpffs, Daemon, KernelEcho, Netns, VethPair, require_root, synx_bin};

/// Idle connections (keepalive on), connections echoing without a pause, takeovers.
const IDLE: usize = 10_000;
const BUSY: usize = 200;
const TAKEOVERS: usize = 5;
/// Threads driving the busy connections, each a share of them in turn.
const BUSY_THREADS: usize = 10;
/// Proxied connections that stay open through every takeover (their backend socket moves).
const PROXIED_LONG: usize = 20;
/// Keepalive as the daemon is told: idle time, and the interval between unanswered probes.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(3);

/// Counters the client namespace keeps: every reset it receives, and the ports of the idle
/// connections a segment came to from the idle listener's port (between the idle clients'
/// own writes, only keepalive probes).
fn count_in(ns: &Netns, server: SocketAddr) {
    ns.nft(&format!(
        "table inet synx_test {{\n\
           counter rsts {{ }}\n\
           set probed {{ type inet_service; size 65535; flags dynamic; }}\n\
           chain input {{ type filter hook input priority 0;\n\
             tcp flags & rst == rst counter name rsts;\n\
             ip saddr {} tcp sport {} add @probed {{ tcp dport }};\n\
           }}\n\
         }}",
        server.ip(),
        server.port()
    ))
    .unwrap();
}

fn resets_received(ns: &Netns) -> u64 {
    let out = ns.exec("nft", &["list", "counter", "inet", "synx_test", "rsts"]).unwrap();
    out.split_whitespace().skip_while(|w| *w != "packets").nth(1).and_then(|n| n.parse().ok()).unwrap()
}

/// The client ports in the `probed` set.
fn probed_ports(ns: &Netns) -> std::collections::HashSet<u16> {
    let out = ns.exec("nft", &["-j", "list", "set", "inet", "synx_test", "probed"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let set = v["nftables"].as_array().unwrap().iter().find_map(|o| o.get("set")).unwrap().clone();
    set.get("elem").and_then(|e| e.as_array()).map_or_else(Default::default, |e| {
        e.iter().filter_map(|x| x.as_u64().or_else(|| x["elem"]["val"].as_u64())).map(|p| p as u16).collect()
    })
}

/// What the load saw.
#[derive(Default)]
struct Load {
    stop: AtomicBool,
    connects: AtomicU64,
    failures: std::sync::Mutex<Vec<String>>,
    echoed: AtomicU64,
    proxied: AtomicU64,
    proxied_long: AtomicU64,
}

impl Load {
    fn fail(&self, what: String) {
        let mut f = self.failures.lock().unwrap();
        if f.len() < 20 {
            f.push(what);
        }
    }
}

/// Exchange `msg` with its echo on `s`; the error says what went wrong.
fn echo(s: &mut TcpStream, msg: &[u8]) -> Result<(), String> {
    s.write_all(msg).map_err(|e| format!("write: {e}"))?;
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).map_err(|e| format!("read: {e}"))?;
    if back != msg {
        return Err("the echo differs".into());
    }
    Ok(())
}

fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
    Ok(s)
}

#[test]
fn five_takeovers_under_load_reset_nothing_lose_nothing_and_keep_every_idle_connection() {
    require_root();
    let limit = testbed::raise_nofile();
    assert!(limit > IDLE as u64 + BUSY as u64 + 500, "the open-files limit {limit} is too low for {IDLE} idle connections");
    let net = VethPair::new().unwrap();
    net.attach_peer_xdp().unwrap();
    let bpffs = Bpffs::mount();
    let at = |port| SocketAddr::new(net.server_v4.into(), port);
    let (idle_addr, busy_addr, churn_addr, proxy_addr) = (at(7), at(17), at(9), at(8));
    let backend: SocketAddr = "127.0.0.1:9007".parse().unwrap();
    let _backend = KernelEcho::start(&net.server, backend);
    let listen = [
        format!("{idle_addr}=echo"),
        format!("{busy_addr}=echo"),
        format!("{churn_addr}=echo"),
        format!("{proxy_addr}=proxy={backend}"),
    ];
    let idle_s = format!("{}s", KEEPALIVE_IDLE.as_secs());
    let bpffs_dir = bpffs.0.to_str().unwrap().to_string();
    let mut args: Vec<&str> = Vec::new();
    for l in &listen {
        args.extend(["--listen", l]);
    }
    args.extend(["--keepalive-idle", &idle_s, "--keepalive-interval", "1s", "--grace", "10s", "--bpffs", &bpffs_dir]);
    args.extend(["--max-conns", "65536"]);
    let mut daemon = Daemon::start(&net.server, &net.server_if, &args).unwrap();
    count_in(&net.client, idle_addr);

    // The idle connections: each echoes once, then stays quiet.
    let idle = net
        .client
        .run(move || {
            (0..IDLE)
                .map(|i| {
                    let mut s = connect(idle_addr)?;
                    echo(&mut s, format!("idle {i}").as_bytes())?;
                    Ok(s)
                })
                .collect::<Result<Vec<TcpStream>, String>>()
        })
        .unwrap()
        .expect("idle connections open");

    let load = Arc::new(Load::default());
    let mut workers = Vec::new();
    // Busy: every connection echoes a numbered message after another, without a pause.
    for t in 0..BUSY_THREADS {
        let load = load.clone();
        workers.push(net.client.spawn(move || {
            let mut conns: Vec<TcpStream> = Vec::new();
            for _ in 0..BUSY / BUSY_THREADS {
                match connect(busy_addr) {
                    Ok(s) => conns.push(s),
                    Err(e) => return load.fail(format!("busy {t}: {e}")),
                }
            }
            let mut n = 0u64;
            while !load.stop.load(Ordering::Relaxed) {
                for (i, s) in conns.iter_mut().enumerate() {
                    let msg = format!("busy {t}.{i} message {n} {}", "x".repeat((n % 700) as usize));
                    if let Err(e) = echo(s, msg.as_bytes()) {
                        return load.fail(format!("busy {t}.{i} message {n}: {e}"));
                    }
                    load.echoed.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
            }
        }));
    }
    // Churn: new connections, one after another, each one exchange and a close.
    {
        let load = load.clone();
        workers.push(net.client.spawn(move || {
            let mut n = 0u64;
            while !load.stop.load(Ordering::Relaxed) {
                match connect(churn_addr).and_then(|mut s| echo(&mut s, format!("new {n}").as_bytes())) {
                    Ok(()) => {
                        load.connects.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => load.fail(format!("new connection {n}: {e}")),
                }
                n += 1;
            }
        }));
    }
    // Proxied to the kernel backend: one connection after another, a few exchanges each.
    {
        let load = load.clone();
        workers.push(net.client.spawn(move || {
            let mut n = 0u64;
            while !load.stop.load(Ordering::Relaxed) {
                let run = || -> Result<(), String> {
                    let mut s = connect(proxy_addr)?;
                    for k in 0..3 {
                        echo(&mut s, format!("proxied {n}.{k} {}", "p".repeat(1000)).as_bytes())?;
                    }
                    Ok(())
                };
                match run() {
                    Ok(()) => {
                        load.proxied.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => load.fail(format!("proxied {n}: {e}")),
                }
                n += 1;
            }
        }));
    }
    // Proxied and long-lived: the same connections exchange all along.
    {
        let load = load.clone();
        workers.push(net.client.spawn(move || {
            let mut conns: Vec<TcpStream> = Vec::new();
            for i in 0..PROXIED_LONG {
                match connect(proxy_addr) {
                    Ok(s) => conns.push(s),
                    Err(e) => return load.fail(format!("long proxied {i}: {e}")),
                }
            }
            let mut n = 0u64;
            while !load.stop.load(Ordering::Relaxed) {
                for (i, s) in conns.iter_mut().enumerate() {
                    if let Err(e) = echo(s, format!("long proxied {i} message {n} {}", "q".repeat((n % 300) as usize)).as_bytes()) {
                        return load.fail(format!("long proxied {i} message {n}: {e}"));
                    }
                    load.proxied_long.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
        }));
    }
    assert!(testbed::wait_for(Duration::from_secs(30), || load.echoed.load(Ordering::Relaxed) > BUSY as u64 * 5));

    // The last successor is another build of synx: `cargo xtask test` names its debug build
    // (other code from the same source, with overflow checks) in SYNX_SUCCESSOR_BIN; run by
    // hand without it, a copy of the binary.
    let copy = std::env::temp_dir().join(format!("synx-other-{}", std::process::id()));
    let other_bin = match std::env::var_os("SYNX_SUCCESSOR_BIN") {
        Some(p) => std::path::PathBuf::from(p),
        None => {
            std::fs::copy(synx_bin(), &copy).unwrap();
            copy.clone()
        }
    };
    eprintln!("the last successor: {}", other_bin.display());
    let mut timings = Vec::new();
    for round in 0..TAKEOVERS {
        let bin = if round == TAKEOVERS - 1 { other_bin.clone() } else { synx_bin() };
        let mut successor_args = args.clone();
        successor_args.push("--takeover");
        let xdp_frames_before = daemon.counter("xdp_rx_packets").unwrap();
        let started = Instant::now();
        let successor = Daemon::start_binary(&bin, &net.server, &net.server_if, &successor_args).unwrap();
        let status = daemon.wait_exit(Duration::from_secs(60)).unwrap();
        timings.push(started.elapsed());
        assert!(status.is_some_and(|s| s.success()), "round {round}: the old daemon exits 0 ({status:?}): {:?}", daemon.output());
        let said = daemon.output();
        let handed = said.iter().find(|l| l.starts_with("handed over: "));
        assert!(handed.is_some(), "round {round}: {said:?}");
        let carried: usize = handed
            .and_then(|l| l.split_once(" with their backend socket")?.0.rsplit_once('(')?.1.parse().ok())
            .unwrap_or(0);
        assert!(carried >= PROXIED_LONG, "round {round}: the long proxied connections move with their backend socket: {said:?}");
        eprintln!("round {round}: {} / {:?}", handed.unwrap(), successor.banner);
        assert!(successor.banner.iter().any(|l| l.starts_with("took over ")), "round {round}: {:?}", successor.banner);
        // The old daemon's socket path is the successor's now.
        daemon.control_socket = std::path::PathBuf::new();
        daemon = successor;
        assert_eq!(daemon.counter("takeovers").unwrap(), round as u64 + 1);
        // The XDP counters carry on: the successor added its predecessor's counts to its own.
        let xdp_frames = daemon.counter("xdp_rx_packets").unwrap();
        assert!(xdp_frames >= xdp_frames_before, "round {round}: xdp_rx_packets {xdp_frames_before} -> {xdp_frames}");
        assert!(daemon.counter("takeover_connections_moved_in").unwrap() >= IDLE as u64, "round {round}");
        // The load carries on after each takeover, served by the successor.
        let before = (load.echoed.load(Ordering::Relaxed), load.connects.load(Ordering::Relaxed), load.proxied_long.load(Ordering::Relaxed));
        assert!(
            testbed::wait_for(Duration::from_secs(30), || load.echoed.load(Ordering::Relaxed) > before.0 + BUSY as u64
                && load.connects.load(Ordering::Relaxed) > before.1
                && load.proxied_long.load(Ordering::Relaxed) > before.2 + PROXIED_LONG as u64),
            "round {round}: the load stalls after the takeover: {:?}",
            load.failures.lock().unwrap()
        );
        assert!(
            load.failures.lock().unwrap().is_empty(),
            "round {round}: {:?}\nold: {:?}\nnew: {}",
            load.failures.lock().unwrap(),
            said,
            daemon.stats().unwrap()
        );
    }
    let _ = std::fs::remove_file(&copy);
    load.stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap().unwrap();
    }
    assert!(load.failures.lock().unwrap().is_empty(), "{:?}", load.failures.lock().unwrap());

    // Every idle connection is still probed by keepalive (nothing but probes comes from the
    // idle port while they are quiet), then still echoes.
    net.client.exec("nft", &["flush", "set", "inet", "synx_test", "probed"]).unwrap();
    let ports: std::collections::HashSet<u16> = idle.iter().map(|s| s.local_addr().unwrap().port()).collect();
    let mut missing = ports.len();
    let deadline = Instant::now() + KEEPALIVE_IDLE * 3;
    while Instant::now() < deadline && missing > 0 {
        std::thread::sleep(Duration::from_millis(500));
        let probed = probed_ports(&net.client);
        missing = ports.iter().filter(|p| !probed.contains(p)).count();
    }
    assert_eq!(missing, 0, "idle connections without a keepalive probe after the takeovers");
    let echoed = net
        .client
        .run(move || {
            idle.into_iter()
                .enumerate()
                .map(|(i, mut s)| echo(&mut s, format!("after {i}").as_bytes()).map_err(|e| format!("idle {i}: {e}")))
                .collect::<Result<Vec<()>, String>>()
        })
        .unwrap();
    assert!(echoed.is_ok(), "{echoed:?}");
    assert_eq!(resets_received(&net.client), 0, "resets seen by the clients");
    eprintln!(
        "takeovers (start of the successor to the exit of the old daemon): {timings:?}; {} echoes, {} new connections, {} proxied, {} exchanges on the long proxied ones",
        load.echoed.load(Ordering::Relaxed),
        load.connects.load(Ordering::Relaxed),
        load.proxied.load(Ordering::Relaxed),
        load.proxied_long.load(Ordering::Relaxed)
    );
    let status = daemon.stop().unwrap();
    assert!(status.success(), "{status}");
}

/// A successor that cannot take over (here: another --max-conns, so its FLOWS map differs)
/// stops with one clear error and changes nothing: the running daemon takes its attachment
/// back, says so, and serves on, its connections untouched.
#[test]
fn a_successor_that_cannot_take_over_changes_nothing() {
    require_root();
    let net = VethPair::new().unwrap();
    net.attach_peer_xdp().unwrap();
    let bpffs = Bpffs::mount();
    let addr = SocketAddr::new(net.server_v4.into(), 7);
    let listen = format!("{addr}=echo");
    let bpffs_dir = bpffs.0.to_str().unwrap().to_string();
    let args = ["--listen", &listen, "--bpffs", &bpffs_dir, "--max-conns", "1000"];
    let daemon = Daemon::start(&net.server, &net.server_if, &args).unwrap();
    let mut held = net.client.run(move || connect(addr).and_then(|mut s| echo(&mut s, b"before").map(|()| s))).unwrap().unwrap();
    let out = net
        .server
        .command(synx_bin().to_str().unwrap())
        .args(["run", "--iface", &net.server_if, "--control-socket", daemon.control_socket.to_str().unwrap()])
        .args(["--listen", &listen, "--bpffs", &bpffs_dir, "--max-conns", "2000", "--takeover"])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_conns 1000") && err.contains("nothing changed"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(testbed::wait_for(Duration::from_secs(5), || daemon.output().iter().any(|l| l.starts_with("takeover aborted"))));
    // Still serving: the connection it held and a new one.
    let served = net
        .client
        .run(move || {
            echo(&mut held, b"after")?;
            connect(addr).and_then(|mut s| echo(&mut s, b"new"))
        })
        .unwrap();
    assert!(served.is_ok(), "{served:?}");
    assert_eq!(daemon.counter("takeovers").unwrap(), 0);
    let left: Vec<_> = std::fs::read_dir(&bpffs.0).unwrap().flatten().map(|e| e.path()).collect();
    assert!(
        !left.iter().any(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("synx-takeover"))),
        "no pins left behind: {left:?}"
    );
    let status = daemon.stop().unwrap();
    assert!(status.success(), "{status}");
}
