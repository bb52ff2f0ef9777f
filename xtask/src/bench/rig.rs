//! The bench rig: for each side its own veth pair between a server and a client namespace, so
//! the kernel's pair carries no XDP program on either end and keeps its default offloads
//! (veth turns GSO/TSO off on a sender whose peer runs XDP), while synx's pair has synx's
//! program on the server end only: synx answers by redirect on a veth (`--xdp-tx auto`), which
//! a client end with GRO and no program takes, so its server veth keeps TSO too. Both client
//! ends run the same program (a sink counting SYN-ACKs) only while a flood group runs. Server
//! and client work is pinned apart: the server process, and the server veth's
//! receive work (threaded NAPI, RPS), on the server CPUs; the load and the client veth's receive
//! on the client CPUs. The server's CPU cost is then read per CPU, whatever thread or softirq
//! did the work.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, bail, ensure};
use testbed::{Daemon, Netns, VethPair, sh};

use super::peers::{KernelServer, KernelServerOptions, Sink, affinity, pin_all_threads, restore_affinity, set_affinity};

/// Spoofed SYN-flood sources and extra idle-client addresses: inside 198.18.0.0/15, routed from
/// the server namespaces back through the client.
pub const FLOOD_NET: Ipv4Addr = Ipv4Addr::new(198, 19, 254, 0);
pub const IDLE_NET: Ipv4Addr = Ipv4Addr::new(198, 19, 250, 0);

/// Ports, the same on both sides (each side has its own namespaces).
pub const HTTP: u16 = 80;
pub const ECHO: u16 = 7;
pub const DISCARD: u16 = 9;

/// Which side of the rig.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Synx,
    Kernel,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cpus {
    pub server: Vec<usize>,
    pub client: Vec<usize>,
}

impl Cpus {
    pub fn list(cpus: &[usize]) -> String {
        cpus.iter().map(usize::to_string).collect::<Vec<_>>().join(",")
    }
    fn mask(cpus: &[usize]) -> String {
        format!("{:x}", cpus.iter().fold(0u64, |m, &c| m | 1 << c))
    }
}

/// Per-CPU time from /proc/stat when it was read. Busy time is the wall time between two
/// reads less the CPU's idle time: with NOHZ the kernel measures idle time exactly at each
/// idle entry and exit (get_cpu_idle_time_us; /proc/stat shows it in 10 ms units), while its
/// user/system/softirq fields are samples at each 4 ms tick (HZ=250 here): about 750 per
/// CPU in a 3 s round, whose count at 25% busy varies by 6% from round to round (SYN-flood
/// rows), where the idle time's only error is its 10 ms unit. The sampled busy time is kept
/// for the record. Idle time excludes interrupts and softirqs taken while idle, which the
/// kernel counts as busy. Steal time (the hypervisor running something else while this
/// virtual CPU had work) is not taken off: what is stolen while the CPU idles (the host late
/// to run it after the interrupt that wakes it) is inside its idle time already, so taking
/// steal off as well counted that time twice, and on a nearly idle CPU it read below the
/// server process's own CPU time (s14's quiet idle rounds: 0 against its 60 ms). Busy time
/// therefore includes what is stolen while the CPU works, a small overcount that both sides
/// of a row pay alike; the steal time is kept for the record.
#[derive(Debug, Clone)]
pub struct CpuTimes {
    at: Instant,
    /// Per CPU, in clock ticks: (sampled busy, idle and iowait, steal).
    per: Vec<(u64, u64, u64)>,
}

impl CpuTimes {
    pub fn now() -> Self {
        let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        Self::parse(&text, Instant::now())
    }

    fn parse(text: &str, at: Instant) -> Self {
        let mut per = Vec::new();
        for line in text.lines() {
            // "cpuN ..." lines; not the machine-wide "cpu  ..." one.
            let Some(rest) = line.strip_prefix("cpu").filter(|r| r.starts_with(|c: char| c.is_ascii_digit())) else { continue };
            let mut f = rest.split_whitespace();
            let Some(Ok(i)) = f.next().map(str::parse::<usize>) else { continue };
            let v: Vec<u64> = f.filter_map(|x| x.parse().ok()).collect();
            // user nice system idle iowait irq softirq steal (guest is inside user).
            let total: u64 = v.iter().take(8).sum();
            let field = |k: usize| v.get(k).copied().unwrap_or(0);
            let (idle, steal) = (field(3) + field(4), field(7));
            if per.len() <= i {
                per.resize(i + 1, (0, 0, 0));
            }
            per[i] = (total - idle - steal, idle, steal);
        }
        Self { at, per }
    }

    /// Seconds of wall time since `before`.
    fn wall_since(&self, before: &CpuTimes) -> f64 {
        self.at.saturating_duration_since(before.at).as_secs_f64()
    }

    /// Seconds CPU `c` was busy since `before`: the wall time less its idle time. Not clamped:
    /// the idle time's 10 ms unit can put an idle CPU's figure a little below zero, which is
    /// what was measured (a round whose figure falls below what it can resolve says so, not 0).
    fn busy_of(&self, before: &CpuTimes, c: usize) -> f64 {
        self.wall_since(before) - self.secs_since(before, &[c], |t| t.1)
    }

    /// Seconds one field of the per-CPU times (`field` picks it) grew on `cpus` since `before`.
    fn secs_since(&self, before: &CpuTimes, cpus: &[usize], field: fn(&(u64, u64, u64)) -> u64) -> f64 {
        let at = |t: &CpuTimes, c: usize| t.per.get(c).map_or(0, field);
        let ticks: u64 = cpus.iter().map(|&c| at(self, c).saturating_sub(at(before, c))).sum();
        ticks as f64 / clock_ticks()
    }

