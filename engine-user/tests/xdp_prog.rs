//! The XDP program under BPF_PROG_TEST_RUN: frames in, action and bytes out, counters after.
//! Needs root (loading BPF programs), as every synx test tier does.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use engine_common::{
    cookie::{self, Key},
    counters,
};
use etherparse::{PacketBuilder, SlicedPacket, TcpOptionElement, TransportSlice};
use synx::{
    bpf::{XdpEngine, XdpSettings, cookie_tuple},
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
    engine_with(XdpSettings::new(1460))
}

fn engine_with(settings: XdpSettings) -> XdpEngine {
    assert_eq!(unsafe { libc::geteuid() }, 0, "XDP program tests need root");
    let e = XdpEngine::load_with(settings, 1024).expect("load the XDP program");
    configure(e)
}

/// The benchmark's object, set up as [`engine`].
fn bench_engine() -> XdpEngine {
    assert_eq!(unsafe { libc::geteuid() }, 0, "XDP program tests need root");
    configure(XdpEngine::load_bench(1024, 1460).expect("load the benchmark's XDP object"))
}

fn configure(mut e: XdpEngine) -> XdpEngine {
    e.set_secrets([Key { k0: 11, k1: 12 }, Key { k0: 21, k1: 22 }]).unwrap();
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
    let tuple = cookie_tuple(server(v6), client(v6, 40000)).unwrap();
    assert_eq!(
        cookie::check(&e.secrets(), &tuple, syn_seq, t.sequence_number(), now_ns()).map(|c| c.mss),
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
        // Loaded to stay silent: dropped.
        let mut silent = engine_with(XdpSettings { rst_bad_cookie: false, ..XdpSettings::new(1460) });
        let (action, _, _) = silent.test_run(&ack, 1).unwrap();
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
    // XDP stamps with the coarse clock: up to two ticks behind (20 ms at HZ=100), never ahead.
    assert!(stamp + 20_000_000 >= before && stamp <= now_ns(), "stamp {stamp}, before {before}");
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

/// What a SYN's options should earn in the SYN-ACK.
#[derive(Clone, Copy)]
struct Expect {
    /// MSS the cookie carries (the client's, rounded down to the cookie table). We announce our
    /// own (RFC 6691 2), whatever the client's.
    cookie_mss: u16,
    /// The client's TSval, when it sent timestamps.
    ts: Option<u32>,
    sack: bool,
    /// The client's window scale as the cookie should carry it (clamped to 14).
    wscale: Option<u8>,
}

/// Check a SYN-ACK against what its SYN's options should earn, field by field: checksums, the
/// cookie, the option list in Linux's order, and what userspace decodes from the final ACK.
fn check_synack_layout(e: &XdpEngine, v6: bool, syn_seq: u32, out: &[u8], want: &Expect, what: &str) {
    let rx = wire::parse(out).unwrap_or_else(|err| panic!("{what}: SYN-ACK does not parse: {err:?}"));
    assert_eq!(rx.remote, server(v6), "{what}");
    assert_eq!(rx.local, client(v6, 40000), "{what}");
    assert_eq!(rx.link.remote_mac, SERVER_MAC, "{what}");
    assert_eq!(rx.link.local_mac, CLIENT_MAC, "{what}");
    assert_eq!(out.len(), if v6 { 14 + 40 + 40 } else { 14 + 20 + 40 }, "{what}");
    if !v6 {
        let ip = etherparse::Ipv4HeaderSlice::from_slice(&out[14..34]).unwrap();
        assert_eq!(ip.header_checksum(), ip.to_header().calc_header_checksum(), "{what}");
        assert_eq!((ip.ttl(), ip.dont_fragment(), ip.ihl(), ip.total_len()), (64, true, 5, 60), "{what}");
    }
    let t = tcp_of(out);
    assert!(t.syn() && t.ack() && !t.rst() && !t.fin(), "{what}");
    assert_eq!(t.acknowledgment_number(), syn_seq.wrapping_add(1), "{what}");
    assert_eq!(t.window_size(), 65535, "{what}");
    let tuple = cookie_tuple(server(v6), client(v6, 40000)).unwrap();
    let checked = cookie::check(&e.secrets(), &tuple, syn_seq, t.sequence_number(), now_ns());
    assert_eq!(checked.map(|c| c.mss), Some(want.cookie_mss), "{what}: cookie");
    let opts: Vec<TcpOptionElement> = t.options_iterator().map(Result::unwrap).collect();
    let mut expected = vec![TcpOptionElement::MaximumSegmentSize(e.settings().mss)];
    let tsval = match want.ts {
        None => {
            // Without timestamps the cookie cannot carry scaling or SACK: MSS, then EOL padding.
            assert_eq!(opts, expected, "{what}");
            return;
        }
        Some(client_ts) => {
            let tsval = opts
                .iter()
                .find_map(|o| match o {
                    TcpOptionElement::Timestamp(v, _) => Some(*v),
                    _ => None,
                })
                .unwrap_or_else(|| panic!("{what}: no timestamps in {opts:?}"));
            if want.sack {
                expected.push(TcpOptionElement::SelectiveAcknowledgementPermitted);
            } else {
                expected.extend([TcpOptionElement::Noop, TcpOptionElement::Noop]);
            }
            expected.push(TcpOptionElement::Timestamp(tsval, client_ts));
            expected.push(TcpOptionElement::Noop);
            match want.wscale {
                Some(_) => expected.push(TcpOptionElement::WindowScale(7)),
                None => expected.extend([TcpOptionElement::Noop, TcpOptionElement::Noop, TcpOptionElement::Noop]),
            }
            assert_eq!(opts, expected, "{what}");
            tsval
        }
    };
    // The final ACK echoes our TSval; userspace decodes the options from it and gets the
    // clock the SYN-ACK used (TSval never above it, RFC 7323 5.3 PAWS on the client).
    let facts = e
        .cookie_checker()
        .check(server(v6), client(v6, 40000), syn_seq.wrapping_add(1), t.sequence_number().wrapping_add(1), Some((1, tsval)), now_ns())
        .unwrap_or_else(|| panic!("{what}: userspace rejects the cookie"));
    assert_eq!(facts.has(engine_common::handshake::FACT_SACK), want.sack, "{what}");
    assert_eq!(facts.has(engine_common::handshake::FACT_WSCALE), want.wscale.is_some(), "{what}");
    if let Some(ws) = want.wscale {
        assert_eq!((facts.snd_wscale, facts.rcv_wscale), (ws, 7), "{what}");
    }
    let clock = ((now_ns() / 1_000_000) as u32).wrapping_add(facts.ts_offset);
    assert!(clock.wrapping_sub(tsval) < 64 + 10_000, "{what}: TSval {tsval} vs the connection's clock {clock}");
}

#[test]
fn every_syn_option_layout_gets_the_right_syn_ack() {
    use TcpOptionElement::{
        MaximumSegmentSize as Mss, Noop, SelectiveAcknowledgementPermitted as SackOk, Timestamp as Ts,
        WindowScale as Ws,
    };
    // (what, options, expected, answered by the word-compare fast path)
    let rows: Vec<(&str, Vec<TcpOptionElement>, Expect, bool)> = vec![
        (
            "Linux: MSS, SACK-permitted, TS, NOP, WS",
            vec![Mss(1460), SackOk, Ts(123456, 0), Noop, Ws(7)],
            Expect { cookie_mss: 1460, ts: Some(123456), sack: true, wscale: Some(7) },
            true,
        ),
        (
            "Linux without SACK: MSS, NOP, NOP, TS, NOP, WS",
            vec![Mss(1400), Noop, Noop, Ts(5, 0), Noop, Ws(2)],
            Expect { cookie_mss: 1220, ts: Some(5), sack: false, wscale: Some(2) },
            true,
        ),
        (
            "Linux layout, window scale 15 (RFC 7323 2.3: used as 14)",
            vec![Mss(9000), SackOk, Ts(u32::MAX, 0), Noop, Ws(15)],
            Expect { cookie_mss: 1460, ts: Some(u32::MAX), sack: true, wscale: Some(14) },
            true,
        ),
        (
            "MSS only",
            vec![Mss(1440)],
            Expect { cookie_mss: 1440, ts: None, sack: false, wscale: None },
            true,
        ),
        (
            "no options (RFC 9293 3.7.1: MSS 536)",
            vec![],
            Expect { cookie_mss: 536, ts: None, sack: false, wscale: None },
            true,
        ),
        (
            "Windows: MSS, NOP, WS, NOP, NOP, SACK-permitted (no TS: MSS only back)",
            vec![Mss(1460), Noop, Ws(8), Noop, Noop, SackOk],
            Expect { cookie_mss: 1460, ts: None, sack: false, wscale: None },
            false,
        ),
        (
            "macOS: MSS, NOP, WS, NOP, NOP, TS, SACK-permitted, EOL",
            vec![Mss(1460), Noop, Ws(6), Noop, Noop, Ts(77, 0), SackOk, TcpOptionElement::Noop, TcpOptionElement::Noop],
            Expect { cookie_mss: 1460, ts: Some(77), sack: true, wscale: Some(6) },
            false,
        ),
        (
            "Linux's options in another order (TS first)",
            vec![Noop, Noop, Ts(9, 0), Mss(1460), SackOk, Noop, Ws(7)],
            Expect { cookie_mss: 1460, ts: Some(9), sack: true, wscale: Some(7) },
            false,
        ),
        (
            "TS without window scale, 20 bytes: MSS, SACK-permitted, TS, NOP, NOP, NOP, NOP",
            vec![Mss(1460), SackOk, Ts(3, 0), Noop, Noop, Noop, Noop],
            Expect { cookie_mss: 1460, ts: Some(3), sack: true, wscale: None },
            false,
        ),
    ];
    for v6 in [false, true] {
        for (what, opts, want, fast) in &rows {
            let what = format!("{what} (v6={v6})");
            let mut e = engine();
            let mut want = *want;
            if v6 && opts.is_empty() {
                // RFC 9293 3.7.1: 1220 for IPv6.
                want.cookie_mss = 1220;
            }
            let syn = frame(v6, 40000, 1000, opts, |b| b.syn(), &[]);
            let (action, out, _) = e.test_run(&syn, 1).unwrap();
            assert_eq!(action, XDP_TX, "{what}");
            check_synack_layout(&e, v6, 1000, &out, &want, &what);
            assert_eq!(counter(&e, "xdp_syn_generic_options"), u64::from(!fast), "{what}: path");
        }
    }
}

#[test]
fn syn_frames_of_another_size_are_resized_into_the_same_syn_ack() {
    let want = Expect { cookie_mss: 1460, ts: Some(123456), sack: true, wscale: Some(7) };
    // IPv4 options (4 NOPs): the reply carries none, so the frame shrinks.
    let syn = frame(false, 40000, 1000, &linux_syn_opts(), |b| b.syn(), &[]);
    let mut with_ip_opts = syn[..34].to_vec();
    with_ip_opts.extend_from_slice(&[1, 1, 1, 1]);
    with_ip_opts.extend_from_slice(&syn[34..]);
    with_ip_opts[14] = 0x46;
    with_ip_opts[16..18].copy_from_slice(&(20u16 + 4 + 40).to_be_bytes());
    // Ethernet padding after a short SYN: the frame is longer than its IP packet.
    let mut padded = frame(false, 40000, 1000, &[TcpOptionElement::MaximumSegmentSize(1460)], |b| b.syn(), &[]);
    padded.extend_from_slice(&[0; 6]);
    let mss_only = Expect { ts: None, sack: false, wscale: None, ..want };
    for (what, f, want) in [("IPv4 options", with_ip_opts, want), ("Ethernet padding", padded, mss_only)] {
        let mut e = engine();
        let (action, out, _) = e.test_run(&f, 1).unwrap();
        assert_eq!(action, XDP_TX, "{what}");
        check_synack_layout(&e, false, 1000, &out, &want, what);
    }
}

/// A SYN from the client to `dst`.
fn syn_to(dst: SocketAddr) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC);
    let ip = match dst.ip() {
        std::net::IpAddr::V4(d) => eth.ipv4(CLIENT4.octets(), d.octets(), 64),
        std::net::IpAddr::V6(d) => eth.ipv6(CLIENT6.octets(), d.octets(), 64),
    };
    let mut out = Vec::new();
    ip.tcp(40000, dst.port(), 1, 64240).syn().write(&mut out, &[]).unwrap();
    out
}

