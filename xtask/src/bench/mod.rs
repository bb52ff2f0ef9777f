//! `cargo xtask bench`: synx against the Linux kernel, side by side in one run. Each side has
//! its own veth pair (the kernel's without any XDP program, with its default offloads), server
//! and client pinned to different CPUs, server CPU read per CPU; rounds alternate ABBA after a
//! warm-up; every round is kept, failed ones with their reason. `cargo xtask bench-report`
//! turns the JSON into BENCHMARKS.md.
//!
//! Layout: [`rig`] (namespaces, veth pairs, pinning, offloads), [`peers`] (the kernel peer and
//! the flood peers), [`load`] (generators), [`rows`] (the row groups, one module each, and the
//! registry of them), [`report`] (rounds, sides, rows, JSON), [`targets`], [`doc`]
//! (BENCHMARKS.md), [`meta`] (what makes a run reproducible), [`interrupt`] (a bench stopped by a
//! signal cleans up all the same).

mod doc;
mod interrupt;
mod load;
mod meta;
mod peers;
mod report;
mod rig;
mod rows;
mod targets;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::Context as _;

pub use report::{Collector, Outcome, Report, Row, RowSpec, schedule, spec};
pub use rig::{Cpus, Rig, RigOptions, Side};

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// About 5 minutes: one round per side after the warm-up, shorter rows, 10,000 idle
    /// connections.
    #[arg(long)]
    quick: bool,
    /// Idle rows at 1,000,000 connections too (the default does 100,000).
    #[arg(long)]
    full: bool,
    /// Only these row groups (prefix match), comma-separated; `--list` shows them. A row's
    /// name within a group that runs its rows one by one (wan_bulk, wan_short) runs only those
    /// rows, e.g. `--only wan_bulk_down_loss0,wan_bulk_up_loss0` or `--only wan_short_1m`.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// List the row groups and exit.
    #[arg(long)]
    list: bool,
    /// Write the results as JSON here (rewritten after every group).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also write the BENCHMARKS.md document for this run here.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Extra arguments for `synx run` (repeatable), to compare settings, e.g.
    /// `--synx-arg=--app-threads=worker`.
    #[arg(long, allow_hyphen_values = true)]
    synx_arg: Vec<String>,
    /// NAPI deferral of synx's server veth: `HARD_IRQS,GRO_FLUSH_TIMEOUT_NS` (its
    /// napi_defer_hard_irqs and gro_flush_timeout; 0,0 the kernel's defaults).
    #[arg(long, default_value = "0,0")]
    synx_napi_defer: rig::NapiDefer,
    /// The same for the kernel peer's server veth.
    #[arg(long, default_value = "0,0")]
    kernel_napi_defer: rig::NapiDefer,
    /// CPUs of the server side (server process, its veth's receive work). Default: CPU 0.
    #[arg(long, value_delimiter = ',')]
    server_cpus: Vec<usize>,
    /// Connection counts of the idle group (and the proxy's idle rows). Default: 100000, and
    /// 1000000 with --full (10000 with --quick).
    #[arg(long, value_delimiter = ',')]
    idle_counts: Vec<usize>,
    /// CPUs of the client side (load generators, the client veth's receive work). Default: the
    /// CPUs after the server's.
    #[arg(long, value_delimiter = ',')]
    client_cpus: Vec<usize>,
    /// Bench this `synx` binary instead of the one built from the tree (to compare two builds
    /// in one sitting, e.g. a copy of main's).
    #[arg(long)]
    pub synx_bin: Option<PathBuf>,
    /// Counted rounds per peer after the warm-up (default: 2 with --quick, else 4): more for
    /// rows whose rounds spread widely (the WAN loss cells), the figure being their median.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: Option<u32>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ReportArgs {
    /// A `cargo xtask bench --json` file; repeat to merge runs (e.g. a default run and a
    /// `--full --only idle` one): a row a later file also has is taken from the later one.
    #[arg(long, required = true)]
    json: Vec<PathBuf>,
    /// Where to write the document (default: stdout).
    #[arg(long)]
    out: Option<PathBuf>,
    /// A line the document states under its header (e.g. what else ran on the machine).
    #[arg(long)]
    note: Option<String>,
}

/// How long and how often each row runs.
#[derive(Debug, Clone)]
pub struct Plan {
    pub quick: bool,
    /// Counted rounds per peer (after one warm-up round per peer).
    pub rounds: usize,
    pub warmup_secs: f64,
    pub flood_secs: f64,
    pub conn_secs: f64,
    /// HTTP rows (closed loop with wrk, fixed rate with our generator).
    pub http_secs: u64,
    pub bulk_bytes: usize,
    pub idle_counts: Vec<usize>,
    /// How long idle CPU is watched: several keepalive probes per connection.
    pub idle_window_secs: u64,
    pub cpus: Cpus,
}

