//! Frames as the emulator reads them from an AF_PACKET socket with `PACKET_VNET_HDR`, made into
//! what a real wire carries: a veth hands over the sender's TSO/GSO super-frames (up to 64 KB)
//! and checksums left for an offload to fill in; a wire carries MTU-sized frames with their
//! checksums done. Segmenting here, as a NIC's TSO would, leaves the kernel sender its normal
//! offloads while every loss, queue and rate decision is taken per MTU-sized frame.

/// `struct virtio_net_hdr` (include/uapi/linux/virtio_net.h), in host byte order as AF_PACKET
/// gives it on a little-endian host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

pub const VNET_HDR_LEN: usize = 10;
const NEEDS_CSUM: u8 = 1;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const GSO_ECN: u8 = 0x80;

impl VnetHdr {
    pub fn parse(b: &[u8; VNET_HDR_LEN]) -> Self {
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Self { flags: b[0], gso_type: b[1], hdr_len: u(2), gso_size: u(4), csum_start: u(6), csum_offset: u(8) }
    }
}

/// Why a frame could not be made wire-ready (it is dropped and counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unfit {
    /// A GSO type other than TCP over IPv4/IPv6 (UDP GSO, tunnels): no sender in the bed uses
    /// them.
    GsoType(u8),
    /// Headers that do not parse as the GSO type says.
    Malformed,
}

const ETH_LEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_ICMPV6: u8 = 58;

/// The network layer of an Ethernet frame, as far as the emulator needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Net {
    V4 { ihl: usize },
    V6,
}

fn ethertype(f: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*f.get(12)?, *f.get(13)?]))
}

fn net(f: &[u8]) -> Option<Net> {
    match ethertype(f)? {
        ETH_P_IPV4 => {
            let ihl = usize::from(f.get(ETH_LEN)? & 0x0f) * 4;
            (ihl >= 20 && f.len() >= ETH_LEN + ihl).then_some(Net::V4 { ihl })
        }
        ETH_P_IPV6 => (f.len() >= ETH_LEN + 40).then_some(Net::V6),
        _ => None,
    }
}

/// Transport protocol and where its header starts (IPv6 extension headers are not walked: the
/// bed's senders use none).
fn l4(f: &[u8]) -> Option<(u8, usize)> {
    match net(f)? {
        Net::V4 { ihl } => Some((f[ETH_LEN + 9], ETH_LEN + ihl)),
        Net::V6 => Some((f[ETH_LEN + 6], ETH_LEN + 40)),
    }
}

/// Whether the path may lose, duplicate or reorder this frame: IP traffic, except IPv6
/// neighbour discovery (the bed's neighbours are static, but a lost solicitation would only
/// add noise). ARP and the rest still queue and wait like any frame.
pub fn impairable(f: &[u8]) -> bool {
    match l4(f) {
        Some((PROTO_ICMPV6, off)) => !matches!(f.get(off), Some(133..=137)),
        Some(_) => true,
        None => false,
    }
}

/// A TCP segment as the path's per-flow randomness sees it ([`super::flows`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSeg {
    /// Source address, destination address (IPv4 as IPv4-mapped IPv6), source port,
    /// destination port: the flow in this direction.
    pub tuple: (u128, u128, u16, u16),
    pub seq: u32,
    pub ack: u32,
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
    /// The ACK flag.
    pub acks: bool,
    /// Payload bytes, from the IP header's lengths (a short frame's Ethernet padding is not
    /// payload).
    pub payload: u32,
}

