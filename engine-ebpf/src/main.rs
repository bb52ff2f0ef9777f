//! The synx XDP program: the engine's front door.
//!
//! For TCP to a configured listener (IPv4 and IPv6):
//! - SYN with no flow: a SYN-ACK is built in the same frame, its ISN a SYN cookie
//!   (`engine_common::cookie`), and sent back with XDP_TX. Nothing is stored.
//! - ACK with no flow: the cookie in `ack - 1` is checked; a valid one goes to the AF_XDP socket
//!   of this RX queue (userspace decodes it again with the same code and creates the
//!   connection), a bad one gets the RFC 9293 3.10.7.1 reset (rate-limited) or is dropped.
//! - RST with no flow: dropped (never answer a reset with a reset); this is also where the
//!   client's RST to the SYN-ACK of a stale SYN ends.
//! - Any segment of a known flow (FLOWS, written by userspace): LAST_SEEN[slot] = now, then to
//!   AF_XDP (including SYNs, which the TCP core answers with a challenge ACK, RFC 5961 4).
//! Everything else passes to the kernel untouched; malformed input is counted and dropped.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, BPF_NOEXIST, xdp_action},
    helpers::{
        bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_loop, bpf_tcp_raw_gen_syncookie_ipv4, bpf_xdp_adjust_head,
        bpf_xdp_adjust_tail,
    },
    macros::{map, xdp},
    maps::{Array, HashMap, PerCpuArray, XskMap},
    programs::XdpContext,
};
use engine_common::{
    cookie::{self, Tuple},
    counters::{self, Counter},
    maps::{
        BENCH_FRAME_LEN, BenchFrame, FLOOD_FRAME_LEN, FloodState, MAX_QUEUES, RX_BACKLOG_LIMIT, RxBacklogEntry, CONFIG_KERNEL_COOKIE, CONFIG_RST_BAD_COOKIE, DEFAULT_MAX_FLOWS, FAMILY_V4, FAMILY_V6, FlowKey4, FlowKey6,
        LISTEN_PORTS_LEN, ListenerKey, ListenerValue, PORT_V4_ANY, PORT_V4_MORE, PORT_V4_ONE, PORT_V6_ANY,
        PORT_V6_SOME, PortListeners, RstBucket, SLOT_PENDING, XdpConfig,
    },
};

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counters::COUNT, 0);
#[map(name = "LISTEN_PORTS")]
static LISTEN_PORTS: Array<PortListeners> = Array::with_max_entries(LISTEN_PORTS_LEN, 0);
#[map(name = "LISTENERS")]
static LISTENERS: HashMap<ListenerKey, ListenerValue> = HashMap::with_max_entries(256, 0);
#[map(name = "FLOWS4")]
static FLOWS4: HashMap<FlowKey4, u32> = HashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);
#[map(name = "FLOWS6")]
static FLOWS6: HashMap<FlowKey6, u32> = HashMap::with_max_entries(DEFAULT_MAX_FLOWS, BPF_F_NO_PREALLOC);
#[map(name = "LAST_SEEN")]
static LAST_SEEN: Array<u64> = Array::with_max_entries(DEFAULT_MAX_FLOWS, BPF_F_MMAPABLE);
#[map(name = "XSKS")]
static XSKS: XskMap = XskMap::with_max_entries(MAX_QUEUES, 0);
#[map(name = "CONFIG")]
static CONFIG: Array<XdpConfig> = Array::with_max_entries(1, 0);
#[map(name = "TICK_CLOCK")]
static TICK_CLOCK: PerCpuArray<TickClock> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "RST_BUCKET")]
static RST_BUCKET: PerCpuArray<RstBucket> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "RX_BACKLOG")]
static RX_BACKLOG: Array<RxBacklogEntry> = Array::with_max_entries(MAX_QUEUES, BPF_F_MMAPABLE);
#[map(name = "BENCH_FRAME")]
static BENCH_FRAME: Array<BenchFrame> = Array::with_max_entries(1, 0);
#[map(name = "FLOOD")]
static FLOOD: Array<FloodState> = Array::with_max_entries(1, 0);

const ETH_HLEN: usize = 14;
const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const TCP_HLEN: usize = 20;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_TCP: u8 = 6;
const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;
const ECE: u8 = 0x40;
const CWR: u8 = 0x80;
/// Option words of our SYN-ACK: 20 bytes, always (EOL-padded without timestamps).
const SYNACK_OPT_WORDS: usize = 5;
/// The window of our SYN-ACK (never scaled in a SYN, RFC 7323 2.2).
const SYNACK_WINDOW: u16 = 65535;
const TTL: u8 = 64;

#[inline(always)]
fn count(c: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(c) {
        // SAFETY: per-CPU slot; no other writer on this CPU.
        unsafe { *slot += 1 };
    }
}

/// Bounds-checked pointer to `len` bytes at `off`.
#[inline(always)]
fn at(ctx: &XdpContext, off: usize, len: usize) -> Option<*mut u8> {
    let start = ctx.data();
    if start + off + len > ctx.data_end() {
        return None;
    }
    Some((start + off) as *mut u8)
}

// Packet words are read and written as the wire's bytes in little-endian words: one plain
// (possibly unaligned, see build.rs) load or store each, no byte shuffling. Checksums are sums
// of such words (RFC 1071 2(B): the sum is byte-order independent).

/// The 4 bytes at `p + off`.
#[inline(always)]
unsafe fn ld32(p: *const u8, off: usize) -> u32 {
    // SAFETY: the caller checked the bytes; unaligned packet loads are allowed (build.rs).
    unsafe { (p.add(off) as *const u32).read_unaligned() }
}

#[inline(always)]
unsafe fn st32(p: *mut u8, off: usize, w: u32) {
    // SAFETY: as `ld32`.
    unsafe { (p.add(off) as *mut u32).write_unaligned(w) }
}

