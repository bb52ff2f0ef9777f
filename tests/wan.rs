//! synx on emulated wide-area paths (issue 16): delay, a bottleneck, loss, reordering, through
//! the test bed's path emulator (`testbed::path`), which is first calibrated kernel against
//! kernel.

use std::time::Duration;

use testbed::{
    Daemon,
    path::{Dir, KernelApp, KernelApps, Loss, PathBed, PathSpec, probe},
    require_root,
};

const ECHO: u16 = 7;
const SINK: u16 = 9;
const HTTP: u16 = 80;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A counter of the kernel's in a namespace.
fn nstat(ns: &testbed::Netns, name: &str) -> u64 {
    ns.nstat(name).unwrap()
}

/// The emulator does what it is asked, measured from outside with the kernel's TCP at both
/// ends: the round-trip time, the bottleneck's rate, the loss; and it keeps the kernel's
/// offloads (super-frames arrive and are segmented) without dropping anything itself.
///
/// Tolerances (the emulator's own timing, measured: departures p50 32 us and p99 64 us late on
/// a loaded 2-core machine): RTT median within 2 ms (5%) above the 40 ms asked, never below;
/// the receiver's steady-state goodput within 3% of the payload rate of the bottleneck; loss
/// within 5 standard deviations of the binomial count.
#[test]
fn calibration_kernel_to_kernel() {
    require_root();
    let bed = PathBed::builder().both(PathSpec::wan(ms(40), 100_000_000)).kernel_server().start().unwrap();
    bed.enable_gro().unwrap();
    let server = &bed.servers[0];
    let _echo = KernelApps::start(&server.ns, &[(server.addr(ECHO), KernelApp::Echo)]).unwrap();

    // Round-trip time: one byte back and forth on one connection.
    let rtts = probe::rtts(&bed.client, server.addr(ECHO), 200).unwrap();
    let (min, p50) = (probe::quantile(&rtts, 0.0), probe::quantile(&rtts, 0.5));
    println!("rtt asked 40 ms: min {min:?} p50 {p50:?} p99 {:?}", probe::quantile(&rtts, 0.99));
    assert!(min >= ms(40), "a round trip shorter than the path: {min:?}");
    assert!(p50 <= ms(42), "median round trip {p50:?}, asked 40 ms");

    // Rate: 64 MiB upload; the receiver's goodput from 2 s in (past slow start) to the end.
    // 1514-byte frames carry 1448 bytes of payload (timestamps on): 95.64 Mbit/s at most.
    let up0 = bed.stats(Dir::Up);
    let sink = probe::timed_sink(&server.ns, server.addr(SINK)).unwrap();
    probe::upload(&bed.client, server.addr(SINK), 64 << 20, Some(Duration::from_secs(60))).unwrap();
    let marks = sink.join().unwrap().unwrap();
    let up = bed.stats(Dir::Up).since(&up0);
    let goodput = probe::goodput_after(&marks, Duration::from_secs(2)).unwrap();
    let payload_rate = 100.0 * 1448.0 / 1514.0;
    println!(
        "rate asked 100 Mbit/s: goodput {goodput:.2} Mbit/s (payload limit {payload_rate:.2}); departures late p50 {:?} p99 {:?} max {:?}; {} super-frames cut into {} segments",
        up.lateness_quantile(0.5),
        up.lateness_quantile(0.99),
        up.lateness_max,
        up.super_frames,
        up.segments
    );
    assert!(goodput <= payload_rate * 1.01, "faster than the bottleneck: {goodput:.2} Mbit/s");
    assert!(goodput >= payload_rate * 0.97, "the bottleneck gave {goodput:.2} Mbit/s of {payload_rate:.2}");
    assert!(up.super_frames > 0, "the kernel client sent no TSO/GSO super-frames: its offloads are off");
    assert!(up.tail_drops > 0, "slow start never filled the one-BDP queue");

    // Loss: 1% each way, counted by the path and seen by the sender as retransmissions.
    bed.set_both(PathSpec::wan(ms(40), 100_000_000).with_loss(Loss::Random(0.01)));
    let (up0, down0) = (bed.stats(Dir::Up), bed.stats(Dir::Down));
    let retrans0 = nstat(&bed.client, "TcpRetransSegs");
    let sink = probe::timed_sink(&server.ns, server.addr(SINK + 1)).unwrap();
    probe::upload(&bed.client, server.addr(SINK + 1), 16 << 20, Some(Duration::from_secs(120))).unwrap();
    sink.join().unwrap().unwrap();
    let (up, down) = (bed.stats(Dir::Up).since(&up0), bed.stats(Dir::Down).since(&down0));
    let retrans = nstat(&bed.client, "TcpRetransSegs") - retrans0;
    for (dir, s) in [("up", &up), ("down", &down)] {
        let n = s.impairable as f64;
        let sd = (n * 0.01 * 0.99).sqrt();
        println!("loss asked 1% {dir}: {} of {} frames ({:.3}%)", s.lost, s.impairable, s.lost as f64 / n * 100.0);
        assert!(s.impairable > 2000, "{dir}: too few frames to judge: {}", s.impairable);
        assert!((s.lost as f64 - n * 0.01).abs() <= 5.0 * sd, "{dir}: {} lost of {} frames, asked 1%", s.lost, s.impairable);
    }
    assert!(retrans >= up.lost, "{} frames lost upstream but the client retransmitted only {retrans}", up.lost);

    for (dir, s) in [("up", bed.stats(Dir::Up)), ("down", bed.stats(Dir::Down))] {
        assert_eq!(s.faults(), 0, "{dir}: the emulator failed frames itself: {s:?}");
    }
    assert_eq!(bed.device_drops().unwrap(), 0, "a veth dropped frames the path did not");
}

