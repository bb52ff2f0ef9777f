//! The http app's request parsing as a client reaches it: any bytes, in any split.
//! - a head is found the same whether it arrives whole or in two reads: a prefix of a
//!   complete head is `Partial`, never `Bad` (a streaming server would answer 400 to a valid
//!   request split at an unlucky point), and bytes after it change nothing;
//! - a chunked body (RFC 9112 7.1) decodes to the same data however reads split it, never
//!   yields more data than it was given, and stops at its end leaving what follows;
//! - a body encoded from the input decodes back to exactly the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use synx::apps::{Parsed, dechunk, parse_request};

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let parsed = parse_request(rest);
    if let Parsed::Complete { head_len, .. } = parsed {
        assert!(head_len <= rest.len());
        let k = split as usize % head_len.max(1);
        let prefix = parse_request(&rest[..k]);
        assert_eq!(prefix, Parsed::Partial, "{k} bytes of a {head_len}-byte head");
        assert_eq!(parse_request(&rest[..head_len]), parsed, "the head alone parses as with its body");
    }

    // The same bytes as a chunked body, whole and in two reads.
    let (whole, taken, done) = dechunk(&[rest]);
    let k = (split as usize * 7) % (rest.len() + 1);
    let (halves, taken2, done2) = dechunk(&[&rest[..k], &rest[k..]]);
    assert_eq!((&whole, taken, done), (&halves, taken2, done2), "split at {k}");
    assert!(whole.len() <= rest.len());
    if let Some(n) = taken {
        assert!(n <= rest.len());
        assert!(done || n == rest.len(), "stopped early at {n} of {} without an end", rest.len());
    }

    // The input encoded in chunks of sizes taken from itself, with an extension and a trailer
    // now and then, then garbage after the end: decoded back exactly, the garbage untouched.
    let mut body = Vec::new();
    let mut left = rest;
    let mut i = 0;
    while !left.is_empty() {
        let n = (1 + left[0] as usize * 3).min(left.len());
        body.extend_from_slice(format!("{n:x}").as_bytes());
        if i % 3 == 1 {
            body.extend_from_slice(b";ext=1");
        }
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(&left[..n]);
        body.extend_from_slice(b"\r\n");
        left = &left[n..];
        i += 1;
    }
    body.extend_from_slice(if split & 1 == 0 { b"0\r\n\r\n" } else { b"0\r\nX-Trailer: yes\r\n\r\n" });
    let end = body.len();
    body.extend_from_slice(b"GET /next HTTP/1.1\r\n");
    let k = split as usize % (body.len() + 1);
    let (decoded, taken, done) = dechunk(&[&body[..k], &body[k..]]);
    assert_eq!(decoded, rest);
    assert_eq!((taken, done), (Some(end), true));
});
