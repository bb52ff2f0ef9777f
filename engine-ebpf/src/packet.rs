//! Reading a frame: bounds-checked pointers, wire words, and the parse of a TCP segment into
//! [`Seg`], with the verdict for frames that are not one (or are malformed).

use aya_ebpf::programs::XdpContext;
use engine_common::{
    cookie::Tuple,
    counters::{self, Counter},
};

pub const ETH_HLEN: usize = 14;
pub const IPV4_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;
pub const TCP_HLEN: usize = 20;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const IPPROTO_TCP: u8 = 6;
pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;
pub const ECE: u8 = 0x40;
pub const CWR: u8 = 0x80;

/// What becomes of a frame: passed to the kernel or dropped (each counted), or an XDP action
/// already decided (and counted) by the path that took it.
pub enum Verdict {
    Pass(Counter),
    Drop(Counter),
    Done(u32),
}

/// Bounds-checked pointer to `len` bytes at `off`.
#[inline(always)]
pub fn at(ctx: &XdpContext, off: usize, len: usize) -> Option<*mut u8> {
    let start = ctx.data();
    if start + off + len > ctx.data_end() {
        return None;
    }
    Some((start + off) as *mut u8)
}

// Packet words are read and written as the wire's bytes in little-endian words: one plain
// (possibly unaligned, see build.rs) load or store each, no byte shuffling. Checksums are sums
// of such words (RFC 1071 2(B): the sum is byte-order independent).

/// The 4 bytes at `p + off`.
///
/// # Safety
/// The caller checked that the 4 bytes lie in the frame.
#[inline(always)]
pub unsafe fn ld32(p: *const u8, off: usize) -> u32 {
    // SAFETY: the caller checked the bytes; unaligned packet loads are allowed (build.rs).
    unsafe { (p.add(off) as *const u32).read_unaligned() }
}

/// Store the 4 bytes at `p + off`.
///
/// # Safety
/// As [`ld32`].
#[inline(always)]
pub unsafe fn st32(p: *mut u8, off: usize, w: u32) {
    // SAFETY: as `ld32`.
    unsafe { (p.add(off) as *mut u32).write_unaligned(w) }
}

/// The word whose wire bytes are `b`.
#[inline(always)]
pub const fn wire(b: [u8; 4]) -> u32 {
    u32::from_le_bytes(b)
}

/// What the program needs from a TCP segment to a listener. Addresses and ports are wire words
/// (see `ld32`); the other fields are in host order.
pub struct Seg {
    pub v6: bool,
    /// The frame's first 12 bytes: destination MAC, source MAC.
    pub macs: [u32; 3],
    /// Client (source) and server (destination) addresses; IPv4 in word 0.
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// The TCP header's first 4 bytes: source port, destination port.
    pub ports: u32,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// Offset of the TCP header and its length (data offset * 4).
    pub l4: usize,
    pub doff: usize,
    pub payload_len: u32,
    /// Set for a segment synx does not serve (malformed, a first fragment, IPv6 extension
    /// headers): the counter of its drop if it is for a listener; it is the kernel's if not.
    /// Only the addresses and ports are read then.
    pub refuse: Option<Counter>,
}

impl Seg {
    /// The cookie's view of the connection (`engine_common::cookie::Tuple`).
    #[inline(always)]
    pub fn tuple(&self) -> Tuple {
        let pair = |a: u32, b: u32| u64::from(a) | (u64::from(b) << 32);
        let addrs = if self.v6 {
            [
                pair(self.src[0], self.src[1]),
                pair(self.src[2], self.src[3]),
                pair(self.dst[0], self.dst[1]),
                pair(self.dst[2], self.dst[3]),
            ]
        } else {
            [pair(self.src[0], self.dst[0]), 0, 0, 0]
        };
        Tuple { addrs, ports: self.ports, v6: self.v6 }
    }
}

/// IPv6 extension headers (RFC 8200 4) the parse steps over to find a segment's ports.
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AUTH: u8 = 51;
const IPV6_DEST_OPTS: u8 = 60;
/// Extension headers stepped over at most: every chain in RFC 8200 4.1's order (hop-by-hop,
/// destination options, routing, fragment, authentication, destination options) fits.
const IPV6_MAX_EXTENSIONS: usize = 6;

