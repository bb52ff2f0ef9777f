//! Second-chance forwarding in the program (`engine_common::second_chance`): unwrapping what
//! another host forwarded, and forwarding what this host cannot serve to the next live host of
//! the ring (which userspace keeps in SWITCHES as hosts come and go). Off (and pruned by the
//! verifier) unless userspace set a peer port at load.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_adjust_head, programs::XdpContext};
use engine_common::{
    counters,
    second_chance::{GROWTH, HEADER_LEN, KIND_SEGMENT, MAGIC, VERSION},
};

use crate::{
    clock::precise_mono_ns,
    maps::{count, ring},
    packet::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPV4_HLEN, Seg, Verdict, at, ld32, st32, wire},
    ratelimit::{FORWARD, take_token},
    reply::{fold, write_eth},
    settings,
};

const UDP_HLEN: usize = 8;
const IPPROTO_UDP: u8 = 17;
/// Bytes before the wrapped frame's IP header.
const OUTER: usize = ETH_HLEN + IPV4_HLEN + UDP_HLEN + HEADER_LEN;
const _: () = assert!(OUTER == ETH_HLEN + GROWTH);
/// TTL of the outer header: it crosses the router between hosts.
const TTL: u8 = 64;

/// What [`receive`] made of a frame.
pub enum Received {
    /// Not a forwarded segment: the frame as it came.
    NotOurs,
    /// A forwarded segment, unwrapped in place into an Ethernet frame addressed as if the
    /// router had sent it to us; it may visit this many hosts more, this one included.
    Unwrapped(u8),
    /// Our header with nonsense in it: drop.
    Bad,
}

/// Unwrap a segment another host forwarded to this one: IPv4 to our address, UDP to the peer
/// port, our header. Anything else is left alone (heartbeats go to the daemon's socket).
#[inline(always)]
pub fn receive(ctx: &XdpContext) -> Received {
    let port = settings::peer_port_be();
    if port == 0 {
        return Received::NotOurs;
    }
    let Some(p) = at(ctx, 0, OUTER) else { return Received::NotOurs };
    // SAFETY: OUTER bytes checked above.
    let (macs, ok, header, kind_word) = unsafe {
        let ip = p.add(ETH_HLEN);
        let udp = ip.add(IPV4_HLEN);
        let ok = (p.add(12) as *const u16).read_unaligned() == ETH_P_IP.to_be()
            // Version 4 without options (as `forward` builds it), UDP, not a fragment.
            && *ip == 0x45
            && *ip.add(9) == IPPROTO_UDP
            && (ip.add(6) as *const u16).read_unaligned() & 0xff3f == 0
            && ld32(ip, 16) == settings::peer_self()
            && (udp.add(2) as *const u16).read_unaligned() == port;
        let h = udp.add(UDP_HLEN);
        ([ld32(p, 0), ld32(p, 4), ld32(p, 8)], ok, ld32(h, 0), ld32(h, 4))
    };
    if !ok || header != wire([MAGIC[0], MAGIC[1], VERSION, KIND_SEGMENT]) {
        return Received::NotOurs;
    }
    let [hops, _, e0, e1] = kind_word.to_le_bytes();
    let ethertype = u16::from_be_bytes([e0, e1]);
    if hops == 0 || (ethertype != ETH_P_IP && ethertype != ETH_P_IPV6) {
        return Received::Bad;
    }
    // SAFETY: helper call on our context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, GROWTH as i32) } != 0 {
        return Received::Bad;
    }
    let Some(p) = at(ctx, 0, ETH_HLEN) else { return Received::Bad };
    // The outer Ethernet header's addresses: to us, from the router.
    // SAFETY: 14 bytes checked above.
    unsafe {
        st32(p, 0, macs[0]);
        st32(p, 4, macs[1]);
        st32(p, 8, macs[2]);
        (p.add(12) as *mut u16).write_unaligned(ethertype.to_be());
    }
    Received::Unwrapped(hops)
}

/// Where a segment this host cannot serve goes when second chance is on: the verdict of
/// forwarding it to the next host, or `None` when it is off or this host is the last of the
/// ring for it. `hops`: what [`receive`] said, 0 for a segment from the wire.
#[inline(always)]
pub fn pass_on(ctx: &XdpContext, seg: &Seg, hops: u8) -> Option<Verdict> {
    if settings::peer_port_be() == 0 {
        return None;
    }
    let (next, others) = ring();
    let left = if hops == 0 { others } else { hops - 1 };
    if left == 0 || next == 0 {
        return None;
    }
    if !take_token(FORWARD, precise_mono_ns(), settings::forward_per_sec()) {
        return Some(Verdict::Drop(counters::SECOND_CHANCE_RATE_LIMITED));
    }
    Some(forward(ctx, seg, next, left))
}

/// Wrap the frame (from its IP header on) and send it back where it came from, to the next
/// host: IPv4 from our address, UDP to the peer port (source port from the tuple, so flows
/// spread over the receiver's queues), our header.
#[inline(always)]
fn forward(ctx: &XdpContext, seg: &Seg, next: u32, hops: u8) -> Verdict {
    let inner_len = ctx.data_end() - ctx.data() - ETH_HLEN;
    // SAFETY: helper call on our context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(GROWTH as i32)) } != 0 {
        return Verdict::Drop(counters::DROP_NO_ROOM);
    }
    let Some(p) = at(ctx, 0, OUTER) else { return Verdict::Drop(counters::DROP_NO_ROOM) };
    let ip_len = (IPV4_HLEN + UDP_HLEN + HEADER_LEN + inner_len) as u16;
    let [t0, t1] = ip_len.to_be_bytes();
    let w0 = wire([0x45, 0, t0, t1]);
    // ID 0 with DF set: RFC 6864 4.1.
    let w1 = wire([0, 0, 0x40, 0]);
    let w2 = wire([TTL, IPPROTO_UDP, 0, 0]);
    let (src, dst) = (settings::peer_self(), next);
    let csum = fold(u64::from(w0) + u64::from(w1) + u64::from(w2) + u64::from(src) + u64::from(dst));
    let h = seg.ports ^ seg.src[0] ^ seg.src[3];
    let sport = 0xc000 | ((h ^ (h >> 16)) as u16 & 0x3fff);
    let [s0, s1] = sport.to_be_bytes();
    let [p0, p1] = settings::peer_port_be().to_ne_bytes();
    let [l0, l1] = (ip_len - IPV4_HLEN as u16).to_be_bytes();
    let [e0, e1] = if seg.v6 { ETH_P_IPV6 } else { ETH_P_IP }.to_be_bytes();
    // SAFETY: OUTER bytes checked above.
    unsafe {
        // Back to the router it came from.
        write_eth(p, seg, ETH_P_IP);
        let ip = p.add(ETH_HLEN);
        st32(ip, 0, w0);
        st32(ip, 4, w1);
        st32(ip, 8, w2 | (u32::from(csum) << 16));
        st32(ip, 12, src);
        st32(ip, 16, dst);
        let udp = ip.add(IPV4_HLEN);
        st32(udp, 0, wire([s0, s1, p0, p1]));
        // UDP checksum 0: none (RFC 768, IPv4); the inner segment carries its own.
        st32(udp, 4, wire([l0, l1, 0, 0]));
        let hdr = udp.add(UDP_HLEN);
        st32(hdr, 0, wire([MAGIC[0], MAGIC[1], VERSION, KIND_SEGMENT]));
        st32(hdr, 4, wire([hops, 0, e0, e1]));
    }
    count(counters::SECOND_CHANCE_SENT);
    Verdict::Done(xdp_action::XDP_TX)
}
