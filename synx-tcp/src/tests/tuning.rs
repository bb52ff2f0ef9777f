//! Buffer auto-tuning: the receive window grows with what the application reads per round
//! trip (dynamic right-sizing, as Linux's tcp_rcv_space_adjust), the send buffer with the
//! congestion window (as Linux's tcp_sndbuf_expand), both within per-connection maxima and a
//! budget shared by all connections.

use std::sync::Arc;

use engine_common::handshake::{FACT_SACK, FACT_TS, FACT_WSCALE, HandshakeFacts};

use super::*;

const SEG: usize = 1448;

/// A receiver with timestamps and window scale 7; `read`: whether its application reads.
fn receive_rounds(config: Config, read: bool, rounds: u64) -> (Connection, Vec<u32>) {
    let f = HandshakeFacts { flags: FACT_TS | FACT_WSCALE | FACT_SACK, snd_wscale: 7, rcv_wscale: 7, ts_recent: 1, ts_offset: 1000, ..facts() };
    let mut ack = peer(0, 0);
    ack.options.timestamps = Some((1, 1000));
    let mut c = accept_with(config, f, &ack, &[]);
    let mut seq = 0u32;
    let mut windows = Vec::new();
    let payload = vec![9u8; SEG];
    for round in 0..rounds {
        // A window's worth every 10 ms round trip, echoing our timestamp of 10 ms before.
        let t = ms(10 + 10 * round);
        let wnd = c.info().rcv_wnd;
        for _ in 0..(wnd as usize / SEG).min(400) {
            let mut h = peer(seq, 0);
            h.options.timestamps = Some((2 + round as u32, 1000 + t.as_millis() as u32 - 10));
            c.handle(t, &h, &payload);
            seq += SEG as u32;
            if read {
                read_all(&mut c);
            }
        }
        out(&mut c, t);
        windows.push(c.info().rcv_wnd);
    }
    (c, windows)
}

#[test]
fn the_receive_window_grows_with_a_reader_that_keeps_up_and_not_without_one() {
    let cfg = Config { recv_buffer: 64 * 1024, ..Config::default() };
    let (_, windows) = receive_rounds(cfg.clone(), true, 6);
    // The first round trip measures; from the second the window grows, to the maximum.
    assert_eq!(windows[0], 64 * 1024);
    assert!(windows[1] > 64 * 1024, "{windows:?}");
    assert!(windows.windows(2).all(|w| w[1] >= w[0]), "{windows:?}");
    assert_eq!(*windows.last().unwrap(), cfg.recv_buffer_max, "{windows:?}");
    // An application that does not read: the window only closes.
    let (c, windows) = receive_rounds(cfg.clone(), false, 4);
    assert!(windows.iter().all(|&w| w == 64 * 1024 % SEG as u32), "{windows:?}");
    assert_eq!(c.info().recv_queued, 64 * 1024 / SEG * SEG);
    // Without window scaling the window can never pass 64 KB, nor grow.
    let f = HandshakeFacts { flags: FACT_TS, ts_recent: 1, ts_offset: 1000, ..facts() };
    let mut ack = peer(0, 0);
    ack.options.timestamps = Some((1, 1000));
    let c = accept_with(Config { recv_buffer: 1 << 20, ..Config::default() }, f, &ack, &[]);
    assert_eq!(c.info().rcv_wnd, 65535);
}

#[test]
fn the_send_buffer_follows_the_congestion_window_within_the_maximum() {
    let cfg = Config { send_buffer: 64 * 1024, send_buffer_max: 200_000, nagle: false, pacing: false, ..Config::default() };
    let mut c = accept_with(cfg, HandshakeFacts { flags: FACT_SACK, ..facts() }, &peer(0, 0), &[]);
    assert_eq!(c.writable(), 64 * 1024);
    // Slow start: every ACK grows the window by what it acknowledges.
    let mut acked = 0;
    for round in 0..4u64 {
        c.send(&vec![1u8; c.writable()]);
        let sent: u32 = out(&mut c, ms(10 * round)).iter().map(|(_, p)| p.len() as u32).sum();
        acked += sent;
        c.handle(ms(10 * round + 10), &peer(0, acked), &[]);
    }
    let cwnd = c.info().cwnd;
    assert!(cwnd > 100_000, "{cwnd}");
    // Room for twice the window, but no more than the maximum.
    assert_eq!(c.writable() + c.info().send_queued, 200_000);
}

#[test]
fn growth_comes_from_a_shared_budget_and_goes_back_to_it() {
    let budget = BufferBudget::new(100_000);
    let cfg = Config { send_buffer: 16 * 1024, buffer_budget: budget.clone(), nagle: false, pacing: false, ..Config::default() };
    let grow = |c: &mut Connection, acks: u32| {
        let mut acked = 0;
        for round in 0..acks {
            c.send(&vec![1u8; c.writable()]);
            acked += out(c, ms(10 * round as u64)).iter().map(|(_, p)| p.len() as u32).sum::<u32>();
            c.handle(ms(10 * round as u64 + 10), &peer(0, acked), &[]);
        }
    };
    let config = Arc::new(cfg);
    let mut a = Connection::accept(ms(0), config.clone(), &facts(), local(), remote(), &peer(0, 0), &[]).unwrap();
    grow(&mut a, 6);
    assert_eq!(budget.used(), 100_000, "the first connection takes it all");
    assert_eq!(a.writable() + a.info().send_queued, 16 * 1024 + 100_000);
    let mut b = Connection::accept(ms(0), config.clone(), &facts(), "10.0.0.3:1".parse().unwrap(), local(), &peer(0, 0), &[]).unwrap();
    grow(&mut b, 6);
    assert_eq!(b.writable() + b.info().send_queued, 16 * 1024, "none left for the second");
    drop(a);
    assert_eq!(budget.used(), 0);
    drop(b);
}