/// CE marks and reordering reach the receiver as such, kernel against kernel: every frame the
/// path marks arrives marked (the receiver's IpExtInCEPkts counts exactly the path's marks),
/// the sender backs off without a loss, and held-back frames reach the receiver out of order.
/// The kernel's own reactions are printed: the reference for synx's tests of the same paths.
#[test]
fn ecn_marks_and_reordering_reach_the_kernel_as_asked() {
    require_root();
    let base = PathSpec::wan(ms(40), 100_000_000);
    // A queue of 4 BDPs that never fills, marking above a quarter of one BDP.
    let ecn = PathSpec { queue_bytes: Some(2_000_000), ecn_threshold: Some(125_000), ..base.clone() };
    let bed = PathBed::builder().up(ecn).kernel_server().start().unwrap();
    bed.enable_gro().unwrap();
    bed.client.exec("sysctl", &["-qw", "net.ipv4.tcp_ecn=1"]).unwrap();
    let server = &bed.servers[0];
    let (client_ns, server_ns) = (&bed.client, &server.ns);

    let up0 = bed.stats(Dir::Up);
    let ce0 = nstat(server_ns, "IpExtInCEPkts");
    let sink = probe::timed_sink(server_ns, server.addr(SINK)).unwrap();
    probe::upload(client_ns, server.addr(SINK), 32 << 20, Some(Duration::from_secs(60))).unwrap();
    sink.join().unwrap().unwrap();
    let up = bed.stats(Dir::Up).since(&up0);
    let ce_seen = nstat(server_ns, "IpExtInCEPkts") - ce0;
    println!(
        "ecn: {} frames marked CE by the path, {ce_seen} arrived marked; tail drops {}; sender: TCPDeliveredCE {}",
        up.ce_marked,
        up.tail_drops,
        nstat(client_ns, "TcpExtTCPDeliveredCE")
    );
    assert!(up.ce_marked > 0, "the queue never passed the marking threshold");
    assert_eq!(ce_seen, up.ce_marked, "CE marks lost or invented between the path and the receiver");
    assert_eq!(up.tail_drops + up.lost, 0, "the sender did not back off on CE marks alone");

    bed.set(Dir::Up, base.with_reorder(0.02, ms(2)));
    let up0 = bed.stats(Dir::Up);
    let ofo0 = nstat(server_ns, "TcpExtTCPOFOQueue");
    let sink = probe::timed_sink(server_ns, server.addr(SINK + 1)).unwrap();
    probe::upload(client_ns, server.addr(SINK + 1), 32 << 20, Some(Duration::from_secs(60))).unwrap();
    sink.join().unwrap().unwrap();
    let up = bed.stats(Dir::Up).since(&up0);
    let ofo = nstat(server_ns, "TcpExtTCPOFOQueue") - ofo0;
    let kernel: Vec<String> = ["TcpRetransSegs", "TcpExtTCPSACKReorder", "TcpExtTCPDSACKRecv", "TcpExtTCPDSACKUndo", "TcpExtTCPFullUndo", "TcpExtTCPLossUndo"]
        .iter()
        .map(|n| format!("{n} {}", nstat(client_ns, n)))
        .collect();
    println!("reordering: {} of {} frames held back 2 ms; receiver queued {ofo} out of order; sender: {}", up.reordered, up.impairable, kernel.join(", "));
    assert!(up.reordered > 0 && ofo > 0, "no frame arrived out of order");
    assert_eq!(up.lost + up.tail_drops, 0);
    assert_eq!(bed.stats(Dir::Up).faults() + bed.stats(Dir::Down).faults(), 0);
    assert_eq!(bed.device_drops().unwrap(), 0);
}