impl Plan {
    fn new(a: &BenchArgs) -> anyhow::Result<Self> {
        let cores = rig::cores();
        let server = if a.server_cpus.is_empty() { vec![0] } else { a.server_cpus.clone() };
        let client = if a.client_cpus.is_empty() {
            let rest: Vec<usize> = (0..cores).filter(|c| !server.contains(c)).collect();
            anyhow::ensure!(!rest.is_empty(), "{cores} CPU(s): no CPU left for the clients; the bench needs two");
            rest
        } else {
            a.client_cpus.clone()
        };
        let mut idle_counts = vec![if a.quick { 10_000 } else { 100_000 }];
        if a.full {
            idle_counts.push(1_000_000);
        }
        if !a.idle_counts.is_empty() {
            idle_counts = a.idle_counts.clone();
        }
        Ok(Self {
            quick: a.quick,
            rounds: a.rounds.map_or(if a.quick { 2 } else { 4 }, |r| r as usize),
            warmup_secs: if a.quick { 1.0 } else { 2.0 },
            flood_secs: if a.quick { 3.0 } else { 5.0 },
            conn_secs: if a.quick { 3.0 } else { 5.0 },
            http_secs: if a.quick { 5 } else { 15 },
            bulk_bytes: if a.quick { 256 << 20 } else { 1 << 30 },
            idle_counts,
            idle_window_secs: if a.quick { 20 } else { 30 },
            cpus: Cpus { server, client },
        })
    }
}

/// What a row group works with: the plan, the binaries, the shared rig, and what the run has
/// found so far.
pub struct Ctx {
    pub plan: Plan,
    /// The release-built `synx-bench` (kernel peer, generators).
    pub tools: PathBuf,
    pub synx_args: Vec<String>,
    pub synx_defer: rig::NapiDefer,
    pub kernel_defer: rig::NapiDefer,
    /// `--only`, as given.
    only: Vec<String>,
    rig: Option<Rig>,
    pub report: Report,
    rigs: Vec<serde_json::Value>,
}

impl Ctx {
    /// Whether `--only` asks for the row `name` of `group`: yes unless it names rows of that
    /// group one by one (names longer than the group's and no group's prefix), then those.
    pub fn wants_row(&self, group: &str, name: &str) -> bool {
        let mut named = self
            .only
            .iter()
            .filter(|o| o.starts_with(&format!("{group}_")) && !rows::GROUPS.iter().any(|g| g.name.starts_with(o.as_str())))
            .peekable();
        named.peek().is_none() || named.any(|o| o == name)
    }

    /// The one-queue rig every group shares (started on first use).
    pub fn rig(&mut self) -> anyhow::Result<&mut Rig> {
        if self.rig.is_none() {
            let o = RigOptions {
                name: "1 queue".into(),
                queues: 1,
                cpus: self.plan.cpus.clone(),
                synx_args: self.synx_args.clone(),
                kernel: Default::default(),
                synx_defer: self.synx_defer,
                kernel_defer: self.kernel_defer,
            };
            let rig = Rig::start(&o, &self.tools).context("starting the bench rig")?;
            self.describe_peers(&rig);
            self.rig = Some(rig);
        }
        Ok(self.rig.as_mut().expect("just started"))
    }

    /// Stop the shared rig (a group that needs another one calls this first).
    pub fn drop_rig(&mut self) {
        if let Some(r) = self.rig.take() {
            self.keep_rig_description(&r);
        }
    }

    /// Record a rig's devices, offloads and commands in the report.
    pub fn keep_rig_description(&mut self, r: &Rig) {
        let d = r.describe();
        let name = d["name"].clone();
        self.rigs.retain(|x| x["name"] != name);
        self.rigs.push(d);
        self.report.meta["rigs"] = serde_json::json!(self.rigs);
    }

    /// State a peer's configuration in the report.
    pub fn describe_peer(&mut self, peer: &str, summary: String) {
        if !self.report.meta["peers"].is_object() {
            self.report.meta["peers"] = serde_json::json!({});
        }
        self.report.meta["peers"][peer] = serde_json::json!({ "summary": summary });
    }

