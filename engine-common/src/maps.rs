//! Names and layouts of the BPF maps that userspace and the XDP program share, and the names of
//! the read-only globals userspace sets when it loads the program ([`globals`]).

use bytemuck::{Pod, Zeroable};

/// Per-CPU array of `u64` outcome counters, indexed by [`crate::counters`] constants.
pub const COUNTERS: &str = "COUNTERS";
/// Array of [`PortListeners`] indexed by local port (host order): the first, and for most
/// packets the only, listener check (an array lookup, which the verifier inlines).
pub const LISTEN_PORTS: &str = "LISTEN_PORTS";
/// Hash map [`ListenerKey`] -> [`ListenerValue`]: every exact address we serve; XDP looks here
/// only when [`LISTEN_PORTS`] says the port has more exact addresses than it holds inline.
pub const LISTENERS: &str = "LISTENERS";
/// Hash map [`FlowKey4`] -> `u32` slot: IPv4 connections the daemon holds (written by
/// userspace).
pub const FLOWS4: &str = "FLOWS4";
/// Hash map [`FlowKey6`] -> `u32` slot: the same for IPv6 (allocated on insert, so an IPv4-only
/// host pays nothing for it).
pub const FLOWS6: &str = "FLOWS6";
/// XSKMAP: AF_XDP socket per RX queue index.
pub const XSKS: &str = "XSKS";
/// `BPF_F_MMAPABLE` array of [`FlowFilterLine`]s, 2^[`flow_filter_log2`] bits: a filter in front of
/// FLOWS4 and FLOWS6 for SYNs. Userspace sets a tuple's bit ([`flow_filter_bit4`],
/// [`flow_filter_bit6`]) before it writes the tuple's FLOWS entry and clears it only once no
/// entry it wrote maps there (it counts them). Claims ([`CLAIM`]) set no bit: a SYN on a
/// claimed tuple, which only a client past its handshake could send, is answered as one with
/// no flow. A SYN whose bit is clear
/// has no connection: XDP answers it without the FLOWS lookup, which under a flood of random
/// tuples misses the cache (and the TLB) in a table of a million buckets every time: about
/// 100 ns of a 250 ns SYN path, measured in place with 1M entries against 1024. A set bit
/// only means "look".
pub const FLOW_FILTER: &str = "FLOW_FILTER";
/// One-entry `BPF_F_MMAPABLE` array of `crate::secrets::CookieSecrets`: the cookie secrets and
/// the shared clock's adjustment, which userspace republishes every period through its mapping
/// (two slots and an index, `crate::secrets`).
pub const COOKIE_SECRETS: &str = "COOKIE_SECRETS";
/// Array of `u32` switches userspace flips while the program runs, indexed by the `SWITCH_*`
/// constants (settings fixed at load are [`globals`]).
pub const SWITCHES: &str = "SWITCHES";
/// [`SWITCHES`] entry: non-zero while the host drains (new SYNs get no SYN-ACK; see
/// [`globals::DRAIN_PASS`]).
pub const SWITCH_DRAINING: u32 = 0;
/// [`SWITCHES`] entries of second chance (`crate::second_chance`), which userspace rewrites as
/// hosts come and go: the IPv4 address (wire word) of the next live host of the ring, where
/// this one forwards, and how many hosts a forwarded segment may visit (the other live ones).
pub const SWITCH_RING_NEXT: u32 = 1;
pub const SWITCH_RING_HOPS: u32 = 2;
/// Entries of [`SWITCHES`].
pub const SWITCHES_LEN: u32 = 3;
/// `BPF_F_MMAPABLE` array of [`RxBacklogEntry`] per RX queue: frames XDP redirected to the
/// queue's AF_XDP socket, and frames its engine has taken (or the kernel dropped). While more
/// than [`RX_BACKLOG_LIMIT`] are outstanding, XDP answers new SYNs only at a trickle, so
/// handshakes cannot outrun the engine that must take their final ACKs.
pub const RX_BACKLOG: &str = "RX_BACKLOG";
/// `BPF_F_MMAPABLE` array of [`ProbeAnswer`], one per connection slot (a FLOWS value): the
/// answer the engine expects to the keepalive probe it just sent on that slot's connection.
/// XDP takes a segment that matches it exactly (a pure ACK, no data, the expected SEQ, ACK and
/// window, the timestamps option where the connection has one) off the wire, notes when it came
/// and its TSval, and drops it; the engine hands that to the TCP core at the probe's next
/// deadline, which counts the peer as heard from then (RFC 1122 4.2.3.6). Anything else goes
/// to the engine as before.
pub const PROBE_ANSWERS: &str = "PROBE_ANSWERS";
/// [`ProbeAnswer::state`]: nothing expected.
pub const PROBE_IDLE: u8 = 0;
/// [`ProbeAnswer::state`]: a probe is out; its answer is described.
pub const PROBE_ARMED: u8 = 1;
/// [`ProbeAnswer::state`]: XDP took the answer (`tsval`, `at_ns` written).
pub const PROBE_ANSWERED: u8 = 2;

