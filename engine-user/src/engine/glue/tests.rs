//! The glue against a real [`Endpoint`], without a socket or BPF: a client in memory drives
//! one connection with segments (and acknowledges what it receives), the apps run on this
//! thread's runtime, time stands still. Each test steps the queue loop's app-side jobs (poked
//! streams, timers, events, output) as the loop does.

use std::{
    future::Future,
    net::SocketAddr,
    sync::atomic::{AtomicUsize, Ordering},
};

use engine_common::handshake::HandshakeFacts;
use synx_tcp::{
    Config, Flags, Header, Keepalive, SeqNum, State,
    endpoint::Disposition,
    segment,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;
use crate::engine::listeners::LocalHandler;
use crate::engine::memory::{Level, Memory, MemoryLimits};
use crate::apps;

const ISS: u32 = 1_000;
const IRS: u32 = 5_000;
/// Loop turns a step runs: enough for an app to read, write and return several times.
const ROUNDS: usize = 16;

fn local() -> SocketAddr {
    "198.18.0.1:80".parse().unwrap()
}

fn facts() -> HandshakeFacts {
    HandshakeFacts { iss: ISS, irs: IRS, mss: 1460, ..Default::default() }
}

/// Run a test on a single-threaded runtime whose local tasks are the apps.
fn run(test: impl Future<Output = ()>) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    tokio::task::LocalSet::new().block_on(&rt, test);
}

