//! The embeddable engine: attach XDP to an interface, run one engine thread per RX queue, and
//! hand out [`Listener`]s. `synx run` is this plus the built-in apps and a control socket; any
//! tokio program can do the same:
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let engine = synx::Engine::start(synx::EngineOptions::new("eth0"))?;
//! let mut listener = engine.listen("198.18.0.1:80".parse()?)?;
//! while let Ok((stream, peer)) = listener.accept().await {
//!     // `stream` is AsyncRead + AsyncWrite: hand it to hyper, tokio-util codecs, ...
//! #   let _ = (stream, peer);
//! }
//! # Ok(()) }
//! ```
//!
//! Dropping the engine (or [`Engine::shutdown`]) stops accepting, resets what is still open,
//! joins the engine threads and detaches the XDP program.
//!
//! "Engine" means this userspace engine: an [`Engine`] runs one engine thread per RX queue,
//! shared-nothing, each driving its own TCP endpoint. The modules, by job:
//! - `queue`: the queue loop, the I/O around one endpoint (receive, timers, transmit, sleep);
//! - `glue`: the apps' side of a queue's connections, and turns;
//! - `listeners`: where accepted connections go;
//! - `stats`: every counter and gauge of the engine threads, each declared once;
//! - `requests`: what the control socket asks the queue threads.

use std::{
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use synx_tcp as tcp;

use crate::{
    api::{EngineWaker, Keepalive, Listener, Stream},
    bpf::{AttachMode, XdpProgram, XdpSettings, XdpTx},
    cluster::{Cluster, ClusterOptions},
    xsk::XskConfig,
};

pub mod coalesce;
mod glue;
pub mod gso;
mod handoff;
mod health;
mod listeners;
mod memory;
pub mod napi_sched;
mod packet_socket;
mod queue;
mod requests;
mod stats;
pub mod synack_retry;

use handoff::Handoff;
use health::Health;
use listeners::{Listeners, LocalHandler, TurnHandler};
use queue::QueueContext;
use requests::{QueueHandle, Queues};
pub use glue::{Moved, MovedApp};
pub use memory::MemoryLimits;
pub use requests::ConnectionRow;
pub use stats::{CONNECTIONS_OPEN, TAKEOVERS, Kind, Metric, QueueStats, gauge, sum as stats_sum};

/// What an engine needs to start.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineOptions {
    pub iface: String,
    pub xdp_mode: AttachMode,
    /// How XDP's answers go back out ([`XdpTx`]).
    pub xdp_tx: XdpTx,
    /// Default keepalive of every listener (each can override it, each stream too).
    pub keepalive: Keepalive,
    /// Maximum segment lifetime; TIME_WAIT lasts 2*MSL.
    pub msl: Duration,
    /// ECN (RFC 3168) with clients that ask for it: XDP's SYN-ACK agrees (ECE) and the
    /// connections use it. On by default, as Linux (net.ipv4.tcp_ecn=2).
    pub ecn: bool,
    /// Connections in all (and FLOWS map entries), shared out evenly over the RX queues: each
    /// queue's engine has its own range of slots.
    pub max_conns: u32,
    /// After a loop turn that did work, an engine thread keeps polling its rings and app
    /// queue (yielding the CPU to runnable threads) for this long before it sleeps in poll(2).
    /// Zero, the default, sleeps at once: least CPU. A few tens of microseconds save a sleep
    /// and a wakeup per request/response turn (lower latency at one connection).
    pub busy_poll: Duration,
    /// When a turn's frames come from several connections, they may wait on the TX ring this
    /// long for more before one wakeup sends them all (see `queue::QueueDriver::transmit`);
    /// zero sends each turn's frames at once.
    pub tx_coalesce: Duration,
    /// How long XDP drops a segment with data, for no connection and with a bad cookie, before
    /// it resets its tuple (see `bpf::XdpSettings::cookie_miss_hold_ms`).
    pub cookie_miss_hold: Duration,
    /// SYN-ACK retransmissions for handshakes XDP answered with a cookie (see
    /// [`synack_retry`]); 0: none (a cookie handshake whose final ACK is lost waits for the
    /// client to send).
    pub synack_retries: u8,
    /// AF_XDP preferred busy polling with this NAPI budget (0: off): each engine thread runs
    /// its RX queue's NAPI itself at every receive instead of being woken by the device (see
    /// `xsk::BusyPoll`).
    pub prefer_busy_poll: u16,
    /// The interface's NAPI deferral: adaptive (on while many clients send at once, see
    /// [`coalesce`]) or left alone.
    pub coalesce: coalesce::CoalesceMode,
    /// The interface's NAPI threads: left alone, or kept at SCHED_BATCH ([`napi_sched`]).
    pub napi_threads: napi_sched::NapiThreadsMode,
    /// Whether trains of segments leave through the segmentation offload ([`gso`]).
    pub gso: gso::GsoMode,
    /// What connections may hold, in all and per source, and how long they may sit in persist.
    pub memory: MemoryLimits,
    /// Serving with other hosts: the shared cookie key, the peers, draining.
    pub cluster: ClusterOptions,
}

