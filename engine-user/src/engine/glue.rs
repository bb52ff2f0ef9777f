//! The apps' side of one queue thread's connections: between each connection in the TCP core
//! ([`Endpoint`]) and its application's [`Stream`], move received bytes, written bytes, close,
//! shutdown, abort and keepalive requests, and the connection's end; hand new connections to
//! their listener; run the turns of connections served in turns.
//!
//! No I/O and no BPF here: the queue loop ([`super::queue`]) feeds the endpoint and sends what it
//! writes; the glue works on the endpoint alone, so its tests drive it with segments in memory.
//!
//! A connection served in turns ([`Accept::Turns`]) holds a task and a [`StreamShared`] only
//! while a turn runs: when its handler hands the stream back and everything it wrote has
//! reached the TCP core, the glue forgets both and keeps only the handler's index
//! ([`AppSide::Waiting`]); the next input starts a new turn with fresh stream state.

use std::{
    cell::Cell,
    collections::{HashMap, HashSet, VecDeque},
    future::Future,
    net::{IpAddr, SocketAddr},
    rc::Rc,
    sync::Arc,
};

use synx_tcp::{
    self as tcp, Instant,
    endpoint::{ConnectionHandle, Endpoint, Transmit},
};

use super::{
    listeners::{Accept, ListenerEntry, Listeners, TurnHandler},
    memory::{Level, Memory},
    stats::{QueueStats, bump},
};
use crate::{
    api::{EngineWaker, STREAM_RX_CAP, Stream, StreamError, StreamShared},
    wire::Link,
};

/// What the engine keeps of one connection beside its TCB.
struct SlotGlue {
    /// The link addresses to answer with (those of the peer's latest frame).
    link: Link,
    app: AppSide,
    /// Bytes of data buffers the connection held when last looked at (TCP core and app
    /// queues), as counted in [`Memory`].
    held: u32,
}

/// What the application side of a connection holds.
enum AppSide {
    /// A task (or an `accept()` consumer) holds the stream for the connection's life.
    Task(Arc<StreamShared>),
    /// A turn of the handler `turn_handlers[.1]` runs, or has ended and its output is still
    /// moving into the TCP core.
    Turn(Arc<StreamShared>, u32),
    /// The turn handler `turn_handlers[.0]` waits for input: no task, no stream state.
    Waiting(u32),
    /// Moved here from another process while it waited for input: its handler is its
    /// listener's, looked up at its next input ([`Glue::resolve_moved`]).
    Moved,
    /// Its app stopped and handed it over with a socket (the engine hands over): what it had
    /// not read goes along.
    Carried(Box<CarriedConn>),
    /// Carried from another process (or back from a handover that could not happen): its
    /// listener's app is started again with the socket ([`Glue::resume`]).
    Resuming(Box<CarriedConn>),
    /// The application dropped its stream and everything it wrote reached the TCP core: nothing
    /// left to tell it (the TCP core finishes the close alone).
    Done,
}

impl AppSide {
    fn shared(&self) -> Option<&Arc<StreamShared>> {
        match self {
            AppSide::Task(s) | AppSide::Turn(s, _) => Some(s),
            AppSide::Waiting(_) | AppSide::Moved | AppSide::Done | AppSide::Carried(_) | AppSide::Resuming(_) => None,
        }
    }

    /// Waits for input with no task and no stream state.
    fn waits(&self) -> bool {
        matches!(self, AppSide::Waiting(_) | AppSide::Moved)
    }
}

/// A connection whose app handed it over with a socket, and the bytes it had not read.
pub struct CarriedConn {
    fd: std::os::fd::OwnedFd,
    rx: Vec<u8>,
}

/// A connection's app side as it moves to another process (`synx run --takeover`): apps
/// served in turns hold no state between turns, so a waiting connection moves as it is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MovedApp {
    /// Waiting between turns: its listener's next turn serves its next input.
    Waiting,
    /// The app has closed it; the TCP core finishes the close alone.
    Done,
    /// Its app handed it over with a socket (passed beside, `fd` its index there), and `rx`,
    /// the bytes it had not read: its listener's app resumes with both.
    Resume { fd: u32, rx: Vec<u8> },
}

/// One connection on its way to another process: its folded TCB, its link addresses and its
/// app side.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Moved {
    pub conn: tcp::endpoint::Exported,
    pub link: Link,
    pub app: MovedApp,
}

/// The glue of every connection, indexed by slot (slots are small, dense, and reused only after
/// `Released`), with the counts the queue loop and `synx stats` need.
#[derive(Default)]
struct GlueTable {
    slots: Vec<Option<SlotGlue>>,
    /// Occupied slots.
    len: usize,
    /// Slots waiting for input ([`AppSide::waits`]).
    waiting: usize,
}

