//! Fixtures for synx's veth-pair tests and demo: network namespaces joined by a veth pair, code
//! run inside a namespace, and a `synx run` daemon started the way an operator starts it.
//!
//! Every resource is owned by a guard whose `Drop` removes it, so a failing (panicking) test
//! cleans up too. Names carry the creating process id (`sx<pid>-...`), and [`sweep_stale`]
//! removes whatever a killed process (SIGKILL, Ctrl-C) left behind, at the start of the next run.
//!
//! Addresses: IPv4 from 198.18.0.0/15 (RFC 2544 benchmark range) and IPv6 from fd00:5eed::/32
//! (ULA). Namespaces get no default route, so nothing can leave them.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

mod nginx;
pub mod path;
pub use nginx::Nginx;
pub mod multihost;

const PREFIX: &str = "sx";
static NEXT_ID: AtomicU32 = AtomicU32::new(1);

/// Run a command, failing with its stderr when it fails.
pub fn sh(cmd: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd} (is it installed? try `cargo xtask setup`)"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A unique short tag for this process and call: `sx<pid>x<n>` (fits interface names).
fn unique_tag() -> String {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    format!("{PREFIX}{}x{n}", std::process::id())
}

fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    let alive = unsafe { libc::kill(pid as i32, 0) } == 0;
    alive || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Remove namespaces (and with them their veths and XDP attachments) left by test or demo
/// processes that no longer exist.
pub fn sweep_stale() {
    for name in netns_names() {
        let name = name.as_str();
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let Some(pid) = rest.split('x').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !pid_alive(pid) {
            let _ = sh("ip", &["netns", "del", name]);
        }
    }
}

/// Remove this process's own namespaces at once, killing what runs inside them first (a
/// namespace outlives its deletion while a process holds it, and with it its veths and XDP
/// attachments): for a process that is exiting without unwinding (a signal), whose guards'
/// `Drop` will not run. Returns how many it removed.
pub fn remove_own_namespaces() -> usize {
    let mine = format!("{PREFIX}{}x", std::process::id());
    let names: Vec<String> = netns_names().into_iter().filter(|n| n.starts_with(&mine)).collect();
    for name in &names {
        for pid in sh("ip", &["netns", "pids", name]).unwrap_or_default().split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            // SAFETY: a signal to a process inside a namespace this process created.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = sh("ip", &["netns", "del", name]);
    }
    names.len()
}

/// The names of the machine's named network namespaces (`ip netns list`; none if it fails).
fn netns_names() -> Vec<String> {
    let list = sh("ip", &["netns", "list"]).unwrap_or_default();
    list.lines().filter_map(|l| Some(l.split_whitespace().next()?.to_string())).collect()
}

/// A network namespace that is deleted on drop (with everything inside it).
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn new(role: &str) -> anyhow::Result<Self> {
        let name = format!("{}{role}", unique_tag());
        sh("ip", &["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NS ...`
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    /// A command prefix that runs `cmd` inside the namespace.
    pub fn command(&self, cmd: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, cmd]);
        c
    }

    /// Run `cmd args` inside the namespace and return its stdout.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["netns", "exec", &self.name, cmd];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    /// A counter of the kernel's network statistics in the namespace, as `nstat` names it
    /// (`TcpExtPAWSEstab`, `IpExtInCEPkts`, `TcpRetransSegs`): its absolute value; an error if
    /// the kernel has no such counter.
    pub fn nstat(&self, name: &str) -> anyhow::Result<u64> {
        let out = self.exec("nstat", &["-az", name])?;
        let line = out.lines().find(|l| l.split_whitespace().next() == Some(name));
        line.and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no counter {name} in namespace {}", self.name))
    }

    /// Load an nftables ruleset into the namespace (`nft -f -`).
    pub fn nft(&self, ruleset: &str) -> anyhow::Result<()> {
        use std::io::Write as _;
        let mut child = self
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running nft (is nftables installed? try `cargo xtask setup`)")?;
        child.stdin.take().context("stdin")?.write_all(ruleset.as_bytes())?;
        let out = child.wait_with_output()?;
        ensure!(out.status.success(), "nft: {}", String::from_utf8_lossy(&out.stderr).trim());
        Ok(())
    }

    /// Run `f` on a thread that has entered this namespace: sockets it creates live there.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        self.spawn(f).join().map_err(|p| anyhow::anyhow!("thread in netns panicked: {p:?}"))?
    }

    /// Start `f` on a thread that has entered this namespace and return at once (threads it
    /// starts in turn inherit the namespace). Joining gives `f`'s result, or why the thread
    /// could not enter the namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<anyhow::Result<T>> {
        let path = PathBuf::from("/var/run/netns").join(&self.name);
        std::thread::spawn(move || -> anyhow::Result<T> {
            let file = std::fs::File::open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            // SAFETY: setns on this thread only; the fd is valid for the call.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns {}: {}", path.display(), std::io::Error::last_os_error());
            }
            Ok(f())
        })
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        if let Some(mut child) = self.peer_xdp.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh("ip", &["netns", "del", &self.name]);
    }
}