    /// CPU-seconds stolen by the hypervisor from `cpus` since `before` (for the record).
    pub fn steal_secs_since(&self, before: &CpuTimes, cpus: &[usize]) -> f64 {
        self.secs_since(before, cpus, |t| t.2)
    }

    /// CPU-seconds busy on `cpus` since `before`.
    pub fn busy_secs_since(&self, before: &CpuTimes, cpus: &[usize]) -> f64 {
        cpus.iter().map(|&c| self.busy_of(before, c)).sum()
    }

    /// The same from the tick samples (for the record).
    pub fn sampled_busy_secs_since(&self, before: &CpuTimes, cpus: &[usize]) -> f64 {
        self.secs_since(before, cpus, |t| t.0)
    }

    /// Busy fraction of each CPU since `before`, for the raw record.
    pub fn per_cpu_busy_since(&self, before: &CpuTimes) -> Vec<f64> {
        let wall = self.wall_since(before);
        (0..self.per.len().min(before.per.len())).map(|c| if wall > 0.0 { self.busy_of(before, c) / wall } else { 0.0 }).collect()
    }
}

pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// Process ids of the kernel's NAPI threads (named `napi/DEV-ID`).
fn napi_threads() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.starts_with("napi/")))
        .collect()
}

/// Run `dev`'s NAPI in kernel threads (threaded NAPI), pinned (thread of queue i on
/// `cpus[i % len]`) and at real-time priority: a NIC's NAPI runs in softirq context, ahead of
/// every thread, as the kernel pair's RPS-steered receive does; a NAPI thread at normal priority
/// would share its CPU with the load generators (seen: the client veth dropping three quarters
/// of synx's SYN-ACKs while the flood generator held its CPU). The threads are told apart by the names the kernel gives them (truncated
/// to 15 bytes) and by appearing when threading is switched on; switching it off and on again
/// makes fresh ones after a NAPI was rebuilt (an XDP program attached or detached).
fn thread_napi(ns: &Netns, dev: &str, cpus: &[usize]) -> anyhow::Result<Vec<u32>> {
    let path = format!("/sys/class/net/{dev}/threaded");
    ns.exec("sh", &["-c", &format!("echo 0 > {path}")])?;
    let before = napi_threads();
    ns.exec("sh", &["-c", &format!("echo 1 > {path}")]).with_context(|| format!("threaded NAPI on {dev} (it needs NAPI: XDP or GRO on)"))?;
    let prefix: String = format!("napi/{dev}").chars().take(15).collect();
    let mut fresh: Vec<u32> = napi_threads()
        .into_iter()
        .filter(|p| !before.contains(p))
        .filter(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim_end().starts_with(&prefix)))
        .collect();
    fresh.sort_unstable();
    ensure!(!fresh.is_empty(), "no NAPI thread appeared for {dev}");
    for (i, pid) in fresh.iter().enumerate() {
        pin_all_threads(*pid, &[cpus[i % cpus.len()]])?;
        sh("chrt", &["-f", "-p", NAPI_PRIORITY, &pid.to_string()])?;
    }
    Ok(fresh)
}

/// The NAPI threads the rig made, by device: their process ids and what the JSON says of them.
#[derive(Default)]
struct NapiThreads(BTreeMap<String, (Vec<u32>, String)>);

impl NapiThreads {
    /// Thread and pin `dev`'s NAPI ([`thread_napi`]) and remember its threads.
    fn thread(&mut self, ns: &Netns, dev: &str, cpus: &[usize]) -> anyhow::Result<()> {
        let pinned = thread_napi(ns, dev, cpus)?;
        let text = format!("threads {pinned:?}, SCHED_FIFO {NAPI_PRIORITY}, on CPUs {}", Cpus::list(cpus));
        self.0.insert(dev.to_string(), (pinned, text));
        Ok(())
    }

