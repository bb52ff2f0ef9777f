//! The SYN flood's second generator, for kernels whose BPF_PROG_TEST_RUN refuses live-frame
//! mode (the v1300 kernel builds of this project's VMs answer EPERM): the frames of
//! `synx_bench_flood` (its template, and the same source address, port and ISN for the n-th
//! frame) sent through an AF_PACKET socket with PACKET_QDISC_BYPASS, a batch per sendmmsg,
//! open loop. What it costs beyond the live mode: the sender builds an skb and copies each
//! frame (on the generator's CPU), and the receiving veth copies each skb into a page with
//! XDP's headroom before any XDP program sees it (on the server's NAPI, for every XDP peer
//! alike; the kernel listener's frames take the skb path with no copy).

use std::{
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Instant,
};

use anyhow::{Context as _, bail, ensure};
use engine_common::maps::FLOOD_FRAME_LEN;

/// Frames per sendmmsg.
const BATCH: usize = 64;
const IP: usize = 14;
const TCP: usize = IP + 20;

/// The n-th frame of the flood, as `synx_bench_flood` makes it: source `src_base + 1 + n %
/// sources`, port `1024 + n % 60000`, ISN `n * 2654435761`, both checksums computed.
pub fn frame(template: &[u8; FLOOD_FRAME_LEN], n: u32, src_base: Ipv4Addr, sources: u32, out: &mut [u8; FLOOD_FRAME_LEN]) {
    *out = *template;
    let src = Ipv4Addr::from(u32::from(src_base).wrapping_add(1 + n % sources.max(1)));
    out[IP + 12..IP + 16].copy_from_slice(&src.octets());
    out[TCP..TCP + 2].copy_from_slice(&((1024 + n % 60000) as u16).to_be_bytes());
    out[TCP + 4..TCP + 8].copy_from_slice(&n.wrapping_mul(2_654_435_761).to_be_bytes());
    out[IP + 10..IP + 12].fill(0);
    let sum = synx::wire::checksum_ipv4_header(&out[IP..TCP]);
    out[IP + 10..IP + 12].copy_from_slice(&sum.to_be_bytes());
    let dst = Ipv4Addr::new(out[IP + 16], out[IP + 17], out[IP + 18], out[IP + 19]);
    out[TCP + 16..TCP + 18].fill(0);
    let c = synx::wire::checksum_tcp(IpAddr::V4(src), IpAddr::V4(dst), &out[TCP..]);
    out[TCP + 16..TCP + 18].copy_from_slice(&c.to_be_bytes());
}

