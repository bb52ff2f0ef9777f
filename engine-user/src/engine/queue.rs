//! The queue loop: one thread per RX queue, shared-nothing, each owning an AF_XDP socket, a TCP
//! endpoint (the sans-IO core) and the glue of its connections. The loop does the I/O around
//! the endpoint, in the shape of quinn's `EndpointDriver` (drive_recv, handle_events,
//! drive_send):
//!
//! 1. receive a batch of frames and feed them to the endpoint; a segment for no connection goes
//!    to [`Endpoint::accept_cookie`] (a new connection for its listener, or a reset);
//! 2. serve the connections whose applications poked the thread ([`Glue::serve_poked`]);
//! 3. run expired timers;
//! 4. handle the endpoint's events ([`Glue::handle_events`]);
//! 5. transmit what the endpoint wants to send;
//! 6. answer control requests, publish the counters;
//! 7. sleep until a frame arrives, an application pokes, or the next timer is due.
//!
//! The loop is a task on the thread's own single-threaded tokio runtime, which also runs the
//! apps of listeners served on the engine threads ([`Accept::Local`](super::listeners::Accept),
//! [`Accept::Turns`](super::listeners::Accept)): their reads and writes wake nothing across
//! threads, so a request/response turn costs one wakeup, not three.

use std::{
    collections::{HashSet, VecDeque},
    net::SocketAddr,
    os::fd::{AsRawFd, OwnedFd, RawFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        mpsc,
    },
    time::Duration,
};

use engine_common::{maps, synack::{self, Syn, SynAck}};
use synx_tcp::{
    self as tcp, Instant,
    endpoint::{Disposition, DropReason, Endpoint, Refusal},
};

use super::{
    coalesce::{Coalescing, Demand},
    glue::{Glue, Moved},
    gso::{GsoMode, Offload, Shipped, Written},
    handoff::{Handed, Handoff, MAX_HOPS, Owner},
    memory::Memory,
    listeners::Listeners,
    requests::{self, ConnsRequest},
    stats::{QueueStats, bump},
};
use crate::{
    api::EngineWaker,
    bpf::{CookieChecker, FlowTable, ProbeAnswerTable, RxBacklog, monotonic_ns},
    wire::{self, Link},
    xsk::{XskConfig, XskSocket},
};

/// What a queue thread hands a successor: its connections, and the sockets their apps carried.
pub type QueueHandover = (Vec<Moved>, Vec<OwnedFd>);

/// What a queue thread needs from the rest of the engine.
pub struct QueueContext {
    pub queue: u32,
    pub tcp: tcp::Config,
    /// Connections of this queue at most: its range of FLOWS slots starts at
    /// `slot_base` (the endpoint numbers its slots from 0).
    pub max_conns: u32,
    pub slot_base: u32,
    /// With several queues: who owns a tuple, and the way to hand it frames.
    pub handoff: Option<Arc<Handoff>>,
    /// The engine's memory account and limits.
    pub memory: Arc<Memory>,
    /// RX queues of the engine (each frees its share when memory runs over).
    pub queues: u32,
    /// Connections this queue accepts at most now (up to `max_conns`; a reload may lower it).
    pub conn_limit: Arc<AtomicU32>,
    pub busy_poll: Duration,
    /// How long frames of several connections may wait on the TX ring for more (0: never).
    pub tx_coalesce: Duration,
    /// The interface's NAPI deferral, when synx manages it: this queue's [`Demand`] asks.
    pub coalescing: Option<Arc<Coalescing>>,
    /// Whether trains of segments leave through the segmentation offload.
    pub gso: GsoMode,
    pub listeners: Arc<Listeners>,
    pub flows: FlowTable,
    pub cookies: CookieChecker,
    /// Where to report a tuple whose cookie ACK this queue took, while SYN-ACKs are
    /// retransmitted (`super::synack_retry`).
    pub established: Option<Arc<super::synack_retry::Established>>,
    pub rx_backlog: RxBacklog,
    /// Where XDP takes the answers to this queue's keepalive probes (see [`XdpAnswers`]).
    pub probe_answers: ProbeAnswerTable,
    pub stats: Arc<QueueStats>,
    pub stop: Arc<AtomicBool>,
    /// Set when SIGTERM's grace period ends: reset what is left.
    pub abort_all: Arc<AtomicBool>,
    /// Nonzero once the engine hands its connections to a successor: the end of the grace
    /// (CLOCK_MONOTONIC ns), when what has not become quiescent is reset.
    pub hand_over: Arc<AtomicU64>,
    /// Connections a predecessor handed this queue, each with the socket its app carried, if
    /// any; imported before the first frame.
    pub imports: Vec<(Moved, Option<OwnedFd>)>,
    /// This engine takes over: the predecessor's socket on the queue may take a moment to go.
    pub taking_over: bool,
    pub conns_requests: mpsc::Receiver<ConnsRequest>,
    pub waker: Arc<EngineWaker>,
    #[cfg(feature = "fault-injection")]
    pub health: Arc<super::health::Health>,
}

/// Where the core finds the answers XDP took to this queue's keepalive probes
/// (`engine_common::maps::PROBE_ANSWERS`): the entries of its slots, from `slot_base` on.
struct XdpAnswers {
    table: ProbeAnswerTable,
    slot_base: u32,
}

impl tcp::ProbeAnswers for XdpAnswers {
    fn take(&mut self, slot: u32) -> Option<tcp::TakenAnswer> {
        let a = self.table.take(self.slot_base.checked_add(slot)?)?;
        Some(tcp::TakenAnswer { at: Instant::from_nanos(a.at_ns), tsval: a.tsval })
    }
}

/// A keepalive probe about to leave: XDP may take its answer (see [`XdpAnswers`]); or the
/// first other segment of its connection since: XDP takes it no more.
fn expect_answer(answers: &ProbeAnswerTable, slot_base: u32, out: &tcp::endpoint::Transmit) {
    let Some(slot) = out.handle.and_then(|h| slot_base.checked_add(h.slot())) else { return };
    if let Some(answer) = &out.probe_answer {
        answers.arm(slot, answer);
    } else if out.answer_withdrawn {
        answers.disarm(slot);
    }
}

/// Whose segments one transmit wrote: connections (a run of segments of one counts once) and
/// others (SYN-ACKs, resets: each its own peer's).
#[derive(Default)]
struct Senders {
    n: u32,
    last: Option<tcp::ConnectionHandle>,
}

impl Senders {
    fn saw(&mut self, handle: Option<tcp::ConnectionHandle>) {
        match handle {
            Some(h) if self.last == Some(h) => {}
            Some(h) => (self.n, self.last) = (self.n + 1, Some(h)),
            None => self.other(),
        }
    }

    fn other(&mut self) {
        self.n += 1;
    }

    fn several(&self) -> bool {
        self.n >= 2
    }
}

