//! The seed's scenarios and the engine's promises, checked from the wire against the Linux
//! kernel's own TCP as the client: synx runs in a server namespace with XDP in native mode,
//! clients run in a client namespace joined by a veth pair.

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use etherparse::{PacketBuilder, TcpOptionElement};
use testbed::{
    Bed, Daemon, PORT, PacketSocket, VethPair, digest, echo_roundtrip, mac_of, pattern, require_root,
    tcp_of, wait_for,
};

#[test]
fn s01_handshake_negotiates_options_and_connection_is_established() {
    let bed = Bed::start("echo", &[]);
    let cap = PacketSocket::open(&bed.net.client, &bed.net.client_if).unwrap();
    let mut s = bed.client(false, |s| s);
    let synacks = cap.collect(Duration::from_secs(2), 1, |f| tcp_of(f).is_some_and(|t| t.syn() && t.ack()));
    assert_eq!(synacks.len(), 1, "no SYN-ACK seen");
    let t = tcp_of(&synacks[0]).unwrap();
    let opts: Vec<TcpOptionElement> = t.options_iterator().filter_map(Result::ok).collect();
    assert!(opts.iter().any(|o| matches!(o, TcpOptionElement::MaximumSegmentSize(m) if *m >= 536)), "{opts:?}");
    assert!(opts.iter().any(|o| matches!(o, TcpOptionElement::WindowScale(_))), "{opts:?}");
    assert!(opts.iter().any(|o| matches!(o, TcpOptionElement::SelectiveAcknowledgementPermitted)), "{opts:?}");
    assert!(opts.iter().any(|o| matches!(o, TcpOptionElement::Timestamp(_, _))), "{opts:?}");
    assert!(bed.wait_state("ESTABLISHED"));
    let conns = bed.daemon.conns().unwrap();
    let local = s.local_addr().unwrap();
    assert!(conns.iter().any(|c| c["remote"] == local.to_string()), "{conns:?}");
    assert_eq!(echo_roundtrip(&mut s, b"x"), b"x");
    assert!(bed.daemon.counter("xdp_syn_cookie_sent").unwrap() >= 1);
}

#[test]
fn s02_stale_syn_gets_a_syn_ack_the_client_resets_and_nothing_is_held() {
    let bed = Bed::start("echo", &[]);
    let cap = PacketSocket::open(&bed.net.client, &bed.net.client_if).unwrap();
    let server_mac = mac_of(&bed.net.server, &bed.net.server_if).unwrap();
    let client_mac = mac_of(&bed.net.client, &bed.net.client_if).unwrap();
    // A SYN "from the past": no client socket owns port 40404.
    let mut syn = Vec::new();
    PacketBuilder::ethernet2(client_mac, server_mac)
        .ipv4(bed.net.client_v4.octets(), bed.net.server_v4.octets(), 64)
        .tcp(40404, PORT, 0x1234_5678, 64240)
        .syn()
        .write(&mut syn, &[])
        .unwrap();
    cap.send(&syn).unwrap();
    let seen = cap.collect(Duration::from_secs(2), 2, |f| {
        tcp_of(f).is_some_and(|t| (t.syn() && t.ack() && t.destination_port() == 40404) || (t.rst() && t.source_port() == 40404))
    });
    assert!(seen.iter().any(|f| tcp_of(f).unwrap().syn()), "no SYN-ACK for the stale SYN");
    assert!(seen.iter().any(|f| tcp_of(f).unwrap().rst()), "the client kernel did not reset");
    std::thread::sleep(Duration::from_millis(200));
    assert!(bed.daemon.conns().unwrap().is_empty(), "a connection was created from a stale SYN");
    assert!(bed.daemon.counter("xdp_drop_rst_no_flow").unwrap() >= 1);
}

