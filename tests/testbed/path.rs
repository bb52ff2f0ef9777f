//! A path emulator: a client namespace and one or more server namespaces joined through a middle
//! namespace whose frames a program of ours forwards, with per direction a one-way delay and
//! jitter, a bottleneck rate with a drop-tail queue in bytes (optionally ECN CE marking above a
//! threshold), random or bursty (Gilbert-Elliott) loss, reordering and duplication.
//!
//! This kernel has neither netem nor fq, so the middle namespace runs no qdisc: two threads of
//! the calling process (one per direction) read frames with AF_PACKET sockets on the middle's
//! veth ends and write them out on the other side when the model ([`link::Link`]) says. The
//! middle is a two-sided switch: the client's frames go to the server whose MAC they are for,
//! every server's frames go to the client, through one bottleneck per direction (servers share
//! it). What a wire would carry differs from what a veth hands over, and [`frame`] bridges it:
//! the senders' TSO/GSO super-frames are cut into MTU-sized segments and partial checksums are
//! completed, so the kernel keeps its normal offloads and every decision is taken per frame.
//!
//! ```text
//!  client ns              middle ns                         server ns (one per server)
//!  [c] <--veth--> [mc]  up: mc -> loss -> queue -> rate -> delay -> m<i>   [m<i>] <--veth--> [s]
//!                        down: every m<i> -> ... -> mc
//! ```
//!
//! Timing: a frame's arrival is the kernel's receive timestamp, so the forwarding thread's
//! wake-up delay does not add to it; its departure is as late as the thread wakes after the
//! deadline, which [`DirStats`] records (`lateness`), with everything else the path did.

pub mod flows;
pub mod frame;
mod kernel_apps;
pub mod link;
pub mod probe;
pub mod trains;

use std::{
    collections::BinaryHeap,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    process::Child,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, ensure};
pub use kernel_apps::{KernelApp, KernelApps};
pub use link::{Loss, Nanos, PathSpec, Reorder, bdp_bytes};

use crate::{Netns, mac_of, mac_text, peer_pass, sh, unique_tag};

/// A direction of the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Client to server.
    Up,
    /// Server to client.
    Down,
}

/// One server's namespace, behind the middle.
pub struct Server {
    pub ns: Netns,
    /// Its veth end (synx attaches here).
    pub iface: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    /// The middle's end of its veth.
    middle_if: String,
}

impl Server {
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.v4.into(), port)
    }

    /// The middle's end of its veth, where the emulator writes what goes to this server: a
    /// netdev egress hook there drops frames on the path, unseen by the sender's stack (a
    /// drop in the sender's own output or egress hooks fails its transmit, and TCP sends the
    /// segment again at once).
    pub fn middle_if(&self) -> &str {
        &self.middle_if
    }
}

/// How to build a [`PathBed`].
#[derive(Debug, Clone)]
pub struct PathBedBuilder {
    up: PathSpec,
    down: PathSpec,
    /// One entry per server: whether it runs native XDP (then its peer end in the middle needs
    /// an XDP program of its own for XDP_TX and redirects to deliver).
    servers: Vec<bool>,
    seed: u64,
    realtime: bool,
    congestion_control: String,
}

impl PathBedBuilder {
    /// The same spec both ways.
    pub fn both(mut self, spec: PathSpec) -> Self {
        self.up = spec.clone();
        self.down = spec;
        self
    }

    pub fn up(mut self, spec: PathSpec) -> Self {
        self.up = spec;
        self
    }

    pub fn down(mut self, spec: PathSpec) -> Self {
        self.down = spec;
        self
    }

    /// Add a server namespace that will run synx (native XDP on its veth).
    pub fn xdp_server(mut self) -> Self {
        self.servers.push(true);
        self
    }

    /// Add a server namespace for the kernel's own TCP: no XDP anywhere on its veth, so the
    /// kernel keeps GSO/TSO and its other offloads.
    pub fn kernel_server(mut self) -> Self {
        self.servers.push(false);
        self
    }

    /// The seed of the path's randomness (loss, jitter, reordering); each direction derives
    /// its own from it.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Run the forwarding threads under SCHED_FIFO (default: on). On a machine busy with other
    /// work this keeps their wake-ups prompt; they block whenever nothing is due, so they take
    /// no more CPU than the traffic needs.
    pub fn realtime(mut self, on: bool) -> Self {
        self.realtime = on;
        self
    }

    /// The congestion control of the kernel's TCP in the client and server namespaces
    /// (default: cubic, Linux's own default; this machine's kernel is built with BBR as its
    /// default, CONFIG_DEFAULT_TCP_CONG, and new namespaces inherit it).
    pub fn congestion_control(mut self, name: &str) -> Self {
        self.congestion_control = name.into();
        self
    }

    pub fn start(self) -> anyhow::Result<PathBed> {
        PathBed::start(self)
    }
}

/// Client, middle and servers, and the emulator forwarding between them; all removed on drop.
pub struct PathBed {
    // Field order is drop order: the forwarding threads stop first, then the peer programs,
    // then the namespaces.
    emulator: Emulator,
    peer_xdp: Vec<Child>,
    pub client: Netns,
    pub middle: Netns,
    pub servers: Vec<Server>,
    pub client_if: String,
    pub client_v4: Ipv4Addr,
    pub client_v6: Ipv6Addr,
    middle_client_if: String,
}

