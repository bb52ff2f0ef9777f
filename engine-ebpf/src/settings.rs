//! Settings fixed when userspace loads the object: read-only globals (names in
//! `engine_common::maps::globals`), set with `EbpfLoader::override_global`. They live in the
//! object's frozen `.rodata`, so the verifier reads them as constants and prunes the paths a
//! switch turns off, and no packet pays a map lookup for them. The values here are
//! placeholders: userspace sets every one at load.

use aya_ebpf::Global;

#[unsafe(no_mangle)]
static SYNX_MSS: Global<u16> = Global::new(0);
#[unsafe(no_mangle)]
static SYNX_WSCALE: Global<u8> = Global::new(0);
#[unsafe(no_mangle)]
static SYNX_ECN: Global<u8> = Global::new(0);
#[unsafe(no_mangle)]
static SYNX_RST_BAD_COOKIE: Global<u8> = Global::new(0);
#[unsafe(no_mangle)]
static SYNX_RST_PER_SEC: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static SYNX_DRAIN_PASS: Global<u8> = Global::new(0);
#[unsafe(no_mangle)]
static SYNX_PEER_PORT: Global<u16> = Global::new(0);
#[unsafe(no_mangle)]
static SYNX_PEER_SELF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static SYNX_FORWARD_PER_SEC: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static SYNX_FLOW_FILTER_LOG2: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static SYNX_COOKIE_MISS_HOLD_MS: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static SYNX_SYN_RECORD_PER_WINDOW: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static SYNX_TX_REDIRECT: Global<u8> = Global::new(0);

/// Our IPv4 MSS, announced in SYN-ACKs (IPv6: `Ours::for_family`; the smaller of it and the
/// client's goes into the cookie).
#[inline(always)]
pub fn mss() -> u16 {
    SYNX_MSS.load()
}

/// The window-scale shift we announce to a client that offers scaling.
#[inline(always)]
pub fn wscale() -> u8 {
    SYNX_WSCALE.load()
}

/// Whether we agree to ECN with a client whose SYN asks for it (RFC 3168 6.1.1).
#[inline(always)]
pub fn ecn() -> bool {
    SYNX_ECN.load() != 0
}

/// Whether a segment with no connection and no valid cookie gets an RST (RFC 9293 3.10.7.1)
/// rather than silence.
#[inline(always)]
pub fn rst_bad_cookie() -> bool {
    SYNX_RST_BAD_COOKIE.load() != 0
}

/// How long a segment with data, for no flow and with a bad cookie, is dropped before its
/// tuple is reset (`engine_common::maps::COOKIE_MISSES4`), in nanoseconds; 0: reset at once.
#[inline(always)]
pub fn cookie_miss_hold_ns() -> u64 {
    u64::from(SYNX_COOKIE_MISS_HOLD_MS.load()) * 1_000_000
}

/// SYN-ACKs (and RSTs) per record window (`crate::clock::take_record`) per CPU recorded for
/// userspace to retransmit (`engine_common::maps::SYN_RECORDS`); 0: none.
#[inline(always)]
pub fn syn_record_per_window() -> u32 {
    SYNX_SYN_RECORD_PER_WINDOW.load()
}

/// RSTs per second per CPU at most.
#[inline(always)]
pub fn rst_per_sec() -> u32 {
    SYNX_RST_PER_SEC.load()
}

/// While draining, hand new SYNs to the kernel (XDP_PASS) rather than leave them unanswered.
#[inline(always)]
pub fn drain_pass() -> bool {
    SYNX_DRAIN_PASS.load() != 0
}

/// Second-chance forwarding (`engine_common::second_chance`): its UDP port in network byte
/// order, or 0 when it is off.
#[inline(always)]
pub fn peer_port_be() -> u16 {
    SYNX_PEER_PORT.load().to_be()
}

/// This host's IPv4 address, as a wire word.
#[inline(always)]
pub fn peer_self() -> u32 {
    SYNX_PEER_SELF.load()
}

/// Segments per second per CPU this host may forward at most.
#[inline(always)]
pub fn forward_per_sec() -> u32 {
    SYNX_FORWARD_PER_SEC.load()
}

/// log2 of FLOW_FILTER's bits, 0 without a filter (`engine_common::maps::FLOW_FILTER`).
#[inline(always)]
pub fn flow_filter_log2() -> u32 {
    SYNX_FLOW_FILTER_LOG2.load()
}

/// Whether answers leave by `bpf_redirect` to the ingress device rather than XDP_TX
/// (`engine_common::maps::globals::TX_REDIRECT`: a veth whose peer runs no XDP program).
#[inline(always)]
pub fn tx_redirect() -> bool {
    SYNX_TX_REDIRECT.load() != 0
}
