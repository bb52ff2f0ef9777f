//! Stateless SYN cookies, shared byte for byte by the XDP program and userspace.
//!
//! One keyed hash per SYN gives both the cookie's MAC and the offset of our TSval clock:
//!
//! ```text
//! H = SipHash-1-3(secret of period t, client addr | server addr | client port | server port | client ISN | t*4 + mss idx)
//!
//! ISN (our SYN-ACK's SEQ):  [ t mod 4 | mss idx | MAC28 = H bits 0..28 ]
//!                              31  30    29  28   27                  0
//! TSval clock offset:        H bits 32..64
//! ```
//! The hashed message is the bytes as the wire carries them (addresses, ports and the client's
//! ISN in network byte order; IPv4: 4-byte addresses, 20 bytes in all; IPv6: 44) followed by
//! `t*4 + mss idx` as a little-endian u32, so any implementation with the secret can mint and
//! check the same cookies. The message length tells the families apart.
//!
//! `t` counts periods of [`PERIOD_SHIFT`] (2^36 ns, about 68.7 s) of the clock the hosts share:
//! Unix time (the XDP program reads it as CLOCK_TAI less the kernel's TAI offset, which
//! userspace publishes with the secrets, `crate::secrets`). Each period has its own secret
//! ([`Keys`]): random per host, or derived from a key the hosts share, so that hosts behind
//! ECMP validate each other's cookies and rotate at the same moment without talking. The
//! cookie names its period (mod 4), so checking takes one hash: the secret of that period.
//!
//! An ACK validates when `ack - 1` carries the MAC of a period at most [`MAX_AGE`] before now,
//! or of a period that begins within [`SKEW_TOLERANCE_NS`] after now (minted by a host whose
//! clock is ahead of ours by at most that). A forged ACK has a 2^-28 chance per guess.
//!
//! The TSval offset (RFC 7323 7.1: a per-connection random offset, so TSval reveals no uptime)
//! is the hash's upper half: disjoint from the MAC's bits of the same pseudorandom output, so
//! publishing it in TSval tells nothing about the MAC. Userspace recomputes the same hash when
//! the final ACK validates, and so gets the same offset back without storing anything. The
//! TSval clock is the shared clock's milliseconds plus that offset.
//!
//! With timestamps (RFC 7323), what the MAC cannot hold rides in the low 6 bits of our TSval,
//! as Linux does: window-scale shift (4 bits, 15 = none), SACK-permitted, ECN. The client echoes
//! the TSval in TSecr, and the ACK brings it back. Without timestamps, no window scaling and no
//! SACK are offered (there is nowhere to remember them), again as Linux does.

use crate::{
    handshake::{FACT_ECN, FACT_SACK, FACT_TS, FACT_WSCALE, HandshakeFacts},
    maps::ports_word,
};

/// The length of one cookie period, as a shift of nanoseconds of the shared clock (2^36 ns,
/// 68.719476736 s): period = floor(Unix time / 2^36 ns).
pub const PERIOD_SHIFT: u32 = 36;
/// A cookie validates for this many whole periods after the one that minted it.
pub const MAX_AGE: u32 = 1;
/// How far ahead of ours another host's clock may be for its cookies to validate here: a
/// cookie of the next period is accepted this long before the period begins. NTP keeps hosts
/// within milliseconds; a host whose clock is further off says so (`synx stats`).
pub const SKEW_TOLERANCE_NS: u64 = 2_000_000_000;
/// Secrets published at a time: the next period's, the current one's and the previous one's.
pub const KEYS: usize = 3;
/// MSS values a cookie can carry (the client's MSS is rounded down to one of these).
pub const MSS_TABLE: [u16; 4] = [536, 1220, 1440, 1460];
/// Low TSval bits that carry options.
pub const TS_OPT_BITS: u32 = 6;
const TS_OPT_MASK: u32 = (1 << TS_OPT_BITS) - 1;
const WSCALE_NONE: u32 = 0xf;

/// A 128-bit SipHash key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Key {
    pub k0: u64,
    pub k1: u64,
}

/// The secrets of [`KEYS`] consecutive periods: `keys[j]` belongs to period `newest - j`.
/// Userspace publishes them a period ahead (`newest` = the current period + 1), so the XDP
/// program has the secret of a new period from its first nanosecond.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Keys {
    pub newest: u32,
    pub keys: [Key; KEYS],
}

impl Keys {
    /// The secret of `period`, if published.
    #[inline(always)]
    pub fn of(&self, period: u32) -> Option<&Key> {
        match self.newest.wrapping_sub(period) {
            0 => Some(&self.keys[0]),
            1 => Some(&self.keys[1]),
            2 => Some(&self.keys[2]),
            _ => None,
        }
    }
}

/// The connection 4-tuple from the client's point of view (the client is the SYN's source), in
/// the form the hash reads it: the wire's bytes loaded as little-endian words, so the XDP
/// program fills it with a few plain loads from the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuple {
    /// Client address then server address, as the IP header carries them (adjacent there):
    /// IPv4 fills word 0 (client in its low half), IPv6 all four words.
    pub addrs: [u64; 4],
    /// Client port then server port in network byte order, as a little-endian u32: the first 4
    /// bytes of the client's TCP header.
    pub ports: u32,
    pub v6: bool,
}

