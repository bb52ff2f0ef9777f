//! `synx run`: an [`Engine`] serving the configured listeners with the built-in apps on tokio,
//! answering the control socket, reloading its configuration on SIGHUP (or `synx reload`), and
//! shutting down gracefully on SIGINT/SIGTERM.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    apps,
    config::{self, AppThreads, FileConfig, FlagConfig, ListenSpec, RunConfig},
    control::{self, Reply, Request, Responder},
    engine::{Engine, EngineOptions, Handover, Predecessor},
    metrics::Exporter,
};

/// How long a successor may take between asking to take over and asking for the connections:
/// after that the daemon takes its attachment back and serves on (the successor died).
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(30);

/// The running daemon as the control socket and SIGHUP see it.
struct Daemon {
    engine: Arc<Engine>,
    /// The flags it was started with (they win over the file at every reload) and the file.
    flags: FlagConfig,
    config_file: Option<PathBuf>,
    /// The configuration in force.
    current: Mutex<RunConfig>,
    /// Counts takeover requests: a watchdog gives the attachment back only if no later request
    /// came.
    takeover_requests: Arc<AtomicU64>,
    /// When the connections were handed over, what the log says; the daemon then exits.
    handed_over: Mutex<Option<String>>,
    handed: tokio::sync::Notify,
}

impl Responder for Daemon {
    fn respond(&self, req: Request) -> Reply {
        if req == Request::Release {
            return self.release();
        }
        let reply = match req {
            Request::Stats => {
                let mut map = serde_json::Map::new();
                match self.engine.stats() {
                    Ok(all) => {
                        for (k, v) in all {
                            map.insert(k.to_string(), v.into());
                        }
                    }
                    Err(e) => {
                        map.insert("error".into(), e.to_string().into());
                    }
                }
                serde_json::Value::Object(map)
            }
            Request::Conns => serde_json::to_value(self.engine.conns()).unwrap_or_default(),
            Request::Drain | Request::Undrain => match self.engine.drain(req == Request::Drain) {
                Ok(()) => serde_json::json!({
                    "draining": self.engine.draining(),
                    "connections_open": self.engine.open_connections()
                }),
                Err(e) => serde_json::json!({ "error": format!("{e:#}") }),
            },
            Request::Reload => match self.reload() {
                Ok(done) => serde_json::json!({ "reloaded": done }),
                Err(e) => serde_json::json!({ "error": format!("{e:#}") }),
            },
            Request::Takeover { dir } => match self.engine.pin_for_takeover(&dir) {
                Ok(()) => {
                    self.watch_takeover();
                    serde_json::json!({
                        "pid": std::process::id(),
                        "queues": self.engine.queues(),
                        "max_conns": self.engine.options().max_conns,
                        "grace_ms": self.grace().as_millis() as u64,
                    })
                }
                Err(e) => serde_json::json!({ "error": format!("{e:#}") }),
            },
            Request::Abort => match self.engine.abort_takeover() {
                Ok(()) => {
                    let _ = writeln!(std::io::stdout(), "takeover aborted by the successor: serving on");
                    serde_json::json!({ "aborted": true })
                }
                Err(e) => serde_json::json!({ "error": format!("{e:#}") }),
            },
            Request::Release => unreachable!("answered above"),
        };
        reply.into()
    }

    fn replied(&self, req: &Request) {
        if *req == Request::Release && self.handed_over.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
            self.handed.notify_one();
        }
    }
}

/// What the daemon answers a [`Request::Release`]: the connections, or why not.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum Released {
    Handover(Handover),
    Error(String),
}

impl Daemon {
    /// Hand every connection over; the daemon exits once the reply is written.
    fn release(&self) -> Reply {
        let started = Instant::now();
        let mut sockets = Vec::new();
        let released = match self.engine.hand_over(self.grace()) {
            Ok((handover, fds)) => {
                sockets = fds;
                let moved: usize = handover.queues.iter().map(Vec::len).sum();
                *self.handed_over.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!(
                    "handed over: {moved} connections to the successor in {} ms ({} with their backend socket; {} reset, busy past the {} s grace); exiting",
                    started.elapsed().as_millis(),
                    sockets.len(),
                    handover.reset,
                    self.grace().as_secs()
                ));
                Released::Handover(handover)
            }
            Err(e) => Released::Error(format!("{e:#}")),
        };
        // Written straight to text: at 100k connections a tree of JSON values first would cost
        // hundreds of MB.
        match serde_json::to_string(&released) {
            Ok(text) => Reply::Raw(text, sockets),
            Err(e) => serde_json::json!({ "error": format!("writing the handover: {e}") }).into(),
        }
    }
}