/// Outstanding frames of a queue above which XDP answers new SYNs only at a trickle (one per
/// [`SYN_TRICKLE_NS`]): a quarter of the socket's receive frames, the rest left for the final
/// ACKs in flight and established flows.
pub const RX_BACKLOG_LIMIT: u64 = 1024;
/// Outstanding frames of a queue above which XDP answers no new SYN at all: half the socket's
/// receive frames; a final ACK could find the ring full. An engine that has stopped taking
/// frames (its thread died) publishes a backlog far above it.
pub const RX_BACKLOG_CEILING: u64 = 2 * RX_BACKLOG_LIMIT;
/// While a queue's backlog is between [`RX_BACKLOG_LIMIT`] and [`RX_BACKLOG_CEILING`], one SYN
/// per this many nanoseconds of the coarse clock (a jiffy at most) is answered all the same:
/// an engine kept behind for long by its established connections admits new ones slowly
/// instead of never (each admitted handshake adds one frame to the backlog).
pub const SYN_TRICKLE_NS: u64 = 1_000_000;
/// Entries of [`RX_BACKLOG`] (and of the XSKS map): RX queues served.
pub const MAX_QUEUES: u32 = 64;
/// The benchmark's reflector (`synx_bench_reflect`): UDP over IPv4 to this port goes to the
/// RX queue's AF_XDP socket (XSKS), for the floor under synx's receive-and-transmit path.
pub const BENCH_REFLECT_PORT: u16 = 9007;

/// One-entry array of [`BenchFrame`]: the frame the micro-benchmark programs put back before
/// each run (in the benchmark's object only).
pub const BENCH_FRAME: &str = "BENCH_FRAME";
/// Length of [`BenchFrame`]'s frame: a Linux client's IPv4 SYN (Ethernet, IPv4, TCP with MSS,
/// SACK-permitted, timestamps, NOP, window scale).
pub const BENCH_FRAME_LEN: usize = 74;

/// One-entry array of [`BenchVary`]: how the micro-benchmark programs vary the IPv4 source of
/// the frame they restore, so a call's repeats look up many flows, not one hot entry.
pub const BENCH_VARY: &str = "BENCH_VARY";

/// One-entry array of [`FloodState`]: the benchmark's SYN-flood generator (`synx_bench_flood`,
/// run in BPF_PROG_TEST_RUN live-frame mode; in the benchmark's object only).
pub const FLOOD: &str = "FLOOD";
/// Length of the generator's frame: Ethernet, IPv4, TCP with the MSS option.
pub const FLOOD_FRAME_LEN: usize = 58;