#[test]
fn listeners_by_port_exact_address_and_wildcard() {
    let mut e = engine();
    // engine(): exact 198.18.0.1:80 and [fd00:5eed::1]:80. Add a second exact IPv4 address on
    // port 80, and wildcards on 81.
    e.add_listener("198.18.0.9:80".parse().unwrap(), 2).unwrap();
    e.add_listener("0.0.0.0:81".parse().unwrap(), 3).unwrap();
    e.add_listener("[::]:81".parse().unwrap(), 4).unwrap();
    for (dst, served) in [
        ("198.18.0.1:80", true),
        ("198.18.0.9:80", true),
        ("198.18.0.7:80", false),
        ("198.18.0.7:81", true),
        ("198.18.0.1:82", false),
        ("[fd00:5eed::1]:80", true),
        ("[fd00:5eed::7]:80", false),
        ("[fd00:5eed::7]:81", true),
        ("[fd00:5eed::1]:82", false),
    ] {
        let f = syn_to(dst.parse().unwrap());
        let (action, out, _) = e.test_run(&f, 1).unwrap();
        if served {
            assert_eq!(action, XDP_TX, "{dst}");
            assert!(tcp_of(&out).syn() && tcp_of(&out).ack(), "{dst}");
        } else {
            assert_eq!(action, XDP_PASS, "{dst}");
            assert_eq!(out, f, "{dst}");
        }
    }
    // One exact address per port stays inline: a fresh port with one address, and another.
    let mut e = engine();
    e.add_listener("198.18.0.5:90".parse().unwrap(), 5).unwrap();
    assert_eq!(e.test_run(&syn_to("198.18.0.5:90".parse().unwrap()), 1).unwrap().0, XDP_TX);
    assert_eq!(e.test_run(&syn_to("198.18.0.1:90".parse().unwrap()), 1).unwrap().0, XDP_PASS);
}

