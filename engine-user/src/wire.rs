//! Ethernet / IPv4 / IPv6 framing around TCP segments, and the Internet checksum.
//!
//! Incoming frames are sliced with `etherparse` (bounds and length checks) and the TCP checksum
//! is verified against the pseudo-header (RFC 9293 3.1; never trusted from the NIC, since veth
//! leaves it partial). Outgoing frames are built in place: the TCP core writes the segment at
//! [`header_len`] into the buffer, then [`finish`] writes Ethernet and IP in front of it and
//! fills in both checksums.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use etherparse::{LinkSlice, NetSlice, SlicedPacket, TransportSlice};

const ETH_HLEN: usize = 14;
const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const ETHERTYPE_IPV6: [u8; 2] = [0x86, 0xdd];
const PROTO_TCP: u8 = 6;
/// Linux's default TTL / hop limit (net.ipv4.ip_default_ttl).
const DEFAULT_TTL: u8 = 64;

/// Why an incoming frame is not handed to the TCP core. Each is a counter in `synx stats`
/// (`engine::stats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("not an IP/TCP frame")]
    NotTcp,
    #[error("malformed frame")]
    Malformed,
    #[error("IP fragment")]
    Fragment,
    #[error("bad TCP checksum")]
    BadChecksum,
}

/// The link-layer addresses to answer with: we reply to the MAC the peer's frames came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Link {
    pub local_mac: [u8; 6],
    pub remote_mac: [u8; 6],
}

/// A received TCP segment with its addresses.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    pub link: Link,
    /// The peer (source) address.
    pub remote: SocketAddr,
    /// Our (destination) address.
    pub local: SocketAddr,
    /// TCP header, options and payload (checksum verified).
    pub tcp: &'a [u8],
    /// The IP header's ECN field is CE (RFC 3168 5).
    pub ce: bool,
}

/// Slice a frame into addresses and the TCP segment; verify the TCP checksum.
pub fn parse(frame: &[u8]) -> Result<Received<'_>, WireError> {
    let sliced = SlicedPacket::from_ethernet(frame).map_err(|_| WireError::Malformed)?;
    let Some(LinkSlice::Ethernet2(eth)) = &sliced.link else {
        return Err(WireError::NotTcp);
    };
    let link = Link { local_mac: eth.destination(), remote_mac: eth.source() };
    if !sliced.link_exts.is_empty() {
        return Err(WireError::NotTcp);
    }
    let (src_ip, dst_ip, fragmented, ecn): (IpAddr, IpAddr, bool, u8) = match &sliced.net {
        Some(NetSlice::Ipv4(v4)) => {
            let h = v4.header();
            (h.source_addr().into(), h.destination_addr().into(), v4.is_payload_fragmented(), h.ecn().value())
        }
        Some(NetSlice::Ipv6(v6)) => {
            let h = v6.header();
            (h.source_addr().into(), h.destination_addr().into(), v6.is_payload_fragmented(), h.ecn().value())
        }
        _ => return Err(WireError::NotTcp),
    };
    if fragmented {
        return Err(WireError::Fragment);
    }
    let Some(TransportSlice::Tcp(tcp)) = &sliced.transport else {
        return Err(WireError::NotTcp);
    };
    let segment = tcp.slice();
    if checksum_tcp(src_ip, dst_ip, segment) != 0 {
        return Err(WireError::BadChecksum);
    }
    Ok(Received {
        link,
        remote: SocketAddr::new(src_ip, tcp.source_port()),
        local: SocketAddr::new(dst_ip, tcp.destination_port()),
        tcp: segment,
        ce: ecn == ECN_CE,
    })
}

/// Bytes of Ethernet + IP header in front of the TCP segment for this address family.
pub fn header_len(v6: bool) -> usize {
    ETH_HLEN + if v6 { IPV6_HLEN } else { IPV4_HLEN }
}

/// ECN field values (RFC 3168 5), the low two bits of IPv4's TOS / IPv6's traffic class.
const ECN_ECT0: u8 = 0x02;
const ECN_CE: u8 = 0x03;

/// Write Ethernet and IP headers in front of the `tcp_len`-byte segment already at
/// `buf[header_len(..)..]`, and fill in the IP and TCP checksums. Returns the frame length, or
/// `None` when the addresses are of different families or the buffer is too small.
pub fn finish(buf: &mut [u8], link: &Link, local: SocketAddr, remote: SocketAddr, tcp_len: usize) -> Option<usize> {
    finish_ecn(buf, link, local, remote, tcp_len, false)
}

