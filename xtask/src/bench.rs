//! `cargo xtask bench`: synx and the Linux kernel measured side by side, in one run, on one
//! veth pair. synx serves on one set of ports; `synx serve-kernel` serves the same app code over
//! the kernel's TCP on another set, in the same server namespace. Rounds alternate between the
//! two; each row reports the median, the ratio synx/kernel and the unit. A row that could not be
//! measured carries the reason instead of a number.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use testbed::{Daemon, VethPair, mac_of, sh};

/// Ports: synx serves SYNX_*, the kernel baseline KERNEL_*.
const SYNX_HTTP: u16 = 80;
const SYNX_ECHO: u16 = 7;
const SYNX_DISCARD: u16 = 9;
const KERNEL_HTTP: u16 = 8080;
const KERNEL_ECHO: u16 = 8007;
const KERNEL_DISCARD: u16 = 8009;
/// Spoofed SYN-flood sources and extra idle-client addresses: inside 198.18.0.0/15, routed from
/// the server namespace back through the client.
const FLOOD_NET: Ipv4Addr = Ipv4Addr::new(198, 19, 254, 0);
const IDLE_NET: Ipv4Addr = Ipv4Addr::new(198, 19, 250, 0);

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// About 5 minutes: fewer rounds, 10,000 idle connections.
    #[arg(long)]
    quick: bool,
    /// 1,000,000 idle connections.
    #[arg(long)]
    full: bool,
    /// Only these rows (prefix match), comma-separated: syn_flood, conn_rate, http, bulk, idle,
    /// xdp (the XDP program's per-packet cost), tcp (the TCP core and its timer wheel).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Extra arguments for `synx run` (repeatable), to compare settings, e.g.
    /// `--synx-arg=--app-threads=worker`.
    #[arg(long, allow_hyphen_values = true)]
    synx_arg: Vec<String>,
}

#[derive(Debug, Clone)]
struct Row {
    name: &'static str,
    unit: &'static str,
    higher_is_better: bool,
    synx: Result<f64, String>,
    kernel: Result<f64, String>,
    rounds: usize,
    note: &'static str,
}