impl Tuple {
    pub fn v4(client: [u8; 4], server: [u8; 4], client_port: u16, server_port: u16) -> Self {
        let [c0, c1, c2, c3] = client;
        let [s0, s1, s2, s3] = server;
        Self {
            addrs: [u64::from_le_bytes([c0, c1, c2, c3, s0, s1, s2, s3]), 0, 0, 0],
            ports: ports_word(client_port, server_port),
            v6: false,
        }
    }

    pub fn v6(client: [u8; 16], server: [u8; 16], client_port: u16, server_port: u16) -> Self {
        let w = |b: &[u8; 16], i: usize| {
            u64::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3], b[i + 4], b[i + 5], b[i + 6], b[i + 7]])
        };
        Self {
            addrs: [w(&client, 0), w(&client, 8), w(&server, 0), w(&server, 8)],
            ports: ports_word(client_port, server_port),
            v6: true,
        }
    }
}

#[inline(always)]
fn round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13);
    v[1] ^= v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16);
    v[3] ^= v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21);
    v[3] ^= v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17);
    v[1] ^= v[2];
    v[2] = v[2].rotate_left(32);
}

/// SipHash-1-3 of the `8 * N + 4`-byte message `m` (little-endian words) followed by `tail`
/// (little-endian). `N` is a constant, so the loop unrolls and the verifier sees straight code.
#[inline(always)]
fn siphash13<const N: usize>(key: &Key, m: &[u64; N], tail: u32) -> u64 {
    let mut v = [
        key.k0 ^ 0x736f6d6570736575,
        key.k1 ^ 0x646f72616e646f6d,
        key.k0 ^ 0x6c7967656e657261,
        key.k1 ^ 0x7465646279746573,
    ];
    let mut absorb = |w: u64| {
        v[3] ^= w;
        round(&mut v);
        v[0] ^= w;
    };
    for &w in m {
        absorb(w);
    }
    // Final block: the last 4 message bytes, and the message length in the top byte.
    absorb(((8 * N as u64 + 4) << 56) | u64::from(tail));
    v[2] ^= 0xff;
    round(&mut v);
    round(&mut v);
    round(&mut v);
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// The cookie's keyed hash of a connection attempt (see the module doc for the message).
#[inline(always)]
fn hash(key: &Key, t: &Tuple, client_isn: u32, period: u32, mss_idx: u32) -> u64 {
    let ports_isn = u64::from(t.ports) | (u64::from(u32::from_le_bytes(client_isn.to_be_bytes())) << 32);
    let extra = (period << 2) | mss_idx;
    if t.v6 {
        siphash13(key, &[t.addrs[0], t.addrs[1], t.addrs[2], t.addrs[3], ports_isn], extra)
    } else {
        siphash13(key, &[t.addrs[0], ports_isn], extra)
    }
}

/// A keyed hash of the 4-tuple alone (SipHash-1-3 of the wire bytes: 12 for IPv4, 36 for
/// IPv6). Not part of the cookie: the micro-benchmark's kernel-helper baseline takes its TSval
/// offset from it, since bpf_tcp_raw_gen_syncookie_ipv4 gives a cookie but no offset (Linux
/// computes one with another keyed hash, secure_tcp_ts_off), and the cheapest keyed offset keeps
/// that baseline's SYN-ACK the same as ours.
#[inline(always)]
pub fn tuple_hash(key: &Key, t: &Tuple) -> u64 {
    if t.v6 {
        siphash13(key, &[t.addrs[0], t.addrs[1], t.addrs[2], t.addrs[3]], t.ports)
    } else {
        siphash13(key, &[t.addrs[0]], t.ports)
    }
}

/// The cookie period of an instant of the shared clock (Unix time in ns).
#[inline(always)]
pub fn period(now_ns: u64) -> u32 {
    (now_ns >> PERIOD_SHIFT) as u32
}

/// Index into [`MSS_TABLE`] of the largest value not above the client's MSS.
#[inline(always)]
pub fn mss_index(client_mss: u16) -> u32 {
    if client_mss >= MSS_TABLE[3] {
        3
    } else if client_mss >= MSS_TABLE[2] {
        2
    } else if client_mss >= MSS_TABLE[1] {
        1
    } else {
        0
    }
}

const MAC_MASK: u32 = 0x0fff_ffff;

/// What a SYN's answer takes from the cookie: our ISN, and our TSval clock's offset for the
/// connection it may become.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Minted {
    pub isn: u32,
    pub ts_offset: u32,
}

/// What a valid cookie gives back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checked {
    /// The client's MSS, rounded down to [`MSS_TABLE`].
    pub mss: u16,
    /// The TSval clock offset the SYN-ACK used.
    pub ts_offset: u32,
}

/// The ISN and TSval offset of our SYN-ACK for a client SYN at `now_ns` (shared clock), minted
/// under the secret of that instant's period; `None` if it is not published.
#[inline(always)]
pub fn mint(keys: &Keys, t: &Tuple, client_isn: u32, now_ns: u64, client_mss: u16) -> Option<Minted> {
    let key = keys.of(period(now_ns))?;
    Some(make(key, t, client_isn, now_ns, client_mss))
}

