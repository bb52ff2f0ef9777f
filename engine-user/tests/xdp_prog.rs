//! The XDP program under BPF_PROG_TEST_RUN: frames in, action and bytes out, counters after.
//! Needs root (loading BPF programs), as every synx test tier does.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use engine_common::{
    cookie::{self, Key},
    counters,
    maps::{CONFIG_RST_BAD_COOKIE, XdpConfig},
};
use etherparse::{PacketBuilder, SlicedPacket, TcpOptionElement, TransportSlice};
use synx::{
    bpf::{XdpEngine, cookie_tuple},
    wire,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const SERVER4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const SERVER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5eed, 0, 0, 0, 0, 0, 1);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5eed, 0, 0, 0, 0, 0, 2);
const PORT: u16 = 80;

fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A program loaded with fixed secrets and a listener on port 80 (both families).
fn engine() -> XdpEngine {
    assert_eq!(unsafe { libc::geteuid() }, 0, "XDP program tests need root");
    let mut e = XdpEngine::load(1024, 1460).expect("load the XDP program");
    let cfg = XdpConfig {
        secrets: [Key { k0: 11, k1: 12 }, Key { k0: 21, k1: 22 }],
        ..*e.config()
    };
    e.set_config(cfg).unwrap();
    e.add_listener(SocketAddr::new(SERVER4.into(), PORT), 0).unwrap();
    e.add_listener(SocketAddr::new(SERVER6.into(), PORT), 1).unwrap();
    e
}

fn counter(e: &XdpEngine, name: &str) -> u64 {
    e.counters().unwrap().into_iter().find(|(n, _)| *n == name).map(|(_, v)| v).unwrap()
}

/// A TCP frame from the client. `opts` are TCP options; `flags` a closure on the builder.
fn frame(
    v6: bool,
    sport: u16,
    seq: u32,
    opts: &[TcpOptionElement],
    flags: impl FnOnce(etherparse::PacketBuilderStep<etherparse::TcpHeader>) -> etherparse::PacketBuilderStep<etherparse::TcpHeader>,
    payload: &[u8],
) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC);
    let ip = if v6 {
        eth.ipv6(CLIENT6.octets(), SERVER6.octets(), 64)
    } else {
        eth.ipv4(CLIENT4.octets(), SERVER4.octets(), 64)
    };
    let tcp = flags(ip.tcp(sport, PORT, seq, 64240));
    let tcp = if opts.is_empty() { tcp } else { tcp.options(opts).unwrap() };
    let mut out = Vec::new();
    tcp.write(&mut out, payload).unwrap();
    out
}

fn linux_syn_opts() -> Vec<TcpOptionElement> {
    vec![
        TcpOptionElement::MaximumSegmentSize(1460),
        TcpOptionElement::SelectiveAcknowledgementPermitted,
        TcpOptionElement::Timestamp(123456, 0),
        TcpOptionElement::Noop,
        TcpOptionElement::WindowScale(7),
    ]
}

fn client(v6: bool, port: u16) -> SocketAddr {
    if v6 { SocketAddr::new(CLIENT6.into(), port) } else { SocketAddr::new(CLIENT4.into(), port) }
}

fn server(v6: bool) -> SocketAddr {
    if v6 { SocketAddr::new(SERVER6.into(), PORT) } else { SocketAddr::new(SERVER4.into(), PORT) }
}

fn tcp_of(f: &[u8]) -> etherparse::TcpSlice<'_> {
    match SlicedPacket::from_ethernet(f).unwrap().transport.unwrap() {
        TransportSlice::Tcp(t) => t,
        _ => panic!("not TCP"),
    }
}