/// The TCP header of a SYN-ACK from `local` to `remote` as `engine_common::synack` decided it.
pub(super) fn synack_header(local: SocketAddr, remote: SocketAddr, answer: &SynAck) -> tcp::segment::Header {
    use tcp::segment::{Flags, Header, Options};
    Header {
        src_port: local.port(),
        dst_port: remote.port(),
        seq: tcp::SeqNum(answer.seq),
        ack: tcp::SeqNum(answer.ack),
        flags: Flags(answer.flags()),
        window: answer.window,
        options: Options {
            mss: Some(answer.mss),
            window_scale: answer.wscale,
            sack_permitted: answer.sack,
            timestamps: answer.ts,
            ..Options::default()
        },
        ..Header::default()
    }
}

/// The engine's clock: CLOCK_MONOTONIC, as XDP's FLOWS claims.
fn now() -> Instant {
    Instant::from_nanos(monotonic_ns())
}

/// Where a TCP header keeps its flags.
const FLAGS_OFFSET: usize = 13;

/// Frames taken from the AF_XDP ring per loop turn.
const RX_BATCH: u32 = 256;

/// Connections whose due timers are served per loop turn, at most, when the turn's read emptied
/// the RX ring: as many as the frames a turn reads. A million keepalive deadlines coming due
/// together then go out a batch a turn, each batch's answers read before the next is sent,
/// instead of all in one turn, whose answers overflow the RX ring and hold XDP's backlog above
/// `RX_BACKLOG_LIMIT`, over which XDP answers new SYNs only at a trickle (a million
/// connections probed every 10 s left a client's SYNs unanswered for 30 s). Timers fire late
/// only when the thread has more due than it can serve.
const TIMER_BATCH: usize = RX_BATCH as usize;

/// Due timers served in a turn whose read filled its batch (more frames wait): frames first, so
/// that a backlog drains, by RX_BATCH - TIMER_BATCH_BEHIND frames a turn at least, even when
/// every timer served brings an answer (with equal batches a backlog would stay as deep as it
/// got); a few timers all the same, so that frames that never stop coming delay timers but do
/// not stop them.
const TIMER_BATCH_BEHIND: usize = 16;

/// SYN-ACKs built in userspace waiting for the next transmit, at most this many.
const MAX_PENDING_SYN_ACKS: usize = 1024;

/// How often the kernel's AF_XDP drop counters are read.
const XSK_STATS_PERIOD: Duration = Duration::from_millis(100);

/// While stopping, how often a queue looks whether only TIME_WAIT is left.
const STOP_CHECK_PERIOD: Duration = Duration::from_millis(20);

/// How often a successor tries to bind a queue its predecessor has just left (10 ms apart).
const BIND_RETRIES: u32 = 200;

/// While handing over, how often the connections are looked through for those that can go.
const HANDOVER_PERIOD: Duration = Duration::from_millis(1);

/// How often the memory limits and the persist timeout are checked.
const LIMITS_PERIOD: Duration = Duration::from_millis(100);

/// How often at most an engine thread gives the allocator's free memory back to the kernel,
/// and after how many connections came or went (see [`QueueDriver::trim_heap`]).
const TRIM_PERIOD: Duration = Duration::from_secs(1);
const TRIM_AFTER: usize = 256;

/// How long the FLOWS entry of a tuple whose TIME_WAIT a SYN ended stays for the new
/// incarnation's cookie ACK (one RTT after our SYN-ACK; a retransmitted SYN is answered from
/// userspace meanwhile), and for how many tuples at most; after that it goes, and XDP answers
/// the tuple as any unknown one.
const KEEP_FLOW_FOR: Duration = Duration::from_secs(1);
const MAX_KEPT_FLOWS: usize = 4096;

/// The longest sleep: stop requests and conns queries are noticed within it.
const MAX_SLEEP: Duration = Duration::from_millis(100);

/// The longest sleep while the device holds back what we send (see [`QueueDriver::sleep`]):
/// the socket turning writable wakes us sooner.
const TX_STALL_SLEEP: Duration = Duration::from_millis(1);

/// One RX queue's driver: the I/O around its endpoint and glue.
struct QueueDriver {
    ctx: QueueContext,
    /// How many clients sent lately: whether this queue asks for the interface's deferral.
    demand: Demand,
    endpoint: Endpoint,
    glue: Glue,
    /// Frames other queues handed us, taken from our inbox (kept to reuse its allocation).
    handed: std::collections::VecDeque<Handed>,
    /// SYN-ACKs built in userspace (TIME_WAIT reuse), sent with the next transmit batch.
    syn_acks: Vec<(Link, SocketAddr, SocketAddr, tcp::segment::Header)>,
    /// Tuples whose TIME_WAIT a SYN ended (RFC 6191), their FLOWS entry kept for the new
    /// incarnation, and since when (oldest first; a tuple a new connection took stays in the
    /// queue, not in the set). Keeping it saves a delete and an insert per reused tuple (a
    /// client cycling its ports meets TIME_WAIT on every connection).
    /// (Keyed as the endpoint's tuple index, `keyed_hasher`: clients choose these tuples, and
    /// the set is looked up on every cookie ACK.)
    kept: HashSet<(SocketAddr, SocketAddr), foldhash::quality::SeedableRandomState>,
    kept_since: VecDeque<(Instant, SocketAddr, SocketAddr)>,
    /// Frames taken from the socket, frames the kernel dropped, and their sum as XDP last saw
    /// it ([`QueueDriver::publish_rx_progress`]).
    consumed: u64,
    kernel_dropped: u64,
    published: u64,
    last_xsk_stats: Instant,
    last_limits: Instant,
    /// When the heap was last trimmed, and the connections (held, folded) then and at the last
    /// look.
    last_trim: Instant,
    trimmed_at: (usize, usize),
    last_conns: (usize, usize),
    /// While handing over: the connections handed over so far, their tuples (whose segments
    /// are dropped unseen: the successor answers them), the last look, whether the grace ended.
    moved: Vec<Moved>,
    /// The sockets the moved connections' apps carried (`MovedApp::Resume` indexes them).
    carried: Vec<OwnedFd>,
    moved_tuples: HashSet<(SocketAddr, SocketAddr)>,
    last_handover: Instant,
    handover_reset: bool,
    /// The timer the loop sleeps on, reset at each sleep instead of made anew: a new tokio
    /// timer registers in the time wheel and, its deadline being earlier than the one the
    /// runtime last slept until, unparks the runtime (an eventfd write, then an epoll_wait
    /// that returns at once), a write and a wakeup per sleep, i.e. per request at low load.
    /// Moving a registered timer later only marks it: no write; the runtime still wakes at the
    /// earlier deadline if it sleeps that long, and then re-queues the timer (at most one such
    /// wakeup per deadline given up, which at low load is one per MAX_SLEEP).
    wake_timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// The segmentation offload (`--gso auto`), if the interface's packet socket opened.
    gso: Option<Offload>,
}

