//! One service on three hosts behind an ECMP router, routes announced with BGP (BIRD): the
//! connections spread and work, a handshake may move between hosts, a host drains and leaves
//! without resetting anyone, a host that dies resets only its own connections, and a host
//! whose key or clock is wrong says so. The bed is `testbed::multihost`. Needs root.

use std::{
    io::Read as _,
    net::{Shutdown, TcpStream},
    time::Duration,
};

use testbed::{
    multihost::{Cluster, Setup, echo, is_reset},
    wait_for,
};

/// Open `n` connections from the client, each checked with one echo.
fn open(cluster: &Cluster, n: usize) -> Vec<(u16, TcpStream)> {
    (0..n)
        .map(|i| {
            let mut s = cluster.connect(0).unwrap();
            let port = s.local_addr().unwrap().port();
            let msg = format!("hello {i} from {port}");
            assert_eq!(echo(&mut s, msg.as_bytes()).unwrap(), msg.as_bytes(), "connection {i}");
            (port, s)
        })
        .collect()
}

/// Close from the client's side and see the server's FIN: EOF, no reset.
fn close_cleanly(port: u16, mut s: TcpStream) {
    s.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "port {port}: {} bytes after our FIN", rest.len()),
        Err(e) => panic!("port {port}: closing: {e}"),
    }
}

fn sum(cluster: &Cluster, hosts: &[usize], counter: &str) -> u64 {
    hosts.iter().map(|&h| cluster.hosts[h].counter(counter)).sum()
}

#[test]
fn connections_spread_over_every_host_and_all_work() {
    let cluster = Cluster::start(3, &Setup::default()).unwrap();
    let conns = open(&cluster, 48);
    let accepted: Vec<u64> = cluster.hosts.iter().map(|h| h.counter("tcp_accepted")).collect();
    assert_eq!(accepted.iter().sum::<u64>(), 48, "{accepted:?}");
    assert!(accepted.iter().all(|&a| a > 0), "every host takes some: {accepted:?}");
    // Each connection is held by exactly one host, and none moved (no second chance needed).
    for (port, _) in &conns {
        assert!(cluster.holder(*port).is_some(), "port {port} held by nobody");
    }
    assert_eq!(sum(&cluster, &[0, 1, 2], "xdp_second_chance_sent"), 0);
    for (i, (port, mut s)) in conns.into_iter().enumerate() {
        let msg = format!("again {i}");
        assert_eq!(echo(&mut s, msg.as_bytes()).unwrap(), msg.as_bytes(), "port {port}");
        close_cleanly(port, s);
    }
}

#[test]
fn a_handshake_begun_on_one_host_completes_on_another() {
    // The route moves between the SYN-ACK and the final ACK: the router sends this client
    // port's SYNs to host 0 and everything after to host 1 (nftables marks, policy routes).
    let cluster = Cluster::start(3, &Setup::default()).unwrap();
    let port = 45_000;
    cluster.steer(port, 0, 1).unwrap();
    let mut s = cluster.connect(port).unwrap();
    assert_eq!(echo(&mut s, b"moved").unwrap(), b"moved");
    let (a, b) = (&cluster.hosts[0], &cluster.hosts[1]);
    // Host 0 answered the SYN and never saw more; host 1 took the final ACK of host 0's
    // cookie (one key) and holds the connection.
    assert_eq!((a.counter("xdp_syn_cookie_sent"), a.counter("tcp_accepted")), (1, 0));
    assert_eq!((b.counter("xdp_syn_cookie_sent"), b.counter("xdp_cookie_ack_valid"), b.counter("tcp_accepted")), (0, 1, 1));
    assert_eq!(b.counter("xdp_cookie_ack_invalid"), 0);
    assert_eq!(cluster.holder(port), Some(1));
    // Long enough for the TSval clock the connection continues (host 1's) to serve RTT
    // samples and PAWS: the stream works both ways at size.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
    assert_eq!(echo(&mut s, &big).unwrap(), big);
    close_cleanly(port, s);
}

