//! The sans-IO TCP core: a deterministic TCP implementation that never reads a clock or touches
//! a socket. Segments and the current time go in; segments, timers and events come out.
//!
//! - [`seq`]: wrapping sequence numbers.
//! - [`segment`]: header view and builder.
//! - [`conn`]: one connection (TCB) through every server-side state of RFC 9293.
//! - [`endpoint`]: demultiplexing by 4-tuple, timers across connections, resets for strangers.

pub mod conn;
pub mod endpoint;
pub mod segment;
pub mod seq;

use core::time::Duration;

pub use conn::{CloseReason, ConnInfo, Connection, Event, State};

/// A point in time: nanoseconds of CLOCK_MONOTONIC, the clock the XDP program stamps
/// LAST_SEEN with. The core never reads it; callers pass it in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(u64);

impl Instant {
    pub const fn from_nanos(ns: u64) -> Self {
        Self(ns)
    }
    pub const fn as_nanos(self) -> u64 {
        self.0
    }
    /// Milliseconds, truncated to 32 bits: the timestamp clock (RFC 7323 5.4).
    pub fn millis_u32(self) -> u32 {
        (self.0 / 1_000_000) as u32
    }
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl core::ops::Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        Instant(self.0.saturating_add(d.as_nanos().min(u128::from(u64::MAX)) as u64))
    }
}

/// Keepalive settings (RFC 1122 4.2.3.6). The seed's defaults: 2 h idle, 75 s interval,
/// 10 probes (Linux uses 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub enabled: bool,
    pub idle: Duration,
    pub interval: Duration,
    pub probes: u32,
}

impl Default for Keepalive {
    fn default() -> Self {
        Self {
            enabled: true,
            idle: Duration::from_secs(7200),
            interval: Duration::from_secs(75),
            probes: 10,
        }
    }
}

/// Settings shared by every connection of an endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Largest segment we send or accept (before peer MSS and option overhead).
    pub mss: u16,
    /// Receive buffer per connection (the most we advertise).
    pub recv_buffer: u32,
    /// Send buffer per connection.
    pub send_buffer: u32,
    /// Maximum segment lifetime; TIME_WAIT lasts 2*MSL (RFC 9293 3.4.2).
    pub msl: Duration,
    pub keepalive: Keepalive,
    /// RFC 9293 3.8.6.3 / RFC 1122 4.2.3.2: at most 500 ms; Linux uses 40 ms.
    pub delayed_ack: Duration,
    /// RFC 6298 2.4 says 1 s; Linux uses 200 ms and so do we, as clients are tuned to it.
    pub min_rto: Duration,
    /// RFC 6298 2.1.
    pub initial_rto: Duration,
    /// RFC 6298 2.5 allows an upper bound of at least 60 s.
    pub max_rto: Duration,
    /// Retransmissions of one segment before the connection is reset (Linux tcp_retries2).
    pub max_retries: u32,
    /// RFC 9293 3.7.4: Nagle's algorithm.
    pub nagle: bool,
    /// RFC 5961 7: challenge ACKs per second per connection.
    pub challenge_acks_per_sec: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mss: 1460,
            recv_buffer: 1 << 20,
            send_buffer: 1 << 20,
            msl: Duration::from_secs(30),
            keepalive: Keepalive::default(),
            delayed_ack: Duration::from_millis(40),
            min_rto: Duration::from_millis(200),
            initial_rto: Duration::from_secs(1),
            max_rto: Duration::from_secs(120),
            max_retries: 15,
            nagle: true,
            challenge_acks_per_sec: 100,
        }
    }
}
