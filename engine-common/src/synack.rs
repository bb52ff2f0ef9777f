//! The SYN-ACK synx answers a SYN with when it holds no connection for the tuple: the
//! handshake's SYN-RECEIVED state goes into a SYN cookie (`crate::cookie`) instead of memory
//! (RFC 9293 3.10.7.2, RFC 4987 3.6). One policy for both senders: the XDP program, which
//! answers every such SYN, and userspace, which answers a SYN for a tuple it holds in
//! TIME-WAIT (RFC 6191) the same way, so the final ACK validates wherever it lands.

use crate::cookie::{self, Key, Tuple};

/// Option words of a SYN-ACK with timestamps as [`SynAck::option_words`] lays them out: 20
/// bytes. Without timestamps a SYN-ACK carries the MSS alone ([`SynAck::mss_word`]).
pub const OPT_WORDS: usize = 5;
/// The window of our SYN-ACK (a SYN's window is never scaled, RFC 7323 2.2).
pub const WINDOW: u16 = 65535;

/// RFC 9293 3.7.1: the MSS to assume of a peer that sent no MSS option (536 for IPv4, 1220
/// for IPv6, RFC 8200 5 less 60 bytes of headers).
#[inline(always)]
pub const fn default_mss(v6: bool) -> u16 {
    if v6 { 1220 } else { 536 }
}

/// What a client's SYN offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Syn {
    /// The client's ISN (the SYN's SEG.SEQ).
    pub isn: u32,
    /// Its MSS option, or [`default_mss`] when it sent none.
    pub mss: u16,
    /// Its window-scale shift as sent, if it offered scaling.
    pub wscale: Option<u8>,
    /// It sent SACK-permitted (RFC 2018).
    pub sack: bool,
    /// Its TSval, if it sent timestamps (RFC 7323).
    pub ts: Option<u32>,
    /// An ECN-setup SYN: ECE and CWR both set (RFC 3168 6.1.1).
    pub ecn: bool,
}

impl Syn {
    /// The MSS the cookie keeps: the smaller of the client's and ours, the size we may send.
    #[inline(always)]
    pub fn cookie_mss(&self, our_mss: u16) -> u16 {
        if self.mss < our_mss { self.mss } else { our_mss }
    }
}

/// What we announce in every SYN-ACK.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ours {
    /// Our MSS: what we can receive (RFC 6691 2, RFC 9293 3.7.1), whatever the client's.
    pub mss: u16,
    /// The window-scale shift we offer a client that offered scaling.
    pub wscale: u8,
    /// Agree to ECN with a client whose SYN asks for it (RFC 3168 6.1.1), as Linux's
    /// net.ipv4.tcp_ecn=2 does.
    pub ecn: bool,
}

/// IPv6's header is 20 bytes longer than IPv4's (RFC 8200 3 vs RFC 791 3.1).
const IPV6_EXTRA: u16 = 20;

impl Ours {
    /// What we announce to a client of this family, `mss` being our IPv4 MSS (the link MTU less
    /// 40 bytes of IPv4 and TCP headers, RFC 9293 3.7.1, as Linux's tcp_mtu_to_mss): an IPv6
    /// client is offered 20 bytes less, never below IPv6's minimum (1280-byte MTU, RFC 8200 5).
    #[inline(always)]
    pub fn for_family(&self, v6: bool) -> Ours {
        let mss = if v6 {
            let m = self.mss.saturating_sub(IPV6_EXTRA);
            if m < default_mss(true) { default_mss(true) } else { m }
        } else {
            self.mss
        };
        Ours { mss, ..*self }
    }
}