/// How fast the emulator forwards with nothing to emulate, kernel to kernel: printed, not
/// asserted (a figure of this machine, for the bench's stated configuration).
#[test]
fn emulator_ceiling_is_printed() {
    require_root();
    let bed = PathBed::builder().kernel_server().start().unwrap();
    bed.enable_gro().unwrap();
    let server = &bed.servers[0];
    let sink = probe::timed_sink(&server.ns, server.addr(SINK)).unwrap();
    probe::upload(&bed.client, server.addr(SINK), 512 << 20, Some(Duration::from_secs(60))).unwrap();
    let marks = sink.join().unwrap().unwrap();
    let (t1, b1) = *marks.last().unwrap();
    let up = bed.stats(Dir::Up);
    println!(
        "emulator ceiling: {:.0} Mbit/s of payload ({} super-frames cut into {} segments)",
        b1 as f64 * 8.0 / t1.as_secs_f64() / 1e6,
        up.super_frames,
        up.segments
    );
    assert_eq!(b1, 512 << 20);
    assert_eq!(up.faults() + bed.stats(Dir::Down).faults(), 0);
}

/// 64 MiB each way through synx's echo over a 40 ms path losing 3% of frames both ways in
/// bursts (Gilbert-Elliott, 3 frame times at the bottleneck rate on average): every byte back,
/// in order. The 64 MiB run
/// as 8 connections of 8 MiB at once, so the test takes tens of seconds, not minutes.
#[test]
fn sixty_four_mib_each_way_through_bursty_loss_arrive_intact() {
    require_root();
    let spec = PathSpec::wan(ms(40), 100_000_000).with_loss(Loss::bursty(0.03, 3.0));
    let bed = PathBed::builder().both(spec).xdp_server().seed(16).start().unwrap();
    let server = &bed.servers[0];
    let daemon = Daemon::start(&server.ns, &server.iface, &["--listen", &format!("{}=echo", server.addr(ECHO))]).unwrap();
    let (client, addr) = (&bed.client, server.addr(ECHO));
    // probe::echo checks the length and the hash of what came back.
    let results: Vec<_> = std::thread::scope(|scope| {
        let flows: Vec<_> = (0..8u64)
            .map(|i| scope.spawn(move || probe::echo(client, addr, 8 << 20, i + 1, Some(Duration::from_secs(120)))))
            .collect();
        flows.into_iter().map(|flow| flow.join().unwrap()).collect()
    });
    let (up, down) = (bed.stats(Dir::Up), bed.stats(Dir::Down));
    if results.iter().any(Result::is_err) {
        // A stalled flow's both ends, while they still exist: who waits for what.
        let nstat = client.exec("nstat", &["-az"]).unwrap_or_default();
        let nonzero: Vec<&str> = nstat.lines().filter(|l| l.split_whitespace().nth(1).is_some_and(|v| v != "0")).collect();
        println!("client nstat:\n{}", nonzero.join("\n"));
        println!("synx connections: {:#}", serde_json::Value::from(daemon.conns().unwrap_or_default()));
        println!("synx stats: {}", daemon.stats().map(|s| s.to_string()).unwrap_or_default());
        println!("path: up {up:?}\ndown {down:?}");
        // Once more after the next timer fires (up to 20 s): whether it sent anything.
        std::thread::sleep(Duration::from_secs(20));
        println!("synx connections 20 s later: {:#}", serde_json::Value::from(daemon.conns().unwrap_or_default()));
        println!("client sockets 20 s later:\n{}", client.exec("ss", &["-tinoem", "state", "all"]).unwrap_or_default());
        println!("path 20 s later: up {:?}\ndown {:?}", bed.stats(Dir::Up), bed.stats(Dir::Down));
        let errors: Vec<String> = results.iter().enumerate().filter_map(|(i, r)| r.as_ref().err().map(|e| format!("flow {i}: {e:#}"))).collect();
        panic!("{}", errors.join("; "));
    }
    println!("lost up {} of {}, down {} of {}", up.lost, up.impairable, down.lost, down.impairable);
    assert!(up.lost > 0 && down.lost > 0, "the path lost nothing: the test tested nothing");
    assert_eq!(up.faults() + down.faults(), 0);
    assert_eq!(bed.device_drops().unwrap(), 0);
}

