//! One service on many hosts: what a host needs when other hosts serve the same addresses behind
//! ECMP (the README's "Many hosts"). The cookie secrets come from a key they share and are
//! published every period (`crate::cookie_key`, `engine_common::secrets`); a host can drain
//! (no new connections, the established ones finish); with `--peer-hosts`, a segment of a
//! connection this host does not hold goes to the others (second chance, in XDP), and the hosts
//! exchange heartbeats once a second: how far their clocks disagree, whether their keys agree,
//! whether they drain.
//!
//! How a host knows its clock is off. Cookies validate across hosts only while their clocks
//! agree within `engine_common::cookie::SKEW_TOLERANCE_NS`. A host cannot tell from its own
//! traffic which clock is wrong (a cookie minted "in the future" says two clocks disagree, not
//! whose). So each host measures every other's clock with NTP's four timestamps (RFC 5905 8)
//! over the heartbeats, an offset good to half the round trip, and a host whose clock is off by
//! more than the tolerance from the majority of the hosts it reaches says so (`clock_off` in
//! `synx stats`, a warning in its log); the others count the peers they disagree with. Of two
//! hosts neither can tell which is wrong: both say so. Without peers a host has only the
//! kernel's word (adjtimex: NTP says the clock is unsynchronized, `clock_unsynchronized`).
//! The same majority tells a host whose cookie key differs from the others'.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use engine_common::{
    cookie::SKEW_TOLERANCE_NS,
    second_chance::{DEFAULT_PORT, HEARTBEAT_DRAINING, HEARTBEAT_LEN, Heartbeat, KIND_TIME_ANSWER, KIND_TIME_ASK},
};

use crate::{
    bpf::{PeerRing, SecretsPublisher, Switches, XdpSettings, kernel_clock},
    cookie_key::{CookieKey, SecretSource},
    engine::{Metric, gauge},
};

/// How often the secrets are looked at (each period's are published ahead; the shared clock's
/// adjustment follows the kernel's TAI offset within this), and heartbeats sent.
pub const TICK: Duration = Duration::from_secs(1);
/// A peer that has not answered for this long is not counted.
const PEER_STALE: Duration = Duration::from_secs(5);
/// How often the kernel's clock state is read.
const KERNEL_CLOCK_EVERY: Duration = Duration::from_secs(10);

/// What a draining host does with a new SYN.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DrainSyns {
    /// Leave it unanswered: the client retries after its RTO (1 s), by then, once the route
    /// is withdrawn, towards another host.
    #[default]
    Drop,
    /// Hand it to the kernel (XDP_PASS): another server on this host may take it.
    Pass,
}

/// How this host serves together with others.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterOptions {
    /// The key every host shares (`--cookie-key-file`); `None`: a random secret per period,
    /// valid on this host only.
    pub cookie_key_file: Option<PathBuf>,
    /// Every host serving the same addresses, by IPv4 address, this one included (second
    /// chance and heartbeats); empty: this host alone.
    pub peer_hosts: Vec<Ipv4Addr>,
    /// The UDP port the hosts talk on.
    pub peer_port: u16,
    pub drain_syns: DrainSyns,
    /// Make this host's shared clock this far off (tests: a host whose clock is wrong).
    pub clock_skew_ms: i64,
}

impl ClusterOptions {
    pub const DEFAULT_PEER_PORT: u16 = DEFAULT_PORT;

    /// The key, loaded and checked.
    pub fn cookie_key(&self) -> anyhow::Result<Option<CookieKey>> {
        self.cookie_key_file.as_deref().map(CookieKey::load).transpose().map_err(Into::into)
    }

    /// This host's place in the ring, found by which of the peer hosts is an address of this
    /// host; `None` without peers.
    pub fn ring(&self) -> anyhow::Result<Option<PeerRing>> {
        if self.peer_hosts.is_empty() {
            return Ok(None);
        }
        let local = local_ipv4_addrs()?;
        let this: Vec<Ipv4Addr> = self.peer_hosts.iter().copied().filter(|a| local.contains(a)).collect();
        let this = match this.as_slice() {
            [one] => *one,
            [] => anyhow::bail!(
                "none of --peer-hosts ({}) is an address of this host: list every host, this one included",
                join(&self.peer_hosts)
            ),
            many => anyhow::bail!("several of --peer-hosts are addresses of this host ({}): list each host once", join(many)),
        };
        let ring = PeerRing::new(this, &self.peer_hosts, self.peer_port).map_err(anyhow::Error::msg)?;
        Ok(Some(ring))
    }

