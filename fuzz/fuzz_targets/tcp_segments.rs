//! Arbitrary bytes as a sequence of raw TCP segments and application calls against one
//! connection: no panic, bounded memory, a sane state. Segment bytes go through the real
//! parser, so malformed headers and options are exercised too.
#![no_main]

use std::sync::Arc;

use engine_common::handshake::HandshakeFacts;
use libfuzzer_sys::fuzz_target;
use synx_tcp::{Config, Connection, Flags, Header, Instant, SeqNum, segment};

fuzz_target!(|data: &[u8]| {
    let Some((&opts, mut rest)) = data.split_first() else { return };
    // Buffers that do not grow, so the bound below is theirs.
    let config = Arc::new(Config {
        recv_buffer: 8192,
        send_buffer: 8192,
        recv_buffer_max: 8192,
        send_buffer_max: 8192,
        ..Config::default()
    });
    let facts = HandshakeFacts {
        iss: 1000,
        irs: 5000,
        mss: 536 + (opts as u16) * 4,
        snd_wscale: opts & 15,
        rcv_wscale: (opts >> 4) & 15,
        flags: opts,
        ..Default::default()
    };
    let ack = Header {
        src_port: 40000,
        dst_port: 80,
        seq: SeqNum(5001),
        ack: SeqNum(1001),
        flags: Flags::ACK,
        window: 1000,
        ..Default::default()
    };
    let local = "10.0.0.1:80".parse().unwrap();
    let remote = "10.0.0.2:40000".parse().unwrap();
    let Ok(mut c) = Connection::accept(Instant::ZERO, config, &facts, local, remote, &ack, &[]) else { return };
    let mut now = Instant::ZERO;
    let mut buf = [0u8; 4096];
    while let [op, len, tail @ ..] = rest {
        let n = (*len as usize).min(tail.len());
        let (chunk, tail) = tail.split_at(n);
        rest = tail;
        match op % 8 {
            0..=3 => {
                if let Ok((h, payload)) = segment::parse(chunk) {
                    c.handle(now, &h, payload);
                }
            }
            4 => {
                c.send(chunk);
            }
            5 => {
                c.recv(&mut buf[..n.max(1) * 16]);
            }
            6 => {
                now = now + std::time::Duration::from_millis(u64::from(*len) * 37);
                c.handle_timeout(now);
            }
            _ => match len % 4 {
                0 => c.shutdown(now),
                1 => c.abort(now),
                _ => c.close(now),
            },
        }
        let mut segments = 0;
        while let Some(n) = c.poll_transmit(now, &mut buf) {
            assert!(segment::parse(&buf[..n]).is_ok());
            segments += 1;
            assert!(segments < 10_000);
        }
        assert!(c.heap_bytes() <= 4 * 8192);
        while c.poll_event().is_some() {}
    }
});