    /// Wait (up to 5 s) until every NAPI thread of `dev` runs at SCHED_BATCH, which synx sets
    /// with `--napi-threads batch` at its next look (once a second), and say so in the device's
    /// description.
    fn await_batch(&mut self, dev: &str) -> anyhow::Result<()> {
        let Some((pids, text)) = self.0.get_mut(dev) else { return Ok(()) };
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while !pids.iter().all(|&p| sched_policy(p) == Some(libc::SCHED_BATCH)) {
            ensure!(Instant::now() < deadline, "synx (--napi-threads batch) did not set {dev}'s NAPI threads {pids:?} to SCHED_BATCH in 5 s");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        *text = text.replace(&format!("SCHED_FIFO {NAPI_PRIORITY}"), &format!("SCHED_FIFO {NAPI_PRIORITY} as set by the rig, SCHED_BATCH as synx then set (--napi-threads batch)"));
        Ok(())
    }

    fn describe(&self, dev: &str) -> String {
        self.0.get(dev).map_or_else(|| "not threaded".into(), |(_, text)| text.clone())
    }

    fn pids(&self, dev: &str) -> &[u32] {
        self.0.get(dev).map_or(&[], |(pids, _)| pids)
    }
}

/// A task's scheduling policy (`/proc/PID/stat`'s 41st field), or `None` once it is gone.
fn sched_policy(pid: u32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command, which is in parentheses and may hold spaces: the third
    // field is the first after it.
    stat.rsplit_once(')')?.1.split_whitespace().nth(41 - 3).and_then(|f| f.parse().ok())
}

/// Time a task has run on a CPU so far (`/proc/PID/task/TID/schedstat`, its first field, in
/// nanoseconds, as the scheduler accounts it), or `None` once it is gone.
fn task_runtime_ns(pid: u32, tid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat")).ok()?.split_whitespace().next()?.parse().ok()
}

/// Time all of a process's threads have run so far, in nanoseconds (threads that ended before
/// the call are not counted), or `None` once it is gone.
pub fn process_runtime_ns(pid: u32) -> Option<u64> {
    let tids = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    Some(tids.filter_map(Result::ok).filter_map(|t| t.file_name().to_str()?.parse().ok()).filter_map(|tid| task_runtime_ns(pid, tid)).sum())
}

/// The value `--napi-threads` is given in synx's arguments (`--napi-threads V` or
/// `--napi-threads=V`; "" for the option with nothing after it), `None` if it is not.
pub fn napi_threads_arg(args: &[String]) -> Option<&str> {
    let mut value = None;
    for (i, a) in args.iter().enumerate() {
        if let Some(v) = a.strip_prefix("--napi-threads=") {
            value = Some(v);
        } else if a == "--napi-threads" {
            value = Some(args.get(i + 1).map_or("", String::as_str));
        }
    }
    value
}

/// Whether synx runs with `--napi-threads batch` (or `=batch`).
pub fn synx_batches_napi(args: &[String]) -> bool {
    napi_threads_arg(args) == Some("batch")
}

/// SCHED_FIFO priority of the NAPI threads (the kernel's default for threaded IRQ handlers).
const NAPI_PRIORITY: &str = "50";

/// RPS: the receive work of skbs that veth hands over without NAPI (a sender with TSO on) runs
/// on these CPUs rather than on the sender's.
fn steer_rps(ns: &Netns, dev: &str, cpus: &[usize]) -> anyhow::Result<()> {
    let mask = Cpus::mask(cpus);
    ns.exec("sh", &["-c", &format!("for q in /sys/class/net/{dev}/queues/rx-*; do echo {mask} > $q/rps_cpus; done")])?;
    Ok(())
}

/// Give `dev` the transmit qdisc a NIC's queues get on this machine (net.core.default_qdisc,
/// pfifo_fast; under mq with several queues) in place of veth's noqueue. A NIC whose ring is
/// full stops its queue and the qdisc holds the packets (TX_BUSY, BQL); veth does the same only
/// when a qdisc is attached (drivers/net/veth.c, Linux 6.16+) and drops otherwise. AF_XDP's
/// copy-mode transmit goes to the driver directly, past the qdisc, but then sees the full ring
/// as EAGAIN and keeps its frames instead of losing them: without this, responses from a
/// thousand HTTP connections overflowed the client veth's 256-frame ring, and the ones veth
/// dropped waited for a retransmission timeout (p99 145 ms at c1000).
fn attach_qdisc(ns: &Netns, dev: &str, queues: u32) -> anyhow::Result<()> {
    if queues > 1 {
        // mq's children are the default qdisc.
        ns.exec("tc", &["qdisc", "replace", "dev", dev, "root", "handle", "1:", "mq"])?;
    } else {
        ns.exec("tc", &["qdisc", "replace", "dev", dev, "root", "pfifo_fast"])?;
    }
    Ok(())
}

/// `ethtool FLAG DEV`'s "name: value" lines after its heading, each value's first word
/// (`-k`: "on"/"off", the "[fixed]" marks dropped; `-S`: the counter).
fn ethtool_pairs(ns: &Netns, flag: &str, dev: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let text = ns.exec("ethtool", &[flag, dev])?;
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let (k, v) = l.trim().split_once(':')?;
            Some((k.trim().to_string(), v.split_whitespace().next().unwrap_or("").to_string()))
        })
        .collect())
}

/// `ethtool -k DEV` as feature -> "on"/"off".
pub fn features(ns: &Netns, dev: &str) -> anyhow::Result<BTreeMap<String, String>> {
    ethtool_pairs(ns, "-k", dev)
}

/// `ethtool -S DEV` as counter -> value (veth: per-queue XDP packets, drops, redirects, TX
/// errors, and its peer's view).
pub fn nic_stats(ns: &Netns, dev: &str) -> anyhow::Result<BTreeMap<String, u64>> {
    Ok(ethtool_pairs(ns, "-S", dev)?.into_iter().filter_map(|(k, v)| Some((k, v.parse().ok()?))).collect())
}

/// The counters of `after` that differ from `before`, as their increase (a counter that went
/// back, e.g. a device rebuilt, shows as its new value).
pub fn moved(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(k, &v)| {
            let was = before.get(k).copied().unwrap_or(0);
            (v != was).then(|| (k.clone(), if v >= was { v - was } else { v }))
        })
        .collect()
}

/// A server veth's NAPI deferral: its `napi_defer_hard_irqs` and `gro_flush_timeout` (ns), set
/// by the rig per side. After a NAPI run that found work, the device's notification stays off
/// for that many runs and a watchdog runs the NAPI after the timeout instead (the kernel's
/// interrupt deferral, Documentation/networking/napi.rst): on veth, a frame no longer wakes
/// the NAPI thread by itself while the watchdog is armed. 0 and 0 are the kernel's defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NapiDefer {
    pub hard_irqs: u32,
    pub gro_flush_timeout_ns: u64,
}