fn turns<F, Fut>(handler: F) -> ListenerEntry
where
    F: Fn(Stream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<Stream>> + 'static,
{
    ListenerEntry { accept: Accept::Turns(Arc::new(move |s| Box::pin(handler(s)))), keepalive: Keepalive::default() }
}

fn echo_turns() -> ListenerEntry {
    turns(|s| async move { apps::echo_turn(s).await.unwrap_or(None) })
}

/// An echo whose every turn waits once before it reads (as a turn waiting for a backend
/// does): its turns run as tasks.
fn waiting_echo_turns() -> ListenerEntry {
    turns(|s| async move {
        tokio::task::yield_now().await;
        apps::echo_turn(s).await.unwrap_or(None)
    })
}

/// An echo served by a task for the connection's life ([`Accept::Local`]).
fn echo_task() -> LocalHandler {
    Arc::new(|mut s: Stream| {
        Box::pin(async move {
            let mut buf = [0u8; 64];
            while let Ok(n @ 1..) = s.read(&mut buf).await {
                if s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        })
    })
}

/// A turn handler that counts its calls and reads nothing; `Some` hands the stream back.
fn counted_turns(calls: &Arc<AtomicUsize>, hand_back: bool) -> ListenerEntry {
    let calls = calls.clone();
    turns(move |s| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move { hand_back.then_some(s) }
    })
}

/// The peer of one connection.
struct Client {
    remote: SocketAddr,
    h: ConnectionHandle,
    /// Our next sequence number, and the next one we expect.
    snd_nxt: SeqNum,
    rcv_nxt: SeqNum,
    received: Vec<u8>,
    fin: bool,
    rst: bool,
}

/// An endpoint and its glue, stepped by hand.
struct Bed {
    ep: Endpoint,
    glue: Glue,
    stats: Arc<QueueStats>,
    now: Instant,
    /// Tuples the glue reported released.
    released: Vec<SocketAddr>,
}

impl Bed {
    fn new() -> Self {
        Self::with_memory(MemoryLimits::default())
    }

    fn with_memory(limits: MemoryLimits) -> Self {
        let config = Config { recv_buffer: 64 * 1024, send_buffer: 64 * 1024, ..Config::default() };
        let stats = Arc::new(QueueStats::default());
        Self {
            ep: Endpoint::new(config, 16),
            glue: Glue::new(Arc::new(EngineWaker::new()), stats.clone(), Arc::new(Memory::new(limits))),
            stats,
            now: Instant::from_nanos(1_000_000_000),
            released: Vec::new(),
        }
    }

    /// A client's cookie ACK (carrying `data`) accepted for `listener`, as the queue loop does.
    fn connect(&mut self, listener: &Arc<ListenerEntry>, port: u16, data: &[u8]) -> Client {
        let remote = SocketAddr::new("198.18.0.2".parse().unwrap(), port);
        let ack = Header {
            src_port: port,
            dst_port: local().port(),
            seq: SeqNum(IRS + 1),
            ack: SeqNum(ISS + 1),
            flags: Flags::ACK,
            window: 65535,
            ..Default::default()
        };
        let accepted = self.ep.accept_cookie(self.now, local(), remote, &ack, data, Some(listener.clone()), || Some(facts()));
        let (h, listener) = accepted.expect("a valid cookie ACK for a listener is accepted");
        self.glue.attach(&mut self.ep, self.now, h, Link::default(), &listener);
        Client {
            remote,
            h,
            snd_nxt: SeqNum(IRS + 1) + data.len() as u32,
            rcv_nxt: SeqNum(ISS + 1),
            received: Vec::new(),
            fin: false,
            rst: false,
        }
    }

    /// The client sends a segment (always with ACK) into the endpoint, as the queue loop
    /// delivers one.
    fn send(&mut self, c: &mut Client, flags: Flags, data: &[u8]) -> Disposition {
        self.send_with_window(c, flags, data, 65535)
    }

    fn send_with_window(&mut self, c: &mut Client, flags: Flags, data: &[u8], window: u16) -> Disposition {
        let h = Header {
            src_port: c.remote.port(),
            dst_port: local().port(),
            seq: c.snd_nxt,
            ack: c.rcv_nxt,
            flags: flags | Flags::ACK,
            window,
            ..Default::default()
        };
        c.snd_nxt += data.len() as u32 + u32::from(flags.fin());
        let glue = &mut self.glue;
        let d = self.ep.handle_into(self.now, local(), c.remote, &h, data, &mut |h, data| glue.deliver(h, data));
        if let Disposition::Delivered(h) = d {
            self.glue.service(&mut self.ep, self.now, h);
        }
        d
    }

    /// Run the loop's app-side jobs for [`ROUNDS`] turns: the apps, poked streams, timers,
    /// events and output, the client taking (and acknowledging) what it is sent.
    async fn settle(&mut self, c: &mut Client) {
        for _ in 0..ROUNDS {
            self.app_jobs().await;
            let mut buf = [0u8; 2048];
            let mut news = false;
            while let Some(t) = self.ep.poll_transmit(self.now, &mut buf) {
                assert_eq!(t.remote, c.remote, "one client per test");
                let (h, payload) = segment::parse(&buf[..t.len]).unwrap();
                if h.flags.rst() {
                    c.rst = true;
                } else if h.seq == c.rcv_nxt && (!payload.is_empty() || h.flags.fin()) {
                    c.received.extend_from_slice(payload);
                    c.rcv_nxt += payload.len() as u32 + u32::from(h.flags.fin());
                    c.fin |= h.flags.fin();
                    news = true;
                }
            }
            if news && !c.rst {
                self.send(c, Flags::ACK, &[]);
            }
        }
    }

    /// One loop turn's app-side jobs but output: the apps, poked streams, timers, events.
    async fn app_jobs(&mut self) {
        tokio::task::yield_now().await;
        self.glue.serve_poked(&mut self.ep, self.now);
        self.ep.handle_timeout(self.now);
        let released = &mut self.released;
        self.glue.handle_events(&mut self.ep, self.now, |_, _, remote| released.push(remote));
    }

    /// The loop's app-side jobs for [`ROUNDS`] turns, what is sent going nowhere (clients that
    /// read nothing).
    async fn run_apps(&mut self) {
        for _ in 0..ROUNDS {
            self.app_jobs().await;
            let mut buf = [0u8; 2048];
            while self.ep.poll_transmit(self.now, &mut buf).is_some() {}
        }
    }

    fn state(&self, c: &Client) -> Option<State> {
        self.ep.infos().find(|(h, _)| *h == c.h).map(|(_, info)| info.state)
    }

    /// We reset `c`'s connection (counted as aborted) and forgot it.
    #[track_caller]
    fn assert_aborted(&self, c: &Client) {
        assert!(c.rst, "a reset went out");
        assert_eq!(self.count("tcp_closed_aborted"), 1);
        assert!(self.glue.is_empty(), "released, its glue gone");
        assert_eq!(self.released, [c.remote]);
    }

    /// A counter of this queue, by its `synx stats` name.
    fn count(&self, name: &str) -> u64 {
        let all = crate::engine::stats::sum([&*self.stats]);
        all.iter().find(|(n, _)| *n == name).map(|(_, v)| *v).unwrap_or_else(|| panic!("no counter {name}"))
    }
}

#[test]
fn a_turn_runs_at_accept_and_per_input_and_between_them_the_connection_holds_nothing() {
    run(async {
        let mut bed = Bed::new();
        let listener = Arc::new(echo_turns());
        let mut c = bed.connect(&listener, 40001, &[]);
        assert_eq!(bed.count("tcp_accepted"), 1);
        // The first turn runs at accept, input or not; with nothing to read it ends in its
        // first step, run inside the glue's call: no task.
        assert_eq!(bed.glue.tasks(), 0, "a turn that does not wait is no task");
        bed.settle(&mut c).await;
        assert_eq!((bed.glue.tasks(), bed.glue.waiting()), (0, 1), "no input: waiting, no task");
        for msg in [&b"ping"[..], b"pong", b"once more"] {
            let before = c.received.len();
            bed.send(&mut c, Flags::PSH, msg);
            assert_eq!(bed.glue.tasks(), 0, "input starts a turn, which echoes it and ends at once");
            assert_eq!(c.received.len(), before, "its answer leaves with the loop's output");
            bed.settle(&mut c).await;
            assert!(c.received.ends_with(msg), "echoed {:?}", String::from_utf8_lossy(&c.received));
            assert_eq!((bed.glue.tasks(), bed.glue.waiting()), (0, 1));
        }
        assert_eq!(c.received, b"pingpongonce more");
        assert_eq!(bed.state(&c), Some(State::Established));
        assert!(!c.fin && !c.rst);
    });
}

#[test]
fn a_turn_that_reads_none_of_its_input_runs_again_only_for_new_input() {
    run(async {
        let mut bed = Bed::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let mut c = bed.connect(&Arc::new(counted_turns(&calls, true)), 40002, &[]);
        bed.settle(&mut c).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        bed.send(&mut c, Flags::PSH, b"unread");
        bed.settle(&mut c).await;
        // The turn started for the input never looked at it: once more with all of it in view,
        // then no more (calling again at once would spin the thread).
        let after_input = calls.load(Ordering::SeqCst);
        assert_eq!(after_input, 3);
        bed.settle(&mut c).await;
        assert_eq!(calls.load(Ordering::SeqCst), after_input, "no turn without new input");
        assert_eq!((bed.glue.tasks(), bed.glue.waiting()), (0, 0), "input waits: the stream state stays");
        bed.send(&mut c, Flags::PSH, b"more");
        bed.settle(&mut c).await;
        assert_eq!(calls.load(Ordering::SeqCst), after_input + 1, "new input, a new turn");
    });
}

#[test]
fn a_turn_that_read_the_end_of_the_stream_closes_and_the_connection_is_released() {
    run(async {
        let mut bed = Bed::new();
        let mut c = bed.connect(&Arc::new(echo_turns()), 40003, &[]);
        bed.settle(&mut c).await;
        bed.send(&mut c, Flags::PSH | Flags::FIN, b"bye");
        bed.settle(&mut c).await;
        assert_eq!(c.received, b"bye");
        assert!(c.fin, "the app's shutdown sends our FIN");
        assert!(!c.rst);
        // Our FIN acknowledged (LAST-ACK -> CLOSED): released, its glue and FLOWS entry go.
        assert!(bed.glue.is_empty());
        assert_eq!(bed.released, [c.remote]);
        assert_eq!(bed.count("tcp_closed"), 1);
        assert_eq!(bed.count("tcp_closed_reset") + bed.count("tcp_closed_aborted"), 0);
    });
}

#[test]
fn a_waiting_connection_reset_by_its_peer_is_released_without_a_turn() {
    run(async {
        let mut bed = Bed::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let mut c = bed.connect(&Arc::new(counted_turns(&calls, true)), 40004, &[]);
        bed.settle(&mut c).await;
        assert_eq!(bed.glue.waiting(), 1);
        bed.send(&mut c, Flags::RST, &[]);
        bed.settle(&mut c).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1, "a reset is no input for a waiting app");
        assert_eq!(bed.count("tcp_closed_reset"), 1);
        assert!(bed.glue.is_empty());
        assert_eq!(bed.glue.waiting(), 0);
        assert_eq!(bed.released, [c.remote]);
    });
}

