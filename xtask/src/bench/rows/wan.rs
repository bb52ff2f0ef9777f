//! synx and the kernel side by side on emulated wide-area paths (issue 16), through one path
//! emulator (`testbed::path`): RTT 40 ms, a 100 Mbit/s bottleneck with a queue of one
//! bandwidth-delay product, loss or reordering both ways.
//!
//! The rig: a client namespace, the emulator's middle namespace and three server namespaces
//! behind it, all behind the same bottleneck. synx runs on one (native XDP on its veth; the
//! middle's end carries a pass program, as native XDP on veth needs); the kernel's TCP serves
//! the same apps on the others (`testbed::path::KernelApps`: the same bytes as synx's apps),
//! one with CUBIC, the ratios' peer, one with BBR (the download rows only: in an upload the
//! client's CUBIC sends),
//! on a veth with no XDP anywhere, TSO/GSO and checksum offloads on and GRO on its receive
//! side, as a NIC has them; the emulator cuts super-frames to MTU size as the wire would.
//! Linux's defaults otherwise: CUBIC (pinned: this machine's kernel is built with BBR as its
//! default), RACK, SACK, no fq, syncookies 1, ECN only when asked. Cached TCP metrics are
//! flushed before every round on the client and the kernel servers, so no round inherits the
//! ssthresh of the one before; in the bulk rows, whose rounds run several transfers, they
//! save none (tcp_no_metrics_save), so no transfer inherits one either. A round in which the
//! emulator itself failed a frame (a socket or veth drop it did not decide) fails.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::json;
use testbed::{
    Daemon, Netns,
    path::{Dir, KernelApp, KernelApps, Loss, PathBed, PathSpec, PortSnapshot, Snapshot, bdp_bytes, probe, trains},
};

use crate::bench::{
    Collector, Ctx, Outcome, Side,
    peers::pid_alive,
    report::RoundDetail,
    rows::Recorder,
    rig::{DISCARD, ECHO, HTTP, describe_device, sysctls},
    schedule, spec, targets,
};

const RTT: Duration = Duration::from_millis(40);
const MBIT: u64 = 1_000_000;
/// How long a reordered frame is held back: 2 ms, 16 full-size frames at 100 Mbit/s (more
/// than three duplicate ACKs' worth), within RACK's reordering window of a 40 ms path
/// (min_rtt/4).
const REORDER_GAP: Duration = Duration::from_millis(2);
/// The most TCP payload a 100 Mbit/s link carries in 1514-byte frames (1448 bytes each, with
/// timestamps).
const PAYLOAD_LIMIT_MBIT: f64 = 100.0 * 1448.0 / 1514.0;

fn peer(side: Side) -> &'static str {
    match side {
        Side::Synx => targets::SYNX,
        Side::Kernel => targets::KERNEL_WAN,
    }
}

fn wan(rate: u64) -> PathSpec {
    PathSpec::wan(RTT, rate)
}

struct WanRig {
    bed: PathBed,
    synx: Daemon,
    _kernel: [KernelApps; 2],
}

/// Who serves a bulk transfer: synx, or the kernel with CUBIC or BBR.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BulkPeer {
    Synx,
    Cubic,
    Bbr,
}

impl BulkPeer {
    fn name(self) -> &'static str {
        match self {
            BulkPeer::Synx => targets::SYNX,
            BulkPeer::Cubic => targets::KERNEL_WAN,
            BulkPeer::Bbr => targets::KERNEL_WAN_BBR,
        }
    }

    fn server(self) -> usize {
        match self {
            BulkPeer::Synx => 0,
            BulkPeer::Cubic => 1,
            BulkPeer::Bbr => 2,
        }
    }

    fn side(self) -> Side {
        if self == BulkPeer::Synx { Side::Synx } else { Side::Kernel }
    }
}

impl WanRig {
    fn start(ctx: &mut Ctx) -> anyhow::Result<Self> {
        // The 1-queue rig's daemons would share the CPUs: stopped for the wan rows.
        ctx.drop_rig();
        crate::bench::interrupt::checkpoint();
        let bed = PathBed::builder().both(wan(100 * MBIT)).xdp_server().kernel_server().kernel_server().start()?;
        // The BBR server's listeners take the namespace's default when KernelApps opens them.
        bed.servers[BulkPeer::Bbr.server()].ns.exec("sysctl", &["-qw", "net.ipv4.tcp_congestion_control=bbr"])?;
        bed.enable_gro()?;
        bed.client.exec("sysctl", &["-qw", "net.ipv4.ip_local_port_range=1024 65535"])?;
        let s = &bed.servers[0];
        let listen = [
            format!("--listen={}=echo", s.addr(ECHO)),
            format!("--listen={}=discard", s.addr(DISCARD)),
            format!("--listen={}=http", s.addr(HTTP)),
        ];
        let args: Vec<&str> = listen.iter().chain(&ctx.synx_args).map(String::as_str).collect();
        let synx = Daemon::start(&s.ns, &s.iface, &args).context("starting synx behind the emulated path")?;
        let kernel = |peer: BulkPeer| {
            let k = &bed.servers[peer.server()];
            KernelApps::start(
                &k.ns,
                &[(k.addr(ECHO), KernelApp::Echo), (k.addr(DISCARD), KernelApp::Discard), (k.addr(HTTP), KernelApp::Http)],
            )
        };
        let kernel = [kernel(BulkPeer::Cubic)?, kernel(BulkPeer::Bbr)?];
        let rig = Self { bed, synx, _kernel: kernel };
        rig.describe(ctx);
        Ok(rig)
    }