impl GlueTable {
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn get(&self, slot: u32) -> Option<&SlotGlue> {
        self.slots.get(slot as usize)?.as_ref()
    }

    /// The glue of `slot`, to change its link (its app side changes only through `set_app`,
    /// which keeps the counts).
    fn get_mut(&mut self, slot: u32) -> Option<&mut SlotGlue> {
        self.slots.get_mut(slot as usize)?.as_mut()
    }

    fn insert(&mut self, slot: u32, glue: SlotGlue) {
        let i = slot as usize;
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, || None);
        }
        self.remove(slot);
        self.waiting += usize::from(glue.app.waits());
        self.len += 1;
        self.slots[i] = Some(glue);
    }

    fn remove(&mut self, slot: u32) {
        self.take(slot);
    }

    fn take(&mut self, slot: u32) -> Option<SlotGlue> {
        let old = self.slots.get_mut(slot as usize).and_then(Option::take)?;
        self.waiting -= usize::from(old.app.waits());
        self.len -= 1;
        Some(old)
    }

    fn set_app(&mut self, slot: u32, app: AppSide) {
        let Some(g) = self.get_mut(slot) else { return };
        let was_waiting = g.app.waits();
        let waits = app.waits();
        g.app = app;
        self.waiting = self.waiting + usize::from(waits) - usize::from(was_waiting);
    }

    /// Slots that hold glue.
    fn slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots.iter().enumerate().filter(|(_, g)| g.is_some()).map(|(i, _)| i as u32)
    }
}

/// Counts an application task of this thread while it lives.
struct TaskCount(Rc<Cell<usize>>);

impl Drop for TaskCount {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// Run `app` on this thread's runtime, counted in `tasks` while it lives.
fn spawn_app(tasks: &Rc<Cell<usize>>, app: impl Future<Output = ()> + 'static) {
    let count = TaskCount(tasks.clone());
    tasks.set(tasks.get() + 1);
    tokio::task::spawn_local(async move {
        let _alive = count;
        app.await;
    });
}

/// The glue of one queue thread's connections.
pub struct Glue {
    table: GlueTable,
    /// The turn handlers of this thread's connections, each once ([`AppSide::Waiting`] holds an
    /// index: 4 bytes, and no shared reference count touched per turn).
    turn_handlers: Vec<TurnHandler>,
    /// Application tasks alive on this thread: [`Accept::Local`] tasks and running turns.
    tasks: Rc<Cell<usize>>,
    /// Where this thread's streams queue the connections that have work for the glue.
    waker: Arc<EngineWaker>,
    stats: Arc<QueueStats>,
    /// The slots streams have poked, taken from `waker` (kept to reuse its allocation).
    poked: Vec<u32>,
    /// The engine stops: a connection served in turns is closed when it would wait for input.
    stopping: bool,
    /// The engine hands its connections to another process: a connection waiting between
    /// turns takes no new input (see [`Glue::holds_input_back`]).
    handing_over: bool,
    /// Connections whose app is to be started again with a carried socket ([`Glue::resume`]).
    resuming: Vec<u32>,
    /// The link addresses of the frames the endpoint's queued resets to strangers answer, in
    /// the order it queued them (and sends them).
    stranger_links: VecDeque<Link>,
    /// The engine's memory account, and what this thread's connections hold of it.
    memory: Arc<Memory>,
    held: u64,
    /// The turn `serve` started (its handler and stream), for `service` to run after it.
    fresh_turn: Option<(u32, Arc<StreamShared>)>,
    /// Slots whose connection holds buffer memory (few, unless memory is the problem). Slot
    /// numbers are ours, not a client's choice: foldhash's fast variant.
    holders: HashSet<u32, foldhash::fast::RandomState>,
    /// When each connection stuck behind a zero window with data to send was first seen so.
    persisting_since: HashMap<u32, Instant, foldhash::fast::RandomState>,
    /// Sources over their memory limit at the last [`Glue::enforce`]: their new data is refused.
    over_sources: HashSet<IpAddr>,
}

/// What [`Glue::enforce`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Enforced {
    /// Connections reset for holding the most memory (in all or of their source).
    pub memory_resets: u64,
    /// Connections reset after too long in persist with data to send.
    pub persist_resets: u64,
}

/// Bytes of received data handed to an application at a time under memory pressure (the rest
/// stays in the TCP receive buffer, whose window then shrinks): enough for a request.
const PRESSURE_RX_CAP: usize = 16 * 1024;

/// How many received bytes a stream's queue may hold: under memory pressure little, so
/// windows shrink instead of buffers growing.
fn rx_cap(pressure: bool) -> usize {
    if pressure { PRESSURE_RX_CAP } else { STREAM_RX_CAP }
}

