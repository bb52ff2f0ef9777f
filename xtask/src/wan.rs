//! `cargo xtask bench --only wan`: synx and the kernel side by side on emulated wide-area paths
//! (issue 16), in one run, through one path emulator (`testbed::path`).
//!
//! The rig: a client namespace, the emulator's middle namespace, and two server namespaces
//! behind it: synx (native XDP on its veth) and the kernel (`synx serve-kernel`: the same apps
//! on kernel sockets, on a veth with no XDP anywhere, so its GSO/TSO and checksum offloads are
//! those it has in real life; GRO on, as a NIC has it). Both sit behind the same bottleneck.
//! Linux's defaults everywhere (CUBIC, RACK, SACK, no fq, tcp_syncookies=1, ECN only when
//! asked; CUBIC pinned by the test bed, since this machine's kernel is built with BBR as its
//! default), except that cached TCP metrics are flushed before every round so no round
//! inherits the previous one's ssthresh.
//!
//! Rounds alternate ABBA after a warm-up round per side; a round that fails (error, timeout,
//! the emulator itself dropping a frame it was not asked to) is counted and shown, and fails
//! its row. The JSON carries every raw sample, every failure and the emulator's counters.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::json;
use testbed::{
    Daemon, KernelServer,
    path::{Dir, Loss, PathBed, PathSpec, Snapshot, probe},
};

const ECHO: u16 = 7;
const DISCARD: u16 = 9;
const HTTP: u16 = 80;
const RTT: Duration = Duration::from_millis(40);
const MBIT: u64 = 1_000_000;

/// Whether `--only` asks for any wan row (empty: the whole bench, wan rows included).
pub fn wanted(only: &[String]) -> bool {
    only.is_empty() || only.iter().any(|o| o.starts_with("wan") || "wan".starts_with(o.as_str()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Synx,
    Kernel,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Synx => "synx",
            Side::Kernel => "kernel",
        }
    }
}

/// ABBA order of `rounds` rounds per side.
fn abba(rounds: usize) -> Vec<Side> {
    (0..rounds * 2)
        .map(|i| if matches!(i % 4, 0 | 3) { Side::Synx } else { Side::Kernel })
        .collect()
}

struct Rig {
    bed: PathBed,
    synx: Result<Daemon, String>,
    _kernel: KernelServer,
}

impl Rig {
    fn start(synx_bin: &Path, synx_args: &[String]) -> anyhow::Result<Self> {
        // SAFETY: setenv before any thread of ours reads it: the test bed finds synx this way.
        unsafe { std::env::set_var("SYNX_BIN", synx_bin) };
        let bed = PathBed::builder().both(PathSpec::wan(RTT, 100 * MBIT)).xdp_server().kernel_server().start()?;
        bed.enable_gro()?;
        bed.client.exec("sysctl", &["-qw", "net.ipv4.ip_local_port_range=1024 65535"])?;
        let s = &bed.servers[0];
        let listen = [
            format!("--listen={}=echo", s.addr(ECHO)),
            format!("--listen={}=discard", s.addr(DISCARD)),
            format!("--listen={}=http", s.addr(HTTP)),
        ];
        let args: Vec<&str> = listen.iter().chain(synx_args).map(String::as_str).collect();
        let synx = Daemon::start(&s.ns, &s.iface, &args).map_err(|e| format!("synx did not start: {e:#}"));
        let k = &bed.servers[1];
        let kernel = KernelServer::start(&k.ns, &[(k.addr(ECHO), "echo"), (k.addr(DISCARD), "discard"), (k.addr(HTTP), "http")])?;
        Ok(Self { bed, synx, _kernel: kernel })
    }

    fn addr(&self, side: Side, port: u16) -> SocketAddr {
        self.bed.servers[match side {
            Side::Synx => 0,
            Side::Kernel => 1,
        }]
        .addr(port)
    }

    /// Before a round: no cached metrics (ssthresh, RTT) from earlier rounds on either kernel
    /// end, and the path idle.
    fn fresh(&self) {
        for ns in [&self.bed.client, &self.bed.servers[1].ns] {
            let _ = ns.ip(&["tcp_metrics", "flush", "all"]);
        }
        std::thread::sleep(Duration::from_millis(300));
    }

