//! The floor under synx's round trips: the same datagrams sent back by
//! synx's own AF_XDP driver on synx's veth pair (`xsk-echo`: the benchmark object's
//! `synx_bench_reflect` redirects them, synx's `XskSocket` receives and transmits them, with
//! no TCP and no app) and by the kernel's UDP on the kernel's pair (`udp-echo`: one blocking
//! thread), measured by one client (`udp-ping`): one datagram in flight for the round-trip
//! floor (what `http` at c1 pays per request besides TCP and HTTP). A window of them measures
//! throughput, but on the bench's pairs the one client CPU is then the limit, not the path.

use std::{
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use synx::{
    bpf::XdpProgram,
    xsk::{XskConfig, XskSocket},
};

use crate::latency::Latencies;

/// Ethernet, IPv4 (no options: the reflect program passes any other) and UDP headers.
const HEADERS: usize = 14 + 20 + 8;

/// Send every datagram to [`BENCH_REFLECT_PORT`] on `iface` back where it came from, through
/// synx's AF_XDP driver, for `secs` (synx must not run on `iface`). The loop is an engine
/// thread's with nothing else to do: receive a batch, write each reply into a TX frame (one
/// copy, as synx's transmit copies each segment into the UMEM), flush once per batch (one
/// `sendto` kick), and sleep in `poll` until the socket is readable.
pub fn xsk_echo(iface: &str, secs: f64) -> anyhow::Result<serde_json::Value> {
    let mut prog = XdpProgram::load_bench(1, 1460).context("loading the benchmark object")?;
    // synx may have just closed its socket on the queue, whose release the kernel can finish a
    // moment later (the bind fails with EBUSY meanwhile).
    let mut xsk = XskSocket::open(iface, 0, XskConfig::default());
    for _ in 0..200 {
        if xsk.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        xsk = XskSocket::open(iface, 0, XskConfig::default());
    }
    let mut xsk = xsk?;
    prog.flow_table().register_xsk(0, xsk.fd())?;
    prog.attach_bench("synx_bench_reflect", iface)?;
    let start = Instant::now();
    let (mut echoed, mut malformed, mut tx_full, mut sleeps) = (0u64, 0u64, 0u64, 0u64);
    let mut batch: Vec<Vec<u8>> = Vec::new();
    let mut spare: Vec<Vec<u8>> = Vec::new();
    while start.elapsed().as_secs_f64() < secs {
        let got = xsk.recv(64, |frame, _| {
            let mut b = spare.pop().unwrap_or_default();
            b.clear();
            b.extend_from_slice(frame);
            batch.push(b);
            false
        });
        for mut f in batch.drain(..) {
            if f.len() < HEADERS {
                malformed += 1;
                spare.push(f);
                continue;
            }
            // Swap the Ethernet, IPv4 and UDP addresses: both checksums stay valid (a sum
            // of the same words in another order).
            let (dst, src) = f.split_at_mut(6);
            dst.swap_with_slice(&mut src[..6]);
            let (a, b) = f[26..34].split_at_mut(4);
            a.swap_with_slice(b);
            let (a, b) = f[34..38].split_at_mut(2);
            a.swap_with_slice(b);
            let sent = xsk.send(|buf| {
                let out = buf.get_mut(..f.len())?;
                out.copy_from_slice(&f);
                Some(0..f.len())
            });
            if sent {
                echoed += 1;
            } else {
                tx_full += 1;
            }
            spare.push(f);
        }
        xsk.flush();
        if got == 0 && !xsk.tx_stalled() {
            sleeps += 1;
            let mut pfd = libc::pollfd { fd: xsk.fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, 100) };
        }
    }
    let s = xsk.stats;
    let secs = start.elapsed().as_secs_f64();
    Ok(serde_json::json!({
        "echoed": echoed,
        "secs": secs,
        "malformed": malformed,
        "tx_full": tx_full,
        "sleeps": sleeps,
        "rx_frames": s.rx_frames,
        "tx_wakeups": s.tx_wakeups,
        "kernel_drops": xsk.kernel_drops(),
        "zero_copy": xsk.zero_copy(),
    }))
}

/// The kernel's UDP echo on `bind` for `secs`: one thread, blocking receive and send.
pub fn udp_echo(bind: SocketAddr, secs: f64) -> anyhow::Result<serde_json::Value> {
    let sock = UdpSocket::bind(bind).with_context(|| format!("binding {bind}"))?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let start = Instant::now();
    let (mut echoed, mut send_errors) = (0u64, 0u64);
    let mut buf = vec![0u8; 65536];
    while start.elapsed().as_secs_f64() < secs {
        let Ok((n, from)) = sock.recv_from(&mut buf) else { continue };
        match sock.send_to(&buf[..n], from) {
            Ok(_) => echoed += 1,
            Err(_) => send_errors += 1,
        }
    }
    Ok(serde_json::json!({ "echoed": echoed, "send_errors": send_errors, "secs": start.elapsed().as_secs_f64() }))
}