impl std::str::FromStr for NapiDefer {
    type Err = String;
    /// `HARD_IRQS,TIMEOUT_NS`, e.g. `2,50000`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s.split_once(',').ok_or_else(|| format!("{s:?}: write HARD_IRQS,GRO_FLUSH_TIMEOUT_NS, e.g. 2,50000"))?;
        Ok(Self {
            hard_irqs: a.trim().parse().map_err(|e| format!("{a:?}: {e}"))?,
            gro_flush_timeout_ns: b.trim().parse().map_err(|e| format!("{b:?}: {e}"))?,
        })
    }
}

impl NapiDefer {
    /// Set on `dev` (it applies to the device's NAPIs now and to those XDP builds later).
    fn apply(self, ns: &Netns, dev: &str) -> anyhow::Result<()> {
        let path = format!("/sys/class/net/{dev}");
        ns.exec("sh", &["-c", &format!("echo {} > {path}/napi_defer_hard_irqs && echo {} > {path}/gro_flush_timeout", self.hard_irqs, self.gro_flush_timeout_ns)])
            .map(drop)
            .with_context(|| format!("NAPI deferral on {dev}"))
    }
}

/// What the JSON records of one device.
pub(super) fn describe_device(ns: &Netns, role: &str, dev: &str, xdp: &str, napi: &str) -> serde_json::Value {
    let rps = ns.exec("sh", &["-c", &format!("cat /sys/class/net/{dev}/queues/rx-*/rps_cpus | tr '\\n' ' '")]).unwrap_or_default();
    let sysfs = |name: &str| ns.exec("cat", &[&format!("/sys/class/net/{dev}/{name}")]).map(|v| v.trim().to_string()).unwrap_or_else(|e| format!("{e:#}"));
    serde_json::json!({
        "role": role,
        "name": dev,
        "xdp": xdp,
        "features": features(ns, dev).map(|f| serde_json::json!(f)).unwrap_or_else(|e| serde_json::json!(format!("{e:#}"))),
        "channels": ns.exec("ethtool", &["-l", dev]).unwrap_or_default(),
        "napi": napi,
        "napi_defer_hard_irqs": sysfs("napi_defer_hard_irqs"),
        "gro_flush_timeout_ns": sysfs("gro_flush_timeout"),
        "rps_cpus": rps.trim(),
        "qdisc": ns.exec("tc", &["qdisc", "show", "dev", dev]).unwrap_or_default().trim(),
        "link": ns.ip(&["-d", "link", "show", "dev", dev]).unwrap_or_default(),
    })
}

const SYSCTLS: &[&str] = &[
    "net.ipv4.tcp_syncookies",
    "net.core.somaxconn",
    "net.ipv4.tcp_max_syn_backlog",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_timestamps",
    "net.ipv4.tcp_sack",
    "net.ipv4.tcp_window_scaling",
    "net.ipv4.tcp_congestion_control",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
    "net.core.netdev_max_backlog",
    "net.ipv4.tcp_max_tw_buckets",
];

pub(super) fn sysctls(ns: &Netns) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for k in SYSCTLS {
        let v = ns.exec("sysctl", &["-n", k]).map(|s| s.trim().to_string()).unwrap_or_else(|e| format!("{e:#}"));
        out.insert((*k).into(), v.into());
    }
    out.into()
}

/// What a rig is asked to be.
#[derive(Debug, Clone)]
pub struct RigOptions {
    pub name: String,
    pub queues: u32,
    pub cpus: Cpus,
    /// Extra `synx run` arguments (beyond iface, control socket and listeners).
    pub synx_args: Vec<String>,
    pub kernel: KernelServerOptions,
    /// The server veths' NAPI deferral, per side.
    pub synx_defer: NapiDefer,
    pub kernel_defer: NapiDefer,
}

/// The machine's own work that runs whatever the rig does, moved off the server CPUs while a
/// rig lives and put back on drop (every thread of each process):
/// - `kdamond.0`, DAMON's proactive reclaim: about 0.5% of CPU 0, the size of a quiet idle
///   row's whole figure;
/// - `process_api`, this VM's agent (its PID 1), whose TCP readiness check walks the kernel's
///   socket tables, every namespace's sockets included: with a million connections held on
///   each end it took 25-60% of a CPU in system time, on either CPU, invisible to perf (it
///   cannot sample that process); that was the 'system' time of the quiet idle windows that
///   grew with the connections on both sides.
///
/// Per-CPU kernel threads cannot move and stay, as they would on any server.
pub struct Housekeeping(Vec<(u32, libc::cpu_set_t, super::interrupt::Registered)>);

impl Housekeeping {
    /// Process names (prefixes), and what they are.
    const THREADS: [(&str, &str); 2] = [("kdamond", "kernel thread"), ("process_api", "VM agent")];

    fn off(server: &[usize], client: &[usize]) -> (Self, Vec<String>) {
        let (mut moved, mut notes) = (Vec::new(), Vec::new());
        // Where the servers use every CPU (two queues on two cores) there is nowhere to go.
        let client: Vec<usize> = client.iter().copied().filter(|c| !server.contains(c)).collect();
        if client.is_empty() {
            return (Self(moved), notes);
        }
        let Ok(dir) = std::fs::read_dir("/proc") else { return (Self(moved), notes) };
        for pid in dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
            let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else { continue };
            let comm = comm.trim();
            let Some((_, what)) = Self::THREADS.iter().find(|(t, _)| comm.starts_with(t)) else { continue };
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { continue };
            let (mut n, mut failed) = (0, None);
            for tid in tasks.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
                // SAFETY: CPU_ISSET reads a mask the kernel filled in.
                if !affinity(tid).is_ok_and(|now| server.iter().any(|&c| unsafe { libc::CPU_ISSET(c, &now) })) {
                    continue;
                }
                match set_affinity(tid, &client) {
                    Ok(old) => {
                        moved.push((tid, old, super::interrupt::register(super::interrupt::Undo::Affinity { tid, old })));
                        n += 1;
                    }
                    Err(e) => failed = Some(e),
                }
            }
            if n > 0 {
                notes.push(format!("the machine's {what} {comm} ({n} threads) moved to the client CPUs {} while the rig ran", Cpus::list(&client)));
            }
            if let Some(e) = failed {
                notes.push(format!("the machine's {what} {comm}: a thread could not leave the server CPUs: {e}"));
            }
        }
        (Self(moved), notes)
    }
}