/// 2% of frames held back 2 ms both ways (16 frames' time at 100 Mbit/s), nothing lost, while
/// synx sends 16 MiB: the first reordering may set off a fast retransmit, but the DSACK for it
/// (the client's kernel sends one, RFC 2883) or the timestamps (RFC 3522) undo the reduction,
/// and from then on RACK's reordering window (RFC 8985 6.2) keeps late frames from being
/// resent. So every window reduction is undone, and reordered frames set off few recoveries.
/// The bottleneck's queue is unbounded, so nothing is dropped (slow start's overshoot
/// included): every retransmission is spurious.
#[test]
fn reordering_sets_off_few_retransmissions_and_each_reduction_is_undone() {
    require_root();
    let spec = PathSpec { queue_bytes: None, ..PathSpec::wan(ms(40), 100_000_000) }.with_reorder(0.02, ms(2));
    let bed = PathBed::builder().both(spec).xdp_server().seed(8985).start().unwrap();
    let server = &bed.servers[0];
    let daemon = Daemon::start(&server.ns, &server.iface, &["--listen", &format!("{}=http", server.addr(HTTP))]).unwrap();
    probe::download(&bed.client, server.addr(HTTP), 16 << 20, Some(Duration::from_secs(120))).unwrap();
    let down = bed.stats(Dir::Down);
    let c = |name: &str| daemon.counter(name).unwrap();
    let (retransmits, recoveries, undos) = (c("tcp_retransmits"), c("tcp_fast_recoveries"), c("tcp_undos"));
    println!(
        "reordering: {} of {} frames held back; synx: retransmits {retransmits}, RACK losses {}, fast recoveries \
         {recoveries}, DSACKs received {}, undos {undos}, timeouts {}, loss probes {}",
        down.reordered,
        down.impairable,
        c("tcp_rack_losses"),
        c("tcp_dsacks_received"),
        c("tcp_rto_timeouts"),
        c("tcp_loss_probes"),
    );
    assert!(down.reordered > 100, "the path reordered too little to test anything");
    assert_eq!(down.lost + down.tail_drops, 0, "a frame was dropped: a retransmission could be a real repair");
    assert_eq!(undos, recoveries, "a window reduction for reordering alone was left standing");
    assert!(recoveries * 10 <= down.reordered, "reordering kept setting off recoveries: {recoveries} for {} frames", down.reordered);
    assert_eq!(bed.stats(Dir::Up).faults() + down.faults(), 0);
}

