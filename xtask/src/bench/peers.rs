//! The servers synx is measured against, as processes: the kernel peer (`synx-bench
//! kernel-server`: epoll, a pinned thread per server CPU with its own SO_REUSEPORT listener)
//! and the SYN-flood peers built on it (nftables synproxy in front of it). Also what every
//! peer needs: pinning to CPUs and telling whether a process is still there.

use std::{
    io::BufRead as _,
    net::SocketAddr,
    path::Path,
    process::{Child, Stdio},
};

use anyhow::{Context as _, bail};
use testbed::{Netns, sh};

use super::rig::Cpus;

/// Pin every thread of `pid` (and threads it starts later) to `cpus`.
pub fn pin_all_threads(pid: u32, cpus: &[usize]) -> anyhow::Result<()> {
    sh("taskset", &["-a", "-p", "-c", &Cpus::list(cpus), &pid.to_string()]).map(drop)
}

/// The CPUs thread `tid` (0: the calling thread) may run on.
pub fn affinity(tid: u32) -> std::io::Result<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain bits; sched_getaffinity writes exactly its size for the
    // thread `tid` names.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(tid as i32, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(set)
    }
}

/// Set the CPUs of thread `tid` (0: the calling thread) to `cpus`, returning the ones it had,
/// for [`restore_affinity`]. Unlike [`pin_all_threads`], one thread and no process spawned.
pub fn set_affinity(tid: u32, cpus: &[usize]) -> std::io::Result<libc::cpu_set_t> {
    let old = affinity(tid)?;
    // SAFETY: cpu_set_t is plain bits; sched_setaffinity reads exactly its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(tid as i32, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(old)
}

/// Give thread `tid` back the CPUs [`set_affinity`] returned (best effort: it may be gone).
pub fn restore_affinity(tid: u32, old: &libc::cpu_set_t) {
    // SAFETY: as in set_affinity, with a mask the kernel filled in.
    unsafe { libc::sched_setaffinity(tid as i32, std::mem::size_of::<libc::cpu_set_t>(), old) };
}

/// The calling thread pinned to `cpus` until dropped, then given its old CPUs back; what it
/// spawns meanwhile starts there too. A bench thread that samples counters through spawned
/// tools (`nft`, `ip netns exec`) during a window keeps that work off the server CPU.
pub struct ThreadPinned(libc::cpu_set_t);

impl ThreadPinned {
    pub fn to(cpus: &[usize]) -> anyhow::Result<Self> {
        set_affinity(0, cpus).map(Self).with_context(|| format!("pinning this thread to CPUs {cpus:?}"))
    }
}

impl Drop for ThreadPinned {
    fn drop(&mut self) {
        restore_affinity(0, &self.0);
    }
}

/// Whether `pid` is a live process (not gone, not a zombie).
pub fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next().and_then(|r| r.split_whitespace().next()).map(|st| st != "Z" && st != "X"))
        .unwrap_or(false)
}

#[derive(Debug, Clone, Default)]
pub struct KernelServerOptions {
    /// (idle s, interval s, probes): SO_KEEPALIVE on every connection, like synx's
    /// `--keepalive-*` flags.
    pub keepalive: Option<(u64, u64, u32)>,
}

/// `synx-bench kernel-server` in a namespace; killed on drop.
pub struct KernelServer {
    child: Child,
    pub command: Vec<String>,
}

impl KernelServer {
    pub fn start(ns: &Netns, tools: &Path, listen: &[(SocketAddr, &str)], cpus: &[usize], o: &KernelServerOptions) -> anyhow::Result<Self> {
        let mut args: Vec<String> = vec!["kernel-server".into(), "--cpus".into(), Cpus::list(cpus)];
        for (addr, app) in listen {
            args.push("--listen".into());
            args.push(format!("{addr}={app}"));
        }
        if let Some((idle, interval, probes)) = o.keepalive {
            args.extend(["--keepalive-idle".into(), idle.to_string(), "--keepalive-interval".into(), interval.to_string()]);
            args.extend(["--keepalive-probes".into(), probes.to_string()]);
        }
        let mut child = ns
            .command(tools.to_str().context("tools path")?)
            .args(&args)
            .stdout(Stdio::piped())
            .spawn()
            .context("starting synx-bench kernel-server")?;
        let mut line = String::new();
        let mut out = std::io::BufReader::new(child.stdout.take().context("stdout")?);
        out.read_line(&mut line)?;
        if !line.starts_with("listening on") {
            let _ = child.kill();
            bail!("synx-bench kernel-server did not start: {line:?} ({:?})", child.wait()?);
        }
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        Ok(Self { child, command: std::iter::once("synx-bench".to_string()).chain(args).collect() })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The pid while the process runs; why not otherwise.
    pub fn check_alive(&mut self) -> anyhow::Result<u32> {
        match self.child.try_wait()? {
            None => Ok(self.child.id()),
            Some(status) => bail!("the kernel peer exited ({status})"),
        }
    }
}

impl Drop for KernelServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nftables synproxy in front of the kernel peer's `port` (the netfilter SYNPROXY of the kernel
/// selftest's setup): SYNs to the port skip conntrack and are answered by synproxy with a SYN
/// cookie; a valid cookie ACK makes synproxy open the real connection to the listener. Removed
/// on drop.
pub struct NftSynproxy {
    /// The namespace's name (the guard must not borrow the rig that owns the namespace).
    ns: String,
    loose: String,
}

impl NftSynproxy {
    pub fn install(ns: &Netns, port: u16, mss: u16) -> anyhow::Result<Self> {
        ns.nft(&format!(
            "table ip synxproxy {{\n\
             chain pre {{ type filter hook prerouting priority raw; tcp dport {port} tcp flags syn notrack; }}\n\
             chain in {{\n\
             type filter hook input priority filter;\n\
             tcp dport {port} ct state invalid,untracked synproxy mss {mss} wscale 7 timestamp sack-perm;\n\
             tcp dport {port} ct state invalid drop;\n\
             }}\n\
             }}\n"
        ))?;
        // (Conntrack exists in the namespace once a ruleset uses it.) Without loose tracking,
        // an ACK conntrack has not seen a SYN for stays INVALID and reaches synproxy instead of
        // being picked up as a new flow.
        let mut guard = Self { ns: ns.name().to_string(), loose: String::new() };
        guard.loose = super::rig::set_sysctl(ns, "net.netfilter.nf_conntrack_tcp_loose", "0")?;
        Ok(guard)
    }

