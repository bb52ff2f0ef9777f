//! Settings shared by every connection of an endpoint, and keepalive per connection.

use core::time::Duration;

use crate::congestion::CongestionAlgorithm;

/// Keepalive settings (RFC 1122 4.2.3.6), per connection. Defaults: 2 h idle, 75 s
/// interval, 10 probes (Linux uses 9 probes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// Receive buffer per connection: bounds the advertised window and out-of-order storage.
    pub recv_buffer: u32,
    /// Send buffer per connection: bytes `send()` accepts beyond SND.UNA.
    pub send_buffer: u32,
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
            initial_cwnd: 10,
            challenge_acks_per_sec: 10,
        }
    }
}
