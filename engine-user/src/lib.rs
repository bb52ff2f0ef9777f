//! synx: an XDP-accelerated, server-side TCP connection engine.
//!
//! - [`bpf`]: load the embedded XDP program, attach/detach it, configure and read its maps.
//! - [`control`]: the daemon's Unix control socket (`synx stats`, `synx conns`); [`metrics`]:
//!   the same values for Prometheus.
//! - [`engine`]: the embeddable [`Engine`] (attach to an interface, `listen()`, accept
//!   [`Stream`]s) and its engine threads, one per RX queue.
//! - [`daemon`]: `synx run`: an engine with the built-in apps and the control socket.
//! - [`api`]: `Listener` / `Stream` for applications; [`apps`]: the built-in ones; [`config`]: settings.
//! - The sans-IO TCP core (no clock reads, no sockets; time is an argument) is the crate
//!   `synx_tcp` (folder `synx-tcp/`).
//! - [`wire`]: Ethernet/IPv4/IPv6 framing around TCP segments, and checksums.
//! - [`xsk`]: AF_XDP sockets (one UMEM and socket per RX queue).

pub mod api;
pub mod apps;
pub mod bpf;
pub mod cluster;
pub mod config;
pub mod control;
pub mod cookie_key;
pub mod daemon;
pub mod engine;
pub mod metrics;
pub mod wire;
pub mod xsk;

pub use api::{Keepalive, Listener, Stream};
pub use engine::{Engine, EngineOptions};
