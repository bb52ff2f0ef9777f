//! SYN-ACK retransmission for handshakes XDP answered with a cookie.
//!
//! RFC 9293 3.10.7.2 has a listener in SYN-RECEIVED retransmit its SYN-ACK until the final ACK
//! comes (RFC 6298 2.1 and 5.5: after 1 s, then doubling; Linux: `tcp_synack_retries`, 5). A
//! SYN cookie holds no state to retransmit from: when the client's final ACK is lost, a client
//! that sends next (HTTP) starts the connection with its data, which carries the cookie, but a
//! client that waits for the server to speak first (SMTP, MySQL, FTP: their banner) waits
//! until its own timeout, for a connection the server never heard of. A kernel listener, not
//! under cookies, resends its SYN-ACK; the client, ESTABLISHED, answers the duplicate with an
//! ACK (RFC 5961 4.2 challenge ACK: RCV.NXT, our ISN + 1), which completes the handshake.
//!
//! XDP records each SYN-ACK it sends (`engine_common::maps::SYN_RECORDS`, a budget per CPU, so a
//! flood degrades to cookies alone, as Linux's full SYN queue does). One thread here reads the
//! ring every [`TICK`], drops the tuples whose handshake an engine thread completed
//! ([`Established`]), and resends the SYN-ACK of the rest at 1, 3, 7, 15, 31 s after the
//! first, minting the same cookie from what XDP recorded (`CookieChecker::resend`), through a
//! packet socket on the interface.
//!
//! Why no tuple is resent after its connection started: an engine thread tells
//! [`Established`] after it accepted the cookie ACK, which came after XDP's record of the
//! SYN-ACK was committed to the ring; each tick takes the tuples told first and reads the ring
//! after, so every record of a told tuple is in the table before the tuple is removed.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use engine_common::{
    maps::{ports_word, SYN_RECORD_ECN, SYN_RECORD_RST, SYN_RECORD_SACK, SYN_RECORD_TS, SYN_RECORD_V6, SYN_RECORD_WSCALE, SynRecord},
    synack::{Syn, WINDOW},
};

use crate::{
    bpf::{CookieChecker, addr_words, monotonic_ns},
    wire::{self, Link},
};

/// How often the thread reads the ring and sends what is due.
pub const TICK: Duration = Duration::from_millis(100);
/// RFC 6298 2.1: the first retransmission after 1 s; each later one waits twice as long as
/// the one before (5.5).
pub const INITIAL_RTO: Duration = Duration::from_secs(1);
/// Linux's `tcp_synack_retries` default.
pub const DEFAULT_RETRIES: u8 = 5;
/// The most retransmissions `--synack-retries` allows: the 7th would come 127 s after the
/// SYN-ACK, when its cookie (valid up to two periods of 68.7 s) may be gone.
pub const MAX_RETRIES: u8 = 6;
/// Handshakes waiting at most: a record for a new tuple beyond it is not kept (as a full SYN
/// queue makes Linux answer with cookies alone; Linux's net.ipv4.tcp_max_syn_backlog is 2048
/// on the test machines). About 360 KB at the cap.
pub const MAX_PENDING: usize = 2048;

type Tuple = (SocketAddr, SocketAddr);

/// What a SYN-ACK was made of, as userspace reads XDP's [`SynRecord`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub link: Link,
    pub syn: Syn,
    /// The shared clock the cookie was minted at (ns).
    pub mint_ns: u64,
    /// CLOCK_MONOTONIC when XDP sent the SYN-ACK (ns).
    pub sent_ns: u64,
}

/// What XDP put in the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// A SYN-ACK it sent with a cookie.
    SynAck(Recorded),
    /// An RST for no flow: with `seq` in the window of a SYN-ACK waiting to be resent, the
    /// client ended that handshake.
    Rst { local: SocketAddr, remote: SocketAddr, seq: u32 },
}

impl Record {
    pub fn read(r: &SynRecord) -> Self {
        let got = Recorded::from_record(r);
        if r.flags & SYN_RECORD_RST != 0 {
            Record::Rst { local: got.local, remote: got.remote, seq: r.isn }
        } else {
            Record::SynAck(got)
        }
    }
}