/// ECN end to end (RFC 3168) with a Linux client that asks for it (net.ipv4.tcp_ecn=1), on a
/// 40 ms path through a 20 Mbit/s bottleneck (slow enough that a sender sharing a loaded
/// machine still fills it) that marks CE above 10 KB of queue (a tenth of a BDP: slow start
/// now ends near the BDP, and CUBIC's growth after it passes a quarter of a BDP only late in an
/// 8 MiB transfer) and never fills (4 BDPs): XDP's SYN-ACK agrees (ECE), the connection made from the cookie's ACK uses ECN, and
/// CE marks shrink synx's window with nothing lost or resent. Down (synx sends 8 MiB): every
/// marked frame reaches the client marked, the client echoes ECE, synx reduces its window.
/// Up (the client sends 8 MiB to synx): synx counts every marked frame and echoes ECE, and
/// the client backs off on it. With `--no-ecn` nothing synx sends is ECN-capable, so nothing
/// is marked. The kernel's own run on the same path is ecn_marks_and_reordering_reach_the_kernel_as_asked.
#[test]
fn ce_marks_shrink_synx_windows_without_loss() {
    require_root();
    let ecn = PathSpec { queue_bytes: Some(400_000), ecn_threshold: Some(10_000), ..PathSpec::wan(ms(40), 20_000_000) };
    let bed = PathBed::builder().both(ecn).xdp_server().seed(3168).start().unwrap();
    bed.client.exec("sysctl", &["-qw", "net.ipv4.tcp_ecn=1"]).unwrap();
    // A retransmitted SYN keeps asking for ECN: Linux drops ECE and CWR from a SYN it sends
    // again (RFC 3168 6.1.1.1), and on a loaded machine a first SYN can go unanswered (XDP
    // leaves SYNs unanswered while the engine is behind), which would test a non-ECN flow.
    bed.client.exec("sysctl", &["-qw", "net.ipv4.tcp_ecn_fallback=0"]).unwrap();
    let server = &bed.servers[0];
    let client = &bed.client;
    let listen = [format!("{}=http", server.addr(HTTP)), format!("{}=discard", server.addr(SINK))];
    let daemon = Daemon::start(&server.ns, &server.iface, &["--listen", &listen[0], "--listen", &listen[1]]).unwrap();
    // Every counter named must exist: a misspelt name would read as 0.
    let counters = |d: &Daemon| {
        let stats = d.stats().unwrap();
        move |name: &str| stats.get(name).and_then(|v| v.as_u64()).unwrap_or_else(|| panic!("no counter {name}"))
    };

    // Down: synx sends.
    let syn_retrans0 = nstat(client, "TcpExtTCPSynRetrans");
    let (down0, ce0) = (bed.stats(Dir::Down), nstat(client, "IpExtInCEPkts"));
    probe::download(client, server.addr(HTTP), 8 << 20, Some(Duration::from_secs(120))).unwrap();
    let down = bed.stats(Dir::Down).since(&down0);
    let ce_at_client = nstat(client, "IpExtInCEPkts") - ce0;
    let c = counters(&daemon);
    let (reductions, retransmits) = (c("tcp_ecn_reductions"), c("tcp_retransmits"));
    println!(
        "down: {} frames marked CE by the path, {ce_at_client} arrived marked; tail drops {}, lost {}; synx: ECN \
         reductions {reductions}, retransmits {retransmits}, fast recoveries {}, timeouts {}; client SYNs sent again {}",
        down.ce_marked,
        down.tail_drops,
        down.lost,
        c("tcp_fast_recoveries"),
        c("tcp_rto_timeouts"),
        nstat(client, "TcpExtTCPSynRetrans") - syn_retrans0,
    );
    assert!(down.ce_marked > 0, "synx's data was not ECN-capable or the queue never passed the threshold");
    assert_eq!(ce_at_client, down.ce_marked, "CE marks lost or invented between the path and the client");
    assert!(reductions > 0, "the client's ECE echoes never reduced synx's window");
    assert_eq!(down.tail_drops + down.lost, 0, "synx did not back off on CE marks alone");
    assert_eq!(retransmits, 0, "nothing was lost, yet synx resent");

    // Up: synx receives and echoes.
    let (up0, retrans0, delivered_ce0) = (bed.stats(Dir::Up), nstat(client, "TcpRetransSegs"), nstat(client, "TcpExtTCPDeliveredCE"));
    probe::upload(client, server.addr(SINK), 8 << 20, Some(Duration::from_secs(120))).unwrap();
    let up = bed.stats(Dir::Up).since(&up0);
    let echoed = nstat(client, "TcpExtTCPDeliveredCE") - delivered_ce0;
    let client_retrans = nstat(client, "TcpRetransSegs") - retrans0;
    // The core counts once a segment has been taken in; the upload ends when the client's
    // last byte is acknowledged, so the count settles a loop turn later.
    let mut ce_received = 0;
    testbed::wait_for(Duration::from_secs(5), || {
        ce_received = counters(&daemon)("tcp_ce_received");
        ce_received >= up.ce_marked
    });
    println!(
        "up: {} frames marked CE by the path; synx received {ce_received} marked; client: TCPDeliveredCE {echoed}, \
         retransmitted {client_retrans}; tail drops {}, lost {}",
        up.ce_marked,
        up.tail_drops,
        up.lost
    );
    assert!(up.ce_marked > 0, "the client's data was not ECN-capable or the queue never passed the threshold");
    assert_eq!(ce_received, up.ce_marked, "synx did not count every CE mark");
    assert!(echoed > 0, "synx never echoed ECE to the client");
    assert_eq!(up.tail_drops + up.lost + client_retrans, 0, "the client did not back off on synx's echoes alone");
    assert_eq!(bed.stats(Dir::Up).faults() + bed.stats(Dir::Down).faults(), 0);
    assert_eq!(bed.device_drops().unwrap(), 0);
    drop(daemon);

    // --no-ecn: the SYN-ACK does not agree, so nothing synx sends is ECN-capable.
    let daemon = Daemon::start(&server.ns, &server.iface, &["--no-ecn", "--listen", &listen[0]]).unwrap();
    let down0 = bed.stats(Dir::Down);
    probe::download(client, server.addr(HTTP), 8 << 20, Some(Duration::from_secs(120))).unwrap();
    let down = bed.stats(Dir::Down).since(&down0);
    let c = counters(&daemon);
    // Without ECN synx fills the queue until it drops (not asserted: loss is allowed here).
    assert_eq!((down.ce_marked, c("tcp_ecn_reductions")), (0, 0), "ECN without agreement");
}