    fn describe(&self, ctx: &mut Ctx) {
        let b = &self.bed;
        let (s, k, bbr) = (&b.servers[0], &b.servers[1], &b.servers[2]);
        let none = "not threaded";
        ctx.report.meta["rigs"] = {
            let mut rigs = ctx.report.meta["rigs"].as_array().cloned().unwrap_or_default();
            rigs.retain(|r| r["name"] != "wan");
            rigs.push(json!({
                "name": "wan",
                "pairs": {
                    "synx": { "devices": [
                        describe_device(&s.ns, "server end", &s.iface, "synx_xdp (native)", none),
                        describe_device(&b.client, "client end (shared)", &b.client_if, "none", none),
                    ], "sysctls": { "client": sysctls(&b.client) } },
                    "kernel": { "devices": [
                        describe_device(&k.ns, "server end", &k.iface, "none", none),
                    ], "sysctls": { "server": sysctls(&k.ns) } },
                    "kernel-bbr": { "devices": [
                        describe_device(&bbr.ns, "server end", &bbr.iface, "none", none),
                    ], "sysctls": { "server": sysctls(&bbr.ns) } },
                },
                "notes": [format!(
                    "the client and the three servers (synx, kernel CUBIC, kernel BBR) are joined through the path \
                     emulator's middle namespace (testbed::path): RTT {} ms, {} Mbit/s bottleneck shared by the servers, drop-tail queue of {} bytes \
                     (one BDP), loss and reordering as each row says, both ways; TSO/GSO super-frames cut to MTU size there. \
                     TCP metrics flushed before every round (and in the bulk rows not saved at all). No CPU pinning: no CPU is measured in these rows.",
                    RTT.as_millis(), 100, bdp_bytes(RTT, 100 * MBIT)
                )],
            }));
            json!(rigs)
        };
        ctx.describe_peer(
            targets::KERNEL_WAN,
            "the kernel's TCP behind the emulated path (CUBIC pinned, this kernel's build default being BBR; RACK, SACK, \
             ECN only when asked, no fq), serving synx's apps byte for byte (testbed::path::KernelApps: a thread per \
             connection, TCP_NODELAY); its veth has no XDP, TSO/GSO/checksum offloads on, GRO on"
                .to_string(),
        );
        ctx.describe_peer(
            targets::KERNEL_WAN_BBR,
            "as kernel-wan, with BBR (this kernel's default) in its namespace: in the download rows only, beside CUBIC \
             (the ratios stay against CUBIC); Linux paces BBR internally without fq"
                .to_string(),
        );
    }

    /// Both directions' randomness restarted from `seed` on `path`, once the last transfer's
    /// closing segments have passed (a round trip and more).
    fn reseed(&self, path: &PathSpec, seed: u64) {
        std::thread::sleep(3 * RTT);
        self.bed.set_both_seeded(path.clone(), seed);
    }

    fn addr(&self, side: Side, port: u16) -> SocketAddr {
        self.bed.servers[Self::server(side)].addr(port)
    }

    /// The bed's server (and the down direction's ingress port) of a side: synx's, or the
    /// kernel's CUBIC server.
    fn server(side: Side) -> usize {
        match side {
            Side::Synx => BulkPeer::Synx.server(),
            Side::Kernel => BulkPeer::Cubic.server(),
        }
    }

    /// With `SYNX_BENCH_CAPTURE=DIR`, a round's frames as the client sees them (headers only),
    /// to `DIR/NNN-SIDE.pcap`: the ACK clock a sender ran on, read afterwards.
    fn capture(&self, side: Side) -> Option<Recorder> {
        static ROUND: AtomicU64 = AtomicU64::new(0);
        // SIGTERM: tcpdump flushes its file and exits.
        Recorder::start("SYNX_BENCH_CAPTURE", &ROUND, side, "pcap", libc::SIGTERM, |file| {
            let mut tcpdump = self.bed.client.command("tcpdump");
            tcpdump.args(["-q", "-n", "-s", "96", "-B", "16384", "-i", &self.bed.client_if, "-w"]).arg(file);
            tcpdump
        })
    }