    fn describe_peers(&mut self, rig: &Rig) {
        let c = self.plan.cpus.clone();
        self.describe_peer(
            targets::SYNX,
            format!(
                "`{}` (defaults otherwise: apps on the engine threads, echo/discard/http in turns), every thread pinned to CPU {}; \
                 its veth pair has synx's XDP program (native) on the server end, answering by redirect to that veth \
                 (`--xdp-tx auto` on a veth: Linux 6.18's veth wakes a peer without a program for a redirect, not for XDP_TX), \
                 and no program on the client end but GRO on, so the server veth keeps TSO and synx's segmentation offload \
                 (`--gso auto`, its default) is in use (`bulk_tx_gso` runs synx once with `--gso auto` and once with `--gso off`); \
                 during the flood groups both sides' client ends run the bench's sink (counts and drops frames to the flood's sources), \
                 which turns the server veth's TSO off; \
                 both ends with a pfifo_fast qdisc (a full ring then stops the queue, as a NIC's does, instead of dropping); \
                 the server veth's NAPI runs threaded on CPU {} at SCHED_FIFO as the rig sets it{}, the client's on CPU {}; \
                 the server veth's napi_defer_hard_irqs {} and gro_flush_timeout {} ns{}",
                rig.synx_command.join(" "),
                Cpus::list(&c.server),
                Cpus::list(&c.server),
                if rig::synx_batches_napi(&rig.synx_command) {
                    ", which synx (--napi-threads batch) sets to SCHED_BATCH: a NAPI thread woken by frames then runs when \
                     the engine thread sleeps or its slice ends instead of preempting it in the middle of a batch"
                } else {
                    ""
                },
                Cpus::list(&c.client),
                self.synx_defer.hard_irqs,
                self.synx_defer.gro_flush_timeout_ns,
                if self.synx_defer == rig::NapiDefer::default() && !rig.synx_command.iter().any(|a| a.starts_with("--coalesce")) {
                    " as the rig sets them, which synx's adaptive coalescing (--coalesce auto, its default) raises to 2 and 20000 \
                     while an engine thread hears from 8 or more clients within 5 ms and puts back after 100 ms of at most 2 \
                     (the synx counters of a conn_rate, http or bulk round say how often it did: coalescing_turned_on)"
                } else {
                    ""
                }
            ),
        );
        self.describe_peer(
            targets::KERNEL,
            format!(
                "`{}`: the same apps (same HTTP parser and bytes) over kernel TCP; one thread per server CPU pinned there, each with \
                 its own epoll and SO_REUSEPORT listener per port, edge-triggered, an idle connection holding its socket and a \
                 16-byte slot; TCP_NODELAY (and keepalive, where a row sets it) inherited from the listener; the last response \
                 before a close sent with MSG_MORE, so the close's FIN leaves in the same segment (as synx sends them); backlog 65535. \
                 Its veth pair has no XDP program and the default offloads (TSO, GSO, checksums on), GRO on both ends \
                 (the client's as on synx's pair), both ends with a pfifo_fast qdisc as on synx's pair; \
                 client segments reach the server CPU through RPS, flood frames through the server veth's NAPI, threaded at SCHED_FIFO on CPU {}, \
                 the client veth's NAPI on CPU {}; the server veth's napi_defer_hard_irqs {} and gro_flush_timeout {} ns \
                 (they act on its NAPI only, which carries the flood's frames, not the clients' TCP). \
                 Sysctls default, but tcp_syncookies=2 in the SYN-flood rows only and somaxconn/tcp_max_syn_backlog 65535",
                rig.kernel.as_ref().map(|k| k.command.join(" ")).unwrap_or_default(),
                Cpus::list(&c.server),
                Cpus::list(&c.client),
                self.kernel_defer.hard_irqs,
                self.kernel_defer.gro_flush_timeout_ns
            ),
        );
        self.keep_rig_description(rig);
    }

    fn push(&mut self, rows: Vec<Row>, details: Vec<report::RoundDetail>) {
        self.report.rows.extend(rows);
        self.report.rounds.extend(details);
    }
}

impl BenchArgs {
    /// `--list`: print the row groups instead of running them.
    pub fn list(&self) -> bool {
        if self.list {
            for g in rows::GROUPS {
                println!("{:<16} {}", g.name, g.about);
            }
        }
        self.list
    }
}

pub fn bench(args: BenchArgs, synx_bin: &Path) -> anyhow::Result<()> {
    // Before any thread starts: they inherit the blocked signals.
    interrupt::install()?;
    let r = run(args, synx_bin);
    // Interrupted, the signal path exits (with 128 + the signal), not this thread.
    interrupt::checkpoint();
    r
}

/// The arguments of every `synx run` of the bench: `--napi-threads=batch` (the NAPI thread
/// of synx's server veth, which the rig runs at SCHED_FIFO like a NIC's softirq, then does not
/// preempt the engine on each wakeup), unless `--synx-arg` says otherwise, then `--synx-arg`'s.
fn synx_args(extra: &[String]) -> Vec<String> {
    let given = rig::napi_threads_arg(extra).is_some();
    (!given).then(|| "--napi-threads=batch".to_string()).into_iter().chain(extra.iter().cloned()).collect()
}