/// Check a SYN-ACK from XDP against the SYN it answers, field by field.
fn check_synack(e: &XdpEngine, v6: bool, syn_seq: u32, out: &[u8], with_ts: bool) {
    // Checksums: the peer's view of the frame parses and its TCP checksum verifies.
    let rx = wire::parse(out).expect("SYN-ACK parses and its TCP checksum is right");
    assert_eq!(rx.remote, server(v6));
    assert_eq!(rx.local, client(v6, 40000));
    assert_eq!(rx.link.remote_mac, SERVER_MAC, "source MAC is the server's");
    assert_eq!(rx.link.local_mac, CLIENT_MAC, "destination MAC is the client's");
    if !v6 {
        let ip = etherparse::Ipv4HeaderSlice::from_slice(&out[14..34]).unwrap();
        assert_eq!(ip.header_checksum(), ip.to_header().calc_header_checksum());
        assert_eq!(ip.ttl(), 64);
        assert!(ip.dont_fragment());
    }
    let t = tcp_of(out);
    assert!(t.syn() && t.ack() && !t.rst() && !t.fin());
    assert_eq!(t.acknowledgment_number(), syn_seq.wrapping_add(1));
    assert_eq!(t.window_size(), 65535);
    let cfg = e.config();
    let tuple = cookie_tuple(server(v6), client(v6, 40000)).unwrap();
    assert_eq!(
        cookie::check(&cfg.secrets, &tuple, syn_seq, t.sequence_number(), now_ns()).map(|c| c.mss),
        Some(1460),
        "the ISN is our cookie for this tuple and ISN"
    );
    let opts: Vec<TcpOptionElement> = t.options_iterator().map(Result::unwrap).collect();
    assert!(opts.contains(&TcpOptionElement::MaximumSegmentSize(1460)), "{opts:?}");
    if with_ts {
        assert!(opts.contains(&TcpOptionElement::SelectiveAcknowledgementPermitted), "{opts:?}");
        assert!(opts.contains(&TcpOptionElement::WindowScale(7)), "{opts:?}");
        let tsecr = opts.iter().find_map(|o| match o {
            TcpOptionElement::Timestamp(_, ecr) => Some(*ecr),
            _ => None,
        });
        assert_eq!(tsecr, Some(123456), "TSecr echoes the client's TSval");
    } else {
        assert_eq!(opts.len(), 1, "MSS only without timestamps: {opts:?}");
    }
}

#[test]
fn syn_gets_a_cookie_syn_ack_v4_and_v6() {
    for v6 in [false, true] {
        let mut e = engine();
        let syn = frame(v6, 40000, 1000, &linux_syn_opts(), |b| b.syn(), &[]);
        let (action, out, _) = e.test_run(&syn, 1).unwrap();
        assert_eq!(action, XDP_TX, "v6={v6}");
        assert_eq!(out.len(), if v6 { 14 + 40 + 40 } else { 14 + 20 + 40 });
        check_synack(&e, v6, 1000, &out, true);
        assert_eq!(counter(&e, "xdp_syn_cookie_sent"), 1);
    }
}

#[test]
fn syn_without_timestamps_gets_mss_only() {
    let mut e = engine();
    let syn = frame(false, 40000, 7, &[TcpOptionElement::MaximumSegmentSize(1460)], |b| b.syn(), &[]);
    let (action, out, _) = e.test_run(&syn, 1).unwrap();
    assert_eq!(action, XDP_TX);
    check_synack(&e, false, 7, &out, false);
}

#[test]
fn valid_cookie_ack_goes_to_userspace_and_decodes_to_the_handshake() {
    let mut e = engine();
    let syn = frame(false, 40000, 1000, &linux_syn_opts(), |b| b.syn(), &[]);
    let (_, synack, _) = e.test_run(&syn, 1).unwrap();
    let sa = tcp_of(&synack);
    let tsval = sa.options_iterator().find_map(|o| match o.unwrap() {
        TcpOptionElement::Timestamp(v, _) => Some(v),
        _ => None,
    });
    let ack = frame(
        false,
        40000,
        1001,
        &[TcpOptionElement::Noop, TcpOptionElement::Noop, TcpOptionElement::Timestamp(123460, tsval.unwrap())],
        |b| b.ack(sa.sequence_number().wrapping_add(1)),
        b"GET / HTTP/1.1\r\n\r\n",
    );
    let (action, out, _) = e.test_run(&ack, 1).unwrap();
    // No AF_XDP socket is bound in a test run: the redirect falls back to a drop, counted.
    assert_eq!(action, XDP_DROP);
    assert_eq!(out, ack, "a redirected frame is not modified");
    assert_eq!(counter(&e, "xdp_cookie_ack_valid"), 1);
    assert_eq!(counter(&e, "xdp_redirect_failed"), 1);
    // The flow's next segment (a FIN, SEG.SEQ past the ISN, so no cookie check could pass)
    // follows it to userspace even if userspace has not created the connection yet: XDP
    // claimed the tuple in FLOWS. Before that claim, this FIN got a reset.
    let fin = frame(false, 40000, 1019, &[], |b| b.ack(sa.sequence_number().wrapping_add(1)).fin(), &[]);
    let (action, out, _) = e.test_run(&fin, 1).unwrap();
    assert_eq!(action, XDP_DROP, "to userspace (no socket bound here)");
    assert_eq!(out, fin);
    assert_eq!(counter(&e, "xdp_flow_segment"), 1);
    assert_eq!(counter(&e, "xdp_rst_sent"), 0);
    // Userspace decodes the same ACK to the handshake's facts.
    let facts = e
        .cookie_checker()
        .check(server(false), client(false, 40000), 1001, sa.sequence_number().wrapping_add(1), Some((123460, tsval.unwrap())), now_ns())
        .expect("userspace accepts the cookie XDP minted");
    assert_eq!(facts.irs, 1000);
    assert_eq!(facts.iss, sa.sequence_number());
    assert_eq!(facts.mss, 1460);
    assert_eq!((facts.snd_wscale, facts.rcv_wscale), (7, 7));
    assert!(facts.has(engine_common::handshake::FACT_SACK));
    assert!(facts.has(engine_common::handshake::FACT_TS));
}