    /// One round: fresh TCP metrics and an idle path, then `f`, with the path's counters
    /// around it in the detail. The round fails if `f` does, if synx is gone, or if the
    /// emulator failed a frame itself.
    fn round(&self, side: Side, f: impl FnOnce() -> anyhow::Result<Vec<Option<f64>>>) -> Outcome {
        for ns in std::iter::once(&self.bed.client).chain(self.bed.servers[1..].iter().map(|s| &s.ns)) {
            let _ = ns.ip(&["tcp_metrics", "flush", "all"]);
        }
        std::thread::sleep(Duration::from_millis(300));
        let (up0, down0) = (self.bed.stats(Dir::Up), self.bed.stats(Dir::Down));
        let drops0 = self.bed.device_drops().unwrap_or(0);
        let synx0 = if side == Side::Synx { self.synx.stats().ok() } else { None };
        let kernel_ns = &self.bed.servers[BulkPeer::Cubic.server()].ns;
        // On synx's rounds too: in the fairness rows they are mixed, kernel flows beside synx's.
        let kernel0 = kernel_counters(kernel_ns).ok();
        let client0 = kernel_counters(&self.bed.client).ok();
        let capture = self.capture(side);
        let r = f();
        drop(capture);
        let (up, down) = (self.bed.stats(Dir::Up).since(&up0), self.bed.stats(Dir::Down).since(&down0));
        let drops = self.bed.device_drops().unwrap_or(0).saturating_sub(drops0);
        let mut detail = json!({ "path": { "up": path_json(&up), "down": path_json(&down), "veth_drops": drops } });
        // What synx's TCP did in the round (its counters' growth: recoveries, timeouts, undos,
        // cookies), to read a round's figure by.
        if let (Some(before), Ok(after)) = (synx0, self.synx.stats()) {
            detail["synx_stats"] = counters_since(&before, &after);
        }
        // The kernel server's own (its namespace's TCP MIB: losses, probes, timeouts, undos),
        // those that moved, to set beside synx's.
        if let (Some(before), Ok(after)) = (kernel0, kernel_counters(kernel_ns)) {
            detail["kernel_stats"] = counters_moved(&before, &after);
        }
        // The client's, on either side's rounds: the Linux sender of the upload rows (its
        // recoveries, spurious retransmissions and undos say how it read the receiver's ACKs).
        if let (Some(before), Ok(after)) = (client0, kernel_counters(&self.bed.client)) {
            detail["client_stats"] = counters_moved(&before, &after);
        }
        let faults = up.faults() + down.faults();
        let failure = match &r {
            Err(e) => Some(format!("{e:#}")),
            Ok(_) if side == Side::Synx && !pid_alive(self.synx.pid()) => Some("synx exited".into()),
            Ok(_) if faults + drops > 0 => Some(format!("the emulator itself failed {faults} frames and the veths dropped {drops}: round void")),
            Ok(_) => None,
        };
        match (failure, r) {
            (None, Ok(values)) => Outcome { values, failure: None, detail },
            (failure, _) => Outcome { values: vec![], failure, detail },
        }
    }
}

/// The growth of every number in `synx stats --json` from `before` to `after` (one that fell,
/// a gauge, and anything not a number: as it stands after).
fn counters_since(before: &serde_json::Value, after: &serde_json::Value) -> serde_json::Value {
    match (before, after) {
        (serde_json::Value::Object(b), serde_json::Value::Object(a)) => {
            serde_json::Value::Object(a.iter().map(|(k, v)| (k.clone(), b.get(k).map_or(v.clone(), |bv| counters_since(bv, v)))).collect())
        }
        (b, a) => match (b.as_u64(), a.as_u64()) {
            (Some(b), Some(a)) if a >= b => json!(a - b),
            _ => a.clone(),
        },
    }
}

/// The counters of `after` that grew since `before`, by how much.
fn counters_moved(before: &std::collections::BTreeMap<String, u64>, after: &std::collections::BTreeMap<String, u64>) -> serde_json::Value {
    after
        .iter()
        .map(|(k, &v)| (k, v.saturating_sub(before.get(k).copied().unwrap_or(0))))
        .filter(|&(_, d)| d > 0)
        .map(|(k, d)| (k.clone(), json!(d)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// A namespace's TCP counters (`nstat`: /proc/net/snmp and netstat), by name.
fn kernel_counters(ns: &Netns) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
    let out = ns.exec("nstat", &["-asz"])?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (name, v) = (f.next()?, f.next()?.parse().ok()?);
            name.starts_with("Tcp").then(|| (name.to_string(), v))
        })
        .collect())
}

fn path_json(s: &Snapshot) -> serde_json::Value {
    json!({
        "segments": s.segments, "super_frames": s.super_frames, "impairable": s.impairable, "keyed": s.keyed, "lost": s.lost,
        "tail_drops": s.tail_drops, "ce_marked": s.ce_marked, "reordered": s.reordered, "duplicated": s.duplicated, "late_reads": s.late_reads,
        "delivered_bytes": s.delivered_bytes, "faults": s.faults(), "realtime": s.realtime,
        "lateness_p50_us": s.lateness_quantile(0.5).as_micros(), "lateness_p99_us": s.lateness_quantile(0.99).as_micros(),
        "lateness_max_us": s.lateness_max.as_micros(),
    })
}

fn mbit(bytes: usize, t: Duration) -> f64 {
    bytes as f64 * 8.0 / t.as_secs_f64() / 1e6
}

