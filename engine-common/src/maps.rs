//! Names and layouts of the BPF maps that userspace and the XDP program share.

use bytemuck::{Pod, Zeroable};

/// Per-CPU array of `u64` outcome counters, indexed by [`crate::counters::Counter`].
pub const COUNTERS: &str = "COUNTERS";
/// Hash map of [`ListenerKey`] -> [`ListenerValue`]: the addresses and ports we serve.
pub const LISTENERS: &str = "LISTENERS";

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

#[cfg(feature = "user")]
mod pod_impls {
    // SAFETY: all of these are `#[repr(C)]`, `Copy`, and have no padding bytes left implicit
    // (checked by bytemuck's `Pod` derive).
    unsafe impl aya::Pod for super::ListenerKey {}
    unsafe impl aya::Pod for super::ListenerValue {}
}