impl EngineOptions {
    pub const DEFAULT_MSL: Duration = Duration::from_secs(30);
    pub const DEFAULT_MAX_CONNS: u32 = 1 << 20;
    pub const DEFAULT_TX_COALESCE: Duration = Duration::from_micros(20);

    /// Native XDP, keepalive 2 h idle / 75 s interval / 10 probes, MSL 30 s, ECN when the
    /// client asks, 1M connections.
    pub fn new(iface: impl Into<String>) -> Self {
        Self {
            iface: iface.into(),
            xdp_mode: AttachMode::Native,
            xdp_tx: XdpTx::Auto,
            keepalive: Keepalive::default(),
            msl: Self::DEFAULT_MSL,
            ecn: true,
            max_conns: Self::DEFAULT_MAX_CONNS,
            busy_poll: Duration::ZERO,
            tx_coalesce: Self::DEFAULT_TX_COALESCE,
            cookie_miss_hold: Duration::from_millis(u64::from(crate::bpf::COOKIE_MISS_HOLD_MS)),
            synack_retries: synack_retry::DEFAULT_RETRIES,
            prefer_busy_poll: 0,
            coalesce: coalesce::CoalesceMode::Auto,
            napi_threads: napi_sched::NapiThreadsMode::Keep,
            gso: gso::GsoMode::Auto,
            memory: MemoryLimits::default(),
            cluster: ClusterOptions::default(),
        }
    }
}

/// Number of RX queues of `iface` (`/sys/class/net/IF/queues/rx-*`).
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

/// Our IPv4 MSS: the interface MTU less IPv4 and TCP headers (RFC 9293 3.7.1), at most 1460
/// (the largest a cookie keeps); IPv6 clients are offered 20 bytes less
/// (`synack::Ours::for_family`), so their cookies, and the send MSS taken from them, stay
/// within the link too.
fn interface_mss(iface: &str) -> u16 {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/mtu"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .map(|mtu| mtu.saturating_sub(40).clamp(536, 1460) as u16)
        .unwrap_or(1460)
}

/// What a process handing its connections over sends its successor (`synx run --takeover`).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handover {
    /// Takeovers this daemon's line has seen, this one included.
    pub takeovers: u64,
    /// Each RX queue's connections, by queue.
    pub queues: Vec<Vec<Moved>>,
    /// Connections reset instead: still busy when the grace ended.
    pub reset: u64,
}

/// The running process a successor takes over from, as [`Engine::take_over`] sees it.
pub trait Predecessor {
    /// Hand every connection over: the predecessor's queue threads stop, their sockets closed.
    /// With them, the sockets their apps carried ([`MovedApp::Resume`] indexes them).
    fn release(&mut self) -> anyhow::Result<(Handover, Vec<std::os::fd::OwnedFd>)>;
    /// The takeover failed before [`Predecessor::release`]: the predecessor takes its
    /// attachment back and serves on.
    fn abort(&mut self, why: &str);
}

/// Each queue's moved connections with the socket their app carried (by its index into
/// `sockets`), if any.
fn with_sockets(queues: Vec<Vec<Moved>>, sockets: Vec<std::os::fd::OwnedFd>) -> Vec<Vec<(Moved, Option<std::os::fd::OwnedFd>)>> {
    let mut sockets: Vec<Option<std::os::fd::OwnedFd>> = sockets.into_iter().map(Some).collect();
    queues
        .into_iter()
        .map(|moved| {
            moved
                .into_iter()
                .map(|m| {
                    let fd = match &m.app {
                        MovedApp::Resume { fd, .. } => sockets.get_mut(*fd as usize).and_then(Option::take),
                        _ => None,
                    };
                    (m, fd)
                })
                .collect()
        })
        .collect()
}