/// What XDP puts in front of every frame it sends to AF_XDP (`bpf_xdp_adjust_head`, 8 bytes
/// before the Ethernet header, which copy mode carries into the UMEM with the frame): the FLOWS
/// value it found for the segment's tuple, so the engine can go straight to that slot instead
/// of looking the tuple up again (the kernel's early demux hands a socket along the same way).
/// Not the metadata area (`bpf_xdp_adjust_meta`), which this machine's kernel refuses to XDP
/// programs ("program of this type cannot use helper"). A hint only: the engine checks that the
/// slot holds the tuple, and takes a frame without the mark as a plain Ethernet frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct RxMeta {
    /// [`RX_META_MAGIC`].
    pub magic: [u8; 4],
    /// The tuple's FLOWS value (little-endian, as BPF and x86 store it): a connection's slot,
    /// or XDP's claim ([`CLAIM`]) for a cookie ACK (only those two kinds of frames go to
    /// AF_XDP).
    pub flow: u32,
}

/// [`RxMeta::magic`]: its first byte has the group bit set, so no Ethernet frame to this
/// host's (unicast) address starts with it.
pub const RX_META_MAGIC: [u8; 4] = [0xff, b's', b'x', 1];

/// FLOWS values with this bit are claims, not slots: XDP claims the tuple when a cookie ACK
/// validates, before userspace has created the connection, so that later segments of the
/// flow (data, FIN) go to userspace too instead of failing the cookie check, which only the
/// first ACK can pass (SEG.SEQ - 1 is the ISN). The other bits are when the claim was made
/// ([`claim_time`]). Userspace replaces the claim with the slot, or removes it when it refuses
/// the ACK; an ACK that never reaches it (a full ring) leaves the claim, which expires.
pub const CLAIM: u32 = 1 << 31;
/// A claim older than this, in [`claim_time`] units (2^30 ns, about 1.07 s), is void: XDP
/// treats its tuple as unknown and userspace sweeps it when FLOWS is full. Userspace takes a
/// claimed ACK within milliseconds (the RX backlog is bounded by [`RX_BACKLOG_LIMIT`]); four
/// units leave room for a stalled engine thread without pinning FLOWS entries for long.
pub const CLAIM_TTL: u32 = 4;

/// A claim's clock: CLOCK_MONOTONIC in units of 2^30 ns (a shift, no division in XDP), in the
/// bits below [`CLAIM`].
#[inline(always)]
pub const fn claim_time(mono_ns: u64) -> u32 {
    (mono_ns >> 30) as u32 & !CLAIM
}

/// The FLOWS value of a claim made at `mono_ns`.
#[inline(always)]
pub const fn claim(mono_ns: u64) -> u32 {
    CLAIM | claim_time(mono_ns)
}

/// Whether the FLOWS value `v` is a claim that has expired at `mono_ns`. A claim made on a
/// clock a little ahead of this one (userspace's precise clock read against XDP's coarse one)
/// is young, not 2^31 units old.
#[inline(always)]
pub const fn claim_expired(v: u32, mono_ns: u64) -> bool {
    let age = claim_time(mono_ns).wrapping_sub(v) & !CLAIM;
    v & CLAIM != 0 && age >= CLAIM_TTL && age < CLAIM >> 1
}

/// Entries of FLOWS4 / FLOWS6 when userspace does not size them.
pub const DEFAULT_MAX_FLOWS: u32 = 1 << 20;

/// log2 of the bits of [`FLOW_FILTER`] for FLOWS of `max_flows` entries: four bits per entry
/// (a full table sets about a fifth of them), from 2^15 bits (4 KiB) to 2^22 (512 KiB, which
/// a flood keeps in a core's L2).
pub const fn flow_filter_log2(max_flows: u32) -> u32 {
    let log2 = (max_flows as u64).next_power_of_two().trailing_zeros() + 2;
    if log2 < 15 {
        15
    } else if log2 > 22 {
        22
    } else {
        log2
    }
}

/// The [`FlowFilterLine`]s of [`FLOW_FILTER`] (its entries) for a filter of 2^`log2` bits.
pub const fn flow_filter_lines(log2: u32) -> u32 {
    1 << (log2 - 9)
}

/// An entry of [`FLOW_FILTER`]: 512 bits, a cache line. Bit `b` of the filter is bit `b % 64`
/// of `words[b / 64 % 8]` of line `b / 512`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FlowFilterLine {
    pub words: [u64; 8],
}