#[test]
fn closing_with_unread_data_resets() {
    // RFC 2525 2.17, as Linux: the app drops its stream with the ACK's data unread.
    run(async {
        let mut bed = Bed::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let mut c = bed.connect(&Arc::new(counted_turns(&calls, false)), 40005, b"never read");
        bed.settle(&mut c).await;
        assert!(!c.fin, "a reset, not a FIN");
        bed.assert_aborted(&c);
    });
}

#[test]
fn data_arriving_after_the_apps_close_resets() {
    // RFC 2525 2.17: the app closed with nothing unread (a FIN went out); later data has no
    // reader.
    run(async {
        let mut bed = Bed::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let mut c = bed.connect(&Arc::new(counted_turns(&calls, false)), 40006, &[]);
        bed.settle(&mut c).await;
        assert!(c.fin && !c.rst, "a clean close: our FIN");
        assert_eq!(bed.state(&c), Some(State::FinWait2));
        bed.send(&mut c, Flags::PSH, b"too late");
        bed.settle(&mut c).await;
        bed.assert_aborted(&c);
    });
}

#[test]
fn a_turn_that_waits_goes_on_as_a_task_and_ends_as_one() {
    run(async {
        let mut bed = Bed::new();
        let mut c = bed.connect(&Arc::new(waiting_echo_turns()), 40020, &[]);
        assert_eq!(bed.glue.tasks(), 1, "the first turn waited: a task");
        bed.settle(&mut c).await;
        assert_eq!((bed.glue.tasks(), bed.glue.waiting()), (0, 1));
        for msg in [&b"ping"[..], b"pong"] {
            bed.send(&mut c, Flags::PSH, msg);
            assert_eq!(bed.glue.tasks(), 1, "input starts a turn, which waits");
            bed.settle(&mut c).await;
            assert!(c.received.ends_with(msg), "echoed {:?}", String::from_utf8_lossy(&c.received));
            assert_eq!((bed.glue.tasks(), bed.glue.waiting()), (0, 1));
        }
        assert!(!c.fin && !c.rst);
    });
}

#[test]
fn a_turn_that_panics_is_counted_and_its_connection_closed_while_the_others_are_served() {
    run(async {
        let mut bed = Bed::new();
        let panics = turns(|s| async move {
            let _s = s;
            panic!("an app's bug");
        });
        let mut bad = bed.connect(&Arc::new(panics), 40021, b"request");
        assert_eq!(bed.count("app_turn_panics"), 1);
        bed.settle(&mut bad).await;
        // Its stream dropped with unread input: the connection is reset (RFC 9293 3.10.4).
        assert!(bad.rst, "the peer learns the connection is gone");
        let mut good = bed.connect(&Arc::new(echo_turns()), 40022, b"still here");
        bed.settle(&mut good).await;
        assert_eq!(good.received, b"still here");
        assert_eq!(bed.count("app_turn_panics"), 1);
    });
}