/// The daemon a successor takes over from, through its control socket.
struct RunningDaemon<'a> {
    socket: &'a Path,
    /// How long it may take to hand over (its grace, and time to send the connections).
    release_timeout: Duration,
}

impl Predecessor for RunningDaemon<'_> {
    fn release(&mut self) -> anyhow::Result<(Handover, Vec<std::os::fd::OwnedFd>)> {
        let (text, fds) = control::request_with_fds(self.socket, Request::Release, self.release_timeout)?;
        match serde_json::from_str(&text)? {
            Released::Handover(h) => Ok((h, fds)),
            Released::Error(e) => anyhow::bail!("{e}"),
        }
    }

    fn abort(&mut self, why: &str) {
        tracing::debug!("takeover aborted: {why}");
        if let Err(e) = control::request(self.socket, Request::Abort) {
            eprintln!("synx: the running synx did not take its attachment back: {e}");
        }
    }
}

/// Whether process `pid` has exited (a zombie its parent has not reaped yet has).
fn exited(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may hold any byte.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

/// Take over from the daemon on `socket` (see [`Engine::take_over`]), with the handover pins in
/// a fresh directory on the bpffs at `bpffs`; returns once that daemon has exited, with the
/// line the log gets.
fn take_over(options: EngineOptions, bpffs: &Path, socket: &Path) -> anyhow::Result<(Engine, String)> {
    let started = Instant::now();
    let dir = bpffs.join(format!("synx-takeover-{}", std::process::id()));
    let reply = control::request(socket, Request::Takeover { dir: dir.clone() }).context("taking over")?;
    if let Some(e) = reply.get("error").and_then(|e| e.as_str()) {
        anyhow::bail!("taking over: the running synx refused: {e}");
    }
    let number = |k: &str| reply.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
    let (pid, queues, max_conns) = (number("pid"), number("queues"), number("max_conns"));
    let mut old = RunningDaemon { socket, release_timeout: Duration::from_millis(number("grace_ms")) + Duration::from_secs(60) };
    let ours = crate::engine::rx_queues(&options.iface);
    if u64::from(ours) != queues || u64::from(options.max_conns) != max_conns {
        old.abort("queues or max_conns differ");
        anyhow::bail!(
            "taking over: the running synx serves {queues} RX queues with max_conns {max_conns}, this one would serve {ours} \
             with {}: a connection keeps its FLOWS slot only with the same; nothing changed",
            options.max_conns
        );
    }
    let engine = Engine::take_over(options, &dir, &mut old)?;
    // The predecessor exits right after its reply; its control socket goes with it.
    let gone = Instant::now() + TAKEOVER_TIMEOUT;
    while !exited(pid) && Instant::now() < gone {
        std::thread::sleep(Duration::from_millis(5));
    }
    let stats = engine.stats()?;
    let moved = stats.iter().find(|(k, _)| *k == "takeover_connections_moved_in").map_or(0, |(_, v)| *v);
    let line = format!(
        "took over {moved} connections from pid {pid} in {} ms (takeover {} of this daemon)",
        started.elapsed().as_millis(),
        engine.takeovers()
    );
    Ok((engine, line))
}

/// The settings a reload cannot change in place (fixed when the XDP program was loaded and the
/// engine threads started), by name, where `new` differs from `old`.
fn fixed_settings_changed(old: &RunConfig, new: &RunConfig) -> Vec<&'static str> {
    let (a, b) = (&old.cluster, &new.cluster);
    // The memory account's limits are read without locks by every queue thread, and the TCP
    // core's buffer budget was set from them at start; the exporter's socket is bound once.
    let (m, n) = (&old.memory, &new.memory);
    [
        ("iface", old.iface != new.iface),
        ("xdp_mode", old.xdp_mode != new.xdp_mode),
        // A load-time constant of the XDP program.
        ("xdp_tx", old.xdp_tx != new.xdp_tx),
        ("msl", old.msl != new.msl),
        // XDP's SYN-ACK reads it as a load-time constant.
        ("ecn", old.ecn != new.ecn),
        ("busy_poll", old.busy_poll != new.busy_poll),
        ("tx_coalesce", old.tx_coalesce != new.tx_coalesce),
        // A load-time constant of the XDP program too.
        ("cookie_miss_hold", old.cookie_miss_hold != new.cookie_miss_hold),
        ("synack_retries", old.synack_retries != new.synack_retries),
        ("prefer_busy_poll", old.prefer_busy_poll != new.prefer_busy_poll),
        ("coalesce", old.coalesce != new.coalesce),
        ("napi_threads", old.napi_threads != new.napi_threads),
        ("gso", old.gso != new.gso),
        ("app_threads", old.app_threads != new.app_threads),
        ("metrics", old.metrics != new.metrics),
        ("mem_limit", m.limit != n.limit),
        ("max_conns_per_source", m.conns_per_source != n.conns_per_source),
        ("mem_per_source", m.bytes_per_source != n.bytes_per_source),
        ("persist_timeout", m.persist_timeout != n.persist_timeout),
        ("cookie_key_file", a.cookie_key_file != b.cookie_key_file),
        ("peer_hosts/peer_port", a.peer_hosts != b.peer_hosts || a.peer_port != b.peer_port),
        ("drain_syns", a.drain_syns != b.drain_syns),
    ]
    .into_iter()
    .filter_map(|(name, changed)| changed.then_some(name))
    .collect()
}

