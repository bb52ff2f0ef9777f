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