/// A server namespace and a client namespace joined by a veth pair, with IPv4 and IPv6
/// addresses on both ends and no route anywhere else.
pub struct VethPair {
    // Field order matters: the peer program goes first, then the client namespace, then the
    // server's.
    peer_xdp: std::sync::Mutex<Option<Child>>,
    pub client: Netns,
    pub server: Netns,
    pub server_if: String,
    pub client_if: String,
    pub server_v4: Ipv4Addr,
    pub client_v4: Ipv4Addr,
    pub server_v6: Ipv6Addr,
    pub client_v6: Ipv6Addr,
}

impl VethPair {
    pub fn new() -> anyhow::Result<Self> {
        Self::with_queues(1)
    }

    /// A pair whose ends have `queues` RX and TX queues each: the client's flows spread over
    /// them by socket hash, and synx runs one AF_XDP socket and engine thread per queue.
    pub fn with_queues(queues: u32) -> anyhow::Result<Self> {
        sweep_stale();
        let server = Netns::new("s")?;
        let client = Netns::new("c")?;
        let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        // A /30 per pair inside 198.18.0.0/15, unique per process and call.
        let subnet = ((std::process::id() as u32 * 64 + n) % (1 << 15)) * 4;
        let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + subnet;
        let server_v4 = Ipv4Addr::from(base + 1);
        let client_v4 = Ipv4Addr::from(base + 2);
        let tag = (subnet / 4) as u16;
        let server_v6 = Ipv6Addr::new(0xfd00, 0x5eed, tag, 0, 0, 0, 0, 1);
        let client_v6 = Ipv6Addr::new(0xfd00, 0x5eed, tag, 0, 0, 0, 0, 2);
        let server_if = format!("{}s", server.name().trim_end_matches('s'));
        let client_if = format!("{}c", server.name().trim_end_matches('s'));
        let q = queues.to_string();
        sh(
            "ip",
            &[
                "link", "add", &server_if, "numtxqueues", &q, "numrxqueues", &q, "netns",
                server.name(), "type", "veth", "peer", "name", &client_if, "numtxqueues", &q,
                "numrxqueues", &q, "netns", client.name(),
            ],
        )?;
        for (ns, ifname, v4, v6) in [
            (&server, &server_if, server_v4, server_v6),
            (&client, &client_if, client_v4, client_v6),
        ] {
            ns.ip(&["addr", "add", &format!("{v4}/30"), "dev", ifname])?;
            ns.ip(&["-6", "addr", "add", &format!("{v6}/64"), "dev", ifname, "nodad"])?;
            ns.ip(&["link", "set", ifname, "up"])?;
        }
        // The client's veth would leave TCP checksums partial (offload) in frames that XDP sees.
        client.exec("ethtool", &["-K", &client_if, "tx", "off"])?;
        Ok(Self {
            peer_xdp: std::sync::Mutex::new(None),
            client,
            server,
            server_if,
            client_if,
            server_v4,
            client_v4,
            server_v6,
            client_v6,
        })
    }