#[test]
fn s03_echo_small_medium_large_with_checksums() {
    let bed = Bed::start("echo", &[]);
    for len in [1usize, 64 * 1024, 64 * 1024 * 1024] {
        let data: Vec<u8> = (0..len).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let want = digest(&data);
        let got = bed.client(false, move |mut s| digest(&echo_roundtrip(&mut s, &data)));
        assert_eq!(got, want, "echo of {len} bytes corrupted");
    }
}

#[test]
fn s03c_trains_through_the_segmentation_offload_arrive_intact_both_families() {
    let bed = Bed::start_generic("echo", &[]);
    let tso = bed.net.server.exec("ethtool", &["-k", &bed.net.server_if]).unwrap();
    assert!(tso.contains("tcp-segmentation-offload: on"), "the server veth lost TSO:\n{tso}");
    for (v6, len) in [(false, 64 << 20), (true, 16 << 20), (false, 1), (true, 3000)] {
        let data = pattern(len, len as u64);
        let want = digest(&data);
        let got = bed.client(v6, move |mut s| digest(&echo_roundtrip(&mut s, &data)));
        assert_eq!(got, want, "echo of {len} bytes (v6 {v6}) corrupted");
    }
    let trains = bed.daemon.counter("tcp_tx_gso_trains").unwrap();
    let segments = bed.daemon.counter("tcp_tx_gso_segments").unwrap();
    assert!(trains > 100, "{trains} trains: the offload was not used");
    // 80 MiB echoed back in segments of at most 1448 bytes: most of them rode in trains.
    assert!(segments > (80 << 20) / 1448 / 2, "{segments} segments in trains");
    assert!(segments >= 2 * trains);
    // A train the device refuses (its ring full) goes frame by frame instead: seldom.
    let fallbacks = bed.daemon.counter("tcp_tx_gso_fallbacks").unwrap();
    assert!(fallbacks * 20 <= trains, "{fallbacks} of {trains} trains refused");
    let dropped = bed.daemon.counter("tcp_tx_gso_dropped").unwrap();
    assert!(dropped * 100 <= segments, "{dropped} segments found no AF_XDP frame");
}

#[test]
fn s03d_trains_of_many_connections_recover_from_lost_trains() {
    let bed = Bed::start_generic("echo", &[]);
    // 1 in 50 of what reaches the client from the echo port is dropped: whole trains (the
    // client's veth takes each as one GSO packet), which SACK recovery and the RTO resend.
    bed.net
        .client
        .nft(&format!("table inet lossy {{\n chain input {{ type filter hook input priority 0; tcp sport {PORT} numgen random mod 50 0 counter drop; }}\n}}\n"))
        .unwrap();
    let workers: Vec<_> = (0..6u64)
        .map(|i| {
            let addr = bed.addr(i % 2 == 1);
            bed.net.client.spawn(move || {
                let data = pattern(6 << 20, 100 + i);
                let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                digest(&echo_roundtrip(&mut s, &data)) == digest(&data)
            })
        })
        .collect();
    for (i, w) in workers.into_iter().enumerate() {
        assert!(w.join().unwrap().unwrap(), "connection {i}: echo corrupted");
    }
    let dropped = bed.net.client.exec("nft", &["list", "table", "inet", "lossy"]).unwrap();
    assert!(!dropped.contains("counter packets 0 "), "nothing was dropped:\n{dropped}");
    assert!(bed.daemon.counter("tcp_tx_gso_trains").unwrap() > 0);
    assert!(bed.daemon.counter("tcp_retransmits").unwrap() > 0);
}

#[test]
fn s03e_gso_off_sends_frame_by_frame() {
    let bed = Bed::start_generic("echo", &["--gso", "off"]);
    let data = pattern(4 << 20, 7);
    let want = digest(&data);
    assert_eq!(bed.client(false, move |mut s| digest(&echo_roundtrip(&mut s, &data))), want);
    assert_eq!(bed.daemon.counter("tcp_tx_gso_trains").unwrap(), 0);
}