impl Drop for Housekeeping {
    fn drop(&mut self) {
        for (pid, old, _) in &self.0 {
            restore_affinity(*pid, old);
        }
    }
}

pub struct Rig {
    // Field order is drop order: the servers stop before their namespaces go.
    pub synx: Result<Daemon, String>,
    pub kernel: Result<KernelServer, String>,
    /// The client ends' XDP programs, only while a flood group runs ([`Rig::flood_sinks`]).
    synx_sink: Option<Sink>,
    kernel_sink: Option<Sink>,
    pub name: String,
    pub synx_net: VethPair,
    pub kernel_net: VethPair,
    pub cpus: Cpus,
    pub synx_command: Vec<String>,
    pub tools: PathBuf,
    notes: Vec<String>,
    napi: NapiThreads,
    synx_defer: NapiDefer,
    _housekeeping: Housekeeping,
}

impl Rig {
    pub fn start(o: &RigOptions, tools: &Path) -> anyhow::Result<Self> {
        super::interrupt::checkpoint();
        let synx_net = VethPair::with_queues(o.queues)?;
        let kernel_net = VethPair::with_queues(o.queues)?;
        // The test bed turns transmit checksumming off on every client veth (XDP on the server
        // would see partial checksums); the kernel's pair runs no XDP: its defaults back.
        kernel_net.client.exec("ethtool", &["-K", &kernel_net.client_if, "tx", "on"])?;
        for (ns, dev) in [(&kernel_net.client, &kernel_net.client_if), (&kernel_net.server, &kernel_net.server_if)] {
            let f = features(ns, dev)?;
            ensure!(
                f.get("tcp-segmentation-offload").map(String::as_str) == Some("on"),
                "the kernel's veth {dev} has TSO {:?}: it must keep its default offloads",
                f.get("tcp-segmentation-offload")
            );
        }
        // GRO on the kernel's server veth gives it a NAPI context: frames from the flood
        // generator (XDP frames) are received there, and its receive work can be threaded and
        // pinned like synx's. Client skbs with TSO on still arrive through RPS (below).
        kernel_net.server.exec("ethtool", &["-K", &kernel_net.server_if, "gro", "on"])?;
        for net in [&synx_net, &kernel_net] {
            // GRO on both client ends, as a NIC driver has it by default: synx can only send
            // MTU-sized frames (copy-mode AF_XDP has no TSO), which a client without GRO takes
            // up its stack one by one, while the kernel's segments arrive at its client as the
            // 64 KB GSO skbs they left as. The kernel's client end gets the same, though veth
            // still hands it a TSO sender's skbs through the backlog (RPS) rather than NAPI.
            net.client.exec("ethtool", &["-K", &net.client_if, "gro", "on"])?;
            for (ns, dev) in [(&net.server, &net.server_if), (&net.client, &net.client_if)] {
                attach_qdisc(ns, dev, o.queues)?;
            }
            for block in [FLOOD_NET, IDLE_NET] {
                net.server.ip(&["route", "add", &format!("{block}/24"), "via", &net.client_v4.to_string()])?;
            }
            net.client.exec("sysctl", &["-qw", "net.ipv4.ip_local_port_range=1024 65535"])?;
            net.server.exec("sysctl", &["-qw", "net.core.somaxconn=65535"])?;
            net.server.exec("sysctl", &["-qw", "net.ipv4.tcp_max_syn_backlog=65535"])?;
            // Every segment from the server is counted where it arrives (keepalive probes when
            // idle); frames to the flood's spoofed sources are counted and dropped by the sink.
            let (dev, server) = (&net.client_if, net.server_v4);
            net.client.nft(&format!(
                "table netdev synxbench {{\n\
                 counter from_server {{ }}\n\
                 chain rx {{\n\
                 type filter hook ingress device {dev} priority 0;\n\
                 ip saddr {server} counter name from_server;\n\
                 }}\n\
                 }}\n"
            ))?;
            steer_rps(&net.server, &net.server_if, &o.cpus.server)?;
            steer_rps(&net.client, &net.client_if, &o.cpus.client)?;
        }
        let mut notes = Vec::new();
        if o.queues > 1 {
            // veth has no RSS: a sender picks the queue, by a hash it draws per socket, so one
            // tuple (a client port reused while the server holds its TIME_WAIT) can arrive on
            // another queue than before, which a NIC's RSS never does and synx's per-queue
            // engines rely on. The clients' queue is chosen by the source port instead, as RSS
            // would by the tuple.
            ensure!(o.queues.is_power_of_two(), "{} queues: the source-port steering needs a power of two", o.queues);
            let steer = |net: &VethPair| -> anyhow::Result<()> {
                let dev = &net.client_if;
                net.client.exec("tc", &["qdisc", "add", "dev", dev, "clsact"])?;
                for q in 0..o.queues {
                    let (value, mask) = (q.to_string(), (o.queues - 1).to_string());
                    net.client.exec(
                        "tc",
                        &["filter", "add", "dev", dev, "egress", "protocol", "ip", "prio", "1", "u32", "match", "ip", "sport", &value, &mask, "action", "skbedit", "queue_mapping", &q.to_string()],
                    )?;
                }
                Ok(())
            };
            match steer(&synx_net).and_then(|()| steer(&kernel_net)) {
                Ok(()) => notes.push(format!("{} queues: each client's transmit queue (the server's receive queue on veth) is chosen by its source port (tc skbedit), as RSS would by the tuple", o.queues)),
                Err(e) => {
                    // Both sides steered, or neither.
                    for net in [&synx_net, &kernel_net] {
                        let _ = net.client.exec("tc", &["qdisc", "del", "dev", &net.client_if, "clsact"]);
                    }
                    notes.push(format!(
                        "{} queues: the clients' transmit queue could not be tied to the tuple ({e:#}); veth then lets each socket pick one by a random hash, so a client port reused while one queue's engine holds its TIME_WAIT may arrive on another queue, which RSS on a NIC never does",
                        o.queues
                    ))
                }
            }
        }
        o.kernel_defer.apply(&kernel_net.server, &kernel_net.server_if)?;
        o.synx_defer.apply(&synx_net.server, &synx_net.server_if)?;
        let mut napi = NapiThreads::default();
        for (ns, dev, cpus) in [(&kernel_net.server, &kernel_net.server_if, &o.cpus.server), (&kernel_net.client, &kernel_net.client_if, &o.cpus.client)] {
            napi.thread(ns, dev, cpus)?;
        }
        let (housekeeping, moved) = Housekeeping::off(&o.cpus.server, &o.cpus.client);
        notes.extend(moved);
        let kernel = KernelServer::start(&kernel_net.server, tools, &listen_specs(kernel_net.server_v4), &o.cpus.server, &o.kernel)
            .map_err(|e| format!("the kernel peer did not start: {e:#}"));
        let mut rig = Self {
            name: o.name.clone(),
            synx_net,
            kernel_net,
            cpus: o.cpus.clone(),
            synx: Err("not started".into()),
            synx_command: Vec::new(),
            kernel,
            synx_sink: None,
            kernel_sink: None,
            tools: tools.to_path_buf(),
            notes,
            napi,
            synx_defer: o.synx_defer,
            _housekeeping: housekeeping,
        };
        rig.start_synx(&o.synx_args);
        Ok(rig)
    }