/// [`mint`] with the secret of `now_ns`'s period given.
#[inline(always)]
pub fn make(key: &Key, t: &Tuple, client_isn: u32, now_ns: u64, client_mss: u16) -> Minted {
    let p = period(now_ns);
    let idx = mss_index(client_mss);
    let h = hash(key, t, client_isn, p, idx);
    Minted { isn: ((p & 3) << 30) | (idx << 28) | (h as u32 & MAC_MASK), ts_offset: (h >> 32) as u32 }
}

/// How many of a client's first data segments a cookie ACK may be, beyond the first: the
/// client may send its initial window (10 segments, RFC 6928) with its handshake ACK, and when
/// the ACK and the first segments are lost (a burst), the first to arrive is a later one. When
/// all of them are lost, the client's tail loss probe comes first: with more data queued it is
/// a new segment, the 11th, sent past the congestion window (RFC 8985 7.3; Linux's
/// tcp_send_loss_probe forces it out). Seen in the flood test: a 32 KiB write's whole first
/// flight lost on the flooded veth, and the probe, 8 ms later, reset.
pub const LATE_SEGMENTS: u32 = 10;
/// The least payload of a segment [`check_ack`] looks behind: a client's first segments of a
/// larger write are full-sized (an MSS is at least 536 bytes, RFC 9293 3.7.1), and an attacker
/// who wants the search must send this much per try.
pub const LATE_MIN_PAYLOAD: u32 = 536;

/// The payload of the client's full-sized segments, as the handshake of `cookie` set it: the
/// MSS the cookie carries (the smaller of ours and the client's, rounded down to
/// [`MSS_TABLE`]) less the `options_len` bytes of TCP options each segment carries (RFC 9293
/// 3.7.1: the MSS counts no options; Linux's tcp_current_mss subtracts the timestamps' 12).
/// Exact when that smaller MSS is in the table (1460 and 1440 behind an Ethernet MTU), short
/// of the real size otherwise.
#[inline(always)]
pub fn full_segment(cookie: u32, options_len: u32) -> u32 {
    u32::from(MSS_TABLE[((cookie >> 28) & 3) as usize]).saturating_sub(options_len)
}

/// Check a final handshake ACK at `seq` carrying `payload_len` bytes after `options_len` bytes
/// of TCP options, whose `ack - 1` is the cookie: the client's ISN it was minted for (and what
/// the cookie holds). The ISN is `seq - 1` (RFC 9293 3.10.7.4: the ACK of SYN-RECEIVED, that
/// state held in the cookie); failing that, for a segment of at least [`LATE_MIN_PAYLOAD`],
/// `seq - 1 - k * step` for k up to [`LATE_SEGMENTS`]: the client's handshake ACK and first
/// segments were lost, this is its (k+1)th segment, and the connection begins with the hole
/// before it (as Linux's SYN-RECEIVED takes an in-window segment; with cookies Linux resets
/// such a connection). `step` is the segment's own length (the segments before it were as
/// long: a client whose segments are shorter than the cookie's MSS says), and for a segment
/// shorter than a full one ([`full_segment`]) also the full length: a short segment may be the
/// last of a write, the one a client's tail loss probe sends again first when its whole flight
/// was lost (RFC 8985 7.3), after full-sized ones. Each candidate costs one hash, and a
/// forger's chance per try grows from 2^-28 to 11 * 2^-28 (21 * 2^-28 for a short segment).
#[inline(always)]
pub fn check_ack(
    keys: &Keys,
    t: &Tuple,
    seq: u32,
    payload_len: u32,
    options_len: u32,
    cookie: u32,
    now_ns: u64,
) -> Option<(u32, Checked)> {
    let isn = seq.wrapping_sub(1);
    if let Some(c) = check(keys, t, isn, cookie, now_ns) {
        return Some((isn, c));
    }
    if payload_len < LATE_MIN_PAYLOAD {
        return None;
    }
    let full = full_segment(cookie, options_len);
    let short = payload_len < full;
    let mut k = 1;
    while k <= LATE_SEGMENTS {
        let isn = seq.wrapping_sub(1).wrapping_sub(k.wrapping_mul(payload_len));
        if let Some(c) = check(keys, t, isn, cookie, now_ns) {
            return Some((isn, c));
        }
        if short {
            let isn = seq.wrapping_sub(1).wrapping_sub(k.wrapping_mul(full));
            if let Some(c) = check(keys, t, isn, cookie, now_ns) {
                return Some((isn, c));
            }
        }
        k += 1;
    }
    None
}

/// Check the cookie `ack - 1` of a final handshake ACK at `now_ns` (shared clock).
#[inline(always)]
pub fn check(keys: &Keys, t: &Tuple, client_isn: u32, cookie: u32, now_ns: u64) -> Option<Checked> {
    // Candidate periods: from MAX_AGE before now's to the one SKEW_TOLERANCE_NS ahead (at most
    // MAX_AGE + 2 = 3 of them, told apart by the cookie's 2 period bits).
    let now = period(now_ns);
    let hi = period(now_ns.saturating_add(SKEW_TOLERANCE_NS));
    let low = cookie >> 30;
    let idx = (cookie >> 28) & 3;
    // The minting period: the latest one not after `hi` whose low 2 bits match.
    let p = hi.wrapping_sub(hi.wrapping_sub(low) & 3);
    // In the clock's first periods that latest one would wrap to before period 0, which minted
    // nothing (the wrapped period's secret may still be published).
    if p > hi || now.wrapping_sub(p) as i32 > MAX_AGE as i32 {
        return None;
    }
    let h = hash(keys.of(p)?, t, client_isn, p, idx);
    if h as u32 & MAC_MASK != cookie & MAC_MASK {
        return None;
    }
    Some(Checked { mss: MSS_TABLE[idx as usize], ts_offset: (h >> 32) as u32 })
}