#[test]
fn s03f_native_xdp_answers_a_client_end_without_a_program() {
    // A native XDP_TX frame to a veth peer without a program waits in the peer's ring until
    // something else runs its NAPI (Linux 6.18): handshakes then completed only through the
    // SYN-ACK retransmitter, a second later. `--xdp-tx auto` redirects on a veth instead.
    let bed = Bed::start_gro_client("echo", &[]);
    let tso = bed.net.server.exec("ethtool", &["-k", &bed.net.server_if]).unwrap();
    assert!(tso.contains("tcp-segmentation-offload: on"), "the server veth lost TSO:\n{tso}");
    for i in 0..20u64 {
        let data = pattern(1000, i);
        let want = digest(&data);
        assert_eq!(bed.client(i % 2 == 1, move |mut s| digest(&echo_roundtrip(&mut s, &data))), want, "connection {i}");
    }
    // Every SYN-ACK arrived at once: none was resent.
    assert_eq!(bed.daemon.counter("synack_retransmits").unwrap(), 0);
    assert!(bed.daemon.counter("xdp_syn_cookie_sent").unwrap() >= 20);
    // And native mode keeps the offload: a large echo leaves in trains.
    let data = pattern(16 << 20, 99);
    let want = digest(&data);
    assert_eq!(bed.client(false, move |mut s| digest(&echo_roundtrip(&mut s, &data))), want);
    let trains = bed.daemon.counter("tcp_tx_gso_trains").unwrap();
    assert!(trains > 10, "{trains} trains: the offload was not used");
    // Trains and frames share one lossless path and one order: nothing reached the client out
    // of order (a train sent ahead of frames still queued for AF_XDP would).
    assert_eq!(bed.net.client.nstat("TcpExtTCPOFOQueue").unwrap(), 0, "segments reached the client out of order");
}

#[test]
fn s03b_a_thousand_concurrent_connections() {
    let bed = Bed::start("echo", &[]);
    let addr = bed.addr(false);
    let ok = bed
        .net
        .client
        .run(move || {
            let mut streams = Vec::new();
            for i in 0..1000u32 {
                let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                s.write_all(&i.to_be_bytes()).unwrap();
                streams.push((i, s));
            }
            let mut ok = 0;
            for (i, s) in &mut streams {
                let mut b = [0u8; 4];
                if s.read_exact(&mut b).is_ok() && u32::from_be_bytes(b) == *i {
                    ok += 1;
                }
            }
            ok
        })
        .unwrap();
    assert_eq!(ok, 1000);
}

#[test]
fn s03g_answers_to_many_connections_leave_in_one_wakeup_and_a_lone_connection_s_at_once() {
    // --tx-coalesce (20 us by default): a turn whose frames come from several connections
    // holds them on the TX ring for more, then one wakeup (system call) sends them all. Here
    // 32 requests wait in the RX ring while the engine is stopped, and its first turn after
    // answers all of them: 32 answers, a few wakeups, every byte right.
    let bed = Bed::start("echo", &[]);
    let addr = bed.addr(false);
    let mut streams = bed
        .net
        .client
        .run(move || {
            (0..32u8)
                .map(|i| {
                    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    s.set_nodelay(true).unwrap();
                    assert_eq!(echo_roundtrip(&mut s, &[i]), [i], "connection {i}");
                    s
                })
                .collect::<Vec<_>>()
        })
        .unwrap();
    // One connection at a time so far: each answer went at once.
    let c = |name: &str| bed.daemon.counter(name).unwrap();
    assert_eq!(c("xsk_tx_held"), 0, "a lone connection's answer waited");
    let (held, wakeups) = (c("xsk_tx_held"), c("xsk_tx_wakeups"));
    let pid = bed.daemon.pid().to_string();
    testbed::sh("kill", &["-STOP", &pid]).unwrap();
    for (i, s) in streams.iter_mut().enumerate() {
        s.write_all(&[100 + i as u8]).unwrap();
    }
    // Well within the clients' first retransmission timeout (200 ms).
    std::thread::sleep(Duration::from_millis(50));
    testbed::sh("kill", &["-CONT", &pid]).unwrap();
    for (i, s) in streams.iter_mut().enumerate() {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        assert_eq!(b[0], 100 + i as u8, "connection {i}");
    }
    let (held, wakeups) = (c("xsk_tx_held") - held, c("xsk_tx_wakeups") - wakeups);
    assert!(held >= 1, "32 connections' answers were not held for more");
    assert!(wakeups < 8, "32 answers took {wakeups} wakeups");
    assert_eq!(c("tcp_retransmits"), 0);
}