#[test]
fn serve_local_holds_a_task_for_the_connections_life() {
    run(async {
        let mut bed = Bed::new();
        let handler = echo_task();
        let keepalive = Keepalive { idle: std::time::Duration::from_secs(30), ..Keepalive::default() };
        let listener = Arc::new(ListenerEntry { accept: Accept::Local(handler), keepalive });
        let mut c = bed.connect(&listener, 40007, b"hello");
        assert_eq!(bed.ep.connection(c.h).map(|conn| conn.keepalive()), Some(keepalive), "the listener's keepalive");
        bed.settle(&mut c).await;
        assert_eq!(c.received, b"hello");
        assert_eq!((bed.glue.tasks(), bed.glue.waiting()), (1, 0), "a task while the connection lives");
        bed.send(&mut c, Flags::PSH, b" again");
        bed.settle(&mut c).await;
        assert_eq!(c.received, b"hello again");
        bed.send(&mut c, Flags::FIN, &[]);
        bed.settle(&mut c).await;
        assert_eq!(bed.glue.tasks(), 0, "the task ends with the stream");
        assert!(c.fin && !c.rst, "dropped after the peer's FIN: a clean close");
        assert!(bed.glue.is_empty());
    });
}

#[test]
fn a_connection_nobody_accepts_any_more_is_refused_with_a_reset() {
    run(async {
        let mut bed = Bed::new();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        drop(rx);
        let listener = Arc::new(ListenerEntry { accept: Accept::Channel(tx), keepalive: Keepalive::default() });
        let mut c = bed.connect(&listener, 40008, &[]);
        bed.settle(&mut c).await;
        bed.assert_aborted(&c);
    });
}

#[test]
fn a_channel_listeners_stream_reaches_accept_and_sees_the_peers_reset() {
    run(async {
        let mut bed = Bed::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let listener = Arc::new(ListenerEntry { accept: Accept::Channel(tx), keepalive: Keepalive::default() });
        let mut c = bed.connect(&listener, 40009, b"hi");
        let mut stream = rx.try_recv().expect("the stream is handed to the listener at accept");
        bed.settle(&mut c).await;
        let mut buf = [0u8; 8];
        assert_eq!(stream.read(&mut buf).await.unwrap(), 2);
        bed.send(&mut c, Flags::RST, &[]);
        bed.settle(&mut c).await;
        assert_eq!(stream.read(&mut buf).await.unwrap_err().kind(), std::io::ErrorKind::ConnectionReset);
        assert_eq!(bed.count("tcp_closed_reset"), 1);
        drop(stream);
        bed.settle(&mut c).await;
        assert!(bed.glue.is_empty());
    });
}

#[test]
fn a_turns_output_reaches_the_core_before_the_connection_waits() {
    // The turn writes more than the send buffer holds and hands the stream back at once: the
    // connection keeps its stream state until the client has acknowledged enough for the rest.
    const LEN: usize = 200 * 1024;
    run(async {
        let mut bed = Bed::new();
        let listener = turns(|mut s: Stream| async move {
            s.write_all(&vec![7u8; LEN]).await.ok()?;
            Some(s)
        });
        let mut c = bed.connect(&Arc::new(listener), 40010, &[]);
        bed.settle(&mut c).await;
        let mut rounds = 0;
        while c.received.len() < LEN {
            assert_eq!(bed.glue.waiting(), 0, "waiting with {} of {LEN} bytes sent", c.received.len());
            rounds += 1;
            assert!(rounds < 1000, "stalled at {} bytes", c.received.len());
            bed.settle(&mut c).await;
        }
        assert!(c.received.iter().all(|&b| b == 7));
        bed.settle(&mut c).await;
        assert_eq!((bed.glue.tasks(), bed.glue.waiting()), (0, 1));
    });
}

#[test]
fn the_end_of_the_grace_resets_every_connection() {
    run(async {
        let mut bed = Bed::new();
        let mut c = bed.connect(&Arc::new(echo_turns()), 40011, &[]);
        bed.settle(&mut c).await;
        bed.glue.abort_all(&mut bed.ep, bed.now);
        bed.settle(&mut c).await;
        bed.assert_aborted(&c);
    });
}

#[test]
fn stopping_closes_a_waiting_connection_with_a_fin() {
    run(async {
        let mut bed = Bed::new();
        let mut c = bed.connect(&Arc::new(echo_turns()), 40012, b"ping");
        bed.settle(&mut c).await;
        assert_eq!((c.received.as_slice(), bed.glue.waiting()), (&b"ping"[..], 1));
        bed.glue.stop(&mut bed.ep, bed.now);
        bed.settle(&mut c).await;
        assert!(c.fin && !c.rst, "a FIN, as a server closes an idle keep-alive connection");
        assert_eq!(bed.state(&c), Some(State::FinWait2));
        assert_eq!((bed.glue.waiting(), bed.count("tcp_closed_at_stop")), (0, 1));
        // The client closes too: we wait out TIME_WAIT, nothing reset.
        bed.send(&mut c, Flags::FIN, &[]);
        bed.settle(&mut c).await;
        assert_eq!(bed.state(&c), Some(State::TimeWait));
        assert_eq!(bed.count("tcp_closed_aborted") + bed.count("tcp_closed_reset"), 0);
    });
}

