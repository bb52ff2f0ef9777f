//! The row groups, in the order a full run measures them, and what they share. A group runs its
//! rounds and hands its rows to the [`Ctx`]. To add one (a module beside these, or another
//! file of xtask such as the WAN rows), add it to [`GROUPS`]: `--only` and `--list` see it.

mod bulk;
mod conn;
mod floor;
mod flood;
mod http;
mod idle;
mod micro;
mod multiqueue;
mod proxy;
mod takeover;
mod wan;

pub use wan::{bulk_row_names as wan_bulk_row_names, short_row_names as wan_short_row_names};

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

use super::{
    Ctx, Rig, Side,
    rig::{CpuTimes, process_runtime_ns},
    targets,
};

pub struct Group {
    /// What `--only` matches (by prefix).
    pub name: &'static str,
    pub about: &'static str,
    pub run: fn(&mut Ctx) -> anyhow::Result<()>,
}

pub const GROUPS: &[Group] = &[
    // First, on fresh daemons: memory growth is the measure.
    Group { name: "idle", about: "idle connections: memory per connection, CPU with keepalive probes firing", run: idle::run },
    Group { name: "syn_flood", about: "open-loop SYN flood: SYN-ACKs per server CPU-second, legitimate connects", run: flood::run },
    Group { name: "conn_rate", about: "new connections per second and server CPU per connection", run: conn::run },
    Group { name: "http", about: "HTTP keep-alive with wrk at c1, c64, c1000: req/s, p50, p99", run: http::closed_loop },
    Group { name: "http_fixed_rate", about: "HTTP at half the kernel's capacity: latency corrected for coordinated omission", run: http::fixed_rate },
    Group { name: "bulk", about: "one connection each way: Gbit/s", run: bulk::run },
    Group { name: "path_floor", about: "each pair's receive-and-transmit path with no TCP and no app (UDP sent back by synx's AF_XDP driver, or by the kernel): round trips and echo frames per second", run: floor::run },
    Group { name: "multiqueue", about: "2 RX queues on 2 cores: connection rate and SYN flood", run: multiqueue::run },
    Group { name: "proxy", about: "synx's http-proxy against nginx as a reverse proxy, same backend: req/s, p99, CPU per request, memory per idle keep-alive client", run: proxy::run },
    Group { name: "takeover", about: "synx run --takeover with 10k and 100k idle connections: time to the old daemon's exit, longest stall of an echoing connection", run: takeover::run },
    // Emulated wide-area paths (issue 16), each group on its own rig (wan.rs).
    Group { name: "wan_calib", about: "the path emulator against what it is asked (RTT, rate, loss), kernel to kernel, and its ceiling", run: wan::calibrate },
    Group { name: "wan_bulk", about: "RTT 40 ms, 100 Mbit/s, each way at 0-5% loss and 2% reordering (the loss cells pooled over several transfers a round): Mbit/s", run: wan::bulk },
    Group { name: "wan_short", about: "10 KB, 100 KB, 1 MB responses on fresh connections at 1% loss: completion p50, p99", run: wan::short },
    Group { name: "wan_fair", about: "8 synx and 8 kernel flows through one bottleneck: shares, Jain's index", run: wan::fairness },
    Group { name: "xdp", about: "the XDP program's per-packet cost (BPF_PROG_TEST_RUN)", run: micro::xdp },
    Group { name: "tcp", about: "the sans-IO TCP core's own costs (its benchmark)", run: micro::tcp },
];

pub fn peer(side: Side) -> &'static str {
    match side {
        Side::Synx => targets::SYNX,
        Side::Kernel => targets::KERNEL,
    }
}

/// CPU time around a load, read per CPU (wall time less idle time, see [`CpuTimes`]): the
/// server side's, the client side's, each CPU's busy fraction, and the wall time.
#[derive(Debug, Clone)]
pub struct CpuWindow {
    pub server_secs: f64,
    /// The server CPUs' busy time as the tick samples count it (for the record).
    pub server_secs_sampled: f64,
    /// What the hypervisor stole from the server CPUs (included in `server_secs` while they
    /// worked; for the record).
    pub server_steal_secs: f64,
    pub client_secs: f64,
    pub per_cpu_busy: Vec<f64>,
    pub wall_secs: f64,
    /// What the server veth's NAPI threads ran (the receive work veth does in them: XDP, its
    /// copies), from the scheduler's accounting; `None` where it has none.
    pub server_napi_secs: Option<f64>,
    /// What the server process's threads ran (synx, or the kernel's server; its system calls
    /// included, softirq work that ran on its time too).
    pub server_process_secs: Option<f64>,
}