/// The word whose wire bytes are `b`.
#[inline(always)]
const fn wire(b: [u8; 4]) -> u32 {
    u32::from_le_bytes(b)
}

/// What the program needs from a TCP segment to a listener. Addresses and ports are wire words
/// (see `ld32`); the other fields are in host order.
struct Seg {
    v6: bool,
    /// The frame's first 12 bytes: destination MAC, source MAC.
    macs: [u32; 3],
    /// Client (source) and server (destination) addresses; IPv4 in word 0.
    src: [u32; 4],
    dst: [u32; 4],
    /// The TCP header's first 4 bytes: source port, destination port.
    ports: u32,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    /// Offset of the TCP header and its length (data offset * 4).
    l4: usize,
    doff: usize,
    payload_len: u32,
}

impl Seg {
    /// The cookie's view of the connection (`engine_common::cookie::Tuple`).
    #[inline(always)]
    fn tuple(&self) -> Tuple {
        let pair = |a: u32, b: u32| u64::from(a) | (u64::from(b) << 32);
        let addrs = if self.v6 {
            [
                pair(self.src[0], self.src[1]),
                pair(self.src[2], self.src[3]),
                pair(self.dst[0], self.dst[1]),
                pair(self.dst[2], self.dst[3]),
            ]
        } else {
            [pair(self.src[0], self.dst[0]), 0, 0, 0]
        };
        Tuple { addrs, ports: self.ports, v6: self.v6 }
    }
}

enum Verdict {
    Pass(Counter),
    Drop(Counter),
    Done(u32),
}

#[xdp]
pub fn synx_xdp(ctx: XdpContext) -> u32 {
    handle(&ctx)
}

#[inline(always)]
fn handle(ctx: &XdpContext) -> u32 {
    count(counters::RX_PACKETS);
    match run(ctx) {
        Verdict::Pass(c) => {
            count(c);
            xdp_action::XDP_PASS
        }
        Verdict::Drop(c) => {
            count(c);
            xdp_action::XDP_DROP
        }
        Verdict::Done(action) => action,
    }
}

/// Micro-benchmark only (never attached): put BENCH_FRAME back, then run exactly what
/// `synx_xdp` runs. BPF_PROG_TEST_RUN hands every repeat the frame the previous one left, and
/// the SYN path rewrites it into a SYN-ACK; with the frame restored, one call can time
/// thousands of SYNs (less `synx_bench_restore`, the restore alone).
#[xdp]
pub fn synx_bench_syn(ctx: XdpContext) -> u32 {
    if !restore_bench_frame(&ctx) {
        return xdp_action::XDP_ABORTED;
    }
    handle(&ctx)
}

/// Micro-benchmark only: the restore of `synx_bench_syn` alone.
#[xdp]
pub fn synx_bench_restore(ctx: XdpContext) -> u32 {
    if !restore_bench_frame(&ctx) {
        return xdp_action::XDP_ABORTED;
    }
    xdp_action::XDP_TX
}

#[inline(always)]
fn restore_bench_frame(ctx: &XdpContext) -> bool {
    let Some(saved) = BENCH_FRAME.get(0) else { return false };
    if ctx.data_end() - ctx.data() != BENCH_FRAME_LEN {
        return false;
    }
    let Some(p) = at(ctx, 0, BENCH_FRAME_LEN) else { return false };
    // SAFETY: both hold BENCH_FRAME_LEN bytes (checked above; the map value is 80).
    unsafe { copy_frame::<BENCH_FRAME_LEN>(p, saved.words.as_ptr() as *const u8) };
    true
}

/// Copy a frame of `LEN` bytes (`LEN % 8 == 2`, as both bench frames are) from `src` to the
/// packet at `p` in 8-byte words and a 2-byte tail: no memcpy call, which BPF has not.
#[inline(always)]
unsafe fn copy_frame<const LEN: usize>(p: *mut u8, src: *const u8) {
    const { assert!(LEN % 8 == 2) };
    let mut i = 0;
    while i + 8 <= LEN {
        // SAFETY: the caller's ranges hold LEN bytes.
        unsafe { (p.add(i) as *mut u64).write_unaligned((src.add(i) as *const u64).read_unaligned()) };
        i += 8;
    }
    // SAFETY: as above, the last 2 bytes.
    unsafe { (p.add(i) as *mut u16).write_unaligned((src.add(i) as *const u16).read_unaligned()) };
}

