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
    collections::{HashMap, VecDeque},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use engine_common::{
    maps::{SYN_RECORD_ECN, SYN_RECORD_SACK, SYN_RECORD_TS, SYN_RECORD_V6, SYN_RECORD_WSCALE, SynRecord},
    synack::Syn,
};

use crate::{
    bpf::{CookieChecker, monotonic_ns},
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
/// queue makes Linux answer with cookies alone).
pub const MAX_PENDING: usize = 16_384;

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

/// A handshake waiting for its final ACK.
struct Waiting {
    what: Recorded,
    /// Retransmissions sent so far.
    sent: u8,
    /// Which of the tuple's records this is (a later SYN of the tuple replaces it).
    generation: u64,
}

/// The handshakes waiting for their final ACK and when each SYN-ACK is due again: sans-IO,
/// time an argument (CLOCK_MONOTONIC ns).
pub struct Retransmits {
    retries: u8,
    capacity: usize,
    waiting: HashMap<Tuple, Waiting>,
    /// Per retransmission number, the tuples due in the order they fall due: each waits a
    /// fixed time after the previous send, so each queue is sorted by itself.
    due: Vec<VecDeque<(u64, Tuple, u64)>>,
    generation: u64,
    /// Records not kept: the table was full.
    pub full: u64,
    /// Handshakes whose retransmissions ran out, or whose cookie's secret was gone.
    pub given_up: u64,
}

impl Retransmits {
    /// Up to `retries` retransmissions of each SYN-ACK, `capacity` handshakes at once.
    pub fn new(retries: u8, capacity: usize) -> Self {
        Self {
            retries,
            capacity,
            waiting: HashMap::new(),
            due: (0..retries).map(|_| VecDeque::new()).collect(),
            generation: 0,
            full: 0,
            given_up: 0,
        }
    }

    /// Handshakes waiting.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// XDP sent this SYN-ACK: due again [`INITIAL_RTO`] after. A later SYN-ACK of the same
    /// tuple (the client retransmitted its SYN: our SYN-ACK was lost) starts over from it.
    pub fn recorded(&mut self, what: Recorded) {
        if self.retries == 0 {
            return;
        }
        let key = (what.local, what.remote);
        if self.waiting.len() >= self.capacity && !self.waiting.contains_key(&key) {
            self.full += 1;
            return;
        }
        self.generation += 1;
        let due = what.sent_ns.saturating_add(INITIAL_RTO.as_nanos() as u64);
        self.waiting.insert(key, Waiting { what, sent: 0, generation: self.generation });
        self.due[0].push_back((due, key, self.generation));
    }

    /// The tuple's handshake completed (or its ACK was refused): nothing more to send.
    pub fn established(&mut self, local: SocketAddr, remote: SocketAddr) {
        self.waiting.remove(&(local, remote));
    }

    /// The handshakes whose SYN-ACK is due by `now_ns`, into `out`: each counted as sent and
    /// due again twice as long after (RFC 6298 5.5), or, at its last retransmission, no longer
    /// waiting (a later final ACK still validates: its cookie does not need us).
    pub fn take_due(&mut self, now_ns: u64, out: &mut Vec<Recorded>) {
        for level in 0..self.due.len() {
            while let Some(&(due, key, generation)) = self.due[level].front() {
                if due > now_ns {
                    break;
                }
                self.due[level].pop_front();
                let Some(w) = self.waiting.get_mut(&key) else { continue };
                if w.generation != generation {
                    continue;
                }
                out.push(w.what);
                w.sent += 1;
                if w.sent >= self.retries {
                    self.waiting.remove(&key);
                    self.given_up += 1;
                    continue;
                }
                let wait = (INITIAL_RTO.as_nanos() as u64) << w.sent;
                self.due[usize::from(w.sent)].push_back((now_ns.saturating_add(wait), key, generation));
            }
        }
        if self.waiting.is_empty() && self.waiting.capacity() > 1024 {
            // A burst's table goes back once it is over (idle memory is counted).
            self.waiting.shrink_to_fit();
            for q in &mut self.due {
                q.clear();
                q.shrink_to_fit();
            }
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
                table.recorded(Recorded::from_record(&bytemuck::pod_read_unaligned(r)));
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
        let name = std::ffi::CString::new(iface).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: plain syscall; the descriptor is owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nothing else owns.
        Ok(Self { fd: unsafe { OwnedFd::from_raw_fd(fd) }, ifindex: ifindex as i32 })
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

    fn rec(port: u16, isn: u32, sent_ns: u64) -> Recorded {
        Recorded {
            local: "198.18.0.1:25".parse().unwrap(),
            remote: SocketAddr::new("198.18.0.2".parse().unwrap(), port),
            link: Link::default(),
            syn: Syn { isn, mss: 1460, wscale: Some(7), sack: true, ts: Some(9), ecn: false },
            mint_ns: 77,
            sent_ns,
        }
    }

    /// The ports of the handshakes due at `now` (seconds).
    fn due_at(t: &mut Retransmits, now_s: f64) -> Vec<u16> {
        let mut out = Vec::new();
        t.take_due((now_s * S as f64) as u64, &mut out);
        out.iter().map(|r| r.remote.port()).collect()
    }

    #[test]
    fn a_syn_ack_is_resent_at_1_3_7_15_and_31_s_then_given_up() {
        let mut t = Retransmits::new(DEFAULT_RETRIES, MAX_PENDING);
        t.recorded(rec(1000, 5, 10 * S));
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
    fn an_established_handshake_is_not_resent() {
        let mut t = Retransmits::new(DEFAULT_RETRIES, MAX_PENDING);
        t.recorded(rec(1000, 5, 0));
        t.recorded(rec(1001, 6, 0));
        assert_eq!(due_at(&mut t, 1.0), [1000, 1001]);
        let r = rec(1000, 5, 0);
        t.established(r.local, r.remote);
        assert_eq!(due_at(&mut t, 3.0), [1001]);
        assert_eq!(t.len(), 1);
        assert_eq!(t.given_up, 0);
    }

    #[test]
    fn a_later_syn_of_the_tuple_starts_over() {
        let mut t = Retransmits::new(DEFAULT_RETRIES, MAX_PENDING);
        t.recorded(rec(1000, 5, 0));
        // The client's SYN again at 1 s (our SYN-ACK was lost): XDP answered it anew.
        t.recorded(rec(1000, 5, S));
        assert!(due_at(&mut t, 1.5).is_empty(), "the first record's schedule is dropped");
        assert_eq!(due_at(&mut t, 2.0), [1000]);
        assert!(due_at(&mut t, 3.5).is_empty());
        assert_eq!(due_at(&mut t, 4.0), [1000]);
    }

    #[test]
    fn with_no_retries_nothing_is_kept() {
        let mut t = Retransmits::new(0, MAX_PENDING);
        t.recorded(rec(1000, 5, 0));
        assert!(t.is_empty());
        assert!(due_at(&mut t, 100.0).is_empty());
    }

    #[test]
    fn a_full_table_keeps_what_it_has_and_counts_the_rest() {
        let mut t = Retransmits::new(2, 2);
        t.recorded(rec(1000, 5, 0));
        t.recorded(rec(1001, 5, 0));
        t.recorded(rec(1002, 5, 0));
        assert_eq!((t.len(), t.full), (2, 1));
        // A tuple it holds is still taken (a retransmitted SYN).
        t.recorded(rec(1001, 5, S / 2));
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
        let w = |b: [u8; 4]| u32::from_le_bytes(b);
        let r = SynRecord {
            mint_ns: 123,
            mono_ns: 456,
            remote: [w([198, 18, 0, 2]), 0, 0, 0],
            local: [w([198, 18, 0, 1]), 0, 0, 0],
            ports: w([0x9c, 0x40, 0, 25]),
            macs: [w([2, 0, 0, 0]), w([0, 1, 2, 0]), w([0, 0, 0, 2])],
            isn: 1000,
            tsval: 55,
            mss: 1400,
            wscale: 7,
            flags: SYN_RECORD_SACK | SYN_RECORD_TS | SYN_RECORD_WSCALE,
            _pad: 0,
        };
        let got = Recorded::from_record(&r);
        assert_eq!(got.local, "198.18.0.1:25".parse::<SocketAddr>().unwrap());
        assert_eq!(got.remote, "198.18.0.2:40000".parse::<SocketAddr>().unwrap());
        assert_eq!(got.link, Link { local_mac: [2, 0, 0, 0, 0, 1], remote_mac: [2, 0, 0, 0, 0, 2] });
        assert_eq!(got.syn, Syn { isn: 1000, mss: 1400, wscale: Some(7), sack: true, ts: Some(55), ecn: false });
        assert_eq!((got.mint_ns, got.sent_ns), (123, 456));
        let v6 = SynRecord { remote: [w([0xfd, 0, 0x5e, 0xed]), 0, 0, w([0, 0, 0, 2])], flags: SYN_RECORD_V6, ..r };
        let got = Recorded::from_record(&v6);
        assert_eq!(got.remote.ip(), "fd00:5eed::2".parse::<IpAddr>().unwrap());
        assert_eq!(got.syn.wscale, None);
        assert_eq!(got.syn.ts, None);
    }
}
