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
    bindings::{BPF_F_MMAPABLE, BPF_NOEXIST, xdp_action},
    helpers::{
        bpf_ktime_get_ns, bpf_loop, bpf_tcp_raw_gen_syncookie_ipv4, bpf_xdp_adjust_head,
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
        CONFIG_KERNEL_COOKIE, CONFIG_RST_BAD_COOKIE, DEFAULT_MAX_FLOWS, FAMILY_V4, FAMILY_V6, FlowKey, ListenerKey,
        ListenerValue, RstBucket, SLOT_PENDING, XdpConfig,
    },
};

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counters::COUNT, 0);
#[map(name = "LISTENERS")]
static LISTENERS: HashMap<ListenerKey, ListenerValue> = HashMap::with_max_entries(256, 0);
#[map(name = "FLOWS")]
static FLOWS: HashMap<FlowKey, u32> = HashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);
#[map(name = "LAST_SEEN")]
static LAST_SEEN: Array<u64> = Array::with_max_entries(DEFAULT_MAX_FLOWS, BPF_F_MMAPABLE);
#[map(name = "XSKS")]
static XSKS: XskMap = XskMap::with_max_entries(64, 0);
#[map(name = "CONFIG")]
static CONFIG: Array<XdpConfig> = Array::with_max_entries(1, 0);
#[map(name = "RST_BUCKET")]
static RST_BUCKET: PerCpuArray<RstBucket> = PerCpuArray::with_max_entries(1, 0);

const ETH_HLEN: usize = 14;
const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_TCP: u8 = 6;
const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;
const ECE: u8 = 0x40;
const CWR: u8 = 0x80;
/// TCP header of our SYN-ACK: 20 bytes + 20 bytes of options, always (EOL-padded without TS).
const SYNACK_TCP_LEN: usize = 40;
const RST_TCP_LEN: usize = 20;
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

#[inline(always)]
fn rd16(ctx: &XdpContext, off: usize) -> Option<u16> {
    // SAFETY: bounds checked by `at`; unaligned read.
    at(ctx, off, 2).map(|p| u16::from_be(unsafe { (p as *const u16).read_unaligned() }))
}

