//! The benchmark's and test rig's object (never loaded by `synx run`): the micro-benchmark's
//! programs, the kernel-helper cookie baseline, the SYN-flood generator, and the XDP_PASS
//! program for the peer of a veth.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_tcp_raw_gen_syncookie_ipv4, bpf_xdp_adjust_head},
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use engine_common::{
    cookie::{self, Keys},
    counters,
    maps::{BENCH_FRAME_LEN, BENCH_REFLECT_PORT, BenchFrame, BenchVary, FLOOD_FRAME_LEN, FloodState, RxMeta},
};
use engine_ebpf::{
    clock::Now,
    maps::XSKS,
    packet::{ETH_HLEN, IPV4_HLEN, Seg, Verdict, at, ld32, st32},
    program::{Cookies, SynxCookies, handle},
    reply::fold,
};

#[map(name = "BENCH_FRAME")]
static BENCH_FRAME: Array<BenchFrame> = Array::with_max_entries(1, 0);
#[map(name = "BENCH_VARY")]
static BENCH_VARY: Array<BenchVary> = Array::with_max_entries(1, 0);
#[map(name = "SINK_NET")]
static SINK_NET: Array<u32> = Array::with_max_entries(2, 0);
#[map(name = "SINK_DROPPED")]
static SINK_DROPPED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "FLOOD")]
static FLOOD: Array<FloodState> = Array::with_max_entries(1, 0);

/// The benchmark's baseline: the same SYN-ACK, with the kernel helper's cookie. The helper
/// gives no TSval offset, so the baseline keys one off the 4-tuple (RFC 7323 7.1), the
/// cheapest way to send the same SYN-ACK. IPv4 only (the helper's); IPv6 gets synx's cookie.
struct KernelCookies;

impl Cookies for KernelCookies {
    const RECORD: bool = false;

    #[inline(always)]
    fn mint(ctx: &XdpContext, seg: &Seg, secrets: &Keys, now: Now, mss: u16) -> Result<(u32, u32), Verdict> {
        if seg.v6 {
            return SynxCookies::mint(ctx, seg, secrets, now, mss);
        }
        // The helper reads the whole TCP header (the MSS option) and wants th_len == doff * 4,
        // which the verifier wants constant: the baseline takes the 40-byte header of Linux's
        // SYN behind a 20-byte IPv4 header, as the benchmark sends it.
        if seg.doff != 40 || seg.l4 != ETH_HLEN + IPV4_HLEN {
            return Err(Verdict::Drop(counters::DROP_BAD_OPTIONS));
        }
        let r = helper_cookie::<40>(ctx)?;
        Ok((r, (cookie::tuple_hash(&secrets.keys[0], &seg.tuple()) >> 32) as u32))
    }
}

/// The kernel's own XDP answer to a SYN flood, shaped as the kernel selftest
/// `xdp_synproxy_kern.c` does it: a SYN is answered in XDP with the kernel's cookie
/// (bpf_tcp_raw_gen_syncookie_ipv4, the same secret netfilter's synproxy checks) and a TSval in
/// Linux's cookie layout (window scale, SACK and ECN in its low bits, no offset); every other
/// segment goes up to the kernel, where nftables synproxy validates the cookie ACK and opens the
/// connection to the listener. The SYN-ACK is written by synx's code; the selftest's conntrack
/// lookup and checksum verification per SYN are left out: a faster peer, not a slower one.
struct HelperCookies;

impl Cookies for HelperCookies {
    const RECORD: bool = false;

    #[inline(always)]
    fn mint(ctx: &XdpContext, seg: &Seg, _secrets: &Keys, _now: Now, _mss: u16) -> Result<(u32, u32), Verdict> {
        if seg.v6 || seg.l4 != ETH_HLEN + IPV4_HLEN {
            return Err(Verdict::Pass(counters::PASS_NOT_TCP));
        }
        // The helper reads the whole TCP header and wants its length as a constant: the two
        // SYNs the benchmark sends, the flood's (MSS only) and Linux's.
        let r = match seg.doff {
            24 => helper_cookie::<24>(ctx),
            40 => helper_cookie::<40>(ctx),
            _ => return Err(Verdict::Drop(counters::DROP_BAD_OPTIONS)),
        }?;
        Ok((r, 0))
    }
}