fn run(args: BenchArgs, synx_bin: &Path) -> anyhow::Result<()> {
    let start = Instant::now();
    let plan = Plan::new(&args)?;
    let tools = build_tools()?;
    // The test bed starts `synx` from $SYNX_BIN.
    // SAFETY: no other thread runs yet.
    unsafe { std::env::set_var("SYNX_BIN", synx_bin) };
    crate::raise_nofile();
    let command = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let meta = meta::collect(&format!("cargo xtask {command}"), "release");
    let want = |name: &str| {
        args.only.is_empty() || args.only.iter().any(|o| name.starts_with(o.as_str()) || o.starts_with(&format!("{name}_")))
    };
    let mut ctx = Ctx {
        plan,
        tools,
        synx_args: synx_args(&args.synx_arg),
        synx_defer: args.synx_napi_defer,
        kernel_defer: args.kernel_napi_defer,
        only: args.only.clone(),
        rig: None,
        report: Report { meta, rows: vec![], rounds: vec![], group_failures: BTreeMap::new(), secs: 0.0 },
        rigs: vec![],
    };
    ctx.report.meta["plan"] = serde_json::json!(format!("{:?}", ctx.plan));
    if args.synx_bin.is_some() {
        // Not necessarily built from the commit recorded above.
        ctx.report.meta["synx_bin"] = serde_json::json!(synx_bin.display().to_string());
    }
    for g in rows::GROUPS.iter().filter(|g| want(g.name)) {
        interrupt::checkpoint();
        println!("bench: {} ({})", g.name, g.about);
        let before = ctx.report.rows.len();
        if let Err(e) = (g.run)(&mut ctx) {
            println!("bench: {}: {e:#}", g.name);
            ctx.report.group_failures.insert(g.name.into(), format!("{e:#}"));
        }
        print_rows(&ctx.report.rows[before..]);
        ctx.report.secs = start.elapsed().as_secs_f64();
        if let Some(path) = &args.json {
            write_json(&ctx.report, path)?;
        }
    }
    ctx.drop_rig();
    interrupt::checkpoint();
    ctx.report.secs = start.elapsed().as_secs_f64();
    println!("\nbench: targets");
    for v in targets::evaluate(&ctx.report.rows) {
        println!("  {:?}: {} -- {}", v.met, v.target, v.figure);
    }
    if let Some(path) = &args.json {
        write_json(&ctx.report, path)?;
        println!("bench: results written to {}", path.display());
    }
    if let Some(path) = &args.markdown {
        std::fs::write(path, doc::markdown(&ctx.report))?;
        println!("bench: document written to {}", path.display());
    }
    println!("bench: took {:.0} s", ctx.report.secs);
    Ok(())
}

/// `cargo xtask bench-report`: BENCHMARKS.md from a run's JSON.
pub fn bench_report(args: ReportArgs) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    for path in &args.json {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        runs.push(serde_json::from_str::<Report>(&text).with_context(|| format!("parsing {}", path.display()))?);
    }
    let mut report = Report::merge(runs);
    if let Some(note) = args.note {
        report.meta["note"] = note.into();
    }
    let md = doc::markdown(&report);
    match &args.out {
        Some(path) => std::fs::write(path, md)?,
        None => print!("{md}"),
    }
    Ok(())
}

fn write_json(r: &Report, path: &Path) -> anyhow::Result<()> {
    // Not the rows of a round a signal cut short.
    interrupt::checkpoint();
    std::fs::write(path, serde_json::to_string_pretty(r)?).with_context(|| format!("writing {}", path.display()))
}

fn print_rows(rows: &[Row]) {
    for r in rows {
        let cells: Vec<String> = r.sides.iter().map(|s| format!("{} {}", s.peer, report::cell(Some(s)))).collect();
        println!("  {:<34} {}  [{}]", r.name, cells.join(" | "), r.unit);
        for s in &r.sides {
            if s.failed() > 0 {
                println!("  {:<34}   {} failed: {}", "", s.peer, s.failure_summary());
            }
        }
    }
}

/// Build `synx-bench` in release (the kernel peer and the load must not be debug builds).
fn build_tools() -> anyhow::Result<PathBuf> {
    let mut c = crate::cargo();
    c.args(["build", "--release", "--package", "synx-bench"]);
    crate::run(c)?;
    Ok(crate::target_dir().join("release").join("synx-bench"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn synx_runs_with_napi_threads_batch_unless_told_otherwise() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(super::synx_args(&[]), v(&["--napi-threads=batch"]));
        assert_eq!(super::synx_args(&v(&["--gso=off"])), v(&["--napi-threads=batch", "--gso=off"]));
        // Given once only: synx refuses an option twice.
        assert_eq!(super::synx_args(&v(&["--napi-threads=keep"])), v(&["--napi-threads=keep"]));
        assert_eq!(super::synx_args(&v(&["--napi-threads", "keep"])), v(&["--napi-threads", "keep"]));
    }
}