/// A running engine on one interface.
pub struct Engine {
    options: EngineOptions,
    xdp: Arc<Mutex<XdpProgram>>,
    queue_handles: Queues,
    listeners: Arc<Listeners>,
    next_listener_id: Mutex<u32>,
    /// Connections each queue accepts at most now (see [`Engine::set_max_conns`]).
    conn_limit: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    abort_all: Arc<AtomicBool>,
    /// See [`QueueContext::hand_over`].
    hand_over: Arc<AtomicU64>,
    /// Everything was handed to a successor: stopping must not touch the shared switches.
    handed_over: AtomicBool,
    /// Where this engine pinned its attachment for a successor ([`Engine::pin_for_takeover`]).
    pinned_for_successor: Mutex<Option<PathBuf>>,
    /// Where the predecessor's attachment is pinned, until this engine has finished taking
    /// over ([`Engine::finish_takeover`]).
    taking_over_from: Mutex<Option<PathBuf>>,
    /// Takeovers this daemon's line has seen (0: started afresh).
    takeovers: u64,
    threads: Mutex<Vec<JoinHandle<anyhow::Result<queue::QueueHandover>>>>,
    cluster: Cluster,
    queues: u32,
    health: Arc<Health>,
    /// Resends SYN-ACKs of cookie handshakes (`--synack-retries`); stops when dropped.
    synack_retry: Option<synack_retry::Retransmitter>,
    /// The interface's NAPI deferral, when synx manages it (`--coalesce auto`).
    coalescing: Option<Arc<coalesce::Coalescing>>,
    /// What keeps the interface's NAPI threads at SCHED_BATCH (`--napi-threads batch`).
    napi_threads: Mutex<Option<napi_sched::NapiThreads>>,
}

impl Engine {
    /// Attach the XDP program to `options.iface` and start one engine thread per RX queue.
    /// Returns once every queue's AF_XDP socket is bound.
    pub fn start(options: EngineOptions) -> anyhow::Result<Self> {
        Self::start_inner(options, None)
    }

    /// Take over from a running engine that pinned its attachment and maps in `dir`
    /// ([`Engine::pin_for_takeover`]): load this binary's program on its maps (a layout that
    /// differs is an error, the predecessor is told to serve on), have it hand over its
    /// connections, bind this engine's sockets and import each queue's connections into the same
    /// queue. The predecessor's program stays in the attachment until
    /// [`Engine::finish_takeover`] (after the listeners are served): until then nothing reaches
    /// either process, and peers retransmit.
    pub fn take_over(options: EngineOptions, dir: &Path, predecessor: &mut dyn Predecessor) -> anyhow::Result<Self> {
        Self::start_inner(options, Some((dir, predecessor)))
    }

