//! The SYN cookie as both sides of the wire use it: any SYN (any MSS, window scale, SACK,
//! timestamps, ECN) on any tuple gets a SYN-ACK whose final ACK decodes, within the cookie's
//! lifetime, with the secrets published ahead or not, and from a host whose clock is ahead
//! within the tolerance, to exactly what the SYN offered and we agreed; and an arbitrary ACK
//! decodes only if it carries a cookie some published secret minted for that tuple, client
//! ISN and a period the cookie still covers (a forger has to guess the MAC).
#![no_main]

use engine_common::{
    cookie::{self, KEYS, Key, Keys, MAX_AGE, MSS_TABLE, PERIOD_SHIFT, SKEW_TOLERANCE_NS, Tuple},
    handshake::{FACT_ECN, FACT_SACK, FACT_TS, FACT_WSCALE},
    synack::{self, Ours, Syn},
};
use libfuzzer_sys::fuzz_target;
use synx_fuzz::Input;

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    // Each period's secret, derived here from one base key (random per host or from a shared
    // key, in the daemon: which does not matter to the cookie).
    let base = Key { k0: input.u64(), k1: input.u64() };
    let secret = |p: u32| Key { k0: base.k0 ^ u64::from(p).wrapping_mul(0x9e37_79b9_7f4a_7c15), k1: base.k1.rotate_left(p % 64) };
    let v6 = input.u8() & 1 == 1;
    let (client_port, server_port) = (input.u16(), input.u16());
    let tuple = if v6 {
        Tuple::v6(input.bytes(), input.bytes(), client_port, server_port)
    } else {
        Tuple::v4(input.bytes(), input.bytes(), client_port, server_port)
    };
    let offers = input.u8();
    let syn = Syn {
        isn: input.u32(),
        mss: input.u16(),
        wscale: (offers & 1 != 0).then(|| input.u8()),
        sack: offers & 2 != 0,
        ts: (offers & 4 != 0).then(|| input.u32()),
        ecn: offers & 8 != 0,
    };
    let ours = Ours { mss: 536 + input.u16() % 925, wscale: input.u8() % 15, ecn: offers & 16 != 0 };
    // The shared clock in nanoseconds (Unix time): centuries of range, never near u64::MAX.
    let minted_at = input.u64() >> 4;
    // Checked later, or a little earlier by a host whose clock is behind the minting host's.
    let later = (minted_at + (input.u64() >> 30)).saturating_sub(input.u64() % SKEW_TOLERANCE_NS);
    // The checking host publishes the current period's secret and the previous ones, and
    // perhaps the next one already.
    let newest = cookie::period(later) + u32::from(input.u8() & 1);
    let keys = Keys { newest, keys: std::array::from_fn(|i| secret(newest.wrapping_sub(i as u32))) };
    let minting = secret(cookie::period(minted_at));
    let now = minted_at;
    let answer = synack::answer(&minting, &tuple, &syn, now, &ours);
    assert_eq!(answer.ack, syn.isn.wrapping_add(1));
    assert_eq!(answer.mss, ours.mss, "our SYN-ACK announces our own MSS");
    // RFC 7323 2.2, RFC 2018: nothing offered that the client did not offer first.
    assert!(answer.wscale.is_none() || (syn.wscale.is_some() && syn.ts.is_some()));
    assert!(!answer.sack || (syn.sack && syn.ts.is_some()));
    // RFC 3168 6.1.1: ECE only to an ECN-setup SYN, when we agree, and where the cookie can
    // remember it (timestamps).
    assert_eq!(answer.ece, syn.ecn && ours.ecn && syn.ts.is_some());
    if let Some((tsval, tsecr)) = answer.ts {
        assert_eq!(Some(tsecr), syn.ts);
        // The TSval never runs ahead of the connection's clock (the client's PAWS).
        let minted = cookie::make(&minting, &tuple, syn.isn, now, syn.cookie_mss(ours.mss));
        let clock = ((now / 1_000_000) as u32).wrapping_add(minted.ts_offset);
        assert!(clock.wrapping_sub(tsval) < 1 << cookie::TS_OPT_BITS, "TSval {tsval} ahead of {clock}");
    }

    // The client's final ACK, echoing our TSval.
    let (seq, ack) = (syn.isn.wrapping_add(1), answer.seq.wrapping_add(1));
    let client_ts = answer.ts.map(|(tsval, _)| (syn.ts.unwrap_or(0).wrapping_add(input.u16().into()), tsval));
    let decoded = cookie::decode(&keys, &tuple, seq, 0, 0, ack, client_ts, later, ours.wscale);
    let (p, at) = (cookie::period(now), cookie::period(later));
    let hi = cookie::period(later + SKEW_TOLERANCE_NS);
    let age = i64::from(at) - i64::from(p);
    let published = keys.of(p).is_some();
    if p <= hi && age <= i64::from(MAX_AGE) && published {
        let facts = decoded.unwrap_or_else(|| panic!("our own cookie refused after {age} periods"));
        assert_eq!((facts.iss, facts.irs), (answer.seq, syn.isn));
        let kept = syn.cookie_mss(ours.mss);
        assert_eq!(facts.mss, MSS_TABLE[cookie::mss_index(kept) as usize]);
        assert!(facts.mss <= kept.max(MSS_TABLE[0]), "the cookie raised the MSS {kept} to {}", facts.mss);
        match syn.ts {
            None => assert_eq!(facts.flags, 0, "without timestamps only the MSS survives"),
            Some(_) => {
                assert!(facts.has(FACT_TS));
                assert_eq!(facts.has(FACT_SACK), syn.sack);
                assert_eq!(facts.has(FACT_ECN), syn.ecn && ours.ecn);
                assert_eq!(facts.has(FACT_WSCALE), syn.wscale.is_some());
                if let Some(w) = syn.wscale {
                    // RFC 7323 2.3: a shift above 14 counts as 14.
                    assert_eq!(facts.snd_wscale, w.min(14));
                    assert_eq!(facts.rcv_wscale, ours.wscale);
                }
            }
        }
    } else if hi >= p && hi - p <= 3 {
        // The cookie's period bits name its period unambiguously: refused for its age or its
        // secret, whatever the MAC (beyond that only a 2^-28 MAC collision could pass).
        assert!(decoded.is_none(), "a cookie {age} periods old accepted (secret published: {published})");
    }

    // A forged ACK: accepted only if some key minted exactly that cookie for this tuple and
    // client ISN in a period the cookie still covers.
    let (seq, ack) = if input.u8() & 1 == 0 { (input.u32(), input.u32()) } else { (seq, ack ^ (1 << (input.u8() % 32))) };
    let ts = (input.u8() & 1 == 0).then(|| (input.u32(), input.u32()));
    if let Some(facts) = cookie::decode(&keys, &tuple, seq, 0, 0, ack, ts, later, ours.wscale) {
        let cookie = ack.wrapping_sub(1);
        let idx = (cookie >> 28) & 3;
        let minted = (0..KEYS as u32).any(|i| {
            let p = newest.wrapping_sub(i);
            let in_reach = p <= hi && i64::from(at) - i64::from(p) <= i64::from(MAX_AGE);
            in_reach && cookie::make(&keys.keys[i as usize], &tuple, seq.wrapping_sub(1), u64::from(p) << PERIOD_SHIFT, MSS_TABLE[idx as usize]).isn == cookie
        });
        assert!(minted, "an ACK we never minted decoded to {facts:?}");
        assert!(facts.snd_wscale <= 14);
    }
});