/// A 64-bit mix of `a` and `b` down to its top `log2` bits (multiplicative hashing: every
/// input bit reaches the top bits). Not keyed: a sender who aims at set bits only costs us the
/// lookup the filter saves.
#[inline(always)]
fn flow_filter_mix(a: u64, b: u64, log2: u32) -> u32 {
    let h = (a ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15)).wrapping_mul(0xd6e8_feb8_6659_fd93);
    h.wrapping_shr(64 - log2) as u32
}

/// The [`FLOW_FILTER`] bit of an IPv4 connection, for a filter of 2^`log2` bits.
#[inline(always)]
pub fn flow_filter_bit4(k: &FlowKey4, log2: u32) -> u32 {
    flow_filter_mix(u64::from(k.remote) | u64::from(k.ports) << 32, u64::from(k.local), log2)
}

/// The [`FLOW_FILTER`] bit of an IPv6 connection.
#[inline(always)]
pub fn flow_filter_bit6(k: &FlowKey6, log2: u32) -> u32 {
    let w = |x: &[u32; 4], i: usize| u64::from(x[i]) | u64::from(x[i + 1]) << 32;
    let a = w(&k.remote, 0) ^ w(&k.remote, 2).rotate_left(21) ^ u64::from(k.ports);
    let b = w(&k.local, 0) ^ w(&k.local, 2).rotate_left(21);
    flow_filter_mix(a, b, log2)
}

/// Address family tags used in keys (never a Rust enum across the boundary).
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// Entries of [`LISTEN_PORTS`]: `LISTEN_PORTS[port]` has [`PORT_V4_ANY`] if `0.0.0.0:port` is
/// served, [`PORT_V4_ONE`] with the address in `v4_addr` for the first exact IPv4 address,
/// [`PORT_V4_MORE`] once a second one exists (then [`LISTENERS`] decides), [`PORT_V6_ANY`] for
/// `[::]:port` and [`PORT_V6_SOME`] for exact IPv6 addresses (in [`LISTENERS`]);
/// [`PORT_FLOWS_LEFT`] once a listener of the port has been removed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PortListeners {
    /// The IPv4 address of [`PORT_V4_ONE`], its wire bytes read as a little-endian u32.
    pub v4_addr: u32,
    pub flags: u32,
}

pub const PORT_V4_ANY: u32 = 1 << 0;
pub const PORT_V4_ONE: u32 = 1 << 1;
pub const PORT_V4_MORE: u32 = 1 << 2;
pub const PORT_V6_ANY: u32 = 1 << 3;
pub const PORT_V6_SOME: u32 = 1 << 4;
/// A listener of this port was removed while its connections may live on: a segment to the
/// port that no listener serves still reaches its connection if FLOWS has one (else the
/// kernel), as closing a listening socket leaves its accepted connections alone.
pub const PORT_FLOWS_LEFT: u32 = 1 << 5;

/// Entries of `LISTEN_PORTS`: one per port.
pub const LISTEN_PORTS_LEN: u32 = 1 << 16;

/// An exact listening address: its wire bytes read as little-endian u32 words (IPv4 in word 0,
/// the rest zero) and the port in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct ListenerKey {
    pub addr: [u32; 4],
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

/// Two ports in network byte order as a little-endian u32: the first 4 bytes of a TCP header
/// (source port, then destination port) as XDP loads them, the `ports` of [`FlowKey4`],
/// [`FlowKey6`] and `cookie::Tuple`.
pub fn ports_word(first: u16, second: u16) -> u32 {
    let [a, b] = first.to_be_bytes();
    let [c, d] = second.to_be_bytes();
    u32::from_le_bytes([a, b, c, d])
}

/// An IPv4 connection as the client's segments carry it (remote = the client), each field the
/// wire's bytes read as a little-endian u32, so XDP builds the key with three loads: the IPv4
/// source and destination addresses and the TCP header's first 4 bytes (remote port, then
/// local port). 12 bytes: the hash and the compare are cheap.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FlowKey4 {
    pub remote: u32,
    pub local: u32,
    pub ports: u32,
}