/// Kernel against kernel through the emulator: what it was asked against what it did (the
/// column is the kernel-wan peer's; there is no synx side).
pub fn calibrate(ctx: &mut Ctx) -> anyhow::Result<()> {
    let rig = WanRig::start(ctx)?;
    let k = Side::Kernel;
    let ceiling_bytes = if ctx.plan.quick { 256 << 20 } else { 1 << 30 };
    let mut c = Collector::new(
        "wan_calib",
        vec![
            spec("wan_calib_rtt_p50", "ms", false, "asked 40 ms: TCP ping-pong (1 byte, TCP_NODELAY), median of 200"),
            spec("wan_calib_rate", "Mbit/s", true, format!("asked 100 Mbit/s: receiver's goodput past 2 s of a 64 MiB upload (TCP payload can reach {PAYLOAD_LIMIT_MBIT:.2})")),
            spec("wan_calib_loss_up", "%", false, "asked 1% both ways (no delay, no bottleneck): frames lost client to server, of 64 MiB's"),
            spec("wan_calib_loss_down", "%", false, "asked 1%: frames lost server to client (ACKs)"),
            spec("wan_calib_lateness_p99", "us", false, "frames leaving after their due time, 99th percentile (log2 buckets: upper edge) during the rate round"),
            spec("wan_emulator_ceiling", "Mbit/s", true, format!("no delay, no bottleneck, no loss: the most the emulator forwards on this machine ({} MiB upload)", ceiling_bytes >> 20)),
        ],
    );
    let mut details = vec![];
    for (_, warmup) in schedule(&[k], ctx.plan.rounds, true) {
        let o = rig.round(k, || {
            let (client, server) = (&rig.bed.client, &rig.bed.servers[1]);
            rig.bed.set_both(wan(100 * MBIT));
            let rtts = probe::rtts(client, server.addr(ECHO), 200)?;
            let sink = probe::timed_sink(&server.ns, server.addr(8001))?;
            let up0 = rig.bed.stats(Dir::Up);
            probe::upload(client, server.addr(8001), 64 << 20, Some(Duration::from_secs(120)))?;
            let marks = sink.join().map_err(|_| anyhow::anyhow!("sink panicked"))??;
            let lateness = rig.bed.stats(Dir::Up).since(&up0).lateness_quantile(0.99);
            rig.bed.set_both(PathSpec { loss: Loss::Random(0.01), ..PathSpec::default() });
            let (up0, down0) = (rig.bed.stats(Dir::Up), rig.bed.stats(Dir::Down));
            probe::upload(client, server.addr(DISCARD), 64 << 20, Some(Duration::from_secs(120)))?;
            let (up, down) = (rig.bed.stats(Dir::Up).since(&up0), rig.bed.stats(Dir::Down).since(&down0));
            rig.bed.set_both(PathSpec::default());
            let t = probe::upload(client, server.addr(DISCARD), ceiling_bytes, Some(Duration::from_secs(120)))?;
            let pct = |s: &Snapshot| 100.0 * s.lost as f64 / s.impairable.max(1) as f64;
            Ok(vec![
                Some(probe::quantile(&rtts, 0.5).as_secs_f64() * 1e3),
                probe::goodput_after(&marks, Duration::from_secs(2)),
                Some(pct(&up)),
                Some(pct(&down)),
                Some(lateness.as_micros() as f64),
                Some(mbit(ceiling_bytes, t)),
            ])
        });
        details.push(c.record(peer(k), warmup, o));
    }
    ctx.push(c.finish(), details);
    Ok(())
}

/// What a bulk row moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bulk {
    /// The server sends: `GET /bytes/N` from http.
    Down,
    /// The client sends, into discard.
    Up,
}

/// One bulk cell: its path, and how its rounds run.
struct Cell {
    name: &'static str,
    path: PathSpec,
    /// Bytes per transfer.
    bytes: usize,
    /// Transfers per counted round (a warm-up round runs a quarter of them).
    per_round: usize,
    /// How many of a round's transfers run at once (each synx or CUBIC connection its own
    /// flow; the BBR peer's run one at a time, see `bulk`).
    at_once: usize,
}

/// The bulk cells of issue 16, each direction: no loss, 0.1%, 1%, 3% and 5% both ways, and 2%
/// reordered both ways; each with a transfer size that keeps a CUBIC transfer within seconds
/// at the rate such a loss allows.
///
/// With random loss a transfer's goodput is decided by where its losses fall: one 4 MiB
/// transfer a round at 1% loss gave rounds of 3.41-4.99 Mbit/s for one peer and 3.47-5.28 for
/// the other, wider than any gap between them, and 16 MiB at 0.1% 11-44 Mbit/s. The loss cells
/// therefore run several transfers a round and their figure is the median goodput of all the
/// counted rounds' transfers together (a pooled row; the median, so that one transfer stalled
/// by a run of timeouts moves it by one rank, not by its length). At 1% loss and more, where
/// one CUBIC flow is loss-bound far below the bottleneck (about 4, 2 and 1 Mbit/s at 1, 3 and
/// 5%: a window of a few segments), a round's transfers all run at once, 10 at 1% and 16 at
/// 3 and 5%: together under half the 100 Mbit/s (each round's detail has the path's tail
/// drops), so each is the loss-bound flow it would be alone, in a tenth of the wall time or less.
/// At 0.1% one flow reaches 10-80 Mbit/s and two would share the bottleneck: one at a time,
/// and with common random numbers: before each transfer the path's randomness is seeded anew,
/// transfer i of each peer's j-th round with the same seed (new seeds each sitting), so the
/// peers meet the same losses (since the path draws them per TCP segment, see below, the
/// same bytes are lost on each transmission even after their sending differs). A 16 MiB transfer
/// meets about a dozen losses and the first, which ends slow start, decides much of its
/// goodput (11-44 Mbit/s): with the same draws both peers leave slow start at the same frame,
/// and the comparison no longer waits on hundreds of transfers to average that out. The
/// ratio is the median of the pairs' ratios: the medians of each side can fall on different
/// pairs (goodputs cluster at 11, 17, 28 and 60 Mbit/s), and a pair whose slow starts ended
/// apart (one in 6-9, ratio 1.4-2.7) moves a geometric mean. Three sittings of 6, 6 and 9
/// pairs, down: medians' ratio 1.19, 1.06, 1.36, geometric mean 1.10, 1.03, 1.16, median of
/// the pairs' 1.05, 1.01, 1.05; up: 0.99, 0.94, 0.99; 0.99, 0.98, 1.03; 0.98, 0.99, 0.99.
/// The cells at 1% and more pair their rounds the same way: each round starts from its seed,
/// and since the path draws random loss per TCP segment from its flow, its place in the byte
/// stream and its transmission count (testbed `path::flows`), the k-th connection to start in
/// a round loses the same bytes whichever side it belongs to, however the round's flows
/// interleave.
/// Without loss (and with reordering only) a transfer fills the bottleneck and rounds agree
/// within 1%: one a round.
fn bulk_cells() -> Vec<Cell> {
    let base = wan(100 * MBIT);
    let cell = |name, path, bytes, per_round, at_once| Cell { name, path, bytes, per_round, at_once };
    vec![
        cell("loss0", base.clone(), 32 << 20, 1, 1),
        cell("loss0.1", base.clone().with_loss(Loss::Random(0.001)), 16 << 20, 3, 1),
        cell("loss1", base.clone().with_loss(Loss::Random(0.01)), 4 << 20, 10, 10),
        cell("loss3", base.clone().with_loss(Loss::Random(0.03)), 2 << 20, 16, 16),
        cell("loss5", base.clone().with_loss(Loss::Random(0.05)), 2 << 20, 16, 16),
        cell("reorder2", base.with_reorder(0.02, REORDER_GAP), 32 << 20, 1, 1),
    ]
}