/// Benchmark only (never attached): a SYN-flood generator for BPF_PROG_TEST_RUN's live-frame
/// mode, which sends every frame the program returns XDP_TX for out of the context's ingress
/// device. Live-frame mode recycles its pages with whatever the receiver left in them (our own
/// XDP program turns a SYN into a SYN-ACK in place), so each run writes the whole frame from
/// [`FloodState`]'s template (an IPv4 SYN with the MSS option, [`FLOOD_FRAME_LEN`] bytes), then
/// the next source address, port and ISN, updating both checksums (RFC 1624 3).
#[xdp]
pub fn synx_bench_flood(ctx: XdpContext) -> u32 {
    let Some(state) = FLOOD.get_ptr_mut(0) else { return xdp_action::XDP_ABORTED };
    if ctx.data_end() - ctx.data() != FLOOD_FRAME_LEN {
        return xdp_action::XDP_ABORTED;
    }
    let Some(p) = at(&ctx, 0, FLOOD_FRAME_LEN) else { return xdp_action::XDP_ABORTED };
    // SAFETY: one generator thread per map; the state is plain data.
    let s = unsafe { &mut *state };
    // SAFETY: both hold FLOOD_FRAME_LEN bytes (checked above; the template is 64).
    unsafe { copy_frame::<FLOOD_FRAME_LEN>(p, s.frame.as_ptr() as *const u8) };
    let n = s.next;
    s.next = n.wrapping_add(1);
    let sources = if s.sources == 0 { 1 } else { s.sources };
    let src = (s.src_base.wrapping_add(1 + n % sources)).to_be();
    let port = ((1024 + n % 60000) as u16).to_be();
    let seq = n.wrapping_mul(2_654_435_761).to_be();
    const IP_CSUM: usize = ETH_HLEN + 10;
    const IP_SRC: usize = ETH_HLEN + 12;
    const TCP: usize = ETH_HLEN + IPV4_HLEN;
    const TCP_CSUM: usize = TCP + 16;
    // SAFETY: every offset lies within the FLOOD_FRAME_LEN bytes checked above.
    unsafe {
        let old_src = ld32(p, IP_SRC);
        let old_port = (p.add(TCP) as *const u16).read_unaligned();
        let old_seq = ld32(p, TCP + 4);
        let ip_csum = (p.add(IP_CSUM) as *const u16).read_unaligned();
        let tcp_csum = (p.add(TCP_CSUM) as *const u16).read_unaligned();
        // HC' = ~(~HC + ~m + m'), over the changed words (the source address is in the TCP
        // pseudo-header too).
        let src_delta = u64::from(!old_src) + u64::from(src);
        let ip = fold(u64::from(!ip_csum) + src_delta);
        let tcp = fold(u64::from(!tcp_csum) + src_delta + u64::from(!old_port) + u64::from(port) + u64::from(!old_seq) + u64::from(seq));
        st32(p, IP_SRC, src);
        (p.add(TCP) as *mut u16).write_unaligned(port);
        st32(p, TCP + 4, seq);
        (p.add(IP_CSUM) as *mut u16).write_unaligned(ip);
        (p.add(TCP_CSUM) as *mut u16).write_unaligned(tcp);
    }
    s.action
}

/// Native XDP_TX and redirects on a veth deliver only when the peer veth runs an XDP program
/// too; this one is for that peer.
#[xdp]
pub fn synx_peer_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[inline(always)]
fn run(ctx: &XdpContext) -> Verdict {
    let seg = match parse(ctx) {
        Ok(s) => s,
        Err(v) => return v,
    };
    if !is_listener(&seg) {
        return Verdict::Pass(counters::PASS_NOT_LISTENER);
    }
    // Malformed for a listener: illegal flag sets, zero ports, broadcast/multicast sources.
    let f = seg.flags;
    if (f & SYN != 0 && f & (FIN | RST) != 0) || seg.sport == 0 {
        return Verdict::Drop(counters::DROP_BAD_FLAGS);
    }
    // The source MAC's group bit is the low bit of the frame's byte 6.
    if (seg.macs[1] >> 16) & 1 != 0 || bad_source(&seg) {
        return Verdict::Drop(counters::DROP_BAD_ADDRESS);
    }
    let key4 = FlowKey4 { remote: seg.src[0], local: seg.dst[0], ports: seg.ports };
    let key6 = FlowKey6 { remote: seg.src, local: seg.dst, ports: seg.ports };
    // SAFETY: map lookups with keys on our stack.
    let slot = unsafe { if seg.v6 { FLOWS6.get(&key6) } else { FLOWS4.get(&key4) } };
    if let Some(slot) = slot {
        if let Some(p) = LAST_SEEN.get_ptr_mut(*slot) {
            // The coarse clock (see `coarse_now`): keepalive needs seconds, not nanoseconds, and
            // a stamp up to a tick old only makes a connection look idle a little longer.
            // SAFETY: a valid array slot; a plain 8-byte store that userspace reads via mmap.
            unsafe { *p = coarse_now().ns };
        }
        count(counters::FLOW_SEGMENT);
        return to_userspace(ctx);
    }
    let Some(cfg) = CONFIG.get(0) else { return Verdict::Pass(counters::PASS_NOT_READY) };
    if cfg.ready == 0 {
        return Verdict::Pass(counters::PASS_NOT_READY);
    }
    if f & RST != 0 {
        // RFC 9293 3.10.7.1: an incoming RST for no connection is discarded.
        return Verdict::Drop(counters::DROP_RST_NO_FLOW);
    }
    if f & SYN != 0 && f & ACK == 0 {
        // The engine of this queue is behind: a SYN-ACK now would bring a final ACK it may have
        // to drop, leaving a client that believes it is connected to a server that never heard
        // of it (an idle client never finds out). Leave the SYN unanswered, as a server with a
        // full backlog does (RFC 9293 3.10.7.2 lets LISTEN ignore a SYN it cannot serve); the
        // client retransmits it after its RTO (RFC 6298 2.1: 1 s).
        // SAFETY: reading the queue index from the context.
        let queue = unsafe { (*ctx.ctx).rx_queue_index };
        // Signed: a count that lost increments may trail what userspace took; that is no backlog.
        if RX_BACKLOG.get(queue).is_some_and(|b| b.redirected.wrapping_sub(b.consumed) as i64 > RX_BACKLOG_LIMIT as i64) {
            return Verdict::Drop(counters::DROP_SYN_BACKLOG);
        }
        return syn_ack(ctx, &seg, cfg, coarse_now());
    }
    // Checking a cookie, the precise clock: never behind the clock that minted it (XDP's
    // coarse one, or userspace's), so a cookie's age is never underestimated.
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if f & ACK != 0 && f & SYN == 0 {
        // RFC 9293 3.10.7.3 with SYN-RECEIVED held in the cookie: the ACK must acknowledge it.
        let cookie = seg.ack.wrapping_sub(1);
        let client_isn = seg.seq.wrapping_sub(1);
        if cookie::check(&cfg.secrets, &seg.tuple(), client_isn, cookie, now).is_some() {
            count(counters::COOKIE_ACK_VALID);
            // Claim the tuple until userspace writes the real slot, so the flow's next
            // segments reach it even before it has processed this ACK.
            let flags = u64::from(BPF_NOEXIST);
            let _ = if seg.v6 { FLOWS6.insert(&key6, &SLOT_PENDING, flags) } else { FLOWS4.insert(&key4, &SLOT_PENDING, flags) };
            return to_userspace(ctx);
        }
        count(counters::COOKIE_ACK_INVALID);
    }
    // No connection and no valid cookie: RFC 9293 3.10.7.1 reset, or silence.
    if cfg.flags & CONFIG_RST_BAD_COOKIE == 0 {
        return Verdict::Done(xdp_action::XDP_DROP);
    }
    reset(ctx, &seg, cfg, now)
}