/// [`FlowKey4`] for IPv6.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FlowKey6 {
    pub remote: [u32; 4],
    pub local: [u32; 4],
    pub ports: u32,
}

/// What XDP remembers of a segment with data, for no flow, whose cookie did not validate (see
/// [`COOKIE_MISSES4`]): its ACK number and when that was first seen (CLOCK_MONOTONIC, coarse).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct CookieMiss {
    pub first_ns: u64,
    pub ack: u32,
    pub _pad: u32,
}

/// The LRU hash maps (keys [`FlowKey4`] and [`FlowKey6`], values [`CookieMiss`]) of tuples
/// whose segments with data failed the cookie check lately. A handshake's later segment whose
/// ACK and first segments were lost fails it when the cookie's search cannot find the ISN
/// behind it (segments of unequal or small sizes, a client's initial window above 10); its
/// client resends the first segment after its RTO, and that one validates. So XDP drops such a
/// segment rather than reset the connection, and resets only a tuple that sends the same ACK
/// number again after the hold: a connection no host holds (its client keeps resending what we
/// never acknowledge). Per host, not kept across takeover: what is lost is one hold's delay.
pub const COOKIE_MISSES4: &str = "COOKIE_MISSES4";
pub const COOKIE_MISSES6: &str = "COOKIE_MISSES6";
/// Their sizes: tuples in a hold at once. An evicted one is only new again (dropped once more).
pub const COOKIE_MISSES4_LEN: u32 = 4096;
pub const COOKIE_MISSES6_LEN: u32 = 1024;

/// The ring buffer (BPF_MAP_TYPE_RINGBUF) of SYN-ACKs XDP sent with a cookie, one
/// [`SynRecord`] each, that userspace may retransmit. RFC 9293 3.10.7.2 has SYN-RECEIVED
/// retransmit its SYN-ACK (RFC 6298 2.1: first after 1 s, then backing off); a cookie keeps no
/// state to retransmit from, so a client whose final ACK was lost and that waits for the
/// server to speak first (SMTP, MySQL, FTP banners) would wait forever. XDP records what the
/// SYN-ACK was made of; userspace resends it, with the same cookie, until the connection is
/// established or the retries run out. The client, ESTABLISHED, answers the duplicate SYN-ACK
/// with an ACK (RFC 5961 4.2 challenge ACK) whose ACK number is the cookie: the connection
/// starts. Recording is budgeted per CPU ([`globals::SYN_RECORD_PER_WINDOW`]): under a flood,
/// SYNs over the budget get a cookie only, as Linux's do once its SYN queue is full.
pub const SYN_RECORDS: &str = "SYN_RECORDS";
/// Its size in bytes: about 1,490 records (80 bytes and the ring's 8-byte header each), more
/// than one CPU's budget for a window (1,343; userspace reads the ring every 100 ms); records
/// that find it full are not kept (counted). Its pages are mapped into the daemon:
/// small, so a flood grows the daemon's memory by little.
pub const SYN_RECORDS_BYTES: u32 = 1 << 17;
/// The default recording budget ([`syn_records_per_window`] of it is
/// [`globals::SYN_RECORD_PER_WINDOW`]): a CPU accepting 10,000 connections
/// a second has each handshake recorded; beyond, and under a flood, SYNs get a cookie only.
pub const SYN_RECORD_PER_SEC: u32 = 10_000;
/// XDP counts its records per window of 2^27 ns (134 ms) of CLOCK_MONOTONIC, a shift of the
/// clock it has just read, where a rate would take a division per SYN.
pub const SYN_RECORD_WINDOW_SHIFT: u32 = 27;

/// Records per window for `per_sec` a second (rounded up: a positive rate never becomes 0).
pub const fn syn_records_per_window(per_sec: u32) -> u32 {
    ((per_sec as u64 * (1 << SYN_RECORD_WINDOW_SHIFT)).div_ceil(1_000_000_000)) as u32
}