/// The seeds of one sitting's common random numbers: new each sitting, the same for item `i`
/// of each side's round `j`.
#[derive(Clone, Copy)]
struct Sitting(u64);

impl Sitting {
    fn new() -> Self {
        Self(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64))
    }

    fn seed(self, j: u64, i: u64) -> u64 {
        self.0 ^ ((j << 32) | i).wrapping_mul(0xd6e8_feb8_6659_fd93)
    }
}

/// The bulk rows' names, for the targets.
pub fn bulk_row_names() -> Vec<String> {
    bulk_cells().iter().flat_map(|c| ["down", "up"].map(|d| format!("wan_bulk_{d}_{}", c.name))).collect()
}

pub fn bulk(ctx: &mut Ctx) -> anyhow::Result<()> {
    let rig = WanRig::start(ctx)?;
    // A round runs several transfers to one address: none starts from the ssthresh and RTT a
    // closed one left in its namespace's TCP metrics (synx keeps none).
    for ns in std::iter::once(&rig.bed.client).chain(rig.bed.servers[1..].iter().map(|s| &s.ns)) {
        ns.exec("sysctl", &["-qw", "net.ipv4.tcp_no_metrics_save=1"])?;
    }
    let mut rows = vec![];
    let mut details: Vec<RoundDetail> = vec![];
    // The seeds of the common random numbers (see `bulk_cells`): new each sitting.
    let sitting = Sitting::new();
    for cell in bulk_cells() {
        let (path, bytes) = (&cell.path, cell.bytes);
        for kind in [Bulk::Down, Bulk::Up] {
            let (dir, what) = match kind {
                Bulk::Down => ("down", "the server sends (GET /bytes/N)"),
                Bulk::Up => ("up", "the client sends (into discard)"),
            };
            let loss = match (path.loss, path.reorder) {
                (Loss::Random(p), _) => format!("{}% loss both ways", p * 100.0),
                (_, Some(r)) => format!("{}% of frames held back {} ms both ways, no loss", r.probability * 100.0, r.gap.as_millis()),
                _ => "no loss".into(),
            };
            let name = format!("wan_bulk_{dir}_{}", cell.name);
            if !ctx.wants_row("wan_bulk", &name) {
                continue;
            }
            println!("bench: {name}");
            let rounds = ctx.plan.rounds;
            let how = match (cell.per_round, cell.at_once) {
                (1, _) => "one transfer a round, the median of the rounds".to_string(),
                (n, 1) => format!(
                    "median of the {} transfers of {rounds} rounds together ({n} a round, one at a time, the path's randomness seeded anew before each: transfer i of each side's round j with the same seed, new seeds each run); the ratio is the median of the paired transfers' ratios",
                    n * rounds
                ),
                (n, w) => format!(
                    "median of the {} transfers of {rounds} rounds together ({n} a round, {w} at once: each loss-bound far below the bottleneck; BBR's a quarter as many, one at a time; the path's randomness seeded anew before each round, each side's round j with the same seed, so that the k-th connection to start meets the same losses of the same bytes on both sides)",
                    n * rounds
                ),
            };
            let note = format!(
                "{} MiB, {what}, RTT 40 ms, 100 Mbit/s, {loss}; goodput from connect to the last byte, {how}",
                bytes >> 20
            );
            let row = spec(name, "Mbit/s", true, note);
            let row = match (cell.per_round, cell.at_once) {
                (1, _) => row,
                // Paired by common random numbers: the ratio is the median of the pairs' (see
                // `bulk_cells`).
                (_, 1) => row.pooled_paired(),
                _ => row.pooled(0.5),
            };
            let mut c = Collector::new("wan_bulk", vec![row]);
            rig.bed.set_both(path.clone());
            let peers = match kind {
                Bulk::Down => &[BulkPeer::Synx, BulkPeer::Cubic, BulkPeer::Bbr][..],
                Bulk::Up => &[BulkPeer::Synx, BulkPeer::Cubic],
            };
            let mut rounds_run = [0u64; 3];
            for (p, warmup) in schedule(peers, rounds, true) {
                let n = if warmup { cell.per_round.div_ceil(4) } else { cell.per_round };
                // This peer's round j (its warm-up 0): transfer i's seed.
                let j = rounds_run[p.server()];
                rounds_run[p.server()] += 1;
                let seed_of = |i: usize| sitting.seed(j, i as u64 + 1);
                let paired = cell.at_once == 1 && cell.per_round > 1;
                // The cells run at once: the round's flows draw their losses from its seed
                // (the n-th flow to start meets what the other side's n-th met, see
                // `bulk_cells`).
                let at_once_seeded = cell.at_once > 1;
                let mut seeds = vec![];
                let reseed = |i: usize| rig.reseed(path, seed_of(i));
                // BBR is not loss-bound (tens of Mbit/s at 1-5% loss): its transfers would
                // share the bottleneck if run at once, and one at a time a quarter as many
                // keep its rounds short (it is shown beside CUBIC, not a target's peer).
                let (n, at_once) = if p == BulkPeer::Bbr { (n.div_ceil(4), 1) } else { (n, cell.at_once.min(n)) };
                let mut goodputs = vec![];
                let mut o = rig.round(p.side(), || {
                    let server = &rig.bed.servers[p.server()];
                    let addr = server.addr(match kind {
                        Bulk::Down => HTTP,
                        Bulk::Up => DISCARD,
                    });
                    if at_once_seeded {
                        reseed(0);
                        seeds = vec![seed_of(0)];
                    }
                    let times = transfers(&rig.bed.client, kind, addr, bytes, n, at_once, paired.then_some(&reseed))?;
                    if paired {
                        seeds = (0..n).map(seed_of).collect();
                    }
                    goodputs = times.iter().map(|&t| mbit(bytes, t)).collect();
                    let median = probe::quantile(&times, 0.5);
                    Ok(vec![Some(mbit(bytes, median))])
                });
                o.detail["goodput_mbit"] = json!(goodputs);
                o.detail["at_once"] = json!(at_once);
                if paired || at_once_seeded {
                    o.detail["path_seeds"] = json!(seeds);
                }
                details.push(c.record_samples(p.name(), warmup, o, &[goodputs]));
            }
            rows.extend(c.finish());
        }
    }
    ctx.push(rows, details);
    Ok(())
}