#[test]
fn stopping_lets_a_running_turn_finish_and_closes_when_it_would_wait() {
    run(async {
        let mut bed = Bed::new();
        let mut c = bed.connect(&Arc::new(waiting_echo_turns()), 40013, &[]);
        bed.settle(&mut c).await;
        bed.send(&mut c, Flags::PSH, b"last request");
        assert_eq!(bed.glue.tasks(), 1, "a turn runs");
        bed.glue.stop(&mut bed.ep, bed.now);
        assert!(!c.fin, "not while its turn runs");
        bed.settle(&mut c).await;
        assert_eq!(c.received, b"last request", "the turn's answer first");
        assert!(c.fin && !c.rst, "then a FIN");
        assert_eq!(bed.count("tcp_closed_at_stop"), 1);
    });
}

#[test]
fn stopping_leaves_a_task_served_connection_to_its_task() {
    run(async {
        let mut bed = Bed::new();
        let handler = echo_task();
        let listener = Arc::new(ListenerEntry { accept: Accept::Local(handler), keepalive: Keepalive::default() });
        let mut c = bed.connect(&listener, 40014, &[]);
        bed.settle(&mut c).await;
        bed.glue.stop(&mut bed.ep, bed.now);
        bed.send(&mut c, Flags::PSH, b"still served");
        bed.settle(&mut c).await;
        assert_eq!(c.received, b"still served");
        assert!(!c.fin && !c.rst);
        assert_eq!((bed.glue.tasks(), bed.count("tcp_closed_at_stop")), (1, 0));
    });
}


fn shared(slot: u32) -> Arc<StreamShared> {
    StreamShared::new(
        slot,
        "198.18.0.1:80".parse().unwrap(),
        "198.18.0.2:4000".parse().unwrap(),
        Arc::new(EngineWaker::new()),
    )
}

#[test]
fn the_glue_table_counts_connections_and_waiting_ones() {
    let mut t = GlueTable::default();
    assert!(t.is_empty());
    t.insert(5, SlotGlue { link: Link::default(), app: AppSide::Turn(shared(5), 0), held: 0 });
    t.insert(0, SlotGlue { link: Link::default(), app: AppSide::Task(shared(0)), held: 0 });
    assert_eq!((t.len, t.waiting), (2, 0));
    assert!(t.get(3).is_none(), "slots between are empty");
    let s = match &t.get(5).unwrap().app {
        AppSide::Turn(s, _) => Arc::downgrade(s),
        _ => unreachable!("inserted as a turn"),
    };
    t.set_app(5, AppSide::Waiting(0));
    assert_eq!((t.len, t.waiting), (2, 1));
    assert!(s.upgrade().is_none(), "a waiting connection keeps no stream state");
    t.set_app(5, AppSide::Waiting(0));
    assert_eq!(t.waiting, 1, "waiting again is not counted twice");
    t.set_app(5, AppSide::Turn(shared(5), 0));
    t.set_app(5, AppSide::Waiting(0));
    // A new incarnation in the slot replaces the old glue, counts and all.
    t.insert(5, SlotGlue { link: Link::default(), app: AppSide::Turn(shared(5), 0), held: 0 });
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
    assert!(std::mem::size_of::<Option<SlotGlue>>() <= 32, "{} B", std::mem::size_of::<Option<SlotGlue>>());
}

#[test]
fn each_reset_to_a_stranger_goes_back_over_the_link_its_frame_came_by() {
    run(async {
        let mut bed = Bed::new();
        let listener = Arc::new(echo_turns());
        let mut c = bed.connect(&listener, 40001, &[]);
        let conn_link = Link { local_mac: [2, 0, 0, 0, 0, 1], remote_mac: [2, 0, 0, 0, 0, 0xcc] };
        bed.glue.set_link(c.h.slot(), conn_link);
        // One batch: two strangers from different hosts (a segment for no connection and no
        // listener), and in between data for the connection, whose echo goes out with them.
        let link_of = |i: u8| Link { local_mac: [2, 0, 0, 0, 0, 1], remote_mac: [2, 0, 0, 0, 0, i] };
        let stranger = |port: u16| SocketAddr::new("198.18.0.9".parse().unwrap(), port);
        let ack = |port: u16| Header { src_port: port, dst_port: 81, seq: SeqNum(7), ack: SeqNum(9), flags: Flags::ACK, ..Default::default() };
        for (port, i) in [(50001, 0xa1), (50002, 0xa2)] {
            let to: SocketAddr = SocketAddr::new(local().ip(), 81);
            let before = bed.ep.pending_resets();
            let refused = bed.ep.accept_cookie(bed.now, to, stranger(port), &ack(port), &[], None::<Arc<ListenerEntry>>, || None);
            assert!(refused.is_err());
            bed.glue.note_stranger(&bed.ep, before, link_of(i));
            if port == 50001 {
                bed.send(&mut c, Flags::PSH, b"hello");
                tokio::task::yield_now().await;
                bed.glue.serve_poked(&mut bed.ep, bed.now);
            }
        }
        let mut buf = [0u8; 2048];
        let mut sent = Vec::new();
        while let Some(out) = bed.ep.poll_transmit(bed.now, &mut buf) {
            sent.push((out.remote, bed.glue.link_for(&out)));
        }
        assert!(sent.contains(&(stranger(50001), Some(link_of(0xa1)))), "{sent:?}");
        assert!(sent.contains(&(stranger(50002), Some(link_of(0xa2)))), "{sent:?}");
        assert!(sent.iter().any(|&(to, link)| to == c.remote && link == Some(conn_link)), "{sent:?}");
        assert!(sent.iter().all(|&(to, link)| (to == c.remote) == (link == Some(conn_link))), "{sent:?}");
    });
}

