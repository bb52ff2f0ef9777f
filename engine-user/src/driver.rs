//! The engine: one thread per RX queue, shared-nothing. Each owns an AF_XDP socket, a TCP
//! endpoint (the sans-IO core) and the application glue of its connections.
//!
//! One turn of the loop: receive a batch of frames and feed them to the endpoint (a cookie ACK
//! for an unknown tuple becomes a new connection once its cookie checks out); serve connections
//! the applications poked; run expired timers; move data between the TCP core and the
//! applications' streams; transmit what the core wants to send. Then sleep until a frame
//! arrives, an application pokes, or the next timer is due.
//!
//! The loop is a task on the thread's own single-threaded tokio runtime, which also runs the
//! apps of listeners served on the engine threads ([`Accept::Local`], [`Accept::Turns`]): their
//! reads and writes wake nothing across threads, so a request/response turn costs one wakeup,
//! not three.
//!
//! A connection served in turns ([`Accept::Turns`]) holds a task and a [`Shared`] only while a
//! turn runs: when its handler hands the stream back and everything it wrote has reached the TCP
//! core, the glue forgets both and keeps only the handler's index ([`AppSide::Waiting`]); the
//! next input starts a new turn with fresh shared state.

use std::{
    cell::Cell,
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    os::fd::{AsRawFd, RawFd},
    pin::Pin,
    rc::Rc,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    time::Duration,
};

use serde::Serialize;

use crate::{
    api::{EngineWaker, Keepalive, Listener, STREAM_RX_CAP, Shared, Stream, StreamError},
    bpf::{CookieChecker, FlowTable, LastSeen, RxBacklog},
    wire::{self, Link, WireError},
    xsk::{XskConfig, XskSocket},
};
use synx_tcp::{
    self as tcp, Instant, connection,
    endpoint::{ConnectionHandle, Disposition, DropReason, Endpoint},
};