impl Recorded {
    /// XDP's record: addresses, ports and MACs as it loads them (wire bytes in little-endian
    /// words).
    pub fn from_record(r: &SynRecord) -> Self {
        let bytes = |w: &[u32]| -> Vec<u8> { w.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let addr = |w: &[u32; 4]| -> IpAddr {
            let b = bytes(w);
            if r.flags & SYN_RECORD_V6 != 0 {
                IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&b[..16]).unwrap_or_default()))
            } else {
                IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
            }
        };
        let [p0, p1, p2, p3] = r.ports.to_le_bytes();
        let macs = bytes(&r.macs);
        let mut link = Link::default();
        link.local_mac.copy_from_slice(&macs[..6]);
        link.remote_mac.copy_from_slice(&macs[6..12]);
        Self {
            local: SocketAddr::new(addr(&r.local), u16::from_be_bytes([p2, p3])),
            remote: SocketAddr::new(addr(&r.remote), u16::from_be_bytes([p0, p1])),
            link,
            syn: Syn {
                isn: r.isn,
                mss: r.mss,
                wscale: (r.flags & SYN_RECORD_WSCALE != 0).then_some(r.wscale),
                sack: r.flags & SYN_RECORD_SACK != 0,
                ts: (r.flags & SYN_RECORD_TS != 0).then_some(r.tsval),
                ecn: r.flags & SYN_RECORD_ECN != 0,
            },
            mint_ns: r.mint_ns,
            sent_ns: r.mono_ns,
        }
    }
}

/// A tuple as XDP's records name it (addresses and ports as wire words, the family).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    remote: [u32; 4],
    local: [u32; 4],
    ports: u32,
    v6: bool,
}

impl Key {
    fn of(r: &SynRecord) -> Self {
        Self { remote: r.remote, local: r.local, ports: r.ports, v6: r.flags & SYN_RECORD_V6 != 0 }
    }

    fn from_addrs(local: SocketAddr, remote: SocketAddr) -> Self {
        Self {
            remote: addr_words(remote.ip()),
            local: addr_words(local.ip()),
            ports: ports_word(remote.port(), local.port()),
            v6: remote.is_ipv6(),
        }
    }
}

/// A handshake waiting for its final ACK: what its SYN-ACK was made of (its [`SynRecord`]
/// less the tuple, which is the key), when it is due again and how often it was resent. 48
/// bytes: the table stays small at its cap ([`MAX_PENDING`]).
struct Waiting {
    macs: [u32; 3],
    isn: u32,
    tsval: u32,
    mss: u16,
    wscale: u8,
    flags: u8,
    mint_ns: u64,
    due_ns: u64,
    sent: u8,
}

impl Waiting {
    fn record(&self, k: &Key) -> SynRecord {
        SynRecord {
            mint_ns: self.mint_ns,
            mono_ns: 0,
            remote: k.remote,
            local: k.local,
            ports: k.ports,
            macs: self.macs,
            isn: self.isn,
            tsval: self.tsval,
            mss: self.mss,
            wscale: self.wscale,
            flags: self.flags,
            _pad: 0,
        }
    }
}

/// The handshakes waiting for their final ACK and when each SYN-ACK is due again: sans-IO,
/// time an argument (CLOCK_MONOTONIC ns). At most [`MAX_PENDING`], so a pass over all of them
/// at each read (every [`TICK`]) costs a few microseconds, and a flood holds at most that
/// much memory here.
pub struct Retransmits {
    retries: u8,
    capacity: usize,
    waiting: HashMap<Key, Waiting>,
    /// Records not kept: the table was full.
    pub full: u64,
    /// Handshakes the client ended with an RST.
    pub reset: u64,
    /// Handshakes whose retransmissions ran out.
    pub given_up: u64,
}

impl Retransmits {
    /// Up to `retries` retransmissions of each SYN-ACK, `capacity` handshakes at once.
    pub fn new(retries: u8, capacity: usize) -> Self {
        Self { retries, capacity, waiting: HashMap::new(), full: 0, reset: 0, given_up: 0 }
    }