/// The TCP segment in the frame (Ethernet, IPv4 or IPv6, TCP), or the verdict for a frame
/// that is none: not IP or not TCP passes to the kernel, and so does a frame too broken to
/// say which port it is for, or an IPv4 / IPv6 fragment after the first (no ports; without
/// its first fragment the kernel never reassembles it). A segment whose ports could be read
/// but which synx does not serve (malformed, a first fragment, IPv6 extension headers) comes
/// back with [`Seg::refuse`] set: dropped if it is for a listener, the kernel's otherwise.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Seg, Verdict> {
    let Some(eth) = at(ctx, 0, ETH_HLEN) else { return Err(Verdict::Pass(counters::PASS_NOT_IP)) };
    let mut seg = Seg {
        v6: false,
        macs: [0; 3],
        src: [0; 4],
        dst: [0; 4],
        ports: 0,
        sport: 0,
        dport: 0,
        seq: 0,
        ack: 0,
        flags: 0,
        l4: 0,
        doff: 0,
        payload_len: 0,
        refuse: None,
    };
    // SAFETY: 14 bytes checked above.
    let ethertype = unsafe {
        seg.macs = [ld32(eth, 0), ld32(eth, 4), ld32(eth, 8)];
        u16::from_be((eth.add(12) as *const u16).read_unaligned())
    };
    let malformed = Err(Verdict::Pass(counters::PASS_MALFORMED));
    let l3_len: u32 = match ethertype {
        ETH_P_IP => {
            let Some(ip) = at(ctx, ETH_HLEN, IPV4_HLEN) else { return malformed };
            // SAFETY: 20 bytes checked above.
            let (vihl, frag, proto, total) = unsafe {
                (
                    *ip,
                    u16::from_be((ip.add(6) as *const u16).read_unaligned()),
                    *ip.add(9),
                    u16::from_be((ip.add(2) as *const u16).read_unaligned()),
                )
            };
            if proto != IPPROTO_TCP {
                return Err(Verdict::Pass(counters::PASS_NOT_TCP));
            }
            let ihl = ((vihl & 0x0f) as usize) * 4;
            if vihl >> 4 != 4 || ihl < IPV4_HLEN {
                // Where the TCP header starts is anyone's guess: no port to check.
                return malformed;
            }
            if frag & 0x1fff != 0 {
                // A later fragment: no ports. The first one carries them (below).
                return Err(Verdict::Pass(counters::PASS_FRAGMENT));
            }
            if frag & 0x2000 != 0 {
                // The first fragment: the kernel would reassemble a segment of a connection it
                // does not know and reset the peer (RFC 9293 3.10.7.1).
                seg.refuse = Some(counters::DROP_FRAGMENT);
            }
            // SAFETY: addresses lie within the 20 checked bytes.
            unsafe {
                seg.src[0] = ld32(ip, 12);
                seg.dst[0] = ld32(ip, 16);
            }
            seg.l4 = ETH_HLEN + (ihl & 0x3c);
            let total = u32::from(total);
            if total < ihl as u32 && seg.refuse.is_none() {
                seg.refuse = Some(counters::DROP_BAD_HEADER);
            }
            total.saturating_sub(ihl as u32)
        }
        ETH_P_IPV6 => {
            let Some(ip) = at(ctx, ETH_HLEN, IPV6_HLEN) else { return malformed };
            // SAFETY: 40 bytes checked above.
            let (ver, next, payload) =
                unsafe { (*ip >> 4, *ip.add(6), u16::from_be((ip.add(4) as *const u16).read_unaligned())) };
            if ver != 6 {
                return malformed;
            }
            // SAFETY: addresses lie within the 40 checked bytes.
            unsafe {
                seg.src = [ld32(ip, 8), ld32(ip, 12), ld32(ip, 16), ld32(ip, 20)];
                seg.dst = [ld32(ip, 24), ld32(ip, 28), ld32(ip, 32), ld32(ip, 36)];
            }
            seg.v6 = true;
            seg.l4 = ETH_HLEN + IPV6_HLEN;
            if next != IPPROTO_TCP {
                // Extension headers: find the ports behind them, so that a segment for a
                // listener is refused here rather than passed to a kernel that would reset
                // the peer; anything else is the kernel's.
                let (l4, refuse) = ipv6_extensions(ctx, next)?;
                seg.refuse = Some(refuse);
                return ports_only(ctx, seg, l4);
            }
            u32::from(payload)
        }
        _ => return Err(Verdict::Pass(counters::PASS_NOT_IP)),
    };
    if seg.refuse.is_some() {
        let l4 = seg.l4;
        return ports_only(ctx, seg, l4);
    }
    let l4 = seg.l4;
    let Some(tcp) = at(ctx, l4, TCP_HLEN) else { return ports_only(ctx, seg, l4) };
    // SAFETY: 20 bytes checked above.
    let doff_byte = unsafe { *tcp.add(12) };
    let doff = ((doff_byte >> 4) as usize) * 4;
    if doff < TCP_HLEN {
        seg.refuse = Some(counters::DROP_BAD_HEADER);
    } else if at(ctx, l4, doff & 0x3c).is_none()
        || l3_len < doff as u32
        || ctx.data() + l4 + l3_len as usize > ctx.data_end()
    {
        seg.refuse = Some(counters::DROP_TRUNCATED);
    }
    seg.doff = doff & 0x3c;
    seg.payload_len = l3_len.saturating_sub(doff as u32);
    // Through `tcp`, whose 20 bytes the verifier knows are in bounds (re-deriving the pointer
    // from data + l4 would lose that after LLVM drops the repeated check).
    // SAFETY: 20 bytes checked above.
    unsafe {
        seg.ports = ld32(tcp, 0);
        seg.seq = u32::from_be(ld32(tcp, 4));
        seg.ack = u32::from_be(ld32(tcp, 8));
        seg.flags = *tcp.add(13);
    }
    seg.sport = u16::from_be(seg.ports as u16);
    seg.dport = u16::from_be((seg.ports >> 16) as u16);
    Ok(seg)
}