    fn ready(&self, side: Side) -> anyhow::Result<()> {
        if side == Side::Synx {
            self.synx.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Ok(())
    }

    fn sysctls(&self) -> serde_json::Value {
        let keys = [
            "net.ipv4.tcp_congestion_control",
            "net.ipv4.tcp_recovery",
            "net.ipv4.tcp_sack",
            "net.ipv4.tcp_ecn",
            "net.ipv4.tcp_syncookies",
            "net.ipv4.tcp_rmem",
            "net.ipv4.tcp_wmem",
            "net.ipv4.tcp_no_metrics_save",
        ];
        let read = |ns: &testbed::Netns| {
            keys.iter()
                .map(|k| (k.to_string(), json!(ns.exec("sysctl", &["-n", k]).map(|v| v.trim().to_string()).unwrap_or_else(|e| format!("{e:#}")))))
                .collect::<serde_json::Map<_, _>>()
        };
        let qdisc = |ns: &testbed::Netns, dev: &str| ns.exec("tc", &["qdisc", "show", "dev", dev]).map(|v| v.trim().to_string()).unwrap_or_else(|e| format!("{e:#}"));
        json!({
            "client": read(&self.bed.client),
            "kernel_server": read(&self.bed.servers[1].ns),
            "qdisc": { "client": qdisc(&self.bed.client, &self.bed.client_if), "kernel_server": qdisc(&self.bed.servers[1].ns, &self.bed.servers[1].iface) },
        })
    }
}

/// What the emulator did during one round, both ways; a fault of its own fails the round.
struct PathDelta {
    up: Snapshot,
    down: Snapshot,
    device_drops: u64,
}

impl PathDelta {
    fn json(&self) -> serde_json::Value {
        let d = |s: &Snapshot| {
            json!({
                "segments": s.segments, "impairable": s.impairable, "lost": s.lost, "tail_drops": s.tail_drops,
                "ce_marked": s.ce_marked, "reordered": s.reordered, "duplicated": s.duplicated,
                "delivered_bytes": s.delivered_bytes, "faults": s.faults(),
                "lateness_p50_us": s.lateness_quantile(0.5).as_micros(), "lateness_p99_us": s.lateness_quantile(0.99).as_micros(),
            })
        };
        json!({ "up": d(&self.up), "down": d(&self.down), "device_drops": self.device_drops })
    }
}

/// Run `f` as one round, with the path's counters around it.
fn round<T>(rig: &Rig, side: Side, f: impl FnOnce() -> anyhow::Result<T>) -> (anyhow::Result<T>, PathDelta) {
    rig.fresh();
    let (up0, down0) = (rig.bed.stats(Dir::Up), rig.bed.stats(Dir::Down));
    let drops0 = rig.bed.device_drops().unwrap_or(0);
    let r = rig.ready(side).and_then(|()| f());
    let delta = PathDelta {
        up: rig.bed.stats(Dir::Up).since(&up0),
        down: rig.bed.stats(Dir::Down).since(&down0),
        device_drops: rig.bed.device_drops().unwrap_or(0).saturating_sub(drops0),
    };
    let faults = delta.up.faults() + delta.down.faults();
    let r = match r {
        Ok(_) if faults + delta.device_drops > 0 => Err(anyhow::anyhow!(
            "the emulator itself lost frames ({faults} faults, {} veth drops): round void",
            delta.device_drops
        )),
        r => r,
    };
    (r, delta)
}

/// One side's rounds of one row.
#[derive(Default)]
struct SideRuns {
    attempted: usize,
    samples: Vec<f64>,
    failures: Vec<String>,
    paths: Vec<serde_json::Value>,
}

impl SideRuns {
    fn json(&self) -> serde_json::Value {
        json!({ "attempted": self.attempted, "succeeded": self.attempted - self.failures.len(),
                "failures": self.failures, "samples": self.samples, "path": self.paths })
    }
}

/// How a row's figure is made from a side's samples.
#[derive(Debug, Clone, Copy)]
enum Stat {
    Median,
    Quantile(f64),
}

struct WanRow {
    name: String,
    unit: &'static str,
    higher_is_better: bool,
    note: String,
    stat: Stat,
    synx: Arc<SideRuns>,
    kernel: Arc<SideRuns>,
}

impl WanRow {
    /// A side's figure, or why there is none. A side with any failed round has none: its row
    /// fails (the samples it has are still in the JSON).
    fn value(&self, side: Side) -> Result<f64, String> {
        let runs = match side {
            Side::Synx => &self.synx,
            Side::Kernel => &self.kernel,
        };
        if !runs.failures.is_empty() {
            return Err(format!("{} of {} rounds failed: {}", runs.failures.len(), runs.attempted, runs.failures[0]));
        }
        if runs.samples.is_empty() {
            return Err("not measured".into());
        }
        let mut v = runs.samples.clone();
        v.sort_by(f64::total_cmp);
        let q = match self.stat {
            Stat::Median => 0.5,
            Stat::Quantile(q) => q,
        };
        let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        Ok(v[i])
    }
}

fn mbit(bytes: usize, t: Duration) -> f64 {
    bytes as f64 * 8.0 / t.as_secs_f64() / 1e6
}

/// What a bulk row moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bulk {
    /// The server sends: `GET /bytes/N` from http.
    Down,
    /// The client sends, into discard.
    Up,
    /// Both at once, through echo (checked by hash).
    Echo,
}