    pub fn describe(port: u16, mss: u16) -> String {
        format!(
            "nftables: `tcp dport {port} tcp flags syn notrack` at prerouting (raw), then \
             `ct state invalid,untracked synproxy mss {mss} wscale 7 timestamp sack-perm` and \
             `ct state invalid drop` at input; nf_conntrack_tcp_loose=0"
        )
    }
}

impl Drop for NftSynproxy {
    fn drop(&mut self) {
        let _ = sh("ip", &["netns", "exec", &self.ns, "nft", "delete", "table", "ip", "synxproxy"]);
        if !self.loose.is_empty() {
            let _ = sh("ip", &["netns", "exec", &self.ns, "sysctl", "-qw", &format!("net.netfilter.nf_conntrack_tcp_loose={}", self.loose)]);
        }
    }
}

/// The XDP synproxy peer (`synx-bench xdp-synproxy`) attached to the kernel's server veth:
/// SYNs answered in XDP with the kernel helper's cookies, the cookie ACKs left to nftables
/// synproxy. Detached on drop (the process ends when its stdin closes).
pub struct XdpSynproxy {
    child: Child,
}

impl XdpSynproxy {
    pub fn attach(ns: &Netns, tools: &Path, iface: &str, listen: SocketAddr) -> anyhow::Result<Self> {
        let mut child = ns
            .command(tools.to_str().context("tools path")?)
            .args(["xdp-synproxy", "--iface", iface, "--listen", &listen.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting synx-bench xdp-synproxy")?;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().context("stdout")?).read_line(&mut line)?;
        if !line.starts_with("attached") {
            let _ = child.kill();
            let out = child.wait_with_output()?;
            bail!("synx-bench xdp-synproxy did not attach: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(Self { child })
    }

    pub fn describe() -> &'static str {
        "the kernel peer behind an XDP program that answers SYNs with the kernel's own cookie helper \
         (bpf_tcp_raw_gen_syncookie_ipv4) and a TSval in Linux's cookie layout, the approach of the kernel \
         selftest xdp_synproxy_kern.c (its SYN-ACK written by synx's reply code; no conntrack lookup or \
         checksum check per SYN, which the selftest does; synx's program around it, so each SYN also checks synx's \
         flow filter and, where that says so, a flow table of 1024 entries where synx's daemon has --max-conns, \
         by default 1,048,576), and nftables synproxy for the cookie ACKs"
    }
}

impl Drop for XdpSynproxy {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The flood's wire end (`synx-bench sink`): an XDP program on a client veth that counts and
/// drops the frames to the flood's spoofed sources and passes the rest (so it is also the
/// client end's XDP program that native XDP_TX on veth needs). Detached on drop.
pub struct Sink {
    child: Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl Sink {
    pub fn attach(ns: &Netns, tools: &Path, iface: &str, net: std::net::Ipv4Addr, prefix: u8) -> anyhow::Result<Self> {
        let mut child = ns
            .command(tools.to_str().context("tools path")?)
            .args(["sink", "--iface", iface, "--net", &net.to_string(), "--prefix", &prefix.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting synx-bench sink")?;
        let mut out = std::io::BufReader::new(child.stdout.take().context("stdout")?);
        let mut line = String::new();
        out.read_line(&mut line)?;
        if !line.starts_with("attached") {
            let _ = child.kill();
            let out = child.wait_with_output()?;
            bail!("synx-bench sink did not attach: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(Self { child, out })
    }

    /// Frames counted and dropped so far.
    pub fn count(&mut self) -> anyhow::Result<u64> {
        use std::io::Write as _;
        let stdin = self.child.stdin.as_mut().context("the sink's stdin")?;
        stdin.write_all(b"\n")?;
        stdin.flush()?;
        let mut line = String::new();
        self.out.read_line(&mut line)?;
        line.trim().parse().with_context(|| format!("the sink answered {line:?}"))
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