    /// (Re)start the synx daemon with these extra arguments, pinned to the server CPUs, and
    /// thread and pin its veth pair's NAPI (attaching XDP rebuilt it).
    pub fn start_synx(&mut self, extra: &[String]) {
        self.synx = Err("restarting".into());
        let ip = self.synx_net.server_v4;
        let mut args: Vec<String> = listen_specs(ip).iter().map(|(a, app)| format!("--listen={a}={app}")).collect();
        args.extend(extra.iter().cloned());
        self.synx_command = std::iter::once("synx run".to_string()).chain(args.iter().cloned()).collect();
        let net = &self.synx_net;
        let started = (|| -> anyhow::Result<Daemon> {
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            let d = Daemon::start(&net.server, &net.server_if, &argv)?;
            pin_all_threads(d.pid(), &self.cpus.server)?;
            // Again after XDP rebuilt the device's NAPIs.
            self.synx_defer.apply(&net.server, &net.server_if)?;
            for (ns, dev, cpus) in [(&net.server, &net.server_if, &self.cpus.server), (&net.client, &net.client_if, &self.cpus.client)] {
                self.napi.thread(ns, dev, cpus)?;
            }
            if synx_batches_napi(&args) {
                self.napi.await_batch(&net.server_if)?;
            }
            Ok(d)
        })();
        self.synx = started.map_err(|e| format!("synx did not start: {e:#}"));
    }

    /// The sinks on both client ends, for a flood group: they count the SYN-ACKs to the flood's
    /// sources where they arrive and drop them, and their XDP program makes veth hand each end
    /// everything through NAPI, threaded and pinned like the others. `false` takes them away
    /// again (GRO keeps a NAPI on each end; the server veths get TSO back).
    pub fn flood_sinks(&mut self, on: bool) -> anyhow::Result<()> {
        self.synx_sink = None;
        self.kernel_sink = None;
        if on {
            for side in [Side::Synx, Side::Kernel] {
                let net = self.net(side);
                let sink = Some(Sink::attach(&net.client, &self.tools, &net.client_if, FLOOD_NET, 24)?);
                match side {
                    Side::Synx => self.synx_sink = sink,
                    Side::Kernel => self.kernel_sink = sink,
                }
            }
        }
        for side in [Side::Synx, Side::Kernel] {
            self.rethread_napi(side, true)?;
        }
        Ok(())
    }

    /// Frames to the flood's sources counted at `side`'s client end so far.
    pub fn flood_arrivals(&mut self, side: Side) -> anyhow::Result<u64> {
        let sink = match side {
            Side::Synx => self.synx_sink.as_mut(),
            Side::Kernel => self.kernel_sink.as_mut(),
        };
        sink.context("no sink on that client end")?.count()
    }