/// Our SYN-ACK TSval: the connection's clock with options in the low bits, never above the
/// clock itself (so the client's PAWS check accepts our later segments; Linux does the same).
#[inline(always)]
pub fn ts_encode(now_ms: u32, offset: u32, wscale: Option<u8>, sack: bool, ecn: bool) -> u32 {
    let clock = now_ms.wrapping_add(offset);
    let ws = match wscale {
        Some(w) if w <= 14 => u32::from(w),
        _ => WSCALE_NONE,
    };
    let opts = ws | (u32::from(sack) << 4) | (u32::from(ecn) << 5);
    let mut ts = (clock & !TS_OPT_MASK) | opts;
    if ts > clock && ts.wrapping_sub(clock) < (1 << TS_OPT_BITS) {
        ts = ts.wrapping_sub(1 << TS_OPT_BITS);
    }
    ts
}

/// The TSval clock offset for the rest of a connection whose SYN-ACK counted its TSval on the
/// shared clock with `offset`, now counted on `local_ms` (the clock of the host that took the
/// final ACK; `shared_ms` is the shared clock now), given the ACK's TSecr (the SYN-ACK's
/// TSval). The clock continues the SYN-ACK's, unless that would put it behind the TSval the
/// client echoes (the SYN-ACK came from a host whose clock is ahead of ours): RFC 7323 5.3,
/// the client's PAWS check drops segments whose TSval is older than the one it holds, so the
/// clock then continues from the echoed TSval instead.
#[inline(always)]
pub fn continue_ts_clock(offset: u32, shared_ms: u32, local_ms: u32, tsecr: u32) -> u32 {
    let same = offset.wrapping_add(shared_ms.wrapping_sub(local_ms));
    if (local_ms.wrapping_add(same).wrapping_sub(tsecr) as i32) < 0 {
        tsecr.wrapping_sub(local_ms)
    } else {
        same
    }
}