struct BulkRow {
    name: String,
    spec: PathSpec,
    bytes: usize,
    kind: Bulk,
    /// Run on `--only wan` and in the whole bench; the others only when named.
    default: bool,
}

/// The bulk rows of issue 16: RTT 40 ms, 100 Mbit/s, queue one BDP, loss or reordering both
/// ways, each direction, with each condition's transfer size (smaller where the kernel itself
/// is slow, so a round stays within tens of seconds). Named only (`--only wan_echo20`): the
/// issue's first measurement, echo of 4 MiB through 20 Mbit/s.
fn bulk_rows() -> Vec<BulkRow> {
    let mut rows = Vec::new();
    let conditions = |rate: u64| {
        let base = PathSpec::wan(RTT, rate);
        [
            ("loss0", base.clone()),
            ("loss0.1", base.clone().with_loss(Loss::Random(0.001))),
            ("loss1", base.clone().with_loss(Loss::Random(0.01))),
            ("loss3", base.clone().with_loss(Loss::Random(0.03))),
            ("loss5", base.clone().with_loss(Loss::Random(0.05))),
            ("reorder2", base.with_reorder(0.02, REORDER_GAP)),
        ]
    };
    for (cond, spec) in conditions(100 * MBIT) {
        let bytes = match cond {
            "loss0" | "reorder2" => 32 << 20,
            "loss0.1" => 16 << 20,
            "loss1" => 4 << 20,
            _ => 2 << 20,
        };
        for (kind, label) in [(Bulk::Down, "down"), (Bulk::Up, "up")] {
            rows.push(BulkRow { name: format!("wan_bulk_{label}_{cond}"), spec: spec.clone(), bytes, kind, default: true });
        }
    }
    for (cond, spec) in conditions(20 * MBIT) {
        if cond != "loss0.1" {
            rows.push(BulkRow { name: format!("wan_echo20_{cond}"), spec, bytes: 4 << 20, kind: Bulk::Echo, default: false });
        }
    }
    rows
}

/// How long a reordered frame is held back: 2 ms, 16 full-size frames at 100 Mbit/s (enough to
/// set off three duplicate ACKs), within the RACK reordering window of a 40 ms path (min_rtt/4).
const REORDER_GAP: Duration = Duration::from_millis(2);

