//! The XDP program under BPF_PROG_TEST_RUN, as fixture tables (as katran's lib/testing): each
//! row is a frame in and what must come of it: the program's verdict, the frame it leaves
//! (untouched, or the reply it was turned into, checked field by field against the frame that
//! asked) and the exact change of every outcome counter. A row runs on a fresh program, loaded
//! with fixed secrets and a listener on port 80 in both families and set up as the row says,
//! or on the previous row's program when it continues a conversation. The benchmark's object
//! and the userspace side of the SYN-ACK policy have their own tests at the end.
//! Needs root (loading BPF programs), as every synx test tier does.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use engine_common::{
    cookie::{self, Key, Keys},
    counters::{self, Counter},
    handshake::{FACT_ECN, FACT_SACK, FACT_TS, FACT_WSCALE},
    maps::{self, RX_BACKLOG_CEILING, RX_BACKLOG_LIMIT},
};
use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TcpOptionElement, TransportSlice};
use synx::{
    bpf::{FlowKey, PeerRing, XdpProgram, XdpSettings, clock_adjust_ns, cookie_tuple, flow_key, kernel_clock, monotonic_ns, tai_ns},
    wire,
    xsk::split_meta,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// The router's MAC on the link to this host: where segments forwarded by others come from.
const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
/// Hosts A (this one), B and C serving the same address: the ring A -> B -> C -> A.
const HOST_A: Ipv4Addr = Ipv4Addr::new(198, 18, 255, 1);
const HOST_B: Ipv4Addr = Ipv4Addr::new(198, 18, 255, 2);
const HOST_C: Ipv4Addr = Ipv4Addr::new(198, 18, 255, 3);
const PEER_PORT: u16 = engine_common::second_chance::DEFAULT_PORT;
const SERVER4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const SERVER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5eed, 0, 0, 0, 0, 0, 1);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5eed, 0, 0, 0, 0, 0, 2);
const PORT: u16 = 80;
/// The secret of every period in most rows (rows about periods publish their own).
const SECRET: Key = Key { k0: 11, k1: 12 };
/// The MSS the programs announce.
const OUR_MSS: u16 = 1460;

// ---- The programs ----

/// A program loaded with fixed secrets and a listener on port 80 (both families).
fn engine() -> XdpProgram {
    engine_with(XdpSettings::new(OUR_MSS))
}

fn engine_with(settings: XdpSettings) -> XdpProgram {
    assert_eq!(unsafe { libc::geteuid() }, 0, "XDP program tests need root");
    configure(XdpProgram::load_with(settings, 1024).expect("load the XDP program"))
}

/// The benchmark's object, set up as [`engine`].
fn bench_engine() -> XdpProgram {
    assert_eq!(unsafe { libc::geteuid() }, 0, "XDP program tests need root");
    configure(XdpProgram::load_bench(1024, OUR_MSS).expect("load the benchmark's XDP object"))
}

/// The shared clock now, as the programs read it (ns).
fn shared_now() -> u64 {
    tai_ns().wrapping_add(clock_adjust_ns(kernel_clock().tai_offset_s, 0) as u64)
}

/// [`SECRET`] for every period published.
fn fixed_keys() -> Keys {
    Keys { newest: cookie::period(shared_now()) + 1, keys: [SECRET; cookie::KEYS] }
}

fn configure(mut e: XdpProgram) -> XdpProgram {
    e.set_keys(fixed_keys());
    e.add_listener(server(false), 0).unwrap();
    e.add_listener(server(true), 1).unwrap();
    e
}

/// Every outcome counter, summed over CPUs, in index order.
fn counters_of(e: &XdpProgram) -> Vec<u64> {
    let all = e.counters().unwrap();
    assert_eq!(all.len(), counters::COUNT as usize);
    all.into_iter().map(|(_, v)| v).collect()
}

// ---- Frames ----

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

/// A Linux client's SYN from port 40000.
fn linux_syn(v6: bool) -> Vec<u8> {
    frame(v6, 40000, 1000, &linux_syn_opts(), |b| b.syn(), &[])
}

/// A SYN without options from the client (port 40000) to `dst`.
fn syn_to(dst: &str) -> Vec<u8> {
    let dst: SocketAddr = dst.parse().unwrap();
    let eth = PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC);
    let ip = match dst.ip() {
        IpAddr::V4(d) => eth.ipv4(CLIENT4.octets(), d.octets(), 64),
        IpAddr::V6(d) => eth.ipv6(CLIENT6.octets(), d.octets(), 64),
    };
    let mut out = Vec::new();
    ip.tcp(40000, dst.port(), 1, 64240).syn().write(&mut out, &[]).unwrap();
    out
}

