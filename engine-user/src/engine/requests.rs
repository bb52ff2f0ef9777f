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