#[test]
fn known_v6_flow_and_v6_cookie_ack() {
    let mut e = engine();
    let flows = e.flow_table();
    flows.insert(server(true), client(true, 40001), 21).unwrap();
    let f = frame(true, 40001, 9, &[], |b| b.ack(1), b"data");
    let (action, out, _) = e.test_run(&f, 1).unwrap();
    assert_eq!(action, XDP_DROP, "to userspace (no socket bound here)");
    assert_eq!(out, f);
    assert!(e.last_seen().get(21).is_some());
    flows.remove(server(true), client(true, 40001)).unwrap();
    // The same segment with the flow gone: no cookie, so an RFC 9293 3.10.7.1 reset.
    assert_eq!(e.test_run(&f, 1).unwrap().0, XDP_TX);
    // A v6 handshake: SYN-ACK, then its ACK validates and claims the tuple in FLOWS6.
    let syn = frame(true, 40000, 1000, &linux_syn_opts(), |b| b.syn(), &[]);
    let (_, synack, _) = e.test_run(&syn, 1).unwrap();
    let ack = frame(true, 40000, 1001, &[], |b| b.ack(tcp_of(&synack).sequence_number().wrapping_add(1)), &[]);
    assert_eq!(e.test_run(&ack, 1).unwrap().0, XDP_DROP);
    assert_eq!(counter(&e, "xdp_cookie_ack_valid"), 1);
    let data = frame(true, 40000, 1001, &[], |b| b.ack(tcp_of(&synack).sequence_number().wrapping_add(1)), b"x");
    let before = counter(&e, "xdp_flow_segment");
    assert_eq!(e.test_run(&data, 1).unwrap().0, XDP_DROP);
    assert_eq!(counter(&e, "xdp_flow_segment"), before + 1, "the claimed tuple's next segment follows");
}