    /// The XDP program's settings for this: `base` with the drain action and the ring.
    pub fn xdp_settings(&self, base: XdpSettings) -> anyhow::Result<XdpSettings> {
        Ok(XdpSettings { drain_pass: self.drain_syns == DrainSyns::Pass, ring: self.ring()?, ..base })
    }
}

fn join(addrs: &[Ipv4Addr]) -> String {
    addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// Every IPv4 address of this host's interfaces.
fn local_ipv4_addrs() -> anyhow::Result<Vec<Ipv4Addr>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, freed below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(std::io::Error::last_os_error()).context("listing this host's addresses");
    }
    let mut out = Vec::new();
    let mut p = list;
    while !p.is_null() {
        // SAFETY: a node of the list getifaddrs returned.
        let ifa = unsafe { &*p };
        // SAFETY: ifa_addr, when set and AF_INET, points to a sockaddr_in.
        unsafe {
            if !ifa.ifa_addr.is_null() && i32::from((*ifa.ifa_addr).sa_family) == libc::AF_INET {
                let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                out.push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            }
        }
        p = ifa.ifa_next;
    }
    // SAFETY: the list getifaddrs allocated.
    unsafe { libc::freeifaddrs(list) };
    Ok(out)
}

/// What the heartbeats say of one peer.
#[derive(Clone, Copy, Debug)]
struct PeerSeen {
    /// How far its clock is ahead of ours (ns), and the round trip that measured it.
    offset_ns: i64,
    delay_ns: u64,
    key_fingerprint: u64,
    draining: bool,
    at: Instant,
}

/// The heartbeats' findings, as `synx stats` shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerReport {
    /// Peers that answered within the last few seconds.
    pub reachable: u64,
    pub draining: u64,
    /// Reachable peers whose clock differs from ours by more than the tolerance (beyond the
    /// measurement's error), and whose key differs from ours.
    pub clock_off: u64,
    pub other_key: u64,
    /// The largest clock difference to a reachable peer, ms.
    pub max_offset_ms: u64,
    /// This host's clock, or key, differs from most reachable peers'.
    pub self_clock_off: bool,
    pub self_key_differs: bool,
}

/// What [`Cluster::stats`] reports (`synx stats`, `--metrics`), in its order: the first three
/// always, the peers' with `--peer-hosts`.
const GAUGES: [Metric; 11] = [
    gauge("draining", "1 while this host drains: new SYNs are not answered, established connections go on."),
    gauge("cookie_key_shared", "1 when the cookie secrets derive from a key shared with other hosts."),
    gauge("clock_unsynchronized", "1 when the kernel says its clock is not synchronized (the shared key's periods need it)."),
    gauge("peers_reachable", "Peer hosts that answered within the last few seconds."),
    gauge("peers_draining", "Reachable peer hosts that drain."),
    gauge("peers_clock_off", "Reachable peer hosts whose clock differs from ours by more than the tolerance."),
    gauge("peers_other_key", "Reachable peer hosts whose cookie key differs from ours."),
    gauge("clock_peer_offset_max_ms", "The largest clock difference to a reachable peer host, in milliseconds."),
    gauge("clock_off", "1 when this host's clock differs from most reachable peers'."),
    gauge("cookie_key_differs", "1 when this host's cookie key differs from most reachable peers'."),
    gauge("peers_in_ring", "Peer hosts second chance forwards to: those that answered lately, and every peer for the first few seconds after start."),
];