/// The AF_XDP socket's fd, for readiness through the runtime's epoll (not closed on drop).
struct XskFd(RawFd);

impl AsRawFd for XskFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Run one queue until `ctx.stop` is set and every connection is gone (or aborted), or until
/// it has handed every connection over (`ctx.hand_over`; returned, its socket closed), on a
/// single-threaded runtime of its own (with the apps served on this thread).
pub fn run_queue(
    iface: &str,
    ctx: QueueContext,
    xsk_cfg: XskConfig,
    ready: &mpsc::Sender<anyhow::Result<u32>>,
) -> anyhow::Result<QueueHandover> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // The loop is a task of the thread's LocalSet, beside the apps' tasks, not the future the
    // runtime blocks on: an app that pokes the loop (its response written) then queues it in
    // the LocalSet, which runs it in the same pass. Woken as the runtime's own future, it
    // would cost the runtime a look at its driver first (an epoll_wait that finds nothing),
    // a system call per request at low load.
    let (iface, ready) = (iface.to_owned(), ready.clone());
    let local = tokio::task::LocalSet::new();
    let task = local.spawn_local(async move { serve_queue(&iface, ctx, xsk_cfg, &ready).await });
    match local.block_on(&rt, task) {
        Ok(handover) => handover,
        // A panic of the loop goes on unwinding this thread, as it did before it was a task:
        // the engine's health counts and reports it.
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(anyhow::anyhow!("queue loop: {e}")),
    }
}

/// Let this thread's other tasks run, then come back: the loop queues itself behind the tasks
/// its work woke, in the LocalSet that runs them all. Unlike `tokio::task::yield_now`, it
/// does not go through the runtime's driver (an epoll_wait each time); the LocalSet gives the
/// driver its turn every 61 tasks.
async fn yield_to_apps() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return std::task::Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await
}

async fn serve_queue(
    iface: &str,
    ctx: QueueContext,
    xsk_cfg: XskConfig,
    ready: &mpsc::Sender<anyhow::Result<u32>>,
) -> anyhow::Result<QueueHandover> {
    if !ctx.tx_coalesce.is_zero() {
        // The hold's sleep (see the loop) is tens of microseconds: Linux stretches a normal
        // thread's sleeps by its timer slack, 50 us by default (prctl(2) PR_SET_TIMERSLACK).
        // SAFETY: prctl with integer arguments, on this thread only.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong) };
    }
    let mut xsk = XskSocket::open(iface, ctx.queue, xsk_cfg);
    // A successor binds right after its predecessor closed its socket on the queue, whose
    // release the kernel may finish a moment later (the bind fails with EBUSY meanwhile).
    for _ in 0..BIND_RETRIES {
        if xsk.is_ok() || !ctx.taking_over {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        xsk = XskSocket::open(iface, ctx.queue, xsk_cfg);
    }
    let mut xsk = xsk?;
    // Edge-triggered readiness: cleared when the loop wakes, set again by the next frame (read)
    // or by the kernel freeing sent frames (write: see `QueueDriver::sleep`).
    // SAFETY: `xsk` owns the fd and outlives `xsk_ready` (declared after it, dropped before).
    let xsk_ready = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(XskFd(xsk.fd()), tokio::io::Interest::READABLE | tokio::io::Interest::WRITABLE)
    }
    .map_err(|e| e.into_parts().1)?;
    ctx.flows.register_xsk(ctx.queue, xsk.fd())?;
    tracing::info!(queue = ctx.queue, zero_copy = xsk.zero_copy(), tx_budget = xsk.tx_budget(), busy_poll_budget = xsk_cfg.busy_poll_budget, "AF_XDP socket bound");
    let gso = match ctx.gso {
        GsoMode::Auto => match Offload::open(iface, crate::xsk::FRAME_SIZE as usize - wire::header_len(true)) {
            Ok(o) => {
                tracing::info!(queue = ctx.queue, tso = o.active(), "segmentation offload ready (used while the interface has TSO on)");
                Some(o)
            }
            Err(e) => {
                tracing::warn!(queue = ctx.queue, "no segmentation offload ({e}): sending frame by frame");
                None
            }
        },
        GsoMode::Off => None,
    };
    let mut ctx = ctx;
    let imports = std::mem::take(&mut ctx.imports);
    let mut endpoint = Endpoint::new(ctx.tcp.clone(), ctx.max_conns);
    endpoint.set_probe_answers(Box::new(XdpAnswers { table: ctx.probe_answers.clone(), slot_base: ctx.slot_base }));
    let mut q = QueueDriver {
        endpoint,
        glue: Glue::new(ctx.waker.clone(), ctx.stats.clone(), ctx.memory.clone()),
        handed: std::collections::VecDeque::new(),
        syn_acks: Vec::new(),
        kept: HashSet::with_hasher(tcp::endpoint::keyed_hasher()),
        kept_since: VecDeque::new(),
        consumed: 0,
        kernel_dropped: 0,
        published: 0,
        last_xsk_stats: Instant::from_nanos(0),
        last_limits: Instant::from_nanos(0),
        last_trim: Instant::from_nanos(0),
        trimmed_at: (0, 0),
        last_conns: (0, 0),
        moved: Vec::new(),
        carried: Vec::new(),
        moved_tuples: HashSet::new(),
        last_handover: Instant::from_nanos(0),
        handover_reset: false,
        wake_timer: Box::pin(tokio::time::sleep(MAX_SLEEP)),
        demand: Demand::new(),
        gso,
        ctx,
    };
    q.import(imports);
    let _ = ready.send(Ok(q.ctx.queue));
    let mut last_work = now();
    let mut stop_checked = Instant::from_nanos(0);
    loop {
        if q.ctx.stop.load(Ordering::Relaxed) {
            let t = now();
            if !q.glue.stopping() {
                q.glue.stop(&mut q.endpoint, t);
            }
            // Done when nothing but TIME_WAIT is left (each one's peer has closed too; a late
            // retransmitted FIN then meets the kernel, whose reset ends the peer's LAST_ACK
            // as our ACK would have). Looked at every STOP_CHECK_PERIOD: it walks every slot.
            if t.saturating_duration_since(stop_checked) >= STOP_CHECK_PERIOD {
                stop_checked = t;
                if q.endpoint.infos().all(|(_, c)| c.state == tcp::State::TimeWait) {
                    xsk.flush();
                    return Ok(Default::default());
                }
            }
        }
        if q.ctx.abort_all.load(Ordering::Relaxed) {
            q.glue.abort_all(&mut q.endpoint, now());
        }
        let hand_over = q.ctx.hand_over.load(Ordering::Relaxed);
        if hand_over != 0 && q.hand_over(now(), hand_over) {
            xsk.flush();
            return Ok((std::mem::take(&mut q.moved), std::mem::take(&mut q.carried)));
        }
        if !q.glue.resuming().is_empty() {
            q.resume_apps(now());
        }
        #[cfg(feature = "fault-injection")]
        q.ctx.health.panic_if_injected(q.ctx.queue);
        let from_ring = q.receive(&mut xsk);
        let received = from_ring + q.receive_handed();
        if received > 0 && q.glue.tasks() > 0 {
            // Let this thread's apps read what just arrived before anything is sent: what they
            // write back then carries the ACK (and the window update their read made due) in
            // this turn's transmit, instead of a pure ACK frame going out ahead of it (a
            // request/response connection sent 4 frames instead of 3).
            yield_to_apps().await;
        }
        let poked = q.glue.serve_poked(&mut q.endpoint, now());
        let t = now();
        q.endpoint.handle_timeouts(t, if from_ring >= RX_BATCH { TIMER_BATCH_BEHIND } else { TIMER_BATCH });
        q.enforce_limits(t);
        q.handle_events(t);
        q.transmit(&mut xsk, t, true);
        if q.endpoint.reserving() {
            // A TIME_WAIT a new SYN ended was released by this transmit (the SYN-ACK went
            // out): let it go now, before the next receive, which can hold the new
            // incarnation's ACK: its slot is held for that incarnation only from then on
            // (`Endpoint::reserved`).
            q.handle_events(t);
        }
        requests::answer_conns(&q.ctx.conns_requests, &q.endpoint, q.ctx.queue, t);
        q.publish_stats(&xsk, t);
        if let Some(c) = &q.ctx.coalescing
            && let Some(wants) = q.demand.tick(t)
        {
            c.want(wants);
        }
        if received > 0 {
            // More frames may be waiting: look again (the apps had their turn above).
            last_work = t;
            continue;
        }
        if poked > 0 {
            last_work = t;
        } else if t.saturating_duration_since(last_work) < q.ctx.busy_poll {
            // Right after work the next frame or app write usually follows within microseconds
            // (a request's response, the next segment of a burst): look again instead of
            // paying a sleep and a wakeup for it.
            std::thread::yield_now();
            tokio::task::yield_now().await;
            continue;
        }
        if let Some(since) = xsk.tx_held_since() {
            // Frames wait on the TX ring for more (see `transmit`): sleep out the rest of the
            // hold, then look again; what arrives meanwhile waits in the RX ring and joins
            // them. A plain sleep, not the runtime's: its timers tick in milliseconds, and this
            // thread's apps wait these microseconds as the frames do. Polling instead (yielding
            // in a loop) was busy time too: 31.7 against 28.3 us of server CPU a connection.
            let left = q.ctx.tx_coalesce.saturating_sub(Duration::from_nanos(t.as_nanos().saturating_sub(since)));
            if !left.is_zero() {
                std::thread::sleep(left);
            }
            yield_to_apps().await;
            continue;
        }
        xsk.before_sleep();
        q.sleep(&xsk_ready, xsk.tx_blocked()).await;
    }
}

