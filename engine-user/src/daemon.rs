//! `synx run`: an [`Engine`] serving the configured listeners with the built-in apps on tokio,
//! answering the control socket, and shutting down gracefully on SIGINT/SIGTERM.

use std::{io::Write as _, path::PathBuf, sync::Arc};

use anyhow::Context as _;

use crate::{
    apps,
    config::{AppThreads, RunConfig},
    control::{self, Request, Responder},
    engine::{Engine, EngineOptions},
    metrics::Exporter,
};

impl Responder for Engine {
    fn respond(&self, req: Request) -> serde_json::Value {
        match req {
            Request::Stats => {
                let mut map = serde_json::Map::new();
                match self.stats() {
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
            Request::Conns => serde_json::to_value(self.conns()).unwrap_or_default(),
            Request::Drain | Request::Undrain => match self.drain(req == Request::Drain) {
                Ok(()) => serde_json::json!({ "draining": self.draining(), "connections_open": self.open_connections() }),
                Err(e) => serde_json::json!({ "error": format!("{e:#}") }),
            },
        }
    }
}

pub fn run(cfg: RunConfig, control_socket: PathBuf) -> anyhow::Result<()> {
    let engine = Arc::new(Engine::start(EngineOptions {
        iface: cfg.iface.clone(),
        xdp_mode: cfg.xdp_mode,
        keepalive: cfg.keepalive,
        msl: cfg.msl,
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
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    // Removes the socket on the way out, if it is still the one this daemon created.
    let mut bound = None;
    let result = rt.block_on(async {
        let (control, path) = control::bind(&control_socket)?;
        bound = Some(path);
        tokio::spawn(control::serve(control, engine.clone()));
        for spec in &cfg.listen {
            let service = apps::Service::new(cfg.app_for(spec));
            let app = service.app();
            if cfg.app_threads == AppThreads::Engine {
                if service.needs_a_task() {
                    // The proxy holds its backend connection between bursts: a task for life.
                    engine.serve_local(spec.addr, cfg.keepalive, move |stream| {
                        let service = service.clone();
                        async move {
                            let peer = stream.peer_addr();
                            if let Err(e) = service.serve(stream).await {
                                tracing::debug!("{app} for {peer}: {e}");
                            }
                        }
                    })?;
                } else {
                    // In turns: a connection waiting for its next request holds no task.
                    engine.serve_turns(spec.addr, cfg.keepalive, move |stream| {
                        let service = service.clone();
                        async move {
                            let peer = stream.peer_addr();
                            service.serve_turn(stream).await.unwrap_or_else(|e| {
                                tracing::debug!("{app} for {peer}: {e}");
                                None
                            })
                        }
                    })?;
                }
                continue;
            }
            let mut listener = engine.listen(spec.addr)?;
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
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let died = tokio::select! {
            _ = tokio::signal::ctrl_c() => None,
            _ = term.recv() => None,
            // A dead engine thread: stop as on SIGTERM (the other queues' connections get the
            // grace period), then fail, for the supervisor to start a sound daemon.
            failure = engine.failed() => Some(failure),
        };
        anyhow::Ok(died)
    });
    let (result, died) = match result {
        Ok(died) => (Ok(()), died),
        Err(e) => (Err(e), None),
    };
    // Stop accepting (new cookie ACKs find no listener and get a reset), give open connections
    // the grace period (the apps keep running on their threads), then reset the rest.
    if result.is_ok() {
        let _ = writeln!(std::io::stdout(), "shutting down: {} s grace for open connections", cfg.grace.as_secs());
    }
    engine.shutdown(if result.is_ok() { cfg.grace } else { std::time::Duration::ZERO });
    drop(bound);
    drop(metrics);
    drop(rt);
    // The last reference detaches the XDP program (bpf_link).
    drop(engine);
    match died {
        Some(failure) => Err(anyhow::anyhow!("{failure}: stopped")),
        None => result,
    }
}
