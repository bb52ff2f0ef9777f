//! Names and layouts of the BPF maps that userspace and the XDP program share.

use bytemuck::{Pod, Zeroable};

use crate::cookie::Key;

/// Per-CPU array of `u64` outcome counters, indexed by [`crate::counters`] constants.
pub const COUNTERS: &str = "COUNTERS";
/// Hash map [`ListenerKey`] -> [`ListenerValue`]: the addresses and ports we serve.
pub const LISTENERS: &str = "LISTENERS";
/// Hash map [`FlowKey`] -> `u32` slot: connections the daemon holds (written by userspace).
pub const FLOWS: &str = "FLOWS";
/// `BPF_F_MMAPABLE` array of `u64`: CLOCK_MONOTONIC ns of the last segment seen per slot.
pub const LAST_SEEN: &str = "LAST_SEEN";
/// XSKMAP: AF_XDP socket per RX queue index.
pub const XSKS: &str = "XSKS";
/// One-entry array of [`XdpConfig`], written by userspace.
pub const CONFIG: &str = "CONFIG";
/// Per-CPU token bucket of [`RstBucket`] limiting RSTs sent from XDP.
pub const RST_BUCKET: &str = "RST_BUCKET";

/// FLOWS value XDP writes when a cookie ACK validates, before userspace has created the
/// connection: later segments of the flow (data, FIN) then go to userspace too instead of
/// failing the cookie check, which only the first ACK can pass (SEG.SEQ - 1 is the ISN).
pub const SLOT_PENDING: u32 = u32::MAX;

/// Slots of FLOWS / LAST_SEEN when userspace does not size them.
pub const DEFAULT_MAX_FLOWS: u32 = 1 << 20;

/// Address family tags used in keys (never a Rust enum across the boundary).
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// A listening socket: local address (IPv4 stored in the first 4 bytes, rest zero; all-zero means
/// wildcard) and port, both in network byte order as they appear on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct ListenerKey {
    pub addr: [u8; 16],
    pub port_be: u16,
    pub family: u8,
    pub _pad: u8,
}

/// What the XDP program needs to know about a listener.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct ListenerValue {
    /// Index of the listener in the daemon's table (for per-listener accounting).
    pub id: u32,
    pub flags: u32,
}

/// A connection as the wire shows it, from the server's side: remote = the client.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FlowKey {
    pub remote: [u8; 16],
    pub local: [u8; 16],
    pub remote_port_be: u16,
    pub local_port_be: u16,
    pub family: u8,
    pub _pad: [u8; 3],
}

/// `XdpConfig::flags`: answer segments with no flow and a bad cookie with a RST
/// (RFC 9293 3.10.7.1) instead of dropping them silently.
pub const CONFIG_RST_BAD_COOKIE: u32 = 1 << 0;

/// `XdpConfig::flags`: take SYN-ACK cookies from the kernel's bpf_tcp_raw_gen_syncookie_ipv4
/// instead of ours (IPv4 only). Only the micro-benchmark's baseline sets it: those cookies do
/// not carry what our ACK path decodes.
pub const CONFIG_KERNEL_COOKIE: u32 = 1 << 1;

/// Settings of the XDP program, written by userspace (slot 0 of CONFIG).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct XdpConfig {
    /// Cookie secrets: [current, previous].
    pub secrets: [Key; 2],
    /// Key of the per-connection TSval offset (never rotates).
    pub ts_key: Key,
    /// Our MSS, announced in SYN-ACKs (the smaller of it and the client's is used).
    pub mss: u16,
    /// Window-scale shift we announce when the client offers scaling.
    pub wscale: u8,
    /// 1 once userspace wrote this config; until then SYNs pass to the kernel.
    pub ready: u8,
    pub flags: u32,
    /// RSTs per second per CPU at most.
    pub rst_per_sec: u32,
    pub _pad: u32,
}

/// Token bucket state for RSTs (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct RstBucket {
    pub tokens: u64,
    pub last_ns: u64,
}

#[cfg(feature = "user")]
mod pod_impls {
    // SAFETY: all of these are `#[repr(C)]`, `Copy`, and have no padding bytes left implicit
    // (checked by bytemuck's `Pod` derive).
    unsafe impl aya::Pod for super::ListenerKey {}
    unsafe impl aya::Pod for super::ListenerValue {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::XdpConfig {}
    unsafe impl aya::Pod for super::RstBucket {}
}