#[test]
fn the_benchmark_program_answers_as_the_attached_one_and_so_does_the_kernel_cookie_baseline() {
    // `synx bench-xdp` times `synx_bench_syn` (restore the SYN, then the attached program's
    // code) and the kernel-helper baseline; both must really build the SYN-ACK, or the numbers
    // time an early drop.
    let syn = frame(false, 40000, 1000, &linux_syn_opts(), |b| b.syn(), &[]);
    let mut e = engine();
    let (action, attached, _) = e.test_run(&syn, 1).unwrap();
    assert_eq!(action, XDP_TX);
    // The benchmark's object, with the same secrets.
    let mut bench = bench_engine();
    for repeat in [1, 50] {
        let (action, out, _) = bench.test_run_bench(&syn, repeat).unwrap();
        assert_eq!(action, XDP_TX, "repeat {repeat}");
        // The same cookie period, so the same bytes (the TSval may move with the clock).
        check_synack(&bench, false, 1000, &out, true);
        assert_eq!(tcp_of(&out).sequence_number(), tcp_of(&attached).sequence_number());
    }
    let (action, out, _) = bench.test_run_bench_kernel(&syn, 50).unwrap();
    assert_eq!(action, XDP_TX, "the kernel-helper baseline must answer the SYN");
    let t = tcp_of(&out);
    assert!(t.syn() && t.ack(), "a SYN-ACK");
    assert_eq!(t.acknowledgment_number(), 1001);
    assert_eq!(t.options().len(), 20, "the same options as ours");
}

