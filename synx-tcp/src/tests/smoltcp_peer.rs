//! Interop with an implementation we did not write: a smoltcp client against our server TCB.
//! The test plays XDP for the handshake (answers smoltcp's SYN with a SYN-ACK and builds the
//! facts a cookie would carry), then moves data both ways over a seeded lossy link and closes.

use core::time::Duration;
use std::collections::VecDeque;
use std::sync::Arc;

use engine_common::handshake::{FACT_SACK, FACT_TS, FACT_WSCALE, HandshakeFacts};
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketSet};
use smoltcp::phy::{ChecksumCapabilities, Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp as smol;
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};

use super::simulator::Rng;
use super::*;

const SERVER_IP: [u8; 4] = [10, 0, 0, 1];
const CLIENT_IP: [u8; 4] = [10, 0, 0, 2];

/// smoltcp's side of the wire: IPv4 packets in and out.
#[derive(Default)]
struct Wire {
    to_smol: VecDeque<Vec<u8>>,
    from_smol: VecDeque<Vec<u8>>,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = vec![0; len];
        let r = f(&mut b);
        self.0.push_back(b);
        r
    }
}

impl Device for Wire {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;
    fn receive(&mut self, _t: SmolInstant) -> Option<(Rx, Tx<'_>)> {
        let p = self.to_smol.pop_front()?;
        Some((Rx(p), Tx(&mut self.from_smol)))
    }
    fn transmit(&mut self, _t: SmolInstant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.from_smol))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ip;
        c.max_transmission_unit = 1500;
        // Our core leaves checksums to the wire layer; this test has none.
        c.checksum = ChecksumCapabilities::ignored();
        c
    }
}

fn ipv4(src: [u8; 4], dst: [u8; 4], tcp: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; 20];
    v[0] = 0x45;
    v[2..4].copy_from_slice(&((20 + tcp.len()) as u16).to_be_bytes());
    v[8] = 64;
    v[9] = 6;
    v[12..16].copy_from_slice(&src);
    v[16..20].copy_from_slice(&dst);
    v.extend_from_slice(tcp);
    v
}

fn tcp_of(ip: &[u8]) -> &[u8] {
    let ihl = (ip[0] & 15) as usize * 4;
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    &ip[ihl..total]
}

fn smol_now(t: Instant) -> SmolInstant {
    SmolInstant::from_micros((t.as_nanos() / 1000) as i64)
}

fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_left(11) as u8 ^ salt).collect()
}

/// How our server closes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Close {
    /// As soon as its data is queued: FINs may cross (simultaneous close).
    Eager,
    /// After the client's FIN (passive close). smoltcp 0.12 drops its retransmission timer when
    /// a FIN arrives in FIN-WAIT-1 before its own FIN is acknowledged (it enters CLOSING with
    /// `timer.set_for_idle`), so with loss and crossing FINs it can stall with data still
    /// unacknowledged; a lossy run therefore closes passively.
    AfterPeer,
}

