//! Replies built in the frame that brought the segment: Ethernet, IP and TCP headers with the
//! addresses and ports swapped, their checksums (RFC 1071) computed from the words written.

use aya_ebpf::{
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};

use crate::packet::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, IPV4_HLEN, IPV6_HLEN, Seg, TCP_HLEN, at, st32, wire};

/// TTL (hop limit) of our replies.
const TTL: u8 = 64;

/// Ones'-complement sum folded to 16 bits and complemented (RFC 1071), as stored.
#[inline(always)]
pub fn fold(mut acc: u64) -> u16 {
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    !(acc as u16)
}

/// Ethernet header of a reply: the MACs swapped, then `ethertype`.
///
/// # Safety
/// The frame holds 14 bytes at `p`.
#[inline(always)]
pub(crate) unsafe fn write_eth(p: *mut u8, seg: &Seg, ethertype: u16) {
    let [m0, m1, m2] = seg.macs;
    // SAFETY (whole fn): the caller checked that the frame holds the header.
    unsafe {
        // Bytes 0..6 (destination) become the request's 6..12 (its source) and vice versa.
        st32(p, 0, (m1 >> 16) | (m2 << 16));
        st32(p, 4, (m2 >> 16) | (m0 << 16));
        st32(p, 8, (m0 >> 16) | (m1 << 16));
        (p.add(12) as *mut u16).write_unaligned(ethertype.to_be());
    }
}

/// IPv4 header of a reply carrying `tcp_len` bytes (addresses swapped, checksum filled in);
/// returns the TCP pseudo-header's address sum.
#[inline(always)]
unsafe fn write_ipv4(ip: *mut u8, seg: &Seg, tcp_len: usize) -> u64 {
    let [t0, t1] = ((IPV4_HLEN + tcp_len) as u16).to_be_bytes();
    let w0 = wire([0x45, 0, t0, t1]);
    // ID 0 with DF set: RFC 6864 4.1.
    let w1 = wire([0, 0, 0x40, 0]);
    let w2 = wire([TTL, IPPROTO_TCP, 0, 0]);
    let addrs = u64::from(seg.dst[0]) + u64::from(seg.src[0]);
    let csum = fold(u64::from(w0) + u64::from(w1) + u64::from(w2) + addrs);
    // SAFETY (whole fn): the caller checked that the frame holds the header.
    unsafe {
        st32(ip, 0, w0);
        st32(ip, 4, w1);
        st32(ip, 8, w2 | (u32::from(csum) << 16));
        st32(ip, 12, seg.dst[0]);
        st32(ip, 16, seg.src[0]);
    }
    addrs
}

/// IPv6 header of a reply carrying `tcp_len` bytes (addresses swapped); returns the TCP
/// pseudo-header's address sum.
#[inline(always)]
unsafe fn write_ipv6(ip: *mut u8, seg: &Seg, tcp_len: usize) -> u64 {
    let [l0, l1] = (tcp_len as u16).to_be_bytes();
    let mut addrs = 0u64;
    // SAFETY (whole fn): the caller checked that the frame holds the header.
    unsafe {
        st32(ip, 0, wire([0x60, 0, 0, 0]));
        st32(ip, 4, wire([l0, l1, IPPROTO_TCP, TTL]));
        for i in 0..4 {
            st32(ip, 8 + 4 * i, seg.dst[i]);
            st32(ip, 24 + 4 * i, seg.src[i]);
            addrs += u64::from(seg.dst[i]) + u64::from(seg.src[i]);
        }
    }
    addrs
}

/// TCP header of a reply (ports swapped) with `N` option words, checksum over the pseudo
/// header (`addrs`, its address sum), the header and the options; urgent pointer 0.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn write_tcp<const N: usize>(
    t: *mut u8,
    seg: &Seg,
    addrs: u64,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    opts: &[u32; N],
) {
    let len = TCP_HLEN + 4 * N;
    let ports = seg.ports.rotate_right(16);
    let [w0, w1] = window.to_be_bytes();
    let doff_flags_win = wire([((len / 4) as u8) << 4, flags, w0, w1]);
    let [l0, l1] = (len as u16).to_be_bytes();
    let mut acc = addrs + u64::from(wire([0, IPPROTO_TCP, l0, l1]));
    acc += u64::from(ports) + u64::from(seq.to_be()) + u64::from(ack.to_be()) + u64::from(doff_flags_win);
    // SAFETY (whole fn): the caller checked that the frame holds the header and options.
    unsafe {
        for (i, &o) in opts.iter().enumerate() {
            st32(t, TCP_HLEN + 4 * i, o);
            acc += u64::from(o);
        }
        st32(t, 0, ports);
        st32(t, 4, seq.to_be());
        st32(t, 8, ack.to_be());
        st32(t, 12, doff_flags_win);
        st32(t, 16, u32::from(fold(acc)));
    }
}

/// Resize the frame to exactly `len` bytes and return a pointer to it (no helper call when it
/// already has that size, as a SYN with Linux's options does). The reply is written from offset
/// 0, so a frame that must grow grows at the head: XDP guarantees headroom, while tailroom on a
/// veth's frames is not there to take (bpf_xdp_adjust_tail failed on them).
#[inline(always)]
fn resize(ctx: &XdpContext, len: usize) -> Option<*mut u8> {
    let cur = ctx.data_end() - ctx.data();
    let delta = len as i64 - cur as i64;
    // SAFETY: helper calls on our context.
    let rc = unsafe {
        if delta > 0 {
            bpf_xdp_adjust_head(ctx.ctx, -(delta as i32))
        } else if delta < 0 {
            bpf_xdp_adjust_tail(ctx.ctx, delta as i32)
        } else {
            0
        }
    };
    if rc != 0 {
        return None;
    }
    at(ctx, 0, len)
}

/// Turn the frame into our reply to `seg`: a TCP header with `N` option words. False when the
/// frame cannot be resized.
#[inline(always)]
pub fn reply<const N: usize>(ctx: &XdpContext, seg: &Seg, seq: u32, ack: u32, flags: u8, window: u16, opts: &[u32; N]) -> bool {
    let tcp_len = TCP_HLEN + 4 * N;
    if seg.v6 {
        let Some(p) = resize(ctx, ETH_HLEN + IPV6_HLEN + tcp_len) else { return false };
        // SAFETY: `resize` checked that the whole reply fits.
        unsafe {
            write_eth(p, seg, ETH_P_IPV6);
            let addrs = write_ipv6(p.add(ETH_HLEN), seg, tcp_len);
            write_tcp(p.add(ETH_HLEN + IPV6_HLEN), seg, addrs, seq, ack, flags, window, opts);
        }
    } else {
        let Some(p) = resize(ctx, ETH_HLEN + IPV4_HLEN + tcp_len) else { return false };
        // SAFETY: `resize` checked that the whole reply fits.
        unsafe {
            write_eth(p, seg, ETH_P_IP);
            let addrs = write_ipv4(p.add(ETH_HLEN), seg, tcp_len);
            write_tcp(p.add(ETH_HLEN + IPV4_HLEN), seg, addrs, seq, ack, flags, window, opts);
        }
    }
    true
}