/// This CPU's copy of the coarse clock, refreshed when jiffies moves.
#[repr(C)]
struct TickClock {
    jiffies: u64,
    ns: u64,
    /// `ns` in whole milliseconds (wrapping), for TSvals: divided once a tick, not per SYN.
    ms: u64,
}

/// An instant of the coarse clock.
#[derive(Clone, Copy)]
struct Now {
    ns: u64,
    ms: u32,
}

/// CLOCK_MONOTONIC as of the last tick, or the one before (up to 2 ticks, 8 ms at HZ=250,
/// behind): bpf_ktime_get_coarse_ns, called once per tick per CPU and kept in TICK_CLOCK while
/// jiffies (which the verifier inlines into a plain load) stays the same. A helper call costs
/// tens of nanoseconds on a kernel with return-thunk mitigations, and bpf_ktime_get_ns adds a
/// fenced TSC read: about 50 ns a call on the bench machine, a quarter of the SYN path.
///
/// Lagging is safe where this clock is used: a SYN-ACK's cookie period can only be older than
/// the precise clock says (its validity window shrinks by at most the lag, never grows), its
/// TSval only lower than the connection's clock later (RFC 7323 5.3: PAWS on the client still
/// accepts our next segments), a LAST_SEEN stamp only older (the connection looks idle a few ms
/// longer). The kernel's own syncookies count time in jiffies for the same reason.
#[inline(always)]
fn coarse_now() -> Now {
    // SAFETY: no preconditions (inlined by the verifier into a load of jiffies_64).
    let j = unsafe { bpf_jiffies64() };
    let Some(c) = TICK_CLOCK.get_ptr_mut(0) else {
        // SAFETY: no preconditions.
        let ns = unsafe { bpf_ktime_get_coarse_ns() };
        return Now { ns, ms: (ns / 1_000_000) as u32 };
    };
    // SAFETY: this CPU's slot; nothing else on this CPU writes it while we run.
    let c = unsafe { &mut *c };
    if c.jiffies != j {
        c.jiffies = j;
        // SAFETY: no preconditions.
        c.ns = unsafe { bpf_ktime_get_coarse_ns() };
        c.ms = c.ns / 1_000_000;
    }
    Now { ns: c.ns, ms: c.ms as u32 }
}

/// Whether a listener serves the segment's destination: the port's entry first (an array
/// lookup), the exact-address hash map only for ports with several exact addresses or IPv6.
#[inline(always)]
fn is_listener(seg: &Seg) -> bool {
    let Some(port) = LISTEN_PORTS.get(u32::from(seg.dport)) else { return false };
    let f = port.flags;
    if seg.v6 {
        if f & PORT_V6_ANY != 0 {
            return true;
        }
        if f & PORT_V6_SOME == 0 {
            return false;
        }
    } else {
        if f & PORT_V4_ANY != 0 || (f & PORT_V4_ONE != 0 && port.v4_addr == seg.dst[0]) {
            return true;
        }
        if f & PORT_V4_MORE == 0 {
            return false;
        }
    }
    let key = ListenerKey {
        addr: seg.dst,
        port_be: seg.dport.to_be(),
        family: if seg.v6 { FAMILY_V6 } else { FAMILY_V4 },
        _pad: 0,
    };
    // SAFETY: map lookup with a key on our stack.
    unsafe { LISTENERS.get(&key) }.is_some()
}

#[inline(always)]
fn bad_source(seg: &Seg) -> bool {
    // The address's first byte is the low byte of word 0.
    let a = seg.src[0] & 0xff;
    if seg.v6 {
        a == 0xff
    } else {
        // 0.0.0.0/8, multicast 224/4 and everything above (incl. 255.255.255.255).
        a == 0 || a >= 224
    }
}

#[inline(always)]
fn to_userspace(ctx: &XdpContext) -> Verdict {
    // SAFETY: reading the queue index from the context.
    let queue = unsafe { (*ctx.ctx).rx_queue_index };
    match XSKS.redirect(queue, u64::from(xdp_action::XDP_DROP)) {
        Ok(action) => {
            if let Some(b) = RX_BACKLOG.get_ptr_mut(queue) {
                // A queue's frames are handled by one CPU at a time (its NAPI context), so a
                // plain increment; in generic mode two CPUs could race and lose one, which only
                // makes the backlog look smaller (see the SYN check).
                // SAFETY: a valid array slot; userspace only reads this word.
                unsafe { (*b).redirected = (*b).redirected.wrapping_add(1) };
            }
            Verdict::Done(action)
        }
        Err(_) => Verdict::Drop(counters::REDIRECT_FAILED),
    }
}

