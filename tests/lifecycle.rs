//! Daemon lifecycle on a real veth pair: attach, count, detach; clear errors for operator
//! mistakes; nothing left attached after SIGTERM or kill -9; a graceful stop that resets only
//! what outlives the grace.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use testbed::{Bpffs, Daemon, KernelEcho, Netns, VethPair, require_root, synx_bin, xdp_attached};

fn listen_arg(net: &VethPair, port: u16) -> String {
    SocketAddr::new(net.server_v4.into(), port).to_string()
}

#[test]
fn attaches_answers_the_handshake_in_xdp_and_detaches_on_sigterm() {
    require_root();
    let net = VethPair::new().unwrap();
    net.attach_peer_xdp().unwrap();
    let daemon =
        Daemon::start(&net.server, &net.server_if, &["--listen", &listen_arg(&net, 7)]).unwrap();
    assert!(xdp_attached(&net.server, &net.server_if).unwrap());
    assert!(daemon.banner.last().unwrap().contains("xdp Native"), "{:?}", daemon.banner);

    let addr: SocketAddr = listen_arg(&net, 7).parse().unwrap();
    // The kernel client accepts XDP's cookie SYN-ACK; its ACK validates in XDP.
    let connected =
        net.client.run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(2))).unwrap();
    assert!(connected.is_ok(), "{connected:?}");
    assert_eq!(daemon.counter("xdp_syn_cookie_sent").unwrap(), 1);
    assert!(daemon.counter("xdp_cookie_ack_valid").unwrap() >= 1);
    assert!(daemon.counter("xdp_rx_packets").unwrap() >= 2);

    let status = daemon.stop().unwrap();
    assert!(status.success(), "{status}");
    assert!(!xdp_attached(&net.server, &net.server_if).unwrap(), "XDP left attached");
}

#[test]
fn second_daemon_on_the_same_interface_gets_one_clear_error() {
    require_root();
    let net = VethPair::new().unwrap();
    let _first =
        Daemon::start(&net.server, &net.server_if, &["--listen", &listen_arg(&net, 7)]).unwrap();
    let out = net
        .server
        .command(synx_bin().to_str().unwrap())
        .args(["run", "--iface", &net.server_if, "--listen", &listen_arg(&net, 7)])
        .args(["--control-socket", &format!("/run/synx-test/{}-2.sock", net.server.name())])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already attached"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line, not a backtrace: {err}");
}

#[test]
fn missing_interface_gets_one_clear_error() {
    require_root();
    let net = VethPair::new().unwrap();
    let out = net
        .server
        .command(synx_bin().to_str().unwrap())
        .args(["run", "--iface", "nosuchif0", "--listen", &listen_arg(&net, 7)])
        .args(["--control-socket", &format!("/run/synx-test/{}.sock", net.server.name())])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no network interface named \"nosuchif0\""), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn kill_9_leaves_nothing_attached_and_a_new_daemon_starts() {
    require_root();
    let net = VethPair::new().unwrap();
    let daemon =
        Daemon::start(&net.server, &net.server_if, &["--listen", &listen_arg(&net, 7)]).unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGKILL) };
    // The bpf_link dies with the process; give the kernel a moment to release it.
    let mut attached = true;
    for _ in 0..50 {
        attached = xdp_attached(&net.server, &net.server_if).unwrap();
        if !attached {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!attached, "XDP still attached after kill -9");
    // The stale control socket the dead daemon left behind must not stop the next one.
    assert!(daemon.control_socket.exists());
    let again =
        Daemon::start(&net.server, &net.server_if, &["--listen", &listen_arg(&net, 7)]).unwrap();
    assert!(again.stats().is_ok());
}

/// RSTs the client namespace receives, from an nftables counter (see [`count_resets_in`]).
fn resets_received(ns: &Netns) -> u64 {
    let out = ns.exec("nft", &["list", "counter", "inet", "synx_test", "rsts"]).unwrap();
    out.split_whitespace().skip_while(|w| *w != "packets").nth(1).and_then(|n| n.parse().ok()).unwrap()
}

/// Count every TCP reset that reaches `ns` ([`resets_received`]).
fn count_resets_in(ns: &Netns) {
    ns.nft(
        "table inet synx_test {\n\
           counter rsts { }\n\
           chain input { type filter hook input priority 0; tcp flags & rst == rst counter name rsts; }\n\
         }",
    )
    .unwrap();
}

/// How a client's blocked read ended when the server went away.
#[derive(Debug, PartialEq, Eq)]
enum Ending {
    Fin,
    Reset,
    Other(String),
}