fn median(mut v: Vec<f64>) -> Result<f64, String> {
    if v.is_empty() {
        return Err("no successful round".into());
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Ok(v[v.len() / 2])
}

/// Results of several rounds of one measurement per side.
struct Samples {
    synx: Vec<f64>,
    kernel: Vec<f64>,
    synx_err: Option<String>,
    kernel_err: Option<String>,
}

impl Samples {
    fn new() -> Self {
        Self { synx: vec![], kernel: vec![], synx_err: None, kernel_err: None }
    }
    fn push(&mut self, synx: bool, r: anyhow::Result<f64>) {
        match (synx, r) {
            (true, Ok(v)) => self.synx.push(v),
            (false, Ok(v)) => self.kernel.push(v),
            (true, Err(e)) => self.synx_err = Some(format!("{e:#}")),
            (false, Err(e)) => self.kernel_err = Some(format!("{e:#}")),
        }
    }
    fn row(self, name: &'static str, unit: &'static str, higher: bool, note: &'static str) -> Row {
        let rounds = self.synx.len().max(self.kernel.len());
        let side = |v: Vec<f64>, e: Option<String>| match (median(v), e) {
            (Ok(m), _) => Ok(m),
            (Err(_), Some(e)) => Err(e),
            (Err(e), None) => Err(e),
        };
        Row {
            name,
            unit,
            higher_is_better: higher,
            synx: side(self.synx, self.synx_err),
            kernel: side(self.kernel, self.kernel_err),
            rounds,
            note,
        }
    }
}

fn samples<const N: usize>() -> [Samples; N] {
    std::array::from_fn(|_| Samples::new())
}

/// Record one round's N results for one side, or its error in each of the N rows.
fn record<const N: usize>(s: &mut [Samples; N], synx: bool, round: anyhow::Result<[f64; N]>) {
    match round {
        Ok(values) => {
            for (samples, v) in s.iter_mut().zip(values) {
                samples.push(synx, Ok(v));
            }
        }
        Err(e) => {
            let msg = format!("{e:#}");
            for samples in s.iter_mut() {
                samples.push(synx, Err(anyhow::anyhow!("{msg}")));
            }
        }
    }
}

/// The namespaces, synx, and the kernel baseline server.
struct Rig {
    net: VethPair,
    /// The synx binary: also the flood generator (`synx bench-flood`).
    synx_bin: PathBuf,
    /// The synx daemon, or why it could not be started (then every synx cell says so).
    synx: Result<Daemon, String>,
    kernel: KernelServer,
}

/// `synx serve-kernel` in the server namespace; killed on drop.
struct KernelServer {
    child: Child,
}

impl KernelServer {
    fn start(rig_net: &VethPair, bin: &Path) -> anyhow::Result<Self> {
        Self::serve(rig_net, bin, &[(KERNEL_HTTP, "http"), (KERNEL_ECHO, "echo"), (KERNEL_DISCARD, "discard")])
    }

    /// A server for these ports only (SO_REUSEPORT: more processes may serve one port).
    fn serve(rig_net: &VethPair, bin: &Path, listen: &[(u16, &str)]) -> anyhow::Result<Self> {
        let ip = rig_net.server_v4;
        let mut cmd = rig_net.server.command(bin.to_str().context("path")?);
        cmd.arg("serve-kernel");
        for (port, app) in listen {
            cmd.args(["--listen", &format!("{ip}:{port}={app}")]);
        }
        let mut child = cmd.stdout(Stdio::piped()).spawn()?;
        let mut line = String::new();
        let mut out = std::io::BufReader::new(child.stdout.take().context("stdout")?);
        std::io::BufRead::read_line(&mut out, &mut line)?;
        if !line.starts_with("listening on") {
            bail!("synx serve-kernel did not start: {line:?}");
        }
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        Ok(Self { child })
    }
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for KernelServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn process_cpu_secs(pid: u32) -> f64 {
    testbed::process_cpu_secs(pid).unwrap_or(0.0)
}

fn rss_bytes(pid: u32) -> f64 {
    testbed::process_rss_bytes(pid).map_or(0.0, |b| b as f64)
}

/// Busy and total jiffies of the whole machine (/proc/stat "cpu" line).
fn machine_cpu() -> (f64, f64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<f64> = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: f64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    (total - idle, total)
}

/// Bytes of slab objects in use, machine-wide (/proc/slabinfo: active objects times object
/// size, summed over caches). Objects, not slab pages: pages freed objects leave behind stay in
/// the caches, and a later round would reuse them without any growth in meminfo's Slab (seen:
/// a server round growing less than the client sockets alone).
fn slab_active_bytes() -> f64 {
    std::fs::read_to_string("/proc/slabinfo")
        .unwrap_or_default()
        .lines()
        .skip(2)
        .filter_map(|l| {
            let mut f = l.split_whitespace().skip(1);
            let active: f64 = f.next()?.parse().ok()?;
            let size: f64 = f.nth(1)?.parse().ok()?;
            Some(active * size)
        })
        .sum()
}

impl Rig {
    fn start(synx_bin: &Path, synx_args: &[String]) -> anyhow::Result<Self> {
        let net = VethPair::new()?;
        // Routes back to the spoofed flood sources and the extra idle-client addresses.
        for block in [FLOOD_NET, IDLE_NET] {
            net.server.ip(&["route", "add", &format!("{block}/24"), "via", &net.client_v4.to_string()])?;
        }
        net.client.exec("sysctl", &["-qw", "net.ipv4.ip_local_port_range=1024 65535"])?;
        net.server.exec("sysctl", &["-qw", "net.ipv4.tcp_syncookies=2"])?;
        // The SYN-ACKs to the spoofed sources stop at the client's ingress, as they would leave
        // a real server's NIC for the wire: the client's IP layer (route lookup, ICMP
        // unreachable) is not the server's work, and it was charged to both sides alike.
        let dev = &net.client_if;
        net.client.nft(&format!(
            "table netdev synxbench {{\n\
             chain rx {{ type filter hook ingress device {dev} priority 0; ip daddr {FLOOD_NET}/24 drop; }}\n\
             }}\n"
        ))?;
        net.server.exec("sysctl", &["-qw", "net.core.somaxconn=65535"])?;
        net.server.exec("sysctl", &["-qw", "net.ipv4.tcp_max_syn_backlog=65535"])?;
        let ip = net.server_v4;
        let listen = [
            format!("--listen={ip}:{SYNX_HTTP}=http"),
            format!("--listen={ip}:{SYNX_ECHO}=echo"),
            format!("--listen={ip}:{SYNX_DISCARD}=discard"),
        ];
        let args: Vec<&str> = listen.iter().chain(synx_args).map(String::as_str).collect();
        let synx = net
            .attach_peer_xdp()
            .and_then(|()| Daemon::start(&net.server, &net.server_if, &args))
            .map_err(|e| format!("synx did not start: {e:#}"));
        let kernel = KernelServer::start(&net, synx_bin)?;
        Ok(Self { net, synx_bin: synx_bin.to_path_buf(), synx, kernel })
    }

    fn server_pid(&self, synx: bool) -> anyhow::Result<u32> {
        if synx { Ok(self.daemon()?.pid()) } else { Ok(self.kernel.pid()) }
    }

    fn daemon(&self) -> anyhow::Result<&Daemon> {
        self.synx.as_ref().map_err(|e| anyhow::anyhow!("{e}"))
    }

    fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.net.server_v4.into(), port)
    }

    fn port(&self, synx: bool, what: &str) -> u16 {
        match (synx, what) {
            (true, "http") => SYNX_HTTP,
            (true, "echo") => SYNX_ECHO,
            (true, _) => SYNX_DISCARD,
            (false, "http") => KERNEL_HTTP,
            (false, "echo") => KERNEL_ECHO,
            (false, _) => KERNEL_DISCARD,
        }
    }
}

