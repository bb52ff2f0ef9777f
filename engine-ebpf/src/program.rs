//! The XDP program's decisions: what each segment to a listener gets (see the crate docs).
//! Generic over where a SYN-ACK's ISN comes from ([`Cookies`]), so the attached program and
//! the benchmark's kernel-helper baseline are the same code with another cookie.

use aya_ebpf::{bindings::{BPF_ANY, BPF_NOEXIST, BPF_RB_NO_WAKEUP, xdp_action}, programs::XdpContext};
use engine_common::{
    cookie::{self, Keys},
    counters,
    synack::{self, Ours, Syn},
    maps::{
        FAMILY_V4, FAMILY_V6, FlowKey4, FlowKey6, ListenerKey, PORT_FLOWS_LEFT, PORT_V4_ANY, PORT_V4_MORE, PORT_V4_ONE,
        PORT_V6_ANY, PORT_V6_SOME, PortListeners, RX_BACKLOG_CEILING, RX_BACKLOG_LIMIT, SYN_TRICKLE_NS, CLAIM, CookieMiss, SYN_RECORD_ECN, SYN_RECORD_RST, SYN_RECORD_SACK, SYN_RECORD_TS, SYN_RECORD_V6, SYN_RECORD_WSCALE, SynRecord, claim, claim_expired, flow_filter_bit4, RxMeta, RX_META_MAGIC, PROBE_ANSWERED, PROBE_ARMED,
        flow_filter_bit6,
    },
};

use crate::{
    clock::{Now, RECORD_RST, RECORD_SYN_ACK, coarse_now, precise_mono_ns, precise_shared_ns, take_record},
    maps::{
        COOKIE_MISSES4, COOKIE_MISSES6, FLOWS4, FLOWS6, LISTEN_PORTS, LISTENERS, PROBE_ANSWERS, RX_BACKLOG, SYN_RECORDS, XSKS, count, draining, maybe_flow,
        published_secrets,
    },
    options::{fixed_syn_options, walk_syn_options},
    packet::{ACK, FIN, RST, SYN, Seg, Verdict, at, ld32, parse, wire},
    ratelimit::{RST as RST_BUCKET, take_token},
    reply::reply,
    second_chance::{self, Received},
    settings,
};

/// Where a SYN-ACK's ISN comes from.
pub trait Cookies {
    /// Our ISN for `seg` (mss: the smaller of ours and the client's) and the offset of our
    /// TSval clock, or the verdict when the segment gets no SYN-ACK. `now`: the shared clock.
    fn mint(ctx: &XdpContext, seg: &Seg, secrets: &Keys, now: Now, mss: u16) -> Result<(u32, u32), Verdict>;
    /// Whether SYN-ACKs are recorded for retransmission (`engine_common::maps::SYN_RECORDS`):
    /// only synx's own, whose cookies userspace can mint again; the benchmark's kernel-cookie
    /// baselines keep no state, as the kernel's XDP synproxy does.
    const RECORD: bool;
}

/// synx's own cookies (`engine_common::cookie`), which the ACK path and userspace decode.
pub struct SynxCookies;

impl Cookies for SynxCookies {
    const RECORD: bool = true;

    #[inline(always)]
    fn mint(_ctx: &XdpContext, seg: &Seg, secrets: &Keys, now: Now, mss: u16) -> Result<(u32, u32), Verdict> {
        // No secret for this period: userspace has not published for a whole period.
        let m = cookie::mint(secrets, &seg.tuple(), seg.seq, now.ns, mss).ok_or(Verdict::Pass(counters::PASS_NOT_READY))?;
        Ok((m.isn, m.ts_offset))
    }
}