/// The cookie our SYN-ACK to the client's SYN (port `sport`, ISN `isn`) carries now.
fn cookie_for(v6: bool, sport: u16, isn: u32) -> u32 {
    let tuple = cookie_tuple(server(v6), client(v6, sport)).unwrap();
    cookie::make(&SECRET, &tuple, isn, shared_now(), OUR_MSS).isn
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

// ---- Fixtures ----

/// What a row's program is set up with, besides the fixed secrets and port-80 listeners.
#[derive(Clone, Default)]
struct Setup {
    /// Loaded to drop segments with no flow and a bad cookie silently (no RFC 9293 3.10.7.1
    /// reset).
    silent: bool,
    /// More listeners: address, id.
    listeners: Vec<(&'static str, u32)>,
    /// Connections userspace holds: family (v6), client port, slot.
    flows: Vec<(bool, u16, u32)>,
    /// Tuples XDP claimed for a cookie ACK userspace has not taken: family (v6), client port,
    /// and whether the claim is past its lifetime.
    claims: Vec<(bool, u16, bool)>,
    /// What RX queues' engines published as taken (RX_BACKLOG): queue, frames in all.
    consumed: Vec<(u32, u64)>,
    /// RX queues whose SYN trickle XDP has just used (see `RX_BACKLOG_LIMIT`).
    trickled: Vec<u32>,
    /// Draining (`synx drain`), and loaded to pass new SYNs to the kernel meanwhile.
    draining: bool,
    drain_pass: bool,
    /// Host A of the ring A, B, C (second chance).
    ring: bool,
    /// Loaded to refuse ECN (`--no-ecn`).
    no_ecn: bool,
    /// How long a segment with data and a bad cookie is dropped before its tuple is reset
    /// (ms): 0 here, unlike the daemon's default, so that rows see the reset at once; the hold
    /// has its own test.
    miss_hold_ms: u32,
}

/// Host A's place in the ring of A, B and C.
fn ring() -> PeerRing {
    PeerRing::new(HOST_A, &[HOST_C, HOST_B], PEER_PORT).unwrap()
}

enum Start {
    Fresh(Setup),
    /// On the previous row's program, as it was left.
    Then,
}

/// The frame the program leaves.
enum Out {
    /// The frame as it came (passed, dropped).
    Untouched,
    /// Redirected to the queue's AF_XDP socket, with the tuple's FLOWS value in front of it
    /// (`RxMeta`), and otherwise untouched (unwrapped, if another host forwarded it). No
    /// socket is bound in a test run, so the redirect falls back to a drop, counted
    /// (xdp_redirect_failed).
    ToUserspace,
    /// A frame another host forwarded, unwrapped and then dropped.
    Unwrapped,
    /// Our SYN-ACK to the SYN, what its options should earn.
    SynAck(Expect),
    /// RFC 9293 3.10.7.1: <SEQ=seq><CTL=RST>, or <SEQ=seq><ACK=ack><CTL=RST,ACK>.
    Rst { seq: u32, ack: Option<u32> },
    /// Sent on to the next host of the ring (B), to visit `hops` hosts more: wrapped as
    /// [`check_forwarded`] says.
    Forwarded { hops: u8 },
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
    /// An ECN-setup SYN-ACK (ECE set, CWR clear; RFC 3168 6.1.1), the cookie saying ECN.
    ecn: bool,
}

/// What a Linux client's SYN earns.
const LINUX: Expect = Expect { cookie_mss: 1460, ts: Some(123456), sack: true, wscale: Some(7), ecn: false };
/// What a SYN without options earns (RFC 9293 3.7.1: the default MSS).
const BARE4: Expect = Expect { cookie_mss: 536, ts: None, sack: false, wscale: None, ecn: false };
const BARE6: Expect = Expect { cookie_mss: 1220, ..BARE4 };

struct Row {
    what: String,
    start: Start,
    frame: Vec<u8>,
    verdict: u32,
    out: Out,
    /// The counters that move and by how much; every other stays. xdp_rx_packets moves by one
    /// in every row, not listed.
    counts: Vec<(Counter, u64)>,
}

fn row(what: impl Into<String>, frame: Vec<u8>, verdict: u32, out: Out, counts: &[(Counter, u64)]) -> Row {
    Row { what: what.into(), start: Start::Fresh(Setup::default()), frame, verdict, out, counts: counts.to_vec() }
}

impl Row {
    fn with(mut self, setup: Setup) -> Self {
        self.start = Start::Fresh(setup);
        self
    }

    fn then(mut self) -> Self {
        self.start = Start::Then;
        self
    }
}

fn fresh(setup: &Setup) -> XdpProgram {
    let mut e = engine_with(XdpSettings {
        rst_bad_cookie: !setup.silent,
        drain_pass: setup.drain_pass,
        ring: setup.ring.then(ring),
        ecn: !setup.no_ecn,
        cookie_miss_hold_ms: setup.miss_hold_ms,
        ..XdpSettings::new(OUR_MSS)
    });
    e.set_draining(setup.draining).unwrap();
    for (addr, id) in &setup.listeners {
        e.add_listener(addr.parse().unwrap(), *id).unwrap();
    }
    for &(v6, port, slot) in &setup.flows {
        e.flow_table().insert(server(v6), client(v6, port), slot).unwrap();
    }
    for &(v6, port, expired) in &setup.claims {
        let age = if expired { u64::from(maps::CLAIM_TTL) << 30 } else { 0 };
        e.flow_table().insert(server(v6), client(v6, port), maps::claim(monotonic_ns() - age)).unwrap();
    }
    let backlog = e.rx_backlog();
    for &(queue, consumed) in &setup.consumed {
        backlog.set_consumed(queue, consumed);
        // Nothing redirected yet: the backlog is what the engine says it has not taken.
        assert_eq!(backlog.outstanding(queue), 0i64.wrapping_sub(consumed as i64));
    }
    for &queue in &setup.trickled {
        // A minute ahead of now: the trickle stays used up through the test.
        backlog.set_trickled_ns(queue, monotonic_ns() + 60_000_000_000);
    }
    e
}

/// Run the rows in order: each on its program, every column checked.
fn run(rows: Vec<Row>) {
    let mut current: Option<XdpProgram> = None;
    for r in rows {
        let what = r.what.as_str();
        let e = match &r.start {
            Start::Fresh(setup) => current.insert(fresh(setup)),
            Start::Then => current.as_mut().unwrap_or_else(|| panic!("{what}: no row before to continue")),
        };
        let before = counters_of(e);
        let (verdict, out, _) = e.test_run(&r.frame, 1).unwrap();
        assert_eq!(verdict, r.verdict, "{what}: verdict");
        // What the program serves: the frame, or the one another host wrapped in it.
        let seen = unwrapped(&r.frame).unwrap_or_else(|| r.frame.clone());
        match r.out {
            Out::Untouched => assert_eq!(out, r.frame, "{what}: frame modified"),
            Out::Unwrapped => assert_eq!(out, seen, "{what}: the frame unwrapped"),
            Out::ToUserspace => {
                // In front of it, the tuple's FLOWS value: the connection's slot, or the claim
                // a cookie ACK just made (the engine's hint, `synx::xsk::split_meta`).
                let (frame, flow) = split_meta(&out);
                assert_eq!(frame, &seen[..], "{what}: a redirected frame is what came, unwrapped");
                let rx = wire::parse(frame).unwrap_or_else(|err| panic!("{what}: {err:?}"));
                let value = e.flow_table().get(rx.local, rx.remote);
                assert!(flow.is_some() && flow == value, "{what}: hint {flow:?}, FLOWS {value:?}");
            }
            Out::SynAck(want) => check_synack(e, &seen, &out, &want, what),
            Out::Rst { seq, ack } => check_rst(&seen, &out, seq, ack, what),
            Out::Forwarded { hops } => check_forwarded(&seen, &out, hops, what),
        }
        assert_counted(&before, &counters_of(e), &r.counts, what);
    }
}

/// The counters moved from `before` to `after` by exactly `counts` for one frame seen.
fn assert_counted(before: &[u64], after: &[u64], counts: &[(Counter, u64)], what: &str) {
    let mut want = vec![0u64; counters::COUNT as usize];
    want[counters::RX_PACKETS as usize] = 1;
    for &(c, n) in counts {
        want[c as usize] += n;
    }
    let moved = |v: Vec<u64>| -> Vec<(&str, u64)> {
        v.into_iter().enumerate().filter(|(_, n)| *n != 0).map(|(i, n)| (counters::NAMES[i], n)).collect()
    };
    let got: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    assert_eq!(moved(got), moved(want), "{what}: counters");
}

/// Where a frame came from and went: (source MAC, destination MAC, source, destination).
fn addressing(f: &[u8]) -> ([u8; 6], [u8; 6], SocketAddr, SocketAddr) {
    let p = SlicedPacket::from_ethernet(f).unwrap();
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = p.link else { panic!("not Ethernet") };
    let (src, dst) = match p.net {
        Some(NetSlice::Ipv4(ip)) => (IpAddr::from(ip.header().source_addr()), IpAddr::from(ip.header().destination_addr())),
        Some(NetSlice::Ipv6(ip)) => (IpAddr::from(ip.header().source_addr()), IpAddr::from(ip.header().destination_addr())),
        _ => panic!("not IP"),
    };
    let t = tcp_of(f);
    (eth.source(), eth.destination(), SocketAddr::new(src, t.source_port()), SocketAddr::new(dst, t.destination_port()))
}

/// A reply goes back where the segment came from: MACs, addresses and ports swapped; both
/// checksums right; our IP header (RFC 6864 4.1: ID 0 with DF; TTL 64) and no TCP options
/// beyond `opts_len` bytes.
fn check_reply(input: &[u8], out: &[u8], opts_len: usize, what: &str) {
    let (src_mac, dst_mac, src, dst) = addressing(input);
    let rx = wire::parse(out).unwrap_or_else(|err| panic!("{what}: the reply does not parse (or its TCP checksum is wrong): {err:?}"));
    assert_eq!((rx.remote, rx.local), (dst, src), "{what}: addresses and ports swapped");
    assert_eq!((rx.link.remote_mac, rx.link.local_mac), (dst_mac, src_mac), "{what}: MACs swapped");
    let tcp_len = 20 + opts_len;
    match SlicedPacket::from_ethernet(out).unwrap().net {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header();
            assert_eq!(h.header_checksum(), h.to_header().calc_header_checksum(), "{what}: IPv4 checksum");
            assert_eq!((h.ttl(), h.dont_fragment(), h.identification(), h.ihl()), (64, true, 0, 5), "{what}");
            assert_eq!(usize::from(h.total_len()), 20 + tcp_len, "{what}: IPv4 total length");
            assert_eq!(out.len(), 14 + 20 + tcp_len, "{what}: frame length");
        }
        Some(NetSlice::Ipv6(ip)) => {
            let h = ip.header();
            assert_eq!((h.hop_limit(), usize::from(h.payload_length())), (64, tcp_len), "{what}");
            assert_eq!(out.len(), 14 + 40 + tcp_len, "{what}: frame length");
        }
        _ => panic!("{what}: not IP"),
    }
    assert_eq!(tcp_of(out).header_len(), tcp_len, "{what}: TCP header length");
}

/// `inner` (a frame from the client) as host C forwards it to host A with `hops` hosts left.
fn wrapped(inner: &[u8], hops: u8) -> Vec<u8> {
    wrapped_to(inner, hops, HOST_A, engine_common::second_chance::KIND_SEGMENT)
}

fn wrapped_to(inner: &[u8], hops: u8, to: Ipv4Addr, kind: u8) -> Vec<u8> {
    let mut payload = vec![b'S', b'X', 1, kind, hops, 0];
    payload.extend_from_slice(&inner[12..]);
    let mut out = Vec::new();
    PacketBuilder::ethernet2(ROUTER_MAC, SERVER_MAC)
        .ipv4(HOST_C.octets(), to.octets(), 63)
        .udp(50000, PEER_PORT)
        .write(&mut out, &payload)
        .unwrap();
    out
}

/// The frame host A's program serves when `f` is a segment another host forwarded to it: the
/// wrapped frame with an Ethernet header to A from the router.
fn unwrapped(f: &[u8]) -> Option<Vec<u8>> {
    let p = SlicedPacket::from_ethernet(f).ok()?;
    let Some(TransportSlice::Udp(udp)) = p.transport else { return None };
    let Some(NetSlice::Ipv4(ip)) = &p.net else { return None };
    let ours = udp.destination_port() == PEER_PORT
        && ip.header().destination_addr() == HOST_A
        && udp.payload().get(..4) == Some(b"SX\x01\x01")
        && udp.payload()[4] != 0;
    if !ours {
        return None;
    }
    let mut out = f[..12].to_vec();
    out.extend_from_slice(&udp.payload()[6..]);
    Some(out)
}

/// `input` wrapped by host A for host B, to visit `hops` hosts more: back to where it came
/// from (MACs swapped), IPv4 from A to B (RFC 6864 4.1: ID 0 with DF; TTL 64; checksum
/// right), UDP to the peer port without a checksum, our header, then `input` from its IP header.
fn check_forwarded(input: &[u8], out: &[u8], hops: u8, what: &str) {
    let p = SlicedPacket::from_ethernet(out).unwrap_or_else(|e| panic!("{what}: {e:?}"));
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = p.link else { panic!("{what}: not Ethernet") };
    assert_eq!((eth.destination(), eth.source()), (input[6..12].try_into().unwrap(), input[..6].try_into().unwrap()), "{what}: MACs");
    let Some(NetSlice::Ipv4(ip)) = p.net else { panic!("{what}: not IPv4") };
    let h = ip.header();
    assert_eq!((h.source_addr(), h.destination_addr()), (HOST_A, HOST_B), "{what}");
    assert_eq!(h.header_checksum(), h.to_header().calc_header_checksum(), "{what}: IPv4 checksum");
    assert_eq!((h.ttl(), h.dont_fragment(), h.identification(), h.ihl()), (64, true, 0, 5), "{what}");
    assert_eq!(usize::from(h.total_len()), out.len() - 14, "{what}: IPv4 total length");
    let Some(TransportSlice::Udp(udp)) = p.transport else { panic!("{what}: not UDP") };
    assert_eq!((udp.destination_port(), udp.checksum(), usize::from(udp.length())), (PEER_PORT, 0, out.len() - 34), "{what}");
    assert!(udp.source_port() >= 0xc000, "{what}: source port {}", udp.source_port());
    let ethertype = &input[12..14];
    assert_eq!(&udp.payload()[..8], &[b'S', b'X', 1, 1, hops, 0, ethertype[0], ethertype[1]], "{what}: header");
    assert_eq!(&udp.payload()[8..], &input[14..], "{what}: the segment, from its IP header");
}

/// An RFC 9293 3.10.7.1 reset for `input`.
fn check_rst(input: &[u8], out: &[u8], seq: u32, ack: Option<u32>, what: &str) {
    check_reply(input, out, 0, what);
    let t = tcp_of(out);
    assert!(t.rst() && !t.syn() && !t.fin() && !t.psh(), "{what}: RST");
    assert_eq!(t.ack(), ack.is_some(), "{what}: ACK flag");
    assert_eq!((t.sequence_number(), t.acknowledgment_number()), (seq, ack.unwrap_or(0)), "{what}");
    assert_eq!(t.window_size(), 0, "{what}");
}

/// Our SYN-ACK to the SYN `input`, field by field: the reply's addressing, the cookie, the
/// option list in Linux's order, and what userspace decodes from the final ACK.
fn check_synack(e: &XdpProgram, input: &[u8], out: &[u8], want: &Expect, what: &str) {
    // 20 option bytes with timestamps; without them the MSS alone (4 bytes).
    check_reply(input, out, if want.ts.is_some() { 20 } else { 4 }, what);
    let (_, _, client, server) = addressing(input);
    let syn_seq = tcp_of(input).sequence_number();
    let t = tcp_of(out);
    assert!(t.syn() && t.ack() && !t.rst() && !t.fin() && !t.psh(), "{what}: SYN-ACK");
    // RFC 3168 6.1.1: an ECN-setup SYN-ACK has ECE and not CWR; and it is not ECT itself.
    assert_eq!((t.ece(), t.cwr()), (want.ecn, false), "{what}: ECE, CWR");
    let ip_ecn = match SlicedPacket::from_ethernet(out).unwrap().net {
        Some(NetSlice::Ipv4(ip)) => ip.header().ecn().value(),
        Some(NetSlice::Ipv6(ip)) => ip.header().traffic_class() & 3,
        _ => unreachable!("check_reply saw IP"),
    };
    assert_eq!(ip_ecn, 0, "{what}: IP ECN field");
    assert_eq!(t.acknowledgment_number(), syn_seq.wrapping_add(1), "{what}");
    assert_eq!(t.window_size(), 65535, "{what}");
    let tuple = cookie_tuple(server, client).unwrap();
    // IPv6 clients are offered 20 bytes less than IPv4 ones (RFC 8200 3: a 40-byte header);
    // the cookie keeps the smaller of the client's MSS and ours, rounded down to its table.
    let our_mss = if server.is_ipv6() { e.settings().mss - 20 } else { e.settings().mss };
    let want = Expect { cookie_mss: cookie::MSS_TABLE[cookie::mss_index(want.cookie_mss.min(our_mss)) as usize], ..*want };
    let want = &want;
    let checked = cookie::check(&e.published().keys, &tuple, syn_seq, t.sequence_number(), e.shared_now_ns());
    assert_eq!(checked.map(|c| c.mss), Some(want.cookie_mss), "{what}: the ISN is our cookie for this tuple and ISN");
    let opts: Vec<TcpOptionElement> = t.options_iterator().map(Result::unwrap).collect();
    let mut expected = vec![TcpOptionElement::MaximumSegmentSize(our_mss)];
    let tsval = want.ts.map(|client_ts| {
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
        // RFC 7323 3.2: TSecr echoes the client's TSval.
        expected.push(TcpOptionElement::Timestamp(tsval, client_ts));
        expected.push(TcpOptionElement::Noop);
        match want.wscale {
            Some(_) => expected.push(TcpOptionElement::WindowScale(7)),
            None => expected.extend([TcpOptionElement::Noop, TcpOptionElement::Noop, TcpOptionElement::Noop]),
        }
        tsval
    });
    // Without timestamps the cookie cannot carry scaling or SACK: the MSS alone.
    assert_eq!(opts, expected, "{what}: options");
    // The final ACK echoes our TSval; userspace decodes the options from it and gets the
    // clock the SYN-ACK used (TSval never above it, RFC 7323 5.3 PAWS on the client).
    let facts = e
        .cookie_checker()
        .check(server, client, syn_seq.wrapping_add(1), 0, 0, t.sequence_number().wrapping_add(1), tsval.map(|v| (1, v)), monotonic_ns())
        .unwrap_or_else(|| panic!("{what}: userspace rejects the cookie"));
    assert_eq!((facts.irs, facts.iss, facts.mss), (syn_seq, t.sequence_number(), want.cookie_mss), "{what}");
    assert_eq!(facts.has(FACT_TS), want.ts.is_some(), "{what}");
    assert_eq!(facts.has(FACT_SACK), want.sack, "{what}");
    assert_eq!(facts.has(FACT_WSCALE), want.wscale.is_some(), "{what}");
    assert_eq!(facts.has(FACT_ECN), want.ecn, "{what}: ECN in the cookie");
    if let Some(ws) = want.wscale {
        assert_eq!((facts.snd_wscale, facts.rcv_wscale), (ws, 7), "{what}");
    }
    if let Some(tsval) = tsval {
        let clock = ((monotonic_ns() / 1_000_000) as u32).wrapping_add(facts.ts_offset);
        assert!(clock.wrapping_sub(tsval) < 64 + 10_000, "{what}: TSval {tsval} vs the connection's clock {clock}");
    }
}

// ---- The tables ----

#[test]
fn syns_get_cookie_syn_acks() {
    use TcpOptionElement::{
        MaximumSegmentSize as Mss, Noop, SelectiveAcknowledgementPermitted as SackOk, Timestamp as Ts,
        WindowScale as Ws,
    };
    // (what, options, expected, answered by the word-compare fast path)
    let layouts: Vec<(&str, Vec<TcpOptionElement>, Expect, bool)> = vec![
        ("Linux: MSS, SACK-permitted, TS, NOP, WS", linux_syn_opts(), LINUX, true),
        (
            "Linux without SACK: MSS, NOP, NOP, TS, NOP, WS",
            vec![Mss(1400), Noop, Noop, Ts(5, 0), Noop, Ws(2)],
            Expect { cookie_mss: 1220, ts: Some(5), sack: false, wscale: Some(2), ecn: false },
            true,
        ),
        (
            "Linux layout, window scale 15 (RFC 7323 2.3: used as 14)",
            vec![Mss(9000), SackOk, Ts(u32::MAX, 0), Noop, Ws(15)],
            Expect { cookie_mss: 1460, ts: Some(u32::MAX), sack: true, wscale: Some(14), ecn: false },
            true,
        ),
        ("MSS only", vec![Mss(1440)], Expect { cookie_mss: 1440, ..BARE4 }, true),
        ("no options (RFC 9293 3.7.1: MSS 536, 1220 for IPv6)", vec![], BARE4, true),
        (
            "Windows: MSS, NOP, WS, NOP, NOP, SACK-permitted (no TS: MSS only back)",
            vec![Mss(1460), Noop, Ws(8), Noop, Noop, SackOk],
            Expect { cookie_mss: 1460, ..BARE4 },
            false,
        ),
        (
            "macOS: MSS, NOP, WS, NOP, NOP, TS, SACK-permitted, EOL",
            vec![Mss(1460), Noop, Ws(6), Noop, Noop, Ts(77, 0), SackOk, Noop, Noop],
            Expect { cookie_mss: 1460, ts: Some(77), sack: true, wscale: Some(6), ecn: false },
            false,
        ),
        (
            "Linux's options in another order (TS first)",
            vec![Noop, Noop, Ts(9, 0), Mss(1460), SackOk, Noop, Ws(7)],
            Expect { cookie_mss: 1460, ts: Some(9), sack: true, wscale: Some(7), ecn: false },
            false,
        ),
        (
            "TS without window scale, 20 bytes: MSS, SACK-permitted, TS, NOP, NOP, NOP, NOP",
            vec![Mss(1460), SackOk, Ts(3, 0), Noop, Noop, Noop, Noop],
            Expect { cookie_mss: 1460, ts: Some(3), sack: true, wscale: None, ecn: false },
            false,
        ),
    ];
    let mut rows = Vec::new();
    for v6 in [false, true] {
        for (what, opts, want, fast) in &layouts {
            let want = if v6 && opts.is_empty() { BARE6 } else { *want };
            let counts = [(counters::SYN_COOKIE_SENT, 1), (counters::SYN_GENERIC_OPTIONS, u64::from(!fast))];
            let syn = frame(v6, 40000, 1000, opts, |b| b.syn(), &[]);
            rows.push(row(format!("{what} (v6={v6})"), syn, XDP_TX, Out::SynAck(want), &counts));
        }
    }
    // Frames of another size are resized into the same SYN-ACK. IPv4 options (4 NOPs): the
    // reply carries none, so the frame shrinks.
    let syn = linux_syn(false);
    let mut with_ip_opts = syn[..34].to_vec();
    with_ip_opts.extend_from_slice(&[1, 1, 1, 1]);
    with_ip_opts.extend_from_slice(&syn[34..]);
    with_ip_opts[14] = 0x46;
    with_ip_opts[16..18].copy_from_slice(&(20u16 + 4 + 40).to_be_bytes());
    rows.push(row("IPv4 options", with_ip_opts, XDP_TX, Out::SynAck(LINUX), &[(counters::SYN_COOKIE_SENT, 1)]));
    // Ethernet padding after a short SYN: the frame is longer than its IP packet.
    let mut padded = frame(false, 40000, 1000, &[Mss(1460)], |b| b.syn(), &[]);
    padded.extend_from_slice(&[0; 6]);
    let mss_only = Expect { cookie_mss: 1460, ..BARE4 };
    rows.push(row("Ethernet padding", padded, XDP_TX, Out::SynAck(mss_only), &[(counters::SYN_COOKIE_SENT, 1)]));
    let no_ts = frame(false, 40000, 7, &[Mss(1460)], |b| b.syn(), &[]);
    rows.push(row("MSS 1460 alone, ISN 7", no_ts, XDP_TX, Out::SynAck(mss_only), &[(counters::SYN_COOKIE_SENT, 1)]));
    run(rows);
}

#[test]
fn ecn_setup_syns_get_ece() {
    use TcpOptionElement::{MaximumSegmentSize as Mss, Noop, Timestamp as Ts, WindowScale as Ws};
    let sent = [(counters::SYN_COOKIE_SENT, 1)];
    let off = Setup { no_ecn: true, ..Setup::default() };
    let mut rows = Vec::new();
    for v6 in [false, true] {
        let bare = if v6 { BARE6 } else { BARE4 };
        let ecn_syn = |opts: &[TcpOptionElement]| frame(v6, 40000, 1000, opts, |b| b.syn().ece().cwr(), &[]);
        rows.extend([
            // RFC 3168 6.1.1: an ECN-setup SYN (ECE and CWR) gets an ECN-setup SYN-ACK (ECE
            // only), and the cookie's TSval bits remember it for the final ACK.
            row(
                format!("ECN-setup SYN, Linux's options (v6={v6})"),
                ecn_syn(&linux_syn_opts()),
                XDP_TX,
                Out::SynAck(Expect { ecn: true, ..LINUX }),
                &sent,
            ),
            row(
                format!("ECN-setup SYN off the fast path (v6={v6})"),
                ecn_syn(&[Noop, Noop, Ts(9, 0), Mss(1460), Noop, Ws(7)]),
                XDP_TX,
                Out::SynAck(Expect { cookie_mss: 1460, ts: Some(9), sack: false, wscale: Some(7), ecn: true }),
                &[(counters::SYN_COOKIE_SENT, 1), (counters::SYN_GENERIC_OPTIONS, 1)],
            ),
            // A SYN that does not ask gets no ECE.
            row(format!("SYN without ECN (v6={v6})"), linux_syn(v6), XDP_TX, Out::SynAck(LINUX), &sent),
            // ECE alone is not ECN setup (RFC 3168 6.1.1: both flags).
            row(
                format!("SYN with ECE only (v6={v6})"),
                frame(v6, 40000, 1000, &linux_syn_opts(), |b| b.syn().ece(), &[]),
                XDP_TX,
                Out::SynAck(LINUX),
                &sent,
            ),
            // Without timestamps the cookie has nowhere to remember ECN: no ECE (as Linux).
            row(format!("ECN-setup SYN without timestamps (v6={v6})"), ecn_syn(&[]), XDP_TX, Out::SynAck(bare), &sent),
            // Loaded with --no-ecn: no ECE, whatever the SYN asks.
            row(format!("ECN-setup SYN, ECN off (v6={v6})"), ecn_syn(&linux_syn_opts()), XDP_TX, Out::SynAck(LINUX), &sent)
                .with(off.clone()),
        ]);
    }
    run(rows);
}

#[test]
fn cookie_handshakes_reach_userspace() {
    use counters::{COOKIE_ACK_VALID, FLOW_SEGMENT, REDIRECT_FAILED, RST_SENT, SYN_COOKIE_SENT};
    let ts = [TcpOptionElement::Noop, TcpOptionElement::Noop, TcpOptionElement::Timestamp(123460, 1)];
    let (c4, c6) = (cookie_for(false, 40000, 1000), cookie_for(true, 40000, 1000));
    // (family, its final ACK, the flow's next segment)
    let handshakes = [
        (
            false,
            frame(false, 40000, 1001, &ts, |b| b.ack(c4.wrapping_add(1)), b"GET / HTTP/1.1\r\n\r\n"),
            // A FIN: SEG.SEQ is past the ISN, so no cookie check could pass.
            frame(false, 40000, 1019, &[], |b| b.ack(c4.wrapping_add(1)).fin(), &[]),
        ),
        (
            true,
            frame(true, 40000, 1001, &[], |b| b.ack(c6.wrapping_add(1)), &[]),
            frame(true, 40000, 1001, &[], |b| b.ack(c6.wrapping_add(1)), b"x"),
        ),
    ];
    let mut rows = Vec::new();
    for (v6, ack, next) in handshakes {
        rows.extend([
            row(format!("SYN (v6={v6})"), linux_syn(v6), XDP_TX, Out::SynAck(LINUX), &[(SYN_COOKIE_SENT, 1)]),
            // RFC 9293 3.10.7.4 fifth check, SYN-RECEIVED held in the cookie: a valid ACK goes to
            // userspace (which decodes the same cookie, see check_synack), the tuple claimed.
            row(format!("its final ACK (v6={v6})"), ack, XDP_DROP, Out::ToUserspace, &[
                (COOKIE_ACK_VALID, 1),
                (REDIRECT_FAILED, 1),
            ])
            .then(),
            // The flow's next segment follows it to userspace before userspace has created
            // the connection: the claim in FLOWS. Without it, this segment would get a reset.
            row(format!("the flow's next segment (v6={v6})"), next, XDP_DROP, Out::ToUserspace, &[
                (FLOW_SEGMENT, 1),
                (REDIRECT_FAILED, 1),
                (RST_SENT, 0),
            ])
            .then(),
        ]);
    }
    run(rows);
}

/// The client's handshake ACK and its first data segment were lost (a burst): its third
/// full-sized segment is the first to arrive. Its SEG.SEQ - 1 is no ISN, but the cookie checks
/// for the ISN two segments back (engine_common::cookie::check_ack), so it goes to userspace,
/// which starts the connection with the hole; before, it was reset, and so was the client. So
/// does a last segment shorter than a full one after two full ones, with timestamps (what a
/// client's tail loss probe sends again first, RFC 8985 7.3): the full size is the cookie's MSS
/// less the options the segment carries. So does the 11th full segment, the new one a
/// client's tail loss probe sends past its initial window of 10 when none of them arrived
/// (RFC 8985 7.3). A segment beyond that, or too short to search behind, is still reset.
#[test]
fn a_later_first_segment_of_a_cookie_handshake_reaches_userspace() {
    use counters::{COOKIE_ACK_INVALID, COOKIE_ACK_VALID, REDIRECT_FAILED, RST_SENT, SYN_COOKIE_SENT};
    let mut rows = Vec::new();
    for v6 in [false, true] {
        let cookie = cookie_for(v6, 40000, 1000);
        let data = |seq: u32, len: usize| frame(v6, 40000, seq, &[], |b| b.ack(cookie.wrapping_add(1)), &vec![b'x'; len]);
        // NOP, NOP, timestamps: 12 bytes, as Linux sends them.
        let ts = [TcpOptionElement::Noop, TcpOptionElement::Noop, TcpOptionElement::Timestamp(123457, 0)];
        let full = u32::from(cookie::MSS_TABLE[(cookie >> 28) as usize & 3]) - 12;
        let probe = frame(v6, 40000, 1001 + 2 * full, &ts, |b| b.ack(cookie.wrapping_add(1)), &[b'x'; 1200]);
        rows.extend([
            row(format!("SYN (v6={v6})"), linux_syn(v6), XDP_TX, Out::SynAck(LINUX), &[(SYN_COOKIE_SENT, 1)]),
            row(format!("its third segment (v6={v6})"), data(1001 + 2 * 1400, 1400), XDP_DROP, Out::ToUserspace, &[
                (COOKIE_ACK_VALID, 1),
                (REDIRECT_FAILED, 1),
                (RST_SENT, 0),
            ])
            .then(),
            row(format!("SYN (v6={v6})"), linux_syn(v6), XDP_TX, Out::SynAck(LINUX), &[(SYN_COOKIE_SENT, 1)]),
            row(format!("its 11th segment, a probe's new one (v6={v6})"), data(1001 + 10 * 1400, 1400), XDP_DROP, Out::ToUserspace, &[
                (COOKIE_ACK_VALID, 1),
                (REDIRECT_FAILED, 1),
                (RST_SENT, 0),
            ])
            .then(),
            row(format!("SYN (v6={v6})"), linux_syn(v6), XDP_TX, Out::SynAck(LINUX), &[(SYN_COOKIE_SENT, 1)]),
            row(format!("its short third segment after two full ones (v6={v6})"), probe, XDP_DROP, Out::ToUserspace, &[
                (COOKIE_ACK_VALID, 1),
                (REDIRECT_FAILED, 1),
                (RST_SENT, 0),
            ])
            .then(),
        ]);
        let past = 1001 + (cookie::LATE_SEGMENTS + 1) * 1400;
        rows.push(row(format!("its 12th segment (v6={v6})"), data(past, 1400), XDP_TX, Out::Rst { seq: cookie.wrapping_add(1), ack: None }, &[
            (COOKIE_ACK_INVALID, 1),
            (RST_SENT, 1),
        ]));
        rows.push(row(format!("a short third segment (v6={v6})"), data(1001 + 2 * 100, 100), XDP_TX, Out::Rst { seq: cookie.wrapping_add(1), ack: None }, &[
            (COOKIE_ACK_INVALID, 1),
            (RST_SENT, 1),
        ]));
    }
    run(rows);
}

/// A segment with data and a bad cookie is dropped, not reset, while its tuple and ACK number
/// are new or in their hold: it may be a later segment of a handshake whose ACK and first
/// segments were lost, in a shape the cookie's search cannot see behind (here a short one
/// after a lost short one, as a client with TCP_NODELAY sends two small writes); the client's
/// RTO resends its first segment, which validates. A tuple that sends the same ACK number
/// again after the hold is reset (a connection no host holds); a pure ACK at once.
#[test]
fn a_segment_with_data_and_a_bad_cookie_is_held_before_its_tuple_is_reset() {
    use counters::{COOKIE_ACK_INVALID, COOKIE_ACK_VALID, COOKIE_MISS_HELD, REDIRECT_FAILED, RST_SENT, SYN_COOKIE_SENT};
    let hold = Duration::from_millis(300);
    for v6 in [false, true] {
        let mut e = fresh(&Setup { miss_hold_ms: hold.as_millis() as u32, ..Setup::default() });
        let mut send = |frame: &[u8], verdict: u32, counts: &[(Counter, u64)], what: &str| -> Vec<u8> {
            let before = counters_of(&e);
            let (v, out, _) = e.test_run(frame, 1).unwrap();
            assert_eq!(v, verdict, "{what} (v6={v6}): verdict");
            assert_counted(&before, &counters_of(&e), counts, &format!("{what} (v6={v6})"));
            out
        };
        let held = [(COOKIE_ACK_INVALID, 1), (COOKIE_MISS_HELD, 1)];
        let reset = [(COOKIE_ACK_INVALID, 1), (RST_SENT, 1)];

        // The handshake: the SYN's cookie, then the client's second small write (200 bytes
        // after a first of 100) arrives alone: too short to search behind, held; again (the
        // client's tail loss probe), still held.
        send(&linux_syn(v6), XDP_TX, &[(SYN_COOKIE_SENT, 1)], "SYN");
        let cookie = cookie_for(v6, 40000, 1000);
        let data = |seq: u32, len: usize| frame(v6, 40000, seq, &[], |b| b.ack(cookie.wrapping_add(1)), &vec![b'x'; len]);
        send(&data(1101, 200), XDP_DROP, &held, "its second segment");
        send(&data(1101, 200), XDP_DROP, &held, "its second segment again");
        // The RTO's resend of the first segment validates.
        send(&data(1001, 100), XDP_DROP, &[(COOKIE_ACK_VALID, 1), (REDIRECT_FAILED, 1)], "its first segment");

        // A connection no host holds: its client's data is held, and so is its FIN; a pure ACK
        // (a keepalive probe, an ACK of our data) is reset at once.
        let dead = |seq: u32, ack: u32, len: usize, fin: bool| {
            frame(v6, 40100, seq, &[], |b| if fin { b.ack(ack).fin() } else { b.ack(ack) }, &vec![b'y'; len])
        };
        send(&dead(5000, 7000, 300, false), XDP_DROP, &held, "a dead connection's data");
        send(&dead(5300, 7000, 0, true), XDP_DROP, &held, "its FIN");
        let out = send(&dead(5300, 7000, 0, false), XDP_TX, &reset, "its pure ACK");
        check_rst(&dead(5300, 7000, 0, false), &out, 7000, None, "a pure ACK's reset");
        // Another ACK number on the tuple starts the hold anew (another conversation).
        send(&dead(5000, 9000, 300, false), XDP_DROP, &held, "data with another ACK number");
        std::thread::sleep(hold + Duration::from_millis(50));
        // After the hold, the same ACK number again: reset.
        let out = send(&dead(5000, 9000, 300, false), XDP_TX, &reset, "the same data after the hold");
        check_rst(&dead(5000, 9000, 300, false), &out, 9000, None, "the reset after the hold");
        // Loaded with no hold, the first sight is reset, as Linux does with cookies.
        let mut e0 = fresh(&Setup::default());
        let (v, _, _) = e0.test_run(&dead(5000, 7000, 300, false), 1).unwrap();
        assert_eq!(v, XDP_TX, "no hold (v6={v6})");
    }
}

#[test]
fn claims_of_cookie_acks_userspace_never_took_expire() {
    use counters::{CLAIM_EXPIRED, COOKIE_ACK_VALID, FLOW_SEGMENT, REDIRECT_FAILED, SYN_COOKIE_SENT};
    let mut rows = Vec::new();
    for v6 in [false, true] {
        let claimed = Setup { claims: vec![(v6, 40000, true)], ..Setup::default() };
        let c = cookie_for(v6, 40000, 1000);
        let ack = frame(v6, 40000, 1001, &[], |b| b.ack(c.wrapping_add(1)), &[]);
        let data = frame(v6, 40000, 1001, &[], |b| b.ack(c.wrapping_add(1)), b"request");
        rows.extend([
            // The tuple's claim is past its lifetime: its SYN is answered as for no flow (as
            // for a live claim: a claim has no bit in the flow filter, so no SYN looks it up).
            row(format!("SYN on an expired claim (v6={v6})"), linux_syn(v6), XDP_TX, Out::SynAck(LINUX), &[(SYN_COOKIE_SENT, 1)])
                .with(claimed),
            // Its cookie ACK claims the tuple anew ...
            row(format!("its final ACK (v6={v6})"), ack, XDP_DROP, Out::ToUserspace, &[
                (CLAIM_EXPIRED, 1),
                (COOKIE_ACK_VALID, 1),
                (REDIRECT_FAILED, 1),
            ])
            .then(),
            // ... so the data right behind it follows it to userspace.
            row(format!("the data behind it (v6={v6})"), data.clone(), XDP_DROP, Out::ToUserspace, &[
                (FLOW_SEGMENT, 1),
                (REDIRECT_FAILED, 1),
            ])
            .then(),
            // A live claim still routes the tuple's segments to userspace; a SYN there, which
            // only a client past its handshake could send, is answered as for no flow (claims
            // have no filter bit).
            row(format!("data on a live claim (v6={v6})"), data.clone(), XDP_DROP, Out::ToUserspace, &[
                (FLOW_SEGMENT, 1),
                (REDIRECT_FAILED, 1),
            ])
            .with(Setup { claims: vec![(v6, 40000, false)], ..Setup::default() }),
            row(format!("SYN on a live claim (v6={v6})"), linux_syn(v6), XDP_TX, Out::SynAck(LINUX), &[(SYN_COOKIE_SENT, 1)])
                .then(),
        ]);
    }
    run(rows);
}

#[test]
fn a_full_flow_table_makes_room_by_sweeping_expired_claims_only() {
    // FLOWS4 of four entries: two connections and two claims; a fifth connection needs room.
    let now = monotonic_ns();
    let old = now - (u64::from(maps::CLAIM_TTL) << 30);
    let full = |third_claimed_at: u64| {
        let e = configure(XdpProgram::load_with(XdpSettings::new(OUR_MSS), 4).expect("load the XDP program"));
        let flows = e.flow_table();
        flows.insert(server(false), client(false, 1), 0).unwrap();
        flows.insert(server(false), client(false, 2), 1).unwrap();
        flows.insert(server(false), client(false, 3), maps::claim(third_claimed_at)).unwrap();
        flows.insert(server(false), client(false, 4), maps::claim(now)).unwrap();
        (e, flows)
    };
    // No claim has expired: the insert fails (the engine resets that connection).
    let (_e, flows) = full(now);
    assert!(flows.insert(server(false), client(false, 5), 2).is_err(), "a fifth entry in a map of four");
    let (_e, flows) = full(old);
    flows.insert(server(false), client(false, 5), 2).expect("room made from the expired claim");
    assert_eq!(flows.get(server(false), client(false, 5)), Some(2));
    assert_eq!(flows.get(server(false), client(false, 3)), None, "the expired claim is gone");
    // Connections and the live claim stay.
    assert_eq!(flows.get(server(false), client(false, 1)), Some(0));
    assert_eq!(flows.get(server(false), client(false, 2)), Some(1));
    assert_eq!(flows.get(server(false), client(false, 4)), Some(maps::claim(now)));
}

#[test]
fn segments_with_no_flow_and_no_cookie() {
    use counters::{COOKIE_ACK_INVALID, DROP_RST_NO_FLOW, RST_SENT, SYN_COOKIE_SENT};
    let mut rows = Vec::new();
    for v6 in [false, true] {
        let ack = frame(v6, 40000, 5000, &[], |b| b.ack(0xdead_beef), &[]);
        // RFC 9293 3.10.7.1: <SEQ=SEG.ACK><CTL=RST>.
        let rst = Out::Rst { seq: 0xdead_beef, ack: None };
        rows.push(row(format!("bad cookie ACK (v6={v6})"), ack.clone(), XDP_TX, rst, &[(COOKIE_ACK_INVALID, 1), (RST_SENT, 1)]));
        rows.push(
            row(format!("bad cookie ACK, loaded silent (v6={v6})"), ack, XDP_DROP, Out::Untouched, &[(COOKIE_ACK_INVALID, 1)])
                .with(Setup { silent: true, ..Setup::default() }),
        );
    }
    // <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>; the FIN counts one.
    let fin = frame(false, 40000, 100, &[], |b| b.fin(), b"abc");
    rows.push(row("data and FIN without ACK", fin, XDP_TX, Out::Rst { seq: 0, ack: Some(104) }, &[(RST_SENT, 1)]));
    // A stale SYN is answered statelessly; the client's RST to that SYN-ACK is dropped
    // silently (RFC 9293 3.10.7.1: a RST for no connection is discarded).
    let stale = frame(false, 40404, 0x1234_5678, &linux_syn_opts(), |b| b.syn(), &[]);
    rows.push(row("stale SYN", stale, XDP_TX, Out::SynAck(LINUX), &[(SYN_COOKIE_SENT, 1)]));
    let reset = frame(false, 40404, 0x1234_5679, &[], |b| b.rst(), &[]);
    rows.push(row("the client's RST to its SYN-ACK", reset, XDP_DROP, Out::Untouched, &[(DROP_RST_NO_FLOW, 1)]).then());
    run(rows);
}

#[test]
fn known_flows_go_to_userspace_unexamined() {
    use counters::{COOKIE_ACK_INVALID, FLOW_SEGMENT, REDIRECT_FAILED, RST_SENT};
    let to_userspace = [(FLOW_SEGMENT, 1), (REDIRECT_FAILED, 1)];
    let data = |v6| frame(v6, 40001, 9, &[], |b| b.ack(1), b"data");
    let rows = vec![
        row("data of a known flow", data(false), XDP_DROP, Out::ToUserspace, &to_userspace)
            .with(Setup { flows: vec![(false, 40001, 17)], ..Setup::default() }),
        // A SYN of a known flow too: the TCP core answers it (RFC 5961 4).
        row(
            "a SYN of a known flow",
            frame(false, 40001, 9, &[], |b| b.syn(), &[]),
            XDP_DROP,
            Out::ToUserspace,
            &to_userspace,
        )
        .then(),
        row("data of a known IPv6 flow", data(true), XDP_DROP, Out::ToUserspace, &to_userspace)
            .with(Setup { flows: vec![(true, 40001, 21)], ..Setup::default() }),
        // The same segment with no flow: no cookie either, so an RFC 9293 3.10.7.1 reset.
        row("the same IPv6 segment with no flow", data(true), XDP_TX, Out::Rst { seq: 1, ack: None }, &[
            (COOKIE_ACK_INVALID, 1),
            (RST_SENT, 1),
        ]),
    ];
    run(rows);
}

#[test]
fn keepalive_answers_that_match_exactly_are_taken_and_nothing_else() {
    use counters::{FLOW_SEGMENT, PROBE_ANSWER_TAKEN, REDIRECT_FAILED};
    use synx_tcp::{ProbeAnswer, SeqNum};
    use TcpOptionElement::{Noop, SelectiveAcknowledgement, Timestamp};
    let mut e = engine();
    let (port, slot) = (40002u16, 5u32);
    let answers = e.probe_answers();
    for v6 in [false, true] {
        e.flow_table().insert(server(v6), client(v6, port), slot).unwrap();
        let ts = [Noop, Noop, Timestamp(4242, 99)];
        let answer = |seq: u32, ack: u32, opts: &[TcpOptionElement], payload: &[u8]| frame(v6, port, seq, opts, |b| b.ack(ack), payload);
        let outcome = |e: &mut XdpProgram, f: &[u8]| {
            let before = counters_of(e);
            let (verdict, _, _) = e.test_run(f, 1).unwrap();
            let after = counters_of(e);
            let moved = |c: Counter| after[c as usize] - before[c as usize];
            (verdict, moved(PROBE_ANSWER_TAKEN), moved(FLOW_SEGMENT), moved(REDIRECT_FAILED))
        };
        // Dropped and noted, or handed to the engine (no socket bound here: a failed redirect).
        let (taken, to_engine) = ((XDP_DROP, 1, 0, 0), (XDP_DROP, 0, 1, 1));
        // The peer's idle ACK (frame's window is 64240), with Linux's timestamps layout.
        let expect = ProbeAnswer { seq: SeqNum(9), ack: SeqNum(77), window: 64240, timestamps: true };
        assert_eq!(outcome(&mut e, &answer(9, 77, &ts, &[])), to_engine, "no probe out (v6 {v6})");
        answers.arm(slot, &expect);
        let sack = [Noop, Noop, Timestamp(4242, 99), Noop, Noop, SelectiveAcknowledgement((1, 2), [None; 3])];
        let near_misses = [
            ("another SEQ", answer(10, 77, &ts, &[])),
            ("another ACK", answer(9, 78, &ts, &[])),
            ("data", answer(9, 77, &ts, b"x")),
            ("no timestamps", answer(9, 77, &[], &[])),
            ("SACK blocks", answer(9, 77, &sack, &[])),
            ("timestamps laid out otherwise", answer(9, 77, &[Timestamp(4242, 99), Noop, Noop], &[])),
            ("a FIN", frame(v6, port, 9, &ts, |b| b.ack(77).fin(), &[])),
            ("a PSH", frame(v6, port, 9, &ts, |b| b.ack(77).psh(), &[])),
        ];
        for (what, f) in &near_misses {
            assert_eq!(outcome(&mut e, f), to_engine, "{what} (v6 {v6})");
            assert_eq!(answers.take(slot), None, "{what}: nothing taken");
        }
        answers.arm(slot, &ProbeAnswer { window: 1000, ..expect });
        assert_eq!(outcome(&mut e, &answer(9, 77, &ts, &[])), to_engine, "another window (v6 {v6})");
        // The answer itself: taken once, with its TSval and when it came (XDP's coarse clock,
        // a tick behind at most); its duplicate goes to the engine.
        answers.arm(slot, &expect);
        let before = monotonic_ns();
        assert_eq!(outcome(&mut e, &answer(9, 77, &ts, &[])), taken, "the answer (v6 {v6})");
        assert_eq!(outcome(&mut e, &answer(9, 77, &ts, &[])), to_engine, "its duplicate (v6 {v6})");
        let got = answers.take(slot).expect("the answer is noted");
        assert_eq!(got.tsval, Some(4242));
        assert!(got.at_ns <= monotonic_ns() && got.at_ns + 50_000_000 >= before, "at {} against {before}", got.at_ns);
        assert_eq!(answers.take(slot), None, "taken once");
        // A connection without timestamps: its answer carries no option.
        answers.arm(slot, &ProbeAnswer { timestamps: false, ..expect });
        assert_eq!(outcome(&mut e, &answer(9, 77, &ts, &[])), to_engine, "timestamps where none were agreed (v6 {v6})");
        assert_eq!(outcome(&mut e, &answer(9, 77, &[], &[])), taken, "the bare answer (v6 {v6})");
        assert_eq!(answers.take(slot).map(|a| a.tsval), Some(None));
        e.flow_table().remove(server(v6), client(v6, port)).unwrap();
    }
    // A slot FLOWS names past the table's end: no entry to match, to the engine.
    e.flow_table().insert(server(false), client(false, port), 1 << 30).unwrap();
    let before = counters_of(&e);
    assert_eq!(e.test_run(&frame(false, port, 9, &[], |b| b.ack(77), &[]), 1).unwrap().0, XDP_DROP);
    let after = counters_of(&e);
    let moved = |c: Counter| after[c as usize] - before[c as usize];
    assert_eq!((moved(PROBE_ANSWER_TAKEN), moved(FLOW_SEGMENT), moved(REDIRECT_FAILED)), (0, 1, 1));
}

#[test]
fn syns_look_flows_up_only_where_the_flow_filter_says_one_may_be() {
    use counters::{FLOW_SEGMENT, REDIRECT_FAILED, SYN_COOKIE_SENT};
    let mut e = engine();
    let log2 = maps::flow_filter_log2(1024);
    let bit = |port: u16| match flow_key(server(false), client(false, port)) {
        FlowKey::V4(k) => maps::flow_filter_bit4(&k, log2),
        FlowKey::V6(_) => unreachable!(),
    };
    // Two client ports whose connections share a filter bit.
    let mut seen = std::collections::HashMap::new();
    let (a, b) = (1..=u16::MAX).find_map(|p| seen.insert(bit(p), p).map(|q| (q, p))).expect("two ports share a bit");
    let syn = |port: u16| frame(false, port, 9, &[], |f| f.syn(), &[]);
    let outcome = |e: &mut XdpProgram, port: u16| {
        let before = counters_of(e);
        let (verdict, _, _) = e.test_run(&syn(port), 1).unwrap();
        let after = counters_of(e);
        let moved = |c: Counter| after[c as usize] - before[c as usize];
        (verdict, moved(FLOW_SEGMENT), moved(REDIRECT_FAILED), moved(SYN_COOKIE_SENT))
    };
    let to_userspace = (XDP_DROP, 1, 1, 0);
    let answered = (XDP_TX, 0, 0, 1);
    let flows = e.flow_table();
    flows.insert(server(false), client(false, a), 1).unwrap();
    flows.insert(server(false), client(false, b), 2).unwrap();
    // RFC 5961 4: the TCP core answers a SYN of a connection it holds.
    assert_eq!(outcome(&mut e, a), to_userspace, "a SYN of a held connection");
    // One of the two goes: the bit stays for the other.
    flows.remove(server(false), client(false, b)).unwrap();
    assert_eq!(outcome(&mut e, b), answered, "a SYN of the connection that went, looked up and not found");
    assert_eq!(outcome(&mut e, a), to_userspace, "a SYN of the connection that stays");
    // The last one goes: the bit clears, and its SYN is answered without a lookup.
    flows.remove(server(false), client(false, a)).unwrap();
    assert_eq!(outcome(&mut e, a), answered, "a SYN once no connection is left");
    // A failed insert leaves no bit behind (FLOWS of 1024 entries: the 1025th fails).
    for p in 1..=1024u16 {
        flows.insert(server(false), client(false, 20000 + p), 3).unwrap();
    }
    assert!(flows.insert(server(false), client(false, a), 4).is_err(), "FLOWS is full");
    for p in 1..=1024u16 {
        flows.remove(server(false), client(false, 20000 + p)).unwrap();
    }
    assert_eq!(outcome(&mut e, a), answered, "no bit left by the insert that failed");
    // A claim has no bit: its SYN is answered without a lookup. A connection a successor
    // adopts (its entry written by the predecessor; here the claim stands in for it) is
    // counted: its SYN looks it up.
    flows.insert(server(false), client(false, a), maps::claim(monotonic_ns())).unwrap();
    assert_eq!(outcome(&mut e, a), answered, "a SYN on a claim");
    flows.adopt(server(false), client(false, a));
    assert_eq!(outcome(&mut e, a), to_userspace, "a SYN of an adopted connection");
}

#[test]
fn malformed_frames_are_counted_and_never_modified() {
    use counters::{DROP_BAD_ADDRESS, DROP_BAD_FLAGS, DROP_BAD_HEADER, DROP_BAD_OPTIONS, DROP_FRAGMENT, DROP_TRUNCATED, PASS_MALFORMED};
    let good = frame(false, 40000, 1, &linux_syn_opts(), |b| b.syn(), &[]);
    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x43;
    let mut small_doff = good.clone();
    small_doff[14 + 20 + 12] = 0x40;
    let mut big_doff = good.clone();
    big_doff.truncate(14 + 20 + 24);
    big_doff[14 + 2..14 + 4].copy_from_slice(&44u16.to_be_bytes());
    let mut overrun = frame(false, 40000, 1, &[TcpOptionElement::MaximumSegmentSize(1460)], |b| b.syn(), &[]);
    overrun[14 + 20 + 21] = 40; // the MSS option claims 40 bytes
    let mut mcast = good.clone();
    mcast[14 + 12] = 224;
    let mut bcast_mac = good.clone();
    bcast_mac[6..12].copy_from_slice(&[0xff; 6]);
    let mut fragment = good.clone();
    fragment[14 + 6] = 0x20; // more fragments
    let table: Vec<(&str, Vec<u8>, u32, Counter)> = vec![
        // No telling which port these are for: the kernel's (which drops them).
        ("truncated IPv4 header", good[..30].to_vec(), XDP_PASS, PASS_MALFORMED),
        ("IHL below 5", bad_ihl, XDP_PASS, PASS_MALFORMED),
        ("truncated TCP header", good[..40].to_vec(), XDP_DROP, DROP_TRUNCATED),
        ("data offset below 5", small_doff, XDP_DROP, DROP_BAD_HEADER),
        ("data offset past the frame", big_doff, XDP_DROP, DROP_TRUNCATED),
        ("option running past the header", overrun, XDP_DROP, DROP_BAD_OPTIONS),
        ("SYN+FIN", frame(false, 40000, 1, &[], |b| b.syn().fin(), &[]), XDP_DROP, DROP_BAD_FLAGS),
        ("SYN+RST", frame(false, 40000, 1, &[], |b| b.syn().rst(), &[]), XDP_DROP, DROP_BAD_FLAGS),
        ("zero source port", frame(false, 0, 1, &[], |b| b.syn(), &[]), XDP_DROP, DROP_BAD_FLAGS),
        ("multicast source", mcast, XDP_DROP, DROP_BAD_ADDRESS),
        ("broadcast source MAC", bcast_mac, XDP_DROP, DROP_BAD_ADDRESS),
        ("IPv4 first fragment", fragment, XDP_DROP, DROP_FRAGMENT),
    ];
    // The option walk's drop comes after it counted the generic walk.
    run(table
        .into_iter()
        .map(|(what, f, verdict, c)| {
            let walked = u64::from(c == DROP_BAD_OPTIONS);
            row(what, f, verdict, Out::Untouched, &[(c, 1), (counters::SYN_GENERIC_OPTIONS, walked)])
        })
        .collect());
}

/// `f` (the client's frame to port 80) sent to `port` instead.
fn to_port(f: &[u8], port: u16) -> Vec<u8> {
    let mut f = f.to_vec();
    let tcp = if f[12..14] == [0x86, 0xdd] { 14 + 40 } else { 14 + 20 };
    f[tcp + 2..tcp + 4].copy_from_slice(&port.to_be_bytes());
    f
}

/// The IPv6 frame `f` with an extension header of type `kind` and `body` (8 bytes or more,
/// its next-header byte filled in) between the IPv6 header and what followed it.
fn with_extension(f: &[u8], kind: u8, body: &[u8]) -> Vec<u8> {
    let mut ext = body.to_vec();
    ext[0] = f[14 + 6];
    let mut out = f[..14 + 40].to_vec();
    out[14 + 6] = kind;
    let payload = u16::from_be_bytes([out[14 + 4], out[14 + 5]]) + ext.len() as u16;
    out[14 + 4..14 + 6].copy_from_slice(&payload.to_be_bytes());
    out.extend_from_slice(&ext);
    out.extend_from_slice(&f[14 + 40..]);
    out
}

#[test]
fn malformed_tcp_to_other_ports_passes_and_fragments_of_flows_never_reach_the_kernel() {
    use counters::{DROP_FRAGMENT, DROP_IPV6_EXTENSION, PASS_FRAGMENT, PASS_NOT_LISTENER, PASS_NOT_TCP};
    // The kernel serves port 81; malformed TCP to it is its business, untouched.
    let good = frame(false, 40000, 1, &linux_syn_opts(), |b| b.syn(), &[]);
    let mut small_doff = good.clone();
    small_doff[14 + 20 + 12] = 0x40;
    let mut big_doff = good.clone();
    big_doff.truncate(14 + 20 + 24);
    big_doff[14 + 2..14 + 4].copy_from_slice(&44u16.to_be_bytes());
    let mut rows: Vec<Row> = [
        ("truncated TCP header", good[..40].to_vec()),
        ("data offset below 5", small_doff),
        ("data offset past the frame", big_doff),
        ("SYN+FIN", frame(false, 40000, 1, &[], |b| b.syn().fin(), &[])),
    ]
    .into_iter()
    .map(|(what, f)| row(format!("{what}, to port 81"), to_port(&f, 81), XDP_PASS, Out::Untouched, &[(PASS_NOT_LISTENER, 1)]))
    .collect();

    // Segments of a connection userspace holds, in fragments or behind IPv6 extension headers:
    // the kernel holds no connection for them and would reset the peer.
    let flows = Setup { flows: vec![(false, 40001, 3), (true, 40001, 4)], ..Setup::default() };
    let data = |v6| frame(v6, 40001, 9, &[], |b| b.ack(1), b"data in pieces");
    let mut first = data(false);
    first[14 + 6] = 0x20; // more fragments, offset 0
    let mut later = data(false);
    later[14 + 6..14 + 8].copy_from_slice(&(0x2000u16 | 3).to_be_bytes()); // offset 24 bytes
    let dest_opts = [0u8, 0, 1, 4, 0, 0, 0, 0]; // PadN over the 6 bytes
    let hop_by_hop = [0u8, 0, 1, 4, 0, 0, 0, 0];
    let frag6 = |offset: u16, more: bool| {
        let w = (offset << 3) | u16::from(more);
        let mut b = [0u8; 8];
        b[2..4].copy_from_slice(&w.to_be_bytes());
        b[4..8].copy_from_slice(&0x5eed_u32.to_be_bytes());
        b
    };
    let mut udp6 = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC)
        .ipv6(CLIENT6.octets(), SERVER6.octets(), 64)
        .udp(5000, PORT)
        .write(&mut udp6, b"x")
        .unwrap();
    rows.extend([
        row("IPv4 first fragment of a flow", first.clone(), XDP_DROP, Out::Untouched, &[(DROP_FRAGMENT, 1)]).with(flows.clone()),
        // No ports: passed, and without the first fragment never reassembled.
        row("IPv4 later fragment", later, XDP_PASS, Out::Untouched, &[(PASS_FRAGMENT, 1)]).then(),
        row("IPv6 destination options, a flow", with_extension(&data(true), 60, &dest_opts), XDP_DROP, Out::Untouched, &[
            (DROP_IPV6_EXTENSION, 1),
        ])
        .then(),
        row(
            "IPv6 hop-by-hop then destination options, a flow",
            with_extension(&with_extension(&data(true), 60, &dest_opts), 0, &hop_by_hop),
            XDP_DROP,
            Out::Untouched,
            &[(DROP_IPV6_EXTENSION, 1)],
        )
        .then(),
        row("IPv6 first fragment of a flow", with_extension(&data(true), 44, &frag6(0, true)), XDP_DROP, Out::Untouched, &[
            (DROP_FRAGMENT, 1),
        ])
        .then(),
        row("IPv6 later fragment", with_extension(&data(true), 44, &frag6(3, true)), XDP_PASS, Out::Untouched, &[
            (PASS_FRAGMENT, 1),
        ])
        .then(),
        // To a port nobody here serves: the kernel's.
        row("IPv4 first fragment to port 81", to_port(&first, 81), XDP_PASS, Out::Untouched, &[(PASS_NOT_LISTENER, 1)])
            .then(),
        row(
            "IPv6 destination options to port 81",
            with_extension(&to_port(&data(true), 81), 60, &dest_opts),
            XDP_PASS,
            Out::Untouched,
            &[(PASS_NOT_LISTENER, 1)],
        )
        .then(),
        row("IPv6 UDP behind hop-by-hop", with_extension(&udp6, 0, &hop_by_hop), XDP_PASS, Out::Untouched, &[
            (PASS_NOT_TCP, 1),
        ])
        .then(),
    ]);
    run(rows);
}