#[inline(always)]
fn parse(ctx: &XdpContext) -> Result<Seg, Verdict> {
    let Some(eth) = at(ctx, 0, ETH_HLEN) else { return Err(Verdict::Pass(counters::PASS_NOT_IP)) };
    let mut seg = Seg {
        v6: false,
        macs: [0; 3],
        src: [0; 4],
        dst: [0; 4],
        ports: 0,
        sport: 0,
        dport: 0,
        seq: 0,
        ack: 0,
        flags: 0,
        l4: 0,
        doff: 0,
        payload_len: 0,
    };
    // SAFETY: 14 bytes checked above.
    let ethertype = unsafe {
        seg.macs = [ld32(eth, 0), ld32(eth, 4), ld32(eth, 8)];
        u16::from_be((eth.add(12) as *const u16).read_unaligned())
    };
    let l3_len: u32;
    match ethertype {
        ETH_P_IP => {
            let Some(ip) = at(ctx, ETH_HLEN, IPV4_HLEN) else {
                return Err(Verdict::Drop(counters::DROP_TRUNCATED));
            };
            // SAFETY: 20 bytes checked above.
            let (vihl, frag, proto, total) = unsafe {
                (
                    *ip,
                    u16::from_be((ip.add(6) as *const u16).read_unaligned()),
                    *ip.add(9),
                    u16::from_be((ip.add(2) as *const u16).read_unaligned()),
                )
            };
            if proto != IPPROTO_TCP {
                return Err(Verdict::Pass(counters::PASS_NOT_TCP));
            }
            let ihl = ((vihl & 0x0f) as usize) * 4;
            if vihl >> 4 != 4 || ihl < IPV4_HLEN {
                return Err(Verdict::Drop(counters::DROP_BAD_HEADER));
            }
            if frag & 0x3fff != 0 {
                // More-fragments or an offset: the kernel reassembles.
                return Err(Verdict::Pass(counters::PASS_FRAGMENT));
            }
            // SAFETY: addresses lie within the 20 checked bytes.
            unsafe {
                seg.src[0] = ld32(ip, 12);
                seg.dst[0] = ld32(ip, 16);
            }
            seg.l4 = ETH_HLEN + (ihl & 0x3c);
            let total = u32::from(total);
            if total < ihl as u32 {
                return Err(Verdict::Drop(counters::DROP_BAD_HEADER));
            }
            l3_len = total - ihl as u32;
        }
        ETH_P_IPV6 => {
            let Some(ip) = at(ctx, ETH_HLEN, IPV6_HLEN) else {
                return Err(Verdict::Drop(counters::DROP_TRUNCATED));
            };
            // SAFETY: 40 bytes checked above.
            let (ver, next, payload) =
                unsafe { (*ip >> 4, *ip.add(6), u16::from_be((ip.add(4) as *const u16).read_unaligned())) };
            if next != IPPROTO_TCP {
                // Extension headers included: the kernel's business.
                return Err(Verdict::Pass(counters::PASS_NOT_TCP));
            }
            if ver != 6 {
                return Err(Verdict::Drop(counters::DROP_BAD_HEADER));
            }
            // SAFETY: addresses lie within the 40 checked bytes.
            unsafe {
                seg.src = [ld32(ip, 8), ld32(ip, 12), ld32(ip, 16), ld32(ip, 20)];
                seg.dst = [ld32(ip, 24), ld32(ip, 28), ld32(ip, 32), ld32(ip, 36)];
            }
            seg.v6 = true;
            seg.l4 = ETH_HLEN + IPV6_HLEN;
            l3_len = u32::from(payload);
        }
        _ => return Err(Verdict::Pass(counters::PASS_NOT_IP)),
    }
    let l4 = seg.l4;
    let Some(tcp) = at(ctx, l4, TCP_HLEN) else { return Err(Verdict::Drop(counters::DROP_TRUNCATED)) };
    // SAFETY: 20 bytes checked above.
    let doff_byte = unsafe { *tcp.add(12) };
    let doff = ((doff_byte >> 4) as usize) * 4;
    if doff < TCP_HLEN {
        return Err(Verdict::Drop(counters::DROP_BAD_HEADER));
    }
    if at(ctx, l4, doff & 0x3c).is_none() || l3_len < doff as u32 {
        return Err(Verdict::Drop(counters::DROP_TRUNCATED));
    }
    if ctx.data() + l4 + l3_len as usize > ctx.data_end() {
        return Err(Verdict::Drop(counters::DROP_TRUNCATED));
    }
    seg.doff = doff & 0x3c;
    seg.payload_len = l3_len - doff as u32;
    // Through `tcp`, whose 20 bytes the verifier knows are in bounds (re-deriving the pointer
    // from data + l4 would lose that after LLVM drops the repeated check).
    // SAFETY: 20 bytes checked above.
    unsafe {
        seg.ports = ld32(tcp, 0);
        seg.seq = u32::from_be(ld32(tcp, 4));
        seg.ack = u32::from_be(ld32(tcp, 8));
        seg.flags = *tcp.add(13);
    }
    seg.sport = u16::from_be(seg.ports as u16);
    seg.dport = u16::from_be((seg.ports >> 16) as u16);
    Ok(seg)
}

/// Options of a client SYN that shape our SYN-ACK.
struct SynOpts {
    mss: u16,
    wscale: Option<u8>,
    sack: bool,
    ts: Option<u32>,
}

/// RFC 9293 3.7.1: without an MSS option, assume 536 (IPv4) / 1220 (IPv6).
#[inline(always)]
fn default_mss(seg: &Seg) -> u16 {
    if seg.v6 { 1220 } else { 536 }
}

/// The option layouts almost every SYN carries, recognised by comparing whole words: none;
/// MSS alone; and Linux's MSS, SACK-permitted, timestamps, NOP, window scale (tcp_options_write;
/// NOP, NOP in place of SACK-permitted when SACK is off). `None` for anything else, which
/// `syn_options` then walks option by option (RFC 9293 3.1).
#[inline(always)]
fn fixed_syn_options(ctx: &XdpContext, seg: &Seg) -> Option<SynOpts> {
    let mut opts = SynOpts { mss: default_mss(seg), wscale: None, sack: false, ts: None };
    match seg.doff {
        TCP_HLEN => Some(opts),
        24 => {
            let o = at(ctx, seg.l4 + TCP_HLEN, 4)?;
            // SAFETY: 4 bytes checked.
            let w0 = unsafe { ld32(o, 0) };
            if w0 & 0xffff != wire([2, 4, 0, 0]) {
                return None;
            }
            opts.mss = u16::from_be((w0 >> 16) as u16);
            Some(opts)
        }
        40 => {
            let o = at(ctx, seg.l4 + TCP_HLEN, 20)?;
            // SAFETY: 20 bytes checked.
            let (w0, w1, tsval, w4) = unsafe { (ld32(o, 0), ld32(o, 4), ld32(o, 8), ld32(o, 16)) };
            if w0 & 0xffff != wire([2, 4, 0, 0]) || w4 & 0x00ff_ffff != wire([1, 3, 3, 0]) {
                return None;
            }
            opts.sack = if w1 == wire([4, 2, 8, 10]) {
                true
            } else if w1 == wire([1, 1, 8, 10]) {
                false
            } else {
                return None;
            };
            opts.mss = u16::from_be((w0 >> 16) as u16);
            // RFC 7323 2.3: a shift above 14 is used as 14.
            opts.wscale = Some(((w4 >> 24) as u8).min(14));
            opts.ts = Some(u32::from_be(tsval));
            Some(opts)
        }
        _ => None,
    }
}

