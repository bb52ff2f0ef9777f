use synx_tcp::{
    segment::{self, Flags, Header, Options},
    seq::SeqNum,
};

use super::*;

const SEG: usize = 4096 - 54;
const MSS: usize = 1448;
const LINK: Link = Link { local_mac: [2; 6], remote_mac: [4; 6] };

fn addrs(v6: bool) -> (SocketAddr, SocketAddr) {
    if v6 {
        ("[fd00:5eed::1]:80".parse().unwrap(), "[fd00:5eed::2]:40000".parse().unwrap())
    } else {
        ("198.18.0.1:80".parse().unwrap(), "198.18.0.2:40000".parse().unwrap())
    }
}

/// A data segment as the core writes it: timestamps on, `len` bytes of a counting pattern that
/// depends on the sequence number (so a payload in the wrong place shows).
fn header(seq: u32, flags: Flags) -> Header {
    Header {
        src_port: 80,
        dst_port: 40000,
        seq: SeqNum(seq),
        ack: SeqNum(777),
        flags,
        window: 501,
        urgent: 0,
        options: Options { timestamps: Some((1000, 2000)), ..Options::default() },
        ce: false,
    }
}

fn payload(seq: u32, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seq as usize + i).wrapping_mul(7) as u8).collect()
}

/// Write a segment at the train's tail as the core would, and offer it.
fn offer(t: &mut Train, h: &Header, len: usize, v6: bool) -> (Offer, Vec<u8>) {
    let data = payload(h.seq.0, len);
    let tail = t.tail();
    let n = segment::write(h, &data, tail).unwrap();
    let seg = tail[..n].to_vec();
    let (local, remote) = addrs(v6);
    (t.offer(&Written { local, remote, len: n, ect: false, connection: true }), seg)
}

/// What AF_XDP would have sent for this segment, frame by frame.
fn frame_of(seg: &[u8], v6: bool) -> Vec<u8> {
    let (local, remote) = addrs(v6);
    let l2l3 = wire::header_len(v6);
    let mut f = vec![0; l2l3 + seg.len()];
    f[l2l3..].copy_from_slice(seg);
    let n = wire::finish_ecn(&mut f, &LINK, local, remote, seg.len(), false).unwrap();
    f.truncate(n);
    f
}

fn split_frames(t: &Train) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let n = t.split(&LINK, |w| {
        let mut f = vec![0u8; 4096];
        let r = w(&mut f).unwrap();
        out.push(f[r].to_vec());
        true
    });
    assert_eq!(n as usize, out.len());
    out
}