/// The client's handshake ACK and its first small write are lost on the path; its second small
/// write (TCP_NODELAY) reaches synx first. That segment's SEG.SEQ - 1 is no ISN and it is too
/// short for the cookie's search behind it, so XDP cannot start the connection from it; it
/// drops it rather than reset the client (a kernel listener's SYN queue would take it, RFC 9293
/// 3.10.7.4), and the client's retransmission of its first write validates the cookie. Both
/// writes come back, in order.
#[test]
fn a_later_small_segment_after_a_lost_handshake_ack_is_held_not_reset() {
    let (echoed, _bed, daemon) = small_writes_behind_a_lost_handshake_ack(&[]);
    let back = echoed.expect("the client was reset, or its data never came back");
    assert_eq!((&back[..100], &back[100..]), (&[b'a'; 100][..], &[b'b'; 200][..]));
    let c = |name: &str| daemon.counter(name).unwrap();
    assert!(c("xdp_cookie_miss_held") >= 1, "the second write never came first: {:?}", daemon.stats());
    assert_eq!((c("xdp_rst_sent"), c("tcp_accepted")), (0, 1));
}

/// With `--cookie-miss-hold 0` the same client is reset at once, as Linux resets it with SYN
/// cookies.
#[test]
fn with_no_hold_the_later_small_segment_is_reset() {
    let (echoed, _bed, daemon) = small_writes_behind_a_lost_handshake_ack(&["--cookie-miss-hold", "0"]);
    let e = echoed.expect_err("no hold, and the client was not reset");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    let c = |name: &str| daemon.counter(name).unwrap();
    assert_eq!((c("xdp_cookie_miss_held"), c("xdp_rst_sent"), c("tcp_accepted")), (0, 1, 0));
}

/// A client on a 20 ms path writes 100 bytes, then 200, with TCP_NODELAY, and reads the 300
/// echoed; the path drops its handshake ACK and its first write (its 2nd and 3rd segments to
/// the port, counted by the middle's egress hook, where the client's stack does not see the
/// drop: a drop in its own output or egress hooks fails the transmit, and TCP sends again at
/// once). What the client read, the bed and synx (`extra`: its flags), to be dropped in that
/// order's reverse.
fn small_writes_behind_a_lost_handshake_ack(extra: &[&str]) -> (std::io::Result<Vec<u8>>, PathBed, Daemon) {
    require_root();
    let bed = PathBed::builder().both(PathSpec { delay: ms(10), ..PathSpec::default() }).xdp_server().start().unwrap();
    let server = &bed.servers[0];
    let listen = format!("{}=echo", server.addr(ECHO));
    let daemon = Daemon::start(&server.ns, &server.iface, &[&["--listen", listen.as_str()], extra].concat()).unwrap();
    let dev = server.middle_if();
    bed.middle
        .nft(&format!(
            "table netdev lossy {{\n chain tx {{ type filter hook egress device {dev} priority 0; tcp dport {ECHO} numgen inc mod 1000000 1-2 counter drop; }}\n}}\n"
        ))
        .unwrap();
    let addr = server.addr(ECHO);
    let echoed = bed
        .client
        .run(move || -> std::io::Result<Vec<u8>> {
            use std::io::{Read as _, Write as _};
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(20)))?;
            s.set_nodelay(true)?;
            s.write_all(&[b'a'; 100])?;
            s.write_all(&[b'b'; 200])?;
            let mut back = vec![0u8; 300];
            s.read_exact(&mut back)?;
            Ok(back)
        })
        .unwrap();
    let rule = bed.middle.exec("nft", &["list", "table", "netdev", "lossy"]).unwrap();
    assert!(rule.contains("packets 2 "), "the path did not drop the handshake ACK and the first write: {rule}");
    (echoed, bed, daemon)
}