    /// Handshakes waiting.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// A record XDP wrote: a SYN-ACK it sent, or an RST for no flow.
    pub fn read(&mut self, r: &SynRecord) {
        if r.flags & SYN_RECORD_RST != 0 {
            self.reset(Key::of(r), r.isn);
        } else {
            self.recorded(r);
        }
    }

    /// XDP sent this SYN-ACK: due again [`INITIAL_RTO`] after. A later SYN-ACK of the same
    /// tuple (the client retransmitted its SYN: our SYN-ACK was lost) starts over from it.
    fn recorded(&mut self, r: &SynRecord) {
        if self.retries == 0 {
            return;
        }
        let key = Key::of(r);
        if self.waiting.len() >= self.capacity && !self.waiting.contains_key(&key) {
            self.full += 1;
            return;
        }
        if self.waiting.capacity() == 0 {
            // Room for the cap at once: growing by doubling would leave each smaller table's
            // pages behind in the allocator.
            self.waiting.reserve(self.capacity);
        }
        let w = Waiting {
            macs: r.macs,
            isn: r.isn,
            tsval: r.tsval,
            mss: r.mss,
            wscale: r.wscale,
            flags: r.flags,
            mint_ns: r.mint_ns,
            due_ns: r.mono_ns.saturating_add(INITIAL_RTO.as_nanos() as u64),
            sent: 0,
        };
        self.waiting.insert(key, w);
    }

    /// The tuple's handshake completed (or its ACK was refused): nothing more to send.
    pub fn established(&mut self, local: SocketAddr, remote: SocketAddr) {
        self.waiting.remove(&Key::from_addrs(local, remote));
    }

    /// An RST for no flow arrived on the tuple: RFC 9293 3.10.7.4 first check in SYN-RECEIVED
    /// (as Linux's tcp_check_req): one in the window we announced (RCV.NXT = the client's ISN
    /// + 1, RCV.WND our SYN-ACK's) ends the handshake; anything else is not the client's.
    fn reset(&mut self, key: Key, seq: u32) {
        let Some(w) = self.waiting.get(&key) else { return };
        if seq.wrapping_sub(w.isn.wrapping_add(1)) < u32::from(WINDOW) {
            self.waiting.remove(&key);
            self.reset += 1;
        }
    }

    /// The handshakes whose SYN-ACK is due by `now_ns`, into `out`: each counted as sent and
    /// due again twice as long after (RFC 6298 5.5), or, at its last retransmission, no longer
    /// waiting (a later final ACK still validates: its cookie does not need us).
    pub fn take_due(&mut self, now_ns: u64, out: &mut Vec<Recorded>) {
        let retries = self.retries;
        let mut given_up = 0;
        self.waiting.retain(|k, w| {
            if w.due_ns > now_ns {
                return true;
            }
            out.push(Recorded::from_record(&w.record(k)));
            w.sent += 1;
            if w.sent >= retries {
                given_up += 1;
                return false;
            }
            w.due_ns = now_ns.saturating_add((INITIAL_RTO.as_nanos() as u64) << w.sent);
            true
        });
        self.given_up += given_up;
        if self.waiting.is_empty() && self.waiting.capacity() > 0 {
            // The table goes back once no handshake waits (idle memory is counted).
            self.waiting.shrink_to_fit();
        }
    }
}

/// Where engine threads report the tuples whose cookie ACK they took.
#[derive(Default)]
pub struct Established(Mutex<Vec<Tuple>>);

impl Established {
    pub fn push(&self, local: SocketAddr, remote: SocketAddr) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push((local, remote));
    }

    fn take(&self) -> Vec<Tuple> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The retransmitter's counters, as `synx stats` shows them.
#[derive(Default)]
pub struct RetryStats {
    pub retransmits: AtomicU64,
    pub pending: AtomicU64,
    pub full: AtomicU64,
    pub reset: AtomicU64,
    pub given_up: AtomicU64,
    pub send_failed: AtomicU64,
}