fn report(peers: &HashMap<SocketAddrV4, PeerSeen>, fingerprint: u64, now: Instant) -> PeerReport {
    let mut r = PeerReport::default();
    for p in peers.values().filter(|p| now.duration_since(p.at) < PEER_STALE) {
        r.reachable += 1;
        r.draining += u64::from(p.draining);
        // The offset is good to half the round trip: count only a difference that is certain.
        let certain = p.offset_ns.unsigned_abs().saturating_sub(p.delay_ns / 2);
        r.clock_off += u64::from(certain > SKEW_TOLERANCE_NS);
        r.other_key += u64::from(p.key_fingerprint != fingerprint);
        r.max_offset_ms = r.max_offset_ms.max(p.offset_ns.unsigned_abs() / 1_000_000);
    }
    // A strict majority of what we reach disagrees with us: we are the odd one out.
    r.self_clock_off = r.reachable > 0 && 2 * r.clock_off > r.reachable;
    r.self_key_differs = r.reachable > 0 && 2 * r.other_key > r.reachable;
    r
}

/// State the heartbeat thread shares with `synx stats`.
#[derive(Default)]
struct Shared {
    report: Mutex<PeerReport>,
    kernel_unsynchronized: AtomicBool,
    /// The hosts in the second-chance ring besides this one (the XDP program's RING_HOPS).
    ring_hosts: AtomicU64,
}