impl QueueDriver {
    /// Take the connections a predecessor handed this queue: each into the slot its FLOWS entry
    /// names, parked, its deadline armed; its app side waits for its next input.
    fn import(&mut self, imports: Vec<(Moved, Option<OwnedFd>)>) {
        for (m, fd) in imports {
            match self.endpoint.import(&m.conn) {
                Ok(h) => {
                    self.ctx.flows.adopt(m.conn.local, m.conn.remote);
                    self.glue.adopt(h, m, fd);
                    bump(&self.ctx.stats.moved_in);
                }
                // Not expected from a predecessor with the same --max-conns and queues; its FLOWS
                // entry then names a slot nobody holds, and the peer's next segment is refused.
                Err(e) => tracing::warn!("taking over {} -> {}: {e}", m.conn.remote, m.conn.local),
            }
        }
    }

    /// Start the apps of connections that carried a socket (from a predecessor, or back from a
    /// handover that could not happen) once their listeners are served.
    fn resume_apps(&mut self, now: Instant) {
        for slot in self.glue.resuming().to_vec() {
            self.glue.resume(&mut self.endpoint, now, slot, &self.ctx.listeners);
        }
    }

    /// One step of handing over (`deadline_ns`: the end of the grace): every
    /// [`HANDOVER_PERIOD`] hand over the connections that can go; at the deadline reset the
    /// rest. Whether no connection is left (the queue is done).
    fn hand_over(&mut self, now: Instant, deadline_ns: u64) -> bool {
        self.glue.begin_handover();
        // The successor knows nothing of entries kept for new incarnations (it would reset
        // their SYNs): XDP answers those tuples again.
        while !self.kept_since.is_empty() {
            self.expire_kept(None);
        }
        if now.saturating_duration_since(self.last_handover) >= HANDOVER_PERIOD {
            self.last_handover = now;
            let before = self.moved.len();
            self.glue.hand_over(&mut self.endpoint, &mut self.moved, &mut self.carried);
            for m in &self.moved[before..] {
                self.moved_tuples.insert((m.conn.local, m.conn.remote));
            }
            self.ctx.stats.moved_out.fetch_add((self.moved.len() - before) as u64, Ordering::Relaxed);
        }
        if now.as_nanos() >= deadline_ns && !self.handover_reset {
            self.handover_reset = true;
            self.ctx.stats.takeover_resets.fetch_add(self.endpoint.len() as u64, Ordering::Relaxed);
            self.glue.abort_all(&mut self.endpoint, now);
        }
        self.endpoint.is_empty()
    }

    /// Take a batch of frames from the socket into the endpoint; returns how many. A connection
    /// that has received `STRETCH_ACK_LIMIT` bytes within the batch gets its ACK at once,
    /// mid-batch (with whatever else is ready to go), rather than one ACK for the whole batch:
    /// RFC 5681 4.2's ACK every second full-sized segment is a SHOULD that batching receivers
    /// stretch, and Linux stretches to a GRO aggregate (about 64 KB), not to 256 frames.
    fn receive(&mut self, xsk: &mut XskSocket) -> u32 {
        let mut received = 0;
        while received < RX_BATCH {
            let n = xsk.recv(RX_BATCH - received, |frame, flow| {
                let hint = flow.and_then(|f| self.slot_of(f));
                self.on_frame(now(), frame, 0, hint);
                self.endpoint.acks_overdue()
            });
            received += n;
            if n == 0 || !self.endpoint.acks_overdue() {
                break;
            }
            self.transmit(xsk, now(), false);
            bump(&self.ctx.stats.acks_mid_batch);
            if self.endpoint.acks_overdue() {
                // The TX ring is full: the rest of the batch waits for this turn's transmit.
                break;
            }
        }
        self.consumed += u64::from(received);
        self.publish_rx_progress();
        received
    }

    /// Take the frames other queues handed us into the endpoint; returns how many.
    fn receive_handed(&mut self) -> u32 {
        let Some(handoff) = self.ctx.handoff.clone() else { return 0 };
        let mut handed = std::mem::take(&mut self.handed);
        handoff.take(self.ctx.queue, &mut handed);
        let n = handed.len() as u32;
        for h in handed.drain(..) {
            self.on_frame(now(), &h.frame, h.hops, None);
        }
        self.handed = handed;
        n
    }

