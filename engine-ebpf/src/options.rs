//! What a client's SYN offers (`engine_common::synack::Syn`), read from its options (RFC 9293
//! 3.1): the layouts almost every SYN carries, recognised by comparing whole words, and a walk
//! option by option for the rest.

use aya_ebpf::{helpers::bpf_loop, programs::XdpContext};
use engine_common::synack::{Syn, default_mss};

use crate::packet::{CWR, ECE, ETH_HLEN, IPV6_HLEN, Seg, TCP_HLEN, at, ld32, wire};

/// The SYN's offer before its options: its ISN, ECN setup (RFC 3168 6.1.1: ECE and CWR), and
/// the MSS to assume without an MSS option.
#[inline(always)]
fn offer(seg: &Seg) -> Syn {
    Syn {
        isn: seg.seq,
        mss: default_mss(seg.v6),
        wscale: None,
        sack: false,
        ts: None,
        ecn: seg.flags & (ECE | CWR) == (ECE | CWR),
    }
}

/// The option layouts almost every SYN carries, recognised by comparing whole words: none;
/// MSS alone; and Linux's MSS, SACK-permitted, timestamps, NOP, window scale (tcp_options_write;
/// NOP, NOP in place of SACK-permitted when SACK is off). `None` for anything else, which
/// `walk_syn_options` then walks option by option (RFC 9293 3.1).
#[inline(always)]
pub fn fixed_syn_options(ctx: &XdpContext, seg: &Seg) -> Option<Syn> {
    let mut opts = offer(seg);
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
            opts.wscale = Some((w4 >> 24) as u8);
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
            // SAFETY: 3 bytes checked. Clamped as the SYN-ACK will use it (RFC 7323 2.3: a
            // shift above 14 is used as 14), which keeps 0xff free to mean "not offered".
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
pub fn walk_syn_options(ctx: &XdpContext, seg: &Seg) -> Option<Syn> {
    let mut w = OptWalk {
        data: ctx.data() as *const u8,
        data_end: ctx.data_end() as *const u8,
        off: (seg.l4 + TCP_HLEN) as u64,
        end: (seg.l4 + seg.doff) as u64,
        ts: 0,
        mss: default_mss(seg.v6),
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
    Some(Syn {
        mss: w.mss,
        wscale: if w.wscale == 0xff { None } else { Some(w.wscale) },
        sack: w.seen & SEEN_SACK != 0,
        ts: if w.seen & SEEN_TS != 0 { Some(w.ts) } else { None },
        ..offer(seg)
    })
}

