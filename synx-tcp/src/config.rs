//! Settings shared by every connection of an endpoint, and keepalive per connection.

use core::fmt;
use core::time::Duration;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::congestion::CongestionAlgorithm;

/// Keepalive settings (RFC 1122 4.2.3.6), per connection. Defaults: 2 h idle, 75 s
/// interval, 10 probes (Linux uses 9 probes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keepalive {
    pub enabled: bool,
    /// Idle time before the first probe.
    pub idle: Duration,
    /// Time between unanswered probes.
    pub interval: Duration,
    /// Unanswered probes before the connection is reset.
    pub probes: u32,
}

impl Default for Keepalive {
    fn default() -> Self {
        Self { enabled: true, idle: Duration::from_secs(7200), interval: Duration::from_secs(75), probes: 10 }
    }
}

/// Settings shared by every connection of an endpoint (held in an `Arc`).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Our largest segment (payload plus options); the send MSS is the smaller of this and the
    /// peer's.
    pub mss: u16,
    /// Receive buffer per connection to begin with: bounds the advertised window and
    /// out-of-order storage. It grows with what the application reads per round trip, up to
    /// `recv_buffer_max` (dynamic right-sizing, as Linux's tcp_rcv_space_adjust).
    pub recv_buffer: u32,
    /// Send buffer per connection to begin with: bytes `send()` accepts beyond SND.UNA. It
    /// grows to twice the congestion window, up to `send_buffer_max` (as Linux's
    /// tcp_sndbuf_expand).
    pub send_buffer: u32,
    /// Largest receive buffer a connection grows to (Linux's tcp_rmem[2]).
    pub recv_buffer_max: u32,
    /// Largest send buffer a connection grows to (Linux's tcp_wmem[2]).
    pub send_buffer_max: u32,
    /// Growth beyond `recv_buffer` and `send_buffer` that all connections sharing this budget
    /// may hold at once: buffers stop growing when it is spent (as Linux under tcp_mem
    /// pressure). Buffers are allocated as data needs them, so this bounds what they can grow
    /// to, not what idle connections hold (nothing).
    pub buffer_budget: BufferBudget,
    /// Maximum segment lifetime; TIME_WAIT lasts 2*MSL (RFC 9293 3.4.2).
    pub msl: Duration,
    /// How long a connection closed with `Connection::close` waits in FIN_WAIT_2 for the peer's
    /// FIN (Linux tcp_fin_timeout): RFC 9293 sets no limit, and a peer that never closes would
    /// otherwise hold the TCB forever.
    pub fin_wait2_timeout: Duration,
    /// Default keepalive for new connections (`Connection::set_keepalive` overrides).
    pub keepalive: Keepalive,
    /// RFC 9293 3.8.6.3 / RFC 1122 4.2.3.2: at most 500 ms; Linux's 40 ms.
    pub delayed_ack: Duration,
    /// Lower bound of the RTO: 200 ms as Linux (RFC 6298 2.4 says 1 s, far above LAN and
    /// datacenter RTTs; clients are tuned to Linux servers). See `rtt`.
    pub min_rto: Duration,
    /// RTO before any RTT sample (RFC 6298 2.1).
    pub initial_rto: Duration,
    /// RFC 6298 2.5 allows any upper bound of at least 60 s; Linux's 120 s.
    pub max_rto: Duration,
    /// Consecutive retransmission timeouts before the connection is reset (Linux tcp_retries2).
    pub max_retries: u32,
    /// Nagle's algorithm (RFC 9293 3.7.4); off = TCP_NODELAY.
    pub nagle: bool,
    pub congestion: CongestionAlgorithm,
    /// ECN (RFC 3168) with clients that asked for it in their SYN and whose cookie says our
    /// SYN-ACK agreed (`FACT_ECN`): data goes out ECT(0), CE marks are echoed, an echo reduces
    /// the window once per round trip. On by default, as Linux's net.ipv4.tcp_ecn=2. The
    /// SYN-ACK's side of the choice is `engine_common::synack::Ours::ecn`; this one is asked
    /// again at the cookie's ACK, as Linux's cookie_ecn_ok asks the sysctl again.
    pub ecn: bool,
    /// Pace data segments in slow start at twice cwnd per SRTT, in bursts of about a
    /// millisecond (the rate and burst of Linux's internal pacing; `Recovery::pace_wait` says
    /// why only in slow start).
    pub pacing: bool,
    /// Initial congestion window in segments (RFC 6928).
    pub initial_cwnd: u32,
    /// Challenge ACKs, and ACKs answering unacceptable segments, per second per connection
    /// (RFC 5961 7).
    pub challenge_acks_per_sec: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mss: 1460,
            recv_buffer: 256 * 1024,
            send_buffer: 256 * 1024,
            recv_buffer_max: 6 << 20,
            send_buffer_max: 4 << 20,
            buffer_budget: BufferBudget::new(1 << 30),
            msl: Duration::from_secs(30),
            fin_wait2_timeout: Duration::from_secs(60),
            keepalive: Keepalive::default(),
            delayed_ack: Duration::from_millis(40),
            min_rto: Duration::from_millis(200),
            initial_rto: Duration::from_secs(1),
            max_rto: Duration::from_secs(120),
            max_retries: 15,
            nagle: true,
            congestion: CongestionAlgorithm::Cubic,
            ecn: true,
            pacing: true,
            initial_cwnd: 10,
            challenge_acks_per_sec: 10,
        }
    }
}

/// Bytes of buffer growth connections may reserve in total (see `Config::buffer_budget`);
/// clones share the budget.
#[derive(Clone)]
pub struct BufferBudget(Arc<Budget>);

struct Budget {
    limit: u64,
    used: AtomicU64,
}

impl BufferBudget {
    pub fn new(limit: u64) -> Self {
        Self(Arc::new(Budget { limit, used: AtomicU64::new(0) }))
    }

    /// Bytes reserved now.
    pub fn used(&self) -> u64 {
        self.0.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> u64 {
        self.0.limit
    }

    /// Reserve up to `want` bytes; returns how many were granted.
    pub(crate) fn reserve(&self, want: u64) -> u64 {
        let b = &self.0;
        let mut used = b.used.load(Ordering::Relaxed);
        loop {
            let grant = want.min(b.limit.saturating_sub(used));
            if grant == 0 {
                return 0;
            }
            match b.used.compare_exchange_weak(used, used + grant, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return grant,
                Err(now) => used = now,
            }
        }
    }

    /// Reserve `n` bytes whatever the limit (a window already advertised cannot shrink).
    pub(crate) fn force(&self, n: u64) {
        self.0.used.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn release(&self, n: u64) {
        self.0.used.fetch_sub(n, Ordering::Relaxed);
    }
}

impl PartialEq for BufferBudget {
    /// The same budget, not an equal one.
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for BufferBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BufferBudget({} of {} bytes)", self.used(), self.limit())
    }
}