/// Run the program on the frame in `ctx`: its XDP action, every outcome counted.
#[inline(always)]
pub fn handle<C: Cookies>(ctx: &XdpContext) -> u32 {
    count(counters::RX_PACKETS);
    let hops = match second_chance::receive(ctx) {
        Received::NotOurs => 0,
        Received::Unwrapped(hops) => {
            count(counters::SECOND_CHANCE_RECEIVED);
            hops
        }
        Received::Bad => {
            count(counters::DROP_BAD_SECOND_CHANCE);
            return xdp_action::XDP_DROP;
        }
    };
    match decide::<C>(ctx, hops) {
        Verdict::Pass(c) => {
            count(c);
            xdp_action::XDP_PASS
        }
        Verdict::Drop(c) => {
            count(c);
            xdp_action::XDP_DROP
        }
        // The same device either way: XDP_TX, or a redirect to it (see `settings::tx_redirect`).
        Verdict::Done(xdp_action::XDP_TX) if settings::tx_redirect() => {
            // SAFETY: `ctx.ctx` is the kernel's xdp_md for this run of the program.
            let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
            // SAFETY: a helper call with no pointers; flags 0 is a plain redirect, which
            // returns XDP_REDIRECT.
            unsafe { aya_ebpf::helpers::bpf_redirect(ifindex, 0) as u32 }
        }
        Verdict::Done(action) => action,
    }
}