#[test]
fn s04_passive_close_server_still_sends_in_close_wait() {
    // A kernel backend in the server namespace that answers only after the client's FIN:
    // while it waits, synx's side of the proxied connection sits in CLOSE_WAIT.
    require_root();
    let net = VethPair::new().unwrap();
    net.attach_peer_xdp().unwrap();
    let backend = net
        .server
        .run(|| TcpListener::bind("127.0.0.1:0").unwrap())
        .unwrap();
    let backend_addr = backend.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = backend.accept().unwrap();
        let mut req = Vec::new();
        s.read_to_end(&mut req).unwrap(); // the client's FIN, propagated as a half-close
        std::thread::sleep(Duration::from_millis(800));
        s.write_all(b"late reply to ").unwrap();
        s.write_all(&req).unwrap();
    });
    let listen = format!("{}:{PORT}=proxy={backend_addr}", net.server_v4);
    let daemon = Daemon::start(&net.server, &net.server_if, &["--listen", &listen]).unwrap();
    let addr = SocketAddr::new(net.server_v4.into(), PORT);
    let client = net
        .client
        .run(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"question").unwrap();
            s.shutdown(Shutdown::Write).unwrap(); // FIN: the server enters CLOSE_WAIT
            s
        })
        .unwrap();
    let saw_close_wait = wait_for(Duration::from_secs(5), || {
        daemon.conns().unwrap().iter().any(|c| c["state"] == "CLOSE_WAIT")
    });
    assert!(saw_close_wait, "{:?} {:?}", daemon.conns().unwrap(), daemon.stats().unwrap());
    let got = net
        .client
        .run(move || {
            let mut client = client;
            client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut v = Vec::new();
            client.read_to_end(&mut v).unwrap(); // data after our FIN, then the server's FIN
            v
        })
        .unwrap();
    assert_eq!(got, b"late reply to question");
    assert!(wait_for(Duration::from_secs(10), || daemon.conns().unwrap().is_empty()));
}

#[test]
fn s05_active_close_walks_fin_wait_to_time_wait_and_is_released_after_2msl() {
    let bed = Bed::start("http", &["--msl", "1s"]);
    let got = bed.client(false, |mut s| {
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
        let mut v = Vec::new();
        s.read_to_end(&mut v).unwrap(); // the server closed first: we read EOF
        v
    });
    assert!(got.ends_with(b"hello from synx\n"));
    assert!(bed.wait_state("TIME_WAIT"), "{:?}", bed.states());
    let entered = Instant::now();
    assert!(bed.wait_no_conns(), "TIME_WAIT never released: {:?}", bed.states());
    // Not before 2*MSL (lower bound only: the engine never releases early).
    assert!(entered.elapsed() >= Duration::from_millis(1500), "released after {:?}", entered.elapsed());
}