/// What the program needs from a TCP segment to a listener.
struct Seg {
    v6: bool,
    mac_src: [u8; 6],
    mac_dst: [u8; 6],
    /// Client (source) and server (destination) addresses, IPv4 in the first 4 bytes.
    src: [u8; 16],
    dst: [u8; 16],
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

enum Verdict {
    Pass(Counter),
    Drop(Counter),
    Done(u32),
}

#[xdp]
pub fn synx_xdp(ctx: XdpContext) -> u32 {
    count(counters::RX_PACKETS);
    match run(&ctx) {
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
    // Listener: exact address first, then the wildcard.
    let mut lkey = ListenerKey {
        addr: seg.dst,
        port_be: seg.dport.to_be(),
        family: if seg.v6 { FAMILY_V6 } else { FAMILY_V4 },
        _pad: 0,
    };
    // SAFETY: map lookups with keys on our stack.
    if unsafe { LISTENERS.get(&lkey) }.is_none() {
        lkey.addr = [0; 16];
        if unsafe { LISTENERS.get(&lkey) }.is_none() {
            return Verdict::Pass(counters::PASS_NOT_LISTENER);
        }
    }
    // Malformed for a listener: illegal flag sets, zero ports, broadcast/multicast sources.
    let f = seg.flags;
    if (f & SYN != 0 && f & (FIN | RST) != 0) || seg.sport == 0 {
        return Verdict::Drop(counters::DROP_BAD_FLAGS);
    }
    if seg.mac_src[0] & 1 != 0 || bad_source(&seg) {
        return Verdict::Drop(counters::DROP_BAD_ADDRESS);
    }
    let fkey = FlowKey {
        remote: seg.src,
        local: seg.dst,
        remote_port_be: seg.sport.to_be(),
        local_port_be: seg.dport.to_be(),
        family: lkey.family,
        _pad: [0; 3],
    };
    // SAFETY: map lookup with a key on our stack.
    if let Some(slot) = unsafe { FLOWS.get(&fkey) } {
        let slot = *slot;
        if let Some(p) = LAST_SEEN.get_ptr_mut(slot) {
            // SAFETY: a valid array slot; a plain 8-byte store that userspace reads via mmap.
            unsafe { *p = bpf_ktime_get_ns() };
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
    let tuple = Tuple { client: seg.src, server: seg.dst, client_port: seg.sport, server_port: seg.dport };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if f & SYN != 0 && f & ACK == 0 {
        return syn_ack(ctx, &seg, cfg, &tuple, now);
    }
    if f & ACK != 0 && f & SYN == 0 {
        let cookie = seg.ack.wrapping_sub(1);
        let client_isn = seg.seq.wrapping_sub(1);
        if cookie::check(&cfg.secrets, &tuple, client_isn, cookie, now).is_some() {
            count(counters::COOKIE_ACK_VALID);
            // Claim the tuple until userspace writes the real slot, so the flow's next
            // segments reach it even before it has processed this ACK.
            let _ = FLOWS.insert(&fkey, &SLOT_PENDING, u64::from(BPF_NOEXIST));
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

#[inline(always)]
fn bad_source(seg: &Seg) -> bool {
    if seg.v6 {
        seg.src[0] == 0xff
    } else {
        let a = seg.src[0];
        // 0.0.0.0/8, multicast 224/4 and everything above (incl. 255.255.255.255).
        a == 0 || a >= 224
    }
}

#[inline(always)]
fn to_userspace(ctx: &XdpContext) -> Verdict {
    // SAFETY: reading the queue index from the context.
    let queue = unsafe { (*ctx.ctx).rx_queue_index };
    match XSKS.redirect(queue, u64::from(xdp_action::XDP_DROP)) {
        Ok(action) => Verdict::Done(action),
        Err(_) => Verdict::Drop(counters::REDIRECT_FAILED),
    }
}

#[inline(always)]
fn parse(ctx: &XdpContext) -> Result<Seg, Verdict> {
    let Some(eth) = at(ctx, 0, ETH_HLEN) else { return Err(Verdict::Pass(counters::PASS_NOT_IP)) };
    let mut seg = Seg {
        v6: false,
        mac_src: [0; 6],
        mac_dst: [0; 6],
        src: [0; 16],
        dst: [0; 16],
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
    unsafe {
        core::ptr::copy_nonoverlapping(eth, seg.mac_dst.as_mut_ptr(), 6);
        core::ptr::copy_nonoverlapping(eth.add(6), seg.mac_src.as_mut_ptr(), 6);
    }
    let ethertype = rd16(ctx, 12).unwrap_or(0);
    let l3_len: u32;
    match ethertype {
        ETH_P_IP => {
            let Some(ip) = at(ctx, ETH_HLEN, IPV4_HLEN) else {
                return Err(Verdict::Drop(counters::DROP_TRUNCATED));
            };
            // SAFETY: 20 bytes checked above.
            let (vihl, frag, proto) = unsafe {
                (*ip, u16::from_be((ip.add(6) as *const u16).read_unaligned()), *ip.add(9))
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
            let total = rd16(ctx, ETH_HLEN + 2).unwrap_or(0) as u32;
            // SAFETY: addresses lie within the 20 checked bytes.
            unsafe {
                core::ptr::copy_nonoverlapping(ip.add(12), seg.src.as_mut_ptr(), 4);
                core::ptr::copy_nonoverlapping(ip.add(16), seg.dst.as_mut_ptr(), 4);
            }
            seg.l4 = ETH_HLEN + (ihl & 0x3c);
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
            let (ver, next) = unsafe { (*ip >> 4, *ip.add(6)) };
            if next != IPPROTO_TCP {
                // Extension headers included: the kernel's business.
                return Err(Verdict::Pass(counters::PASS_NOT_TCP));
            }
            if ver != 6 {
                return Err(Verdict::Drop(counters::DROP_BAD_HEADER));
            }
            // SAFETY: addresses lie within the 40 checked bytes.
            unsafe {
                core::ptr::copy_nonoverlapping(ip.add(8), seg.src.as_mut_ptr(), 16);
                core::ptr::copy_nonoverlapping(ip.add(24), seg.dst.as_mut_ptr(), 16);
            }
            seg.v6 = true;
            seg.l4 = ETH_HLEN + IPV6_HLEN;
            l3_len = rd16(ctx, ETH_HLEN + 4).unwrap_or(0) as u32;
        }
        _ => return Err(Verdict::Pass(counters::PASS_NOT_IP)),
    }
    let l4 = seg.l4;
    let Some(tcp) = at(ctx, l4, 20) else { return Err(Verdict::Drop(counters::DROP_TRUNCATED)) };
    // SAFETY: 20 bytes checked above.
    let doff_byte = unsafe { *tcp.add(12) };
    let doff = ((doff_byte >> 4) as usize) * 4;
    if doff < 20 {
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
        seg.sport = u16::from_be((tcp as *const u16).read_unaligned());
        seg.dport = u16::from_be((tcp.add(2) as *const u16).read_unaligned());
        seg.seq = u32::from_be((tcp.add(4) as *const u32).read_unaligned());
        seg.ack = u32::from_be((tcp.add(8) as *const u32).read_unaligned());
        seg.flags = *tcp.add(13);
    }
    Ok(seg)
}

/// Options of a client SYN that shape our SYN-ACK.
struct SynOpts {
    mss: u16,
    wscale: Option<u8>,
    sack: bool,
    ts: Option<u32>,
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
            // SAFETY: 3 bytes checked.
            w.wscale = unsafe { *p.add(2) }.min(14);
        }
        (4, 2) => w.seen |= SEEN_SACK,
        (8, 10) if p.wrapping_add(10) <= w.data_end => {
            // SAFETY: 10 bytes checked.
            w.ts = u32::from_be(unsafe { (p.add(2) as *const u32).read_unaligned() });
            w.seen |= SEEN_TS;
        }
        _ => {}
    }
    w.off = off + u64::from(len);
    0
}

/// Walk the SYN's options. `None` when they run past the header.
#[inline(always)]
fn syn_options(ctx: &XdpContext, seg: &Seg) -> Option<SynOpts> {
    let mut w = OptWalk {
        data: ctx.data() as *const u8,
        data_end: ctx.data_end() as *const u8,
        off: (seg.l4 + 20) as u64,
        end: (seg.l4 + seg.doff) as u64,
        ts: 0,
        // RFC 9293 3.7.1: without an MSS option, assume 536 (IPv4) / 1220 (IPv6).
        mss: if seg.v6 { 1220 } else { 536 },
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

/// Ones'-complement sum of `n` 16-bit words at `off` (as loaded; the sum is byte-order
/// independent when everything is loaded the same way, RFC 1071).
#[inline(always)]
fn sum_words(p: *const u8, n: usize) -> u64 {
    let mut acc = 0u64;
    for i in 0..n {
        // SAFETY: the caller checked `2 * n` bytes at `p`.
        acc += u64::from(unsafe { (p.add(2 * i) as *const u16).read_unaligned() });
    }
    acc
}

#[inline(always)]
fn fold(mut acc: u64) -> u16 {
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    !(acc as u16)
}

/// Write Ethernet + IP headers for a reply of `tcp_len` TCP bytes (addresses swapped) at the
/// start of a frame of at least that size, then the TCP checksum once the header is written.
#[inline(always)]
unsafe fn write_l2_l3(p: *mut u8, seg: &Seg, tcp_len: usize) {
    // SAFETY (whole fn): the caller checked the frame holds the full reply.
    unsafe {
        core::ptr::copy_nonoverlapping(seg.mac_src.as_ptr(), p, 6);
        core::ptr::copy_nonoverlapping(seg.mac_dst.as_ptr(), p.add(6), 6);
        if seg.v6 {
            (p.add(12) as *mut u16).write_unaligned(ETH_P_IPV6.to_be());
            let ip = p.add(ETH_HLEN);
            (ip as *mut u32).write_unaligned(0x6000_0000u32.to_be());
            (ip.add(4) as *mut u16).write_unaligned((tcp_len as u16).to_be());
            *ip.add(6) = IPPROTO_TCP;
            *ip.add(7) = TTL;
            core::ptr::copy_nonoverlapping(seg.dst.as_ptr(), ip.add(8), 16);
            core::ptr::copy_nonoverlapping(seg.src.as_ptr(), ip.add(24), 16);
        } else {
            (p.add(12) as *mut u16).write_unaligned(ETH_P_IP.to_be());
            let ip = p.add(ETH_HLEN);
            *ip = 0x45;
            *ip.add(1) = 0;
            (ip.add(2) as *mut u16).write_unaligned(((IPV4_HLEN + tcp_len) as u16).to_be());
            (ip.add(4) as *mut u16).write_unaligned(0); // ID 0, DF set: RFC 6864 4.1
            (ip.add(6) as *mut u16).write_unaligned(0x4000u16.to_be());
            *ip.add(8) = TTL;
            *ip.add(9) = IPPROTO_TCP;
            (ip.add(10) as *mut u16).write_unaligned(0);
            core::ptr::copy_nonoverlapping(seg.dst.as_ptr(), ip.add(12), 4);
            core::ptr::copy_nonoverlapping(seg.src.as_ptr(), ip.add(16), 4);
            let c = fold(sum_words(ip, IPV4_HLEN / 2));
            (ip.add(10) as *mut u16).write_unaligned(c);
        }
    }
}

/// The fixed 20 bytes of a reply's TCP header (ports already swapped by the caller); the
/// checksum is left 0 for `tcp_checksum`, the urgent pointer 0.
#[inline(always)]
unsafe fn write_tcp_header(t: *mut u8, (src, dst): (u16, u16), seq: u32, ack: u32, len: usize, flags: u8, window: u16) {
    // SAFETY (whole fn): the caller checked that the frame holds the header.
    unsafe {
        (t as *mut u16).write_unaligned(src.to_be());
        (t.add(2) as *mut u16).write_unaligned(dst.to_be());
        (t.add(4) as *mut u32).write_unaligned(seq.to_be());
        (t.add(8) as *mut u32).write_unaligned(ack.to_be());
        *t.add(12) = ((len / 4) as u8) << 4;
        *t.add(13) = flags;
        (t.add(14) as *mut u16).write_unaligned(window.to_be());
        (t.add(16) as *mut u32).write_unaligned(0);
    }
}

/// Fill in the TCP checksum (pseudo-header + header, no payload) of the reply.
#[inline(always)]
unsafe fn tcp_checksum(p: *mut u8, v6: bool, tcp_len: usize) {
    // SAFETY (whole fn): the caller checked the frame holds the full reply.
    unsafe {
        let (addrs, addr_words, tcp) = if v6 {
            (p.add(ETH_HLEN + 8), 16, p.add(ETH_HLEN + IPV6_HLEN))
        } else {
            (p.add(ETH_HLEN + 12), 4, p.add(ETH_HLEN + IPV4_HLEN))
        };
        let mut acc = sum_words(addrs, addr_words);
        acc += u64::from((IPPROTO_TCP as u16).to_be()) + u64::from((tcp_len as u16).to_be());
        (tcp.add(16) as *mut u16).write_unaligned(0);
        acc += if tcp_len == SYNACK_TCP_LEN { sum_words(tcp, SYNACK_TCP_LEN / 2) } else { sum_words(tcp, RST_TCP_LEN / 2) };
        (tcp.add(16) as *mut u16).write_unaligned(fold(acc));
    }
}

/// Resize the frame to exactly `len` bytes and return a pointer to it. The reply is written
/// from offset 0, so a frame that must grow grows at the head: XDP guarantees headroom, while
/// tailroom on a veth's frames is not there to take (bpf_xdp_adjust_tail failed on them).
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

fn syn_ack(ctx: &XdpContext, seg: &Seg, cfg: &XdpConfig, tuple: &Tuple, now: u64) -> Verdict {
    let Some(opts) = syn_options(ctx, seg) else { return Verdict::Drop(counters::DROP_BAD_OPTIONS) };
    let mss = if opts.mss < cfg.mss { opts.mss } else { cfg.mss };
    let isn = if cfg.flags & CONFIG_KERNEL_COOKIE != 0 && !seg.v6 {
        // The benchmark's baseline: the same reply, with the kernel helper's cookie.
        let (Some(iph), Some(th)) = (at(ctx, ETH_HLEN, IPV4_HLEN), at(ctx, seg.l4, 20)) else {
            return Verdict::Drop(counters::DROP_TRUNCATED);
        };
        // SAFETY: both pointers are bounds-checked packet pointers of the stated sizes.
        let r = unsafe { bpf_tcp_raw_gen_syncookie_ipv4(iph.cast(), th.cast(), 20) };
        if r < 0 {
            return Verdict::Drop(counters::DROP_BAD_HEADER);
        }
        r as u32
    } else {
        cookie::make(&cfg.secrets[0], tuple, seg.seq, now, mss)
    };
    let ts_val = opts.ts.map(|_| {
        let offset = cookie::ts_offset(&cfg.ts_key, tuple);
        let ecn = seg.flags & (ECE | CWR) == (ECE | CWR);
        cookie::ts_encode((now / 1_000_000) as u32, offset, opts.wscale, opts.sack, ecn)
    });
    let l3 = if seg.v6 { IPV6_HLEN } else { IPV4_HLEN };
    let len = ETH_HLEN + l3 + SYNACK_TCP_LEN;
    let (sport, dport, seq) = (seg.sport, seg.dport, seg.seq);
    let Some(p) = resize(ctx, len) else { return Verdict::Drop(counters::DROP_NO_ROOM) };
    // SAFETY: `resize` checked that `len` bytes are there.
    unsafe {
        write_l2_l3(p, seg, SYNACK_TCP_LEN);
        let t = p.add(ETH_HLEN + l3);
        write_tcp_header(t, (dport, sport), isn, seq.wrapping_add(1), SYNACK_TCP_LEN, SYN | ACK, SYNACK_WINDOW);
        // Options, Linux's order: MSS, SACK-permitted, timestamps, NOP, window scale.
        let o = t.add(20);
        *o = 2;
        *o.add(1) = 4;
        (o.add(2) as *mut u16).write_unaligned(mss.to_be());
        match ts_val {
            Some(tsv) => {
                let (a, b) = if opts.sack { (4, 2) } else { (1, 1) };
                *o.add(4) = a;
                *o.add(5) = b;
                *o.add(6) = 8;
                *o.add(7) = 10;
                (o.add(8) as *mut u32).write_unaligned(tsv.to_be());
                (o.add(12) as *mut u32).write_unaligned(opts.ts.unwrap_or(0).to_be());
                *o.add(16) = 1;
                match opts.wscale {
                    Some(_) => {
                        *o.add(17) = 3;
                        *o.add(18) = 3;
                        *o.add(19) = cfg.wscale;
                    }
                    None => {
                        *o.add(17) = 1;
                        *o.add(18) = 1;
                        *o.add(19) = 1;
                    }
                }
            }
            None => {
                // Without timestamps the cookie cannot remember scaling or SACK: MSS only.
                for i in 4..20 {
                    *o.add(i) = 0;
                }
            }
        }
        tcp_checksum(p, seg.v6, SYNACK_TCP_LEN);
    }
    count(counters::SYN_COOKIE_SENT);
    Verdict::Done(xdp_action::XDP_TX)
}

/// RFC 9293 3.10.7.1 reset for a segment with no connection, rate-limited per CPU.
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
    let l3 = if seg.v6 { IPV6_HLEN } else { IPV4_HLEN };
    let (sport, dport) = (seg.sport, seg.dport);
    let Some(p) = resize(ctx, ETH_HLEN + l3 + RST_TCP_LEN) else {
        return Verdict::Drop(counters::DROP_NO_ROOM);
    };
    // SAFETY: `resize` checked the length.
    unsafe {
        write_l2_l3(p, seg, RST_TCP_LEN);
        let t = p.add(ETH_HLEN + l3);
        write_tcp_header(t, (dport, sport), rseq, rack, RST_TCP_LEN, rflags, 0);
        tcp_checksum(p, seg.v6, RST_TCP_LEN);
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