/// A running host's part in the cluster: the secrets' publication, draining and heartbeats.
pub struct Cluster {
    switches: Switches,
    shared_key: bool,
    peers: bool,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    /// The secrets are not published (a successor is taking over and publishes them).
    paused: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Cluster {
    /// Take the secrets from the key (or random ones), publish them, and start the thread
    /// that keeps them published and, with peers, talks to the other hosts (and keeps the
    /// second-chance ring to the live ones). `adopted`: `secrets` carries on what a predecessor
    /// published (a takeover), so random secrets are kept rather than drawn afresh (which would
    /// invalidate every cookie it minted).
    pub fn start(options: &ClusterOptions, secrets: SecretsPublisher, switches: Switches, adopted: bool) -> anyhow::Result<Self> {
        let key = options.cookie_key()?;
        let ring = options.ring()?;
        let shared_key = key.is_some();
        match key {
            Some(key) => secrets.set_source(SecretSource::Shared(key))?,
            None if adopted => {}
            None => secrets.set_source(SecretSource::default())?,
        }
        if options.clock_skew_ms != 0 {
            secrets.set_clock_skew(options.clock_skew_ms)?;
        }
        if ring.is_some() && !shared_key {
            tracing::warn!(
                "--peer-hosts without --cookie-key-file: a handshake whose final ACK reaches another host is reset \
                 (each host's cookies are its own)"
            );
        }
        let peers = match ring {
            Some(r) => {
                let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, r.port))
                    .with_context(|| format!("binding the peer port {} (UDP)", r.port))?;
                socket.set_read_timeout(Some(Duration::from_millis(100)))?;
                let mut others: Vec<SocketAddrV4> =
                    options.peer_hosts.iter().filter(|a| **a != r.this).map(|a| SocketAddrV4::new(*a, r.port)).collect();
                others.sort();
                others.dedup();
                Some(PeerLinks { socket, others, ring: r })
            }
            None => None,
        };
        let shared = Shared { ring_hosts: AtomicU64::new(peers.as_ref().map_or(0, |p| p.others.len() as u64)), ..Shared::default() };
        let cluster = Self {
            switches: switches.clone(),
            shared_key,
            peers: peers.is_some(),
            shared: Arc::new(shared),
            stop: Arc::new(AtomicBool::new(false)),
            paused: Arc::new(AtomicBool::new(false)),
            thread: Mutex::new(None),
        };
        let ticker = Ticker {
            secrets,
            switches,
            shared_key,
            shared: cluster.shared.clone(),
            stop: cluster.stop.clone(),
            paused: cluster.paused.clone(),
            peers,
        };
        let t = std::thread::Builder::new().name("synx-cluster".into()).spawn(move || ticker.run())?;
        *cluster.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
        Ok(cluster)
    }

    /// Start (or stop) draining: the XDP program answers no new SYN (see [`DrainSyns`]);
    /// handshakes already begun, and established connections, go on.
    pub fn drain(&self, on: bool) -> anyhow::Result<()> {
        let was = self.switches.draining();
        self.switches.set_draining(on)?;
        if was != on {
            tracing::info!("{}", if on { "draining: no new connections" } else { "draining stopped: taking new connections" });
        }
        Ok(())
    }

    pub fn draining(&self) -> bool {
        self.switches.draining()
    }

    /// The heartbeats' findings (all zero without peers).
    pub fn peers(&self) -> PeerReport {
        *self.shared.report.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gauges for `synx stats`.
    pub fn stats(&self) -> Vec<(&'static Metric, u64)> {
        let mut values = vec![
            u64::from(self.draining()),
            u64::from(self.shared_key),
            u64::from(self.shared.kernel_unsynchronized.load(Ordering::Relaxed)),
        ];
        if self.peers {
            let r = self.peers();
            values.extend([
                r.reachable,
                r.draining,
                r.clock_off,
                r.other_key,
                r.max_offset_ms,
                u64::from(r.self_clock_off),
                u64::from(r.self_key_differs),
                self.shared.ring_hosts.load(Ordering::Relaxed),
            ]);
        }
        GAUGES.iter().zip(values).collect()
    }

    /// Stop (or resume) publishing the cookie secrets: while a successor takes over, it alone
    /// writes them (two writers would each publish their own view of the periods).
    pub fn pause(&self, on: bool) {
        self.paused.store(on, Ordering::SeqCst);
    }

    /// Stop the thread (the engine's shutdown).
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The other hosts, and how to reach them.
struct PeerLinks {
    socket: UdpSocket,
    others: Vec<SocketAddrV4>,
    /// The ring of every host, as configured.
    ring: PeerRing,
}

/// The cluster thread: publishes the secrets each tick, reads the kernel's clock state, and
/// with peers sends and answers heartbeats and keeps the ring to the hosts that answer.
struct Ticker {
    secrets: SecretsPublisher,
    switches: Switches,
    shared_key: bool,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    peers: Option<PeerLinks>,
}

impl Ticker {
    fn run(self) {
        let fingerprint = self.secrets.key_fingerprint();
        let mut seen: HashMap<SocketAddrV4, PeerSeen> = HashMap::new();
        let mut said = PeerReport::default();
        let started = Instant::now();
        let mut next_tick = started;
        let mut next_kernel = started;
        // Every host is in the ring until it has failed to answer for PEER_STALE.
        let mut ring = self.peers.as_ref().map(|p| p.others.clone()).unwrap_or_default();
        while !self.stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            if now >= next_tick {
                next_tick = now + TICK;
                if !self.paused.load(Ordering::SeqCst)
                    && let Err(e) = self.secrets.refresh()
                {
                    tracing::warn!("publishing the SYN-cookie secrets: {e}");
                }
                if let Some(links) = &self.peers {
                    let ask = self.heartbeat(KIND_TIME_ASK, fingerprint, self.secrets.shared_now_ns());
                    for peer in &links.others {
                        // A peer that is down is what the heartbeats find out: no error.
                        let _ = links.socket.send_to(&ask.encode(), peer);
                    }
                    let r = report(&seen, fingerprint, now);
                    self.tell(&said, &r, &seen, fingerprint, now);
                    *self.shared.report.lock().unwrap_or_else(|e| e.into_inner()) = r;
                    said = r;
                    let live: Vec<SocketAddrV4> = links
                        .others
                        .iter()
                        .copied()
                        .filter(|p| seen.get(p).map_or(started, |s| s.at) + PEER_STALE > now)
                        .collect();
                    if live != ring {
                        self.set_ring(links, &live);
                        ring = live;
                    }
                }
            }
            if now >= next_kernel {
                next_kernel = now + KERNEL_CLOCK_EVERY;
                let unsynced = kernel_clock().max_error_us.is_none_or(|us| us * 1000 > SKEW_TOLERANCE_NS as i64);
                let was = self.shared.kernel_unsynchronized.swap(unsynced, Ordering::Relaxed);
                if unsynced && !was && self.shared_key {
                    tracing::warn!(
                        "the kernel says this host's clock is not synchronized within {} s (adjtimex): hosts sharing the \
                         cookie key validate each other's cookies only while their clocks agree that well; run NTP",
                        SKEW_TOLERANCE_NS / 1_000_000_000
                    );
                }
            }
            match &self.peers {
                Some(links) => self.receive(&links.socket, fingerprint, &mut seen),
                None => std::thread::park_timeout(next_tick.saturating_duration_since(Instant::now())),
            }
        }
    }

    /// Second chance forwards to the next of the `live` hosts from here (the ring of this host
    /// and them, in address order), for at most as many hosts as they are.
    fn set_ring(&self, links: &PeerLinks, live: &[SocketAddrV4]) {
        let addrs: Vec<Ipv4Addr> = live.iter().map(|a| *a.ip()).collect();
        let (next, hops) = match PeerRing::new(links.ring.this, &addrs, links.ring.port) {
            Ok(r) => (Some(r.next), r.others),
            Err(_) => (None, 0),
        };
        match self.switches.set_ring(next, hops) {
            Ok(()) => {
                self.shared.ring_hosts.store(u64::from(hops), Ordering::Relaxed);
                tracing::info!(
                    "second chance: {} other host{} answering; forwarding to {}",
                    hops,
                    if hops == 1 { "" } else { "s" },
                    next.map_or("nobody".to_string(), |n| n.to_string())
                )
            }
            Err(e) => tracing::warn!("second chance: updating the ring: {e}"),
        }
    }

    fn heartbeat(&self, kind: u8, fingerprint: u64, t1: u64) -> Heartbeat {
        let flags = if self.switches.draining() { HEARTBEAT_DRAINING } else { 0 };
        Heartbeat { kind, t1, key_fingerprint: fingerprint, flags, ..Heartbeat::default() }
    }

    /// Take heartbeats for up to the socket's timeout: answer questions, note answers.
    fn receive(&self, socket: &UdpSocket, fingerprint: u64, seen: &mut HashMap<SocketAddrV4, PeerSeen>) {
        let mut buf = [0u8; HEARTBEAT_LEN + 1];
        let Ok((n, SocketAddr::V4(from))) = socket.recv_from(&mut buf) else { return };
        let arrived = self.secrets.shared_now_ns();
        let Some(h) = Heartbeat::decode(&buf[..n]) else { return };
        match h.kind {
            KIND_TIME_ASK => {
                let mut answer = self.heartbeat(KIND_TIME_ANSWER, fingerprint, h.t1);
                answer.t2 = arrived;
                answer.t3 = self.secrets.shared_now_ns();
                let _ = socket.send_to(&answer.encode(), from);
            }
            KIND_TIME_ANSWER => {
                let (offset_ns, delay_ns) = h.offset_and_delay(arrived);
                seen.insert(from, PeerSeen {
                    offset_ns,
                    delay_ns,
                    key_fingerprint: h.key_fingerprint,
                    draining: h.flags & HEARTBEAT_DRAINING != 0,
                    at: Instant::now(),
                });
            }
            _ => {}
        }
    }

    /// Log what changed since the last report.
    fn tell(&self, before: &PeerReport, now: &PeerReport, seen: &HashMap<SocketAddrV4, PeerSeen>, fingerprint: u64, at: Instant) {
        let tolerance_s = SKEW_TOLERANCE_NS as f64 / 1e9;
        // The reachable peers for which `pred` holds, with their clock offsets.
        let describe = |pred: &dyn Fn(&PeerSeen) -> bool| {
            let mut v: Vec<String> = seen
                .iter()
                .filter(|(_, p)| at.duration_since(p.at) < PEER_STALE && pred(p))
                .map(|(a, p)| format!("{} {:+.3} s", a.ip(), p.offset_ns as f64 / 1e9))
                .collect();
            v.sort();
            v.join(", ")
        };
        let off = |p: &PeerSeen| p.offset_ns.unsigned_abs().saturating_sub(p.delay_ns / 2) > SKEW_TOLERANCE_NS;
        if now.self_clock_off && !before.self_clock_off {
            tracing::warn!(
                "this host's clock is off: most peers' clocks differ from it by more than {tolerance_s} s ({}); cookies \
                 minted here or there may not validate on the other hosts; fix this host's time (NTP)",
                describe(&|_| true)
            );
        } else if !now.self_clock_off && before.self_clock_off {
            tracing::info!("this host's clock agrees with its peers' again");
        }
        if now.clock_off > before.clock_off && !now.self_clock_off {
            tracing::warn!("peers whose clocks differ from this host's by more than {tolerance_s} s: {}", describe(&off));
        }
        if now.self_key_differs && !before.self_key_differs {
            tracing::warn!(
                "this host's cookie key differs from its peers' (key fingerprints differ): handshakes that move between \
                 this host and the others fail their cookie check (xdp_cookie_ack_invalid); give every host the same \
                 --cookie-key-file"
            );
        } else if now.other_key > before.other_key && !now.self_key_differs {
            tracing::warn!(
                "peers with another cookie key (clock offsets shown): {}",
                describe(&|p| p.key_fingerprint != fingerprint)
            );
        }
        if now.reachable < before.reachable {
            tracing::info!("peers reachable: {} (was {})", now.reachable, before.reachable);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(offset_ms: i64, fingerprint: u64) -> PeerSeen {
        PeerSeen { offset_ns: offset_ms * 1_000_000, delay_ns: 1_000_000, key_fingerprint: fingerprint, draining: false, at: Instant::now() }
    }

    fn peers(list: &[PeerSeen]) -> HashMap<SocketAddrV4, PeerSeen> {
        list.iter().enumerate().map(|(i, p)| (SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, i as u8), 1), *p)).collect()
    }

    #[test]
    fn the_odd_one_out_says_its_clock_is_off_and_the_others_count_it() {
        // Host C, 5 s ahead, as A sees its peers (B fine, C off) and as C sees them.
        let a = report(&peers(&[seen(3, 7), seen(5000, 7)]), 7, Instant::now());
        assert_eq!((a.reachable, a.clock_off, a.self_clock_off, a.max_offset_ms), (2, 1, false, 5000));
        let c = report(&peers(&[seen(-5000, 7), seen(-4997, 7)]), 7, Instant::now());
        assert_eq!((c.clock_off, c.self_clock_off), (2, true));
        // Two hosts cannot tell who is wrong: both say so.
        let pair = report(&peers(&[seen(-5000, 7)]), 7, Instant::now());
        assert!(pair.self_clock_off);
        // Within the tolerance, or not certain beyond it (half a long round trip), is fine.
        let fine = report(&peers(&[seen(1900, 7), PeerSeen { delay_ns: 1_000_000_000, ..seen(2400, 7) }]), 7, Instant::now());
        assert_eq!((fine.clock_off, fine.self_clock_off), (0, false));
    }

    #[test]
    fn a_host_with_another_key_is_the_one_that_differs_from_most() {
        let c = report(&peers(&[seen(0, 1), seen(0, 1)]), 2, Instant::now());
        assert_eq!((c.other_key, c.self_key_differs), (2, true));
        let a = report(&peers(&[seen(0, 1), seen(0, 2)]), 1, Instant::now());
        assert_eq!((a.other_key, a.self_key_differs), (1, false));
        // Peers not heard from lately do not count.
        let stale = PeerSeen { at: Instant::now() - PEER_STALE, ..seen(0, 9) };
        let r = report(&peers(&[stale]), 1, Instant::now());
        assert_eq!((r.reachable, r.self_key_differs), (0, false));
    }

    #[test]
    fn the_ring_is_found_from_this_hosts_own_address() {
        // 127.0.0.1 is an address of every host.
        let options = ClusterOptions {
            peer_hosts: vec![Ipv4Addr::new(198, 18, 1, 6), Ipv4Addr::LOCALHOST, Ipv4Addr::new(198, 18, 1, 2)],
            peer_port: 9,
            ..ClusterOptions::default()
        };
        let ring = options.ring().unwrap().unwrap();
        assert_eq!((ring.this, ring.next, ring.others), (Ipv4Addr::LOCALHOST, Ipv4Addr::new(198, 18, 1, 2), 2));
        let none = ClusterOptions { peer_hosts: vec![Ipv4Addr::new(198, 18, 1, 6)], ..options.clone() };
        assert!(none.ring().unwrap_err().to_string().contains("this one included"));
        assert_eq!(ClusterOptions::default().ring().unwrap(), None);
    }
}