fn read_ending(s: &mut TcpStream) -> Ending {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => Ending::Fin,
        Ok(n) => Ending::Other(format!("{n} unexpected bytes")),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ending::Reset,
        Err(e) => Ending::Other(e.to_string()),
    }
}

/// Issue 17 item 3: after SIGTERM, new SYNs get no SYN-ACK, connections waiting between turns
/// are closed with a FIN (the clients read the end of the stream), and only what cannot end by
/// itself within the grace (a proxied connection whose client stays) is reset, counted on the
/// client's side.
#[test]
fn sigterm_answers_no_new_syn_closes_idle_connections_with_a_fin_and_resets_only_what_outlives_the_grace() {
    require_root();
    const IDLE: usize = 50;
    let net = VethPair::new().unwrap();
    net.attach_peer_xdp().unwrap();
    let backend: SocketAddr = "127.0.0.1:9007".parse().unwrap();
    let _backend = KernelEcho::start(&net.server, backend);
    let echo = SocketAddr::new(net.server_v4.into(), 7);
    let proxied = SocketAddr::new(net.server_v4.into(), 8);
    let listen_proxy = format!("{proxied}=proxy={backend}");
    let daemon = Daemon::start(
        &net.server,
        &net.server_if,
        &["--listen", &format!("{echo}=echo"), "--listen", &listen_proxy, "--grace", "5s"],
    )
    .unwrap();
    count_resets_in(&net.client);

    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let clients = net.client.spawn(move || {
        let open = |addr| {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
            s.write_all(b"hello").unwrap();
            let mut back = [0u8; 5];
            s.read_exact(&mut back).unwrap();
            assert_eq!(&back, b"hello");
            s
        };
        let idle: Vec<TcpStream> = (0..IDLE).map(|_| open(echo)).collect();
        let mut through_proxy = open(proxied);
        ready_tx.send(()).unwrap();
        // Each client closes as soon as it reads the end, as real clients do.
        let idle_endings: Vec<Ending> = idle.into_iter().map(|mut s| read_ending(&mut s)).collect();
        (idle_endings, read_ending(&mut through_proxy))
    });
    ready_rx.recv_timeout(Duration::from_secs(30)).expect("clients connected");
    assert_eq!(daemon.counter("tcp_accepted").unwrap(), IDLE as u64 + 1);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGTERM) };
    assert!(testbed::wait_for(Duration::from_secs(10), || daemon.output().iter().any(|l| l.starts_with("shutting down"))));
    // While the grace runs (the proxied connection holds it), a new SYN gets no answer: no
    // SYN-ACK (a handshake that would be closed at once) and no reset.
    let late = net.client.run(move || TcpStream::connect_timeout(&echo, Duration::from_secs(1)).map(drop).map_err(|e| e.kind())).unwrap();
    assert_eq!(late, Err(std::io::ErrorKind::TimedOut), "a SYN after SIGTERM");
    let status = daemon.stop().unwrap();
    assert!(status.success(), "{status}");
    let (idle_endings, proxied_ending) = clients.join().unwrap().unwrap();
    let fins = idle_endings.iter().filter(|e| **e == Ending::Fin).count();
    assert_eq!(fins, IDLE, "{idle_endings:?}");
    assert_eq!(proxied_ending, Ending::Reset, "the proxied connection outlived the grace");
    assert_eq!(resets_received(&net.client), 1, "one reset in all, the proxied connection's");
    assert!(!xdp_attached(&net.server, &net.server_if).unwrap(), "XDP left attached");
}