/// Send the flood out of `iface` for `secs`. Reports `frames` offered: `accepted` by the device
/// and `refused` (its queue stopped on a full ring), which an open-loop generator counts and
/// goes on from.
pub fn flood(iface: &str, template: &[u8], src_base: Ipv4Addr, sources: u32, secs: f64) -> anyhow::Result<serde_json::Value> {
    let template: &[u8; FLOOD_FRAME_LEN] = template.try_into().context("the flood template's length")?;
    let name = std::ffi::CString::new(iface)?;
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    ensure!(ifindex != 0, "no interface {iface}: {}", std::io::Error::last_os_error());
    // Protocol 0: the socket receives nothing, it only sends.
    // SAFETY: plain syscalls on a socket this function owns.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    ensure!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor, owned from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: an int option of the right size.
    let r = unsafe {
        libc::setsockopt(fd.as_raw_fd(), libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, (&one as *const libc::c_int).cast(), size_of::<libc::c_int>() as libc::socklen_t)
    };
    ensure!(r == 0, "PACKET_QDISC_BYPASS: {}", std::io::Error::last_os_error());
    // Each frame in flight is charged to the socket until the receiving side frees it: with the
    // default send buffer (some 270 of these skbs) a slow peer would hold the generator back,
    // closed loop. A buffer well past veth's ring (256 frames) leaves the ring the limit.
    let sndbuf: libc::c_int = 64 << 20;
    // SAFETY: an int option of the right size.
    let r = unsafe {
        libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, (&sndbuf as *const libc::c_int).cast(), size_of::<libc::c_int>() as libc::socklen_t)
    };
    ensure!(r == 0, "SO_SNDBUFFORCE: {}", std::io::Error::last_os_error());
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: a sockaddr_ll of its own size.
    let r = unsafe { libc::bind(fd.as_raw_fd(), (&sll as *const libc::sockaddr_ll).cast(), size_of::<libc::sockaddr_ll>() as libc::socklen_t) };
    ensure!(r == 0, "binding to {iface}: {}", std::io::Error::last_os_error());

    let mut frames = vec![[0u8; FLOOD_FRAME_LEN]; BATCH];
    let mut iov: Vec<libc::iovec> =
        frames.iter_mut().map(|f| libc::iovec { iov_base: f.as_mut_ptr().cast(), iov_len: FLOOD_FRAME_LEN }).collect();
    // SAFETY: all-zero is a valid mmsghdr (no name, no control).
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
    }
    // Each frame is tried once: one the device refuses is counted and the next one follows,
    // as a NIC drops what its full ring cannot take. `next`: the first frame of the batch not
    // yet tried.
    let (mut n, mut sent, mut refused, mut calls, mut next) = (0u32, 0u64, 0u64, 0u64, BATCH);
    let start = Instant::now();
    loop {
        if next == BATCH {
            for f in frames.iter_mut() {
                frame(template, n, src_base, sources, f);
                n = n.wrapping_add(1);
            }
            next = 0;
        }
        let tried = BATCH - next;
        // The frames and the iovecs the headers point to live through the call.
        // SAFETY: the headers from `next` on, each with one iovec over a frame of `frames`.
        let r = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs[next..].as_mut_ptr(), tried as u32, libc::MSG_DONTWAIT) };
        calls += 1;
        // sendmmsg stops at the first frame the device refuses: -1 when it is the first,
        // else the count sent before it.
        let took = if r < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                // The device's queue is stopped (veth's ring is full) or, never blocking, the
                // send buffer is: the server is behind.
                Some(libc::ENOBUFS | libc::EAGAIN) => 0,
                _ => bail!("sendmmsg on {iface}: {e}"),
            }
        } else {
            r as usize
        };
        sent += took as u64;
        next += took;
        if took < tried {
            refused += 1;
            next += 1;
        }
        if calls.is_multiple_of(64) && start.elapsed().as_secs_f64() >= secs {
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(serde_json::json!({
        "generator": "af_packet",
        // Offered: what the device took and what it turned away.
        "frames": sent + refused,
        "accepted": sent,
        "refused": refused,
        "secs": secs,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frames are the live generator's: same fields, valid checksums, distinct tuples.
    #[test]
    fn frames_are_valid_syns_with_the_live_generators_tuples() {
        let dst = "198.18.0.1:7".parse().unwrap();
        let base = Ipv4Addr::new(198, 19, 0, 0);
        let (t, _) = synx::bpf::flood_template([2; 6], [4; 6], dst, base, 1000, false).unwrap();
        let t: [u8; FLOOD_FRAME_LEN] = t.try_into().unwrap();
        let mut f = [0u8; FLOOD_FRAME_LEN];
        for n in [0u32, 1, 999, 1000, 59_999, 60_000, u32::MAX] {
            frame(&t, n, base, 1000, &mut f);
            let p = etherparse::SlicedPacket::from_ethernet(&f).unwrap();
            let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else { panic!("not IPv4") };
            let Some(etherparse::TransportSlice::Tcp(tcp)) = p.transport else { panic!("not TCP") };
            let h = ip.header();
            assert_eq!(h.to_header().calc_header_checksum(), h.header_checksum());
            assert_eq!(h.source_addr(), Ipv4Addr::from(u32::from(base) + 1 + n % 1000));
            assert_eq!(h.destination_addr(), *dst.ip());
            assert!(tcp.syn() && !tcp.ack());
            assert_eq!(tcp.source_port(), (1024 + n % 60000) as u16);
            assert_eq!(tcp.destination_port(), 7);
            assert_eq!(tcp.sequence_number(), n.wrapping_mul(2_654_435_761));
            assert_eq!(synx::wire::checksum_tcp(IpAddr::V4(h.source_addr()), IpAddr::V4(h.destination_addr()), &f[TCP..]), 0);
        }
    }
}