/// A zero-window holder: 48 KiB echoed into a peer that reads nothing.
async fn holder(bed: &mut Bed, port: u16) -> Client {
    let mut c = bed.connect(&Arc::new(echo_turns()), port, &[]);
    bed.run_apps().await;
    for _ in 0..3 {
        // A zero window: it reads nothing we send.
        bed.send_with_window(&mut c, Flags::PSH, &[7u8; 16 * 1024], 0);
        bed.run_apps().await;
    }
    c
}

#[test]
fn memory_over_its_limit_resets_the_largest_holders_and_spares_the_light() {
    run(async {
        let limits = MemoryLimits { limit: 256 * 1024, ..MemoryLimits::default() };
        let mut bed = Bed::with_memory(limits);
        let mut light = bed.connect(&Arc::new(echo_turns()), 40100, &[]);
        let holders = [holder(&mut bed, 40101).await, holder(&mut bed, 40102).await];
        let held = bed.glue.held();
        assert!(held >= 2 * 48 * 1024, "two holders hold their echo: {held}");
        assert_eq!(bed.glue.memory.used(), held, "one account");
        assert_eq!(bed.glue.enforce(&mut bed.ep, bed.now, 1), Enforced::default(), "under the limit: nothing");
        // Three more and memory is over its limit: new data for a holder is refused, and the
        // largest holders go until the total is under pressure (192 KiB) again.
        let more = [holder(&mut bed, 40103).await, holder(&mut bed, 40104).await, holder(&mut bed, 40105).await];
        assert_eq!(bed.glue.memory.level(), Level::Over, "{} held", bed.glue.held());
        assert!(bed.glue.may_refuse_data());
        assert!(bed.glue.refuses_data(holders[0].h, holders[0].remote.ip()));
        assert!(!bed.glue.refuses_data(light.h, light.remote.ip()), "a connection holding nothing may start");
        let done = bed.glue.enforce(&mut bed.ep, bed.now, 1);
        bed.run_apps().await;
        assert!(done.memory_resets >= 1 && done.persist_resets == 0, "{done:?}");
        assert!(bed.glue.memory.level() < Level::Over, "{} held", bed.glue.held());
        assert!(bed.glue.held() <= limits.pressure(), "{} held", bed.glue.held());
        assert_eq!(bed.released.len() as u64, done.memory_resets, "each reset released");
        assert!(holders.iter().chain(&more).any(|c| bed.released.contains(&c.remote)));
        // The light connection is still served.
        bed.send(&mut light, Flags::PSH, b"still there?");
        bed.settle(&mut light).await;
        assert_eq!(light.received, b"still there?");
        assert!(!light.rst);
    });
}

#[test]
fn a_connection_in_persist_past_the_timeout_is_reset_and_its_memory_given_back() {
    run(async {
        let limits = MemoryLimits { persist_timeout: std::time::Duration::from_secs(60), ..MemoryLimits::default() };
        let mut bed = Bed::with_memory(limits);
        let c = holder(&mut bed, 40200).await;
        assert!(bed.glue.held() > 0);
        assert_eq!(bed.glue.enforce(&mut bed.ep, bed.now, 1), Enforced::default(), "persist starts now");
        bed.now = bed.now + std::time::Duration::from_secs(59);
        bed.ep.handle_timeout(bed.now);
        assert_eq!(bed.glue.enforce(&mut bed.ep, bed.now, 1), Enforced::default(), "not yet");
        bed.now = bed.now + std::time::Duration::from_secs(1);
        let done = bed.glue.enforce(&mut bed.ep, bed.now, 1);
        assert_eq!(done, Enforced { memory_resets: 0, persist_resets: 1 });
        bed.run_apps().await;
        assert_eq!(bed.released, [c.remote]);
        assert_eq!((bed.glue.held(), bed.glue.memory.used()), (0, 0), "all given back");
    });
}