    fn start_inner(options: EngineOptions, mut takeover: Option<(&Path, &mut dyn Predecessor)>) -> anyhow::Result<Self> {
        let queues = rx_queues(&options.iface);
        anyhow::ensure!(
            options.max_conns >= queues,
            "--max-conns {} is less than the {queues} RX queues of {}: each queue needs a connection at least",
            options.max_conns,
            options.iface
        );
        let per_queue = options.max_conns / queues;
        let mss = interface_mss(&options.iface);
        let cookie_miss_hold_ms = u32::try_from(options.cookie_miss_hold.as_millis()).unwrap_or(u32::MAX);
        let syn_record_per_sec = if options.synack_retries > 0 { engine_common::maps::SYN_RECORD_PER_SEC } else { 0 };
        let tx_redirect = options.xdp_tx.redirects(&options.iface, options.xdp_mode);
        tracing::info!("XDP answers leave {} by {}", options.iface, if tx_redirect { "redirect" } else { "XDP_TX" });
        let settings = options
            .cluster
            .xdp_settings(XdpSettings { ecn: options.ecn, cookie_miss_hold_ms, syn_record_per_sec, tx_redirect, ..XdpSettings::new(mss) })?;
        let (mut xdp, handover) = match &mut takeover {
            None => (XdpProgram::attach(&options.iface, options.xdp_mode, options.max_conns, settings)?, None),
            Some((dir, predecessor)) => {
                let xdp = match XdpProgram::load_for_takeover(dir, &options.iface, options.max_conns, settings) {
                    Ok(xdp) => xdp,
                    Err(e) => {
                        predecessor.abort(&e.to_string());
                        return Err(e).context("taking over (nothing changed: the running synx serves on)");
                    }
                };
                let handover = predecessor.release().context("taking over: the running synx did not hand over")?;
                (xdp, Some(handover))
            }
        };
        let synack_retry = match xdp.take_syn_records().filter(|_| options.synack_retries > 0) {
            Some(ring) => Some(
                synack_retry::Retransmitter::start(ring, xdp.cookie_checker(), &options.iface, options.synack_retries)
                    .context("starting the SYN-ACK retransmitter")?,
            ),
            None => None,
        };
        let takeovers = handover.as_ref().map_or(0, |(h, _)| h.takeovers);
        let mut imports = match handover {
            Some((h, fds)) => with_sockets(h.queues, fds),
            None => Vec::new(),
        };
        if imports.len() > queues as usize {
            let lost: usize = imports[queues as usize..].iter().map(Vec::len).sum();
            tracing::error!("taking over: {lost} connections of RX queues beyond the {queues} of this engine are lost");
        }
        imports.resize_with(queues as usize, Vec::new);
        let tcp_config = tcp::Config {
            msl: options.msl,
            mss,
            keepalive: options.keepalive,
            ecn: options.ecn,
            // Buffers grow (right-sizing, send buffer expansion) by at most what memory holds
            // before pressure, all queues together: growth stops where pressure starts.
            buffer_budget: tcp::BufferBudget::new(options.memory.pressure()),
            ..tcp::Config::default()
        };
        let listeners = Arc::new(Listeners::default());
        let stop = Arc::new(AtomicBool::new(false));
        let abort_all = Arc::new(AtomicBool::new(false));
        let hand_over = Arc::new(AtomicU64::new(0));
        let conn_limit = Arc::new(AtomicU32::new(per_queue));
        let mut handles = Vec::new();
        let mut threads = Vec::new();
        let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<u32>>();
        let health = Arc::new(Health::new());
        let memory = Arc::new(memory::Memory::new(options.memory));
        let wakers: Vec<Arc<EngineWaker>> = (0..queues).map(|_| Arc::new(EngineWaker::new())).collect();
        // With one queue every tuple is its own; the hand-off costs a FLOWS lookup per segment
        // of no connection, paid only where frames can arrive on another queue.
        let handoff = (queues > 1).then(|| Arc::new(Handoff::new(per_queue, wakers.clone())));
        // One setting serves every NAPI of the device, and each queue judges deferral by its
        // own frames: with several queues one queue's trial would run under another's
        // deferral and judge nothing (left for later; a NIC with several queues has its own
        // interrupt moderation).
        let coalescing = match options.coalesce {
            coalesce::CoalesceMode::Auto if queues == 1 => {
                coalesce::Coalescing::open("/sys/class/net", &options.iface).map(Arc::new)
            }
            coalesce::CoalesceMode::Auto => {
                tracing::info!(queues, "adaptive coalescing off: it manages an interface with one RX queue only");
                None
            }
            coalesce::CoalesceMode::Off => None,
        };
        for ((queue, waker), imports) in (0..queues).zip(wakers).zip(imports) {
            let q_stats = Arc::new(QueueStats::default());
            let (req_tx, req_rx) = mpsc::channel();
            handles.push(QueueHandle { stats: q_stats.clone(), conns_requests: Mutex::new(req_tx), waker: waker.clone() });
            let ctx = QueueContext {
                queue,
                tcp: tcp_config.clone(),
                max_conns: per_queue,
                slot_base: queue * per_queue,
                handoff: handoff.clone(),
                memory: memory.clone(),
                queues,
                conn_limit: conn_limit.clone(),
                busy_poll: options.busy_poll,
                tx_coalesce: options.tx_coalesce,
                coalescing: coalescing.clone(),
                gso: options.gso,
                listeners: listeners.clone(),
                flows: xdp.flow_table(),
                cookies: xdp.cookie_checker(),
                established: synack_retry.as_ref().map(|r| r.established.clone()),
                rx_backlog: xdp.rx_backlog(),
                probe_answers: xdp.probe_answers(),
                stats: q_stats,
                stop: stop.clone(),
                abort_all: abort_all.clone(),
                hand_over: hand_over.clone(),
                taking_over: takeover.is_some(),
                imports,
                conns_requests: req_rx,
                waker,
                #[cfg(feature = "fault-injection")]
                health: health.clone(),
            };
            let iface = options.iface.clone();
            let xsk_cfg = XskConfig { busy_poll_budget: options.prefer_busy_poll, ..XskConfig::default() };
            let ready = ready_tx.clone();
            let (health, rx_backlog, stats) = (health.clone(), xdp.rx_backlog(), ctx.stats.clone());
            threads.push(std::thread::Builder::new().name(format!("synx-q{queue}")).spawn(move || {
                let run = || queue::run_queue(&iface, ctx, xsk_cfg, &ready);
                let result = health.watch(queue, &stats, &rx_backlog, run);
                if let Err(e) = &result {
                    let _ = ready.send(Err(anyhow::anyhow!("{e:#}")));
                }
                result
            })?);
        }
        drop(ready_tx);
        let xdp = Arc::new(Mutex::new(xdp));
        let (secrets, switches) = {
            let x = xdp.lock().unwrap_or_else(|e| e.into_inner());
            (x.secrets(), x.switches())
        };
        let cluster = match Cluster::start(&options.cluster, secrets, switches, takeover.is_some()) {
            Ok(c) => c,
            Err(e) => {
                stop.store(true, Ordering::SeqCst);
                abort_all.store(true, Ordering::SeqCst);
                for t in threads {
                    let _ = t.join();
                }
                return Err(e);
            }
        };
        let engine = Self {
            options,
            xdp: xdp.clone(),
            queue_handles: Queues(handles),
            listeners,
            next_listener_id: Mutex::new(0),
            conn_limit,
            stop,
            abort_all,
            hand_over,
            handed_over: AtomicBool::new(false),
            pinned_for_successor: Mutex::new(None),
            taking_over_from: Mutex::new(takeover.map(|(dir, _)| dir.to_path_buf())),
            takeovers,
            threads: Mutex::new(threads),
            cluster,
            queues,
            health,
            synack_retry,
            coalescing,
            napi_threads: Mutex::new(None),
        };
        // On an error here, dropping `engine` stops and joins the threads already started.
        for _ in 0..queues {
            ready_rx.recv().context("engine thread died during start-up")??;
        }
        // After XDP made the device's NAPIs; threads that come later are found by rescans.
        if engine.options.napi_threads == napi_sched::NapiThreadsMode::Batch {
            *engine.napi_threads.lock().unwrap_or_else(|e| e.into_inner()) = napi_sched::NapiThreads::start(&engine.options.iface);
        }
        Ok(engine)
    }