/// `n` transfers of `bytes` each, `at_once` at a time (each on its own connection): their
/// times from connect to the last byte; any failure fails them all. `before` (one at a time
/// only) runs before transfer i, untimed.
fn transfers(
    client: &Netns,
    kind: Bulk,
    addr: SocketAddr,
    bytes: usize,
    n: usize,
    at_once: usize,
    before: Option<&(dyn Fn(usize) + Sync)>,
) -> anyhow::Result<Vec<Duration>> {
    anyhow::ensure!(before.is_none() || at_once <= 1, "a hook before each transfer needs them one at a time");
    let left = AtomicU64::new(n as u64);
    let timeout = Some(Duration::from_secs(300));
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..at_once.max(1))
            .map(|_| {
                s.spawn(|| -> anyhow::Result<Vec<Duration>> {
                    let mut out = vec![];
                    while let Ok(v) = left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1)) {
                        if let Some(f) = before {
                            f(n - v as usize);
                        }
                        out.push(match kind {
                            Bulk::Down => probe::download(client, addr, bytes, timeout)?,
                            Bulk::Up => probe::upload(client, addr, bytes, timeout)?,
                        });
                    }
                    Ok(out)
                })
            })
            .collect();
        let mut all = vec![];
        for w in workers {
            all.extend(w.join().map_err(|_| anyhow::anyhow!("transfer thread panicked"))??);
        }
        Ok(all)
    })
}

/// The short-flow sizes: label, response bytes, flows per round (quick, default). A side's p50
/// and p99 are taken over all its counted rounds' flows together (a pooled row): at 1% loss
/// both ways a flow's time is decided by where its few losses fall (a lost SYN or SYN-ACK waits
/// for the client's 1 s SYN retransmission, in 2% of fresh connections; a loss early in a 1 MB
/// response's slow start leaves it at a small window for the rest), so the times spread over a
/// decade: the medians of consecutive runs of 30 1 MB flows of one peer in one round ranged
/// from 662 to 1,512 ms, more than the gap between the peers that 30 a round once showed.
/// Pooled, the p99 of a quick run's 2 x 200 1 MB flows is the 4th slowest of 400. A round of
/// 200 1 MB flows took 63-74 s on the 2-core machine (1.25-1.5 s a flow on average, 4 at a
/// time), the 1 MB rows in all 5.7 minutes of a quick run (warm-ups of 50).
const SHORT: [(&str, usize, usize, usize); 3] = [("10k", 10_000, 200, 200), ("100k", 100_000, 200, 200), ("1m", 1_000_000, 200, 300)];

pub fn short_row_names() -> Vec<String> {
    SHORT.iter().flat_map(|(l, ..)| ["p50", "p99"].map(|q| format!("wan_short_{l}_{q}"))).collect()
}