#[test]
fn s06_lost_last_ack_retransmitted_fin_is_acked_again_from_time_wait() {
    let bed = Bed::start("http", &["--msl", "2s"]);
    let cap = PacketSocket::open(&bed.net.client, &bed.net.client_if).unwrap();
    let stream = bed.client(false, |mut s| {
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
        let mut v = Vec::new();
        s.read_to_end(&mut v).unwrap();
        s
    });
    // Drop synx's pure ACKs at the client from now on: the ACK of our FIN gets lost.
    bed.net
        .client
        .nft(&format!(
            "table inet lossy {{\n chain in {{\n type filter hook input priority 0;\n tcp sport {PORT} tcp flags == ack drop\n }}\n}}\n"
        ))
        .unwrap();
    let client_port = stream.local_addr().unwrap().port();
    drop(stream); // our FIN: the server answers from TIME_WAIT
    // Keep synx's pure ACKs of exactly our FIN (its sequence number learned from the capture).
    let mut fin_seq: Option<u32> = None;
    let acks = cap.collect(Duration::from_secs(8), 2, |f| {
        let Some(t) = tcp_of(f) else { return false };
        if t.source_port() == client_port && t.fin() {
            fin_seq = Some(t.sequence_number());
            return false;
        }
        t.source_port() == PORT
            && t.ack()
            && !t.fin()
            && t.payload().is_empty()
            && fin_seq.is_some_and(|s| t.acknowledgment_number() == s.wrapping_add(1))
    });
    assert_eq!(acks.len(), 2, "the retransmitted FIN was not ACKed again from TIME_WAIT");
    bed.net.client.exec("nft", &["delete", "table", "inet", "lossy"]).unwrap();
    assert!(bed.daemon.counter("tcp_time_wait_fin_reacked").unwrap() >= 1);
    assert!(bed.wait_no_conns());
}

#[test]
fn s07_keepalive_dead_peer_gets_exactly_n_probes_then_reset() {
    let bed = Bed::start(
        "echo",
        &["--keepalive-idle", "1s", "--keepalive-interval", "400ms", "--keepalive-probes", "3"],
    );
    let cap = PacketSocket::open(&bed.net.client, &bed.net.client_if).unwrap();
    let stream = bed.client(false, |mut s| {
        assert_eq!(echo_roundtrip(&mut s, b"ping"), b"ping");
        s
    });
    // The client goes silent: its namespace drops everything.
    bed.net
        .client
        .nft("table inet dead {\n chain in {\n type filter hook input priority 0; policy drop;\n }\n chain out {\n type filter hook output priority 0; policy drop;\n }\n}\n")
        .unwrap();
    let mut seen_rst = false;
    let frames = cap.collect(Duration::from_secs(6), 64, |f| {
        let keep = !seen_rst && tcp_of(f).is_some_and(|t| t.source_port() == PORT && t.payload().is_empty());
        seen_rst |= keep && tcp_of(f).is_some_and(|t| t.rst());
        keep
    });
    let rst = frames.iter().map(|f| tcp_of(f).unwrap()).find(|t| t.rst()).expect("no RST after the probes");
    // Probe shape (RFC 1122 4.2.3.6, as Linux): no data, SEG.SEQ = SND.NXT - 1, so the peer
    // must answer; the final RST carries SND.NXT.
    let probes = frames
        .iter()
        .map(|f| tcp_of(f).unwrap())
        .filter(|t| !t.rst() && t.payload().is_empty() && t.sequence_number().wrapping_add(1) == rst.sequence_number())
        .count();
    assert_eq!(probes, 3, "expected exactly 3 probes before the reset");
    assert!(bed.wait_no_conns());
    assert!(bed.daemon.counter("tcp_closed_timeout").unwrap() >= 1);
    assert!(bed.daemon.counter("tcp_resets_sent").unwrap() >= 1, "the keepalive's RST is counted");
    drop(stream);
}