/// [`SynRecord::flags`] bits.
pub const SYN_RECORD_V6: u8 = 1;
pub const SYN_RECORD_SACK: u8 = 2;
pub const SYN_RECORD_TS: u8 = 4;
pub const SYN_RECORD_ECN: u8 = 8;
pub const SYN_RECORD_WSCALE: u8 = 16;
/// Not a SYN-ACK: an RST for no flow (`isn` its SEG.SEQ; no times, no options), which ends
/// the tuple's handshake if it falls in the SYN-ACK's window (RFC 9293 3.10.7.4 first check).
pub const SYN_RECORD_RST: u8 = 32;

/// What a SYN-ACK XDP sent was made of ([`SYN_RECORDS`]): userspace mints the same cookie
/// from it (`mint_ns`, the tuple, the client's ISN and MSS) and builds the same SYN-ACK with a
/// fresh TSval. Addresses, ports and MACs as XDP loads them (wire bytes in little-endian
/// words; IPv4 in word 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SynRecord {
    /// The shared clock (ns) the cookie was minted at.
    pub mint_ns: u64,
    /// CLOCK_MONOTONIC (coarse) when XDP sent the SYN-ACK: retransmissions count from it.
    pub mono_ns: u64,
    /// The client's address, then ours.
    pub remote: [u32; 4],
    pub local: [u32; 4],
    /// The TCP header's first word: the client's port, then ours.
    pub ports: u32,
    /// The frame's first 12 bytes: our MAC, then the client's.
    pub macs: [u32; 3],
    /// The client's ISN and, with [`SYN_RECORD_TS`], its TSval.
    pub isn: u32,
    pub tsval: u32,
    /// The client's MSS (or the family's default when it sent none).
    pub mss: u16,
    /// Its window-scale shift, with [`SYN_RECORD_WSCALE`].
    pub wscale: u8,
    /// [`SYN_RECORD_V6`] and what the SYN offered.
    pub flags: u8,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<SynRecord>() == 80);

/// Read-only globals of the XDP objects: settings fixed for the program's life, set by
/// userspace when it loads the object (aya's `EbpfLoader::override_global`) and read by the
/// program as constants (engine-ebpf `settings`, which declares them under these names).
pub mod globals {
    /// `u16`: our MSS, announced in SYN-ACKs (the smaller of it and the client's goes into the
    /// cookie).
    pub const MSS: &str = "SYNX_MSS";
    /// `u8`: the window-scale shift we announce to a client that offers scaling.
    pub const WSCALE: &str = "SYNX_WSCALE";
    /// `u8`: 1 to agree to ECN with clients whose SYN asks for it (RFC 3168 6.1.1: the
    /// SYN-ACK sets ECE), 0 to answer every SYN without.
    pub const ECN: &str = "SYNX_ECN";
    /// `u8`: 1 to answer segments with no flow and a bad cookie with an RST (RFC 9293
    /// 3.10.7.1), 0 to drop them silently.
    pub const RST_BAD_COOKIE: &str = "SYNX_RST_BAD_COOKIE";
    /// `u32`: RSTs per second per CPU at most.
    pub const RST_PER_SEC: &str = "SYNX_RST_PER_SEC";
    /// `u8`: while draining, 1 hands new SYNs to the kernel (XDP_PASS), 0 leaves them
    /// unanswered.
    pub const DRAIN_PASS: &str = "SYNX_DRAIN_PASS";
    /// `u16`: the UDP port of second-chance forwarding between hosts (`crate::second_chance`);
    /// 0 turns it off.
    pub const PEER_PORT: &str = "SYNX_PEER_PORT";
    /// `u32`: this host's IPv4 address (wire word), the source of what it forwards (where it
    /// forwards to is in [`super::SWITCHES`]).
    pub const PEER_SELF: &str = "SYNX_PEER_SELF";
    /// `u32`: segments per second per CPU this host may forward at most.
    pub const FORWARD_PER_SEC: &str = "SYNX_FORWARD_PER_SEC";
    /// `u32`: log2 of [`super::FLOW_FILTER`]'s bits ([`super::flow_filter_log2`] of the
    /// FLOWS size); 0: no filter, every SYN looks FLOWS up.
    pub const FLOW_FILTER_LOG2: &str = "SYNX_FLOW_FILTER_LOG2";
    /// `u32`: milliseconds a segment with data, for no flow and with a bad cookie, is dropped
    /// before its tuple is reset ([`super::COOKIE_MISSES4`]); 0: reset at once.
    pub const COOKIE_MISS_HOLD_MS: &str = "SYNX_COOKIE_MISS_HOLD_MS";
    /// `u32`: SYN-ACKs (and, apart, RSTs) that XDP records in [`super::SYN_RECORDS`] for
    /// userspace per CPU per window of 2^[`super::SYN_RECORD_WINDOW_SHIFT`] ns of
    /// CLOCK_MONOTONIC ([`super::syn_records_per_window`] of a rate); 0: none.
    pub const SYN_RECORD_PER_WINDOW: &str = "SYNX_SYN_RECORD_PER_WINDOW";
    /// `u8`: 1 sends what the program answers (SYN-ACKs, RSTs, forwarded segments) with
    /// `bpf_redirect` to the device it came in on, 0 with XDP_TX. On a veth (Linux 6.18) an
    /// XDP_TX frame reaches a peer without an XDP program only at the peer's next NAPI run: the
    /// flush after XDP_TX wakes the peer only when it runs a program, while a redirect's flush
    /// (ndo_xdp_xmit with XDP_XMIT_FLUSH) always does.
    pub const TX_REDIRECT: &str = "SYNX_TX_REDIRECT";
}