impl CpuWindow {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "server_cpu_s": self.server_secs,
            "server_cpu_s_sampled": self.server_secs_sampled,
            "server_steal_s": self.server_steal_secs,
            "client_cpu_s": self.client_secs,
            "per_cpu_busy": self.per_cpu_busy,
            "wall_s": self.wall_secs,
            "server_napi_s": self.server_napi_secs,
            "server_process_s": self.server_process_secs,
        })
    }
}

/// Run the load `f` with the server on `side` checked alive before and after (a server that
/// disappears fails the round), reading CPU time around it.
pub fn measured<T>(rig: &mut Rig, side: Side, f: impl FnOnce(&Rig) -> anyhow::Result<T>) -> anyhow::Result<(T, CpuWindow)> {
    let pid = rig.server_pid(side)?;
    let profile = profile_cpus(rig, side);
    let (napi0, process0) = (rig.server_napi_runtime_ns(side), process_runtime_ns(pid));
    let (t0, c0) = (Instant::now(), CpuTimes::now());
    let out = f(rig);
    let (c1, wall) = (CpuTimes::now(), t0.elapsed().as_secs_f64());
    let (napi1, process1) = (rig.server_napi_runtime_ns(side), process_runtime_ns(pid));
    drop(profile);
    rig.server_pid(side)?;
    let out = out?;
    let ran = |a: Option<u64>, b: Option<u64>| Some(b?.checked_sub(a?)? as f64 / 1e9);
    let w = CpuWindow {
        server_secs: c1.busy_secs_since(&c0, &rig.cpus.server),
        server_secs_sampled: c1.sampled_busy_secs_since(&c0, &rig.cpus.server),
        server_steal_secs: c1.steal_secs_since(&c0, &rig.cpus.server),
        client_secs: c1.busy_secs_since(&c0, &rig.cpus.client),
        per_cpu_busy: c1.per_cpu_busy_since(&c0),
        wall_secs: wall,
        server_napi_secs: ran(napi0, napi1),
        server_process_secs: ran(process0, process1),
    };
    Ok((out, w))
}

/// With `SYNX_BENCH_PERF=DIR`, call graphs of the server's CPUs (engine or kernel server, and
/// the server veth's NAPI) and the client's (generator, the client veth's NAPI) through a
/// measured round (an idle round's CPU window), to `DIR/NNN-SIDE.data` for `perf report`
/// (`--cpu` picks a side). A side's limit can be on the other side: synx's slow bulk_tx rounds
/// showed in the client veth's copy of each frame, not on the server.
/// The sampling costs each CPU a few percent: figures of such a run are for reading, not
/// publishing.
pub(super) fn profile_cpus(rig: &Rig, side: Side) -> Option<Recorder> {
    static ROUND: AtomicU64 = AtomicU64::new(0);
    // The multiqueue rig gives both sides every CPU; perf refuses a list that names one twice.
    let mut cpus = [rig.cpus.server.as_slice(), rig.cpus.client.as_slice()].concat();
    cpus.sort_unstable();
    cpus.dedup();
    let cpus = crate::bench::rig::Cpus::list(&cpus);
    // SIGINT: perf writes its file out and exits.
    Recorder::start("SYNX_BENCH_PERF", &ROUND, side, "data", libc::SIGINT, |file| {
        let mut perf = std::process::Command::new("perf");
        perf.args(["record", "-q", "-g", "-F", "1999", "-C", &cpus, "-o"]).arg(file);
        perf
    })
}

/// A tool recording beside a round when its environment variable names a directory
/// (`SYNX_BENCH_PERF`, `SYNX_BENCH_CAPTURE`), into `DIR/NNN-SIDE.EXT`; stopped with its
/// signal, on which it writes its file out, when dropped: after the round, or when the round
/// failed or panicked.
pub struct Recorder {
    child: std::process::Child,
    signal: i32,
}

impl Recorder {
    /// Start the command `tool` makes for the file, given a moment to get going; `None` when
    /// the variable is unset or the tool would not start.
    pub fn start(
        var: &str,
        round: &AtomicU64,
        side: Side,
        ext: &str,
        signal: i32,
        tool: impl FnOnce(&std::path::Path) -> std::process::Command,
    ) -> Option<Self> {
        let dir = std::env::var_os(var)?;
        let n = round.fetch_add(1, Ordering::Relaxed);
        let file = std::path::Path::new(&dir).join(format!("{n:03}-{}.{ext}", peer(side)));
        let child = tool(&file).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().ok()?;
        std::thread::sleep(std::time::Duration::from_millis(500));
        Some(Self { child, signal })
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        // SAFETY: a signal to our own child, which `wait` below reaps.
        unsafe { libc::kill(self.child.id() as i32, self.signal) };
        let _ = self.child.wait();
    }
}

