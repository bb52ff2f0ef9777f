//! What a valid SYN-cookie ACK tells the daemon about a handshake that XDP answered statelessly.
//! Produced by the cookie decoder (`crate::cookie`, shared by XDP and userspace), consumed by the
//! TCP core to create an ESTABLISHED connection (RFC 9293 3.10.7.4 fifth check: SYN-RECEIVED
//! on an acceptable ACK).

use bytemuck::{Pod, Zeroable};

/// The client offered window scaling; `snd_wscale` is its shift.
pub const FACT_WSCALE: u8 = 1 << 0;
/// The client offered SACK-permitted (RFC 2018) and we agreed.
pub const FACT_SACK: u8 = 1 << 1;
/// Timestamps (RFC 7323) are in use on this connection.
pub const FACT_TS: u8 = 1 << 2;
/// The client asked for ECN in its SYN.
pub const FACT_ECN: u8 = 1 << 3;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct HandshakeFacts {
    /// Our initial sequence number: the cookie we sent as the SYN-ACK's SEQ (so SND.UNA = iss+1).
    pub iss: u32,
    /// The client's initial sequence number (so RCV.NXT = irs+1).
    pub irs: u32,
    /// The MSS the client announced, as decoded from the cookie's MSS index.
    pub mss: u16,
    /// The client's window-scale shift (0..=14), meaningful when `flags & FACT_WSCALE`.
    pub snd_wscale: u8,
    /// The window-scale shift we announced in the SYN-ACK (when the client offered scaling).
    pub rcv_wscale: u8,
    /// `FACT_*` bits.
    pub flags: u8,
    pub _pad: [u8; 3],
    /// The client's TSval from the ACK (RFC 7323 TS.Recent), when `flags & FACT_TS`.
    pub ts_recent: u32,
    /// Our TSval clock for this connection is `now_ms + ts_offset` (wrapping); the SYN-ACK's
    /// TSval was never above it, so later segments pass the client's PAWS check.
    pub ts_offset: u32,
}

impl HandshakeFacts {
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

#[cfg(feature = "user")]
// SAFETY: `#[repr(C)]`, `Copy`, no implicit padding (bytemuck's Pod derive checks it).
unsafe impl aya::Pod for HandshakeFacts {}