/// The monotonic clock of the whole engine: CLOCK_MONOTONIC in nanoseconds, the clock
/// `bpf_ktime_get_ns()` stamps LAST_SEEN with.
pub fn now() -> Instant {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime into a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Instant::from_nanos(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// Per-queue counters, summed into `synx stats`.
#[derive(Debug, Default)]
pub struct QueueStats {
    pub rx_segments: AtomicU64,
    pub tx_segments: AtomicU64,
    pub accepted: AtomicU64,
    pub closed: AtomicU64,
    pub closed_reset: AtomicU64,
    pub closed_timeout: AtomicU64,
    pub closed_aborted: AtomicU64,
    pub time_wait_fin_reacked: AtomicU64,
    pub resets_sent: AtomicU64,
    pub cookie_rejected: AtomicU64,
    pub no_listener: AtomicU64,
    pub table_full: AtomicU64,
    /// Connections folded while idle (a gauge; see `tcp::endpoint`).
    pub parked: AtomicU64,
    /// Gauge: application tasks alive on this engine thread ([`Accept::Local`] tasks and running
    /// turns).
    pub app_tasks: AtomicU64,
    /// Gauge: connections served in turns that wait for input with no task and no shared state.
    pub app_waiting: AtomicU64,
    /// The kernel's AF_XDP drop counters for this queue's socket (read every 100 ms).
    pub xsk_rx_dropped: AtomicU64,
    pub xsk_rx_ring_full: AtomicU64,
    pub xsk_rx_fill_empty: AtomicU64,
    pub tcp_parse_errors: AtomicU64,
    pub dropped_by_tcp: AtomicU64,
    /// `dropped_by_tcp` split by reason, indexed like [`DROP_REASONS`].
    pub dropped_by_reason: [AtomicU64; DROP_REASONS.len()],
    pub wire: [AtomicU64; WireError::ALL.len()],
    /// The TCP core's own counters (loss recovery, pacing, ECN), published each turn.
    pub core: crate::core_stats::CoreCounters,
}

impl QueueStats {
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut v = vec![
            ("tcp_rx_segments", g(&self.rx_segments)),
            ("tcp_tx_segments", g(&self.tx_segments)),
            ("tcp_accepted", g(&self.accepted)),
            ("tcp_closed", g(&self.closed)),
            ("tcp_closed_reset", g(&self.closed_reset)),
            ("tcp_closed_timeout", g(&self.closed_timeout)),
            ("tcp_closed_aborted", g(&self.closed_aborted)),
            ("tcp_time_wait_fin_reacked", g(&self.time_wait_fin_reacked)),
            ("tcp_resets_sent", g(&self.resets_sent)),
            ("tcp_cookie_rejected", g(&self.cookie_rejected)),
            ("tcp_no_listener", g(&self.no_listener)),
            ("tcp_table_full", g(&self.table_full)),
            ("tcp_parked", g(&self.parked)),
            ("app_tasks", g(&self.app_tasks)),
            ("app_waiting", g(&self.app_waiting)),
            ("xsk_rx_dropped", g(&self.xsk_rx_dropped)),
            ("xsk_rx_ring_full", g(&self.xsk_rx_ring_full)),
            ("xsk_rx_fill_empty", g(&self.xsk_rx_fill_empty)),
            ("tcp_parse_errors", g(&self.tcp_parse_errors)),
            ("tcp_dropped", g(&self.dropped_by_tcp)),
        ];
        for (i, (_, name)) in DROP_REASONS.iter().enumerate() {
            v.push((name, g(&self.dropped_by_reason[i])));
        }
        for (i, e) in WireError::ALL.iter().enumerate() {
            v.push((e.counter_name(), g(&self.wire[i])));
        }
        v.extend(self.core.snapshot());
        v
    }
}

/// Why the TCP core dropped a segment of a known connection, as `synx stats` names it: the
/// injection defences of RFC 5961 and the acceptability checks of RFC 9293 3.10.7.4 show up
/// separately from each other.
pub const DROP_REASONS: [(connection::DropReason, &str); 7] = [
    (connection::DropReason::Closed, "tcp_drop_closed"),
    (connection::DropReason::Paws, "tcp_drop_paws"),
    (connection::DropReason::Unacceptable, "tcp_drop_unacceptable"),
    (connection::DropReason::RstNotExact, "tcp_drop_rst_not_exact"),
    (connection::DropReason::Syn, "tcp_drop_syn_synchronized"),
    (connection::DropReason::NoAck, "tcp_drop_no_ack"),
    (connection::DropReason::BadAck, "tcp_drop_bad_ack"),
];

/// One row of `synx conns`.
#[derive(Debug, Clone, Serialize)]
pub struct ConnInfo {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: String,
    /// Time since the peer was last heard from (XDP's LAST_SEEN), in milliseconds.
    pub idle_ms: u64,
    pub keepalive_probes: u32,
    pub queue: u32,
}

/// Serves one accepted connection on the engine thread that owns it. Called on that thread;
/// the future it returns runs there too, so it need not be `Send`.
pub type LocalHandler = Arc<dyn Fn(Stream) -> Pin<Box<dyn Future<Output = ()>>> + Send + Sync>;

/// Serves one turn of a connection on its engine thread: called at accept and whenever input
/// waits and no turn runs; the future returns the stream to wait for more input, or `None` when
/// the connection is done (the stream dropped: closed as usual).
pub type TurnHandler = Arc<dyn Fn(Stream) -> Pin<Box<dyn Future<Output = Option<Stream>>>> + Send + Sync>;

/// Where a listener's accepted connections go.
pub enum Accept {
    /// To a [`Listener`], whose `accept()` any runtime on any thread may await.
    Channel(tokio::sync::mpsc::UnboundedSender<Stream>),
    /// To a handler run on the engine thread of the connection's RX queue.
    Local(LocalHandler),
    /// To a turn handler run on the engine thread of the connection's RX queue, once per burst
    /// of input: between turns the connection holds no task.
    Turns(TurnHandler),
}

/// A listener as the engine threads see it.
pub struct ListenerEntry {
    pub accept: Accept,
    pub keepalive: Keepalive,
}

/// Listeners by local address; an unspecified IP matches every address on that port.
#[derive(Default)]
pub struct Listeners {
    by_addr: RwLock<HashMap<SocketAddr, Arc<ListenerEntry>>>,
}

impl Listeners {
    pub fn add(&self, addr: SocketAddr, keepalive: Keepalive) -> Listener {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.insert(addr, ListenerEntry { accept: Accept::Channel(tx), keepalive });
        Listener::new(addr, rx)
    }

    pub fn add_local(&self, addr: SocketAddr, keepalive: Keepalive, handler: LocalHandler) {
        self.insert(addr, ListenerEntry { accept: Accept::Local(handler), keepalive });
    }

    pub fn add_turns(&self, addr: SocketAddr, keepalive: Keepalive, handler: TurnHandler) {
        self.insert(addr, ListenerEntry { accept: Accept::Turns(handler), keepalive });
    }

    fn insert(&self, addr: SocketAddr, entry: ListenerEntry) {
        self.by_addr.write().unwrap_or_else(|e| e.into_inner()).insert(addr, Arc::new(entry));
    }

    pub fn find(&self, local: SocketAddr) -> Option<Arc<ListenerEntry>> {
        let map = self.by_addr.read().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = map.get(&local) {
            return Some(e.clone());
        }
        let wildcard = match local {
            SocketAddr::V4(a) => SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), a.port()),
            SocketAddr::V6(a) => SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), a.port()),
        };
        map.get(&wildcard).cloned()
    }
}

/// What a queue thread needs from the rest of the daemon.
pub struct QueueContext {
    pub queue: u32,
    pub tcp: tcp::Config,
    pub max_conns: u32,
    pub busy_poll: Duration,
    pub listeners: Arc<Listeners>,
    pub flows: FlowTable,
    pub cookies: CookieChecker,
    pub last_seen: LastSeen,
    pub rx_backlog: RxBacklog,
    pub stats: Arc<QueueStats>,
    pub stop: Arc<AtomicBool>,
    /// Set when SIGTERM's grace period ends: reset what is left.
    pub abort_all: Arc<AtomicBool>,
    pub conns_requests: mpsc::Receiver<mpsc::Sender<Vec<ConnInfo>>>,
    pub waker: Arc<EngineWaker>,
}

/// Application glue of one connection.
struct Glue {
    link: Link,
    app: AppSide,
}

/// What the application side of a connection holds.
enum AppSide {
    /// A task (or an `accept()` consumer) holds the stream for the connection's life.
    Task(Arc<Shared>),
    /// A turn of the handler `turn_handlers[.1]` runs, or has ended and its output is still
    /// moving into the TCP core.
    Turn(Arc<Shared>, u32),
    /// The turn handler `turn_handlers[.0]` waits for input: no task, no shared state.
    Waiting(u32),
    /// The application dropped its stream and everything it wrote reached the TCP core: nothing
    /// left to tell it (the TCP core finishes the close alone).
    Done,
}