    /// Tell XDP how far we are (it counts what it redirects): while too much waits for us, it
    /// answers new SYNs only at a trickle (none once half the ring waits), whose final ACKs
    /// would otherwise overflow the socket and be lost, leaving clients connected to a server
    /// that never heard of them (a burst of 1M connects lost 81% of its final ACKs without
    /// this).
    fn publish_rx_progress(&mut self) {
        if self.consumed + self.kernel_dropped != self.published {
            self.published = self.consumed + self.kernel_dropped;
            self.ctx.rx_backlog.set_consumed(self.ctx.queue, self.published);
        }
    }

    /// Our endpoint's slot a FLOWS value names: none for a claim, no entry, or another
    /// queue's range (the endpoint checks the rest, see `Endpoint::handle_hinted`).
    fn slot_of(&self, flow: u32) -> Option<u32> {
        if flow & maps::CLAIM != 0 {
            return None;
        }
        flow.checked_sub(self.ctx.slot_base)
    }

    /// One frame, from our socket or (`hops` > 0) handed on by another queue; `hint`: the slot
    /// XDP's FLOWS named for it, if any.
    fn on_frame(&mut self, now: Instant, frame: &[u8], hops: u8, hint: Option<u32>) {
        let stats = &self.ctx.stats;
        let rx = match wire::parse(frame) {
            Ok(rx) => rx,
            Err(e) => {
                stats.count_wire(e);
                return;
            }
        };
        let (mut hdr, payload) = match tcp::segment::parse(rx.tcp) {
            Ok(p) => p,
            Err(_) => {
                bump(&stats.tcp_parse_errors);
                return;
            }
        };
        hdr.ce = rx.ce;
        bump(&stats.rx_segments);
        if self.ctx.coalescing.is_some() {
            // Only a queue whose interface synx manages counts its senders (one hash a frame).
            self.demand.saw(rx.remote);
        }
        // The TCP options as the wire carries them (XDP's cookie check counts these bytes too).
        let options_len = (rx.tcp.len() - payload.len()).saturating_sub(tcp::segment::HEADER_LEN) as u32;
        let mut payload = payload;
        if self.glue.handing_over()
            && (!payload.is_empty() || hdr.flags.fin())
            && let Some(h) = self.endpoint.lookup_hinted(rx.local, rx.remote, hint)
            && self.glue.holds_input_back(h.slot())
        {
            // Handing over: the connection waits between turns; its new input goes to the
            // successor (the peer sends it again, as after any loss), only what it acknowledges
            // is taken here.
            payload = &[];
            hdr.flags = tcp::Flags(hdr.flags.0 & !tcp::Flags::FIN.0);
            bump(&stats.held_back);
        }
        if !payload.is_empty()
            && self.glue.may_refuse_data()
            && let Some(h) = self.endpoint.lookup_hinted(rx.local, rx.remote, hint)
            && self.glue.refuses_data(h, rx.remote.ip())
        {
            // No memory for more of this connection's data: the peer sends it again later.
            bump(&stats.mem_refused);
            return;
        }
        let glue = &mut self.glue;
        match self.endpoint.handle_hinted(now, rx.local, rx.remote, hint, &hdr, payload, &mut |h, data| glue.deliver(h, data)) {
            Disposition::Delivered(h) => {
                self.glue.set_link(h.slot(), rx.link);
                if self.glue.is_moved(h.slot()) {
                    let listener = self.ctx.listeners.find(rx.local);
                    self.glue.resolve_moved(&mut self.endpoint, now, h, listener.as_deref());
                }
                self.glue.service(&mut self.endpoint, now, h);
            }
            // Handed over: the successor answers it (once this queue's socket is closed).
            Disposition::Unknown if self.moved_tuples.contains(&(rx.local, rx.remote)) => {}
            Disposition::Unknown => match self.owner(hops, rx.local, rx.remote) {
                Some(Owner::Queue(q)) => self.hand(q, frame, hops),
                owner => {
                    self.on_unknown(now, rx.link, rx.local, rx.remote, &hdr, payload, options_len, hint);
                    if let (Some(Owner::Me), Some(handoff)) = (owner, &self.ctx.handoff) {
                        // FLOWS names the owner now (or no one): our claim can go.
                        handoff.release(rx.local, rx.remote);
                    }
                }
            },
            Disposition::Dropped(DropReason::TimeWaitReuse) => {
                // RFC 6191: a new incarnation of a tuple in TIME_WAIT. The old one is gone from
                // the endpoint; answer the SYN as XDP would have, so the client need not
                // retransmit it (a 1 s stall for every port it reuses).
                self.answer_syn(rx.link, rx.local, rx.remote, &hdr);
                self.keep_flow(now, rx.local, rx.remote);
            }
            Disposition::Dropped(why) => stats.count_drop(why),
        }
    }

    /// Who serves a tuple our endpoint does not know (see [`Handoff`]); None with one queue, or
    /// for a frame handed on too often already (it stays here, claiming nothing). With
    /// `Owner::Me` this queue holds the tuple's claim until it has handled the frame.
    fn owner(&self, hops: u8, local: SocketAddr, remote: SocketAddr) -> Option<Owner> {
        let handoff = self.ctx.handoff.as_ref().filter(|_| hops < MAX_HOPS)?;
        let flows = &self.ctx.flows;
        Some(handoff.owner(self.ctx.queue, local, remote, || flows.get(local, remote)))
    }

    /// Hand `frame` to queue `q`, which owns its tuple.
    fn hand(&self, q: u32, frame: &[u8], hops: u8) {
        let Some(handoff) = &self.ctx.handoff else { return };
        let stats = &self.ctx.stats;
        match handoff.hand(q, Handed { frame: frame.into(), hops: hops + 1 }) {
            true => bump(&stats.handed_off),
            false => bump(&stats.handoff_dropped),
        }
    }