/// Datagrams of `size` bytes of payload to `addr` for `secs`, `window` in flight: each answer
/// (checked: the same bytes back) sends the next. A datagram not answered within 200 ms is
/// counted lost and replaced. With a window of 1 each sample is one round trip; with more,
/// datagrams go out and come back in batches (sendmmsg, recvmmsg), so the client spends as few
/// system calls as it can per datagram.
pub fn udp_ping(addr: SocketAddr, size: usize, window: usize, secs: f64, warmup: f64) -> anyhow::Result<serde_json::Value> {
    ensure!((1..=4096).contains(&window) && (8..=1472).contains(&size), "a window of 1..=4096 and 8..=1472 payload bytes");
    let sock = UdpSocket::bind(SocketAddr::new(if addr.is_ipv4() { [0u8; 4].into() } else { [0u16; 8].into() }, 0))?;
    sock.connect(addr)?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let fd = sock.as_raw_fd();
    // Room for the whole window both ways.
    let room = (window * (size + 512) * 2).max(1 << 16) as libc::c_int;
    for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
        // SAFETY: setsockopt with an int of the stated size.
        unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, opt, (&raw const room).cast(), std::mem::size_of::<libc::c_int>() as u32) };
    }
    const BATCH: usize = 64;
    let mut out = vec![vec![0x5au8; size]; BATCH];
    let mut back = vec![vec![0u8; 2048]; BATCH];
    // In flight: sequence number -> when sent.
    let mut sent_at = std::collections::VecDeque::<(u64, Instant)>::new();
    let mut seq = 0u64;
    let (mut answered, mut lost, mut wrong, mut send_errors) = (0u64, 0u64, 0u64, 0u64);
    let mut lat = Latencies::default();
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(warmup);
    let end = measure_from + Duration::from_secs_f64(secs);
    let mut counted_answers = 0u64;
    while Instant::now() < end {
        let n = (window - sent_at.len()).min(BATCH);
        if n > 0 {
            let mut iov: Vec<libc::iovec> = out[..n]
                .iter_mut()
                .enumerate()
                .map(|(i, b)| {
                    b[..8].copy_from_slice(&(seq + i as u64).to_le_bytes());
                    libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() }
                })
                .collect();
            let mut msgs = headers(&mut iov);
            // SAFETY: n valid headers pointing at live buffers.
            let sent = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), n as u32, 0) };
            if sent < 0 {
                send_errors += 1;
                ensure!(send_errors <= 1000, "{send_errors} send errors: {}", std::io::Error::last_os_error());
            } else {
                let t = Instant::now();
                for i in 0..sent as u64 {
                    sent_at.push_back((seq + i, t));
                }
                seq += sent as u64;
            }
        }
        let mut iov: Vec<libc::iovec> = back.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() }).collect();
        let mut msgs = headers(&mut iov);
        // Blocks (up to the read timeout) for the first, then takes what else is there.
        // SAFETY: BATCH valid headers pointing at live buffers.
        let got = unsafe { libc::recvmmsg(fd, msgs.as_mut_ptr(), BATCH as u32, libc::MSG_WAITFORONE, std::ptr::null_mut()) };
        if got <= 0 {
            // Nothing within the timeout: everything in flight is lost.
            lost += sent_at.len() as u64;
            sent_at.clear();
            continue;
        }
        let now = Instant::now();
        for (m, b) in msgs.iter().zip(&back).take(got as usize) {
            let n = m.msg_len as usize;
            let Some(head) = b.get(..8) else { continue };
            let got = u64::from_le_bytes(head.try_into().unwrap_or([0xff; 8]));
            if n != size || b[8..n] != out[0][8..] {
                wrong += 1;
            }
            // Answers come back in order on this path; older ones still waiting were lost.
            while let Some(&(s, t)) = sent_at.front() {
                if s > got {
                    break;
                }
                sent_at.pop_front();
                if s == got {
                    answered += 1;
                    if t >= measure_from {
                        counted_answers += 1;
                        lat.push(now.duration_since(t).as_nanos() as u64);
                    }
                } else {
                    lost += 1;
                }
            }
        }
    }
    ensure!(counted_answers > 0, "no answer in {secs} s ({lost} lost, {send_errors} send errors)");
    Ok(serde_json::json!({
        "size": size,
        "window": window,
        "secs": secs,
        "answered": answered,
        "per_s": counted_answers as f64 / secs,
        "lost": lost,
        "wrong": wrong,
        "send_errors": send_errors,
        "latency_ms": lat.summary(),
    }))
}

/// One message header per buffer, for sendmmsg and recvmmsg.
fn headers(iov: &mut [libc::iovec]) -> Vec<libc::mmsghdr> {
    iov.iter_mut()
        .map(|v| {
            // SAFETY: a zeroed mmsghdr is valid (no name, no control data).
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect()
}