/// A segment synx will not serve, with only its ports read (at `l4`): refused as
/// [`Seg::refuse`] says (a truncated TCP header if nothing was said yet), or passed to the
/// kernel when even the ports are not there.
#[inline(always)]
fn ports_only(ctx: &XdpContext, mut seg: Seg, l4: usize) -> Result<Seg, Verdict> {
    let Some(tcp) = at(ctx, l4, 4) else { return Err(Verdict::Pass(counters::PASS_MALFORMED)) };
    // SAFETY: 4 bytes checked above.
    seg.ports = unsafe { ld32(tcp, 0) };
    seg.sport = u16::from_be(seg.ports as u16);
    seg.dport = u16::from_be((seg.ports >> 16) as u16);
    if seg.refuse.is_none() {
        seg.refuse = Some(counters::DROP_TRUNCATED);
    }
    Ok(seg)
}

/// Step over the IPv6 extension headers starting with `next` (RFC 8200 4): where the TCP
/// header starts and why the segment is refused (a first fragment, or extension headers),
/// or the verdict for a packet that carries no TCP (or a later fragment, or a
/// chain too long or cut short: no ports to check), which the kernel gets.
#[inline(always)]
fn ipv6_extensions(ctx: &XdpContext, mut next: u8) -> Result<(usize, Counter), Verdict> {
    let mut off = ETH_HLEN + IPV6_HLEN;
    let mut refuse = counters::DROP_IPV6_EXTENSION;
    for _ in 0..IPV6_MAX_EXTENSIONS {
        let Some(h) = at(ctx, off, 8) else { return Err(Verdict::Pass(counters::PASS_MALFORMED)) };
        // SAFETY: 8 bytes checked above.
        let (after, len_byte, frag) = unsafe { (*h, *h.add(1), u16::from_be((h.add(2) as *const u16).read_unaligned())) };
        let len = match next {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => (usize::from(len_byte) + 1) * 8,
            // RFC 4302 2.2: in 4-byte units, minus 2.
            IPV6_AUTH => (usize::from(len_byte) + 2) * 4,
            IPV6_FRAGMENT => {
                // RFC 8200 4.5: the offset in the top 13 bits; a later fragment has no ports.
                if frag & 0xfff8 != 0 {
                    return Err(Verdict::Pass(counters::PASS_FRAGMENT));
                }
                refuse = counters::DROP_FRAGMENT;
                8
            }
            _ => return Err(Verdict::Pass(counters::PASS_NOT_TCP)),
        };
        off += len;
        next = after;
        if next == IPPROTO_TCP {
            return Ok((off, refuse));
        }
    }
    Err(Verdict::Pass(counters::PASS_NOT_TCP))
}
