//! `synx run`: an [`Engine`] serving the configured listeners with the built-in apps on tokio,
//! answering the control socket, reloading its configuration on SIGHUP (or `synx reload`), and
//! shutting down gracefully on SIGINT/SIGTERM.

use std::{
    io::Write as _,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;

use crate::{
    apps,
    config::{self, AppThreads, FileConfig, FlagConfig, ListenSpec, RunConfig},
    control::{self, Request, Responder},
    engine::{Engine, EngineOptions},
    metrics::Exporter,
};

/// The running daemon as the control socket and SIGHUP see it.
struct Daemon {
    engine: Arc<Engine>,
    /// The flags it was started with (they win over the file at every reload) and the file.
    flags: FlagConfig,
    config_file: Option<PathBuf>,
    /// The configuration in force.
    current: Mutex<RunConfig>,
}

impl Responder for Daemon {
    fn respond(&self, req: Request) -> serde_json::Value {
        match req {
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
        }
    }
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
        ("msl", old.msl != new.msl),
        // XDP's SYN-ACK reads it as a load-time constant.
        ("ecn", old.ecn != new.ecn),
        ("busy_poll", old.busy_poll != new.busy_poll),
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
}

pub fn run(cfg: RunConfig, flags: FlagConfig, config_file: Option<PathBuf>, control_socket: PathBuf) -> anyhow::Result<()> {
    let engine = Arc::new(Engine::start(EngineOptions {
        iface: cfg.iface.clone(),
        xdp_mode: cfg.xdp_mode,
        keepalive: cfg.keepalive,
        msl: cfg.msl,
        ecn: cfg.ecn,
        max_conns: cfg.max_conns,
        busy_poll: cfg.busy_poll,
        memory: cfg.memory,
        cluster: cfg.cluster.clone(),
    })?);
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
    let daemon = Arc::new(Daemon { engine: engine.clone(), flags, config_file, current: Mutex::new(cfg.clone()) });
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
        let specs: Vec<String> = cfg.listen.iter().map(|s| format!("{}={}", s.addr, cfg.app_for(s))).collect();
        let queues = engine.queues();
        let mut out = std::io::stdout();
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
        let died = loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break None,
                _ = term.recv() => break None,
                // A dead engine thread: stop as on SIGTERM (the other queues' connections get the
                // grace period), then fail, for the supervisor to start a sound daemon.
                failure = &mut failed => break Some(failure),
                _ = hup.recv() => {
                    let daemon = daemon.clone();
                    // Off the runtime's worker: a reload takes locks the control socket takes.
                    let _ = tokio::task::spawn_blocking(move || daemon.reload_and_log()).await;
                }
            }
        };
        anyhow::Ok(died)
    });
    let (result, died) = match result {
        Ok(died) => (Ok(()), died),
        Err(e) => (Err(e), None),
    };
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
    match died {
        Some(failure) => Err(anyhow::anyhow!("{failure}: stopped")),
        None => result,
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
