//! Stateless SYN cookies, shared byte for byte by the XDP program and userspace.
//!
//! Sequence number (our ISN) of the SYN-ACK:
//!
//! ```text
//!  31 30 29 28 27                                              0
//! [ t mod 4 | mss idx |  MAC28 = SipHash-1-3(secret, tuple, client ISN, t, mss idx) ]
//! ```
//! `t` counts 64-second periods of CLOCK_MONOTONIC. An ACK validates when `ack - 1` carries the
//! MAC of a period at most [`MAX_AGE`] old, under the current or the previous secret (so a
//! cookie survives one secret rotation and no more). A forged ACK has a 2^-28 chance per guess.
//!
//! With timestamps (RFC 7323), what the MAC cannot hold rides in the low 6 bits of our TSval,
//! as Linux does: window-scale shift (4 bits, 15 = none), SACK-permitted, ECN. The client echoes
//! the TSval in TSecr, and the ACK brings it back. Without timestamps, no window scaling and no
//! SACK are offered (there is nowhere to remember them), again as Linux does.

use crate::handshake::{FACT_ECN, FACT_SACK, FACT_TS, FACT_WSCALE, HandshakeFacts};

/// Seconds in one cookie time period, as a shift of nanoseconds (2^36 ns ~ 68.7 s).
pub const PERIOD_SHIFT: u32 = 36;
/// A cookie validates for this many whole periods after the one that minted it.
pub const MAX_AGE: u32 = 1;
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

/// The connection 4-tuple as it appears on the wire (IPv4 in the first 4 bytes of each
/// address, zero-padded), from the client's point of view: client is the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuple {
    pub client: [u8; 16],
    pub server: [u8; 16],
    pub client_port: u16,
    pub server_port: u16,
}

#[inline(always)]
fn rotl(x: u64, b: u32) -> u64 {
    x.rotate_left(b)
}

#[inline(always)]
fn round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = rotl(v[1], 13);
    v[1] ^= v[0];
    v[0] = rotl(v[0], 32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = rotl(v[3], 16);
    v[3] ^= v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = rotl(v[3], 21);
    v[3] ^= v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = rotl(v[1], 17);
    v[1] ^= v[2];
    v[2] = rotl(v[2], 32);
}

/// SipHash-1-3 over exactly six 64-bit words (48 bytes), unrolled for the BPF verifier.
#[inline(always)]
fn siphash13_6(key: &Key, m: &[u64; 6]) -> u64 {
    let mut v = [
        key.k0 ^ 0x736f6d6570736575,
        key.k1 ^ 0x646f72616e646f6d,
        key.k0 ^ 0x6c7967656e657261,
        key.k1 ^ 0x7465646279746573,
    ];
    macro_rules! absorb {
        ($w:expr) => {
            v[3] ^= $w;
            round(&mut v);
            v[0] ^= $w;
        };
    }
    absorb!(m[0]);
    absorb!(m[1]);
    absorb!(m[2]);
    absorb!(m[3]);
    absorb!(m[4]);
    absorb!(m[5]);
    // Final block: message length (48) in the top byte.
    let b: u64 = 48u64 << 56;
    absorb!(b);
    v[2] ^= 0xff;
    round(&mut v);
    round(&mut v);
    round(&mut v);
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

#[inline(always)]
fn words(t: &Tuple, client_isn: u32, extra: u32) -> [u64; 6] {
    let a = |b: &[u8; 16], i: usize| {
        u64::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3], b[i + 4], b[i + 5], b[i + 6], b[i + 7]])
    };
    [
        a(&t.client, 0),
        a(&t.client, 8),
        a(&t.server, 0),
        a(&t.server, 8),
        (u64::from(t.client_port) << 48) | (u64::from(t.server_port) << 32) | u64::from(client_isn),
        u64::from(extra),
    ]
}

/// The cookie's time counter for a CLOCK_MONOTONIC instant.
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

#[inline(always)]
fn mac28(key: &Key, t: &Tuple, client_isn: u32, period: u32, mss_idx: u32) -> u32 {
    (siphash13_6(key, &words(t, client_isn, (period << 2) | mss_idx)) as u32) & 0x0fff_ffff
}

/// The ISN of our SYN-ACK for a client SYN.
#[inline(always)]
pub fn make(key: &Key, t: &Tuple, client_isn: u32, now_ns: u64, client_mss: u16) -> u32 {
    let p = period(now_ns);
    let idx = mss_index(client_mss);
    ((p & 3) << 30) | (idx << 28) | mac28(key, t, client_isn, p, idx)
}