/// The TCP segment a wire-ready frame carries, if it is one.
pub fn tcp_seg(f: &[u8]) -> Option<TcpSeg> {
    let (proto, off) = l4(f)?;
    if proto != PROTO_TCP {
        return None;
    }
    let (src, dst, ip_payload) = match net(f)? {
        Net::V4 { ihl } => {
            let b = |i: usize| -> Option<u128> {
                Some(u128::from(u32::from_be_bytes(f.get(ETH_LEN + i..ETH_LEN + i + 4)?.try_into().ok()?)) | 0xffff << 32)
            };
            let total = usize::from(u16::from_be_bytes([f[ETH_LEN + 2], f[ETH_LEN + 3]]));
            (b(12)?, b(16)?, total.checked_sub(ihl)?)
        }
        Net::V6 => {
            let b = |i: usize| -> Option<u128> { Some(u128::from_be_bytes(f.get(ETH_LEN + i..ETH_LEN + i + 16)?.try_into().ok()?)) };
            (b(8)?, b(24)?, usize::from(u16::from_be_bytes([f[ETH_LEN + 4], f[ETH_LEN + 5]])))
        }
    };
    let t = f.get(off..off + 20)?;
    let u16_at = |i: usize| u16::from_be_bytes([t[i], t[i + 1]]);
    let u32_at = |i: usize| u32::from_be_bytes([t[i], t[i + 1], t[i + 2], t[i + 3]]);
    let doff = usize::from(t[12] >> 4) * 4;
    let flags = t[13];
    Some(TcpSeg {
        tuple: (src, dst, u16_at(0), u16_at(2)),
        seq: u32_at(4),
        ack: u32_at(8),
        syn: flags & 0x02 != 0,
        fin: flags & 0x01 != 0,
        rst: flags & 0x04 != 0,
        acks: flags & 0x10 != 0,
        payload: ip_payload.checked_sub(doff)? as u32,
    })
}

/// Whether the frame is ECN-capable (ECT(0), ECT(1)) or already CE.
pub fn ecn_capable(f: &[u8]) -> bool {
    ecn(f).is_some_and(|e| e != 0)
}

fn ecn(f: &[u8]) -> Option<u8> {
    match net(f)? {
        Net::V4 { .. } => Some(f[ETH_LEN + 1] & 0x03),
        Net::V6 => Some(((u16::from_be_bytes([f[ETH_LEN], f[ETH_LEN + 1]]) >> 4) & 0x03) as u8),
    }
}

/// Set the ECN field to CE (11); IPv4's header checksum is updated (RFC 1624).
pub fn mark_ce(f: &mut [u8]) {
    match net(f) {
        Some(Net::V4 { .. }) => {
            let old = u16::from_be_bytes([f[ETH_LEN], f[ETH_LEN + 1]]);
            f[ETH_LEN + 1] |= 0x03;
            let new = u16::from_be_bytes([f[ETH_LEN], f[ETH_LEN + 1]]);
            let c = u16::from_be_bytes([f[ETH_LEN + 10], f[ETH_LEN + 11]]);
            // HC' = ~(~HC + ~m + m')
            let sum = u32::from(!c) + u32::from(!old) + u32::from(new);
            f[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&(!fold(sum)).to_be_bytes());
        }
        Some(Net::V6) => f[ETH_LEN + 1] |= 0x30,
        None => {}
    }
}

/// Whether a frame is broadcast or multicast (by its destination MAC).
pub fn is_group(f: &[u8]) -> bool {
    f.first().is_some_and(|b| b & 1 == 1)
}

fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let (pairs, rest) = data.as_chunks::<2>();
    for c in pairs {
        acc = acc.wrapping_add(u32::from(u16::from_be_bytes(*c)));
        // Fold early enough that 64 KB of data cannot overflow.
        if acc > 0xffff_0000 {
            acc = (acc & 0xffff) + (acc >> 16);
        }
    }
    if let [b] = rest {
        acc = acc.wrapping_add(u32::from(*b) << 8);
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The pseudo-header sum (RFC 793 3.1, RFC 8200 8.1) for a transport segment of `len` bytes.
fn pseudo(f: &[u8], proto: u8, len: usize) -> u32 {
    match net(f) {
        Some(Net::V4 { .. }) => sum16(&f[ETH_LEN + 12..ETH_LEN + 20], u32::from(proto) + len as u32),
        _ => sum16(&f[ETH_LEN + 8..ETH_LEN + 40], u32::from(proto) + len as u32),
    }
}

/// Fill in the transport checksum of a TCP or UDP frame from scratch.
fn transport_checksum(f: &mut [u8], proto: u8, off: usize) {
    let at = off + if proto == PROTO_TCP { 16 } else { 6 };
    if f.len() < at + 2 {
        return;
    }
    f[at..at + 2].fill(0);
    let mut c = !fold(sum16(&f[off..], pseudo(f, proto, f.len() - off)));
    if proto == PROTO_UDP && c == 0 {
        c = 0xffff; // RFC 768: zero means "no checksum"
    }
    f[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

fn ipv4_header_checksum(f: &mut [u8], ihl: usize) {
    f[ETH_LEN + 10..ETH_LEN + 12].fill(0);
    let c = !fold(sum16(&f[ETH_LEN..ETH_LEN + ihl], 0));
    f[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&c.to_be_bytes());
}

/// Make one frame read with `hdr` wire-ready: GSO super-frames are cut into segments of
/// `gso_size` payload bytes, and checksums an offload would have filled in are computed.
/// Frames that need neither come back as they are.
pub fn wire_frames(frame: Vec<u8>, hdr: VnetHdr) -> Result<Vec<Vec<u8>>, Unfit> {
    match hdr.gso_type & !GSO_ECN {
        GSO_NONE => {
            let mut frame = frame;
            if hdr.flags & NEEDS_CSUM != 0 {
                complete_checksum(&mut frame, hdr)?;
            }
            Ok(vec![frame])
        }
        GSO_TCPV4 | GSO_TCPV6 => segment_tcp(&frame, usize::from(hdr.gso_size)),
        other => Err(Unfit::GsoType(other)),
    }
}

/// CHECKSUM_PARTIAL: the field at `csum_start + csum_offset` holds the pseudo-header sum, the
/// rest is to be summed from `csum_start` (what the kernel's skb_checksum_help does).
fn complete_checksum(f: &mut [u8], hdr: VnetHdr) -> Result<(), Unfit> {
    if let Some((proto @ (PROTO_TCP | PROTO_UDP), off)) = l4(f) {
        transport_checksum(f, proto, off);
        return Ok(());
    }
    let start = usize::from(hdr.csum_start);
    let at = start + usize::from(hdr.csum_offset);
    if at + 2 > f.len() {
        return Err(Unfit::Malformed);
    }
    let c = !fold(sum16(&f[start..], 0));
    f[at..at + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// Cut a TCP super-frame into segments carrying at most `mss` payload bytes each, as
/// tcp_gso_segment does: sequence numbers advance, IPv4 IDs count up, FIN and PSH only on the
/// last segment, CWR only on the first; every checksum computed.
fn segment_tcp(f: &[u8], mss: usize) -> Result<Vec<Vec<u8>>, Unfit> {
    let Some((PROTO_TCP, off)) = l4(f) else { return Err(Unfit::Malformed) };
    let net = net(f).ok_or(Unfit::Malformed)?;
    let doff = usize::from(*f.get(off + 12).ok_or(Unfit::Malformed)? >> 4) * 4;
    let hlen = off + doff;
    if doff < 20 || f.len() < hlen || mss == 0 {
        return Err(Unfit::Malformed);
    }
    let payload = &f[hlen..];
    let seq0 = u32::from_be_bytes([f[off + 4], f[off + 5], f[off + 6], f[off + 7]]);
    let n = payload.len().div_ceil(mss).max(1);
    let mut out = Vec::with_capacity(n);
    for (i, chunk) in payload.chunks(mss).enumerate() {
        let mut s = Vec::with_capacity(hlen + chunk.len());
        s.extend_from_slice(&f[..hlen]);
        s.extend_from_slice(chunk);
        let seq = seq0.wrapping_add((i * mss) as u32);
        s[off + 4..off + 8].copy_from_slice(&seq.to_be_bytes());
        const FIN: u8 = 0x01;
        const PSH: u8 = 0x08;
        const CWR: u8 = 0x80;
        if i + 1 < n {
            s[off + 13] &= !(FIN | PSH);
        }
        if i > 0 {
            s[off + 13] &= !CWR;
        }
        match net {
            Net::V4 { ihl } => {
                let total = (ihl + doff + chunk.len()) as u16;
                s[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&total.to_be_bytes());
                let id = u16::from_be_bytes([f[ETH_LEN + 4], f[ETH_LEN + 5]]).wrapping_add(i as u16);
                s[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&id.to_be_bytes());
                ipv4_header_checksum(&mut s, ihl);
            }
            Net::V6 => {
                let plen = (doff + chunk.len()) as u16;
                s[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&plen.to_be_bytes());
            }
        }
        transport_checksum(&mut s, PROTO_TCP, off);
        out.push(s);
    }
    if out.is_empty() {
        // A super-frame with no payload is one plain segment.
        let mut s = f.to_vec();
        transport_checksum(&mut s, PROTO_TCP, off);
        out.push(s);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

    use super::*;

    const A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 2];

    fn tcp_frame(v6: bool, payload: &[u8], fin: bool, cwr: bool) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(A, B);
        let b = if v6 {
            b.ipv6([0xfd, 0, 0x5e, 0xed, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], [0xfd, 0, 0x5e, 0xed, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2], 64)
        } else {
            b.ipv4([198, 18, 0, 1], [198, 18, 0, 2], 64)
        };
        let mut b = b.tcp(7, 40000, 0xffff_f000, 5000).ack(77).psh();
        if fin {
            b = b.fin();
        }
        if cwr {
            b = b.cwr();
        }
        let b = b.options(&[etherparse::TcpOptionElement::Timestamp(1, 2)]).unwrap();
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    #[test]
    fn tcp_segments_parse_with_their_payload_from_the_ip_lengths() {
        for v6 in [false, true] {
            let mut f = tcp_frame(v6, b"hello", true, false);
            // Padding after the IP datagram (as a short Ethernet frame has) is not payload.
            f.extend_from_slice(&[0; 8]);
            let s = tcp_seg(&f).unwrap();
            assert_eq!((s.seq, s.ack, s.payload), (0xffff_f000, 77, 5), "v6 {v6}");
            assert!(s.fin && s.acks && !s.syn && !s.rst);
            assert_eq!((s.tuple.2, s.tuple.3), (7, 40000));
            assert_ne!(s.tuple.0, s.tuple.1);
        }
        let arp = [0u8; 60];
        assert_eq!(tcp_seg(&arp), None);
        assert_eq!(tcp_seg(&tcp_frame(false, b"", false, false)[..40]), None, "cut short");
    }

    /// Each segment parses, carries correct checksums, and together they carry `payload`.
    fn check_segments(segs: &[Vec<u8>], payload: &[u8], mss: usize, v6: bool) {
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let p = SlicedPacket::from_ethernet(s).unwrap();
            let Some(TransportSlice::Tcp(t)) = p.transport else { panic!("no TCP") };
            let data = t.payload();
            assert!(data.len() <= mss);
            assert_eq!(t.sequence_number(), 0xffff_f000u32.wrapping_add(joined.len() as u32), "segment {i}");
            let last = i + 1 == segs.len();
            assert_eq!(t.fin(), last, "segment {i} FIN");
            assert_eq!(t.psh(), last, "segment {i} PSH");
            assert_eq!(t.cwr(), i == 0, "segment {i} CWR");
            let want = match p.net.unwrap() {
                etherparse::NetSlice::Ipv4(ip) => {
                    let h = ip.header();
                    assert_eq!(h.to_header().calc_header_checksum(), h.header_checksum(), "IPv4 header checksum");
                    assert_eq!(usize::from(h.total_len()), s.len() - ETH_LEN);
                    t.to_header().calc_checksum_ipv4(&h.to_header(), data).unwrap()
                }
                etherparse::NetSlice::Ipv6(ip) => {
                    assert!(v6);
                    t.to_header().calc_checksum_ipv6(&ip.header().to_header(), data).unwrap()
                }
                _ => panic!("no IP"),
            };
            assert_eq!(t.checksum(), want, "segment {i} TCP checksum");
            joined.extend_from_slice(data);
        }
        assert_eq!(joined, payload);
    }

    #[test]
    fn tcp_super_frames_are_cut_into_mss_segments_with_correct_headers() {
        let payload: Vec<u8> = (0..65_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        for v6 in [false, true] {
            let mut f = tcp_frame(v6, &payload, true, true);
            // What a GSO skb looks like: the checksum holds only the pseudo-header sum.
            let off = ETH_LEN + if v6 { 40 } else { 20 };
            f[off + 16..off + 18].copy_from_slice(&[0x12, 0x34]);
            let hdr = VnetHdr { flags: 1, gso_type: if v6 { GSO_TCPV6 } else { GSO_TCPV4 } | GSO_ECN, gso_size: 1448, ..VnetHdr::default() };
            let segs = wire_frames(f, hdr).unwrap();
            assert_eq!(segs.len(), 65_000usize.div_ceil(1448));
            check_segments(&segs, &payload, 1448, v6);
            if !v6 {
                let ids: Vec<u16> = segs.iter().map(|s| u16::from_be_bytes([s[18], s[19]])).collect();
                assert!(ids.windows(2).all(|w| w[1] == w[0].wrapping_add(1)), "{ids:?}");
            }
        }
    }

    #[test]
    fn partial_checksums_are_completed() {
        let payload = b"some bytes in a frame that left its checksum to the offload!";
        for v6 in [false, true] {
            let good = tcp_frame(v6, payload, false, false);
            let mut partial = good.clone();
            let off = ETH_LEN + if v6 { 40 } else { 20 };
            // The pseudo-header sum, as the kernel leaves it for CHECKSUM_PARTIAL.
            let ps = fold(pseudo(&partial, PROTO_TCP, partial.len() - off));
            partial[off + 16..off + 18].copy_from_slice(&ps.to_be_bytes());
            let hdr = VnetHdr { flags: 1, csum_start: off as u16, csum_offset: 16, ..VnetHdr::default() };
            assert_eq!(wire_frames(partial, hdr).unwrap(), vec![good]);
        }
    }

    #[test]
    fn frames_that_need_nothing_pass_unchanged_and_others_are_refused() {
        let f = tcp_frame(false, b"x", false, false);
        assert_eq!(wire_frames(f.clone(), VnetHdr::default()).unwrap(), vec![f.clone()]);
        let udp_gso = VnetHdr { gso_type: 5, gso_size: 1400, ..VnetHdr::default() };
        assert_eq!(wire_frames(f, udp_gso), Err(Unfit::GsoType(5)));
        let arp = vec![0xffu8; 42];
        let tcpv4 = VnetHdr { gso_type: GSO_TCPV4, gso_size: 1448, ..VnetHdr::default() };
        assert_eq!(wire_frames(arp, tcpv4), Err(Unfit::Malformed));
    }

    #[test]
    fn ce_marking_keeps_the_ipv4_header_checksum_right() {
        for v6 in [false, true] {
            let mut f = tcp_frame(v6, b"data", false, false);
            // ECT(0)
            if v6 {
                f[ETH_LEN + 1] |= 0x20;
            } else {
                f[ETH_LEN + 1] |= 0x02;
                ipv4_header_checksum(&mut f, 20);
            }
            assert!(ecn_capable(&f));
            mark_ce(&mut f);
            assert_eq!(ecn(&f), Some(3));
            if let etherparse::NetSlice::Ipv4(ip) = SlicedPacket::from_ethernet(&f).unwrap().net.unwrap() {
                assert_eq!(ip.header().to_header().calc_header_checksum(), ip.header().header_checksum());
            }
        }
        assert!(!ecn_capable(&tcp_frame(false, b"", false, false)));
    }

    #[test]
    fn only_ip_traffic_other_than_neighbour_discovery_is_impaired() {
        assert!(impairable(&tcp_frame(false, b"x", false, false)));
        assert!(impairable(&tcp_frame(true, b"x", false, false)));
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert!(!impairable(&arp));
        let mut ns = tcp_frame(true, b"", false, false);
        ns[ETH_LEN + 6] = PROTO_ICMPV6;
        ns[ETH_LEN + 40] = 135;
        assert!(!impairable(&ns));
        ns[ETH_LEN + 40] = 128; // echo request
        assert!(impairable(&ns));
    }
}