impl AppSide {
    fn shared(&self) -> Option<&Arc<Shared>> {
        match self {
            AppSide::Task(s) | AppSide::Turn(s, _) => Some(s),
            AppSide::Waiting(_) | AppSide::Done => None,
        }
    }
}

/// The glue of every connection, indexed by slot (slots are small, dense, and reused only after
/// `Released`), with the counts the engine loop and `synx stats` need.
#[derive(Default)]
struct GlueTable {
    slots: Vec<Option<Glue>>,
    /// Occupied slots.
    len: usize,
    /// Slots in [`AppSide::Waiting`].
    waiting: usize,
}

impl GlueTable {
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn get(&self, slot: u32) -> Option<&Glue> {
        self.slots.get(slot as usize)?.as_ref()
    }

    /// The glue of `slot`, to change its link (its app side changes only through `set_app`,
    /// which keeps the counts).
    fn get_mut(&mut self, slot: u32) -> Option<&mut Glue> {
        self.slots.get_mut(slot as usize)?.as_mut()
    }

    fn insert(&mut self, slot: u32, glue: Glue) {
        let i = slot as usize;
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, || None);
        }
        self.remove(slot);
        self.waiting += usize::from(matches!(glue.app, AppSide::Waiting(_)));
        self.len += 1;
        self.slots[i] = Some(glue);
    }

    fn remove(&mut self, slot: u32) {
        if let Some(old) = self.slots.get_mut(slot as usize).and_then(Option::take) {
            self.waiting -= usize::from(matches!(old.app, AppSide::Waiting(_)));
            self.len -= 1;
        }
    }

    fn set_app(&mut self, slot: u32, app: AppSide) {
        let Some(g) = self.get_mut(slot) else { return };
        let was_waiting = matches!(g.app, AppSide::Waiting(_));
        let waits = matches!(app, AppSide::Waiting(_));
        g.app = app;
        self.waiting = self.waiting + usize::from(waits) - usize::from(was_waiting);
    }

    /// Slots that hold glue.
    fn slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots.iter().enumerate().filter(|(_, g)| g.is_some()).map(|(i, _)| i as u32)
    }
}

struct QueueEngine {
    ctx: QueueContext,
    endpoint: Endpoint,
    glue: GlueTable,
    /// The turn handlers of this thread's connections, each once ([`AppSide::Waiting`] holds an
    /// index: 4 bytes, and no shared reference count touched per turn).
    turn_handlers: Vec<TurnHandler>,
    /// Link addresses to answer segments of connections not (or no longer) in `glue`.
    last_link: Link,
    scratch: Vec<u8>,
    /// Where received bytes pass from the TCP core to a stream (allocated once: zeroing 16 KB
    /// on the stack for every serviced connection showed in profiles).
    rx_chunk: Box<[u8]>,
    poked: Vec<u32>,
    /// SYN-ACKs built in userspace (TIME_WAIT reuse), sent with the next transmit batch.
    syn_acks: Vec<(Link, SocketAddr, SocketAddr, tcp::segment::Header)>,
    /// The MSS we announce (as XDP does).
    mss: u16,
    /// App tasks of [`Accept::Local`] listeners and turns of [`Accept::Turns`] listeners alive
    /// on this thread.
    local_tasks: Rc<Cell<usize>>,
}

/// The AF_XDP socket's fd, for readiness through the runtime's epoll (not closed on drop).
struct XskFd(RawFd);

impl AsRawFd for XskFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Counts a local app task while it lives.
struct TaskCount(Rc<Cell<usize>>);

