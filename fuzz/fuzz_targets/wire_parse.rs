//! Frame parsing as the engine meets frames from the AF_XDP ring:
//! - any bytes: no panic; a frame taken has a TCP segment inside it whose checksum verifies
//!   against the addresses reported;
//! - a frame the engine writes (`wire::finish` around a segment `segment::write` made) parses
//!   back to the same addresses, link addresses, header and payload, IPv4 and IPv6.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use synx::wire::{self, Link};
use synx_tcp::{Flags, Header, SeqNum, segment};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = wire::parse(data) {
        let (start, end) = (data.as_ptr() as usize, data.as_ptr() as usize + data.len());
        let tcp = r.tcp.as_ptr() as usize;
        assert!(tcp >= start && tcp + r.tcp.len() <= end);
        assert!(r.tcp.len() >= 20);
        assert_eq!(r.local.is_ipv4(), r.remote.is_ipv4());
        assert_eq!(wire::checksum_tcp(r.remote.ip(), r.local.ip(), r.tcp), 0);
    }

    if data.len() < 48 {
        return;
    }
    let (head, payload) = data.split_at(48);
    let payload = &payload[..payload.len().min(1460)];
    let word = |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    let (local, remote): (IpAddr, IpAddr) = if head[0] & 1 == 0 {
        (Ipv4Addr::from(word(4)).into(), Ipv4Addr::from(word(8)).into())
    } else {
        let mut a = [0u8; 16];
        a.copy_from_slice(&head[4..20]);
        let mut b = [0u8; 16];
        b.copy_from_slice(&head[20..36]);
        (Ipv6Addr::from(a).into(), Ipv6Addr::from(b).into())
    };
    let local = SocketAddr::new(local, u16::from_le_bytes([head[36], head[37]]));
    let remote = SocketAddr::new(remote, u16::from_le_bytes([head[38], head[39]]));
    let mut h = Header {
        src_port: local.port(),
        dst_port: remote.port(),
        seq: SeqNum(word(40)),
        ack: SeqNum(word(44)),
        flags: Flags(head[1]),
        window: u16::from_le_bytes([head[2], head[3]]),
        ..Default::default()
    };
    if head[0] & 2 != 0 {
        h.options.timestamps = Some((word(8), word(12)));
    }
    if head[0] & 4 != 0 {
        h.options.mss = Some(u16::from_le_bytes([head[16], head[17]]));
    }
    let link = Link { local_mac: [2, 0, 0, 0, 0, 1], remote_mac: [2, 0, 0, 0, 0, 2] };
    let mut buf = vec![0u8; 1600];
    let hlen = wire::header_len(local.is_ipv6());
    let tcp_len = segment::write(&h, payload, &mut buf[hlen..]).expect("a segment fits the buffer");
    let len = wire::finish(&mut buf, &link, local, remote, tcp_len).expect("a frame fits the buffer");
    let r = wire::parse(&buf[..len]).expect("our own frame parses");
    assert_eq!((r.local, r.remote), (remote, local), "addresses swapped or lost");
    assert_eq!((r.link.local_mac, r.link.remote_mac), (link.remote_mac, link.local_mac));
    let (parsed, body) = segment::parse(r.tcp).expect("our own segment parses");
    assert_eq!(body, payload);
    assert_eq!((parsed.seq, parsed.ack, parsed.flags, parsed.window), (h.seq, h.ack, h.flags, h.window));
    assert_eq!((parsed.options.timestamps, parsed.options.mss), (h.options.timestamps, h.options.mss));
});