pub fn bench(quick: bool, synx_bin: &Path, synx_args: &[String], only: &[String]) -> anyhow::Result<serde_json::Value> {
    let want = |name: &str| {
        only.is_empty() || only.iter().any(|o| name.starts_with(o.as_str()) || o == "wan")
    };
    let rounds = if quick { 2 } else { 4 };
    let started = Instant::now();
    let rig = Rig::start(synx_bin, synx_args).context("starting the wan rig")?;
    println!("bench wan: synx and the kernel behind one emulated path, {rounds} rounds per side, ABBA");
    let mut rows: Vec<WanRow> = Vec::new();
    let mut calibration = serde_json::Value::Null;
    if want("wan_calib") {
        calibration = calibrate(&rig, quick);
    }
    for row in bulk_rows() {
        let named = only.iter().any(|o| o.len() > "wan_".len() && row.name.starts_with(o.as_str()));
        if !(want(&row.name) && (row.default || named)) {
            continue;
        }
        rig.bed.set_both(row.spec.clone());
        let (bytes, kind) = (row.bytes, row.kind);
        let what = match kind {
            Bulk::Down => "server sends (GET /bytes/N)",
            Bulk::Up => "client sends (into discard)",
            Bulk::Echo => "both at once, through echo",
        };
        println!("bench wan: {}: {} MiB, {what}", row.name, bytes >> 20);
        let transfer = |side: Side| {
            let addr = rig.addr(side, match kind { Bulk::Down => HTTP, Bulk::Up => DISCARD, Bulk::Echo => ECHO });
            let timeout = Some(Duration::from_secs(300));
            match kind {
                Bulk::Down => probe::download(&rig.bed.client, addr, bytes, timeout),
                Bulk::Up => probe::upload(&rig.bed.client, addr, bytes, timeout),
                Bulk::Echo => probe::echo(&rig.bed.client, addr, bytes, 1, timeout),
            }
        };
        // Warm-up: one round per side, not counted.
        for side in [Side::Synx, Side::Kernel] {
            let _ = round(&rig, side, || transfer(side));
        }
        let mut runs = [SideRuns::default(), SideRuns::default()];
        for side in abba(rounds) {
            let (r, path) = round(&rig, side, || transfer(side));
            let runs = &mut runs[side as usize];
            runs.attempted += 1;
            runs.paths.push(path.json());
            match r {
                Ok(t) => runs.samples.push(mbit(bytes, t)),
                Err(e) => runs.failures.push(format!("{e:#}")),
            }
        }
        let [synx, kernel] = runs.map(Arc::new);
        let path = match (row.spec.rate_bps, row.spec.loss, row.spec.reorder) {
            (Some(r), Loss::Random(p), _) => format!("{} Mbit/s, {}% loss both ways", r / MBIT, p * 100.0),
            (Some(r), _, Some(o)) => format!("{} Mbit/s, {}% reordered by {} ms", r / MBIT, o.probability * 100.0, o.gap.as_millis()),
            (Some(r), ..) => format!("{} Mbit/s", r / MBIT),
            _ => String::new(),
        };
        rows.push(WanRow {
            name: row.name,
            unit: "Mbit/s",
            higher_is_better: true,
            note: format!("{} MiB, {what}; RTT 40 ms, {path}; goodput from connect to the last byte", bytes >> 20),
            stat: Stat::Median,
            synx,
            kernel,
        });
    }
    for (size, label) in [(10_000usize, "10k"), (100_000, "100k"), (1_000_000, "1m")] {
        let name = format!("wan_short_{label}");
        if !want(&name) {
            continue;
        }
        rig.bed.set_both(PathSpec::wan(RTT, 100 * MBIT).with_loss(Loss::Random(0.01)));
        println!("bench wan: {name}: {size}-byte responses on fresh connections");
        rows.extend(short_flows(&rig, &name, size, if quick { 60 } else { 200 }));
    }
    if want("wan_fair") {
        rig.bed.set_both(PathSpec::wan(RTT, 100 * MBIT));
        println!("bench wan: wan_fair: 8 synx and 8 kernel flows through one bottleneck");
        rows.extend(fairness(&rig, rounds, if quick { 15 } else { 30 }));
    }
    print_rows(&rows);
    println!("bench wan: took {:.0} s", started.elapsed().as_secs_f64());
    Ok(json!({
        "rig": {
            "path": "client ns -> middle ns (testbed::path emulator, AF_PACKET, TSO/GSO super-frames segmented to MTU) -> server ns; synx and the kernel behind the same bottleneck",
            "rtt_ms": RTT.as_millis(),
            "bottleneck_mbit": 100,
            "queue_bytes": testbed::path::bdp_bytes(RTT, 100 * MBIT),
            "reorder_gap_ms": REORDER_GAP.as_millis(),
            "synx_args": synx_args,
            "sysctls": rig.sysctls(),
            "offloads": rig.bed.offloads().into_iter().map(|(k, v)| (k, json!(v))).collect::<serde_json::Map<_, _>>(),
            "tcp_metrics": "flushed before every round on the client and the kernel server",
        },
        "calibration": calibration,
        "rows": rows.iter().map(|r| {
            let v = |s| match r.value(s) { Ok(v) => json!(v), Err(e) => json!({ "failed": e }) };
            let ratio = match (r.value(Side::Synx), r.value(Side::Kernel)) {
                (Ok(s), Ok(k)) if k != 0.0 => json!(s / k),
                _ => serde_json::Value::Null,
            };
            json!({
                "name": r.name, "unit": r.unit, "higher_is_better": r.higher_is_better, "note": r.note,
                "synx": v(Side::Synx), "kernel": v(Side::Kernel), "ratio": ratio,
                "stat": format!("{:?}", r.stat),
                "synx_runs": r.synx.json(), "kernel_runs": r.kernel.json(),
            })
        }).collect::<Vec<_>>(),
        "seconds": started.elapsed().as_secs_f64(),
    }))
}