/// [`finish`], with the IP header marked ECN-capable, ECT(0), when `ect` (RFC 3168 5; the TCP
/// core says which segments: `Transmit::ect`).
pub fn finish_ecn(
    buf: &mut [u8],
    link: &Link,
    local: SocketAddr,
    remote: SocketAddr,
    tcp_len: usize,
    ect: bool,
) -> Option<usize> {
    let (hlen, total) = write_headers(buf, link, local, remote, tcp_len, ect)?;
    let tcp = &mut buf[hlen..total];
    tcp[16..18].copy_from_slice(&[0, 0]);
    let sum = checksum_tcp(local.ip(), remote.ip(), tcp);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    Some(total)
}

/// [`finish_ecn`] for a frame whose TCP checksum the device (or the kernel's GSO) completes:
/// the checksum field is seeded with the pseudo-header's sum, not complemented, as Linux's
/// `tcp_v4_send_check` leaves it for CHECKSUM_PARTIAL (the device adds the sum over the TCP
/// header and payload from there and stores its complement). The IP header says `tcp_len`,
/// which may be far beyond one MTU: the segmentation offload cuts it (see `engine::gso`).
pub fn finish_offloaded(
    buf: &mut [u8],
    link: &Link,
    local: SocketAddr,
    remote: SocketAddr,
    tcp_len: usize,
    ect: bool,
) -> Option<usize> {
    let (hlen, total) = write_headers(buf, link, local, remote, tcp_len, ect)?;
    // The folded sum, not complemented: `fold` complements, so undo that.
    let seed = !fold(pseudo_sum(local.ip(), remote.ip(), tcp_len)?);
    buf[hlen + 16..hlen + 18].copy_from_slice(&seed.to_be_bytes());
    Some(total)
}

/// Ethernet and IP headers in front of the `tcp_len`-byte segment at `buf[header_len(..)..]`:
/// (header length, frame length).
fn write_headers(
    buf: &mut [u8],
    link: &Link,
    local: SocketAddr,
    remote: SocketAddr,
    tcp_len: usize,
    ect: bool,
) -> Option<(usize, usize)> {
    let ecn = if ect { ECN_ECT0 } else { 0 };
    let v6 = match (local.ip(), remote.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => false,
        (IpAddr::V6(_), IpAddr::V6(_)) => true,
        _ => return None,
    };
    let hlen = header_len(v6);
    let total = hlen.checked_add(tcp_len)?;
    if total > buf.len() || tcp_len < 20 {
        return None;
    }
    buf[0..6].copy_from_slice(&link.remote_mac);
    buf[6..12].copy_from_slice(&link.local_mac);
    match (local.ip(), remote.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            buf[12..14].copy_from_slice(&ETHERTYPE_IPV4);
            write_ipv4(&mut buf[ETH_HLEN..hlen], src, dst, tcp_len, ecn)?;
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            buf[12..14].copy_from_slice(&ETHERTYPE_IPV6);
            write_ipv6(&mut buf[ETH_HLEN..hlen], src, dst, tcp_len, ecn)?;
        }
        _ => return None,
    }
    Some((hlen, total))
}

fn write_ipv4(h: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, payload: usize, ecn: u8) -> Option<()> {
    let total = u16::try_from(IPV4_HLEN + payload).ok()?;
    h[0] = 0x45; // version 4, IHL 5
    h[1] = ecn; // DSCP 0, ECN
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[4..6].copy_from_slice(&[0, 0]); // ID 0: atomic datagram (DF set), RFC 6864 4.1
    h[6..8].copy_from_slice(&[0x40, 0]); // DF
    h[8] = DEFAULT_TTL;
    h[9] = PROTO_TCP;
    h[10..12].copy_from_slice(&[0, 0]);
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let sum = checksum_ipv4_header(&h[..IPV4_HLEN]);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    Some(())
}

/// The IPv4 header checksum (RFC 791 3.1) over `header`, whose checksum field is zero.
pub fn checksum_ipv4_header(header: &[u8]) -> u16 {
    fold(sum_bytes(header, 0))
}

fn write_ipv6(h: &mut [u8], src: Ipv6Addr, dst: Ipv6Addr, payload: usize, ecn: u8) -> Option<()> {
    let len = u16::try_from(payload).ok()?;
    // Version 6, traffic class (DSCP 0, ECN), flow label 0.
    h[0..4].copy_from_slice(&[0x60 | (ecn >> 4), ecn << 4, 0, 0]);
    h[4..6].copy_from_slice(&len.to_be_bytes());
    h[6] = PROTO_TCP;
    h[7] = DEFAULT_TTL;
    h[8..24].copy_from_slice(&src.octets());
    h[24..40].copy_from_slice(&dst.octets());
    Some(())
}