/// Completion times of HTTP responses on fresh connections at 1% loss both ways, handshake
/// included (connect to the last byte), 4 connections at a time; each side's p50 and p99 over
/// the flows of all its counted rounds (each round's own beside them). A warm-up round runs a
/// quarter of the flows: it is not counted. Each side's round j draws its losses from the same
/// seed (see below).
pub fn short(ctx: &mut Ctx) -> anyhow::Result<()> {
    let rig = WanRig::start(ctx)?;
    let path = wan(100 * MBIT).with_loss(Loss::Random(0.01));
    rig.bed.set_both(path.clone());
    let mut rows = vec![];
    let mut details = vec![];
    // Common random numbers, as in the bulk cells: each side's round j starts from the same
    // seed (new each sitting), so its k-th connection loses the same segments, the handshake's
    // included, whose 1 s retransmission timeout decides the p99 (one sitting without: 100 KB
    // p99 1,220 ms for synx, 654 for the kernel, as one side's 200 flows met a lost SYN or
    // SYN-ACK more than twice and the other's not).
    let sitting = Sitting::new();
    for (label, size, quick_n, n) in SHORT {
        if !ctx.wants_row("wan_short", &format!("wan_short_{label}")) {
            continue;
        }
        let n = if ctx.plan.quick { quick_n } else { n };
        let rounds = ctx.plan.rounds;
        let note = |q: &str| {
            format!(
                "{q} of the {} responses of {size} bytes of {rounds} rounds together ({n} a round; each round's own {q} in the JSON), each on a fresh \
                 connection (handshake included), 4 at a time; RTT 40 ms, 100 Mbit/s, 1% loss both ways",
                n * rounds
            )
        };
        let mut c = Collector::new(
            "wan_short",
            vec![
                spec(format!("wan_short_{label}_p50"), "ms", false, note("median")).pooled(0.5),
                spec(format!("wan_short_{label}_p99"), "ms", false, note("99th percentile")).pooled(0.99),
            ],
        );
        println!("bench: wan_short_{label}");
        let mut rounds_run = [0u64; 2];
        for (side, warmup) in schedule(&[Side::Synx, Side::Kernel], rounds, true) {
            let j = &mut rounds_run[usize::from(side == Side::Kernel)];
            let seed = sitting.seed(*j, size as u64);
            *j += 1;
            rig.reseed(&path, seed);
            let mut times = vec![];
            let o = rig.round(side, || {
                times = responses(&rig.bed.client, rig.addr(side, HTTP), size, if warmup { n.div_ceil(4) } else { n })?;
                Ok(vec![Some(probe::quantile(&times, 0.5).as_secs_f64() * 1e3), Some(probe::quantile(&times, 0.99).as_secs_f64() * 1e3)])
            });
            let mut o = o;
            let ms: Vec<f64> = times.iter().map(|t| t.as_secs_f64() * 1e3).collect();
            o.detail["completion_ms"] = json!(ms);
            o.detail["path_seed"] = json!(seed);
            details.push(c.record_samples(peer(side), warmup, o, &[ms]));
        }
        rows.extend(c.finish());
    }
    ctx.push(rows, details);
    Ok(())
}

/// `n` responses of `size` bytes, each on its own connection, 4 at a time: their completion
/// times; any failure fails them all.
fn responses(client: &Netns, addr: SocketAddr, size: usize, n: usize) -> anyhow::Result<Vec<Duration>> {
    let left = Arc::new(AtomicU64::new(n as u64));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let left = left.clone();
            client.spawn(move || -> anyhow::Result<Vec<Duration>> {
                let mut out = Vec::new();
                while left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1)).is_ok() {
                    let t = Instant::now();
                    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(30))?;
                    s.set_read_timeout(Some(Duration::from_secs(60)))?;
                    s.write_all(format!("GET /bytes/{size} HTTP/1.1\r\nHost: wan\r\nConnection: close\r\n\r\n").as_bytes())?;
                    let mut got = Vec::with_capacity(size + 256);
                    s.read_to_end(&mut got)?;
                    let elapsed = t.elapsed();
                    let head = got.windows(4).position(|w| w == b"\r\n\r\n").context("no response head")? + 4;
                    anyhow::ensure!(got.len() - head == size, "body of {} bytes, asked for {size}", got.len() - head);
                    out.push(elapsed);
                }
                Ok(out)
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.join().map_err(|_| anyhow::anyhow!("client thread panicked"))???);
    }
    Ok(all)
}

/// The jitter of the second fairness path: each frame's one-way delay drawn from 20 ms ± this,
/// in both directions (never reordering), more than a full frame's 121 us at the bottleneck.
const FAIR_JITTER: Duration = Duration::from_micros(500);

/// 8 synx and 8 kernel downloads at once through the one bottleneck (no loss): each side's
/// share of the bytes and Jain's fairness index over the 16 flows; the kernel column of the
/// index is 16 kernel flows alone, in rounds of their own (alternating with the mixed ones).
///
/// Twice: on the emulator's exact path (every delay the same, frames leaving the bottleneck on
/// a fixed clock), then with [`FAIR_JITTER`]. On the exact path a drop-tail queue sorts flows by
/// how soon they answer an ACK: ACK-clocked senders send into the slot each departure frees,
/// and the one whose segment arrives first after it takes it, every time (the phase effects of
/// Floyd and Jacobson, "On Traffic Phase Effects in Packet-Switched Gateways", 1992). synx
/// answers an ACK some microseconds after the kernel does (measured at the emulator: its first
/// segment after an ACK 20-60 us later, the kernel's 20-40), so there its flows find the queue
/// full more often and lose more (see the method text). A path whose delays vary by more than
/// a frame's time at the bottleneck (any real one) has no such order; the second pair of rows
/// is that path.
pub fn fairness(ctx: &mut Ctx) -> anyhow::Result<()> {
    let rig = WanRig::start(ctx)?;
    fairness_on(ctx, &rig, Duration::ZERO, "")?;
    fairness_on(ctx, &rig, FAIR_JITTER, "_jitter")
}

