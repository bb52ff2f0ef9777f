//! synx-tcp: the sans-IO TCP core of synx. A deterministic, server-side TCP that never reads a
//! clock or touches a socket: segments and the current time go in; segments, timers and events
//! come out. The daemon (crate `synx`, folder `engine-user/`) drives it over AF_XDP; the tests
//! here drive it in virtual time. Its dependencies are engine-common (the handshake facts XDP's
//! cookie carries), hashbrown and thiserror, nothing of aya, tokio or libc.
//!
//! - [`instant`]: [`Instant`], the time argument (CLOCK_MONOTONIC nanoseconds, as XDP's clock).
//! - [`config`]: [`Config`] shared by an endpoint's connections, [`Keepalive`] per connection.
//! - [`seq`]: wrapping sequence numbers.
//! - [`segment`]: parse/write a TCP header, options and payload (checksums are the wire layer's).
//! - [`connection`]: one TCB, created from a validated SYN-cookie ACK ([`Connection::accept`]).
//! - [`timer`]: the per-connection timer table and the timing wheel across connections.
//! - [`endpoint`]: demux by 4-tuple, connection slab, wheel-driven timeouts.
//! - [`reset`]: the RST for a segment that matches no connection.
//! - [`rtt`], [`congestion`], [`recv_buf`], [`send_buf`]: the pieces a TCB is made of.

pub mod config;
pub mod congestion;
pub mod connection;
pub mod endpoint;
pub mod instant;
pub mod recv_buf;
pub mod reset;
pub mod rtt;
pub mod segment;
pub mod send_buf;
pub mod seq;
pub mod timer;

#[cfg(test)]
mod tests;

pub use config::{BufferBudget, Config, Keepalive};
pub use congestion::CongestionAlgorithm;
pub use connection::{CloseReason, Connection, ConnectionInfo, Event, Handled, State, TimeoutKind};
pub use endpoint::{ConnectionHandle, Disposition, Endpoint, ProbeAnswer, ProbeAnswers, TakenAnswer};
pub use instant::Instant;
pub use reset::reset_for;
pub use segment::{Flags, Header, Options};
pub use seq::SeqNum;