/// New connections per second: connect, one HTTP request with `Connection: close`, read to
/// EOF, close; `threads` clients for `secs`. Also returns server CPU seconds per 100k conns.
fn conn_rate(rig: &Rig, synx: bool, secs: u64) -> anyhow::Result<(f64, f64)> {
    let addr = rig.addr(rig.port(synx, "http"));
    let pid = rig.server_pid(synx)?;
    let cpu0 = process_cpu_secs(pid);
    let done = rig.net.client.run(move || {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let count = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let count = count.clone();
                std::thread::spawn(move || {
                    while Instant::now() < deadline {
                        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else { continue };
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        if s.write_all(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n").is_err() {
                            continue;
                        }
                        let mut v = Vec::with_capacity(256);
                        if s.read_to_end(&mut v).is_ok() && v.ends_with(b"hello from synx\n") {
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            let _ = t.join();
        }
        count.load(Ordering::Relaxed)
    })?;
    let cpu = process_cpu_secs(pid) - cpu0;
    if done == 0 {
        bail!("no connection completed");
    }
    Ok((done as f64 / secs as f64, cpu / done as f64 * 100_000.0))
}

/// wrk against the http app: requests/s and p50/p99 latency (ms).
fn http_wrk(rig: &Rig, synx: bool, conns: u32, secs: u64) -> anyhow::Result<(f64, f64, f64)> {
    rig.server_pid(synx)?;
    let url = format!("http://{}/", rig.addr(rig.port(synx, "http")));
    let threads = conns.clamp(1, 2).to_string();
    let out = rig.net.client.exec(
        "wrk",
        &["-t", &threads, "-c", &conns.to_string(), "-d", &format!("{secs}s"), "--latency", &url],
    )?;
    let rps = out
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .context("wrk printed no Requests/sec")?;
    let pct = |p: &str| -> anyhow::Result<f64> {
        let line = out
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(p))
            .with_context(|| format!("wrk printed no {p} latency"))?;
        parse_wrk_duration(line.split_whitespace().nth(1).unwrap_or(""))
    };
    if out.contains("Socket errors") && rps == 0.0 {
        bail!("wrk: {}", out.lines().find(|l| l.contains("Socket errors")).unwrap_or(""));
    }
    Ok((rps, pct("50%")?, pct("99%")?))
}

fn parse_wrk_duration(s: &str) -> anyhow::Result<f64> {
    let (num, mult) = if let Some(v) = s.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1000.0)
    } else {
        (s, 1.0)
    };
    Ok(num.parse::<f64>().with_context(|| format!("wrk latency {s:?}"))? * mult)
}

/// Bulk throughput over one connection, Gbit/s: to discard (server receives) or through echo
/// (the server transmits everything it receives).
fn bulk(rig: &Rig, synx: bool, echo: bool, bytes: usize) -> anyhow::Result<f64> {
    rig.server_pid(synx)?;
    let addr = rig.addr(rig.port(synx, if echo { "echo" } else { "discard" }));
    rig.net.client.run(move || -> anyhow::Result<f64> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let chunk = vec![0x5au8; 256 * 1024];
        let start = Instant::now();
        let mut reader = s.try_clone()?;
        let rx = std::thread::spawn(move || -> std::io::Result<usize> {
            if !echo {
                return Ok(0);
            }
            let mut buf = vec![0u8; 256 * 1024];
            let mut got = 0;
            while got < bytes {
                let n = reader.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            Ok(got)
        });
        let mut sent = 0;
        while sent < bytes {
            let n = chunk.len().min(bytes - sent);
            s.write_all(&chunk[..n])?;
            sent += n;
        }
        s.shutdown(std::net::Shutdown::Write)?;
        if echo {
            let got = rx.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
            ensure!(got == bytes, "echo returned {got} of {bytes} bytes");
        } else {
            let mut rest = Vec::new();
            s.read_to_end(&mut rest)?; // the server's FIN: everything was received
        }
        Ok(bytes as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e9)
    })?
}