    /// Thread and pin the NAPI of one end of `side`'s pair again (after an XDP program was
    /// attached or detached there, or GRO switched on); `client` picks the end. Fresh threads
    /// of synx's server veth go to SCHED_BATCH again if synx was asked to keep them there.
    pub fn rethread_napi(&mut self, side: Side, client: bool) -> anyhow::Result<()> {
        // The pair by its field, not `net()`: `self.napi` is written meanwhile.
        let net = match side {
            Side::Synx => &self.synx_net,
            Side::Kernel => &self.kernel_net,
        };
        let (ns, dev, cpus) = if client { (&net.client, &net.client_if, &self.cpus.client) } else { (&net.server, &net.server_if, &self.cpus.server) };
        self.napi.thread(ns, dev, cpus)?;
        if side == Side::Synx && !client && self.synx.is_ok() && synx_batches_napi(&self.synx_command) {
            self.napi.await_batch(dev)?;
        }
        Ok(())
    }

    /// Time the NAPI threads of `side`'s server veth have run so far, in nanoseconds (`None`
    /// if it has none, or one is gone).
    pub fn server_napi_runtime_ns(&self, side: Side) -> Option<u64> {
        let pids = self.napi.pids(&self.net(side).server_if);
        if pids.is_empty() {
            return None;
        }
        pids.iter().map(|&p| task_runtime_ns(p, p)).sum()
    }

    pub fn net(&self, side: Side) -> &VethPair {
        match side {
            Side::Synx => &self.synx_net,
            Side::Kernel => &self.kernel_net,
        }
    }

    pub fn addr(&self, side: Side, port: u16) -> SocketAddr {
        SocketAddr::new(self.net(side).server_v4.into(), port)
    }