/// The kernel helper's cookie for the IPv4 SYN in `ctx`, whose TCP header is `TCP_HLEN` bytes.
#[inline(always)]
fn helper_cookie<const TCP_HLEN: usize>(ctx: &XdpContext) -> Result<u32, Verdict> {
    let Some(p) = at(ctx, 0, ETH_HLEN + IPV4_HLEN + TCP_HLEN) else {
        return Err(Verdict::Drop(counters::DROP_TRUNCATED));
    };
    // SAFETY: both ranges lie in the bytes checked just above.
    let r = unsafe {
        let (iph, th) = (p.add(ETH_HLEN), p.add(ETH_HLEN + IPV4_HLEN));
        bpf_tcp_raw_gen_syncookie_ipv4(iph.cast(), th.cast(), TCP_HLEN as u32)
    };
    if r < 0 {
        return Err(Verdict::Drop(counters::DROP_BAD_HEADER));
    }
    Ok(r as u32)
}

/// See [`HelperCookies`]: attached live by the benchmark in front of the kernel's listener.
#[xdp]
pub fn synx_bench_xdp_synproxy(ctx: XdpContext) -> u32 {
    const TCP_FLAGS: usize = ETH_HLEN + IPV4_HLEN + 13;
    let Some(p) = at(&ctx, 0, TCP_FLAGS + 1) else { return xdp_action::XDP_PASS };
    // SAFETY: every offset lies within the bytes checked above.
    let (ethertype, ver_ihl, proto, flags) = unsafe {
        ((p.add(12) as *const u16).read_unaligned(), *p.add(ETH_HLEN), *p.add(ETH_HLEN + 9), *p.add(TCP_FLAGS))
    };
    // IPv4 without options, TCP, SYN without ACK: the rest is the kernel's.
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    if ethertype != 0x0800u16.to_be() || ver_ihl != 0x45 || proto != 6 || flags & (SYN | ACK) != SYN {
        return xdp_action::XDP_PASS;
    }
    handle::<HelperCookies>(&ctx)
}

/// Micro-benchmark: put BENCH_FRAME back, then run exactly what the attached `synx_xdp` runs.
/// BPF_PROG_TEST_RUN hands every repeat the frame the previous one left, and the SYN path
/// rewrites it into a SYN-ACK; with the frame restored, one call can time thousands of SYNs
/// (less `synx_bench_restore`, the restore alone).
#[xdp]
pub fn synx_bench_syn(ctx: XdpContext) -> u32 {
    restore_then_handle::<SynxCookies>(&ctx)
}

/// `synx_bench_syn` with the kernel helper's cookies.
#[xdp]
pub fn synx_bench_syn_kernel(ctx: XdpContext) -> u32 {
    restore_then_handle::<KernelCookies>(&ctx)
}

/// The kernel-helper baseline on the frame it is given (one SYN per call).
#[xdp]
pub fn synx_bench_kernel(ctx: XdpContext) -> u32 {
    handle::<KernelCookies>(&ctx)
}

/// Micro-benchmark: the restore of `synx_bench_syn` alone (with its source variation).
#[xdp]
pub fn synx_bench_restore(ctx: XdpContext) -> u32 {
    if !restore_bench_frame(&ctx) {
        return xdp_action::XDP_ABORTED;
    }
    xdp_action::XDP_TX
}

#[inline(always)]
fn restore_then_handle<C: Cookies>(ctx: &XdpContext) -> u32 {
    if !restore_bench_frame(ctx) {
        return xdp_action::XDP_ABORTED;
    }
    handle::<C>(ctx)
}