    /// A segment for no connection: the core accepts a cookie ACK for a listener or refuses it
    /// with a reset ([`Endpoint::accept_cookie`]). `options_len`: its TCP options' bytes on
    /// the wire (see `cookie::check_ack`); `hint`: the slot XDP's FLOWS named for it.
    #[allow(clippy::too_many_arguments)]
    fn on_unknown(
        &mut self,
        now: Instant,
        link: Link,
        local: SocketAddr,
        remote: SocketAddr,
        hdr: &tcp::segment::Header,
        payload: &[u8],
        options_len: u32,
        hint: Option<u32>,
    ) {
        self.endpoint.set_max_conns(self.ctx.conn_limit.load(Ordering::Relaxed));
        // Also while stopping: the ACK completes a handshake XDP answered before the stop, and
        // its client believes it is connected (served like the others, then closed).
        let listener = self.ctx.listeners.find(local);
        if self.glue.handing_over()
            && listener.as_ref().is_some_and(|l| !matches!(l.accept, super::listeners::Accept::Turns(_)))
        {
            // Handing over, a connection whose app holds it for life could not move: leave the
            // handshake to the successor (the client's next segment carries the same cookie).
            bump(&self.ctx.stats.held_back);
            return;
        }
        if hdr.flags.syn() && !hdr.flags.ack() && listener.is_some() {
            // RFC 9293 3.10.7.2: a SYN for a listener and no connection gets a SYN-ACK, as XDP
            // answers it (statelessly, no admission: that waits for the cookie ACK). Only a
            // FLOWS entry brought it here: one kept for a new incarnation (RFC 6191: the
            // client's retransmission, our SYN-ACK lost), XDP's claim, or the entry of a
            // connection released a moment ago and not yet forgotten, whose client reuses
            // the port at once (a reset here refused the connect of such a client in s35's
            // CI, right after the memory limit reset thousands of connections).
            self.answer_syn(link, local, remote, hdr);
            return;
        }
        let memory = &self.ctx.memory;
        if listener.is_some() && !memory.admit(remote.ip()) {
            // The source holds all the connections it may: refused, as a full table refuses.
            bump(&self.ctx.stats.source_limited);
            let before = self.endpoint.pending_resets();
            self.endpoint.reset_unknown(local, remote, hdr, payload.len());
            self.glue.note_stranger(&self.endpoint, before, link);
            self.forget_flow(local, remote);
            return;
        }
        let admitted = listener.is_some();
        let cookies = &self.ctx.cookies;
        let len = payload.len() as u32;
        let cookie = || cookies.check(local, remote, hdr.seq.0, len, options_len, hdr.ack.0, hdr.options.timestamps, now.as_nanos());
        let resets_before = self.endpoint.pending_resets();
        let accepted = self.endpoint.accept_cookie(now, local, remote, hdr, payload, listener, cookie);
        if let (Some(e), Ok(_) | Err(Refusal::Accept(_))) = (&self.ctx.established, &accepted) {
            // The handshake is over (its SYN-ACK need not be resent, `super::synack_retry`).
            e.push(local, remote);
        }
        match accepted {
            Ok((h, listener)) => {
                let slot = self.ctx.slot_base + h.slot();
                let routed = if self.kept.remove(&(local, remote)) {
                    if hint == Some(h.slot()) {
                        // The entry kept for this incarnation names its slot already: the
                        // core gave it its old incarnation's (`Endpoint::reserved`), and XDP
                        // read that from FLOWS for this very ACK. Only this queue writes a
                        // kept entry (XDP claims only tuples with none), so it still does.
                        bump(&self.ctx.stats.time_wait_slots_reused);
                        Ok(())
                    } else {
                        self.ctx.flows.replace(local, remote, slot)
                    }
                } else {
                    self.ctx.flows.insert(local, remote, slot)
                };
                self.glue.attach(&mut self.endpoint, now, h, link, &listener);
                if let Err(e) = routed {
                    // FLOWS is full even of live connections: XDP would not route this one's
                    // segments here, so reset it now rather than leave a client that believes
                    // it is connected (its app sees the connection aborted).
                    tracing::debug!("FLOWS insert for {remote}: {e}");
                    bump(&self.ctx.stats.flows_full);
                    if let Some(conn) = self.endpoint.connection_mut(h) {
                        conn.abort(now);
                    }
                    self.glue.service(&mut self.endpoint, now, h);
                }
            }
            Err(refusal) => {
                if admitted {
                    self.ctx.memory.leave(remote.ip());
                }
                let stats = &self.ctx.stats;
                bump(match refusal {
                    Refusal::NoListener => &stats.no_listener,
                    Refusal::BadCookie => &stats.cookie_rejected,
                    Refusal::Accept(_) => &stats.table_full,
                });
                // Whatever XDP's claim or a kept entry put in FLOWS for this tuple must go: no
                // connection holds it.
                self.forget_flow(local, remote);
                self.glue.note_stranger(&self.endpoint, resets_before, link);
            }
        }
    }

    /// Keep the FLOWS entry of a tuple whose TIME_WAIT a SYN just ended for its new incarnation,
    /// whose cookie ACK then updates it in place (see [`QueueDriver::kept`]); with too many
    /// kept, the oldest goes first.
    fn keep_flow(&mut self, now: Instant, local: SocketAddr, remote: SocketAddr) {
        if self.kept_since.len() >= MAX_KEPT_FLOWS {
            self.expire_kept(None);
        }
        if self.kept.insert((local, remote)) {
            self.kept_since.push_back((now, local, remote));
            bump(&self.ctx.stats.time_wait_flows_kept);
        }
    }

    /// Kept FLOWS entries no new connection took within [`KEEP_FLOW_FOR`] of `now` go (None:
    /// the oldest one, whatever its age; see [`QueueDriver::keep_flow`]).
    fn expire_kept(&mut self, now: Option<Instant>) {
        while let Some(&(since, local, remote)) = self.kept_since.front() {
            if now.is_some_and(|now| now.saturating_duration_since(since) < KEEP_FLOW_FOR) {
                break;
            }
            self.kept_since.pop_front();
            if self.kept.remove(&(local, remote))
                && self.endpoint.lookup(local, remote).is_none()
                && let Err(e) = self.ctx.flows.remove(local, remote)
            {
                tracing::debug!("FLOWS remove for {remote}: {e}");
            }
            if now.is_none() {
                break;
            }
        }
    }

    /// The FLOWS entry of a tuple no connection holds goes: XDP's claim, or an entry kept for a
    /// new incarnation (whose filter bit is counted).
    fn forget_flow(&mut self, local: SocketAddr, remote: SocketAddr) {
        let _ = if self.kept.remove(&(local, remote)) {
            self.ctx.flows.remove(local, remote)
        } else {
            self.ctx.flows.remove_claim(local, remote)
        };
    }

    /// The SYN-ACK XDP sends, built by the same policy (`engine_common::synack`) for a SYN that
    /// reached userspace.
    fn answer_syn(&mut self, link: Link, local: SocketAddr, remote: SocketAddr, syn: &tcp::segment::Header) {
        use tcp::segment::Flags;
        let o = &syn.options;
        let offer = Syn {
            isn: syn.seq.0,
            // RFC 9293 3.7.1: no MSS option means the default of the family.
            mss: o.mss.unwrap_or(synack::default_mss(local.is_ipv6())),
            wscale: o.window_scale,
            sack: o.sack_permitted,
            ts: o.timestamps.map(|(tsval, _)| tsval),
            // RFC 3168 6.1.1: an ECN-setup SYN has ECE and CWR set.
            ecn: syn.flags.contains(Flags::ECE) && syn.flags.contains(Flags::CWR),
        };
        let Some(answer) = self.ctx.cookies.answer(local, remote, &offer) else { return };
        let header = synack_header(local, remote, &answer);
        if self.syn_acks.len() < MAX_PENDING_SYN_ACKS {
            self.syn_acks.push((link, local, remote, header));
        }
    }