/// Completion times (ms, handshake included) of `n` responses of `size` bytes per side, each
/// on a fresh connection, 4 at a time; blocks of n/4 alternate ABBA after a warm-up block per
/// side. Rows: p50 and p99.
fn short_flows(rig: &Rig, name: &str, size: usize, n: usize) -> Vec<WanRow> {
    let block = |side: Side| {
        let addr = rig.addr(side, HTTP);
        let left = Arc::new(AtomicU64::new((n / 4) as u64));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let left = left.clone();
                rig.bed.client.spawn(move || -> anyhow::Result<Vec<f64>> {
                    let mut out = Vec::new();
                    while left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1)).is_ok() {
                        let t = Instant::now();
                        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(30))?;
                        s.set_read_timeout(Some(Duration::from_secs(60)))?;
                        s.write_all(format!("GET /bytes/{size} HTTP/1.1\r\nHost: wan\r\nConnection: close\r\n\r\n").as_bytes())?;
                        let mut got = Vec::with_capacity(size + 256);
                        s.read_to_end(&mut got)?;
                        let head = got.windows(4).position(|w| w == b"\r\n\r\n").context("no response head")? + 4;
                        anyhow::ensure!(got.len() - head == size, "body of {} bytes, asked for {size}", got.len() - head);
                        out.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                    Ok(out)
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in threads {
            all.extend(t.join().map_err(|_| anyhow::anyhow!("client thread panicked"))???);
        }
        Ok(all)
    };
    for side in [Side::Synx, Side::Kernel] {
        let _ = round(rig, side, || block(side));
    }
    let mut runs = [SideRuns::default(), SideRuns::default()];
    for side in abba(4) {
        let (r, path) = round(rig, side, || block(side));
        let runs = &mut runs[side as usize];
        runs.attempted += 1;
        runs.paths.push(path.json());
        match r {
            Ok(v) => runs.samples.extend(v),
            Err(e) => runs.failures.push(format!("{e:#}")),
        }
    }
    let [synx, kernel] = runs.map(Arc::new);
    let note = format!("{size}-byte responses, fresh connection each, handshake included; RTT 40 ms, 100 Mbit/s, 1% loss both ways");
    [("p50", 0.5), ("p99", 0.99)]
        .into_iter()
        .map(|(q, v)| WanRow {
            name: format!("{name}_{q}"),
            unit: "ms",
            higher_is_better: false,
            note: note.clone(),
            stat: Stat::Quantile(v),
            synx: synx.clone(),
            kernel: kernel.clone(),
        })
        .collect()
}