/// State of the option walk, on the caller's stack, handed to each `bpf_loop` step. The
/// verifier checks the step once instead of every path through an unrolled loop (which blew
/// past its 1M-instruction budget).
#[repr(C)]
struct OptWalk {
    /// Packet start and end (packet pointers; spilled and reloaded with their types).
    data: *const u8,
    data_end: *const u8,
    /// Offset of the next option and of the end of the options, from `data`.
    off: u64,
    end: u64,
    ts: u32,
    mss: u16,
    wscale: u8,
    /// Bit 0: SACK-permitted, bit 1: timestamps seen, bit 7: malformed.
    seen: u8,
}

const SEEN_SACK: u8 = 1;
const SEEN_TS: u8 = 2;
const SEEN_BAD: u8 = 0x80;
/// Largest offset of a TCP option in a frame we parse: Ethernet + IPv6 + a full TCP header.
const MAX_OPT_OFF: u64 = (ETH_HLEN + IPV6_HLEN + 60) as u64;

/// One option (RFC 9293 3.1). Returns 1 to stop the walk.
extern "C" fn opt_step(_index: u32, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `ctx` is the caller's `OptWalk` (bpf_loop passes it through).
    let w = unsafe { &mut *(ctx as *mut OptWalk) };
    let off = w.off;
    if off >= w.end || off > MAX_OPT_OFF {
        return 1;
    }
    // SAFETY: bounded offset into the packet; every read below is checked against data_end.
    let p = unsafe { w.data.add(off as usize) };
    if p.wrapping_add(2) > w.data_end {
        // A lone NOP/EOL in the frame's last byte: nothing more to learn.
        return 1;
    }
    // SAFETY: 2 bytes checked.
    let (kind, len) = unsafe { (*p, *p.add(1)) };
    match kind {
        0 => return 1,
        1 => {
            w.off = off + 1;
            return 0;
        }
        _ => {}
    }
    if len < 2 || off + u64::from(len) > w.end {
        w.seen |= SEEN_BAD;
        return 1;
    }
    match (kind, len) {
        (2, 4) if p.wrapping_add(4) <= w.data_end => {
            // SAFETY: 4 bytes checked.
            w.mss = u16::from_be(unsafe { (p.add(2) as *const u16).read_unaligned() });
        }
        (3, 3) if p.wrapping_add(3) <= w.data_end => {
            // SAFETY: 3 bytes checked. RFC 7323 2.3: a shift above 14 is used as 14.
            w.wscale = unsafe { *p.add(2) }.min(14);
        }
        (4, 2) => w.seen |= SEEN_SACK,
        (8, 10) if p.wrapping_add(10) <= w.data_end => {
            // SAFETY: 10 bytes checked.
            w.ts = u32::from_be(unsafe { ld32(p, 2) });
            w.seen |= SEEN_TS;
        }
        _ => {}
    }
    w.off = off + u64::from(len);
    0
}

/// Walk the SYN's options one by one. `None` when they run past the header.
#[inline(always)]
fn syn_options(ctx: &XdpContext, seg: &Seg) -> Option<SynOpts> {
    let mut w = OptWalk {
        data: ctx.data() as *const u8,
        data_end: ctx.data_end() as *const u8,
        off: (seg.l4 + TCP_HLEN) as u64,
        end: (seg.l4 + seg.doff) as u64,
        ts: 0,
        mss: default_mss(seg),
        wscale: 0xff,
        seen: 0,
    };
    // SAFETY: helper call with a callback and a context on our stack; at most 40 options.
    unsafe {
        bpf_loop(40, opt_step as *mut core::ffi::c_void, (&raw mut w).cast(), 0);
    }
    if w.seen & SEEN_BAD != 0 {
        return None;
    }
    Some(SynOpts {
        mss: w.mss,
        wscale: if w.wscale == 0xff { None } else { Some(w.wscale) },
        sack: w.seen & SEEN_SACK != 0,
        ts: if w.seen & SEEN_TS != 0 { Some(w.ts) } else { None },
    })
}

/// Ones'-complement sum folded to 16 bits and complemented (RFC 1071), as stored.
#[inline(always)]
fn fold(mut acc: u64) -> u16 {
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    !(acc as u16)
}

/// Ethernet header of a reply: the MACs swapped, then `ethertype`.
#[inline(always)]
unsafe fn write_eth(p: *mut u8, seg: &Seg, ethertype: u16) {
    let [m0, m1, m2] = seg.macs;
    // SAFETY (whole fn): the caller checked that the frame holds the header.
    unsafe {
        // Bytes 0..6 (destination) become the request's 6..12 (its source) and vice versa.
        st32(p, 0, (m1 >> 16) | (m2 << 16));
        st32(p, 4, (m2 >> 16) | (m0 << 16));
        st32(p, 8, (m0 >> 16) | (m1 << 16));
        (p.add(12) as *mut u16).write_unaligned(ethertype.to_be());
    }
}