/// A server that speaks first (an SMTP-style banner from a kernel-TCP backend, through synx's
/// proxy app) to a client whose handshake ACK the path lost. The client is ESTABLISHED and
/// waits for the banner; synx never heard of the connection (the cookie holds SYN-RECEIVED).
/// RFC 9293 3.10.7.2 has SYN-RECEIVED retransmit its SYN-ACK, and so does synx from what XDP
/// recorded: the client answers the duplicate with an ACK carrying the cookie (RFC 5961 4.2),
/// the connection starts and the banner comes, about a second late.
#[test]
fn a_banner_reaches_a_client_whose_handshake_ack_was_lost() {
    let (banner, _bed, daemon) = banner_behind_a_lost_handshake_ack(&[], read_banner(Duration::from_secs(10)));
    let banner = banner.expect("no banner: the connection never started");
    assert_eq!(banner, BANNER);
    let c = |name: &str| daemon.counter(name).unwrap();
    assert!(c("synack_retransmits") >= 1, "{:?}", daemon.stats());
    assert_eq!((c("tcp_accepted"), c("xdp_syn_recorded")), (1, 1), "{:?}", daemon.stats());
    // The retransmitter learns of the connection at its next read (every 100 ms) and forgets
    // the handshake.
    let until = std::time::Instant::now() + Duration::from_secs(3);
    while c("synack_pending") != 0 && std::time::Instant::now() < until {
        std::thread::sleep(ms(50));
    }
    assert_eq!((c("synack_pending"), c("synack_given_up")), (0, 0), "{:?}", daemon.stats());
}

/// With `--synack-retries 0` the same client waits for a banner that never comes (as a client
/// of a Linux listener under SYN cookies does).
#[test]
fn with_no_synack_retries_the_banner_never_comes() {
    let (banner, _bed, daemon) = banner_behind_a_lost_handshake_ack(&["--synack-retries", "0"], read_banner(Duration::from_secs(4)));
    let e = banner.expect_err("a banner came with no SYN-ACK retransmission");
    assert!(matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut), "{e}");
    // (The client's close, whose FIN carries the cookie, may start a connection after the
    // read timed out: too late for a protocol whose server speaks first.)
    let c = |name: &str| daemon.counter(name).unwrap();
    assert_eq!((c("xdp_syn_recorded"), c("synack_retransmits")), (0, 0));
}

/// The same lost handshake ACK, and the client gives up at once with an RST (SO_LINGER 0; a
/// half-open scanner's stack answers a SYN-ACK so): RFC 9293 3.10.7.4 ends SYN-RECEIVED on an
/// RST in its window, as Linux's tcp_check_req does, and synx sends no SYN-ACK again.
#[test]
fn a_client_that_resets_the_handshake_gets_no_syn_ack_again() {
    let abort = |addr| -> std::io::Result<Vec<u8>> {
        let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO))?;
        drop(s);
        // Past the first retransmission's time.
        std::thread::sleep(Duration::from_millis(1500));
        Ok(Vec::new())
    };
    let (_, _bed, daemon) = banner_behind_a_lost_handshake_ack(&[], abort);
    let c = |name: &str| daemon.counter(name).unwrap();
    assert_eq!(
        (c("xdp_syn_recorded"), c("xdp_rst_recorded"), c("synack_reset"), c("synack_retransmits"), c("synack_pending")),
        (1, 1, 1, 0, 0),
        "{:?}",
        daemon.stats()
    );
}

const BANNER: &[u8] = b"220 synx.test ESMTP\r\n";

/// A client that reads the banner within `wait`.
fn read_banner(wait: Duration) -> impl FnOnce(std::net::SocketAddr) -> std::io::Result<Vec<u8>> + Send + 'static {
    move |addr| {
        use std::io::Read as _;
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(wait))?;
        let mut got = vec![0u8; BANNER.len()];
        s.read_exact(&mut got)?;
        Ok(got)
    }
}