#[test]
fn a_backlogged_queue_leaves_new_syns_unanswered_and_nothing_else() {
    // While more than RX_BACKLOG_LIMIT frames XDP sent to a queue's engine wait for it, a
    // SYN-ACK would bring a final ACK it may have to drop; the SYN is dropped instead (the
    // client retransmits it), counted. Cookie ACKs and known flows still go through: they are
    // the engine's backlog, not new work.
    use engine_common::maps::RX_BACKLOG_LIMIT;
    let mut e = engine();
    let backlog = e.rx_backlog();
    let syn = frame(false, 40000, 1000, &linux_syn_opts(), |b| b.syn(), &[]);
    // No AF_XDP socket in a test run, so nothing is redirected: stand for a backlog by the
    // engine's side of the count (redirected 0, consumed LIMIT+1 behind it, wrapping).
    let behind = |n: u64| 0u64.wrapping_sub(n);
    backlog.set_consumed(0, behind(RX_BACKLOG_LIMIT + 1));
    assert_eq!(backlog.outstanding(0), RX_BACKLOG_LIMIT as i64 + 1);
    let (action, out, _) = e.test_run(&syn, 1).unwrap();
    assert_eq!(action, XDP_DROP);
    assert_eq!(out, syn, "dropped untouched");
    assert_eq!(counter(&e, "xdp_drop_syn_backlog"), 1);
    // At the limit, and with the engine ahead of XDP's count (lost increments): answered.
    for consumed in [behind(RX_BACKLOG_LIMIT), 5] {
        backlog.set_consumed(0, consumed);
        let (action, _, _) = e.test_run(&syn, 1).unwrap();
        assert_eq!(action, XDP_TX, "consumed {consumed}");
    }
    // Another queue's backlog does not matter to queue 0.
    backlog.set_consumed(1, behind(RX_BACKLOG_LIMIT + 1));
    let (action, out, _) = e.test_run(&syn, 1).unwrap();
    assert_eq!(action, XDP_TX);
    let cookie = tcp_of(&out).sequence_number();
    // The final ACK of that handshake, while queue 0 is backlogged: still validated.
    backlog.set_consumed(0, behind(RX_BACKLOG_LIMIT + 1));
    let ack = frame(false, 40000, 1001, &[], |b| b.ack(cookie.wrapping_add(1)), &[]);
    e.test_run(&ack, 1).unwrap();
    assert_eq!(counter(&e, "xdp_cookie_ack_valid"), 1);
    assert_eq!(counter(&e, "xdp_drop_syn_backlog"), 1);
}

#[test]
fn the_flood_generator_writes_whole_valid_syns_from_its_template() {
    let mut e = engine();
    let mut bench = bench_engine();
    let dst = std::net::SocketAddrV4::new(SERVER4, PORT);
    let base = Ipv4Addr::new(198, 19, 254, 0);
    let (frame, state) = synx::bpf::flood_template(CLIENT_MAC, SERVER_MAC, dst, base, 250, false).unwrap();
    // Live-frame mode hands the program pages holding whatever the receiver left (a SYN-ACK
    // built in place): every byte must come from the template.
    let garbage = vec![0xa5u8; frame.len()];
    for (n, input) in [(0u32, &frame), (7, &garbage), (251, &garbage), (70_000, &frame)] {
        let (action, out) = bench.flood_sample(input, engine_common::maps::FloodState { next: n, ..state }).unwrap();
        assert_eq!(action, XDP_TX, "frame {n}");
        let p = SlicedPacket::from_ethernet(&out).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else { panic!("frame {n}: not IPv4") };
        let h = ip.header().to_header();
        assert_eq!(h.header_checksum, h.calc_header_checksum(), "frame {n}: IPv4 checksum");
        assert_eq!(h.source, (u32::from(base) + 1 + n % 250).to_be_bytes(), "frame {n}");
        assert_eq!(h.destination, SERVER4.octets());
        let Some(TransportSlice::Tcp(tcp)) = p.transport else { panic!("frame {n}: not TCP") };
        assert_eq!(tcp.checksum(), tcp.to_header().calc_checksum_ipv4(&h, tcp.payload()).unwrap(), "frame {n}: TCP checksum");
        assert!(tcp.syn() && !tcp.ack());
        assert_eq!((tcp.source_port(), tcp.destination_port()), ((1024 + n % 60000) as u16, PORT));
        assert_eq!(tcp.sequence_number(), n.wrapping_mul(2_654_435_761));
        assert_eq!(tcp.to_header().options.as_slice(), &[2, 4, 0x05, 0xb4]);
        // And the synx program answers it.
        let (answer, _, _) = e.test_run(&out, 1).unwrap();
        assert_eq!(answer, XDP_TX, "frame {n}: a SYN-ACK");
    }
    let dropping = synx::bpf::flood_template(CLIENT_MAC, SERVER_MAC, dst, base, 250, true).unwrap().1;
    assert_eq!(bench.flood_sample(&frame, dropping).unwrap().0, XDP_DROP);
}