#[test]
fn everything_else_passes_untouched() {
    let mut udp = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC)
        .ipv4(CLIENT4.octets(), SERVER4.octets(), 64)
        .udp(5000, PORT)
        .write(&mut udp, b"x")
        .unwrap();
    let mut arp = vec![0xffu8; 6];
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    run(vec![
        row("UDP", udp, XDP_PASS, Out::Untouched, &[(counters::PASS_NOT_TCP, 1)]),
        row("TCP to another port", syn_to("198.18.0.1:22"), XDP_PASS, Out::Untouched, &[(counters::PASS_NOT_LISTENER, 1)]),
        row("ARP", arp, XDP_PASS, Out::Untouched, &[(counters::PASS_NOT_IP, 1)]),
    ]);
}

#[test]
fn listeners_by_port_exact_address_and_wildcard() {
    // Besides 198.18.0.1:80 and [fd00:5eed::1]:80: a second exact IPv4 address on port 80,
    // and wildcards on 81.
    let more = Setup {
        listeners: vec![("198.18.0.9:80", 2), ("0.0.0.0:81", 3), ("[::]:81", 4)],
        ..Setup::default()
    };
    let mut rows = Vec::new();
    for (i, (dst, served)) in [
        ("198.18.0.1:80", true),
        ("198.18.0.9:80", true),
        ("198.18.0.7:80", false),
        ("198.18.0.7:81", true),
        ("198.18.0.1:82", false),
        ("[fd00:5eed::1]:80", true),
        ("[fd00:5eed::7]:80", false),
        ("[fd00:5eed::7]:81", true),
        ("[fd00:5eed::1]:82", false),
    ]
    .into_iter()
    .enumerate()
    {
        let r = if served {
            let bare = if dst.starts_with('[') { BARE6 } else { BARE4 };
            row(dst, syn_to(dst), XDP_TX, Out::SynAck(bare), &[(counters::SYN_COOKIE_SENT, 1)])
        } else {
            row(dst, syn_to(dst), XDP_PASS, Out::Untouched, &[(counters::PASS_NOT_LISTENER, 1)])
        };
        rows.push(if i == 0 { r.with(more.clone()) } else { r.then() });
    }
    // One exact address per port stays inline: a fresh port with one address, and another.
    let one = Setup { listeners: vec![("198.18.0.5:90", 5)], ..Setup::default() };
    rows.push(row("198.18.0.5:90", syn_to("198.18.0.5:90"), XDP_TX, Out::SynAck(BARE4), &[(counters::SYN_COOKIE_SENT, 1)]).with(one));
    rows.push(row("198.18.0.1:90", syn_to("198.18.0.1:90"), XDP_PASS, Out::Untouched, &[(counters::PASS_NOT_LISTENER, 1)]).then());
    run(rows);
}