/// The flood generator, `synx bench-flood`, in the client namespace for `secs`: spoofed SYNs
/// from [`FLOOD_NET`] through BPF_PROG_TEST_RUN's XDP live-frame mode (frames go straight into
/// the client veth's transmit path as XDP frames: no socket, no skb). With `drop` the program
/// drops every frame instead: the generator's own cost. Returns the frames it made.
fn generator(rig: &Rig, dst: SocketAddrV4, secs: f64, drop: bool) -> anyhow::Result<Child> {
    let server_mac = mac_of(&rig.net.server, &rig.net.server_if)?;
    let client_mac = mac_of(&rig.net.client, &rig.net.client_if)?;
    let mac = |m: [u8; 6]| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    let mut cmd = rig.net.client.command(rig.synx_bin.to_str().unwrap_or("synx"));
    cmd.args(["bench-flood", "--iface", &rig.net.client_if, "--src-mac", &mac(client_mac), "--dst-mac", &mac(server_mac)])
        .args(["--dst", &dst.to_string(), "--src-base", &FLOOD_NET.to_string(), "--sources", "250"])
        .args(["--secs", &secs.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if drop {
        cmd.arg("--drop");
    }
    Ok(cmd.spawn()?)
}

/// How many frames a finished generator made.
fn generator_frames(child: Child) -> anyhow::Result<u64> {
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "synx bench-flood: {}", String::from_utf8_lossy(&out.stderr).trim());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    v["frames"].as_u64().context("synx bench-flood printed no frame count")
}

/// The generator's own cost: machine busy jiffies per frame when it drops every frame it makes
/// (so no server work is in it). Everything else running on the machine is in it too, as it is
/// during the flood.
fn generator_floor(rig: &Rig, dst: SocketAddrV4) -> anyhow::Result<f64> {
    let (busy0, _) = machine_cpu();
    let frames = generator_frames(generator(rig, dst, 1.0, true)?)?;
    let (busy1, _) = machine_cpu();
    ensure!(frames > 0, "the generator made no frame");
    Ok((busy1 - busy0) / frames as f64)
}

/// A SYN flood while legitimate clients connect: SYN-ACKs per second, server CPU us per
/// SYN-ACK (machine CPU less the generator's own, see [`generator_floor`]), machine CPU us per
/// SYN-ACK, and the legitimate clients' success in percent.
fn syn_flood(rig: &Rig, synx: bool, secs: u64) -> anyhow::Result<(f64, f64, f64, f64)> {
    let port = rig.port(synx, "echo");
    let dst = SocketAddrV4::new(rig.net.server_v4, port);
    let floor = generator_floor(rig, dst)?;
    let answered = |rig: &Rig| -> anyhow::Result<u64> {
        if synx {
            rig.daemon()?.counter("xdp_syn_cookie_sent")
        } else {
            let out = rig.net.server.exec("nstat", &["-az", "TcpExtSyncookiesSent"])?;
            Ok(out
                .lines()
                .find(|l| l.starts_with("TcpExtSyncookiesSent"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0))
        }
    };
    rig.server_pid(synx)?;
    let before = answered(rig)?;
    let (busy0, _) = machine_cpu();
    let flood = generator(rig, dst, secs as f64, false)?;
    // Legitimate clients meanwhile.
    let addr = rig.addr(port);
    let legit_deadline = Instant::now() + Duration::from_secs(secs);
    let (ok, tried) = rig.net.client.run(move || {
        let (mut ok, mut tried) = (0u32, 0u32);
        while Instant::now() < legit_deadline {
            tried += 1;
            if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
                let mut b = [0u8; 5];
                if s.write_all(b"legit").is_ok() && s.read_exact(&mut b).is_ok() && &b == b"legit" {
                    ok += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        (ok, tried)
    })?;
    let sent = generator_frames(flood)?;
    let (busy1, _) = machine_cpu();
    std::thread::sleep(Duration::from_millis(200));
    let synacks = answered(rig)?.saturating_sub(before);
    if synacks == 0 {
        bail!("no SYN-ACK counted ({sent} SYNs sent)");
    }
    // SAFETY: sysconf has no preconditions.
    let tick = 1.0 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let machine_us = (busy1 - busy0) * tick * 1e6 / synacks as f64;
    let server_us = ((busy1 - busy0) - floor * sent as f64).max(0.0) * tick * 1e6 / synacks as f64;
    Ok((synacks as f64 / secs as f64, server_us, machine_us, 100.0 * f64::from(ok) / f64::from(tried.max(1))))
}

/// `xtask idle-clients`: hold `count` connections from `src` to `addr` until stdin closes.
pub fn idle_clients(addr: SocketAddr, src: Ipv4Addr, count: usize) -> anyhow::Result<()> {
    raise_nofile();
    let mut held = Vec::with_capacity(count);
    for i in 0..count {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        // Closed with a RST at the end: no TIME_WAIT sockets lingering into the next round's
        // slab figure.
        s.set_linger(Some(Duration::ZERO))?;
        s.bind(&SocketAddr::new(IpAddr::V4(src), 0).into())?;
        s.connect_timeout(&addr.into(), Duration::from_secs(5)).with_context(|| format!("connection {i} from {src}"))?;
        held.push(s);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {count}")?;
    out.flush()?;
    drop(out);
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    drop(held);
    Ok(())
}

/// Child processes holding idle client connections: each process's open-files limit caps how
/// many one holds, so `n` connections take as many processes as needed. Killed on drop.
struct IdleClients(Vec<Child>);

impl Drop for IdleClients {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Open `n` idle connections from the client namespace, spread over child processes (each
/// from its own source address, at most `per_process`), and wait until all are established.
fn open_idle_clients(rig: &Rig, addr: SocketAddr, n: usize, per_process: usize) -> anyhow::Result<IdleClients> {
    let exe = std::env::current_exe()?;
    let mut clients = IdleClients(Vec::new());
    let per_process = per_process.clamp(1, 60_000);
    for (i, first) in (0..n).step_by(per_process).enumerate() {
        let count = per_process.min(n - first);
        let ip = Ipv4Addr::from(u32::from(IDLE_NET) + 10 + i as u32);
        let _ = rig.net.client.ip(&["addr", "add", &format!("{ip}/32"), "dev", &rig.net.client_if]);
        let child = rig
            .net
            .client
            .command(exe.to_str().context("xtask path")?)
            .args(["idle-clients", "--addr", &addr.to_string(), "--src", &ip.to_string(), "--count", &count.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        clients.0.push(child);
    }
    for c in &mut clients.0 {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(c.stdout.as_mut().context("stdout")?), &mut line)?;
        if !line.starts_with("ready") {
            let mut err = String::new();
            if let Some(e) = c.stderr.as_mut() {
                let _ = e.read_to_string(&mut err);
            }
            bail!("an idle client process failed: {}", err.trim());
        }
    }
    Ok(clients)
}

/// Connections the server holds: synx's accepted and not yet closed; the kernel server's open
/// file descriptors (one per accepted socket, plus a few of its own).
/// Connections the server holds: synx's accepted less closed; the kernel side's open files
/// (sockets, plus a few fixed ones the caller subtracts) summed over its processes.
fn server_connections(rig: &Rig, synx: bool, pids: &[u32]) -> anyhow::Result<u64> {
    if synx {
        let d = rig.daemon()?;
        Ok(d.counter("tcp_accepted")?.saturating_sub(d.counter("tcp_closed")?))
    } else {
        pids.iter().map(|pid| Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64)).sum()
    }
}

/// Wait until the server holds `want` connections (a client's connect() returns before the
/// server has processed its final ACK); how many it holds when `limit` runs out.
fn await_server_connections(rig: &Rig, synx: bool, pids: &[u32], want: u64, limit: Duration) -> anyhow::Result<u64> {
    let deadline = Instant::now() + limit;
    loop {
        let now = server_connections(rig, synx, pids)?;
        if now == want || Instant::now() > deadline {
            return Ok(now);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Open `n` idle connections, measure server memory per connection and CPU while idle. The
/// kernel side is its baseline server plus as many more `serve-kernel` processes on the same
/// port (SO_REUSEPORT spreads the connections by hash) as keep each one well under its
/// open-files limit `nofile`: one process cannot hold 100,000 sockets where that limit is
/// 20,000 and root may not raise it. Their memory and CPU are summed.
fn idle(rig: &Rig, synx: bool, n: usize, per_process: usize, nofile: u64) -> anyhow::Result<(f64, f64)> {
    let port = rig.port(synx, "echo");
    let mut extra = Vec::new();
    if !synx {
        let per_server = (nofile.saturating_sub(4096) * 2 / 3).max(1000) as usize;
        for _ in 1..n.div_ceil(per_server) {
            extra.push(KernelServer::serve(&rig.net, &rig.synx_bin, &[(port, "echo")])?);
        }
        if !extra.is_empty() {
            eprintln!("bench: idle kernel: {} server processes share port {port}", extra.len() + 1);
        }
    }
    let pids: Vec<u32> = std::iter::once(rig.server_pid(synx)?).chain(extra.iter().map(KernelServer::pid)).collect();
    let rss = |pids: &[u32]| pids.iter().map(|&p| rss_bytes(p)).sum::<f64>();
    let cpu = |pids: &[u32]| pids.iter().map(|&p| process_cpu_secs(p)).sum::<f64>();
    let base = server_connections(rig, synx, &pids)?;
    let rss0 = rss(&pids);
    let slab0 = slab_active_bytes();
    let clients = open_idle_clients(rig, rig.addr(port), n, per_process)?;
    let settle = Duration::from_secs(10 + n as u64 / 10_000);
    let held = await_server_connections(rig, synx, &pids, base + n as u64, settle)? - base;
    if held != n as u64 {
        let why = match rig.daemon() {
            Ok(d) if synx => format!("; synx stats: {}", d.stats().map(|v| v.to_string()).unwrap_or_default()),
            _ => String::new(),
        };
        bail!("the server holds {held} of the {n} connections its clients hold{why}");
    }
    // Let the server settle (apps parked).
    std::thread::sleep(Duration::from_secs(2));
    let rss1 = rss(&pids);
    let slab1 = slab_active_bytes();
    let cpu0 = cpu(&pids);
    let window = 5.0;
    std::thread::sleep(Duration::from_secs_f64(window));
    let cpu_pct = (cpu(&pids) - cpu0) / window * 100.0;
    ensure!(
        !synx || rss1 - rss0 > 0.0,
        "the daemon's RSS did not grow with {n} connections (heap freed earlier was reused): not measurable"
    );
    let maps = if synx { bpf_bytes_per_conn(pids[0])? } else { 0.0 };
    eprintln!(
        "bench: idle {}: {n} connections; per connection: server RSS {:.0} B, BPF maps {maps:.0} B, slab objects machine-wide {:.0} B",
        if synx { "synx" } else { "kernel" },
        (rss1 - rss0) / n as f64,
        (slab1 - slab0) / n as f64,
    );
    // Process memory plus, for the kernel, the kernel's own slab growth (which also includes
    // the client sockets: the same for both sides, subtracted when the two are compared).
    let bytes = (rss1 - rss0) + if synx { n as f64 * maps } else { slab1 - slab0 };
    if synx {
        IDLE_CLIENT_SLAB_PER_CONN.store(((slab1 - slab0).max(0.0) / n as f64) as u64, Ordering::Relaxed);
    }
    drop(clients);
    // The clients' resets close every connection; the next round starts from the same state.
    let left = await_server_connections(rig, synx, &pids, base, settle)?;
    if left > base {
        // A million resets at once overflow the receive path too; those connections stay
        // until keepalive finds their peers gone. The next round serves other ports.
        eprintln!("bench: idle: {} connections still open after the clients reset theirs", left - base);
    }
    Ok((bytes / n as f64, cpu_pct))
}

/// BPF map memory per connection: the kernel's memlock accounting of every map sized by the
/// connection limit (FLOWS4, FLOWS6, LAST_SEEN: as many entries as FLOWS4), divided by that
/// limit. Preallocated maps cost the same for every slot, used or not; FLOWS6 (allocated on
/// insert) counts what its entries use.
fn bpf_bytes_per_conn(pid: u32) -> anyhow::Result<f64> {
    const BPF_MAP_TYPE_HASH: u32 = 1;
    let maps = testbed::process_bpf_maps(pid);
    let limit = maps
        .iter()
        .filter(|m| m.map_type == BPF_MAP_TYPE_HASH && m.key_size == 12)
        .map(|m| m.max_entries)
        .max()
        .context("the daemon has no FLOWS4 map open")?;
    let bytes: u64 = maps.iter().filter(|m| m.max_entries == limit).map(|m| m.memlock).sum();
    Ok(bytes as f64 / f64::from(limit))
}

/// Client-side slab growth per connection seen during the synx idle round (synx's server side
/// adds no slab), to subtract from the kernel's.
static IDLE_CLIENT_SLAB_PER_CONN: AtomicU64 = AtomicU64::new(0);

/// The XDP program's per-packet cost under BPF_PROG_TEST_RUN (`synx bench-xdp`); the kernel
/// column is the same SYN-ACK rewrite with bpf_tcp_raw_gen_syncookie_ipv4's cookie.
fn xdp_micro(synx_bin: &Path, runs: u32) -> Vec<Row> {
    let names: [(&'static str, &'static str); 4] = [
        ("xdp_synack_ns", "SYN -> SYN-ACK, 1000 per call; kernel: same rewrite, kernel helper's cookie"),
        ("xdp_synack_single_run_ns", "the same, one per call: ~90 ns of test-run harness included"),
        ("xdp_cookie_ack_ns", "cookie ACK validated and redirected"),
        ("xdp_flow_segment_ns", "known flow: LAST_SEEN stamped, redirected"),
    ];
    let out = sh(synx_bin.to_str().unwrap_or("synx"), &["bench-xdp", "--runs", &runs.to_string()]);
    let parsed: Vec<serde_json::Value> = match &out {
        Ok(text) => text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect(),
        Err(_) => Vec::new(),
    };
    names
        .iter()
        .map(|(name, note)| {
            let row = parsed.iter().find(|v| v["name"] == *name);
            let synx = match (row, &out) {
                (Some(v), _) => v["synx_ns"].as_f64().ok_or_else(|| "no number".to_string()),
                (None, Err(e)) => Err(format!("synx bench-xdp: {e:#}")),
                (None, Ok(_)) => Err("synx bench-xdp printed no such row".into()),
            };
            let kernel = match row.and_then(|v| v["kernel_ns"].as_f64()) {
                Some(k) => Ok(k),
                None => Err("no kernel counterpart for this path".to_string()),
            };
            Row { name, unit: "ns/packet", higher_is_better: false, synx, kernel, rounds: 1, note }
        })
        .collect()
}

/// The sans-IO core's own costs, from its benchmark (engine-user/benches/tcp_core.rs): no
/// kernel counterpart exists for these, so the kernel column says so.
fn tcp_micro() -> Vec<Row> {
    let rows: [(&'static str, &'static str, &'static str); 7] = [
        ("tcp_inorder_segment_ns", "in-order data segments", "1448 B segment received and ACKed"),
        ("tcp_ack_ns", "ACK processing", "one ACK, with the data it clocks out"),
        ("timer_wheel_insert_ns", "wheel insert", "1M timers armed"),
        ("timer_wheel_cancel_ns", "wheel cancel", "O(1) cancel"),
        ("timer_wheel_expiry_ns", "wheel expiry", "expiry while polling"),
        ("tcb_idle_bytes", "idle ESTABLISHED connection", "the unfolded TCB; buffers are 0 B when idle"),
        ("tcb_parked_bytes", "folded idle connection", "its endpoint slot, what an idle connection keeps"),
    ];
    let out = crate::cargo()
        .args(["bench", "--quiet", "--package", "synx-tcp", "--bench", "tcp_core"])
        .output()
        .map_err(|e| format!("cargo bench: {e}"))
        .and_then(|o| {
            if o.status.success() {
                Ok(String::from_utf8_lossy(&o.stdout).into_owned())
            } else {
                Err(format!("cargo bench failed: {}", String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("")))
            }
        });
    rows.iter()
        .map(|(name, prefix, note)| {
            let synx = out.as_ref().map_err(Clone::clone).and_then(|text| {
                let line = text
                    .lines()
                    .find(|l| l.trim_start().starts_with(prefix))
                    .ok_or_else(|| format!("the core's benchmark printed no {prefix:?} line"))?;
                // "... (12.3 ns each)" or "...: 648 B of TCB ..."
                let number = if name.ends_with("_bytes") {
                    line.split(':').nth(1).and_then(|r| r.split_whitespace().next())
                } else {
                    line.rfind('(').and_then(|i| line[i + 1..].split_whitespace().next())
                };
                number.and_then(|n| n.parse::<f64>().ok()).ok_or_else(|| format!("unparsed line {line:?}"))
            });
            let unit = if name.ends_with("_bytes") { "bytes" } else { "ns" };
            Row {
                name,
                unit,
                higher_is_better: false,
                synx,
                kernel: Err("no kernel counterpart (internals of the sans-IO core)".into()),
                rounds: 1,
                note,
            }
        })
        .collect()
}

fn machine_facts(mode: &str) -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_default();
    serde_json::json!({
        "kernel": sh("uname", &["-r"]).unwrap_or_default().trim(),
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "xdp_mode": mode,
        "af_xdp": "copy mode (veth)",
    })
}

pub fn bench(args: BenchArgs, synx_bin: &Path) -> anyhow::Result<()> {
    let rounds = if args.quick { 2 } else { 5 };
    let secs = if args.quick { 3 } else { 5 };
    let idle_n = if args.full { 1_000_000 } else if args.quick { 10_000 } else { 100_000 };
    let want = |name: &str| args.only.is_empty() || args.only.iter().any(|o| name.starts_with(o.as_str()));
    let nofile = raise_nofile();
    // The idle clients and the kernel side's servers spread over processes, each under the
    // open-files limit (a hard RLIMIT_NOFILE that root may not raise without CAP_SYS_RESOURCE).
    let per_process = (nofile.saturating_sub(256) as usize).max(1000);
    let idle_note: &'static str = Box::leak(
        format!("{idle_n} connections; synx: daemon RSS growth plus BPF maps per slot; kernel: slab growth minus the client side, plus server RSS (summed over its processes)")
            .into_boxed_str(),
    );
    let rig = Rig::start(synx_bin, &args.synx_arg).context("starting the bench rig")?;
    match &rig.synx {
        Ok(d) => println!("bench: synx pid {}, kernel baseline pid {}, {rounds} rounds", d.pid(), rig.kernel.pid()),
        Err(e) => println!("bench: {e}; measuring the kernel side only"),
    }
    let mut rows = Vec::new();

    // First, while the daemon is fresh: its RSS growth is the measure, and heap freed by the
    // other rows (a thousand connections' buffers) would be reused by the idle connections
    // without growing RSS (seen: 0 bytes per connection when this ran last).
    if want("idle") {
        let mut s = samples::<2>();
        // One round each: opening the connections is the slow part.
        for side in [true, false] {
            let r = idle(&rig, side, idle_n, per_process, nofile).map(|(m, c)| {
                // The kernel's slab growth includes the client sockets; subtract what the
                // synx round (whose server side adds no slab) measured for them.
                let m = if side { m } else { m - IDLE_CLIENT_SLAB_PER_CONN.load(Ordering::Relaxed) as f64 };
                [m, c]
            });
            record(&mut s, side, r);
        }
        let [mem, cpu] = s;
        rows.push(mem.row("idle_bytes_per_conn", "bytes/conn", false, idle_note));
        rows.push(cpu.row("idle_cpu_pct", "% of a core", false, "server process, keepalive armed"));
    }
    if want("syn_flood") {
        let mut s = samples::<4>();
        for _ in 0..rounds {
            for side in [true, false] {
                record(&mut s, side, syn_flood(&rig, side, secs).map(|(r, c, m, l)| [r, c, m, l]));
            }
        }
        let [rate, cpu, machine, legit] = s;
        rows.push(rate.row("syn_flood_synack_rate", "SYN-ACK/s", true, "spoofed SYNs, XDP live frames from the client netns"));
        rows.push(cpu.row(
            "syn_flood_cpu_per_synack",
            "us CPU/SYN-ACK",
            false,
            "machine CPU less the generator's own (the same generator dropping its frames)",
        ));
        rows.push(machine.row("syn_flood_machine_cpu_per_synack", "us CPU/SYN-ACK", false, "whole machine, generator included"));
        rows.push(legit.row("syn_flood_legit_success", "%", true, "legitimate connects during the flood"));
    }
    if want("conn_rate") {
        let mut s = samples::<2>();
        for _ in 0..rounds {
            for side in [true, false] {
                record(&mut s, side, conn_rate(&rig, side, secs).map(|(r, c)| [r, c]));
            }
        }
        let [rate, cpu] = s;
        rows.push(rate.row("conn_rate", "conn/s", true, "connect, 1 request, close; 4 client threads"));
        rows.push(cpu.row("conn_cpu_per_100k", "server CPU s/100k conn", false, "server process time only"));
    }
    if want("http") {
        for (c, rps_name, p50_name, p99_name) in [
            (1, "http_rps_c1", "http_p50_c1", "http_p99_c1"),
            (64, "http_rps_c64", "http_p50_c64", "http_p99_c64"),
            (1000, "http_rps_c1000", "http_p50_c1000", "http_p99_c1000"),
        ] {
            let mut s = samples::<3>();
            for _ in 0..rounds {
                for side in [true, false] {
                    record(&mut s, side, http_wrk(&rig, side, c, secs).map(|(r, a, b)| [r, a, b]));
                }
            }
            let [rps, p50, p99] = s;
            rows.push(rps.row(rps_name, "req/s", true, "wrk, keep-alive"));
            rows.push(p50.row(p50_name, "ms", false, "wrk --latency"));
            rows.push(p99.row(p99_name, "ms", false, "wrk --latency"));
        }
    }
    if want("bulk") {
        let bytes = if args.quick { 64 << 20 } else { 256 << 20 };
        let (mut rx, mut tx) = (Samples::new(), Samples::new());
        for _ in 0..rounds {
            for side in [true, false] {
                rx.push(side, bulk(&rig, side, false, bytes));
                tx.push(side, bulk(&rig, side, true, bytes));
            }
        }
        rows.push(rx.row("bulk_rx", "Gbit/s", true, "one connection into discard"));
        rows.push(tx.row("bulk_tx", "Gbit/s", true, "one connection through echo (server sends what it receives)"));
    }
    drop(rig);
    // Emulated wide-area paths: their own rig, table and JSON section (xtask/src/wan.rs).
    let wan = crate::wan::wanted(&args.only).then(|| {
        crate::wan::bench(args.quick, synx_bin, &args.synx_arg, &args.only).unwrap_or_else(|e| serde_json::json!({ "failed": format!("{e:#}") }))
    });
    if want("xdp") {
        rows.extend(xdp_micro(synx_bin, if args.quick { 5_000 } else { 20_000 }));
    }
    if want("tcp") {
        rows.extend(tcp_micro());
    }
    print_table(&rows);
    let json = serde_json::json!({
        "machine": machine_facts("native"),
        "wan": wan,
        "rows": rows.iter().map(|r| {
            let v = |x: &Result<f64, String>| match x { Ok(v) => serde_json::json!(v), Err(e) => serde_json::json!({"not_measured": e}) };
            let ratio = match (&r.synx, &r.kernel) {
                (Ok(s), Ok(k)) if *k != 0.0 => serde_json::json!(s / k),
                _ => serde_json::Value::Null,
            };
            serde_json::json!({
                "name": r.name, "unit": r.unit, "synx": v(&r.synx), "kernel": v(&r.kernel),
                "ratio": ratio, "higher_is_better": r.higher_is_better, "rounds": r.rounds, "note": r.note,
            })
        }).collect::<Vec<_>>(),
    });
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&json)?)?;
        println!("bench: results written to {}", path.display());
    }
    Ok(())
}

/// Raise RLIMIT_NOFILE as far as allowed (children inherit it); returns the soft limit now.
fn raise_nofile() -> u64 {
    let _ = std::fs::write("/proc/sys/fs/nr_open", "4194304");
    let rl = libc::rlimit { rlim_cur: 4_000_000, rlim_max: 4_000_000 };
    // SAFETY: setrlimit with a valid struct; failure leaves the old limit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) } != 0 {
        let rl = libc::rlimit { rlim_cur: 1 << 20, rlim_max: 1 << 20 };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) } != 0 {
            // Without CAP_SYS_RESOURCE only the soft limit may rise, up to the hard one.
            let mut cur = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            // SAFETY: getrlimit/setrlimit with valid structs.
            unsafe {
                libc::getrlimit(libc::RLIMIT_NOFILE, &mut cur);
                cur.rlim_cur = cur.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &cur);
            }
        }
    }
    let mut now = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit with a valid struct.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut now) };
    now.rlim_cur
}

fn print_table(rows: &[Row]) {
    let facts = machine_facts("native");
    println!(
        "\nmachine: kernel {}, {}, {} cores, XDP native on veth, AF_XDP copy mode",
        facts["kernel"].as_str().unwrap_or(""),
        facts["cpu"].as_str().unwrap_or(""),
        facts["cores"]
    );
    println!("{:<26} {:>14} {:>14} {:>8}  unit", "row", "synx", "kernel", "ratio");
    for r in rows {
        let f = |x: &Result<f64, String>| match x {
            Ok(v) => format!("{v:.3}"),
            Err(_) => "n/m".into(),
        };
        let ratio = match (&r.synx, &r.kernel) {
            (Ok(s), Ok(k)) if *k != 0.0 => format!("{:.2}", s / k),
            _ => "-".into(),
        };
        println!("{:<26} {:>14} {:>14} {:>8}  {}", r.name, f(&r.synx), f(&r.kernel), ratio, r.unit);
        for (side, x) in [("synx", &r.synx), ("kernel", &r.kernel)] {
            if let Err(e) = x {
                println!("{:<26}   {side} not measured: {e}", "");
            }
        }
    }
}