impl Glue {
    pub fn new(waker: Arc<EngineWaker>, stats: Arc<QueueStats>, memory: Arc<Memory>) -> Self {
        Self {
            table: GlueTable::default(),
            turn_handlers: Vec::new(),
            tasks: Rc::new(Cell::new(0)),
            waker,
            stats,
            poked: Vec::new(),
            stopping: false,
            handing_over: false,
            resuming: Vec::new(),
            stranger_links: VecDeque::new(),
            memory,
            held: 0,
            fresh_turn: None,
            holders: HashSet::default(),
            persisting_since: HashMap::default(),
            over_sources: HashSet::new(),
        }
    }

    /// No connection has glue (every one released).
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Connections served in turns that wait for input.
    pub fn waiting(&self) -> usize {
        self.table.waiting
    }

    /// Application tasks alive on this thread.
    pub fn tasks(&self) -> usize {
        self.tasks.get()
    }

    /// The link addresses to answer the connection in `slot` with.
    pub fn link(&self, slot: u32) -> Option<Link> {
        self.table.get(slot).map(|g| g.link)
    }

    /// The peer's latest frame for `slot` came with `link`.
    pub fn set_link(&mut self, slot: u32, link: Link) {
        if let Some(g) = self.table.get_mut(slot) {
            g.link = link;
        }
    }

    /// The endpoint has handled a frame from `link` that belongs to no connection, and had
    /// `resets_before` resets queued before: if it queued one for this frame, that reset goes
    /// back over `link` (each to its own sender, whatever else arrived in the same batch).
    pub fn note_stranger(&mut self, ep: &Endpoint, resets_before: usize, link: Link) {
        if ep.pending_resets() > resets_before {
            self.stranger_links.push_back(link);
        }
    }

    /// The link addresses to send `out` with: its connection's, or for a reset to a stranger
    /// those of the frame it answers. None only if the connection has no glue (nothing to
    /// answer: the segment is dropped).
    pub fn link_for(&mut self, out: &Transmit) -> Option<Link> {
        match out.handle {
            Some(h) => self.link(h.slot()),
            None => self.stranger_links.pop_front(),
        }
    }

    /// Hand the new connection `h` (answered with `link`) to `listener`'s application.
    pub fn attach(&mut self, ep: &mut Endpoint, now: Instant, h: ConnectionHandle, link: Link, listener: &ListenerEntry) {
        let Some(conn) = ep.connection_mut(h) else { return };
        conn.set_keepalive(listener.keepalive);
        let shared = StreamShared::new(h.slot(), conn.local(), conn.remote(), self.waker.clone());
        let turn = match &listener.accept {
            Accept::Turns(handler) => Some(self.turn_handler_id(handler)),
            Accept::Channel(_) | Accept::Local(_) => None,
        };
        let app = match turn {
            Some(id) => AppSide::Turn(shared.clone(), id),
            None => AppSide::Task(shared.clone()),
        };
        // Whatever an earlier holder of the slot held is out of the account first.
        self.set_held(h.slot(), 0);
        self.table.insert(h.slot(), SlotGlue { link, app, held: 0 });
        bump(&self.stats.accepted);
        let refused = match &listener.accept {
            Accept::Channel(tx) => tx.send(Stream::new(shared)).is_err(),
            Accept::Local(handler) => {
                spawn_app(&self.tasks, handler(Stream::new(shared)));
                false
            }
            Accept::Turns(_) => {
                // The first turn runs at accept, input or not: a server may speak first, and a
                // quiet client costs one turn that finds nothing to read. It runs once
                // `service` below has given the stream the data the handshake's ACK carried.
                self.fresh_turn = turn.map(|id| (id, shared));
                false
            }
        };
        if refused {
            // The application stopped listening: refuse the connection.
            if let Some(conn) = ep.connection_mut(h) {
                conn.abort(now);
            }
        }
        self.service(ep, now, h);
    }

    /// This thread's index of a turn handler (its table grows by one per turn-served listener).
    fn turn_handler_id(&mut self, handler: &TurnHandler) -> u32 {
        if let Some(i) = self.turn_handlers.iter().position(|h| Arc::ptr_eq(h, handler)) {
            return i as u32;
        }
        self.turn_handlers.push(handler.clone());
        (self.turn_handlers.len() - 1) as u32
    }