/// RFC 1071 over big-endian 16-bit words, folded, not complemented.
fn ones_sum(data: &[u8], mut acc: u32) -> u16 {
    for c in data.chunks(2) {
        acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Linux's tcp_gso_segment, as far as it touches the TCP header: the first header copied to
/// each piece, its sequence number advanced, PSH and FIN kept for the last, CWR for the first;
/// each piece's checksum completed from the seed adjusted by the length (what the device
/// does). Then the link and IP headers rewritten per piece.
fn cut(frame: &[u8], v6: bool) -> Vec<Vec<u8>> {
    let vnet = &frame[..VNET_HDR_LEN];
    assert_eq!(vnet[0], VIRTIO_NET_HDR_F_NEEDS_CSUM);
    assert_eq!(vnet[1], if v6 { VIRTIO_NET_HDR_GSO_TCPV6 } else { VIRTIO_NET_HDR_GSO_TCPV4 });
    let le = |i: usize| usize::from(u16::from_le_bytes([vnet[i], vnet[i + 1]]));
    let (hdr_len, size, csum_start, csum_offset) = (le(2), le(4), le(6), le(8));
    let l2l3 = wire::header_len(v6);
    assert_eq!(csum_start, l2l3);
    assert_eq!(csum_offset, 16);
    let frame = &frame[VNET_HDR_LEN..];
    let (local, remote) = addrs(v6);
    // The IP header says the whole train.
    let ip_len = if v6 { usize::from(u16::from_be_bytes([frame[18], frame[19]])) + 40 } else { usize::from(u16::from_be_bytes([frame[16], frame[17]])) };
    assert_eq!(14 + ip_len, frame.len());
    // The seed is the pseudo-header's sum for the whole TCP length: a device completing the
    // checksum over the whole train (no cut) gets the right one.
    let tcp = &frame[csum_start..];
    let mut whole = tcp.to_vec();
    let check = !ones_sum(&whole, 0);
    whole[16..18].copy_from_slice(&[0, 0]);
    assert_eq!(check, wire::checksum_tcp(local.ip(), remote.ip(), &whole));
    let hlen = hdr_len - l2l3;
    let head = &tcp[..hlen];
    let body = &tcp[hlen..];
    let seq0 = u32::from_be_bytes(head[4..8].try_into().unwrap());
    body.chunks(size)
        .enumerate()
        .map(|(i, piece)| {
            let last = (i + 1) * size >= body.len();
            let mut seg = head.to_vec();
            seg[4..8].copy_from_slice(&seq0.wrapping_add((i * size) as u32).to_be_bytes());
            if !last {
                seg[13] &= !(PSH | FIN);
            }
            if i > 0 {
                seg[13] &= !CWR;
            }
            seg.extend_from_slice(piece);
            frame_of(&seg, v6)
        })
        .collect()
}

#[test]
fn a_train_cut_by_the_offload_is_the_segments_the_core_wrote() {
    for v6 in [false, true] {
        let mut t = Train::new(SEG);
        let mut sent = Vec::new();
        let mut seq = 5000u32;
        for i in 0..10 {
            let last = i == 9;
            let len = if last { 700 } else { MSS };
            let flags = if last { Flags::ACK | Flags::PSH } else { Flags::ACK };
            let (o, seg) = offer(&mut t, &header(seq, flags), len, v6);
            assert_eq!(o, if i == 0 { Offer::Started } else { Offer::Joined });
            sent.push(frame_of(&seg, v6));
            seq += len as u32;
        }
        assert_eq!(t.segments(), 10);
        assert!(t.full(), "a short segment ends the train");
        assert_eq!(split_frames(&t), sent, "v6 {v6}: split");
        let frame = t.frame(&LINK).unwrap().to_vec();
        assert_eq!(cut(&frame, v6), sent, "v6 {v6}: offload");
    }
}

#[test]
fn a_fin_ends_the_train_and_only_the_last_piece_carries_it() {
    let mut t = Train::new(SEG);
    let (_, a) = offer(&mut t, &header(1, Flags::ACK), MSS, false);
    let (o, b) = offer(&mut t, &header(1 + MSS as u32, Flags::ACK | Flags::PSH | Flags::FIN), MSS, false);
    assert_eq!(o, Offer::Joined);
    assert!(t.full());
    let frame = t.frame(&LINK).unwrap().to_vec();
    assert_eq!(cut(&frame, false), vec![frame_of(&a, false), frame_of(&b, false)]);
}

#[test]
fn what_does_not_continue_the_train_is_refused_and_starts_the_next() {
    let (local, remote) = addrs(false);
    // Another connection's segment.
    let mut t = Train::new(SEG);
    offer(&mut t, &header(1, Flags::ACK), MSS, false);
    let mut other = header(1 + MSS as u32, Flags::ACK);
    other.dst_port = 40001;
    let (o, seg) = offer(&mut t, &other, MSS, false);
    assert_eq!(o, Offer::Refused, "another port");
    let w = Written { local, remote, len: seg.len(), ect: false, connection: true };
    assert_eq!(t.restart(&w), Offer::Started);
    assert_eq!(t.segments(), 1);
    assert_eq!(split_frames(&t), vec![frame_of(&seg, false)], "the refused segment moved to the head intact");

    // A gap, a new ACK number, a longer segment than the first, an ECN change: refused.
    let cases: [(&str, Header, usize); 3] = [
        ("gap", header(1 + MSS as u32 + 1, Flags::ACK), MSS),
        ("ack", Header { ack: SeqNum(778), ..header(1 + MSS as u32, Flags::ACK) }, MSS),
        ("longer", header(1 + MSS as u32, Flags::ACK), MSS + 1),
    ];
    for (what, h, len) in cases {
        let mut t = Train::new(SEG);
        offer(&mut t, &header(1, Flags::ACK), MSS, false);
        assert_eq!(offer(&mut t, &h, len, false).0, Offer::Refused, "{what}");
    }
    let mut t = Train::new(SEG);
    offer(&mut t, &header(1, Flags::ACK), MSS, false);
    let data = payload(1 + MSS as u32, MSS);
    let tail = t.tail();
    let n = segment::write(&header(1 + MSS as u32, Flags::ACK), &data, tail).unwrap();
    assert_eq!(t.offer(&Written { local, remote, len: n, ect: true, connection: true }), Offer::Refused, "ECT");
}

#[test]
fn acks_resets_and_cwr_ride_alone() {
    let (local, remote) = addrs(false);
    for (what, flags, len, connection) in [
        ("pure ACK", Flags::ACK, 0, true),
        ("CWR", Flags::ACK | Flags::CWR, MSS, true),
        ("RST", Flags::RST | Flags::ACK, 0, false),
        ("no ACK", Flags::PSH, 10, true),
    ] {
        let mut t = Train::new(SEG);
        let data = payload(9, len);
        let tail = t.tail();
        let n = segment::write(&header(9, flags), &data, tail).unwrap();
        let seg = tail[..n].to_vec();
        assert_eq!(t.offer(&Written { local, remote, len: n, ect: false, connection }), Offer::Single, "{what}");
        assert_eq!(split_frames(&t), vec![frame_of(&seg, false)], "{what}");
        // Behind a train, it is refused, and alone after it.
        let mut t = Train::new(SEG);
        offer(&mut t, &header(1, Flags::ACK), MSS, false);
        let tail = t.tail();
        let n = segment::write(&header(9, flags), &data, tail).unwrap();
        let w = Written { local, remote, len: n, ect: false, connection };
        assert_eq!(t.offer(&w), Offer::Refused, "{what}");
        assert_eq!(t.restart(&w), Offer::Single, "{what}");
        assert_eq!(split_frames(&t), vec![frame_of(&seg, false)], "{what}");
    }
}

#[test]
fn a_train_stays_within_the_offloads_limits() {
    let mut t = Train::new(SEG);
    let mut seq = 1u32;
    let mut n = 0;
    while !t.full() {
        let (o, _) = offer(&mut t, &header(seq, Flags::ACK), MSS, false);
        assert_ne!(o, Offer::Refused);
        seq += MSS as u32;
        n += 1;
    }
    assert_eq!(n, t.segments());
    let frame = t.frame(&LINK).unwrap();
    assert!(frame.len() - VNET_HDR_LEN <= 65536 - 1000, "{} bytes", frame.len());
    assert!(usize::from(n) * MSS > MAX_TRAIN - MSS - 100);
    // Whatever comes next is refused, and starts the next train.
    let (o, _) = offer(&mut t, &header(seq, Flags::ACK), MSS, false);
    assert_eq!(o, Offer::Refused);
}

#[test]
fn a_truncated_or_garbled_segment_rides_alone_without_panicking() {
    let (local, remote) = addrs(false);
    let mut t = Train::new(SEG);
    let tail = t.tail();
    tail[..20].fill(0xff);
    assert_eq!(t.offer(&Written { local, remote, len: 20, ect: false, connection: true }), Offer::Single);
    let mut t = Train::new(SEG);
    assert_eq!(t.offer(&Written { local, remote, len: 3, ect: false, connection: true }), Offer::Single);
    // Split writes nothing it cannot frame.
    let mut framed = 0;
    t.split(&LINK, |w| {
        framed += usize::from(w(&mut [0u8; 4096]).is_some());
        true
    });
    assert_eq!(framed, 0);
}

#[test]
fn a_length_beyond_the_tail_is_cut_not_trusted() {
    let (local, remote) = addrs(false);
    // Alone at the head, and behind a train (where it is refused, then moved to the head).
    let mut t = Train::new(SEG);
    t.tail();
    assert_eq!(t.offer(&Written { local, remote, len: SEG + 500, ect: false, connection: true }), Offer::Single);
    let mut t = Train::new(SEG);
    offer(&mut t, &header(1, Flags::ACK), MSS, false);
    t.tail();
    let w = Written { local, remote, len: SEG + 500, ect: false, connection: true };
    assert_eq!(t.offer(&w), Offer::Refused);
    assert_eq!(t.restart(&w), Offer::Single);
    let mut framed = 0;
    t.split(&LINK, |w| {
        framed += usize::from(w(&mut [0u8; 4096]).is_some());
        true
    });
    assert!(framed <= 1);
}