/// A client on a 20 ms path (`client`, given the address) connects to synx's proxy in front of
/// a backend that greets first; the path drops the client's handshake ACK (its 2nd
/// segment to the port, in the middle's egress hook, where the client's stack does not see
/// the drop). What the client read, the bed and synx (`extra`: its flags), to be dropped in
/// that order's reverse.
fn banner_behind_a_lost_handshake_ack(
    extra: &[&str],
    client: impl FnOnce(std::net::SocketAddr) -> std::io::Result<Vec<u8>> + Send + 'static,
) -> (std::io::Result<Vec<u8>>, PathBed, Daemon) {
    const SMTP: u16 = 25;
    require_root();
    let bed = PathBed::builder().both(PathSpec { delay: ms(10), ..PathSpec::default() }).xdp_server().start().unwrap();
    let server = &bed.servers[0];
    // The backend: greets each connection, then waits for the client to close.
    let backend = server
        .ns
        .run(|| {
            let l = std::net::TcpListener::bind("127.0.0.1:2525").unwrap();
            l.set_nonblocking(true).unwrap();
            l
        })
        .unwrap();
    std::thread::spawn(move || {
        use std::io::Write as _;
        let until = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < until {
            match backend.accept() {
                Ok((mut s, _)) => {
                    let _ = s.write_all(BANNER);
                    std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_secs(15));
                        drop(s);
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    let listen = format!("{}=proxy=127.0.0.1:2525", server.addr(SMTP));
    let daemon = Daemon::start(&server.ns, &server.iface, &[&["--listen", listen.as_str()], extra].concat()).unwrap();
    let dev = server.middle_if();
    bed.middle
        .nft(&format!(
            "table netdev lossy {{\n chain tx {{ type filter hook egress device {dev} priority 0; tcp dport {SMTP} numgen inc mod 1000000 1 counter drop; }}\n}}\n"
        ))
        .unwrap();
    let addr = server.addr(SMTP);
    let banner = bed.client.run(move || client(addr)).unwrap();
    let rule = bed.middle.exec("nft", &["list", "table", "netdev", "lossy"]).unwrap();
    assert!(rule.contains("packets 1 "), "the path did not drop the handshake ACK: {rule}");
    (banner, bed, daemon)
}

/// A Linux client that closes while synx's data is still on its way, with nothing unread at
/// its close (so it sends a FIN), answers every later segment with a RST whose sequence number
/// is that segment's ACK: the FIN's own sequence number, for what synx sent before the FIN
/// reached it. Once the FIN is in (CLOSE_WAIT), synx takes such a RST as a reset, as Linux's
/// tcp_reset_check does, and the connection ends at the first; dropped as outside the window
/// (RFC 5961 3.2 alone), they left synx sending into the closed socket until a RST answering
/// a segment sent after the FIN came back (52 dropped here before the change).
/// A 10 Mbit/s path: a frame about every 1.2 ms, so the client's drain-then-close rarely races
/// an arrival (which would make its close a RST at RCV.NXT, valid either way).
#[test]
fn a_client_that_closes_with_data_in_flight_ends_the_connection_at_its_reset() {
    use std::io::{Read as _, Write as _};
    require_root();
    let bed = PathBed::builder().both(PathSpec::wan(ms(40), 10_000_000)).xdp_server().start().unwrap();
    let server = &bed.servers[0];
    let listen = format!("{}=http", server.addr(HTTP));
    let daemon = Daemon::start(&server.ns, &server.iface, &["--listen", &listen]).unwrap();
    let counter = |name: &str| daemon.stats().unwrap().get(name).and_then(|v| v.as_u64()).unwrap_or_else(|| panic!("no counter {name}"));
    let (resets0, unacceptable0) = (counter("tcp_closed_reset"), counter("tcp_drop_unacceptable"));
    let addr = server.addr(HTTP);
    let fin_sent = bed
        .client
        .spawn(move || -> anyhow::Result<bool> {
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(b"GET /bytes/1073741824 HTTP/1.1\r\nHost: wan\r\nConnection: close\r\n\r\n")?;
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0;
            while got < 1 << 20 {
                let n = s.read(&mut buf)?;
                anyhow::ensure!(n > 0, "the server closed early");
                got += n;
            }
            // Everything that has arrived, read: the close below sends a FIN, not a RST.
            s.set_nonblocking(true)?;
            let drained = loop {
                match s.read(&mut buf) {
                    Ok(0) => anyhow::bail!("the server closed early"),
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break true,
                    Err(e) => return Err(e.into()),
                }
            };
            Ok(drained)
        })
        .join()
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(fin_sent);
    // The data in flight meets the closed socket a round trip later, and its RSTs come back.
    let ended = testbed::wait_for(Duration::from_secs(10), || daemon.conns().unwrap().is_empty());
    let (resets, unacceptable) = (counter("tcp_closed_reset") - resets0, counter("tcp_drop_unacceptable") - unacceptable0);
    println!("connections ended by a reset: {resets}; segments dropped as unacceptable: {unacceptable}");
    assert!(ended, "the connection outlived its client: {:?}", daemon.conns().unwrap());
    assert_eq!(resets, 1);
    assert_eq!(unacceptable, 0, "the client's RSTs at its FIN's sequence number were dropped");
    assert_eq!(bed.stats(Dir::Up).faults() + bed.stats(Dir::Down).faults(), 0);
}