    /// A successor's last step ([`Engine::take_over`]): its program replaces the predecessor's
    /// inside the attachment, and frames reach this engine's sockets. A no-op unless taking over.
    pub fn finish_takeover(&self) -> anyhow::Result<()> {
        let Some(dir) = self.taking_over_from.lock().unwrap_or_else(|e| e.into_inner()).take() else { return Ok(()) };
        self.xdp.lock().unwrap_or_else(|e| e.into_inner()).finish_takeover(&dir)?;
        // The listeners are served now: the queues resume the apps that carried a socket.
        for q in &self.queue_handles.0 {
            q.waker.notify(u32::MAX);
        }
        Ok(())
    }

    /// Takeovers this daemon's line has seen (0: it started afresh).
    pub fn takeovers(&self) -> u64 {
        self.takeovers
    }

    /// The first step of handing over to a successor: stop publishing the cookie secrets (the
    /// successor does, from the same state) and pin the maps and the attachment in `dir`. This
    /// engine serves on meanwhile; then [`Engine::hand_over`], or [`Engine::abort_takeover`].
    pub fn pin_for_takeover(&self, dir: &Path) -> anyhow::Result<()> {
        anyhow::ensure!(!self.stop.load(Ordering::SeqCst), "this synx is stopping");
        anyhow::ensure!(!self.handed_over.load(Ordering::SeqCst), "this synx has handed over already");
        let mut pinned = self.pinned_for_successor.lock().unwrap_or_else(|e| e.into_inner());
        anyhow::ensure!(pinned.is_none(), "a takeover is under way already");
        self.cluster.pause(true);
        if let Err(e) = self.xdp.lock().unwrap_or_else(|e| e.into_inner()).pin_for_takeover(dir) {
            // Whatever was pinned before the error goes; the attachment is still ours.
            let _ = self.xdp.lock().unwrap_or_else(|e| e.into_inner()).reclaim(dir);
            self.cluster.pause(false);
            return Err(e.into());
        }
        *pinned = Some(dir.to_path_buf());
        Ok(())
    }