/// synx's AF_XDP counters (`xsk_*`) and segment counters now; nothing for the kernel, or for a
/// synx that does not answer.
pub fn ring_counters(rig: &Rig, side: Side) -> Option<serde_json::Map<String, serde_json::Value>> {
    synx_stats(rig, side, |k, _| is_ring_counter(k))
}

/// The counters [`ring_counters`] keeps.
fn is_ring_counter(k: &str) -> bool {
    k.starts_with("xsk_") || k == "tcp_rx_segments" || k == "tcp_tx_segments" || k == "coalescing_turned_on"
}

/// Every counter of synx's (`synx stats`), for [`all_counters_moved`]: what a round's failure
/// may be explained by (resets sent and why, connections closed and how). None for the kernel.
pub fn all_counters(rig: &Rig, side: Side) -> Option<serde_json::Map<String, serde_json::Value>> {
    synx_stats(rig, side, |_, v| v.is_u64())
}

/// The values of `synx stats` that `keep` keeps; None for the kernel, or a synx that does not
/// answer.
fn synx_stats(rig: &Rig, side: Side, keep: impl Fn(&str, &serde_json::Value) -> bool) -> Option<serde_json::Map<String, serde_json::Value>> {
    let Side::Synx = side else { return None };
    let stats = rig.daemon().ok()?.stats().ok()?;
    Some(stats.as_object()?.iter().filter(|(k, v)| keep(k, v)).map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// How far each counter of `before` (from [`ring_counters`]) has moved since: a round's
/// per-frame work as the JSON keeps it (wakeups and frames each way, transmits that ran out of
/// frames, drops). Null for the kernel.
pub fn counters_moved(rig: &Rig, side: Side, before: Option<serde_json::Map<String, serde_json::Value>>) -> serde_json::Value {
    let (Some(before), Some(after)) = (before, ring_counters(rig, side)) else { return serde_json::Value::Null };
    moved(&before, &after, false)
}

/// [`all_counters`]' growth since `before`, only the counters that moved (gauges that fell
/// read 0 and are left out too).
pub fn all_counters_moved(rig: &Rig, side: Side, before: Option<serde_json::Map<String, serde_json::Value>>) -> serde_json::Value {
    let (Some(before), Some(after)) = (before, all_counters(rig, side)) else { return serde_json::Value::Null };
    moved(&before, &after, true)
}

/// [`counters_moved`] and [`all_counters_moved`] together from one read of `synx stats` after
/// the round, `before` being [`all_counters`]' (nulls for the kernel).
pub fn ring_and_all_counters_moved(rig: &Rig, side: Side, before: Option<serde_json::Map<String, serde_json::Value>>) -> (serde_json::Value, serde_json::Value) {
    let (Some(before), Some(after)) = (before, all_counters(rig, side)) else { return (serde_json::Value::Null, serde_json::Value::Null) };
    let rings = |m: &serde_json::Map<String, serde_json::Value>| -> serde_json::Map<String, serde_json::Value> {
        m.iter().filter(|(k, _)| is_ring_counter(k)).map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    (moved(&rings(&before), &rings(&after), false), moved(&before, &after, true))
}

fn moved(before: &serde_json::Map<String, serde_json::Value>, after: &serde_json::Map<String, serde_json::Value>, only_moved: bool) -> serde_json::Value {
    let at = |m: &serde_json::Map<String, serde_json::Value>, k: &str| m.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
    after
        .keys()
        .map(|k| (k.clone(), at(after, k).saturating_sub(at(before, k))))
        .filter(|&(_, d)| !only_moved || d > 0)
        .map(|(k, d)| (k, d.into()))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// A row name's suffix for a connection count: 10k, 100k, 1m.
pub fn count_suffix(n: usize) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}m", n / 1_000_000)
    } else if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_moved_are_growths_and_a_fallen_gauge_reads_zero() {
        let map = |v: serde_json::Value| v.as_object().unwrap().clone();
        let before = map(serde_json::json!({ "resets_sent": 1, "rx": 5, "gauge": 9 }));
        let after = map(serde_json::json!({ "resets_sent": 8, "rx": 5, "gauge": 2, "new": 3 }));
        assert_eq!(moved(&before, &after, false), serde_json::json!({ "resets_sent": 7, "rx": 0, "gauge": 0, "new": 3 }));
        assert_eq!(moved(&before, &after, true), serde_json::json!({ "resets_sent": 7, "new": 3 }));
    }

    #[test]
    fn group_names_are_unique_and_counts_read_short() {
        let mut names: Vec<&str> = GROUPS.iter().map(|g| g.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), GROUPS.len());
        assert_eq!(count_suffix(100_000), "100k");
        assert_eq!(count_suffix(1_000_000), "1m");
        assert_eq!(count_suffix(12_345), "12345");
    }
}