/// Check the cookie `ack - 1` of a final handshake ACK; on success, the MSS it carries.
#[inline(always)]
pub fn check(keys: &[Key; 2], t: &Tuple, client_isn: u32, cookie: u32, now_ns: u64) -> Option<u16> {
    let now = period(now_ns);
    let low = cookie >> 30;
    let idx = (cookie >> 28) & 3;
    // The minting period: the latest one not after `now` whose low 2 bits match.
    let age = now.wrapping_sub(low) & 3;
    if age > MAX_AGE {
        return None;
    }
    let p = now.wrapping_sub(age);
    let mac = cookie & 0x0fff_ffff;
    if mac28(&keys[0], t, client_isn, p, idx) == mac || mac28(&keys[1], t, client_isn, p, idx) == mac {
        Some(MSS_TABLE[idx as usize])
    } else {
        None
    }
}

/// The per-connection offset of our TSval clock (keyed, so it reveals no uptime; from a key
/// that never rotates, so the SYN-ACK and the connection agree).
#[inline(always)]
pub fn ts_offset(ts_key: &Key, t: &Tuple) -> u32 {
    siphash13_6(ts_key, &words(t, 0, 0x7473)) as u32
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

/// Everything the final ACK of a cookie handshake tells us, or `None` if the cookie is bad.
/// `tsecr` is the ACK's echoed TSval when it carries timestamps; `our_wscale` is the shift we
/// announce in SYN-ACKs.
#[allow(clippy::too_many_arguments)]
pub fn decode(
    keys: &[Key; 2],
    ts_key: &Key,
    t: &Tuple,
    seq: u32,
    ack: u32,
    ts: Option<(u32, u32)>,
    now_ns: u64,
    our_wscale: u8,
) -> Option<HandshakeFacts> {
    let client_isn = seq.wrapping_sub(1);
    let cookie = ack.wrapping_sub(1);
    let mss = check(keys, t, client_isn, cookie, now_ns)?;
    let mut facts = HandshakeFacts {
        iss: cookie,
        irs: client_isn,
        mss,
        ts_offset: ts_offset(ts_key, t),
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
    use super::*;

    const K: Key = Key { k0: 0x0706050403020100, k1: 0x0f0e0d0c0b0a0908 };
    const OLD: Key = Key { k0: 1, k1: 2 };
    const TS_KEY: Key = Key { k0: 3, k1: 4 };
    const PERIOD_NS: u64 = 1 << PERIOD_SHIFT;

    fn tuple() -> Tuple {
        let mut c = [0u8; 16];
        let mut s = [0u8; 16];
        c[..4].copy_from_slice(&[198, 18, 0, 2]);
        s[..4].copy_from_slice(&[198, 18, 0, 1]);
        Tuple { client: c, server: s, client_port: 40000, server_port: 80 }
    }

    #[test]
    fn siphash13_matches_the_reference_implementation() {
        use core::hash::Hasher as _;
        for (k, m) in [
            (K, [0u64, 0, 0, 0, 0, 0]),
            (K, [1, 2, 3, 4, 5, 6]),
            (OLD, [u64::MAX, 7, 0x0123_4567_89ab_cdef, 9, 10, 11]),
        ] {
            let mut h = siphasher::sip::SipHasher13::new_with_keys(k.k0, k.k1);
            for w in m {
                h.write(&w.to_le_bytes());
            }
            assert_eq!(siphash13_6(&k, &m), h.finish());
        }
    }

    proptest::proptest! {
        #[test]
        fn cookies_roundtrip_and_reject_other_isns(
            k0: u64, k1: u64, isn: u32, other: u32, port: u16, now in 0u64..(1 << 50), mss: u16
        ) {
            let key = Key { k0, k1 };
            let mut t = tuple();
            t.client_port = port;
            let c = make(&key, &t, isn, now, mss);
            proptest::prop_assert!(check(&[key, OLD], &t, isn, c, now).is_some());
            if other != isn {
                proptest::prop_assert!(check(&[key, OLD], &t, other, c, now).is_none());
            }
        }
    }

    #[test]
    fn siphash13_differs_per_key_and_message() {
        let m = [1, 2, 3, 4, 5, 6];
        assert_ne!(siphash13_6(&K, &m), siphash13_6(&OLD, &m));
        assert_ne!(siphash13_6(&K, &m), siphash13_6(&K, &[1, 2, 3, 4, 5, 7]));
        assert_eq!(siphash13_6(&K, &m), siphash13_6(&K, &m));
    }

    #[test]
    fn valid_within_its_period_and_the_next_then_invalid() {
        let t = tuple();
        let now = 1000 * PERIOD_NS + 5;
        let c = make(&K, &t, 77, now, 1460);
        assert_eq!(check(&[K, OLD], &t, 77, c, now), Some(1460));
        assert_eq!(check(&[K, OLD], &t, 77, c, now + PERIOD_NS), Some(1460));
        assert_eq!(check(&[K, OLD], &t, 77, c, now + 2 * PERIOD_NS), None);
        assert_eq!(check(&[K, OLD], &t, 77, c, now + 3 * PERIOD_NS), None);
    }

    #[test]
    fn survives_one_rotation_not_two() {
        let t = tuple();
        let now = 5 * PERIOD_NS;
        let c = make(&K, &t, 9, now, 1400);
        let rotated_once = [Key { k0: 99, k1: 98 }, K];
        let rotated_twice = [Key { k0: 77, k1: 76 }, Key { k0: 99, k1: 98 }];
        assert_eq!(check(&rotated_once, &t, 9, c, now), Some(1220));
        assert_eq!(check(&rotated_twice, &t, 9, c, now), None);
    }

    #[test]
    fn any_single_bit_flip_is_rejected() {
        let t = tuple();
        let now = 7 * PERIOD_NS;
        let c = make(&K, &t, 1234, now, 1460);
        for bit in 0..32 {
            assert_eq!(check(&[K, OLD], &t, 1234, c ^ (1 << bit), now), None, "cookie bit {bit}");
        }
        for bit in 0..32 {
            assert_eq!(check(&[K, OLD], &t, 1234 ^ (1 << bit), c, now), None, "isn bit {bit}");
        }
        let mut t2 = t;
        t2.client_port ^= 1;
        assert_eq!(check(&[K, OLD], &t2, 1234, c, now), None);
        let mut t3 = t;
        t3.client[3] ^= 0x80;
        assert_eq!(check(&[K, OLD], &t3, 1234, c, now), None);
    }

    #[test]
    fn mss_rounds_down_to_the_table() {
        for (mss, want) in [(1460, 1460), (9000, 1460), (1448, 1440), (1300, 1220), (1220, 1220), (600, 536), (100, 536)] {
            let t = tuple();
            let c = make(&K, &t, 1, 0, mss);
            assert_eq!(check(&[K, OLD], &t, 1, c, 0), Some(want), "mss {mss}");
        }
    }

    #[test]
    fn timestamp_options_roundtrip_and_never_exceed_the_clock() {
        for now_ms in [0u32, 5, 63, 64, 1000, u32::MAX - 3] {
            for ws in [None, Some(0), Some(7), Some(14)] {
                for sack in [false, true] {
                    let tsv = ts_encode(now_ms, 0, ws, sack, false);
                    let clock = now_ms;
                    assert!(clock.wrapping_sub(tsv) < 128, "tsval {tsv} vs clock {clock}");
                    let t = tuple();
                    let c = make(&K, &t, 10, 0, 1460);
                    let f = decode(&[K, OLD], &TS_KEY, &t, 11, c.wrapping_add(1), Some((555, tsv)), 0, 7).unwrap();
                    assert!(f.has(FACT_TS));
                    assert_eq!(f.ts_recent, 555);
                    assert_eq!(f.has(FACT_WSCALE), ws.is_some());
                    if let Some(w) = ws {
                        assert_eq!(f.snd_wscale, w);
                        assert_eq!(f.rcv_wscale, 7);
                    }
                    assert_eq!(f.has(FACT_SACK), sack);
                    assert_eq!(f.iss, c);
                    assert_eq!(f.irs, 10);
                }
            }
        }
    }

    #[test]
    fn v6_tuples_use_all_address_bytes() {
        let mut t = tuple();
        t.client = [0xfd, 0, 0x5e, 0xed, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let c = make(&K, &t, 5, 0, 1440);
        assert_eq!(check(&[K, OLD], &t, 5, c, 0), Some(1440));
        t.client[15] = 3;
        assert_eq!(check(&[K, OLD], &t, 5, c, 0), None);
    }
}