/// One queue's entry of [`RX_BACKLOG`]. XDP adds to `redirected`; userspace stores `consumed`.
/// Both only grow (wrapping): `redirected - consumed`, read as signed, is the backlog.
/// `trickled_ns`: XDP's, the coarse clock when it last answered a SYN over the limit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct RxBacklogEntry {
    pub redirected: u64,
    pub consumed: u64,
    pub trickled_ns: u64,
}

/// One slot's entry of [`PROBE_ANSWERS`], 24 bytes in three 8-byte words. The engine writes
/// `ack`, then word 0 whole (`state` with it) when it sends a probe; XDP, on a match, writes
/// `tsval` and `at_ns`, then `state`; the engine reads word 0 first and clears it when it takes
/// the answer. Neither writes a field the other does but `state`. `seq`, `ack`: the answer's
/// SEG.SEQ and SEG.ACK (our RCV.NXT and SND.NXT), host order; `window`: its window field as
/// sent (unscaled); `ts`: 1 when the answer carries the timestamps option (then `tsval` is
/// its TSval), 0 when it carries no option. `at_ns`: XDP's coarse CLOCK_MONOTONIC when it
/// took the answer, the engine's clock.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ProbeAnswer {
    pub state: u8,
    pub ts: u8,
    pub window: u16,
    pub seq: u32,
    pub ack: u32,
    pub tsval: u32,
    pub at_ns: u64,
}

/// The frame of [`BENCH_FRAME`]: its first [`BENCH_FRAME_LEN`] bytes, as the wire has them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct BenchFrame {
    pub words: [u64; 10],
}

const _: () = assert!(BENCH_FRAME_LEN <= 80);

/// [`BENCH_VARY`]'s entry: each restore gives the frame the IPv4 source `saved + next % count`
/// (host order; checksums updated) and advances `next`; `count` 0 keeps the saved source.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct BenchVary {
    pub next: u32,
    pub count: u32,
}

/// The SYN-flood generator's state: frame `n` is `frame` (its first [`FLOOD_FRAME_LEN`] bytes,
/// as the wire has them, checksums valid) from `src_base + 1 + n % sources` (an IPv4 address,
/// host order), port `1024 + n % 60000`, ISN `n * 2654435761`; each is sent with `action`
/// (XDP_TX to send, XDP_DROP to measure the generator alone).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FloodState {
    pub next: u32,
    pub action: u32,
    pub src_base: u32,
    pub sources: u32,
    pub frame: [u64; 8],
}

