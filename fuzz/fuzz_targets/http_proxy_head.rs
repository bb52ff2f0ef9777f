//! The http proxy's request heads as a client reaches them: no panic on any bytes, and what
//! it forwards is sound:
//! - the head the backend gets parses whole; no hop-by-hop field reaches the backend (RFC 9110
//!   7.6.1) but this hop's own Upgrade request, exactly one Host (RFC 9112 3.2), one framing
//!   (the proxy's), one Forwarded field, no Expect once the proxy answers it, a target in origin
//!   form (or `*`);
//! - the framing it reads is the one the http app reads from the same bytes (two readings of
//!   one request are how requests get smuggled);
//! - a prefix of a complete head is Partial, never refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use synx::apps::{Parsed, http_proxy::{HeadSummary, summarize_head}, parse_request};

const HOP_BY_HOP: [&str; 7] = ["connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade", "trailer"];

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let HeadSummary::Complete { len, uri, headers, body, close, http10, expect_continue, upgrade, .. } = summarize_head(rest) else {
        return;
    };
    assert!(len <= rest.len());
    for (name, value) in &headers {
        // This hop's own request to switch protocols is the one exception.
        let asked = upgrade && ((name == "connection" && value == b"upgrade") || name == "upgrade");
        assert!(!HOP_BY_HOP.contains(&name.as_str()) || asked, "{name} forwarded");
        assert!(!value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0), "{name}: {value:?}");
    }
    // One framing, the proxy's own reading of the client's: a request the backend framed
    // otherwise would be smuggled past the proxy.
    let lengths: Vec<&Vec<u8>> = headers.iter().filter(|(n, _)| n == "content-length").map(|(_, v)| v).collect();
    let codings: Vec<&Vec<u8>> = headers.iter().filter(|(n, _)| n == "transfer-encoding").map(|(_, v)| v).collect();
    match body {
        synx::apps::Body::Chunked => assert!(lengths.is_empty() && codings == [b"chunked"], "{headers:?}"),
        synx::apps::Body::Length(n) => {
            assert!(codings.is_empty(), "{headers:?}");
            assert!(lengths.len() <= 1 && lengths.iter().all(|v| **v == n.to_string().into_bytes()), "{headers:?}");
            assert!(n == 0 || lengths.len() == 1, "{headers:?}");
        }
    }
    assert_eq!(headers.iter().filter(|(n, _)| n == "forwarded").count(), 1, "{headers:?}");
    assert_eq!(headers.iter().filter(|(n, _)| n == "host").count(), 1, "{headers:?}");
    if expect_continue {
        assert!(!headers.iter().any(|(n, _)| n == "expect"));
    }
    assert!(uri.starts_with('/') || uri == "*", "forwarded target {uri:?}");
    assert!(!(upgrade && http10), "an HTTP/1.0 upgrade");
    if let Parsed::Complete { head_len, body: app_body, close: app_close } = parse_request(rest) {
        assert_eq!((head_len, app_body, app_close), (len, body, close), "the app and the proxy frame it differently");
    }
    let k = split as usize % len.max(1);
    assert!(matches!(summarize_head(&rest[..k]), HeadSummary::Partial), "{k} bytes of a {len}-byte head");
});