#[test]
fn a_backlogged_queue_answers_new_syns_at_a_trickle_and_nothing_else_changes() {
    // While more than RX_BACKLOG_LIMIT frames XDP sent to a queue's engine wait for it, a
    // SYN-ACK would bring a final ACK it may have to drop; the SYN is dropped instead (the
    // client retransmits it), counted, but for one SYN per SYN_TRICKLE_NS, answered so that
    // an engine kept behind does not refuse every new connection for as long as it lasts; over
    // RX_BACKLOG_CEILING (the ring may be full), none. Cookie ACKs and known flows still go
    // through: they are the engine's backlog, not new work. No AF_XDP socket in a test run, so
    // nothing is redirected: a backlog is the engine's side of the count (redirected 0,
    // consumed N behind it, wrapping). Test runs are on RX queue 0.
    use counters::{COOKIE_ACK_VALID, DROP_SYN_BACKLOG, REDIRECT_FAILED, SYN_COOKIE_SENT};
    let behind = |n: u64| 0u64.wrapping_sub(n);
    let queue0 = |consumed: u64| Setup { consumed: vec![(0, consumed)], ..Setup::default() };
    let held = |consumed: u64| Setup { consumed: vec![(0, consumed)], trickled: vec![0], ..Setup::default() };
    let answered = [(SYN_COOKIE_SENT, 1)];
    let cookie = cookie_for(false, 40000, 1000);
    let ack = frame(false, 40000, 1001, &[], |b| b.ack(cookie.wrapping_add(1)), &[]);
    run(vec![
        row("SYN, queue 0 over the limit, trickle used", linux_syn(false), XDP_DROP, Out::Untouched, &[(DROP_SYN_BACKLOG, 1)])
            .with(held(behind(RX_BACKLOG_LIMIT + 1))),
        row("SYN, queue 0 over the limit, trickle due", linux_syn(false), XDP_TX, Out::SynAck(LINUX), &answered)
            .with(queue0(behind(RX_BACKLOG_LIMIT + 1))),
        row("SYN, queue 0 over the ceiling, trickle due", linux_syn(false), XDP_DROP, Out::Untouched, &[(DROP_SYN_BACKLOG, 1)])
            .with(queue0(behind(RX_BACKLOG_CEILING + 1))),
        row("SYN, queue 0's engine gone", linux_syn(false), XDP_DROP, Out::Untouched, &[(DROP_SYN_BACKLOG, 1)])
            .with(queue0(behind(1 << 62))),
        row("SYN, queue 0 at the limit, trickle used", linux_syn(false), XDP_TX, Out::SynAck(LINUX), &answered)
            .with(held(behind(RX_BACKLOG_LIMIT))),
        // The engine ahead of XDP's count (lost increments): no backlog.
        row("SYN, queue 0's engine ahead", linux_syn(false), XDP_TX, Out::SynAck(LINUX), &answered).with(queue0(5)),
        row("SYN, only queue 1 over the limit", linux_syn(false), XDP_TX, Out::SynAck(LINUX), &answered)
            .with(Setup { consumed: vec![(1, behind(RX_BACKLOG_LIMIT + 1))], trickled: vec![1], ..Setup::default() }),
        row("the final ACK, queue 0 over the limit", ack, XDP_DROP, Out::ToUserspace, &[
            (COOKIE_ACK_VALID, 1),
            (REDIRECT_FAILED, 1),
        ])
        .with(held(behind(RX_BACKLOG_LIMIT + 1))),
    ]);
}