/// Ones'-complement sum of `data` (big-endian 16-bit words) added to `acc` (RFC 1071), for
/// `data` that starts at an even offset of what is summed.
///
/// The words are summed in the machine's byte order and the sum swapped once at the end (RFC
/// 1071 2(B): the sum does not depend on byte order), 32 bits at a time into 64-bit lanes, eight
/// lanes per 32-byte block, which the compiler turns into vector adds: at least twice as fast
/// as summing big-endian 64-bit words (28 against 78 ns per 1448-byte segment), and every byte
/// synx sends or receives passes through here.
fn sum_bytes(data: &[u8], acc: u64) -> u64 {
    let (blocks, rest) = data.as_chunks::<32>();
    let mut lanes = [0u64; 8];
    for block in blocks {
        let (words, _) = block.as_chunks::<4>();
        for (lane, w) in lanes.iter_mut().zip(words) {
            *lane += u64::from(u32::from_ne_bytes(*w));
        }
    }
    // Each lane gains less than 2^32 per block: no overflow below 2^29 blocks (16 GiB).
    let mut sum: u64 = lanes.iter().sum();
    let (words, rest) = rest.as_chunks::<4>();
    for w in words {
        sum += u64::from(u32::from_ne_bytes(*w));
    }
    // The last one to three bytes, padded with zeros after them as RFC 1071 pads an odd byte.
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    sum += u64::from(u32::from_ne_bytes(tail));
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    acc + u64::from(u16::from_be(sum as u16))
}

/// Fold a 64-bit ones'-complement accumulator to 16 bits and complement it.
fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The TCP checksum over pseudo-header and segment (RFC 9293 3.1, RFC 8200 8.1). Over a
/// segment whose checksum field is filled in, a correct checksum yields 0.
pub fn checksum_tcp(src: IpAddr, dst: IpAddr, segment: &[u8]) -> u16 {
    match pseudo_sum(src, dst, segment.len()) {
        Some(acc) => fold(sum_bytes(segment, acc)),
        // Mixed families cannot come from one IP header; make the check fail.
        None => 0xffff,
    }
}