/// Issue 17 item 4: after `kill -9` the connections' state is gone. A restarted daemon answers
/// a connection it never knew with the RFC 9293 3.10.7.1 reset, sent by XDP (the segment's ACK
/// is no cookie): the client's data once it comes again after `--cookie-miss-hold` (1 s; its
/// first sight might be a new client's segment whose handshake ACK was lost), so the client
/// learns within its third retransmission, instead of retransmitting into silence until its
/// retries run out, and can connect again.
#[test]
fn after_kill_9_a_restarted_daemon_resets_connections_it_never_knew_when_their_data_comes_again() {
    require_root();
    const CLIENTS: usize = 20;
    let net = VethPair::new().unwrap();
    net.attach_peer_xdp().unwrap();
    let listen = format!("{}=echo", listen_arg(&net, 7));
    let addr: SocketAddr = listen_arg(&net, 7).parse().unwrap();
    let daemon = Daemon::start(&net.server, &net.server_if, &["--listen", &listen]).unwrap();
    count_resets_in(&net.client);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let clients = net.client.spawn(move || {
        let mut conns: Vec<TcpStream> = (0..CLIENTS)
            .map(|_| {
                let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
                s.write_all(b"before").unwrap();
                let mut back = [0u8; 6];
                s.read_exact(&mut back).unwrap();
                s
            })
            .collect();
        ready_tx.send(()).unwrap();
        // Quiet while the daemon dies and another starts: nothing of these connections on the
        // wire until then.
        go_rx.recv().unwrap();
        let endings: Vec<Ending> = conns
            .iter_mut()
            .map(|s| {
                s.write_all(b"after").unwrap();
                read_ending(s)
            })
            .collect();
        let again = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
            s.write_all(b"anew").unwrap();
            let mut back = [0u8; 4];
            s.read_exact(&mut back).map(|()| back)
        });
        (endings, again)
    });
    ready_rx.recv_timeout(Duration::from_secs(30)).expect("clients connected");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGKILL) };
    assert!(
        testbed::wait_for(Duration::from_secs(5), || !xdp_attached(&net.server, &net.server_if).unwrap()),
        "XDP still attached after kill -9"
    );
    drop(daemon);
    let restarted = Daemon::start(&net.server, &net.server_if, &["--listen", &listen]).unwrap();
    go_tx.send(()).unwrap();
    let (endings, again) = clients.join().unwrap().unwrap();
    let resets = endings.iter().filter(|e| **e == Ending::Reset).count();
    assert_eq!(resets, CLIENTS, "{endings:?}");
    assert_eq!(resets_received(&net.client), CLIENTS as u64, "one reset per old connection, nothing else");
    assert_eq!(restarted.counter("xdp_rst_sent").unwrap(), CLIENTS as u64);
    assert_eq!(restarted.counter("tcp_accepted").unwrap(), 1, "only the new connection");
    assert_eq!(again.unwrap().unwrap(), *b"anew", "a new connection is served");
}

/// A config file removed on drop.
struct ConfigFile(std::path::PathBuf);

impl ConfigFile {
    fn new(tag: &str) -> Self {
        Self(std::env::temp_dir().join(format!("synx-{}-{tag}.toml", std::process::id())))
    }