const _: () = assert!(FLOOD_FRAME_LEN <= 64);

#[cfg(feature = "user")]
mod pod_impls {
    // SAFETY: all of these are `#[repr(C)]`, `Copy`, and have no padding bytes left implicit
    // (checked by bytemuck's `Pod` derive).
    unsafe impl aya::Pod for super::FloodState {}
    unsafe impl aya::Pod for super::ListenerKey {}
    unsafe impl aya::Pod for super::ListenerValue {}
    unsafe impl aya::Pod for super::FlowKey4 {}
    unsafe impl aya::Pod for super::FlowKey6 {}
    unsafe impl aya::Pod for super::PortListeners {}
    unsafe impl aya::Pod for crate::secrets::CookieSecrets {}
    unsafe impl aya::Pod for super::BenchFrame {}
    unsafe impl aya::Pod for super::BenchVary {}
    unsafe impl aya::Pod for super::FlowFilterLine {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flow_filter_has_four_bits_per_entry_within_its_bounds() {
        for (flows, log2) in [(1, 15), (4, 15), (8192, 15), (10_000, 16), (100_000, 19), (1 << 20, 22), (u32::MAX, 22)] {
            assert_eq!(flow_filter_log2(flows), log2, "{flows} flows");
            assert_eq!(flow_filter_lines(log2) as usize * core::mem::size_of::<FlowFilterLine>() * 8, 1 << log2);
        }
    }

    #[test]
    fn flow_filter_bits_stay_in_range_and_spread_sequential_ports() {
        let log2 = 15;
        let mut hit = [0u8; 1 << 15];
        for port in 0..8192u16 {
            let k4 = FlowKey4 { remote: 0x0200_12c6, local: 0x0100_12c6, ports: ports_word(40000u16.wrapping_add(port), 80) };
            let b = flow_filter_bit4(&k4, log2) as usize;
            assert!(b < 1 << log2);
            hit[b] = hit[b].saturating_add(1);
            let k6 = FlowKey6 { remote: [0xed5e_00fd, 0, 0, 0x0200_0000], local: [0xed5e_00fd, 0, 0, 0x0100_0000], ports: k4.ports };
            assert!((flow_filter_bit6(&k6, log2) as usize) < 1 << log2);
        }
        // 8192 connections of one client over 32768 bits: about 7200 distinct bits if they
        // spread as random ones would (1 - e^-0.25 of the bits), far fewer if they cluster.
        let distinct = hit.iter().filter(|&&n| n > 0).count();
        assert!(distinct > 6800, "{distinct} distinct bits");
    }

    #[test]
    fn record_budgets_per_window_round_up() {
        assert_eq!(syn_records_per_window(SYN_RECORD_PER_SEC), 1343);
        assert_eq!(syn_records_per_window(10), 2);
        assert_eq!(syn_records_per_window(1), 1);
        assert_eq!(syn_records_per_window(0), 0);
        assert_eq!(syn_records_per_window(u32::MAX), 576_460_753);
    }

    #[test]
    fn claims_expire_after_their_ttl_across_the_clocks_wrap() {
        const UNIT: u64 = 1 << 30;
        for start in [0, 5 * UNIT + 17, ((1u64 << 31) - 2) * UNIT] {
            let c = claim(start);
            assert_ne!(c & CLAIM, 0);
            assert!(!claim_expired(c, start));
            assert!(!claim_expired(c, start + u64::from(CLAIM_TTL - 1) * UNIT));
            assert!(claim_expired(c, start + u64::from(CLAIM_TTL) * UNIT), "start {start}");
        }
        // Made on a clock ahead of the one reading it: young.
        assert!(!claim_expired(claim(5 * UNIT), 5 * UNIT - 1));
        // Slots are never claims.
        assert!(!claim_expired(7, u64::MAX));
    }
}