/// The ones'-complement accumulator of the pseudo-header (RFC 9293 3.1, RFC 8200 8.1), or
/// `None` for addresses of different families.
fn pseudo_sum(src: IpAddr, dst: IpAddr, tcp_len: usize) -> Option<u64> {
    let mut acc = 0u64;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            acc = sum_bytes(&s.octets(), acc);
            acc = sum_bytes(&d.octets(), acc);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            acc = sum_bytes(&s.octets(), acc);
            acc = sum_bytes(&d.octets(), acc);
        }
        _ => return None,
    }
    Some(acc + u64::from(PROTO_TCP) + tcp_len as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ecn_marks_both_ways() {
        let link = Link { local_mac: [2; 6], remote_mac: [4; 6] };
        for (local, remote) in [("198.18.0.1:80", "198.18.0.2:4000"), ("[fd00:5eed::1]:80", "[fd00:5eed::2]:4000")] {
            let (local, remote): (SocketAddr, SocketAddr) = (local.parse().unwrap(), remote.parse().unwrap());
            let hlen = header_len(local.is_ipv6());
            let mut buf = vec![0u8; hlen + 20];
            buf[hlen + 12] = 5 << 4; // data offset 5
            for ect in [false, true] {
                let n = finish_ecn(&mut buf, &link, local, remote, 20, ect).unwrap();
                // The frame, mirrored, parses back with its ECN field; CE is what a router sets.
                let mut rx = buf[..n].to_vec();
                rx[0..6].copy_from_slice(&link.local_mac);
                let field = if local.is_ipv6() { (rx[ETH_HLEN] & 0x0f) << 4 | rx[ETH_HLEN + 1] >> 4 } else { rx[ETH_HLEN + 1] };
                assert_eq!(field & 0x03, if ect { ECN_ECT0 } else { 0 }, "{local}");
                assert!(!parse(&rx).unwrap().ce);
                if !local.is_ipv6() {
                    // Mark CE and fix the IPv4 header checksum.
                    rx[ETH_HLEN + 1] |= ECN_CE;
                    rx[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&[0, 0]);
                    let sum = fold(sum_bytes(&rx[ETH_HLEN..ETH_HLEN + IPV4_HLEN], 0));
                    rx[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&sum.to_be_bytes());
                } else {
                    rx[ETH_HLEN + 1] |= ECN_CE << 4;
                }
                assert!(parse(&rx).unwrap().ce, "{local}");
            }
        }
    }

    use etherparse::PacketBuilder;
    use proptest::prelude::*;

    use super::*;

    const A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 2];

    fn v4_frame(payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(A, B)
            .ipv4([198, 18, 0, 2], [198, 18, 0, 1], 64)
            .tcp(40000, 80, 1234, 65535)
            .ack(99)
            .psh();
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    #[test]
    fn parses_v4_and_verifies_checksum() {
        let f = v4_frame(b"hello");
        let r = parse(&f).unwrap();
        assert_eq!(r.remote, "198.18.0.2:40000".parse().unwrap());
        assert_eq!(r.local, "198.18.0.1:80".parse().unwrap());
        assert_eq!(r.link, Link { local_mac: B, remote_mac: A });
        assert_eq!(&r.tcp[20..], b"hello");
        let mut bad = f.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(parse(&bad).unwrap_err(), WireError::BadChecksum);
    }

    #[test]
    fn parses_v6() {
        let b = PacketBuilder::ethernet2(A, B)
            .ipv6(
                "fd00:5eed::2".parse::<Ipv6Addr>().unwrap().octets(),
                "fd00:5eed::1".parse::<Ipv6Addr>().unwrap().octets(),
                64,
            )
            .tcp(40000, 80, 1, 100)
            .syn();
        let mut f = Vec::new();
        b.write(&mut f, &[]).unwrap();
        let r = parse(&f).unwrap();
        assert_eq!(r.remote, "[fd00:5eed::2]:40000".parse().unwrap());
        assert_eq!(r.tcp.len(), 20);
    }

    #[test]
    fn rejects_non_tcp_truncated_and_fragments() {
        let udp = {
            let b = PacketBuilder::ethernet2(A, B).ipv4([1, 1, 1, 1], [2, 2, 2, 2], 64).udp(1, 2);
            let mut f = Vec::new();
            b.write(&mut f, b"x").unwrap();
            f
        };
        assert_eq!(parse(&udp).unwrap_err(), WireError::NotTcp);
        let f = v4_frame(b"hello");
        for cut in [0, 10, 14, 20, 33, 40, 50] {
            assert!(parse(&f[..cut]).is_err(), "cut at {cut}");
        }
        let mut frag = f.clone();
        frag[14 + 6] |= 0x20; // more fragments
        // Fix the IPv4 header checksum so only the fragment bit is wrong.
        frag[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
        let sum = fold(sum_bytes(&frag[14..34], 0));
        frag[14 + 10..14 + 12].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(parse(&frag).unwrap_err(), WireError::Fragment);
    }

    #[test]
    fn finish_builds_frames_that_parse_back() {
        for (local, remote) in [
            ("198.18.0.1:80", "198.18.0.2:40000"),
            ("[fd00:5eed::1]:80", "[fd00:5eed::2]:40000"),
        ] {
            let local: SocketAddr = local.parse().unwrap();
            let remote: SocketAddr = remote.parse().unwrap();
            let link = Link { local_mac: B, remote_mac: A };
            let mut buf = vec![0u8; 200];
            let h = header_len(local.is_ipv6());
            // A bare 20-byte TCP header with 3 bytes of payload.
            let tcp = &mut buf[h..h + 23];
            tcp[0..2].copy_from_slice(&local.port().to_be_bytes());
            tcp[2..4].copy_from_slice(&remote.port().to_be_bytes());
            tcp[12] = 5 << 4;
            tcp[13] = 0x18;
            tcp[20..23].copy_from_slice(b"abc");
            let n = finish(&mut buf, &link, local, remote, 23).unwrap();
            // Parse it as the peer would see it (addresses mirrored).
            let r = parse(&buf[..n]).unwrap();
            assert_eq!(r.remote, local);
            assert_eq!(r.local, remote);
            assert_eq!(&r.tcp[20..], b"abc");
            // etherparse agrees about the IPv4 header checksum.
            if !local.is_ipv6() {
                let ip = etherparse::Ipv4HeaderSlice::from_slice(&buf[14..34]).unwrap();
                assert_eq!(ip.header_checksum(), ip.to_header().calc_header_checksum());
            }
        }
        let v4: SocketAddr = "198.18.0.1:1".parse().unwrap();
        let v6: SocketAddr = "[fd00::1]:1".parse().unwrap();
        assert!(finish(&mut [0u8; 100], &Link::default(), v4, v6, 20).is_none());
        assert!(finish(&mut [0u8; 40], &Link::default(), v4, v4, 20).is_none());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&data);
        }

        #[test]
        fn checksum_matches_naive(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut naive = 0u32;
            for c in data.chunks(2) {
                let w = if c.len() == 2 { u16::from_be_bytes([c[0], c[1]]) } else { u16::from(c[0]) << 8 };
                naive += u32::from(w);
            }
            while naive >> 16 != 0 { naive = (naive & 0xffff) + (naive >> 16); }
            prop_assert_eq!(fold(sum_bytes(&data, 0)), !(naive as u16));
        }
    }
}