/// 8 synx and 8 kernel downloads at once through the bottleneck for `secs`; bytes counted over
/// the last two thirds (after slow start). Rows: each side's share of the bottleneck, and Jain's
/// fairness index over the 16 flows, against 16 kernel flows alone as the reference (rounds of
/// the two kinds alternate).
fn fairness(rig: &Rig, rounds: usize, secs: u64) -> Vec<WanRow> {
    let mut share = [SideRuns::default(), SideRuns::default()];
    let mut jain = [SideRuns::default(), SideRuns::default()];
    for i in 0..rounds * 2 {
        let mixed = i % 2 == 0;
        let sides: Vec<Side> = if mixed { [Side::Synx, Side::Kernel].repeat(8) } else { vec![Side::Kernel; 16] };
        let (r, path) = round(rig, sides[0], || shared_bottleneck(rig, &sides, secs));
        let slot = if mixed { 0 } else { 1 };
        if mixed {
            for s in &mut share {
                s.attempted += 1;
                s.paths.push(path.json());
            }
        }
        jain[slot].attempted += 1;
        jain[slot].paths.push(path.json());
        match r {
            Ok(bytes) => {
                let x: Vec<f64> = bytes.iter().map(|&b| b as f64).collect();
                let total: f64 = x.iter().sum();
                let sq: f64 = x.iter().map(|v| v * v).sum();
                jain[slot].samples.push(if sq > 0.0 { total * total / (x.len() as f64 * sq) } else { 0.0 });
                if mixed {
                    for side in [Side::Synx, Side::Kernel] {
                        let mine: f64 = sides.iter().zip(&x).filter(|(s, _)| **s == side).map(|(_, v)| v).sum();
                        share[side as usize].samples.push(100.0 * mine / total.max(1.0));
                    }
                }
            }
            Err(e) => {
                let e = format!("{e:#}");
                if mixed {
                    for s in &mut share {
                        s.failures.push(e.clone());
                    }
                }
                jain[slot].failures.push(e);
            }
        }
    }
    let [s0, s1] = share.map(Arc::new);
    let [j0, j1] = jain.map(Arc::new);
    vec![
        WanRow {
            name: "wan_fair_share".into(),
            unit: "% of bytes",
            higher_is_better: true,
            note: format!("8 synx + 8 kernel downloads sharing 100 Mbit/s, RTT 40 ms, {secs} s; each side's share (50 is fair)"),
            stat: Stat::Median,
            synx: s0,
            kernel: s1,
        },
        WanRow {
            name: "wan_fair_jain".into(),
            unit: "index",
            higher_is_better: true,
            note: "Jain's index over the 16 flows; synx column: 8 synx + 8 kernel, kernel column: 16 kernel flows alone".into(),
            stat: Stat::Median,
            synx: j0,
            kernel: j1,
        },
    ]
}

