//! Several synx hosts serving one anycast address behind a router that spreads connections over
//! them with ECMP, each host announcing the address with BGP (BIRD 2), as a service that
//! outgrows one machine runs (the README's "Many hosts").
//!
//! ```text
//!                              ┌ h0: 198.18.1.2/30   + anycast 198.19.0.1, synx, bird
//! client 198.18.0.2 ─ router ──┼ h1: 198.18.1.6/30   + anycast 198.19.0.1, synx, bird
//!                  .1          └ h2: 198.18.1.10/30  + anycast 198.19.0.1, synx, bird
//! ```
//! The router runs BIRD with a BGP session to each host and installs the multipath route it
//! learns (`merge paths`), with L4 hashing (`fib_multipath_hash_policy=1`), so each connection
//! goes to one host by its ports. A host announces the address from a `protocol static` that
//! the test disables (`birdc disable anycast`) to withdraw it, as a health-check script would
//! when `synx stats` says the host drains. The links to the hosts carry 1600-byte frames, room
//! for second chance's wrapping (`engine_common::second_chance::GROWTH`).
//!
//! Every namespace, process and file belongs to a guard that removes it on drop. Addresses
//! are the same in every cluster: each has its own namespaces, and nothing routes out.

use std::{
    io::Write as _,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{Context as _, ensure};

use crate::{Daemon, Netns, require_root, sh, sweep_stale, synx_bin, wait_for};

/// The address every host serves.
pub const ANYCAST: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
/// The port the hosts serve (echo).
pub const PORT: u16 = 7;
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const ROUTER_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// MTU of the links between the router and the hosts.
const HOST_MTU: &str = "1600";
const ROUTER_AS: u32 = 65000;
const HOSTS_AS: u32 = 65001;

/// Host `i`'s address on its link, and the router's.
pub fn host_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, (4 * i + 2) as u8)
}