/// What becomes of the frame (see the crate docs). `hops`: 0 for a frame from the wire; for a
/// segment another host forwarded, the hosts it may still visit, this one included.
#[inline(always)]
fn decide<C: Cookies>(ctx: &XdpContext, hops: u8) -> Verdict {
    let seg = match parse(ctx) {
        Ok(s) => s,
        Err(v) => return if hops != 0 { Verdict::Drop(counters::DROP_BAD_SECOND_CHANCE) } else { v },
    };
    let port = LISTEN_PORTS.get(u32::from(seg.dport));
    let listening = port.is_some_and(|p| is_listener(&seg, p));
    if !listening && !port.is_some_and(|p| p.flags & PORT_FLOWS_LEFT != 0) {
        // Hosts forward only segments to the address they all serve.
        if hops != 0 {
            return Verdict::Drop(counters::DROP_BAD_SECOND_CHANCE);
        }
        return Verdict::Pass(counters::PASS_NOT_LISTENER);
    }
    // For a listener but not a segment synx serves: the kernel, which holds no connection for
    // it, would only reset the peer.
    if let Some(c) = seg.refuse {
        return Verdict::Drop(if hops != 0 { counters::DROP_BAD_SECOND_CHANCE } else { c });
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
    // A SYN of a tuple whose filter bit is clear has no connection: no FLOWS lookup (see
    // `engine_common::maps::FLOW_FILTER`). Everything else looks.
    let log2 = settings::flow_filter_log2();
    let unknown_syn = f & (SYN | ACK) == SYN
        && log2 != 0
        && !maybe_flow(if seg.v6 { flow_filter_bit6(&key6, log2) } else { flow_filter_bit4(&key4, log2) });
    // SAFETY: map lookups with keys on our stack.
    let slot = if unknown_syn { None } else { unsafe { if seg.v6 { FLOWS6.get(&key6) } else { FLOWS4.get(&key4) } } };
    // An expired claim (a cookie ACK that never reached userspace) holds nothing: the tuple is
    // unknown again, and a new cookie ACK may claim it anew.
    let mut claim_flags = u64::from(BPF_NOEXIST);
    if let Some(&slot) = slot {
        // A known flow's segments all go to its engine, whose TCP core alone says whether one
        // is the peer's (keepalive counts only those): a stamp here, before any check, would
        // let a blind sender who knows the tuple keep a dead peer's connection alive.
        // (A connection's slot needs no clock read; only a claim has an age.)
        if slot & CLAIM == 0 || !claim_expired(slot, coarse_now().mono_ns) {
            if slot & CLAIM == 0 && f == ACK && seg.payload_len == 0 && take_probe_answer(ctx, &seg, slot) {
                return Verdict::Drop(counters::PROBE_ANSWER_TAKEN);
            }
            count(counters::FLOW_SEGMENT);
            return to_userspace(ctx, slot);
        }
        count(counters::CLAIM_EXPIRED);
        claim_flags = u64::from(BPF_ANY);
    }
    if !listening {
        // A removed listener's port: only its connections' segments are ours.
        if hops != 0 {
            return Verdict::Drop(counters::DROP_BAD_SECOND_CHANCE);
        }
        return Verdict::Pass(counters::PASS_NOT_LISTENER);
    }
    let Some(secrets) = published_secrets() else { return Verdict::Pass(counters::PASS_NOT_READY) };
    if f & RST != 0 {
        // It may end a connection another host holds; else RFC 9293 3.10.7.1: an incoming RST
        // for no connection is discarded.
        if let Some(v) = second_chance::pass_on(ctx, &seg, hops) {
            return v;
        }
        if C::RECORD {
            record_rst(&seg);
        }
        return Verdict::Drop(counters::DROP_RST_NO_FLOW);
    }
    if f & SYN != 0 && f & ACK == 0 {
        // Every host answers SYNs itself: a forwarded one is nonsense.
        if hops != 0 {
            return Verdict::Drop(counters::DROP_BAD_SECOND_CHANCE);
        }
        // Draining: no new connections (RFC 9293 3.10.7.2 lets LISTEN ignore a SYN it will not
        // serve; the client retries, by then towards another host), or the kernel's answer.
        if draining() {
            if settings::drain_pass() {
                return Verdict::Pass(counters::PASS_SYN_DRAINING);
            }
            return Verdict::Drop(counters::DROP_SYN_DRAINING);
        }
        // The engine of this queue is behind: a SYN-ACK now would bring a final ACK it may have
        // to drop, leaving a client that believes it is connected to a server that never heard
        // of it (an idle client never finds out). Leave the SYN unanswered, as a server with a
        // full backlog does (RFC 9293 3.10.7.2 lets LISTEN ignore a SYN it cannot serve); the
        // client retransmits it after its RTO (RFC 6298 2.1: 1 s). But not every SYN for as long
        // as the engine stays behind: while the ring has room, one per SYN_TRICKLE_NS is answered
        // (a kernel listener busy with its established connections also admits new ones, slowly).
        // SAFETY: reading the queue index from the context.
        let queue = unsafe { (*ctx.ctx).rx_queue_index };
        let tick = coarse_now();
        if let Some(b) = RX_BACKLOG.get_ptr_mut(queue) {
            // SAFETY: a valid array slot; userspace writes only `consumed`, and a racing write of
            // `trickled_ns` from another CPU (generic mode) only lets one more SYN through.
            let b = unsafe { &mut *b };
            // Signed: a count that lost increments may trail what userspace took; that is no
            // backlog.
            let backlog = b.redirected.wrapping_sub(b.consumed) as i64;
            if backlog > RX_BACKLOG_LIMIT as i64 {
                if backlog > RX_BACKLOG_CEILING as i64 || (tick.mono_ns.wrapping_sub(b.trickled_ns) as i64) < SYN_TRICKLE_NS as i64 {
                    return Verdict::Drop(counters::DROP_SYN_BACKLOG);
                }
                b.trickled_ns = tick.mono_ns;
            }
        }
        return syn_ack::<C>(ctx, &seg, &secrets.keys, tick.shared(&secrets), tick.mono_ns);
    }
    // Checking a cookie, the precise clock (see `precise_shared_ns`).
    let now = precise_shared_ns(&secrets);
    if f & ACK != 0 && f & SYN == 0 {
        // RFC 9293 3.10.7.4 fifth (SYN-RECEIVED, held in the cookie as RFC 4987 3.6 has it): the
        // ACK must acknowledge it.
        let cookie = seg.ack.wrapping_sub(1);
        if cookie::check_ack(&secrets.keys, &seg.tuple(), seg.seq, seg.payload_len, (seg.doff as u32).saturating_sub(20), cookie, now).is_some() {
            count(counters::COOKIE_ACK_VALID);
            // Claim the tuple until userspace writes the real slot, so the flow's next
            // segments reach it even before it has processed this ACK.
            // No room (FLOWS full): the ACK goes up all the same; userspace makes room or
            // refuses the connection, and counts it.
            let c = claim(coarse_now().mono_ns);
            let _ = if seg.v6 { FLOWS6.insert(&key6, &c, claim_flags) } else { FLOWS4.insert(&key4, &c, claim_flags) };
            return to_userspace(ctx, c);
        }
        count(counters::COOKIE_ACK_INVALID);
        // A segment of a connection another host may hold (the router rehashed its flow).
        if let Some(v) = second_chance::pass_on(ctx, &seg, hops) {
            return v;
        }
    }
    if hops == 1 {
        count(counters::SECOND_CHANCE_LAST);
    }
    // No connection and no valid cookie: RFC 9293 3.10.7.1 reset, or silence.
    if !settings::rst_bad_cookie() {
        return Verdict::Done(xdp_action::XDP_DROP);
    }
    if f & ACK != 0
        && (seg.payload_len != 0 || f & FIN != 0)
        && let Some(v) = hold_miss(&seg, &key4, &key6)
    {
        return v;
    }
    reset(ctx, &seg)
}

/// Whether to drop, rather than reset, a segment with data (or FIN) for no flow whose cookie
/// did not validate (see `engine_common::maps::COOKIE_MISSES4`). It may be a later segment of
/// a handshake whose ACK and first segments were lost, in a shape the cookie's search does not
/// cover (smaller or unequal segments, a larger initial window): the tuple is then in
/// SYN-RECEIVED, held in the cookie, where RFC 9293 3.10.7.4 takes an in-window segment rather
/// than reset; we cannot keep it without the ISN, so it is lost to the client, which resends
/// its first segment after its RTO (RFC 6298 5.4), and that one validates. The first sight of a
/// tuple and ACK number is dropped, and so is every repeat within the hold; a repeat after it
/// is reset (`None`): a client of a connection no host holds keeps resending what we never
/// acknowledge, with the same ACK number. A pure ACK is never a handshake's later segment (the
/// client's only one is the handshake ACK, whose seq names the ISN): reset at once.
#[inline(always)]
fn hold_miss(seg: &Seg, key4: &FlowKey4, key6: &FlowKey6) -> Option<Verdict> {
    let hold = settings::cookie_miss_hold_ns();
    if hold == 0 {
        return None;
    }
    let now = coarse_now().mono_ns;
    let seen = if seg.v6 { COOKIE_MISSES6.get_ptr_mut(key6) } else { COOKIE_MISSES4.get_ptr_mut(key4) };
    match seen {
        // SAFETY: a valid value of the map; a racing writer on another CPU (the same tuple on
        // two queues) can only restart the hold.
        Some(m) => unsafe {
            if (*m).ack == seg.ack {
                if now.wrapping_sub((*m).first_ns) >= hold {
                    return None;
                }
            } else {
                *m = CookieMiss { first_ns: now, ack: seg.ack, _pad: 0 };
            }
        },
        None => {
            let m = CookieMiss { first_ns: now, ack: seg.ack, _pad: 0 };
            // The LRU evicts the least recently used tuple when full: that one is new again.
            let _ = if seg.v6 {
                COOKIE_MISSES6.insert(key6, &m, u64::from(BPF_ANY))
            } else {
                COOKIE_MISSES4.insert(key4, &m, u64::from(BPF_ANY))
            };
        }
    }
    Some(Verdict::Drop(counters::COOKIE_MISS_HELD))
}

/// Whether a listener serves the segment's destination: the port's entry (`port`) first, the
/// exact-address hash map only for ports with several exact addresses or IPv6.
#[inline(always)]
fn is_listener(seg: &Seg, port: &PortListeners) -> bool {
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

/// To this RX queue's AF_XDP socket, with `flow`, the tuple's FLOWS value, in front of the
/// frame ([`RxMeta`]: the engine's hint of the connection's slot).
#[inline(always)]
fn to_userspace(ctx: &XdpContext, flow: u32) -> Verdict {
    write_meta(ctx, flow);
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

/// Whether `seg`, a pure ACK of the connection in `slot`, is exactly the answer the engine
/// expects to the keepalive probe it sent (RFC 1122 4.2.3.6; see
/// `engine_common::maps::PROBE_ANSWERS`): then noted there, its TSval and when it came, for
/// the engine to hand to the TCP core at the probe's next deadline. Exact: SEG.SEQ and SEG.ACK
/// equal to the connection's RCV.NXT and SND.NXT (64 bits a blind sender who knows the tuple
/// cannot guess, where RFC 5961 asks a window), the window as the peer last sent it, and the
/// options the connection's segments carry (Linux's NOP, NOP, timestamps, or none). Anything
/// else (data, another flag, a window update, SACK blocks) goes to the engine as before.
#[inline(always)]
fn take_probe_answer(ctx: &XdpContext, seg: &Seg, slot: u32) -> bool {
    let Some(e) = PROBE_ANSWERS.get_ptr_mut(slot) else { return false };
    // The entry is shared with the engine, which writes it while we run: every field is read
    // and written once, with volatile accesses in the order `ProbeAnswer` gives (its `state`
    // written last; x86-64 keeps stores in order).
    // SAFETY: a valid array slot of the program's map, live for its run.
    let (state, seq, ack, window, ts) = unsafe {
        (
            core::ptr::addr_of!((*e).state).read_volatile(),
            core::ptr::addr_of!((*e).seq).read_volatile(),
            core::ptr::addr_of!((*e).ack).read_volatile(),
            core::ptr::addr_of!((*e).window).read_volatile(),
            core::ptr::addr_of!((*e).ts).read_volatile(),
        )
    };
    if state != PROBE_ARMED || seq != seg.seq || ack != seg.ack {
        return false;
    }
    let tsval = match (ts, seg.doff) {
        (0, 20) => {
            let Some(tcp) = at(ctx, seg.l4, 20) else { return false };
            // SAFETY: 20 bytes checked; the window is bytes 14-15 of word 3.
            let w3 = unsafe { ld32(tcp, 12) };
            if u16::from_be((w3 >> 16) as u16) != window {
                return false;
            }
            0
        }
        (1, 32) => {
            let Some(tcp) = at(ctx, seg.l4, 32) else { return false };
            // SAFETY: 32 bytes checked.
            let (w3, w5, tsval) = unsafe { (ld32(tcp, 12), ld32(tcp, 20), ld32(tcp, 24)) };
            if u16::from_be((w3 >> 16) as u16) != window || w5 != wire([1, 1, 8, 10]) {
                return false;
            }
            u32::from_be(tsval)
        }
        _ => return false,
    };
    // SAFETY: as above.
    unsafe {
        core::ptr::addr_of_mut!((*e).tsval).write_volatile(tsval);
        core::ptr::addr_of_mut!((*e).at_ns).write_volatile(coarse_now().mono_ns);
        core::ptr::addr_of_mut!((*e).state).write_volatile(PROBE_ANSWERED);
    }
    true
}

/// Put [`RxMeta`] in front of the frame. A device without headroom for it leaves the frame as
/// it came: the engine then looks the tuple up, as it does for a hint that is wrong.
#[inline(always)]
fn write_meta(ctx: &XdpContext, flow: u32) {
    const LEN: usize = core::mem::size_of::<RxMeta>();
    // SAFETY: a helper call on this run's context; a negative delta grows the frame at its head.
    if unsafe { aya_ebpf::helpers::bpf_xdp_adjust_head(ctx.ctx, -(LEN as i32)) } != 0 {
        return;
    }
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + LEN > end {
        return;
    }
    // SAFETY: `data..data + LEN` lies within the frame, checked above as the verifier requires.
    unsafe { core::ptr::write_unaligned(data as *mut RxMeta, RxMeta { magic: RX_META_MAGIC, flow }) };
}

/// RFC 9293 3.10.7.2 with the SYN-RECEIVED state in a cookie: our SYN-ACK, as
/// `engine_common::synack` decides it for every sender.
#[inline(always)]
fn syn_ack<C: Cookies>(ctx: &XdpContext, seg: &Seg, secrets: &Keys, now: Now, mono_ns: u64) -> Verdict {
    let syn = match fixed_syn_options(ctx, seg) {
        Some(o) => o,
        None => {
            count(counters::SYN_GENERIC_OPTIONS);
            match walk_syn_options(ctx, seg) {
                Some(o) => o,
                None => return Verdict::Drop(counters::DROP_BAD_OPTIONS),
            }
        }
    };
    let ours = Ours { mss: settings::mss(), wscale: settings::wscale(), ecn: settings::ecn() }.for_family(seg.v6);
    let (isn, ts_offset) = match C::mint(ctx, seg, secrets, now, syn.cookie_mss(ours.mss)) {
        Ok(m) => m,
        Err(v) => return v,
    };
    let answer = synack::build(&syn, isn, ts_offset, now.ms, &ours);
    let sent = if answer.ts.is_some() {
        reply(ctx, seg, answer.seq, answer.ack, answer.flags(), answer.window, &answer.option_words())
    } else {
        // Nothing but the MSS agreed (see `synack::build`): no padding words after it, so an
        // MSS-only SYN is answered in its own frame, unresized.
        reply(ctx, seg, answer.seq, answer.ack, answer.flags(), answer.window, &[answer.mss_word()])
    };
    if !sent {
        return Verdict::Drop(counters::DROP_NO_ROOM);
    }
    count(counters::SYN_COOKIE_SENT);
    if C::RECORD {
        record(seg, &syn, now.ns, mono_ns);
    }
    Verdict::Done(xdp_action::XDP_TX)
}

/// Record the SYN-ACK just sent for userspace to retransmit until the handshake completes
/// (`engine_common::maps::SYN_RECORDS`), within this CPU's budget.
#[inline(always)]
fn record(seg: &Seg, syn: &Syn, mint_ns: u64, mono_ns: u64) {
    let budget = settings::syn_record_per_window();
    if budget == 0 {
        return;
    }
    if !take_record(RECORD_SYN_ACK, budget) {
        count(counters::SYN_UNRECORDED);
        return;
    }
    let mut flags = 0;
    if seg.v6 {
        flags |= SYN_RECORD_V6;
    }
    if syn.sack {
        flags |= SYN_RECORD_SACK;
    }
    if syn.ecn {
        flags |= SYN_RECORD_ECN;
    }
    let tsval = match syn.ts {
        Some(t) => {
            flags |= SYN_RECORD_TS;
            t
        }
        None => 0,
    };
    let wscale = match syn.wscale {
        Some(w) => {
            flags |= SYN_RECORD_WSCALE;
            w
        }
        None => 0,
    };
    let r = SynRecord {
        mint_ns,
        mono_ns,
        remote: seg.src,
        local: seg.dst,
        ports: seg.ports,
        macs: seg.macs,
        isn: syn.isn,
        tsval,
        mss: syn.mss,
        wscale,
        flags,
        _pad: 0,
    };
    // No wakeup: userspace reads the ring on its own schedule.
    match SYN_RECORDS.output(&r, u64::from(BPF_RB_NO_WAKEUP)) {
        Ok(()) => count(counters::SYN_RECORDED),
        Err(_) => count(counters::SYN_UNRECORDED),
    }
}

/// An RST for no flow may answer a SYN-ACK we sent (a half-open scan's client stack, or a
/// client that gave up): RFC 9293 3.10.7.4 first check, in SYN-RECEIVED (held in the cookie),
/// an RST in the window ends the handshake, so its SYN-ACK must not be sent again. Passed to
/// the retransmitter in the same ring, after the SYN-ACK's record, within a budget of its own
/// (a flood of RSTs takes nothing from the SYNs').
#[inline(always)]
fn record_rst(seg: &Seg) {
    let budget = settings::syn_record_per_window();
    if budget == 0 {
        return;
    }
    // Refresh the coarse clock, whose slot counts the window.
    let _ = coarse_now();
    if !take_record(RECORD_RST, budget) {
        return;
    }
    let r = SynRecord {
        remote: seg.src,
        local: seg.dst,
        ports: seg.ports,
        macs: seg.macs,
        isn: seg.seq,
        flags: SYN_RECORD_RST | if seg.v6 { SYN_RECORD_V6 } else { 0 },
        ..SynRecord::default()
    };
    if SYN_RECORDS.output(&r, u64::from(BPF_RB_NO_WAKEUP)).is_ok() {
        count(counters::RST_RECORDED);
    }
}

/// RFC 9293 3.10.7.1 reset for a segment with no connection, rate-limited per CPU.
#[inline(always)]
fn reset(ctx: &XdpContext, seg: &Seg) -> Verdict {
    if !take_token(RST_BUCKET, precise_mono_ns(), settings::rst_per_sec()) {
        return Verdict::Drop(counters::RST_RATE_LIMITED);
    }
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