#[test]
fn bad_cookie_ack_gets_an_rfc9293_reset_or_is_dropped() {
    for v6 in [false, true] {
        let mut e = engine();
        let ack = frame(v6, 40000, 5000, &[], |b| b.ack(0xdead_beef), &[]);
        let (action, out, _) = e.test_run(&ack, 1).unwrap();
        assert_eq!(action, XDP_TX);
        let rx = wire::parse(&out).expect("RST parses, checksum right");
        assert_eq!(rx.remote, server(v6));
        let t = tcp_of(&out);
        // RFC 9293 3.10.7.1: <SEQ=SEG.ACK><CTL=RST>.
        assert!(t.rst() && !t.ack() && !t.syn());
        assert_eq!(t.sequence_number(), 0xdead_beef);
        assert_eq!(counter(&e, "xdp_cookie_ack_invalid"), 1);
        assert_eq!(counter(&e, "xdp_rst_sent"), 1);
        // Configured to stay silent: dropped.
        let cfg = XdpConfig { flags: e.config().flags & !CONFIG_RST_BAD_COOKIE, ..*e.config() };
        e.set_config(cfg).unwrap();
        let (action, _, _) = e.test_run(&ack, 1).unwrap();
        assert_eq!(action, XDP_DROP);
    }
}

#[test]
fn data_without_ack_gets_rst_ack_covering_the_segment() {
    let mut e = engine();
    let f = frame(false, 40000, 100, &[], |b| b.fin(), b"abc");
    let (action, out, _) = e.test_run(&f, 1).unwrap();
    assert_eq!(action, XDP_TX);
    let t = tcp_of(&out);
    // RFC 9293 3.10.7.1: <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>, FIN counts one.
    assert!(t.rst() && t.ack());
    assert_eq!(t.sequence_number(), 0);
    assert_eq!(t.acknowledgment_number(), 104);
}

#[test]
fn stale_syn_then_the_clients_reset_leaves_nothing() {
    // The seed's stale SYN: answered statelessly; the client's RST to it is dropped silently.
    let mut e = engine();
    let syn = frame(false, 40404, 0x1234_5678, &linux_syn_opts(), |b| b.syn(), &[]);
    let (action, synack, _) = e.test_run(&syn, 1).unwrap();
    assert_eq!(action, XDP_TX);
    let rst = frame(false, 40404, tcp_of(&synack).acknowledgment_number(), &[], |b| b.rst(), &[]);
    let (action, out, _) = e.test_run(&rst, 1).unwrap();
    assert_eq!(action, XDP_DROP);
    assert_eq!(out, rst);
    assert_eq!(counter(&e, "xdp_drop_rst_no_flow"), 1);
}

#[test]
fn known_flow_is_stamped_in_last_seen_and_sent_to_userspace() {
    let mut e = engine();
    let flows = e.flow_table();
    flows.insert(server(false), client(false, 40001), 17).unwrap();
    let seen = e.last_seen();
    assert_eq!(seen.get(17), None);
    let before = now_ns();
    // Any segment of the flow, a SYN included (the TCP core answers it, RFC 5961 4).
    for f in [
        frame(false, 40001, 9, &[], |b| b.ack(1), b"data"),
        frame(false, 40001, 9, &[], |b| b.syn(), &[]),
    ] {
        let (action, out, _) = e.test_run(&f, 1).unwrap();
        assert_eq!(action, XDP_DROP, "redirect without a bound socket falls back to drop");
        assert_eq!(out, f);
    }
    let stamp = seen.get(17).expect("LAST_SEEN stamped");
    assert!(stamp >= before && stamp <= now_ns());
    assert_eq!(counter(&e, "xdp_flow_segment"), 2);
    flows.remove(server(false), client(false, 40001)).unwrap();
}