    /// Run one turn of `handler` on `stream`: the stream comes back to the glue if the turn
    /// returns it.
    ///
    /// Its first step runs here, and only a turn that then waits (for input it has not got, for
    /// room to write, for a backend) becomes a task of this thread's runtime. A turn given its
    /// input (a request read and answered, an echo) mostly ends in that step, and a task would
    /// cost it an allocation, a trip through the runtime's queue and a pass of the loop's
    /// `yield_to_apps`, per request. The turn touches nothing of the glue's but its stream
    /// (shared state, whose lock the callers do not hold) and the engine's waker, so running it
    /// inside the glue's call is safe; what it wrote is served when the loop serves the poked
    /// streams, as a task's would be. A turn that panics ends as a task's panic does on this
    /// runtime: the turn is dropped (and with it its stream), and the thread goes on.
    fn spawn_turn(&self, handler: &TurnHandler, stream: Stream) {
        let mut turn = handler(stream);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        // The no-op waker is never relied on: a turn still pending is spawned next, and the
        // task's first poll (which the runtime makes unasked) registers the task's own waker
        // with what the turn waits for.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| turn.as_mut().poll(&mut cx))) {
            Ok(std::task::Poll::Ready(stream)) => {
                if let Some(stream) = stream {
                    stream.hand_back();
                }
            }
            Ok(std::task::Poll::Pending) => spawn_app(&self.tasks, async move {
                if let Some(stream) = turn.await {
                    stream.hand_back();
                }
            }),
            Err(_) => {
                bump(&self.stats.app_panics);
                drop(turn);
            }
        }
    }

    /// Run a turn of handler `id` with `shared` (whose lock the caller does not hold: the
    /// handler may use its stream before its first await); false if there is no such handler.
    fn run_turn(&self, id: u32, shared: &Arc<StreamShared>) -> bool {
        let Some(handler) = self.turn_handlers.get(id as usize) else { return false };
        self.spawn_turn(handler, Stream::new(shared.clone()));
        true
    }

    /// Serve the connections whose streams poked this thread; returns how many.
    pub fn serve_poked(&mut self, ep: &mut Endpoint, now: Instant) -> usize {
        let mut poked = std::mem::take(&mut self.poked);
        self.waker.drain(&mut poked);
        let n = poked.len();
        for slot in poked.drain(..) {
            if let Some(h) = ep.handle_for_slot(slot) {
                self.service(ep, now, h);
            }
        }
        self.poked = poked;
        n
    }

    /// Serve the endpoint's events: tell a stream its connection's end, forget a connection
    /// gone for good (after telling `released` its tuple), service the others.
    pub fn handle_events(
        &mut self,
        ep: &mut Endpoint,
        now: Instant,
        mut released: impl FnMut(&Endpoint, SocketAddr, SocketAddr),
    ) {
        while let Some((h, event)) = ep.poll_event() {
            match event {
                tcp::Event::Closed(reason) => self.closed(h, reason),
                tcp::Event::Released { local, remote } => {
                    released(ep, local, remote);
                    // Only if no live connection holds the slot again.
                    if !ep.contains(h) {
                        self.set_held(h.slot(), 0);
                        self.table.remove(h.slot());
                    }
                    self.memory.leave(remote.ip());
                    bump(&self.stats.closed);
                }
                // Its buffers went with its TCB: count what is left (its app's queues, if a
                // task holds them), without unfolding it.
                tcp::Event::Parked => self.account(ep, h),
                _ => self.service(ep, now, h),
            }
        }
    }

    /// Connection `h` ended: count why and tell its stream, if one is held.
    fn closed(&mut self, h: ConnectionHandle, reason: tcp::CloseReason) {
        let stats = &self.stats;
        let error = match reason {
            tcp::CloseReason::Normal => None,
            tcp::CloseReason::Reset => Some((StreamError::Reset, &stats.closed_reset)),
            tcp::CloseReason::TimedOut => Some((StreamError::TimedOut, &stats.closed_timeout)),
            tcp::CloseReason::Aborted => Some((StreamError::Aborted, &stats.closed_aborted)),
        };
        if let Some((_, counter)) = error {
            bump(counter);
        }
        // A waiting or done app side has no state to tell.
        let Some(shared) = self.table.get(h.slot()).and_then(|g| g.app.shared()) else { return };
        let mut st = shared.lock();
        st.error = error.map(|(e, _)| e);
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

    /// The engine stops: close every connection that waits between turns (a FIN, as a server
    /// closes an idle keep-alive connection), and from now on each one whose turn ends. What
    /// runs in a task carries on until it ends or the grace does.
    pub fn stop(&mut self, ep: &mut Endpoint, now: Instant) {
        self.stopping = true;
        let waiting: Vec<u32> =
            self.table.slots().filter(|&s| self.table.get(s).is_some_and(|g| g.app.waits())).collect();
        for slot in waiting {
            if let Some(h) = ep.handle_for_slot(slot) {
                self.close_at_stop(ep, now, h);
            }
        }
    }

    /// The engine hands its connections to another process: from now on a connection waiting
    /// between turns takes no new input, so that it becomes quiescent and can go (its peer sends
    /// the input again, to the other process).
    /// Apps that hold their connection for life are asked to hand it over
    /// ([`crate::api::Stream::hand_over`]).
    pub fn begin_handover(&mut self) {
        if std::mem::replace(&mut self.handing_over, true) {
            return;
        }
        for g in self.table.slots.iter().flatten() {
            if let AppSide::Task(shared) = &g.app {
                let mut st = shared.lock();
                st.handing_over = true;
                if let Some(w) = st.handover_waker.take() {
                    w.wake();
                }
            }
        }
    }

    /// Whether [`Glue::begin_handover`] has run.
    pub fn handing_over(&self) -> bool {
        self.handing_over
    }

    /// Whether the input of the connection in `slot` is held back: it waits between turns while
    /// the engine hands over. Only its acknowledgment is taken (what it acknowledges lets the
    /// connection become quiescent).
    pub fn holds_input_back(&self, slot: u32) -> bool {
        self.handing_over && self.table.get(slot).is_some_and(|g| g.app.waits() || matches!(g.app, AppSide::Carried(_)))
    }

    /// Hand over every connection that can go now: waiting between turns, closed by its app or
    /// handed over by it with a socket (into `fds`), and quiescent in the TCP core; each leaves
    /// the endpoint and this glue without a trace.
    pub fn hand_over(&mut self, ep: &mut Endpoint, out: &mut Vec<Moved>, fds: &mut Vec<std::os::fd::OwnedFd>) {
        let ready: Vec<u32> = self
            .table
            .slots()
            .filter(|&s| {
                matches!(
                    self.table.get(s).map(|g| &g.app),
                    Some(AppSide::Waiting(_) | AppSide::Moved | AppSide::Done | AppSide::Carried(_))
                )
            })
            .collect();
        for slot in ready {
            let Some(h) = ep.handle_for_slot(slot) else { continue };
            let Some(conn) = ep.hand_over(h) else { continue };
            self.set_held(slot, 0);
            let Some(g) = self.table.take(slot) else { continue };
            let app = match g.app {
                AppSide::Done => MovedApp::Done,
                AppSide::Carried(c) => {
                    fds.push(c.fd);
                    MovedApp::Resume { fd: (fds.len() - 1) as u32, rx: c.rx }
                }
                _ => MovedApp::Waiting,
            };
            self.memory.leave(conn.remote.ip());
            out.push(Moved { conn, link: g.link, app });
        }
    }

    /// A connection another process handed over, imported into the endpoint as `h`, with the
    /// socket its app carried, if any.
    pub fn adopt(&mut self, h: ConnectionHandle, m: Moved, fd: Option<std::os::fd::OwnedFd>) {
        let remote = m.conn.remote;
        let app = match (m.app, fd) {
            (MovedApp::Waiting, _) => AppSide::Moved,
            (MovedApp::Resume { rx, .. }, Some(fd)) => {
                self.resuming.push(h.slot());
                AppSide::Resuming(Box::new(CarriedConn { fd, rx }))
            }
            // The socket did not come (not expected): the app cannot resume, the TCP core
            // finishes the connection alone.
            (MovedApp::Done | MovedApp::Resume { .. }, _) => AppSide::Done,
        };
        self.table.insert(h.slot(), SlotGlue { link: m.link, app, held: 0 });
        self.memory.enter(remote.ip());
    }

    /// Connections whose app is to be started again with a carried socket (see
    /// [`Glue::resume`]); the caller looks their listeners up.
    pub fn resuming(&self) -> &[u32] {
        &self.resuming
    }

    /// Start the app of `listener` again on the connection in `slot`, with the socket it
    /// carried and the bytes it had not read; false while nobody serves its address yet (the
    /// caller tries again).
    pub fn resume(&mut self, ep: &mut Endpoint, now: Instant, slot: u32, listeners: &Listeners) -> bool {
        let Some(h) = ep.handle_for_slot(slot) else {
            self.resuming.retain(|&s| s != slot);
            return true;
        };
        let Some(conn) = ep.connection_mut(h) else { return true };
        let half_closed = conn.peer_finished();
        let Some(listener) = listeners.find(conn.local()) else { return false };
        self.resuming.retain(|&s| s != slot);
        let Some(g) = self.table.get_mut(slot) else { return true };
        let AppSide::Resuming(carried) = std::mem::replace(&mut g.app, AppSide::Done) else { return true };
        let shared = StreamShared::new(slot, conn.local(), conn.remote(), self.waker.clone());
        {
            let mut st = shared.lock();
            st.rx_added = carried.rx.len() as u64;
            st.rx.extend(carried.rx);
            st.resumed = Some(carried.fd);
            // Resumed while this engine hands over (its successor came before the app did):
            // the app is asked at once. Not when half closed: it came back here to finish (asked,
            // it would hand the connection over again, and again, until the grace ends).
            st.handing_over = self.handing_over && !half_closed;
        }
        self.table.set_app(slot, AppSide::Task(shared.clone()));
        let stream = Stream::new(shared);
        match &listener.accept {
            Accept::Local(handler) => spawn_app(&self.tasks, handler(stream)),
            Accept::Channel(tx) => {
                let _ = tx.send(stream);
            }
            // Turns hold no socket between turns: nothing to resume with; its turns serve it.
            Accept::Turns(handler) => {
                let id = self.turn_handler_id(handler);
                drop(stream);
                self.table.set_app(slot, AppSide::Waiting(id));
            }
        }
        self.service(ep, now, h);
        true
    }

    /// Whether `slot` holds a moved connection whose app is not known yet.
    pub fn is_moved(&self, slot: u32) -> bool {
        matches!(self.table.get(slot).map(|g| &g.app), Some(AppSide::Moved))
    }

    /// A moved connection has input: give it to its listener (`None`: nobody serves its address
    /// any more, so it is closed with a FIN, as at a stop). Served in turns, it waits for that
    /// handler's next turn; else its app gets it as a new stream.
    pub fn resolve_moved(&mut self, ep: &mut Endpoint, now: Instant, h: ConnectionHandle, listener: Option<&ListenerEntry>) {
        let Some(listener) = listener else {
            self.close_at_stop(ep, now, h);
            return;
        };
        let Some(conn) = ep.connection_mut(h) else { return };
        if let Accept::Turns(handler) = &listener.accept {
            let id = self.turn_handler_id(handler);
            self.table.set_app(h.slot(), AppSide::Waiting(id));
            return;
        }
        let shared = StreamShared::new(h.slot(), conn.local(), conn.remote(), self.waker.clone());
        self.table.set_app(h.slot(), AppSide::Task(shared.clone()));
        let stream = Stream::new(shared);
        match &listener.accept {
            Accept::Channel(tx) => {
                if tx.send(stream).is_err()
                    && let Some(conn) = ep.connection_mut(h)
                {
                    conn.abort(now);
                }
            }
            Accept::Local(handler) => spawn_app(&self.tasks, handler(stream)),
            Accept::Turns(_) => {}
        }
    }

    /// Whether [`Glue::stop`] has run.
    pub fn stopping(&self) -> bool {
        self.stopping
    }

    /// Close a connection that waits between turns because the engine stops.
    fn close_at_stop(&mut self, ep: &mut Endpoint, now: Instant, h: ConnectionHandle) {
        if let Some(conn) = ep.connection_mut(h) {
            // Nothing unread (a waiting connection has no input, or its turn would run): a FIN.
            conn.close(now);
            bump(&self.stats.closed_at_stop);
        }
        self.table.set_app(h.slot(), AppSide::Done);
    }

    /// Reset every connection (the end of a shutdown's grace).
    pub fn abort_all(&mut self, ep: &mut Endpoint, now: Instant) {
        let handles: Vec<ConnectionHandle> = self.table.slots().filter_map(|slot| ep.handle_for_slot(slot)).collect();
        for h in handles {
            if let Some(conn) = ep.connection_mut(h) {
                conn.abort(now);
            }
        }
    }

    /// Move data and close/shutdown requests between a connection and its application; start a
    /// turn for a waiting connection with input, and retire a turn that has ended. Then count
    /// what the connection holds.
    pub fn service(&mut self, ep: &mut Endpoint, now: Instant, h: ConnectionHandle) {
        self.serve(ep, now, h);
        self.account(ep, h);
        // A turn started here (at accept, or for a waiting connection's input) runs now that
        // its stream holds the input: run before, it would find none and end, and a second
        // turn would be needed for what came.
        if let Some((id, shared)) = self.fresh_turn.take() {
            self.run_turn(id, &shared);
        }
    }

    /// Count the buffer memory connection `h` holds now: the TCP core's buffers, and the
    /// queues to and from its application (their capacity: what is allocated).
    fn account(&mut self, ep: &Endpoint, h: ConnectionHandle) {
        // A parked connection holds no buffer.
        let tcp = ep.connection(h).map_or(0, |c| c.heap_bytes());
        let Some(g) = self.table.get(h.slot()) else { return };
        let app = g.app.shared().map_or(0, |s| {
            let st = s.lock();
            st.rx.capacity() + st.tx.capacity()
        });
        self.set_held(h.slot(), (tcp + app).min(u32::MAX as usize) as u32);
    }

    fn set_held(&mut self, slot: u32, held: u32) {
        let Some(g) = self.table.get_mut(slot) else { return };
        let before = std::mem::replace(&mut g.held, held);
        if before == held {
            return;
        }
        self.memory.change(u64::from(before), u64::from(held));
        self.held = self.held + u64::from(held) - u64::from(before);
        if held == 0 {
            self.holders.remove(&slot);
            self.persisting_since.remove(&slot);
        } else {
            self.holders.insert(slot);
        }
    }

    /// Bytes of buffers this thread's connections hold.
    pub fn held(&self) -> u64 {
        self.held
    }

    /// Whether a data segment for `h` from `source` is refused for want of memory: above the
    /// limit (or its source above its own), a connection that holds data already gets no more
    /// (the peer retransmits it later); one that holds nothing may still start.
    pub fn refuses_data(&self, h: ConnectionHandle, source: IpAddr) -> bool {
        let holds = self.table.get(h.slot()).is_some_and(|g| g.held > 0);
        holds && (self.memory.level() == Level::Over || self.over_sources.contains(&source))
    }

    /// Whether anything may refuse data now (so the caller looks the connection up only then).
    pub fn may_refuse_data(&self) -> bool {
        !self.over_sources.is_empty() || self.memory.level() == Level::Over
    }

    /// Run the limits over this thread's connections holding memory (one of `queues` threads
    /// doing the same): reset those in persist for longer than the persist timeout; if memory
    /// is over its limit, reset the largest holders (those stuck behind a zero window first)
    /// until this thread has freed its share of the excess; reset the largest connections of
    /// each source above its own limit until it is under.
    pub fn enforce(&mut self, ep: &mut Endpoint, now: Instant, queues: u32) -> Enforced {
        let limits = self.memory.limits;
        let mut done = Enforced::default();
        // (stuck behind a zero window, bytes held, slot, source)
        let mut holders = Vec::with_capacity(self.holders.len());
        let mut by_source: HashMap<IpAddr, u64> = HashMap::new();
        let mut expired = Vec::new();
        for &slot in &self.holders {
            let Some(h) = ep.handle_for_slot(slot) else { continue };
            let Some(conn) = ep.connection(h) else { continue };
            let info = conn.info();
            let stuck = info.snd_wnd == 0 && info.send_queued > 0;
            if stuck {
                let since = *self.persisting_since.entry(slot).or_insert(now);
                if now.saturating_duration_since(since) >= limits.persist_timeout {
                    expired.push(h);
                    continue;
                }
            } else {
                self.persisting_since.remove(&slot);
            }
            let held = self.table.get(slot).map_or(0, |g| u64::from(g.held));
            let source = info.remote.ip();
            if limits.bytes_per_source.is_some() {
                *by_source.entry(source).or_default() += held;
            }
            holders.push((stuck, held, h, source));
        }
        for h in expired {
            if let Some(conn) = ep.connection_mut(h) {
                conn.abort(now);
                done.persist_resets += 1;
            }
        }
        // Worst first: stuck behind a zero window, then by bytes held.
        holders.sort_unstable_by_key(|&(stuck, held, _, _)| std::cmp::Reverse((stuck, held)));
        let mut to_free = self.memory.excess().div_ceil(u64::from(queues.max(1)));
        if self.memory.level() != Level::Over {
            to_free = 0;
        }
        self.over_sources.clear();
        if let Some(max) = limits.bytes_per_source {
            self.over_sources.extend(by_source.iter().filter(|&(_, &b)| b > max).map(|(&s, _)| s));
        }
        for &(_, held, h, source) in &holders {
            let source_over = by_source.get(&source).is_some_and(|&b| limits.bytes_per_source.is_some_and(|max| b > max));
            if to_free == 0 && !source_over {
                continue;
            }
            let Some(conn) = ep.connection_mut(h) else { continue };
            conn.abort(now);
            done.memory_resets += 1;
            to_free = to_free.saturating_sub(held);
            if let Some(b) = by_source.get_mut(&source) {
                *b -= held;
            }
        }
        done
    }

    fn serve(&mut self, ep: &mut Endpoint, now: Instant, h: ConnectionHandle) {
        if let Some(SlotGlue { app: AppSide::Waiting(id), .. }) = self.table.get(h.slot()) {
            let id = *id;
            if !self.start_turn(ep, h, id) {
                return;
            }
        }
        let Some(g) = self.table.get(h.slot()) else { return };
        let (shared, turn_handler) = match &g.app {
            AppSide::Task(s) => (s, None),
            AppSide::Turn(s, id) => (s, Some(*id)),
            // Waiting for its next input, or for the app that is to resume it.
            AppSide::Waiting(_) | AppSide::Moved | AppSide::Resuming(_) => return,
            // Leaving for another process: nothing more for its app.
            AppSide::Carried(_) => return,
            // Data arriving after the app's close resets in the core (RFC 1122 4.2.2.13).
            AppSide::Done => return,
        };
        let Some(conn) = ep.connection_mut(h) else { return };
        let mut st = shared.lock();
        if st.turn_over && st.carried.is_none() && (turn_handler.is_none() || st.eof_read) {
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
        // which keeps the advertised window honest. Under memory pressure the cap is small, so
        // windows shrink instead of buffers growing.
        let pressure = self.under_pressure();
        let want = rx_cap(pressure).saturating_sub(st.rx.len());
        let n = conn.recv_with(want, |part| st.rx.extend(part));
        st.rx_added += n as u64;
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
        if pressure {
            // Give back what the app queues, and the core's emptied buffers (kept for the next
            // burst otherwise), no longer use.
            if st.rx.is_empty() {
                st.rx.shrink_to_fit();
            }
            if st.tx.is_empty() {
                st.tx.shrink_to_fit();
            }
            conn.release_buffers();
        }
        let mut next = None;
        if st.carried.is_some() && st.tx.is_empty() {
            // The app handed the connection over with a socket: everything it wrote is in the
            // TCP core; what it has not read (in its queue and the core) goes along.
            let mut rx: Vec<u8> = st.rx.drain(..).collect();
            conn.recv_with(usize::MAX, |part| rx.extend_from_slice(part));
            let carried = Box::new(CarriedConn { fd: st.carried.take().expect("checked"), rx });
            if conn.peer_finished() {
                // The peer closed meanwhile: half closed, it cannot move; its app is started
                // again here to finish it.
                self.resuming.push(h.slot());
                next = Some(AppSide::Resuming(carried));
            } else {
                next = Some(AppSide::Carried(carried));
            }
        } else if st.app_closed && st.tx.is_empty() {
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
                // Input waits: the next turn, with the same stream state, if the turn just ended
                // read some or did not have all of it. A turn that was given input and read none
                // of it is called again only for new input: calling it again at once would spin
                // this thread, and every connection on it, on a handler that does not read.
                st.turn_over = false;
                st.turn_consumed = false;
                st.rx_seen = st.rx_added;
                st.read_waker = None;
                st.write_waker = None;
                drop(st);
                self.run_turn(id, shared);
                return;
            } else if st.tx.is_empty() && st.rx.is_empty() && !st.rx_fin {
                // Quiet, and everything written is in the TCP core: forget the stream state (or,
                // when the engine stops, close the connection instead of waiting).
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
        match next {
            Some(AppSide::Waiting(_)) if self.stopping => self.close_at_stop(ep, now, h),
            Some(app) => self.table.set_app(h.slot(), app),
            None => {}
        }
    }

    /// Whether memory is under pressure: apps' queues are then kept small.
    fn under_pressure(&self) -> bool {
        self.memory.level() >= Level::Pressure
    }

    /// In-order data of a connection whose app is running, straight from the segment into its
    /// stream's queue, as far as the queue's cap ([`Endpoint::handle_into`]): `serve` would
    /// move it there from the TCP core's receive buffer right after, a second copy of every
    /// byte. Returns how many bytes were taken; `serve` wakes the reader.
    pub fn deliver(&mut self, h: ConnectionHandle, data: &[u8]) -> usize {
        let Some(g) = self.table.get(h.slot()) else { return 0 };
        let (AppSide::Task(shared) | AppSide::Turn(shared, _)) = &g.app else { return 0 };
        let mut st = shared.lock();
        let n = rx_cap(self.under_pressure()).saturating_sub(st.rx.len()).min(data.len());
        st.rx.extend(&data[..n]);
        st.rx_added += n as u64;
        n
    }

    /// A waiting connection with input (data or the peer's FIN) gets a turn, with fresh stream
    /// state; returns whether it did. A reset or timeout is no input: a waiting app has nothing
    /// to learn from it.
    fn start_turn(&mut self, ep: &Endpoint, h: ConnectionHandle, id: u32) -> bool {
        let Some(conn) = ep.connection(h) else { return false };
        if !conn.has_unread() && !conn.peer_finished() {
            return false;
        }
        if self.turn_handlers.get(id as usize).is_none() {
            return false;
        }
        let shared = StreamShared::new(h.slot(), conn.local(), conn.remote(), self.waker.clone());
        // Run by `service` once `serve` has given the stream its input.
        self.fresh_turn = Some((id, shared.clone()));
        self.table.set_app(h.slot(), AppSide::Turn(shared, id));
        true
    }
}

impl Drop for Glue {
    /// The engine thread is going away (a panic unwinds it, or every connection is gone): a
    /// stream still held on another thread learns that its connection ended instead of waiting
    /// for a thread that no longer runs, and what its connections held leaves the account.
    fn drop(&mut self) {
        self.memory.change(self.held, 0);
        for g in self.table.slots.iter().flatten() {
            let Some(shared) = g.app.shared() else { continue };
            let mut st = shared.lock();
            st.error.get_or_insert(StreamError::Aborted);
            if let Some(w) = st.read_waker.take() {
                w.wake();
            }
            if let Some(w) = st.write_waker.take() {
                w.wake();
            }
        }
    }
}

#[cfg(test)]
mod tests;