#[inline(always)]
fn restore_bench_frame(ctx: &XdpContext) -> bool {
    let Some(saved) = BENCH_FRAME.get(0) else { return false };
    // A repeat that went to AF_XDP left the frame with the slot hint in front of it (`RxMeta`,
    // put there by the program before its redirect): take it off again.
    const META: usize = core::mem::size_of::<RxMeta>();
    if ctx.data_end() - ctx.data() == BENCH_FRAME_LEN + META {
        // SAFETY: a helper call on this run's context; a positive delta shrinks the head.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, META as i32) } != 0 {
            return false;
        }
    }
    if ctx.data_end() - ctx.data() != BENCH_FRAME_LEN {
        return false;
    }
    let Some(p) = at(ctx, 0, BENCH_FRAME_LEN) else { return false };
    // SAFETY: both hold BENCH_FRAME_LEN bytes (checked above; the map value is 80).
    unsafe { copy_frame::<BENCH_FRAME_LEN>(p, saved.words.as_ptr() as *const u8) };
    let Some(vary) = BENCH_VARY.get_ptr_mut(0) else { return false };
    // SAFETY: one test run at a time per map; the entry is plain data.
    let v = unsafe { &mut *vary };
    if v.count != 0 {
        let i = v.next % v.count;
        v.next = v.next.wrapping_add(1);
        const IP_CSUM: usize = ETH_HLEN + 10;
        const IP_SRC: usize = ETH_HLEN + 12;
        const TCP_CSUM: usize = ETH_HLEN + IPV4_HLEN + 16;
        // SAFETY: every offset lies within the BENCH_FRAME_LEN bytes checked above.
        unsafe {
            let old = ld32(p, IP_SRC);
            let new = u32::from_be(old).wrapping_add(i).to_be();
            // RFC 1624 3 over the source address (in the TCP pseudo-header too).
            let delta = u64::from(!old) + u64::from(new);
            let ip = fold(u64::from(!(p.add(IP_CSUM) as *const u16).read_unaligned()) + delta);
            let tcp = fold(u64::from(!(p.add(TCP_CSUM) as *const u16).read_unaligned()) + delta);
            st32(p, IP_SRC, new);
            (p.add(IP_CSUM) as *mut u16).write_unaligned(ip);
            (p.add(TCP_CSUM) as *mut u16).write_unaligned(tcp);
        }
    }
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

/// Benchmark only: a SYN-flood generator for BPF_PROG_TEST_RUN's live-frame
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

/// The benchmark's wire end for a SYN flood: on the client's veth, every IPv4 frame to the
/// flood's spoofed sources (SINK_NET: network and mask, as on the wire) is counted (per CPU)
/// and dropped, as a real server's SYN-ACKs would leave for the wire; everything else passes
/// (so the program also serves as the peer's XDP program that native XDP_TX on veth needs).
/// Counting in XDP keeps the count's cost off the CPU the flood generator shares.
#[xdp]
pub fn synx_bench_sink(ctx: XdpContext) -> u32 {
    const DADDR: usize = ETH_HLEN + 16;
    let Some(p) = at(&ctx, 0, DADDR + 4) else { return xdp_action::XDP_PASS };
    // SAFETY: both lie within the bytes checked above.
    let (ethertype, daddr) = unsafe { ((p.add(12) as *const u16).read_unaligned(), ld32(p, DADDR)) };
    if ethertype != 0x0800u16.to_be() {
        return xdp_action::XDP_PASS;
    }
    let (Some(net), Some(mask)) = (SINK_NET.get(0), SINK_NET.get(1)) else { return xdp_action::XDP_PASS };
    if *mask == 0 || daddr & *mask != *net {
        return xdp_action::XDP_PASS;
    }
    if let Some(c) = SINK_DROPPED.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        unsafe { *c += 1 };
    }
    xdp_action::XDP_DROP
}

/// The benchmark's reflector on a server veth: IPv4 UDP to [`BENCH_REFLECT_PORT`] is
/// redirected to the RX queue's AF_XDP socket (XSKS), where `synx-bench xsk-echo` sends each
/// datagram back; everything else passes. The same receive and transmit path as synx's (this
/// redirect, the copy into the UMEM, an engine thread's wakeup, copy-mode transmit) with no
/// TCP and no app: the floor under synx's round trips (`path_floor`).
#[xdp]
pub fn synx_bench_reflect(ctx: XdpContext) -> u32 {
    const UDP: usize = ETH_HLEN + IPV4_HLEN;
    let Some(p) = at(&ctx, 0, UDP + 8) else { return xdp_action::XDP_PASS };
    // SAFETY: every byte read lies within the bytes checked above.
    let (ethertype, vihl, proto, dport) = unsafe {
        (
            (p.add(12) as *const u16).read_unaligned(),
            *p.add(ETH_HLEN),
            *p.add(ETH_HLEN + 9),
            (p.add(UDP + 2) as *const u16).read_unaligned(),
        )
    };
    // Options-free IPv4 only: the reflector swaps fixed offsets.
    if ethertype != 0x0800u16.to_be() || vihl != 0x45 || proto != 17 || dport != BENCH_REFLECT_PORT.to_be() {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: reading the queue index from the context.
    let queue = unsafe { (*ctx.ctx).rx_queue_index };
    XSKS.redirect(queue, u64::from(xdp_action::XDP_PASS)).unwrap_or(xdp_action::XDP_PASS)
}

/// Native XDP_TX and redirects on a veth deliver only when the peer veth runs an XDP program
/// too; the test bed and the benchmark attach this one to the client's end.
#[xdp]
pub fn synx_peer_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}


#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