    fn write(&self, text: &str) {
        std::fs::write(&self.0, text).unwrap();
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Issue 17 item 2: `synx reload` and SIGHUP re-read the configuration and apply in place what
/// can change; a connection of a removed listener lives on, as the kernel's accepted sockets
/// do when their listener closes; a setting fixed at start is refused by name, nothing changed.
#[test]
fn reload_adds_and_removes_listeners_in_place_and_names_what_needs_a_restart() {
    require_root();
    let net = VethPair::new().unwrap();
    net.attach_peer_xdp().unwrap();
    let at = |port| SocketAddr::new(net.server_v4.into(), port);
    let (p7, p8, p9) = (at(7), at(8), at(9));
    let file = ConfigFile::new("reload");
    file.write(&format!("listen = [\"{p7}=echo\"]\nmax_conns = 4096\n"));
    let daemon =
        Daemon::start(&net.server, &net.server_if, &["--config", file.0.to_str().unwrap()]).unwrap();
    let reload = || {
        net.server
            .command(synx_bin().to_str().unwrap())
            .args(["reload", "--control-socket", daemon.control_socket.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let echo_once = |s: &mut TcpStream, msg: &[u8]| {
        s.write_all(msg).unwrap();
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).unwrap();
        back
    };
    let mut old = net
        .client
        .run(move || {
            let s = TcpStream::connect_timeout(&p7, Duration::from_secs(5)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        })
        .unwrap();
    assert_eq!(echo_once(&mut old, b"before"), b"before");

    // Port 7 removed, 8 added, max_conns lowered.
    file.write(&format!("listen = [\"{p8}=echo\"]\nmax_conns = 1000\n"));
    let out = reload();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said} {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(said.trim(), format!("reloaded: -{p7} +{p8}=echo max_conns=1000"));
    assert_eq!(echo_once(&mut old, b"after"), b"after", "the removed listener's connection lives on");
    let (refused, served) = net
        .client
        .run(move || {
            let refused = TcpStream::connect_timeout(&p7, Duration::from_secs(5)).map(|_| ()).map_err(|e| e.kind());
            let mut s = TcpStream::connect_timeout(&p8, Duration::from_secs(5)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            (refused, echo_once(&mut s, b"new port"))
        })
        .unwrap();
    assert_eq!(refused, Err(std::io::ErrorKind::ConnectionRefused), "port 7's SYNs go to the kernel");
    assert_eq!(served, b"new port");

    // A setting fixed at start: refused by name, nothing else applied.
    file.write(&format!("listen = [\"{p8}=echo\", \"{p9}=echo\"]\nmsl = \"10s\"\nmax_conns = 1000\n"));
    let out = reload();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("msl cannot change without a restart") && err.contains("nothing changed"), "{err}");
    file.write(&format!("listen = [\"{p8}=echo\"]\nmax_conns = 100000\n"));
    let err = String::from_utf8_lossy(&reload().stderr).to_string();
    assert!(err.contains("max_conns 100000 is above 4096"), "{err}");

    // SIGHUP does the same.
    file.write(&format!("listen = [\"{p8}=echo\", \"{p9}=discard\"]\nmax_conns = 1000\n"));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGHUP) };
    assert!(
        testbed::wait_for(Duration::from_secs(5), || daemon.output().iter().any(|l| l == &format!("reloaded: +{p9}=discard"))),
        "{:?}",
        daemon.output()
    );
    let connected = net.client.run(move || TcpStream::connect_timeout(&p9, Duration::from_secs(5)).is_ok()).unwrap();
    assert!(connected);
    assert_eq!(echo_once(&mut old, b"still"), b"still");
    drop(old);
    assert!(daemon.stop().unwrap().success());
}

/// Issue 17 item 1, the BPF side: a successor loads its program on the running one's maps
/// (flows, listeners, counters, cookie secrets kept) and replaces the program inside the same
/// bpf_link, so the interface is never without a program; with maps of another layout it
/// stops with an error naming the map and nothing changes.
#[test]
fn a_successor_takes_over_the_maps_and_replaces_the_program_inside_the_link() {
    use synx::bpf::{AttachMode, XdpProgram, XdpSettings};
    require_root();
    let net = VethPair::new().unwrap();
    let bpffs = Bpffs::mount();
    let (ns, iface) = (net.server.name().to_string(), net.server_if.clone());
    let (local, remote): (SocketAddr, SocketAddr) = ("198.18.0.1:80".parse().unwrap(), "198.18.0.2:4000".parse().unwrap());
    let dir = bpffs.0.join("handover");
    // The id of the XDP program attached to `iface` in `ns` (from `ip -d link`).
    let prog_id = |ns: &str, iface: &str| {
        let out = testbed::sh("ip", &["-n", ns, "-d", "link", "show", "dev", iface]).unwrap();
        let mut words = out.split_whitespace().skip_while(|w| !w.starts_with("prog/xdp"));
        words.find(|w| *w == "id").and_then(|_| words.next()).and_then(|id| id.parse::<u32>().ok())
    };
    let d = dir.clone();
    net.server
        .run(move || {
            let mut old = XdpProgram::attach(&iface, AttachMode::Native, 1024, XdpSettings::new(1460)).unwrap();
            old.add_listener(local, 0).unwrap();
            old.flow_table().insert(local, remote, 7).unwrap();
            let old_id = prog_id(&ns, &iface).expect("attached");
            old.pin_for_takeover(&d).unwrap();

            // Another layout (maps sized for more connections): refused by name, nothing changed.
            let err = XdpProgram::take_over(&d, &iface, 2048, XdpSettings::new(1460)).err().expect("refused");
            let msg = err.to_string();
            assert!(msg.contains("max_entries") && msg.contains("nothing changed"), "{msg}");
            assert_eq!(prog_id(&ns, &iface), Some(old_id), "the running program stays");

            let new = XdpProgram::take_over(&d, &iface, 1024, XdpSettings::new(1460)).unwrap();
            let new_id = prog_id(&ns, &iface).expect("still attached");
            assert_ne!(new_id, old_id, "the program inside the link is the successor's");
            assert!(!d.exists(), "the pins are gone");
            // Cookies minted before still validate: the same secrets, also once the successor
            // refreshes them as its cluster thread does every second.
            assert_eq!(new.published(), old.published());
            new.secrets().refresh().unwrap();
            assert_eq!(new.published(), old.published());
            // The running process's flow is in the successor's map (removing it twice fails).
            new.flow_table().remove(local, remote).unwrap();
            assert!(old.flow_table().remove(local, remote).is_err(), "one map, shared");
            drop(old);
            assert_eq!(prog_id(&ns, &iface), Some(new_id), "the old process's exit detaches nothing");
            drop(new);
            // The kernel releases a link whose last descriptor closed a moment later.
            let detached = || testbed::wait_for(Duration::from_secs(5), || prog_id(&ns, &iface).is_none());
            assert!(detached(), "the successor's exit detaches");

            // A takeover that does not happen: the running process takes its attachment back.
            let mut old = XdpProgram::attach(&iface, AttachMode::Native, 1024, XdpSettings::new(1460)).unwrap();
            old.pin_for_takeover(&d).unwrap();
            old.reclaim(&d).unwrap();
            assert!(!d.exists());
            drop(old);
            assert!(detached(), "reclaimed: detached with its process");
        })
        .unwrap();
}