impl Daemon {
    /// Serve `spec` with its app as `cfg` says; serving an address again replaces its app and
    /// keepalive for connections accepted from then on.
    fn serve(&self, cfg: &RunConfig, spec: &ListenSpec) -> anyhow::Result<()> {
        let engine = &self.engine;
        let service = apps::Service::new(cfg.app_for(spec));
        let app = service.app();
        if cfg.app_threads == AppThreads::Engine {
            if service.needs_a_task() {
                // The proxy holds its backend connection between bursts: a task for life.
                return engine.serve_local(spec.addr, cfg.keepalive, move |stream| {
                    let service = service.clone();
                    async move {
                        let peer = stream.peer_addr();
                        if let Err(e) = service.serve(stream).await {
                            tracing::debug!("{app} for {peer}: {e}");
                        }
                    }
                });
            }
            // In turns: a connection waiting for its next request holds no task.
            return engine.serve_turns(spec.addr, cfg.keepalive, move |stream| {
                let service = service.clone();
                async move {
                    let peer = stream.peer_addr();
                    service.serve_turn(stream).await.unwrap_or_else(|e| {
                        tracing::debug!("{app} for {peer}: {e}");
                        None
                    })
                }
            });
        }
        let mut listener = engine.listen_with_keepalive(spec.addr, cfg.keepalive)?;
        tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let service = service.clone();
                tokio::spawn(async move {
                    if let Err(e) = service.serve(stream).await {
                        tracing::debug!("{app} for {peer}: {e}");
                    }
                });
            }
        });
        Ok(())
    }

    /// Read the configuration again (the file, under the flags given at start) and apply what
    /// changed: listeners added, removed or given another app, keepalive (for connections
    /// accepted from now on), max_conns (up to the size the BPF maps got at start), grace.
    /// Nothing changes when the new configuration does not load or changes a setting fixed at
    /// start; the error names it. Returns what changed, in a line.
    fn reload(&self) -> anyhow::Result<String> {
        let file = match &self.config_file {
            Some(path) => FileConfig::load(path).map_err(anyhow::Error::msg)?,
            None => FileConfig::default(),
        };
        let new = config::merge(self.flags.clone(), file).map_err(anyhow::Error::msg)?;
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let fixed = fixed_settings_changed(&current, &new);
        anyhow::ensure!(
            fixed.is_empty(),
            "{} cannot change without a restart (set at start); nothing changed",
            fixed.join(", ")
        );
        let options = self.engine.options();
        anyhow::ensure!(
            new.max_conns <= options.max_conns,
            "max_conns {} is above {}, the size the BPF maps got at start: restart synx to raise it; nothing changed",
            new.max_conns,
            options.max_conns
        );
        let mut changes = Vec::new();
        for old in &current.listen {
            if !new.listen.iter().any(|s| s.addr == old.addr) {
                self.engine.unlisten(old.addr)?;
                changes.push(format!("-{}", old.addr));
            }
        }
        for spec in &new.listen {
            let before = current.listen.iter().find(|s| s.addr == spec.addr);
            let same = before.is_some_and(|b| current.app_for(b) == new.app_for(spec)) && current.keepalive == new.keepalive;
            if same {
                continue;
            }
            self.serve(&new, spec)?;
            changes.push(format!("{}{}={}", if before.is_some() { "~" } else { "+" }, spec.addr, new.app_for(spec)));
        }
        if new.keepalive != current.keepalive {
            changes.push("keepalive".into());
        }
        if new.max_conns != current.max_conns {
            self.engine.set_max_conns(new.max_conns)?;
            changes.push(format!("max_conns={}", new.max_conns));
        }
        if new.grace != current.grace {
            changes.push(format!("grace={:?}", new.grace));
        }
        *current = new;
        Ok(if changes.is_empty() { "nothing changed".into() } else { changes.join(" ") })
    }

    /// SIGHUP: reload, and say what happened in one line.
    fn reload_and_log(&self) {
        match self.reload() {
            Ok(done) => {
                let _ = writeln!(std::io::stdout(), "reloaded: {done}");
                let _ = std::io::stdout().flush();
            }
            Err(e) => eprintln!("synx: reload: {e:#}"),
        }
    }

    fn grace(&self) -> Duration {
        self.current.lock().unwrap_or_else(|e| e.into_inner()).grace
    }

    /// A successor that asked to take over and then neither aborted nor asked for the
    /// connections within [`TAKEOVER_TIMEOUT`] has died: take the attachment back.
    fn watch_takeover(&self) {
        let request = self.takeover_requests.fetch_add(1, Ordering::SeqCst) + 1;
        let (requests, engine) = (self.takeover_requests.clone(), Arc::downgrade(&self.engine));
        let watch = move |engine: Weak<Engine>| {
            std::thread::sleep(TAKEOVER_TIMEOUT);
            if requests.load(Ordering::SeqCst) == request
                && let Some(engine) = engine.upgrade()
                && engine.abort_takeover().is_ok()
            {
                eprintln!("synx: the successor did not finish taking over within {TAKEOVER_TIMEOUT:?}: serving on");
            }
        };
        let _ = std::thread::Builder::new().name("synx-takeover".into()).spawn(move || watch(engine));
    }
}

