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

/// The TCP segment in the frame (Ethernet, IPv4 or IPv6 without extension headers, TCP), or
/// the verdict for a frame that is none: not IP or not TCP and IPv4 fragments pass to the
/// kernel; truncated or malformed headers are dropped.
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
    };
    // SAFETY: 14 bytes checked above.
    let ethertype = unsafe {
        seg.macs = [ld32(eth, 0), ld32(eth, 4), ld32(eth, 8)];
        u16::from_be((eth.add(12) as *const u16).read_unaligned())
    };
    let l3_len: u32 = match ethertype {
        ETH_P_IP => {
            let Some(ip) = at(ctx, ETH_HLEN, IPV4_HLEN) else {
                return Err(Verdict::Drop(counters::DROP_TRUNCATED));
            };
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
                return Err(Verdict::Drop(counters::DROP_BAD_HEADER));
            }
            if frag & 0x3fff != 0 {
                // More-fragments or an offset: the kernel reassembles.
                return Err(Verdict::Pass(counters::PASS_FRAGMENT));
            }
            // SAFETY: addresses lie within the 20 checked bytes.
            unsafe {
                seg.src[0] = ld32(ip, 12);
                seg.dst[0] = ld32(ip, 16);
            }
            seg.l4 = ETH_HLEN + (ihl & 0x3c);
            let total = u32::from(total);
            if total < ihl as u32 {
                return Err(Verdict::Drop(counters::DROP_BAD_HEADER));
            }
            total - ihl as u32
        }
        ETH_P_IPV6 => {
            let Some(ip) = at(ctx, ETH_HLEN, IPV6_HLEN) else {
                return Err(Verdict::Drop(counters::DROP_TRUNCATED));
            };
            // SAFETY: 40 bytes checked above.
            let (ver, next, payload) =
                unsafe { (*ip >> 4, *ip.add(6), u16::from_be((ip.add(4) as *const u16).read_unaligned())) };
            if next != IPPROTO_TCP {
                // Extension headers included: the kernel's business.
                return Err(Verdict::Pass(counters::PASS_NOT_TCP));
            }
            if ver != 6 {
                return Err(Verdict::Drop(counters::DROP_BAD_HEADER));
            }
            // SAFETY: addresses lie within the 40 checked bytes.
            unsafe {
                seg.src = [ld32(ip, 8), ld32(ip, 12), ld32(ip, 16), ld32(ip, 20)];
                seg.dst = [ld32(ip, 24), ld32(ip, 28), ld32(ip, 32), ld32(ip, 36)];
            }
            seg.v6 = true;
            seg.l4 = ETH_HLEN + IPV6_HLEN;
            u32::from(payload)
        }
        _ => return Err(Verdict::Pass(counters::PASS_NOT_IP)),
    };
    let l4 = seg.l4;
    let Some(tcp) = at(ctx, l4, TCP_HLEN) else { return Err(Verdict::Drop(counters::DROP_TRUNCATED)) };
    // SAFETY: 20 bytes checked above.
    let doff_byte = unsafe { *tcp.add(12) };
    let doff = ((doff_byte >> 4) as usize) * 4;
    if doff < TCP_HLEN {
        return Err(Verdict::Drop(counters::DROP_BAD_HEADER));
    }
    if at(ctx, l4, doff & 0x3c).is_none() || l3_len < doff as u32 {
        return Err(Verdict::Drop(counters::DROP_TRUNCATED));
    }
    if ctx.data() + l4 + l3_len as usize > ctx.data_end() {
        return Err(Verdict::Drop(counters::DROP_TRUNCATED));
    }
    seg.doff = doff & 0x3c;
    seg.payload_len = l3_len - doff as u32;
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
