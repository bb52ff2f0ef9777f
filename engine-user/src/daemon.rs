//! `synx run`: attach XDP, start one engine thread per RX queue, serve the listeners with their
//! apps on tokio, answer the control socket, and shut down gracefully on SIGINT/SIGTERM.

use std::{
    io::Write as _,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::Duration,
};

use anyhow::Context as _;

use crate::{
    api::EngineWaker,
    apps,
    bpf::XdpEngine,
    config::RunConfig,
    control::{self, Request, Responder},
    driver::{self, EngineShared, Listeners, QueueContext, QueueStats},
    tcp,
    xsk::XskConfig,
};

/// How often the SYN-cookie secret rotates. A cookie stays valid for one rotation after the
/// secret that minted it is replaced.
pub const SECRET_ROTATION: Duration = Duration::from_secs(60);

/// Number of RX queues of `iface` that are in use (`/sys/class/net/IF/queues/rx-*`, capped by
/// the active channel count when `ethtool -l` reports one smaller; veth uses one by default).
pub fn rx_queues(iface: &str) -> u32 {
    let dir = format!("/sys/class/net/{iface}/queues");
    let n = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count() as u32
        })
        .unwrap_or(1);
    n.max(1)
}

/// The MSS we announce: the interface MTU less IPv6 and TCP headers (so one value fits both
/// families), at most 1460.
fn interface_mss(iface: &str) -> u16 {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/mtu"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .map(|mtu| mtu.saturating_sub(60).clamp(536, 1460) as u16)
        .unwrap_or(1440)
}

struct Daemon {
    xdp: Arc<Mutex<XdpEngine>>,
    engine: Arc<EngineShared>,
}

impl Responder for Daemon {
    fn respond(&self, req: Request) -> serde_json::Value {
        match req {
            Request::Stats => {
                let mut map = serde_json::Map::new();
                match self.xdp.lock().unwrap_or_else(|e| e.into_inner()).counters() {
                    Ok(c) => {
                        for (k, v) in c {
                            map.insert(k.to_string(), v.into());
                        }
                    }
                    Err(e) => {
                        map.insert("error".into(), e.to_string().into());
                    }
                }
                for (k, v) in self.engine.stats() {
                    map.insert(k.to_string(), v.into());
                }
                serde_json::Value::Object(map)
            }
            Request::Conns => serde_json::to_value(self.engine.conns()).unwrap_or_default(),
        }
    }
}

pub fn run(cfg: RunConfig, control_socket: PathBuf) -> anyhow::Result<()> {
    let mss = interface_mss(&cfg.iface);
    let mut xdp = XdpEngine::attach(&cfg.iface, cfg.xdp_mode, cfg.max_conns, mss)?;
    for (id, spec) in cfg.listen.iter().enumerate() {
        xdp.add_listener(spec.addr, id as u32)?;
    }
    let tcp_config = tcp::Config { msl: cfg.msl, mss, keepalive: cfg.keepalive, ..tcp::Config::default() };
    let queues = rx_queues(&cfg.iface);
    let listeners = Arc::new(Listeners::default());
    let stop = Arc::new(AtomicBool::new(false));
    let abort_all = Arc::new(AtomicBool::new(false));
    let mut stats = Vec::new();
    let mut requests = Vec::new();
    let mut threads = Vec::new();
    let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<u32>>();
    for queue in 0..queues {
        let q_stats = Arc::new(QueueStats::default());
        let waker = Arc::new(EngineWaker::new()?);
        let (req_tx, req_rx) = mpsc::channel();
        stats.push(q_stats.clone());
        requests.push((Mutex::new(req_tx), waker.clone()));
        let ctx = QueueContext {
            queue,
            tcp: tcp_config.clone(),
            max_conns: cfg.max_conns,
            listeners: listeners.clone(),
            flows: xdp.flow_table(),
            cookies: xdp.cookie_checker(),
            last_seen: xdp.last_seen(),
            stats: q_stats,
            stop: stop.clone(),
            abort_all: abort_all.clone(),
            conns_requests: req_rx,
            waker,
        };
        let iface = cfg.iface.clone();
        let ready = ready_tx.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("synx-q{queue}"))
                .spawn(move || {
                    let result = driver::run_queue(&iface, ctx, XskConfig::default(), &ready);
                    if let Err(e) = &result {
                        let _ = ready.send(Err(anyhow::anyhow!("{e:#}")));
                    }
                    result
                })?,
        );
    }
    drop(ready_tx);
    for _ in 0..queues {
        ready_rx.recv().context("engine thread died during start-up")??;
    }
    let xdp = Arc::new(Mutex::new(xdp));
    let engine = Arc::new(EngineShared { stats, conns_requests: requests });

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let result = rt.block_on(async {
        let control = control::bind(&control_socket)?;
        tokio::spawn(control::serve(control, Arc::new(Daemon { xdp: xdp.clone(), engine })));
        for spec in &cfg.listen {
            let app = cfg.app_for(spec);
            let mut listener = listeners.add(spec.addr, cfg.keepalive);
            tokio::spawn(async move {
                while let Ok((stream, peer)) = listener.accept().await {
                    tokio::spawn(async move {
                        if let Err(e) = apps::serve(app, stream).await {
                            tracing::debug!("{app} for {peer}: {e}");
                        }
                    });
                }
            });
        }
        // Rotate the cookie secret; the previous one stays valid for one more period.
        let rotor = xdp.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SECRET_ROTATION);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = rotor.lock().unwrap_or_else(|e| e.into_inner()).rotate_secret() {
                    tracing::warn!("rotating the SYN-cookie secret: {e}");
                }
            }
        });
        let specs: Vec<String> = cfg.listen.iter().map(|s| format!("{}={}", s.addr, cfg.app_for(s))).collect();
        let mut out = std::io::stdout();
        writeln!(
            out,
            "listening on {} (iface {}, xdp {:?}, {queues} queue{})",
            specs.join(", "),
            cfg.iface,
            cfg.xdp_mode,
            if queues == 1 { "" } else { "s" }
        )?;
        out.flush()?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        // Stop accepting (new cookie ACKs find no listener and get a reset), give open
        // connections the grace period, then reset the rest.
        let _ = writeln!(std::io::stdout(), "shutting down: {} s grace for open connections", cfg.grace.as_secs());
        stop.store(true, Ordering::SeqCst);
        tokio::time::sleep(cfg.grace).await;
        abort_all.store(true, Ordering::SeqCst);
        anyhow::Ok(())
    });
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("engine thread: {e:#}"),
            Err(_) => tracing::error!("engine thread panicked"),
        }
    }
    let _ = std::fs::remove_file(&control_socket);
    // Dropping the XdpEngine detaches the program (bpf_link).
    result
}