    /// Native XDP_TX and redirects on a veth deliver only when the peer veth has an XDP program
    /// too: run `synx peer-pass` (an XDP_PASS program) on the client's end until drop.
    pub fn attach_peer_xdp(&self) -> anyhow::Result<()> {
        *self.peer_xdp.lock().unwrap() = Some(peer_pass(&self.client, &self.client_if)?);
        Ok(())
    }

    pub fn server_ip(&self, v6: bool) -> IpAddr {
        if v6 { self.server_v6.into() } else { self.server_v4.into() }
    }
}

/// `synx peer-pass` (an XDP_PASS program) on `iface` in `ns`, attached when this returns;
/// detached when the child is killed.
pub fn peer_pass(ns: &Netns, iface: &str) -> anyhow::Result<Child> {
    let mut child = ns
        .command(synx_bin().to_str().context("binary path")?)
        .args(["peer-pass", "--iface", iface])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting synx peer-pass")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    if !line.starts_with("attached") {
        let _ = child.kill();
        bail!("synx peer-pass did not attach on {iface}: {:?}", child.wait()?);
    }
    Ok(child)
}

/// Path of the `synx` binary the tests drive: `$SYNX_BIN`, else the workspace's target dir
/// (release first, as `cargo xtask test` builds it).
pub fn synx_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SYNX_BIN") {
        return p.into();
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or(root.join("target"));
    for profile in ["release", "debug"] {
        let p = target.join(profile).join("synx");
        if p.exists() {
            return p;
        }
    }
    panic!("no synx binary: run `cargo xtask test`, or build it and set SYNX_BIN");
}

/// A `synx run` daemon inside a namespace; stopped with SIGTERM (then SIGKILL) on drop.
pub struct Daemon {
    child: Child,
    pub control_socket: PathBuf,
    /// Lines the daemon printed to stdout up to its `listening on` line.
    pub banner: Vec<String>,
    /// Everything it printed to stdout so far (collected for its whole life).
    output: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Everything it logged (stderr) so far, which is also passed on to the test's stderr.
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Daemon {
    /// Start `synx run --iface IF --control-socket ... <extra>` in `ns` and wait until it prints
    /// `listening on`.
    pub fn start(ns: &Netns, iface: &str, extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_binary(&synx_bin(), ns, iface, extra)
    }

    /// [`Daemon::start`] with another synx binary.
    pub fn start_binary(bin: &std::path::Path, ns: &Netns, iface: &str, extra: &[&str]) -> anyhow::Result<Self> {
        let control_socket = PathBuf::from(format!("/run/synx-test/{}.sock", ns.name()));
        let mut child = ns
            .command(bin.to_str().context("binary path")?)
            .args(["run", "--iface", iface, "--control-socket"])
            .arg(&control_socket)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting synx")?;
        let stdout = child.stdout.take().context("stdout")?;
        let stderr = child.stderr.take().context("stderr")?;
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log_sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                log_sink.lock().unwrap().push(line);
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = output.clone();
        std::thread::spawn(move || {
            // Read until the daemon exits, so it never writes into a closed pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut daemon = Self { child, control_socket, banner: Vec::new(), output, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    let done = line.starts_with("listening on");
                    daemon.banner.push(line);
                    if done {
                        return Ok(daemon);
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    let status = daemon.child.wait()?;
                    bail!("synx exited ({status}) before listening: {:?}", daemon.banner);
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    ensure!(Instant::now() < deadline, "synx did not start within 20 s");
                }
            }
        }
    }

    /// `synx stats --json` against this daemon.
    pub fn stats(&self) -> anyhow::Result<serde_json::Value> {
        let out = sh(
            synx_bin().to_str().context("binary path")?,
            &["stats", "--json", "--control-socket", self.control_socket.to_str().unwrap()],
        )?;
        Ok(serde_json::from_str(&out)?)
    }

    /// `synx conns --json` against this daemon: one object per connection.
    pub fn conns(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let out = sh(
            synx_bin().to_str().context("binary path")?,
            &["conns", "--json", "--control-socket", self.control_socket.to_str().unwrap()],
        )?;
        Ok(serde_json::from_str(&out)?)
    }

    /// One counter from `synx stats`, 0 when absent.
    pub fn counter(&self, name: &str) -> anyhow::Result<u64> {
        Ok(self.stats()?.get(name).and_then(|v| v.as_u64()).unwrap_or(0))
    }

    /// Every stdout line the daemon printed so far.
    pub fn output(&self) -> Vec<String> {
        self.output.lock().unwrap().clone()
    }

    /// Every line the daemon logged (stderr) so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Kill it at once (SIGKILL): a host that dies.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait up to `timeout` for the daemon to exit by itself; its status, if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<Option<std::process::ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stop with SIGTERM and wait; returns the exit status.
    pub fn stop(mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.terminate()
    }

    fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        // `ip netns exec` execs synx, so the child pid is the daemon itself.
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return Ok(self.child.wait()?);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.terminate();
        }
        let _ = std::fs::remove_file(&self.control_socket);
    }
}