#[test]
fn a_source_over_its_memory_has_its_data_refused_and_its_largest_connection_reset() {
    run(async {
        let limits = MemoryLimits { bytes_per_source: Some(64 * 1024), ..MemoryLimits::default() };
        let mut bed = Bed::with_memory(limits);
        let a = holder(&mut bed, 40301).await;
        assert!(bed.glue.held() > 48 * 1024);
        bed.glue.enforce(&mut bed.ep, bed.now, 1);
        assert!(!bed.glue.refuses_data(a.h, a.remote.ip()), "one holder is within the source's limit");
        let b = holder(&mut bed, 40302).await;
        let done = bed.glue.enforce(&mut bed.ep, bed.now, 1);
        assert_eq!(done.memory_resets, 1, "the source (both from 198.18.0.2) is over: its largest goes");
        assert!(bed.glue.refuses_data(b.h, b.remote.ip()) || bed.glue.refuses_data(a.h, a.remote.ip()));
        bed.run_apps().await;
        assert_eq!(bed.released.len(), 1);
        bed.glue.enforce(&mut bed.ep, bed.now, 1);
        assert!(!bed.glue.may_refuse_data(), "under its limit again");
    });
}

/// Hand every connection of `bed` over (as a queue loop does while handing over), then
/// import them into a fresh bed, as the successor's queue does.
fn move_all(bed: &mut Bed) -> (Bed, Vec<Moved>) {
    let (mut moved, mut fds) = (Vec::new(), Vec::new());
    bed.glue.hand_over(&mut bed.ep, &mut moved, &mut fds);
    let mut fds: Vec<Option<std::os::fd::OwnedFd>> = fds.into_iter().map(Some).collect();
    let mut next = Bed::new();
    for m in moved.clone() {
        let h = next.ep.import(&m.conn).unwrap();
        let fd = match &m.app {
            MovedApp::Resume { fd, .. } => fds[*fd as usize].take(),
            _ => None,
        };
        next.glue.adopt(h, m, fd);
    }
    (next, moved)
}

#[test]
fn handing_over_holds_a_waiting_connections_input_back_and_the_successors_turn_serves_it() {
    run(async {
        let mut bed = Bed::new();
        let listener = Arc::new(echo_turns());
        let mut c = bed.connect(&listener, 40100, b"first");
        bed.settle(&mut c).await;
        assert_eq!(c.received, b"first");
        bed.glue.begin_handover();
        assert!(bed.glue.holds_input_back(c.h.slot()), "waiting between turns: its input waits for the successor");
        let (mut next, moved) = move_all(&mut bed);
        assert_eq!(moved.len(), 1);
        assert_eq!(moved[0].app, MovedApp::Waiting);
        assert!(bed.glue.is_empty() && bed.ep.is_empty(), "gone from the old side without a trace");
        assert!(bed.ep.poll_transmit(bed.now, &mut [0u8; 2048]).is_none(), "nothing sent for it");
        // The successor: its next input finds the listener's turn handler.
        assert!(next.glue.is_moved(c.h.slot()));
        let d = next.ep.handle(next.now, local(), c.remote, &Header { src_port: c.remote.port(), dst_port: local().port(), seq: c.snd_nxt, ack: c.rcv_nxt, flags: Flags::ACK | Flags::PSH, window: 65535, ..Default::default() }, b"second");
        c.snd_nxt += 6;
        let Disposition::Delivered(h) = d else { panic!("{d:?}") };
        next.glue.resolve_moved(&mut next.ep, next.now, h, Some(&listener));
        next.glue.service(&mut next.ep, next.now, h);
        next.settle(&mut c).await;
        assert_eq!(c.received, b"firstsecond");
        assert!(!c.rst);
    });
}