#[test]
fn s07d_a_blind_sender_who_knows_the_tuple_does_not_keep_a_dead_peer_alive() {
    let bed = Bed::start(
        "echo",
        &["--keepalive-idle", "1s", "--keepalive-interval", "400ms", "--keepalive-probes", "3"],
    );
    let net = &bed.net;
    let cap = PacketSocket::open(&net.client, &net.client_if).unwrap();
    let (server_mac, client_mac) = (mac_of(&net.server, &net.server_if).unwrap(), mac_of(&net.client, &net.client_if).unwrap());
    let stream = bed.client(false, |mut s| {
        assert_eq!(echo_roundtrip(&mut s, b"ping"), b"ping");
        s
    });
    let client_port = stream.local_addr().unwrap().port();
    // The client goes silent (its namespace drops everything), while someone who knows the
    // tuple but not the sequence numbers sends segments far outside the window (a packet
    // socket, which nftables does not see).
    net.client
        .nft("table inet dead {\n chain in {\n type filter hook input priority 0; policy drop;\n }\n chain out {\n type filter hook output priority 0; policy drop;\n }\n}\n")
        .unwrap();
    let mut blind = Vec::new();
    PacketBuilder::ethernet2(client_mac, server_mac)
        .ipv4(net.client_v4.octets(), net.server_v4.octets(), 64)
        .tcp(client_port, PORT, 0x5eed_0000, 502)
        .ack(0x0bad_0000)
        .write(&mut blind, &[])
        .unwrap();
    // Idle 1 s, then 3 probes 400 ms apart: the connection ends after about 2.6 s of silence,
    // however many blind segments (one every 100 ms) arrive meanwhile.
    let started = Instant::now();
    let mut sent = 0;
    while bed.daemon.counter("tcp_closed_timeout").unwrap() == 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "the dead peer's connection is still alive: {}", bed.daemon.stats().unwrap());
        cap.send(&blind).unwrap();
        sent += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(sent >= 10, "{sent} blind segments");
    // The core dropped them, as it drops any segment outside the window (RFC 9293 3.10.7.4).
    assert!(bed.daemon.counter("tcp_dropped").unwrap() >= 1);
    assert!(bed.wait_no_conns());
    drop(stream);
}

#[test]
fn s07b_keepalive_live_peer_answers_and_survives() {
    let bed = Bed::start(
        "echo",
        &["--keepalive-idle", "500ms", "--keepalive-interval", "300ms", "--keepalive-probes", "2"],
    );
    let mut stream = bed.client(false, |s| s);
    let mut stream6 = bed.client(true, |s| s);
    // Several idle+probe cycles: the kernel client answers every probe. XDP takes the answers
    // (each matches the probe's exactly) and the core counts them when the probe's next
    // deadline comes: without that, two unanswered probes would end each connection in 1.1 s.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(bed.states(), vec!["ESTABLISHED".to_string(); 2]);
    let taken = bed.daemon.counter("xdp_probe_answer_taken").unwrap();
    let counted = bed.daemon.counter("tcp_probe_answers_taken").unwrap();
    // About 3 s / (500 + 300 ms) cycles each, the last answer perhaps not yet counted.
    assert!(taken >= 4 && counted >= 4 && counted <= taken, "taken {taken}, counted {counted}: {}", bed.daemon.stats().unwrap());
    let back = bed
        .net
        .client
        .run(move || (echo_roundtrip(&mut stream, b"still here"), echo_roundtrip(&mut stream6, b"and here")))
        .unwrap();
    assert_eq!(back, (b"still here".to_vec(), b"and here".to_vec()));
}

#[test]
fn s07c_client_keepalive_probes_are_answered() {
    let bed = Bed::start("echo", &[]);
    let ok = bed.client(false, |mut s| {
        let sock = socket2::SockRef::from(&s);
        let ka = socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(1))
            .with_interval(Duration::from_secs(1))
            .with_retries(2);
        sock.set_tcp_keepalive(&ka).unwrap();
        // Without answers the client kernel would give up after ~3 s.
        std::thread::sleep(Duration::from_secs(5));
        echo_roundtrip(&mut s, b"alive") == b"alive"
    });
    assert!(ok);
}

#[test]
fn s12_ipv6_handshake_data_and_close() {
    let bed = Bed::start("echo", &[]);
    let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    let want = digest(&data);
    let got = bed.client(true, move |mut s| {
        let got = digest(&echo_roundtrip(&mut s, &data));
        s.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        (got, rest.len())
    });
    assert_eq!(got, (want, 0));
    assert!(bed.wait_no_conns());
}