/// One run: `bytes` each way, `loss` per mille each way. Returns our connection's stats.
fn run(seed: u64, bytes: usize, loss: u64, close: Close) -> connection::Stats {
    let mut rng = Rng(seed);
    let mut wire = Wire::default();
    let mut cfg = IfaceConfig::new(HardwareAddress::Ip);
    cfg.random_seed = seed;
    let mut iface = Interface::new(cfg, &mut wire, SmolInstant::ZERO);
    iface.update_ip_addrs(|a| {
        a.push(IpCidr::new(IpAddress::v4(10, 0, 0, 2), 24)).unwrap();
    });
    let mut sockets = SocketSet::new(vec![]);
    let sock = smol::Socket::new(smol::SocketBuffer::new(vec![0; 256 * 1024]), smol::SocketBuffer::new(vec![0; 256 * 1024]));
    let handle = sockets.add(sock);
    sockets.get_mut::<smol::Socket>(handle).connect(iface.context(), (IpAddress::v4(10, 0, 0, 1), 80), 40000).unwrap();

    let config = Arc::new(Config { recv_buffer: 128 * 1024, send_buffer: 128 * 1024, ..config() });
    let mut server: Option<Connection> = None;
    let mut facts_for_ack: Option<HandshakeFacts> = None;
    let to_server = pattern(bytes, 0x11);
    let to_client = pattern(bytes, 0x77);
    let (mut c_sent, mut s_sent) = (0usize, 0usize);
    let (mut c_got, mut s_got) = (Vec::new(), Vec::new());
    let (mut c_closed, mut s_shut) = (false, false);
    // (deliver at, to smoltcp?, IPv4 packet)
    let mut link: Vec<(Instant, bool, Vec<u8>)> = Vec::new();
    let delay = Duration::from_millis(5);
    let mut now = ms(0);
    let mut buf = vec![0u8; 2048];
    for _round in 0..2_000_000 {
        // smoltcp: app then stack.
        {
            let s = sockets.get_mut::<smol::Socket>(handle);
            if s.can_send() && c_sent < to_server.len() {
                c_sent += s.send_slice(&to_server[c_sent..]).unwrap();
            }
            if c_sent == to_server.len() && !c_closed && s.may_send() {
                s.close();
                c_closed = true;
            }
            while s.can_recv() {
                let n = s.recv_slice(&mut buf).unwrap();
                c_got.extend_from_slice(&buf[..n]);
            }
        }
        iface.poll(smol_now(now), &mut wire, &mut sockets);
        while let Some(p) = wire.from_smol.pop_front() {
            if !rng.chance(loss) {
                link.push((now + delay, false, p));
            }
        }
        // Our server: app then output.
        if let Some(c) = server.as_mut() {
            if s_sent < to_client.len() {
                s_sent += c.send(&to_client[s_sent..]);
            } else if !s_shut && (close == Close::Eager || c.is_eof()) {
                c.shutdown(now);
                s_shut = true;
            }
            loop {
                let n = c.recv(&mut buf);
                if n == 0 {
                    break;
                }
                s_got.extend_from_slice(&buf[..n]);
            }
            while let Some(n) = c.poll_transmit(now, &mut buf) {
                if !rng.chance(loss) {
                    link.push((now + delay, true, ipv4(SERVER_IP, CLIENT_IP, &buf[..n])));
                }
            }
        }
        let smol_state = sockets.get::<smol::Socket>(handle).state();
        let ours_done = server.as_ref().is_some_and(|c| c.state() == State::Closed);
        if ours_done && matches!(smol_state, smol::State::Closed | smol::State::TimeWait) {
            break;
        }
        // Next event.
        let next_link = link.iter().map(|l| l.0).min();
        let next_ours = server.as_ref().and_then(|c| c.poll_timeout());
        let next_smol = iface.poll_delay(smol_now(now), &sockets).map(|d| now + Duration::from_micros(d.total_micros()));
        let next = [next_link, next_ours, next_smol].into_iter().flatten().min().expect("something scheduled");
        now = now.max(next);
        assert!(now < secs(600), "interop run does not converge: {smol_state} / {:?}", server.as_ref().map(|c| c.state()));
        link.sort_by_key(|l| l.0);
        let due = link.iter().take_while(|l| l.0 <= now).count();
        let arrived: Vec<_> = link.drain(..due).collect();
        for (_, to_smol, p) in arrived {
            if to_smol {
                if std::env::var_os("SIM_TRACE").is_some() {
                    let (h, pl) = segment::parse(tcp_of(&p)).unwrap();
                    eprintln!("{now:?} us->smol {:?} seq={} ack={} win={} len={}", h.flags, h.seq, h.ack, h.window, pl.len());
                }
                wire.to_smol.push_back(p);
                continue;
            }
            let (h, payload) = segment::parse(tcp_of(&p)).unwrap();
            if std::env::var_os("SIM_TRACE").is_some() {
                eprintln!("{now:?} smol->us {:?} seq={} ack={} win={} len={} {:?}", h.flags, h.seq, h.ack, h.window, payload.len(), server.as_ref().map(|c| c.state()));
            }
            match server.as_mut() {
                Some(c) => {
                    c.handle(now, &h, payload);
                }
                None if h.flags.syn() && !h.flags.ack() => {
                    // Play XDP: a SYN-ACK carrying our options, and the facts a cookie keeps.
                    let o = h.options;
                    let mut flags = 0;
                    let mut reply = Header {
                        src_port: 80,
                        dst_port: h.src_port,
                        seq: SeqNum(ISS),
                        ack: h.seq + 1,
                        flags: Flags::SYN | Flags::ACK,
                        window: 65535,
                        ..Default::default()
                    };
                    reply.options.mss = Some(1460);
                    if o.window_scale.is_some() {
                        flags |= FACT_WSCALE;
                        reply.options.window_scale = Some(7);
                    }
                    if o.sack_permitted {
                        flags |= FACT_SACK;
                        reply.options.sack_permitted = true;
                    }
                    let ts_offset = 4242;
                    if let Some((tsval, _)) = o.timestamps {
                        flags |= FACT_TS;
                        reply.options.timestamps = Some((now.as_millis() as u32 + ts_offset, tsval));
                    }
                    if std::env::var_os("SIM_TRACE").is_some() {
                        eprintln!("smoltcp SYN options: {o:?}");
                    }
                    facts_for_ack = Some(HandshakeFacts {
                        iss: ISS,
                        irs: h.seq.0,
                        mss: o.mss.unwrap_or(536),
                        snd_wscale: o.window_scale.unwrap_or(0),
                        rcv_wscale: 7,
                        flags,
                        ts_recent: o.timestamps.map_or(0, |t| t.0),
                        ts_offset,
                        ..Default::default()
                    });
                    let n = segment::write(&reply, &[], &mut buf).unwrap();
                    link.push((now + delay, true, ipv4(SERVER_IP, CLIENT_IP, &buf[..n])));
                }
                None => {
                    // The cookie ACK: validated by construction here.
                    if let Some(f) = facts_for_ack
                        && h.flags.ack()
                        && h.ack == SeqNum(ISS + 1)
                    {
                        let local = "10.0.0.1:80".parse().unwrap();
                        let remote = "10.0.0.2:40000".parse().unwrap();
                        server = Some(Connection::accept(now, config.clone(), &f, local, remote, &h, payload).unwrap());
                    }
                }
            }
        }
        if let Some(c) = server.as_mut()
            && c.poll_timeout().is_some_and(|t| t <= now)
        {
            c.handle_timeout(now);
        }
    }
    let c = server.expect("the handshake completed");
    assert_eq!(c.state(), State::Closed);
    assert_eq!(s_got.len(), to_server.len(), "server received everything");
    assert!(s_got == to_server, "server received the client's bytes in order, once");
    assert_eq!(c_got.len(), to_client.len(), "client received everything");
    assert!(c_got == to_client, "client received the server's bytes in order, once");
    *c.stats()
}

#[test]
fn smoltcp_client_clean_link() {
    let stats = run(1, 1 << 20, 0, Close::Eager);
    assert_eq!(stats.retransmits, 0);
    assert_eq!((stats.bytes_received, stats.bytes_acked), (1 << 20, 1 << 20));
}

#[test]
fn smoltcp_client_lossy_link() {
    let mut retransmits = 0;
    for seed in 2..5 {
        retransmits += run(seed, 256 << 10, 20, Close::AfterPeer).retransmits;
    }
    assert!(retransmits > 0, "the link did lose our segments");
}
