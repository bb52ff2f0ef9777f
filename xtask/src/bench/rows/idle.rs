//! Idle connections: what each costs the server in memory, everything counted, and the server
//! CPU they take while keepalive probes fire. Each connection count gets fresh servers (memory
//! growth is the measure): synx with `--max-conns` equal to the count, so the BPF maps sized by
//! it count in full; the kernel peer with as many processes sharing the port (SO_REUSEPORT) as
//! keep each under the open-files limit. Both sides run the same keepalive: idle 10 s, interval
//! 5 s, 10 probes; the CPU window covers several probes per connection, counted as they arrive
//! at the client. A quiet phase on fresh servers at Linux's default keepalive (first probe two
//! hours away) measures what holding the connections costs with nothing to send; with the cost
//! per probe it gives the idle CPU at the keepalive a deployment runs.
//!
//! Memory is measured in the quiet phase. The kernel side's is its processes' RSS growth plus
//! the machine's slab growth, less the client sockets' share of that slab: measured in the
//! synx round, whose server side allocates no slab per connection (no socket: AF_XDP and maps
//! sized at start).

use std::{
    io::{BufRead as _, Read as _},
    net::{Ipv4Addr, SocketAddr},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

use super::{count_suffix, peer};
use crate::bench::{
    Collector, Ctx, Outcome, Rig, RigOptions, Side,
    load::pinned,
    peers::{KernelServer, KernelServerOptions, ThreadPinned},
    rig::{CpuTimes, ECHO, IDLE_NET, slab_active_bytes},
    spec,
};

/// The probing phase's keepalive on both sides: idle 10 s, interval 5 s, 10 probes.
const KEEPALIVE: (u64, u64, u32) = (10, 5, 10);
/// The quiet phase's: Linux's defaults (tcp_keepalive_time 7200 s, intvl 75 s), what an idle
/// connection is probed at in practice, and the seed's 10 probes.
const DEFAULT_KEEPALIVE: (u64, u64, u32) = (7200, 75, 10);

/// Child processes holding idle client connections; killed on drop.
pub struct IdleClients(Vec<Child>);

impl Drop for IdleClients {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Open `n` idle connections to `addr` from `side`'s client namespace, spread over processes
/// (each from its own source address, at most `per_process`; `extra` arguments for the tool);
/// returns once all hold theirs.
pub fn open_clients(rig: &Rig, side: Side, addr: SocketAddr, n: usize, per_process: usize, extra: &[&str]) -> anyhow::Result<IdleClients> {
    let net = rig.net(side);
    let mut clients = IdleClients(Vec::new());
    let per_process = per_process.clamp(1, 60_000);
    for (i, first) in (0..n).step_by(per_process).enumerate() {
        let count = per_process.min(n - first);
        let ip = Ipv4Addr::from(u32::from(IDLE_NET) + 10 + i as u32);
        let _ = net.client.ip(&["addr", "add", &format!("{ip}/32"), "dev", &net.client_if]);
        let child = pinned(&net.client, &rig.cpus.client, rig.tools.to_str().context("tools path")?)
            .args(["idle-clients", "--addr", &addr.to_string(), "--src", &ip.to_string(), "--count", &count.to_string()])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        clients.0.push(child);
    }
    for c in &mut clients.0 {
        let mut line = String::new();
        std::io::BufReader::new(c.stdout.as_mut().context("stdout")?).read_line(&mut line)?;
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

/// Connections the server holds: synx's accepted less closed; the established TCP sockets in
/// the kernel's server namespace (`ss -s`; its peer is all that runs there).
fn held(rig: &Rig, side: Side) -> anyhow::Result<u64> {
    match side {
        Side::Synx => {
            let d = rig.daemon()?;
            Ok(d.counter("tcp_accepted")?.saturating_sub(d.counter("tcp_closed")?))
        }
        Side::Kernel => {
            let out = rig.kernel_net.server.exec("ss", &["-s"])?;
            out.lines()
                .find_map(|l| l.split("estab ").nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
                .with_context(|| format!("no established count in `ss -s`: {out:?}"))
        }
    }
}

/// Wait until the server holds `want` connections (a connect() returns before the server has
/// processed the final ACK); what it holds when `limit` runs out.
fn await_held(rig: &Rig, side: Side, want: u64, limit: Duration) -> anyhow::Result<u64> {
    let deadline = Instant::now() + limit;
    loop {
        let now = held(rig, side)?;
        if now == want || Instant::now() > deadline {
            return Ok(now);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// BPF map memory per connection slot: the kernel's memlock accounting of every map sized by
/// the connection limit (FLOWS4, FLOWS6, PROBE_ANSWERS, and FLOW_FILTER, an array of 64-byte lines, the only
/// one), divided by that limit; and the limit.
pub fn bpf_bytes_per_slot(pid: u32) -> anyhow::Result<(f64, u32)> {
    const BPF_MAP_TYPE_HASH: u32 = 1;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    let maps = testbed::process_bpf_maps(pid);
    let limit = maps
        .iter()
        .filter(|m| m.map_type == BPF_MAP_TYPE_HASH && m.key_size == 12)
        .map(|m| m.max_entries)
        .max()
        .context("the daemon has no FLOWS4 map open")?;
    let sized = |m: &testbed::BpfMapInfo| m.max_entries == limit || (m.map_type == BPF_MAP_TYPE_ARRAY && m.value_size == 64);
    let bytes: u64 = maps.iter().filter(|m| sized(m)).map(|m| m.memlock).sum();
    Ok((bytes as f64 / f64::from(limit), limit))
}

pub fn rss(pids: &[u32]) -> anyhow::Result<f64> {
    pids.iter().map(|&p| testbed::process_rss_bytes(p).map(|b| b as f64).with_context(|| format!("pid {p} is gone"))).sum()
}

pub fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    ctx.drop_rig();
    let plan = ctx.plan.clone();
    let nofile = crate::raise_nofile();
    // Client processes and kernel-side servers each stay under the open-files limit (a hard
    // RLIMIT_NOFILE that root may not raise without CAP_SYS_RESOURCE).
    let per_process = (nofile.saturating_sub(256) as usize).max(1000);
    let window = plan.idle_window_secs;
    for &n in &plan.idle_counts {
        let s = count_suffix(n);
        let _backlog = Backlog::raise(n)?;
        let (idle, interval, _) = KEEPALIVE;
        // The probing phase: keepalive fires all through the window.
        let mut c = Collector::new(
            "idle",
            vec![
                spec(format!("idle_cpu_pct_{s}"), "% of a core", false, format!("server CPU busy time over {window} s of idle, keepalive idle {idle} s, interval {interval} s on both sides")),
                spec(format!("idle_probes_per_conn_{s}"), "probes/conn", true, "segments from the server arriving at the client during the CPU window, per connection: keepalive probes"),
                spec(format!("idle_cpu_us_per_probe_{s}"), "us/probe", false, "server CPU busy time over the window per probe arriving: every busy microsecond charged to the probes (their answers and timers), an upper bound; the detail keeps a per-second least-squares fit, which the machine's other load makes noisy"),
            ],
        );
        let mut client_c = Collector::new("idle", vec![spec(format!("idle_client_slab_per_conn_{s}"), "bytes/conn", false, "the client sockets' slab growth, measured in the quiet synx round (synx's server side adds no slab); subtracted from the kernel's")]);
        let mut details = vec![];
        let mut rig = Rig::start(&options(ctx, format!("idle {s}"), n, KEEPALIVE), &ctx.tools)?;
        let synx = round(&mut rig, Side::Synx, n, per_process, nofile, KEEPALIVE, window, false, None);
        let client_slab = synx.as_ref().ok().map(|r| r.slab_per);
        let synx_per_probe = synx.as_ref().ok().and_then(|r| r.per_probe_s);
        details.push(c.record(peer(Side::Synx), false, probing(synx)));
        let kernel = round(&mut rig, Side::Kernel, n, per_process, nofile, KEEPALIVE, window, false, client_slab);
        let kernel_per_probe = kernel.as_ref().ok().and_then(|r| r.per_probe_s);
        details.push(c.record(peer(Side::Kernel), false, probing(kernel)));
        ctx.keep_rig_description(&rig);
        drop(rig);
        // The quiet phase: fresh servers at Linux's default keepalive, whose first probe is
        // two hours away: what holding the connections costs with nothing to send. With the
        // probing phase's cost per probe it gives what they cost as deployed. Memory is
        // measured here, with no probe or answer in flight and every TCB as idle as it gets.
        let (qidle, qinterval, _) = DEFAULT_KEEPALIVE;
        let mut q = Collector::new(
            "idle",
            vec![
                spec(format!("idle_bytes_per_conn_{s}"), "bytes/conn", false, format!("{n} connections, in the quiet phase; synx: daemon RSS growth plus the BPF maps as allocated (--max-conns {n}); kernel: RSS growth of its processes plus slab growth less the client sockets' share")),
                spec(format!("idle_quiet_cpu_pct_{s}"), "% of a core", false, format!("server CPU busy time over {window} s holding {n} idle connections, keepalive idle {qidle} s, interval {qinterval} s on both sides: no probe due in the window (a segment from the server in it fails the round)")),
                spec(
                    format!("idle_cpu_pct_default_keepalive_{s}"),
                    "% of a core",
                    false,
                    format!("the quiet figure plus {n} connections probed once per {qidle} s (Linux's default tcp_keepalive_time, a peer that answers) at the probing phase's cost per probe: measured, then added up"),
                ),
                spec(format!("idle_floor_cpu_pct_{s}"), "% of a core", false, format!("server CPU busy time over {window} s just before the quiet round's clients connect: its server up, no connection; the machine's own floor, included in the figures above")),
            ],
        );
        let mut rig = Rig::start(&options(ctx, format!("idle {s} quiet"), n, DEFAULT_KEEPALIVE), &ctx.tools)?;
        let synx = round(&mut rig, Side::Synx, n, per_process, nofile, DEFAULT_KEEPALIVE, window, true, None);
        let client_slab = synx.as_ref().ok().map(|r| r.slab_per);
        let slab = match &synx {
            Ok(m) => Outcome { values: vec![Some(m.slab_per)], failure: None, detail: serde_json::Value::Null },
            Err(e) => Outcome::failed(format!("{e:#}")),
        };
        details.push(q.record(peer(Side::Synx), false, quiet(synx, synx_per_probe, n)));
        details.push(client_c.record("client", false, slab));
        let kernel = round(&mut rig, Side::Kernel, n, per_process, nofile, DEFAULT_KEEPALIVE, window, true, client_slab);
        details.push(q.record(peer(Side::Kernel), false, quiet(kernel, kernel_per_probe, n)));
        ctx.keep_rig_description(&rig);
        drop(rig);
        let mut rows = c.finish();
        rows.extend(q.finish());
        rows.extend(client_c.finish());
        ctx.push(rows, details);
    }
    Ok(())
}

/// The rig of one phase of one connection count: fresh servers with this keepalive on both
/// sides, synx's maps sized to the count; each phase's rig is recorded under its own name.
fn options(ctx: &Ctx, name: String, n: usize, (idle, interval, probes): (u64, u64, u32)) -> RigOptions {
    let mut synx_args = vec![
        format!("--max-conns={n}"),
        format!("--keepalive-idle={idle}s"),
        format!("--keepalive-interval={interval}s"),
        format!("--keepalive-probes={probes}"),
    ];
    synx_args.extend(ctx.synx_args.iter().cloned());
    RigOptions {
        name,
        queues: 1,
        cpus: ctx.plan.cpus.clone(),
        synx_args,
        kernel: KernelServerOptions { keepalive: Some((idle, interval, probes)) },
        synx_defer: ctx.synx_defer,
        kernel_defer: ctx.kernel_defer,
    }
}

/// A probing round's outcome (its memory figure stays in the detail).
fn probing(r: anyhow::Result<Measured>) -> Outcome {
    match r {
        Ok(m) => Outcome { values: vec![Some(m.cpu_pct), Some(m.probes as f64 / m.n as f64), m.per_probe_s.map(|c| c * 1e6)], failure: None, detail: m.detail },
        Err(e) => Outcome::failed(format!("{e:#}")),
    }
}

/// A quiet round's outcome: its memory, its CPU, that plus the probes Linux's default keepalive
/// would send at the cost per probe its side showed while probing (none without that cost),
/// and the floor. A segment from the server in the window is something the quiet figure must
/// not hide.
fn quiet(r: anyhow::Result<Measured>, per_probe_s: Option<f64>, n: usize) -> Outcome {
    match r {
        Ok(m) if m.probes > 0 => Outcome { values: Vec::new(), failure: Some(format!("{} segments from the server in the quiet window", m.probes)), detail: m.detail },
        Ok(m) => {
            let default = per_probe_s.map(|c| m.cpu_pct + default_probe_pct(c, n));
            Outcome { values: vec![m.bytes, Some(m.cpu_pct), default, m.floor_pct], failure: None, detail: m.detail }
        }
        Err(e) => Outcome::failed(format!("{e:#}")),
    }
}

/// Percent of a core that `n` connections probed once per Linux's default keepalive idle take
/// at `per_probe_s` busy seconds a probe.
fn default_probe_pct(per_probe_s: f64, n: usize) -> f64 {
    per_probe_s * n as f64 / DEFAULT_KEEPALIVE.0 as f64 * 100.0
}

/// The machine's per-CPU backlog (`net.core.netdev_max_backlog`, one value for every
/// namespace) raised to the connection count for the idle rows, put back on drop. Keepalive
/// timers of connections opened together expire together (one 256 ms bucket of the timer
/// wheel at 10 s, HZ=250), and the kernel peer's probes reach its client through that backlog
/// (veth hands a TSO sender's skbs to netif_rx, steered by RPS), as its clients' answers reach
/// it: at the default 1000 the client dropped all but 1001 of each burst, so the kernel showed
/// 0.40 probes per connection against synx's 1.00 (whose frames come through XDP and NAPI,
/// paced by veth's ring) while sending as many. A client that drops what the server sent
/// measures the client.
struct Backlog(Option<(String, crate::bench::interrupt::Registered)>);

impl Backlog {
    const KEY: &str = "/proc/sys/net/core/netdev_max_backlog";

    fn raise(n: usize) -> anyhow::Result<Self> {
        let old = std::fs::read_to_string(Self::KEY).context("reading netdev_max_backlog")?.trim().to_string();
        if old.parse::<usize>().is_ok_and(|o| o >= n) {
            return Ok(Self(None));
        }
        let undo = crate::bench::interrupt::register(crate::bench::interrupt::Undo::Write { path: Self::KEY, old: old.clone() });
        std::fs::write(Self::KEY, n.to_string()).context("raising netdev_max_backlog")?;
        Ok(Self(Some((old, undo))))
    }
}

impl Drop for Backlog {
    fn drop(&mut self) {
        if let Some((old, _)) = &self.0 {
            let _ = std::fs::write(Self::KEY, old);
        }
    }
}

/// Frames the machine's per-CPU backlogs dropped, summed over CPUs (/proc/net/softnet_stat,
/// second column, hexadecimal): any drop in an idle window is a probe or an answer lost.
fn softnet_drops() -> u64 {
    let text = std::fs::read_to_string("/proc/net/softnet_stat").unwrap_or_default();
    text.lines().filter_map(|l| u64::from_str_radix(l.split_whitespace().nth(1)?, 16).ok()).sum()
}

/// Least squares over the window's seconds, server busy seconds against probes arriving:
/// (busy fraction with no probe, busy seconds per probe). None without two distinct probe
/// counts (nothing to tell the cost from the base).
fn probe_cost(probes: &[u64], busy: &[f64]) -> Option<(f64, f64)> {
    let n = probes.len().min(busy.len()) as f64;
    let mx = probes.iter().map(|&p| p as f64).sum::<f64>() / n;
    let my = busy.iter().sum::<f64>() / n;
    let sxx: f64 = probes.iter().map(|&p| (p as f64 - mx).powi(2)).sum();
    let sxy: f64 = probes.iter().zip(busy).map(|(&p, &b)| (p as f64 - mx) * (b - my)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    Some((my - slope * mx, slope))
}

/// What one side's idle round saw.
struct Measured {
    n: usize,
    /// Bytes per connection, everything counted (the kernel's not known without the client
    /// sockets' slab share).
    bytes: Option<f64>,
    /// Server CPU busy over the window, percent of a core.
    cpu_pct: f64,
    /// Segments from the server arriving at the client in the window.
    probes: u64,
    /// Server busy seconds over the window per probe (none without a probe).
    per_probe_s: Option<f64>,
    /// The machine's slab growth per connection.
    slab_per: f64,
    /// Server CPU busy over a window as long before the clients connected, percent of a core.
    floor_pct: Option<f64>,
    detail: serde_json::Value,
}

/// One side's idle round with `keepalive` (the rig's) on its server.
#[allow(clippy::too_many_arguments)]
fn round(rig: &mut Rig, side: Side, n: usize, per_process: usize, nofile: u64, keepalive: (u64, u64, u32), window: u64, floor: bool, client_slab: Option<f64>) -> anyhow::Result<Measured> {
    let addr = rig.addr(side, ECHO);
    // The per-second sampling below spawns `nft` in the client namespace: on the client CPUs,
    // as the clients, or the quiet window measures the bench (about 10 ms a spawn).
    let _pinned = ThreadPinned::to(&rig.cpus.client)?;
    let mut extra = Vec::new();
    if side == Side::Kernel {
        let per_server = (nofile.saturating_sub(4096) * 2 / 3).max(1000) as usize;
        let cpus = rig.cpus.server.clone();
        for _ in 1..n.div_ceil(per_server) {
            extra.push(KernelServer::start(&rig.kernel_net.server, &rig.tools, &[(addr, "echo")], &cpus, &KernelServerOptions { keepalive: Some(keepalive) })?);
        }
    }
    let pids: Vec<u32> = std::iter::once(rig.server_pid(side)?).chain(extra.iter().map(KernelServer::pid)).collect();
    let base = held(rig, side)?;
    // The floor: the same window with the server up and nothing connected.
    let floor_pct = floor.then(|| {
        let c0 = CpuTimes::now();
        std::thread::sleep(Duration::from_secs(window));
        CpuTimes::now().busy_secs_since(&c0, &rig.cpus.server) / window as f64 * 100.0
    });
    let (rss0, slab0) = (rss(&pids)?, slab_active_bytes()?);
    let opening = Instant::now();
    let clients = open_clients(rig, side, addr, n, per_process, &[])?;
    let settle = Duration::from_secs(10 + n as u64 / 10_000);
    let got = await_held(rig, side, base + n as u64, settle)? - base;
    let open_secs = opening.elapsed().as_secs_f64();
    if got != n as u64 {
        let why = match (side, rig.daemon()) {
            (Side::Synx, Ok(d)) => format!("; synx stats: {}", d.stats().map(|v| v.to_string()).unwrap_or_default()),
            _ => String::new(),
        };
        bail!("the server holds {got} of the {n} connections its clients hold{why}");
    }
    std::thread::sleep(Duration::from_secs(2));
    let (rss1, slab1) = (rss(&pids)?, slab_active_bytes()?);
    let probes0 = rig.client_counter(side, "from_server")?;
    // synx's counters over the window (read outside it): what its probes and their answers
    // cost in frames, wakes and XDP's work.
    let counters0 = super::all_counters(rig, side);
    let drops0 = softnet_drops();
    let profile = super::profile_cpus(rig, side);
    let cpu0 = CpuTimes::now();
    let start = Instant::now();
    let proc0: f64 = pids.iter().filter_map(|&p| testbed::process_cpu_secs(p)).sum();
    // Segments from the server per second of the window: when the probes arrive.
    // Segments from the server and server CPU busy time per second of the window: when the
    // probes arrive, and what each costs (the fit below).
    let (mut timeline, mut busy) = (Vec::new(), Vec::new());
    let (mut last, mut last_cpu) = (probes0, cpu0.clone());
    for s in 1..=window {
        let until = start + Duration::from_secs(s);
        std::thread::sleep(until.saturating_duration_since(Instant::now()));
        let now = rig.client_counter(side, "from_server")?;
        let cpu = CpuTimes::now();
        timeline.push(now - last);
        busy.push(cpu.busy_secs_since(&last_cpu, &rig.cpus.server));
        (last, last_cpu) = (now, cpu);
    }
    let fit = probe_cost(&timeline, &busy);
    let cpu1 = CpuTimes::now();
    drop(profile);
    let drops = softnet_drops() - drops0;
    let proc1: f64 = pids.iter().filter_map(|&p| testbed::process_cpu_secs(p)).sum();
    let probes = rig.client_counter(side, "from_server")? - probes0;
    let counters = super::all_counters_moved(rig, side, counters0);
    for &p in &pids {
        ensure!(super::super::peers::pid_alive(p), "server process {p} is gone");
    }
    let server_cpu = cpu1.busy_secs_since(&cpu0, &rig.cpus.server);
    // The server processes run on the server CPUs only, so those CPUs were busy at least as
    // long as the processes ran (to the 10 ms units of both readings): a figure below that is
    // a measure that failed at this window's resolution, not a cheaper server.
    let own_cpu = proc1 - proc0;
    ensure!(
        server_cpu >= own_cpu - 0.04,
        "the server CPUs' busy time ({server_cpu:.3} s) is below the server processes' own CPU time ({own_cpu:.3} s) over the {window} s window: not measured"
    );
    let cpu_pct = server_cpu / window as f64 * 100.0;
    let rss_per = (rss1 - rss0) / n as f64;
    let slab_per = (slab1 - slab0) / n as f64;
    let (bytes, detail) = match side {
        Side::Synx => {
            ensure!(rss1 > rss0, "the daemon's RSS did not grow with {n} connections (freed heap reused): not measurable");
            let (maps, limit) = bpf_bytes_per_slot(pids[0])?;
            ensure!(limit as usize == n, "the daemon's FLOWS4 holds {limit} entries, not {n} (--max-conns)");
            // What giving free memory back cost the engine (malloc_trim, at most once a second).
            let d = rig.daemon()?;
            let (trims, trim_us) = (d.counter("engine_heap_trims")?, d.counter("engine_heap_trim_time")?);
            let detail = serde_json::json!({
                "rss_per_conn": rss_per,
                "bpf_maps_per_conn": maps,
                "map_limit": limit,
                "slab_per_conn": slab_per,
                "heap_trims": trims,
                "heap_trim_us": trim_us,
            });
            (Some(rss_per + maps), detail)
        }
        // Without the client sockets' share (the synx round failed) the kernel's bytes are not
        // known, but its CPU and probes are: the round keeps them.
        Side::Kernel => (
            client_slab.map(|client| rss_per + slab_per - client),
            serde_json::json!({ "rss_per_conn": rss_per, "slab_per_conn": slab_per, "client_slab_per_conn": client_slab, "processes": pids.len() }),
        ),
    };
    eprintln!("bench: idle {side:?} {n} (keepalive {}/{} s): {detail}", keepalive.0, keepalive.1);
    drop(clients);
    // The clients' resets close every connection.
    let left = await_held(rig, side, base, settle)?;
    let mut detail = detail;
    detail["cpu"] = serde_json::json!({ "server_cpu_s": server_cpu, "per_cpu_busy": cpu1.per_cpu_busy_since(&cpu0), "server_steal_s": cpu1.steal_secs_since(&cpu0, &rig.cpus.server), "server_process_cpu_s": own_cpu, "window_s": window });
    detail["probes_arrived"] = probes.into();
    detail["probes_per_second"] = timeline.into();
    detail["server_busy_per_second"] = busy.into();
    if let Some((base, per_probe)) = fit {
        detail["fit"] = serde_json::json!({ "no_probe_busy_pct": base * 100.0, "busy_us_per_probe": per_probe * 1e6 });
    }
    detail["softnet_drops_in_window"] = drops.into();
    if !counters.is_null() {
        detail["synx_counters"] = counters;
    }
    detail["open_secs"] = open_secs.into();
    detail["left_open_after_reset"] = (left - base.min(left)).into();
    detail["keepalive"] = serde_json::json!({ "idle_s": keepalive.0, "interval_s": keepalive.1, "probes": keepalive.2 });
    let per_probe_s = (probes > 0).then(|| server_cpu / probes as f64);
    if let Some(f) = floor_pct {
        detail["floor_cpu_pct"] = f.into();
    }
    Ok(Measured { n, bytes, cpu_pct, probes, per_probe_s, slab_per, floor_pct, detail })
}

#[cfg(test)]
mod tests {
    use super::{Measured, probe_cost, quiet};

    fn measured(probes: u64) -> anyhow::Result<Measured> {
        Ok(Measured { n: 1_000_000, bytes: Some(400.0), cpu_pct: 0.3, probes, per_probe_s: None, slab_per: 0.0, floor_pct: Some(0.2), detail: serde_json::Value::Null })
    }

    #[test]
    fn the_default_keepalive_figure_adds_the_probes_to_the_quiet_cost() {
        // 1M connections probed once per 7200 s at 7.2 us each: 0.1% of a core on top of 0.3%.
        let o = quiet(measured(0), Some(7.2e-6), 1_000_000);
        assert_eq!(o.failure, None);
        assert_eq!(o.values[..2], [Some(400.0), Some(0.3)]);
        assert!((o.values[2].unwrap() - 0.4).abs() < 1e-9, "{:?}", o.values);
        assert_eq!(o.values[3], Some(0.2));
        // Without the probing phase's cost only the quiet figures are known.
        assert_eq!(quiet(measured(0), None, 1_000_000).values, vec![Some(400.0), Some(0.3), None, Some(0.2)]);
        // A quiet window the server spoke in does not count.
        assert!(quiet(measured(3), Some(7.2e-6), 1_000_000).failure.unwrap().contains("3 segments"));
        assert!(quiet(Err(anyhow::anyhow!("server gone")), Some(1e-6), 10).failure.unwrap().contains("server gone"));
    }

    #[test]
    fn the_fit_separates_the_cost_per_probe_from_the_base() {
        // 1% of a core with no probe, 10 us per probe: seconds with 0, 1000 and 4000 probes.
        let probes = [0, 1000, 0, 4000, 1000, 0];
        let busy: Vec<f64> = probes.iter().map(|&p| 0.01 + p as f64 * 10e-6).collect();
        let (base, per_probe) = probe_cost(&probes, &busy).unwrap();
        assert!((base - 0.01).abs() < 1e-9, "{base}");
        assert!((per_probe - 10e-6).abs() < 1e-12, "{per_probe}");
        // Every second alike: nothing tells the cost from the base.
        assert_eq!(probe_cost(&[500, 500, 500], &[0.1, 0.2, 0.1]), None);
    }
}
