//! Questions the control socket asks the queue threads: each thread owns its connections, so
//! `synx conns` sends every thread a request and each answers from its own loop
//! ([`answer_conns`], within its next turn). Counters need no request: each thread publishes
//! its [`QueueStats`] and readers sum them.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use serde::Serialize;
use synx_tcp::{
    Instant,
    endpoint::Endpoint,
};

use super::stats::{self, QueueStats};
use crate::api::EngineWaker;

/// One row of `synx conns`: a connection as an operator sees it (the core's
/// [`synx_tcp::ConnectionInfo`] is the whole TCB's).
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionRow {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: String,
    /// Time since the peer was last heard from (a segment the core accepted), in milliseconds.
    pub idle_ms: u64,
    pub keepalive_probes: u32,
    pub queue: u32,
    pub tcp: TcpRow,
}

/// The TCB's sending and receiving state, as `ss -ti` shows a kernel socket's: what an
/// operator (or a test that saw a transfer stall) needs to tell who waits for what.
#[derive(Debug, Clone, Serialize)]
pub struct TcpRow {
    pub srtt_us: Option<u64>,
    pub rto_ms: u64,
    pub cwnd: u32,
    pub ssthresh: u32,
    /// The peer's window (bytes) and ours.
    pub snd_wnd: u32,
    pub rcv_wnd: u32,
    /// Bytes in the send buffer (in flight included), in flight, and readable by the app.
    pub send_queued: usize,
    pub in_flight: u32,
    pub recv_queued: usize,
    /// The timer that fires next (retransmit, persist, keepalive, ...) and in how many ms
    /// (negative: overdue).
    pub next_timer: Option<(String, i64)>,
    pub bytes_sent: u64,
    pub bytes_acked: u64,
    pub bytes_received: u64,
    pub retransmits: u32,
    pub timeouts: u32,
    pub loss_probes: u32,
    pub zero_window_probes: u32,
}

impl TcpRow {
    fn of(info: &synx_tcp::ConnectionInfo, now: Instant) -> Self {
        let st = &info.stats;
        Self {
            srtt_us: info.srtt.map(|d| d.as_micros() as u64),
            rto_ms: info.rto.as_millis() as u64,
            cwnd: info.cwnd,
            ssthresh: info.ssthresh,
            snd_wnd: info.snd_wnd,
            rcv_wnd: info.rcv_wnd,
            send_queued: info.send_queued,
            in_flight: info.in_flight,
            recv_queued: info.recv_queued,
            next_timer: info.next_timer.map(|(kind, at)| {
                let ms = at.as_nanos() as i64 / 1_000_000 - now.as_nanos() as i64 / 1_000_000;
                (format!("{kind:?}"), ms)
            }),
            bytes_sent: st.bytes_sent,
            bytes_acked: st.bytes_acked,
            bytes_received: st.bytes_received,
            retransmits: st.retransmits,
            timeouts: st.timeouts,
            loss_probes: st.loss_probes,
            zero_window_probes: st.zero_window_probes,
        }
    }
}

/// How a `synx conns` request reaches a queue thread: where to send the rows.
pub type ConnsRequest = mpsc::Sender<Vec<ConnectionRow>>;

/// Answer every `synx conns` request waiting in `requests` with the connections of `endpoint`
/// (RX queue `queue`).
pub fn answer_conns(
    requests: &mpsc::Receiver<ConnsRequest>,
    endpoint: &Endpoint,
    queue: u32,
    now: Instant,
) {
    while let Ok(reply) = requests.try_recv() {
        let rows = endpoint
            .infos()
            .map(|(_, info)| ConnectionRow {
                local: info.local,
                remote: info.remote,
                state: info.state.to_string(),
                idle_ms: now.saturating_duration_since(info.last_activity).as_millis() as u64,
                keepalive_probes: info.keepalive_probes_sent,
                queue,
                tcp: TcpRow::of(&info, now),
            })
            .collect();
        let _ = reply.send(rows);
    }
}

/// What the engine keeps of one queue thread to ask it things.
pub struct QueueHandle {
    pub stats: Arc<QueueStats>,
    pub conns_requests: Mutex<mpsc::Sender<ConnsRequest>>,
    pub waker: Arc<EngineWaker>,
}

/// Every queue thread of an engine, as the control socket reaches them.
#[derive(Default)]
pub struct Queues(pub Vec<QueueHandle>);

impl Queues {
    /// Every queue's connections (each thread answers within its next loop turn).
    pub fn conns(&self) -> Vec<ConnectionRow> {
        let mut all = Vec::new();
        for q in &self.0 {
            let (reply_tx, reply_rx) = mpsc::channel();
            if q.conns_requests.lock().unwrap_or_else(|e| e.into_inner()).send(reply_tx).is_err() {
                continue;
            }
            q.waker.notify(u32::MAX);
            if let Ok(rows) = reply_rx.recv_timeout(Duration::from_secs(2)) {
                all.extend(rows);
            }
        }
        all
    }

    /// Every queue's counters and gauges, summed.
    pub fn stats(&self) -> Vec<(&'static str, u64)> {
        stats::sum(self.0.iter().map(|q| &*q.stats))
    }
}