/// IPv4 header of a reply carrying `tcp_len` bytes (addresses swapped, checksum filled in);
/// returns the TCP pseudo-header's address sum.
#[inline(always)]
unsafe fn write_ipv4(ip: *mut u8, seg: &Seg, tcp_len: usize) -> u64 {
    let [t0, t1] = ((IPV4_HLEN + tcp_len) as u16).to_be_bytes();
    let w0 = wire([0x45, 0, t0, t1]);
    // ID 0 with DF set: RFC 6864 4.1.
    let w1 = wire([0, 0, 0x40, 0]);
    let w2 = wire([TTL, IPPROTO_TCP, 0, 0]);
    let addrs = u64::from(seg.dst[0]) + u64::from(seg.src[0]);
    let csum = fold(u64::from(w0) + u64::from(w1) + u64::from(w2) + addrs);
    // SAFETY (whole fn): the caller checked that the frame holds the header.
    unsafe {
        st32(ip, 0, w0);
        st32(ip, 4, w1);
        st32(ip, 8, w2 | (u32::from(csum) << 16));
        st32(ip, 12, seg.dst[0]);
        st32(ip, 16, seg.src[0]);
    }
    addrs
}

/// IPv6 header of a reply carrying `tcp_len` bytes (addresses swapped); returns the TCP
/// pseudo-header's address sum.
#[inline(always)]
unsafe fn write_ipv6(ip: *mut u8, seg: &Seg, tcp_len: usize) -> u64 {
    let [l0, l1] = (tcp_len as u16).to_be_bytes();
    let mut addrs = 0u64;
    // SAFETY (whole fn): the caller checked that the frame holds the header.
    unsafe {
        st32(ip, 0, wire([0x60, 0, 0, 0]));
        st32(ip, 4, wire([l0, l1, IPPROTO_TCP, TTL]));
        for i in 0..4 {
            st32(ip, 8 + 4 * i, seg.dst[i]);
            st32(ip, 24 + 4 * i, seg.src[i]);
            addrs += u64::from(seg.dst[i]) + u64::from(seg.src[i]);
        }
    }
    addrs
}

/// TCP header of a reply (ports swapped) with `N` option words, checksum over the pseudo
/// header (`addrs`, its address sum), the header and the options; urgent pointer 0.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn write_tcp<const N: usize>(
    t: *mut u8,
    seg: &Seg,
    addrs: u64,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    opts: &[u32; N],
) {
    let len = TCP_HLEN + 4 * N;
    let ports = seg.ports.rotate_right(16);
    let [w0, w1] = window.to_be_bytes();
    let doff_flags_win = wire([((len / 4) as u8) << 4, flags, w0, w1]);
    let [l0, l1] = (len as u16).to_be_bytes();
    let mut acc = addrs + u64::from(wire([0, IPPROTO_TCP, l0, l1]));
    acc += u64::from(ports) + u64::from(seq.to_be()) + u64::from(ack.to_be()) + u64::from(doff_flags_win);
    // SAFETY (whole fn): the caller checked that the frame holds the header and options.
    unsafe {
        for (i, &o) in opts.iter().enumerate() {
            st32(t, TCP_HLEN + 4 * i, o);
            acc += u64::from(o);
        }
        st32(t, 0, ports);
        st32(t, 4, seq.to_be());
        st32(t, 8, ack.to_be());
        st32(t, 12, doff_flags_win);
        st32(t, 16, u32::from(fold(acc)));
    }
}

/// Resize the frame to exactly `len` bytes and return a pointer to it (no helper call when it
/// already has that size, as a SYN with Linux's options does). The reply is written from offset
/// 0, so a frame that must grow grows at the head: XDP guarantees headroom, while tailroom on a
/// veth's frames is not there to take (bpf_xdp_adjust_tail failed on them).
#[inline(always)]
fn resize(ctx: &XdpContext, len: usize) -> Option<*mut u8> {
    let cur = ctx.data_end() - ctx.data();
    let delta = len as i64 - cur as i64;
    // SAFETY: helper calls on our context.
    let rc = unsafe {
        if delta > 0 {
            bpf_xdp_adjust_head(ctx.ctx, -(delta as i32))
        } else if delta < 0 {
            bpf_xdp_adjust_tail(ctx.ctx, delta as i32)
        } else {
            0
        }
    };
    if rc != 0 {
        return None;
    }
    at(ctx, 0, len)
}

/// Turn the frame into our reply to `seg`: a TCP header with `N` option words. False when the
/// frame cannot be resized.
#[inline(always)]
fn reply<const N: usize>(ctx: &XdpContext, seg: &Seg, seq: u32, ack: u32, flags: u8, window: u16, opts: &[u32; N]) -> bool {
    let tcp_len = TCP_HLEN + 4 * N;
    if seg.v6 {
        let Some(p) = resize(ctx, ETH_HLEN + IPV6_HLEN + tcp_len) else { return false };
        // SAFETY: `resize` checked that the whole reply fits.
        unsafe {
            write_eth(p, seg, ETH_P_IPV6);
            let addrs = write_ipv6(p.add(ETH_HLEN), seg, tcp_len);
            write_tcp(p.add(ETH_HLEN + IPV6_HLEN), seg, addrs, seq, ack, flags, window, opts);
        }
    } else {
        let Some(p) = resize(ctx, ETH_HLEN + IPV4_HLEN + tcp_len) else { return false };
        // SAFETY: `resize` checked that the whole reply fits.
        unsafe {
            write_eth(p, seg, ETH_P_IP);
            let addrs = write_ipv4(p.add(ETH_HLEN), seg, tcp_len);
            write_tcp(p.add(ETH_HLEN + IPV4_HLEN), seg, addrs, seq, ack, flags, window, opts);
        }
    }
    true
}