#[test]
fn an_app_handing_over_with_a_socket_takes_its_unread_bytes_along_and_resumes_with_both() {
    run(async {
        let addr = local();
        // Never reads: hands the connection over, with one end of a socket pair, when asked.
        let stops: LocalHandler = Arc::new(|s: Stream| {
            Box::pin(async move {
                s.handover_signal().requested().await;
                let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
                std::mem::forget(b);
                s.hand_over(a.into());
            })
        });
        let listeners = Listeners::default();
        listeners.add_local(addr, Keepalive::default(), stops.clone());
        let entry = listeners.find(addr).unwrap();
        let mut bed = Bed::new();
        let mut c = bed.connect(&entry, 40101, b"unread");
        bed.settle(&mut c).await;
        bed.glue.begin_handover();
        bed.settle(&mut c).await;
        // Its data acknowledged (the delayed ACK): quiescent.
        bed.now = bed.now + std::time::Duration::from_millis(500);
        bed.settle(&mut c).await;
        let (mut next, moved) = move_all(&mut bed);
        assert_eq!(moved.len(), 1, "quiescent once the app handed it over");
        assert_eq!(moved[0].app, MovedApp::Resume { fd: 0, rx: b"unread".to_vec() });
        // The successor's app resumes with the socket and the bytes: it echoes them.
        let resumed = Arc::new(AtomicUsize::new(0));
        let seen = resumed.clone();
        let echo_resumed: LocalHandler = Arc::new(move |mut s: Stream| {
            let seen = seen.clone();
            Box::pin(async move {
                if s.take_resumed().is_some() {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
                let mut buf = [0u8; 64];
                while let Ok(n @ 1..) = s.read(&mut buf).await {
                    if s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            })
        });
        let successors = Listeners::default();
        assert_eq!(next.glue.resuming(), [c.h.slot()]);
        assert!(!next.glue.resume(&mut next.ep, next.now, c.h.slot(), &successors), "no listener yet: later");
        successors.add_local(addr, Keepalive::default(), echo_resumed);
        assert!(next.glue.resume(&mut next.ep, next.now, c.h.slot(), &successors));
        next.settle(&mut c).await;
        assert_eq!(resumed.load(Ordering::SeqCst), 1, "the app got the socket");
        assert_eq!(c.received, b"unread");
        assert!(!c.rst);
    });
}

/// The proxy app as `synx run` serves it on the engine thread, to `backend` (never dialled
/// when the connection comes with its backend socket).
fn proxy_app(backend: SocketAddr) -> LocalHandler {
    let service = apps::Service::new(apps::App::Proxy(apps::ProxyOptions { backend, proxy_protocol: None }));
    Arc::new(move |s: Stream| {
        let service = service.clone();
        Box::pin(async move {
            let _ = service.serve(s).await;
        })
    })
}

#[test]
fn a_proxied_connection_whose_client_closed_as_it_stopped_finishes_here_instead_of_bouncing() {
    run(async {
        let addr = local();
        // The backend: a kernel TCP connection on loopback, its far end held by the test.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let backend_addr = l.local_addr().unwrap();
        let listeners = Listeners::default();
        listeners.add_local(addr, Keepalive::default(), proxy_app(backend_addr));
        let entry = listeners.find(addr).unwrap();
        let mut bed = Bed::new();
        let mut c = bed.connect(&entry, 40102, &[]);
        bed.settle(&mut c).await;
        let (far, _) = l.accept().unwrap();
        // The client's last bytes and its FIN reach the core just as the proxy is asked to stop.
        bed.send(&mut c, Flags::PSH | Flags::FIN, b"bye");
        bed.glue.begin_handover();
        for _ in 0..10 {
            bed.settle(&mut c).await;
            while let Some(&slot) = bed.glue.resuming().first() {
                assert!(bed.glue.resume(&mut bed.ep, bed.now, slot, &listeners));
            }
        }
        // It stays, half closed, with its app: the client's bytes reach the backend and the
        // backend's end closes the connection with a FIN.
        let mut got = Vec::new();
        far.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        std::io::Read::read_to_end(&mut (&far), &mut got).unwrap();
        assert_eq!(got, b"bye");
        drop(far);
        for _ in 0..50 {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            bed.settle(&mut c).await;
            if c.fin {
                break;
            }
        }
        assert!(c.fin && !c.rst, "closed with a FIN, not reset");
        let (mut moved, mut fds) = (Vec::new(), Vec::new());
        bed.glue.hand_over(&mut bed.ep, &mut moved, &mut fds);
        assert!(moved.iter().all(|m| !matches!(m.app, MovedApp::Resume { .. })), "not handed over half closed");
    });
}

/// A connection that folds gives its buffers back with its TCB: the memory account must say
/// so, or every connection that once held data and went quiet (a keep-alive client between
/// requests, a closed one in TIME_WAIT) stays counted at what it held last, until a busy
/// server is "over" its limit with nothing held and resets its live connections.
#[test]
fn a_connection_that_folds_holds_nothing_in_the_memory_account() {
    run(async {
        let mut bed = Bed::new();
        // A request/response connection gone quiet between requests.
        let mut idle = bed.connect(&Arc::new(echo_turns()), 40200, &[]);
        bed.settle(&mut idle).await;
        bed.send(&mut idle, Flags::PSH, &[5u8; 3000]);
        bed.settle(&mut idle).await;
        assert_eq!(idle.received.len(), 3000);
        // A server that answers and closes first (HTTP's Connection: close), its client's
        // FIN acknowledging ours: TIME_WAIT.
        let closer = turns(|mut s| async move {
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(&[6u8; 3000]).await;
            None
        });
        let mut closed = bed.connect(&Arc::new(closer), 40201, &[]);
        bed.send(&mut closed, Flags::PSH, b"GET / HTTP/1.1\r\n\r\n");
        bed.settle(&mut closed).await;
        assert!(closed.fin && closed.received.len() == 3000, "answered and closed");
        bed.send(&mut closed, Flags::FIN, &[]);
        bed.settle(&mut closed).await;
        assert_eq!(bed.state(&closed), Some(State::TimeWait));
        assert_eq!(bed.ep.parked(), 2, "both folded");
        assert_eq!(bed.glue.held(), 0, "folded connections hold no buffer");
        assert_eq!(bed.glue.memory.used(), 0);
        assert!(bed.glue.holders.is_empty(), "nothing for the limits to look through");
        // Served again, the idle one counts what it holds while it holds it, and no more after.
        bed.send(&mut idle, Flags::PSH, b"again");
        bed.settle(&mut idle).await;
        assert!(idle.received.ends_with(b"again"));
        assert_eq!(bed.glue.held(), 0);
    });
}