impl Drop for TaskCount {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// Run one turn of a connection served in turns: hand the stream back if the handler returns it.
fn spawn_turn(tasks: &Rc<Cell<usize>>, turn: Pin<Box<dyn Future<Output = Option<Stream>>>>) {
    let count = tasks.clone();
    count.set(count.get() + 1);
    tokio::task::spawn_local(async move {
        let _alive = TaskCount(count);
        if let Some(stream) = turn.await {
            stream.hand_back();
        }
    });
}

/// Frames taken from the AF_XDP ring per loop turn.
const RX_BATCH: u32 = 256;

/// Run one queue until `ctx.stop` is set and every connection is gone (or aborted), on a
/// single-threaded runtime of its own (with the apps of local listeners).
pub fn run_queue(
    iface: &str,
    ctx: QueueContext,
    xsk_cfg: XskConfig,
    ready: &mpsc::Sender<anyhow::Result<u32>>,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    tokio::task::LocalSet::new().block_on(&rt, serve_queue(iface, ctx, xsk_cfg, ready))
}

async fn serve_queue(
    iface: &str,
    ctx: QueueContext,
    xsk_cfg: XskConfig,
    ready: &mpsc::Sender<anyhow::Result<u32>>,
) -> anyhow::Result<()> {
    let mut xsk = XskSocket::open(iface, ctx.queue, xsk_cfg)?;
    // Edge-triggered readiness: cleared when the engine wakes, set again by the next frame.
    // SAFETY: `xsk` owns the fd and outlives `xsk_ready` (declared after it, dropped before).
    let xsk_ready = unsafe { tokio::io::unix::AsyncFd::register_with_interest(XskFd(xsk.fd()), tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    ctx.flows.register_xsk(ctx.queue, xsk.fd())?;
    tracing::info!(queue = ctx.queue, zero_copy = xsk.zero_copy(), "AF_XDP socket bound");
    let _ = ready.send(Ok(ctx.queue));
    let endpoint = Endpoint::new(ctx.tcp.clone(), ctx.max_conns);
    let engine_mss = ctx.tcp.mss;
    let mut engine = QueueEngine {
        ctx,
        endpoint,
        glue: GlueTable::default(),
        turn_handlers: Vec::new(),
        last_link: Link::default(),
        scratch: vec![0u8; crate::xsk::FRAME_SIZE as usize],
        rx_chunk: vec![0u8; 16 * 1024].into_boxed_slice(),
        poked: Vec::new(),
        syn_acks: Vec::new(),
        mss: engine_mss,
        local_tasks: Rc::new(Cell::new(0)),
    };
    let mut last_work = now();
    let mut last_xsk_stats = Instant::from_nanos(0);
    // Frames taken from the socket, frames the kernel dropped, and their sum as XDP last saw it.
    let (mut consumed, mut kernel_dropped, mut published) = (0u64, 0u64, 0u64);
    loop {
        let stopping = engine.ctx.stop.load(Ordering::Relaxed);
        if stopping && engine.glue.is_empty() {
            return Ok(());
        }
        if engine.ctx.abort_all.load(Ordering::Relaxed) {
            engine.abort_everything(now());
        }
        let received = xsk.recv(RX_BATCH, |frame| engine.on_frame(now(), frame));
        // Tell XDP how far we are (it counts what it redirects): while too much waits for us,
        // it answers no new SYNs, whose final ACKs would otherwise overflow the socket and be
        // lost, leaving clients connected to a server that never heard of them. (Seen: a
        // burst of 1M connects lost 81% of its final ACKs without this.)
        consumed += u64::from(received);
        if consumed + kernel_dropped != published {
            published = consumed + kernel_dropped;
            engine.ctx.rx_backlog.set_consumed(engine.ctx.queue, published);
        }
        let poked = engine.serve_poked(now());
        let t = now();
        let last_seen = &engine.ctx.last_seen;
        engine
            .endpoint
            .handle_timeout_with_last_seen(t, |h| last_seen.get(h.slot()).map(Instant::from_nanos));
        engine.drain_events(t);
        engine.transmit(&mut xsk, t);
        engine.answer_conns_requests(t);
        if t.saturating_duration_since(last_xsk_stats) >= Duration::from_millis(100) {
            last_xsk_stats = t;
            if let Some((dropped, ring_full, fill_empty)) = xsk.kernel_drops() {
                // Frames the kernel dropped will never be taken: not backlog (published with
                // the next turn's count).
                kernel_dropped = dropped;
                let s = &engine.ctx.stats;
                s.xsk_rx_dropped.store(dropped, Ordering::Relaxed);
                s.xsk_rx_ring_full.store(ring_full, Ordering::Relaxed);
                s.xsk_rx_fill_empty.store(fill_empty, Ordering::Relaxed);
            }
        }
        let stats = &engine.ctx.stats;
        stats.time_wait_fin_reacked.store(engine.endpoint.time_wait_fin_reacked, Ordering::Relaxed);
        stats.parked.store(engine.endpoint.parked() as u64, Ordering::Relaxed);
        stats.core.publish(engine.endpoint.totals());
        stats.app_tasks.store(engine.local_tasks.get() as u64, Ordering::Relaxed);
        stats.app_waiting.store(engine.glue.waiting as u64, Ordering::Relaxed);
        if received > 0 {
            last_work = t;
            // More frames may be waiting: look again, after letting this thread's apps read
            // what just arrived (their writes go out in the next turn).
            if engine.local_tasks.get() > 0 {
                tokio::task::yield_now().await;
            }
            continue;
        }
        if poked > 0 {
            last_work = t;
        } else if t.saturating_duration_since(last_work) < engine.ctx.busy_poll {
            // Right after work the next frame or app write usually follows within microseconds
            // (a request's response, the next segment of a burst): look again instead of
            // paying a sleep and a wakeup for it.
            std::thread::yield_now();
            tokio::task::yield_now().await;
            continue;
        }
        engine.sleep(&xsk_ready).await;
    }
}

impl QueueEngine {
    fn on_frame(&mut self, now: Instant, frame: &[u8]) {
        let stats = &self.ctx.stats;
        let rx = match wire::parse(frame) {
            Ok(rx) => rx,
            Err(e) => {
                let i = WireError::ALL.iter().position(|x| *x == e).unwrap_or(0);
                stats.wire[i].fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let (mut hdr, payload) = match tcp::segment::parse(rx.tcp) {
            Ok(p) => p,
            Err(_) => {
                stats.tcp_parse_errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        hdr.ce = rx.ce;
        stats.rx_segments.fetch_add(1, Ordering::Relaxed);
        self.last_link = rx.link;
        match self.endpoint.handle(now, rx.local, rx.remote, &hdr, payload) {
            Disposition::Delivered(h) => {
                if let Some(g) = self.glue.get_mut(h.slot()) {
                    g.link = rx.link;
                }
                self.service(now, h);
            }
            Disposition::Unknown => self.on_unknown(now, rx.link, rx.local, rx.remote, &hdr, payload),
            Disposition::Dropped(DropReason::TimeWaitReuse) => {
                // RFC 6191: a new incarnation of a tuple in TIME_WAIT. The old one is gone from
                // the endpoint; answer the SYN as XDP would have, so the client need not
                // retransmit it (a 1 s stall for every port it reuses).
                self.answer_syn(now, rx.link, rx.local, rx.remote, &hdr);
            }
            Disposition::Dropped(why) => {
                stats.dropped_by_tcp.fetch_add(1, Ordering::Relaxed);
                if let Some(i) = DROP_REASONS.iter().position(|(r, _)| *r == why) {
                    stats.dropped_by_reason[i].fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// A segment for no connection: a cookie ACK creates one (RFC 9293 3.10.7.3, with the
    /// SYN-RECEIVED state held in the cookie); anything else gets the RFC 9293 3.10.7.1 reset.
    fn on_unknown(
        &mut self,
        now: Instant,
        link: Link,
        local: SocketAddr,
        remote: SocketAddr,
        hdr: &tcp::segment::Header,
        payload: &[u8],
    ) {
        let stats = &self.ctx.stats;
        // Shutting down: no new connections.
        let listener = match self.ctx.stop.load(Ordering::Relaxed) {
            true => None,
            false => self.ctx.listeners.find(local),
        };
        // Whatever claim XDP put in FLOWS for this tuple must go if no connection results.
        let refuse = |engine: &mut Self| {
            let _ = engine.ctx.flows.remove(local, remote);
            engine.endpoint.reset_unknown(local, remote, hdr, payload.len());
        };
        let Some(listener) = listener else {
            stats.no_listener.fetch_add(1, Ordering::Relaxed);
            refuse(self);
            return;
        };
        let facts = self.ctx.cookies.check(
            local,
            remote,
            hdr.seq.0,
            hdr.ack.0,
            hdr.options.timestamps,
            now.as_nanos(),
        );
        let Some(facts) = facts else {
            stats.cookie_rejected.fetch_add(1, Ordering::Relaxed);
            refuse(self);
            return;
        };
        // Settle events still queued for a released connection first: its slot (the handle)
        // may be the one this connection gets, and a stale Closed/Released would then tear
        // down the new connection's glue (seen when a client reused a TIME_WAIT tuple).
        self.drain_events(now);
        let handle = match self.endpoint.accept(now, facts, local, remote, hdr, payload) {
            Ok(h) => h,
            Err(_) => {
                self.ctx.stats.table_full.fetch_add(1, Ordering::Relaxed);
                refuse(self);
                return;
            }
        };
        if let Err(e) = self.ctx.flows.insert(local, remote, handle.slot()) {
            tracing::warn!("FLOWS insert for {remote}: {e}");
        }
        if let Some(conn) = self.endpoint.connection_mut(handle) {
            conn.set_keepalive(listener.keepalive);
        }
        let shared = Shared::new(handle.slot(), local, remote, self.ctx.waker.clone());
        let app = match &listener.accept {
            Accept::Turns(handler) => AppSide::Turn(shared.clone(), self.turn_handler_id(handler)),
            Accept::Channel(_) | Accept::Local(_) => AppSide::Task(shared.clone()),
        };
        self.glue.insert(handle.slot(), Glue { link, app });
        self.ctx.stats.accepted.fetch_add(1, Ordering::Relaxed);
        let stream = Stream::new(shared);
        let refused = match &listener.accept {
            Accept::Channel(tx) => tx.send(stream).is_err(),
            Accept::Local(handler) => {
                let app = handler(stream);
                let count = self.local_tasks.clone();
                count.set(count.get() + 1);
                tokio::task::spawn_local(async move {
                    let _alive = TaskCount(count);
                    app.await;
                });
                false
            }
            Accept::Turns(handler) => {
                // The first turn runs at accept, input or not: a server may speak first, and a
                // quiet client costs one turn that finds nothing to read.
                spawn_turn(&self.local_tasks, handler(stream));
                false
            }
        };
        if refused {
            // The application stopped listening: refuse the connection.
            if let Some(conn) = self.endpoint.connection_mut(handle) {
                conn.abort(now);
            }
        }
        self.service(now, handle);
    }

    /// The cookie SYN-ACK XDP sends, built here for a SYN that reached userspace.
    fn answer_syn(&mut self, now: Instant, link: Link, local: SocketAddr, remote: SocketAddr, syn: &tcp::segment::Header) {
        use tcp::segment::{Flags, Header, Options};
        let o = &syn.options;
        let Some((isn, tsval)) = self.ctx.cookies.syn_ack(
            local,
            remote,
            syn.seq.0,
            o.mss,
            o.timestamps.map(|t| t.0),
            o.window_scale,
            o.sack_permitted,
            now.as_nanos(),
            self.mss,
        ) else {
            return;
        };
        let ts = tsval.zip(o.timestamps.map(|t| t.0));
        let header = Header {
            src_port: local.port(),
            dst_port: remote.port(),
            seq: tcp::seq::SeqNum(isn),
            ack: syn.seq + 1,
            flags: Flags(Flags::SYN.0 | Flags::ACK.0),
            window: 65535,
            urgent: 0,
            options: Options {
                // What we can receive (RFC 6691 2), as XDP announces; the cookie holds what we send.
                mss: Some(self.mss),
                // Without timestamps the cookie cannot carry scaling or SACK (as in XDP).
                window_scale: if ts.is_some() { o.window_scale.map(|_| self.ctx.cookies.wscale()) } else { None },
                sack_permitted: ts.is_some() && o.sack_permitted,
                timestamps: ts,
                ..Options::default()
            },
            ce: false,
        };
        if self.syn_acks.len() < 1024 {
            self.syn_acks.push((link, local, remote, header));
        }
    }

    /// Serve the connections whose applications poked us; returns how many.
    fn serve_poked(&mut self, now: Instant) -> usize {
        let mut poked = std::mem::take(&mut self.poked);
        self.ctx.waker.drain(&mut poked);
        let n = poked.len();
        for slot in poked.drain(..) {
            if let Some(h) = self.endpoint.handle_for_slot(slot) {
                self.service(now, h);
            }
        }
        self.poked = poked;
        n
    }

    /// This thread's index of a turn handler (its table grows by one per turn-served listener).
    fn turn_handler_id(&mut self, handler: &TurnHandler) -> u32 {
        if let Some(i) = self.turn_handlers.iter().position(|h| Arc::ptr_eq(h, handler)) {
            return i as u32;
        }
        self.turn_handlers.push(handler.clone());
        (self.turn_handlers.len() - 1) as u32
    }

    /// Move data and close/shutdown requests between a connection and its application; start a
    /// turn for a waiting connection with input, and retire a turn that has ended.
    fn service(&mut self, now: Instant, h: ConnectionHandle) {
        if let Some(Glue { app: AppSide::Waiting(id), .. }) = self.glue.get(h.slot()) {
            let id = *id;
            if !self.start_turn(h, id) {
                return;
            }
        }
        let Some(g) = self.glue.get_mut(h.slot()) else { return };
        let (shared, turn_handler) = match &g.app {
            AppSide::Task(s) => (s, None),
            AppSide::Turn(s, id) => (s, Some(*id)),
            AppSide::Waiting(_) => return,
            // Data arriving after the app's close resets in the core (RFC 1122 4.2.2.13).
            AppSide::Done => return,
        };
        let Some(conn) = self.endpoint.connection_mut(h) else { return };
        let mut st = shared.lock();
        if st.turn_over && (turn_handler.is_none() || st.eof_read) {
            // A turn that read the end of the stream waits for nothing: no input can come. (Nor
            // can a stream that is not served in turns.) As if it had returned None.
            st.turn_over = false;
            st.app_closed = true;
        }
        if let Some(k) = st.keepalive.take() {
            conn.set_keepalive(k);
        }
        if st.abort {
            st.abort = false;
            conn.abort(now);
        }
        // Received data up to the app's queue cap; the rest stays in the TCP receive buffer,
        // which keeps the advertised window honest.
        let chunk = &mut self.rx_chunk;
        while st.rx.len() < STREAM_RX_CAP {
            let want = (STREAM_RX_CAP - st.rx.len()).min(chunk.len());
            let n = conn.recv(&mut chunk[..want]);
            if n == 0 {
                break;
            }
            st.rx.extend(&chunk[..n]);
            st.rx_added += n as u64;
        }
        st.rx_blocked = conn.has_unread();
        if !st.rx_fin && conn.peer_finished() && !conn.has_unread() {
            st.rx_fin = true;
            st.rx_added += 1;
        }
        // Data the app wrote, as far as the send buffer takes it.
        let had_tx = st.tx.len();
        while !st.tx.is_empty() {
            let (a, _) = st.tx.as_slices();
            let n = conn.send(a);
            if n == 0 {
                break;
            }
            st.tx.drain(..n);
        }
        if st.tx.is_empty() && st.tx_shutdown {
            conn.shutdown(now);
        }
        let mut next = None;
        if st.app_closed && st.tx.is_empty() {
            // close(): FIN after what was queued, or RST if received data goes unread, here or
            // in our queue to the app (RFC 9293 3.10.4, RFC 1122 4.2.2.13).
            conn.close_discarding(now, st.rx.len());
            st.rx.clear();
            next = Some(AppSide::Done);
        } else if st.turn_over
            && let Some(id) = turn_handler
        {
            if st.error.is_some() {
                // The connection is gone (reset, timed out, aborted): nothing more to serve.
                next = Some(AppSide::Done);
            } else if (!st.rx.is_empty() || st.rx_fin) && (st.turn_consumed || st.rx_added > st.rx_seen) {
                // Input waits: the next turn, with the same shared state, if the turn just ended
                // read some or did not have all of it. A turn that was given input and read none
                // of it is called again only for new input: calling it again at once would spin
                // this thread, and every connection on it, on a handler that does not read.
                st.turn_over = false;
                st.turn_consumed = false;
                st.rx_seen = st.rx_added;
                st.read_waker = None;
                st.write_waker = None;
                let again = Stream::new(shared.clone());
                drop(st);
                // The lock is released: the handler may touch its stream before its first await.
                if let Some(handler) = self.turn_handlers.get(id as usize) {
                    spawn_turn(&self.local_tasks, handler(again));
                }
                return;
            } else if st.tx.is_empty() && st.rx.is_empty() && !st.rx_fin {
                // Quiet, and everything written is in the TCP core: forget the shared state.
                next = Some(AppSide::Waiting(id));
            }
            // Else the rest of the turn's output waits for room in the send buffer (a
            // Writable event brings us back).
        }
        let wake_reader = !st.rx.is_empty() || st.rx_fin;
        let wake_writer = st.tx.len() < had_tx || had_tx == 0;
        if wake_reader && let Some(w) = st.read_waker.take() {
            w.wake();
        }
        if wake_writer && let Some(w) = st.write_waker.take() {
            w.wake();
        }
        drop(st);
        if let Some(app) = next {
            self.glue.set_app(h.slot(), app);
        }
    }

    /// A waiting connection with input (data or the peer's FIN) gets a turn, with fresh shared
    /// state; returns whether it did. A reset or timeout is no input: a waiting app has nothing
    /// to learn from it.
    fn start_turn(&mut self, h: ConnectionHandle, id: u32) -> bool {
        let Some(conn) = self.endpoint.connection(h) else { return false };
        if !conn.has_unread() && !conn.peer_finished() {
            return false;
        }
        let Some(handler) = self.turn_handlers.get(id as usize) else { return false };
        let shared = Shared::new(h.slot(), conn.local(), conn.remote(), self.ctx.waker.clone());
        spawn_turn(&self.local_tasks, handler(Stream::new(shared.clone())));
        self.glue.set_app(h.slot(), AppSide::Turn(shared, id));
        true
    }

    fn drain_events(&mut self, now: Instant) {
        while let Some((h, event)) = self.endpoint.poll_event() {
            match event {
                tcp::Event::Closed(reason) => {
                    let stats = &self.ctx.stats;
                    match reason {
                        tcp::CloseReason::Reset => stats.closed_reset.fetch_add(1, Ordering::Relaxed),
                        tcp::CloseReason::TimedOut => stats.closed_timeout.fetch_add(1, Ordering::Relaxed),
                        tcp::CloseReason::Aborted => stats.closed_aborted.fetch_add(1, Ordering::Relaxed),
                        tcp::CloseReason::Normal => 0,
                    };
                    // A waiting or done app side has no state to tell.
                    if let Some(shared) = self.glue.get(h.slot()).and_then(|g| g.app.shared()) {
                        let mut st = shared.lock();
                        st.error = match reason {
                            tcp::CloseReason::Normal => None,
                            tcp::CloseReason::Reset => Some(StreamError::Reset),
                            tcp::CloseReason::TimedOut => Some(StreamError::TimedOut),
                            tcp::CloseReason::Aborted => Some(StreamError::Aborted),
                        };
                        if st.error.is_none() {
                            st.rx_fin = true;
                        }
                        if let Some(w) = st.read_waker.take() {
                            w.wake();
                        }
                        if let Some(w) = st.write_waker.take() {
                            w.wake();
                        }
                    }
                }
                tcp::Event::Released { local, remote } => {
                    // Gone for good (after TIME_WAIT for active closes): forget the flow, unless
                    // a new incarnation of the tuple (RFC 6191) holds the FLOWS entry by now.
                    if self.endpoint.lookup(local, remote).is_none()
                        && let Err(e) = self.ctx.flows.remove(local, remote)
                    {
                        tracing::debug!("FLOWS remove for {remote}: {e}");
                    }
                    // Only if no live connection holds the slot again.
                    if !self.endpoint.contains(h) {
                        self.glue.remove(h.slot());
                    }
                    self.ctx.stats.closed.fetch_add(1, Ordering::Relaxed);
                }
                _ => self.service(now, h),
            }
        }
    }

    fn transmit(&mut self, xsk: &mut XskSocket, now: Instant) {
        for (link, local, remote, header) in std::mem::take(&mut self.syn_acks) {
            let hlen = wire::header_len(local.is_ipv6());
            let sent = xsk.send(|buf| {
                let tcp_len = tcp::segment::write(&header, &[], buf.get_mut(hlen..)?).ok()?;
                wire::finish(buf, &link, local, remote, tcp_len)
            });
            if sent {
                self.ctx.stats.tx_segments.fetch_add(1, Ordering::Relaxed);
            }
        }
        loop {
            if xsk.tx_room() == 0 {
                xsk.flush();
                if xsk.tx_room() == 0 {
                    break;
                }
            }
            let scratch = &mut self.scratch;
            let Some(out) = self.endpoint.poll_transmit(now, &mut scratch[..]) else { break };
            let link = out
                .handle
                .and_then(|h| self.glue.get(h.slot()))
                .map(|g| g.link)
                .unwrap_or(self.last_link);
            let hlen = wire::header_len(out.local.is_ipv6());
            let tcp_len = out.len;
            let sent = xsk.send(|buf| {
                buf.get_mut(hlen..hlen + tcp_len)?.copy_from_slice(&scratch[..tcp_len]);
                wire::finish_ecn(buf, &link, out.local, out.remote, tcp_len, out.ect)
            });
            if sent {
                self.ctx.stats.tx_segments.fetch_add(1, Ordering::Relaxed);
            }
        }
        xsk.flush();
    }

    fn abort_everything(&mut self, now: Instant) {
        let handles: Vec<ConnectionHandle> =
            self.glue.slots().filter_map(|slot| self.endpoint.handle_for_slot(slot)).collect();
        for h in handles {
            if let Some(conn) = self.endpoint.connection_mut(h) {
                conn.abort(now);
            }
        }
    }

    fn answer_conns_requests(&mut self, now: Instant) {
        while let Ok(reply) = self.ctx.conns_requests.try_recv() {
            let rows = self
                .endpoint
                .infos()
                .map(|(h, info)| {
                    let seen = self
                        .ctx
                        .last_seen
                        .get(h.slot())
                        .map(Instant::from_nanos)
                        .unwrap_or(info.last_activity)
                        .max(info.last_activity);
                    ConnInfo {
                        local: info.local,
                        remote: info.remote,
                        state: info.state.to_string(),
                        idle_ms: now.saturating_duration_since(seen).as_millis() as u64,
                        keepalive_probes: info.keepalive_probes_sent,
                        queue: self.ctx.queue,
                    }
                })
                .collect();
            let _ = reply.send(rows);
        }
    }

    /// Sleep until a frame arrives, an app pokes us, or the next timer is due (at most 100 ms,
    /// so stop requests and conns queries are noticed). This thread's apps run meanwhile.
    async fn sleep(&mut self, xsk: &tokio::io::unix::AsyncFd<XskFd>) {
        let t = now();
        let timeout = match self.endpoint.poll_timeout() {
            Some(at) => at.saturating_duration_since(t).min(Duration::from_millis(100)),
            None => Duration::from_millis(100),
        };
        if timeout.is_zero() {
            return;
        }
        let waker = &self.ctx.waker;
        tokio::select! {
            biased;
            () = std::future::poll_fn(|cx| waker.poll_notified(cx)) => {}
            r = xsk.readable() => {
                if let Ok(mut guard) = r {
                    // The next turn drains the ring; a frame arriving later sets it again.
                    guard.clear_ready();
                }
            }
            () = tokio::time::sleep(timeout) => {}
        }
    }
}

/// How the control socket asks a queue thread for its connections: a reply channel.
pub type ConnsRequest = mpsc::Sender<Vec<ConnInfo>>;

/// Shared by every queue thread and the control socket.
pub struct EngineShared {
    pub stats: Vec<Arc<QueueStats>>,
    pub conns_requests: Vec<(Mutex<mpsc::Sender<ConnsRequest>>, Arc<EngineWaker>)>,
}

impl EngineShared {
    /// Every queue's connections (each thread answers within its next loop turn).
    pub fn conns(&self) -> Vec<ConnInfo> {
        let mut all = Vec::new();
        for (tx, waker) in &self.conns_requests {
            let (reply_tx, reply_rx) = mpsc::channel();
            if tx.lock().unwrap_or_else(|e| e.into_inner()).send(reply_tx).is_err() {
                continue;
            }
            waker.notify(u32::MAX);
            if let Ok(rows) = reply_rx.recv_timeout(Duration::from_secs(2)) {
                all.extend(rows);
            }
        }
        all
    }

    pub fn stats(&self) -> Vec<(&'static str, u64)> {
        let mut sum: Vec<(&'static str, u64)> = Vec::new();
        for q in &self.stats {
            for (i, (k, v)) in q.snapshot().into_iter().enumerate() {
                if let Some(slot) = sum.get_mut(i) {
                    slot.1 += v;
                } else {
                    sum.push((k, v));
                }
            }
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(slot: u32) -> Arc<Shared> {
        Shared::new(slot, "198.18.0.1:80".parse().unwrap(), "198.18.0.2:4000".parse().unwrap(), Arc::new(EngineWaker::new()))
    }

    #[test]
    fn the_glue_table_counts_connections_and_waiting_ones() {
        let mut t = GlueTable::default();
        assert!(t.is_empty());
        t.insert(5, Glue { link: Link::default(), app: AppSide::Turn(shared(5), 0) });
        t.insert(0, Glue { link: Link::default(), app: AppSide::Task(shared(0)) });
        assert_eq!((t.len, t.waiting), (2, 0));
        assert!(t.get(3).is_none(), "slots between are empty");
        let s = match &t.get(5).unwrap().app {
            AppSide::Turn(s, _) => Arc::downgrade(s),
            _ => unreachable!("inserted as a turn"),
        };
        t.set_app(5, AppSide::Waiting(0));
        assert_eq!((t.len, t.waiting), (2, 1));
        assert!(s.upgrade().is_none(), "a waiting connection keeps no shared state");
        t.set_app(5, AppSide::Waiting(0));
        assert_eq!(t.waiting, 1, "waiting again is not counted twice");
        t.set_app(5, AppSide::Turn(shared(5), 0));
        t.set_app(5, AppSide::Waiting(0));
        // A new incarnation in the slot replaces the old glue, counts and all.
        t.insert(5, Glue { link: Link::default(), app: AppSide::Turn(shared(5), 0) });
        assert_eq!((t.len, t.waiting), (2, 0));
        t.set_app(5, AppSide::Waiting(0));
        assert_eq!(t.slots().collect::<Vec<_>>(), vec![0, 5]);
        t.remove(5);
        t.remove(5);
        assert_eq!((t.len, t.waiting), (1, 0));
        t.set_app(9, AppSide::Waiting(0));
        assert_eq!((t.len, t.waiting), (1, 0), "no glue, nothing to change");
        t.remove(0);
        assert!(t.is_empty());
    }

    #[test]
    fn a_slot_of_glue_is_small() {
        // Every slot of the table costs this, for every connection, waiting or not.
        assert!(std::mem::size_of::<Option<Glue>>() <= 32, "{} B", std::mem::size_of::<Option<Glue>>());
    }
}