#[test]
fn a_handshake_from_a_host_whose_clock_is_ahead_keeps_the_timestamps_the_client_holds() {
    // Host 0's clock 1.5 s ahead (within the tolerance): its SYN-ACK's TSval is 1.5 s ahead of
    // what host 1's clock gives. Host 1 takes the connection and must not send TSvals below
    // the one the client echoed, or the client's PAWS check (RFC 7323 5) drops its segments.
    let cluster = Cluster::start(3, &Setup { clock_skew: vec![(0, 1_500)], ..Setup::default() }).unwrap();
    let port = 45_200;
    cluster.steer(port, 0, 1).unwrap();
    let paws = cluster.client.nstat("TcpExtPAWSEstab").unwrap();
    let mut s = cluster.connect(port).unwrap();
    let big: Vec<u8> = (0..100_000u32).map(|i| (i * 13) as u8).collect();
    assert_eq!(echo(&mut s, &big).unwrap(), big);
    assert_eq!(cluster.holder(port), Some(1));
    assert_eq!(cluster.client.nstat("TcpExtPAWSEstab").unwrap(), paws, "the client dropped segments as old (PAWS)");
    close_cleanly(port, s);
}

#[test]
fn a_draining_host_finishes_its_connections_and_leaves() {
    let mut cluster = Cluster::start(3, &Setup::default()).unwrap();
    let conns = open(&cluster, 30);
    let holders: Vec<(u16, usize)> = conns.iter().map(|(p, _)| (*p, cluster.holder(*p).unwrap())).collect();
    let on_b = holders.iter().filter(|(_, h)| *h == 1).count();
    assert!(on_b > 0, "no connection on host 1 of 30: {holders:?}");
    let accepted_b = cluster.hosts[1].counter("tcp_accepted");

    // Drain host 1; its BGP speaker withdraws the route once synx says it drains (what a
    // health check would do).
    let said = cluster.drain(1).unwrap();
    assert!(said.contains(&format!("{on_b} open")), "{said}");
    assert!(wait_for(Duration::from_secs(5), || cluster.hosts[1].counter("draining") == 1));
    cluster.hosts[1].withdraw().unwrap();
    assert!(cluster.wait_nexthops(2), "route not withdrawn: {:?}", cluster.nexthops());
    assert!(!cluster.nexthops().contains(&cluster.hosts[1].addr));
    // The other hosts see it draining.
    assert!(wait_for(Duration::from_secs(5), || cluster.hosts[0].counter("peers_draining") == 1));

    // New connections go to the others and all work; host 1 takes nothing new.
    let fresh = open(&cluster, 20);
    assert_eq!(cluster.hosts[1].counter("tcp_accepted"), accepted_b);
    // Host 1's connections still work: their segments now reach hosts 0 and 2, which hand
    // them on (second chance); host 1 answers directly.
    let forwarded_before = cluster.hosts[1].counter("xdp_second_chance_received");
    let mut kept = Vec::new();
    for (i, (port, mut s)) in conns.into_iter().enumerate() {
        let msg = format!("still there {i}");
        assert_eq!(echo(&mut s, msg.as_bytes()).unwrap(), msg.as_bytes(), "port {port}");
        kept.push((port, s));
    }
    assert!(cluster.hosts[1].counter("xdp_second_chance_received") >= forwarded_before + on_b as u64);
    assert!(sum(&cluster, &[0, 2], "xdp_second_chance_sent") >= on_b as u64);

    // They finish, no client sees a reset, and host 1 reaches zero and stops.
    for (port, s) in kept.into_iter().chain(fresh) {
        close_cleanly(port, s);
    }
    assert!(wait_for(Duration::from_secs(10), || cluster.hosts[1].counter("connections_open") == 0));
    assert_eq!(sum(&cluster, &[0, 1, 2], "xdp_rst_sent") + sum(&cluster, &[0, 1, 2], "tcp_closed_reset"), 0);
    let status = cluster.hosts[1].daemon.take().unwrap().stop().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn killing_a_host_resets_only_its_connections() {
    let mut cluster = Cluster::start(3, &Setup::default()).unwrap();
    let conns = open(&cluster, 30);
    let holders: Vec<usize> = conns.iter().map(|(p, _)| cluster.holder(*p).unwrap()).collect();
    assert!(holders.contains(&2), "no connection on host 2 of 30");
    cluster.hosts[2].kill();
    assert!(cluster.wait_nexthops(2), "route not withdrawn: {:?}", cluster.nexthops());
    // The others stop forwarding to it once it has not answered for a few seconds (a host
    // that never answered stays in the ring for as long after start, though it is not counted
    // reachable). Until then a segment for host 2's connections goes around to it and is lost;
    // after, the last host of the ring resets it at its first retransmission past the hold
    // (`--cookie-miss-hold`), which the client's backoff may put seconds later.
    for h in [0, 1] {
        assert!(wait_for(Duration::from_secs(10), || cluster.hosts[h].counter("peers_reachable") == 1), "host {h}");
        assert!(wait_for(Duration::from_secs(10), || cluster.hosts[h].counter("peers_in_ring") == 1), "host {h}");
    }
    let (mut reset, mut fine) = (0, 0);
    for ((port, mut s), holder) in conns.into_iter().zip(holders) {
        match echo(&mut s, b"after") {
            Ok(got) => {
                assert_ne!(holder, 2, "port {port}: host 2's connection still answers");
                assert_eq!(got, b"after");
                close_cleanly(port, s);
                fine += 1;
            }
            Err(e) => {
                assert_eq!(holder, 2, "port {port} (host {holder}): {e}");
                assert!(is_reset(&e), "port {port}: {e} ({:?}), not a reset", e.kind());
                reset += 1;
            }
        }
    }
    assert!(reset > 0 && fine > 0, "{reset} reset, {fine} fine");
}

#[test]
fn a_host_with_another_key_says_so() {
    let cluster = Cluster::start(3, &Setup { own_key: vec![2], ..Setup::default() }).unwrap();
    assert!(wait_for(Duration::from_secs(10), || cluster.hosts[2].counter("cookie_key_differs") == 1));
    for h in [0, 1] {
        assert!(wait_for(Duration::from_secs(5), || cluster.hosts[h].counter("peers_other_key") == 1), "host {h}");
        assert_eq!(cluster.hosts[h].counter("cookie_key_differs"), 0, "host {h}");
    }
    assert!(cluster.hosts[2].daemon().log().iter().any(|l| l.contains("cookie key differs")), "{:?}", cluster.hosts[2].daemon().log());
    // A handshake begun on host 0 whose final ACK reaches host 2: host 2 cannot check host 0's
    // cookie and counts it; second chance hands it on to host 0, which takes it.
    let port = 45_100;
    cluster.steer(port, 0, 2).unwrap();
    let mut s = cluster.connect(port).unwrap();
    assert_eq!(echo(&mut s, b"other key").unwrap(), b"other key");
    assert!(cluster.hosts[2].counter("xdp_cookie_ack_invalid") >= 1);
    assert_eq!(cluster.hosts[2].counter("tcp_accepted"), 0);
    assert_eq!(cluster.holder(port), Some(0));
    close_cleanly(port, s);
}

#[test]
fn a_host_whose_clock_is_off_says_so() {
    let cluster = Cluster::start(3, &Setup { clock_skew: vec![(2, 5_000)], ..Setup::default() }).unwrap();
    assert!(wait_for(Duration::from_secs(10), || cluster.hosts[2].counter("clock_off") == 1));
    assert!(cluster.hosts[2].counter("clock_peer_offset_max_ms") >= 4_900);
    for h in [0, 1] {
        assert!(wait_for(Duration::from_secs(5), || cluster.hosts[h].counter("peers_clock_off") == 1), "host {h}");
        assert_eq!(cluster.hosts[h].counter("clock_off"), 0, "host {h}");
    }
    let log = cluster.hosts[2].daemon().log();
    assert!(log.iter().any(|l| l.contains("this host's clock is off")), "{log:?}");
}