    /// The successor failed before taking anything: take the attachment back, publish the
    /// secrets again, serve on as before.
    pub fn abort_takeover(&self) -> anyhow::Result<()> {
        let Some(dir) = self.pinned_for_successor.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            anyhow::bail!("no takeover is under way")
        };
        self.xdp.lock().unwrap_or_else(|e| e.into_inner()).reclaim(&dir)?;
        self.cluster.pause(false);
        Ok(())
    }

    /// Hand every connection to the successor that holds the pinned attachment: each queue
    /// thread hands over its connections as each becomes quiescent between turns (those
    /// waiting for input at once; a running turn is waited for, and a waiting connection's new
    /// input left for the successor), resets what is still busy after `grace`, closes its
    /// socket and ends. Returns once every queue thread has ended.
    pub fn hand_over(&self, grace: Duration) -> anyhow::Result<(Handover, Vec<std::os::fd::OwnedFd>)> {
        // From here on the attachment is the successor's: no abort takes it back.
        anyhow::ensure!(
            self.pinned_for_successor.lock().unwrap_or_else(|e| e.into_inner()).take().is_some(),
            "no takeover is under way"
        );
        self.handed_over.store(true, Ordering::SeqCst);
        let deadline = crate::bpf::monotonic_ns().saturating_add(grace.as_nanos().min(u64::MAX as u128) as u64);
        self.hand_over.store(deadline.max(1), Ordering::SeqCst);
        for q in &self.queue_handles.0 {
            q.waker.notify(u32::MAX);
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        let mut queues = Vec::new();
        let mut sockets = Vec::new();
        for t in threads {
            match t.join() {
                Ok(Ok((mut moved, fds))) => {
                    // One list of sockets for all queues: each queue's indexes move up.
                    let base = sockets.len() as u32;
                    for m in &mut moved {
                        if let MovedApp::Resume { fd, .. } = &mut m.app {
                            *fd += base;
                        }
                    }
                    sockets.extend(fds);
                    queues.push(moved);
                }
                Ok(Err(e)) => {
                    tracing::warn!("engine thread: {e:#}");
                    queues.push(Vec::new());
                }
                Err(_) => queues.push(Vec::new()),
            }
        }
        self.cluster.shutdown();
        let s = self.queue_handles.stats();
        let reset = s.iter().find(|(k, _)| *k == "takeover_resets").map_or(0, |(_, v)| *v);
        Ok((Handover { takeovers: self.takeovers + 1, queues, reset }, sockets))
    }

    /// Accept connections to `addr` (an unspecified IP listens on every address of the port),
    /// with the engine's default keepalive.
    pub fn listen(&self, addr: SocketAddr) -> anyhow::Result<Listener> {
        self.listen_with_keepalive(addr, self.options.keepalive)
    }

    /// Accept connections to `addr` with their own keepalive settings.
    pub fn listen_with_keepalive(&self, addr: SocketAddr, keepalive: Keepalive) -> anyhow::Result<Listener> {
        anyhow::ensure!(addr.port() != 0, "listen address {addr} needs a port");
        // The engine threads learn of the listener before XDP starts answering its SYNs.
        let listener = self.listeners.add(addr, keepalive);
        self.announce(addr)?;
        Ok(listener)
    }

    /// Serve connections to `addr` on the engine threads themselves: `handler` is called on the
    /// engine thread of each accepted connection's RX queue, and the future it returns runs
    /// there (it need not be `Send`), next to the connection's TCP state. A read or a write then
    /// wakes no other thread: one wakeup per request/response turn instead of three. The
    /// handler shares its thread with the engine and every connection of that queue, so it must
    /// not block; hand heavy work to another runtime.
    pub fn serve_local<F, Fut>(&self, addr: SocketAddr, keepalive: Keepalive, handler: F) -> anyhow::Result<()>
    where
        F: Fn(Stream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        anyhow::ensure!(addr.port() != 0, "listen address {addr} needs a port");
        let handler: LocalHandler = Arc::new(move |stream| Box::pin(handler(stream)));
        self.listeners.add_local(addr, keepalive, handler);
        self.announce(addr)
    }

    /// Serve connections to `addr` on the engine threads in turns, so that a connection waiting
    /// for input holds no task, no future and no stream state, only a few bytes of glue.
    ///
    /// `handler` is called on the connection's engine thread (its future need not be `Send`, and
    /// must not block, as with [`Engine::serve_local`]):
    /// - once at accept, whether or not the client has sent anything (a server may speak first;
    ///   a quiet client costs one turn whose first read would block);
    /// - then whenever the connection has input (data, or the peer's FIN) and no turn runs.
    ///
    /// A turn serves what it can and returns `Some(stream)` to wait for more input, or `None`
    /// when it is done (the stream is dropped and the connection closed, as a drop does). Return
    /// `Some` only at a clean boundary: the next turn starts from the stream alone, so keep
    /// nothing half-read in the future. "Would the next read block?" is answered by polling the
    /// read once; the engine never loses what arrives between that poll and the return. What the
    /// turn wrote is sent in full before the connection starts waiting.
    ///
    /// If input is already waiting when a turn returns `Some`, the next turn starts at once when
    /// the turn read some input or more arrived after it last looked; a turn that was given
    /// input and read none of it is called again only when new input arrives (calling it at
    /// once would spin the engine thread on a handler that does not read). A turn that has read the end of the stream and returns `Some`
    /// is taken as `None`: no input can come any more. A waiting connection that is reset, times
    /// out or is aborted is simply released, without a call: there is nothing left to serve.
    /// Within a turn, reads and writes report those errors as usual.
    pub fn serve_turns<F, Fut>(&self, addr: SocketAddr, keepalive: Keepalive, handler: F) -> anyhow::Result<()>
    where
        F: Fn(Stream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Option<Stream>> + 'static,
    {
        anyhow::ensure!(addr.port() != 0, "listen address {addr} needs a port");
        let handler: TurnHandler = Arc::new(move |stream| Box::pin(handler(stream)));
        self.listeners.add_turns(addr, keepalive, handler);
        self.announce(addr)
    }

    /// Stop serving `addr`: XDP leaves its SYNs to the kernel and the engine accepts no more
    /// connections on it; those it accepted carry on with their app, as the kernel's do when a
    /// listening socket closes. Whether `addr` was served.
    pub fn unlisten(&self, addr: SocketAddr) -> anyhow::Result<bool> {
        if !self.listeners.remove(addr) {
            return Ok(false);
        }
        let remaining = self.listeners.addrs();
        self.xdp.lock().unwrap_or_else(|e| e.into_inner()).remove_listener(addr, &remaining)?;
        Ok(true)
    }

    /// Accept at most `max_conns` connections in all from now on, shared out over the queues
    /// as at start. The BPF maps and each queue's range of slots were sized at start
    /// ([`EngineOptions::max_conns`]): more than that needs a new engine.
    pub fn set_max_conns(&self, max_conns: u32) -> anyhow::Result<()> {
        anyhow::ensure!(
            max_conns <= self.options.max_conns,
            "max_conns {max_conns} is above {}, the size the BPF maps got at start: restart synx to raise it",
            self.options.max_conns
        );
        anyhow::ensure!(
            max_conns >= self.queues,
            "max_conns {max_conns} is less than the {} RX queues: each queue needs a connection at least",
            self.queues
        );
        self.conn_limit.store(max_conns / self.queues, Ordering::SeqCst);
        for q in &self.queue_handles.0 {
            q.waker.notify(u32::MAX);
        }
        Ok(())
    }

    /// Tell XDP to answer SYNs for `addr`.
    fn announce(&self, addr: SocketAddr) -> anyhow::Result<()> {
        let mut id = self.next_listener_id.lock().unwrap_or_else(|e| e.into_inner());
        self.xdp.lock().unwrap_or_else(|e| e.into_inner()).add_listener(addr, *id)?;
        *id += 1;
        Ok(())
    }

    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// RX queues served, one engine thread each.
    pub fn queues(&self) -> u32 {
        self.queues
    }

    /// The first engine thread that died (a panic), if any: its queue is served no more (XDP no
    /// longer answers its SYNs) and the engine should be shut down (see [`Engine::failed`]).
    pub fn failure(&self) -> Option<String> {
        self.health.failure()
    }

    /// Resolves when an engine thread dies, with what killed it. `synx run` then shuts the
    /// whole engine down and exits with an error, for its supervisor to restart it: a panic
    /// means the engine's own invariants broke, the dead queue's connections are gone in any
    /// case, and a fresh process is the one state known to be sound (restarting one queue in
    /// place would have to purge its FLOWS entries and re-bind its socket while XDP runs, in
    /// code that only ever runs after a bug).
    pub async fn failed(&self) -> String {
        self.health.failed().await
    }

    /// Make the engine thread of `queue` panic in its next loop turn (tests of what a dying
    /// engine thread does; not in builds without the `fault-injection` feature).
    #[cfg(feature = "fault-injection")]
    #[doc(hidden)]
    pub fn inject_panic(&self, queue: u32) {
        self.health.inject_panic(queue);
        if let Some(q) = self.queue_handles.0.get(queue as usize) {
            q.waker.notify(u32::MAX);
        }
    }

    /// Every counter: the XDP program's (summed over CPUs), then the engine threads', then
    /// the host's in the cluster (draining, connections open, clocks and keys of its peers).
    pub fn stats(&self) -> anyhow::Result<Vec<(&'static str, u64)>> {
        let mut all = self.xdp.lock().unwrap_or_else(|e| e.into_inner()).counters()?;
        all.extend(self.queue_handles.stats());
        all.extend(self.engine_gauges().into_iter().map(|(m, v)| (m.name, v)));
        Ok(all)
    }

    /// What `--metrics` serves: the values of [`Engine::stats`] as Prometheus families, the
    /// engine threads' labelled by queue rather than summed, and the process's memory.
    pub fn metric_families(&self) -> anyhow::Result<Vec<crate::metrics::Family>> {
        let xdp = self.xdp.lock().unwrap_or_else(|e| e.into_inner()).counters()?;
        Ok(crate::metrics::families(&xdp, self.queue_handles.0.iter().map(|q| &*q.stats), &self.engine_gauges()))
    }

    /// The gauges of the engine as a whole (neither XDP's nor a queue's).
    fn engine_gauges(&self) -> Vec<(&'static Metric, u64)> {
        let mut all = vec![(&CONNECTIONS_OPEN, self.open_connections()), (&TAKEOVERS, self.takeovers)];
        // Zeros with retransmission off: the same names whatever the settings.
        let off = synack_retry::RetryStats::default();
        all.extend(stats::synack_retry_values(self.synack_retry.as_ref().map_or(&off, |r| &r.stats)));
        all.extend(stats::coalescing_values(self.coalescing.as_deref()));
        let napi = self.napi_threads.lock().unwrap_or_else(|e| e.into_inner());
        all.push((&stats::NAPI_THREADS_BATCHED, napi.as_ref().map_or(0, napi_sched::NapiThreads::batched)));
        all.extend(self.cluster.stats());
        all
    }

    /// Start (or stop) draining: no new connections (new SYNs unanswered, or passed to the
    /// kernel, as configured), while handshakes already begun complete and established
    /// connections go on. A routing daemon or an operator withdraws the route meanwhile and
    /// stops the host once [`Engine::open_connections`] is 0.
    pub fn drain(&self, on: bool) -> anyhow::Result<()> {
        self.cluster.drain(on)
    }

    pub fn draining(&self) -> bool {
        self.cluster.draining()
    }

    /// Every connection of every queue, as `synx conns` lists them.
    pub fn conns(&self) -> Vec<ConnectionRow> {
        self.queue_handles.conns()
    }

    /// Connections accepted and not yet released (TIME_WAIT included).
    pub fn open_connections(&self) -> u64 {
        let s = self.queue_handles.stats();
        let get = |name: &str| s.iter().find(|(k, _)| *k == name).map_or(0, |(_, v)| *v);
        (get("tcp_accepted") + get("takeover_connections_moved_in"))
            .saturating_sub(get("tcp_closed") + get("takeover_connections_moved_out"))
    }

    /// Stop: new SYNs get no SYN-ACK (the drain switch: unanswered, or passed to the kernel
    /// as [`ClusterOptions::drain_syns`] says); connections served in turns are closed with a
    /// FIN as soon as they wait for input (at once for those already waiting); the others carry
    /// on. Handshakes already answered complete and are served the same way.
    pub fn stop_accepting(&self) {
        // Handed over: the switches are the successor's now.
        if !self.handed_over.load(Ordering::SeqCst)
            && let Err(e) = self.drain(true)
        {
            // Then XDP still answers SYNs: those clients are served a turn and closed.
            tracing::warn!("stopping: the drain switch: {e:#}");
        }
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Graceful shutdown: stop (see [`Engine::stop_accepting`]), give open connections up to
    /// `grace` to finish, reset the rest, join the engine threads. An engine thread ends as soon
    /// as its connections have, TIME_WAIT apart (nothing of it needs a process). The XDP
    /// program detaches when the engine drops.
    pub fn shutdown(&self, grace: Duration) {
        self.stop_accepting();
        let deadline = Instant::now() + grace;
        let finished = || self.threads.lock().unwrap_or_else(|e| e.into_inner()).iter().all(JoinHandle::is_finished);
        while !finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.abort_all.store(true, Ordering::SeqCst);
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            match t.join() {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!("engine thread: {e:#}"),
                Err(_) => tracing::error!("engine thread panicked"),
            }
        }
        // Handed over, the deferral is the successor's to manage.
        if let Some(c) = &self.coalescing
            && !self.handed_over.load(Ordering::SeqCst)
        {
            c.restore();
        }
        // The same for the NAPI threads' class.
        if let Some(mut n) = self.napi_threads.lock().unwrap_or_else(|e| e.into_inner()).take() {
            n.stop(!self.handed_over.load(Ordering::SeqCst));
        }
        self.cluster.shutdown();
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // A successor that never got to serve its listeners still takes the attachment: the
        // predecessor is gone, and a pinned link would keep its program attached for good.
        if let Err(e) = self.finish_takeover() {
            tracing::error!("finishing the takeover: {e:#}");
        }
        self.shutdown(Duration::ZERO);
    }
}