/// One pair of fairness rows (`wan_fair_share{suffix}`, `wan_fair_jain{suffix}`) on the 100
/// Mbit/s path with each one-way delay drawn from 20 ms ± `jitter`.
fn fairness_on(ctx: &mut Ctx, rig: &WanRig, jitter: Duration, suffix: &str) -> anyhow::Result<()> {
    rig.bed.set_both(PathSpec { jitter, ..wan(100 * MBIT) });
    let secs = if ctx.plan.quick { 15 } else { 30 };
    let path = if jitter.is_zero() {
        "100 Mbit/s, RTT 40 ms, no loss, no jitter".to_string()
    } else {
        format!("100 Mbit/s, RTT 40 ms, each one-way delay 20 ms ± {} us (no reordering), no loss", jitter.as_micros())
    };
    let what = format!("8 synx + 8 kernel downloads at once through {path}; bytes over the last {} of {secs} s", secs - secs / 3);
    let name = |n: &str| format!("{n}{suffix}");
    let mut share = Collector::new("wan_fair", vec![spec(name("wan_fair_share"), "% of bytes", true, format!("each side's share (50 is fair): {what}"))]);
    let mut jain = Collector::new(
        "wan_fair",
        vec![spec(name("wan_fair_jain"), "index", true, format!("Jain's fairness index over the 16 flows (1 is fair): {what}; kernel column: 16 kernel flows alone"))],
    );
    let mut details = vec![];
    // Synx: a mixed round; Kernel: a kernel-only round.
    for (kind, warmup) in schedule(&[Side::Synx, Side::Kernel], ctx.plan.rounds, true) {
        let sides: Vec<Side> = match kind {
            Side::Synx => [Side::Synx, Side::Kernel].repeat(8),
            Side::Kernel => vec![Side::Kernel; 16],
        };
        let (mut bytes, mut early) = (vec![], vec![]);
        let mut window = None;
        let mut o = rig.round(kind, || {
            let (e, b, w) = shared_bottleneck(rig, &sides, secs)?;
            (early, bytes, window) = (e, b, Some(w));
            Ok(vec![Some(jain_index(&bytes))])
        });
        // How each server's segments met the bottleneck over the measured window: in what
        // trains, at what backlog, and which the full queue dropped.
        if let Some(w) = &window {
            let present = [Side::Synx, Side::Kernel].into_iter().filter(|s| sides.contains(s));
            o.detail["bottleneck"] = present.map(|side| (peer(side).to_string(), bottleneck_json(&w.ports[WanRig::server(side)]))).collect::<serde_json::Map<_, _>>().into();
        }
        let failure = o.failure.clone();
        let side_share = |side: Side| {
            let total: u64 = bytes.iter().sum();
            let mine: u64 = sides.iter().zip(&bytes).filter(|(s, _)| **s == side).map(|(_, b)| b).sum();
            100.0 * mine as f64 / total.max(1) as f64
        };
        if kind == Side::Synx {
            for side in [Side::Synx, Side::Kernel] {
                let values = if failure.is_none() { vec![Some(side_share(side))] } else { vec![] };
                let o = Outcome { values, failure: failure.clone(), detail: json!({ "flow_bytes": bytes, "flow_sides": sides.iter().map(|&s| peer(s)).collect::<Vec<_>>() }) };
                details.push(share.record(peer(side), warmup, o));
            }
        }
        o.detail["flow_bytes"] = json!(bytes);
        // Before the window: slow start and the first congestion events, not counted.
        o.detail["flow_bytes_before_window"] = json!(early);
        details.push(jain.record(peer(kind), warmup, o));
    }
    let mut rows = share.finish();
    rows.extend(jain.finish());
    ctx.push(rows, details);
    Ok(())
}

/// Jain's fairness index: (sum x)^2 / (n * sum x^2).
fn jain_index(x: &[u64]) -> f64 {
    let sum: f64 = x.iter().map(|&v| v as f64).sum();
    let sq: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
    if sq == 0.0 { 0.0 } else { sum * sum / (x.len() as f64 * sq) }
}

/// One server's data segments at the bottleneck over a window (see testbed::path::trains):
/// how many, in what trains, how many the full queue dropped, the backlog they met.
fn bottleneck_json(p: &PortSnapshot) -> serde_json::Value {
    let (n, drops) = (p.total(), p.total_tail_drops());
    let pct = |a: u64, b: u64| if b == 0 { 0.0 } else { 100.0 * a as f64 / b as f64 };
    let positions: Vec<String> = (0..trains::BUCKETS).map(trains::bucket_label).collect();
    json!({
        "segments": n,
        "tail_drops": drops,
        "tail_drop_pct": pct(drops, n),
        "mean_backlog_bytes": p.backlog_bytes.checked_div(n).unwrap_or(0),
        "train_positions": positions,
        "segments_by_train_position": p.segments,
        "tail_drops_by_train_position": p.tail_drops,
        "tail_drop_pct_by_train_position": (0..trains::BUCKETS).map(|b| pct(p.tail_drops[b], p.segments[b])).collect::<Vec<_>>(),
    })
}

/// One download per entry of `sides`, all at once, for `secs`: the bytes each received in the
/// first third of the time and over the last two thirds (after slow start; the figure), and
/// what the path did over those two thirds (downstream).
fn shared_bottleneck(rig: &WanRig, sides: &[Side], secs: u64) -> anyhow::Result<(Vec<u64>, Vec<u64>, Snapshot)> {
    let stop = Arc::new(AtomicBool::new(false));
    let counters: Vec<Arc<AtomicU64>> = sides.iter().map(|_| Arc::new(AtomicU64::new(0))).collect();
    let flows: Vec<_> = sides
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
    let path0 = rig.bed.stats(Dir::Down);
    std::thread::sleep(Duration::from_secs(secs - secs / 3));
    let end: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let window = rig.bed.stats(Dir::Down).since(&path0);
    stop.store(true, Ordering::Relaxed);
    for f in flows {
        f.join().map_err(|_| anyhow::anyhow!("client thread panicked"))???;
    }
    let counted = end.iter().zip(&start).map(|(e, s)| e - s).collect();
    Ok((start, counted, window))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jain_is_one_when_fair_and_one_over_n_when_one_takes_all() {
        assert!((jain_index(&[5, 5, 5, 5]) - 1.0).abs() < 1e-12);
        assert!((jain_index(&[8, 0, 0, 0]) - 0.25).abs() < 1e-12);
        assert_eq!(bulk_row_names().len(), 12);
        assert_eq!(short_row_names().len(), 6);
    }
}