/// Everything the final ACK of a cookie handshake tells us, or `None` if the cookie is bad.
/// `tsecr` is the ACK's echoed TSval when it carries timestamps; `our_wscale` is the shift we
/// announce in SYN-ACKs.
/// `payload_len`, `options_len`: the ACK's payload and TCP options (see [`check_ack`]).
#[allow(clippy::too_many_arguments)]
pub fn decode(
    keys: &Keys,
    t: &Tuple,
    seq: u32,
    payload_len: u32,
    options_len: u32,
    ack: u32,
    ts: Option<(u32, u32)>,
    now_ns: u64,
    our_wscale: u8,
) -> Option<HandshakeFacts> {
    let cookie = ack.wrapping_sub(1);
    let (client_isn, valid) = check_ack(keys, t, seq, payload_len, options_len, cookie, now_ns)?;
    let mut facts = HandshakeFacts {
        iss: cookie,
        irs: client_isn,
        mss: valid.mss,
        ts_offset: valid.ts_offset,
        ..HandshakeFacts::default()
    };
    if let Some((tsval, tsecr)) = ts {
        facts.flags |= FACT_TS;
        facts.ts_recent = tsval;
        let ws = tsecr & 0xf;
        if ws != WSCALE_NONE {
            facts.flags |= FACT_WSCALE;
            facts.snd_wscale = ws.min(14) as u8;
            facts.rcv_wscale = our_wscale;
        }
        if tsecr & (1 << 4) != 0 {
            facts.flags |= FACT_SACK;
        }
        if tsecr & (1 << 5) != 0 {
            facts.flags |= FACT_ECN;
        }
    }
    Some(facts)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    const K: Key = Key { k0: 0x0706050403020100, k1: 0x0f0e0d0c0b0a0908 };
    const OLD: Key = Key { k0: 1, k1: 2 };
    const NEXT: Key = Key { k0: 3, k1: 4 };
    const PERIOD_NS: u64 = 1 << PERIOD_SHIFT;

    /// The secrets as published at `now_ns`: `K` for its period, `OLD` for the one before and
    /// `NEXT` for the one after.
    fn keys(now_ns: u64) -> Keys {
        Keys { newest: period(now_ns) + 1, keys: [NEXT, K, OLD] }
    }

    fn tuple() -> Tuple {
        Tuple::v4([198, 18, 0, 2], [198, 18, 0, 1], 40000, 80)
    }

    #[test]
    fn no_cookie_claims_a_period_before_the_first() {
        // At the shared clock's start a cookie naming period bits 3 would be period u32::MAX
        // (wrapped); its secret is even published (keys[1] of newest 0), and a cookie minted
        // under it is still refused.
        let keys = Keys { newest: 0, keys: [K, OLD, NEXT] };
        assert_eq!(keys.of(u32::MAX), Some(&OLD));
        let h = hash(&OLD, &tuple(), 5, u32::MAX, 3);
        let cookie = (3 << 30) | (3 << 28) | (h as u32 & MAC_MASK);
        assert_eq!(check(&keys, &tuple(), 5, cookie, 0), None);
        // Period 0's own cookies pass.
        let m = make(&K, &tuple(), 5, 0, 1460);
        assert!(check(&keys, &tuple(), 5, m.isn, 0).is_some());
    }

    /// The client's handshake ACK and first segment were lost: its second (up to the eleventh,
    /// its tail loss probe's new segment) full segment validates the cookie and names the ISN
    /// the cookie was minted for; a short segment, a twelfth segment, or a size that does not
    /// divide the gap does not.
    #[test]
    fn a_later_first_segment_checks_and_names_the_isn() {
        let now = 5 * (1u64 << PERIOD_SHIFT);
        let (isn, len) = (7_000_000u32, 1448u32);
        let m = mint(&keys(now), &tuple(), isn, now, 1460).unwrap();
        let cookie = m.isn;
        let at = |k: u32| isn.wrapping_add(1).wrapping_add(k * len);
        // Segments with timestamps: 12 bytes of options.
        let opts = 12;
        // The ACK itself, and a pure ACK: seq - 1 is the ISN.
        assert_eq!(check_ack(&keys(now), &tuple(), at(0), 0, opts, cookie, now).map(|(i, _)| i), Some(isn));
        assert_eq!(check_ack(&keys(now), &tuple(), at(0), len, opts, cookie, now).map(|(i, _)| i), Some(isn));
        for k in 1..=LATE_SEGMENTS {
            assert_eq!(check_ack(&keys(now), &tuple(), at(k), len, opts, cookie, now).map(|(i, _)| i), Some(isn), "segment {k}");
        }
        // The tail loss probe's new segment after an initial window of 10 (RFC 6928) is the 11th.
        assert_eq!(LATE_SEGMENTS, 10);
        assert_eq!(check_ack(&keys(now), &tuple(), at(LATE_SEGMENTS + 1), len, opts, cookie, now), None);
        // A segment a byte off the boundaries of full segments: no candidate is the ISN.
        assert_eq!(check_ack(&keys(now), &tuple(), at(1) + 1, len - 1, opts, cookie, now), None);
        // Too short to search behind at all.
        let short = LATE_MIN_PAYLOAD - 1;
        assert_eq!(check_ack(&keys(now), &tuple(), at(2), short, opts, cookie, now), None);
        // What decode gives the TCP core: IRS the ISN, so the segment lands beyond a hole.
        let f = decode(&keys(now), &tuple(), at(3), len, opts, cookie.wrapping_add(1), None, now, 7).unwrap();
        assert_eq!((f.irs, f.iss), (isn, cookie));
    }

    /// A 4096-byte write with timestamps goes out as 1448 + 1448 + 1200 bytes. When the
    /// handshake ACK and all three are lost, the client's tail loss probe sends the last one
    /// again first (RFC 8985 7.3): it is shorter than a full segment, and it still names the
    /// ISN, two full segments (the cookie's MSS less the options) back; so for each MSS of
    /// the table, with and without timestamps. (Seen in the hostile
    /// test: its AF_XDP ring overflowed under a burst, and the probe was reset.)
    #[test]
    fn the_short_last_segment_of_a_lost_flight_checks_and_names_the_isn() {
        let now = 5 * (1u64 << PERIOD_SHIFT);
        let isn = 4_021_401_184u32;
        for (mss, opts) in [(1460u16, 12u32), (1460, 0), (1440, 12), (1220, 12)] {
            let cookie = mint(&keys(now), &tuple(), isn, now, mss).unwrap().isn;
            let full = u32::from(mss) - opts;
            assert_eq!(full_segment(cookie, opts), full);
            let last = 1200;
            let probe = isn.wrapping_add(1 + 2 * full);
            assert_eq!(check_ack(&keys(now), &tuple(), probe, last, opts, cookie, now).map(|(i, _)| i), Some(isn), "MSS {mss}, options {opts}");
            let f = decode(&keys(now), &tuple(), probe, last, opts, cookie.wrapping_add(1), None, now, 7).unwrap();
            assert_eq!((f.irs, f.iss), (isn, cookie));
            // Counted with other options than it carries, the full size is wrong: refused.
            assert_eq!(check_ack(&keys(now), &tuple(), probe, last, opts + 4, cookie, now), None);
            // The probe's new segment after a full initial window may be short too; a twelfth
            // segment may not.
            let eleventh = isn.wrapping_add(1 + LATE_SEGMENTS * full);
            assert!(check_ack(&keys(now), &tuple(), eleventh, 600, opts, cookie, now).is_some());
            assert_eq!(check_ack(&keys(now), &tuple(), eleventh.wrapping_add(full), 600, opts, cookie, now), None);
            // Short of the least payload searched behind: still refused, as before.
            assert_eq!(check_ack(&keys(now), &tuple(), probe, LATE_MIN_PAYLOAD - 1, opts, cookie, now), None);
        }
    }

    fn reference_siphash13(key: &Key, bytes: &[u8]) -> u64 {
        use core::hash::Hasher as _;
        let mut h = siphasher::sip::SipHasher13::new_with_keys(key.k0, key.k1);
        h.write(bytes);
        h.finish()
    }

    #[test]
    fn siphash13_matches_the_reference_implementation() {
        for (k, m, tail) in [
            (K, [0u64, 0, 0, 0, 0], 0u32),
            (K, [1, 2, 3, 4, 5], 6),
            (OLD, [u64::MAX, 7, 0x0123_4567_89ab_cdef, 9, 10], u32::MAX),
        ] {
            let mut bytes: Vec<u8> = m.iter().flat_map(|w| w.to_le_bytes()).collect();
            bytes.extend_from_slice(&tail.to_le_bytes());
            assert_eq!(siphash13(&k, &m, tail), reference_siphash13(&k, &bytes));
            let two = [m[0], m[1]];
            assert_eq!(siphash13(&k, &two, tail), reference_siphash13(&k, &bytes[..16].iter().chain(&tail.to_le_bytes()).copied().collect::<Vec<_>>()));
        }
    }

    /// The documented message, built from the tuple's wire bytes, for another implementation
    /// (or a reader) to check the format against.
    fn wire_message(client: &[u8], server: &[u8], cport: u16, sport: u16, isn: u32, extra: u32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(client);
        m.extend_from_slice(server);
        m.extend_from_slice(&cport.to_be_bytes());
        m.extend_from_slice(&sport.to_be_bytes());
        m.extend_from_slice(&isn.to_be_bytes());
        m.extend_from_slice(&extra.to_le_bytes());
        m
    }

    proptest::proptest! {
        #[test]
        fn the_hash_is_siphash13_of_the_wire_bytes(
            k0: u64, k1: u64, c: [u8; 16], s: [u8; 16], cport: u16, sport: u16, isn: u32,
            period in 0u32..(1 << 28), idx in 0u32..4,
        ) {
            let key = Key { k0, k1 };
            let extra = (period << 2) | idx;
            let v4 = Tuple::v4([c[0], c[1], c[2], c[3]], [s[0], s[1], s[2], s[3]], cport, sport);
            let m4 = wire_message(&c[..4], &s[..4], cport, sport, isn, extra);
            proptest::prop_assert_eq!(m4.len(), 20);
            proptest::prop_assert_eq!(hash(&key, &v4, isn, period, idx), reference_siphash13(&key, &m4));
            let v6 = Tuple::v6(c, s, cport, sport);
            let m6 = wire_message(&c, &s, cport, sport, isn, extra);
            proptest::prop_assert_eq!(m6.len(), 44);
            proptest::prop_assert_eq!(hash(&key, &v6, isn, period, idx), reference_siphash13(&key, &m6));
        }

        #[test]
        fn cookies_roundtrip_with_their_offset_and_reject_other_isns(
            k0: u64, k1: u64, isn: u32, other: u32, port: u16, now in 0u64..(1 << 50), mss: u16
        ) {
            let key = Key { k0, k1 };
            let t = Tuple::v4([198, 18, 0, 2], [198, 18, 0, 1], port, 80);
            let published = Keys { newest: period(now) + 1, keys: [NEXT, key, OLD] };
            let m = mint(&published, &t, isn, now, mss).unwrap();
            proptest::prop_assert_eq!(m, make(&key, &t, isn, now, mss));
            let c = check(&published, &t, isn, m.isn, now);
            proptest::prop_assert_eq!(c, Some(Checked { mss: MSS_TABLE[mss_index(mss) as usize], ts_offset: m.ts_offset }));
            // A period later its secret is the previous one, still valid, with the same offset.
            let later = now + PERIOD_NS;
            let rotated = Keys { newest: period(later) + 1, keys: [OLD, NEXT, key] };
            proptest::prop_assert_eq!(check(&rotated, &t, isn, m.isn, later), c);
            if other != isn {
                proptest::prop_assert!(check(&published, &t, other, m.isn, now).is_none());
            }
        }
    }

    #[test]
    fn tuple_words_are_the_wire_bytes_loaded_little_endian() {
        // An IPv4 header's addresses (client = source first) and a TCP header's ports, as the
        // XDP program loads them: one u64 and one u32.
        let addrs: [u8; 8] = [198, 18, 0, 2, 198, 18, 0, 1];
        let ports: [u8; 4] = [0x9c, 0x40, 0x00, 0x50];
        let t = tuple();
        assert_eq!(t.addrs[0], u64::from_le_bytes(addrs));
        assert_eq!(t.ports, u32::from_le_bytes(ports));
        assert!(!t.v6);
    }

    #[test]
    fn tuple_hash_is_siphash13_of_the_tuples_wire_bytes() {
        let mut m = std::vec![198, 18, 0, 2, 198, 18, 0, 1];
        m.extend_from_slice(&40000u16.to_be_bytes());
        m.extend_from_slice(&80u16.to_be_bytes());
        assert_eq!(tuple_hash(&K, &tuple()), reference_siphash13(&K, &m));
    }

    #[test]
    fn families_do_not_collide() {
        // The same leading bytes as IPv4 and as IPv6 hash to different values (message length).
        let mut c = [0u8; 16];
        let mut s = [0u8; 16];
        c[..4].copy_from_slice(&[198, 18, 0, 2]);
        s[..4].copy_from_slice(&[198, 18, 0, 1]);
        let v6 = Tuple::v6(c, s, 40000, 80);
        assert_ne!(make(&K, &tuple(), 5, 0, 1460), make(&K, &v6, 5, 0, 1460));
    }

    #[test]
    fn hash_differs_per_key_and_message() {
        let m = [1, 2, 3, 4, 5];
        assert_ne!(siphash13(&K, &m, 6), siphash13(&OLD, &m, 6));
        assert_ne!(siphash13(&K, &m, 6), siphash13(&K, &m, 7));
        assert_ne!(siphash13(&K, &m, 6), siphash13(&K, &[1, 2, 3, 4, 6], 6));
        assert_eq!(siphash13(&K, &m, 6), siphash13(&K, &m, 6));
    }

    #[test]
    fn valid_within_its_period_and_the_next_then_invalid() {
        let t = tuple();
        let now = 1000 * PERIOD_NS + 5;
        let c = make(&K, &t, 77, now, 1460).isn;
        // Each instant with the secrets published then: K stays the secret of period 1000.
        let at = |when: u64| {
            let newest = period(when) + 1;
            let published = Keys { newest, keys: [0, 1, 2].map(|j| if newest - j == 1000 { K } else { NEXT }) };
            check(&published, &t, 77, c, when).map(|v| v.mss)
        };
        assert_eq!(at(now), Some(1460));
        assert_eq!(at(now + PERIOD_NS), Some(1460));
        assert_eq!(at(1002 * PERIOD_NS - 1), Some(1460));
        assert_eq!(at(1002 * PERIOD_NS), None);
        assert_eq!(at(now + 3 * PERIOD_NS), None);
    }

    #[test]
    fn the_secret_is_the_periods_own() {
        // A cookie is checked under the secret of the period it names, and no other.
        let t = tuple();
        let now = 5 * PERIOD_NS;
        let m = make(&K, &t, 9, now, 1400);
        assert_eq!(check(&keys(now), &t, 9, m.isn, now), Some(Checked { mss: 1220, ts_offset: m.ts_offset }));
        let other = Keys { keys: [K, Key { k0: 99, k1: 98 }, K], ..keys(now) };
        assert_eq!(check(&other, &t, 9, m.isn, now), None);
        // Not published (the publisher is a whole period behind): no cookie, none valid.
        let stale = Keys { newest: period(now) - 2, keys: [K, K, K] };
        assert_eq!(mint(&stale, &t, 9, now, 1400), None);
        assert_eq!(check(&stale, &t, 9, m.isn, now), None);
    }

    #[test]
    fn a_clock_ahead_by_the_tolerance_is_accepted_and_further_is_not() {
        // Another host, its clock `lead` ns ahead of ours, mints a cookie just after its clock
        // entered period 1001; ours is still in 1000.
        let t = tuple();
        let boundary = 1001 * PERIOD_NS;
        let ours = |lead: u64| boundary + 1_000 - lead;
        for (lead, valid) in [(1_000, true), (SKEW_TOLERANCE_NS, true), (SKEW_TOLERANCE_NS + 2_000, false), (30_000_000_000, false)] {
            let now = ours(lead);
            let published = Keys { newest: 1001, keys: [NEXT, K, OLD] };
            let c = mint(&published, &t, 3, boundary + 1_000, 1460).unwrap().isn;
            assert_eq!(check(&published, &t, 3, c, now).is_some(), valid, "lead {lead} ns");
        }
        // A clock behind ours only shortens a cookie's life here: minted at the end of its
        // period 1000, checked here up to the end of 1001.
        let published = Keys { newest: 1002, keys: [NEXT, K, OLD] };
        let c = make(&OLD, &t, 4, boundary - 1, 1460).isn;
        assert!(check(&published, &t, 4, c, 1002 * PERIOD_NS - 1).is_some());
        assert!(check(&published, &t, 4, c, 1002 * PERIOD_NS).is_none());
    }

    #[test]
    fn minted_on_a_lagging_clock_the_window_only_shrinks() {
        // XDP mints on the coarse clock (up to a couple of ticks behind); checks use the
        // precise one. A cookie minted 8 ms late, just before a period boundary, validates
        // for the next period, no longer.
        let t = tuple();
        let lag = 8_000_000;
        let precise = 1000 * PERIOD_NS + lag / 2;
        let c = make(&OLD, &t, 3, precise - lag, 1460).isn;
        let published = Keys { newest: 1001, keys: [NEXT, K, OLD] };
        assert!(check(&published, &t, 3, c, precise).is_some());
        assert!(check(&published, &t, 3, c, 1001 * PERIOD_NS - 1).is_some());
        assert!(check(&Keys { newest: 1002, keys: [NEXT, NEXT, K] }, &t, 3, c, 1001 * PERIOD_NS).is_none());
    }

    #[test]
    fn any_single_bit_flip_is_rejected() {
        let t = tuple();
        // Near a boundary, where three periods are candidates.
        let now = 8 * PERIOD_NS - 1000;
        let k = keys(now);
        let c = make(&K, &t, 1234, now, 1460).isn;
        assert!(check(&k, &t, 1234, c, now).is_some());
        for bit in 0..32 {
            assert_eq!(check(&k, &t, 1234, c ^ (1 << bit), now), None, "cookie bit {bit}");
        }
        for bit in 0..32 {
            assert_eq!(check(&k, &t, 1234 ^ (1 << bit), c, now), None, "isn bit {bit}");
        }
        for bit in 0..32 {
            let mut t2 = t;
            t2.ports ^= 1 << bit;
            assert_eq!(check(&k, &t2, 1234, c, now), None, "ports bit {bit}");
        }
        for bit in 0..64 {
            let mut t3 = t;
            t3.addrs[0] ^= 1 << bit;
            assert_eq!(check(&k, &t3, 1234, c, now), None, "address bit {bit}");
        }
    }

    #[test]
    fn mss_rounds_down_to_the_table() {
        for (mss, want) in [(1460, 1460), (9000, 1460), (1448, 1440), (1300, 1220), (1220, 1220), (600, 536), (100, 536)] {
            let t = tuple();
            let c = make(&K, &t, 1, 0, mss).isn;
            assert_eq!(check(&keys(0), &t, 1, c, 0).map(|v| v.mss), Some(want), "mss {mss}");
        }
    }

    #[test]
    fn ts_offset_is_per_connection_attempt_and_keyed() {
        let t = tuple();
        let a = make(&K, &t, 1, 0, 1460).ts_offset;
        assert_eq!(a, make(&K, &t, 1, 0, 1460).ts_offset, "a retransmitted SYN gets the same clock");
        assert_ne!(a, make(&K, &t, 2, 0, 1460).ts_offset);
        assert_ne!(a, make(&OLD, &t, 1, 0, 1460).ts_offset);
        let mut other_port = t;
        other_port.ports ^= 1;
        assert_ne!(a, make(&K, &other_port, 1, 0, 1460).ts_offset);
    }

    #[test]
    fn timestamp_options_roundtrip_and_never_exceed_the_clock() {
        for now_ms in [0u32, 5, 63, 64, 1000, u32::MAX - 3] {
            for ws in [None, Some(0), Some(7), Some(14)] {
                for sack in [false, true] {
                    let t = tuple();
                    let m = make(&K, &t, 10, 0, 1460);
                    let tsv = ts_encode(now_ms, m.ts_offset, ws, sack, false);
                    let clock = now_ms.wrapping_add(m.ts_offset);
                    assert!(clock.wrapping_sub(tsv) < 128, "tsval {tsv} vs clock {clock}");
                    let f = decode(&keys(0), &t, 11, 0, 0, m.isn.wrapping_add(1), Some((555, tsv)), 0, 7).unwrap();
                    assert!(f.has(FACT_TS));
                    assert_eq!(f.ts_recent, 555);
                    assert_eq!(f.ts_offset, m.ts_offset, "userspace's clock is the SYN-ACK's");
                    assert_eq!(f.has(FACT_WSCALE), ws.is_some());
                    if let Some(w) = ws {
                        assert_eq!(f.snd_wscale, w);
                        assert_eq!(f.rcv_wscale, 7);
                    }
                    assert_eq!(f.has(FACT_SACK), sack);
                    assert_eq!(f.iss, m.isn);
                    assert_eq!(f.irs, 10);
                }
            }
        }
    }

    #[test]
    fn the_ts_clock_continues_the_syn_acks_and_never_goes_below_the_echo() {
        let (offset, shared, local) = (1_000_000u32, 50_000u32, 7_000u32);
        let tsval = ts_encode(shared - 30, offset, Some(7), true, false);
        let o = continue_ts_clock(offset, shared, local, tsval);
        // The connection's clock now is the shared clock + offset, counted on the local one.
        assert_eq!(local.wrapping_add(o), shared.wrapping_add(offset));
        // The SYN-ACK came from a host 5 s ahead: continue from what the client echoes.
        let ahead = ts_encode(shared + 5000, offset, Some(7), true, false);
        assert_eq!(local.wrapping_add(continue_ts_clock(offset, shared, local, ahead)), ahead);
        // Ours more than 2^31 ms ahead of the echo is behind it for PAWS: from the echo too.
        let far = shared.wrapping_add(offset).wrapping_sub(0x8000_0010);
        assert_eq!(local.wrapping_add(continue_ts_clock(offset, shared, local, far)), far);
        // Less than that ahead is ahead: the clock continues.
        let near = shared.wrapping_add(offset).wrapping_sub(0x7fff_fff0);
        assert_eq!(continue_ts_clock(offset, shared, local, near), o);
    }

    #[test]
    fn v6_tuples_use_all_address_bytes() {
        let c = [0xfd, 0, 0x5e, 0xed, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let s = [0xfd, 0, 0x5e, 0xed, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let t = Tuple::v6(c, s, 40000, 80);
        let m = make(&K, &t, 5, 0, 1440);
        assert_eq!(check(&keys(0), &t, 5, m.isn, 0).map(|v| v.mss), Some(1440));
        for i in 0..16 {
            let mut c2 = c;
            c2[i] ^= 1;
            assert_eq!(check(&keys(0), &Tuple::v6(c2, s, 40000, 80), 5, m.isn, 0), None, "client byte {i}");
            let mut s2 = s;
            s2[i] ^= 1;
            assert_eq!(check(&keys(0), &Tuple::v6(c, s2, 40000, 80), 5, m.isn, 0), None, "server byte {i}");
        }
    }
}