#[test]
fn malformed_frames_are_counted_and_never_modified() {
    let mut e = engine();
    let good = frame(false, 40000, 1, &linux_syn_opts(), |b| b.syn(), &[]);
    let mut rows: Vec<(&str, Vec<u8>, u32, &str)> = Vec::new();
    rows.push(("truncated IPv4 header", good[..30].to_vec(), XDP_DROP, "xdp_drop_truncated"));
    rows.push(("truncated TCP header", good[..40].to_vec(), XDP_DROP, "xdp_drop_truncated"));
    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x43;
    rows.push(("IHL below 5", bad_ihl, XDP_DROP, "xdp_drop_bad_header"));
    let mut small_doff = good.clone();
    small_doff[14 + 20 + 12] = 0x40;
    rows.push(("data offset below 5", small_doff, XDP_DROP, "xdp_drop_bad_header"));
    let mut big_doff = good.clone();
    big_doff.truncate(14 + 20 + 24);
    big_doff[14 + 2..14 + 4].copy_from_slice(&44u16.to_be_bytes());
    rows.push(("data offset past the frame", big_doff, XDP_DROP, "xdp_drop_truncated"));
    let mut overrun = frame(false, 40000, 1, &[TcpOptionElement::MaximumSegmentSize(1460)], |b| b.syn(), &[]);
    overrun[14 + 20 + 21] = 40; // MSS option claims 40 bytes
    rows.push(("option running past the header", overrun, XDP_DROP, "xdp_drop_bad_options"));
    rows.push(("SYN+FIN", frame(false, 40000, 1, &[], |b| b.syn().fin(), &[]), XDP_DROP, "xdp_drop_bad_flags"));
    rows.push(("SYN+RST", frame(false, 40000, 1, &[], |b| b.syn().rst(), &[]), XDP_DROP, "xdp_drop_bad_flags"));
    rows.push(("zero source port", frame(false, 0, 1, &[], |b| b.syn(), &[]), XDP_DROP, "xdp_drop_bad_flags"));
    let mut mcast = good.clone();
    mcast[14 + 12] = 224;
    rows.push(("multicast source", mcast, XDP_DROP, "xdp_drop_bad_address"));
    let mut bcast_mac = good.clone();
    bcast_mac[6..12].copy_from_slice(&[0xff; 6]);
    rows.push(("broadcast source MAC", bcast_mac, XDP_DROP, "xdp_drop_bad_address"));
    let mut frag = good.clone();
    frag[14 + 6] = 0x20; // more fragments
    rows.push(("IPv4 fragment", frag, XDP_PASS, "xdp_pass_fragment"));
    for (what, f, want, name) in rows {
        let before = counter(&e, name);
        let (action, out, _) = e.test_run(&f, 1).unwrap();
        assert_eq!(action, want, "{what}");
        assert_eq!(out, f, "{what}: frame modified");
        assert_eq!(counter(&e, name), before + 1, "{what}: {name} not counted");
    }
}

#[test]
fn everything_else_passes_untouched() {
    let mut e = engine();
    let mut udp = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC)
        .ipv4(CLIENT4.octets(), SERVER4.octets(), 64)
        .udp(5000, PORT)
        .write(&mut udp, b"x")
        .unwrap();
    let mut other_port = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC)
        .ipv4(CLIENT4.octets(), SERVER4.octets(), 64)
        .tcp(40000, 22, 1, 100)
        .syn()
        .write(&mut other_port, &[])
        .unwrap();
    let mut arp = vec![0xffu8; 6];
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    for (what, f, name) in [
        ("UDP", udp, "xdp_pass_not_tcp"),
        ("TCP to another port", other_port, "xdp_pass_not_listener"),
        ("ARP", arp, "xdp_pass_not_ip"),
    ] {
        let (action, out, _) = e.test_run(&f, 1).unwrap();
        assert_eq!(action, XDP_PASS, "{what}");
        assert_eq!(out, f, "{what}");
        assert!(counter(&e, name) >= 1, "{what}");
    }
    assert_eq!(counters::NAMES.len() as u32, counters::COUNT);
}