/// A kernel-TCP echo server in a namespace, for the proxy app to splice to; stops accepting
/// when dropped.
pub struct KernelEcho(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl KernelEcho {
    pub fn start(ns: &Netns, addr: SocketAddr) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let flag = stop.clone();
        let _server = ns.spawn(move || {
            let listener = std::net::TcpListener::bind(addr).unwrap();
            listener.set_nonblocking(true).unwrap();
            bound_tx.send(()).unwrap();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        std::thread::spawn(move || {
                            let mut r = s.try_clone().unwrap();
                            let _ = std::io::copy(&mut r, &mut s);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        bound_rx.recv_timeout(Duration::from_secs(5)).expect("backend bound");
        Self(stop)
    }
}

impl Drop for KernelEcho {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A private bpffs instance mounted for one test (where a takeover pins its maps), unmounted
/// on drop.
pub struct Bpffs(pub PathBuf);

impl Bpffs {
    pub fn mount() -> Self {
        // One instance per call: tests of one process run side by side.
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("synx-bpffs-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        sh("mount", &["-t", "bpf", "bpf", dir.to_str().unwrap()]).unwrap();
        Self(dir)
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = sh("umount", &[self.0.to_str().unwrap()]);
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Whether an XDP program is attached to `iface` in `ns` (from `ip link`).
pub fn xdp_attached(ns: &Netns, iface: &str) -> anyhow::Result<bool> {
    let out = ns.ip(&["-d", "link", "show", "dev", iface])?;
    Ok(out.contains("prog/xdp") || out.split_whitespace().any(|w| w.starts_with("xdp")))
}

/// Fail early, with a message that says what to do, when not root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "veth tests need root (netns, veth, XDP)");
}

/// This process's open-files limit raised to its hard limit (a test's client sockets are its
/// own); returns the limit now.
pub fn raise_nofile() -> u64 {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid struct; failure leaves the limit as it was.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
        rl.rlim_cur = rl.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
    }
    rl.rlim_cur
}

/// Poll `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The MAC address of `iface` in `ns`.
pub fn mac_of(ns: &Netns, iface: &str) -> anyhow::Result<[u8; 6]> {
    let text = ns.exec("cat", &[&format!("/sys/class/net/{iface}/address")])?;
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<Result<_, _>>()?;
    bytes.try_into().map_err(|_| anyhow::anyhow!("bad MAC {text:?}"))
}

/// A MAC address as `ip` and the bench tools take it: `aa:bb:cc:dd:ee:ff`.
pub fn mac_text(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// An AF_PACKET socket bound to one interface inside a namespace: sees every frame on it (both
/// directions) and can inject raw frames.
pub struct PacketSocket {
    fd: std::os::fd::OwnedFd,
}

impl PacketSocket {
    pub fn open(ns: &Netns, iface: &str) -> anyhow::Result<Self> {
        let iface = CStringish(iface.to_string());
        ns.run(move || -> anyhow::Result<Self> {
            use std::os::fd::FromRawFd as _;
            let proto = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain socket(2); the fd is owned below.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
            ensure!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
            // SAFETY: fresh fd we own.
            let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
            let name = std::ffi::CString::new(iface.0.clone())?;
            // SAFETY: valid NUL-terminated name.
            let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
            ensure!(index != 0, "no interface {}", iface.0);
            // SAFETY: zeroed sockaddr_ll is valid; fields set below.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = index as i32;
            // SAFETY: binding with a correctly sized sockaddr_ll.
            let rc = unsafe {
                libc::bind(
                    fd,
                    (&raw const sll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            ensure!(rc == 0, "bind AF_PACKET: {}", std::io::Error::last_os_error());
            let tv = libc::timeval { tv_sec: 0, tv_usec: 50_000 };
            // SAFETY: setting a timeval option of the right size.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&raw const tv).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                )
            };
            Ok(Self { fd: owned })
        })?
    }

    /// Inject one frame.
    /// Send one frame. A plain `io::Error` (no backtrace): flood generators call this in a
    /// tight loop, and a full device queue fails many sends.
    pub fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        use std::os::fd::AsRawFd as _;
        // SAFETY: sending from a valid buffer on our socket.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        match n {
            n if n == frame.len() as isize => Ok(()),
            n if n < 0 => Err(std::io::Error::last_os_error()),
            n => Err(std::io::Error::other(format!("AF_PACKET sent {n} of {} bytes", frame.len()))),
        }
    }

    /// Let the socket queue `bytes` of received frames (SO_RCVBUFFORCE: above rmem_max), for
    /// collecting thousands of answers to a burst before reading them.
    pub fn set_recv_buffer(&self, bytes: usize) -> std::io::Result<()> {
        use std::os::fd::AsRawFd as _;
        let n = i32::try_from(bytes).unwrap_or(i32::MAX);
        // SAFETY: setting an int option of the right size on our socket.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&raw const n).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
    }

    /// Frames seen within `timeout` for which `keep` holds (stops early after `max`).
    pub fn collect(
        &self,
        timeout: Duration,
        max: usize,
        mut keep: impl FnMut(&[u8]) -> bool,
    ) -> Vec<Vec<u8>> {
        use std::os::fd::AsRawFd as _;
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65536];
        while Instant::now() < deadline && out.len() < max {
            // SAFETY: receiving into a buffer we own.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 && keep(&buf[..n as usize]) {
                out.push(buf[..n as usize].to_vec());
            }
        }
        out
    }
}

/// An owned String that crosses into the namespace thread.
struct CStringish(String);

// ---- A ready server and client: synx serving one app on both address families ----

/// The port a [`Bed`] serves on.
pub const PORT: u16 = 7;

/// A server namespace running synx with `apps` on both address families, and a client
/// namespace ready for native XDP (the peer veth carries a pass program).
pub struct Bed {
    pub net: VethPair,
    pub daemon: Daemon,
}

impl Bed {
    pub fn start(app: &str, extra: &[&str]) -> Self {
        require_root();
        let net = VethPair::new().unwrap();
        net.attach_peer_xdp().unwrap();
        Self::serve(net, app, &[], extra)
    }

    /// [`Bed::start`] with synx's program attached in skb (generic) mode and no program on
    /// the client's end: the server's veth keeps TSO, so what synx sends leaves through its
    /// segmentation offload (`--gso auto`), as in [`Bed::start_gro_client`] but through
    /// generic XDP.
    pub fn start_generic(app: &str, extra: &[&str]) -> Self {
        require_root();
        Self::serve(VethPair::new().unwrap(), app, &["--xdp-mode", "skb"], extra)
    }

    /// [`Bed::start`] with no program on the client's end but GRO on (a NAPI there to take
    /// XDP's frames), as a NIC driver has it: synx attaches natively and answers by redirect
    /// (`--xdp-tx auto` on a veth), and the server's veth keeps TSO.
    pub fn start_gro_client(app: &str, extra: &[&str]) -> Self {
        require_root();
        let net = VethPair::new().unwrap();
        net.client.exec("ethtool", &["-K", &net.client_if, "gro", "on"]).unwrap();
        Self::serve(net, app, &[], extra)
    }

    /// synx on `net` serving `app` on both address families, with `mode` and `extra` arguments.
    fn serve(net: VethPair, app: &str, mode: &[&str], extra: &[&str]) -> Self {
        let v4 = format!("{}:{PORT}={app}", net.server_v4);
        let v6 = format!("[{}]:{PORT}={app}", net.server_v6);
        let mut args = vec!["--listen", &v4, "--listen", &v6];
        args.extend_from_slice(mode);
        args.extend_from_slice(extra);
        let daemon = Daemon::start(&net.server, &net.server_if, &args).unwrap();
        Self { net, daemon }
    }

    pub fn addr(&self, v6: bool) -> SocketAddr {
        SocketAddr::new(self.net.server_ip(v6), PORT)
    }

    /// Run `f` with a connected client stream in the client namespace.
    pub fn client<T: Send + 'static>(
        &self,
        v6: bool,
        f: impl FnOnce(TcpStream) -> T + Send + 'static,
    ) -> T {
        let addr = self.addr(v6);
        self.net
            .client
            .run(move || {
                let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                f(s)
            })
            .unwrap()
    }

    pub fn states(&self) -> Vec<String> {
        self.daemon
            .conns()
            .unwrap()
            .iter()
            .map(|c| c["state"].as_str().unwrap_or("").to_string())
            .collect()
    }

    pub fn wait_state(&self, state: &str) -> bool {
        wait_for(Duration::from_secs(10), || self.states().iter().any(|s| s == state))
    }

    pub fn wait_no_conns(&self) -> bool {
        wait_for(Duration::from_secs(15), || self.daemon.conns().unwrap().is_empty())
    }
}

/// The TCP segment in an Ethernet frame, if it carries one.
pub fn tcp_of(frame: &[u8]) -> Option<etherparse::TcpSlice<'_>> {
    match etherparse::SlicedPacket::from_ethernet(frame).ok()?.transport? {
        etherparse::TransportSlice::Tcp(t) => Some(t),
        _ => None,
    }
}

/// Write `data` on `s` (from a second thread) while reading as many bytes back.
pub fn echo_roundtrip(s: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    let mut w = s.try_clone().unwrap();
    let payload = data.to_vec();
    let writer = std::thread::spawn(move || w.write_all(&payload).unwrap());
    let mut got = vec![0u8; data.len()];
    s.read_exact(&mut got).unwrap();
    writer.join().unwrap();
    got
}

/// Test bytes that differ per offset and per seed, with no run repeating at a short period
/// (xorshift64): a shifted, dropped or duplicated piece changes their hash.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A hash of every byte, in order.
pub fn digest(data: &[u8]) -> u64 {
    // FNV-1a: enough to tell any corruption, reordering or duplication apart.
    data.iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100000001b3))
}

// ---- What a process costs, from /proc ----

/// CPU seconds (user + system) process `pid` has used: fields 14 and 15 of /proc/PID/stat.
pub fn process_cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which ends with the last ')'.
    let f: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    Some(ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64)
}

/// Resident memory of process `pid` in bytes (VmRSS of /proc/PID/status).
pub fn process_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    Some(kb * 1024)
}

/// One BPF map a process holds open, as /proc/PID/fdinfo describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BpfMapInfo {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    /// The kernel's accounting of the map's memory (all entries, preallocated or not).
    pub memlock: u64,
}

/// The BPF maps process `pid` has open (each once, by map id).
pub fn process_bpf_maps(pid: u32) -> Vec<BpfMapInfo> {
    let mut seen = std::collections::HashSet::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return Vec::new() };
    dir.filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|text| {
            let field = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)).and_then(|v| v.trim().parse::<u64>().ok());
            let id = field("map_id:")?;
            seen.insert(id).then(|| BpfMapInfo {
                map_type: field("map_type:").unwrap_or(0) as u32,
                key_size: field("key_size:").unwrap_or(0) as u32,
                value_size: field("value_size:").unwrap_or(0) as u32,
                max_entries: field("max_entries:").unwrap_or(0) as u32,
                memlock: field("memlock:").unwrap_or(0),
            })
        })
        .collect()
}