#[test]
fn s05b_new_connection_on_a_tuple_in_time_wait_is_answered_at_once() {
    // RFC 6191: a client that reuses its port while synx holds the old tuple in TIME_WAIT
    // (the client, the passive closer, has no TIME_WAIT of its own) must not wait for a SYN
    // retransmission, and the new connection must work.
    let (bed, first) = time_wait_of_one_request();
    let cap = PacketSocket::open(&bed.net.client, &bed.net.client_if).unwrap();
    let reply = request_again_from(&bed, first);
    assert!(reply.ends_with(b"hello from synx\n"));
    let syns = cap.collect(Duration::from_millis(300), 16, |f| {
        tcp_of(f).is_some_and(|t| t.syn() && !t.ack() && t.source_port() == first.port())
    });
    assert_eq!(syns.len(), 1, "the client had to retransmit its SYN");
    // The tuple's FLOWS entry went from the old incarnation to the new one, not deleted, and
    // the new one took the old one's slot, which the entry named already (nothing written).
    assert_eq!(bed.daemon.counter("tcp_time_wait_flows_kept").unwrap(), 1);
    assert_eq!(bed.daemon.counter("tcp_time_wait_slots_reused").unwrap(), 1);
}

#[test]
fn s05c_retransmitted_syn_on_a_reused_time_wait_tuple_is_answered() {
    // The FLOWS entry a reused tuple keeps for its new incarnation brings the client's
    // retransmitted SYN (our SYN-ACK lost) to userspace instead of XDP: it gets a SYN-ACK again,
    // not a reset, and the connection works.
    let (bed, first) = time_wait_of_one_request();
    // The first SYN-ACK reaching the client is lost: the quota (IP bytes) lets one SYN-ACK of
    // up to 60 bytes be dropped and passes the next.
    bed.net
        .client
        .nft(&format!(
            "table inet lossy {{\n chain in {{\n type filter hook input priority 0;\n tcp sport {PORT} tcp flags & (syn | ack) == syn | ack quota until 61 bytes drop\n }}\n}}\n"
        ))
        .unwrap();
    let cap = PacketSocket::open(&bed.net.client, &bed.net.client_if).unwrap();
    let reply = request_again_from(&bed, first);
    bed.net.client.exec("nft", &["delete", "table", "inet", "lossy"]).unwrap();
    assert!(reply.ends_with(b"hello from synx\n"));
    let syns = cap.collect(Duration::from_millis(300), 16, |f| {
        tcp_of(f).is_some_and(|t| t.syn() && !t.ack() && t.source_port() == first.port())
    });
    assert_eq!(syns.len(), 2, "the SYN-ACK was not lost, or the retransmitted SYN went unanswered");
    assert_eq!(bed.daemon.counter("tcp_time_wait_flows_kept").unwrap(), 1);
    assert_eq!(bed.daemon.counter("tcp_cookie_rejected").unwrap(), 0);
}

/// An HTTP server whose TIME_WAIT holds the tuple of one request served (and the client's
/// address of it).
fn time_wait_of_one_request() -> (Bed, SocketAddr) {
    let bed = Bed::start("http", &["--msl", "30s"]);
    let first = bed.client(false, |mut s| {
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
        let mut v = Vec::new();
        s.read_to_end(&mut v).unwrap();
        s.local_addr().unwrap()
    });
    assert!(bed.wait_state("TIME_WAIT"));
    (bed, first)
}

/// The response to one more request, from the client address `from` (the kernel's client has
/// no TIME_WAIT of its own for it).
fn request_again_from(bed: &Bed, from: SocketAddr) -> Vec<u8> {
    let addr = bed.addr(false);
    bed.net
        .client
        .run(move || -> std::io::Result<Vec<u8>> {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            s.set_reuse_address(true)?;
            s.bind(&from.into())?;
            s.connect_timeout(&addr.into(), Duration::from_secs(5))?;
            let mut s: TcpStream = s.into();
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")?;
            let mut v = Vec::new();
            s.read_to_end(&mut v)?;
            Ok(v)
        })
        .unwrap()
        .unwrap()
}