/// Our SYN-ACK to a [`Syn`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynAck {
    /// Our ISN: the cookie.
    pub seq: u32,
    /// The client's ISN + 1.
    pub ack: u32,
    pub window: u16,
    /// Our MSS option.
    pub mss: u16,
    /// Our window-scale option.
    pub wscale: Option<u8>,
    /// SACK-permitted.
    pub sack: bool,
    /// (TSval, TSecr).
    pub ts: Option<(u32, u32)>,
    /// An ECN-setup SYN-ACK: ECE set, CWR clear (RFC 3168 6.1.1).
    pub ece: bool,
}

/// The TCP header's flag bits a SYN-ACK may carry.
pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const ECE: u8 = 0x40;

/// The SYN-ACK to `syn` once its cookie is minted (ISN `isn`, TSval clock offset
/// `ts_offset`); `now_ms` is the millisecond clock the TSval counts (wrapping).
#[inline(always)]
pub fn build(syn: &Syn, isn: u32, ts_offset: u32, now_ms: u32, ours: &Ours) -> SynAck {
    let mut a = SynAck {
        seq: isn,
        ack: syn.isn.wrapping_add(1),
        window: WINDOW,
        mss: ours.mss,
        wscale: None,
        sack: false,
        ts: None,
        ece: false,
    };
    // Without timestamps the cookie has nowhere to remember scaling, SACK or ECN: MSS only, as
    // Linux does (tcp_conn_request clears ecn_ok for a cookie without timestamps).
    if let Some(client_ts) = syn.ts {
        // RFC 7323 2.3: a shift above 14 is used as 14.
        let wscale = match syn.wscale {
            Some(w) if w > 14 => Some(14),
            w => w,
        };
        // RFC 7323 3.2: TSecr echoes the client's TSval; our TSval carries what the cookie
        // cannot (window scale, SACK, ECN).
        // RFC 3168 6.1.1: an ECN-setup SYN-ACK only to an ECN-setup SYN, and only if we agree.
        let ecn = syn.ecn && ours.ecn;
        let tsval = cookie::ts_encode(now_ms, ts_offset, wscale, syn.sack, ecn);
        a.ts = Some((tsval, client_ts));
        a.sack = syn.sack;
        a.ece = ecn;
        // RFC 7323 2.2: offer scaling only to a client that offered it.
        a.wscale = if wscale.is_some() { Some(ours.wscale) } else { None };
    }
    a
}

/// The SYN-ACK to `syn` with synx's own cookie, minted under `key` (the secret of `now_ns`'s
/// period) at `now_ns` (the shared clock, `crate::cookie`): what userspace sends, and what the
/// XDP program sends (which mints with its own clock and calls [`build`]).
pub fn answer(key: &Key, tuple: &Tuple, syn: &Syn, now_ns: u64, ours: &Ours) -> SynAck {
    let minted = cookie::make(key, tuple, syn.isn, now_ns, syn.cookie_mss(ours.mss));
    build(syn, minted.isn, minted.ts_offset, (now_ns / 1_000_000) as u32, ours)
}

impl SynAck {
    /// The flags byte: SYN, ACK and, for an ECN-setup SYN-ACK, ECE (never CWR, RFC 3168 6.1.1).
    #[inline(always)]
    pub fn flags(&self) -> u8 {
        SYN | ACK | if self.ece { ECE } else { 0 }
    }

    /// The MSS option as one word: all a SYN-ACK without timestamps carries (see [`build`]),
    /// as Linux's cookie SYN-ACK then does. A client's SYN with nothing but the MSS (24 bytes of
    /// TCP header) thus gets a SYN-ACK of its own size, which XDP writes without resizing.
    #[inline(always)]
    pub fn mss_word(&self) -> u32 {
        let [m0, m1] = self.mss.to_be_bytes();
        u32::from_le_bytes([2, 4, m0, m1])
    }