/// How the daemon's main loop ended.
enum End {
    /// SIGINT or SIGTERM.
    Signal,
    /// An engine thread died.
    Died(String),
    /// Everything was handed to a successor.
    HandedOver,
}

/// Run the daemon; with `takeover` (a directory on bpffs), take over from the daemon running
/// on the same control socket instead of starting afresh.
pub fn run(
    cfg: RunConfig,
    flags: FlagConfig,
    config_file: Option<PathBuf>,
    control_socket: PathBuf,
    takeover: Option<PathBuf>,
) -> anyhow::Result<()> {
    let options = EngineOptions {
        iface: cfg.iface.clone(),
        xdp_mode: cfg.xdp_mode,
        xdp_tx: cfg.xdp_tx,
        keepalive: cfg.keepalive,
        msl: cfg.msl,
        ecn: cfg.ecn,
        max_conns: cfg.max_conns,
        busy_poll: cfg.busy_poll,
        tx_coalesce: cfg.tx_coalesce,
        cookie_miss_hold: cfg.cookie_miss_hold,
        synack_retries: cfg.synack_retries,
        prefer_busy_poll: cfg.prefer_busy_poll,
        coalesce: cfg.coalesce,
        napi_threads: cfg.napi_threads,
        gso: cfg.gso,
        memory: cfg.memory,
        cluster: cfg.cluster.clone(),
    };
    let (engine, took_over) = match &takeover {
        None => (Engine::start(options)?, None),
        Some(bpffs) => {
            let (engine, line) = take_over(options, bpffs, &control_socket)?;
            (engine, Some(line))
        }
    };
    let engine = Arc::new(engine);
    // Off the engine threads and the runtime: a scrape reads counters and never waits on either.
    let metrics = match cfg.metrics {
        Some(addr) => {
            let engine = engine.clone();
            let exporter = Exporter::start(addr, move || engine.metric_families().map_err(|e| format!("{e:#}")))
                .with_context(|| format!("metrics on {addr}: pass another --metrics ADDR:PORT"))?;
            Some(exporter)
        }
        None => None,
    };
    let daemon = Arc::new(Daemon {
        engine: engine.clone(),
        flags,
        config_file,
        current: Mutex::new(cfg.clone()),
        takeover_requests: Arc::new(AtomicU64::new(0)),
        handed_over: Mutex::new(None),
        handed: tokio::sync::Notify::new(),
    });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    // Removes the socket on the way out, if it is still the one this daemon created.
    let mut bound = None;
    let result = rt.block_on(async {
        let (control, path) = control::bind(&control_socket)?;
        bound = Some(path);
        tokio::spawn(control::serve(control, daemon.clone()));
        for spec in &cfg.listen {
            daemon.serve(&cfg, spec)?;
        }
        // Taking over: frames reach this process from here on.
        engine.finish_takeover()?;
        let specs: Vec<String> = cfg.listen.iter().map(|s| format!("{}={}", s.addr, cfg.app_for(s))).collect();
        let queues = engine.queues();
        let mut out = std::io::stdout();
        if let Some(line) = &took_over {
            writeln!(out, "{line}")?;
        }
        writeln!(
            out,
            "listening on {} (iface {}, xdp {:?}, {queues} queue{}, apps on {}){}",
            specs.join(", "),
            cfg.iface,
            cfg.xdp_mode,
            if queues == 1 { "" } else { "s" },
            if cfg.app_threads == AppThreads::Engine { "the engine threads" } else { "a worker thread" },
            metrics.as_ref().map(|m| format!(", metrics at http://{}/metrics", m.local_addr())).unwrap_or_default(),
        )?;
        out.flush()?;
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut hup = signal(SignalKind::hangup())?;
        let failed = engine.failed();
        tokio::pin!(failed);
        let end = loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break End::Signal,
                _ = term.recv() => break End::Signal,
                // A dead engine thread: stop as on SIGTERM (the other queues' connections get the
                // grace period), then fail, for the supervisor to start a sound daemon.
                failure = &mut failed => break End::Died(failure),
                () = daemon.handed.notified() => break End::HandedOver,
                _ = hup.recv() => {
                    let daemon = daemon.clone();
                    // Off the runtime's worker: a reload takes locks the control socket takes.
                    let _ = tokio::task::spawn_blocking(move || daemon.reload_and_log()).await;
                }
            }
        };
        anyhow::Ok(end)
    });
    let (result, end) = match result {
        Ok(end) => (Ok(()), end),
        Err(e) => (Err(e), End::Signal),
    };
    if let End::HandedOver = end {
        let line = daemon.handed_over.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_default();
        let _ = writeln!(std::io::stdout(), "{line}");
        let _ = std::io::stdout().flush();
        // Nothing is left to stop: the queue threads ended with their sockets, the attachment
        // and the shared maps are the successor's.
        drop(bound);
        drop(metrics);
        drop(rt);
        drop(daemon);
        drop(engine);
        return Ok(());
    }
    // Stop: connections served in turns are closed as they go idle, the rest get the grace
    // period (the apps keep running on their threads), then what is left is reset.
    let grace = daemon.grace();
    if result.is_ok() {
        // Said once new SYNs go unanswered.
        engine.stop_accepting();
        let _ = writeln!(std::io::stdout(), "shutting down: {} s grace for open connections", grace.as_secs());
    }
    engine.shutdown(if result.is_ok() { grace } else { Duration::ZERO });
    drop(bound);
    drop(metrics);
    drop(rt);
    drop(daemon);
    // The last reference detaches the XDP program (bpf_link).
    drop(engine);
    match end {
        End::Died(failure) => Err(anyhow::anyhow!("{failure}: stopped")),
        _ => result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileConfig, FlagConfig, merge};

    fn config(toml_text: &str) -> RunConfig {
        let file: FileConfig = toml::from_str(toml_text).unwrap();
        merge(FlagConfig::default(), file).unwrap()
    }

    const BASE: &str = r#"
        iface = "eth0"
        listen = ["198.18.0.1:7"]
    "#;

    #[test]
    fn a_reload_names_every_setting_it_cannot_apply_and_passes_those_it_can() {
        let old = config(BASE);
        // What a reload applies in place is not reported as fixed.
        let applied = config(&format!("{BASE}\nkeepalive_idle = \"10m\"\ngrace = \"1s\"\nmax_conns = 1000\n"));
        assert_eq!(fixed_settings_changed(&old, &applied), Vec::<&str>::new());
        // What is bound or sized at start is named, never silently ignored.
        let fixed = config(&format!(
            "{BASE}\nmsl = \"1s\"\necn = false\nmetrics = \"127.0.0.1:9464\"\nmem_limit = \"64M\"\nmax_conns_per_source = 10\npersist_timeout = \"1m\"\n"
        ));
        assert_eq!(
            fixed_settings_changed(&old, &fixed),
            ["msl", "ecn", "metrics", "mem_limit", "max_conns_per_source", "persist_timeout"]
        );
    }
}