fn router_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, (4 * i + 1) as u8)
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    fn new(tag: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("synx-mh-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A BIRD daemon in a namespace, with its own configuration and control socket; killed on
/// drop (and if the test process dies: it gets SIGKILL when its parent does).
pub struct Bird {
    child: Child,
    socket: PathBuf,
}

impl Bird {
    fn start(ns: &Netns, dir: &Path, name: &str, config: &str) -> anyhow::Result<Self> {
        let conf = dir.join(format!("{name}.conf"));
        std::fs::write(&conf, config)?;
        let socket = dir.join(format!("{name}.ctl"));
        let mut cmd = ns.command("bird");
        cmd.arg("-f").arg("-c").arg(&conf).arg("-s").arg(&socket).stdout(Stdio::null()).stderr(Stdio::inherit());
        // SAFETY: prctl in the child before exec; async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().context("starting bird (is bird2 installed? try `cargo xtask setup`)")?;
        let bird = Self { child, socket };
        ensure!(wait_for(Duration::from_secs(10), || bird.birdc(&["show", "status"]).is_ok()), "bird {name} did not start");
        Ok(bird)
    }

    /// `birdc -s SOCKET ARGS`.
    pub fn birdc(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["-s", self.socket.to_str().context("socket path")?];
        full.extend_from_slice(args);
        sh("birdc", &full)
    }

    /// Kill it at once (a host that dies).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One server host: its namespace, interface, BGP speaker and (while it runs) synx.
pub struct Host {
    // Field order is drop order: synx, bird, then the namespace.
    pub daemon: Option<Daemon>,
    pub bird: Bird,
    pub ns: Netns,
    pub iface: String,
    pub addr: Ipv4Addr,
}

impl Host {
    pub fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("synx runs on this host")
    }

    /// One counter of this host's `synx stats`.
    pub fn counter(&self, name: &str) -> u64 {
        self.daemon().counter(name).unwrap_or_else(|e| panic!("stats of {}: {e:#}", self.addr))
    }

    /// Stop announcing the anycast address (what a health check does when the host drains).
    pub fn withdraw(&self) -> anyhow::Result<()> {
        self.bird.birdc(&["disable", "anycast"]).map(drop)
    }

    pub fn announce(&self) -> anyhow::Result<()> {
        self.bird.birdc(&["enable", "anycast"]).map(drop)
    }

    /// The host dies: synx and its BGP speaker killed at once.
    pub fn kill(&mut self) {
        if let Some(d) = self.daemon.as_mut() {
            d.kill();
        }
        self.bird.kill();
    }
}

/// How the hosts' synx are started.
#[derive(Clone, Debug, Default)]
pub struct Setup {
    /// Host indexes that get a key of their own instead of the shared one.
    pub own_key: Vec<usize>,
    /// (host, ms): a host whose clock is that far off.
    pub clock_skew: Vec<(usize, i64)>,
    /// Without second chance (no `--peer-hosts`).
    pub no_peers: bool,
    /// More flags for every host.
    pub extra: Vec<String>,
}

/// Hosts behind an ECMP router, and a client.
pub struct Cluster {
    // Field order is drop order: hosts (synx, bird), the router's programs, the namespaces,
    // the directory.
    pub hosts: Vec<Host>,
    router_bird: Bird,
    peer_pass: Vec<Child>,
    pub router: Netns,
    pub client: Netns,
    pub dir: TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for h in &mut self.hosts {
            h.daemon = None;
        }
        for c in &mut self.peer_pass {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Cluster {
    /// `n` hosts running synx (echo on ANYCAST:PORT) with one key and each other as peers,
    /// announced with BGP; returns once the router has a route through every host.
    pub fn start(n: usize, setup: &Setup) -> anyhow::Result<Self> {
        require_root();
        sweep_stale();
        let router = Netns::new("r")?;
        let client = Netns::new("c")?;
        let tag = router.name().trim_end_matches('r').to_string();
        let dir = TempDir::new(&tag)?;
        // Client <-> router.
        let (cif, rif) = (format!("{tag}c"), format!("{tag}r"));
        sh("ip", &["link", "add", &cif, "netns", client.name(), "type", "veth", "peer", "name", &rif, "netns", router.name()])?;
        client.ip(&["addr", "add", &format!("{CLIENT}/30"), "dev", &cif])?;
        router.ip(&["addr", "add", &format!("{ROUTER_CLIENT_SIDE}/30"), "dev", &rif])?;
        client.ip(&["link", "set", &cif, "up"])?;
        router.ip(&["link", "set", &rif, "up"])?;
        client.ip(&["route", "add", &format!("{ANYCAST}/32"), "via", &ROUTER_CLIENT_SIDE.to_string()])?;
        // Full checksums from the client: the hosts' XDP program and engine check them.
        client.exec("ethtool", &["-K", &cif, "tx", "off"])?;
        router.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1", "net.ipv4.fib_multipath_hash_policy=1"])?;
        let mut router_conf = format!(
            "router id {ROUTER_CLIENT_SIDE};\nprotocol device {{}}\n\
             protocol kernel {{ ipv4 {{ export all; }}; merge paths yes; }}\n\
             template bgp host {{\n  local as {ROUTER_AS};\n  {TIMERS}\n  ipv4 {{ import all; export none; }};\n}}\n"
        );
        let key = dir.0.join("cookie.key");
        sh(synx_bin().to_str().context("binary path")?, &["keygen", key.to_str().context("path")?])?;
        let mut hosts = Vec::new();
        for i in 0..n {
            let ns = Netns::new(&format!("h{i}"))?;
            let (hif, xif) = (format!("{tag}h{i}"), format!("{tag}x{i}"));
            sh("ip", &["link", "add", &hif, "netns", ns.name(), "type", "veth", "peer", "name", &xif, "netns", router.name()])?;
            ns.ip(&["link", "set", &hif, "mtu", HOST_MTU, "up"])?;
            router.ip(&["link", "set", &xif, "mtu", HOST_MTU, "up"])?;
            ns.ip(&["addr", "add", &format!("{}/30", host_addr(i)), "dev", &hif])?;
            router.ip(&["addr", "add", &format!("{}/30", router_addr(i)), "dev", &xif])?;
            ns.ip(&["addr", "add", &format!("{ANYCAST}/32"), "dev", &hif])?;
            ns.ip(&["route", "add", "198.18.0.0/15", "via", &router_addr(i).to_string()])?;
            let bird = Bird::start(&ns, &dir.0, &format!("h{i}"), &host_bird_conf(i))?;
            router_conf.push_str(&format!("protocol bgp h{i} from host {{ neighbor {} as {HOSTS_AS}; }}\n", host_addr(i)));
            hosts.push(Host { daemon: None, bird, ns, iface: hif, addr: host_addr(i) });
        }
        let router_bird = Bird::start(&router, &dir.0, "router", &router_conf)?;
        let mut cluster = Self { hosts, router_bird, peer_pass: Vec::new(), router, client, dir };
        // Native XDP_TX and redirects on a veth deliver only when its peer runs XDP too.
        for i in 0..n {
            let child = crate::peer_pass(&cluster.router, &format!("{tag}x{i}"))?;
            cluster.peer_pass.push(child);
        }
        for i in 0..n {
            cluster.start_synx(i, setup)?;
        }
        ensure!(cluster.wait_nexthops(n), "the router has no route through all {n} hosts: {:?}", cluster.nexthops());
        Ok(cluster)
    }

    /// Start synx on host `i` as `setup` says.
    pub fn start_synx(&mut self, i: usize, setup: &Setup) -> anyhow::Result<()> {
        let key = if setup.own_key.contains(&i) {
            let own = self.dir.0.join(format!("own-{i}.key"));
            if !own.exists() {
                sh(synx_bin().to_str().context("binary path")?, &["keygen", own.to_str().context("path")?])?;
            }
            own
        } else {
            self.dir.0.join("cookie.key")
        };
        let listen = format!("{ANYCAST}:{PORT}=echo");
        let peers = (0..self.hosts.len()).map(|j| host_addr(j).to_string()).collect::<Vec<_>>().join(",");
        let mut args = vec!["--listen".to_string(), listen, "--cookie-key-file".into(), key.to_str().context("path")?.into()];
        if !setup.no_peers {
            args.extend(["--peer-hosts".into(), peers]);
        }
        if let Some((_, ms)) = setup.clock_skew.iter().find(|(h, _)| *h == i) {
            args.push(format!("--clock-skew-ms={ms}"));
        }
        args.extend(setup.extra.iter().cloned());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let host = &mut self.hosts[i];
        host.daemon = Some(Daemon::start(&host.ns, &host.iface, &refs)?);
        Ok(())
    }

    /// The router's next hops for the anycast address.
    pub fn nexthops(&self) -> Vec<Ipv4Addr> {
        let route = self.router.ip(&["route", "show", &format!("{ANYCAST}/32")]).unwrap_or_default();
        let words: Vec<&str> = route.split_whitespace().collect();
        words.windows(2).filter(|w| w[0] == "via").filter_map(|w| w[1].parse().ok()).collect()
    }

    /// Wait until the router routes the anycast address through exactly `n` hosts.
    pub fn wait_nexthops(&self, n: usize) -> bool {
        wait_for(Duration::from_secs(20), || self.nexthops().len() == n)
    }

    /// Host index of a next hop.
    pub fn host_of(&self, nexthop: Ipv4Addr) -> Option<usize> {
        self.hosts.iter().position(|h| h.addr == nexthop)
    }

    /// Connect from the client from source port `port` (0: any).
    pub fn connect(&self, port: u16) -> anyhow::Result<TcpStream> {
        self.client
            .run(move || -> anyhow::Result<TcpStream> {
                let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
                s.set_reuse_address(true)?;
                s.bind(&SocketAddr::from(SocketAddrV4::new(CLIENT, port)).into())?;
                s.connect_timeout(&SocketAddr::from(SocketAddrV4::new(ANYCAST, PORT)).into(), Duration::from_secs(10))?;
                let s: TcpStream = s.into();
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                s.set_nodelay(true)?;
                Ok(s)
            })?
            .context("connecting to the anycast address")
    }

    /// The host holding the client's connection from `port`, by `synx conns`.
    pub fn holder(&self, port: u16) -> Option<usize> {
        let remote = format!("{CLIENT}:{port}");
        self.hosts.iter().position(|h| {
            h.daemon.as_ref().and_then(|d| d.conns().ok()).is_some_and(|conns| conns.iter().any(|c| c["remote"] == remote.as_str()))
        })
    }

    /// Route the client's segments from `port`: its SYNs to host `syn_to`, everything else to
    /// host `rest_to` (nftables marks them in the router, policy routing by the mark), as a
    /// route change between the SYN-ACK and the final ACK would.
    pub fn steer(&self, port: u16, syn_to: usize, rest_to: usize) -> anyhow::Result<()> {
        let table = format!("steer{port}");
        self.router.nft(&format!(
            "table ip {table} {{\n  chain pre {{\n    type filter hook prerouting priority mangle; policy accept;\n    \
             ip saddr {CLIENT} tcp sport {port} tcp flags & (syn | ack) == syn meta mark set {syn_mark}\n    \
             ip saddr {CLIENT} tcp sport {port} tcp flags & syn == 0 meta mark set {rest_mark}\n  }}\n}}\n",
            syn_mark = 0x100 + port as u32 * 2,
            rest_mark = 0x101 + port as u32 * 2,
        ))?;
        for (mark, host) in [(0x100 + port as u32 * 2, syn_to), (0x101 + port as u32 * 2, rest_to)] {
            let t = mark.to_string();
            self.router.ip(&["rule", "add", "fwmark", &t, "table", &t])?;
            self.router.ip(&["route", "add", &format!("{ANYCAST}/32"), "via", &host_addr(host).to_string(), "table", &t])?;
        }
        Ok(())
    }

    /// `synx drain` on host `i`.
    pub fn drain(&self, i: usize) -> anyhow::Result<String> {
        let socket = self.hosts[i].daemon().control_socket.clone();
        sh(synx_bin().to_str().context("binary path")?, &["drain", "--control-socket", socket.to_str().context("path")?])
    }

    /// The router's BIRD (tests look at its sessions).
    pub fn router_birdc(&self, args: &[&str]) -> anyhow::Result<String> {
        self.router_bird.birdc(args)
    }
}

/// Short BGP timers, so sessions come up and go down within a second or two.
const TIMERS: &str = "connect delay time 1; connect retry time 1; error wait time 1, 2; hold time 6; keepalive time 2;";

/// Host `i`'s BIRD: a static route for the anycast address (disabled to withdraw it), exported
/// to the router over eBGP; nothing imported, nothing written to the host's kernel.
fn host_bird_conf(i: usize) -> String {
    format!(
        "router id {me};\nprotocol device {{}}\n\
         protocol static anycast {{ ipv4; route {ANYCAST}/32 blackhole; }}\n\
         protocol bgp up {{\n  local {me} as {HOSTS_AS};\n  neighbor {router} as {ROUTER_AS};\n  {TIMERS}\n  \
         ipv4 {{ import none; export where proto = \"anycast\"; }};\n}}\n",
        me = host_addr(i),
        router = router_addr(i),
    )
}

/// Write `data` and read as many bytes back, from `s`.
pub fn echo(s: &mut TcpStream, data: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    s.write_all(data)?;
    let mut got = vec![0u8; data.len()];
    s.read_exact(&mut got)?;
    Ok(got)
}

/// Whether `e` is a reset seen by the client.
pub fn is_reset(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::BrokenPipe)
}