#[inline(always)]
fn syn_ack(ctx: &XdpContext, seg: &Seg, cfg: &XdpConfig, now: Now) -> Verdict {
    let opts = match fixed_syn_options(ctx, seg) {
        Some(o) => o,
        None => {
            count(counters::SYN_GENERIC_OPTIONS);
            match syn_options(ctx, seg) {
                Some(o) => o,
                None => return Verdict::Drop(counters::DROP_BAD_OPTIONS),
            }
        }
    };
    let mss = if opts.mss < cfg.mss { opts.mss } else { cfg.mss };
    let (isn, ts_offset) = if cfg.flags & CONFIG_KERNEL_COOKIE != 0 && !seg.v6 {
        // The benchmark's baseline: the same reply, with the kernel helper's cookie. The helper
        // gives no TSval offset, so the baseline keys one off the 4-tuple (RFC 7323 7.1), the
        // cheapest way to send the same SYN-ACK. The helper reads the whole TCP header (the MSS
        // option) and wants th_len == doff * 4, which the verifier wants constant: the baseline
        // takes the 40-byte header of Linux's SYN behind a 20-byte IPv4 header, as the benchmark
        // sends it.
        const LINUX_SYN_TCP_HLEN: usize = 40;
        if seg.doff != LINUX_SYN_TCP_HLEN || seg.l4 != ETH_HLEN + IPV4_HLEN {
            return Verdict::Drop(counters::DROP_BAD_OPTIONS);
        }
        let Some(p) = at(ctx, 0, ETH_HLEN + IPV4_HLEN + LINUX_SYN_TCP_HLEN) else {
            return Verdict::Drop(counters::DROP_TRUNCATED);
        };
        // SAFETY: both ranges lie in the bytes checked just above.
        let r = unsafe {
            let (iph, th) = (p.add(ETH_HLEN), p.add(ETH_HLEN + IPV4_HLEN));
            bpf_tcp_raw_gen_syncookie_ipv4(iph.cast(), th.cast(), LINUX_SYN_TCP_HLEN as u32)
        };
        if r < 0 {
            return Verdict::Drop(counters::DROP_BAD_HEADER);
        }
        (r as u32, (cookie::tuple_hash(&cfg.secrets[0], &seg.tuple()) >> 32) as u32)
    } else {
        let m = cookie::make(&cfg.secrets[0], &seg.tuple(), seg.seq, now.ns, mss);
        (m.isn, m.ts_offset)
    };
    // Options, Linux's order: MSS, SACK-permitted, timestamps, NOP, window scale. The MSS we
    // announce is what we can receive (RFC 6691 2, RFC 9293 3.7.1), whatever the client's;
    // the cookie keeps the smaller of the two, the size we may send.
    let [m0, m1] = cfg.mss.to_be_bytes();
    let mut o: [u32; SYNACK_OPT_WORDS] = [wire([2, 4, m0, m1]), 0, 0, 0, 0];
    if let Some(client_ts) = opts.ts {
        // RFC 7323 3.2: TSecr echoes the client's TSval; our TSval carries what the cookie
        // cannot (window scale, SACK, ECN).
        let ecn = seg.flags & (ECE | CWR) == (ECE | CWR);
        let tsval = cookie::ts_encode(now.ms, ts_offset, opts.wscale, opts.sack, ecn);
        o[1] = if opts.sack { wire([4, 2, 8, 10]) } else { wire([1, 1, 8, 10]) };
        o[2] = tsval.to_be();
        o[3] = client_ts.to_be();
        // RFC 7323 2.2: offer scaling only to a client that offered it.
        o[4] = if opts.wscale.is_some() { wire([1, 3, 3, cfg.wscale]) } else { wire([1, 1, 1, 1]) };
    }
    // Without timestamps the cookie cannot remember scaling or SACK: MSS only, EOL padding.
    if !reply(ctx, seg, isn, seg.seq.wrapping_add(1), SYN | ACK, SYNACK_WINDOW, &o) {
        return Verdict::Drop(counters::DROP_NO_ROOM);
    }
    count(counters::SYN_COOKIE_SENT);
    Verdict::Done(xdp_action::XDP_TX)
}

/// RFC 9293 3.10.7.1 reset for a segment with no connection, rate-limited per CPU.
#[inline(always)]
fn reset(ctx: &XdpContext, seg: &Seg, cfg: &XdpConfig, now: u64) -> Verdict {
    let Some(bucket) = RST_BUCKET.get_ptr_mut(0) else { return Verdict::Done(xdp_action::XDP_DROP) };
    // SAFETY: per-CPU slot; no other writer on this CPU.
    let b = unsafe { &mut *bucket };
    let rate = u64::from(cfg.rst_per_sec);
    // Capped at one second, so elapsed * rate (< 2^30 * 2^32) fits in 64 bits (no u128 in BPF).
    let elapsed = now.saturating_sub(b.last_ns).min(1_000_000_000);
    let refill = elapsed.wrapping_mul(rate) / 1_000_000_000;
    if refill > 0 {
        b.tokens = (b.tokens + refill).min(rate);
        b.last_ns = now;
    }
    if b.tokens == 0 {
        return Verdict::Drop(counters::RST_RATE_LIMITED);
    }
    b.tokens -= 1;
    // If the segment has ACK: <SEQ=SEG.ACK><CTL=RST>; otherwise
    // <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>.
    let seg_len = seg.payload_len
        + u32::from(seg.flags & SYN != 0)
        + u32::from(seg.flags & FIN != 0);
    let (rseq, rack, rflags) = if seg.flags & ACK != 0 {
        (seg.ack, 0, RST)
    } else {
        (0, seg.seq.wrapping_add(seg_len), RST | ACK)
    };
    if !reply(ctx, seg, rseq, rack, rflags, 0, &[]) {
        return Verdict::Drop(counters::DROP_NO_ROOM);
    }
    count(counters::RST_SENT);
    Verdict::Done(xdp_action::XDP_TX)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
