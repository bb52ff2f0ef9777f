//! The floor under synx's bulk transmit: AF_XDP transmit alone, through synx's own driver
//! (`synx::xsk::XskSocket`: its TX ring, its batching and wakeups, its completion reaping),
//! with no TCP, no app and no receive work. Each frame is a full-sized UDP datagram to an
//! address whose frames the client end's sink drops in XDP, so the client side costs as
//! little as it can and the server side's cost per frame is the kernel's copy-mode transmit
//! (skb allocation, the copy out of the UMEM, veth's transmit, the completion) plus the driver
//! loop around it.

use std::{net::Ipv4Addr, time::Instant};

use anyhow::ensure;
use etherparse::PacketBuilder;
use synx::xsk::{XskConfig, XskSocket};

pub struct Options {
    pub iface: String,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// Bytes per frame, Ethernet header included.
    pub len: usize,
    pub secs: f64,
    /// Frames per second to offer, in batches of [`PACED_BATCH`] with sleeps between them
    /// (0: as fast as the kernel takes them, spinning while the device pushes back).
    pub rate: f64,
}

/// Frames per wakeup when paced: about what synx's bulk transmit sends per wakeup when it
/// batches well.
const PACED_BATCH: u64 = 32;

/// UDP header and the IPv4 and Ethernet headers in front of it.
const HEADERS: usize = 14 + 20 + 8;

pub fn run(o: &Options) -> anyhow::Result<serde_json::Value> {
    ensure!((HEADERS + 1..=1514).contains(&o.len), "a frame of {} bytes: {}..=1514 fit the MTU", o.len, HEADERS + 1);
    let mut frame = Vec::with_capacity(o.len);
    PacketBuilder::ethernet2(o.src_mac, o.dst_mac)
        .ipv4(o.src.octets(), o.dst.octets(), 64)
        .udp(9, 9)
        .write(&mut frame, &vec![0x5a; o.len - HEADERS])?;
    // synx has just closed its socket on the queue, whose release the kernel may finish a
    // moment later (the bind fails with EBUSY meanwhile).
    let mut xsk = XskSocket::open(&o.iface, 0, XskConfig::default());
    for _ in 0..200 {
        if xsk.is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        xsk = XskSocket::open(&o.iface, 0, XskConfig::default());
    }
    let mut xsk = xsk?;
    let start = Instant::now();
    let (mut checked, mut stalls) = (0u64, 0u64);
    loop {
        if o.rate > 0.0 && checked.is_multiple_of(PACED_BATCH) {
            xsk.flush();
            // Sleep to the batch's scheduled time: the server CPU's busy time is then the
            // transmit's own, not time spent spinning on a device that pushes back.
            let due = start + std::time::Duration::from_secs_f64(checked as f64 / o.rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if start.elapsed().as_secs_f64() >= o.secs {
                break;
            }
        }
        // Each TX frame is written once: the frames are all alike, so a buffer that already
        // holds the datagram (it went out before) is sent as it is, and the floor leaves out
        // the copy of the payload into the UMEM that synx's core does per segment.
        let queued = xsk.send(|buf| {
            let buf = buf.get_mut(..frame.len())?;
            if buf[..HEADERS] != frame[..HEADERS] {
                buf.copy_from_slice(&frame);
            }
            Some(0..frame.len())
        });
        if !queued {
            // Every frame is in the kernel's hands: send what is queued, reap what came back.
            xsk.flush();
            stalls += 1;
        }
        checked += 1;
        if o.rate == 0.0 && checked.is_multiple_of(4096) && start.elapsed().as_secs_f64() >= o.secs {
            break;
        }
    }
    xsk.flush();
    let secs = start.elapsed().as_secs_f64();
    let s = xsk.stats;
    Ok(serde_json::json!({
        "frames": s.tx_completed,
        "frame_len": o.len,
        "offered_rate": o.rate,
        "secs": secs,
        "frames_per_s": s.tx_completed as f64 / secs,
        "tx_wakeups": s.tx_wakeups,
        "frames_per_wakeup": s.tx_frames as f64 / s.tx_wakeups.max(1) as f64,
        "tx_full": s.tx_full,
        "stalls": stalls,
        "zero_copy": xsk.zero_copy(),
        "tx_budget": xsk.tx_budget(),
    }))
}