/// One download per entry of `sides`, all at once, for `secs`: the bytes each received over
/// the last two thirds of the time.
fn shared_bottleneck(rig: &Rig, sides: &[Side], secs: u64) -> anyhow::Result<Vec<u64>> {
    let stop = Arc::new(AtomicBool::new(false));
    let counters: Vec<Arc<AtomicU64>> = sides.iter().map(|_| Arc::new(AtomicU64::new(0))).collect();
    let threads: Vec<_> = sides
        .iter()
        .zip(&counters)
        .map(|(&side, count)| {
            let (addr, stop, count) = (rig.addr(side, HTTP), stop.clone(), count.clone());
            rig.bed.client.spawn(move || -> anyhow::Result<()> {
                let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                s.write_all(b"GET /bytes/1073741824 HTTP/1.1\r\nHost: wan\r\nConnection: close\r\n\r\n")?;
                let mut buf = vec![0u8; 64 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    let n = s.read(&mut buf)?;
                    anyhow::ensure!(n > 0, "the server closed early");
                    count.fetch_add(n as u64, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs / 3));
    let start: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    std::thread::sleep(Duration::from_secs(secs - secs / 3));
    let end: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("client thread panicked"))???;
    }
    Ok(end.iter().zip(&start).map(|(e, s)| e - s).collect())
}

/// Kernel against kernel through the emulator: what was asked against what was measured, and
/// how fast the emulator can forward at all on this machine.
fn calibrate(rig: &Rig, quick: bool) -> serde_json::Value {
    let k = Side::Kernel;
    let mut out = serde_json::Map::new();
    println!("bench wan: calibration, kernel against kernel");
    rig.bed.set_both(PathSpec::wan(RTT, 100 * MBIT));
    let (r, _) = round(rig, k, || probe::rtts(&rig.bed.client, rig.addr(k, ECHO), 200));
    out.insert("rtt".into(), match r {
        Ok(v) => json!({ "asked_ms": 40, "p50_ms": ms(probe::quantile(&v, 0.5)), "p99_ms": ms(probe::quantile(&v, 0.99)), "max_ms": ms(probe::quantile(&v, 1.0)) }),
        Err(e) => json!({ "failed": format!("{e:#}") }),
    });
    let bytes = 64 << 20;
    let (r, path) = round(rig, k, || probe::upload(&rig.bed.client, rig.addr(k, DISCARD), bytes, None));
    out.insert("rate".into(), match r {
        Ok(t) => json!({
            "asked_mbit": 100, "goodput_mbit": mbit(bytes, t),
            "wire_mbit": path.up.delivered_bytes as f64 * 8.0 / t.as_secs_f64() / 1e6,
            "lateness_p50_us": path.up.lateness_quantile(0.5).as_micros(),
            "lateness_p99_us": path.up.lateness_quantile(0.99).as_micros(),
            "lateness_max_us": path.up.lateness_max.as_micros(),
        }),
        Err(e) => json!({ "failed": format!("{e:#}") }),
    });
    rig.bed.set_both(PathSpec::wan(RTT, 100 * MBIT).with_loss(Loss::Random(0.01)));
    let (r, path) = round(rig, k, || probe::upload(&rig.bed.client, rig.addr(k, DISCARD), 16 << 20, None));
    let lost = |s: &Snapshot| s.lost as f64 / s.impairable.max(1) as f64 * 100.0;
    out.insert("loss".into(), match r {
        Ok(_) => json!({ "asked_pct": 1.0, "up_pct": lost(&path.up), "up_frames": path.up.impairable, "down_pct": lost(&path.down), "down_frames": path.down.impairable }),
        Err(e) => json!({ "failed": format!("{e:#}") }),
    });
    rig.bed.set_both(PathSpec::default());
    let bytes = if quick { 256 << 20 } else { 1 << 30 };
    let (r, path) = round(rig, k, || probe::upload(&rig.bed.client, rig.addr(k, DISCARD), bytes, None));
    out.insert("ceiling".into(), match r {
        Ok(t) => json!({ "goodput_mbit": mbit(bytes, t), "segments": path.up.segments, "super_frames": path.up.super_frames }),
        Err(e) => json!({ "failed": format!("{e:#}") }),
    });
    println!("bench wan: calibration {}", serde_json::Value::Object(out.clone()));
    serde_json::Value::Object(out)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn print_rows(rows: &[WanRow]) {
    println!("\n{:<24} {:>11} {:>11} {:>7}  {:<10} rounds ok (synx, kernel)", "row", "synx", "kernel", "ratio", "unit");
    for r in rows {
        let f = |s| match r.value(s) {
            Ok(v) if v >= 100.0 => format!("{v:.0}"),
            Ok(v) => format!("{v:.3}"),
            Err(_) => "FAILED".into(),
        };
        let ratio = match (r.value(Side::Synx), r.value(Side::Kernel)) {
            (Ok(s), Ok(k)) if k != 0.0 => format!("{:.2}", s / k),
            _ => "-".into(),
        };
        let ok = |x: &SideRuns| format!("{}/{}", x.attempted - x.failures.len(), x.attempted);
        println!("{:<24} {:>11} {:>11} {:>7}  {:<10} {}, {}", r.name, f(Side::Synx), f(Side::Kernel), ratio, r.unit, ok(&r.synx), ok(&r.kernel));
        for side in [Side::Synx, Side::Kernel] {
            if let Err(e) = r.value(side) {
                println!("{:<24}   {}: {e}", "", side.name());
            }
        }
    }
}