/// The thread that resends SYN-ACKs; stops and joins when dropped.
pub struct Retransmitter {
    pub established: Arc<Established>,
    pub stats: Arc<RetryStats>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Retransmitter {
    /// Start resending what XDP records in `ring`, up to `retries` times each, on `iface`.
    pub fn start(ring: RingBuf<MapData>, cookies: CookieChecker, iface: &str, retries: u8) -> std::io::Result<Self> {
        let socket = PacketSocket::open(iface)?;
        let established = Arc::new(Established::default());
        let stats = Arc::new(RetryStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (e, s, st) = (established.clone(), stats.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("synx-synack".into())
            .spawn(move || run(ring, cookies, socket, Retransmits::new(retries, MAX_PENDING), &e, &s, &st))?;
        Ok(Self { established, stats, stop, thread: Some(thread) })
    }
}

impl Drop for Retransmitter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    mut ring: RingBuf<MapData>,
    cookies: CookieChecker,
    socket: PacketSocket,
    mut table: Retransmits,
    established: &Established,
    stats: &RetryStats,
    stop: &AtomicBool,
) {
    let mut out = Vec::new();
    let mut frame = vec![0u8; wire::header_len(true) + 60];
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(TICK);
        // First the tuples told, then the ring (see the module doc).
        let done = established.take();
        while let Some(item) = ring.next() {
            if let Some(r) = item.get(..std::mem::size_of::<SynRecord>()) {
                table.read(&bytemuck::pod_read_unaligned(r));
            }
        }
        for (local, remote) in done {
            table.established(local, remote);
        }
        table.take_due(monotonic_ns(), &mut out);
        for r in out.drain(..) {
            let sent = cookies.resend(r.local, r.remote, &r.syn, r.mint_ns).and_then(|answer| {
                let header = super::queue::synack_header(r.local, r.remote, &answer);
                let hlen = wire::header_len(r.local.is_ipv6());
                let tcp_len = synx_tcp::segment::write(&header, &[], frame.get_mut(hlen..)?).ok()?;
                let len = wire::finish(&mut frame, &r.link, r.local, r.remote, tcp_len)?;
                Some(socket.send(&frame[..len], &r.link.remote_mac))
            });
            match sent {
                Some(Ok(())) => stats.retransmits.fetch_add(1, Ordering::Relaxed),
                Some(Err(e)) => {
                    tracing::debug!("SYN-ACK retransmission to {}: {e}", r.remote);
                    stats.send_failed.fetch_add(1, Ordering::Relaxed)
                }
                // The cookie's secret is gone: it would not validate.
                None => stats.given_up.fetch_add(1, Ordering::Relaxed),
            };
        }
        stats.pending.store(table.len() as u64, Ordering::Relaxed);
        stats.full.store(table.full, Ordering::Relaxed);
        stats.reset.store(table.reset, Ordering::Relaxed);
        stats.given_up.fetch_add(std::mem::take(&mut table.given_up), Ordering::Relaxed);
    }
}

/// A packet socket (AF_PACKET, SOCK_RAW) sending whole frames on one interface; it receives
/// nothing (protocol 0).
struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl PacketSocket {
    fn open(iface: &str) -> std::io::Result<Self> {
        let (fd, ifindex) = super::packet_socket::open(iface, 0)?;
        Ok(Self { fd, ifindex })
    }

    fn send(&self, frame: &[u8], to: &[u8; 6]) -> std::io::Result<()> {
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(to);
        // SAFETY: `frame` and `addr` are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                std::ptr::from_ref(&addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const W: fn([u8; 4]) -> u32 = u32::from_le_bytes;

    /// XDP's record of a SYN-ACK from 198.18.0.1:25 to 198.18.0.2:`port`.
    fn rec(port: u16, isn: u32, sent_ns: u64) -> SynRecord {
        SynRecord {
            mint_ns: 77,
            mono_ns: sent_ns,
            remote: [W([198, 18, 0, 2]), 0, 0, 0],
            local: [W([198, 18, 0, 1]), 0, 0, 0],
            ports: ports_word(port, 25),
            macs: [W([2, 0, 0, 0]), W([0, 1, 2, 0]), W([0, 0, 0, 2])],
            isn,
            tsval: 9,
            mss: 1460,
            wscale: 7,
            flags: SYN_RECORD_SACK | SYN_RECORD_TS | SYN_RECORD_WSCALE,
            _pad: 0,
        }
    }

    fn rst(port: u16, seq: u32) -> SynRecord {
        SynRecord { isn: seq, flags: SYN_RECORD_RST, mint_ns: 0, mono_ns: 0, ..rec(port, 0, 0) }
    }

    fn addrs(port: u16) -> (SocketAddr, SocketAddr) {
        ("198.18.0.1:25".parse().unwrap(), SocketAddr::new("198.18.0.2".parse().unwrap(), port))
    }

    /// The ports of the handshakes due at `now` (seconds), in order.
    fn due_at(t: &mut Retransmits, now_s: f64) -> Vec<u16> {
        let mut out = Vec::new();
        t.take_due((now_s * S as f64) as u64, &mut out);
        let mut ports: Vec<u16> = out.iter().map(|r| r.remote.port()).collect();
        ports.sort_unstable();
        ports
    }

    #[test]
    fn a_syn_ack_is_resent_at_1_3_7_15_and_31_s_then_given_up() {
        let mut t = Retransmits::new(DEFAULT_RETRIES, MAX_PENDING);
        t.read(&rec(1000, 5, 10 * S));
        let mut sent_at = Vec::new();
        // Read every 100 ms, as the thread does.
        for tick in 100..=500 {
            let now = f64::from(tick) / 10.0;
            if !due_at(&mut t, now).is_empty() {
                sent_at.push(now - 10.0);
            }
        }
        assert_eq!(sent_at, [1.0, 3.0, 7.0, 15.0, 31.0]);
        assert!(t.is_empty());
        assert_eq!(t.given_up, 1);
    }

    #[test]
    fn an_entry_is_small() {
        assert_eq!(std::mem::size_of::<(Key, Waiting)>(), 88);
    }

    #[test]
    fn what_is_resent_is_what_xdp_recorded() {
        let mut t = Retransmits::new(DEFAULT_RETRIES, MAX_PENDING);
        let r = rec(1000, 5, 0);
        t.read(&r);
        let mut out = Vec::new();
        t.take_due(S, &mut out);
        assert_eq!(out, [Recorded { sent_ns: 0, ..Recorded::from_record(&r) }]);
    }

    #[test]
    fn an_established_handshake_is_not_resent() {
        let mut t = Retransmits::new(DEFAULT_RETRIES, MAX_PENDING);
        t.read(&rec(1000, 5, 0));
        t.read(&rec(1001, 6, 0));
        assert_eq!(due_at(&mut t, 1.0), [1000, 1001]);
        let (local, remote) = addrs(1000);
        t.established(local, remote);
        assert_eq!(due_at(&mut t, 3.0), [1001]);
        assert_eq!(t.len(), 1);
        assert_eq!(t.given_up, 0);
    }

    #[test]
    fn an_rst_in_the_window_ends_the_handshake_and_one_outside_does_not() {
        let mut t = Retransmits::new(DEFAULT_RETRIES, MAX_PENDING);
        let isn = u32::MAX - 10;
        t.read(&rec(1000, isn, 0));
        // Below RCV.NXT (the client's ISN + 1), and at RCV.NXT + RCV.WND: not the client's.
        t.read(&rst(1000, isn));
        t.read(&rst(1000, (isn + 1).wrapping_add(65535)));
        // Another tuple's.
        t.read(&rst(999, isn + 1));
        assert_eq!((t.len(), t.reset), (1, 0));
        // At the window's end, across the wrap (a half-open scan's RST is at RCV.NXT).
        t.read(&rst(1000, (isn + 1).wrapping_add(65534)));
        assert_eq!((t.len(), t.reset), (0, 1));
        assert!(due_at(&mut t, 1.0).is_empty());
    }

    #[test]
    fn a_later_syn_of_the_tuple_starts_over() {
        let mut t = Retransmits::new(DEFAULT_RETRIES, MAX_PENDING);
        t.read(&rec(1000, 5, 0));
        // The client's SYN again at 1 s (our SYN-ACK was lost): XDP answered it anew.
        t.read(&rec(1000, 5, S));
        assert!(due_at(&mut t, 1.5).is_empty(), "the first record's schedule is dropped");
        assert_eq!(due_at(&mut t, 2.0), [1000]);
        assert!(due_at(&mut t, 3.5).is_empty());
        assert_eq!(due_at(&mut t, 4.0), [1000]);
    }

    #[test]
    fn the_families_do_not_share_keys() {
        let mut t = Retransmits::new(DEFAULT_RETRIES, MAX_PENDING);
        t.read(&rec(1000, 5, 0));
        // An IPv6 tuple whose words equal the IPv4 one's.
        t.read(&SynRecord { flags: SYN_RECORD_V6, ..rec(1000, 6, 0) });
        assert_eq!(t.len(), 2);
        let (local, remote) = addrs(1000);
        t.established(local, remote);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn with_no_retries_nothing_is_kept() {
        let mut t = Retransmits::new(0, MAX_PENDING);
        t.read(&rec(1000, 5, 0));
        assert!(t.is_empty());
        assert!(due_at(&mut t, 100.0).is_empty());
    }

    #[test]
    fn a_full_table_keeps_what_it_has_and_counts_the_rest() {
        let mut t = Retransmits::new(2, 2);
        t.read(&rec(1000, 5, 0));
        t.read(&rec(1001, 5, 0));
        t.read(&rec(1002, 5, 0));
        assert_eq!((t.len(), t.full), (2, 1));
        // A tuple it holds is still taken (a retransmitted SYN).
        t.read(&rec(1001, 5, S / 2));
        assert_eq!((t.len(), t.full), (2, 1));
        assert_eq!(due_at(&mut t, 1.0), [1000]);
        assert_eq!(due_at(&mut t, 1.5), [1001]);
        // Two retries: the second send is the last.
        assert_eq!(due_at(&mut t, 3.5), [1000, 1001]);
        assert!(t.is_empty());
        assert_eq!(t.given_up, 2);
    }

    #[test]
    fn records_read_back_as_xdp_wrote_them() {
        let r = SynRecord { mint_ns: 123, mss: 1400, tsval: 55, ..rec(40000, 1000, 456) };
        let got = Recorded::from_record(&r);
        assert_eq!((got.local, got.remote), addrs(40000));
        assert_eq!(got.link, Link { local_mac: [2, 0, 0, 0, 0, 1], remote_mac: [2, 0, 0, 0, 0, 2] });
        assert_eq!(got.syn, Syn { isn: 1000, mss: 1400, wscale: Some(7), sack: true, ts: Some(55), ecn: false });
        assert_eq!((got.mint_ns, got.sent_ns), (123, 456));
        let v6 = SynRecord { remote: [W([0xfd, 0, 0x5e, 0xed]), 0, 0, W([0, 0, 0, 2])], flags: SYN_RECORD_V6, ..r };
        let got = Recorded::from_record(&v6);
        assert_eq!(got.remote.ip(), "fd00:5eed::2".parse::<IpAddr>().unwrap());
        assert_eq!(got.syn.wscale, None);
        assert_eq!(got.syn.ts, None);
        assert!(matches!(Record::read(&r), Record::SynAck(_)));
        let (local, remote) = addrs(40000);
        assert_eq!(Record::read(&rst(40000, 1001)), Record::Rst { local, remote, seq: 1001 });
        // The key from addresses is the key XDP's record has.
        assert_eq!(Key::from_addrs(local, remote), Key::of(&r));
        let (l6, r6) = (SocketAddr::new("fd00:5eed::1".parse().unwrap(), 25), SocketAddr::new(got.remote.ip(), 40000));
        assert_eq!(Key::from_addrs(l6, r6).remote, v6.remote);
    }
}