    pub fn daemon(&self) -> anyhow::Result<&Daemon> {
        self.synx.as_ref().map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// The server's pid, or why it is not running (a process that disappeared fails the row).
    pub fn server_pid(&mut self, side: Side) -> anyhow::Result<u32> {
        match side {
            Side::Synx => {
                let pid = self.daemon()?.pid();
                ensure!(super::peers::pid_alive(pid), "synx (pid {pid}) is gone");
                Ok(pid)
            }
            Side::Kernel => match &mut self.kernel {
                Ok(k) => k.check_alive(),
                Err(e) => bail!("{e}"),
            },
        }
    }

    pub fn note(&mut self, text: impl Into<String>) {
        let text = text.into();
        if !self.notes.contains(&text) {
            self.notes.push(text);
        }
    }

    /// Read a named nft counter at `side`'s client ingress: packets.
    pub fn client_counter(&self, side: Side, name: &str) -> anyhow::Result<u64> {
        let out = self.net(side).client.exec("nft", &["list", "counter", "netdev", "synxbench", name])?;
        out.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no packet count in {out:?}"))
    }

    /// The rig as the JSON records it: devices, offloads, NAPI threads, RPS, sysctls.
    pub fn describe(&self) -> serde_json::Value {
        let pair = |net: &VethPair, server_xdp: &str, client_xdp: &str| {
            let napi = |dev: &str| self.napi.describe(dev);
            serde_json::json!({
                "devices": [
                    describe_device(&net.server, "server end", &net.server_if, server_xdp, &napi(&net.server_if)),
                    describe_device(&net.client, "client end", &net.client_if, client_xdp, &napi(&net.client_if)),
                ],
                "sysctls": { "server": sysctls(&net.server), "client": sysctls(&net.client) },
            })
        };
        serde_json::json!({
            "name": self.name,
            "cpus": { "server": self.cpus.server, "client": self.cpus.client },
            "pairs": {
                "synx": pair(&self.synx_net, "synx_xdp (native; answers by redirect, --xdp-tx auto on a veth)", "none (synx_bench_sink during flood groups)"),
                "kernel": pair(&self.kernel_net, "none", "none (synx_bench_sink during flood groups)"),
            },
            "synx_command": self.synx_command,
            "kernel_command": self.kernel.as_ref().map(|k| k.command.clone()).unwrap_or_default(),
            "notes": self.notes,
        })
    }
}

/// The listeners both sides serve: http, echo, discard.
pub fn listen_specs(ip: Ipv4Addr) -> Vec<(SocketAddr, &'static str)> {
    vec![
        (SocketAddr::new(ip.into(), HTTP), "http"),
        (SocketAddr::new(ip.into(), ECHO), "echo"),
        (SocketAddr::new(ip.into(), DISCARD), "discard"),
    ]
}

/// Set a sysctl in a namespace, returning its old value (to put back).
pub fn set_sysctl(ns: &Netns, key: &str, value: &str) -> anyhow::Result<String> {
    let old = ns.exec("sysctl", &["-n", key])?.trim().to_string();
    ns.exec("sysctl", &["-qw", &format!("{key}={value}")])?;
    Ok(old)
}

/// The machine's CPU count.
pub fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Bytes of slab objects in use, machine-wide (/proc/slabinfo: active objects times object
/// size, summed over caches). Objects, not slab pages: pages freed objects leave behind stay in
/// the caches, and a later round would reuse them without any growth in meminfo's Slab.
pub fn slab_active_bytes() -> anyhow::Result<f64> {
    let text = std::fs::read_to_string("/proc/slabinfo").context("reading /proc/slabinfo")?;
    Ok(text
        .lines()
        .skip(2)
        .filter_map(|l| {
            let mut f = l.split_whitespace().skip(1);
            let active: f64 = f.next()?.parse().ok()?;
            let size: f64 = f.nth(1)?.parse().ok()?;
            Some(active * size)
        })
        .sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn napi_batch_is_read_from_synx_arguments_either_way_written() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(synx_batches_napi(&args(&["--listen=x", "--napi-threads=batch"])));
        assert!(synx_batches_napi(&args(&["--napi-threads", "batch", "--gso=off"])));
        assert!(!synx_batches_napi(&args(&["--napi-threads=keep"])));
        assert!(!synx_batches_napi(&args(&["--napi-threads"])));
        assert!(!synx_batches_napi(&args(&["--listen=x"])));
        // The process's own policy reads as /proc says (a test thread runs SCHED_OTHER, 0).
        assert_eq!(sched_policy(std::process::id()), Some(libc::SCHED_OTHER));
        assert_eq!(sched_policy(u32::MAX), None);
    }

    #[test]
    fn per_cpu_busy_time_is_wall_time_less_idle_time() {
        let t0 = Instant::now();
        let ticks = clock_ticks();
        // 30 ticks of wall time later: CPU 0 was never idle (30 user + 10 softirq ticks sampled:
        // samples are not the measure), CPU 1 idle for all 30, CPU 2 for 20 of them (iowait
        // counted as idle), with only 1 busy tick sampled; CPU 3 idle for 12, 6 of them stolen
        // (the host late to run it when it woke: inside the idle time too), busy for 18.
        let t1 = t0 + std::time::Duration::from_secs_f64(30.0 / ticks);
        let a = CpuTimes::parse("cpu  10 0 10 100 0 0 0 0 0 0\ncpu0 5 0 5 50 0 0 0 0 0 0\ncpu1 5 0 5 50 0 0 0 0 0 0\ncpu2 0 0 0 10 0 0 0 0 0 0\ncpu3 0 0 0 0 0 0 0 0 0 0\nintr 1\n", t0);
        let b = CpuTimes::parse("cpu  50 0 20 130 0 0 0 0 0 0\ncpu0 35 0 5 50 0 0 10 0 0 0\ncpu1 5 0 5 80 0 0 0 0 0 0\ncpu2 1 0 0 25 5 0 0 0 0 0\ncpu3 12 0 0 12 0 0 0 6 0 0\n", t1);
        let close = |x: f64, y: f64| (x - y).abs() < 1e-6;
        assert!(close(b.busy_secs_since(&a, &[0]), 30.0 / ticks));
        assert!(close(b.busy_secs_since(&a, &[1]), 0.0));
        assert!(close(b.busy_secs_since(&a, &[2]), 10.0 / ticks));
        assert!(close(b.busy_secs_since(&a, &[0, 2]), 40.0 / ticks));
        assert!(close(b.sampled_busy_secs_since(&a, &[0]), 40.0 / ticks));
        assert!(close(b.busy_secs_since(&a, &[3]), 18.0 / ticks));
        assert!(close(b.sampled_busy_secs_since(&a, &[3]), 12.0 / ticks));
        assert!(close(b.steal_secs_since(&a, &[3]), 6.0 / ticks) && close(b.steal_secs_since(&a, &[0, 1, 2]), 0.0));
        // An idle CPU whose idle time, in its 10 ms unit, came out a tick above the wall time
        // reads below zero, as measured: not clamped to a 0 that looks like a measurement.
        let c = CpuTimes::parse("cpu  0 0 0 0 0 0 0 0 0 0\ncpu0 0 0 0 100 0 0 0 0 0 0\n", t0);
        let d = CpuTimes::parse("cpu  0 0 0 0 0 0 0 0 0 0\ncpu0 0 0 0 131 0 0 0 0 0 0\n", t1);
        assert!(close(d.busy_secs_since(&c, &[0]), -1.0 / ticks));
        let per = b.per_cpu_busy_since(&a);
        assert!(per.len() == 4 && close(per[0], 1.0) && close(per[1], 0.0) && close(per[2], 1.0 / 3.0), "{per:?}");
    }

    #[test]
    fn napi_deferral_parses_as_hard_irqs_and_nanoseconds() {
        assert_eq!("2,50000".parse::<NapiDefer>(), Ok(NapiDefer { hard_irqs: 2, gro_flush_timeout_ns: 50_000 }));
        assert_eq!("0,0".parse::<NapiDefer>(), Ok(NapiDefer::default()));
        assert!("2".parse::<NapiDefer>().is_err() && "x,1".parse::<NapiDefer>().is_err() && "1,-5".parse::<NapiDefer>().is_err());
    }

    #[test]
    fn moved_counters_are_those_that_changed_as_their_increase() {
        let m = |pairs: &[(&str, u64)]| pairs.iter().map(|&(k, v)| (k.to_string(), v)).collect::<BTreeMap<_, _>>();
        let before = m(&[("rx_queue_0_xdp_packets", 10), ("rx_queue_0_xdp_drops", 3), ("peer_ifindex", 7)]);
        let after = m(&[("rx_queue_0_xdp_packets", 25), ("rx_queue_0_xdp_drops", 3), ("peer_ifindex", 7), ("tx_queue_0_xdp_xmit_errors", 4)]);
        assert_eq!(moved(&before, &after), m(&[("rx_queue_0_xdp_packets", 15), ("tx_queue_0_xdp_xmit_errors", 4)]));
        // A device rebuilt between the readings starts again from 0: its new value is what moved.
        assert_eq!(moved(&m(&[("x", 100)]), &m(&[("x", 6)])), m(&[("x", 6)]));
    }

    #[test]
    fn cpu_masks_and_lists() {
        assert_eq!(Cpus::mask(&[0]), "1");
        assert_eq!(Cpus::mask(&[0, 1]), "3");
        assert_eq!(Cpus::list(&[0, 1]), "0,1");
    }
}
