//! Property tests: arbitrary segment sequences and application calls never panic, never grow
//! memory without bound, and never deliver a byte twice or out of order.

use core::time::Duration;

use engine_common::handshake::{FACT_SACK, FACT_TS, FACT_WSCALE, HandshakeFacts};
use proptest::prelude::*;

use super::*;

/// The peer's byte stream: byte k (from IRS+1) is `stream(k)`, so any segment carries the same
/// bytes for the same offsets, and the application must read exactly a prefix of it.
fn stream(k: u32) -> u8 {
    (k.wrapping_mul(2_654_435_761) >> 13) as u8
}

#[derive(Debug, Clone)]
enum Op {
    Segment { seq: i32, ack: i32, flags: u8, window: u16, len: u16, ts: Option<(u32, u32)>, sack: Vec<(i32, i32)> },
    Send(u16),
    Recv(u16),
    Shutdown,
    Abort,
    Advance(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (
            -3000i32..70_000,
            -3000i32..70_000,
            any::<u8>(),
            any::<u16>(),
            0u16..3000,
            proptest::option::of((any::<u32>(), any::<u32>())),
            proptest::collection::vec((-3000i32..70_000, -3000i32..70_000), 0..3),
        )
            .prop_map(|(seq, ack, flags, window, len, ts, sack)| Op::Segment { seq, ack, flags, window, len, ts, sack }),
        // Plausible segments: ACK set, acknowledging little, near the receive window.
        8 => (-3000i32..24_000, -50i32..50, any::<bool>(), 0u16..3000)
            .prop_map(|(seq, ack, fin, len)| Op::Segment {
                seq,
                ack,
                flags: if fin { 0x11 } else { 0x10 },
                window: 4096,
                len,
                ts: None,
                sack: Vec::new(),
            }),
        2 => (0u16..5000).prop_map(Op::Send),
        2 => (0u16..5000).prop_map(Op::Recv),
        1 => Just(Op::Shutdown),
        1 => (0u32..40).prop_map(|x| if x == 0 { Op::Abort } else { Op::Advance(x * 97) }),
        2 => (0u32..200_000).prop_map(Op::Advance),
    ]
}

fn run_ops(flags: u8, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let f = HandshakeFacts { flags, snd_wscale: 3, rcv_wscale: 3, ..facts() };
    // No growth beyond the buffers: memory stays within the bound checked below.
    let cfg = Config {
        recv_buffer: 16 * 1024,
        send_buffer: 16 * 1024,
        recv_buffer_max: 16 * 1024,
        send_buffer_max: 16 * 1024,
        ..config()
    };
    let mut c = accept_with(cfg, f, &peer(0, 0), &[]);
    let mut now = ms(0);
    let mut delivered: u32 = 0;
    let mut buf = vec![0u8; 8192];
    let mut out_buf = [0u8; 2048];
    for op in ops {
        match op {
            Op::Segment { seq, ack, flags, window, len, ts, sack } => {
                let seq_off = seq as u32;
                let payload: Vec<u8> = (0..len as u32).map(|i| stream(seq_off.wrapping_add(i))).collect();
                let mut h = peer(seq_off, ack as u32);
                h.flags = Flags(flags);
                h.window = window;
                h.options.timestamps = ts;
                for (l, r) in sack {
                    h.options.sack.push(SeqNum(ISS + 1).add_i(l), SeqNum(ISS + 1).add_i(r));
                }
                c.handle(now, &h, &payload);
            }
            Op::Send(n) => {
                c.send(&vec![7u8; n as usize]);
            }
            Op::Recv(n) => {
                let n = c.recv(&mut buf[..n as usize]);
                for (i, b) in buf[..n].iter().enumerate() {
                    prop_assert_eq!(*b, stream(delivered + i as u32), "byte {} delivered wrong", delivered + i as u32);
                }
                delivered += n as u32;
            }
            Op::Shutdown => c.shutdown(now),
            Op::Abort => c.abort(now),
            Op::Advance(d) => {
                now = now + Duration::from_millis(d as u64);
                if c.poll_timeout().is_some_and(|t| t <= now) {
                    c.handle_timeout(now);
                }
            }
        }
        let mut sent = 0;
        while let Some(n) = c.poll_transmit(now, &mut out_buf) {
            prop_assert!(segment::parse(&out_buf[..n]).is_ok());
            sent += 1;
            prop_assert!(sent < 1000, "runaway output");
        }
        prop_assert!(c.heap_bytes() <= 2 * (16 + 16) * 1024, "heap {}", c.heap_bytes());
        while c.poll_event().is_some() {}
    }
    Ok(())
}

trait AddI {
    fn add_i(self, d: i32) -> Self;
}

impl AddI for SeqNum {
    fn add_i(self, d: i32) -> Self {
        SeqNum(self.0.wrapping_add(d as u32))
    }
}

proptest! {
    // 96 cases by default; PROPTEST_CASES=N for a deeper run.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(96),
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_segments_plain(ops in proptest::collection::vec(op(), 1..120)) {
        run_ops(0, ops)?;
    }

    #[test]
    fn arbitrary_segments_all_options(ops in proptest::collection::vec(op(), 1..120)) {
        run_ops(FACT_SACK | FACT_TS | FACT_WSCALE, ops)?;
    }
}