// ---- The benchmark's object, and userspace's side of the SYN-ACK policy ----

#[test]
fn the_benchmark_program_answers_as_the_attached_one_and_so_does_the_kernel_cookie_baseline() {
    // `synx bench-xdp` times `synx_bench_syn` (restore the SYN, then the attached program's
    // code) and the kernel-helper baseline; both must really build the SYN-ACK, or the numbers
    // time an early drop.
    let syn = linux_syn(false);
    let mut e = engine();
    let (action, attached, _) = e.test_run(&syn, 1).unwrap();
    assert_eq!(action, XDP_TX);
    // The benchmark's object, with the same secrets.
    let mut bench = bench_engine();
    for repeat in [1, 50] {
        let (action, out, _) = bench.test_run_bench(&syn, repeat).unwrap();
        assert_eq!(action, XDP_TX, "repeat {repeat}");
        // The same cookie period, so the same bytes (the TSval may move with the clock).
        check_synack(&bench, &syn, &out, &LINUX, &format!("synx_bench_syn, repeat {repeat}"));
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

/// SYNs' options as clients send them, for the tests of the SYN-ACK policy: (name, options,
/// ECN setup).
fn syn_offer_rows() -> Vec<(&'static str, Vec<TcpOptionElement>, bool)> {
    use TcpOptionElement::{MaximumSegmentSize as Mss, Noop, SelectiveAcknowledgementPermitted as SackOk, Timestamp as Ts, WindowScale as Ws};
    vec![
        ("Linux", linux_syn_opts(), false),
        ("Linux, ECN setup", linux_syn_opts(), true),
        ("window scale 15", vec![Mss(1400), SackOk, Ts(5, 0), Noop, Ws(15)], false),
        ("MSS only", vec![Mss(1440)], false),
        ("no options", vec![], false),
        ("macOS order", vec![Mss(1460), Noop, Ws(6), Noop, Noop, Ts(77, 0), SackOk, Noop, Noop], false),
    ]
}

/// The SYN-ACK in `out` is `want` but for its TSval's clock (the TSval's option bits and the
/// TSecr are the same): its TSval, if any.
fn assert_same_synack(out: &[u8], want: &engine_common::synack::SynAck, ecn: bool, what: &str) -> Option<u32> {
    use TcpOptionElement::{MaximumSegmentSize as Mss, SelectiveAcknowledgementPermitted as SackOk, Timestamp as Ts, WindowScale as Ws};
    let t = tcp_of(out);
    assert_eq!((t.sequence_number(), t.acknowledgment_number(), t.window_size()), (want.seq, want.ack, want.window), "{what}");
    // The flags byte: SYN, ACK and ECE when both agree to ECN.
    assert_eq!(out[out.len() - t.slice().len() + 13], want.flags(), "{what}: flags");
    assert_eq!(want.ece, ecn, "{what}");
    let got: Vec<TcpOptionElement> = t.options_iterator().map(Result::unwrap).collect();
    assert!(got.contains(&Mss(want.mss)), "{what}: {got:?}");
    assert_eq!(got.iter().find_map(|o| if let Ws(w) = o { Some(*w) } else { None }), want.wscale, "{what}");
    assert_eq!(got.contains(&SackOk), want.sack, "{what}");
    let ts = got.iter().find_map(|o| if let Ts(v, ecr) = o { Some((*v, *ecr)) } else { None });
    assert_eq!(ts.map(|(v, ecr)| (v & 63, ecr)), want.ts.map(|(v, ecr)| (v & 63, ecr)), "{what}");
    ts.map(|(v, _)| v)
}

#[test]
fn userspace_answers_a_syn_as_the_xdp_program_does() {
    // One SYN-ACK policy (engine_common::synack) for both senders: userspace answers a SYN on a
    // tuple it holds in TIME-WAIT (RFC 6191) with what XDP would have sent, so the final ACK
    // decodes the same wherever it lands.
    use engine_common::synack::{Syn, default_mss};
    use TcpOptionElement::{MaximumSegmentSize as Mss, SelectiveAcknowledgementPermitted as SackOk, Timestamp as Ts, WindowScale as Ws};
    let rows = syn_offer_rows();
    for v6 in [false, true] {
        for (what, opts, ecn) in &rows {
            let what = format!("{what} (v6={v6})");
            let mut e = engine();
            let syn = frame(v6, 40000, 1000, opts, |b| if *ecn { b.syn().ece().cwr() } else { b.syn() }, &[]);
            // XDP mints on a clock up to two ticks behind; retry in the rare case a cookie
            // period boundary falls between the two clocks.
            let (out, theirs) = (0..3)
                .find_map(|_| {
                    let before = e.shared_now_ns();
                    let (action, out, _) = e.test_run(&syn, 1).unwrap();
                    assert_eq!(action, XDP_TX, "{what}");
                    let after = e.shared_now_ns();
                    let same = cookie::period(before.saturating_sub(20_000_000)) == cookie::period(after);
                    let offer = Syn {
                        isn: 1000,
                        mss: opts.iter().find_map(|o| if let Mss(m) = o { Some(*m) } else { None }).unwrap_or(default_mss(v6)),
                        wscale: opts.iter().find_map(|o| if let Ws(w) = o { Some(*w) } else { None }),
                        sack: opts.contains(&SackOk),
                        ts: opts.iter().find_map(|o| if let Ts(v, _) = o { Some(*v) } else { None }),
                        ecn: *ecn,
                    };
                    let answer = e.cookie_checker().answer(server(v6), client(v6, 40000), &offer).unwrap();
                    same.then_some((out, answer))
                })
                .expect("three tries within one cookie period");
            assert_same_synack(&out, &theirs, *ecn, &what);
        }
    }
}

/// Every SYN-ACK XDP sends with synx's cookie is recorded, within the per-CPU budget, for
/// userspace to retransmit while the final ACK has not come (RFC 9293 3.10.7.2; the module doc
/// of `synx::engine::synack_retry`): what it builds from the record is the SYN-ACK XDP sent,
/// the same cookie and options, only the TSval's clock later.
#[test]
fn syn_acks_are_recorded_and_userspace_resends_the_same_one() {
    use TcpOptionElement::WindowScale as Ws;
    use engine_common::maps::SynRecord;
    use synx::engine::synack_retry::{Record, Recorded};
    let rows = syn_offer_rows();
    for v6 in [false, true] {
        // One program for the family's rows, each a tuple of its own.
        let mut e = engine_with(XdpSettings { syn_record_per_sec: 100, ..XdpSettings::new(OUR_MSS) });
        let mut ring = e.take_syn_records().expect("the record ring");
        for (i, (what, opts, ecn)) in rows.iter().enumerate() {
            let what = format!("{what} (v6={v6})");
            let port = 40000 + i as u16;
            let syn = frame(v6, port, 1000 + i as u32, opts, |b| if *ecn { b.syn().ece().cwr() } else { b.syn() }, &[]);
            let before = counters_of(&e);
            let (action, out, _) = e.test_run(&syn, 1).unwrap();
            assert_eq!(action, XDP_TX, "{what}");
            // Not in Linux's layout: the option walk.
            let walked = u64::from(opts.len() > 1 && !matches!(opts.last(), Some(Ws(_))));
            let counts = [(counters::SYN_COOKIE_SENT, 1), (counters::SYN_RECORDED, 1), (counters::SYN_GENERIC_OPTIONS, walked)];
            assert_counted(&before, &counters_of(&e), &counts, &what);
            let item = ring.next().expect("a record");
            assert_eq!(item.len(), std::mem::size_of::<SynRecord>(), "{what}");
            let r = Recorded::from_record(&bytemuck::pod_read_unaligned(&item[..]));
            drop(item);
            assert_eq!((r.local, r.remote), (server(v6), client(v6, port)), "{what}");
            assert_eq!((r.link.local_mac, r.link.remote_mac), (SERVER_MAC, CLIENT_MAC), "{what}");
            assert_eq!(r.syn.isn, 1000 + i as u32, "{what}");
            let again = e.cookie_checker().resend(r.local, r.remote, &r.syn, r.mint_ns).expect("the cookie's secret is published");
            let sent = assert_same_synack(&out, &again, *ecn, &what);
            // The TSval's clock only moves forward (RFC 7323 5.4).
            if let (Some(sent), Some((resent, _))) = (sent, again.ts) {
                assert!(resent.wrapping_sub(sent) as i32 >= 0, "{what}: TSval {sent} then {resent}");
            }
        }
        assert!(ring.next().is_none(), "one record per SYN-ACK at most");
        // An RST for no flow goes to the retransmitter too (it may end one of those
        // handshakes), after the records before it.
        let rst = frame(v6, 40000, 1001, &[], |b| b.rst(), &[]);
        let before = counters_of(&e);
        assert_eq!(e.test_run(&rst, 1).unwrap().0, XDP_DROP);
        assert_counted(&before, &counters_of(&e), &[(counters::DROP_RST_NO_FLOW, 1), (counters::RST_RECORDED, 1)], "RST");
        let item = ring.next().expect("the RST's record");
        let want = Record::Rst { local: server(v6), remote: client(v6, 40000), seq: 1001 };
        assert_eq!(Record::read(&bytemuck::pod_read_unaligned(&item[..])), want);
    }
    // Over the budget (10 a second per CPU: 2 per 134 ms window of the coarse clock), a SYN
    // gets its cookie only, counted. Tried again should a window begin during the three.
    let window = |ns: u64| ns >> maps::SYN_RECORD_WINDOW_SHIFT;
    let ok = (0..3).any(|_| {
        let mut e = engine_with(XdpSettings { syn_record_per_sec: 10, ..XdpSettings::new(OUR_MSS) });
        let mut ring = e.take_syn_records().expect("the record ring");
        // The coarse clock may lag the precise one by a tick or two.
        let start = monotonic_ns().saturating_sub(10_000_000);
        let mut recorded = Vec::new();
        for port in 40000..40003 {
            let before = counters_of(&e);
            assert_eq!(e.test_run(&frame(false, port, 1000, &linux_syn_opts(), |b| b.syn(), &[]), 1).unwrap().0, XDP_TX);
            let after = counters_of(&e);
            let got = after[counters::SYN_RECORDED as usize] - before[counters::SYN_RECORDED as usize];
            let over = after[counters::SYN_UNRECORDED as usize] - before[counters::SYN_UNRECORDED as usize];
            assert_eq!(got + over, 1, "port {port}: recorded or counted as not");
            recorded.push(got == 1);
        }
        let ports: Vec<u16> = std::iter::from_fn(|| ring.next().map(|i| Recorded::from_record(&bytemuck::pod_read_unaligned(&i[..])).remote.port())).collect();
        let want: Vec<u16> = (40000..40003).zip(&recorded).filter(|(_, r)| **r).map(|(p, _)| p).collect();
        assert_eq!(ports, want, "the ring holds what was counted as recorded");
        if window(start) != window(monotonic_ns()) {
            return false;
        }
        assert_eq!(recorded, [true, true, false]);
        true
    });
    assert!(ok, "three tries each crossed a record window");
    // The daemon's default here: nothing recorded, no ring read.
    let mut e = engine();
    let before = counters_of(&e);
    assert_eq!(e.test_run(&linux_syn(false), 1).unwrap().0, XDP_TX);
    assert_counted(&before, &counters_of(&e), &[(counters::SYN_COOKIE_SENT, 1)], "recording off");
}

#[test]
fn a_removed_listeners_connections_still_reach_userspace_and_its_syns_the_kernel() {
    use counters::{FLOW_SEGMENT, PASS_NOT_LISTENER, REDIRECT_FAILED, SYN_COOKIE_SENT};
    let mut e = engine();
    e.flow_table().insert(server(false), client(false, 40001), 17).unwrap();
    // 198.18.0.1:80 removed; [fd00:5eed::1]:80 stays.
    e.remove_listener(server(false), &[server(true)]).unwrap();
    let data = |sport| frame(false, sport, 9, &[], |b| b.ack(1), b"data");
    for (what, f, verdict, moved) in [
        ("its connection's data", data(40001), XDP_DROP, vec![(FLOW_SEGMENT, 1), (REDIRECT_FAILED, 1)]),
        ("a new SYN", frame(false, 40002, 9, &[], |b| b.syn(), &[]), XDP_PASS, vec![(PASS_NOT_LISTENER, 1)]),
        // No flow and no listener: the kernel's, which answers as it does for a closed port.
        ("data of no connection", data(40003), XDP_PASS, vec![(PASS_NOT_LISTENER, 1)]),
        ("a SYN to the listener that stays", linux_syn(true), XDP_TX, vec![(SYN_COOKIE_SENT, 1)]),
    ] {
        let before = counters_of(&e);
        let (got, _, _) = e.test_run(&f, 1).unwrap();
        assert_eq!(got, verdict, "{what}: verdict");
        let after = counters_of(&e);
        let mut want = vec![0u64; counters::COUNT as usize];
        want[counters::RX_PACKETS as usize] = 1;
        for (c, n) in moved {
            want[c as usize] += n;
        }
        let got: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        assert_eq!(got, want, "{what}: counters");
    }
}

// ---- Draining, second chance, the secrets of each period ----

#[test]
fn a_draining_host_answers_no_new_syn_and_still_takes_cookie_acks() {
    use counters::{COOKIE_ACK_VALID, DROP_SYN_DRAINING, FLOW_SEGMENT, PASS_SYN_DRAINING, REDIRECT_FAILED};
    let draining = Setup { draining: true, flows: vec![(false, 40001, 3)], ..Setup::default() };
    let cookie = cookie_for(false, 40000, 1000);
    let ack = frame(false, 40000, 1001, &[], |b| b.ack(cookie.wrapping_add(1)), &[]);
    let data = frame(false, 40001, 9, &[], |b| b.ack(1), b"data");
    run(vec![
        // RFC 9293 3.10.7.2 lets LISTEN ignore a SYN it will not serve: the client retries,
        // by then towards another host.
        row("SYN while draining", linux_syn(false), XDP_DROP, Out::Untouched, &[(DROP_SYN_DRAINING, 1)]).with(draining.clone()),
        row("IPv6 SYN while draining", linux_syn(true), XDP_DROP, Out::Untouched, &[(DROP_SYN_DRAINING, 1)]).then(),
        // A handshake begun before the drain completes.
        row("the final ACK of a handshake begun before", ack, XDP_DROP, Out::ToUserspace, &[
            (COOKIE_ACK_VALID, 1),
            (REDIRECT_FAILED, 1),
        ])
        .then(),
        row("data of a connection held", data, XDP_DROP, Out::ToUserspace, &[
            (FLOW_SEGMENT, 1),
            (REDIRECT_FAILED, 1),
        ])
        .then(),
        // Or the kernel's answer, as configured.
        row("SYN while draining, loaded to pass", linux_syn(false), XDP_PASS, Out::Untouched, &[(PASS_SYN_DRAINING, 1)])
            .with(Setup { draining: true, drain_pass: true, ..Setup::default() }),
    ]);
    // The switch turns at run time, both ways, and userspace's SYN-ACKs (RFC 6191 reuse of a
    // tuple in TIME-WAIT) follow it.
    let offer = engine_common::synack::Syn { isn: 1000, mss: 1460, wscale: None, sack: false, ts: None, ecn: false };
    let mut e = fresh(&Setup { draining: true, ..Setup::default() });
    let userspace = e.cookie_checker();
    assert_eq!(e.test_run(&linux_syn(false), 1).unwrap().0, XDP_DROP);
    assert_eq!(userspace.answer(server(false), client(false, 40000), &offer), None);
    e.set_draining(false).unwrap();
    assert_eq!(e.test_run(&linux_syn(false), 1).unwrap().0, XDP_TX);
    assert!(userspace.answer(server(false), client(false, 40000), &offer).is_some());
    e.set_draining(true).unwrap();
    assert_eq!(e.test_run(&linux_syn(false), 1).unwrap().0, XDP_DROP);
    assert_eq!(userspace.answer(server(false), client(false, 40000), &offer), None);
}

#[test]
fn segments_no_host_holds_go_round_the_ring_once() {
    use counters::{
        COOKIE_ACK_INVALID, COOKIE_ACK_VALID, DROP_BAD_SECOND_CHANCE, FLOW_SEGMENT, PASS_NOT_TCP, REDIRECT_FAILED, RST_SENT,
        SECOND_CHANCE_LAST, SECOND_CHANCE_RECEIVED, SECOND_CHANCE_SENT, SYN_COOKIE_SENT,
    };
    let a = || Setup { ring: true, ..Setup::default() };
    let holding = Setup { ring: true, flows: vec![(false, 40001, 5), (true, 40001, 6)], ..Setup::default() };
    let mut rows = Vec::new();
    for v6 in [false, true] {
        // Not the cookie ACK's tuple, whose claim in FLOWS would take it.
        let ack = frame(v6, 40002, 5000, &[], |b| b.ack(0xdead_beef), &[]);
        let data = frame(v6, 40001, 9, &[], |b| b.ack(1), b"data");
        let cookie = cookie_for(v6, 40000, 1000);
        let final_ack = frame(v6, 40000, 1001, &[], |b| b.ack(cookie.wrapping_add(1)), &[]);
        rows.extend([
            // From the wire, no connection, no cookie: on to B (to visit B and C).
            row(format!("a stranger's ACK (v6={v6})"), ack.clone(), XDP_TX, Out::Forwarded { hops: 2 }, &[
                (COOKIE_ACK_INVALID, 1),
                (SECOND_CHANCE_SENT, 1),
            ])
            .with(a()),
            // A client's RST may end a connection another host holds.
            row(format!("an RST for no connection (v6={v6})"), frame(v6, 40000, 5000, &[], |b| b.rst(), &[]), XDP_TX, Out::Forwarded { hops: 2 }, &[
                (SECOND_CHANCE_SENT, 1),
            ])
            .then(),
            // SYNs and cookie ACKs are every host's own.
            row(format!("a SYN (v6={v6})"), linux_syn(v6), XDP_TX, Out::SynAck(LINUX), &[(SYN_COOKIE_SENT, 1)]).then(),
            row(format!("a cookie ACK (v6={v6})"), final_ack.clone(), XDP_DROP, Out::ToUserspace, &[
                (COOKIE_ACK_VALID, 1),
                (REDIRECT_FAILED, 1),
            ])
            .then(),
            // What C forwarded: served here when this host holds the connection ...
            row(format!("forwarded, held here (v6={v6})"), wrapped(&data, 2), XDP_DROP, Out::ToUserspace, &[
                (SECOND_CHANCE_RECEIVED, 1),
                (FLOW_SEGMENT, 1),
                (REDIRECT_FAILED, 1),
            ])
            .with(holding.clone()),
            // ... or a cookie ACK that validates here (another host's key differs) ...
            row(format!("forwarded cookie ACK (v6={v6})"), wrapped(&final_ack, 2), XDP_DROP, Out::ToUserspace, &[
                (SECOND_CHANCE_RECEIVED, 1),
                (COOKIE_ACK_VALID, 1),
                (REDIRECT_FAILED, 1),
            ])
            .then(),
            // ... else on to the next host, one hop fewer (from here: back to the router) ...
            row(format!("forwarded, not held, hosts left (v6={v6})"), wrapped(&ack, 2), XDP_TX, Out::Forwarded { hops: 1 }, &[
                (SECOND_CHANCE_RECEIVED, 1),
                (COOKIE_ACK_INVALID, 1),
                (SECOND_CHANCE_SENT, 1),
            ])
            .then(),
            // ... and the last host answers as a lone host: RFC 9293 3.10.7.1, to the router.
            row(format!("forwarded, not held, the last host (v6={v6})"), wrapped(&ack, 1), XDP_TX, Out::Rst { seq: 0xdead_beef, ack: None }, &[
                (SECOND_CHANCE_RECEIVED, 1),
                (COOKIE_ACK_INVALID, 1),
                (SECOND_CHANCE_LAST, 1),
                (RST_SENT, 1),
            ])
            .then(),
            // A forwarded SYN is nonsense (every host answers its own).
            row(format!("forwarded SYN (v6={v6})"), wrapped(&frame(v6, 40003, 1000, &linux_syn_opts(), |b| b.syn(), &[]), 2), XDP_DROP, Out::Unwrapped, &[
                (SECOND_CHANCE_RECEIVED, 1),
                (DROP_BAD_SECOND_CHANCE, 1),
            ])
            .then(),
        ]);
    }
    let ack = frame(false, 40000, 5000, &[], |b| b.ack(0xdead_beef), &[]);
    let heartbeat = wrapped_to(&ack, 0, HOST_A, engine_common::second_chance::KIND_TIME_ASK);
    rows.extend([
        row("no hops left in the header", wrapped(&ack, 0), XDP_DROP, Out::Untouched, &[(DROP_BAD_SECOND_CHANCE, 1)]).with(a()),
        row("forwarded to a port nobody serves", wrapped(&syn_to("198.18.0.1:22"), 2), XDP_DROP, Out::Unwrapped, &[
            (SECOND_CHANCE_RECEIVED, 1),
            (DROP_BAD_SECOND_CHANCE, 1),
        ])
        .then(),
        // Heartbeats are the daemon's; wrapped frames for another host are not ours.
        row("a heartbeat", heartbeat, XDP_PASS, Out::Untouched, &[(PASS_NOT_TCP, 1)]).then(),
        row("wrapped for host B", wrapped_to(&ack, 2, HOST_B, 1), XDP_PASS, Out::Untouched, &[(PASS_NOT_TCP, 1)]).then(),
        // Without second chance: what it always was.
        row("a stranger's ACK, one host", ack.clone(), XDP_TX, Out::Rst { seq: 0xdead_beef, ack: None }, &[
            (COOKIE_ACK_INVALID, 1),
            (RST_SENT, 1),
        ]),
        row("a wrapped frame, one host", wrapped(&ack, 2), XDP_PASS, Out::Untouched, &[(PASS_NOT_TCP, 1)]).then(),
    ]);
    run(rows);
}

#[test]
fn the_ring_is_every_host_in_address_order() {
    let b = PeerRing::new(HOST_B, &[HOST_A, HOST_C], PEER_PORT).unwrap();
    assert_eq!((b.next, b.others), (HOST_C, 2));
    // The last wraps to the first; this host may be listed too; duplicates count once.
    let c = PeerRing::new(HOST_C, &[HOST_B, HOST_A, HOST_C, HOST_A], PEER_PORT).unwrap();
    assert_eq!((c.this, c.next, c.others), (HOST_C, HOST_A, 2));
    assert!(PeerRing::new(HOST_A, &[HOST_A], PEER_PORT).is_err(), "a ring of one");
}

#[test]
fn each_cookie_is_checked_under_its_periods_secret_within_the_skew_tolerance() {
    use cookie::{PERIOD_SHIFT, SKEW_TOLERANCE_NS};
    use counters::{COOKIE_ACK_INVALID, COOKIE_ACK_VALID, REDIRECT_FAILED, RST_SENT};
    let mut e = engine();
    // The shared clock 1.5 s before a boundary (moved there through the published adjustment):
    // the period p - 1 now, p within the tolerance.
    let p = cookie::period(shared_now()) + 10;
    let boundary = u64::from(p) << PERIOD_SHIFT;
    let target = boundary - 1_500_000_000;
    let adjust_ms = (target as i64 - tai_ns() as i64) / 1_000_000;
    let secret = |q: u32| Key { k0: u64::from(q) * 7, k1: u64::from(q) * 13 };
    let keys = Keys { newest: p, keys: [secret(p), secret(p - 1), secret(p - 2)] };
    e.secrets().publish(engine_common::secrets::Published::new(keys, adjust_ms * 1_000_000));
    let now = e.shared_now_ns();
    assert_eq!(cookie::period(now), p - 1, "the test ran for more than a second");
    // Our SYN-ACK: the current period's secret.
    let (action, out, _) = e.test_run(&linux_syn(false), 1).unwrap();
    assert_eq!(action, XDP_TX);
    check_synack(&e, &linux_syn(false), &out, &LINUX, "SYN-ACK");
    let tuple = cookie_tuple(server(false), client(false, 40000)).unwrap();
    let isn = tcp_of(&out).sequence_number();
    assert_eq!(isn, cookie::make(&secret(p - 1), &tuple, 1000, now, 1460).isn, "minted under period p - 1's secret");
    // Final ACKs of cookies minted at these instants under these secrets.
    let rows = [
        ("this period's", now, secret(p - 1), true),
        ("the previous period's", boundary - (1 << PERIOD_SHIFT) - 1_000, secret(p - 2), true),
        ("from a clock 1.5 s ahead", boundary + 1_000, secret(p), true),
        ("two periods old", boundary - 2 * (1 << PERIOD_SHIFT) + 1_000, secret(p - 3), false),
        ("this period's, another secret", now, secret(p), false),
    ];
    assert!(boundary + 1_000 - now < SKEW_TOLERANCE_NS);
    for (i, (what, minted_at, key, valid)) in rows.into_iter().enumerate() {
        let port = 41000 + i as u16;
        let cookie = cookie::make(&key, &cookie_tuple(server(false), client(false, port)).unwrap(), 1000, minted_at, 1460).isn;
        let ack = frame(false, port, 1001, &[], |b| b.ack(cookie.wrapping_add(1)), &[]);
        let before = counters_of(&e);
        let (action, _, _) = e.test_run(&ack, 1).unwrap();
        let moved = |c: Counter| counters_of(&e)[c as usize] - before[c as usize];
        if valid {
            assert_eq!((action, moved(COOKIE_ACK_VALID), moved(REDIRECT_FAILED)), (XDP_DROP, 1, 1), "{what}");
        } else {
            assert_eq!((action, moved(COOKIE_ACK_INVALID), moved(RST_SENT)), (XDP_TX, 1, 1), "{what}");
        }
    }
}

#[test]
fn the_program_follows_publications_and_mints_only_with_whole_ones() {
    // One thread publishes secrets back to back, without the interval the daemon keeps
    // (`engine_common::secrets`), while this one has the program answer SYNs. Every SYN-ACK's
    // cookie must be the one a whole publication of that moment mints: the program reads the
    // slot the index names and keeps up with the flips, and never mints with a key nobody
    // published (half of one, half of the next); a publication it overlaps on both slots would
    // leave the SYN unanswered (xdp_pass_not_ready). The reader is the code engine_common's
    // secrets tests run against a writer that does tear slots under it: a tear inside the few
    // nanoseconds of one program run is too rare to provoke from here.
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let mut e = engine();
    let publisher = e.secrets();
    let adjust_ns = e.published().adjust_ns;
    let newest = cookie::period(e.shared_now_ns()) + 1;
    let key = |n: u64| Key { k0: n.wrapping_mul(0x9e37_79b9_7f4a_7c15), k1: !n };
    let publication = |n: u64| engine_common::secrets::Published::new(Keys { newest, keys: [key(n); cookie::KEYS] }, adjust_ns);
    publisher.publish(publication(0));
    let published = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let tuple = cookie_tuple(server(false), client(false, 40000)).unwrap();
    let syn = linux_syn(false);
    let (answered, unanswered) = std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut n = 0;
            while !done.load(Ordering::Relaxed) {
                n += 1;
                publisher.publish_unpaced(publication(n));
                published.store(n, Ordering::Release);
            }
        });
        let (mut answered, mut unanswered) = (0u32, 0u32);
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while std::time::Instant::now() < deadline {
            let first = published.load(Ordering::Acquire);
            let (action, out, _) = e.test_run(&syn, 1).unwrap();
            let last = published.load(Ordering::Acquire) + 1;
            if action != XDP_TX {
                assert_eq!(action, XDP_PASS, "a SYN is answered or, while both slots change, passed");
                unanswered += 1;
                continue;
            }
            let isn = tcp_of(&out).sequence_number();
            let now = e.shared_now_ns();
            let whole = (first..=last).any(|n| {
                let keys = publication(n).keys;
                cookie::check(&keys, &tuple, 1000, isn, now).is_some()
            });
            assert!(whole, "cookie {isn:#x} minted under no key published between {first} and {last}");
            answered += 1;
        }
        done.store(true, Ordering::Relaxed);
        (answered, unanswered)
    });
    assert!(answered > 1000, "{answered} SYNs answered, {unanswered} not");
}