impl Drop for PathBed {
    fn drop(&mut self) {
        self.emulator.stop();
        for c in &mut self.peer_xdp {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

static NEXT_BED: AtomicU64 = AtomicU64::new(0);

impl PathBed {
    pub fn builder() -> PathBedBuilder {
        PathBedBuilder {
            up: PathSpec::default(),
            down: PathSpec::default(),
            servers: Vec::new(),
            seed: 1,
            realtime: true,
            congestion_control: "cubic".into(),
        }
    }

    fn start(b: PathBedBuilder) -> anyhow::Result<Self> {
        ensure!(!b.servers.is_empty(), "a path bed needs at least one server (xdp_server or kernel_server)");
        ensure!(b.servers.len() <= 5, "at most 5 servers fit a path bed's /29");
        crate::sweep_stale();
        let client = Netns::new("c")?;
        let middle = Netns::new("m")?;
        // The middle takes part in nothing: no IPv6 link-local chatter (router solicitations,
        // MLD reports) to forward.
        middle.exec("sysctl", &["-qw", "net.ipv6.conf.default.disable_ipv6=1"])?;
        middle.exec("sysctl", &["-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
        let n = NEXT_BED.fetch_add(1, Ordering::Relaxed) as u32;
        // A /29 per bed inside 198.18.0.0/15: the client .1, servers .2 up.
        let block = (std::process::id().wrapping_mul(64).wrapping_add(n)) % (1 << 14);
        let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + block * 8;
        let tag = block as u16;
        let v6 = |host: u16| Ipv6Addr::new(0xfd00, 0x5eed, 0x8000 | tag, 0, 0, 0, 0, host);
        let t = unique_tag();
        let client_if = format!("{t}c");
        let middle_client_if = format!("{t}m");
        let client_v4 = Ipv4Addr::from(base + 1);
        let client_v6 = v6(1);
        veth(&client, &client_if, &middle, &middle_client_if)?;
        let mut servers = Vec::new();
        for (i, _) in b.servers.iter().enumerate() {
            let ns = Netns::new(&format!("s{i}"))?;
            let iface = format!("{t}s{i}");
            let middle_if = format!("{t}m{i}");
            veth(&ns, &iface, &middle, &middle_if)?;
            servers.push(Server { ns, iface, v4: Ipv4Addr::from(base + 2 + i as u32), v6: v6(2 + i as u16), middle_if });
        }
        for (ns, ifname, v4, v6) in std::iter::once((&client, &client_if, client_v4, client_v6))
            .chain(servers.iter().map(|s| (&s.ns, &s.iface, s.v4, s.v6)))
        {
            ns.ip(&["addr", "add", &format!("{v4}/29"), "dev", ifname])?;
            ns.ip(&["-6", "addr", "add", &format!("{v6}/64"), "dev", ifname, "nodad"])?;
            ns.ip(&["link", "set", ifname, "up"])?;
        }
        allow_congestion_control(&b.congestion_control)?;
        let cc = format!("net.ipv4.tcp_congestion_control={}", b.congestion_control);
        for ns in std::iter::once(&client).chain(servers.iter().map(|s| &s.ns)) {
            ns.exec("sysctl", &["-qw", &cc])?;
        }
        for ifname in std::iter::once(&middle_client_if).chain(servers.iter().map(|s| &s.middle_if)) {
            middle.ip(&["link", "set", ifname, "promisc", "on", "up"])?;
        }
        // Static neighbours: no ARP or ND round trip, which the path would delay, in front of
        // a connection's first SYN.
        let client_mac = mac_of(&client, &client_if)?;
        let mut server_macs = Vec::new();
        for s in &servers {
            let mac = mac_of(&s.ns, &s.iface)?;
            neighbour(&client, &client_if, s.v4.into(), mac)?;
            neighbour(&client, &client_if, s.v6.into(), mac)?;
            neighbour(&s.ns, &s.iface, client_v4.into(), client_mac)?;
            neighbour(&s.ns, &s.iface, client_v6.into(), client_mac)?;
            server_macs.push(mac);
        }
        // Frames XDP_TX or redirects on a server's veth deliver into the middle only if the
        // middle's end has an XDP program too (see XDP-ON-VETH.md).
        let mut peer_xdp = Vec::new();
        for (s, &xdp) in servers.iter().zip(&b.servers) {
            if xdp {
                peer_xdp.push(peer_pass(&middle, &s.middle_if)?);
            }
        }
        let client_port = Port::open(&middle, &middle_client_if)?;
        let server_ports =
            servers.iter().map(|s| Port::open(&middle, &s.middle_if)).collect::<anyhow::Result<Vec<_>>>()?;
        let emulator = Emulator::start(client_port, server_ports, server_macs, &b)?;
        Ok(Self { emulator, peer_xdp, client, middle, servers, client_if, client_v4, client_v6, middle_client_if })
    }

    /// Change what one direction does from now on.
    pub fn set(&self, dir: Dir, spec: PathSpec) {
        self.emulator.dir(dir).set_spec(spec);
    }

    /// The same spec both ways from now on.
    pub fn set_both(&self, spec: PathSpec) {
        self.set(Dir::Up, spec.clone());
        self.set(Dir::Down, spec);
    }

    /// The same spec both ways, and each direction's randomness restarted from `seed` (as the
    /// builder's [`PathBedBuilder::seed`] derives it): the frames offered from now on meet the
    /// same draws whichever server they go to, so two peers' transfers can face the same
    /// losses (common random numbers). Returns once both forwarders have taken it, so no frame
    /// offered after the return meets the old draws.
    pub fn set_both_seeded(&self, spec: PathSpec, seed: u64) {
        let seeds = direction_seeds(seed);
        for (dir, seed) in [(Dir::Up, seeds.0), (Dir::Down, seeds.1)] {
            self.emulator.dir(dir).set(spec.clone(), Some(seed));
        }
        for dir in [Dir::Up, Dir::Down] {
            // The forwarder checks for a change at least every 10 ms.
            while self.emulator.dir(dir).changed.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// What one direction has done so far.
    pub fn stats(&self, dir: Dir) -> Snapshot {
        self.emulator.dir(dir).stats.snapshot()
    }

    /// Frames dropped by the veth devices themselves (every end's rx_dropped and tx_dropped,
    /// summed), which the path did not decide: they must stay 0 for a measurement to count.
    pub fn device_drops(&self) -> anyhow::Result<u64> {
        let mut total = 0;
        let ends = [(&self.client, &self.client_if), (&self.middle, &self.middle_client_if)];
        let server_ends = self.servers.iter().flat_map(|s| [(&s.ns, &s.iface), (&self.middle, &s.middle_if)]);
        for (ns, ifname) in ends.into_iter().chain(server_ends) {
            let out = ns.ip(&["-s", "-j", "link", "show", "dev", ifname])?;
            let v: serde_json::Value = serde_json::from_str(&out)?;
            let stats = &v[0]["stats64"];
            total += stats["rx"]["dropped"].as_u64().unwrap_or(0) + stats["tx"]["dropped"].as_u64().unwrap_or(0);
        }
        Ok(total)
    }

    /// `ethtool -k` of every veth end, by namespace role and name: the offloads each side ran
    /// with.
    pub fn offloads(&self) -> Vec<(String, String)> {
        let mut out = vec![(format!("client {}", self.client_if), ethtool_k(&self.client, &self.client_if))];
        for (i, s) in self.servers.iter().enumerate() {
            out.push((format!("server{i} {}", s.iface), ethtool_k(&s.ns, &s.iface)));
        }
        out
    }

    /// Turn on GRO on the client's and the kernel servers' veth ends, as a real NIC has it
    /// (veth ships with it off). Servers running XDP read frames before GRO, so theirs stays.
    pub fn enable_gro(&self) -> anyhow::Result<()> {
        self.client.exec("ethtool", &["-K", &self.client_if, "gro", "on"])?;
        for (s, xdp) in self.servers.iter().zip(&self.emulator.xdp_servers) {
            if !xdp {
                s.ns.exec("ethtool", &["-K", &s.iface, "gro", "on"])?;
            }
        }
        Ok(())
    }
}

/// A namespace other than the host's may only pick a congestion control the host lists in
/// tcp_allowed_congestion_control (this machine's lists reno and bbr): add `name` there if it
/// is missing. That permits it; no default changes.
fn allow_congestion_control(name: &str) -> anyhow::Result<()> {
    const ALLOWED: &str = "/proc/sys/net/ipv4/tcp_allowed_congestion_control";
    let allowed = std::fs::read_to_string(ALLOWED).with_context(|| format!("reading {ALLOWED}"))?;
    if !allowed.split_whitespace().any(|a| a == name) {
        std::fs::write(ALLOWED, format!("{} {name}", allowed.trim()))
            .with_context(|| format!("allowing {name} in {ALLOWED} (is it built or loadable?)"))?;
    }
    Ok(())
}

fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> anyhow::Result<()> {
    sh("ip", &["link", "add", a_if, "netns", a.name(), "type", "veth", "peer", "name", b_if, "netns", b.name()])?;
    Ok(())
}

fn neighbour(ns: &Netns, ifname: &str, ip: std::net::IpAddr, mac: [u8; 6]) -> anyhow::Result<()> {
    ns.ip(&["neigh", "replace", &ip.to_string(), "lladdr", &mac_text(mac), "dev", ifname, "nud", "permanent"])?;
    Ok(())
}

fn ethtool_k(ns: &Netns, ifname: &str) -> String {
    ns.exec("ethtool", &["-k", ifname]).unwrap_or_else(|e| format!("ethtool -k failed: {e:#}"))
}

// ---- What the emulator counts ----

/// Log2 buckets of microseconds: bucket 0 is < 1 us, bucket i is [2^(i-1), 2^i) us.
const BUCKETS: usize = 24;

/// What one direction has done, live (atomics the forwarding thread adds to).
#[derive(Default)]
pub struct DirStats {
    frames_in: AtomicU64,
    bytes_in: AtomicU64,
    super_frames: AtomicU64,
    segments: AtomicU64,
    impairable: AtomicU64,
    keyed: AtomicU64,
    lost: AtomicU64,
    tail_drops: AtomicU64,
    ce_marked: AtomicU64,
    duplicated: AtomicU64,
    reordered: AtomicU64,
    delivered: AtomicU64,
    delivered_bytes: AtomicU64,
    unfit: AtomicU64,
    send_errors: AtomicU64,
    recv_errors: AtomicU64,
    socket_drops: AtomicU64,
    no_timestamp: AtomicU64,
    late_reads: AtomicU64,
    lateness: [AtomicU64; BUCKETS],
    lateness_max_ns: AtomicU64,
    read_delay: [AtomicU64; BUCKETS],
    realtime: AtomicBool,
    ports: [PortStats; PORTS],
}

/// Ingress ports a direction counts apart (a bed has at most 5 servers, the up direction 1
/// port); a port past them counts with the last.
pub const PORTS: usize = 5;

/// One ingress port's TCP data segments at the bottleneck (see [`trains`]).
#[derive(Default)]
struct PortStats {
    segments: [AtomicU64; trains::BUCKETS],
    tail_drops: [AtomicU64; trains::BUCKETS],
    backlog_bytes: AtomicU64,
}

/// One ingress port's TCP data segments (payload > 0) offered to the bottleneck.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PortSnapshot {
    /// By their position in their flow's train ([`trains::bucket`]).
    pub segments: [u64; trains::BUCKETS],
    /// Those the full queue dropped, by the same positions.
    pub tail_drops: [u64; trains::BUCKETS],
    /// The queue's backlog each met on arrival, summed (bytes).
    pub backlog_bytes: u64,
}

impl PortSnapshot {
    pub fn total(&self) -> u64 {
        self.segments.iter().sum()
    }

    pub fn total_tail_drops(&self) -> u64 {
        self.tail_drops.iter().sum()
    }

    fn since(&self, e: &PortSnapshot) -> PortSnapshot {
        PortSnapshot {
            segments: std::array::from_fn(|i| self.segments[i].saturating_sub(e.segments[i])),
            tail_drops: std::array::from_fn(|i| self.tail_drops[i].saturating_sub(e.tail_drops[i])),
            backlog_bytes: self.backlog_bytes.saturating_sub(e.backlog_bytes),
        }
    }
}

fn bucket(ns: u64) -> usize {
    let us = ns / 1000;
    ((u64::BITS - us.leading_zeros()) as usize).min(BUCKETS - 1)
}

/// A copy of [`DirStats`] at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Frames read from the ingress veth ends (as the kernel handed them: GSO super-frames
    /// count once) and their bytes.
    pub frames_in: u64,
    pub bytes_in: u64,
    /// Frames that were GSO super-frames, and the wire-sized frames the path worked on (super
    /// frames cut up, plus every other frame).
    pub super_frames: u64,
    pub segments: u64,
    /// Segments subject to loss, duplication and reordering (IP traffic).
    pub impairable: u64,
    /// Segments whose random loss was drawn per TCP segment ([`flows`]): on a path with random
    /// loss, those of flows seen from their SYN.
    pub keyed: u64,
    pub lost: u64,
    pub tail_drops: u64,
    pub ce_marked: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub delivered: u64,
    pub delivered_bytes: u64,
    /// Frames that could not be made wire-ready, failed sends and receives, frames the
    /// AF_PACKET socket itself dropped (receive buffer full): all must stay 0.
    pub unfit: u64,
    pub send_errors: u64,
    pub recv_errors: u64,
    pub socket_drops: u64,
    /// Frames without a usable kernel receive timestamp (read time used instead).
    pub no_timestamp: u64,
    /// Frames that arrived before a frame the link had already taken (read from another
    /// socket in an earlier batch), offered at that frame's arrival instead of their own.
    pub late_reads: u64,
    /// How late frames left after their due time: histogram of log2 microsecond buckets.
    pub lateness: [u64; BUCKETS],
    /// The latest departure. Over an interval ([`Snapshot::since`]) exact when the interval
    /// set a new maximum, else the upper edge of its histogram's highest bucket (at most twice
    /// the interval's own).
    pub lateness_max: Duration,
    /// How long frames sat in the socket before the thread read them (not part of the
    /// emulated delay: arrival is the kernel's timestamp).
    pub read_delay: [u64; BUCKETS],
    /// The forwarding thread runs under SCHED_FIFO.
    pub realtime: bool,
    /// Per ingress port (in the down direction: per server, in the bed's order).
    pub ports: [PortSnapshot; PORTS],
}

impl DirStats {
    fn add(&self, c: &AtomicU64, n: u64) {
        let _ = self;
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            frames_in: g(&self.frames_in),
            bytes_in: g(&self.bytes_in),
            super_frames: g(&self.super_frames),
            segments: g(&self.segments),
            impairable: g(&self.impairable),
            keyed: g(&self.keyed),
            lost: g(&self.lost),
            tail_drops: g(&self.tail_drops),
            ce_marked: g(&self.ce_marked),
            duplicated: g(&self.duplicated),
            reordered: g(&self.reordered),
            delivered: g(&self.delivered),
            delivered_bytes: g(&self.delivered_bytes),
            unfit: g(&self.unfit),
            send_errors: g(&self.send_errors),
            recv_errors: g(&self.recv_errors),
            socket_drops: g(&self.socket_drops),
            no_timestamp: g(&self.no_timestamp),
            late_reads: g(&self.late_reads),
            lateness: std::array::from_fn(|i| g(&self.lateness[i])),
            lateness_max: Duration::from_nanos(g(&self.lateness_max_ns)),
            read_delay: std::array::from_fn(|i| g(&self.read_delay[i])),
            realtime: self.realtime.load(Ordering::Relaxed),
            ports: std::array::from_fn(|p| {
                let s = &self.ports[p];
                PortSnapshot {
                    segments: std::array::from_fn(|i| g(&s.segments[i])),
                    tail_drops: std::array::from_fn(|i| g(&s.tail_drops[i])),
                    backlog_bytes: g(&s.backlog_bytes),
                }
            }),
        }
    }
}

impl Snapshot {
    /// What happened between `earlier` and this snapshot.
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        let lateness: [u64; BUCKETS] = std::array::from_fn(|i| d(self.lateness[i], earlier.lateness[i]));
        Snapshot {
            frames_in: d(self.frames_in, earlier.frames_in),
            bytes_in: d(self.bytes_in, earlier.bytes_in),
            super_frames: d(self.super_frames, earlier.super_frames),
            segments: d(self.segments, earlier.segments),
            impairable: d(self.impairable, earlier.impairable),
            keyed: d(self.keyed, earlier.keyed),
            lost: d(self.lost, earlier.lost),
            tail_drops: d(self.tail_drops, earlier.tail_drops),
            ce_marked: d(self.ce_marked, earlier.ce_marked),
            duplicated: d(self.duplicated, earlier.duplicated),
            reordered: d(self.reordered, earlier.reordered),
            delivered: d(self.delivered, earlier.delivered),
            delivered_bytes: d(self.delivered_bytes, earlier.delivered_bytes),
            unfit: d(self.unfit, earlier.unfit),
            send_errors: d(self.send_errors, earlier.send_errors),
            recv_errors: d(self.recv_errors, earlier.recv_errors),
            socket_drops: d(self.socket_drops, earlier.socket_drops),
            no_timestamp: d(self.no_timestamp, earlier.no_timestamp),
            late_reads: d(self.late_reads, earlier.late_reads),
            lateness_max: if self.lateness_max > earlier.lateness_max {
                self.lateness_max
            } else {
                lateness.iter().rposition(|&n| n > 0).map_or(Duration::ZERO, |i| Duration::from_micros(1u64 << i)).min(self.lateness_max)
            },
            lateness,
            read_delay: std::array::from_fn(|i| d(self.read_delay[i], earlier.read_delay[i])),
            realtime: self.realtime,
            ports: std::array::from_fn(|p| self.ports[p].since(&earlier.ports[p])),
        }
    }

    /// Faults of the emulator itself (not decisions of the path): unfit frames, failed sends
    /// and receives, socket drops.
    pub fn faults(&self) -> u64 {
        self.unfit + self.send_errors + self.recv_errors + self.socket_drops
    }

    /// The `q` quantile (0..=1) of departure lateness, as the upper edge of its bucket.
    pub fn lateness_quantile(&self, q: f64) -> Duration {
        quantile(&self.lateness, q)
    }

    pub fn read_delay_quantile(&self, q: f64) -> Duration {
        quantile(&self.read_delay, q)
    }
}

fn quantile(h: &[u64; BUCKETS], q: f64) -> Duration {
    let total: u64 = h.iter().sum();
    if total == 0 {
        return Duration::ZERO;
    }
    let want = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, n) in h.iter().enumerate() {
        seen += n;
        if seen >= want {
            return Duration::from_micros(1u64 << i);
        }
    }
    Duration::from_micros(1u64 << (BUCKETS - 1))
}

// ---- The forwarding threads ----

/// One direction: its model's spec (to change at run time) and its counters.
struct Direction {
    /// A new spec, and a new seed for the randomness if one is given.
    spec: Mutex<Option<(PathSpec, Option<u64>)>>,
    changed: AtomicBool,
    stats: DirStats,
}

impl Direction {
    fn set_spec(&self, spec: PathSpec) {
        self.set(spec, None);
    }

    fn set(&self, spec: PathSpec, seed: Option<u64>) {
        *self.spec.lock().unwrap() = Some((spec, seed));
        self.changed.store(true, Ordering::Release);
    }
}

/// Each direction's seed from the path's.
fn direction_seeds(seed: u64) -> (u64, u64) {
    (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), seed.wrapping_mul(0xc2b2_ae3d_27d4_eb4f) ^ 1)
}

struct Emulator {
    stop: Arc<AtomicBool>,
    up: Arc<Direction>,
    down: Arc<Direction>,
    threads: Vec<JoinHandle<()>>,
    xdp_servers: Vec<bool>,
}

impl Emulator {
    fn start(client: Port, servers: Vec<Port>, server_macs: Vec<[u8; 6]>, b: &PathBedBuilder) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let dir = || Arc::new(Direction { spec: Mutex::new(None), changed: AtomicBool::new(false), stats: DirStats::default() });
        let (up, down) = (dir(), dir());
        let client = Arc::new(client);
        let servers: Vec<Arc<Port>> = servers.into_iter().map(Arc::new).collect();
        let mut threads = Vec::new();
        // Up: from the client to the server the frame is addressed to (group frames to all).
        let route_up = {
            let macs = server_macs.clone();
            move |f: &[u8]| -> Vec<usize> {
                match macs.iter().position(|m| f.len() >= 6 && f[..6] == m[..]) {
                    Some(i) => vec![i],
                    None => (0..macs.len()).collect(),
                }
            }
        };
        let seeds = direction_seeds(b.seed);
        threads.push(Forwarder::spawn(
            "pathemu-up",
            vec![client.clone()],
            servers.clone(),
            Box::new(route_up),
            link::Link::new(b.up.clone(), seeds.0),
            up.clone(),
            stop.clone(),
            b.realtime,
        )?);
        threads.push(Forwarder::spawn(
            "pathemu-down",
            servers,
            vec![client],
            Box::new(|_: &[u8]| vec![0]),
            link::Link::new(b.down.clone(), seeds.1),
            down.clone(),
            stop.clone(),
            b.realtime,
        )?);
        Ok(Self { stop, up, down, threads, xdp_servers: b.servers.clone() })
    }