    /// Every [`LIMITS_PERIOD`]: the memory limits and the persist timeout (see
    /// [`super::memory`]).
    fn enforce_limits(&mut self, now: Instant) {
        if now.saturating_duration_since(self.last_limits) < LIMITS_PERIOD {
            return;
        }
        self.last_limits = now;
        let done = self.glue.enforce(&mut self.endpoint, now, self.ctx.queues);
        let s = &self.ctx.stats;
        s.mem_resets.fetch_add(done.memory_resets, Ordering::Relaxed);
        s.persist_resets.fetch_add(done.persist_resets, Ordering::Relaxed);
        self.trim_heap(now);
    }

    /// The heap's free pages back to the kernel (malloc_trim) once the number of connections
    /// held has moved by [`TRIM_AFTER`] since the last trim and then, with the number folded,
    /// stayed put for a [`LIMITS_PERIOD`]; at most every [`TRIM_PERIOD`]. New connections hold
    /// an unfolded TCB and the state of their app's first turn for a moment; once they fold,
    /// glibc keeps the freed memory resident (it returns only the top of a heap by itself), so
    /// a burst of new connections left RSS that no connection used: 10k idle connections
    /// opened at once grew RSS by 405 B each without this, 341 B with it (the idle bench). A
    /// trim walks the allocator's free lists with this thread's connections waiting, and what
    /// it gives back is faulted in again by the next allocations: trimming whenever busy
    /// connections folded and unfolded (keep-alive HTTP at c1000) raised p99 from 22-28 ms to
    /// 108-130 ms. So it runs once the connections have come (or gone) and settled, never
    /// while the same connections serve, fold and wake.
    fn trim_heap(&mut self, now: Instant) {
        let conns = (self.endpoint.len(), self.endpoint.parked());
        let settled = conns == self.last_conns;
        self.last_conns = conns;
        let moved = conns.0.abs_diff(self.trimmed_at.0);
        if !settled || moved < TRIM_AFTER || now.saturating_duration_since(self.last_trim) < TRIM_PERIOD {
            return;
        }
        (self.last_trim, self.trimmed_at) = (now, conns);
        #[cfg(target_env = "gnu")]
        {
            let started = std::time::Instant::now();
            // SAFETY: malloc_trim only gives free pages back; any thread may call it.
            unsafe { libc::malloc_trim(0) };
            let s = &self.ctx.stats;
            bump(&s.heap_trims);
            s.heap_trim_us.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
    }

    /// The endpoint's events, through the glue; a connection gone for good leaves FLOWS.
    fn handle_events(&mut self, now: Instant) {
        self.expire_kept(Some(now));
        let (flows, kept) = (&self.ctx.flows, &self.kept);
        self.glue.handle_events(&mut self.endpoint, now, |endpoint, local, remote| {
            // Released (after TIME_WAIT for active closes): forget the flow, unless a new
            // incarnation of the tuple (RFC 6191) holds the FLOWS entry by now, or is being
            // made (the entry kept for it).
            if endpoint.lookup(local, remote).is_none()
                && !kept.contains(&(local, remote))
                && let Err(e) = flows.remove(local, remote)
            {
                tracing::debug!("FLOWS remove for {remote}: {e}");
            }
        });
    }

    /// Send what is due: answers to SYNs, then each segment the endpoint has ready.
    ///
    /// With `coalesce` (and --tx-coalesce), frames from several connections (or SYN-ACKs and
    /// resets, each its own peer's) wait on the TX ring for more, as a NIC holds its interrupt
    /// for more packets: for up to --tx-coalesce after the first, or until 64 wait, the loop
    /// sleeping meanwhile (`XskSocket::flush_held`); later turns add theirs, whatever their
    /// senders. One connection's frames alone go at once: its peer may be waiting for them
    /// and nobody else's frames are coming (a request/response connection would pay the
    /// hold on every response). Each wakeup costs a system call and an IPI to the receiving
    /// CPU (a VM exit on a VM); at the connection-rate row this made 0.23-0.25 wakeups a
    /// connection instead of 0.53-0.67, and 28.3 us of server CPU a connection, not 33.1.
    fn transmit(&mut self, xsk: &mut XskSocket, now: Instant, coalesce: bool) {
        let mut senders = Senders::default();
        for (link, local, remote, header) in std::mem::take(&mut self.syn_acks) {
            let hlen = wire::header_len(local.is_ipv6());
            let sent = xsk.send(|buf| {
                let tcp_len = tcp::segment::write(&header, &[], buf.get_mut(hlen..)?).ok()?;
                wire::finish(buf, &link, local, remote, tcp_len).map(|len| 0..len)
            });
            if sent {
                bump(&self.ctx.stats.tx_segments);
                senders.other();
            }
        }
        // The core writes each segment straight into its TX frame, after room for the longest
        // headers (Ethernet and IPv6); an IPv4 frame starts further in, where its shorter
        // headers begin. A segment written elsewhere and copied in cost a copy of every byte
        // sent.
        let room = wire::header_len(true);
        let (endpoint, glue, stats) = (&mut self.endpoint, &mut self.glue, &self.ctx.stats);
        let (answers, slot_base) = (&self.ctx.probe_answers, self.ctx.slot_base);
        if let Some(offload) = self.gso.as_mut().filter(|o| o.in_use()) {
            // The core writes each segment at the tail of the train being gathered; the
            // offload sends full trains through its socket and the rest through AF_XDP. A
            // segment is asked for only while AF_XDP could take what `take` may send (two
            // frames), and a train that has to go frame by frame waits for a later turn while
            // the frames are in the kernel's hands: nothing the core wrote is dropped for want
            // of a frame.
            let mut shipped = Shipped::default();
            let mut kept = false;
            loop {
                if offload.train().full() && !offload.ship(xsk, &mut shipped, false) {
                    kept = true;
                    break;
                }
                if xsk.tx_room() < 2 {
                    xsk.flush();
                    if xsk.tx_room() < 2 {
                        xsk.stats.tx_full += 1;
                        break;
                    }
                }
                let Some(out) = endpoint.poll_transmit(now, offload.train().tail()) else { break };
                senders.saw(out.handle);
                expect_answer(answers, slot_base, &out);
                // No link: nothing to answer (see `Glue::link_for`); the segment is dropped.
                let Some(link) = glue.link_for(&out) else { continue };
                offload.take(&Written::from(&out), link, xsk, &mut shipped);
            }
            if !kept && !offload.ship(xsk, &mut shipped, false) {
                xsk.stats.tx_full += 1;
            }
            self.flush(xsk, now, coalesce, senders.several());
            let add = |c: &AtomicU64, n: u32| {
                if n > 0 {
                    c.fetch_add(u64::from(n), Ordering::Relaxed);
                }
            };
            add(&stats.tx_segments, shipped.offloaded + shipped.framed);
            add(&stats.resets_sent, shipped.resets);
            add(&stats.gso_trains, shipped.trains);
            add(&stats.gso_segments, shipped.offloaded);
            add(&stats.gso_fallbacks, shipped.fell_back);
            add(&stats.gso_dropped, shipped.dropped);
            return;
        }
        loop {
            if xsk.tx_room() == 0 {
                xsk.flush();
                if xsk.tx_room() == 0 {
                    xsk.stats.tx_full += 1;
                    break;
                }
            }
            let mut drained = false;
            xsk.send(|frame| {
                let Some(out) = endpoint.poll_transmit(now, frame.get_mut(room..)?) else {
                    drained = true;
                    return None;
                };
                senders.saw(out.handle);
                expect_answer(answers, slot_base, &out);
                // No link: nothing to answer (see `Glue::link_for`); the segment is dropped.
                let link = glue.link_for(&out)?;
                let start = room - wire::header_len(out.local.is_ipv6());
                let len = wire::finish_ecn(&mut frame[start..], &link, out.local, out.remote, out.len, out.ect)?;
                bump(&stats.tx_segments);
                if frame.get(room + FLAGS_OFFSET).is_some_and(|&f| tcp::Flags(f).rst()) {
                    bump(&stats.resets_sent);
                }
                Some(start..start + len)
            });
            if drained {
                break;
            }
        }
        self.flush(xsk, now, coalesce, senders.several());
    }

    /// Send what the TX ring holds, or, coalescing, let it wait for more up to --tx-coalesce
    /// when this transmit's frames came from `several` senders or frames wait already (see
    /// [`QueueDriver::transmit`]). Not coalescing (ACKs in the middle of a receive batch),
    /// everything goes now.
    fn flush(&self, xsk: &mut XskSocket, now: Instant, coalesce: bool, several: bool) {
        let limit = self.ctx.tx_coalesce;
        if coalesce && !limit.is_zero() && (several || xsk.tx_held_since().is_some()) {
            xsk.flush_held(now.as_nanos(), limit.as_nanos() as u64);
        } else {
            xsk.flush();
        }
    }

    /// The gauges, the AF_XDP socket's counters, the kernel's AF_XDP drop counters (every
    /// [`XSK_STATS_PERIOD`]) and the endpoint's own counters, into this queue's [`QueueStats`].
    fn publish_stats(&mut self, xsk: &XskSocket, now: Instant) {
        let s = &self.ctx.stats;
        if now.saturating_duration_since(self.last_xsk_stats) >= XSK_STATS_PERIOD {
            self.last_xsk_stats = now;
            if let Some(o) = &mut self.gso {
                // The interface's TSO comes and goes (a veth's, with its peer's XDP program).
                o.refresh();
            }
            if let Some((dropped, ring_full, fill_empty)) = xsk.kernel_drops() {
                // Frames the kernel dropped will never be taken: not backlog (published with
                // the next receive).
                self.kernel_dropped = dropped;
                s.xsk_rx_dropped.store(dropped, Ordering::Relaxed);
                s.xsk_rx_ring_full.store(ring_full, Ordering::Relaxed);
                s.xsk_rx_fill_empty.store(fill_empty, Ordering::Relaxed);
            }
        }
        let x = &xsk.stats;
        for (counter, v) in [
            (&s.xsk_rx_frames, x.rx_frames),
            (&s.xsk_tx_frames, x.tx_frames),
            (&s.xsk_tx_completed, x.tx_completed),
            (&s.xsk_tx_full, x.tx_full),
            (&s.xsk_tx_wakeups, x.tx_wakeups),
            (&s.xsk_tx_held, x.tx_held),
            (&s.xsk_fill_wakeups, x.fill_wakeups),
            (&s.xsk_busy_polls, x.busy_polls),
            (&s.xsk_busy_poll_rearms, x.busy_poll_rearms),
        ] {
            counter.store(v, Ordering::Relaxed);
        }
        s.time_wait_fin_reacked.store(self.endpoint.time_wait_fin_reacked, Ordering::Relaxed);
        s.rx_demux_by_hint.store(self.endpoint.demux_hinted, Ordering::Relaxed);
        s.probe_answers_taken.store(self.endpoint.probe_answers_taken, Ordering::Relaxed);
        s.connections.store(self.endpoint.len() as u64, Ordering::Relaxed);
        s.parked.store(self.endpoint.parked() as u64, Ordering::Relaxed);
        s.timers_waiting.store(self.endpoint.timers_waiting() as u64, Ordering::Relaxed);
        s.publish_core(self.endpoint.totals());
        s.app_tasks.store(self.glue.tasks() as u64, Ordering::Relaxed);
        s.app_waiting.store(self.glue.waiting() as u64, Ordering::Relaxed);
        s.mem_held.store(self.glue.held(), Ordering::Relaxed);
    }

    /// Sleep until a frame arrives, an app pokes us, or the next timer is due (at most
    /// [`MAX_SLEEP`]); with the TX blocked ([`XskSocket::tx_blocked`]) until the socket turns
    /// writable, at most [`TX_STALL_SLEEP`]. This thread's apps run meanwhile.
    async fn sleep(&mut self, xsk: &tokio::io::unix::AsyncFd<XskFd>, tx_blocked: bool) {
        let t = now();
        let timeout = if tx_blocked {
            // What we could send waits for the device: frames it left in the TX ring, or every
            // TX frame in flight. Due timers would only queue more behind them, so they wait
            // too; the kernel says when sent frames are freed (the socket turns writable, and
            // its poll pushes the ring on in copy mode), or we look again after
            // TX_STALL_SLEEP. Spinning here instead, while a burst of a million connections'
            // keepalive probes drained at the client's pace, kicked the device 250,000 times
            // a second for a frame or two each and kept the engine thread 60% busy.
            TX_STALL_SLEEP
        } else {
            match self.endpoint.poll_timeout() {
                Some(at) => at.saturating_duration_since(t).min(MAX_SLEEP),
                None => MAX_SLEEP,
            }
        };
        if timeout.is_zero() {
            return;
        }
        let waker = &self.ctx.waker;
        self.wake_timer.as_mut().reset(tokio::time::Instant::now() + timeout);
        let timer = self.wake_timer.as_mut();
        tokio::select! {
            biased;
            () = std::future::poll_fn(|cx| waker.poll_notified(cx)) => {}
            r = xsk.readable() => {
                if let Ok(mut guard) = r {
                    // The next turn drains the ring; a frame arriving later sets it again.
                    guard.clear_ready();
                }
            }
            r = xsk.writable(), if tx_blocked => {
                if let Ok(mut guard) = r {
                    guard.clear_ready();
                }
            }
            () = timer => {}
        }
    }
}