    /// The options in Linux's order and layout (tcp_options_write): MSS, SACK-permitted (or
    /// NOP, NOP), timestamps, NOP, window scale (or NOP); without timestamps, MSS then EOL
    /// padding (XDP sends [`SynAck::mss_word`] alone then). Each word holds 4 wire bytes read
    /// as a little-endian u32, as XDP stores them.
    #[inline(always)]
    pub fn option_words(&self) -> [u32; OPT_WORDS] {
        let w = u32::from_le_bytes;
        let mut o = [self.mss_word(), 0, 0, 0, 0];
        if let Some((tsval, tsecr)) = self.ts {
            o[1] = if self.sack { w([4, 2, 8, 10]) } else { w([1, 1, 8, 10]) };
            o[2] = w(tsval.to_be_bytes());
            o[3] = w(tsecr.to_be_bytes());
            o[4] = match self.wscale {
                Some(s) => w([1, 3, 3, s]),
                None => w([1, 1, 1, 1]),
            };
        }
        o
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;
    use crate::handshake::{FACT_ECN, FACT_SACK, FACT_TS, FACT_WSCALE};

    const KEY: Key = Key { k0: 0x0123_4567_89ab_cdef, k1: 0xfedc_ba98_7654_3210 };
    const OURS: Ours = Ours { mss: 8960, wscale: 7, ecn: true };
    const NOW_NS: u64 = 5_000_000_123_456_789;

    fn tuple() -> Tuple {
        Tuple::v4([198, 18, 0, 2], [198, 18, 0, 1], 40000, 80)
    }

    /// The secrets as published at NOW_NS, KEY for its period.
    fn published() -> cookie::Keys {
        cookie::Keys { newest: cookie::period(NOW_NS) + 1, keys: [KEY; cookie::KEYS] }
    }

    fn linux_syn() -> Syn {
        Syn { isn: 1000, mss: 1460, wscale: Some(7), sack: true, ts: Some(123_456), ecn: false }
    }

    fn option_bytes(a: &SynAck) -> Vec<u8> {
        a.option_words().iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// What the client's final ACK (echoing our TSval) decodes to.
    fn decoded(a: &SynAck, syn: &Syn) -> crate::handshake::HandshakeFacts {
        let ts = a.ts.map(|(tsval, _)| (syn.ts.unwrap_or(0).wrapping_add(1), tsval));
        cookie::decode(&published(), &tuple(), a.ack, 0, 0, a.seq.wrapping_add(1), ts, NOW_NS, OURS.wscale)
            .expect("the final ACK of our SYN-ACK validates")
    }

    #[test]
    fn every_syn_gets_our_mss_its_isn_acked_and_a_cookie_that_keeps_the_smaller_mss() {
        // (what, the SYN, the MSS the cookie keeps: the smaller of the two, rounded down to
        // the cookie's table)
        let rows = [
            ("Linux", linux_syn(), 1460),
            ("client MSS above ours", Syn { mss: 9000, ..linux_syn() }, 1460),
            ("RFC 9293 3.7.1 default, IPv4", Syn { mss: default_mss(false), ts: None, ..linux_syn() }, 536),
            ("RFC 9293 3.7.1 default, IPv6", Syn { mss: default_mss(true), ts: None, ..linux_syn() }, 1220),
        ];
        for (what, syn, cookie_mss) in rows {
            let a = answer(&KEY, &tuple(), &syn, NOW_NS, &OURS);
            assert_eq!(a.ack, syn.isn + 1, "{what}");
            assert_eq!(a.window, WINDOW, "{what}");
            assert_eq!(a.mss, OURS.mss, "{what}: we announce what we can receive (RFC 6691 2)");
            assert_eq!(option_bytes(&a)[..4], [2, 4, 0x23, 0x00], "{what}: MSS 8960 first");
            let checked = cookie::check(&published(), &tuple(), syn.isn, a.seq, NOW_NS);
            assert_eq!(checked.map(|c| c.mss), Some(cookie_mss), "{what}");
        }
        assert_eq!(linux_syn().cookie_mss(1400), 1400);
    }

    #[test]
    fn options_follow_the_syns_offer_in_linuxs_layout() {
        // (what, the SYN, (wscale, sack, ts) in the SYN-ACK, option bytes after the MSS with
        // the TS values left out)
        type Row = (&'static str, Syn, (Option<u8>, bool, bool), [u8; 4], [u8; 4]);
        let rows: [Row; 5] = [
            ("Linux: SACK, TS, WS", linux_syn(), (Some(7), true, true), [4, 2, 8, 10], [1, 3, 3, 7]),
            ("TS without SACK", Syn { sack: false, ..linux_syn() }, (Some(7), false, true), [1, 1, 8, 10], [1, 3, 3, 7]),
            ("TS without WS", Syn { wscale: None, ..linux_syn() }, (None, true, true), [4, 2, 8, 10], [1, 1, 1, 1]),
            // Without timestamps the cookie cannot remember scaling or SACK: MSS, then EOL.
            ("no TS: MSS only", Syn { ts: None, ..linux_syn() }, (None, false, false), [0; 4], [0; 4]),
            ("nothing offered", Syn { ts: None, wscale: None, sack: false, ..linux_syn() }, (None, false, false), [0; 4], [0; 4]),
        ];
        for (what, syn, (wscale, sack, ts), word1, word4) in rows {
            let a = answer(&KEY, &tuple(), &syn, NOW_NS, &OURS);
            assert_eq!((a.wscale, a.sack, a.ts.is_some()), (wscale, sack, ts), "{what}");
            let b = option_bytes(&a);
            assert_eq!(b.len(), 4 * OPT_WORDS, "{what}");
            assert_eq!(b[..4], a.mss_word().to_le_bytes(), "{what}: the MSS word leads");
            assert_eq!(b[4..8], word1, "{what}");
            assert_eq!(b[16..20], word4, "{what}");
            match a.ts {
                Some((tsval, tsecr)) => {
                    // RFC 7323 3.2: TSecr echoes the client's TSval.
                    assert_eq!(tsecr, syn.ts.unwrap(), "{what}");
                    assert_eq!(b[8..12], tsval.to_be_bytes(), "{what}");
                    assert_eq!(b[12..16], tsecr.to_be_bytes(), "{what}");
                }
                None => assert_eq!(b[8..16], [0; 8], "{what}"),
            }
        }
    }

    #[test]
    fn the_final_ack_decodes_to_what_the_syn_offered() {
        // (what, the SYN, (snd_wscale if scaling, SACK, ECN) decoded from the final ACK)
        let rows = [
            ("Linux", linux_syn(), (Some(7), true, false)),
            // RFC 7323 2.3: a shift above 14 is used as 14.
            ("window scale 15", Syn { wscale: Some(15), ..linux_syn() }, (Some(14), true, false)),
            ("no SACK, no WS", Syn { wscale: None, sack: false, ..linux_syn() }, (None, false, false)),
            // RFC 3168 6.1.1: an ECN-setup SYN.
            ("ECN", Syn { ecn: true, ..linux_syn() }, (Some(7), true, true)),
        ];
        for (what, syn, (wscale, sack, ecn)) in rows {
            let a = answer(&KEY, &tuple(), &syn, NOW_NS, &OURS);
            let facts = decoded(&a, &syn);
            assert_eq!((facts.iss, facts.irs), (a.seq, syn.isn), "{what}");
            assert!(facts.has(FACT_TS), "{what}");
            assert_eq!(facts.has(FACT_WSCALE).then_some(facts.snd_wscale), wscale, "{what}");
            if wscale.is_some() {
                assert_eq!(a.wscale, Some(OURS.wscale), "{what}: we offer ours");
                assert_eq!(facts.rcv_wscale, OURS.wscale, "{what}");
            }
            assert_eq!(facts.has(FACT_SACK), sack, "{what}");
            assert_eq!(facts.has(FACT_ECN), ecn, "{what}");
            // The TSval is never above the connection's clock (RFC 7323 5.3: the client's PAWS
            // check accepts our later segments), and within the option bits of it.
            let clock = ((NOW_NS / 1_000_000) as u32).wrapping_add(facts.ts_offset);
            let tsval = a.ts.unwrap().0;
            assert!(clock.wrapping_sub(tsval) < 1 << cookie::TS_OPT_BITS, "{what}: TSval {tsval}, clock {clock}");
        }
    }

    #[test]
    fn an_ecn_setup_syn_gets_ece_when_we_agree_and_the_cookie_can_remember_it() {
        // (what, the SYN, we agree to ECN, ECE in the SYN-ACK, ECN decoded from the final ACK)
        let ecn_syn = Syn { ecn: true, ..linux_syn() };
        let rows = [
            // RFC 3168 6.1.1: an ECN-setup SYN-ACK (ECE, no CWR) answers an ECN-setup SYN.
            ("ECN-setup SYN", ecn_syn, true, true, Some(true)),
            // ... and only one: no ECE to a SYN that did not ask.
            ("non-ECN SYN", linux_syn(), true, false, Some(false)),
            // We do not agree (--ecn off): no ECE, and the cookie does not say ECN.
            ("ECN off here", ecn_syn, false, false, Some(false)),
            // No timestamps: nowhere to remember it, so no ECN (as Linux with cookies).
            ("no timestamps", Syn { ts: None, ..ecn_syn }, true, false, None),
        ];
        for (what, syn, agree, ece, decoded_ecn) in rows {
            let ours = Ours { ecn: agree, ..OURS };
            let m = cookie::make(&KEY, &tuple(), syn.isn, NOW_NS, syn.cookie_mss(ours.mss));
            let a = build(&syn, m.isn, m.ts_offset, (NOW_NS / 1_000_000) as u32, &ours);
            assert_eq!(a.ece, ece, "{what}");
            assert_eq!(a.flags(), if ece { SYN | ACK | ECE } else { SYN | ACK }, "{what}");
            if let Some(ecn) = decoded_ecn {
                assert_eq!(decoded(&a, &syn).has(FACT_ECN), ecn, "{what}");
            } else {
                // The final ACK carries no timestamps: nothing but the MSS.
                let facts =
                    cookie::decode(&published(), &tuple(), a.ack, 0, 0, a.seq.wrapping_add(1), None, NOW_NS, OURS.wscale).unwrap();
                assert!(!facts.has(FACT_ECN), "{what}");
            }
        }
    }

    #[test]
    fn an_ipv6_client_is_offered_20_bytes_less_never_below_the_ipv6_minimum() {
        let ours = Ours { mss: 1460, ..OURS };
        assert_eq!(ours.for_family(false), ours);
        assert_eq!(ours.for_family(true), Ours { mss: 1440, ..ours });
        assert_eq!(Ours { mss: 1230, ..OURS }.for_family(true).mss, 1220);
        assert_eq!(Ours { mss: 536, ..OURS }.for_family(false).mss, 536);
    }

    #[test]
    fn build_takes_any_minted_cookie_and_answer_is_build_with_ours() {
        // The XDP program mints with its own clock (or, in the benchmark's baseline, the
        // kernel helper) and calls `build`; `answer` is the same with synx's cookie.
        let syn = linux_syn();
        let m = cookie::make(&KEY, &tuple(), syn.isn, NOW_NS, syn.cookie_mss(OURS.mss));
        assert_eq!(build(&syn, m.isn, m.ts_offset, (NOW_NS / 1_000_000) as u32, &OURS), answer(&KEY, &tuple(), &syn, NOW_NS, &OURS));
        let other = build(&syn, 0xdead_beef, 7, 1000, &OURS);
        assert_eq!(other.seq, 0xdead_beef);
        assert_eq!(other.ts.map(|t| t.0 & !((1 << cookie::TS_OPT_BITS) - 1)), Some(1007 & !63));
    }
}