    fn dir(&self, d: Dir) -> &Direction {
        match d {
            Dir::Up => &self.up,
            Dir::Down => &self.down,
        }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A frame waiting for its delivery time.
struct Pending {
    at: Nanos,
    seq: u64,
    port: usize,
    frame: Vec<u8>,
}

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    /// Reversed: the earliest (then the first offered) on top of the max-heap.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

type Route = Box<dyn Fn(&[u8]) -> Vec<usize> + Send>;

struct Forwarder {
    ingress: Vec<Arc<Port>>,
    egress: Vec<Arc<Port>>,
    route: Route,
    link: link::Link,
    /// Random loss's draws per TCP segment ([`flows`]).
    flows: flows::Flows,
    /// Each flow's place in its train of data segments ([`trains`]).
    trains: trains::Trains,
    dir: Arc<Direction>,
    stop: Arc<AtomicBool>,
    heap: BinaryHeap<Pending>,
    seq: u64,
    /// The latest arrival the link has been offered: the link's clock, which never goes back.
    latest: Nanos,
}

/// A frame read from an ingress socket, not yet offered to the link.
struct Arrival {
    /// The kernel's receive time (or the read time, without one).
    at: Nanos,
    /// The ingress port it came in on.
    port: usize,
    truncated: bool,
    hdr: frame::VnetHdr,
    /// The frame without its virtio-net header.
    data: Vec<u8>,
}

/// Frames read per ingress socket before due frames are sent again: bounds how long a burst
/// of arrivals can hold up departures.
const READ_BATCH: usize = 32;

impl Forwarder {
    #[allow(clippy::too_many_arguments, reason = "one private call site per direction")]
    fn spawn(
        name: &str,
        ingress: Vec<Arc<Port>>,
        egress: Vec<Arc<Port>>,
        route: Route,
        link: link::Link,
        dir: Arc<Direction>,
        stop: Arc<AtomicBool>,
        realtime: bool,
    ) -> anyhow::Result<JoinHandle<()>> {
        let flows = flows::Flows::new(link.seed());
        let mut f = Forwarder {
            ingress,
            egress,
            route,
            link,
            flows,
            trains: trains::Trains::default(),
            dir,
            stop,
            heap: BinaryHeap::new(),
            seq: 0,
            latest: 0,
        };
        Ok(std::thread::Builder::new().name(name.into()).spawn(move || {
            // SAFETY: prctl/sched_setscheduler on the calling thread with valid arguments;
            // failure leaves the defaults (then the lateness figures show it).
            unsafe {
                // Sleeps end when asked, not up to the default 50 us later.
                libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
                if realtime {
                    let p = libc::sched_param { sched_priority: 10 };
                    let ok = libc::sched_setscheduler(0, libc::SCHED_FIFO, &p) == 0;
                    f.dir.stats.realtime.store(ok, Ordering::Relaxed);
                }
            }
            f.run();
        })?)
    }

    fn run(&mut self) {
        let mut buf = vec![0u8; 256 * 1024];
        let mut last_stats = now();
        while !self.stop.load(Ordering::Relaxed) {
            if self.dir.changed.swap(false, Ordering::Acquire)
                && let Some((spec, seed)) = self.dir.spec.lock().unwrap().take()
            {
                self.link.set_spec(spec);
                if let Some(seed) = seed {
                    self.link.reseed(seed);
                    self.flows.reset(seed);
                }
            }
            self.send_due();
            let t = now();
            if t - last_stats > 100_000_000 {
                last_stats = t;
                for p in &self.ingress {
                    self.dir.stats.add(&self.dir.stats.socket_drops, p.drops());
                }
            }
            let wait = self.heap.peek().map_or(10_000_000, |p| p.at.saturating_sub(t)).min(10_000_000);
            if !self.wait_readable(wait) {
                continue;
            }
            // Every port's frames, offered to the link in the order they arrived: a queue
            // judges a frame by the backlog at its arrival, so a frame offered after frames
            // that came later would see their bytes ahead of it (port by port, the second
            // server's frames would lose to the first's at a shared bottleneck).
            let mut batch = Vec::new();
            for (i, port) in self.ingress.iter().enumerate() {
                for _ in 0..READ_BATCH {
                    match port.recv(&mut buf) {
                        Ok(Some(r)) => batch.push(self.read(i, r, &buf)),
                        Ok(None) => break,
                        Err(_) => self.dir.stats.add(&self.dir.stats.recv_errors, 1),
                    }
                }
            }
            // Stable: one socket's frames keep their order.
            batch.sort_by_key(|a| a.at);
            for a in batch {
                self.arrive(a);
            }
        }
        for p in &self.ingress {
            self.dir.stats.add(&self.dir.stats.socket_drops, p.drops());
        }
    }

    /// Wait up to `ns` for any ingress socket to become readable; false on timeout.
    fn wait_readable(&self, ns: Nanos) -> bool {
        if ns == 0 {
            return true;
        }
        let mut fds: Vec<libc::pollfd> =
            self.ingress.iter().map(|p| libc::pollfd { fd: p.fd(), events: libc::POLLIN, revents: 0 }).collect();
        let ts = libc::timespec { tv_sec: (ns / 1_000_000_000) as i64, tv_nsec: (ns % 1_000_000_000) as i64 };
        // SAFETY: valid pollfd array and timespec for the call.
        let n = unsafe { libc::ppoll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, &ts, std::ptr::null()) };
        n > 0
    }

    fn send_due(&mut self) {
        let s = &self.dir.stats;
        while self.heap.peek().is_some_and(|p| p.at <= now()) {
            let p = self.heap.pop().expect("peeked");
            let late = now().saturating_sub(p.at);
            s.add(&s.lateness[bucket(late)], 1);
            s.lateness_max_ns.fetch_max(late, Ordering::Relaxed);
            match self.egress[p.port].send(&p.frame) {
                Ok(()) => {
                    s.add(&s.delivered, 1);
                    s.add(&s.delivered_bytes, p.frame.len() as u64);
                }
                Err(_) => s.add(&s.send_errors, 1),
            }
        }
    }

    /// A frame just read into `buf`, counted and stamped with its arrival.
    fn read(&self, port: usize, r: Received, buf: &[u8]) -> Arrival {
        let s = &self.dir.stats;
        s.add(&s.frames_in, 1);
        s.add(&s.bytes_in, r.len as u64);
        let t = now();
        let at = match r.timestamp {
            Some(ts) if ts <= t && t - ts < 1_000_000_000 => ts,
            _ => {
                s.add(&s.no_timestamp, 1);
                t
            }
        };
        s.add(&s.read_delay[bucket(t - at)], 1);
        let hdr = frame::VnetHdr::parse(buf[..frame::VNET_HDR_LEN].try_into().expect("10 bytes"));
        let data = if r.truncated { Vec::new() } else { buf[frame::VNET_HDR_LEN..frame::VNET_HDR_LEN + r.len].to_vec() };
        Arrival { at, port, truncated: r.truncated, hdr, data }
    }

    fn arrive(&mut self, a: Arrival) {
        let dir = self.dir.clone();
        let s = &dir.stats;
        // A frame read in a later batch than one that arrived after it (read between two
        // sockets' reads): taken as arriving now, as if it had been held up on its way.
        let arrival = if a.at < self.latest {
            s.add(&s.late_reads, 1);
            self.latest
        } else {
            a.at
        };
        self.latest = arrival;
        if a.truncated {
            s.add(&s.unfit, 1);
            return;
        }
        let Arrival { hdr, data, port: from, .. } = a;
        let port_stats = &s.ports[from.min(PORTS - 1)];
        if hdr.gso_type != 0 {
            s.add(&s.super_frames, 1);
        }
        let Ok(frames) = frame::wire_frames(data, hdr) else {
            s.add(&s.unfit, 1);
            return;
        };
        for mut f in frames {
            s.add(&s.segments, 1);
            let impair = frame::impairable(&f);
            s.add(&s.impairable, u64::from(impair));
            let seg = frame::tcp_seg(&f);
            // Only random loss reads a draw: other paths skip the flow table.
            let keyed = matches!(self.link.spec().loss, Loss::Random(_));
            let draw = keyed.then_some(seg.as_ref()).flatten().and_then(|seg| self.flows.draw(seg));
            s.add(&s.keyed, u64::from(draw.is_some()));
            // A data segment's place in its flow's train, and the queue it meets.
            let train = seg.filter(|seg| seg.payload > 0).map(|seg| {
                let gap = self.link.frame_time().unwrap_or(0);
                let b = trains::bucket(self.trains.position(seg.tuple, arrival, gap));
                s.add(&port_stats.segments[b], 1);
                s.add(&port_stats.backlog_bytes, self.link.backlog(arrival) as u64);
                b
            });
            match self.link.offer_drawn(arrival, f.len(), impair, frame::ecn_capable(&f), draw) {
                link::Fate::Lost => s.add(&s.lost, 1),
                link::Fate::TailDrop => {
                    s.add(&s.tail_drops, 1);
                    if let Some(b) = train {
                        s.add(&port_stats.tail_drops[b], 1);
                    }
                }
                link::Fate::Deliver { at, ce, copy_at, reordered } => {
                    if ce {
                        frame::mark_ce(&mut f);
                        s.add(&s.ce_marked, 1);
                    }
                    s.add(&s.reordered, u64::from(reordered));
                    let ports = (self.route)(&f);
                    if let Some(copy_at) = copy_at {
                        s.add(&s.duplicated, 1);
                        for &port in &ports {
                            self.push(copy_at, port, f.clone());
                        }
                    }
                    for &port in &ports {
                        self.push(at, port, f.clone());
                    }
                }
            }
        }
    }

    fn push(&mut self, at: Nanos, port: usize, frame: Vec<u8>) {
        self.seq += 1;
        self.heap.push(Pending { at, seq: self.seq, port, frame });
    }
}

/// CLOCK_MONOTONIC in nanoseconds.
pub fn now() -> Nanos {
    clock(libc::CLOCK_MONOTONIC)
}

fn clock(id: libc::clockid_t) -> Nanos {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime into a valid timespec.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

// ---- AF_PACKET ports ----

const PACKET_STATISTICS: libc::c_int = 6;
const PACKET_VNET_HDR: libc::c_int = 15;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// An AF_PACKET socket on one of the middle's veth ends: reads what arrives on it (with a
/// virtio-net header describing GSO and checksum state, and a kernel timestamp), writes frames
/// out of it.
struct Port {
    fd: OwnedFd,
}

struct Received {
    len: usize,
    truncated: bool,
    /// Kernel receive time on CLOCK_MONOTONIC.
    timestamp: Option<Nanos>,
}

impl Port {
    fn open(ns: &Netns, ifname: &str) -> anyhow::Result<Self> {
        let ifname = ifname.to_string();
        ns.run(move || -> anyhow::Result<Self> {
            let proto = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain socket(2); owned below.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
            ensure!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
            // SAFETY: a fresh fd we own.
            let port = Self { fd: unsafe { OwnedFd::from_raw_fd(fd) } };
            port.setsockopt(libc::SOL_PACKET, PACKET_VNET_HDR, 1)?;
            // Our own sends out of this end are not arrivals.
            port.setsockopt(libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)?;
            port.setsockopt(libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)?;
            // Room for a burst of 64 KB super-frames while the thread sends.
            port.setsockopt(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 32 << 20)?;
            port.setsockopt(libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 8 << 20)?;
            let name = std::ffi::CString::new(ifname.clone())?;
            // SAFETY: valid NUL-terminated name.
            let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
            ensure!(index != 0, "no interface {ifname}");
            // SAFETY: zeroed sockaddr_ll is valid; fields set below.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = index as i32;
            // SAFETY: binding with a correctly sized sockaddr_ll.
            let rc = unsafe {
                libc::bind(fd, (&raw const sll).cast(), std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t)
            };
            ensure!(rc == 0, "bind AF_PACKET on {ifname}: {}", std::io::Error::last_os_error());
            // Frames that arrived before the bind filtered by interface: drain them.
            let mut buf = vec![0u8; 256 * 1024];
            while let Ok(Some(_)) = port.recv(&mut buf) {}
            port.drops();
            Ok(port)
        })?
    }

    fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn setsockopt(&self, level: libc::c_int, name: libc::c_int, v: libc::c_int) -> anyhow::Result<()> {
        // SAFETY: an int option of the right size on our socket.
        let rc = unsafe {
            libc::setsockopt(self.fd(), level, name, (&raw const v).cast(), std::mem::size_of::<libc::c_int>() as libc::socklen_t)
        };
        ensure!(rc == 0, "setsockopt({level}, {name}): {}", std::io::Error::last_os_error());
        Ok(())
    }

    /// Frames the socket dropped since the last call (PACKET_STATISTICS resets on read).
    fn drops(&self) -> u64 {
        let mut st = [0u32; 2]; // struct tpacket_stats { tp_packets, tp_drops }
        let mut len = std::mem::size_of_val(&st) as libc::socklen_t;
        // SAFETY: a buffer of the option's size.
        let rc = unsafe { libc::getsockopt(self.fd(), libc::SOL_PACKET, PACKET_STATISTICS, st.as_mut_ptr().cast(), &mut len) };
        if rc == 0 { u64::from(st[1]) } else { 0 }
    }

    /// Read one frame without waiting into `buf` (virtio-net header first): None when there
    /// is none.
    fn recv(&self, buf: &mut [u8]) -> std::io::Result<Option<Received>> {
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        let mut cmsg = [0u64; 16];
        // SAFETY: zeroed msghdr is valid; pointers set to live buffers below.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cmsg);
        // SAFETY: recvmsg into the buffers described by msg.
        let n = unsafe { libc::recvmsg(self.fd(), &mut msg, libc::MSG_DONTWAIT | libc::MSG_TRUNC) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return if e.kind() == std::io::ErrorKind::WouldBlock { Ok(None) } else { Err(e) };
        }
        let n = n as usize;
        if n < frame::VNET_HDR_LEN {
            return Err(std::io::Error::other("short read"));
        }
        let truncated = n > buf.len() || msg.msg_flags & libc::MSG_TRUNC != 0;
        let mut timestamp = None;
        // SAFETY: walking the control messages the kernel wrote into our buffer.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SO_TIMESTAMPNS {
                    let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    let real = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
                    // The timestamp is CLOCK_REALTIME; move it to CLOCK_MONOTONIC.
                    let (r, m) = (clock(libc::CLOCK_REALTIME), now());
                    timestamp = (real > 0).then(|| (m + real).saturating_sub(r));
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        let len = n.min(buf.len()) - frame::VNET_HDR_LEN;
        Ok(Some(Received { len, truncated, timestamp }))
    }

    /// Write one wire-ready frame (an all-zero virtio-net header: nothing left to offload).
    fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        let hdr = [0u8; frame::VNET_HDR_LEN];
        let iov = [
            libc::iovec { iov_base: hdr.as_ptr() as *mut _, iov_len: hdr.len() },
            libc::iovec { iov_base: frame.as_ptr() as *mut _, iov_len: frame.len() },
        ];
        // SAFETY: zeroed msghdr is valid; the iovecs point at live buffers for the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_ptr() as *mut _;
        msg.msg_iovlen = 2;
        // SAFETY: sendmsg of the buffers described by msg.
        let n = unsafe { libc::sendmsg(self.fd(), &msg, 0) };
        if n < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_lateness(late_us: &[u64]) -> Snapshot {
        let mut s = Snapshot::default();
        for &us in late_us {
            s.lateness[bucket(us * 1000)] += 1;
            s.lateness_max = s.lateness_max.max(Duration::from_micros(us));
        }
        s
    }

    #[test]
    fn an_interval_reports_its_own_latest_departure_not_the_runs() {
        let first = with_lateness(&[60, 8000]);
        // A new maximum in the interval: exact.
        let later = with_lateness(&[60, 8000, 90, 9500]);
        assert_eq!(later.since(&first).lateness_max, Duration::from_micros(9500));
        // None: bounded by the interval's highest bucket (90 us: 64..128), not the 8 ms of
        // before.
        let later = with_lateness(&[60, 8000, 90, 70]);
        assert_eq!(later.since(&first).lateness_max, Duration::from_micros(128));
        assert_eq!(first.since(&first).lateness_max, Duration::ZERO);
    }
}
